//! Discovery on a real high-availability cluster: `.ci/patroni-cluster` starts etcd and three
//! PostgreSQL 15 nodes under Patroni (synchronous mode), the test finds the leader through the
//! three-host URL, writes through it, SIGKILLs the leader's Patroni and postmaster together (the
//! machine lost), and shows that discovery on the same URL finds the promoted node: a primary
//! on a newer timeline holding every acknowledged write. It prints kill→promotion and
//! promotion→discovery. The same through one open `Db` under 8 writers, after which the killed
//! node is restarted and the `Db` reads from it once it rejoins as a standby, and the new
//! leader is killed in turn; and a planned switchover.
//!
//! Ignored by default: it needs Patroni and etcd (Debian's `patroni` and `etcd-server`, which
//! the script installs when run as root) and loopback ports BASEPORT+1..21
//! (`SQLREPO_PATRONI_BASEPORT`, default 27000). `cargo test --all-features --test pg_patroni --
//! --include-ignored` runs it; without what it needs it fails, saying so. The cluster is stopped
//! and deleted when the test ends, passed or failed.

#![cfg(feature = "postgres")]

#[path = "common/patroni.rs"]
mod patroni;

use std::process::Command;
use std::time::{Duration, Instant};

use patroni::{Cluster, OPENING, Seen, Writers, port_of};

use sqlrepo::hosts::{DEFAULT_PROBE_TIMEOUT, Role, discover};
use sqlrepo::hosts::{HostList, TargetSessionAttrs};
use sqlrepo::{Db, NewAccount, Transfer};
use time::OffsetDateTime;

const TRANSFERS: i64 = 50;

/// One cluster at a time: both tests use the same ports.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Scans of `accounts` the server on `port` has run (a standby counts its own): one per get
/// it answered; the routing's own questions (roles, replay positions) read no table.
async fn account_scans(port: u16) -> i64 {
    use sqlx::Connection;
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let count: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(coalesce(idx_scan, 0) + seq_scan), 0)::bigint \
         FROM pg_stat_user_tables WHERE relname = 'accounts'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    count
}

