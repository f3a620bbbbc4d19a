//! The concurrent workloads of issue 14: many callers at once on one database, sqlrepo's one
//! `Db` (a tokio task per caller) against rusqlite with a connection per thread (an OS thread
//! per caller, `BEGIN IMMEDIATE` + the same checks + the ledger row + `COMMIT`, 5 s busy
//! timeout). Both sides get exactly the same plans; every operation is timed by itself, so
//! beside µs per operation (wall time over operations, the inverse of throughput) the table
//! gives each side's p50 and p99 latency.
//!
//! - `transfer_concurrent`: transfers between random pairs of the first 64 accounts;
//! - `mixed_concurrent`: 70 % point gets of items, 20 % transfers, 10 % updates of the
//!   caller's own items (so the last value each item must hold is known).

use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use sqlrepo::{Db, DbOptions, Error, ItemPatch, Transfer};

use crate::data::{MixedOp, Sizes};
use crate::mixed::TaskTally;
use crate::rusqlite_side::{connect, get_item, transfer, update_item_data};
use crate::timing::{Measured, Start};

/// The numbers of concurrent callers each workload runs with.
pub const CALLERS: [usize; 3] = [1, 16, 64];

/// Transfers pick their two accounts among this many (or all, when fewer are seeded).
const TRANSFER_ACCOUNTS: i64 = 64;

/// Which concurrent workload.
#[derive(Debug, Clone, Copy)]
pub enum Workload {
    Transfers,
    Mixed,
    /// Point gets only: the readers experiment.
    Gets,
}

impl Workload {
    /// The row name for `callers` callers (`&'static` as every row name is).
    pub fn row_name(self, callers: usize) -> &'static str {
        match (self, callers) {
            (Workload::Transfers, 1) => "transfer_concurrent ×1",
            (Workload::Transfers, 16) => "transfer_concurrent ×16",
            (Workload::Transfers, _) => "transfer_concurrent ×64",
            (Workload::Mixed, 1) => "mixed_concurrent ×1",
            (Workload::Mixed, 16) => "mixed_concurrent ×16",
            (Workload::Mixed, _) => "mixed_concurrent ×64",
            (Workload::Gets, _) => "get_concurrent",
        }
    }
}

/// One plan per caller for one round: `ops_per_round` operations shared out.
pub fn plans(
    workload: Workload,
    sizes: &Sizes,
    callers: usize,
    ops_per_round: usize,
    round: usize,
) -> Vec<Vec<MixedOp>> {
    let accounts = TRANSFER_ACCOUNTS.min(sizes.accounts as i64);
    let per_caller = ops_per_round.div_ceil(callers);
    let own_items = sizes.items as i64 / callers as i64;
    (0..callers)
        .map(|caller| {
            let mut rng =
                SmallRng::seed_from_u64((14 << 32) ^ ((round as u64) << 16) ^ caller as u64);
            (0..per_caller)
                .map(|seq| {
                    let roll = match workload {
                        Workload::Transfers => 9,
                        Workload::Mixed => rng.random_range(0..10),
                        Workload::Gets => 0,
                    };
                    match roll {
                        0..7 => MixedOp::Get(rng.random_range(1..=sizes.items as i64)),
                        7..9 => transfer_op(&mut rng, accounts),
                        _ if matches!(workload, Workload::Transfers) => {
                            transfer_op(&mut rng, accounts)
                        }
                        _ => {
                            let id =
                                rng.random_range(0..own_items) * callers as i64 + caller as i64 + 1;
                            MixedOp::Update(
                                id,
                                json!({"round": round, "caller": caller, "seq": seq}),
                            )
                        }
                    }
                })
                .collect()
        })
        .collect()
}

fn transfer_op(rng: &mut SmallRng, accounts: i64) -> MixedOp {
    let from = rng.random_range(1..=accounts);
    let to = loop {
        let to = rng.random_range(1..=accounts);
        if to != from {
            break to;
        }
    };
    MixedOp::Transfer(Transfer::new(from, to, rng.random_range(1..=100)))
}

/// Every operation's latency of one side, over all its rounds.
#[derive(Debug, Clone, Default)]
pub struct Latencies(Vec<Duration>);

/// p50 and p99 of one side, in µs.
#[derive(Debug, Clone, Copy)]
pub struct Percentiles {
    pub p50_us: f64,
    pub p99_us: f64,
}

impl Latencies {
    pub fn extend(&mut self, more: Vec<Duration>) {
        self.0.extend(more);
    }

    pub fn percentiles(&self) -> Option<Percentiles> {
        if self.0.is_empty() {
            return None;
        }
        let mut sorted = self.0.clone();
        sorted.sort_unstable();
        let at = |q: f64| {
            let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
            sorted[index].as_secs_f64() * 1e6
        };
        Some(Percentiles {
            p50_us: at(0.50),
            p99_us: at(0.99),
        })
    }
}

