//! Crash safety: a writer process is killed with SIGKILL at random moments, again and again, on
//! one database file; after each kill the file must be intact and hold every batch the writer
//! acknowledged, whole, and no batch in part.
//!
//! The writer is this test binary itself: each test re-executes it with `--exact` and its own
//! name and `SQLREPO_CRASH_CHILD_DB` naming the file, and the test's first line
//! ([`write_if_child`]) turns that process into the writer (so no separate writer test exists
//! that could run, or pass, on its own).
//!
//! A second test kills the writer in the middle of batches that span several statements (an
//! `insert_many` of 50,050 rows, a caller-owned transaction of 40 transfers).
//!
//! Replay a failure with `SQLREPO_CRASH_SEED=<seed printed by the failing run>`; run longer with
//! `SQLREPO_CRASH_CYCLES=500 SQLREPO_CRASH_BIG_CYCLES=40 cargo test --test crash`.

#[path = "reliability_common/mod.rs"]
mod reliability_common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use reliability_common::{
    batch_member, check_bank, check_batches_whole, check_integrity, count, item_names_and_keys,
    member_name, raw, seed,
};
use serde_json::json;
use sqlrepo::{Db, NewAccount, NewItem, Transfer};

/// Set by the parent in the writer's environment: the database file.
const CHILD_DB: &str = "SQLREPO_CRASH_CHILD_DB";
/// Set by the parent in the writer's environment: the writer's seed.
const CHILD_SEED: &str = "SQLREPO_CRASH_CHILD_SEED";
/// Set by the parent in the writer's environment: the cycle number, which prefixes batch names.
const CHILD_CYCLE: &str = "SQLREPO_CRASH_CHILD_CYCLE";
/// Set by the parent in the writer's environment: `big` for batches that span statements.
const CHILD_MODE: &str = "SQLREPO_CRASH_CHILD_MODE";

/// Rows in a big item batch: more than one `insert_many` statement takes (50,000 today), so
/// the batch is several statements in one transaction.
const BIG_BATCH_ROWS: usize = 50_050;
/// Transfers in a big caller-owned transaction, one statement each.
const BIG_TX_TRANSFERS: usize = 40;

const ACCOUNTS: i64 = 6;
const OPENING_DEPOSIT_CENTS: i64 = 100_000;
/// The kill lands uniformly within this long after the spawn (startup included, so some kills
/// land while the writer is still opening the file).
const MAX_KILL_DELAY: Duration = Duration::from_millis(350);
/// Kills per database file: each file survives this many crashes in a row (every earlier ack
/// is checked again after each), then a fresh one starts, so the checks stay fast.
const CYCLES_PER_FILE: usize = 10;
/// The kill of the big-batch test lands within this long after the spawn; a big batch takes
/// about a second in a debug build.
const MAX_BIG_KILL_DELAY: Duration = Duration::from_millis(2_500);

/// One ledger step: from, to, amount in cents.
type Step = (i64, i64, i64);

/// One acknowledged write, as the writer printed it.
#[derive(Debug, Clone, PartialEq)]
enum Ack {
    /// `ACK T <batch> <from>:<to>:<amount>,...`: a transfer batch, keys `<batch>#<i>of<n>`.
    Transfers(Vec<(i64, i64, i64)>),
    /// `ACK I <batch> <n>`: an item batch, names `<batch>#<i>of<n>`.
    Items(usize),
    /// `ACK X <batch> <n>`: a caller-owned transaction holding an item batch of `n` and one
    /// transfer keyed `<batch>#0of1`.
    Combined(usize),
    /// `ACK R <batch>`: a replay of an acknowledged transfer batch; moved nothing.
    Replay,
}

