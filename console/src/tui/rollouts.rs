//! Firmware in the console (PROTOCOL §10): the rollouts list, one rollout's page, the form
//! that plans and creates a rollout from the fleet's marks or filter, the firmware picker
//! of the device view, and the progress of updates as `ota.*` events tell it.
//!
//! Nothing here does IO. Keys and events change this state and ask for
//! [`Request`]s, which the runtime runs in tasks that answer with a [`Reply`]. A
//! `rollout.*` event changes the shown counters and state at once (its body carries them,
//! §10.6) and marks the rollout for a fetch; [`tick`] sends such fetches at most once a
//! second per rollout, and fetches a shown list or page again every few seconds anyway.
//!
//! ```
//! use herd_console::tui::rollouts::{parse_seconds, parse_waves};
//!
//! let waves = parse_waves("10, 30, 60%", 90).expect("valid");
//! assert_eq!(waves.len(), 3);
//! assert_eq!((waves[0].percent, waves[2].soak_s), (Some(10.0), 90));
//! assert!(parse_waves("10,ten", 0).is_err());
//! assert_eq!(parse_seconds("5m"), Some(300));
//! ```

use std::collections::{HashMap, HashSet};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use herd_client::{FirmwareObject, Notification, RolloutCommand, RolloutObject, RolloutSpec};
use protocol::firmware::{
    CommitPolicy, Counters, Delivery, DeviceState, RolloutDevice, RolloutState, Selector, WaveSpec,
    OTA_BEGIN, OTA_FAILURE, OTA_PROGRESS, OTA_REVERT, OTA_SUCCESS,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::input::LineInput;
use super::model::{Command, Failure, Model, Overlay, Screen};
use crate::fleet::Fleet;

/// Fewest seconds between two fetches of one rollout that events asked for.
const FETCH_SECS: f64 = 1.0;
/// How often a shown list, or the page of an unfinished rollout, is fetched without news.
const REFRESH_SECS: f64 = 10.0;
/// The same for the page of a running rollout: devices change state without events.
const RUNNING_REFRESH_SECS: f64 = 3.0;
/// How long a finished update stays in [`Model::ota`] for the views to show.
const OTA_KEEP_SECS: f64 = 600.0;

/// Work for the runtime; each answers with one [`Reply`].
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `GET /rollouts`.
    List,
    /// `GET /rollouts/:id`, with the per-device states when `devices`.
    Load { id: String, devices: bool },
    /// `POST /rollouts/:id/<command>`.
    Command { id: String, command: RolloutCommand },
    /// `GET /firmware`.
    Firmware,
    /// `POST /rollouts` with `dry_run`: the plan only.
    Plan(RolloutSpec),
    /// `POST /rollouts`: a planned rollout (started by a [`Request::Command`] after).
    Create(RolloutSpec),
    /// `POST /devices/:id/ota?firmware=...`.
    Push { device: String, firmware: String },
}

/// What the runtime answers.
#[derive(Debug, Clone)]
pub enum Reply {
    Listed(Result<Vec<RolloutObject>, Failure>),
    Loaded {
        id: String,
        result: Result<RolloutObject, Failure>,
    },
    Commanded {
        id: String,
        command: RolloutCommand,
        result: Result<RolloutObject, Failure>,
    },
    Firmware(Result<Vec<FirmwareObject>, Failure>),
    Planned(Result<RolloutObject, Failure>),
    Created(Result<RolloutObject, Failure>),
    Pushed {
        device: String,
        firmware: String,
        result: Result<(), Failure>,
    },
}

// ---------------------------------------------------------------------------------------
// Updates of single devices, from `ota.*` events.

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

// ---------------------------------------------------------------------------------------
// The list.

/// The rollouts list: what `GET /rollouts` said, kept current by events.
#[derive(Debug, Default)]
pub struct RolloutList {
    /// Newest first, as the server lists them; never with per-device states.
    pub rollouts: Vec<RolloutObject>,
    pub loaded: bool,
    /// A `GET /rollouts` is in flight.
    pub loading: bool,
    pub error: Option<String>,
    pub selected: usize,
    /// Rollouts whose events say they changed since they were last fetched.
    pub stale: HashSet<String>,
    /// Rollouts being fetched now.
    pub in_flight: HashSet<String>,
    /// When the list was last asked for.
    pub listed_at: f64,
    /// When finished updates were last forgotten.
    ota_pruned_at: f64,
}

impl RolloutList {
    pub fn get(&self, id: &str) -> Option<&RolloutObject> {
        self.rollouts.iter().find(|r| r.id == id)
    }

    pub fn selected(&self) -> Option<&RolloutObject> {
        self.rollouts.get(self.selected)
    }

    fn replace_all(&mut self, rollouts: Vec<RolloutObject>) {
        let selected = self.selected().map(|r| r.id.clone());
        self.rollouts = rollouts;
        for rollout in &mut self.rollouts {
            rollout.devices = None;
        }
        if let Some(position) = selected.and_then(|id| self.position(&id)) {
            self.selected = position;
        }
        self.clamp();
    }

    fn position(&self, id: &str) -> Option<usize> {
        self.rollouts.iter().position(|r| r.id == id)
    }

    /// Puts a fetched rollout in the list: in place, or first if new.
    fn upsert(&mut self, mut rollout: RolloutObject) {
        rollout.devices = None;
        match self.position(&rollout.id) {
            Some(i) => self.rollouts[i] = rollout,
            None => {
                self.rollouts.insert(0, rollout);
                if self.rollouts.len() > 1 {
                    // Stay on the row the cursor was on.
                    self.selected += 1;
                }
            }
        }
        self.clamp();
    }

    fn remove(&mut self, id: &str) {
        if let Some(i) = self.position(id) {
            self.rollouts.remove(i);
            if i < self.selected {
                self.selected -= 1;
            }
            self.clamp();
        }
    }

    fn clamp(&mut self) {
        self.selected = self.selected.min(self.rollouts.len().saturating_sub(1));
    }

    pub fn move_cursor(&mut self, delta: isize) {
        let len = self.rollouts.len() as isize;
        if len > 0 {
            self.selected = (self.selected as isize + delta).clamp(0, len - 1) as usize;
        }
    }
}

