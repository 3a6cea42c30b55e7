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

/// Number of the first live line; lines of history get the numbers below it.
const FIRST_LIVE_SEQ: u64 = 1 << 40;

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
    /// For `updated`: what changed since the device's previous object, shown instead of
    /// the whole object.
    pub summary: Option<Box<str>>,
    /// Read from the server's log when the tail opened, not received live.
    pub history: bool,
}

impl Entry {
    /// The line as the tail shows it.
    pub fn line(&self) -> String {
        format!(
            "{}  {}  {}  {}",
            text::clock_time(self.ts),
            self.id,
            self.name,
            self.shown()
        )
    }

    /// What the tail shows of `data`: the changes of an `updated`, else the data.
    pub fn shown(&self) -> &str {
        self.summary.as_deref().unwrap_or(&self.data)
    }

    /// The line as saved: PROTOCOL §7's `{"ts", "id", "name", "data"}`, and the device's
    /// name as `device_name` when it has one (as `herd tail --json` writes it).
    pub fn json(&self, device_name: Option<&str>) -> String {
        let data: Value = serde_json::from_str(&self.data).unwrap_or(Value::Null);
        let notification = Notification::new(self.id.to_string(), self.name.to_string(), data);
        crate::lines::json_line(self.ts, &notification, device_name)
    }
}

/// Filters of the tail; all set ones must match.
#[derive(Debug, Clone, Default)]
pub struct TailFilter {
    /// A device id.
    pub device: Option<String>,
    /// What the operator called that device, for the title.
    pub device_label: Option<String>,
    /// Devices (ids) whose lines are hidden, with what the operator called them.
    pub exclude_devices: Vec<(String, String)>,
    /// Globs over the event name; a line must match one of them, when there are any.
    pub names: Vec<String>,
    /// Globs over the event name whose lines are hidden (`-name:updated`).
    pub exclude_names: Vec<String>,
    /// Regex over the whole line.
    pub regex: Option<Regex>,
    /// Regex over the whole line whose matches are hidden.
    pub exclude_regex: Option<Regex>,
}

/// The term kinds of a tail filter line (see [`TailFilter::parse_terms`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Term {
    Name(String),
    NotName(String),
    Device(String),
    NotDevice(String),
    Regex(String),
    NotRegex(String),
}

impl TailFilter {
    pub fn is_empty(&self) -> bool {
        self.device.is_none()
            && self.exclude_devices.is_empty()
            && self.names.is_empty()
            && self.exclude_names.is_empty()
            && self.regex.is_none()
            && self.exclude_regex.is_none()
    }

    pub fn matches(&self, entry: &Entry) -> bool {
        let line_matches = |re: &Regex| {
            re.is_match(&entry.id) || re.is_match(&entry.name) || re.is_match(entry.shown())
        };
        self.device.as_deref().is_none_or(|d| *entry.id == *d)
            && !self.exclude_devices.iter().any(|(id, _)| *entry.id == **id)
            && (self.names.is_empty()
                || self
                    .names
                    .iter()
                    .any(|glob| text::glob_match(glob, &entry.name)))
            && !self
                .exclude_names
                .iter()
                .any(|glob| text::glob_match(glob, &entry.name))
            && self.regex.as_ref().is_none_or(line_matches)
            && !self.exclude_regex.as_ref().is_some_and(line_matches)
    }

    /// Sets the event name globs from `rpc.* -updated`: words with a leading `-` hide.
    pub fn set_names(&mut self, text: &str) {
        self.names.clear();
        self.exclude_names.clear();
        for word in text.split_whitespace() {
            match word.strip_prefix('-') {
                Some(glob) if !glob.is_empty() => self.exclude_names.push(glob.to_string()),
                Some(_) => {}
                None => self.names.push(word.to_string()),
            }
        }
    }

