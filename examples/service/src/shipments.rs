//! The service's own table, `shipments`: its migrations, its data types, [`ShipmentRepo`] and
//! all of its SQL. It sits beside sqlrepo's tables in the same file and runs on sqlrepo's
//! connections: on a [`Db`](sqlrepo::Db)'s [`Handle`] its writes queue with sqlrepo's own, and
//! on a [`Tx`](sqlrepo::Tx)'s it commits or rolls back with the built-in repositories.
//!
//! It is built with sqlrepo's kit ([`sqlrepo::kit`]), as sqlrepo's own repositories are: every
//! method validates its arguments when it is called and returns a future that owns them (so
//! `tokio::spawn(shipments.create(&new))` compiles), every call is a `sqlrepo` tracing span,
//! `insert_many` is one `json_each` statement per byte-bounded chunk inside one all-or-nothing
//! unit, and `created_at` follows sqlrepo's timestamp convention.
//!
//! Its statements are `query!`s checked at compile time against a development database that
//! holds sqlrepo's schema and this crate's (a shipment references sqlrepo's `orders`); see the
//! README, "Your own tables", and the guide's own_tables chapter.

use std::future::Future;

use serde::{Deserialize, Serialize};
use sqlrepo::{Error, Handle, Result, kit};
use sqlx::SqliteConnection;
use time::OffsetDateTime;

/// The longest shipping address accepted, in bytes (the table's `CHECK` says the same).
pub const MAX_ADDRESS_BYTES: usize = 512;

/// The service's migrations (this crate's `migrations/`), recorded in sqlx's default
/// bookkeeping table `_sqlx_migrations`; sqlrepo records its own in `_sqlrepo_migrations`, so
/// neither migrator refuses the other's versions. Apply them with
/// [`Db::run_migrations`](sqlrepo::Db::run_migrations) after `Db::open` (which applies
/// sqlrepo's), since shipments reference sqlrepo's `orders`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// A shipment: an order on its way to an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shipment {
    /// The shipment's id.
    pub id: i64,
    /// The order shipped (sqlrepo's `orders.id`); an order ships once.
    pub order_id: i64,
    /// Where it goes.
    pub address: String,
    /// When it was recorded (UTC, millisecond precision).
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// What [`ShipmentRepo::create`] needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewShipment {
    /// The order to ship; it must exist.
    pub order_id: i64,
    /// Where it goes: not blank, at most [`MAX_ADDRESS_BYTES`].
    pub address: String,
}

impl NewShipment {
    /// A shipment of `order_id` to `address`.
    pub fn new(order_id: i64, address: impl Into<String>) -> Self {
        NewShipment {
            order_id,
            address: address.into(),
        }
    }

    /// Refuses what the table's `CHECK` would, before the database is touched, with a sentence.
    fn validate(&self) -> Result<()> {
        if self.address.trim().is_empty() {
            return Err(Error::InvalidInput(
                "a shipping address must not be blank".to_owned(),
            ));
        }
        if self.address.len() > MAX_ADDRESS_BYTES {
            return Err(Error::InvalidInput(format!(
                "a shipping address is at most {MAX_ADDRESS_BYTES} bytes, not {}",
                self.address.len()
            )));
        }
        Ok(())
    }
}

/// The `shipments` repository, the same shape as sqlrepo's own: a [`Handle`] and checked
/// statements, so it works on [`Db::handle`](sqlrepo::Db::handle) and on
/// [`Tx::handle`](sqlrepo::Tx::handle) alike.
#[derive(Clone, Debug)]
pub struct ShipmentRepo {
    handle: Handle,
}

impl ShipmentRepo {
    /// The repository on `handle`: a [`Db`](sqlrepo::Db)'s, or a [`Tx`](sqlrepo::Tx)'s to
    /// write inside that transaction.
    pub fn new(handle: Handle) -> Self {
        ShipmentRepo { handle }
    }

    /// Records a shipment and returns its id.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a blank or over-long address (nothing is written);
    /// [`Error::ForeignKey`] when the order does not exist; [`Error::Duplicate`]
    /// (`shipments.order_id`) when the order already has a shipment.
    pub fn create(&self, new: &NewShipment) -> impl Future<Output = Result<i64>> + Send + use<> {
        let handle = self.handle.clone();
        // Validated and copied now, so the future owns what it needs and bad input is refused
        // before the database is touched.
        let row = new.validate().map(|()| (new.order_id, new.address.clone()));
        kit::traced("shipments", "create", async move {
            let (order_id, address) = row?;
            let mut conn = handle.writer().await?;
            insert(conn.statements()?, order_id, &address).await
        })
    }

