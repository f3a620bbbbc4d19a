//! The `accounts` table and its `transfers` ledger: data types, [`AccountRepo`], all their SQL.
//!
//! The ledger is the source of truth and the schema enforces the rules (see the migration
//! `accounts_ledger`): inserting a ledger row fires a trigger that debits and credits the two
//! accounts, `CHECK (balance >= 0)` refuses overdrafts, foreign keys refuse missing accounts, and
//! the idempotency key is `UNIQUE`. So a transfer is **one** `INSERT` and a batch is **one**
//! `INSERT … SELECT … FROM json_each(?)`, each atomic by itself, each one round trip to sqlx's
//! worker thread. Only when the database refuses do we read, to say which account and balance.
//! Transfers of concurrent callers queued for the writer together ride one statement too (group
//! commit: `GroupedTransfers`).
//!
//! On PostgreSQL (cargo feature `postgres`) each method runs the statements of
//! `sqlrepo_postgres::accounts` instead, through the `postgres` module beside this one; the
//! schema enforces the same rules there, and its refusals already carry the account and balance
//! a caller is told about. The Rust-side validation here runs first on both.

use std::collections::{HashMap, HashSet};
use std::future::Future;

use futures_core::Stream;
use serde::{Deserialize, Serialize};
use sqlx::SqliteConnection;
use time::OffsetDateTime;

use super::paging::{self, Keyed};
use crate::conn::{Backend, Conn, Grouped, Handle};
use crate::error::{Error, Result};
use crate::kit::{self, at_position, check_batch, direct_column};
use crate::limits::{MAX_KEY_CHARS, check_amount};
use crate::trace::{Rows, traced};

#[cfg(feature = "postgres")]
mod postgres;

pub use crate::limits::IDEMPOTENCY_KEY_CONSTRAINT;

/// A stored account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Row id.
    pub id: i64,
    /// The owner, if any.
    pub user_id: Option<i64>,
    /// Balance in cents, never negative.
    pub balance_cents: i64,
    /// When it was opened (UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// An account to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewAccount {
    /// The owner, if any (must exist).
    pub user_id: Option<i64>,
    /// Opening balance in cents, zero or more.
    pub balance_cents: i64,
}

impl NewAccount {
    /// An account of `user_id` (`None`: nobody's) opening with `balance_cents`.
    ///
    /// ```
    /// let new = sqlrepo::NewAccount::new(None, 500);
    /// assert_eq!((new.user_id, new.balance_cents), (None, 500));
    /// ```
    pub fn new(user_id: Option<i64>, balance_cents: i64) -> Self {
        NewAccount {
            user_id,
            balance_cents,
        }
    }
}

/// A movement of money between two accounts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Transfer {
    /// The account debited.
    pub from: i64,
    /// The account credited.
    pub to: i64,
    /// Positive amount in cents.
    pub amount_cents: i64,
    /// When set, the transfer lands at most once: replaying it is `Ok(())` and moves nothing.
    pub idempotency_key: Option<String>,
}

impl Transfer {
    /// A transfer without an idempotency key.
    pub fn new(from: i64, to: i64, amount_cents: i64) -> Self {
        Transfer {
            from,
            to,
            amount_cents,
            idempotency_key: None,
        }
    }

    /// The same transfer with an idempotency key.
    pub fn with_key(self, key: impl Into<String>) -> Self {
        Transfer {
            idempotency_key: Some(key.into()),
            ..self
        }
    }

    fn validate(&self) -> Result<()> {
        check_amount(self.amount_cents)?;
        if self.from == self.to {
            return Err(Error::invalid(format!(
                "a transfer needs two different accounts, not {} to itself",
                self.from
            )));
        }
        if let Some(key) = &self.idempotency_key
            && (key.is_empty() || key.chars().count() > MAX_KEY_CHARS)
        {
            return Err(Error::invalid(format!(
                "an idempotency key must be 1 to {MAX_KEY_CHARS} characters"
            )));
        }
        Ok(())
    }

    fn same_movement(&self, from: i64, to: i64, amount_cents: i64) -> bool {
        (self.from, self.to, self.amount_cents) == (from, to, amount_cents)
    }
}

/// What a successful [`AccountRepo::transfer_with_outcome`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferOutcome {
    /// The money moved and a ledger row was written.
    Landed,
    /// The idempotency key had already landed with the same movement; nothing moved.
    Replayed,
}

impl Rows for TransferOutcome {
    fn rows(&self) -> u64 {
        u64::from(*self == TransferOutcome::Landed)
    }
}

