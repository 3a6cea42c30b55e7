//! Client-facing WebSockets: the notify stream (PROTOCOL §5) and the per-device RPC socket
//! with `Dash.Console.Subscribe` (PROTOCOL §6, the `mos --port` convention).

use std::sync::Arc;

use crate::rest::Path;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use herd_config::LagPolicy;
use protocol::frame::{Frame, FrameKind, RpcError};
use protocol::splitter::FrameSplitter;
use protocol::Value;
use serde_json::json;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, mpsc};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::auth::Caller;
use crate::hub::Event;
use crate::registry::CallError;
use crate::ws::{self, Socket, Upgrade};
use crate::AppState;
use protocol::rest::ErrorBody;

/// Most events written between two flushes of a consumer socket.
const WRITE_BATCH: usize = 512;

/// Calls one per-device RPC socket may have under way at once.
const CALLS_IN_FLIGHT: usize = 16;

/// `GET /api/v2/notify`: the live notification stream of the caller's devices.
#[utoipa::path(
    get, path = "/notify", tag = "streams",
    responses(
        (status = 101, description = "WebSocket: the live notifications of the caller's devices (PROTOCOL §5)"),
        (status = 400, description = "The upgrade request is malformed", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired credentials", body = ErrorBody),
        (status = 426, description = "Not a WebSocket upgrade request", body = ErrorBody),
    ),
)]
pub async fn notify(State(state): State<AppState>, caller: Caller, mut req: Request) -> Response {
    let upgrade = match Upgrade::from_request(&mut req) {
        Ok(upgrade) => upgrade,
        Err(e) => return e.into_response(),
    };
    // Subscribe before answering 101, so nothing emitted after the handshake is missed.
    let events = state.hub.subscribe();
    let tasks = state.tasks.clone();
    upgrade.respond(ws::consumer_config(), &tasks, move |socket| {
        stream_notifications(state, socket, caller, events)
    })
}

fn lagged_message(dropped: u64) -> Message {
    Message::text(json!({"name": "lagged", "data": {"dropped": dropped}}).to_string())
}

async fn stream_notifications(
    state: AppState,
    mut socket: Socket,
    caller: Caller,
    mut events: broadcast::Receiver<Arc<Event>>,
) {
    let policy = state.settings.notify_lag_policy;
    let mut audience = Audience::new(caller);
    loop {
        let first = tokio::select! {
            // Closed in the second phase of a shutdown, after every device went offline:
            // what was emitted until then still reaches the consumer.
            _ = state.streams_shutdown.cancelled() => {
                let drain = async {
                    while let Ok(event) = events.try_recv() {
                        if audience.admits(&state, &event).await && socket.feed(Message::Text(event.json.clone())).await.is_err() {
                            return;
                        }
                    }
                    let _ = socket.send(Message::Close(Some(CloseFrame { code: CloseCode::Away, reason: "server shutting down".into() }))).await;
                };
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drain).await;
                return;
            }
            incoming = socket.next() => match incoming {
                // The stream is read-only (PROTOCOL §5): client messages are ignored.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => continue,
            },
            event = events.recv() => event,
        };
        // Write everything already waiting, then flush once: one syscall for many events.
        let mut next = Some(first);
        let mut written = 0;
        while let Some(received) = next.take() {
            let message = match received {
                Ok(event) => audience
                    .admits(&state, &event)
                    .await
                    .then(|| Message::Text(event.json.clone())),
                Err(RecvError::Lagged(dropped)) => match policy {
                    LagPolicy::Notify => Some(lagged_message(dropped)),
                    LagPolicy::Disconnect => {
                        let _ = socket
                            .send(Message::Close(Some(CloseFrame {
                                code: CloseCode::Policy,
                                reason: "consumer too slow".into(),
                            })))
                            .await;
                        return;
                    }
                },
                Err(RecvError::Closed) => return,
            };
            if let Some(message) = message {
                if socket.feed(message).await.is_err() {
                    return;
                }
                written += 1;
            }
            if written < WRITE_BATCH {
                next = match events.try_recv() {
                    Ok(event) => Some(Ok(event)),
                    Err(TryRecvError::Lagged(n)) => Some(Err(RecvError::Lagged(n))),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Closed) => Some(Err(RecvError::Closed)),
                };
            }
        }
        if socket.flush().await.is_err() {
            return;
        }
    }
}

