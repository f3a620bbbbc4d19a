//! The connections a [`Db`](crate::Db) holds: one writer and a few read-only readers, each held
//! for the life of the database behind an async mutex, or a caller's `SqlitePool`.
//!
//! # Why one held writer and a few held readers
//!
//! sqlx-sqlite runs every statement on the connection's worker thread, so a statement costs one
//! round trip between threads (tens of microseconds) whatever SQLite does. sqlx's `Pool` adds up
//! to two more: it pings a connection before lending it (unless `test_before_acquire(false)`) and
//! always pings it again when it comes back (measured, a point get through a default pool costs
//! up to three times one on a held connection). So connections are held:
//!
//! - **one writer**: every write goes through it, so writers of this process queue in Rust
//!   instead of fighting over SQLite's write lock (no `SQLITE_BUSY` between them, and no busy-wait
//!   sleeps), and a write costs exactly one round trip;
//! - **`readers` read-only connections** (default 2): WAL lets them read while the writer writes;
//!   a read takes an idle one, so reads never wait behind writes; point gets that find them all
//!   taken are coalesced (see `DbOptions::readers` for the figures), and other reads wait in
//!   line for whichever reader frees first (see `free_slots`);
//! - **direct readers** (`direct`): point gets by key skip the worker thread altogether and read
//!   on the caller's thread, on read-only connections of SQLite's C library; a get they cannot
//!   answer cleanly comes to the held readers above.
//! - **a direct writer** (`direct_write`): beside the writer, a read-write connection of
//!   SQLite's C library on which grouped writes (transfers, item updates) run on the caller's
//!   thread while the writer is leased; a write it does not commit cleanly goes to the writer.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool};
use sqlx::{ConnectOptions, Connection, Sqlite};
use tokio::sync::{Mutex, OnceCell, OwnedMappedMutexGuard, OwnedMutexGuard};

use super::backend::Backend;
use super::checkpoint::{Checkpointer, LongRead, WalStats};
use super::direct::DirectReaders;
use super::direct_write::DirectWriter;
#[cfg(feature = "postgres")]
use super::failover::Failover;
use super::free_slots::{FreeSlots, Ticket};
use super::migrate::migrate_on;
use super::options::{DbOptions, JOURNAL_SIZE_LIMIT_BYTES};
#[cfg(feature = "postgres")]
use super::pg_held::PgLent;
#[cfg(feature = "postgres")]
use super::pg_replicas::Writes;
#[cfg(feature = "postgres")]
use super::postgres::PgConnections;
use crate::error::{Error, Result};

/// Every connection of one database, shared by the `Db` and every [`Handle`](super::Handle)
/// taken from it.
#[derive(Debug)]
pub(crate) struct Connections {
    kind: Kind,
    /// State the layers above keep per database, by type (the queues of group commit).
    extensions: Extensions,
    /// Set for a private temporary database: the file to delete once the connections are gone
    /// (declared after `kind`, so it is dropped after them).
    #[expect(dead_code, reason = "held only for its Drop")]
    temp_file: Option<TempFile>,
}

#[derive(Debug)]
enum Kind {
    Held {
        writer: Arc<Slot>,
        readers: Vec<Arc<Slot>>,
        /// The readers not lent out, and the fair queue of reads waiting for one.
        free_readers: Arc<FreeSlots>,
        /// How long a call waits for a connection held by another call of this process (a
        /// long `Tx`, say) before it gives up with [`Error::Busy`], as SQLite does for locks
        /// held by other processes.
        busy_timeout: Duration,
        /// Keeps the WAL under its bound (see `checkpoint`).
        checkpoints: Checkpointer,
        /// Whether writes queued together are carried as a group (`DbOptions::group_writes`).
        group_writes: bool,
        /// Whether point reads queued together share a statement (`DbOptions::group_reads`).
        group_reads: bool,
        /// Point reads answered on the caller's thread (`DbOptions::direct_reads`).
        direct: Option<Box<DirectReaders>>,
    },
    Pool {
        pool: SqlitePool,
        /// The caller's settings, checked once before the first write (see `check_settings`).
        checked: OnceCell<()>,
    },
    /// A PostgreSQL primary and its read replicas.
    #[cfg(feature = "postgres")]
    Postgres(Box<PgConnections>),
}

