//! The dashboard's one statement on PostgreSQL: a user, their newest orders and their order
//! stats, in one snapshot and one round trip.

use sqlx::PgConnection;
use time::OffsetDateTime;

/// A dashboard as one row: the user's columns, the recent orders as three parallel arrays
/// (newest first), and the stats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DashboardRow {
    /// `users.id`.
    pub id: i64,
    /// `users.email`.
    pub email: String,
    /// `users.name`.
    pub name: String,
    /// `users.created_at`.
    pub created_at: OffsetDateTime,
    /// The recent orders' ids, newest first (ties: higher id first).
    pub recent_ids: Vec<i64>,
    /// Their totals, in cents, in the same order.
    pub recent_totals: Vec<i64>,
    /// Their `created_at`, in the same order.
    pub recent_created_at: Vec<OffsetDateTime>,
    /// How many orders the user has.
    pub order_count: i64,
    /// The sum of their totals, in cents.
    pub order_total: i64,
}

/// The dashboard of this user, or `None` for an unknown user.
///
/// The recent orders are the first ten entries of `orders_user_created_idx` (user_id,
/// created_at DESC, id DESC), aggregated into typed arrays (binary on the wire, no JSON to
/// build or parse); the stats read the same index (it includes `total`). Both are `LATERAL`
/// so each runs once for the one user. `coalesce` makes a user without orders get empty arrays
/// and zeros, and `sum` (numeric for bigint) is cast back to bigint, which fails with 22003
/// rather than wrap.
pub async fn select(conn: &mut PgConnection, user_id: i64) -> sqlx::Result<Option<DashboardRow>> {
    sqlx::query_as!(
        DashboardRow,
        r#"
        SELECT u.id,
               u.email,
               u.name,
               u.created_at,
               recent.ids AS "recent_ids!",
               recent.totals AS "recent_totals!",
               recent.created AS "recent_created_at!",
               stats.order_count AS "order_count!",
               stats.order_total AS "order_total!"
        FROM users AS u
        CROSS JOIN LATERAL (
            SELECT coalesce(array_agg(r.id ORDER BY r.created_at DESC, r.id DESC), '{}') AS ids,
                   coalesce(array_agg(r.total ORDER BY r.created_at DESC, r.id DESC), '{}') AS totals,
                   coalesce(array_agg(r.created_at ORDER BY r.created_at DESC, r.id DESC), '{}')
                       AS created
            FROM (
                SELECT id, total, created_at
                FROM orders
                WHERE user_id = u.id
                ORDER BY created_at DESC, id DESC
                LIMIT 10
            ) AS r
        ) AS recent
        CROSS JOIN LATERAL (
            SELECT count(*) AS order_count,
                   coalesce(sum(total), 0)::bigint AS order_total
            FROM orders
            WHERE user_id = u.id
        ) AS stats
        WHERE u.id = $1
        "#,
        user_id,
    )
    .fetch_optional(conn)
    .await
}
