//! The five reports and what they share: the request, the time range and buckets, the
//! device filter, and per-device event runs in time order.
//!
//! Every report is computed from a [`Log`] in its own pass over the kept events (state
//! machines for sessions, light periods and update attempts, which are sequential per
//! device), and returned as Polars [`DataFrame`]s that the console draws and the exports
//! write.

pub(crate) mod connectivity;
mod firmware;
mod fleet;
mod rpc;
pub(crate) mod usage;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use polars::prelude::*;

use crate::event::{Event, Kind, Need};
use crate::log::{Log, LogStats};
use crate::{files, Error, Progress, Stage};

/// Microseconds per second.
pub(crate) const US: i64 = 1_000_000;

/// The reports of the analytics issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Report {
    /// Devices seen, online now, notifications by event name, busiest devices.
    Fleet,
    /// Per-device online sessions, online time, uptime, disconnects, flapping.
    Connectivity,
    /// Smart-light switch-ons, switch-offs and hours on, per device and hour of day.
    Usage,
    /// Devices per firmware version over time; update attempts and their outcomes; how
    /// updates went per version, per rollout and per wave, and why they failed.
    Firmware,
    /// Calls by method and direction, with the error rate the log can show.
    Rpc,
}

impl Report {
    /// Every report, in the order the console lists them.
    pub const ALL: [Report; 5] = [
        Report::Fleet,
        Report::Connectivity,
        Report::Usage,
        Report::Firmware,
        Report::Rpc,
    ];

    /// The name used on the command line and in exports.
    pub fn name(self) -> &'static str {
        match self {
            Report::Fleet => "fleet",
            Report::Connectivity => "connectivity",
            Report::Usage => "usage",
            Report::Firmware => "firmware",
            Report::Rpc => "rpc",
        }
    }

    /// The line fields this report reads; a [`Log`] loaded with a covering need serves it.
    pub fn need(self) -> Need {
        match self {
            Report::Fleet | Report::Rpc => Need {
                names: true,
                ..Need::default()
            },
            Report::Connectivity => Need::default(),
            Report::Usage => Need {
                shadow: true,
                ..Need::default()
            },
            Report::Firmware => Need {
                shadow: true,
                firmware: true,
                ..Need::default()
            },
        }
    }

    /// The names of the tables this report returns, main table first.
    pub fn tables(self) -> &'static [&'static str] {
        match self {
            Report::Fleet => &["summary", "events", "busiest", "buckets"],
            Report::Connectivity => &["devices", "buckets"],
            Report::Usage => &["devices", "hours", "buckets"],
            Report::Firmware => &[
                "devices",
                "versions",
                "updates",
                "rollouts",
                "rollout_waves",
                "revert_reasons",
            ],
            Report::Rpc => &["methods", "buckets"],
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Report {
    type Err = Error;

    fn from_str(s: &str) -> Result<Report, Error> {
        Report::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| Error::Request(format!("unknown report {s:?}; expected one of fleet, connectivity, usage, firmware, rpc")))
    }
}

/// Width of the time buckets of the per-bucket tables; buckets start on UTC boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Bucket {
    #[default]
    Hour,
    Day,
}

impl Bucket {
    pub(crate) fn micros(self) -> i64 {
        match self {
            Bucket::Hour => 3600 * US,
            Bucket::Day => 86_400 * US,
        }
    }
}

impl FromStr for Bucket {
    type Err = Error;

    fn from_str(s: &str) -> Result<Bucket, Error> {
        match s {
            "hour" => Ok(Bucket::Hour),
            "day" => Ok(Bucket::Day),
            _ => Err(Error::Request(format!(
                "unknown bucket {s:?}; expected hour or day"
            ))),
        }
    }
}

/// When a device counts as flapping: at least `connects` connections (sessions started)
/// within some `window_s` seconds of the range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlapRule {
    pub window_s: f64,
    pub connects: u32,
}

impl Default for FlapRule {
    /// Five connections within ten minutes.
    fn default() -> Self {
        FlapRule {
            window_s: 600.0,
            connects: 5,
        }
    }
}