/// In the writer process (the parent set [`CHILD_DB`]): writes until killed, so it does not
/// return; in the test itself it returns at once.
fn write_if_child() {
    let Ok(path) = std::env::var(CHILD_DB) else {
        return;
    };
    let seed: u64 = std::env::var(CHILD_SEED).unwrap().parse().unwrap();
    let cycle: u64 = std::env::var(CHILD_CYCLE).unwrap().parse().unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let mode = std::env::var(CHILD_MODE).unwrap_or_default();
            if mode == "big" {
                write_big_until_killed(PathBuf::from(path), cycle).await
            } else if mode == "grouped" {
                write_grouped_until_killed(PathBuf::from(path), seed, cycle).await
            } else {
                write_until_killed(PathBuf::from(path), seed, cycle).await
            }
        });
    // Never falls through into the test's own body, which would spawn writers of its own.
    panic!("the writer stopped writing before it was killed");
}

/// The writer of the big-batch test: alternately an item batch of [`BIG_BATCH_ROWS`] rows and
/// a caller-owned transaction of [`BIG_TX_TRANSFERS`] keyed transfers, each acknowledged after
/// it returned.
async fn write_big_until_killed(path: PathBuf, cycle: u64) {
    acknowledge("");
    let db = Db::open(&path).await.unwrap_or_else(|e| fail("open", e));
    for n in 0_u64.. {
        if n % 2 == 0 {
            let batch = format!("c{cycle}-i{n}");
            let items = new_items(&batch, BIG_BATCH_ROWS, n);
            db.items()
                .insert_many(&items)
                .await
                .unwrap_or_else(|e| fail("big insert_many", e));
            acknowledge(&format!("ACK I {batch} {BIG_BATCH_ROWS}"));
        } else {
            let batch = format!("c{cycle}-t{n}");
            // Around the ring of accounts and back, so every balance ends where it began.
            let steps: Vec<Step> = (0..BIG_TX_TRANSFERS)
                .map(|i| {
                    let from = i as i64 % ACCOUNTS + 1;
                    (from, from % ACCOUNTS + 1, 100 + n as i64)
                })
                .collect();
            let tx = db.begin().await.unwrap_or_else(|e| fail("begin", e));
            for (i, &(from, to, amount)) in steps.iter().enumerate() {
                let key = member_name(&batch, i, steps.len());
                tx.accounts()
                    .transfer(&Transfer::new(from, to, amount).with_key(key))
                    .await
                    .unwrap_or_else(|e| fail("tx transfer", e));
            }
            tx.commit().await.unwrap_or_else(|e| fail("commit", e));
            let listed: Vec<String> = steps
                .iter()
                .map(|(from, to, amount)| format!("{from}:{to}:{amount}"))
                .collect();
            acknowledge(&format!("ACK T {batch} {}", listed.join(",")));
        }
    }
}

/// Concurrent callers in the writer of the grouped test, each with one transfer in flight.
const GROUPED_CALLERS: usize = 16;

