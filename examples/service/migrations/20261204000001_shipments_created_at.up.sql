-- Shipments gain `created_at`, in sqlrepo's timestamp convention (`sqlrepo::kit`,
-- "Timestamps"): RFC 3339 UTC text with milliseconds, which sorts as text and decodes as
-- `time::OffsetDateTime`.
--
-- A new table writes "now" with a column default (`DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ',
-- 'now'))`). An existing one cannot: SQLite refuses `ADD COLUMN` with a non-constant default,
-- and rebuilding the table would need an `INSERT` into it, which SQLite refuses to even
-- prepare while sqlrepo's `orders` (which it references) does not exist yet, and the service's
-- migrations may run before sqlrepo's. So the column is added without a default, the
-- repository's statements write the time themselves, and the triggers below fill it in for
-- any other writer (a row inserted without it gets the time of the insert), bring another
-- program's form (the sqlite3 shell's `datetime('now')`) to ours, and refuse text that is no
-- time, or taking the time away. A canonical value is a fixed point of the `strftime`, so the
-- `WHEN` clauses keep the triggers off the repository's own writes. Rows shipped before this
-- migration get the time it ran.
ALTER TABLE shipments ADD COLUMN created_at TEXT;

UPDATE shipments
SET created_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
WHERE created_at IS NULL;

CREATE TRIGGER shipments_created_at_canonical_on_insert AFTER INSERT ON shipments
    WHEN NEW.created_at IS NULL
      OR NEW.created_at IS NOT strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at)
BEGIN
    SELECT RAISE(ABORT, 'shipments.created_at must be a date and time SQLite can read')
    WHERE NEW.created_at IS NOT NULL
      AND strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at) IS NULL;
    UPDATE shipments
        SET created_at = strftime('%Y-%m-%dT%H:%M:%fZ', coalesce(NEW.created_at, 'now'))
        WHERE id = NEW.id;
END;

CREATE TRIGGER shipments_created_at_canonical_on_update AFTER UPDATE OF created_at ON shipments
    WHEN NEW.created_at IS NULL
      OR NEW.created_at IS NOT strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at)
BEGIN
    SELECT RAISE(ABORT, 'shipments.created_at must be a date and time SQLite can read')
    WHERE strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at) IS NULL;
    UPDATE shipments
        SET created_at = strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at)
        WHERE id = NEW.id;
END;
