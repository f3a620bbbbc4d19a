//! The `items` table: its data types, [`ItemRepo`], and all of its SQL.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::str::FromStr;

use futures_core::Stream;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use sqlx::SqliteConnection;
use time::OffsetDateTime;

use super::paging::{Keyed, Page};
use crate::conn::{Backend, Conn, Grouped, Handle};
use crate::error::{Error, Result};
use crate::kit::{self, Rows, at_position, check_batch, direct_column, json_text, traced};
use crate::limits::{
    MAX_CHUNK_BYTES, MAX_CHUNK_ROWS, MAX_PAGE_BYTES, MAX_PAGE_ROWS, check_data_depth,
    check_data_size, check_name,
};

mod data;
#[cfg(feature = "postgres")]
mod postgres;

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

/// Rows per page of `stream`, besides [`MAX_PAGE_BYTES`]: one round trip per page, a page
/// being one JSON text (see `select_page`). The kit's, which every stream pages by.
const STREAM_PAGE_ROWS: i64 = crate::kit::STREAM_PAGE_ROWS as i64;

/// The byte budget of one page of `get_many`. Its caller gets the whole result in memory
/// anyway, so the budget only keeps each value SQLite builds far below its 1e9-byte limit while
/// ordinary results (tens of thousands of rows of a few hundred bytes) stay one statement.
const GET_MANY_PAGE_BYTES: i64 = 16 << 20;

/// What SQLite's page statements count per row on top of the name and data: the id, status,
/// two timestamps, quotes, brackets and commas of its JSON element (about 90 bytes).
const ROW_OVERHEAD_BYTES: i64 = 128;

/// One page of [`ItemRepo::list_by_status_page`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemPage {
    /// The items of this page, in id order.
    pub items: Vec<Item>,
    /// The cursor of the next page (pass it as `after`), or `None` when this page is the last:
    /// the id of this page's last item when more items with the status lie past it.
    pub next: Option<i64>,
}

