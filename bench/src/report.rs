//! Results of a run and their rendering as a markdown table.

use std::fmt::Write;

use serde::Serialize;

use crate::latency::{format_micros, Summary};
use crate::procfs::MemorySample;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub command: String,
    pub machine: Machine,
    pub settings: Settings,
    pub server: Option<TargetReport>,
    pub echo: Option<TargetReport>,
    /// Present only when asked for (`--targets all` or `mosquitto`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mosquitto: Option<TargetReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub devices: usize,
    pub shards: usize,
    pub rate: f64,
    pub duration_s: f64,
    pub step_duration_s: f64,
    pub step_p99_ms: f64,
    pub consumers: usize,
    pub fanout_target: f64,
    pub fanout_p99_ms: f64,
    pub shadow_bytes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu: String,
    pub memory: String,
    pub kernel: String,
    pub rustc: String,
    /// `/proc/loadavg` when the run started: other work on the machine skews results.
    pub load_average: String,
}

impl Machine {
    pub fn collect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map(|(_, name)| name.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory = meminfo
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<f64>().ok())
            .map(|kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0))
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|text| text.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let rustc = std::process::Command::new("rustc")
            .arg("--version")
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let load_average = std::fs::read_to_string("/proc/loadavg")
            .map(|text| {
                text.split_whitespace()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_else(|_| "unknown".into());
        Self {
            load_average,
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            cpu,
            memory,
            kernel,
            rustc,
        }
    }
}

/// Everything measured against one peer (the server, the echo peer or mosquitto).
#[derive(Debug, Clone, Serialize, Default)]
pub struct TargetReport {
    pub name: String,
    /// Why the peer was not measured at all (mosquitto not installed), shown in every
    /// cell of its column.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    pub connect: Option<ConnectReport>,
    pub memory: Option<MemoryReport>,
    pub rtt_steps: Vec<StepReport>,
    pub fanout_steps: Vec<StepReport>,
    /// Observations a reader should know about: errors, checks, failures.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectReport {
    pub requested: usize,
    pub connected: usize,
    pub failed: usize,
    pub ready: usize,
    pub disconnected: usize,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryReport {
    pub devices: usize,
    /// The server before any device existed (none for the echo peer).
    pub empty: Option<MemorySample>,
    /// After startup and device creation, before any socket.
    pub before: MemorySample,
    /// Every socket connected and idle.
    pub after: MemorySample,
    pub settled: bool,
}

impl MemoryReport {
    pub fn rss_per_device(&self) -> f64 {
        per_device(self.before.rss, self.after.rss, self.devices)
    }

    /// Growth from the empty server: device creation included.
    pub fn rss_per_device_from_empty(&self) -> Option<f64> {
        self.empty
            .map(|empty| per_device(empty.rss, self.after.rss, self.devices))
    }

    pub fn private_per_device(&self) -> f64 {
        per_device(self.before.private, self.after.private, self.devices)
    }
}

fn per_device(before: u64, after: u64, devices: usize) -> f64 {
    (after as f64 - before as f64) / devices.max(1) as f64
}

/// One load step at one offered rate.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// Offered rate: updates/s, or deliveries/s for fan-out.
    pub offered: f64,
    pub seconds: f64,
    /// Whether this is the step at the target rate (run for the full duration).
    pub at_target: bool,
    pub sent: u64,
    /// Replies (updates) or deliveries (fan-out).
    pub completed: u64,
    pub errors: u64,
    pub unanswered: u64,
    pub lagged_dropped: u64,
    /// `completed / seconds`.
    pub achieved: f64,
    pub latency: Summary,
    /// CPU time of the peer per completed operation, µs (user + system, including
    /// persistence and notification-log work done meanwhile).
    pub peer_cpu_us: Option<f64>,
    /// CPU time of the store's database processes (PostgreSQL) per completed operation, µs;
    /// `None` for SQLite, which runs inside the peer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_cpu_us: Option<f64>,
    /// Worst latency (µs) per 100-ms window of scheduled send time (update steps).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub window_max_us: Vec<u64>,
    pub pass: bool,
    pub verdict: String,
}

