//! One copy of each test, run on every backend: SQLite (a temp file), a PostgreSQL single node,
//! and a PostgreSQL primary with a streaming replica.
//!
//! The mechanism is a tiny `macro_rules!` rather than a parameterising dev-dependency (rstest
//! and the like): the test body stays an ordinary `async fn name(db: TestDb)` that rustfmt and
//! clippy see in full, and `backend_test!(name)` beside it generates a module `name` holding one
//! `#[tokio::test]` per backend (`name::sqlite`, `name::postgres`, `name::replicated`), so a
//! failure names its backend and `cargo test name::sqlite` picks one. A function and a module
//! may share a name in Rust (they live in different namespaces), so the body keeps the test's
//! name.
//!
//! A PostgreSQL case gets a database of its own, created on the server of `SQLREPO_PG_URL` and
//! dropped with its `TestDb`. The PostgreSQL cases are `#[ignore]`d, so a plain `cargo test`
//! (which has no server) reports them as ignored, never as passed; `-- --include-ignored` runs
//! them, and then a missing server or a build without the `postgres` feature is a failure that
//! says what is missing ([`missing`]).

use std::future::Future;
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use sqlrepo::{Db, DbOptions};
use tempfile::TempDir;

/// Where a test's database lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A migrated SQLite file in a temporary directory.
    Sqlite,
    /// A fresh database on the PostgreSQL primary, opened with `Db::connect`.
    Postgres,
    /// The same on the primary, opened with `Db::connect_replicated` and the streaming replica.
    Replicated,
}

impl Backend {
    /// True for both PostgreSQL kinds.
    pub fn is_postgres(self) -> bool {
        !matches!(self, Backend::Sqlite)
    }
}

/// Generates one `#[tokio::test]` per backend for `async fn $name(db: TestDb)`:
/// `backend_test!(name)` on tokio's default runtime, `backend_test!(multi_thread, name)` on a
/// 4-worker runtime (for tests that need real parallelism). A closure after the name adjusts
/// SQLite's `DbOptions` (`backend_test!(name, |options| options.readers(1))`).
#[allow(unused_macros)]
macro_rules! backend_test {
    (multi_thread, $name:ident) => {
        $crate::common::backend::backend_test!(multi_thread, $name, |options| options);
    };
    (multi_thread, $name:ident, $adjust:expr) => {
        $crate::common::backend::backend_test!(
            @cases $name, $adjust, tokio::test(flavor = "multi_thread", worker_threads = 4)
        );
    };
    ($name:ident) => {
        $crate::common::backend::backend_test!($name, |options| options);
    };
    ($name:ident, $adjust:expr) => {
        $crate::common::backend::backend_test!(@cases $name, $adjust, tokio::test);
    };
    (@cases $name:ident, $adjust:expr, $($runtime:tt)*) => {
        mod $name {
            use $crate::common::backend::{Backend, run};

            #[$($runtime)*]
            async fn sqlite() {
                run(Backend::Sqlite, $adjust, super::$name).await;
            }

            #[$($runtime)*]
            #[ignore = "needs PostgreSQL: set SQLREPO_PG_URL (.ci/pg-cluster); run with -- --include-ignored"]
            async fn postgres() {
                run(Backend::Postgres, $adjust, super::$name).await;
            }

            #[$($runtime)*]
            #[ignore = "needs PostgreSQL and a replica: set SQLREPO_PG_URL and SQLREPO_PG_REPLICA_URL (.ci/pg-cluster); run with -- --include-ignored"]
            async fn replicated() {
                run(Backend::Replicated, $adjust, super::$name).await;
            }
        }
    };
}
pub(crate) use backend_test;

/// A migrated database of one backend, deleted afterwards. Derefs to its [`Db`].
pub struct TestDb {
    pub db: Db,
    pub backend: Backend,
    /// The SQLite file; `None` on PostgreSQL.
    pub path: Option<PathBuf>,
    /// The PostgreSQL URLs of this test's database: primary, then the replica (if replicated).
    pub urls: Vec<String>,
    _dir: Option<TempDir>,
}

impl Drop for TestDb {
    /// Drops the test's PostgreSQL database.
    fn drop(&mut self) {
        if let Some(url) = self.urls.first().cloned() {
            drop_database_blocking(url);
        }
    }
}

