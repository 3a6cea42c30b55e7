//! An operator lets a quarantined device back in (`POST /devices/:id/release`), announced
//! as `released`.

use protocol::Value;

use crate::hub::Identity;
use crate::store::DeviceRecord;
use crate::AppState;

/// The name of the event (id = device id).
pub const RELEASED: &str = "released";

/// Lifts the quarantine of `device`; false when it had none.
pub fn run(state: &AppState, device: &DeviceRecord) -> bool {
    let released = state.guard.release(&device.id);
    if released {
        state
            .hub
            .emit(&Identity::of(device), RELEASED, &Value::Null);
    }
    released
}
