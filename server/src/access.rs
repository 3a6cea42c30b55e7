//! Who may do what (PROTOCOL §4.4, §6, §10, §11), in one place.
//!
//! A device's owner and the administrator may do everything with it; a user the device is
//! shared with may read it, write its `desired` state and call its RPCs, except for what
//! changes its firmware: `desired.ota`, `OTA.*` calls and firmware pushes. Firmware images
//! belong to the users who uploaded them; rollouts to their creator. Refusals are 403 with
//! a message that says what was needed; things a caller may not even see are 404, so ids of
//! other tenants do not leak.

use protocol::filter::{Field, Subject};
use protocol::notification::SERVER_STARTED;
use protocol::rest::Scope;
use protocol::shadow::Update;
use protocol::Value;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::store::{DeviceRecord, RolloutRecord, User};

/// A device as filters see it: the console's filter language (`protocol::filter`) for
/// keys limited to some devices and for rollout selectors.
pub struct DeviceFacts<'a> {
    pub device: &'a DeviceRecord,
    pub online: bool,
}

/// A text of the device's info, or of `reported.ota` when the info lacks it.
pub fn info_text<'a>(device: &'a DeviceRecord, key: &str) -> &'a str {
    device
        .info
        .get(key)
        .and_then(Value::as_str)
        .or_else(|| {
            let ota = device.shadow.reported.get("ota")?;
            ota.get(key).and_then(Value::as_str)
        })
        .unwrap_or_default()
}

impl Subject for DeviceFacts<'_> {
    fn text(&self, field: Field) -> &str {
        match field {
            Field::Id => &self.device.id,
            Field::Name => &self.device.name,
            Field::App => info_text(self.device, "app"),
            Field::Arch => info_text(self.device, "arch"),
            Field::Firmware => info_text(self.device, "fw_version"),
            _ => "",
        }
    }
    fn online(&self) -> bool {
        self.online
    }
    fn light(&self) -> Option<bool> {
        self.device
            .shadow
            .reported
            .get("on")
            .and_then(Value::as_bool)
    }
    fn delta_pending(&self) -> bool {
        !self.device.shadow.delta().is_empty()
    }
}

/// The prefix of the RPC methods that change a device's firmware (PROTOCOL §8).
pub const OTA_METHOD_PREFIX: &str = protocol::methods::OTA_PREFIX;

/// Whether `user` may see a device of `owner` shared with the comma-separated
/// `shared_with` (PROTOCOL §5, §6): the owner, those it is shared with, the admin. Every
/// check of who sees a device (REST, notify stream, logs, sockets) comes down to this.
pub fn may_see(user: &User, owner: &str, shared_with: &str) -> bool {
    user.admin || owner == user.id || crate::store::shared_contains(shared_with, &user.id)
}

/// Whether a line of the notification log may be served to a caller who sees the devices
/// in `visible` (PROTOCOL §7, §11): the lines of those devices, and the server's own
/// `server.started` markers, which name no device and carry nothing about one.
pub fn may_read_log_line(visible: &std::collections::HashSet<String>, line: &Value) -> bool {
    match line.get("id").and_then(Value::as_str) {
        Some("") => line.get("name").and_then(Value::as_str) == Some(SERVER_STARTED),
        Some(id) => visible.contains(id),
        None => false,
    }
}

/// Renaming, sharing and deleting are for the owner (or the admin).
pub fn require_owner(user: &User, device: &DeviceRecord) -> Result<(), ApiError> {
    if is_owner(user, device) {
        Ok(())
    } else {
        Err(ApiError::forbidden("only the device's owner may do this"))
    }
}

/// A device's name is for its owner, the admin, and the users it is shared with (the
/// customers who paired it name their own lights); sharing and deleting stay the owner's.
pub fn require_rename(user: &User, device: &DeviceRecord) -> Result<(), ApiError> {
    if is_owner(user, device) || crate::store::shared_contains(&device.shared_with, &user.id) {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "only the device's owner or a user it is shared with may rename it",
        ))
    }
}

fn is_owner(user: &User, device: &DeviceRecord) -> bool {
    user.admin || device.user_id == user.id
}

/// Pushing firmware, writing `desired.ota` and calling `OTA.*` (PROTOCOL §4.4, §11): the
/// device's owner or the admin, with a key whose scope includes `deploy`.
pub fn require_deploy(caller: &Caller, device: &DeviceRecord) -> Result<(), ApiError> {
    caller.require(Scope::Deploy)?;
    if is_owner(&caller.user, device) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "changing the firmware of device {} needs its owner or the administrator",
            device.id
        )))
    }
}

/// A shadow update that writes `desired.ota` needs deploy rights; the update is refused
/// whole (PROTOCOL §4.4).
pub fn check_shadow_update(
    caller: &Caller,
    device: &DeviceRecord,
    update: &Update,
) -> Result<(), ApiError> {
    caller.require(Scope::Operate)?;
    let touches_ota = update
        .desired
        .as_ref()
        .is_some_and(|desired| desired.contains_key("ota"));
    if touches_ota {
        require_deploy(caller, device).map_err(|e| {
            ApiError::forbidden(format!(
                "writing desired.ota needs the device's owner or the administrator with a deploy key (PROTOCOL §4.4): {}",
                e.message
            ))
        })?;
    }
    Ok(())
}

