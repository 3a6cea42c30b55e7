//! Firmware, OTA jobs and rollouts on the wire (PROTOCOL §10): the firmware object of the
//! store (§10.1), the rollout spec and the rollout object with its per-device states
//! (§10.5), and the names and bodies of the `ota.*` and `rollout.*` events (§10.6).
//!
//! The server, the console and the analytics all read these types, so a field renamed
//! here is renamed everywhere at once.

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `ota.begin {"firmware", "version", "size", "rollout"?}` (PROTOCOL §10.6).
pub const OTA_BEGIN: &str = "ota.begin";
/// `ota.progress {"firmware", "percent"}`, at most every 10 % (PROTOCOL §10.6).
pub const OTA_PROGRESS: &str = "ota.progress";
/// `ota.success {"firmware", "version", "seconds"}` (PROTOCOL §10.6).
pub const OTA_SUCCESS: &str = "ota.success";
/// `ota.failure {"firmware", "stage", "message"}` (PROTOCOL §10.6).
pub const OTA_FAILURE: &str = "ota.failure";
/// `ota.revert {"firmware", "running_version"}` (PROTOCOL §10.6).
pub const OTA_REVERT: &str = "ota.revert";

/// A rollout was created (PROTOCOL §10.6).
pub const ROLLOUT_PLANNED: &str = "rollout.planned";
/// A rollout started (PROTOCOL §10.6).
pub const ROLLOUT_STARTED: &str = "rollout.started";
/// A wave started: `{"wave", "devices"}` (PROTOCOL §10.6).
pub const ROLLOUT_WAVE: &str = "rollout.wave";
/// An operator paused the rollout (PROTOCOL §10.6).
pub const ROLLOUT_PAUSED: &str = "rollout.paused";
/// An operator resumed the rollout (PROTOCOL §10.6).
pub const ROLLOUT_RESUMED: &str = "rollout.resumed";
/// A `halt_when` threshold was crossed: `{"reason"}` (PROTOCOL §10.6).
pub const ROLLOUT_HALTED: &str = "rollout.halted";
/// An operator aborted the rollout (PROTOCOL §10.6).
pub const ROLLOUT_ABORTED: &str = "rollout.aborted";
/// Every wave is done (PROTOCOL §10.6).
pub const ROLLOUT_COMPLETED: &str = "rollout.completed";

/// Where a device's update failed, the `stage` of `ota.failure` (PROTOCOL §10.6).
pub mod stage {
    /// `OTA.Begin` was refused or the device could not be reached for it.
    pub const BEGIN: &str = "begin";
    /// A chunk could not be written.
    pub const WRITE: &str = "write";
    /// `OTA.End` was refused (the device rejected the image).
    pub const END: &str = "end";
    /// The device was told to fetch the image (`OTA.Update`) and refused or failed.
    pub const DOWNLOAD: &str = "download";
    /// The device did not come back running the new image in time.
    pub const REBOOT: &str = "reboot";
    /// The device came back but `OTA.Commit` failed, or it left during the soak.
    pub const VERIFY: &str = "verify";
    /// The update was abandoned by an operator's abort.
    pub const ABORT: &str = "abort";
}

/// A stored firmware image (PROTOCOL §10.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FirmwareObject {
    /// The image's SHA-256, lowercase hex; the firmware's id.
    pub id: String,
    /// Application name.
    #[serde(default)]
    pub app: String,
    /// Version text.
    #[serde(default)]
    pub version: String,
    /// Platform or architecture the image is for (`esp32c3`, `x86_64`, `sim`).
    #[serde(default)]
    pub platform: String,
    /// Bytes.
    pub size: u64,
    /// Same as `id`; named for clients that look for it.
    pub sha256: String,
    /// Whether a signature was uploaded with the image (PROTOCOL §10.4).
    #[serde(default)]
    pub signed: bool,
    /// The Ed25519 signature over the SHA-256 digest, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// What was uploaded: `raw`, `elf` or `zip` (a Mongoose OS package).
    #[serde(default)]
    pub format: String,
    /// Build id from a package manifest, which Mongoose OS devices report as `fw_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    /// RFC 3339 upload time.
    #[serde(default)]
    pub created_at: String,
    /// User id of the uploader.
    #[serde(default)]
    pub created_by: String,
}

/// Which devices a rollout is for: listed ids, a filter in the console's language, or
/// both (ANDed) (PROTOCOL §10.5).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct Selector {
    /// Device ids.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<String>>,
    /// A filter such as `fw:1.0.0 name:lamp-*` (see [`crate::filter`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