impl TargetReport {
    pub fn rtt_target(&self) -> Option<&StepReport> {
        self.rtt_steps.iter().find(|s| s.at_target)
    }

    pub fn fanout_target(&self) -> Option<&StepReport> {
        self.fanout_steps.iter().find(|s| s.at_target)
    }
}

/// The passing step with the highest offered rate.
pub fn highest_passing(steps: &[StepReport]) -> Option<&StepReport> {
    steps
        .iter()
        .filter(|s| s.pass)
        .max_by(|a, b| a.offered.total_cmp(&b.offered))
}

/// Decides whether a step passed and says why not.
pub fn judge(
    offered_count: f64,
    completed: u64,
    errors: u64,
    unanswered: u64,
    lagged_dropped: u64,
    p99_us: u64,
    p99_limit_ms: f64,
) -> (bool, String) {
    let mut reasons = Vec::new();
    if p99_us as f64 > p99_limit_ms * 1000.0 {
        reasons.push(format!("p99 {} > {p99_limit_ms} ms", format_micros(p99_us)));
    }
    if offered_count > 0.0 && (completed as f64) < 0.95 * offered_count {
        reasons.push(format!(
            "completed {:.1} % of offered",
            100.0 * completed as f64 / offered_count
        ));
    }
    if errors > 0 {
        reasons.push(format!("{errors} errors"));
    }
    if unanswered > 0 {
        reasons.push(format!("{unanswered} unanswered"));
    }
    if lagged_dropped > 0 {
        reasons.push(format!("{lagged_dropped} dropped (lagged)"));
    }
    if reasons.is_empty() {
        (true, "pass".into())
    } else {
        (false, reasons.join(", "))
    }
}

