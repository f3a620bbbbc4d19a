//! The dashboard on PostgreSQL: its one statement in `sqlrepo_postgres::dashboard`, the row
//! turned into a [`Dashboard`].

use sqlx::PgConnection;

use super::Dashboard;
use crate::error::Result;
use crate::tables::orders::{Order, OrderStats};
use crate::tables::users::User;

pub(super) async fn fetch(conn: &mut PgConnection, user_id: i64) -> Result<Dashboard> {
    let row = sqlrepo_postgres::dashboard::select(conn, user_id)
        .await
        .map_err(crate::error::classify_sum)?
        .ok_or_else(|| super::unknown_user(user_id))?;
    let recent_orders = row
        .recent_ids
        .into_iter()
        .zip(row.recent_totals)
        .zip(row.recent_created_at)
        .map(|((id, total_cents), created_at)| Order {
            id,
            user_id,
            total_cents,
            created_at,
        })
        .collect();
    Ok(Dashboard {
        user: User {
            id: row.id,
            email: row.email,
            name: row.name,
            created_at: row.created_at,
        },
        recent_orders,
        stats: OrderStats {
            count: row.order_count,
            total_cents: row.order_total,
        },
    })
}
