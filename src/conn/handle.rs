//! [`Handle`] and [`Conn`]: how a repository (ours or a service's) gets a connection to run its
//! statements on, outside or inside a transaction.

use std::sync::Arc;

use sqlx::sqlite::SqliteConnection;
use sqlx::{Connection, SqlSafeStr, Sqlite};
use sqlx_core::transaction::TransactionManager;
use tokio::sync::{Mutex, OwnedMappedMutexGuard, OwnedMutexGuard};

use super::pool::{Connections, Lease};
use crate::error::{Error, Result};

type Manager = <Sqlite as sqlx::Database>::TransactionManager;

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
///         // In a service this is `sqlx::query_scalar!(...)`, checked against its schema.
///         let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM items")
///             .fetch_one(conn.sqlite()?)
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
    /// [`Error::InvalidInput`] when the transaction has already finished.
    pub async fn reader(&self) -> Result<Conn> {
        match &self.route {
            Route::Db(connections) => Ok(Conn::lease(connections.read_lease().await?)),
            Route::Tx(state) => Conn::in_tx(state).await,
        }
    }

    /// A connection to write on: the database's one writer (writes of this process queue for
    /// it, so they never meet `SQLITE_BUSY` among themselves), or the transaction's connection.
    ///
    /// # Errors
    /// [`Error::Busy`] when the writer stays taken past the busy timeout (a long transaction);
    /// [`Error::InvalidInput`] when the transaction has already finished.
    pub async fn writer(&self) -> Result<Conn> {
        match &self.route {
            Route::Db(connections) => Ok(Conn::lease(connections.write_lease().await?)),
            Route::Tx(state) => Conn::in_tx(state).await,
        }
    }
}

/// A connection lent to one piece of work; the next caller gets it when this is dropped.
#[derive(Debug)]
pub struct Conn {
    lent: Lent,
}

#[derive(Debug)]
enum Lent {
    Lease(Lease),
    Tx(OwnedMappedMutexGuard<TxState, SqliteConnection>),
}

impl Conn {
    fn lease(lease: Lease) -> Conn {
        Conn {
            lent: Lent::Lease(lease),
        }
    }

    async fn in_tx(state: &Arc<Mutex<TxState>>) -> Result<Conn> {
        let guard = state.clone().lock_owned().await;
        OwnedMutexGuard::try_map(guard, TxState::connection)
            .map(|conn| Conn {
                lent: Lent::Tx(conn),
            })
            .map_err(|_| {
                Error::invalid("the transaction has already been committed or rolled back")
            })
    }

    /// The SQLite connection, to run statements on (`query!(...).execute(conn.sqlite()?)`).
    ///
    /// # Errors
    /// None on SQLite; the `Result` leaves room for other backends.
    pub fn sqlite(&mut self) -> Result<&mut SqliteConnection> {
        Ok(match &mut self.lent {
            Lent::Lease(conn) => conn,
            Lent::Tx(conn) => conn,
        })
    }

    /// Starts an all-or-nothing unit of several statements: a `BEGIN IMMEDIATE` transaction
    /// (the write lock up front, so no upgrade can fail with `SQLITE_BUSY`), or a savepoint
    /// inside a caller's transaction. Dropping it unfinished rolls it back.
    ///
    /// # Errors
    /// [`Error::Busy`] when another process holds the write lock past the busy timeout.
    pub async fn atomic(&mut self) -> Result<sqlx::Transaction<'_, Sqlite>> {
        let tx = match &mut self.lent {
            Lent::Lease(conn) => conn.begin_with("BEGIN IMMEDIATE").await?,
            Lent::Tx(conn) => (**conn).begin().await?,
        };
        Ok(tx)
    }
}

/// The connection of an open transaction; `None` once it is committed or rolled back.
#[derive(Debug)]
pub(crate) struct TxState {
    lease: Option<Lease>,
}

impl TxState {
    fn connection(&mut self) -> Option<&mut SqliteConnection> {
        self.lease.as_deref_mut()
    }

    /// Begins a transaction on the writer with `BEGIN IMMEDIATE`.
    pub(crate) async fn begin(connections: &Connections) -> Result<TxState> {
        let mut lease = connections.write_lease().await?;
        // If this future is dropped mid-BEGIN, sqlx's worker rolls the BEGIN back itself.
        Manager::begin(&mut lease, Some("BEGIN IMMEDIATE".into_sql_str())).await?;
        Ok(TxState { lease: Some(lease) })
    }

    /// Commits, and releases the writer.
    pub(crate) async fn commit(&mut self) -> Result<()> {
        // The lease stays in the state until the COMMIT is answered: if this future is dropped
        // or the COMMIT fails, dropping the state rolls back (see `roll_back_unfinished`).
        if let Some(lease) = self.lease.as_mut() {
            Manager::commit(lease).await?;
            self.lease = None;
        }
        Ok(())
    }

    /// Rolls back, and releases the writer.
    pub(crate) async fn rollback(&mut self) -> Result<()> {
        if let Some(lease) = self.lease.as_mut() {
            Manager::rollback(lease).await?;
            self.lease = None;
        }
        Ok(())
    }

    /// Rolls back without waiting (the connection's worker runs it before anything else) and
    /// releases the writer.
    pub(crate) fn abandon(&mut self) {
        if let Some(mut lease) = self.lease.take() {
            roll_back_unfinished(&mut lease);
        }
    }
}

impl Drop for TxState {
    fn drop(&mut self) {
        self.abandon();
    }
}

/// Queues a rollback of the transaction `conn` was lent for; the connection's worker runs it
/// before the next statement anyone sends, so the next user of the writer starts clean.
///
/// Unconditional, as sqlx's own `Transaction` does on drop: when a COMMIT or ROLLBACK ran but
/// its answer was never read (the future was dropped), sqlx's worker expects exactly one such
/// call and skips it; a rollback with no transaction open does nothing.
fn roll_back_unfinished(conn: &mut SqliteConnection) {
    Manager::start_rollback(conn);
}
