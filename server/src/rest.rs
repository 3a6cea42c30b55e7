//! The REST API under `/api/v2` (PROTOCOL §6) and the router that also carries the device
//! socket (§1), the notify stream (§5) and the per-device RPC socket.

pub mod app;
pub mod firmware;
pub mod openapi;
pub mod ota;
pub mod rollouts;
pub mod sockets;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use protocol::rest::{
    DeviceChange, DeviceObject, ErrorBody, KeyObject, LogsQuery, NewDevice, NewKey, NewUser, Scope,
    UserObject,
};
use protocol::shadow::Update;
use protocol::Value;
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;

use crate::access::{self, require_owner};
use crate::auth::{self, Caller};
use crate::error::ApiError;
use crate::registry::CallError;
use crate::store::{ApiKey, DeviceRecord};
use crate::{clock, notification_log, ops, AppState};

/// Builds the whole HTTP surface from the table in [`openapi::routes`].
pub fn router(state: AppState) -> Router {
    let max_body = state.settings.max_body_bytes;
    let (routes, _) = openapi::routes().split_for_parts();
    routes
        .merge(app::static_routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this endpoint",
    )
}

/// `GET /healthz` (PROTOCOL §6 has no body for it; monitors read `status`).
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or `failing` when the store cannot write.
    #[schema(example = "ok")]
    status: &'static str,
    /// Devices connected now.
    devices_online: usize,
    /// The store.
    store: HealthStore,
    /// The notification log.
    notification_log: HealthLog,
    /// The process's memory; the heap figures are from the last check of the memory
    /// keeper (every 10 s), which returns free heap memory after a burst.
    memory: crate::memory::Snapshot,
    /// Cluster mode only: this node, the others, and NATS and PostgreSQL as this node sees
    /// them.
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<crate::cluster::ClusterStatus>,
}

/// The store's part of [`Health`].
#[derive(Serialize, ToSchema)]
pub struct HealthStore {
    /// `running`, or `stopped` when it cannot write.
    writer: &'static str,
    /// Store jobs that panicked since the start.
    failed_jobs: u64,
}

/// The notification log's part of [`Health`].
#[derive(Serialize, ToSchema)]
pub struct HealthLog {
    /// Times the log writer was restarted after a failure.
    writer_restarts: u64,
}

/// `GET /healthz`: 200 while the server can do its work, 503 when its store cannot write.
#[utoipa::path(
    get, path = "/healthz", tag = "server",
    security(()),
    responses(
        (status = 200, description = "The server can do its work", body = Health),
        (status = 503, description = "The store cannot write", body = Health),
    ),
)]
async fn healthz(State(state): State<AppState>) -> Response {
    let cluster = match &state.cluster {
        Some(cluster) => Some(cluster.status().await),
        None => None,
    };
    let writing = state.store.writes_possible()
        && state
            .cluster
            .as_ref()
            .is_none_or(|cluster| cluster.healthy());
    let body = Health {
        status: if writing { "ok" } else { "failing" },
        devices_online: state.registry.len(),
        store: HealthStore {
            writer: if writing { "running" } else { "stopped" },
            failed_jobs: crate::store::sqlite::job_panics(),
        },
        notification_log: HealthLog {
            writer_restarts: state.hub.log().restarts(),
        },
        memory: crate::memory::snapshot(),
        cluster,
    };
    let status = if writing {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// An optional JSON body: empty means `None`; anything else must parse as `T`. The content
/// type is not checked, because mDash clients (curl -d, the smart-light backend) send JSON
/// under any content type.
pub struct Body<T>(pub Option<T>);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e: BytesRejection| ApiError::new(e.status(), e.body_text()))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Body(None));
        }
        serde_json::from_slice(&bytes)
            .map(|v| Body(Some(v)))
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// Path parameters, like `axum::extract::Path`, but refused with the error envelope of
/// PROTOCOL §6 (axum's own rejection is plain text), e.g. for `%FF` in an id.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Path(value))
            .map_err(|e| ApiError::new(e.status(), e.body_text()))
    }
}

/// The query string, like `axum::extract::Query`, but refused with the error envelope of
/// PROTOCOL §6, e.g. for `?commit_timeout=soon`.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Query(value))
            .map_err(|e| ApiError::new(e.status(), e.body_text()))
    }
}

