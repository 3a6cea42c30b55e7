//! The firmware rollout benchmark (PROTOCOL §10.5): one image to a whole simulated fleet,
//! pushed by the server (`OTA.Begin/Write/End`, §10.2) and pulled by the devices from the
//! image endpoint (§10.3), each as one rollout with `max_parallel` devices at once.
//!
//! The driver starts `herd-server` on a fresh data directory and `herd-agent fleet` (the
//! real device engine for every device, in its own process), uploads the image, runs the
//! rollout and measures, for each delivery: wall time from start to `completed`, the
//! server's CPU seconds, its RSS at rest before and its highest RSS during the rollout,
//! and the aggregate payload rate (devices × image size / wall time).
//!
//! ```text
//! cargo build --release -p herd-server -p herd-agent -p herd-bench
//! target/release/herd-ota-bench --devices 2000 --image-kib 1024 --max-parallel 200
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::driver::{RunArgs, ServerProcess};
use crate::procfs;

/// What to run.
#[derive(Debug, Clone, clap::Args)]
pub struct OtaArgs {
    /// Simulated devices.
    #[arg(long, default_value_t = 2000)]
    pub devices: usize,
    /// Image size in KiB.
    #[arg(long, default_value_t = 1024)]
    pub image_kib: usize,
    /// Devices updating at once.
    #[arg(long, default_value_t = 200)]
    pub max_parallel: u32,
    /// Deliveries to measure, in order.
    #[arg(long, value_delimiter = ',', default_value = "push,pull")]
    pub delivery: Vec<String>,
    /// herd-server binary [default: next to this binary].
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// herd-agent binary [default: next to this binary].
    #[arg(long)]
    pub agent_bin: Option<PathBuf>,
    /// `OTA.Write` requests a device may have unanswered at once (the server's
    /// `ota_window`); several values run the push once each.
    #[arg(long, value_delimiter = ',', default_value = "4")]
    pub window: Vec<usize>,
    /// Raw bytes per `OTA.Write`, in KiB (the server's `ota_chunk_bytes`; PROTOCOL §8's
    /// default is 1).
    #[arg(long, default_value_t = 1)]
    pub chunk_kib: usize,
    /// Longest a rollout may take.
    #[arg(long, default_value = "600s", value_parser = crate::parse_duration)]
    pub limit: Duration,
}

/// One delivery's figures.
#[derive(Debug, Clone)]
pub struct OtaResult {
    pub delivery: String,
    /// `ota_window` of the server, for pushes.
    pub window: Option<usize>,
    pub state: String,
    pub succeeded: u64,
    pub devices: usize,
    pub wall: Duration,
    pub server_cpu_s: f64,
    pub fleet_cpu_s: f64,
    pub idle_rss: u64,
    pub peak_rss: u64,
}

impl OtaResult {
    /// Payload bytes per second over the whole rollout.
    pub fn bytes_per_second(&self, image: usize) -> f64 {
        (self.succeeded as f64 * image as f64) / self.wall.as_secs_f64().max(1e-9)
    }
}

/// A simulated-fleet image: the header names it, the rest is varied filler.
pub fn image(version: &str, size: usize) -> Vec<u8> {
    let mut bytes = format!(
        "HERD-IMAGE {{\"app\":\"herd-light\",\"fw_version\":\"{version}\",\"arch\":\"sim\"}}\n"
    )
    .into_bytes();
    let mut state = 0x2545_f491_u32;
    while bytes.len() < size {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        bytes.push(state as u8);
    }
    bytes.truncate(size);
    bytes
}

struct Fleet {
    child: tokio::process::Child,
    pid: u32,
    _dir: tempfile::TempDir,
}

