//! The service's own table, `shipments`: its migrations, its data types, [`ShipmentRepo`] and
//! all of its SQL. It sits beside sqlrepo's tables in the same file and runs on sqlrepo's
//! connections: on a [`Db`](sqlrepo::Db)'s [`Handle`](sqlrepo::Handle) its writes queue with sqlrepo's own, and
//! on a [`Tx`](sqlrepo::Tx)'s it commits or rolls back with the built-in repositories.
//!
//! The repository is derived: `#[derive(sqlrepo::Table)]` on [`Shipment`] generates
//! [`NewShipment`], [`ShipmentPatch`] and [`ShipmentRepo`] with `create`, `get`, `get_many`,
//! `update`, `delete`, `count`, `insert_many`, `page` and `stream`, in sqlrepo's shape: every
//! method validates its arguments when it is called and returns a future that owns them (so
//! `tokio::spawn(shipments.create(&new))` compiles), every call is a `sqlrepo` tracing span,
//! `insert_many` is one `json_each` statement per byte-bounded chunk inside one all-or-nothing
//! unit, and `created_at` follows sqlrepo's timestamp convention. [`ShipmentRepo::for_order`]
//! is written by hand beside them, with sqlrepo's kit ([`sqlrepo::kit`]), as a service adds
//! its own queries.
//!
//! Every statement, generated or not, is a `query!` checked at compile time against a
//! development database that holds sqlrepo's schema and this crate's (a shipment references
//! sqlrepo's `orders`); see the README, "Your own tables", and the guide's own_tables chapter.

use std::future::Future;

use serde::{Deserialize, Serialize};
use sqlrepo::{Error, Result, kit};
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlrepo::Table)]
#[table(
    name = "shipments",
    validate = NewShipment::validate,
    new_derive(Serialize, Deserialize)
)]
pub struct Shipment {
    /// The shipment's id.
    pub id: i64,
    /// The order shipped (sqlrepo's `orders.id`); an order ships once.
    pub order_id: i64,
    /// Where it goes: not blank, at most [`MAX_ADDRESS_BYTES`].
    pub address: String,
    /// When it was recorded (UTC, millisecond precision), written by the repository's
    /// statements.
    #[serde(with = "time::serde::rfc3339")]
    #[table(created_at)]
    pub created_at: OffsetDateTime,
}

impl NewShipment {
    /// Refuses what the table's `CHECK` would, before the database is touched, with a
    /// sentence: `create` and `insert_many` call it (`#[table(validate = …)]`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a blank or over-long address.
    pub fn validate(&self) -> Result<()> {
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

impl ShipmentRepo {
    /// The shipment of this order, or `None`: a query of the service's own beside the derived
    /// ones, built with the kit.
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
            // `created_at!`: the column is nullable to SQLite (it was added to an existing
            // table, which allows no default of "now"), and its triggers refuse to leave it
            // NULL.
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
            .fetch_optional(conn.statements()?)
            .await?;
            Ok(shipment)
        })
    }
}
