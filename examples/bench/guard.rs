//! The regression guard: this run's same-run ratios (sqlrepo over rusqlite, or over the floor
//! for the rows whose target is the floor; wall time and CPU time) against the ratios recorded for this machine class
//! in a committed file; a row fails when it is more than [`TOLERANCE`] times its record.
//!
//! Ratios, not times: both sides run in the same process, in interleaved rounds, so a machine
//! that is slower today is slower for both. Two more defences against a shared machine's
//! bursts, one on each side of the comparison:
//!
//! - the record is the **worst** ratio of [`RECORD_RUNS`] whole runs (`--record`), so ordinary
//!   noise is inside it;
//! - a check takes the **best** ratio of up to [`CHECK_RUNS`] whole runs, each on fresh
//!   databases: a row over the line is measured again, and fails only if every run had it over.
//!
//! A record made on another machine class (debug or release build, number of cores) is not compared: the run says so and passes, since ratios there mean something
//! else.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::report::{Row, Target};

/// How far over its record a row may be before the guard fails.
pub const TOLERANCE: f64 = 1.5;

/// Whole runs `--record` makes; the record keeps each row's worst ratio.
pub const RECORD_RUNS: usize = 5;

/// Whole runs a check may take at most; a row's best ratio over them is compared.
pub const CHECK_RUNS: usize = 3;

/// What was recorded: the machine class, and each guarded row's ratio.
#[derive(Debug, Serialize, Deserialize)]
pub struct Record {
    /// "quick run, debug build, 2 cores": a record applies only to the same class.
    pub class: String,
    /// How the record was made (the command), for whoever refreshes it.
    pub made_by: String,
    /// Row name → recorded ratio and what it is a ratio to.
    pub rows: BTreeMap<String, Recorded>,
}

/// One row's recorded ratio.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Recorded {
    /// `"rusqlite"` or `"floor"`.
    pub versus: Versus,
    pub ratio: f64,
}

/// Which side a guarded ratio divides by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Versus {
    Rusqlite,
    Floor,
}

/// The machine class of this run.
pub fn class() -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    format!(
        "guard run, {} build, {cores} cores",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    )
}

/// The guarded ratios of a row, wall time's and CPU time's: SQLite rows only (PostgreSQL's move
/// with the server's own scheduling), against the floor where that is the row's target, else
/// against rusqlite. CPU time (every thread) does not move with how fast the machine wakes a
/// thread, which is most of a point operation's wall-time noise; wall time is what catches a
/// call that waits where it did not.
pub fn guarded(row: &Row) -> Vec<(String, Versus, f64)> {
    if row.on_postgres {
        return Vec::new();
    }
    let (versus, other, wall) = match row.target {
        Target::Floor(_) => (Versus::Floor, row.floor.as_ref(), row.floor_ratio()),
        _ => (Versus::Rusqlite, row.rusqlite.as_ref(), row.ratio()),
    };
    let cpu = row.cpu_ratio(other);
    [
        (row.name.to_owned(), wall),
        (format!("{} (CPU)", row.name), cpu),
    ]
    .into_iter()
    .filter_map(|(name, ratio)| Some((name, versus, ratio?)))
    .collect()
}

/// Each guarded ratio of one run.
pub fn ratios(rows: &[Row]) -> BTreeMap<String, Recorded> {
    rows.iter()
        .flat_map(guarded)
        .map(|(name, versus, ratio)| {
            // Three decimals: the record is read by people too, and noise is far larger.
            let ratio = (ratio * 1000.0).round() / 1000.0;
            (name, Recorded { versus, ratio })
        })
        .collect()
}

/// Keeps, per row, the larger (`worst`) or smaller ratio of `into` and `run`.
pub fn merge(into: &mut BTreeMap<String, Recorded>, run: BTreeMap<String, Recorded>, worst: bool) {
    for (name, recorded) in run {
        into.entry(name)
            .and_modify(|kept| {
                if (recorded.ratio > kept.ratio) == worst {
                    kept.ratio = recorded.ratio;
                }
            })
            .or_insert(recorded);
    }
}

impl Record {
    pub fn read(path: &Path) -> anyhow::Result<Record> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// The rows over the line in `best` (each row's best ratio so far): name, best, record.
    pub fn over(&self, best: &BTreeMap<String, Recorded>) -> Vec<(String, f64, f64)> {
        self.rows
            .iter()
            .filter_map(|(name, recorded)| {
                let now = best.get(name)?;
                (now.versus != recorded.versus || now.ratio > recorded.ratio * TOLERANCE)
                    .then(|| (name.clone(), now.ratio, recorded.ratio))
            })
            .collect()
    }

    /// Recorded rows this run did not measure: a renamed or dropped workload needs a new
    /// record, not a silent pass.
    pub fn missing(&self, best: &BTreeMap<String, Recorded>) -> Vec<String> {
        self.rows
            .keys()
            .filter(|name| !best.contains_key(*name))
            .cloned()
            .collect()
    }
}

/// One run's ratios on one line, for the progress log (what a failure is diagnosed from).
pub fn describe(run: &BTreeMap<String, Recorded>) -> String {
    run.iter()
        .map(|(name, recorded)| format!("{name} {:.3}", recorded.ratio))
        .collect::<Vec<_>>()
        .join(", ")
}
