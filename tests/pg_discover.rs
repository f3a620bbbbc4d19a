//! Role discovery against real servers: the primary and the streaming replica of
//! `.ci/pg-cluster` (`SQLREPO_PG_URL`, `SQLREPO_PG_REPLICA_URL`), a port nothing listens on (a
//! stopped host) and a listener that accepts and never answers (a hung host). Nothing here
//! writes or stops a server.
//!
//! Ignored by default (it needs the servers); `cargo test --all-features --test pg_discover --
//! --include-ignored` runs it, and then a missing server is a failure, not a skip.

#![cfg(feature = "postgres")]

use std::time::{Duration, Instant};

use sqlrepo::Error;
use sqlrepo::hosts::{HostList, TargetSessionAttrs};
use sqlrepo::hosts::{Role, discover, probe_all};

/// A port of this suite's range that nothing listens on: a host that is down.
const STOPPED_PORT: u16 = 27439;

const NEEDS: &str = "needs a PostgreSQL primary and streaming replica (.ci/pg-cluster start: \
                     SQLREPO_PG_URL, SQLREPO_PG_REPLICA_URL); run with -- --include-ignored";

/// `host:port` of the server a one-host URL of the environment names.
fn server(var: &str) -> String {
    let url = std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set: this test {NEEDS}"));
    let list = HostList::parse(&url).unwrap();
    list.hosts()[0].label()
}

fn primary() -> String {
    server("SQLREPO_PG_URL")
}

fn replica() -> String {
    server("SQLREPO_PG_REPLICA_URL")
}

fn stopped() -> String {
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", STOPPED_PORT)).is_err(),
        "something listens on 127.0.0.1:{STOPPED_PORT}, which this test needs free"
    );
    format!("127.0.0.1:{STOPPED_PORT}")
}

fn list(hosts: &[&str], attrs: TargetSessionAttrs, extra: &str) -> HostList {
    HostList::parse(&format!(
        "postgres://postgres@{}/postgres?target_session_attrs={attrs}&connect_timeout=3{extra}",
        hosts.join(",")
    ))
    .unwrap()
}

async fn chosen(hosts: &[&str], attrs: TargetSessionAttrs) -> String {
    discover(&list(hosts, attrs, ""))
        .await
        .unwrap_or_else(|err| panic!("{attrs} among {hosts:?}: {err}"))
        .chosen()
        .host
        .label()
}

#[tokio::test]
#[ignore = "needs a PostgreSQL primary and streaming replica; run with -- --include-ignored"]
async fn read_write_finds_the_primary_behind_a_standby_and_a_stopped_host() {
    let (primary, replica, stopped) = (primary(), replica(), stopped());
    let hosts = [replica.as_str(), stopped.as_str(), primary.as_str()];
    let found = discover(&list(&hosts, TargetSessionAttrs::ReadWrite, ""))
        .await
        .unwrap();
    assert_eq!(found.chosen().host.label(), primary);
    assert_eq!(found.primary().unwrap().host.label(), primary);

    let probes = found.probes();
    let standby = probes[0].state().expect("the replica answers");
    assert_eq!(standby.role, Role::Standby);
    assert!(standby.read_only);
    let reason = probes[1].outcome.as_ref().unwrap_err();
    assert!(reason.contains("refused"), "{reason}");
    let writer = probes[2].state().expect("the primary answers");
    assert_eq!(writer.role, Role::Primary);
    assert!(!writer.read_only);
    // One cluster, never failed over: both on the same timeline, and the replica has
    // replayed something of it.
    assert!(writer.timeline.is_some_and(|timeline| timeline >= 1));
    assert_eq!(standby.timeline, writer.timeline);
    assert!(standby.wal_position.is_some_and(|position| position > 0));
    assert!(writer.wal_position.is_some_and(|position| position > 0));
    let standbys: Vec<String> = found.standbys().map(|probe| probe.host.label()).collect();
    assert_eq!(standbys, [replica]);
}

