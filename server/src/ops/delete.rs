//! A device is deleted (PROTOCOL §6 `DELETE /devices/:id`): removed from the store, its
//! connection closed, and announced as `deleted` (§5).

use protocol::json;
use protocol::notification::DELETED;

use crate::hub::Identity;
use crate::registry::Out;
use crate::store::{DeviceRecord, StoreError};
use crate::AppState;

/// Deletes `device`; false when it was already gone.
pub async fn run(state: &AppState, device: &DeviceRecord) -> Result<bool, StoreError> {
    let state = state.clone();
    let device = device.clone();
    super::carry_out(async move {
        let _turn = state.sequencer.turn(&device.id).await;
        if !state.store.delete_device(&device.id).await? {
            return Ok(false);
        }
        if let Some(conn) = state.registry.get(&device.id) {
            conn.push(Out::Close("device deleted".into()));
        } else if let Some(cluster) = &state.cluster {
            let request = crate::cluster::route::Request::Close {
                device: device.id.clone(),
                reason: "device deleted".into(),
            };
            cluster.tell_owner(&device.id, request).await;
        }
        state
            .hub
            .emit(&Identity::of(&device), DELETED, &json!({ "id": device.id }));
        state.settle().await;
        Ok(true)
    })
    .await
}