/// What to report on.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportRequest {
    pub report: Report,
    /// Log files, or directories whose rotated set is read (PROTOCOL §7), in order.
    pub logs: Vec<PathBuf>,
    /// Range start, unix seconds; default: the first event of the log.
    pub from: Option<f64>,
    /// Range end, unix seconds, inclusive; default: the last event of the log. Sessions and
    /// light periods still open at the end of the log run to it.
    pub to: Option<f64>,
    /// Only this device.
    pub device: Option<String>,
    pub bucket: Bucket,
    /// Rows of the fleet report's busiest-devices table.
    pub top: usize,
    pub flapping: FlapRule,
    /// A directory where the parsed lines of rotated files are kept for later reports
    /// ([`Log::load_cached`]); none by default.
    pub cache: Option<PathBuf>,
}

impl ReportRequest {
    /// A request over `logs` with every option at its default.
    pub fn new(report: Report, logs: Vec<PathBuf>) -> ReportRequest {
        ReportRequest {
            report,
            logs,
            from: None,
            to: None,
            device: None,
            bucket: Bucket::Hour,
            top: 10,
            flapping: FlapRule::default(),
            cache: None,
        }
    }
}

/// One named table of a report.
#[derive(Debug, Clone)]
pub struct Table {
    pub name: &'static str,
    pub frame: DataFrame,
}

impl Table {
    pub fn new(name: &'static str, frame: DataFrame) -> Table {
        Table { name, frame }
    }
}

/// A computed report.
#[derive(Debug, Clone)]
pub struct ReportOutput {
    pub report: Report,
    /// The range reported on, unix seconds (both ends inclusive).
    pub from: f64,
    pub to: f64,
    /// In the order of [`Report::tables`]; the first is the main table.
    pub tables: Vec<Table>,
    /// How the log's lines were accounted for: torn, invalid and unknown lines are
    /// ignored by the reports and counted here.
    pub stats: LogStats,
}

impl ReportOutput {
    /// The table called `name`.
    pub fn table(&self, name: &str) -> Option<&DataFrame> {
        self.tables
            .iter()
            .find(|t| t.name == name)
            .map(|t| &t.frame)
    }

    /// The main table (per device where the report has one).
    pub fn main(&self) -> &DataFrame {
        &self.tables[0].frame
    }
}

/// Reads the request's logs and computes its report, reporting progress as it goes.
pub fn run<P>(request: &ReportRequest, progress: &P) -> Result<ReportOutput, Error>
where
    P: Fn(Progress) + Sync,
{
    let files = files::resolve(&request.logs)?;
    let log = match &request.cache {
        Some(cache) => Log::load_cached(&files, request.report.need(), cache, progress)?,
        None => Log::load(&files, request.report.need(), progress)?,
    };
    progress(Progress {
        stage: Stage::Computing,
        done: 0,
        total: 1,
    });
    let output = compute(&log, request)?;
    progress(Progress {
        stage: Stage::Computing,
        done: 1,
        total: 1,
    });
    Ok(output)
}

/// Computes the request's report over an already loaded log; `request.logs` is not read.
pub fn compute(log: &Log, request: &ReportRequest) -> Result<ReportOutput, Error> {
    if !log.need.covers(request.report.need()) {
        return Err(Error::Request(format!(
            "this log was read without the fields the {} report needs",
            request.report
        )));
    }
    let scope = Scope::new(log, request)?;
    let tables = match request.report {
        Report::Fleet => fleet::compute(&scope)?,
        Report::Connectivity => connectivity::compute(&scope)?,
        Report::Usage => usage::compute(&scope)?,
        Report::Firmware => firmware::compute(&scope)?,
        Report::Rpc => rpc::compute(&scope)?,
    };
    debug_assert_eq!(
        tables.iter().map(|t| t.name).collect::<Vec<_>>(),
        request.report.tables()
    );
    Ok(ReportOutput {
        report: request.report,
        from: scope.from as f64 / US as f64,
        to: scope.to as f64 / US as f64,
        tables,
        stats: log.stats,
    })
}

/// Most buckets a report may span: past this, hourly tables over years would be millions
/// of rows of nothing.
const MAX_BUCKETS: i64 = 100_000;

/// A request resolved against a log.
pub(crate) struct Scope<'a> {
    pub log: &'a Log,
    pub request: &'a ReportRequest,
    /// Range in microseconds, both ends inclusive.
    pub from: i64,
    pub to: i64,
    /// The filtered device; `Some(None)` when the filter names a device the log lacks. The
    /// filter may name a device by id or by name ([`crate::names`]).
    pub device: Option<Option<u32>>,
    pub bucket: i64,
}

