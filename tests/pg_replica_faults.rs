//! A replicated `Db` under what replicas do in production (cargo feature `postgres`):
//! asynchronous commit on the primary, a replica whose processes stop answering (`SIGSTOP`),
//! a replica shut down (`pg_ctl stop`).
//!
//! They need the cluster of `.ci/pg-cluster` (`SQLREPO_PG_URL`, `SQLREPO_PG_REPLICA_URL`,
//! `SQLREPO_PG_DATA`) and the right to signal and stop its replica (root, or the `postgres`
//! user): ignored by default, run with `-- --include-ignored`, where anything missing fails
//! them. The tests of this file take turns (one lock), since two of them stop the replica.
#![cfg(feature = "postgres")]

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::backend::{Backend, PgDatabase, missing, pg};
use common::pg_server;
use futures_util::TryStreamExt;
use serde_json::json;
use sqlrepo::{Db, ItemPatch, ItemStatus, NewItem, NewUser};
use sqlrepo::{REPLICA_COOLDOWN, REPLICA_WAIT};
use sqlx::{Connection, PgConnection};

/// One test at a time: some of them stop the replica the others read.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A fresh database on the primary and its URL on the replica; fails without a cluster
/// (`pg::create` checks the two URLs, this the data directory the tests stop the replica in).
async fn database() -> PgDatabase {
    if std::env::var("SQLREPO_PG_DATA").is_err() {
        missing("SQLREPO_PG_DATA is not set (these tests signal and stop the replica in it)");
    }
    pg::create(Backend::Replicated)
        .await
        .expect("a PostgreSQL test database")
}

