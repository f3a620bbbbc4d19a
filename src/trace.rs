//! Tracing: every repository call is one span, target `sqlrepo`, at DEBUG level.
//!
//! The span carries the table, the operation, the rows written or returned, the elapsed time in
//! microseconds and, on failure, the error's variant. Never a value of user data: no names,
//! emails, JSON or amounts. With no subscriber installed the cost is a disabled-callsite check.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tracing::Instrument;
use tracing::field::Empty;

use crate::error::{Error, Result};

/// Runs one repository call inside its span and records what it did: the span sqlrepo's own
/// calls make (target `sqlrepo`, level DEBUG, name `sqlrepo`), with the fields `table` and
/// `operation` as given, `rows` (what [`Rows`] says of the result), `elapsed_us`, and on failure
/// `error`, the variant's name in snake case (`duplicate`, `busy`, …). It records no value of
/// the call's data, so user data stays out of logs.
///
/// Wrap a repository method's whole future in it (validation included), so a refused call is a
/// span with its error too. A call dropped unfinished (cancelled) closes its span unrecorded;
/// inside a [`Tx`](crate::Tx) on PostgreSQL it is also how sqlrepo knows the call was given up
/// on, so its statement is undone before the transaction's next call.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> sqlrepo::Result<()> {
/// let found: Option<i64> = sqlrepo::kit::traced("notes", "get", async { Ok(Some(7)) }).await?;
/// assert_eq!(found, Some(7));
/// # Ok(()) }
/// ```
///
/// # Errors
/// The error of `work`, unchanged.
pub async fn traced<T: Rows>(
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
    // Declared in this order so that, if the call is dropped unfinished (cancelled), they drop
    // in reverse: `_mark` raises the mark, `work` (and the connection it holds) drops under it,
    // then `_lower` takes it down (see `dropping_unfinished_call`).
    let unfinished = AtomicBool::new(true);
    let _lower = Lower(&unfinished);
    let mut work = std::pin::pin!(work.instrument(span.clone()));
    let _mark = Mark(&unfinished);
    let result = work.as_mut().await;
    unfinished.store(false, Ordering::Relaxed);
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
        Error::Cancelled(_) => "cancelled",
        Error::Unreadable { .. } => "unreadable",
        Error::Constraint { .. } => "constraint",
        Error::TxFinished => "tx_finished",
        Error::WrongBackend(_) => "wrong_backend",
        Error::Database(_) => "database",
    }
}

/// How many rows a result stands for, for the `rows` field of a [`traced`] call's span: written
/// (a count, a created id, a changed flag) or returned. Implemented for `u64` (a count), `i64`
/// (a created id or a value: one), `bool`, `()`, `Option<T>` and `Vec<T>`; implement it for a
/// result type of your own.
pub trait Rows {
    /// The rows this result stands for.
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

/// Raises the mark of [`dropping_unfinished_call`] when dropped while its call is unfinished.
struct Mark<'a>(&'a AtomicBool);

impl Drop for Mark<'_> {
    fn drop(&mut self) {
        if self.0.load(Ordering::Relaxed) {
            DROPPING_UNFINISHED.with(|depth| depth.set(depth.get() + 1));
        }
    }
}

/// Takes down what [`Mark`] raised, once the call's future has been dropped.
struct Lower<'a>(&'a AtomicBool);

impl Drop for Lower<'_> {
    fn drop(&mut self) {
        if self.0.load(Ordering::Relaxed) {
            DROPPING_UNFINISHED.with(|depth| depth.set(depth.get().saturating_sub(1)));
        }
    }
}
