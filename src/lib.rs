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
//! # The layers
//!
//! The arrows point one way, down:
//!
//! - **front door**: [`Db`] opens a database and hands out repositories, [`Tx`]s and
//!   [`Handle`]s;
//! - **repositories** ([`tables`]): one module per table with its types, its repository and its
//!   SQL; a service's own repositories sit at this level too, built on [`Handle`];
//! - **connections** ([`conn`]): opening, lending ([`Handle`], [`Conn`]), transactions'
//!   plumbing and sqlrepo's own migrations ([`MIGRATOR`]);
//! - **errors and limits** ([`error`], [`limits`]): the one [`Error`] type with its one
//!   classifier, and the documented input limits.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod conn;
pub mod db;
pub mod error;
pub mod limits;
pub mod tables;
mod trace;
pub mod tx;

pub use conn::{Atomic, Backend, Conn, DbOptions, Handle, MIGRATOR, WalStats};
pub use db::Db;
pub use error::{Error, Result};
pub use tables::accounts::{Account, AccountRepo, NewAccount, Transfer, TransferOutcome};
pub use tables::dashboard::Dashboard;
pub use tables::items::{Item, ItemPage, ItemPatch, ItemRepo, ItemStatus, NewItem};
pub use tables::orders::{NewOrder, Order, OrderRepo, OrderStats};
pub use tables::users::{NewUser, User, UserPatch, UserRepo};
pub use tables::{accounts, dashboard, items, orders, users};
pub use tx::Tx;
