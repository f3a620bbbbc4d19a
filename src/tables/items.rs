//! The `items` table: its data types, [`ItemRepo`], and all of its SQL.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::str::FromStr;

use futures_core::Stream;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::SqliteConnection;
use time::OffsetDateTime;

use super::paging::{self, Keyed};
use crate::conn::{Conn, Grouped, Handle};
use crate::error::{Error, Result};
use crate::limits::{at_position, check_batch, check_data_depth, check_data_size, check_name};
use crate::trace::traced;

/// Where an item is in its life. Stored as lowercase text, which a `CHECK` restricts to these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(rename_all = "lowercase")]
pub enum ItemStatus {
    /// In use (the default for new items).
    #[default]
    Active,
    /// Kept but not in use.
    Inactive,
    /// Retired; kept for the record.
    Archived,
}

impl ItemStatus {
    /// The text stored in `items.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemStatus::Active => "active",
            ItemStatus::Inactive => "inactive",
            ItemStatus::Archived => "archived",
        }
    }
}

impl fmt::Display for ItemStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ItemStatus {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self> {
        match text {
            "active" => Ok(ItemStatus::Active),
            "inactive" => Ok(ItemStatus::Inactive),
            "archived" => Ok(ItemStatus::Archived),
            other => Err(Error::invalid(format!(
                "{other:?} is not an item status (active, inactive, archived)"
            ))),
        }
    }
}

/// A stored item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Row id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Free-form JSON (`items.data`).
    pub data: Value,
    /// Life-cycle status.
    pub status: ItemStatus,
    /// When the row was inserted (UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When a repository call last changed the row (UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// An item to insert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewItem {
    /// Unique, not blank, at most [`MAX_NAME_CHARS`](crate::limits::MAX_NAME_CHARS) characters.
    pub name: String,
    /// Any JSON value within [`limits`](crate::limits).
    pub data: Value,
    /// Initial status (`active` when absent from JSON input).
    #[serde(default)]
    pub status: ItemStatus,
}

impl Keyed for Item {
    fn key(&self) -> i64 {
        self.id
    }
}

impl NewItem {
    /// A new active item.
    pub fn new(name: impl Into<String>, data: Value) -> Self {
        NewItem {
            name: name.into(),
            data,
            status: ItemStatus::Active,
        }
    }

    fn validate(&self) -> Result<()> {
        check_name("item name", &self.name)?;
        check_data_depth(&self.data)
    }
}

/// A partial update: `None` fields keep their stored value.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ItemPatch {
    /// New name.
    pub name: Option<String>,
    /// New data.
    pub data: Option<Value>,
    /// New status.
    pub status: Option<ItemStatus>,
}

impl ItemPatch {
    fn is_empty(&self) -> bool {
        self.name.is_none() && self.data.is_none() && self.status.is_none()
    }
}

/// Items: checked CRUD, one-statement batches, and a constant-memory stream.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> sqlrepo::Result<()> {
/// use sqlrepo::{Db, ItemPatch, ItemStatus, NewItem};
/// use serde_json::json;
/// let items = Db::in_memory().await?.items();
/// let ids = items.insert_many(&[NewItem::new("a", json!({})), NewItem::new("b", json!([1]))]).await?;
/// assert_eq!(ids, 2);
/// let changed = items.set_status_many(&[1, 2, 99], ItemStatus::Archived).await?;
/// assert_eq!(changed, 2);
/// let patch = ItemPatch { name: Some("a2".into()), ..Default::default() };
/// assert!(items.update(1, &patch).await?);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ItemRepo {
    handle: Handle,
}

/// Rows per statement in `insert_many`. One statement per chunk bounds the JSON text we build
/// and SQLite parses (~3 MB here). Measured on 100k items (release, CPU time per row, three
/// rounds each): 10k rows 4.0-4.4 µs, 25k 4.4-5.9 µs, 50k 4.2-4.3 µs, 100k 4.2-5.5 µs: no
/// difference beyond noise, so the larger chunk (fewer round trips) with bounded memory.
const INSERT_CHUNK_ROWS: usize = 50_000;

