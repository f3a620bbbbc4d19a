//! Opening and configuring connections: [`Db`], [`DbOptions`], and the leases the repositories
//! run their statements on.
//!
//! # Why one held writer and a few held readers
//!
//! sqlx-sqlite runs every statement on the connection's worker thread, so a statement costs one
//! round trip between threads (25–80 µs here) whatever SQLite does. sqlx's `Pool` adds up to two
//! more: it pings a connection before lending it (unless `test_before_acquire(false)`) and always
//! pings it again when it comes back (`../shared/MEASURED.md`: 28–31 µs per point get on a held
//! connection, 42–85 µs through a default pool). So a [`Db`] opened from a path holds its
//! connections for its whole life, each behind an async mutex:
//!
//! - **one writer**: every write goes through it, so writers of this process queue in Rust
//!   instead of fighting over SQLite's write lock (no `SQLITE_BUSY` between them, and no busy-wait
//!   sleeps), and a write costs exactly one round trip;
//! - **`readers` read-only connections** (default 4): WAL lets them read while the writer writes;
//!   a read takes the first idle one, so reads never wait behind writes.
//!
//! [`Db::from_pool`] keeps sqlx's pool for callers who bring their own; everything works the same,
//! at the pool's price per call.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Sqlite};
use tokio::sync::{Mutex, OwnedMappedMutexGuard, OwnedMutexGuard};

use crate::accounts::AccountRepo;
use crate::dashboard::{self, Dashboard};
use crate::error::{Error, Result};
use crate::items::ItemRepo;
use crate::orders::OrderRepo;
use crate::trace::traced;
use crate::tx::{Tx, TxState};
use crate::users::UserRepo;

/// The migrations in `migrations/`, embedded at compile time.
pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// How to open a database file: where, how many readers, how long to wait for a lock.
///
/// ```
/// use std::time::Duration;
/// let options = sqlrepo::DbOptions::new("app.db")
///     .readers(2)
///     .busy_timeout(Duration::from_secs(1))
///     .migrate(false);
/// assert_eq!(options.readers, 2);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DbOptions {
    /// The database file.
    pub path: PathBuf,
    /// Read-only connections held beside the one writer (at least 1; default 4).
    pub readers: usize,
    /// How long a call waits for a lock (another process's, or this process's writer held by
    /// a long transaction) before [`Error::Busy`] (default 5 s).
    pub busy_timeout: Duration,
    /// Create the file when it does not exist (default true).
    pub create_if_missing: bool,
    /// Apply the embedded migrations on open (default true).
    pub migrate: bool,
}

impl DbOptions {
    /// Options for the file at `path`, with the defaults listed on each field.
    pub fn new(path: impl AsRef<Path>) -> Self {
        DbOptions {
            path: path.as_ref().to_path_buf(),
            readers: 4,
            busy_timeout: Duration::from_secs(5),
            create_if_missing: true,
            migrate: true,
        }
    }

    /// Sets the number of read-only connections (0 is taken as 1).
    pub fn readers(mut self, readers: usize) -> Self {
        self.readers = readers.max(1);
        self
    }

    /// Sets how long a statement waits for a lock held by another connection.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Sets whether a missing file is created.
    pub fn create_if_missing(mut self, create: bool) -> Self {
        self.create_if_missing = create;
        self
    }

    /// Sets whether the embedded migrations run on open.
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// The pragmas every connection gets. WAL lets readers run beside the writer;
    /// `synchronous=NORMAL` is durable against application crashes in WAL mode and saves an
    /// fsync per commit; foreign keys are what stop money leaving for a missing account.
    fn connect_options(&self) -> SqliteConnectOptions {
        SqliteConnectOptions::new()
            .filename(&self.path)
            .foreign_keys(true)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(self.busy_timeout)
            // Most statements here are prepared once and reused; keep them all.
            .statement_cache_capacity(128)
    }
}

/// A connection held for the life of the [`Db`]; `None` once closed.
type Slot = Arc<Mutex<Option<SqliteConnection>>>;

/// The handle a service keeps: cheap to clone, `Send + Sync`, one per database file.
///
/// Calls that have to wait for one another (a write behind a long transaction, say) wait at
/// most the busy timeout, timed by Tokio: the runtime needs its time driver (`#[tokio::main]`
/// and `#[tokio::test]` enable it; a hand-built runtime needs `enable_time()`).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> sqlrepo::Result<()> {
/// use sqlrepo::{Db, NewItem};
/// let db = Db::in_memory().await?;
/// let id = db.items().create(&NewItem::new("lamp", serde_json::json!({"watts": 40}))).await?;
/// assert_eq!(db.items().get(id).await?.unwrap().name, "lamp");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Db {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    connections: Connections,
    /// Set for [`Db::in_memory`]: the file to delete once the connections are gone.
    temp_file: Option<TempFile>,
}