/// The device `id`, if the caller may see it (its user, and a limited key's filter); 404
/// otherwise so ids of others do not leak.
pub async fn visible_device(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<DeviceRecord, ApiError> {
    match state.store.device(id).await? {
        Some(device) if caller.sees(&device, state.is_online(id)) => Ok(device),
        _ => Err(ApiError::not_found(format!("device {id} not found"))),
    }
}

/// The devices the caller sees.
pub async fn visible_devices(
    state: &AppState,
    caller: &Caller,
) -> Result<Vec<DeviceRecord>, ApiError> {
    let scope = (!caller.user.admin).then_some(&caller.user);
    let mut devices = state.store.list_devices(scope).await?;
    if caller.devices.is_some() {
        devices.retain(|d| caller.sees(d, state.is_online(&d.id)));
    }
    Ok(devices)
}

fn valid_device_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

#[utoipa::path(
    get, path = "/devices", tag = "devices",
    responses(
        (status = 200, description = "The devices visible to the caller", body = Vec<DeviceObject>),
        (status = 401, description = "Missing, invalid or expired credentials", body = ErrorBody),
    ),
)]
async fn list_devices(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<DeviceObject>>, ApiError> {
    let devices = visible_devices(&state, &caller).await?;
    Ok(Json(
        devices
            .iter()
            .map(|d| state.device_object(d, None))
            .collect(),
    ))
}

#[utoipa::path(
    post, path = "/devices", tag = "devices",
    request_body(content = Option<NewDevice>, description = "Name and id, both optional; an empty body is allowed"),
    responses(
        (status = 200, description = "The new device, with its token (shown only now)", body = DeviceObject),
        (status = 400, description = "The body is not valid JSON or not what this operation takes", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired credentials", body = ErrorBody),
        (status = 403, description = "The key's scope or device filter does not allow this", body = ErrorBody),
        (status = 409, description = "A device with this id exists or existed", body = ErrorBody),
        (status = 413, description = "The body is larger than the server accepts", body = ErrorBody),
    ),
)]
async fn create_device(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<NewDevice>,
) -> Result<Json<DeviceObject>, ApiError> {
    let body = body.unwrap_or_default();
    let id = match body.id {
        Some(id) if valid_device_id(&id) => id,
        Some(_) => {
            return Err(ApiError::bad_request(
                "device id must be 1-64 characters of A-Z a-z 0-9 _ - . :",
            ))
        }
        None => auth::new_secret(),
    };
    caller.require(Scope::Operate)?;
    let name = body.name.unwrap_or_else(|| id.clone());
    if caller.devices.is_some() {
        // A key limited to some devices creates only devices it will see.
        let planned = DeviceRecord {
            id: id.clone(),
            name: name.clone(),
            user_id: caller.user.id.clone(),
            shared_with: String::new(),
            created_at: 0.0,
            last_seen: None,
            info: Value::Object(Default::default()),
            shadow: Default::default(),
        };
        if !caller.sees(&planned, false) {
            return Err(ApiError::forbidden(
                "this key is limited to devices its filter matches; the new device would not",
            ));
        }
    }
    let (device, token) = ops::create::run(&state, &caller.user, id, name).await?;
    Ok(Json(state.device_object(&device, Some(&token))))
}

