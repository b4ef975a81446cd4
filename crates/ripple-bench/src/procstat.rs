//! CPU time and resident memory of a process tree, read from `/proc`.
//!
//! A peer server may be several processes (`npx partykit dev` is node plus workerd), so a
//! sample covers the given pid and all its live descendants: CPU is the sum of their user +
//! system time, RSS the sum of their `VmRSS` (shared pages count once per process, which
//! overstates a multi-process server slightly). CPU of descendants that exit during a run is
//! lost; the servers benchmarked keep their processes.
//!
//! CPU comes from two sources: `/proc/PID/stat` (all threads, even exited ones, but in 10 ms
//! ticks) and `/proc/PID/task/*/schedstat` (nanoseconds, live threads only). A difference uses
//! the nanosecond figure unless the tick figure is clearly larger (a thread exited in between).

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Instant;

/// One reading.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When it was taken.
    pub at: Instant,
    /// User + system CPU seconds so far (tick resolution, includes exited threads).
    pub cpu_secs: f64,
    /// On-CPU seconds of the live threads (nanosecond resolution), if readable.
    pub run_secs: Option<f64>,
    /// Resident set size in bytes.
    pub rss_bytes: u64,
    /// Processes summed.
    pub processes: usize,
}

impl Sample {
    /// CPU seconds between `earlier` and this sample.
    pub fn cpu_since(&self, earlier: &Sample) -> f64 {
        let ticks = (self.cpu_secs - earlier.cpu_secs).max(0.0);
        match (self.run_secs, earlier.run_secs) {
            (Some(b), Some(a)) if b >= a => {
                let precise = b - a;
                // Two ticks of slack: more than that means threads exited in between.
                if ticks > precise + 2.0 / clock_ticks() {
                    ticks
                } else {
                    precise
                }
            }
            _ => ticks,
        }
    }
}

fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// `(ppid, utime + stime in ticks)` from `/proc/PID/stat`.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields resume after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); ppid is field 4, utime 14, stime 15.
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// Nanoseconds on CPU of every live thread of `pid`.
fn run_ns(pid: u32) -> Option<u64> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    for entry in dir.flatten() {
        let path = entry.path().join("schedstat");
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        total += text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())?;
    }
    Some(total)
}

fn rss_bytes(pid: u32) -> u64 {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// `pid` and its live descendants.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some((ppid, _)) = stat(p) {
                children.entry(ppid).or_default().push(p);
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        if let Some(kids) = children.get(&out[i]) {
            out.extend(kids.iter().copied());
        }
        i += 1;
    }
    out
}

/// Samples `pid` and its descendants; `None` if `pid` does not exist.
pub fn sample_tree(pid: u32) -> Option<Sample> {
    stat(pid)?;
    let at = Instant::now();
    let pids = tree(pid);
    let ticks: u64 = pids.iter().filter_map(|p| stat(*p)).map(|(_, t)| t).sum();
    let rss = pids.iter().map(|p| rss_bytes(*p)).sum();
    let run: Option<u64> = pids.iter().map(|p| run_ns(*p)).sum();
    Some(Sample {
        at,
        cpu_secs: ticks as f64 / clock_ticks(),
        run_secs: run.map(|ns| ns as f64 / 1e9),
        rss_bytes: rss,
        processes: pids.len(),
    })
}

/// Samples this process (the load generator) alone.
pub fn sample_self() -> Sample {
    let pid = std::process::id();
    let ticks = stat(pid).map_or(0, |(_, t)| t);
    Sample {
        at: Instant::now(),
        cpu_secs: ticks as f64 / clock_ticks(),
        run_secs: run_ns(pid).map(|ns| ns as f64 / 1e9),
        rss_bytes: rss_bytes(pid),
        processes: 1,
    }
}

/// Optional server sampling plus the driver's own.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    /// The server's pid, when given.
    pub server_pid: Option<u32>,
}

/// Server (if known) and driver readings taken together.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    /// The server's tree, if a pid was given and it is alive.
    pub server: Option<Sample>,
    /// This process.
    pub driver: Sample,
}

impl Probe {
    /// Takes a reading now.
    pub fn read(&self) -> Reading {
        Reading {
            server: self.server_pid.and_then(sample_tree),
            driver: sample_self(),
        }
    }
}

/// CPU used between two readings: (server seconds if known, driver seconds, wall seconds).
pub fn cpu_between(a: &Reading, b: &Reading) -> (Option<f64>, f64, f64) {
    let server = match (&a.server, &b.server) {
        (Some(x), Some(y)) => Some(y.cpu_since(x)),
        _ => None,
    };
    let wall = b.driver.at.duration_since(a.driver.at).as_secs_f64();
    (server, b.driver.cpu_since(&a.driver), wall)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_process() {
        let s = sample_tree(std::process::id()).expect("own pid exists");
        assert!(s.rss_bytes > 0);
        assert!(s.processes >= 1);
        assert!(sample_tree(u32::MAX).is_none());
        // Burn a little CPU: the nanosecond figure sees it.
        let a = sample_self();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let b = sample_self();
        assert!(b.cpu_since(&a) > 0.0);
    }
}
