//! A device's connection ends (PROTOCOL §3): calls waiting on it fail, it goes offline
//! (`offline`), `last_seen` is stored and the device's state goes out as `updated` — unless
//! a newer connection of the same device took over first.

use protocol::notification::OFFLINE;
use protocol::Value;

use crate::registry::DeviceConn;
use crate::{clock, AppState};

/// Carries out the end of connection `conn`.
pub async fn run(state: &AppState, conn: &DeviceConn) {
    conn.fail_pending();
    let id = conn.identity().id;
    let _turn = state.sequencer.turn(&id).await;
    let removed = state.registry.remove(&id, conn.conn_id, |conn| {
        // Under the registry lock: a device reconnecting right away cannot have its new
        // `online` overtaken by this connection's `offline`.
        state.hub.emit(&conn.identity(), OFFLINE, &Value::Null);
    });
    if !removed {
        return;
    }
    if let Some(cluster) = &state.cluster {
        cluster.note_remote_offline(&id);
        cluster.release(&id, conn.conn_id).await;
    }
    if let Err(e) = state.store.set_last_seen(&id, clock::now()).await {
        tracing::warn!(device = %id, error = %e, "cannot record last_seen");
    }
    // Skip the trailing `updated` if the device is already back: it would say offline.
    if !state.registry.is_online(&id) {
        if let Ok(Some(device)) = state.store.device(&id).await {
            state.emit_updated(&device);
        }
    }
}