/// Accounts: opening, deposits, and atomic, idempotent transfers recorded in the ledger.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> sqlrepo::Result<()> {
/// use sqlrepo::{Db, Error, NewAccount, Transfer};
/// let accounts = Db::in_memory().await?.accounts();
/// let a = accounts.open(&NewAccount { user_id: None, balance_cents: 1_000 }).await?;
/// let b = accounts.open(&NewAccount { user_id: None, balance_cents: 0 }).await?;
/// accounts.transfer(&Transfer::new(a, b, 400).with_key("invoice-7")).await?;
/// accounts.transfer(&Transfer::new(a, b, 400).with_key("invoice-7")).await?; // replay: moves nothing
/// let overdraft = accounts.transfer(&Transfer::new(a, b, 10_000)).await;
/// assert!(matches!(overdraft, Err(Error::InsufficientFunds { balance_cents: 600, .. })));
/// assert_eq!(accounts.total_balance().await?, 1_000);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct AccountRepo {
    handle: Handle,
}

impl AccountRepo {
    /// The repository on `handle`: a [`Db`](crate::Db)\'s, a [`Tx`](crate::Tx)\'s, or any
    /// [`Handle`] a service holds.
    pub fn new(handle: Handle) -> Self {
        AccountRepo { handle }
    }

    /// Opens an account with an opening balance and returns its id.
    ///
    /// A positive opening balance is recorded in the ledger as a row from no account (as a
    /// deposit is), by the schema itself, so every balance equals its ledger credits minus its
    /// ledger debits.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a negative balance; [`Error::ForeignKey`] for an unknown user.
    pub fn open(&self, new: &NewAccount) -> impl Future<Output = Result<i64>> + Send + use<> {
        let handle = self.handle.clone();
        let NewAccount {
            user_id,
            balance_cents,
        } = *new;
        traced("accounts", "open", async move {
            if balance_cents < 0 {
                return Err(Error::invalid(format!(
                    "an opening balance cannot be negative ({balance_cents} cents)"
                )));
            }
            let mut conn = handle.writer().await?;
            match conn.backend()? {
                Backend::Sqlite(sqlite) => insert_account(sqlite, user_id, balance_cents).await,
                #[cfg(feature = "postgres")]
                Backend::Postgres(pg) => postgres::open(pg, user_id, balance_cents).await,
            }
        })
    }

    /// The account with this id, or `None`.
    ///
    /// # Errors
    /// [`Error::Schema`] when migrations have not run.
    pub fn get(&self, id: i64) -> impl Future<Output = Result<Option<Account>>> + Send + use<> {
        let handle = self.handle.clone();
        traced("accounts", "get", async move {
            let direct = handle
                .read_direct(|conn| select_account_direct(conn, id))
                .await;
            if let Some(found) = direct {
                return Ok(found);
            }
            handle
                .read(|mut conn| async move {
                    match conn.backend()? {
                        Backend::Sqlite(sqlite) => select_account(sqlite, id).await,
                        #[cfg(feature = "postgres")]
                        Backend::Postgres(pg) => postgres::get(pg, id).await,
                    }
                })
                .await
        })
    }

    /// The accounts with these ids, in id order; unknown ids are skipped and repeated ids given
    /// once. One statement, so one consistent read of the balances.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for more than [`MAX_BATCH_ROWS`](crate::limits::MAX_BATCH_ROWS)
    /// ids, before the database is touched; [`Error::Schema`] when migrations have not run.
    pub fn get_many(
        &self,
        ids: &[i64],
    ) -> impl Future<Output = Result<Vec<Account>>> + Send + use<> {
        let handle = self.handle.clone();
        let ids = check_batch("get_many", ids.len()).map(|()| ids.to_vec());
        traced("accounts", "get_many", async move {
            let ids = ids?;
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let ids = &ids;
            handle
                .read(|mut conn| async move {
                    match conn.backend()? {
                        Backend::Sqlite(c) => select_many(c, &crate::kit::json_text(ids)?).await,
                        #[cfg(feature = "postgres")]
                        Backend::Postgres(c) => postgres::get_many(c, ids).await,
                    }
                })
                .await
        })
    }

    /// How many accounts there are.
    ///
    /// # Errors
    /// [`Error::Schema`] when migrations have not run.
    pub fn count(&self) -> impl Future<Output = Result<i64>> + Send + use<> {
        let handle = self.handle.clone();
        traced("accounts", "count", async move {
            handle
                .read(|mut conn| async move {
                    match conn.backend()? {
                        Backend::Sqlite(c) => count(c).await,
                        #[cfg(feature = "postgres")]
                        Backend::Postgres(c) => postgres::count(c).await,
                    }
                })
                .await
        })
    }