/// The writer of the grouped test: [`GROUPED_CALLERS`] tasks, each sending keyed transfers one
/// after another (so their transfers queue for the writer together and are carried in groups),
/// with a transfer to a missing account now and then (its group is refused and its members run
/// again alone). Each transfer is acknowledged after it returned `Ok`; its batch is
/// `c<cycle>-g<task>.<n>`, one step keyed `<batch>#0of1`.
async fn write_grouped_until_killed(path: PathBuf, seed: u64, cycle: u64) {
    acknowledge("");
    let db = Db::open(&path).await.unwrap_or_else(|e| fail("open", e));
    let mut tasks = Vec::new();
    for task in 0..GROUPED_CALLERS {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(seed ^ task as u64);
            for n in 0_u64.. {
                let from = rng.random_range(1..=ACCOUNTS);
                let to = (from + rng.random_range(1..ACCOUNTS) - 1) % ACCOUNTS + 1;
                // Small amounts: no account of OPENING_DEPOSIT_CENTS runs dry within a file's
                // cycles, so every good transfer is affordable whatever the interleaving.
                let amount = rng.random_range(1..=5);
                if rng.random_range(0..10) == 0 {
                    match db
                        .accounts()
                        .transfer(&Transfer::new(from, 999, amount))
                        .await
                    {
                        Err(sqlrepo::Error::NotFound { id: 999, .. }) => continue,
                        Err(err) => fail("transfer to a missing account", err),
                        Ok(()) => fail("transfer to a missing account", sqlrepo::Error::ForeignKey),
                    }
                }
                let batch = format!("c{cycle}-g{task}.{n}");
                let transfer = Transfer::new(from, to, amount).with_key(member_name(&batch, 0, 1));
                db.accounts()
                    .transfer(&transfer)
                    .await
                    .unwrap_or_else(|e| fail("grouped transfer", e));
                acknowledge(&format!("ACK T {batch} {from}:{to}:{amount}"));
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// Prints one line and flushes it: the acknowledgement the parent counts on.
fn acknowledge(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

fn fail(what: &str, err: sqlrepo::Error) -> ! {
    acknowledge(&format!("ERR {what}: {err:?}"));
    std::process::exit(3);
}

async fn write_until_killed(path: PathBuf, seed: u64, cycle: u64) {
    // libtest printed `test writer_process_for_crash_tests ... ` without a newline; end it so
    // that every acknowledgement starts a line.
    acknowledge("");
    let mut rng = SmallRng::seed_from_u64(seed);
    let db = Db::open(&path).await.unwrap_or_else(|e| fail("open", e));
    let mut balances = BTreeMap::new();
    for id in 1..=ACCOUNTS {
        let account = db
            .accounts()
            .get(id)
            .await
            .unwrap_or_else(|e| fail("get", e));
        balances.insert(
            id,
            account
                .expect("the parent opened the accounts")
                .balance_cents,
        );
    }
    let mut landed: Vec<(String, Vec<Transfer>)> = Vec::new();
    for n in 0_u64.. {
        let roll = rng.random_range(0..100);
        if roll < 40 {
            let batch = format!("c{cycle}-t{n}");
            let size = rng.random_range(1..=8);
            let steps = affordable_steps(&mut rng, &mut balances, size);
            let transfers: Vec<Transfer> = steps
                .iter()
                .enumerate()
                .map(|(i, &(from, to, amount))| {
                    Transfer::new(from, to, amount).with_key(member_name(&batch, i, size))
                })
                .collect();
            let result = if size == 1 && rng.random_bool(0.5) {
                db.accounts().transfer(&transfers[0]).await
            } else {
                db.accounts().transfer_batch(&transfers).await
            };
            result.unwrap_or_else(|e| fail("transfer", e));
            let listed: Vec<String> = steps
                .iter()
                .map(|(from, to, amount)| format!("{from}:{to}:{amount}"))
                .collect();
            acknowledge(&format!("ACK T {batch} {}", listed.join(",")));
            landed.push((batch, transfers));
        } else if roll < 80 {
            let batch = format!("c{cycle}-i{n}");
            let size = rng.random_range(1..=40);
            let items = new_items(&batch, size, n);
            let inserted = db
                .items()
                .insert_many(&items)
                .await
                .unwrap_or_else(|e| fail("insert_many", e));
            assert_eq!(inserted, size as u64);
            acknowledge(&format!("ACK I {batch} {size}"));
        } else if roll < 90 {
            let batch = format!("c{cycle}-x{n}");
            let size = rng.random_range(1..=10);
            let [(from, to, amount)] = affordable_steps(&mut rng, &mut balances, 1)[..] else {
                unreachable!()
            };
            let tx = db.begin().await.unwrap_or_else(|e| fail("begin", e));
            tx.items()
                .insert_many(&new_items(&batch, size, n))
                .await
                .unwrap_or_else(|e| fail("tx insert_many", e));
            let transfer = Transfer::new(from, to, amount).with_key(member_name(&batch, 0, 1));
            tx.accounts()
                .transfer(&transfer)
                .await
                .unwrap_or_else(|e| fail("tx transfer", e));
            tx.commit().await.unwrap_or_else(|e| fail("commit", e));
            acknowledge(&format!("ACK X {batch} {size}"));
        } else if !landed.is_empty() {
            let (batch, transfers) = &landed[rng.random_range(0..landed.len())];
            db.accounts()
                .transfer_batch(transfers)
                .await
                .unwrap_or_else(|e| fail("replay", e));
            acknowledge(&format!("ACK R {batch}"));
        }
    }
}

/// `size` transfers between distinct accounts that the tracked balances can pay, in order;
/// the tracked balances are updated as if they landed.
fn affordable_steps(
    rng: &mut SmallRng,
    balances: &mut BTreeMap<i64, i64>,
    size: usize,
) -> Vec<(i64, i64, i64)> {
    let mut steps = Vec::with_capacity(size);
    while steps.len() < size {
        let from = rng.random_range(1..=ACCOUNTS);
        let to = rng.random_range(1..=ACCOUNTS);
        let available = balances[&from];
        if from == to || available == 0 {
            continue;
        }
        let amount = rng.random_range(1..=available.min(2_000));
        *balances.get_mut(&from).unwrap() -= amount;
        *balances.get_mut(&to).unwrap() += amount;
        steps.push((from, to, amount));
    }
    steps
}

fn new_items(batch: &str, size: usize, n: u64) -> Vec<NewItem> {
    (0..size)
        .map(|j| NewItem::new(member_name(batch, j, size), json!({"op": n, "member": j})))
        .collect()
}

/// What the parent knows of the batches in the file, across cycles.
#[derive(Default)]
struct Ledger {
    /// Batches that must be in the file (acknowledged, or found committed without an ack).
    known: BTreeMap<String, Ack>,
    acknowledged: usize,
    replays: usize,
    committed_unacknowledged: usize,
    kills_before_first_ack: usize,
}

#[test]
fn killed_writer_loses_no_acknowledged_batch_and_leaves_no_partial_one() {
    write_if_child();
    let seed = seed("SQLREPO_CRASH_SEED");
    let cycles = count("SQLREPO_CRASH_CYCLES", 50);
    let mut rng = SmallRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let started = Instant::now();
    let mut ledger = Ledger::default();
    let mut path = PathBuf::new();
    let mut expected_total = 0;
    for cycle in 0..cycles {
        if cycle % CYCLES_PER_FILE == 0 {
            path = dir.path().join(format!("crash-{cycle}.db"));
            expected_total = runtime.block_on(prepare_bank(&path));
            ledger.known.clear();
        }
        let delay = rng.random_range(Duration::ZERO..=MAX_KILL_DELAY);
        let acks = run_and_kill(&path, dir.path(), rng.random(), cycle, delay, "small")
            .unwrap_or_else(|err| panic!("seed {seed}, cycle {cycle}: {err}"));
        check_after_kill(&path, cycle, &acks, &mut ledger, expected_total).unwrap_or_else(|err| {
            panic!("seed {seed}, cycle {cycle} (killed after {delay:?}): {err}")
        });
        runtime
            .block_on(check_through_db(&path, expected_total))
            .unwrap_or_else(|err| panic!("seed {seed}, cycle {cycle}: {err}"));
    }
    println!(
        "crash: {cycles} kill cycles survived in {:?}; {} acknowledged writes ({} replays) \
         all present and whole; {} batches committed but killed before their ack, whole; \
         {} kills landed before the first ack",
        started.elapsed(),
        ledger.acknowledged,
        ledger.replays,
        ledger.committed_unacknowledged,
        ledger.kills_before_first_ack,
    );
}

#[test]
fn killed_writer_leaves_no_part_of_a_batch_that_spans_statements() {
    write_if_child();
    let seed = seed("SQLREPO_CRASH_SEED");
    let cycles = count("SQLREPO_CRASH_BIG_CYCLES", 8);
    let mut rng = SmallRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let mut ledger = Ledger::default();
    for cycle in 0..cycles {
        // A fresh file each time: these files are big, and the other test covers a file that
        // survives many crashes.
        let path = dir.path().join(format!("big-{cycle}.db"));
        let expected_total = runtime.block_on(prepare_bank(&path));
        ledger.known.clear();
        let delay = rng.random_range(Duration::ZERO..=MAX_BIG_KILL_DELAY);
        let acks = run_and_kill(&path, dir.path(), 0, cycle, delay, "big")
            .unwrap_or_else(|err| panic!("seed {seed}, cycle {cycle}: {err}"));
        check_after_kill(&path, cycle, &acks, &mut ledger, expected_total).unwrap_or_else(|err| {
            panic!("seed {seed}, big cycle {cycle} (killed after {delay:?}): {err}")
        });
        std::fs::remove_file(&path).ok();
    }
    println!(
        "crash (batches spanning statements): {cycles} kill cycles survived in {:?}; {} \
         acknowledged batches present and whole; {} committed but killed before their ack",
        started.elapsed(),
        ledger.acknowledged,
        ledger.committed_unacknowledged,
    );
}

#[test]
fn killed_writer_with_concurrent_callers_loses_no_acknowledged_grouped_transfer() {
    write_if_child();
    let seed = seed("SQLREPO_CRASH_SEED");
    let cycles = count("SQLREPO_CRASH_GROUPED_CYCLES", 30);
    let mut rng = SmallRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let mut known: BTreeMap<String, Vec<Step>> = BTreeMap::new();
    let (mut acknowledged, mut unacknowledged) = (0, 0);
    let mut path = PathBuf::new();
    let mut expected_total = 0;
    for cycle in 0..cycles {
        if cycle % CYCLES_PER_FILE == 0 {
            path = dir.path().join(format!("grouped-{cycle}.db"));
            expected_total = runtime.block_on(prepare_bank(&path));
            known.clear();
        }
        let delay = rng.random_range(Duration::ZERO..=MAX_KILL_DELAY);
        let acks = run_and_kill(&path, dir.path(), rng.random(), cycle, delay, "grouped")
            .unwrap_or_else(|err| panic!("seed {seed}, cycle {cycle}: {err}"));
        acknowledged += acks.len();
        unacknowledged += check_grouped_after_kill(&path, cycle, &acks, &mut known, expected_total)
            .unwrap_or_else(|err| {
                panic!("seed {seed}, grouped cycle {cycle} (killed after {delay:?}): {err}")
            });
        runtime
            .block_on(check_through_db(&path, expected_total))
            .unwrap_or_else(|err| panic!("seed {seed}, cycle {cycle}: {err}"));
    }
    println!(
        "crash (grouped, {GROUPED_CALLERS} concurrent callers): {cycles} kill cycles survived in \
         {:?}; {acknowledged} acknowledged transfers all present; {unacknowledged} committed but \
         killed before their ack",
        started.elapsed(),
    );
}

/// The grouped test's checks after a kill: the file is intact and the bank balances; every
/// acknowledged transfer (this cycle's and every earlier one on the file) is present exactly as
/// written; and every other transfer present is one a caller had in flight when the kill
/// landed: this cycle's, at most one per caller, newer than that caller's last ack. Returns how
/// many of those there were.
fn check_grouped_after_kill(
    path: &Path,
    cycle: usize,
    acks: &[(String, Ack)],
    known: &mut BTreeMap<String, Vec<Step>>,
    expected_total: i64,
) -> Result<usize, String> {
    let conn = raw(path);
    check_integrity(&conn)?;
    check_bank(&conn, expected_total)?;
    let (_, keys) = item_names_and_keys(&conn);
    check_batches_whole(keys.iter().map(String::as_str))?;
    let transfers = transfers_by_batch(&conn);
    // `c<cycle>-g<task>.<n>` -> (task, n)
    let caller_and_op = |batch: &str| -> Option<(u64, u64)> {
        let (task, n) = batch.rsplit_once("-g")?.1.split_once('.')?;
        Some((task.parse().ok()?, n.parse().ok()?))
    };
    let mut last_acked: BTreeMap<u64, u64> = BTreeMap::new();
    for (batch, ack) in acks {
        let Ack::Transfers(steps) = ack else {
            return Err(format!("unexpected ack {batch} {ack:?}"));
        };
        let (task, n) = caller_and_op(batch).ok_or_else(|| format!("odd batch name {batch}"))?;
        let last = last_acked.entry(task).or_insert(n);
        *last = (*last).max(n);
        known.insert(batch.clone(), steps.clone());
    }
    for (batch, steps) in known.iter() {
        if transfers.get(batch) != Some(steps) {
            return Err(format!(
                "acknowledged transfer {batch} {steps:?} is missing or changed: {:?}",
                transfers.get(batch)
            ));
        }
    }
    let prefix = format!("c{cycle}-");
    let mut in_flight: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for batch in transfers.keys() {
        if known.contains_key(batch) {
            continue;
        }
        let newer = match caller_and_op(batch) {
            Some((task, n)) if batch.starts_with(&prefix) => {
                in_flight.entry(task).or_default().push(batch.clone());
                last_acked.get(&task).is_none_or(|&last| n > last)
            }
            _ => false,
        };
        if !newer {
            return Err(format!(
                "transfer {batch} is in the file but was never acknowledged, and is not one a \
                 caller had in flight"
            ));
        }
    }
    if let Some((task, batches)) = in_flight.iter().find(|(_, batches)| batches.len() > 1) {
        return Err(format!(
            "caller {task} has several unacknowledged transfers committed: {batches:?}"
        ));
    }
    let committed_unacknowledged = in_flight.len();
    for batch in in_flight.into_values().flatten() {
        let steps = transfers[&batch].clone();
        known.insert(batch, steps);
    }
    Ok(committed_unacknowledged)
}

/// Creates the file with the accounts, funded by deposits (so the ledger explains every cent),
/// and returns the bank total.
async fn prepare_bank(path: &Path) -> i64 {
    let db = Db::open(path).await.unwrap();
    for _ in 0..ACCOUNTS {
        let id = db
            .accounts()
            .open(&NewAccount {
                user_id: None,
                balance_cents: 0,
            })
            .await
            .unwrap();
        db.accounts()
            .deposit(id, OPENING_DEPOSIT_CENTS)
            .await
            .unwrap();
    }
    db.close().await;
    ACCOUNTS * OPENING_DEPOSIT_CENTS
}

/// Spawns the writer, kills it with SIGKILL after `delay`, and returns its acknowledgements
/// (only lines that were printed whole).
fn run_and_kill(
    path: &Path,
    dir: &Path,
    child_seed: u64,
    cycle: usize,
    delay: Duration,
    mode: &str,
) -> Result<Vec<(String, Ack)>, String> {
    let stderr_path = dir.join("writer-stderr.txt");
    // The test that runs in the child: the one calling, which turns into the writer there.
    let test = match mode {
        "small" => "killed_writer_loses_no_acknowledged_batch_and_leaves_no_partial_one",
        "big" => "killed_writer_leaves_no_part_of_a_batch_that_spans_statements",
        "grouped" => "killed_writer_with_concurrent_callers_loses_no_acknowledged_grouped_transfer",
        other => panic!("no crash test writes in mode {other}"),
    };
    let mut child: Child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_DB, path)
        .env(CHILD_SEED, child_seed.to_string())
        .env(CHILD_CYCLE, cycle.to_string())
        .env(CHILD_MODE, mode)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(&stderr_path).unwrap())
        .spawn()
        .map_err(|err| format!("could not spawn the writer: {err}"))?;
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut reader = BufReader::new(stdout);
        loop {
            let mut line = Vec::new();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                // A line cut by the kill has no newline: it was not acknowledged.
                Ok(_) if line.ends_with(b"\n") => {
                    lines.push(String::from_utf8_lossy(&line).trim_end().to_owned())
                }
                Ok(_) => break,
            }
        }
        lines
    });
    std::thread::sleep(delay);
    let exited_early = child.try_wait().map_err(|e| e.to_string())?;
    child
        .kill()
        .map_err(|err| format!("could not kill the writer: {err}"))?;
    child.wait().map_err(|e| e.to_string())?;
    let lines = reader.join().unwrap();
    if let Some(status) = exited_early {
        let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        return Err(format!(
            "the writer exited by itself ({status}) before the kill:\n{}\n{stderr}",
            lines.join("\n")
        ));
    }
    let mut acks = Vec::new();
    for line in &lines {
        if line.starts_with("ERR") {
            return Err(format!("the writer failed: {line}"));
        }
        if let Some(rest) = line.strip_prefix("ACK ") {
            acks.push(parse_ack(rest).ok_or_else(|| format!("unreadable ack {line:?}"))?);
        }
    }
    Ok(acks)
}