impl<'a> Scope<'a> {
    pub(crate) fn new(log: &'a Log, request: &'a ReportRequest) -> Result<Scope<'a>, Error> {
        let seconds = |s: f64| -> Result<i64, Error> {
            let us = (s * US as f64).round();
            if us.is_finite() && us.abs() < 9.0e18 {
                Ok(us as i64)
            } else {
                Err(Error::Request(format!("time {s} is out of range")))
            }
        };
        let from = match request.from {
            Some(s) => seconds(s)?,
            None => log.min_ts.unwrap_or(0),
        };
        let to = match request.to {
            Some(s) => seconds(s)?,
            None => log.max_ts.unwrap_or(from).max(from),
        };
        if to < from {
            return Err(Error::Request("the range ends before it starts".into()));
        }
        let bucket = request.bucket.micros();
        if (to.div_euclid(bucket) - from.div_euclid(bucket)) >= MAX_BUCKETS {
            return Err(Error::Request(format!(
                "the range spans more than {MAX_BUCKETS} buckets; use a shorter range or day buckets"
            )));
        }
        let device = match &request.device {
            None => None,
            Some(query) => Some(log.find_device(query)?),
        };
        Ok(Scope {
            log,
            request,
            from,
            to,
            device,
            bucket,
        })
    }

    pub fn in_range(&self, ts: i64) -> bool {
        ts >= self.from && ts <= self.to
    }

    /// Whether the device filter lets `device` through.
    pub fn wants(&self, device: u32) -> bool {
        match self.device {
            None => true,
            Some(only) => only == Some(device),
        }
    }

    /// Seconds of `[start, end]` inside the range.
    pub fn clip(&self, start: i64, end: i64) -> Option<(i64, i64)> {
        let start = start.max(self.from);
        let end = end.min(self.to);
        (end >= start).then_some((start, end))
    }

    pub fn range_us(&self) -> i64 {
        self.to - self.from
    }

    /// Start of the bucket holding `ts`.
    pub fn bucket_of(&self, ts: i64) -> i64 {
        ts.div_euclid(self.bucket) * self.bucket
    }

    /// Starts of every bucket the range touches. The range's end is inclusive, but an end
    /// on a bucket boundary opens no bucket of its own: events at that instant count in
    /// the last bucket, which reads better than a trailing empty bucket.
    pub fn buckets(&self) -> Vec<i64> {
        let first = self.bucket_of(self.from);
        (0..=self.last_bucket())
            .map(|i| first + i as i64 * self.bucket)
            .collect()
    }

    fn last_bucket(&self) -> usize {
        let last = self.bucket_of((self.to - 1).max(self.from));
        ((last - self.bucket_of(self.from)) / self.bucket) as usize
    }

    pub fn bucket_index(&self, ts: i64) -> usize {
        let index = (self.bucket_of(ts) - self.bucket_of(self.from)) / self.bucket;
        (index.max(0) as usize).min(self.last_bucket())
    }

    /// Calls `add(bucket index, microseconds)` for each bucket the clipped interval
    /// `[start, end]` overlaps, including a zero-length interval's own bucket.
    pub fn split(&self, start: i64, end: i64, mut add: impl FnMut(usize, i64)) {
        let Some((start, end)) = self.clip(start, end) else {
            return;
        };
        let mut at = start;
        loop {
            let bucket_end = self.bucket_of(at) + self.bucket;
            let piece_end = end.min(bucket_end);
            add(self.bucket_index(at), piece_end - at);
            if bucket_end >= end {
                break;
            }
            at = bucket_end;
        }
    }

    /// The kept events of each device the filter lets through, in time order (stable, so
    /// events with equal times keep log order), and the devices to report on: those seen
    /// by the end of the range, except those deleted before it started and silent since;
    /// in the order of their ids.
    ///
    /// A `server.started` event (PROTOCOL §7) belongs to no device but ends every device's
    /// session, so it is given to each device seen before it, in its place in log order.
    ///
    /// Devices come one at a time: only an index of the log's events (four bytes each) and
    /// the current device's events are held, never a copy of the whole log.
    pub fn per_device(&self) -> impl Iterator<Item = DeviceEvents> + '_ {
        let log = self.log;
        let devices = log.devices.len();
        // Where each device's events start in `order`: a counting sort by device that
        // keeps log order within a device.
        let mut starts = vec![0usize; devices + 1];
        let mut restarts: Vec<u32> = Vec::new();
        for (index, event) in log.events.iter().enumerate() {
            if event.kind == Kind::ServerStarted {
                restarts.push(index as u32);
            } else if (event.device as usize) < devices && self.wants(event.device) {
                starts[event.device as usize + 1] += 1;
            }
        }
        for device in 0..devices {
            starts[device + 1] += starts[device];
        }
        let mut fill = starts.clone();
        let mut order = vec![0u32; starts[devices]];
        for (index, event) in log.events.iter().enumerate() {
            let device = event.device as usize;
            if event.kind != Kind::ServerStarted && device < devices && self.wants(event.device) {
                order[fill[device]] = index as u32;
                fill[device] += 1;
            }
        }
        drop(fill);
        let mut ids: Vec<u32> = (0..devices as u32).filter(|&d| self.wants(d)).collect();
        ids.sort_by(|&a, &b| log.devices.get(a).cmp(log.devices.get(b)));
        ids.into_iter().filter_map(move |device| {
            let own = &order[starts[device as usize]..starts[device as usize + 1]];
            self.device_events(device, own, &restarts)
        })
    }

    /// One device's [`DeviceEvents`] from the indices of its events and of the restarts,
    /// both in log order; `None` when the device is not reported on.
    fn device_events(&self, device: u32, own: &[u32], restarts: &[u32]) -> Option<DeviceEvents> {
        let log = self.log;
        let first = log
            .first_seen
            .get(device as usize)
            .copied()
            .unwrap_or(i64::MAX);
        if first > self.to {
            return None;
        }
        // Restarts after the device's first event, in their places in log order.
        let mut indices = Vec::with_capacity(own.len());
        let later = own.first().map_or(restarts.len(), |&first| {
            restarts.partition_point(|&r| r < first)
        });
        let mut restarts = restarts[later..].iter().copied().peekable();
        for &index in own {
            while let Some(restart) = restarts.next_if(|&r| r < index) {
                indices.push(restart);
            }
            indices.push(index);
        }
        if !own.is_empty() {
            indices.extend(restarts);
        }
        let mut events: Vec<Event> = indices.iter().map(|&i| log.events[i as usize]).collect();
        // Lines may be out of order (clock steps, merged files); a stable sort keeps log
        // order among equal times.
        if !events.windows(2).all(|w| w[0].ts <= w[1].ts) {
            events.sort_by_key(|e| e.ts);
        }
        let mut deleted = false;
        let mut active = first >= self.from;
        for event in events.iter().filter(|e| e.kind != Kind::ServerStarted) {
            if event.ts < self.from {
                deleted = event.kind == Kind::Deleted;
            } else if event.ts <= self.to {
                active = true;
                break;
            }
        }
        if deleted && !active {
            return None;
        }
        Some(DeviceEvents {
            id: log.devices.text(device),
            name: log.label_or_empty(device),
            events,
        })
    }
}

