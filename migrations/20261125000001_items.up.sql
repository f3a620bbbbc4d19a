-- Items: the seed's `items (name, data, status)`, with the rules SQLite can enforce itself.
-- Timestamps are RFC 3339 text in UTC with milliseconds, so they sort as text and decode as
-- `time::OffsetDateTime`; the seed's `INSERT INTO items (name, data)` still works through the
-- defaults.
CREATE TABLE items (
    id         INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL
        CONSTRAINT items_name_length CHECK (length(trim(name)) > 0 AND length(name) <= 256),
    data       TEXT    NOT NULL DEFAULT '{}'
        CONSTRAINT items_data_json CHECK (json_valid(data)),
    status     TEXT    NOT NULL DEFAULT 'active'
        CONSTRAINT items_status_known CHECK (status IN ('active', 'inactive', 'archived')),
    created_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CONSTRAINT items_name_unique UNIQUE (name)
) STRICT;

CREATE INDEX items_status_idx ON items (status);
