-- The stored values stay canonical: they are what the earlier schema writes itself.

DROP TRIGGER IF EXISTS transfers_timestamps_canonical_on_update;
DROP TRIGGER IF EXISTS transfers_timestamps_canonical_on_insert;
DROP TRIGGER IF EXISTS accounts_timestamps_canonical_on_update;
DROP TRIGGER IF EXISTS accounts_timestamps_canonical_on_insert;
DROP TRIGGER IF EXISTS orders_timestamps_canonical_on_update;
DROP TRIGGER IF EXISTS orders_timestamps_canonical_on_insert;
DROP TRIGGER IF EXISTS users_timestamps_canonical_on_update;
DROP TRIGGER IF EXISTS users_timestamps_canonical_on_insert;
DROP TRIGGER IF EXISTS items_timestamps_canonical_on_update;
DROP TRIGGER IF EXISTS items_timestamps_canonical_on_insert;
