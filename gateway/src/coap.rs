//! `herd-gateway coap`: Pyaiot's CoAP nodes as Herd devices.
//!
//! The gateway is a CoAP server on UDP (RFC 7252, messages through `coap-lite`), and it
//! speaks Pyaiot's CoAP gateway protocol:
//!
//! | request | from | meaning |
//! |---|---|---|
//! | `POST /alive` | node | the node is alive (any payload); it is known by its address |
//! | `POST /server`, payload `<path>:<value>` | node | a resource changed |
//! | `GET /.well-known/core` | gateway | the node's resources, in link format (RFC 6690) |
//! | `GET /<path>` | gateway | one resource's value, as text |
//! | `PUT /<path>`, payload the value | gateway | set a resource |
//!
//! A node seen for the first time is discovered: its resource list, then each value, which
//! become keys of its device's `reported` shadow (text that reads as a JSON number, `true`
//! or `false` is stored as that; other text as a string). A `desired` key becomes a `PUT`.
//! A node is reached at the address its messages come from, and it is offline after the
//! timeout (Pyaiot's 120 s) without an alive message.
//!
//! Requests the gateway sends are confirmable and retransmitted with the RFC's backoff
//! (2 s, doubled, 3 retransmissions); datagrams that are not CoAP, or requests it does not
//! serve, are counted and answered with an error where CoAP has one. None stops it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use herd_client::Client;
use serde_json::{Map, Value};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::link::{LinkContext, Links, ToCloud, ToNode};
use crate::nodes::Registry;
use crate::topics::{Family, NodeKey};
use crate::Counters;

/// Pyaiot's default: a node not heard from for this long is gone.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// The CoAP port.
pub const DEFAULT_PORT: u16 = 5683;

/// RFC 7252's ACK_TIMEOUT and MAX_RETRANSMIT.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_RETRANSMIT: u32 = 3;
/// Largest datagram read.
const MAX_DATAGRAM: usize = 1500;

/// How to run the CoAP gateway.
#[derive(Debug, Clone)]
pub struct CoapGatewayOptions {
    /// A node silent this long goes offline.
    pub timeout: Duration,
    /// How long a forwarded cloud call waits (CoAP nodes answer none; kept for the link).
    pub rpc_timeout: Duration,
    /// Where `nodes.json` lives.
    pub data_dir: PathBuf,
    /// Most nodes given devices.
    pub max_nodes: usize,
    /// First wait for a confirmable request's answer (doubled per retransmission).
    pub ack_timeout: Duration,
}

impl CoapGatewayOptions {
    pub fn new(data_dir: PathBuf) -> CoapGatewayOptions {
        CoapGatewayOptions {
            timeout: DEFAULT_TIMEOUT,
            rpc_timeout: Duration::from_secs(10),
            data_dir,
            max_nodes: 10_000,
            ack_timeout: ACK_TIMEOUT,
        }
    }
}

/// Requests the gateway sent and is waiting on, by token.
type Waiting = Arc<Mutex<HashMap<Vec<u8>, oneshot::Sender<Packet>>>>;

/// The socket and what the gateway's own requests need.
#[derive(Clone)]
struct Endpoint {
    socket: Arc<UdpSocket>,
    waiting: Waiting,
    ack_timeout: Duration,
    counters: Arc<Counters>,
}

