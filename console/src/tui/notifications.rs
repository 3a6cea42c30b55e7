//! The notification tail: a bounded ring buffer of what the notify stream (PROTOCOL §5)
//! delivered, with follow/pause, filters, wrap, and counts of what was lost.
//!
//! Lines that fall out of the ring are counted as dropped, and so are notifications the
//! server itself dropped for us (`lagged`), so a flood is visible rather than silent.

use std::collections::VecDeque;

use herd_client::Notification;
use regex::Regex;
use serde_json::Value;

use crate::text;

/// Longest data text kept per line; a flood of large device objects must not eat memory.
const MAX_DATA_CHARS: usize = 2000;

/// One received notification.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Position in everything ever received, so a paused view keeps its place while the
    /// ring turns.
    pub seq: u64,
    /// When it arrived here (Unix seconds).
    pub ts: f64,
    pub id: Box<str>,
    pub name: Box<str>,
    /// `data` as compact JSON (cut to [`MAX_DATA_CHARS`]).
    pub data: Box<str>,
    /// For `rpc.out.Log`: the log text itself.
    pub log: Option<Box<str>>,
}

impl Entry {
    /// The line as the tail shows it.
    pub fn line(&self) -> String {
        format!(
            "{}  {}  {}  {}",
            text::clock_time(self.ts),
            self.id,
            self.name,
            self.data
        )
    }

    /// The line as saved: PROTOCOL §7's `{"ts", "id", "name", "data"}`.
    pub fn json(&self) -> String {
        let data: Value = serde_json::from_str(&self.data).unwrap_or(Value::Null);
        let logged = protocol::notification::LoggedNotification {
            ts: self.ts,
            id: self.id.to_string(),
            name: self.name.to_string(),
            data,
        };
        serde_json::to_string(&logged).unwrap_or_default()
    }
}

/// Filters of the tail; all set ones must match.
#[derive(Debug, Clone, Default)]
pub struct TailFilter {
    pub device: Option<String>,
    /// Glob over the event name.
    pub name: Option<String>,
    /// Regex over the whole line.
    pub regex: Option<Regex>,
}

impl TailFilter {
    pub fn is_empty(&self) -> bool {
        self.device.is_none() && self.name.is_none() && self.regex.is_none()
    }

    pub fn matches(&self, entry: &Entry) -> bool {
        self.device.as_deref().is_none_or(|d| *entry.id == *d)
            && self
                .name
                .as_deref()
                .is_none_or(|glob| text::glob_match(glob, &entry.name))
            && self.regex.as_ref().is_none_or(|re| {
                re.is_match(&entry.id) || re.is_match(&entry.name) || re.is_match(&entry.data)
            })
    }

    /// For the title bar: `device=x name=rpc.* /re/`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(device) = &self.device {
            parts.push(format!("device={device}"));
        }
        if let Some(name) = &self.name {
            parts.push(format!("name={name}"));
        }
        if let Some(regex) = &self.regex {
            parts.push(format!("/{}/", regex.as_str()));
        }
        parts.join(" ")
    }
}

/// The ring and the tail view's state.
#[derive(Debug)]
pub struct Tail {
    entries: VecDeque<Entry>,
    capacity: usize,
    next_seq: u64,
    /// Lines pushed out of the ring.
    pub evicted: u64,
    /// Notifications the server dropped for this consumer (`lagged`).
    pub lagged: u64,
    /// Follow new lines; otherwise stay at `anchor`.
    pub follow: bool,
    /// Seq of the bottom line while paused.
    pub anchor: u64,
    pub wrap: bool,
    pub filter: TailFilter,
}

