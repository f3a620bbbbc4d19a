//! Orders on PostgreSQL: calls the statements of `sqlrepo_postgres::orders` and turns their
//! rows and errors into sqlrepo's types. Validation happened before any of this, shared with
//! SQLite.

use sqlrepo_postgres::orders as sql;
use sqlx::PgConnection;

use super::{Order, OrderStats};
use crate::error::{Error, Result, classify_sum};

fn order(row: sql::OrderRow) -> Order {
    Order {
        id: row.id,
        user_id: row.user_id,
        total_cents: row.total,
        created_at: row.created_at,
    }
}

pub(super) async fn insert_one(conn: &mut PgConnection, user_id: i64, total: i64) -> Result<i64> {
    Ok(sql::insert_one(conn, user_id, total).await?)
}

pub(super) async fn select_one(conn: &mut PgConnection, id: i64) -> Result<Option<Order>> {
    Ok(sql::select_one(conn, id).await?.map(order))
}

pub(super) async fn select_recent(
    conn: &mut PgConnection,
    user_id: i64,
    limit: i64,
) -> Result<Vec<Order>> {
    Ok(sql::select_recent(conn, user_id, limit)
        .await?
        .into_iter()
        .map(order)
        .collect())
}

pub(super) async fn select_stats(conn: &mut PgConnection, user_id: i64) -> Result<OrderStats> {
    let row = sql::select_stats(conn, user_id)
        .await
        .map_err(classify_sum)?;
    Ok(OrderStats {
        count: row.count,
        total_cents: row.total,
    })
}

pub(super) async fn delete_one(conn: &mut PgConnection, id: i64) -> Result<bool> {
    Ok(sql::delete_one(conn, id).await?)
}

/// The batch, validated and written before the call as SQLite's JSON (`[[user_id, total],
/// ...]`), as the two column arrays of one `INSERT … UNNEST`.
pub(super) async fn insert_batch(conn: &mut PgConnection, rows_json: &str) -> Result<u64> {
    let rows: Vec<(i64, i64)> = serde_json::from_str(rows_json)
        .map_err(|err| Error::invalid(format!("not JSON: {err}")))?;
    let (user_ids, totals): (Vec<i64>, Vec<i64>) = rows.into_iter().unzip();
    Ok(sql::insert_batch(conn, &user_ids, &totals).await?)
}

pub(super) async fn select_many(conn: &mut PgConnection, ids: &[i64]) -> Result<Vec<Order>> {
    Ok(sql::select_many(conn, ids)
        .await?
        .into_iter()
        .map(order)
        .collect())
}

pub(super) async fn count(conn: &mut PgConnection) -> Result<i64> {
    Ok(sql::count(conn).await?)
}

pub(super) async fn update_one(
    conn: &mut PgConnection,
    id: i64,
    user_id: Option<i64>,
    total: Option<i64>,
) -> Result<bool> {
    Ok(sql::update_one(conn, id, user_id, total).await?)
}

pub(super) async fn select_page(
    conn: &mut PgConnection,
    from_id: i64,
    limit: i64,
) -> Result<Vec<Order>> {
    Ok(sql::select_page(conn, from_id, limit)
        .await?
        .into_iter()
        .map(order)
        .collect())
}
