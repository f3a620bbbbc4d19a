//! Held PostgreSQL connections: a fixed set of slots, each holding one connection for the life
//! of the database, lent behind an async mutex (as SQLite's writer and readers are), to
//! whichever caller has waited longest when one frees (see `free_slots`).
//!
//! # Why not sqlx's `PgPool`
//!
//! sqlx's pool pings every connection when it comes back (one more round trip, on a task of its
//! own, before the connection can be lent again) and wakes tasks on the way in and out: measured
//! on loopback, a point get through a `PgPool` lease cost about three times one on a held
//! `PgConnection`. Held slots cost a lock and no round trip.
//!
//! What the ping bought is noticing a connection the server dropped (a restart). Here a slot
//! checks its connection with a ping only when a connection failure has been seen since its
//! last check (`error::connection_failures`, counted by the classifier): after a restart each
//! connection fails at most the one call that finds it broken, is pinged at its next lease, and
//! is replaced if the ping fails.
//!
//! # A call its caller gave up on
//!
//! A call dropped unfinished (under `tokio::time::timeout`, say) leaves its statement running on
//! the server: if it waits on a lock another session holds, it would go on waiting, and land
//! once the lock is released, though its caller was told nothing happened. So the slot is not
//! lent again until the session is clean: a task keeps it, has the statement cancelled from a
//! connection of its own (`pg_cancel_backend` on the backend's pid, learned at connect), then
//! rolls back. If that does not finish within [`RECOVER_WAIT`], the session is ended
//! (`pg_terminate_backend`, which rolls its transaction back) and the slot reconnects at its
//! next lease. Meanwhile the other slots serve other calls, so a stranger's lock holds up only
//! the calls that need it.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::Connection;
use sqlx::postgres::PgConnection;
use tokio::sync::{Mutex, OwnedMappedMutexGuard, OwnedMutexGuard};

use super::free_slots::{FreeSlots, NoTicket, Ticket};
use super::pg_server::PgServer;
use crate::error::{Error, Result, connection_failures};

/// How long the clean-up of a call given up on may take (the cancelled statement's answer and
/// the `ROLLBACK`) before its session is ended instead.
pub(crate) const RECOVER_WAIT: Duration = Duration::from_secs(1);

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
    /// The slots not lent out, and the fair queue of callers waiting for one.
    free: Arc<FreeSlots>,
    /// Where and how to connect (its `Debug` never shows the password).
    server: PgServer,
    /// How long a lease waits for a busy slot (a connect is bounded by the server's own
    /// connect timeout).
    wait: Duration,
    /// Set by [`HeldPg::close`]: leases are refused from then on instead of reconnecting an
    /// emptied slot (`Db::close` promises that later calls fail).
    closed: AtomicBool,
    /// The connection that cancels what other connections' callers gave up on.
    control: Arc<Control>,
    /// For a replica: when it is left alone. `None` for the primary, which is never left.
    rest: Option<Arc<Rest>>,
    /// Each new connection must find the server a primary accepting writes (a `Db` given
    /// several hosts: its primary may have been demoted and restarted as a standby).
    primary_only: bool,
}

#[derive(Debug)]
struct PgSlot {
    /// `None` until first used, and after a broken connection was dropped.
    conn: Arc<Mutex<Option<PgConnection>>>,
    /// The server process of `conn` (0 until asked, after each connect).
    pid: AtomicI32,
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
    /// The slot's place among the free ones (declared after `conn`, so the connection is
    /// unlocked before the slot is offered to the next in line; `None` once
    /// [`PgLent::give_back_in_doubt`] handed it to the clean-up).
    ticket: Option<Ticket>,
    control: Arc<Control>,
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

/// A connection of its own to the server, made when first needed, for `pg_cancel_backend` and
/// `pg_terminate_backend`: the slots' own connections may all be stuck.
#[derive(Debug)]
struct Control {
    conn: Mutex<Option<PgConnection>>,
    server: PgServer,
    wait: Duration,
}

impl HeldPg {
    /// `size` slots on `server`, connecting on first use; `first`, a connection already made
    /// (the one that proved the server reachable), fills the first slot; `rest`, a replica's.
    pub(crate) fn new(
        server: PgServer,
        size: usize,
        wait: Duration,
        mut first: Option<PgConnection>,
        rest: Option<Arc<Rest>>,
    ) -> HeldPg {
        let size = size.max(1);
        HeldPg {
            slots: (0..size)
                .map(|_| {
                    Arc::new(PgSlot {
                        conn: Arc::new(Mutex::new(first.take())),
                        pid: AtomicI32::new(0),
                        checked: AtomicU64::new(connection_failures()),
                        needs_reset: AtomicBool::new(false),
                        replayed: AtomicI64::new(i64::MIN),
                        discard: AtomicBool::new(false),
                    })
                })
                .collect(),
            free: FreeSlots::new(size),
            control: Arc::new(Control {
                conn: Mutex::new(None),
                server: server.clone(),
                wait,
            }),
            server,
            wait,
            closed: AtomicBool::new(false),
            rest,
            primary_only: false,
        }
    }

