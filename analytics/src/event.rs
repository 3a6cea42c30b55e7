//! What a line becomes: a small fixed-size [`Event`] holding only the fields the reports
//! read, an [`Update`] for each outcome of Herd's update engine and each rollout event
//! (PROTOCOL §10.6), and the interners that turn device ids, event names, firmware
//! versions and other texts into numbers.

use protocol::firmware::{self, Counters};
use protocol::notification;
use rustc_hash::FxHashMap;

use crate::scan::{self, Head};

/// Which parts of a line to extract; each report asks for what it reads, so a report that
/// needs no payload never walks into `data`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Need {
    /// Keep every known event with its full name (fleet and rpc reports).
    pub names: bool,
    /// Read `reported.on` from shadow updates (usage and firmware).
    pub shadow: bool,
    /// Also read `reported.ota` and `info.fw_version` (firmware).
    pub firmware: bool,
}

impl Need {
    /// Everything: what a long-lived reader that serves every report keeps.
    pub const ALL: Need = Need {
        names: true,
        shadow: true,
        firmware: true,
    };

    /// The union of two needs.
    pub fn union(self, other: Need) -> Need {
        Need {
            names: self.names || other.names,
            shadow: self.shadow || other.shadow,
            firmware: self.firmware || other.firmware,
        }
    }

    /// Whether data extracted for `self` serves a report that needs `other`.
    pub fn covers(self, other: Need) -> bool {
        self.union(other) == self
    }
}

/// The kinds of events the reports know (PROTOCOL §5); every other name is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub(crate) enum Kind {
    Online,
    Offline,
    Created,
    Updated,
    Deleted,
    /// `rpc.out.<method>`: the device sent a request (PROTOCOL §3).
    RpcOut,
    /// `rpc.in.<method>`: the cloud sent a request.
    RpcIn,
    /// An `ota.*` event of Herd's update engine, with its meaning for an update attempt.
    Ota(OtaSignal),
    /// `rollout.*`: its id is a rollout's, not a device's, so its [`Event`] has no device.
    /// The fleet report counts it; the firmware report reads its [`Update`].
    Rollout,
    /// `server.started` (PROTOCOL §7): the server (re)started, so no device was connected
    /// across it; its [`Event`] has no device. Every report keeps it.
    ServerStarted,
}

/// What a firmware-update signal says about the device's current update attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub(crate) enum OtaSignal {
    Start,
    Success,
    Failure,
    Revert,
    /// `ota.progress`: no effect on attempts.
    Other,
}

/// The device events of Herd's update engine (PROTOCOL §10.6) and what they mean for an
/// attempt. Other `ota.*` names are unknown events.
const OTA_EVENTS: [(&str, OtaSignal); 5] = [
    (firmware::OTA_BEGIN, OtaSignal::Start),
    (firmware::OTA_PROGRESS, OtaSignal::Other),
    (firmware::OTA_SUCCESS, OtaSignal::Success),
    (firmware::OTA_FAILURE, OtaSignal::Failure),
    (firmware::OTA_REVERT, OtaSignal::Revert),
];

/// The rollout events (PROTOCOL §10.6); other `rollout.*` names are unknown events.
const ROLLOUT_EVENTS: [(&str, Step); 8] = [
    (firmware::ROLLOUT_PLANNED, Step::Planned),
    (firmware::ROLLOUT_STARTED, Step::Started),
    (firmware::ROLLOUT_WAVE, Step::Wave),
    (firmware::ROLLOUT_PAUSED, Step::Paused),
    (firmware::ROLLOUT_RESUMED, Step::Resumed),
    (firmware::ROLLOUT_HALTED, Step::Halted),
    (firmware::ROLLOUT_ABORTED, Step::Aborted),
    (firmware::ROLLOUT_COMPLETED, Step::Completed),
];

fn rollout_step(name: &[u8]) -> Option<Step> {
    ROLLOUT_EVENTS
        .iter()
        .find(|(known, _)| known.as_bytes() == name)
        .map(|&(_, step)| step)
}

