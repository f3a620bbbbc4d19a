//! Keyset paging: the constant-memory streams of the repositories.

use std::collections::VecDeque;
use std::future::Future;

use futures_core::Stream;
use futures_util::stream;

use crate::conn::Handle;
use crate::error::Result;
use crate::trace::traced;

/// A row with the integer key its table is paged by (the rowid).
pub(crate) trait Keyed {
    fn key(&self) -> i64;
}

/// Every row of a table in key order, fetched `page_rows` at a time by `fetch(handle, after)`,
/// which returns the rows with keys above `after`. Only one page is held at a time, and no
/// connection is held between pages, so a slow consumer blocks no writer and no checkpoint.
pub(crate) fn keyset<T, F, Fut>(
    handle: Handle,
    table: &'static str,
    page_rows: i64,
    fetch: F,
) -> impl Stream<Item = Result<T>> + Send
where
    T: Keyed + Send + 'static,
    F: Fn(Handle, i64) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Vec<T>>> + Send,
{
    let state = (fetch, handle, Some(0_i64), VecDeque::<T>::new());
    stream::try_unfold(
        state,
        move |(fetch, handle, mut after, mut buffer)| async move {
            loop {
                if let Some(row) = buffer.pop_front() {
                    return Ok(Some((row, (fetch, handle, after, buffer))));
                }
                let Some(last) = after else {
                    return Ok(None);
                };
                let page = traced(table, "stream_page", fetch(handle.clone(), last)).await?;
                // A short page is the last one.
                after = match page.last() {
                    Some(row) if page.len() as i64 == page_rows => Some(row.key()),
                    _ => None,
                };
                buffer.extend(page);
            }
        },
    )
}
