//! A shadow update (PROTOCOL §4.1), from REST or from the device itself: commit, then
//! `updated` (§5), then the delta offered to the device if it is online (§4.3). See
//! [`crate::ops`] for the order and completeness every operation keeps.

use protocol::shadow::Update;

use crate::registry::Out;
use crate::store::{DeviceRecord, StoreError};
use crate::{clock, AppState};

/// Applies `update` to device `id` and carries out its effects, in commit order, whether
/// or not the caller still waits.
pub async fn run(state: &AppState, id: &str, update: Update) -> Result<DeviceRecord, StoreError> {
    // In a cluster, the node holding the device applies it, in the device's turn there.
    if let Some(cluster) = state
        .cluster
        .as_ref()
        .filter(|_| !state.registry.is_online(id))
    {
        if let Some(applied) = cluster.update_shadow(id, &update).await {
            applied?;
            return state
                .store
                .device(id)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("device {id}")));
        }
    }
    let state = state.clone();
    let id = id.to_string();
    super::carry_out(async move { apply(&state, &id, update).await }).await
}

/// [`run`] for the device's own session, on the node holding its socket: the session
/// awaits its requests to the end and nothing cuts it short, so the operation needs no
/// task of its own (one spawn and one wake fewer per update).
pub async fn run_in_session(
    state: &AppState,
    id: &str,
    update: Update,
) -> Result<DeviceRecord, StoreError> {
    apply(state, id, update).await
}

/// The operation itself: commit, `updated`, delta, in the device's turn.
async fn apply(state: &AppState, id: &str, update: Update) -> Result<DeviceRecord, StoreError> {
    let _turn = state.sequencer.turn(id).await;
    let change = state
        .store
        .update_shadow(id, update, clock::now(), state.limits)
        .await?;
    let device = change.device;
    state.emit_updated(&device);
    let delta = device.shadow.delta();
    if !delta.is_empty() {
        if let Some(conn) = state.registry.get(id) {
            conn.push(Out::Delta {
                delta,
                version: device.shadow.version,
                timestamp: device.shadow.timestamp,
                desired_changed: change.applied.desired_changed,
            });
        } else if let Some(cluster) = &state.cluster {
            let request = crate::cluster::route::Request::Delta {
                device: id.to_string(),
                delta,
                version: device.shadow.version,
                timestamp: device.shadow.timestamp,
                desired_changed: change.applied.desired_changed,
            };
            cluster.tell_owner(id, request).await;
        }
    }
    state.settle().await;
    Ok(device)
}
