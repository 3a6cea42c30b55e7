//! The analytics view's state: which report, time range and bucket are shown, the last
//! report the [`worker`] computed, its progress, and where the table is scrolled.
//!
//! The worker reads the notification log (PROTOCOL §7) off the UI thread and sends each
//! report already turned into what the view draws, [`ReportData`]: rows of text and
//! numeric series for the charts. Converting a Polars table is not free, so it happens
//! once per report in the worker, never per frame.
//!
//! ```
//! use herd_analytics::{Log, Need, Report};
//! use herd_console::tui::analytics::{report_data, Range, Selection};
//!
//! let mut log = Log::new(Need::ALL);
//! log.push(b"{\"ts\":0,\"id\":\"lamp\",\"name\":\"online\",\"data\":null}\n");
//! let selection = Selection { report: Report::Fleet, range: Range::All, ..Selection::default() };
//! let data = report_data(&log, selection, 60.0).expect("computes");
//! assert_eq!(data.tables[0].name, "summary");
//! assert_eq!(data.stats.lines, 1);
//! ```

pub mod worker;

use herd_analytics::{json_rows, Bucket, Log, LogStats, Report, ReportOutput, ReportRequest};
use ratatui::layout::{Constraint, Layout, Rect};
use serde_json::Value;

/// The time range presets the view cycles through with `r`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Range {
    LastHour,
    LastDay,
    /// The whole log, first event to last.
    #[default]
    All,
}

impl Range {
    pub fn label(self) -> &'static str {
        match self {
            Range::LastHour => "last hour",
            Range::LastDay => "last 24 h",
            Range::All => "all",
        }
    }

    /// Length of the range ending now; `None` for the whole log.
    pub fn seconds(self) -> Option<f64> {
        match self {
            Range::LastHour => Some(3600.0),
            Range::LastDay => Some(86_400.0),
            Range::All => None,
        }
    }

    pub fn next(self) -> Range {
        match self {
            Range::LastHour => Range::LastDay,
            Range::LastDay => Range::All,
            Range::All => Range::LastHour,
        }
    }
}

/// What the view shows: the worker computes exactly this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selection {
    pub report: Report,
    pub range: Range,
    pub bucket: Bucket,
}

impl Default for Selection {
    fn default() -> Self {
        Selection {
            report: Report::Fleet,
            range: Range::All,
            bucket: Bucket::Hour,
        }
    }
}

impl Selection {
    /// The report request for this selection, with relative ranges ending at `now`.
    pub fn request(&self, now: f64) -> ReportRequest {
        let mut request = ReportRequest::new(self.report, Vec::new());
        request.bucket = self.bucket;
        if let Some(seconds) = self.range.seconds() {
            request.from = Some(now - seconds);
            request.to = Some(now);
        }
        request
    }

    pub fn bucket_label(&self) -> &'static str {
        match self.bucket {
            Bucket::Hour => "hour",
            Bucket::Day => "day",
        }
    }
}

/// What the console tells the worker.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// The view is open and shows this selection: keep its report current.
    Show(Selection),
    /// The view was left: stop reading and computing until it is shown again.
    Hide,
    /// Run this SQL over the log's tables (`herd query`'s, [`herd_analytics::query`]) and
    /// answer with [`Event::Query`].
    Query(String),
}

/// What the worker tells the console.
#[derive(Debug, Clone)]
pub enum Event {
    /// Where the log comes from: its path, or "server".
    Started {
        source: String,
    },
    Progress(Progress),
    Report(Box<ReportData>),
    /// Reading, pulling or computing failed; the worker tries again on its timer.
    Failed(String),
    /// The answer to a [`Request::Query`]: its table, or why it could not run.
    Query(Result<Box<TableData>, String>),
}

/// A long step of the worker, for the gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub stage: Stage,
    pub done: u64,
    /// Unknown while pulling from the server, which does not say how much is left.
    pub total: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading log files; `done` and `total` are bytes.
    Reading,
    /// Pulling the log from the server; `done` is lines.
    Pulling,
    Computing,
}