impl Endpoint {
    /// A confirmable request to `peer`, retransmitted until answered; the response.
    async fn request(
        &self,
        peer: SocketAddr,
        method: RequestType,
        path: &str,
        payload: Vec<u8>,
    ) -> anyhow::Result<Packet> {
        let mut packet = Packet::new();
        packet.header.set_type(MessageType::Confirmable);
        packet.header.code = MessageClass::Request(method);
        packet.header.message_id = rand::random();
        let token: [u8; 8] = rand::random();
        packet.set_token(token.to_vec());
        for segment in path.split('/').filter(|s| !s.is_empty()) {
            packet.add_option(CoapOption::UriPath, segment.as_bytes().to_vec());
        }
        packet.payload = payload;
        let bytes = packet
            .to_bytes()
            .map_err(|e| anyhow::anyhow!("cannot encode a request for {path}: {e:?}"))?;
        let (tx, mut rx) = oneshot::channel();
        self.lock().insert(token.to_vec(), tx);
        let mut wait = self.ack_timeout;
        let mut outcome = Err(anyhow::anyhow!(
            "{peer} did not answer {method:?} {path} after {MAX_RETRANSMIT} retransmissions"
        ));
        for _ in 0..=MAX_RETRANSMIT {
            if let Err(e) = self.socket.send_to(&bytes, peer).await {
                outcome = Err(anyhow::anyhow!("cannot send to {peer}: {e}"));
                break;
            }
            self.counters.published.fetch_add(1, Ordering::Relaxed);
            match tokio::time::timeout(wait, &mut rx).await {
                Ok(Ok(response)) => {
                    outcome = Ok(response);
                    break;
                }
                Ok(Err(_)) => break,
                Err(_) => wait *= 2,
            }
        }
        self.lock().remove(token.as_slice());
        if outcome.is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
        outcome
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, oneshot::Sender<Packet>>> {
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn send(&self, packet: &Packet, peer: SocketAddr) {
        match packet.to_bytes() {
            Ok(bytes) => {
                if let Err(e) = self.socket.send_to(&bytes, peer).await {
                    tracing::warn!(%peer, error = %e, "cannot answer");
                }
            }
            Err(e) => tracing::warn!(%peer, error = ?e, "cannot encode an answer"),
        }
    }
}

/// The answer to `request`: piggybacked on the ACK for a confirmable request, else
/// non-confirmable (RFC 7252 §5.2).
fn answer(request: &Packet, code: ResponseType, payload: &[u8]) -> Packet {
    let mut response = Packet::new();
    let confirmable = request.header.get_type() == MessageType::Confirmable;
    response.header.set_type(if confirmable {
        MessageType::Acknowledgement
    } else {
        MessageType::NonConfirmable
    });
    response.header.message_id = if confirmable {
        request.header.message_id
    } else {
        rand::random()
    };
    response.header.code = MessageClass::Response(code);
    response.set_token(request.get_token().to_vec());
    response.payload = payload.to_vec();
    response
}

fn path_of(packet: &Packet) -> String {
    packet
        .get_option(CoapOption::UriPath)
        .map(|segments| {
            segments
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
                .join("/")
        })
        .unwrap_or_default()
}

/// Resource paths of a link-format document (RFC 6690), without `.well-known/core`.
pub fn resources(link_format: &str) -> Vec<String> {
    link_format
        .split(',')
        .filter_map(|link| {
            let target = link.split(';').next()?.trim();
            let path = target.strip_prefix('<')?.strip_suffix('>')?;
            let path = path.trim_start_matches('/');
            (!path.is_empty() && !path.starts_with(".well-known")).then(|| path.to_string())
        })
        .collect()
}

/// A resource's text as a shadow value: JSON numbers and booleans as such, else a string.
pub fn value_of(text: &str) -> Value {
    let trimmed = text.trim();
    match serde_json::from_str::<Value>(trimmed) {
        Ok(value @ (Value::Number(_) | Value::Bool(_))) => value,
        _ => Value::String(text.to_string()),
    }
}

/// A shadow value as a resource's text.
pub fn text_of(value: &Value) -> Vec<u8> {
    match value {
        Value::String(text) => text.clone().into_bytes(),
        other => other.to_string().into_bytes(),
    }
}

/// Binds `listen` and runs the gateway until `shutdown` fires.
pub async fn run(
    listen: SocketAddr,
    options: CoapGatewayOptions,
    client: Client,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let socket = UdpSocket::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on udp {listen}: {e}"))?;
    run_on(socket, options, client, counters, shutdown).await
}

/// Runs the gateway on a bound socket.
pub async fn run_on(
    socket: UdpSocket,
    options: CoapGatewayOptions,
    client: Client,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let registry = Arc::new(Registry::open(&options.data_dir, options.max_nodes)?);
    let endpoint = Endpoint {
        socket: Arc::new(socket),
        waiting: Arc::default(),
        ack_timeout: options.ack_timeout,
        counters: counters.clone(),
    };
    tracing::info!(addr = ?endpoint.socket.local_addr().ok(), "CoAP gateway listening");
    let (context, mut from_links) =
        LinkContext::new(client, registry, options.rpc_timeout, "coap-node");
    let mut links: Links<SocketAddr> = Links::new(context);
    let mut sweep =
        tokio::time::interval(options.timeout.div_f64(8.0).max(Duration::from_millis(100)));
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            received = endpoint.socket.recv_from(&mut buf) => {
                let (len, peer) = match received {
                    Ok(received) => received,
                    Err(e) => {
                        // ICMP errors from earlier sends surface here on some systems.
                        tracing::debug!(error = %e, "udp receive");
                        continue;
                    }
                };
                counters.messages.fetch_add(1, Ordering::Relaxed);
                let packet = match Packet::from_bytes(&buf[..len]) {
                    Ok(packet) => packet,
                    Err(e) => {
                        counters.rejected.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%peer, error = ?e, "not a CoAP message");
                        continue;
                    }
                };
                datagram(&endpoint, &mut links, peer, packet).await;
            }
            Some((node, out)) = from_links.recv() => {
                if let (Family::Coap, ToNode::Desired(params)) = (node.family, out) {
                    let Ok(peer) = node.node.parse::<SocketAddr>() else { continue };
                    let Some(state) = params.get("state").and_then(Value::as_object).cloned() else { continue };
                    let endpoint = endpoint.clone();
                    links.spawn(async move {
                        for (path, value) in state {
                            match endpoint.request(peer, RequestType::Put, &path, text_of(&value)).await {
                                Ok(response) if is_success(&response) => {}
                                Ok(response) => tracing::warn!(%peer, %path, code = ?response.header.code, "the node refused a value"),
                                Err(e) => tracing::warn!(%peer, %path, error = %e, "cannot set a value"),
                            }
                        }
                    });
                }
            }
            _ = sweep.tick() => links.sweep(options.timeout),
        }
    }
    links.close().await;
    Ok(())
}

