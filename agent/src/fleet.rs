//! Simulated fleets: many devices in one process, each the real engine on a
//! [`MemoryPlatform`], with their own state and a seeded, time-of-day behaviour.
//!
//! [`Fleet::start`] registers the devices through the REST API when they do not exist yet
//! (their tokens are remembered in the data directory, so a rerun reuses them), connects
//! them all and starts one scheduler task that plays the behaviour: people switching
//! lights on and off, most in the morning and the evening; devices dropping off the
//! network for a while; devices power-cycling; and a chosen fraction of devices whose
//! firmware updates crash on first boot and revert ([`FleetHandle::failing_ids`] names
//! them). A speed-up factor lets a simulated day pass in minutes. `herd demo`, the
//! analytics and the load tests run on this.
//!
//! Updates work as on real devices, without running anything: pushed images (PROTOCOL
//! §8) and pulled ones (§10.3, fetched over HTTP with the device token and resumed after
//! a broken connection, through one HTTP client shared by the whole fleet) go through the
//! engine's checks into a simulated slot, and the device reboots into the version the
//! image's header names. [`Behaviour::ota_methods`] makes the devices push-only, like the
//! mDash device library.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use herd_agent::fleet::{Behaviour, Fleet, FleetOptions};
//!
//! let fleet = Fleet::start(FleetOptions {
//!     behaviour: Behaviour { speedup: 360.0, ..Behaviour::default() },
//!     ..FleetOptions::new("http://127.0.0.1:8009", "API-KEY", 100, "/tmp/fleet".into())
//! })
//! .await?;
//! fleet.wait_online(100).await;
//! fleet.shutdown().await;
//! # Ok(()) }
//! ```

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use firmware_core::device::Device;
use firmware_core::memory::MemoryPlatform;
use firmware_core::ota::{ContentHash, ImageInfo, OtaMethods};
use firmware_core::pull::DownloadRequest;
use firmware_core::verify::UpdateKey;
use futures_util::stream::{self, StreamExt};
use herd_client::{Client, NewDevice};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::download::{self, DownloadOptions};
use crate::runner::{BootLoop, Command, DownloadEvent, DownloadFeed, LinkOptions, Observer, Stop};
use crate::storage::write_atomic;

/// How simulated devices behave. Every field has a default; a behaviour file is a JSON
/// object with any of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Behaviour {
    /// Simulated seconds per real second.
    pub speedup: f64,
    /// Simulated hour of day (0-24, UTC) when the fleet starts; `None` is the real time.
    pub start_hour: Option<f64>,
    /// Light switches per device per simulated day, spread by time of day.
    pub switches_per_day: f64,
    /// Network drops per device per simulated day.
    pub flaps_per_day: f64,
    /// How long a drop lasts, in simulated seconds: `[shortest, longest]`.
    pub flap_seconds: [f64; 2],
    /// Power cycles per device per simulated day.
    pub reboots_per_day: f64,
    /// Fraction of devices (0-1) whose firmware updates crash on first boot and revert:
    /// exactly `round(fraction * count)` of them, chosen with the seed.
    pub ota_failure_fraction: f64,
    /// `dash.heartbeat_interval` of the devices, in seconds; 0 sends none.
    pub heartbeat_interval_s: u64,
    /// Which OTA methods the devices offer (`rpc.ota_methods`): `"all"`, or `"push"` for
    /// devices like the mDash device library's (only `OTA.Begin`, `OTA.Write`, `OTA.End`;
    /// new images commit themselves on boot).
    pub ota_methods: OtaMethods,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            speedup: 1.0,
            start_hour: None,
            switches_per_day: 8.0,
            flaps_per_day: 0.5,
            flap_seconds: [5.0, 120.0],
            reboots_per_day: 0.2,
            ota_failure_fraction: 0.1,
            heartbeat_interval_s: 0,
            ota_methods: OtaMethods::All,
        }
    }
}

impl Behaviour {
    /// Devices that connect and then do nothing: the idle-cost baseline.
    pub fn idle() -> Behaviour {
        Behaviour {
            switches_per_day: 0.0,
            flaps_per_day: 0.0,
            reboots_per_day: 0.0,
            ota_failure_fraction: 0.0,
            ..Behaviour::default()
        }
    }

    /// Reads a behaviour file (JSON).
    pub fn load(path: &Path) -> anyhow::Result<Behaviour> {
        let text =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let behaviour: Behaviour = serde_json::from_slice(&text)
            .with_context(|| format!("invalid behaviour file {}", path.display()))?;
        behaviour.validate()?;
        Ok(behaviour)
    }

