//! The `orders` table: its data types, [`OrderRepo`], and all of its SQL.

use std::future::Future;

use futures_core::Stream;
use serde::{Deserialize, Serialize};
use sqlx::SqliteConnection;
use time::OffsetDateTime;

use super::paging::{self, Keyed};
use crate::conn::{Backend, Handle};
use crate::error::{Error, Result};
use crate::kit::{self, direct_column, json_rows};
use crate::trace::{Rows, traced};

#[cfg(feature = "postgres")]
mod postgres;

/// A stored order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Row id.
    pub id: i64,
    /// The user who placed it.
    pub user_id: i64,
    /// Order total in cents (`orders.total`).
    pub total_cents: i64,
    /// When the row was inserted (UTC, millisecond precision).
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// An order to insert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewOrder {
    /// An existing user.
    pub user_id: i64,
    /// Total in cents, zero or more.
    pub total_cents: i64,
}

impl NewOrder {
    /// An order of `total_cents` for `user_id`.
    pub fn new(user_id: i64, total_cents: i64) -> Self {
        NewOrder {
            user_id,
            total_cents,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.total_cents < 0 {
            return Err(Error::invalid(format!(
                "an order total cannot be negative ({} cents)",
                self.total_cents
            )));
        }
        Ok(())
    }
}

/// A partial update of an order: `None` fields keep their stored value.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OrderPatch {
    /// Another existing user the order now belongs to.
    pub user_id: Option<i64>,
    /// A new total in cents, zero or more.
    pub total_cents: Option<i64>,
}

impl OrderPatch {
    /// Whether the patch changes nothing (every field `None`).
    pub fn is_empty(&self) -> bool {
        self.user_id.is_none() && self.total_cents.is_none()
    }

    fn validate(&self) -> Result<()> {
        match self.total_cents {
            Some(total) if total < 0 => Err(Error::invalid(format!(
                "an order total cannot be negative ({total} cents)"
            ))),
            _ => Ok(()),
        }
    }
}

impl Keyed for Order {
    fn key(&self) -> i64 {
        self.id
    }
}

/// How many orders a user has and what they add up to; zeros for a user with none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OrderStats {
    /// Number of orders.
    pub count: i64,
    /// Sum of their totals in cents.
    pub total_cents: i64,
}

impl Rows for OrderStats {
    fn rows(&self) -> u64 {
        1
    }
}

/// Orders: checked CRUD, newest-first listing, per-user stats and a one-statement batch.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> sqlrepo::Result<()> {
/// use sqlrepo::{Db, NewOrder, NewUser};
/// let db = Db::in_memory().await?;
/// let ann = db.users().create(&NewUser::new("ann@example.com", "Ann")).await?;
/// db.orders().insert_many(&[NewOrder::new(ann, 500), NewOrder::new(ann, 250)]).await?;
/// let stats = db.orders().stats_for_user(ann).await?;
/// assert_eq!((stats.count, stats.total_cents), (2, 750));
/// assert_eq!(db.orders().recent_for_user(ann, 1).await?[0].total_cents, 250);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct OrderRepo {
    handle: Handle,
}

impl OrderRepo {
    /// The repository on `handle`: a [`Db`](crate::Db)\'s, a [`Tx`](crate::Tx)\'s, or any
    /// [`Handle`] a service holds.
    pub fn new(handle: Handle) -> Self {
        OrderRepo { handle }
    }

    /// Inserts an order and returns its id.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a negative total; [`Error::ForeignKey`] for an unknown user.
    pub fn create(&self, new: &NewOrder) -> impl Future<Output = Result<i64>> + Send + use<> {
        let handle = self.handle.clone();
        let order = new.validate().map(|()| new.clone());
        traced("orders", "create", async move {
            let order = order?;
            let mut conn = handle.writer().await?;
            match conn.backend()? {
                Backend::Sqlite(c) => insert_one(c, order.user_id, order.total_cents).await,
                #[cfg(feature = "postgres")]
                Backend::Postgres(c) => {
                    postgres::insert_one(c, order.user_id, order.total_cents).await
                }
            }
        })
    }

    /// The order with this id, or `None`.
    ///
    /// # Errors
    /// [`Error::Schema`] when migrations have not run.
    pub fn get(&self, id: i64) -> impl Future<Output = Result<Option<Order>>> + Send + use<> {
        let handle = self.handle.clone();
        traced("orders", "get", async move {
            let direct = handle.read_direct(|conn| select_one_direct(conn, id)).await;
            if let Some(found) = direct {
                return Ok(found);
            }
            handle
                .read(|mut conn| async move {
                    match conn.backend()? {
                        Backend::Sqlite(c) => select_one(c, id).await,
                        #[cfg(feature = "postgres")]
                        Backend::Postgres(c) => postgres::select_one(c, id).await,
                    }
                })
                .await
        })
    }

