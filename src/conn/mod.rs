//! The connection layer: opening SQLite or PostgreSQL, lending connections ([`Handle`],
//! [`Conn`], by [`Backend`]) and the plumbing of transactions. Repositories depend on this
//! layer; it depends only on [`error`](crate::error) and [`limits`](crate::limits) (and, with
//! the `postgres` feature, on the `sqlrepo-postgres` crate for PostgreSQL's checked
//! statements).
//!
//! SQLite's connections are in `pool` (held writer and readers, group commit in `group`, WAL
//! checkpoints in `checkpoint`); PostgreSQL's in `postgres` (a primary pool and replica pools,
//! reads routed so a `Db` reads its own writes), behind the same `Handle` and `Conn`.
//! `hosts` reads libpq's multi-host connection strings and `discover` finds which of those
//! hosts is the primary (both public through the crate's `hosts` module).

mod backend;
mod checkpoint;
mod control;
mod direct;
mod direct_write;
#[cfg(feature = "postgres")]
pub(crate) mod discover;
#[cfg(feature = "postgres")]
mod failover;
mod free_slots;
mod group;
mod handle;
#[cfg(feature = "postgres")]
pub(crate) mod hosts;
mod migrate;
mod ops;
mod options;
#[cfg(feature = "postgres")]
mod pg_held;
#[cfg(feature = "postgres")]
mod pg_replicas;
#[cfg(feature = "postgres")]
mod pg_server;
mod pool;
#[cfg(feature = "postgres")]
mod postgres;
mod read;
mod target;

pub use backend::Backend;
pub use checkpoint::{
    CHECKPOINT_PAGES, CHECKPOINT_WAIT, RETRY_GROWTH_BYTES, WAL_BOUND_BYTES, WAL_CHECKPOINT_BYTES,
    WalStats,
};
pub use group::{Grouped, MAX_GROUP};
pub use handle::{Atomic, Conn, Handle};
pub use migrate::MIGRATOR;
pub use options::DbOptions;
#[cfg(feature = "postgres")]
pub use postgres::{REPLICA_COOLDOWN, REPLICA_WAIT};

pub(crate) use handle::TxState;
#[cfg(feature = "postgres")]
pub(crate) use migrate::migrate_service_postgres;
pub(crate) use migrate::{migrate_on, migrate_service_on};
pub(crate) use ops::{backup_into, claim_backup_path, integrity_problems};
pub(crate) use pool::{Connections, TempFile};
#[cfg(feature = "postgres")]
pub(crate) use postgres::migrate_postgres;
pub(crate) use target::Target;