/// The kind of an event name, or `None` for names the reports do not know.
pub(crate) fn classify(name: &[u8]) -> Option<Kind> {
    Some(match name {
        b"online" => Kind::Online,
        b"offline" => Kind::Offline,
        b"created" => Kind::Created,
        b"updated" => Kind::Updated,
        b"deleted" => Kind::Deleted,
        _ if name == notification::SERVER_STARTED.as_bytes() => Kind::ServerStarted,
        _ => {
            if let Some(method) = name.strip_prefix(b"rpc.out.") {
                if method.is_empty() {
                    return None;
                }
                Kind::RpcOut
            } else if let Some(method) = name.strip_prefix(b"rpc.in.") {
                if method.is_empty() {
                    return None;
                }
                Kind::RpcIn
            } else if name.starts_with(b"ota.") {
                let (_, signal) = OTA_EVENTS
                    .iter()
                    .find(|(known, _)| known.as_bytes() == name)?;
                Kind::Ota(*signal)
            } else if name.starts_with(b"rollout.") {
                rollout_step(name)?;
                Kind::Rollout
            } else {
                return None;
            }
        }
    })
}

/// Marks an absent interned value.
pub(crate) const NONE: u32 = u32::MAX;

/// Which engine event an [`Update`] comes from (PROTOCOL §10.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub(crate) enum Step {
    Begin,
    Success,
    Failure,
    Revert,
    Planned,
    Started,
    Wave,
    Paused,
    Resumed,
    Halted,
    Aborted,
    Completed,
}

impl Step {
    /// Every step, in the order of their codes in the parse cache.
    pub const ALL: [Step; 12] = [
        Step::Begin,
        Step::Success,
        Step::Failure,
        Step::Revert,
        Step::Planned,
        Step::Started,
        Step::Wave,
        Step::Paused,
        Step::Resumed,
        Step::Halted,
        Step::Aborted,
        Step::Completed,
    ];

    /// Whether this is a `rollout.*` event rather than a device's.
    pub fn is_rollout(self) -> bool {
        !matches!(
            self,
            Step::Begin | Step::Success | Step::Failure | Step::Revert
        )
    }

    /// Whether the rollout is over after this event (PROTOCOL §10.5).
    #[cfg(feature = "tables")]
    pub fn ends_rollout(self) -> bool {
        matches!(self, Step::Halted | Step::Aborted | Step::Completed)
    }
}

/// What an `ota.begin`, `ota.success`, `ota.failure`, `ota.revert` or `rollout.*` line says
/// (PROTOCOL §10.6), for the firmware report. Kept beside the events, in log order, only
/// when firmware is needed; `ota.progress` has none. Texts are interned in
/// [`Batch::texts`], versions in [`Batch::versions`]; a field the line lacks is [`NONE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Update {
    pub ts: i64,
    pub step: Step,
    /// The device of a device event; [`NONE`] for a rollout event.
    pub device: u32,
    /// The `rollout` of a device event, or the `id` of a rollout event.
    pub rollout: u32,
    /// Firmware id (the image's SHA-256).
    pub firmware: u32,
    /// `version` of `ota.begin` and `ota.success`; `running_version` of `ota.revert`.
    pub version: u32,
    /// `seconds` of `ota.success`, in microseconds.
    pub seconds_us: Option<i64>,
    /// `stage` of `ota.failure`.
    pub stage: u32,
    /// `message` of `ota.failure` and `ota.revert`, `reason` of `rollout.halted`, `name` of
    /// `rollout.planned`.
    pub text: u32,
    /// `state` of a rollout event.
    pub state: u32,
    /// `wave` of a rollout event: the current wave, from 0.
    pub wave: u32,
    /// `devices` of `rollout.wave`: the wave's size.
    pub devices: u32,
    /// The device counters of a rollout event.
    pub counters: Counters,
}

