//! Write-ahead-log positions, for reading one's own writes on streaming replicas.
//!
//! Positions are bytes from the start of the log (`pg_lsn - '0/0'`), as `i64`.

use sqlx::PgConnection;

/// The primary's current WAL insert position: every transaction committed before this call is
/// at or below it.
///
/// The insert position, not `pg_current_wal_lsn()` (the write position): under
/// `synchronous_commit = off` a commit returns once its record is inserted into the WAL
/// buffers, before it is written, so the write position can be behind a commit that has
/// already returned, and a replica that replayed that far would not show it.
pub async fn current_position(conn: &mut PgConnection) -> sqlx::Result<i64> {
    sqlx::query_scalar!(r#"SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint AS "lsn!""#)
        .fetch_one(conn)
        .await
}

/// How far a replica has replayed the primary's WAL; `None` on a server that is not a replica
/// (a promoted or misconfigured one), which therefore cannot promise anything.
pub async fn replayed_position(conn: &mut PgConnection) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar!(
        r#"SELECT CASE WHEN pg_is_in_recovery()
                       THEN (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint END AS "lsn""#
    )
    .fetch_one(conn)
    .await
}