    /// Checks ranges.
    pub fn validate(&self) -> anyhow::Result<()> {
        let rates = [
            self.switches_per_day,
            self.flaps_per_day,
            self.reboots_per_day,
        ];
        anyhow::ensure!(
            self.speedup.is_finite() && self.speedup > 0.0,
            "speedup must be positive"
        );
        anyhow::ensure!(
            rates.iter().all(|r| r.is_finite() && *r >= 0.0),
            "rates must be non-negative"
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.ota_failure_fraction),
            "ota_failure_fraction must be between 0 and 1"
        );
        anyhow::ensure!(
            self.flap_seconds[0] >= 0.0 && self.flap_seconds[0] <= self.flap_seconds[1],
            "flap_seconds must be [shortest, longest]"
        );
        if let Some(hour) = self.start_hour {
            anyhow::ensure!((0.0..24.0).contains(&hour), "start_hour must be in 0..24");
        }
        Ok(())
    }
}

/// How busy people are with their lights at an hour of the day, relative to the peak.
pub fn activity(hour: f64) -> f64 {
    match hour as u32 {
        0..=5 => 0.05,
        6..=8 => 0.8,
        9..=16 => 0.25,
        17..=22 => 1.0,
        _ => 0.4,
    }
}

/// How likely a switch at this hour turns the light on rather than off.
pub fn on_probability(hour: f64) -> f64 {
    match hour as u32 {
        0..=4 => 0.1,
        5..=8 => 0.7,
        9..=15 => 0.3,
        16..=21 => 0.8,
        _ => 0.2,
    }
}

/// How to run a fleet.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Server base URL, `http://HOST:PORT` (or `https://`).
    pub server: String,
    /// API key that lists and creates the devices.
    pub api_key: String,
    /// Number of devices.
    pub count: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Behaviour.
    pub behaviour: Behaviour,
    /// Where the device tokens are remembered.
    pub data_dir: PathBuf,
    /// Devices are named `<prefix>-0000`, `<prefix>-0001`, ...
    pub prefix: String,
    /// New devices get their names as ids rather than ids the server picks, so that
    /// something written before the fleet exists (a demo's history) can name them.
    pub names_as_ids: bool,
    /// Reconnect policy of every device.
    pub link: LinkOptions,
    /// Whom the REST client, the device sockets and the image downloads trust.
    pub trust: herd_client::tls::Trust,
    /// `update.pubkey` of every device (base64 Ed25519 public key): they then take only
    /// images signed for it (PROTOCOL §10.4).
    pub update_pubkey: Option<String>,
    /// Retry policy of firmware downloads.
    pub download: DownloadOptions,
}

impl FleetOptions {
    /// Defaults for everything but the essentials.
    pub fn new(server: &str, api_key: &str, count: usize, data_dir: PathBuf) -> FleetOptions {
        FleetOptions {
            server: server.into(),
            api_key: api_key.into(),
            count,
            seed: 1,
            behaviour: Behaviour::default(),
            data_dir,
            prefix: "sim".into(),
            names_as_ids: false,
            link: LinkOptions::default(),
            trust: Default::default(),
            update_pubkey: None,
            download: DownloadOptions::default(),
        }
    }
}

/// Counters of a running fleet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetStats {
    /// Devices in the fleet.
    pub devices: usize,
    /// Connected now.
    pub online: usize,
    /// Lights on now.
    pub lights_on: usize,
    /// Connections made.
    pub connects: u64,
    /// Reboots.
    pub reboots: u64,
    /// Firmware updates that crashed and reverted.
    pub ota_crashes: u64,
}

#[derive(Default)]
struct Counters {
    online: AtomicU64,
    lights_on: AtomicU64,
    connects: AtomicU64,
    reboots: AtomicU64,
    ota_crashes: AtomicU64,
}

/// One simulated device as registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimDevice {
    /// Device id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Device token.
    pub token: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TokenFile {
    server: String,
    devices: BTreeMap<String, SimDevice>,
}

/// A running fleet.
pub struct FleetHandle {
    devices: Vec<SimDevice>,
    failing: Vec<bool>,
    changes: watch::Receiver<u64>,
    counters: Arc<Counters>,
    commands: Vec<mpsc::Sender<Command>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl std::fmt::Debug for FleetHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetHandle")
            .field("devices", &self.devices.len())
            .finish_non_exhaustive()
    }
}

