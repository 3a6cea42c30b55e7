//! A device as it was at some time, rebuilt from the notification log (PROTOCOL §7):
//! `herd history DEVICE [--at TIME]`.
//!
//! Every `created` and `updated` line carries the whole device object (PROTOCOL §5, §6),
//! so the object at a time is the last one logged at or before it; `online` and `offline`
//! lines after it correct its connection state, and `deleted` ends it. Lines are fed in
//! log order; only the newest object of each device is kept, with a short timeline of
//! what changed, so memory grows with the fleet, not with the log.
//!
//! ```
//! use herd_console::history::History;
//! use serde_json::json;
//!
//! let mut history = History::new(Some(15.0));
//! history.feed(10.0, "d1", "updated", &json!({"id": "d1", "name": "porch", "online": true}));
//! history.feed(20.0, "d1", "offline", &serde_json::Value::Null);
//! let state = history.device("d1").unwrap();
//! assert_eq!(state.online, Some(true), "the offline came after 15 s");
//! ```

use std::collections::{HashMap, VecDeque};

use serde_json::Value;

use crate::lines::{changes_text, object_changes};

/// Timeline entries kept per device.
pub const TIMELINE: usize = 20;

/// What the log says of one device up to the time asked about.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceState {
    pub id: String,
    /// The name in the newest object; empty before one was seen.
    pub name: String,
    /// The newest device object at or before the time, and when it was logged.
    pub object: Option<(f64, Value)>,
    /// Online as the newest `online`/`offline` line (or object) said, and since when.
    pub online: Option<bool>,
    pub since: Option<f64>,
    /// When the device was deleted, if it was by then.
    pub deleted: Option<f64>,
    /// The newest changes, oldest first: time and what changed.
    pub timeline: VecDeque<(f64, String)>,
}

impl DeviceState {
    /// The firmware version the object shows.
    pub fn firmware(&self) -> Option<&str> {
        let (_, object) = self.object.as_ref()?;
        object
            .pointer("/info/fw_version")
            .or_else(|| object.pointer("/shadow/state/reported/ota/fw_version"))
            .and_then(Value::as_str)
    }

    /// The shadow's `state` (desired and reported) in the object.
    pub fn shadow_state(&self) -> Option<&Value> {
        self.object.as_ref()?.1.pointer("/shadow/state")
    }

    fn note(&mut self, ts: f64, text: String) {
        if self.timeline.len() == TIMELINE {
            self.timeline.pop_front();
        }
        self.timeline.push_back((ts, text));
    }
}

/// The devices of a log as they were at `at` (or at its end).
#[derive(Debug, Clone, Default)]
pub struct History {
    at: Option<f64>,
    devices: HashMap<String, DeviceState>,
    /// Lines after `at`, not taken.
    pub later: u64,
}

impl History {
    pub fn new(at: Option<f64>) -> History {
        History {
            at,
            ..Default::default()
        }
    }

    /// Takes one log line; lines after `at` are counted and left out.
    pub fn feed(&mut self, ts: f64, id: &str, name: &str, data: &Value) {
        if self.at.is_some_and(|at| ts > at) {
            self.later += 1;
            return;
        }
        let is_device_event = matches!(
            name,
            "created" | "updated" | "online" | "offline" | "deleted"
        );
        if !is_device_event || id.is_empty() {
            return;
        }
        let state = self
            .devices
            .entry(id.to_string())
            .or_insert_with(|| DeviceState {
                id: id.to_string(),
                ..Default::default()
            });
        match name {
            "created" | "updated" => {
                let text = match &state.object {
                    Some((_, before)) => {
                        let changes = object_changes(before, data);
                        (!changes.is_empty()).then(|| changes_text(&changes))
                    }
                    None => Some(format!("{name}: first copy")),
                };
                if let Some(text) = text {
                    state.note(ts, text);
                }
                if let Some(new_name) = data.get("name").and_then(Value::as_str) {
                    state.name = new_name.to_string();
                }
                if let Some(online) = data.get("online").and_then(Value::as_bool) {
                    if state.online != Some(online) {
                        state.since = Some(ts);
                    }
                    state.online = Some(online);
                }
                state.deleted = None;
                state.object = Some((ts, data.clone()));
            }
            "online" | "offline" => {
                let online = name == "online";
                if state.online != Some(online) {
                    state.since = Some(ts);
                    state.note(ts, name.to_string());
                }
                state.online = Some(online);
            }
            _ => {
                state.deleted = Some(ts);
                state.online = Some(false);
                state.note(ts, "deleted".into());
            }
        }
    }

