//! Test harness: a real server on 127.0.0.1:0 with a temporary data directory, and real
//! WebSocket and HTTP clients.
#![allow(dead_code)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herd_config::ServerSettings;
use herd_server::Server;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a test waits for something that should happen promptly; generous, because
/// CI machines are shared and slow.
pub const WAIT: Duration = Duration::from_secs(20);

/// An HTTP client. Other workspace crates build reqwest with rustls but without a built-in
/// crypto provider (feature unification reaches these tests), so one is installed first.
pub fn http_client() -> reqwest::Client {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

pub fn test_settings(dir: &std::path::Path) -> ServerSettings {
    ServerSettings {
        data_dir: Some(dir.to_path_buf()),
        bcrypt_cost: 4,
        ..Default::default()
    }
}

pub struct TestServer {
    pub server: Option<Server>,
    pub dir: tempfile::TempDir,
    pub base: String,
    pub ws_base: String,
    pub admin_key: String,
    pub http: reqwest::Client,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut ServerSettings)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = test_settings(dir.path());
        tweak(&mut settings);
        let (_, admin_key) = herd_server::register_user(&settings, "admin", "secret")
            .await
            .expect("register admin");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Server::start(settings, listener)
            .await
            .expect("server starts");
        let addr = server.local_addr();
        Self {
            server: Some(server),
            dir,
            base: format!("http://{addr}/api/v2"),
            ws_base: format!("ws://{addr}/api/v2"),
            admin_key,
            http: http_client(),
        }
    }

    pub fn settings(&self) -> ServerSettings {
        self.server.as_ref().unwrap().state().settings.clone()
    }

    /// Stops the server and starts a new one on the same data directory.
    pub async fn restart(&mut self) {
        let settings = self.settings();
        self.server
            .take()
            .unwrap()
            .shutdown()
            .await
            .expect("clean shutdown");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Server::start(settings, listener)
            .await
            .expect("server restarts");
        let addr = server.local_addr();
        self.base = format!("http://{addr}/api/v2");
        self.ws_base = format!("ws://{addr}/api/v2");
        self.server = Some(server);
    }

    pub async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("clean shutdown");
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
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
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

    /// Creates a device owned by the admin; returns (id, token).
    pub async fn create_device(&self, name: &str) -> (String, String) {
        let (status, body) = self
            .call("POST", "/devices", Some(json!({"name": name})))
            .await;
        assert_eq!(status, 200, "{body}");
        (
            body["id"].as_str().unwrap().to_string(),
            body["token"].as_str().unwrap().to_string(),
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
        body["api_key"].as_str().unwrap().to_string()
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
        let (ws, _) =
            tokio_tungstenite::connect_async(format!("{}/rpc?access_token={token}", self.ws_base))
                .await
                .expect("device connects");
        let mut device = Device { ws, next_id: 1 };
        let request = device.expect_request("Sys.GetInfo").await;
        device
            .send(json!({"id": request["id"], "result": info}))
            .await;
        device
    }
}

/// A device speaking the wire protocol with a real WebSocket client.
pub struct Device {
    pub ws: Ws,
    pub next_id: u64,
}

impl Device {
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

/// Registers the administrator with the real binary `bin` in `dir`; returns its API key.
pub fn register_binary(bin: &str, dir: &std::path::Path) -> String {
    let out = std::process::Command::new(bin)
        .args([
            "--data-dir",
            dir.to_str().unwrap(),
            "--register-user",
            "admin",
            "pw",
        ])
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

/// Starts the real binary `bin` on `listen`; returns the child and the address it serves.
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
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(bin)
        .args(["--data-dir", dir.to_str().unwrap(), "--listen", listen])
        .args(extra)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut before = Vec::new();
    let addr = loop {
        let line = lines.next().expect("server printed its address").unwrap();
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
        before.push(line);
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    ((child, addr), before)
}
