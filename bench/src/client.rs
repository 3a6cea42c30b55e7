//! A client shard: holds a share of the device sockets and runs load phases on them,
//! taking [`Command`]s from stdin and answering with [`Event`]s on stdout.
//!
//! Each device is one task owning its socket. Load is open-loop: the shard schedules
//! every send on a fixed timeline and a reply's latency counts from the scheduled time,
//! not from when the send happened, so a stalled peer shows up as latency instead of
//! silently lowering the offered rate (coordinated omission).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::de::IgnoredAny;
use serde::Deserialize;
use tokio::io::AsyncBufReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub mod mqtt;

use crate::latency;
use crate::shard::{Command, Event, LoadKind, PeerKind};
use crate::unix_nanos;

type Socket = WebSocketStream<TcpStream>;

/// Small buffers: a shard holds thousands of idle sockets and the frames are tiny, so
/// tungstenite's 128 KiB defaults would only cost memory the server needs.
pub fn lean_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(1 << 20)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

/// Reads commands until `Close` or end of input (the driver went away), then exits.
pub async fn run() -> Result<()> {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut fleet = Fleet::default();
    while let Some(line) = lines.next_line().await.context("reading commands")? {
        let command: Command = match serde_json::from_str(&line) {
            Ok(command) => command,
            Err(error) => {
                emit(&Event::Failed {
                    message: format!("bad command: {error}"),
                })?;
                continue;
            }
        };
        let event = match command {
            Command::Connect {
                url,
                tokens,
                source_ip,
                peer,
                shadow_bytes,
                concurrency,
                timeout_ms,
            } => {
                let spec = ConnectSpec {
                    url,
                    source_ip,
                    peer,
                    shadow_bytes,
                    concurrency: concurrency.max(1),
                    timeout: Duration::from_millis(timeout_ms),
                };
                fleet.connect(spec, tokens).await.unwrap_or_else(failed)
            }
            Command::Load {
                kind,
                rate,
                duration_ms,
                start_unix_ns,
                drain_ms,
            } => fleet
                .load(
                    kind,
                    rate,
                    Duration::from_millis(duration_ms),
                    start_unix_ns,
                    Duration::from_millis(drain_ms),
                )
                .await
                .unwrap_or_else(failed),
            Command::Close => {
                fleet.close().await;
                emit(&Event::Closed)?;
                return Ok(());
            }
        };
        emit(&event)?;
    }
    Ok(())
}

fn failed(error: anyhow::Error) -> Event {
    Event::Failed {
        message: format!("{error:#}"),
    }
}

