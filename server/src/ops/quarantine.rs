//! A device is held off for misbehaving (see [`crate::guard`]): quarantined for the
//! configured cool-down, its connection closed, and `quarantined` announced (PROTOCOL §5:
//! clients ignore names they do not know).

use std::time::Duration;

use protocol::json;

use crate::guard::Quarantine;
use crate::hub::Identity;
use crate::registry::Out;
use crate::AppState;

/// The name of the event (id = device id, data `{"reason", "until"}`).
pub const QUARANTINED: &str = "quarantined";

/// Quarantines device `id` because it `reason`s.
pub fn run(state: &AppState, id: &str, reason: &str) -> Quarantine {
    let held = state
        .guard
        .quarantine(id, reason, Duration::from_secs(state.settings.quarantine_s));
    tracing::warn!(device = id, reason, "device quarantined");
    let identity = match state.registry.get(id) {
        Some(conn) => {
            conn.push(Out::Close(format!("quarantined: {reason}")));
            conn.identity()
        }
        None => Identity {
            id: id.into(),
            owner: "".into(),
            shared_with: "".into(),
        },
    };
    state.hub.emit(
        &identity,
        QUARANTINED,
        &json!({"reason": reason, "until": crate::clock::rfc3339(held.until_unix)}),
    );
    held
}