impl Rows for ItemPage {
    fn rows(&self) -> u64 {
        self.items.len() as u64
    }
}

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
    /// [`Error::Duplicate`] (`items.name`) when the name is taken. On PostgreSQL a NUL
    /// character (`\u0000`) inside the data is [`Error::InvalidInput`] too, since `jsonb`
    /// cannot store it (SQLite stores it; idempotency keys may contain any character on both).
    pub fn create(&self, new: &NewItem) -> impl Future<Output = Result<i64>> + Send + use<> {
        let handle = self.handle.clone();
        let row = new
            .validate()
            .and_then(|()| Ok((new.name.clone(), data_text(&new.data)?, new.status)));
        traced("items", "create", async move {
            let (name, data, status) = row?;
            handle
                .write_grouped::<GroupedCreates>(ItemCreate { name, data, status })
                .await
        })
    }

    /// The item with this id, or `None`.
    ///
    /// # Errors
    /// [`Error::Schema`] when migrations have not run; [`Error::Database`] otherwise.
    pub fn get(&self, id: i64) -> impl Future<Output = Result<Option<Item>>> + Send + use<> {
        let handle = self.handle.clone();
        traced("items", "get", async move {
            if let Some(found) = handle.read_direct(|conn| select_one_direct(conn, id)).await {
                return Ok(found);
            }
            handle.read_grouped::<GroupedGets>(id).await
        })
    }

    /// The items with these ids, in id order; unknown ids are skipped and repeated ids given
    /// once.
    ///
    /// One statement while the result is under 16 MiB of JSON text; a larger one (big `data`
    /// values) is read in several statements inside one read transaction, so it is still one
    /// consistent snapshot and no single value nears SQLite's 1e9-byte limit.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for more than [`MAX_BATCH_ROWS`](crate::limits::MAX_BATCH_ROWS) ids;
    /// [`Error::TooBig`] only for a single stored row past SQLite's limits (written by other SQL).
    pub fn get_many(&self, ids: &[i64]) -> impl Future<Output = Result<Vec<Item>>> + Send + use<> {
        let handle = self.handle.clone();
        // Kept as ids: SQLite reads them as one JSON array, PostgreSQL as an array parameter.
        let ids = check_batch("get_many", ids.len()).map(|()| ids.to_vec());
        traced("items", "get_many", async move {
            let ids = ids?;
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let ids = &ids;
            handle
                .read(|mut conn| async move {
                    match conn.backend()? {
                        Backend::Sqlite(_) => select_many(&mut conn, &json_text(ids)?).await,
                        #[cfg(feature = "postgres")]
                        Backend::Postgres(c) => postgres::select_many(c, ids).await,
                    }
                })
                .await
        })
    }

    /// Every item with this status, in id order, in one result.
    ///
    /// Its cost grows with the table: every matching row is read, decoded and held in memory
    /// at once (a million matching items of 1 KiB each is a gigabyte). Use it for tables known
    /// to stay small; page anything a client can grow with
    /// [`list_by_status_page`](Self::list_by_status_page).
    ///
    /// # Errors
    /// [`Error::Schema`] when migrations have not run; [`Error::Database`] otherwise.
    pub fn list_by_status(
        &self,
        status: ItemStatus,
    ) -> impl Future<Output = Result<Vec<Item>>> + Send + use<> {
        let handle = self.handle.clone();
        traced("items", "list_by_status", async move {
            handle
                .read(|mut conn| async move {
                    match conn.backend()? {
                        Backend::Sqlite(c) => select_by_status(c, status).await,
                        #[cfg(feature = "postgres")]
                        Backend::Postgres(c) => postgres::select_by_status(c, status).await,
                    }
                })
                .await
        })
    }

    /// One page of the items with this status, in id order: those with ids above `after`
    /// (`None`: from the first), at most `limit` of them and at most [`MAX_PAGE_BYTES`] of JSON
    /// beyond the first, with the cursor of the next page. One statement; each page is a
    /// consistent read, and rows written between pages show up if their ids lie ahead (keyset
    /// paging, so nothing is skipped or repeated when earlier rows change).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> sqlrepo::Result<()> {
    /// use sqlrepo::{Db, ItemStatus, NewItem};
    /// use serde_json::json;
    /// let items = Db::in_memory().await?.items();
    /// let new = [NewItem::new("a", json!(1)), NewItem::new("b", json!(2)), NewItem::new("c", json!(3))];
    /// items.insert_many(&new).await?;
    /// let first = items.list_by_status_page(ItemStatus::Active, None, 2).await?;
    /// assert_eq!(first.items.len(), 2);
    /// let second = items.list_by_status_page(ItemStatus::Active, first.next, 2).await?;
    /// assert_eq!(second.items[0].name, "c");
    /// assert_eq!(second.next, None);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a `limit` of 0 or above [`MAX_PAGE_ROWS`], before the
    /// database is touched; [`Error::Schema`] when migrations have not run.
    pub fn list_by_status_page(
        &self,
        status: ItemStatus,
        after: Option<i64>,
        limit: u32,
    ) -> impl Future<Output = Result<ItemPage>> + Send + use<> {
        let handle = self.handle.clone();
        let limit = check_page_limit(limit);
        traced("items", "list_by_status_page", async move {
            let limit = limit?;
            // Keys are inclusive lower bounds inside, so that `None` can mean "from i64::MIN".
            let from = match after {
                None => i64::MIN,
                Some(after) => match after.checked_add(1) {
                    Some(from) => from,
                    None => {
                        return Ok(ItemPage {
                            items: Vec::new(),
                            next: None,
                        });
                    }
                },
            };
            let page = handle
                .read(|mut conn| async move {
                    match conn.backend()? {
                        Backend::Sqlite(c) => select_status_page(c, status, from, limit).await,
                        #[cfg(feature = "postgres")]
                        Backend::Postgres(c) => {
                            postgres::select_status_page(
                                c,
                                status,
                                from,
                                limit,
                                MAX_PAGE_BYTES as i64,
                            )
                            .await
                        }
                    }
                })
                .await?;
            let next = page.next_from().and(page.rows.last().map(|item| item.id));
            Ok(ItemPage {
                items: page.rows,
                next,
            })
        })
    }

    /// Applies a patch; `true` when the row existed and a value really changed (a patch that
    /// repeats the stored values, an empty patch, or an unknown id gives `false` and leaves
    /// `updated_at` alone).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a blank name or data past the limits, and on PostgreSQL for
    /// data holding a NUL character (as [`create`](Self::create)), whether or not the item
    /// exists; [`Error::Duplicate`] (`items.name`) when the new name is taken.
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
            match conn.backend()? {
                Backend::Sqlite(c) => delete_one(c, id).await,
                #[cfg(feature = "postgres")]
                Backend::Postgres(c) => postgres::delete_one(c, id).await,
            }
        })
    }

    /// Inserts every item, all or nothing, and returns how many rows were inserted (ids follow
    /// the slice order). `&[]` is `Ok(0)`.
    ///
    /// At most [`MAX_BATCH_ROWS`](crate::limits::MAX_BATCH_ROWS) (100,000) items per call. The
    /// rows travel as one JSON array per chunk of at most 50,000 rows and [`MAX_CHUNK_BYTES`]
    /// of JSON, each chunk one statement, several chunks in one `BEGIN IMMEDIATE` transaction.
    /// Each item's `data` is measured alone against
    /// [`MAX_DATA_BYTES`](crate::limits::MAX_DATA_BYTES), as `create` and `update` measure it.
    /// The JSON text of every chunk is built before the call starts, so the call holds about as
    /// many bytes again as the items' JSON.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an invalid item (naming its position) or an oversized batch,
    /// and on PostgreSQL for data holding a NUL character (as [`create`](Self::create));
    /// [`Error::Duplicate`] (`items.name`) when any name is taken or repeated. Either way nothing
    /// is written.
    pub fn insert_many(
        &self,
        items: &[NewItem],
    ) -> impl Future<Output = Result<u64>> + Send + use<> {
        let handle = self.handle.clone();
        let chunks = check_batch("insert_many", items.len())
            .and_then(|()| batch_chunks(items, MAX_CHUNK_ROWS, MAX_CHUNK_BYTES));
        traced("items", "insert_many", async move {
            let chunks = chunks?;
            let mut conn = handle.writer().await?;
            #[cfg(feature = "postgres")]
            if matches!(conn.backend()?, Backend::Postgres(_)) {
                return postgres::insert_many(&mut conn, &chunks).await;
            }
            // The kit's own helper, as a service's repository uses it: one statement for one
            // chunk, one all-or-nothing unit for several.
            kit::write_chunks(&mut conn, &chunks, |sqlite, rows| {
                Box::pin(insert_batch(sqlite, rows))
            })
            .await
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
        let ids = check_batch("set_status_many", ids.len()).map(|()| ids.to_vec());
        traced("items", "set_status_many", async move {
            let ids = ids?;
            if ids.is_empty() {
                return Ok(0);
            }
            let mut conn = handle.writer().await?;
            match conn.backend()? {
                Backend::Sqlite(c) => update_status_batch(c, &json_text(&ids)?, status).await,
                #[cfg(feature = "postgres")]
                Backend::Postgres(c) => postgres::update_status_batch(c, &ids, status).await,
            }
        })
    }

    /// Every item in id order (every id, zero and negative ones included), fetched in keyset
    /// pages of at most 2,000 rows and [`MAX_PAGE_BYTES`] of JSON beyond their first row, so
    /// memory stays flat whatever the table's size and however big its rows. Each page is one consistent read; rows committed while the stream runs
    /// appear if their ids are past the current page.
    ///
    /// A row whose stored `data` cannot be read exactly (JSON from another program with a
    /// number past a 64-bit float) comes as [`Error::Unreadable`] naming it, in its place, and
    /// the stream goes on with the next row; any other error ends the stream.
    pub fn stream(&self) -> impl Stream<Item = Result<Item>> + Send + use<> {
        let pages = kit::keyset_of(self.handle.clone(), "items", |handle, after| async move {
            // Rowids may be zero or negative (a row inserted with an explicit id by other
            // SQL), so the first page starts at the smallest key there is, not after 0.
            let Some(from) = kit::page_from(after) else {
                return Ok(StreamPage {
                    chunks: Vec::new(),
                    rows: 0,
                    next: None,
                });
            };
            let max_bytes = MAX_PAGE_BYTES as i64;
            handle
                .read(|mut conn| async move {
                    match conn.backend()? {
                        Backend::Sqlite(c) => {
                            select_page(c, from, STREAM_PAGE_ROWS, max_bytes).await
                        }
                        #[cfg(feature = "postgres")]
                        Backend::Postgres(c) => {
                            postgres::select_page(c, from, STREAM_PAGE_ROWS, max_bytes)
                                .await
                                .map(StreamChunk::page)
                        }
                    }
                })
                .await
        });
        // A page is decoded here, as the caller asks for its rows, so that the database reads
        // the next page (the read ahead of `kit::keyset`) meanwhile. A page that cannot be
        // decoded at all ends the stream; a row that cannot be read is that row's error.
        pages
            .flat_map(|chunk| {
                let rows: Vec<(Result<Item>, bool)> = match chunk.and_then(StreamChunk::rows) {
                    Ok(rows) => rows.into_iter().map(|row| (row.item, false)).collect(),
                    Err(err) => vec![(Err(err), true)],
                };
                futures_util::stream::iter(rows)
            })
            .scan(false, |ended, (item, fatal)| {
                let item = (!*ended).then_some(item);
                *ended = fatal;
                std::future::ready(item)
            })
    }

    /// How many items there are.
    ///
    /// # Errors
    /// [`Error::Schema`] when migrations have not run.
    pub fn count(&self) -> impl Future<Output = Result<i64>> + Send + use<> {
        let handle = self.handle.clone();
        traced("items", "count", async move {
            handle
                .read(|mut conn| async move {
                    match conn.backend()? {
                        Backend::Sqlite(c) => Ok(sqlx::query_scalar!(
                            r#"SELECT count(*) AS "count!: i64" FROM items"#
                        )
                        .fetch_one(c)
                        .await?),
                        #[cfg(feature = "postgres")]
                        Backend::Postgres(c) => postgres::count(c).await,
                    }
                })
                .await
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
/// Why: with transfers grouped and gets coalesced, the updates of a mixed load (the bench's
/// `mixed_concurrent`) were left paying a writer round trip each.
struct GroupedUpdates;

impl Grouped for GroupedUpdates {
    type Request = ItemUpdate;
    type Outcome = bool;

    async fn apply_one(conn: &mut Conn, u: &ItemUpdate) -> Result<bool> {
        let (name, data) = (u.name.as_deref(), u.data.as_deref());
        match conn.backend()? {
            Backend::Sqlite(c) => update_one(c, u.id, name, data, u.status).await,
            #[cfg(feature = "postgres")]
            Backend::Postgres(c) => postgres::update_one(c, u.id, name, data, u.status).await,
        }
    }

    /// [`apply_one`](Grouped::apply_one)'s `UPDATE` on the direct writer (SQLite only, as the
    /// direct writer is); a refusal (a name taken) stores nothing and goes to `apply_one`.
    fn apply_one_direct(conn: &kit::Connection, u: &ItemUpdate) -> Option<bool> {
        static SQL: std::sync::LazyLock<sqlx::SqlStr> =
            std::sync::LazyLock::new(|| sqlx::Execute::sql(update_one_query(0, None, None, None)));
        let status = u.status.map(ItemStatus::as_str);
        let params = (u.id, u.name.as_deref(), u.data.as_deref(), status);
        Some(kit::direct_execute(conn, SQL.as_str(), params)? > 0)
    }

    /// [`apply_group`](Grouped::apply_group)'s statement on the direct writer; a group it does
    /// not take as one statement (an item twice), or one the database refuses, stores nothing
    /// and goes to `apply_group`.
    fn apply_group_direct(conn: &kit::Connection, updates: &[ItemUpdate]) -> Option<Vec<bool>> {
        static SQL: std::sync::LazyLock<sqlx::SqlStr> =
            std::sync::LazyLock::new(|| sqlx::Execute::sql(update_group_query("[]")));
        let json = group_json(updates)?.ok()?;
        let changed: std::collections::HashSet<i64> =
            kit::direct_returning(conn, SQL.as_str(), [json], |row| direct_column(row, 0))?
                .into_iter()
                .collect();
        Some(updates.iter().map(|u| changed.contains(&u.id)).collect())
    }

    /// The group as one statement; `RETURNING id` says which rows really changed. Two updates
    /// of one item in a group (whose order matters), or a statement the database refuses (a
    /// name already taken), run one by one instead, in queue order, so each caller gets the
    /// answer it would get alone. Any other failure (a commit that could not be made) fails
    /// every member: none of them is stored.
    async fn apply_group(conn: &mut Conn, updates: &[ItemUpdate]) -> Vec<Result<bool>> {
        let changed = match group_json(updates) {
            Some(json) => match (json, conn.statements()) {
                (Ok(json), Ok(sqlite)) => Some(update_group(sqlite, &json).await),
                (Err(err), _) | (_, Err(err)) => Some(Err(err)),
            },
            None => None,
        };
        match changed {
            Some(Ok(ids)) => updates.iter().map(|u| Ok(ids.contains(&u.id))).collect(),
            Some(Err(err)) if !err.is_refusal() => {
                // A commit may have failed halfway: roll back before the writer's next use.
                conn.reset_on_return();
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

/// `update_group`'s JSON for a group of updates of distinct items; `None` when an item comes
/// twice (their order matters, and `UPDATE … FROM` would apply one of them).
fn group_json(updates: &[ItemUpdate]) -> Option<Result<String>> {
    let distinct: std::collections::HashSet<i64> = updates.iter().map(|u| u.id).collect();
    if distinct.len() != updates.len() {
        return None;
    }
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
    Some(json_text(&rows))
}

/// One caller's `create`: the validated values to insert.
#[derive(Debug)]
struct ItemCreate {
    name: String,
    /// The JSON text to store.
    data: String,
    status: ItemStatus,
}

/// Creates of concurrent callers queued for the writer together, carried as one
/// `INSERT … SELECT … FROM jsonb_each(?)` (one commit for the group), and a lone create on the
/// caller's thread (see `direct_write`).
///
/// Why: a create was the one single-row write still paying sqlx's worker round trip and a
/// commit of its own under load (the bench's `create` row, and the guard's record of it).
struct GroupedCreates;

impl Grouped for GroupedCreates {
    type Request = ItemCreate;
    type Outcome = i64;

    async fn apply_one(conn: &mut Conn, c: &ItemCreate) -> Result<i64> {
        match conn.backend()? {
            Backend::Sqlite(sqlite) => insert_one(sqlite, &c.name, &c.data, c.status).await,
            #[cfg(feature = "postgres")]
            Backend::Postgres(pg) => postgres::insert_one(pg, &c.name, &c.data, c.status).await,
        }
    }

    /// [`apply_one`](Grouped::apply_one)'s `INSERT` on the direct writer; a refusal (a name
    /// taken) stores nothing and goes to `apply_one`, which names it.
    fn apply_one_direct(conn: &kit::Connection, c: &ItemCreate) -> Option<i64> {
        static SQL: std::sync::LazyLock<sqlx::SqlStr> = std::sync::LazyLock::new(|| {
            sqlx::Execute::sql(insert_one_query("", "", ItemStatus::Active))
        });
        let params = (c.name.as_str(), c.data.as_str(), c.status.as_str());
        // The direct writer is this caller's alone until it returns: the rowid is this insert's.
        (kit::direct_execute(conn, SQL.as_str(), params)? == 1).then(|| conn.last_insert_rowid())
    }

    /// [`apply_group`](Grouped::apply_group)'s statement on the direct writer; a group the
    /// database refuses stores nothing and goes to `apply_group`.
    fn apply_group_direct(conn: &kit::Connection, creates: &[ItemCreate]) -> Option<Vec<i64>> {
        static SQL: std::sync::LazyLock<sqlx::SqlStr> =
            std::sync::LazyLock::new(|| sqlx::Execute::sql(create_group_query("[]")));
        let json = create_json(creates).ok()?;
        let mut ids =
            kit::direct_returning(conn, SQL.as_str(), [json], |row| direct_column(row, 0))?;
        ids.sort_unstable();
        Some(ids)
    }

    /// The group as one statement. When the database refuses it (a name taken, by an earlier
    /// item or by two members), nothing of it is stored and each member runs again alone, in
    /// queue order, so each caller gets the answer it would get alone. Any other failure (a
    /// commit that could not be made) fails every member: none of them is stored.
    async fn apply_group(conn: &mut Conn, creates: &[ItemCreate]) -> Vec<Result<i64>> {
        let ids = match (create_json(creates), conn.statements()) {
            (Ok(json), Ok(sqlite)) => create_group(sqlite, &json).await,
            (Err(err), _) | (_, Err(err)) => Err(err),
        };
        match ids {
            // One id per member: the statement inserts every row or none.
            Ok(ids) => ids.into_iter().map(Ok).collect(),
            Err(err) if !err.is_refusal() && !matches!(err, Error::WrongBackend(_)) => {
                // A commit may have failed halfway: roll back before the writer's next use.
                conn.reset_on_return();
                creates.iter().map(|_| Err(err.for_each_caller())).collect()
            }
            // A refusal, or (on PostgreSQL, where the group statement is SQLite's) no group
            // statement: one by one.
            _ => {
                let mut outcomes = Vec::with_capacity(creates.len());
                for c in creates {
                    outcomes.push(Self::apply_one(conn, c).await);
                }
                outcomes
            }
        }
    }
}

/// `create_group`'s JSON: `[[name, data, status], ...]`, `data` as the JSON it is (the text
/// `create` validated), in the members' order.
fn create_json(creates: &[ItemCreate]) -> Result<String> {
    let mut json = String::from("[");
    for (index, c) in creates.iter().enumerate() {
        if index > 0 {
            json.push(',');
        }
        json.push('[');
        json.push_str(&json_text(&c.name)?);
        json.push(',');
        json.push_str(&c.data);
        json.push(',');
        json.push_str(&json_text(&c.status)?);
        json.push(']');
    }
    json.push(']');
    Ok(json)
}

/// Point gets of concurrent callers that find every reader taken, answered together by one
/// `select_many` statement (one round trip for the group instead of one each).
///
/// Why: with 16 concurrent callers, coalescing measured cheaper per get than one statement
/// each (the bench's "reads under load" line; figures in the guide's performance chapter).
struct GroupedGets;

impl Grouped for GroupedGets {
    type Request = i64;
    type Outcome = Option<Item>;

    async fn apply_one(conn: &mut Conn, id: &i64) -> Result<Option<Item>> {
        match conn.backend()? {
            Backend::Sqlite(c) => select_one(c, *id).await,
            #[cfg(feature = "postgres")]
            Backend::Postgres(c) => postgres::select_one(c, *id).await,
        }
    }

    /// One statement for every id; if it fails (a row that does not decode, say), each get
    /// runs again alone, so one caller's bad row is not its neighbours' error.
    async fn apply_group(conn: &mut Conn, ids: &[i64]) -> Vec<Result<Option<Item>>> {
        let found = match id_list(ids) {
            Ok(Some(ids_json)) => select_many(conn, &ids_json).await,
            Ok(None) => return Vec::new(),
            Err(err) => Err(err),
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

/// The items as the JSON arrays `insert_batch` reads, `[[name, data, status], ...]`, one per
/// statement: a chunk closes before it would pass `max_rows` rows or `max_bytes` bytes (a
/// single row bigger than that is a chunk by itself). Validates each item on the way, so a bad
/// one is reported, by position, before anything is sent; `data` is measured alone against
/// [`MAX_DATA_BYTES`](crate::limits::MAX_DATA_BYTES), as in `create` and `update`.
fn batch_chunks(items: &[NewItem], max_rows: usize, max_bytes: usize) -> Result<Vec<String>> {
    let not_json = |index: usize, err: serde_json::Error| {
        Error::invalid(format!("item {index}: not JSON: {err}"))
    };
    // Written by hand rather than through `kit::json_chunks`: `data` is measured as it is
    // serialized, in the one pass, instead of serializing it twice.
    kit::chunk_rows(items, max_rows, max_bytes, |row, index, item| {
        item.validate()
            .map_err(|err| at_position("item", index, err))?;
        row.push(b'[');
        serde_json::to_writer(&mut *row, &item.name).map_err(|err| not_json(index, err))?;
        row.push(b',');
        let data_start = row.len();
        serde_json::to_writer(&mut *row, &item.data).map_err(|err| not_json(index, err))?;
        check_data_size(row.len() - data_start).map_err(|err| at_position("item", index, err))?;
        row.push(b',');
        serde_json::to_writer(&mut *row, &item.status).map_err(|err| not_json(index, err))?;
        row.push(b']');
        Ok(())
    })
}

/// A `list_by_status_page` limit within 1..=[`MAX_PAGE_ROWS`].
fn check_page_limit(limit: u32) -> Result<i64> {
    if limit == 0 || limit > MAX_PAGE_ROWS {
        return Err(Error::invalid(format!(
            "a page holds 1 to {MAX_PAGE_ROWS} items, not {limit}"
        )));
    }
    Ok(i64::from(limit))
}

/// The row shape of the item queries that read rows (not pages): `data` as its stored text.
struct ItemRow {
    id: i64,
    name: String,
    data: String,
    status: ItemStatus,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
}

impl ItemRow {
    /// The item, or [`Error::Unreadable`] when its stored `data` cannot be read exactly.
    fn item(self) -> Result<Item> {
        Ok(Item {
            data: data::read(self.id, &self.data)?,
            id: self.id,
            name: self.name,
            status: self.status,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// An item as one element of a JSON page: `[id, name, data, status, created_at, updated_at]`,
/// `data` left as its text so that a value that cannot be read is that row's error alone.
#[derive(Deserialize)]
struct ItemJson<'a>(
    i64,
    String,
    #[serde(borrow)] &'a RawValue,
    ItemStatus,
    #[serde(with = "time::serde::rfc3339")] OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")] OffsetDateTime,
);

/// [`ItemJson`] with `data` read straight into a value: the one pass an ordinary page takes.
#[derive(Deserialize)]
struct ItemJsonValue(
    i64,
    String,
    Value,
    ItemStatus,
    #[serde(with = "time::serde::rfc3339")] OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")] OffsetDateTime,
);

/// One row of a streamed page: its id, and the item or why it cannot be read, so that the
/// stream reports that row and goes on past it.
struct StreamRow {
    id: i64,
    item: Result<Item>,
}

impl Keyed for StreamRow {
    fn key(&self) -> i64 {
        self.id
    }
}

/// One page of `stream` as the database gave it (its rows in one chunk), how many rows it
/// holds, and the key to read on from when rows may follow.
struct StreamPage {
    chunks: Vec<StreamChunk>,
    rows: u64,
    next: Option<i64>,
}

impl Rows for StreamPage {
    fn rows(&self) -> u64 {
        self.rows
    }
}

impl From<StreamPage> for kit::Page<StreamChunk> {
    fn from(page: StreamPage) -> Self {
        kit::Page {
            rows: page.chunks,
            next: page.next,
        }
    }
}

/// The rows of one page of `stream`: SQLite's are one JSON text, decoded by the stream's
/// consumer; PostgreSQL's come decoded.
enum StreamChunk {
    Json(String),
    #[cfg(feature = "postgres")]
    Rows(Vec<StreamRow>),
}

impl StreamChunk {
    /// A decoded page as one chunk, with the key of its last row when rows may follow.
    #[cfg(feature = "postgres")]
    fn page(page: Page<StreamRow>) -> StreamPage {
        let next = page.next_from().and(page.rows.last().map(Keyed::key));
        StreamPage {
            rows: page.rows.len() as u64,
            chunks: vec![StreamChunk::Rows(page.rows)],
            next,
        }
    }

    fn rows(self) -> Result<Vec<StreamRow>> {
        match self {
            StreamChunk::Json(page) => parse_rows(&page),
            #[cfg(feature = "postgres")]
            StreamChunk::Rows(rows) => Ok(rows),
        }
    }
}

/// Decodes a page built by `select_many_page` or `select_status_page`, in id order; `more` is
/// the statement's answer to whether rows remain past it. A row that cannot be read fails the
/// page, naming the row.
fn parse_page(page: &str, more: bool) -> Result<Page<Item>> {
    Ok(Page {
        rows: parse_rows(page)?
            .into_iter()
            .map(|row| row.item)
            .collect::<Result<_>>()?,
        more,
    })
}

fn parse_rows(page: &str) -> Result<Vec<StreamRow>> {
    // An ordinary page (no number anywhere in it that a value would not hold exactly: its ids
    // are integers, its names and timestamps strings) is read in one pass; one that does not
    // read that way (a foreign row's number, nesting or lone surrogate) is read again row by
    // row, so that only the rows at fault are errors.
    if data::first_inexact_number(page).is_none()
        && let Ok(rows) = serde_json::from_str::<Vec<ItemJsonValue>>(page)
    {
        let rows = rows.into_iter().map(
            |ItemJsonValue(id, name, data, status, created_at, updated_at)| StreamRow {
                id,
                item: Ok(Item {
                    id,
                    name,
                    data,
                    status,
                    created_at,
                    updated_at,
                }),
            },
        );
        return Ok(in_id_order(rows.collect()));
    }
    // The page's own shape is ours (ids, quoted names and timestamps), so failing here is a
    // decode error of the statement; `data`, which other programs write, is read per row.
    let rows: Vec<ItemJson<'_>> = serde_json::from_str(page)
        .map_err(|err| Error::Database(sqlx::Error::Decode(err.into())))?;
    let rows: Vec<StreamRow> = rows
        .into_iter()
        .map(
            |ItemJson(id, name, data, status, created_at, updated_at)| StreamRow {
                id,
                item: data::read(id, data.get()).map(|data| Item {
                    id,
                    name,
                    data,
                    status,
                    created_at,
                    updated_at,
                }),
            },
        )
        .collect();
    Ok(in_id_order(rows))
}

/// SQLite aggregates the ordered subquery in order; this keeps paging right even if a future
/// planner did not (one comparison per row).
fn in_id_order(mut rows: Vec<StreamRow>) -> Vec<StreamRow> {
    if !rows.is_sorted_by_key(|row| row.id) {
        rows.sort_unstable_by_key(|row| row.id);
    }
    rows
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
    let result = insert_one_query(name, data, status).execute(conn).await?;
    Ok(result.last_insert_rowid())
}

/// [`insert_one`]'s statement, checked by `query!`: the worker path runs it, the direct writer
/// its text ([`GroupedCreates::apply_one_direct`]).
fn insert_one_query(
    name: &str,
    data: &str,
    status: ItemStatus,
) -> sqlx::query::Query<'static, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    sqlx::query!(
        r#"
        INSERT INTO items (name, data, status)
        VALUES (?1, ?2, ?3)
        "#,
        name,
        data,
        status,
    )
}

/// `insert_one` for a group: `[[name, data, status], ...]` as `insert_batch` reads it, with
/// `RETURNING id`. `ORDER BY key` inserts the rows in the group's order, so with `id` an
/// `INTEGER PRIMARY KEY` (each new one past the largest) the returned ids, sorted, are the
/// members' ids in their order (as `insert_many`'s are). Read with `fetch_all`, which steps to
/// the end, where the commit happens, so a failed commit is an error here.
async fn create_group(conn: &mut SqliteConnection, rows_json: &str) -> Result<Vec<i64>> {
    let mut ids = create_group_query(rows_json).fetch_all(conn).await?;
    ids.sort_unstable();
    Ok(ids)
}

/// [`create_group`]'s statement, checked by `query_scalar!`: the worker path runs it, the
/// direct writer its text ([`GroupedCreates::apply_group_direct`]).
fn create_group_query(
    rows_json: &str,
) -> sqlx::query::QueryScalar<'static, sqlx::Sqlite, i64, sqlx::sqlite::SqliteArguments> {
    sqlx::query_scalar!(
        r#"
        INSERT INTO items (name, data, status)
        SELECT value ->> 0, value -> 1, value ->> 2
        FROM jsonb_each(?1)
        ORDER BY key
        RETURNING id AS "id!: i64"
        "#,
        rows_json,
    )
}

/// The point get, checked by `query_as!`: the worker-thread path runs it, the direct path
/// ([`select_one_direct`]) runs its text.
fn select_one_query(
    id: i64,
) -> sqlx::query::Map<
    'static,
    sqlx::Sqlite,
    impl FnMut(sqlx::sqlite::SqliteRow) -> sqlx::Result<ItemRow> + Send,
    sqlx::sqlite::SqliteArguments,
> {
    sqlx::query_as!(
        ItemRow,
        r#"
        SELECT id AS "id!: i64",
               name,
               data AS "data!",
               status AS "status: ItemStatus",
               created_at AS "created_at: OffsetDateTime",
               updated_at AS "updated_at: OffsetDateTime"
        FROM items
        WHERE id = ?1
        "#,
        id,
    )
}

async fn select_one(conn: &mut SqliteConnection, id: i64) -> Result<Option<Item>> {
    let row = select_one_query(id).fetch_optional(conn).await?;
    row.map(ItemRow::item).transpose()
}

/// [`select_one_query`] on a direct reader (see [`Handle::read_direct`]): `Some` only for a
/// clean answer, each column read as the checked query reads it; anything else is `None`, and
/// the caller reads the ordinary way, whose answer or error stands.
fn select_one_direct(conn: &kit::Connection, id: i64) -> Option<Option<Item>> {
    static SQL: std::sync::LazyLock<sqlx::SqlStr> =
        std::sync::LazyLock::new(|| sqlx::Execute::sql(select_one_query(0)));
    let row = kit::direct_get(conn, SQL.as_str(), id, |row| {
        Some(ItemRow {
            id: direct_column(row, 0)?,
            name: direct_column(row, 1)?,
            data: direct_column(row, 2)?,
            status: direct_column::<String>(row, 3)?.parse().ok()?,
            created_at: direct_column(row, 4)?,
            updated_at: direct_column(row, 5)?,
        })
    })?;
    match row {
        None => Some(None),
        Some(row) => row.item().ok().map(Some),
    }
}

async fn select_by_status(conn: &mut SqliteConnection, status: ItemStatus) -> Result<Vec<Item>> {
    let rows = sqlx::query_as!(
        ItemRow,
        r#"
        SELECT id AS "id!: i64",
               name,
               data AS "data!",
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
    rows.into_iter().map(ItemRow::item).collect()
}

// The page comes back as one JSON text in one value: sqlx hands rows across from its worker
// thread one at a time, so one value per page costs one crossing instead of one per row. The
// text is concatenated rather than built with json_array(json(data)): `data` is already valid
// JSON (a CHECK says so) and needs no re-parse; concatenating measured cheaper per row than
// json_group_array, with or without an ORDER BY inside it. The rows arrive in the subquery's
// order; `parse_rows` checks it.
//
// The page is bounded by bytes as well as rows, because that one value must stay far below
// SQLite's 1e9-byte limit while an item may hold 1 MiB. `bound` adds up the size of the next
// `?2` rows (the sizes only: `octet_length` of a column reads its length from the record
// header, not the value; `?4` per row stands for the id, status, timestamps and punctuation, so
// the budget is a soft one that hostile names can pass by a few KiB per row). When they fit in
// `?3` bytes, as ordinary rows do, they are the page; only when they do not does a running sum
// (a window function, which costs more than the whole page, so kept off the common path)
// find the last row that starts within the budget. The first row always fits. The byte bound
// costs ordinary rows a little per row against the statement without it (the bench's
// `stream`). `more` is one probe of the primary key.
// `id >= ?1`: the stream starts at i64::MIN, so ids of zero and below are read too.
async fn select_page(
    conn: &mut SqliteConnection,
    from_id: i64,
    limit: i64,
    max_bytes: i64,
) -> Result<StreamPage> {
    let row = sqlx::query!(
        r#"
        WITH bound AS MATERIALIZED (
            SELECT max(id) AS last_id, sum(bytes) AS total_bytes
            FROM (
                SELECT id, octet_length(name) + octet_length(data) + ?4 AS bytes
                FROM items
                WHERE id >= ?1
                ORDER BY id
                LIMIT ?2
            )
        ),
        page_end AS MATERIALIZED (
            SELECT CASE
                       WHEN total_bytes <= ?3 THEN last_id
                       ELSE (
                           SELECT max(id)
                           FROM (
                               SELECT id,
                                      sum(bytes) OVER (ORDER BY id ROWS UNBOUNDED PRECEDING)
                                          - bytes AS bytes_before
                               FROM (
                                   SELECT id, octet_length(name) + octet_length(data) + ?4 AS bytes
                                   FROM items
                                   WHERE id >= ?1
                                   ORDER BY id
                                   LIMIT ?2
                               )
                           )
                           WHERE bytes_before < ?3
                       )
                   END AS end_id
            FROM bound
        )
        SELECT coalesce(
                   '[' || group_concat(
                       '[' || id || ',' || json_quote(name) || ',' || data || ',' ||
                       json_quote(status) || ',' || json_quote(created_at) || ',' ||
                       json_quote(updated_at) || ']',
                       ','
                   ) || ']',
                   '[]'
               ) AS "page!: String",
               EXISTS (
                   SELECT 1 FROM items WHERE id > (SELECT end_id FROM page_end)
               ) AS "more!: bool",
               (SELECT end_id FROM page_end) AS "end_id: i64",
               count(*) AS "rows!: i64"
        FROM (
            SELECT id, name, data, status, created_at, updated_at
            FROM items
            WHERE id >= ?1
              AND id <= (SELECT end_id FROM page_end)
            ORDER BY id
        )
        "#,
        from_id,
        limit,
        max_bytes,
        ROW_OVERHEAD_BYTES,
    )
    .fetch_one(conn)
    .await?;
    // The cursor comes from the statement, not from the decoded rows, so that the next page can
    // be read while this one is decoded.
    Ok(StreamPage {
        chunks: vec![StreamChunk::Json(row.page)],
        rows: u64::try_from(row.rows).unwrap_or_default(),
        next: row.end_id.filter(|_| row.more),
    })
}

/// The items with these ids, every page of them, in one snapshot: the first page alone when it
/// holds them all (the common case, one statement), else every page inside a read transaction.
async fn select_many(conn: &mut Conn, ids_json: &str) -> Result<Vec<Item>> {
    let first = select_many_page(conn.statements()?, ids_json, i64::MIN).await?;
    if first.next_from().is_none() {
        return Ok(first.rows);
    }
    // Several pages: read them all again under one savepoint, so they agree with each other
    // (the first page came from a snapshot that has ended). Outside a transaction SAVEPOINT
    // opens a read transaction; inside a `Tx` it nests. `sqlite()` because the statements
    // open and close a transaction: a read failing part-way leaves it to be rolled back
    // before the reader is lent again. Costs one page and two statements more, only here.
    let conn = conn.sqlite()?;
    sqlx::query!("SAVEPOINT sqlrepo_read")
        .execute(&mut *conn)
        .await?;
    let mut items = Vec::new();
    let mut from = Some(i64::MIN);
    while let Some(first_id) = from {
        let page = select_many_page(&mut *conn, ids_json, first_id).await?;
        from = page.next_from();
        items.extend(page.rows);
    }
    sqlx::query!("RELEASE sqlrepo_read")
        .execute(&mut *conn)
        .await?;
    Ok(items)
}

// The ids travel as one JSON array; `json_each` turns it into a table SQLite joins by primary
// key, so any number of ids costs one statement. The page is built and bounded by bytes as in
// `select_page`, with no row limit (the caller holds every row anyway): rows remain when the
// page ends before the last wanted id.
async fn select_many_page(
    conn: &mut SqliteConnection,
    ids_json: &str,
    from_id: i64,
) -> Result<Page<Item>> {
    let row = sqlx::query!(
        r#"
        WITH bound AS MATERIALIZED (
            SELECT max(id) AS last_id, sum(octet_length(name) + octet_length(data) + ?4) AS total_bytes
            FROM items
            WHERE id IN (SELECT value FROM json_each(?1))
              AND id >= ?2
        ),
        page_end AS MATERIALIZED (
            SELECT CASE
                       WHEN total_bytes <= ?3 THEN last_id
                       ELSE (
                           SELECT max(id)
                           FROM (
                               SELECT id,
                                      sum(bytes) OVER (ORDER BY id ROWS UNBOUNDED PRECEDING)
                                          - bytes AS bytes_before
                               FROM (
                                   SELECT id, octet_length(name) + octet_length(data) + ?4 AS bytes
                                   FROM items
                                   WHERE id IN (SELECT value FROM json_each(?1))
                                     AND id >= ?2
                               )
                           )
                           WHERE bytes_before < ?3
                       )
                   END AS end_id,
                   last_id
            FROM bound
        )
        SELECT coalesce(
                   '[' || group_concat(
                       '[' || id || ',' || json_quote(name) || ',' || data || ',' ||
                       json_quote(status) || ',' || json_quote(created_at) || ',' ||
                       json_quote(updated_at) || ']',
                       ','
                   ) || ']',
                   '[]'
               ) AS "page!: String",
               coalesce((SELECT end_id < last_id FROM page_end), 0) AS "more!: bool"
        FROM (
            SELECT id, name, data, status, created_at, updated_at
            FROM items
            WHERE id IN (SELECT value FROM json_each(?1))
              AND id >= ?2
              AND id <= (SELECT end_id FROM page_end)
            ORDER BY id
        )
        "#,
        ids_json,
        from_id,
        GET_MANY_PAGE_BYTES,
        ROW_OVERHEAD_BYTES,
    )
    .fetch_one(conn)
    .await?;
    parse_page(&row.page, row.more)
}

// A keyset page of one status, built and bounded as in `select_page`; the (status) index holds
// the rowid, so `status = ?1 AND id >= ?2` is a range of that index, and `more` one probe of it.
async fn select_status_page(
    conn: &mut SqliteConnection,
    status: ItemStatus,
    from_id: i64,
    limit: i64,
) -> Result<Page<Item>> {
    let max_bytes = MAX_PAGE_BYTES as i64;
    let row = sqlx::query!(
        r#"
        WITH bound AS MATERIALIZED (
            SELECT max(id) AS last_id, sum(bytes) AS total_bytes
            FROM (
                SELECT id, octet_length(name) + octet_length(data) + ?5 AS bytes
                FROM items
                WHERE status = ?1
                  AND id >= ?2
                ORDER BY id
                LIMIT ?3
            )
        ),
        page_end AS MATERIALIZED (
            SELECT CASE
                       WHEN total_bytes <= ?4 THEN last_id
                       ELSE (
                           SELECT max(id)
                           FROM (
                               SELECT id,
                                      sum(bytes) OVER (ORDER BY id ROWS UNBOUNDED PRECEDING)
                                          - bytes AS bytes_before
                               FROM (
                                   SELECT id, octet_length(name) + octet_length(data) + ?5 AS bytes
                                   FROM items
                                   WHERE status = ?1
                                     AND id >= ?2
                                   ORDER BY id
                                   LIMIT ?3
                               )
                           )
                           WHERE bytes_before < ?4
                       )
                   END AS end_id
            FROM bound
        )
        SELECT coalesce(
                   '[' || group_concat(
                       '[' || id || ',' || json_quote(name) || ',' || data || ',' ||
                       json_quote(status) || ',' || json_quote(created_at) || ',' ||
                       json_quote(updated_at) || ']',
                       ','
                   ) || ']',
                   '[]'
               ) AS "page!: String",
               EXISTS (
                   SELECT 1
                   FROM items
                   WHERE status = ?1
                     AND id > (SELECT end_id FROM page_end)
               ) AS "more!: bool"
        FROM (
            SELECT id, name, data, status, created_at, updated_at
            FROM items
            WHERE status = ?1
              AND id >= ?2
              AND id <= (SELECT end_id FROM page_end)
            ORDER BY id
        )
        "#,
        status,
        from_id,
        limit,
        max_bytes,
        ROW_OVERHEAD_BYTES,
    )
    .fetch_one(conn)
    .await?;
    parse_page(&row.page, row.more)
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
    let result = update_one_query(id, name, data, status)
        .execute(conn)
        .await?;
    Ok(result.rows_affected() > 0)
}

/// [`update_one`]'s statement, checked by `query!`: the worker path runs it, the direct writer
/// its text ([`GroupedUpdates::apply_one_direct`]).
fn update_one_query(
    id: i64,
    name: Option<&str>,
    data: Option<&str>,
    status: Option<ItemStatus>,
) -> sqlx::query::Query<'static, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    sqlx::query!(
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
}

// `update_one` for a group: `[[id, name, data, status], ...]` (null: keep), one row per item
// (the caller makes sure no id repeats: `UPDATE … FROM` would pick one of them). `RETURNING id`
// names the rows that really changed; read with `fetch_all`, which steps to the end, where the
// commit happens, so a failed commit is an error here.
async fn update_group(
    conn: &mut SqliteConnection,
    updates_json: &str,
) -> Result<std::collections::HashSet<i64>> {
    let ids = update_group_query(updates_json).fetch_all(conn).await?;
    Ok(ids.into_iter().collect())
}

/// [`update_group`]'s statement, checked by `query_scalar!`: the worker path runs it, the
/// direct writer its text ([`GroupedUpdates::apply_group_direct`]).
fn update_group_query(
    updates_json: &str,
) -> sqlx::query::QueryScalar<'static, sqlx::Sqlite, i64, sqlx::sqlite::SqliteArguments> {
    sqlx::query_scalar!(
        r#"
        UPDATE items
        SET name = coalesce(patch.value ->> 1, items.name),
            data = coalesce(patch.value ->> 2, items.data),
            status = coalesce(patch.value ->> 3, items.status),
            updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
        FROM jsonb_each(?1) AS patch
        WHERE items.id = patch.value ->> 0
          AND (items.name IS NOT coalesce(patch.value ->> 1, items.name)
               OR items.data IS NOT coalesce(patch.value ->> 2, items.data)
               OR items.status IS NOT coalesce(patch.value ->> 3, items.status))
        RETURNING id AS "id!: i64"
        "#,
        updates_json,
    )
}

async fn delete_one(conn: &mut SqliteConnection, id: i64) -> Result<bool> {
    let result = sqlx::query!("DELETE FROM items WHERE id = ?1", id)
        .execute(conn)
        .await?;
    Ok(result.rows_affected() > 0)
}

// The whole chunk is one bound JSON text, `[[name, data, status], ...]`, expanded by
// `jsonb_each`: one statement instead of a round trip per row. `jsonb_each` rather than
// `json_each`: each row's `value` stays SQLite's parsed (binary) form, which the three `->`/`->>`
// read directly, where `json_each` renders every row back to JSON text for each of them to
// parse again (the bench's `insert_many` row measures it). `->` keeps `data` as JSON text;
// `ORDER BY key` gives ids in slice order. A failing row aborts the statement, so the chunk is
// all or nothing.
async fn insert_batch(conn: &mut SqliteConnection, rows_json: &str) -> Result<u64> {
    let result = sqlx::query!(
        r#"
        INSERT INTO items (name, data, status)
        SELECT value ->> 0, value -> 1, value ->> 2
        FROM jsonb_each(?1)
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names_in(chunk: &str) -> Vec<String> {
        let rows: Vec<(String, Value, ItemStatus)> = serde_json::from_str(chunk).unwrap();
        rows.into_iter().map(|(name, ..)| name).collect()
    }

    fn ten_items() -> Vec<NewItem> {
        (0..10)
            .map(|i| NewItem::new(format!("n{i}"), json!("x".repeat(100))))
            .collect()
    }

    #[test]
    fn chunks_close_at_their_row_limit() {
        let chunks = batch_chunks(&ten_items(), 4, usize::MAX).unwrap();
        let sizes: Vec<usize> = chunks.iter().map(|c| names_in(c).len()).collect();
        assert_eq!(sizes, [4, 4, 2]);
    }

    #[test]
    fn chunks_close_before_their_byte_budget_and_keep_the_slice_order() {
        let chunks = batch_chunks(&ten_items(), 1_000, 300).unwrap();
        assert!(chunks.len() > 1);
        assert!(chunks.iter().all(|c| c.len() <= 300), "{chunks:?}");
        let names: Vec<String> = chunks.iter().flat_map(|c| names_in(c)).collect();
        assert_eq!(names, (0..10).map(|i| format!("n{i}")).collect::<Vec<_>>());
    }

    #[test]
    fn a_row_bigger_than_the_byte_budget_is_a_chunk_of_its_own() {
        let chunks = batch_chunks(&ten_items(), 1_000, 10).unwrap();
        assert_eq!(chunks.len(), 10);
    }

    #[test]
    fn data_is_measured_alone_against_the_size_limit() {
        // A long name and the status do not count: data of exactly MAX_DATA_BYTES passes.
        let at_limit = json!("x".repeat(crate::limits::MAX_DATA_BYTES - 2));
        let item = NewItem::new("n".repeat(256), at_limit);
        assert!(batch_chunks(&[item], 10, usize::MAX).is_ok());
    }
}