fn emit(event: &Event) -> Result<()> {
    let line = serde_json::to_string(event)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

struct ConnectSpec {
    url: String,
    source_ip: String,
    peer: PeerKind,
    shadow_bytes: usize,
    concurrency: usize,
    timeout: Duration,
}

/// State the device tasks share with the shard.
#[derive(Default)]
struct Shared {
    ready: AtomicUsize,
    disconnected: AtomicUsize,
    live: AtomicUsize,
    changed: Notify,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn note_error(&self, error: String) {
        let mut first = self
            .first_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        first.get_or_insert(error);
    }
}

/// Counters of one load phase. Replies that arrive after the phase was reported land
/// here too, so they can never leak into the next phase's histogram.
struct Phase {
    histogram: Mutex<Histogram<u64>>,
    dispatched: AtomicU64,
    sent: AtomicU64,
    replied: AtomicU64,
    errors: AtomicU64,
    probe_seq: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Scheduled start of the phase, the origin of `window_max`.
    start: Instant,
    /// Worst latency (µs) of the requests scheduled in each window of
    /// [`TIMELINE_WINDOW`]: shows whether a tail comes from one stall or from all along.
    window_max: Vec<AtomicU64>,
}

/// Width of one timeline window.
pub const TIMELINE_WINDOW: Duration = Duration::from_millis(100);

impl Phase {
    fn new(start: Instant, duration: Duration) -> Self {
        let windows = (duration.as_millis() / TIMELINE_WINDOW.as_millis()) as usize + 1;
        Self {
            start,
            window_max: (0..windows).map(|_| AtomicU64::new(0)).collect(),
            histogram: Mutex::new(latency::new_histogram()),
            dispatched: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            replied: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            probe_seq: AtomicU64::new(0),
            first_error: Mutex::new(None),
        }
    }

    fn error(&self, message: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self
            .first_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        first.get_or_insert(message);
    }

    fn record(&self, scheduled: Instant, nanos: u64) {
        let offset = scheduled.saturating_duration_since(self.start);
        let window = (offset.as_millis() / TIMELINE_WINDOW.as_millis()) as usize;
        if let Some(max) = self.window_max.get(window) {
            max.fetch_max(nanos / 1000, Ordering::Relaxed);
        }
        let mut histogram = self
            .histogram
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        latency::record_nanos(&mut histogram, nanos);
    }
}

/// The send timeline of one load phase.
struct Schedule {
    kind: LoadKind,
    rate: f64,
    count: u64,
    start: Instant,
    start_unix_ns: u64,
    seq_base: u64,
}

impl Schedule {
    /// Hands every send to its device at its scheduled time, round-robin over the
    /// devices. Sends that are due go out at once with their original schedule time,
    /// so lateness of this loop is charged to the measured latency.
    fn run(&self, devices: &[UnboundedSender<DeviceCommand>], phase: &Arc<Phase>) {
        let mut index = 0u64;
        while index < self.count {
            let now = Instant::now();
            while index < self.count {
                let offset = Duration::from_secs_f64(index as f64 / self.rate);
                let scheduled = self.start + offset;
                if scheduled > now {
                    break;
                }
                let device = &devices[(index % devices.len() as u64) as usize];
                let command = match self.kind {
                    LoadKind::Update => DeviceCommand::Update {
                        seq: self.seq_base + index + 1,
                        scheduled,
                        phase: phase.clone(),
                    },
                    LoadKind::Ping => DeviceCommand::Ping {
                        scheduled_unix_ns: self
                            .start_unix_ns
                            .saturating_add(duration_nanos(offset)),
                        phase: phase.clone(),
                    },
                };
                phase.dispatched.fetch_add(1, Ordering::Relaxed);
                if device.send(command).is_err() {
                    phase.error("device socket closed".into());
                }
                index += 1;
            }
            if index < self.count {
                let next = self.start + Duration::from_secs_f64(index as f64 / self.rate);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        }
    }
}

enum DeviceCommand {
    Update {
        seq: u64,
        scheduled: Instant,
        phase: Arc<Phase>,
    },
    Ping {
        scheduled_unix_ns: u64,
        phase: Arc<Phase>,
    },
}

#[derive(Default)]
struct Fleet {
    /// Index = token index within this shard; `None` where the connect failed.
    devices: Vec<Option<UnboundedSender<DeviceCommand>>>,
    shared: Arc<Shared>,
    /// Keeps `reported.seq` increasing across phases, so the persisted value tells
    /// which update the server applied last.
    next_seq: u64,
}

impl Fleet {
    async fn connect(&mut self, spec: ConnectSpec, tokens: Vec<String>) -> Result<Event> {
        if spec.peer == PeerKind::Mqtt {
            return self.connect_mqtt(spec, tokens).await;
        }
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started + spec.timeout);
        let source: IpAddr = spec.source_ip.parse().context("source_ip")?;
        let target = loopback_target(&spec.url)?;
        if !source.is_loopback() {
            bail!("source address {source} is not a loopback address");
        }
        let initial = initial_reported(spec.shadow_bytes);
        let count = tokens.len();
        self.devices = (0..count).map(|_| None).collect();
        let url = spec.url.as_str();
        let mut attempts = futures_util::stream::iter(tokens.into_iter().enumerate())
            .map(|(index, token)| async move {
                let opened =
                    tokio::time::timeout_at(deadline, open(url, target, &token, source)).await;
                (
                    index,
                    opened.unwrap_or_else(|_| Err(anyhow!("connect timed out"))),
                )
            })
            .buffer_unordered(spec.concurrency);
        let mut connected = 0;
        let mut failed = 0;
        while let Some((index, opened)) = attempts.next().await {
            match opened {
                Ok(socket) => {
                    connected += 1;
                    let (sender, receiver) = unbounded_channel();
                    self.devices[index] = Some(sender);
                    let device = Device {
                        peer: spec.peer,
                        shared: self.shared.clone(),
                        probe: index == 0,
                        pending: VecDeque::new(),
                        next_id: 1,
                        info_done: spec.peer == PeerKind::Echo,
                        shadow_done: false,
                        counted_ready: false,
                    };
                    self.shared.live.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(device.run(socket, receiver, initial.clone()));
                }
                Err(error) => {
                    failed += 1;
                    self.shared.note_error(format!("connect: {error:#}"));
                }
            }
        }
        drop(attempts);
        Ok(self.await_idle(started, deadline, connected, failed).await)
    }

    /// [`Fleet::connect`] for MQTT clients of a broker: the tokens are client ids.
    async fn connect_mqtt(&mut self, spec: ConnectSpec, tokens: Vec<String>) -> Result<Event> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started + spec.timeout);
        let source: IpAddr = spec.source_ip.parse().context("source_ip")?;
        let target = mqtt::loopback_target(&spec.url)?;
        if !source.is_loopback() {
            bail!("source address {source} is not a loopback address");
        }
        let initial = initial_reported(spec.shadow_bytes);
        let count = tokens.len();
        self.devices = (0..count).map(|_| None).collect();
        let mut attempts = futures_util::stream::iter(tokens.into_iter().enumerate())
            .map(|(index, client_id)| async move {
                let opened =
                    tokio::time::timeout_at(deadline, mqtt::open(target, &client_id, source))
                        .await
                        .unwrap_or_else(|_| Err(anyhow!("connect timed out")));
                (index, client_id, opened)
            })
            .buffer_unordered(spec.concurrency);
        let mut connected = 0;
        let mut failed = 0;
        while let Some((index, client_id, opened)) = attempts.next().await {
            match opened {
                Ok(stream) => {
                    connected += 1;
                    let (sender, receiver) = unbounded_channel();
                    self.devices[index] = Some(sender);
                    let device = mqtt::MqttDevice::new(self.shared.clone(), client_id, index == 0);
                    self.shared.live.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(device.run(stream, receiver, initial.clone()));
                }
                Err(error) => {
                    failed += 1;
                    self.shared.note_error(format!("connect: {error:#}"));
                }
            }
        }
        drop(attempts);
        Ok(self.await_idle(started, deadline, connected, failed).await)
    }

    /// Waits until every connected device is idle (or gone), bounded by `deadline`: the
    /// peer's connect work must be over before memory is read.
    async fn await_idle(
        &self,
        started: Instant,
        deadline: tokio::time::Instant,
        connected: usize,
        failed: usize,
    ) -> Event {
        loop {
            let notified = self.shared.changed.notified();
            let settled = self.shared.ready.load(Ordering::SeqCst)
                + self.shared.disconnected.load(Ordering::SeqCst);
            if settled >= connected || tokio::time::Instant::now() >= deadline {
                break;
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
        let first_error = self
            .shared
            .first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Event::Connected {
            connected,
            failed,
            ready: self.shared.ready.load(Ordering::SeqCst),
            disconnected: self.shared.disconnected.load(Ordering::SeqCst),
            elapsed_ms: duration_ms(started.elapsed()),
            first_error,
        }
    }

    async fn load(
        &mut self,
        kind: LoadKind,
        rate: f64,
        duration: Duration,
        start_unix_ns: u64,
        drain: Duration,
    ) -> Result<Event> {
        if !(rate.is_finite() && rate > 0.0) {
            bail!("rate must be positive, got {rate}");
        }
        let live: Vec<UnboundedSender<DeviceCommand>> =
            self.devices.iter().flatten().cloned().collect();
        if live.is_empty() {
            bail!("no connected devices");
        }
        let start = instant_at(start_unix_ns);
        let phase = Arc::new(Phase::new(start, duration));
        // The count bounds the phase however slow the peer is.
        let count = (rate * duration.as_secs_f64()).round() as u64;
        let schedule = Schedule {
            kind,
            rate,
            count,
            start,
            start_unix_ns,
            seq_base: self.next_seq,
        };
        self.next_seq += count;
        // The timeline runs on its own thread: tokio's timer ticks in whole
        // milliseconds, which would add up to a millisecond to every measured latency,
        // while a thread sleep overshoots by tens of microseconds.
        let scheduling = phase.clone();
        tokio::task::spawn_blocking(move || schedule.run(&live, &scheduling))
            .await
            .context("scheduler thread")?;
        // Wait for the replies (update) or for the writes (ping), bounded by `drain`.
        let deadline = Instant::now() + drain;
        loop {
            let dispatched = phase.dispatched.load(Ordering::Relaxed);
            let done = match kind {
                LoadKind::Update => phase.replied.load(Ordering::Relaxed),
                LoadKind::Ping => phase.sent.load(Ordering::Relaxed),
            } + phase.errors.load(Ordering::Relaxed);
            if done >= dispatched || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let dispatched = phase.dispatched.load(Ordering::Relaxed);
        let sent = phase.sent.load(Ordering::Relaxed);
        let replied = phase.replied.load(Ordering::Relaxed);
        let errors = phase.errors.load(Ordering::Relaxed);
        let unanswered = match kind {
            LoadKind::Update => dispatched.saturating_sub(replied + errors),
            LoadKind::Ping => dispatched.saturating_sub(sent + errors),
        };
        let buckets = {
            let histogram = phase.histogram.lock().unwrap_or_else(|p| p.into_inner());
            latency::to_buckets(&histogram)
        };
        let probe_seq = phase.probe_seq.load(Ordering::Relaxed);
        let probe = (probe_seq > 0).then_some((0, probe_seq));
        let first_error = phase
            .first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok(Event::LoadDone {
            sent,
            replied,
            errors,
            unanswered,
            disconnected: self.shared.disconnected.load(Ordering::SeqCst),
            buckets,
            probe,
            first_error,
            window_max_us: phase
                .window_max
                .iter()
                .map(|w| w.load(Ordering::Relaxed))
                .collect(),
        })
    }

    async fn close(&mut self) {
        // Dropping the senders ends each device task, which closes its socket.
        self.devices.clear();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let notified = self.shared.changed.notified();
            if self.shared.live.load(Ordering::SeqCst) == 0
                || tokio::time::Instant::now() >= deadline
            {
                return;
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }
}

/// The socket address of a `ws://` URL, refused unless it is on 127.0.0.0/8 or ::1:
/// this harness must never send load anywhere else.
pub fn loopback_target(url: &str) -> Result<SocketAddr> {
    let request = url
        .into_client_request()
        .with_context(|| format!("bad url {url}"))?;
    let authority = request
        .uri()
        .authority()
        .ok_or_else(|| anyhow!("url {url} has no host"))?;
    let address: SocketAddr = authority
        .as_str()
        .parse()
        .with_context(|| format!("url {url} must name an IP address and port"))?;
    if !address.ip().is_loopback() {
        bail!("refusing non-loopback target {address}");
    }
    Ok(address)
}

async fn open(url: &str, target: SocketAddr, token: &str, source: IpAddr) -> Result<Socket> {
    let request = format!("{url}?access_token={token}").into_client_request()?;
    let socket = TcpSocket::new_v4()?;
    socket
        .bind(SocketAddr::new(source, 0))
        .with_context(|| format!("bind {source}"))?;
    let stream = socket.connect(target).await.context("tcp connect")?;
    // Frames are small and latency is what is measured: do not let Nagle hold them.
    stream.set_nodelay(true)?;
    let (socket, _response) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(lean_config()))
            .await
            .context("handshake")?;
    Ok(socket)
}

/// The initial `reported` object, padded so its JSON is about `bytes` long.
fn initial_reported(bytes: usize) -> String {
    let skeleton = r#"{"app":"bench","seq":0,"pad":""}"#;
    let pad = "x".repeat(bytes.saturating_sub(skeleton.len()));
    format!(r#"{{"app":"bench","seq":0,"pad":"{pad}"}}"#)
}

fn update_frame(id: u64, reported: &str) -> String {
    format!(
        r#"{{"id":{id},"method":"Dash.Shadow.Update","params":{{"state":{{"reported":{reported}}}}}}}"#
    )
}

/// Which of a device's own requests a reply belongs to.
enum Purpose {
    Initial,
    Load { phase: Arc<Phase>, seq: u64 },
}

struct Pending {
    id: u64,
    since: Instant,
    purpose: Purpose,
}

/// The fields of an incoming frame that decide what it is.
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default, borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(default)]
    result: Present,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// Whether a field was there at all: `"result": null` is a valid reply, which
/// `Option` would not tell apart from a missing field.
#[derive(Default)]
struct Present(bool);

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(deserializer).map(|_| Present(true))
    }
}

