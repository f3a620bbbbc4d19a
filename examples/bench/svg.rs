//! The chart for the guide: a hand-written SVG (a plotting crate would be a larger dependency
//! than this file) of µs per operation for sqlrepo, rusqlite and naive sqlx per workload, as
//! horizontal bars on a log scale, since the figures span four decades.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use crate::report::{Row, format_us};
use crate::timing::Measured;

const WIDTH: f64 = 960.0;
const PLOT_LEFT: f64 = 170.0;
const PLOT_RIGHT: f64 = 870.0;
const TOP: f64 = 78.0;
const BAR_HEIGHT: f64 = 14.0;
const BAR_GAP: f64 = 2.0;
const GROUP_GAP: f64 = 16.0;

/// The sides drawn, with their colours. A SQLite row draws the first three; a PostgreSQL row
/// draws sqlrepo and its baseline (the table's floor column).
const SERIES: [(&str, &str); 4] = [
    ("sqlrepo", "#2b6cb0"),
    ("rusqlite (in-process limit)", "#718096"),
    ("naive sqlx (pool, statement per row)", "#dd6b20"),
    ("PostgreSQL floor", "#38a169"),
];

/// A row's bars: the index into [`SERIES`] and the figure (`None`: not measured).
fn values(row: &Row) -> Vec<(usize, Option<f64>)> {
    let sqlrepo = (0, Some(row.sqlrepo.us_per_op()));
    if row.on_postgres {
        vec![sqlrepo, (3, row.floor.as_ref().map(Measured::us_per_op))]
    } else {
        vec![
            sqlrepo,
            (1, row.rusqlite.as_ref().map(Measured::us_per_op)),
            (2, row.naive.as_ref().map(Measured::us_per_op)),
        ]
    }
}

fn group_height(row: &Row) -> f64 {
    values(row).len() as f64 * (BAR_HEIGHT + BAR_GAP) + GROUP_GAP
}

/// `10^decade` as plain text: 0.1, 1, 10, 1000.
fn decade_label(decade: i32) -> String {
    let precision = usize::try_from(-decade).unwrap_or(0);
    format!("{:.precision$}", 10f64.powi(decade))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A bar's figure, with p50/p99 latency for the concurrent workloads' sqlrepo and rusqlite bars.
fn bar_label(row: &Row, series: usize, value: f64) -> String {
    let latency = row.concurrent.and_then(|c| match series {
        0 => Some(c.sqlrepo),
        1 => Some(c.rusqlite),
        _ => None,
    });
    match latency {
        Some(p) => format!(
            "{} (p50 {}, p99 {} µs)",
            format_us(value),
            format_us(p.p50_us),
            format_us(p.p99_us)
        ),
        None => format_us(value),
    }
}

/// Renders the chart as SVG text.
pub fn render(rows: &[Row], subtitle: &str) -> String {
    let all: Vec<f64> = rows
        .iter()
        .flat_map(values)
        .filter_map(|(_, value)| value)
        .filter(|v| *v > 0.0)
        .collect();
    let lowest = all.iter().copied().fold(f64::INFINITY, f64::min);
    let highest = all.iter().copied().fold(0.0, f64::max);
    let first_decade = if lowest.is_finite() {
        lowest.log10().floor() as i32
    } else {
        0
    };
    let last_decade = (highest.log10().ceil() as i32).max(first_decade + 1);
    let span = f64::from(last_decade - first_decade);
    let x_of = |value: f64| {
        let position = (value.max(f64::MIN_POSITIVE).log10() - f64::from(first_decade)) / span;
        PLOT_LEFT + position.clamp(0.0, 1.0) * (PLOT_RIGHT - PLOT_LEFT)
    };

    let plot_bottom = TOP + rows.iter().map(group_height).sum::<f64>();
    let height = plot_bottom + 40.0;

    let mut svg = String::new();
    // `write!` to a String cannot fail.
    let _ = writeln!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="Helvetica, Arial, sans-serif" font-size="12">"##
    );
    let _ = writeln!(
        svg,
        r##"<rect width="100%" height="100%" fill="#ffffff"/>
<text x="{PLOT_LEFT}" y="22" font-size="16" font-weight="bold">µs per operation, log scale (shorter is faster)</text>
<text x="{PLOT_LEFT}" y="40" fill="#4a5568">{}</text>"##,
        escape(subtitle)
    );
    let mut legend_x = PLOT_LEFT;
    let any_postgres = rows.iter().any(|row| row.on_postgres);
    let shown = if any_postgres { 4 } else { 3 };
    for (name, colour) in SERIES.into_iter().take(shown) {
        let _ = writeln!(
            svg,
            r##"<rect x="{legend_x}" y="50" width="12" height="12" fill="{colour}"/><text x="{}" y="60">{}</text>"##,
            legend_x + 16.0,
            escape(name)
        );
        legend_x += 36.0 + name.chars().count() as f64 * 6.2;
    }

    // Decade grid lines and their labels.
    for decade in first_decade..=last_decade {
        let value = 10f64.powi(decade);
        let x = x_of(value);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{plot_bottom}" stroke="#e2e8f0"/><text x="{x:.1}" y="{}" text-anchor="middle" fill="#4a5568">{} µs</text>"##,
            plot_bottom + 16.0,
            decade_label(decade)
        );
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{PLOT_LEFT}" y1="{TOP}" x2="{PLOT_LEFT}" y2="{plot_bottom}" stroke="#2d3748"/>"##
    );

    let mut next_group_top = TOP;
    for row in rows {
        let bars = values(row);
        let group_top = next_group_top + GROUP_GAP / 2.0;
        next_group_top += group_height(row);
        let middle = group_top + bars.len() as f64 * (BAR_HEIGHT + BAR_GAP) / 2.0;
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{:.1}" text-anchor="end" font-weight="bold">{}</text><text x="{}" y="{:.1}" text-anchor="end" fill="#4a5568" font-size="11">per {}</text>"##,
            PLOT_LEFT - 8.0,
            middle - 2.0,
            escape(row.name),
            PLOT_LEFT - 8.0,
            middle + 11.0,
            escape(row.unit)
        );
        for (bar, (series, value)) in bars.into_iter().enumerate() {
            let y = group_top + bar as f64 * (BAR_HEIGHT + BAR_GAP);
            let text_y = y + BAR_HEIGHT - 3.0;
            let colour = SERIES[series].1;
            match value {
                Some(value) => {
                    let end = x_of(value).max(PLOT_LEFT + 1.0);
                    let _ = writeln!(
                        svg,
                        r##"<rect x="{PLOT_LEFT}" y="{y:.1}" width="{:.1}" height="{BAR_HEIGHT}" fill="{colour}"/><text x="{:.1}" y="{text_y:.1}" font-size="11">{}</text>"##,
                        end - PLOT_LEFT,
                        end + 4.0,
                        bar_label(row, series, value)
                    );
                }
                None => {
                    let _ = writeln!(
                        svg,
                        r##"<text x="{}" y="{text_y:.1}" font-size="11" fill="#a0aec0">n/a</text>"##,
                        PLOT_LEFT + 4.0
                    );
                }
            }
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// Writes the chart to `path`.
pub fn write(path: &Path, rows: &[Row], subtitle: &str) -> anyhow::Result<()> {
    std::fs::write(path, render(rows, subtitle))
        .with_context(|| format!("writing {}", path.display()))
}
