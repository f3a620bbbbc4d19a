//! [`Handle`] and [`Conn`]: how a repository (ours or a service's) gets a connection to run its
//! statements on, outside or inside a transaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::sqlite::SqliteConnection;
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::backend::Backend;
use super::control;
use super::pool::{Connections, Lease, TxEvents, no_transaction_active};
use crate::error::{Error, Result};

/// Where a repository runs its statements: a database's own connections, or the connection of
/// a transaction. Cheap to clone, `Send + Sync + 'static`.
///
/// Every built-in repository holds one of these and nothing else, and a service's repository
/// for its own tables looks the same: take a [`Conn`] from [`reader`](Handle::reader) or
/// [`writer`](Handle::writer), run checked statements on [`Conn::sqlite`], and classify errors
/// with `?` (the one classifier, `From<sqlx::Error> for Error`).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> sqlrepo::Result<()> {
/// use sqlrepo::{Db, Handle};
///
/// /// A service's repository: the same shape as sqlrepo's own.
/// struct CountRepo {
///     handle: Handle,
/// }
///
/// impl CountRepo {
///     async fn items(&self) -> sqlrepo::Result<i64> {
///         let mut conn = self.handle.reader().await?;
///         // Checked at compile time, like every statement of sqlrepo's own repositories.
///         let count = sqlx::query_scalar!(r#"SELECT count(*) AS "count!: i64" FROM items"#)
///             .fetch_one(conn.statements()?)
///             .await?;
///         Ok(count)
///     }
/// }
///
/// let db = Db::in_memory().await?;
/// let repo = CountRepo { handle: db.handle() };
/// assert_eq!(repo.items().await?, 0);
///
/// // The same repository inside a transaction sees the transaction's writes.
/// let tx = db.begin().await?;
/// tx.items().create(&sqlrepo::NewItem::new("lamp", serde_json::json!({}))).await?;
/// assert_eq!(CountRepo { handle: tx.handle() }.items().await?, 1);
/// tx.rollback().await?;
/// assert_eq!(repo.items().await?, 0);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Handle {
    route: Route,
}

#[derive(Clone, Debug)]
enum Route {
    Db(Arc<Connections>),
    Tx(Arc<Mutex<TxState>>),
}

impl Handle {
    pub(crate) fn db(connections: Arc<Connections>) -> Handle {
        Handle {
            route: Route::Db(connections),
        }
    }

    /// The database's connections, for a `Handle` of a `Db` (`None` inside a `Tx`).
    pub(super) fn connections(&self) -> Option<&Arc<Connections>> {
        match &self.route {
            Route::Db(connections) => Some(connections),
            Route::Tx(_) => None,
        }
    }

    pub(crate) fn tx(state: Arc<Mutex<TxState>>) -> Handle {
        Handle {
            route: Route::Tx(state),
        }
    }

    /// A connection to read on: one of the database's read-only connections, or the
    /// transaction's own connection (which sees its uncommitted writes).
    ///
    /// # Errors
    /// [`Error::Busy`] when every reader stays taken past the busy timeout;
    /// [`Error::TxFinished`] when the transaction has already finished.
    pub async fn reader(&self) -> Result<Conn> {
        match &self.route {
            Route::Db(connections) => Ok(Conn::lease(connections.read_lease().await?)),
            Route::Tx(state) => Conn::in_tx(state).await,
        }
    }

