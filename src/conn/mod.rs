//! The connection layer: opening SQLite, lending connections ([`Handle`], [`Conn`]) and the
//! plumbing of transactions. Repositories depend on this layer; it depends only on
//! [`error`](crate::error) and [`limits`](crate::limits).
//!
//! A second backend (PostgreSQL) would sit beside `pool` here, behind the same `Handle` and
//! `Conn`.

mod group;
mod handle;
mod migrate;
mod options;
mod pool;

pub use group::{Grouped, MAX_GROUP};
pub use handle::{Atomic, Conn, Handle};
pub use migrate::MIGRATOR;
pub use options::DbOptions;

pub(crate) use handle::TxState;
pub(crate) use migrate::migrate_on;
pub(crate) use pool::{Connections, TempFile};