/// `GET /api/v2/devices/:id/rpc`: a socket whose requests go to the device.
#[utoipa::path(
    get, path = "/devices/{id}/rpc", tag = "streams",
    params(("id" = String, Path, description = "Device id", example = "lamp-1")),
    responses(
        (status = 101, description = "WebSocket: requests go to the device; `Dash.Console.Subscribe` streams its notifications"),
        (status = 400, description = "The upgrade request is malformed", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired credentials", body = ErrorBody),
        (status = 404, description = "No such device visible to the caller", body = ErrorBody),
        (status = 426, description = "Not a WebSocket upgrade request", body = ErrorBody),
    ),
)]
pub async fn device_rpc(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    mut req: Request,
) -> Response {
    match state.store.device(&id).await {
        Ok(Some(device)) if caller.sees(&device, state.is_online(&id)) => {}
        Ok(_) => {
            return crate::error::ApiError::not_found(format!("device {id} not found"))
                .into_response()
        }
        Err(e) => return crate::error::ApiError::from(e).into_response(),
    }
    let upgrade = match Upgrade::from_request(&mut req) {
        Ok(upgrade) => upgrade,
        Err(e) => return e.into_response(),
    };
    let tasks = state.tasks.clone();
    upgrade.respond(ws::consumer_config(), &tasks, move |socket| {
        device_rpc_session(state, socket, id, caller)
    })
}