/// Applies the body of a `rollout.*` event (counters, state, wave; PROTOCOL §10.6).
pub fn apply_event_body(rollout: &mut RolloutObject, data: &Value) {
    if let Ok(counters) = Counters::deserialize(data) {
        if counters.total > 0 {
            rollout.counters = counters;
        }
    }
    if let Some(state) = data
        .get("state")
        .and_then(Value::as_str)
        .and_then(RolloutState::parse)
    {
        rollout.state = state;
    }
    if let Some(wave) = data.get("wave").and_then(Value::as_u64) {
        rollout.current_wave = wave as u32;
    }
    if let Some(reason) = data.get("reason").and_then(Value::as_str) {
        rollout.reason = reason.to_string();
    }
}

/// A rollout's name for people: its name, else its id.
pub fn rollout_name(rollout: &RolloutObject) -> &str {
    if rollout.name.is_empty() {
        &rollout.id
    } else {
        &rollout.name
    }
}

/// A rollout device's name for people: the fleet's name for it, else the name the
/// rollout recorded, else its id.
pub fn device_label<'a>(fleet: &'a Fleet, device: &'a RolloutDevice) -> &'a str {
    match fleet.get(&device.id) {
        Some(row) if !row.name.is_empty() => &row.name,
        _ if !device.name.is_empty() => &device.name,
        _ => &device.id,
    }
}

// ---------------------------------------------------------------------------------------
// One rollout's page.

/// The two lists of the page; Tab switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PagePane {
    Devices,
    Failures,
}

/// A line of the devices list: a state's heading with its count, or a device (an index
/// into the rollout's devices).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageRow {
    Group(DeviceState, usize),
    Device(usize),
}

/// States in the order the page lists them: what moves now first, then what waits, then
/// how it ended.
pub const GROUP_ORDER: [DeviceState; 9] = [
    DeviceState::Sending,
    DeviceState::Rebooting,
    DeviceState::Verifying,
    DeviceState::Pending,
    DeviceState::Failed,
    DeviceState::Reverted,
    DeviceState::TimedOut,
    DeviceState::Skipped,
    DeviceState::Succeeded,
];

/// One rollout: its object with the per-device states, and the two lists built from it
/// once per fetch (never per frame).
#[derive(Debug)]
pub struct RolloutPage {
    pub id: String,
    /// What the list knew, until the fetch with devices arrives; then that.
    pub object: Option<RolloutObject>,
    pub error: Option<String>,
    pub pane: PagePane,
    /// Devices by state, then name.
    pub rows: Vec<PageRow>,
    /// Failed, reverted and timed-out devices, latest first.
    pub failures: Vec<usize>,
    pub devices_cursor: usize,
    pub failures_cursor: usize,
    /// When the page was last asked for.
    pub fetched_at: f64,
    /// When this console first saw each device verifying: the wire names no end of a
    /// device's soak, so the countdown is estimated from here (to within a fetch).
    pub verifying_since: HashMap<String, f64>,
}

impl RolloutPage {
    pub fn new(id: &str, summary: Option<RolloutObject>) -> Self {
        RolloutPage {
            id: id.to_string(),
            object: summary,
            error: None,
            pane: PagePane::Devices,
            rows: Vec::new(),
            failures: Vec::new(),
            devices_cursor: 0,
            failures_cursor: 0,
            fetched_at: f64::NEG_INFINITY,
            verifying_since: HashMap::new(),
        }
    }

    /// Seconds left of `device`'s soak, estimated; `None` unless it is verifying.
    pub fn soak_left(&self, device: &RolloutDevice, now: f64) -> Option<f64> {
        if device.state != DeviceState::Verifying {
            return None;
        }
        let since = self.verifying_since.get(&device.id)?;
        let soak = self
            .object
            .as_ref()?
            .waves
            .get(device.wave as usize)
            .map_or(0, |w| w.soak_s);
        Some((since + soak as f64 - now).max(0.0))
    }

    pub fn devices(&self) -> &[RolloutDevice] {
        self.object
            .as_ref()
            .and_then(|o| o.devices.as_deref())
            .unwrap_or_default()
    }

    /// The device under the focused list's cursor.
    pub fn selected_device(&self) -> Option<&RolloutDevice> {
        let index = match self.pane {
            PagePane::Devices => match self.rows.get(self.devices_cursor)? {
                PageRow::Device(i) => *i,
                PageRow::Group(..) => return None,
            },
            PagePane::Failures => *self.failures.get(self.failures_cursor)?,
        };
        self.devices().get(index)
    }

    /// Takes a fetched object; without devices (a list fetch) it keeps the devices known.
    fn set_object(&mut self, mut object: RolloutObject, fleet: &Fleet, now: f64) {
        let had_devices = object.devices.is_some();
        if !had_devices {
            if let Some(old) = self.object.as_mut() {
                object.devices = old.devices.take();
            }
        }
        let keep_device = self.selected_id(PagePane::Devices);
        let keep_failure = self.selected_id(PagePane::Failures);
        self.object = Some(object);
        self.error = None;
        if had_devices {
            let devices = self.object.as_ref().and_then(|o| o.devices.as_deref());
            let verifying: HashSet<&str> = devices
                .unwrap_or_default()
                .iter()
                .filter(|d| d.state == DeviceState::Verifying)
                .map(|d| d.id.as_str())
                .collect();
            let since = &mut self.verifying_since;
            since.retain(|id, _| verifying.contains(id.as_str()));
            for id in verifying {
                since.entry(id.to_string()).or_insert(now);
            }
            self.rebuild(fleet);
            if let Some(i) = keep_device.and_then(|id| {
                self.rows
                    .iter()
                    .position(|r| matches!(r, PageRow::Device(d) if self.devices()[*d].id == id))
            }) {
                self.devices_cursor = i;
            }
            if let Some(i) = keep_failure.and_then(|id| {
                self.failures
                    .iter()
                    .position(|&d| self.devices()[d].id == id)
            }) {
                self.failures_cursor = i;
            }
        }
        self.clamp();
        if self.pane == PagePane::Devices
            && matches!(self.rows.get(self.devices_cursor), Some(PageRow::Group(..)))
        {
            self.move_cursor(1);
        }
    }

