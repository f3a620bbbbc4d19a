//! Statements the benchmark measures sqlrepo against: each operation as the plainest single
//! statement raw sqlx can send on a connection it holds (one round trip, no pool, no
//! repository, no validation), and a bulk load through `COPY`, the physical limit for loading
//! rows into PostgreSQL. For a point get and the dashboard the floor is sqlrepo's own statement
//! (`items::select_one`, `dashboard::select`) sent the same way: the same work on the server,
//! so the ratio is what sqlrepo's layers cost.
//!
//! sqlrepo never calls these; `examples/bench` does (`cargo run --release --example bench
//! --features postgres` with `SQLREPO_PG_URL` set). They live here, beside sqlrepo's own
//! PostgreSQL statements, so that they are checked against PostgreSQL at compile time like
//! every other statement of the project.

use serde_json::Value;
use sqlx::PgConnection;

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