    /// Runs the point read `read` on the caller's own thread, on a read-only connection of
    /// SQLite's C library (no worker-thread round trip): `None` inside a `Tx` (whose reads see
    /// its own writes, on its connection), on a database without direct readers, or when
    /// `read` gives up (`None`), and the caller then runs its ordinary read. `read` must be a
    /// short read (one row by its key, a dashboard) and must give up on anything but a clean
    /// answer; SQLite interrupts its statement past
    /// [`DIRECT_READ_MOST_STEPS`](crate::limits::DIRECT_READ_MOST_STEPS) steps, which is an
    /// error `read` gives up on.
    ///
    /// When it answers, it yields to the runtime once, as a read on another thread would: a
    /// read that never waits would let a task that loops over reads keep its thread from every
    /// other task (writers, timers). Spending tokio's cooperative budget instead yields only
    /// every 128 reads, a millisecond or more of reading: tasks that loop over updates beside
    /// tasks that loop over gets were then starved of most of their turns (the bench's "WAL
    /// under steady load" line counts both).
    pub async fn read_direct<T>(
        &self,
        read: impl FnOnce(&rusqlite::Connection) -> Option<T>,
    ) -> Option<T> {
        let answer = match &self.route {
            Route::Db(connections) => connections.read_direct(read),
            Route::Tx(_) => None,
        };
        // Only a read that ran here owes the runtime a turn; a caller sent on to the ordinary
        // read will wait there anyway.
        if answer.is_some() {
            tokio::task::yield_now().await;
        }
        answer
    }

    /// A connection to write on: the database's one writer (writes of this process queue for
    /// it, so they never meet `SQLITE_BUSY` among themselves), or the transaction's connection.
    ///
    /// # Errors
    /// [`Error::Busy`] when the writer stays taken past the busy timeout (a long transaction);
    /// [`Error::TxFinished`] when the transaction has already finished.
    pub async fn writer(&self) -> Result<Conn> {
        match &self.route {
            Route::Db(connections) => Ok(Conn::lease(connections.write_lease().await?)),
            Route::Tx(state) => Conn::in_tx(state).await,
        }
    }
}

/// A connection lent to one piece of work; the next caller gets it when this is dropped.
///
/// Two ways in, for two kinds of work:
///
/// - [`sqlite`](Conn::sqlite): anything, including `BEGIN` and `SAVEPOINT` of your own. When
///   the `Conn` comes back from a [`Db`](crate::Db)'s handle, sqlrepo rolls back whatever it
///   left open (one `ROLLBACK` before the connection is lent again), so a transaction a
///   service forgot, or left behind in a panic, never swallows the next caller's writes.
/// - [`statements`](Conn::statements): single statements, each complete by itself, as every
///   built-in repository runs them: no clean-up round trip. Use [`atomic`](Conn::atomic) for
///   several statements that must land together.
///
/// Inside a [`Tx`](crate::Tx) both give the transaction's connection, and a transaction that
/// SQLite rolls back by itself (a full disk, an I/O error, a trigger's `RAISE(ROLLBACK)`) is
/// noticed when the `Conn` comes back: later calls and `commit` fail with
/// [`Error::RolledBack`] instead of running outside any transaction.
///
/// What sqlrepo cannot do for a service's own statements: step them to the end. On SQLite a
/// write read with `fetch_one`/`fetch_optional` (say `INSERT … RETURNING`) is reset after its
/// first row, and a commit that fails at that point is not reported by sqlx; run writes with
/// `execute` or `fetch_all` there, as the built-in repositories do. (sqlx's PostgreSQL driver
/// reads every statement to its end, so there any fetch reports the commit.)
#[derive(Debug)]
pub struct Conn {
    lent: Lent,
}

#[derive(Debug)]
enum Lent {
    Lease(Lease),
    Tx(OwnedMutexGuard<TxState>),
}

impl Conn {
    pub(crate) fn lease(lease: Lease) -> Conn {
        Conn {
            lent: Lent::Lease(lease),
        }
    }

    async fn in_tx(state: &Arc<Mutex<TxState>>) -> Result<Conn> {
        let mut guard = state.clone().lock_owned().await;
        guard.usable()?;
        guard.undo_unfinished_unit().await?;
        guard.start_call().await?;
        Ok(Conn {
            lent: Lent::Tx(guard),
        })
    }

    /// Whether this is a connection to a PostgreSQL replica.
    pub(crate) fn on_replica(&self) -> bool {
        matches!(&self.lent, Lent::Lease(lease) if lease.on_replica())
    }

