//! The driver: starts the peers, creates devices, runs the phases through the client
//! shards and the notify consumers, and assembles the [`Report`].

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::mpsc;

use crate::consumer::Consumers;
use crate::latency::{self, Summary};
use crate::procfs;
use crate::report::{
    judge, ConnectReport, Machine, MemoryReport, Report, Settings, StepReport, TargetReport,
};
use crate::shard::{Command, Event, LoadKind, PeerKind};
use crate::{parse_duration, unix_nanos};

/// Which peers to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Targets {
    /// herd-server and the echo peer.
    Both,
    /// herd-server, the echo peer and mosquitto.
    All,
    Server,
    Echo,
    /// The mosquitto MQTT broker only.
    Mosquitto,
}

impl Targets {
    fn server(self) -> bool {
        matches!(self, Targets::Both | Targets::All | Targets::Server)
    }

    fn echo(self) -> bool {
        matches!(self, Targets::Both | Targets::All | Targets::Echo)
    }

    fn mosquitto(self) -> bool {
        matches!(self, Targets::All | Targets::Mosquitto)
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// herd-server binary [default: herd-server next to this binary, i.e.
    /// target/release/herd-server]
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// echo-peer binary [default: echo-peer next to this binary]
    #[arg(long)]
    pub echo_bin: Option<PathBuf>,
    /// mosquitto binary, a path or a name looked up on PATH and then in /usr/sbin
    /// (where Debian's `apt-get install mosquitto` puts it). When it is not found the
    /// mosquitto column says so and the rest of the run goes on.
    #[arg(long, default_value = "mosquitto")]
    pub mosquitto_bin: String,
    /// Which peers to measure.
    #[arg(long, value_enum, default_value = "both")]
    pub targets: Targets,
    /// Connected devices (sockets) per peer.
    #[arg(long, default_value_t = 19_000)]
    pub devices: usize,
    /// Target shadow update rate, updates/s across all devices.
    #[arg(long, default_value_t = 5_000.0)]
    pub rate: f64,
    /// Length of the phases at the target rates.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Length of each step while searching for the highest passing rate.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub step_duration: Duration,
    /// A rate step passes while its p99 stays at or below this (the device path's
    /// target: 20,000 updates/s with p99 ≤ 25 ms).
    #[arg(long, default_value_t = 25.0)]
    pub step_p99_ms: f64,
    /// Highest update rate tried.
    #[arg(long, default_value_t = 200_000.0)]
    pub max_rate: f64,
    /// Notify-stream consumers for the fan-out phase.
    #[arg(long, default_value_t = 20)]
    pub consumers: usize,
    /// Target fan-out, deliveries/s summed over consumers.
    #[arg(long, default_value_t = 200_000.0)]
    pub fanout_target: f64,
    /// A fan-out step passes while its p99 stays at or below this.
    #[arg(long, default_value_t = 25.0)]
    pub fanout_p99_ms: f64,
    /// Highest fan-out tried, deliveries/s.
    #[arg(long, default_value_t = 2_000_000.0)]
    pub max_deliveries: f64,
    /// Client processes holding the device sockets [default: one per 5,000 devices].
    #[arg(long)]
    pub shards: Option<usize>,
    /// Size of each device's reported shadow, bytes of JSON.
    #[arg(long, default_value_t = 200)]
    pub shadow_bytes: usize,
    /// Extra connect/disconnect cycles of all devices after the load, to tell retained
    /// memory from leaked (herd-server only).
    #[arg(long, default_value_t = 2)]
    pub churn_cycles: usize,
    /// Handshakes in flight per shard while connecting.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// herd-server's store: a `postgres://` URL, or `postgres` for a throwaway PostgreSQL
    /// (herd-testkit's, with PostgreSQL's flushing defaults) started for the run
    /// [default: SQLite in the server's data directory].
    #[arg(long)]
    pub store: Option<String>,
    /// Print the result as a markdown table.
    #[arg(long)]
    pub markdown: bool,
    /// Also write the full result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl RunArgs {
    fn shard_count(&self) -> usize {
        self.shards
            .unwrap_or(self.devices.div_ceil(5_000))
            .clamp(1, 100)
    }

    /// `name` next to the running binary (both are built into target/release).
    pub fn sibling(name: &str) -> PathBuf {
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join(name)))
            .unwrap_or_else(|| PathBuf::from("target/release").join(name))
    }
}

/// Update rates tried after the target, and below it if the target fails.
const RATE_RUNGS: &[f64] = &[
    500.0, 1_000.0, 2_500.0, 5_000.0, 10_000.0, 15_000.0, 20_000.0, 25_000.0, 30_000.0, 40_000.0,
    50_000.0, 60_000.0, 80_000.0, 100_000.0, 120_000.0, 160_000.0, 200_000.0, 300_000.0, 400_000.0,
];

/// Fan-out rates (deliveries/s) tried after the target, and below it if it fails.
const FANOUT_RUNGS: &[f64] = &[
    10_000.0,
    25_000.0,
    50_000.0,
    100_000.0,
    150_000.0,
    200_000.0,
    250_000.0,
    300_000.0,
    400_000.0,
    500_000.0,
    600_000.0,
    800_000.0,
    1_000_000.0,
    1_500_000.0,
    2_000_000.0,
    3_000_000.0,
];

/// Time allowed after a step's last send for replies still on the way.
const DRAIN: Duration = Duration::from_secs(5);

pub async fn run(args: RunArgs, command_line: String) -> Result<Report> {
    if args.devices == 0 {
        bail!("--devices must be at least 1");
    }
    if !(args.rate > 0.0 && args.fanout_target > 0.0) {
        bail!("rates must be positive");
    }
    let shards = args.shard_count();
    let mut report = Report {
        command: command_line,
        machine: Machine::collect(),
        settings: Settings {
            devices: args.devices,
            shards,
            rate: args.rate,
            duration_s: args.duration.as_secs_f64(),
            step_duration_s: args.step_duration.min(args.duration).as_secs_f64(),
            step_p99_ms: args.step_p99_ms,
            consumers: args.consumers,
            fanout_target: args.fanout_target,
            fanout_p99_ms: args.fanout_p99_ms,
            shadow_bytes: args.shadow_bytes,
        },
        server: None,
        echo: None,
        mosquitto: None,
    };
    if args.targets.server() {
        let mut target = TargetReport {
            name: "server".into(),
            ..TargetReport::default()
        };
        if let Err(error) = measure_server(&args, &mut target).await {
            progress(&format!("herd-server run failed: {error:#}"));
            target.notes.push(format!("run aborted: {error:#}"));
        }
        report.server = Some(target);
    }
    if args.targets.echo() {
        let mut target = TargetReport {
            name: "echo".into(),
            ..TargetReport::default()
        };
        if let Err(error) = measure_echo(&args, &mut target).await {
            progress(&format!("echo peer run failed: {error:#}"));
            target.notes.push(format!("run aborted: {error:#}"));
        }
        report.echo = Some(target);
    }
    if args.targets.mosquitto() {
        let mut target = TargetReport {
            name: "mosquitto".into(),
            ..TargetReport::default()
        };
        match find_program(&args.mosquitto_bin) {
            None => {
                let why = format!(
                    "not run: {} not found (Debian: apt-get install mosquitto)",
                    args.mosquitto_bin
                );
                progress(&why);
                target.skipped = Some(why);
            }
            Some(bin) => {
                if let Err(error) = measure_mosquitto(&args, &bin, &mut target).await {
                    progress(&format!("mosquitto run failed: {error:#}"));
                    target.notes.push(format!("run aborted: {error:#}"));
                }
            }
        }
        report.mosquitto = Some(target);
    }
    Ok(report)
}