impl std::ops::Deref for TestDb {
    type Target = Db;
    fn deref(&self) -> &Db {
        &self.db
    }
}

/// Runs `body` on a fresh database of `backend`; fails, saying what is missing, when that
/// backend is not available here (the PostgreSQL cases run only when asked for).
/// SQLite's options are adjusted by `adjust` (PostgreSQL has none of them).
pub async fn run<F, Fut>(backend: Backend, adjust: fn(DbOptions) -> DbOptions, body: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = ()>,
{
    if let Some(db) = TestDb::new_with(backend, adjust).await {
        body(db).await;
    }
}

impl TestDb {
    /// A fresh database of `backend`. Never `None` any more: a backend that cannot run here
    /// fails the test ([`missing`]); the `Option` stays so that callers need not change.
    pub async fn new(backend: Backend) -> Option<TestDb> {
        TestDb::new_with(backend, |options| options).await
    }

    /// Like [`TestDb::new`], with SQLite's options adjusted (PostgreSQL ignores `adjust`:
    /// pool sizes and busy timeouts are SQLite's).
    pub async fn new_with(
        backend: Backend,
        adjust: impl FnOnce(DbOptions) -> DbOptions,
    ) -> Option<TestDb> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let path = dir.path().join("test.db");
                let db = Db::open_with(adjust(DbOptions::new(&path)))
                    .await
                    .expect("open test database");
                Some(TestDb {
                    db,
                    backend,
                    path: Some(path),
                    urls: Vec::new(),
                    _dir: Some(dir),
                })
            }
            Backend::Postgres | Backend::Replicated => pg::fresh(backend).await,
        }
    }

    /// The SQLite file behind the database (for checks that only SQLite can make), or `None`.
    pub fn sqlite_path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// A second, independent `Db` on the same database (what a restarted process would open).
    pub async fn reopen(&self) -> Db {
        match self.backend {
            Backend::Sqlite => Db::open(self.path.as_ref().expect("sqlite path"))
                .await
                .expect("reopen"),
            Backend::Postgres => Db::connect(&self.urls[0]).await.expect("reconnect"),
            Backend::Replicated => Db::connect_replicated(&self.urls[0], &[&self.urls[1]])
                .await
                .expect("reconnect replicated"),
        }
    }

    /// One table's rows as text, to compare before and after. On SQLite every column of every
    /// row, read behind the API's back by a fresh connection (`dump`). On PostgreSQL what the
    /// public API shows of it ([`api_table`]), and for the ledger (`transfers`, which the API
    /// does not read) every ledger row, read behind the API's back ([`TestDb::ledger`]).
    pub async fn dump(&self, table: &str) -> Vec<String> {
        match (self.sqlite_path(), table) {
            (Some(path), _) => super::dump(path, table),
            (None, "transfers") => self
                .ledger()
                .await
                .iter()
                .map(|row| format!("{row:?}"))
                .collect(),
            (None, _) => api_table(&self.db, table).await,
        }
    }

    /// The whole database as text, every table in a fixed order: on SQLite the file's rows
    /// (`dump_all`) and what the API shows; on PostgreSQL what the API shows and every ledger
    /// row.
    pub async fn snapshot(&self) -> Vec<String> {
        let mut all = match self.sqlite_path() {
            Some(path) => super::dump_all(path),
            None => self.dump("transfers").await,
        };
        all.extend(snapshot(&self.db).await);
        all
    }

    /// Every ledger row, in id order, read behind the API's back on either backend (the API
    /// has no reader of the ledger): on SQLite by a fresh rusqlite connection, on PostgreSQL by
    /// a connection of its own to the primary.
    pub async fn ledger(&self) -> Vec<LedgerRow> {
        const LEDGER: &str = "SELECT from_account, to_account, amount, idempotency_key \
                              FROM transfers ORDER BY id";
        if let Some(path) = self.sqlite_path() {
            let conn = super::raw(path);
            let mut stmt = conn.prepare(LEDGER).expect("prepare ledger");
            return stmt
                .query_map([], |r| {
                    Ok(LedgerRow {
                        from: r.get(0)?,
                        to: r.get(1)?,
                        amount: r.get(2)?,
                        key: r.get(3)?,
                    })
                })
                .expect("read ledger")
                .collect::<Result<_, _>>()
                .expect("read ledger");
        }
        #[cfg(feature = "postgres")]
        {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&self.urls[0])
                .await
                .expect("connect to read the ledger");
            // Keys are `bytea` on PostgreSQL (they may hold a NUL); the test's keys are UTF-8.
            type Row = (Option<i64>, i64, i64, Option<Vec<u8>>);
            let rows: Vec<Row> = sqlx::query_as(LEDGER)
                .fetch_all(&mut conn)
                .await
                .expect("read ledger");
            let _ = conn.close().await;
            rows.into_iter()
                .map(|(from, to, amount, key)| LedgerRow {
                    from,
                    to,
                    amount,
                    key: key.map(|key| String::from_utf8(key).expect("a UTF-8 key")),
                })
                .collect()
        }
        #[cfg(not(feature = "postgres"))]
        unreachable!("a PostgreSQL TestDb needs the postgres feature")
    }

    /// Inserts an item as another program would, behind the API's back (`data` as JSON text,
    /// which the API could not have written), and returns its id.
    pub async fn foreign_item(&self, name: &str, data_json: &str) -> i64 {
        if let Some(path) = self.sqlite_path() {
            return super::raw(path)
                .query_row(
                    "INSERT INTO items (name, data) VALUES (?1, ?2) RETURNING id",
                    (name, data_json),
                    |row| row.get(0),
                )
                .expect("foreign insert");
        }
        #[cfg(feature = "postgres")]
        {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&self.urls[0])
                .await
                .expect("connect as another program");
            let (id,): (i64,) = sqlx::query_as(
                "INSERT INTO items (name, data) VALUES ($1, $2::jsonb) RETURNING id",
            )
            .bind(name)
            .bind(data_json)
            .fetch_one(&mut conn)
            .await
            .expect("foreign insert");
            let _ = conn.close().await;
            id
        }
        #[cfg(not(feature = "postgres"))]
        unreachable!("a PostgreSQL TestDb needs the postgres feature")
    }

    /// An item's `data` exactly as stored, read behind the API's back (PostgreSQL: `jsonb`
    /// written out as text, on the primary).
    pub async fn stored_data(&self, id: i64) -> String {
        if let Some(path) = self.sqlite_path() {
            return super::raw(path)
                .query_row("SELECT data FROM items WHERE id = ?1", [id], |row| {
                    row.get(0)
                })
                .expect("read stored data");
        }
        #[cfg(feature = "postgres")]
        {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&self.urls[0])
                .await
                .expect("connect to read the data");
            let (data,): (String,) = sqlx::query_as("SELECT data::text FROM items WHERE id = $1")
                .bind(id)
                .fetch_one(&mut conn)
                .await
                .expect("read stored data");
            let _ = conn.close().await;
            data
        }
        #[cfg(not(feature = "postgres"))]
        unreachable!("a PostgreSQL TestDb needs the postgres feature")
    }

    /// The ledger rows that move money between two accounts (not openings or deposits, whose
    /// `from` is `None`).
    pub async fn transfers_between_accounts(&self) -> Vec<LedgerRow> {
        let mut rows = self.ledger().await;
        rows.retain(|row| row.from.is_some());
        rows
    }

    /// Each account's `(id, balance, credits - debits in the ledger)`, in id order: the two
    /// must agree for every account.
    pub async fn balances_and_ledger(&self) -> Vec<(i64, i64, i64)> {
        let ledger = self.ledger().await;
        accounts(&self.db)
            .await
            .iter()
            .map(|account| {
                let net: i64 = ledger
                    .iter()
                    .map(|row| {
                        if row.to == account.id {
                            row.amount
                        } else if row.from == Some(account.id) {
                            -row.amount
                        } else {
                            0
                        }
                    })
                    .sum();
                (account.id, account.balance_cents, net)
            })
            .collect()
    }
}