    /// The SQLite connection, for any statements (`query!(...).execute(conn.sqlite()?)`).
    ///
    /// A transaction you begin here and do not finish is rolled back when the `Conn` is
    /// dropped (before anyone else uses the connection); inside a [`Tx`](crate::Tx) the
    /// connection is the transaction's.
    ///
    /// # Errors
    /// [`Error::WrongBackend`] when the database is on PostgreSQL (use [`postgres`](Conn::postgres)
    /// or [`backend`](Conn::backend)); [`Error::RolledBack`] or [`Error::TxFinished`] inside
    /// a transaction that is over (as [`backend`](Conn::backend)).
    pub fn sqlite(&mut self) -> Result<&mut SqliteConnection> {
        self.reset_on_return();
        self.statements()
    }

    /// The connection, by backend, for statements that are each complete by themselves (as
    /// [`statements`](Conn::statements)); the built-in repositories match on it.
    ///
    /// # Errors
    /// [`Error::RolledBack`] or [`Error::TxFinished`] inside a transaction that is over.
    pub fn backend(&mut self) -> Result<Backend<'_>> {
        match &mut self.lent {
            Lent::Lease(lease) => Ok(lease.backend()),
            Lent::Tx(state) => state.backend(),
        }
    }

    /// Undoes a statement of this call that failed, so the call can go on (a diagnostic read,
    /// another attempt). Needed inside a [`Tx`](crate::Tx) on PostgreSQL, where a failed
    /// statement aborts the whole transaction until it is undone: sqlrepo puts a savepoint
    /// before every call of a `Tx`, and this rolls back to it (everything this call did is
    /// undone; the transaction's earlier calls stay). Elsewhere a failed statement undoes only
    /// itself and this does nothing.
    ///
    /// # Errors
    /// [`Error::RolledBack`] when the transaction could not be brought back (it is then over).
    pub async fn recover(&mut self) -> Result<()> {
        match &mut self.lent {
            Lent::Lease(_) => Ok(()),
            Lent::Tx(state) => state.recover_call().await,
        }
    }

    /// The PostgreSQL connection, for any statements (as [`sqlite`](Conn::sqlite) is on
    /// SQLite): what a transaction of your own leaves open is rolled back before the
    /// connection is lent again.
    ///
    /// # Errors
    /// [`Error::WrongBackend`] when the database is a SQLite file; [`Error::RolledBack`] or
    /// [`Error::TxFinished`] inside a transaction that is over (as [`backend`](Conn::backend)).
    #[cfg(feature = "postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
    pub fn postgres(&mut self) -> Result<&mut sqlx::PgConnection> {
        self.reset_on_return();
        match self.backend()? {
            Backend::Postgres(conn) => Ok(conn),
            Backend::Sqlite(_) => Err(Error::WrongBackend(
                "this Db is a SQLite file: use Conn::sqlite (Conn::postgres is for a Db opened \
                 with Db::connect on a postgres:// URL), or match on Conn::backend"
                    .to_owned(),
            )),
        }
    }

    /// Runs the single-statement write `write` on the caller's thread, on the direct writer of
    /// a `Db`'s writer lease (see [`DbOptions::direct_writes`](crate::DbOptions::direct_writes)):
    /// `None` for any other connection, or when `write` gave up (nothing stored).
    pub(crate) fn write_direct<T>(
        &self,
        write: impl FnOnce(&rusqlite::Connection) -> Option<T>,
    ) -> Option<T> {
        match &self.lent {
            Lent::Lease(lease) => lease.write_direct(write),
            _ => None,
        }
    }

    /// Has the connection rolled back before it is lent again, whatever this piece of work
    /// leaves open: for work whose transaction state is in doubt (a statement that failed at
    /// its commit, say). [`sqlite`](Conn::sqlite) does this itself. Inside a
    /// [`Tx`](crate::Tx) it does nothing: the transaction's own rules apply.
    pub fn reset_on_return(&mut self) {
        if let Lent::Lease(lease) = &mut self.lent {
            lease.set_in_doubt(true);
        }
    }

    /// The SQLite connection, for statements that are each complete by themselves (no
    /// `BEGIN`, `SAVEPOINT` or `COMMIT` of your own): no clean-up is needed when the `Conn`
    /// comes back. The built-in repositories use this.
    ///
    /// # Errors
    /// As [`sqlite`](Conn::sqlite): [`Error::WrongBackend`] on PostgreSQL, [`Error::RolledBack`] or
    /// [`Error::TxFinished`] inside a transaction that is over.
    pub fn statements(&mut self) -> Result<&mut SqliteConnection> {
        match self.backend()? {
            Backend::Sqlite(conn) => Ok(conn),
            #[cfg(feature = "postgres")]
            Backend::Postgres(_) => Err(Error::WrongBackend(
                "this Db is on PostgreSQL: use Conn::postgres, or match on Conn::backend"
                    .to_owned(),
            )),
        }
    }

    /// Starts an all-or-nothing unit of several statements: a `BEGIN IMMEDIATE` transaction
    /// on a database's writer (the write lock up front, so no upgrade can fail with
    /// `SQLITE_BUSY`), or a savepoint inside a [`Tx`](crate::Tx). Finish it with
    /// [`Atomic::commit`] or [`Atomic::rollback`]; dropped unfinished (an error path, a
    /// cancelled call) it is rolled back: before the writer is lent again, or inside a `Tx`
    /// before the transaction's next call or its commit.
    ///
    /// # Errors
    /// [`Error::Busy`] when another process holds the write lock past the busy timeout;
    /// [`Error::RolledBack`] or [`Error::TxFinished`] inside a transaction that is over;
    /// [`Error::Database`] (or a storage variant) when the database refuses the `BEGIN` or the
    /// savepoint.
    pub async fn atomic(&mut self) -> Result<Atomic<'_>> {
        match &mut self.lent {
            Lent::Lease(lease) => {
                lease.set_in_doubt(true);
                control::begin(lease.backend()).await?;
            }
            Lent::Tx(state) => control::savepoint_atomic(state.backend()?).await?,
        }
        Ok(Atomic {
            conn: self,
            finished: false,
        })
    }
}

