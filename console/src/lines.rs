//! How a notification is written as one line: the JSON log form (PROTOCOL §7) that
//! `herd tail --json` prints and saved tails hold, and the human form.

use herd_client::Notification;
use serde::Serialize;

/// A saved or printed line: PROTOCOL §7's `{"ts", "id", "name", "data"}` in that order,
/// and the device's name as `device_name` when it has one (readers of the log form ignore
/// members they do not know).
#[derive(Serialize)]
struct Line<'a> {
    ts: f64,
    id: &'a str,
    name: &'a str,
    data: &'a serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    device_name: Option<&'a str>,
}

/// One notification in the persisted form of PROTOCOL §7, stamped with the time it
/// arrived here, with the device's name when known.
pub fn json_line(ts: f64, notification: &Notification, device_name: Option<&str>) -> String {
    let line = Line {
        ts,
        id: &notification.id,
        name: &notification.name,
        data: &notification.data,
        device_name,
    };
    serde_json::to_string(&line).unwrap_or_default()
}

/// One notification for people: time, device (its name when it has one), event, data.
pub fn human_line(ts: f64, notification: &Notification, device_name: Option<&str>) -> String {
    let data = if notification.data.is_null() {
        String::new()
    } else {
        notification.data.to_string()
    };
    human_text(
        ts,
        device_name.unwrap_or(&notification.id),
        &notification.name,
        &data,
    )
}

/// A human line from its parts: time, device, event, and what to say of the data.
pub fn human_text(ts: f64, device: &str, event: &str, data: &str) -> String {
    format!(
        "{}  {}  {}  {}",
        crate::text::clock_time(ts),
        device,
        event,
        data
    )
    .trim_end()
    .to_string()
}

/// Most changes an `updated` line lists before it says how many more there were.
const MAX_CHANGES: usize = 8;
/// Longest value text in a change; longer ones are cut.
const MAX_VALUE_CHARS: usize = 40;

/// One difference between two device objects: where, and the value before and after
/// (`None`: absent).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub path: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// What changed from one `updated` device object (PROTOCOL §5, §6) to the next, leaf by
/// leaf. The shadow's `state.` is left out of paths (`reported.on`, `desired.on`,
/// `delta.on`), and its bookkeeping (`metadata`, `timestamp`) is not reported: it changes
/// with every update and says nothing the rest does not.
pub fn object_changes(before: &serde_json::Value, after: &serde_json::Value) -> Vec<Change> {
    let mut out = Vec::new();
    walk(before, after, "", &mut out);
    // What people look for first: the connection, then the shadow, then the rest.
    const ORDER: [&str; 7] = [
        "online",
        "name",
        "reported",
        "desired",
        "delta",
        "version",
        "last_seen",
    ];
    out.sort_by_key(|change| {
        let first = change.path.split('.').next().unwrap_or_default();
        ORDER
            .iter()
            .position(|o| *o == first)
            .unwrap_or(ORDER.len())
    });
    out
}

fn shown_path(path: &str) -> Option<String> {
    let path = path.strip_prefix('.').unwrap_or(path);
    if path == "shadow.timestamp" || path.starts_with("shadow.metadata") {
        return None;
    }
    Some(match path.strip_prefix("shadow.state.") {
        Some(rest) => rest.to_string(),
        None => path.strip_prefix("shadow.").unwrap_or(path).to_string(),
    })
}

fn walk(before: &serde_json::Value, after: &serde_json::Value, path: &str, out: &mut Vec<Change>) {
    use serde_json::Value;
    if before == after || shown_path(path).is_none() {
        return;
    }
    match (before, after) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in b {
                let child = format!("{path}.{key}");
                match a.get(key) {
                    Some(old) => walk(old, value, &child, out),
                    None => added(value, &child, out, true),
                }
            }
            for (key, value) in a {
                if !b.contains_key(key) {
                    added(value, &format!("{path}.{key}"), out, false);
                }
            }
        }
        _ => {
            if let Some(shown) = shown_path(path) {
                out.push(Change {
                    path: shown,
                    before: Some(before.clone()),
                    after: Some(after.clone()),
                });
            }
        }
    }
}

/// A subtree only on one side: its leaves, each as added (or removed).
fn added(value: &serde_json::Value, path: &str, out: &mut Vec<Change>, is_new: bool) {
    let Some(shown) = shown_path(path) else {
        return;
    };
    match value {
        serde_json::Value::Object(map) if !map.is_empty() => {
            for (key, value) in map {
                added(value, &format!("{path}.{key}"), out, is_new);
            }
        }
        leaf => out.push(Change {
            path: shown,
            before: (!is_new).then(|| leaf.clone()),
            after: is_new.then(|| leaf.clone()),
        }),
    }
}

fn value_text(value: &Option<serde_json::Value>) -> String {
    match value {
        None => "∅".into(),
        Some(value) => crate::text::truncate(&value.to_string(), MAX_VALUE_CHARS),
    }
}

/// Changes on one line: `reported.on false→true · version 8→9`.
pub fn changes_text(changes: &[Change]) -> String {
    if changes.is_empty() {
        return "no change beyond the shadow's bookkeeping".into();
    }
    let mut parts: Vec<String> = changes
        .iter()
        .take(MAX_CHANGES)
        .map(|change| {
            format!(
                "{} {}→{}",
                change.path,
                value_text(&change.before),
                value_text(&change.after)
            )
        })
        .collect();
    if changes.len() > MAX_CHANGES {
        parts.push(format!("+{} more", changes.len() - MAX_CHANGES));
    }
    parts.join(" · ")
}

