//! The kit: what sqlrepo's own repositories are built with, public so that a service's
//! repository for its own tables is built the same way and behaves the same.
//!
//! | Piece | What it gives a service's repository |
//! |---|---|
//! | [`traced`], [`Rows`] | each call one `tracing` span like ours (target `sqlrepo`, the table, the operation, rows, elapsed µs, the error variant) |
//! | [`check_batch`], [`at_position`] | a batch refused past [`MAX_BATCH_ROWS`], and an invalid row named by its position |
//! | [`json_rows`], [`json_chunks`], [`json_text`] | a batch as the JSON text one `json_each(?)` statement expands, whole or in byte-bounded chunks |
//! | [`write_chunks`] | those chunks written as one all-or-nothing unit: one statement for one chunk, a transaction (or a savepoint in a `Tx`) for several |
//! | [`Page`], [`page_limit`], [`page_from`], [`read_page`], [`keyset`] | keyset pages bounded by rows and bytes, and the constant-memory stream over them |
//! | [`NOW_SQL`], [`parse_timestamp`], [`format_timestamp`] | the timestamp convention of our tables: RFC 3339 UTC text with milliseconds, kept canonical by a trigger |
//!
//! Migrations run with [`Db::run_migrations`](crate::Db::run_migrations), and connections come
//! from a [`Handle`](crate::Handle), as for our repositories.
//!
//! # The repository shape
//!
//! Every method validates and copies its arguments when it is called and returns a future that
//! owns them (`impl Future<…> + Send + use<>`): it borrows neither the repository nor the
//! arguments, so `tokio::spawn(repo.create(&new))` compiles, and a bad argument is refused
//! before the database is touched, with nothing written.
//!
//! ```
//! use std::future::Future;
//! use sqlrepo::{Handle, Result, kit};
//!
//! /// A repository over sqlrepo's `items` table, written as a service writes its own.
//! #[derive(Clone, Debug)]
//! pub struct NameRepo {
//!     handle: Handle,
//! }
//!
//! impl NameRepo {
//!     /// How many items there are.
//!     pub fn count(&self) -> impl Future<Output = Result<i64>> + Send + use<> {
//!         let handle = self.handle.clone();
//!         kit::traced("items", "count", async move {
//!             let mut conn = handle.reader().await?;
//!             let count = sqlx::query_scalar!(r#"SELECT count(*) AS "count!: i64" FROM items"#)
//!                 .fetch_one(conn.statements()?)
//!                 .await?;
//!             Ok(count)
//!         })
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> sqlrepo::Result<()> {
//! let db = sqlrepo::Db::in_memory().await?;
//! let names = NameRepo { handle: db.handle() };
//! // The future owns what it needs: it can be spawned.
//! let count = tokio::spawn(names.count()).await.expect("the task ran")?;
//! assert_eq!(count, 0);
//! # Ok(()) }
//! ```
//!
//! # A batch in one statement
//!
//! [`json_rows`] validates every row (an error names its position: `shipment 3: …`) and shapes
//! them into one JSON array; one `INSERT … SELECT … FROM json_each(?1)` writes them, atomic by
//! itself, so a refused row (a duplicate, a missing parent) leaves nothing written. For
//! batches whose JSON may pass [`MAX_CHUNK_BYTES`], [`json_chunks`] splits it and
//! [`write_chunks`] keeps the chunks one unit. The example service's `ShipmentRepo::insert_many`
//! (`examples/service/src/shipments.rs`) does exactly this.
//!
//! # Timestamps
//!
//! Our tables store times as RFC 3339 UTC text with milliseconds, `2026-12-04T21:42:23.123Z`:
//! it sorts as text, decodes as [`time::OffsetDateTime`] (sqlx's `"created_at:
//! OffsetDateTime"` override, or [`parse_timestamp`] for text from a JSON page), and
//! serializes with `#[serde(with = "time::serde::rfc3339")]`. A column default writes it
//! ([`NOW_SQL`]), and a trigger keeps rows written by other programs (the `sqlite3` shell's
//! `datetime('now')`, `YYYY-MM-DD HH:MM:SS`) in the same form, refusing text that is no time:
//!
//! ```sql
//! CREATE TABLE notes (
//!     id         INTEGER PRIMARY KEY,
//!     body       TEXT    NOT NULL,
//!     created_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
//! ) STRICT;
//!
//! -- A canonical value is a fixed point of this strftime, so our own writes skip the body.
//! CREATE TRIGGER notes_created_at_canonical AFTER INSERT ON notes
//!     WHEN NEW.created_at IS NOT strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at)
//! BEGIN
//!     SELECT RAISE(ABORT, 'notes.created_at must be a date and time SQLite can read')
//!     WHERE strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at) IS NULL;
//!     UPDATE notes SET created_at = strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at)
//!     WHERE id = NEW.id;
//! END;
//! ```
//!
//! (and the same trigger `AFTER UPDATE OF created_at`; sqlrepo's own are in its migration
//! `20261125000016_canonical_timestamps`, with what they cost).

use std::future::Future;
use std::pin::Pin;

use serde::Serialize;
use sqlx::SqliteConnection;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::conn::Conn;
use crate::error::{Error, Result};
use crate::limits::{MAX_BATCH_ROWS, MAX_CHUNK_BYTES, MAX_CHUNK_ROWS};

pub use crate::trace::{Rows, traced};
pub use direct::{
    Connection, DirectColumn, Row, direct_column, direct_execute, direct_get, direct_returning,
};
pub(crate) use pages::keyset_of;
pub use pages::{Page, STREAM_PAGE_ROWS, keyset, page_from, page_limit, read_page};

mod direct;
mod pages;

/// The stream trait of [`keyset`] and of every repository's `stream()` (`futures_core`'s, which
/// `futures` and `tokio-stream` use too), so that a generated repository names it without a
/// dependency of the service's own.
pub use futures_core::Stream;

/// Refuses a batch larger than [`MAX_BATCH_ROWS`] with [`Error::InvalidInput`], naming the
/// operation (`what`): call it before the database is touched.
///
/// # Errors
/// [`Error::InvalidInput`] for `len` above [`MAX_BATCH_ROWS`].
///
/// ```
/// use sqlrepo::{Error, kit};
/// assert!(kit::check_batch("insert_many", 3).is_ok());
/// let refused = kit::check_batch("insert_many", sqlrepo::limits::MAX_BATCH_ROWS + 1);
/// assert!(matches!(refused, Err(Error::InvalidInput(_))));
/// ```
pub fn check_batch(what: &str, len: usize) -> Result<()> {
    if len > MAX_BATCH_ROWS {
        return Err(Error::invalid(format!(
            "{what} holds {len} rows; the most one call accepts is {MAX_BATCH_ROWS}, so split it"
        )));
    }
    Ok(())
}

/// Names the position of an invalid row of a batch: `InvalidInput("name must not be empty")`
/// for row 7 becomes `InvalidInput("item 7: name must not be empty")`. Other variants pass
/// unchanged.
///
/// ```
/// use sqlrepo::{Error, kit};
/// let err = kit::at_position("note", 7, Error::InvalidInput("body must not be blank".into()));
/// assert_eq!(err.to_string(), Error::InvalidInput("note 7: body must not be blank".into()).to_string());
/// ```
pub fn at_position(noun: &str, index: usize, err: Error) -> Error {
    match err {
        Error::InvalidInput(message) => Error::InvalidInput(format!("{noun} {index}: {message}")),
        other => other,
    }
}

/// A value as compact JSON text, for a `json_each(?)` statement or a JSON column.
///
/// # Errors
/// [`Error::InvalidInput`] when the value cannot be serialized (a map with non-string keys).
pub fn json_text<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|err| Error::invalid(format!("not JSON: {err}")))
}

