//! Helpers shared by the reliability suite (crash, model, bad input, cancellation, contention,
//! migrations): raw access to a database file through rusqlite, a full logical dump of every
//! table, the bank and batch invariants, and seeds and counts read from the environment so a
//! failing run can be replayed.
//!
//! Each test file includes this module with `#[path]` and uses only part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::types::Value;

/// Every table the crate owns, in a fixed order.
pub const TABLES: [&str; 5] = ["items", "users", "orders", "accounts", "transfers"];

/// A logical dump: the schema (`sqlite_master`) and every row of every table, in rowid order.
pub type Dump = BTreeMap<String, Vec<Vec<Value>>>;

/// A plain read-write rusqlite connection to `path`, waiting up to 5 s for locks.
pub fn raw(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).expect("open the file with rusqlite");
    conn.busy_timeout(Duration::from_secs(5))
        .expect("set the busy timeout");
    conn
}

/// Every row of `table` (all columns, rowid order), or `None` when the table does not exist.
pub fn table_rows(conn: &rusqlite::Connection, table: &str) -> Option<Vec<Vec<Value>>> {
    let mut statement = conn
        .prepare(&format!("SELECT * FROM {table} ORDER BY rowid"))
        .ok()?;
    let columns = statement.column_count();
    let rows = statement
        .query_map([], |row| {
            (0..columns)
                .map(|index| row.get::<_, Value>(index))
                .collect::<rusqlite::Result<Vec<Value>>>()
        })
        .expect("query the table")
        .collect::<rusqlite::Result<Vec<_>>>()
        .expect("read the rows");
    Some(rows)
}

/// The schema and every row of every table the crate owns.
pub fn dump(conn: &rusqlite::Connection) -> Dump {
    let mut out = Dump::new();
    let mut schema = conn
        .prepare("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name")
        .expect("read the schema");
    let schema_rows = schema
        .query_map([], |row| {
            (0..4)
                .map(|index| row.get::<_, Value>(index))
                .collect::<rusqlite::Result<Vec<Value>>>()
        })
        .expect("query the schema")
        .collect::<rusqlite::Result<Vec<_>>>()
        .expect("read the schema rows");
    out.insert("sqlite_master".to_owned(), schema_rows);
    for table in TABLES {
        if let Some(rows) = table_rows(conn, table) {
            out.insert(table.to_owned(), rows);
        }
    }
    out
}

/// [`dump`] of the file at `path`, through a fresh connection.
pub fn dump_file(path: &Path) -> Dump {
    dump(&raw(path))
}

/// Describes how two dumps differ (empty when they are equal), for assertion messages.
pub fn dump_diff(before: &Dump, after: &Dump) -> String {
    let mut out = String::new();
    let names: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for name in names {
        let old = before.get(name).cloned().unwrap_or_default();
        let new = after.get(name).cloned().unwrap_or_default();
        if old == new {
            continue;
        }
        out.push_str(&format!(
            "table {name}: {} rows -> {} rows\n",
            old.len(),
            new.len()
        ));
        for row in old.iter().filter(|row| !new.contains(row)).take(5) {
            out.push_str(&format!("  - {}\n", short(row)));
        }
        for row in new.iter().filter(|row| !old.contains(row)).take(5) {
            out.push_str(&format!("  + {}\n", short(row)));
        }
    }
    out
}

fn short(row: &[Value]) -> String {
    let text = format!("{row:?}");
    if text.len() > 300 {
        format!(
            "{}… ({} bytes)",
            &text[..text.floor_char_boundary(300)],
            text.len()
        )
    } else {
        text
    }
}