    /// The orders with these ids, in id order; unknown ids are skipped and repeated ids given
    /// once. One statement (the ids travel as one JSON array), so one consistent read.
    ///
    /// # Errors
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) for more than
    /// [`MAX_BATCH_ROWS`](crate::limits::MAX_BATCH_ROWS) ids, before the database is touched;
    /// [`Error::Schema`](crate::Error::Schema) when migrations have not run.
    pub fn get_many(&self, ids: &[i64]) -> impl Future<Output = Result<Vec<Order>>> + Send + use<> {
        let handle = self.handle.clone();
        let ids = crate::kit::check_batch("get_many", ids.len()).map(|()| ids.to_vec());
        traced("orders", "get_many", async move {
            let ids = ids?;
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let ids = &ids;
            handle
                .read(|mut conn| async move {
                    match conn.backend()? {
                        Backend::Sqlite(c) => select_many(c, &crate::kit::json_text(ids)?).await,
                        #[cfg(feature = "postgres")]
                        Backend::Postgres(c) => postgres::select_many(c, ids).await,
                    }
                })
                .await
        })
    }

    /// How many orders there are.
    ///
    /// # Errors
    /// [`Error::Schema`](crate::Error::Schema) when migrations have not run.
    pub fn count(&self) -> impl Future<Output = Result<i64>> + Send + use<> {
        let handle = self.handle.clone();
        traced("orders", "count", async move {
            handle
                .read(|mut conn| async move {
                    match conn.backend()? {
                        Backend::Sqlite(c) => count(c).await,
                        #[cfg(feature = "postgres")]
                        Backend::Postgres(c) => postgres::count(c).await,
                    }
                })
                .await
        })
    }

    /// A user's newest `limit` orders, newest first; ties on `created_at` go to the higher id
    /// (the order inserted last comes first).
    ///
    /// # Errors
    /// [`Error::Schema`] when migrations have not run.
    pub fn recent_for_user(
        &self,
        user_id: i64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Order>>> + Send + use<> {
        let handle = self.handle.clone();
        traced("orders", "recent_for_user", async move {
            let limit = i64::from(limit);
            handle
                .read(|mut conn| async move {
                    match conn.backend()? {
                        Backend::Sqlite(c) => select_recent(c, user_id, limit).await,
                        #[cfg(feature = "postgres")]
                        Backend::Postgres(c) => postgres::select_recent(c, user_id, limit).await,
                    }
                })
                .await
        })
    }

    /// How many orders a user has and their sum; zeros (never NULL) for a user with none.
    ///
    /// # Errors
    /// [`Error::Overflow`] if the stored totals add up past `i64` (legal data, not the
    /// caller's fault).
    pub fn stats_for_user(
        &self,
        user_id: i64,
    ) -> impl Future<Output = Result<OrderStats>> + Send + use<> {
        let handle = self.handle.clone();
        traced("orders", "stats_for_user", async move {
            handle
                .read(|mut conn| async move {
                    match conn.backend()? {
                        Backend::Sqlite(c) => select_stats(c, user_id).await,
                        #[cfg(feature = "postgres")]
                        Backend::Postgres(c) => postgres::select_stats(c, user_id).await,
                    }
                })
                .await
        })
    }

    /// Applies a patch; `true` when the order existed and a value really changed (an empty
    /// patch, or one that repeats the stored values, is `Ok(false)` and writes nothing).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> sqlrepo::Result<()> {
    /// use sqlrepo::{Db, NewOrder, NewUser, OrderPatch};
    /// let db = Db::in_memory().await?;
    /// let ann = db.users().create(&NewUser::new("ann@example.com", "Ann")).await?;
    /// let id = db.orders().create(&NewOrder::new(ann, 500)).await?;
    /// let patch = OrderPatch { total_cents: Some(450), ..OrderPatch::default() };
    /// assert!(db.orders().update(id, &patch).await?);
    /// assert!(!db.orders().update(id, &patch).await?); // already 450
    /// assert_eq!(db.orders().get(id).await?.unwrap().total_cents, 450);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a negative total (before the database is touched);
    /// [`Error::ForeignKey`] when the new user does not exist. Nothing changes either way.
    pub fn update(
        &self,
        id: i64,
        patch: &OrderPatch,
    ) -> impl Future<Output = Result<bool>> + Send + use<> {
        let handle = self.handle.clone();
        let patch = patch.validate().map(|()| patch.clone());
        traced("orders", "update", async move {
            let patch = patch?;
            if patch.is_empty() {
                return Ok(false);
            }
            let mut conn = handle.writer().await?;
            let (user_id, total) = (patch.user_id, patch.total_cents);
            match conn.backend()? {
                Backend::Sqlite(c) => update_one(c, id, user_id, total).await,
                #[cfg(feature = "postgres")]
                Backend::Postgres(c) => postgres::update_one(c, id, user_id, total).await,
            }
        })
    }

    /// Every order in id order, in keyset pages, with memory that does not grow with the table.
    pub fn stream(&self) -> impl Stream<Item = Result<Order>> + Send + use<> {
        paging::by_rows(
            self.handle.clone(),
            "orders",
            |mut conn, from, limit| async move {
                match conn.backend()? {
                    Backend::Sqlite(c) => select_page(c, from, limit).await,
                    #[cfg(feature = "postgres")]
                    Backend::Postgres(c) => postgres::select_page(c, from, limit).await,
                }
            },
        )
    }

    /// Deletes an order; `true` when it existed.
    ///
    /// # Errors
    /// [`Error::Busy`] when locked.
    pub fn delete(&self, id: i64) -> impl Future<Output = Result<bool>> + Send + use<> {
        let handle = self.handle.clone();
        traced("orders", "delete", async move {
            let mut conn = handle.writer().await?;
            match conn.backend()? {
                Backend::Sqlite(c) => delete_one(c, id).await,
                #[cfg(feature = "postgres")]
                Backend::Postgres(c) => postgres::delete_one(c, id).await,
            }
        })
    }

    /// Inserts every order in one statement, all or nothing; returns the rows inserted.
    /// At most [`MAX_BATCH_ROWS`](crate::limits::MAX_BATCH_ROWS) per call; `&[]` is `Ok(0)`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a negative total (naming its position) or an oversized batch;
    /// [`Error::ForeignKey`] when any user does not exist. Nothing is written either way.
    pub fn insert_many(
        &self,
        orders: &[NewOrder],
    ) -> impl Future<Output = Result<u64>> + Send + use<> {
        let handle = self.handle.clone();
        let rows = batch_text(orders);
        traced("orders", "insert_many", async move {
            let Some(rows) = rows? else {
                return Ok(0);
            };
            let mut conn = handle.writer().await?;
            match conn.backend()? {
                Backend::Sqlite(c) => insert_batch(c, &rows).await,
                #[cfg(feature = "postgres")]
                Backend::Postgres(c) => postgres::insert_batch(c, &rows).await,
            }
        })
    }
}

