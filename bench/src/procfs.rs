//! Memory of another process, read from `/proc/<pid>/status` and `smaps_rollup`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One reading, all in bytes.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemorySample {
    pub rss: u64,
    pub peak_rss: u64,
    pub pss: u64,
    /// `Private_Clean + Private_Dirty`: what the process alone holds, shared library
    /// pages excluded.
    pub private: u64,
    pub anonymous: u64,
}

/// Reads the current memory figures of `pid`.
pub fn sample(pid: u32) -> Result<MemorySample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .with_context(|| format!("reading /proc/{pid}/smaps_rollup"))?;
    Ok(MemorySample {
        rss: field_kib(&status, "VmRSS:").unwrap_or(0) * 1024,
        peak_rss: field_kib(&status, "VmHWM:").unwrap_or(0) * 1024,
        pss: field_kib(&rollup, "Pss:").unwrap_or(0) * 1024,
        private: (field_kib(&rollup, "Private_Clean:").unwrap_or(0)
            + field_kib(&rollup, "Private_Dirty:").unwrap_or(0))
            * 1024,
        anonymous: field_kib(&rollup, "Anonymous:").unwrap_or(0) * 1024,
    })
}

/// The value of a `Name:   123 kB` line.
fn field_kib(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
}

/// Samples until RSS stops moving (four readings 250 ms apart within 0.2 % or 64 KiB of
/// each other), or `limit` passes. Allocators return memory lazily and a server may
/// still be finishing per-connection work, so one early reading would be noise.
/// Returns the last sample and whether it settled.
pub async fn settle(pid: u32, limit: Duration) -> Result<(MemorySample, bool)> {
    let deadline = Instant::now() + limit;
    let mut last = sample(pid)?;
    let mut stable = 0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = sample(pid)?;
        let tolerance = (last.rss / 500).max(64 * 1024);
        if now.rss.abs_diff(last.rss) <= tolerance {
            stable += 1;
            if stable >= 4 {
                return Ok((now, true));
            }
        } else {
            stable = 0;
        }
        last = now;
    }
    Ok((last, false))
}

/// CPU time the process has used so far, in clock ticks (user + system).
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may contain spaces and parentheses; the fields after the last
    // `)` are fixed: state is the first, utime and stime the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(ticks(11) + ticks(12))
}

/// CPU ticks of `root` and of its children now alive: a PostgreSQL postmaster and the
/// backends serving each connection.
pub fn tree_cpu_ticks(root: u32) -> Result<u64> {
    let mut total = cpu_ticks(root)?;
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|ppid| ppid.parse::<u32>().ok());
        if parent == Some(root) {
            total += cpu_ticks(pid).unwrap_or(0);
        }
    }
    Ok(total)
}

/// Waits until the process has used at most 10 % of a core over half a second, or
/// `limit` passes. After an overloaded step a peer may still be working off its
/// backlog, which would otherwise be charged to the next step.
pub async fn wait_idle(pid: u32, limit: Duration) -> Result<bool> {
    let deadline = Instant::now() + limit;
    let window = Duration::from_millis(500);
    // Ticks are 1/100 s on Linux: 5 ticks in 0.5 s is 10 % of one core.
    let budget = 5;
    let mut last = cpu_ticks(pid)?;
    while Instant::now() < deadline {
        tokio::time::sleep(window).await;
        let now = cpu_ticks(pid)?;
        if now.saturating_sub(last) <= budget {
            return Ok(true);
        }
        last = now;
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = sample(std::process::id()).expect("own /proc entry is readable");
        assert!(me.rss > 0);
        assert!(me.private > 0);
        assert!(me.peak_rss >= me.rss);
    }

    #[test]
    fn counts_own_cpu_time() {
        let start = cpu_ticks(std::process::id()).expect("own stat is readable");
        let spin = Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(100) {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        assert!(x != 1);
        assert!(cpu_ticks(std::process::id()).expect("readable") >= start);
    }

    #[test]
    fn parses_kib_fields() {
        let text = "Name:\tx\nVmRSS:\t  1234 kB\nPss:  7 kB\n";
        assert_eq!(field_kib(text, "VmRSS:"), Some(1234));
        assert_eq!(field_kib(text, "Pss:"), Some(7));
        assert_eq!(field_kib(text, "Rss:"), None);
    }
}
