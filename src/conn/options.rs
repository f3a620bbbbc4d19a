//! [`DbOptions`]: where the database file is and how its connections are configured (the
//! PostgreSQL settings too, for [`Db::connect_with`](crate::Db::connect_with)).

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteSynchronous};

use super::checkpoint::{CHECKPOINT_PAGES, WAL_CHECKPOINT_BYTES};

/// The size SQLite truncates the WAL file to when it restarts it (`PRAGMA journal_size_limit`):
/// the size past which sqlrepo truncates it itself, so the two cannot drift apart.
pub(crate) const JOURNAL_SIZE_LIMIT_BYTES: u64 = WAL_CHECKPOINT_BYTES;

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
    /// Read-only connections held beside the one writer (at least 1; default 2), for every
    /// read but point gets, which read on the caller's thread (see
    /// [`direct_reads`](DbOptions::direct_reads)) and come here only when that gives up.
    ///
    /// Two, because point gets that find every reader taken are coalesced into one statement:
    /// fewer readers means more coalescing and fewer worker-thread round trips. Measured by the
    /// bench with 16 concurrent callers on 2 cores, point gets and the mixed workload got slower
    /// with every reader added past two. One reader measured as fast for gets alone, but then
    /// one long read (a stream page, a list) holds up every point get.
    pub readers: usize,
    /// How long a call waits for a lock (another process's, or this process's writer held by
    /// a long transaction) before [`Error::Busy`](crate::Error::Busy) (default 5 s).
    pub busy_timeout: Duration,
    /// Create the file when it does not exist (default true).
    pub create_if_missing: bool,
    /// Apply the embedded migrations on open (default true).
    pub migrate: bool,
    /// Carry the writes of callers that queue for the writer together in one statement
    /// (group commit; default true). Each caller's outcome is the same either way; off, every
    /// write is its own round trip and commit, as for a lone caller. For comparisons.
    pub group_writes: bool,
    /// Let point reads that find every reader taken share one statement with the other
    /// queued point reads of their kind (default true). Each caller's answer is the same
    /// either way. For comparisons.
    pub group_reads: bool,
    /// Answer point reads by key (`get`) and dashboards on the caller's own thread, on
    /// read-only connections of SQLite's C library opened as needed, instead of a round trip to
    /// a reader's worker thread (default true). The statement and the answer are the same;
    /// anything short of a clean row (a lock, an error, a value that does not decode, a read
    /// past [`DIRECT_READ_MOST_STEPS`](crate::limits::DIRECT_READ_MOST_STEPS) steps) is read
    /// again the ordinary way. For comparisons.
    pub direct_reads: bool,
    /// Run single-statement writes (a transfer, an item create or update, a group of any of
    /// them carried together) on the caller's own thread, on a read-write connection of SQLite's C library
    /// used only while the writer is leased, instead of a round trip to the writer's worker
    /// thread (default true). The statement, the one-writer queue, the checkpoints and the
    /// answer are the same; a write that does not commit cleanly there (a refusal, a lock held
    /// by another process, a full disk) has stored nothing and runs again the ordinary way,
    /// whose answer or error stands. For comparisons.
    pub direct_writes: bool,
    /// PostgreSQL: how long one statement may run before the server cancels it
    /// (`statement_timeout`, set on every connection at connect; the call fails with
    /// [`Error::Cancelled`](crate::Error::Cancelled), nothing of the statement stored; default
    /// 30 s; zero: no limit). Every statement sqlrepo sends is a point operation, a page or
    /// one batch of at most 100,000 rows: 30 s leaves a slow disk and a loaded server ample
    /// room for the largest, and stops a runaway statement of a service's own from holding a
    /// connection (and its locks) indefinitely. Ignored on SQLite.
    pub statement_timeout: Duration,
    /// PostgreSQL: how long a statement waits for a lock another session holds before it gives
    /// up (`lock_timeout`; [`Error::Busy`](crate::Error::Busy), retryable; default 5 s, the
    /// same as [`busy_timeout`](DbOptions::busy_timeout) on SQLite; zero: wait without
    /// limit). Without it a transfer from an account another session keeps locked waits as
    /// long as that session does. Ignored on SQLite.
    pub lock_timeout: Duration,
    /// PostgreSQL: how long a transaction may sit idle (open, no statement running) before
    /// the server ends its session and rolls it back (`idle_in_transaction_session_timeout`;
    /// default 60 s; zero: no limit). A [`Tx`](crate::Tx) held open and forgotten (a task
    /// stuck elsewhere) would otherwise keep its row locks, and every writer of those rows
    /// waiting; a minute is far longer than any unit of work should stay open between two of
    /// its statements. Its later calls fail, and nothing of it is stored. Ignored on SQLite.
    pub idle_in_transaction_session_timeout: Duration,
    /// PostgreSQL: with [`migrate`](DbOptions::migrate) off, check on connect that the
    /// migrations recorded in `_sqlrepo_migrations` are exactly the embedded ones (same
    /// versions, same checksums, none failed), and refuse the database with
    /// [`Error::Schema`](crate::Error::Schema) otherwise (default false). For a role that may
    /// read and write but not run DDL, with migrations applied at deploy time by another.
    pub verify_migrations: bool,
    /// PostgreSQL: create the database the URL names when it does not exist (default false:
    /// a missing database is [`Error::Config`](crate::Error::Config) naming it, so a typo in
    /// a URL is not served as an empty database).
    pub create_database: bool,
    /// PostgreSQL: connections to the primary, at most (writes, transactions, and reads
    /// without replicas; at least 1; default 16).
    pub primary_connections: usize,
    /// PostgreSQL: connections to each replica, at most (at least 1; default 8).
    pub replica_connections: usize,
    /// PostgreSQL: how long any connect may take, the first one of [`Db::connect`](crate::Db::connect)
    /// included, before [`Error::Unavailable`](crate::Error::Unavailable) (default 5 s). A
    /// replica's connect is bounded by the shorter of this and
    /// [`REPLICA_WAIT`](crate::REPLICA_WAIT), since a read does not wait longer for it.
    pub connect_timeout: Duration,
}

