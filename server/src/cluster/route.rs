//! Requests between nodes, on `herd.node.<node>`: what another node needs done with a device
//! whose socket this node holds, or with the rollouts this node runs.
//!
//! A request is one JSON object tagged by `op`; the reply is `{"result": …}`, or
//! `{"error": {"status", "message", "device_error"?}}`. NATS says "no responders" when the
//! node is gone, which the caller treats as the device being offline.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use futures_util::StreamExt;
use protocol::frame::RpcError;
use protocol::{Map, Value};
use serde::{Deserialize, Serialize};

use super::{Cluster, NODE_PREFIX};
use crate::error::ApiError;
use crate::hub::Identity;
use crate::registry::{CallError, Out};
use crate::AppState;

/// Time a request may take on top of the work it asks for.
const MARGIN: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Call `method` on the device and reply with its outcome (PROTOCOL §2, §6).
    Call {
        device: String,
        method: String,
        params: Option<Value>,
        timeout_ms: u64,
    },
    /// Offer the device a shadow delta committed on another node (PROTOCOL §4.3).
    Delta {
        device: String,
        delta: Map<String, Value>,
        version: u64,
        timestamp: f64,
        desired_changed: bool,
    },
    /// Who sees the device's events changed (rename, share).
    Identity {
        device: String,
        owner: String,
        shared_with: String,
    },
    /// End the device's session (it was deleted).
    Close { device: String, reason: String },
    /// Another node holds the device now: drop this node's session without announcing it.
    Takeover { device: String },
    /// An operator's command for a rollout this node runs.
    Rollout { id: String, action: String },
    /// Apply a shadow update (PROTOCOL §4.1) to a device this node holds, in its turn, so
    /// its events keep commit order with the device's own reports.
    ShadowUpdate { device: String, update: Value },
    /// What the device reports about its firmware now ([`crate::ota::observe`]).
    Observe { device: String },
    /// Send the device a firmware image ([`crate::ota::transfer`]); the reply is the
    /// connection it went over.
    Transfer {
        device: String,
        transfer: crate::ota::Transfer,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Reply {
    Result(Value),
    Error {
        status: u16,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device_error: Option<RpcError>,
        /// The update stage that failed, for [`Request::Transfer`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stage: Option<String>,
    },
}

/// Why a request to another node failed.
#[derive(Debug)]
pub enum RouteError {
    /// Nobody answers for that node: it is gone.
    NoNode,
    Timeout,
    Failed(ApiError),
}

impl Cluster {
    /// Sends `request` to `node` and waits at most `timeout` for the reply.
    pub async fn request(
        &self,
        node: &str,
        request: &Request,
        timeout: Duration,
    ) -> Result<Value, RouteError> {
        let payload = serde_json::to_vec(request)
            .map_err(|e| RouteError::Failed(ApiError::internal(e.to_string())))?;
        let outcome = self
            .nats
            .send_request(
                format!("{NODE_PREFIX}{node}"),
                async_nats::client::Request::new()
                    .payload(payload.into())
                    .timeout(Some(timeout)),
            )
            .await;
        let message = match outcome {
            Ok(message) => message,
            Err(e) => {
                return Err(match e.kind() {
                    async_nats::client::RequestErrorKind::NoResponders => RouteError::NoNode,
                    async_nats::client::RequestErrorKind::TimedOut => RouteError::Timeout,
                    _ => RouteError::Failed(ApiError::unavailable(format!(
                        "cannot reach node {node}: {e}"
                    ))),
                })
            }
        };
        match serde_json::from_slice::<Reply>(&message.payload) {
            Ok(Reply::Result(value)) => Ok(value),
            Ok(Reply::Error {
                status,
                message,
                device_error,
                stage,
            }) => Err(RouteError::Failed(ApiError {
                message: match stage {
                    // The stage travels in front of the message: `stage: message`.
                    Some(stage) => format!("{stage}: {message}"),
                    None => message,
                },
                status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                device_error,
            })),
            Err(e) => Err(RouteError::Failed(ApiError::internal(format!(
                "node {node} sent an unreadable reply: {e}"
            )))),
        }
    }

    /// Sends `request` to the node holding device `id`, if another node does; no reply is
    /// awaited beyond its arrival.
    pub async fn tell_owner(&self, id: &str, request: Request) {
        let Some(node) = self.owner(id) else { return };
        if let Err(e) = self.request(&node, &request, MARGIN).await {
            tracing::warn!(device = id, node = %node, error = ?e, "cannot reach the device's node");
        }
    }

    /// What device `id` reports about its firmware, from the node that holds it; `None`
    /// when no node does.
    pub async fn observe(&self, id: &str) -> Option<crate::ota::Observed> {
        let node = self.owner(id)?;
        let request = Request::Observe {
            device: id.to_string(),
        };
        let value = self.request(&node, &request, MARGIN).await.ok()?;
        serde_json::from_value(value).ok()
    }

    /// Sends a firmware image to device `id` through the node that holds it.
    pub async fn transfer(
        &self,
        id: &str,
        transfer: crate::ota::Transfer,
    ) -> Result<u64, crate::ota::Failure> {
        use protocol::firmware::stage;
        let offline = || {
            crate::ota::failure_from(
                stage::BEGIN,
                "the device is offline".into(),
                Some(CallError::Offline),
            )
        };
        let node = self.owner(id).ok_or_else(offline)?;
        // A transfer takes as long as the image takes to write; the owner's own timeouts
        // bound it, this only guards against the node vanishing.
        let request = Request::Transfer {
            device: id.to_string(),
            transfer,
        };
        match self
            .request(&node, &request, Duration::from_secs(3600))
            .await
        {
            Ok(conn) => Ok(conn.as_u64().unwrap_or_default()),
            Err(RouteError::NoNode) => Err(offline()),
            Err(RouteError::Timeout) => Err(crate::ota::failure_from(
                stage::WRITE,
                format!("node {node} did not finish the transfer"),
                Some(CallError::Timeout),
            )),
            Err(RouteError::Failed(error)) => {
                let (stage_name, message) = match error.message.split_once(": ") {
                    Some((stage, message)) => (stage.to_string(), message.to_string()),
                    None => (stage::BEGIN.to_string(), error.message),
                };
                let cause = error.device_error.map(CallError::Device);
                Err(crate::ota::failure_from(&stage_name, message, cause))
            }
        }
    }

    /// Applies `update` to device `id` on the node that holds it; `None` when no other node
    /// does (then this node applies it).
    pub async fn update_shadow(
        &self,
        id: &str,
        update: &protocol::shadow::Update,
    ) -> Option<Result<(), crate::store::StoreError>> {
        let node = self.owner(id)?;
        let request = Request::ShadowUpdate {
            device: id.to_string(),
            update: update.to_value(),
        };
        match self.request(&node, &request, Duration::from_secs(30)).await {
            Ok(_) => Some(Ok(())),
            Err(RouteError::NoNode) => None,
            Err(RouteError::Failed(e)) if e.status == StatusCode::MISDIRECTED_REQUEST => None,
            Err(RouteError::Timeout) => Some(Err(crate::store::StoreError::Unavailable(format!(
                "node {node} did not apply the update in time"
            )))),
            Err(RouteError::Failed(e)) => Some(Err(crate::store::StoreError::Remote {
                status: e.status.as_u16(),
                message: e.message,
            })),
        }
    }

    /// Calls `method` on device `id` through the node that holds it.
    pub async fn call(
        &self,
        id: &str,
        method: &str,
        params: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        let node = self.owner(id).ok_or(CallError::Offline)?;
        let request = Request::Call {
            device: id.to_string(),
            method: method.to_string(),
            params,
            timeout_ms: timeout.as_millis() as u64,
        };
        match self.request(&node, &request, timeout + MARGIN).await {
            Ok(value) => Ok(value),
            Err(RouteError::NoNode) => Err(CallError::Offline),
            Err(RouteError::Timeout) => Err(CallError::Timeout),
            Err(RouteError::Failed(error)) => Err(match error.device_error {
                Some(device) => CallError::Device(device),
                None if error.status == StatusCode::NOT_FOUND => CallError::Offline,
                None if error.status == StatusCode::GATEWAY_TIMEOUT => CallError::Timeout,
                None => CallError::Disconnected,
            }),
        }
    }
}

/// Answers the requests sent to this node, each in a task of its own.
pub async fn serve(state: AppState, mut requests: async_nats::Subscriber) {
    while let Some(message) = requests.next().await {
        let state = state.clone();
        tokio::spawn(async move {
            let reply = match serde_json::from_slice::<Request>(&message.payload) {
                Ok(request) => handle(&state, request).await,
                Err(e) => Reply::Error {
                    status: 400,
                    message: format!("not a request: {e}"),
                    device_error: None,
                    stage: None,
                },
            };
            let Some(to) = message.reply else { return };
            let Some(cluster) = state.cluster.as_ref() else {
                return;
            };
            let payload = serde_json::to_vec(&reply).unwrap_or_default();
            if let Err(e) = cluster.nats.publish(to, payload.into()).await {
                tracing::warn!(error = %e, "cannot answer another node");
            }
        });
    }
}

fn error(error: ApiError) -> Reply {
    Reply::Error {
        status: error.status.as_u16(),
        message: error.message,
        device_error: error.device_error,
        stage: None,
    }
}

async fn handle(state: &AppState, request: Request) -> Reply {
    match request {
        Request::Call {
            device,
            method,
            params,
            timeout_ms,
        } => {
            // Only a device this node holds: never pass the call on again.
            let Some(conn) = state.registry.get(&device) else {
                return error(ApiError::not_found("device is offline"));
            };
            let (id, reply) = crate::ops::call::start(state, &conn, &method, params);
            let timeout = Duration::from_millis(timeout_ms);
            match crate::ops::call::finish(&conn, id, reply, timeout).await {
                Ok(value) => Reply::Result(value),
                Err(CallError::Device(rpc)) => error(ApiError::from_device(rpc)),
                Err(CallError::Timeout) => error(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the device did not answer in time",
                )),
                Err(CallError::Offline) => error(ApiError::not_found("device is offline")),
                Err(CallError::Disconnected) => error(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "the device disconnected",
                )),
            }
        }
        Request::Delta {
            device,
            delta,
            version,
            timestamp,
            desired_changed,
        } => {
            if let Some(conn) = state.registry.get(&device) {
                conn.push(Out::Delta {
                    delta,
                    version,
                    timestamp,
                    desired_changed,
                });
            }
            Reply::Result(Value::Null)
        }
        Request::Identity {
            device,
            owner,
            shared_with,
        } => {
            if let Some(conn) = state.registry.get(&device) {
                conn.set_identity(Identity {
                    id: device.as_str().into(),
                    owner: owner.into(),
                    shared_with: shared_with.into(),
                });
            }
            Reply::Result(Value::Null)
        }
        Request::Close { device, reason } => {
            if let Some(conn) = state.registry.get(&device) {
                conn.push(Out::Close(reason));
            }
            Reply::Result(Value::Null)
        }
        Request::Takeover { device } => {
            // `held: false`: the session here had already ended by itself, with its own
            // `offline`, so the asking node's session is news and it announces `online`.
            let held = state.registry.take(&device).inspect(|conn| {
                tracing::info!(device, "device taken over by another node");
                conn.push(Out::Close("connected to another node".into()));
            });
            Reply::Result(serde_json::json!({ "held": held.is_some() }))
        }
        Request::Rollout { id, action } => {
            let Some(action) = crate::rollout::Action::parse(&action) else {
                return error(ApiError::bad_request(format!("no rollout action {action}")));
            };
            match state.rollouts.control(state, &id, action).await {
                Ok(()) => Reply::Result(Value::Null),
                Err(e) => error(e),
            }
        }
        Request::ShadowUpdate { device, update } => {
            if !state.registry.is_online(&device) {
                // Gone from here: the asking node applies it itself.
                return error(ApiError::new(StatusCode::MISDIRECTED_REQUEST, "not here"));
            }
            let update = match protocol::shadow::Update::from_value(&update) {
                Ok(update) => update,
                Err(e) => return error(ApiError::bad_request(e.to_string())),
            };
            match crate::ops::shadow_update::run(state, &device, update).await {
                Ok(_) => Reply::Result(Value::Null),
                Err(e) => error(e.into()),
            }
        }
        Request::Observe { device } => {
            if !state.registry.is_online(&device) {
                return error(ApiError::not_found("device is offline"));
            }
            match crate::ota::observe_here(state, &device).await {
                Ok(observed) => Reply::Result(serde_json::to_value(observed).unwrap_or_default()),
                Err(e) => error(e.into()),
            }
        }
        Request::Transfer { device, transfer } => {
            if !state.registry.is_online(&device) {
                return error(ApiError::not_found("device is offline"));
            }
            let firmware = match state.store.firmware(&transfer.firmware).await {
                Ok(Some((firmware, _))) => firmware,
                Ok(None) => {
                    return error(ApiError::not_found(format!(
                        "firmware {} not found",
                        transfer.firmware
                    )))
                }
                Err(e) => return error(e.into()),
            };
            // One update per device holds on the node that holds the device too, and a
            // device fetching the image here (PROTOCOL §10.3) finds its update under way.
            let Some(_job) =
                state
                    .ota_jobs
                    .claim(&device, &firmware.id, transfer.rollout.as_deref())
            else {
                return error(ApiError::conflict(format!(
                    "an update is already in progress on device {device}"
                )));
            };
            match crate::ota::transfer(state, &device, &firmware, transfer).await {
                Ok(conn) => Reply::Result(Value::from(conn)),
                Err(failure) => Reply::Error {
                    status: 502,
                    message: failure.message,
                    device_error: match failure.cause {
                        Some(CallError::Device(rpc)) => Some(rpc),
                        _ => None,
                    },
                    stage: Some(failure.stage.to_string()),
                },
            }
        }
    }
}

/// The holder of lease `name`, if any holds it now.
pub async fn lease_holder(cluster: &Arc<Cluster>, name: &str) -> Option<String> {
    let client = cluster.pg.get().await.ok()?;
    let row = client
        .query_opt(
            "SELECT holder FROM herd_leases WHERE name = $1 AND expires_at > now()",
            &[&name],
        )
        .await
        .ok()??;
    Some(row.get(0))
}
