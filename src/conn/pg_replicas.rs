//! What the routing of reads knows (see `postgres`): the writes a `Db` returned and a primary
//! position covering them (`Writes`), and the standbys reads may go to (`Replicas`), a set
//! that grows when a host given in the URL comes back as a standby (see `failover`).
//!
//! Everything known about positions is of one timeline: a failover forgets the primary's
//! position and every standby's replayed one, and a standby's answer counts only when it is
//! on the primary's timeline or a newer one (a standby left on the old timeline may have
//! replayed past the point the new primary forked off, so its position says nothing about the
//! new primary's writes).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use super::pg_held::{HeldPg, PgLent, Rest};
use super::pg_server::PgServer;
use crate::error::Result;

/// How long a read waits for a replica (a connection, its replay position, and the read
/// itself) before it reads on the primary instead.
pub const REPLICA_WAIT: Duration = Duration::from_millis(500);

/// How long a replica that failed to answer is left alone before it is tried again.
pub const REPLICA_COOLDOWN: Duration = Duration::from_secs(2);

/// Writes counted as they return, and the newest primary WAL position known to cover them.
#[derive(Debug, Default)]
pub(crate) struct Writes {
    /// Write leases come back (writes returned to their callers, or gave up).
    done: AtomicU64,
    /// `(writes counted, a primary WAL position taken after all of them returned)`.
    known: std::sync::Mutex<(u64, i64)>,
    /// A task is asking the primary for its position.
    pub(crate) learning: AtomicBool,
}

impl Writes {
    /// Counts a write lease that came back.
    pub(crate) fn count(&self) {
        self.done.fetch_add(1, Ordering::AcqRel);
    }

    /// The primary position replicas must have replayed for a read now, if one is known that
    /// covers every write counted so far.
    pub(crate) fn needed(&self) -> Option<i64> {
        let done = self.done.load(Ordering::Acquire);
        let known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        (known.0 >= done).then_some(known.1)
    }

    /// Forgets the positions known: they are of a primary that is gone, and reads go to the
    /// new one until its position is learnt.
    pub(crate) fn forget(&self) {
        *self.known.lock().unwrap_or_else(PoisonError::into_inner) = (0, 0);
    }

    /// Asks the primary for its position and records it as covering the writes counted
    /// before the question.
    pub(crate) async fn learn(&self, primary: &HeldPg) -> Result<()> {
        let done = self.done.load(Ordering::Acquire);
        let mut conn = primary.lend().await?;
        let position = sqlrepo_postgres::replication::current_position(conn.conn()).await?;
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        known.0 = known.0.max(done);
        known.1 = known.1.max(position);
        Ok(())
    }
}

/// The standbys reads may go to, and the timeline they must be on.
#[derive(Debug)]
pub(crate) struct Replicas {
    /// Replaced as a whole when one is added, so a read takes the set with one clone.
    set: RwLock<Arc<Vec<Arc<Replica>>>>,
    /// The timeline of the primary written to (`-1`: unknown, as for a single-host URL): a
    /// standby reporting an older one is not read from.
    timeline: AtomicI64,
    /// Counts new timelines, so a replay position asked before one is not kept after it.
    epoch: AtomicU64,
    /// A replica answered as a primary on a newer timeline than the primary written to (it
    /// was promoted after it): the next read starts a search, which prefers the newest.
    newer_primary: AtomicBool,
}

impl Replicas {
    /// The replicas of `servers`, each with `connections` slots, made on first use.
    pub(crate) fn new(servers: Vec<PgServer>, connections: usize, timeline: Option<u32>) -> Self {
        let set = servers
            .into_iter()
            .map(|server| Arc::new(Replica::new(server, connections)))
            .collect();
        Replicas {
            set: RwLock::new(Arc::new(set)),
            timeline: AtomicI64::new(timeline.map_or(-1, i64::from)),
            epoch: AtomicU64::new(0),
            newer_primary: AtomicBool::new(false),
        }
    }