struct Device {
    peer: PeerKind,
    shared: Arc<Shared>,
    /// The first device of a shard reports the last acknowledged seq for the check
    /// that acknowledged updates were persisted.
    probe: bool,
    pending: VecDeque<Pending>,
    next_id: u64,
    info_done: bool,
    shadow_done: bool,
    counted_ready: bool,
}

impl Device {
    async fn run(
        mut self,
        socket: Socket,
        commands: UnboundedReceiver<DeviceCommand>,
        initial: String,
    ) {
        let shared = self.shared.clone();
        if let Err(error) = self.serve(socket, commands, &initial).await {
            shared.disconnected.fetch_add(1, Ordering::SeqCst);
            shared.note_error(format!("device socket: {error:#}"));
        }
        shared.live.fetch_sub(1, Ordering::SeqCst);
        shared.changed.notify_waiters();
    }

    /// Returns `Ok` when the shard closed the socket, `Err` when the peer did or the
    /// socket failed.
    async fn serve(
        &mut self,
        mut socket: Socket,
        mut commands: UnboundedReceiver<DeviceCommand>,
        initial: &str,
    ) -> Result<()> {
        let id = self.take_id();
        socket
            .send(Message::text(update_frame(id, initial)))
            .await?;
        self.pending.push_back(Pending {
            id,
            since: Instant::now(),
            purpose: Purpose::Initial,
        });
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    None => {
                        // Best effort: the shard is going away either way.
                        let _ = socket.close(None).await;
                        return Ok(());
                    }
                    Some(DeviceCommand::Update { seq, scheduled, phase }) => {
                        let id = self.take_id();
                        let frame = update_frame(id, &format!(r#"{{"seq":{seq}}}"#));
                        if let Err(error) = socket.send(Message::text(frame)).await {
                            phase.error(format!("send: {error}"));
                            return Err(error.into());
                        }
                        phase.sent.fetch_add(1, Ordering::Relaxed);
                        self.pending.push_back(Pending { id, since: scheduled, purpose: Purpose::Load { phase, seq } });
                    }
                    Some(DeviceCommand::Ping { scheduled_unix_ns, phase }) => {
                        let frame = format!(r#"{{"method":"Bench.Ping","params":{{"t":{scheduled_unix_ns}}}}}"#);
                        if let Err(error) = socket.send(Message::text(frame)).await {
                            phase.error(format!("send: {error}"));
                            return Err(error.into());
                        }
                        phase.sent.fetch_add(1, Ordering::Relaxed);
                    }
                },
                message = socket.next() => {
                    let message = match message {
                        None => bail!("closed by peer"),
                        Some(message) => message?,
                    };
                    match message {
                        Message::Text(text) => {
                            if let Some(reply) = self.on_frame(text.as_str()) {
                                socket.send(Message::text(reply)).await?;
                            }
                        }
                        Message::Close(frame) => bail!("peer sent close: {frame:?}"),
                        // Pings are answered by tungstenite itself.
                        _ => {}
                    }
                }
            }
        }
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Handles one frame; returns a frame to send back, if any.
    fn on_frame(&mut self, text: &str) -> Option<String> {
        let frame: Incoming = match serde_json::from_str(text) {
            Ok(frame) => frame,
            Err(error) => {
                self.shared
                    .note_error(format!("unparsable frame from peer ({error}): {text:.200}"));
                return None;
            }
        };
        match self.peer {
            PeerKind::Server if frame.result.0 || frame.error.is_some() => {
                let id = frame.id.as_ref().and_then(serde_json::Value::as_u64)?;
                self.complete(id, frame.error.as_ref());
                None
            }
            PeerKind::Server => {
                // A request from the server; notifications (no id) need no answer.
                let id = frame.id?;
                let result = match frame.method.as_deref() {
                    Some("Sys.GetInfo") => {
                        self.info_done = true;
                        self.check_ready();
                        serde_json::json!({"app": "bench", "fw_version": "1.0", "arch": "x86_64"})
                    }
                    _ => serde_json::Value::Null,
                };
                Some(serde_json::json!({"id": id, "result": result}).to_string())
            }
            // MQTT devices are `mqtt::MqttDevice`s and never get here.
            PeerKind::Echo | PeerKind::Mqtt => {
                let id = frame.id.as_ref().and_then(serde_json::Value::as_u64)?;
                self.complete(id, None);
                None
            }
        }
    }

    fn complete(&mut self, id: u64, error: Option<&serde_json::Value>) {
        let Some(position) = self.pending.iter().position(|p| p.id == id) else {
            self.shared.note_error(format!("reply to unknown id {id}"));
            return;
        };
        let Some(pending) = self.pending.remove(position) else {
            return;
        };
        match pending.purpose {
            Purpose::Initial => match error {
                None => {
                    self.shadow_done = true;
                    self.check_ready();
                }
                Some(error) => self
                    .shared
                    .note_error(format!("initial shadow report refused: {error}")),
            },
            Purpose::Load { phase, seq } => match error {
                None => {
                    phase.record(pending.since, duration_nanos(pending.since.elapsed()));
                    phase.replied.fetch_add(1, Ordering::Relaxed);
                    if self.probe {
                        phase.probe_seq.fetch_max(seq, Ordering::Relaxed);
                    }
                }
                Some(error) => phase.error(format!("error reply: {error}")),
            },
        }
    }

    fn check_ready(&mut self) {
        // Counted once, even if the server asks for info again later.
        if self.info_done && self.shadow_done && !self.counted_ready {
            self.counted_ready = true;
            self.shared.ready.fetch_add(1, Ordering::SeqCst);
            self.shared.changed.notify_waiters();
        }
    }
}

/// The `Instant` that corresponds to a wall-clock time, so that all shards start a
/// phase together.
fn instant_at(unix_ns: u64) -> Instant {
    let now_unix = unix_nanos();
    let now = Instant::now();
    if unix_ns >= now_unix {
        now + Duration::from_nanos(unix_ns - now_unix)
    } else {
        now.checked_sub(Duration::from_nanos(now_unix - unix_ns))
            .unwrap_or(now)
    }
}

fn duration_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_report_has_requested_size() {
        let reported = initial_reported(200);
        assert_eq!(reported.len(), 200);
        let value: serde_json::Value = serde_json::from_str(&reported).expect("valid JSON");
        assert_eq!(value["app"], "bench");
        let frame: serde_json::Value =
            serde_json::from_str(&update_frame(7, &reported)).expect("valid JSON");
        assert_eq!(frame["id"], 7);
        assert_eq!(frame["params"]["state"]["reported"]["seq"], 0);
    }

