//! The fleet as the console holds it: one compact row per device, an id index, and the
//! filtered, sorted order of the table.
//!
//! Built for 100,000 devices and thousands of changes a second. A change updates its row
//! in place and counts stay exact, but the sorted order is rebuilt only when the sort or
//! the filter changes or when [`Fleet::refresh`] runs (the model calls it a few times a
//! second), because re-sorting 100,000 rows per notification would starve the input. New
//! devices are appended to the current order at once so they never go missing meanwhile.

use std::cmp::Ordering;
use std::collections::HashMap;

use herd_client::DeviceObject;
use protocol::filter::{Field, Subject};
use serde_json::Value;

use crate::text;

/// One device, as much as the table shows.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceRow {
    pub id: Box<str>,
    pub name: Box<str>,
    pub online: bool,
    pub app: Box<str>,
    pub arch: Box<str>,
    pub fw_version: Box<str>,
    /// `Sys.GetInfo`'s uptime and when we saw it, so the table can count on.
    pub uptime: Option<(f64, f64)>,
    /// Unix seconds the device was last connected.
    pub last_seen: Option<f64>,
    /// `reported.on`, the smart light's state.
    pub light: Option<bool>,
    /// The shadow has a non-empty delta: the device has not applied `desired` yet.
    pub delta_pending: bool,
}

fn text_field(value: &Value, key: &str) -> Box<str> {
    value
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .into()
}

impl DeviceRow {
    /// The row for a device object (PROTOCOL §6) seen at `now`.
    pub fn from_object(device: &DeviceObject, now: f64) -> Self {
        let info = &device.info;
        let reported = device
            .shadow
            .pointer("/state/reported")
            .unwrap_or(&Value::Null);
        let ota = reported.get("ota").unwrap_or(&Value::Null);
        // PROTOCOL §4.4: `reported.ota` carries the firmware identity too; prefer the
        // device's own Sys.GetInfo, fall back to what it reported.
        let pick = |key: &str| {
            let from_info = text_field(info, key);
            if from_info.is_empty() {
                text_field(ota, key)
            } else {
                from_info
            }
        };
        let delta_pending = device
            .shadow
            .pointer("/state/delta")
            .and_then(Value::as_object)
            .is_some_and(|delta| !delta.is_empty());
        DeviceRow {
            id: device.id.as_str().into(),
            name: device.name.as_str().into(),
            online: device.online,
            app: pick("app"),
            arch: pick("arch"),
            fw_version: pick("fw_version"),
            uptime: info.get("uptime").and_then(Value::as_f64).map(|u| (u, now)),
            last_seen: device.last_seen.as_deref().and_then(text::parse_rfc3339),
            light: reported.get("on").and_then(Value::as_bool),
            delta_pending,
        }
    }

    /// Uptime at `now`, while online.
    pub fn uptime_at(&self, now: f64) -> Option<f64> {
        let (uptime, seen) = self.uptime?;
        self.online.then(|| uptime + (now - seen).max(0.0))
    }

    /// `now` while online, else how long ago it was last seen.
    pub fn last_seen_text(&self, now: f64) -> String {
        self.last_seen_text_stale(now, None)
    }

    /// Like [`last_seen_text`](Self::last_seen_text), for a table whose news stopped at
    /// `stale_since` (the console lost the server): a device online then is only known
    /// to have been seen then, so it says how stale that is instead of `now`.
    pub fn last_seen_text_stale(&self, now: f64, stale_since: Option<f64>) -> String {
        if self.online {
            match stale_since {
                Some(since) => format!("stale {}", text::duration((now - since).max(0.0))),
                None => "now".into(),
            }
        } else {
            match self.last_seen {
                Some(ts) => text::ago(ts, now),
                None => "never".into(),
            }
        }
    }

    fn light_text(&self) -> &'static str {
        match self.light {
            Some(true) => "on",
            Some(false) => "off",
            None => "-",
        }
    }
}

/// The table's columns, in display order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Column {
    State,
    Name,
    Id,
    App,
    Arch,
    Firmware,
    Uptime,
    LastSeen,
    Light,
    Delta,
}

