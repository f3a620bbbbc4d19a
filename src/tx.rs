//! Transactions that the caller owns: several repositories' operations, all or nothing.
//!
//! A [`Tx`] holds the writer connection from `BEGIN IMMEDIATE` to [`Tx::commit`]. Its repository
//! accessors return the same [`ItemRepo`], [`OrderRepo`], ... types as [`Db`](crate::Db)'s, bound
//! to the transaction's connection, so every query has exactly one copy. Dropping a `Tx` (or
//! cancelling the future that owns it) without committing rolls it back.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Mutex;

use crate::conn::{Connections, Handle, TxState};
use crate::error::Result;
use crate::tables::accounts::AccountRepo;
use crate::tables::dashboard::{self, Dashboard};
use crate::tables::items::ItemRepo;
use crate::tables::orders::OrderRepo;
use crate::tables::users::UserRepo;

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
    /// Shared with the state: set when this `Tx` is dropped while a call holds the state.
    abandoned: Arc<AtomicBool>,
}

impl Tx {
    pub(crate) async fn begin(connections: &Connections) -> Result<Tx> {
        let state = TxState::begin(connections).await?;
        Ok(Tx {
            abandoned: state.abandoned_flag(),
            state: Arc::new(Mutex::new(state)),
        })
    }

    /// The [`Handle`] of this transaction: a service's own repository built on it runs its
    /// statements inside this transaction, committed or rolled back with ours.
    pub fn handle(&self) -> Handle {
        Handle::tx(self.state.clone())
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
        dashboard::read(self.handle(), user_id)
    }

    /// Makes every write of the transaction durable and visible, and releases the writer.
    ///
    /// When it returns, `Ok` means every write is stored and an error means none is. A commit
    /// whose future is dropped before it returns (cancelled, timed out) may or may not have
    /// committed, on either backend, but never partly: read to find out, or retry the writes
    /// with idempotency keys.
    ///
    /// # Errors
    /// [`Error::RolledBack`](crate::Error::RolledBack) when the transaction is over already (a
    /// call in it failed in a way that ends it, or a call was cancelled midway); the commit's
    /// own failure: [`Error::DiskFull`](crate::Error::DiskFull), [`Error::Io`](crate::Error::Io)
    /// or [`Error::Busy`](crate::Error::Busy), [`Error::Unavailable`](crate::Error::Unavailable)
    /// when PostgreSQL's connection is lost, [`Error::Database`](crate::Error::Database) for
    /// anything else the database reports. In every case nothing of the transaction is stored:
    /// it is rolled back.
    pub async fn commit(self) -> Result<()> {
        self.state.lock().await.commit().await
    }

    /// Undoes every write of the transaction and releases the writer (dropping the `Tx` does the
    /// same, without waiting).
    ///
    /// # Errors
    /// [`Error::Database`](crate::Error::Database) (or a storage variant:
    /// [`Error::Io`](crate::Error::Io), [`Error::Unavailable`](crate::Error::Unavailable)) if the
    /// database reports a failure while rolling back; the connection is reset before it is
    /// used again, so nothing of the transaction is stored either way.
    pub async fn rollback(self) -> Result<()> {
        self.state.lock().await.rollback().await
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        // Roll back now and release the writer, unless a repository call of this transaction is
        // running right now; then the rollback happens when the last handle to it goes.
        match self.state.try_lock() {
            Ok(mut state) => state.abandon(),
            // A call of this transaction is running: it sees the flag when it ends.
            Err(_) => self.abandoned.store(true, Ordering::Release),
        }
    }
}