impl Update {
    fn new(ts: i64, step: Step, device: u32) -> Update {
        Update {
            ts,
            step,
            device,
            rollout: NONE,
            firmware: NONE,
            version: NONE,
            seconds_us: None,
            stage: NONE,
            text: NONE,
            state: NONE,
            wave: NONE,
            devices: NONE,
            counters: Counters::default(),
        }
    }
}

/// A count as an interned-size number; [`NONE`] stays reserved for "absent".
fn clamp(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(NONE - 1).min(NONE - 1)
}

/// A whole non-negative JSON number, such as a counter.
fn count(value: &[u8]) -> Option<u64> {
    let (us, used) = scan::number_us(value)?;
    if used != value.len() || us < 0 || us % 1_000_000 != 0 {
        return None;
    }
    Some((us / 1_000_000) as u64)
}

/// Sets the counter called `key` (PROTOCOL §10.6: `total` and the device states).
fn set_counter(counters: &mut Counters, key: &[u8], n: u64) {
    let slot = match key {
        b"total" => &mut counters.total,
        b"pending" => &mut counters.pending,
        b"sending" => &mut counters.sending,
        b"rebooting" => &mut counters.rebooting,
        b"verifying" => &mut counters.verifying,
        b"succeeded" => &mut counters.succeeded,
        b"failed" => &mut counters.failed,
        b"reverted" => &mut counters.reverted,
        b"skipped" => &mut counters.skipped,
        b"timed_out" => &mut counters.timed_out,
        _ => return,
    };
    *slot = n;
}

/// One kept line. 24 bytes, so tens of millions fit comfortably.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Event {
    pub ts: i64,
    pub device: u32,
    /// Interned full name when names are kept, else [`NONE`].
    pub name: u32,
    /// Interned firmware version seen in this event, else [`NONE`].
    pub fw: u32,
    pub kind: Kind,
    /// `reported.on`: -1 absent, 0 false, 1 true.
    pub on: i8,
    /// `reported.ota.status` (PROTOCOL §4.4): -1 absent.
    pub ota_status: i8,
    /// `reported.ota.message` says the device reverted to its previous image.
    pub reverted: bool,
}

/// Strings to dense numbers, in first-seen order.
#[derive(Debug, Default, Clone)]
pub(crate) struct Interner {
    map: FxHashMap<Box<[u8]>, u32>,
    values: Vec<Box<[u8]>>,
}

impl Interner {
    pub fn intern(&mut self, value: &[u8]) -> u32 {
        if let Some(&id) = self.map.get(value) {
            return id;
        }
        let id = self.values.len() as u32;
        self.values.push(value.into());
        self.map.insert(value.into(), id);
        id
    }

    pub fn find(&self, value: &[u8]) -> Option<u32> {
        self.map.get(value).copied()
    }

    pub fn get(&self, id: u32) -> &[u8] {
        self.values.get(id as usize).map_or(&[][..], |v| v)
    }

    pub fn text(&self, id: u32) -> String {
        String::from_utf8_lossy(self.get(id)).into_owned()
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn values(&self) -> impl Iterator<Item = &[u8]> {
        self.values.iter().map(|v| &v[..])
    }
}

/// How one line was accounted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LineOutcome {
    Kept,
    /// Known but not needed by the reports being served.
    Skipped,
    Unknown,
    Invalid,
}

/// Events extracted from a run of lines, with interners local to the run so that runs can
/// be parsed in parallel and merged afterwards.
#[derive(Debug, Default, Clone)]
pub(crate) struct Batch {
    pub events: Vec<Event>,
    pub devices: Interner,
    /// Earliest known event of each device (by local id), so a device with no kept events
    /// still counts as seen.
    pub first_seen: Vec<i64>,
    /// The last name each device (by local id) had in a `created` or `updated` object, as
    /// an id in [`Batch::texts`]; [`NONE`] while none was seen.
    pub labels: Vec<u32>,
    pub names: Interner,
    pub versions: Interner,
    /// Firmware ids, rollout ids and the other texts of [`Update`]s.
    pub texts: Interner,
    pub updates: Vec<Update>,
    pub lines: u64,
    pub unknown: u64,
    pub invalid: u64,
    pub min_ts: Option<i64>,
    pub max_ts: Option<i64>,
}

