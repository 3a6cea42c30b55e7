//! State of the device view: the device object, which shadow keys just changed, the
//! `desired` editor and the RPC dialog. Also the JSON helpers they need.

use std::collections::HashMap;

use herd_client::DeviceObject;
use serde_json::{Map, Value};
use tui_textarea::TextArea;

use super::input::LineInput;
use super::rollouts::PushDialog;
use crate::history::Timeline;

/// Which list the lower pane shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pane {
    /// Every notification of this device.
    Events,
    /// Only its `rpc.out.Log` lines.
    Logs,
    /// Its `Sys.GetInfo` object.
    Info,
    /// Its events over time from the notification log, and the state at the one chosen.
    Timeline,
}

/// The scrollable parts of the device view, in Tab order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Part {
    Desired,
    Reported,
    Delta,
    /// The events, logs or info pane.
    #[default]
    Lower,
}

impl Part {
    pub const ALL: [Part; 4] = [Part::Desired, Part::Reported, Part::Delta, Part::Lower];

    fn index(self) -> usize {
        Part::ALL.iter().position(|p| *p == self).unwrap_or(3)
    }

    pub fn next(self, delta: isize) -> Part {
        let len = Part::ALL.len() as isize;
        Part::ALL[(self.index() as isize + delta).rem_euclid(len) as usize]
    }
}

/// One device opened from the fleet.
#[derive(Debug)]
pub struct DeviceView {
    pub id: String,
    pub object: Option<DeviceObject>,
    pub loading: bool,
    pub error: Option<String>,
    /// `desired/on`, `reported/ota/status`, ... with the time they last changed.
    pub changed: HashMap<String, f64>,
    pub pane: Pane,
    pub editor: Option<Editor>,
    pub rpc: Option<RpcDialog>,
    /// The firmware picker of `u`.
    pub push: Option<PushDialog>,
    /// The part the scrolling keys move.
    pub focus: Part,
    /// The version a sent edit of `desired` made, until the reload shows it.
    pub sent_version: Option<u64>,
    /// Lines scrolled in each part: from the top for the shadow panes and the info, from
    /// the newest line back for events and logs.
    pub scroll: [usize; 4],
    /// The device's timeline, once the server's log was read (or why it could not be).
    pub timeline: Option<Result<Timeline, String>>,
    /// The log is being read for the timeline.
    pub timeline_loading: bool,
    /// The chosen event of the timeline; `None` follows the newest.
    pub timeline_selected: Option<usize>,
}

/// A pause this long starts a new type-to-jump.
pub const JUMP_PAUSE_SECS: f64 = 1.0;

/// How long a changed key stays highlighted.
pub const HIGHLIGHT_SECS: f64 = 10.0;

impl DeviceView {
    pub fn new(id: &str) -> Self {
        DeviceView {
            id: id.to_string(),
            object: None,
            loading: true,
            error: None,
            changed: HashMap::new(),
            pane: Pane::Events,
            editor: None,
            rpc: None,
            push: None,
            focus: Part::Lower,
            sent_version: None,
            scroll: [0; 4],
            timeline: None,
            timeline_loading: false,
            timeline_selected: None,
        }
    }

    /// The timeline's chosen event, the newest when none was chosen.
    pub fn timeline_cursor(&self) -> Option<usize> {
        let Some(Ok(timeline)) = &self.timeline else {
            return None;
        };
        let last = timeline.len().checked_sub(1)?;
        Some(self.timeline_selected.unwrap_or(last).min(last))
    }

    /// Moves the timeline's cursor by `delta` events; reaching the newest follows it.
    pub fn move_timeline(&mut self, delta: isize) {
        let Some(cursor) = self.timeline_cursor() else {
            return;
        };
        let len = match &self.timeline {
            Some(Ok(timeline)) => timeline.len(),
            _ => 0,
        };
        let target = (cursor as isize)
            .saturating_add(delta)
            .clamp(0, len as isize - 1) as usize;
        self.timeline_selected = (target + 1 < len).then_some(target);
    }