impl Column {
    pub const ALL: [Column; 10] = [
        Column::State,
        Column::Name,
        Column::Id,
        Column::App,
        Column::Arch,
        Column::Firmware,
        Column::Uptime,
        Column::LastSeen,
        Column::Light,
        Column::Delta,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Column::State => "STATE",
            Column::Name => "NAME",
            Column::Id => "ID",
            Column::App => "APP",
            Column::Arch => "ARCH",
            Column::Firmware => "FIRMWARE",
            Column::Uptime => "UPTIME",
            Column::LastSeen => "LAST SEEN",
            Column::Light => "LIGHT",
            Column::Delta => "DELTA",
        }
    }

    /// The columns a table `width` wide shows, with their widths, in table order: the
    /// most useful are chosen first. The sort keys 1-9 and 0 are these columns in order.
    pub fn visible(width: u16) -> Vec<(Column, u16)> {
        const PRIORITY: [(Column, u16); 10] = [
            (Column::State, 7),
            (Column::Name, 14),
            (Column::Id, 24),
            (Column::Firmware, 9),
            (Column::LastSeen, 10),
            (Column::Light, 5),
            (Column::Delta, 7),
            (Column::App, 12),
            (Column::Uptime, 7),
            (Column::Arch, 8),
        ];
        // One column for the mark, one space between columns.
        let mut budget = width.saturating_sub(2) as i32;
        let mut chosen = Vec::new();
        for (column, min) in PRIORITY {
            let need = min as i32 + 1;
            if need <= budget {
                budget -= need;
                chosen.push((column, min));
            }
        }
        // The name takes what is left, up to a point.
        for (column, width) in chosen.iter_mut() {
            if *column == Self::Name {
                *width += budget.clamp(0, 26) as u16;
            }
        }
        chosen.sort_by_key(|(column, _)| Self::ALL.iter().position(|c| c == column));
        chosen
    }

    /// The name used by `:sort` and `field:value` filters.
    pub fn key(self) -> &'static str {
        match self {
            Column::State => "state",
            Column::Name => "name",
            Column::Id => "id",
            Column::App => "app",
            Column::Arch => "arch",
            Column::Firmware => "fw",
            Column::Uptime => "uptime",
            Column::LastSeen => "seen",
            Column::Light => "light",
            Column::Delta => "delta",
        }
    }

    pub fn from_key(key: &str) -> Option<Column> {
        let key = key.to_ascii_lowercase();
        Column::ALL.into_iter().find(|c| {
            c.key() == key
                || c.title().to_ascii_lowercase() == key
                || (key == "firmware" && *c == Column::Firmware)
                || (key == "lastseen" && *c == Column::LastSeen)
                || (key == "online" && *c == Column::State)
        })
    }

    /// The cell text of `row` at `now`.
    pub fn cell(self, row: &DeviceRow, now: f64) -> String {
        self.cell_stale(row, now, None)
    }

    /// The cell text of `row` at `now` in a table whose news stopped at `stale_since`:
    /// the online state and uptime are then only what was last heard.
    pub fn cell_stale(self, row: &DeviceRow, now: f64, stale_since: Option<f64>) -> String {
        match self {
            Column::State => match (row.online, stale_since) {
                (true, Some(_)) => "online?",
                (true, None) => "online",
                (false, _) => "offline",
            }
            .into(),
            Column::LastSeen => row.last_seen_text_stale(now, stale_since),
            Column::Name => row.name.to_string(),
            Column::Id => row.id.to_string(),
            Column::App => row.app.to_string(),
            Column::Arch => row.arch.to_string(),
            Column::Firmware => row.fw_version.to_string(),
            // While stale, the uptime stops where the news stopped.
            Column::Uptime => match stale_since {
                Some(since) => row
                    .uptime_at(since)
                    .map(|uptime| format!("{}?", text::duration(uptime))),
                None => row.uptime_at(now).map(text::duration),
            }
            .unwrap_or_else(|| "-".into()),
            Column::Light => row.light_text().into(),
            Column::Delta => if row.delta_pending { "pending" } else { "-" }.into(),
        }
    }

    fn compare(self, a: &DeviceRow, b: &DeviceRow) -> Ordering {
        match self {
            // Online first, the way operators scan for trouble from the top.
            Column::State => b.online.cmp(&a.online),
            Column::Name => a.name.cmp(&b.name),
            Column::Id => a.id.cmp(&b.id),
            Column::App => a.app.cmp(&b.app),
            Column::Arch => a.arch.cmp(&b.arch),
            Column::Firmware => a.fw_version.cmp(&b.fw_version),
            Column::Uptime => {
                let key = |r: &DeviceRow| {
                    if r.online {
                        r.uptime.map(|u| u.0 - u.1)
                    } else {
                        None
                    }
                };
                // Uptime grows with time for everyone alike, so "boot time" orders it.
                key(b).partial_cmp(&key(a)).unwrap_or(Ordering::Equal)
            }
            Column::LastSeen => {
                let key = |r: &DeviceRow| {
                    if r.online {
                        f64::INFINITY
                    } else {
                        r.last_seen.unwrap_or(0.0)
                    }
                };
                key(b).partial_cmp(&key(a)).unwrap_or(Ordering::Equal)
            }
            Column::Light => b.light.cmp(&a.light),
            Column::Delta => b.delta_pending.cmp(&a.delta_pending),
        }
    }
}