/// Where a batch's events and interned values go: the tables of a later batch or a log.
pub(crate) struct Tables<'a> {
    pub events: &'a mut Vec<Event>,
    pub devices: &'a mut Interner,
    pub first_seen: &'a mut Vec<i64>,
    pub labels: &'a mut Vec<u32>,
    pub names: &'a mut Interner,
    pub versions: &'a mut Interner,
    pub texts: &'a mut Interner,
    pub updates: &'a mut Vec<Update>,
    pub min_ts: &'a mut Option<i64>,
    pub max_ts: &'a mut Option<i64>,
}

impl Batch {
    /// Appends a batch of the lines that follow this one's.
    pub fn absorb(&mut self, later: Batch) {
        self.lines += later.lines;
        self.unknown += later.unknown;
        self.invalid += later.invalid;
        later.append_to(Tables {
            events: &mut self.events,
            devices: &mut self.devices,
            first_seen: &mut self.first_seen,
            labels: &mut self.labels,
            names: &mut self.names,
            versions: &mut self.versions,
            texts: &mut self.texts,
            updates: &mut self.updates,
            min_ts: &mut self.min_ts,
            max_ts: &mut self.max_ts,
        });
    }

    /// Appends this batch's events after those of `into`, renumbering interned values into
    /// its interners (line counts are the caller's).
    pub fn append_to(self, into: Tables<'_>) {
        if let Some(t) = self.min_ts {
            *into.min_ts = Some(into.min_ts.map_or(t, |m| m.min(t)));
        }
        if let Some(t) = self.max_ts {
            *into.max_ts = Some(into.max_ts.map_or(t, |m| m.max(t)));
        }
        let devices: Vec<u32> = self
            .devices
            .values()
            .map(|id| into.devices.intern(id))
            .collect();
        for (local, &global) in devices.iter().enumerate() {
            let first = self.first_seen.get(local).copied().unwrap_or(i64::MAX);
            match into.first_seen.get_mut(global as usize) {
                Some(seen) => *seen = (*seen).min(first),
                None => into.first_seen.push(first),
            }
        }
        let names: Vec<u32> = self.names.values().map(|n| into.names.intern(n)).collect();
        let versions: Vec<u32> = self
            .versions
            .values()
            .map(|v| into.versions.intern(v))
            .collect();
        let texts: Vec<u32> = self.texts.values().map(|t| into.texts.intern(t)).collect();
        let remap = |table: &[u32], id: u32| {
            if id == NONE {
                NONE
            } else {
                table.get(id as usize).copied().unwrap_or(NONE)
            }
        };
        // These lines come later: a name they saw replaces an earlier one.
        into.labels.resize(into.devices.len(), NONE);
        for (local, &global) in devices.iter().enumerate() {
            let label = remap(&texts, self.labels.get(local).copied().unwrap_or(NONE));
            if label != NONE {
                into.labels[global as usize] = label;
            }
        }
        into.events.reserve(self.events.len());
        for mut event in self.events {
            event.device = remap(&devices, event.device);
            event.name = remap(&names, event.name);
            event.fw = remap(&versions, event.fw);
            into.events.push(event);
        }
        into.updates.reserve(self.updates.len());
        for mut update in self.updates {
            update.device = remap(&devices, update.device);
            update.version = remap(&versions, update.version);
            for text in [
                &mut update.rollout,
                &mut update.firmware,
                &mut update.stage,
                &mut update.text,
                &mut update.state,
            ] {
                *text = remap(&texts, *text);
            }
            into.updates.push(update);
        }
    }