impl Progress {
    /// Fraction done, when it is known.
    pub fn ratio(&self) -> Option<f64> {
        let total = self.total?;
        Some(if total == 0 {
            0.0
        } else {
            (self.done as f64 / total as f64).clamp(0.0, 1.0)
        })
    }

    pub fn label(&self) -> String {
        match (self.stage, self.ratio()) {
            (Stage::Reading, Some(ratio)) => format!("reading {:.0}%", ratio * 100.0),
            (Stage::Reading, None) => "reading".into(),
            (Stage::Pulling, _) => format!("pulling {} lines", thousands(self.done)),
            (Stage::Computing, _) => "computing".into(),
        }
    }
}

/// One report table as the view draws it.
#[derive(Debug, Clone, PartialEq)]
pub struct TableData {
    pub name: &'static str,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// Widest cell of each column, header included.
    pub widths: Vec<u16>,
    /// Columns of numbers, drawn right-aligned.
    pub numeric: Vec<bool>,
}

/// A bar chart: labelled values, biggest first unless the order means something.
#[derive(Debug, Clone, PartialEq)]
pub struct Bars {
    pub title: String,
    pub bars: Vec<(String, u64)>,
    /// Bars stand (hours of the day); otherwise they lie, with their labels on the left.
    pub vertical: bool,
    /// The labels are device ids, which the view shows by name when the fleet knows it.
    pub devices: bool,
}

/// A sparkline over the report's buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct Spark {
    pub title: String,
    pub values: Vec<u64>,
    /// The largest value as the table shows it.
    pub peak: String,
}

/// A computed report, ready to draw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportData {
    pub selection: Selection,
    /// The range reported on, unix seconds.
    pub from: f64,
    pub to: f64,
    pub stats: LogStats,
    /// When the worker computed it (unix seconds).
    pub computed_at: f64,
    pub tables: Vec<TableData>,
    pub bars: Option<Bars>,
    pub spark: Option<Spark>,
}

/// A query's result as the view draws it.
pub fn query_table(frame: &herd_analytics::DataFrame) -> Result<TableData, String> {
    let columns: Vec<String> = frame
        .get_column_names()
        .iter()
        .map(|name| name.to_string())
        .collect();
    let rows = match json_rows(frame).map_err(|e| e.to_string())? {
        Value::Array(rows) => rows,
        _ => Vec::new(),
    };
    Ok(table_data("query", &columns, &rows))
}

/// The SQL prompt of the analytics view and the last answer to it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryPrompt {
    /// The SQL as typed so far.
    pub input: String,
    /// Keys go to the prompt; otherwise they scroll the answer.
    pub editing: bool,
    /// The worker is running the query.
    pub running: bool,
    /// The last answer: a table, or the error Polars gave, shown in place of the table.
    pub answer: Option<Result<Box<TableData>, String>>,
    /// First row of the answer shown.
    pub offset: usize,
}

/// What a key did to the prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptOutcome {
    /// Nothing the prompt handles; the view's own keys apply.
    Ignored,
    Handled,
    /// Enter: run this query.
    Run(Request),
    /// Esc while editing: the prompt closed.
    Closed,
}

/// Computes `selection`'s report over `log` at `now` and converts it for drawing.
pub fn report_data(log: &Log, selection: Selection, now: f64) -> Result<ReportData, String> {
    let output =
        herd_analytics::compute(log, &selection.request(now)).map_err(|e| e.to_string())?;
    ReportData::from_output(&output, selection, now).map_err(|e| e.to_string())
}

