//! The `items` table's statements on PostgreSQL: one function per statement, rows as plain
//! values (`status` as its stored text), errors left as `sqlx::Error` for sqlrepo to classify.

use sqlx::PgConnection;
use time::OffsetDateTime;

/// An `items` row.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemRow {
    /// `items.id`.
    pub id: i64,
    /// `items.name`.
    pub name: String,
    /// `items.data` as PostgreSQL writes `jsonb` out as text: read as text so that the caller
    /// decides what to do with a number `serde_json::Value` cannot hold (`1e400`).
    pub data: String,
    /// `items.status`, as stored (`active`, `inactive`, `archived`).
    pub status: String,
    /// `items.created_at`.
    pub created_at: OffsetDateTime,
    /// `items.updated_at`.
    pub updated_at: OffsetDateTime,
}

/// One keyset page: its rows in id order, and whether rows past them remain (the page stopped
/// at its row or byte budget, not at the end of the rows asked for).
#[derive(Debug, Clone, PartialEq)]
pub struct ItemPage {
    /// The rows of the page, in id order.
    pub rows: Vec<ItemRow>,
    /// Whether rows past the last one remain.
    pub more: bool,
}

/// A row of a page statement: the item, and the page's `more` on every row.
struct PageRow {
    id: i64,
    name: String,
    data: String,
    status: String,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
    more: bool,
}

impl PageRow {
    fn into_page(rows: Vec<PageRow>) -> ItemPage {
        let more = rows.first().is_some_and(|row| row.more);
        let rows = rows
            .into_iter()
            .map(|row| ItemRow {
                id: row.id,
                name: row.name,
                data: row.data,
                status: row.status,
                created_at: row.created_at,
                updated_at: row.updated_at,
            })
            .collect();
        ItemPage { rows, more }
    }
}

/// Inserts one item (`data` as JSON text) and returns its id.
///
/// `fetch_one` is safe for a write here: sqlx's PostgreSQL driver reads every response of the
/// statement, to its ReadyForQuery, before it answers (unlike SQLite's, which stops stepping
/// after the row), so a failure at the autocommit's commit is reported.
pub async fn insert_one(
    conn: &mut PgConnection,
    name: &str,
    data_json: &str,
    status: &str,
) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"
        INSERT INTO items (name, data, status)
        VALUES ($1, $2::text::jsonb, $3)
        RETURNING id
        "#,
        name,
        data_json,
        status,
    )
    .fetch_one(conn)
    .await
}

/// The item with this id.
pub async fn select_one(conn: &mut PgConnection, id: i64) -> sqlx::Result<Option<ItemRow>> {
    sqlx::query_as!(
        ItemRow,
        r#"
        SELECT id, name, data::text AS "data!", status, created_at, updated_at
        FROM items
        WHERE id = $1
        "#,
        id,
    )
    .fetch_optional(conn)
    .await
}

/// The items with these ids, in id order (unknown ids skipped, repeated ids once), in one
/// statement and so one snapshot. PostgreSQL sends rows one by one, so unlike SQLite's JSON
/// page no single value grows with the result, and no paging by bytes is needed.
pub async fn select_many(conn: &mut PgConnection, ids: &[i64]) -> sqlx::Result<Vec<ItemRow>> {
    sqlx::query_as!(
        ItemRow,
        r#"
        SELECT id, name, data::text AS "data!", status, created_at, updated_at
        FROM items
        WHERE id = ANY($1)
        ORDER BY id
        "#,
        ids,
    )
    .fetch_all(conn)
    .await
}

/// Every item with this status, in id order (read through `items_status_idx`).
pub async fn select_by_status(conn: &mut PgConnection, status: &str) -> sqlx::Result<Vec<ItemRow>> {
    sqlx::query_as!(
        ItemRow,
        r#"
        SELECT id, name, data::text AS "data!", status, created_at, updated_at
        FROM items
        WHERE status = $1
        ORDER BY id
        "#,
        status,
    )
    .fetch_all(conn)
    .await
}

/// A keyset page of every item: ids from `from_id` up, at most `limit` rows and at most
/// `max_bytes` (name, data as JSON text, and `row_overhead_bytes` per row) before its last row;
/// the first row always fits.
///
/// `candidates` reads one row more than the limit, so `more` is known without a second probe,
/// and measures each; the running sum (a window) keeps the prefix that starts within the
/// budget, so a page of big `data` values stays bounded in memory as on SQLite.
pub async fn select_page(
    conn: &mut PgConnection,
    from_id: i64,
    limit: i64,
    max_bytes: i64,
    row_overhead_bytes: i64,
) -> sqlx::Result<ItemPage> {
    let rows = sqlx::query_as!(
        PageRow,
        r#"
        WITH candidates AS MATERIALIZED (
            SELECT id,
                   row_number() OVER running AS position,
                   sum(bytes) OVER running - bytes AS bytes_before
            FROM (
                SELECT id, octet_length(name) + octet_length(data::text) + $4::bigint AS bytes
                FROM items
                WHERE id >= $1
                ORDER BY id
                LIMIT $2::bigint + 1
            ) AS next_rows
            WINDOW running AS (ORDER BY id ROWS UNBOUNDED PRECEDING)
        ),
        page AS MATERIALIZED (
            SELECT id
            FROM candidates
            WHERE position <= $2
              AND bytes_before < $3::bigint
        )
        SELECT i.id AS "id!",
               i.name AS "name!",
               i.data::text AS "data!",
               i.status AS "status!",
               i.created_at AS "created_at!",
               i.updated_at AS "updated_at!",
               (SELECT count(*) FROM candidates) > (SELECT count(*) FROM page) AS "more!"
        FROM items AS i
        JOIN page ON page.id = i.id
        ORDER BY i.id
        "#,
        from_id,
        limit,
        max_bytes,
        row_overhead_bytes,
    )
    .fetch_all(conn)
    .await?;
    Ok(PageRow::into_page(rows))
}

