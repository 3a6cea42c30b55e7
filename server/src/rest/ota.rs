//! `POST /devices/:id/ota` (PROTOCOL §6, §10.2), as mDash has it: the image in the body
//! (multipart `file`, or raw), stored (§10.1), written to the device, and `true` once
//! `OTA.End` succeeded. The device then restarts; a task follows it until it comes back
//! running the image (and commits it) or reverts, and says so in `ota.success`,
//! `ota.revert` or `ota.failure` (§10.6).
//!
//! `?firmware=<id>` pushes an image stored before instead of a body.

use std::time::Duration;

use crate::rest::{Path, Query};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::Json;
use protocol::firmware::stage;
use protocol::rest::ErrorBody;
use protocol::Value;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::rest::openapi;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::hub::Identity;
use crate::ota::{self, Failure, Return};
use crate::registry::CallError;
use crate::rest::firmware::{receive_upload, visible_firmware, UploadMeta};
use crate::store::FirmwareRecord;
use crate::{access, clock, AppState};

/// Query of `POST /devices/:id/ota`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(default)]
pub struct PushQuery {
    /// A stored image to push instead of the body.
    pub firmware: Option<String>,
    /// Seconds the device has to come back and be committed (PROTOCOL §8).
    pub commit_timeout: Option<u32>,
    pub app: Option<String>,
    pub version: Option<String>,
    pub platform: Option<String>,
    pub signature: Option<String>,
}

/// Extra time, beyond the commit timeout, for the device to come back.
const RETURN_GRACE: Duration = Duration::from_secs(60);

fn failure_error(failure: &Failure) -> ApiError {
    match &failure.cause {
        Some(CallError::Offline) | Some(CallError::Disconnected) => {
            ApiError::unavailable(failure.message.clone())
        }
        Some(CallError::Timeout) => {
            ApiError::new(StatusCode::GATEWAY_TIMEOUT, failure.message.clone())
        }
        Some(CallError::Device(error)) => {
            let mut api = ApiError::from_device(error.clone());
            api.message = failure.message.clone();
            api
        }
        None => ApiError::internal(failure.message.clone()),
    }
}

/// `POST /devices/:id/ota`.
#[utoipa::path(
    post, path = "/devices/{id}/ota", tag = "firmware", operation_id = "push_firmware",
    params(("id" = String, Path, description = "Device id", example = "lamp-1"), PushQuery),
    request_body(content(
        (openapi::FirmwareImage = "application/octet-stream"),
        (openapi::FirmwareUpload = "multipart/form-data"),
    ), description = "Not needed with `?firmware=`. The image: the raw body, or the multipart field `file` (a raw image, an ELF, or a Mongoose OS .zip) with metadata fields"),
    responses(
        (status = 200, description = "`true`: the device took the image and restarts into it", content_type = "application/json", body = bool),
        (status = 400, description = "The body or a parameter is not what this operation takes", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired credentials", body = ErrorBody),
        (status = 403, description = "Updating needs a key with scope `deploy`", body = ErrorBody),
        (status = 404, description = "No such device (or `?firmware=` image) visible to the caller", body = ErrorBody),
        (status = 409, description = "An update is already in progress on the device", body = ErrorBody),
        (status = 413, description = "The image is larger than the server accepts", body = ErrorBody),
        (status = 500, description = "The device refused the image; its `{code, message}` is in `error.device`", body = ErrorBody),
        (status = 503, description = "The device is offline, or went away during the transfer", body = ErrorBody),
        (status = 504, description = "The device stopped replying during the transfer", body = ErrorBody),
    ),
)]
pub async fn push(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<PushQuery>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let device = match state.store.device(&id).await? {
        Some(device) if caller.sees(&device, state.is_online(&id)) => device,
        _ => return Err(ApiError::not_found(format!("device {id} not found"))),
    };
    access::require_deploy(&caller, &device)?;
    if !state.is_online(&id) {
        return Err(ApiError::unavailable(format!("device {id} is offline")));
    }
    if state.ota_jobs.is_busy(&id) {
        return Err(ApiError::conflict(format!(
            "an update is already in progress on device {id}"
        )));
    }
    let firmware = match &query.firmware {
        Some(firmware) => visible_firmware(&state, &caller.user, firmware).await?.0,
        None => {
            let meta = UploadMeta {
                app: query.app.clone(),
                version: query.version.clone(),
                platform: query.platform.clone(),
                signature: query.signature.clone(),
            };
            receive_upload(&state, &caller.user, meta, req).await?
        }
    };
    let guard = state
        .ota_jobs
        .claim(&id, &firmware.id, None)
        .ok_or_else(|| {
            ApiError::conflict(format!("an update is already in progress on device {id}"))
        })?;
    let commit_timeout_s = query
        .commit_timeout
        .unwrap_or(state.settings.ota_commit_timeout_s)
        .max(1);
    let started = clock::now();
    let identity = match state.registry.get(&id) {
        Some(conn) => conn.identity(),
        None => Identity::of(&device),
    };
    // On this node or, in a cluster, on the node that holds the device.
    let transfer = ota::Transfer {
        firmware: firmware.id.clone(),
        commit_timeout_s,
        rollout: None,
        delivery: protocol::firmware::Delivery::Push,
    };
    let old_conn = match ota::transfer(&state, &id, &firmware, transfer).await {
        Ok(conn) => Some(conn),
        Err(failure) => {
            ota::emit_failure(&state, &identity, &firmware, &failure, None);
            return Err(failure_error(&failure));
        }
    };
    let follow = state.clone();
    tokio::spawn(async move {
        let _guard = guard;
        follow_up(
            follow,
            identity,
            firmware,
            old_conn,
            started,
            commit_timeout_s,
        )
        .await;
    });
    Ok(Json(Value::Bool(true)))
}

/// After `OTA.End`: the device's return, its commit, and the event that says how it went.
async fn follow_up(
    state: AppState,
    identity: Identity,
    firmware: FirmwareRecord,
    old_conn: Option<u64>,
    started: f64,
    commit_timeout_s: u32,
) {
    let timeout = Duration::from_secs(u64::from(commit_timeout_s)) + RETURN_GRACE;
    let id = identity.id.to_string();
    let outcome = tokio::select! {
        outcome = ota::await_return(&state, &id, &firmware, old_conn, timeout) => outcome,
        _ = state.shutdown.cancelled() => return,
    };
    match outcome {
        Return::Updated { .. } => match ota::commit(&state, &id).await {
            Ok(()) => ota::emit_success(&state, &identity, &firmware, clock::now() - started, None),
            Err(failure) => ota::emit_failure(&state, &identity, &firmware, &failure, None),
        },
        Return::Reverted {
            running_version,
            message,
        } => ota::emit_revert(
            &state,
            &identity,
            &firmware,
            &running_version,
            &message,
            None,
        ),
        Return::TimedOut => ota::emit_failure(
            &state,
            &identity,
            &firmware,
            &Failure {
                stage: stage::REBOOT,
                message: format!(
                    "the device did not come back within {} s",
                    timeout.as_secs()
                ),
                cause: None,
            },
            None,
        ),
    }
}
