//! The PostgreSQL primary killed (`pg_ctl stop -m immediate`) in the middle of a transfer load
//! and restarted: every transfer that returned `Ok` is in the ledger, money is conserved, the
//! errors meanwhile are typed errors (no panics), and the same `Db` -- not rebuilt -- reads and
//! writes again.
//!
//! One test in a file of its own, so no other test shares the server while it is down. It
//! needs `SQLREPO_PG_URL` and `SQLREPO_PG_DATA` (the data directory that `.ci/pg-cluster`
//! made: the primary's is `$SQLREPO_PG_DATA/primary`), and stops that server: point them at a
//! cluster nobody else is using.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::backend::{Backend, missing, pg};
use common::pg_server;
use rand::{Rng, SeedableRng};
use sqlrepo::{Db, Error, NewAccount, Transfer, TransferOutcome};

const ACCOUNTS: usize = 8;
const TASKS: usize = 12;
const OPENING: i64 = 1_000_000;

/// One attempted transfer and what the caller was told.
struct Attempt {
    transfer: Transfer,
    result: Result<(), String>,
    /// Started after the server was back up.
    after_restart: bool,
}

/// The variant of an error, for the report.
fn variant(err: &Error) -> String {
    format!("{err:?}")
        .split(['(', ' ', '{'])
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL and its data directory: set SQLREPO_PG_URL and SQLREPO_PG_DATA (.ci/pg-cluster); run with -- --include-ignored"]
async fn the_primary_killed_mid_load_loses_no_acknowledged_transfer_and_the_db_recovers() {
    let Ok(data) = std::env::var("SQLREPO_PG_DATA") else {
        missing("SQLREPO_PG_DATA is not set (the failover test stops the primary in it)");
    };
    let Some(database) = pg::create(Backend::Postgres).await else {
        return;
    };
    let primary_dir = Path::new(&data).join("primary");
    let primary_dir = primary_dir.to_str().unwrap().to_owned();
    let log = Path::new(&data).join("primary.log");
    let log = log.to_str().unwrap().to_owned();

    let db = Db::connect(&database.url).await.unwrap();
    let mut accounts = Vec::new();
    for _ in 0..ACCOUNTS {
        let new = NewAccount {
            user_id: None,
            balance_cents: OPENING,
        };
        accounts.push(db.accounts().open(&new).await.unwrap());
    }

    let stop = Arc::new(AtomicBool::new(false));
    let restarted = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (db, accounts) = (db.clone(), accounts.clone());
        let (stop, restarted) = (stop.clone(), restarted.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(task as u64);
            let mut attempts = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let from = accounts[rng.random_range(0..ACCOUNTS)];
                let mut to = accounts[rng.random_range(0..ACCOUNTS)];
                if to == from {
                    to = accounts
                        [(accounts.iter().position(|&a| a == from).unwrap() + 1) % ACCOUNTS];
                }
                let transfer = Transfer::new(from, to, rng.random_range(1..=100))
                    .with_key(format!("failover-{task}-{n}"));
                n += 1;
                let after_restart = restarted.load(Ordering::Relaxed);
                // Bounded: a call that hangs on a dead server is a failure, not a slow test.
                let result = tokio::time::timeout(
                    Duration::from_secs(30),
                    db.accounts().transfer(&transfer),
                )
                .await
                .expect("a transfer hung for 30 s");
                let failed = result.is_err();
                attempts.push(Attempt {
                    transfer,
                    result: result.map_err(|err| variant(&err)),
                    after_restart,
                });
                if failed {
                    // The server is away: do not spin.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            attempts
        }));
    }

    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let killed_at = Instant::now();
    pg_server::run(
        "pg_ctl",
        ["-D", primary_dir.as_str(), "stop", "-m", "immediate"],
    );
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    pg_server::run(
        "pg_ctl",
        [
            "-D",
            primary_dir.as_str(),
            "-l",
            log.as_str(),
            "-w",
            "start",
        ],
    );
    restarted.store(true, Ordering::Relaxed);
    let down_for = killed_at.elapsed();
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    stop.store(true, Ordering::Relaxed);

    let mut attempts = Vec::new();
    for task in tasks {
        // A panic inside a task fails here: every outcome must be a value.
        attempts.extend(task.await.expect("a transfer task panicked"));
    }
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for attempt in &attempts {
        if let Err(variant) = &attempt.result {
            *errors.entry(variant.clone()).or_default() += 1;
        }
    }
    let acknowledged = attempts.iter().filter(|a| a.result.is_ok()).count();
    let acknowledged_after = attempts
        .iter()
        .filter(|a| a.after_restart && a.result.is_ok())
        .count();
    println!(
        "failover: {} transfers tried, {acknowledged} acknowledged ({acknowledged_after} after \
         the restart), server down for {down_for:?}; errors by variant: {errors:?}",
        attempts.len()
    );
    assert!(
        errors.values().sum::<usize>() > 0,
        "the outage must have been felt"
    );
    for variant in errors.keys() {
        // Money and keys were valid throughout: only the outage may fail a transfer, and it
        // must say so as an error a caller can act on: a retryable one (not the catch-all
        // `Database`, which tells a caller nothing).
        assert!(
            ["Unavailable", "Busy"].contains(&variant.as_str()),
            "unexpected error variant during the outage: {variant}"
        );
    }
    assert!(
        acknowledged_after > 0,
        "the same Db must transfer again after the restart"
    );

    // The same Db, not rebuilt, reads and writes.
    let first = accounts[0];
    let before = db
        .accounts()
        .get(first)
        .await
        .unwrap()
        .unwrap()
        .balance_cents;
    assert_eq!(
        db.accounts().deposit(first, 1).await.unwrap(),
        before + 1,
        "the same Db writes after the restart"
    );
    assert_eq!(
        db.accounts().total_balance().await.unwrap(),
        OPENING * ACCOUNTS as i64 + 1
    );

    // A fresh Db: every acknowledged transfer is in the ledger (its replay moves nothing).
    let fresh = Db::connect(&database.url).await.unwrap();
    let total_before = fresh.accounts().total_balance().await.unwrap();
    for attempt in attempts.iter().filter(|a| a.result.is_ok()) {
        assert_eq!(
            fresh
                .accounts()
                .transfer_with_outcome(&attempt.transfer)
                .await
                .unwrap(),
            TransferOutcome::Replayed,
            "acknowledged transfer {:?} is missing from the ledger",
            attempt.transfer.idempotency_key
        );
    }
    // The ones that failed may or may not have landed (the answer was lost with the server):
    // replaying settles each, so that afterwards every attempt landed exactly once.
    let mut landed_late = 0;
    let mut expected: HashMap<i64, i64> = accounts.iter().map(|&a| (a, OPENING)).collect();
    *expected.get_mut(&first).unwrap() += 1;
    for attempt in &attempts {
        let t = &attempt.transfer;
        if attempt.result.is_err() {
            match fresh.accounts().transfer_with_outcome(t).await {
                Ok(TransferOutcome::Replayed) => {}
                Ok(TransferOutcome::Landed) => landed_late += 1,
                Err(err) => panic!("settling {:?}: {err:?}", t.idempotency_key),
            }
        }
        *expected.get_mut(&t.from).unwrap() -= t.amount_cents;
        *expected.get_mut(&t.to).unwrap() += t.amount_cents;
    }
    println!("failover: {landed_late} failed transfers had not landed and were landed now");
    for &account in &accounts {
        assert_eq!(
            fresh
                .accounts()
                .get(account)
                .await
                .unwrap()
                .unwrap()
                .balance_cents,
            expected[&account],
            "account {account}"
        );
    }
    assert_eq!(
        fresh.accounts().total_balance().await.unwrap(),
        total_before,
        "money is conserved"
    );
    fresh.close().await;
    db.close().await;
}
