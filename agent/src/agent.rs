//! One Linux device: `herd-agent --server ws://HOST:PORT/api/v2/rpc --token TOKEN`.
//!
//! [`Agent::start`] boots [`Device`] on an [`AgentPlatform`] whose configuration, files and
//! firmware slots live in the data directory, and runs it until [`AgentHandle::shutdown`].
//! A reboot drops the engine and boots a new one from what is on disk, exactly as a power
//! cycle would; with [`ImagePolicy::Exec`] (`--exec-images`) a reboot into another
//! firmware slot replaces the process with that slot's executable. Without it the agent
//! refuses firmware updates: an image stored but never run would have the agent report a
//! version it does not run.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use firmware_core::config::{Layer, Object};
use firmware_core::device::Device;
use firmware_core::ota::{ContentHash, ImageInfo, OtaMethods};
use firmware_core::platform::{ConfigStorage, FileStore, Light, StorageError, System, SystemFacts};
use firmware_core::pull::DownloadRequest;
use firmware_core::verify::UpdateKey;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::download::{self, DownloadOptions};
use crate::light::{LightDriver, LightOptions};
use crate::runner::{BootLoop, Command, DownloadEvent, DownloadFeed, LinkOptions, Observer, Stop};
use crate::slots::FileSlots;
use crate::storage::{DirFileStore, FileConfigStorage};

/// Set in the environment of an image the agent execs into, so that the new process does
/// not count the boot a second time.
pub const BOOTED_ENV: &str = "HERD_AGENT_BOOTED";

/// Size of the `FS.*` store.
pub const FILE_STORE_CAPACITY: u64 = 4 * 1024 * 1024;

/// What the agent was built as: slot 0 until an update replaces it.
pub fn builtin_image() -> ImageInfo {
    let version = env!("CARGO_PKG_VERSION");
    let arch = std::env::consts::ARCH;
    ImageInfo {
        app: "herd-agent".into(),
        arch: arch.into(),
        fw_version: version.into(),
        fw_id: ContentHash::of(format!("herd-agent {version} {arch}").as_bytes()).hex(),
    }
}

/// The platform of a Linux device (see the module docs).
#[derive(Debug)]
pub struct AgentPlatform {
    config: FileConfigStorage,
    files: DirFileStore,
    slots: FileSlots,
    light: LightDriver,
}

impl AgentPlatform {
    /// The platform of a device whose configuration and files live in `data_dir`.
    pub fn open(data_dir: &Path, slots: FileSlots, light: &LightOptions) -> AgentPlatform {
        AgentPlatform {
            config: FileConfigStorage::new(data_dir.join("config")),
            files: DirFileStore::new(data_dir.join("fs"), FILE_STORE_CAPACITY),
            slots,
            light: LightDriver::new(light),
        }
    }

    /// The boot record's view of the slots.
    pub fn slots(&self) -> &FileSlots {
        &self.slots
    }
}

impl ConfigStorage for AgentPlatform {
    fn load(&mut self, layer: Layer) -> Result<Option<Vec<u8>>, StorageError> {
        self.config.load(layer)
    }
    fn store(&mut self, layer: Layer, json: &[u8]) -> Result<(), StorageError> {
        self.config.store(layer, json)
    }
    fn erase(&mut self, layer: Layer) -> Result<(), StorageError> {
        self.config.erase(layer)
    }
}

impl FileStore for AgentPlatform {
    fn list(&mut self) -> Result<Vec<String>, StorageError> {
        self.files.list()
    }
    fn size(&mut self, name: &str) -> Result<Option<usize>, StorageError> {
        self.files.size(name)
    }
    fn read(&mut self, name: &str, offset: usize, len: usize) -> Result<Vec<u8>, StorageError> {
        self.files.read(name, offset, len)
    }
    fn write(&mut self, name: &str, data: &[u8], append: bool) -> Result<(), StorageError> {
        self.files.write(name, data, append)
    }
    fn remove(&mut self, name: &str) -> Result<(), StorageError> {
        self.files.remove(name)
    }
    fn rename(&mut self, from: &str, to: &str) -> Result<(), StorageError> {
        self.files.rename(from, to)
    }
    fn capacity(&mut self) -> (u64, u64) {
        self.files.capacity()
    }
}

