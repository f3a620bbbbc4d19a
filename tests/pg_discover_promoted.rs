//! Two hosts that both claim to be primary, made for real: the streaming replica of a
//! `.ci/pg-cluster` pair is promoted (`pg_ctl promote`) while its old primary keeps running, the
//! split brain of a failover the old primary did not hear of. Discovery for writes must choose
//! the promoted one, on the newer timeline, wherever it is in the list; `any` keeps libpq's
//! first-that-answers.
//!
//! The test splits the pair it runs on, so it starts a pair of its own with `.ci/pg-cluster`
//! (ports `SQLREPO_PROMOTE_PORT` and the next, default 26500) and stops it when done, and never
//! touches the servers other suites share. Ignored by default; `-- --include-ignored` runs it,
//! and then a missing PostgreSQL is a failure.

#![cfg(feature = "postgres")]

mod common;

use std::time::{Duration, Instant};

use common::{pg_pair, pg_server};
use sqlrepo::hosts::{HostList, TargetSessionAttrs};
use sqlrepo::hosts::{Role, discover};

/// This test's own pair, with each server as the `host:port` label discovery reports.
struct Pair {
    servers: pg_pair::Pair,
    primary: String,
    replica: String,
}

impl Pair {
    fn start() -> Pair {
        let servers = pg_pair::Pair::start("SQLREPO_PROMOTE_PORT", "26500");
        let label = |url: &str| HostList::parse(url).unwrap().hosts()[0].label();
        Pair {
            primary: label(&servers.primary),
            replica: label(&servers.replica),
            servers,
        }
    }
}

/// The hosts in libpq's key=value form (`host=a,b port=1,2`), the other form of a list.
fn list(hosts: &[&String], attrs: TargetSessionAttrs) -> HostList {
    let (names, ports): (Vec<&str>, Vec<&str>) = hosts
        .iter()
        .map(|host| host.rsplit_once(':').unwrap())
        .unzip();
    HostList::parse(&format!(
        "host={} port={} user=postgres dbname=postgres target_session_attrs={attrs} \
         connect_timeout=3",
        names.join(","),
        ports.join(",")
    ))
    .unwrap()
}

#[tokio::test]
#[ignore = "needs PostgreSQL (it starts and splits a pair of its own); run with -- --include-ignored"]
async fn of_two_primaries_writes_go_to_the_one_promoted_last_on_the_newer_timeline() {
    let pair = Pair::start();
    let (old, replica) = (pair.primary.clone(), pair.replica.clone());
    let before = discover(&list(&[&old, &replica], TargetSessionAttrs::ReadWrite))
        .await
        .unwrap();
    assert_eq!(before.chosen().host.label(), old);
    let old_timeline = before.chosen().state().unwrap().timeline.unwrap();

    let replica_dir = pair.servers.dir.join("replica");
    let replica_dir = replica_dir.to_str().unwrap();
    pg_server::run("pg_ctl", ["promote", "-w", "-t", "60", "-D", replica_dir]);
    // `promote -w` returns once the server accepts writes; its probe may still be in flight.
    let deadline = Instant::now() + Duration::from_secs(30);
    let promoted = loop {
        let found = discover(&list(&[&replica], TargetSessionAttrs::Primary)).await;
        match found {
            Ok(found) => break found,
            Err(err) if Instant::now() < deadline => {
                println!("not yet a primary: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("the promoted replica is no primary 30 s later: {err}"),
        }
    };
    let new_timeline = promoted.chosen().state().unwrap().timeline.unwrap();
    assert!(
        new_timeline > old_timeline,
        "promotion starts a new timeline: {old_timeline} then {new_timeline}"
    );

    for hosts in [[&old, &replica], [&replica, &old]] {
        let found = discover(&list(&hosts, TargetSessionAttrs::ReadWrite))
            .await
            .unwrap();
        // Both answer as primaries; the newer timeline wins whatever the order.
        assert!(
            found
                .probes()
                .iter()
                .all(|probe| probe.state().unwrap().role == Role::Primary)
        );
        assert_eq!(found.chosen().host.label(), replica, "{hosts:?}");
        assert_eq!(found.primary().unwrap().host.label(), replica);
        let found = discover(&list(&hosts, TargetSessionAttrs::Primary))
            .await
            .unwrap();
        assert_eq!(found.chosen().host.label(), replica, "{hosts:?}");
        // `any` is libpq's: the first host that answers.
        let found = discover(&list(&hosts, TargetSessionAttrs::Any))
            .await
            .unwrap();
        assert_eq!(&found.chosen().host.label(), hosts[0]);
    }
}
