//! The connections of a [`Db`](crate::Db) on PostgreSQL (cargo feature `postgres`): held
//! connections to the primary for writes, transactions and reads, and to each streaming replica
//! for reads (see `pg_held`), with reads routed so that a caller reads its own writes.
//!
//! # Reading one's own writes on asynchronous replicas
//!
//! A replica replays the primary's write-ahead log some milliseconds behind it, so a read sent
//! there right after a write may not see it. sqlrepo keeps one promise: a read made through a
//! `Db` after one of its writes *returned* sees that write. It keeps it like this:
//!
//! - every write lease counts itself when it comes back (`Writes::done`), which is before the
//!   write's caller gets its answer;
//! - a read goes to a replica only when the `Db` knows a WAL position of the primary taken
//!   after every write counted so far, and knows that the replica has replayed that far;
//! - otherwise it reads on the primary at once, and a background task learns what was missing
//!   (the primary's position, `pg_current_wal_insert_lsn()`, or the replica's,
//!   `pg_last_wal_replay_lsn()`), one question at a time, so later reads can use the replica.
//!
//! The primary's *insert* position, not its write position (`pg_current_wal_lsn()`): under
//! `synchronous_commit = off` a commit returns before its WAL record is written, so only the
//! insert position is sure to cover it.
//!
//! What a replica replayed is known per connection (each held connection remembers the answer
//! its own server gave) and forgotten when the connection is made again: behind one address
//! there may be another server after a reconnect (one restarted from an older base backup, a
//! load balancer's other host). A server that answers that it is not in recovery (promoted, or
//! the primary's address given as a replica) is not read as a replica.
//!
//! So no read waits for a routing question: routing costs a few atomic loads, and a read right
//! after a write costs what a read on the primary costs. A transaction committed before the
//! primary's answer is at or below the position it gives, so a replica that replayed that far
//! shows it. A replica that does not answer within [`REPLICA_WAIT`] (a connection, a position)
//! is left alone for [`REPLICA_COOLDOWN`]; reads go to the other replicas or the primary
//! meanwhile. Reads of a `Db` that has written nothing need no question at all.
//!
//! The read itself is under the same limit (`Handle::read`, in `conn/read.rs`): a replica
//! that stops answering mid-read (its processes stopped, packets dropped), or whose
//! connection breaks, has the read run again on the primary, and its connection is dropped.
//!
//! # Why the promise covers every write of the `Db`, not only the caller's
//!
//! A read may use a replica only once a position covering *every* write of the whole `Db` is
//! known, so the more a `Db` writes, the fewer reads its replicas serve (the bench's "pg
//! replica share under writes" row). A per-caller token (the position after *that* caller's
//! write, carried by a session object) would let other callers keep reading on the replica,
//! but it would weaken the promise existing callers rely on: a read made through a `Db` after
//! *any* of its writes returned sees that write, whichever task made it (one task writes,
//! hands the id to another over a channel, which reads). That promise is kept for the existing
//! API; a session type with a weaker, per-caller promise can be added beside it later without
//! changing this routing (it would carry its own `Writes`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sqlx::postgres::PgConnection;

use super::discover::discover;
use super::failover::{CurrentPrimary, Failover, PoolShape};
use super::hosts::{HostList, TargetSessionAttrs};
use super::options::DbOptions;
use super::pg_held::{HeldPg, PgLent};
pub use super::pg_replicas::{REPLICA_COOLDOWN, REPLICA_WAIT};
use super::pg_replicas::{Replicas, Writes, refresh_position};
use super::pg_server::{ConnectFailure, PgServer};
use crate::error::{Error, Result, has_sqlstate, sqlstate};

/// How long a call waits for a free connection to the primary before [`Error::Busy`].
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLSTATE 42P01: the bookkeeping table is missing (never migrated).
const UNDEFINED_TABLE: &str = "42P01";

/// The primary and the replicas of one database.
#[derive(Debug)]
pub(crate) struct PgConnections {
    /// The primary written to; a failover search replaces it.
    primary: CurrentPrimary,
    /// For a `Db` given several hosts: how to find the next primary when this one is lost,
    /// and the standbys that come back.
    failover: Option<Arc<Failover>>,
    /// The standbys read from (a `Db` given several hosts adds those that come back).
    replicas: Arc<Replicas>,
    next_replica: AtomicUsize,
    /// What reads need to know to read this `Db`'s writes (shared with write leases).
    writes: Arc<Writes>,
}