/// `12345.6` as `12,346`.
pub fn thousands(value: f64) -> String {
    let rounded = value.round();
    let digits = format!("{:.0}", rounded.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if rounded < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

fn kib(bytes: f64) -> String {
    format!("{:.2} KiB", bytes / 1024.0)
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / 1024.0 / 1024.0)
}

fn latency_cell(step: &StepReport) -> String {
    let l = &step.latency;
    format!(
        "{} / {} / {} / {}",
        format_micros(l.p50_us),
        format_micros(l.p99_us),
        format_micros(l.p999_us),
        format_micros(l.max_us)
    )
}

impl Report {
    pub fn markdown(&self) -> String {
        let s = &self.settings;
        let mut out = String::new();
        let mut columns: Vec<(&str, Option<&TargetReport>)> = vec![
            ("herd-server", self.server.as_ref()),
            ("tokio-tungstenite echo peer", self.echo.as_ref()),
        ];
        if let Some(mosquitto) = &self.mosquitto {
            columns.push(("mosquitto (MQTT QoS 1)", Some(mosquitto)));
        }
        let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
        let _ = writeln!(out, "| metric | target | {} |", names.join(" | "));
        let _ = writeln!(out, "|---|---|{}", "---|".repeat(columns.len()));
        let mut row = |metric: String, target: &str, cell: &dyn Fn(&TargetReport) -> String| {
            let cells: Vec<String> = columns
                .iter()
                .map(|(_, report)| match report {
                    None => "not run".into(),
                    Some(report) => match &report.skipped {
                        Some(why) => why.clone(),
                        None => cell(report),
                    },
                })
                .collect();
            let _ = writeln!(out, "| {metric} | {target} | {} |", cells.join(" | "));
        };
        let devices = thousands(s.devices as f64);
        row(
            format!("devices connected and idle (of {devices})"),
            "all",
            &|t| match &t.connect {
                Some(c) => format!(
                    "{} ready, {} failed, {} dropped; connect took {:.1} s",
                    thousands(c.ready as f64),
                    c.failed,
                    c.disconnected,
                    c.seconds
                ),
                None => "failed".into(),
            },
        );
        row(
            format!("memory per idle connected device at {devices} (RSS growth / N)"),
            "≤ 3 KiB",
            &|t| match &t.memory {
                Some(m) => format!(
                    "{} ({} → {}{})",
                    kib(m.rss_per_device()),
                    mib(m.before.rss as f64),
                    mib(m.after.rss as f64),
                    if m.settled { "" } else { ", not settled" }
                ),
                None => "failed".into(),
            },
        );
        row(
            "RSS growth / N counted from the empty server (device creation included)".into(),
            "",
            &|t| match t
                .memory
                .as_ref()
                .map(|m| (m, m.rss_per_device_from_empty()))
            {
                Some((m, Some(per_device))) => format!(
                    "{} ({} → {})",
                    kib(per_device),
                    mib(m.empty.map(|e| e.rss).unwrap_or(0) as f64),
                    mib(m.after.rss as f64)
                ),
                Some((_, None)) => "n/a (no devices to create)".into(),
                None => "failed".into(),
            },
        );
        row(
            "private memory growth / N (smaps_rollup)".into(),
            "",
            &|t| match &t.memory {
                Some(m) => kib(m.private_per_device()),
                None => "failed".into(),
            },
        );
        let rate = thousands(s.rate);
        row(
            format!("shadow update round trip at {rate}/s: p50 / p99 / p99.9 / max"),
            "p99 ≤ 5 ms",
            &|t| {
                t.rtt_target()
                    .map(latency_cell)
                    .unwrap_or_else(|| "failed".into())
            },
        );
        row(format!("achieved at {rate}/s offered"), "", &|t| {
            t.rtt_target()
                .map(|step| format!("{}/s ({})", thousands(step.achieved), step.verdict))
                .unwrap_or_else(|| "failed".into())
        });
        row(
            format!(
                "highest sustained update rate (p99 ≤ {} ms, ≥ 95 % completed, no errors)",
                s.step_p99_ms
            ),
            "≥ 20,000/s",
            &|t| highest_cell(&t.rtt_steps, "/s"),
        );
        let fanout = thousands(s.fanout_target);
        row(
            format!(
                "notify fan-out to {} consumers: highest deliveries/s with p99 ≤ {} ms",
                s.consumers, s.fanout_p99_ms
            ),
            "≥ 300,000/s",
            &|t| {
                if t.name != "server" {
                    "n/a (no fan-out)".into()
                } else {
                    highest_cell(&t.fanout_steps, " deliveries/s")
                }
            },
        );
        row(
            format!("fan-out latency at {fanout} deliveries/s: p50 / p99 / p99.9 / max"),
            "p99 ≤ 25 ms",
            &|t| {
                if t.name != "server" {
                    "n/a".into()
                } else {
                    t.fanout_target()
                        .map(|step| format!("{} ({})", latency_cell(step), step.verdict))
                        .unwrap_or_else(|| "failed".into())
                }
            },
        );
        for (name, report) in &columns {
            let Some(report) = report else { continue };
            for (title, steps) in [
                ("update round trip", &report.rtt_steps),
                ("fan-out", &report.fanout_steps),
            ] {
                if steps.is_empty() {
                    continue;
                }
                let _ = writeln!(out, "\n{name}, {title} steps:\n");
                let _ = writeln!(
                    out,
                    "| offered/s | seconds | achieved/s | p50 | p90 | p99 | p99.9 | max | peer CPU/op | result |"
                );
                let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
                for step in steps.iter() {
                    let l = &step.latency;
                    let _ = writeln!(
                        out,
                        "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
                        thousands(step.offered),
                        step.seconds,
                        thousands(step.achieved),
                        format_micros(l.p50_us),
                        format_micros(l.p90_us),
                        format_micros(l.p99_us),
                        format_micros(l.p999_us),
                        format_micros(l.max_us),
                        match (step.peer_cpu_us, step.store_cpu_us) {
                            (Some(us), Some(store)) =>
                                format!("{us:.0} µs + {store:.0} µs PostgreSQL"),
                            (Some(us), None) => format!("{us:.0} µs"),
                            _ => "-".into(),
                        },
                        step.verdict
                    );
                }
            }
        }
        let m = &self.machine;
        let _ = writeln!(
            out,
            "\nMachine: {} cores ({}), {}, Linux {}, {}; load average at start {}. Command: `{}`.",
            m.nproc, m.cpu, m.memory, m.kernel, m.rustc, m.load_average, self.command
        );
        let _ = writeln!(
            out,
            "Clients ({} shard processes, notify consumers in the driver) share the machine with the peer under test.",
            s.shards
        );
        if self.mosquitto.as_ref().is_some_and(|m| m.skipped.is_none()) {
            let _ = writeln!(
                out,
                "mosquitto: devices are MQTT 3.1.1 clients; an update is a QoS 1 PUBLISH of the same shadow document and its round trip ends at the PUBACK. \
                 With persistence off the broker keeps nothing on disk, while herd-server commits every update to SQLite before answering."
            );
        }
        for (name, report) in &columns {
            let Some(report) = report else { continue };
            if report.notes.is_empty() {
                continue;
            }
            let _ = writeln!(out, "\nNotes, {name}:\n");
            for note in &report.notes {
                let _ = writeln!(out, "- {note}");
            }
        }
        out
    }
}

fn highest_cell(steps: &[StepReport], unit: &str) -> String {
    if steps.is_empty() {
        return "failed".into();
    }
    let tried_max = steps.iter().map(|s| s.offered).fold(0.0, f64::max);
    match highest_passing(steps) {
        Some(best) => {
            let limit = steps
                .iter()
                .filter(|s| !s.pass && s.offered > best.offered)
                .min_by(|a, b| a.offered.total_cmp(&b.offered))
                .map(|s| format!("; {}{unit} failed: {}", thousands(s.offered), s.verdict))
                .unwrap_or_else(|| format!("; highest rate tried: {}{unit}", thousands(tried_max)));
            format!(
                "{}{unit} (p99 {}{limit})",
                thousands(best.offered),
                format_micros(best.latency.p99_us)
            )
        }
        None => format!(
            "none passed (lowest tried {}{unit})",
            thousands(steps.iter().map(|s| s.offered).fold(f64::MAX, f64::min))
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(offered: f64, pass: bool) -> StepReport {
        StepReport {
            offered,
            seconds: 5.0,
            at_target: offered == 5000.0,
            sent: 0,
            completed: 0,
            errors: 0,
            unanswered: 0,
            lagged_dropped: 0,
            achieved: offered,
            latency: Summary {
                count: 1,
                p50_us: 500,
                p90_us: 900,
                p99_us: 1500,
                p999_us: 3000,
                max_us: 9000,
            },
            peer_cpu_us: Some(12.0),
            store_cpu_us: None,
            window_max_us: Vec::new(),
            pass,
            verdict: if pass {
                "pass".into()
            } else {
                "p99 61 ms > 50 ms".into()
            },
        }
    }

    #[test]
    fn formats_thousands() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(19000.0), "19,000");
        assert_eq!(thousands(1234567.0), "1,234,567");
    }

    #[test]
    fn judges_steps() {
        assert_eq!(
            judge(1000.0, 1000, 0, 0, 0, 4000, 5.0),
            (true, "pass".into())
        );
        let (pass, why) = judge(1000.0, 900, 1, 0, 0, 6000, 5.0);
        assert!(!pass);
        assert!(
            why.contains("p99") && why.contains("90.0 %") && why.contains("1 errors"),
            "{why}"
        );
    }

    #[test]
    fn table_names_highest_passing_rate() {
        let server = TargetReport {
            name: "server".into(),
            rtt_steps: vec![
                step(5000.0, true),
                step(10000.0, true),
                step(20000.0, false),
            ],
            ..TargetReport::default()
        };
        let report = Report {
            command: "herd-bench".into(),
            machine: Machine {
                nproc: 2,
                cpu: "cpu".into(),
                memory: "1 GiB".into(),
                kernel: "6".into(),
                rustc: "rustc".into(),
                load_average: "0.00 0.00 0.00".into(),
            },
            settings: Settings {
                devices: 500,
                shards: 1,
                rate: 5000.0,
                duration_s: 3.0,
                step_duration_s: 3.0,
                step_p99_ms: 50.0,
                consumers: 20,
                fanout_target: 200000.0,
                fanout_p99_ms: 25.0,
                shadow_bytes: 200,
            },
            server: Some(server),
            echo: None,
            mosquitto: None,
        };
        let table = report.markdown();
        assert!(
            table.contains("| 10,000/s (p99 1.50 ms; 20,000/s failed: p99 61 ms > 50 ms) |"),
            "{table}"
        );
        assert!(table.contains("not run"));
    }
}
