//! sqlrepo: a compile-time-checked repository layer for SQLite services, built on sqlx.
//!
//! Open a [`Db`] on a file (migrations run on open), take a repository per table from it, and
//! call typed methods; every SQL statement behind them is checked against the schema at compile
//! time, and every error comes back as an [`Error`] variant you can match on.
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
//! The modules: [`db`] opens connections, [`error`] classifies failures, one module per table
//! holds that table's types and SQL, [`tx`] holds transactions that callers own, and
//! [`limits`] the documented input limits. PostgreSQL support would sit beside `db` as a
//! second backend; nothing outside `db` and `tx` names SQLite connections.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod accounts;
pub mod dashboard;
pub mod db;
pub mod error;
pub mod items;
pub mod limits;
pub mod orders;
mod paging;
mod trace;
pub mod tx;
pub mod users;

pub use accounts::{Account, AccountRepo, NewAccount, Transfer, TransferOutcome};
pub use dashboard::Dashboard;
pub use db::{Db, DbOptions};
pub use error::{Error, Result};
pub use items::{Item, ItemPatch, ItemRepo, ItemStatus, NewItem};
pub use orders::{NewOrder, Order, OrderRepo, OrderStats};
pub use tx::Tx;
pub use users::{NewUser, User, UserPatch, UserRepo};
