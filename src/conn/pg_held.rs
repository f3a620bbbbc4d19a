//! Held PostgreSQL connections: a fixed set of slots, each holding one connection for the life
//! of the database, lent behind an async mutex (as SQLite's writer and readers are).
//!
//! # Why not sqlx's `PgPool`
//!
//! sqlx's pool pings every connection when it comes back (one more round trip, on a task of its
//! own, before the connection can be lent again) and wakes tasks on the way in and out. Measured
//! on the development server (loopback, 2 cores, release build, 2,000 point gets in a row): a
//! statement on a held `PgConnection` 44 µs, the same through a `PgPool` lease 145–196 µs. Held
//! slots cost a lock and no round trip.
//!
//! What the ping bought is noticing a connection the server dropped (a restart). Here a slot
//! checks its connection with a ping only when a connection failure has been seen since its
//! last check (`error::connection_failures`, counted by the classifier): after a restart each
//! connection fails at most the one call that finds it broken, is pinged at its next lease, and
//! is replaced if the ping fails.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::Connection;
use sqlx::postgres::PgConnection;
use tokio::sync::{Mutex, OwnedMappedMutexGuard, OwnedMutexGuard};

use super::pg_server::PgServer;
use crate::error::{Error, Result, connection_failures};

/// When a server is left alone: set when it failed to answer in time (a replica), so reads go
/// elsewhere for a while.
#[derive(Debug)]
pub(crate) struct Rest {
    until: std::sync::Mutex<Option<Instant>>,
    /// How long a rest lasts.
    cooldown: Duration,
}

impl Rest {
    /// A server not resting, which rests `cooldown` each time it is told to.
    pub(crate) fn new(cooldown: Duration) -> Rest {
        Rest {
            until: std::sync::Mutex::new(None),
            cooldown,
        }
    }

    /// Whether the server is resting now.
    pub(crate) fn resting(&self) -> bool {
        let until = self
            .until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        until.is_some_and(|until| Instant::now() < until)
    }

    /// Leaves the server alone for the cooldown from now.
    pub(crate) fn rest(&self) {
        *self
            .until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(Instant::now() + self.cooldown);
    }
}

thread_local! {
    /// Set while [`abandon`] drops a statement that ran out of time.
    static ABANDONING: Cell<bool> = const { Cell::new(false) };
}

/// Drops `attempt`, a read that ran out of time on a replica, so that the replica connection
/// it holds is not lent again (an answer may still be on its way, from a server that may never
/// send it) and the replica rests.
pub(crate) fn abandon<T>(attempt: T) {
    ABANDONING.with(|abandoning| abandoning.set(true));
    drop(attempt);
    ABANDONING.with(|abandoning| abandoning.set(false));
}

/// The connections of one server (the primary, or one replica).
#[derive(Debug)]
pub(crate) struct HeldPg {
    slots: Vec<Arc<PgSlot>>,
    /// Where and how to connect (its `Debug` never shows the password).
    server: PgServer,
    next: AtomicUsize,
    /// How long a lease waits for a busy slot (a connect is bounded by the server's own
    /// connect timeout).
    wait: Duration,
    /// Set by [`HeldPg::close`]: leases are refused from then on instead of reconnecting an
    /// emptied slot (`Db::close` promises that later calls fail).
    closed: AtomicBool,
    /// For a replica: when it is left alone. `None` for the primary, which is never left.
    rest: Option<Arc<Rest>>,
}

#[derive(Debug)]
struct PgSlot {
    /// `None` until first used, and after a broken connection was dropped.
    conn: Arc<Mutex<Option<PgConnection>>>,
    /// `connection_failures()` when this connection was last known good.
    checked: AtomicU64,
    /// A lease came back with a transaction possibly open: roll back before the next one.
    needs_reset: AtomicBool,
    /// On a replica, how far this connection's server said it had replayed (`i64::MIN`:
    /// unknown). Per connection, and forgotten whenever the connection is made again: after a
    /// reconnect the server may be another one (restarted from an older backup, promoted,
    /// another host behind the same address).
    replayed: AtomicI64,
    /// The connection is not to be lent again (see [`PgLent::discard`]).
    discard: AtomicBool,
}

/// A lent connection; back to its slot on drop.
#[derive(Debug)]
pub(crate) struct PgLent {
    conn: OwnedMappedMutexGuard<Option<PgConnection>, PgConnection>,
    slot: Arc<PgSlot>,
    /// A replica's rest, when this is a replica's connection.
    rest: Option<Arc<Rest>>,
}

impl Drop for PgLent {
    fn drop(&mut self) {
        // Before the guard (a field) unlocks the slot, so nobody is lent it meanwhile.
        if ABANDONING.with(Cell::get) {
            self.slot.discard.store(true, Ordering::Release);
            if let Some(rest) = &self.rest {
                rest.rest();
            }
        }
    }
}

impl HeldPg {
    /// `size` slots on `server`, connecting on first use; `first`, a connection already made
    /// (the one that proved the server reachable), fills the first slot.
    pub(crate) fn new(
        server: PgServer,
        size: usize,
        wait: Duration,
        mut first: Option<PgConnection>,
        rest: Option<Arc<Rest>>,
    ) -> HeldPg {
        HeldPg {
            slots: (0..size.max(1))
                .map(|_| {
                    Arc::new(PgSlot {
                        conn: Arc::new(Mutex::new(first.take())),
                        checked: AtomicU64::new(connection_failures()),
                        needs_reset: AtomicBool::new(false),
                        replayed: AtomicI64::new(i64::MIN),
                        discard: AtomicBool::new(false),
                    })
                })
                .collect(),
            server,
            next: AtomicUsize::new(0),
            wait,
            closed: AtomicBool::new(false),
            rest,
        }
    }

