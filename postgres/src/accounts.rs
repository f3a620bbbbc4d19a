//! The statements of accounts and the transfer ledger on PostgreSQL.
//!
//! As on SQLite the ledger is the source of truth and the schema enforces the rules (migration
//! `accounts_ledger`): inserting a ledger row fires `transfers_apply`, which locks both accounts
//! in id order, refuses a missing account (23503 on `transfers_from_fk`/`transfers_to_fk`) or an
//! overdraft (23514 on `accounts_balance_non_negative`, DETAIL a JSON object) and moves the
//! money. So a transfer is one `INSERT` and a batch is one `INSERT … SELECT`, each atomic by
//! itself and one round trip.
//!
//! # Idempotency keys, and why not `ON CONFLICT DO NOTHING`
//!
//! A keyed statement first looks the key up (a CTE read through the unique index) and inserts
//! only when it has not landed; it returns what it found, so a replay (same movement: nothing
//! moves) and a reuse (other movement: a duplicate, even when unaffordable, since no row is
//! inserted and so no trigger runs) are told apart in the same round trip.
//!
//! `ON CONFLICT (idempotency_key) DO NOTHING` would be wrong here: PostgreSQL fires `BEFORE
//! INSERT` row triggers before it checks for the conflict, so `transfers_apply` would move the
//! money of a row that is then silently skipped.
//!
//! The lookup sees the statement's snapshot, taken before any lock wait, so a transfer with the
//! same key that commits while this statement waits is missed by it. Two such cases, both
//! answered by running the statement once more (the caller, sqlrepo, does): the fresh statement
//! sees the committed twin and answers replay or duplicate, and that answer is final.
//!
//! * The statement goes on and inserts: the key's unique index waits for the twin and refuses
//!   with 23505 on `transfers_idempotency_key_unique`.
//! * The trigger would refuse (too little money left by the twin, say): before any refusal it
//!   looks the key up again in a fresh snapshot (`transfers_key_first` in the migration) and
//!   raises that same 23505 instead, since the key rule comes before balances. A refusal it
//!   does raise is final: no twin had committed when it looked, so none touched what it read.
//!
//! A batch takes its account locks first and only then looks its keys up, in a snapshot taken
//! after the locks (`transfers_landed`): see [`insert_transfers`].
//!
//! Keys are stored and compared as their UTF-8 bytes (`bytea`): a key may hold any character,
//! NUL included, as on SQLite, and `text` cannot hold a NUL. Bytes compare equal exactly when
//! the strings do.

use sqlx::PgConnection;
use time::OffsetDateTime;

/// A stored account, as PostgreSQL holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRow {
    /// Row id.
    pub id: i64,
    /// The owner, if any.
    pub user_id: Option<i64>,
    /// Balance in cents.
    pub balance: i64,
    /// When it was opened.
    pub created_at: OffsetDateTime,
}

/// What one keyed or unkeyed transfer statement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferRow {
    /// A ledger row was inserted (the money moved).
    pub landed: bool,
    /// The idempotency key had already landed: `Some(true)` with the same movement (a replay),
    /// `Some(false)` with another one (a duplicate; nothing was inserted). `None`: no key, or a
    /// key not seen before.
    pub same_movement: Option<bool>,
}

/// What one batch statement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchRow {
    /// Ledger rows inserted.
    pub inserted: i64,
    /// A step's idempotency key had landed with another movement: nothing was inserted.
    pub key_reused: bool,
}

/// Opens an account and returns its id. A positive opening balance is moved into the ledger by
/// the trigger `accounts_opening_in_ledger`.
///
/// `fetch_one` reads the statement to its end, its commit included (see `items::insert_one`).
pub async fn insert_account(
    conn: &mut PgConnection,
    user_id: Option<i64>,
    balance_cents: i64,
) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"
        INSERT INTO accounts (user_id, balance)
        VALUES ($1, $2)
        RETURNING id
        "#,
        user_id,
        balance_cents,
    )
    .fetch_one(conn)
    .await
}

/// The account with this id, if any.
pub async fn select_account(conn: &mut PgConnection, id: i64) -> sqlx::Result<Option<AccountRow>> {
    sqlx::query_as!(
        AccountRow,
        r#"
        SELECT id, user_id, balance, created_at
        FROM accounts
        WHERE id = $1
        "#,
        id,
    )
    .fetch_optional(conn)
    .await
}

