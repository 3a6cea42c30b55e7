//! The one test server of Herd's integration tests: a real herd-server on 127.0.0.1:0 with a
//! temporary data directory, reached with real HTTP and WebSocket clients, and simulated
//! devices that speak the device protocol (PROTOCOL §1-§4).
//!
//! The store matrix: with `HERD_TEST_STORE=postgres` every [`TestServer`] (and every server
//! binary a test starts through [`store_args`]) keeps its data in PostgreSQL instead of
//! SQLite. The kit starts one throwaway PostgreSQL per test process ([`postgres`]) and gives
//! each server a fresh database of its own, so tests stay isolated and run in parallel.
//!
//! Cluster mode: [`cluster::TestCluster`] runs several nodes on one PostgreSQL database and
//! one [`nats::NatsServer`], in process or as real `herd-server` processes.
//!
//! ```no_run
//! # async fn demo() {
//! let server = herd_testkit::TestServer::start().await;
//! let (id, token) = server.create_device("lamp").await;
//! let mut device = server.device(&token).await;
//! device.report(serde_json::json!({"on": true})).await;
//! let (status, body) = server.call("GET", &format!("/devices/{id}"), None).await;
//! assert_eq!(status, 200, "{body}");
//! # }
//! ```

pub mod cluster;
pub mod nats;
pub mod postgres;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herd_config::ServerSettings;
use herd_server::Server;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a test waits for something that should happen promptly; generous, because
/// CI machines are shared and slow.
pub const WAIT: Duration = Duration::from_secs(30);

/// The environment variable that picks the store of every test server.
pub const STORE_ENV: &str = "HERD_TEST_STORE";

/// The store the test servers of this process use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestStore {
    Sqlite,
    Postgres,
    /// PostgreSQL, and every [`TestServer`] is a two-node cluster: REST on one node, the
    /// devices' socket (`ws_base`) on the other (PROTOCOL §1-§6 across nodes).
    Cluster,
}

/// The store `HERD_TEST_STORE` asks for: `postgres`, or `sqlite` (the default).
pub fn test_store() -> TestStore {
    match std::env::var(STORE_ENV).as_deref() {
        Ok("postgres") | Ok("postgresql") => TestStore::Postgres,
        Ok("cluster") => TestStore::Cluster,
        Ok("") | Ok("sqlite") | Err(_) => TestStore::Sqlite,
        Ok(other) => panic!("{STORE_ENV}={other:?}: expected sqlite or postgres"),
    }
}

/// The store URL for the server whose data directory is `dir`: `None` under SQLite, else a
/// database made for that directory on first use (so a server restarted on the same
/// directory, or registered with the binary first, finds its data again).
pub fn store_for(dir: &Path) -> Option<String> {
    static BY_DIR: Mutex<Option<HashMap<PathBuf, String>>> = Mutex::new(None);
    if test_store() == TestStore::Sqlite {
        return None;
    }
    let mut by_dir = BY_DIR.lock().unwrap_or_else(|p| p.into_inner());
    let url = by_dir
        .get_or_insert_with(HashMap::new)
        .entry(dir.to_path_buf())
        .or_insert_with(|| {
            postgres::shared_database()
                .unwrap_or_else(|e| panic!("{STORE_ENV}=postgres: no PostgreSQL: {e}"))
        })
        .clone();
    Some(url)
}

/// `--store URL` for a server binary with data directory `dir`, or nothing under SQLite.
pub fn store_args(dir: &Path) -> Vec<String> {
    match store_for(dir) {
        Some(url) => vec!["--store".into(), url],
        None => Vec::new(),
    }
}