/// Deposits a cent into `account` and reads it back twenty times, until the server on
/// `port` has answered at least ten of those reads (or 60 s pass): every read shows the
/// deposit just made (read-your-writes), wherever it was served. Returns the reads `port`
/// served, and the rounds it took.
async fn reads_served_on(db: &Db, account: i64, port: u16) -> (i64, usize) {
    let accounts = db.accounts();
    let before = account_scans(port).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rounds = 0;
    loop {
        let balance = accounts.deposit(account, 1).await.unwrap();
        for _ in 0..20 {
            let read = accounts.get(account).await.unwrap().unwrap().balance_cents;
            assert_eq!(read, balance, "a read after a deposit did not see it");
        }
        rounds += 1;
        // A standby's counters reach pg_stat_user_tables within about a second.
        let served = account_scans(port).await - before;
        if served >= 10 || Instant::now() > deadline {
            return (served, rounds);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
#[ignore = "needs Patroni and etcd (Debian patroni, etcd-server; root installs them); run with -- --include-ignored"]
async fn discovery_finds_the_new_primary_after_the_leader_s_machine_is_lost() {
    let _turn = TURN.lock().await;
    let cluster = Cluster::start();
    let list = HostList::parse(&cluster.url).unwrap();
    assert_eq!(list.hosts().len(), 3);
    assert_eq!(list.target_session_attrs(), TargetSessionAttrs::ReadWrite);

    let (old_name, old_port, patroni_pid, postmaster_pid) = cluster.leader();
    let before = discover(&list).await.unwrap();
    assert_eq!(port_of(&before.chosen().host.label()), old_port);
    let old_timeline = before.chosen().state().unwrap().timeline.unwrap();
    assert_eq!(before.standbys().count(), 2);

    // Acknowledged writes on the leader: with synchronous_mode each is on the standby Patroni
    // will promote.
    let db = Db::connect(&format!(
        "postgres://postgres@127.0.0.1:{old_port}/postgres"
    ))
    .await
    .unwrap();
    let accounts = db.accounts();
    let from = accounts
        .open(&NewAccount {
            user_id: None,
            balance_cents: OPENING,
        })
        .await
        .unwrap();
    let to = accounts
        .open(&NewAccount {
            user_id: None,
            balance_cents: OPENING,
        })
        .await
        .unwrap();
    for n in 0..TRANSFERS {
        accounts
            .transfer(&Transfer::new(from, to, 1).with_key(format!("patroni-{n}")))
            .await
            .unwrap();
    }
    drop(accounts);
    drop(db);

    let status = Command::new("kill")
        .args(["-KILL", &patroni_pid, &postmaster_pid])
        .status()
        .unwrap();
    assert!(status.success());
    let killed = Instant::now();
    let killed_wall = OffsetDateTime::now_utc();

    let mut failures = 0;
    let found = loop {
        assert!(
            killed.elapsed() < Duration::from_secs(90),
            "no new primary discovered 90 s after the kill"
        );
        let attempt = Instant::now();
        let result = discover(&list).await;
        // A probe never hangs past its bound, whatever state the hosts are in.
        assert!(
            attempt.elapsed() < DEFAULT_PROBE_TIMEOUT + Duration::from_secs(1),
            "discovery took {:?}",
            attempt.elapsed()
        );
        match result {
            Ok(found) if port_of(&found.chosen().host.label()) != old_port => break found,
            Ok(_) => panic!("discovery chose the killed leader on port {old_port}"),
            Err(err) => {
                assert!(err.is_retryable(), "a non-retryable error meanwhile: {err}");
                failures += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let discovered = killed.elapsed();
    let discovered_wall = OffsetDateTime::now_utc();

    let new_primary = found.chosen();
    let state = new_primary.state().unwrap();
    assert_eq!(state.role, Role::Primary);
    assert!(!state.read_only);
    let new_timeline = state.timeline.unwrap();
    assert!(
        new_timeline > old_timeline,
        "a promotion starts a new timeline: {old_timeline} then {new_timeline}"
    );
    let killed_probe = found
        .probes()
        .iter()
        .find(|probe| port_of(&probe.host.label()) == old_port)
        .unwrap();
    assert!(killed_probe.outcome.is_err(), "{killed_probe}");

    let new_port = port_of(&new_primary.host.label());
    // Patroni agrees on who leads now.
    let (new_name, leader_port, _, _) = cluster.leader();
    assert_eq!(leader_port, new_port);
    let promoted = cluster
        .promoted_at(&new_name)
        .unwrap_or_else(|| panic!("{new_name}'s Patroni logged no promotion"));
    let promotion_after_kill = promoted - killed_wall;
    let discovery_after_promotion = discovered_wall - promoted;
    println!(
        "leader {old_name} killed; {new_name} promoted {:.2} s later (Patroni's log), discovered \
         {:.2} s after the kill, {:.2} s after the promotion, {failures} discoveries without a \
         primary meanwhile",
        promotion_after_kill.as_seconds_f64(),
        discovered.as_secs_f64(),
        discovery_after_promotion.as_seconds_f64()
    );
    assert!(
        discovery_after_promotion < time::Duration::seconds(1),
        "the new primary was discovered {discovery_after_promotion} after its promotion"
    );

    // Every acknowledged transfer is on the new primary, and it takes writes.
    let db = Db::connect(&format!(
        "postgres://postgres@127.0.0.1:{new_port}/postgres"
    ))
    .await
    .unwrap();
    let accounts = db.accounts();
    assert_eq!(
        accounts.get(to).await.unwrap().unwrap().balance_cents,
        OPENING + TRANSFERS
    );
    assert_eq!(
        accounts.get(from).await.unwrap().unwrap().balance_cents,
        OPENING - TRANSFERS
    );
    assert_eq!(accounts.total_balance().await.unwrap(), 2 * OPENING);
    accounts
        .transfer(&Transfer::new(from, to, 1).with_key("patroni-after"))
        .await
        .unwrap();
    assert_eq!(
        accounts.get(to).await.unwrap().unwrap().balance_cents,
        OPENING + TRANSFERS + 1
    );
}

/// What a caller must see through a failover: only retryable errors, no call that hangs, and
/// every acknowledged transfer on the new leader once, with money conserved (`total` in all
/// accounts).
async fn check_outage(db: &Db, seen: &Seen, total: i64) {
    for err in &seen.errors {
        assert!(
            err.starts_with("Unavailable")
                || err.starts_with("Busy")
                || err.starts_with("Cancelled"),
            "a non-retryable error during the failover: {err}"
        );
    }
    assert!(
        seen.slowest < Duration::from_secs(6),
        "a call took {:?}: calls must fail fast, not hang",
        seen.slowest
    );
    let accounts = db.accounts();
    let moved = accounts.get(seen.to).await.unwrap().unwrap().balance_cents - OPENING;
    assert_eq!(
        moved, seen.acknowledged,
        "acknowledged transfers lost or doubled"
    );
    assert_eq!(
        accounts
            .get(seen.from)
            .await
            .unwrap()
            .unwrap()
            .balance_cents,
        OPENING - seen.acknowledged
    );
    assert_eq!(
        accounts.total_balance().await.unwrap(),
        total,
        "money is not conserved"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Patroni and etcd (Debian patroni, etcd-server; root installs them); run with -- --include-ignored"]
async fn one_db_on_the_three_host_url_keeps_writing_through_the_loss_of_the_leader() {
    let _turn = TURN.lock().await;
    let cluster = Cluster::start();
    let db = Db::connect(&cluster.url).await.unwrap();
    let (old_name, old_port, seen) = lose_the_leader(&cluster, &db, "first").await;

    // The lost machine comes back: Patroni rejoins the old leader as a standby of the new one
    // (pg_rewind if it had WAL the others never got), and the same open Db reads from it
    // again, still reading its own writes.
    let restarted = Instant::now();
    cluster.start_node(&old_name);
    cluster.wait_healthy(Duration::from_secs(120));
    let rejoined = restarted.elapsed();
    let (served, rounds) = reads_served_on(&db, seen.from, old_port).await;
    println!(
        "{old_name} restarted and streaming again {:.1} s later; it served {served} of the \
         Db's reads in {rounds} rounds of a deposit and 20 reads",
        rejoined.as_secs_f64()
    );
    assert!(
        served >= 10,
        "the rejoined standby {old_name} served {served} reads of the open Db"
    );

    // And the same again: the new leader's machine lost, with the rejoined node among the
    // standbys Patroni may promote.
    lose_the_leader(&cluster, &db, "second").await;
    db.close().await;
}

/// 8 writers through `db`, the leader's Patroni and postmaster SIGKILLed under them, and what
/// a caller must see (`check_outage`), with writes resumed within a second of the promotion.
/// Returns the lost leader's name and port, and what the writers saw.
async fn lose_the_leader(cluster: &Cluster, db: &Db, round: &str) -> (String, u16, Seen) {
    // The writers open two accounts; transfers move money only between them.
    let total = db.accounts().total_balance().await.unwrap() + 2 * OPENING;
    let writers = Writers::start(db).await;

    tokio::time::sleep(Duration::from_secs(2)).await;
    let before_kill = writers.acknowledged();
    assert!(
        before_kill > 0,
        "no transfer acknowledged before the kill; errors: {:?}",
        writers
            .seen
            .lock()
            .unwrap()
            .errors
            .iter()
            .take(5)
            .collect::<Vec<_>>()
    );
    let (old_name, old_port, patroni_pid, postmaster_pid) = cluster.leader();
    let killed_wall = OffsetDateTime::now_utc();
    let status = Command::new("kill")
        .args(["-KILL", &patroni_pid, &postmaster_pid])
        .status()
        .unwrap();
    assert!(status.success());
    let killed = Instant::now();
    writers.fault();

    let first_ok = loop {
        if let Some(first) = writers.first_ok_after_fault() {
            break first;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(90),
            "no write acknowledged 90 s after the leader was killed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Writes go on on the new leader for a while, then every writer finishes its key.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = writers.finish().await;

    let (new_name, _, _, _) = cluster.leader();
    assert_ne!(new_name, old_name, "Patroni promoted no other node");
    let promoted = cluster
        .promoted_at(&new_name)
        .unwrap_or_else(|| panic!("{new_name}'s Patroni logged no promotion"));
    let promotion_to_ok = first_ok.1 - promoted;
    println!(
        "{round} failover, 8 writers on one Db: {before_kill} transfers before the kill, {} in \
         all; leader {old_name} killed, {new_name} promoted {:.2} s later; first write \
         acknowledged {:.2} s after the kill, {:.2} s after the promotion; {} retryable errors \
         meanwhile, slowest call {:.2} s",
        seen.acknowledged,
        (promoted - killed_wall).as_seconds_f64(),
        (first_ok.1 - killed_wall).as_seconds_f64(),
        promotion_to_ok.as_seconds_f64(),
        seen.errors.len(),
        seen.slowest.as_secs_f64()
    );
    check_outage(db, &seen, total).await;
    assert!(
        promotion_to_ok < time::Duration::seconds(1),
        "writes resumed {promotion_to_ok} after the promotion"
    );
    (old_name, old_port, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Patroni and etcd (Debian patroni, etcd-server; root installs them); run with -- --include-ignored"]
async fn one_db_on_the_three_host_url_follows_a_planned_switchover() {
    let _turn = TURN.lock().await;
    let cluster = Cluster::start();
    let db = Db::connect(&cluster.url).await.unwrap();
    let writers = Writers::start(&db).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (old_name, _, _, _) = cluster.leader();
    let config = cluster.dir.join(&old_name).join("patroni.yml");
    let old = old_name.clone();
    writers.fault();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("patronictl")
            .arg("-c")
            .arg(config)
            .args(["switchover", "--leader", &old, "--force"])
            .output()
            .expect("patronictl")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "patronictl switchover: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster.leader().0 == old_name {
        assert!(Instant::now() < deadline, "no switchover within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Writes go on on the new leader for a while, then every writer finishes its key.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = writers.finish().await;
    let window = match (seen.errors_from, seen.errors_until) {
        (Some(from), Some(until)) => until - from,
        _ => Duration::ZERO,
    };
    let (new_name, _, _, _) = cluster.leader();
    let promoted = cluster
        .promoted_at(&new_name)
        .unwrap_or_else(|| panic!("{new_name}'s Patroni logged no promotion"));
    let resumed = seen
        .resumed
        .expect("no write acknowledged after the errors");
    let promotion_to_ok = resumed - promoted;
    println!(
        "planned switchover under 8 writers on one Db: {} transfers acknowledged, {} retryable \
         errors over {:.2} s (first error to last), slowest call {:.2} s; {new_name} promoted \
         (Patroni's log), writes resumed {:.2} s after the promotion",
        seen.acknowledged,
        seen.errors.len(),
        window.as_secs_f64(),
        seen.slowest.as_secs_f64(),
        promotion_to_ok.as_seconds_f64()
    );
    check_outage(&db, &seen, 2 * OPENING).await;
    // Most of the error window is Patroni's own: the old leader shuts down, then the candidate
    // takes the leader key at its next loop and promotes. The Db's part starts there.
    assert!(
        promotion_to_ok < time::Duration::seconds(1),
        "writes resumed {promotion_to_ok} after the promotion"
    );
    db.close().await;
}
