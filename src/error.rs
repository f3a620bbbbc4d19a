//! The one error type of the crate, and the one place that turns a `sqlx::Error` into it.
//!
//! SQLite reports constraint failures with an extended result code and a message such as
//! `UNIQUE constraint failed: items.name`; it gives no structured constraint name
//! (`DatabaseError::constraint()` is `None`). So `classify` reads the code first and parses
//! the message only to name the constraint, in exactly one function (`constraint_name`).

use std::borrow::Cow;

/// `Result<T, sqlrepo::Error>`, the return type of every fallible call in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a repository call, classified by meaning.
///
/// Match on the variant, not on the message: the message is for people.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The row the operation needs does not exist (for example a transfer to a closed account).
    #[error("{entity} {id} does not exist; check the id or create it first")]
    NotFound {
        /// What was looked for: `"account"`, `"user"`, `"item"`, `"order"`.
        entity: &'static str,
        /// The id that was not found.
        id: i64,
    },

    /// A unique value is already taken, or an idempotency key was reused with other parameters.
    #[error("{constraint} must be unique and this value is already taken; choose another")]
    Duplicate {
        /// The constraint as `table.column`, for example `items.name` or `users.email`.
        constraint: String,
    },

    /// A referenced row is missing, or the row is still referenced by others.
    ///
    /// It names no constraint: SQLite does not report which foreign key failed (only
    /// `FOREIGN KEY constraint failed`, and only at the end of the statement), so a name could
    /// be given on PostgreSQL alone, and the variant's shape is the same on both backends. To
    /// learn which parent is missing, read it.
    #[error(
        "a referenced row is missing or this row is still referenced \
         (for example a user who still has orders or accounts); remove or create that row first"
    )]
    ForeignKey,

    /// A transfer would take the source account below zero.
    #[error(
        "account {account} holds {balance_cents} cents and cannot pay {requested_cents} cents; \
         deposit first or transfer less"
    )]
    InsufficientFunds {
        /// The account that would be overdrawn.
        account: i64,
        /// Its balance when the transfer was tried (after the earlier steps of a batch).
        balance_cents: i64,
        /// The amount the transfer asked for.
        requested_cents: i64,
    },

    /// The input breaks a documented rule; nothing was written.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// The database stayed locked by another writer past the busy timeout; retry later.
    #[error(
        "the database is busy (locked by another writer past the busy timeout); retry the operation"
    )]
    Busy,

    /// The schema is not what this crate expects, usually because migrations have not run.
    #[error("the database schema is not as expected: {0}")]
    Schema(String),

    /// The disk (or the file system's quota) is full: the write that needed the space failed
    /// and nothing of it was stored. Reads go on; writes succeed again once space is freed,
    /// on the same `Db`.
    #[error("the disk is full: this write was not stored; free space, then retry")]
    DiskFull,

    /// The operating system refused to read or write the database file (an I/O error, a file
    /// too large for `ulimit -f`, a vanished disk); the operation was not stored.
    #[error("the database file could not be read or written (an I/O error): {0}")]
    Io(String),

    /// The database file is damaged or is not a SQLite database; restore it from a backup.
    #[error("the database file is damaged or is not a database: {0}")]
    Corrupt(String),

    /// The file or the connection is read-only (a reader [`Conn`](crate::Conn), or a file the
    /// process may not write); nothing was written.
    #[error("the database is read-only here: {0}")]
    ReadOnly(String),

    /// A value is larger than SQLite accepts in one piece (a string or blob past its length
    /// limit); nothing was written.
    #[error("a value is too big for the database: {0}")]
    TooBig(String),

    /// A number computed from stored data is out of range (for example a sum of balances that
    /// does not fit in 64 bits): the data is legal, the caller's input is not at fault.
    #[error("a result computed from stored data is out of range: {0}")]
    Overflow(String),

    /// The transaction is over and nothing of it was stored: SQLite rolled it back after an
    /// error (a full disk, an I/O error, a trigger's `RAISE(ROLLBACK)`), or it was dropped or
    /// finished already. Begin a new one.
    #[error("the transaction was rolled back and stored nothing: {0}; begin a new one")]
    RolledBack(String),

    /// A caller-supplied pool or file is configured in a way that would break sqlrepo's
    /// guarantees (for example `foreign_keys` off); nothing was written.
    #[error("unsafe database configuration: {0}")]
    Config(String),

    /// The database server could not be reached, or the connection to it was lost (a
    /// PostgreSQL server restarting, a network failure). A write that got this may or may not
    /// have been stored: retry it with an idempotency key (transfers), or read to find out.
    #[error("the database server is unavailable ({0}); retry once it is back")]
    Unavailable(String),

    /// The server cancelled the statement before it finished (PostgreSQL's SQLSTATE 57014):
    /// it ran past [`DbOptions::statement_timeout`](crate::DbOptions::statement_timeout), or
    /// an operator (or sqlrepo, for a call its caller gave up on) cancelled it. Nothing of the
    /// statement was stored; inside a [`Tx`](crate::Tx) the transaction goes on without it.
    /// Retryable: the same call may finish next time.
    #[error(
        "the server cancelled the statement ({0}); nothing of it was stored; retry, or allow \
         it longer (DbOptions::statement_timeout)"
    )]
    Cancelled(String),

    /// A stored row holds a value this crate cannot read without changing it, so that row is
    /// refused rather than read wrong: JSON written by another program with a number beyond a
    /// 64-bit float (`1e400`) or more precise than one (a 30-digit integer), which
    /// `serde_json::Value` would fail on or round, and an update would then write back
    /// rounded. Only that row is refused: a [`stream`](crate::ItemRepo::stream) yields this
    /// error in its place and goes on with the next row. Not retryable; fix the row with SQL.
    #[error(
        "{entity} {id} holds a value that cannot be read without changing it ({reason}); \
         correct the stored row with SQL"
    )]
    Unreadable {
        /// What the row is: `"item"`.
        entity: &'static str,
        /// The row's id.
        id: i64,
        /// What in the row cannot be read, naming the value.
        reason: String,
    },

    /// The database refused a value with a `CHECK` or `NOT NULL` constraint of the schema: a
    /// value that passed the caller's side (sqlrepo's own repositories refuse bad input first,
    /// as [`Error::InvalidInput`]) but not the table's rule, typically on a service's own table
    /// or a trigger's check. Nothing of the statement was stored. Not retryable unchanged.
    #[error(
        "the database refused the value: it breaks the constraint {constraint}; change the value \
         to meet it"
    )]
    Constraint {
        /// The constraint as the database names it: a `CHECK`'s name (`tags_name_length`), or
        /// `table.column` for a `NOT NULL` (`tags.name`).
        constraint: String,
    },

    /// A [`Tx`](crate::Tx) (or a repository or [`Handle`](crate::Handle) taken from it) was
    /// used after it was committed or rolled back: a program error, not bad input. Nothing was
    /// done; begin a new transaction. (A transaction that *the database* ended, after a failure
    /// inside it, is [`Error::RolledBack`].)
    #[error("the transaction has already been committed or rolled back; begin a new one")]
    TxFinished,

    /// A call that needs one backend was made on the other: [`Conn::sqlite`](crate::Conn::sqlite)
    /// on a `Db` opened on a `postgres://` URL, or [`Conn::postgres`](crate::Conn::postgres) on
    /// a SQLite file. A program error, not configuration: match on
    /// [`Conn::backend`](crate::Conn::backend) to serve both.
    #[error("the wrong backend for this call: {0}")]
    WrongBackend(String),

    /// Any other database failure, with the `sqlx` error kept as the source.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
}

