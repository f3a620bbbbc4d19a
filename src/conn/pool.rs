//! The connections a [`Db`](crate::Db) holds: one writer and a few read-only readers, each held
//! for the life of the database behind an async mutex, or a caller's `SqlitePool`.
//!
//! # Why one held writer and a few held readers
//!
//! sqlx-sqlite runs every statement on the connection's worker thread, so a statement costs one
//! round trip between threads (25–80 µs here) whatever SQLite does. sqlx's `Pool` adds up to two
//! more: it pings a connection before lending it (unless `test_before_acquire(false)`) and always
//! pings it again when it comes back (measured: 28–31 µs per point get on a held connection,
//! 42–85 µs through a default pool). So connections are held:
//!
//! - **one writer**: every write goes through it, so writers of this process queue in Rust
//!   instead of fighting over SQLite's write lock (no `SQLITE_BUSY` between them, and no busy-wait
//!   sleeps), and a write costs exactly one round trip;
//! - **`readers` read-only connections** (default 4): WAL lets them read while the writer writes;
//!   a read takes the first idle one, so reads never wait behind writes.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool};
use sqlx::{ConnectOptions, Connection, Sqlite};
use tokio::sync::{Mutex, OwnedMappedMutexGuard, OwnedMutexGuard};

use super::checkpoint::{Checkpointer, LongRead, WalStats};
use super::migrate::migrate_on;
use super::options::DbOptions;
use crate::error::{Error, Result};

/// A connection held for the life of the database; `None` once closed.
type Slot = Arc<Mutex<Option<SqliteConnection>>>;

/// Every connection of one database, shared by the `Db` and every [`Handle`](super::Handle)
/// taken from it.
#[derive(Debug)]
pub(crate) struct Connections {
    kind: Kind,
    /// Set for a private temporary database: the file to delete once the connections are gone
    /// (declared after `kind`, so it is dropped after them).
    #[expect(dead_code, reason = "held only for its Drop")]
    temp_file: Option<TempFile>,
}

#[derive(Debug)]
enum Kind {
    Held {
        writer: Slot,
        readers: Vec<Slot>,
        next_reader: AtomicUsize,
        /// How long a call waits for a connection held by another call of this process (a
        /// long `Tx`, say) before it gives up with [`Error::Busy`], as SQLite does for locks
        /// held by other processes.
        busy_timeout: Duration,
        /// Keeps the WAL under its bound (issue 13; see `checkpoint`).
        checkpoints: Checkpointer,
    },
    Pool(SqlitePool),
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
        // Readers are read-only, so a write can never slip past the single writer.
        let mut readers = Vec::with_capacity(options.readers.max(1));
        for _ in 0..options.readers.max(1) {
            let reader = base.clone().read_only(true).connect().await?;
            readers.push(Arc::new(Mutex::new(Some(reader))));
        }
        let checkpoints = Checkpointer::open(&base).await?;
        Ok(Connections {
            kind: Kind::Held {
                writer: Arc::new(Mutex::new(Some(writer))),
                readers,
                next_reader: AtomicUsize::new(0),
                busy_timeout: options.busy_timeout,
                checkpoints,
            },
            temp_file,
        })
    }

    /// A caller's pool, used as it is.
    pub(crate) fn from_pool(pool: SqlitePool) -> Self {
        Connections {
            kind: Kind::Pool(pool),
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
                ..
            } => {
                checkpoints.close().await;
                for slot in readers.iter().chain(std::iter::once(writer)) {
                    let conn = slot.lock().await.take();
                    if let Some(conn) = conn {
                        // Nothing useful can be done about a failed close; the file is intact.
                        let _ = conn.close().await;
                    }
                }
            }
            Kind::Pool(pool) => pool.close().await,
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
                let writer = wait_for(writer, *busy_timeout).await?;
                checkpoints.before_write().await;
                held(writer)
            }
            Kind::Pool(pool) => Ok(Lease::Pooled(pool.acquire().await?)),
        }
    }

    /// What the WAL checkpoints did (zeros for a caller's pool, which this does not manage).
    pub(crate) fn wal_stats(&self) -> WalStats {
        match &self.kind {
            Kind::Held { checkpoints, .. } => checkpoints.stats(),
            Kind::Pool(_) => WalStats::default(),
        }
    }

    /// Marks a read that holds one snapshot for long (a backup, an integrity check) until the
    /// guard drops, after which the next write tries a checkpoint (none for a caller's pool).
    pub(crate) fn long_read(&self) -> Option<LongRead<'_>> {
        match &self.kind {
            Kind::Held { checkpoints, .. } => Some(checkpoints.long_read()),
            Kind::Pool(_) => None,
        }
    }

    /// A reader connection: the first idle one from the start of the list, else the next in turn.
    pub(crate) async fn read_lease(&self) -> Result<Lease> {
        match &self.kind {
            Kind::Held {
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
            Kind::Pool(pool) => Ok(Lease::Pooled(pool.acquire().await?)),
        }
    }
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

/// A connection lent to one operation: a held connection, or one from a pool.
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
