//! A real server on 127.0.0.1 with a temporary data directory, a REST client and a notify
//! stream, for running agents against.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use herd_agent::agent::{Agent, AgentHandle, AgentOptions, AgentStatus, ImagePolicy};
use herd_agent::download::DownloadOptions;
use herd_agent::runner::LinkOptions;
use herd_client::{Client, NewDevice, NotifyEvent, NotifyStream};
use herd_config::ServerSettings;
use herd_server::Server;
use serde_json::Value;

/// Longest wait for something that should happen promptly; generous for shared CI machines.
pub const WAIT: Duration = Duration::from_secs(30);

/// Fast reconnects, so tests do not wait on backoff.
pub fn quick_link() -> LinkOptions {
    LinkOptions {
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        connect_timeout: Duration::from_secs(5),
        ..LinkOptions::default()
    }
}

pub struct TestServer {
    pub server: Option<Server>,
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub admin_key: String,
    pub client: Client,
}

impl TestServer {
    pub async fn start() -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = ServerSettings {
            data_dir: Some(dir.path().to_path_buf()),
            bcrypt_cost: 4,
            ..Default::default()
        };
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
        let client = Client::new(&format!("http://{addr}"), Some(&admin_key)).expect("client");
        TestServer {
            server: Some(server),
            dir,
            addr,
            admin_key,
            client,
        }
    }

    pub fn http(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn socket_url(&self) -> String {
        format!("ws://{}/api/v2/rpc", self.addr)
    }

    /// Stops the server; devices see their sockets close.
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("clean shutdown");
        }
    }

    /// Starts the server again on the same address and data directory.
    pub async fn start_again(&mut self) {
        let settings = ServerSettings {
            data_dir: Some(self.dir.path().to_path_buf()),
            bcrypt_cost: 4,
            ..Default::default()
        };
        // The port was just released; retry briefly in case the kernel still holds it.
        let mut attempt = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(e) if attempt < 50 => {
                    attempt += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot bind {} again: {e}", self.addr),
            }
        };
        self.server = Some(
            Server::start(settings, listener)
                .await
                .expect("server restarts"),
        );
    }

    pub async fn create_device(&self, name: &str) -> (String, String) {
        let device = self
            .client
            .create_device(&NewDevice {
                name: Some(name.into()),
                id: None,
            })
            .await
            .expect("create device");
        (device.id, device.token.expect("token on creation"))
    }

    pub async fn rpc(
        &self,
        id: &str,
        method: &str,
        params: Value,
    ) -> Result<Value, herd_client::Error> {
        self.client.call(id, method, Some(&params)).await
    }

    pub fn notify(&self) -> NotifyStream {
        self.client.notify()
    }
}

/// Options of an in-process agent of `server`. It stages the images it is sent and boots
/// the engine on them without running anything, so tests see the update logic work.
pub fn agent_options(server: &TestServer, token: &str, data_dir: PathBuf) -> AgentOptions {
    AgentOptions {
        server: Some(server.socket_url()),
        token: Some(token.into()),
        link: quick_link(),
        images: ImagePolicy::StageOnly,
        download: quick_download(),
        ..AgentOptions::new(data_dir)
    }
}

/// Fast download retries, so tests do not wait on backoff.
pub fn quick_download() -> DownloadOptions {
    DownloadOptions {
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..DownloadOptions::default()
    }
}

pub async fn start_agent(options: AgentOptions) -> AgentHandle {
    Agent::start(options).await.expect("agent starts")
}

/// A server with one registered device whose agent is connected and has reported, and a
/// notify stream that saw it happen.
pub struct Connected {
    pub server: TestServer,
    pub id: String,
    pub token: String,
    /// The agent's data directory; removed when dropped.
    pub data_dir: tempfile::TempDir,
    pub events: NotifyStream,
    pub agent: AgentHandle,
}

/// Starts a server, registers `lamp` and runs its agent until it reported on connect.
pub async fn connected_agent() -> Connected {
    let server = TestServer::start().await;
    let (id, token) = server.create_device("lamp").await;
    let data_dir = tempfile::tempdir().expect("tempdir");
    let mut events = server.notify();
    subscribed(&mut events).await;
    let agent = start_agent(agent_options(&server, &token, data_dir.path().into())).await;
    wait_connect_report(&mut events, &id, |_| true).await;
    Connected {
        server,
        id,
        token,
        data_dir,
        events,
        agent,
    }
}

pub async fn wait_status(
    agent: &mut AgentHandle,
    what: &str,
    predicate: impl FnMut(&AgentStatus) -> bool,
) -> AgentStatus {
    match tokio::time::timeout(WAIT, agent.wait_for(predicate)).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => panic!("agent ended while waiting for {what}: {e}"),
        Err(_) => panic!("timed out waiting for {what}; status {:?}", agent.status()),
    }
}

/// Waits for a notification about `device` named `name` whose data satisfies `predicate`.
pub async fn wait_event(
    stream: &mut NotifyStream,
    device: &str,
    name: &str,
    mut predicate: impl FnMut(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {name} of {device}"))
            .expect("notify stream ended");
        if let NotifyEvent::Notification(n) = event {
            if n.id == device && n.name == name && predicate(&n.data) {
                return n.data;
            }
        }
    }
}