impl FleetHandle {
    /// The devices, in index order.
    pub fn devices(&self) -> &[SimDevice] {
        &self.devices
    }

    /// Ids of the devices whose firmware updates crash on first boot and revert
    /// ([`Behaviour::ota_failure_fraction`]), in index order.
    pub fn failing_ids(&self) -> Vec<String> {
        self.devices
            .iter()
            .zip(&self.failing)
            .filter(|(_, fails)| **fails)
            .map(|(device, _)| device.id.clone())
            .collect()
    }

    /// Current counters.
    pub fn stats(&self) -> FleetStats {
        FleetStats {
            devices: self.devices.len(),
            online: self.counters.online.load(Ordering::Relaxed) as usize,
            lights_on: self.counters.lights_on.load(Ordering::Relaxed) as usize,
            connects: self.counters.connects.load(Ordering::Relaxed),
            reboots: self.counters.reboots.load(Ordering::Relaxed),
            ota_crashes: self.counters.ota_crashes.load(Ordering::Relaxed),
        }
    }

    /// Waits until the counters satisfy `predicate`; wakes on every change, not on a timer.
    pub async fn wait_for(&self, mut predicate: impl FnMut(&FleetStats) -> bool) -> FleetStats {
        let mut changes = self.changes.clone();
        loop {
            changes.borrow_and_update();
            let stats = self.stats();
            if predicate(&stats) || changes.changed().await.is_err() {
                return stats;
            }
        }
    }

    /// Waits until at least `n` devices are connected.
    pub async fn wait_online(&self, n: usize) {
        self.wait_for(|stats| stats.online >= n).await;
    }

    /// Waits until at most `n` devices are connected.
    pub async fn wait_offline(&self, n: usize) {
        self.wait_for(|stats| stats.online <= n).await;
    }

    /// Sends a command to device `index` (for tests and `herd demo` scripting).
    pub async fn send(&self, index: usize, command: Command) -> anyhow::Result<()> {
        let sender = self.commands.get(index).context("no such device")?;
        sender
            .send(command)
            .await
            .map_err(|_| anyhow::anyhow!("the device stopped"))
    }