    /// Accounts for one complete line (without its newline).
    pub fn line(&mut self, line: &[u8], need: Need) -> LineOutcome {
        self.lines += 1;
        let outcome = self.parse(line, need);
        match outcome {
            LineOutcome::Unknown => self.unknown += 1,
            LineOutcome::Invalid => self.invalid += 1,
            LineOutcome::Kept | LineOutcome::Skipped => {}
        }
        outcome
    }

    fn parse(&mut self, line: &[u8], need: Need) -> LineOutcome {
        let trimmed = line.strip_suffix(b"\r").unwrap_or(line);
        if trimmed.iter().all(|b| b.is_ascii_whitespace()) {
            // Blank lines carry nothing; counting them invalid would only add noise.
            return LineOutcome::Skipped;
        }
        let Some(head) = scan::head(trimmed) else {
            return LineOutcome::Invalid;
        };
        let Some(kind) = classify(&head.name) else {
            return LineOutcome::Unknown;
        };
        // A rollout is not a device, nor is the server: neither may show up in per-device
        // tables.
        let device = if matches!(kind, Kind::Rollout | Kind::ServerStarted) {
            NONE
        } else {
            let device = self.devices.intern(&head.id);
            if device as usize == self.first_seen.len() {
                self.first_seen.push(head.ts_us);
                self.labels.push(NONE);
            } else if let Some(first) = self.first_seen.get_mut(device as usize) {
                *first = (*first).min(head.ts_us);
            }
            device
        };
        // `created` and `updated` carry the device object (PROTOCOL §6), so reports can
        // name devices as people know them. The name is the object's second member, so
        // finding it costs little.
        if matches!(kind, Kind::Created | Kind::Updated) {
            if let Some(name) = scan::path(head.data, &[b"name"]).and_then(scan::string) {
                if let Some(label) = self.labels.get_mut(device as usize) {
                    *label = self.texts.intern(&name);
                }
            }
        }
        self.min_ts = Some(self.min_ts.map_or(head.ts_us, |t| t.min(head.ts_us)));
        self.max_ts = Some(self.max_ts.map_or(head.ts_us, |t| t.max(head.ts_us)));
        let mut event = Event {
            ts: head.ts_us,
            device,
            name: NONE,
            fw: NONE,
            kind,
            on: -1,
            ota_status: -1,
            reverted: false,
        };
        let mut recorded = false;
        let keep = match kind {
            Kind::Online | Kind::Offline | Kind::Deleted | Kind::ServerStarted => true,
            Kind::Updated if need.shadow || need.firmware => {
                self.updated(&head, &mut event, need);
                true
            }
            Kind::RpcOut if need.shadow && &*head.name == b"rpc.out.Dash.Shadow.Update" => {
                if let Some(reported) = scan::path(head.data, &[b"state", b"reported"]) {
                    self.reported(reported, &mut event, need);
                }
                true
            }
            Kind::Ota(signal) => {
                let step = match signal {
                    OtaSignal::Start => Some(Step::Begin),
                    OtaSignal::Success => Some(Step::Success),
                    OtaSignal::Failure => Some(Step::Failure),
                    OtaSignal::Revert => Some(Step::Revert),
                    OtaSignal::Other => None,
                };
                if let Some(step) = step.filter(|_| need.firmware) {
                    let update = self.update(&head, step, device);
                    // Both say what the device runs now.
                    if matches!(step, Step::Success | Step::Revert) {
                        event.fw = update.version;
                    }
                    self.updates.push(update);
                }
                need.shadow || need.firmware
            }
            Kind::Rollout => {
                if let Some(step) = rollout_step(&head.name).filter(|_| need.firmware) {
                    let update = self.update(&head, step, NONE);
                    self.updates.push(update);
                    recorded = true;
                }
                false
            }
            _ => false,
        };
        if need.names {
            event.name = self.names.intern(&head.name);
        } else if !keep {
            return if recorded {
                LineOutcome::Kept
            } else {
                LineOutcome::Skipped
            };
        }
        self.events.push(event);
        LineOutcome::Kept
    }