/// Waits until the notify stream is connected, so no event is missed after this.
pub async fn subscribed(stream: &mut NotifyStream) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("timed out waiting for the notify stream")
            .expect("notify stream ended");
        if matches!(event, NotifyEvent::Connected) {
            return;
        }
    }
}

/// Waits for the report a device sends when it connects (`on` and `ota` together,
/// PROTOCOL §4.4) and returns `reported`. The server handles it on the new connection,
/// so once it is seen the device is reachable through the RPC proxy.
pub async fn wait_connect_report(
    stream: &mut NotifyStream,
    device: &str,
    mut predicate: impl FnMut(&Value) -> bool,
) -> Value {
    let data = wait_event(stream, device, "rpc.out.Dash.Shadow.Update", |d| {
        let reported = &d["state"]["reported"];
        reported.get("on").is_some() && reported.get("ota").is_some() && predicate(reported)
    })
    .await;
    data["state"]["reported"].clone()
}

/// What [`ImageServer`] does wrong, once each.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Close the connection after this many body bytes of the first response.
    pub cut_first_after: Option<usize>,
    /// Answer the first request that asks for a range with the whole image (200).
    pub ignore_first_range: bool,
    /// Answer every request with this status and no body.
    pub always_status: Option<u16>,
}

/// A request [`ImageServer`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    pub path: String,
    pub authorization: Option<String>,
    pub range: Option<String>,
}

/// A small HTTP/1.1 server on 127.0.0.1 that serves one image at every path and honours
/// `Range: bytes=N-` with 206, as the firmware store does (PROTOCOL §10.1). It is the
/// device's peer in download tests, not the thing under test; [`Faults`] make it break a
/// transfer the way networks and servers do.
pub struct ImageServer {
    pub addr: SocketAddr,
    seen: std::sync::Arc<std::sync::Mutex<Vec<SeenRequest>>>,
}

impl ImageServer {
    pub async fn start(image: Vec<u8>, faults: Faults) -> ImageServer {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let image = Arc::new(image);
        let cut_pending = Arc::new(AtomicBool::new(faults.cut_first_after.is_some()));
        let ignore_pending = Arc::new(AtomicBool::new(faults.ignore_first_range));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (image, log) = (image.clone(), log.clone());
                let (cut_pending, ignore_pending) = (cut_pending.clone(), ignore_pending.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buffer = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buffer[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head).to_string();
                    let mut lines = text.lines();
                    let path = lines
                        .next()
                        .and_then(|line| line.split_whitespace().nth(1))
                        .unwrap_or_default()
                        .to_string();
                    let header = |name: &str| {
                        text.lines().skip(1).find_map(|line| {
                            let (key, value) = line.split_once(':')?;
                            key.trim()
                                .eq_ignore_ascii_case(name)
                                .then(|| value.trim().to_string())
                        })
                    };
                    let request = SeenRequest {
                        path,
                        authorization: header("authorization"),
                        range: header("range"),
                    };
                    log.lock().expect("log").push(request.clone());
                    let start = request
                        .range
                        .as_deref()
                        .and_then(|r| r.strip_prefix("bytes="))
                        .and_then(|r| r.strip_suffix('-'))
                        .and_then(|n| n.parse::<usize>().ok())
                        .filter(|_| !ignore_pending.swap(false, Ordering::SeqCst));
                    let (status, body) = match (faults.always_status, start) {
                        (Some(code), _) => (format!("{code} Refused"), &image[..0]),
                        (None, start) => match start {
                            Some(start) if start < image.len() => (
                                format!(
                                    "206 Partial Content\r\nContent-Range: bytes {start}-{}/{}",
                                    image.len() - 1,
                                    image.len()
                                ),
                                &image[start..],
                            ),
                            Some(_) => (
                                format!(
                                    "416 Range Not Satisfiable\r\nContent-Range: bytes */{}",
                                    image.len()
                                ),
                                &image[..0],
                            ),
                            None => ("200 OK".to_string(), &image[..]),
                        },
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    if stream.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                    let body = match faults.cut_first_after {
                        Some(cut) if cut_pending.swap(false, Ordering::SeqCst) => {
                            &body[..cut.min(body.len())]
                        }
                        _ => body,
                    };
                    let _ = stream.write_all(body).await;
                    let _ = stream.flush().await;
                });
            }
        });
        ImageServer { addr, seen }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn requests(&self) -> Vec<SeenRequest> {
        self.seen.lock().expect("log").clone()
    }
}

/// Bytes that are not all alike, so a misplaced chunk changes the SHA-256.
pub fn noise(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (x >> 16) as u8
        })
        .collect()
}

/// A firmware image with a `HERD-IMAGE` header naming its version (PROTOCOL §10.1).
pub fn named_image(version: &str, len: usize) -> Vec<u8> {
    let mut image = format!("HERD-IMAGE {{\"fw_version\": \"{version}\"}}\n").into_bytes();
    let rest = len.saturating_sub(image.len());
    image.extend(noise(rest, 3));
    image
}

/// The image's id: the lowercase hex SHA-256 (PROTOCOL §10.1).
pub fn sha256_hex(image: &[u8]) -> String {
    firmware_core::ota::ContentHash::of(image).hex()
}
