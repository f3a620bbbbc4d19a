//! The WAL stays small under a steady mixed load with readers always active.
//!
//! Sixteen tasks for a few seconds (set `SQLREPO_WAL_SECONDS` for a long run, for example
//! `SQLREPO_WAL_SECONDS=300 cargo test --release --test wal -- --nocapture`): eight readers
//! that never pause (point gets, dashboards, counts, totals), eight writers (transfers, item
//! creates and updates). A sampler watches the `-wal` file's size throughout. The bound is
//! `sqlrepo::WAL_BOUND_BYTES` (see its rustdoc for why it holds).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::fresh_db;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use sqlrepo::WAL_BOUND_BYTES;
use sqlrepo::{Db, Error, ItemPatch, NewItem, NewOrder, Transfer};

const ACCOUNTS: i64 = 50;
const OPENING_CENTS: i64 = 1_000_000;

fn run_for() -> Duration {
    let seconds = std::env::var("SQLREPO_WAL_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    Duration::from_secs(seconds)
}

fn wal_path(db: &Path) -> PathBuf {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

async fn reader(
    db: Db,
    seed: u64,
    items: i64,
    accounts: Arc<Vec<i64>>,
    user: i64,
    stop: Arc<AtomicBool>,
) -> u64 {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut reads = 0;
    while !stop.load(Ordering::Relaxed) {
        match rng.random_range(0..4) {
            0 => {
                db.items().get(rng.random_range(1..=items)).await.unwrap();
            }
            1 => {
                db.dashboard(user).await.unwrap();
            }
            2 => {
                let id = accounts[rng.random_range(0..accounts.len())];
                db.accounts().get(id).await.unwrap().unwrap();
            }
            _ => {
                assert_eq!(
                    db.accounts().total_balance().await.unwrap(),
                    ACCOUNTS * OPENING_CENTS
                );
            }
        }
        reads += 1;
    }
    reads
}

async fn writer(
    db: Db,
    seed: u64,
    items: i64,
    accounts: Arc<Vec<i64>>,
    user: i64,
    stop: Arc<AtomicBool>,
) -> u64 {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut writes = 0;
    while !stop.load(Ordering::Relaxed) {
        match rng.random_range(0..4) {
            0 | 1 => {
                let from = accounts[rng.random_range(0..accounts.len())];
                let to = accounts[rng.random_range(0..accounts.len())];
                if from == to {
                    continue;
                }
                match db
                    .accounts()
                    .transfer(&Transfer::new(from, to, rng.random_range(1..=100)))
                    .await
                {
                    Ok(()) | Err(Error::InsufficientFunds { .. }) => {}
                    Err(other) => panic!("transfer: {other}"),
                }
            }
            2 => {
                let patch = ItemPatch {
                    data: Some(json!({ "seed": seed, "n": writes, "pad": "p".repeat(200) })),
                    ..ItemPatch::default()
                };
                db.items()
                    .update(rng.random_range(1..=items), &patch)
                    .await
                    .unwrap();
            }
            _ => {
                db.orders()
                    .create(&NewOrder::new(user, rng.random_range(1..=10_000)))
                    .await
                    .unwrap();
            }
        }
        writes += 1;
    }
    writes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_wal_stays_under_its_bound_under_steady_mixed_load() {
    let db = fresh_db().await;
    let items: Vec<NewItem> = (0..2_000)
        .map(|i| {
            NewItem::new(
                format!("item {i}"),
                json!({ "i": i, "pad": "p".repeat(200) }),
            )
        })
        .collect();
    db.items().insert_many(&items).await.unwrap();
    let user = common::user(&db, "load@example.com", "Load").await;
    let accounts = Arc::new(common::open_accounts(&db, ACCOUNTS as usize, OPENING_CENTS).await);
    let stop = Arc::new(AtomicBool::new(false));
    let largest_wal = Arc::new(AtomicU64::new(0));

    let sampler = {
        let (wal, stop, largest_wal) = (wal_path(&db.path), stop.clone(), largest_wal.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let size = std::fs::metadata(&wal).map_or(0, |m| m.len());
                largest_wal.fetch_max(size, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let mut readers = tokio::task::JoinSet::new();
    let mut writers = tokio::task::JoinSet::new();
    for seed in 0..8 {
        readers.spawn(reader(
            db.db.clone(),
            seed,
            2_000,
            accounts.clone(),
            user,
            stop.clone(),
        ));
        writers.spawn(writer(
            db.db.clone(),
            100 + seed,
            2_000,
            accounts.clone(),
            user,
            stop.clone(),
        ));
    }
    let started = Instant::now();
    let run = run_for();
    let mut last_report = Instant::now();
    // At least the time asked for, and until a few checkpoints have run (a slow machine
    // writes less per second), but never more than ten times as long. Either kind counts: the
    // `PASSIVE` one every `CHECKPOINT_PAGES` pages, after which the WAL starts over when no
    // reader is on it, and the `TRUNCATE` one past `WAL_CHECKPOINT_BYTES`, for when none did.
    let checkpoints = |stats: sqlrepo::WalStats| stats.checkpoints + stats.passive_checkpoints;
    while started.elapsed() < run
        || (checkpoints(db.wal_stats()) < 3 && started.elapsed() < run * 10)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if last_report.elapsed() >= Duration::from_secs(10) {
            eprintln!(
                "{:>4}s: largest WAL so far {} KiB",
                started.elapsed().as_secs(),
                largest_wal.load(Ordering::Relaxed) / 1024
            );
            last_report = Instant::now();
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (mut reads, mut writes) = (0, 0);
    while let Some(done) = readers.join_next().await {
        reads += done.unwrap();
    }
    while let Some(done) = writers.join_next().await {
        writes += done.unwrap();
    }
    sampler.await.unwrap();

    let largest = largest_wal.load(Ordering::Relaxed);
    eprintln!(
        "{reads} reads, {writes} writes in {:?}; largest WAL seen {} KiB",
        started.elapsed(),
        largest / 1024
    );
    assert!(
        writes > 1_000,
        "the load did not write enough to test anything"
    );
    assert_eq!(
        db.accounts().total_balance().await.unwrap(),
        ACCOUNTS * OPENING_CENTS
    );
    let stats = db.wal_stats();
    eprintln!("{stats:?}");
    assert!(
        largest <= WAL_BOUND_BYTES,
        "the WAL reached {largest} bytes, over the bound of {WAL_BOUND_BYTES}"
    );
    assert!(stats.largest_wal_bytes <= WAL_BOUND_BYTES, "{stats:?}");
    assert!(
        checkpoints(stats) > 0,
        "the load never brought the WAL to a checkpoint, so it tested nothing: {stats:?}"
    );
    db.integrity_check().await.unwrap();
}