    /// Records every shipment, all or nothing, and returns how many were written (ids follow
    /// the slice order). `&[]` is `Ok(0)`; at most
    /// [`MAX_BATCH_ROWS`](sqlrepo::limits::MAX_BATCH_ROWS) per call.
    ///
    /// One statement per chunk of at most [`MAX_CHUNK_ROWS`](sqlrepo::limits::MAX_CHUNK_ROWS)
    /// rows and [`MAX_CHUNK_BYTES`](sqlrepo::limits::MAX_CHUNK_BYTES) of JSON; several chunks
    /// run in one unit (a transaction, or a savepoint inside a `Tx`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an invalid shipment (naming its position, `shipment 3: …`)
    /// or an oversized batch; [`Error::ForeignKey`] when any order does not exist;
    /// [`Error::Duplicate`] (`shipments.order_id`) when any order already has a shipment or
    /// appears twice. Nothing is written either way.
    pub fn insert_many(
        &self,
        shipments: &[NewShipment],
    ) -> impl Future<Output = Result<u64>> + Send + use<> {
        let handle = self.handle.clone();
        let chunks = kit::json_chunks("shipment", shipments, NewShipment::validate, |s| {
            (s.order_id, &*s.address)
        });
        kit::traced("shipments", "insert_many", async move {
            let chunks = chunks?;
            if chunks.is_empty() {
                return Ok(0);
            }
            let mut conn = handle.writer().await?;
            kit::write_chunks(&mut conn, &chunks, |sqlite, rows| {
                Box::pin(insert_batch(sqlite, rows))
            })
            .await
        })
    }

    /// The shipment with this id, or `None`.
    ///
    /// # Errors
    /// [`Error::Schema`] when the service's migrations have not run.
    pub fn get(&self, id: i64) -> impl Future<Output = Result<Option<Shipment>>> + Send + use<> {
        let handle = self.handle.clone();
        kit::traced("shipments", "get", async move {
            let mut conn = handle.reader().await?;
            select_one(conn.statements()?, id).await
        })
    }

    /// The shipment of this order, or `None`.
    ///
    /// # Errors
    /// [`Error::Schema`] when the service's migrations have not run.
    pub fn for_order(
        &self,
        order_id: i64,
    ) -> impl Future<Output = Result<Option<Shipment>>> + Send + use<> {
        let handle = self.handle.clone();
        kit::traced("shipments", "for_order", async move {
            let mut conn = handle.reader().await?;
            select_for_order(conn.statements()?, order_id).await
        })
    }

    /// How many shipments there are.
    ///
    /// # Errors
    /// [`Error::Schema`] when the service's migrations have not run.
    pub fn count(&self) -> impl Future<Output = Result<i64>> + Send + use<> {
        let handle = self.handle.clone();
        kit::traced("shipments", "count", async move {
            let mut conn = handle.reader().await?;
            count(conn.statements()?).await
        })
    }
}

// `execute` steps the statement to its end, where this autocommit write commits: a failed
// commit (a full disk, a lock) is the caller's error. (`INSERT … RETURNING` read with
// `fetch_one` would stop after the row, and sqlx drops the commit's result at the reset.)
// `created_at` is written here, in the canonical form, because the column has no default (see
// the migration `20261204000001_shipments_created_at`): the trigger then has nothing to do.
async fn insert(conn: &mut SqliteConnection, order_id: i64, address: &str) -> Result<i64> {
    let done = sqlx::query!(
        r#"
        INSERT INTO shipments (order_id, address, created_at)
        VALUES (?1, ?2, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        "#,
        order_id,
        address
    )
    .execute(conn)
    .await?;
    Ok(done.last_insert_rowid())
}

// One JSON array `[[order_id, address], ...]` expanded by `json_each`: one statement for the
// chunk, atomic by itself (one round trip, however many rows); `ORDER BY key` gives ids in
// slice order. `created_at` as in `insert`.
async fn insert_batch(conn: &mut SqliteConnection, rows_json: &str) -> Result<u64> {
    let done = sqlx::query!(
        r#"
        INSERT INTO shipments (order_id, address, created_at)
        SELECT value ->> 0, value ->> 1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
        FROM json_each(?1)
        ORDER BY key
        "#,
        rows_json
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

// `created_at!`: the column is nullable to SQLite (it was added to an existing table, which
// allows no default of "now"), and its triggers refuse to leave it NULL.
async fn select_one(conn: &mut SqliteConnection, id: i64) -> Result<Option<Shipment>> {
    let shipment = sqlx::query_as!(
        Shipment,
        r#"
        SELECT id AS "id!: i64",
               order_id,
               address,
               created_at AS "created_at!: OffsetDateTime"
        FROM shipments
        WHERE id = ?1
        "#,
        id
    )
    .fetch_optional(conn)
    .await?;
    Ok(shipment)
}

async fn select_for_order(conn: &mut SqliteConnection, order_id: i64) -> Result<Option<Shipment>> {
    let shipment = sqlx::query_as!(
        Shipment,
        r#"
        SELECT id AS "id!: i64",
               order_id,
               address,
               created_at AS "created_at!: OffsetDateTime"
        FROM shipments
        WHERE order_id = ?1
        "#,
        order_id
    )
    .fetch_optional(conn)
    .await?;
    Ok(shipment)
}

async fn count(conn: &mut SqliteConnection) -> Result<i64> {
    let count = sqlx::query_scalar!(
        r#"
        SELECT COUNT(*) AS "count!: i64"
        FROM shipments
        "#
    )
    .fetch_one(conn)
    .await?;
    Ok(count)
}
