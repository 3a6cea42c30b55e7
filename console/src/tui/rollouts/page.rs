//! The rollouts list and one rollout's page: what the server said, kept current by
//! events, and the two lists of the page built once per fetch.

use std::collections::{HashMap, HashSet};

use herd_client::{RolloutCommand, RolloutObject};
use protocol::firmware::{Counters, DeviceState, RolloutDevice, RolloutState};
use serde::Deserialize;
use serde_json::Value;

use crate::fleet::Fleet;
use crate::text;

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
    pub(super) ota_pruned_at: f64,
}

impl RolloutList {
    pub fn get(&self, id: &str) -> Option<&RolloutObject> {
        self.rollouts.iter().find(|r| r.id == id)
    }

    pub fn selected(&self) -> Option<&RolloutObject> {
        self.rollouts.get(self.selected)
    }

    pub(super) fn replace_all(&mut self, rollouts: Vec<RolloutObject>) {
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
    pub(super) fn upsert(&mut self, mut rollout: RolloutObject) {
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

    pub(super) fn remove(&mut self, id: &str) {
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
    pub(super) fn set_object(&mut self, mut object: RolloutObject, fleet: &Fleet, now: f64) {
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
            let time = |d: &RolloutDevice| {
                d.finished_at
                    .as_deref()
                    .and_then(text::parse_rfc3339)
                    .unwrap_or(0.0)
            };
            time(b)
                .total_cmp(&time(a))
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
        // The server lets a halted rollout go on once someone looked at the failures.
        RolloutCommand::Resume if state == RolloutState::Halted => Ok(format!(
            "Resume halted rollout {name} despite {}: {} will be updated, up to {} at a time; a new failure in this wave halts it again?",
            count(c.failures(), "failed device"),
            count(c.pending, "pending device"),
            rollout.spec.max_parallel
        )),
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
pub(super) fn done_text(command: RolloutCommand) -> &'static str {
    match command {
        RolloutCommand::Start => "started",
        RolloutCommand::Pause => "paused",
        RolloutCommand::Resume => "resumed",
        RolloutCommand::Abort => "aborted",
        RolloutCommand::Retry => "retried",
    }
}
