//! One device's update as its `ota.*` events tell it (PROTOCOL §10.6), and the device
//! view's firmware picker.

use std::collections::HashMap;

use herd_client::{FirmwareObject, Notification};
use protocol::firmware::{OTA_BEGIN, OTA_FAILURE, OTA_PROGRESS, OTA_REVERT, OTA_SUCCESS};
use serde_json::Value;

/// Where one device's update stands.
#[derive(Debug, Clone, PartialEq)]
pub enum OtaPhase {
    /// Asked for from this console; the server has not begun.
    Requested,
    /// The image is being written or fetched.
    Sending,
    /// The image is written; the device restarts into it.
    Rebooting,
    Succeeded {
        seconds: Option<f64>,
    },
    Failed {
        stage: String,
        message: String,
    },
    Reverted {
        running_version: String,
        message: String,
    },
}

/// One device's latest update, as its `ota.*` events tell it (PROTOCOL §10.6).
#[derive(Debug, Clone, PartialEq)]
pub struct OtaJob {
    /// Firmware id.
    pub firmware: String,
    /// Its version, once an event named it.
    pub version: String,
    pub percent: u8,
    pub phase: OtaPhase,
    /// The rollout it belongs to, if any.
    pub rollout: Option<String>,
    /// When the phase last changed (Unix seconds).
    pub since: f64,
}

impl OtaJob {
    pub fn requested(firmware: &str, version: &str, now: f64) -> Self {
        OtaJob {
            firmware: firmware.to_string(),
            version: version.to_string(),
            percent: 0,
            phase: OtaPhase::Requested,
            rollout: None,
            since: now,
        }
    }

    pub fn is_final(&self) -> bool {
        matches!(
            self.phase,
            OtaPhase::Succeeded { .. } | OtaPhase::Failed { .. } | OtaPhase::Reverted { .. }
        )
    }
}

/// Applies an `ota.*` event to `jobs`; returns the rollout the update belongs to, if any.
pub fn apply_ota(
    jobs: &mut HashMap<String, OtaJob>,
    notification: &Notification,
    now: f64,
) -> Option<String> {
    let name = notification.name.as_str();
    if ![
        OTA_BEGIN,
        OTA_PROGRESS,
        OTA_SUCCESS,
        OTA_FAILURE,
        OTA_REVERT,
    ]
    .contains(&name)
    {
        return None;
    }
    let data = &notification.data;
    let text = |key: &str| {
        data.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let firmware = text("firmware");
    let rollout = data
        .get("rollout")
        .and_then(Value::as_str)
        .map(str::to_string);
    let job = jobs
        .entry(notification.id.clone())
        .or_insert_with(|| OtaJob {
            phase: OtaPhase::Sending,
            ..OtaJob::requested(&firmware, "", now)
        });
    if !firmware.is_empty() && job.firmware != firmware {
        // Another image than the one remembered: a new update.
        *job = OtaJob {
            phase: OtaPhase::Sending,
            ..OtaJob::requested(&firmware, "", now)
        };
    }
    if rollout.is_some() {
        job.rollout = rollout;
    }
    let version = text("version");
    if !version.is_empty() {
        job.version = version;
    }
    job.phase = match name {
        OTA_BEGIN => {
            job.percent = 0;
            OtaPhase::Sending
        }
        OTA_PROGRESS => {
            let percent = data.get("percent").and_then(Value::as_u64).unwrap_or(0);
            job.percent = percent.min(100) as u8;
            if job.percent >= 100 {
                OtaPhase::Rebooting
            } else {
                OtaPhase::Sending
            }
        }
        OTA_SUCCESS => {
            job.percent = 100;
            OtaPhase::Succeeded {
                seconds: data.get("seconds").and_then(Value::as_f64),
            }
        }
        OTA_FAILURE => OtaPhase::Failed {
            stage: text("stage"),
            message: text("message"),
        },
        _ => OtaPhase::Reverted {
            running_version: text("running_version"),
            message: text("message"),
        },
    };
    job.since = now;
    job.rollout.clone()
}

/// The firmware picker of the device view (`u`).
#[derive(Debug, Default)]
pub struct PushDialog {
    /// `None` while `GET /firmware` is in flight.
    pub firmware: Option<Result<Vec<FirmwareObject>, String>>,
    pub cursor: usize,
}

impl PushDialog {
    pub fn chosen(&self) -> Option<&FirmwareObject> {
        match &self.firmware {
            Some(Ok(list)) => list.get(self.cursor),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ota_events_make_a_job() {
        let mut jobs = HashMap::new();
        let event = |name: &str, data: Value| Notification::new("d1", name, data);
        assert_eq!(
            apply_ota(
                &mut jobs,
                &event(
                    OTA_BEGIN,
                    json!({"firmware": "f1", "version": "1.1.0", "size": 10, "rollout": "r1"})
                ),
                1.0
            ),
            Some("r1".into())
        );
        apply_ota(
            &mut jobs,
            &event(OTA_PROGRESS, json!({"firmware": "f1", "percent": 40})),
            2.0,
        );
        assert_eq!(jobs["d1"].percent, 40);
        assert_eq!(jobs["d1"].phase, OtaPhase::Sending);
        apply_ota(
            &mut jobs,
            &event(
                OTA_REVERT,
                json!({"firmware": "f1", "running_version": "1.0.0", "message": "crashed"}),
            ),
            3.0,
        );
        assert!(jobs["d1"].is_final());
        assert_eq!(jobs["d1"].version, "1.1.0");
        // Another image starts over.
        apply_ota(
            &mut jobs,
            &event(OTA_PROGRESS, json!({"firmware": "f2", "percent": 10})),
            4.0,
        );
        assert_eq!(
            (jobs["d1"].firmware.as_str(), jobs["d1"].rollout.as_deref()),
            ("f2", None)
        );
        assert_eq!(
            apply_ota(&mut jobs, &event("ota.other", json!({})), 5.0),
            None
        );
    }
}
