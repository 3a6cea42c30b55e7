//! `herd report` as scripts run it: the real binary over hand-written notification logs
//! whose expected figures are worked out by hand, in every output format, and over a real
//! in-process server's log pulled with `POST /logs`.

mod logs;

use std::io::Cursor;
use std::path::Path;
use std::process::Stdio;

use herd_client::{Client, NewDevice, NotifyEvent, NotifyStream};
use herd_testkit::{SimDevice, TestServer, WAIT};
use logs::{light, line, BASE};
use polars::prelude::{DataFrame, ParquetReader, SerReader};
use serde_json::{json, Value};

const FROM: &str = "2023-11-14T23:00:00Z";
/// One hour after [`BASE`], as unix seconds: the range mixes both time forms.
const TO: &str = "1700006400";

/// Two lights over one hour:
/// - `lamp` is online for the first half hour (uptime 50%); its light reports off (the
///   first state seen, not a switch), then on 600-1200 and on 1500-1700: two switch-ons,
///   two switch-offs, 800 s on.
/// - `porch` is online the whole hour (100%, its session still open at the end); its light
///   reports off at 2400 and on at 3000 until the range's end: one switch-on, 600 s on.
/// - one line with an event name no report knows.
fn hour_log() -> String {
    [
        line(0, "lamp", "online", Value::Null),
        line(0, "porch", "online", Value::Null),
        light(60, "lamp", false),
        light(600, "lamp", true),
        light(1200, "lamp", false),
        light(1500, "lamp", true),
        light(1700, "lamp", false),
        line(1800, "lamp", "offline", Value::Null),
        light(2400, "porch", false),
        light(3000, "porch", true),
        line(3100, "porch", "custom.thing", Value::Null),
    ]
    .concat()
}

struct Output {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl Output {
    fn text(&self) -> String {
        String::from_utf8(self.stdout.clone()).expect("text output")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is JSON ({e}): {}",
                String::from_utf8_lossy(&self.stdout)
            )
        })
    }

    /// The one `herd: ...` line of a failure.
    fn error_line(&self) -> &str {
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one error line: {}", self.stderr);
        assert!(lines[0].starts_with("herd: "), "{}", self.stderr);
        lines[0]
    }
}

/// `herd` isolated from this machine: a config file that does not exist and no `HERD_*`
/// variables, so only what a test passes counts.
fn herd(dir: &Path) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_herd"));
    command
        .current_dir(dir)
        .env("HERD_CONFIG", dir.join("no-console.toml"))
        .env("HERD_REPORT_CACHE", dir.join("report-cache"))
        .stdin(Stdio::null());
    for name in [
        "HERD_PROFILE",
        "HERD_SERVER",
        "HERD_API_KEY",
        "HERD_READ_ONLY",
        "HERD_CA_CERT",
        "HERD_NOTIFICATION_LOG",
    ] {
        command.env_remove(name);
    }
    command
}

fn run(mut command: std::process::Command, args: &[&str]) -> Output {
    let output = command.args(args).output().expect("herd runs");
    Output {
        code: output.status.code().unwrap_or(-1),
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The words of a command line (none of them hold spaces).
fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// A directory holding `notification.log` with `text`.
fn log_dir(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("notification.log"), text).expect("write log");
    dir
}

/// The hour log as a rotated set: the rotated file holds its first six lines, the current
/// file the rest.
fn rotated_hour_log() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = hour_log();
    let lines: Vec<&str> = log.lines().collect();
    let (old, new) = lines.split_at(6);
    let join = |lines: &[&str]| lines.iter().map(|l| format!("{l}\n")).collect::<String>();
    std::fs::write(dir.path().join("notification.log.2023-11-14"), join(old)).expect("write");
    std::fs::write(dir.path().join("notification.log"), join(new)).expect("write");
    dir
}

