//! Keyset paging: the constant-memory streams of the repositories.

use std::future::Future;

use futures_core::Stream;

use crate::conn::{Conn, Handle};
use crate::error::Result;
use crate::kit;
use crate::trace::Rows;

/// A row with the integer key its table is paged by (the rowid).
pub(crate) trait Keyed {
    fn key(&self) -> i64;
}

/// One page of a keyset read: its rows in key order, and whether rows past them may remain
/// (the page stopped at its row or byte budget rather than at the end of the table).
pub(crate) struct Page<T> {
    pub(crate) rows: Vec<T>,
    pub(crate) more: bool,
}

impl<T: Keyed> Page<T> {
    /// A page of at most `limit` rows that stopped only at the end of the data when it is short.
    pub(crate) fn by_rows(rows: Vec<T>, limit: i64) -> Page<T> {
        let more = rows.len() as i64 >= limit;
        Page { rows, more }
    }

    /// The first key of the next page, or `None` when this page was the last. Keys are
    /// inclusive lower bounds so that every `i64`, `i64::MIN` and ids ≤ 0 included, can be read;
    /// after a row keyed `i64::MAX` there is nothing left.
    pub(crate) fn next_from(&self) -> Option<i64> {
        match self.rows.last() {
            Some(row) if self.more => row.key().checked_add(1),
            _ => None,
        }
    }
}

/// Every row of a table in key order, fetched a page at a time by `fetch(handle, from)`, which
/// returns the rows with keys from `from` up: the kit's stream ([`kit::keyset`], which a
/// service's derived repository uses too), with our pages' inclusive lower bounds. Only one
/// page is held at a time, and no connection is held between pages, so a slow consumer blocks
/// no writer and no checkpoint.
pub(crate) fn keyset<T, F, Fut>(
    handle: Handle,
    table: &'static str,
    fetch: F,
) -> impl Stream<Item = Result<T>> + Send
where
    T: Keyed + Send + 'static,
    F: Fn(Handle, i64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Page<T>>> + Send,
{
    let fetch = std::sync::Arc::new(fetch);
    kit::keyset(handle, table, move |handle, after| {
        let fetch = fetch.clone();
        async move {
            // Rowids may be zero or negative (a row inserted with an explicit id by other SQL),
            // so the first page starts at the smallest key there is, not after 0.
            let Some(from) = kit::page_from(after) else {
                return Ok(kit::Page {
                    rows: Vec::new(),
                    next: None,
                });
            };
            let page = fetch(handle, from).await?;
            let next = page.next_from().and(page.rows.last().map(Keyed::key));
            Ok(kit::Page {
                rows: page.rows,
                next,
            })
        }
    })
}

/// Every row of a table whose rows are small enough for rows alone to bound a page (users,
/// orders, accounts: a few numbers and bounded text), [`kit::STREAM_PAGE_ROWS`] a page:
/// `read(conn, from, limit)` reads the rows with keys from `from` up, at most `limit`, on a
/// connection [`Handle::read`] lends (a replica's, where there is one).
pub(crate) fn by_rows<T, F, Fut>(
    handle: Handle,
    table: &'static str,
    read: F,
) -> impl Stream<Item = Result<T>> + Send
where
    T: Keyed + Send + 'static,
    F: Fn(Conn, i64, i64) -> Fut + Copy + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<T>>> + Send,
{
    let limit = i64::from(kit::STREAM_PAGE_ROWS);
    keyset(handle, table, move |handle, from| async move {
        let rows = handle.read(|conn| read(conn, from, limit)).await?;
        Ok(Page::by_rows(rows, limit))
    })
}

impl<T> Rows for Page<T> {
    fn rows(&self) -> u64 {
        self.rows.len() as u64
    }
}
