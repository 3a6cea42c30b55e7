//! `/api/v2/firmware` (PROTOCOL §10.1): upload, list, delete, and the image download that
//! devices use for pull updates (§10.3), with `Range` so a broken download resumes.

use crate::rest::{Path, Query};
use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use futures_util::StreamExt;
use protocol::firmware::FirmwareObject;
use protocol::rest::ErrorBody;
use protocol::Value;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::rest::openapi;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::auth::{self, Caller, Credential};
use crate::error::ApiError;
use crate::firmware::{describe, is_sha256_hex, UploadError};
use crate::store::{FirmwareRecord, User};
use crate::{access, clock, AppState};
use protocol::rest::Scope;

/// Metadata of an upload, from the query or from multipart fields (PROTOCOL §10.1).
#[derive(Debug, Default, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(default)]
pub struct UploadMeta {
    pub app: Option<String>,
    pub version: Option<String>,
    pub platform: Option<String>,
    pub signature: Option<String>,
}

/// Longest metadata field accepted in a multipart upload.
const FIELD_MAX: usize = 4096;

impl From<UploadError> for ApiError {
    fn from(e: UploadError) -> Self {
        match e {
            UploadError::TooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
            }
            UploadError::Io(_) => ApiError::internal(e.to_string()),
            UploadError::Empty | UploadError::Body(_) | UploadError::Invalid(_) => {
                ApiError::bad_request(e.to_string())
            }
        }
    }
}

/// The API form of a stored image.
pub fn firmware_object(record: &FirmwareRecord) -> FirmwareObject {
    FirmwareObject {
        id: record.id.clone(),
        app: record.app.clone(),
        version: record.version.clone(),
        platform: record.platform.clone(),
        size: record.size,
        sha256: record.id.clone(),
        signed: record.signature.is_some(),
        signature: record.signature.clone(),
        format: record.format.clone(),
        build_id: record.build_id.clone(),
        created_at: clock::rfc3339(record.created_at),
        created_by: record.created_by.clone(),
    }
}

fn check_text(name: &str, value: &Option<String>) -> Result<(), ApiError> {
    match value {
        Some(text) if text.len() > 128 || text.chars().any(char::is_control) => {
            Err(ApiError::bad_request(format!(
                "{name} must be at most 128 characters without control characters"
            )))
        }
        _ => Ok(()),
    }
}

/// Checks a signature's form: base64 of the 64 bytes of an Ed25519 signature (PROTOCOL
/// §10.4). Whether it verifies is for the device that holds the public key.
fn check_signature(signature: &Option<String>) -> Result<(), ApiError> {
    let Some(signature) = signature else {
        return Ok(());
    };
    match base64::engine::general_purpose::STANDARD.decode(signature.trim()) {
        Ok(bytes) if bytes.len() == 64 => Ok(()),
        Ok(bytes) => Err(ApiError::bad_request(format!(
            "signature must be the 64 bytes of an Ed25519 signature, not {}",
            bytes.len()
        ))),
        Err(e) => Err(ApiError::bad_request(format!(
            "signature is not base64: {e}"
        ))),
    }
}