fn is_success(packet: &Packet) -> bool {
    matches!(
        packet.header.code,
        MessageClass::Response(
            ResponseType::Created
                | ResponseType::Deleted
                | ResponseType::Valid
                | ResponseType::Changed
                | ResponseType::Content
        )
    )
}

async fn datagram(
    endpoint: &Endpoint,
    links: &mut Links<SocketAddr>,
    peer: SocketAddr,
    packet: Packet,
) {
    let counters = &endpoint.counters;
    match packet.header.code {
        MessageClass::Response(_) => {
            // A separate response is confirmable and must be acknowledged (RFC 7252 §5.2.2).
            if packet.header.get_type() == MessageType::Confirmable {
                let mut ack = Packet::new();
                ack.header.set_type(MessageType::Acknowledgement);
                ack.header.message_id = packet.header.message_id;
                endpoint.send(&ack, peer).await;
            }
            let waiter = endpoint.lock().remove(packet.get_token());
            match waiter {
                Some(waiter) => {
                    let _ = waiter.send(packet);
                }
                None => tracing::debug!(%peer, "a response nobody waits for"),
            }
        }
        MessageClass::Empty => {
            // An empty ACK (a separate response follows) or a ping (answered with RST).
            if packet.header.get_type() == MessageType::Confirmable {
                let mut reset = Packet::new();
                reset.header.set_type(MessageType::Reset);
                reset.header.message_id = packet.header.message_id;
                endpoint.send(&reset, peer).await;
            }
        }
        MessageClass::Request(method) => {
            let path = path_of(&packet);
            let (code, body): (ResponseType, Vec<u8>) = match (method, path.as_str()) {
                (RequestType::Post, "alive") => {
                    touch(endpoint, links, peer);
                    (ResponseType::Changed, b"alive".to_vec())
                }
                (RequestType::Post, "server") => {
                    let text = String::from_utf8_lossy(&packet.payload).into_owned();
                    match text.split_once(':') {
                        Some((resource, value)) if !resource.trim_matches('/').is_empty() => {
                            let link = touch(endpoint, links, peer);
                            let mut patch = Map::new();
                            patch.insert(resource.trim_matches('/').to_string(), value_of(value));
                            if link.try_send(ToCloud::Report(patch)).is_err() {
                                counters.dropped.fetch_add(1, Ordering::Relaxed);
                            }
                            (ResponseType::Changed, Vec::new())
                        }
                        _ => {
                            counters.rejected.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(%peer, payload = %text.chars().take(80).collect::<String>(), "POST /server without <path>:<value>");
                            (
                                ResponseType::BadRequest,
                                b"expected <path>:<value>".to_vec(),
                            )
                        }
                    }
                }
                _ => {
                    counters.rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, ?method, %path, "request for nothing the gateway serves");
                    (ResponseType::NotFound, Vec::new())
                }
            };
            endpoint.send(&answer(&packet, code, &body), peer).await;
        }
        MessageClass::Reserved(_) => {
            counters.rejected.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Marks the node alive; a new node gets its link and is discovered.
fn touch(
    endpoint: &Endpoint,
    links: &mut Links<SocketAddr>,
    peer: SocketAddr,
) -> mpsc::Sender<ToCloud> {
    let (inbox, new) = links.touch(peer, || NodeKey::new(Family::Coap, peer.to_string()));
    if new {
        links.spawn(discover(endpoint.clone(), peer, inbox.clone()));
    }
    inbox
}

/// Reads a new node's resources and their values into its shadow.
async fn discover(endpoint: Endpoint, peer: SocketAddr, inbox: mpsc::Sender<ToCloud>) {
    let listing = match endpoint
        .request(peer, RequestType::Get, ".well-known/core", Vec::new())
        .await
    {
        Ok(response) if is_success(&response) => {
            String::from_utf8_lossy(&response.payload).into_owned()
        }
        Ok(response) => {
            tracing::warn!(%peer, code = ?response.header.code, "the node lists no resources");
            return;
        }
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot discover the node");
            return;
        }
    };
    let paths = resources(&listing);
    let _ = inbox.send(ToCloud::Resources(paths.clone())).await;
    let mut reported = Map::new();
    for path in paths {
        match endpoint
            .request(peer, RequestType::Get, &path, Vec::new())
            .await
        {
            Ok(response) if is_success(&response) => {
                reported.insert(path, value_of(&String::from_utf8_lossy(&response.payload)));
            }
            Ok(response) => {
                tracing::warn!(%peer, %path, code = ?response.header.code, "cannot read a resource")
            }
            Err(e) => tracing::warn!(%peer, %path, error = %e, "cannot read a resource"),
        }
    }
    if !reported.is_empty() {
        let _ = inbox.send(ToCloud::Report(reported)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn link_format() {
        assert_eq!(
            resources("</.well-known/core>;ct=40,</temperature>;rt=\"temp\";ct=0, </led>,</a/b>"),
            ["temperature", "led", "a/b"]
        );
        assert!(resources("garbage,<>,<").is_empty());
    }

    #[test]
    fn values() {
        assert_eq!(value_of("21.5"), json!(21.5));
        assert_eq!(value_of("true"), json!(true));
        assert_eq!(value_of("RIOT"), json!("RIOT"));
        assert_eq!(value_of("{\"a\":1}"), json!("{\"a\":1}"));
        assert_eq!(text_of(&json!("1")), b"1");
        assert_eq!(text_of(&json!(1)), b"1");
    }
}
