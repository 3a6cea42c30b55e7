//! A device is created (PROTOCOL §6 `POST /devices`): stored with a fresh token (kept only
//! hashed) and announced as `created` (§5).

use protocol::notification::CREATED;

use crate::hub::Identity;
use crate::store::{self, DeviceRecord, StoreError, User};
use crate::{auth, clock, AppState};

/// Creates device `id` named `name` for `owner`; returns it with its token, shown once.
pub async fn run(
    state: &AppState,
    owner: &User,
    id: String,
    name: String,
) -> Result<(DeviceRecord, String), StoreError> {
    let state = state.clone();
    let owner = owner.id.clone();
    super::carry_out(async move {
        let _turn = state.sequencer.turn(&id).await;
        let token = auth::new_secret();
        let device = state
            .store
            .create_device(store::NewDevice {
                name,
                id,
                user_id: owner,
                token_hash: auth::hash_secret(&token),
                created_at: clock::now(),
            })
            .await?;
        state.hub.emit(
            &Identity::of(&device),
            CREATED,
            &state.device_object(&device, None),
        );
        state.settle().await;
        Ok((device, token))
    })
    .await
}