impl ReportData {
    /// Turns a report's tables into text rows and picks its charts.
    pub fn from_output(
        output: &ReportOutput,
        selection: Selection,
        computed_at: f64,
    ) -> Result<ReportData, herd_analytics::Error> {
        let mut tables = Vec::with_capacity(output.tables.len());
        let mut raw = Vec::with_capacity(output.tables.len());
        for table in &output.tables {
            let mut columns: Vec<String> = table
                .frame
                .get_column_names()
                .iter()
                .map(|name| name.to_string())
                .collect();
            // Per-device tables carry the device's name from the log beside its id; the
            // view already shows the id as the name the fleet knows, so one column does.
            if table.name != "rollouts" && columns.iter().any(|c| c == "id") {
                columns.retain(|c| c != "name");
            }
            let rows = match json_rows(&table.frame)? {
                Value::Array(rows) => rows,
                _ => Vec::new(),
            };
            tables.push(table_data(table.name, &columns, &rows));
            raw.push((table.name, rows));
        }
        let rows = |name: &str| -> &[Value] {
            raw.iter()
                .find(|(n, _)| *n == name)
                .map_or(&[], |(_, rows)| rows.as_slice())
        };
        let bucket = selection.bucket_label();
        let column = |table: &str, name: &str| -> Vec<f64> {
            rows(table)
                .iter()
                .map(|row| row[name].as_f64().unwrap_or(0.0))
                .collect()
        };
        let (bars, spark) = match selection.report {
            Report::Fleet => (
                Bars {
                    title: "notifications by event".into(),
                    bars: labelled(rows("events"), "name", "count"),
                    vertical: false,
                    devices: false,
                },
                Some(spark(
                    format!("notifications per {bucket}"),
                    column("buckets", "notifications"),
                )),
            ),
            Report::Connectivity => (
                Bars {
                    title: "uptime % by device".into(),
                    bars: labelled(rows("devices"), "id", "uptime_pct"),
                    vertical: false,
                    devices: true,
                },
                Some(spark(
                    format!("devices online per {bucket}"),
                    column("buckets", "devices_online"),
                )),
            ),
            Report::Usage => (
                Bars {
                    title: "switch-ons by hour of day (UTC)".into(),
                    bars: labelled(rows("hours"), "hour", "switch_ons"),
                    vertical: true,
                    devices: false,
                },
                Some(spark(
                    format!("hours on per {bucket}"),
                    column("buckets", "hours_on"),
                )),
            ),
            Report::Firmware => {
                let versions = rows("versions");
                // A rollout as it goes: devices on the newest version, bucket by bucket.
                let newest = versions
                    .iter()
                    .filter_map(|row| row["fw_version"].as_str())
                    .max_by(|a, b| compare_versions(a, b))
                    .map(str::to_string);
                let spark = newest.map(|newest| {
                    let mut per_bucket: Vec<(String, f64)> = Vec::new();
                    for row in versions {
                        let bucket = cell(&row["bucket"]);
                        let devices = if row["fw_version"].as_str() == Some(&newest) {
                            row["devices"].as_f64().unwrap_or(0.0)
                        } else {
                            0.0
                        };
                        match per_bucket.last_mut() {
                            Some((last, count)) if *last == bucket => *count += devices,
                            _ => per_bucket.push((bucket, devices)),
                        }
                    }
                    spark(
                        format!("devices on {newest} per {bucket}"),
                        per_bucket.into_iter().map(|(_, count)| count).collect(),
                    )
                });
                (
                    Bars {
                        title: "devices by firmware version".into(),
                        bars: version_counts(rows("devices")),
                        vertical: false,
                        devices: false,
                    },
                    spark,
                )
            }
            Report::Rpc => {
                let bars = rows("methods")
                    .iter()
                    .map(|row| {
                        let label = format!(
                            "{} {}",
                            row["direction"].as_str().unwrap_or("?"),
                            row["method"].as_str().unwrap_or("?")
                        );
                        (label, number(&row["calls"]))
                    })
                    .collect();
                // Both directions: what the server carried.
                let calls = column("buckets", "calls_out")
                    .into_iter()
                    .zip(column("buckets", "calls_in"))
                    .map(|(out, r#in)| out + r#in)
                    .collect();
                (
                    Bars {
                        title: "calls by method".into(),
                        bars,
                        vertical: false,
                        devices: false,
                    },
                    Some(spark(format!("calls per {bucket}"), calls)),
                )
            }
        };
        Ok(ReportData {
            selection,
            from: output.from,
            to: output.to,
            stats: output.stats,
            computed_at,
            tables,
            bars: Some(bars),
            spark,
        })
    }
}

/// A sparkline of one bucket column. Fractional values (hours) are scaled so that the
/// line keeps their shape; the peak is shown as the table shows it.
fn spark(title: String, values: Vec<f64>) -> Spark {
    let values: Vec<f64> = values.into_iter().map(|v| v.max(0.0)).collect();
    let fractional = values.iter().any(|v| v.fract() != 0.0);
    let scale = if fractional { 100.0 } else { 1.0 };
    let peak = values.iter().copied().fold(0.0, f64::max);
    Spark {
        title,
        values: values.iter().map(|v| (v * scale).round() as u64).collect(),
        peak: number_text(peak),
    }
}

fn labelled(rows: &[Value], label: &str, value: &str) -> Vec<(String, u64)> {
    rows.iter()
        .map(|row| (cell(&row[label]), number(&row[value])))
        .collect()
}

/// Devices per firmware version at the range's end, most devices first.
fn version_counts(devices: &[Value]) -> Vec<(String, u64)> {
    let mut counts: Vec<(String, u64)> = Vec::new();
    for row in devices {
        let version = cell(&row["fw_version"]);
        match counts.iter_mut().find(|(v, _)| *v == version) {
            Some((_, count)) => *count += 1,
            None => counts.push((version, 1)),
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    counts
}

/// Orders versions by their numeric parts (`1.10.0` after `1.9.2`), text otherwise.
fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |v: &str| -> Vec<Result<u64, String>> {
        v.split(['.', '-', '+'])
            .map(|part| part.parse::<u64>().map_err(|_| part.to_string()))
            .collect()
    };
    parts(a).cmp(&parts(b))
}

/// A value as a bar's height: rounded, never negative.
fn number(value: &Value) -> u64 {
    value.as_f64().map_or(0, |v| v.max(0.0).round() as u64)
}

fn table_data(name: &'static str, columns: &[String], rows: &[Value]) -> TableData {
    let mut numeric = vec![true; columns.len()];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            columns
                .iter()
                .enumerate()
                .map(|(i, column)| {
                    let value = &row[column.as_str()];
                    if !(value.is_number() || value.is_null()) {
                        numeric[i] = false;
                    }
                    cell(value)
                })
                .collect()
        })
        .collect();
    let widths = columns
        .iter()
        .enumerate()
        .map(|(i, column)| {
            cells
                .iter()
                .map(|row| row[i].chars().count())
                .fold(column.chars().count(), usize::max)
                .min(u16::MAX as usize) as u16
        })
        .collect();
    TableData {
        name,
        columns: columns.to_vec(),
        rows: cells,
        widths,
        numeric,
    }
}

/// One cell as text: numbers with at most three decimals, times as `YYYY-MM-DD HH:MM`
/// (UTC), nulls as `-`.
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        Value::Number(n) => match n.as_i64().or_else(|| n.as_u64().map(|u| u as i64)) {
            Some(i) => i.to_string(),
            None => number_text(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => short_time(s).unwrap_or_else(|| s.clone()),
        other => other.to_string(),
    }
}

fn number_text(value: f64) -> String {
    let text = format!("{value:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".into()
    } else {
        text.to_string()
    }
}

/// `2023-11-14T23:00:00Z` as `2023-11-14 23:00`.
fn short_time(text: &str) -> Option<String> {
    if text.len() < 20 || !text.ends_with('Z') || text.as_bytes().get(10) != Some(&b'T') {
        return None;
    }
    crate::text::parse_rfc3339(text).map(time_text)
}

/// Unix seconds as `2023-11-14 23:00` (UTC), with seconds only when they are not zero.
pub fn time_text(ts: f64) -> String {
    let Ok(time) = time::OffsetDateTime::from_unix_timestamp(ts.floor() as i64) else {
        return number_text(ts);
    };
    let format = if time.second() == 0 {
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]")
    } else {
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]")
    };
    time.format(&format).unwrap_or_else(|_| number_text(ts))
}