    fn selected_id(&self, pane: PagePane) -> Option<String> {
        let index = match pane {
            PagePane::Devices => match self.rows.get(self.devices_cursor)? {
                PageRow::Device(i) => *i,
                PageRow::Group(..) => return None,
            },
            PagePane::Failures => *self.failures.get(self.failures_cursor)?,
        };
        self.devices().get(index).map(|d| d.id.clone())
    }

    fn rebuild(&mut self, fleet: &Fleet) {
        let devices = self.devices();
        let mut order: Vec<usize> = (0..devices.len()).collect();
        let rank = |state: DeviceState| GROUP_ORDER.iter().position(|s| *s == state);
        order.sort_by(|&a, &b| {
            let (a, b) = (&devices[a], &devices[b]);
            rank(a.state)
                .cmp(&rank(b.state))
                .then_with(|| device_label(fleet, a).cmp(device_label(fleet, b)))
                .then_with(|| a.id.cmp(&b.id))
        });
        let mut rows = Vec::with_capacity(order.len() + GROUP_ORDER.len());
        let mut start = 0;
        while start < order.len() {
            let state = devices[order[start]].state;
            let end = order[start..]
                .iter()
                .position(|&i| devices[i].state != state)
                .map_or(order.len(), |n| start + n);
            rows.push(PageRow::Group(state, end - start));
            rows.extend(order[start..end].iter().map(|&i| PageRow::Device(i)));
            start = end;
        }
        let mut failures: Vec<usize> = (0..devices.len())
            .filter(|&i| devices[i].state.is_failure())
            .collect();
        failures.sort_by(|&a, &b| {
            let (a, b) = (&devices[a], &devices[b]);
            b.finished_at
                .cmp(&a.finished_at)
                .then_with(|| device_label(fleet, a).cmp(device_label(fleet, b)))
        });
        self.rows = rows;
        self.failures = failures;
    }

    fn clamp(&mut self) {
        self.devices_cursor = self.devices_cursor.min(self.rows.len().saturating_sub(1));
        self.failures_cursor = self
            .failures_cursor
            .min(self.failures.len().saturating_sub(1));
    }

    /// Moves the focused list's cursor; in the devices list it steps over headings.
    pub fn move_cursor(&mut self, delta: isize) {
        match self.pane {
            PagePane::Failures => {
                let len = self.failures.len() as isize;
                if len > 0 {
                    self.failures_cursor =
                        (self.failures_cursor as isize + delta).clamp(0, len - 1) as usize;
                }
            }
            PagePane::Devices => {
                let len = self.rows.len() as isize;
                if len == 0 {
                    return;
                }
                let mut at = (self.devices_cursor as isize + delta).clamp(0, len - 1) as usize;
                // Every heading has its devices right under it, so a device is one step
                // away: under the heading, or above it (the previous group's last) when
                // moving up, unless the heading is the first row.
                if matches!(self.rows[at], PageRow::Group(..)) {
                    if delta < 0 && at > 0 {
                        at -= 1;
                    } else {
                        at = (at + 1).min(self.rows.len() - 1);
                    }
                }
                self.devices_cursor = at;
            }
        }
    }
}

/// "1 pending device", "3 pending devices".
pub fn count(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// What an operator is asked before `command` runs on `rollout`, naming what it does to
/// how many devices; or why the command does not apply in the rollout's state.
pub fn question(rollout: &RolloutObject, command: RolloutCommand) -> Result<String, String> {
    let name = rollout_name(rollout);
    let c = &rollout.counters;
    let state = rollout.state;
    let refuse = |extra: &str| {
        Err(format!(
            "cannot {} rollout {name}: it is {}{extra}",
            command.as_str(),
            state.as_str()
        ))
    };
    match command {
        RolloutCommand::Start if state == RolloutState::Planned => Ok(format!(
            "Start rollout {name}: {} in {}, up to {} at a time?",
            count(c.total, "device"),
            count(rollout.waves.len().max(1) as u64, "wave"),
            rollout.spec.max_parallel
        )),
        RolloutCommand::Pause if state == RolloutState::Running => Ok(format!(
            "Pause rollout {name}: {} will wait, {} will finish?",
            count(c.pending, "pending device"),
            count(c.active(), "updating device")
        )),
        RolloutCommand::Resume if state == RolloutState::Paused => Ok(format!(
            "Resume rollout {name}: {} will be updated, up to {} at a time?",
            count(c.pending, "pending device"),
            rollout.spec.max_parallel
        )),
        RolloutCommand::Resume if state == RolloutState::Halted => {
            refuse(" (R retries its failed devices in a new rollout)")
        }
        RolloutCommand::Abort
            if matches!(
                state,
                RolloutState::Planned | RolloutState::Running | RolloutState::Paused
            ) =>
        {
            Ok(format!(
                "Abort rollout {name}: {} will be skipped, {} will finish?",
                count(c.pending, "pending device"),
                count(c.active(), "updating device")
            ))
        }
        RolloutCommand::Retry if state.is_finished() => {
            if c.failures() + c.skipped == 0 {
                return Err(format!(
                    "rollout {name} has no failed or skipped device to retry"
                ));
            }
            Ok(format!(
                "Retry rollout {name}: a new rollout over {} and {} starts now?",
                count(c.failures(), "failed device"),
                count(c.skipped, "skipped device")
            ))
        }
        RolloutCommand::Retry => refuse("; retry it once it is halted, aborted or completed"),
        _ => refuse(""),
    }
}

/// The past tense for the status line.
fn done_text(command: RolloutCommand) -> &'static str {
    match command {
        RolloutCommand::Start => "started",
        RolloutCommand::Pause => "paused",
        RolloutCommand::Resume => "resumed",
        RolloutCommand::Abort => "aborted",
        RolloutCommand::Retry => "retried",
    }
}

// ---------------------------------------------------------------------------------------
// The new-rollout form.

/// The form's fields, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormField {
    Firmware,
    Name,
    Waves,
    Soak,
    Parallel,
    Halt,
    Commit,
    Delivery,
}

impl FormField {
    pub const ALL: [FormField; 8] = [
        FormField::Firmware,
        FormField::Name,
        FormField::Waves,
        FormField::Soak,
        FormField::Parallel,
        FormField::Halt,
        FormField::Commit,
        FormField::Delivery,
    ];