/// An `updated` object seen without an earlier copy to compare with: the few facts people
/// look for.
pub fn object_facts(object: &serde_json::Value) -> String {
    let mut parts = vec!["first copy".to_string()];
    if let Some(online) = object.get("online").and_then(serde_json::Value::as_bool) {
        parts.push(if online { "online" } else { "offline" }.into());
    }
    let fw = object
        .pointer("/info/fw_version")
        .or_else(|| object.pointer("/shadow/state/reported/ota/fw_version"))
        .and_then(serde_json::Value::as_str);
    if let Some(fw) = fw {
        parts.push(format!("fw {fw}"));
    }
    if let Some(version) = object.pointer("/shadow/version") {
        parts.push(format!("version {version}"));
    }
    if let Some(reported) = object.pointer("/shadow/state/reported") {
        let mut reported = reported.clone();
        // The OTA block is the bulk of it and rarely what one looks for here.
        if let Some(map) = reported.as_object_mut() {
            map.remove("ota");
        }
        parts.push(format!(
            "reported {}",
            crate::text::truncate(&reported.to_string(), 60)
        ));
    }
    parts.join(" · ")
}

/// The previous `updated` object of each device, so the next one can be shown as what
/// changed. Bounded: past [`ObjectMemory::capacity`] devices the oldest remembered is
/// forgotten (its next line then says `first copy`), so a large fleet cannot grow it
/// without end.
#[derive(Debug)]
pub struct ObjectMemory {
    objects: std::collections::HashMap<Box<str>, serde_json::Value>,
    order: std::collections::VecDeque<Box<str>>,
    capacity: usize,
}

impl Default for ObjectMemory {
    fn default() -> Self {
        Self::new(10_000)
    }
}

impl ObjectMemory {
    pub fn new(capacity: usize) -> Self {
        ObjectMemory {
            objects: Default::default(),
            order: Default::default(),
            capacity: capacity.max(1),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Remembers `object` as device `id`'s newest and says what changed since the last
    /// one (or the facts, without one).
    pub fn summarize(&mut self, id: &str, object: &serde_json::Value) -> String {
        let text = match self.objects.get(id) {
            Some(before) => changes_text(&object_changes(before, object)),
            None => object_facts(object),
        };
        if self.objects.insert(id.into(), object.clone()).is_none() {
            self.order.push_back(id.into());
            if self.order.len() > self.capacity {
                if let Some(oldest) = self.order.pop_front() {
                    self.objects.remove(&oldest);
                }
            }
        }
        text
    }

    /// Takes the objects of `older` (remembered from earlier lines) for the devices this
    /// memory has none of.
    pub fn absorb_older(&mut self, older: ObjectMemory) {
        for id in older.order {
            if let Some(object) = older.objects.get(&id) {
                if !self.objects.contains_key(&id) && self.objects.len() < self.capacity {
                    self.objects.insert(id.clone(), object.clone());
                    self.order.push_back(id);
                }
            }
        }
    }

    /// Forgets a deleted device.
    pub fn forget(&mut self, id: &str) {
        if self.objects.remove(id).is_some() {
            self.order.retain(|known| &**known != id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn updated_objects_show_as_what_changed() {
        let before = json!({"id": "d", "name": "porch", "online": true,
            "shadow": {"state": {"desired": {"on": true}, "reported": {"on": false}, "delta": {"on": true}},
                       "metadata": {"reported": {"on": {"timestamp": 1}}}, "version": 8, "timestamp": 1}});
        let mut after = before.clone();
        after["shadow"]["state"]["reported"]["on"] = json!(true);
        after["shadow"]["state"]["delta"] = json!({});
        after["shadow"]["metadata"]["reported"]["on"]["timestamp"] = json!(2);
        after["shadow"]["timestamp"] = json!(2);
        after["shadow"]["version"] = json!(9);
        assert_eq!(
            changes_text(&object_changes(&before, &after)),
            "reported.on false→true · delta.on true→∅ · version 8→9"
        );
        let mut only_bookkeeping = before.clone();
        only_bookkeeping["shadow"]["timestamp"] = json!(5);
        assert_eq!(
            changes_text(&object_changes(&before, &only_bookkeeping)),
            "no change beyond the shadow's bookkeeping"
        );
        let mut memory = ObjectMemory::new(2);
        assert!(memory
            .summarize("d", &before)
            .starts_with("first copy · online · version 8"));
        assert_eq!(
            memory.summarize("d", &after),
            "reported.on false→true · delta.on true→∅ · version 8→9"
        );
        memory.summarize("e", &before);
        memory.summarize("f", &before);
        assert!(
            memory.summarize("d", &after).starts_with("first copy"),
            "the oldest is forgotten past the capacity"
        );
    }

    #[test]
    fn long_change_lists_are_cut() {
        let before = json!({"info": {}});
        let after = json!({"info": {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6, "g": 7, "h": 8, "i": 9, "j": 10}});
        let text = changes_text(&object_changes(&before, &after));
        assert!(text.starts_with("info.a ∅→1 · info.b ∅→2"), "{text}");
        assert!(text.ends_with("+2 more"), "{text}");
    }

    #[test]
    fn lines_have_the_log_shape() {
        let notification = Notification::new("d1", "online", Value::Null);
        // PROTOCOL §7 form: {"ts", "id", "name", "data"}.
        assert_eq!(
            json_line(1.5, &notification, None),
            r#"{"ts":1.5,"id":"d1","name":"online","data":null}"#
        );
        assert_eq!(
            json_line(1.5, &notification, Some("porch")),
            r#"{"ts":1.5,"id":"d1","name":"online","data":null,"device_name":"porch"}"#
        );
        assert_eq!(
            human_line(0.0, &notification, None),
            "00:00:00.000  d1  online"
        );
        assert_eq!(
            human_line(0.0, &notification, Some("porch")),
            "00:00:00.000  porch  online"
        );
    }
}