/// Whether this process runs as root (uid 0), read from `/proc/self/status`.
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().next().map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

/// `name` as given when it is a path, else the first match on PATH, then in /usr/sbin
/// and /usr/local/sbin (not on an unprivileged user's PATH on Debian, but where its
/// mosquitto package installs the broker).
pub fn find_program(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let path = PathBuf::from(name);
        return path.is_file().then_some(path);
    }
    let path_dirs = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn progress(message: &str) {
    eprintln!("[herd-bench] {message}");
}

// ---------------------------------------------------------------------------------
// herd-server

async fn measure_server(args: &RunArgs, report: &mut TargetReport) -> Result<()> {
    let bin = args
        .server_bin
        .clone()
        .unwrap_or_else(|| RunArgs::sibling("herd-server"));
    if !bin.exists() {
        bail!(
            "{} not found; build it with `cargo build --release -p herd-server`",
            bin.display()
        );
    }
    let postgres = match args.store.as_deref() {
        Some("postgres") => Some(
            tokio::task::spawn_blocking(herd_testkit::postgres::PostgresServer::start_durable)
                .await??,
        ),
        _ => None,
    };
    let store = match (&postgres, args.store.as_deref()) {
        (Some(postgres), _) => Some(postgres.create_database()?),
        (None, Some(url)) => Some(url.to_string()),
        (None, None) => None,
    };
    // With a throwaway PostgreSQL its processes' CPU is counted beside the server's.
    let store_pid = postgres.as_ref().and_then(|postgres| postgres.pid());
    let mut server = ServerProcess::start_on(&bin, None, store.as_deref()).await?;
    progress(&format!(
        "herd-server pid {} on {}, store {}",
        server.pid,
        server.base,
        store
            .as_deref()
            .map(herd_config::redact_store_url)
            .unwrap_or_else(|| "SQLite".into())
    ));
    let outcome = server_phases(args, &mut server, store_pid, report).await;
    let log_notes = server.stop().await;
    report.notes.extend(log_notes);
    outcome
}

async fn server_phases(
    args: &RunArgs,
    server: &mut ServerProcess,
    store_pid: Option<u32>,
    report: &mut TargetReport,
) -> Result<()> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(30))
        .build()
        .context("http client")?;
    // Empty server: the baseline for the figure that also counts what creating the
    // devices left in memory (store caches, allocator state).
    let (empty, _) = procfs::settle(server.pid, Duration::from_secs(10)).await?;
    let started = Instant::now();
    let devices = create_devices(&http, &server.base, &server.api_key, args.devices).await?;
    progress(&format!(
        "created {} devices in {:.1} s",
        devices.len(),
        started.elapsed().as_secs_f64()
    ));
    report.notes.push(format!(
        "{} devices created over REST (32 concurrent requests) in {:.1} s",
        devices.len(),
        started.elapsed().as_secs_f64()
    ));

    let (before, settled_before) = procfs::settle(server.pid, Duration::from_secs(20)).await?;
    let tokens: Vec<String> = devices.iter().map(|d| d.token.clone()).collect();
    let mut shards = Shards::spawn(args.shard_count(), 2).await?;
    let rpc_url = format!("ws://{}/api/v2/rpc", server.address);
    let connect = shards
        .connect(&rpc_url, &tokens, PeerKind::Server, args)
        .await?;
    report.connect = Some(connect.clone());
    server.check_alive()?;
    let (after, settled_after) = procfs::settle(server.pid, Duration::from_secs(60)).await?;
    report.memory = Some(MemoryReport {
        devices: connect.ready.max(1),
        empty: Some(empty),
        before,
        after,
        settled: settled_before && settled_after,
    });
    progress(&format!(
        "server RSS {:.1} MiB -> {:.1} MiB with {} devices idle",
        before.rss as f64 / 1048576.0,
        after.rss as f64 / 1048576.0,
        connect.ready
    ));
    if connect.ready != args.devices {
        report.notes.push(format!(
            "only {} of {} devices became idle; memory is divided by that count",
            connect.ready, args.devices
        ));
    }
    if let Some(first) = devices.first() {
        report
            .notes
            .push(check_device(&http, server, &first.id).await);
    }

    let mut ladder = Ladder::new(args.rate, RATE_RUNGS, args.max_rate);
    while let Some((rate, at_target)) = ladder.next_rate() {
        let duration = step_duration(args, at_target);
        let (step, probes) = update_step(
            &mut shards,
            server.pid,
            store_pid,
            rate,
            duration,
            at_target,
            args.step_p99_ms,
        )
        .await?;
        progress(&format!("server update step {rate}/s: {}", step.verdict));
        if at_target {
            report
                .notes
                .push(check_probes(&http, server, &devices, &probes).await);
        }
        ladder.observe(step.pass);
        report.rtt_steps.push(step);
        server.check_alive()?;
        quiesce(server.pid, report).await?;
    }

    if args.consumers > 0 {
        let notify_url = format!(
            "ws://{}/api/v2/notify?access_token={}",
            server.address, server.api_key
        );
        let mut consumers = Consumers::connect(&notify_url, args.consumers).await?;
        wait_until_subscribed(&mut shards, &mut consumers).await?;
        let mut ladder = Ladder::new(args.fanout_target, FANOUT_RUNGS, args.max_deliveries);
        while let Some((deliveries, at_target)) = ladder.next_rate() {
            let duration = step_duration(args, at_target);
            let step = fanout_step(
                &mut shards,
                server.pid,
                &mut consumers,
                args,
                deliveries,
                duration,
                at_target,
            )
            .await?;
            progress(&format!(
                "server fan-out step {deliveries} deliveries/s: {}",
                step.verdict
            ));
            ladder.observe(step.pass);
            report.fanout_steps.push(step);
            server.check_alive()?;
            quiesce(server.pid, report).await?;
        }
    }
    // Memory after the load, with the devices still connected, then after they all
    // left: growth that stays is a leak candidate.
    let (loaded, _) = procfs::settle(server.pid, Duration::from_secs(20)).await?;
    if shards.disconnected > 0 {
        report.notes.push(format!(
            "{} device sockets were closed by the server during the run",
            shards.disconnected
        ));
    }
    shards.close().await;
    let (emptied, _) = procfs::settle(server.pid, Duration::from_secs(20)).await?;
    report.notes.push(format!(
        "server RSS, cycle 1: {:.1} MiB idle with devices connected, {:.1} MiB after the load phases, {:.1} MiB after all devices disconnected; peak {:.1} MiB",
        after.rss as f64 / 1048576.0,
        loaded.rss as f64 / 1048576.0,
        emptied.rss as f64 / 1048576.0,
        emptied.peak_rss as f64 / 1048576.0
    ));

    // The same devices connect and leave again. If memory after each further cycle stays
    // near the first cycle's, growth after disconnecting is retained by the allocator;
    // if it climbs every cycle, connections leak.
    let shard_count = args.shard_count();
    for cycle in 0..args.churn_cycles {
        // Fresh source addresses each cycle, clear of the previous cycle's ports.
        let first_host = (2 + (cycle + 2) * shard_count).min(254 - shard_count);
        let mut again = Shards::spawn(shard_count, first_host).await?;
        let reconnect = again
            .connect(&rpc_url, &tokens, PeerKind::Server, args)
            .await?;
        server.check_alive()?;
        let (idle_again, _) = procfs::settle(server.pid, Duration::from_secs(60)).await?;
        again.close().await;
        let (emptied_again, _) = procfs::settle(server.pid, Duration::from_secs(20)).await?;
        report.notes.push(format!(
            "connect/disconnect cycle {} ({} of {} idle again): {:.1} MiB idle, {:.1} MiB after disconnecting",
            cycle + 2,
            reconnect.ready,
            tokens.len(),
            idle_again.rss as f64 / 1048576.0,
            emptied_again.rss as f64 / 1048576.0
        ));
    }
    // Last, since the listing itself allocates: every device must be offline now.
    report.notes.push(count_online(&http, server).await);
    Ok(())
}