    /// The [`Update`] of an engine event: its data's fields (PROTOCOL §10.6); the id of a
    /// rollout event is the rollout's.
    fn update(&mut self, head: &Head<'_>, step: Step, device: u32) -> Update {
        let mut update = Update::new(head.ts_us, step, device);
        if step.is_rollout() {
            update.rollout = self.texts.intern(&head.id);
        }
        scan::members(head.data, 0, |key, value| {
            // An empty text says nothing, like a missing one.
            let text = |texts: &mut Interner| {
                scan::string(value)
                    .filter(|text| !text.is_empty())
                    .map_or(NONE, |text| texts.intern(&text))
            };
            match key {
                b"firmware" => update.firmware = text(&mut self.texts),
                b"rollout" if !step.is_rollout() => update.rollout = text(&mut self.texts),
                b"version" if matches!(step, Step::Begin | Step::Success) => {
                    update.version = text(&mut self.versions);
                }
                b"running_version" if step == Step::Revert => {
                    update.version = text(&mut self.versions);
                }
                b"seconds" if step == Step::Success => {
                    update.seconds_us = scan::number_us(value)
                        .filter(|&(us, used)| used == value.len() && us >= 0)
                        .map(|(us, _)| us);
                }
                b"stage" if step == Step::Failure => update.stage = text(&mut self.texts),
                b"message" if matches!(step, Step::Failure | Step::Revert) => {
                    update.text = text(&mut self.texts);
                }
                b"reason" if step == Step::Halted => update.text = text(&mut self.texts),
                b"name" if step == Step::Planned => update.text = text(&mut self.texts),
                _ if !step.is_rollout() => {}
                b"state" => update.state = text(&mut self.texts),
                b"wave" => update.wave = count(value).map_or(NONE, clamp),
                b"devices" => update.devices = count(value).map_or(NONE, clamp),
                _ => {
                    if let Some(n) = count(value) {
                        set_counter(&mut update.counters, key, n);
                    }
                }
            }
            true
        });
        update
    }

    /// `updated` carries the device object (PROTOCOL §5, §6): the reported state sits at
    /// `shadow.state.reported`, the running firmware at `info.fw_version`.
    fn updated(&mut self, head: &Head<'_>, event: &mut Event, need: Need) {
        if let Some(reported) = scan::path(head.data, &[b"shadow", b"state", b"reported"]) {
            self.reported(reported, event, need);
        }
        // `reported.ota.fw_version` is what the device says it booted; `info` may lag it
        // until the next `Sys.GetInfo`, so it only fills in when the shadow has nothing.
        if need.firmware && event.fw == NONE {
            if let Some(fw) =
                scan::path(head.data, &[b"info", b"fw_version"]).and_then(scan::string)
            {
                event.fw = self.versions.intern(&fw);
            }
        }
    }

    /// Reads `on` and `ota` out of a `reported` section (PROTOCOL §4.4).
    fn reported(&mut self, reported: &[u8], event: &mut Event, need: Need) {
        scan::members(reported, 0, |key, value| {
            match key {
                b"on" => {
                    if let Some(on) = scan::boolean(value) {
                        event.on = i8::from(on);
                    }
                    // The rest (`ota`, usually the bulk of it) is only read for firmware.
                    return need.firmware;
                }
                b"ota" if need.firmware => {
                    scan::members(value, 0, |key, value| {
                        match key {
                            b"status" => {
                                if let Some(status) = scan::small_int(value) {
                                    event.ota_status = status as i8;
                                }
                            }
                            b"message" => {
                                event.reverted = scan::string(value).is_some_and(|m| {
                                    m.len() >= 6 && m[..6].eq_ignore_ascii_case(b"revert")
                                });
                            }
                            b"fw_version" => {
                                if let Some(fw) = scan::string(value) {
                                    event.fw = self.versions.intern(&fw);
                                }
                            }
                            _ => {}
                        }
                        true
                    });
                }
                _ => {}
            }
            true
        });
    }
}

