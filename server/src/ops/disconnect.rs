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
    ended(state, &id).await;
}

/// Carries out the end of sessions a cluster node that is gone held (PROTOCOL §3): each
/// device not connected here now goes offline, as [`run`] does for a session that ends
/// here. The caller adopted the sessions as orphans in the store; one whose device has
/// connected again since (on any node) is announced by that connection instead, so each
/// end is announced exactly once.
pub async fn elsewhere(state: &AppState, ids: &[String]) {
    for id in ids {
        let _turn = state.sequencer.turn(id).await;
        if state.registry.is_online(id) {
            continue;
        }
        // A device back on any node since took the session over and announces its end.
        if let Some(cluster) = &state.cluster {
            if !cluster.release_orphan(id).await {
                continue;
            }
        }
        let Ok(Some(device)) = state.store.device(id).await else {
            continue;
        };
        state
            .hub
            .emit(&crate::hub::Identity::of(&device), OFFLINE, &Value::Null);
        ended(state, id).await;
    }
}

/// What follows `offline`: `last_seen` stored and the device's state out as `updated`,
/// unless the device is already back (the `updated` would say offline).
async fn ended(state: &AppState, id: &str) {
    if let Err(e) = state.store.set_last_seen(id, clock::now()).await {
        tracing::warn!(device = %id, error = %e, "cannot record last_seen");
    }
    if !state.registry.is_online(id) {
        if let Ok(Some(device)) = state.store.device(id).await {
            state.emit_updated(&device);
        }
    }
}