    pub fn device(&self, id: &str) -> Option<&DeviceState> {
        self.devices.get(id)
    }

    /// Every device seen, as `(id, name)`, for finding one by name.
    pub fn names(&self) -> impl Iterator<Item = (&str, &str)> {
        self.devices
            .values()
            .map(|d| (d.id.as_str(), d.name.as_str()))
    }
}

/// Events a [`Timeline`] keeps; older ones are folded into the state it starts from.
pub const TIMELINE_EVENTS: usize = 2000;

/// What kind of event a timeline line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Online,
    Offline,
    /// `desired`, `reported` or `delta` changed.
    Shadow,
    /// The firmware version changed.
    Firmware,
    /// Something else of the device object (its name, sharing).
    Changed,
    Deleted,
}

/// One event of a device's timeline: when, what kind, what changed.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineEvent {
    pub ts: f64,
    pub kind: EventKind,
    /// `online`, or the changes as diffs: `reported.on false→true · version 8→9`.
    pub text: String,
    /// The log line's name and data, to rebuild the state at this event.
    name: String,
    data: Value,
}

/// One device's events over time, from the notification log and then live: connection
/// changes, shadow changes as diffs, firmware versions. [`Timeline::state_at`] rebuilds
/// the device as it was at any of them, as `herd history --at` does.
///
/// ```
/// use herd_console::history::{EventKind, Timeline};
/// use serde_json::json;
///
/// let mut timeline = Timeline::new("d1");
/// let object = |on: bool| json!({"id": "d1", "online": true, "info": {"fw_version": "1.0"},
///                                "shadow": {"state": {"reported": {"on": on}}}});
/// timeline.feed(1.0, "d1", "created", &object(false));
/// timeline.feed(2.0, "d1", "updated", &object(true));
/// timeline.feed(3.0, "d1", "offline", &serde_json::Value::Null);
/// timeline.feed(4.0, "other", "offline", &serde_json::Value::Null);
/// assert_eq!(timeline.len(), 3);
/// assert_eq!(timeline.events()[1].kind, EventKind::Shadow);
/// assert_eq!(timeline.events()[1].text, "reported.on false→true");
/// let at_two = timeline.state_at(1).expect("an event");
/// assert_eq!((at_two.online, at_two.shadow_state().unwrap()["reported"]["on"].as_bool()),
///            (Some(true), Some(true)));
/// assert_eq!(timeline.state_at(2).unwrap().online, Some(false));
/// ```
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    id: String,
    events: VecDeque<TimelineEvent>,
    /// The state before the first kept event: the events dropped for room.
    base: History,
    /// The newest object and connection state fed, to tell what an event changes.
    last_object: Option<Value>,
    online: Option<bool>,
}