/// Lets the peer finish any backlog before the next step starts.
async fn quiesce(pid: u32, report: &mut TargetReport) -> Result<()> {
    if !procfs::wait_idle(pid, Duration::from_secs(30)).await? {
        report
            .notes
            .push("peer still busy 30 s after a step; the next step started anyway".into());
    }
    Ok(())
}

fn step_duration(args: &RunArgs, at_target: bool) -> Duration {
    if at_target {
        args.duration
    } else {
        args.step_duration.min(args.duration)
    }
}

pub(crate) struct CreatedDevice {
    pub(crate) id: String,
    pub(crate) token: String,
}

/// Creates `count` devices over REST, 32 requests at a time; in index order.
pub(crate) async fn create_devices(
    http: &reqwest::Client,
    base: &str,
    api_key: &str,
    count: usize,
) -> Result<Vec<CreatedDevice>> {
    #[derive(Deserialize)]
    struct Created {
        id: String,
        token: String,
    }
    let url = format!("{base}/api/v2/devices");
    let mut results = futures_util::stream::iter(0..count)
        .map(|index| {
            let request = http
                .post(&url)
                .bearer_auth(api_key)
                .json(&serde_json::json!({"name": format!("bench-{index}")}));
            async move {
                let response = request
                    .send()
                    .await
                    .with_context(|| format!("creating device {index}"))?;
                let status = response.status();
                if !status.is_success() {
                    let body = response.text().await.unwrap_or_default();
                    bail!("creating device {index}: HTTP {status}: {body:.300}");
                }
                let created: Created = response
                    .json()
                    .await
                    .with_context(|| format!("device {index} response"))?;
                Ok((index, created))
            }
        })
        .buffer_unordered(32);
    let mut devices: Vec<Option<CreatedDevice>> = (0..count).map(|_| None).collect();
    while let Some(result) = results.next().await {
        let (index, created) = result?;
        devices[index] = Some(CreatedDevice {
            id: created.id,
            token: created.token,
        });
    }
    devices
        .into_iter()
        .map(|d| d.ok_or_else(|| anyhow!("a device was not created")))
        .collect()
}

/// One REST look at a connected device: online, info stored, shadow reported.
async fn check_device(http: &reqwest::Client, server: &ServerProcess, id: &str) -> String {
    let url = format!("{}/api/v2/devices/{id}", server.base);
    let device: serde_json::Value = match http.get(&url).bearer_auth(&server.api_key).send().await {
        Ok(response) if response.status().is_success() => match response.json().await {
            Ok(value) => value,
            Err(error) => return format!("device check: unreadable response: {error}"),
        },
        Ok(response) => {
            return format!(
                "device check: GET /devices/{id} returned {}",
                response.status()
            )
        }
        Err(error) => return format!("device check: {error}"),
    };
    let online = device["online"] == true;
    let info = device["info"]["app"] == "bench";
    let shadow = device["shadow"]["state"]["reported"]["app"] == "bench";
    format!("device check via REST after connecting: online={online}, info stored={info}, reported shadow stored={shadow}")
}

/// How many devices the REST listing still shows online.
async fn count_online(http: &reqwest::Client, server: &ServerProcess) -> String {
    let url = format!("{}/api/v2/devices", server.base);
    let listing = match http.get(&url).bearer_auth(&server.api_key).send().await {
        Ok(response) if response.status().is_success() => {
            response.json::<serde_json::Value>().await
        }
        Ok(response) => {
            return format!("online check: GET /devices returned {}", response.status())
        }
        Err(error) => return format!("online check: {error}"),
    };
    match listing {
        Ok(serde_json::Value::Array(devices)) => {
            let online = devices.iter().filter(|d| d["online"] == true).count();
            format!(
                "after the last disconnect, {online} of {} devices are listed online over REST",
                devices.len()
            )
        }
        Ok(_) => "online check: GET /devices did not return an array".into(),
        Err(error) => format!("online check: unreadable listing: {error}"),
    }
}

/// Compares the last acknowledged `reported.seq` of each probe device with what the
/// server returns over REST: an acknowledged update must already be persisted.
async fn check_probes(
    http: &reqwest::Client,
    server: &ServerProcess,
    devices: &[CreatedDevice],
    probes: &[(usize, u64)],
) -> String {
    let mut matched = 0;
    let mut problems = Vec::new();
    for &(index, seq) in probes {
        let Some(device) = devices.get(index) else {
            continue;
        };
        let url = format!("{}/api/v2/devices/{}/shadow", server.base, device.id);
        let stored = match http.get(&url).bearer_auth(&server.api_key).send().await {
            Ok(response) => response.json::<serde_json::Value>().await.ok(),
            Err(_) => None,
        };
        match stored
            .as_ref()
            .and_then(|s| s["state"]["reported"]["seq"].as_u64())
        {
            Some(stored) if stored == seq => matched += 1,
            Some(stored) => problems.push(format!(
                "device {index}: acknowledged seq {seq}, stored {stored}"
            )),
            None => problems.push(format!("device {index}: no reported.seq in stored shadow")),
        }
    }
    if problems.is_empty() {
        format!("persistence check: last acknowledged update equals the stored shadow for {matched} of {} probe devices", probes.len())
    } else {
        format!("persistence check FAILED: {}", problems.join("; "))
    }
}

// ---------------------------------------------------------------------------------
// echo peer

