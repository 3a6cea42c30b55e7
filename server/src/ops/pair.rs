//! A customer pairs a device with the password on its label (`POST /devices/:id/pair`,
//! the customer app at `/app/`): the device is shared with the customer (PROTOCOL §11:
//! they may read it, switch it through `desired` and call its RPCs, never update its
//! firmware), optionally renamed, and announced as `updated` (§5). The password is the
//! device's token, so only someone who holds the device (or its label) can pair it.

use crate::store::{shared_contains, DeviceRecord, StoreError};
use crate::AppState;

/// Adds `user_id` to the users device `id` is shared with (unless it owns it) and sets
/// its name when given, in the device's turn so concurrent pairings all land.
pub async fn run(
    state: &AppState,
    id: &str,
    user_id: &str,
    name: Option<String>,
) -> Result<DeviceRecord, StoreError> {
    let (state, id, user_id) = (state.clone(), id.to_string(), user_id.to_string());
    super::carry_out(async move {
        let _turn = state.sequencer.turn(&id).await;
        let device = state
            .store
            .device(&id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("device {id}")))?;
        let shared_with = (device.user_id != user_id
            && !shared_contains(&device.shared_with, &user_id))
        .then(|| with(&device.shared_with, &user_id));
        if shared_with.is_none() && name.is_none() {
            return Ok(device);
        }
        super::change::apply(&state, &id, name, shared_with).await
    })
    .await
}

/// `list` with `user` added.
pub fn with(list: &str, user: &str) -> String {
    list.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .chain(std::iter::once(user))
        .collect::<Vec<_>>()
        .join(",")
}

/// `list` without `user`.
pub fn without(list: &str, user: &str) -> String {
    list.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty() && *u != user)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    #[test]
    fn lists() {
        assert_eq!(super::with("", "email_a"), "email_a");
        assert_eq!(super::with("email_b", "email_a"), "email_b,email_a");
        assert_eq!(super::without("email_b,email_a", "email_a"), "email_b");
        assert_eq!(super::without("email_a", "email_a"), "");
        assert_eq!(super::without(" email_ab ,email_a", "email_a"), "email_ab");
    }
}