impl Timeline {
    pub fn new(id: &str) -> Timeline {
        Timeline {
            id: id.to_string(),
            ..Default::default()
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn events(&self) -> &VecDeque<TimelineEvent> {
        &self.events
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Takes one notification (from the log or live, in order); those of other devices,
    /// and updates that change only the shadow's bookkeeping, add nothing.
    pub fn feed(&mut self, ts: f64, id: &str, name: &str, data: &Value) {
        if id != self.id {
            return;
        }
        let event = match name {
            "created" | "updated" => {
                let event = match &self.last_object {
                    None => Some((EventKind::Created, format!("{name}: first copy"))),
                    Some(before) => {
                        let changes = object_changes(before, data);
                        let firmware = changes.iter().any(|c| {
                            c.path == "info.fw_version" || c.path == "reported.ota.fw_version"
                        });
                        let shadow = changes.iter().any(|c| {
                            ["desired", "reported", "delta"]
                                .iter()
                                .any(|section| c.path.starts_with(section))
                        });
                        let kind = if name == "created" {
                            EventKind::Created
                        } else if firmware {
                            EventKind::Firmware
                        } else if shadow {
                            EventKind::Shadow
                        } else {
                            EventKind::Changed
                        };
                        (!changes.is_empty()).then(|| (kind, changes_text(&changes)))
                    }
                };
                if let Some(online) = data.get("online").and_then(Value::as_bool) {
                    self.online = Some(online);
                }
                self.last_object = Some(data.clone());
                event
            }
            "online" | "offline" => {
                let online = name == "online";
                let changed = self.online != Some(online);
                self.online = Some(online);
                changed.then(|| {
                    let kind = if online {
                        EventKind::Online
                    } else {
                        EventKind::Offline
                    };
                    (kind, name.to_string())
                })
            }
            "deleted" => {
                self.online = Some(false);
                Some((EventKind::Deleted, "deleted".to_string()))
            }
            _ => None,
        };
        // An update of the shadow's bookkeeping alone changes nothing the state shows.
        let Some((kind, text)) = event else {
            return;
        };
        if self.events.len() == TIMELINE_EVENTS {
            if let Some(old) = self.events.pop_front() {
                self.base.feed(old.ts, &self.id, &old.name, &old.data);
            }
        }
        self.events.push_back(TimelineEvent {
            ts,
            kind,
            text,
            name: name.to_string(),
            data: data.clone(),
        });
    }

    /// The device as it was right after event `index`; `None` past the end.
    pub fn state_at(&self, index: usize) -> Option<DeviceState> {
        self.events.get(index)?;
        let mut history = History {
            at: None,
            devices: self.base.devices.clone(),
            later: 0,
        };
        for event in self.events.iter().take(index + 1) {
            history.feed(event.ts, &self.id, &event.name, &event.data);
        }
        let mut state = history.device(&self.id).cloned().unwrap_or(DeviceState {
            id: self.id.clone(),
            ..Default::default()
        });
        // The events list already says what happened; the state is what held.
        state.timeline.clear();
        Some(state)
    }
}

/// The state as people read it.
pub fn describe(state: &DeviceState, at: Option<f64>) -> String {
    use crate::text::rfc3339;
    let mut out = String::new();
    let label = if state.name.is_empty() || state.name == state.id {
        state.id.clone()
    } else {
        format!("{} ({})", state.name, state.id)
    };
    let when = at.map_or_else(
        || "at the log's end".to_string(),
        |t| format!("at {}", rfc3339(t)),
    );
    out.push_str(&format!("{label} {when}\n"));
    if let Some(deleted) = state.deleted {
        out.push_str(&format!("deleted      {}\n", rfc3339(deleted)));
    }
    let online = match (state.online, state.since) {
        (Some(true), Some(since)) => format!("online since {}", rfc3339(since)),
        (Some(false), Some(since)) => format!("offline since {}", rfc3339(since)),
        (Some(true), None) => "online".into(),
        (Some(false), None) => "offline".into(),
        (None, _) => "unknown".into(),
    };
    out.push_str(&format!("connection   {online}\n"));
    out.push_str(&format!(
        "firmware     {}\n",
        state.firmware().unwrap_or("unknown")
    ));
    if let Some((ts, _)) = &state.object {
        out.push_str(&format!("object from  {}\n", rfc3339(*ts)));
    }
    if let Some(shadow) = state.shadow_state() {
        for section in ["desired", "reported"] {
            if let Some(value) = shadow.get(section) {
                out.push_str(&format!("{section:<12} {value}\n"));
            }
        }
    }
    if !state.timeline.is_empty() {
        out.push_str("timeline\n");
        for (ts, text) in &state.timeline {
            out.push_str(&format!("  {}  {text}\n", rfc3339(*ts)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(on: bool, fw: &str, online: bool) -> Value {
        json!({"id": "d1", "name": "porch", "online": online, "info": {"fw_version": fw},
               "shadow": {"state": {"reported": {"on": on}}, "version": 1}})
    }

    #[test]
    fn the_state_at_a_time() {
        let lines = [
            (1.0, "created", object(false, "1.0", false)),
            (2.0, "online", Value::Null),
            (3.0, "updated", object(true, "1.0", true)),
            (5.0, "updated", object(true, "1.1", true)),
            (6.0, "offline", Value::Null),
            (9.0, "deleted", json!({"id": "d1"})),
        ];
        let at = |t: Option<f64>| {
            let mut history = History::new(t);
            for (ts, name, data) in &lines {
                history.feed(*ts, "d1", name, data);
            }
            history.device("d1").cloned().expect("seen")
        };
        let early = at(Some(4.0));
        assert_eq!(early.firmware(), Some("1.0"));
        assert_eq!((early.online, early.since), (Some(true), Some(2.0)));
        assert_eq!(early.shadow_state().unwrap()["reported"]["on"], true);
        assert_eq!(early.deleted, None);
        let later = at(Some(7.0));
        assert_eq!(later.firmware(), Some("1.1"));
        assert_eq!((later.online, later.since), (Some(false), Some(6.0)));
        assert!(later
            .timeline
            .iter()
            .any(|(ts, text)| *ts == 5.0 && text.contains("info.fw_version")));
        let end = at(None);
        assert_eq!(end.deleted, Some(9.0));
        let text = describe(&early, Some(4.0));
        assert!(
            text.starts_with("porch (d1) at 1970-01-01T00:00:04Z"),
            "{text}"
        );
        assert!(text.contains("firmware     1.0"), "{text}");
    }
}