impl PgConnections {
    /// Connects to the primary (within `options.connect_timeout`) and migrates or verifies
    /// it as `options` say, and prepares the replicas' connections, which are made on first
    /// use: a replica that is down does not keep the `Db` from opening.
    pub(crate) async fn connect(
        primary: &str,
        replicas: &[&str],
        options: &DbOptions,
    ) -> Result<Self> {
        // The server-side limits every connection starts with.
        let settings = options.server_settings()?;
        let Located {
            primary: primary_server,
            standbys,
            hosts,
            timeline,
        } = locate(primary, options).await?;
        let primary_label = primary_server.label();
        let primary_server = primary_server.with_settings(&settings);
        // Connect once now, so a wrong URL or a server that is down fails here; the connection
        // migrates, then stays as the primary's first held connection.
        let mut first = match primary_server.try_connect().await {
            Ok(conn) => conn,
            Err(ConnectFailure::Driver(err))
                if has_sqlstate(&err, sqlstate::INVALID_CATALOG_NAME) =>
            {
                // Created only when asked: a typo in a URL must not be served as an empty
                // database.
                if !options.create_database {
                    return Err(primary_server.missing_database());
                }
                primary_server.create_database(primary).await?;
                primary_server.connect().await?
            }
            Err(_) => primary_server.connect().await?,
        };
        if options.migrate {
            migrate_postgres(&mut first)
                .await
                .map_err(|err| match err {
                    // The server refused the migrations' DDL as read-only: a standby (or a
                    // database set read-only). Say what to do, not which statement failed.
                    Error::ReadOnly(reason) => Error::Config(format!(
                        "the PostgreSQL server at {} refuses writes ({reason}): it is a standby, or \
                         the database is read-only. A Db writes: connect it to the primary, or \
                         give every host (postgres://user@h1,h2,h3/db?target_session_attrs=read-write) \
                         and sqlrepo finds the primary",
                        primary_server.describe()
                    )),
                    other => other,
                })?;
        } else if options.verify_migrations {
            verify_postgres(&mut first).await?;
        }
        let held = HeldPg::new(
            primary_server.clone(),
            options.primary_connections,
            ACQUIRE_TIMEOUT,
            Some(first),
            None,
        );
        // With several hosts, a reconnect may meet the old primary restarted as a standby.
        let held = if hosts.is_some() {
            held.primary_only()
        } else {
            held
        };
        let primary = Arc::new(RwLock::new(Arc::new(held)));
        let replica_connect = options.connect_timeout.min(REPLICA_WAIT);
        // The replicas named, then the standbys a host list showed beside its primary.
        let servers = replicas
            .iter()
            .map(|url| PgServer::parse(url, replica_connect))
            .chain(standbys.into_iter().map(Ok))
            .map(|server| Ok(server?.with_settings(&settings)))
            .collect::<Result<Vec<_>>>()?;
        let replicas = Arc::new(Replicas::new(
            servers,
            options.replica_connections,
            timeline,
        ));
        let writes = Arc::<Writes>::default();
        let failover = hosts.map(|hosts| {
            let failover = Arc::new(Failover::new(
                hosts,
                (primary_label, timeline),
                PoolShape {
                    settings: settings.clone(),
                    connect_timeout: primary_server.connect_timeout(),
                    connections: options.primary_connections,
                    acquire_timeout: ACQUIRE_TIMEOUT,
                    replica_connect_timeout: replica_connect,
                    replica_connections: options.replica_connections,
                },
                primary.clone(),
                writes.clone(),
                replicas.clone(),
            ));
            // Hosts that were down at connect may come back as standbys.
            failover.watch();
            failover
        });
        let connections = PgConnections {
            primary,
            failover,
            replicas,
            next_replica: AtomicUsize::new(0),
            writes,
        };
        // The schema is a write too: reads made after this must see it.
        connections.writes.count();
        Ok(connections)
    }

    /// A connection to the primary, for a write or a transaction.
    pub(crate) async fn write_conn(&self) -> Result<PgLent> {
        let lent = self.current_primary().lend().await;
        if matches!(lent, Err(Error::Unavailable(_))) {
            // The primary is lost, or a new connection found it a standby: look for the new
            // one in the background; this call fails as it is, without waiting for the search.
            self.primary_lost();
        }
        lent
    }