/// What one side's round returns: the timing, the tally, every operation's latency.
pub type RoundResult = (Measured, TaskTally, Vec<Duration>);

/// sqlrepo: one tokio task per caller, all on `db`.
pub async fn run_sqlrepo(db: &Db, plans: &[Vec<MixedOp>]) -> anyhow::Result<RoundResult> {
    let started = Start::now();
    let tasks: Vec<_> = plans
        .iter()
        .map(|ops| tokio::spawn(sqlrepo_caller(db.clone(), ops.clone())))
        .collect();
    let mut tally = TaskTally::default();
    let mut latencies = Vec::new();
    for task in tasks {
        let (caller_tally, caller_latencies) = task.await?;
        tally += caller_tally;
        latencies.extend(caller_latencies);
    }
    Ok((Measured::since(started, tally.ops), tally, latencies))
}

async fn sqlrepo_caller(db: Db, ops: Vec<MixedOp>) -> (TaskTally, Vec<Duration>) {
    let mut tally = TaskTally::default();
    let mut latencies = Vec::with_capacity(ops.len());
    for op in &ops {
        let started = Start::now();
        let outcome = match op {
            MixedOp::Get(id) => db.items().get(*id).await.map(|_| ()),
            MixedOp::Update(id, data) => {
                let patch = ItemPatch {
                    data: Some(data.clone()),
                    ..ItemPatch::default()
                };
                db.items().update(*id, &patch).await.map(|_| ())
            }
            MixedOp::Transfer(t) => db
                .accounts()
                .transfer(t)
                .await
                .map(|()| tally.landed_transfers += 1),
        };
        latencies.push(started.elapsed());
        match outcome {
            Ok(()) => {}
            Err(Error::Busy) => tally.busy += 1,
            Err(_) => tally.other_errors += 1,
        }
        tally.ops += 1;
    }
    (tally, latencies)
}

/// rusqlite: one OS thread and connection per caller; the connections are opened before the
/// clock starts.
pub fn run_rusqlite(path: &Path, plans: &[Vec<MixedOp>]) -> anyhow::Result<RoundResult> {
    let ready = Arc::new(Barrier::new(plans.len() + 1));
    let (started, results) = std::thread::scope(|scope| {
        let handles: Vec<_> = plans
            .iter()
            .map(|ops| {
                let ready = ready.clone();
                scope.spawn(move || rusqlite_caller(path, ops, &ready))
            })
            .collect();
        ready.wait();
        let started = Start::now();
        let results: Vec<_> = handles
            .into_iter()
            .map(|handle| handle.join().expect("a rusqlite caller panicked"))
            .collect();
        (started, results)
    });
    let mut measured = Measured::since(started, 0);
    let mut tally = TaskTally::default();
    let mut latencies = Vec::new();
    for result in results {
        let (caller_tally, caller_latencies) = result?;
        tally += caller_tally;
        latencies.extend(caller_latencies);
    }
    measured.ops = tally.ops;
    Ok((measured, tally, latencies))
}

fn rusqlite_caller(
    path: &Path,
    ops: &[MixedOp],
    ready: &Barrier,
) -> anyhow::Result<(TaskTally, Vec<Duration>)> {
    let connected = connect(path);
    // Wait even on failure, so the others are not left at the barrier.
    ready.wait();
    let mut conn = connected?;
    let mut tally = TaskTally::default();
    let mut latencies = Vec::with_capacity(ops.len());
    for op in ops {
        let started = Start::now();
        let outcome = match op {
            MixedOp::Get(id) => get_item(&conn, *id).map(|_| ()),
            MixedOp::Update(id, data) => update_item_data(&conn, *id, data).map(|_| ()),
            MixedOp::Transfer(t) => transfer(&mut conn, t).map(|()| tally.landed_transfers += 1),
        };
        latencies.push(started.elapsed());
        match outcome {
            Ok(()) => {}
            Err(err) if crate::rusqlite_side::is_busy(&err) => tally.busy += 1,
            Err(_) => tally.other_errors += 1,
        }
        tally.ops += 1;
    }
    Ok((tally, latencies))
}

/// A `Db` on sqlrepo's file with `readers` read connections, coalescing queued point gets or
/// not, for the readers experiment.
pub async fn open_with_readers(path: &Path, readers: usize, coalesce: bool) -> anyhow::Result<Db> {
    // Direct reads off: the point gets go to the read connections this measures.
    let options = DbOptions::new(path)
        .readers(readers)
        .group_reads(coalesce)
        .direct_reads(false);
    Ok(Db::open_with(options).await?)
}
