//! The abuse benchmark: what well-behaved devices see while another device floods the
//! server (PROTOCOL §11 device limits).
//!
//! The driver starts `herd-server` on a fresh data directory, connects `--devices` devices
//! that send `Dash.Shadow.Update` at a fixed total rate (open loop: latency counts from the
//! scheduled send time), and measures their round trips in three phases of equal length:
//! alone, while flooders send small `Log` notifications as fast as their sockets take them,
//! and while flooders send 64 KiB frames. A flooder that is dropped reconnects at once, as
//! a broken device would, so the quarantine's 429 answers are part of the load.
//!
//! ```text
//! cargo build --release -p herd-server -p herd-bench
//! target/release/herd-flood-bench --devices 1000 --rate 1000 --duration 10s
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::driver::{create_devices, CreatedDevice, ServerProcess};
use crate::procfs;

/// What to run.
#[derive(Debug, Clone, clap::Args)]
pub struct FloodArgs {
    /// Well-behaved devices.
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// Their shadow updates per second, in total.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Flooding devices in the flood phases.
    #[arg(long, default_value_t = 1)]
    pub flooders: usize,
    /// Length of each phase.
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    pub duration: Duration,
    /// herd-server binary [default: next to this binary].
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
}

/// The figures of one phase.
#[derive(Debug, Clone)]
pub struct Phase {
    pub name: &'static str,
    pub sent: u64,
    pub replied: u64,
    pub errors: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// Server CPU time over the phase, in seconds.
    pub server_cpu_s: f64,
    /// What the flooders managed: frames written, connections accepted, connections
    /// refused (429 and others).
    pub flood_frames: u64,
    pub flood_connects: u64,
    pub flood_refusals: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Flood {
    Messages,
    Bytes,
}

#[derive(Default)]
struct FloodCounters {
    frames: AtomicU64,
    connects: AtomicU64,
    refusals: AtomicU64,
}

/// Replies of the well-behaved devices.
struct Recorder {
    histogram: Mutex<Histogram<u64>>,
    replied: AtomicU64,
    errors: AtomicU64,
}

impl Recorder {
    fn new() -> Self {
        Recorder {
            histogram: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds")),
            replied: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }
}

/// Runs the three phases.
pub async fn run(args: &FloodArgs) -> Result<Vec<Phase>> {
    let bin = match &args.server_bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe()?
            .parent()
            .ok_or_else(|| anyhow!("no directory for this binary"))?
            .join("herd-server"),
    };
    let server = ServerProcess::start(&bin).await?;
    let http = reqwest::Client::new();
    let devices = create_devices(
        &http,
        &server.base,
        &server.api_key,
        args.devices + args.flooders,
    )
    .await?;
    let (calm, flooding) = devices.split_at(args.devices);
    let socket = format!("ws://{}/api/v2/rpc", server.address);