/// Per-database state kept beside the connections, one value per type, made on first use.
/// It lets a module that works with the connections (group commit's queues) keep state per
/// database without this module knowing its type, so imports run one way.
#[derive(Default)]
pub(crate) struct Extensions {
    by_type: std::sync::Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
}

impl std::fmt::Debug for Extensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extensions").finish_non_exhaustive()
    }
}

impl Extensions {
    /// The value of type `T` for this database, made with `T::default()` the first time.
    pub(crate) fn get<T: Default + Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        let mut by_type = self
            .by_type
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        by_type
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Arc::new(T::default()))
            .clone()
            .downcast::<T>()
            .ok()
    }
}

/// One held connection, and what is needed to put it back in order.
#[derive(Debug)]
struct Slot {
    /// The connection; `None` once the database is closed.
    conn: Arc<Mutex<Option<SqliteConnection>>>,
    /// Set when a lease was returned while a transaction may still be open on the connection
    /// (a cancelled call, a failed `COMMIT`, a service's own statements): whoever takes the
    /// connection next rolls back first.
    needs_reset: AtomicBool,
    /// How to connect a replacement when a reset fails.
    options: SqliteConnectOptions,
    /// Counts the transactions that ended on this connection (see [`TxEvents`]).
    events: Arc<TxEvents>,
    /// The writer's only: single statements run on the caller's thread while the writer is
    /// leased (`DbOptions::direct_writes`; see `direct_write`).
    direct: Option<DirectWriter>,
}

/// How many transactions have ended (committed or rolled back, by anyone, SQLite included) on a
/// writer connection, counted by SQLite's commit and rollback hooks as they happen.
///
/// SQLite rolls a whole transaction back by itself on some errors (a full disk, an I/O error,
/// a trigger's `RAISE(ROLLBACK)`); statements sent afterwards would run outside any
/// transaction and commit one by one. A transaction that sees this count move while it is
/// open knows it is over, without a round trip to ask.
#[derive(Debug, Default)]
pub(crate) struct TxEvents {
    ended: AtomicU64,
}

impl TxEvents {
    /// The number of transactions ended so far.
    pub(crate) fn ended(&self) -> u64 {
        self.ended.load(Ordering::Acquire)
    }

    /// Installs the hooks that count on `conn`. One round trip to the connection's worker.
    async fn watch(self: &Arc<Self>, conn: &mut SqliteConnection) -> Result<()> {
        let mut handle = conn.lock_handle().await?;
        let on_commit = self.clone();
        handle.set_commit_hook(move || {
            on_commit.ended.fetch_add(1, Ordering::AcqRel);
            true // let the commit go ahead
        });
        let on_rollback = self.clone();
        handle.set_rollback_hook(move || {
            on_rollback.ended.fetch_add(1, Ordering::AcqRel);
        });
        Ok(())
    }
}

impl Slot {
    async fn open(
        options: SqliteConnectOptions,
        conn: SqliteConnection,
        direct: Option<DirectWriter>,
    ) -> Result<Arc<Slot>> {
        let slot = Slot {
            conn: Arc::new(Mutex::new(None)),
            needs_reset: AtomicBool::new(false),
            options,
            events: Arc::default(),
            direct,
        };
        let mut conn = conn;
        slot.events.watch(&mut conn).await?;
        *slot.conn.lock().await = Some(conn);
        Ok(Arc::new(slot))
    }

    /// The direct writer's count of WAL frames, for the checkpoint (see `direct_write`).
    fn direct_frames(&self) -> Option<&AtomicU64> {
        self.direct.as_ref().map(DirectWriter::wal_frames)
    }