#[utoipa::path(
    get, path = "/devices/{id}", tag = "devices",
    params(("id" = String, Path, description = "Device id", example = "lamp-1")),
    responses(
        (status = 200, description = "The device", body = DeviceObject),
        (status = 401, description = "Missing, invalid or expired credentials", body = ErrorBody),
        (status = 404, description = "No such device visible to the caller", body = ErrorBody),
    ),
)]
async fn get_device(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DeviceObject>, ApiError> {
    let device = visible_device(&state, &caller, &id).await?;
    Ok(Json(state.device_object(&device, None)))
}

#[utoipa::path(
    post, path = "/devices/{id}", tag = "devices",
    params(("id" = String, Path, description = "Device id", example = "lamp-1")),
    request_body(content = Option<DeviceChange>, description = "Any of name, shared_with and a shadow update"),
    responses(
        (status = 200, description = "The device as changed", body = DeviceObject),
        (status = 400, description = "The body is not valid JSON or not what this operation takes", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired credentials", body = ErrorBody),
        (status = 403, description = "The key's scope or device filter does not allow this, or the caller is not the owner", body = ErrorBody),
        (status = 404, description = "No such device visible to the caller", body = ErrorBody),
        (status = 409, description = "The shadow update names a version the shadow is not at", body = ErrorBody),
        (status = 413, description = "The body, or the shadow it would make, is too large", body = ErrorBody),
    ),
)]
async fn change_device(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(body): Body<DeviceChange>,
) -> Result<Json<DeviceObject>, ApiError> {
    let change = body.unwrap_or_default();
    let mut device = visible_device(&state, &caller, &id).await?;
    let update = change
        .shadow
        .as_ref()
        .map(Update::from_value)
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("invalid shadow update: {e}")))?;
    if let Some(update) = &update {
        access::check_shadow_update(&caller, &device, update)?;
    }
    if change.name.is_some() || change.shared_with.is_some() {
        caller.require(Scope::Operate)?;
        if change.shared_with.is_some() {
            require_owner(&caller.user, &device)?;
        } else {
            access::require_rename(&caller.user, &device)?;
        }
        if let Some(name) = &change.name {
            if name.is_empty() || name.len() > 256 {
                return Err(ApiError::bad_request("name must be 1-256 characters"));
            }
        }
        let shared_with = change.shared_with.map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(",")
        });
        device = ops::change::run(&state, &id, change.name, shared_with).await?;
    }
    if let Some(update) = update {
        device = ops::shadow_update::run(&state, &id, update).await?;
    }
    Ok(Json(state.device_object(&device, None)))
}

/// `PUT /devices/:id`: the same as `POST`.
#[utoipa::path(
    put, operation_id = "replace_device", path = "/devices/{id}", tag = "devices",
    params(("id" = String, Path, description = "Device id", example = "lamp-1")),
    request_body(content = Option<DeviceChange>, description = "Any of name, shared_with and a shadow update"),
    responses(
        (status = 200, description = "The device as changed", body = DeviceObject),
        (status = 400, description = "The body is not valid JSON or not what this operation takes", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired credentials", body = ErrorBody),
        (status = 403, description = "The key's scope or device filter does not allow this, or the caller is not the owner", body = ErrorBody),
        (status = 404, description = "No such device visible to the caller", body = ErrorBody),
        (status = 409, description = "The shadow update names a version the shadow is not at", body = ErrorBody),
        (status = 413, description = "The body, or the shadow it would make, is too large", body = ErrorBody),
    ),
)]
async fn replace_device(
    state: State<AppState>,
    caller: Caller,
    id: Path<String>,
    body: Body<DeviceChange>,
) -> Result<Json<DeviceObject>, ApiError> {
    change_device(state, caller, id, body).await
}

#[utoipa::path(
    delete, path = "/devices/{id}", tag = "devices",
    params(("id" = String, Path, description = "Device id", example = "lamp-1")),
    responses(
        (status = 200, description = "Deleted: `true`", content_type = "application/json", body = bool),
        (status = 401, description = "Missing, invalid or expired credentials", body = ErrorBody),
        (status = 403, description = "The key's scope or device filter does not allow this, or the caller is not the owner", body = ErrorBody),
        (status = 404, description = "No such device visible to the caller", body = ErrorBody),
    ),
)]
async fn delete_device(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let device = visible_device(&state, &caller, &id).await?;
    caller.require(Scope::Deploy)?;
    require_owner(&caller.user, &device)?;
    if !ops::delete::run(&state, &device).await? {
        return Err(ApiError::not_found(format!("device {id} not found")));
    }
    Ok(Json(Value::Bool(true)))
}

/// `POST /devices/:id/release`: lets a quarantined device back in before its cool-down
/// ends (the owner or the admin, with `operate`).
#[utoipa::path(
    post, path = "/devices/{id}/release", tag = "devices",
    params(("id" = String, Path, description = "Device id", example = "lamp-1")),
    responses(
        (status = 200, description = "Whether the device was quarantined", content_type = "application/json", body = bool),
        (status = 401, description = "Missing, invalid or expired credentials", body = ErrorBody),
        (status = 403, description = "The key's scope or device filter does not allow this, or the caller is not the owner", body = ErrorBody),
        (status = 404, description = "No such device visible to the caller", body = ErrorBody),
    ),
)]
async fn release_device(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let device = visible_device(&state, &caller, &id).await?;
    caller.require(Scope::Operate)?;
    require_owner(&caller.user, &device)?;
    Ok(Json(Value::Bool(ops::release::run(&state, &device))))
}