/// The accounts with these ids, in id order (unknown ids skipped, repeats given once).
pub async fn select_many(conn: &mut PgConnection, ids: &[i64]) -> sqlx::Result<Vec<AccountRow>> {
    sqlx::query_as!(
        AccountRow,
        r#"
        SELECT id, user_id, balance, created_at
        FROM accounts
        WHERE id = ANY($1)
        ORDER BY id
        "#,
        ids,
    )
    .fetch_all(conn)
    .await
}

/// How many accounts there are.
pub async fn count(conn: &mut PgConnection) -> sqlx::Result<i64> {
    sqlx::query_scalar!(r#"SELECT count(*) AS "count!" FROM accounts"#)
        .fetch_one(conn)
        .await
}

/// A keyset page: at most `limit` accounts with ids from `from_id` up, in id order (a row is
/// four numbers wide, so rows alone bound the page).
pub async fn select_page(
    conn: &mut PgConnection,
    from_id: i64,
    limit: i64,
) -> sqlx::Result<Vec<AccountRow>> {
    sqlx::query_as!(
        AccountRow,
        r#"
        SELECT id, user_id, balance, created_at
        FROM accounts
        WHERE id >= $1
        ORDER BY id
        LIMIT $2
        "#,
        from_id,
        limit,
    )
    .fetch_all(conn)
    .await
}

/// Credits an account through the ledger and returns the new balance: one round trip to the SQL
/// function `sqlrepo_deposit`. An unknown account is 23503 on `transfers_to_fk`, an overflow
/// 22003.
pub async fn deposit(conn: &mut PgConnection, id: i64, amount_cents: i64) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"SELECT sqlrepo_deposit($1, $2) AS "balance!""#,
        id,
        amount_cents
    )
    .fetch_one(conn)
    .await
}

/// One transfer as one ledger `INSERT`, unless its idempotency key has landed already (see the
/// module's notes on keys; the key is sent as its UTF-8 bytes). Refusals are the trigger's
/// (23503, 23514), an overflowing credit 22003, and a twin of the key that committed while this
/// statement ran 23505 on `transfers_idempotency_key_unique` (run it once more).
pub async fn insert_transfer(
    conn: &mut PgConnection,
    from: i64,
    to: i64,
    amount_cents: i64,
    idempotency_key: Option<&str>,
) -> sqlx::Result<TransferRow> {
    let key = idempotency_key.map(str::as_bytes);
    // A data-modifying CTE runs once whether or not the outer query reads it; `landed` is read
    // in the statement's snapshot, before the insert.
    sqlx::query_as!(
        TransferRow,
        r#"
        WITH landed AS (
            SELECT from_account, to_account, amount
            FROM transfers
            WHERE idempotency_key = $4
        ),
        inserted AS (
            INSERT INTO transfers (from_account, to_account, amount, idempotency_key)
            SELECT $1, $2, $3, $4
            WHERE NOT EXISTS (SELECT 1 FROM landed)
            RETURNING id
        )
        SELECT
            EXISTS (SELECT 1 FROM inserted) AS "landed!",
            (SELECT from_account IS NOT DISTINCT FROM $1 AND to_account = $2 AND amount = $3
             FROM landed) AS same_movement
        "#,
        from,
        to,
        amount_cents,
        key,
    )
    .fetch_one(conn)
    .await
}

/// The steps of a batch, as parallel arrays (one element per step, in order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Steps {
    /// The accounts debited.
    pub from: Vec<i64>,
    /// The accounts credited.
    pub to: Vec<i64>,
    /// The amounts in cents.
    pub amount: Vec<i64>,
    /// The idempotency keys (sent as their UTF-8 bytes).
    pub idempotency_key: Vec<Option<String>>,
}

