//! Peak resident memory while streaming, read from `/proc/self/status` (Linux only; no crate).
//!
//! The probe resets the kernel's high-water mark (`VmHWM`) by writing `5` to
//! `/proc/self/clear_refs`, then also samples `VmRSS` as rows go by, so the growth is right even
//! where the reset is not allowed.

/// Measures how far resident memory rises above where it stood when the probe started.
#[derive(Debug)]
pub struct RssProbe {
    start_kib: u64,
    highest_kib: u64,
    peak_was_reset: bool,
}

impl RssProbe {
    pub fn start() -> Self {
        let peak_was_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
        let start_kib = status_kib("VmRSS").unwrap_or(0);
        RssProbe {
            start_kib,
            highest_kib: start_kib,
            peak_was_reset,
        }
    }

    /// Takes a `VmRSS` sample; call it every few thousand rows (one read costs ~10 µs).
    pub fn sample(&mut self) {
        if let Some(now) = status_kib("VmRSS") {
            self.highest_kib = self.highest_kib.max(now);
        }
    }

    /// The growth in MiB: the highest of the samples and (after a reset) the kernel's peak.
    pub fn growth_mib(mut self) -> f64 {
        self.sample();
        if self.peak_was_reset
            && let Some(peak) = status_kib("VmHWM")
        {
            self.highest_kib = self.highest_kib.max(peak);
        }
        self.highest_kib.saturating_sub(self.start_kib) as f64 / 1024.0
    }
}

/// A `kB` field of `/proc/self/status`, such as `VmRSS` or `VmHWM`.
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}