    pub fn label(self) -> &'static str {
        match self {
            FormField::Firmware => "firmware",
            FormField::Name => "name",
            FormField::Waves => "waves",
            FormField::Soak => "soak",
            FormField::Parallel => "parallel",
            FormField::Halt => "halt at",
            FormField::Commit => "commit",
            FormField::Delivery => "delivery",
        }
    }

    /// What the field means, shown beside it.
    pub fn hint(self) -> &'static str {
        match self {
            FormField::Firmware => "↑↓ chooses",
            FormField::Name => "empty: app and version",
            FormField::Waves => "% per wave; the last takes the rest",
            FormField::Soak => "healthy this long to count (90s, 5m)",
            FormField::Parallel => "devices updating at once",
            FormField::Halt => "% failed in a wave halts; empty: never",
            FormField::Commit => "←→ when back, or after the soak",
            FormField::Delivery => "←→ the server sends, the device fetches",
        }
    }

    fn step(self, delta: isize) -> FormField {
        let all = FormField::ALL;
        let i = all.iter().position(|f| *f == self).unwrap_or(0) as isize;
        all[(i + delta).rem_euclid(all.len() as isize) as usize]
    }
}

/// Where the form is.
#[derive(Debug)]
pub enum FormStage {
    Editing,
    /// The dry run of this spec is in flight.
    Planning(Box<RolloutSpec>),
    /// The server's plan for `spec`; Enter creates exactly that.
    Plan {
        plan: Box<RolloutObject>,
        spec: Box<RolloutSpec>,
    },
    /// Creation of this plan is in flight.
    Creating {
        plan: Box<RolloutObject>,
    },
}

/// Planning a rollout: which devices, which firmware, waves and thresholds.
#[derive(Debug)]
pub struct NewRollout {
    pub select: Selector,
    /// The selection for people: "3 marked devices", "the filter fw:1.0 (42 shown)".
    pub describe: String,
    /// `None` while `GET /firmware` is in flight.
    pub firmware: Option<Result<Vec<FirmwareObject>, String>>,
    pub firmware_cursor: usize,
    pub focus: FormField,
    pub name: LineInput,
    pub waves: LineInput,
    pub soak: LineInput,
    pub parallel: LineInput,
    pub halt: LineInput,
    pub commit: CommitPolicy,
    pub delivery: Delivery,
    /// Why the form cannot go on: a field, or the server's answer.
    pub error: Option<String>,
    pub stage: FormStage,
}

impl NewRollout {
    pub fn new(select: Selector, describe: String) -> Self {
        NewRollout {
            select,
            describe,
            firmware: None,
            firmware_cursor: 0,
            focus: FormField::Firmware,
            name: LineInput::default(),
            waves: LineInput::new("10,30,60"),
            soak: LineInput::new("60"),
            parallel: LineInput::new("50"),
            halt: LineInput::new("20"),
            commit: CommitPolicy::Device,
            delivery: Delivery::Push,
            error: None,
            stage: FormStage::Editing,
        }
    }

    pub fn input(&self, field: FormField) -> Option<&LineInput> {
        match field {
            FormField::Name => Some(&self.name),
            FormField::Waves => Some(&self.waves),
            FormField::Soak => Some(&self.soak),
            FormField::Parallel => Some(&self.parallel),
            FormField::Halt => Some(&self.halt),
            _ => None,
        }
    }

    fn input_mut(&mut self, field: FormField) -> Option<&mut LineInput> {
        match field {
            FormField::Name => Some(&mut self.name),
            FormField::Waves => Some(&mut self.waves),
            FormField::Soak => Some(&mut self.soak),
            FormField::Parallel => Some(&mut self.parallel),
            FormField::Halt => Some(&mut self.halt),
            _ => None,
        }
    }

    pub fn chosen_firmware(&self) -> Option<&FirmwareObject> {
        match &self.firmware {
            Some(Ok(list)) => list.get(self.firmware_cursor),
            _ => None,
        }
    }

    /// The spec the form describes, or what is wrong with it.
    pub fn spec(&self) -> Result<RolloutSpec, String> {
        let firmware = match &self.firmware {
            None => return Err("the firmware list is still loading".into()),
            Some(Err(e)) => return Err(format!("cannot list firmware: {e}")),
            Some(Ok(list)) if list.is_empty() => {
                return Err(
                    "no firmware in the store: upload an image first (herd firmware upload)".into(),
                )
            }
            Some(Ok(_)) => self
                .chosen_firmware()
                .ok_or("choose a firmware (↑↓)")?
                .id
                .clone(),
        };
        let soak = parse_seconds(self.soak.text())
            .ok_or("soak: a number of seconds, e.g. 60, 90s or 5m")?;
        let waves = parse_waves(self.waves.text(), soak)?;
        let max_parallel = self
            .parallel
            .text()
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or("parallel: devices updating at once, 1 to 10000")?;
        let halt = self.halt.text().trim().trim_end_matches('%');
        let failed_percent = if halt.is_empty() {
            None
        } else {
            Some(
                halt.parse::<f64>()
                    .ok()
                    .filter(|p| p.is_finite() && (0.0..=100.0).contains(p))
                    .ok_or("halt at: a percent from 0 to 100, or empty for never")?,
            )
        };
        // The server's defaults for what the form does not ask (offline policy, commit
        // timeout) come with the spec's own deserialisation.
        let mut spec: RolloutSpec = serde_json::from_value(json!({"firmware": firmware}))
            .map_err(|e| format!("cannot build the spec: {e}"))?;
        let name = self.name.text().trim();
        spec.name = (!name.is_empty()).then(|| name.to_string());
        spec.select = self.select.clone();
        spec.waves = waves;
        spec.max_parallel = max_parallel;
        spec.halt_when.failed_percent = failed_percent;
        spec.commit = self.commit;
        spec.delivery = self.delivery;
        Ok(spec)
    }
}

/// Parses waves as percents (`10,30,60`, `%` allowed), each soaking `soak_s`. Empty text
/// is one wave of every device.
pub fn parse_waves(text: &str, soak_s: u64) -> Result<Vec<WaveSpec>, String> {
    let mut waves = Vec::new();
    let mut sum = 0.0;
    for word in text
        .split([',', ' '])
        .map(str::trim)
        .filter(|w| !w.is_empty())
    {
        let percent = word
            .trim_end_matches('%')
            .parse::<f64>()
            .ok()
            .filter(|p| p.is_finite() && *p > 0.0 && *p <= 100.0)
            .ok_or_else(|| {
                format!("waves: {word:?} is not a percent from 1 to 100; write e.g. 10,30,60")
            })?;
        sum += percent;
        waves.push(WaveSpec {
            percent: Some(percent),
            count: None,
            soak_s,
        });
    }
    if sum > 100.0 + 1e-9 {
        return Err(format!(
            "waves: the percents add up to {sum}, more than 100"
        ));
    }
    Ok(waves)
}

