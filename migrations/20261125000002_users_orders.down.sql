DROP INDEX IF EXISTS orders_user_created_idx;
DROP TABLE IF EXISTS orders;
DROP TABLE IF EXISTS users;