/// A batch as one JSON array of `shape(row)` values, for one statement that expands it with
/// `json_each(?)`; `None` for no rows (then send nothing).
///
/// Refuses a batch past [`MAX_BATCH_ROWS`] and validates every row first, so an invalid one is
/// reported by position (`noun 3: …`) before anything is sent. A tuple shape, `(a, b)`, makes
/// `[[a, b], …]`, which the statement reads as `value ->> 0, value ->> 1`; `ORDER BY key`
/// there gives ids in slice order.
///
/// # Errors
/// [`Error::InvalidInput`] for an oversized batch or a row `validate` refuses.
///
/// ```
/// use sqlrepo::kit;
/// let rows = [("a", 1), ("b", 2)];
/// let json = kit::json_rows("row", &rows, |_| Ok(()), |(name, n)| (name, n))?;
/// assert_eq!(json.as_deref(), Some(r#"[["a",1],["b",2]]"#));
/// assert_eq!(kit::json_rows("row", &rows[..0], |_| Ok(()), |r| r)?, None);
/// # Ok::<(), sqlrepo::Error>(())
/// ```
pub fn json_rows<'a, T, R: Serialize>(
    noun: &str,
    rows: &'a [T],
    validate: impl Fn(&T) -> Result<()>,
    shape: impl Fn(&'a T) -> R,
) -> Result<Option<String>> {
    check_batch("insert_many", rows.len())?;
    if rows.is_empty() {
        return Ok(None);
    }
    for (index, row) in rows.iter().enumerate() {
        validate(row).map_err(|err| at_position(noun, index, err))?;
    }
    let shaped: Vec<R> = rows.iter().map(shape).collect();
    json_text(&shaped).map(Some)
}