/// `12,345`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Where the parts of the view go in its body (the screen between the breadcrumbs and
/// the footer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Areas {
    /// The report tabs, range and bucket.
    pub tabs: Rect,
    /// Source, line accounting, refresh time, and the gauge while working.
    pub info: Rect,
    /// Bar chart and sparkline, when there is room for them.
    pub charts: Option<Rect>,
    /// The table: a title line, the column names, then rows.
    pub table: Rect,
}

/// Body rows below which the charts give their room to the table.
const CHARTS_FROM: u16 = 14;

pub fn areas(body: Rect) -> Areas {
    let [tabs, info, rest] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(0),
    ])
    .areas(body);
    if rest.height < CHARTS_FROM {
        return Areas {
            tabs,
            info,
            charts: None,
            table: rest,
        };
    }
    let height = (rest.height * 2 / 5).clamp(6, 16);
    let [charts, table] =
        Layout::vertical([Constraint::Length(height), Constraint::Min(0)]).areas(rest);
    Areas {
        tabs,
        info,
        charts: Some(charts),
        table,
    }
}

/// Table rows visible on a screen of `size`: the body is all but the header, the
/// breadcrumbs and the footer.
pub fn table_rows(size: (u16, u16)) -> usize {
    let body = Rect::new(0, 0, size.0, size.1.saturating_sub(3));
    areas(body).table.height.saturating_sub(2) as usize
}

