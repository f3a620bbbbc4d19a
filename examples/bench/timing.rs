//! How a side's work is timed and how the run reports progress: one [`Measured`] per side and
//! workload, and progress lines on stderr so a long run shows where it is.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Work done by one side: how many operations (rows, gets, steps …) in how long.
#[derive(Debug, Clone, Copy, Default)]
pub struct Measured {
    pub ops: usize,
    pub elapsed: Duration,
}

impl Measured {
    /// Times `ops` operations that finished `started` ago.
    pub fn since(started: Instant, ops: usize) -> Self {
        Measured {
            ops,
            elapsed: started.elapsed(),
        }
    }

    /// Microseconds per operation.
    pub fn us_per_op(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1e6 / self.ops.max(1) as f64
    }
}

impl std::ops::AddAssign for Measured {
    fn add_assign(&mut self, other: Measured) {
        self.ops += other.ops;
        self.elapsed += other.elapsed;
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
pub fn report_side(workload: &str, side: &str, measured: Measured) {
    progress(format_args!(
        "{workload:<16} {side:<10} {:>8} ops in {:>7.3} s = {:>9.2} µs/op",
        measured.ops,
        measured.elapsed.as_secs_f64(),
        measured.us_per_op()
    ));
}
