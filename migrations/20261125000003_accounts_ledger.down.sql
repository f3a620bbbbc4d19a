DROP TRIGGER IF EXISTS transfers_apply;
DROP TABLE IF EXISTS transfers;
DROP INDEX IF EXISTS accounts_user_idx;
DROP TABLE IF EXISTS accounts;