firmware_core::delegate_firmware_slots!(AgentPlatform, slots);

impl Light for AgentPlatform {
    fn set_level(&mut self, pin: i64, level: bool) {
        self.light.set_level(pin, level);
    }
}

impl System for AgentPlatform {
    fn facts(&mut self) -> SystemFacts {
        linux_facts()
    }
}

/// RAM from `/proc/meminfo` and the first non-loopback MAC address.
fn linux_facts() -> SystemFacts {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        meminfo
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    let mac = std::fs::read_dir("/sys/class/net")
        .ok()
        .and_then(|entries| {
            let mut names: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
            names.sort();
            names
                .into_iter()
                .filter(|p| p.file_name().is_some_and(|n| n != "lo"))
                .find_map(|p| std::fs::read_to_string(p.join("address")).ok())
        })
        .map(|mac| mac.trim().to_string())
        .unwrap_or_default();
    let free = field("MemAvailable:");
    SystemFacts {
        mac,
        ram_size: field("MemTotal:"),
        ram_free: free,
        ram_min_free: free,
        wifi: None,
    }
}

/// What the agent does with the firmware images it is sent (PROTOCOL §8, §10.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImagePolicy {
    /// Refuse every update (`OTA.Begin`, `OTA.Update`, `desired.ota`), saying how to
    /// allow them: the default of the binary without `--exec-images`.
    #[default]
    Refuse,
    /// Store updates in the inactive slot and replace the process with the booted slot's
    /// executable (`--exec-images`).
    Exec,
    /// Store updates and boot the engine on them without executing anything: the agent
    /// then reports the version of the slot, not of the running process. For tests of the
    /// update logic that run agents in-process.
    StageOnly,
}

/// The refusal of an agent that does not run images.
pub const REFUSE_IMAGES: &str = "this agent does not run firmware images and takes no updates; start it with --exec-images to allow them";

/// How to run one agent.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Device socket URL, `ws://HOST:PORT/api/v2/rpc`; kept in the factory layer, so it
    /// may be omitted on later runs.
    pub server: Option<String>,
    /// Device token; kept in the factory layer like `server`.
    pub token: Option<String>,
    /// Where configuration, files and firmware slots live.
    pub data_dir: PathBuf,
    /// The light.
    pub light: LightOptions,
    /// Reconnect policy.
    pub link: LinkOptions,
    /// What to do with firmware images.
    pub images: ImagePolicy,
    /// `update.pubkey` (base64 Ed25519 public key) to record in the factory layer: the
    /// agent then takes only images signed for it (PROTOCOL §10.4).
    pub update_pubkey: Option<String>,
    /// `rpc.ota_methods` to record in the factory layer; [`OtaMethods::Push`] makes the
    /// agent behave like an mDash device library device.
    pub ota_methods: Option<OtaMethods>,
    /// Retry policy of firmware downloads.
    pub download: DownloadOptions,
}

impl AgentOptions {
    /// An agent keeping its state in `data_dir`, with everything else as the binary's
    /// defaults: no server or token given (they may be remembered), a simulated light,
    /// updates refused.
    pub fn new(data_dir: PathBuf) -> AgentOptions {
        AgentOptions {
            server: None,
            token: None,
            data_dir,
            light: LightOptions::default(),
            link: LinkOptions::default(),
            images: ImagePolicy::Refuse,
            update_pubkey: None,
            ota_methods: None,
            download: DownloadOptions::default(),
        }
    }
}

/// What a running agent shows about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentStatus {
    /// Boots so far in this process (1 after the first boot).
    pub boots: u64,
    /// Connected to the cloud.
    pub connected: bool,
    /// Connections made so far.
    pub connections: u64,
    /// Light on.
    pub light_on: bool,
    /// Firmware slot running.
    pub partition: u8,
    /// Whether the running firmware is committed.
    pub committed: bool,
    /// Version of the running firmware.
    pub fw_version: String,
    /// PROTOCOL §8 transfer state.
    pub ota_state: u8,
}

