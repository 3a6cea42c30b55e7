//! WebSocket upgrades done by hand on top of hyper, so that each socket gets exactly the
//! buffer sizes we choose and the subprotocol rule of PROTOCOL §1 (echo the first offered).

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Response, StatusCode};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::error::ApiError;

pub mod device;

/// A server-side WebSocket over an upgraded HTTP connection.
pub type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// The connection under a WebSocket, once upgraded.
pub type Raw = TokioIo<Upgraded>;

/// A validated upgrade request, ready to answer with 101.
pub struct Upgrade {
    on_upgrade: OnUpgrade,
    accept: String,
    protocol: Option<HeaderValue>,
}

fn header_has_token(req: &Request, name: header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

impl Upgrade {
    /// Checks that `req` is a WebSocket upgrade and takes its upgrade handle.
    pub fn from_request(req: &mut Request) -> Result<Self, ApiError> {
        let is_upgrade = header_has_token(req, header::CONNECTION, "upgrade")
            && header_has_token(req, header::UPGRADE, "websocket");
        if !is_upgrade {
            return Err(ApiError::new(
                StatusCode::UPGRADE_REQUIRED,
                "this endpoint is a WebSocket: send an upgrade request",
            ));
        }
        if req.headers().get(header::SEC_WEBSOCKET_VERSION) != Some(&HeaderValue::from_static("13"))
        {
            return Err(ApiError::bad_request(
                "unsupported Sec-WebSocket-Version (need 13)",
            ));
        }
        let key = req
            .headers()
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or_else(|| ApiError::bad_request("missing Sec-WebSocket-Key"))?;
        let accept = derive_accept_key(key.as_bytes());
        // PROTOCOL §1: echo the first offered subprotocol, whatever it is.
        let protocol = req
            .headers()
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .find(|p| !p.is_empty())
            .and_then(|p| HeaderValue::from_str(p).ok());
        let on_upgrade = req
            .extensions_mut()
            .remove::<OnUpgrade>()
            .ok_or_else(|| ApiError::bad_request("connection cannot be upgraded"))?;
        Ok(Self {
            on_upgrade,
            accept,
            protocol,
        })
    }

    /// Answers 101 and runs `serve` on a tungstenite socket once the upgrade completes.
    pub fn respond<F, Fut>(
        self,
        config: WebSocketConfig,
        tracker: &tokio_util::task::TaskTracker,
        serve: F,
    ) -> Response<Body>
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.respond_raw(tracker, move |raw| async move {
            let socket = WebSocketStream::from_raw_socket(raw, Role::Server, Some(config)).await;
            serve(socket).await;
        })
    }

    /// Answers 101 and runs `serve` on the bare connection once the upgrade completes.
    pub fn respond_raw<F, Fut>(
        self,
        tracker: &tokio_util::task::TaskTracker,
        serve: F,
    ) -> Response<Body>
    where
        F: FnOnce(Raw) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let on_upgrade = self.on_upgrade;
        tracker.spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => serve(TokioIo::new(upgraded)).await,
                Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
            }
        });
        let mut response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_ACCEPT, self.accept);
        if let Some(protocol) = self.protocol {
            response = response.header(header::SEC_WEBSOCKET_PROTOCOL, protocol);
        }
        response
            .body(Body::empty())
            .unwrap_or_else(|_| Response::new(Body::empty()))
    }
}

/// Socket settings for notify consumers: few sockets, heavy writes, so batch writes.
pub fn consumer_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(64 * 1024)
        .max_write_buffer_size(16 * 1024 * 1024)
        .max_message_size(Some(64 * 1024))
}
