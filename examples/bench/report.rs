//! The results: one [`Row`] per workload, printed as a Markdown table (it pastes into the
//! guide's performance chapter as is) with notes under it, and written as JSON for `--json`.

use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::concurrent::Percentiles;
use crate::timing::Measured;

/// What issue 5 asks of a workload, as a ratio of µs per operation.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// sqlrepo / rusqlite at most this.
    Rusqlite(f64),
    /// sqlrepo / floor at most this.
    Floor(f64),
    /// Reported only.
    None,
    /// Reported beside the other sides, with no target of its own (a regression check).
    Compared,
}

/// One workload's figures. The naive side may have done fewer operations (its `ops`).
#[derive(Debug, Clone)]
pub struct Row {
    pub name: &'static str,
    /// What one operation is ("row", "get", "step" …).
    pub unit: &'static str,
    pub sqlrepo: Measured,
    pub rusqlite: Option<Measured>,
    pub naive: Option<Measured>,
    pub floor: Option<Measured>,
    pub target: Target,
    /// For `stream`: sqlrepo's peak RSS growth, and the limit the issue sets.
    pub rss_growth_mib: Option<(f64, f64)>,
    /// For the concurrent workloads: the callers, and each side's p50/p99 latency per
    /// operation (sqlrepo, rusqlite).
    pub concurrent: Option<Concurrent>,
    /// A PostgreSQL row: sqlrepo on PostgreSQL, its `floor` the baseline the notes name.
    pub on_postgres: bool,
}

/// The extra figures of a concurrent workload's row.
#[derive(Debug, Clone, Copy)]
pub struct Concurrent {
    pub callers: usize,
    pub sqlrepo: Percentiles,
    pub rusqlite: Percentiles,
}

impl Row {
    pub fn new(name: &'static str, unit: &'static str, sqlrepo: Measured) -> Self {
        Row {
            name,
            unit,
            sqlrepo,
            rusqlite: None,
            naive: None,
            floor: None,
            target: Target::None,
            rss_growth_mib: None,
            concurrent: None,
            on_postgres: false,
        }
    }

    pub fn ratio(&self) -> Option<f64> {
        self.rusqlite
            .as_ref()
            .map(|rusqlite| self.sqlrepo.us_per_op() / rusqlite.us_per_op())
    }

    pub fn floor_ratio(&self) -> Option<f64> {
        self.floor
            .as_ref()
            .map(|floor| self.sqlrepo.us_per_op() / floor.us_per_op())
    }

    /// sqlrepo's CPU time per operation over `other`'s, when both were read.
    pub fn cpu_ratio(&self, other: Option<&Measured>) -> Option<f64> {
        Some(self.sqlrepo.cpu_us_per_op()? / other?.cpu_us_per_op()?)
    }

    fn target_text(&self) -> String {
        let ratio = match self.target {
            Target::Rusqlite(max) => format!("≤ {max:.1}x rusqlite"),
            Target::Floor(max) => format!("≤ {max:.1}x floor"),
            Target::None => "ops/s, no Busy, no lost writes".to_owned(),
            Target::Compared => "compared only".to_owned(),
        };
        match self.rss_growth_mib {
            Some((_, limit)) => format!("{ratio}, RSS < {limit:.0} MiB"),
            None => ratio,
        }
    }

    /// Whether the target is met; `None` where there is no ratio target.
    pub fn met(&self) -> Option<bool> {
        let ratio_met = match self.target {
            Target::Rusqlite(max) => self.ratio()? <= max,
            Target::Floor(max) => self.floor_ratio()? <= max,
            Target::None | Target::Compared => return None,
        };
        let rss_met = self
            .rss_growth_mib
            .is_none_or(|(growth, limit)| growth < limit);
        Some(ratio_met && rss_met)
    }
}

fn us(measured: Option<&Measured>) -> String {
    measured.map_or_else(|| "–".to_owned(), |m| format_us(m.us_per_op()))
}

/// Three significant figures, so 0.412 and 61.3 and 1240 all read well.
pub fn format_us(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else if value >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

fn cpu_us(measured: Option<&Measured>) -> String {
    measured
        .and_then(Measured::cpu_us_per_op)
        .map_or_else(|| "–".to_owned(), format_us)
}

fn times(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "–".to_owned(), |r| format!("{r:.2}x"))
}