#[derive(Debug)]
enum Connections {
    Held {
        writer: Slot,
        readers: Vec<Slot>,
        next_reader: AtomicUsize,
        /// How long a call waits for a connection held by another call of this process (a
        /// long `Tx`, say) before it gives up with [`Error::Busy`], as SQLite does for locks
        /// held by other processes.
        busy_timeout: Duration,
    },
    Pool(SqlitePool),
}

/// A database file (and its `-wal` and `-shm` companions) deleted on drop.
#[derive(Debug)]
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            // Already gone is fine; there is nothing else to do about a failure here.
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Db {
    fn with(connections: Connections) -> Db {
        Db {
            inner: Arc::new(Inner {
                connections,
                temp_file: None,
            }),
        }
    }

    /// Opens (creating if missing) and migrates the database file at `path`.
    ///
    /// # Errors
    /// [`Error::Database`] when the file cannot be opened (a missing directory, not a SQLite
    /// file); [`Error::Schema`] when the migrations cannot run (for example the file was migrated
    /// by a newer release).
    pub async fn open(path: impl AsRef<Path>) -> Result<Db> {
        Db::open_with(DbOptions::new(path)).await
    }

    /// Opens a database file with explicit [`DbOptions`].
    ///
    /// # Errors
    /// As [`Db::open`].
    pub async fn open_with(options: DbOptions) -> Result<Db> {
        let base = options.connect_options();
        let writer_options = base
            .clone()
            .create_if_missing(options.create_if_missing)
            .journal_mode(SqliteJournalMode::Wal);
        let mut writer = connect_when_free(&writer_options, options.busy_timeout).await?;
        if options.migrate {
            migrate_on(&mut writer).await?;
        }
        // Readers are read-only, so a write can never slip past the single writer.
        let mut readers = Vec::with_capacity(options.readers.max(1));
        for _ in 0..options.readers.max(1) {
            let reader = base.clone().read_only(true).connect().await?;
            readers.push(Arc::new(Mutex::new(Some(reader))));
        }
        Ok(Db::with(Connections::Held {
            writer: Arc::new(Mutex::new(Some(writer))),
            readers,
            next_reader: AtomicUsize::new(0),
            busy_timeout: options.busy_timeout,
        }))
    }

    /// A private, migrated database for tests and demos, gone when the last clone of the
    /// `Db` is dropped.
    ///
    /// It is a fresh file in the system's temporary directory, opened exactly like
    /// [`Db::open`] (WAL, one writer, read-only readers) and deleted on drop. So it behaves as
    /// production does: a reader does not see a [`Tx`]'s writes before they commit, and reading
    /// while a transaction is open does not wait for it. (SQLite's `:memory:` is private to one
    /// connection, and its `memdb` VFS blocks readers while a writer holds its lock: neither
    /// can give that.)
    ///
    /// # Errors
    /// [`Error::Database`] if the temporary directory is not writable.
    pub async fn in_memory() -> Result<Db> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "sqlrepo-{}-{}-{}.db",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            time::OffsetDateTime::now_utc().unix_timestamp_nanos()
        ));
        let temp = TempFile(path.clone());
        let mut db = Db::open_with(DbOptions::new(&path).readers(2)).await?;
        if let Some(inner) = Arc::get_mut(&mut db.inner) {
            inner.temp_file = Some(temp);
        }
        Ok(db)
    }

    /// Wraps a pool the caller configured. Nothing is migrated (call [`Db::migrate`]).
    ///
    /// The pool's connections should have `foreign_keys` on (sqlx's default), since the ledger
    /// relies on foreign keys to refuse transfers to missing accounts.
    pub fn from_pool(pool: SqlitePool) -> Db {
        Db::with(Connections::Pool(pool))
    }

    /// Applies the embedded migrations (`migrations/`) that have not run yet.
    ///
    /// # Errors
    /// [`Error::Schema`] when the database holds a migration this release does not know, or one
    /// that changed since it ran; [`Error::Busy`] when another writer holds the lock.
    pub async fn migrate(&self) -> Result<()> {
        let mut conn = self.write_lease().await?;
        migrate_on(&mut conn).await
    }

    /// The items repository.
    pub fn items(&self) -> ItemRepo {
        ItemRepo::new(Handle::Db(self.clone()))
    }

    /// The users repository.
    pub fn users(&self) -> UserRepo {
        UserRepo::new(Handle::Db(self.clone()))
    }

    /// The orders repository.
    pub fn orders(&self) -> OrderRepo {
        OrderRepo::new(Handle::Db(self.clone()))
    }

    /// The accounts repository (balances, deposits, transfers).
    pub fn accounts(&self) -> AccountRepo {
        AccountRepo::new(Handle::Db(self.clone()))
    }

    /// A user, their 10 newest orders and their order stats, read in one statement (so one
    /// snapshot and one round trip; see [`Dashboard`] for what was measured).
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown user.
    pub fn dashboard(
        &self,
        user_id: i64,
    ) -> impl Future<Output = Result<Dashboard>> + Send + use<> {
        let handle = Handle::Db(self.clone());
        traced("users", "dashboard", async move {
            let mut conn = handle.reader().await?;
            dashboard::fetch(&mut conn, user_id).await
        })
    }

    /// Starts a transaction that the caller owns; see [`Tx`].
    ///
    /// It begins with `BEGIN IMMEDIATE`, taking the write lock up front, so no statement inside
    /// can fail with `SQLITE_BUSY` when it upgrades from reading to writing. While it is open, the
    /// other writes of this `Db` wait for it.
    ///
    /// # Errors
    /// [`Error::Busy`] when another process holds the write lock past the busy timeout.
    pub async fn begin(&self) -> Result<Tx> {
        Tx::begin(self.write_lease().await?).await
    }

    /// Closes every connection (the WAL is checkpointed as the last one closes). Calls made
    /// afterwards fail with [`Error::Database`] (`PoolClosed`).
    pub async fn close(&self) {
        match &self.inner.connections {
            Connections::Held {
                writer, readers, ..
            } => {
                for slot in readers.iter().chain(std::iter::once(writer)) {
                    let conn = slot.lock().await.take();
                    if let Some(conn) = conn {
                        // Nothing useful can be done about a failed close; the file is intact.
                        let _ = conn.close().await;
                    }
                }
            }
            Connections::Pool(pool) => pool.close().await,
        }
    }

    /// The writer connection, waiting for other writes of this `Db` to finish.
    pub(crate) async fn write_lease(&self) -> Result<Lease> {
        match &self.inner.connections {
            Connections::Held {
                writer,
                busy_timeout,
                ..
            } => held(wait_for(writer, *busy_timeout).await?),
            Connections::Pool(pool) => Ok(Lease::Pooled(pool.acquire().await?)),
        }
    }

    /// A reader connection: the first idle one from the start of the list, else the next in turn.
    pub(crate) async fn read_lease(&self) -> Result<Lease> {
        match &self.inner.connections {
            Connections::Held {
                readers,
                next_reader,
                busy_timeout,
                ..
            } => {
                // The first idle reader, scanning from reader 0: a caller alone keeps reusing
                // one connection, whose worker thread stays hot (measured by the bench harness:
                // point gets ~30% faster than rotating over 4 worker threads); concurrent
                // callers spread over the others.
                for slot in readers {
                    if let Ok(guard) = slot.clone().try_lock_owned() {
                        return held(guard);
                    }
                }
                // All busy: queue on the next in turn.
                let start = next_reader.fetch_add(1, Ordering::Relaxed) % readers.len();
                held(wait_for(&readers[start], *busy_timeout).await?)
            }
            Connections::Pool(pool) => Ok(Lease::Pooled(pool.acquire().await?)),
        }
    }
}

