//! [`Db`], the front door: opens a database and hands out repositories, transactions and
//! [`Handle`]s.
//!
//! A `Db` opened from a path holds one writer and a few read-only connections for its whole
//! life (see [`DbOptions`] and the connection layer, [`conn`](crate::conn)); [`Db::from_pool`]
//! keeps sqlx's pool for callers who bring their own.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sqlx::migrate::Migrator;
use sqlx::sqlite::SqlitePool;

use crate::conn::{
    Backend, Connections, DbOptions, Handle, TempFile, WalStats, backup_into, claim_backup_path,
    integrity_problems, migrate_on, migrate_service_on,
};
use crate::error::Result;
use crate::kit::traced;
use crate::tables::accounts::AccountRepo;
use crate::tables::dashboard::{self, Dashboard};
use crate::tables::items::ItemRepo;
use crate::tables::orders::OrderRepo;
use crate::tables::users::UserRepo;
use crate::tx::Tx;

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
    connections: Arc<Connections>,
}

impl Db {
    /// Opens (creating if missing) and migrates the database file at `path`: sqlrepo's
    /// migrations ([`MIGRATOR`](crate::MIGRATOR)), adopting a file migrated by sqlrepo 0.1.0
    /// as [`Db::migrate`] says. A service's own migrations run after it (see
    /// [`Db::handle`]).
    ///
    /// # Errors
    /// [`Error::Database`](crate::Error::Database) when the file cannot be opened (a missing
    /// directory); [`Error::Corrupt`](crate::Error::Corrupt) when it is not a SQLite file;
    /// [`Error::Schema`](crate::Error::Schema) when the migrations cannot run (for example the
    /// file was migrated by a newer release).
    pub async fn open(path: impl AsRef<Path>) -> Result<Db> {
        Db::open_with(DbOptions::new(path)).await
    }

    /// Opens a database file with explicit [`DbOptions`].
    ///
    /// # Errors
    /// As [`Db::open`].
    pub async fn open_with(options: DbOptions) -> Result<Db> {
        Ok(Db {
            connections: Arc::new(Connections::open(&options, None).await?),
        })
    }