    /// Lends the connection, waiting at most `timeout` for the call that has it, and first
    /// rolls back whatever a previous lease left open.
    async fn lend(self: &Arc<Self>, timeout: Duration) -> Result<Lease> {
        let guard = wait_for(&self.conn, timeout).await?;
        self.lend_locked(guard).await
    }

    /// Lends the connection whose lock `guard` holds.
    async fn lend_locked(
        self: &Arc<Self>,
        mut guard: OwnedMutexGuard<Option<SqliteConnection>>,
    ) -> Result<Lease> {
        if self.needs_reset.load(Ordering::Acquire) {
            self.reset(&mut guard).await?;
        }
        let conn = OwnedMutexGuard::try_map(guard, Option::as_mut)
            .map_err(|_| Error::Database(sqlx::Error::PoolClosed))?;
        Ok(Lease {
            kind: LeaseKind::Held {
                conn,
                slot: self.clone(),
                ticket: None,
            },
            in_doubt: false,
        })
    }

    /// Ends any transaction left open on the connection: `ROLLBACK`, where "no transaction is
    /// active" is the good answer. If even that fails, the connection's state is unknown, so it
    /// is closed (SQLite rolls back on close) and replaced by a fresh one.
    async fn reset(&self, guard: &mut Option<SqliteConnection>) -> Result<()> {
        let Some(conn) = guard.as_mut() else {
            return Ok(()); // closed: nothing to reset, and nothing will be lent
        };
        match sqlx::query!("ROLLBACK").execute(&mut *conn).await {
            Ok(_) => {}
            Err(err) if no_transaction_active(&err) => {}
            Err(_) => {
                if let Some(old) = guard.take() {
                    // Closing rolls back; its own failure changes nothing we can act on.
                    let _ = old.close().await;
                }
                let mut fresh = self.options.connect().await?;
                self.events.watch(&mut fresh).await?;
                *guard = Some(fresh);
            }
        }
        self.needs_reset.store(false, Ordering::Release);
        Ok(())
    }
}

/// True for SQLite's answer to a `COMMIT` or `ROLLBACK` with no transaction open.
pub(crate) fn no_transaction_active(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.message().contains("no transaction is active"))
}

/// A database file (and its `-wal` and `-shm` companions) deleted on drop.
#[derive(Debug)]
pub(crate) struct TempFile(pub(crate) PathBuf);

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

impl Connections {
    /// Opens the writer (creating and migrating the file as the options say), then the readers.
    pub(crate) async fn open(options: &DbOptions, temp_file: Option<TempFile>) -> Result<Self> {
        let base = options.connect_options();
        let writer_options = base
            .clone()
            .create_if_missing(options.create_if_missing)
            .journal_mode(SqliteJournalMode::Wal);
        let mut writer = connect_when_free(&writer_options, options.busy_timeout).await?;
        if options.migrate {
            migrate_on(&mut writer).await?;
        }
        let direct = options
            .direct_writes
            .then(|| DirectWriter::open(&options.path, JOURNAL_SIZE_LIMIT_BYTES))
            .flatten();
        // A replacement writer must not create a file that was deleted under us.
        let writer = Slot::open(writer_options.create_if_missing(false), writer, direct).await?;
        // Readers are read-only, so a write can never slip past the single writer.
        let reader_options = base.clone().read_only(true);
        let mut readers = Vec::with_capacity(options.readers.max(1));
        for _ in 0..options.readers.max(1) {
            let reader = reader_options.connect().await?;
            readers.push(Slot::open(reader_options.clone(), reader, None).await?);
        }
        let checkpoints = Checkpointer::open(&base).await?;
        Ok(Connections {
            kind: Kind::Held {
                writer,
                free_readers: FreeSlots::new(readers.len()),
                readers,
                busy_timeout: options.busy_timeout,
                checkpoints,
                group_writes: options.group_writes,
                group_reads: options.group_reads,
                direct: options
                    .direct_reads
                    .then(|| Box::new(DirectReaders::new(&options.path))),
            },
            extensions: Extensions::default(),
            temp_file,
        })
    }

