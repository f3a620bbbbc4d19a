//! The benchmark harness of issue 5: every workload through sqlrepo, through rusqlite
//! in-process (the limit), and the naive sqlx way (a pool acquire and a statement per row), each
//! on a fresh database file, all in one run, with a floor column (raw sqlx on one held
//! connection: the same point get for the reads, the same statement for a transfer; see
//! `floor.rs`). It prints a Markdown table of µs per operation and the ratios the issues'
//! targets are stated in (issue 25's where it set one).
//!
//! ```text
//! cargo run --release --example bench                         # full run, table on stdout
//! cargo run --release --example bench -- --json bench.json    # also bench.json and bench.svg
//! cargo run --example bench -- --quick                        # every workload small (CI)
//! cargo run --example bench -- --quick --guard examples/bench/recorded.json   # regression guard
//! SQLREPO_PG_URL=postgres://… SQLREPO_PG_REPLICA_URL=postgres://… \
//!   cargo run --release --features postgres --example bench    # PostgreSQL rows too
//! ```
//!
//! Ratios taken side by side in one run are what to read; absolute figures move a lot from day
//! to day on shared machines. So the workloads made of many small operations run in rounds in
//! which the sides take turns (who goes first rotates), and each figure is the median of its
//! rounds. A normal run has no timing assertions: it fails only when a side does the wrong work
//! (a row missing, a count off) or sqlrepo's `mixed` run hits `Busy` or loses a write. The
//! regression guard (`--guard`, `guard.rs`) is the one run that fails on figures.
//!
//! With the `postgres` feature and `SQLREPO_PG_URL` set, PostgreSQL rows follow (`pg ...`, in
//! `postgres.rs`): sqlrepo on PostgreSQL against raw sqlx on a held connection, `COPY`, and a
//! replicated read against a primary read; they share the table, the JSON and the chart.
//!
//! `main.rs` reads the arguments and writes the results; `workloads.rs` runs the workloads;
//! one file per side (`repo_side.rs`, `rusqlite_side.rs`, `naive.rs`, `floor.rs`).

mod concurrent;
mod data;
mod derived;
#[cfg(feature = "postgres")]
mod failover;
mod floor;
mod guard;
mod mixed;
mod naive;
mod operations;
#[cfg(feature = "postgres")]
mod postgres;
mod repo_side;
mod report;
mod rss;
mod rusqlite_side;
mod svg;
mod timing;
mod workloads;

use std::path::PathBuf;

use anyhow::{Context, bail, ensure};

use crate::data::{Inputs, Sizes};
use crate::timing::progress;
use crate::workloads::Bench;

const USAGE: &str = "\
usage: cargo run --release [--features postgres] --example bench -- [--quick] [--json PATH] [--svg PATH] [--current-thread] [--operations] [--postgres] [--failover] [--guard PATH] [--record PATH]

  --quick           every workload small (seconds, even in a debug build); for CI
  --json PATH       also write the results as JSON to PATH
  --svg PATH        write the bar chart to PATH; with --json and no --svg the chart
                    goes to bench.svg next to the JSON file
  --current-thread  run tokio's current-thread runtime instead of the multi-thread one
  --operations      run only the operations workloads (backup of a 1M-row file, integrity
                    check, the WAL under steady load) and print their report lines
  --postgres        run only the PostgreSQL rows (needs the postgres feature and
                    SQLREPO_PG_URL; SQLREPO_PG_REPLICA_URL for the replica rows)
  --failover        also the failover rows: a three-node Patroni cluster started on loopback
                    (ports SQLREPO_PATRONI_BASEPORT+1..21, default 27000), its leader killed
                    under 8 writers (needs the postgres feature, Patroni and etcd: root
                    installs them)
  --guard PATH      fail when a SQLite row's ratio (to rusqlite, or to the floor) is more than
                    1.5x the ratio recorded in PATH for this machine class; a row over the line
                    is measured again in fresh runs (at most 3 in all) and fails only if every
                    run had it over
  --record PATH     write the record --guard reads: each row's worst ratio over 5 runs";

