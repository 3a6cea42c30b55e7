//! The one error type REST handlers return, rendered as PROTOCOL §6's envelope
//! `{"error": {"code": <http status>, "message": "..."}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use protocol::frame::RpcError;
use protocol::rest::ErrorBody;

use crate::store::StoreError;

/// A failed request: HTTP status, a message for humans, and for RPC proxy failures the
/// device's own error (PROTOCOL §6).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub device_error: Option<RpcError>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            device_error: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// The error a device returned through the RPC proxy: 403/404 when the device said so,
    /// otherwise 500, with the device's `{code, message}` alongside (PROTOCOL §6).
    pub fn from_device(error: RpcError) -> Self {
        let status = match error.code {
            403 => StatusCode::FORBIDDEN,
            404 => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self {
            status,
            message: error.message.clone(),
            device_error: Some(error),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), message = %self.message, "request failed");
        }
        let mut body = ErrorBody::new(self.status.as_u16(), self.message);
        body.error.device = self.device_error;
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Exists(what) => ApiError::conflict(format!("{what} already exists")),
            StoreError::NotFound(what) => ApiError::not_found(format!("{what} not found")),
            StoreError::Conflict(message) => ApiError::conflict(message),
            StoreError::Shadow(shadow) => {
                let status =
                    StatusCode::from_u16(shadow.code() as u16).unwrap_or(StatusCode::BAD_REQUEST);
                ApiError::new(status, shadow.to_string())
            }
            StoreError::Backend(message) => {
                tracing::error!(%message, "store failure");
                ApiError::internal("internal store error")
            }
            StoreError::Closed => ApiError::unavailable("server is shutting down"),
            StoreError::Remote { status, message } => ApiError::new(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                message,
            ),
            StoreError::Unavailable(message) => {
                tracing::error!(%message, "store unreachable");
                ApiError::unavailable("the database is unreachable; try again later")
            }
        }
    }
}
