//! A herd-server cluster for tests: one fresh PostgreSQL database that every node shares,
//! one [`NatsServer`] with JetStream, and N nodes, each with its own data directory and
//! node id (`node-a`, `node-b`, …), a short heartbeat ([`HEARTBEAT_MS`]) and dead-after
//! bound ([`DEAD_AFTER_MS`]). The administrator is registered once in the shared store, so
//! its key works on every node.
//!
//! Nodes run in the test process ([`TestServer`], from [`TestCluster::start`] and
//! [`TestCluster::add_node`]) or as real `herd-server` processes ([`ProcessNode`], from
//! [`TestCluster::spawn_process`]) where a test needs to SIGKILL one. Where nats-server or
//! PostgreSQL is missing [`TestCluster::start`] prints why and returns `None` (the test is
//! skipped), except under `CI`, where it fails.
//!
//! ```no_run
//! # async fn demo() {
//! let Some(cluster) = herd_testkit::cluster::TestCluster::start(2).await else {
//!     return; // skipped: printed why
//! };
//! let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
//! let (id, token) = a.create_device("lamp").await;
//! let _device = herd_testkit::SimDevice::connect(&a.ws_base, &token).await;
//! let (status, body) = b.call("GET", &format!("/devices/{id}"), None).await;
//! assert_eq!((status, &body["online"]), (200, &serde_json::json!(true)));
//! # }
//! ```

use std::path::Path;
use std::process::{Child, Command, Stdio};

use herd_config::ServerSettings;
use serde_json::Value;

use crate::nats::NatsServer;
use crate::{postgres, Device, TestServer, Ws};

/// How often a test node records that it is alive, milliseconds.
pub const HEARTBEAT_MS: u64 = 200;
/// How long a test node may be silent before the others treat it as dead, milliseconds.
pub const DEAD_AFTER_MS: u64 = 1_500;

/// The id of the `index`th node: `node-a`, `node-b`, …, `node-z`, then `node-26`, ….
pub fn node_id(index: usize) -> String {
    match u8::try_from(index) {
        Ok(n) if n < 26 => format!("node-{}", char::from(b'a' + n)),
        _ => format!("node-{index}"),
    }
}

/// Whether nats-server and PostgreSQL are installed; prints why not (the test is then
/// skipped), and fails under `CI` instead.
pub fn available() -> bool {
    crate::available_or_skip(
        crate::nats::bin().is_some(),
        "nats-server",
        "apt-get install nats-server",
    ) && crate::available_or_skip(
        postgres::bin_dir().is_some(),
        "PostgreSQL",
        "apt-get install postgresql",
    )
}

/// The settings of cluster node `node_id` on store `store` and NATS `nats`, with data
/// directory `dir`.
fn node_settings(store: &str, nats: &str, node_id: &str, dir: &Path) -> ServerSettings {
    ServerSettings {
        data_dir: Some(dir.to_path_buf()),
        store: Some(store.to_string()),
        nats: Some(nats.to_string()),
        node_id: Some(node_id.to_string()),
        node_heartbeat_ms: HEARTBEAT_MS,
        node_dead_after_ms: DEAD_AFTER_MS,
        bcrypt_cost: 4,
        ..Default::default()
    }
}

/// A running cluster: its in-process nodes, its NATS and its shared store.
pub struct TestCluster {
    /// The in-process nodes, `nodes[0]` is `node-a`.
    pub nodes: Vec<TestServer>,
    /// The NATS server the nodes meet on; tests may stop or kill it.
    pub nats: NatsServer,
    /// The URL of the PostgreSQL database every node shares.
    pub store: String,
    /// The administrator's API key, valid on every node.
    pub admin_key: String,
    /// How many nodes (in-process and process) were made, for the next node's id.
    made: usize,
}

impl TestCluster {
    /// Starts a cluster of `nodes` in-process nodes; `None` when nats-server or PostgreSQL
    /// is missing (the reason is printed; under `CI` it fails instead).
    pub async fn start(nodes: usize) -> Option<Self> {
        Self::start_with(nodes, |_, _| {}).await
    }

    /// [`start`](Self::start) with every node's settings adjusted by `tweak` (called with
    /// the node's index).
    pub async fn start_with(
        nodes: usize,
        tweak: impl Fn(usize, &mut ServerSettings),
    ) -> Option<Self> {
        if !available() {
            return None;
        }
        let store = postgres::shared_database()
            .unwrap_or_else(|e| panic!("the cluster's PostgreSQL database: {e}"));
        Some(Self::start_on(store, nodes, tweak).await)
    }

    /// [`start_with`](Self::start_with) on the database `store` (a test that stops its own
    /// PostgreSQL uses one of its own). The caller checks [`available`].
    pub async fn start_on(
        store: String,
        nodes: usize,
        tweak: impl Fn(usize, &mut ServerSettings),
    ) -> Self {
        let nats = NatsServer::start().unwrap_or_else(|e| panic!("the cluster's NATS: {e}"));
        // One registration in the shared store serves every node.
        let scratch = tempfile::tempdir().expect("tempdir");
        let registration = ServerSettings {
            data_dir: Some(scratch.path().to_path_buf()),
            store: Some(store.clone()),
            bcrypt_cost: 4,
            ..Default::default()
        };
        let (_, admin_key) = herd_server::register_user(&registration, "admin", "secret")
            .await
            .expect("register the administrator in the shared store");
        let mut cluster = TestCluster {
            nodes: Vec::with_capacity(nodes),
            nats,
            store,
            admin_key,
            made: 0,
        };
        for index in 0..nodes {
            cluster.add_node_with(|s| tweak(index, s)).await;
        }
        cluster
    }

