//! sqlrepo: a compile-time-checked repository layer for SQLite services, built on sqlx, that
//! moves to PostgreSQL (with read replicas) by changing a URL.
//!
//! Open a [`Db`] on a file (migrations run on open), take a repository per table from it, and
//! call typed methods; every SQL statement behind them is checked against the schema at compile
//! time, and every error comes back as an [`Error`] variant you can match on.
//!
//! With the cargo feature `postgres`, [`Db::connect`] opens `postgres://…` URLs too, and
//! [`Db::connect_replicated`] a primary with streaming replicas: the same repositories, the
//! same [`Tx`], the same errors. PostgreSQL's statements are checked against PostgreSQL in the
//! `sqlrepo-postgres` crate of this workspace.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> sqlrepo::Result<()> {
//! use serde_json::json;
//! use sqlrepo::{Db, Error, NewAccount, NewItem, Transfer};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let db = Db::open(dir.path().join("app.db")).await?;
//!
//! let id = db.items().create(&NewItem::new("lamp", json!({"watts": 40}))).await?;
//! assert_eq!(db.items().get(id).await?.unwrap().data["watts"], 40);
//!
//! let a = db.accounts().open(&NewAccount { user_id: None, balance_cents: 500 }).await?;
//! let b = db.accounts().open(&NewAccount { user_id: None, balance_cents: 0 }).await?;
//! db.accounts().transfer(&Transfer::new(a, b, 200)).await?;
//! let refused = db.accounts().transfer(&Transfer::new(a, 999, 100)).await;
//! assert!(matches!(refused, Err(Error::NotFound { entity: "account", id: 999 })));
//! db.close().await;
//! # Ok(()) }
//! ```
//!
//! Every repository method returns a future that owns what it needs (it borrows neither the
//! repository nor the arguments, which are validated and copied when the method is called), so
//! `db.items().get(id)` can go straight into `tokio::spawn`, `join!` or `try_join_all`.
//!
//! # The main types
//!
//! | Type | What it is |
//! |---|---|
//! | [`Db`] | the front door: opens a database, hands out repositories, [`Tx`]s and [`Handle`]s |
//! | [`ItemRepo`], [`UserRepo`], [`OrderRepo`], [`AccountRepo`] | one repository per table (`db.items()`, …); [`Db::dashboard`] reads a [`Dashboard`] |
//! | [`NewItem`], [`ItemPatch`], [`Item`], [`ItemPage`], [`ItemStatus`] | items: what you create, change and read back |
//! | [`NewUser`], [`UserPatch`], [`User`] | users |
//! | [`NewOrder`], [`OrderPatch`], [`Order`], [`OrderStats`] | orders |
//! | [`NewAccount`], [`Account`], [`Transfer`], [`TransferOutcome`] | accounts and money movements, in integer cents |
//! | [`Tx`] | a transaction you own: the same repositories, all or nothing |
//! | [`Handle`], [`Conn`], [`Atomic`], [`Backend`] | for a service's own tables: a connection with sqlrepo's rules, by backend |
//! | [`kit`] | for a service's own repositories: spans, batch helpers, timestamps, the repository shape ([`Db::run_migrations`] runs its migrations) |
//! | [`DbOptions`], [`MIGRATOR`], [`WalStats`] | opening options, sqlrepo's migrations, WAL figures |
//! | [`Error`], [`Result`] | the one error type, each variant something a caller can act on |
//!
//! Every type has one path, at the crate root (`sqlrepo::ItemRepo`); the input limits are in
//! [`limits`], the helpers our repositories are built with in [`kit`], and [`sqlx`] is re-exported so a service's own checked queries use the same sqlx.
//! The [`guide`] holds what does not fit here or in the README (design, a service's own tables,
//! migrations, PostgreSQL and replicas, benchmarks, reliability, backups, operations, tests and
//! CI), with examples compiled and run as doctests.
//!
//! # The layers
//!
//! The arrows point one way, down (the modules are private; what they hold is re-exported here):
//!
//! - **front door**: [`Db`] opens a database and hands out repositories, [`Tx`]s and
//!   [`Handle`]s;
//! - **repositories**: one module per table with its types, its repository and its SQL, built
//!   with the [`kit`] (spans, batches, timestamps); a service's own repositories sit at this
//!   level too, built on [`Handle`] and the same kit;
//! - **connections**: opening, lending ([`Handle`], [`Conn`]), transactions' plumbing, group
//!   commit ([`Grouped`]) and sqlrepo's own migrations ([`MIGRATOR`]);
//! - **errors and limits** ([`Error`], [`limits`]): the one error type with its one classifier,
//!   and the documented input limits.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
// docs.rs builds with `--cfg docsrs` (Cargo.toml's `[package.metadata.docs.rs]`): the
// PostgreSQL items then carry a "crate feature postgres" badge.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod conn;
mod db;
mod error;
pub mod guide;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod hosts;
pub mod kit;
pub mod limits;
mod tables;
mod trace;
mod tx;

/// The sqlx sqlrepo is built on, re-exported so that a service's own checked queries
/// (`sqlrepo::sqlx::query!`) and its pools are of the same version. A service that depends on
/// `sqlx` directly should ask for the same minor version (0.9) with the features its own
/// queries need (`runtime-tokio`, `sqlite`, `macros`, `migrate`, plus what its columns use);
/// cargo then builds one sqlx for both.
pub use sqlx;

pub use conn::{
    Atomic, Backend, CHECKPOINT_PAGES, CHECKPOINT_WAIT, Conn, DbOptions, Grouped, Handle,
    MAX_GROUP, MIGRATOR, RETRY_GROWTH_BYTES, WAL_BOUND_BYTES, WAL_CHECKPOINT_BYTES, WalStats,
};
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use conn::{REPLICA_COOLDOWN, REPLICA_WAIT};
pub use db::Db;
pub use error::{Error, Result};
pub use tables::accounts::{
    Account, AccountRepo, IDEMPOTENCY_KEY_CONSTRAINT, NewAccount, Transfer, TransferOutcome,
};
pub use tables::dashboard::{DASHBOARD_RECENT_ORDERS, Dashboard};
pub use tables::items::{Item, ItemPage, ItemPatch, ItemRepo, ItemStatus, NewItem};
pub use tables::orders::{NewOrder, Order, OrderPatch, OrderRepo, OrderStats};
pub use tables::users::{NewUser, User, UserPatch, UserRepo};
pub use tx::Tx;

/// `#[derive(sqlrepo::Table)]`: a repository of sqlrepo's shape for a service's own SQLite
/// table, every statement a `sqlx::query!` checked in the service's crate. See its own
/// documentation for the attributes and what it generates.
pub use sqlrepo_derive::Table;