    pub fn scroll_of(&self, part: Part) -> usize {
        self.scroll[part.index()]
    }

    /// Scrolls the focused part by `delta` lines (positive: down, which for events and
    /// logs means newer).
    pub fn scroll_by(&mut self, delta: isize) {
        let from_bottom = self.focus == Part::Lower && self.pane != Pane::Info;
        let slot = &mut self.scroll[self.focus.index()];
        let delta = if from_bottom { -delta } else { delta };
        *slot = (*slot as isize).saturating_add(delta).max(0) as usize;
    }

    /// Takes a newer device object, remembering which shadow keys differ from the last.
    pub fn set_object(&mut self, object: DeviceObject, now: f64) {
        if let Some(old) = &self.object {
            for section in ["desired", "reported", "delta"] {
                let before = old
                    .shadow
                    .pointer(&format!("/state/{section}"))
                    .unwrap_or(&Value::Null);
                let after = object
                    .shadow
                    .pointer(&format!("/state/{section}"))
                    .unwrap_or(&Value::Null);
                let mut paths = Vec::new();
                changed_paths(before, after, section, &mut paths);
                for path in paths {
                    self.changed.insert(path, now);
                }
            }
        }
        self.changed.retain(|_, at| now - *at < HIGHLIGHT_SECS);
        self.object = Some(object);
        self.loading = false;
        self.error = None;
    }

    pub fn section(&self, section: &str) -> Value {
        self.object
            .as_ref()
            .and_then(|o| o.shadow.pointer(&format!("/state/{section}")))
            .cloned()
            .unwrap_or_else(|| Value::Object(Map::new()))
    }

