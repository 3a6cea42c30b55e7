//! Device sockets: `GET /api/v2/rpc` (PROTOCOL §1-§4).
//!
//! One task per device reads frames, answers the device's requests (§3), delivers replies to
//! whoever awaits them, and writes what other tasks queued in the device's outbox (RPC
//! requests, `Shadow.Delta` pushes, pings). Frames may be split or packed arbitrarily across
//! WebSocket messages; a bounded [`FrameSplitter`] reassembles them.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use protocol::frame::{Frame, FrameKind};
use protocol::shadow::Update;
use protocol::splitter::{FrameSplitter, SplitError};
use protocol::Value;
use serde_json::json;

use crate::auth::{self, Credential};
use crate::error::ApiError;
use crate::registry::{CallError, DeviceConn, Out, Pending};
use crate::store::{DeviceRecord, StoreError};
use crate::ws::device::{close, DeviceSocket, Incoming};
use crate::ws::{Raw, Upgrade};
use crate::{ops, AppState};
use protocol::rest::ErrorBody;

/// `GET /api/v2/rpc`: authenticates the device token before upgrading (401 otherwise).
#[utoipa::path(
    get, path = "/rpc", tag = "streams", operation_id = "device_connect",
    responses(
        (status = 101, description = "WebSocket: the device's JSON-RPC connection (PROTOCOL §1)"),
        (status = 400, description = "The upgrade request is malformed", body = ErrorBody),
        (status = 401, description = "Missing or unknown device token", body = ErrorBody),
        (status = 426, description = "Not a WebSocket upgrade request", body = ErrorBody),
        (status = 429, description = "The device is quarantined for exceeding its limits", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until it may connect again"))),
    ),
    security(("bearer" = []), ("access_token" = []), ("basic" = [])),
    description = "The device connection. The credential is the device's token: Bearer, `?access_token=`, or the user name of Basic (`wss://TOKEN@host/...`).",
)]
pub async fn upgrade(State(state): State<AppState>, mut req: Request) -> Response {
    let token = match auth::credential(req.headers(), req.uri().query()) {
        Some(Credential::Token(token)) => token,
        Some(Credential::Basic { .. }) | None => {
            return ApiError::unauthorized("missing device token (Bearer or ?access_token=)")
                .into_response()
        }
    };
    let device = match state
        .store
        .device_by_token_hash(&auth::hash_secret(&token))
        .await
    {
        Ok(Some(device)) => device,
        Ok(None) => return ApiError::unauthorized("unknown device token").into_response(),
        Err(e) => return ApiError::from(e).into_response(),
    };
    if let Some(held) = state.guard.held(&device.id) {
        return quarantined(&held);
    }
    if state
        .guard
        .note_connect(&device.id, state.settings.device_connects_per_minute)
    {
        let reason = format!(
            "connects more than {} times a minute",
            state.settings.device_connects_per_minute
        );
        let held = ops::quarantine::run(&state, &device.id, &reason);
        return quarantined(&held);
    }
    let upgrade = match Upgrade::from_request(&mut req) {
        Ok(upgrade) => upgrade,
        Err(e) => return e.into_response(),
    };
    let origin = req
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|host| host.to_str().ok())
        .filter(|host| !host.is_empty() && host.bytes().all(|b| b.is_ascii_graphic()))
        .map(|host| {
            let scheme = if state.settings.tls.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{host}")
        });
    // Device sessions have a tracker of their own: shutdown ends them first.
    let tasks = state.device_tasks.clone();
    upgrade.respond_raw(&tasks, move |raw| serve(state, raw, device, origin))
}

/// `GET /api/v1/rpc`: the same device connection under the path older firmware uses.
#[utoipa::path(
    get, path = "/api/v1/rpc", tag = "streams", operation_id = "device_connect_v1",
    responses(
        (status = 101, description = "WebSocket: the device's JSON-RPC connection (PROTOCOL §1)"),
        (status = 400, description = "The upgrade request is malformed", body = ErrorBody),
        (status = 401, description = "Missing or unknown device token", body = ErrorBody),
        (status = 426, description = "Not a WebSocket upgrade request", body = ErrorBody),
        (status = 429, description = "The device is quarantined for exceeding its limits", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until it may connect again"))),
    ),
    security(("bearer" = []), ("access_token" = []), ("basic" = [])),
    description = "The device connection. The credential is the device's token: Bearer, `?access_token=`, or the user name of Basic (`wss://TOKEN@host/...`).",
)]
pub async fn upgrade_v1(state: State<AppState>, req: Request) -> Response {
    upgrade(state, req).await
}

