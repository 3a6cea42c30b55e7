//! The REST API under `/api/v2` (PROTOCOL §6) and the router that also carries the device
//! socket (§1), the notify stream (§5) and the per-device RPC socket.

pub mod firmware;
pub mod ota;
pub mod rollouts;
pub mod sockets;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use protocol::rest::{
    DeviceChange, DeviceObject, KeyObject, LogsQuery, NewDevice, NewKey, NewUser, Scope, UserObject,
};
use protocol::shadow::Update;
use protocol::Value;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use crate::access::{self, require_owner};
use crate::auth::{self, Caller};
use crate::error::ApiError;
use crate::registry::CallError;
use crate::store::{ApiKey, DeviceRecord};
use crate::{clock, device_socket, notification_log, ops, AppState};

/// Builds the whole HTTP surface.
pub fn router(state: AppState) -> Router {
    let max_body = state.settings.max_body_bytes;
    let api = Router::new()
        .route("/rpc", get(device_socket::upgrade))
        .route("/notify", get(sockets::notify))
        .route("/devices", get(list_devices).post(create_device))
        .route(
            "/devices/{id}",
            get(get_device)
                .post(change_device)
                .put(change_device)
                .delete(delete_device),
        )
        .route("/devices/{id}/shadow", get(get_shadow).post(post_shadow))
        .route("/devices/{id}/rpc", get(sockets::device_rpc))
        .route("/devices/{id}/release", post(release_device))
        .route("/devices/{id}/rpc/{method}", get(rpc_proxy).post(rpc_proxy))
        .route(
            "/devices/{id}/ota",
            post(ota::push).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/firmware",
            get(firmware::list)
                .post(firmware::upload)
                .layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/firmware/{id}",
            get(firmware::get).delete(firmware::delete),
        )
        .route("/firmware/{id}/image", get(firmware::image))
        .route("/rollouts", get(rollouts::list).post(rollouts::create))
        .route("/rollouts/{id}", get(rollouts::show))
        .route("/rollouts/{id}/start", post(rollouts::start))
        .route("/rollouts/{id}/pause", post(rollouts::pause))
        .route("/rollouts/{id}/resume", post(rollouts::resume))
        .route("/rollouts/{id}/abort", post(rollouts::abort))
        .route("/rollouts/{id}/retry", post(rollouts::retry))
        .route("/keys", get(list_keys).post(create_key))
        .route("/keys/{id}", axum::routing::delete(delete_key))
        .route("/user/add", post(add_user))
        .route("/logs", post(logs));
    Router::new()
        .nest("/api/v2", api)
        .route("/api/v1/rpc", get(device_socket::upgrade))
        .route("/healthz", get(healthz))
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

/// `GET /healthz`: 200 while the server can do its work, 503 when its store cannot write.
async fn healthz(State(state): State<AppState>) -> Response {
    let writing = state.store.writes_possible();
    let body = json!({
        "status": if writing { "ok" } else { "failing" },
        "devices_online": state.registry.len(),
        "store": {
            "writer": if writing { "running" } else { "stopped" },
            "failed_jobs": crate::store::sqlite::job_panics(),
        },
        "notification_log": {"writer_restarts": state.hub.log().restarts()},
    });
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

/// The device `id`, if the caller may see it (its user, and a limited key's filter); 404
/// otherwise so ids of others do not leak.
pub async fn visible_device(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<DeviceRecord, ApiError> {
    match state.store.device(id).await? {
        Some(device) if caller.sees(&device, state.registry.is_online(id)) => Ok(device),
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
        devices.retain(|d| caller.sees(d, state.registry.is_online(&d.id)));
    }
    Ok(devices)
}

fn valid_device_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

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

async fn get_device(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DeviceObject>, ApiError> {
    let device = visible_device(&state, &caller, &id).await?;
    Ok(Json(state.device_object(&device, None)))
}

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
        require_owner(&caller.user, &device)?;
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

async fn get_shadow(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let device = visible_device(&state, &caller, &id).await?;
    Ok(Json(device.shadow.to_document_with_delta()))
}

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

async fn list_keys(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<KeyObject>>, ApiError> {
    let keys = state.store.list_keys(&caller.user.id).await?;
    Ok(Json(keys.iter().map(|k| key_object(k, None)).collect()))
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
#[derive(Serialize)]
struct NewUserResponse {
    #[serde(flatten)]
    user: UserObject,
    api_key: String,
}

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
    // Like the key `--register-user` prints: what the new user may do (PROTOCOL §11).
    let (_, token) = issue_key(&state, &user.id, ApiKey::default()).await?;
    Ok(Json(NewUserResponse {
        user: UserObject {
            id: user.id,
            name: user.name,
            admin: user.admin,
            created_at: clock::rfc3339(user.created_at),
        },
        api_key: token,
    }))
}

const LOGS_DEFAULT_LIMIT: u64 = 100;
const LOGS_MAX_LIMIT: u64 = 10_000;

/// `POST /logs`: stored notifications from an offset (the index of a notification in the
/// whole rotated log, PROTOCOL §7). The next offset to ask for is in `X-Herd-Next-Offset`.
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
        items.retain(|item| {
            item.get("id")
                .and_then(Value::as_str)
                .is_some_and(|id| visible.contains(id))
        });
    }
    let mut response = Json(Value::Array(items)).into_response();
    if let Ok(next) = HeaderValue::from_str(&page.next.to_string()) {
        response.headers_mut().insert("x-herd-next-offset", next);
    }
    Ok(response)
}
