//! Cluster mode: several herd-server nodes, sharing one PostgreSQL store and one NATS server,
//! serve as one device cloud behind any TCP load balancer.
//!
//! What each engine carries:
//! - **PostgreSQL** stays the source of truth for devices, shadows, users and rollouts (the
//!   [`crate::store`] every node opens), and also holds the cluster's own small tables:
//!   `herd_nodes` (each node's heartbeat, by the database's clock), `herd_presence` (which
//!   node holds each online device's socket), `herd_leases` (the rollout engine's lease) and
//!   `herd_firmware_parts` (image bytes, which a node writes to its own firmware directory
//!   before it sends an image to a device).
//! - **NATS** carries everything between nodes:
//!   - `herd.events.<node>`: every event a node emits (PROTOCOL §5), published to the
//!     JetStream stream `HERD_EVENTS` ([`events`]). The other nodes receive the same messages
//!     live and hand them to their notify streams; every node also reads the stream back in
//!     its order into its own notification.log, so each node's `POST /logs` serves the same
//!     one logical log (PROTOCOL §7).
//!   - `herd.node.<node>`: requests for the devices a node holds: a call, a delta offer, a
//!     change of who sees the device, a close, a takeover ([`route`]).
//!
//! The rules:
//! - **One owner per device.** The node holding a device's socket carries out what needs the
//!   socket. Another node that is asked (an RPC on the REST API, a shadow update) sends the
//!   request to the owner, found in the presence map every node keeps from the
//!   `online`/`offline` events.
//! - **One session per device.** A device that connects to node B while node A holds it is
//!   B's: B asks A to close its socket quietly, and, like a reconnect on one server, that
//!   is neither `offline` nor `online`. When A does not answer (it died), B announces the
//!   end of A's session (`offline`) and the new one (`online`).
//! - **Dead nodes.** A node whose heartbeat is older than `node_dead_after_ms` is dead: the
//!   first survivor to see it adopts its presence rows as orphans in one statement, then
//!   announces `offline` (and records `last_seen`) for each orphan still there in the
//!   device's turn. A device back on some node before that claims its orphan row, and its
//!   new node announces the old session's end instead, so each end is announced once and
//!   before the next `online`. The devices reconnect through the balancer. A node that
//!   finds its own heartbeat row gone (it was declared dead while paused) closes every
//!   socket it holds, so no device is held twice.
//! - **Rollouts run once per cluster**: only the holder of the `rollouts` lease runs them.

pub mod events;
pub mod route;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::Pool;
use herd_config::ServerSettings;
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::{clock, AppState};

/// The JetStream stream every node's events go to.
pub const STREAM: &str = "HERD_EVENTS";
/// Prefix of the subjects events are published on (`herd.events.<node>`).
pub const EVENTS_PREFIX: &str = "herd.events.";
/// Prefix of the subjects a node says on which devices it holds now
/// (`herd.presence.<node>`, the device id as payload): a takeover announces no event.
pub const PRESENCE_PREFIX: &str = "herd.presence.";
/// Prefix of the subjects a node takes requests on (`herd.node.<node>`).
pub const NODE_PREFIX: &str = "herd.node.";
/// The lease whose holder runs the rollouts.
pub const ROLLOUT_LEASE: &str = "rollouts";

