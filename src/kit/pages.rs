//! Keyset pages and streams for a service's table, as our tables have them: a page is one
//! statement that stops at a row count or a byte budget, whichever comes first, and a stream
//! reads page after page, holding one page and no connection between them.

use std::future::Future;

use futures_core::Stream;
use futures_util::{StreamExt, stream};

use crate::conn::Handle;
use crate::error::{Error, Result};
use crate::limits::{MAX_PAGE_BYTES, MAX_PAGE_ROWS};
use crate::trace::{Rows, traced};

/// How many rows one page of a stream asks for (its byte budget, [`MAX_PAGE_BYTES`], may stop
/// it sooner).
pub const STREAM_PAGE_ROWS: u32 = 2_000;

/// One keyset page of a table: its rows in key order and the cursor of the next page (`None`
/// when this one reached the end of the table).
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The rows, in key order.
    pub rows: Vec<T>,
    /// The key of this page's last row, to pass as `after` for the next page; `None` when no
    /// rows are left past this page.
    pub next: Option<i64>,
}

impl<T> Rows for Page<T> {
    fn rows(&self) -> u64 {
        self.rows.len() as u64
    }
}

/// A page `limit` within 1..=[`MAX_PAGE_ROWS`], as a statement's `LIMIT` parameter.
///
/// # Errors
/// [`Error::InvalidInput`] for 0 or more than [`MAX_PAGE_ROWS`]: call it before the database is
/// touched.
///
/// ```
/// use sqlrepo::kit;
/// assert_eq!(kit::page_limit(50)?, 50);
/// assert!(kit::page_limit(0).is_err());
/// # Ok::<(), sqlrepo::Error>(())
/// ```
pub fn page_limit(limit: u32) -> Result<i64> {
    if limit == 0 || limit > MAX_PAGE_ROWS {
        return Err(Error::invalid(format!(
            "a page holds 1 to {MAX_PAGE_ROWS} rows, not {limit}"
        )));
    }
    Ok(i64::from(limit))
}

/// The first key a page after `after` holds, for a statement's `WHERE id >= ?` (inclusive, so
/// that a page from the start reads `i64::MIN` too, and an index range serves it); `None` when
/// nothing can follow `after` (`i64::MAX`): then the page is empty without a statement.
///
/// ```
/// use sqlrepo::kit;
/// assert_eq!(kit::page_from(None), Some(i64::MIN));
/// assert_eq!(kit::page_from(Some(41)), Some(42));
/// assert_eq!(kit::page_from(Some(i64::MAX)), None);
/// ```
pub fn page_from(after: Option<i64>) -> Option<i64> {
    match after {
        None => Some(i64::MIN),
        Some(after) => after.checked_add(1),
    }
}

/// Reads one page from a statement's row stream (`query!(…).fetch(conn)`, ordered by key, with
/// `LIMIT limit`, from [`page_from`]): each row is mapped by `row` to the value, its key and its size in bytes
/// (an estimate the statement computes, `octet_length` of its columns), and reading stops
/// after `limit` rows or once [`MAX_PAGE_BYTES`] have been read beyond the first row, whichever
/// comes first. Rows past the budget stay unread: dropping the stream ends the statement.
///
/// # Errors
/// The statement's error, classified.
pub async fn read_page<S, R, T>(
    rows: S,
    limit: i64,
    mut row: impl FnMut(R) -> (T, i64, i64),
) -> Result<Page<T>>
where
    S: Stream<Item = std::result::Result<R, sqlx::Error>>,
{
    let mut rows = std::pin::pin!(rows);
    let mut out = Vec::new();
    let mut last_key = None;
    let mut bytes: i64 = 0;
    let mut full = false;
    while let Some(next) = rows.next().await {
        let (value, key, size) = row(next?);
        if !out.is_empty() {
            // The first row is always taken, whatever its size, so that a page moves on; a
            // later row past the budget is left to start the next page.
            bytes = bytes.saturating_add(size.max(0));
            if bytes > MAX_PAGE_BYTES as i64 {
                full = true;
                break;
            }
        }
        out.push(value);
        last_key = Some(key);
        if out.len() as i64 >= limit {
            full = true;
            break;
        }
    }
    Ok(Page {
        rows: out,
        next: if full { last_key } else { None },
    })
}

