//! The connections of a [`Db`](crate::Db) on PostgreSQL (cargo feature `postgres`): a pool on
//! the primary for writes, transactions and reads, and a pool per streaming replica for reads,
//! with reads routed so that a caller reads its own writes.
//!
//! # Reading one's own writes on asynchronous replicas
//!
//! A replica replays the primary's write-ahead log some milliseconds behind it, so a read sent
//! there right after a write may not see it. sqlrepo keeps one promise: a read made through a
//! `Db` after one of its writes *returned* sees that write. It keeps it like this:
//!
//! - every write lease counts itself when it comes back (`writes_done`), which is before the
//!   write's caller gets its answer;
//! - a read first makes sure it knows a WAL position of the primary taken after every write
//!   counted so far: if writes were counted since the last one it knows, it asks the primary
//!   (`pg_current_wal_lsn()`, one round trip, shared by the reads that follow until the next
//!   write); a transaction committed before that question is at or below the answer;
//! - it then reads on a replica known to have replayed that far (positions are remembered per
//!   replica, and asked again only when not far enough), and otherwise on the primary.
//!
//! So a replica that lags, or is down, costs a read at most one bounded question
//! ([`REPLICA_WAIT`]), after which it is left alone for [`REPLICA_COOLDOWN`]; reads go to
//! the primary meanwhile. Reads after no write at all need no question to the primary.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::Postgres;
use sqlx::migrate::MigrateDatabase;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};

use crate::error::{Error, Result};

/// How long a read waits for a replica (a connection, or its replay position) before it reads
/// on the primary instead.
pub const REPLICA_WAIT: Duration = Duration::from_millis(500);

/// How long a replica that failed to answer is left alone before it is tried again.
pub const REPLICA_COOLDOWN: Duration = Duration::from_secs(2);

/// Connections to the primary, at most (writes, transactions and reads without replicas).
const PRIMARY_CONNECTIONS: u32 = 16;

/// Connections to each replica, at most.
const REPLICA_CONNECTIONS: u32 = 8;

/// How long a call waits for a free connection to the primary before [`Error::Busy`].
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The primary and the replicas of one database.
#[derive(Debug)]
pub(crate) struct PgConnections {
    primary: PgPool,
    replicas: Vec<Replica>,
    next_replica: AtomicUsize,
    /// What reads need to know to read this `Db`'s writes (shared with write leases).
    writes: Arc<Writes>,
}

/// Writes counted as they return, and the newest primary WAL position known to cover them.
#[derive(Debug, Default)]
pub(crate) struct Writes {
    /// Write leases come back (writes returned to their callers, or gave up).
    done: AtomicU64,
    /// `(writes counted, a primary WAL position taken after all of them returned)`.
    known: std::sync::Mutex<(u64, i64)>,
}

impl Writes {
    /// Counts a write lease that came back.
    pub(crate) fn count(&self) {
        self.done.fetch_add(1, Ordering::AcqRel);
    }
}

#[derive(Debug)]
struct Replica {
    pool: PgPool,
    /// The newest replay position this replica reported.
    replayed: AtomicI64,
    /// Until when it is left alone after failing to answer.
    resting_until: std::sync::Mutex<Option<Instant>>,
}

impl Replica {
    fn resting(&self) -> bool {
        let until = self
            .resting_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        until.is_some_and(|until| Instant::now() < until)
    }

    fn rest(&self) {
        *self
            .resting_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(Instant::now() + REPLICA_COOLDOWN);
    }

    /// A connection to this replica, within [`REPLICA_WAIT`]; `None` (and a rest) otherwise.
    async fn acquire(&self) -> Option<PoolConnection<Postgres>> {
        match tokio::time::timeout(REPLICA_WAIT, self.pool.acquire()).await {
            Ok(Ok(conn)) => Some(conn),
            _ => {
                self.rest();
                None
            }
        }
    }

    /// Asks the replica how far it has replayed, within [`REPLICA_WAIT`], and remembers it.
    async fn refresh(&self, conn: &mut PgConnection) -> Option<i64> {
        let asked = tokio::time::timeout(
            REPLICA_WAIT,
            sqlrepo_postgres::replication::replayed_position(conn),
        )
        .await;
        match asked {
            Ok(Ok(Some(position))) => {
                self.replayed.fetch_max(position, Ordering::AcqRel);
                Some(position)
            }
            // Not a replica (promoted, or the primary's URL given twice): it cannot promise.
            Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                self.rest();
                None
            }
        }
    }
}

