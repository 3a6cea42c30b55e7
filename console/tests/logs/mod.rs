//! Hand-written notification log lines (PROTOCOL §7) for the report tests.
#![allow(dead_code)]

use serde_json::{json, Value};

/// 2023-11-14T23:00:00Z, on an hour boundary.
pub const BASE: i64 = 1_700_002_800;

/// One log line `offset` seconds after [`BASE`].
pub fn line(offset: i64, id: &str, name: &str, data: Value) -> String {
    format!(
        "{}\n",
        json!({"ts": BASE + offset, "id": id, "name": name, "data": data})
    )
}

/// The device `id` reporting its light on or off (PROTOCOL §4.4).
pub fn light(offset: i64, id: &str, on: bool) -> String {
    line(
        offset,
        id,
        "rpc.out.Dash.Shadow.Update",
        json!({"state": {"reported": {"on": on}}}),
    )
}
