//! The service's own table, `shipments`: its migrations, its data types, [`ShipmentRepo`] and
//! all of its SQL. It sits beside sqlrepo's tables in the same file and runs on sqlrepo's
//! connections: on a [`Db`]'s [`Handle`] its writes queue with sqlrepo's own, and on a
//! [`Tx`](sqlrepo::Tx)'s it commits or rolls back with the built-in repositories.
//!
//! Its statements are `query!`s checked at compile time against a development database that
//! holds sqlrepo's schema and this crate's (a shipment references sqlrepo's `orders`); see the
//! README, "Your own tables", and the guide's own_tables chapter.

use serde::{Deserialize, Serialize};
use sqlrepo::{Db, Error, Handle, Result};
use sqlx::SqliteConnection;

/// The longest shipping address accepted, in bytes (the table's `CHECK` says the same).
pub const MAX_ADDRESS_BYTES: usize = 512;

/// The service's migrations (this crate's `migrations/`), recorded in sqlx's default
/// bookkeeping table `_sqlx_migrations`; sqlrepo records its own in `_sqlrepo_migrations`, so
/// neither migrator refuses the other's versions.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Applies the service's migrations on the database's writer. Run it after
/// [`Db::open`] (which applies sqlrepo's), since shipments reference sqlrepo's `orders`;
/// running it again applies nothing.
///
/// # Errors
/// [`Error::Schema`] when the file holds a migration of the service that this build does not
/// know, or one that was edited; [`Error::Busy`] when another process holds the write lock.
pub async fn migrate(db: &Db) -> Result<()> {
    let mut conn = db.handle().writer().await?;
    // `sqlite()`, not `statements()`: the migrator begins and commits transactions of its own,
    // and one it leaves open (a failed migration) is rolled back before the writer is lent again.
    MIGRATOR.run(conn.sqlite()?).await?;
    Ok(())
}

/// A shipment: an order on its way to an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shipment {
    /// The shipment's id.
    pub id: i64,
    /// The order shipped (sqlrepo's `orders.id`); an order ships once.
    pub order_id: i64,
    /// Where it goes.
    pub address: String,
}

/// What [`ShipmentRepo::create`] needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewShipment {
    /// The order to ship; it must exist.
    pub order_id: i64,
    /// Where it goes: not blank, at most [`MAX_ADDRESS_BYTES`].
    pub address: String,
}

/// The `shipments` repository, the same shape as sqlrepo's own: a [`Handle`] and checked
/// statements, so it works on [`Db::handle`] and on [`Tx::handle`](sqlrepo::Tx::handle) alike.
#[derive(Clone, Debug)]
pub struct ShipmentRepo {
    handle: Handle,
}

impl ShipmentRepo {
    /// The repository on `handle`: a [`Db`]'s, or a [`Tx`](sqlrepo::Tx)'s to write inside
    /// that transaction.
    pub fn new(handle: Handle) -> Self {
        ShipmentRepo { handle }
    }

    /// Records a shipment and returns its id.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a blank or over-long address (nothing is written);
    /// [`Error::ForeignKey`] when the order does not exist; [`Error::Duplicate`]
    /// (`shipments.order_id`) when the order already has a shipment.
    pub async fn create(&self, new: &NewShipment) -> Result<i64> {
        check_address(&new.address)?;
        let mut conn = self.handle.writer().await?;
        insert(conn.statements()?, new.order_id, &new.address).await
    }

    /// The shipment with this id, or `None`.
    ///
    /// # Errors
    /// [`Error::Schema`] when the service's migrations have not run.
    pub async fn get(&self, id: i64) -> Result<Option<Shipment>> {
        let mut conn = self.handle.reader().await?;
        select_one(conn.statements()?, id).await
    }

    /// The shipment of this order, or `None`.
    ///
    /// # Errors
    /// [`Error::Schema`] when the service's migrations have not run.
    pub async fn for_order(&self, order_id: i64) -> Result<Option<Shipment>> {
        let mut conn = self.handle.reader().await?;
        select_for_order(conn.statements()?, order_id).await
    }

    /// How many shipments there are.
    ///
    /// # Errors
    /// [`Error::Schema`] when the service's migrations have not run.
    pub async fn count(&self) -> Result<i64> {
        let mut conn = self.handle.reader().await?;
        count(conn.statements()?).await
    }
}

/// Refuses what the table's `CHECK` would, before the database is touched, with a sentence.
fn check_address(address: &str) -> Result<()> {
    if address.trim().is_empty() {
        return Err(Error::InvalidInput(
            "a shipping address must not be blank".to_owned(),
        ));
    }
    if address.len() > MAX_ADDRESS_BYTES {
        return Err(Error::InvalidInput(format!(
            "a shipping address is at most {MAX_ADDRESS_BYTES} bytes, not {}",
            address.len()
        )));
    }
    Ok(())
}

// `execute` steps the statement to its end, where this autocommit write commits: a failed
// commit (a full disk, a lock) is the caller's error. (`INSERT … RETURNING` read with
// `fetch_one` would stop after the row, and sqlx drops the commit's result at the reset.)
async fn insert(conn: &mut SqliteConnection, order_id: i64, address: &str) -> Result<i64> {
    let done = sqlx::query!(
        r#"
        INSERT INTO shipments (order_id, address)
        VALUES (?1, ?2)
        "#,
        order_id,
        address
    )
    .execute(conn)
    .await?;
    Ok(done.last_insert_rowid())
}

async fn select_one(conn: &mut SqliteConnection, id: i64) -> Result<Option<Shipment>> {
    let shipment = sqlx::query_as!(
        Shipment,
        r#"
        SELECT id AS "id!: i64", order_id, address
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
        SELECT id AS "id!: i64", order_id, address
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
