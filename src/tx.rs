//! Transactions that the caller owns: several repositories' operations, all or nothing.
//!
//! A [`Tx`] holds the writer connection from `BEGIN IMMEDIATE` to [`Tx::commit`]. Its repository
//! accessors return the same [`ItemRepo`], [`OrderRepo`], ... types as [`Db`](crate::Db)'s, bound
//! to the transaction's connection, so every query has exactly one copy. Dropping a `Tx` (or
//! cancelling the future that owns it) without committing rolls it back.

use std::future::Future;
use std::sync::Arc;

use sqlx::sqlite::SqliteConnection;
use sqlx::{SqlSafeStr, Sqlite};
use sqlx_core::transaction::TransactionManager;
use tokio::sync::Mutex;

use crate::accounts::AccountRepo;
use crate::dashboard::{self, Dashboard};
use crate::db::{Handle, Lease};
use crate::error::Result;
use crate::items::ItemRepo;
use crate::orders::OrderRepo;
use crate::trace::traced;
use crate::users::UserRepo;

type Manager = <Sqlite as sqlx::Database>::TransactionManager;

/// A transaction the caller owns, begun by [`Db::begin`](crate::Db::begin).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> sqlrepo::Result<()> {
/// use sqlrepo::{Db, NewAccount, NewOrder, NewUser, Transfer};
/// let db = Db::in_memory().await?;
/// let buyer = db.users().create(&NewUser::new("ann@example.com", "Ann")).await?;
/// let wallet = db.accounts().open(&NewAccount { user_id: Some(buyer), balance_cents: 5_000 }).await?;
/// let shop = db.accounts().open(&NewAccount { user_id: None, balance_cents: 0 }).await?;
///
/// // Create the order and pay for it, or do neither.
/// let tx = db.begin().await?;
/// let order = tx.orders().create(&NewOrder::new(buyer, 1_250)).await?;
/// tx.accounts().transfer(&Transfer::new(wallet, shop, 1_250)).await?;
/// tx.commit().await?;
///
/// assert_eq!(db.accounts().get(shop).await?.unwrap().balance_cents, 1_250);
/// assert!(db.orders().get(order).await?.is_some());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Tx {
    state: Arc<Mutex<TxState>>,
}

/// The connection of an open transaction; `None` once it is committed or rolled back.
#[derive(Debug)]
pub(crate) struct TxState {
    lease: Option<Lease>,
}

impl TxState {
    pub(crate) fn connection(&mut self) -> Option<&mut SqliteConnection> {
        self.lease.as_deref_mut()
    }
}

impl Drop for TxState {
    fn drop(&mut self) {
        if let Some(conn) = self.lease.as_deref_mut() {
            roll_back_unfinished(conn);
        }
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

impl Tx {
    pub(crate) async fn begin(mut lease: Lease) -> Result<Tx> {
        // If this future is dropped mid-BEGIN, sqlx's worker rolls the BEGIN back itself.
        Manager::begin(&mut lease, Some("BEGIN IMMEDIATE".into_sql_str())).await?;
        Ok(Tx {
            state: Arc::new(Mutex::new(TxState { lease: Some(lease) })),
        })
    }

    fn handle(&self) -> Handle {
        Handle::Tx(self.state.clone())
    }

    /// The items repository, inside this transaction.
    pub fn items(&self) -> ItemRepo {
        ItemRepo::new(self.handle())
    }

    /// The users repository, inside this transaction.
    pub fn users(&self) -> UserRepo {
        UserRepo::new(self.handle())
    }

    /// The orders repository, inside this transaction.
    pub fn orders(&self) -> OrderRepo {
        OrderRepo::new(self.handle())
    }

    /// The accounts repository, inside this transaction.
    pub fn accounts(&self) -> AccountRepo {
        AccountRepo::new(self.handle())
    }

    /// [`Db::dashboard`](crate::Db::dashboard), seeing this transaction's own writes.
    ///
    /// # Errors
    /// [`Error::NotFound`](crate::Error::NotFound) for an unknown user.
    pub fn dashboard(
        &self,
        user_id: i64,
    ) -> impl Future<Output = Result<Dashboard>> + Send + use<> {
        let handle = self.handle();
        traced("users", "dashboard", async move {
            let mut conn = handle.reader().await?;
            dashboard::fetch(&mut conn, user_id).await
        })
    }

    /// Makes every write of the transaction durable and visible, and releases the writer.
    ///
    /// # Errors
    /// [`Error::Database`](crate::Error::Database) if SQLite cannot commit (disk full, I/O error); the transaction is
    /// then rolled back.
    pub async fn commit(self) -> Result<()> {
        // The lease stays in the state until the COMMIT is answered: if this future is dropped
        // or the COMMIT fails, dropping the `Tx` rolls back (see `roll_back_unfinished`).
        let mut state = self.state.lock().await;
        if let Some(lease) = state.lease.as_mut() {
            Manager::commit(lease).await?;
            state.lease = None;
        }
        Ok(())
    }

    /// Undoes every write of the transaction and releases the writer (dropping the `Tx` does the
    /// same, without waiting).
    ///
    /// # Errors
    /// [`Error::Database`](crate::Error::Database) if SQLite reports a failure while rolling back.
    pub async fn rollback(self) -> Result<()> {
        let mut state = self.state.lock().await;
        if let Some(lease) = state.lease.as_mut() {
            Manager::rollback(lease).await?;
            state.lease = None;
        }
        Ok(())
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        // Roll back now and release the writer, unless a repository call of this transaction is
        // running right now; then the rollback happens when the last handle to it goes.
        if let Ok(mut state) = self.state.try_lock()
            && let Some(mut lease) = state.lease.take()
        {
            roll_back_unfinished(&mut lease);
        }
    }
}