    /// Has every new connection check that its server is a primary accepting writes, and
    /// refuse it with [`Error::Unavailable`] otherwise (the trigger for a failover search).
    pub(crate) fn primary_only(mut self) -> HeldPg {
        self.primary_only = true;
        self
    }

    /// `host:port` of the server.
    pub(crate) fn label(&self) -> String {
        self.server.label()
    }

    /// Forgets how far every connection's server said it had replayed (a failover: the
    /// positions are of the old timeline); each is asked again before a read relies on it.
    pub(crate) fn forget_replayed(&self) {
        for slot in &self.slots {
            slot.replayed.store(i64::MIN, Ordering::Release);
        }
    }

    /// An idle connection (the most recently returned first: a caller alone keeps reusing one
    /// warm connection), else the first to come free, waiting in line at most `wait`
    /// ([`Error::Busy`]). After [`HeldPg::close`], [`Error::Database`] (`PoolClosed`).
    pub(crate) async fn lend(&self) -> Result<PgLent> {
        let ticket = self
            .free
            .take(self.wait)
            .await
            .map_err(|refused| match refused {
                NoTicket::TimedOut => Error::Busy,
                NoTicket::Closed => Error::Database(sqlx::Error::PoolClosed),
            })?;
        let Some(slot) = self.slots.get(ticket.index()) else {
            return Err(Error::Database(sqlx::Error::PoolClosed));
        };
        // Only ticket holders lock a slot (and `close`, which refuses what follows).
        let guard = match slot.conn.clone().try_lock_owned() {
            Ok(guard) => guard,
            Err(_) => slot.conn.clone().lock_owned().await,
        };
        // Checked under the slot's lock: `close` sets the flag before it takes the locks, so a
        // slot it emptied is never reconnected.
        self.open()?;
        let conn = slot.ready(guard, &self.server, self.primary_only).await?;
        Ok(PgLent {
            conn,
            slot: slot.clone(),
            ticket: Some(ticket),
            control: self.control.clone(),
            rest: self.rest.clone(),
        })
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
    /// refused, and callers waiting for a slot are answered at once.
    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.free.close();
        for slot in &self.slots {
            let conn = slot.conn.lock().await.take();
            if let Some(conn) = conn {
                // Nothing useful can be done about a failed close.
                let _ = conn.close().await;
            }
        }
        if let Some(conn) = self.control.conn.lock().await.take() {
            let _ = conn.close().await;
        }
    }
}

impl PgSlot {
    /// Makes the slot's connection fit to lend: connected (its backend's pid known), rolled
    /// back if a lease left it in doubt, and checked if a connection failure was seen since
    /// its last check.
    async fn ready(
        self: &Arc<Self>,
        mut guard: OwnedMutexGuard<Option<PgConnection>>,
        server: &PgServer,
        primary_only: bool,
    ) -> Result<OwnedMappedMutexGuard<Option<PgConnection>, PgConnection>> {
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
            self.pid.store(0, Ordering::Release);
            // A new connection may reach another server: what the old one replayed is no
            // longer known.
            self.replayed.store(i64::MIN, Ordering::Release);
            let mut conn = server.connect().await?;
            if primary_only {
                let role = sqlrepo_postgres::role::server_role(&mut conn).await?;
                if role.in_recovery || role.read_only {
                    let _ = conn.close().await;
                    return Err(Error::Unavailable(format!(
                        "the PostgreSQL server at {} is no longer a primary accepting writes \
                         (a failover or switchover): looking for the new one",
                        server.describe()
                    )));
                }
            }
            *guard = Some(conn);
        }
        if self.pid.load(Ordering::Acquire) == 0
            && let Some(conn) = guard.as_mut()
        {
            // Once per connection (the first one was made before its slot existed).
            let pid = sqlrepo_postgres::session::backend_pid(conn).await?;
            self.pid.store(pid, Ordering::Release);
        }
        self.needs_reset.store(false, Ordering::Release);
        self.checked.fetch_max(failures, Ordering::AcqRel);
        OwnedMutexGuard::try_map(guard, Option::as_mut)
            .map_err(|_| Error::Database(sqlx::Error::PoolClosed))
    }

