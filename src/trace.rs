//! Tracing: every repository call is one span, target `sqlrepo`, at DEBUG level.
//!
//! The span carries the table, the operation, the rows written or returned, the elapsed time in
//! microseconds and, on failure, the error's variant. Never a value of user data: no names,
//! emails, JSON or amounts. With no subscriber installed the cost is a disabled-callsite check.

use std::future::Future;
use std::time::Instant;

use tracing::Instrument;
use tracing::field::Empty;

use crate::error::{Error, Result};

/// Runs one repository call inside its span and records what it did.
pub(crate) async fn traced<T: Rows>(
    table: &'static str,
    operation: &'static str,
    work: impl Future<Output = Result<T>>,
) -> Result<T> {
    let span = tracing::debug_span!(
        target: "sqlrepo",
        "sqlrepo",
        table,
        operation,
        rows = Empty,
        elapsed_us = Empty,
        error = Empty,
    );
    let started = Instant::now();
    let result = work.instrument(span.clone()).await;
    let elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    span.record("elapsed_us", elapsed_us);
    match &result {
        Ok(value) => span.record("rows", value.rows()),
        Err(err) => span.record("error", variant(err)),
    };
    // A completed call is one event too, so a plain `fmt` subscriber shows it without span
    // events configured.
    span.in_scope(|| tracing::debug!(target: "sqlrepo", "done"));
    result
}

fn variant(err: &Error) -> &'static str {
    match err {
        Error::NotFound { .. } => "not_found",
        Error::Duplicate { .. } => "duplicate",
        Error::ForeignKey => "foreign_key",
        Error::InsufficientFunds { .. } => "insufficient_funds",
        Error::InvalidInput(_) => "invalid_input",
        Error::Busy => "busy",
        Error::Schema(_) => "schema",
        Error::DiskFull => "disk_full",
        Error::Io(_) => "io",
        Error::Corrupt(_) => "corrupt",
        Error::ReadOnly(_) => "read_only",
        Error::TooBig(_) => "too_big",
        Error::Overflow(_) => "overflow",
        Error::RolledBack(_) => "rolled_back",
        Error::Config(_) => "config",
        Error::Unavailable(_) => "unavailable",
        Error::Database(_) => "database",
    }
}

/// How many rows a result stands for: written (a count, a created id, a changed flag) or
/// returned.
pub(crate) trait Rows {
    fn rows(&self) -> u64;
}

impl Rows for u64 {
    fn rows(&self) -> u64 {
        *self
    }
}

impl Rows for i64 {
    // A created id, a new balance or a count: one row either way.
    fn rows(&self) -> u64 {
        1
    }
}

impl Rows for bool {
    fn rows(&self) -> u64 {
        u64::from(*self)
    }
}

impl Rows for () {
    fn rows(&self) -> u64 {
        1
    }
}

impl<T> Rows for Option<T> {
    fn rows(&self) -> u64 {
        u64::from(self.is_some())
    }
}

impl<T> Rows for Vec<T> {
    fn rows(&self) -> u64 {
        self.len() as u64
    }
}
