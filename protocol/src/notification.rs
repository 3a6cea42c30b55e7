//! Notifications streamed to API clients and appended to the log (PROTOCOL §5, §7).

use alloc::format;
use alloc::string::String;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Device came online (data `null`, PROTOCOL §5).
pub const ONLINE: &str = "online";
/// Device went offline (data `null`, PROTOCOL §5).
pub const OFFLINE: &str = "offline";
/// Device created (data: device object without token, PROTOCOL §5).
pub const CREATED: &str = "created";
/// Device changed (data: device object without token, PROTOCOL §5).
pub const UPDATED: &str = "updated";
/// Device deleted (data `{"id"}`, PROTOCOL §5).
pub const DELETED: &str = "deleted";
/// The server started: the first line it appends to notification.log, with id `""`
/// (PROTOCOL §7).
pub const SERVER_STARTED: &str = "server.started";
/// A node of a cluster started (data `{"node", "version"}`). Unlike `server.started` it
/// ends no session: the log is the cluster's, and a node that died has its devices' ends
/// announced as `offline` by the others.
pub const NODE_STARTED: &str = "node.started";
/// A slow consumer lost messages (PROTOCOL §5).
pub const LAGGED: &str = "lagged";
/// Prefix of events for requests a device sent (PROTOCOL §5).
pub const RPC_OUT_PREFIX: &str = "rpc.out.";
/// Prefix of events for requests the cloud sent (PROTOCOL §5).
pub const RPC_IN_PREFIX: &str = "rpc.in.";

/// One event about one device: `{"id", "name", "data"}` (PROTOCOL §5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Device id.
    pub id: String,
    /// Event name, such as `online` or `rpc.out.Log`.
    pub name: String,
    /// Event payload; `null` when absent on input.
    #[serde(default)]
    pub data: Value,
}

/// A notification as persisted in `notification.log`, one per line:
/// `{"ts", "id", "name", "data"}` in that order (PROTOCOL §7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedNotification {
    /// Unix seconds when the server emitted it.
    pub ts: f64,
    /// Device id.
    pub id: String,
    /// Event name.
    pub name: String,
    /// Event payload.
    #[serde(default)]
    pub data: Value,
}

impl Notification {
    /// Any notification.
    pub fn new(id: impl Into<String>, name: impl Into<String>, data: Value) -> Self {
        Notification {
            id: id.into(),
            name: name.into(),
            data,
        }
    }

    /// `online` with `null` data (PROTOCOL §5).
    pub fn online(id: impl Into<String>) -> Self {
        Notification::new(id, ONLINE, Value::Null)
    }

    /// `offline` with `null` data (PROTOCOL §5).
    pub fn offline(id: impl Into<String>) -> Self {
        Notification::new(id, OFFLINE, Value::Null)
    }

    /// `deleted` with data `{"id"}` (PROTOCOL §5).
    pub fn deleted(id: impl Into<String>) -> Self {
        let id = id.into();
        let mut data = Map::new();
        data.insert("id".into(), Value::String(id.clone()));
        Notification::new(id, DELETED, Value::Object(data))
    }

    /// `rpc.out.<method>`: a device sent `method` with `params` (PROTOCOL §3, §5).
    pub fn rpc_out(id: impl Into<String>, method: &str, params: Value) -> Self {
        Notification::new(id, format!("{RPC_OUT_PREFIX}{method}"), params)
    }

    /// `rpc.in.<method>`: the cloud sent `method` with `params` (PROTOCOL §5).
    pub fn rpc_in(id: impl Into<String>, method: &str, params: Value) -> Self {
        Notification::new(id, format!("{RPC_IN_PREFIX}{method}"), params)
    }

    /// The persisted form with its emission time (PROTOCOL §7).
    pub fn logged(self, ts: f64) -> LoggedNotification {
        LoggedNotification {
            ts,
            id: self.id,
            name: self.name,
            data: self.data,
        }
    }
}

impl LoggedNotification {
    /// The streamed form, without `ts`.
    pub fn notification(self) -> Notification {
        Notification {
            id: self.id,
            name: self.name,
            data: self.data,
        }
    }
}

/// The message a lagging stream consumer receives: `{"name": "lagged", "data":
/// {"dropped": N}}`. It concerns no device, so unlike [`Notification`] it has no
/// `id` (PROTOCOL §5).
pub fn lagged_message(dropped: u64) -> Value {
    let mut data = Map::new();
    data.insert("dropped".into(), Value::from(dropped));
    let mut message = Map::new();
    message.insert("name".into(), Value::from(LAGGED));
    message.insert("data".into(), Value::Object(data));
    Value::Object(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wire_shape_of_protocol_5() {
        let n = Notification::rpc_out("abc", "Log", json!({"fd": 1, "data": "hi"}));
        assert_eq!(
            serde_json::to_value(&n).expect("serialisable"),
            json!({"id": "abc", "name": "rpc.out.Log", "data": {"fd": 1, "data": "hi"}})
        );
        assert_eq!(
            Notification::rpc_in("abc", "Sys.Reboot", json!(null)).name,
            "rpc.in.Sys.Reboot"
        );
        assert_eq!(
            serde_json::to_string(&Notification::online("d1")).expect("serialisable"),
            r#"{"id":"d1","name":"online","data":null}"#
        );
        assert_eq!(Notification::offline("d1").name, OFFLINE);
        assert_eq!(Notification::deleted("d1").data, json!({"id": "d1"}));
    }

    #[test]
    fn logged_form_puts_ts_first() {
        // PROTOCOL §7: {"ts", "id", "name", "data"} per line.
        let logged =
            Notification::new("d1", UPDATED, json!({"name": "lamp"})).logged(1700000000.25);
        assert_eq!(
            serde_json::to_string(&logged).expect("serialisable"),
            r#"{"ts":1700000000.25,"id":"d1","name":"updated","data":{"name":"lamp"}}"#
        );
        let back: LoggedNotification = serde_json::from_str(
            r#"{"data":{"name":"lamp"},"name":"updated","id":"d1","ts":1700000000.25}"#,
        )
        .expect("valid");
        assert_eq!(back, logged);
        assert_eq!(
            back.notification(),
            Notification::new("d1", UPDATED, json!({"name": "lamp"}))
        );
    }

    #[test]
    fn missing_data_reads_as_null() {
        let n: Notification = serde_json::from_str(r#"{"id":"d","name":"online"}"#).expect("valid");
        assert_eq!(n.data, Value::Null);
        let l: LoggedNotification =
            serde_json::from_str(r#"{"ts":1,"id":"d","name":"offline"}"#).expect("valid");
        assert_eq!(l.data, Value::Null);
        assert_eq!(l.ts, 1.0);
    }

    #[test]
    fn lagged_message_has_no_device_id() {
        // PROTOCOL §5: {"name": "lagged", "data": {"dropped": N}}.
        assert_eq!(
            lagged_message(12),
            json!({"name": "lagged", "data": {"dropped": 12}})
        );
    }
}
