//! Layered device configuration (PROTOCOL §9): built-in defaults < factory layer < user
//! layer < unsaved changes.
//!
//! The factory layer is written once on the bench (server address, device token, board
//! wiring) and survives a factory reset; the user layer holds what `Config.Save` persisted
//! and is what a factory reset erases. Changes made by `Config.Set` without `save` live only
//! in RAM until `Config.Save`, as on Mongoose OS.
//!
//! Every change is checked against the schema (the defaults: unknown keys and wrong types are
//! refused) and against `conf_acl`, a comma-separated list of glob patterns where a leading
//! `-` denies and the first matching pattern decides.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use protocol::shadow::merge;
use serde_json::{json, Map, Value};

/// A JSON object.
pub type Object = Map<String, Value>;

/// The two persisted layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layer {
    /// Written at manufacturing time; survives a factory reset.
    Factory,
    /// Written by `Config.Save`; erased by a factory reset.
    User,
}

impl Layer {
    /// A short lowercase name, usable as a file name stem.
    pub fn name(self) -> &'static str {
        match self {
            Layer::Factory => "factory",
            Layer::User => "user",
        }
    }
}

/// Why a configuration change was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// The key is not part of the schema.
    UnknownKey(String),
    /// The value has another JSON type than the schema says.
    WrongType {
        /// Dotted key.
        key: String,
        /// What the schema expects, e.g. "a boolean".
        expected: &'static str,
    },
    /// `conf_acl` does not allow changing the key.
    Denied(String),
    /// The request was not shaped like a configuration change.
    Invalid(String),
}

impl ConfigError {
    /// The RPC error code for this error (PROTOCOL §2: 400 bad arguments, 403 denied).
    pub fn code(&self) -> i64 {
        match self {
            ConfigError::Denied(_) => protocol::codes::FORBIDDEN,
            _ => protocol::codes::BAD_REQUEST,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::UnknownKey(key) => write!(f, "unknown config key {key}"),
            ConfigError::WrongType { key, expected } => {
                write!(f, "config key {key} must be {expected}")
            }
            ConfigError::Denied(key) => write!(f, "setting {key} is not allowed by conf_acl"),
            ConfigError::Invalid(message) => f.write_str(message),
        }
    }
}

/// The schema and default values of every configuration key (PROTOCOL §9). Besides the
/// keys PROTOCOL §9 lists: `dash.ca_cert` (base64 DER of the certificate authority a device
/// without a trust store checks a `wss://` server against), `update.pubkey` (base64 Ed25519 key images must be signed for,
/// §10.4; settable only locally or in the factory layer), `update.commit_timeout` (of
/// updates that name none) and `rpc.ota_methods` (`"all"`, or `"push"` for a device that
/// answers like the mDash device library; see [`crate::ota::OtaMethods`]).
///
/// Built on demand rather than stored, so a thousand simulated devices in one process do
/// not each keep a copy.
pub fn defaults() -> Object {
    let value = json!({
        "device": {"id": "", "name": "", "password": ""},
        "dash": {"enable": false, "server": "", "token": "", "heartbeat_interval": 0, "ca_cert": ""},
        "wifi": {
            "sta": {"enable": false, "ssid": "", "pass": ""},
            "ap": {"enable": true, "ssid": "HerdLight", "pass": "herdlight"}
        },
        "provision": {"button": {"pin": 9, "hold_ms": 3000}},
        "smartlight": {"pin": 8, "inverted": false},
        "debug": {"level": 2},
        "update": {"pubkey": "", "commit_timeout": 0},
        "rpc": {"ota_methods": "all"},
        "conf_acl": "*"
    });
    match value {
        Value::Object(map) => map,
        _ => Object::new(),
    }
}

/// The layered configuration of one device.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    factory: Object,
    user: Object,
    pending: Object,
}

impl Config {
    /// A configuration from the two persisted layers. Keys the schema does not know, or
    /// values of the wrong type, are dropped: a layer written by older firmware must not
    /// stop the device from booting.
    pub fn new(factory: Object, user: Object) -> Config {
        let schema = defaults();
        Config {
            factory: sanitize(&schema, factory),
            user: sanitize(&schema, user),
            pending: Object::new(),
        }
    }

    /// The factory layer as stored.
    pub fn factory_layer(&self) -> &Object {
        &self.factory
    }

    /// The user layer as stored (without unsaved changes).
    pub fn user_layer(&self) -> &Object {
        &self.user
    }