/// One row of the transfer ledger, as both backends store it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRow {
    /// `None` for an opening balance or a deposit.
    pub from: Option<i64>,
    pub to: i64,
    pub amount: i64,
    pub key: Option<String>,
}

/// What the public API shows of the whole database: every item, user, order (per user),
/// account and the total balance, as text. Backend-neutral.
pub async fn snapshot(db: &Db) -> Vec<String> {
    let mut all = Vec::new();
    for table in ["items", "users", "orders", "accounts"] {
        all.extend(
            api_table(db, table)
                .await
                .into_iter()
                .map(|row| format!("{table}: {row}")),
        );
    }
    let total = db.accounts().total_balance().await;
    all.push(format!("total_balance: {total:?}"));
    all
}

/// One table as the public API shows it, in id order (see [`TestDb::dump`]).
pub async fn api_table(db: &Db, table: &str) -> Vec<String> {
    match table {
        "items" => {
            let items: Vec<_> = db
                .items()
                .stream()
                .try_collect()
                .await
                .expect("stream items");
            items.iter().map(|item| format!("{item:?}")).collect()
        }
        "users" => {
            let users: Vec<_> = db
                .users()
                .stream()
                .try_collect()
                .await
                .expect("stream users");
            users.iter().map(|user| format!("{user:?}")).collect()
        }
        "orders" => {
            // Every order has a user (a foreign key), so the users' orders are all of them.
            let users: Vec<_> = db
                .users()
                .stream()
                .try_collect()
                .await
                .expect("stream users");
            let mut orders = Vec::new();
            for user in users {
                orders.extend(
                    db.orders()
                        .recent_for_user(user.id, u32::MAX)
                        .await
                        .expect("orders of a user"),
                );
            }
            orders.sort_by_key(|order| order.id);
            orders.iter().map(|order| format!("{order:?}")).collect()
        }
        "accounts" => accounts(db)
            .await
            .iter()
            .map(|account| format!("{account:?}"))
            .collect(),
        "transfers" => {
            let mut rows: Vec<String> = accounts(db)
                .await
                .iter()
                .map(|account| format!("{account:?}"))
                .collect();
            let total = db.accounts().total_balance().await;
            rows.push(format!("total_balance: {total:?}"));
            rows
        }
        other => panic!("no API view of table {other}"),
    }
}

