//! REST calls (PROTOCOL §6).

use std::sync::Arc;
use std::time::Duration;

use protocol::rest::{
    DeviceChange, DeviceObject, KeyObject, LogsQuery, NewDevice, NewKey, NewUser, UserObject,
};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::notify::{self, NotifyOptions, NotifyStream};
use crate::{url, Error};

/// How a [`Client`] reaches its server.
#[derive(Clone)]
pub struct ClientOptions {
    /// `http://host:port` (or `https://`); `/api/v2` is appended.
    pub server: String,
    /// Sent as `Authorization: Bearer`, never in URLs, so it stays out of logs.
    pub api_key: Option<String>,
    /// Longest wait for one REST answer. RPC calls wait for the device, which the server
    /// bounds by its own timeout (20 s by default), so this must be longer.
    pub request_timeout: Duration,
    /// Longest wait for a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Extra trusted CA certificates (PEM), for a server whose certificate the system
    /// does not trust, such as a self-signed one.
    pub ca_cert: Option<Vec<u8>>,
    /// Trust only the server certificate with this SHA-256 fingerprint (pinning); the
    /// system's authorities and `ca_cert` are then not consulted.
    pub tls_fingerprint: Option<crate::tls::Fingerprint>,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("server", &self.server)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("request_timeout", &self.request_timeout)
            .field("tls_fingerprint", &self.tls_fingerprint)
            .finish_non_exhaustive()
    }
}

impl ClientOptions {
    /// Defaults for `server` with `api_key`.
    pub fn new(server: impl Into<String>, api_key: Option<String>) -> Self {
        ClientOptions {
            server: server.into(),
            api_key,
            request_timeout: Duration::from_secs(40),
            connect_timeout: Duration::from_secs(10),
            ca_cert: None,
            tls_fingerprint: None,
        }
    }
}

/// A page of `notification.log` (PROTOCOL §7) from `POST /logs`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogPage {
    /// Stored notifications, `{"ts", "id", "name", "data"}` each.
    pub items: Vec<Value>,
    /// The offset to ask for next, from the `X-Herd-Next-Offset` header.
    pub next: Option<u64>,
}

/// `POST /user/add` answer: the user and its first API key, shown once.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct NewUserResponse {
    #[serde(flatten)]
    pub user: UserObject,
    pub api_key: String,
}

struct Inner {
    http: reqwest::Client,
    server: String,
    api: String,
    ws_api: String,
    api_key: Option<String>,
    connect_timeout: Duration,
    /// TLS settings for `wss://` when extra CA certificates were given.
    ws_tls: Option<Arc<rustls::ClientConfig>>,
}

/// The REST API and notify stream of one server, with one API key. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.inner.server)
            .finish_non_exhaustive()
    }
}