    /// A PostgreSQL primary and its read replicas (cargo feature `postgres`).
    #[cfg(not(feature = "postgres"))]
    pub(crate) async fn connect_postgres(
        _primary: &str,
        _replicas: &[&str],
        _options: &DbOptions,
    ) -> Result<Self> {
        Err(Error::Config(
            "this build of sqlrepo has no PostgreSQL support: enable its cargo feature `postgres`"
                .to_owned(),
        ))
    }

    /// A PostgreSQL primary and its read replicas (cargo feature `postgres`), migrated; every
    /// connection starts with the server-side limits of `options`.
    #[cfg(feature = "postgres")]
    pub(crate) async fn connect_postgres(
        primary: &str,
        replicas: &[&str],
        options: &DbOptions,
    ) -> Result<Self> {
        Ok(Connections {
            kind: Kind::Postgres(Box::new(
                PgConnections::connect(primary, replicas, options).await?,
            )),
            extensions: Extensions::default(),
            temp_file: None,
        })
    }

    /// Whether this is a PostgreSQL database.
    pub(crate) fn is_postgres(&self) -> bool {
        #[cfg(feature = "postgres")]
        if let Kind::Postgres(_) = self.kind {
            return true;
        }
        false
    }

    /// A caller's pool, used as it is.
    pub(crate) fn from_pool(pool: SqlitePool) -> Self {
        Connections {
            kind: Kind::Pool {
                pool,
                checked: OnceCell::new(),
            },
            extensions: Extensions::default(),
            temp_file: None,
        }
    }

    /// Closes every connection (the WAL is checkpointed as the last one closes).
    pub(crate) async fn close(&self) {
        match &self.kind {
            Kind::Held {
                writer,
                readers,
                checkpoints,
                direct,
                ..
            } => {
                if let Some(direct) = direct {
                    direct.close();
                }
                if let Some(direct) = &writer.direct {
                    direct.close();
                }
                checkpoints.close().await;
                for slot in readers.iter().chain(std::iter::once(writer)) {
                    let conn = slot.conn.lock().await.take();
                    if let Some(conn) = conn {
                        // Nothing useful can be done about a failed close; the file is intact.
                        let _ = conn.close().await;
                    }
                }
            }
            Kind::Pool { pool, .. } => pool.close().await,
            #[cfg(feature = "postgres")]
            Kind::Postgres(pg) => pg.close().await,
        }
    }

    /// The writer connection, waiting for other writes of this database to finish.
    pub(crate) async fn write_lease(&self) -> Result<Lease> {
        match &self.kind {
            Kind::Held {
                writer,
                busy_timeout,
                checkpoints,
                ..
            } => {
                let lease = writer.lend(*busy_timeout).await?;
                checkpoints.before_write(writer.direct_frames()).await;
                Ok(lease)
            }
            Kind::Pool { pool, checked } => {
                let mut conn = pool.acquire().await?;
                checked
                    .get_or_try_init(|| check_settings(&mut conn))
                    .await?;
                Ok(Lease::pooled(conn))
            }
            #[cfg(feature = "postgres")]
            Kind::Postgres(pg) => Ok(Lease::postgres(
                pg.write_conn().await?,
                Some(pg.writes()),
                pg.failover(),
            )),
        }
    }

    /// The WAL's size in frames after the direct writer's last commit (`None` without one),
    /// for the tests that make sure writes really commit there.
    #[cfg(test)]
    pub(crate) fn direct_wal_frames(&self) -> Option<u64> {
        match &self.kind {
            Kind::Held { writer, .. } => Some(writer.direct_frames()?.load(Ordering::Acquire)),
            _ => None,
        }
    }

    /// The reads the direct writer answered (`None` without one), for the tests that make
    /// sure reads run there when it is free.
    #[cfg(test)]
    pub(crate) fn direct_writer_reads(&self) -> Option<u64> {
        match &self.kind {
            Kind::Held { writer, .. } => Some(writer.direct.as_ref()?.reads()),
            _ => None,
        }
    }