/// A batch of transfers as one `INSERT … SELECT`, in order, all or nothing.
///
/// * Steps whose key landed with the same movement are skipped; a key that landed with another
///   movement inserts nothing (`key_reused`), so no trigger runs and no balance is looked at.
/// * Every account the batch names is locked first, in id order (`locked`, read by an
///   InitPlan before the first row is produced): two batches, or a batch and a transfer, that
///   name the same accounts in opposite orders then queue instead of deadlocking, since the
///   trigger of each step only takes locks the statement already holds.
/// * The keys are looked up after the locks, by `transfers_landed` (its argument is the count
///   of locked rows, so it runs after them, in a snapshot of its own): a transfer with a step's
///   key that committed while the batch waited for an account is seen, so the batch answers by
///   the key rule rather than by the balances that transfer left. A twin on accounts the batch
///   does not name may still commit during it: 23505 on `transfers_idempotency_key_unique`,
///   from the key's index or from the trigger (`transfers_key_first`); run the batch again.
/// * Rows go in by position (`ORDER BY`), so the trigger checks each step against the balances
///   the earlier ones left, and its first refusal undoes the whole statement.
///
/// The steps travel as four arrays through `UNNEST`, measured against the same statement over
/// `ROWS FROM (jsonb_to_recordset($1) AS (...)) WITH ORDINALITY` (one JSON array of objects):
/// 10,000 steps, half of them keyed, medians of 5 on the 2-core dev server under load:
/// among 20 accounts `UNNEST` 3.02 s, JSON 3.35 s; among 2,000 accounts `UNNEST` 1.10 s, JSON
/// 1.19 s. Decoding is a small share either way: the trigger costs most of it (the same
/// 10,000-row insert takes about 1.0 s with `transfers_apply`, 0.17 s without), and among few
/// accounts each row's updates lengthen the version chains the next rows walk.
pub async fn insert_transfers(conn: &mut PgConnection, steps: &Steps) -> sqlx::Result<BatchRow> {
    let keys: Vec<Option<&[u8]>> = steps
        .idempotency_key
        .iter()
        .map(|key| key.as_deref().map(str::as_bytes))
        .collect();
    sqlx::query_as!(
        BatchRow,
        r#"
        WITH step AS (
            SELECT from_account, to_account, amount, idempotency_key, position
            FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::bytea[])
                WITH ORDINALITY AS s (from_account, to_account, amount, idempotency_key, position)
        ),
        locked AS (
            SELECT id
            FROM accounts
            WHERE id IN (SELECT from_account FROM step UNION SELECT to_account FROM step)
            ORDER BY id
            FOR UPDATE
        ),
        landed AS MATERIALIZED (
            SELECT step.position,
                   l.from_account = step.from_account
                       AND l.to_account = step.to_account
                       AND l.amount = step.amount AS same_movement
            FROM step
            JOIN transfers_landed($4::bytea[], (SELECT count(*) FROM locked)) AS l
                ON l.idempotency_key = step.idempotency_key
        ),
        inserted AS (
            INSERT INTO transfers (from_account, to_account, amount, idempotency_key)
            SELECT from_account, to_account, amount, idempotency_key
            FROM step
            WHERE NOT EXISTS (SELECT 1 FROM landed WHERE NOT landed.same_movement)
              -- Always true; it makes the accounts' locks be taken before any row goes in,
              -- also for a batch without keys (whose `landed` never calls
              -- `transfers_landed`, the other reader of `locked`).
              AND (SELECT count(*) FROM locked) >= 0
              AND NOT EXISTS (SELECT 1 FROM landed WHERE landed.position = step.position)
            ORDER BY position
            RETURNING id
        )
        SELECT
            (SELECT count(*) FROM inserted) AS "inserted!",
            EXISTS (SELECT 1 FROM landed WHERE NOT landed.same_movement) AS "key_reused!"
        "#,
        &steps.from,
        &steps.to,
        &steps.amount,
        &keys as &[Option<&[u8]>],
    )
    .fetch_one(conn)
    .await
}

/// The sum of every balance. `sum(bigint)` is `numeric`; the cast back to `bigint` refuses a
/// total past `i64` with 22003 instead of returning a number sqlrepo cannot hold.
pub async fn total_balance(conn: &mut PgConnection) -> sqlx::Result<i64> {
    sqlx::query_scalar!(r#"SELECT coalesce(sum(balance), 0)::bigint AS "total!" FROM accounts"#)
        .fetch_one(conn)
        .await
}