/// The analytics view's part of the model.
#[derive(Debug, Default)]
pub struct AnalyticsView {
    pub selection: Selection,
    /// The log's path, or "server"; known once the worker started.
    pub source: Option<String>,
    /// The last report received; it may be of an older selection while a new one computes.
    pub data: Option<Box<ReportData>>,
    /// The worker's current long step, if any.
    pub progress: Option<Progress>,
    /// The last failure, until a report arrives.
    pub error: Option<String>,
    /// Which of the report's tables is shown.
    pub table: usize,
    /// First row of the table shown.
    pub offset: usize,
    /// How the shown table's rows are ordered; `None`: as the report gives them.
    pub sort: Option<TableSort>,
    /// With a sort, the rows of the shown table in drawing order.
    pub order: Vec<usize>,
    /// The SQL prompt, while open: its answer takes the table's place.
    pub query: Option<QueryPrompt>,
}

/// A column of the shown table to order its rows by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableSort {
    pub column: usize,
    pub descending: bool,
}

/// A cell as a sort key: numbers by value, text in natural order (`lamp-9` before
/// `lamp-10`); empty cells last either way.
#[derive(Debug, PartialEq)]
enum SortKey {
    Number(f64),
    Text(String),
    Empty,
}

impl SortKey {
    fn of(text: &str, numeric: bool) -> SortKey {
        if text == "-" {
            return SortKey::Empty;
        }
        match text.parse::<f64>() {
            Ok(n) if numeric => SortKey::Number(n),
            _ => SortKey::Text(text.to_string()),
        }
    }

    fn compare(&self, other: &SortKey, descending: bool) -> std::cmp::Ordering {
        use std::cmp::Ordering;
        let order = match (self, other) {
            (SortKey::Empty, SortKey::Empty) => return Ordering::Equal,
            (SortKey::Empty, _) => return Ordering::Greater,
            (_, SortKey::Empty) => return Ordering::Less,
            (SortKey::Number(a), SortKey::Number(b)) => a.total_cmp(b),
            (SortKey::Text(a), SortKey::Text(b)) => compare_versions(a, b),
            (SortKey::Number(_), SortKey::Text(_)) => Ordering::Less,
            (SortKey::Text(_), SortKey::Number(_)) => Ordering::Greater,
        };
        if descending {
            order.reverse()
        } else {
            order
        }
    }
}

impl AnalyticsView {
    /// The report for the current selection has not arrived yet.
    pub fn pending(&self) -> bool {
        self.data
            .as_ref()
            .is_none_or(|data| data.selection != self.selection)
    }