/// A keyset page of the items with this status, bounded as [`select_page`]; the candidates are
/// a range of `items_status_idx` (status, id).
pub async fn select_status_page(
    conn: &mut PgConnection,
    status: &str,
    from_id: i64,
    limit: i64,
    max_bytes: i64,
    row_overhead_bytes: i64,
) -> sqlx::Result<ItemPage> {
    let rows = sqlx::query_as!(
        PageRow,
        r#"
        WITH candidates AS MATERIALIZED (
            SELECT id,
                   row_number() OVER running AS position,
                   sum(bytes) OVER running - bytes AS bytes_before
            FROM (
                SELECT id, octet_length(name) + octet_length(data::text) + $5::bigint AS bytes
                FROM items
                WHERE status = $1
                  AND id >= $2
                ORDER BY id
                LIMIT $3::bigint + 1
            ) AS next_rows
            WINDOW running AS (ORDER BY id ROWS UNBOUNDED PRECEDING)
        ),
        page AS MATERIALIZED (
            SELECT id
            FROM candidates
            WHERE position <= $3
              AND bytes_before < $4::bigint
        )
        SELECT i.id AS "id!",
               i.name AS "name!",
               i.data::text AS "data!",
               i.status AS "status!",
               i.created_at AS "created_at!",
               i.updated_at AS "updated_at!",
               (SELECT count(*) FROM candidates) > (SELECT count(*) FROM page) AS "more!"
        FROM items AS i
        JOIN page ON page.id = i.id
        ORDER BY i.id
        "#,
        status,
        from_id,
        limit,
        max_bytes,
        row_overhead_bytes,
    )
    .fetch_all(conn)
    .await?;
    Ok(PageRow::into_page(rows))
}

/// Applies a patch (`None`: keep; `data` as JSON text); `true` when the row existed and a value
/// really changed. `IS DISTINCT FROM` is NULL-safe, so an identical patch matches no row and
/// keeps `updated_at`; jsonb compares by value (key order and spacing do not count).
pub async fn update_one(
    conn: &mut PgConnection,
    id: i64,
    name: Option<&str>,
    data_json: Option<&str>,
    status: Option<&str>,
) -> sqlx::Result<bool> {
    let result = sqlx::query!(
        r#"
        UPDATE items
        SET name = coalesce($2, name),
            data = coalesce($3::text::jsonb, data),
            status = coalesce($4, status),
            updated_at = now()
        WHERE id = $1
          AND (name IS DISTINCT FROM coalesce($2, name)
               OR data IS DISTINCT FROM coalesce($3::text::jsonb, data)
               OR status IS DISTINCT FROM coalesce($4, status))
        "#,
        id,
        name,
        data_json,
        status,
    )
    .execute(conn)
    .await?;
    Ok(result.rows_affected() > 0)
}

/// Deletes an item; `true` when it existed.
pub async fn delete_one(conn: &mut PgConnection, id: i64) -> sqlx::Result<bool> {
    let result = sqlx::query!("DELETE FROM items WHERE id = $1", id)
        .execute(conn)
        .await?;
    Ok(result.rows_affected() > 0)
}

/// Inserts the items given as three parallel arrays (`data` as JSON text) in one statement,
/// all or nothing, ids in array order; returns the rows inserted.
///
/// Arrays through `UNNEST`, `data` sent as `text[]` and cast: measured against the other ways
/// (100k items of ~70 bytes of JSON each, release build, one `PgConnection` on loopback, five
/// runs each, wall time including encoding; two cores shared with other builds, hence the
/// spread): `UNNEST($1::text[], $2::text[], $3::text[])` with `data::jsonb` 650-960 ms,
/// `UNNEST` with `$2::jsonb[]` 920-1230 ms, `jsonb_to_recordset` of one jsonb array
/// 1060-1530 ms. `WITH ORDINALITY ... ORDER BY` keeps the ids in slice order.
pub async fn insert_batch(
    conn: &mut PgConnection,
    names: &[String],
    data_json: &[String],
    statuses: &[String],
) -> sqlx::Result<u64> {
    let result = sqlx::query!(
        r#"
        INSERT INTO items (name, data, status)
        SELECT name, data::jsonb, status
        FROM UNNEST($1::text[], $2::text[], $3::text[])
            WITH ORDINALITY AS batch (name, data, status, position)
        ORDER BY position
        "#,
        names,
        data_json,
        statuses,
    )
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}

/// Sets the status of the listed items and returns how many really changed: `status <> $1`
/// leaves rows already there alone, and `= ANY` ignores unknown and repeated ids.
pub async fn update_status_batch(
    conn: &mut PgConnection,
    ids: &[i64],
    status: &str,
) -> sqlx::Result<u64> {
    let result = sqlx::query!(
        r#"
        UPDATE items
        SET status = $1,
            updated_at = now()
        WHERE id = ANY($2)
          AND status <> $1
        "#,
        status,
        ids,
    )
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}

/// How many items there are.
pub async fn count(conn: &mut PgConnection) -> sqlx::Result<i64> {
    sqlx::query_scalar!(r#"SELECT count(*) AS "count!" FROM items"#)
        .fetch_one(conn)
        .await
}