impl Fleet {
    async fn start(bin: &Path, server: &ServerProcess, devices: usize) -> Result<Fleet> {
        let dir = tempfile::Builder::new()
            .prefix("herd-ota-fleet-")
            .tempdir()?;
        let behaviour = dir.path().join("behaviour.json");
        std::fs::write(
            &behaviour,
            json!({"switches_per_day": 0, "flaps_per_day": 0, "reboots_per_day": 0, "ota_failure_fraction": 0})
                .to_string(),
        )?;
        let log = std::fs::File::create(dir.path().join("fleet.log"))?;
        let child = tokio::process::Command::new(bin)
            .arg("fleet")
            .args(["--server", &server.base, "--api-key", &server.api_key])
            .args(["--count", &devices.to_string(), "--seed", "1"])
            .arg("--behaviour")
            .arg(&behaviour)
            .arg("--data-dir")
            .arg(dir.path())
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("the fleet exited at once"))?;
        Ok(Fleet {
            child,
            pid,
            _dir: dir,
        })
    }
}

async fn online(http: &reqwest::Client, server: &ServerProcess) -> Result<u64> {
    let health: Value = http
        .get(format!("{}/healthz", server.base))
        .send()
        .await?
        .json()
        .await?;
    Ok(health["devices_online"].as_u64().unwrap_or(0))
}

async fn api(
    http: &reqwest::Client,
    server: &ServerProcess,
    method: reqwest::Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<Value> {
    let mut request = http
        .request(method, format!("{}/api/v2{path}", server.base))
        .bearer_auth(&server.api_key);
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request.send().await?;
    let status = response.status();
    let value: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("{path}: {status} {value}");
    }
    Ok(value)
}

fn ticks_to_seconds(ticks: u64) -> f64 {
    // Linux reports /proc CPU times in USER_HZ, 100 on every platform Herd runs on.
    ticks as f64 / 100.0
}

/// Runs the benchmark and returns one result per delivery and window: the first window
/// runs every delivery, further windows only the push (a pull does not use it).
pub async fn run(args: &OtaArgs) -> Result<Vec<OtaResult>> {
    let mut results = Vec::new();
    for (i, &window) in args.window.iter().enumerate() {
        let deliveries: Vec<String> = if i == 0 {
            args.delivery.clone()
        } else {
            args.delivery
                .iter()
                .filter(|d| *d == "push")
                .cloned()
                .collect()
        };
        if !deliveries.is_empty() {
            results.extend(run_once(args, window, &deliveries).await?);
        }
    }
    Ok(results)
}