    pub fn version(&self) -> u64 {
        self.object
            .as_ref()
            .and_then(|o| o.shadow.get("version"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    }

    pub fn is_changed(&self, path: &str, now: f64) -> bool {
        self.changed
            .get(path)
            .is_some_and(|at| now - *at < HIGHLIGHT_SECS)
    }

    pub fn online(&self) -> bool {
        self.object.as_ref().is_some_and(|o| o.online)
    }
}

/// The built-in editor of `desired`.
#[derive(Debug)]
pub struct Editor {
    pub textarea: TextArea<'static>,
    /// The desired section the edit started from: the update sent is the difference.
    pub base: Value,
    /// The shadow version it started from; the server rejects the update if the shadow
    /// moved on meanwhile (PROTOCOL §4.1).
    pub base_version: u64,
    /// Why the text cannot be sent, shown under it.
    pub error: Option<String>,
    /// After a version conflict: the server's desired section and version.
    pub conflict: Option<(Value, u64)>,
    pub awaiting_conflict_copy: bool,
    pub sending: bool,
    /// The text the edit started from, to tell whether anything would be lost.
    pub initial: String,
    /// Esc was pressed over unsent changes: the next Esc discards them.
    pub confirm_discard: bool,
}

impl Editor {
    pub fn new(desired: &Value, version: u64) -> Self {
        let text = serde_json::to_string_pretty(desired).unwrap_or_else(|_| "{}".into());
        Self::with_text(&text, desired, version)
    }

    pub fn with_text(text: &str, base: &Value, version: u64) -> Self {
        let mut textarea = TextArea::new(text.lines().map(str::to_string).collect());
        textarea.set_tab_length(2);
        Editor {
            textarea,
            base: base.clone(),
            base_version: version,
            error: None,
            conflict: None,
            awaiting_conflict_copy: false,
            sending: false,
            initial: text.lines().collect::<Vec<_>>().join("\n"),
            confirm_discard: false,
        }
    }

    /// Whether the text differs from what the edit started from.
    pub fn changed(&self) -> bool {
        self.text() != self.initial
    }

    pub fn text(&self) -> String {
        self.textarea.lines().join("\n")
    }

    /// Replaces the text, keeping the editor's settings.
    pub fn set_text(&mut self, text: &str) {
        let mut textarea = TextArea::new(text.lines().map(str::to_string).collect());
        textarea.set_tab_length(2);
        self.textarea = textarea;
    }

    /// Parses the text as the new desired section, or says what is wrong with it.
    pub fn parse(&self) -> Result<Value, String> {
        let text = self.text();
        let value: Value = serde_json::from_str(&text).map_err(|e| {
            format!(
                "invalid JSON at line {}, column {}: {}",
                e.line(),
                e.column(),
                strip_position(&e.to_string())
            )
        })?;
        if !value.is_object() {
            return Err("desired must be a JSON object, e.g. {\"on\": true}".into());
        }
        Ok(value)
    }
}

fn strip_position(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// Focus inside the RPC dialog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcFocus {
    Methods,
    Params,
}

/// Calling one of the device's RPCs from its `RPC.List`.
#[derive(Debug)]
pub struct RpcDialog {
    /// `None` while `RPC.List` is in flight.
    pub methods: Option<Result<Vec<String>, String>>,
    pub selected: usize,
    pub params: LineInput,
    pub focus: RpcFocus,
    pub in_flight: Option<String>,
    /// The last call: method and pretty result or error.
    pub result: Option<(String, Result<String, String>)>,
    /// Lines of the result scrolled away.
    pub result_scroll: usize,
    /// What was typed to jump in the method list, and when the last key came.
    pub jump: String,
    pub jump_at: f64,
}

impl RpcDialog {
    pub fn new() -> Self {
        RpcDialog {
            methods: None,
            selected: 0,
            params: LineInput::default(),
            focus: RpcFocus::Methods,
            in_flight: None,
            result: None,
            result_scroll: 0,
            jump: String::new(),
            jump_at: f64::NEG_INFINITY,
        }
    }

    /// Type-to-jump: adds `c` to what was typed (begun anew after a pause) and moves to
    /// the first method that starts with it, else the first that contains it; false when
    /// none fits (the cursor stays).
    pub fn jump_to(&mut self, c: char, now: f64) -> bool {
        if now - self.jump_at > JUMP_PAUSE_SECS {
            self.jump.clear();
        }
        self.jump_at = now;
        self.jump.push(c);
        let Some(Ok(methods)) = &self.methods else {
            return false;
        };
        let typed = self.jump.to_lowercase();
        let found = methods
            .iter()
            .position(|m| m.to_lowercase().starts_with(&typed))
            .or_else(|| {
                methods
                    .iter()
                    .position(|m| m.to_lowercase().contains(&typed))
            });
        match found {
            Some(index) => {
                self.selected = index;
                true
            }
            None => false,
        }
    }

    pub fn selected_method(&self) -> Option<&str> {
        match &self.methods {
            Some(Ok(methods)) => methods.get(self.selected).map(String::as_str),
            _ => None,
        }
    }
}

impl Default for RpcDialog {
    fn default() -> Self {
        Self::new()
    }
}

/// The PROTOCOL §4.1 update that turns `old` into `new`: changed keys with their new
/// values, nested objects recursively, removed keys as `null` (which deletes them).
pub fn desired_update(old: &Value, new: &Value) -> Value {
    let (Value::Object(old), Value::Object(new)) = (old, new) else {
        return new.clone();
    };
    let mut update = Map::new();
    for (key, value) in new {
        match old.get(key) {
            Some(previous) if previous == value => {}
            Some(previous @ Value::Object(_)) if value.is_object() => {
                let nested = desired_update(previous, value);
                if nested.as_object().is_some_and(|m| !m.is_empty()) {
                    update.insert(key.clone(), nested);
                }
            }
            _ => {
                update.insert(key.clone(), value.clone());
            }
        }
    }
    for key in old.keys() {
        if !new.contains_key(key) {
            update.insert(key.clone(), Value::Null);
        }
    }
    Value::Object(update)
}

/// Appends the paths (`prefix/a/b`) of leaves that differ between `before` and `after`.
pub fn changed_paths(before: &Value, after: &Value, prefix: &str, out: &mut Vec<String>) {
    match (before, after) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in b {
                let path = format!("{prefix}/{key}");
                match a.get(key) {
                    Some(old) => changed_paths(old, value, &path, out),
                    None => mark_all(value, &path, out),
                }
            }
        }
        (a, b) if a != b => mark_all(b, prefix, out),
        _ => {}
    }
}