    /// Every account in id order, in keyset pages, with memory that does not grow with the
    /// table. Each page is one consistent read; a transfer landing between two pages may show
    /// in one account and not yet in the other, so use
    /// [`total_balance`](Self::total_balance) for a sum.
    pub fn stream(&self) -> impl Stream<Item = Result<Account>> + Send + use<> {
        paging::by_rows(
            self.handle.clone(),
            "accounts",
            |mut conn, from, limit| async move {
                match conn.backend()? {
                    Backend::Sqlite(c) => select_page(c, from, limit).await,
                    #[cfg(feature = "postgres")]
                    Backend::Postgres(c) => postgres::select_page(c, from, limit).await,
                }
            },
        )
    }

    /// Credits an account (recorded as a ledger row with no source) and returns the new balance.
    /// One statement: one round trip, atomic by itself.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a non-positive amount or a balance that would overflow `i64`;
    /// [`Error::NotFound`] for an unknown account. Nothing changes on error.
    pub fn deposit(
        &self,
        id: i64,
        amount_cents: i64,
    ) -> impl Future<Output = Result<i64>> + Send + use<> {
        let handle = self.handle.clone();
        traced("accounts", "deposit", async move {
            check_amount(amount_cents)?;
            let mut conn = handle.writer().await?;
            match conn.backend()? {
                Backend::Sqlite(sqlite) => deposit_on_sqlite(sqlite, id, amount_cents).await,
                #[cfg(feature = "postgres")]
                Backend::Postgres(pg) => postgres::deposit(pg, id, amount_cents).await,
            }
        })
    }

    /// Moves money between two accounts atomically, as one ledger `INSERT`.
    ///
    /// With an idempotency key that already landed with the same from/to/amount, returns
    /// `Ok(())` and moves nothing, whatever the balances are now. `Ok(())` does not say which
    /// of the two happened: [`transfer_with_outcome`](Self::transfer_with_outcome) is the one
    /// way to learn it (the same call, returning [`TransferOutcome`]).
    ///
    /// On a [`Db`](crate::Db), transfers of concurrent callers that wait for the writer
    /// together are carried as one statement (group commit, see
    /// [`crate::Grouped`]): one round trip and one commit for all of them.
    /// Each caller still gets exactly its own answer: a neighbour's refusal makes the group run
    /// again one by one, and `Ok` means this transfer's ledger row is committed. A caller with
    /// nobody waiting runs one `INSERT`, as above. On PostgreSQL, where many writers run at
    /// once, every transfer is its own `INSERT`; a keyed one the server refused is run once more,
    /// so that a concurrent twin of its key that committed meanwhile makes it a replay.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for `from == to`, a non-positive amount or an empty key;
    /// [`Error::Duplicate`] ([`IDEMPOTENCY_KEY_CONSTRAINT`]) for a key that landed with other
    /// parameters; [`Error::NotFound`] naming a missing account; [`Error::InsufficientFunds`]
    /// for an overdraft; [`Error::InvalidInput`] when the credit would overflow. Nothing moves on
    /// error.
    pub fn transfer(&self, t: &Transfer) -> impl Future<Output = Result<()>> + Send + use<> {
        let outcome = self.transfer_with_outcome(t);
        async move { outcome.await.map(|_| ()) }
    }

    /// [`transfer`](Self::transfer), telling whether this call moved the money
    /// ([`TransferOutcome::Landed`]) or found its idempotency key already landed with the same
    /// movement ([`TransferOutcome::Replayed`]); a service can answer a replay with the original
    /// response.
    ///
    /// # Errors
    /// As [`transfer`](Self::transfer).
    pub fn transfer_with_outcome(
        &self,
        t: &Transfer,
    ) -> impl Future<Output = Result<TransferOutcome>> + Send + use<> {
        let handle = self.handle.clone();
        let t = t.validate().map(|()| t.clone());
        traced("accounts", "transfer", async move {
            handle.write_grouped::<GroupedTransfers>(t?).await
        })
    }

    /// Applies transfers in order, each checked against the balances the earlier ones left,
    /// all or nothing, as one statement. At most
    /// [`MAX_BATCH_ROWS`](crate::limits::MAX_BATCH_ROWS) steps; `&[]` is `Ok(())`.
    ///
    /// Idempotency keys follow [`transfer`](Self::transfer)'s rule per step, including a key
    /// repeated inside the batch: the same movement again is skipped, another movement is
    /// [`Error::Duplicate`].
    ///
    /// # Errors
    /// As [`transfer`](Self::transfer), for the first step that fails (invalid steps are named
    /// by position); nothing moves on error.
    pub fn transfer_batch(
        &self,
        ts: &[Transfer],
    ) -> impl Future<Output = Result<()>> + Send + use<> {
        let handle = self.handle.clone();
        // Only the JSON text travels into the future: the happy path needs nothing else, and
        // the rare failure path reads the steps back from it.
        let steps_json = check_batch("transfer_batch", ts.len())
            .and_then(|()| distinct_steps(ts))
            .and_then(|steps| steps_json(&steps));
        traced("accounts", "transfer_batch", async move {
            let Some(steps_json) = steps_json? else {
                return Ok(());
            };
            let mut conn = handle.writer().await?;
            match conn.backend()? {
                Backend::Sqlite(sqlite) => transfer_batch_on_sqlite(sqlite, &steps_json).await,
                #[cfg(feature = "postgres")]
                Backend::Postgres(_) => postgres::transfer_batch(&mut conn, &steps_json).await,
            }
        })
    }

