//! Two hosts that both claim to be primary, made for real: the streaming replica of a
//! `.ci/pg-cluster` pair is promoted (`pg_ctl promote`) while its old primary keeps running, the
//! split brain of a failover the old primary did not hear of. Discovery for writes must choose
//! the promoted one, on the newer timeline, wherever it is in the list; `any` keeps libpq's
//! first-that-answers.
//!
//! The test splits the pair it runs on, so it starts a pair of its own with `.ci/pg-cluster`
//! (ports `SQLREPO_PROMOTE_PORT` and the next, default 56500) and stops it when done, and never
//! touches the servers other suites share. Ignored by default; `-- --include-ignored` runs it,
//! and then a missing PostgreSQL is a failure.

#![cfg(feature = "postgres")]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::pg_server;
use sqlrepo::hosts::{HostList, TargetSessionAttrs};
use sqlrepo::hosts::{Role, discover};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".ci/pg-cluster")
}

/// A primary and its streaming replica of this test's own, stopped (and their directory
/// deleted) when dropped, whatever the test did to them.
struct Pair {
    dir: PathBuf,
    primary: String,
    replica: String,
    _parent: tempfile::TempDir,
}

impl Pair {
    fn start() -> Pair {
        let port = std::env::var("SQLREPO_PROMOTE_PORT").unwrap_or_else(|_| "56500".into());
        let parent = tempfile::tempdir().unwrap();
        // The servers run as the `postgres` user, which must reach the directory.
        let mut permissions = std::fs::metadata(parent.path()).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o711);
        std::fs::set_permissions(parent.path(), permissions).unwrap();
        let dir = parent.path().join("pair");
        let out = Command::new(script())
            .arg("start")
            .arg(&dir)
            .arg(&port)
            .output()
            .expect("run .ci/pg-cluster");
        assert!(
            out.status.success(),
            "could not start a PostgreSQL pair (this test needs PostgreSQL 15 -- the script \
             installs it as root -- and ports {port} and the next free):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let export = |name: &str| {
            stdout
                .split_whitespace()
                .find_map(|word| word.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("no {name} in {stdout}"))
                .trim_matches(|c| c == '\'' || c == '"')
                .to_owned()
        };
        let label = |url: String| HostList::parse(&url).unwrap().hosts()[0].label();
        Pair {
            primary: label(export("SQLREPO_PG_URL")),
            replica: label(export("SQLREPO_PG_REPLICA_URL")),
            dir,
            _parent: parent,
        }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(&self.dir).status();
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

    let replica_dir = pair.dir.join("replica");
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
