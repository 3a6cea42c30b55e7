//! What a line becomes: a small fixed-size [`Event`] holding only the fields the reports
//! read, and the interners that turn device ids, event names and firmware versions into
//! numbers.

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
    /// `rollout.*`: counted in the fleet report, read by no other.
    Rollout,
}

/// What a firmware-update signal says about the device's current update attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub(crate) enum OtaSignal {
    Start,
    Success,
    Failure,
    Revert,
    /// Another `ota.*` event (progress and the like): no effect on attempts.
    Other,
}

/// The event names of Herd's update engine and what they mean for an attempt. Several
/// spellings are accepted because the engine's names are not fixed by PROTOCOL §5 yet.
fn ota_signal(suffix: &[u8]) -> OtaSignal {
    match suffix {
        b"start" | b"started" | b"begin" => OtaSignal::Start,
        b"success" | b"succeeded" | b"done" | b"committed" => OtaSignal::Success,
        b"failure" | b"failed" | b"error" => OtaSignal::Failure,
        b"revert" | b"reverted" => OtaSignal::Revert,
        _ => OtaSignal::Other,
    }
}

/// The kind of an event name, or `None` for names the reports do not know.
pub(crate) fn classify(name: &[u8]) -> Option<Kind> {
    Some(match name {
        b"online" => Kind::Online,
        b"offline" => Kind::Offline,
        b"created" => Kind::Created,
        b"updated" => Kind::Updated,
        b"deleted" => Kind::Deleted,
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
            } else if let Some(suffix) = name.strip_prefix(b"ota.") {
                Kind::Ota(ota_signal(suffix))
            } else if name.starts_with(b"rollout.") {
                Kind::Rollout
            } else {
                return None;
            }
        }
    })
}

/// Marks an absent interned value.
pub(crate) const NONE: u32 = u32::MAX;

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
    pub names: Interner,
    pub versions: Interner,
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
    pub names: &'a mut Interner,
    pub versions: &'a mut Interner,
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
            names: &mut self.names,
            versions: &mut self.versions,
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
        let remap = |table: &[u32], id: u32| {
            if id == NONE {
                NONE
            } else {
                table.get(id as usize).copied().unwrap_or(NONE)
            }
        };
        into.events.reserve(self.events.len());
        for mut event in self.events {
            event.device = remap(&devices, event.device);
            event.name = remap(&names, event.name);
            event.fw = remap(&versions, event.fw);
            into.events.push(event);
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
        let device = self.devices.intern(&head.id);
        if device as usize == self.first_seen.len() {
            self.first_seen.push(head.ts_us);
        } else if let Some(first) = self.first_seen.get_mut(device as usize) {
            *first = (*first).min(head.ts_us);
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
        let keep = match kind {
            Kind::Online | Kind::Offline | Kind::Deleted => true,
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
            Kind::Ota(_) => need.shadow || need.firmware,
            _ => false,
        };
        if need.names {
            event.name = self.names.intern(&head.name);
        } else if !keep {
            return LineOutcome::Skipped;
        }
        self.events.push(event);
        LineOutcome::Kept
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
        assert_eq!(
            classify(b"ota.reverted"),
            Some(Kind::Ota(OtaSignal::Revert))
        );
        assert_eq!(classify(b"ota.progress"), Some(Kind::Ota(OtaSignal::Other)));
        assert_eq!(classify(b"rollout.started"), Some(Kind::Rollout));
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
        // Everything after `on` goes unread without the firmware need, malformed or not.
        let line = br#"{"ts":10,"id":"d","name":"rpc.out.Dash.Shadow.Update","data":{"state":{"reported":{"on":false,"ota":{"status":2 "fw_version":"1.0"}}}}}"#;
        assert_eq!(batch.line(line, need), LineOutcome::Kept);
        assert_eq!(batch.events[0].on, 0);
        assert_eq!(batch.events[0].ota_status, -1);
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
}