    /// What the WAL checkpoints did (zeros for a caller's pool, which this does not manage).
    pub(crate) fn wal_stats(&self) -> WalStats {
        match &self.kind {
            Kind::Held { checkpoints, .. } => checkpoints.stats(),
            _ => WalStats::default(),
        }
    }

    /// Marks a read that holds one snapshot for long (a backup, an integrity check) until the
    /// guard drops, after which the next write tries a checkpoint (none for a caller's pool).
    pub(crate) fn long_read(&self) -> Option<LongRead<'_>> {
        match &self.kind {
            Kind::Held { checkpoints, .. } => Some(checkpoints.long_read()),
            _ => None,
        }
    }

    /// The writer if no other call has it right now, without waiting: `None` when it is taken
    /// (or for a caller's pool, whose writes are never grouped). Like `write_lease`, it gives
    /// the WAL checkpoint its turn first.
    pub(crate) async fn write_lease_now(&self) -> Option<Result<Lease>> {
        match &self.kind {
            Kind::Held {
                writer,
                checkpoints,
                ..
            } => match writer.conn.clone().try_lock_owned() {
                Ok(guard) => {
                    let lease = writer.lend_locked(guard).await;
                    if lease.is_ok() {
                        checkpoints.before_write(writer.direct_frames()).await;
                    }
                    Some(lease)
                }
                Err(_) => None,
            },
            _ => None,
        }
    }

    /// Whether writes may be grouped: only on the held writer, where writes queue in Rust, and
    /// unless the options turned it off.
    pub(crate) fn groups_writes(&self) -> bool {
        matches!(
            self.kind,
            Kind::Held {
                group_writes: true,
                ..
            }
        )
    }

    /// Whether point reads may be coalesced: only on held readers, unless the options turned it
    /// off.
    pub(crate) fn groups_reads(&self) -> bool {
        matches!(
            self.kind,
            Kind::Held {
                group_reads: true,
                ..
            }
        )
    }

    /// Runs the point read `read` on the caller's thread (see `direct`): `None` when this
    /// database has no direct readers, none is free, or `read` gave up.
    pub(crate) fn read_direct<T>(
        &self,
        read: impl FnOnce(&rusqlite::Connection) -> Option<T>,
    ) -> Option<T> {
        match &self.kind {
            Kind::Held {
                direct: Some(direct),
                writer,
                ..
            } => {
                // The writer's direct connection, when no write holds it (never waited for):
                // its page cache is warm after its own commits (see `DirectWriter::read`).
                if let Some(on_writer) = &writer.direct
                    && let Ok(_leased) = writer.conn.try_lock()
                {
                    return on_writer.read(read);
                }
                direct.read(read)
            }
            _ => None,
        }
    }

    /// An idle reader, without waiting: `None` when every reader is taken (or for a caller's
    /// pool).
    pub(crate) async fn read_lease_now(&self) -> Option<Result<Lease>> {
        match &self.kind {
            Kind::Held {
                readers,
                free_readers,
                ..
            } => {
                let ticket = free_readers.take_now().ok()?;
                Some(lend_reader(readers, ticket).await)
            }
            _ => None,
        }
    }

    /// The per-database state kept beside the connections.
    pub(crate) fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// A connection to read on the PostgreSQL primary, for a read a replica did not answer in
    /// time (see `Handle::read`); a reader as [`Connections::read_lease`] elsewhere.
    pub(crate) async fn primary_read_lease(&self) -> Result<Lease> {
        #[cfg(feature = "postgres")]
        if let Kind::Postgres(pg) = &self.kind {
            return Ok(Lease::postgres(pg.write_conn().await?, None, pg.failover()));
        }
        self.read_lease().await
    }

    /// A reader connection: an idle one, else the first to come free, waiting in line (fairly,
    /// first come first served) at most the busy timeout.
    pub(crate) async fn read_lease(&self) -> Result<Lease> {
        match &self.kind {
            Kind::Held {
                readers,
                free_readers,
                busy_timeout,
                ..
            } => {
                // The most recently returned reader first: a caller alone keeps reusing one
                // connection, whose worker thread stays hot (measured by the bench harness:
                // point gets ~30% faster than rotating over 4 worker threads); concurrent
                // callers spread over the others.
                let ticket = free_readers
                    .take(*busy_timeout)
                    .await
                    .map_err(|_| Error::Busy)?;
                lend_reader(readers, ticket).await
            }
            Kind::Pool { pool, .. } => Ok(Lease::pooled(pool.acquire().await?)),
            #[cfg(feature = "postgres")]
            Kind::Postgres(pg) => {
                let conn = pg.read_conn().await?;
                // A read on the primary tells of its loss as a write does.
                let failover = if conn.on_replica() {
                    None
                } else {
                    pg.failover()
                };
                Ok(Lease::postgres(conn, None, failover))
            }
        }
    }
}

