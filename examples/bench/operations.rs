//! The operations workloads of issue 13, reported as notes under the table: an online backup
//! of a large file (sqlrepo's `backup_to`, which is `VACUUM INTO`, beside rusqlite's
//! `VACUUM INTO` and SQLite's online backup API on the same file), what a writer waits
//! meanwhile, the integrity check, and the WAL under a steady mixed load with readers that never
//! pause (largest `-wal` file seen, and what the checkpoints cost).
//!
//! `cargo run --release --example bench -- --operations` runs only this part (1M rows);
//! `--quick` makes it small. The run fails if a backup is not a sound, complete copy or the WAL
//! passes `sqlrepo::WAL_BOUND_BYTES`; times are reported, never asserted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, ensure};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use sqlrepo::WAL_BOUND_BYTES;
use sqlrepo::{Db, ItemPatch, NewItem};
use tokio::runtime::Runtime;

use crate::data::item_range;
use crate::timing::{Start, progress};

/// How big and how long: 1M rows and 20 s of steady load in a full run.
#[derive(Debug, Clone, Copy)]
pub struct OperationSizes {
    pub rows: usize,
    pub steady_load: Duration,
}

impl OperationSizes {
    pub fn full() -> Self {
        OperationSizes {
            rows: 1_000_000,
            steady_load: Duration::from_secs(20),
        }
    }