async fn measure_echo(args: &RunArgs, report: &mut TargetReport) -> Result<()> {
    let bin = args
        .echo_bin
        .clone()
        .unwrap_or_else(|| RunArgs::sibling("echo-peer"));
    let mut child = tokio::process::Command::new(&bin)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child
        .id()
        .ok_or_else(|| anyhow!("echo peer exited at once"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("echo peer stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .map_err(|_| anyhow!("echo peer did not say where it listens"))??
        .ok_or_else(|| anyhow!("echo peer exited before listening"))?;
    let address = first
        .strip_prefix("listening ")
        .ok_or_else(|| anyhow!("unexpected first line from echo peer: {first:?}"))?
        .trim()
        .to_string();
    progress(&format!("echo peer pid {pid} on {address}"));

    let (before, settled_before) = procfs::settle(pid, Duration::from_secs(10)).await?;
    let shards = args.shard_count();
    // Source addresses after the server's, so no port is still in TIME_WAIT from it.
    let mut shard_set = Shards::spawn(shards, 2 + shards).await?;
    let tokens: Vec<String> = (0..args.devices).map(|i| format!("echo-{i}")).collect();
    let url = format!("ws://{address}/api/v2/rpc");
    let connect = shard_set
        .connect(&url, &tokens, PeerKind::Echo, args)
        .await?;
    report.connect = Some(connect.clone());
    let (after, settled_after) = procfs::settle(pid, Duration::from_secs(30)).await?;
    report.memory = Some(MemoryReport {
        devices: connect.ready.max(1),
        empty: None,
        before,
        after,
        settled: settled_before && settled_after,
    });
    progress(&format!(
        "echo peer RSS {:.1} MiB -> {:.1} MiB with {} sockets idle",
        before.rss as f64 / 1048576.0,
        after.rss as f64 / 1048576.0,
        connect.ready
    ));
    let mut ladder = Ladder::new(args.rate, RATE_RUNGS, args.max_rate);
    while let Some((rate, at_target)) = ladder.next_rate() {
        let duration = step_duration(args, at_target);
        let (step, _) = update_step(
            &mut shard_set,
            pid,
            None,
            rate,
            duration,
            at_target,
            args.step_p99_ms,
        )
        .await?;
        progress(&format!("echo update step {rate}/s: {}", step.verdict));
        ladder.observe(step.pass);
        report.rtt_steps.push(step);
        if let Ok(Some(status)) = child.try_wait() {
            bail!("echo peer exited: {status}");
        }
        quiesce(pid, report).await?;
    }
    shard_set.close().await;
    let _ = child.kill().await;
    Ok(())
}

// ---------------------------------------------------------------------------------
// mosquitto

async fn measure_mosquitto(args: &RunArgs, bin: &Path, report: &mut TargetReport) -> Result<()> {
    let mut broker = MosquittoProcess::start(bin).await?;
    progress(&format!(
        "mosquitto pid {} on {} ({})",
        broker.pid,
        broker.address,
        bin.display()
    ));
    report.notes.push(format!(
        "{}: {}; config: {}",
        bin.display(),
        broker.version,
        MosquittoProcess::CONFIG_SUMMARY
    ));
    report.notes.push(
        "each device is an MQTT 3.1.1 client (clean session, keepalive 60 s) subscribed at QoS 1 to herd/<id>/shadow/delta; \
         idle means its initial ~200-byte reported shadow, published at QoS 1 to herd/<id>/shadow/update, was PUBACKed; \
         an update is a QoS 1 PUBLISH of {\"state\":{\"reported\":{\"seq\":N}}} to that topic and its round trip ends at the PUBACK"
            .into(),
    );
    report.notes.push(
        "not like for like: with persistence off mosquitto keeps nothing on disk and, with no subscriber on the update topic and no retained message, \
         nothing of the shadow in memory either; its PUBACK says only that the broker took the message. \
         herd-server answers an update after committing the shadow to SQLite."
            .into(),
    );
    let outcome = mosquitto_phases(args, &mut broker, report).await;
    report.notes.extend(broker.stop().await);
    outcome
}

async fn mosquitto_phases(
    args: &RunArgs,
    broker: &mut MosquittoProcess,
    report: &mut TargetReport,
) -> Result<()> {
    let (before, settled_before) = procfs::settle(broker.pid, Duration::from_secs(10)).await?;
    let shards = args.shard_count();
    // Source addresses on 127.0.2.x, clear of the ports the other peers' runs left in
    // TIME_WAIT on 127.0.0.x.
    let mut shard_set = Shards::spawn_in(2, shards, 2).await?;
    let client_ids: Vec<String> = (0..args.devices)
        .map(|i| format!("herd-bench-{i}"))
        .collect();
    let url = format!("mqtt://{}", broker.address);
    let connect = shard_set
        .connect(&url, &client_ids, PeerKind::Mqtt, args)
        .await?;
    report.connect = Some(connect.clone());
    broker.check_alive()?;
    let (after, settled_after) = procfs::settle(broker.pid, Duration::from_secs(30)).await?;
    report.memory = Some(MemoryReport {
        devices: connect.ready.max(1),
        empty: None,
        before,
        after,
        settled: settled_before && settled_after,
    });
    progress(&format!(
        "mosquitto RSS {:.1} MiB -> {:.1} MiB with {} clients idle",
        before.rss as f64 / 1048576.0,
        after.rss as f64 / 1048576.0,
        connect.ready
    ));
    if connect.ready != args.devices {
        report.notes.push(format!(
            "only {} of {} clients became idle; memory is divided by that count",
            connect.ready, args.devices
        ));
    }
    let mut ladder = Ladder::new(args.rate, RATE_RUNGS, args.max_rate);
    while let Some((rate, at_target)) = ladder.next_rate() {
        let duration = step_duration(args, at_target);
        let (step, _) = update_step(
            &mut shard_set,
            broker.pid,
            None,
            rate,
            duration,
            at_target,
            args.step_p99_ms,
        )
        .await?;
        progress(&format!("mosquitto update step {rate}/s: {}", step.verdict));
        ladder.observe(step.pass);
        report.rtt_steps.push(step);
        broker.check_alive()?;
        quiesce(broker.pid, report).await?;
    }
    if shard_set.disconnected > 0 {
        report.notes.push(format!(
            "{} MQTT connections were closed by the broker during the run",
            shard_set.disconnected
        ));
    }
    shard_set.close().await;
    Ok(())
}

/// A mosquitto broker on a free loopback port, configured from a temporary directory.
pub struct MosquittoProcess {
    child: Child,
    pub pid: u32,
    pub address: String,
    /// First line of `mosquitto -h`, e.g. `mosquitto version 2.0.11`.
    pub version: String,
    log_path: PathBuf,
    /// Dropped last: removes the configuration and the log.
    _dir: tempfile::TempDir,
}

impl MosquittoProcess {
    /// What [`MosquittoProcess::config`] sets, for the report.
    pub const CONFIG_SUMMARY: &'static str = "listener on 127.0.0.1, allow_anonymous true, persistence false, \
         max_connections -1, set_tcp_nodelay true (as herd-server and the clients do), log_type error and warning to stderr";

    /// The configuration file: the broker as a user would run it, minus everything that
    /// would touch the disk while it is measured.
    pub fn config(port: u16) -> String {
        format!(
            "# written by herd-bench\n\
             listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             persistence false\n\
             max_connections -1\n\
             set_tcp_nodelay true\n\
             log_dest stderr\n\
             log_type error\n\
             log_type warning\n"
        )
    }

    pub async fn start(bin: &Path) -> Result<Self> {
        Self::start_with(bin, |_| Ok(String::new())).await
    }

    /// Starts the broker with more configuration: `extra` gets the broker's own temporary
    /// directory (to put certificates in) and returns lines appended to [`Self::config`],
    /// e.g. a second, TLS, listener. The first listener stays the one [`Self::address`]
    /// names and readiness is checked on.
    pub async fn start_with(
        bin: &Path,
        extra: impl FnOnce(&Path) -> Result<String>,
    ) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("herd-bench-mosquitto-")
            .tempdir()
            .context("temp dir")?;
        let version = tokio::process::Command::new(bin)
            .arg("-h")
            .output()
            .await
            .ok()
            .and_then(|output| {
                String::from_utf8_lossy(&output.stdout)
                    .lines()
                    .next()
                    .map(|line| line.trim().to_string())
            })
            .unwrap_or_else(|| "version unknown".into());
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let address = format!("127.0.0.1:{port}");
        let config_path = dir.path().join("mosquitto.conf");
        let mut config = Self::config(port);
        config.push_str(&extra(dir.path())?);
        if cfg!(unix) && running_as_root() {
            // Started as root, mosquitto switches to the `mosquitto` user, which cannot
            // read files in this private directory; it has nothing to protect here.
            config.push_str("user root\n");
        }
        std::fs::write(&config_path, config).context("writing mosquitto.conf")?;
        let log_path = dir.path().join("mosquitto.log");
        let log = std::fs::File::create(&log_path).context("mosquitto log file")?;
        let mut child = tokio::process::Command::new(bin)
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("mosquitto exited at once"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "mosquitto exited during startup ({status}): {}",
                    log_tail(&log_path)
                );
            }
            if tokio::net::TcpStream::connect(&address).await.is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "mosquitto not listening on {address} within 10 s: {}",
                    log_tail(&log_path)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self {
            child,
            pid,
            address,
            version,
            log_path,
            _dir: dir,
        })
    }

    pub fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(Some(status)) => bail!("mosquitto exited ({status}): {}", log_tail(&self.log_path)),
            _ => Ok(()),
        }
    }

    /// SIGTERM, wait for the exit, then quote what the broker logged.
    pub async fn stop(mut self) -> Vec<String> {
        let mut notes: Vec<String> = terminate(&mut self.child, self.pid, "mosquitto")
            .await
            .into_iter()
            .collect();
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        notes.push(format!(
            "mosquitto log (errors and warnings): {} lines",
            lines.len()
        ));
        notes.extend(
            lines
                .iter()
                .take(4)
                .map(|line| format!("mosquitto log: `{}`", line.replace('`', "'"))),
        );
        notes
    }
}