/// An HTTP client. Other workspace crates build reqwest with rustls but without a built-in
/// crypto provider (feature unification reaches these tests), so one is installed first.
pub fn http_client() -> reqwest::Client {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// Settings of a test server on `dir`: cheap password hashing and the store of the matrix.
pub fn test_settings(dir: &Path) -> ServerSettings {
    ServerSettings {
        data_dir: Some(dir.to_path_buf()),
        store: store_for(dir),
        bcrypt_cost: 4,
        ..Default::default()
    }
}

/// A running herd-server with its administrator's key.
pub struct TestServer {
    pub server: Option<Server>,
    /// Under `HERD_TEST_STORE=cluster`: the node the devices connect to, and NATS.
    peer: Option<Peer>,
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    /// `http://ADDR/api/v2`.
    pub base: String,
    /// `ws://ADDR/api/v2`.
    pub ws_base: String,
    pub admin_key: String,
    pub http: reqwest::Client,
    /// herd-client with the administrator's key.
    pub client: herd_client::Client,
    settings: ServerSettings,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts with adjusted settings.
    pub async fn start_with(tweak: impl FnOnce(&mut ServerSettings)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = test_settings(dir.path());
        tweak(&mut settings);
        let (_, admin_key) = herd_server::register_user(&settings, "admin", "secret")
            .await
            .expect("register admin");
        if test_store() == TestStore::Cluster {
            return Self::start_pair(dir, settings, admin_key).await;
        }
        Self::start_registered(dir, settings, admin_key).await
    }

    /// Starts on `settings` as they are, with data directory `dir`, on a store where the
    /// administrator with `admin_key` is already registered: a node joining a cluster whose
    /// shared store another node set up ([`cluster`]).
    pub async fn start_registered(
        dir: tempfile::TempDir,
        settings: ServerSettings,
        admin_key: String,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let server = Server::start(settings.clone(), listener)
            .await
            .expect("server starts");
        let addr = server.local_addr();
        let client = admin_client(addr, &admin_key);
        Self {
            server: Some(server),
            peer: None,
            dir,
            addr,
            base: format!("http://{addr}/api/v2"),
            ws_base: format!("ws://{addr}/api/v2"),
            admin_key,
            http: http_client(),
            client,
            settings,
        }
    }

    /// The cluster form of a test server: this node serves REST, a second node on the same
    /// store and a fresh NATS serves the devices' socket.
    async fn start_pair(
        dir: tempfile::TempDir,
        settings: ServerSettings,
        admin_key: String,
    ) -> Self {
        let nats = nats::NatsServer::start().unwrap_or_else(|e| panic!("the cluster's NATS: {e}"));
        let joined = |mut settings: ServerSettings, node: &str, dir: &Path| {
            settings.nats = Some(nats.url());
            settings.node_id = Some(node.to_string());
            settings.data_dir = Some(dir.to_path_buf());
            settings.node_heartbeat_ms = cluster::HEARTBEAT_MS;
            settings.node_dead_after_ms = cluster::DEAD_AFTER_MS;
            settings
        };
        let peer_dir = tempfile::tempdir().expect("tempdir");
        let peer_settings = joined(settings.clone(), "node-devices", peer_dir.path());
        let settings = joined(settings, "node-rest", dir.path());
        let mut server = Self::start_registered(dir, settings, admin_key).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let peer_server = Server::start(peer_settings, listener)
            .await
            .expect("the devices' node starts");
        server.ws_base = format!("ws://{}/api/v2", peer_server.local_addr());
        server.peer = Some(Peer {
            server: Some(peer_server),
            _dir: peer_dir,
            _nats: nats,
        });
        server
    }

    /// Starts on https and wss with a fresh self-signed certificate for `localhost`, kept
    /// in the data directory ([`ca_cert`](Self::ca_cert)); clients reach it at
    /// [`https_url`](Self::https_url).
    pub async fn start_tls() -> Self {
        Self::start_with(|settings| {
            let dir = settings.data_dir.clone().expect("a data directory");
            let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
                .expect("certificate");
            let cert = dir.join("cert.pem");
            let key = dir.join("key.pem");
            std::fs::write(&cert, certified.cert.pem()).expect("write cert");
            std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key");
            settings.tls = Some(herd_config::TlsSettings { cert, key });
        })
        .await
    }

    /// The settings the server was started with.
    pub fn settings(&self) -> ServerSettings {
        self.settings.clone()
    }

    /// The certificate of a [`start_tls`](Self::start_tls) server, the CA clients must trust.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// `https://localhost:PORT`: the name the certificate is for.
    pub fn https_url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// `http://127.0.0.1:PORT`, the form users type.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The devices' endpoint, `ws://ADDR/api/v2/rpc`.
    pub fn socket_url(&self) -> String {
        format!("{}/rpc", self.ws_base)
    }

    /// Stops the server and starts a new one on another port with the same data directory
    /// and store.
    pub async fn restart(&mut self) {
        self.stop().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        self.serve(listener).await;
    }

    /// Stops the server (devices and streams see their sockets close).
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("clean shutdown");
        }
    }

    /// Starts the stopped server again on the same address, data directory and store, as an
    /// operator restarting the service would.
    pub async fn start_again(&mut self) {
        assert!(self.server.is_none(), "stop first");
        // The port was just released; the kernel may hold it for a moment.
        let mut attempt = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(_) if attempt < 50 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot bind {} again: {e}", self.addr),
            }
        };
        self.serve(listener).await;
    }

    async fn serve(&mut self, listener: tokio::net::TcpListener) {
        let server = Server::start(self.settings.clone(), listener)
            .await
            .expect("server restarts");
        let addr = server.local_addr();
        if addr != self.addr {
            self.addr = addr;
            self.base = format!("http://{addr}/api/v2");
            if self.peer.is_none() {
                self.ws_base = format!("ws://{addr}/api/v2");
            }
            self.client = admin_client(addr, &self.admin_key);
        }
        self.server = Some(server);
    }

    pub async fn shutdown(mut self) {
        self.stop().await;
        if let Some(server) = self.peer.as_mut().and_then(|peer| peer.server.take()) {
            server.shutdown().await.expect("clean shutdown");
        }
    }

    /// Everything the store holds, as text: the bytes of `herd.db`, or a dump of the
    /// PostgreSQL database. For checking what is (not) stored.
    pub fn store_contents(&self) -> String {
        match &self.settings.store {
            Some(url) => postgres::dump(url).expect("dump the database"),
            None => {
                let db = std::fs::read(self.dir.path().join("herd.db")).expect("read herd.db");
                String::from_utf8_lossy(&db).into_owned()
            }
        }
    }

    /// Polls `/healthz` until it answers `status`; returns that answer's body.
    pub async fn wait_for_health(&self, status: u16) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let resp = self
                .http
                .get(format!("{}/healthz", self.url()))
                .send()
                .await
                .expect("healthz answers");
            let got = resp.status().as_u16();
            let body: Value = resp.json().await.expect("healthz sends JSON");
            if got == status {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "/healthz of {} still answers {got}: {body}",
                self.url()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `GET /devices/:id` says `online` is `want`: the server's view, which
    /// follows a device's own by the time its session ends or starts here.
    pub async fn wait_online(&self, id: &str, want: bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (status, body) = self.call("GET", &format!("/devices/{id}"), None).await;
            assert_eq!(status, 200, "{body}");
            if body["online"] == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} never showed {id} online={want}: {body}",
                self.url()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A REST call with the admin key; returns status and JSON body.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(&self.admin_key, method, path, body).await
    }

    pub async fn call_as(
        &self,
        key: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        call_at(&self.http, &self.base, key, method, path, body).await
    }

    /// Creates a device owned by the admin; returns (id, token).
    pub async fn create_device(&self, name: &str) -> (String, String) {
        let (status, body) = self
            .call("POST", "/devices", Some(json!({"name": name})))
            .await;
        assert_eq!(status, 200, "{body}");
        (
            body["id"].as_str().expect("an id").to_string(),
            body["token"].as_str().expect("a token").to_string(),
        )
    }

    /// Adds a user through the REST flow; returns its API key.
    pub async fn add_user(&self, name: &str) -> String {
        let (status, body) = self
            .call(
                "POST",
                "/user/add",
                Some(json!({"name": name, "pass": "pw"})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["api_key"].as_str().expect("an API key").to_string()
    }

    /// A call to device `id` through the RPC proxy (PROTOCOL §6), with herd-client.
    pub async fn rpc(
        &self,
        id: &str,
        method: &str,
        params: Value,
    ) -> Result<Value, herd_client::Error> {
        self.client.call(id, method, Some(&params)).await
    }

    pub async fn ws(&self, path_and_query: &str) -> Ws {
        let (ws, _) =
            tokio_tungstenite::connect_async(format!("{}{}", self.ws_base, path_and_query))
                .await
                .expect("websocket connects");
        ws
    }

    /// Opens a notify stream with `key`.
    pub async fn notify(&self, key: &str) -> Ws {
        self.ws(&format!("/notify?access_token={key}")).await
    }

    /// Connects a device and answers its Sys.GetInfo.
    pub async fn device(&self, token: &str) -> Device {
        self.device_with_info(
            token,
            json!({"app": "test", "fw_version": "1.0", "arch": "x86_64"}),
        )
        .await
    }

    /// Connects a device whose Sys.GetInfo answers `info`.
    pub async fn device_with_info(&self, token: &str, info: Value) -> Device {
        Device::connect(&self.ws_base, token, info).await
    }
}

/// A REST call to `base` (`http://ADDR/api/v2`) with API key `key`; returns status and JSON
/// body (a string when the body is not JSON).
pub async fn call_at(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
    let mut req = http
        .request(method, format!("{base}{path}"))
        .bearer_auth(key);
    if let Some(body) = body {
        req = req.body(body.to_string());
    }
    let resp = req.send().await.expect("request sent");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// How many lines of the server's log `client` may see (one page of `POST /logs`, enough
/// for a test's log).
pub async fn visible_log_lines(client: &herd_client::Client) -> usize {
    client
        .logs(herd_client::LogsQuery {
            start: Some(0),
            limit: Some(10_000),
        })
        .await
        .expect("the log")
        .items
        .len()
}

/// All of the log `client` may see (`POST /logs`, PROTOCOL §7), page by page from offset 0,
/// each page starting where the server's `X-Herd-Next-Offset` said.
pub async fn whole_log(client: &herd_client::Client) -> Vec<Value> {
    let mut items = Vec::new();
    let mut start = 0;
    loop {
        let page = client
            .logs(herd_client::LogsQuery {
                start: Some(start),
                limit: Some(1_000),
            })
            .await
            .expect("the log");
        if page.items.is_empty() {
            return items;
        }
        start = page.next.unwrap_or(start + page.items.len() as u64);
        items.extend(page.items);
    }
}

/// The second node of a cluster-form [`TestServer`].
struct Peer {
    server: Option<Server>,
    _dir: tempfile::TempDir,
    _nats: nats::NatsServer,
}

fn admin_client(addr: SocketAddr, key: &str) -> herd_client::Client {
    herd_client::Client::new(&format!("http://{addr}"), Some(key)).expect("client")
}

/// A device speaking the wire protocol with a real WebSocket client.
pub struct Device {
    pub ws: Ws,
    pub next_id: u64,
}

impl Device {
    /// Connects to the device socket under `ws_base` (`ws://ADDR/api/v2`) with `token` and
    /// answers the server's `Sys.GetInfo` with `info` (PROTOCOL §3).
    pub async fn connect(ws_base: &str, token: &str, info: Value) -> Self {
        let (ws, _) =
            tokio_tungstenite::connect_async(format!("{ws_base}/rpc?access_token={token}"))
                .await
                .expect("device connects");
        let mut device = Device { ws, next_id: 1 };
        let request = device.expect_request("Sys.GetInfo").await;
        device
            .send(json!({"id": request["id"], "result": info}))
            .await;
        device
    }

    pub async fn send(&mut self, value: Value) {
        self.ws
            .send(Message::text(value.to_string()))
            .await
            .expect("send");
    }

    /// Next JSON frame from the server (skips pings).
    pub async fn recv(&mut self) -> Value {
        recv_json(&mut self.ws).await
    }

    /// Waits for a request with `method`, answering nothing else.
    pub async fn expect_request(&mut self, method: &str) -> Value {
        loop {
            let frame = self.recv().await;
            if frame["method"] == method {
                return frame;
            }
        }
    }

    /// A request with an id; returns the reply.
    pub async fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({"id": id, "method": method, "params": params}))
            .await;
        loop {
            let frame = self.recv().await;
            if frame["id"] == id && frame.get("method").is_none() {
                return frame;
            }
        }
    }

    pub async fn report(&mut self, reported: Value) -> Value {
        self.request(
            "Dash.Shadow.Update",
            json!({"state": {"reported": reported}}),
        )
        .await
    }
}

