//! The guide: the chapters that do not fit in the README, each a page of its own here so that
//! its Rust examples are compiled and run as doctests (`cargo test --doc`, in CI) and cannot
//! go stale. The README covers the first hour; these cover the rest.
//!
//! The chapters' text is in `docs/guide/`, one Markdown file each.

#[doc = include_str!("../docs/guide/01-design.md")]
pub mod design {}

#[doc = include_str!("../docs/guide/02-your-own-tables.md")]
pub mod own_tables {}

#[doc = include_str!("../docs/guide/03-migrations.md")]
pub mod migrations {}

#[doc = include_str!("../docs/guide/04-postgres.md")]
pub mod postgres {}

#[doc = include_str!("../docs/guide/05-performance.md")]
pub mod performance {}

#[doc = include_str!("../docs/guide/06-reliability.md")]
pub mod reliability {}

#[doc = include_str!("../docs/guide/07-backups.md")]
pub mod backups {}

#[doc = include_str!("../docs/guide/08-operations.md")]
pub mod operations {}

#[doc = include_str!("../docs/guide/09-testing-and-ci.md")]
pub mod testing_and_ci {}

#[doc = include_str!("../docs/guide/10-postgres-in-production.md")]
pub mod postgres_in_production {}