    /// The sum of every balance, in cents: constant under transfers, for auditors.
    ///
    /// # Errors
    /// [`Error::Overflow`] if the stored balances add up past `i64` (legal data, not the
    /// caller's fault).
    pub fn total_balance(&self) -> impl Future<Output = Result<i64>> + Send + use<> {
        let handle = self.handle.clone();
        traced("accounts", "total_balance", async move {
            handle
                .read(|mut conn| async move {
                    match conn.backend()? {
                        Backend::Sqlite(sqlite) => select_total_balance(sqlite).await,
                        #[cfg(feature = "postgres")]
                        Backend::Postgres(pg) => postgres::total_balance(pg).await,
                    }
                })
                .await
        })
    }
}

/// Transfers of several callers carried to the writer together (group commit, see
/// [`Grouped`]): one ledger `INSERT … SELECT … FROM jsonb_each(?)` for the whole group.
///
/// One statement for the group, because a round trip to sqlx's worker thread costs many times
/// what SQLite needs for one transfer: a member then costs its share of one round trip and one
/// commit (the bench's concurrent transfer rows measure it; the guide's *performance* chapter
/// has the figures).
struct GroupedTransfers;

impl Grouped for GroupedTransfers {
    type Request = Transfer;
    type Outcome = TransferOutcome;

    /// One transfer, one ledger `INSERT`; on SQLite a refusal is read back to name its cause
    /// (PostgreSQL's refusals name it themselves). The only path on PostgreSQL, where
    /// transfers are not grouped.
    async fn apply_one(conn: &mut Conn, t: &Transfer) -> Result<TransferOutcome> {
        match conn.backend()? {
            Backend::Sqlite(sqlite) => transfer_on_sqlite(sqlite, t).await,
            #[cfg(feature = "postgres")]
            Backend::Postgres(_) => postgres::transfer(conn, t).await,
        }
    }

    /// [`apply_one`](Grouped::apply_one)'s `INSERT` on the direct writer; a refusal stores
    /// nothing and goes to `apply_one`, which names its cause.
    fn apply_one_direct(conn: &kit::Connection, t: &Transfer) -> Option<TransferOutcome> {
        Some(match insert_transfer_direct(conn, t)? {
            0 => TransferOutcome::Replayed,
            _ => TransferOutcome::Landed,
        })
    }

    /// [`apply_group`](Grouped::apply_group)'s statement on the direct writer; any refusal
    /// stores nothing and goes to `apply_group`, which runs each member alone.
    fn apply_group_direct(conn: &kit::Connection, ts: &[Transfer]) -> Option<Vec<TransferOutcome>> {
        let refs: Vec<&Transfer> = ts.iter().collect();
        let json = steps_json(&refs).ok()??;
        let landed_keys = insert_transfer_group_direct(conn, &json)?;
        Some(replays(ts, &landed_keys))
    }

    /// The group as one statement. Unlike [`AccountRepo::transfer_batch`] the members are
    /// independent: when the database refuses the statement (one member overdraws, names a
    /// missing account, reuses a key with other parameters, or two members share a new key),
    /// nothing of it is stored and each member runs again alone, so each gets exactly the
    /// answer it would have had by itself. Any other failure (a commit that could not be made:
    /// a full disk, an I/O error, a lock held past the busy timeout) fails every member, since
    /// none of them is stored.
    async fn apply_group(conn: &mut Conn, ts: &[Transfer]) -> Vec<Result<TransferOutcome>> {
        let refs: Vec<&Transfer> = ts.iter().collect();
        let landed = match steps_json(&refs) {
            Ok(Some(json)) => match conn.statements() {
                Ok(sqlite) => insert_transfer_group(sqlite, &json).await,
                Err(err) => Err(err),
            },
            Ok(None) => return Vec::new(),
            Err(err) => Err(err),
        };
        match landed {
            Ok(landed_keys) => replays(ts, &landed_keys).into_iter().map(Ok).collect(),
            Err(err) if err.is_refusal() => {
                let mut outcomes = Vec::with_capacity(ts.len());
                for t in ts {
                    outcomes.push(Self::apply_one(conn, t).await);
                }
                outcomes
            }
            Err(err) => {
                // A commit may have failed halfway: roll back before the writer's next use.
                conn.reset_on_return();
                ts.iter().map(|_| Err(err.for_each_caller())).collect()
            }
        }
    }
}

