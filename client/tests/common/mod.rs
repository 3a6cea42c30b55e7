//! Test harness shared by the client's and the console's integration tests: a real
//! herd-server on 127.0.0.1:0 with a temporary data directory, and simulated devices that
//! speak the device protocol (PROTOCOL §1-§4) over real WebSockets.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herd_config::ServerSettings;
use herd_server::Server;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

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

/// How long a test waits for something that should happen promptly; generous, because CI
/// machines are shared and slow.
pub const WAIT: Duration = Duration::from_secs(30);

pub struct TestServer {
    pub server: Option<Server>,
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub admin_key: String,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts with adjusted settings (TLS, for example).
    pub async fn start_with(tweak: impl FnOnce(&mut ServerSettings)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = Self::settings_for(dir.path());
        tweak(&mut settings);
        let (_, admin_key) = herd_server::register_user(&settings, "admin", "secret")
            .await
            .expect("register admin");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let server = Server::start(settings, listener)
            .await
            .expect("server starts");
        let addr = server.local_addr();
        TestServer {
            server: Some(server),
            dir,
            addr,
            admin_key,
        }
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

    /// The certificate of a [`start_tls`](Self::start_tls) server, the CA clients must trust.
    pub fn ca_cert(&self) -> std::path::PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// `https://localhost:PORT`: the name the certificate is for.
    pub fn https_url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    fn settings_for(dir: &std::path::Path) -> ServerSettings {
        ServerSettings {
            data_dir: Some(dir.to_path_buf()),
            bcrypt_cost: 4,
            rpc_timeout_ms: 5_000,
            ..Default::default()
        }
    }

    /// `http://127.0.0.1:PORT`, the form users type.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn ws_base(&self) -> String {
        format!("ws://{}/api/v2", self.addr)
    }

    pub fn client(&self) -> herd_client::Client {
        herd_client::Client::new(&self.url(), Some(&self.admin_key)).expect("client")
    }

    /// Stops the server (devices and streams see their sockets close).
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("clean shutdown");
        }
    }

    /// Starts the server again on the same address and data directory, as an operator
    /// restarting the service would.
    pub async fn start_again(&mut self) {
        assert!(self.server.is_none(), "stop first");
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("rebind the same port");
        let server = Server::start(Self::settings_for(self.dir.path()), listener)
            .await
            .expect("server restarts");
        self.server = Some(server);
    }

    /// Creates a device; returns (id, token).
    pub async fn create_device(&self, name: &str) -> (String, String) {
        let device = self
            .client()
            .create_device(&herd_client::NewDevice {
                name: Some(name.into()),
                id: None,
            })
            .await
            .expect("create device");
        (device.id, device.token.expect("token on creation"))
    }

    pub async fn shutdown(mut self) {
        self.stop().await;
    }
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
                send(&mut ws, json!({"id": frame["id"], "result": info()})).await;
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
                        send(&mut ws, report).await;
                        json!({"id": id, "result": null})
                    }
                    other => {
                        json!({"id": id, "error": {"code": 404, "message": format!("No handler for {other}")}})
                    }
                };
                if !id.is_null() {
                    send(&mut ws, reply).await;
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

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn send(ws: &mut Ws, value: Value) {
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