/// Lends the reader a ticket gives. Only ticket holders lock a reader's mutex (besides
/// `Connections::close`), so it is free; the lease keeps the ticket until it is back.
async fn lend_reader(readers: &[Arc<Slot>], ticket: Ticket) -> Result<Lease> {
    let Some(slot) = readers.get(ticket.index()) else {
        return Err(Error::Database(sqlx::Error::PoolClosed));
    };
    let guard = match slot.conn.clone().try_lock_owned() {
        Ok(guard) => guard,
        Err(_) => slot.conn.clone().lock_owned().await,
    };
    let mut lease = slot.lend_locked(guard).await?;
    if let LeaseKind::Held { ticket: held, .. } = &mut lease.kind {
        *held = Some(ticket);
    }
    Ok(lease)
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
    conn: &Arc<Mutex<Option<SqliteConnection>>>,
    timeout: Duration,
) -> Result<OwnedMutexGuard<Option<SqliteConnection>>> {
    if let Ok(guard) = conn.clone().try_lock_owned() {
        return Ok(guard);
    }
    tokio::time::timeout(timeout, conn.clone().lock_owned())
        .await
        .map_err(|_| Error::Busy)
}

/// Refuses a caller's pool whose settings would let a write break sqlrepo's rules: with
/// foreign keys off a transfer to a missing account destroys money, with CHECK constraints
/// ignored balances go negative, and without a rollback journal a transaction cannot be undone.
/// (Rollback-journal modes are accepted: a write blocked by a reader fails with
/// [`Error::Busy`], it is not acknowledged.)
async fn check_settings(conn: &mut SqliteConnection) -> Result<()> {
    // Each pragma through its table-valued function, wrapped in an expression so sqlx does not
    // look for the virtual table's columns in the schema.
    let settings = sqlx::query!(
        r#"
        SELECT coalesce((SELECT foreign_keys FROM pragma_foreign_keys()), -1)
                   AS "foreign_keys!: i64",
               coalesce((SELECT ignore_check_constraints FROM pragma_ignore_check_constraints()), -1)
                   AS "ignore_check_constraints!: i64",
               coalesce((SELECT journal_mode FROM pragma_journal_mode()), '')
                   AS "journal_mode!: String",
               coalesce((SELECT file FROM pragma_database_list() WHERE name = 'main'), '')
                   AS "file!: String"
        "#
    )
    .fetch_one(&mut *conn)
    .await?;
    if settings.foreign_keys != 1 {
        return Err(Error::Config(
            "the pool's connections have foreign_keys off; sqlrepo relies on foreign keys to \
             refuse transfers to missing accounts (use SqliteConnectOptions::foreign_keys(true))"
                .to_owned(),
        ));
    }
    if settings.ignore_check_constraints != 0 {
        return Err(Error::Config(
            "the pool's connections ignore CHECK constraints; sqlrepo relies on them to keep \
             balances from going negative (turn PRAGMA ignore_check_constraints off)"
                .to_owned(),
        ));
    }
    let journal = settings.journal_mode.to_ascii_lowercase();
    let on_disk = !settings.file.is_empty();
    if journal == "off" || (journal == "memory" && on_disk) {
        return Err(Error::Config(format!(
            "the pool's connections use journal_mode={journal}; a transaction could not be \
             rolled back safely (use WAL, the default of Db::open)"
        )));
    }
    Ok(())
}

