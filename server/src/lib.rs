//! herd-server: a self-hosted device cloud that speaks Cesanta mDash's protocol.
//!
//! Devices connect over WebSocket and talk JSON-RPC (PROTOCOL §1-§3); the server keeps their
//! shadows (§4) in SQLite or PostgreSQL, fans notifications out to live streams (§5) and appends them to
//! `notification.log` (§7), and offers the REST API (§6) with an RPC proxy to devices. It
//! stores firmware images (§10.1), updates one device ([`ota`], §10.2, §10.3) or many in
//! waves ([`rollout`], §10.5), and decides who may do what in one place ([`access`]).
//! Every operation that changes a device (connect, disconnect, shadow update, create,
//! rename, delete, a call) is one file under [`ops`] that owns its whole effect, in commit
//! order per device.
//!
//! The main types: [`AppState`] (the shared handles every task uses), [`Server`] (a running
//! instance), [`store::Store`] (persistence), [`hub::Hub`] (notifications) and
//! [`registry::Registry`] (online devices). A test or an embedding program starts a server on
//! any listener and stops it through its handle:
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let settings = herd_config::ServerSettings {
//!     data_dir: Some("/tmp/herd-data".into()),
//!     ..Default::default()
//! };
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let server = herd_server::Server::start(settings, listener).await?;
//! println!("listening on {}", server.local_addr());
//! server.shutdown().await?;
//! # Ok(()) }
//! ```

pub mod access;
pub mod auth;
pub mod clock;
pub mod cluster;
pub mod device_socket;
pub mod error;
pub mod firmware;
pub mod guard;
pub mod http;
pub mod hub;
pub mod memory;
pub mod notification_log;
pub mod ops;
pub mod ota;
pub mod registry;
pub mod rest;
pub mod rollout;
pub mod store;
pub mod watch;
pub mod ws;

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use herd_config::ServerSettings;
use protocol::rest::DeviceObject;
use protocol::shadow::Limits;
use protocol::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::hub::{Hub, Identity};
use crate::notification_log::{LogConfig, NotificationLog};
use crate::registry::Registry;
use crate::store::{DeviceRecord, Store, StoreError};

/// Handles shared by every request and socket task.
pub struct Shared {
    pub settings: ServerSettings,
    pub store: Arc<dyn Store>,
    pub registry: Registry,
    pub hub: Hub,
    pub limits: Limits,
    pub basic_cache: auth::BasicCache,
    /// Wakes tasks waiting for a device to change.
    pub watch: watch::DeviceWatch,
    /// One firmware update per device.
    pub ota_jobs: Arc<ota::OtaJobs>,
    /// Firmware image files.
    pub firmware_files: firmware::FirmwareFiles,
    /// Runners of active rollouts.
    pub rollouts: rollout::Rollouts,
    /// One operation at a time per device, so effects follow commits ([`ops`]).
    pub sequencer: ops::Sequencer,
    /// Devices held off for misbehaving.
    pub guard: guard::Guard,
    /// Fires when the server begins shutting down: it stops accepting and device sessions
    /// end (their devices go offline).
    pub shutdown: CancellationToken,
    /// Fires in the second phase of a shutdown, once devices are offline: notify streams
    /// deliver what was emitted and close.
    pub streams_shutdown: CancellationToken,
    /// Every socket task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// The device sessions among them, which shutdown ends first.
    pub device_tasks: TaskTracker,
    /// This node's part of a cluster (cluster mode only, [`cluster`]).
    pub cluster: Option<Arc<cluster::Cluster>>,
}

/// Cheap-to-clone access to [`Shared`].
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// Borrowed twin of [`DeviceObject`] without a token; fields in the same order, so the
/// same JSON (a unit test holds them together).
#[derive(serde::Serialize)]
struct DeviceView<'a> {
    id: &'a str,
    name: &'a str,
    user_id: &'a str,
    shared_with: &'a str,
    online: bool,
    created_at: String,
    last_seen: Option<String>,
    info: &'a Value,
    shadow: protocol::shadow::DocumentView<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    quarantine: Option<Value>,
}