    /// The data to draw: the last report if it is of the selected report (perhaps of an
    /// older range or bucket, while the new one computes).
    pub fn shown(&self) -> Option<&ReportData> {
        self.data
            .as_deref()
            .filter(|data| data.selection.report == self.selection.report)
    }

    /// Rows of the table shown.
    pub fn table_len(&self) -> usize {
        self.shown()
            .and_then(|data| data.tables.get(self.table))
            .map_or(0, |table| table.rows.len())
    }

    /// Picks another report; the table, its order and the scroll position start over.
    pub fn select_report(&mut self, report: Report) {
        if self.selection.report != report {
            self.selection.report = report;
            self.table = 0;
            self.offset = 0;
            self.sort = None;
            self.order.clear();
        }
    }

    /// Orders the shown table by its next column (numbers biggest first, text from A),
    /// and after the last column as the report gives it again. Call
    /// [`order_rows`](Self::order_rows) after.
    pub fn next_sort(&mut self) {
        let numeric = match self.shown().and_then(|data| data.tables.get(self.table)) {
            Some(table) => table.numeric.clone(),
            None => return,
        };
        let column = self.sort.map_or(0, |sort| sort.column + 1);
        self.sort = numeric.get(column).map(|&numeric| TableSort {
            column,
            descending: numeric,
        });
        self.offset = 0;
    }

    /// Reverses the order of the sorted column, or sorts by the first one from its end.
    pub fn reverse_sort(&mut self) {
        match &mut self.sort {
            Some(sort) => sort.descending = !sort.descending,
            None => {
                self.next_sort();
                if let Some(sort) = &mut self.sort {
                    sort.descending = !sort.descending;
                }
            }
        }
        self.offset = 0;
    }

    /// Computes the drawing order of the shown table's rows for the sort chosen; `label`
    /// gives the name a device id is shown with, so an `id` column sorts as it reads.
    pub fn order_rows(&mut self, label: &dyn Fn(&str) -> String) {
        self.order.clear();
        let Some(sort) = self.sort else {
            return;
        };
        let Some(table) = self.shown().and_then(|data| data.tables.get(self.table)) else {
            return;
        };
        let Some(numeric) = table.numeric.get(sort.column).copied() else {
            return;
        };
        let is_id = table.columns[sort.column] == "id";
        let keys: Vec<SortKey> = table
            .rows
            .iter()
            .map(|row| {
                let cell = row.get(sort.column).map_or("-", String::as_str);
                if is_id {
                    SortKey::Text(label(cell))
                } else {
                    SortKey::of(cell, numeric)
                }
            })
            .collect();
        let mut order: Vec<usize> = (0..keys.len()).collect();
        // Stable: rows with equal keys keep the report's order.
        order.sort_by(|&a, &b| keys[a].compare(&keys[b], sort.descending));
        self.order = order;
    }

    /// The row of the shown table drawn `n`th.
    pub fn row_at(&self, n: usize) -> usize {
        self.order.get(n).copied().unwrap_or(n)
    }

    /// Scrolls the table by `delta` rows, keeping `visible` rows on screen.
    pub fn scroll(&mut self, delta: isize, visible: usize) {
        let last = self.table_len().saturating_sub(visible.max(1));
        let target = (self.offset as isize).saturating_add(delta).max(0) as usize;
        self.offset = target.min(last);
    }

    pub fn next_table(&mut self) {
        let count = self.shown().map_or(0, |data| data.tables.len());
        if count > 0 {
            self.table = (self.table + 1) % count;
            self.offset = 0;
            self.sort = None;
            self.order.clear();
        }
    }

    /// Opens the SQL prompt for typing, keeping what was typed before.
    pub fn open_query(&mut self) {
        self.query.get_or_insert_with(QueryPrompt::default).editing = true;
    }