    /// Brings back a connection whose lease was given up while a transaction, or a statement
    /// (`unfinished`), may be open on it: the statement is cancelled, then everything is
    /// rolled back; if that takes longer than [`RECOVER_WAIT`], the session is ended and the
    /// slot left empty (it reconnects at its next lease). Runs holding the slot's ticket, so
    /// no caller is lent the connection meanwhile.
    async fn recover(self: Arc<Self>, control: Arc<Control>, unfinished: bool) {
        let mut guard = self.conn.clone().lock_owned().await;
        if !self.needs_reset.load(Ordering::Acquire) {
            return;
        }
        let Some(conn) = guard.as_mut() else {
            return;
        };
        let pid = self.pid.load(Ordering::Acquire);
        if unfinished && pid != 0 {
            // The statement may still be running (waiting on a lock, say): stop it, or the
            // ROLLBACK below would queue behind it, and a write would land after its caller
            // was told nothing happened.
            control.signal(pid, Signal::Cancel).await;
        }
        if let Ok(true) = tokio::time::timeout(RECOVER_WAIT, reset(conn)).await {
            self.needs_reset.store(false, Ordering::Release);
            return;
        }
        // Still not clean: end the session, which rolls back whatever it held, rather than let
        // a statement nobody waits for finish (and commit) some time later.
        if pid != 0 {
            control.signal(pid, Signal::Terminate).await;
        }
        if let Some(stuck) = guard.take() {
            let _ = stuck.close_hard().await;
        }
        self.needs_reset.store(false, Ordering::Release);
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

    /// Cancels the statement the connection's server session is running, if any (a call
    /// inside a `Tx` its caller gave up on); an idle session ignores it.
    pub(crate) async fn cancel_running(&self) {
        let pid = self.slot.pid.load(Ordering::Acquire);
        if pid != 0 {
            self.control.signal(pid, Signal::Cancel).await;
        }
    }

    /// Hands the connection back with a transaction possibly open, or (`unfinished`) a
    /// statement possibly still running: a task keeps the slot until the session is clean
    /// (see [`PgSlot::recover`]), right away when a runtime is at hand; otherwise the slot's
    /// next lease rolls back first.
    pub(crate) fn give_back_in_doubt(mut self, unfinished: bool) {
        let (slot, control, ticket) = (self.slot.clone(), self.control.clone(), self.ticket.take());
        slot.needs_reset.store(true, Ordering::Release);
        // Unlocks the connection; the ticket, kept, holds the slot for the clean-up.
        drop(self);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                slot.recover(control, unfinished).await;
                drop(ticket);
            });
        }
    }
}

/// What [`Control::signal`] asks the server to do to a backend.
#[derive(Debug, Clone, Copy)]
enum Signal {
    Cancel,
    Terminate,
}

impl Control {
    /// Cancels backend `pid`'s statement, or ends its session, within `wait`; a failure
    /// drops the control connection (the next signal reconnects) and changes nothing else:
    /// the caller's own time limit still holds.
    async fn signal(&self, pid: i32, signal: Signal) {
        let sent = tokio::time::timeout(self.wait, async {
            let mut conn = self.conn.lock().await;
            if conn.is_none() {
                *conn = Some(self.server.connect().await?);
            }
            let Some(control) = conn.as_mut() else {
                return Ok(false);
            };
            let sent = match signal {
                Signal::Cancel => sqlrepo_postgres::session::cancel(control, pid).await,
                Signal::Terminate => sqlrepo_postgres::session::terminate(control, pid).await,
            }
            .map_err(Error::from);
            if sent.is_err() {
                *conn = None;
            }
            sent
        })
        .await;
        if !matches!(sent, Ok(Ok(_))) {
            // Timed out (the guard is gone with the future) or failed: start afresh next time.
            if let Ok(mut conn) = self.conn.try_lock() {
                *conn = None;
            }
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