/// Next text frame parsed as JSON, within [`WAIT`].
pub async fn recv_json(ws: &mut Ws) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let message = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("timed out waiting for a frame")
            .expect("socket ended")
            .expect("socket error");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).expect("server sent JSON"),
            Message::Close(frame) => panic!("socket closed: {frame:?}"),
            _ => continue,
        }
    }
}

/// Reads notifications until one for `device` named `name` arrives; returns it.
pub async fn expect_event(ws: &mut Ws, device: &str, name: &str) -> Value {
    loop {
        let event = recv_json(ws).await;
        if event["id"] == device && event["name"] == name {
            return event;
        }
    }
}

pub fn request_with_token(
    url: &str,
    token: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse().unwrap());
    req
}

/// Registers the administrator with the real binary `bin` in `dir` (and the matrix's store
/// for `dir`); returns its API key.
pub fn register_binary(bin: &str, dir: &std::path::Path) -> String {
    let out = std::process::Command::new(bin)
        .args([
            "--data-dir",
            dir.to_str().unwrap(),
            "--register-user",
            "admin",
            "pw",
        ])
        .args(store_args(dir))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).expect("register prints JSON");
    assert_eq!(printed["user"], "email_admin");
    printed["api_key"].as_str().unwrap().to_string()
}

/// Starts the real binary `bin` on `listen` with data directory `dir` (and the matrix's
/// store for `dir`); returns the child and the address it serves.
pub fn spawn_binary(
    bin: &str,
    dir: &std::path::Path,
    listen: &str,
) -> (std::process::Child, String) {
    spawn_binary_with(bin, dir, listen, &[]).0
}