/// Rows per page of `stream`: one round trip per page, ~1.8 µs/row measured as a JSON page.
const STREAM_PAGE_ROWS: i64 = 2_000;

impl ItemRepo {
    /// The repository on `handle`: a [`Db`](crate::Db)\'s, a [`Tx`](crate::Tx)\'s, or any
    /// [`Handle`] a service holds.
    pub fn new(handle: Handle) -> Self {
        ItemRepo { handle }
    }

    /// Inserts an item and returns its id.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a blank or over-long name or data past the limits;
    /// [`Error::Duplicate`] (`items.name`) when the name is taken.
    pub fn create(&self, new: &NewItem) -> impl Future<Output = Result<i64>> + Send + use<> {
        let handle = self.handle.clone();
        let row = new
            .validate()
            .and_then(|()| Ok((new.name.clone(), data_text(&new.data)?, new.status)));
        traced("items", "create", async move {
            let (name, data, status) = row?;
            let mut conn = handle.writer().await?;
            insert_one(conn.statements()?, &name, &data, status).await
        })
    }

    /// The item with this id, or `None`.
    ///
    /// # Errors
    /// [`Error::Schema`] when migrations have not run; [`Error::Database`] otherwise.
    pub fn get(&self, id: i64) -> impl Future<Output = Result<Option<Item>>> + Send + use<> {
        let handle = self.handle.clone();
        traced("items", "get", async move {
            handle.read_grouped::<GroupedGets>(id).await
        })
    }

    /// The items with these ids, in id order; unknown ids are skipped. One statement.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for more than [`MAX_BATCH_ROWS`](crate::limits::MAX_BATCH_ROWS) ids.
    pub fn get_many(&self, ids: &[i64]) -> impl Future<Output = Result<Vec<Item>>> + Send + use<> {
        let handle = self.handle.clone();
        let ids = check_batch("get_many", ids.len()).and_then(|()| id_list(ids));
        traced("items", "get_many", async move {
            let Some(ids) = ids? else {
                return Ok(Vec::new());
            };
            let mut conn = handle.reader().await?;
            select_many(conn.statements()?, &ids).await
        })
    }

    /// Every item with this status, in id order.
    ///
    /// # Errors
    /// [`Error::Schema`] when migrations have not run; [`Error::Database`] otherwise.
    pub fn list_by_status(
        &self,
        status: ItemStatus,
    ) -> impl Future<Output = Result<Vec<Item>>> + Send + use<> {
        let handle = self.handle.clone();
        traced("items", "list_by_status", async move {
            let mut conn = handle.reader().await?;
            select_by_status(conn.statements()?, status).await
        })
    }

    /// Applies a patch; `true` when the row existed and a value really changed (a patch that
    /// repeats the stored values, an empty patch, or an unknown id gives `false` and leaves
    /// `updated_at` alone).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a blank name or data past the limits; [`Error::Duplicate`]
    /// (`items.name`) when the new name is taken.
    pub fn update(
        &self,
        id: i64,
        patch: &ItemPatch,
    ) -> impl Future<Output = Result<bool>> + Send + use<> {
        let handle = self.handle.clone();
        let change = patch_values(patch);
        traced("items", "update", async move {
            let Some((name, data, status)) = change? else {
                return Ok(false);
            };
            handle
                .write_grouped::<GroupedUpdates>(ItemUpdate {
                    id,
                    name,
                    data,
                    status,
                })
                .await
        })
    }

    /// Deletes an item; `true` when it existed.
    ///
    /// # Errors
    /// [`Error::Schema`] when migrations have not run; [`Error::Busy`] when locked.
    pub fn delete(&self, id: i64) -> impl Future<Output = Result<bool>> + Send + use<> {
        let handle = self.handle.clone();
        traced("items", "delete", async move {
            let mut conn = handle.writer().await?;
            delete_one(conn.statements()?, id).await
        })
    }

