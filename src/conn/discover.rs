//! Finding out what each host of a [`HostList`] is (primary or standby, timeline), and which of
//! them a connection with its `target_session_attrs` should use.
//!
//! Every host is probed at once, each with one statement
//! ([`sqlrepo_postgres::role::server_role`]) on a fresh connection, bounded by the list's
//! `connect_timeout` (or [`DEFAULT_PROBE_TIMEOUT`]). The choice is then made in the list's
//! order, as libpq tries hosts: in parallel the answer is the one libpq would reach, without
//! waiting for each unreachable host in turn. For writes, once a host has answered as a primary
//! accepting writes, the others are waited for only [`PRIMARY_GRACE`] longer.
//!
//! Where libpq takes the first host that qualifies, two rules are added for writes (`primary`,
//! `read-write`), so that a write never goes to a server another has superseded:
//! - of two hosts that both claim to be primary (a split brain, or an old primary restarted
//!   outside Patroni's control), the one on the newer timeline is chosen: a promotion always
//!   starts a new timeline, so the newer one is the one promoted last;
//! - a primary on an older timeline than a standby reports is not chosen at all: that standby
//!   follows a primary promoted after it.

use std::fmt;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use sqlrepo_postgres::role::ServerRole;
use sqlx::Connection;
use sqlx::postgres::PgConnection;

use super::hosts::{Host, HostList, TargetSessionAttrs};
use crate::error::{Error, Result};

/// How long a probe waits for a host when the connection string sets no `connect_timeout`.
///
/// libpq would wait indefinitely; a probe must not, because calls fail fast with
/// [`Error::Unavailable`] while a new primary is looked for, and the search has to end.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A server's role, as a probe found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not in recovery: it may accept writes.
    Primary,
    /// In recovery (a streaming or recovering standby): it never accepts writes.
    Standby,
}

/// What a probe learnt about one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerState {
    /// Primary or standby (`pg_is_in_recovery()`).
    pub role: Role,
    /// The session is read-only by default (`transaction_read_only`): every standby, and a
    /// primary with `default_transaction_read_only = on`.
    pub read_only: bool,
    /// The WAL timeline the server is on, when it reports one (see
    /// [`ServerRole::timeline`]).
    pub timeline: Option<u32>,
    /// The primary's WAL write position or the standby's replay position, in bytes.
    pub wal_position: Option<i64>,
}

impl ServerState {
    fn from_row(row: ServerRole) -> ServerState {
        ServerState {
            role: if row.in_recovery {
                Role::Standby
            } else {
                Role::Primary
            },
            read_only: row.read_only,
            timeline: row
                .timeline
                .and_then(|timeline| u32::try_from(timeline).ok()),
            wal_position: row.wal_position,
        }
    }

    /// True when a connection to this server has the session `attrs` asks for (libpq's
    /// meaning; `prefer-standby` is decided across hosts, in [`choose`]).
    fn satisfies(&self, attrs: TargetSessionAttrs) -> bool {
        match attrs {
            TargetSessionAttrs::Any | TargetSessionAttrs::PreferStandby => true,
            TargetSessionAttrs::ReadWrite => self.role == Role::Primary && !self.read_only,
            TargetSessionAttrs::ReadOnly => self.read_only,
            TargetSessionAttrs::Primary => self.role == Role::Primary,
            TargetSessionAttrs::Standby => self.role == Role::Standby,
        }
    }
}

/// One host and what probing it gave.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The host probed (its options connect to it).
    pub host: Host,
    /// What the server is, or why it could not be asked (unreachable, refused, no answer in
    /// time), as a sentence.
    pub outcome: std::result::Result<ServerState, String>,
}

impl Probe {
    /// The server's state, when it answered.
    pub fn state(&self) -> Option<&ServerState> {
        self.outcome.as_ref().ok()
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (", self.host.label())?;
        match &self.outcome {
            Ok(state) => {
                f.write_str(match (state.role, state.read_only) {
                    (Role::Primary, false) => "primary",
                    (Role::Primary, true) => "primary, read-only sessions",
                    (Role::Standby, _) => "standby",
                })?;
                match state.timeline {
                    Some(timeline) => write!(f, ", timeline {timeline})"),
                    None => f.write_str(", timeline unknown)"),
                }
            }
            Err(reason) => write!(f, "unreachable: {reason})"),
        }
    }
}

/// Every host's probe, and the one chosen for the list's `target_session_attrs`.
#[derive(Debug, Clone)]
pub struct Discovery {
    probes: Vec<Probe>,
    chosen: usize,
    target_session_attrs: TargetSessionAttrs,
}

impl Discovery {
    /// The host to connect to for the list's `target_session_attrs`.
    pub fn chosen(&self) -> &Probe {
        &self.probes[self.chosen]
    }