/// Every row of a table in key order, `fetch(handle, after)` returning the page of rows with
/// keys above `after` (`None`: from the first); each page is a span `table`/`stream_page`. The
/// first error ends the stream.
///
/// The next page is read while the caller works through the current one: as soon as a page
/// arrives, the read of the one after it starts in a task of its own (on the Tokio runtime the
/// stream is first polled in; without one, when the caller asks for it). So at most two pages
/// are held, the one being consumed and the one read ahead, and a connection only while a page
/// is being read: a slow consumer blocks no writer and no checkpoint. Dropping the stream
/// stops the read ahead.
pub fn keyset<T, F, Fut>(
    handle: Handle,
    table: &'static str,
    fetch: F,
) -> impl Stream<Item = Result<T>> + Send + use<T, F, Fut>
where
    T: Send + 'static,
    F: Fn(Handle, Option<i64>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Page<T>>> + Send + 'static,
{
    keyset_of(handle, table, fetch)
}

/// [`keyset`] for a fetch whose answer is a page of another shape (`P`), which says how many
/// rows it holds (the span's `rows`) and becomes a [`Page`]: a page whose "row" is an undecoded
/// chunk of many rows, decoded by the stream's consumer, still reports its real row count.
pub(crate) fn keyset_of<T, P, F, Fut>(
    handle: Handle,
    table: &'static str,
    fetch: F,
) -> impl Stream<Item = Result<T>> + Send + use<T, P, F, Fut>
where
    T: Send + 'static,
    P: Rows + Into<Page<T>> + Send + 'static,
    F: Fn(Handle, Option<i64>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<P>> + Send + 'static,
{
    let state = Keyset {
        fetch,
        handle,
        table,
        next: Next::Start,
        buffer: std::collections::VecDeque::new(),
    };
    stream::try_unfold(state, |mut state| async move {
        loop {
            if let Some(row) = state.buffer.pop_front() {
                return Ok(Some((row, state)));
            }
            let page = match std::mem::replace(&mut state.next, Next::Done) {
                Next::Start => state.page(None).await?,
                Next::Ahead(ahead) => ahead.page().await?,
                Next::Done => return Ok(None),
            };
            if let Some(after) = page.next {
                state.next = Next::Ahead(state.read_ahead(after));
            }
            state.buffer.extend(page.rows);
        }
    })
}

/// The state of a [`keyset`] stream between two rows.
struct Keyset<T, F> {
    fetch: F,
    handle: Handle,
    table: &'static str,
    next: Next<T>,
    buffer: std::collections::VecDeque<T>,
}

/// What comes after the rows in hand.
enum Next<T> {
    /// Nothing read yet: the first page, when first polled.
    Start,
    /// The next page, being read.
    Ahead(Ahead<T>),
    /// The last page was read.
    Done,
}

impl<T, P, F, Fut> Keyset<T, F>
where
    T: Send + 'static,
    P: Rows + Into<Page<T>> + Send + 'static,
    F: Fn(Handle, Option<i64>) -> Fut,
    Fut: Future<Output = Result<P>> + Send + 'static,
{
    fn page(&self, after: Option<i64>) -> impl Future<Output = Result<Page<T>>> + Send + 'static {
        use tracing::Instrument;
        let page = traced(
            self.table,
            "stream_page",
            (self.fetch)(self.handle.clone(), after),
        );
        async move { page.await.map(Into::into) }.in_current_span()
    }

    /// Starts reading the page after `after` in a task of its own, or, without a Tokio
    /// runtime, keeps it to read when asked.
    fn read_ahead(&self, after: i64) -> Ahead<T> {
        let page = self.page(Some(after));
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => Ahead::Spawned(runtime.spawn(page)),
            Err(_) => Ahead::Later(Box::pin(page)),
        }
    }
}

/// A page read ahead.
enum Ahead<T> {
    /// Being read in a task of its own; aborted if the stream is dropped first.
    Spawned(tokio::task::JoinHandle<Result<Page<T>>>),
    /// To be read when the caller asks for it (no runtime to run it meanwhile).
    Later(std::pin::Pin<Box<dyn Future<Output = Result<Page<T>>> + Send>>),
}

impl<T> Ahead<T> {
    async fn page(mut self) -> Result<Page<T>> {
        match &mut self {
            Ahead::Spawned(task) => match task.await {
                Ok(page) => page,
                // The read panicked: the caller's poll panics, as it would have read inline.
                Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
                // Cancelled: only when the runtime shuts down under the stream.
                Err(_) => Err(Error::Database(sqlx::Error::WorkerCrashed)),
            },
            Ahead::Later(page) => page.await,
        }
    }
}

impl<T> Drop for Ahead<T> {
    fn drop(&mut self) {
        // A dropped stream reads no further; a finished task ignores this.
        if let Ahead::Spawned(task) = self {
            task.abort();
        }
    }
}