    /// Inserts every item, all or nothing, and returns how many rows were inserted (ids follow
    /// the slice order). `&[]` is `Ok(0)`.
    ///
    /// At most [`MAX_BATCH_ROWS`](crate::limits::MAX_BATCH_ROWS) (100,000) items per call. The
    /// rows travel as one JSON array per chunk of 50,000, each chunk one statement, all chunks
    /// in one `BEGIN IMMEDIATE` transaction.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an invalid item (naming its position) or an oversized batch;
    /// [`Error::Duplicate`] (`items.name`) when any name is taken or repeated. Either way nothing
    /// is written.
    pub fn insert_many(
        &self,
        items: &[NewItem],
    ) -> impl Future<Output = Result<u64>> + Send + use<> {
        let handle = self.handle.clone();
        let chunks = check_batch("insert_many", items.len()).and_then(|()| {
            items
                .chunks(INSERT_CHUNK_ROWS)
                .enumerate()
                .map(|(number, chunk)| batch_text(chunk, number * INSERT_CHUNK_ROWS))
                .collect::<Result<Vec<_>>>()
        });
        traced("items", "insert_many", async move {
            let chunks = chunks?;
            let mut conn = handle.writer().await?;
            match chunks.as_slice() {
                [] => Ok(0),
                // One statement is atomic by itself: no transaction, one round trip.
                [rows] => insert_batch(conn.statements()?, rows).await,
                _ => {
                    let mut tx = conn.atomic().await?;
                    let mut inserted = 0;
                    for rows in &chunks {
                        match insert_batch(tx.sqlite()?, rows).await {
                            Ok(count) => inserted += count,
                            Err(err) => {
                                // The error to report is the batch's. A rollback that fails
                                // too leaves the unit unfinished, and its Drop resets the
                                // writer (or ends the caller's Tx): nothing half-done stays.
                                let _unfinished = tx.rollback().await;
                                return Err(err);
                            }
                        }
                    }
                    tx.commit().await?;
                    Ok(inserted)
                }
            }
        })
    }

    /// Sets the status of every listed item, in one statement, and returns how many rows really
    /// changed: ids already in that status, unknown ids and repeated ids do not count.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for more than [`MAX_BATCH_ROWS`](crate::limits::MAX_BATCH_ROWS) ids.
    pub fn set_status_many(
        &self,
        ids: &[i64],
        status: ItemStatus,
    ) -> impl Future<Output = Result<u64>> + Send + use<> {
        let handle = self.handle.clone();
        let ids = check_batch("set_status_many", ids.len()).and_then(|()| id_list(ids));
        traced("items", "set_status_many", async move {
            let Some(ids) = ids? else {
                return Ok(0);
            };
            let mut conn = handle.writer().await?;
            update_status_batch(conn.statements()?, &ids, status).await
        })
    }

    /// Every item in id order, fetched in keyset pages of 2,000 so memory stays flat whatever
    /// the table's size. Each page is one consistent read; rows committed while the stream runs
    /// appear if their ids are past the current page.
    pub fn stream(&self) -> impl Stream<Item = Result<Item>> + Send + use<> {
        paging::keyset(
            self.handle.clone(),
            "items",
            STREAM_PAGE_ROWS,
            |handle, after| async move {
                let mut conn = handle.reader().await?;
                select_page(conn.statements()?, after, STREAM_PAGE_ROWS).await
            },
        )
    }