impl AppState {
    /// The REST device object (PROTOCOL §6); `token` only for a just-created device.
    pub fn device_object(&self, device: &DeviceRecord, token: Option<&str>) -> DeviceObject {
        DeviceObject {
            id: device.id.clone(),
            name: device.name.clone(),
            token: token.map(str::to_string),
            user_id: device.user_id.clone(),
            shared_with: device.shared_with.clone(),
            online: self.is_online(&device.id),
            created_at: clock::rfc3339(device.created_at),
            last_seen: device.last_seen.map(clock::rfc3339),
            info: device.info.clone(),
            shadow: device.shadow.to_document_with_delta(),
            quarantine: self.guard.held(&device.id).map(|held| {
                Box::new(serde_json::json!({"reason": held.reason, "until": clock::rfc3339(held.until_unix)}))
            }),
        }
    }

    /// Emits `updated` with the device object, without its token (PROTOCOL §5).
    pub fn emit_updated(&self, device: &DeviceRecord) {
        self.hub
            .emit(&Identity::of(device), "updated", &self.device_view(device));
        self.watch.notify(&device.id);
    }

    /// [`AppState::device_object`] without a token, borrowed: the same JSON without
    /// copying the shadow, for the `updated` event every change emits.
    fn device_view<'a>(&self, device: &'a DeviceRecord) -> DeviceView<'a> {
        DeviceView {
            id: &device.id,
            name: &device.name,
            user_id: &device.user_id,
            shared_with: &device.shared_with,
            online: self.is_online(&device.id),
            created_at: clock::rfc3339(device.created_at),
            last_seen: device.last_seen.map(clock::rfc3339),
            info: &device.info,
            shadow: device.shadow.document_with_delta(),
            quarantine: self.guard.held(&device.id).map(|held| {
                serde_json::json!({"reason": held.reason, "until": clock::rfc3339(held.until_unix)})
            }),
        }
    }

    /// Whether device `id` is connected, to this node or (in a cluster) to another.
    pub fn is_online(&self, id: &str) -> bool {
        self.registry.is_online(id)
            || self
                .cluster
                .as_ref()
                .is_some_and(|cluster| cluster.online_elsewhere(id))
    }

    /// In a cluster, waits until the events emitted so far are in the cluster's stream, so
    /// a write acknowledged to its client keeps its events if this node dies next. A
    /// single server has nothing to wait for.
    pub async fn settle(&self) {
        if let Some(cluster) = &self.cluster {
            if !cluster.settle(Duration::from_secs(5)).await {
                tracing::warn!("events are not reaching the cluster's stream");
            }
        }
    }

    /// Whether this server runs the rollouts: always on one server, the lease holder in a
    /// cluster.
    pub fn runs_rollouts(&self) -> bool {
        self.cluster
            .as_ref()
            .is_none_or(|cluster| cluster.is_leader())
    }

    /// The configured RPC proxy timeout.
    pub fn rpc_timeout(&self) -> Duration {
        Duration::from_millis(self.settings.rpc_timeout_ms)
    }
}

/// A running server.
pub struct Server {
    state: AppState,
    local_addr: SocketAddr,
    serving: JoinHandle<()>,
    sweeper: JoinHandle<()>,
    memory_keeper: JoinHandle<()>,
    /// Held while the server runs: a second server on the same data directory is refused.
    _lock: std::fs::File,
}

/// How notification.log is written for `settings`. With `durability = "power"` every batch
/// of lines reaches the disk, as every group commit of the store does.
fn log_config(settings: &ServerSettings, data_dir: &std::path::Path) -> LogConfig {
    LogConfig {
        dir: data_dir.to_path_buf(),
        rotate_bytes: settings.log_rotate_bytes,
        rotate_daily: true,
        flush_interval: Duration::from_millis(settings.log_flush_ms),
        fsync: settings.durability == herd_config::Durability::Power,
    }
}