    /// The event name globs as [`set_names`](Self::set_names) takes them.
    pub fn names_text(&self) -> String {
        self.names
            .iter()
            .cloned()
            .chain(self.exclude_names.iter().map(|glob| format!("-{glob}")))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Splits a filter line into terms: `name:GLOB`, `device:NAME`, each with a leading
    /// `-` to hide instead of keep, and the rest as a regex over the line (one with a
    /// leading `-` hides its matches).
    pub fn parse_terms(text: &str) -> Vec<Term> {
        let mut terms = Vec::new();
        let mut rest = Vec::new();
        for word in text.split_whitespace() {
            let (negated, body) = match word.strip_prefix('-') {
                Some(body) if !body.is_empty() => (true, body),
                _ => (false, word),
            };
            let term = if let Some(glob) = body.strip_prefix("name:") {
                Some(if negated {
                    Term::NotName(glob.to_string())
                } else {
                    Term::Name(glob.to_string())
                })
            } else {
                body.strip_prefix("device:").map(|device| {
                    if negated {
                        Term::NotDevice(device.to_string())
                    } else {
                        Term::Device(device.to_string())
                    }
                })
            };
            match term {
                Some(term) => terms.push(term),
                None => rest.push(word),
            }
        }
        if !rest.is_empty() {
            let joined = rest.join(" ");
            terms.push(match joined.strip_prefix('-') {
                Some(regex) if !regex.is_empty() => Term::NotRegex(regex.to_string()),
                _ => Term::Regex(joined),
            });
        }
        terms
    }

    /// The whole filter as a line [`parse_terms`](Self::parse_terms) reads back.
    pub fn text(&self) -> String {
        let mut parts = Vec::new();
        if let Some(device) = self.device_label.as_ref().or(self.device.as_ref()) {
            parts.push(format!("device:{device}"));
        }
        for (_, label) in &self.exclude_devices {
            parts.push(format!("-device:{label}"));
        }
        for name in &self.names {
            parts.push(format!("name:{name}"));
        }
        for name in &self.exclude_names {
            parts.push(format!("-name:{name}"));
        }
        if let Some(regex) = &self.regex {
            parts.push(regex.as_str().to_string());
        } else if let Some(regex) = &self.exclude_regex {
            parts.push(format!("-{}", regex.as_str()));
        }
        parts.join(" ")
    }

    /// For the title bar: `device=x name=rpc.* -name=updated /re/`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(device) = self.device_label.as_ref().or(self.device.as_ref()) {
            parts.push(format!("device={device}"));
        }
        for (_, label) in &self.exclude_devices {
            parts.push(format!("-device={label}"));
        }
        for name in &self.names {
            parts.push(format!("name={name}"));
        }
        for name in &self.exclude_names {
            parts.push(format!("-name={name}"));
        }
        if let Some(regex) = &self.regex {
            parts.push(format!("/{}/", regex.as_str()));
        }
        if let Some(regex) = &self.exclude_regex {
            parts.push(format!("-/{}/", regex.as_str()));
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
    /// Each device's last `updated` object, to show the next as what changed.
    memory: crate::lines::ObjectMemory,
    /// Lines read from the server's log when the tail opened.
    pub history_lines: usize,
    /// Whether the history was asked for already (once per session).
    pub history_requested: bool,
    /// Why the history could not be read.
    pub history_error: Option<String>,
}

impl Tail {
    pub fn new(capacity: usize) -> Self {
        Tail {
            entries: VecDeque::with_capacity(capacity.min(65_536)),
            capacity: capacity.max(1),
            // History goes before the first live line, with smaller numbers.
            next_seq: FIRST_LIVE_SEQ,
            evicted: 0,
            lagged: 0,
            follow: true,
            anchor: 0,
            wrap: false,
            filter: TailFilter::default(),
            memory: crate::lines::ObjectMemory::default(),
            history_lines: 0,
            history_requested: false,
            history_error: None,
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

    /// Total ever received live.
    pub fn received(&self) -> u64 {
        self.next_seq - FIRST_LIVE_SEQ
    }

    pub fn push(&mut self, ts: f64, notification: &Notification) {
        let entry = self.entry(ts, notification, false);
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
            self.evicted += 1;
        }
        self.entries.push_back(Entry {
            seq: self.next_seq,
            ..entry
        });
        self.next_seq += 1;
    }

    fn entry(&mut self, ts: f64, notification: &Notification, history: bool) -> Entry {
        let mut data = notification.data.to_string();
        if data.len() > MAX_DATA_CHARS {
            data = text::truncate(&data, MAX_DATA_CHARS);
        }
        let log = (notification.name == "rpc.out.Log")
            .then(|| notification.data.get("data").and_then(Value::as_str))
            .flatten()
            .map(|text| text.trim_end().into());
        let summary = match notification.name.as_str() {
            "updated" => Some(
                self.memory
                    .summarize(&notification.id, &notification.data)
                    .into(),
            ),
            "deleted" => {
                self.memory.forget(&notification.id);
                None
            }
            _ => None,
        };
        Entry {
            seq: 0,
            ts,
            id: notification.id.as_str().into(),
            name: notification.name.as_str().into(),
            data: data.into(),
            log,
            summary,
            history,
        }
    }

    /// Puts lines from the server's log (PROTOCOL §7), oldest first, before everything
    /// received live. Lines already received live (the stream and the log overlap by the
    /// time the request took) are left out. Returns how many were added.
    pub fn prepend_history(&mut self, items: Vec<(f64, Notification)>) -> usize {
        let live: Vec<(Box<str>, Box<str>, Box<str>)> = self
            .entries
            .iter()
            .take(64)
            .map(|e| (e.id.clone(), e.name.clone(), e.data.clone()))
            .collect();
        // Diffs of history lines are against earlier history lines; live lines keep theirs.
        let capacity = self.memory.capacity();
        let live_memory =
            std::mem::replace(&mut self.memory, crate::lines::ObjectMemory::new(capacity));
        let mut entries: Vec<Entry> = items
            .iter()
            .map(|(ts, notification)| self.entry(*ts, notification, true))
            .collect();
        let history_memory = std::mem::replace(&mut self.memory, live_memory);
        self.memory.absorb_older(history_memory);
        // The overlap is at the end of the history and the start of the live lines.
        while let Some(last) = entries.last() {
            let seen = live
                .iter()
                .any(|(id, name, data)| *id == last.id && *name == last.name && *data == last.data);
            if !seen {
                break;
            }
            entries.pop();
        }
        let room = self.capacity.saturating_sub(self.entries.len());
        let skip = entries.len().saturating_sub(room);
        let added = entries.len() - skip;
        let first = self.entries.front().map_or(self.next_seq, |e| e.seq);
        for (i, entry) in entries.into_iter().skip(skip).rev().enumerate() {
            self.entries.push_front(Entry {
                seq: first - 1 - i as u64,
                ..entry
            });
        }
        self.history_lines += added;
        added
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
            self.anchor = self
                .entries
                .back()
                .map_or(self.next_seq.saturating_sub(1), |e| e.seq);
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
            names: vec!["rpc.*".into()],
            ..Default::default()
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
    fn updated_shows_what_changed_and_filters_can_exclude() {
        let mut tail = Tail::new(100);
        let object = |on: bool, version: u64| {
            json!({"id": "d", "name": "porch", "online": true,
                   "shadow": {"state": {"reported": {"on": on}}, "version": version}})
        };
        tail.push(1.0, &Notification::new("d", "updated", object(false, 3)));
        tail.push(2.0, &Notification::new("d", "online", Value::Null));
        tail.push(3.0, &Notification::new("d", "updated", object(true, 4)));
        let all = tail.window(&TailFilter::default(), 10);
        assert!(all[0]
            .shown()
            .starts_with("first copy · online · version 3"));
        assert_eq!(all[2].shown(), "reported.on false→true · version 3→4");
        assert!(
            all[2].data.contains("\"shadow\""),
            "the object is kept for saving"
        );

        let mut filter = TailFilter::default();
        filter.set_names("-updated");
        assert_eq!(filter.names_text(), "-updated");
        assert_eq!(tail.window(&filter, 10).len(), 1);
        assert_eq!(filter.describe(), "-name=updated");
        filter.set_names("on* up*");
        assert_eq!(tail.window(&filter, 10).len(), 3);
        let filter = TailFilter {
            exclude_regex: Some(Regex::new("false→true").expect("regex")),
            ..Default::default()
        };
        assert_eq!(tail.window(&filter, 10).len(), 2, "regexes see the changes");
        assert_eq!(
            TailFilter::parse_terms("-name:updated device:porch -device:d2 x.*y"),
            vec![
                Term::NotName("updated".into()),
                Term::Device("porch".into()),
                Term::NotDevice("d2".into()),
                Term::Regex("x.*y".into()),
            ]
        );
        assert_eq!(
            TailFilter::parse_terms("-boot failed"),
            vec![Term::NotRegex("boot failed".into())]
        );
    }

    #[test]
    fn history_goes_before_live_lines_without_repeating_them() {
        let mut tail = Tail::new(4);
        tail.push(10.0, &n("d", "online"));
        tail.toggle_follow();
        let history: Vec<(f64, Notification)> = (0..4)
            .map(|i| (i as f64, n(&format!("h{i}"), "offline")))
            .chain([(9.5, n("d", "online"))])
            .collect();
        // The last history line is the live one: it is left out; one older line does not fit.
        assert_eq!(tail.prepend_history(history), 3);
        let ids: Vec<_> = tail
            .window(&TailFilter::default(), 10)
            .iter()
            .map(|e| (e.id.to_string(), e.history))
            .collect();
        assert_eq!(
            ids,
            [
                ("h1".to_string(), true),
                ("h2".to_string(), true),
                ("h3".to_string(), true),
                ("d".to_string(), false)
            ]
        );
        assert_eq!(tail.newer_than_anchor(), 0, "paused on the live line still");
        assert_eq!(tail.received(), 1);
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
            entry.json(None),
            r#"{"ts":2.5,"id":"d","name":"rpc.out.Log","data":{"data":"hello\n","fd":1}}"#
        );
        assert_eq!(
            entry.json(Some("porch")),
            r#"{"ts":2.5,"id":"d","name":"rpc.out.Log","data":{"data":"hello\n","fd":1},"device_name":"porch"}"#
        );
    }
}