/// A connection lent to one operation: a held connection, or one from a pool.
///
/// While `in_doubt` is set, a transaction may be open on the connection that nobody will
/// finish (it is set before a `BEGIN` and cleared once a `COMMIT` or `ROLLBACK` is answered).
/// A lease dropped in doubt is rolled back before the connection is used again: a held one by
/// whoever takes it next (and right away by a task, when a Tokio runtime is at hand), a pooled
/// one by closing it instead of returning it to the pool.
#[derive(Debug)]
pub(crate) struct Lease {
    kind: LeaseKind,
    in_doubt: bool,
}

#[derive(Debug)]
enum LeaseKind {
    Held {
        conn: OwnedMappedMutexGuard<Option<SqliteConnection>, SqliteConnection>,
        slot: Arc<Slot>,
        /// A reader's place among the free readers (declared after `conn`, so the connection
        /// is unlocked before the reader is offered to the next in line); `None` for the writer.
        ticket: Option<Ticket>,
    },
    Pooled {
        conn: PoolConnection<Sqlite>,
        /// Hooks installed on this pooled connection, for a transaction that needs them.
        events: Option<Arc<TxEvents>>,
    },
    /// A connection to PostgreSQL; a write lease counts itself when it comes back, so reads
    /// on replicas after it know to wait for it (see `postgres`).
    #[cfg(feature = "postgres")]
    Postgres {
        /// Taken only by `Drop`, to be handed back in doubt when it is.
        conn: Option<PgLent>,
        writes: Option<Arc<Writes>>,
        /// On the primary of a `Db` given several hosts: told when this lease's own call was
        /// refused as the primary's loss or demotion would be (see `failover`).
        failover: Option<Arc<Failover>>,
        /// `error::refusals_so_far()` when lent (or last reported): refusals after it are
        /// this lease's.
        since: u64,
    },
}

impl Lease {
    fn pooled(conn: PoolConnection<Sqlite>) -> Lease {
        Lease {
            kind: LeaseKind::Pooled { conn, events: None },
            in_doubt: false,
        }
    }

    #[cfg(feature = "postgres")]
    fn postgres(
        conn: PgLent,
        writes: Option<Arc<Writes>>,
        failover: Option<Arc<Failover>>,
    ) -> Lease {
        Lease {
            kind: LeaseKind::Postgres {
                conn: Some(conn),
                writes,
                failover,
                since: crate::error::refusals_so_far(),
            },
            in_doubt: false,
        }
    }

    /// Starts the search for a new primary when this lease's own call, on the primary of a
    /// `Db` given several hosts, was refused as the primary's loss or demotion would be.
    #[cfg(feature = "postgres")]
    pub(crate) fn report_refusal(&mut self) {
        if let LeaseKind::Postgres {
            failover: Some(failover),
            since,
            ..
        } = &mut self.kind
            && crate::error::refusal_seen_since(*since)
        {
            *since = crate::error::refusals_so_far();
            failover.search();
        }
    }

