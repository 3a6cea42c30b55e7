//! One node's device socket: the gateway connects to herd-server as the node's device
//! (PROTOCOL §1), so the node is online while it is alive, its `reported` state goes in as
//! `Dash.Shadow.Update`, and the cloud's `Shadow.Delta` and calls come back out to the
//! bridge. Everything the server does for a device (shadow versions, events in
//! notification.log, access rules) therefore holds for gateway nodes unchanged.
//!
//! The task keeps the node's whole `reported` state, so after a reconnect (server restart,
//! network) the device is brought up to date with one update. It ends when the bridge
//! says the node went silent; closing the socket is what marks the device offline.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herd_client::Client;
use protocol::frame::{Frame, FrameKind, RpcError};
use protocol::{codes, methods};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::nodes::Registry;
use crate::topics::{Family, NodeKey};

/// From the bridge to a node's link.
#[derive(Debug, Clone, PartialEq)]
pub enum ToCloud {
    /// Keys of `reported` that changed.
    Report(Map<String, Value>),
    /// The node's resource names (Pyaiot), shown in `Sys.GetInfo`.
    Resources(Vec<String>),
    /// The node answered a forwarded call.
    RpcResponse {
        id: u64,
        outcome: Result<Value, RpcError>,
    },
}

/// From a link to the bridge: something to publish to the node.
#[derive(Debug, Clone, PartialEq)]
pub enum ToNode {
    /// The `Shadow.Delta` request's params (PROTOCOL §4.3).
    Desired(Value),
    /// A cloud call for the node; its answer comes back as [`ToCloud::RpcResponse`].
    Rpc {
        id: u64,
        method: String,
        params: Option<Value>,
    },
}

/// What every link shares.
pub struct LinkContext {
    pub client: Client,
    pub registry: Arc<Registry>,
    /// How long a forwarded call waits for the node.
    pub rpc_timeout: Duration,
    /// Where links hand what must be published.
    pub to_bridge: mpsc::Sender<(NodeKey, ToNode)>,
    /// Longest wait between reconnect attempts.
    pub backoff_max: Duration,
    /// What `Sys.GetInfo` says the node's app is, e.g. `pyaiot-mqtt`.
    pub app: String,
}

impl LinkContext {
    /// The context, and where the links' messages for nodes arrive.
    pub fn new(
        client: Client,
        registry: Arc<Registry>,
        rpc_timeout: Duration,
        app: &str,
    ) -> (Arc<LinkContext>, mpsc::Receiver<(NodeKey, ToNode)>) {
        let (to_bridge, from_links) = mpsc::channel(1024);
        let context = LinkContext {
            client,
            registry,
            rpc_timeout,
            to_bridge,
            backoff_max: Duration::from_secs(30),
            app: app.to_string(),
        };
        (Arc::new(context), from_links)
    }

    /// Hands `message` to the bridge; `Some` is the error reply when the gateway stops.
    async fn forward(&self, node: &NodeKey, message: ToNode, request: &Frame) -> Option<Frame> {
        match self.to_bridge.send((node.clone(), message)).await {
            Ok(()) => None,
            Err(_) => Some(Frame::error_to(
                request,
                codes::INTERNAL,
                "the gateway is stopping",
            )),
        }
    }
}

/// A live node: where its link takes messages, and when it was last heard from.
pub struct NodeLink {
    pub inbox: mpsc::Sender<ToCloud>,
    pub last_seen: Instant,
}

/// The live nodes of a gateway, by what identifies them there (a [`NodeKey`], an
/// address), each with its link task. Dropping a node drops its inbox, which ends its link
/// and so takes its device offline.
pub struct Links<K> {
    context: Arc<LinkContext>,
    tasks: tokio_util::task::TaskTracker,
    live: HashMap<K, NodeLink>,
}

impl<K: std::hash::Hash + Eq + std::fmt::Display> Links<K> {
    pub fn new(context: Arc<LinkContext>) -> Links<K> {
        Links {
            context,
            tasks: tokio_util::task::TaskTracker::new(),
            live: HashMap::new(),
        }
    }

    /// Marks the node alive, starting its link on first sight (`node` names it then).
    /// Returns its inbox and whether it is new.
    pub fn touch(
        &mut self,
        key: K,
        node: impl FnOnce() -> NodeKey,
    ) -> (mpsc::Sender<ToCloud>, bool) {
        let mut new = false;
        let link = self.live.entry(key).or_insert_with(|| {
            new = true;
            let (inbox, receiver) = mpsc::channel(256);
            self.tasks
                .spawn(run(self.context.clone(), node(), receiver));
            NodeLink {
                inbox,
                last_seen: Instant::now(),
            }
        });
        link.last_seen = Instant::now();
        (link.inbox.clone(), new)
    }

    /// Takes the node offline now; false when it was not live.
    pub fn remove(&mut self, key: &K) -> bool {
        self.live.remove(key).is_some()
    }

    /// Takes offline every node silent for `timeout`.
    pub fn sweep(&mut self, timeout: Duration) {
        let now = Instant::now();
        self.live.retain(|key, link| {
            let alive = now.duration_since(link.last_seen) < timeout;
            if !alive {
                tracing::info!(node = %key, "node silent; offline");
            }
            alive
        });
    }