/// Takes the data directory's lock file, or says which directory is in use. Two servers
/// appending to one notification.log and one store would corrupt the log's order and
/// contend for the store's writer.
fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join("herd-server.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another herd-server is using the data directory {}",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// What a failure to open the store names: the database (without its password) or the
/// data directory.
fn store_description(settings: &ServerSettings, data_dir: &std::path::Path) -> String {
    match &settings.store {
        Some(url) => format!(
            "cannot open the store {}",
            herd_config::redact_store_url(url)
        ),
        None => format!("cannot open the store in {}", data_dir.display()),
    }
}

impl Server {
    /// Opens the data directory and starts serving on `listener`.
    pub async fn start(settings: ServerSettings, listener: TcpListener) -> anyhow::Result<Self> {
        settings.validate()?;
        let data_dir = settings.resolved_data_dir()?;
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
        let lock = lock_data_dir(&data_dir)?;
        let store = store::open(
            &settings,
            &data_dir,
            Duration::from_micros(settings.commit_window_us),
        )
        .await
        .with_context(|| store_description(&settings, &data_dir))?;
        let log = NotificationLog::open(log_config(&settings, &data_dir))
            .with_context(|| format!("cannot open notification.log in {}", data_dir.display()))?;
        let firmware_files = firmware::FirmwareFiles::open(&data_dir)
            .with_context(|| format!("cannot open the firmware store in {}", data_dir.display()))?;
        let known: std::collections::HashSet<String> = store
            .list_firmware(None)
            .await
            .context("cannot list stored firmware")?
            .into_iter()
            .map(|f| f.id)
            .collect();
        match firmware_files.remove_unknown(&known) {
            Ok(0) => {}
            Ok(n) => tracing::info!(files = n, "removed image files no stored firmware names"),
            Err(e) => tracing::warn!(error = %e, "cannot tidy the firmware store"),
        }
        let tls = match &settings.tls {
            Some(tls) => Some(http::tls_acceptor(&tls.cert, &tls.key)?),
            None => None,
        };
        let local_addr = listener.local_addr()?;
        let cluster = match &settings.nats {
            Some(_) => {
                let node = cluster::node_id(&settings, &data_dir)?;
                Some(cluster::Cluster::connect(&settings, node, local_addr.to_string()).await?)
            }
            None => None,
        };
        let (cluster, outgoing) = match cluster {
            Some((cluster, outgoing)) => (Some(cluster), Some(outgoing)),
            None => (None, None),
        };
        let state = AppState(Arc::new(Shared {
            limits: Limits {
                max_bytes: settings.shadow_max_bytes,
                max_depth: settings.shadow_max_depth,
            },
            hub: Hub::new(log, settings.notify_backlog),
            store,
            registry: Registry::default(),
            basic_cache: auth::BasicCache::default(),
            watch: watch::DeviceWatch::default(),
            ota_jobs: Arc::new(ota::OtaJobs::default()),
            firmware_files,
            rollouts: rollout::Rollouts::default(),
            sequencer: ops::Sequencer::default(),
            guard: guard::Guard::default(),
            shutdown: CancellationToken::new(),
            streams_shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            device_tasks: TaskTracker::new(),
            cluster: cluster.clone(),
            settings,
        }));
        if let Some(cluster) = &cluster {
            state.hub.join(cluster.clone());
        }
        // PROTOCOL §7: the first line of this run, so readers can close the sessions a
        // crash of the previous run left open. Nothing is served yet, so nothing precedes it.
        match &cluster {
            None => state.hub.emit(
                &Identity::server(),
                protocol::notification::SERVER_STARTED,
                &serde_json::json!({"version": env!("CARGO_PKG_VERSION")}),
            ),
            Some(cluster) => state.hub.emit(
                &Identity::server(),
                protocol::notification::NODE_STARTED,
                &serde_json::json!({"node": &*cluster.node, "version": env!("CARGO_PKG_VERSION")}),
            ),
        }
        if let (Some(cluster), Some(outgoing)) = (&cluster, outgoing) {
            cluster.serve(&state, outgoing).await?;
            tracing::info!(node = %cluster.node, "joined the cluster");
        }
        let router = rest::router(state.clone());
        let serving = tokio::spawn(http::serve(listener, router, tls, state.shutdown.clone()));
        let sweeper = tokio::spawn(device_socket::liveness_sweeper(state.clone()));
        let memory_keeper = tokio::spawn(memory::keeper());
        // Rollouts a previous process left running carry on.
        let resuming = state.clone();
        tokio::spawn(async move { resuming.rollouts.resume_all(&resuming).await });
        tracing::info!(addr = %local_addr, data_dir = %data_dir.display(), "herd-server listening");
        Ok(Self {
            state,
            local_addr,
            serving,
            sweeper,
            memory_keeper,
            _lock: lock,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Stops accepting, closes every socket (devices go offline with `last_seen` recorded),
    /// then flushes notification.log and the store.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let state = self.state;
        state.shutdown.cancel();
        self.sweeper.abort();
        self.memory_keeper.abort();
        let _ = self.serving.await;
        // Phase one: every device session ends and announces `offline` (and its last
        // `updated`), while the notify streams still run, so consumers see each device go.
        state.device_tasks.close();
        if tokio::time::timeout(Duration::from_secs(10), state.device_tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                devices = state.registry.len(),
                "some device sessions did not end in time"
            );
        }
        // A cluster node's events reach the stream, and it leaves the cluster.
        if let Some(cluster) = &state.cluster {
            cluster.leave().await;
        }
        // Phase two: the streams deliver what was emitted, then close.
        state.streams_shutdown.cancel();
        state.tasks.close();
        if tokio::time::timeout(Duration::from_secs(10), state.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some sockets did not close in time");
        }
        let log = state.hub.log().clone();
        tokio::task::spawn_blocking(move || log.shutdown()).await?;
        state.store.close().await?;
        tracing::info!("herd-server stopped");
        Ok(())
    }
}

/// Creates a user directly in the data directory (the server may be running) and an API key
/// for it; the first user becomes the administrator. Returns the user and the key's secret.
pub async fn register_user(
    settings: &ServerSettings,
    name: &str,
    pass: &str,
) -> anyhow::Result<(store::User, String)> {
    if !rest::valid_user_name(name) {
        anyhow::bail!("user name must be 1-64 characters of A-Z a-z 0-9 _ - . @ +");
    }
    if pass.is_empty() {
        anyhow::bail!("password must not be empty");
    }
    let dir = settings.resolved_data_dir()?;
    let store = store::open(settings, &dir, Duration::ZERO)
        .await
        .with_context(|| store_description(settings, &dir))?;
    let cost = settings.bcrypt_cost;
    let pass = pass.to_string();
    let hash = tokio::task::spawn_blocking(move || bcrypt::hash(pass, cost)).await??;
    let user = match store.create_user(name, &hash, clock::now()).await {
        Ok(user) => user,
        Err(StoreError::Exists(_)) => anyhow::bail!("user {name} already exists"),
        Err(e) => return Err(e.into()),
    };
    let key = auth::new_secret();
    store
        .create_key(
            store::ApiKey {
                id: auth::new_secret(),
                user_id: user.id.clone(),
                created_at: clock::now(),
                ..store::ApiKey::default()
            },
            &auth::hash_secret(&key),
        )
        .await?;
    store.close().await?;
    Ok((user, key))
}

/// Runs a server until `signal` resolves, then shuts it down gracefully (mini-redis style:
/// the caller owns the listener and the shutdown trigger).
pub async fn run(
    settings: ServerSettings,
    listener: TcpListener,
    signal: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let server = Server::start(settings, listener).await?;
    signal.await;
    tracing::info!("shutting down");
    server.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_durability_fsyncs_the_log_too() {
        let dir = std::path::Path::new("/data");
        let process = ServerSettings::default();
        assert!(!log_config(&process, dir).fsync);
        let power = ServerSettings {
            durability: herd_config::Durability::Power,
            ..ServerSettings::default()
        };
        assert!(log_config(&power, dir).fsync);
    }
}