    /// The first idle connection from the start of the list (a caller alone keeps reusing one
    /// warm connection), else the next in turn, waiting at most `wait` ([`Error::Busy`]).
    /// After [`HeldPg::close`], [`Error::Database`] (`PoolClosed`).
    pub(crate) async fn lend(&self) -> Result<PgLent> {
        let idle = self.slots.iter().find_map(|slot| {
            let guard = slot.conn.clone().try_lock_owned().ok()?;
            Some((slot, guard))
        });
        let (slot, guard) = match idle {
            Some(idle) => idle,
            None => {
                let slot =
                    &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
                let guard = tokio::time::timeout(self.wait, slot.conn.clone().lock_owned())
                    .await
                    .map_err(|_| Error::Busy)?;
                (slot, guard)
            }
        };
        // Checked under the slot's lock: `close` sets the flag before it takes the locks, so a
        // slot it emptied is never reconnected.
        self.open()?;
        slot.ready(guard, &self.server, self.rest.clone()).await
    }

    /// Refuses a lease once closed, as sqlx's pools do.
    fn open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::Database(sqlx::Error::PoolClosed))
        } else {
            Ok(())
        }
    }

    /// Closes every connection (waiting for the ones lent out to come back); later leases are
    /// refused.
    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        for slot in &self.slots {
            let conn = slot.conn.lock().await.take();
            if let Some(conn) = conn {
                // Nothing useful can be done about a failed close.
                let _ = conn.close().await;
            }
        }
    }
}

impl PgSlot {
    /// Makes the slot's connection fit to lend: connected, rolled back if a lease left it in
    /// doubt, and checked if a connection failure was seen since its last check.
    async fn ready(
        self: &Arc<Self>,
        mut guard: OwnedMutexGuard<Option<PgConnection>>,
        server: &PgServer,
        rest: Option<Arc<Rest>>,
    ) -> Result<PgLent> {
        let failures = connection_failures();
        if self.discard.swap(false, Ordering::AcqRel)
            && let Some(stalled) = guard.take()
        {
            // Not even a goodbye: the server may not be reading.
            drop(stalled);
        }
        if let Some(conn) = guard.as_mut() {
            let fit = if self.needs_reset.load(Ordering::Acquire) {
                reset(conn).await
            } else if self.checked.load(Ordering::Acquire) < failures {
                conn.ping().await.is_ok()
            } else {
                true
            };
            if !fit && let Some(broken) = guard.take() {
                // Broken: the server has already rolled back whatever it held.
                let _ = broken.close_hard().await;
            }
        }
        if guard.is_none() {
            // A new connection may reach another server: what the old one replayed is no
            // longer known.
            self.replayed.store(i64::MIN, Ordering::Release);
            *guard = Some(server.connect().await?);
        }
        self.needs_reset.store(false, Ordering::Release);
        self.checked.fetch_max(failures, Ordering::AcqRel);
        let conn = OwnedMutexGuard::try_map(guard, Option::as_mut)
            .map_err(|_| Error::Database(sqlx::Error::PoolClosed))?;
        Ok(PgLent {
            conn,
            slot: self.clone(),
            rest,
        })
    }

    /// Rolls back now whatever a lease left open, so a transaction does not hold its locks
    /// until the slot's next lease; a failure leaves the flag for that lease.
    async fn reset(self: Arc<Self>) {
        let mut guard = self.conn.clone().lock_owned().await;
        if !self.needs_reset.load(Ordering::Acquire) {
            return;
        }
        if let Some(conn) = guard.as_mut()
            && reset(conn).await
        {
            self.needs_reset.store(false, Ordering::Release);
        }
    }
}

impl PgLent {
    /// The connection.
    pub(crate) fn conn(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    /// Whether this is a replica's connection.
    pub(crate) fn on_replica(&self) -> bool {
        self.rest.is_some()
    }

    /// How far this connection's server (a replica) said it had replayed, if it was asked
    /// since the connection was made.
    pub(crate) fn replayed(&self) -> Option<i64> {
        let replayed = self.slot.replayed.load(Ordering::Acquire);
        (replayed != i64::MIN).then_some(replayed)
    }

    /// Records how far this connection's server has replayed (`None`: it is not a replica,
    /// or it could not say), for the reads that take this connection next.
    pub(crate) fn set_replayed(&self, replayed: Option<i64>) {
        match replayed {
            Some(position) => self.slot.replayed.fetch_max(position, Ordering::AcqRel),
            None => self.slot.replayed.swap(i64::MIN, Ordering::AcqRel),
        };
    }

    /// Drops the connection instead of handing it back (a statement on it timed out: its
    /// server is stalled or gone, and an answer may still be on the way); the slot connects
    /// again at its next lease.
    pub(crate) fn discard(self) {
        self.slot.discard.store(true, Ordering::Release);
        drop(self);
    }

    /// Hands the connection back with a transaction possibly open: it is rolled back (by a
    /// task right away when a runtime is at hand, else before the slot's next lease).
    pub(crate) fn give_back_in_doubt(self) {
        let slot = self.slot.clone();
        slot.needs_reset.store(true, Ordering::Release);
        drop(self);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(slot.reset());
        }
    }
}

/// Drains what a cancelled statement left on the way and rolls back whatever is open. The
/// first `ROLLBACK` may fail with the cancelled statement's own error (sqlx reads the rest of
/// its answer first and returns an error in it as the next statement's); the second then runs
/// on a clean connection. `false` when the connection cannot be brought back.
async fn reset(conn: &mut PgConnection) -> bool {
    for _ in 0..2 {
        if sqlrepo_postgres::tx::rollback(conn).await.is_ok() {
            return true;
        }
    }
    false
}
