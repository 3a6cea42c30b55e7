//! A device is renamed or shared (PROTOCOL §6 `POST /devices/:id`): stored, its live
//! connection told who sees its events now, and announced as `updated` (§5).

use crate::hub::Identity;
use crate::store::{DeviceRecord, StoreError};
use crate::AppState;

/// Sets the name and/or the comma-separated `shared_with` list of device `id`.
pub async fn run(
    state: &AppState,
    id: &str,
    name: Option<String>,
    shared_with: Option<String>,
) -> Result<DeviceRecord, StoreError> {
    let state = state.clone();
    let id = id.to_string();
    super::carry_out(async move {
        let _turn = state.sequencer.turn(&id).await;
        apply(&state, &id, name, shared_with).await
    })
    .await
}

/// Stores the change, tells the device's live connection who sees its events now, and
/// announces it. The caller holds the device's turn.
pub(super) async fn apply(
    state: &AppState,
    id: &str,
    name: Option<String>,
    shared_with: Option<String>,
) -> Result<DeviceRecord, StoreError> {
    let device = state
        .store
        .update_device_meta(id, name, shared_with)
        .await?;
    if let Some(conn) = state.registry.get(id) {
        conn.set_identity(Identity::of(&device));
    } else if let Some(cluster) = &state.cluster {
        let request = crate::cluster::route::Request::Identity {
            device: id.to_string(),
            owner: device.user_id.clone(),
            shared_with: device.shared_with.clone(),
        };
        cluster.tell_owner(id, request).await;
    }
    state.emit_updated(&device);
    state.settle().await;
    Ok(device)
}
