//! What a server is right now, for finding the primary among several hosts: in recovery or
//! not, read-only or not, on which WAL timeline, at which WAL position.

use sqlx::PgConnection;

/// One server's answer to [`server_role`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerRole {
    /// `pg_is_in_recovery()`: a standby (hot standby, or still recovering).
    pub in_recovery: bool,
    /// The session's `transaction_read_only`: true on a standby, and on a primary with
    /// `default_transaction_read_only = on` (libpq's "read-only" asks this, not recovery).
    pub read_only: bool,
    /// The WAL timeline the server writes (a primary) or receives (a standby's WAL receiver,
    /// else its last restartpoint's); `None` when a standby reports neither.
    pub timeline: Option<i32>,
    /// The primary's current WAL write position, or how far a standby has replayed, as bytes
    /// from the start of the log (as in [`replication`](crate::replication)).
    pub wal_position: Option<i64>,
}

/// Reads the server's role in one round trip.
///
/// A primary's timeline is the first eight hex digits of its current WAL file's name: unlike
/// `pg_control_checkpoint()` it is right from the moment of a promotion, before the first
/// checkpoint on the new timeline. A standby cannot name its current WAL file
/// (`pg_walfile_name` refuses during recovery), so it reports the timeline its WAL receiver
/// streams (visible to superusers and `pg_read_all_stats`), else its control file's.
pub async fn server_role(conn: &mut PgConnection) -> sqlx::Result<ServerRole> {
    let row = sqlx::query!(
        r#"
        SELECT pg_is_in_recovery() AS "in_recovery!",
               current_setting('transaction_read_only') = 'on' AS "read_only!",
               CASE WHEN pg_is_in_recovery()
                    THEN COALESCE((SELECT received_tli FROM pg_stat_wal_receiver),
                                  (pg_control_checkpoint()).timeline_id)
                    ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
               END AS "timeline",
               (CASE WHEN pg_is_in_recovery()
                     THEN pg_last_wal_replay_lsn()
                     ELSE pg_current_wal_lsn()
                END - '0/0'::pg_lsn)::bigint AS "wal_position"
        "#
    )
    .fetch_one(conn)
    .await?;
    Ok(ServerRole {
        in_recovery: row.in_recovery,
        read_only: row.read_only,
        timeline: row.timeline,
        wal_position: row.wal_position,
    })
}
