//! sqlrepo's PostgreSQL side: its migrations and every statement it runs on PostgreSQL, each
//! checked at compile time against PostgreSQL (or this crate's committed `.sqlx/`).
//!
//! This crate is a part of `sqlrepo` (its cargo feature `postgres`), not an API of its own: the
//! functions take a `PgConnection`, return rows of plain values and leave errors as
//! `sqlx::Error`, which sqlrepo classifies and turns into its own types. SQLite's statements are
//! checked in sqlrepo itself; sqlx checks one database per crate, hence a crate per backend.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod accounts;
pub mod dashboard;
pub mod floor;
pub mod items;
pub mod migrations;
pub mod orders;
pub mod replication;
pub mod role;
pub mod session;
pub mod tx;
pub mod users;

/// sqlrepo's PostgreSQL migrations (this crate's `migrations/`), recorded in
/// `_sqlrepo_migrations` as on SQLite (see `sqlx.toml`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();
