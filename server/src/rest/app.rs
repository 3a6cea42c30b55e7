//! The customer app: a small web app for the smart light's customers at `/app/` (static
//! files built into the binary, plain JavaScript, no build step), and the three endpoints
//! only it needs. Everything else it does goes through the ordinary API with an
//! `operate` key, under the same access rules (PROTOCOL §11): a paired device is shared
//! with the customer, who may switch it and call its RPCs but never update its firmware.
//!
//! - `POST /api/v2/app/signup {"name", "pass"}`: a new account and its first key, when the
//!   server allows sign-up (`app_signup`); otherwise 403.
//! - `POST /api/v2/devices/:id/pair {"password", "name"?}`: pairs the device whose id and
//!   password (its token, printed on its label) match, and names it.
//! - `POST /api/v2/devices/:id/unpair`: the caller stops seeing the device.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use protocol::rest::{DeviceObject, ErrorBody, NewUser, PairDevice, Scope};

use crate::auth::{self, Caller};
use crate::error::ApiError;
use crate::rest::{Body, NewUserResponse, Path};
use crate::store::ApiKey;
use crate::{clock, ops, AppState};

/// How long the key made at sign-up lasts; the app signs in again after it.
const SIGNUP_KEY_DAYS: f64 = 30.0;

/// The app's files.
const FILES: &[(&str, &str, &str)] = &[
    (
        "",
        "text/html; charset=utf-8",
        include_str!("../../app/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../app/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../app/app.css"),
    ),
    (
        "manifest.json",
        "application/manifest+json",
        include_str!("../../app/manifest.json"),
    ),
];

/// What the browser may load: only this server's own files and sockets.
const CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; \
                   frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// `/app`, `/app/` and its files.
pub fn static_routes() -> Router<AppState> {
    Router::new()
        .route("/app", get(|| async { Redirect::permanent("/app/") }))
        .route("/app/", get(|| async { file("") }))
        .route(
            "/app/{file}",
            get(|Path(name): Path<String>| async move { file(&name) }),
        )
}

fn file(name: &str) -> Response {
    match FILES.iter().find(|(file, _, _)| *file == name) {
        Some((_, content_type, body)) => {
            let mut response = (*body).into_response();
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            );
            headers.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            headers.insert(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            );
            response
        }
        None => ApiError::new(StatusCode::NOT_FOUND, "no such file in the app").into_response(),
    }
}

/// `POST /app/signup`: a customer makes an account (when the server allows it).
#[utoipa::path(
    post, path = "/app/signup", tag = "app", operation_id = "app_signup",
    request_body(content = NewUser, description = "Name and password"),
    responses(
        (status = 200, description = "The user and its first key (scope `operate`, 30 days), shown once", body = NewUserResponse),
        (status = 400, description = "The body or a parameter is not what this operation takes", body = ErrorBody),
        (status = 403, description = "Sign-up is off on this server", body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody),
        (status = 413, description = "The body is larger than the server accepts", body = ErrorBody),
    ),
    security(()),
)]
pub async fn signup(
    State(state): State<AppState>,
    Body(body): Body<NewUser>,
) -> Result<Json<NewUserResponse>, ApiError> {
    if !state.settings.app_signup {
        return Err(ApiError::forbidden(
            "sign-up is off on this server; ask its administrator for an account",
        ));
    }
    let body = body.ok_or_else(|| ApiError::bad_request("body must be {\"name\", \"pass\"}"))?;
    let key = ApiKey {
        name: "herd light app".into(),
        scope: Some(Scope::Operate),
        expires_at: Some(clock::now() + SIGNUP_KEY_DAYS * 86_400.0),
        ..ApiKey::default()
    };
    Ok(Json(super::new_user(&state, body, key).await?))
}

/// `POST /devices/:id/pair`: the device whose id and password match is shared with the
/// caller, and named when a name is given.
#[utoipa::path(
    post, path = "/devices/{id}/pair", tag = "app", operation_id = "pair_device",
    params(("id" = String, Path, description = "Device id", example = "lamp-1")),
    request_body(content = PairDevice, description = "The password on the device's label, and a name"),
    responses(
        (status = 200, description = "The paired device", body = DeviceObject),
        (status = 400, description = "The body or a parameter is not what this operation takes", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired credentials", body = ErrorBody),
        (status = 403, description = "Pairing needs a key with scope `operate`", body = ErrorBody),
        (status = 404, description = "No device with this id and password", body = ErrorBody),
        (status = 413, description = "The body is larger than the server accepts", body = ErrorBody),
    ),
)]
pub async fn pair(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(body): Body<PairDevice>,
) -> Result<Json<DeviceObject>, ApiError> {
    caller.require(Scope::Operate)?;
    let body =
        body.ok_or_else(|| ApiError::bad_request("body must be {\"password\", \"name\"?}"))?;
    if let Some(name) = &body.name {
        if name.is_empty() || name.len() > 256 {
            return Err(ApiError::bad_request("name must be 1-256 characters"));
        }
    }
    // One answer for a wrong id and a wrong password, so neither can be probed alone.
    let refused = || ApiError::not_found("no device with this id and password");
    let device = state
        .store
        .device_by_token_hash(&auth::hash_secret(body.password.trim()))
        .await?
        .filter(|device| device.id == id)
        .ok_or_else(refused)?;
    let device = ops::pair::run(&state, &device.id, &caller.user.id, body.name).await?;
    Ok(Json(state.device_object(&device, None)))
}

/// `POST /devices/:id/unpair`: the caller stops seeing a device shared with it.
#[utoipa::path(
    post, path = "/devices/{id}/unpair", tag = "app", operation_id = "unpair_device",
    params(("id" = String, Path, description = "Device id", example = "lamp-1")),
    responses(
        (status = 200, description = "Unpaired", content_type = "application/json", body = bool),
        (status = 400, description = "The caller owns the device (delete it instead)", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired credentials", body = ErrorBody),
        (status = 403, description = "Unpairing needs a key with scope `operate`", body = ErrorBody),
        (status = 404, description = "No such device shared with the caller", body = ErrorBody),
    ),
)]
pub async fn unpair(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<bool>, ApiError> {
    caller.require(Scope::Operate)?;
    let device = super::visible_device(&state, &caller, &id).await?;
    if device.user_id == caller.user.id {
        return Err(ApiError::bad_request(
            "you own this device; delete it or share it instead of unpairing",
        ));
    }
    match ops::unpair::run(&state, &id, &caller.user.id).await? {
        Some(_) => Ok(Json(true)),
        None => Err(ApiError::not_found(format!(
            "device {id} is not shared with you"
        ))),
    }
}
