//! The dashboard: a user, their newest orders and their order stats in one read.

use std::future::Future;

use serde::{Deserialize, Serialize};
use sqlx::SqliteConnection;
use time::OffsetDateTime;

use super::orders::{Order, OrderStats};
use super::users::User;
use crate::conn::{Backend, Handle};
use crate::error::{Error, Result};
use crate::kit::{self, direct_column};
use crate::trace::{Rows, traced};

#[cfg(feature = "postgres")]
mod postgres;

pub use crate::limits::DASHBOARD_RECENT_ORDERS;

/// What [`Db::dashboard`](crate::Db::dashboard) returns.
///
/// The Python service this crate ports ran three queries concurrently. Here it is one
/// statement: the user row, the recent orders as a `json_group_array` and the stats as
/// subqueries: one snapshot, so the parts always agree, read on the caller's thread as a point
/// get is (see [`DbOptions::direct_reads`](crate::DbOptions::direct_reads)), or in one round
/// trip to a reader's worker thread; measured side by side, the one statement costs well under
/// the three concurrent queries (each its own round trip). The benchmark harness
/// (`cargo run --release --example bench`, workload `dashboard`) keeps measuring it against the
/// floor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dashboard {
    /// The user.
    pub user: User,
    /// Their newest orders, newest first (ties: higher id first), at most
    /// [`DASHBOARD_RECENT_ORDERS`].
    pub recent_orders: Vec<Order>,
    /// Count and sum of all their orders.
    pub stats: OrderStats,
}

/// An order as one element of the JSON array: `[id, total, created_at]`.
#[derive(Deserialize)]
struct OrderJson(
    i64,
    i64,
    #[serde(with = "time::serde::rfc3339")] OffsetDateTime,
);

/// Reads a dashboard on the caller's thread (see [`Handle::read_direct`]), else on `handle`'s
/// reader (for a transaction: its own connection).
pub(crate) fn read(
    handle: Handle,
    user_id: i64,
) -> impl Future<Output = Result<Dashboard>> + Send + use<> {
    traced("users", "dashboard", async move {
        if let Some(found) = handle.read_direct(|conn| fetch_direct(conn, user_id)).await {
            return found;
        }
        handle
            .read(|mut conn| async move {
                match conn.backend()? {
                    Backend::Sqlite(c) => fetch(c, user_id).await,
                    #[cfg(feature = "postgres")]
                    Backend::Postgres(c) => postgres::fetch(c, user_id).await,
                }
            })
            .await
    })
}

impl Rows for Dashboard {
    fn rows(&self) -> u64 {
        1 + self.recent_orders.len() as u64
    }
}

/// The dashboard's one row, as [`dashboard_query`] reads it.
struct DashboardRow {
    id: i64,
    email: String,
    name: String,
    created_at: OffsetDateTime,
    /// The recent orders as one JSON array of [`OrderJson`].
    recent: String,
    order_count: i64,
    order_total: i64,
}

/// The dashboard's statement, checked by `query_as!`: the worker-thread path runs it
/// ([`fetch`]), the direct path ([`fetch_direct`]) runs its text.
///
/// One statement, one snapshot, one round trip. The recent orders come from reading the
/// (user_id, created_at, id, total) index backwards, stopping after ten, and travel as one
/// JSON array; count and sum are covered by the same index. Measured with rusqlite, this
/// shape beats an `ORDER BY` inside `json_group_array`, and a literal limit beats a bound
/// `?` several times over (SQLite plans the correlated subquery without a bound limit),
/// which is why DASHBOARD_RECENT_ORDERS is spelled out here.
fn dashboard_query(
    user_id: i64,
) -> sqlx::query::Map<
    'static,
    sqlx::Sqlite,
    impl FnMut(sqlx::sqlite::SqliteRow) -> sqlx::Result<DashboardRow> + Send,
    sqlx::sqlite::SqliteArguments,
> {
    sqlx::query_as!(
        DashboardRow,
        r#"
        SELECT u.id AS "id!: i64",
               u.email,
               u.name,
               u.created_at AS "created_at: OffsetDateTime",
               (SELECT json_group_array(json_array(r.id, r.total, r.created_at))
                FROM (SELECT id, total, created_at
                      FROM orders
                      WHERE user_id = u.id
                      ORDER BY created_at DESC, id DESC
                      LIMIT 10) AS r) AS "recent!: String",
               (SELECT count(*) FROM orders WHERE user_id = u.id) AS "order_count!: i64",
               (SELECT coalesce(sum(total), 0) FROM orders WHERE user_id = u.id)
                   AS "order_total!: i64"
        FROM users AS u
        WHERE u.id = ?1
        "#,
        user_id,
    )
}

async fn fetch(conn: &mut SqliteConnection, user_id: i64) -> Result<Dashboard> {
    let row = dashboard_query(user_id)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| unknown_user(user_id))?;
    dashboard(row, user_id)
}

/// [`dashboard_query`] on a direct reader: `Some` only for a clean answer (a dashboard, or
/// `NotFound` for no such user), each column read as the checked query reads it; anything else
/// (an error, SQLite interrupting a read past its step budget, a value that does not decode)
/// is `None`, and the caller reads the ordinary way, whose answer or error stands.
fn fetch_direct(conn: &kit::Connection, user_id: i64) -> Option<Result<Dashboard>> {
    static SQL: std::sync::LazyLock<sqlx::SqlStr> =
        std::sync::LazyLock::new(|| sqlx::Execute::sql(dashboard_query(0)));
    let row = kit::direct_get(conn, SQL.as_str(), user_id, |row| {
        Some(DashboardRow {
            id: direct_column(row, 0)?,
            email: direct_column(row, 1)?,
            name: direct_column(row, 2)?,
            created_at: direct_column(row, 3)?,
            recent: direct_column(row, 4)?,
            order_count: direct_column(row, 5)?,
            order_total: direct_column(row, 6)?,
        })
    })?;
    match row {
        None => Some(Err(unknown_user(user_id))),
        Some(row) => dashboard(row, user_id).ok().map(Ok),
    }
}

/// What a dashboard of a user that does not exist is, on every path.
fn unknown_user(user_id: i64) -> Error {
    Error::NotFound {
        entity: "user",
        id: user_id,
    }
}

/// The dashboard a row describes.
fn dashboard(row: DashboardRow, user_id: i64) -> Result<Dashboard> {
    let recent: Vec<OrderJson> = serde_json::from_str(&row.recent)
        .map_err(|err| Error::Database(sqlx::Error::Decode(err.into())))?;
    Ok(Dashboard {
        user: User {
            id: row.id,
            email: row.email,
            name: row.name,
            created_at: row.created_at,
        },
        recent_orders: recent
            .into_iter()
            .map(|OrderJson(id, total_cents, created_at)| Order {
                id,
                user_id,
                total_cents,
                created_at,
            })
            .collect(),
        stats: OrderStats {
            count: row.order_count,
            total_cents: row.order_total,
        },
    })
}