/// Applies the pending migrations, if any, in one `BEGIN IMMEDIATE` transaction.
///
/// sqlx's migrator takes no lock on SQLite, so two processes opening a fresh file at once
/// would both apply migration 1; holding the write lock from the start makes the second wait
/// (up to the busy timeout), then find nothing left to do. Each migration runs in a savepoint
/// inside it. A file that is already current is only checked, without the write lock, so it
/// opens while another process is writing.
async fn migrate_on(conn: &mut SqliteConnection) -> Result<()> {
    if all_applied(conn).await {
        // Nothing to apply: this only checks the applied ones against ours.
        MIGRATOR.run_direct(None, &mut *conn, false).await?;
        return Ok(());
    }
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    MIGRATOR.run_direct(None, &mut *tx, false).await?;
    tx.commit().await?;
    Ok(())
}

/// Whether every migration of this release is recorded as applied (a missing table: no).
async fn all_applied(conn: &mut SqliteConnection) -> bool {
    use sqlx::migrate::Migrate;
    let Ok(applied) = conn.list_applied_migrations(&MIGRATOR.table_name).await else {
        return false;
    };
    MIGRATOR
        .iter()
        .filter(|migration| !migration.migration_type.is_down_migration())
        .all(|migration| applied.iter().any(|done| done.version == migration.version))
}