/// One wave: a share of the selected devices and how long to watch them afterwards.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct WaveSpec {
    /// Share of all selected devices, in percent; the waves' shares add up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// A fixed number of devices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Seconds every updated device of the wave must stay healthy before it counts as
    /// succeeded and the next wave may start.
    pub soak_s: u64,
}

/// Thresholds that halt a rollout (PROTOCOL §10.5).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct HaltWhen {
    /// Halt when the failures in a wave reach this share of the wave, in percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_percent: Option<f64>,
    /// Halt when the failures over the whole rollout reach this count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_count: Option<u64>,
}

/// Who commits the new image (PROTOCOL §10.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CommitPolicy {
    /// As soon as the device is back running the new image.
    #[default]
    Device,
    /// Only after the wave's soak: a device that fails during the soak reverts by itself.
    AfterSoak,
}

/// What happens to a device that is offline when its turn comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OfflineThen {
    /// Give up on it (state `skipped`) after `wait_s`.
    #[default]
    Skip,
    /// Keep waiting; the wave does not end without it.
    KeepWaiting,
}

/// The offline policy (PROTOCOL §10.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct OfflinePolicy {
    /// Seconds to wait for an offline device once its turn came.
    pub wait_s: u64,
    /// Then.
    pub then: OfflineThen,
}

impl Default for OfflinePolicy {
    fn default() -> Self {
        OfflinePolicy {
            wait_s: 300,
            then: OfflineThen::Skip,
        }
    }
}

/// How the image reaches a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// The server writes it with `OTA.Begin/Write/End` (PROTOCOL §10.2); every device can.
    #[default]
    Push,
    /// The device fetches it after `OTA.Update` (PROTOCOL §10.3).
    Pull,
}

/// `POST /rollouts` body (PROTOCOL §10.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    /// A name for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Firmware id.
    pub firmware: String,
    /// Devices.
    #[serde(default)]
    pub select: Selector,
    /// Waves, in order; the last one takes whatever the others left. None: one wave.
    #[serde(default)]
    pub waves: Vec<WaveSpec>,
    /// Devices updating at once.
    #[serde(default = "default_max_parallel")]
    pub max_parallel: u32,
    /// Thresholds.
    #[serde(default)]
    pub halt_when: HaltWhen,
    /// Commit policy.
    #[serde(default)]
    pub commit: CommitPolicy,
    /// Offline policy.
    #[serde(default)]
    pub offline: OfflinePolicy,
    /// Push or pull.
    #[serde(default)]
    pub delivery: Delivery,
    /// Seconds a device has to come back and be committed after it took the image.
    #[serde(default = "default_commit_timeout")]
    pub commit_timeout_s: u32,
    /// Only plan: nothing is stored or sent.
    #[serde(default, skip_serializing_if = "core::ops::Not::not")]
    pub dry_run: bool,
}

fn default_max_parallel() -> u32 {
    50
}

fn default_commit_timeout() -> u32 {
    300
}

/// A rollout's state (PROTOCOL §10.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Created, not started.
    Planned,
    /// Waves are running.
    Running,
    /// An operator paused it; devices mid-update finish.
    Paused,
    /// A threshold was crossed; nothing new starts.
    Halted,
    /// An operator aborted it.
    Aborted,
    /// Every wave is done.
    Completed,
}

impl RolloutState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Planned => "planned",
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Halted => "halted",
            RolloutState::Aborted => "aborted",
            RolloutState::Completed => "completed",
        }
    }

    /// Parses the wire name.
    pub fn parse(text: &str) -> Option<RolloutState> {
        [
            RolloutState::Planned,
            RolloutState::Running,
            RolloutState::Paused,
            RolloutState::Halted,
            RolloutState::Aborted,
            RolloutState::Completed,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    /// Whether the rollout has stopped starting devices for good, or until an operator
    /// resumes a halted one.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            RolloutState::Halted | RolloutState::Aborted | RolloutState::Completed
        )
    }
}

/// A device's state within a rollout (PROTOCOL §10.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    /// Its turn has not come, or it is offline and waited for.
    Pending,
    /// The image is being written to it, or it is fetching it.
    Sending,
    /// It took the image and restarts into it.
    Rebooting,
    /// It is back running the new image; watched through the soak.
    Verifying,
    /// Running the new image, committed, healthy through the soak.
    Succeeded,
    /// The update failed before the device switched images.
    Failed,
    /// The device went back to its previous image.
    Reverted,
    /// Not updated: offline past the policy, already running the image, or aborted.
    Skipped,
    /// It did not come back in time.
    TimedOut,
}