    let recorder = Arc::new(Mutex::new(Arc::new(Recorder::new())));
    let mut senders = Vec::with_capacity(args.devices);
    for CreatedDevice { token, .. } in calm {
        let (tx, rx) = mpsc::unbounded_channel::<Instant>();
        let ws = connect(&socket, token)
            .await
            .map_err(|e| anyhow!("a well-behaved device cannot connect: {e}"))?;
        tokio::spawn(calm_device(ws, rx, recorder.clone()));
        senders.push(tx);
    }
    // Let the server's connect work (Sys.GetInfo, the stored info) settle.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut phases = Vec::new();
    for (name, flood) in [
        ("alone", None),
        ("one device floods small messages", Some(Flood::Messages)),
        ("one device floods 64 KiB frames", Some(Flood::Bytes)),
    ] {
        let phase_recorder = Arc::new(Recorder::new());
        *recorder.lock().expect("recorder") = phase_recorder.clone();
        let counters = Arc::new(FloodCounters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut flooders = Vec::new();
        if let Some(kind) = flood {
            for CreatedDevice { token, .. } in flooding {
                flooders.push(tokio::spawn(flooder(
                    socket.clone(),
                    token.clone(),
                    kind,
                    counters.clone(),
                    stop.clone(),
                )));
            }
        }
        let cpu_before = procfs::cpu_ticks(server.pid)?;
        let sent = schedule(&senders, args.rate, args.duration).await;
        // Replies still on their way.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let cpu_after = procfs::cpu_ticks(server.pid)?;
        stop.store(true, Ordering::Relaxed);
        for flooder in flooders {
            let _ = flooder.await;
        }
        let histogram = phase_recorder.histogram.lock().expect("histogram").clone();
        phases.push(Phase {
            name,
            sent,
            replied: phase_recorder.replied.load(Ordering::Relaxed),
            errors: phase_recorder.errors.load(Ordering::Relaxed),
            p50_us: histogram.value_at_quantile(0.5),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
            server_cpu_s: (cpu_after - cpu_before) as f64 / 100.0,
            flood_frames: counters.frames.load(Ordering::Relaxed),
            flood_connects: counters.connects.load(Ordering::Relaxed),
            flood_refusals: counters.refusals.load(Ordering::Relaxed),
        });
        // Quarantine lasts longer than a phase; the next phase's flooder starts refused
        // unless released, so release it as an operator would.
        for CreatedDevice { id, .. } in flooding {
            let _ = http
                .post(format!("{}/api/v2/devices/{id}/release", server.base))
                .bearer_auth(&server.api_key)
                .send()
                .await;
        }
    }
    let mut server = server;
    server
        .check_alive()
        .context("the server did not survive the floods")?;
    server.stop().await;
    Ok(phases)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects as the device with `token`; the error is the HTTP status when refused.
async fn connect(url: &str, token: &str) -> Result<Ws, String> {
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    request.headers_mut().insert(
        "Authorization",
        format!("Bearer {token}")
            .parse()
            .map_err(|_| "bad token".to_string())?,
    );
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(format!("HTTP {}", response.status()))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Sends the scheduled updates round-robin; returns how many.
async fn schedule(
    senders: &[mpsc::UnboundedSender<Instant>],
    rate: f64,
    duration: Duration,
) -> u64 {
    let start = Instant::now() + Duration::from_millis(50);
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let total = (duration.as_secs_f64() * rate) as u64;
    for n in 0..total {
        let at = start + interval.mul_f64(n as f64);
        tokio::time::sleep_until(at.into()).await;
        let _ = senders[n as usize % senders.len()].send(at);
    }
    total
}

/// A well-behaved device: answers the server's requests, sends its updates when told, and
/// records each reply's latency from the scheduled time.
async fn calm_device(
    ws: Ws,
    mut schedule: mpsc::UnboundedReceiver<Instant>,
    recorder: Arc<Mutex<Arc<Recorder>>>,
) {
    let (mut write, mut read) = ws.split();
    let mut in_flight: std::collections::HashMap<u64, (Instant, Arc<Recorder>)> =
        std::collections::HashMap::new();
    let mut next_id = 1u64;
    loop {
        tokio::select! {
            at = schedule.recv() => {
                let Some(at) = at else { return };
                let id = next_id;
                next_id += 1;
                let current = recorder.lock().expect("recorder").clone();
                let frame = json!({"id": id, "method": "Dash.Shadow.Update",
                    "params": {"state": {"reported": {"seq": id, "on": id.is_multiple_of(2)}}}});
                if write.send(Message::text(frame.to_string())).await.is_err() {
                    current.errors.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                in_flight.insert(id, (at, current));
            }
            message = read.next() => {
                let Some(Ok(message)) = message else { return };
                let Ok(text) = message.to_text() else { continue };
                let Ok(frame) = serde_json::from_str::<Value>(text) else { continue };
                if let Some(method) = frame.get("method").and_then(Value::as_str) {
                    // The server's own requests (Sys.GetInfo, Shadow.Delta): answer them.
                    if let Some(id) = frame.get("id") {
                        let result = if method == "Sys.GetInfo" {
                            json!({"app": "flood-bench", "fw_version": "1.0"})
                        } else {
                            json!(true)
                        };
                        let _ = write.send(Message::text(json!({"id": id, "result": result}).to_string())).await;
                    }
                    continue;
                }
                let Some(id) = frame.get("id").and_then(Value::as_u64) else { continue };
                if let Some((at, phase)) = in_flight.remove(&id) {
                    if frame.get("error").is_some() {
                        phase.errors.fetch_add(1, Ordering::Relaxed);
                    } else {
                        let us = u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX).max(1);
                        phase.histogram.lock().expect("histogram").saturating_record(us);
                        phase.replied.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

/// A device that writes as fast as its socket takes it, and reconnects at once when
/// dropped or refused.
async fn flooder(
    url: String,
    token: String,
    kind: Flood,
    counters: Arc<FloodCounters>,
    stop: Arc<AtomicBool>,
) {
    let big = "x".repeat(64 * 1024);
    while !stop.load(Ordering::Relaxed) {
        let ws = match connect(&url, &token).await {
            Ok(ws) => ws,
            Err(_) => {
                counters.refusals.fetch_add(1, Ordering::Relaxed);
                // Refused (429 while quarantined): try again soon, as a broken device would.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        counters.connects.fetch_add(1, Ordering::Relaxed);
        let (mut write, mut read) = ws.split();
        // Drain whatever the server sends so that only the flood is measured.
        let reader = tokio::spawn(async move { while let Some(Ok(_)) = read.next().await {} });
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let frame = match kind {
                Flood::Messages => json!({"method": "Log", "params": {"n": n}}).to_string(),
                Flood::Bytes => {
                    json!({"method": "Log", "params": {"n": n, "pad": big}}).to_string()
                }
            };
            if write.send(Message::text(frame)).await.is_err() {
                break;
            }
            counters.frames.fetch_add(1, Ordering::Relaxed);
        }
        reader.abort();
    }
}

/// The result table.
pub fn markdown(args: &FloodArgs, phases: &[Phase]) -> String {
    let mut out = format!(
        "{} well-behaved devices, {} updates/s in total, {} s per phase, {} flooder(s).\n\n",
        args.devices,
        args.rate,
        args.duration.as_secs_f64(),
        args.flooders
    );
    out.push_str("| phase | updates sent / answered / errors | p50 | p99 | p99.9 | max | server CPU | flooder frames written | flooder connects accepted / refused |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|\n");
    let ms = |us: u64| format!("{:.2} ms", us as f64 / 1000.0);
    for phase in phases {
        out.push_str(&format!(
            "| {} | {} / {} / {} | {} | {} | {} | {} | {:.2} s | {} | {} / {} |\n",
            phase.name,
            phase.sent,
            phase.replied,
            phase.errors,
            ms(phase.p50_us),
            ms(phase.p99_us),
            ms(phase.p999_us),
            ms(phase.max_us),
            phase.server_cpu_s,
            phase.flood_frames,
            phase.flood_connects,
            phase.flood_refusals,
        ));
    }
    out
}
