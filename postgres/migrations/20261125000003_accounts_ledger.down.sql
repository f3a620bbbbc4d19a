DROP FUNCTION sqlrepo_deposit(bigint, bigint);
DROP TRIGGER accounts_opening_in_ledger ON accounts;
DROP FUNCTION accounts_opening_in_ledger();
DROP TABLE transfers;
DROP FUNCTION transfers_apply();
DROP FUNCTION transfers_refuse(bigint, bigint, bigint, boolean, boolean);
DROP TABLE accounts;