impl DeviceState {
    /// Every state, in lifecycle order.
    pub const ALL: [DeviceState; 9] = [
        DeviceState::Pending,
        DeviceState::Sending,
        DeviceState::Rebooting,
        DeviceState::Verifying,
        DeviceState::Succeeded,
        DeviceState::Failed,
        DeviceState::Reverted,
        DeviceState::Skipped,
        DeviceState::TimedOut,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Pending => "pending",
            DeviceState::Sending => "sending",
            DeviceState::Rebooting => "rebooting",
            DeviceState::Verifying => "verifying",
            DeviceState::Succeeded => "succeeded",
            DeviceState::Failed => "failed",
            DeviceState::Reverted => "reverted",
            DeviceState::Skipped => "skipped",
            DeviceState::TimedOut => "timed_out",
        }
    }

    /// Parses the wire name.
    pub fn parse(text: &str) -> Option<DeviceState> {
        DeviceState::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether the device's part in the rollout is over.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            DeviceState::Succeeded
                | DeviceState::Failed
                | DeviceState::Reverted
                | DeviceState::Skipped
                | DeviceState::TimedOut
        )
    }

    /// Whether the state counts against `halt_when`.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            DeviceState::Failed | DeviceState::Reverted | DeviceState::TimedOut
        )
    }

    /// Whether an update is under way on the device.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            DeviceState::Sending | DeviceState::Rebooting | DeviceState::Verifying
        )
    }
}

/// Devices by state; the body of every `rollout.*` event (PROTOCOL §10.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Counters {
    /// All devices of the rollout (or of the wave).
    pub total: u64,
    /// `pending`.
    pub pending: u64,
    /// `sending`.
    pub sending: u64,
    /// `rebooting`.
    pub rebooting: u64,
    /// `verifying`.
    pub verifying: u64,
    /// `succeeded`.
    pub succeeded: u64,
    /// `failed`.
    pub failed: u64,
    /// `reverted`.
    pub reverted: u64,
    /// `skipped`.
    pub skipped: u64,
    /// `timed_out`.
    pub timed_out: u64,
}

impl Counters {
    /// Counts one device in `state`.
    pub fn add(&mut self, state: DeviceState) {
        self.total += 1;
        *self.slot(state) += 1;
    }

    fn slot(&mut self, state: DeviceState) -> &mut u64 {
        match state {
            DeviceState::Pending => &mut self.pending,
            DeviceState::Sending => &mut self.sending,
            DeviceState::Rebooting => &mut self.rebooting,
            DeviceState::Verifying => &mut self.verifying,
            DeviceState::Succeeded => &mut self.succeeded,
            DeviceState::Failed => &mut self.failed,
            DeviceState::Reverted => &mut self.reverted,
            DeviceState::Skipped => &mut self.skipped,
            DeviceState::TimedOut => &mut self.timed_out,
        }
    }

    /// Devices in `state`.
    pub fn get(&self, state: DeviceState) -> u64 {
        let mut copy = *self;
        *copy.slot(state)
    }

    /// Failed, reverted and timed out together: what `halt_when` counts.
    pub fn failures(&self) -> u64 {
        self.failed + self.reverted + self.timed_out
    }

    /// Devices whose part is over.
    pub fn finished(&self) -> u64 {
        self.succeeded + self.failures() + self.skipped
    }

    /// Devices with an update under way.
    pub fn active(&self) -> u64 {
        self.sending + self.rebooting + self.verifying
    }
}

/// One wave of a rollout as planned and as it went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WaveStatus {
    /// Position, from 0.
    pub index: u32,
    /// Devices in the wave.
    pub size: u64,
    /// Soak, seconds.
    pub soak_s: u64,
    /// Devices by state.
    pub counters: Counters,
    /// RFC 3339 time the wave started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
}

/// One device of a rollout (`GET /rollouts/:id?devices=1`, and the dry-run plan).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutDevice {
    /// Device id.
    pub id: String,
    /// Device name.
    #[serde(default)]
    pub name: String,
    /// Wave, from 0.
    pub wave: u32,
    /// State.
    pub state: DeviceState,
    /// Online now (in a dry run: when planned).
    #[serde(default)]
    pub online: bool,
    /// Firmware version the device ran when planned.
    #[serde(default)]
    pub from_version: String,
    /// Transfers started for it.
    #[serde(default)]
    pub attempts: u32,
    /// Why it ended as it did, or what it waits for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// RFC 3339 time its update started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// RFC 3339 time its part ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

