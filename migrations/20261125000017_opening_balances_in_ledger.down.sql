-- New accounts stop recording their opening balance in the ledger. The opening rows already
-- written stay: they are deposit-shaped, true, and every balance agrees with them.
DROP TRIGGER IF EXISTS accounts_opening_in_ledger;