    /// Runs other work of the gateway's (discovery, requests to nodes) alongside the links,
    /// so [`Links::close`] waits for it too.
    pub fn spawn(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(work);
    }

    /// Takes every node offline and waits (a bounded time) for the links to close.
    pub async fn close(mut self) {
        self.live.clear();
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await;
    }
}

enum Ended {
    /// The bridge closed the inbox: the node is gone.
    NodeGone,
    /// The socket failed; reconnect.
    Socket(String),
}

/// Runs the node's link until the bridge drops the sender of `inbox`.
pub async fn run(context: Arc<LinkContext>, node: NodeKey, mut inbox: mpsc::Receiver<ToCloud>) {
    let mut state = NodeState {
        reported: Map::new(),
        resources: Vec::new(),
    };
    let mut delay = Duration::from_millis(250);
    loop {
        let entry = match context.registry.ensure(&context.client, &node).await {
            Ok(entry) => entry,
            Err(e) => {
                tracing::warn!(%node, error = format!("{e:#}"), "no device for the node yet");
                if !state
                    .wait(&mut inbox, &mut delay, context.backoff_max)
                    .await
                {
                    return;
                }
                continue;
            }
        };
        match connect(&context, &entry.token).await {
            Ok(socket) => {
                delay = Duration::from_millis(250);
                tracing::debug!(%node, device = %entry.id, "device socket open");
                match session(&context, &node, &mut state, &mut inbox, socket).await {
                    Ended::NodeGone => return,
                    Ended::Socket(reason) => {
                        tracing::info!(%node, %reason, "device socket closed; reconnecting")
                    }
                }
            }
            Err(ConnectError::Refused) => {
                tracing::warn!(%node, device = %entry.id, "the server refused the device's token; making a new device");
                if let Err(e) = context.registry.forget(&node).await {
                    tracing::error!(%node, error = format!("{e:#}"), "cannot update the node map");
                }
            }
            Err(ConnectError::Other(reason)) => {
                tracing::warn!(%node, %reason, "cannot open the device socket");
            }
        }
        if !state
            .wait(&mut inbox, &mut delay, context.backoff_max)
            .await
        {
            return;
        }
    }
}

struct NodeState {
    reported: Map<String, Value>,
    resources: Vec<String>,
}

impl NodeState {
    /// Takes in what the bridge sends while there is no socket, for `delay` (then doubled).
    /// `false` when the node is gone.
    async fn wait(
        &mut self,
        inbox: &mut mpsc::Receiver<ToCloud>,
        delay: &mut Duration,
        max: Duration,
    ) -> bool {
        let until = Instant::now() + *delay;
        *delay = (*delay * 2).min(max);
        loop {
            tokio::select! {
                message = inbox.recv() => match message {
                    None => return false,
                    Some(message) => {
                        self.absorb(&message);
                    }
                },
                _ = tokio::time::sleep_until(until) => return true,
            }
        }
    }

    /// Records what a message changes; returns the `reported` patch to send, if any.
    fn absorb(&mut self, message: &ToCloud) -> Option<Map<String, Value>> {
        match message {
            ToCloud::Report(patch) => {
                for (key, value) in patch {
                    self.reported.insert(key.clone(), value.clone());
                }
                Some(patch.clone())
            }
            ToCloud::Resources(names) => {
                self.resources = names.clone();
                None
            }
            // A late answer while disconnected has no caller any more.
            ToCloud::RpcResponse { .. } => None,
        }
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

enum ConnectError {
    /// 401/403: the token is no longer a device's.
    Refused,
    Other(String),
}

async fn connect(context: &LinkContext, token: &str) -> Result<Socket, ConnectError> {
    let url = context.client.device_socket_url();
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| ConnectError::Other(e.to_string()))?;
    let header = format!("Bearer {token}")
        .parse()
        .map_err(|_| ConnectError::Other("the token is not a valid header".into()))?;
    request.headers_mut().insert("authorization", header);
    let connector = context
        .client
        .ws_tls()
        .map(tokio_tungstenite::Connector::Rustls);
    let connecting =
        tokio_tungstenite::connect_async_tls_with_config(request, None, false, connector);
    match tokio::time::timeout(Duration::from_secs(15), connecting).await {
        Err(_) => Err(ConnectError::Other("timed out".into())),
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response)))
            if matches!(response.status().as_u16(), 401 | 403) =>
        {
            Err(ConnectError::Refused)
        }
        Ok(Err(e)) => Err(ConnectError::Other(e.to_string())),
    }
}

/// A call forwarded to the node, waiting for its answer.
struct Pending {
    request: Frame,
    deadline: Instant,
}