/// The data an item holds after round `round`.
fn round_data(round: i64) -> serde_json::Value {
    json!({ "round": round })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the PostgreSQL cluster of .ci/pg-cluster (SQLREPO_PG_URL, SQLREPO_PG_REPLICA_URL); run with -- --include-ignored"]
async fn asynchronous_commit_still_reads_its_own_writes() {
    let _turn = TURN.lock().await;
    let database = database().await;
    let replica_url = database.replica_url.clone().unwrap();
    let name = database.url.rsplit('/').next().unwrap().to_owned();
    let mut admin = PgConnection::connect(&database.url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {name} SET synchronous_commit = off"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    admin.close().await.unwrap();

    let db = Db::connect_replicated(&database.url, &[&replica_url])
        .await
        .unwrap();
    let mut conn = db.handle().writer().await.unwrap();
    let setting: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(conn.postgres().unwrap())
        .await
        .unwrap();
    assert_eq!(setting, "off", "the Db's sessions commit asynchronously");
    drop(conn);

    let id = db
        .items()
        .create(&NewItem::new("counter", round_data(0)))
        .await
        .unwrap();
    let (rounds, mut stale) = (300, Vec::new());
    for round in 1..=rounds {
        let patch = ItemPatch {
            data: Some(round_data(round)),
            ..ItemPatch::default()
        };
        assert!(db.items().update(id, &patch).await.unwrap());
        for get in 0..3 {
            let seen = db.items().get(id).await.unwrap().unwrap().data;
            if seen != round_data(round) {
                stale.push((round, get, seen));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert!(
        stale.is_empty(),
        "{} stale reads of {}: {:?}",
        stale.len(),
        rounds * 3,
        &stale[..stale.len().min(5)]
    );
    // Asynchronous commits reach the replica only once the WAL writer has written them, so
    // the gets right after a write are (rightly) answered by the primary; once the writes
    // stop and the replica has them, reads go there again.
    reads_reach_the_replica(&db, id, &replica_url).await;
    assert_eq!(
        db.items().get(id).await.unwrap().unwrap().data,
        round_data(rounds)
    );
    db.close().await;
}

/// The replica's postmaster and its children, from its data directory.
fn replica_processes() -> Vec<String> {
    let data = PathBuf::from(std::env::var("SQLREPO_PG_DATA").unwrap()).join("replica");
    let pid_file = std::fs::read_to_string(data.join("postmaster.pid"))
        .expect("the replica's postmaster.pid (is it running?)");
    let postmaster = pid_file.lines().next().unwrap().trim().to_owned();
    let children = std::process::Command::new("pgrep")
        .args(["-P", &postmaster])
        .output()
        .expect("pgrep");
    let mut pids = vec![postmaster];
    pids.extend(
        String::from_utf8_lossy(&children.stdout)
            .split_whitespace()
            .map(str::to_owned),
    );
    pids
}

/// Sends `signal` to `pids` (the postmaster first), failing the test if the postmaster cannot
/// be signalled. A child may exit between `pgrep` and `kill` (a backend of a neighbouring
/// test's connection closing), and one that is gone needs no signal.
fn signal(signal: &str, pids: &[String]) {
    for (position, pid) in pids.iter().enumerate() {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("kill");
        let gone = !PathBuf::from(format!("/proc/{pid}")).exists();
        assert!(
            status.success() || (position > 0 && gone),
            "kill -{signal} {pid} (of {pids:?})"
        );
    }
}

/// Resumes the stopped replica however the test ends.
struct Resume(Vec<String>);

impl Drop for Resume {
    fn drop(&mut self) {
        signal("CONT", &self.0);
    }
}

/// Gets `ids` one after the other, each bounded, and returns the slowest.
async fn gets_within(db: &Db, ids: &[i64], limit: Duration) -> Duration {
    let mut slowest = Duration::ZERO;
    for &id in ids {
        let started = Instant::now();
        let item = tokio::time::timeout(Duration::from_secs(20), db.items().get(id))
            .await
            .expect("a get did not return within 20 s")
            .unwrap()
            .unwrap();
        assert_eq!(item.id, id);
        slowest = slowest.max(started.elapsed());
    }
    assert!(slowest < limit, "the slowest get took {slowest:?}");
    slowest
}

/// A replicated `Db` on a fresh database with `count` items named `{prefix}-{n}`, read from
/// the replica already; with the database (dropped with it) and the replica's URL.
async fn replicated_with_items(prefix: &str, count: usize) -> (PgDatabase, Db, Vec<i64>, String) {
    let database = database().await;
    let replica_url = database.replica_url.clone().unwrap();
    let db = Db::connect_replicated(&database.url, &[&replica_url])
        .await
        .unwrap();
    let mut ids = Vec::new();
    for n in 0..count {
        ids.push(
            db.items()
                .create(&NewItem::new(format!("{prefix}-{n}"), json!({"n": n})))
                .await
                .unwrap(),
        );
    }
    reads_reach_the_replica(&db, ids[0], &replica_url).await;
    (database, db, ids, replica_url)
}

/// Waits until the replica has replayed everything the primary wrote, and the `Db` reads
/// there (its transactions on the replica go up).
async fn reads_reach_the_replica(db: &Db, id: i64, replica_url: &str) {
    let started = Instant::now();
    loop {
        let before = pg::item_scans(replica_url).await;
        for _ in 0..20 {
            db.items().get(id).await.unwrap().unwrap();
        }
        if pg::item_scans(replica_url).await - before >= 10 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "reads never reached the replica"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the PostgreSQL cluster of .ci/pg-cluster and the right to signal its replica; run with -- --include-ignored"]
async fn a_stopped_replica_is_left_alone_within_the_wait_and_used_again_once_it_answers() {
    let _turn = TURN.lock().await;
    let (_database, db, ids, replica_url) = replicated_with_items("lamp", 20).await;

    // Concurrent readers hold several of the replica's connections when it stops.
    let resume = Resume(replica_processes());
    signal("STOP", &resume.0);
    let limit = REPLICA_WAIT + Duration::from_millis(700);
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let (db, ids) = (db.clone(), ids.clone());
            tokio::spawn(async move { gets_within(&db, &ids, limit).await })
        })
        .collect();
    for reader in readers {
        reader.await.unwrap();
    }
    // Resting, the replica costs the reads nothing: they go straight to the primary.
    let slowest = gets_within(&db, &ids, limit).await;
    assert!(
        slowest < REPLICA_WAIT,
        "{slowest:?} while the replica rests"
    );

    drop(resume);
    tokio::time::sleep(REPLICA_COOLDOWN + REPLICA_WAIT).await;
    reads_reach_the_replica(&db, ids[0], &replica_url).await;
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the PostgreSQL cluster of .ci/pg-cluster as root (SQLREPO_PG_URL, SQLREPO_PG_REPLICA_URL, SQLREPO_PG_DATA); run with -- --include-ignored"]
async fn every_kind_of_read_is_answered_within_the_wait_while_the_replica_is_stopped() {
    let _turn = TURN.lock().await;
    let (_database, db, ids, replica_url) = replicated_with_items("desk", 5).await;
    db.users()
        .create(&NewUser::new("ada@example.com", "Ada"))
        .await
        .unwrap();
    // Reads after that write go to the replica again before it is stopped.
    reads_reach_the_replica(&db, ids[0], &replica_url).await;

    let resume = Resume(replica_processes());
    signal("STOP", &resume.0);
    let limit = REPLICA_WAIT + Duration::from_millis(700);
    // Each kind twice: the first may meet the stopped replica, the second finds it resting.
    for round in 0..2 {
        let start = Instant::now();
        assert_eq!(db.items().get_many(&ids).await.unwrap().len(), 5);
        assert_eq!(
            db.items()
                .list_by_status(ItemStatus::Active)
                .await
                .unwrap()
                .len(),
            5
        );
        let page = db
            .items()
            .list_by_status_page(ItemStatus::Active, None, 3)
            .await
            .unwrap();
        assert_eq!(page.items.len(), 3);
        assert_eq!(db.items().count().await.unwrap(), 5);
        let streamed: Vec<_> = db.items().stream().try_collect().await.unwrap();
        assert_eq!(streamed.len(), 5);
        let users: Vec<_> = db.users().stream().try_collect().await.unwrap();
        assert_eq!(users.len(), 1);
        let took = start.elapsed();
        // Six reads: at most one wait for the stopped replica per read, then it rests.
        assert!(
            took < limit * 6,
            "round {round}: six reads took {took:?} with the replica stopped"
        );
        if round == 1 {
            assert!(took < limit, "round 1 (replica resting) took {took:?}");
        }
    }
    drop(resume);
    tokio::time::sleep(REPLICA_COOLDOWN + REPLICA_WAIT).await;
    reads_reach_the_replica(&db, ids[0], &replica_url).await;
    db.close().await;
}

/// Runs `pg_ctl` on the replica.
fn pg_ctl_replica(args: &[&str]) {
    let data = PathBuf::from(std::env::var("SQLREPO_PG_DATA").unwrap());
    let (replica, log) = (data.join("replica"), data.join("replica.log"));
    let mut all: Vec<&std::ffi::OsStr> = vec![
        "-D".as_ref(),
        replica.as_os_str(),
        "-l".as_ref(),
        log.as_os_str(),
        "-w".as_ref(),
        "-t".as_ref(),
        "60".as_ref(),
    ];
    all.extend(args.iter().map(std::ffi::OsStr::new));
    pg_server::run("pg_ctl", &all);
}

/// Starts the replica again however the test ends.
struct Restart;

impl Drop for Restart {
    fn drop(&mut self) {
        pg_ctl_replica(&["start"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the PostgreSQL cluster of .ci/pg-cluster and root (to run pg_ctl as postgres); run with -- --include-ignored"]
async fn reads_that_meet_a_replica_shut_down_are_answered_by_the_primary() {
    let _turn = TURN.lock().await;
    let (_database, db, ids, replica_url) = replicated_with_items("desk", 20).await;
    // Several replica connections made and held (the reads go there already), so several
    // meet the shutdown.
    let warm: Vec<_> = (0..8)
        .map(|_| {
            let (db, id) = (db.clone(), ids[0]);
            tokio::spawn(async move {
                for _ in 0..50 {
                    db.items().get(id).await.unwrap();
                }
            })
        })
        .collect();
    for task in warm {
        task.await.unwrap();
    }
    reads_reach_the_replica(&db, ids[0], &replica_url).await;

    let restart = Restart;
    pg_ctl_replica(&["stop", "-m", "fast"]);
    // Every read succeeds: the ones that meet a broken replica connection are sent to the
    // primary instead of failing Unavailable.
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let (db, ids) = (db.clone(), ids.clone());
            tokio::spawn(async move { gets_within(&db, &ids, REPLICA_WAIT * 3).await })
        })
        .collect();
    for reader in readers {
        reader.await.unwrap();
    }
    drop(restart);
    tokio::time::sleep(REPLICA_COOLDOWN + REPLICA_WAIT).await;
    reads_reach_the_replica(&db, ids[0], &replica_url).await;
    db.close().await;
}

/// A second replica, made from a fresh base backup of the primary, on the primary's port + 2
/// (the cluster's replica has + 1), stopped and deleted however the test ends.
struct SecondReplica {
    dir: PathBuf,
    url: String,
}

impl SecondReplica {
    fn start(primary_url: &str, database: &str) -> SecondReplica {
        let dir = PathBuf::from(format!("/tmp/pg-i21b-second-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let port = primary_url
            .rsplit_once(':')
            .and_then(|(_, rest)| rest.split('/').next())
            .unwrap()
            .to_owned();
        pg_server::run(
            "pg_basebackup",
            [
                "-h".as_ref(),
                "127.0.0.1".as_ref(),
                "-p".as_ref(),
                port.as_ref(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "-D".as_ref(),
                dir.as_os_str(),
                "-R".as_ref(),
                "-X".as_ref(),
                "stream".as_ref(),
                "-c".as_ref(),
                "fast".as_ref(),
            ],
        );
        // The port after the cluster's replica (27202 for a cluster on 27200).
        let second_port = port.parse::<u16>().unwrap() + 2;
        let conf = dir.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str(&format!("\nport = {second_port}\n"));
        std::fs::write(&conf, text).unwrap();
        let replica = SecondReplica {
            url: format!("postgres://postgres@127.0.0.1:{second_port}/{database}"),
            dir,
        };
        let log = replica.dir.with_extension("log");
        pg_server::run(
            "pg_ctl",
            [
                "-D".as_ref(),
                replica.dir.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "start".as_ref(),
            ],
        );
        replica
    }
}

impl Drop for SecondReplica {
    fn drop(&mut self) {
        // Not `pg_server::run`: a failed stop must not panic inside a drop.
        let _ = pg_server::command("pg_ctl")
            .arg("-D")
            .arg(&self.dir)
            .args(["-m", "immediate", "-w", "stop"])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(self.dir.with_extension("log"));
    }
}

/// A TCP forwarder on loopback whose target can be switched, cutting every connection made
/// before: what a load balancer or a DNS name in front of replicas does to a client.
struct Switch {
    port: u16,
    target: std::sync::Arc<std::sync::Mutex<(String, u64)>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Switch {
    async fn to(target: &str) -> Switch {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = std::sync::Arc::new(std::sync::Mutex::new((target.to_owned(), 0u64)));
        let shared = target.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let (address, generation) = shared.lock().unwrap().clone();
                let shared = shared.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&address).await else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
                    let cut = async {
                        while shared.lock().unwrap().1 == generation {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    };
                    tokio::select! {
                        _ = copy => {}
                        () = cut => {}
                    }
                });
            }
        });
        Switch {
            port,
            target,
            accept,
        }
    }

    /// Points new connections at `target` and cuts the open ones.
    fn switch(&self, target: &str) {
        let mut state = self.target.lock().unwrap();
        *state = (target.to_owned(), state.1 + 1);
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the PostgreSQL cluster of .ci/pg-cluster, root (pg_basebackup as postgres) and the port after its replica's; run with -- --include-ignored"]
async fn reads_are_not_routed_on_a_position_another_server_reported() {
    let _turn = TURN.lock().await;
    let database = database().await;
    let replica_url = database.replica_url.clone().unwrap();
    let name = database.url.rsplit('/').next().unwrap().to_owned();
    let replica_address = replica_url
        .split_once('@')
        .and_then(|(_, rest)| rest.split('/').next())
        .unwrap()
        .to_owned();
    let switch = Switch::to(&replica_address).await;
    let through_switch = format!("postgres://postgres@127.0.0.1:{}/{name}", switch.port);
    let db = Db::connect_replicated(&database.url, &[&through_switch])
        .await
        .unwrap();
    let id = db
        .items()
        .create(&NewItem::new("counter", round_data(1)))
        .await
        .unwrap();
    // A second replica, from a base backup taken now (it holds round 1), its replay paused:
    // it will never see what is written next.
    let second = SecondReplica::start(&database.url, &name);
    let mut conn = PgConnection::connect(&second.url).await.unwrap();
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&mut conn)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let patch = ItemPatch {
        data: Some(round_data(2)),
        ..ItemPatch::default()
    };
    assert!(db.items().update(id, &patch).await.unwrap());
    // The Db learns that the first replica has replayed round 2, and reads there.
    reads_reach_the_replica(&db, id, &replica_url).await;
    assert_eq!(
        db.items().get(id).await.unwrap().unwrap().data,
        round_data(2)
    );

    // Behind the same address, another server now: one that does not hold round 2.
    let second_address = second
        .url
        .split_once('@')
        .and_then(|(_, rest)| rest.split('/').next())
        .unwrap()
        .to_owned();
    switch.switch(&second_address);
    let seen: serde_json::Value = sqlx::query_scalar("SELECT data FROM items WHERE id = $1")
        .bind(id)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(seen, round_data(1), "the second replica really is behind");
    let mut stale = 0;
    for _ in 0..200 {
        if db.items().get(id).await.unwrap().unwrap().data != round_data(2) {
            stale += 1;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(stale, 0, "reads routed on the first replica's position");

    // Resumed, the second replica catches up and is read.
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    reads_reach_the_replica(&db, id, &second.url).await;
    assert_eq!(
        db.items().get(id).await.unwrap().unwrap().data,
        round_data(2)
    );
    db.close().await;
    drop(switch);
    drop(second);
}