/// The methods the server answers itself (PROTOCOL §3); a device request for any other
/// method gets a 404 reply, which is the one RPC failure the log shows.
#[cfg(feature = "tables")]
pub(crate) fn handled_by_server(method: &[u8]) -> bool {
    matches!(
        method,
        b"Dash.Shadow.Update" | b"Dash.Shadow.Get" | b"Dash.Heartbeat" | b"Log" | b"Dash.Log"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_classify() {
        assert_eq!(classify(b"online"), Some(Kind::Online));
        assert_eq!(classify(b"rpc.out.Log"), Some(Kind::RpcOut));
        assert_eq!(classify(b"rpc.in."), None);
        assert_eq!(classify(b"ota.revert"), Some(Kind::Ota(OtaSignal::Revert)));
        assert_eq!(classify(b"ota.begin"), Some(Kind::Ota(OtaSignal::Start)));
        assert_eq!(classify(b"ota.progress"), Some(Kind::Ota(OtaSignal::Other)));
        assert_eq!(classify(b"rollout.started"), Some(Kind::Rollout));
        assert_eq!(
            classify(notification::SERVER_STARTED.as_bytes()),
            Some(Kind::ServerStarted)
        );
        // Only the names of PROTOCOL §10.6: guesses at other spellings are unknown.
        for other in [
            &b"ota.reverted"[..],
            b"ota.start",
            b"ota.failed",
            b"ota.done",
            b"ota.",
            b"rollout.finished",
            b"rollout.",
        ] {
            assert_eq!(classify(other), None, "{}", String::from_utf8_lossy(other));
        }
        assert_eq!(classify(b"lagged"), None);
        assert_eq!(classify(b"whatever"), None);
    }

    #[test]
    fn updated_reads_shadow_and_info() {
        let mut batch = Batch::default();
        let line = br#"{"ts":10,"id":"d","name":"updated","data":{"id":"d","info":{"fw_version":"1.0"},"shadow":{"state":{"desired":{"on":false},"reported":{"on":true,"ota":{"status":2,"message":"Reverted: no commit"}}}}}}"#;
        assert_eq!(batch.line(line, Need::ALL), LineOutcome::Kept);
        let event = batch.events[0];
        assert_eq!(event.on, 1);
        assert_eq!(event.ota_status, 2);
        assert!(event.reverted);
        assert_eq!(batch.versions.get(event.fw), b"1.0");
    }

    #[test]
    fn usage_reads_on_and_stops_there() {
        let need = Need {
            shadow: true,
            ..Need::default()
        };
        let mut batch = Batch::default();
        // Nothing after `on` is extracted without the firmware need.
        let line = br#"{"ts":10,"id":"d","name":"rpc.out.Dash.Shadow.Update","data":{"state":{"reported":{"on":false,"ota":{"status":2,"fw_version":"1.0"}}}}}"#;
        assert_eq!(batch.line(line, need), LineOutcome::Kept);
        assert_eq!(batch.events[0].on, 0);
        assert_eq!(batch.events[0].ota_status, -1);
        // But the line must be whole JSON for `on` to count (PROTOCOL §7).
        let malformed = br#"{"ts":10,"id":"d","name":"rpc.out.Dash.Shadow.Update","data":{"state":{"reported":{"on":true,"ota":{"status":2 "fw_version":"1.0"}}}}}"#;
        assert_eq!(batch.line(malformed, need), LineOutcome::Invalid);
        assert_eq!(batch.events.len(), 1);
        let late = br#"{"ts":11,"id":"d","name":"rpc.out.Dash.Shadow.Update","data":{"state":{"reported":{"ota":{"status":2},"on":true}}}}"#;
        assert_eq!(batch.line(late, need), LineOutcome::Kept);
        assert_eq!(batch.events[1].on, 1);
    }

    #[test]
    fn connectivity_keeps_only_what_it_reads() {
        let mut batch = Batch::default();
        let need = Need::default();
        assert_eq!(
            batch.line(br#"{"ts":1,"id":"d","name":"rpc.out.Log","data":{}}"#, need),
            LineOutcome::Skipped
        );
        assert_eq!(
            batch.line(br#"{"ts":2,"id":"e","name":"online","data":null}"#, need),
            LineOutcome::Kept
        );
        assert_eq!(
            batch.line(br#"{"ts":3,"id":"e","name":"nonsense","data":null}"#, need),
            LineOutcome::Unknown
        );
        assert_eq!(batch.line(b"{not json", need), LineOutcome::Invalid);
        assert_eq!(batch.events.len(), 1);
        // Both devices of known events are seen; the unknown event's is not new.
        assert_eq!(batch.devices.len(), 2);
        assert_eq!((batch.lines, batch.unknown, batch.invalid), (4, 1, 1));
    }

    #[test]
    fn engine_events_become_updates() {
        let mut batch = Batch::default();
        let lines: [&[u8]; 6] = [
            br#"{"ts":1,"id":"d","name":"ota.begin","data":{"firmware":"ab12","version":"1.1","size":1024,"rollout":"r1"}}"#,
            br#"{"ts":2,"id":"d","name":"ota.progress","data":{"firmware":"ab12","percent":50}}"#,
            br#"{"ts":3.25,"id":"d","name":"ota.success","data":{"firmware":"ab12","version":"1.1","seconds":2.25,"rollout":"r1"}}"#,
            br#"{"ts":4,"id":"e","name":"ota.failure","data":{"firmware":"ab12","stage":"write","message":"chunk 3 refused"}}"#,
            br#"{"ts":5,"id":"r1","name":"rollout.halted","data":{"total":3,"pending":1,"succeeded":1,"failed":1,"reverted":0,"state":"halted","firmware":"ab12","wave":1,"reason":"too many failures"}}"#,
            br#"{"ts":6,"id":"e","name":"ota.revert","data":{"firmware":"ab12","running_version":"1.0","message":""}}"#,
        ];
        for line in lines {
            assert_eq!(batch.line(line, Need::ALL), LineOutcome::Kept);
        }
        // The rollout is no device.
        assert_eq!(batch.devices.len(), 2);
        assert_eq!(batch.events[4].device, NONE);
        assert_eq!(batch.updates.len(), 5, "progress has no update");
        let text = |id: u32| String::from_utf8_lossy(batch.texts.get(id)).into_owned();
        let version = |id: u32| String::from_utf8_lossy(batch.versions.get(id)).into_owned();
        let [begin, success, failure, halted, revert] = batch.updates[..] else {
            panic!("five updates");
        };
        assert_eq!((begin.step, begin.device), (Step::Begin, 0));
        assert_eq!(
            (text(begin.firmware), text(begin.rollout)),
            ("ab12".into(), "r1".into())
        );
        assert_eq!(version(begin.version), "1.1");
        assert_eq!(success.seconds_us, Some(2_250_000));
        assert_eq!(
            batch.events[2].fw, success.version,
            "success says what runs"
        );
        assert_eq!((failure.step, failure.rollout), (Step::Failure, NONE));
        assert_eq!(
            (text(failure.stage), text(failure.text)),
            ("write".into(), "chunk 3 refused".into())
        );
        assert_eq!((halted.device, text(halted.rollout)), (NONE, "r1".into()));
        assert_eq!(
            (text(halted.state), text(halted.text)),
            ("halted".into(), "too many failures".into())
        );
        assert_eq!(halted.wave, 1);
        assert_eq!(halted.counters.total, 3);
        assert_eq!(halted.counters.pending, 1);
        assert_eq!(halted.counters.failed, 1);
        assert_eq!(version(revert.version), "1.0");
        assert_eq!(revert.text, NONE, "an empty message is none");

        // Without the firmware need nothing is recorded, and a rollout line is skipped.
        let mut narrow = Batch::default();
        for line in lines {
            narrow.line(line, Need::default());
        }
        assert!(narrow.updates.is_empty());
        assert_eq!(narrow.events.len(), 0);
    }
}