    /// Every host, in the list's order, with what its probe found.
    pub fn probes(&self) -> &[Probe] {
        &self.probes
    }

    /// The host writes go to: the one [`choose`] picks for `primary` (not in recovery, newest
    /// timeline, not superseded), if any. The same as [`Discovery::chosen`] for `primary`.
    pub fn primary(&self) -> Option<&Probe> {
        choose(TargetSessionAttrs::Primary, &self.probes).map(|index| &self.probes[index])
    }

    /// The hosts that answered as standbys, in the list's order: where reads may go under the
    /// read-your-writes promise (a standby's replay position is checked per read).
    pub fn standbys(&self) -> impl Iterator<Item = &Probe> {
        self.probes.iter().filter(|probe| {
            probe
                .state()
                .is_some_and(|state| state.role == Role::Standby)
        })
    }

    /// The `target_session_attrs` the choice was made for.
    pub fn target_session_attrs(&self) -> TargetSessionAttrs {
        self.target_session_attrs
    }
}

/// Probes every host of `list` at once and chooses one for its `target_session_attrs`.
///
/// # Errors
/// [`Error::Unavailable`] when no host qualifies (none reachable, or, for `read-write`, only
/// standbys: the case of a failover in progress), naming every host tried and what it was.
/// Retryable: a host promoted later qualifies on the next call.
pub async fn discover(list: &HostList) -> Result<Discovery> {
    let attrs = list.target_session_attrs();
    let probes = match attrs {
        TargetSessionAttrs::Primary | TargetSessionAttrs::ReadWrite => {
            probe_until_primary(list).await
        }
        _ => probe_all(list).await,
    };
    match choose(attrs, &probes) {
        Some(chosen) => Ok(Discovery {
            probes,
            chosen,
            target_session_attrs: attrs,
        }),
        None => Err(Error::Unavailable(no_host_qualifies(attrs, &probes))),
    }
}

/// Probes every host of `list` at once, each bounded by the list's `connect_timeout` (or
/// [`DEFAULT_PROBE_TIMEOUT`]); the result is in the list's order.
pub async fn probe_all(list: &HostList) -> Vec<Probe> {
    probe_hosts(list, None).await
}

/// How long, once one host has answered as a primary accepting writes, the hosts that have
/// not answered yet are waited for. During a failover one of them can hold its probe for the
/// whole `connect_timeout` (a node being restarted by Patroni, a machine gone silent), which
/// would keep writes failing seconds past the promotion; the ones that do answer within this
/// still take part in the choice (the newest timeline wins).
pub const PRIMARY_GRACE: Duration = Duration::from_millis(300);

/// [`probe_all`], except that once a host has answered as a primary accepting writes, hosts
/// still unanswered [`PRIMARY_GRACE`] later are left out as not answering.
async fn probe_until_primary(list: &HostList) -> Vec<Probe> {
    probe_hosts(list, Some(PRIMARY_GRACE)).await
}

/// Every host probed at once; with a `grace`, the probes still out that long after a host
/// answered as a primary accepting writes are given up, as not answering.
async fn probe_hosts(list: &HostList, grace: Option<Duration>) -> Vec<Probe> {
    let timeout = list.connect_timeout().unwrap_or(DEFAULT_PROBE_TIMEOUT);
    let mut pending: FuturesUnordered<_> = list
        .hosts()
        .iter()
        .enumerate()
        .map(|(index, host)| async move { (index, probe(host, timeout).await) })
        .collect();
    let mut answered: Vec<Option<Probe>> = vec![None; list.hosts().len()];
    let mut grace_ends: Option<tokio::time::Instant> = None;
    loop {
        let next = match grace_ends {
            None => pending.next().await,
            Some(deadline) => match tokio::time::timeout_at(deadline, pending.next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
        };
        let Some((index, probe)) = next else { break };
        if let Some(grace) = grace
            && grace_ends.is_none()
            && probe
                .state()
                .is_some_and(|state| state.satisfies(TargetSessionAttrs::ReadWrite))
        {
            grace_ends = Some(tokio::time::Instant::now() + grace);
        }
        answered[index] = Some(probe);
    }
    list.hosts()
        .iter()
        .zip(answered)
        .map(|(host, probe)| {
            probe.unwrap_or_else(|| Probe {
                host: host.clone(),
                outcome: Err(format!(
                    "no answer within {} ms of another host answering as the primary",
                    grace.unwrap_or_default().as_millis()
                )),
            })
        })
        .collect()
}

/// Connects to one host, reads its role, and closes the connection.
pub async fn probe(host: &Host, timeout: Duration) -> Probe {
    let asked = async {
        let mut conn = PgConnection::connect_with(host.options()).await?;
        let role = sqlrepo_postgres::role::server_role(&mut conn).await;
        // The probe's answer is all that matters; a close that fails loses nothing.
        let _ = conn.close().await;
        role
    };
    let outcome = match tokio::time::timeout(timeout, asked).await {
        Ok(Ok(row)) => Ok(ServerState::from_row(row)),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("no answer within {} s", timeout.as_secs_f64())),
    };
    Probe {
        host: host.clone(),
        outcome,
    }
}

/// The index of the probe a connection with `attrs` should use, libpq's way (the first in the
/// list that qualifies; `prefer-standby`: the first standby, else the first reachable host),
/// with the two rules for writes of this module's documentation.
pub fn choose(attrs: TargetSessionAttrs, probes: &[Probe]) -> Option<usize> {
    let answered = || {
        probes
            .iter()
            .enumerate()
            .filter_map(|(index, probe)| Some((index, probe.state()?)))
    };
    match attrs {
        TargetSessionAttrs::Primary | TargetSessionAttrs::ReadWrite => {
            let newest_standby = answered()
                .filter(|(_, state)| state.role == Role::Standby)
                .filter_map(|(_, state)| state.timeline)
                .max();
            let candidates = answered().filter(|(_, state)| {
                state.satisfies(attrs)
                    && !matches!((state.timeline, newest_standby), (Some(mine), Some(theirs)) if mine < theirs)
            });
            // The newest timeline wins; among equals, the first in the list (max_by_key would
            // keep the last, hence the reversed index).
            candidates
                .max_by_key(|(index, state)| (state.timeline, std::cmp::Reverse(*index)))
                .map(|(index, _)| index)
        }
        TargetSessionAttrs::PreferStandby => answered()
            .find(|(_, state)| state.role == Role::Standby)
            .or_else(|| answered().next())
            .map(|(index, _)| index),
        TargetSessionAttrs::Any | TargetSessionAttrs::ReadOnly | TargetSessionAttrs::Standby => {
            answered()
                .find(|(_, state)| state.satisfies(attrs))
                .map(|(index, _)| index)
        }
    }
}

fn no_host_qualifies(attrs: TargetSessionAttrs, probes: &[Probe]) -> String {
    let wanted = match attrs {
        TargetSessionAttrs::ReadWrite => "a primary accepting writes",
        TargetSessionAttrs::Primary => "a primary",
        TargetSessionAttrs::ReadOnly => "a server with read-only sessions",
        TargetSessionAttrs::Standby => "a standby",
        TargetSessionAttrs::Any | TargetSessionAttrs::PreferStandby => "a server that answers",
    };
    let tried: Vec<String> = probes.iter().map(Probe::to_string).collect();
    format!(
        "no host is {wanted} (target_session_attrs={attrs}) among the hosts tried: {}",
        tried.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probes(states: &[Option<(Role, bool, Option<u32>)>]) -> Vec<Probe> {
        let hosts: Vec<String> = (0..states.len()).map(|index| format!("h{index}")).collect();
        let list =
            HostList::parse_with_env(&format!("host={} port=5432", hosts.join(",")), &|_| None)
                .unwrap();
        list.hosts()
            .iter()
            .zip(states)
            .map(|(host, state)| Probe {
                host: host.clone(),
                outcome: match state {
                    Some((role, read_only, timeline)) => Ok(ServerState {
                        role: *role,
                        read_only: *read_only,
                        timeline: *timeline,
                        wal_position: Some(0),
                    }),
                    None => Err("connection refused".to_owned()),
                },
            })
            .collect()
    }

    const PRIMARY: Option<(Role, bool, Option<u32>)> = Some((Role::Primary, false, Some(1)));
    const STANDBY: Option<(Role, bool, Option<u32>)> = Some((Role::Standby, true, Some(1)));
    const DOWN: Option<(Role, bool, Option<u32>)> = None;

    #[test]
    fn read_write_and_primary_take_the_primary_wherever_it_is_in_the_list() {
        let list = probes(&[DOWN, STANDBY, PRIMARY]);
        assert_eq!(choose(TargetSessionAttrs::ReadWrite, &list), Some(2));
        assert_eq!(choose(TargetSessionAttrs::Primary, &list), Some(2));
    }

    #[test]
    fn any_takes_the_first_host_that_answers_as_libpq_does() {
        let list = probes(&[DOWN, STANDBY, PRIMARY]);
        assert_eq!(choose(TargetSessionAttrs::Any, &list), Some(1));
        assert_eq!(
            choose(TargetSessionAttrs::Any, &probes(&[DOWN, DOWN])),
            None
        );
    }

    #[test]
    fn standby_and_read_only_take_the_first_standby() {
        let list = probes(&[PRIMARY, DOWN, STANDBY, STANDBY]);
        assert_eq!(choose(TargetSessionAttrs::Standby, &list), Some(2));
        assert_eq!(choose(TargetSessionAttrs::ReadOnly, &list), Some(2));
        assert_eq!(
            choose(TargetSessionAttrs::Standby, &probes(&[PRIMARY])),
            None
        );
    }

    #[test]
    fn prefer_standby_falls_back_to_the_first_host_that_answers() {
        assert_eq!(
            choose(
                TargetSessionAttrs::PreferStandby,
                &probes(&[PRIMARY, STANDBY])
            ),
            Some(1)
        );
        assert_eq!(
            choose(TargetSessionAttrs::PreferStandby, &probes(&[DOWN, PRIMARY])),
            Some(1)
        );
    }

    #[test]
    fn a_read_only_primary_is_a_primary_but_not_read_write_nor_a_standby() {
        let list = probes(&[Some((Role::Primary, true, Some(1)))]);
        assert_eq!(choose(TargetSessionAttrs::ReadWrite, &list), None);
        assert_eq!(choose(TargetSessionAttrs::Primary, &list), Some(0));
        assert_eq!(choose(TargetSessionAttrs::ReadOnly, &list), Some(0));
        assert_eq!(choose(TargetSessionAttrs::Standby, &list), None);
    }

    #[test]
    fn of_two_primaries_the_newer_timeline_is_chosen_and_the_first_among_equals() {
        let list = probes(&[PRIMARY, Some((Role::Primary, false, Some(3)))]);
        assert_eq!(choose(TargetSessionAttrs::ReadWrite, &list), Some(1));
        assert_eq!(choose(TargetSessionAttrs::Primary, &list), Some(1));
        let list = probes(&[PRIMARY, PRIMARY]);
        assert_eq!(choose(TargetSessionAttrs::ReadWrite, &list), Some(0));
    }

    #[test]
    fn a_primary_older_than_a_standby_s_timeline_is_superseded_and_never_chosen() {
        let list = probes(&[PRIMARY, Some((Role::Standby, true, Some(2)))]);
        assert_eq!(choose(TargetSessionAttrs::ReadWrite, &list), None);
        // A standby that reports no timeline says nothing against the primary.
        let list = probes(&[PRIMARY, Some((Role::Standby, true, None))]);
        assert_eq!(choose(TargetSessionAttrs::ReadWrite, &list), Some(0));
    }

    #[test]
    fn no_host_qualifying_names_every_host_tried_and_what_it_was() {
        let list = probes(&[STANDBY, DOWN]);
        let message = no_host_qualifies(TargetSessionAttrs::ReadWrite, &list);
        assert_eq!(
            message,
            "no host is a primary accepting writes (target_session_attrs=read-write) among the \
             hosts tried: h0:5432 (standby, timeline 1), h1:5432 (unreachable: connection refused)"
        );
    }
}