    /// The connection, by backend.
    pub(crate) fn backend(&mut self) -> Backend<'_> {
        match &mut self.kind {
            LeaseKind::Held { conn, .. } => Backend::Sqlite(conn),
            LeaseKind::Pooled { conn, .. } => Backend::Sqlite(conn),
            #[cfg(feature = "postgres")]
            LeaseKind::Postgres { conn, .. } => Backend::Postgres(
                conn.as_mut()
                    .expect("a lease's connection is taken only on drop")
                    .conn(),
            ),
        }
    }

    /// Cancels the statement a PostgreSQL connection may still be running for a call its
    /// caller gave up on.
    #[cfg(feature = "postgres")]
    pub(crate) async fn cancel_running(&self) {
        if let LeaseKind::Postgres {
            conn: Some(conn), ..
        } = &self.kind
        {
            conn.cancel_running().await;
        }
    }

    /// Whether this is a connection to a PostgreSQL replica.
    pub(crate) fn on_replica(&self) -> bool {
        #[cfg(feature = "postgres")]
        if let LeaseKind::Postgres {
            conn: Some(conn), ..
        } = &self.kind
        {
            return conn.on_replica();
        }
        false
    }

    /// Runs the single-statement write `write` on the caller's thread (see `direct_write`):
    /// `None` when this is not a held writer's lease with a direct writer, when the lease is
    /// in doubt (a transaction may be open on sqlx's writer, holding the write lock), or when
    /// `write` gave up, having stored nothing.
    pub(crate) fn write_direct<T>(
        &self,
        write: impl FnOnce(&rusqlite::Connection) -> Option<T>,
    ) -> Option<T> {
        match &self.kind {
            LeaseKind::Held {
                slot, ticket: None, ..
            } if !self.in_doubt => slot.direct.as_ref()?.write(write),
            _ => None,
        }
    }

    /// Marks (or clears) the connection as possibly holding a transaction nobody will finish.
    pub(crate) fn set_in_doubt(&mut self, in_doubt: bool) {
        self.in_doubt = in_doubt;
    }

    /// The counter of transactions ended on this connection, installing the hooks on a pooled
    /// connection first (held writers have them from the start).
    pub(crate) async fn tx_events(&mut self) -> Result<Arc<TxEvents>> {
        match &mut self.kind {
            LeaseKind::Held { slot, .. } => Ok(slot.events.clone()),
            LeaseKind::Pooled { conn, events } => {
                if let Some(events) = events {
                    return Ok(events.clone());
                }
                let fresh = Arc::new(TxEvents::default());
                fresh.watch(conn).await?;
                *events = Some(fresh.clone());
                Ok(fresh)
            }
            // PostgreSQL ends a transaction by itself only with the connection (a statement
            // error aborts it but leaves it open), which the next statement reports.
            #[cfg(feature = "postgres")]
            LeaseKind::Postgres { .. } => Ok(Arc::default()),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        #[cfg(feature = "postgres")]
        self.report_refusal();
        #[cfg(feature = "postgres")]
        if let LeaseKind::Postgres { conn, writes, .. } = &mut self.kind {
            if let Some(writes) = writes {
                writes.count();
            }
            // A cancelled call may leave its statement running, or its answer on the way (see
            // `trace::dropping_unfinished_call`): cancelled, drained and rolled back before the
            // slot lends the connection again.
            let unfinished = crate::trace::dropping_unfinished_call();
            if (self.in_doubt || unfinished)
                && let Some(conn) = conn.take()
            {
                conn.give_back_in_doubt(unfinished);
            }
            return;
        }
        if !self.in_doubt {
            return;
        }
        match &mut self.kind {
            LeaseKind::Held { slot, ticket, .. } => {
                slot.needs_reset.store(true, Ordering::Release);
                // Roll back now rather than at the next call, so a transaction left open does
                // not keep the write lock (and other processes) waiting meanwhile. The task
                // queues for the connection like any caller, after this lease is released; a
                // reader's ticket goes with it, so no read is lent the reader meanwhile.
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let slot = slot.clone();
                    let ticket = ticket.take();
                    runtime.spawn(async move {
                        let mut guard = slot.conn.clone().lock_owned().await;
                        if slot.needs_reset.load(Ordering::Acquire) {
                            // A failure leaves the flag set: the next caller tries again.
                            let _ = slot.reset(&mut guard).await;
                        }
                        drop(guard);
                        drop(ticket);
                    });
                }
            }
            // SQLite rolls back what a closed connection left open.
            LeaseKind::Pooled { conn, .. } => conn.close_on_drop(),
            #[cfg(feature = "postgres")]
            LeaseKind::Postgres { .. } => {}
        }
    }
}