#[utoipa::path(
    get, path = "/devices/{id}/shadow", tag = "devices",
    params(("id" = String, Path, description = "Device id", example = "lamp-1")),
    responses(
        (status = 200, description = "The shadow document with its delta", body = openapi::ShadowDocument),
        (status = 401, description = "Missing, invalid or expired credentials", body = ErrorBody),
        (status = 404, description = "No such device visible to the caller", body = ErrorBody),
    ),
)]
async fn get_shadow(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let device = visible_device(&state, &caller, &id).await?;
    Ok(Json(device.shadow.to_document_with_delta()))
}

#[utoipa::path(
    post, path = "/devices/{id}/shadow", tag = "devices",
    params(("id" = String, Path, description = "Device id", example = "lamp-1")),
    request_body(content = openapi::ShadowUpdate, description = "A shadow update (PROTOCOL §4.1)"),
    responses(
        (status = 200, description = "The shadow document after the update", body = openapi::ShadowDocument),
        (status = 400, description = "The body is not valid JSON or not what this operation takes", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired credentials", body = ErrorBody),
        (status = 403, description = "The key's scope does not allow this write (`desired.ota` needs `deploy`)", body = ErrorBody),
        (status = 404, description = "No such device visible to the caller", body = ErrorBody),
        (status = 409, description = "The update names a version the shadow is not at", body = ErrorBody),
        (status = 413, description = "The body, or the shadow it would make, is too large", body = ErrorBody),
    ),
)]
async fn post_shadow(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(body): Body<Value>,
) -> Result<Json<Value>, ApiError> {
    let device = visible_device(&state, &caller, &id).await?;
    let body = body.ok_or_else(|| ApiError::bad_request("missing shadow update body"))?;
    let update =
        Update::from_value(&body).map_err(|e| ApiError::new(status_of(e.code()), e.to_string()))?;
    access::check_shadow_update(&caller, &device, &update)?;
    let device = ops::shadow_update::run(&state, &id, update).await?;
    Ok(Json(device.shadow.to_document_with_delta()))
}

fn status_of(code: i64) -> StatusCode {
    u16::try_from(code)
        .ok()
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::BAD_REQUEST)
}

/// Maps an RPC outcome to PROTOCOL §6's proxy errors.
pub fn call_error(error: CallError, id: &str, method: &str, timeout_ms: u64) -> ApiError {
    match error {
        CallError::Offline => ApiError::unavailable(format!("device {id} is offline")),
        CallError::Disconnected => ApiError::unavailable(format!(
            "device {id} disconnected before replying to {method}"
        )),
        CallError::Timeout => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!("device {id} did not reply to {method} within {timeout_ms} ms"),
        ),
        CallError::Device(error) => ApiError::from_device(error),
    }
}

/// `POST /devices/:id/rpc/:method`: calls `method` on the device with the body as params and
/// answers its result (PROTOCOL §6).
#[utoipa::path(
    post, path = "/devices/{id}/rpc/{method}", tag = "devices",
    params(("id" = String, Path, description = "Device id", example = "lamp-1"), ("method" = String, Path, description = "RPC method, such as `Sys.GetInfo`")),
    request_body(content = Option<Object>, description = "The call's params; may be empty"),
    responses(
        (status = 200, description = "The device's `result`, verbatim", body = Value),
        (status = 400, description = "The body is not valid JSON or not what this operation takes", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired credentials", body = ErrorBody),
        (status = 403, description = "The key's scope does not allow this call, or the device refused it with 403", body = ErrorBody),
        (status = 404, description = "No such device visible to the caller, or the device has no such method", body = ErrorBody),
        (status = 413, description = "The body is larger than the server accepts", body = ErrorBody),
        (status = 500, description = "The device returned an error; its `{code, message}` is in `error.device`", body = ErrorBody),
        (status = 503, description = "The device is offline, or went away before replying", body = ErrorBody),
        (status = 504, description = "The device did not reply in time", body = ErrorBody),
    ),
)]
async fn rpc_proxy(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, method)): Path<(String, String)>,
    Body(params): Body<Value>,
) -> Result<Json<Value>, ApiError> {
    let device = visible_device(&state, &caller, &id).await?;
    access::check_rpc(&caller, &device, &method)?;
    ops::call::run(&state, &id, &method, params, state.rpc_timeout())
        .await
        .map(Json)
        .map_err(|e| call_error(e, &id, &method, state.settings.rpc_timeout_ms))
}