/// 429 with `Retry-After` for a device held off (see [`crate::guard`]).
fn quarantined(held: &crate::guard::Quarantine) -> Response {
    let seconds = held
        .until
        .saturating_duration_since(std::time::Instant::now())
        .as_secs()
        .max(1);
    let mut response = ApiError::new(
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        format!("device quarantined for {seconds} s: it {}", held.reason),
    )
    .into_response();
    if let Ok(value) = axum::http::HeaderValue::from_str(&seconds.to_string()) {
        response
            .headers_mut()
            .insert(axum::http::header::RETRY_AFTER, value);
    }
    response
}

/// Sets up one device connection, then hands it to a task of its own for the rest of its
/// life.
///
/// A task is as large as its future's largest state, and an async fn keeps its arguments
/// for as long as it runs, so the long-lived task is started with the session alone: an
/// idle device costs the session and its wait, not the one-off steps of connecting.
async fn serve(state: AppState, raw: Raw, device: DeviceRecord, origin: Option<String>) {
    let conn = Box::pin(ops::connect::run(&state, &device, origin)).await;
    let socket = DeviceSocket::new(raw, state.settings.frame_buffer_bytes);
    let session = Session {
        splitter: FrameSplitter::new(state.settings.frame_buffer_bytes),
        state: state.clone(),
        conn,
        socket,
        last_delta: None,
        delta_request: None,
        id: device.id.as_str().into(),
        budget: crate::guard::Budget::new(&state.settings),
    };
    state.device_tasks.spawn(live(Box::new(session)));
}

/// Runs a connected device's session to its end.
async fn live(mut session: Box<Session>) {
    let reason = session.run().await;
    let (state, conn, id) = (
        session.state.clone(),
        session.conn.clone(),
        session.id.clone(),
    );
    drop(session);
    tracing::debug!(device = %id, %reason, "device disconnected");
    Box::pin(ops::disconnect::run(&state, &conn)).await;
}

/// Pings every device each period and closes those that missed too many pongs (PROTOCOL §1).
///
/// The period is cut into slices of [`SWEEP_TICK`] and each tick pings only the connections
/// of one slice, so 19,000 devices cost a steady trickle of pings (32 every 50 ms) instead
/// of bursts that delay every request queued behind them: with a slice a second (633
/// pings at once), p99 of shadow updates at 5,000/s was 7-8 ms against 3 ms without pings
/// (docs/BENCHMARKS.md, run O).
pub async fn liveness_sweeper(state: AppState) {
    let period = Duration::from_secs(state.settings.ping_interval_secs.max(1));
    let slices = sweep_slices(period);
    let tick = period / slices as u32;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut slice = 0u64;
    loop {
        ticker.tick().await;
        for conn in state.registry.slice(slice, slices) {
            if conn.note_ping() >= state.settings.missed_pongs {
                conn.push(Out::Close("no pong to the last pings".into()));
            } else {
                conn.push(Out::Ping);
            }
        }
        slice = (slice + 1) % slices;
    }
}

/// How often the liveness sweeper pings a slice of the devices.
const SWEEP_TICK: Duration = Duration::from_millis(50);

/// Slices of a ping period: one per [`SWEEP_TICK`], at least one.
fn sweep_slices(period: Duration) -> u64 {
    (period.as_millis() / SWEEP_TICK.as_millis()).max(1) as u64
}

struct Session {
    state: AppState,
    conn: Arc<DeviceConn>,
    socket: DeviceSocket<Raw>,
    splitter: FrameSplitter,
    /// Hash of the last delta pushed on this connection (PROTOCOL §4.3 no-repeat rule).
    last_delta: Option<u64>,
    /// Request id of the outstanding `Shadow.Delta`, superseded by the next push so that a
    /// device that never answers cannot grow the pending map.
    delta_request: Option<u64>,
    id: Arc<str>,
    /// What the device may still send (see [`crate::guard`]).
    budget: crate::guard::Budget,
}