/// rustls needs one process-wide crypto provider; ring is what the server already builds.
/// Installing fails harmlessly when someone else installed one first.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Client {
    /// A client with default timeouts.
    pub fn new(server: &str, api_key: Option<&str>) -> Result<Self, Error> {
        Self::with_options(ClientOptions::new(server, api_key.map(str::to_string)))
    }

    /// A client with explicit options.
    pub fn with_options(options: ClientOptions) -> Result<Self, Error> {
        install_crypto_provider();
        let (api, ws_api) = url::bases(&options.server)?;
        let mut builder = reqwest::Client::builder()
            .timeout(options.request_timeout)
            .connect_timeout(options.connect_timeout)
            .user_agent(concat!("herd/", env!("CARGO_PKG_VERSION")));
        let mut ws_tls = None;
        if let Some(pin) = options.tls_fingerprint {
            let config = crate::tls::client_config(None, Some(pin))?;
            builder = builder.tls_backend_preconfigured(config.as_ref().clone());
            ws_tls = Some(config);
        } else if let Some(pem) = &options.ca_cert {
            let certificates = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| Error::Certificate(crate::error::root_cause(&e)))?;
            if certificates.is_empty() {
                return Err(Error::Certificate("no certificate in the PEM data".into()));
            }
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
            ws_tls = Some(crate::tls::client_config(Some(pem), None)?);
        }
        let http = builder
            .build()
            .map_err(|e| Error::Http(crate::error::root_cause(&e)))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                server: options.server.trim().to_string(),
                api,
                ws_api,
                api_key: options.api_key.filter(|k| !k.is_empty()),
                connect_timeout: options.connect_timeout,
                ws_tls,
            }),
        })
    }

    /// The server as the user gave it.
    pub fn server(&self) -> &str {
        &self.inner.server
    }

    /// The REST base, `.../api/v2`.
    pub fn api_base(&self) -> &str {
        &self.inner.api
    }

    /// The device socket of this server (PROTOCOL §1), `ws(s)://.../api/v2/rpc`, for
    /// programs that connect devices on someone's behalf, such as gateways.
    pub fn device_socket_url(&self) -> String {
        format!("{}/rpc", self.inner.ws_api)
    }

    /// The TLS configuration `wss://` connections should use: `Some` when the client was
    /// given a pinned fingerprint or extra CA certificates, `None` for the system's roots.
    pub fn ws_tls(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.inner.ws_tls.clone()
    }

    /// A request to `path` under the API base, with the key.
    pub(crate) fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let request = self
            .inner
            .http
            .request(method, format!("{}{}", self.inner.api, path));
        match &self.inner.api_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    /// Sends `request`; a non-2xx answer becomes the server's error.
    pub(crate) async fn execute(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Error> {
        let response = request
            .send()
            .await
            .map_err(|e| Error::from_reqwest(&self.inner.server, e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Error::from_reqwest(&self.inner.server, e))?;
        Err(Error::from_response(status.as_u16(), &bytes))
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<reqwest::Response, Error> {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        self.execute(request).await
    }

    /// Decodes a JSON answer.
    pub(crate) async fn decode<T: DeserializeOwned>(
        &self,
        response: reqwest::Response,
    ) -> Result<T, Error> {
        decode(response, &self.inner.server).await
    }

    pub(crate) async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, Error> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| Error::Protocol(format!("cannot encode the request: {e}")))?;
        let response = self.send(method, path, body).await?;
        decode(response, &self.inner.server).await
    }

    /// `GET /devices`: every device the key may see.
    pub async fn devices(&self) -> Result<Vec<DeviceObject>, Error> {
        self.json(Method::GET, "/devices", None::<&Value>).await
    }

    /// `GET /devices/:id`.
    pub async fn device(&self, id: &str) -> Result<DeviceObject, Error> {
        self.json(
            Method::GET,
            &format!("/devices/{}", url::segment(id)),
            None::<&Value>,
        )
        .await
    }

    /// `POST /devices`: the answer carries the device token, shown once.
    pub async fn create_device(&self, device: &NewDevice) -> Result<DeviceObject, Error> {
        self.json(Method::POST, "/devices", Some(device)).await
    }

    /// `POST /devices/:id`: rename, share, or update the shadow.
    pub async fn change_device(
        &self,
        id: &str,
        change: &DeviceChange,
    ) -> Result<DeviceObject, Error> {
        self.json(
            Method::POST,
            &format!("/devices/{}", url::segment(id)),
            Some(change),
        )
        .await
    }

    /// `DELETE /devices/:id`.
    pub async fn delete_device(&self, id: &str) -> Result<(), Error> {
        let _: Value = self
            .json(
                Method::DELETE,
                &format!("/devices/{}", url::segment(id)),
                None::<&Value>,
            )
            .await?;
        Ok(())
    }

    /// `GET /devices/:id/shadow`: the document with `state.delta` (PROTOCOL §4).
    pub async fn shadow(&self, id: &str) -> Result<Value, Error> {
        self.json(
            Method::GET,
            &format!("/devices/{}/shadow", url::segment(id)),
            None::<&Value>,
        )
        .await
    }

    /// `POST /devices/:id/shadow` with a PROTOCOL §4.1 update; returns the new document.
    /// A stale `version` fails with 409 ([`Error::is_conflict`]).
    pub async fn update_shadow(&self, id: &str, update: &Value) -> Result<Value, Error> {
        self.json(
            Method::POST,
            &format!("/devices/{}/shadow", url::segment(id)),
            Some(update),
        )
        .await
    }

    /// `POST /devices/:id/rpc/:method`: calls a device and returns its `result` verbatim.
    pub async fn call(
        &self,
        id: &str,
        method: &str,
        params: Option<&Value>,
    ) -> Result<Value, Error> {
        let path = format!("/devices/{}/rpc/{}", url::segment(id), url::segment(method));
        match params {
            Some(params) => self.json(Method::POST, &path, Some(params)).await,
            None => self.json(Method::POST, &path, None::<&Value>).await,
        }
    }

    /// `GET /keys`.
    pub async fn keys(&self) -> Result<Vec<KeyObject>, Error> {
        self.json(Method::GET, "/keys", None::<&Value>).await
    }

    /// `GET /keys/current` (PROTOCOL §11): the key this client calls with, its scope,
    /// device filter and expiry.
    pub async fn current_key(&self) -> Result<KeyObject, Error> {
        self.json(Method::GET, "/keys/current", None::<&Value>)
            .await
    }

    /// `POST /keys` (PROTOCOL §11): a key with the scope, device filter and expiry of
    /// `key` (all optional); the answer carries the secret, shown once.
    pub async fn create_key(&self, key: &NewKey) -> Result<KeyObject, Error> {
        self.json(Method::POST, "/keys", Some(key)).await
    }

    /// `DELETE /keys/:id`.
    pub async fn delete_key(&self, id: &str) -> Result<(), Error> {
        let _: Value = self
            .json(
                Method::DELETE,
                &format!("/keys/{}", url::segment(id)),
                None::<&Value>,
            )
            .await?;
        Ok(())
    }

    /// `POST /user/add` (administrator only).
    pub async fn add_user(&self, name: &str, pass: &str) -> Result<NewUserResponse, Error> {
        let body = NewUser {
            name: name.to_string(),
            pass: pass.to_string(),
        };
        self.json(Method::POST, "/user/add", Some(&body)).await
    }

    /// `POST /logs`: one page of `notification.log` (PROTOCOL §7).
    pub async fn logs(&self, query: LogsQuery) -> Result<LogPage, Error> {
        let body = serde_json::to_vec(&query)
            .map_err(|e| Error::Protocol(format!("cannot encode the request: {e}")))?;
        let response = self.send(Method::POST, "/logs", Some(body)).await?;
        let next = response
            .headers()
            .get("x-herd-next-offset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let items = decode(response, &self.inner.server).await?;
        Ok(LogPage { items, next })
    }

    /// Opens the notify stream (PROTOCOL §5) with default options. It connects in a
    /// background task on the current tokio runtime and reconnects until dropped.
    pub fn notify(&self) -> NotifyStream {
        self.notify_with(NotifyOptions::default())
    }

    /// Opens the notify stream with explicit options.
    pub fn notify_with(&self, options: NotifyOptions) -> NotifyStream {
        notify::spawn(
            notify::Target {
                url: format!("{}/notify", self.inner.ws_api),
                server: self.inner.server.clone(),
                api_key: self.inner.api_key.clone(),
                connect_timeout: self.inner.connect_timeout,
                tls: self.inner.ws_tls.clone(),
            },
            options,
        )
    }
}

async fn decode<T: DeserializeOwned>(
    response: reqwest::Response,
    server: &str,
) -> Result<T, Error> {
    let bytes = response
        .bytes()
        .await
        .map_err(|e| Error::from_reqwest(server, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Protocol(format!("{e}")))
}