    /// How many items there are.
    ///
    /// # Errors
    /// [`Error::Schema`] when migrations have not run.
    pub fn count(&self) -> impl Future<Output = Result<i64>> + Send + use<> {
        let handle = self.handle.clone();
        traced("items", "count", async move {
            let mut conn = handle.reader().await?;
            Ok(
                sqlx::query_scalar!(r#"SELECT count(*) AS "count!: i64" FROM items"#)
                    .fetch_one(conn.statements()?)
                    .await?,
            )
        })
    }
}

/// A validated patch as the values `update_one` binds, or `None` when it changes nothing.
type PatchValues = Option<(Option<String>, Option<String>, Option<ItemStatus>)>;

fn patch_values(patch: &ItemPatch) -> Result<PatchValues> {
    if let Some(name) = &patch.name {
        check_name("item name", name)?;
    }
    let data = match &patch.data {
        Some(data) => {
            check_data_depth(data)?;
            Some(data_text(data)?)
        }
        None => None,
    };
    if patch.is_empty() {
        return Ok(None);
    }
    Ok(Some((patch.name.clone(), data, patch.status)))
}

/// One caller's `update`: the id and the validated values to set (`None`: keep).
#[derive(Debug)]
struct ItemUpdate {
    id: i64,
    name: Option<String>,
    /// The JSON text to store.
    data: Option<String>,
    status: Option<ItemStatus>,
}

/// One member of `update_group`'s JSON: `[id, name, data, status]`, `null` for "keep".
type UpdateRow<'a> = (i64, Option<&'a str>, Option<&'a str>, Option<&'a str>);

/// Updates of concurrent callers queued for the writer together, carried as one
/// `UPDATE … FROM json_each(?)` (one round trip and one commit for the group).
///
/// Measured here (bench `mixed_concurrent`, 16 callers, 2 loaded cores): with transfers grouped
/// and gets coalesced, the 10 % of updates still paid a writer round trip each.
struct GroupedUpdates;

impl Grouped for GroupedUpdates {
    type Request = ItemUpdate;
    type Outcome = bool;

    async fn apply_one(conn: &mut Conn, u: &ItemUpdate) -> Result<bool> {
        update_one(
            conn.statements()?,
            u.id,
            u.name.as_deref(),
            u.data.as_deref(),
            u.status,
        )
        .await
    }

    /// The group as one statement; `RETURNING id` says which rows really changed. Two updates
    /// of one item in a group (whose order matters), or a statement the database refuses (a
    /// name already taken), run one by one instead, in queue order, so each caller gets the
    /// answer it would get alone. Any other failure (a commit that could not be made) fails
    /// every member: none of them is stored.
    async fn apply_group(conn: &mut Conn, updates: &[ItemUpdate]) -> Vec<Result<bool>> {
        let distinct: std::collections::HashSet<i64> = updates.iter().map(|u| u.id).collect();
        let changed = if distinct.len() == updates.len() {
            let rows: Vec<UpdateRow<'_>> = updates
                .iter()
                .map(|u| {
                    (
                        u.id,
                        u.name.as_deref(),
                        u.data.as_deref(),
                        u.status.map(ItemStatus::as_str),
                    )
                })
                .collect();
            match (json_text(&rows), conn.statements()) {
                (Ok(json), Ok(sqlite)) => Some(update_group(sqlite, &json).await),
                (Err(err), _) | (_, Err(err)) => Some(Err(err)),
            }
        } else {
            None
        };
        match changed {
            Some(Ok(ids)) => updates.iter().map(|u| Ok(ids.contains(&u.id))).collect(),
            Some(Err(err))
                if !matches!(
                    err,
                    Error::Duplicate { .. } | Error::InvalidInput(_) | Error::ForeignKey
                ) =>
            {
                // A commit may have failed halfway: roll back before the writer's next use.
                let _ = conn.sqlite();
                updates.iter().map(|_| Err(err.for_each_caller())).collect()
            }
            _ => {
                let mut outcomes = Vec::with_capacity(updates.len());
                for u in updates {
                    outcomes.push(Self::apply_one(conn, u).await);
                }
                outcomes
            }
        }
    }
}

/// Point gets of concurrent callers that find every reader taken, answered together by one
/// `select_many` statement (one round trip for the group instead of one each).
///
/// Measured here (bench, 16 concurrent callers, 2 loaded cores): point gets on 4 readers cost
/// 14–17 µs per get of wall time uncoalesced, 10–12 µs coalesced (rusqlite 5.4–6.6 µs).
struct GroupedGets;

impl Grouped for GroupedGets {
    type Request = i64;
    type Outcome = Option<Item>;