/// The advisory lock that makes the cluster's tables one node at a time.
const SCHEMA_LOCK: i64 = 0x6865_7264_636c;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS herd_nodes (
    node_id TEXT PRIMARY KEY,
    run TEXT NOT NULL,
    addr TEXT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS herd_presence (
    device_id TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    conn BIGINT NOT NULL,
    since DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS herd_presence_node ON herd_presence (node_id);
CREATE TABLE IF NOT EXISTS herd_firmware_parts (
    firmware_id TEXT NOT NULL,
    part INTEGER NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (firmware_id, part)
);
CREATE TABLE IF NOT EXISTS herd_leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
";

/// One node's view of the cluster.
pub struct Cluster {
    /// This node's name.
    pub node: Arc<str>,
    /// This process's run of the node, so the events of two runs never share an id.
    pub run: Arc<str>,
    nats: async_nats::Client,
    js: async_nats::jetstream::Context,
    pg: Pool,
    heartbeat: Duration,
    dead_after: Duration,
    /// Devices online on other nodes, and which node holds each.
    remote: RwLock<HashMap<Arc<str>, Arc<str>>>,
    /// Events to publish, in emit order ([`events::publisher`]).
    outgoing: mpsc::UnboundedSender<events::Outgoing>,
    /// Events emitted so far and events the stream has acknowledged, for [`Self::settle`].
    emitted: AtomicU64,
    acked: watch::Sender<u64>,
    /// Whether this node holds the rollout lease.
    leader: AtomicBool,
    /// Fires when the NATS connection is made again, so the stream's reader starts over at
    /// once instead of waiting to notice its consumer went quiet.
    pub(crate) reconnected: Arc<tokio::sync::Notify>,
    health: Mutex<Health>,
}

/// What `/healthz` says about the engines the cluster depends on.
#[derive(Debug, Clone, Default, Serialize)]
struct Health {
    /// The last heartbeat was written.
    store_ok: bool,
    /// Events publish and are acknowledged.
    stream_ok: bool,
    /// Events published but not acknowledged by the stream yet.
    stream_failures: u64,
    /// Lines of the cluster log written into this node's notification.log.
    log_lines_mirrored: u64,
    /// Times this node found itself declared dead and closed its sockets.
    fenced: u64,
    /// Messages on the event stream that were not a node's event, left out of the log.
    rejected: u64,
    /// Events the stream dropped before this node read them into its log.
    log_gap_events: u64,
}

/// A node as `/healthz` and `herd-server cluster-status` show it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct NodeStatus {
    pub id: String,
    pub addr: String,
    /// Devices whose socket this node holds.
    pub devices: i64,
    /// Seconds since its last heartbeat, by the database's clock.
    pub heartbeat_age_s: f64,
    pub alive: bool,
}

/// The `cluster` part of `/healthz`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ClusterStatus {
    /// This node.
    pub node: String,
    /// Whether this node holds the rollout lease.
    pub rollout_leader: bool,
    /// `connected` or the NATS connection's state.
    pub nats: String,
    /// Whether the last heartbeat reached PostgreSQL.
    pub store_ok: bool,
    /// Whether events reach the JetStream stream.
    pub stream_ok: bool,
    pub stream_failures: u64,
    pub log_lines_mirrored: u64,
    /// Messages on the event stream that were not a node's event, left out of the log.
    pub stream_rejected: u64,
    /// Events the stream dropped (its limits) before this node read them: its log lacks
    /// them. Raise `stream_max_age_h` / `stream_max_bytes` if this is not 0.
    pub log_gap_events: u64,
    /// Devices this node knows to be online on other nodes.
    pub remote_devices: usize,
    pub nodes: Vec<NodeStatus>,
}

/// The node's name: the configured one, else the one kept in the data directory, else a
/// new one kept there.
pub fn node_id(settings: &ServerSettings, data_dir: &Path) -> anyhow::Result<String> {
    if let Some(node) = &settings.node_id {
        return Ok(node.clone());
    }
    let path = data_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let made = format!("node-{}", &crate::auth::new_secret()[..8]);
    let temporary = data_dir.join("node-id.tmp");
    std::fs::write(&temporary, format!("{made}\n"))
        .and_then(|()| std::fs::rename(&temporary, &path))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(made)
}

