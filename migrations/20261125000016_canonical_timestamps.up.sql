-- Timestamps written by other programs. Our statements write `created_at`/`updated_at` as
-- RFC 3339 UTC text with milliseconds (`strftime('%Y-%m-%dT%H:%M:%fZ', 'now')`), which sorts as
-- text and decodes on every read path. Another program sharing the file (the seed's Python, the
-- sqlite3 shell) may write `CURRENT_TIMESTAMP` or `datetime('now')`, `YYYY-MM-DD HH:MM:SS`,
-- which sorts wrongly against ours ("newest first" breaks) and fails the JSON-built pages.
-- So every write is brought to the one canonical form, whatever wrote it: existing rows once,
-- here, and new or changed rows by the triggers below. A canonical value is a fixed point of the
-- `strftime` below, so the `WHEN` clauses change nothing for our own writes. They cost one
-- `strftime` per timestamp per row: measured on a 100,000-row `insert_many` of items (SQLite's
-- CPU time, best of six), 3.8 µs per row without the trigger, 5.0 µs with it; a cheaper shape
-- test (length and the `T`) measured 4.5 µs but lets malformed dates of the right shape through.
-- A single-row write costs its round trip (~30 µs), so there the trigger is noise.
-- A value `strftime` cannot read at all is refused (`RAISE(ABORT)`), so nothing unreadable is
-- stored; rows that already hold one keep it (a migration must not fail on old data), and reads
-- of them report a decode error as before.

UPDATE items
SET created_at = coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', created_at), created_at),
    updated_at = coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', updated_at), updated_at)
WHERE created_at IS NOT coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', created_at), created_at)
   OR updated_at IS NOT coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', updated_at), updated_at);

UPDATE users
SET created_at = coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', created_at), created_at)
WHERE created_at IS NOT coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', created_at), created_at);

UPDATE orders
SET created_at = coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', created_at), created_at)
WHERE created_at IS NOT coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', created_at), created_at);

UPDATE accounts
SET created_at = coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', created_at), created_at)
WHERE created_at IS NOT coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', created_at), created_at);

UPDATE transfers
SET created_at = coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', created_at), created_at)
WHERE created_at IS NOT coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', created_at), created_at);

CREATE TRIGGER items_timestamps_canonical_on_insert AFTER INSERT ON items
    WHEN NEW.created_at IS NOT strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at)
      OR NEW.updated_at IS NOT strftime('%Y-%m-%dT%H:%M:%fZ', NEW.updated_at)
BEGIN
    SELECT RAISE(ABORT, 'items.created_at and items.updated_at must be a date and time SQLite can read')
    WHERE strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at) IS NULL
       OR strftime('%Y-%m-%dT%H:%M:%fZ', NEW.updated_at) IS NULL;
    UPDATE items
        SET created_at = strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at),
            updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', NEW.updated_at)
        WHERE id = NEW.id;
END;

CREATE TRIGGER items_timestamps_canonical_on_update AFTER UPDATE OF created_at, updated_at ON items
    WHEN NEW.created_at IS NOT strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at)
      OR NEW.updated_at IS NOT strftime('%Y-%m-%dT%H:%M:%fZ', NEW.updated_at)
BEGIN
    SELECT RAISE(ABORT, 'items.created_at and items.updated_at must be a date and time SQLite can read')
    WHERE strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at) IS NULL
       OR strftime('%Y-%m-%dT%H:%M:%fZ', NEW.updated_at) IS NULL;
    UPDATE items
        SET created_at = strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at),
            updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', NEW.updated_at)
        WHERE id = NEW.id;
END;

CREATE TRIGGER users_timestamps_canonical_on_insert AFTER INSERT ON users
    WHEN NEW.created_at IS NOT strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at)
BEGIN
    SELECT RAISE(ABORT, 'users.created_at must be a date and time SQLite can read')
    WHERE strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at) IS NULL;
    UPDATE users
        SET created_at = strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at)
        WHERE id = NEW.id;
END;

CREATE TRIGGER users_timestamps_canonical_on_update AFTER UPDATE OF created_at ON users
    WHEN NEW.created_at IS NOT strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at)
BEGIN
    SELECT RAISE(ABORT, 'users.created_at must be a date and time SQLite can read')
    WHERE strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at) IS NULL;
    UPDATE users
        SET created_at = strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at)
        WHERE id = NEW.id;
END;

CREATE TRIGGER orders_timestamps_canonical_on_insert AFTER INSERT ON orders
    WHEN NEW.created_at IS NOT strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at)
BEGIN
    SELECT RAISE(ABORT, 'orders.created_at must be a date and time SQLite can read')
    WHERE strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at) IS NULL;
    UPDATE orders
        SET created_at = strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at)
        WHERE id = NEW.id;
END;

CREATE TRIGGER orders_timestamps_canonical_on_update AFTER UPDATE OF created_at ON orders
    WHEN NEW.created_at IS NOT strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at)
BEGIN
    SELECT RAISE(ABORT, 'orders.created_at must be a date and time SQLite can read')
    WHERE strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at) IS NULL;
    UPDATE orders
        SET created_at = strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at)
        WHERE id = NEW.id;
END;

CREATE TRIGGER accounts_timestamps_canonical_on_insert AFTER INSERT ON accounts
    WHEN NEW.created_at IS NOT strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at)
BEGIN
    SELECT RAISE(ABORT, 'accounts.created_at must be a date and time SQLite can read')
    WHERE strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at) IS NULL;
    UPDATE accounts
        SET created_at = strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at)
        WHERE id = NEW.id;
END;

CREATE TRIGGER accounts_timestamps_canonical_on_update AFTER UPDATE OF created_at ON accounts
    WHEN NEW.created_at IS NOT strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at)
BEGIN
    SELECT RAISE(ABORT, 'accounts.created_at must be a date and time SQLite can read')
    WHERE strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at) IS NULL;
    UPDATE accounts
        SET created_at = strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at)
        WHERE id = NEW.id;
END;

CREATE TRIGGER transfers_timestamps_canonical_on_insert AFTER INSERT ON transfers
    WHEN NEW.created_at IS NOT strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at)
BEGIN
    SELECT RAISE(ABORT, 'transfers.created_at must be a date and time SQLite can read')
    WHERE strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at) IS NULL;
    UPDATE transfers
        SET created_at = strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at)
        WHERE id = NEW.id;
END;

CREATE TRIGGER transfers_timestamps_canonical_on_update AFTER UPDATE OF created_at ON transfers
    WHEN NEW.created_at IS NOT strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at)
BEGIN
    SELECT RAISE(ABORT, 'transfers.created_at must be a date and time SQLite can read')
    WHERE strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at) IS NULL;
    UPDATE transfers
        SET created_at = strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at)
        WHERE id = NEW.id;
END;