/// `GET /devices/:id/rpc/:method`: the same call as `POST`, as mDash clients also send it.
#[utoipa::path(
    get, operation_id = "rpc_proxy_get", path = "/devices/{id}/rpc/{method}", tag = "devices",
    params(("id" = String, Path, description = "Device id", example = "lamp-1"), ("method" = String, Path, description = "RPC method, such as `Sys.GetInfo`")),
        responses(
        (status = 200, description = "The device's `result`, verbatim", body = Value),
        (status = 400, description = "The body is not valid JSON or not what this operation takes", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired credentials", body = ErrorBody),
        (status = 403, description = "The key's scope does not allow this call, or the device refused it with 403", body = ErrorBody),
        (status = 404, description = "No such device visible to the caller, or the device has no such method", body = ErrorBody),
        (status = 413, description = "The body is larger than the server accepts", body = ErrorBody),
        (status = 500, description = "The device returned an error; its `{code, message}` is in `error.device`", body = ErrorBody),
        (status = 503, description = "The device is offline, or went away before replying", body = ErrorBody),
        (status = 504, description = "The device did not reply in time", body = ErrorBody),
    ),
)]
async fn rpc_proxy_get(
    state: State<AppState>,
    caller: Caller,
    path: Path<(String, String)>,
    body: Body<Value>,
) -> Result<Json<Value>, ApiError> {
    rpc_proxy(state, caller, path, body).await
}

fn key_object(key: &ApiKey, token: Option<&str>) -> KeyObject {
    KeyObject {
        id: key.id.clone(),
        user_id: key.user_id.clone(),
        name: key.name.clone(),
        scope: key.scope,
        devices: key.devices.clone(),
        expires_at: key.expires_at.map(clock::rfc3339),
        created_at: clock::rfc3339(key.created_at),
        last_used: key.last_used.map(clock::rfc3339),
        token: token.map(str::to_string),
    }
}

#[utoipa::path(
    get, path = "/keys", tag = "keys",
    responses(
        (status = 200, description = "The caller's API keys (without their secrets)", body = Vec<KeyObject>),
        (status = 401, description = "Missing, invalid or expired credentials", body = ErrorBody),
    ),
)]
async fn list_keys(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<KeyObject>>, ApiError> {
    let keys = state.store.list_keys(&caller.user.id).await?;
    Ok(Json(keys.iter().map(|k| key_object(k, None)).collect()))
}

/// `GET /keys/current` (PROTOCOL §11): the key the request came with, so a client can show
/// what it may do. Any scope may read it; a password login has no key to show.
#[utoipa::path(
    get, path = "/keys/current", tag = "keys",
    responses(
        (status = 200, description = "The calling API key (without its secret)", body = KeyObject),
        (status = 401, description = "Missing, invalid or expired credentials", body = ErrorBody),
        (status = 404, description = "The request was made with a user name and password, not an API key", body = ErrorBody),
    ),
)]
async fn current_key(caller: Caller) -> Result<Json<KeyObject>, ApiError> {
    let Some(key) = &caller.key else {
        return Err(ApiError::not_found(
            "this request was made with a user name and password, not an API key",
        ));
    };
    let mut object = key_object(key, None);
    // Keys made before scopes existed show what they may do (PROTOCOL §11).
    object.scope = Some(caller.scope);
    Ok(Json(object))
}

/// Creates an API key for `user_id` with what `spec` says; the secret is returned once and
/// stored only hashed.
pub async fn issue_key(
    state: &AppState,
    user_id: &str,
    spec: ApiKey,
) -> Result<(ApiKey, String), ApiError> {
    let token = auth::new_secret();
    let key = ApiKey {
        id: auth::new_secret(),
        user_id: user_id.to_string(),
        created_at: clock::now(),
        last_used: None,
        ..spec
    };
    let key = state
        .store
        .create_key(key, &auth::hash_secret(&token))
        .await?;
    Ok((key, token))
}

