//! Shared setup for the integration tests: a fresh database per test (a SQLite file, or one
//! per backend through [`backend`]).

#![allow(dead_code)]

pub mod backend;
pub mod pg_pair;
pub mod pg_server;
pub mod tmpfs;

#[allow(unused_imports)]
pub(crate) use backend::{Backend, TestDb, backend_test};

use std::path::PathBuf;

use sqlrepo::{Db, DbOptions, NewUser};
use tempfile::TempDir;

/// A migrated SQLite database in its own temporary directory (removed when dropped), for the
/// suites that are SQLite's alone (the per-backend suites use [`TestDb`]).
pub struct SqliteDb {
    pub db: Db,
    pub path: PathBuf,
    _dir: TempDir,
}

impl std::ops::Deref for SqliteDb {
    type Target = Db;
    fn deref(&self) -> &Db {
        &self.db
    }
}

/// Opens a fresh, migrated database file.
pub async fn fresh_db() -> SqliteDb {
    fresh_db_with(|options| options).await
}

/// Opens a fresh database file with adjusted options.
pub async fn fresh_db_with(adjust: impl FnOnce(DbOptions) -> DbOptions) -> SqliteDb {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("test.db");
    let db = Db::open_with(adjust(DbOptions::new(&path)))
        .await
        .expect("open test database");
    SqliteDb {
        db,
        path,
        _dir: dir,
    }
}

/// A raw rusqlite connection to the same file, for reading the state behind the API's back.
pub fn raw(path: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).expect("open raw connection")
}

/// Every row of a table as text, in rowid order: to compare the state before and after.
pub fn dump(path: &std::path::Path, table: &str) -> Vec<String> {
    let conn = raw(path);
    let mut stmt = conn
        .prepare(&format!("SELECT * FROM {table} ORDER BY rowid"))
        .expect("prepare dump");
    let columns = stmt.column_count();
    stmt.query_map([], |row| {
        let mut fields = Vec::with_capacity(columns);
        for i in 0..columns {
            let value: rusqlite::types::Value = row.get(i)?;
            fields.push(format!("{value:?}"));
        }
        Ok(fields.join("|"))
    })
    .expect("query dump")
    .collect::<Result<_, _>>()
    .expect("read dump")
}

/// The whole database as text, every table in a fixed order.
pub fn dump_all(path: &std::path::Path) -> Vec<String> {
    ["items", "users", "orders", "accounts", "transfers"]
        .iter()
        .flat_map(|table| {
            dump(path, table)
                .into_iter()
                .map(move |row| format!("{table}: {row}"))
        })
        .collect()
}

/// Creates a user and returns the id (setup only: panics on failure).
pub async fn user(db: &Db, email: &str, name: &str) -> i64 {
    db.users()
        .create(&NewUser::new(email, name))
        .await
        .expect("create user")
}

/// Every item name in the file, in id order, read behind the API's back by a fresh connection
/// (what a restart would see).
pub fn item_names(path: &std::path::Path) -> Vec<String> {
    let conn = raw(path);
    let mut stmt = conn.prepare("SELECT name FROM items ORDER BY id").unwrap();
    stmt.query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// `PRAGMA integrity_check` on the file, through a fresh connection: `"ok"` when sound.
pub fn integrity_check(path: &std::path::Path) -> String {
    raw(path)
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap()
}

/// Opens an account with no owner holding `balance_cents` and returns its id (setup only:
/// panics on failure). Either backend: a `TestDb` derefs to its `Db`.
pub async fn open_account(db: &Db, balance_cents: i64) -> i64 {
    let new = sqlrepo::NewAccount {
        user_id: None,
        balance_cents,
    };
    db.accounts().open(&new).await.expect("open account")
}

/// Opens `count` accounts with no owner, `balance_cents` each, and returns their ids.
pub async fn open_accounts(db: &Db, count: usize, balance_cents: i64) -> Vec<i64> {
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        ids.push(open_account(db, balance_cents).await);
    }
    ids
}

/// Account `id`'s balance as the API reports it (panics when there is no such account).
pub async fn balance(db: &Db, id: i64) -> i64 {
    db.accounts()
        .get(id)
        .await
        .expect("get account")
        .expect("the account exists")
        .balance_cents
}