/// Stops a peer process the bench started: SIGTERM, up to 10 s for it to exit, then
/// SIGKILL. Returns a note when it had to be killed.
pub async fn terminate(child: &mut tokio::process::Child, pid: u32, name: &str) -> Option<String> {
    // `kill` avoids unsafe libc calls for one signal.
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_ok()
    {
        return None;
    }
    let _ = child.kill().await;
    Some(format!(
        "{name} did not exit within 10 s of SIGTERM; killed"
    ))
}

// ---------------------------------------------------------------------------------
// steps

async fn update_step(
    shards: &mut Shards,
    peer_pid: u32,
    store_pid: Option<u32>,
    rate: f64,
    duration: Duration,
    at_target: bool,
    p99_limit_ms: f64,
) -> Result<(StepReport, Vec<(usize, u64)>)> {
    let cpu_before = procfs::cpu_ticks(peer_pid)?;
    let store_before = store_pid.map(procfs::tree_cpu_ticks).transpose()?;
    let totals = shards.load(LoadKind::Update, rate, duration).await?;
    let peer_cpu_us = cpu_micros_per(peer_pid, cpu_before, totals.replied)?;
    let store_cpu_us = match (store_pid, store_before) {
        (Some(pid), Some(before)) => {
            let used = procfs::tree_cpu_ticks(pid)?.saturating_sub(before);
            (totals.replied > 0).then(|| used as f64 * 10_000.0 / totals.replied as f64)
        }
        _ => None,
    };
    let seconds = duration.as_secs_f64();
    let latency = Summary::of(&totals.histogram);
    let (pass, mut verdict) = judge(
        rate * seconds,
        totals.replied,
        totals.errors,
        totals.unanswered,
        0,
        latency.p99_us,
        p99_limit_ms,
    );
    if let Some(error) = &totals.first_error {
        verdict.push_str(&format!(" (first error: {error:.200})"));
    }
    if !pass {
        verdict.push_str(&timeline_summary(&totals.window_max_us, p99_limit_ms));
    }
    let step = StepReport {
        offered: rate,
        seconds,
        at_target,
        sent: totals.sent,
        completed: totals.replied,
        errors: totals.errors,
        unanswered: totals.unanswered,
        lagged_dropped: 0,
        achieved: totals.replied as f64 / seconds,
        latency,
        peer_cpu_us,
        store_cpu_us,
        window_max_us: totals.window_max_us,
        pass,
        verdict,
    };
    Ok((step, totals.probes))
}