/// Sort column and direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sort {
    pub column: Column,
    pub descending: bool,
}

impl Default for Sort {
    fn default() -> Self {
        Sort {
            column: Column::Name,
            descending: false,
        }
    }
}

/// The `/` filter is the shared device filter language (see [`protocol::filter`]), the one
/// rollout selectors use, so a rollout made "from the current filter" selects exactly the
/// devices the table shows.
pub use protocol::filter::Filter;

impl Subject for DeviceRow {
    fn text(&self, field: Field) -> &str {
        match field {
            Field::Id => &self.id,
            Field::Name => &self.name,
            Field::App => &self.app,
            Field::Arch => &self.arch,
            Field::Firmware => &self.fw_version,
            _ => "",
        }
    }

    fn online(&self) -> bool {
        self.online
    }

    fn light(&self) -> Option<bool> {
        self.light
    }

    fn delta_pending(&self) -> bool {
        self.delta_pending
    }
}

/// Devices by state, for the header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: usize,
    pub online: usize,
    pub pending: usize,
}

/// All devices and the table order.
#[derive(Debug, Default)]
pub struct Fleet {
    rows: Vec<DeviceRow>,
    index: HashMap<Box<str>, usize>,
    view: Vec<u32>,
    stale: bool,
    sort: Sort,
    filter: Filter,
    online: usize,
    pending: usize,
}