    /// Whether `Config.Set` changed something that `Config.Save` has not persisted yet.
    pub fn has_unsaved_changes(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The effective value at a dotted key (`"wifi.sta.ssid"`), or the subtree at an
    /// object key. `""` is the whole tree.
    pub fn get(&self, key: &str) -> Option<Value> {
        // Only leaves are looked up per layer; subtrees need the merged tree.
        for layer in [&self.pending, &self.user, &self.factory] {
            if let Some(found) = lookup(layer, key) {
                if !found.is_object() {
                    return Some(found.clone());
                }
                break;
            }
        }
        let effective = self.effective();
        if key.is_empty() {
            return Some(Value::Object(effective));
        }
        lookup(&effective, key).cloned()
    }

    /// A string key, `""` when absent or not a string.
    pub fn get_str(&self, key: &str) -> String {
        match self.get(key) {
            Some(Value::String(text)) => text,
            _ => String::new(),
        }
    }

    /// A boolean key, `false` when absent or not a boolean.
    pub fn get_bool(&self, key: &str) -> bool {
        matches!(self.get(key), Some(Value::Bool(true)))
    }

    /// An integer key, `0` when absent or not an integer.
    pub fn get_i64(&self, key: &str) -> i64 {
        self.get(key).and_then(|v| v.as_i64()).unwrap_or(0)
    }

    /// Defaults, factory, user and unsaved layers merged.
    pub fn effective(&self) -> Object {
        let mut tree = defaults();
        merge(&mut tree, &self.factory);
        merge(&mut tree, &self.user);
        merge(&mut tree, &self.pending);
        tree
    }

    /// Checks a change against the schema and `conf_acl` without applying it.
    pub fn check(&self, patch: &Object) -> Result<(), ConfigError> {
        let schema = defaults();
        check_types(&schema, patch, "")?;
        let acl = self.get_str("conf_acl");
        let mut leaves = Vec::new();
        leaf_keys(patch, "", &mut leaves);
        for key in leaves {
            if !acl_allows(&acl, &key) {
                return Err(ConfigError::Denied(key));
            }
        }
        Ok(())
    }

    /// Applies a checked change to the running configuration (not persisted).
    pub fn set(&mut self, patch: &Object) -> Result<(), ConfigError> {
        self.check(patch)?;
        merge(&mut self.pending, patch);
        Ok(())
    }

    /// The user layer `Config.Save` would persist: the stored one plus unsaved changes.
    pub fn user_layer_to_save(&self) -> Object {
        let mut user = self.user.clone();
        merge(&mut user, &self.pending);
        user
    }

    /// Records that [`Config::user_layer_to_save`] was persisted.
    pub fn saved(&mut self, user: Object) {
        self.user = user;
        self.pending = Object::new();
    }

    /// Drops unsaved changes.
    pub fn discard_unsaved(&mut self) {
        self.pending = Object::new();
    }

    /// The factory layer with `patch` merged in, checked against the schema only: the
    /// factory layer is written on the bench, where `conf_acl` does not apply.
    pub fn factory_layer_with(&self, patch: &Object) -> Result<Object, ConfigError> {
        check_types(&defaults(), patch, "")?;
        let mut factory = self.factory.clone();
        merge(&mut factory, patch);
        Ok(factory)
    }

    /// Records a persisted factory layer.
    pub fn set_factory_layer(&mut self, factory: Object) {
        self.factory = sanitize(&defaults(), factory);
    }

    /// Forgets the user layer and unsaved changes (factory reset); the factory layer stays.
    pub fn factory_reset(&mut self) {
        self.user = Object::new();
        self.pending = Object::new();
    }
}

/// Parses a stored layer; anything but a JSON object reads as empty.
pub fn parse_layer(bytes: &[u8]) -> Result<Object, String> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("config layer is not a JSON object".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// The value at a dotted key.
pub fn lookup<'a>(tree: &'a Object, key: &str) -> Option<&'a Value> {
    let mut parts = key.split('.');
    let first = parts.next()?;
    let mut node = tree.get(first)?;
    for part in parts {
        node = node.as_object()?.get(part)?;
    }
    Some(node)
}

