//! Cost figures for cluster mode, measured side by side in one run (`herd-cluster-bench`):
//!
//! - **A**: one herd-server on SQLite,
//! - **B**: one herd-server on PostgreSQL,
//! - **C**: two herd-server nodes sharing that PostgreSQL and a nats-server with JetStream,
//!   the devices held by node 1 and the REST requests sent to node 2.
//!
//! On a two-core machine the throughput of several nodes says nothing, so this measures what
//! one operation costs instead, at a fixed modest rate:
//!
//! - **Shadow update via REST**: `POST /api/v2/devices/:id/shadow` with
//!   `{"state":{"desired":{"n":k}}}`, open-loop at `--rate`, latency from the scheduled send
//!   time until the device receives the `Shadow.Delta` carrying `n = k` (and, separately,
//!   until the REST reply), and the CPU every server process, PostgreSQL (postmaster and
//!   backends) and nats-server spent per update (`/proc/PID/stat` user + system time).
//! - **Echo RPC via REST**: `POST /api/v2/devices/:id/rpc/Echo` answered by the device with
//!   its params; sequential calls, then `--rpc-concurrency` in flight. In C once on node 1
//!   (which holds the devices) and once on node 2 (the call crosses NATS both ways).
//! - **Notify fan-out**: `--consumers` notify streams (`/api/v2/notify`) while the devices
//!   send `Dash.Shadow.Update` with their scheduled send time in `reported.t`; delivery
//!   latency and deliveries/s. In C once with the consumers on node 1, once on node 2.
//!
//! Beside CPU each phase counts, per operation, the NATS messages in and out of nats-server
//! (its `/varz` monitoring counters) and PostgreSQL's write transactions (transaction ids
//! assigned) and WAL bytes, read from the server itself at the phase's edges. The devices
//! live in this process (a few hundred sockets need no shards). Every process the bench
//! starts is stopped when it ends, fails, is interrupted or panics.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::consumer::Consumers;
use crate::driver::{create_devices, find_program, RunArgs, ServerProcess};
use crate::latency::{self, Summary};
use crate::report::Machine;
use crate::{parse_duration, procfs, unix_nanos};

/// The three ways of running herd-server compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SetupKind {
    /// A: one node, SQLite in its data directory.
    Sqlite,
    /// B: one node on a throwaway PostgreSQL.
    Postgres,
    /// C: two nodes, PostgreSQL and nats-server; devices on node 1, REST on node 2.
    Cluster,
}

impl SetupKind {
    fn label(self) -> &'static str {
        match self {
            SetupKind::Sqlite => "A: 1 node, SQLite",
            SetupKind::Postgres => "B: 1 node, PostgreSQL",
            SetupKind::Cluster => "C: 2 nodes, PostgreSQL + NATS",
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// herd-server binary [default: herd-server next to this binary]
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// nats-server binary, a path or a name looked up on PATH and then in /usr/sbin.
    #[arg(long, default_value = "nats-server")]
    pub nats_bin: String,
    /// Which setups to run, in this order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "sqlite,postgres,cluster"
    )]
    pub setups: Vec<SetupKind>,
    /// Connected devices.
    #[arg(long, default_value_t = 200)]
    pub devices: usize,
    /// REST shadow updates per second, round-robin over the devices.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Length of the REST update phase.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Echo calls per RPC measurement (sequential, then again concurrent).
    #[arg(long, default_value_t = 2000)]
    pub rpc_calls: usize,
    /// Calls in flight in the concurrent RPC measurement.
    #[arg(long, default_value_t = 32)]
    pub rpc_concurrency: usize,
    /// Notify-stream consumers in the fan-out phase (0: no fan-out phase).
    #[arg(long, default_value_t = 10)]
    pub consumers: usize,
    /// Device shadow reports per second during the fan-out phase.
    #[arg(long, default_value_t = 200.0)]
    pub report_rate: f64,
    /// Length of each fan-out phase.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub fanout_duration: Duration,
    /// Quiet time before the load in which the background CPU use is measured.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub idle: Duration,
    /// Also write the full result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

// ---------------------------------------------------------------------------------
// child processes

/// Pids of the processes this bench started, killed by the panic hook.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn track(pid: u32) {
    CHILDREN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(pid);
}

fn untrack(pid: u32) {
    CHILDREN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .retain(|&p| p != pid);
}

/// Makes a panic anywhere in the process kill every child still running (the normal
/// paths stop them through their handles, which are also killed when dropped).
pub fn kill_children_on_panic() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        let pids = CHILDREN
            .lock()
            .map(|pids| pids.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone());
        for pid in pids {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }));
}