    async fn apply_one(conn: &mut Conn, id: &i64) -> Result<Option<Item>> {
        select_one(conn.statements()?, *id).await
    }

    /// One statement for every id; if it fails (a row that does not decode, say), each get
    /// runs again alone, so one caller's bad row is not its neighbours' error.
    async fn apply_group(conn: &mut Conn, ids: &[i64]) -> Vec<Result<Option<Item>>> {
        let found = match (id_list(ids), conn.statements()) {
            (Ok(Some(ids_json)), Ok(sqlite)) => select_many(sqlite, &ids_json).await,
            (Ok(None), _) => return Vec::new(),
            (Err(err), _) | (_, Err(err)) => Err(err),
        };
        match found {
            Ok(items) => {
                let by_id: HashMap<i64, Item> =
                    items.into_iter().map(|item| (item.id, item)).collect();
                ids.iter().map(|id| Ok(by_id.get(id).cloned())).collect()
            }
            Err(_) => {
                let mut outcomes = Vec::with_capacity(ids.len());
                for id in ids {
                    outcomes.push(Self::apply_one(conn, id).await);
                }
                outcomes
            }
        }
    }
}

/// Ids as the JSON array a `json_each(?)` statement reads; `None` for no ids.
fn id_list(ids: &[i64]) -> Result<Option<String>> {
    if ids.is_empty() {
        return Ok(None);
    }
    json_text(ids).map(Some)
}

/// `data` as the compact JSON text stored in `items.data`, within the size limit.
fn data_text(data: &Value) -> Result<String> {
    let text = json_text(data)?;
    check_data_size(text.len())?;
    Ok(text)
}

fn json_text<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|err| Error::invalid(format!("not JSON: {err}")))
}

/// One chunk of items as the JSON array `insert_batch` reads: `[[name, data, status], ...]`.
/// Validates each item on the way, so a bad one is reported before anything is sent.
/// `first_index` is the position of the chunk's first item in the caller's slice.
fn batch_text(chunk: &[NewItem], first_index: usize) -> Result<String> {
    let mut out = Vec::with_capacity(chunk.len() * 64);
    out.push(b'[');
    for (offset, item) in chunk.iter().enumerate() {
        let index = first_index + offset;
        item.validate()
            .map_err(|err| at_position("item", index, err))?;
        if offset > 0 {
            out.push(b',');
        }
        let start = out.len();
        serde_json::to_writer(&mut out, &(&item.name, &item.data, item.status))
            .map_err(|err| Error::invalid(format!("item {index}: not JSON: {err}")))?;
        check_data_size(out.len() - start).map_err(|err| at_position("item", index, err))?;
    }
    out.push(b']');
    String::from_utf8(out).map_err(|err| Error::invalid(format!("not UTF-8: {err}")))
}

/// The row shape of every item query.
struct ItemRow {
    id: i64,
    name: String,
    data: Value,
    status: ItemStatus,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
}

