//! The connection layer: opening SQLite, lending connections ([`Handle`], [`Conn`]) and the
//! plumbing of transactions. Repositories depend on this layer; it depends only on
//! [`error`](crate::error) and [`limits`](crate::limits).
//!
//! A second backend (PostgreSQL) would sit beside `pool` here, behind the same `Handle` and
//! `Conn`.

mod checkpoint;
mod group;
mod handle;
mod migrate;
mod ops;
mod options;
mod pool;
mod target;

pub use checkpoint::{
    CHECKPOINT_WAIT, RETRY_GROWTH_BYTES, WAL_BOUND_BYTES, WAL_CHECKPOINT_BYTES, WalStats,
};
pub use group::{Grouped, MAX_GROUP};
pub use handle::{Atomic, Backend, Conn, Handle};
pub use migrate::MIGRATOR;
pub use options::DbOptions;

pub(crate) use handle::TxState;
pub(crate) use migrate::migrate_on;
pub(crate) use ops::{backup_into, claim_backup_path, integrity_problems};
pub(crate) use pool::{Connections, TempFile};
pub(crate) use target::Target;