    /// A key while the prompt is open. Typing edits the SQL, Enter runs it, Esc stops
    /// editing (and a second Esc closes the prompt); with the answer shown, the arrows,
    /// Page Up/Down, Home and End scroll it.
    pub fn query_key(&mut self, key: crossterm::event::KeyEvent, visible: usize) -> PromptOutcome {
        use crossterm::event::{KeyCode, KeyModifiers};
        let Some(prompt) = self.query.as_mut() else {
            return PromptOutcome::Ignored;
        };
        if prompt.editing {
            match key.code {
                KeyCode::Enter => {
                    let sql = prompt.input.trim().to_string();
                    if sql.is_empty() {
                        return PromptOutcome::Handled;
                    }
                    prompt.editing = false;
                    prompt.running = true;
                    return PromptOutcome::Run(Request::Query(sql));
                }
                KeyCode::Esc => prompt.editing = false,
                KeyCode::Backspace => {
                    prompt.input.pop();
                }
                KeyCode::Char('u') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                    prompt.input.clear()
                }
                KeyCode::Char(c) if !key.modifiers.contains(KeyModifiers::CONTROL) => {
                    prompt.input.push(c)
                }
                _ => {}
            }
            return PromptOutcome::Handled;
        }
        let rows = match &prompt.answer {
            Some(Ok(table)) => table.rows.len(),
            _ => 0,
        };
        let page = visible.max(1) as isize;
        let delta = match key.code {
            KeyCode::Esc => {
                self.query = None;
                return PromptOutcome::Closed;
            }
            KeyCode::Enter => {
                prompt.editing = true;
                return PromptOutcome::Handled;
            }
            KeyCode::Down | KeyCode::Char('j') => 1,
            KeyCode::Up | KeyCode::Char('k') => -1,
            KeyCode::PageDown => page,
            KeyCode::PageUp => -page,
            KeyCode::Home | KeyCode::Char('g') => isize::MIN / 2,
            KeyCode::End | KeyCode::Char('G') => isize::MAX / 2,
            _ => return PromptOutcome::Ignored,
        };
        let last = rows.saturating_sub(visible.max(1));
        prompt.offset = (prompt.offset as isize)
            .saturating_add(delta)
            .clamp(0, last as isize) as usize;
        PromptOutcome::Handled
    }

    pub fn apply(&mut self, event: Event) {
        match event {
            Event::Started { source } => self.source = Some(source),
            Event::Progress(progress) => self.progress = Some(progress),
            Event::Report(data) => {
                self.progress = None;
                self.error = None;
                self.data = Some(data);
                let tables = self.shown().map_or(0, |data| data.tables.len());
                if self.table >= tables {
                    self.table = 0;
                    self.sort = None;
                }
                // The new rows are ordered by the caller (`order_rows`), which knows the
                // device names.
                self.order.clear();
                self.offset = self.offset.min(self.table_len().saturating_sub(1));
            }
            Event::Failed(message) => {
                self.progress = None;
                self.error = Some(message);
            }
            Event::Query(answer) => {
                // An answer after the prompt was closed is of no interest.
                if let Some(prompt) = self.query.as_mut() {
                    prompt.running = false;
                    prompt.answer = Some(answer);
                    prompt.offset = 0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_prompt_edits_runs_scrolls_and_closes() {
        use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
        let key = |code| KeyEvent::new(code, KeyModifiers::NONE);
        let mut view = AnalyticsView::default();
        assert_eq!(
            view.query_key(key(KeyCode::Char('x')), 5),
            PromptOutcome::Ignored
        );
        view.open_query();
        for c in "SELECT 1x".chars() {
            assert_eq!(
                view.query_key(key(KeyCode::Char(c)), 5),
                PromptOutcome::Handled
            );
        }
        view.query_key(key(KeyCode::Backspace), 5);
        assert_eq!(
            view.query_key(key(KeyCode::Enter), 5),
            PromptOutcome::Run(Request::Query("SELECT 1".into()))
        );
        assert!(view.query.as_ref().is_some_and(|p| p.running && !p.editing));
        let rows: Vec<Value> = (0..20).map(|n| json!({"n": n})).collect();
        view.apply(Event::Query(Ok(Box::new(table_data(
            "query",
            &["n".to_string()],
            &rows,
        )))));
        view.query_key(key(KeyCode::PageDown), 5);
        view.query_key(key(KeyCode::End), 5);
        assert_eq!(view.query.as_ref().map(|p| p.offset), Some(15));
        // A failed query is an answer like any other, and the view goes on.
        view.apply(Event::Query(Err("the query failed: no table".into())));
        assert_eq!(view.query.as_ref().map(|p| p.offset), Some(0));
        assert_eq!(view.query_key(key(KeyCode::Esc), 5), PromptOutcome::Closed);
        assert!(view.query.is_none());
    }

    #[test]
    fn cells_read_well() {
        assert_eq!(cell(&json!(null)), "-");
        assert_eq!(cell(&json!(3)), "3");
        assert_eq!(cell(&json!(50.0)), "50");
        assert_eq!(cell(&json!(0.133_333_3)), "0.133");
        assert_eq!(cell(&json!("2023-11-14T23:00:00Z")), "2023-11-14 23:00");
        assert_eq!(cell(&json!("2023-11-14T23:00:05Z")), "2023-11-14 23:00:05");
        assert_eq!(cell(&json!("lamp")), "lamp");
        assert_eq!(cell(&json!(true)), "yes");
        assert_eq!(thousands(0), "0");
        assert!(compare_versions("1.10.0", "1.9.2").is_gt());
        assert_eq!(thousands(1234), "1,234");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn sorted_rows_read_as_shown() {
        let rows = [
            ["aa01", "10", "3"],
            ["aa02", "9", "-"],
            ["aa03", "10.5", "1"],
            ["aa04", "-", "2"],
        ];
        let table = TableData {
            name: "devices",
            columns: vec!["id".into(), "n".into(), "m".into()],
            rows: rows
                .iter()
                .map(|row| row.iter().map(|c| c.to_string()).collect())
                .collect(),
            widths: vec![4, 4, 1],
            numeric: vec![false, true, true],
        };
        let mut view = AnalyticsView {
            data: Some(Box::new(ReportData {
                tables: vec![table],
                ..ReportData::default()
            })),
            ..AnalyticsView::default()
        };
        // Ids read as the names shown, in natural order.
        let names = |id: &str| match id {
            "aa01" => "lamp-10".to_string(),
            "aa02" => "lamp-9".to_string(),
            "aa03" => "desk".to_string(),
            other => other.to_string(),
        };
        let order = |view: &mut AnalyticsView| {
            view.order_rows(&names);
            (0..4).map(|n| view.row_at(n)).collect::<Vec<_>>()
        };
        view.next_sort();
        assert_eq!(
            order(&mut view),
            [3, 2, 1, 0],
            "aa04, desk, lamp-9, lamp-10"
        );
        // Numbers biggest first; empty cells last either way.
        view.next_sort();
        assert_eq!(order(&mut view), [2, 0, 1, 3]);
        view.reverse_sort();
        assert_eq!(order(&mut view), [1, 0, 2, 3]);
        view.next_sort();
        assert_eq!(order(&mut view), [0, 3, 2, 1]);
        view.next_sort();
        assert_eq!(view.sort, None);
        assert_eq!(order(&mut view), [0, 1, 2, 3]);
    }

    #[test]
    fn ranges_end_now() {
        let selection = Selection {
            range: Range::LastHour,
            ..Selection::default()
        };
        let request = selection.request(7200.0);
        assert_eq!((request.from, request.to), (Some(3600.0), Some(7200.0)));
        let request = Selection::default().request(7200.0);
        assert_eq!((request.from, request.to), (None, None));
        assert_eq!(Range::All.next(), Range::LastHour);
    }

    #[test]
    fn progress_labels() {
        let reading = Progress {
            stage: Stage::Reading,
            done: 50,
            total: Some(200),
        };
        assert_eq!(reading.label(), "reading 25%");
        let pulling = Progress {
            stage: Stage::Pulling,
            done: 12_000,
            total: None,
        };
        assert_eq!(
            (pulling.label(), pulling.ratio()),
            ("pulling 12,000 lines".into(), None)
        );
    }
}