async fn session(
    context: &LinkContext,
    node: &NodeKey,
    state: &mut NodeState,
    inbox: &mut mpsc::Receiver<ToCloud>,
    socket: Socket,
) -> Ended {
    let (mut sink, mut stream) = socket.split();
    let mut next_id: u64 = 1;
    // Ids of forwarded calls only grow, so a late answer never meets a newer call.
    let mut next_call: u64 = 1;
    let mut pending: HashMap<u64, Pending> = HashMap::new();
    let update = |sink_id: &mut u64, reported: &Map<String, Value>| {
        let frame = Frame::request(
            *sink_id,
            methods::SHADOW_UPDATE,
            Some(serde_json::json!({"state": {"reported": reported}})),
        );
        *sink_id += 1;
        Message::text(frame.to_json())
    };
    if !state.reported.is_empty() {
        let message = update(&mut next_id, &state.reported);
        if let Err(e) = sink.send(message).await {
            return Ended::Socket(e.to_string());
        }
    }
    loop {
        let next_deadline = pending.values().map(|p| p.deadline).min();
        tokio::select! {
            frame = stream.next() => {
                let text = match frame {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(_))) | None => return Ended::Socket("closed by the server".into()),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Ended::Socket(e.to_string()),
                };
                let reply = match Frame::from_slice(text.as_bytes()) {
                    Ok(frame) => {
                        handle_cloud_frame(context, node, state, &mut pending, &mut next_call, frame).await
                    }
                    Err(e) => {
                        tracing::warn!(%node, error = %e, "unreadable frame from the server");
                        None
                    }
                };
                if let Some(reply) = reply {
                    if let Err(e) = sink.send(Message::text(reply.to_json())).await {
                        return Ended::Socket(e.to_string());
                    }
                }
            }
            message = inbox.recv() => {
                let Some(message) = message else {
                    let _ = sink.send(Message::Close(None)).await;
                    let _ = sink.close().await;
                    return Ended::NodeGone;
                };
                let out = match &message {
                    ToCloud::RpcResponse { id, outcome } => pending.remove(id).map(|call| {
                        match outcome {
                            Ok(result) => Frame::reply_to(&call.request, result.clone()),
                            Err(error) => Frame::error_to(&call.request, error.code, error.message.clone()),
                        }
                        .to_json()
                    }).map(Message::text),
                    _ => state.absorb(&message).map(|patch| update(&mut next_id, &patch)),
                };
                if let Some(out) = out {
                    if let Err(e) = sink.send(out).await {
                        return Ended::Socket(e.to_string());
                    }
                }
            }
            _ = sleep_until_opt(next_deadline) => {
                let now = Instant::now();
                let expired: Vec<u64> = pending.iter().filter(|(_, p)| p.deadline <= now).map(|(id, _)| *id).collect();
                for id in expired {
                    if let Some(call) = pending.remove(&id) {
                        let method = call.request.method.as_deref().unwrap_or_default();
                        let reply = Frame::error_to(
                            &call.request,
                            codes::GENERIC,
                            format!("{node} did not answer {method} within {} s", context.rpc_timeout.as_secs_f64()),
                        );
                        if let Err(e) = sink.send(Message::text(reply.to_json())).await {
                            return Ended::Socket(e.to_string());
                        }
                    }
                }
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Answers what the gateway answers itself, forwards the rest; `Some` is the reply to send.
async fn handle_cloud_frame(
    context: &LinkContext,
    node: &NodeKey,
    state: &NodeState,
    pending: &mut HashMap<u64, Pending>,
    next_call: &mut u64,
    frame: Frame,
) -> Option<Frame> {
    match frame.kind() {
        FrameKind::Reply => {
            if let Some(error) = &frame.error {
                tracing::warn!(%node, code = error.code, message = %error.message, "the server refused an update");
            }
            return None;
        }
        FrameKind::Notification | FrameKind::Invalid => return None,
        FrameKind::Request => {}
    }
    let method = frame.method.clone().unwrap_or_default();
    match method.as_str() {
        methods::SYS_GET_INFO => Some(Frame::reply_to(
            &frame,
            serde_json::json!({
                "id": node.node,
                "app": context.app,
                "fw_version": "",
                "arch": node.family.as_str(),
                "gateway": concat!("herd-gateway ", env!("CARGO_PKG_VERSION")),
                "resources": state.resources,
            }),
        )),
        methods::RPC_LIST => Some(Frame::reply_to(
            &frame,
            serde_json::json!([methods::SYS_GET_INFO, methods::RPC_LIST]),
        )),
        methods::SHADOW_DELTA => {
            let params = frame.params_or_null();
            match context.forward(node, ToNode::Desired(params), &frame).await {
                Some(error) => Some(error),
                None => Some(Frame::reply_to(&frame, Value::Null)),
            }
        }
        _ if node.family == Family::Herd => {
            let id = *next_call;
            *next_call += 1;
            let forwarded = ToNode::Rpc {
                id,
                method: method.clone(),
                params: frame.params.clone(),
            };
            if let Some(error) = context.forward(node, forwarded, &frame).await {
                return Some(error);
            }
            pending.insert(
                id,
                Pending {
                    request: frame,
                    deadline: Instant::now() + context.rpc_timeout,
                },
            );
            None
        }
        _ => Some(Frame::error_to(
            &frame,
            codes::NOT_FOUND,
            format!("No handler for {method}"),
        )),
    }
}
