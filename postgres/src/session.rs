//! A connection's server session: which backend process serves it, and stopping what another
//! connection's backend is doing (a call its caller gave up on).

use sqlx::PgConnection;

/// The process id of the backend serving `conn`, for [`cancel`] and [`terminate`] from another
/// connection.
pub async fn backend_pid(conn: &mut PgConnection) -> sqlx::Result<i32> {
    sqlx::query_scalar!(r#"SELECT pg_backend_pid() AS "pid!""#)
        .fetch_one(conn)
        .await
}

/// Cancels the statement backend `pid` is running, if any (SQLSTATE 57014 for it; an idle
/// backend ignores it). `false` when no such backend of this role exists.
pub async fn cancel(conn: &mut PgConnection, pid: i32) -> sqlx::Result<bool> {
    sqlx::query_scalar!(r#"SELECT pg_cancel_backend($1) AS "cancelled!""#, pid)
        .fetch_one(conn)
        .await
}

/// Ends backend `pid`'s session: the server rolls back whatever transaction it held.
pub async fn terminate(conn: &mut PgConnection, pid: i32) -> sqlx::Result<bool> {
    sqlx::query_scalar!(r#"SELECT pg_terminate_backend($1) AS "terminated!""#, pid)
        .fetch_one(conn)
        .await
}
