-- Users and their orders. Emails are unique without regard to ASCII case (NOCASE), because
-- `Ann@example.com` and `ann@example.com` reach the same mailbox for every service we know.
CREATE TABLE users (
    id         INTEGER PRIMARY KEY,
    email      TEXT    NOT NULL COLLATE NOCASE
        CONSTRAINT users_email_shape CHECK (email LIKE '_%@_%' AND length(email) <= 254),
    name       TEXT    NOT NULL
        CONSTRAINT users_name_length CHECK (length(trim(name)) > 0 AND length(name) <= 256),
    created_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CONSTRAINT users_email_unique UNIQUE (email)
) STRICT;

-- `total` keeps the seed's column name; it holds integer cents.
CREATE TABLE orders (
    id         INTEGER PRIMARY KEY,
    user_id    INTEGER NOT NULL
        CONSTRAINT orders_user_fk REFERENCES users (id) ON DELETE RESTRICT,
    total      INTEGER NOT NULL
        CONSTRAINT orders_total_non_negative CHECK (total >= 0),
    created_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

-- Serves `recent_for_user` and the dashboard (newest first, ties by id: read backwards, no sort,
-- stopping after the limit), `stats_for_user` (it covers total), and the foreign-key check when
-- a user is deleted. Measured for the dashboard: 6.6 µs of SQLite work with `id` in the index,
-- 12.4 µs without it (rusqlite, 10k users, 100k orders).
CREATE INDEX orders_user_created_idx ON orders (user_id, created_at, id, total);