/// Seconds from `60`, `90s`, `5m` or `1h`.
pub fn parse_seconds(text: &str) -> Option<u64> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().last()? {
        (i, 's') => (&text[..i], 1),
        (i, 'm') => (&text[..i], 60),
        (i, 'h') => (&text[..i], 3600),
        _ => (text, 1),
    };
    number.trim().parse::<u64>().ok()?.checked_mul(unit)
}

/// Newest first: the image just uploaded is the one wanted most often.
fn sort_firmware(list: &mut [FirmwareObject]) {
    list.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then_with(|| b.version.cmp(&a.version))
    });
}

/// `48.0 KiB`.
pub fn bytes(size: u64) -> String {
    match size {
        0..=1023 => format!("{size} B"),
        1024..=1_048_575 => format!("{:.1} KiB", size as f64 / 1024.0),
        _ => format!("{:.1} MiB", size as f64 / 1_048_576.0),
    }
}

/// A firmware's version for people, or a short id when it has none.
pub fn version_text(firmware: &FirmwareObject) -> String {
    if firmware.version.is_empty() {
        firmware.id.chars().take(12).collect()
    } else {
        firmware.version.clone()
    }
}

// ---------------------------------------------------------------------------------------
// Pushing one image to one device.

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

// ---------------------------------------------------------------------------------------
// Keys, replies and the clock.

fn is_ctrl(key: &KeyEvent) -> bool {
    key.modifiers.contains(KeyModifiers::CONTROL)
}

/// Opens the list (`:rollouts`, `R` in the fleet).
pub(super) fn open_list(model: &mut Model) -> Vec<Command> {
    model.go_to(Screen::Rollouts);
    list_fetch(model)
}

fn list_fetch(model: &mut Model) -> Vec<Command> {
    let list = &mut model.rollouts;
    if list.loading {
        return Vec::new();
    }
    list.loading = true;
    list.listed_at = model.now;
    let page = model.rollout_page.as_ref().map(|p| p.id.as_str());
    list.stale.retain(|id| Some(id.as_str()) == page);
    vec![Command::Rollouts(Request::List)]
}

/// Opens rollout `id`'s page over the list.
pub(super) fn open_page(model: &mut Model, id: &str) -> Vec<Command> {
    if !model.stack.contains(&Screen::Rollouts) {
        model.go_to(Screen::Rollouts);
    }
    while !matches!(model.screen(), Screen::Rollouts) {
        model.stack.pop();
    }
    model.stack.push(Screen::Rollout(id.to_string()));
    let summary = model.rollouts.get(id).cloned();
    model.rollout_page = Some(RolloutPage::new(id, summary));
    page_fetch(model).into_iter().collect()
}

fn page_fetch(model: &mut Model) -> Option<Command> {
    let page = model.rollout_page.as_mut()?;
    if model.rollouts.in_flight.contains(&page.id) {
        return None;
    }
    page.fetched_at = model.now;
    model.rollouts.stale.remove(&page.id);
    model.rollouts.in_flight.insert(page.id.clone());
    Some(Command::Rollouts(Request::Load {
        id: page.id.clone(),
        devices: true,
    }))
}

/// Starts the form from the fleet: the marked devices, else the current filter.
pub(super) fn open_form(model: &mut Model) -> Vec<Command> {
    if model.refuse_write("create a rollout") {
        return Vec::new();
    }
    let marked = &model.fleet_ui.marked;
    let (select, describe) = if !marked.is_empty() {
        let mut ids: Vec<String> = marked.iter().map(|id| id.to_string()).collect();
        ids.sort();
        let mut names: Vec<&str> = ids.iter().map(|id| model.fleet.label(id)).collect();
        names.sort_unstable();
        let shown = names.iter().take(5).copied().collect::<Vec<_>>().join(", ");
        let more = if names.len() > 5 { ", …" } else { "" };
        let describe = format!(
            "{}: {shown}{more}",
            count(ids.len() as u64, "marked device")
        );
        (
            Selector {
                ids: Some(ids),
                query: None,
            },
            describe,
        )
    } else {
        let filter = model.fleet.filter().text().to_string();
        if model.loaded_once && model.fleet.view_len() == 0 {
            model.error(if model.fleet.is_empty() {
                "no devices to update"
            } else {
                "no device matches the filter: nothing to update"
            });
            return Vec::new();
        }
        let describe = if filter.is_empty() {
            format!(
                "every device (nothing marked, no filter): {} now",
                count(model.fleet.len() as u64, "device")
            )
        } else {
            format!(
                "the filter {filter} ({} shown now)",
                count(model.fleet.view_len() as u64, "device")
            )
        };
        (
            Selector {
                ids: None,
                query: Some(filter),
            },
            describe,
        )
    };
    if matches!(model.screen(), Screen::NewRollout) {
        model.stack.pop();
    }
    model.stack.push(Screen::NewRollout);
    model.new_rollout = Some(NewRollout::new(select, describe));
    vec![Command::Rollouts(Request::Firmware)]
}

pub(super) fn list_key(model: &mut Model, key: KeyEvent) -> Vec<Command> {
    let page = model.table_rows().max(1) as isize;
    let list = &mut model.rollouts;
    match key.code {
        KeyCode::Esc | KeyCode::Char('q') | KeyCode::Backspace => model.back(),
        KeyCode::Down | KeyCode::Char('j') => list.move_cursor(1),
        KeyCode::Up | KeyCode::Char('k') => list.move_cursor(-1),
        KeyCode::PageDown => list.move_cursor(page),
        KeyCode::PageUp => list.move_cursor(-page),
        KeyCode::Home | KeyCode::Char('g') => list.move_cursor(isize::MIN / 2),
        KeyCode::End | KeyCode::Char('G') => list.move_cursor(isize::MAX / 2),
        KeyCode::Enter => {
            if let Some(id) = list.selected().map(|r| r.id.clone()) {
                return open_page(model, &id);
            }
        }
        KeyCode::Char('n') => return open_form(model),
        KeyCode::Char('l') if is_ctrl(&key) => return list_fetch(model),
        _ => model.dirty = false,
    }
    Vec::new()
}