fn parse_ack(text: &str) -> Option<(String, Ack)> {
    let mut words = text.split(' ');
    let kind = words.next()?;
    let batch = words.next()?.to_owned();
    let ack = match kind {
        "T" => Ack::Transfers(
            words
                .next()?
                .split(',')
                .map(|step| {
                    let mut parts = step.split(':').map(|p| p.parse::<i64>().ok());
                    Some((parts.next()??, parts.next()??, parts.next()??))
                })
                .collect::<Option<Vec<_>>>()?,
        ),
        "I" => Ack::Items(words.next()?.parse().ok()?),
        "X" => Ack::Combined(words.next()?.parse().ok()?),
        "R" => Ack::Replay,
        _ => return None,
    };
    Some((batch, ack))
}

/// The op number of a batch name `c<cycle>-<kind><n>`.
fn op_number(batch: &str) -> u64 {
    batch
        .rsplit_once('-')
        .and_then(|(_, op)| op[1..].parse().ok())
        .unwrap_or(0)
}

fn check_after_kill(
    path: &Path,
    cycle: usize,
    acks: &[(String, Ack)],
    ledger: &mut Ledger,
    expected_total: i64,
) -> Result<(), String> {
    let conn = raw(path);
    check_integrity(&conn)?;
    check_bank(&conn, expected_total)?;
    let (names, keys) = item_names_and_keys(&conn);
    let item_batches = check_batches_whole(names.iter().map(String::as_str))?;
    let key_batches = check_batches_whole(keys.iter().map(String::as_str))?;
    let transfers = transfers_by_batch(&conn);
    let transfers_of = |batch: &str| transfers.get(batch).cloned().unwrap_or_default();

    if acks.is_empty() {
        ledger.kills_before_first_ack += 1;
    }
    for (batch, ack) in acks {
        ledger.acknowledged += 1;
        match ack {
            Ack::Replay => {
                ledger.replays += 1;
                if !ledger.known.contains_key(batch) {
                    return Err(format!("replayed batch {batch} was never acknowledged"));
                }
            }
            other => {
                ledger.known.insert(batch.clone(), other.clone());
            }
        }
    }

    // Every batch in the file: known, or the one write the kill caught between its commit and
    // its ack (the last one this writer began).
    let prefix = format!("c{cycle}-");
    let present: BTreeSet<&String> = item_batches.keys().chain(key_batches.keys()).collect();
    let last_acked = acks.iter().map(|(batch, _)| op_number(batch)).max();
    let mut unacknowledged = Vec::new();
    for batch in present {
        if ledger.known.contains_key(batch) {
            continue;
        }
        let newer = last_acked.is_none_or(|last| op_number(batch) > last);
        if !batch.starts_with(&prefix) || !newer {
            return Err(format!(
                "batch {batch} is in the file but was never acknowledged, and is not the write \
                 the kill interrupted ({} acks this cycle)",
                acks.len()
            ));
        }
        unacknowledged.push(batch.clone());
    }
    if unacknowledged.len() > 1 {
        return Err(format!(
            "several unacknowledged batches committed: {unacknowledged:?}"
        ));
    }
    for batch in unacknowledged {
        ledger.committed_unacknowledged += 1;
        let kind = batch.rsplit_once('-').map_or("", |(_, op)| &op[..1]);
        let ack = match (kind, item_batches.get(&batch), key_batches.get(&batch)) {
            ("x", Some(&size), Some(_)) => Ack::Combined(size),
            ("i", Some(&size), None) => Ack::Items(size),
            ("t", None, Some(_)) => Ack::Transfers(transfers_of(&batch)),
            (_, items, transfers) => {
                return Err(format!(
                    "unacknowledged write {batch} is present in part: items {items:?}, \
                     transfers {transfers:?}"
                ));
            }
        };
        ledger.known.insert(batch, ack);
    }

    // Every known batch is present, whole and exactly as written.
    for (batch, ack) in &ledger.known {
        let whole = match ack {
            Ack::Transfers(steps) => {
                key_batches.get(batch) == Some(&steps.len()) && transfers_of(batch) == *steps
            }
            Ack::Items(size) => {
                item_batches.get(batch) == Some(size) && !key_batches.contains_key(batch)
            }
            Ack::Combined(size) => {
                item_batches.get(batch) == Some(size) && key_batches.get(batch) == Some(&1)
            }
            Ack::Replay => true,
        };
        if !whole {
            return Err(format!(
                "acknowledged batch {batch} ({ack:?}) is missing or changed: items {:?}, \
                 transfers {:?}",
                item_batches.get(batch),
                transfers_of(batch)
            ));
        }
    }
    Ok(())
}

