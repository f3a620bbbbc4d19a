//! Tracing: every repository call is one span, target `sqlrepo`, at DEBUG level.
//!
//! The span carries the table, the operation, the rows written or returned, the elapsed time in
//! microseconds and, on failure, the error's variant. Never a value of user data: no names,
//! emails, JSON or amounts. With no subscriber installed the cost is a disabled-callsite check.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
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
    let result = Unfinished::new(work.instrument(span.clone())).await;
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

thread_local! {
    /// How many unfinished repository calls this thread is dropping right now.
    static DROPPING_UNFINISHED: Cell<u32> = const { Cell::new(0) };
}

/// Whether the code running now is the drop of a repository call that did not finish (a
/// cancelled call): a connection it gives back may be in the middle of a statement. On
/// PostgreSQL the rest of that statement's answer is still on the way, and sqlx reads it at
/// the connection's next use; if it is an error, sqlx returns it as the *next* statement's
/// error. Such a connection is drained (and rolled back) before it is lent again.
#[cfg(feature = "postgres")]
pub(crate) fn dropping_unfinished_call() -> bool {
    DROPPING_UNFINISHED.with(|depth| depth.get() > 0)
}

/// A repository call's future, which says while it is dropped unfinished that it is (see
/// [`dropping_unfinished_call`]). Fields drop in order: `work` (and the connection it holds)
/// while the mark is up, then `_lower`, which takes it down.
struct Unfinished<F> {
    work: Pin<Box<F>>,
    done: bool,
    _lower: Lower,
}

struct Lower(bool);

impl Drop for Lower {
    fn drop(&mut self) {
        if self.0 {
            DROPPING_UNFINISHED.with(|depth| depth.set(depth.get().saturating_sub(1)));
        }
    }
}

impl<F: Future> Unfinished<F> {
    fn new(work: F) -> Self {
        Unfinished {
            work: Box::pin(work),
            done: false,
            _lower: Lower(false),
        }
    }
}

impl<F: Future> Future for Unfinished<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let output = std::task::ready!(this.work.as_mut().poll(cx));
        this.done = true;
        Poll::Ready(output)
    }
}

impl<F> Drop for Unfinished<F> {
    fn drop(&mut self) {
        if !self.done {
            DROPPING_UNFINISHED.with(|depth| depth.set(depth.get() + 1));
            self._lower.0 = true;
        }
    }
}