pub(super) fn page_key(model: &mut Model, key: KeyEvent) -> Vec<Command> {
    let rows = model.table_rows().max(1) as isize;
    let Some(page) = model.rollout_page.as_mut() else {
        model.back();
        return Vec::new();
    };
    let command = match key.code {
        KeyCode::Esc | KeyCode::Char('q') | KeyCode::Backspace => {
            model.back();
            return Vec::new();
        }
        KeyCode::Down | KeyCode::Char('j') => {
            page.move_cursor(1);
            return Vec::new();
        }
        KeyCode::Up | KeyCode::Char('k') => {
            page.move_cursor(-1);
            return Vec::new();
        }
        KeyCode::PageDown => {
            page.move_cursor(rows / 2);
            return Vec::new();
        }
        KeyCode::PageUp => {
            page.move_cursor(-rows / 2);
            return Vec::new();
        }
        KeyCode::Home | KeyCode::Char('g') => {
            page.move_cursor(isize::MIN / 2);
            return Vec::new();
        }
        KeyCode::End | KeyCode::Char('G') => {
            page.move_cursor(isize::MAX / 2);
            return Vec::new();
        }
        KeyCode::Tab | KeyCode::BackTab | KeyCode::Char('f') => {
            page.pane = match page.pane {
                PagePane::Devices => PagePane::Failures,
                PagePane::Failures => PagePane::Devices,
            };
            return Vec::new();
        }
        KeyCode::Enter => {
            let Some(id) = page.selected_device().map(|d| d.id.clone()) else {
                return Vec::new();
            };
            return model.open_device(&id);
        }
        KeyCode::Char('l') if is_ctrl(&key) => return page_fetch(model).into_iter().collect(),
        KeyCode::Char('s') => RolloutCommand::Start,
        KeyCode::Char('p') => RolloutCommand::Pause,
        KeyCode::Char('r') => RolloutCommand::Resume,
        KeyCode::Char('A') => RolloutCommand::Abort,
        KeyCode::Char('R') => RolloutCommand::Retry,
        _ => {
            model.dirty = false;
            return Vec::new();
        }
    };
    let Some(object) = page.object.as_ref() else {
        model.error("the rollout is still loading");
        return Vec::new();
    };
    let what = format!("{} rollout {}", command.as_str(), rollout_name(object));
    match question(object, command) {
        Err(reason) => model.error(reason),
        Ok(question) => {
            let id = object.id.clone();
            if !model.refuse_write(&what) {
                model.overlay = Some(Overlay::Confirm {
                    question,
                    command: Command::Rollouts(Request::Command { id, command }),
                });
            }
        }
    }
    Vec::new()
}

pub(super) fn form_key(model: &mut Model, key: KeyEvent) -> Vec<Command> {
    let Some(form) = model.new_rollout.as_mut() else {
        model.back();
        return Vec::new();
    };
    match &form.stage {
        FormStage::Planning(_) | FormStage::Creating { .. } => {
            if key.code == KeyCode::Esc {
                // The answer, when it comes, is for a stage that is gone and is dropped.
                form.stage = FormStage::Editing;
            }
            return Vec::new();
        }
        FormStage::Plan { .. } => {
            match key.code {
                KeyCode::Esc | KeyCode::Backspace => form.stage = FormStage::Editing,
                KeyCode::Enter => {
                    let stage = std::mem::replace(&mut form.stage, FormStage::Editing);
                    if let FormStage::Plan { plan, spec } = stage {
                        let mut spec = *spec;
                        spec.dry_run = false;
                        form.stage = FormStage::Creating { plan };
                        return vec![Command::Rollouts(Request::Create(spec))];
                    }
                }
                _ => {}
            }
            return Vec::new();
        }
        FormStage::Editing => {}
    }
    match key.code {
        KeyCode::Esc => {
            model.back();
            return Vec::new();
        }
        KeyCode::Enter => match form.spec() {
            Err(message) => form.error = Some(message),
            Ok(mut spec) => {
                spec.dry_run = true;
                form.error = None;
                form.stage = FormStage::Planning(Box::new(spec.clone()));
                return vec![Command::Rollouts(Request::Plan(spec))];
            }
        },
        KeyCode::Tab => form.focus = form.focus.step(1),
        KeyCode::BackTab => form.focus = form.focus.step(-1),
        KeyCode::Down | KeyCode::Up if form.focus == FormField::Firmware => {
            let len = match &form.firmware {
                Some(Ok(list)) => list.len(),
                _ => 0,
            };
            let down = key.code == KeyCode::Down;
            if down && form.firmware_cursor + 1 >= len {
                form.focus = form.focus.step(1);
            } else if down {
                form.firmware_cursor += 1;
            } else {
                form.firmware_cursor = form.firmware_cursor.saturating_sub(1);
            }
        }
        KeyCode::Down => form.focus = form.focus.step(1),
        KeyCode::Up => form.focus = form.focus.step(-1),
        KeyCode::Left | KeyCode::Right | KeyCode::Char(' ')
            if matches!(form.focus, FormField::Commit | FormField::Delivery) =>
        {
            if form.focus == FormField::Commit {
                form.commit = match form.commit {
                    CommitPolicy::Device => CommitPolicy::AfterSoak,
                    CommitPolicy::AfterSoak => CommitPolicy::Device,
                };
            } else {
                form.delivery = match form.delivery {
                    Delivery::Push => Delivery::Pull,
                    Delivery::Pull => Delivery::Push,
                };
            }
            form.error = None;
        }
        _ => {
            let focus = form.focus;
            if let Some(input) = form.input_mut(focus) {
                if input.handle(key) {
                    form.error = None;
                }
            }
        }
    }
    Vec::new()
}

/// Text pasted while the form is open goes into the focused field.
pub(super) fn paste_into_form(form: &mut NewRollout, text: &str) {
    if matches!(form.stage, FormStage::Editing) {
        let focus = form.focus;
        if let Some(input) = form.input_mut(focus) {
            input.insert_str(text);
        }
    }
}

