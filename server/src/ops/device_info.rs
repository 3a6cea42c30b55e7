//! The device's own description (PROTOCOL §3): the `Sys.GetInfo` answer asked for on
//! connect, stored as `info` and announced as `updated`.

use std::sync::Arc;

use protocol::Value;
use tokio::sync::oneshot;

use crate::registry::{CallError, DeviceConn};
use crate::AppState;

/// Awaits the `Sys.GetInfo` reply of `request_id` on `conn`, stores it and announces it.
pub async fn fetch(
    state: AppState,
    conn: Arc<DeviceConn>,
    request_id: u64,
    reply: oneshot::Receiver<Result<Value, CallError>>,
) {
    let id = conn.identity().id.to_string();
    let info = match super::call::finish(&conn, request_id, reply, state.rpc_timeout()).await {
        Ok(info @ Value::Object(_)) => info,
        Ok(other) => {
            tracing::debug!(device = %id, result = %other, "Sys.GetInfo returned a non-object");
            return;
        }
        Err(e) => {
            tracing::debug!(device = %id, error = ?e, "Sys.GetInfo failed");
            return;
        }
    };
    let _turn = state.sequencer.turn(&id).await;
    if let Err(e) = state.store.set_info(&id, info).await {
        tracing::warn!(device = %id, error = %e, "cannot store device info");
        return;
    }
    // Set after the write: whoever sees the flag reads this info (see `ota::observe`).
    conn.note_info();
    if let Ok(Some(device)) = state.store.device(&id).await {
        state.emit_updated(&device);
    }
}
