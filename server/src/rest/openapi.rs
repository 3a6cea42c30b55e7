//! The OpenAPI 3 document of the HTTP surface, served at `GET /api/v2/openapi.json`.
//!
//! [`routes`] is the one table of every route: each entry is a handler with its
//! `#[utoipa::path]`, so the router ([`super::router`]) and the document are made from the same
//! list and cannot drift apart. The schemas of the bodies come from the types themselves
//! (`protocol::rest`, `protocol::firmware`), with a few shapes that the server builds as JSON
//! values described here.

use std::sync::OnceLock;

use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi as Document;
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{app, firmware, ota, rollouts, sockets};
use crate::{device_socket, AppState};

/// The security schemes every authenticated operation accepts (PROTOCOL §6).
pub const BEARER: &str = "bearer";
/// HTTP Basic `<user name>:<password>`.
pub const BASIC: &str = "basic";
/// `?access_token=<api key>`.
pub const ACCESS_TOKEN: &str = "access_token";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herd REST API",
        description = "The REST API of herd-server, wire-compatible with Cesanta mDash (PROTOCOL §6, §10, §11). \
            Every non-2xx body is `{\"error\": {\"code\": <http status>, \"message\": \"<text>\"}}`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    modifiers(&SecuritySchemes),
    security(("bearer" = []), ("basic" = []), ("access_token" = [])),
    tags(
        (name = "devices", description = "Devices, their shadows and the RPC proxy (PROTOCOL §6)"),
        (name = "firmware", description = "The firmware store and one-device updates (PROTOCOL §10.1-§10.3)"),
        (name = "rollouts", description = "Updates of many devices in waves (PROTOCOL §10.5)"),
        (name = "app", description = "The customer app's sign-up and pairing"),
        (name = "keys", description = "API keys and users (PROTOCOL §6, §11)"),
        (name = "streams", description = "WebSockets: the device connection, the notify stream and the per-device RPC socket"),
        (name = "server", description = "Health, the notification log and this document"),
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key (a device token where the operation says so)",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            BASIC,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some("User name and password"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            ACCESS_TOKEN,
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "access_token",
                "An API key (a device token where the operation says so) in the query",
            ))),
        );
    }
}

/// Every route of the HTTP surface with its documentation: the table both the router and the
/// document are built from.
pub fn routes() -> OpenApiRouter<AppState> {
    // Images may be far larger than the JSON body limit; their handlers enforce their own.
    let uploads = OpenApiRouter::new()
        .routes(routes!(ota::push))
        .routes(routes!(firmware::list, firmware::upload))
        .layer(DefaultBodyLimit::disable());
    let api = OpenApiRouter::new()
        .routes(routes!(device_socket::upgrade))
        .routes(routes!(sockets::notify))
        .routes(routes!(super::list_devices, super::create_device))
        .routes(routes!(
            super::get_device,
            super::change_device,
            super::replace_device,
            super::delete_device
        ))
        .routes(routes!(super::get_shadow, super::post_shadow))
        .routes(routes!(sockets::device_rpc))
        .routes(routes!(super::release_device))
        .routes(routes!(app::signup))
        .routes(routes!(app::pair))
        .routes(routes!(app::unpair))
        .routes(routes!(super::rpc_proxy, super::rpc_proxy_get))
        .routes(routes!(firmware::get, firmware::delete))
        .routes(routes!(firmware::image))
        .routes(routes!(rollouts::list, rollouts::create))
        .routes(routes!(rollouts::show))
        .routes(routes!(rollouts::start))
        .routes(routes!(rollouts::pause))
        .routes(routes!(rollouts::resume))
        .routes(routes!(rollouts::abort))
        .routes(routes!(rollouts::retry))
        .routes(routes!(super::list_keys, super::create_key))
        .routes(routes!(super::current_key))
        .routes(routes!(super::delete_key))
        .routes(routes!(super::add_user))
        .routes(routes!(super::logs))
        .routes(routes!(openapi_json))
        .merge(uploads);
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v2", api)
        .routes(routes!(device_socket::upgrade_v1))
        .routes(routes!(super::healthz))
}

/// The document, built once.
pub fn document() -> &'static Document {
    static DOCUMENT: OnceLock<Document> = OnceLock::new();
    DOCUMENT.get_or_init(|| routes().into_openapi())
}

fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        // A document made of derived types always serialises; should it not, an empty
        // object is a valid answer that any client notices.
        document().to_json().unwrap_or_else(|_| "{}".to_string())
    })
}

/// `GET /api/v2/openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "server",
    security(()),
    responses((status = 200, description = "The OpenAPI 3 document of this API", content_type = "application/json", body = Object)),
)]
async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document_json(),
    )
        .into_response()
}

/// Sections of a shadow document: `desired` and `reported`.
#[derive(Serialize, ToSchema)]
pub struct ShadowSections {
    /// What the cloud wants the device to be.
    pub desired: Object,
    /// What the device says it is.
    pub reported: Object,
}

/// Sections of a shadow document with the computed `delta` (PROTOCOL §4.2).
#[derive(Serialize, ToSchema)]
pub struct ShadowState {
    /// What the cloud wants the device to be.
    pub desired: Object,
    /// What the device says it is.
    pub reported: Object,
    /// The keys of `desired` that `reported` does not match.
    pub delta: Object,
}

/// A shadow document as the API shows it (PROTOCOL §4, §6).
#[derive(Serialize, ToSchema)]
pub struct ShadowDocument {
    /// The state with its delta.
    pub state: ShadowState,
    /// Per-key update times (seconds since the epoch), same layout as the state.
    pub metadata: ShadowSections,
    /// Free-form tags.
    pub tags: Object,
    /// Bumped on every change.
    #[schema(minimum = 0)]
    pub version: u64,
    /// Seconds since the epoch of the last change.
    pub timestamp: f64,
}

/// The sections a shadow update may carry; a missing or `null` section is left alone.
#[derive(Serialize, ToSchema)]
pub struct ShadowUpdateState {
    /// Keys to set in `desired`; a `null` value deletes the key.
    pub desired: Option<Object>,
    /// Keys to set in `reported`; a `null` value deletes the key.
    pub reported: Option<Object>,
}

/// A shadow update (PROTOCOL §4.1). Other keys, such as `state.delta` or `metadata` in a
/// document posted back, are ignored.
#[derive(Serialize, ToSchema)]
pub struct ShadowUpdate {
    /// The sections to merge.
    pub state: Option<ShadowUpdateState>,
    /// Tags to merge.
    pub tags: Option<Object>,
    /// Apply only if the shadow is at this version (409 otherwise).
    #[schema(minimum = 0)]
    pub version: Option<u64>,
}

/// A JSON object with any members.
pub type Object = serde_json::Map<String, serde_json::Value>;

/// A firmware image as raw bytes.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct FirmwareImage(pub Vec<u8>);

/// A multipart firmware upload (PROTOCOL §10.1): the image and its metadata. Fields left
/// out are taken from the image itself where it says (an ELF note, a package manifest).
#[derive(ToSchema)]
pub struct FirmwareUpload {
    /// The image: raw, an ELF, or a Mongoose OS `.zip` with its manifest.
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
    /// Application name.
    pub app: Option<String>,
    /// Version text.
    pub version: Option<String>,
    /// Platform or architecture (`esp32c3`, `x86_64`, `sim`).
    pub platform: Option<String>,
    /// Ed25519 signature over the image's SHA-256 digest, base64 (PROTOCOL §10.4).
    pub signature: Option<String>,
}
