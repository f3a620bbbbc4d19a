//! The benchmark harness of issue 5: every workload through sqlrepo, through rusqlite
//! in-process (the limit), and the naive sqlx way (a pool acquire and a statement per row), each
//! on a fresh database file, all in one run, with a floor column (the same point get through
//! raw sqlx on one held connection). It prints a Markdown table of µs per operation and the
//! ratios the issue's targets are stated in.
//!
//! ```text
//! cargo run --release --example bench                         # full run, table on stdout
//! cargo run --release --example bench -- --json bench.json    # also bench.json and bench.svg
//! cargo run --example bench -- --quick                        # every workload small (CI)
//! SQLREPO_PG_URL=postgres://… SQLREPO_PG_REPLICA_URL=postgres://… \
//!   cargo run --release --features postgres --example bench    # PostgreSQL rows too
//! ```
//!
//! Ratios taken side by side in one run are what to read; absolute figures move a lot from day
//! to day on shared machines. So the workloads made of many small operations run in rounds in
//! which the sides take turns (who goes first rotates), and each figure is the median of its
//! rounds. There are no timing assertions: the run fails only when a side does the wrong work
//! (a row missing, a count off) or sqlrepo's `mixed` run hits `Busy` or loses a write.
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
usage: cargo run --release [--features postgres] --example bench -- [--quick] [--json PATH] [--svg PATH] [--current-thread] [--operations] [--postgres] [--failover]

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
                    installs them)";

#[derive(Debug, Default)]
struct Args {
    quick: bool,
    json: Option<PathBuf>,
    svg: Option<PathBuf>,
    current_thread: bool,
    operations_only: bool,
    postgres_only: bool,
    failover: bool,
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
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
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