/// `PRAGMA integrity_check` and `PRAGMA foreign_key_check` of the file; `Ok` when both are clean.
pub fn check_integrity(conn: &rusqlite::Connection) -> Result<(), String> {
    let verdict: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .and_then(|mut s| {
            s.query_map([], |row| row.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(|err| format!("integrity_check could not run: {err}"))?;
    if verdict != ["ok"] {
        return Err(format!("integrity_check: {verdict:?}"));
    }
    let dangling: i64 = conn
        .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |row| {
            row.get(0)
        })
        .map_err(|err| format!("foreign_key_check could not run: {err}"))?;
    if dangling != 0 {
        return Err(format!("foreign_key_check: {dangling} dangling references"));
    }
    Ok(())
}

/// The bank invariant when every cent entered through a deposit (accounts opened at 0): each
/// balance equals what the ledger says it received minus what it sent, no balance is negative,
/// and the total equals `expected_total`.
pub fn check_bank(conn: &rusqlite::Connection, expected_total: i64) -> Result<(), String> {
    let mismatched: Vec<(i64, i64, i64)> = conn
        .prepare(
            "SELECT a.id, a.balance,
                    coalesce((SELECT sum(amount) FROM transfers WHERE to_account = a.id), 0)
                  - coalesce((SELECT sum(amount) FROM transfers WHERE from_account = a.id), 0)
             FROM accounts AS a",
        )
        .and_then(|mut s| {
            s.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(|err| format!("could not read balances: {err}"))?
        .into_iter()
        .filter(|(_, balance, ledger)| balance != ledger || *balance < 0)
        .collect();
    if !mismatched.is_empty() {
        return Err(format!(
            "balances disagree with the ledger (id, balance, ledger): {mismatched:?}"
        ));
    }
    let total: i64 = conn
        .query_row(
            "SELECT coalesce(sum(balance), 0) FROM accounts",
            [],
            |row| row.get(0),
        )
        .map_err(|err| format!("could not sum balances: {err}"))?;
    if total != expected_total {
        return Err(format!("bank total is {total}, expected {expected_total}"));
    }
    Ok(())
}

/// Names of batch members are `<batch>#<index>of<size>`; this splits one into its parts.
pub fn batch_member(name: &str) -> Option<(&str, usize, usize)> {
    let (batch, rest) = name.rsplit_once('#')?;
    let (index, size) = rest.split_once("of")?;
    Some((batch, index.parse().ok()?, size.parse().ok()?))
}

/// The name of member `index` of a batch of `size`: see [`batch_member`].
pub fn member_name(batch: &str, index: usize, size: usize) -> String {
    format!("{batch}#{index}of{size}")
}

/// Groups batch member names (item names, idempotency keys) by batch, and fails naming every
/// batch that is present only in part (or with a member twice).
pub fn check_batches_whole<'a>(
    names: impl IntoIterator<Item = &'a str>,
) -> Result<BTreeMap<String, usize>, String> {
    let mut members: BTreeMap<String, (usize, Vec<usize>)> = BTreeMap::new();
    for name in names {
        if let Some((batch, index, size)) = batch_member(name) {
            let entry = members
                .entry(batch.to_owned())
                .or_insert((size, Vec::new()));
            if entry.0 != size {
                return Err(format!(
                    "batch {batch} has members of sizes {} and {size}",
                    entry.0
                ));
            }
            entry.1.push(index);
        }
    }
    let mut sizes = BTreeMap::new();
    for (batch, (size, mut indexes)) in members {
        indexes.sort_unstable();
        if indexes != (0..size).collect::<Vec<_>>() {
            return Err(format!(
                "batch {batch} of {size} is present in part: members {indexes:?}"
            ));
        }
        sizes.insert(batch, size);
    }
    Ok(sizes)
}

/// Every item name and every idempotency key in the file.
pub fn item_names_and_keys(conn: &rusqlite::Connection) -> (Vec<String>, Vec<String>) {
    let strings = |sql: &str| -> Vec<String> {
        conn.prepare(sql)
            .and_then(|mut s| {
                s.query_map([], |row| row.get::<_, String>(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .expect("read names")
    };
    (
        strings("SELECT name FROM items"),
        strings("SELECT idempotency_key FROM transfers WHERE idempotency_key IS NOT NULL"),
    )
}

/// A seed from the environment variable `var`, or a fresh one; printed either way so that a
/// failing run can be replayed with `var=<seed>`.
pub fn seed(var: &str) -> u64 {
    let seed = match std::env::var(var) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{var} must be a number, not {text:?}")),
        Err(_) => {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            nanos ^ u64::from(std::process::id()).rotate_left(32)
        }
    };
    println!("seed: {seed} (replay with {var}={seed})");
    seed
}

/// A count from the environment variable `var`, or `default`.
pub fn count(var: &str, default: usize) -> usize {
    match std::env::var(var) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{var} must be a number, not {text:?}")),
        Err(_) => default,
    }
}

/// One schema object as `sqlite_master` holds it: type, name, table, SQL with whitespace
/// collapsed (so only meaningful differences count).
pub type SchemaRow = (String, String, String, Option<String>);

/// The tables, indexes and triggers of the file, normalized; SQLite's own objects
/// (`sqlite_%`) left out.
pub fn schema(conn: &rusqlite::Connection) -> Vec<SchemaRow> {
    conn.prepare(
        "SELECT type, name, tbl_name, sql
         FROM sqlite_master
         WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
         ORDER BY type, name",
    )
    .and_then(|mut s| {
        s.query_map([], |row| {
            let sql: Option<String> = row.get(3)?;
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                sql.map(|text| text.split_whitespace().collect::<Vec<_>>().join(" ")),
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()
    })
    .expect("read the schema")
}

/// sqlrepo's applied migrations in the file (`_sqlrepo_migrations`): version, checksum, success.
pub fn applied_migrations(conn: &rusqlite::Connection) -> Vec<(i64, Vec<u8>, bool)> {
    applied_migrations_in(conn, "_sqlrepo_migrations")
}

/// The migrations a bookkeeping table records (sqlrepo's `_sqlrepo_migrations`, or sqlx's
/// default `_sqlx_migrations`, which a service's own migrator uses): version, checksum,
/// success.
pub fn applied_migrations_in(
    conn: &rusqlite::Connection,
    table: &str,
) -> Vec<(i64, Vec<u8>, bool)> {
    conn.prepare(&format!(
        "SELECT version, checksum, success FROM {table} ORDER BY version"
    ))
    .and_then(|mut s| {
        s.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()
    })
    .unwrap_or_else(|err| panic!("read {table}: {err}"))
}

/// What the public API shows of every table, in the shape of [`dump`] (one row per entity,
/// one cell per field, id order), for backends whose file cannot be read behind the API's back
/// (PostgreSQL). The ledger has no reader in the API; `total_balance` stands for what a stray
/// ledger row would change, beside every account's balance.
pub async fn api_dump(db: &sqlrepo::Db) -> Dump {
    use futures_util::TryStreamExt;
    let text = |s: &str| Value::Text(s.to_owned());
    let mut out = Dump::new();
    let items: Vec<sqlrepo::Item> = db.items().stream().try_collect().await.expect("items");
    out.insert(
        "items".to_owned(),
        items
            .iter()
            .map(|i| {
                vec![
                    Value::Integer(i.id),
                    text(&i.name),
                    text(&i.data.to_string()),
                    text(&format!("{:?}", i.status)),
                    text(&format!("{:?}", i.created_at)),
                    text(&format!("{:?}", i.updated_at)),
                ]
            })
            .collect(),
    );
    let users: Vec<sqlrepo::User> = db.users().stream().try_collect().await.expect("users");
    let mut orders = Vec::new();
    for user in &users {
        orders.extend(
            db.orders()
                .recent_for_user(user.id, u32::MAX)
                .await
                .expect("orders"),
        );
    }
    orders.sort_by_key(|o| o.id);
    out.insert(
        "users".to_owned(),
        users
            .iter()
            .map(|u| {
                vec![
                    Value::Integer(u.id),
                    text(&u.email),
                    text(&u.name),
                    text(&format!("{:?}", u.created_at)),
                ]
            })
            .collect(),
    );
    out.insert(
        "orders".to_owned(),
        orders
            .iter()
            .map(|o| {
                vec![
                    Value::Integer(o.id),
                    Value::Integer(o.user_id),
                    Value::Integer(o.total_cents),
                    text(&format!("{:?}", o.created_at)),
                ]
            })
            .collect(),
    );
    // No listing of accounts in the API: ids from 1 on, until 64 in a row hold none.
    let mut accounts = Vec::new();
    let (mut id, mut misses) = (1, 0);
    while misses < 64 {
        match db.accounts().get(id).await.expect("account") {
            Some(a) => {
                accounts.push(vec![
                    Value::Integer(a.id),
                    a.user_id.map_or(Value::Null, Value::Integer),
                    Value::Integer(a.balance_cents),
                ]);
                misses = 0;
            }
            None => misses += 1,
        }
        id += 1;
    }
    out.insert("accounts".to_owned(), accounts);
    let total = db.accounts().total_balance().await;
    out.insert(
        "total_balance".to_owned(),
        vec![vec![text(&format!("{total:?}"))]],
    );
    out
}
