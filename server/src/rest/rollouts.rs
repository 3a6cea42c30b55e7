//! `/api/v2/rollouts` (PROTOCOL §10.5): plan (and dry run), list, show, and the commands
//! start, pause, resume, abort and retry. The work itself is in [`crate::rollout`].

use std::collections::HashMap;

use crate::rest::{Path, Query};
use axum::extract::State;
use axum::Json;
use protocol::firmware::{RolloutObject, RolloutSpec};
use protocol::rest::ErrorBody;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::rest::Body;
use crate::rollout::{self, Action};
use crate::store::{FirmwareRecord, RolloutRecord, User};
use crate::{access, AppState};
use protocol::rest::Scope;

/// `?devices=1` adds the per-device states.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(default)]
pub struct ShowQuery {
    pub devices: Option<String>,
}

impl ShowQuery {
    fn wants_devices(&self) -> bool {
        matches!(self.devices.as_deref(), Some("1" | "true" | "yes"))
    }
}

/// `POST /rollouts`: a planned rollout, or only its plan with `"dry_run": true`.
#[utoipa::path(
    post, path = "/rollouts", tag = "rollouts", operation_id = "create_rollout",
    request_body(content = RolloutSpec, description = "The rollout spec (PROTOCOL §10.5)"),
    responses(
        (status = 200, description = "The planned rollout, or only its plan with `\"dry_run\": true`", body = RolloutObject),
        (status = 400, description = "The body or a parameter is not what this operation takes", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired credentials", body = ErrorBody),
        (status = 403, description = "Rollouts need a key with scope `deploy`", body = ErrorBody),
        (status = 404, description = "No such firmware, or a listed device, visible to the caller", body = ErrorBody),
        (status = 409, description = "A selected device is in another unfinished rollout", body = ErrorBody),
        (status = 413, description = "The body is larger than the server accepts", body = ErrorBody),
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Body(spec): Body<serde_json::Value>,
) -> Result<Json<RolloutObject>, ApiError> {
    let spec = spec.ok_or_else(|| ApiError::bad_request("missing rollout spec"))?;
    let spec: RolloutSpec = serde_json::from_value(spec)
        .map_err(|e| ApiError::bad_request(format!("invalid rollout spec: {e}")))?;
    let dry_run = spec.dry_run;
    caller.require(Scope::Deploy)?;
    let plan = rollout::plan(&state, &caller, spec).await?;
    if dry_run {
        let notes = plan.notes.clone();
        return Ok(Json(rollout::object(
            &state,
            &plan.rollout,
            &plan.devices,
            &plan.firmware,
            true,
            notes,
        )));
    }
    Ok(Json(rollout::create(&state, plan).await?))
}

async fn firmware_of(
    state: &AppState,
    rollout: &RolloutRecord,
) -> Result<FirmwareRecord, ApiError> {
    state
        .store
        .firmware(&rollout.firmware_id)
        .await?
        .map(|(firmware, _)| firmware)
        .ok_or_else(|| ApiError::internal(format!("rollout {}: its firmware is gone", rollout.id)))
}

async fn visible_rollout(
    state: &AppState,
    user: &User,
    id: &str,
) -> Result<RolloutRecord, ApiError> {
    match state.store.rollout(id).await? {
        Some(rollout) if access::can_see_rollout(user, &rollout) => Ok(rollout),
        _ => Err(ApiError::not_found(format!("rollout {id} not found"))),
    }
}

async fn show_object(
    state: &AppState,
    user: &User,
    id: &str,
    with_devices: bool,
) -> Result<RolloutObject, ApiError> {
    let rollout = visible_rollout(state, user, id).await?;
    let devices = state.store.rollout_devices(id).await?;
    let firmware = firmware_of(state, &rollout).await?;
    Ok(rollout::object(
        state,
        &rollout,
        &devices,
        &firmware,
        with_devices,
        Vec::new(),
    ))
}

/// `GET /rollouts`: the caller's rollouts (all, for the admin), newest first.
#[utoipa::path(
    get, path = "/rollouts", tag = "rollouts", operation_id = "list_rollouts",
    params(ShowQuery),
    responses(
        (status = 200, description = "The caller's rollouts (everyone's for the admin), newest first", body = Vec<RolloutObject>),
        (status = 401, description = "Missing, invalid or expired credentials", body = ErrorBody),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ShowQuery>,
) -> Result<Json<Vec<RolloutObject>>, ApiError> {
    let scope = (!caller.user.admin).then_some(caller.user.id.as_str());
    let rollouts = state.store.list_rollouts(scope).await?;
    let mut firmware: HashMap<String, FirmwareRecord> = HashMap::new();
    let mut list = Vec::with_capacity(rollouts.len());
    for rollout in rollouts {
        if !firmware.contains_key(&rollout.firmware_id) {
            let record = firmware_of(&state, &rollout).await?;
            firmware.insert(rollout.firmware_id.clone(), record);
        }
        let devices = state.store.rollout_devices(&rollout.id).await?;
        list.push(rollout::object(
            &state,
            &rollout,
            &devices,
            &firmware[&rollout.firmware_id],
            query.wants_devices(),
            Vec::new(),
        ));
    }
    Ok(Json(list))
}

/// `GET /rollouts/:id`.
#[utoipa::path(
    get, path = "/rollouts/{id}", tag = "rollouts", operation_id = "get_rollout",
    params(("id" = String, Path, description = "Rollout id"), ShowQuery),
    responses(
        (status = 200, description = "The rollout", body = RolloutObject),
        (status = 401, description = "Missing, invalid or expired credentials", body = ErrorBody),
        (status = 404, description = "No such rollout visible to the caller", body = ErrorBody),
    ),
)]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<ShowQuery>,
) -> Result<Json<RolloutObject>, ApiError> {
    Ok(Json(
        show_object(&state, &caller.user, &id, query.wants_devices()).await?,
    ))
}