impl PgConnections {
    /// Connects to the primary (migrating it) and prepares the replicas' pools, which connect
    /// on first use: a replica that is down does not keep the `Db` from opening.
    pub(crate) async fn connect(primary: &str, replicas: &[&str], migrate: bool) -> Result<Self> {
        let primary_options = options(primary)?;
        let pool_options = PgPoolOptions::new()
            .max_connections(PRIMARY_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // No ping before each lease (a round trip per call); a connection the server dropped
            // fails its call once with Error::Unavailable and is replaced.
            .test_before_acquire(false);
        let primary = match pool_options
            .clone()
            .connect_with(primary_options.clone())
            .await
        {
            // As `Db::open` creates a missing file, a missing database is created (SQLSTATE
            // 3D000), by sqlx's own `CREATE DATABASE` on the server's maintenance database.
            Err(err) if sqlstate(&err).as_deref() == Some("3D000") => {
                match sqlx::Postgres::create_database(primary).await {
                    // Another process created it meanwhile (42P04): as good.
                    Err(err) if sqlstate(&err).as_deref() != Some("42P04") => {
                        return Err(err.into());
                    }
                    _ => {}
                }
                pool_options.connect_with(primary_options).await?
            }
            other => other?,
        };
        let replicas = replicas
            .iter()
            .map(|url| {
                Ok(Replica {
                    pool: PgPoolOptions::new()
                        .max_connections(REPLICA_CONNECTIONS)
                        .acquire_timeout(REPLICA_WAIT)
                        .test_before_acquire(false)
                        .connect_lazy_with(options(url)?),
                    replayed: AtomicI64::new(i64::MIN),
                    resting_until: std::sync::Mutex::new(None),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let connections = PgConnections {
            primary,
            replicas,
            next_replica: AtomicUsize::new(0),
            writes: Arc::default(),
        };
        if migrate {
            let mut conn = connections.write_conn().await?;
            migrate_postgres(&mut conn).await?;
            // The schema is a write too: reads made after this must see it.
            connections.writes.count();
        }
        Ok(connections)
    }

    /// A connection to the primary, for a write or a transaction.
    pub(crate) async fn write_conn(&self) -> Result<PoolConnection<Postgres>> {
        Ok(self.primary.acquire().await?)
    }

    /// The counter write leases report to.
    pub(crate) fn writes(&self) -> Arc<Writes> {
        self.writes.clone()
    }

    /// A connection to read on: a replica that has replayed every write this `Db` returned,
    /// else the primary.
    pub(crate) async fn read_conn(&self) -> Result<PoolConnection<Postgres>> {
        if self.replicas.is_empty() {
            return self.write_conn().await;
        }
        let needed = self.needed_position().await?;
        let count = self.replicas.len();
        let start = self.next_replica.fetch_add(1, Ordering::Relaxed) % count;
        let order = (0..count).map(|i| &self.replicas[(start + i) % count]);
        let mut behind = Vec::new();
        for replica in order {
            if replica.resting() {
                continue;
            }
            if replica.replayed.load(Ordering::Acquire) >= needed {
                if let Some(conn) = replica.acquire().await {
                    return Ok(conn);
                }
            } else {
                behind.push(replica);
            }
        }
        // None known to be far enough: ask one, once, then read on the primary.
        if let Some(replica) = behind.first()
            && let Some(mut conn) = replica.acquire().await
            && replica
                .refresh(&mut conn)
                .await
                .is_some_and(|replayed| replayed >= needed)
        {
            return Ok(conn);
        }
        self.write_conn().await
    }

    /// A primary WAL position at or past every write this `Db` has returned.
    async fn needed_position(&self) -> Result<i64> {
        let done = self.writes.done.load(Ordering::Acquire);
        {
            let known = self
                .writes
                .known
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if known.0 >= done {
                return Ok(known.1);
            }
        }
        // Asked after reading `done`: every write counted in it had returned, so had committed.
        let mut conn = self.primary.acquire().await?;
        let position = sqlrepo_postgres::replication::current_position(&mut conn).await?;
        let mut known = self
            .writes
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if done > known.0 {
            known.0 = done;
        }
        known.1 = known.1.max(position);
        Ok(position)
    }

    /// Closes every pool.
    pub(crate) async fn close(&self) {
        self.primary.close().await;
        for replica in &self.replicas {
            replica.pool.close().await;
        }
    }
}

/// The SQLSTATE of a database error.
fn sqlstate(err: &sqlx::Error) -> Option<String> {
    err.as_database_error()
        .and_then(|db| db.code())
        .map(|code| code.into_owned())
}

/// Connection options from a URL.
fn options(url: &str) -> Result<PgConnectOptions> {
    url.parse()
        .map_err(|err: sqlx::Error| Error::Config(format!("cannot read the PostgreSQL URL: {err}")))
}

/// Applies sqlrepo's PostgreSQL migrations that have not run (sqlx takes an advisory lock, so
/// several processes starting at once apply each migration once).
pub(crate) async fn migrate_postgres(conn: &mut PgConnection) -> Result<()> {
    // `run_direct` on the connection itself: `run` wants an `Acquire`, whose bounds make the
    // future not `Send` for every lifetime (so not spawnable).
    sqlrepo_postgres::MIGRATOR
        .run_direct(None, conn, false)
        .await?;
    Ok(())
}