/// `POST /keys` (PROTOCOL §11): a key never gets more than the key that makes it, a scope
/// no wider and a device filter no looser.
#[utoipa::path(
    post, path = "/keys", tag = "keys",
    request_body(content = Option<NewKey>, description = "Name, scope, device filter and expiry, all optional"),
    responses(
        (status = 200, description = "The new key, with its secret in `token` (shown only now)", body = KeyObject),
        (status = 400, description = "The body is not valid JSON or not what this operation takes", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired credentials", body = ErrorBody),
        (status = 403, description = "The scope asked for is wider than the caller's", body = ErrorBody),
        (status = 413, description = "The body is larger than the server accepts", body = ErrorBody),
    ),
)]
async fn create_key(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<NewKey>,
) -> Result<Json<KeyObject>, ApiError> {
    let body = body.unwrap_or_default();
    let scope = body.scope.unwrap_or(caller.scope);
    caller.require(scope)?;
    if let Some(name) = &body.name {
        if name.len() > 128 || name.chars().any(char::is_control) {
            return Err(ApiError::bad_request("name must be at most 128 characters"));
        }
    }
    let requested = body
        .devices
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty());
    if requested.is_some_and(|t| t.len() > 512) {
        return Err(ApiError::bad_request(
            "devices must be a filter of at most 512 characters",
        ));
    }
    // Filters AND their terms, so the caller's own limit joined with the new one holds both.
    let devices = match (
        caller.devices.as_ref().map(|f| f.text().to_string()),
        requested,
    ) {
        (Some(own), Some(new)) => Some(format!("{own} {new}")),
        (Some(own), None) => Some(own),
        (None, new) => new.map(str::to_string),
    };
    let expires_at = match &body.expires_at {
        None => None,
        Some(text) => {
            let at =
                time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                    .map_err(|e| {
                    ApiError::bad_request(format!("expires_at is not an RFC 3339 time: {e}"))
                })?;
            let at = at.unix_timestamp_nanos() as f64 / 1e9;
            if at <= clock::now() {
                return Err(ApiError::bad_request("expires_at is in the past"));
            }
            Some(at)
        }
    };
    let spec = ApiKey {
        name: body.name.unwrap_or_default(),
        scope: Some(scope),
        devices,
        expires_at,
        ..ApiKey::default()
    };
    let (key, token) = issue_key(&state, &caller.user.id, spec).await?;
    Ok(Json(key_object(&key, Some(&token))))
}

/// `DELETE /keys/:id`: one of the caller's keys, and never one that may do more than the
/// caller's own.
#[utoipa::path(
    delete, path = "/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "Key id")),
    responses(
        (status = 200, description = "Deleted: `true`", content_type = "application/json", body = bool),
        (status = 401, description = "Missing, invalid or expired credentials", body = ErrorBody),
        (status = 403, description = "The key may do more than the caller's own", body = ErrorBody),
        (status = 404, description = "The caller has no such key", body = ErrorBody),
    ),
)]
async fn delete_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let keys = state.store.list_keys(&caller.user.id).await?;
    let Some(key) = keys.iter().find(|k| k.id == id) else {
        return Err(ApiError::not_found(format!("key {id} not found")));
    };
    let full = if caller.user.admin {
        Scope::Admin
    } else {
        Scope::Deploy
    };
    caller.require(key.scope.unwrap_or(full))?;
    if state.store.delete_key(&caller.user.id, &id).await? {
        Ok(Json(Value::Bool(true)))
    } else {
        Err(ApiError::not_found(format!("key {id} not found")))
    }
}

/// Validates a user name: it becomes part of the user id and of Basic credentials.
pub fn valid_user_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@' | b'+'))
}

/// `POST /user/add` answers with the user and the API key created for it, shown once.
#[derive(Serialize, ToSchema)]
pub struct NewUserResponse {
    #[serde(flatten)]
    user: UserObject,
    api_key: String,
}