impl Error {
    /// True when the same call may succeed if tried again unchanged: [`Error::Busy`],
    /// [`Error::Cancelled`] and [`Error::Unavailable`] (for a write, see its note on
    /// idempotency).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Busy | Error::Cancelled(_) | Error::Unavailable(_)
        )
    }

    /// True when the database refused a row of a grouped write (a taken name, a bad value, a
    /// constraint, a missing parent): the group then runs again one request at a time, so
    /// that only the request it refused fails. Any other error of a group's statement fails
    /// every member alike.
    pub(crate) fn is_refusal(&self) -> bool {
        matches!(
            self,
            Error::Duplicate { .. }
                | Error::InvalidInput(_)
                | Error::Constraint { .. }
                | Error::ForeignKey
        )
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Error {
        Error::InvalidInput(message.into())
    }

    /// The same failure for another caller: when one statement carried several callers'
    /// writes and failed as a whole (a commit that could not be made), each of them gets it.
    /// A `sqlx::Error` cannot be cloned, so [`Error::Database`] is passed on as its message.
    pub(crate) fn for_each_caller(&self) -> Error {
        match self {
            Error::NotFound { entity, id } => Error::NotFound { entity, id: *id },
            Error::Duplicate { constraint } => Error::Duplicate {
                constraint: constraint.clone(),
            },
            Error::ForeignKey => Error::ForeignKey,
            Error::InsufficientFunds {
                account,
                balance_cents,
                requested_cents,
            } => Error::InsufficientFunds {
                account: *account,
                balance_cents: *balance_cents,
                requested_cents: *requested_cents,
            },
            Error::InvalidInput(message) => Error::InvalidInput(message.clone()),
            Error::Busy => Error::Busy,
            Error::Schema(message) => Error::Schema(message.clone()),
            Error::DiskFull => Error::DiskFull,
            Error::Io(message) => Error::Io(message.clone()),
            Error::Corrupt(message) => Error::Corrupt(message.clone()),
            Error::ReadOnly(message) => Error::ReadOnly(message.clone()),
            Error::TooBig(message) => Error::TooBig(message.clone()),
            Error::Overflow(message) => Error::Overflow(message.clone()),
            Error::RolledBack(message) => Error::RolledBack(message.clone()),
            Error::Config(message) => Error::Config(message.clone()),
            Error::Unavailable(message) => Error::Unavailable(message.clone()),
            Error::Cancelled(message) => Error::Cancelled(message.clone()),
            Error::Unreadable { entity, id, reason } => Error::Unreadable {
                entity,
                id: *id,
                reason: reason.clone(),
            },
            Error::Constraint { constraint } => Error::Constraint {
                constraint: constraint.clone(),
            },
            Error::TxFinished => Error::TxFinished,
            Error::WrongBackend(message) => Error::WrongBackend(message.clone()),
            Error::Database(err) => Error::Database(sqlx::Error::Protocol(err.to_string())),
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        classify(err)
    }
}

impl From<sqlx::migrate::MigrateError> for Error {
    fn from(err: sqlx::migrate::MigrateError) -> Self {
        use sqlx::migrate::MigrateError;
        match err {
            MigrateError::VersionMissing(version) => Error::Schema(format!(
                "the database has migration {version} applied, which this version of sqlrepo does \
                 not know; it was migrated by a newer release, so upgrade sqlrepo instead of using it"
            )),
            MigrateError::VersionMismatch(version) => Error::Schema(format!(
                "migration {version} applied to this database differs from the one in this \
                 release; the migrations were edited after they ran"
            )),
            MigrateError::Dirty(version) => Error::Schema(format!(
                "migration {version} failed part-way on an earlier run; repair the database by hand"
            )),
            MigrateError::Execute(err) => classify(err),
            // A lock keeps its meaning (Busy, retry); anything else that stops a migration is a
            // schema problem, such as a table of that name already in the file.
            MigrateError::ExecuteMigration(err, version) => match classify(err) {
                Error::Database(err) => Error::Schema(format!(
                    "migration {version} could not be applied ({err}); the file holds a schema \
                     this release did not make"
                )),
                other => other,
            },
            other => Error::Schema(format!("migrations could not run: {other}")),
        }
    }
}

// SQLite extended result codes (sqlite3.h) that change the meaning of an error.
const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;
const SQLITE_READONLY: i32 = 8;
const SQLITE_IOERR: i32 = 10;
const SQLITE_CORRUPT: i32 = 11;
const SQLITE_FULL: i32 = 13;
// Growing the WAL's shared-memory index (`-shm`) failed: SQLite documents it as the I/O error
// a full volume gives in WAL mode, so it is a full disk to the caller.
const SQLITE_IOERR_SHMSIZE: i32 = 4874;
const SQLITE_TOOBIG: i32 = 18;
const SQLITE_NOTADB: i32 = 26;
const SQLITE_CONSTRAINT_CHECK: i32 = 275;
const SQLITE_CONSTRAINT_PRIMARYKEY: i32 = 1555;
const SQLITE_CONSTRAINT_UNIQUE: i32 = 2067;
const SQLITE_CONSTRAINT_FOREIGNKEY: i32 = 787;
const SQLITE_CONSTRAINT_DATATYPE: i32 = 3091;
const SQLITE_CONSTRAINT_NOTNULL: i32 = 1299;
// `ON DELETE RESTRICT` refuses through SQLite's trigger machinery, so a delete of a row that is
// still referenced reports this code, with the message `FOREIGN KEY constraint failed`.
const SQLITE_CONSTRAINT_TRIGGER: i32 = 1811;

/// The SQLite extended result code of a database error, if it is one.
pub(crate) fn sqlite_code(err: &sqlx::Error) -> Option<i32> {
    match err {
        sqlx::Error::Database(db) => db.code().and_then(|code| code.parse().ok()),
        _ => None,
    }
}

/// Connection failures classified so far ([`Error::Unavailable`]), by this process. Held
/// PostgreSQL connections compare it with the value at their last check and ping themselves
/// when it moved, so a connection a restarted server dropped is found and replaced without a
/// ping on every lease.
static CONNECTION_FAILURES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many connection failures this process has classified.
#[cfg(feature = "postgres")]
pub(crate) fn connection_failures() -> u64 {
    CONNECTION_FAILURES.load(std::sync::atomic::Ordering::Acquire)
}

/// Numbers the classifications that say a server cannot take writes now (see
/// [`refusal_seen_since`]), process-wide, so a lease can tell the ones made after it was lent.
#[cfg(feature = "postgres")]
static REFUSALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[cfg(feature = "postgres")]
thread_local! {
    /// The task that made the last such classification on this thread (`None`: the future a
    /// `block_on` runs, such as `#[tokio::main]`'s, which is no task), and its number.
    static LAST_REFUSAL: std::cell::Cell<Option<(Option<tokio::task::Id>, u64)>> =
        const { std::cell::Cell::new(None) };
}

/// The number the next refusal will be above: a lease takes it when it is lent.
#[cfg(feature = "postgres")]
pub(crate) fn refusals_so_far() -> u64 {
    REFUSALS.load(std::sync::atomic::Ordering::Acquire)
}

/// Whether the running task, on this thread, classified an error saying the server cannot take
/// writes ([`Error::Unavailable`], [`Error::ReadOnly`], "recovery is in progress") after
/// `since` ([`refusals_so_far`] when the lease was lent); forgets it once asked.
///
/// A statement's error is classified by the `?` right after its answer, and a lease that saw it
/// is dropped by the same return, with no `.await` in between: so this is the lease's own
/// result, not another task's, and not another `Db`'s. (A call that awaits something else
/// between the two may miss it; its next write meets the same refusal.)
#[cfg(feature = "postgres")]
pub(crate) fn refusal_seen_since(since: u64) -> bool {
    let task = tokio::task::try_id();
    LAST_REFUSAL.with(|last| match last.get() {
        Some((by, number)) if by == task && number > since => {
            last.set(None);
            true
        }
        _ => false,
    })
}

/// Records a refusal for [`refusal_seen_since`].
#[cfg(feature = "postgres")]
fn note_refusal() {
    let number = REFUSALS.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
    let task = tokio::task::try_id();
    LAST_REFUSAL.with(|last| last.set(Some((task, number))));
}

/// Turns a `sqlx::Error` into the [`Error`] a caller can act on. The only classifier.
pub(crate) fn classify(err: sqlx::Error) -> Error {
    let classified = classify_once(err);
    if let Error::Unavailable(_) = classified {
        CONNECTION_FAILURES.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        #[cfg(feature = "postgres")]
        note_refusal();
    }
    classified
}

/// [`classify`], without counting.
fn classify_once(err: sqlx::Error) -> Error {
    let (code, message) = match &err {
        #[cfg(feature = "postgres")]
        sqlx::Error::Database(db)
            if db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some() =>
        {
            return classify_postgres(err);
        }
        sqlx::Error::Database(db) => (sqlite_code(&err), db.message().to_owned()),
        sqlx::Error::PoolTimedOut => return Error::Busy,
        // Only a server is reached over a socket: SQLite reports file errors as result codes.
        sqlx::Error::Io(io) => return Error::Unavailable(io.to_string()),
        _ => return Error::Database(err),
    };
    let Some(code) = code else {
        return Error::Database(err);
    };
    match code {
        SQLITE_CONSTRAINT_UNIQUE | SQLITE_CONSTRAINT_PRIMARYKEY => Error::Duplicate {
            constraint: constraint_name(&message).into_owned(),
        },
        SQLITE_CONSTRAINT_FOREIGNKEY => Error::ForeignKey,
        SQLITE_CONSTRAINT_TRIGGER if message.starts_with("FOREIGN KEY") => Error::ForeignKey,
        SQLITE_CONSTRAINT_CHECK | SQLITE_CONSTRAINT_NOTNULL => Error::Constraint {
            constraint: constraint_name(&message).into_owned(),
        },
        SQLITE_CONSTRAINT_DATATYPE => Error::InvalidInput(
            "a number is out of range: the result would overflow a 64-bit integer".to_owned(),
        ),
        // The primary code is the low byte of the extended one (SQLITE_BUSY_SNAPSHOT, ...).
        c if c & 0xff == SQLITE_BUSY || c & 0xff == SQLITE_LOCKED => Error::Busy,
        // Storage failures, by their primary code: each asks for a different remedy.
        c if c & 0xff == SQLITE_FULL || c == SQLITE_IOERR_SHMSIZE => Error::DiskFull,
        c if c & 0xff == SQLITE_IOERR => Error::Io(message),
        c if c & 0xff == SQLITE_CORRUPT || c & 0xff == SQLITE_NOTADB => Error::Corrupt(message),
        c if c & 0xff == SQLITE_READONLY => Error::ReadOnly(format!(
            "{message}; write through Handle::writer, on a file this process may write"
        )),
        c if c & 0xff == SQLITE_TOOBIG => Error::TooBig(message),
        // SQLite's sum() raises this instead of wrapping around: stored data, not input.
        _ if message == "integer overflow" => Error::Overflow(SUM_OVERFLOW.to_owned()),
        _ if message.starts_with("no such table") || message.starts_with("no such column") => {
            Error::Schema(format!(
                "{message}; the migrations have not run on this database \
                 (call Db::migrate, or run `cargo sqlx migrate run`)"
            ))
        }
        _ => Error::Database(err),
    }
}

/// What [`Error::Overflow`] says of a sum over stored data past `i64`, on both backends.
const SUM_OVERFLOW: &str = "a sum would overflow a 64-bit integer";

/// PostgreSQL's SQLSTATE codes that sqlrepo tells apart, by their names in PostgreSQL's
/// documentation (Appendix A).
#[cfg(feature = "postgres")]
pub(crate) mod sqlstate {
    pub(crate) const UNIQUE_VIOLATION: &str = "23505";
    pub(crate) const FOREIGN_KEY_VIOLATION: &str = "23503";
    pub(crate) const CHECK_VIOLATION: &str = "23514";
    pub(crate) const NOT_NULL_VIOLATION: &str = "23502";
    pub(crate) const NUMERIC_VALUE_OUT_OF_RANGE: &str = "22003";
    pub(crate) const IN_FAILED_SQL_TRANSACTION: &str = "25P02";
    pub(crate) const READ_ONLY_SQL_TRANSACTION: &str = "25006";
    pub(crate) const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
    pub(crate) const INVALID_CATALOG_NAME: &str = "3D000";
    pub(crate) const DUPLICATE_DATABASE: &str = "42P04";
    pub(crate) const DISK_FULL: &str = "53100";
    pub(crate) const QUERY_CANCELED: &str = "57014";
}

/// Whether `err` is a database error with this SQLSTATE.
#[cfg(feature = "postgres")]
pub(crate) fn has_sqlstate(err: &sqlx::Error, code: &str) -> bool {
    err.as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|found| found == code)
}