/// `u` in the device view.
pub(super) fn open_push(model: &mut Model) -> Vec<Command> {
    if model.refuse_write("push firmware") {
        return Vec::new();
    }
    let Some(view) = model.device.as_mut() else {
        return Vec::new();
    };
    if view.object.is_none() {
        model.error("the device is still loading");
        return Vec::new();
    }
    if !view.online() {
        model.error("the device is offline: a push needs it connected");
        return Vec::new();
    }
    view.push = Some(PushDialog::default());
    vec![Command::Rollouts(Request::Firmware)]
}

/// Keys while the firmware picker is open.
pub(super) fn push_key(model: &mut Model, key: KeyEvent) -> Vec<Command> {
    let Some(view) = model.device.as_mut() else {
        return Vec::new();
    };
    let device = view.id.clone();
    let Some(dialog) = view.push.as_mut() else {
        return Vec::new();
    };
    let len = match &dialog.firmware {
        Some(Ok(list)) => list.len(),
        _ => 0,
    };
    match key.code {
        KeyCode::Esc | KeyCode::Char('q') => view.push = None,
        KeyCode::Down | KeyCode::Char('j') => {
            dialog.cursor = (dialog.cursor + 1).min(len.saturating_sub(1))
        }
        KeyCode::Up | KeyCode::Char('k') => dialog.cursor = dialog.cursor.saturating_sub(1),
        KeyCode::Enter => {
            let Some(firmware) = dialog.chosen() else {
                return Vec::new();
            };
            let name = model.fleet.label(&device);
            let who = if name == device {
                device.clone()
            } else {
                format!("{name} ({device})")
            };
            let question = format!(
                "Push {} ({}{}, {}) to {who}? It restarts into the new image.",
                version_text(firmware),
                if firmware.app.is_empty() {
                    "no app"
                } else {
                    &firmware.app
                },
                if firmware.platform.is_empty() {
                    String::new()
                } else {
                    format!(" for {}", firmware.platform)
                },
                bytes(firmware.size),
            );
            let command = Command::Rollouts(Request::Push {
                device,
                firmware: firmware.id.clone(),
            });
            model.overlay = Some(Overlay::Confirm { question, command });
        }
        _ => model.dirty = false,
    }
    Vec::new()
}

/// A confirmation was answered yes: a push shows as requested at once.
pub(super) fn confirmed(model: &mut Model, command: &Command) {
    let Command::Rollouts(Request::Push { device, firmware }) = command else {
        return;
    };
    let now = model.now;
    let Some(view) = model.device.as_mut().filter(|v| &v.id == device) else {
        return;
    };
    let version = view
        .push
        .as_ref()
        .and_then(|d| d.chosen())
        .filter(|f| &f.id == firmware)
        .map(version_text)
        .unwrap_or_default();
    view.push = None;
    model
        .ota
        .insert(device.clone(), OtaJob::requested(firmware, &version, now));
}

/// A notification: `rollout.*` and `ota.*` events move what is shown.
pub(super) fn notification(model: &mut Model, notification: &Notification) {
    let name = notification.name.as_str();
    if name.starts_with("ota.") {
        // `ota.progress` names no rollout, but it changes no device state either: the
        // page shows its percent from the job.
        if let Some(rollout) = apply_ota(&mut model.ota, notification, model.now) {
            model.rollouts.stale.insert(rollout);
        }
    } else if name.starts_with("rollout.") {
        let id = notification.id.as_str();
        if let Some(rollout) = model.rollouts.rollouts.iter_mut().find(|r| r.id == id) {
            apply_event_body(rollout, &notification.data);
        }
        if let Some(object) = model
            .rollout_page
            .as_mut()
            .filter(|p| p.id == id)
            .and_then(|p| p.object.as_mut())
        {
            apply_event_body(object, &notification.data);
        }
        model.rollouts.stale.insert(id.to_string());
    }
}

/// The clock: fetches what events marked, refreshes shown views now and then, and forgets
/// updates that ended long ago.
pub(super) fn tick(model: &mut Model) -> Vec<Command> {
    let now = model.now;
    let mut commands = Vec::new();
    if !model.ota.is_empty() && now - model.rollouts.ota_pruned_at >= 10.0 {
        model.rollouts.ota_pruned_at = now;
        let shown = model.device.as_ref().map(|v| v.id.clone());
        model.ota.retain(|id, job| {
            !job.is_final() || now - job.since < OTA_KEEP_SECS || Some(id) == shown.as_ref()
        });
    }
    match model.screen().clone() {
        Screen::Rollouts => {
            let list = &mut model.rollouts;
            if !list.loading && now - list.listed_at >= REFRESH_SECS {
                return list_fetch(model);
            }
            if list.loading || now - list.listed_at < FETCH_SECS {
                return commands;
            }
            let mut ids: Vec<String> = list
                .stale
                .iter()
                .filter(|id| !list.in_flight.contains(*id))
                .cloned()
                .collect();
            ids.sort();
            for id in ids {
                list.stale.remove(&id);
                list.in_flight.insert(id.clone());
                commands.push(Command::Rollouts(Request::Load { id, devices: false }));
            }
        }
        Screen::Rollout(id) => {
            let Some(page) = model.rollout_page.as_ref().filter(|p| p.id == id) else {
                return commands;
            };
            let (finished, running) = page.object.as_ref().map_or((false, false), |o| {
                (
                    o.state.is_finished() && o.counters.active() == 0,
                    o.state == RolloutState::Running || o.counters.active() > 0,
                )
            });
            let every = if running {
                RUNNING_REFRESH_SECS
            } else {
                REFRESH_SECS
            };
            let since = now - page.fetched_at;
            let due = (model.rollouts.stale.contains(&id) && since >= FETCH_SECS)
                || (!finished && since >= every);
            if due {
                commands.extend(page_fetch(model));
            }
        }
        _ => {}
    }
    commands
}

/// The notify stream came back: what is shown may have missed events.
pub(super) fn reconnected(model: &mut Model) -> Vec<Command> {
    match model.screen() {
        Screen::Rollouts => list_fetch(model),
        Screen::Rollout(_) => page_fetch(model).into_iter().collect(),
        _ => Vec::new(),
    }
}