/// A rollout (PROTOCOL §10.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutObject {
    /// Rollout id; empty in a dry run.
    pub id: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Firmware id.
    pub firmware: String,
    /// Its version.
    #[serde(default)]
    pub version: String,
    /// State.
    pub state: RolloutState,
    /// The spec as given, with defaults filled in.
    pub spec: RolloutSpec,
    /// Devices by state, over the whole rollout.
    pub counters: Counters,
    /// The waves.
    pub waves: Vec<WaveStatus>,
    /// The wave running now (from 0), or the last one that ran.
    #[serde(default)]
    pub current_wave: u32,
    /// Why it halted, or other news for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Creator's user id.
    #[serde(default)]
    pub created_by: String,
    /// RFC 3339 times.
    #[serde(default)]
    pub created_at: String,
    /// RFC 3339 start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// RFC 3339 end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// This is a plan only (`"dry_run": true`): nothing was stored or sent.
    #[serde(default, skip_serializing_if = "core::ops::Not::not")]
    pub dry_run: bool,
    /// What the plan noticed: devices offline, already up to date, of another platform.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Per-device states, when asked for (and always in a dry run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<RolloutDevice>>,
}

/// The body of a `rollout.*` event: the rollout's counters plus a few fields.
pub fn rollout_event_body(rollout: &RolloutObject, extra: &[(&str, Value)]) -> Value {
    let mut body = match serde_json::to_value(rollout.counters) {
        Ok(Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    body.insert("state".into(), Value::String(rollout.state.as_str().into()));
    body.insert("firmware".into(), Value::String(rollout.firmware.clone()));
    body.insert("wave".into(), Value::from(rollout.current_wave));
    for (key, value) in extra {
        body.insert((*key).into(), value.clone());
    }
    Value::Object(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn spec_defaults_and_strictness() {
        let spec: RolloutSpec = serde_json::from_value(json!({"firmware": "ab"})).expect("valid");
        assert_eq!(spec.max_parallel, 50);
        assert_eq!(spec.commit, CommitPolicy::Device);
        assert_eq!(spec.offline.then, OfflineThen::Skip);
        assert_eq!(spec.delivery, Delivery::Push);
        assert!(spec.waves.is_empty());
        let spec: RolloutSpec = serde_json::from_value(json!({
            "firmware": "ab", "select": {"query": "fw:1.0.0"},
            "waves": [{"percent": 10, "soak_s": 60}, {"count": 5, "soak_s": 0}],
            "halt_when": {"failed_percent": 20}, "commit": "after_soak",
            "offline": {"wait_s": 30, "then": "keep_waiting"}, "delivery": "pull", "dry_run": true
        }))
        .expect("valid");
        assert_eq!(spec.waves[0].percent, Some(10.0));
        assert_eq!(spec.waves[1].count, Some(5));
        assert_eq!(spec.commit, CommitPolicy::AfterSoak);
        assert_eq!(spec.offline.then, OfflineThen::KeepWaiting);
        assert!(spec.dry_run);
        // A misspelt field is an error, not a silently ignored threshold.
        assert!(serde_json::from_value::<RolloutSpec>(
            json!({"firmware": "ab", "halt_when": {"failed_pct": 5}})
        )
        .is_err());
        assert!(serde_json::from_value::<RolloutSpec>(json!({"select": {}})).is_err());
    }

    #[test]
    fn states_round_trip_their_names() {
        for state in DeviceState::ALL {
            assert_eq!(DeviceState::parse(state.as_str()), Some(state));
            assert_eq!(
                serde_json::to_value(state).expect("serialisable"),
                json!(state.as_str())
            );
        }
        assert_eq!(RolloutState::parse("halted"), Some(RolloutState::Halted));
        assert!(RolloutState::Completed.is_finished());
        assert!(!RolloutState::Paused.is_finished());
    }

    #[test]
    fn counters_count() {
        let mut counters = Counters::default();
        for state in [
            DeviceState::Succeeded,
            DeviceState::Reverted,
            DeviceState::Failed,
            DeviceState::Sending,
            DeviceState::Skipped,
        ] {
            counters.add(state);
        }
        assert_eq!(counters.total, 5);
        assert_eq!(counters.failures(), 2);
        assert_eq!(counters.finished(), 4);
        assert_eq!(counters.active(), 1);
        assert_eq!(counters.get(DeviceState::Reverted), 1);
    }
}