#[tokio::test]
#[ignore = "needs a PostgreSQL primary and streaming replica; run with -- --include-ignored"]
async fn each_target_session_attrs_chooses_as_libpq_does() {
    let (primary, replica, stopped) = (primary(), replica(), stopped());
    let hosts = [stopped.as_str(), primary.as_str(), replica.as_str()];
    use TargetSessionAttrs::*;
    // `any`: the first host that answers, whatever it is.
    assert_eq!(chosen(&hosts, Any).await, primary);
    assert_eq!(chosen(&hosts, ReadWrite).await, primary);
    assert_eq!(chosen(&hosts, Primary).await, primary);
    assert_eq!(chosen(&hosts, ReadOnly).await, replica);
    assert_eq!(chosen(&hosts, Standby).await, replica);
    assert_eq!(chosen(&hosts, PreferStandby).await, replica);
    // No standby among the hosts: prefer-standby takes what answers.
    assert_eq!(
        chosen(&[stopped.as_str(), primary.as_str()], PreferStandby).await,
        primary
    );
    // `any` with the replica first takes the replica.
    assert_eq!(
        chosen(&[replica.as_str(), primary.as_str()], Any).await,
        replica
    );
}

#[tokio::test]
#[ignore = "needs a PostgreSQL primary and streaming replica; run with -- --include-ignored"]
async fn a_list_without_a_primary_is_unavailable_naming_every_host_tried() {
    let (replica, stopped) = (replica(), stopped());
    let hosts = [replica.as_str(), stopped.as_str()];
    for attrs in [TargetSessionAttrs::ReadWrite, TargetSessionAttrs::Primary] {
        let err = discover(&list(&hosts, attrs, "")).await.unwrap_err();
        assert!(err.is_retryable(), "{err}");
        let Error::Unavailable(message) = &err else {
            panic!("expected Unavailable, got {err:?}");
        };
        assert!(message.contains("no host is a primary"), "{message}");
        assert!(
            message.contains(&format!("target_session_attrs={attrs}")),
            "{message}"
        );
        assert!(
            message.contains(&format!("{replica} (standby, timeline ")),
            "{message}"
        );
        assert!(
            message.contains(&format!("{stopped} (unreachable: ")),
            "{message}"
        );
    }
    // The same hosts serve a reader.
    assert_eq!(chosen(&hosts, TargetSessionAttrs::Standby).await, replica);
}

#[tokio::test]
#[ignore = "needs a PostgreSQL primary and streaming replica; run with -- --include-ignored"]
async fn a_primary_with_read_only_sessions_is_a_primary_but_not_read_write() {
    let primary = primary();
    // libpq's distinction: read-write asks the session (default_transaction_read_only),
    // primary asks the server (recovery).
    let read_only = "&options=-c%20default_transaction_read_only%3Don";
    let err = discover(&list(&[&primary], TargetSessionAttrs::ReadWrite, read_only))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("{primary} (primary, read-only sessions")),
        "{err}"
    );
    let found = discover(&list(&[&primary], TargetSessionAttrs::Primary, read_only))
        .await
        .unwrap();
    let state = found.chosen().state().unwrap();
    assert_eq!((state.role, state.read_only), (Role::Primary, true));
    let found = discover(&list(&[&primary], TargetSessionAttrs::ReadOnly, read_only))
        .await
        .unwrap();
    assert_eq!(found.chosen().host.label(), primary);
}

#[tokio::test]
#[ignore = "needs a PostgreSQL primary and streaming replica; run with -- --include-ignored"]
async fn a_host_that_never_answers_is_given_up_after_connect_timeout_and_the_others_probed_meanwhile()
 {
    let primary = primary();
    // A port the kernel picks: a fixed one in the ephemeral range can be taken by any
    // outgoing connection of the moment (CI met "Address already in use").
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let silent_port = listener.local_addr().unwrap().port();
    // Accepts every connection and holds it without a byte: a server hung mid-failover.
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let silent_host = format!("127.0.0.1:{silent_port}");
    let hosts = [silent_host.as_str(), primary.as_str()];
    let list = HostList::parse(&format!(
        "postgres://postgres@{}/postgres?target_session_attrs=read-write&connect_timeout=2",
        hosts.join(",")
    ))
    .unwrap();
    let started = Instant::now();
    let probes = probe_all(&list).await;
    let elapsed = started.elapsed();
    let found = discover(&list).await.unwrap();
    silent.abort();
    assert_eq!(found.chosen().host.label(), primary);
    let reason = probes[0].outcome.as_ref().unwrap_err();
    assert_eq!(reason, "no answer within 2 s");
    assert_eq!(probes[1].state().unwrap().role, Role::Primary);
    // Bounded by the timeout, and the hosts probed at once (not 2 s per host in turn).
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(4),
        "probing took {elapsed:?}"
    );
}
