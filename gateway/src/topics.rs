//! The MQTT topic schemes the gateway speaks, as pure functions: what a message from a node
//! means, and what to publish to a node. Nothing here does IO.
//!
//! **Pyaiot** (nodes written for Pyaiot's MQTT gateway keep working unchanged):
//!
//! | topic | direction | payload |
//! |---|---|---|
//! | `node/check` | node → gateway | `{"id": "<node>"}`: the node is alive |
//! | `gateway/check` | gateway → nodes | empty: every node, say `node/check` |
//! | `gateway/<node>/discover` | gateway → node | `resources` or `values` |
//! | `node/<node>/resources` | node → gateway | JSON array of resource names |
//! | `node/<node>/<resource>` | node → gateway | `{"value": <any>}` |
//! | `gateway/<node>/<resource>/set` | gateway → node | the new value as text |
//!
//! Resources become keys of the device's `reported` shadow; a `desired` key becomes a
//! `set` message (a string is sent as it is, anything else as its JSON text).
//!
//! **Herd** (for new devices; modelled on AWS IoT's shadow topics), under a prefix that
//! defaults to `herd`:
//!
//! | topic | direction | payload |
//! |---|---|---|
//! | `herd/<node>/shadow/update` | node → gateway | `{"state": {"reported": {...}}}` (PROTOCOL §4.1) |
//! | `herd/<node>/shadow/delta` | gateway → node | `{"state": <delta>, "version", "timestamp"}` (§4.3) |
//! | `herd/<node>/rpc/request` | gateway → node | `{"id": N, "method", "params"?}` (§2) |
//! | `herd/<node>/rpc/response` | node → gateway | `{"id": N, "result"}` or `{"id": N, "error": {"code", "message"}}` |
//! | `herd/<node>/status` | node → gateway | `online` or `offline` (use it as the node's last will) |
//!
//! Any message from a node counts as a sign of life.

use protocol::frame::RpcError;
use serde_json::Value;

/// Pyaiot's liveness message.
pub const PYAIOT_CHECK: &str = "node/check";
/// Pyaiot's request for liveness messages.
pub const PYAIOT_REQUEST_CHECK: &str = "gateway/check";
/// The default prefix of the Herd scheme.
pub const DEFAULT_PREFIX: &str = "herd";
/// Longest node id accepted; longer ones are refused rather than turned into devices.
pub const MAX_NODE_ID: usize = 64;

/// Which scheme a node speaks; part of its identity, so `node/a` and `herd/a` are two
/// devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// Pyaiot's MQTT scheme.
    Pyaiot,
    /// Herd's MQTT scheme.
    Herd,
    /// Pyaiot's CoAP nodes (see [`crate::coap`]).
    Coap,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Pyaiot => "pyaiot",
            Family::Herd => "herd",
            Family::Coap => "coap",
        }
    }
}

/// A node as the gateway knows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeKey {
    pub family: Family,
    pub node: String,
}

impl NodeKey {
    pub fn new(family: Family, node: impl Into<String>) -> NodeKey {
        NodeKey {
            family,
            node: node.into(),
        }
    }
}

impl std::fmt::Display for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.family.as_str(), self.node)
    }
}

/// What a message from a node means.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// Pyaiot `node/check`.
    Alive(NodeKey),
    /// Pyaiot `node/<id>/resources`.
    Resources(NodeKey, Vec<String>),
    /// A change of the node's `reported` state (Pyaiot resource values become one key).
    Reported(NodeKey, serde_json::Map<String, Value>),
    /// The answer to a forwarded cloud call.
    RpcResponse {
        node: NodeKey,
        id: u64,
        outcome: Result<Value, RpcError>,
    },
    /// Herd `status`: the node says it is online (`true`) or its last will says it is gone.
    Status(NodeKey, bool),
}

/// Why a message was not understood. The gateway counts and logs these; none stops it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("node id {0:?} is empty, too long or has characters other than A-Z a-z 0-9 _ . : -")]
    BadNodeId(String),
    #[error("payload of {topic} is not what the scheme says: {reason}")]
    BadPayload { topic: String, reason: String },
}

/// Node ids become device names; they must be short and printable.
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_NODE_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

fn node(family: Family, id: &str) -> Result<NodeKey, TopicError> {
    if valid_node_id(id) {
        Ok(NodeKey::new(family, id))
    } else {
        Err(TopicError::BadNodeId(id.chars().take(80).collect()))
    }
}

fn bad(topic: &str, reason: impl Into<String>) -> TopicError {
    TopicError::BadPayload {
        topic: topic.to_string(),
        reason: reason.into(),
    }
}

