//! How a side's work is timed and how the run reports progress: one [`Measured`] per side and
//! workload, and progress lines on stderr so a long run shows where it is.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// When a side's timed work began: the wall clock and the process's CPU time (every thread:
/// the caller's, sqlx's worker, tokio's), so that CPU time per operation can stand beside wall
/// time. Wall time moves with how fast the machine wakes a sleeping thread; CPU time does not.
#[derive(Debug, Clone, Copy)]
pub struct Start {
    at: Instant,
    cpu: Option<Duration>,
}

impl Start {
    /// Now, with the process's CPU time so far.
    pub fn now() -> Start {
        Start {
            cpu: process_cpu(),
            at: Instant::now(),
        }
    }

    /// The wall time since the start.
    pub fn elapsed(&self) -> Duration {
        self.at.elapsed()
    }
}

/// A bare `Instant` is a start with no CPU reading (the rows that do not report CPU time).
impl From<Instant> for Start {
    fn from(at: Instant) -> Start {
        Start { at, cpu: None }
    }
}

/// CPU time used by every thread of this process so far (`CLOCK_PROCESS_CPUTIME_ID`).
fn process_cpu() -> Option<Duration> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `now`.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    (status == 0).then(|| Duration::new(now.tv_sec as u64, now.tv_nsec as u32))
}

/// Work done by one side: how many operations (rows, gets, steps …) in how long. A workload run
/// in rounds keeps each round's figure, and then reports their median: other processes on a
/// shared machine come in bursts, and a burst should spoil one round, not the result.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub ops: usize,
    pub elapsed: Duration,
    /// The process's CPU time over the same work, when its start was read (see [`Start`]).
    pub cpu: Option<Duration>,
    /// µs per operation of each round added with `+=`.
    rounds: Vec<f64>,
}

impl Measured {
    /// Times `ops` operations that finished `started` ago (a [`Start`] also gives CPU time).
    pub fn since(started: impl Into<Start>, ops: usize) -> Self {
        let started = started.into();
        let cpu = started
            .cpu
            .zip(process_cpu())
            .map(|(before, after)| after.saturating_sub(before));
        Measured {
            ops,
            elapsed: started.elapsed(),
            cpu,
            rounds: Vec::new(),
        }
    }

    /// CPU microseconds per operation, every thread of the process counted (the mean over all
    /// rounds), when the work was timed from a [`Start`].
    pub fn cpu_us_per_op(&self) -> Option<f64> {
        self.cpu
            .map(|cpu| cpu.as_secs_f64() * 1e6 / self.ops.max(1) as f64)
    }

    /// Microseconds per operation: the median of the rounds when there are at least three,
    /// else the total time over the total operations.
    pub fn us_per_op(&self) -> f64 {
        if self.rounds.len() >= 3 {
            let mut rounds = self.rounds.clone();
            rounds.sort_by(f64::total_cmp);
            let middle = rounds.len() / 2;
            if rounds.len().is_multiple_of(2) {
                (rounds[middle - 1] + rounds[middle]) / 2.0
            } else {
                rounds[middle]
            }
        } else {
            self.mean_us_per_op()
        }
    }

    fn mean_us_per_op(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1e6 / self.ops.max(1) as f64
    }

    pub fn rounds(&self) -> usize {
        self.rounds.len()
    }
}

/// Adds one round. CPU time stays known only while every round brought it.
impl std::ops::AddAssign for Measured {
    fn add_assign(&mut self, round: Measured) {
        let first = self.ops == 0 && self.rounds.is_empty();
        if round.ops > 0 {
            self.rounds.push(round.mean_us_per_op());
        }
        self.cpu = if first {
            round.cpu
        } else {
            self.cpu.zip(round.cpu).map(|(sum, more)| sum + more)
        };
        self.ops += round.ops;
        self.elapsed += round.elapsed;
    }
}

fn run_start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Starts the clock that progress lines show.
pub fn start_clock() {
    run_start();
}

/// One progress line on stderr, stamped with the seconds since the run began. Stdout stays for
/// the table, so `bench > table.txt` still shows progress.
pub fn progress(message: std::fmt::Arguments<'_>) {
    eprintln!(
        "[bench {:>6.1}s] {message}",
        run_start().elapsed().as_secs_f64()
    );
}

/// Reports a side's result for one workload as a progress line.
pub fn report_side(workload: &str, side: &str, measured: &Measured) {
    progress(format_args!(
        "{workload:<16} {side:<10} {:>8} ops in {:>7.3} s: {:>9.2} µs/op{}",
        measured.ops,
        measured.elapsed.as_secs_f64(),
        measured.us_per_op(),
        match measured.rounds() {
            0 | 1 => String::new(),
            rounds @ 2 => format!(" (mean of {rounds} rounds)"),
            rounds => format!(" (median of {rounds} rounds)"),
        }
    ));
}