/// An all-or-nothing unit of statements begun by [`Conn::atomic`].
#[derive(Debug)]
pub struct Atomic<'c> {
    conn: &'c mut Conn,
    finished: bool,
}

impl Atomic<'_> {
    /// The SQLite connection to run the unit's statements on.
    ///
    /// # Errors
    /// As [`Conn::statements`]: [`Error::WrongBackend`] on PostgreSQL (use
    /// [`backend`](Atomic::backend)), [`Error::RolledBack`] or [`Error::TxFinished`] inside a
    /// transaction that is over.
    pub fn sqlite(&mut self) -> Result<&mut SqliteConnection> {
        self.conn.statements()
    }

    /// The connection to run the unit's statements on, by backend.
    ///
    /// # Errors
    /// As [`Conn::backend`].
    pub fn backend(&mut self) -> Result<Backend<'_>> {
        self.conn.backend()
    }

    /// Makes the unit's statements stick (`COMMIT`, or `RELEASE` of the savepoint in a `Tx`).
    ///
    /// # Errors
    /// The commit's own failure ([`Error::DiskFull`], [`Error::Io`], [`Error::Busy`], or
    /// [`Error::Database`] for anything else the database reports): then nothing of the unit is
    /// stored. Inside a [`Tx`](crate::Tx) that is over, [`Error::RolledBack`] or
    /// [`Error::TxFinished`].
    pub async fn commit(mut self) -> Result<()> {
        match &mut self.conn.lent {
            Lent::Lease(lease) => {
                // Failed: the lease stays in doubt and is rolled back before its next use.
                control::commit(lease.backend()).await?;
                lease.set_in_doubt(false);
            }
            Lent::Tx(state) => control::release_atomic(state.backend()?).await?,
        }
        // Only now: a failure above drops the unit unfinished (see Drop).
        self.finished = true;
        Ok(())
    }

    /// Undoes the unit's statements.
    ///
    /// # Errors
    /// [`Error::Database`] (or a storage variant: [`Error::Io`], [`Error::DiskFull`]) if the
    /// database cannot roll back; the connection is then reset before it is used again. Inside
    /// a [`Tx`](crate::Tx) that is over, [`Error::RolledBack`] or [`Error::TxFinished`].
    pub async fn rollback(mut self) -> Result<()> {
        match &mut self.conn.lent {
            Lent::Lease(lease) => match control::rollback(lease.backend()).await {
                Ok(()) => lease.set_in_doubt(false),
                Err(err) if no_transaction_active(&err) => lease.set_in_doubt(false),
                Err(err) => return Err(err.into()),
            },
            Lent::Tx(state) => control::rollback_atomic(state.backend()?).await?,
        }
        self.finished = true;
        Ok(())
    }
}

