//! The one error type of the client.

use serde::Deserialize;

/// What a device itself answered when an RPC through the proxy failed (PROTOCOL §6).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DeviceError {
    pub code: i64,
    #[serde(default)]
    pub message: String,
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with a non-2xx status and (usually) PROTOCOL §6's envelope
    /// `{"error": {"code", "message"}}`; `device` is set when an RPC failed on the device.
    #[error("{}", api_text(*.status, .message, .device.as_ref()))]
    Api {
        status: u16,
        message: String,
        device: Option<DeviceError>,
    },
    /// No connection could be made: wrong address, server down, TLS refused.
    #[error("cannot reach the server at {server}: {reason}")]
    Unreachable { server: String, reason: String },
    /// The server accepted the connection but did not answer in time.
    #[error("the server at {server} did not answer in time")]
    Timeout { server: String },
    /// The answer was not what PROTOCOL §6 promises.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    /// The server URL given by the user is not usable.
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// The extra CA certificate could not be used.
    #[error("invalid CA certificate: {0}")]
    Certificate(String),
    /// Anything else the HTTP layer reported.
    #[error("HTTP request failed: {0}")]
    Http(String),
    /// A local file could not be read.
    #[error("{0}")]
    Io(String),
}

fn api_text(status: u16, message: &str, device: Option<&DeviceError>) -> String {
    let mut text = format!("{status} {}", status_phrase(status));
    if !message.is_empty() {
        text.push_str(": ");
        text.push_str(message);
    }
    if let Some(device) = device {
        if device.message != message {
            text.push_str(&format!(
                " (device error {}: {})",
                device.code, device.message
            ));
        }
    }
    text
}

fn status_phrase(status: u16) -> &'static str {
    match status {
        400 => "bad request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not found",
        409 => "conflict",
        413 => "too large",
        416 => "range not satisfiable",
        500 => "server error",
        501 => "not implemented",
        502 => "bad gateway",
        503 => "unavailable",
        504 => "timeout",
        _ => "error",
    }
}

impl Error {
    /// The HTTP status, for answers from the server.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The API key (or user credentials) were refused.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self.status(), Some(401 | 403))
    }

    /// A shadow update carried a stale version (PROTOCOL §4.1).
    pub fn is_conflict(&self) -> bool {
        self.status() == Some(409)
    }

    /// The server could not be reached at all, so retrying later may help.
    pub fn is_connection(&self) -> bool {
        matches!(self, Error::Unreachable { .. } | Error::Timeout { .. })
    }

    /// Builds [`Error::Api`] from a status and a body that may or may not be the envelope.
    pub(crate) fn from_response(status: u16, body: &[u8]) -> Self {
        #[derive(Deserialize)]
        struct Envelope {
            error: Detail,
        }
        #[derive(Deserialize)]
        struct Detail {
            #[serde(default)]
            message: String,
            #[serde(default)]
            device: Option<DeviceError>,
        }
        match serde_json::from_slice::<Envelope>(body) {
            Ok(envelope) => Error::Api {
                status,
                message: envelope.error.message,
                device: envelope.error.device,
            },
            // A proxy in front of the server, or not a Herd server at all: keep a readable
            // prefix of whatever came back.
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let text: String = text.trim().chars().take(200).collect();
                Error::Api {
                    status,
                    message: text,
                    device: None,
                }
            }
        }
    }

    pub(crate) fn from_reqwest(server: &str, error: reqwest::Error) -> Self {
        if error.is_timeout() {
            Error::Timeout {
                server: server.to_string(),
            }
        } else if error.is_connect() {
            Error::Unreachable {
                server: server.to_string(),
                reason: root_cause(&error),
            }
        } else if error.is_decode() {
            Error::Protocol(root_cause(&error))
        } else {
            Error::Http(root_cause(&error))
        }
    }
}

/// reqwest's own text is "error sending request"; the useful part ("connection refused") is
/// at the bottom of the source chain.
pub(crate) fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    let text = current.to_string();
    if text.is_empty() {
        error.to_string()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_is_kept() {
        // PROTOCOL §6: every non-2xx body is {"error": {"code", "message"}}.
        let error = Error::from_response(
            404,
            br#"{"error":{"code":404,"message":"device x not found"}}"#,
        );
        assert_eq!(error.status(), Some(404));
        assert_eq!(error.to_string(), "404 not found: device x not found");
        let error = Error::from_response(
            500,
            br#"{"error":{"code":500,"message":"boom","device":{"code":-1,"message":"bad pin"}}}"#,
        );
        assert!(error.to_string().contains("device error -1: bad pin"));
        let Error::Api { device, .. } = error else {
            panic!("api error expected")
        };
        assert_eq!(device.map(|d| d.code), Some(-1));
    }

    #[test]
    fn foreign_bodies_stay_readable() {
        let error = Error::from_response(502, b"<html>Bad Gateway</html>");
        assert_eq!(
            error.to_string(),
            "502 bad gateway: <html>Bad Gateway</html>"
        );
        assert!(Error::from_response(401, b"").is_unauthorized());
        assert!(Error::from_response(409, b"{}").is_conflict());
    }
}