fn json(topic: &str, payload: &[u8]) -> Result<Value, TopicError> {
    serde_json::from_slice(payload).map_err(|e| bad(topic, format!("not JSON ({e})")))
}

/// Reads a message a node published. `Ok(None)`: a topic of neither scheme (or one the
/// gateway itself publishes), which is ignored.
pub fn parse(prefix: &str, topic: &str, payload: &[u8]) -> Result<Option<Inbound>, TopicError> {
    if topic == PYAIOT_CHECK {
        let value = json(topic, payload)?;
        let id = value
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(topic, "expected {\"id\": \"<node>\"}"))?;
        return Ok(Some(Inbound::Alive(node(Family::Pyaiot, id)?)));
    }
    let parts: Vec<&str> = topic.split('/').collect();
    match parts.as_slice() {
        ["node", id, "resources"] => {
            let key = node(Family::Pyaiot, id)?;
            let names = match json(topic, payload)? {
                Value::Array(items) => items
                    .into_iter()
                    .map(|item| match item {
                        Value::String(name) if valid_resource(&name) => Ok(name),
                        other => Err(bad(topic, format!("not a resource name: {other}"))),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                _ => return Err(bad(topic, "expected an array of resource names")),
            };
            Ok(Some(Inbound::Resources(key, names)))
        }
        ["node", id, resource] => {
            let key = node(Family::Pyaiot, id)?;
            if !valid_resource(resource) {
                return Err(bad(topic, "resource name"));
            }
            let value = json(topic, payload)?;
            let value = value
                .get("value")
                .cloned()
                .ok_or_else(|| bad(topic, "expected {\"value\": ...}"))?;
            let mut reported = serde_json::Map::new();
            reported.insert(resource.to_string(), value);
            Ok(Some(Inbound::Reported(key, reported)))
        }
        [p, id, "shadow", "update"] if *p == prefix => {
            let key = node(Family::Herd, id)?;
            let value = json(topic, payload)?;
            match value.pointer("/state/reported") {
                Some(Value::Object(reported)) => Ok(Some(Inbound::Reported(key, reported.clone()))),
                _ => Err(bad(topic, "expected {\"state\": {\"reported\": {...}}}")),
            }
        }
        [p, id, "rpc", "response"] if *p == prefix => {
            let key = node(Family::Herd, id)?;
            let value = json(topic, payload)?;
            let id = value
                .get("id")
                .and_then(Value::as_u64)
                .ok_or_else(|| bad(topic, "expected the request's numeric \"id\""))?;
            let outcome = match (value.get("result"), value.get("error")) {
                (_, Some(error)) => Err(serde_json::from_value::<RpcError>(error.clone())
                    .map_err(|e| bad(topic, format!("error member: {e}")))?),
                (Some(result), None) => Ok(result.clone()),
                (None, None) => Ok(Value::Null),
            };
            Ok(Some(Inbound::RpcResponse {
                node: key,
                id,
                outcome,
            }))
        }
        [p, id, "status"] if *p == prefix => {
            let key = node(Family::Herd, id)?;
            match payload.trim_ascii() {
                b"online" => Ok(Some(Inbound::Status(key, true))),
                b"offline" => Ok(Some(Inbound::Status(key, false))),
                _ => Err(bad(topic, "expected online or offline")),
            }
        }
        _ => Ok(None),
    }
}

fn valid_resource(name: &str) -> bool {
    valid_node_id(name)
}

/// The subscriptions that cover both schemes.
pub fn subscriptions(prefix: &str) -> Vec<String> {
    vec![
        PYAIOT_CHECK.to_string(),
        "node/+/+".to_string(),
        format!("{prefix}/+/shadow/update"),
        format!("{prefix}/+/rpc/response"),
        format!("{prefix}/+/status"),
    ]
}

/// Pyaiot: ask a node for its resource list (`resources`) or its current values
/// (`values`).
pub fn discover(node: &str, what: &str) -> (String, Vec<u8>) {
    (format!("gateway/{node}/discover"), what.as_bytes().to_vec())
}

/// Pyaiot: set one resource. Strings go as they are; other values as JSON text.
pub fn set(node: &str, resource: &str, value: &Value) -> (String, Vec<u8>) {
    let payload = match value {
        Value::String(text) => text.clone().into_bytes(),
        other => other.to_string().into_bytes(),
    };
    (format!("gateway/{node}/{resource}/set"), payload)
}

/// Herd: the delta document of a `Shadow.Delta` request (PROTOCOL §4.3).
pub fn delta(prefix: &str, node: &str, params: &Value) -> (String, Vec<u8>) {
    (
        format!("{prefix}/{node}/shadow/delta"),
        params.to_string().into_bytes(),
    )
}

/// Herd: a cloud call forwarded to the node.
pub fn rpc_request(
    prefix: &str,
    node: &str,
    id: u64,
    method: &str,
    params: Option<&Value>,
) -> (String, Vec<u8>) {
    let mut request = serde_json::json!({"id": id, "method": method});
    if let Some(params) = params {
        request["params"] = params.clone();
    }
    (
        format!("{prefix}/{node}/rpc/request"),
        request.to_string().into_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(topic: &str, payload: &str) -> Result<Option<Inbound>, TopicError> {
        parse(DEFAULT_PREFIX, topic, payload.as_bytes())
    }

    #[test]
    fn pyaiot_messages() {
        let n1 = NodeKey::new(Family::Pyaiot, "n1");
        assert_eq!(
            p("node/check", r#"{"id":"n1"}"#),
            Ok(Some(Inbound::Alive(n1.clone())))
        );
        assert_eq!(
            p("node/n1/resources", r#"["temperature","led"]"#),
            Ok(Some(Inbound::Resources(
                n1.clone(),
                vec!["temperature".into(), "led".into()]
            )))
        );
        let Ok(Some(Inbound::Reported(key, reported))) = p("node/n1/led", r#"{"value":"1"}"#)
        else {
            panic!("a value")
        };
        assert_eq!(key, n1);
        assert_eq!(Value::Object(reported), json!({"led": "1"}));
    }

    #[test]
    fn herd_messages() {
        let lamp = NodeKey::new(Family::Herd, "lamp");
        let Ok(Some(Inbound::Reported(key, reported))) = p(
            "herd/lamp/shadow/update",
            r#"{"state":{"reported":{"on":true}}}"#,
        ) else {
            panic!("a report")
        };
        assert_eq!(
            (key, Value::Object(reported)),
            (lamp.clone(), json!({"on": true}))
        );
        assert_eq!(
            p("herd/lamp/rpc/response", r#"{"id":7,"result":{"ok":1}}"#),
            Ok(Some(Inbound::RpcResponse {
                node: lamp.clone(),
                id: 7,
                outcome: Ok(json!({"ok": 1}))
            }))
        );
        assert_eq!(
            p(
                "herd/lamp/rpc/response",
                r#"{"id":8,"error":{"code":404,"message":"no"}}"#
            ),
            Ok(Some(Inbound::RpcResponse {
                node: lamp.clone(),
                id: 8,
                outcome: Err(RpcError::new(404, "no"))
            }))
        );
        assert_eq!(
            p("herd/lamp/status", "offline"),
            Ok(Some(Inbound::Status(lamp, false)))
        );
        // Another prefix is another scheme.
        assert_eq!(p("other/lamp/status", "offline"), Ok(None));
        assert_eq!(p("gateway/lamp/discover", "values"), Ok(None));
    }

    #[test]
    fn garbage_is_an_error_never_a_device() {
        for (topic, payload) in [
            ("node/check", "not json"),
            ("node/check", r#"{"id": 5}"#),
            ("node/check", r#"{"id": "has space"}"#),
            ("node/check", &format!(r#"{{"id": "{}"}}"#, "x".repeat(65))),
            ("node/n1/resources", r#"{"a":1}"#),
            ("node/n1/resources", r#"["ok", 3]"#),
            ("node/n1/temp", "21.5"),
            ("node/n1/temp", r#"{"val": 1}"#),
            ("herd/lamp/shadow/update", r#"{"reported":{"on":true}}"#),
            ("herd/lamp/shadow/update", r#"{"state":{"reported":[1]}}"#),
            ("herd/lamp/rpc/response", r#"{"id":"x","result":1}"#),
            ("herd/lamp/rpc/response", r#"{"id":1,"error":"bad"}"#),
            ("herd/lamp/status", "maybe"),
            ("herd/bad id/status", "online"),
        ] {
            assert!(p(topic, payload).is_err(), "{topic} {payload}");
        }
    }

    #[test]
    fn outbound_messages() {
        assert_eq!(
            set("n1", "led", &json!("1")),
            ("gateway/n1/led/set".to_string(), b"1".to_vec())
        );
        assert_eq!(set("n1", "level", &json!(42)).1, b"42".to_vec());
        assert_eq!(set("n1", "on", &json!(true)).1, b"true".to_vec());
        assert_eq!(
            discover("n1", "resources"),
            ("gateway/n1/discover".to_string(), b"resources".to_vec())
        );
        let (topic, payload) = rpc_request("herd", "lamp", 3, "Light.Toggle", None);
        assert_eq!(topic, "herd/lamp/rpc/request");
        assert_eq!(
            serde_json::from_slice::<Value>(&payload).unwrap(),
            json!({"id": 3, "method": "Light.Toggle"})
        );
    }
}
