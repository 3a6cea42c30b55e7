//! RPC method names that have a meaning in the protocol (PROTOCOL §3, §4.3, §6, §8, §9).
//!
//! Devices expose many more; these are the ones the cloud sends or handles itself.

/// Device to cloud: apply a shadow update (PROTOCOL §3).
pub const SHADOW_UPDATE: &str = "Dash.Shadow.Update";
/// Device to cloud: fetch the shadow with its delta (PROTOCOL §3).
pub const SHADOW_GET: &str = "Dash.Shadow.Get";
/// Device to cloud: periodic device info (PROTOCOL §3).
pub const HEARTBEAT: &str = "Dash.Heartbeat";
/// Device to cloud: log line (PROTOCOL §3).
pub const LOG: &str = "Log";
/// Legacy name of [`LOG`] (PROTOCOL §3).
pub const LOG_LEGACY: &str = "Dash.Log";
/// Cloud to device: push of the shadow delta (PROTOCOL §4.3).
pub const SHADOW_DELTA: &str = "Shadow.Delta";
/// Per-device RPC socket: subscribe to that device's notifications (PROTOCOL §6).
pub const CONSOLE_SUBSCRIBE: &str = "Dash.Console.Subscribe";
/// Per-device RPC socket: a pushed notification (PROTOCOL §6).
pub const CONSOLE_EVENT: &str = "Dash.Console.Event";

/// Device info, called once on connect (PROTOCOL §3, §9).
pub const SYS_GET_INFO: &str = "Sys.GetInfo";
/// Reboot the device (PROTOCOL §9).
pub const SYS_REBOOT: &str = "Sys.Reboot";
/// List the device's RPC methods (PROTOCOL §9).
pub const RPC_LIST: &str = "RPC.List";
/// Read configuration (PROTOCOL §9).
pub const CONFIG_GET: &str = "Config.Get";
/// Change configuration (PROTOCOL §9).
pub const CONFIG_SET: &str = "Config.Set";
/// Persist configuration (PROTOCOL §9).
pub const CONFIG_SAVE: &str = "Config.Save";

/// The prefix of the methods that change a device's firmware, which need a `deploy` key
/// (PROTOCOL §8, §11).
pub const OTA_PREFIX: &str = "OTA.";
/// Start a firmware upload (PROTOCOL §8).
pub const OTA_BEGIN: &str = "OTA.Begin";
/// Write one base64 chunk of firmware (PROTOCOL §8).
pub const OTA_WRITE: &str = "OTA.Write";
/// Finish the upload; the device reboots uncommitted (PROTOCOL §8).
pub const OTA_END: &str = "OTA.End";
/// Query the update state (PROTOCOL §8).
pub const OTA_STATUS: &str = "OTA.Status";
/// Keep the new image (PROTOCOL §8).
pub const OTA_COMMIT: &str = "OTA.Commit";
/// Go back to the previous image (PROTOCOL §8).
pub const OTA_REVERT: &str = "OTA.Revert";
/// Let the device download firmware from a URL (PROTOCOL §8).
pub const OTA_UPDATE: &str = "OTA.Update";