/// Prints the table and the notes on stdout.
pub fn print_table(rows: &[Row], notes: &[String]) {
    println!(
        "| workload | n | per | sqlrepo µs | rusqlite µs | naive sqlx µs (n) | floor µs | sqlrepo / rusqlite | sqlrepo / floor | target | met |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---|---|");
    for row in rows {
        let naive = match &row.naive {
            Some(naive) if naive.ops != row.sqlrepo.ops => {
                format!("{} ({})", us(Some(naive)), naive.ops)
            }
            other => us(other.as_ref()),
        };
        let met = match row.met() {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.name,
            row.sqlrepo.ops,
            row.unit,
            us(Some(&row.sqlrepo)),
            us(row.rusqlite.as_ref()),
            naive,
            us(row.floor.as_ref()),
            times(row.ratio()),
            times(row.floor_ratio()),
            row.target_text(),
            met,
        );
    }
    let concurrent: Vec<(&Row, Concurrent)> = rows
        .iter()
        .filter_map(|row| Some((row, row.concurrent?)))
        .collect();
    if !concurrent.is_empty() {
        println!();
        println!(
            "| concurrent workload | callers | sqlrepo ops/s | rusqlite ops/s | sqlrepo µs/op | rusqlite µs/op | sqlrepo / rusqlite | sqlrepo p50 / p99 µs | rusqlite p50 / p99 µs |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (row, figures) in concurrent {
            let per_second = |m: Option<&Measured>| {
                m.map_or_else(|| "–".to_owned(), |m| format!("{:.0}", 1e6 / m.us_per_op()))
            };
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} / {} | {} / {} |",
                row.name,
                figures.callers,
                per_second(Some(&row.sqlrepo)),
                per_second(row.rusqlite.as_ref()),
                us(Some(&row.sqlrepo)),
                us(row.rusqlite.as_ref()),
                times(row.ratio()),
                format_us(figures.sqlrepo.p50_us),
                format_us(figures.sqlrepo.p99_us),
                format_us(figures.rusqlite.p50_us),
                format_us(figures.rusqlite.p99_us),
            );
        }
    }
    let cpu: Vec<&Row> = rows
        .iter()
        .filter(|row| row.sqlrepo.cpu_us_per_op().is_some())
        .collect();
    if !cpu.is_empty() {
        println!();
        println!(
            "| CPU per operation (every thread) | sqlrepo CPU µs | rusqlite CPU µs | floor CPU µs | sqlrepo / rusqlite (CPU) | sqlrepo / floor (CPU) |"
        );
        println!("|---|---:|---:|---:|---:|---:|");
        for row in cpu {
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                row.name,
                cpu_us(Some(&row.sqlrepo)),
                cpu_us(row.rusqlite.as_ref()),
                cpu_us(row.floor.as_ref()),
                times(row.cpu_ratio(row.rusqlite.as_ref())),
                times(row.cpu_ratio(row.floor.as_ref())),
            );
        }
    }
    println!();
    for note in notes {
        println!("- {note}");
    }
}

#[derive(Serialize)]
struct JsonReport<'a> {
    workloads: Vec<JsonRow<'a>>,
    notes: &'a [String],
}

/// The fields issue 5 names, then a few more (`null` where a column does not apply).
#[derive(Serialize)]
struct JsonRow<'a> {
    name: &'a str,
    backend: &'a str,
    n: usize,
    sqlrepo_us: f64,
    rusqlite_us: Option<f64>,
    naive_sqlx_us: Option<f64>,
    floor_us: Option<f64>,
    ratio: Option<f64>,
    floor_ratio: Option<f64>,
    naive_sqlx_n: Option<usize>,
    per: &'a str,
    target: String,
    target_met: Option<bool>,
    rss_growth_mib: Option<f64>,
    callers: Option<usize>,
    sqlrepo_ops_per_s: f64,
    rusqlite_ops_per_s: Option<f64>,
    sqlrepo_p50_us: Option<f64>,
    sqlrepo_p99_us: Option<f64>,
    rusqlite_p50_us: Option<f64>,
    rusqlite_p99_us: Option<f64>,
    sqlrepo_cpu_us: Option<f64>,
    rusqlite_cpu_us: Option<f64>,
    floor_cpu_us: Option<f64>,
}

/// Writes the results as JSON to `path`.
pub fn write_json(path: &Path, rows: &[Row], notes: &[String]) -> anyhow::Result<()> {
    let report = JsonReport {
        workloads: rows
            .iter()
            .map(|row| JsonRow {
                name: row.name,
                backend: if row.on_postgres {
                    "postgres"
                } else {
                    "sqlite"
                },
                n: row.sqlrepo.ops,
                sqlrepo_us: row.sqlrepo.us_per_op(),
                rusqlite_us: row.rusqlite.as_ref().map(Measured::us_per_op),
                naive_sqlx_us: row.naive.as_ref().map(Measured::us_per_op),
                floor_us: row.floor.as_ref().map(Measured::us_per_op),
                ratio: row.ratio(),
                floor_ratio: row.floor_ratio(),
                naive_sqlx_n: row.naive.as_ref().map(|m| m.ops),
                per: row.unit,
                target: row.target_text(),
                target_met: row.met(),
                rss_growth_mib: row.rss_growth_mib.map(|(growth, _)| growth),
                callers: row.concurrent.map(|c| c.callers),
                sqlrepo_ops_per_s: 1e6 / row.sqlrepo.us_per_op(),
                rusqlite_ops_per_s: row.rusqlite.as_ref().map(|m| 1e6 / m.us_per_op()),
                sqlrepo_p50_us: row.concurrent.map(|c| c.sqlrepo.p50_us),
                sqlrepo_p99_us: row.concurrent.map(|c| c.sqlrepo.p99_us),
                rusqlite_p50_us: row.concurrent.map(|c| c.rusqlite.p50_us),
                rusqlite_p99_us: row.concurrent.map(|c| c.rusqlite.p99_us),
                sqlrepo_cpu_us: row.sqlrepo.cpu_us_per_op(),
                rusqlite_cpu_us: row.rusqlite.as_ref().and_then(Measured::cpu_us_per_op),
                floor_cpu_us: row.floor.as_ref().and_then(Measured::cpu_us_per_op),
            })
            .collect(),
        notes,
    };
    let mut text = serde_json::to_string_pretty(&report)?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