async fn fanout_step(
    shards: &mut Shards,
    peer_pid: u32,
    consumers: &mut Consumers,
    args: &RunArgs,
    deliveries: f64,
    duration: Duration,
    at_target: bool,
) -> Result<StepReport> {
    let consumer_count = args.consumers as u64;
    // Close whatever the consumers saw between steps.
    consumers.collect().await?;
    let before = consumers.deliveries.load(Ordering::Relaxed);
    let pings = deliveries / args.consumers as f64;
    let cpu_before = procfs::cpu_ticks(peer_pid)?;
    let totals = shards.load(LoadKind::Ping, pings, duration).await?;
    // Notifications are still in flight when the last ping is written; wait until all
    // arrived or none arrived for a second.
    let expected = totals.sent * consumer_count;
    let deadline = Instant::now() + DRAIN;
    let mut last = (
        consumers.deliveries.load(Ordering::Relaxed) - before,
        Instant::now(),
    );
    loop {
        let now = consumers.deliveries.load(Ordering::Relaxed) - before;
        if now >= expected || Instant::now() >= deadline {
            break;
        }
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let collected = consumers.collect().await?;
    let peer_cpu_us = cpu_micros_per(peer_pid, cpu_before, collected.deliveries)?;
    let seconds = duration.as_secs_f64();
    let latency = Summary::of(&collected.histogram);
    let missing = expected.saturating_sub(collected.deliveries);
    let (pass, mut verdict) = judge(
        deliveries * seconds,
        collected.deliveries,
        totals.errors + collected.errors.len() as u64,
        totals.unanswered,
        collected.lagged_dropped,
        latency.p99_us,
        args.fanout_p99_ms,
    );
    if missing > 0 {
        verdict.push_str(&format!("; {missing} of {expected} deliveries missing"));
    }
    if let Some(error) = collected.errors.first().or(totals.first_error.as_ref()) {
        verdict.push_str(&format!(" (first error: {error:.200})"));
    }
    Ok(StepReport {
        offered: deliveries,
        seconds,
        at_target,
        sent: totals.sent,
        completed: collected.deliveries,
        errors: totals.errors,
        unanswered: totals.unanswered,
        lagged_dropped: collected.lagged_dropped,
        achieved: collected.deliveries as f64 / seconds,
        latency,
        peer_cpu_us,
        store_cpu_us: None,
        window_max_us: Vec::new(),
        pass,
        verdict,
    })
}

/// Where in time the slow requests were: the slowest 100-ms windows of scheduled send
/// time and how many windows had a request over the limit.
fn timeline_summary(window_max_us: &[u64], limit_ms: f64) -> String {
    let limit_us = (limit_ms * 1000.0) as u64;
    let over = window_max_us.iter().filter(|&&us| us > limit_us).count();
    let mut slowest: Vec<(usize, u64)> = window_max_us.iter().copied().enumerate().collect();
    slowest.sort_by_key(|window| std::cmp::Reverse(window.1));
    let window_s = crate::client::TIMELINE_WINDOW.as_secs_f64();
    let listed: Vec<String> = slowest
        .iter()
        .take(3)
        .filter(|(_, us)| *us > limit_us)
        .map(|(i, us)| {
            format!(
                "t={:.1} s: {}",
                *i as f64 * window_s,
                crate::latency::format_micros(*us)
            )
        })
        .collect();
    if listed.is_empty() {
        return String::new();
    }
    format!(
        "; {over} of {} 100-ms windows over the limit, slowest {}",
        window_max_us.len(),
        listed.join(", ")
    )
}

/// CPU time the peer spent since `before` (clock ticks), per completed operation, in
/// microseconds: a cost figure that other load on the machine does not inflate as much
/// as latency.
fn cpu_micros_per(pid: u32, before: u64, operations: u64) -> Result<Option<f64>> {
    let used = procfs::cpu_ticks(pid)?.saturating_sub(before);
    // Linux reports these in USER_HZ, 100 per second.
    Ok((operations > 0).then(|| used as f64 * 10_000.0 / operations as f64))
}

/// Sends a few pings until every consumer has received one: the notify stream is
/// subscribed some time after its handshake, and pings sent before would be missed.
async fn wait_until_subscribed(shards: &mut Shards, consumers: &mut Consumers) -> Result<()> {
    consumers.collect().await?;
    for _ in 0..20 {
        shards
            .load(LoadKind::Ping, 100.0, Duration::from_millis(100))
            .await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if consumers.collect().await?.min_deliveries > 0 {
            return Ok(());
        }
    }
    bail!("some notify consumers received nothing within 20 warm-up rounds")
}

/// The order of rates to try: the target first; then upwards while steps pass, or, if
/// the target failed, downwards until one passes.
pub struct Ladder {
    target: f64,
    rungs: Vec<f64>,
    max: f64,
    state: LadderState,
}

enum LadderState {
    Start,
    AtTarget,
    Up(usize),
    Down(usize),
    Done,
}

impl Ladder {
    pub fn new(target: f64, rungs: &[f64], max: f64) -> Self {
        Self {
            target,
            rungs: rungs.to_vec(),
            max,
            state: LadderState::Start,
        }
    }

    /// The next rate to run, and whether it is the target.
    pub fn next_rate(&mut self) -> Option<(f64, bool)> {
        match self.state {
            LadderState::Start => {
                self.state = LadderState::AtTarget;
                Some((self.target, true))
            }
            LadderState::Up(i) => self
                .rungs
                .get(i)
                .filter(|&&r| r <= self.max)
                .map(|&r| (r, false)),
            LadderState::Down(i) => i
                .checked_sub(1)
                .and_then(|j| self.rungs.get(j))
                .map(|&r| (r, false)),
            LadderState::AtTarget | LadderState::Done => None,
        }
    }

    /// Tells the outcome of the rate [`Self::next_rate`] returned last.
    pub fn observe(&mut self, pass: bool) {
        self.state = match self.state {
            LadderState::AtTarget if pass => {
                LadderState::Up(self.rungs.partition_point(|&r| r <= self.target))
            }
            LadderState::AtTarget => {
                LadderState::Down(self.rungs.partition_point(|&r| r < self.target))
            }
            LadderState::Up(i) if pass => LadderState::Up(i + 1),
            LadderState::Down(i) if !pass => LadderState::Down(i.saturating_sub(1)),
            _ => LadderState::Done,
        };
    }
}

// ---------------------------------------------------------------------------------
// processes

/// A herd-server process on a fresh data directory, with an administrator's API key.
pub struct ServerProcess {
    child: Child,
    pub pid: u32,
    pub address: String,
    /// `http://ADDRESS`.
    pub base: String,
    pub api_key: String,
    log_path: PathBuf,
    /// Dropped last: removes the data directory once the server is gone.
    _data_dir: tempfile::TempDir,
}

impl ServerProcess {
    /// Registers an administrator and starts `bin` on a free loopback port.
    pub async fn start(bin: &Path) -> Result<Self> {
        Self::start_with(bin, None).await
    }

    /// [`ServerProcess::start`] with a settings file (`herd-server --config`).
    pub async fn start_with(bin: &Path, config: Option<&Path>) -> Result<Self> {
        Self::start_on(bin, config, None).await
    }

    /// [`ServerProcess::start_with`] keeping its data in the store `store` names
    /// (`herd-server --store`), SQLite in the data directory when `None`.
    pub async fn start_on(bin: &Path, config: Option<&Path>, store: Option<&str>) -> Result<Self> {
        Self::start_node(bin, config, store, &[], None).await
    }

    /// [`ServerProcess::start_on`] with `extra` arguments for the server (a cluster node's
    /// `--nats` and `--node-id`). With `api_key` the administrator already exists in the
    /// shared store (another node registered it) and that key is used; without, one is
    /// registered.
    pub async fn start_node(
        bin: &Path,
        config: Option<&Path>,
        store: Option<&str>,
        extra: &[String],
        api_key: Option<&str>,
    ) -> Result<Self> {
        let store_args: Vec<&str> = match store {
            Some(url) => vec!["--store", url],
            None => Vec::new(),
        };
        let data_dir = tempfile::Builder::new()
            .prefix("herd-bench-")
            .tempdir()
            .context("temp data dir")?;
        let data = data_dir.path().join("data");
        let api_key = match api_key {
            Some(key) => key.to_string(),
            None => register_admin(bin, &data, &store_args).await?,
        };
        Self::spawn(bin, config, &store_args, extra, data_dir, data, api_key).await
    }

    async fn spawn(
        bin: &Path,
        config: Option<&Path>,
        store_args: &[&str],
        extra: &[String],
        data_dir: tempfile::TempDir,
        data: PathBuf,
        api_key: String,
    ) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let address = format!("127.0.0.1:{port}");
        let log_path = data_dir.path().join("server.log");
        let log = std::fs::File::create(&log_path).context("server log file")?;
        let mut command = tokio::process::Command::new(bin);
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let mut child = command
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", &address])
            .args(store_args)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().ok_or_else(|| anyhow!("server exited at once"))?;
        let base = format!("http://{address}");
        let health = format!("{base}/healthz");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "server exited during startup ({status}): {}",
                    log_tail(&log_path)
                );
            }
            if let Ok(response) = http.get(&health).send().await {
                if response.status().is_success() {
                    break;
                }
            }
            if Instant::now() >= deadline {
                bail!("server not healthy within 30 s: {}", log_tail(&log_path));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self {
            child,
            pid,
            address,
            base,
            api_key,
            log_path,
            _data_dir: data_dir,
        })
    }

    /// Fails when the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(Some(status)) => bail!("server exited ({status}): {}", log_tail(&self.log_path)),
            _ => Ok(()),
        }
    }

    /// SIGTERM, wait for a graceful exit, then report what the log says.
    pub async fn stop(mut self) -> Vec<String> {
        let mut notes = Vec::new();
        let started = Instant::now();
        // `kill` avoids unsafe libc calls for one signal.
        let signalled = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .map(|status| status.success())
            .unwrap_or(false);
        match tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await {
            Ok(Ok(status)) if signalled => notes.push(format!(
                "SIGTERM: server exited in {:.1} s with {status}",
                started.elapsed().as_secs_f64()
            )),
            Ok(Ok(status)) => notes.push(format!("server had already exited: {status}")),
            Ok(Err(error)) => notes.push(format!("waiting for the server: {error}")),
            Err(_) => {
                notes.push("server did not exit within 15 s of SIGTERM; killed".into());
                let _ = self.child.kill().await;
            }
        }
        notes.extend(scan_log(&self.log_path));
        notes
    }
}