/// Every account, found by asking for ids from 1 on: the API has no account listing, so this
/// stops after 64 ids in a row that hold none (PostgreSQL sequences leave gaps where an insert
/// failed; tests open far fewer accounts than that between two that exist).
pub async fn accounts(db: &Db) -> Vec<sqlrepo::Account> {
    let mut found = Vec::new();
    let mut misses = 0;
    let mut id = 1;
    while misses < 64 {
        match db.accounts().get(id).await.expect("get account") {
            Some(account) => {
                found.push(account);
                misses = 0;
            }
            None => misses += 1,
        }
        id += 1;
    }
    found
}

/// Fails the test because PostgreSQL is not available here. PostgreSQL tests are `#[ignore]`d,
/// so they run only when asked for (`-- --include-ignored` or `-- --ignored`): then a missing
/// server is a failure, never a silent pass.
pub fn missing(reason: &str) -> ! {
    panic!(
        "this PostgreSQL test was asked for but cannot run: {reason}. Start a primary and a \
         replica with `eval \"$(.ci/pg-cluster start DIR PORT)\"` (it exports SQLREPO_PG_URL, \
         SQLREPO_PG_REPLICA_URL and SQLREPO_PG_DATA) and build with --all-features"
    )
}

/// The same URL with another database name (the path), keeping the query string.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |at| at + 3);
    let authority_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |at| scheme_end + at);
    let mut out = format!("{}/{name}", &base[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// A fresh PostgreSQL database for a test that opens its own `Db`s: its URL on the primary
/// and, when asked for, on the replica. Dropped with the guard.
pub struct PgDatabase {
    pub url: String,
    pub replica_url: Option<String>,
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        drop_database_blocking(self.url.clone());
    }
}

/// [`drop_database`] from a `Drop` (which cannot await): on a thread of its own with a small
/// runtime, waited for, so no database outlives its test.
fn drop_database_blocking(url: String) {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(drop_database(&url));
    })
    .join()
    .expect("drop the test database");
}

/// Drops a test's PostgreSQL database (forcing out sessions the test's pools still hold).
pub async fn drop_database(url: &str) {
    #[cfg(feature = "postgres")]
    {
        use sqlx::migrate::MigrateDatabase;
        if let Err(err) = sqlx::Postgres::force_drop_database(url).await {
            eprintln!("could not drop test database {url}: {err}");
        }
    }
    #[cfg(not(feature = "postgres"))]
    let _ = url;
}