impl Cluster {
    /// Connects to NATS and PostgreSQL, makes the stream and the tables if missing, and
    /// records this node as alive. Nothing is received yet: see [`Cluster::serve`].
    pub async fn connect(
        settings: &ServerSettings,
        node: String,
        addr: String,
    ) -> anyhow::Result<(Arc<Cluster>, mpsc::UnboundedReceiver<events::Outgoing>)> {
        let nats_url = settings.nats.as_deref().context("no nats URL")?;
        let store_url = settings.store.as_deref().context("no store URL")?;
        let reconnected = Arc::new(tokio::sync::Notify::new());
        let told = reconnected.clone();
        let nats = async_nats::ConnectOptions::new()
            .event_callback(move |event| {
                let told = told.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!("connected to NATS");
                            told.notify_waiters();
                        }
                        async_nats::Event::Disconnected => tracing::warn!("NATS connection lost"),
                        other => tracing::debug!(event = %other, "NATS"),
                    }
                }
            })
            .name(format!("herd-server {node}"))
            // Nothing this node publishes is for itself: its events reach it from the stream.
            .no_echo()
            // A node without NATS serves nobody else's devices: try again soon, at most
            // every second, rather than backing off for long.
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((100 * attempts as u64).min(1_000))
            })
            .connection_timeout(Duration::from_secs(5))
            .connect(nats_url)
            .await
            .with_context(|| {
                format!(
                    "cannot reach NATS at {}",
                    herd_config::redact_store_url(nats_url)
                )
            })?;
        let js = async_nats::jetstream::new(nats.clone());
        events::ensure_stream(&js, settings).await?;
        let pg = crate::store::postgres::connect_pool(store_url, settings.durability, 4)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut client = pg.get().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        // Nodes starting together would race to make the tables; one at a time.
        let tx = client.transaction().await?;
        tx.batch_execute(&format!(
            "SET LOCAL client_min_messages = warning; SELECT pg_advisory_xact_lock({SCHEMA_LOCK}); {SCHEMA}"
        ))
        .await
        .context("cannot make the cluster tables")?;
        tx.commit().await?;
        let run = crate::auth::new_secret()[..12].to_string();
        client
            .execute(
                "INSERT INTO herd_nodes (node_id, run, addr, started_at, heartbeat_at)
                 VALUES ($1, $2, $3, $4, now())
                 ON CONFLICT (node_id) DO UPDATE
                 SET run = $2, addr = $3, started_at = $4, heartbeat_at = now()",
                &[&node, &run, &addr, &clock::now()],
            )
            .await
            .context("cannot record this node")?;
        drop(client);
        let (outgoing, receiver) = mpsc::unbounded_channel();
        let cluster = Arc::new(Cluster {
            node: node.into(),
            run: run.into(),
            nats,
            js,
            pg,
            heartbeat: Duration::from_millis(settings.node_heartbeat_ms.max(1)),
            dead_after: Duration::from_millis(settings.node_dead_after_ms),
            remote: RwLock::new(HashMap::new()),
            outgoing,
            emitted: AtomicU64::new(0),
            acked: watch::channel(0).0,
            leader: AtomicBool::new(false),
            reconnected,
            health: Mutex::new(Health {
                store_ok: true,
                stream_ok: true,
                ..Health::default()
            }),
        });
        Ok((cluster, receiver))
    }

    /// Starts the node's part of the cluster once the server's state exists: publishing and
    /// mirroring events, the presence map, requests for its devices, the heartbeat.
    pub async fn serve(
        self: &Arc<Self>,
        state: &AppState,
        outgoing: mpsc::UnboundedReceiver<events::Outgoing>,
    ) -> anyhow::Result<()> {
        tokio::spawn(events::publisher(self.clone(), outgoing));
        let mirror = events::Mirror::open(state.hub.log().dir(), state.settings.durability)?;
        // The stream's end now: what follows is news for this node's streams and presence
        // map, read after the presence snapshot below, so no change falls between the two.
        let live_after = events::stream_end(&self.js).await?;
        let presence = self
            .nats
            .subscribe(format!("{PRESENCE_PREFIX}>"))
            .await
            .context("cannot subscribe to the cluster's presence")?;
        self.release_own_presence(state).await?;
        self.load_presence().await?;
        tokio::spawn(events::mirror(
            self.clone(),
            state.clone(),
            mirror,
            live_after,
        ));
        tokio::spawn(events::presence(self.clone(), presence));
        let requests = self
            .nats
            .subscribe(format!("{NODE_PREFIX}{}", self.node))
            .await
            .context("cannot subscribe to this node's requests")?;
        tokio::spawn(route::serve(state.clone(), requests));
        tokio::spawn(housekeeping(self.clone(), state.clone()));
        Ok(())
    }

    /// Hands an event to the publisher; returns its number for [`Self::settle`].
    pub(crate) fn publish(&self, event: events::Outgoing) {
        self.emitted.fetch_add(1, Ordering::AcqRel);
        if self.outgoing.send(event).is_err() {
            tracing::warn!("the cluster publisher has stopped; event not published");
        }
    }

    /// Waits until every event emitted so far is in the stream (at most `timeout`), so an
    /// acknowledged write's events survive this node dying. Returns false on timeout.
    /// While NATS is away or the stream is known to fail it returns at once: the events wait in this
    /// node's queue, `/healthz` says `failing`, and writes do not each stall for `timeout`.
    pub async fn settle(&self, timeout: Duration) -> bool {
        let connected = matches!(
            self.nats.connection_state(),
            async_nats::connection::State::Connected
        );
        if !connected || !self.health.lock().stream_ok {
            return false;
        }
        let target = self.emitted.load(Ordering::Acquire);
        let mut acked = self.acked.subscribe();
        tokio::time::timeout(timeout, acked.wait_for(|n| *n >= target))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The node holding device `id`'s socket, if another node does.
    pub fn owner(&self, id: &str) -> Option<Arc<str>> {
        self.remote.read().get(id).cloned()
    }

    /// Whether device `id` is online on another node.
    pub fn online_elsewhere(&self, id: &str) -> bool {
        self.remote.read().contains_key(id)
    }

    /// Whether this node runs the rollouts.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Acquire)
    }

    pub(crate) fn note_remote_online(&self, id: &str, node: &str) {
        if node != &*self.node {
            self.remote.write().insert(id.into(), node.into());
        }
    }

    /// Forgets that device `id` is online on another node.
    pub fn note_remote_offline(&self, id: &str) {
        self.remote.write().remove(id);
    }

    /// Records that this node now holds device `id` on connection `conn`; says who held it
    /// before.
    pub async fn claim(&self, id: &str, conn: u64) -> Previous {
        let result = async {
            let client = self.pg.get().await.map_err(|e| e.to_string())?;
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                [&id, &&*self.node, &(conn as i64), &clock::now()];
            // The holder before this statement, read from its own snapshot.
            for _ in 0..3 {
                let moved = client
                    .query_opt(
                        "UPDATE herd_presence p SET node_id = $2, conn = $3, since = $4
                         FROM (SELECT node_id, conn FROM herd_presence WHERE device_id = $1 FOR UPDATE) old
                         WHERE p.device_id = $1
                         RETURNING old.node_id, old.conn",
                        &params,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                if let Some(row) = moved {
                    if row.get::<_, i64>(1) == ORPHAN {
                        return Ok(Previous::Orphan);
                    }
                    let node: String = row.get(0);
                    return Ok(if node == *self.node {
                        Previous::Nobody
                    } else {
                        Previous::Node(node)
                    });
                }
                let inserted = client
                    .execute(
                        "INSERT INTO herd_presence (device_id, node_id, conn, since)
                         VALUES ($1, $2, $3, $4) ON CONFLICT (device_id) DO NOTHING",
                        &params,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                if inserted == 1 {
                    return Ok(Previous::Nobody);
                }
                // Another node inserted it between the two statements: update it then.
            }
            Err::<Previous, _>("the presence row keeps changing".to_string())
        }
        .await;
        self.remote.write().remove(id);
        result.unwrap_or_else(|e| {
            tracing::warn!(device = id, error = %e, "cannot record the device's presence");
            Previous::Nobody
        })
    }

    /// Ends this node's hold on the orphaned session of device `id` (one a dead node held,
    /// see [`reap`]); false when a connection has claimed it since, which then announces
    /// the old session's end itself. An error counts as still held: the end is announced.
    pub async fn release_orphan(&self, id: &str) -> bool {
        let result = async {
            let client = self.pg.get().await.map_err(|e| e.to_string())?;
            client
                .execute(
                    "DELETE FROM herd_presence WHERE device_id = $1 AND node_id = $2 AND conn = $3",
                    &[&id, &&*self.node, &ORPHAN],
                )
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        match result {
            Ok(deleted) => deleted == 1,
            Err(e) => {
                tracing::warn!(device = id, error = %e, "cannot release an orphaned session");
                true
            }
        }
    }

    /// Tells the other nodes that this node holds device `id` now.
    pub async fn announce_presence(&self, id: &str) {
        let subject = format!("{PRESENCE_PREFIX}{}", self.node);
        if let Err(e) = self.nats.publish(subject, id.to_string().into()).await {
            tracing::warn!(device = id, error = %e, "cannot announce the device's presence");
        }
    }

    /// Forgets that this node holds device `id` on connection `conn`.
    pub async fn release(&self, id: &str, conn: u64) {
        let result = async {
            let client = self.pg.get().await.map_err(|e| e.to_string())?;
            client
                .execute(
                    "DELETE FROM herd_presence WHERE device_id = $1 AND node_id = $2 AND conn = $3",
                    &[&id, &&*self.node, &(conn as i64)],
                )
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(device = id, error = %e, "cannot clear the device's presence");
        }
    }

    /// Devices a previous run of this node held (it crashed or was killed, and came back
    /// before the others declared it dead) went offline with it.
    async fn release_own_presence(&self, state: &AppState) -> anyhow::Result<()> {
        let client = self.pg.get().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        // Orphans like a dead node's sessions (see `reap`): announced ended here unless
        // their devices are back on some node first.
        let rows = client
            .query(
                "UPDATE herd_presence SET conn = $2 WHERE node_id = $1 RETURNING device_id",
                &[&&*self.node, &ORPHAN],
            )
            .await
            .context("cannot read this node's presence")?;
        let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        crate::ops::disconnect::elsewhere(state, &ids).await;
        Ok(())
    }

    async fn load_presence(&self) -> anyhow::Result<()> {
        let client = self.pg.get().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let rows = client
            .query("SELECT device_id, node_id FROM herd_presence", &[])
            .await
            .context("cannot read the cluster's presence")?;
        let mut remote = self.remote.write();
        for row in rows {
            let node: String = row.get(1);
            if node != *self.node {
                remote.insert(row.get::<_, String>(0).into(), node.into());
            }
        }
        Ok(())
    }

    /// The cluster as `/healthz` shows it.
    pub async fn status(&self) -> ClusterStatus {
        let health = self.health.lock().clone();
        let nodes = match node_statuses(&self.pg, self.dead_after).await {
            Ok(nodes) => nodes,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the cluster's nodes");
                Vec::new()
            }
        };
        ClusterStatus {
            node: self.node.to_string(),
            rollout_leader: self.is_leader(),
            nats: match self.nats.connection_state() {
                async_nats::connection::State::Connected => "connected".to_string(),
                other => other.to_string(),
            },
            store_ok: health.store_ok && !nodes.is_empty(),
            stream_ok: health.stream_ok,
            stream_failures: health.stream_failures,
            log_lines_mirrored: health.log_lines_mirrored,
            stream_rejected: health.rejected,
            log_gap_events: health.log_gap_events,
            remote_devices: self.remote.read().len(),
            nodes,
        }
    }

    /// Whether the cluster's engines work, for `/healthz`'s status code.
    pub fn healthy(&self) -> bool {
        let health = self.health.lock();
        health.store_ok
            && health.stream_ok
            && matches!(
                self.nats.connection_state(),
                async_nats::connection::State::Connected
            )
    }

    /// Leaves the cluster on a clean shutdown: the node's row goes, so nobody waits for it
    /// to be declared dead (its devices already went offline in the first phase).
    pub async fn leave(&self) {
        let _ = self.settle(Duration::from_secs(5)).await;
        if let Ok(client) = self.pg.get().await {
            let _ = client
                .execute(
                    "DELETE FROM herd_presence WHERE node_id = $1",
                    &[&&*self.node],
                )
                .await;
            let _ = client
                .execute("DELETE FROM herd_leases WHERE holder = $1", &[&&*self.node])
                .await;
            let _ = client
                .execute("DELETE FROM herd_nodes WHERE node_id = $1", &[&&*self.node])
                .await;
        }
        let _ = self.nats.flush().await;
    }

    fn health(&self) -> parking_lot::MutexGuard<'_, Health> {
        self.health.lock()
    }
}

