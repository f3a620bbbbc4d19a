//! Transaction control, as statements of their own (so sqlrepo, not sqlx's depth counter, knows
//! what is open on a connection).

use sqlx::PgConnection;

/// Opens a transaction (READ COMMITTED, PostgreSQL's default; the ledger's trigger takes the
/// row locks a transfer needs).
pub async fn begin(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query!("BEGIN").execute(conn).await.map(drop)
}

/// [`begin`], then [`savepoint_call`] for the transaction's first call, in one round trip
/// (PostgreSQL's simple query protocol, for the reason given at [`release_and_savepoint_call`]).
pub async fn begin_with_call_savepoint(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::raw_sql("BEGIN; SAVEPOINT sqlrepo_call")
        .execute(conn)
        .await
        .map(drop)
}

/// Commits the open transaction.
///
/// PostgreSQL answers `COMMIT` of a transaction that an error aborted with `ROLLBACK` and no
/// error; sqlrepo never commits one (it rolls back to a savepoint or reports the error first).
pub async fn commit(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query!("COMMIT").execute(conn).await.map(drop)
}

/// Rolls back the open transaction (a warning, not an error, when none is open).
pub async fn rollback(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query!("ROLLBACK").execute(conn).await.map(drop)
}

/// Marks the start of one call inside a transaction, so that its failure can be undone alone
/// (on PostgreSQL a failed statement otherwise aborts the whole transaction; on SQLite it
/// undoes only itself, and sqlrepo keeps that meaning on both).
pub async fn savepoint_call(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query!("SAVEPOINT sqlrepo_call")
        .execute(conn)
        .await
        .map(drop)
}

/// Keeps what the call since [`savepoint_call`] did.
pub async fn release_call(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query!("RELEASE SAVEPOINT sqlrepo_call")
        .execute(conn)
        .await
        .map(drop)
}

/// Keeps what the last call did and marks the start of the next one: [`release_call`] and
/// [`savepoint_call`] in one round trip instead of two.
///
/// Two statements in one message need PostgreSQL's simple query protocol, which sqlx's checked
/// macros do not use (they prepare one statement each), so this is `raw_sql` of a constant:
/// neither statement has a parameter or a result column for a macro to check. If the `RELEASE`
/// fails (SQLSTATE 25P02: the last call left the transaction aborted) the server skips the
/// `SAVEPOINT`; the savepoint of the last call is then still open, and [`rollback_call`]
/// undoes the call and leaves that savepoint in place for the next one.
pub async fn release_and_savepoint_call(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::raw_sql("RELEASE SAVEPOINT sqlrepo_call; SAVEPOINT sqlrepo_call")
        .execute(conn)
        .await
        .map(drop)
}

/// Undoes what the call since [`savepoint_call`] did (and the error state it left), keeping
/// the transaction and the savepoint.
pub async fn rollback_call(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query!("ROLLBACK TO SAVEPOINT sqlrepo_call")
        .execute(conn)
        .await
        .map(drop)
}

/// Opens a nested all-or-nothing unit (`Conn::atomic` inside a transaction).
pub async fn savepoint_atomic(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query!("SAVEPOINT sqlrepo_atomic")
        .execute(conn)
        .await
        .map(drop)
}

/// Keeps the unit opened by [`savepoint_atomic`].
pub async fn release_atomic(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query!("RELEASE SAVEPOINT sqlrepo_atomic")
        .execute(conn)
        .await
        .map(drop)
}

/// Undoes the unit opened by [`savepoint_atomic`] and releases its savepoint.
pub async fn rollback_atomic(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query!("ROLLBACK TO SAVEPOINT sqlrepo_atomic")
        .execute(&mut *conn)
        .await?;
    release_atomic(conn).await
}