/// Registers the administrator (`herd-server --register-user`) and returns its API key.
async fn register_admin(bin: &Path, data: &Path, store_args: &[&str]) -> Result<String> {
    let registered = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(bin)
            .arg("--data-dir")
            .arg(data)
            .args(["--register-user", "bench", "bench-password"])
            .args(store_args)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| anyhow!("--register-user did not finish within 60 s"))?
    .context("running --register-user")?;
    if !registered.status.success() {
        bail!(
            "--register-user failed ({}): {}",
            registered.status,
            String::from_utf8_lossy(&registered.stderr)
                .chars()
                .take(500)
                .collect::<String>()
        );
    }
    let stdout = String::from_utf8_lossy(&registered.stdout);
    let api_key = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line.trim()).ok())
        .find_map(|value| value["api_key"].as_str().map(str::to_string))
        .ok_or_else(|| anyhow!("no api_key in --register-user output: {stdout:.300}"))?;

    Ok(api_key)
}

/// Counts warnings and errors in the server log and quotes a few.
fn scan_log(path: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return vec![format!("server log {} unreadable", path.display())];
    };
    let mut warnings = 0;
    let mut errors = 0;
    let mut examples: Vec<String> = Vec::new();
    for line in text.lines() {
        let is_error = line.contains(" ERROR ") || line.contains("panicked");
        let is_warning = line.contains(" WARN ");
        if is_error {
            errors += 1;
        } else if is_warning {
            warnings += 1;
        } else {
            continue;
        }
        // Quote distinct messages, ignoring the timestamp at the front.
        let message: String = line
            .split_once(' ')
            .map(|(_, rest)| rest)
            .unwrap_or(line)
            .chars()
            .take(240)
            .collect();
        if examples.len() < 6 && !examples.contains(&message) {
            examples.push(message);
        }
    }
    let mut notes = vec![format!(
        "server log (RUST_LOG=warn): {errors} error lines, {warnings} warning lines"
    )];
    notes.extend(
        examples
            .into_iter()
            .map(|m| format!("server log: `{}`", m.replace('`', "'"))),
    );
    notes
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join(" | ")
}

/// The client shard processes.
struct Shards {
    shards: Vec<ShardProcess>,
    /// Source address of shard `i` is 127.0.subnet.(first_host + i).
    subnet: u8,
    first_host: usize,
    /// Connected devices per shard, which decides each shard's share of a rate.
    connected: Vec<usize>,
    /// Global token index of each shard's first token.
    offsets: Vec<usize>,
    /// Sockets the peer closed, as of the last report of every shard.
    disconnected: usize,
}

struct ShardProcess {
    child: Child,
    stdin: ChildStdin,
    events: mpsc::UnboundedReceiver<Event>,
}

struct LoadTotals {
    sent: u64,
    replied: u64,
    errors: u64,
    unanswered: u64,
    histogram: Histogram<u64>,
    probes: Vec<(usize, u64)>,
    first_error: Option<String>,
    window_max_us: Vec<u64>,
}

impl Shards {
    async fn spawn(count: usize, first_host: usize) -> Result<Self> {
        Self::spawn_in(0, count, first_host).await
    }

    /// Shard `i` binds 127.0.`subnet`.(`first_host` + i).
    async fn spawn_in(subnet: u8, count: usize, first_host: usize) -> Result<Self> {
        if first_host + count > 254 {
            bail!("too many shards for distinct 127.0.0.x source addresses");
        }
        let exe = std::env::current_exe().context("locating own binary")?;
        let mut shards = Vec::with_capacity(count);
        for index in 0..count {
            let mut child = tokio::process::Command::new(&exe)
                .arg("client")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("starting client shard")?;
            let stdin = child.stdin.take().ok_or_else(|| anyhow!("shard stdin"))?;
            let stdout = child.stdout.take().ok_or_else(|| anyhow!("shard stdout"))?;
            let (sender, events) = mpsc::unbounded_channel();
            tokio::spawn(forward_events(index, stdout, sender));
            shards.push(ShardProcess {
                child,
                stdin,
                events,
            });
        }
        Ok(Self {
            shards,
            subnet,
            first_host,
            connected: vec![0; count],
            offsets: vec![0; count],
            disconnected: 0,
        })
    }

    /// Splits the tokens into contiguous shares and connects them all at once.
    async fn connect(
        &mut self,
        url: &str,
        tokens: &[String],
        peer: PeerKind,
        args: &RunArgs,
    ) -> Result<ConnectReport> {
        let count = self.shards.len();
        let share = tokens.len().div_ceil(count);
        // Bounded however the peer behaves; generous because the listen backlog and
        // the peer's per-connection work set the pace, not the client.
        let timeout = Duration::from_secs(60) + Duration::from_millis(10 * share as u64);
        let started = Instant::now();
        for (index, shard) in self.shards.iter_mut().enumerate() {
            let start = (index * share).min(tokens.len());
            let end = ((index + 1) * share).min(tokens.len());
            self.offsets[index] = start;
            shard
                .send(&Command::Connect {
                    url: url.to_string(),
                    tokens: tokens[start..end].to_vec(),
                    source_ip: format!("127.0.{}.{}", self.subnet, self.first_host + index),
                    peer,
                    shadow_bytes: args.shadow_bytes,
                    concurrency: args.connect_concurrency,
                    timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                })
                .await?;
        }
        let mut total = ConnectReport {
            requested: tokens.len(),
            connected: 0,
            failed: 0,
            ready: 0,
            disconnected: 0,
            seconds: 0.0,
        };
        let mut first_error = None;
        for (index, shard) in self.shards.iter_mut().enumerate() {
            match shard.next(timeout + Duration::from_secs(30)).await? {
                Event::Connected {
                    connected,
                    failed,
                    ready,
                    disconnected,
                    first_error: error,
                    ..
                } => {
                    self.connected[index] = connected;
                    total.connected += connected;
                    total.failed += failed;
                    total.ready += ready;
                    total.disconnected += disconnected;
                    if first_error.is_none() {
                        first_error = error;
                    }
                }
                other => bail!("shard {index}: expected connected, got {other:?}"),
            }
        }
        total.seconds = started.elapsed().as_secs_f64();
        progress(&format!(
            "{} of {} sockets connected, {} idle, {} failed, {} dropped in {:.1} s{}",
            total.connected,
            total.requested,
            total.ready,
            total.failed,
            total.disconnected,
            total.seconds,
            first_error
                .as_ref()
                .map(|e| format!(" (first error: {e})"))
                .unwrap_or_default()
        ));
        if total.connected == 0 {
            bail!("no socket connected: {}", first_error.unwrap_or_default());
        }
        Ok(total)
    }

