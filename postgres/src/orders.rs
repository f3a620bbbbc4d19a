//! The `orders` table's statements on PostgreSQL: one function per statement, rows as plain
//! values, errors left as `sqlx::Error` for sqlrepo to classify.

use sqlx::PgConnection;
use time::OffsetDateTime;

/// An `orders` row (`total` in cents).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRow {
    /// `orders.id`.
    pub id: i64,
    /// `orders.user_id`.
    pub user_id: i64,
    /// `orders.total`, in cents.
    pub total: i64,
    /// `orders.created_at`.
    pub created_at: OffsetDateTime,
}

/// A user's order count and the sum of their totals, zeros for none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsRow {
    /// How many orders.
    pub count: i64,
    /// The sum of their totals, in cents.
    pub total: i64,
}

/// Inserts an order and returns its id; an unknown user fails `orders_user_fk` (23503).
/// `fetch_one` reads to the end of the statement, its commit included (see
/// `items::insert_one`).
pub async fn insert_one(conn: &mut PgConnection, user_id: i64, total: i64) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"
        INSERT INTO orders (user_id, total)
        VALUES ($1, $2)
        RETURNING id
        "#,
        user_id,
        total,
    )
    .fetch_one(conn)
    .await
}

/// The order with this id.
pub async fn select_one(conn: &mut PgConnection, id: i64) -> sqlx::Result<Option<OrderRow>> {
    sqlx::query_as!(
        OrderRow,
        r#"
        SELECT id, user_id, total, created_at
        FROM orders
        WHERE id = $1
        "#,
        id,
    )
    .fetch_optional(conn)
    .await
}

/// A user's newest `limit` orders, newest first, ties to the higher id: a backward-free range
/// of `orders_user_created_idx` (user_id, created_at DESC, id DESC), stopping at the limit.
pub async fn select_recent(
    conn: &mut PgConnection,
    user_id: i64,
    limit: i64,
) -> sqlx::Result<Vec<OrderRow>> {
    sqlx::query_as!(
        OrderRow,
        r#"
        SELECT id, user_id, total, created_at
        FROM orders
        WHERE user_id = $1
        ORDER BY created_at DESC, id DESC
        LIMIT $2
        "#,
        user_id,
        limit,
    )
    .fetch_all(conn)
    .await
}

/// A user's order count and sum. `sum(bigint)` is `numeric` on PostgreSQL; the cast back to
/// bigint fails with SQLSTATE 22003 when the totals add up past `i64`, rather than wrapping.
pub async fn select_stats(conn: &mut PgConnection, user_id: i64) -> sqlx::Result<StatsRow> {
    sqlx::query_as!(
        StatsRow,
        r#"
        SELECT count(*) AS "count!",
               coalesce(sum(total), 0)::bigint AS "total!"
        FROM orders
        WHERE user_id = $1
        "#,
        user_id,
    )
    .fetch_one(conn)
    .await
}

/// Deletes an order; `true` when it existed.
pub async fn delete_one(conn: &mut PgConnection, id: i64) -> sqlx::Result<bool> {
    let result = sqlx::query!("DELETE FROM orders WHERE id = $1", id)
        .execute(conn)
        .await?;
    Ok(result.rows_affected() > 0)
}

/// Inserts the orders given as two parallel arrays in one statement, all or nothing (an
/// unknown user fails the foreign key), ids in array order; `UNNEST` of arrays measured faster
/// than `jsonb_to_recordset` (see [`items::insert_batch`](crate::items::insert_batch)).
pub async fn insert_batch(
    conn: &mut PgConnection,
    user_ids: &[i64],
    totals: &[i64],
) -> sqlx::Result<u64> {
    let result = sqlx::query!(
        r#"
        INSERT INTO orders (user_id, total)
        SELECT user_id, total
        FROM UNNEST($1::bigint[], $2::bigint[]) WITH ORDINALITY AS batch (user_id, total, position)
        ORDER BY position
        "#,
        user_ids,
        totals,
    )
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}

/// The orders with these ids, in id order (unknown ids skipped, repeated ones given once).
pub async fn select_many(conn: &mut PgConnection, ids: &[i64]) -> sqlx::Result<Vec<OrderRow>> {
    sqlx::query_as!(
        OrderRow,
        r#"
        SELECT id, user_id, total, created_at
        FROM orders
        WHERE id = ANY($1)
        ORDER BY id
        "#,
        ids,
    )
    .fetch_all(conn)
    .await
}

/// How many orders there are.
pub async fn count(conn: &mut PgConnection) -> sqlx::Result<i64> {
    sqlx::query_scalar!(r#"SELECT count(*) AS "count!" FROM orders"#)
        .fetch_one(conn)
        .await
}

/// Applies a patch (`None`: keep); `true` when the order existed and a value really changed.
/// A user that does not exist fails `orders_user_fk` (23503), a negative total
/// `orders_total_non_negative` (23514); nothing changes then.
pub async fn update_one(
    conn: &mut PgConnection,
    id: i64,
    user_id: Option<i64>,
    total: Option<i64>,
) -> sqlx::Result<bool> {
    let result = sqlx::query!(
        r#"
        UPDATE orders
        SET user_id = coalesce($2, user_id),
            total = coalesce($3, total)
        WHERE id = $1
          AND (user_id IS DISTINCT FROM coalesce($2, user_id)
               OR total IS DISTINCT FROM coalesce($3, total))
        "#,
        id,
        user_id,
        total,
    )
    .execute(conn)
    .await?;
    Ok(result.rows_affected() > 0)
}

/// A keyset page: at most `limit` orders with ids from `from_id` up, in id order. An order row
/// is four numbers wide, so rows alone bound the page.
pub async fn select_page(
    conn: &mut PgConnection,
    from_id: i64,
    limit: i64,
) -> sqlx::Result<Vec<OrderRow>> {
    sqlx::query_as!(
        OrderRow,
        r#"
        SELECT id, user_id, total, created_at
        FROM orders
        WHERE id >= $1
        ORDER BY id
        LIMIT $2
        "#,
        from_id,
        limit,
    )
    .fetch_all(conn)
    .await
}