    pub fn quick() -> Self {
        OperationSizes {
            rows: 20_000,
            steady_load: Duration::from_secs(2),
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn wal_of(path: &Path) -> PathBuf {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

/// Runs the operations workloads in `dir`; returns the report lines.
pub fn run(runtime: &Runtime, sizes: OperationSizes, dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut notes = Vec::new();
    let path = dir.join("operations.db");
    let db = runtime.block_on(Db::open(&path))?;
    progress(format_args!(
        "operations: filling {} items (untimed)",
        sizes.rows
    ));
    for start in (0..sizes.rows).step_by(50_000) {
        let chunk = item_range(start, (start + 50_000).min(sizes.rows));
        runtime.block_on(db.items().insert_many(&chunk))?;
    }
    // The data lives in the file and its WAL until a checkpoint: count both.
    let file_mib = mib(std::fs::metadata(&path)?.len()
        + std::fs::metadata(wal_of(&path)).map_or(0, |meta| meta.len()));

    notes.push(runtime.block_on(backup_under_writes(&db, dir, sizes.rows, file_mib))?);

    let started = Start::now();
    runtime.block_on(db.integrity_check())?;
    notes.push(format!(
        "integrity_check of the {} rows ({file_mib:.0} MiB): {:.0} ms",
        sizes.rows,
        started.elapsed().as_secs_f64() * 1e3
    ));
    runtime.block_on(db.close());

    notes.push(rusqlite_copies(&path, dir)?);
    notes.push(runtime.block_on(steady_load(dir, sizes.steady_load))?);
    Ok(notes)
}

/// `backup_to` while one task updates items as fast as it can: the backup's time, and the
/// writes that went on meanwhile with the longest one.
async fn backup_under_writes(
    db: &Db,
    dir: &Path,
    rows: usize,
    file_mib: f64,
) -> anyhow::Result<String> {
    // One write first, so the checkpoint the fill left due runs now, not during the backup.
    db.items()
        .update(
            1,
            &ItemPatch {
                data: Some(json!({"warm": true})),
                ..ItemPatch::default()
            },
        )
        .await?;
    let checkpoints_before = db.wal_stats();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (db, stop) = (db.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut writes, mut longest) = (0_u64, Duration::ZERO);
            let mut rng = SmallRng::seed_from_u64(13);
            while !stop.load(Ordering::Relaxed) {
                let patch = ItemPatch {
                    data: Some(json!({"during": "backup", "n": writes})),
                    ..ItemPatch::default()
                };
                let started = Start::now();
                db.items()
                    .update(rng.random_range(1..=rows as i64), &patch)
                    .await?;
                longest = longest.max(started.elapsed());
                writes += 1;
            }
            anyhow::Ok((writes, longest))
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let target = dir.join("operations-backup.db");
    progress(format_args!("operations: backup_to with a writer going"));
    let started = Start::now();
    db.backup_to(&target).await?;
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (writes, longest) = writer.await??;
    let checkpoints = db.wal_stats();

    let copy = Db::open(&target).await?;
    copy.integrity_check().await?;
    let copied = copy.items().count().await?;
    ensure!(
        copied == rows as i64,
        "the backup holds {copied} items, not {rows}"
    );
    copy.close().await;
    let copy_mib = mib(std::fs::metadata(&target)?.len());
    std::fs::remove_file(&target)?;
    Ok(format!(
        "backup_to (VACUUM INTO on a reader) of {rows} rows ({file_mib:.0} MiB file, \
         {copy_mib:.0} MiB copy): {:.0} ms; a writer updating items meanwhile made {writes} \
         writes during the backup and the run around it, the longest {:.1} ms; {} checkpoint \
         tries meanwhile ({} cut short by the backup's snapshot), the WAL reaching {:.1} MiB \
         (the copy opens with Db::open and passes integrity_check)",
        took.as_secs_f64() * 1e3,
        longest.as_secs_f64() * 1e3,
        checkpoints.checkpoints - checkpoints_before.checkpoints,
        checkpoints.incomplete_checkpoints - checkpoints_before.incomplete_checkpoints,
        mib(checkpoints.largest_wal_bytes),
    ))
}

/// The same file copied in-process by rusqlite: `VACUUM INTO`, and SQLite's online backup API
/// in one step (what `sqlite3_backup_step(-1)` costs; sqlx does not expose it).
fn rusqlite_copies(path: &Path, dir: &Path) -> anyhow::Result<String> {
    let source = rusqlite::Connection::open(path)?;
    let vacuum_target = dir.join("rusqlite-vacuum.db");
    let started = Start::now();
    source.execute(
        "VACUUM INTO ?1",
        [vacuum_target.to_str().context("utf-8 path")?],
    )?;
    let vacuum = started.elapsed();

    let api_target = dir.join("rusqlite-backup-api.db");
    let started = Start::now();
    {
        let mut target = rusqlite::Connection::open(&api_target)?;
        let backup = rusqlite::backup::Backup::new(&source, &mut target)?;
        let step = backup.step(-1)?;
        ensure!(
            step == rusqlite::backup::StepResult::Done,
            "backup API: {step:?}"
        );
    }
    let api = started.elapsed();
    for copy in [&vacuum_target, &api_target] {
        let ok: String =
            rusqlite::Connection::open(copy)?
                .query_row("PRAGMA integrity_check", [], |row| row.get(0))?;
        ensure!(ok == "ok", "{}: {ok}", copy.display());
        std::fs::remove_file(copy)?;
    }
    Ok(format!(
        "the same file copied by rusqlite in-process: VACUUM INTO {:.0} ms, online backup API \
         (one step) {:.0} ms; without sync, which backup_to adds",
        vacuum.as_secs_f64() * 1e3,
        api.as_secs_f64() * 1e3
    ))
}

/// Sixteen tasks for `run` on a fresh file: eight readers that never pause, eight writers.
async fn steady_load(dir: &Path, run: Duration) -> anyhow::Result<String> {
    const ITEMS: i64 = 5_000;
    let path = dir.join("steady.db");
    let db = Db::open(&path).await?;
    let items: Vec<NewItem> = (0..ITEMS)
        .map(|i| NewItem::new(format!("steady {i}"), json!({"i": i})))
        .collect();
    db.items().insert_many(&items).await?;
    progress(format_args!(
        "operations: steady load, 16 tasks for {run:?}"
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let largest_wal = Arc::new(AtomicU64::new(0));
    let (reads, writes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = tokio::task::JoinSet::new();
    for seed in 0..16_u64 {
        let (db, stop, reads, writes) = (db.clone(), stop.clone(), reads.clone(), writes.clone());
        tasks.spawn(async move {
            let mut rng = SmallRng::seed_from_u64(seed);
            while !stop.load(Ordering::Relaxed) {
                let id = rng.random_range(1..=ITEMS);
                if seed % 2 == 0 {
                    db.items().get(id).await?;
                    reads.fetch_add(1, Ordering::Relaxed);
                } else {
                    let patch = ItemPatch {
                        // About 1.5 kB a row, so the WAL reaches its threshold a few times a run.
                        data: Some(json!({"seed": seed, "pad": "p".repeat(1_500)})),
                        ..ItemPatch::default()
                    };
                    db.items().update(id, &patch).await?;
                    writes.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        });
    }
    let wal = wal_of(&path);
    let started = Start::now();
    while started.elapsed() < run {
        let size = std::fs::metadata(&wal).map_or(0, |meta| meta.len());
        largest_wal.fetch_max(size, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let elapsed = started.elapsed();
    let stats = db.wal_stats();
    db.close().await;
    let largest = largest_wal
        .load(Ordering::Relaxed)
        .max(stats.largest_wal_bytes);
    ensure!(
        largest <= WAL_BOUND_BYTES,
        "the WAL reached {largest} bytes, over sqlrepo's bound of {WAL_BOUND_BYTES}"
    );
    let mean_ms = if stats.checkpoints == 0 {
        0.0
    } else {
        stats.checkpoint_time_us as f64 / 1e3 / stats.checkpoints as f64
    };
    Ok(format!(
        "WAL under steady load (8 readers that never pause, 8 writers, {:.0} s; {} reads, {} \
         writes): largest -wal {:.2} MiB (bound {:.0} MiB); {} TRUNCATE checkpoints ({} \
         incomplete), {mean_ms:.1} ms each on average, longest {:.1} ms, {:.1}% of the run; {} \
         PASSIVE checkpoints of the direct writer's commits, {:.1}% of the run",
        elapsed.as_secs_f64(),
        reads.load(Ordering::Relaxed),
        writes.load(Ordering::Relaxed),
        mib(largest),
        mib(WAL_BOUND_BYTES),
        stats.checkpoints,
        stats.incomplete_checkpoints,
        stats.longest_checkpoint_us as f64 / 1e3,
        100.0 * stats.checkpoint_time_us as f64 / 1e6 / elapsed.as_secs_f64(),
        stats.passive_checkpoints,
        100.0 * stats.passive_checkpoint_time_us as f64 / 1e6 / elapsed.as_secs_f64()
    ))
}