/// Receives an image from a raw body or a multipart `file` field, streaming it to disk, and
/// stores it for `user` (PROTOCOL §10.1). The same bytes again give the stored image.
pub async fn receive_upload(
    state: &AppState,
    user: &User,
    mut meta: UploadMeta,
    req: Request,
) -> Result<FirmwareRecord, ApiError> {
    let limit = state.settings.firmware_max_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // A multipart body carries a little more than the file; anything far over is refused
    // before a byte is stored.
    if declared.is_some_and(|len| len > limit.saturating_add(64 * 1024)) {
        return Err(UploadError::TooLarge { limit }.into());
    }
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        });
    let mut staging = state.firmware_files.stage(limit)?;
    if multipart {
        let mut form = Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::bad_request(format!("invalid multipart body: {e}")))?;
        let mut got_file = false;
        while let Some(mut field) = form
            .next_field()
            .await
            .map_err(|e| ApiError::bad_request(format!("invalid multipart body: {e}")))?
        {
            let name = field.name().unwrap_or_default().to_string();
            if name == "file" || (field.file_name().is_some() && !got_file) {
                if got_file {
                    return Err(ApiError::bad_request("only one file per upload"));
                }
                got_file = true;
                while let Some(chunk) = field
                    .chunk()
                    .await
                    .map_err(|e| UploadError::Body(e.to_string()))?
                {
                    staging.push(&chunk).await?;
                }
                continue;
            }
            let mut text = Vec::new();
            while let Some(chunk) = field
                .chunk()
                .await
                .map_err(|e| UploadError::Body(e.to_string()))?
            {
                text.extend_from_slice(&chunk);
                if text.len() > FIELD_MAX {
                    return Err(ApiError::bad_request(format!("field {name} is too long")));
                }
            }
            let text = String::from_utf8(text)
                .map_err(|_| ApiError::bad_request(format!("field {name} is not UTF-8")))?;
            let slot = match name.as_str() {
                "app" => &mut meta.app,
                "version" => &mut meta.version,
                "platform" => &mut meta.platform,
                "signature" => &mut meta.signature,
                _ => continue,
            };
            *slot = Some(text.trim().to_string()).filter(|t| !t.is_empty());
        }
        if !got_file {
            return Err(ApiError::bad_request(
                "the multipart body has no file field",
            ));
        }
    } else {
        let mut body = req.into_body().into_data_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| UploadError::Body(e.to_string()))?;
            staging.push(&chunk).await?;
        }
    }
    for (name, value) in [
        ("app", &meta.app),
        ("version", &meta.version),
        ("platform", &meta.platform),
    ] {
        check_text(name, value)?;
    }
    check_signature(&meta.signature)?;
    let staged = staging.finish().await?;
    let path = staged.path().to_path_buf();
    let head = staged.head.clone();
    let found = tokio::task::spawn_blocking(move || describe(&path, &head))
        .await
        .map_err(|e| ApiError::internal(format!("cannot read the image: {e}")))??;
    let record = FirmwareRecord {
        id: staged.sha256.clone(),
        app: meta.app.unwrap_or(found.app),
        version: meta.version.unwrap_or(found.version),
        platform: meta.platform.unwrap_or(found.platform),
        size: staged.size,
        signature: meta.signature.map(|s| s.trim().to_string()),
        format: found.format,
        build_id: found.build_id,
        created_at: clock::now(),
        created_by: user.id.clone(),
    };
    // The bytes are in place before the row that names them.
    let files = state.firmware_files.clone();
    tokio::task::spawn_blocking(move || files.keep(staged))
        .await
        .map_err(|e| ApiError::internal(format!("cannot store the image: {e}")))?
        .map_err(|e| ApiError::internal(format!("cannot store the image: {e}")))?;
    if let Some(cluster) = &state.cluster {
        // Every node sends images to the devices it holds.
        let path = state.firmware_files.path(&record.id);
        cluster
            .share_image(&record.id, &path)
            .await
            .map_err(|e| ApiError::unavailable(format!("cannot share the image: {e:#}")))?;
    }
    let (stored, created) = state.store.put_firmware(record, &user.id).await?;
    if created {
        tracing::info!(firmware = %stored.id, app = %stored.app, version = %stored.version, size = stored.size, "firmware stored");
    }
    Ok(stored)
}

/// `POST /firmware`.
#[utoipa::path(
    post, path = "/firmware", tag = "firmware", operation_id = "upload_firmware",
    params(UploadMeta),
    request_body(content(
        (openapi::FirmwareImage = "application/octet-stream"),
        (openapi::FirmwareUpload = "multipart/form-data"),
    ), description = "The image: the raw body, or the multipart field `file` (a raw image, an ELF, or a Mongoose OS .zip) with metadata fields"),
    responses(
        (status = 200, description = "The stored image (the existing one when the same bytes were uploaded before)", body = FirmwareObject),
        (status = 400, description = "The body or a parameter is not what this operation takes", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired credentials", body = ErrorBody),
        (status = 403, description = "Uploading needs a key with scope `deploy`", body = ErrorBody),
        (status = 413, description = "The image is larger than the server accepts", body = ErrorBody),
    ),
)]
pub async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    Query(meta): Query<UploadMeta>,
    req: Request,
) -> Result<Json<FirmwareObject>, ApiError> {
    caller.require(Scope::Deploy)?;
    let record = receive_upload(&state, &caller.user, meta, req).await?;
    Ok(Json(firmware_object(&record)))
}