/// `herd report` over the hour log in `dir`, over the hour.
fn report(dir: &Path, args: &[&str]) -> Output {
    let mut all = vec!["report"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--log", "notification.log", "--from", FROM, "--to", TO]);
    run(herd(dir), &all)
}

fn close(actual: f64, expected: f64) -> bool {
    (actual - expected).abs() < 1e-9
}

fn parquet(bytes: Vec<u8>) -> DataFrame {
    ParquetReader::new(Cursor::new(bytes))
        .finish()
        .expect("valid Parquet")
}

fn frame_strings(frame: &DataFrame, column: &str) -> Vec<String> {
    let column = frame.column(column).expect("column");
    let values = column.str().expect("text column");
    (0..values.len())
        .map(|i| values.get(i).expect("no null").to_string())
        .collect()
}

fn frame_numbers(frame: &DataFrame, column: &str) -> Vec<f64> {
    let column = frame
        .column(column)
        .expect("column")
        .cast(&polars::prelude::DataType::Float64)
        .expect("numeric");
    let values = column.f64().expect("f64");
    (0..values.len())
        .map(|i| values.get(i).expect("no null"))
        .collect()
}

/// CSV output as a header and rows of cells (the reports' cells hold no commas or quotes).
fn csv(text: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut lines = text.lines();
    let header = lines
        .next()
        .expect("header")
        .split(',')
        .map(str::to_string)
        .collect();
    let rows = lines
        .map(|line| line.split(',').map(str::to_string).collect())
        .collect();
    (header, rows)
}

#[test]
fn connectivity_uptime_in_every_format() {
    let dir = log_dir(&hour_log());
    let path = dir.path();

    // CSV, parsed back.
    let out = report(path, &["connectivity", "--format", "csv"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (header, rows) = csv(&out.text());
    assert_eq!(
        header,
        [
            "id",
            "name",
            "sessions",
            "online_s",
            "uptime_pct",
            "connects",
            "disconnects",
            "peak_connects",
            "flapping"
        ]
    );
    let cell = |row: &[String], name: &str| {
        row[header.iter().position(|h| h == name).expect("column")].clone()
    };
    assert_eq!(rows.len(), 2, "one row per device");
    assert_eq!(cell(&rows[0], "id"), "lamp");
    assert_eq!(cell(&rows[0], "uptime_pct").parse::<f64>().ok(), Some(50.0));
    assert_eq!(cell(&rows[0], "online_s").parse::<f64>().ok(), Some(1800.0));
    assert_eq!(cell(&rows[0], "disconnects"), "1");
    assert_eq!(cell(&rows[1], "id"), "porch");
    assert_eq!(
        cell(&rows[1], "uptime_pct").parse::<f64>().ok(),
        Some(100.0)
    );
    assert_eq!(cell(&rows[1], "disconnects"), "0");

    // JSON: an array of row objects with typed values.
    let out = report(path, &["connectivity", "--format", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rows = out.json();
    let rows = rows.as_array().expect("array of rows");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["id"], "lamp");
    assert_eq!(rows[0]["uptime_pct"].as_f64(), Some(50.0));
    assert_eq!(rows[0]["flapping"], false);
    assert_eq!(rows[1]["id"], "porch");
    assert_eq!(rows[1]["uptime_pct"].as_f64(), Some(100.0));

    // Parquet on stdout (a pipe here), read back.
    let out = report(path, &["connectivity", "--format", "parquet"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let frame = parquet(out.stdout);
    assert_eq!(frame_strings(&frame, "id"), ["lamp", "porch"]);
    assert_eq!(frame_numbers(&frame, "uptime_pct"), [50.0, 100.0]);
    assert_eq!(frame_numbers(&frame, "sessions"), [1.0, 1.0]);

    // The human table: a header, a rule, one aligned line per device.
    let out = report(path, &["connectivity"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let text = out.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].starts_with("id "), "{text}");
    assert!(lines[1].starts_with("----"), "{text}");
    let lamp: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!((lamp[0], lamp[3]), ("lamp", "50"), "{text}");
    let columns: Vec<usize> = lines
        .iter()
        .map(|line| {
            line.find("uptime_pct")
                .or_else(|| line.find("50"))
                .unwrap_or(0)
        })
        .collect();
    assert_eq!(columns[0], columns[2], "aligned: {text}");
}

#[test]
fn usage_counts_switches_from_reported_on() {
    let dir = log_dir(&hour_log());
    let out = report(dir.path(), &["usage", "--format", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rows = out.json();
    assert_eq!(rows[0]["id"], "lamp");
    assert_eq!(rows[0]["switch_ons"], 2, "{rows}");
    assert_eq!(rows[0]["switch_offs"], 2, "{rows}");
    assert!(close(
        rows[0]["hours_on"].as_f64().expect("hours"),
        800.0 / 3600.0
    ));
    assert_eq!(rows[1]["id"], "porch");
    assert_eq!(
        rows[1]["switch_ons"], 1,
        "the first state seen is not a switch"
    );
    assert_eq!(rows[1]["switch_offs"], 0);
    assert!(close(
        rows[1]["hours_on"].as_f64().expect("hours"),
        600.0 / 3600.0
    ));

    // One device only.
    let out = report(
        dir.path(),
        &["usage", "--format", "json", "--device", "porch"],
    );
    let rows = out.json();
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{rows}");
    assert_eq!(rows[0]["id"], "porch");

    // The hour-of-day table: every switch happened in the 23:00 UTC hour.
    let out = report(
        dir.path(),
        &["usage", "--format", "json", "--table", "hours"],
    );
    let hours = out.json();
    let late = hours
        .as_array()
        .expect("rows")
        .iter()
        .find(|row| row["hour"] == 23)
        .expect("hour 23");
    assert_eq!(late["switch_ons"], 3, "{hours}");
}

#[test]
fn fleet_tables_top_and_the_whole_report_as_json() {
    let dir = log_dir(&hour_log());
    let out = report(dir.path(), &["fleet", "--format", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let summary = out.json();
    assert_eq!(summary[0]["devices_seen"], 2, "{summary}");
    assert_eq!(summary[0]["online_now"], 1, "porch: {summary}");
    assert_eq!(summary[0]["notifications"], 10, "{summary}");
    assert_eq!(summary[0]["unknown_events"], 1, "{summary}");
    assert_eq!(summary[0]["from"], FROM);

    let out = report(
        dir.path(),
        &words("fleet --format csv --table busiest --top 1"),
    );
    assert_eq!(out.text(), "id,name,notifications\nlamp,,7\n");

    let out = report(
        dir.path(),
        &words("fleet --format json --table all --bucket day"),
    );
    let document = out.json();
    assert_eq!(document["report"], "fleet");
    assert_eq!(document["from"].as_f64(), Some(BASE as f64));
    assert_eq!(document["stats"]["lines"], 11);
    assert_eq!(document["stats"]["unknown_events"], 1);
    let events = &document["tables"]["events"];
    assert_eq!(
        events[0],
        json!({"name": "rpc.out.Dash.Shadow.Update", "count": 7})
    );
    let buckets = document["tables"]["buckets"].as_array().expect("buckets");
    assert_eq!(buckets.len(), 1, "one day: {buckets:?}");
    assert_eq!(buckets[0]["bucket"], "2023-11-14T00:00:00Z");

    // Every table in the text formats: one section per table.
    let out = report(dir.path(), &["fleet", "--format", "csv", "--table", "all"]);
    let text = out.text();
    for table in ["# summary", "# events", "# busiest", "# buckets"] {
        assert!(text.lines().any(|l| l == table), "{table}: {text}");
    }
    let out = report(dir.path(), &["rpc", "--table", "all"]);
    assert!(
        out.text().contains("rpc methods") && out.text().contains("rpc buckets"),
        "{}",
        out.text()
    );
}

/// Herd's update engine over the hour (PROTOCOL §10.6):
/// - rollout `r1` (image `img-11`, version 1.1) completes: wave 0 updates lamp-1 in 60 s;
///   in wave 1 lamp-2 updates in 120 s and lamp-3 reverts. 2 of 3 succeeded; median 90 s,
///   p90 60 + 0.9 * 60 = 114 s; started at 200 s, completed at 600 s.
/// - rollout `r2` (`img-12`, 1.2) halts at 1200 s when lamp-4 fails writing, while lamp-5
///   is still sending; lamp-5 then succeeds in 190 s. 1 of 2 succeeded.
/// - lamp-6 fails a one-device push, which no rollout row shows.
fn rollout_log() -> String {
    let rollout = |offset: i64, id: &str, name: &str, state: &str, wave: u32, extra: Value| {
        let image = if id == "r1" { "img-11" } else { "img-12" };
        let mut data = json!({"total": 0, "pending": 0, "sending": 0, "rebooting": 0,
            "verifying": 0, "succeeded": 0, "failed": 0, "reverted": 0, "skipped": 0,
            "timed_out": 0, "state": state, "firmware": image, "wave": wave});
        for (key, value) in extra.as_object().expect("object") {
            data[key] = value.clone();
        }
        line(offset, id, name, data)
    };
    let device = |offset: i64, id: &str, name: &str, data: Value| line(offset, id, name, data);
    [
        rollout(
            100,
            "r1",
            "rollout.planned",
            "planned",
            0,
            json!({"total": 3, "pending": 3, "name": "porch lights 1.1"}),
        ),
        rollout(
            200,
            "r1",
            "rollout.started",
            "running",
            0,
            json!({"total": 3, "pending": 3}),
        ),
        rollout(
            200,
            "r1",
            "rollout.wave",
            "running",
            0,
            json!({"total": 3, "pending": 3, "devices": 1}),
        ),
        device(
            210,
            "lamp-1",
            "ota.begin",
            json!({"firmware": "img-11", "version": "1.1", "size": 1000, "rollout": "r1"}),
        ),
        device(
            270,
            "lamp-1",
            "ota.success",
            json!({"firmware": "img-11", "version": "1.1", "seconds": 60, "rollout": "r1"}),
        ),
        rollout(
            300,
            "r1",
            "rollout.wave",
            "running",
            1,
            json!({"total": 3, "pending": 2, "succeeded": 1, "devices": 2}),
        ),
        device(
            310,
            "lamp-2",
            "ota.begin",
            json!({"firmware": "img-11", "version": "1.1", "size": 1000, "rollout": "r1"}),
        ),
        device(
            311,
            "lamp-3",
            "ota.begin",
            json!({"firmware": "img-11", "version": "1.1", "size": 1000, "rollout": "r1"}),
        ),
        device(
            320,
            "lamp-2",
            "ota.progress",
            json!({"firmware": "img-11", "percent": 50}),
        ),
        device(
            430,
            "lamp-2",
            "ota.success",
            json!({"firmware": "img-11", "version": "1.1", "seconds": 120, "rollout": "r1"}),
        ),
        device(
            500,
            "lamp-3",
            "ota.revert",
            json!({"firmware": "img-11", "running_version": "1.0",
                   "message": "reverted: not committed", "rollout": "r1"}),
        ),
        rollout(
            600,
            "r1",
            "rollout.completed",
            "completed",
            1,
            json!({"total": 3, "succeeded": 2, "reverted": 1}),
        ),
        rollout(
            1000,
            "r2",
            "rollout.planned",
            "planned",
            0,
            json!({"total": 2, "pending": 2, "name": "porch lights 1.2"}),
        ),
        rollout(
            1100,
            "r2",
            "rollout.started",
            "running",
            0,
            json!({"total": 2, "pending": 2}),
        ),
        rollout(
            1100,
            "r2",
            "rollout.wave",
            "running",
            0,
            json!({"total": 2, "pending": 2, "devices": 2}),
        ),
        device(
            1110,
            "lamp-4",
            "ota.begin",
            json!({"firmware": "img-12", "version": "1.2", "size": 1000, "rollout": "r2"}),
        ),
        device(
            1111,
            "lamp-5",
            "ota.begin",
            json!({"firmware": "img-12", "version": "1.2", "size": 1000, "rollout": "r2"}),
        ),
        device(
            1200,
            "lamp-4",
            "ota.failure",
            json!({"firmware": "img-12", "stage": "write", "message": "chunk 3 refused",
                   "rollout": "r2"}),
        ),
        rollout(
            1200,
            "r2",
            "rollout.halted",
            "halted",
            0,
            json!({"total": 2, "sending": 1, "failed": 1,
                   "reason": "wave 0: 1 of 2 devices failed (50.0 %), the limit is 50 %"}),
        ),
        device(
            1301,
            "lamp-5",
            "ota.success",
            json!({"firmware": "img-12", "version": "1.2", "seconds": 190, "rollout": "r2"}),
        ),
        device(
            2000,
            "lamp-6",
            "ota.begin",
            json!({"firmware": "img-12", "version": "1.2", "size": 1000}),
        ),
        device(
            2100,
            "lamp-6",
            "ota.failure",
            json!({"firmware": "img-12", "stage": "end", "message": "image rejected"}),
        ),
    ]
    .concat()
}

#[test]
fn firmware_rollouts_as_csv() {
    let dir = log_dir(&rollout_log());
    let out = report(dir.path(), &words("firmware --table rollouts --format csv"));
    assert_eq!((out.code, out.stderr.as_str()), (0, ""));
    assert_eq!(
        out.text(),
        concat!(
            "id,name,firmware,fw_version,state,devices,succeeded,failed,reverted,timed_out,",
            "skipped,success_rate,median_update_s,p90_update_s,started,finished,duration_s,",
            "reason\n",
            "r1,porch lights 1.1,img-11,1.1,completed,3,2,0,1,0,0,0.6666666666666666,90,114,",
            "2023-11-14T23:03:20Z,2023-11-14T23:10:00Z,400,\n",
            "r2,porch lights 1.2,img-12,1.2,halted,2,1,1,0,0,0,0.5,190,190,",
            "2023-11-14T23:18:20Z,2023-11-14T23:20:00Z,100,",
            "\"wave 0: 1 of 2 devices failed (50.0 %), the limit is 50 %\"\n",
        )
    );

    let out = report(
        dir.path(),
        &words("firmware --table rollout_waves --format json"),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.json(),
        json!([
            {"rollout": "r1", "wave": 0, "devices": 1, "begun": 1, "succeeded": 1,
             "failed": 0, "reverted": 0, "success_rate": 1.0},
            {"rollout": "r1", "wave": 1, "devices": 2, "begun": 2, "succeeded": 1,
             "failed": 0, "reverted": 1, "success_rate": 0.5},
            {"rollout": "r2", "wave": 0, "devices": 2, "begun": 2, "succeeded": 1,
             "failed": 1, "reverted": 0, "success_rate": 0.5},
        ])
    );

    // Every table of the report, the engine's included.
    let out = report(dir.path(), &words("firmware --format csv --table all"));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let text = out.text();
    for table in [
        "# devices",
        "# versions",
        "# updates",
        "# rollouts",
        "# rollout_waves",
        "# revert_reasons",
    ] {
        assert!(text.lines().any(|l| l == table), "{table}: {text}");
    }
    assert!(
        text.contains("\n,failed,end,image rejected,1\n"),
        "the push's failure has no rollout: {text}"
    );
}

#[test]
fn ignored_lines_are_counted_on_stderr_and_stdout_stays_data() {
    let mut text = hour_log();
    text.push_str("not a notification\n");
    // A crash in the middle of a write: the last line has no newline.
    text.push_str(r#"{"ts":1700003000,"id":"lamp","name":"onl"#);
    let dir = log_dir(&text);
    let out = report(dir.path(), &["connectivity", "--format", "csv"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stderr.trim_end(),
        "herd: read 12 lines; ignored 1 torn, 1 invalid, 1 with an unknown event name"
    );
    let (_, rows) = csv(&out.text());
    assert_eq!(rows.len(), 2, "the figures are unchanged");
    assert_eq!(rows[0][4], "50");

    // Nothing ignored: nothing on stderr.
    let clean: String = hour_log()
        .lines()
        .filter(|l| !l.contains("custom.thing"))
        .map(|l| format!("{l}\n"))
        .collect();
    let dir = log_dir(&clean);
    let out = report(dir.path(), &["connectivity", "--format", "csv"]);
    assert_eq!((out.code, out.stderr.as_str()), (0, ""));
}

#[test]
fn out_writes_a_whole_file_or_none() {
    let dir = log_dir(&hour_log());
    let path = dir.path();

    let out = report(
        path,
        &words("connectivity --format parquet --out uptime.parquet"),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.is_empty(), "the data went to the file");
    let frame = parquet(std::fs::read(path.join("uptime.parquet")).expect("file"));
    assert_eq!(frame_numbers(&frame, "uptime_pct"), [50.0, 100.0]);

    let out = report(path, &["usage", "--format", "csv", "--out", "usage.csv"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let written = std::fs::read_to_string(path.join("usage.csv")).expect("file");
    assert!(
        written.starts_with("id,name,switch_ons,switch_offs,hours_on\nlamp,,2,2,"),
        "{written}"
    );

    // A failing report leaves the earlier file as it was and no temporary file behind.
    let names = || {
        let mut names: Vec<String> = std::fs::read_dir(path)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let before = names();
    let out = run(
        herd(path),
        &words("report usage --format csv --log missing.log --out usage.csv"),
    );
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert_eq!(
        std::fs::read_to_string(path.join("usage.csv")).expect("file"),
        written
    );
    let out = run(
        herd(path),
        &words("report usage --log missing.log --out new.csv"),
    );
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert_eq!(names(), before, "no new.csv, no temporary file");

    // A directory that does not exist cannot take the file.
    let out = report(path, &["usage", "--out", "nowhere/usage.csv"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.error_line().contains("nowhere/usage.csv"),
        "{}",
        out.stderr
    );
}

#[test]
fn the_parse_cache_serves_rotated_files_and_a_damaged_entry_is_rebuilt() {
    let dir = rotated_hour_log();
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let report = |extra: &[&str]| {
        let mut args = vec![
            "report", "usage", "--format", "csv", "--from", FROM, "--to", TO, "--log", &dir_arg,
        ];
        args.extend_from_slice(extra);
        let out = run(herd(dir.path()), &args);
        assert_eq!(out.code, 0, "{}", out.stderr);
        out.stdout
    };
    let cache = dir.path().join("report-cache");
    let first = report(&[]);
    let entries: Vec<_> = std::fs::read_dir(&cache)
        .expect("the cache was created")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(
        entries.len(),
        1,
        "only the rotated file is cached: {entries:?}"
    );
    assert_eq!(report(&[]), first, "served from the cache");
    // A damaged entry is ignored and rebuilt, never trusted.
    let mut bytes = std::fs::read(&entries[0]).expect("read entry");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&entries[0], &bytes).expect("damage entry");
    assert_eq!(report(&[]), first, "a damaged entry is rebuilt");
    std::fs::write(&entries[0], b"half").expect("truncate entry");
    assert_eq!(report(&[]), first, "a cut entry is rebuilt");
    let other = dir.path().join("other-cache");
    assert_eq!(report(&["--no-cache"]), first);
    assert_eq!(report(&["--cache", &other.to_string_lossy()]), first);
    assert!(other.is_dir(), "--cache names the directory");
    let unused = dir.path().join("unused-cache");
    report(&["--no-cache", "--cache", &unused.to_string_lossy()]);
    assert!(!unused.exists(), "--no-cache wins");
}

#[test]
fn a_directory_is_its_whole_rotated_set() {
    let dir = rotated_hour_log();
    std::fs::write(dir.path().join("unrelated.txt"), "not a log\n").expect("write");

    let line = format!("report connectivity --format json --from {FROM} --to {TO} --log");
    let mut args = words(&line);
    let out = run(herd(dir.path()), &args);
    assert_eq!(out.code, 2, "--log needs a value: {}", out.stderr);
    let dir_arg = dir.path().to_string_lossy().into_owned();
    args.push(&dir_arg);
    let out = run(herd(dir.path()), &args);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rows = out.json();
    assert_eq!(rows[0]["uptime_pct"].as_f64(), Some(50.0), "{rows}");

    // Files given one by one, in several --log flags and several values of one.
    let out = run(
        herd(dir.path()),
        &words(
            "report fleet --format json --log notification.log.2023-11-14 --log notification.log",
        ),
    );
    assert_eq!(out.json()[0]["notifications"], 10, "{}", out.stderr);
    let out = run(
        herd(dir.path()),
        &words("report fleet --format json --log notification.log.2023-11-14 notification.log"),
    );
    assert_eq!(out.json()[0]["notifications"], 10, "{}", out.stderr);
}

#[test]
fn the_log_comes_from_report_then_herd_then_the_profile() {
    let dir = log_dir(&hour_log());
    let path = dir.path();
    let config = path.join("console.toml");
    std::fs::write(
        &config,
        format!(
            "default_profile = \"prod\"\n[profiles.prod]\nserver = \"http://127.0.0.1:1\"\nread_only = true\nlog = \"{}\"\n",
            path.display()
        ),
    )
    .expect("write config");
    let with_profile = || {
        let mut command = herd(path);
        command.env("HERD_CONFIG", &config);
        command
    };
    // The read-only profile's log: reports only read, so a read-only profile runs them.
    let out = run(with_profile(), &["report", "fleet", "--format", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()[0]["devices_seen"], 2);

    // `herd --log` and HERD_NOTIFICATION_LOG replace the profile's log.
    let other = log_dir(&line(0, "solo", "online", Value::Null));
    let out = run(
        with_profile(),
        &[
            "--log",
            &other.path().to_string_lossy(),
            "report",
            "fleet",
            "--format",
            "json",
        ],
    );
    assert_eq!(out.json()[0]["devices_seen"], 1, "{}", out.stderr);
    let mut command = with_profile();
    command.env("HERD_NOTIFICATION_LOG", other.path());
    let out = run(command, &["report", "fleet", "--format", "json"]);
    assert_eq!(out.json()[0]["devices_seen"], 1, "{}", out.stderr);

    // `report --log` wins over both.
    let mut command = with_profile();
    command.env("HERD_NOTIFICATION_LOG", other.path());
    let out = run(
        command,
        &words("report fleet --format json --log notification.log"),
    );
    assert_eq!(out.json()[0]["devices_seen"], 2, "{}", out.stderr);
}

#[test]
fn ranges_relative_to_now() {
    // Online since half an hour ago: over the last hour, uptime is about 50 %.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let online = json!({"ts": now - 1800.0, "id": "lamp", "name": "online", "data": null});
    let dir = log_dir(&format!("{online}\n"));
    let out = run(
        herd(dir.path()),
        &words("report connectivity --format json --log notification.log --from -1h --to now"),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rows = out.json();
    let uptime = rows[0]["uptime_pct"].as_f64().expect("uptime");
    // The report starts a moment after the line was written.
    assert!((49.0..=51.0).contains(&uptime), "{rows}");
    let out = run(
        herd(dir.path()),
        &words("report connectivity --log notification.log --from -1x"),
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.error_line().contains("such as -24h"), "{}", out.stderr);
}

#[test]
fn bad_inputs_fail_with_their_exit_codes() {
    let dir = log_dir(&hour_log());
    let path = dir.path();
    for (args, code, says) in [
        (
            words("report uptime --log notification.log"),
            2,
            "unknown report \"uptime\"",
        ),
        (
            words("report fleet --log notification.log --from yesterday"),
            2,
            "--from: ",
        ),
        (
            words("report fleet --log notification.log --to 2023-13-01T00:00:00Z"),
            2,
            "--to: ",
        ),
        (
            words(&format!(
                "report fleet --log notification.log --from {TO} --to {FROM}"
            )),
            2,
            "must be before --to",
        ),
        (
            words("report fleet --log notification.log --format xml"),
            2,
            "unknown format \"xml\"",
        ),
        (
            words("report fleet --log notification.log --bucket week"),
            2,
            "unknown bucket",
        ),
        (
            words("report fleet --log notification.log --table devices"),
            2,
            "has no table \"devices\"",
        ),
        (
            words("report fleet --log notification.log --format parquet --table all"),
            2,
            "one table",
        ),
        (
            words("report fleet --log missing.log"),
            5,
            "no such log file or directory: missing.log",
        ),
        (
            words("report fleet --log notification.log --log missing-dir"),
            5,
            "missing-dir",
        ),
    ] {
        let out = run(herd(path), &args);
        assert_eq!(out.code, code, "{args:?}: {}", out.stderr);
        assert!(out.error_line().contains(says), "{args:?}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
    }
    // Clap's own usage errors keep exit 2 too.
    let out = run(herd(path), &["report"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    let out = run(herd(path), &["report", "fleet", "--top", "many"]);
    assert_eq!(out.code, 2, "{}", out.stderr);

    // The help names every report and its tables.
    let out = run(herd(path), &["report", "--help"]);
    let help = out.text();
    assert!(help.contains("connectivity  devices, buckets"), "{help}");
    let out = run(herd(path), &["--help"]);
    assert!(out.text().contains("no such log file or directory"));
}

#[test]
fn parquet_is_refused_on_a_terminal() {
    use portable_pty::{CommandBuilder, PtySize};
    let dir = log_dir(&hour_log());
    let pair = portable_pty::native_pty_system()
        .openpty(PtySize {
            rows: 24,
            cols: 200,
            pixel_width: 0,
            pixel_height: 0,
        })
        .expect("open a pty");
    let mut command = CommandBuilder::new(env!("CARGO_BIN_EXE_herd"));
    command.cwd(dir.path());
    command.env("HERD_CONFIG", dir.path().join("no-console.toml"));
    command.env_remove("HERD_NOTIFICATION_LOG");
    command.args([
        "report",
        "fleet",
        "--log",
        "notification.log",
        "--format",
        "parquet",
    ]);
    let mut child = pair.slave.spawn_command(command).expect("spawn herd");
    drop(pair.slave);
    let mut reader = pair.master.try_clone_reader().expect("reader");
    let reading = std::thread::spawn(move || {
        let mut screen = Vec::new();
        // The pty reports an error instead of end of file once herd is gone.
        let _ = std::io::Read::read_to_end(&mut reader, &mut screen);
        String::from_utf8_lossy(&screen).into_owned()
    });
    let status = child.wait().expect("herd exits");
    drop(pair.master);
    let screen = reading.join().expect("reader thread");
    assert_eq!(status.exit_code(), 2, "{screen}");
    assert!(
        screen.contains("herd: refusing to write Parquet to a terminal"),
        "{screen}"
    );
}

async fn wait_for(stream: &mut NotifyStream, mut wanted: impl FnMut(&NotifyEvent) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("the notification arrives")
            .expect("stream open");
        if wanted(&event) {
            return;
        }
    }
}

fn is(event: &NotifyEvent, id: &str, name: &str) -> bool {
    matches!(event, NotifyEvent::Notification(n) if n.id == id && n.name == name)
}

/// `herd report ...` against `server` with `key`, flags rather than variables, as the
/// issue's example has it.
async fn report_from(server_url: &str, key: &str, dir: &Path, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::from(herd(dir));
    command
        .args(["report"])
        .args(args)
        .args(["--server", server_url, "--api-key", key])
        .kill_on_drop(true);
    let output = tokio::time::timeout(WAIT, command.output())
        .await
        .expect("herd finishes")
        .expect("herd runs");
    Output {
        code: output.status.code().unwrap_or(-1),
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[tokio::test]
async fn reports_over_the_servers_log() {
    let server = TestServer::start().await;
    let admin = server.client.clone();
    // Outlives the server's own directory, for the last run after the server stopped.
    let cwd = tempfile::tempdir().expect("tempdir");
    let dir = cwd.path();
    let mut stream = admin.notify();
    wait_for(&mut stream, |e| matches!(e, NotifyEvent::Connected)).await;

    // The admin's light, online and switched on, off and on again through its shadow.
    let (lamp, token) = server.create_device("lamp").await;
    let device = SimDevice::connect(&server.ws_base, &token).await;
    wait_for(&mut stream, |e| is(e, &lamp, "online")).await;
    for on in [true, false, true] {
        admin
            .update_shadow(&lamp, &json!({"state": {"desired": {"on": on}}}))
            .await
            .expect("shadow update");
        wait_for(&mut stream, |e| {
            matches!(e, NotifyEvent::Notification(n)
                if n.id == lamp
                    && n.name == "rpc.out.Dash.Shadow.Update"
                    && n.data["state"]["reported"]["on"] == on)
        })
        .await;
    }
    // Bob's device, never connected.
    let bob = admin.add_user("bob", "pw").await.expect("add bob");
    let as_bob = Client::new(&server.url(), Some(&bob.api_key)).expect("client");
    let desk = as_bob
        .create_device(&NewDevice {
            name: Some("desk".into()),
            id: None,
        })
        .await
        .expect("bob's device")
        .id;
    wait_for(&mut stream, |e| is(e, &desk, "created")).await;
    let logged = herd_testkit::visible_log_lines(&admin).await;

    let url = server.url();
    let out = report_from(&url, &server.admin_key, dir, &["fleet", "--format", "json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let summary = &out.json()[0];
    assert_eq!(summary["devices_seen"], 2, "{summary}");
    assert_eq!(summary["online_now"], 1, "the lamp: {summary}");
    // Every line is read; the server's start marker (§7) names no device.
    assert_eq!(summary["lines"], json!(logged), "{summary}");
    assert_eq!(
        summary["notifications"].as_u64().unwrap() + summary["unknown_events"].as_u64().unwrap(),
        logged as u64,
        "{summary}"
    );
    assert_eq!(summary["torn_lines"], 0);

    let out = report_from(
        &url,
        &server.admin_key,
        dir,
        &["usage", "--format", "csv", "--device", &lamp],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (_, rows) = csv(&out.text());
    assert_eq!(rows.len(), 1, "{}", out.text());
    // Reported on, off, on: the first state is no switch, then one off and one on.
    assert_eq!(
        (
            rows[0][0].as_str(),
            rows[0][1].as_str(),
            rows[0][2].as_str(),
            rows[0][3].as_str()
        ),
        (lamp.as_str(), "lamp", "1", "1"),
        "{}",
        out.text()
    );
    // The device by its name, as the log last named it: the same row.
    let by_name = report_from(
        &url,
        &server.admin_key,
        dir,
        &["usage", "--format", "csv", "--device", "lamp"],
    )
    .await;
    assert_eq!(by_name.code, 0, "{}", by_name.stderr);
    assert_eq!(by_name.text(), out.text());

    // Bob's key sees only Bob's device's lines.
    let out = report_from(&url, &bob.api_key, dir, &["fleet", "--format", "json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let summary = &out.json()[0];
    assert_eq!(summary["devices_seen"], 1, "{summary}");
    assert_eq!(summary["online_now"], 0, "{summary}");
    let out = report_from(
        &url,
        &bob.api_key,
        dir,
        &["fleet", "--format", "csv", "--table", "busiest"],
    )
    .await;
    assert_eq!(
        out.text(),
        format!("id,name,notifications\n{desk},desk,1\n")
    );

    // A key the server refuses: exit 4; nothing on stdout.
    let out = report_from(&url, "0123456789abcdef01234567", dir, &["fleet"]).await;
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.error_line().starts_with("herd: 401"), "{}", out.stderr);
    assert!(out.stdout.is_empty());

    drop(device);
    server.shutdown().await;

    // Nobody listening: exit 3.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let out = report_from(
        &format!("http://{closed}"),
        "0123456789abcdef01234567",
        dir,
        &["fleet"],
    )
    .await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.error_line().contains("cannot reach the server"),
        "{}",
        out.stderr
    );
}

/// `herd query` and `herd report`, both the real binary over the same generated log file
/// (a rotated set, so the cache serves the second run): switch-ons, hours on and sessions
/// per device agree.
#[cfg(feature = "query")]
#[test]
fn query_agrees_with_the_reports_on_a_generated_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = herd_analytics::generate::Config {
        seed: 11,
        devices: 30,
        bytes: 3 << 20,
        ..Default::default()
    };
    let mut bytes = Vec::new();
    herd_analytics::generate::generate(&config, &mut bytes).expect("generate");
    // Cut at a line boundary into a rotated file and the current one.
    let half = bytes.len() / 2;
    let cut = half
        + bytes[half..]
            .iter()
            .position(|&b| b == b'\n')
            .expect("newline")
        + 1;
    std::fs::write(
        dir.path().join("notification.log.2026-01-01"),
        &bytes[..cut],
    )
    .expect("write");
    std::fs::write(dir.path().join("notification.log"), &bytes[cut..]).expect("write");
    let path = dir.path();
    let json_of = |args: &[&str]| {
        let out = run(herd(path), args);
        assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
        out.json()
    };
    let by_id = |rows: &Value, column: &str| -> std::collections::BTreeMap<String, f64> {
        rows.as_array()
            .expect("rows")
            .iter()
            .map(|row| {
                (
                    row["id"].as_str().expect("id").to_string(),
                    row[column].as_f64().unwrap_or(0.0),
                )
            })
            .filter(|(_, value)| *value != 0.0)
            .collect()
    };
    let agree = |ours: &Value, theirs: &Value, column: &str| {
        let (ours, theirs) = (by_id(ours, column), by_id(theirs, column));
        assert!(!ours.is_empty(), "{column}: the log should have some");
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            theirs.keys().collect::<Vec<_>>(),
            "{column}"
        );
        for (id, x) in &ours {
            assert!(
                (x - theirs[id]).abs() < 1e-6,
                "{column} of {id}: {x} vs {}",
                theirs[id]
            );
        }
    };
    for _ in 0..2 {
        let usage = json_of(&words("report usage --format json --log ."));
        let switches = json_of(&[
            "query",
            "SELECT id, SUM(CASE WHEN \"on\" THEN 1 ELSE 0 END) AS switch_ons FROM switches \
             GROUP BY id",
            "--format",
            "json",
            "--log",
            ".",
        ]);
        agree(&switches, &usage, "switch_ons");
        let hours = json_of(&[
            "query",
            "SELECT id, SUM(seconds) / 3600.0 AS hours_on FROM on_periods GROUP BY id",
            "--format",
            "json",
            "--log",
            ".",
        ]);
        agree(&hours, &usage, "hours_on");
        let connectivity = json_of(&words("report connectivity --format json --log ."));
        let sessions = json_of(&[
            "query",
            "SELECT id, COUNT(*) AS sessions, SUM(seconds) AS online_s FROM sessions GROUP BY id",
            "--format",
            "json",
            "--log",
            ".",
        ]);
        agree(&sessions, &connectivity, "sessions");
        agree(&sessions, &connectivity, "online_s");
    }
    assert!(
        path.join("report-cache")
            .read_dir()
            .expect("cache")
            .next()
            .is_some(),
        "the rotated file was cached"
    );
}

/// `herd query`: SQL over the log's tables agrees with `herd report`, in every format.
#[cfg(feature = "query")]
#[test]
fn query_agrees_with_the_usage_report() {
    let dir = log_dir(&hour_log());
    let path = dir.path();
    let query = |args: &[&str]| {
        let mut all = vec!["query"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--log", "notification.log"]);
        run(herd(path), &all)
    };
    let out = query(&[
        "SELECT id, SUM(CASE WHEN \"on\" THEN 1 ELSE 0 END) AS switch_ons FROM switches \
         GROUP BY id ORDER BY id",
        "--format",
        "csv",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // lamp: off, on, off, on, off: two switch-ons; porch: off, on: one.
    assert_eq!(out.text(), "id,switch_ons\nlamp,2\nporch,1\n");
    let report = run(
        herd(path),
        &words("report usage --format csv --log notification.log"),
    );
    let (header, rows) = csv(&report.text());
    let ons = header
        .iter()
        .position(|h| h == "switch_ons")
        .expect("column");
    assert_eq!(
        rows.iter()
            .map(|r| (r[0].as_str(), r[ons].as_str()))
            .collect::<Vec<_>>(),
        [("lamp", "2"), ("porch", "1")]
    );

    let out = query(&[
        "SELECT id, COUNT(*) AS sessions FROM sessions GROUP BY id ORDER BY id",
        "--format",
        "json",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.json(),
        serde_json::json!([{"id": "lamp", "sessions": 1}, {"id": "porch", "sessions": 1}])
    );

    // A query Polars refuses is a usage error that says why; the tables are listed.
    let out = query(&["SELECT * FROM nowhere"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("the query failed"), "{}", out.stderr);
    let out = run(herd(path), &["query", "--tables"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.text().contains("switches"), "{}", out.text());
}