    /// Runs one load phase on all shards, each taking the share of `rate` that its
    /// connected devices are of the total, all starting at the same wall-clock time.
    async fn load(&mut self, kind: LoadKind, rate: f64, duration: Duration) -> Result<LoadTotals> {
        let connected: usize = self.connected.iter().sum();
        let start_unix_ns = unix_nanos() + 300_000_000;
        for (index, shard) in self.shards.iter_mut().enumerate() {
            if self.connected[index] == 0 {
                continue;
            }
            shard
                .send(&Command::Load {
                    kind,
                    rate: rate * self.connected[index] as f64 / connected.max(1) as f64,
                    duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
                    start_unix_ns,
                    drain_ms: u64::try_from(DRAIN.as_millis()).unwrap_or(u64::MAX),
                })
                .await?;
        }
        let mut totals = LoadTotals {
            sent: 0,
            replied: 0,
            errors: 0,
            unanswered: 0,
            histogram: latency::new_histogram(),
            probes: Vec::new(),
            first_error: None,
            window_max_us: Vec::new(),
        };
        let wait = duration + DRAIN + Duration::from_secs(30);
        let mut dropped = 0;
        for (index, shard) in self.shards.iter_mut().enumerate() {
            if self.connected[index] == 0 {
                continue;
            }
            match shard.next(wait).await? {
                Event::LoadDone {
                    sent,
                    replied,
                    errors,
                    unanswered,
                    disconnected,
                    buckets,
                    probe,
                    first_error,
                    window_max_us,
                } => {
                    dropped += disconnected;
                    if totals.window_max_us.len() < window_max_us.len() {
                        totals.window_max_us.resize(window_max_us.len(), 0);
                    }
                    for (merged, shard_max) in totals.window_max_us.iter_mut().zip(&window_max_us) {
                        *merged = (*merged).max(*shard_max);
                    }
                    totals.sent += sent;
                    totals.replied += replied;
                    totals.errors += errors;
                    totals.unanswered += unanswered;
                    latency::add_buckets(&mut totals.histogram, &buckets);
                    totals
                        .probes
                        .extend(probe.map(|(local, seq)| (self.offsets[index] + local, seq)));
                    if totals.first_error.is_none() {
                        totals.first_error = first_error;
                    }
                }
                other => bail!("shard {index}: expected load_done, got {other:?}"),
            }
        }
        self.disconnected = dropped;
        Ok(totals)
    }

    /// Asks every shard to close its sockets and exit; kills the ones that do not.
    async fn close(mut self) {
        for shard in &mut self.shards {
            let _ = shard.send(&Command::Close).await;
        }
        for shard in &mut self.shards {
            let _ = shard.next(Duration::from_secs(20)).await;
            if tokio::time::timeout(Duration::from_secs(5), shard.child.wait())
                .await
                .is_err()
            {
                let _ = shard.child.kill().await;
            }
        }
    }
}

impl ShardProcess {
    async fn send(&mut self, command: &Command) -> Result<()> {
        let mut line = serde_json::to_string(command)?;
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .context("writing to shard")?;
        self.stdin.flush().await.context("writing to shard")?;
        Ok(())
    }

    async fn next(&mut self, timeout: Duration) -> Result<Event> {
        match tokio::time::timeout(timeout, self.events.recv()).await {
            Err(_) => bail!("shard did not answer within {:.0} s", timeout.as_secs_f64()),
            Ok(None) => bail!("shard exited"),
            Ok(Some(Event::Failed { message })) => bail!("shard failed: {message}"),
            Ok(Some(event)) => Ok(event),
        }
    }
}

async fn forward_events(index: usize, stdout: ChildStdout, events: mpsc::UnboundedSender<Event>) {
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let event = serde_json::from_str(&line).unwrap_or_else(|error| Event::Failed {
            message: format!("shard {index} sent {line:.200}: {error}"),
        });
        if events.send(event).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(target: f64, max: f64, outcome: impl Fn(f64) -> bool) -> Vec<f64> {
        let mut ladder = Ladder::new(target, RATE_RUNGS, max);
        let mut tried = Vec::new();
        while let Some((rate, at_target)) = ladder.next_rate() {
            assert_eq!(at_target, tried.is_empty());
            tried.push(rate);
            ladder.observe(outcome(rate));
            assert!(tried.len() < 100);
        }
        tried
    }

    #[test]
    fn timeline_names_the_slowest_windows() {
        let mut windows = vec![1_000; 50];
        windows[12] = 660_000;
        windows[13] = 90_000;
        let summary = timeline_summary(&windows, 50.0);
        assert_eq!(
            summary,
            "; 2 of 50 100-ms windows over the limit, slowest t=1.2 s: 660 ms, t=1.3 s: 90 ms"
        );
        assert_eq!(timeline_summary(&[1_000; 5], 50.0), "");
    }

    #[test]
    fn ladder_climbs_until_a_step_fails() {
        assert_eq!(
            walk(5_000.0, 1e9, |r| r <= 20_000.0),
            vec![5_000.0, 10_000.0, 15_000.0, 20_000.0, 25_000.0]
        );
    }

    #[test]
    fn ladder_stops_at_the_cap() {
        assert_eq!(
            walk(5_000.0, 15_000.0, |_| true),
            vec![5_000.0, 10_000.0, 15_000.0]
        );
    }

    #[test]
    fn ladder_descends_when_the_target_fails() {
        assert_eq!(
            walk(5_000.0, 1e9, |r| r <= 1_000.0),
            vec![5_000.0, 2_500.0, 1_000.0]
        );
        assert_eq!(
            walk(5_000.0, 1e9, |_| false),
            vec![5_000.0, 2_500.0, 1_000.0, 500.0]
        );
    }

    #[test]
    fn ladder_handles_targets_between_rungs() {
        assert_eq!(
            walk(7_000.0, 1e9, |r| r < 12_000.0),
            vec![7_000.0, 10_000.0, 15_000.0]
        );
        assert_eq!(walk(7_000.0, 1e9, |r| r < 6_000.0), vec![7_000.0, 5_000.0]);
    }
}