    /// The settings of node `node_id` with data directory `dir`: the shared store, this
    /// cluster's NATS, the short heartbeat and dead-after bounds, cheap password hashing.
    pub fn settings(&self, node_id: &str, dir: &Path) -> ServerSettings {
        node_settings(&self.store, &self.nats.url(), node_id, dir)
    }

    /// Starts one more in-process node with the next id; returns it.
    pub async fn add_node(&mut self) -> &TestServer {
        self.add_node_with(|_| {}).await
    }

    /// [`add_node`](Self::add_node) with adjusted settings.
    pub async fn add_node_with(&mut self, tweak: impl FnOnce(&mut ServerSettings)) -> &TestServer {
        let id = self.next_id();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = self.settings(&id, dir.path());
        tweak(&mut settings);
        let node = TestServer::start_registered(dir, settings, self.admin_key.clone()).await;
        self.nodes.push(node);
        self.nodes.last().expect("just pushed")
    }

    /// Starts one more node with the next id as a real `herd-server` process, the program
    /// at `bin` (a test of the server has it as `env!("CARGO_BIN_EXE_herd-server")`), with
    /// `--store`, `--nats` and `--node-id` on its command line and the bounds in a settings
    /// file in its data directory. Returns once it serves.
    pub fn spawn_process(&mut self, bin: &str) -> ProcessNode {
        let id = self.next_id();
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("node.toml");
        std::fs::write(
            &config,
            format!(
                "bcrypt_cost = 4\nnode_heartbeat_ms = {HEARTBEAT_MS}\n\
                 node_dead_after_ms = {DEAD_AFTER_MS}\n"
            ),
        )
        .expect("write the node's settings");
        let mut command = Command::new(bin);
        command
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--listen", "127.0.0.1:0"])
            .args(["--store", &self.store])
            .args(["--nats", &self.nats.url()])
            .args(["--node-id", &id])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // From the kit's long-lived spawner: a test process that dies takes the node along.
        let mut child =
            postgres::spawn_long_lived(command).unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
        let (addr, _) = crate::wait_for_address(&mut child);
        ProcessNode {
            node_id: id,
            base: format!("http://{addr}/api/v2"),
            ws_base: format!("ws://{addr}/api/v2"),
            client: herd_client::Client::new(&format!("http://{addr}"), Some(&self.admin_key))
                .expect("client"),
            addr,
            admin_key: self.admin_key.clone(),
            http: crate::http_client(),
            dir,
            child: Some(child),
        }
    }

    fn next_id(&mut self) -> String {
        let id = node_id(self.made);
        self.made += 1;
        id
    }

    /// Stops every in-process node cleanly, then NATS.
    pub async fn shutdown(mut self) {
        for node in self.nodes.drain(..) {
            node.shutdown().await;
        }
        self.nats.stop();
    }
}

/// A cluster node running as a real `herd-server` process; SIGKILLed on drop.
pub struct ProcessNode {
    pub node_id: String,
    /// Its data directory.
    pub dir: tempfile::TempDir,
    /// The address it serves, `127.0.0.1:PORT`.
    pub addr: String,
    /// `http://ADDR/api/v2`.
    pub base: String,
    /// `ws://ADDR/api/v2`.
    pub ws_base: String,
    pub admin_key: String,
    pub http: reqwest::Client,
    /// herd-client with the administrator's key.
    pub client: herd_client::Client,
    child: Option<Child>,
}

impl ProcessNode {
    /// Kills the process with SIGKILL (no shutdown work at all, as a crash or the OOM
    /// killer would) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the process runs (it was not killed by the kit).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A REST call with the admin key; returns status and JSON body.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        crate::call_at(&self.http, &self.base, &self.admin_key, method, path, body).await
    }

    /// Connects a device and answers its Sys.GetInfo.
    pub async fn device(&self, token: &str) -> Device {
        Device::connect(
            &self.ws_base,
            token,
            serde_json::json!({"app": "test", "fw_version": "1.0", "arch": "x86_64"}),
        )
        .await
    }

    /// Opens a notify stream with `key`.
    pub async fn notify(&self, key: &str) -> Ws {
        let (ws, _) =
            tokio_tungstenite::connect_async(format!("{}/notify?access_token={key}", self.ws_base))
                .await
                .expect("notify connects");
        ws
    }
}

impl Drop for ProcessNode {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_named_in_order() {
        assert_eq!(node_id(0), "node-a");
        assert_eq!(node_id(1), "node-b");
        assert_eq!(node_id(25), "node-z");
        assert_eq!(node_id(26), "node-26");
    }

    #[test]
    fn node_settings_are_a_valid_cluster() {
        // herd-config's validation accepts what the kit gives every node.
        let settings = node_settings(
            "postgresql://postgres@/herd_0?host=/tmp",
            "nats://127.0.0.1:4222",
            &node_id(0),
            Path::new("/tmp/node-a"),
        );
        settings.validate().expect("valid cluster settings");
        assert_eq!(settings.node_id.as_deref(), Some("node-a"));
    }
}
