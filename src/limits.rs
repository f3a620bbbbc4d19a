//! The documented limits on input, and the checks that enforce them before the database is
//! touched. SQLite's own `CHECK`s repeat the rules it can see, as a second line. The other
//! constants a caller may need (a group's size, the dashboard's length, the idempotency key's
//! constraint name) are here too, where a reader looks for them; their first paths at the crate
//! root stay.

use serde_json::Value;

use crate::error::{Error, Result};

/// The most rows one `insert_many`, `set_status_many` or `transfer_batch` call accepts.
/// A larger slice is [`Error::InvalidInput`] and nothing is written.
pub const MAX_BATCH_ROWS: usize = 100_000;

/// The most requests one group of concurrent callers' calls carries (see
/// [`Grouped`](crate::Grouped)); the rest stay queued for the next one. Bounds the statement
/// (and the JSON it reads) and the latency of a group's first member. Also at
/// `sqlrepo::MAX_GROUP`, its first path.
pub const MAX_GROUP: usize = 256;

/// How many orders a [`Dashboard`](crate::Dashboard) shows, newest first (the literal
/// `LIMIT 10` in its statement). Also at `sqlrepo::DASHBOARD_RECENT_ORDERS`, its first path.
pub const DASHBOARD_RECENT_ORDERS: i64 = 10;

/// The most SQLite virtual-machine steps one read on the caller's thread may take (see
/// [`DbOptions::direct_reads`](crate::DbOptions::direct_reads)) before SQLite interrupts it and
/// it is read again the ordinary way, on a reader's worker thread.
///
/// Counted with `sqlite3_stmt_status(SQLITE_STMTSTATUS_VM_STEP)`: a point get takes 13 steps;
/// a [`Dashboard`](crate::Dashboard) about 190 plus 7 per order of its user (its count and sum
/// read every one), 260 for 10 orders. 1,000 steps (a dashboard of about 110 orders) cost about
/// what a round trip to a worker thread costs, so the caller's thread is never held much
/// longer than the ordinary read would have taken, and a longer read goes to that thread.
pub const DIRECT_READ_MOST_STEPS: i32 = 1_000;

/// The constraint a reused idempotency key reports in [`Error::Duplicate`]. Also at
/// `sqlrepo::IDEMPOTENCY_KEY_CONSTRAINT`, its first path.
pub const IDEMPOTENCY_KEY_CONSTRAINT: &str = "transfers.idempotency_key";

/// The longest item name, user name or email, in characters.
pub const MAX_NAME_CHARS: usize = 256;

/// The longest idempotency key, in characters.
pub const MAX_KEY_CHARS: usize = 256;

/// The deepest nesting of arrays and objects accepted in `items.data`.
///
/// SQLite's JSON functions refuse depths past 1,000 and serde_json's reader past 128; 64 leaves
/// room for both and for any reasonable document.
pub const MAX_DATA_DEPTH: usize = 64;

/// The largest `items.data` accepted, as compact JSON text, in bytes.
pub const MAX_DATA_BYTES: usize = 1 << 20;

/// The most JSON text one page of items carries, in bytes, beyond its first row: the byte
/// budget of a page of [`ItemRepo::stream`](crate::ItemRepo::stream) and
/// [`ItemRepo::list_by_status_page`](crate::ItemRepo::list_by_status_page), besides their row
/// limits.
///
/// A page travels from SQLite as one text value, and SQLite refuses any value past 1e9 bytes
/// (`SQLITE_TOOBIG`), while one item may legally hold [`MAX_DATA_BYTES`]: with rows alone as the
/// bound, 2,000 big items would be 2 GB in one value. 4 MiB holds 2,000 ordinary rows, so small
/// rows still page by count (one round trip per 2,000), and keeps a stream's memory flat
/// whatever the rows weigh. A page always holds at least one row.
pub const MAX_PAGE_BYTES: usize = 4 << 20;

/// The most JSON text one statement of [`ItemRepo::insert_many`](crate::ItemRepo::insert_many)
/// carries, in bytes, beyond its first row; a larger batch is split into several statements in
/// one transaction (still all or nothing).
///
/// Far below SQLite's 1e9-byte limit on one bound value; at this size the round trip of each
/// statement is lost in the time SQLite spends parsing the text.
pub const MAX_CHUNK_BYTES: usize = 16 << 20;