#[derive(Debug, Default)]
struct Args {
    quick: bool,
    json: Option<PathBuf>,
    svg: Option<PathBuf>,
    current_thread: bool,
    operations_only: bool,
    postgres_only: bool,
    failover: bool,
    guard: Option<PathBuf>,
    record: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args::default();
    let mut words = std::env::args().skip(1);
    while let Some(word) = words.next() {
        match word.as_str() {
            "--quick" => args.quick = true,
            "--current-thread" => args.current_thread = true,
            "--operations" => args.operations_only = true,
            "--postgres" => args.postgres_only = true,
            "--failover" => args.failover = true,
            "--json" => args.json = Some(words.next().context(USAGE)?.into()),
            "--svg" => args.svg = Some(words.next().context(USAGE)?.into()),
            "--guard" => args.guard = Some(words.next().context(USAGE)?.into()),
            "--record" => args.record = Some(words.next().context(USAGE)?.into()),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    ensure!(
        args.guard.is_none() && args.record.is_none()
            || !(args.quick || args.postgres_only || args.operations_only || args.failover),
        "--guard and --record make a run of their own (SQLite rows at the guard's sizes): \
         not with --quick, --postgres, --operations or --failover"
    );
    if args.svg.is_none()
        && let Some(json) = &args.json
    {
        args.svg = Some(json.with_file_name("bench.svg"));
    }
    Ok(args)
}

/// The PostgreSQL rows, or a note saying why there are none; with `--postgres` a missing
/// server or feature is an error, since nothing else would run.
#[cfg(feature = "postgres")]
fn run_postgres(
    runtime: &tokio::runtime::Runtime,
    inputs: &Inputs,
    required: bool,
) -> anyhow::Result<(Vec<report::Row>, Vec<String>)> {
    match postgres::Servers::from_env() {
        Some(servers) => postgres::run(runtime, inputs, &servers),
        None if required => bail!("--postgres needs SQLREPO_PG_URL (a PostgreSQL server)"),
        None => Ok((
            Vec::new(),
            vec!["PostgreSQL rows skipped: SQLREPO_PG_URL is not set.".to_owned()],
        )),
    }
}

#[cfg(not(feature = "postgres"))]
fn run_postgres(
    _runtime: &tokio::runtime::Runtime,
    _inputs: &Inputs,
    required: bool,
) -> anyhow::Result<(Vec<report::Row>, Vec<String>)> {
    ensure!(
        !required,
        "--postgres needs the postgres feature (--features postgres)"
    );
    let why = if std::env::var_os("SQLREPO_PG_URL").is_some() {
        "PostgreSQL rows skipped: SQLREPO_PG_URL is set but the bench was built without the \
         postgres feature (--features postgres)."
    } else {
        "PostgreSQL rows skipped: built without the postgres feature, and SQLREPO_PG_URL unset."
    };
    Ok((Vec::new(), vec![why.to_owned()]))
}

#[cfg(feature = "postgres")]
fn run_failover(
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<(Vec<report::Row>, Vec<String>)> {
    failover::run(runtime)
}

#[cfg(not(feature = "postgres"))]
fn run_failover(
    _runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<(Vec<report::Row>, Vec<String>)> {
    bail!("--failover needs the postgres feature (--features postgres)")
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    timing::start_clock();
    let runtime = if args.current_thread {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    }
    .enable_all()
    .build()?;
    let operation_sizes = if args.quick {
        operations::OperationSizes::quick()
    } else {
        operations::OperationSizes::full()
    };
    if args.operations_only {
        let dir = tempfile::tempdir()?;
        println!();
        for line in operations::run(&runtime, operation_sizes, dir.path())? {
            println!("- {line}");
        }
        return Ok(());
    }
    if let Some(path) = args.guard.as_ref().or(args.record.as_ref()) {
        return guard_run(&runtime, path, args.record.is_some());
    }
    let sizes = if args.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    let inputs = Inputs::generate(sizes);
    let dir = tempfile::tempdir()?;
    let (mut rows, mut notes, verdict) = if args.postgres_only {
        (Vec::new(), Vec::new(), None)
    } else {
        let (rows, mut notes, verdict) = Bench::open(&runtime, &inputs, dir.path())?.run()?;
        notes.extend(operations::run(&runtime, operation_sizes, dir.path())?);
        (rows, notes, Some(verdict))
    };
    let (pg_rows, pg_notes) = run_postgres(&runtime, &inputs, args.postgres_only)?;
    rows.extend(pg_rows);
    notes.extend(pg_notes);
    if args.failover {
        let (failover_rows, failover_notes) = run_failover(&runtime)?;
        rows.extend(failover_rows);
        notes.extend(failover_notes);
    }

    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let setting = format!(
        "{} run, {} build, tokio {} runtime, {cores} cores, SQLite {}",
        if args.quick { "quick" } else { "full" },
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        if args.current_thread {
            "current-thread"
        } else {
            "multi-thread"
        },
        rusqlite::version(),
    );
    notes.insert(0, setting.clone());
    println!();
    report::print_table(&rows, &notes);
    if let Some(path) = &args.json {
        report::write_json(path, &rows, &notes)?;
        progress(format_args!("wrote {}", path.display()));
    }
    if let Some(path) = &args.svg {
        svg::write(path, &rows, &setting)?;
        progress(format_args!("wrote {}", path.display()));
    }
    if let Some(verdict) = verdict {
        ensure!(
            verdict.clean(),
            "sqlrepo's mixed run broke a rule: {}",
            verdict.describe("sqlrepo")
        );
    }
    Ok(())
}

/// `--guard` or `--record`: the SQLite rows at the guard's sizes, then the record written or
/// checked; the table printed either way.
fn guard_run(
    runtime: &tokio::runtime::Runtime,
    path: &std::path::Path,
    recording: bool,
) -> anyhow::Result<()> {
    let inputs = Inputs::generate(Sizes::guard());
    let rows = sqlite_rows(runtime, &inputs)?;
    let (note, failure) = if recording {
        record(runtime, &inputs, &rows, path)?;
        (
            format!(
                "guard record written to {} (each row's worst of {} runs)",
                path.display(),
                guard::RECORD_RUNS
            ),
            None,
        )
    } else {
        check(runtime, &inputs, &rows, path)?
    };
    println!();
    report::print_table(&rows, &[guard::class(), note]);
    match failure {
        Some(failure) => bail!("{failure}"),
        None => Ok(()),
    }
}

/// The SQLite rows of one more whole run, on fresh databases (for the guard).
fn sqlite_rows(
    runtime: &tokio::runtime::Runtime,
    inputs: &Inputs,
) -> anyhow::Result<Vec<report::Row>> {
    let dir = tempfile::tempdir()?;
    let (rows, _, verdict) = Bench::open(runtime, inputs, dir.path())?.run()?;
    ensure!(
        verdict.clean(),
        "sqlrepo's mixed run broke a rule: {}",
        verdict.describe("sqlrepo")
    );
    Ok(rows)
}

/// Writes the guard's record: each row's worst ratio over [`guard::RECORD_RUNS`] runs, this
/// one included.
fn record(
    runtime: &tokio::runtime::Runtime,
    inputs: &Inputs,
    rows: &[report::Row],
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let mut worst = guard::ratios(rows);
    progress(format_args!(
        "guard record, run 1: {}",
        guard::describe(&worst)
    ));
    for run in 2..=guard::RECORD_RUNS {
        let ratios = guard::ratios(&sqlite_rows(runtime, inputs)?);
        progress(format_args!(
            "guard record, run {run}: {}",
            guard::describe(&ratios)
        ));
        guard::merge(&mut worst, ratios, true);
    }
    guard::Record {
        class: guard::class(),
        made_by: format!(
            "{}cargo run{} --all-features --example bench -- --record {}",
            build_settings(),
            if cfg!(debug_assertions) {
                ""
            } else {
                " --release"
            },
            path.display()
        ),
        rows: worst,
    }
    .write(path)
}

/// The build settings of `.ci/run` that this binary was built with, as a command's prefix
/// (they change the code a debug build makes, so a record says which it was taken with).
fn build_settings() -> String {
    [
        ("CARGO_INCREMENTAL", option_env!("CARGO_INCREMENTAL")),
        (
            "CARGO_PROFILE_DEV_DEBUG",
            option_env!("CARGO_PROFILE_DEV_DEBUG"),
        ),
    ]
    .iter()
    .filter_map(|(name, value)| value.map(|value| format!("{name}={value} ")))
    .collect()
}

/// Compares this run with the record at `path`, measuring again while a row is over the
/// line. Returns the note for the table, and the failure if a row stayed over.
fn check(
    runtime: &tokio::runtime::Runtime,
    inputs: &Inputs,
    rows: &[report::Row],
    path: &std::path::Path,
) -> anyhow::Result<(String, Option<String>)> {
    let record = guard::Record::read(path)?;
    let class = guard::class();
    if record.class != class {
        return Ok((
            format!(
                "guard: not compared; {} holds figures for a {}, this is a {class}",
                path.display(),
                record.class
            ),
            None,
        ));
    }
    let mut best = guard::ratios(rows);
    progress(format_args!("guard, run 1: {}", guard::describe(&best)));
    let mut runs = 1;
    while runs < guard::CHECK_RUNS && !record.over(&best).is_empty() {
        runs += 1;
        let names: Vec<String> = record
            .over(&best)
            .into_iter()
            .map(|(name, ..)| name)
            .collect();
        progress(format_args!(
            "guard: over {}x the record: {}; measuring again (run {runs} of {})",
            guard::TOLERANCE,
            names.join(", "),
            guard::CHECK_RUNS
        ));
        let ratios = guard::ratios(&sqlite_rows(runtime, inputs)?);
        progress(format_args!(
            "guard, run {runs}: {}",
            guard::describe(&ratios)
        ));
        guard::merge(&mut best, ratios, false);
    }
    let over = record.over(&best);
    let missing = record.missing(&best);
    let closest = record
        .rows
        .iter()
        .filter_map(|(name, recorded)| Some((name, best.get(name)?.ratio / recorded.ratio)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    let mut note = format!(
        "guard: {} of {} recorded rows within {}x of {} (best of {runs} run{})",
        record.rows.len() - over.len() - missing.len(),
        record.rows.len(),
        guard::TOLERANCE,
        path.display(),
        if runs == 1 { "" } else { "s" }
    );
    if let Some((name, share)) = closest {
        note.push_str(&format!(
            "; closest to its line: {name} at {share:.2}x its record"
        ));
    }
    let mut problems: Vec<String> = over
        .iter()
        .map(|(name, now, recorded)| {
            format!(
                "{name} at {now:.2}x (recorded {recorded:.2}x, line {:.2}x)",
                recorded * guard::TOLERANCE
            )
        })
        .collect();
    problems.extend(
        missing
            .iter()
            .map(|name| format!("{name} recorded but not measured")),
    );
    let failure = (!problems.is_empty()).then(|| {
        format!(
            "benchmark regression guard ({}): {}",
            path.display(),
            problems.join("; ")
        )
    });
    Ok((note, failure))
}