impl Drop for Atomic<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        match &mut self.conn.lent {
            // Still in doubt: the lease rolls back before the writer is lent again.
            Lent::Lease(_) => {}
            // Undone before the transaction's next call or its commit (see TxState).
            Lent::Tx(state) => state.unfinished_unit = true,
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Lent::Tx(state) = &mut self.lent {
            state.after_call();
        }
    }
}

/// The connection of an open transaction, and whether the transaction can still commit.
#[derive(Debug)]
pub(crate) struct TxState {
    /// The writer, from `BEGIN IMMEDIATE` until the transaction is over.
    lease: Option<Lease>,
    /// Counts transactions ended on the writer, and its value after our `BEGIN`: a change means
    /// SQLite (or someone's raw `COMMIT`/`ROLLBACK`) ended this one.
    events: Arc<TxEvents>,
    began_at: u64,
    /// Why the transaction can no longer commit, once it cannot.
    dead: Option<&'static str>,
    /// An [`Atomic`] unit (savepoint) was dropped unfinished, by an error path or a cancelled
    /// call: its statements are rolled back before anything else runs in the transaction.
    unfinished_unit: bool,
    /// Set by the `Tx` when it is dropped while one of its calls is running (it cannot take
    /// the lock then); the call finishes the transaction when its `Conn` comes back.
    abandoned: Arc<AtomicBool>,
    /// On PostgreSQL: the savepoint of the current (or next) call is open (see `start_call`).
    call_open: bool,
    /// On PostgreSQL: a call has run since that savepoint was put.
    call_used: bool,
    /// On PostgreSQL: the last call was dropped unfinished (its caller gave up on it): its
    /// statement may still run, and what it did is undone before anything else runs.
    call_given_up: bool,
}

impl TxState {
    /// Begins a transaction on the writer with `BEGIN IMMEDIATE`.
    pub(crate) async fn begin(connections: &Connections) -> Result<TxState> {
        let mut lease = connections.write_lease().await?;
        let events = lease.tx_events().await?;
        // In doubt until COMMIT or ROLLBACK is answered: if this future or the `Tx` is dropped
        // anywhere in between, the lease rolls back before the writer is lent again.
        lease.set_in_doubt(true);
        let call_open = match lease.backend() {
            // The first call's savepoint comes with the BEGIN (see `start_call`).
            #[cfg(feature = "postgres")]
            Backend::Postgres(conn) => {
                control::begin_with_call(conn).await?;
                true
            }
            sqlite => {
                control::begin(sqlite).await?;
                false
            }
        };
        Ok(TxState {
            lease: Some(lease),
            began_at: events.ended(),
            events,
            dead: None,
            unfinished_unit: false,
            abandoned: Arc::default(),
            call_open,
            call_used: false,
            call_given_up: false,
        })
    }

    /// Whether calls may run: the transaction is open and SQLite has not ended it.
    fn usable(&self) -> Result<()> {
        if let Some(reason) = self.dead {
            return Err(Error::RolledBack(reason.to_owned()));
        }
        if self.lease.is_none() {
            return Err(Error::TxFinished);
        }
        Ok(())
    }