/// Whether the session goes on after handling something.
type Flow = Result<(), String>;

impl Session {
    async fn run(&mut self) -> String {
        loop {
            let flow = tokio::select! {
                biased;
                _ = self.state.shutdown.cancelled() => {
                    Box::pin(self.close(close::AWAY, "server shutting down")).await;
                    return "server shutting down".into();
                }
                // Handlers are boxed so that an idle connection's task holds only the small
                // waiting state, not the largest handler's state (19,000 idle tasks add up).
                _ = self.conn.woken() => Box::pin(self.flush_outbox_bounded()).await,
                message = self.socket.next() => match message {
                    None => Err("socket closed".to_string()),
                    Some(Err(e)) => {
                        if let Some(code) = e.close_code() {
                            tracing::warn!(device = %self.id, error = %e, "closing device socket");
                            Box::pin(self.close(code, &e.to_string())).await;
                        }
                        Err(format!("socket error: {e}"))
                    }
                    Some(Ok(message)) => Box::pin(self.on_message(message)).await,
                },
            };
            if let Err(reason) = flow {
                return reason;
            }
        }
    }

    async fn close(&mut self, code: u16, reason: &str) {
        self.socket.queue_close(code, reason);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.socket.flush()).await;
    }

    async fn on_message(&mut self, message: Incoming) -> Flow {
        self.conn.note_alive();
        match message {
            Incoming::Data(bytes) => {
                if !bytes.is_empty() {
                    let spent = self.budget.spend_bytes(bytes.len());
                    self.charge(spent).await?;
                }
                self.on_bytes(&bytes).await
            }
            // The pong is queued; flushing sends it now rather than with the next frame.
            Incoming::Ping => self.flush_bounded().await,
            Incoming::Pong => Ok(()),
            Incoming::Close(_) => {
                // The close reply is queued: send it, but do not wait long for a device
                // that is leaving.
                let _ = tokio::time::timeout(Duration::from_secs(2), self.socket.flush()).await;
                Err("device closed the socket".into())
            }
        }
    }

    /// Writes what is queued within the write timeout.
    async fn flush_bounded(&mut self) -> Flow {
        let timeout = self.write_timeout();
        match tokio::time::timeout(timeout, self.socket.flush()).await {
            Ok(result) => result.map_err(|e| format!("send failed: {e}")),
            Err(_) => Err(not_reading(timeout)),
        }
    }

    /// Quarantines the device when it went over its limits (see [`crate::guard`]).
    async fn charge(&mut self, spent: Result<(), String>) -> Flow {
        let Err(reason) = spent else {
            return Ok(());
        };
        let held = ops::quarantine::run(&self.state, &self.id, &reason);
        self.close(close::POLICY, "quarantined: over the device limits")
            .await;
        Err(format!("quarantined: {}", held.reason))
    }

    async fn on_bytes(&mut self, bytes: &[u8]) -> Flow {
        if let Err(e) = self.splitter.push(bytes) {
            tracing::warn!(device = %self.id, error = %e, "closing device socket: input over the frame limit");
            self.close(close::SIZE, "frame too large").await;
            return Err(format!("input over the frame limit: {e}"));
        }
        while let Some(next) = self.splitter.next_value() {
            match next {
                Ok(value) => self.on_value(value).await?,
                Err(SplitError::Overflow { .. }) => {
                    self.close(close::SIZE, "frame too large").await;
                    return Err("input over the frame limit".into());
                }
                Err(e) => tracing::warn!(device = %self.id, error = %e, "dropping malformed input"),
            }
        }
        Ok(())
    }

    async fn on_value(&mut self, value: Value) -> Flow {
        let id = value.get("id").cloned();
        let frame = match Frame::from_value(value) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::warn!(device = %self.id, error = %e, "invalid frame");
                if let Some(id) = id {
                    let reply = json!({"id": id, "error": {"code": protocol::codes::BAD_REQUEST, "message": format!("invalid frame: {e}")}});
                    return self.send(reply.to_string()).await;
                }
                return Ok(());
            }
        };
        match frame.kind() {
            FrameKind::Request | FrameKind::Notification => {
                let spent = self.budget.spend_message();
                self.charge(spent).await?;
                self.on_request(frame).await
            }
            FrameKind::Reply => {
                if !self.on_reply(frame).await {
                    let spent = self.budget.spend_message();
                    self.charge(spent).await?;
                }
                Ok(())
            }
            FrameKind::Invalid => {
                tracing::debug!(device = %self.id, "ignoring a frame with neither method nor id");
                Ok(())
            }
        }
    }

    /// PROTOCOL §3: the device-to-cloud requests the server handles.
    async fn on_request(&mut self, frame: Frame) -> Flow {
        let method = frame.method.clone().unwrap_or_default();
        let params = frame.params_or_null();
        let identity = self.conn.identity();
        let outcome: Result<Value, (i64, String)> = match method.as_str() {
            "Dash.Shadow.Update" => {
                self.state
                    .hub
                    .emit(&identity, "rpc.out.Dash.Shadow.Update", &params);
                match Update::from_value(&params) {
                    Err(e) => Err((e.code(), e.to_string())),
                    Ok(update) => {
                        match crate::ops::shadow_update::run_in_session(
                            &self.state,
                            &self.id,
                            update,
                        )
                        .await
                        {
                            Ok(device) => {
                                if frame.id.is_none() {
                                    return Ok(());
                                }
                                // The reply is written from the stored shadow, not a copy.
                                let reply =
                                    Frame::reply_json(&frame, &device.shadow.document_with_delta());
                                return self.send(reply).await;
                            }
                            Err(e) => Err(store_error(e)),
                        }
                    }
                }
            }
            "Dash.Shadow.Get" => {
                self.state
                    .hub
                    .emit(&identity, "rpc.out.Dash.Shadow.Get", &params);
                match self.state.store.device(&self.id).await {
                    Ok(Some(device)) => Ok(device.shadow.to_document_with_delta()),
                    Ok(None) => Err((protocol::codes::NOT_FOUND, "device not found".into())),
                    Err(e) => Err(store_error(e)),
                }
            }
            "Dash.Heartbeat" => match params {
                Value::Object(_) => match self.state.store.set_info(&self.id, params).await {
                    Ok(()) => Ok(Value::Bool(true)),
                    Err(e) => Err(store_error(e)),
                },
                _ => Err((
                    protocol::codes::BAD_REQUEST,
                    "heartbeat params must be an object".into(),
                )),
            },
            "Log" | "Dash.Log" => {
                self.state.hub.emit(&identity, "rpc.out.Log", &params);
                Ok(Value::Bool(true))
            }
            _ => {
                self.state
                    .hub
                    .emit(&identity, &format!("rpc.out.{method}"), &params);
                Err((
                    protocol::codes::NOT_FOUND,
                    format!("No handler for {method}"),
                ))
            }
        };
        if frame.id.is_none() {
            return Ok(());
        }
        let reply = match outcome {
            Ok(result) => Frame::reply_to(&frame, result),
            Err((code, message)) => Frame::error_to(&frame, code, message),
        };
        self.send(reply.to_json()).await
    }

    /// Hands a reply to whoever waits for it; false when nobody asked for it.
    async fn on_reply(&mut self, frame: Frame) -> bool {
        let Some(id) = frame.id.as_ref().and_then(Value::as_u64) else {
            tracing::debug!(device = %self.id, "reply with a non-numeric id: not ours");
            return false;
        };
        match self.conn.take_pending(id) {
            Some(Pending::Call(waiter)) => {
                let outcome = match frame.error {
                    Some(error) => Err(CallError::Device(error)),
                    None => Ok(frame.result.unwrap_or(Value::Null)),
                };
                let _ = waiter.send(outcome);
            }
            Some(Pending::ShadowDelta) => {
                // PROTOCOL §4.3: an object result is the device's new reported state.
                if let Some(Value::Object(reported)) = frame.result {
                    if let Err(e) = crate::ops::shadow_update::run_in_session(
                        &self.state,
                        &self.id,
                        Update::reported(reported),
                    )
                    .await
                    {
                        tracing::warn!(device = %self.id, error = %e, "cannot apply Shadow.Delta result");
                    }
                }
            }
            None => {
                tracing::debug!(device = %self.id, id, "reply to an unknown or expired request");
                return false;
            }
        }
        true
    }

    /// The longest a write may wait for the device to read.
    fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.state.settings.device_write_timeout_ms)
    }

    async fn send(&mut self, text: String) -> Flow {
        self.socket.queue_text(&text);
        self.flush_bounded().await
    }

    /// [`Session::flush_outbox`] within the write timeout: a device that stopped reading
    /// cannot hold its session (and what other tasks queued for it) forever.
    async fn flush_outbox_bounded(&mut self) -> Flow {
        if self.conn.overflowed() {
            tracing::warn!(device = %self.id, "dropping a device that does not read: its outbox is full");
            return Err("outbox full: the device does not read".into());
        }
        let timeout = self.write_timeout();
        match tokio::time::timeout(timeout, self.flush_outbox()).await {
            Ok(flow) => flow,
            Err(_) => {
                tracing::warn!(device = %self.id, "dropping a device that does not read");
                Err(not_reading(timeout))
            }
        }
    }

    /// Writes everything queued for this device in one flush.
    async fn flush_outbox(&mut self) -> Flow {
        for out in self.conn.drain() {
            match out {
                Out::Frame(text) => self.socket.queue_text(&text),
                Out::Ping => self.socket.queue_ping(),
                Out::Close(reason) => {
                    self.close(close::NORMAL, &reason).await;
                    return Err(reason);
                }
                Out::Delta {
                    delta,
                    version,
                    timestamp,
                    desired_changed,
                } => {
                    let state = Value::Object(delta);
                    let hash = {
                        let mut hasher = std::collections::hash_map::DefaultHasher::new();
                        state.to_string().hash(&mut hasher);
                        hasher.finish()
                    };
                    // PROTOCOL §4.3: an identical delta is not pushed twice in a row unless
                    // desired changed.
                    if !desired_changed && self.last_delta == Some(hash) {
                        continue;
                    }
                    self.last_delta = Some(hash);
                    let id = self.conn.next_id();
                    if let Some(previous) = self.delta_request.replace(id) {
                        self.conn.take_pending(previous);
                    }
                    self.conn.expect_reply(id, Pending::ShadowDelta);
                    let params =
                        json!({"state": state, "version": version, "timestamp": timestamp});
                    self.state
                        .hub
                        .emit(&self.conn.identity(), "rpc.in.Shadow.Delta", &params);
                    self.socket
                        .queue_text(&Frame::request(id, "Shadow.Delta", Some(params)).to_json());
                }
            }
        }
        self.socket
            .flush()
            .await
            .map_err(|e| format!("send failed: {e}"))
    }
}