/// One server and fleet, and a rollout per delivery.
async fn run_once(args: &OtaArgs, window: usize, deliveries: &[String]) -> Result<Vec<OtaResult>> {
    let server_bin = args
        .server_bin
        .clone()
        .unwrap_or_else(|| RunArgs::sibling("herd-server"));
    let agent_bin = args
        .agent_bin
        .clone()
        .unwrap_or_else(|| RunArgs::sibling("herd-agent"));
    for bin in [&server_bin, &agent_bin] {
        if !bin.exists() {
            bail!(
                "{} not found; build it with `cargo build --release -p herd-server -p herd-agent`",
                bin.display()
            );
        }
    }
    let config_dir = tempfile::Builder::new()
        .prefix("herd-ota-config-")
        .tempdir()?;
    let config = config_dir.path().join("herd.toml");
    std::fs::write(
        &config,
        format!(
            "ota_window = {window}\nota_chunk_bytes = {}\n",
            args.chunk_kib * 1024
        ),
    )?;
    let mut server = ServerProcess::start_with(&server_bin, Some(&config)).await?;
    let http = reqwest::Client::new();
    eprintln!(
        "herd-server pid {} on {} (ota_window {window})",
        server.pid, server.address
    );
    let mut fleet = Fleet::start(&agent_bin, &server, args.devices).await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        server.check_alive()?;
        if let Ok(Some(status)) = fleet.child.try_wait() {
            bail!("the fleet exited: {status}");
        }
        let n = online(&http, &server).await.unwrap_or(0);
        if n as usize >= args.devices {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {n} of {} devices came online", args.devices);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("{} devices online", args.devices);
    let image_size = args.image_kib * 1024;
    let mut results = Vec::new();
    for (round, delivery) in deliveries.iter().enumerate() {
        let version = format!("1.{}.0", round + 1);
        let firmware = api(
            &http,
            &server,
            reqwest::Method::POST,
            "/firmware",
            Some(image(&version, image_size)),
        )
        .await?;
        let spec = json!({
            "name": format!("bench {delivery}"),
            "firmware": firmware["id"],
            "select": {"query": ""},
            "max_parallel": args.max_parallel,
            "delivery": delivery,
        });
        let rollout = api(
            &http,
            &server,
            reqwest::Method::POST,
            "/rollouts",
            Some(spec.to_string().into_bytes()),
        )
        .await?;
        let id = rollout["id"].as_str().unwrap_or_default().to_string();
        let (idle, _) = procfs::settle(server.pid, Duration::from_secs(20)).await?;
        let cpu_before = procfs::cpu_ticks(server.pid)?;
        let fleet_cpu_before = procfs::cpu_ticks(fleet.pid)?;
        let started = Instant::now();
        api(
            &http,
            &server,
            reqwest::Method::POST,
            &format!("/rollouts/{id}/start"),
            None,
        )
        .await?;
        let mut peak = idle.rss;
        let finished = loop {
            server.check_alive()?;
            peak = peak.max(procfs::sample(server.pid)?.rss);
            let current = api(
                &http,
                &server,
                reqwest::Method::GET,
                &format!("/rollouts/{id}"),
                None,
            )
            .await?;
            let state = current["state"].as_str().unwrap_or_default().to_string();
            if ["completed", "halted", "aborted"].contains(&state.as_str()) {
                break current;
            }
            if started.elapsed() > args.limit {
                bail!(
                    "the {delivery} rollout did not finish within {:?}: {current}",
                    args.limit
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let wall = started.elapsed();
        if finished["counters"]["succeeded"].as_u64().unwrap_or(0) < args.devices as u64 {
            // Say what went wrong with the devices that did not make it.
            let detail = api(
                &http,
                &server,
                reqwest::Method::GET,
                &format!("/rollouts/{id}?devices=1"),
                None,
            )
            .await?;
            let empty = Vec::new();
            let devices = detail["devices"].as_array().unwrap_or(&empty);
            for device in devices
                .iter()
                .filter(|d| d["state"] != "succeeded")
                .take(10)
            {
                eprintln!(
                    "  {} {}: {}",
                    device["name"], device["state"], device["message"]
                );
            }
        }
        let result = OtaResult {
            delivery: delivery.clone(),
            window: (delivery == "push").then_some(window),
            state: finished["state"].as_str().unwrap_or_default().to_string(),
            succeeded: finished["counters"]["succeeded"].as_u64().unwrap_or(0),
            devices: args.devices,
            wall,
            server_cpu_s: ticks_to_seconds(procfs::cpu_ticks(server.pid)? - cpu_before),
            fleet_cpu_s: ticks_to_seconds(procfs::cpu_ticks(fleet.pid)? - fleet_cpu_before),
            idle_rss: idle.rss,
            peak_rss: peak,
        };
        eprintln!(
            "{delivery}: {} in {:.1} s",
            result.state,
            wall.as_secs_f64()
        );
        results.push(result);
    }
    let _ = fleet.child.kill().await;
    for note in server.stop().await {
        eprintln!("{note}");
    }
    Ok(results)
}

/// The result table, in Markdown.
pub fn markdown(args: &OtaArgs, results: &[OtaResult]) -> String {
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let mut out = format!(
        "{} devices, {} KiB image, {} KiB chunks, max_parallel {}\n\n| delivery | window | outcome | wall time | server CPU | fleet CPU | server RSS at rest | peak RSS above rest | payload rate |\n|---|---|---|---|---|---|---|---|---|\n",
        args.devices, args.image_kib, args.chunk_kib, args.max_parallel
    );
    for r in results {
        out.push_str(&format!(
            "| {} | {} | {} {}/{} | {:.1} s | {:.1} s | {:.1} s | {:.0} MiB | {:.0} MiB | {:.1} MiB/s |\n",
            r.delivery,
            r.window.map_or("-".to_string(), |w| w.to_string()),
            r.state,
            r.succeeded,
            r.devices,
            r.wall.as_secs_f64(),
            r.server_cpu_s,
            r.fleet_cpu_s,
            mib(r.idle_rss),
            mib(r.peak_rss.saturating_sub(r.idle_rss)),
            r.bytes_per_second(args.image_kib * 1024) / (1024.0 * 1024.0),
        ));
    }
    out
}
