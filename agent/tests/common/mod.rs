//! What the agent's tests add to herd-testkit's server: in-process agents with quick
//! backoff, waiting for their status and events, and an image server with faults.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use herd_agent::agent::{Agent, AgentHandle, AgentOptions, AgentStatus, ImagePolicy};
use herd_agent::download::DownloadOptions;
use herd_agent::runner::LinkOptions;
use herd_client::{NotifyEvent, NotifyStream};
use serde_json::Value;

pub use herd_testkit::{TestServer, WAIT};

/// Fast reconnects, so tests do not wait on backoff.
pub fn quick_link() -> LinkOptions {
    LinkOptions {
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        connect_timeout: Duration::from_secs(5),
        ..LinkOptions::default()
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
    let mut events = server.client.notify();
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