    /// A private, migrated database for tests and demos, gone when the last clone of the
    /// `Db` (and the last repository or [`Handle`] taken from it) is dropped.
    ///
    /// It is a fresh file in the system's temporary directory, opened exactly like
    /// [`Db::open`] (WAL, one writer, read-only readers) and deleted on drop. So it behaves as
    /// production does: a reader does not see a [`Tx`]'s writes before they commit, and reading
    /// while a transaction is open does not wait for it. (SQLite's `:memory:` is private to one
    /// connection, and its `memdb` VFS blocks readers while a writer holds its lock: neither
    /// can give that.)
    ///
    /// # Errors
    /// [`Error::Database`](crate::Error::Database) if the temporary directory is not writable.
    pub async fn in_memory() -> Result<Db> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "sqlrepo-{}-{}-{}.db",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            time::OffsetDateTime::now_utc().unix_timestamp_nanos()
        ));
        let temp = TempFile(path.clone());
        let options = DbOptions::new(&path).readers(2);
        Ok(Db {
            connections: Arc::new(Connections::open(&options, Some(temp)).await?),
        })
    }

    /// Opens the database a URL names, so that moving from one SQLite file to PostgreSQL is a
    /// change of configuration, not of code:
    ///
    /// - `sqlite://path/app.db` (or `sqlite:app.db`): the file, as [`Db::open`];
    ///   `sqlite::memory:` is [`Db::in_memory`];
    /// - `postgres://user@host:port/db` (or `postgresql://`): that PostgreSQL database, with the
    ///   cargo feature `postgres`; sqlrepo's PostgreSQL migrations run on connect, as they do
    ///   on SQLite. The database must exist (unlike a SQLite file, it is not created: see
    ///   [`DbOptions::create_database`]), and the connect gives up after
    ///   [`DbOptions::connect_timeout`] (5 s). See [`Db::connect_replicated`] for read replicas
    ///   and [`Db::connect_with`] for the other settings (pool sizes, migrations off or
    ///   verified). The `Db`'s `Debug` shows host, port, database and user, never a password.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) for a URL of another scheme, or a `postgres://`
    /// URL when the crate was built without the `postgres` feature, or a PostgreSQL database
    /// that does not exist (named in the message); [`Error::Unavailable`](crate::Error::Unavailable)
    /// when no connection is made within the connect timeout; otherwise as [`Db::open`]
    /// (other connection failures are [`Error::Database`](crate::Error::Database)).
    pub async fn connect(url: &str) -> Result<Db> {
        Db::connect_with(url, DbOptions::default()).await
    }

    /// [`Db::connect`] with explicit [`DbOptions`]: for a SQLite URL they are
    /// [`Db::open_with`]'s (the URL's path replacing `options.path`); for PostgreSQL, their
    /// PostgreSQL fields apply (`migrate`, `verify_migrations`, `create_database`,
    /// `primary_connections`, `replica_connections`, `connect_timeout`, and the server-side
    /// limits `statement_timeout`, `lock_timeout` and `idle_in_transaction_session_timeout`,
    /// set on every connection as it connects).
    ///
    /// ```no_run
    /// # async fn f() -> sqlrepo::Result<()> {
    /// use std::time::Duration;
    /// use sqlrepo::{Db, DbOptions};
    /// // A role without DDL rights: the schema is migrated at deploy time; check it matches.
    /// let options = DbOptions::default()
    ///     .migrate(false)
    ///     .verify_migrations(true)
    ///     .primary_connections(32)
    ///     .connect_timeout(Duration::from_secs(2));
    /// let db = Db::connect_with("postgres://app@db.internal/prod", options).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Db::connect`]; on PostgreSQL also [`Error::Config`](crate::Error::Config) naming
    /// the database when it does not exist (unless `create_database`),
    /// [`Error::Unavailable`](crate::Error::Unavailable) when no connection is made within
    /// `connect_timeout`, and [`Error::Schema`](crate::Error::Schema) when
    /// `verify_migrations` finds the recorded migrations differ from this release's;
    /// [`Error::Config`](crate::Error::Config) also for a limit past the server's largest
    /// (2,147,483,647 ms).
    pub async fn connect_with(url: &str, options: DbOptions) -> Result<Db> {
        match crate::conn::Target::parse(url)? {
            crate::conn::Target::SqliteFile(path) => {
                Db::open_with(DbOptions { path, ..options }).await
            }
            crate::conn::Target::SqliteMemory => Db::in_memory().await,
            crate::conn::Target::Postgres(url) => {
                Db::connect_replicated_with(&url, &[], options).await
            }
        }
    }

    /// Opens a PostgreSQL primary and its streaming read replicas (cargo feature `postgres`):
    /// writes and every [`Tx`] go to the primary, reads to the replicas, and a caller reads its
    /// own writes: a read made through this `Db` after one of its writes returned sees that
    /// write, even on an asynchronous replica (a replica is read only once it has replayed the
    /// primary's log that far; otherwise the read goes to the primary). A replica that is down
    /// or behind is skipped, after a bounded wait, not waited on. Migrations run on the
    /// primary.
    ///
    /// With no replicas this is [`Db::connect`] on `primary`.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) for a URL that is not `postgres://`, or when the
    /// crate was built without the `postgres` feature; [`Error::Database`](crate::Error::Database)
    /// when the primary cannot be reached (replicas that cannot be reached are skipped).
    pub async fn connect_replicated(primary: &str, replicas: &[&str]) -> Result<Db> {
        Db::connect_replicated_with(primary, replicas, DbOptions::default()).await
    }

    /// [`Db::connect_replicated`] with explicit [`DbOptions`] (their PostgreSQL fields, as
    /// [`Db::connect_with`] says).
    ///
    /// # Errors
    /// As [`Db::connect_with`] for the primary; replicas that cannot be reached are skipped.
    pub async fn connect_replicated_with(
        primary: &str,
        replicas: &[&str],
        options: DbOptions,
    ) -> Result<Db> {
        Ok(Db {
            connections: Arc::new(
                Connections::connect_postgres(primary, replicas, &options).await?,
            ),
        })
    }

    /// Wraps a pool the caller configured. Nothing is migrated (call [`Db::migrate`]).
    ///
    /// sqlrepo's rules need the pool's connections to keep SQLite's safeguards on, so before
    /// the first write through this `Db` a pool with `foreign_keys` off (the ledger relies on
    /// foreign keys to refuse transfers to missing accounts), with `CHECK` constraints ignored,
    /// or with no rollback journal is refused with [`Error::Config`](crate::Error::Config), and
    /// nothing is written.
    pub fn from_pool(pool: SqlitePool) -> Db {
        Db {
            connections: Arc::new(Connections::from_pool(pool)),
        }
    }

    /// Applies sqlrepo's migrations ([`MIGRATOR`](crate::MIGRATOR)) that have not run yet,
    /// recording them in `_sqlrepo_migrations`; a service's own migrator keeps sqlx's default
    /// `_sqlx_migrations`, and neither refuses the other's versions.
    ///
    /// A file migrated by sqlrepo 0.1.0, which recorded its migrations in `_sqlx_migrations`,
    /// is adopted first, in the same `BEGIN IMMEDIATE` transaction: sqlrepo's rows there are
    /// checked against this release and moved to `_sqlrepo_migrations` as they were (their
    /// times and checksums); the service's rows stay. Of several processes opening such a file
    /// at once, the first adopts it and the others find it done.
    ///
    /// # Errors
    /// [`Error::Schema`](crate::Error::Schema) when the database holds a migration this release
    /// does not know, or one that changed since it ran (also one recorded by 0.1.0: then
    /// nothing is adopted); [`Error::Busy`](crate::Error::Busy) when another writer holds the
    /// lock.
    pub async fn migrate(&self) -> Result<()> {
        let mut conn = self.handle().writer().await?;
        // Migrations open transactions of their own: have the writer reset after them.
        conn.reset_on_return();
        match conn.backend()? {
            Backend::Sqlite(conn) => migrate_on(conn).await,
            #[cfg(feature = "postgres")]
            Backend::Postgres(conn) => crate::conn::migrate_postgres(conn).await,
        }
    }

    /// Applies a service's own migrations (its `static MIGRATOR: Migrator = sqlx::migrate!()`,
    /// recorded in sqlx's default `_sqlx_migrations`) on this database's writer; run it after
    /// [`Db::open`] has applied sqlrepo's, so the service's tables may reference ours. Running it
    /// again applies nothing.
    ///
    /// On SQLite the pending migrations run in one `BEGIN IMMEDIATE` transaction, as sqlrepo's
    /// own do: of several processes starting on one file at once, one applies them and the
    /// others wait for it (up to the busy timeout), then find nothing to do; all of them land
    /// or none. (A pending migration marked `-- no-transaction` cannot run inside one: then they
    /// run one by one, as sqlx runs them, without that lock.) On PostgreSQL sqlx's own advisory
    /// lock does the same. The writes queue with sqlrepo's on the one writer, and the future
    /// is `Send` (sqlx's `Migrator::run` on a connection is not, for every lifetime).
    ///
    /// Given [`MIGRATOR`](crate::MIGRATOR), sqlrepo's own, it is [`Db::migrate`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use sqlx::migrate::{Migration, MigrationType, Migrator};
    /// # let service_migrator = Migrator::with_migrations(vec![Migration::new(
    /// #     1,
    /// #     "notes".into(),
    /// #     MigrationType::Simple,
    /// #     sqlx::SqlStr::from_static("CREATE TABLE notes (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users (id))"),
    /// #     false,
    /// # )]);
    /// // In a service: `pub static MIGRATOR: Migrator = sqlx::migrate!();`, its migrations/.
    /// let db = sqlrepo::Db::in_memory().await?; // sqlrepo's migrations
    /// db.run_migrations(&service_migrator).await?; // then the service's
    /// db.run_migrations(&service_migrator).await?; // nothing left to apply
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Schema`](crate::Error::Schema) when the database holds a migration of this
    /// migrator that it does not know, one that changed since it ran, one that failed
    /// part-way, or one whose SQL the database refuses (a syntax error, a table that already
    /// exists), naming the version; nothing of the pending migrations is applied then on SQLite
    /// (on PostgreSQL those before the refused one stay, each its own transaction).
    /// [`Error::Busy`](crate::Error::Busy) when another process holds the write lock past the
    /// busy timeout.
    pub async fn run_migrations(&self, migrator: &Migrator) -> Result<()> {
        if std::ptr::eq(migrator, &crate::MIGRATOR) {
            return self.migrate().await;
        }
        traced("migrations", "run_migrations", async {
            let mut conn = self.handle().writer().await?;
            // Migrations open transactions of their own: have the writer reset after them.
            conn.reset_on_return();
            match conn.backend()? {
                Backend::Sqlite(conn) => migrate_service_on(conn, migrator).await,
                #[cfg(feature = "postgres")]
                Backend::Postgres(conn) => {
                    crate::conn::migrate_service_postgres(conn, migrator).await
                }
            }
        })
        .await
    }

    /// The [`Handle`] this database's repositories use: a service's own repositories take
    /// their connections from it too, so their writes queue with ours. A service's own
    /// migrations run on it with [`Db::run_migrations`].
    pub fn handle(&self) -> Handle {
        Handle::db(self.connections.clone())
    }

    /// The items repository.
    pub fn items(&self) -> ItemRepo {
        ItemRepo::new(self.handle())
    }

    /// The users repository.
    pub fn users(&self) -> UserRepo {
        UserRepo::new(self.handle())
    }

    /// The orders repository.
    pub fn orders(&self) -> OrderRepo {
        OrderRepo::new(self.handle())
    }

    /// The accounts repository (balances, deposits, transfers).
    pub fn accounts(&self) -> AccountRepo {
        AccountRepo::new(self.handle())
    }

    /// A user, their 10 newest orders and their order stats, read in one statement (so one
    /// snapshot), on the caller's thread unless the read is long (see [`Dashboard`] for what
    /// was measured).
    ///
    /// # Errors
    /// [`Error::NotFound`](crate::Error::NotFound) for an unknown user;
    /// [`Error::Overflow`](crate::Error::Overflow) when their stored order totals add up past
    /// `i64`.
    pub fn dashboard(
        &self,
        user_id: i64,
    ) -> impl Future<Output = Result<Dashboard>> + Send + use<> {
        dashboard::read(self.handle(), user_id)
    }

    /// Starts a transaction that the caller owns; see [`Tx`].
    ///
    /// It begins with `BEGIN IMMEDIATE`, taking the write lock up front, so no statement inside
    /// can fail with `SQLITE_BUSY` when it upgrades from reading to writing. While it is open, the
    /// other writes of this `Db` wait for it.
    ///
    /// # Errors
    /// [`Error::Busy`](crate::Error::Busy) when another process holds the write lock past the
    /// busy timeout.
    pub async fn begin(&self) -> Result<Tx> {
        Tx::begin(&self.connections).await
    }

    /// Writes a complete, consistent copy of the database to a new file at `path`, while other
    /// calls go on reading and writing.
    ///
    /// The copy is one snapshot (SQLite's `VACUUM INTO`, run on a read-only connection): it
    /// holds every write that returned before the backup began, and none of a transaction that
    /// was still open. Writers are not locked out (WAL lets them commit beside the snapshot),
    /// but the WAL cannot be checkpointed past the snapshot, so it grows by what is written
    /// meanwhile; each time it passes 20, 24, 32, 48 … MiB, a write waits up to
    /// [`CHECKPOINT_WAIT`](crate::CHECKPOINT_WAIT) (200 ms) for a checkpoint the snapshot
    /// cuts short, which paces the writers. The first write after the backup truncates the WAL. The copy is compacted
    /// (no free pages), synced to disk before this returns, and opens with [`Db::open`].
    /// Restore by stopping the service and putting the copy in place of the file (see
    /// [the guide's backups chapter](crate::guide::backups)).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> sqlrepo::Result<()> {
    /// use sqlrepo::{Db, NewItem};
    /// let dir = tempfile::tempdir().unwrap();
    /// let db = Db::open(dir.path().join("app.db")).await?;
    /// db.items().create(&NewItem::new("lamp", serde_json::json!({}))).await?;
    ///
    /// db.backup_to(dir.path().join("app-backup.db")).await?;
    /// let copy = Db::open(dir.path().join("app-backup.db")).await?;
    /// assert_eq!(copy.items().count().await?, 1);
    /// copy.integrity_check().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) when something already exists at `path` (it is left untouched)
    /// or the path is not valid UTF-8; [`Error::DiskFull`](crate::Error::DiskFull) when the copy does not fit (the
    /// partial copy is removed); [`Error::Io`](crate::Error::Io) when the file cannot be created or synced (a
    /// missing directory, no permission); [`Error::Busy`](crate::Error::Busy) when every reader stays taken past
    /// the busy timeout; [`Error::WrongBackend`](crate::Error::WrongBackend) on PostgreSQL.
    pub async fn backup_to(&self, path: impl AsRef<Path>) -> Result<()> {
        self.sqlite_only("backup_to", "pg_basebackup (or pg_dump)")?;
        let target = claim_backup_path(path.as_ref())?;
        // Checkpoints cannot pass the copy's snapshot; once it is done, the next write tries.
        let _long_read = self.connections.long_read();
        let mut conn = match self.handle().reader().await {
            Ok(conn) => conn,
            Err(err) => {
                // Claimed by this call and still empty: leave nothing behind.
                let _ = std::fs::remove_file(&target);
                return Err(err);
            }
        };
        backup_into(conn.statements()?, &target).await
    }

    /// Checks the whole file with SQLite's `PRAGMA integrity_check`: every page, every index
    /// against its table, every `CHECK` and `NOT NULL`; for an operator's health endpoint.
    ///
    /// It reads every page in one snapshot, on a read-only connection: about as long as reading
    /// the whole file (0.9–2.3 s for a 1M-row, 194 MiB file here), so call it every few
    /// minutes, not on every probe. Writers go on meanwhile, with the WAL growing as during
    /// [`Db::backup_to`].
    ///
    /// # Errors
    /// [`Error::Corrupt`](crate::Error::Corrupt) naming what SQLite found wrong (up to 100 problems) when the file is
    /// damaged; [`Error::Corrupt`](crate::Error::Corrupt) or [`Error::Io`](crate::Error::Io) when the file cannot even be read;
    /// [`Error::Busy`](crate::Error::Busy) when every reader stays taken past the busy timeout;
    /// [`Error::WrongBackend`](crate::Error::WrongBackend) on PostgreSQL.
    pub async fn integrity_check(&self) -> Result<()> {
        self.sqlite_only("integrity_check", "amcheck")?;
        let _long_read = self.connections.long_read();
        let mut conn = self.handle().reader().await?;
        let problems = integrity_problems(conn.statements()?).await?;
        if problems.is_empty() {
            Ok(())
        } else {
            Err(crate::Error::Corrupt(problems.join("; ")))
        }
    }

    /// What the WAL checkpoints of this `Db` did since it was opened: the largest `-wal` file
    /// seen, how many checkpoints ran and how long writes waited for them. All zeros for a
    /// `Db` made by [`Db::from_pool`], whose checkpoints are left to SQLite.
    ///
    /// The `-wal` file stays under [`WAL_BOUND_BYTES`](crate::WAL_BOUND_BYTES); the
    /// `WAL_*` constants and [the guide's operations chapter](crate::guide::operations) say
    /// how.
    pub fn wal_stats(&self) -> WalStats {
        self.connections.wal_stats()
    }

    /// Refuses an operation that exists for SQLite files only, naming PostgreSQL's own tool.
    fn sqlite_only(&self, operation: &str, instead: &str) -> Result<()> {
        if self.connections.is_postgres() {
            return Err(crate::Error::WrongBackend(format!(
                "Db::{operation} works on SQLite files; on PostgreSQL use {instead}"
            )));
        }
        Ok(())
    }

    /// Whether this `Db` is on PostgreSQL ([`Db::connect`] with a `postgres://` URL).
    pub fn is_postgres(&self) -> bool {
        self.connections.is_postgres()
    }

    /// Closes every connection (the WAL is checkpointed as the last one closes). Calls made
    /// afterwards fail with [`Error::Database`](crate::Error::Database) (`PoolClosed`).
    pub async fn close(&self) {
        self.connections.close().await;
    }
}