/// Each member's outcome once a group statement committed, from the keys it says landed: a
/// keyed member the statement skipped had landed before, so it is a replay.
fn replays(ts: &[Transfer], landed_keys: &HashSet<String>) -> Vec<TransferOutcome> {
    ts.iter()
        .map(|t| match &t.idempotency_key {
            Some(key) if !landed_keys.contains(key) => TransferOutcome::Replayed,
            _ => TransferOutcome::Landed,
        })
        .collect()
}

async fn deposit_on_sqlite(
    sqlite: &mut SqliteConnection,
    id: i64,
    amount_cents: i64,
) -> Result<i64> {
    let not_found = Error::NotFound {
        entity: "account",
        id,
    };
    let before = match insert_deposit(sqlite, id, amount_cents).await {
        Err(Error::ForeignKey) => return Err(not_found),
        other => other?.ok_or(not_found)?,
    };
    // The statement landed, so the trigger added exactly `amount_cents` to `before` (an
    // overflow would have refused it); checked all the same.
    before
        .checked_add(amount_cents)
        .ok_or_else(|| credit_overflow(amount_cents, id))
}

async fn transfer_on_sqlite(
    sqlite: &mut SqliteConnection,
    t: &Transfer,
) -> Result<TransferOutcome> {
    match insert_transfer(sqlite, t).await {
        Ok(0) => Ok(TransferOutcome::Replayed),
        Ok(_) => Ok(TransferOutcome::Landed),
        Err(err) => Err(explain_failure(sqlite, std::slice::from_ref(t), err).await),
    }
}

async fn transfer_batch_on_sqlite(sqlite: &mut SqliteConnection, steps_json: &str) -> Result<()> {
    match insert_transfers(sqlite, steps_json).await {
        Ok(_) => Ok(()),
        Err(err) => match steps_from_json(steps_json) {
            Some(steps) => Err(explain_failure(sqlite, &steps, err).await),
            None => Err(err),
        },
    }
}

/// Validates every step and drops in-batch replays (a key repeated with the same movement);
/// a key repeated with another movement is [`Error::Duplicate`] before the database is touched.
fn distinct_steps(ts: &[Transfer]) -> Result<Vec<&Transfer>> {
    let mut seen: HashMap<&str, &Transfer> = HashMap::new();
    let mut steps = Vec::with_capacity(ts.len());
    for (index, t) in ts.iter().enumerate() {
        t.validate()
            .map_err(|err| at_position("step", index, err))?;
        if let Some(key) = t.idempotency_key.as_deref() {
            if let Some(first) = seen.get(key) {
                if first.same_movement(t.from, t.to, t.amount_cents) {
                    continue;
                }
                return Err(Error::Duplicate {
                    constraint: IDEMPOTENCY_KEY_CONSTRAINT.to_owned(),
                });
            }
            seen.insert(key, t);
        }
        steps.push(t);
    }
    Ok(steps)
}

/// The steps as the JSON array `insert_transfers` reads: `[[from, to, amount, key], ...]`.
/// `None` for no steps.
fn steps_json(steps: &[&Transfer]) -> Result<Option<String>> {
    if steps.is_empty() {
        return Ok(None);
    }
    let rows: Vec<(i64, i64, i64, Option<&str>)> = steps
        .iter()
        .map(|t| (t.from, t.to, t.amount_cents, t.idempotency_key.as_deref()))
        .collect();
    serde_json::to_string(&rows)
        .map(Some)
        .map_err(|err| Error::invalid(format!("not JSON: {err}")))
}

/// A credit that would take a balance past `i64`: the caller's amount is at fault (as on
/// SQLite, where the trigger's arithmetic refuses it), so invalid input.
fn credit_overflow(amount_cents: i64, account: i64) -> Error {
    Error::invalid(format!(
        "crediting {amount_cents} cents would overflow the balance of account {account}"
    ))
}

/// The steps `steps_json` wrote, read back for `explain_failure` (and for PostgreSQL's arrays).
fn steps_from_json(steps_json: &str) -> Option<Vec<Transfer>> {
    let rows: Vec<(i64, i64, i64, Option<String>)> = serde_json::from_str(steps_json).ok()?;
    Some(
        rows.into_iter()
            .map(|(from, to, amount_cents, idempotency_key)| Transfer {
                from,
                to,
                amount_cents,
                idempotency_key,
            })
            .collect(),
    )
}

