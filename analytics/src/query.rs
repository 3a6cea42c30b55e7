//! Ad-hoc questions in SQL over the notification log (`herd query`), on Polars SQL.
//!
//! The hand-written scanner reads the log as for the reports ([`Log`], every field kept);
//! its events are then laid out as tables that Polars' SQL context reads lazily, and the
//! query runs once, collected into one [`DataFrame`]. The tables ([`TABLES`]) use the
//! reports' definitions, so a query can check or extend a report: the switches of
//! `switches` are the usage report's, the spans of `sessions` the connectivity report's.
//! Times are UTC datetimes in microseconds; `id` is the device id and `device` the last
//! name the log gave it (empty when it gave none).
//!
//! ```
//! use herd_analytics::{query, Log, Need};
//!
//! let mut log = Log::new(Need::ALL);
//! log.push(b"{\"ts\":1,\"id\":\"a\",\"name\":\"online\",\"data\":null}\n");
//! log.push(b"{\"ts\":2,\"id\":\"a\",\"name\":\"offline\",\"data\":null}\n");
//! log.end_file();
//! let frame = query::query(&log, "SELECT id, COUNT(*) AS n FROM events GROUP BY id").unwrap();
//! assert_eq!(frame.height(), 1);
//! ```

use polars::prelude::*;
use polars::sql::SQLContext;

use crate::event::{Event, Kind, NONE};
use crate::report::connectivity::sessions;
use crate::report::usage::light;
use crate::report::{
    frame, optional_time_column, seconds, time_column, Bucket, Report, ReportRequest, Scope,
};
use crate::{Error, Log};

/// The tables a query can read, with their columns.
pub const TABLES: [(&str, &str); 5] = [
    (
        "events",
        "every event the reports know (PROTOCOL §5): ts, id, device, event, fw_version, on, \
         ota_status; rollout events have a null id",
    ),
    (
        "sessions",
        "connections: id, device, start, end (null while open at the log's end), seconds",
    ),
    (
        "switches",
        "the light switched (reported.on changed): id, device, ts, on",
    ),
    (
        "on_periods",
        "the light was on: id, device, start, end (null while on at the log's end), seconds",
    ),
    (
        "shadow_reported",
        "events that carried reported state: id, device, ts, event, on, fw_version, \
         ota_status",
    ),
];

/// Runs `sql` over the tables of `log`. The log must have been read with [`Need::ALL`]
/// (`crate::Need::ALL`), so that every table is whole.
pub fn query(log: &Log, sql: &str) -> Result<DataFrame, Error> {
    if log.need() != crate::Need::ALL {
        return Err(Error::Request(
            "queries need the log read with every field".into(),
        ));
    }
    let mut context = SQLContext::new();
    for (name, table) in tables(log)? {
        context.register(name, table.lazy());
    }
    let frame = context
        .execute(sql)
        .and_then(|plan| plan.collect())
        .map_err(|e| Error::Request(format!("the query failed: {e}")))?;
    Ok(frame)
}

/// The tables of [`TABLES`], built from `log`.
pub fn tables(log: &Log) -> Result<Vec<(&'static str, DataFrame)>, Error> {
    Ok(vec![
        ("events", events(log, |_| true)?),
        ("sessions", session_table(log)?),
        ("switches", switch_table(log)?),
        ("on_periods", on_period_table(log)?),
        (
            "shadow_reported",
            events(log, |e| {
                matches!(e.kind, Kind::Updated | Kind::RpcOut)
                    && (e.on >= 0 || e.fw != NONE || e.ota_status >= 0)
            })?,
        ),
    ])
}

fn id_and_name(log: &Log, device: u32) -> (Option<String>, Option<String>) {
    if device == NONE {
        return (None, None);
    }
    (
        Some(log.devices.text(device)),
        Some(log.label_or_empty(device)),
    )
}

