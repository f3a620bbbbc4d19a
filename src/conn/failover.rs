//! Following the roles of the hosts of a `Db` given libpq's multi-host string: finding the new
//! primary once the one it writes to is lost (its machine died, a failover promoted a standby)
//! or demoted (a planned switchover), and reading again from a host that comes back as a
//! standby.
//!
//! # The search for a new primary
//!
//! A lease on the primary whose own call was refused in a way that says the server cannot take
//! writes now ([`Error::Unavailable`](crate::Error::Unavailable): the connection broke or
//! cannot be made, or a new connection found a standby; [`Error::ReadOnly`](crate::Error::ReadOnly):
//! a write refused as read-only; "recovery is in progress") starts the search for its `Db`
//! alone (`error::refusal_seen_since`). One search at a time asks every host what it is
//! (`discover`), pausing 25 ms, doubling to at most 100 ms, between rounds (a pause near a
//! second would spend the whole budget of a failover), for at most [`SEARCH_FOR`]. Meanwhile
//! calls fail fast with the retryable `Unavailable` (the dead host refuses, or its connect is
//! bounded by `connect_timeout`); they never hang. Once a primary answers, on the newest
//! timeline (see `discover`), new writes go to it: its connections are made as they are
//! needed, and what was known of WAL positions is forgotten (the primary's, and every
//! standby's replay position), so no read is routed on a position of the old timeline. A host
//! that is not the primary is never written to: the primary's connections are only ever made
//! to the host the last search chose, and each new one checks that its server is a primary
//! accepting writes.
//!
//! # Hosts that come back
//!
//! The hosts that are neither the primary written to nor among the standbys read from (down at
//! connect, or the old primary after a failover) are probed again every [`REPROBE_EVERY`],
//! one connection each, until every host is one or the other. A host that answers as a
//! standby is read from from then on, its replay position unknown until asked. A host that
//! answers as a primary while the `Db` writes to another is not written to: when its timeline
//! is newer than the current primary's (it was promoted after it), a search runs, which
//! chooses the newest timeline; otherwise it is a stale primary (restarted outside its
//! manager's control) and is left alone, probed again at the next round. A standby read from
//! that answers, when asked its replay position, as a primary on a newer timeline (promoted
//! while the primary written to kept running) starts a search too, at the next read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use super::discover::{DEFAULT_PROBE_TIMEOUT, Role, discover, probe};
use super::hosts::{HostList, TargetSessionAttrs};
use super::pg_held::HeldPg;
use super::pg_replicas::{Replicas, Writes};
use super::pg_server::PgServer;

/// How long one search for a new primary goes on before it gives up (the next failed write
/// starts another).
pub(crate) const SEARCH_FOR: Duration = Duration::from_secs(120);

/// The first pause between two rounds of a search, doubled each round up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(25);

/// The longest pause between two rounds: a round after a promotion must come soon (each round
/// is one connection per host, so a tenth of a second costs a few connections per second
/// during an outage).
const MAX_PAUSE: Duration = Duration::from_millis(100);

/// How often the hosts that are neither the primary nor a standby read from are probed again:
/// a rejoined standby serves reads within this, for one connection per such host per round.
pub(crate) const REPROBE_EVERY: Duration = Duration::from_secs(2);

/// The primary a `Db` writes to, which a search may replace.
pub(crate) type CurrentPrimary = Arc<RwLock<Arc<HeldPg>>>;

/// What a `Db` given several hosts needs to find and reach a new primary.
#[derive(Debug)]
pub(crate) struct Failover {
    /// The hosts, asked for the primary whatever the string asked for (a `Db` writes).
    hosts: HostList,
    shape: PoolShape,
    primary: CurrentPrimary,
    /// The positions read-your-writes routing knows, forgotten when the primary changes.
    writes: Arc<Writes>,
    replicas: Arc<Replicas>,
    /// `host:port` and timeline of the primary written to now.
    current: Mutex<(String, Option<u32>)>,
    /// A search is running.
    searching: AtomicBool,
    /// The hosts not yet classified are being probed again.
    watching: AtomicBool,
    /// The `Db` was closed: no more searches or probes.
    closed: AtomicBool,
}

/// How a new primary's and a new standby's connections are made: what `PgConnections::connect`
/// gave the first ones.
#[derive(Debug, Clone)]
pub(crate) struct PoolShape {
    pub(crate) settings: Vec<(&'static str, String)>,
    pub(crate) connect_timeout: Duration,
    pub(crate) connections: usize,
    pub(crate) acquire_timeout: Duration,
    pub(crate) replica_connect_timeout: Duration,
    pub(crate) replica_connections: usize,
}

impl Failover {
    /// For `hosts`, whose primary is `current` (`host:port`, on `timeline`) now, written to
    /// through `primary`; reads are routed with `writes` and `replicas`.
    pub(crate) fn new(
        hosts: HostList,
        current: (String, Option<u32>),
        shape: PoolShape,
        primary: CurrentPrimary,
        writes: Arc<Writes>,
        replicas: Arc<Replicas>,
    ) -> Failover {
        Failover {
            hosts: hosts.with_target_session_attrs(TargetSessionAttrs::ReadWrite),
            shape,
            primary,
            writes,
            replicas,
            current: Mutex::new(current),
            searching: AtomicBool::new(false),
            watching: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        }
    }