pub(super) fn reply(model: &mut Model, reply: Reply) -> Vec<Command> {
    model.dirty = true;
    match reply {
        Reply::Listed(result) => {
            let list = &mut model.rollouts;
            list.loading = false;
            match result {
                Ok(rollouts) => {
                    list.replace_all(rollouts);
                    list.loaded = true;
                    list.error = None;
                }
                Err(failure) => list.error = Some(failure.message),
            }
        }
        Reply::Loaded { id, result } => {
            model.rollouts.in_flight.remove(&id);
            match result {
                Ok(object) => {
                    if let Some(page) = model.rollout_page.as_mut().filter(|p| p.id == id) {
                        page.set_object(object.clone(), &model.fleet, model.now);
                    }
                    model.rollouts.upsert(object);
                }
                Err(failure) if failure.status == Some(404) => {
                    model.rollouts.remove(&id);
                    if let Some(page) = model.rollout_page.as_mut().filter(|p| p.id == id) {
                        page.error = Some(failure.message);
                    }
                }
                Err(failure) => {
                    if let Some(page) = model.rollout_page.as_mut().filter(|p| p.id == id) {
                        page.error = Some(failure.message);
                    }
                }
            }
        }
        Reply::Commanded {
            id,
            command,
            result,
        } => match result {
            Ok(object) if command == RolloutCommand::Retry => {
                model.info(format!(
                    "rollout {} created over {}; starting it",
                    rollout_name(&object),
                    count(object.counters.total, "device")
                ));
                let new = object.id.clone();
                model.rollouts.upsert(object);
                let mut commands = open_page(model, &new);
                commands.push(Command::Rollouts(Request::Command {
                    id: new,
                    command: RolloutCommand::Start,
                }));
                return commands;
            }
            Ok(object) => {
                model.info(format!(
                    "rollout {} {}",
                    rollout_name(&object),
                    done_text(command)
                ));
                if let Some(page) = model.rollout_page.as_mut().filter(|p| p.id == id) {
                    page.set_object(object.clone(), &model.fleet, model.now);
                }
                model.rollouts.upsert(object);
                model.rollouts.stale.insert(id);
            }
            Err(failure) => {
                let name = model
                    .rollouts
                    .get(&id)
                    .map_or(id.clone(), |r| rollout_name(r).to_string());
                model.error(format!(
                    "cannot {} rollout {name}: {}",
                    command.as_str(),
                    failure.message
                ));
                model.rollouts.stale.insert(id);
            }
        },
        Reply::Firmware(result) => {
            let result = result.map_err(|f| f.message).map(|mut list| {
                sort_firmware(&mut list);
                list
            });
            if let Some(form) = model.new_rollout.as_mut() {
                form.firmware = Some(result.clone());
                form.firmware_cursor = 0;
            }
            if let Some(dialog) = model.device.as_mut().and_then(|v| v.push.as_mut()) {
                dialog.firmware = Some(result);
                dialog.cursor = 0;
            }
        }
        Reply::Planned(result) => {
            let Some(form) = model.new_rollout.as_mut() else {
                return Vec::new();
            };
            let FormStage::Planning(spec) = &form.stage else {
                return Vec::new();
            };
            match result {
                Ok(plan) => {
                    form.stage = FormStage::Plan {
                        plan: Box::new(plan),
                        spec: spec.clone(),
                    };
                }
                Err(failure) => {
                    form.stage = FormStage::Editing;
                    form.error = Some(failure.message);
                }
            }
        }
        Reply::Created(result) => {
            let Some(form) = model.new_rollout.as_mut() else {
                return Vec::new();
            };
            if !matches!(form.stage, FormStage::Creating { .. }) {
                return Vec::new();
            }
            match result {
                Ok(object) => {
                    let id = object.id.clone();
                    model.info(format!(
                        "rollout {} created over {}; starting it",
                        rollout_name(&object),
                        count(object.counters.total, "device")
                    ));
                    model.rollouts.upsert(object);
                    model.new_rollout = None;
                    model.go_to(Screen::Rollouts);
                    let mut commands = open_page(model, &id);
                    commands.push(Command::Rollouts(Request::Command {
                        id,
                        command: RolloutCommand::Start,
                    }));
                    return commands;
                }
                Err(failure) => {
                    form.stage = FormStage::Editing;
                    form.error = Some(failure.message);
                }
            }
        }
        Reply::Pushed {
            device,
            firmware,
            result,
        } => {
            let now = model.now;
            let label = model.fleet.label(&device).to_string();
            match result {
                Ok(()) => {
                    // The outcome's event may have come first: it stands.
                    if let Some(job) = model.ota.get_mut(&device).filter(|j| {
                        j.firmware == firmware
                            && matches!(j.phase, OtaPhase::Requested | OtaPhase::Sending)
                    }) {
                        job.phase = OtaPhase::Rebooting;
                        job.percent = 100;
                        job.since = now;
                        model.info(format!("{label} took the image and restarts into it"));
                    }
                }
                Err(failure) => {
                    let job = model
                        .ota
                        .entry(device.clone())
                        .or_insert_with(|| OtaJob::requested(&firmware, "", now));
                    if !job.is_final() {
                        job.phase = OtaPhase::Failed {
                            stage: String::new(),
                            message: failure.message.clone(),
                        };
                        job.since = now;
                    }
                    model.error(format!("push to {label} failed: {}", failure.message));
                }
            }
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves_and_seconds() {
        assert_eq!(parse_waves("", 5).expect("empty"), Vec::new());
        let waves = parse_waves("10 30,60", 5).expect("valid");
        assert_eq!(
            waves.iter().map(|w| w.percent).collect::<Vec<_>>(),
            [Some(10.0), Some(30.0), Some(60.0)]
        );
        assert!(parse_waves("60,60", 0)
            .expect_err("too much")
            .contains("more than 100"));
        assert!(parse_waves("0", 0).is_err());
        assert_eq!(parse_seconds("90"), Some(90));
        assert_eq!(parse_seconds(" 90s "), Some(90));
        assert_eq!(parse_seconds("2h"), Some(7200));
        assert_eq!(parse_seconds("soon"), None);
        assert_eq!(parse_seconds(""), None);
        assert_eq!(count(1, "wave"), "1 wave");
        assert_eq!(count(0, "wave"), "0 waves");
        assert_eq!(bytes(49_152), "48.0 KiB");
    }

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