    /// What a lease on the primary tells when its own call was refused as the primary's
    /// loss or demotion would be (see `error::refusal_seen_since`): `None` for a `Db` of one
    /// host, which has nowhere else to look.
    pub(crate) fn failover(&self) -> Option<Arc<Failover>> {
        self.failover.clone()
    }

    /// Starts the search for a new primary (a `Db` given several hosts).
    fn primary_lost(&self) {
        if let Some(failover) = &self.failover {
            failover.search();
        }
    }

    /// The primary written to now.
    fn current_primary(&self) -> Arc<HeldPg> {
        self.primary
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The counter write leases report to.
    pub(crate) fn writes(&self) -> Arc<Writes> {
        self.writes.clone()
    }

    /// A connection to read on: a replica that has replayed every write this `Db` returned,
    /// else the primary.
    pub(crate) async fn read_conn(&self) -> Result<PgLent> {
        if self.replicas.take_newer_primary() {
            // Two primaries, one promoted after the other: writes must go to the newer.
            self.primary_lost();
        }
        let replicas = self.replicas.current();
        if replicas.is_empty() {
            return self.write_conn().await;
        }
        let Some(needed) = self.writes.needed() else {
            // A write returned after the last position known: learn it, read on the primary.
            self.learn_position();
            return self.write_conn().await;
        };
        let count = replicas.len();
        let start = self.next_replica.fetch_add(1, Ordering::Relaxed) % count;
        let mut behind = None;
        for replica in (0..count).map(|i| &replicas[(start + i) % count]) {
            if replica.resting() {
                continue;
            }
            let Some(conn) = replica.acquire().await else {
                continue;
            };
            // What this very connection's server replayed: another connection of the same
            // replica may reach another server.
            if conn.replayed().is_some_and(|replayed| replayed >= needed) {
                return Ok(conn);
            }
            if behind.is_none() {
                behind = Some(replica);
            }
        }
        if let Some(replica) = behind {
            refresh_position(replica.clone(), self.replicas.clone());
        }
        self.write_conn().await
    }

    /// Starts a task that asks the primary for its position, unless one is asking already.
    fn learn_position(&self) {
        if self.writes.learning.swap(true, Ordering::AcqRel) {
            return;
        }
        let writes = self.writes.clone();
        let primary = self.current_primary();
        let failover = self.failover.clone();
        let learn = async move {
            // A failure leaves reads on the primary; the next read after a write asks again.
            let since = crate::error::refusals_so_far();
            if writes.learn(&primary).await.is_err()
                && crate::error::refusal_seen_since(since)
                && let Some(failover) = failover
            {
                // The primary answered as a standby would: it was demoted.
                failover.search();
            }
            writes.learning.store(false, Ordering::Release);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(learn)),
            Err(_) => self.writes.learning.store(false, Ordering::Release),
        }
    }

    /// Closes every pool, and stops the failover's searches and probes.
    pub(crate) async fn close(&self) {
        if let Some(failover) = &self.failover {
            failover.close();
        }
        self.current_primary().close().await;
        self.replicas.close().await;
    }
}