/// Turns a refused transfer statement into the error that names the cause, by reading the
/// ledger keys and balances involved and replaying the steps in order. Runs on the connection
/// that just failed, so (within this process) nothing has changed since.
async fn explain_failure(conn: &mut SqliteConnection, steps: &[Transfer], err: Error) -> Error {
    match diagnose(conn, steps).await {
        Ok(Some(explained)) => explained,
        // Nothing in the data explains it (another process changed it since): keep the original.
        Ok(None) => err,
        Err(read_err) => read_err,
    }
}

async fn diagnose(conn: &mut SqliteConnection, steps: &[Transfer]) -> Result<Option<Error>> {
    // The key rule comes first: a key that landed with other parameters is a Duplicate even if
    // the step could not be afforded.
    let keys: Vec<&str> = steps
        .iter()
        .filter_map(|t| t.idempotency_key.as_deref())
        .collect();
    let mut landed: HashMap<String, (i64, i64, i64)> = HashMap::new();
    if !keys.is_empty() {
        let keys_json = serde_json::to_string(&keys).unwrap_or_default();
        for row in select_landed_keys(conn, &keys_json).await? {
            landed.insert(row.key, (row.from_account, row.to_account, row.amount));
        }
    }
    for t in steps {
        if let Some(&(from, to, amount)) = t.idempotency_key.as_ref().and_then(|k| landed.get(k))
            && !t.same_movement(from, to, amount)
        {
            return Ok(Some(Error::Duplicate {
                constraint: IDEMPOTENCY_KEY_CONSTRAINT.to_owned(),
            }));
        }
    }

    let ids: Vec<i64> = steps.iter().flat_map(|t| [t.from, t.to]).collect();
    let ids_json = serde_json::to_string(&ids).unwrap_or_default();
    let mut balances: HashMap<i64, i64> = select_balances(conn, &ids_json)
        .await?
        .into_iter()
        .map(|row| (row.id, row.balance))
        .collect();
    for t in steps {
        let replayed = t
            .idempotency_key
            .as_ref()
            .is_some_and(|k| landed.contains_key(k));
        if replayed {
            continue;
        }
        for id in [t.from, t.to] {
            if !balances.contains_key(&id) {
                return Ok(Some(Error::NotFound {
                    entity: "account",
                    id,
                }));
            }
        }
        let from_balance = balances[&t.from];
        if from_balance < t.amount_cents {
            return Ok(Some(Error::InsufficientFunds {
                account: t.from,
                balance_cents: from_balance,
                requested_cents: t.amount_cents,
            }));
        }
        let Some(credited) = balances[&t.to].checked_add(t.amount_cents) else {
            return Ok(Some(credit_overflow(t.amount_cents, t.to)));
        };
        balances.insert(t.from, from_balance - t.amount_cents);
        balances.insert(t.to, credited);
    }
    Ok(None)
}

async fn insert_account(
    conn: &mut SqliteConnection,
    user_id: Option<i64>,
    balance_cents: i64,
) -> Result<i64> {
    // `execute` steps the statement to its end, where an autocommit write commits, so a
    // failed commit (a full disk, a lock) is an error here. `INSERT … RETURNING` read with
    // `fetch_one` stops after the row and sqlx drops the commit's result at the reset.
    let result = sqlx::query!(
        r#"
        INSERT INTO accounts (user_id, balance)
        VALUES (?1, ?2)
        "#,
        user_id,
        balance_cents,
    )
    .execute(conn)
    .await?;
    Ok(result.last_insert_rowid())
}

impl Keyed for Account {
    fn key(&self) -> i64 {
        self.id
    }
}

async fn select_many(conn: &mut SqliteConnection, ids_json: &str) -> Result<Vec<Account>> {
    Ok(sqlx::query_as!(
        Account,
        r#"
        SELECT id AS "id!: i64",
               user_id,
               balance AS balance_cents,
               created_at AS "created_at: OffsetDateTime"
        FROM accounts
        WHERE id IN (SELECT value FROM json_each(?1))
        ORDER BY id
        "#,
        ids_json,
    )
    .fetch_all(conn)
    .await?)
}