/// [`spawn_binary`] with more arguments; also returns what the server printed before its
/// address.
pub fn spawn_binary_with(
    bin: &str,
    dir: &std::path::Path,
    listen: &str,
    extra: &[&str],
) -> ((std::process::Child, String), Vec<String>) {
    let mut command = std::process::Command::new(bin);
    command
        .args(["--data-dir", dir.to_str().unwrap(), "--listen", listen])
        .args(store_args(dir))
        .args(extra);
    let mut child = command
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (addr, before) = wait_for_address(&mut child);
    ((child, addr), before)
}

/// Reads the piped stderr of a starting server until it logs the address it serves
/// (`addr=…`); returns that address and the lines before it. Panics with those lines if the
/// server ends first. Keeps draining stderr afterwards so the server never blocks on a
/// full pipe.
pub fn wait_for_address(child: &mut std::process::Child) -> (String, Vec<String>) {
    use std::io::{BufRead, BufReader};
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut lines = BufReader::new(stderr).lines();
    let mut before = Vec::new();
    let addr = loop {
        let Some(Ok(line)) = lines.next() else {
            let status = child.wait().ok();
            panic!(
                "the server ended ({status:?}) before printing its address:\n{}",
                before.join("\n")
            );
        };
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
        before.push(line);
    };
    let addr_shown = addr.clone();
    // Keep draining so the server never blocks on a full pipe; `HERD_TEST_SERVER_LOG=1`
    // shows what it says.
    let show = std::env::var_os("HERD_TEST_SERVER_LOG").is_some();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if show {
                eprintln!("[server {addr_shown}] {line}");
            }
        }
    });
    (addr, before)
}