#[cfg(feature = "postgres")]
pub mod pg {
    //! Fresh PostgreSQL databases for tests.

    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, Instant};

    use sqlx::Connection;
    use sqlx::migrate::MigrateDatabase;

    use super::{Backend, PgDatabase, TestDb, missing, with_database};

    /// The admin URL of the primary (`SQLREPO_PG_URL`) and of the replica
    /// (`SQLREPO_PG_REPLICA_URL`), or why they are missing.
    pub fn urls(backend: Backend) -> Result<(String, Option<String>), String> {
        let primary =
            std::env::var("SQLREPO_PG_URL").map_err(|_| "SQLREPO_PG_URL is not set".to_owned())?;
        if backend != Backend::Replicated {
            return Ok((primary, None));
        }
        let replica = std::env::var("SQLREPO_PG_REPLICA_URL")
            .map_err(|_| "SQLREPO_PG_REPLICA_URL is not set".to_owned())?;
        Ok((primary, Some(replica)))
    }

    /// Scans of `items` the server at `url` has run (a standby counts its own): one per get
    /// it answered (`sqlrepo_postgres::replication::item_scans`, as the bench counts them).
    pub async fn item_scans(url: &str) -> i64 {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        let count = sqlrepo_postgres::replication::item_scans(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        count
    }

    /// A name no other test (in this process or another) is using.
    pub fn unique_name() -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        format!(
            "sqlrepo_t_{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Creates a fresh database on the primary and returns its URL and, when replicated, the
    /// replica's URL for it once the database has reached the replica.
    pub async fn create(backend: Backend) -> Option<PgDatabase> {
        let (primary, replica) = match urls(backend) {
            Ok(urls) => urls,
            Err(reason) => missing(&reason),
        };
        let name = unique_name();
        let primary = with_database(&primary, &name);
        sqlx::Postgres::create_database(&primary)
            .await
            .unwrap_or_else(|err| panic!("create test database {primary}: {err}"));
        let replica = match replica {
            Some(replica) => {
                let replica = with_database(&replica, &name);
                wait_for_replica(&replica).await;
                Some(replica)
            }
            None => None,
        };
        Some(PgDatabase {
            url: primary,
            replica_url: replica,
        })
    }

    /// Waits (up to 30 s) until the replica has replayed the new database's creation.
    async fn wait_for_replica(url: &str) {
        let start = Instant::now();
        loop {
            match sqlx::PgConnection::connect(url).await {
                Ok(conn) => {
                    let _ = conn.close().await;
                    return;
                }
                Err(err) if start.elapsed() < Duration::from_secs(30) => {
                    let _ = err;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(err) => panic!("the new database never reached the replica {url}: {err}"),
            }
        }
    }

    /// A fresh, migrated database of `backend` (one of the PostgreSQL kinds).
    pub async fn fresh(backend: Backend) -> Option<TestDb> {
        let database = create(backend).await?;
        let (primary, replica) = (database.url.clone(), database.replica_url.clone());
        // A failed connect panics with `database` alive, so its Drop removes the database.
        let db = match &replica {
            Some(replica) => sqlrepo::Db::connect_replicated(&primary, &[replica]).await,
            None => sqlrepo::Db::connect(&primary).await,
        }
        .unwrap_or_else(|err| panic!("connect to the test database {primary}: {err}"));
        // The TestDb drops the database from now on.
        std::mem::forget(database);
        let mut urls = vec![primary];
        urls.extend(replica);
        Some(TestDb {
            db,
            backend,
            path: None,
            urls,
            _dir: None,
        })
    }
}

#[cfg(not(feature = "postgres"))]
pub mod pg {
    //! Without the `postgres` feature there is no PostgreSQL to test.

    use super::{Backend, PgDatabase, TestDb, missing};

    const NO_FEATURE: &str = "this build has no `postgres` feature (cargo test --all-features)";

    /// Always fails: this build has no PostgreSQL support.
    pub async fn fresh(_backend: Backend) -> Option<TestDb> {
        missing(NO_FEATURE)
    }

    /// Always fails: this build has no PostgreSQL support.
    pub async fn create(_backend: Backend) -> Option<PgDatabase> {
        missing(NO_FEATURE)
    }
}