    #[test]
    fn only_loopback_targets_are_accepted() {
        assert!(loopback_target("ws://127.0.0.1:9000/api/v2/rpc").is_ok());
        assert!(loopback_target("ws://127.3.4.5:9000/x").is_ok());
        assert!(loopback_target("ws://10.0.0.1:9000/x").is_err());
        assert!(loopback_target("ws://example.com:9000/x").is_err());
    }

    #[test]
    fn result_null_counts_as_reply() {
        let frame: Incoming = serde_json::from_str(r#"{"id":3,"result":null}"#).expect("parses");
        assert!(frame.result.0);
        let frame: Incoming =
            serde_json::from_str(r#"{"id":3,"method":"Sys.GetInfo"}"#).expect("parses");
        assert!(!frame.result.0);
        assert_eq!(frame.method.as_deref(), Some("Sys.GetInfo"));
    }

    #[test]
    fn server_requests_are_answered_and_replies_completed() {
        let mut device = Device {
            peer: PeerKind::Server,
            shared: Arc::new(Shared::default()),
            probe: true,
            pending: VecDeque::new(),
            next_id: 1,
            info_done: false,
            shadow_done: false,
            counted_ready: false,
        };
        device.pending.push_back(Pending {
            id: 1,
            since: Instant::now(),
            purpose: Purpose::Initial,
        });
        let reply = device
            .on_frame(r#"{"id":1,"method":"Sys.GetInfo"}"#)
            .expect("answers GetInfo");
        let reply: serde_json::Value = serde_json::from_str(&reply).expect("valid JSON");
        assert_eq!(reply["id"], 1);
        assert_eq!(reply["result"]["app"], "bench");
        assert_eq!(device.shared.ready.load(Ordering::SeqCst), 0);
        assert!(device
            .on_frame(r#"{"id":1,"result":{"version":1}}"#)
            .is_none());
        assert_eq!(device.shared.ready.load(Ordering::SeqCst), 1);
        let delta = device
            .on_frame(r#"{"id":9,"method":"Shadow.Delta","params":{}}"#)
            .expect("answers");
        assert_eq!(delta, r#"{"id":9,"result":null}"#);
    }
}
