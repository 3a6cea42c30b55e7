//! Request and response bodies of the REST API, base `/api/v2` (PROTOCOL §6).
//!
//! Shared by the server and API clients so both sides agree on field names. Fields
//! that are optional on input carry `#[serde(default)]`; timestamps are RFC 3339
//! strings, produced and parsed by the caller.

use alloc::boxed::Box;
use alloc::string::String;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::frame::RpcError;

/// Every non-2xx body: `{"error": {"code", "message"}}` (PROTOCOL §6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// The error itself.
    pub error: ErrorDetail,
}

/// The `error` member of [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// The HTTP status.
    pub code: u16,
    /// Human-readable text.
    #[serde(default)]
    pub message: String,
    /// The device's own `{code, message}` when an RPC proxied to it failed (PROTOCOL §6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<RpcError>,
}

impl ErrorBody {
    /// An error body with the HTTP status `code`.
    pub fn new(code: u16, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code,
                message: message.into(),
                device: None,
            },
        }
    }
}

/// `POST /devices` body: `{"name"?, "id"?}` (PROTOCOL §6).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct NewDevice {
    /// Display name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Caller-chosen device id; otherwise the server generates one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$"))]
    pub id: Option<String>,
}

/// `POST`/`PUT /devices/:id` body: any of `{"name", "shared_with", "shadow"}`
/// (PROTOCOL §6).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct DeviceChange {
    /// New display name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// New comma-separated list of user ids the device is shared with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_with: Option<String>,
    /// A shadow update (PROTOCOL §4.1); parse it with
    /// [`crate::shadow::Update::from_value`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Value>,
}

/// `POST /user/add` body (PROTOCOL §6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewUser {
    /// User name; the user id is `email_<name>`.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9_.@+-]{1,64}$"))]
    pub name: String,
    /// Password in clear; stored as a bcrypt hash.
    #[cfg_attr(feature = "openapi", schema(min_length = 1))]
    pub pass: String,
}

/// `POST /devices/:id/pair` body (the customer app, `/app/`): the password printed on the
/// device's label, which is its token, and optionally the name the customer gives it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PairDevice {
    /// The device's password (its token).
    #[cfg_attr(feature = "openapi", schema(min_length = 1))]
    pub password: String,
    /// A new display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `POST /logs` body: `{"start"?, "limit"?}` (PROTOCOL §6, §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct LogsQuery {
    /// Offset of the first stored notification to return.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<u64>,
    /// Most notifications to return.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

/// What an API key may do (PROTOCOL §11), each scope including the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Every GET, the notify stream and `POST /logs`.
    Read,
    /// Also shadow writes (but `desired.ota`), RPC calls (but `OTA.*`), device create and
    /// rename.
    Operate,
    /// Also firmware, `POST /devices/:id/ota`, `desired.ota`, `OTA.*`, rollouts and device
    /// deletion.
    Deploy,
    /// Also users and other users' keys.
    Admin,
}

impl Scope {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Operate => "operate",
            Scope::Deploy => "deploy",
            Scope::Admin => "admin",
        }
    }

    /// Parses the wire name.
    pub fn parse(text: &str) -> Option<Scope> {
        [Scope::Read, Scope::Operate, Scope::Deploy, Scope::Admin]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// `POST /keys` body (PROTOCOL §11); every field is optional.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct NewKey {
    /// A name for people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What it may do; the creating key's own scope when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
    /// Only devices matching this filter (the console's language, `crate::filter`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devices: Option<String>,
    /// RFC 3339 time after which the key is refused (401).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub expires_at: Option<String>,
}

/// An API key: `{id, user_id, created_at, last_used}` (PROTOCOL §6) with its scope, device
/// filter and expiry (§11), plus `token` once, on creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyObject {
    /// Key id.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// A name for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// What it may do (keys made before scopes existed: `admin` for the admin, `deploy`
    /// for others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
    /// The device filter it is limited to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<String>,
    /// RFC 3339 expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// RFC 3339 time of last use; `null` if never used.
    #[serde(default)]
    pub last_used: Option<String>,
    /// The secret itself, only in the `POST /keys` response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// A device as the API shows it (PROTOCOL §6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceObject {
    /// Device id.
    pub id: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Device token: only for the owner, and only when the server still has it in
    /// clear (on creation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Owner.
    #[serde(default)]
    pub user_id: String,
    /// Comma-separated user ids the device is shared with.
    #[serde(default)]
    pub shared_with: String,
    /// Connected right now.
    #[serde(default)]
    pub online: bool,
    /// RFC 3339 creation time.
    #[serde(default)]
    pub created_at: String,
    /// RFC 3339 time the device was last connected; `null` if never.
    #[serde(default)]
    pub last_seen: Option<String>,
    /// Latest `Sys.GetInfo` / heartbeat object (PROTOCOL §3).
    #[serde(default)]
    pub info: Value,
    /// Shadow document with delta (PROTOCOL §4).
    #[serde(default)]
    pub shadow: Value,
    /// `{"reason", "until"}` while the device is held off for exceeding its limits. Boxed:
    /// rare, and device objects travel in large numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<Box<Value>>,
}

