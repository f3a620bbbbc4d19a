//! Items on PostgreSQL: calls the statements of `sqlrepo_postgres::items` and turns their rows
//! and errors into sqlrepo's types. Validation happened before any of this, shared with SQLite.

use serde_json::value::RawValue;
use sqlrepo_postgres::items as sql;
use sqlx::PgConnection;

use super::{Item, ItemStatus, ROW_OVERHEAD_BYTES, StreamRow};
use crate::conn::Conn;
use crate::error::{Error, Result};
use crate::tables::paging::Page;

/// The most bytes of names and JSON one `insert_many` statement carries; a larger batch is
/// split into statements of about this size inside one transaction (still all or nothing). A
/// PostgreSQL array value may not pass 1 GB; 64 MiB keeps every ordinary batch (100,000 rows
/// of a few hundred bytes) to one statement and the server's copy of it modest.
const STATEMENT_BYTES: usize = 64 << 20;

fn item(row: sql::ItemRow) -> Result<Item> {
    // A status the CHECK does not allow cannot be stored; if one came back anyway it is a
    // value the row cannot decode into, as on SQLite.
    let status: ItemStatus = row
        .status
        .parse()
        .map_err(|err: Error| Error::Database(sqlx::Error::Decode(err.to_string().into())))?;
    Ok(Item {
        data: super::data::read(row.id, &row.data)?,
        id: row.id,
        name: row.name,
        status,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

fn items(rows: Vec<sql::ItemRow>) -> Result<Vec<Item>> {
    rows.into_iter().map(item).collect()
}

fn page(page: sql::ItemPage) -> Result<Page<Item>> {
    Ok(Page {
        rows: items(page.rows)?,
        more: page.more,
    })
}

/// A page of a stream: each row read on its own, so one that cannot be read is its own error.
fn stream_page(page: sql::ItemPage) -> Page<StreamRow> {
    Page {
        rows: page
            .rows
            .into_iter()
            .map(|row| StreamRow {
                id: row.id,
                item: item(row),
            })
            .collect(),
        more: page.more,
    }
}

/// Refuses data holding a NUL character (`\u0000` in a string or a key), which `jsonb` cannot
/// store. Checked here, before the statement, and not left to the server's cast: the cast runs
/// only where the plan evaluates it, so an update of a missing id would be refused under a
/// custom plan and answer "nothing changed" under a generic one (the model test met both).
fn storable(data_json: &str) -> Result<()> {
    if escapes_nul(data_json) {
        return Err(Error::invalid(
            "item data holds a NUL character (\\u0000), which PostgreSQL's jsonb cannot store",
        ));
    }
    Ok(())
}

/// Whether JSON text as serde_json writes it spells a NUL character: `\u0000` whose backslash
/// is not itself escaped (an odd run of backslashes before the `u`). serde_json never writes a
/// raw NUL, and `\\u0000` is a backslash followed by the text `u0000`.
fn escapes_nul(json: &str) -> bool {
    json.match_indices("u0000").any(|(at, _)| {
        let backslashes = json[..at].bytes().rev().take_while(|b| *b == b'\\').count();
        backslashes % 2 == 1
    })
}

pub(super) async fn insert_one(
    conn: &mut PgConnection,
    name: &str,
    data: &str,
    status: ItemStatus,
) -> Result<i64> {
    storable(data)?;
    Ok(sql::insert_one(conn, name, data, status.as_str()).await?)
}

pub(super) async fn select_one(conn: &mut PgConnection, id: i64) -> Result<Option<Item>> {
    sql::select_one(conn, id).await?.map(item).transpose()
}

pub(super) async fn select_many(conn: &mut PgConnection, ids: &[i64]) -> Result<Vec<Item>> {
    items(sql::select_many(conn, ids).await?)
}

pub(super) async fn select_by_status(
    conn: &mut PgConnection,
    status: ItemStatus,
) -> Result<Vec<Item>> {
    items(sql::select_by_status(conn, status.as_str()).await?)
}

pub(super) async fn select_page(
    conn: &mut PgConnection,
    from_id: i64,
    limit: i64,
    max_bytes: i64,
) -> Result<Page<StreamRow>> {
    Ok(stream_page(
        sql::select_page(conn, from_id, limit, max_bytes, ROW_OVERHEAD_BYTES).await?,
    ))
}

pub(super) async fn select_status_page(
    conn: &mut PgConnection,
    status: ItemStatus,
    from_id: i64,
    limit: i64,
    max_bytes: i64,
) -> Result<Page<Item>> {
    page(
        sql::select_status_page(
            conn,
            status.as_str(),
            from_id,
            limit,
            max_bytes,
            ROW_OVERHEAD_BYTES,
        )
        .await?,
    )
}

pub(super) async fn update_one(
    conn: &mut PgConnection,
    id: i64,
    name: Option<&str>,
    data: Option<&str>,
    status: Option<ItemStatus>,
) -> Result<bool> {
    if let Some(data) = data {
        storable(data)?;
    }
    Ok(sql::update_one(conn, id, name, data, status.map(ItemStatus::as_str)).await?)
}

pub(super) async fn delete_one(conn: &mut PgConnection, id: i64) -> Result<bool> {
    Ok(sql::delete_one(conn, id).await?)
}

pub(super) async fn update_status_batch(
    conn: &mut PgConnection,
    ids: &[i64],
    status: ItemStatus,
) -> Result<u64> {
    Ok(sql::update_status_batch(conn, ids, status.as_str()).await?)
}

pub(super) async fn count(conn: &mut PgConnection) -> Result<i64> {
    Ok(sql::count(conn).await?)
}

/// One statement's rows as the column arrays `UNNEST` reads.
#[derive(Default)]
struct Columns {
    names: Vec<String>,
    data: Vec<String>,
    statuses: Vec<String>,
    bytes: usize,
}

/// The validated batch, built before the call as SQLite's JSON chunks (`[[name, data,
/// status], ...]`), as column arrays of at most [`STATEMENT_BYTES`] each. `data` is taken as
/// the raw JSON text already written, not parsed into values again.
fn columns(chunks: &[String]) -> Result<Vec<Columns>> {
    let mut statements = Vec::new();
    let mut current = Columns::default();
    for chunk in chunks {
        let rows: Vec<(String, &RawValue, String)> = serde_json::from_str(chunk)
            .map_err(|err| Error::invalid(format!("not JSON: {err}")))?;
        for (name, data, status) in rows {
            storable(data.get())?;
            let bytes = name.len() + data.get().len() + status.len();
            if !current.names.is_empty() && current.bytes + bytes > STATEMENT_BYTES {
                statements.push(std::mem::take(&mut current));
            }
            current.names.push(name);
            current.data.push(data.get().to_owned());
            current.statuses.push(status);
            current.bytes += bytes;
        }
    }
    if !current.names.is_empty() {
        statements.push(current);
    }
    Ok(statements)
}

/// `insert_many` on PostgreSQL: one `INSERT … UNNEST` for the batch, or (past
/// [`STATEMENT_BYTES`]) one per part inside one all-or-nothing unit.
pub(super) async fn insert_many(conn: &mut Conn, chunks: &[String]) -> Result<u64> {
    let statements = columns(chunks)?;
    match statements.as_slice() {
        [] => Ok(0),
        [one] => insert_columns(postgres(conn.backend()?)?, one).await,
        _ => {
            let mut unit = conn.atomic().await?;
            let mut inserted = 0;
            for columns in &statements {
                match insert_columns(postgres(unit.backend()?)?, columns).await {
                    Ok(count) => inserted += count,
                    Err(err) => {
                        // The batch's error is the one to report; a rollback that fails too
                        // leaves the unit unfinished, and its Drop undoes it.
                        let _unfinished = unit.rollback().await;
                        return Err(err);
                    }
                }
            }
            unit.commit().await?;
            Ok(inserted)
        }
    }
}

async fn insert_columns(conn: &mut PgConnection, columns: &Columns) -> Result<u64> {
    Ok(sql::insert_batch(conn, &columns.names, &columns.data, &columns.statuses).await?)
}

fn postgres(backend: crate::Backend<'_>) -> Result<&mut PgConnection> {
    match backend {
        crate::Backend::Postgres(conn) => Ok(conn),
        crate::Backend::Sqlite(_) => Err(Error::WrongBackend(
            "a SQLite connection where a PostgreSQL one was expected".to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::escapes_nul;
    use serde_json::json;

    #[test]
    fn a_nul_is_found_in_strings_and_keys_and_an_escaped_backslash_is_not_one() {
        let text = |value: serde_json::Value| serde_json::to_string(&value).unwrap();
        assert!(escapes_nul(&text(json!({"a": "x\u{0}y"}))));
        assert!(escapes_nul(&text(json!({"k\u{0}": 1}))));
        assert!(escapes_nul(&text(json!(["\\\u{0}"]))));
        assert!(!escapes_nul(&text(json!({"a": "\\u0000"}))));
        assert!(!escapes_nul(&text(json!({"u0000": "\\\\u0000"}))));
        assert!(!escapes_nul(&text(json!({"a": "é\u{2028}"}))));
    }
}