/// The orders as the JSON array `insert_batch` reads, `[[user_id, total], ...]`; `None` for
/// none.
fn batch_text(orders: &[NewOrder]) -> Result<Option<String>> {
    json_rows("order", orders, NewOrder::validate, |o| {
        (o.user_id, o.total_cents)
    })
}

async fn insert_one(conn: &mut SqliteConnection, user_id: i64, total_cents: i64) -> Result<i64> {
    // `execute` steps the statement to its end, where an autocommit write commits, so a
    // failed commit (a full disk, a lock) is an error here. `INSERT … RETURNING` read with
    // `fetch_one` stops after the row and sqlx drops the commit's result at the reset.
    let result = sqlx::query!(
        r#"
        INSERT INTO orders (user_id, total)
        VALUES (?1, ?2)
        "#,
        user_id,
        total_cents,
    )
    .execute(conn)
    .await?;
    Ok(result.last_insert_rowid())
}

/// The point get, checked by `query_as!`: the worker-thread path runs it, the direct path
/// ([`select_one_direct`]) runs its text.
fn select_one_query(
    id: i64,
) -> sqlx::query::Map<
    'static,
    sqlx::Sqlite,
    impl FnMut(sqlx::sqlite::SqliteRow) -> sqlx::Result<Order> + Send,
    sqlx::sqlite::SqliteArguments,
> {
    sqlx::query_as!(
        Order,
        r#"
        SELECT id AS "id!: i64",
               user_id,
               total AS total_cents,
               created_at AS "created_at: OffsetDateTime"
        FROM orders
        WHERE id = ?1
        "#,
        id,
    )
}

async fn select_one(conn: &mut SqliteConnection, id: i64) -> Result<Option<Order>> {
    Ok(select_one_query(id).fetch_optional(conn).await?)
}