/// Every node with its device count and heartbeat age (PostgreSQL's clock).
pub async fn node_statuses(pg: &Pool, dead_after: Duration) -> anyhow::Result<Vec<NodeStatus>> {
    let client = pg.get().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let rows = client
        .query(
            "SELECT n.node_id, n.addr,
                    (SELECT count(*) FROM herd_presence p WHERE p.node_id = n.node_id),
                    EXTRACT(EPOCH FROM (now() - n.heartbeat_at))::DOUBLE PRECISION
             FROM herd_nodes n ORDER BY n.node_id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let age: f64 = row.get(3);
            NodeStatus {
                id: row.get(0),
                addr: row.get(1),
                devices: row.get(2),
                heartbeat_age_s: age,
                alive: age < dead_after.as_secs_f64(),
            }
        })
        .collect())
}

/// `herd-server cluster-status`: the nodes as PostgreSQL records them, read directly.
pub async fn cluster_status(settings: &ServerSettings) -> anyhow::Result<Vec<NodeStatus>> {
    let url = settings
        .store
        .as_deref()
        .context("cluster-status needs --store postgres://…")?;
    let pg = crate::store::postgres::connect_pool(url, settings.durability, 1)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    node_statuses(&pg, Duration::from_millis(settings.node_dead_after_ms)).await
}

