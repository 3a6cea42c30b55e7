//! What an API key lets the console do (PROTOCOL §11), in one place.
//!
//! Every action of the console that changes something on the server is an [`Operation`],
//! and [`Operation::needs`] says which key scope it takes: `read` for looking, `operate`
//! for shadow writes (but `desired.ota`), RPC calls (but `OTA.*`) and creating or renaming
//! devices, `deploy` for firmware, one-device pushes, `desired.ota`, `OTA.*`, rollouts and
//! deleting devices, `admin` for users and keys. The console greys out what the key in use
//! may not do and explains the scope instead of calling the server; the server has the
//! last word either way.
//!
//! ```
//! use herd_client::Scope;
//! use herd_console::access::Operation;
//!
//! assert_eq!(Operation::of_call("Sys.Reboot").needs(), Scope::Operate);
//! assert_eq!(Operation::of_call("OTA.Update").needs(), Scope::Deploy);
//! let ota = serde_json::json!({"ota": {"url": "/x"}});
//! assert_eq!(Operation::of_desired(&ota).needs(), Scope::Deploy);
//! assert!(Operation::DeleteDevice.allowed(Some(Scope::Deploy)));
//! assert!(!Operation::DeleteDevice.allowed(Some(Scope::Operate)));
//! assert!(Operation::DeleteDevice.allowed(None), "an unknown scope is the server's call");
//! ```

use herd_client::Scope;
use serde_json::Value;

/// The key of `desired` that starts a firmware update (PROTOCOL §4.4, §10.3).
const DESIRED_OTA: &str = "ota";

/// Something the console asks of the server beyond reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// A §4.1 update of `desired` that leaves `desired.ota` alone.
    SetDesired,
    /// Writing `desired.ota`.
    SetDesiredOta,
    /// An RPC call through the server, but `OTA.*`.
    Call,
    /// An `OTA.*` call.
    CallOta,
    CreateDevice,
    RenameDevice,
    DeleteDevice,
    /// `POST /devices/:id/ota`.
    PushFirmware,
    /// Uploading or deleting firmware images.
    Firmware,
    /// Creating, starting, pausing, resuming, aborting and retrying rollouts.
    Rollout,
    /// Other users' keys and adding users.
    Users,
}

impl Operation {
    /// The scope a key needs for this (PROTOCOL §11).
    pub fn needs(self) -> Scope {
        match self {
            Operation::SetDesired
            | Operation::Call
            | Operation::CreateDevice
            | Operation::RenameDevice => Scope::Operate,
            Operation::SetDesiredOta
            | Operation::CallOta
            | Operation::DeleteDevice
            | Operation::PushFirmware
            | Operation::Firmware
            | Operation::Rollout => Scope::Deploy,
            Operation::Users => Scope::Admin,
        }
    }

    /// Calling `method`.
    pub fn of_call(method: &str) -> Operation {
        if method.starts_with(protocol::methods::OTA_PREFIX) {
            Operation::CallOta
        } else {
            Operation::Call
        }
    }

    /// Merging `desired` (the object that goes under `state.desired`).
    pub fn of_desired(desired: &Value) -> Operation {
        if desired.get(DESIRED_OTA).is_some() {
            Operation::SetDesiredOta
        } else {
            Operation::SetDesired
        }
    }

    /// Whether a key of `scope` may do this; an unknown scope (an older server) may, and
    /// the server decides.
    pub fn allowed(self, scope: Option<Scope>) -> bool {
        scope.is_none_or(|scope| scope >= self.needs())
    }

    /// Why a key of `scope` may not do `what`.
    pub fn refusal(self, what: &str, scope: Scope) -> String {
        format!(
            "cannot {what}: it needs an API key with scope {} or more; this key's scope is {}",
            self.needs().as_str(),
            scope.as_str()
        )
    }
}

/// The palette command `name` (canonical, see `tui::palette::resolve`) and what it asks of
/// the server; `None` for commands that only look.
pub fn palette_command(name: &str) -> Option<Operation> {
    match name {
        "set" => Some(Operation::SetDesired),
        "call" => Some(Operation::Call),
        "delete" => Some(Operation::DeleteDevice),
        "rename" => Some(Operation::RenameDevice),
        _ => None,
    }
}

/// What a keymap action asks of the server; `None` for actions that only look.
pub fn key_action(action: crate::tui::keymap::Action) -> Option<Operation> {
    use crate::tui::keymap::Action;
    match action {
        Action::Edit | Action::EditExternal => Some(Operation::SetDesired),
        Action::Call => Some(Operation::Call),
        Action::Delete => Some(Operation::DeleteDevice),
        Action::Push => Some(Operation::PushFirmware),
        Action::NewRollout
        | Action::RolloutNew
        | Action::RolloutStart
        | Action::RolloutPause
        | Action::RolloutResume
        | Action::RolloutAbort
        | Action::RolloutRetry => Some(Operation::Rollout),
        Action::Flash => Some(Operation::CreateDevice),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_scopes_of_protocol_section_11() {
        let operate = [
            Operation::SetDesired,
            Operation::Call,
            Operation::CreateDevice,
            Operation::RenameDevice,
        ];
        for op in operate {
            assert_eq!(op.needs(), Scope::Operate, "{op:?}");
            assert!(!op.allowed(Some(Scope::Read)));
            assert!(op.allowed(Some(Scope::Operate)));
        }
        let deploy = [
            Operation::SetDesiredOta,
            Operation::CallOta,
            Operation::DeleteDevice,
            Operation::PushFirmware,
            Operation::Firmware,
            Operation::Rollout,
        ];
        for op in deploy {
            assert_eq!(op.needs(), Scope::Deploy, "{op:?}");
            assert!(!op.allowed(Some(Scope::Operate)));
            assert!(op.allowed(Some(Scope::Admin)));
        }
        assert!(!Operation::Users.allowed(Some(Scope::Deploy)));
        assert_eq!(
            Operation::of_desired(&json!({"on": true})),
            Operation::SetDesired
        );
        assert_eq!(
            Operation::of_desired(&json!({"ota": null})),
            Operation::SetDesiredOta
        );
        assert_eq!(Operation::of_call("OTA.Begin"), Operation::CallOta);
        assert_eq!(Operation::of_call("Sys.GetInfo"), Operation::Call);
        let message = Operation::CallOta.refusal("call OTA.Begin", Scope::Operate);
        assert!(message.contains("scope deploy"), "{message}");
        assert!(message.contains("this key's scope is operate"), "{message}");
    }
}