/// The ledger rows of every keyed transfer, by batch, in step order.
fn transfers_by_batch(conn: &rusqlite::Connection) -> BTreeMap<String, Vec<Step>> {
    let rows: Vec<(String, (i64, i64, i64))> = conn
        .prepare(
            "SELECT idempotency_key, from_account, to_account, amount
             FROM transfers
             WHERE idempotency_key IS NOT NULL",
        )
        .and_then(|mut s| {
            s.query_map([], |row| {
                Ok((row.get(0)?, (row.get(1)?, row.get(2)?, row.get(3)?)))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .expect("read the ledger");
    let mut indexed: BTreeMap<String, Vec<(usize, Step)>> = BTreeMap::new();
    for (key, step) in rows {
        if let Some((batch, index, _)) = batch_member(&key) {
            indexed
                .entry(batch.to_owned())
                .or_default()
                .push((index, step));
        }
    }
    indexed
        .into_iter()
        .map(|(batch, mut steps)| {
            steps.sort_unstable();
            (batch, steps.into_iter().map(|(_, step)| step).collect())
        })
        .collect()
}

/// The library itself reopens the file after the kill and agrees with the raw checks.
async fn check_through_db(path: &Path, expected_total: i64) -> Result<(), String> {
    let db = Db::open(path)
        .await
        .map_err(|err| format!("Db::open after the kill: {err}"))?;
    let total = db
        .accounts()
        .total_balance()
        .await
        .map_err(|err| format!("total_balance: {err}"))?;
    let count = db
        .items()
        .count()
        .await
        .map_err(|err| format!("count: {err}"))?;
    db.close().await;
    let raw_count: i64 = raw(path)
        .query_row("SELECT count(*) FROM items", [], |row| row.get(0))
        .map_err(|err| err.to_string())?;
    if total != expected_total || count != raw_count {
        return Err(format!(
            "through Db: total {total} (expected {expected_total}), {count} items (raw {raw_count})"
        ));
    }
    Ok(())
}
