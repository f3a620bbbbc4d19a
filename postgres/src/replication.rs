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

/// How many scans of table `items` this server has run (index and sequential together, from
/// its statistics): on a standby, the scans it ran itself, so the difference across a run of
/// point gets is how many of them that replica answered. The routing's own questions to a
/// replica ([`replayed_position`]) read no table, so they do not count.
///
/// sqlrepo never calls this; `examples/bench` ("replica share under writes") and the replica
/// tests do, to see where reads went. It lives here so that it is checked against PostgreSQL
/// like every other statement. A session's counts reach the view when it ends or reports (at
/// most once a second), so a caller that needs all of them closes the sessions it measured
/// first.
pub async fn item_scans(conn: &mut PgConnection) -> sqlx::Result<i64> {
    // `idx_scan` is NULL for a table with no index; `sum` over no row (no `items` in this
    // database) is NULL too: both count as no scans.
    sqlx::query_scalar!(
        r#"
        SELECT coalesce(sum(coalesce(idx_scan, 0) + seq_scan), 0)::bigint AS "scans!"
        FROM pg_stat_user_tables
        WHERE relname = 'items'
        "#
    )
    .fetch_one(conn)
    .await
}