/// One device's kept events in time order.
pub(crate) struct DeviceEvents {
    pub id: String,
    /// Its last name in the log; empty when the log never named it.
    pub name: String,
    pub events: Vec<Event>,
}

impl DeviceEvents {
    /// Events up to the range's end: later ones cannot change anything reported.
    pub fn until(&self, to: i64) -> &[Event] {
        let end = self.events.partition_point(|e| e.ts <= to);
        &self.events[..end]
    }
}

/// A column of microsecond timestamps as a Polars datetime (naive, meaning UTC).
pub(crate) fn time_column(name: &str, micros: Vec<i64>) -> Column {
    Series::new(name.into(), micros)
        .into_datetime(TimeUnit::Microseconds, None)
        .into_column()
}

/// Like [`time_column`], with nulls where there is no time.
pub(crate) fn optional_time_column(name: &str, micros: Vec<Option<i64>>) -> Column {
    Series::new(name.into(), micros)
        .into_datetime(TimeUnit::Microseconds, None)
        .into_column()
}

pub(crate) fn frame(columns: Vec<Column>) -> Result<DataFrame, Error> {
    Ok(DataFrame::new_infer_height(columns)?)
}

/// Seconds as `f64` from microseconds.
pub(crate) fn seconds(us: i64) -> f64 {
    us as f64 / US as f64
}

pub(crate) fn hours(us: i64) -> f64 {
    us as f64 / (3600 * US) as f64
}