/// [`select_one_query`] on a direct reader (see [`Handle::read_direct`]): `Some` only for a clean
/// answer, each column read as the checked query reads it; `None` sends the caller to the
/// ordinary read, whose answer or error stands.
fn select_one_direct(conn: &kit::Connection, id: i64) -> Option<Option<Order>> {
    static SQL: std::sync::LazyLock<sqlx::SqlStr> =
        std::sync::LazyLock::new(|| sqlx::Execute::sql(select_one_query(0)));
    kit::direct_get(conn, SQL.as_str(), id, |row| {
        Some(Order {
            id: direct_column(row, 0)?,
            user_id: direct_column(row, 1)?,
            total_cents: direct_column(row, 2)?,
            created_at: direct_column(row, 3)?,
        })
    })
}

// Served by the index on (user_id, created_at, total), newest first.
async fn select_recent(
    conn: &mut SqliteConnection,
    user_id: i64,
    limit: i64,
) -> Result<Vec<Order>> {
    Ok(sqlx::query_as!(
        Order,
        r#"
        SELECT id AS "id!: i64",
               user_id,
               total AS total_cents,
               created_at AS "created_at: OffsetDateTime"
        FROM orders
        WHERE user_id = ?1
        ORDER BY created_at DESC, id DESC
        LIMIT ?2
        "#,
        user_id,
        limit,
    )
    .fetch_all(conn)
    .await?)
}

async fn select_stats(conn: &mut SqliteConnection, user_id: i64) -> Result<OrderStats> {
    Ok(sqlx::query_as!(
        OrderStats,
        r#"
        SELECT count(*) AS "count!: i64",
               coalesce(sum(total), 0) AS "total_cents!: i64"
        FROM orders
        WHERE user_id = ?1
        "#,
        user_id,
    )
    .fetch_one(conn)
    .await?)
}

// `IS NOT` (NULL-safe) makes the row match only when a value really differs.
async fn update_one(
    conn: &mut SqliteConnection,
    id: i64,
    user_id: Option<i64>,
    total_cents: Option<i64>,
) -> Result<bool> {
    let result = sqlx::query!(
        r#"
        UPDATE orders
        SET user_id = coalesce(?2, user_id),
            total = coalesce(?3, total)
        WHERE id = ?1
          AND (user_id IS NOT coalesce(?2, user_id)
               OR total IS NOT coalesce(?3, total))
        "#,
        id,
        user_id,
        total_cents,
    )
    .execute(conn)
    .await?;
    Ok(result.rows_affected() > 0)
}

async fn select_page(conn: &mut SqliteConnection, from_id: i64, limit: i64) -> Result<Vec<Order>> {
    Ok(sqlx::query_as!(
        Order,
        r#"
        SELECT id AS "id!: i64",
               user_id,
               total AS total_cents,
               created_at AS "created_at: OffsetDateTime"
        FROM orders
        WHERE id >= ?1
        ORDER BY id
        LIMIT ?2
        "#,
        from_id,
        limit,
    )
    .fetch_all(conn)
    .await?)
}

async fn delete_one(conn: &mut SqliteConnection, id: i64) -> Result<bool> {
    let result = sqlx::query!("DELETE FROM orders WHERE id = ?1", id)
        .execute(conn)
        .await?;
    Ok(result.rows_affected() > 0)
}

// One JSON array `[[user_id, total], ...]` expanded by `jsonb_each` (each row's `value` kept in
// SQLite's parsed form for the `->>` to read, as items' `insert_batch` explains): one statement
// for the batch, atomic by itself (an unknown user fails the foreign key at the end of the
// statement).
async fn insert_batch(conn: &mut SqliteConnection, rows_json: &str) -> Result<u64> {
    let result = sqlx::query!(
        r#"
        INSERT INTO orders (user_id, total)
        SELECT value ->> 0, value ->> 1
        FROM jsonb_each(?1)
        ORDER BY key
        "#,
        rows_json,
    )
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}

// `json_each` reads the ids of one JSON array: one statement however many ids, each a probe of
// the primary key.
async fn select_many(conn: &mut SqliteConnection, ids_json: &str) -> Result<Vec<Order>> {
    Ok(sqlx::query_as!(
        Order,
        r#"
        SELECT id AS "id!: i64",
               user_id,
               total AS total_cents,
               created_at AS "created_at: OffsetDateTime"
        FROM orders
        WHERE id IN (SELECT value FROM json_each(?1))
        ORDER BY id
        "#,
        ids_json,
    )
    .fetch_all(conn)
    .await?)
}

async fn count(conn: &mut SqliteConnection) -> Result<i64> {
    Ok(
        sqlx::query_scalar!(r#"SELECT count(*) AS "count!: i64" FROM orders"#)
            .fetch_one(conn)
            .await?,
    )
}