/// Builds `{"a": {"b": value}}` from `"a.b"`.
pub fn nest(key: &str, value: Value) -> Result<Object, ConfigError> {
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(ConfigError::Invalid(format!("invalid config key {key:?}")));
    }
    let mut node = value;
    for part in key.rsplit('.') {
        let mut map = Object::new();
        map.insert(part.to_string(), node);
        node = Value::Object(map);
    }
    match node {
        Value::Object(map) => Ok(map),
        _ => Err(ConfigError::Invalid("invalid config key".into())),
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn check_types(schema: &Object, patch: &Object, prefix: &str) -> Result<(), ConfigError> {
    for (key, value) in patch {
        let path = join(prefix, key);
        let Some(expected) = schema.get(key) else {
            return Err(ConfigError::UnknownKey(path));
        };
        match (expected, value) {
            (Value::Object(inner_schema), Value::Object(inner)) => {
                check_types(inner_schema, inner, &path)?
            }
            (Value::Object(_), _) => {
                return Err(ConfigError::WrongType {
                    key: path,
                    expected: "an object",
                })
            }
            (Value::Bool(_), Value::Bool(_)) | (Value::String(_), Value::String(_)) => {}
            (Value::Number(n), Value::Number(v)) => {
                if (n.is_i64() || n.is_u64()) && !(v.is_i64() || v.is_u64()) {
                    return Err(ConfigError::WrongType {
                        key: path,
                        expected: "an integer",
                    });
                }
            }
            (expected, _) => {
                return Err(ConfigError::WrongType {
                    key: path,
                    expected: protocol::text::json_type_name(expected),
                })
            }
        }
    }
    Ok(())
}

fn sanitize(schema: &Object, layer: Object) -> Object {
    let mut out = Object::new();
    for (key, value) in layer {
        match (schema.get(&key), value) {
            (Some(Value::Object(inner_schema)), Value::Object(inner)) => {
                let inner = sanitize(inner_schema, inner);
                if !inner.is_empty() {
                    out.insert(key, Value::Object(inner));
                }
            }
            (Some(expected), value) if !expected.is_object() => {
                let mut probe = Object::new();
                probe.insert(key.clone(), value);
                let mut probe_schema = Object::new();
                probe_schema.insert(key.clone(), expected.clone());
                if check_types(&probe_schema, &probe, "").is_ok() {
                    out.extend(probe);
                }
            }
            _ => {}
        }
    }
    out
}

fn leaf_keys(patch: &Object, prefix: &str, out: &mut Vec<String>) {
    for (key, value) in patch {
        let path = join(prefix, key);
        match value {
            Value::Object(inner) if !inner.is_empty() => leaf_keys(inner, &path, out),
            _ => out.push(path),
        }
    }
}

/// Whether `conf_acl` lets `key` change: comma-separated globs, `-` prefix denies, the
/// first pattern that matches decides, no match denies.
pub fn acl_allows(acl: &str, key: &str) -> bool {
    for entry in acl.split(',') {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let (allow, pattern) = match entry.strip_prefix('-') {
            Some(rest) => (false, rest),
            None => (true, entry.strip_prefix('+').unwrap_or(entry)),
        };
        if protocol::text::glob_match(pattern, key) {
            return allow;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(value: Value) -> Object {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn layers_override_in_order() {
        let mut config = Config::new(
            obj(json!({"dash": {"server": "ws://factory"}, "smartlight": {"pin": 2}})),
            obj(json!({"smartlight": {"pin": 3}})),
        );
        assert_eq!(config.get_str("dash.server"), "ws://factory");
        assert_eq!(config.get_i64("smartlight.pin"), 3);
        assert_eq!(config.get_i64("provision.button.hold_ms"), 3000);
        config.set(&obj(json!({"smartlight": {"pin": 4}}))).unwrap();
        assert_eq!(config.get_i64("smartlight.pin"), 4);
        assert_eq!(
            config.get("smartlight"),
            Some(json!({"pin": 4, "inverted": false}))
        );
        config.factory_reset();
        assert_eq!(config.get_i64("smartlight.pin"), 2);
    }

    #[test]
    fn schema_refuses_unknown_keys_and_wrong_types() {
        let mut config = Config::default();
        assert_eq!(
            config.set(&obj(json!({"nope": 1}))),
            Err(ConfigError::UnknownKey("nope".into()))
        );
        assert!(matches!(
            config.set(&obj(json!({"smartlight": {"inverted": "yes"}}))),
            Err(ConfigError::WrongType { .. })
        ));
        assert!(matches!(
            config.set(&obj(json!({"smartlight": {"pin": 1.5}}))),
            Err(ConfigError::WrongType { .. })
        ));
        assert!(matches!(
            config.set(&obj(json!({"wifi": 3}))),
            Err(ConfigError::WrongType { .. })
        ));
        assert!(!config.has_unsaved_changes());
    }

    #[test]
    fn bad_stored_layers_are_sanitized() {
        let config = Config::new(
            obj(json!({"dash": {"server": 5, "token": "t"}, "junk": true})),
            Object::new(),
        );
        assert_eq!(
            config.factory_layer(),
            &obj(json!({"dash": {"token": "t"}}))
        );
    }

    #[test]
    fn acl_first_match_decides() {
        assert!(acl_allows("*", "wifi.sta.ssid"));
        assert!(!acl_allows("", "wifi.sta.ssid"));
        assert!(acl_allows("wifi.*,device.name", "device.name"));
        assert!(!acl_allows("wifi.*,device.name", "device.id"));
        assert!(!acl_allows("-dash.*,*", "dash.token"));
        assert!(acl_allows("-dash.*,*", "debug.level"));
        assert!(acl_allows("wifi.?ta.*", "wifi.sta.pass"));
        assert!(!acl_allows("wifi.?ta.*", "wifi.ap.pass"));
    }

    #[test]
    fn acl_is_enforced_on_set() {
        let mut config = Config::new(
            obj(json!({"conf_acl": "wifi.*,device.name"})),
            Object::new(),
        );
        assert!(config
            .set(&obj(json!({"wifi": {"sta": {"ssid": "home"}}})))
            .is_ok());
        assert_eq!(
            config.set(&obj(json!({"dash": {"token": "x"}}))),
            Err(ConfigError::Denied("dash.token".into()))
        );
        assert_eq!(
            config.set(&obj(json!({"conf_acl": "*"}))),
            Err(ConfigError::Denied("conf_acl".into()))
        );
    }

    #[test]
    fn nest_builds_objects() {
        assert_eq!(nest("a.b", json!(1)).unwrap(), obj(json!({"a": {"b": 1}})));
        assert!(nest("", json!(1)).is_err());
        assert!(nest("a..b", json!(1)).is_err());
    }
}