/// A running agent.
#[derive(Debug)]
pub struct AgentHandle {
    status: watch::Receiver<AgentStatus>,
    commands: mpsc::Sender<Command>,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl AgentHandle {
    /// The latest status.
    pub fn status(&self) -> AgentStatus {
        self.status.borrow().clone()
    }

    /// Waits until the status satisfies `predicate` (or the agent ends).
    pub async fn wait_for(
        &mut self,
        mut predicate: impl FnMut(&AgentStatus) -> bool,
    ) -> anyhow::Result<AgentStatus> {
        let status = self
            .status
            .wait_for(|s| predicate(s))
            .await
            .context("the agent stopped")?;
        Ok(status.clone())
    }

    /// Sends a command (button, local switch, power cycle).
    pub async fn send(&self, command: Command) -> anyhow::Result<()> {
        self.commands
            .send(command)
            .await
            .map_err(|_| anyhow::anyhow!("the agent stopped"))
    }

    /// A token that stops the agent when cancelled (for signal handlers).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops the agent and waits for it.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await.context("the agent task panicked")?
    }

    /// Waits for the agent to end by itself (or through [`AgentHandle::shutdown_token`]).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("the agent task panicked")?
    }
}

/// Starts agents.
#[derive(Debug)]
pub struct Agent;

impl Agent {
    /// Boots the device and starts its loop.
    pub async fn start(options: AgentOptions) -> anyhow::Result<AgentHandle> {
        // wss:// needs one process-wide rustls provider; ring is what the workspace builds.
        let _ = rustls::crypto::ring::default_provider().install_default();
        if let Some(key) = &options.update_pubkey {
            if let UpdateKey::Unusable(message) = UpdateKey::from_config(key) {
                anyhow::bail!("{message}");
            }
        }
        let client = download::http_client(options.link.tls.as_deref())
            .context("cannot build the HTTP client")?;
        std::fs::create_dir_all(&options.data_dir)
            .with_context(|| format!("cannot create {}", options.data_dir.display()))?;
        let (status_tx, status) = watch::channel(AgentStatus::default());
        let (commands_tx, commands) = mpsc::channel(16);
        let shutdown = CancellationToken::new();
        let observer = AgentObserver {
            status: status_tx,
            client,
            download: options.download.clone(),
        };
        let task = tokio::spawn(run(
            options,
            commands,
            commands_tx.clone(),
            shutdown.clone(),
            observer,
        ));
        Ok(AgentHandle {
            status,
            commands: commands_tx,
            shutdown,
            task,
        })
    }
}

struct AgentObserver {
    status: watch::Sender<AgentStatus>,
    client: reqwest::Client,
    download: DownloadOptions,
}

impl Observer<Device<AgentPlatform>> for AgentObserver {
    fn connection(&mut self, up: bool) {
        if up {
            tracing::info!("connected");
        } else {
            tracing::info!("disconnected");
        }
        self.status.send_modify(|s| {
            s.connected = up;
            if up {
                s.connections += 1;
            }
        });
    }

    fn changed(&mut self, device: &mut Device<AgentPlatform>) {
        let status = device.status();
        self.status.send_if_modified(|s| {
            let next = AgentStatus {
                light_on: status.light_on,
                partition: status.boot.partition,
                committed: status.boot.committed,
                fw_version: status.image.fw_version.clone(),
                ota_state: status.ota_state,
                ..s.clone()
            };
            let changed = *s != next;
            *s = next;
            changed
        });
    }

    fn download(&mut self, request: DownloadRequest, feed: DownloadFeed) {
        let client = self.client.clone();
        let options = self.download.clone();
        tokio::spawn(async move {
            if let Err(message) = download::fetch(&client, &request, &options, &feed).await {
                tracing::warn!(url = %request.url, %message, "firmware download failed");
                feed.send(DownloadEvent::Failed(message)).await;
            }
        });
    }
}