    /// Stops every device and waits for them.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Starts fleets.
#[derive(Debug)]
pub struct Fleet;

impl Fleet {
    /// Registers missing devices, then starts every device and the behaviour scheduler.
    pub async fn start(mut options: FleetOptions) -> anyhow::Result<FleetHandle> {
        options.behaviour.validate()?;
        if let Some(tls) = options.trust.config()? {
            options.link.tls = Some(tls);
        }
        if let Some(key) = &options.update_pubkey {
            if let UpdateKey::Unusable(message) = UpdateKey::from_config(key) {
                anyhow::bail!("{message}");
            }
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        // One client for every device: a fleet of thousands must not hold thousands of
        // connection pools.
        let client = download::http_client(options.link.tls.as_deref())
            .context("cannot build the HTTP client")?;
        let devices = register(&options).await?;
        let socket_url = socket_url(&options.server)?;
        let (changes_tx, changes) = watch::channel(0u64);
        let changes_tx = Arc::new(changes_tx);
        let counters = Arc::new(Counters::default());
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let mut seeds = SmallRng::seed_from_u64(options.seed);
        let failing = pick_failing(
            devices.len(),
            options.behaviour.ota_failure_fraction,
            options.seed,
        );
        let mut commands = Vec::with_capacity(devices.len());
        let mut rngs = Vec::with_capacity(devices.len());
        for (device, &fails_ota) in devices.iter().zip(&failing) {
            let mut rng = SmallRng::seed_from_u64(seeds.random());
            let platform = sim_platform(device, &socket_url, &options, &mut rng);
            let (sender, receiver) = mpsc::channel(4);
            commands.push(sender.clone());
            let observer = FleetObserver {
                changes: changes_tx.clone(),
                counters: counters.clone(),
                up: false,
                light_on: false,
                client: client.clone(),
                download: options.download.clone(),
            };
            tasks.spawn(device_task(
                platform,
                options.link.clone(),
                receiver,
                sender,
                shutdown.clone(),
                observer,
                fails_ota,
                SmallRng::seed_from_u64(rng.random()),
            ));
            rngs.push(rng);
        }
        tasks.spawn(schedule(
            options.behaviour.clone(),
            commands.clone(),
            rngs,
            shutdown.clone(),
        ));
        Ok(FleetHandle {
            devices,
            failing,
            changes,
            counters,
            commands,
            shutdown,
            tasks,
        })
    }
}

/// Which devices' updates fail: exactly `round(fraction * count)` of them, chosen with
/// an RNG of their own so the choice does not shift the devices' behaviour.
fn pick_failing(count: usize, fraction: f64, seed: u64) -> Vec<bool> {
    let wanted = ((fraction.clamp(0.0, 1.0) * count as f64).round() as usize).min(count);
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x0bad_f00d_0bad_f00d);
    let mut failing = vec![false; count];
    for index in rand::seq::index::sample(&mut rng, count, wanted) {
        failing[index] = true;
    }
    failing
}

/// `http://h:p` -> `ws://h:p/api/v2/rpc`.
fn socket_url(server: &str) -> anyhow::Result<String> {
    let server = server.trim().trim_end_matches('/');
    let server = server.strip_suffix("/api/v2").unwrap_or(server);
    if let Some(rest) = server.strip_prefix("http://") {
        Ok(format!("ws://{rest}/api/v2/rpc"))
    } else if let Some(rest) = server.strip_prefix("https://") {
        Ok(format!("wss://{rest}/api/v2/rpc"))
    } else {
        anyhow::bail!("the server must be an http:// or https:// URL, not {server:?}")
    }
}

/// Reuses remembered devices the server still knows and creates the rest.
async fn register(options: &FleetOptions) -> anyhow::Result<Vec<SimDevice>> {
    let mut client_options =
        herd_client::ClientOptions::new(&options.server, Some(options.api_key.clone()));
    client_options.ca_cert = options.trust.ca_cert.clone();
    client_options.tls_fingerprint = options.trust.fingerprint;
    let client = Client::with_options(client_options).context("cannot build the REST client")?;
    let path = options.data_dir.join("fleet-devices.json");
    let mut file: TokenFile = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(error = %e, file = %path.display(), "ignoring an unreadable token file");
            TokenFile::default()
        }),
        Err(_) => TokenFile::default(),
    };
    let known: std::collections::HashSet<String> = client
        .devices()
        .await
        .context("cannot list devices")?
        .into_iter()
        .map(|d| d.id)
        .collect();
    let names: Vec<String> = (0..options.count)
        .map(|i| format!("{}-{i:04}", options.prefix))
        .collect();
    let missing: Vec<String> = names
        .iter()
        .filter(|name| {
            file.devices
                .get(*name)
                .is_none_or(|device| !known.contains(&device.id))
        })
        .cloned()
        .collect();
    if !missing.is_empty() {
        tracing::info!(count = missing.len(), "registering simulated devices");
    }
    let names_as_ids = options.names_as_ids;
    let created: Vec<anyhow::Result<SimDevice>> = stream::iter(missing)
        .map(|name| {
            let client = client.clone();
            async move {
                let device = client
                    .create_device(&NewDevice {
                        name: Some(name.clone()),
                        id: names_as_ids.then(|| name.clone()),
                    })
                    .await
                    .with_context(|| format!("cannot create {name}"))?;
                let token = device.token.context("the server returned no token")?;
                Ok(SimDevice {
                    id: device.id,
                    name,
                    token,
                })
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut failure = None;
    for device in created {
        match device {
            Ok(device) => {
                file.devices.insert(device.name.clone(), device);
            }
            Err(e) => failure = Some(e),
        }
    }
    file.server = options.server.clone();
    // Remember what was created even if some creations failed, so a rerun reuses them.
    let bytes = serde_json::to_vec_pretty(&file)?;
    write_atomic(&path, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
    if let Some(e) = failure {
        return Err(e);
    }
    names
        .iter()
        .map(|name| file.devices.get(name).cloned().context("device missing"))
        .collect()
}

fn sim_platform(
    device: &SimDevice,
    socket_url: &str,
    options: &FleetOptions,
    rng: &mut SmallRng,
) -> MemoryPlatform {
    let behaviour = &options.behaviour;
    let version = "1.0.0";
    let image = ImageInfo {
        app: "herd-light".into(),
        arch: "sim".into(),
        fw_version: version.into(),
        fw_id: ContentHash::of(format!("herd-light {version} sim").as_bytes()).hex(),
    };
    let mut platform = MemoryPlatform::new(image);
    let mac: [u8; 5] = rng.random();
    platform.facts.mac = format!(
        "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0], mac[1], mac[2], mac[3], mac[4]
    );
    // What the bench would have written, plus what the owner set up over the access point.
    let factory = json!({
        "device": {"id": device.id},
        "dash": {
            "enable": true,
            "server": socket_url,
            "token": device.token,
            "heartbeat_interval": behaviour.heartbeat_interval_s,
        },
        "update": {"pubkey": options.update_pubkey.clone().unwrap_or_default()},
        "rpc": {"ota_methods": behaviour.ota_methods.as_str()},
    });
    let user = json!({
        "device": {"name": device.name},
        "wifi": {"sta": {"enable": true, "ssid": "home", "pass": "secret"}, "ap": {"enable": false}},
    });
    platform
        .layers
        .insert("factory", factory.to_string().into_bytes());
    platform
        .layers
        .insert("user", user.to_string().into_bytes());
    platform
}

struct FleetObserver {
    changes: Arc<watch::Sender<u64>>,
    counters: Arc<Counters>,
    up: bool,
    light_on: bool,
    client: reqwest::Client,
    download: DownloadOptions,
}

impl Observer<Device<MemoryPlatform>> for FleetObserver {
    fn connection(&mut self, up: bool) {
        if up == self.up {
            return;
        }
        self.up = up;
        if up {
            self.counters.connects.fetch_add(1, Ordering::Relaxed);
            self.counters.online.fetch_add(1, Ordering::Relaxed);
        } else {
            self.counters.online.fetch_sub(1, Ordering::Relaxed);
        }
        self.bump();
    }

    fn changed(&mut self, device: &mut Device<MemoryPlatform>) {
        let on = device.light_on();
        if on != self.light_on {
            self.light_on = on;
            if on {
                self.counters.lights_on.fetch_add(1, Ordering::Relaxed);
            } else {
                self.counters.lights_on.fetch_sub(1, Ordering::Relaxed);
            }
            self.bump();
        }
    }

    fn download(&mut self, request: DownloadRequest, feed: DownloadFeed) {
        let client = self.client.clone();
        let options = self.download.clone();
        tokio::spawn(async move {
            if let Err(message) = download::fetch(&client, &request, &options, &feed).await {
                tracing::debug!(url = %request.url, %message, "simulated download failed");
                feed.send(DownloadEvent::Failed(message)).await;
            }
        });
    }
}

impl FleetObserver {
    /// Wakes whoever waits in [`FleetHandle::wait_for`].
    fn bump(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

#[allow(clippy::too_many_arguments)]
async fn device_task(
    mut platform: MemoryPlatform,
    link: LinkOptions,
    mut commands: mpsc::Receiver<Command>,
    sender: mpsc::Sender<Command>,
    shutdown: CancellationToken,
    mut observer: FleetObserver,
    fails_ota: bool,
    mut rng: SmallRng,
) {
    loop {
        let mut device = Device::boot(platform, 0);
        observer.changed(&mut device);
        let stop = BootLoop {
            device: &mut device,
            link: &link,
            rng: &mut rng,
            commands: &mut commands,
            command_sender: sender.clone(),
            shutdown: &shutdown,
            observer: &mut observer,
            boot_start: Instant::now(),
        }
        .run()
        .await;
        platform = device.into_platform();
        if stop == Stop::Shutdown {
            observer.connection(false);
            return;
        }
        observer.counters.reboots.fetch_add(1, Ordering::Relaxed);
        // This device's new firmware crashes on its first boot, before it can commit
        // (itself or through the cloud); the bootloader brings the old one back (PROTOCOL
        // §8) and the device reports the revert.
        if fails_ota && platform.slots.crash_staged_image() {
            observer
                .counters
                .ota_crashes
                .fetch_add(1, Ordering::Relaxed);
        }
        platform.reboot();
        observer.bump();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Switch,
    Flap,
    Reboot,
}

/// Plays the behaviour for every device from one task: a timer heap instead of a timer
/// per device keeps an idle fleet idle.
async fn schedule(
    behaviour: Behaviour,
    commands: Vec<mpsc::Sender<Command>>,
    mut rngs: Vec<SmallRng>,
    shutdown: CancellationToken,
) {
    let start = Instant::now();
    let start_hour = behaviour.start_hour.unwrap_or_else(|| {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        (secs % 86_400) as f64 / 3600.0
    });
    let hour_at = |at: Instant| {
        let sim_seconds = at.duration_since(start).as_secs_f64() * behaviour.speedup;
        (start_hour + sim_seconds / 3600.0).rem_euclid(24.0)
    };
    // Events are drawn at the peak rate and thinned by time of day, which gives a Poisson
    // process whose rate follows `activity`.
    let rates = [
        (Kind::Switch, behaviour.switches_per_day),
        (Kind::Flap, behaviour.flaps_per_day),
        (Kind::Reboot, behaviour.reboots_per_day),
    ];
    let next_after = |rng: &mut SmallRng, per_day: f64, from: Instant| {
        let per_sim_second = per_day / 86_400.0;
        let sim_wait = -(1.0 - rng.random::<f64>()).ln() / per_sim_second;
        let real = (sim_wait / behaviour.speedup).min(365.0 * 86_400.0);
        from + Duration::from_secs_f64(real)
    };
    let mut heap = BinaryHeap::new();
    for (index, rng) in rngs.iter_mut().enumerate() {
        for (kind, per_day) in rates {
            if per_day > 0.0 {
                heap.push(Reverse((next_after(rng, per_day, start), index, kind)));
            }
        }
    }
    loop {
        let Some(Reverse((at, _, _))) = heap.peek().copied() else {
            shutdown.cancelled().await;
            return;
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(at) => {}
        }
        let now = Instant::now();
        while let Some(Reverse((at, index, kind))) = heap.peek().copied() {
            if at > now {
                break;
            }
            heap.pop();
            let rng = &mut rngs[index];
            let hour = hour_at(at);
            let command = match kind {
                Kind::Switch if rng.random::<f64>() < activity(hour) => Some(Command::SetLight(
                    rng.random::<f64>() < on_probability(hour),
                )),
                Kind::Switch => None,
                Kind::Flap => {
                    let [low, high] = behaviour.flap_seconds;
                    let sim = low + (high - low) * rng.random::<f64>();
                    Some(Command::Offline(Duration::from_secs_f64(
                        (sim / behaviour.speedup).max(0.2),
                    )))
                }
                Kind::Reboot => Some(Command::Reboot),
            };
            if let Some(command) = command {
                // A device busy with earlier commands skips this one rather than
                // holding up the whole fleet's schedule.
                let _ = commands[index].try_send(command);
            }
            let per_day = rates
                .iter()
                .find(|(k, _)| *k == kind)
                .map_or(0.0, |(_, r)| *r);
            heap.push(Reverse((next_after(rng, per_day, at), index, kind)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_urls() {
        assert_eq!(
            socket_url("http://127.0.0.1:8009").unwrap(),
            "ws://127.0.0.1:8009/api/v2/rpc"
        );
        assert_eq!(
            socket_url("https://herd.example/api/v2/").unwrap(),
            "wss://herd.example/api/v2/rpc"
        );
        assert!(socket_url("ftp://x").is_err());
    }

    #[test]
    fn behaviour_files_are_validated() {
        let behaviour: Behaviour =
            serde_json::from_str(r#"{"speedup": 60, "ota_failure_fraction": 0.5}"#).unwrap();
        assert_eq!(behaviour.speedup, 60.0);
        assert_eq!(behaviour.switches_per_day, 8.0);
        assert!(behaviour.validate().is_ok());
        assert!(serde_json::from_str::<Behaviour>(r#"{"speed": 1}"#).is_err());
        let bad = Behaviour {
            ota_failure_fraction: 2.0,
            ..Behaviour::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn the_failing_fraction_is_exact_and_seeded() {
        for (count, fraction, wanted) in [
            (10, 0.1, 1),
            (10, 0.25, 3),
            (7, 0.5, 4),
            (3, 0.0, 0),
            (3, 1.0, 3),
            (0, 0.5, 0),
        ] {
            let failing = pick_failing(count, fraction, 42);
            assert_eq!(failing.len(), count);
            assert_eq!(
                failing.iter().filter(|f| **f).count(),
                wanted,
                "{count} x {fraction}"
            );
        }
        assert_eq!(pick_failing(100, 0.3, 1), pick_failing(100, 0.3, 1));
        assert_ne!(pick_failing(100, 0.3, 1), pick_failing(100, 0.3, 2));
    }

    #[test]
    fn evenings_are_busier_than_nights() {
        assert!(activity(19.5) > activity(3.0));
        assert!(on_probability(20.0) > on_probability(2.0));
    }
}
