//! What a benchmark measures: latencies per RPC (kept whole, so percentiles are exact), errors by code, and a
//! process's CPU time and peak memory from `/proc`.

use std::{collections::BTreeMap, time::Duration};

/// Latencies of one operation, in nanoseconds.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    ns: Vec<u64>,
}

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.ns.push(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    pub fn extend(&mut self, other: &Samples) {
        self.ns.extend_from_slice(&other.ns);
    }

    pub fn len(&self) -> usize {
        self.ns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ns.is_empty()
    }

    /// The `q` quantile (0.0 to 1.0) by the nearest-rank method: the smallest sample that at least `q` of
    /// all samples are at or below. `None` without samples.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.ns.is_empty() {
            return None;
        }
        let mut sorted = self.ns.clone();
        sorted.sort_unstable();
        let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
        Some(Duration::from_nanos(sorted[rank.clamp(1, sorted.len()) - 1]))
    }

    pub fn max(&self) -> Option<Duration> {
        self.ns.iter().max().map(|n| Duration::from_nanos(*n))
    }
}

/// Counts of failed calls, by RPC and gRPC code name.
pub type Errors = BTreeMap<(String, String), u64>;

/// A process's CPU time and memory, read from `/proc/<pid>`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcSample {
    /// User plus system CPU time.
    pub cpu: Duration,
    /// Peak resident set size so far (`VmHWM`), in bytes.
    pub peak_rss: u64,
    /// Resident set size now (`VmRSS`), in bytes.
    pub rss: u64,
}

impl ProcSample {
    pub fn read(pid: u32) -> std::io::Result<ProcSample> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let ticks = rustix::param::clock_ticks_per_second();
        parse(&stat, &status, ticks).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("/proc/{pid}/stat or status has an unexpected format"),
            )
        })
    }
}

/// Parses `/proc/<pid>/stat` (utime and stime, fields 14 and 15, in clock ticks) and `status` (`VmHWM`,
/// `VmRSS` in kB).
fn parse(stat: &str, status: &str, ticks_per_second: u64) -> Option<ProcSample> {
    // The command name (field 2) is in parentheses and may hold spaces: count fields after its closing one.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (the state), so field N is at index N - 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let kb = |key: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    };
    let ticks = utime + stime;
    Some(ProcSample {
        cpu: Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / ticks_per_second.max(1)),
        peak_rss: kb("VmHWM:")? * 1024,
        rss: kb("VmRSS:")? * 1024,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let mut s = Samples::default();
        assert_eq!(s.quantile(0.5), None);
        for ms in 1..=100 {
            s.push(Duration::from_millis(ms));
        }
        assert_eq!(s.quantile(0.5), Some(Duration::from_millis(50)));
        assert_eq!(s.quantile(0.99), Some(Duration::from_millis(99)));
        assert_eq!(s.quantile(1.0), Some(Duration::from_millis(100)));
        assert_eq!(s.quantile(0.0), Some(Duration::from_millis(1)));
        assert_eq!(s.max(), Some(Duration::from_millis(100)));
        let mut one = Samples::default();
        one.push(Duration::from_micros(7));
        assert_eq!(one.quantile(0.99), Some(Duration::from_micros(7)));
    }

    #[test]
    fn proc_files_are_parsed_with_spaces_in_the_name() {
        let stat = "4242 (loam serve x) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 9 0 100 0 0";
        let status = "Name:\tloam\nVmHWM:\t   12000 kB\nVmRSS:\t    8000 kB\nThreads:\t9\n";
        let p = parse(stat, status, 100).unwrap();
        assert_eq!(p.cpu, Duration::from_secs(3));
        assert_eq!(p.peak_rss, 12000 * 1024);
        assert_eq!(p.rss, 8000 * 1024);
        assert!(parse("garbage", status, 100).is_none());
        assert!(parse(stat, "Name: x\n", 100).is_none());
    }

    #[test]
    fn this_process_can_be_read() {
        let p = ProcSample::read(std::process::id()).unwrap();
        assert!(p.rss > 0 && p.peak_rss >= p.rss, "{p:?}");
    }
}