impl From<ItemRow> for Item {
    fn from(row: ItemRow) -> Self {
        Item {
            id: row.id,
            name: row.name,
            data: row.data,
            status: row.status,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// An item as one element of a JSON page: `[id, name, data, status, created_at, updated_at]`.
#[derive(Deserialize)]
struct ItemJson(
    i64,
    String,
    Value,
    ItemStatus,
    #[serde(with = "time::serde::rfc3339")] OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")] OffsetDateTime,
);

impl From<ItemJson> for Item {
    fn from(ItemJson(id, name, data, status, created_at, updated_at): ItemJson) -> Self {
        Item {
            id,
            name,
            data,
            status,
            created_at,
            updated_at,
        }
    }
}

/// Decodes a page built by `select_page` or `select_many`, in id order.
fn parse_page(page: &str) -> Result<Vec<Item>> {
    // A row serde cannot read (say, data nested past its limit, written by other SQL) is a
    // decode error, as it is for `get`.
    let rows: Vec<ItemJson> = serde_json::from_str(page)
        .map_err(|err| Error::Database(sqlx::Error::Decode(err.into())))?;
    let mut items: Vec<Item> = rows.into_iter().map(Item::from).collect();
    // SQLite aggregates the ordered subquery in order; this keeps paging right even if a
    // future planner did not (one comparison per row).
    if !items.is_sorted_by_key(|item| item.id) {
        items.sort_unstable_by_key(|item| item.id);
    }
    Ok(items)
}

async fn insert_one(
    conn: &mut SqliteConnection,
    name: &str,
    data: &str,
    status: ItemStatus,
) -> Result<i64> {
    // `execute` steps the statement to its end, where an autocommit write commits, so a
    // failed commit (a full disk, a lock) is an error here. `INSERT … RETURNING` read with
    // `fetch_one` stops after the row and sqlx drops the commit's result at the reset.
    let result = sqlx::query!(
        r#"
        INSERT INTO items (name, data, status)
        VALUES (?1, ?2, ?3)
        "#,
        name,
        data,
        status,
    )
    .execute(conn)
    .await?;
    Ok(result.last_insert_rowid())
}

async fn select_one(conn: &mut SqliteConnection, id: i64) -> Result<Option<Item>> {
    let row = sqlx::query_as!(
        ItemRow,
        r#"
        SELECT id AS "id!: i64",
               name,
               data AS "data: Value",
               status AS "status: ItemStatus",
               created_at AS "created_at: OffsetDateTime",
               updated_at AS "updated_at: OffsetDateTime"
        FROM items
        WHERE id = ?1
        "#,
        id,
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(Item::from))
}

async fn select_by_status(conn: &mut SqliteConnection, status: ItemStatus) -> Result<Vec<Item>> {
    let rows = sqlx::query_as!(
        ItemRow,
        r#"
        SELECT id AS "id!: i64",
               name,
               data AS "data: Value",
               status AS "status: ItemStatus",
               created_at AS "created_at: OffsetDateTime",
               updated_at AS "updated_at: OffsetDateTime"
        FROM items
        WHERE status = ?1
        ORDER BY id
        "#,
        status,
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(Item::from).collect())
}

// The page comes back as one JSON text in one value: sqlx hands rows across from its worker
// thread one at a time (~2.9 µs/row measured), one value per page costs one crossing. The text
// is concatenated rather than built with json_array(json(data)): `data` is already valid JSON
// (a CHECK says so) and needs no re-parse. Measured for 300k rows (rusqlite, SQLite's work per
// row): 0.66 µs concatenated, 1.1 µs with json_group_array, 1.5 µs with json_group_array and an
// ORDER BY inside it. The rows arrive in the subquery's order; `parse_page` checks it.
async fn select_page(conn: &mut SqliteConnection, after_id: i64, limit: i64) -> Result<Vec<Item>> {
    let page = sqlx::query_scalar!(
        r#"
        SELECT coalesce(
                   '[' || group_concat(
                       '[' || id || ',' || json_quote(name) || ',' || data || ',' ||
                       json_quote(status) || ',' || json_quote(created_at) || ',' ||
                       json_quote(updated_at) || ']',
                       ','
                   ) || ']',
                   '[]'
               ) AS "page!: String"
        FROM (
            SELECT id, name, data, status, created_at, updated_at
            FROM items
            WHERE id > ?1
            ORDER BY id
            LIMIT ?2
        )
        "#,
        after_id,
        limit,
    )
    .fetch_one(conn)
    .await?;
    parse_page(&page)
}

// The ids travel as one JSON array; `json_each` turns it into a table SQLite joins by primary
// key, so any number of ids costs one statement. The page is built as in `select_page`.
async fn select_many(conn: &mut SqliteConnection, ids_json: &str) -> Result<Vec<Item>> {
    let page = sqlx::query_scalar!(
        r#"
        SELECT coalesce(
                   '[' || group_concat(
                       '[' || id || ',' || json_quote(name) || ',' || data || ',' ||
                       json_quote(status) || ',' || json_quote(created_at) || ',' ||
                       json_quote(updated_at) || ']',
                       ','
                   ) || ']',
                   '[]'
               ) AS "page!: String"
        FROM (
            SELECT id, name, data, status, created_at, updated_at
            FROM items
            WHERE id IN (SELECT value FROM json_each(?1))
            ORDER BY id
        )
        "#,
        ids_json,
    )
    .fetch_one(conn)
    .await?;
    parse_page(&page)
}

// `IS NOT` compares with NULL-safety, so the WHERE clause matches only when some value really
// differs; an identical patch changes nothing and keeps `updated_at`.
async fn update_one(
    conn: &mut SqliteConnection,
    id: i64,
    name: Option<&str>,
    data: Option<&str>,
    status: Option<ItemStatus>,
) -> Result<bool> {
    let result = sqlx::query!(
        r#"
        UPDATE items
        SET name = coalesce(?2, name),
            data = coalesce(?3, data),
            status = coalesce(?4, status),
            updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
        WHERE id = ?1
          AND (name IS NOT coalesce(?2, name)
               OR data IS NOT coalesce(?3, data)
               OR status IS NOT coalesce(?4, status))
        "#,
        id,
        name,
        data,
        status,
    )
    .execute(conn)
    .await?;
    Ok(result.rows_affected() > 0)
}

// `update_one` for a group: `[[id, name, data, status], ...]` (null: keep), one row per item
// (the caller makes sure no id repeats: `UPDATE … FROM` would pick one of them). `RETURNING id`
// names the rows that really changed; read with `fetch_all`, which steps to the end, where the
// commit happens, so a failed commit is an error here.
async fn update_group(
    conn: &mut SqliteConnection,
    updates_json: &str,
) -> Result<std::collections::HashSet<i64>> {
    let ids = sqlx::query_scalar!(
        r#"
        UPDATE items
        SET name = coalesce(patch.value ->> 1, items.name),
            data = coalesce(patch.value ->> 2, items.data),
            status = coalesce(patch.value ->> 3, items.status),
            updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
        FROM json_each(?1) AS patch
        WHERE items.id = patch.value ->> 0
          AND (items.name IS NOT coalesce(patch.value ->> 1, items.name)
               OR items.data IS NOT coalesce(patch.value ->> 2, items.data)
               OR items.status IS NOT coalesce(patch.value ->> 3, items.status))
        RETURNING id AS "id!: i64"
        "#,
        updates_json,
    )
    .fetch_all(conn)
    .await?;
    Ok(ids.into_iter().collect())
}

async fn delete_one(conn: &mut SqliteConnection, id: i64) -> Result<bool> {
    let result = sqlx::query!("DELETE FROM items WHERE id = ?1", id)
        .execute(conn)
        .await?;
    Ok(result.rows_affected() > 0)
}

// The whole chunk is one bound JSON text, `[[name, data, status], ...]`, expanded by
// `json_each`: one statement instead of a round trip per row (measured at rusqlite's speed for
// 100k rows). `->` keeps `data` as JSON text; `ORDER BY key` gives ids in slice order. A failing
// row aborts the statement, so the chunk is all or nothing.
async fn insert_batch(conn: &mut SqliteConnection, rows_json: &str) -> Result<u64> {
    let result = sqlx::query!(
        r#"
        INSERT INTO items (name, data, status)
        SELECT value ->> 0, value -> 1, value ->> 2
        FROM json_each(?1)
        ORDER BY key
        "#,
        rows_json,
    )
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}

// `status <> ?1` leaves rows already in that status alone, so rows_affected counts only real
// changes; `IN (json_each)` ignores unknown and repeated ids.
async fn update_status_batch(
    conn: &mut SqliteConnection,
    ids_json: &str,
    status: ItemStatus,
) -> Result<u64> {
    let result = sqlx::query!(
        r#"
        UPDATE items
        SET status = ?1,
            updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
        WHERE id IN (SELECT value FROM json_each(?2))
          AND status <> ?1
        "#,
        status,
        ids_json,
    )
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}