fn not_reading(timeout: Duration) -> String {
    format!("the device read nothing for {} ms", timeout.as_millis())
}

fn store_error(e: StoreError) -> (i64, String) {
    match e {
        StoreError::Shadow(shadow) => (shadow.code(), shadow.to_string()),
        StoreError::NotFound(what) => (protocol::codes::NOT_FOUND, format!("{what} not found")),
        other => {
            tracing::error!(error = %other, "store failure on a device request");
            (protocol::codes::INTERNAL, "internal error".into())
        }
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    #[test]
    fn pings_are_spread_over_the_period() {
        assert_eq!(sweep_slices(Duration::from_secs(30)), 600);
        assert_eq!(sweep_slices(Duration::from_secs(1)), 20);
        assert_eq!(sweep_slices(Duration::from_millis(10)), 1);
    }

    fn future_size<A, F>(_: fn(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every idle device holds one `live` task for as long as it is connected; the task's
    /// future must stay the session's wait, not grow with the one-off steps around it (it
    /// was 1.9 KB before the session got a task of its own).
    #[test]
    fn an_idle_device_task_stays_small() {
        let live = future_size(live);
        let run = future_size(|s: &mut Session| s.run());
        assert!(live <= 512, "live future {live} bytes");
        assert!(run <= 384, "Session::run future {run} bytes");
        assert!(
            std::mem::size_of::<Session>() <= 768,
            "Session {} bytes",
            std::mem::size_of::<Session>()
        );
    }
}
