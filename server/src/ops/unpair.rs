//! A customer unpairs a device (`POST /devices/:id/unpair`): they are taken off the users
//! it is shared with, lose sight of it at once (its live connection is told, §5), and the
//! change is announced as `updated`.

use crate::store::{shared_contains, DeviceRecord, StoreError};
use crate::AppState;

/// Removes `user_id` from the users device `id` is shared with; `None` when it was not
/// shared with them.
pub async fn run(
    state: &AppState,
    id: &str,
    user_id: &str,
) -> Result<Option<DeviceRecord>, StoreError> {
    let (state, id, user_id) = (state.clone(), id.to_string(), user_id.to_string());
    super::carry_out(async move {
        let _turn = state.sequencer.turn(&id).await;
        let Some(device) = state.store.device(&id).await? else {
            return Ok(None);
        };
        if !shared_contains(&device.shared_with, &user_id) {
            return Ok(None);
        }
        let shared_with = super::pair::without(&device.shared_with, &user_id);
        super::change::apply(&state, &id, None, Some(shared_with))
            .await
            .map(Some)
    })
    .await
}