/// `GET /firmware`.
#[utoipa::path(
    get, path = "/firmware", tag = "firmware", operation_id = "list_firmware",
    responses(
        (status = 200, description = "The images the caller may see", body = Vec<FirmwareObject>),
        (status = 401, description = "Missing, invalid or expired credentials", body = ErrorBody),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<FirmwareObject>>, ApiError> {
    let scope = (!caller.user.admin).then_some(caller.user.id.as_str());
    let list = state.store.list_firmware(scope).await?;
    Ok(Json(list.iter().map(firmware_object).collect()))
}

/// The image `id` if `user` may see it; 404 otherwise.
pub async fn visible_firmware(
    state: &AppState,
    user: &User,
    id: &str,
) -> Result<(FirmwareRecord, Vec<String>), ApiError> {
    match state.store.firmware(id).await? {
        Some((record, owners)) if access::can_see_firmware(user, &owners) => Ok((record, owners)),
        _ => Err(ApiError::not_found(format!("firmware {id} not found"))),
    }
}

/// `GET /firmware/:id`.
#[utoipa::path(
    get, path = "/firmware/{id}", tag = "firmware", operation_id = "get_firmware",
    params(("id" = String, Path, description = "Firmware id: the image's SHA-256, lowercase hex")),
    responses(
        (status = 200, description = "The image's metadata", body = FirmwareObject),
        (status = 401, description = "Missing, invalid or expired credentials", body = ErrorBody),
        (status = 404, description = "No such image visible to the caller", body = ErrorBody),
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<FirmwareObject>, ApiError> {
    let (record, _) = visible_firmware(&state, &caller.user, &id).await?;
    Ok(Json(firmware_object(&record)))
}

/// `DELETE /firmware/:id`: the image leaves the caller's list (everyone's, for the admin);
/// its bytes go when nobody has it any more. 409 while an unfinished rollout uses it.
#[utoipa::path(
    delete, path = "/firmware/{id}", tag = "firmware", operation_id = "delete_firmware",
    params(("id" = String, Path, description = "Firmware id: the image's SHA-256, lowercase hex")),
    responses(
        (status = 200, description = "Deleted: `true`", content_type = "application/json", body = bool),
        (status = 401, description = "Missing, invalid or expired credentials", body = ErrorBody),
        (status = 403, description = "Deleting needs a key with scope `deploy`", body = ErrorBody),
        (status = 404, description = "No such image visible to the caller", body = ErrorBody),
        (status = 409, description = "An unfinished rollout uses the image", body = ErrorBody),
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    visible_firmware(&state, &caller.user, &id).await?;
    caller.require(Scope::Deploy)?;
    let scope = (!caller.user.admin).then_some(caller.user.id.as_str());
    if state.store.delete_firmware(&id, scope).await? {
        if let Err(e) = state.firmware_files.remove(&id) {
            tracing::warn!(firmware = %id, error = %e, "cannot remove the image's bytes");
        }
        if let Some(cluster) = &state.cluster {
            cluster.forget_image(&id).await;
        }
    }
    Ok(Json(Value::Bool(true)))
}

/// Who asks for an image: a user with an API key or password, or a device with its token.
async fn image_caller_allowed(
    state: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
    record: &FirmwareRecord,
    owners: &[String],
) -> Result<(), ApiError> {
    let credential = auth::credential(headers, query).ok_or_else(|| {
        ApiError::unauthorized("missing credentials: a device token or an API key")
    })?;
    if let Credential::Token(token) = &credential {
        if let Some(device) = state
            .store
            .device_by_token_hash(&auth::hash_secret(token))
            .await?
        {
            let under_way = state.ota_jobs.updating_with(&device.id, &record.id);
            return if access::device_may_fetch(&device, owners, under_way) {
                Ok(())
            } else {
                Err(ApiError::not_found(format!(
                    "firmware {} not found",
                    record.id
                )))
            };
        }
    }
    match Caller::resolve(state, credential).await? {
        Some(caller) if access::can_see_firmware(&caller.user, owners) => Ok(()),
        Some(_) => Err(ApiError::not_found(format!(
            "firmware {} not found",
            record.id
        ))),
        None => Err(ApiError::unauthorized("invalid credentials")),
    }
}

/// A parsed `Range: bytes=...` header: one range, as devices resume with.
fn parse_range(value: &str, size: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        // Several ranges: serve the whole image, which the standard allows.
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let (start, end) = (start.trim(), end.trim());
    let range = if start.is_empty() {
        // The last N bytes.
        let n: u64 = end.parse().ok()?;
        if n == 0 {
            return Some(Err(()));
        }
        (size.saturating_sub(n), size.saturating_sub(1))
    } else {
        let start: u64 = start.parse().ok()?;
        let end = if end.is_empty() {
            size.saturating_sub(1)
        } else {
            end.parse::<u64>().ok()?.min(size.saturating_sub(1))
        };
        (start, end)
    };
    if range.0 >= size || range.0 > range.1 {
        return Some(Err(()));
    }
    Some(Ok(range))
}

/// `GET /firmware/:id/image`: the bytes, with `Range` (PROTOCOL §10.1, §10.3).
#[utoipa::path(
    get, path = "/firmware/{id}/image", tag = "firmware", operation_id = "firmware_image",
    params(("id" = String, Path, description = "Firmware id: the image's SHA-256, lowercase hex"),
        ("Range" = Option<String>, Header, description = "One byte range, `bytes=START-END`, `bytes=START-` or `bytes=-LAST`"),
    ),
    responses(
        (status = 200, description = "The whole image", content_type = "application/octet-stream", body = openapi::FirmwareImage),
        (status = 206, description = "The range asked for", content_type = "application/octet-stream", body = openapi::FirmwareImage,
            headers(("Content-Range" = String, description = "`bytes START-END/SIZE`"))),
        (status = 401, description = "Missing, invalid or expired credentials", body = ErrorBody),
        (status = 404, description = "No such image visible to the caller (or to the device)", body = ErrorBody),
        (status = 416, description = "The range is outside the image",
            body = ErrorBody, headers(("Content-Range" = String, description = "`bytes */SIZE`"))),
    ),
    description = "The image bytes, for devices pulling an update (PROTOCOL §10.3); a device authenticates with its token as Bearer or `?access_token=`",
)]
pub async fn image(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    if !is_sha256_hex(&id) {
        return Err(ApiError::not_found(format!("firmware {id} not found")));
    }
    let record = state.store.firmware(&id).await?;
    let Some((record, owners)) = record else {
        return Err(ApiError::not_found(format!("firmware {id} not found")));
    };
    image_caller_allowed(&state, req.headers(), req.uri().query(), &record, &owners).await?;
    let path = state.firmware_files.path(&id);
    let mut file = tokio::fs::File::open(&path).await.map_err(|e| {
        tracing::error!(firmware = %id, error = %e, "stored image bytes are missing");
        ApiError::not_found(format!("firmware {id} has no stored bytes"))
    })?;
    let size = file
        .metadata()
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .len();
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_range(v, size));
    let (status, start, end) = match range {
        None => (StatusCode::OK, 0, size.saturating_sub(1)),
        Some(Ok((start, end))) => (StatusCode::PARTIAL_CONTENT, start, end),
        Some(Err(())) => {
            let mut response = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("the image has {size} bytes"),
            )
            .into_response();
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            return Ok(response);
        }
    };
    let len = if size == 0 { 0 } else { end - start + 1 };
    file.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), 64 * 1024);
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{id}\"")) {
        headers.insert(header::ETAG, etag);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(value) = HeaderValue::from_str(&format!("bytes {start}-{end}/{size}")) {
            headers.insert(header::CONTENT_RANGE, value);
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-", 10), Some(Ok((0, 9))));
        assert_eq!(parse_range("bytes=4-", 10), Some(Ok((4, 9))));
        assert_eq!(parse_range("bytes=2-5", 10), Some(Ok((2, 5))));
        assert_eq!(parse_range("bytes=2-50", 10), Some(Ok((2, 9))));
        assert_eq!(parse_range("bytes=-3", 10), Some(Ok((7, 9))));
        assert_eq!(parse_range("bytes=10-", 10), Some(Err(())));
        assert_eq!(parse_range("bytes=5-2", 10), Some(Err(())));
        assert_eq!(parse_range("bytes=0-1,4-5", 10), None);
        assert_eq!(parse_range("items=0-1", 10), None);
        assert_eq!(parse_range("bytes=x-", 10), None);
    }
}