/// The most rows one statement of a chunked batch carries, besides [`MAX_CHUNK_BYTES`]: the
/// chunks of [`ItemRepo::insert_many`](crate::ItemRepo::insert_many) and of
/// [`kit::json_chunks`](crate::kit::json_chunks).
///
/// One statement per chunk bounds the JSON text built and parsed. Chunks of 10k to 100k rows
/// measured the same per row within noise (the bench's `insert_many`), so the larger chunk
/// (fewer round trips) with bounded memory.
pub const MAX_CHUNK_ROWS: usize = 50_000;

/// The largest `limit` of one [`ItemRepo::list_by_status_page`](crate::ItemRepo::list_by_status_page)
/// call.
pub const MAX_PAGE_ROWS: u32 = 1_000;

/// A person-facing name: not blank, no NUL, at most [`MAX_NAME_CHARS`] characters.
pub(crate) fn check_name(field: &str, value: &str) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Error::invalid(format!("{field} must not be empty")));
    }
    if value.contains('\0') {
        return Err(Error::invalid(format!(
            "{field} must not contain NUL characters"
        )));
    }
    if value.chars().count() > MAX_NAME_CHARS {
        return Err(Error::invalid(format!(
            "{field} is longer than {MAX_NAME_CHARS} characters"
        )));
    }
    Ok(())
}

/// An email address shape SQLite cannot check well: one `@` with text on both sides, a dot in
/// the domain, no spaces or control characters, at most 254 characters (RFC 5321).
pub(crate) fn check_email(value: &str) -> Result<()> {
    let malformed = || Error::invalid(format!("{value:?} is not an email address"));
    if value.chars().count() > 254 {
        return Err(Error::invalid("email is longer than 254 characters"));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(malformed());
    }
    let (local, domain) = value.split_once('@').ok_or_else(malformed)?;
    let domain_ok = !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.');
    if local.is_empty() || !domain_ok {
        return Err(malformed());
    }
    Ok(())
}

/// Item data no deeper than [`MAX_DATA_DEPTH`]. Walks with an explicit stack, so hostile input
/// cannot overflow ours.
pub(crate) fn check_data_depth(data: &Value) -> Result<()> {
    let mut stack = vec![(data, 1usize)];
    while let Some((value, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(fields) => Box::new(fields.values()),
            _ => continue,
        };
        if depth > MAX_DATA_DEPTH {
            return Err(Error::invalid(format!(
                "item data is nested deeper than {MAX_DATA_DEPTH} levels"
            )));
        }
        stack.extend(children.map(|child| (child, depth + 1)));
    }
    Ok(())
}

/// Item data whose JSON text (`len` bytes) is no larger than [`MAX_DATA_BYTES`].
pub(crate) fn check_data_size(len: usize) -> Result<()> {
    if len > MAX_DATA_BYTES {
        return Err(Error::invalid(format!(
            "item data is {len} bytes of JSON; the most accepted is {MAX_DATA_BYTES}"
        )));
    }
    Ok(())
}

/// A transfer amount: positive.
pub(crate) fn check_amount(amount_cents: i64) -> Result<()> {
    if amount_cents <= 0 {
        return Err(Error::invalid(format!(
            "amount must be a positive number of cents, not {amount_cents}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn blank_and_nul_names_are_refused() {
        assert!(check_name("name", "  ").is_err());
        assert!(check_name("name", "a\0b").is_err());
        assert!(check_name("name", &"x".repeat(MAX_NAME_CHARS + 1)).is_err());
        assert!(check_name("name", &"é".repeat(MAX_NAME_CHARS)).is_ok());
    }

    #[test]
    fn email_shapes() {
        for good in ["a@b.co", "first.last+tag@example.com"] {
            assert!(check_email(good).is_ok(), "{good}");
        }
        for bad in [
            "", "a", "@b.co", "a@", "a@b", "a b@c.de", "a@b@c.de", "a@.co", "a@co.",
        ] {
            assert!(check_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn depth_is_counted_per_container() {
        let mut deep = json!(1);
        for _ in 0..MAX_DATA_DEPTH {
            deep = json!([deep]);
        }
        assert!(check_data_depth(&deep).is_ok());
        assert!(check_data_depth(&json!([deep])).is_err());
    }
}