impl Default for DbOptions {
    /// The defaults, with no path: for [`Db::connect_with`](crate::Db::connect_with), where
    /// the URL names the database.
    fn default() -> Self {
        DbOptions::new("")
    }
}

impl DbOptions {
    /// Options for the file at `path`, with the defaults listed on each field.
    pub fn new(path: impl AsRef<Path>) -> Self {
        DbOptions {
            path: path.as_ref().to_path_buf(),
            readers: 2,
            busy_timeout: Duration::from_secs(5),
            create_if_missing: true,
            migrate: true,
            group_writes: true,
            group_reads: true,
            direct_reads: true,
            direct_writes: true,
            statement_timeout: Duration::from_secs(30),
            lock_timeout: Duration::from_secs(5),
            idle_in_transaction_session_timeout: Duration::from_secs(60),
            verify_migrations: false,
            create_database: false,
            primary_connections: 16,
            replica_connections: 8,
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// Sets whether a PostgreSQL database's recorded migrations are checked on connect when
    /// migrations are off (see [`DbOptions::verify_migrations`]).
    pub fn verify_migrations(mut self, verify: bool) -> Self {
        self.verify_migrations = verify;
        self
    }

    /// Sets whether a missing PostgreSQL database is created (see
    /// [`DbOptions::create_database`]).
    pub fn create_database(mut self, create: bool) -> Self {
        self.create_database = create;
        self
    }

    /// Sets the most connections to the PostgreSQL primary (0 is taken as 1).
    pub fn primary_connections(mut self, connections: usize) -> Self {
        self.primary_connections = connections.max(1);
        self
    }

    /// Sets the most connections to each PostgreSQL replica (0 is taken as 1).
    pub fn replica_connections(mut self, connections: usize) -> Self {
        self.replica_connections = connections.max(1);
        self
    }

    /// Sets how long a PostgreSQL connect may take (see [`DbOptions::connect_timeout`]).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
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

    /// Sets whether queued writes are carried together (see [`DbOptions::group_writes`]).
    pub fn group_writes(mut self, group: bool) -> Self {
        self.group_writes = group;
        self
    }

    /// Sets whether queued point reads share a statement (see [`DbOptions::group_reads`]).
    pub fn group_reads(mut self, group: bool) -> Self {
        self.group_reads = group;
        self
    }

    /// Sets whether point reads run on the caller's thread (see [`DbOptions::direct_reads`]).
    pub fn direct_reads(mut self, direct: bool) -> Self {
        self.direct_reads = direct;
        self
    }

    /// Sets whether single-statement writes run on the caller's thread (see
    /// [`DbOptions::direct_writes`]).
    pub fn direct_writes(mut self, direct: bool) -> Self {
        self.direct_writes = direct;
        self
    }

    /// Sets PostgreSQL's `statement_timeout` (see [`DbOptions::statement_timeout`]).
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// Sets PostgreSQL's `lock_timeout` (see [`DbOptions::lock_timeout`]).
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// Sets PostgreSQL's `idle_in_transaction_session_timeout` (see
    /// [`DbOptions::idle_in_transaction_session_timeout`]).
    pub fn idle_in_transaction_session_timeout(mut self, timeout: Duration) -> Self {
        self.idle_in_transaction_session_timeout = timeout;
        self
    }

    /// The server settings every PostgreSQL connection starts with (sent with the connection's
    /// startup message: no round trip), in milliseconds as the server takes them.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) for a limit past the server's largest
    /// (2,147,483,647 ms, about 24.8 days): the server would refuse every connection.
    #[cfg(feature = "postgres")]
    pub(crate) fn server_settings(&self) -> crate::Result<Vec<(&'static str, String)>> {
        [
            ("statement_timeout", self.statement_timeout),
            ("lock_timeout", self.lock_timeout),
            (
                "idle_in_transaction_session_timeout",
                self.idle_in_transaction_session_timeout,
            ),
        ]
        .into_iter()
        .map(|(name, limit)| Ok((name, server_milliseconds(name, limit)?.to_string())))
        .collect()
    }

    /// The pragmas every connection gets. WAL lets readers run beside the writer;
    /// `synchronous=NORMAL` is durable against application crashes in WAL mode and saves an
    /// fsync per commit; foreign keys are what stop money leaving for a missing account.
    pub(crate) fn connect_options(&self) -> SqliteConnectOptions {
        SqliteConnectOptions::new()
            .filename(&self.path)
            .foreign_keys(true)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(self.busy_timeout)
            // Most statements here are prepared once and reused; keep them all.
            .statement_cache_capacity(128)
            // A WAL file keeps its high-water size after a checkpoint unless told otherwise:
            // one big batch would leave the disk holding it until the file is closed. Truncate
            // it back to 16 MiB (about one checkpoint interval's worth, `CHECKPOINT_PAGES`)
            // whenever SQLite restarts it.
            .pragma("journal_size_limit", JOURNAL_SIZE_LIMIT_BYTES.to_string())
            // SQLite's checkpoint after a commit, at sqlrepo's interval (see
            // `CHECKPOINT_PAGES`): only writing connections run it.
            .pragma("wal_autocheckpoint", CHECKPOINT_PAGES.to_string())
    }
}

#[cfg(feature = "postgres")]
/// A limit in whole milliseconds, rounded up so that a limit under one millisecond is not taken
/// as zero (which means "no limit" to the server).
fn server_milliseconds(name: &str, limit: Duration) -> crate::Result<i32> {
    let millis = limit.as_nanos().div_ceil(1_000_000);
    i32::try_from(millis).map_err(|_| {
        crate::Error::Config(format!(
            "{name} of {limit:?} is past PostgreSQL's largest, 2147483647 ms (about 24.8 days); \
             use a shorter limit, or zero for none"
        ))
    })
}

#[cfg(all(test, feature = "postgres"))]
mod tests {
    use super::*;

    #[test]
    fn server_limits_are_whole_milliseconds_rounded_up() {
        let options = DbOptions::new("x")
            .statement_timeout(Duration::from_micros(1))
            .lock_timeout(Duration::ZERO)
            .idle_in_transaction_session_timeout(Duration::from_millis(1500));
        assert_eq!(
            options.server_settings().unwrap(),
            vec![
                ("statement_timeout", "1".to_owned()),
                ("lock_timeout", "0".to_owned()),
                ("idle_in_transaction_session_timeout", "1500".to_owned()),
            ]
        );
    }

    #[test]
    fn a_limit_past_the_servers_largest_is_a_config_error() {
        let options = DbOptions::new("x").lock_timeout(Duration::from_secs(30 * 24 * 3600));
        let err = options.server_settings().unwrap_err();
        assert!(
            matches!(&err, crate::Error::Config(message) if message.contains("lock_timeout")),
            "{err:?}"
        );
        let largest = Duration::from_millis(i32::MAX as u64);
        assert!(
            DbOptions::new("x")
                .lock_timeout(largest)
                .server_settings()
                .is_ok()
        );
    }
}