/// Whether something a test needs is `present`; if not, prints that the test is skipped and
/// why, except under `CI`, where a missing program is a failure (`.ci/run` installs them).
pub fn available_or_skip(present: bool, what: &str, install: &str) -> bool {
    if present {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{what} is not installed ({install}; .ci/run installs it)"
    );
    eprintln!("skipped: {what} is not installed ({install})");
    false
}

/// A simulated smart light: answers `Sys.GetInfo`, `RPC.List`, `Echo` (returns its
/// params), `Fail` (a device error), and applies `Shadow.Delta` by reporting the new state
/// (PROTOCOL §4.3). Dropping it disconnects.
pub struct SimDevice {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl SimDevice {
    /// Connects and returns once the server has the device online (after its
    /// `Sys.GetInfo` was answered).
    pub async fn connect(ws_base: &str, token: &str) -> Self {
        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("{ws_base}/rpc?access_token={token}"))
                .await
                .expect("device connects");
        // The server calls Sys.GetInfo first (PROTOCOL §3); answering it means the device
        // is registered as online.
        loop {
            let frame = next_json(&mut ws).await.expect("Sys.GetInfo arrives");
            if frame["method"] == "Sys.GetInfo" {
                send_quietly(&mut ws, json!({"id": frame["id"], "result": info()})).await;
                break;
            }
        }
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut next_id = 1000;
            loop {
                let frame = tokio::select! {
                    _ = &mut stopped => {
                        let _ = ws.close(None).await;
                        return;
                    }
                    frame = next_json(&mut ws) => match frame {
                        Some(frame) => frame,
                        None => return,
                    },
                };
                let Some(method) = frame["method"].as_str() else {
                    continue;
                };
                let id = frame["id"].clone();
                let reply = match method {
                    "Sys.GetInfo" => json!({"id": id, "result": info()}),
                    "RPC.List" => {
                        json!({"id": id, "result": ["Echo", "Fail", "RPC.List", "Sys.GetInfo"]})
                    }
                    "Echo" => json!({"id": id, "result": frame["params"]}),
                    "Fail" => json!({"id": id, "error": {"code": -1, "message": "bad pin"}}),
                    "Shadow.Delta" => {
                        next_id += 1;
                        let report = json!({"id": next_id, "method": "Dash.Shadow.Update",
                            "params": {"state": {"reported": frame["params"]["state"]}}});
                        send_quietly(&mut ws, report).await;
                        json!({"id": id, "result": null})
                    }
                    other => {
                        json!({"id": id, "error": {"code": 404, "message": format!("No handler for {other}")}})
                    }
                };
                if !id.is_null() {
                    send_quietly(&mut ws, reply).await;
                }
            }
        });
        SimDevice {
            stop: Some(stop),
            task,
        }
    }

    pub async fn disconnect(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for SimDevice {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn info() -> Value {
    json!({"app": "smart-light", "arch": "esp32c3", "fw_version": "1.2.3", "uptime": 42})
}

async fn send_quietly(ws: &mut Ws, value: Value) {
    let _ = ws.send(Message::text(value.to_string())).await;
}

async fn next_json(ws: &mut Ws) -> Option<Value> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(text)) => return serde_json::from_str(&text).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}