/// An RPC through the proxy: `operate`, and `OTA.*` needs deploy rights (PROTOCOL §11).
pub fn check_rpc(caller: &Caller, device: &DeviceRecord, method: &str) -> Result<(), ApiError> {
    caller.require(Scope::Operate)?;
    if method.starts_with(OTA_METHOD_PREFIX) {
        require_deploy(caller, device).map_err(|e| {
            ApiError::forbidden(format!(
                "{method} changes the firmware and needs the device's owner or the administrator with a deploy key: {}",
                e.message
            ))
        })?;
    }
    Ok(())
}

/// Whether `user` may see a firmware image, given the users it belongs to.
pub fn can_see_firmware(user: &User, owners: &[String]) -> bool {
    user.admin || owners.contains(&user.id)
}

/// Whether a device may download a firmware image that belongs to `owners`: the image is
/// its owner's, or an update of that device with this image is under way (an
/// administrator's rollout to other users' devices).
pub fn device_may_fetch(device: &DeviceRecord, owners: &[String], update_under_way: bool) -> bool {
    update_under_way || owners.contains(&device.user_id)
}

/// Whether `user` may see and steer a rollout.
pub fn can_see_rollout(user: &User, rollout: &RolloutRecord) -> bool {
    user.admin || rollout.created_by == user.id
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::json;
    use protocol::shadow::Shadow;

    fn user(id: &str, admin: bool) -> User {
        User {
            id: id.into(),
            name: id.into(),
            admin,
            created_at: 0.0,
        }
    }

    fn device() -> DeviceRecord {
        DeviceRecord {
            id: "d1".into(),
            name: "lamp".into(),
            user_id: "email_ann".into(),
            shared_with: "email_bob".into(),
            created_at: 0.0,
            last_seen: None,
            info: json!({}),
            shadow: Shadow::default(),
        }
    }

    #[test]
    fn shared_users_may_operate_but_not_deploy() {
        let (ann, bob, root) = (
            Caller::full(user("email_ann", false)),
            Caller::full(user("email_bob", false)),
            Caller::full(user("email_root", true)),
        );
        let d = device();
        let plain = Update::from_value(&json!({"state": {"desired": {"on": true}}})).unwrap();
        let ota =
            Update::from_value(&json!({"state": {"desired": {"ota": {"url": "x"}}}})).unwrap();
        assert!(check_shadow_update(&bob, &d, &plain).is_ok());
        let refused = check_shadow_update(&bob, &d, &ota).unwrap_err();
        assert_eq!(refused.status.as_u16(), 403);
        assert!(
            refused.message.contains("desired.ota"),
            "{}",
            refused.message
        );
        assert!(check_shadow_update(&ann, &d, &ota).is_ok());
        assert!(check_shadow_update(&root, &d, &ota).is_ok());
        assert!(check_rpc(&bob, &d, "Sys.GetInfo").is_ok());
        assert_eq!(
            check_rpc(&bob, &d, "OTA.Begin")
                .unwrap_err()
                .status
                .as_u16(),
            403
        );
        assert!(check_rpc(&ann, &d, "OTA.Commit").is_ok());
        assert!(require_deploy(&bob, &d).is_err());
        assert!(require_owner(&root.user, &d).is_ok());
    }

    #[test]
    fn scopes_limit_what_even_the_owner_may_do() {
        let d = device();
        let key = |scope: Scope| Caller {
            scope,
            ..Caller::full(user("email_ann", false))
        };
        let plain = Update::from_value(&json!({"state": {"desired": {"on": true}}})).unwrap();
        let ota =
            Update::from_value(&json!({"state": {"desired": {"ota": {"url": "x"}}}})).unwrap();
        let read = key(Scope::Read);
        let refused = check_shadow_update(&read, &d, &plain).unwrap_err();
        assert_eq!(refused.status.as_u16(), 403);
        assert!(
            refused.message.contains("scope operate"),
            "{}",
            refused.message
        );
        assert!(check_rpc(&read, &d, "Sys.GetInfo").is_err());
        let operate = key(Scope::Operate);
        assert!(check_shadow_update(&operate, &d, &plain).is_ok());
        assert!(check_shadow_update(&operate, &d, &ota).is_err());
        assert!(check_rpc(&operate, &d, "Config.Get").is_ok());
        assert!(check_rpc(&operate, &d, "OTA.Update").is_err());
        let deploy = key(Scope::Deploy);
        assert!(check_shadow_update(&deploy, &d, &ota).is_ok());
        assert!(require_deploy(&deploy, &d).is_ok());
        // A limited key sees only what its filter matches.
        let lamps = Caller {
            devices: Some(protocol::filter::Filter::parse("name:lamp*")),
            ..key(Scope::Read)
        };
        assert!(lamps.sees(&d, true));
        let kitchen = DeviceRecord {
            name: "kitchen".into(),
            ..device()
        };
        assert!(!lamps.sees(&kitchen, true));
    }

    #[test]
    fn log_lines_are_served_for_visible_devices_and_server_markers_only() {
        let visible: std::collections::HashSet<String> = ["lamp".to_string()].into();
        let line = |id: &str, name: &str| json!({"ts": 1.0, "id": id, "name": name, "data": null});
        assert!(may_read_log_line(&visible, &line("lamp", "online")));
        assert!(!may_read_log_line(&visible, &line("other", "online")));
        assert!(may_read_log_line(&visible, &line("", SERVER_STARTED)));
        // An empty id is not a wildcard for other names.
        assert!(!may_read_log_line(&visible, &line("", "online")));
        assert!(!may_read_log_line(
            &visible,
            &json!({"ts": 1.0, "name": "online"})
        ));
    }
}