impl Fleet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn counts(&self) -> Counts {
        Counts {
            total: self.rows.len(),
            online: self.online,
            pending: self.pending,
        }
    }

    pub fn sort(&self) -> Sort {
        self.sort
    }

    pub fn filter(&self) -> &Filter {
        &self.filter
    }

    /// Rows that pass the filter, in table order.
    pub fn view_len(&self) -> usize {
        self.view.len()
    }

    /// The row at table position `position`.
    pub fn row_at(&self, position: usize) -> Option<&DeviceRow> {
        let index = *self.view.get(position)? as usize;
        self.rows.get(index)
    }

    /// The rows at table positions `range`, for drawing only what is visible.
    pub fn visible(&self, start: usize, count: usize) -> impl Iterator<Item = &DeviceRow> {
        let end = start.saturating_add(count).min(self.view.len());
        let start = start.min(end);
        self.view[start..end]
            .iter()
            .filter_map(|&i| self.rows.get(i as usize))
    }

    pub fn get(&self, id: &str) -> Option<&DeviceRow> {
        self.index.get(id).and_then(|&i| self.rows.get(i))
    }

    /// What device `id` is called on screen: its name, or its id when it has none or is
    /// not in the fleet.
    pub fn label<'a>(&'a self, id: &'a str) -> &'a str {
        match self.get(id) {
            Some(row) if !row.name.is_empty() => &row.name,
            _ => id,
        }
    }

    /// The device `query` names: an id, a name, or a unique start of either
    /// ([`herd_analytics::names`]).
    pub fn resolve(&self, query: &str) -> herd_analytics::names::Resolution {
        if self.index.contains_key(query) {
            return herd_analytics::names::Resolution::Found(query.to_string());
        }
        herd_analytics::names::resolve(query, self.rows.iter().map(|r| (&*r.id, &*r.name)))
    }

    /// Table position of device `id`, if it passes the filter.
    pub fn position_of(&self, id: &str) -> Option<usize> {
        let index = *self.index.get(id)? as u32;
        self.view.iter().position(|&i| i == index)
    }

    /// Ids of every row that passes the filter, in table order.
    pub fn view_ids(&self) -> Vec<String> {
        self.visible(0, self.view.len())
            .map(|row| row.id.to_string())
            .collect()
    }

    /// Whether the order lags behind changes (a [`Fleet::refresh`] would move rows).
    pub fn is_stale(&self) -> bool {
        self.stale
    }

    fn count(&mut self, row: &DeviceRow, sign: isize) {
        let apply = |n: &mut usize, on: bool| {
            if on {
                *n = n.saturating_add_signed(sign);
            }
        };
        apply(&mut self.online, row.online);
        apply(&mut self.pending, row.delta_pending);
    }

    /// Replaces every row (a fresh `GET /devices`), keeping rows listed in `keep` as they
    /// are because the stream brought newer news of them than the listing.
    pub fn replace_all(
        &mut self,
        devices: Vec<DeviceRow>,
        keep: &std::collections::HashSet<Box<str>>,
    ) {
        let mut kept: HashMap<Box<str>, DeviceRow> = HashMap::new();
        for id in keep {
            if let Some(row) = self.get(id) {
                kept.insert(id.clone(), row.clone());
            }
        }
        self.rows.clear();
        self.index.clear();
        self.online = 0;
        self.pending = 0;
        for row in devices {
            let row = kept.remove(&row.id).unwrap_or(row);
            self.insert_new(row);
        }
        for (_, row) in kept {
            self.insert_new(row);
        }
        self.rebuild();
    }

    fn insert_new(&mut self, row: DeviceRow) {
        if let Some(&i) = self.index.get(&row.id) {
            self.set_row(i, row);
            return;
        }
        self.count(&row, 1);
        self.index.insert(row.id.clone(), self.rows.len());
        self.rows.push(row);
    }

    fn set_row(&mut self, i: usize, row: DeviceRow) {
        let old = std::mem::replace(&mut self.rows[i], row);
        self.count(&old, -1);
        let new = self.rows[i].clone();
        self.count(&new, 1);
    }

    /// Adds or replaces one device (`created`, `updated`).
    pub fn upsert(&mut self, mut row: DeviceRow) {
        match self.index.get(&row.id) {
            Some(&i) => {
                // `updated` repeats the last Sys.GetInfo; an unchanged uptime was observed
                // back then, not now, or the table would show it frozen.
                if let (Some((old, seen)), Some((new, _))) = (self.rows[i].uptime, row.uptime) {
                    if old == new {
                        row.uptime = Some((new, seen));
                    }
                }
                if self.rows[i] != row {
                    self.set_row(i, row);
                    self.stale = true;
                }
            }
            None => {
                let passes = self.filter.matches(&row);
                self.insert_new(row);
                if passes {
                    // Visible at once, at the end, until the next refresh sorts it in.
                    self.view.push((self.rows.len() - 1) as u32);
                    self.stale = true;
                }
            }
        }
    }

    /// Applies `change` to device `id`; false if unknown.
    pub fn modify(&mut self, id: &str, change: impl FnOnce(&mut DeviceRow)) -> bool {
        let Some(&i) = self.index.get(id) else {
            return false;
        };
        let mut row = self.rows[i].clone();
        change(&mut row);
        if row != self.rows[i] {
            self.set_row(i, row);
            self.stale = true;
        }
        true
    }

    /// Removes device `id` (`deleted`).
    pub fn remove(&mut self, id: &str) -> bool {
        let Some(i) = self.index.remove(id) else {
            return false;
        };
        let row = self.rows.swap_remove(i);
        self.count(&row, -1);
        // The last row moved into the gap: fix the index and the order in one pass rather
        // than re-sorting, so deleting many devices stays cheap.
        let moved_from = self.rows.len() as u32;
        if i < self.rows.len() {
            let moved = self.rows[i].id.clone();
            self.index.insert(moved, i);
        }
        self.view.retain(|&v| v as usize != i);
        for v in self.view.iter_mut() {
            if *v == moved_from {
                *v = i as u32;
            }
        }
        true
    }

    pub fn set_sort(&mut self, sort: Sort) {
        if self.sort != sort {
            self.sort = sort;
            self.rebuild();
        }
    }

    pub fn set_filter(&mut self, filter: Filter) {
        if self.filter != filter {
            self.filter = filter;
            self.rebuild();
        }
    }

    /// Rebuilds the order if changes made it stale; true if it did.
    pub fn refresh(&mut self) -> bool {
        if self.stale {
            self.rebuild();
            true
        } else {
            false
        }
    }

    fn rebuild(&mut self) {
        let filter = &self.filter;
        let rows = &self.rows;
        let mut view: Vec<u32> = if filter.is_empty() {
            (0..rows.len() as u32).collect()
        } else {
            (0..rows.len() as u32)
                .filter(|&i| filter.matches(&rows[i as usize]))
                .collect()
        };
        let sort = self.sort;
        view.sort_unstable_by(|&a, &b| {
            let (a, b) = (&rows[a as usize], &rows[b as usize]);
            let ordering = sort.column.compare(a, b).then_with(|| a.id.cmp(&b.id));
            if sort.descending {
                ordering.reverse()
            } else {
                ordering
            }
        });
        self.view = view;
        self.stale = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn object(id: &str, name: &str, online: bool) -> DeviceObject {
        DeviceObject {
            id: id.into(),
            name: name.into(),
            token: None,
            user_id: "email_admin".into(),
            shared_with: String::new(),
            online,
            created_at: "2024-01-01T00:00:00Z".into(),
            last_seen: Some("2024-01-01T00:00:00Z".into()),
            info: json!({"app": "smart-light", "arch": "esp32c3", "fw_version": "1.0", "uptime": 10}),
            shadow: json!({"state": {"desired": {"on": true}, "reported": {"on": false}, "delta": {"on": true}}}),
            quarantine: None,
        }
    }

    fn row(id: &str, name: &str, online: bool) -> DeviceRow {
        DeviceRow::from_object(&object(id, name, online), 0.0)
    }

    #[test]
    fn rows_from_device_objects() {
        let row = row("d1", "lamp", true);
        assert_eq!(&*row.app, "smart-light");
        assert_eq!(row.light, Some(false));
        assert!(row.delta_pending);
        assert_eq!(row.uptime_at(5.0), Some(15.0));
        assert_eq!(Column::LastSeen.cell(&row, 0.0), "now");
        let mut offline = row.clone();
        offline.online = false;
        assert_eq!(offline.uptime_at(5.0), None);
        assert_eq!(
            Column::LastSeen.cell(&offline, 1_704_067_200.0 + 90.0),
            "1m ago"
        );
        // The server lost 42 s ago: online is only what was last heard.
        let stale = Some(100.0);
        assert_eq!(Column::State.cell_stale(&row, 142.0, stale), "online?");
        assert_eq!(Column::LastSeen.cell_stale(&row, 142.0, stale), "stale 42s");
        assert_eq!(Column::Uptime.cell_stale(&row, 142.0, stale), "1m?");
        assert_eq!(Column::State.cell_stale(&offline, 142.0, stale), "offline");
    }

    #[test]
    fn filters() {
        let lamp = row("abc123", "porch-lamp", true);
        let check = |text: &str| Filter::parse(text).matches(&lamp);
        assert!(check(""));
        assert!(check("porch"));
        assert!(check("PORCH abc"));
        assert!(check("name:lamp state:online light:off delta:yes"));
        assert!(check("app:smart fw:1.0 arch:esp32"));
        assert!(check("name:porch-* fw:1.?"), "globs cover the whole field");
        assert!(!check("name:lamp-*"));
        assert!(!check("state:offline"));
        assert!(!check("name:kitchen"));
        assert!(!check("zzz"));
        // An unknown field is searched as plain text, not silently ignored.
        assert!(!check("colour:red"));
    }

    #[test]
    fn sorting_filtering_and_counts() {
        let mut fleet = Fleet::new();
        fleet.replace_all(
            vec![
                row("c", "charlie", false),
                row("a", "alpha", true),
                row("b", "bravo", true),
            ],
            &Default::default(),
        );
        let names = |f: &Fleet| {
            f.visible(0, 10)
                .map(|r| r.name.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&fleet), ["alpha", "bravo", "charlie"]);
        assert_eq!(
            fleet.counts(),
            Counts {
                total: 3,
                online: 2,
                pending: 3
            }
        );

        fleet.set_sort(Sort {
            column: Column::State,
            descending: false,
        });
        assert_eq!(names(&fleet), ["alpha", "bravo", "charlie"]);
        fleet.set_sort(Sort {
            column: Column::Name,
            descending: true,
        });
        assert_eq!(names(&fleet), ["charlie", "bravo", "alpha"]);

        fleet.set_filter(Filter::parse("state:online"));
        assert_eq!(names(&fleet), ["bravo", "alpha"]);

        // A change keeps the row in place until the next refresh.
        fleet.modify("a", |r| r.online = false);
        assert_eq!(fleet.counts().online, 1);
        assert!(fleet.is_stale());
        assert_eq!(names(&fleet), ["bravo", "alpha"]);
        assert!(fleet.refresh());
        assert_eq!(names(&fleet), ["bravo"]);

        // New devices show up at once, sorted in on refresh.
        fleet.upsert(row("z", "zulu", true));
        assert_eq!(names(&fleet), ["bravo", "zulu"]);
        fleet.refresh();
        assert_eq!(names(&fleet), ["zulu", "bravo"]);

        assert!(fleet.remove("b"));
        assert_eq!(names(&fleet), ["zulu"]);
        fleet.set_filter(Filter::default());
        assert_eq!(names(&fleet), ["zulu", "charlie", "alpha"]);
        // Removing a row from the middle keeps the order of the others.
        assert!(fleet.remove("c"));
        assert_eq!(names(&fleet), ["zulu", "alpha"]);
        assert!(!fleet.remove("c"));
        fleet.upsert(row("b", "bravo", true));
        fleet.upsert(row("c", "charlie", false));
        assert!(fleet.remove("z"));
        assert_eq!(names(&fleet), ["alpha", "bravo", "charlie"]);
        fleet.refresh();
        fleet.set_filter(Filter::parse("state:online"));
        assert_eq!(fleet.counts().total, 3);
        assert_eq!(fleet.get("c").map(|r| &*r.name), Some("charlie"));
        assert_eq!(fleet.position_of("z"), None);
        assert_eq!(fleet.position_of("b"), Some(0));
        assert_eq!(fleet.counts().online, 1);
    }

    #[test]
    fn a_listing_does_not_undo_newer_stream_news() {
        let mut fleet = Fleet::new();
        fleet.replace_all(vec![row("a", "alpha", false)], &Default::default());
        fleet.modify("a", |r| r.online = true);
        let keep = [Box::<str>::from("a")].into_iter().collect();
        fleet.replace_all(
            vec![row("a", "alpha", false), row("b", "bravo", false)],
            &keep,
        );
        assert_eq!(fleet.get("a").map(|r| r.online), Some(true));
        assert_eq!(fleet.len(), 2);
    }
}
