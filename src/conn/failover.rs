//! Finding the new primary of a `Db` given libpq's multi-host string, once the one it writes
//! to is lost (its machine died, a failover promoted a standby) or demoted (a planned
//! switchover).
//!
//! The writes' path notices: a connection to the primary cannot be made (`Unavailable`), or a
//! write was refused as read-only. Then one background search at a time asks every host what it
//! is (`discover`), pausing 25 ms, doubling to at most 200 ms, between rounds (a pause near a
//! second would spend the whole budget of a failover), for at most [`SEARCH_FOR`]. Meanwhile
//! calls fail fast with the retryable `Unavailable` (the dead host refuses, or its connect is
//! bounded by `connect_timeout`); they never hang. Once a primary answers, on the newest
//! timeline (see `discover`), new writes go to it: its connections are made as they are
//! needed, and what was known of the old primary's WAL position is forgotten, so no read is
//! routed on a position of the old timeline. A host that is not the primary is never written
//! to: the primary's connections are only ever made to the host the last search chose.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use super::discover::discover;
use super::hosts::{HostList, TargetSessionAttrs};
use super::pg_held::HeldPg;
use super::pg_server::PgServer;
use crate::error::read_only_refusals;

/// How long one search for a new primary goes on before it gives up (the next failed write
/// starts another).
pub(crate) const SEARCH_FOR: Duration = Duration::from_secs(120);

/// The first pause between two rounds of a search, doubled each round up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(25);

/// The longest pause between two rounds: a round after a promotion must come soon.
const MAX_PAUSE: Duration = Duration::from_millis(200);

/// The primary a `Db` writes to, which a search may replace.
pub(crate) type CurrentPrimary = Arc<RwLock<Arc<HeldPg>>>;

/// What a `Db` given several hosts needs to find and reach a new primary.
#[derive(Debug)]
pub(crate) struct Failover {
    /// The hosts, asked for the primary whatever the string asked for (a `Db` writes).
    hosts: HostList,
    /// The server settings and limits every connection starts with.
    settings: Vec<(&'static str, String)>,
    connect_timeout: Duration,
    connections: usize,
    acquire_timeout: Duration,
    /// `host:port` of the primary written to now.
    current: Mutex<String>,
    /// A search is running.
    searching: AtomicBool,
    /// `read_only_refusals()` when the last search started (or at connect).
    refusals_seen: AtomicU64,
}

/// How a new primary's pool is made: what `PgConnections::connect` gave the first.
#[derive(Debug, Clone)]
pub(crate) struct PoolShape {
    pub(crate) settings: Vec<(&'static str, String)>,
    pub(crate) connect_timeout: Duration,
    pub(crate) connections: usize,
    pub(crate) acquire_timeout: Duration,
}

impl Failover {
    /// For `hosts`, whose primary is `current` (`host:port`) now.
    pub(crate) fn new(hosts: HostList, current: String, shape: PoolShape) -> Failover {
        Failover {
            hosts: hosts.with_target_session_attrs(TargetSessionAttrs::ReadWrite),
            settings: shape.settings,
            connect_timeout: shape.connect_timeout,
            connections: shape.connections,
            acquire_timeout: shape.acquire_timeout,
            current: Mutex::new(current),
            searching: AtomicBool::new(false),
            refusals_seen: AtomicU64::new(read_only_refusals()),
        }
    }

    /// Whether a write was refused as read-only since the last search: the primary may have
    /// been demoted while its connections stayed up.
    pub(crate) fn refused_since_last_search(&self) -> bool {
        read_only_refusals() > self.refusals_seen.load(Ordering::Acquire)
    }

    /// Starts a search for the primary in the background, unless one is running; on success
    /// `primary` is replaced and `forget` runs (the caller's known WAL positions are of the old
    /// primary).
    pub(crate) fn search(
        self: &Arc<Self>,
        primary: &CurrentPrimary,
        forget: impl FnOnce() + Send + 'static,
    ) {
        if self.searching.swap(true, Ordering::AcqRel) {
            return;
        }
        self.refusals_seen
            .store(read_only_refusals(), Ordering::Release);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.searching.store(false, Ordering::Release);
            return;
        };
        let (failover, primary) = (self.clone(), primary.clone());
        runtime.spawn(async move {
            failover.run(&primary, forget).await;
            failover.searching.store(false, Ordering::Release);
        });
    }

    async fn run(&self, primary: &CurrentPrimary, forget: impl FnOnce()) {
        let deadline = Instant::now() + SEARCH_FOR;
        let mut pause = FIRST_PAUSE;
        loop {
            if let Ok(found) = discover(&self.hosts).await
                && let Some(chosen) = found.primary()
            {
                let label = chosen.host.label();
                let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
                if *current != label {
                    let server =
                        PgServer::from_options(chosen.host.options().clone(), self.connect_timeout)
                            .with_settings(&self.settings);
                    let fresh = Arc::new(
                        HeldPg::new(server, self.connections, self.acquire_timeout, None, None)
                            .primary_only(),
                    );
                    let old = std::mem::replace(
                        &mut *primary.write().unwrap_or_else(PoisonError::into_inner),
                        fresh,
                    );
                    *current = label;
                    drop(current);
                    forget();
                    // The old primary's connections close as their leases come back.
                    tokio::spawn(async move { old.close().await });
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
}
