//! Reading one row on a direct reader ([`Handle::read_direct`](crate::Handle::read_direct)),
//! column by column, as strictly as the checked query's own decoding: a value is taken only
//! when it is exactly what the column holds for that type, and anything else gives up, so the
//! ordinary read (whose answer or error stands) runs instead.

use rusqlite::types::ValueRef;
use time::OffsetDateTime;

/// The SQLite C library's connection and row types, as [`Handle::read_direct`](crate::Handle::read_direct)
/// lends them.
pub use rusqlite::{Connection, Row};

/// A field type a direct read can decode. Each accepts only the storage class the checked
/// query would decode without conversion (an `INTEGER` for `i64`, `TEXT` for `String`); any
/// other value is `None` (read again the ordinary way).
pub trait DirectColumn: Sized {
    /// The value, or `None` for anything this type does not take as it is.
    fn from_direct(value: ValueRef<'_>) -> Option<Self>;
}

impl DirectColumn for i64 {
    fn from_direct(value: ValueRef<'_>) -> Option<Self> {
        match value {
            ValueRef::Integer(n) => Some(n),
            _ => None,
        }
    }
}

impl DirectColumn for i32 {
    fn from_direct(value: ValueRef<'_>) -> Option<Self> {
        i64::from_direct(value).and_then(|n| i32::try_from(n).ok())
    }
}

impl DirectColumn for bool {
    fn from_direct(value: ValueRef<'_>) -> Option<Self> {
        match i64::from_direct(value)? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }
}

impl DirectColumn for f64 {
    fn from_direct(value: ValueRef<'_>) -> Option<Self> {
        match value {
            ValueRef::Real(x) => Some(x),
            _ => None,
        }
    }
}

impl DirectColumn for String {
    fn from_direct(value: ValueRef<'_>) -> Option<Self> {
        text(value).map(str::to_owned)
    }
}

impl DirectColumn for Vec<u8> {
    fn from_direct(value: ValueRef<'_>) -> Option<Self> {
        match value {
            ValueRef::Blob(bytes) => Some(bytes.to_vec()),
            _ => None,
        }
    }
}

/// The canonical stored form, RFC 3339 (the first form sqlx's own decoding tries, so the value
/// is the one it would give).
impl DirectColumn for OffsetDateTime {
    fn from_direct(value: ValueRef<'_>) -> Option<Self> {
        crate::kit::parse_timestamp(text(value)?).ok()
    }
}

/// `NULL` is `None`; any other value as `T` takes it.
impl<T: DirectColumn> DirectColumn for Option<T> {
    fn from_direct(value: ValueRef<'_>) -> Option<Self> {
        match value {
            ValueRef::Null => Some(None),
            other => T::from_direct(other).map(Some),
        }
    }
}

fn text(value: ValueRef<'_>) -> Option<&str> {
    match value {
        ValueRef::Text(bytes) => std::str::from_utf8(bytes).ok(),
        _ => None,
    }
}

/// Column `index` of `row` as `T`, or `None` (see [`DirectColumn`]).
pub fn direct_column<T: DirectColumn>(row: &Row<'_>, index: usize) -> Option<T> {
    T::from_direct(row.get_ref(index).ok()?)
}

/// Runs the point read `sql` (the text of a checked statement whose one parameter is the key)
/// for `id` on a direct reader, and builds its row with `build`: `Some(None)` when there is no
/// such row, `Some(Some(row))` for a row `build` takes, and `None` when anything else happens
/// (an error, a value `build` gives up on), for the ordinary read to answer. The statement is
/// prepared once per connection and reset as the read ends, so no snapshot outlives it.
pub fn direct_get<T>(
    conn: &Connection,
    sql: &str,
    id: i64,
    build: impl FnOnce(&Row<'_>) -> Option<T>,
) -> Option<Option<T>> {
    let mut statement = conn.prepare_cached(sql).ok()?;
    // SQLite counts a statement's steps over all its runs, never resetting the count itself,
    // and calls the progress handler (which cuts a direct read off) each time that running
    // count passes a multiple of the budget. Zeroed here, the budget is this read's own: a
    // short cached read would otherwise be cut off once in every few runs, and go the
    // ordinary way for nothing.
    statement.reset_status(rusqlite::StatementStatus::VmStep);
    let mut rows = statement.query([id]).ok()?;
    match rows.next().ok()? {
        None => Some(None),
        Some(row) => build(row).map(Some),
    }
}

/// Runs the write `sql` (the text of a checked single statement) with `params` on the direct
/// writer (see [`Grouped::apply_one_direct`](crate::Grouped::apply_one_direct)), in autocommit
/// mode: the rows it changed once it committed, or `None` when it did not (an error of any
/// kind; SQLite then stored nothing), for the ordinary write to run instead.
pub fn direct_execute(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Option<usize> {
    conn.prepare_cached(sql).ok()?.execute(params).ok()
}

/// Runs the write `sql` with `params` as [`direct_execute`] does, for a statement with
/// `RETURNING`: each returned row built with `build`, once the statement is stepped to its end
/// (where SQLite commits). `None` when it did not commit; a row `build` cannot take (it
/// returns `None`) is left out, since the write is stored by then.
pub fn direct_returning<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    mut build: impl FnMut(&Row<'_>) -> Option<T>,
) -> Option<Vec<T>> {
    let mut statement = conn.prepare_cached(sql).ok()?;
    let mut rows = statement.query(params).ok()?;
    let mut built = Vec::new();
    // Every row is stepped through, even one `build` leaves out: the commit comes at the end.
    while let Some(row) = rows.next().ok()? {
        built.extend(build(row));
    }
    Some(built)
}

#[cfg(test)]
mod tests {
    use super::direct_get;
    use crate::limits::DIRECT_READ_MOST_STEPS;

    /// A connection set up as a direct reader's is: SQLite's progress handler cuts a statement
    /// off once it has run the budget's steps.
    fn budgeted() -> rusqlite::Connection {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t (n INTEGER NOT NULL);
             WITH RECURSIVE s (v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM s WHERE v < 5000)
             INSERT INTO t (n) SELECT v FROM s;",
        )
        .unwrap();
        conn.progress_handler(DIRECT_READ_MOST_STEPS, Some(|| true))
            .unwrap();
        conn
    }

    #[test]
    fn a_short_read_run_again_and_again_is_never_cut_off() {
        let conn = budgeted();
        // A point read takes some tens of steps: run a thousand times from the statement
        // cache, its steps add up to many times the budget, which is each run's alone.
        for id in 1..=1_000 {
            let found = direct_get(&conn, "SELECT n FROM t WHERE rowid = ?1", id, |row| {
                row.get::<_, i64>(0).ok()
            });
            assert_eq!(found, Some(Some(id)), "run {id} was cut off");
        }
    }

    #[test]
    fn a_read_past_the_budget_gives_up_and_a_short_one_after_it_answers() {
        let conn = budgeted();
        let long = "SELECT count(*) FROM t WHERE n % ?1 = 0";
        assert_eq!(
            direct_get(&conn, long, 7, |row| row.get::<_, i64>(0).ok()),
            None
        );
        let short = "SELECT n FROM t WHERE rowid = ?1";
        assert_eq!(
            direct_get(&conn, short, 42, |row| row.get::<_, i64>(0).ok()),
            Some(Some(42))
        );
    }
}