async fn command(
    state: AppState,
    caller: Caller,
    id: String,
    action: Action,
) -> Result<Json<RolloutObject>, ApiError> {
    visible_rollout(&state, &caller.user, &id).await?;
    caller.require(Scope::Deploy)?;
    state.rollouts.control(&state, &id, action).await?;
    Ok(Json(show_object(&state, &caller.user, &id, false).await?))
}

/// `POST /rollouts/:id/start`.
#[utoipa::path(
    post, path = "/rollouts/{id}/start", tag = "rollouts", operation_id = "start_rollout",
    params(("id" = String, Path, description = "Rollout id")),
    responses(
        (status = 200, description = "The rollout, started", body = RolloutObject),
        (status = 401, description = "Missing, invalid or expired credentials", body = ErrorBody),
        (status = 403, description = "Rollouts need a key with scope `deploy`", body = ErrorBody),
        (status = 404, description = "No such rollout visible to the caller", body = ErrorBody),
        (status = 409, description = "The rollout's state does not allow this", body = ErrorBody),
    ),
)]
pub async fn start(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RolloutObject>, ApiError> {
    command(state, caller, id, Action::Start).await
}

/// `POST /rollouts/:id/pause`.
#[utoipa::path(
    post, path = "/rollouts/{id}/pause", tag = "rollouts", operation_id = "pause_rollout",
    params(("id" = String, Path, description = "Rollout id")),
    responses(
        (status = 200, description = "The rollout, paused", body = RolloutObject),
        (status = 401, description = "Missing, invalid or expired credentials", body = ErrorBody),
        (status = 403, description = "Rollouts need a key with scope `deploy`", body = ErrorBody),
        (status = 404, description = "No such rollout visible to the caller", body = ErrorBody),
        (status = 409, description = "The rollout's state does not allow this", body = ErrorBody),
    ),
)]
pub async fn pause(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RolloutObject>, ApiError> {
    command(state, caller, id, Action::Pause).await
}

/// `POST /rollouts/:id/resume`.
#[utoipa::path(
    post, path = "/rollouts/{id}/resume", tag = "rollouts", operation_id = "resume_rollout",
    params(("id" = String, Path, description = "Rollout id")),
    responses(
        (status = 200, description = "The rollout, resumed", body = RolloutObject),
        (status = 401, description = "Missing, invalid or expired credentials", body = ErrorBody),
        (status = 403, description = "Rollouts need a key with scope `deploy`", body = ErrorBody),
        (status = 404, description = "No such rollout visible to the caller", body = ErrorBody),
        (status = 409, description = "The rollout's state does not allow this", body = ErrorBody),
    ),
)]
pub async fn resume(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RolloutObject>, ApiError> {
    command(state, caller, id, Action::Resume).await
}

/// `POST /rollouts/:id/abort`.
#[utoipa::path(
    post, path = "/rollouts/{id}/abort", tag = "rollouts", operation_id = "abort_rollout",
    params(("id" = String, Path, description = "Rollout id")),
    responses(
        (status = 200, description = "The rollout, aborted", body = RolloutObject),
        (status = 401, description = "Missing, invalid or expired credentials", body = ErrorBody),
        (status = 403, description = "Rollouts need a key with scope `deploy`", body = ErrorBody),
        (status = 404, description = "No such rollout visible to the caller", body = ErrorBody),
        (status = 409, description = "The rollout's state does not allow this", body = ErrorBody),
    ),
)]
pub async fn abort(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RolloutObject>, ApiError> {
    command(state, caller, id, Action::Abort).await
}

/// `POST /rollouts/:id/retry`: a new planned rollout over the devices that did not make it.
#[utoipa::path(
    post, path = "/rollouts/{id}/retry", tag = "rollouts", operation_id = "retry_rollout",
    params(("id" = String, Path, description = "Rollout id")),
    responses(
        (status = 200, description = "A new planned rollout over the devices that did not make it", body = RolloutObject),
        (status = 401, description = "Missing, invalid or expired credentials", body = ErrorBody),
        (status = 403, description = "Rollouts need a key with scope `deploy`", body = ErrorBody),
        (status = 400, description = "The body or a parameter is not what this operation takes", body = ErrorBody),
        (status = 404, description = "No such rollout visible to the caller", body = ErrorBody),
        (status = 409, description = "The rollout is unfinished, or a device is in another unfinished rollout", body = ErrorBody),
    ),
)]
pub async fn retry(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RolloutObject>, ApiError> {
    let rollout = visible_rollout(&state, &caller.user, &id).await?;
    caller.require(Scope::Deploy)?;
    Ok(Json(rollout::retry(&state, &caller, &rollout).await?))
}
