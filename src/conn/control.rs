//! Transaction control, per backend: the few statements sqlrepo itself sends to begin, end and
//! nest transactions. SQLite's are checked here; PostgreSQL's in `sqlrepo_postgres::tx`.

use super::backend::Backend;
#[cfg(feature = "postgres")]
use crate::error::{has_sqlstate, sqlstate};

/// Begins a transaction that holds the write lock from the start: `BEGIN IMMEDIATE` on SQLite
/// (so no later upgrade can fail with `SQLITE_BUSY`); `BEGIN` on PostgreSQL, whose writers lock
/// rows, not the database.
pub(super) async fn begin(conn: Backend<'_>) -> sqlx::Result<()> {
    match conn {
        Backend::Sqlite(conn) => sqlx::query!("BEGIN IMMEDIATE")
            .execute(conn)
            .await
            .map(drop),
        #[cfg(feature = "postgres")]
        Backend::Postgres(conn) => sqlrepo_postgres::tx::begin(conn).await,
    }
}

/// Commits the open transaction.
pub(super) async fn commit(conn: Backend<'_>) -> sqlx::Result<()> {
    match conn {
        Backend::Sqlite(conn) => sqlx::query!("COMMIT").execute(conn).await.map(drop),
        #[cfg(feature = "postgres")]
        Backend::Postgres(conn) => sqlrepo_postgres::tx::commit(conn).await,
    }
}

/// Rolls back the open transaction.
pub(super) async fn rollback(conn: Backend<'_>) -> sqlx::Result<()> {
    match conn {
        Backend::Sqlite(conn) => sqlx::query!("ROLLBACK").execute(conn).await.map(drop),
        #[cfg(feature = "postgres")]
        Backend::Postgres(conn) => sqlrepo_postgres::tx::rollback(conn).await,
    }
}

/// Opens the savepoint of an all-or-nothing unit inside a transaction (`Conn::atomic`).
pub(super) async fn savepoint_atomic(conn: Backend<'_>) -> sqlx::Result<()> {
    match conn {
        Backend::Sqlite(conn) => sqlx::query!("SAVEPOINT sqlrepo_atomic")
            .execute(conn)
            .await
            .map(drop),
        #[cfg(feature = "postgres")]
        Backend::Postgres(conn) => sqlrepo_postgres::tx::savepoint_atomic(conn).await,
    }
}

/// Keeps the unit opened by [`savepoint_atomic`].
pub(super) async fn release_atomic(conn: Backend<'_>) -> sqlx::Result<()> {
    match conn {
        Backend::Sqlite(conn) => sqlx::query!("RELEASE sqlrepo_atomic")
            .execute(conn)
            .await
            .map(drop),
        #[cfg(feature = "postgres")]
        Backend::Postgres(conn) => sqlrepo_postgres::tx::release_atomic(conn).await,
    }
}

/// Undoes the unit opened by [`savepoint_atomic`] and releases its savepoint.
pub(super) async fn rollback_atomic(conn: Backend<'_>) -> sqlx::Result<()> {
    match conn {
        Backend::Sqlite(conn) => {
            sqlx::query!("ROLLBACK TO sqlrepo_atomic")
                .execute(&mut *conn)
                .await?;
            sqlx::query!("RELEASE sqlrepo_atomic")
                .execute(conn)
                .await
                .map(drop)
        }
        #[cfg(feature = "postgres")]
        Backend::Postgres(conn) => sqlrepo_postgres::tx::rollback_atomic(conn).await,
    }
}

/// Opens the savepoint PostgreSQL transactions put before each call (see `TxState`).
#[cfg(feature = "postgres")]
pub(super) async fn savepoint_call(conn: &mut sqlx::PgConnection) -> sqlx::Result<()> {
    sqlrepo_postgres::tx::savepoint_call(conn).await
}

/// Begins a PostgreSQL transaction with the savepoint of its first call already open, in one
/// round trip (see `TxState::start_call`).
#[cfg(feature = "postgres")]
pub(super) async fn begin_with_call(conn: &mut sqlx::PgConnection) -> sqlx::Result<()> {
    sqlrepo_postgres::tx::begin_with_call_savepoint(conn).await
}

/// Ends the savepoint of a call before the transaction commits: released when the call left
/// the transaction usable; rolled back to and released when the call left it aborted (SQLSTATE
/// 25P02, "current transaction is aborted"), so the transaction commits without what the
/// failed call did. (PostgreSQL answers `COMMIT` of an aborted transaction with a silent
/// `ROLLBACK`, so the `RELEASE` is what tells the two apart.)
#[cfg(feature = "postgres")]
pub(super) async fn end_call(conn: &mut sqlx::PgConnection) -> sqlx::Result<()> {
    let released = drained(conn, CallEnd::Release).await;
    match released {
        Err(err) if has_sqlstate(&err, sqlstate::IN_FAILED_SQL_TRANSACTION) => {
            sqlrepo_postgres::tx::rollback_call(conn).await?;
            sqlrepo_postgres::tx::release_call(conn).await
        }
        other => other,
    }
}

/// Keeps what the last call did and opens the savepoint of the next one, in one round trip;
/// when the last call left the transaction aborted (25P02), rolls back to its savepoint
/// instead, which undoes that call and leaves the savepoint open for the next one.
#[cfg(feature = "postgres")]
pub(super) async fn next_call(conn: &mut sqlx::PgConnection) -> sqlx::Result<()> {
    let moved = drained(conn, CallEnd::ReleaseAndSavepoint).await;
    match moved {
        Err(err) if has_sqlstate(&err, sqlstate::IN_FAILED_SQL_TRANSACTION) => {
            sqlrepo_postgres::tx::rollback_call(conn).await
        }
        other => other,
    }
}

/// Undoes a call its caller gave up on (its statement cancelled, or finished meanwhile),
/// keeping its savepoint open for the next call: what it did must not commit with the `Tx`.
#[cfg(feature = "postgres")]
pub(super) async fn undo_given_up_call(conn: &mut sqlx::PgConnection) -> sqlx::Result<()> {
    drained(conn, CallEnd::RollbackTo).await
}

/// How a call's savepoint ends.
#[cfg(feature = "postgres")]
#[derive(Clone, Copy)]
enum CallEnd {
    Release,
    ReleaseAndSavepoint,
    RollbackTo,
}

/// Sends `end`, once more if the first answer was the error of a statement whose call was
/// cancelled (sqlx reads the rest of that answer first and returns an error in it in place of
/// this one's: `end` was not sent yet). 25P02 is the statement's own answer.
#[cfg(feature = "postgres")]
async fn drained(conn: &mut sqlx::PgConnection, end: CallEnd) -> sqlx::Result<()> {
    let mut tries = 0;
    loop {
        tries += 1;
        let answer = match end {
            CallEnd::Release => sqlrepo_postgres::tx::release_call(conn).await,
            CallEnd::ReleaseAndSavepoint => {
                sqlrepo_postgres::tx::release_and_savepoint_call(conn).await
            }
            CallEnd::RollbackTo => sqlrepo_postgres::tx::rollback_call(conn).await,
        };
        match &answer {
            Err(err)
                if tries < 2
                    && err.as_database_error().is_some()
                    && !has_sqlstate(err, sqlstate::IN_FAILED_SQL_TRANSACTION) => {}
            _ => return answer,
        }
    }
}

/// Undoes what the running call did, keeping its savepoint (`Conn::recover`).
#[cfg(feature = "postgres")]
pub(super) async fn rollback_call(conn: &mut sqlx::PgConnection) -> sqlx::Result<()> {
    sqlrepo_postgres::tx::rollback_call(conn).await
}
