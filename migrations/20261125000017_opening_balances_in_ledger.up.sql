-- Opening balances in the ledger, so every balance can be rebuilt from the ledger alone
-- (`sum of credits - sum of debits`). An opening balance is recorded as a ledger row from no
-- account (`from_account IS NULL`), like a deposit.
--
-- Accounts that exist already get one such row for whatever their balance holds beyond what
-- the ledger explains. `transfers_apply` would credit that amount a second time, so it is
-- dropped while the rows are written and then created again exactly as before. An account
-- whose ledger explains more than its balance (money moved around the ledger, for example by
-- the seed's `UPDATE accounts SET balance = ...`) gets no row: a ledger row cannot be negative.
DROP TRIGGER transfers_apply;

INSERT INTO transfers (from_account, to_account, amount)
SELECT NULL, opening.id, opening.amount
FROM (
    SELECT a.id,
           a.balance
             - coalesce((SELECT sum(amount) FROM transfers WHERE to_account = a.id), 0)
             + coalesce((SELECT sum(amount) FROM transfers WHERE from_account = a.id), 0)
               AS amount
    FROM accounts AS a
) AS opening
WHERE opening.amount > 0
ORDER BY opening.id;

CREATE TRIGGER transfers_apply AFTER INSERT ON transfers
BEGIN
    UPDATE accounts SET balance = balance - NEW.amount WHERE id = NEW.from_account;
    UPDATE accounts SET balance = balance + NEW.amount WHERE id = NEW.to_account;
END;

-- New accounts, whoever inserts them (`AccountRepo::open`, the seed's `INSERT INTO accounts`):
-- the opening amount is taken off the row and written as a ledger row, whose `transfers_apply`
-- credits it back, so the balance is credited exactly once and the ledger holds the reason.
-- All inside the INSERT statement: it lands whole or not at all.
CREATE TRIGGER accounts_opening_in_ledger AFTER INSERT ON accounts
    WHEN NEW.balance > 0
BEGIN
    UPDATE accounts SET balance = 0 WHERE id = NEW.id;
    INSERT INTO transfers (from_account, to_account, amount) VALUES (NULL, NEW.id, NEW.balance);
END;