/// A sum over stored data that overflowed `bigint` is [`Error::Overflow`] (the data is legal,
/// the caller's input is not at fault), as SQLite's `sum()` overflow is; anything else goes to
/// the one classifier. (A write's overflow, 22003 too, is the caller's input: `InvalidInput`.)
#[cfg(feature = "postgres")]
pub(crate) fn classify_sum(err: sqlx::Error) -> Error {
    if has_sqlstate(&err, sqlstate::NUMERIC_VALUE_OUT_OF_RANGE) {
        Error::Overflow(SUM_OVERFLOW.to_owned())
    } else {
        classify(err)
    }
}

/// Classifies a PostgreSQL error by its SQLSTATE (and, for a unique violation, names the
/// constraint as SQLite does: `table.column`).
#[cfg(feature = "postgres")]
fn classify_postgres(err: sqlx::Error) -> Error {
    let sqlx::Error::Database(db) = &err else {
        return Error::Database(err);
    };
    let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() else {
        return Error::Database(err);
    };
    let code = pg.code();
    let message = pg.message();
    let constraint = pg.constraint().unwrap_or("");
    match code {
        sqlstate::UNIQUE_VIOLATION => Error::Duplicate {
            constraint: unique_name(pg.table(), constraint, pg.detail()),
        },
        sqlstate::FOREIGN_KEY_VIOLATION => Error::ForeignKey,
        sqlstate::CHECK_VIOLATION => Error::Constraint {
            constraint: constraint.to_owned(),
        },
        sqlstate::NOT_NULL_VIOLATION => Error::Constraint {
            constraint: format!(
                "{}.{}",
                pg.table().unwrap_or("?"),
                pg.column().unwrap_or("?")
            ),
        },
        sqlstate::NUMERIC_VALUE_OUT_OF_RANGE => Error::InvalidInput(
            "a number is out of range: the result would overflow a 64-bit integer".to_owned(),
        ),
        // Data exceptions: a NUL character in text, malformed JSON, an invalid value.
        c if c.starts_with("22") => {
            Error::InvalidInput(format!("the database refused the value: {message}"))
        }
        // Serialization failure (also a query cancelled on a replica by replay), deadlock,
        // lock not available: nothing was stored, and the same call may succeed next time.
        "40001" | "40P01" | "55P03" => Error::Busy,
        "42P01" | "42703" | "42883" => Error::Schema(format!(
            "{message}; the migrations have not run on this database (call Db::migrate)"
        )),
        sqlstate::DISK_FULL => Error::DiskFull,
        // statement_timeout, pg_cancel_backend or a client's cancel request: the statement was
        // aborted, so nothing of it stands. Before the `57P` arm, which it is not part of.
        sqlstate::QUERY_CANCELED => Error::Cancelled(message.to_owned()),
        sqlstate::READ_ONLY_SQL_TRANSACTION => {
            // On a connection to the primary: it was demoted, or made read-only.
            note_refusal();
            Error::ReadOnly(format!(
                "{message}; write through Handle::writer (the primary)"
            ))
        }
        // A primary's function (its WAL position) asked of a server that is a standby now.
        sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE if message == "recovery is in progress" => {
            note_refusal();
            Error::Database(err)
        }
        "54000" => Error::TooBig(message.to_owned()),
        // Connection exceptions, the server shutting down or starting, too many connections.
        c if c.starts_with("08") || c.starts_with("57P") || c == "53300" => {
            Error::Unavailable(message.to_owned())
        }
        _ => Error::Database(err),
    }
}