fn events(log: &Log, keep: impl Fn(&Event) -> bool) -> Result<DataFrame, Error> {
    let mut ts = Vec::new();
    let mut ids = Vec::new();
    let mut names = Vec::new();
    let mut kinds = Vec::new();
    let mut versions = Vec::new();
    let mut ons = Vec::new();
    let mut statuses = Vec::new();
    for event in log.events.iter().filter(|e| keep(e)) {
        let (id, name) = id_and_name(log, event.device);
        ts.push(event.ts);
        ids.push(id);
        names.push(name);
        kinds.push((event.name != NONE).then(|| log.names.text(event.name)));
        versions.push((event.fw != NONE).then(|| log.versions.text(event.fw)));
        ons.push((event.on >= 0).then_some(event.on == 1));
        statuses.push((event.ota_status >= 0).then_some(i32::from(event.ota_status)));
    }
    frame(vec![
        time_column("ts", ts),
        Column::new("id".into(), ids),
        Column::new("device".into(), names),
        Column::new("event".into(), kinds),
        Column::new("fw_version".into(), versions),
        Column::new("on".into(), ons),
        Column::new("ota_status".into(), statuses),
    ])
}

/// The whole log as the reports' scope: every device, from the first event to the last.
fn whole() -> ReportRequest {
    let mut request = ReportRequest::new(Report::Connectivity, Vec::new());
    // Day buckets: the scope checks that buckets stay few, and no table here uses them.
    request.bucket = Bucket::Day;
    request
}

fn session_table(log: &Log) -> Result<DataFrame, Error> {
    let request = whole();
    let scope = Scope::new(log, &request)?;
    let mut table = SpanTable::default();
    for device in scope.per_device() {
        let found = sessions(device.until(scope.to), scope.to);
        table.add(&device.id, &device.name, &found.spans, found.open);
    }
    table.frame()
}

/// The usage report's periods of light: from a report of `on` to the next of `off` (or the
/// device's deletion).
fn on_period_table(log: &Log) -> Result<DataFrame, Error> {
    let request = whole();
    let scope = Scope::new(log, &request)?;
    let mut table = SpanTable::default();
    for device in scope.per_device() {
        let events = device.until(scope.to);
        let found = light(events, scope.to);
        // The last period runs to the range's end when the light was still on there.
        let still_on = events
            .iter()
            .rev()
            .find(|e| e.on >= 0 || e.kind == Kind::Deleted)
            .is_some_and(|e| e.on == 1);
        table.add(&device.id, &device.name, &found.periods, still_on);
    }
    table.frame()
}

/// Rows of `(id, device, start, end, seconds)` spans; a span still open at the range's end
/// has no `end`.
#[derive(Default)]
struct SpanTable {
    ids: Vec<String>,
    names: Vec<String>,
    starts: Vec<i64>,
    ends: Vec<Option<i64>>,
    lengths: Vec<f64>,
}

impl SpanTable {
    /// A device's spans; with `last_open`, its last span has not ended.
    fn add(&mut self, id: &str, name: &str, spans: &[(i64, i64)], last_open: bool) {
        for (index, &(start, end)) in spans.iter().enumerate() {
            let open = last_open && index + 1 == spans.len();
            self.ids.push(id.to_string());
            self.names.push(name.to_string());
            self.starts.push(start);
            self.ends.push((!open).then_some(end));
            self.lengths.push(seconds(end - start));
        }
    }

    fn frame(self) -> Result<DataFrame, Error> {
        frame(vec![
            Column::new("id".into(), self.ids),
            Column::new("device".into(), self.names),
            time_column("start", self.starts),
            optional_time_column("end", self.ends),
            Column::new("seconds".into(), self.lengths),
        ])
    }
}

fn switch_table(log: &Log) -> Result<DataFrame, Error> {
    let request = whole();
    let scope = Scope::new(log, &request)?;
    let mut rows: Vec<(String, String, i64, bool)> = Vec::new();
    for device in scope.per_device() {
        let found = light(device.until(scope.to), scope.to);
        for (times, on) in [(&found.ons, true), (&found.offs, false)] {
            rows.extend(
                times
                    .iter()
                    .map(|&ts| (device.id.clone(), device.name.clone(), ts, on)),
            );
        }
    }
    rows.sort_by(|a, b| (&a.0, a.2).cmp(&(&b.0, b.2)));
    frame(vec![
        Column::new(
            "id".into(),
            rows.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        ),
        Column::new(
            "device".into(),
            rows.iter().map(|r| r.1.as_str()).collect::<Vec<_>>(),
        ),
        time_column("ts", rows.iter().map(|r| r.2).collect()),
        Column::new("on".into(), rows.iter().map(|r| r.3).collect::<Vec<_>>()),
    ])
}
