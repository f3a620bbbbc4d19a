-- Back to the insert trigger's earlier test, which checks each timestamp on its own.

DROP TRIGGER items_timestamps_canonical_on_insert;

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