/// The primary to connect to, and the standbys to read from, for `url`.
///
/// A one-host URL names the primary itself, as always. libpq's multi-host form (several hosts,
/// or a `target_session_attrs`) is read by `hosts::HostList` and every host asked at once what
/// it is (`discover`): writes go to the host that is primary whatever the list asks for (a
/// `Db` writes), and the hosts that answered as standbys serve reads under the same
/// read-your-writes promise as named replicas.
///
/// # Errors
/// [`Error::Config`] for a string libpq would refuse (the message names the part);
/// [`Error::Unavailable`], naming every host tried and what it was, when none is a primary.
async fn locate(url: &str, options: &DbOptions) -> Result<Located> {
    let list = match HostList::parse(url) {
        Ok(list)
            if list.is_multi_host() || list.target_session_attrs() != TargetSessionAttrs::Any =>
        {
            list
        }
        Ok(_) => {
            return Ok(Located {
                primary: PgServer::parse(url, options.connect_timeout)?,
                standbys: Vec::new(),
                hosts: None,
                timeline: None,
            });
        }
        // libpq's reading is the stricter: what it refuses (an unknown target_session_attrs, a
        // port that is no number) is refused, naming the part, before anything is touched.
        Err(err) => return Err(err),
    };
    let connect_timeout = list.connect_timeout().unwrap_or(options.connect_timeout);
    let found = match discover(&list).await {
        Ok(found) => found,
        // The list asked for a standby or a read-only session and none answered as one; a
        // `Db` still needs the primary, so look again for that.
        Err(_)
            if !matches!(
                list.target_session_attrs(),
                TargetSessionAttrs::Primary | TargetSessionAttrs::ReadWrite
            ) =>
        {
            discover(&list.with_target_session_attrs(TargetSessionAttrs::Primary)).await?
        }
        Err(err) => return Err(err),
    };
    let Some(primary) = found.primary() else {
        let tried: Vec<String> = found.probes().iter().map(ToString::to_string).collect();
        return Err(Error::Unavailable(format!(
            "no host is a primary among the hosts tried (a Db writes, so it needs one): {}",
            tried.join(", ")
        )));
    };
    let standbys = found
        .standbys()
        .map(|probe| {
            PgServer::from_options(
                probe.host.options().clone(),
                connect_timeout.min(REPLICA_WAIT),
            )
        })
        .collect();
    Ok(Located {
        primary: PgServer::from_options(primary.host.options().clone(), connect_timeout),
        standbys,
        hosts: Some(list),
        timeline: primary.state().and_then(|state| state.timeline),
    })
}

/// What [`locate`] found.
struct Located {
    primary: PgServer,
    standbys: Vec<PgServer>,
    /// The host list, when the URL gave several hosts: the next primary is looked for there.
    hosts: Option<HostList>,
    /// The primary's timeline, when discovery found it.
    timeline: Option<u32>,
}

/// Applies sqlrepo's PostgreSQL migrations that have not run (sqlx takes an advisory lock, so
/// several processes starting at once apply each migration once).
pub(crate) async fn migrate_postgres(conn: &mut PgConnection) -> Result<()> {
    // `run_direct` on the connection itself: `run` wants an `Acquire`, whose bounds make the
    // future not `Send` for every lifetime (so not spawnable).
    sqlrepo_postgres::MIGRATOR
        .run_direct(None, conn, false)
        .await?;
    Ok(())
}

/// Checks that the migrations recorded on this database are exactly the embedded ones, without
/// changing anything (so a role without DDL rights can run it).
///
/// # Errors
/// [`Error::Schema`] when one is missing, failed, differs, or is unknown to this release.
pub(crate) async fn verify_postgres(conn: &mut PgConnection) -> Result<()> {
    let recorded = match sqlrepo_postgres::migrations::recorded(conn).await {
        Ok(recorded) => recorded,
        Err(err) if has_sqlstate(&err, UNDEFINED_TABLE) => {
            return Err(Error::Schema(
                "no sqlrepo migrations are recorded on this database (no _sqlrepo_migrations \
                 table): run them (cargo sqlx migrate run, or connect once with migrations on)"
                    .to_owned(),
            ));
        }
        Err(err) => return Err(err.into()),
    };
    check_recorded(&recorded)
}

/// The comparison of [`verify_postgres`], on the rows read.
fn check_recorded(recorded: &[sqlrepo_postgres::migrations::Recorded]) -> Result<()> {
    let embedded: Vec<_> = sqlrepo_postgres::MIGRATOR
        .iter()
        .filter(|migration| migration.migration_type.is_up_migration())
        .collect();
    for row in recorded {
        let Some(migration) = embedded.iter().find(|m| m.version == row.version) else {
            return Err(Error::Schema(format!(
                "the database has migration {} applied, which this version of sqlrepo does not \
                 know; it was migrated by a newer release",
                row.version
            )));
        };
        if !row.success {
            return Err(Error::Schema(format!(
                "migration {} failed part-way on an earlier run; repair the database by hand",
                row.version
            )));
        }
        if *migration.checksum != *row.checksum {
            return Err(Error::Schema(format!(
                "migration {} applied to this database differs from the one in this release; \
                 the migrations were edited after they ran",
                row.version
            )));
        }
    }
    if let Some(missing) = embedded
        .iter()
        .find(|m| !recorded.iter().any(|row| row.version == m.version))
    {
        return Err(Error::Schema(format!(
            "migration {} ({}) has not been applied to this database: run the migrations \
             (cargo sqlx migrate run, or connect once with migrations on)",
            missing.version, missing.description
        )));
    }
    Ok(())
}