#[utoipa::path(
    post, path = "/user/add", tag = "keys",
    request_body(content = NewUser, description = "Name and password"),
    responses(
        (status = 200, description = "The new user, with an API key for it (shown only now)", body = NewUserResponse),
        (status = 400, description = "The body is not valid JSON or not what this operation takes", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired credentials", body = ErrorBody),
        (status = 403, description = "Only the administrator, with an `admin` key, may add users", body = ErrorBody),
        (status = 409, description = "A user with this name exists", body = ErrorBody),
        (status = 413, description = "The body is larger than the server accepts", body = ErrorBody),
    ),
)]
async fn add_user(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<NewUser>,
) -> Result<Json<NewUserResponse>, ApiError> {
    if !caller.user.admin {
        return Err(ApiError::forbidden("only the administrator may add users"));
    }
    caller.require(Scope::Admin)?;
    let body = body.ok_or_else(|| ApiError::bad_request("body must be {\"name\", \"pass\"}"))?;
    // Like the key `--register-user` prints: what the new user may do (PROTOCOL §11).
    Ok(Json(new_user(&state, body, ApiKey::default()).await?))
}

/// Makes the user `body` names and its first key `key`; the answer shows the key once.
pub async fn new_user(
    state: &AppState,
    body: NewUser,
    key: ApiKey,
) -> Result<NewUserResponse, ApiError> {
    if !valid_user_name(&body.name) {
        return Err(ApiError::bad_request(
            "user name must be 1-64 characters of A-Z a-z 0-9 _ - . @ +",
        ));
    }
    if body.pass.is_empty() {
        return Err(ApiError::bad_request("password must not be empty"));
    }
    let cost = state.settings.bcrypt_cost;
    let pass = body.pass;
    let hash = tokio::task::spawn_blocking(move || bcrypt::hash(pass, cost))
        .await
        .map_err(|e| ApiError::internal(format!("hashing failed: {e}")))?
        .map_err(|e| ApiError::internal(format!("hashing failed: {e}")))?;
    let user = state
        .store
        .create_user(&body.name, &hash, clock::now())
        .await?;
    let (_, token) = issue_key(state, &user.id, key).await?;
    Ok(NewUserResponse {
        user: UserObject {
            id: user.id,
            name: user.name,
            admin: user.admin,
            created_at: clock::rfc3339(user.created_at),
        },
        api_key: token,
    })
}

const LOGS_DEFAULT_LIMIT: u64 = 100;
const LOGS_MAX_LIMIT: u64 = 10_000;

/// `POST /logs`: stored notifications from an offset (the index of a notification in the
/// whole rotated log, PROTOCOL §7). The next offset to ask for is in `X-Herd-Next-Offset`.
#[utoipa::path(
    post, path = "/logs", tag = "server",
    request_body(content = Option<LogsQuery>, description = "Offset and count, both optional"),
    responses(
        (status = 200, description = "Stored notifications of the caller's devices from that offset",
            body = Vec<Object>,
            headers(("x-herd-next-offset" = u64, description = "The offset to ask for next"))),
        (status = 400, description = "The body is not valid JSON or not what this operation takes", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired credentials", body = ErrorBody),
        (status = 413, description = "The body is larger than the server accepts", body = ErrorBody),
    ),
)]
async fn logs(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<LogsQuery>,
) -> Result<Response, ApiError> {
    let query = body.unwrap_or_default();
    let start = query.start.unwrap_or(0);
    let limit = query
        .limit
        .unwrap_or(LOGS_DEFAULT_LIMIT)
        .min(LOGS_MAX_LIMIT) as usize;
    // Serve what was emitted up to now, not what is still in the writer's buffer.
    state
        .hub
        .log()
        .flush()
        .await
        .map_err(|e| ApiError::internal(format!("cannot flush the log: {e}")))?;
    let dir = state.hub.log().dir().to_path_buf();
    let page = tokio::task::spawn_blocking(move || notification_log::read_page(&dir, start, limit))
        .await
        .map_err(|e| ApiError::internal(format!("log reader failed: {e}")))?
        .map_err(|e| ApiError::internal(format!("cannot read the log: {e}")))?;
    let mut items = page.items;
    if !caller.user.admin || caller.devices.is_some() {
        let visible: std::collections::HashSet<String> = visible_devices(&state, &caller)
            .await?
            .into_iter()
            .map(|d| d.id)
            .collect();
        items.retain(|item| access::may_read_log_line(&visible, item));
    }
    let mut response = Json(Value::Array(items)).into_response();
    if let Ok(next) = HeaderValue::from_str(&page.next.to_string()) {
        response.headers_mut().insert("x-herd-next-offset", next);
    }
    Ok(response)
}