impl Tail {
    pub fn new(capacity: usize) -> Self {
        Tail {
            entries: VecDeque::with_capacity(capacity.min(65_536)),
            capacity: capacity.max(1),
            next_seq: 0,
            evicted: 0,
            lagged: 0,
            follow: true,
            anchor: 0,
            wrap: false,
            filter: TailFilter::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Everything lost: pushed out of the ring or dropped by the server.
    pub fn dropped(&self) -> u64 {
        self.evicted + self.lagged
    }

    /// Total ever received.
    pub fn received(&self) -> u64 {
        self.next_seq
    }

    pub fn push(&mut self, ts: f64, notification: &Notification) {
        let mut data = notification.data.to_string();
        if data.len() > MAX_DATA_CHARS {
            data = text::truncate(&data, MAX_DATA_CHARS);
        }
        let log = (notification.name == "rpc.out.Log")
            .then(|| notification.data.get("data").and_then(Value::as_str))
            .flatten()
            .map(|text| text.trim_end().into());
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
            self.evicted += 1;
        }
        self.entries.push_back(Entry {
            seq: self.next_seq,
            ts,
            id: notification.id.as_str().into(),
            name: notification.name.as_str().into(),
            data: data.into(),
            log,
        });
        self.next_seq += 1;
    }

    pub fn clear(&mut self) {
        self.evicted += self.entries.len() as u64;
        self.entries.clear();
        self.follow = true;
    }

    fn index_of(&self, seq: u64) -> Option<usize> {
        let first = self.entries.front()?.seq;
        let index = seq.checked_sub(first)? as usize;
        (index < self.entries.len()).then_some(index)
    }

    /// Up to `count` entries matching `filter`, ending at the bottom line (the newest when
    /// following, the anchor when paused), oldest first.
    pub fn window<'a>(&'a self, filter: &TailFilter, count: usize) -> Vec<&'a Entry> {
        let end = if self.follow {
            self.entries.len()
        } else {
            // An anchor that fell out of the ring pins the view to the oldest line.
            self.index_of(self.anchor).map_or(0, |i| i + 1)
        };
        let mut out: Vec<&Entry> = self
            .entries
            .range(..end)
            .rev()
            .filter(|e| filter.matches(e))
            .take(count)
            .collect();
        out.reverse();
        out
    }

    /// Every entry matching the view's filter, oldest first (for saving).
    pub fn matching(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| self.filter.matches(e))
    }

    /// Scrolls by `lines` matching lines (negative: towards older), pausing the view.
    pub fn scroll(&mut self, lines: isize) {
        if self.entries.is_empty() {
            return;
        }
        let bottom = if self.follow {
            self.entries.len() - 1
        } else {
            self.index_of(self.anchor).unwrap_or(0)
        };
        let mut position = bottom;
        let mut remaining = lines.unsigned_abs();
        if lines < 0 {
            for (i, e) in self.entries.range(..bottom).enumerate().rev() {
                if remaining == 0 {
                    break;
                }
                if self.filter.matches(e) {
                    position = i;
                    remaining -= 1;
                }
            }
        } else {
            for (offset, e) in self.entries.range(bottom + 1..).enumerate() {
                if remaining == 0 {
                    break;
                }
                if self.filter.matches(e) {
                    position = bottom + 1 + offset;
                    remaining -= 1;
                }
            }
        }
        let at_end = !self
            .entries
            .range(position + 1..)
            .any(|e| self.filter.matches(e));
        if lines > 0 && at_end {
            self.follow = true;
        } else {
            self.follow = false;
            self.anchor = self.entries[position].seq;
        }
    }

    /// Toggles follow; pausing keeps the current bottom line in place.
    pub fn toggle_follow(&mut self) {
        if self.follow {
            self.follow = false;
            self.anchor = self.entries.back().map_or(0, |e| e.seq);
        } else {
            self.follow = true;
        }
    }

    /// Lines newer than the paused view, for "N new" in the title.
    pub fn newer_than_anchor(&self) -> u64 {
        if self.follow {
            0
        } else {
            self.next_seq.saturating_sub(self.anchor + 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn n(id: &str, name: &str) -> Notification {
        Notification::new(id, name, json!({"x": 1}))
    }

    #[test]
    fn ring_counts_what_it_drops() {
        let mut tail = Tail::new(3);
        for i in 0..5 {
            tail.push(i as f64, &n(&format!("d{i}"), "online"));
        }
        assert_eq!(tail.len(), 3);
        assert_eq!(tail.evicted, 2);
        tail.lagged += 10;
        assert_eq!(tail.dropped(), 12);
        let ids: Vec<_> = tail
            .window(&TailFilter::default(), 10)
            .iter()
            .map(|e| e.id.to_string())
            .collect();
        assert_eq!(ids, ["d2", "d3", "d4"]);
    }

    #[test]
    fn pause_keeps_the_place_and_filters_apply() {
        let mut tail = Tail::new(100);
        for i in 0..10 {
            tail.push(
                0.0,
                &n(if i % 2 == 0 { "even" } else { "odd" }, "rpc.out.Log"),
            );
        }
        tail.toggle_follow();
        tail.push(0.0, &n("even", "online"));
        assert_eq!(tail.newer_than_anchor(), 1);
        assert_eq!(tail.window(&TailFilter::default(), 100).len(), 10);
        tail.scroll(-3);
        assert_eq!(tail.window(&TailFilter::default(), 100).len(), 7);
        tail.scroll(100);
        assert!(tail.follow, "scrolling past the end follows again");

        let filter = TailFilter {
            device: Some("even".into()),
            name: Some("rpc.*".into()),
            regex: None,
        };
        assert_eq!(tail.window(&filter, 100).len(), 5);
        let filter = TailFilter {
            regex: Some(Regex::new("^od").expect("regex")),
            ..Default::default()
        };
        assert_eq!(tail.window(&filter, 100).len(), 5);
        assert_eq!(filter.describe(), "/^od/");
    }

    #[test]
    fn logs_and_saved_form() {
        let mut tail = Tail::new(10);
        tail.push(
            2.5,
            &Notification::new("d", "rpc.out.Log", json!({"fd": 1, "data": "hello\n"})),
        );
        let entry = tail.window(&TailFilter::default(), 1)[0].clone();
        assert_eq!(entry.log.as_deref(), Some("hello"));
        // PROTOCOL §7 form.
        assert_eq!(
            entry.json(),
            r#"{"ts":2.5,"id":"d","name":"rpc.out.Log","data":{"data":"hello\n","fd":1}}"#
        );
    }
}
