//! Statements the benchmark measures sqlrepo against: each operation as the plainest single
//! statement raw sqlx can send on a connection it holds (one round trip, no pool, no
//! repository, no validation), and a bulk load through `COPY`, the physical limit for loading
//! rows into PostgreSQL.
//!
//! sqlrepo never calls these; `examples/bench` does (`cargo run --release --example bench
//! --features postgres` with `SQLREPO_PG_URL` set). They live here, beside sqlrepo's own
//! PostgreSQL statements, so that they are checked against PostgreSQL at compile time like
//! every other statement of the project.

use serde_json::Value;
use sqlx::PgConnection;
use time::OffsetDateTime;

/// An item row, as the point get returns it.
#[derive(Debug, Clone)]
pub struct FloorItem {
    /// The row's id.
    pub id: i64,
    /// Its unique name.
    pub name: String,
    /// Its JSON data.
    pub data: Value,
    /// Its status (`active`, `inactive`, `archived`).
    pub status: String,
    /// When it was created.
    pub created_at: OffsetDateTime,
    /// When it was last changed.
    pub updated_at: OffsetDateTime,
}

/// A user's dashboard, in one row: the user, the 10 newest orders as a JSON array of
/// `[id, total, created_at]`, and the order count and total.
#[derive(Debug, Clone)]
pub struct FloorDashboard {
    /// The user's id.
    pub id: i64,
    /// The user's email.
    pub email: String,
    /// The user's name.
    pub name: String,
    /// When the user was created.
    pub created_at: OffsetDateTime,
    /// The newest orders, newest first, as `[[id, total, created_at], ...]`.
    pub recent_orders: Value,
    /// How many orders the user has.
    pub order_count: i64,
    /// The sum of their totals, in cents.
    pub order_total_cents: i64,
}

/// One item by id.
pub async fn get_item(conn: &mut PgConnection, id: i64) -> sqlx::Result<Option<FloorItem>> {
    sqlx::query_as!(
        FloorItem,
        r#"
        SELECT id, name, data, status, created_at, updated_at
        FROM items
        WHERE id = $1
        "#,
        id,
    )
    .fetch_optional(conn)
    .await
}

/// Inserts one item; returns its id.
pub async fn create_item(
    conn: &mut PgConnection,
    name: &str,
    data: &Value,
    status: &str,
) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"
        INSERT INTO items (name, data, status)
        VALUES ($1, $2, $3)
        RETURNING id
        "#,
        name,
        data,
        status,
    )
    .fetch_one(conn)
    .await
}

/// One ledger row: the schema's `transfers_apply` trigger locks both accounts in id order,
/// refuses an overdraft or a missing account, and moves the money. Returns the rows inserted.
pub async fn transfer(
    conn: &mut PgConnection,
    from_account: i64,
    to_account: i64,
    amount_cents: i64,
) -> sqlx::Result<u64> {
    let done = sqlx::query!(
        r#"
        INSERT INTO transfers (from_account, to_account, amount)
        VALUES ($1, $2, $3)
        "#,
        from_account,
        to_account,
        amount_cents,
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// A user's dashboard in one statement; `None` for an unknown user.
// LATERAL subqueries keep it one statement and one row: the newest orders read through
// `orders_user_created_idx` and stop after 10, and the stats read the same index (`total` is
// INCLUDEd in it).
pub async fn dashboard(
    conn: &mut PgConnection,
    user_id: i64,
) -> sqlx::Result<Option<FloorDashboard>> {
    sqlx::query_as!(
        FloorDashboard,
        r#"
        SELECT u.id,
               u.email,
               u.name,
               u.created_at,
               recent.orders AS "recent_orders!",
               stats.order_count AS "order_count!",
               stats.order_total_cents AS "order_total_cents!"
        FROM users AS u
        CROSS JOIN LATERAL (
            SELECT coalesce(
                       jsonb_agg(jsonb_build_array(r.id, r.total, r.created_at)
                                 ORDER BY r.created_at DESC, r.id DESC),
                       '[]'::jsonb) AS orders
            FROM (SELECT id, total, created_at
                  FROM orders
                  WHERE user_id = u.id
                  ORDER BY created_at DESC, id DESC
                  LIMIT 10) AS r
        ) AS recent
        CROSS JOIN LATERAL (
            SELECT count(*) AS order_count,
                   coalesce(sum(total), 0)::bigint AS order_total_cents
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

/// The `COPY` statement of [`copy_items`].
///
/// Not a checked statement: sqlx's macros check a statement by preparing it, and `COPY ... FROM
/// STDIN` cannot be prepared (PostgreSQL prepares only SELECT, INSERT, UPDATE, DELETE, MERGE
/// and VALUES), so it is a fixed text here, written once, with nothing of the data in it.
pub const COPY_ITEMS: &str = "COPY items (name, data, status) FROM STDIN";

/// Loads items with `COPY ... FROM STDIN` in text format: one message of rows, no statement
/// per row, no parameters; the fastest way into PostgreSQL. Returns the rows copied.
///
/// `rows` are `(name, data, status)`; values are escaped as the text format requires.
pub async fn copy_items<'a>(
    conn: &mut PgConnection,
    rows: impl IntoIterator<Item = (&'a str, &'a Value, &'a str)>,
) -> sqlx::Result<u64> {
    let mut text = String::new();
    for (name, data, status) in rows {
        push_copy_field(&mut text, name);
        text.push('\t');
        push_copy_field(&mut text, &data.to_string());
        text.push('\t');
        push_copy_field(&mut text, status);
        text.push('\n');
    }
    let mut copy = conn.copy_in_raw(COPY_ITEMS).await?;
    if let Err(err) = copy.send(text.into_bytes()).await {
        // The connection must leave COPY mode before its next statement.
        copy.abort("sending the rows failed").await?;
        return Err(err);
    }
    copy.finish().await
}

/// Appends `value` as one field of `COPY`'s text format: backslash, tab, newline and carriage
/// return escaped, everything else as is.
fn push_copy_field(text: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => text.push_str("\\\\"),
            '\t' => text.push_str("\\t"),
            '\n' => text.push_str("\\n"),
            '\r' => text.push_str("\\r"),
            other => text.push(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::push_copy_field;

    #[test]
    fn copy_fields_escape_what_the_text_format_reserves() {
        let mut text = String::new();
        push_copy_field(&mut text, "a\tb\\c\nd\re {\"k\": 1}");
        assert_eq!(text, "a\\tb\\\\c\\nd\\re {\"k\": 1}");
    }
}