    /// Starts a search for the primary in the background, unless one is running or the `Db`
    /// is closed.
    pub(crate) fn search(self: &Arc<Self>) {
        if self.closed.load(Ordering::Acquire) || self.searching.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.searching.store(false, Ordering::Release);
            return;
        };
        let failover = self.clone();
        runtime.spawn(async move {
            failover.run().await;
            failover.searching.store(false, Ordering::Release);
        });
    }

    /// No more searches or probes (`Db::close`).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    async fn run(self: &Arc<Self>) {
        let deadline = Instant::now() + SEARCH_FOR;
        let mut pause = FIRST_PAUSE;
        while !self.closed.load(Ordering::Acquire) {
            if let Ok(found) = discover(&self.hosts).await
                && let Some(chosen) = found.primary()
            {
                let label = chosen.host.label();
                let timeline = chosen.state().and_then(|state| state.timeline);
                let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
                if current.0 != label {
                    let server = PgServer::from_options(
                        chosen.host.options().clone(),
                        self.shape.connect_timeout,
                    )
                    .with_settings(&self.shape.settings);
                    let fresh = Arc::new(
                        HeldPg::new(
                            server,
                            self.shape.connections,
                            self.shape.acquire_timeout,
                            None,
                            None,
                        )
                        .primary_only(),
                    );
                    let old = std::mem::replace(
                        &mut *self.primary.write().unwrap_or_else(PoisonError::into_inner),
                        fresh,
                    );
                    // The old primary's connections close as their leases come back.
                    tokio::spawn(async move { old.close().await });
                }
                if current.0 != label || current.1 != timeline {
                    *current = (label, timeline);
                    drop(current);
                    // A new primary, or the same host on a new timeline (demoted and promoted
                    // again): every position known is of the old timeline.
                    self.writes.forget();
                    self.replicas.new_timeline(timeline);
                    // The old primary's host is now unclassified: it may come back a standby.
                    self.watch();
                }
                return;
            }
            if Instant::now() + pause > deadline {
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    /// Starts probing, every [`REPROBE_EVERY`], the hosts that are neither the primary nor a
    /// standby read from, unless that runs already; it stops once there are none, or the `Db`
    /// is closed or dropped.
    pub(crate) fn watch(self: &Arc<Self>) {
        if self.closed.load(Ordering::Acquire) || self.watching.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.watching.store(false, Ordering::Release);
            return;
        };
        // Weak: a `Db` dropped without `close` must not be kept alive by its own probes.
        let failover = Arc::downgrade(self);
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(REPROBE_EVERY).await;
                let Some(failover) = Weak::upgrade(&failover) else {
                    return;
                };
                if failover.closed.load(Ordering::Acquire) || !failover.reprobe().await {
                    failover.watching.store(false, Ordering::Release);
                    return;
                }
            }
        });
    }

    /// One round of [`Failover::watch`]: probes the hosts not classified, adds the standbys
    /// among them to the replicas, and starts a search for a primary on a newer timeline than
    /// the current one's. `false` when every host was classified already.
    async fn reprobe(self: &Arc<Self>) -> bool {
        let (primary, primary_timeline) = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let unclassified: Vec<_> = self
            .hosts
            .hosts()
            .iter()
            .filter(|host| {
                let label = host.label();
                label != primary && !self.replicas.has(&label)
            })
            .collect();
        if unclassified.is_empty() {
            return false;
        }
        let timeout = self
            .hosts
            .connect_timeout()
            .unwrap_or(DEFAULT_PROBE_TIMEOUT);
        let probes = join_all(unclassified.into_iter().map(|host| probe(host, timeout))).await;
        for found in &probes {
            match found.state() {
                Some(state) if state.role == Role::Standby => {
                    let server = PgServer::from_options(
                        found.host.options().clone(),
                        self.shape.replica_connect_timeout,
                    )
                    .with_settings(&self.shape.settings);
                    self.replicas.add(server, self.shape.replica_connections);
                }
                Some(state) if matches!((state.timeline, primary_timeline), (Some(theirs), Some(ours)) if theirs > ours) =>
                {
                    self.search();
                }
                // A stale primary, or a host still down: asked again next round.
                _ => {}
            }
        }
        true
    }
}