async fn count(conn: &mut SqliteConnection) -> Result<i64> {
    Ok(
        sqlx::query_scalar!(r#"SELECT count(*) AS "count!: i64" FROM accounts"#)
            .fetch_one(conn)
            .await?,
    )
}

async fn select_page(
    conn: &mut SqliteConnection,
    from_id: i64,
    limit: i64,
) -> Result<Vec<Account>> {
    Ok(sqlx::query_as!(
        Account,
        r#"
        SELECT id AS "id!: i64",
               user_id,
               balance AS balance_cents,
               created_at AS "created_at: OffsetDateTime"
        FROM accounts
        WHERE id >= ?1
        ORDER BY id
        LIMIT ?2
        "#,
        from_id,
        limit,
    )
    .fetch_all(conn)
    .await?)
}

/// The point get, checked by `query_as!`: the worker-thread path runs it, the direct path
/// ([`select_account_direct`]) runs its text.
fn select_account_query(
    id: i64,
) -> sqlx::query::Map<
    'static,
    sqlx::Sqlite,
    impl FnMut(sqlx::sqlite::SqliteRow) -> sqlx::Result<Account> + Send,
    sqlx::sqlite::SqliteArguments,
> {
    sqlx::query_as!(
        Account,
        r#"
        SELECT id AS "id!: i64",
               user_id,
               balance AS balance_cents,
               created_at AS "created_at: OffsetDateTime"
        FROM accounts
        WHERE id = ?1
        "#,
        id,
    )
}

async fn select_account(conn: &mut SqliteConnection, id: i64) -> Result<Option<Account>> {
    Ok(select_account_query(id).fetch_optional(conn).await?)
}

/// [`select_account_query`] on a direct reader (see [`Handle::read_direct`]): `Some` only for a clean
/// answer, each column read as the checked query reads it; `None` sends the caller to the
/// ordinary read, whose answer or error stands.
fn select_account_direct(conn: &kit::Connection, id: i64) -> Option<Option<Account>> {
    static SQL: std::sync::LazyLock<sqlx::SqlStr> =
        std::sync::LazyLock::new(|| sqlx::Execute::sql(select_account_query(0)));
    kit::direct_get(conn, SQL.as_str(), id, |row| {
        Some(Account {
            id: direct_column(row, 0)?,
            user_id: direct_column(row, 1)?,
            balance_cents: direct_column(row, 2)?,
            created_at: direct_column(row, 3)?,
        })
    })
}

// A deposit is a ledger row without a source; the `transfers_apply` trigger credits the
// account, and a missing account fails the foreign key (787). One statement instead of BEGIN,
// INSERT, SELECT, COMMIT: `RETURNING` hands back the balance the row was credited on.
// SQLite computes RETURNING values as the row is inserted, before AFTER triggers run, so this
// is the balance *before* the credit (tests/accounts.rs checks the sum against the stored
// balance, so a SQLite that changed this would fail there, not silently). `fetch_all` steps
// the statement to its end, so an error raised at its end (the foreign key) is not lost.
async fn insert_deposit(
    conn: &mut SqliteConnection,
    id: i64,
    amount_cents: i64,
) -> Result<Option<i64>> {
    let rows = sqlx::query_scalar!(
        r#"
        INSERT INTO transfers (from_account, to_account, amount)
        VALUES (NULL, ?1, ?2)
        RETURNING (SELECT balance FROM accounts WHERE id = ?1) AS "balance_before?: i64"
        "#,
        id,
        amount_cents,
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().next().flatten())
}

// One ledger row; the `transfers_apply` trigger moves the money, and the schema refuses a
// missing account (787), an overdraft (275) or a reused key (2067) by aborting the statement.
// `NOT EXISTS` skips a replay of a key that landed with the same movement: 0 rows, no error.
async fn insert_transfer(conn: &mut SqliteConnection, t: &Transfer) -> Result<u64> {
    Ok(insert_transfer_query(t)
        .execute(conn)
        .await?
        .rows_affected())
}

/// [`insert_transfer`]'s statement, checked by `query!`: the worker path runs it, the direct
/// writer its text ([`insert_transfer_direct`]).
fn insert_transfer_query(
    t: &Transfer,
) -> sqlx::query::Query<'static, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    sqlx::query!(
        r#"
        INSERT INTO transfers (from_account, to_account, amount, idempotency_key)
        SELECT ?1, ?2, ?3, ?4
        WHERE NOT EXISTS (
            SELECT 1
            FROM transfers
            WHERE idempotency_key = ?4
              AND from_account = ?1
              AND to_account = ?2
              AND amount = ?3
        )
        "#,
        t.from,
        t.to,
        t.amount_cents,
        t.idempotency_key.as_deref(),
    )
}

/// [`insert_transfer`] on the direct writer: the rows inserted once committed, `None` when it
/// stored nothing (a refusal included, which the ordinary path then names).
fn insert_transfer_direct(conn: &kit::Connection, t: &Transfer) -> Option<usize> {
    static SQL: std::sync::LazyLock<sqlx::SqlStr> = std::sync::LazyLock::new(|| {
        sqlx::Execute::sql(insert_transfer_query(&Transfer::new(1, 2, 1)))
    });
    let key = t.idempotency_key.as_deref();
    kit::direct_execute(conn, SQL.as_str(), (t.from, t.to, t.amount_cents, key))
}