    /// The replicas now.
    pub(crate) fn current(&self) -> Arc<Vec<Arc<Replica>>> {
        self.set
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Adds a standby found after connect (a host back as a standby, a failed primary rejoined
    /// by Patroni); its connections, new, know no replay position yet.
    pub(crate) fn add(&self, server: PgServer, connections: usize) {
        let mut set = self.set.write().unwrap_or_else(PoisonError::into_inner);
        let mut grown = Vec::clone(&set);
        grown.push(Arc::new(Replica::new(server, connections)));
        *set = Arc::new(grown);
    }

    /// Whether a replica connects to `label` (`host:port`).
    pub(crate) fn has(&self, label: &str) -> bool {
        self.current()
            .iter()
            .any(|replica| replica.held.label() == label)
    }

    /// A new primary is written to, on `timeline`: every replay position known is of the old
    /// one and is forgotten (each replica is asked again before it serves a read-your-writes
    /// read).
    pub(crate) fn new_timeline(&self, timeline: Option<u32>) {
        self.timeline
            .store(timeline.map_or(-1, i64::from), Ordering::Release);
        // Before the positions are forgotten: a refresh that set one after this sees it.
        self.epoch.fetch_add(1, Ordering::AcqRel);
        for replica in self.current().iter() {
            replica.held.forget_replayed();
        }
    }

    /// Closes every replica's connections.
    pub(crate) async fn close(&self) {
        for replica in self.current().iter() {
            replica.held.close().await;
        }
    }

    /// Whether a replica said, since the last call, that it is a primary on a newer timeline
    /// than the one written to.
    pub(crate) fn take_newer_primary(&self) -> bool {
        self.newer_primary.load(Ordering::Relaxed)
            && self.newer_primary.swap(false, Ordering::AcqRel)
    }

    fn accepts(&self, timeline: Option<i32>) -> bool {
        let wanted = self.timeline.load(Ordering::Acquire);
        wanted < 0 || timeline.is_some_and(|timeline| i64::from(timeline) >= wanted)
    }

    fn newer_than_primary(&self, timeline: Option<i32>) -> bool {
        let wanted = self.timeline.load(Ordering::Acquire);
        wanted >= 0 && timeline.is_some_and(|timeline| i64::from(timeline) > wanted)
    }
}

/// One standby's connections.
#[derive(Debug)]
pub(crate) struct Replica {
    held: HeldPg,
    /// When it is left alone after failing to answer (shared with its lent connections, so a
    /// read that runs out of time on one rests it).
    rest: Arc<Rest>,
    /// A task is asking it for its replay position.
    refreshing: AtomicBool,
}

impl Replica {
    fn new(server: PgServer, connections: usize) -> Replica {
        let rest = Arc::new(Rest::new(REPLICA_COOLDOWN));
        Replica {
            held: HeldPg::new(server, connections, REPLICA_WAIT, None, Some(rest.clone())),
            rest,
            refreshing: AtomicBool::new(false),
        }
    }

    pub(crate) fn resting(&self) -> bool {
        self.rest.resting()
    }

    fn rest(&self) {
        self.rest.rest();
    }

    /// A connection to this replica, within [`REPLICA_WAIT`]; `None` (and a rest) otherwise.
    pub(crate) async fn acquire(&self) -> Option<PgLent> {
        match tokio::time::timeout(REPLICA_WAIT, self.held.lend()).await {
            Ok(Ok(conn)) => Some(conn),
            _ => {
                self.rest();
                None
            }
        }
    }

    /// Asks a connection of the replica how far its server has replayed, and on which
    /// timeline, within [`REPLICA_WAIT`], and has the connection remember the position when
    /// the timeline is the primary's (or newer).
    async fn refresh(&self, replicas: &Replicas) {
        let epoch = replicas.epoch.load(Ordering::Acquire);
        let Some(mut conn) = self.acquire().await else {
            return;
        };
        let asked = tokio::time::timeout(
            REPLICA_WAIT,
            sqlrepo_postgres::role::server_role(conn.conn()),
        )
        .await;
        match asked {
            Ok(Ok(role)) if role.in_recovery && replicas.accepts(role.timeline) => {
                conn.set_replayed(role.wal_position);
                if replicas.epoch.load(Ordering::Acquire) != epoch {
                    // A failover came meanwhile: the answer may be of the old timeline.
                    conn.set_replayed(None);
                }
            }
            // Not a replica (promoted, or the primary's URL given twice), or one left on an
            // older timeline than the primary's: it cannot promise.
            Ok(asked) => {
                if let Ok(role) = asked
                    && !role.in_recovery
                    && replicas.newer_than_primary(role.timeline)
                {
                    replicas.newer_primary.store(true, Ordering::Release);
                }
                conn.set_replayed(None);
                self.rest();
            }
            // No answer in time: stalled or gone; the connection is not lent again.
            Err(_) => {
                conn.discard();
                self.rest();
            }
        }
    }
}

/// Starts a task that asks `replica` how far it has replayed, unless one is asking already.
pub(crate) fn refresh_position(replica: Arc<Replica>, replicas: Arc<Replicas>) {
    if replica.refreshing.swap(true, Ordering::AcqRel) {
        return;
    }
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        drop(runtime.spawn(async move {
            replica.refresh(&replicas).await;
            replica.refreshing.store(false, Ordering::Release);
        }));
    } else {
        replica.refreshing.store(false, Ordering::Release);
    }
}