/// Connects, retrying for up to `timeout` while the file is locked. Switching a fresh file to
/// WAL needs a moment of exclusive access that SQLite's busy handler does not wait for, so two
/// processes opening a new file at once could otherwise fail with `SQLITE_BUSY`.
async fn connect_when_free(
    options: &SqliteConnectOptions,
    timeout: Duration,
) -> Result<SqliteConnection> {
    let started = std::time::Instant::now();
    loop {
        match options.connect().await.map_err(Error::from) {
            Err(Error::Busy) if started.elapsed() < timeout => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            other => return other,
        }
    }
}

/// Waits for a held connection, at most `timeout`. A free one is taken without a timer, so a
/// runtime built without Tokio's time driver works as long as calls do not queue.
async fn wait_for(
    slot: &Slot,
    timeout: Duration,
) -> Result<OwnedMutexGuard<Option<SqliteConnection>>> {
    if let Ok(guard) = slot.clone().try_lock_owned() {
        return Ok(guard);
    }
    tokio::time::timeout(timeout, slot.clone().lock_owned())
        .await
        .map_err(|_| Error::Busy)
}

fn held(guard: OwnedMutexGuard<Option<SqliteConnection>>) -> Result<Lease> {
    OwnedMutexGuard::try_map(guard, Option::as_mut)
        .map(Lease::Held)
        .map_err(|_| Error::Database(sqlx::Error::PoolClosed))
}

/// A connection lent to one operation: a held connection of a [`Db`], or one from a pool.
#[derive(Debug)]
pub(crate) enum Lease {
    Held(OwnedMappedMutexGuard<Option<SqliteConnection>, SqliteConnection>),
    Pooled(PoolConnection<Sqlite>),
}

impl std::ops::Deref for Lease {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        match self {
            Lease::Held(conn) => conn,
            Lease::Pooled(conn) => conn,
        }
    }
}

impl std::ops::DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        match self {
            Lease::Held(conn) => conn,
            Lease::Pooled(conn) => conn,
        }
    }
}

/// Where a repository runs its statements: the database's own connections, or the connection
/// of a caller-owned transaction. Repositories hold one of these and nothing else, so the same
/// repository type (and the same copy of each query) serves both.
#[derive(Clone, Debug)]
pub(crate) enum Handle {
    Db(Db),
    Tx(Arc<Mutex<TxState>>),
}

impl Handle {
    /// A connection to read on.
    pub(crate) async fn reader(&self) -> Result<Conn> {
        match self {
            Handle::Db(db) => Ok(Conn::Lease(db.read_lease().await?)),
            Handle::Tx(state) => Conn::in_tx(state).await,
        }
    }

    /// A connection to write on.
    pub(crate) async fn writer(&self) -> Result<Conn> {
        match self {
            Handle::Db(db) => Ok(Conn::Lease(db.write_lease().await?)),
            Handle::Tx(state) => Conn::in_tx(state).await,
        }
    }
}

/// A connection for one repository call.
#[derive(Debug)]
pub(crate) enum Conn {
    Lease(Lease),
    Tx(OwnedMappedMutexGuard<TxState, SqliteConnection>),
}

impl Conn {
    async fn in_tx(state: &Arc<Mutex<TxState>>) -> Result<Conn> {
        let guard = state.clone().lock_owned().await;
        OwnedMutexGuard::try_map(guard, TxState::connection)
            .map(Conn::Tx)
            .map_err(|_| {
                Error::invalid("the transaction has already been committed or rolled back")
            })
    }

    /// Starts an all-or-nothing unit of several statements: a `BEGIN IMMEDIATE` transaction
    /// (the write lock up front, so no upgrade can fail with `SQLITE_BUSY`), or a savepoint
    /// inside a caller's transaction. Dropping it unfinished rolls it back.
    pub(crate) async fn atomic(&mut self) -> Result<sqlx::Transaction<'_, Sqlite>> {
        let tx = match self {
            Conn::Lease(conn) => conn.begin_with("BEGIN IMMEDIATE").await?,
            Conn::Tx(conn) => (**conn).begin().await?,
        };
        Ok(tx)
    }
}

impl std::ops::Deref for Conn {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        match self {
            Conn::Lease(conn) => conn,
            Conn::Tx(conn) => conn,
        }
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        match self {
            Conn::Lease(conn) => conn,
            Conn::Tx(conn) => conn,
        }
    }
}
