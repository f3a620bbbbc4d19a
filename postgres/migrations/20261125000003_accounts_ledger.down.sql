DROP FUNCTION sqlrepo_deposit(bigint, bigint);
DROP FUNCTION transfers_landed(bytea[], bigint);
DROP TRIGGER accounts_opening_in_ledger ON accounts;
DROP FUNCTION accounts_opening_in_ledger();
DROP TABLE transfers;
DROP FUNCTION transfers_apply();
DROP FUNCTION transfers_refuse(bigint, bigint, bigint, boolean, boolean, bytea);
DROP FUNCTION transfers_key_first(bytea);
DROP TABLE accounts;