fn progress(message: &str) {
    eprintln!("[herd-cluster-bench] {message}");
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A nats-server with JetStream on a free loopback port, its store and log in a temporary
/// directory, its monitoring endpoint on another port for the message counters.
pub struct NatsProcess {
    child: tokio::process::Child,
    pub pid: u32,
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
    monitor: String,
    pub version: String,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

/// nats-server's message counters (`/varz`), all clients together.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct NatsCounters {
    pub in_msgs: u64,
    pub out_msgs: u64,
    pub in_bytes: u64,
    pub out_bytes: u64,
}

impl NatsProcess {
    pub async fn start(bin: &Path, http: &reqwest::Client) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("herd-nats-")
            .tempdir()
            .context("temp dir for nats-server")?;
        let port = free_port()?;
        let monitor_port = free_port()?;
        let log_path = dir.path().join("nats.log");
        let log = std::fs::File::create(&log_path).context("nats-server log file")?;
        let mut child = tokio::process::Command::new(bin)
            .arg("-js")
            .arg("-sd")
            .arg(dir.path().join("jetstream"))
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["-m", &monitor_port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("nats-server exited at once"))?;
        track(pid);
        let monitor = format!("http://127.0.0.1:{monitor_port}");
        let deadline = Instant::now() + Duration::from_secs(15);
        let version = loop {
            if let Ok(Some(status)) = child.try_wait() {
                untrack(pid);
                bail!(
                    "nats-server exited during startup ({status}): {}",
                    tail(&log_path)
                );
            }
            let varz = http.get(format!("{monitor}/varz")).send().await;
            if let Ok(response) = varz {
                if let Ok(value) = response.json::<Value>().await {
                    let jetstream = !value["jetstream"]["config"].is_null();
                    if TcpStream::connect(("127.0.0.1", port)).await.is_ok() && jetstream {
                        break value["version"].as_str().unwrap_or("?").to_string();
                    }
                }
            }
            if Instant::now() >= deadline {
                untrack(pid);
                bail!("nats-server not ready within 15 s: {}", tail(&log_path));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Ok(Self {
            child,
            pid,
            url: format!("nats://127.0.0.1:{port}"),
            monitor,
            version,
            log_path,
            _dir: dir,
        })
    }

    pub async fn counters(&self, http: &reqwest::Client) -> Result<NatsCounters> {
        varz(http, &self.monitor).await
    }

    pub async fn stop(mut self) -> Vec<String> {
        let mut notes: Vec<String> =
            crate::driver::terminate(&mut self.child, self.pid, "nats-server")
                .await
                .into_iter()
                .collect();
        untrack(self.pid);
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let problems: Vec<&str> = text
            .lines()
            .filter(|line| line.contains("[ERR]") || line.contains("[WRN]"))
            .collect();
        notes.push(format!(
            "nats-server log: {} error or warning lines",
            problems.len()
        ));
        notes.extend(
            problems
                .iter()
                .take(3)
                .map(|line| format!("nats-server log: `{}`", line.replace('`', "'"))),
        );
        notes
    }
}

/// nats-server's counters from its monitoring endpoint `monitor` (`http://HOST:PORT`).
async fn varz(http: &reqwest::Client, monitor: &str) -> Result<NatsCounters> {
    let value: Value = http
        .get(format!("{monitor}/varz"))
        .send()
        .await
        .context("nats-server /varz")?
        .json()
        .await
        .context("nats-server /varz")?;
    let field = |name: &str| value[name].as_u64().unwrap_or(0);
    Ok(NatsCounters {
        in_msgs: field("in_msgs"),
        out_msgs: field("out_msgs"),
        in_bytes: field("in_bytes"),
        out_bytes: field("out_bytes"),
    })
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join(" | ")
}

/// PostgreSQL's own counters, read live (not from the statistics collector, whose
/// figures lag by up to seconds).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PgCounters {
    /// The next transaction id: ids are assigned only to transactions that write.
    pub next_xid: u64,
    /// Position in the write-ahead log, bytes.
    pub wal_bytes: u64,
}

fn pg_counters(url: &str) -> Result<PgCounters> {
    let bin = herd_testkit::postgres::bin_dir().ok_or_else(|| anyhow!("psql not found"))?;
    let output = std::process::Command::new(bin.join("psql"))
        .args(["-XAtq", "-F", " ", "-c"])
        .arg(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint, \
             pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint",
        )
        .arg(url)
        .output()
        .context("running psql")?;
    if !output.status.success() {
        bail!(
            "psql failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut numbers = text.split_whitespace().map(str::parse::<u64>);
    match (numbers.next(), numbers.next()) {
        (Some(Ok(next_xid)), Some(Ok(wal_bytes))) => Ok(PgCounters {
            next_xid,
            wal_bytes,
        }),
        _ => bail!("unexpected psql output {text:?}"),
    }
}

// ---------------------------------------------------------------------------------
// metering

/// The processes whose CPU time is charged to the operations.
struct Metered {
    /// (node name, pid).
    servers: Vec<(String, u32)>,
    postgres: Option<u32>,
    postgres_url: Option<String>,
    nats: Option<NatsProcessRef>,
}

struct NatsProcessRef {
    pid: u32,
    monitor: String,
}

#[derive(Debug, Clone, Default)]
struct Reading {
    at: Option<Instant>,
    servers: Vec<u64>,
    postgres: u64,
    nats: u64,
    nats_counters: Option<NatsCounters>,
    pg: Option<PgCounters>,
}

impl Metered {
    async fn read(&self, http: &reqwest::Client) -> Result<Reading> {
        let mut servers = Vec::new();
        for (_, pid) in &self.servers {
            servers.push(procfs::cpu_ticks(*pid)?);
        }
        let postgres = match self.postgres {
            Some(pid) => procfs::tree_cpu_ticks(pid)?,
            None => 0,
        };
        let (nats, nats_counters) = match &self.nats {
            Some(nats) => {
                let counters = varz(http, &nats.monitor).await?;
                (procfs::cpu_ticks(nats.pid)?, Some(counters))
            }
            None => (0, None),
        };
        let pg = match &self.postgres_url {
            Some(url) => {
                let url = url.clone();
                Some(tokio::task::spawn_blocking(move || pg_counters(&url)).await??)
            }
            None => None,
        };
        Ok(Reading {
            at: Some(Instant::now()),
            servers,
            postgres,
            nats,
            nats_counters,
            pg,
        })
    }
}

/// What a phase cost, per operation (or per second for the idle reading).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Cost {
    pub operations: u64,
    pub seconds: f64,
    /// CPU µs per operation of each herd-server process, in node order.
    pub server_us: Vec<f64>,
    pub postgres_us: Option<f64>,
    pub nats_us: Option<f64>,
    /// All of the above.
    pub total_us: f64,
    pub nats_in_msgs: Option<f64>,
    pub nats_out_msgs: Option<f64>,
    pub nats_bytes: Option<f64>,
    pub pg_write_xacts: Option<f64>,
    pub pg_wal_bytes: Option<f64>,
}

impl Cost {
    /// Linux reports CPU times in USER_HZ, 100 per second: a tick is 10,000 µs.
    fn between(before: &Reading, after: &Reading, operations: u64) -> Self {
        let per = operations.max(1) as f64;
        let ticks_us = |b: u64, a: u64| a.saturating_sub(b) as f64 * 10_000.0 / per;
        let server_us: Vec<f64> = before
            .servers
            .iter()
            .zip(&after.servers)
            .map(|(b, a)| ticks_us(*b, *a))
            .collect();
        let postgres_us = before
            .pg
            .is_some()
            .then(|| ticks_us(before.postgres, after.postgres));
        let nats_us = before
            .nats_counters
            .is_some()
            .then(|| ticks_us(before.nats, after.nats));
        let total_us =
            server_us.iter().sum::<f64>() + postgres_us.unwrap_or(0.0) + nats_us.unwrap_or(0.0);
        let nats = before.nats_counters.zip(after.nats_counters);
        let pg = before.pg.zip(after.pg);
        Self {
            operations,
            seconds: match (before.at, after.at) {
                (Some(b), Some(a)) => a.duration_since(b).as_secs_f64(),
                _ => 0.0,
            },
            server_us,
            postgres_us,
            nats_us,
            total_us,
            nats_in_msgs: nats.map(|(b, a)| a.in_msgs.saturating_sub(b.in_msgs) as f64 / per),
            nats_out_msgs: nats.map(|(b, a)| a.out_msgs.saturating_sub(b.out_msgs) as f64 / per),
            nats_bytes: nats.map(|(b, a)| {
                (a.in_bytes + a.out_bytes).saturating_sub(b.in_bytes + b.out_bytes) as f64 / per
            }),
            pg_write_xacts: pg.map(|(b, a)| a.next_xid.saturating_sub(b.next_xid) as f64 / per),
            pg_wal_bytes: pg.map(|(b, a)| a.wal_bytes.saturating_sub(b.wal_bytes) as f64 / per),
        }
    }
}

// ---------------------------------------------------------------------------------
// devices

/// What the device tasks share with the phases.
#[derive(Default)]
struct FleetShared {
    ready: AtomicUsize,
    gone: AtomicUsize,
    changed: Notify,
    first_error: Mutex<Option<String>>,
    /// Scheduled send time of each desired change still on its way, by its `n`.
    awaited: Mutex<HashMap<u64, Instant>>,
    deltas: Mutex<Option<Histogram<u64>>>,
    deltas_matched: AtomicU64,
    deltas_other: AtomicU64,
    reports: Mutex<Option<Histogram<u64>>>,
    reports_replied: AtomicU64,
    report_errors: AtomicU64,
    echoes: AtomicU64,
}

impl FleetShared {
    fn note_error(&self, error: String) {
        self.first_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get_or_insert(error);
    }

    fn record(slot: &Mutex<Option<Histogram<u64>>>, since: Instant) {
        let mut slot = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let histogram = slot.get_or_insert_with(latency::new_histogram);
        latency::record_nanos(histogram, nanos(since.elapsed()));
    }

    fn take(slot: &Mutex<Option<Histogram<u64>>>) -> Histogram<u64> {
        slot.lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
            .unwrap_or_else(latency::new_histogram)
    }
}

enum DeviceCommand {
    /// Send `Dash.Shadow.Update` with `reported: {"seq", "t"}`.
    Report {
        seq: u64,
        scheduled: Instant,
        scheduled_unix_ns: u64,
    },
}

/// The device sockets, all in this process.
struct Fleet {
    devices: Vec<mpsc::UnboundedSender<DeviceCommand>>,
    shared: Arc<FleetShared>,
    next_seq: u64,
}

impl Fleet {
    /// Connects one device per token to `url` and waits until each answered
    /// `Sys.GetInfo` and had its first shadow report acknowledged.
    async fn connect(url: &str, tokens: &[String]) -> Result<Self> {
        let target = crate::client::loopback_target(url)?;
        let shared = Arc::new(FleetShared::default());
        let mut opened = futures_util::stream::iter(tokens.iter().enumerate())
            .map(|(index, token)| async move {
                let request = format!("{url}?access_token={token}").into_client_request()?;
                let stream = TcpStream::connect(target).await.context("tcp connect")?;
                stream.set_nodelay(true)?;
                let (socket, _) = tokio_tungstenite::client_async_with_config(
                    request,
                    stream,
                    Some(crate::client::lean_config()),
                )
                .await
                .with_context(|| format!("device {index}: handshake"))?;
                anyhow::Ok(socket)
            })
            .buffered(32);
        let mut devices = Vec::with_capacity(tokens.len());
        while let Some(socket) = opened.next().await {
            let socket = socket?;
            let (sender, receiver) = mpsc::unbounded_channel();
            devices.push(sender);
            tokio::spawn(run_device(socket, receiver, shared.clone()));
        }
        drop(opened);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let notified = shared.changed.notified();
            let ready = shared.ready.load(Ordering::SeqCst);
            if ready >= tokens.len() {
                break;
            }
            if shared.gone.load(Ordering::SeqCst) > 0 || tokio::time::Instant::now() >= deadline {
                bail!(
                    "only {ready} of {} devices became ready: {}",
                    tokens.len(),
                    shared
                        .first_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone()
                        .unwrap_or_default()
                );
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
        Ok(Self {
            devices,
            shared,
            next_seq: 0,
        })
    }

    fn check(&self) -> Result<()> {
        let gone = self.shared.gone.load(Ordering::SeqCst);
        if gone > 0 {
            bail!(
                "{gone} device sockets closed: {}",
                self.shared
                    .first_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
                    .unwrap_or_default()
            );
        }
        Ok(())
    }

    /// Schedules `count` device reports at `rate` from `start` (round-robin over the
    /// devices) on a thread of its own, for timing well under tokio's millisecond timer.
    async fn reports(&mut self, rate: f64, count: u64, start: Instant, start_unix_ns: u64) {
        let devices = self.devices.clone();
        let seq_base = self.next_seq;
        self.next_seq += count;
        let _ = tokio::task::spawn_blocking(move || {
            schedule(rate, count, start, |index, scheduled, offset| {
                let device = &devices[(index % devices.len() as u64) as usize];
                let _ = device.send(DeviceCommand::Report {
                    seq: seq_base + index + 1,
                    scheduled,
                    scheduled_unix_ns: start_unix_ns + nanos(offset),
                });
            })
        })
        .await;
    }

    async fn close(self) {
        drop(self.devices);
        // The device tasks close their sockets when their command channel ends.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Calls `each(index, scheduled, offset)` at `start + index / rate` for every index below
/// `count`, on the calling thread; late calls are made at once with their original time.
fn schedule(rate: f64, count: u64, start: Instant, mut each: impl FnMut(u64, Instant, Duration)) {
    let mut index = 0;
    while index < count {
        let offset = Duration::from_secs_f64(index as f64 / rate);
        let scheduled = start + offset;
        let now = Instant::now();
        if scheduled > now {
            std::thread::sleep(scheduled - now);
        }
        each(index, scheduled, offset);
        index += 1;
    }
}

type Socket = WebSocketStream<TcpStream>;

async fn run_device(
    socket: Socket,
    commands: mpsc::UnboundedReceiver<DeviceCommand>,
    shared: Arc<FleetShared>,
) {
    if let Err(error) = serve_device(socket, commands, &shared).await {
        shared.gone.fetch_add(1, Ordering::SeqCst);
        shared.note_error(format!("device socket: {error:#}"));
        shared.changed.notify_waiters();
    }
}

/// One device: answers `Sys.GetInfo`, `Shadow.Delta` (with `null`, so the delta is not
/// applied as a new report: the update costs what the REST write costs) and `Echo` (with
/// its params), and sends the reports it is told to.
async fn serve_device(
    mut socket: Socket,
    mut commands: mpsc::UnboundedReceiver<DeviceCommand>,
    shared: &FleetShared,
) -> Result<()> {
    // Request id -> scheduled time of a timed report; `None` for the first report.
    let mut pending: HashMap<u64, Option<Instant>> = HashMap::new();
    let mut next_id = 1u64;
    let mut info_done = false;
    let mut shadow_done = false;
    let mut counted = false;
    socket
        .send(Message::text(
            json!({"id": next_id, "method": "Dash.Shadow.Update",
                   "params": {"state": {"reported": {"app": "bench", "seq": 0}}}})
            .to_string(),
        ))
        .await?;
    pending.insert(next_id, None);
    next_id += 1;
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                None => {
                    let _ = socket.close(None).await;
                    return Ok(());
                }
                Some(DeviceCommand::Report { seq, scheduled, scheduled_unix_ns }) => {
                    let id = next_id;
                    next_id += 1;
                    let frame = format!(
                        r#"{{"id":{id},"method":"Dash.Shadow.Update","params":{{"state":{{"reported":{{"seq":{seq},"t":{scheduled_unix_ns}}}}}}}}}"#
                    );
                    socket.send(Message::text(frame)).await?;
                    pending.insert(id, Some(scheduled));
                }
            },
            message = socket.next() => {
                let message = match message {
                    None => bail!("closed by the server"),
                    Some(message) => message?,
                };
                let text = match message {
                    Message::Text(text) => text,
                    Message::Close(frame) => bail!("server sent close: {frame:?}"),
                    _ => continue,
                };
                let frame: Value = match serde_json::from_str(text.as_str()) {
                    Ok(frame) => frame,
                    Err(error) => {
                        shared.note_error(format!("unparsable frame ({error}): {:.200}", text.as_str()));
                        continue;
                    }
                };
                match (frame.get("method").and_then(Value::as_str), frame.get("id")) {
                    (Some(method), Some(id)) => {
                        let result = match method {
                            "Sys.GetInfo" => {
                                info_done = true;
                                json!({"app": "bench", "fw_version": "1.0", "arch": "x86_64"})
                            }
                            "Shadow.Delta" => {
                                on_delta(&frame["params"], shared);
                                Value::Null
                            }
                            "Echo" => {
                                shared.echoes.fetch_add(1, Ordering::Relaxed);
                                frame["params"].clone()
                            }
                            _ => Value::Null,
                        };
                        socket
                            .send(Message::text(json!({"id": id, "result": result}).to_string()))
                            .await?;
                    }
                    // A notification from the server: nothing to answer.
                    (Some(_), None) => {}
                    (None, Some(id)) => {
                        let Some(purpose) = id.as_u64().and_then(|id| pending.remove(&id)) else {
                            continue;
                        };
                        let failed = frame.get("error").filter(|e| !e.is_null());
                        match (purpose, failed) {
                            (None, None) => shadow_done = true,
                            (None, Some(error)) => {
                                shared.note_error(format!("first report refused: {error}"))
                            }
                            (Some(scheduled), None) => {
                                FleetShared::record(&shared.reports, scheduled);
                                shared.reports_replied.fetch_add(1, Ordering::Relaxed);
                            }
                            (Some(_), Some(error)) => {
                                shared.report_errors.fetch_add(1, Ordering::Relaxed);
                                shared.note_error(format!("report refused: {error}"));
                            }
                        }
                    }
                    (None, None) => {}
                }
                if info_done && shadow_done && !counted {
                    counted = true;
                    shared.ready.fetch_add(1, Ordering::SeqCst);
                    shared.changed.notify_waiters();
                }
            }
        }
    }
}

fn on_delta(params: &Value, shared: &FleetShared) {
    let scheduled = params["state"]["n"].as_u64().and_then(|n| {
        shared
            .awaited
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&n)
    });
    match scheduled {
        Some(scheduled) => {
            FleetShared::record(&shared.deltas, scheduled);
            shared.deltas_matched.fetch_add(1, Ordering::Relaxed);
        }
        None => {
            shared.deltas_other.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------------
// report

#[derive(Debug, Clone, Serialize)]
pub struct ClusterReport {
    pub command: String,
    pub machine: Machine,
    pub devices: usize,
    pub rate: f64,
    pub duration_s: f64,
    pub rpc_calls: usize,
    pub rpc_concurrency: usize,
    pub consumers: usize,
    pub report_rate: f64,
    pub fanout_duration_s: f64,
    pub setups: Vec<SetupReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SetupReport {
    pub kind: SetupKind,
    pub label: String,
    /// `/proc/loadavg` when the setup started.
    pub load_average: String,
    /// Background CPU per second with the devices connected and idle (`operations` is
    /// the number of seconds).
    pub idle: Option<Cost>,
    pub updates: Option<UpdatePhase>,
    pub rpc: Vec<RpcPhase>,
    pub fanout: Vec<FanoutPhase>,
    pub notes: Vec<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpdatePhase {
    /// Where the REST requests went.
    pub node: String,
    pub offered: u64,
    pub rest_ok: u64,
    pub rest_errors: u64,
    pub deltas: u64,
    /// Deltas whose `n` was not awaited (late duplicates, or superseded).
    pub other_deltas: u64,
    /// Scheduled send until the REST reply.
    pub rest: Summary,
    /// Scheduled send until the device received the `Shadow.Delta`.
    pub delta: Summary,
    pub cost: Cost,
    pub first_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RpcPhase {
    /// Where the REST requests went, and whether that node holds the devices.
    pub node: String,
    pub remote: bool,
    pub sequential: Summary,
    pub sequential_cost: Cost,
    pub concurrent: Summary,
    pub concurrent_per_s: f64,
    pub concurrent_cost: Cost,
    pub errors: u64,
    pub first_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FanoutPhase {
    /// Where the consumers were, and whether that is another node than the devices'.
    pub node: String,
    pub remote: bool,
    pub consumers: usize,
    pub reports: u64,
    pub replied: u64,
    pub report_errors: u64,
    /// Device report round trip (its `Dash.Shadow.Update` until the reply).
    pub report_rtt: Summary,
    pub expected: u64,
    pub delivered: u64,
    pub lagged_dropped: u64,
    pub deliveries_per_s: f64,
    pub delivery: Summary,
    pub cost: Cost,
    pub first_error: Option<String>,
}

// ---------------------------------------------------------------------------------
// the run

pub async fn run(args: &ClusterArgs, command: String) -> Result<ClusterReport> {
    if args.devices == 0 || args.rpc_concurrency == 0 {
        bail!("--devices and --rpc-concurrency must be at least 1");
    }
    if !(args.rate > 0.0 && args.report_rate > 0.0) {
        bail!("rates must be positive");
    }
    let server_bin = args
        .server_bin
        .clone()
        .unwrap_or_else(|| RunArgs::sibling("herd-server"));
    if !server_bin.is_file() {
        bail!(
            "{} not found; build it with `cargo build --release -p herd-server`",
            server_bin.display()
        );
    }
    let needs_postgres = args.setups.iter().any(|s| *s != SetupKind::Sqlite);
    let nats_bin = if args.setups.contains(&SetupKind::Cluster) {
        Some(find_program(&args.nats_bin).ok_or_else(|| {
            let looked = if args.nats_bin.contains('/') {
                format!("{} is not a file", args.nats_bin)
            } else {
                format!("no {} on PATH or in /usr/sbin", args.nats_bin)
            };
            anyhow!(
                "nats-server not found ({looked}): install it (Debian: apt-get install \
                 nats-server) or pass --nats-bin PATH, or leave out the cluster setup with \
                 --setups sqlite,postgres"
            )
        })?)
    } else {
        None
    };
    if needs_postgres && herd_testkit::postgres::bin_dir().is_none() {
        bail!(
            "PostgreSQL not found (no postgres in $HERD_PG_BIN or under \
             /usr/lib/postgresql/*/bin): install it (Debian: apt-get install postgresql) or \
             run only --setups sqlite"
        );
    }
    let mut report = ClusterReport {
        command,
        machine: Machine::collect(),
        devices: args.devices,
        rate: args.rate,
        duration_s: args.duration.as_secs_f64(),
        rpc_calls: args.rpc_calls,
        rpc_concurrency: args.rpc_concurrency,
        consumers: args.consumers,
        report_rate: args.report_rate,
        fanout_duration_s: args.fanout_duration.as_secs_f64(),
        setups: Vec::new(),
    };
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(128)
        .timeout(Duration::from_secs(30))
        .build()
        .context("http client")?;
    // One PostgreSQL serves B and C, a fresh database each; started after A so that its
    // idle work does not run beside A.
    let mut postgres: Option<herd_testkit::postgres::PostgresServer> = None;
    for &kind in &args.setups {
        if kind != SetupKind::Sqlite && postgres.is_none() {
            progress("starting a throwaway PostgreSQL (flushing defaults)");
            let server =
                tokio::task::spawn_blocking(herd_testkit::postgres::PostgresServer::start_durable)
                    .await??;
            if let Some(pid) = server.pid() {
                track(pid);
            }
            postgres = Some(server);
        }
        let mut setup = SetupReport {
            kind,
            label: kind.label().to_string(),
            load_average: load_average(),
            idle: None,
            updates: None,
            rpc: Vec::new(),
            fanout: Vec::new(),
            notes: Vec::new(),
            error: None,
        };
        progress(&format!(
            "{}: load average {}",
            setup.label, setup.load_average
        ));
        if let Err(error) = measure(
            args,
            &http,
            &server_bin,
            nats_bin.as_deref(),
            postgres.as_ref(),
            &mut setup,
        )
        .await
        {
            progress(&format!("{} failed: {error:#}", setup.label));
            setup.error = Some(format!("{error:#}"));
        }
        report.setups.push(setup);
    }
    if let Some(mut server) = postgres {
        if let Some(pid) = server.pid() {
            untrack(pid);
        }
        tokio::task::spawn_blocking(move || server.stop()).await?;
    }
    Ok(report)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".into())
}

/// The nodes of one setup, stopped in reverse order of starting.
struct Nodes {
    servers: Vec<ServerProcess>,
    nats: Option<NatsProcess>,
}

impl Nodes {
    async fn stop(mut self, notes: &mut Vec<String>) {
        while let Some(server) = self.servers.pop() {
            let pid = server.pid;
            let node = self.servers.len() + 1;
            notes.extend(
                server
                    .stop()
                    .await
                    .into_iter()
                    .map(|note| format!("node {node}: {note}")),
            );
            untrack(pid);
        }
        if let Some(nats) = self.nats.take() {
            notes.extend(nats.stop().await);
        }
    }
}

async fn measure(
    args: &ClusterArgs,
    http: &reqwest::Client,
    server_bin: &Path,
    nats_bin: Option<&Path>,
    postgres: Option<&herd_testkit::postgres::PostgresServer>,
    setup: &mut SetupReport,
) -> Result<()> {
    let store = match setup.kind {
        SetupKind::Sqlite => None,
        _ => {
            let postgres = postgres.ok_or_else(|| anyhow!("no PostgreSQL"))?;
            Some(postgres.create_database()?)
        }
    };
    let mut nodes = Nodes {
        servers: Vec::new(),
        nats: None,
    };
    let outcome = start_and_measure(
        args,
        http,
        server_bin,
        nats_bin,
        postgres.and_then(|p| p.pid()),
        store.as_deref(),
        &mut nodes,
        setup,
    )
    .await;
    nodes.stop(&mut setup.notes).await;
    outcome
}

#[allow(clippy::too_many_arguments)]
async fn start_and_measure(
    args: &ClusterArgs,
    http: &reqwest::Client,
    server_bin: &Path,
    nats_bin: Option<&Path>,
    postgres_pid: Option<u32>,
    store: Option<&str>,
    nodes: &mut Nodes,
    setup: &mut SetupReport,
) -> Result<()> {
    let cluster = setup.kind == SetupKind::Cluster;
    if cluster {
        let bin = nats_bin.ok_or_else(|| anyhow!("no nats-server"))?;
        let nats = NatsProcess::start(bin, http).await?;
        progress(&format!(
            "nats-server {} pid {} on {}",
            nats.version, nats.pid, nats.url
        ));
        setup.notes.push(format!(
            "nats-server {} (-js, file storage in a temporary directory)",
            nats.version
        ));
        nodes.nats = Some(nats);
    }
    let node_args = |name: &str| -> Vec<String> {
        match &nodes.nats {
            Some(nats) => vec![
                "--nats".into(),
                nats.url.clone(),
                "--node-id".into(),
                name.into(),
            ],
            None => Vec::new(),
        }
    };
    let first_args = node_args("n1");
    let second_args = node_args("n2");
    let first = ServerProcess::start_node(server_bin, None, store, &first_args, None).await?;
    track(first.pid);
    progress(&format!(
        "node 1: herd-server pid {} on {}",
        first.pid, first.base
    ));
    let api_key = first.api_key.clone();
    nodes.servers.push(first);
    if cluster {
        let second =
            ServerProcess::start_node(server_bin, None, store, &second_args, Some(&api_key))
                .await?;
        track(second.pid);
        progress(&format!(
            "node 2: herd-server pid {} on {}",
            second.pid, second.base
        ));
        nodes.servers.push(second);
    }
    let node1_base = nodes.servers[0].base.clone();
    let node1_address = nodes.servers[0].address.clone();
    let write_index = nodes.servers.len() - 1;

    let devices = create_devices(http, &node1_base, &api_key, args.devices).await?;
    let ids: Vec<String> = devices.iter().map(|d| d.id.clone()).collect();
    let tokens: Vec<String> = devices.iter().map(|d| d.token.clone()).collect();
    let mut fleet = Fleet::connect(&format!("ws://{node1_address}/api/v2/rpc"), &tokens).await?;
    progress(&format!("{} devices connected to node 1", ids.len()));
    if cluster {
        wait_for_presence(http, &nodes.servers[1].base, ids.len()).await?;
    }

    let metered = Metered {
        servers: nodes
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("node {}", i + 1), s.pid))
            .collect(),
        postgres: postgres_pid.filter(|_| store.is_some()),
        postgres_url: store.map(str::to_string),
        nats: nodes.nats.as_ref().map(|n| NatsProcessRef {
            pid: n.pid,
            monitor: n.monitor.clone(),
        }),
    };

    // Background: what the processes spend per second with nothing asked of them.
    let before = metered.read(http).await?;
    tokio::time::sleep(args.idle).await;
    let after = metered.read(http).await?;
    let mut idle = Cost::between(&before, &after, 1);
    let seconds = idle.seconds.max(0.001);
    scale_cost(&mut idle, 1.0 / seconds);
    idle.operations = 0;
    setup.idle = Some(idle);

    let write_base = nodes.servers[write_index].base.clone();
    let write_node = format!("node {}", write_index + 1);
    let updates = rest_updates(
        args,
        http,
        &write_base,
        &write_node,
        &api_key,
        &ids,
        &fleet,
        &metered,
    )
    .await?;
    progress(&format!(
        "REST updates on {}: delta p50 {} p99 {}, {:.0} µs CPU/update",
        write_node,
        latency::format_micros(updates.delta.p50_us),
        latency::format_micros(updates.delta.p99_us),
        updates.cost.total_us
    ));
    setup.updates = Some(updates);
    fleet.check()?;
    settle_down(&metered).await;

    for (index, server) in nodes.servers.iter().enumerate() {
        let rpc = rpc_phase(
            args,
            http,
            &server.base,
            &format!("node {}", index + 1),
            index > 0,
            &api_key,
            &ids,
            &metered,
        )
        .await?;
        progress(&format!(
            "Echo RPC on node {}: sequential p50 {} p99 {}; {} in flight {:.0}/s p99 {}",
            index + 1,
            latency::format_micros(rpc.sequential.p50_us),
            latency::format_micros(rpc.sequential.p99_us),
            args.rpc_concurrency,
            rpc.concurrent_per_s,
            latency::format_micros(rpc.concurrent.p99_us)
        ));
        setup.rpc.push(rpc);
        fleet.check()?;
        settle_down(&metered).await;
    }

    if args.consumers > 0 {
        for (index, server) in nodes.servers.iter().enumerate() {
            let url = format!(
                "ws://{}/api/v2/notify?access_token={}",
                server.address, api_key
            );
            let fanout = fanout_phase(
                args,
                http,
                &url,
                &format!("node {}", index + 1),
                index > 0,
                &mut fleet,
                &metered,
            )
            .await?;
            progress(&format!(
                "fan-out to {} consumers on node {}: {:.0} deliveries/s, p99 {}",
                fanout.consumers,
                index + 1,
                fanout.deliveries_per_s,
                latency::format_micros(fanout.delivery.p99_us)
            ));
            setup.fanout.push(fanout);
            fleet.check()?;
            settle_down(&metered).await;
        }
    }
    fleet.close().await;
    for server in &mut nodes.servers {
        server.check_alive()?;
    }
    Ok(())
}

fn scale_cost(cost: &mut Cost, factor: f64) {
    for us in &mut cost.server_us {
        *us *= factor;
    }
    let scale = |value: &mut Option<f64>| {
        if let Some(v) = value {
            *v *= factor;
        }
    };
    scale(&mut cost.postgres_us);
    scale(&mut cost.nats_us);
    scale(&mut cost.nats_in_msgs);
    scale(&mut cost.nats_out_msgs);
    scale(&mut cost.nats_bytes);
    scale(&mut cost.pg_write_xacts);
    scale(&mut cost.pg_wal_bytes);
    cost.total_us *= factor;
}

/// Waits until every server is nearly idle (bounded), so a phase's leftovers are not
/// charged to the next one.
async fn settle_down(metered: &Metered) {
    for (_, pid) in &metered.servers {
        let _ = procfs::wait_idle(*pid, Duration::from_secs(10)).await;
    }
}

/// Waits until node 2 knows every device to be online on node 1 (its `/healthz`).
async fn wait_for_presence(http: &reqwest::Client, base: &str, devices: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = 0;
    while Instant::now() < deadline {
        if let Ok(response) = http.get(format!("{base}/healthz")).send().await {
            if let Ok(health) = response.json::<Value>().await {
                seen = health["cluster"]["remote_devices"].as_u64().unwrap_or(0) as usize;
                if seen >= devices {
                    return Ok(());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("node 2 knows only {seen} of {devices} devices online on node 1 after 30 s")
}

struct RestStats {
    histogram: Mutex<Histogram<u64>>,
    ok: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

#[allow(clippy::too_many_arguments)]
async fn rest_updates(
    args: &ClusterArgs,
    http: &reqwest::Client,
    base: &str,
    node: &str,
    api_key: &str,
    ids: &[String],
    fleet: &Fleet,
    metered: &Metered,
) -> Result<UpdatePhase> {
    let count = (args.rate * args.duration.as_secs_f64()).round() as u64;
    let stats = Arc::new(RestStats {
        histogram: Mutex::new(latency::new_histogram()),
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: Mutex::new(None),
    });
    FleetShared::take(&fleet.shared.deltas);
    let matched_before = fleet.shared.deltas_matched.load(Ordering::SeqCst);
    let other_before = fleet.shared.deltas_other.load(Ordering::SeqCst);
    let before = metered.read(http).await?;
    let start = Instant::now() + Duration::from_millis(300);
    let runtime = tokio::runtime::Handle::current();
    let urls: Arc<Vec<String>> = Arc::new(
        ids.iter()
            .map(|id| format!("{base}/api/v2/devices/{id}/shadow"))
            .collect(),
    );
    {
        let http = http.clone();
        let api_key = api_key.to_string();
        let stats = stats.clone();
        let shared = fleet.shared.clone();
        let rate = args.rate;
        tokio::task::spawn_blocking(move || {
            schedule(rate, count, start, |index, scheduled, _| {
                let n = index + 1;
                shared
                    .awaited
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(n, scheduled);
                let request = http
                    .post(&urls[(index % urls.len() as u64) as usize])
                    .bearer_auth(&api_key)
                    .json(&json!({"state": {"desired": {"n": n}}}));
                let stats = stats.clone();
                runtime.spawn(async move {
                    let outcome = match request.send().await {
                        Ok(response) if response.status().is_success() => {
                            let _ = response.bytes().await;
                            Ok(())
                        }
                        Ok(response) => {
                            let status = response.status();
                            let body = response.text().await.unwrap_or_default();
                            Err(format!("HTTP {status}: {body:.200}"))
                        }
                        Err(error) => Err(format!("{error}")),
                    };
                    match outcome {
                        Ok(()) => {
                            latency::record_nanos(
                                &mut stats.histogram.lock().unwrap_or_else(|p| p.into_inner()),
                                nanos(scheduled.elapsed()),
                            );
                            stats.ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(error) => {
                            stats.errors.fetch_add(1, Ordering::SeqCst);
                            stats
                                .first_error
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(error);
                        }
                    }
                });
            })
        })
        .await?;
    }
    // Replies and deltas still on their way.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answered = stats.ok.load(Ordering::SeqCst) + stats.errors.load(Ordering::SeqCst);
        let deltas = fleet.shared.deltas_matched.load(Ordering::SeqCst) - matched_before;
        if (answered >= count && deltas >= stats.ok.load(Ordering::SeqCst))
            || Instant::now() >= deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after = metered.read(http).await?;
    let rest_ok = stats.ok.load(Ordering::SeqCst);
    let cost = Cost::between(&before, &after, rest_ok);
    let rest = Summary::of(&stats.histogram.lock().unwrap_or_else(|p| p.into_inner()));
    fleet
        .shared
        .awaited
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
    let first_error = stats
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(UpdatePhase {
        node: node.to_string(),
        offered: count,
        rest_ok,
        rest_errors: stats.errors.load(Ordering::SeqCst),
        deltas: fleet.shared.deltas_matched.load(Ordering::SeqCst) - matched_before,
        other_deltas: fleet.shared.deltas_other.load(Ordering::SeqCst) - other_before,
        rest,
        delta: Summary::of(&FleetShared::take(&fleet.shared.deltas)),
        cost,
        first_error,
    })
}

/// One Echo call; checks the device's answer is the params sent.
async fn echo(http: &reqwest::Client, url: &str, api_key: &str, k: usize) -> Result<()> {
    let response = http
        .post(url)
        .bearer_auth(api_key)
        .json(&json!({"k": k}))
        .send()
        .await?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        bail!("HTTP {status}: {body:.200}");
    }
    let value: Value = response.json().await?;
    if value["k"].as_u64() != Some(k as u64) {
        bail!("Echo answered {value:.200}, expected k={k}");
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn rpc_phase(
    args: &ClusterArgs,
    http: &reqwest::Client,
    base: &str,
    node: &str,
    remote: bool,
    api_key: &str,
    ids: &[String],
    metered: &Metered,
) -> Result<RpcPhase> {
    let urls: Vec<String> = ids
        .iter()
        .map(|id| format!("{base}/api/v2/devices/{id}/rpc/Echo"))
        .collect();
    let url = |k: usize| urls[k % urls.len()].as_str();
    let mut errors = 0u64;
    let mut first_error: Option<String> = None;
    // Warm-up: connections in the pool, first calls through the route.
    for k in 0..urls.len().min(50) {
        if let Err(error) = echo(http, url(k), api_key, k).await {
            bail!("Echo warm-up on {node}: {error:#}");
        }
    }
    let calls = args.rpc_calls.max(1);
    let mut sequential = latency::new_histogram();
    let before = metered.read(http).await?;
    for k in 0..calls {
        let started = Instant::now();
        match echo(http, url(k), api_key, k).await {
            Ok(()) => latency::record_nanos(&mut sequential, nanos(started.elapsed())),
            Err(error) => {
                errors += 1;
                first_error.get_or_insert(format!("{error:#}"));
            }
        }
    }
    let after = metered.read(http).await?;
    let sequential_cost = Cost::between(&before, &after, sequential.len());
    settle_down(metered).await;

    let before = metered.read(http).await?;
    let started = Instant::now();
    let outcomes: Vec<(Duration, Result<()>)> = futures_util::stream::iter(0..calls)
        .map(|k| async move {
            let started = Instant::now();
            let outcome = echo(http, url(k), api_key, k).await;
            (started.elapsed(), outcome)
        })
        .buffer_unordered(args.rpc_concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    let after = metered.read(http).await?;
    let mut concurrent = latency::new_histogram();
    for (took, outcome) in outcomes {
        match outcome {
            Ok(()) => latency::record_nanos(&mut concurrent, nanos(took)),
            Err(error) => {
                errors += 1;
                first_error.get_or_insert(format!("{error:#}"));
            }
        }
    }
    Ok(RpcPhase {
        node: node.to_string(),
        remote,
        sequential: Summary::of(&sequential),
        sequential_cost,
        concurrent: Summary::of(&concurrent),
        concurrent_per_s: concurrent.len() as f64 / elapsed.max(1e-9),
        concurrent_cost: Cost::between(&before, &after, concurrent.len()),
        errors,
        first_error,
    })
}

async fn fanout_phase(
    args: &ClusterArgs,
    http: &reqwest::Client,
    url: &str,
    node: &str,
    remote: bool,
    fleet: &mut Fleet,
    metered: &Metered,
) -> Result<FanoutPhase> {
    let mut consumers = Consumers::connect(url, args.consumers).await?;
    // The notify streams subscribe some time after their handshake: report until every
    // consumer has seen one.
    let mut subscribed = false;
    for _ in 0..30 {
        let start = Instant::now() + Duration::from_millis(10);
        fleet
            .reports(200.0, 20, start, unix_nanos() + 10_000_000)
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if consumers.collect().await?.min_deliveries > 0 {
            subscribed = true;
            break;
        }
    }
    if !subscribed {
        bail!("some notify consumers on {node} received nothing within 30 warm-up rounds");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    FleetShared::take(&fleet.shared.reports);
    consumers.collect().await?;
    let replied_before = fleet.shared.reports_replied.load(Ordering::SeqCst);
    let errors_before = fleet.shared.report_errors.load(Ordering::SeqCst);
    let delivered_before = consumers.deliveries.load(Ordering::SeqCst);
    let count = (args.report_rate * args.fanout_duration.as_secs_f64()).round() as u64;
    let expected = count * args.consumers as u64;
    let before = metered.read(http).await?;
    let lead = Duration::from_millis(300);
    let start = Instant::now() + lead;
    let start_unix_ns = unix_nanos() + nanos(lead);
    fleet
        .reports(args.report_rate, count, start, start_unix_ns)
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = (0, Instant::now());
    loop {
        let delivered = consumers.deliveries.load(Ordering::SeqCst) - delivered_before;
        let replied = fleet.shared.reports_replied.load(Ordering::SeqCst) - replied_before;
        if (delivered >= expected && replied >= count) || Instant::now() >= deadline {
            break;
        }
        if delivered != last.0 {
            last = (delivered, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after = metered.read(http).await?;
    let collected = consumers.collect().await?;
    let replied = fleet.shared.reports_replied.load(Ordering::SeqCst) - replied_before;
    Ok(FanoutPhase {
        node: node.to_string(),
        remote,
        consumers: args.consumers,
        reports: count,
        replied,
        report_errors: fleet.shared.report_errors.load(Ordering::SeqCst) - errors_before,
        report_rtt: Summary::of(&FleetShared::take(&fleet.shared.reports)),
        expected,
        delivered: collected.deliveries,
        lagged_dropped: collected.lagged_dropped,
        deliveries_per_s: collected.deliveries as f64 / args.fanout_duration.as_secs_f64(),
        delivery: Summary::of(&collected.histogram),
        cost: Cost::between(&before, &after, count),
        first_error: collected.errors.first().cloned(),
    })
}

// ---------------------------------------------------------------------------------
// markdown

fn ms(us: u64) -> String {
    latency::format_micros(us)
}

fn us(value: f64) -> String {
    format!("{value:.0} µs")
}

fn opt(value: Option<f64>, format: impl Fn(f64) -> String) -> String {
    value.map(format).unwrap_or_else(|| "-".into())
}

fn servers_us(cost: &Cost) -> String {
    if cost.server_us.len() > 1 {
        let parts: Vec<String> = cost.server_us.iter().map(|v| format!("{v:.0}")).collect();
        format!(
            "{} µs ({})",
            cost.server_us.iter().sum::<f64>().round(),
            parts.join(" + ")
        )
    } else {
        us(cost.server_us.iter().sum())
    }
}

/// `cost`'s total less what the processes spend anyway in as long a time with nothing to
/// do (`idle`, per second): the marginal cost of one operation.
fn net_of_idle(cost: &Cost, idle: Option<&Cost>) -> Option<f64> {
    let idle = idle?;
    (cost.operations > 0)
        .then(|| cost.total_us - idle.total_us * cost.seconds / cost.operations as f64)
}

fn cost_rows(
    rows: &mut Vec<(String, Vec<String>)>,
    costs: &[(Option<&Cost>, Option<&Cost>)],
    what: &str,
) {
    let cell = |f: &dyn Fn(&Cost) -> String| -> Vec<String> {
        costs
            .iter()
            .map(|(c, _)| c.map(f).unwrap_or_else(|| "-".into()))
            .collect()
    };
    rows.push((
        format!("herd-server CPU per {what} (node 1 + node 2)"),
        cell(&servers_us),
    ));
    rows.push((
        format!("PostgreSQL CPU per {what} (postmaster and backends)"),
        cell(&|c| opt(c.postgres_us, us)),
    ));
    rows.push((
        format!("nats-server CPU per {what}"),
        cell(&|c| opt(c.nats_us, us)),
    ));
    rows.push((
        format!("all processes, CPU per {what}"),
        cell(&|c| us(c.total_us)),
    ));
    rows.push((
        format!("all processes, CPU per {what} less the idle background"),
        costs
            .iter()
            .map(|(c, idle)| opt(c.and_then(|c| net_of_idle(c, *idle)), us))
            .collect(),
    ));
    rows.push((
        format!("PostgreSQL write transactions / WAL bytes per {what}"),
        cell(&|c| match (c.pg_write_xacts, c.pg_wal_bytes) {
            (Some(x), Some(w)) => format!("{x:.2} / {w:.0}"),
            _ => "-".into(),
        }),
    ));
    rows.push((
        format!("NATS messages in / out per {what}"),
        cell(&|c| match (c.nats_in_msgs, c.nats_out_msgs) {
            (Some(i), Some(o)) => format!("{i:.2} / {o:.2}"),
            _ => "-".into(),
        }),
    ));
}

fn table(out: &mut String, header: &[String], rows: &[(String, Vec<String>)]) {
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
    for (name, cells) in rows {
        let _ = writeln!(out, "| {name} | {} |", cells.join(" | "));
    }
    out.push('\n');
}

impl ClusterReport {
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Machine: {} × {}, {}, Linux {}; load average at start {}.\n",
            self.machine.nproc,
            self.machine.cpu,
            self.machine.memory,
            self.machine.kernel,
            self.machine.load_average
        );
        for setup in &self.setups {
            if let Some(error) = &setup.error {
                let _ = writeln!(out, "**{}: run failed:** {error}\n", setup.label);
            }
        }

        // Shadow updates via REST.
        let mut header = vec![format!(
            "REST shadow update, {} devices, {:.0}/s for {:.0} s",
            self.devices, self.rate, self.duration_s
        )];
        header.extend(self.setups.iter().map(|s| match (&s.updates, s.kind) {
            (Some(u), SetupKind::Cluster) => {
                format!("{} (REST on {}, devices on node 1)", s.label, u.node)
            }
            _ => s.label.clone(),
        }));
        let updates: Vec<Option<&UpdatePhase>> =
            self.setups.iter().map(|s| s.updates.as_ref()).collect();
        let cells = |f: &dyn Fn(&UpdatePhase) -> String| -> Vec<String> {
            updates
                .iter()
                .map(|u| u.map(f).unwrap_or_else(|| "-".into()))
                .collect()
        };
        let mut rows = vec![
            (
                "load average at the setup's start".to_string(),
                self.setups.iter().map(|s| s.load_average.clone()).collect(),
            ),
            (
                "sent / REST 200 / deltas received (errors)".to_string(),
                cells(&|u| {
                    format!(
                        "{} / {} / {} ({})",
                        u.offered, u.rest_ok, u.deltas, u.rest_errors
                    )
                }),
            ),
            (
                "REST reply p50 / p99".to_string(),
                cells(&|u| format!("{} / {}", ms(u.rest.p50_us), ms(u.rest.p99_us))),
            ),
            (
                "`Shadow.Delta` at the device p50 / p99 / max".to_string(),
                cells(&|u| {
                    format!(
                        "{} / {} / {}",
                        ms(u.delta.p50_us),
                        ms(u.delta.p99_us),
                        ms(u.delta.max_us)
                    )
                }),
            ),
        ];
        let idle: Vec<Option<&Cost>> = self.setups.iter().map(|s| s.idle.as_ref()).collect();
        let costs: Vec<(Option<&Cost>, Option<&Cost>)> = updates
            .iter()
            .zip(&idle)
            .map(|(u, idle)| (u.map(|u| &u.cost), *idle))
            .collect();
        cost_rows(&mut rows, &costs, "update");
        rows.push((
            "background CPU with the devices idle, per second (all processes)".to_string(),
            idle.iter()
                .map(|c| {
                    c.map(|c| format!("{:.1} ms", c.total_us / 1000.0))
                        .unwrap_or_else(|| "-".into())
                })
                .collect(),
        ));
        table(&mut out, &header, &rows);

        // Echo RPC.
        let mut columns: Vec<(String, &RpcPhase, Option<&Cost>)> = Vec::new();
        for setup in &self.setups {
            for rpc in &setup.rpc {
                let name = match setup.kind {
                    SetupKind::Cluster if rpc.remote => {
                        format!("C: on {} (devices on node 1: crosses NATS)", rpc.node)
                    }
                    SetupKind::Cluster => format!("C: on {} (holds the devices)", rpc.node),
                    _ => setup.label.clone(),
                };
                columns.push((name, rpc, setup.idle.as_ref()));
            }
        }
        if !columns.is_empty() {
            let mut header = vec![format!(
                "`POST /devices/:id/rpc/Echo`, {} calls",
                self.rpc_calls
            )];
            header.extend(columns.iter().map(|(name, _, _)| name.clone()));
            let cells = |f: &dyn Fn(&RpcPhase) -> String| -> Vec<String> {
                columns.iter().map(|(_, r, _)| f(r)).collect()
            };
            let mut rows = vec![
                (
                    "sequential: p50 / p99 / max".to_string(),
                    cells(&|r| {
                        format!(
                            "{} / {} / {}",
                            ms(r.sequential.p50_us),
                            ms(r.sequential.p99_us),
                            ms(r.sequential.max_us)
                        )
                    }),
                ),
                (
                    format!("{} in flight: p50 / p99, calls/s", self.rpc_concurrency),
                    cells(&|r| {
                        format!(
                            "{} / {}, {:.0}/s",
                            ms(r.concurrent.p50_us),
                            ms(r.concurrent.p99_us),
                            r.concurrent_per_s
                        )
                    }),
                ),
                (
                    "errors".to_string(),
                    cells(&|r| match &r.first_error {
                        Some(e) => format!("{} ({e:.80})", r.errors),
                        None => r.errors.to_string(),
                    }),
                ),
            ];
            let costs: Vec<(Option<&Cost>, Option<&Cost>)> = columns
                .iter()
                .map(|(_, r, idle)| (Some(&r.concurrent_cost), *idle))
                .collect();
            let mut cost_table = Vec::new();
            cost_rows(&mut cost_table, &costs, "call");
            for (name, cells) in cost_table {
                rows.push((
                    format!("{name} ({} in flight)", self.rpc_concurrency),
                    cells,
                ));
            }
            rows.push((
                "all processes, CPU per call (sequential); less the idle background".to_string(),
                columns
                    .iter()
                    .map(|(_, r, idle)| {
                        format!(
                            "{}; {}",
                            us(r.sequential_cost.total_us),
                            opt(net_of_idle(&r.sequential_cost, *idle), us)
                        )
                    })
                    .collect(),
            ));
            table(&mut out, &header, &rows);
        }

        // Fan-out.
        let mut columns: Vec<(String, &FanoutPhase, Option<&Cost>)> = Vec::new();
        for setup in &self.setups {
            for fanout in &setup.fanout {
                let name = match setup.kind {
                    SetupKind::Cluster if fanout.remote => {
                        format!("C: consumers on {} (devices on node 1)", fanout.node)
                    }
                    SetupKind::Cluster => {
                        format!("C: consumers on {}, with the devices", fanout.node)
                    }
                    _ => setup.label.clone(),
                };
                columns.push((name, fanout, setup.idle.as_ref()));
            }
        }
        if !columns.is_empty() {
            let mut header = vec![format!(
                "notify fan-out: {} consumers, devices report {:.0}/s for {:.0} s",
                self.consumers, self.report_rate, self.fanout_duration_s
            )];
            header.extend(columns.iter().map(|(name, _, _)| name.clone()));
            let cells = |f: &dyn Fn(&FanoutPhase) -> String| -> Vec<String> {
                columns.iter().map(|(_, r, _)| f(r)).collect()
            };
            let mut rows = vec![
                (
                    "delivered / expected (lagged drops)".to_string(),
                    cells(&|f| format!("{} / {} ({})", f.delivered, f.expected, f.lagged_dropped)),
                ),
                (
                    "deliveries/s".to_string(),
                    cells(&|f| format!("{:.0}", f.deliveries_per_s)),
                ),
                (
                    "delivery latency p50 / p99 / max".to_string(),
                    cells(&|f| {
                        format!(
                            "{} / {} / {}",
                            ms(f.delivery.p50_us),
                            ms(f.delivery.p99_us),
                            ms(f.delivery.max_us)
                        )
                    }),
                ),
                (
                    "device report round trip p50 / p99 (errors)".to_string(),
                    cells(&|f| {
                        format!(
                            "{} / {} ({})",
                            ms(f.report_rtt.p50_us),
                            ms(f.report_rtt.p99_us),
                            f.report_errors
                        )
                    }),
                ),
            ];
            let costs: Vec<(Option<&Cost>, Option<&Cost>)> = columns
                .iter()
                .map(|(_, f, idle)| (Some(&f.cost), *idle))
                .collect();
            cost_rows(&mut rows, &costs, "report");
            table(&mut out, &header, &rows);
        }

        let mut notes = Vec::new();
        for setup in &self.setups {
            for note in &setup.notes {
                notes.push(format!("- {}: {note}", setup.label));
            }
            if let Some(u) = &setup.updates {
                if let Some(e) = &u.first_error {
                    notes.push(format!("- {}: first REST update error: {e}", setup.label));
                }
                if u.other_deltas > 0 {
                    notes.push(format!(
                        "- {}: {} deltas carried an `n` no longer awaited",
                        setup.label, u.other_deltas
                    ));
                }
            }
            for f in &setup.fanout {
                if let Some(e) = &f.first_error {
                    notes.push(format!(
                        "- {} ({}): consumer error: {e}",
                        setup.label, f.node
                    ));
                }
            }
        }
        if !notes.is_empty() {
            out.push_str("Notes:\n\n");
            out.push_str(&notes.join("\n"));
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_divides_ticks_by_operations() {
        let before = Reading {
            at: None,
            servers: vec![100, 200],
            postgres: 50,
            nats: 10,
            nats_counters: Some(NatsCounters::default()),
            pg: Some(PgCounters {
                next_xid: 1000,
                wal_bytes: 0,
            }),
        };
        let after = Reading {
            at: None,
            servers: vec![110, 205],
            postgres: 60,
            nats: 12,
            nats_counters: Some(NatsCounters {
                in_msgs: 300,
                out_msgs: 500,
                in_bytes: 0,
                out_bytes: 0,
            }),
            pg: Some(PgCounters {
                next_xid: 1100,
                wal_bytes: 50_000,
            }),
        };
        let cost = Cost::between(&before, &after, 100);
        assert_eq!(cost.server_us, vec![1000.0, 500.0]);
        assert_eq!(cost.postgres_us, Some(1000.0));
        assert_eq!(cost.nats_us, Some(200.0));
        assert_eq!(cost.total_us, 2700.0);
        assert_eq!(cost.nats_in_msgs, Some(3.0));
        assert_eq!(cost.nats_out_msgs, Some(5.0));
        assert_eq!(cost.pg_write_xacts, Some(1.0));
        assert_eq!(cost.pg_wal_bytes, Some(500.0));
        assert_eq!(servers_us(&cost), "1500 µs (1000 + 500)");
    }

    #[test]
    fn schedule_keeps_the_timeline() {
        let start = Instant::now();
        let mut seen = Vec::new();
        schedule(1000.0, 5, start, |index, scheduled, offset| {
            assert_eq!(scheduled, start + offset);
            assert!(Instant::now() >= scheduled);
            seen.push(index);
        });
        assert_eq!(seen, vec![0, 1, 2, 3, 4]);
        assert!(start.elapsed() >= Duration::from_millis(4));
    }

    #[test]
    fn deltas_are_matched_by_n() {
        let shared = FleetShared::default();
        shared
            .awaited
            .lock()
            .expect("not poisoned")
            .insert(7, Instant::now());
        on_delta(&json!({"state": {"n": 7}, "version": 3}), &shared);
        on_delta(&json!({"state": {"n": 7}, "version": 4}), &shared);
        assert_eq!(shared.deltas_matched.load(Ordering::SeqCst), 1);
        assert_eq!(shared.deltas_other.load(Ordering::SeqCst), 1);
        assert_eq!(FleetShared::take(&shared.deltas).len(), 1);
    }
}