/// The heartbeat, the search for dead nodes and the rollout lease, every heartbeat period.
async fn housekeeping(cluster: Arc<Cluster>, state: AppState) {
    let mut tick = tokio::time::interval(cluster.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Since when this node's heartbeats reach PostgreSQL without a break. Only a node that
    // has seen the others' heartbeats for a whole `dead_after` may call them dead: after an
    // outage of PostgreSQL every heartbeat is old, and the first node back would otherwise
    // declare all the others dead and send their devices reconnecting.
    let mut beating_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = state.shutdown.cancelled() => return,
        }
        match beat(&cluster).await {
            Ok(true) => {
                cluster.health().store_ok = true;
                beating_since.get_or_insert_with(tokio::time::Instant::now);
            }
            Ok(false) => {
                // Declared dead while alive: the others announced our devices offline and may
                // hold them now. Close every socket; the devices come back through the
                // balancer and are claimed again.
                tracing::warn!(node = %cluster.node, "this node was declared dead; closing its device sockets");
                cluster.health().fenced += 1;
                for conn in state.registry.slice(0, 1) {
                    conn.push(crate::registry::Out::Close(
                        "the node rejoins the cluster".into(),
                    ));
                }
            }
            Err(e) => {
                cluster.health().store_ok = false;
                beating_since = None;
                tracing::warn!(error = %e, "cannot record the node's heartbeat");
                continue;
            }
        }
        let judging = beating_since.is_some_and(|since| since.elapsed() >= cluster.dead_after);
        match if judging {
            reap(&cluster).await
        } else {
            Ok(Vec::new())
        } {
            Ok(ids) if !ids.is_empty() => {
                tracing::info!(devices = ids.len(), "devices of dead nodes go offline");
                for id in &ids {
                    cluster.note_remote_offline(id);
                }
                crate::ops::disconnect::elsewhere(&state, &ids).await;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot look for dead nodes"),
        }
        match lease(&cluster, ROLLOUT_LEASE).await {
            Ok(held) => {
                let was = cluster.leader.swap(held, Ordering::AcqRel);
                if held && !was {
                    tracing::info!(node = %cluster.node, "this node runs the rollouts");
                }
                if held {
                    // Rollouts made on other nodes, or left by a node that died, run here.
                    state.rollouts.resume_all(&state).await;
                } else if was {
                    // Its runners see it and stop.
                    tracing::warn!(node = %cluster.node, "the rollout lease moved to another node");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot renew the rollout lease"),
        }
    }
}

/// Writes the heartbeat; false if the node's row was gone (it had been declared dead).
async fn beat(cluster: &Cluster) -> anyhow::Result<bool> {
    let client = cluster.pg.get().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let updated = client
        .execute(
            "UPDATE herd_nodes SET heartbeat_at = now() WHERE node_id = $1 AND run = $2",
            &[&&*cluster.node, &&*cluster.run],
        )
        .await?;
    if updated == 1 {
        return Ok(true);
    }
    client
        .execute(
            "INSERT INTO herd_nodes (node_id, run, addr, started_at, heartbeat_at)
             VALUES ($1, $2, '', $3, now())
             ON CONFLICT (node_id) DO UPDATE SET run = $2, heartbeat_at = now()",
            &[&&*cluster.node, &&*cluster.run, &clock::now()],
        )
        .await?;
    Ok(false)
}

/// The connection number of a session whose node died and whose end is not announced yet
/// (real connection numbers have random high bits and are never 0).
const ORPHAN: i64 = 0;

/// Who held a device before a connection claimed it ([`Cluster::claim`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Previous {
    /// Nobody, or this node.
    Nobody,
    /// Another node, alive as far as anyone knows.
    Node(String),
    /// A dead node whose session's end was not announced yet: the claimant announces it.
    Orphan,
}

/// Adopts the presence rows of every dead node as this node's orphans (one statement
/// each, so one survivor gets them) and removes the node; returns the devices whose
/// sessions ended with it.
async fn reap(cluster: &Cluster) -> anyhow::Result<Vec<String>> {
    let mut client = cluster.pg.get().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let dead_after = cluster.dead_after.as_secs_f64();
    let dead: Vec<String> = client
        .query(
            "SELECT node_id FROM herd_nodes
             WHERE node_id <> $1 AND heartbeat_at < now() - make_interval(secs => $2)",
            &[&&*cluster.node, &dead_after],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut ids = Vec::new();
    for node in dead {
        let tx = client.transaction().await?;
        let gone = tx
            .execute(
                "DELETE FROM herd_nodes WHERE node_id = $1
                 AND heartbeat_at < now() - make_interval(secs => $2)",
                &[&node, &dead_after],
            )
            .await?;
        if gone == 0 {
            continue;
        }
        // The dead node's sessions become this node's orphans: each is announced ended
        // here unless its device has connected again in the meantime, whose connection
        // then announces it (see `Previous::Orphan`). Exactly one of the two does.
        let rows = tx
            .query(
                "UPDATE herd_presence SET node_id = $2, conn = $3 WHERE node_id = $1
                 RETURNING device_id",
                &[&node, &&*cluster.node, &ORPHAN],
            )
            .await?;
        tx.execute("DELETE FROM herd_leases WHERE holder = $1", &[&node])
            .await?;
        tx.commit().await?;
        tracing::warn!(node = %node, devices = rows.len(), "node declared dead");
        ids.extend(rows.iter().map(|r| r.get::<_, String>(0)));
    }
    Ok(ids)
}

/// Takes or renews lease `name` for `dead_after`; true while this node holds it.
async fn lease(cluster: &Cluster, name: &str) -> anyhow::Result<bool> {
    let client = cluster.pg.get().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let row = client
        .query_opt(
            "INSERT INTO herd_leases (name, holder, expires_at)
             VALUES ($1, $2, now() + make_interval(secs => $3))
             ON CONFLICT (name) DO UPDATE
             SET holder = $2, expires_at = now() + make_interval(secs => $3)
             WHERE herd_leases.holder = $2 OR herd_leases.expires_at < now()
             RETURNING holder",
            &[&name, &&*cluster.node, &cluster.dead_after.as_secs_f64()],
        )
        .await?;
    Ok(row.is_some())
}

/// Bytes per row of `herd_firmware_parts`.
const IMAGE_PART: usize = 1024 * 1024;

impl Cluster {
    /// Keeps firmware image `id` (stored at `path`) in PostgreSQL as well, so every node can
    /// send it to the devices it holds. Images are content-addressed: one already shared is
    /// left as it is.
    pub async fn share_image(&self, id: &str, path: &Path) -> anyhow::Result<()> {
        let bytes = tokio::fs::read(path)
            .await
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut client = self.pg.get().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let tx = client.transaction().await?;
        let parts = tx
            .query_one(
                "SELECT count(*) FROM herd_firmware_parts WHERE firmware_id = $1",
                &[&id],
            )
            .await?
            .get::<_, i64>(0);
        if parts == 0 {
            for (part, chunk) in bytes.chunks(IMAGE_PART).enumerate() {
                tx.execute(
                    "INSERT INTO herd_firmware_parts (firmware_id, part, data) VALUES ($1, $2, $3)
                     ON CONFLICT DO NOTHING",
                    &[&id, &(part as i32), &chunk],
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Writes image `id` from PostgreSQL to `path` if this node does not have it, checking
    /// that its bytes hash to its id.
    pub async fn fetch_image(&self, id: &str, path: &Path) -> anyhow::Result<()> {
        use sha2::Digest;
        if tokio::fs::try_exists(path).await.unwrap_or(false) {
            return Ok(());
        }
        let client = self.pg.get().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let rows = client
            .query(
                "SELECT data FROM herd_firmware_parts WHERE firmware_id = $1 ORDER BY part",
                &[&id],
            )
            .await
            .context("cannot read the image from the store")?;
        anyhow::ensure!(
            !rows.is_empty(),
            "no node shared the bytes of firmware {id}"
        );
        let mut bytes = Vec::new();
        let mut hasher = sha2::Sha256::new();
        for row in &rows {
            let part: &[u8] = row.get(0);
            hasher.update(part);
            bytes.extend_from_slice(part);
        }
        anyhow::ensure!(
            hex::encode(hasher.finalize()) == id,
            "the stored bytes of firmware {id} do not match its hash"
        );
        let temporary = path.with_extension("fetch");
        tokio::fs::write(&temporary, &bytes).await?;
        tokio::fs::rename(&temporary, path).await?;
        tracing::info!(
            firmware = id,
            bytes = bytes.len(),
            "image fetched from the store"
        );
        Ok(())
    }

    /// Forgets the shared bytes of image `id`.
    pub async fn forget_image(&self, id: &str) {
        if let Ok(client) = self.pg.get().await {
            let _ = client
                .execute(
                    "DELETE FROM herd_firmware_parts WHERE firmware_id = $1",
                    &[&id],
                )
                .await;
        }
    }
}