/// A unique constraint as `table.column`, as SQLite names it: from the constraint name when it
/// follows `<table>_<columns>_unique` or PostgreSQL's default `<table>_<columns>_key`
/// (`items_name_unique` → `items.name`), else from the detail's key
/// (`Key (a, b)=(…) already exists.` → `t.a, t.b`), else the constraint name itself.
#[cfg(feature = "postgres")]
fn unique_name(table: Option<&str>, constraint: &str, detail: Option<&str>) -> String {
    let Some(table) = table else {
        return constraint.to_owned();
    };
    let columns = constraint
        .strip_prefix(table)
        .and_then(|rest| rest.strip_prefix('_'))
        .and_then(|rest| {
            rest.strip_suffix("_unique")
                .or_else(|| rest.strip_suffix("_key"))
        });
    if let Some(columns) = columns {
        return format!("{table}.{columns}");
    }
    let keys = detail
        .and_then(|detail| detail.strip_prefix("Key ("))
        .and_then(|rest| rest.split_once(")=("))
        .map(|(keys, _)| keys);
    match keys {
        Some(keys) => keys
            .split(", ")
            .map(|key| format!("{table}.{key}"))
            .collect::<Vec<_>>()
            .join(", "),
        None => constraint.to_owned(),
    }
}

/// The constraint a SQLite constraint message names, as SQLite spells it.
///
/// `UNIQUE constraint failed: items.name` → `items.name`;
/// `UNIQUE constraint failed: t.a, t.b` → `t.a, t.b`;
/// `CHECK constraint failed: accounts_balance_non_negative` → `accounts_balance_non_negative`;
/// anything else → the whole message.
pub(crate) fn constraint_name(message: &str) -> Cow<'_, str> {
    match message.split_once("constraint failed: ") {
        Some((_, name)) => Cow::Borrowed(name.trim()),
        None => Cow::Borrowed(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_message_names_table_and_column() {
        assert_eq!(
            constraint_name("UNIQUE constraint failed: items.name"),
            "items.name"
        );
    }

    #[test]
    fn composite_unique_message_keeps_every_column() {
        assert_eq!(
            constraint_name("UNIQUE constraint failed: t.a, t.b"),
            "t.a, t.b"
        );
    }

    #[test]
    fn check_message_names_the_constraint() {
        assert_eq!(
            constraint_name("CHECK constraint failed: accounts_balance_non_negative"),
            "accounts_balance_non_negative"
        );
    }

    #[test]
    fn not_null_message_names_the_column() {
        assert_eq!(
            constraint_name("NOT NULL constraint failed: items.name"),
            "items.name"
        );
    }

    #[test]
    fn foreign_key_message_has_no_name_and_is_kept_whole() {
        assert_eq!(
            constraint_name("FOREIGN KEY constraint failed"),
            "FOREIGN KEY constraint failed"
        );
    }

    /// A database error with just an extended code and a message, as SQLite reports one.
    #[derive(Debug)]
    struct Coded(i32, &'static str);

    impl std::fmt::Display for Coded {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.1)
        }
    }

    impl std::error::Error for Coded {}

    impl sqlx::error::DatabaseError for Coded {
        fn message(&self) -> &str {
            self.1
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(self.0.to_string().into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn classify_code(code: i32, message: &'static str) -> Error {
        classify(sqlx::Error::Database(Box::new(Coded(code, message))))
    }

    #[test]
    fn a_full_database_or_wal_index_is_disk_full_and_other_io_errors_are_io() {
        assert!(matches!(
            classify_code(13, "database or disk is full"),
            Error::DiskFull
        ));
        assert!(matches!(
            classify_code(4874, "disk I/O error"),
            Error::DiskFull
        ));
        // SQLITE_IOERR_WRITE: an ENOSPC there is already reported as SQLITE_FULL by SQLite, so
        // this one is a real I/O failure.
        assert!(matches!(classify_code(778, "disk I/O error"), Error::Io(_)));
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn postgres_unique_constraints_are_named_as_on_sqlite() {
        assert_eq!(
            unique_name(Some("items"), "items_name_unique", None),
            "items.name"
        );
        assert_eq!(
            unique_name(Some("notes"), "notes_slug_key", None),
            "notes.slug"
        );
        assert_eq!(
            unique_name(
                Some("t"),
                "t_pkey",
                Some("Key (a, b)=(1, 2) already exists.")
            ),
            "t.a, t.b"
        );
        assert_eq!(unique_name(None, "c", None), "c");
    }

    #[cfg(feature = "postgres")]
    #[tokio::test]
    async fn a_refusal_is_a_lease_s_own_only_in_its_task_after_it_was_lent_and_once() {
        let broken = || {
            sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "connection reset by peer",
            ))
        };
        // Before the lease was lent: another call's.
        assert!(matches!(classify(broken()), Error::Unavailable(_)));
        let since = refusals_so_far();
        assert!(!refusal_seen_since(since));
        // Another task's on the same thread (another Db's call, say): not this lease's.
        tokio::spawn(async move { classify(broken()) })
            .await
            .unwrap();
        assert!(!refusal_seen_since(since));
        // This task's own, after the lease was lent: seen, and only once.
        assert!(matches!(classify(broken()), Error::Unavailable(_)));
        assert!(refusal_seen_since(since));
        assert!(!refusal_seen_since(since));
    }

    #[test]
    fn only_busy_cancelled_and_unavailable_are_retryable() {
        assert!(Error::Busy.is_retryable());
        assert!(
            Error::Cancelled("canceling statement due to statement timeout".into()).is_retryable()
        );
        assert!(Error::Unavailable("gone".into()).is_retryable());
        assert!(!Error::ForeignKey.is_retryable());
        assert!(!Error::invalid("x").is_retryable());
    }
}