// The whole batch as one JSON array, `[[from, to, amount, key], ...]`, inserted in order
// (`ORDER BY step.key`): the trigger applies each row against the balances the earlier rows
// left, and the first refused row aborts the statement, undoing the earlier ones. `jsonb_each`
// keeps each step's `value` in SQLite's parsed form for its eight `->>` to read (as items'
// `insert_batch` explains).
async fn insert_transfers(conn: &mut SqliteConnection, steps_json: &str) -> Result<u64> {
    let result = sqlx::query!(
        r#"
        INSERT INTO transfers (from_account, to_account, amount, idempotency_key)
        SELECT step.value ->> 0, step.value ->> 1, step.value ->> 2, step.value ->> 3
        FROM jsonb_each(?1) AS step
        WHERE NOT EXISTS (
            SELECT 1
            FROM transfers AS landed
            WHERE landed.idempotency_key = step.value ->> 3
              AND landed.from_account = step.value ->> 0
              AND landed.to_account = step.value ->> 1
              AND landed.amount = step.value ->> 2
        )
        ORDER BY step.key
        "#,
        steps_json,
    )
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}

// A group of independent callers' transfers as one statement, as `insert_transfers` does for a
// batch; `RETURNING` names the keys that landed, so a keyed member it skipped (`NOT EXISTS`:
// landed before with the same movement) is told `Replayed`. Read with `fetch_all`, which steps
// the statement to its end, where the commit happens: a failed commit is an error here.
async fn insert_transfer_group(
    conn: &mut SqliteConnection,
    steps_json: &str,
) -> Result<HashSet<String>> {
    let keys = insert_transfer_group_query(steps_json)
        .fetch_all(conn)
        .await?;
    Ok(keys.into_iter().flatten().collect())
}

/// [`insert_transfer_group`]'s statement, checked by `query_scalar!`: the worker path runs it,
/// the direct writer its text ([`insert_transfer_group_direct`]).
fn insert_transfer_group_query(
    steps_json: &str,
) -> sqlx::query::QueryScalar<'static, sqlx::Sqlite, Option<String>, sqlx::sqlite::SqliteArguments>
{
    sqlx::query_scalar!(
        r#"
        INSERT INTO transfers (from_account, to_account, amount, idempotency_key)
        SELECT step.value ->> 0, step.value ->> 1, step.value ->> 2, step.value ->> 3
        FROM jsonb_each(?1) AS step
        WHERE NOT EXISTS (
            SELECT 1
            FROM transfers AS landed
            WHERE landed.idempotency_key = step.value ->> 3
              AND landed.from_account = step.value ->> 0
              AND landed.to_account = step.value ->> 1
              AND landed.amount = step.value ->> 2
        )
        ORDER BY step.key
        RETURNING idempotency_key
        "#,
        steps_json,
    )
}

/// [`insert_transfer_group`] on the direct writer: the keys that landed once committed, `None`
/// when it stored nothing (a member's refusal included: the ordinary path then runs each alone).
fn insert_transfer_group_direct(
    conn: &kit::Connection,
    steps_json: &str,
) -> Option<HashSet<String>> {
    static SQL: std::sync::LazyLock<sqlx::SqlStr> =
        std::sync::LazyLock::new(|| sqlx::Execute::sql(insert_transfer_group_query("[]")));
    let keys = kit::direct_returning(conn, SQL.as_str(), [steps_json], |row| {
        direct_column::<Option<String>>(row, 0)
    })?;
    Some(keys.into_iter().flatten().collect())
}

async fn select_total_balance(conn: &mut SqliteConnection) -> Result<i64> {
    Ok(
        sqlx::query_scalar!(r#"SELECT coalesce(sum(balance), 0) AS "total!: i64" FROM accounts"#)
            .fetch_one(conn)
            .await?,
    )
}

struct LandedKey {
    key: String,
    from_account: i64,
    to_account: i64,
    amount: i64,
}

async fn select_landed_keys(
    conn: &mut SqliteConnection,
    keys_json: &str,
) -> Result<Vec<LandedKey>> {
    Ok(sqlx::query_as!(
        LandedKey,
        r#"
        SELECT idempotency_key AS "key!: String",
               from_account AS "from_account!: i64",
               to_account,
               amount
        FROM transfers
        WHERE idempotency_key IN (SELECT value FROM json_each(?1))
        "#,
        keys_json,
    )
    .fetch_all(conn)
    .await?)
}

struct AccountBalance {
    id: i64,
    balance: i64,
}

async fn select_balances(
    conn: &mut SqliteConnection,
    ids_json: &str,
) -> Result<Vec<AccountBalance>> {
    Ok(sqlx::query_as!(
        AccountBalance,
        r#"
        SELECT id AS "id!: i64", balance
        FROM accounts
        WHERE id IN (SELECT value FROM json_each(?1))
        "#,
        ids_json,
    )
    .fetch_all(conn)
    .await?)
}