/// A batch as JSON arrays of `shape(row)` values, one per statement: a chunk closes before it
/// would pass [`MAX_CHUNK_ROWS`] rows or [`MAX_CHUNK_BYTES`] bytes (a single row bigger than
/// that is a chunk by itself). Validates as [`json_rows`] does; no rows give no chunks. Write
/// them with [`write_chunks`], which keeps them one all-or-nothing unit.
///
/// # Errors
/// [`Error::InvalidInput`] for an oversized batch or a row `validate` refuses (by position).
pub fn json_chunks<'a, T, R: Serialize>(
    noun: &str,
    rows: &'a [T],
    validate: impl Fn(&T) -> Result<()>,
    shape: impl Fn(&'a T) -> R,
) -> Result<Vec<String>> {
    check_batch("insert_many", rows.len())?;
    chunk_rows(
        rows,
        MAX_CHUNK_ROWS,
        MAX_CHUNK_BYTES,
        |out, index, row: &'a T| {
            validate(row).map_err(|err| at_position(noun, index, err))?;
            serde_json::to_writer(out, &shape(row))
                .map_err(|err| at_position(noun, index, Error::invalid(format!("not JSON: {err}"))))
        },
    )
}

/// The one chunking loop (ours and the kit's): each row's JSON is written by `write_row` into a
/// buffer, and rows gather into `[row,row,…]` chunks under `max_rows` and `max_bytes`.
pub(crate) fn chunk_rows<'a, T>(
    rows: &'a [T],
    max_rows: usize,
    max_bytes: usize,
    mut write_row: impl FnMut(&mut Vec<u8>, usize, &'a T) -> Result<()>,
) -> Result<Vec<String>> {
    let mut chunks = Vec::new();
    let mut chunk: Vec<u8> = Vec::new();
    let mut rows_in_chunk = 0;
    let mut row_json: Vec<u8> = Vec::new();
    for (index, row) in rows.iter().enumerate() {
        row_json.clear();
        write_row(&mut row_json, index, row)?;
        if rows_in_chunk > 0
            && (rows_in_chunk == max_rows || chunk.len() + 1 + row_json.len() + 1 > max_bytes)
        {
            chunks.push(close_chunk(std::mem::take(&mut chunk))?);
            rows_in_chunk = 0;
        }
        chunk.push(if rows_in_chunk == 0 { b'[' } else { b',' });
        chunk.extend_from_slice(&row_json);
        rows_in_chunk += 1;
    }
    if rows_in_chunk > 0 {
        chunks.push(close_chunk(chunk)?);
    }
    Ok(chunks)
}

fn close_chunk(mut chunk: Vec<u8>) -> Result<String> {
    chunk.push(b']');
    String::from_utf8(chunk).map_err(|err| Error::invalid(format!("not UTF-8: {err}")))
}

/// The future one chunk's statement returns in [`write_chunks`]: boxed, so that the closure can
/// borrow the connection and the chunk for as long as the statement runs.
pub type ChunkWrite<'c> = Pin<Box<dyn Future<Output = Result<u64>> + Send + 'c>>;

/// Writes every chunk with `write` (one statement each) as one all-or-nothing unit, and adds up
/// what the statements return (rows written).
///
/// One chunk is one statement, atomic by itself: no transaction, one round trip. Several run
/// in one [`Conn::atomic`] unit (`BEGIN IMMEDIATE` on a [`Db`](crate::Db)'s writer, a
/// savepoint inside a [`Tx`](crate::Tx)): the first refused chunk rolls back every chunk
/// before it, and its error is the call's. `conn` is a writer
/// ([`Handle::writer`](crate::Handle::writer)); the statements run on its SQLite connection.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> sqlrepo::Result<()> {
/// use sqlrepo::kit;
/// # let db = sqlrepo::Db::in_memory().await?;
/// let chunks = kit::json_chunks("item", &["a", "b"], |_| Ok(()), |name| (name, "{}"))?;
/// let mut conn = db.handle().writer().await?;
/// let written = kit::write_chunks(&mut conn, &chunks, |sqlite, rows| {
///     Box::pin(async move {
///         let done = sqlx::query!(
///             "INSERT INTO items (name, data) SELECT value ->> 0, value ->> 1 FROM json_each(?1) ORDER BY key",
///             rows
///         )
///         .execute(sqlite)
///         .await?;
///         Ok(done.rows_affected())
///     })
/// })
/// .await?;
/// assert_eq!(written, 2);
/// # Ok(()) }
/// ```
///
/// # Errors
/// The first chunk's error (then nothing of any chunk is stored); [`Error::WrongBackend`] when
/// the database is on PostgreSQL (its statements need [`Conn::backend`]); the unit's own errors as
/// [`Conn::atomic`] and [`Atomic::commit`](crate::Atomic::commit) list them.
pub async fn write_chunks<F>(conn: &mut Conn, chunks: &[String], mut write: F) -> Result<u64>
where
    F: for<'c> FnMut(&'c mut SqliteConnection, &'c str) -> ChunkWrite<'c> + Send,
{
    match chunks {
        [] => Ok(0),
        [rows] => write(conn.statements()?, rows).await,
        _ => {
            let mut unit = conn.atomic().await?;
            let mut written = 0;
            for rows in chunks {
                let done = match unit.sqlite() {
                    Ok(sqlite) => write(sqlite, rows).await,
                    Err(err) => Err(err),
                };
                match done {
                    Ok(count) => written += count,
                    Err(err) => {
                        // The error to report is the chunk's. A rollback that fails too leaves
                        // the unit unfinished, and its Drop resets the writer (or ends the
                        // caller's Tx): nothing half-done stays.
                        let _unfinished = unit.rollback().await;
                        return Err(err);
                    }
                }
            }
            unit.commit().await?;
            Ok(written)
        }
    }
}