/// A user as the API shows it (PROTOCOL §6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserObject {
    /// `email_<name>`.
    pub id: String,
    /// User name.
    pub name: String,
    /// Sees and manages everything.
    #[serde(default)]
    pub admin: bool,
    /// RFC 3339 creation time.
    #[serde(default)]
    pub created_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn error_body_shape() {
        // PROTOCOL §6: every non-2xx body is {"error": {"code", "message"}}.
        assert_eq!(
            serde_json::to_string(&ErrorBody::new(404, "no such device")).expect("serialisable"),
            r#"{"error":{"code":404,"message":"no such device"}}"#
        );
        let back: ErrorBody =
            serde_json::from_str(r#"{"error":{"code":503}}"#).expect("message is optional");
        assert_eq!(back, ErrorBody::new(503, ""));
    }

    #[test]
    fn optional_inputs_default() {
        let d: NewDevice = serde_json::from_str("{}").expect("empty body");
        assert_eq!(d, NewDevice::default());
        let d: NewDevice = serde_json::from_str(r#"{"name":"lamp","id":"my-id"}"#).expect("valid");
        assert_eq!(d.name.as_deref(), Some("lamp"));
        assert_eq!(d.id.as_deref(), Some("my-id"));
        let c: DeviceChange = serde_json::from_str(
            r#"{"shared_with":"email_bob","shadow":{"state":{"desired":{"on":true}}}}"#,
        )
        .expect("valid");
        assert_eq!(c.name, None);
        assert_eq!(c.shared_with.as_deref(), Some("email_bob"));
        assert_eq!(c.shadow, Some(json!({"state": {"desired": {"on": true}}})));
        let q: LogsQuery = serde_json::from_str(r#"{"limit":10}"#).expect("valid");
        assert_eq!(
            q,
            LogsQuery {
                start: None,
                limit: Some(10)
            }
        );
        let u: NewUser = serde_json::from_str(r#"{"name":"bob","pass":"pw"}"#).expect("valid");
        assert_eq!(u.name, "bob");
        assert!(serde_json::from_str::<NewUser>(r#"{"name":"bob"}"#).is_err());
    }

    #[test]
    fn device_object_shape() {
        // PROTOCOL §6: token only for the owner; last_seen present even when null.
        let device = DeviceObject {
            id: "0123456789abcdef01234567".into(),
            name: "lamp".into(),
            token: None,
            user_id: "email_admin".into(),
            shared_with: String::new(),
            online: false,
            created_at: "2024-01-01T00:00:00Z".into(),
            last_seen: None,
            info: Value::Null,
            shadow: json!({"state": {}}),
            quarantine: None,
        };
        let value = serde_json::to_value(&device).expect("serialisable");
        assert_eq!(
            value,
            json!({
                "id": "0123456789abcdef01234567", "name": "lamp", "user_id": "email_admin",
                "shared_with": "", "online": false, "created_at": "2024-01-01T00:00:00Z",
                "last_seen": null, "info": null, "shadow": {"state": {}}
            })
        );
        let with_token = DeviceObject {
            token: Some("secret".into()),
            ..device.clone()
        };
        let value = serde_json::to_value(&with_token).expect("serialisable");
        assert_eq!(value["token"], json!("secret"));
        let back: DeviceObject = serde_json::from_value(value).expect("round trip");
        assert_eq!(back, with_token);
    }

    #[test]
    fn scopes_are_ordered_and_named() {
        assert!(Scope::Read < Scope::Operate && Scope::Operate < Scope::Deploy);
        assert!(Scope::Deploy < Scope::Admin);
        for scope in [Scope::Read, Scope::Operate, Scope::Deploy, Scope::Admin] {
            assert_eq!(Scope::parse(scope.as_str()), Some(scope));
        }
        let key: NewKey =
            serde_json::from_str(r#"{"scope":"read","expires_at":"2030-01-01T00:00:00Z"}"#)
                .expect("valid");
        assert_eq!(key.scope, Some(Scope::Read));
        assert!(serde_json::from_str::<NewKey>(r#"{"scope":"root"}"#).is_err());
        assert!(serde_json::from_str::<NewKey>(r#"{"scop":"read"}"#).is_err());
    }

    #[test]
    fn key_and_user_objects() {
        let key = KeyObject {
            id: "k1".into(),
            user_id: "email_bob".into(),
            name: String::new(),
            scope: None,
            devices: None,
            expires_at: None,
            created_at: "2024-01-01T00:00:00Z".into(),
            last_used: None,
            token: None,
        };
        assert_eq!(
            serde_json::to_string(&key).expect("serialisable"),
            r#"{"id":"k1","user_id":"email_bob","created_at":"2024-01-01T00:00:00Z","last_used":null}"#
        );
        let user: UserObject = serde_json::from_str(
            r#"{"id":"email_bob","name":"bob","admin":false,"created_at":"2024-01-01T00:00:00Z"}"#,
        )
        .expect("valid");
        assert_eq!(user.id, "email_bob");
        assert!(!user.admin);
    }
}