async fn device_rpc_session(state: AppState, mut socket: Socket, id: String, caller: Caller) {
    let mut splitter = FrameSplitter::new(state.settings.frame_buffer_bytes);
    // Calls under way at once on this socket; past it the socket is not read until one ends.
    let calls = Arc::new(tokio::sync::Semaphore::new(CALLS_IN_FLIGHT));
    let (replies_tx, mut replies) = mpsc::channel::<String>(64);
    let mut console: Option<broadcast::Receiver<Arc<Event>>> = None;
    loop {
        let outgoing = tokio::select! {
            _ = state.streams_shutdown.cancelled() => return,
            reply = replies.recv() => match reply {
                Some(reply) => reply,
                None => return,
            },
            event = async {
                match console.as_mut() {
                    Some(events) => events.recv().await,
                    None => std::future::pending().await,
                }
            } => match event {
                // The audience is checked per event: unsharing the device ends the feed.
                Ok(event) if *event.device.id == *id && event.device.visible_to(&caller.user) => {
                    format!("{{\"method\":\"Dash.Console.Event\",\"params\":{}}}", event.json.as_str())
                }
                Ok(_) => continue,
                // Said, not swallowed: the subscriber knows it missed events (PROTOCOL §5).
                Err(RecvError::Lagged(dropped)) => json!({"method": "Dash.Console.Event", "params": {"id": id, "name": "lagged", "data": {"dropped": dropped}}}).to_string(),
                Err(RecvError::Closed) => return,
            },
            incoming = socket.next() => {
                let bytes = match incoming {
                    Some(Ok(Message::Text(text))) => text.as_bytes().to_vec(),
                    Some(Ok(Message::Binary(bytes))) => bytes.to_vec(),
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    Some(Ok(_)) => continue,
                };
                if splitter.push(&bytes).is_err() {
                    let _ = socket.send(Message::Close(Some(CloseFrame { code: CloseCode::Size, reason: "frame too large".into() }))).await;
                    return;
                }
                while let Some(value) = splitter.next_value() {
                    let Ok(frame) = value.map_err(|e| e.to_string()).and_then(|v| Frame::from_value(v).map_err(|e| e.to_string())) else {
                        continue;
                    };
                    if frame.kind() != FrameKind::Request && frame.kind() != FrameKind::Notification {
                        continue;
                    }
                    if frame.method.as_deref() == Some("Dash.Console.Subscribe") {
                        console.get_or_insert_with(|| state.hub.subscribe());
                        if frame.id.is_some() {
                            let _ = replies_tx.try_send(Frame::reply_to(&frame, Value::Bool(true)).to_json());
                        }
                        continue;
                    }
                    // Each call runs on its own so a slow device method does not hold up
                    // others, up to CALLS_IN_FLIGHT at once.
                    let Ok(permit) = calls.clone().acquire_owned().await else { return };
                    let state = state.clone();
                    let id = id.clone();
                    let caller = caller.clone();
                    let replies_tx = replies_tx.clone();
                    tokio::spawn(async move {
                        let _permit = permit;
                        let method = frame.method.clone().unwrap_or_default();
                        // Who may do what is asked per call, as through the REST proxy: a
                        // device unshared since the socket opened is not reachable any more,
                        // and OTA.* needs deploy rights (PROTOCOL §11).
                        let allowed = match state.store.device(&id).await {
                            Ok(Some(device)) if caller.sees(&device, state.is_online(&id)) => crate::access::check_rpc(&caller, &device, &method),
                            Ok(_) => Err(crate::error::ApiError::not_found(format!("device {id} not found"))),
                            Err(e) => Err(crate::error::ApiError::from(e)),
                        };
                        if let Err(refused) = allowed {
                            if frame.id.is_some() {
                                let reply = Frame::error_to(&frame, i64::from(refused.status.as_u16()), refused.message);
                                let _ = replies_tx.send(reply.to_json()).await;
                            }
                            return;
                        }
                        let outcome = crate::ops::call::run(&state, &id, &method, frame.params.clone(), state.rpc_timeout()).await;
                        if frame.id.is_none() {
                            return;
                        }
                        let reply = match outcome {
                            Ok(result) => Frame::reply_to(&frame, result),
                            Err(CallError::Device(RpcError { code, message })) => Frame::error_to(&frame, code, message),
                            Err(e) => {
                                let api = super::call_error(e, &id, &method, state.settings.rpc_timeout_ms);
                                Frame::error_to(&frame, i64::from(api.status.as_u16()), api.message)
                            }
                        };
                        let _ = replies_tx.send(reply.to_json()).await;
                    });
                }
                continue;
            },
        };
        if socket.send(Message::text(outgoing)).await.is_err() {
            return;
        }
    }
}

/// Which events a notify consumer gets: its user's devices (PROTOCOL §5), and for a key
/// limited to some devices (PROTOCOL §11) only those its filter matches. A device's match
/// is looked up once and again whenever the device changes (`created`, `updated`).
struct Audience {
    caller: Caller,
    matches: std::collections::HashMap<Arc<str>, bool>,
}

impl Audience {
    fn new(caller: Caller) -> Audience {
        Audience {
            caller,
            matches: std::collections::HashMap::new(),
        }
    }

    async fn admits(&mut self, state: &AppState, event: &Event) -> bool {
        if !event.device.visible_to(&self.caller.user) {
            return false;
        }
        if self.caller.devices.is_none() {
            return true;
        }
        let changed = matches!(&*event.name, "created" | "updated");
        if let Some(known) = self.matches.get(&event.device.id).filter(|_| !changed) {
            return *known;
        }
        let admitted = match state.store.device(&event.device.id).await {
            Ok(Some(device)) => self.caller.sees(&device, state.is_online(&device.id)),
            _ => false,
        };
        if self.matches.len() > 100_000 {
            self.matches.clear();
        }
        self.matches.insert(event.device.id.clone(), admitted);
        admitted
    }
}