/// The SQLite expression our tables use for "now" in the canonical form, as a column default
/// (`DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))`) or in a statement. For migrations and
/// documentation: a checked `query!` needs its SQL as a literal, so write it out there.
pub const NOW_SQL: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// Reads a stored timestamp (RFC 3339, as our tables hold them) as an [`OffsetDateTime`]: for
/// text a statement returns as a string or inside a JSON page, where sqlx's own decoding
/// (`"created_at: OffsetDateTime"`) does not reach.
///
/// # Errors
/// [`Error::Database`] holding a decode error, naming the text, when it is not RFC 3339.
///
/// ```
/// use sqlrepo::kit;
/// let at = kit::parse_timestamp("2026-12-04T21:42:23.123Z")?;
/// assert_eq!(at.millisecond(), 123);
/// assert_eq!(kit::format_timestamp(at), "2026-12-04T21:42:23.123Z");
/// assert!(kit::parse_timestamp("2026-12-04 21:42:23").is_err());
/// # Ok::<(), sqlrepo::Error>(())
/// ```
pub fn parse_timestamp(text: &str) -> Result<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|err| {
        Error::Database(sqlx::Error::Decode(
            format!("{text:?} is not an RFC 3339 timestamp: {err}").into(),
        ))
    })
}

/// A time in the canonical stored form, UTC with milliseconds (`2026-12-04T21:42:23.123Z`), as
/// [`NOW_SQL`] writes it: bind this to compare with or write a timestamp column, so that the
/// text sorts with the stored values. Finer digits are cut (not rounded), as SQLite's `%f`.
pub fn format_timestamp(at: OffsetDateTime) -> String {
    let utc = at.to_offset(time::UtcOffset::UTC);
    let date = utc.date();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        date.year(),
        u8::from(date.month()),
        date.day(),
        utc.hour(),
        utc.minute(),
        utc.second(),
        utc.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_close_on_rows_and_on_bytes_and_a_big_row_stands_alone() {
        let rows = ["a", "b", "c", "dddddddddd", "e"];
        let write = |out: &mut Vec<u8>, _: usize, row: &&str| {
            serde_json::to_writer(out, row).map_err(|err| Error::invalid(err.to_string()))
        };
        let by_rows = chunk_rows(&rows, 2, usize::MAX, write).unwrap();
        assert_eq!(
            by_rows,
            [r#"["a","b"]"#, r#"["c","dddddddddd"]"#, r#"["e"]"#]
        );
        let by_bytes = chunk_rows(&rows, 100, 12, write).unwrap();
        assert_eq!(
            by_bytes,
            [r#"["a","b"]"#, r#"["c"]"#, r#"["dddddddddd"]"#, r#"["e"]"#]
        );
        assert!(chunk_rows(&rows[..0], 2, 12, write).unwrap().is_empty());
    }

    #[test]
    fn an_invalid_row_is_named_by_position() {
        let rows = ["ok", "", "ok"];
        let err = json_chunks(
            "note",
            &rows,
            |row| {
                if row.is_empty() {
                    Err(Error::invalid("body must not be blank"))
                } else {
                    Ok(())
                }
            },
            |row| row,
        )
        .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidInput(message) if message == "note 1: body must not be blank"),
            "{err:?}"
        );
    }

    #[test]
    fn timestamps_round_trip_in_the_canonical_form() {
        let at = parse_timestamp("2026-01-02T03:04:05.678+02:00").unwrap();
        assert_eq!(format_timestamp(at), "2026-01-02T01:04:05.678Z");
        let at = parse_timestamp("2026-01-02T03:04:05.678999Z").unwrap();
        assert_eq!(format_timestamp(at), "2026-01-02T03:04:05.678Z");
    }
}
