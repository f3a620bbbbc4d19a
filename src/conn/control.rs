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

/// Ends the savepoint of a call: released when the call left the transaction usable; rolled
/// back to and released when the call left it aborted (SQLSTATE 25P02, "current transaction is
/// aborted"), so the transaction goes on without what the failed call did.
#[cfg(feature = "postgres")]
pub(super) async fn end_call(conn: &mut sqlx::PgConnection) -> sqlx::Result<()> {
    let mut released = sqlrepo_postgres::tx::release_call(conn).await;
    if let Err(err) = &released
        && err.as_database_error().is_some()
        && !has_sqlstate(err, sqlstate::IN_FAILED_SQL_TRANSACTION)
    {
        // The error of a statement whose call was cancelled, which sqlx reads first and returns
        // in place of this one's: this `RELEASE` was not sent yet. Once more, on a drained
        // connection.
        released = sqlrepo_postgres::tx::release_call(conn).await;
    }
    match released {
        Err(err) if has_sqlstate(&err, sqlstate::IN_FAILED_SQL_TRANSACTION) => {
            sqlrepo_postgres::tx::rollback_call(conn).await?;
            sqlrepo_postgres::tx::release_call(conn).await
        }
        other => other,
    }
}

/// Undoes what the running call did, keeping its savepoint (`Conn::recover`).
#[cfg(feature = "postgres")]
pub(super) async fn rollback_call(conn: &mut sqlx::PgConnection) -> sqlx::Result<()> {
    sqlrepo_postgres::tx::rollback_call(conn).await
}