/// The factory-layer patch that records where the cloud is and what the options say about
/// updates; `None` when there is nothing to record.
pub(crate) fn factory_patch(options: &AgentOptions) -> Option<Object> {
    let mut patch = Object::new();
    if options.server.is_some() || options.token.is_some() {
        let mut dash = json!({"enable": true});
        if let Some(server) = &options.server {
            dash["server"] = json!(server);
        }
        if let Some(token) = &options.token {
            dash["token"] = json!(token);
        }
        patch.insert("dash".into(), dash);
    }
    if let Some(key) = &options.update_pubkey {
        patch.insert("update".into(), json!({"pubkey": key}));
    }
    if let Some(methods) = options.ota_methods {
        patch.insert("rpc".into(), json!({"ota_methods": methods.as_str()}));
    }
    (!patch.is_empty()).then_some(patch)
}

async fn run(
    options: AgentOptions,
    mut commands: mpsc::Receiver<Command>,
    command_sender: mpsc::Sender<Command>,
    shutdown: CancellationToken,
    mut observer: AgentObserver,
) -> anyhow::Result<()> {
    let running_exe = std::env::current_exe().context("cannot find the running executable")?;
    let factory_path = std::env::var_os("HERD_AGENT_FACTORY_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| running_exe.clone());
    // A process started by exec is the boot that chose it: it neither counts that boot
    // again nor second-guesses which executable runs it (a slot image may be a script that
    // execs another binary).
    let exec_images = options.images == ImagePolicy::Exec;
    let mut started_by_exec = exec_images && std::env::var_os(BOOTED_ENV).is_some();
    let mut rng = SmallRng::from_os_rng();
    let mut factory_written = false;
    loop {
        let mut slots = FileSlots::open(
            options.data_dir.join("slots"),
            builtin_image(),
            factory_path.clone(),
            !started_by_exec,
        )
        .context("cannot open the firmware slots")?;
        if options.images == ImagePolicy::Refuse {
            slots.refuse_updates(Some(REFUSE_IMAGES.into()));
        }
        if exec_images && !started_by_exec {
            let path = slots.image_path(slots.booted_slot());
            if !same_file(&path, &running_exe) {
                let error = exec_image(&path, &factory_path);
                tracing::error!(image = %path.display(), %error, "cannot start the firmware image; reverting");
                slots
                    .revert_unstartable(&format!(
                        "reverted: the new firmware could not start: {error}"
                    ))
                    .context("cannot write the boot record")?;
                continue;
            }
        }
        started_by_exec = false;
        let platform = AgentPlatform::open(&options.data_dir, slots, &options.light);
        let mut device = Device::boot(platform, 0);
        for note in device.boot_notes() {
            tracing::warn!(%note, "configuration problem at boot");
        }
        if !factory_written {
            if let Some(patch) = factory_patch(&options) {
                if let Err(e) = device.write_factory(&patch) {
                    tracing::error!(error = %e, "cannot record the options in the factory layer");
                }
            }
            factory_written = true;
        }
        if device.cloud().is_none() {
            tracing::warn!("no server or token configured; waiting offline");
        }
        observer.status.send_modify(|s| s.boots += 1);
        observer.changed(&mut device);
        let boot_loop = BootLoop {
            device: &mut device,
            link: &options.link,
            rng: &mut rng,
            commands: &mut commands,
            command_sender: command_sender.clone(),
            shutdown: &shutdown,
            observer: &mut observer,
            boot_start: Instant::now(),
        };
        match boot_loop.run().await {
            Stop::Shutdown => return Ok(()),
            Stop::Reboot => tracing::info!("rebooting"),
        }
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Replaces the process with `image`, same arguments; returns only on failure.
fn exec_image(image: &Path, factory: &Path) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    tracing::info!(image = %image.display(), "starting the firmware image");
    std::process::Command::new(image)
        .args(args)
        .env(BOOTED_ENV, "1")
        .env("HERD_AGENT_FACTORY_IMAGE", factory)
        .exec()
}