    fn backend(&mut self) -> Result<Backend<'_>> {
        self.usable()?;
        match self.lease.as_mut() {
            Some(lease) => Ok(lease.backend()),
            None => Err(Error::invalid("the transaction is over")),
        }
    }

    /// Rolls back the savepoint of an [`Atomic`] unit that was dropped unfinished, so a failed
    /// or cancelled call leaves nothing behind in the transaction. If even that fails, the
    /// transaction cannot be trusted and is over.
    async fn undo_unfinished_unit(&mut self) -> Result<()> {
        if !self.unfinished_unit {
            return Ok(());
        }
        let undone = control::rollback_atomic(self.backend()?).await;
        self.unfinished_unit = false;
        if let Err(err) = undone {
            self.kill("a failed call's statements could not be undone");
            return Err(err.into());
        }
        Ok(())
    }

    /// Puts a savepoint before a call, on PostgreSQL: there a failed statement aborts the whole
    /// transaction, while on SQLite it undoes only itself and the transaction goes on. With the
    /// savepoint, a call that failed is rolled back alone (at the next call, or at commit), so
    /// a `Tx` means the same on both backends. Nothing on SQLite.
    ///
    /// It costs one round trip per call: the first call's savepoint comes with the `BEGIN`,
    /// and each later one is sent with the `RELEASE` of the one before, in one message (or,
    /// after a call that failed, is the `ROLLBACK TO` that undoes it, which keeps the
    /// savepoint). So a `Tx` of n calls sends n + 2 round trips besides its statements
    /// (`BEGIN`, the n − 1 moves, the last `RELEASE`, `COMMIT`), not 2n + 2.
    async fn start_call(&mut self) -> Result<()> {
        if !self.on_postgres() {
            return Ok(());
        }
        self.undo_given_up_call().await?;
        #[cfg(feature = "postgres")]
        {
            let open_and_used = (self.call_open, self.call_used);
            if let Backend::Postgres(conn) = self.backend()? {
                let opened = match open_and_used {
                    (true, false) => Ok(()),
                    (true, true) => control::next_call(conn).await,
                    (false, _) => control::savepoint_call(conn).await,
                };
                if let Err(err) = opened {
                    self.kill("the connection to PostgreSQL failed during the transaction");
                    return Err(err.into());
                }
                self.call_open = true;
                self.call_used = true;
            }
        }
        Ok(())
    }

    /// Undoes a call that was dropped unfinished, on PostgreSQL: its statement is cancelled
    /// (it may be waiting on a lock another session holds, and would otherwise finish and
    /// commit with the `Tx` though its caller was told nothing happened), then rolled back to
    /// its savepoint, which stays open for the next call.
    async fn undo_given_up_call(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.call_given_up) || !self.call_open {
            return Ok(());
        }
        #[cfg(feature = "postgres")]
        {
            if let Some(lease) = self.lease.as_ref() {
                lease.cancel_running().await;
            }
            let undone: sqlx::Result<()> = match self.backend()? {
                Backend::Postgres(conn) => control::undo_given_up_call(conn).await,
                _ => Ok(()),
            };
            if let Err(err) = undone {
                self.kill("a call given up on could not be undone");
                return Err(err.into());
            }
            self.call_used = false;
        }
        Ok(())
    }

    /// Ends the savepoint of the last call before the commit: kept when the call succeeded,
    /// rolled back when the call left the transaction aborted (PostgreSQL's SQLSTATE 25P02).
    /// A savepoint no call used needs nothing: the `COMMIT` ends it.
    async fn finish_call(&mut self) -> Result<()> {
        self.undo_given_up_call().await?;
        if !self.call_open {
            return Ok(());
        }
        self.call_open = false;
        if !std::mem::take(&mut self.call_used) {
            return Ok(());
        }
        let ended: sqlx::Result<()> = match self.backend()? {
            #[cfg(feature = "postgres")]
            Backend::Postgres(conn) => control::end_call(conn).await,
            _ => Ok(()),
        };
        if let Err(err) = ended {
            self.kill("the connection to PostgreSQL failed during the transaction");
            return Err(err.into());
        }
        Ok(())
    }

    /// Rolls back to the savepoint of the running call (see [`Conn::recover`]).
    async fn recover_call(&mut self) -> Result<()> {
        if !self.call_open {
            return Ok(());
        }
        let recovered: sqlx::Result<()> = match self.backend()? {
            #[cfg(feature = "postgres")]
            Backend::Postgres(conn) => control::rollback_call(conn).await,
            _ => Ok(()),
        };
        if let Err(err) = recovered {
            self.kill("the connection to PostgreSQL failed during the transaction");
            return Err(err.into());
        }
        Ok(())
    }

    /// Whether the transaction runs on PostgreSQL.
    fn on_postgres(&mut self) -> bool {
        match self.lease.as_mut().map(Lease::backend) {
            #[cfg(feature = "postgres")]
            Some(Backend::Postgres(_)) => true,
            _ => false,
        }
    }

    /// Marks the transaction dead and lets the writer go (rolled back before its next use).
    fn kill(&mut self, reason: &'static str) {
        if self.lease.is_some() {
            self.dead.get_or_insert(reason);
        }
        self.lease = None;
    }

    /// Runs when a call's `Conn` comes back: notices a transaction SQLite ended during the
    /// call, and finishes a `Tx` that was dropped while the call ran.
    fn after_call(&mut self) {
        // A call dropped unfinished (see `trace::dropping_unfinished_call`).
        #[cfg(feature = "postgres")]
        if crate::trace::dropping_unfinished_call() && self.call_open {
            self.call_given_up = true;
        }
        // The call's own refusal (the primary lost or demoted) starts the failover search now,
        // not when the transaction ends.
        #[cfg(feature = "postgres")]
        if let Some(lease) = self.lease.as_mut() {
            lease.report_refusal();
        }
        if self.lease.is_some() && self.events.ended() != self.began_at {
            self.kill(
                "SQLite rolled it back after an error (a full disk, an I/O error, or a \
                 trigger's RAISE(ROLLBACK))",
            );
        }
        if self.abandoned.load(Ordering::Acquire) {
            self.kill("the Tx was dropped before it committed");
        }
    }

    /// Commits, and releases the writer.
    pub(crate) async fn commit(&mut self) -> Result<()> {
        self.after_call();
        self.usable()?;
        self.undo_unfinished_unit().await?;
        self.finish_call().await?;
        let Some(lease) = self.lease.as_mut() else {
            return Ok(());
        };
        // If the COMMIT fails (or this future is dropped before its answer), the lease stays in
        // doubt: it is rolled back before the writer is used again, so "Err" means nothing was
        // stored.
        let result = control::commit(lease.backend()).await;
        if result.is_ok() {
            lease.set_in_doubt(false);
        }
        self.lease = None;
        result?;
        Ok(())
    }

    /// Rolls back, and releases the writer.
    pub(crate) async fn rollback(&mut self) -> Result<()> {
        let Some(lease) = self.lease.as_mut() else {
            self.dead = None; // rolled back already: that is what the caller asked for
            return Ok(());
        };
        let result = control::rollback(lease.backend()).await;
        match result {
            Ok(()) => lease.set_in_doubt(false),
            Err(err) if no_transaction_active(&err) => lease.set_in_doubt(false),
            Err(err) => {
                self.lease = None;
                return Err(err.into());
            }
        }
        self.lease = None;
        Ok(())
    }

    /// The flag a `Tx` sets when it is dropped while a call holds the state.
    pub(crate) fn abandoned_flag(&self) -> Arc<AtomicBool> {
        self.abandoned.clone()
    }

    /// Gives up the transaction without waiting: the writer is released now and rolled back
    /// before its next use. If a call is running (the caller could not take the state), the
    /// call finishes the job when its `Conn` comes back.
    pub(crate) fn abandon(&mut self) {
        self.kill("the Tx was dropped before it committed");
    }
}
