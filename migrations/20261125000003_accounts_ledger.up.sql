-- Accounts and the transfer ledger. The ledger is the source of truth: inserting a row moves
-- the money (trigger below), and the schema refuses every rule break, so a transfer is one
-- INSERT and a batch is one INSERT ... SELECT (measured: one round trip instead of five).
CREATE TABLE accounts (
    id         INTEGER PRIMARY KEY,
    user_id    INTEGER
        CONSTRAINT accounts_user_fk REFERENCES users (id) ON DELETE RESTRICT,
    -- Integer cents. An overdraft fails this CHECK (SQLITE_CONSTRAINT_CHECK, 275); an overflow
    -- turns `balance + x` into a REAL, which STRICT refuses (SQLITE_CONSTRAINT_DATATYPE, 3091).
    balance    INTEGER NOT NULL DEFAULT 0
        CONSTRAINT accounts_balance_non_negative CHECK (balance >= 0),
    created_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

CREATE INDEX accounts_user_idx ON accounts (user_id);

-- One row per landed transfer; `from_account` is NULL for a deposit. Missing accounts fail the
-- foreign keys (SQLITE_CONSTRAINT_FOREIGNKEY, 787), so money can never leave for nowhere.
CREATE TABLE transfers (
    id              INTEGER PRIMARY KEY,
    from_account    INTEGER
        CONSTRAINT transfers_from_fk REFERENCES accounts (id) ON DELETE RESTRICT,
    to_account      INTEGER NOT NULL
        CONSTRAINT transfers_to_fk REFERENCES accounts (id) ON DELETE RESTRICT,
    amount          INTEGER NOT NULL
        CONSTRAINT transfers_amount_positive CHECK (amount > 0),
    idempotency_key TEXT
        CONSTRAINT transfers_key_length CHECK (length(idempotency_key) BETWEEN 1 AND 256),
    created_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CONSTRAINT transfers_distinct_accounts CHECK (from_account <> to_account),
    CONSTRAINT transfers_idempotency_key_unique UNIQUE (idempotency_key)
) STRICT;

-- Moves the money of each ledger row. A failing UPDATE (overdraft, overflow) aborts the whole
-- INSERT statement, including every earlier row of a batch, so a batch is all or nothing.
CREATE TRIGGER transfers_apply AFTER INSERT ON transfers
BEGIN
    UPDATE accounts SET balance = balance - NEW.amount WHERE id = NEW.from_account;
    UPDATE accounts SET balance = balance + NEW.amount WHERE id = NEW.to_account;
END;