fn mark_all(value: &Value, path: &str, out: &mut Vec<String>) {
    out.push(path.to_string());
    if let Value::Object(map) = value {
        for (key, value) in map {
            mark_all(value, &format!("{path}/{key}"), out);
        }
    }
}

/// One line of pretty-printed JSON and the path of the key it shows.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonLine {
    pub text: String,
    pub path: String,
}

/// Pretty-prints `value` line by line, tagging each line with its key path under
/// `prefix`, so a view can highlight changed keys.
pub fn json_lines(value: &Value, prefix: &str) -> Vec<JsonLine> {
    let mut out = Vec::new();
    match value {
        Value::Object(map) if map.is_empty() => out.push(JsonLine {
            text: "{}".into(),
            path: prefix.into(),
        }),
        Value::Object(map) => {
            for (key, value) in map {
                push_member(key, value, prefix, 0, &mut out);
            }
        }
        other => out.push(JsonLine {
            text: other.to_string(),
            path: prefix.into(),
        }),
    }
    out
}

fn push_member(key: &str, value: &Value, prefix: &str, depth: usize, out: &mut Vec<JsonLine>) {
    let indent = "  ".repeat(depth);
    let path = format!("{prefix}/{key}");
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push(JsonLine {
                text: format!("{indent}{key}:"),
                path: path.clone(),
            });
            for (k, v) in map {
                push_member(k, v, &path, depth + 1, out);
            }
        }
        other => out.push(JsonLine {
            text: format!("{indent}{key}: {other}"),
            path,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn updates_carry_only_differences() {
        let old = json!({"on": false, "color": {"r": 1, "g": 2}, "gone": 1});
        let new = json!({"on": true, "color": {"r": 1, "g": 3}, "added": [1]});
        assert_eq!(
            desired_update(&old, &new),
            json!({"on": true, "color": {"g": 3}, "added": [1], "gone": null})
        );
        assert_eq!(desired_update(&new, &new), json!({}));
        assert_eq!(
            desired_update(&json!({"a": {"b": 1}}), &json!({"a": {}})),
            json!({"a": {"b": null}})
        );
    }

    #[test]
    fn changed_paths_and_lines() {
        let mut paths = Vec::new();
        changed_paths(
            &json!({"on": false, "ota": {"status": 0}}),
            &json!({"on": true, "ota": {"status": 0}, "new": {"x": 1}}),
            "reported",
            &mut paths,
        );
        assert_eq!(paths, ["reported/new", "reported/new/x", "reported/on"]);
        let lines = json_lines(&json!({"on": true, "ota": {"status": 1}}), "reported");
        let texts: Vec<_> = lines
            .iter()
            .map(|l| (l.text.as_str(), l.path.as_str()))
            .collect();
        assert_eq!(
            texts,
            [
                ("on: true", "reported/on"),
                ("ota:", "reported/ota"),
                ("  status: 1", "reported/ota/status")
            ]
        );
        assert_eq!(json_lines(&json!({}), "delta")[0].text, "{}");
    }

    #[test]
    fn editor_validates() {
        let mut editor = Editor::new(&json!({"on": true}), 3);
        assert_eq!(editor.parse().expect("valid"), json!({"on": true}));
        editor.set_text("{\"on\": tru}");
        let error = editor.parse().expect_err("invalid");
        assert!(error.starts_with("invalid JSON at line 1"), "{error}");
        editor.set_text("[1]");
        assert!(editor
            .parse()
            .expect_err("not an object")
            .contains("object"));
    }
}
