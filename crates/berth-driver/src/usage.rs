//! Resource usage read from `/proc` and cgroup files: a workload's CPU time and memory for the
//! per-machine metrics, and the agent's own RSS, CPU time and open file descriptors.
//!
//! Everything here only reads; a file that cannot be read (the process exited, no cgroup) gives
//! `None`, never an error, because usage is sampled while processes come and go.
#![allow(unsafe_code)]

use std::path::Path;
use std::sync::OnceLock;

/// CPU time and resident memory of one process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcStat {
    /// User + system time of the process and of its reaped children, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size, in bytes.
    pub rss_bytes: u64,
}

/// What a machine's workload uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// CPU time consumed since the workload started, in seconds.
    pub cpu_seconds: f64,
    /// Memory in use, in bytes.
    pub memory_bytes: u64,
}

fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf reads a configuration value; it has no preconditions and touches no memory
    // of ours.
    let v = unsafe { libc::sysconf(name) };
    u64::try_from(v).ok().filter(|v| *v > 0)
}

/// Clock ticks per second (`/proc/<pid>/stat` times are in these).
pub fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| sysconf(libc::_SC_CLK_TCK).unwrap_or(100))
}

/// The page size (`/proc/<pid>/stat` RSS is in pages).
pub fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    *PAGE.get_or_init(|| sysconf(libc::_SC_PAGESIZE).unwrap_or(4096))
}

/// Parses the text of `/proc/<pid>/stat`.
pub fn parse_stat(stat: &str) -> Option<ProcStat> {
    // The command name (field 2) is in parentheses and may contain anything: parse from the last
    // ')'. Field 3 (state) is then index 0, so field N is index N - 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let num = |field: usize| -> Option<u64> { fields.get(field - 3)?.parse().ok() };
    // utime, stime, cutime, cstime are fields 14-17; rss (pages) is field 24.
    let ticks = num(14)? + num(15)? + num(16)? + num(17)?;
    Some(ProcStat {
        cpu_seconds: ticks as f64 / clock_ticks() as f64,
        rss_bytes: num(24)? * page_size(),
    })
}

/// CPU time and RSS of `pid`, if it exists.
pub fn process(pid: i32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Open file descriptors of `pid`.
pub fn open_fds(pid: i32) -> Option<usize> {
    Some(
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .ok()?
            .filter(Result::is_ok)
            .count(),
    )
}

/// The soft limit on open file descriptors of `pid` (`Max open files` in `/proc/<pid>/limits`).
pub fn max_fds(pid: i32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Usage of the processes in a cgroup directory: CPU from `cpu.stat` (always present in cgroup
/// v2), memory from `memory.current` when the memory controller accounts it, otherwise the sum of
/// the RSS of the processes listed in `cgroup.procs`.
pub fn cgroup(dir: &Path) -> Option<Usage> {
    let cpu = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
    let usec: u64 = cpu
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse().ok())?;
    let memory_bytes = match std::fs::read_to_string(dir.join("memory.current")) {
        Ok(s) => s.trim().parse().ok()?,
        Err(_) => std::fs::read_to_string(dir.join("cgroup.procs"))
            .ok()?
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
            .filter_map(process)
            .map(|p| p.rss_bytes)
            .sum(),
    };
    Some(Usage {
        cpu_seconds: usec as f64 / 1e6,
        memory_bytes,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_stat_with_a_hostile_command_name() {
        // Fields 14-17 are 100, 50, 7, 3 ticks; field 24 (rss) is 10 pages.
        let stat = "42 (a) b) (c) S 1 42 42 0 -1 4194560 100 0 0 0 100 50 7 3 20 0 1 0 \
                    12345 1000000 10 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0";
        let p = parse_stat(stat).unwrap();
        assert_eq!(p.cpu_seconds, 160.0 / clock_ticks() as f64);
        assert_eq!(p.rss_bytes, 10 * page_size());
        assert_eq!(parse_stat("42 (truncated"), None);
        assert_eq!(parse_stat("42 (x) S 1 2"), None);
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id() as i32;
        let p = process(me).unwrap();
        assert!(p.rss_bytes > 0);
        assert!(open_fds(me).unwrap() >= 3);
        assert!(max_fds(me).unwrap() >= 3);
        assert_eq!(process(i32::MAX), None);
    }
}
