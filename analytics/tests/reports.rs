//! Every report on small hand-written logs, against values computed by hand (PROTOCOL §5,
//! §7). Times are offsets in seconds from `T`, a UTC midnight, so hour buckets and hours of
//! day are offset hours.

#![cfg(feature = "tables")]

use std::path::{Path, PathBuf};

use herd_analytics::{
    compute, json_rows, run, Bucket, DataFrame, Follower, Format, Log, Need, Progress, Report,
    ReportOutput, ReportRequest,
};
use serde_json::{json, Value};

/// 2023-11-15T00:00:00Z.
const T: f64 = 1_700_006_400.0;

fn line(offset: f64, id: &str, name: &str, data: Value) -> String {
    format!(
        "{}\n",
        json!({"ts": T + offset, "id": id, "name": name, "data": data})
    )
}

fn updated(offset: f64, id: &str, reported: Value, info: Value) -> String {
    line(
        offset,
        id,
        "updated",
        json!({"id": id, "name": id, "online": true, "info": info,
               "shadow": {"state": {"desired": {}, "reported": reported, "delta": {}},
                          "metadata": {}, "tags": {}, "version": 3, "timestamp": T + offset}}),
    )
}

fn shadow_update(offset: f64, id: &str, reported: Value) -> String {
    line(
        offset,
        id,
        "rpc.out.Dash.Shadow.Update",
        json!({"state": {"reported": reported}}),
    )
}

fn request(report: Report, logs: &[PathBuf]) -> ReportRequest {
    let mut request = ReportRequest::new(report, logs.to_vec());
    request.from = Some(T);
    request.to = Some(T + 14_400.0);
    request
}

fn report(report: Report, logs: &[PathBuf]) -> ReportOutput {
    run(&request(report, logs), &|_| {}).expect("report runs")
}

/// Compares a table with expected rows; floats within 1e-9.
fn assert_rows(frame: &DataFrame, expected: Value) {
    let actual = json_rows(frame).expect("rows");
    assert!(
        close(&actual, &expected),
        "\nactual:   {actual}\nexpected: {expected}"
    );
}

fn close(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => (x - y).abs() < 1e-9,
            _ => x == y,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| close(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| close(v, w)))
        }
        _ => a == b,
    }
}

/// The connectivity scenario, split over a rotated set whose current file ends in a torn
/// line. Devices: `a` has a closed session, lines out of order, and a session open at the
/// end of the log; `b` came online before the range; `c` was created and never online;
/// `d` flaps; `e` only has an event name nobody knows.
fn connectivity_log(dir: &Path) -> Vec<PathBuf> {
    let mut first = String::new();
    first += &line(-1800.0, "b", "online", Value::Null);
    first += &line(0.0, "a", "online", Value::Null);
    first += &line(
        100.0,
        "c",
        "created",
        json!({"id": "c", "name": "c", "online": false}),
    );
    for i in 0..5 {
        let at = 1000.0 + 120.0 * f64::from(i);
        first += &line(at, "d", "online", Value::Null);
        first += &line(at + 60.0, "d", "offline", Value::Null);
    }
    first += &line(1800.0, "b", "offline", Value::Null);
    let mut second = String::new();
    second += &line(2000.0, "e", "mystery.event", json!(1));
    // Out of order: the server's clock stepped, or files were merged.
    second += &line(7200.0, "a", "online", Value::Null);
    second += &line(3600.0, "a", "offline", Value::Null);
    // A crash cut the last line short; readers must not take it.
    second += r#"{"ts":1700017200,"id":"a","name":"offline","da"#;
    std::fs::write(dir.join("notification.log.2023-11-15"), first).expect("write");
    std::fs::write(dir.join("notification.log"), second).expect("write");
    vec![dir.to_path_buf()]
}

#[test]
fn connectivity_over_a_rotated_set() {
    let dir = tempfile::tempdir().expect("temp dir");
    let logs = connectivity_log(dir.path());
    let output = report(Report::Connectivity, &logs);
    assert_rows(
        output.main(),
        json!([
            {"id": "a", "name": "", "sessions": 2, "online_s": 10800.0, "uptime_pct": 75.0, "connects": 2,
             "disconnects": 1, "peak_connects": 1, "flapping": false},
            {"id": "b", "name": "", "sessions": 1, "online_s": 1800.0, "uptime_pct": 12.5, "connects": 0,
             "disconnects": 1, "peak_connects": 0, "flapping": false},
            {"id": "c", "name": "c", "sessions": 0, "online_s": 0.0, "uptime_pct": 0.0, "connects": 0,
             "disconnects": 0, "peak_connects": 0, "flapping": false},
            {"id": "d", "name": "", "sessions": 5, "online_s": 300.0, "uptime_pct": 300.0 / 144.0,
             "connects": 5, "disconnects": 5, "peak_connects": 5, "flapping": true},
        ]),
    );
    assert_rows(
        output.table("buckets").expect("buckets"),
        json!([
            {"bucket": "2023-11-15T00:00:00Z", "devices_online": 3, "online_hours": 5700.0 / 3600.0,
             "connects": 6, "disconnects": 6},
            {"bucket": "2023-11-15T01:00:00Z", "devices_online": 0, "online_hours": 0.0,
             "connects": 0, "disconnects": 1},
            {"bucket": "2023-11-15T02:00:00Z", "devices_online": 1, "online_hours": 1.0,
             "connects": 1, "disconnects": 0},
            {"bucket": "2023-11-15T03:00:00Z", "devices_online": 1, "online_hours": 1.0,
             "connects": 0, "disconnects": 0},
        ]),
    );
    let stats = output.stats;
    assert_eq!(stats.files, 2);
    assert_eq!(stats.lines, 17);
    assert_eq!(stats.torn_lines, 1);
    assert_eq!(stats.invalid_lines, 0);
    assert_eq!(stats.unknown_events, 1);
}

/// PROTOCOL §7: the server appends `server.started` when it starts, so a session that a
/// crash left open (no `offline`) ends there.
#[test]
fn a_restart_closes_open_sessions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let started = protocol::notification::SERVER_STARTED;
    let mut text = String::new();
    text += &line(0.0, "a", "online", Value::Null);
    text += &line(600.0, "b", "online", Value::Null);
    text += &line(1200.0, "b", "offline", Value::Null);
    // The server crashed at some point after 1800 s and was started again at 5400 s.
    text += &line(1800.0, "a", "rpc.out.Log", json!({"msg": "still here"}));
    text += &line(5400.0, "", started, Value::Null);
    // b comes back after the restart; its new session is its own.
    text += &line(5500.0, "b", "online", Value::Null);
    // A late offline for a, from before the restart's point of view, changes nothing.
    text += &line(6000.0, "a", "offline", Value::Null);
    let path = dir.path().join("notification.log");
    std::fs::write(&path, text).expect("write");
    let logs = [path];
    let output = report(Report::Connectivity, &logs);
    assert_rows(
        output.main(),
        json!([
            {"id": "a", "name": "", "sessions": 1, "online_s": 5400.0, "uptime_pct": 37.5,
             "connects": 1, "disconnects": 0, "peak_connects": 1, "flapping": false},
            {"id": "b", "name": "", "sessions": 2, "online_s": 600.0 + 8900.0,
             "uptime_pct": 100.0 * 9500.0 / 14_400.0, "connects": 2, "disconnects": 1,
             "peak_connects": 1, "flapping": false},
        ]),
    );
    let buckets = json_rows(output.table("buckets").expect("buckets")).expect("rows");
    // Hour 1 (3600-7200 s): a until 5400, b from 5500.
    assert!(close(
        &buckets[1]["online_hours"],
        &json!((1800.0 + 1700.0) / 3600.0)
    ));
    // The restart is no device, and a is not online at the end.
    let fleet = json_rows(report(Report::Fleet, &logs).main()).expect("rows")[0].clone();
    assert_eq!(fleet["devices_seen"], json!(2));
    assert_eq!(fleet["online_now"], json!(1));
    assert_eq!(fleet["unknown_events"], json!(0));
}

#[test]
fn connectivity_range_end_cuts_open_sessions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let logs = connectivity_log(dir.path());
    let mut request = request(Report::Connectivity, &logs);
    request.to = Some(T + 9000.0);
    request.device = Some("a".into());
    let output = run(&request, &|_| {}).expect("report");
    assert_rows(
        output.main(),
        json!([{"id": "a", "name": "", "sessions": 2, "online_s": 5400.0, "uptime_pct": 60.0,
                "connects": 2, "disconnects": 1, "peak_connects": 1, "flapping": false}]),
    );
}

#[test]
fn connectivity_defaults_to_the_logs_own_range() {
    let dir = tempfile::tempdir().expect("temp dir");
    let logs = connectivity_log(dir.path());
    let mut request = ReportRequest::new(Report::Connectivity, logs);
    request.bucket = Bucket::Day;
    let output = run(&request, &|_| {}).expect("report");
    // From b's first online (T-1800) to the last complete line (T+7200).
    assert_eq!(output.from, T - 1800.0);
    assert_eq!(output.to, T + 7200.0);
    let b = json_rows(output.main()).expect("rows")[1].clone();
    assert_eq!(b["online_s"], json!(3600.0));
    assert_eq!(b["connects"], json!(1));
    let buckets = json_rows(output.table("buckets").expect("buckets")).expect("rows");
    assert_eq!(buckets.as_array().map(Vec::len), Some(2));
}

#[test]
fn fleet_summary_events_and_busiest() {
    let dir = tempfile::tempdir().expect("temp dir");
    let logs = connectivity_log(dir.path());
    let output = report(Report::Fleet, &logs);
    assert_rows(
        output.table("summary").expect("summary"),
        json!([{"from": "2023-11-15T00:00:00Z", "to": "2023-11-15T04:00:00Z",
                "devices_seen": 4, "online_now": 1, "notifications": 15, "lines": 17,
                "torn_lines": 1, "invalid_lines": 0, "unknown_events": 1}]),
    );
    assert_rows(
        output.table("events").expect("events"),
        json!([{"name": "offline", "count": 7}, {"name": "online", "count": 7},
               {"name": "created", "count": 1}]),
    );
    assert_rows(
        output.table("busiest").expect("busiest"),
        json!([{"id": "d", "name": "", "notifications": 10}, {"id": "a", "name": "", "notifications": 3},
               {"id": "b", "name": "", "notifications": 1}, {"id": "c", "name": "c", "notifications": 1}]),
    );
    assert_rows(
        output.table("buckets").expect("buckets"),
        json!([
            {"bucket": "2023-11-15T00:00:00Z", "notifications": 13, "devices": 4},
            {"bucket": "2023-11-15T01:00:00Z", "notifications": 1, "devices": 1},
            {"bucket": "2023-11-15T02:00:00Z", "notifications": 1, "devices": 1},
            {"bucket": "2023-11-15T03:00:00Z", "notifications": 0, "devices": 0},
        ]),
    );
}

#[test]
fn fleet_for_an_unknown_device_is_empty() {
    let dir = tempfile::tempdir().expect("temp dir");
    let logs = connectivity_log(dir.path());
    let mut request = request(Report::Fleet, &logs);
    request.device = Some("nobody".into());
    request.top = 2;
    let output = run(&request, &|_| {}).expect("report");
    let summary = &json_rows(output.main()).expect("rows")[0];
    assert_eq!(summary["devices_seen"], json!(0));
    assert_eq!(summary["notifications"], json!(0));
    assert_eq!(output.table("busiest").map(DataFrame::height), Some(0));
}

/// `l1` switches by button and from the cloud and is on at the end; `l2` was on before the
/// range and is deleted while on; `l3` never reports its light.
fn usage_log(dir: &Path) -> Vec<PathBuf> {
    let mut text = String::new();
    text += &updated(-3600.0, "l2", json!({"on": true}), json!({}));
    text += &updated(0.0, "l1", json!({"on": false}), json!({}));
    text += &line(10.0, "l3", "online", Value::Null);
    text += &shadow_update(600.0, "l1", json!({"on": true}));
    text += &updated(610.0, "l1", json!({"on": true}), json!({}));
    text += &shadow_update(1800.0, "l2", json!({"on": false}));
    text += &shadow_update(1900.0, "l2", json!({"on": true}));
    text += &line(2000.0, "l2", "deleted", json!({"id": "l2"}));
    text += &shadow_update(4200.0, "l1", json!({"on": false}));
    text += &shadow_update(4300.0, "l1", json!({"on": false, "stats": {"ram_free": 1}}));
    text += &line(
        5000.0,
        "l1",
        "rpc.in.Shadow.Delta",
        json!({"state": {"on": true}}),
    );
    text += &updated(9000.0, "l1", json!({"on": true}), json!({}));
    let path = dir.join("usage.log");
    std::fs::write(&path, text).expect("write");
    vec![path]
}

#[test]
fn usage_switches_and_hours_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let logs = usage_log(dir.path());
    let output = report(Report::Usage, &logs);
    assert_rows(
        output.main(),
        json!([
            {"id": "l1", "name": "l1", "switch_ons": 2, "switch_offs": 1, "hours_on": 2.5},
            {"id": "l2", "name": "l2", "switch_ons": 1, "switch_offs": 1, "hours_on": 1900.0 / 3600.0},
            {"id": "l3", "name": "", "switch_ons": 0, "switch_offs": 0, "hours_on": 0.0},
        ]),
    );
    let hours = json_rows(output.table("hours").expect("hours")).expect("rows");
    let hours = hours.as_array().expect("array");
    assert_eq!(hours.len(), 24);
    assert!(close(
        &Value::Array(hours[..5].to_vec()),
        &json!([
            {"hour": 0, "switch_ons": 2, "switch_offs": 1, "hours_on": 4900.0 / 3600.0},
            {"hour": 1, "switch_ons": 0, "switch_offs": 1, "hours_on": 600.0 / 3600.0},
            {"hour": 2, "switch_ons": 1, "switch_offs": 0, "hours_on": 0.5},
            {"hour": 3, "switch_ons": 0, "switch_offs": 0, "hours_on": 1.0},
            {"hour": 4, "switch_ons": 0, "switch_offs": 0, "hours_on": 0.0},
        ])
    ));
    assert_rows(
        output.table("buckets").expect("buckets"),
        json!([
            {"bucket": "2023-11-15T00:00:00Z", "switch_ons": 2, "switch_offs": 1,
             "hours_on": 4900.0 / 3600.0, "devices_on": 2},
            {"bucket": "2023-11-15T01:00:00Z", "switch_ons": 0, "switch_offs": 1,
             "hours_on": 600.0 / 3600.0, "devices_on": 1},
            {"bucket": "2023-11-15T02:00:00Z", "switch_ons": 1, "switch_offs": 0,
             "hours_on": 0.5, "devices_on": 1},
            {"bucket": "2023-11-15T03:00:00Z", "switch_ons": 0, "switch_offs": 0,
             "hours_on": 1.0, "devices_on": 1},
        ]),
    );
}

fn ota(status: u8, fw: &str, message: &str) -> Value {
    json!({"ota": {"app": "smart-light", "fw_version": fw, "status": status, "message": message}})
}

/// `f1` goes through a committed update, a reverted one, a failed one started by Herd's
/// engine, and one still running; `f2` changes version with no attempt seen (the engine's
/// success names the version the shadow already shows); `f3` never says its version; `f4`
/// is deleted early.
fn firmware_log(dir: &Path) -> Vec<PathBuf> {
    let mut text = String::new();
    text += &updated(-100.0, "f4", json!({}), json!({"fw_version": "1.0"}));
    text += &updated(0.0, "f1", ota(0, "1.0", ""), json!({"fw_version": "1.0"}));
    text += &updated(0.0, "f2", json!({"on": true}), json!({"fw_version": "2.0"}));
    text += &line(5.0, "f3", "online", Value::Null);
    text += &shadow_update(100.0, "f1", ota(1, "1.0", "receiving"));
    text += &shadow_update(200.0, "f1", ota(1, "1.0", "receiving"));
    text += &shadow_update(300.0, "f1", ota(3, "1.0", "staged; rebooting"));
    text += &updated(
        400.0,
        "f1",
        ota(3, "1.1", "committed"),
        json!({"fw_version": "1.1"}),
    );
    text += &line(3000.0, "f4", "deleted", json!({"id": "f4"}));
    text += &shadow_update(5000.0, "f1", ota(1, "1.1", "receiving"));
    text += &shadow_update(5100.0, "f1", ota(3, "1.1", "staged; rebooting"));
    text += &shadow_update(5200.0, "f1", ota(2, "1.1", "reverted: not committed"));
    text += &updated(
        7300.0,
        "f2",
        ota(0, "2.1", ""),
        json!({"fw_version": "2.0"}),
    );
    text += &line(
        7300.0,
        "f2",
        "ota.success",
        json!({"firmware": "img-2.1", "version": "2.1", "seconds": 30}),
    );
    text += &line(
        8000.0,
        "f1",
        "ota.begin",
        json!({"firmware": "img-1.2", "version": "1.2", "size": 4096}),
    );
    text += &shadow_update(8100.0, "f1", ota(1, "1.1", "receiving"));
    text += &shadow_update(8200.0, "f1", ota(2, "1.1", "timed out"));
    text += &shadow_update(12000.0, "f1", ota(1, "1.1", "receiving"));
    let path = dir.join("firmware.log");
    std::fs::write(&path, text).expect("write");
    vec![path]
}

#[test]
fn firmware_versions_and_attempts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let logs = firmware_log(dir.path());
    let output = report(Report::Firmware, &logs);
    assert_rows(
        output.main(),
        json!([
            {"id": "f1", "name": "f1", "fw_version": "1.1", "ota_attempts": 4, "ota_successes": 1,
             "ota_failures": 1, "ota_reverts": 1, "ota_in_progress": 1},
            {"id": "f2", "name": "f2", "fw_version": "2.1", "ota_attempts": 0, "ota_successes": 0,
             "ota_failures": 0, "ota_reverts": 0, "ota_in_progress": 0},
            {"id": "f3", "name": "", "fw_version": null, "ota_attempts": 0, "ota_successes": 0,
             "ota_failures": 0, "ota_reverts": 0, "ota_in_progress": 0},
            {"id": "f4", "name": "f4", "fw_version": null, "ota_attempts": 0, "ota_successes": 0,
             "ota_failures": 0, "ota_reverts": 0, "ota_in_progress": 0},
        ]),
    );
    assert_rows(
        output.table("versions").expect("versions"),
        json!([
            {"bucket": "2023-11-15T00:00:00Z", "fw_version": "1.1", "devices": 1},
            {"bucket": "2023-11-15T00:00:00Z", "fw_version": "2.0", "devices": 1},
            {"bucket": "2023-11-15T01:00:00Z", "fw_version": "1.1", "devices": 1},
            {"bucket": "2023-11-15T01:00:00Z", "fw_version": "2.0", "devices": 1},
            {"bucket": "2023-11-15T02:00:00Z", "fw_version": "1.1", "devices": 1},
            {"bucket": "2023-11-15T02:00:00Z", "fw_version": "2.1", "devices": 1},
            {"bucket": "2023-11-15T03:00:00Z", "fw_version": "1.1", "devices": 1},
            {"bucket": "2023-11-15T03:00:00Z", "fw_version": "2.1", "devices": 1},
        ]),
    );
    // The engine's view: a success for 2.1, a begin for 1.2 that has no outcome yet.
    assert_rows(
        output.table("updates").expect("updates"),
        json!([
            {"fw_version": "1.1", "begun": 0, "succeeded": 0, "failed": 0, "reverted": 0,
             "success_rate": null, "median_update_s": null, "p90_update_s": null,
             "devices_running": 1},
            {"fw_version": "1.2", "begun": 1, "succeeded": 0, "failed": 0, "reverted": 0,
             "success_rate": null, "median_update_s": null, "p90_update_s": null,
             "devices_running": 0},
            {"fw_version": "2.1", "begun": 0, "succeeded": 1, "failed": 0, "reverted": 0,
             "success_rate": 1.0, "median_update_s": 30.0, "p90_update_s": 30.0,
             "devices_running": 1},
        ]),
    );
    for table in ["rollouts", "rollout_waves", "revert_reasons"] {
        assert_eq!(output.table(table).expect(table).height(), 0, "{table}");
    }
}

/// Herd's update engine at work (PROTOCOL §10.6). Every device runs 1.0 at first. Images:
/// `fw-a` is 2.0, `fw-b` is 1.5.
/// - Rollout `r1` ("lights 2.0") over d1-d6 completes in two waves: wave 0 (d1, d2)
///   succeeds in 100 s and 200 s; in wave 1, d3 and d6 succeed in 300 s and 400 s, d4
///   reverts and d5 fails writing.
/// - Rollout `r2` halts in its wave 0 (d7-d10) after d7 fails writing and d8 times out;
///   d9 (still sending) then fails writing and d10 (verifying) succeeds in 590 s, after
///   the halt, which the counters of the halt event do not show yet. Its wave 1 (d13,
///   d14) never starts.
/// - One-device pushes: d11 fails `OTA.End` with `fw-b`, then succeeds in 50 s; d12
///   reverts `fw-a`.
/// - Two events under guessed names (unknown), and a torn last line.
fn engine_log(dir: &Path) -> Vec<PathBuf> {
    let counters = |state: &str, wave: u32, extra: Value| {
        let mut data = json!({"total": 6, "pending": 0, "sending": 0, "rebooting": 0,
            "verifying": 0, "succeeded": 0, "failed": 0, "reverted": 0, "skipped": 0,
            "timed_out": 0, "state": state, "firmware": "fw-a", "wave": wave});
        for (key, value) in extra.as_object().expect("object") {
            data[key] = value.clone();
        }
        data
    };
    let begin = |offset: f64, id: &str, rollout: Option<&str>| {
        let mut data = json!({"firmware": "fw-a", "version": "2.0", "size": 1000});
        if let Some(rollout) = rollout {
            data["rollout"] = json!(rollout);
        }
        line(offset, id, "ota.begin", data)
    };
    let success = |offset: f64, id: &str, seconds: f64, rollout: &str| {
        line(
            offset,
            id,
            "ota.success",
            json!({"firmware": "fw-a", "version": "2.0", "seconds": seconds, "rollout": rollout}),
        )
    };
    let failure = |offset: f64, id: &str, stage: &str, message: &str, rollout: &str| {
        line(
            offset,
            id,
            "ota.failure",
            json!({"firmware": "fw-a", "stage": stage, "message": message, "rollout": rollout}),
        )
    };
    let reverted = |offset: f64, id: &str, rollout: Option<&str>| {
        let mut data = json!({"firmware": "fw-a", "running_version": "1.0",
                              "message": "reverted: not committed"});
        if let Some(rollout) = rollout {
            data["rollout"] = json!(rollout);
        }
        line(offset, id, "ota.revert", data)
    };
    let mut text = String::new();
    for i in 1..=14 {
        let id = format!("d{i}");
        text += &updated(0.0, &id, json!({}), json!({"fw_version": "1.0"}));
    }
    // r1: two waves, completed.
    text += &line(
        100.0,
        "r1",
        "rollout.planned",
        counters("planned", 0, json!({"pending": 6, "name": "lights 2.0"})),
    );
    text += &line(
        200.0,
        "r1",
        "rollout.started",
        counters("running", 0, json!({"pending": 6})),
    );
    text += &line(
        200.0,
        "r1",
        "rollout.wave",
        counters("running", 0, json!({"pending": 6, "devices": 2})),
    );
    text += &begin(210.0, "d1", Some("r1"));
    text += &begin(211.0, "d2", Some("r1"));
    text += &line(
        250.0,
        "d1",
        "ota.progress",
        json!({"firmware": "fw-a", "percent": 50}),
    );
    text += &success(310.0, "d1", 100.0, "r1");
    text += &success(411.0, "d2", 200.0, "r1");
    text += &line(
        1000.0,
        "r1",
        "rollout.wave",
        counters(
            "running",
            1,
            json!({"pending": 4, "succeeded": 2, "devices": 4}),
        ),
    );
    for (i, id) in ["d3", "d4", "d5", "d6"].iter().enumerate() {
        text += &begin(1010.0 + i as f64, id, Some("r1"));
    }
    text += &failure(1100.0, "d5", "write", "chunk 12 refused", "r1");
    text += &success(1310.0, "d3", 300.0, "r1");
    text += &reverted(1411.0, "d4", Some("r1"));
    text += &success(1413.0, "d6", 400.0, "r1");
    text += &line(1500.0, "r1", "rollout.finished", json!({}));
    text += &line(
        2000.0,
        "r1",
        "rollout.completed",
        counters(
            "completed",
            1,
            json!({"succeeded": 4, "failed": 1, "reverted": 1}),
        ),
    );
    // One-device pushes.
    text += &line(
        3000.0,
        "d11",
        "ota.begin",
        json!({"firmware": "fw-b", "version": "1.5", "size": 500}),
    );
    text += &line(
        3010.0,
        "d11",
        "ota.progress",
        json!({"firmware": "fw-b", "percent": 100}),
    );
    text += &line(
        3050.0,
        "d11",
        "ota.failure",
        json!({"firmware": "fw-b", "stage": "end", "message": "image rejected"}),
    );
    text += &line(3060.0, "d11", "ota.start", json!({"firmware": "fw-b"}));
    text += &line(
        3100.0,
        "d11",
        "ota.begin",
        json!({"firmware": "fw-b", "version": "1.5", "size": 500}),
    );
    text += &line(
        3150.0,
        "d11",
        "ota.success",
        json!({"firmware": "fw-b", "version": "1.5", "seconds": 50}),
    );
    text += &begin(4000.0, "d12", None);
    text += &reverted(4100.0, "d12", None);
    // r2: halted in wave 0.
    text += &line(
        6000.0,
        "r2",
        "rollout.planned",
        counters(
            "planned",
            0,
            json!({"pending": 6, "name": "lights 2.0 again"}),
        ),
    );
    text += &line(
        6100.0,
        "r2",
        "rollout.started",
        counters("running", 0, json!({"pending": 6})),
    );
    text += &line(
        6100.0,
        "r2",
        "rollout.wave",
        counters("running", 0, json!({"pending": 6, "devices": 4})),
    );
    for (i, id) in ["d7", "d8", "d9", "d10"].iter().enumerate() {
        text += &begin(6110.0 + i as f64, id, Some("r2"));
    }
    text += &failure(6200.0, "d7", "write", "chunk 12 refused", "r2");
    text += &failure(
        6500.0,
        "d8",
        "reboot",
        "did not come back within 330 s",
        "r2",
    );
    text += &line(
        6500.0,
        "r2",
        "rollout.halted",
        counters(
            "halted",
            0,
            json!({"pending": 2, "sending": 1, "verifying": 1, "failed": 1, "timed_out": 1,
                   "reason": "wave 0: 2 of 4 devices failed (50.0 %), the limit is 50 %"}),
        ),
    );
    text += &failure(6600.0, "d9", "write", "chunk 12 refused", "r2");
    text += &success(6700.0, "d10", 590.0, "r2");
    // A crash while writing the last line.
    let torn = line(7000.0, "d13", "ota.begin", json!({"firmware": "fw-a"}));
    text += &torn[..torn.len() / 2];
    let path = dir.join("notification.log");
    std::fs::write(&path, text).expect("write");
    vec![path]
}

#[test]
fn firmware_updates_rollouts_waves_and_reasons() {
    let dir = tempfile::tempdir().expect("temp dir");
    let logs = engine_log(dir.path());
    let output = report(Report::Firmware, &logs);
    assert_eq!(output.stats.torn_lines, 1);
    assert_eq!(
        output.stats.unknown_events, 2,
        "ota.start, rollout.finished"
    );
    assert_eq!(output.stats.invalid_lines, 0);
    assert_eq!(
        output.tables.iter().map(|t| t.name).collect::<Vec<_>>(),
        [
            "devices",
            "versions",
            "updates",
            "rollouts",
            "rollout_waves",
            "revert_reasons"
        ]
    );

    // 2.0: 6 + 4 begins in rollouts and one push; successes in 100, 200, 300, 400 and
    // 590 s (median 300, p90 at rank 3.6: 400 + 0.6 * 190); failures d5, d7, d8, d9;
    // reverts d4, d12. 1.5: d11 twice. Running at the end: 2.0 on d1-d3, d6, d10; 1.5 on
    // d11; 1.0 on the other eight (d4 and d12 went back to it).
    assert_rows(
        output.table("updates").expect("updates"),
        json!([
            {"fw_version": "1.0", "begun": 0, "succeeded": 0, "failed": 0, "reverted": 0,
             "success_rate": null, "median_update_s": null, "p90_update_s": null,
             "devices_running": 8},
            {"fw_version": "1.5", "begun": 2, "succeeded": 1, "failed": 1, "reverted": 0,
             "success_rate": 0.5, "median_update_s": 50.0, "p90_update_s": 50.0,
             "devices_running": 1},
            {"fw_version": "2.0", "begun": 11, "succeeded": 5, "failed": 4, "reverted": 2,
             "success_rate": 5.0 / 11.0, "median_update_s": 300.0, "p90_update_s": 514.0,
             "devices_running": 5},
        ]),
    );

    // r1: 4 of 6 succeeded, times 100-400 s (median 250, p90 at rank 2.7: 300 + 0.7 *
    // 100). r2: the halt's counters (1 failed, 1 timed out, 2 under way) plus d9's
    // failure and d10's success after it: 1 of 4 ended updates succeeded.
    assert_rows(
        output.table("rollouts").expect("rollouts"),
        json!([
            {"id": "r1", "name": "lights 2.0", "firmware": "fw-a", "fw_version": "2.0",
             "state": "completed", "devices": 6, "succeeded": 4, "failed": 1, "reverted": 1,
             "timed_out": 0, "skipped": 0, "success_rate": 4.0 / 6.0,
             "median_update_s": 250.0, "p90_update_s": 370.0,
             "started": "2023-11-15T00:03:20Z", "finished": "2023-11-15T00:33:20Z",
             "duration_s": 1800.0, "reason": null},
            {"id": "r2", "name": "lights 2.0 again", "firmware": "fw-a", "fw_version": "2.0",
             "state": "halted", "devices": 6, "succeeded": 1, "failed": 2, "reverted": 0,
             "timed_out": 1, "skipped": 0, "success_rate": 0.25,
             "median_update_s": 590.0, "p90_update_s": 590.0,
             "started": "2023-11-15T01:41:40Z", "finished": "2023-11-15T01:48:20Z",
             "duration_s": 400.0,
             "reason": "wave 0: 2 of 4 devices failed (50.0 %), the limit is 50 %"},
        ]),
    );

    assert_rows(
        output.table("rollout_waves").expect("rollout_waves"),
        json!([
            {"rollout": "r1", "wave": 0, "devices": 2, "begun": 2, "succeeded": 2,
             "failed": 0, "reverted": 0, "success_rate": 1.0},
            {"rollout": "r1", "wave": 1, "devices": 4, "begun": 4, "succeeded": 2,
             "failed": 1, "reverted": 1, "success_rate": 0.5},
            {"rollout": "r2", "wave": 0, "devices": 4, "begun": 4, "succeeded": 1,
             "failed": 3, "reverted": 0, "success_rate": 0.25},
        ]),
    );

    assert_rows(
        output.table("revert_reasons").expect("revert_reasons"),
        json!([
            {"rollout": "r2", "outcome": "failed", "stage": "write",
             "message": "chunk 12 refused", "count": 2},
            {"rollout": null, "outcome": "failed", "stage": "end",
             "message": "image rejected", "count": 1},
            {"rollout": null, "outcome": "reverted", "stage": null,
             "message": "reverted: not committed", "count": 1},
            {"rollout": "r1", "outcome": "failed", "stage": "write",
             "message": "chunk 12 refused", "count": 1},
            {"rollout": "r1", "outcome": "reverted", "stage": null,
             "message": "reverted: not committed", "count": 1},
            {"rollout": "r2", "outcome": "failed", "stage": "reboot",
             "message": "did not come back within 330 s", "count": 1},
        ]),
    );

    // Per device, the engine's events are attempts like the shadow's.
    let devices = json_rows(output.main()).expect("rows");
    let row = |id: &str| {
        devices
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["id"] == id))
            .cloned()
            .unwrap_or_else(|| panic!("{id} in {devices}"))
    };
    assert_eq!(
        devices.as_array().map(Vec::len),
        Some(14),
        "no rollout rows"
    );
    let d11 = row("d11");
    assert_eq!(
        (
            &d11["fw_version"],
            &d11["ota_attempts"],
            &d11["ota_successes"],
            &d11["ota_failures"]
        ),
        (&json!("1.5"), &json!(2), &json!(1), &json!(1))
    );
    let d12 = row("d12");
    assert_eq!(
        (
            &d12["fw_version"],
            &d12["ota_attempts"],
            &d12["ota_reverts"]
        ),
        (&json!("1.0"), &json!(1), &json!(1))
    );

    // Rollouts are not devices in the other reports either.
    let fleet = report(Report::Fleet, &logs);
    let summary = json_rows(fleet.main()).expect("rows");
    assert_eq!(summary[0]["devices_seen"], 14, "{summary}");
}

#[test]
fn firmware_engine_tables_follow_the_range_and_the_device() {
    let dir = tempfile::tempdir().expect("temp dir");
    let logs = engine_log(dir.path());

    // From 5000 s on: r1 and the pushes are before the range.
    let mut late = request(Report::Firmware, &logs);
    late.from = Some(T + 5000.0);
    let output = run(&late, &|_| {}).expect("report runs");
    let rollouts = json_rows(output.table("rollouts").expect("rollouts")).expect("rows");
    assert_eq!(rollouts.as_array().map(Vec::len), Some(1), "{rollouts}");
    assert_eq!(rollouts[0]["id"], "r2");
    let updates = json_rows(output.table("updates").expect("updates")).expect("rows");
    let two = updates
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["fw_version"] == "2.0"))
        .cloned()
        .expect("2.0");
    assert_eq!(
        (&two["begun"], &two["succeeded"], &two["failed"]),
        (&json!(4), &json!(1), &json!(3))
    );

    // One device: the rollout it was in, whole; only its own failures.
    let mut one = request(Report::Firmware, &logs);
    one.device = Some("d9".into());
    let output = run(&one, &|_| {}).expect("report runs");
    let rollouts = json_rows(output.table("rollouts").expect("rollouts")).expect("rows");
    assert_eq!(rollouts.as_array().map(Vec::len), Some(1), "{rollouts}");
    assert_eq!(
        (&rollouts[0]["id"], &rollouts[0]["devices"]),
        (&json!("r2"), &json!(6))
    );
    assert_rows(
        output.table("revert_reasons").expect("revert_reasons"),
        json!([{"rollout": "r2", "outcome": "failed", "stage": "write",
                "message": "chunk 12 refused", "count": 1}]),
    );
    assert_rows(
        output.table("updates").expect("updates"),
        json!([
            {"fw_version": "1.0", "begun": 0, "succeeded": 0, "failed": 0, "reverted": 0,
             "success_rate": null, "median_update_s": null, "p90_update_s": null,
             "devices_running": 1},
            {"fw_version": "2.0", "begun": 1, "succeeded": 0, "failed": 1, "reverted": 0,
             "success_rate": 0.0, "median_update_s": null, "p90_update_s": null,
             "devices_running": 0},
        ]),
    );
}

#[test]
fn rpc_calls_and_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut text = String::new();
    for i in 0..3 {
        text += &shadow_update(f64::from(i), "r", json!({"on": true}));
    }
    text += &line(10.0, "r", "rpc.out.Log", json!({"fd": 1, "data": "hi"}));
    text += &line(4000.0, "r", "rpc.out.Log", json!({"fd": 1, "data": "hi"}));
    text += &line(20.0, "r", "rpc.out.Custom.Thing", json!({}));
    text += &line(30.0, "s", "rpc.out.Custom.Thing", json!({}));
    text += &line(40.0, "r", "rpc.in.Sys.GetInfo", Value::Null);
    text += &line(
        50.0,
        "r",
        "rpc.in.Shadow.Delta",
        json!({"state": {"on": true}}),
    );
    text += &line(
        60.0,
        "s",
        "rpc.in.Shadow.Delta",
        json!({"state": {"on": true}}),
    );
    text += &line(70.0, "s", "online", Value::Null);
    // Outside the range: not counted.
    text += &line(-5.0, "s", "rpc.in.Sys.Reboot", json!({}));
    let path = dir.path().join("rpc.log");
    std::fs::write(&path, text).expect("write");
    let output = report(Report::Rpc, &[path]);
    assert_rows(
        output.main(),
        json!([
            {"direction": "out", "method": "Dash.Shadow.Update", "calls": 3, "errors": 0, "error_rate": 0.0},
            {"direction": "in", "method": "Shadow.Delta", "calls": 2, "errors": null, "error_rate": null},
            {"direction": "out", "method": "Custom.Thing", "calls": 2, "errors": 2, "error_rate": 1.0},
            {"direction": "out", "method": "Log", "calls": 2, "errors": 0, "error_rate": 0.0},
            {"direction": "in", "method": "Sys.GetInfo", "calls": 1, "errors": null, "error_rate": null},
        ]),
    );
    let buckets = json_rows(output.table("buckets").expect("buckets")).expect("rows");
    assert_eq!(
        buckets[0],
        json!({"bucket": "2023-11-15T00:00:00Z", "calls_out": 6, "calls_in": 3, "errors_out": 2})
    );
    assert_eq!(buckets[1]["calls_out"], json!(1));
}

#[test]
fn one_loaded_log_serves_every_report() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut logs = connectivity_log(dir.path());
    let other = tempfile::tempdir().expect("temp dir");
    logs.extend(usage_log(other.path()));
    logs.extend(firmware_log(other.path()));
    let files = herd_analytics::resolve(&logs).expect("resolve");
    let log = Log::load(&files, Need::ALL, &|_| {}).expect("load");
    for report in Report::ALL {
        let request = request(report, &[]);
        let shared = compute(&log, &request).expect("compute");
        let mut alone = request.clone();
        alone.logs = logs.clone();
        let separate = run(&alone, &|_| {}).expect("run");
        assert_eq!(shared.tables.len(), report.tables().len());
        for (a, b) in shared.tables.iter().zip(&separate.tables) {
            assert_eq!(a.frame, b.frame, "{report} {}", a.name);
        }
    }
    // A log read for connectivity cannot serve usage.
    let narrow = Log::load(&files, Report::Connectivity.need(), &|_| {}).expect("load");
    assert!(compute(&narrow, &request(Report::Usage, &[])).is_err());
}

#[test]
fn pushed_bytes_in_any_split_match_a_file_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    let logs = usage_log(dir.path());
    let bytes = std::fs::read(&logs[0]).expect("read");
    let expected = report(Report::Usage, &logs);
    for step in [1, 7, 64, 1000] {
        let mut log = Log::new(Need::ALL);
        for piece in bytes.chunks(step) {
            log.push(piece);
        }
        log.end_file();
        let output = compute(&log, &request(Report::Usage, &[])).expect("compute");
        assert_eq!(output.main(), expected.main(), "step {step}");
        assert_eq!(output.stats.lines, expected.stats.lines);
    }
    // An unterminated tail waits for its newline, and only ending the file makes it torn.
    let mut log = Log::new(Need::ALL);
    log.push(b"{\"ts\":1,\"id\":\"x\",\"name\":\"onl");
    assert_eq!((log.stats().lines, log.pending_bytes()), (0, 28));
    log.push(b"ine\",\"data\":null}\n{\"ts\":2");
    assert_eq!((log.stats().lines, log.len()), (1, 1));
    log.end_file();
    assert_eq!(log.stats().torn_lines, 1);
}

#[test]
fn follower_reads_appends_and_rotation() {
    let dir = tempfile::tempdir().expect("temp dir");
    let current = dir.path().join("notification.log");
    std::fs::write(&current, line(0.0, "a", "online", Value::Null)).expect("write");
    let mut follower = Follower::open(dir.path(), Need::ALL, &|_| {}).expect("open");
    assert_eq!(follower.log().len(), 1);
    assert_eq!(follower.poll().expect("poll").bytes, 0);

    // Appended: half a line first, then the rest.
    let next = line(3600.0, "a", "offline", Value::Null);
    let (head, tail) = next.split_at(10);
    append(&current, head);
    assert_eq!(follower.poll().expect("poll").bytes, 10);
    assert_eq!(follower.log().len(), 1);
    append(&current, tail);
    follower.poll().expect("poll");
    assert_eq!(follower.log().len(), 2);

    // Rotated: the followed file gets a date, and a new current file starts.
    append(&current, &line(3700.0, "a", "online", Value::Null));
    std::fs::rename(&current, dir.path().join("notification.log.2023-11-15")).expect("rotate");
    std::fs::write(&current, line(7200.0, "a", "offline", Value::Null)).expect("write");
    follower.poll().expect("poll");
    assert_eq!(follower.log().len(), 4);
    assert_eq!(follower.poll().expect("poll").bytes, 0);

    let output = compute(follower.log(), &request(Report::Connectivity, &[])).expect("compute");
    let rows = json_rows(output.main()).expect("rows");
    assert_eq!(rows[0]["online_s"], json!(7100.0));
    assert_eq!(rows[0]["sessions"], json!(2));
}

#[test]
fn follower_counts_every_line_once_while_the_log_rotates_under_it() {
    // A writer appends (sometimes half a line at a time) and rotates as fast as it can
    // while the follower polls: whatever a poll sees mid-rotation, each line is read once.
    let dir = tempfile::tempdir().expect("temp dir");
    let current = dir.path().join("notification.log");
    std::fs::write(&current, line(0.0, "a", "online", Value::Null)).expect("write");
    let mut follower = Follower::open(dir.path(), Need::ALL, &|_| {}).expect("open");
    const ROTATIONS: u64 = 150;
    const PER_FILE: u64 = 20;
    let writer = {
        let dir = dir.path().to_path_buf();
        std::thread::spawn(move || {
            let current = dir.join("notification.log");
            let mut ts = 1.0;
            for rotation in 1..=ROTATIONS {
                for i in 0..PER_FILE {
                    let text = line(
                        ts,
                        "a",
                        if i % 2 == 0 { "offline" } else { "online" },
                        Value::Null,
                    );
                    ts += 1.0;
                    let (head, tail) = text.split_at(text.len() / 2);
                    append(&current, head);
                    append(&current, tail);
                }
                let rotated = dir.join(format!("notification.log.2023-11-15.{rotation}"));
                std::fs::rename(&current, rotated).expect("rotate");
                std::fs::write(&current, line(ts, "a", "online", Value::Null)).expect("write");
                ts += 1.0;
            }
        })
    };
    while !writer.is_finished() {
        let polled = follower.poll().expect("poll during rotation");
        assert!(!polled.reread, "a rotation is not a loss");
    }
    writer.join().expect("writer");
    follower.poll().expect("last poll");
    let written = 1 + ROTATIONS * (PER_FILE + 1);
    assert_eq!(follower.log().stats().lines, written);
    assert_eq!(follower.log().len() as u64, written);
    assert_eq!(follower.log().stats().torn_lines, 0);
}

#[test]
fn follower_progress_covers_the_current_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rotated = line(0.0, "a", "online", Value::Null);
    let current: String = (1..200)
        .map(|i| line(f64::from(i), "a", "offline", Value::Null))
        .collect();
    std::fs::write(dir.path().join("notification.log.2023-11-14"), &rotated).expect("write");
    std::fs::write(dir.path().join("notification.log"), &current).expect("write");
    let seen = std::sync::Mutex::new(Vec::new());
    Follower::open(dir.path(), Need::ALL, &|p: Progress| {
        seen.lock().expect("lock").push(p)
    })
    .expect("open");
    let seen = seen.into_inner().expect("lock");
    let total = (rotated.len() + current.len()) as u64;
    let last = seen.last().expect("progress was reported");
    assert_eq!((last.done, last.total), (total, total));
    assert!(seen.iter().all(|p| p.done <= p.total && p.total == total));
}

#[test]
fn follower_of_named_files_reads_the_last_one_as_it_grows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let older = dir.path().join("older.log");
    let live = dir.path().join("live.log");
    std::fs::write(&older, line(0.0, "a", "online", Value::Null)).expect("write");
    std::fs::write(&live, line(600.0, "a", "offline", Value::Null)).expect("write");
    let paths = vec![older.clone(), live.clone()];
    let mut follower = Follower::open_all(paths, Need::ALL, None, &|_| {}).expect("open");
    assert_eq!(follower.log().len(), 2);

    let next = line(1200.0, "a", "online", Value::Null);
    append(&live, &next);
    let polled = follower.poll().expect("poll");
    assert_eq!((polled.bytes, polled.reread), (next.len() as u64, false));
    assert_eq!(follower.log().len(), 3);

    // The named file replaced by a new one (as a rotation does to `notification.log`):
    // the log is what the named files hold now.
    std::fs::rename(&live, dir.path().join("live.log.old")).expect("rename");
    std::fs::write(&live, line(1800.0, "a", "offline", Value::Null)).expect("write");
    let polled = follower.poll().expect("poll");
    assert!(polled.reread);
    assert_eq!(follower.log().len(), 2);
    assert_eq!(follower.log().stats().torn_lines, 0);
}

#[test]
fn follower_reads_again_when_read_bytes_are_gone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rotated = dir.path().join("notification.log.2023-11-14");
    let current = dir.path().join("notification.log");
    std::fs::write(&rotated, line(0.0, "a", "online", Value::Null)).expect("write");
    let two = line(60.0, "a", "offline", Value::Null) + &line(120.0, "a", "online", Value::Null);
    std::fs::write(&current, &two).expect("write");
    let cache = tempfile::tempdir().expect("cache dir");
    let mut follower =
        Follower::open_cached(dir.path(), Need::ALL, cache.path(), &|_| {}).expect("open");
    assert_eq!(follower.log().len(), 3);
    assert!(!follower.poll().expect("poll").reread);

    // Old files deleted by retention.
    std::fs::remove_file(&rotated).expect("delete");
    let polled = follower.poll().expect("poll");
    assert!(polled.reread);
    assert_eq!(polled.bytes, two.len() as u64);
    assert_eq!(follower.log().len(), 2);

    // The current file cut back by hand, then written again.
    let one = line(60.0, "a", "offline", Value::Null);
    std::fs::write(&current, &one).expect("truncate");
    let seen = std::sync::Mutex::new(Vec::new());
    let polled = follower
        .poll_reporting(&|p: Progress| seen.lock().expect("lock").push(p))
        .expect("poll");
    assert!(polled.reread);
    assert_eq!(follower.log().len(), 1);
    let seen = seen.into_inner().expect("lock");
    assert!(seen.last().is_some_and(|p| p.done == one.len() as u64));

    // Nothing lost since: polls read only what is appended again.
    append(&current, &line(180.0, "a", "online", Value::Null));
    assert!(!follower.poll().expect("poll").reread);
    assert_eq!(follower.log().len(), 2);
    assert_eq!(follower.log().stats().torn_lines, 0);
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open");
    file.write_all(text.as_bytes()).expect("append");
}

#[test]
fn invalid_and_blank_lines_are_counted_not_fatal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("notification.log");
    let mut text = line(0.0, "a", "online", Value::Null);
    text += "not json\n\n{\"ts\":\"soon\",\"id\":\"a\",\"name\":\"offline\",\"data\":null}\n";
    text += &line(60.0, "a", "offline", Value::Null);
    std::fs::write(&path, text).expect("write");
    let output = report(Report::Connectivity, &[path]);
    assert_eq!(output.stats.invalid_lines, 2);
    assert_eq!(output.stats.torn_lines, 0);
    assert_eq!(
        json_rows(output.main()).expect("rows")[0]["online_s"],
        json!(60.0)
    );
}

/// PROTOCOL §7: torn lines (a crash cut them, the next write went on after them) are
/// invalid as a whole and change no report, however they end: no phantom device, no
/// switch-on, no hours on.
#[test]
fn torn_lines_contribute_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clean = usage_log(dir.path()).remove(0);
    let text = std::fs::read_to_string(&clean).expect("read");
    let switch_on = shadow_update(3000.0, "l3", json!({"on": true}));
    let ghost = line(3100.0, "ghost", "online", Value::Null);
    let cut = |line: &str, keep: usize| line[..keep].to_string();
    let on_at = switch_on.find("true").expect("on") + 4;
    let torn = [
        // Cut mid-object, the next write glued on: it ends in `}`.
        cut(&ghost, 30) + text.lines().nth(2).expect("third line") + "\n",
        // Cut after `"on":true`, ending in `}}`: it once counted as a switch-on.
        cut(&switch_on, on_at) + "}}\n",
        cut(&switch_on, on_at) + "}}}}\n",
        // Two objects on one line, and one with garbage after it.
        ghost.trim_end().to_string() + &ghost,
        ghost.trim_end().to_string() + " ]\n",
    ];
    let mut lines: Vec<String> = text.lines().map(|l| format!("{l}\n")).collect();
    for (at, torn) in torn.iter().enumerate() {
        lines.insert(2 + 2 * at, torn.clone());
    }
    let damaged = dir.path().join("notification.log");
    // The last line was cut as well: torn, not invalid.
    std::fs::write(&damaged, lines.concat() + &cut(&switch_on, on_at)).expect("write");

    let expected = report(Report::Usage, std::slice::from_ref(&clean));
    for report_kind in [Report::Usage, Report::Connectivity] {
        let want = report(report_kind, std::slice::from_ref(&clean));
        let got = report(report_kind, std::slice::from_ref(&damaged));
        assert_eq!(
            json_rows(got.main()).expect("rows"),
            json_rows(want.main()).expect("rows"),
            "{report_kind}"
        );
        assert_eq!(got.stats.invalid_lines, torn.len() as u64, "{report_kind}");
        assert_eq!(got.stats.torn_lines, 1, "{report_kind}");
        assert_eq!(got.stats.lines, want.stats.lines + torn.len() as u64);
    }
    let ids = json_rows(expected.main()).expect("rows");
    assert!(!ids.to_string().contains("ghost"));
    // The fleet summary shows the torn lines as ignored, and counts nothing else of them.
    let fleet = |path: &PathBuf| {
        json_rows(report(Report::Fleet, std::slice::from_ref(path)).main()).expect("rows")[0]
            .clone()
    };
    let (want, got) = (fleet(&clean), fleet(&damaged));
    for same in ["devices_seen", "notifications", "online_now"] {
        assert_eq!(got[same], want[same], "{same}");
    }
    assert_eq!(got["invalid_lines"], json!(torn.len()));
    assert_eq!(got["torn_lines"], json!(1));
    // A follower reading the same bytes in pieces agrees.
    let mut pushed = Log::new(Need::ALL);
    for piece in std::fs::read(&damaged).expect("read").chunks(7) {
        pushed.push(piece);
    }
    pushed.end_file();
    assert_eq!(pushed.stats().invalid_lines, torn.len() as u64);
    assert_eq!(pushed.device_name("ghost"), None);
    assert_eq!(pushed.find_device("ghost").expect("unambiguous"), None);
}

#[test]
fn chunk_boundaries_do_not_lose_lines() {
    // Larger than one read chunk, so lines straddle chunk boundaries.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("big.log");
    let config = herd_analytics::generate::Config {
        seed: 3,
        devices: 50,
        bytes: 17 << 20,
        ..Default::default()
    };
    let file = std::fs::File::create(&path).expect("create");
    let summary = herd_analytics::generate::generate(&config, file).expect("generate");
    let loaded = Log::load(std::slice::from_ref(&path), Need::ALL, &|_| {}).expect("load");
    let mut pushed = Log::new(Need::ALL);
    pushed.push(&std::fs::read(&path).expect("read"));
    pushed.end_file();
    assert_eq!(loaded.stats().lines, summary.lines);
    assert_eq!(loaded.stats().invalid_lines, 0);
    assert_eq!(loaded.stats().torn_lines, 0);
    assert_eq!(loaded.len(), pushed.len());
    for report in Report::ALL {
        let request = ReportRequest::new(report, Vec::new());
        let a = compute(&loaded, &request).expect("compute");
        let b = compute(&pushed, &request).expect("compute");
        for (x, y) in a.tables.iter().zip(&b.tables) {
            assert_eq!(x.frame, y.frame, "{report} {}", x.name);
        }
    }
}

/// The generator's rollouts read back: every rollout that ended shows in its waves the
/// outcomes its counters hold (a timeout is a failure there).
#[test]
fn generated_rollouts_add_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("notification.log");
    let config = herd_analytics::generate::Config {
        seed: 5,
        devices: 40,
        bytes: 4 << 20,
        ..Default::default()
    };
    let file = std::fs::File::create(&path).expect("create");
    herd_analytics::generate::generate(&config, file).expect("generate");
    let output =
        run(&ReportRequest::new(Report::Firmware, vec![path]), &|_| {}).expect("report runs");
    assert_eq!(output.stats.unknown_events, 0);
    assert_eq!(output.stats.invalid_lines, 0);
    let rollouts = json_rows(output.table("rollouts").expect("rollouts")).expect("rows");
    let waves = json_rows(output.table("rollout_waves").expect("waves")).expect("rows");
    let rollouts = rollouts.as_array().expect("rows");
    let states: Vec<&str> = rollouts
        .iter()
        .filter_map(|r| r["state"].as_str())
        .collect();
    assert!(
        states.contains(&"completed") && states.contains(&"halted"),
        "{states:?}"
    );
    let number = |v: &Value| v.as_u64().expect("count");
    for rollout in rollouts {
        let ended = ["succeeded", "failed", "reverted", "timed_out", "skipped"]
            .iter()
            .map(|c| number(&rollout[*c]))
            .sum::<u64>();
        assert!(ended <= number(&rollout["devices"]), "{rollout}");
        if rollout["state"] == "running" {
            continue;
        }
        let sum = |column: &str| {
            waves
                .as_array()
                .expect("rows")
                .iter()
                .filter(|w| w["rollout"] == rollout["id"])
                .map(|w| number(&w[column]))
                .sum::<u64>()
        };
        assert_eq!(sum("succeeded"), number(&rollout["succeeded"]), "{rollout}");
        assert_eq!(
            sum("failed"),
            number(&rollout["failed"]) + number(&rollout["timed_out"]),
            "{rollout}"
        );
        assert_eq!(sum("reverted"), number(&rollout["reverted"]), "{rollout}");
    }
    let updates = json_rows(output.table("updates").expect("updates")).expect("rows");
    let begun: u64 = updates
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| number(&r["begun"]))
        .sum();
    assert!(begun > 0, "{updates}");
}

#[test]
fn exports_in_every_format() {
    let dir = tempfile::tempdir().expect("temp dir");
    let logs = connectivity_log(dir.path());
    let output = report(Report::Connectivity, &logs);

    let mut csv = Vec::new();
    output
        .write(Format::Csv, &mut csv, Some("devices"))
        .expect("csv");
    let csv = String::from_utf8(csv).expect("utf-8");
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("id,name,sessions,online_s,uptime_pct,connects,disconnects,peak_connects,flapping")
    );
    assert_eq!(lines.next(), Some("a,,2,10800,75,2,1,1,false"));

    let mut all = Vec::new();
    output.write(Format::Csv, &mut all, None).expect("csv");
    let all = String::from_utf8(all).expect("utf-8");
    assert!(all.starts_with("# devices\n"));
    assert!(all.contains("\n# buckets\nbucket,"));

    let mut json = Vec::new();
    output.write(Format::Json, &mut json, None).expect("json");
    let document: Value = serde_json::from_slice(&json).expect("valid JSON");
    assert_eq!(document["report"], json!("connectivity"));
    assert_eq!(document["stats"]["torn_lines"], json!(1));
    assert_eq!(document["tables"]["devices"][3]["flapping"], json!(true));

    let mut parquet = Vec::new();
    output
        .write(Format::Parquet, &mut parquet, None)
        .expect("parquet");
    assert!(parquet.starts_with(b"PAR1") && parquet.ends_with(b"PAR1"));

    let mut table = Vec::new();
    output
        .write(Format::Table, &mut table, None)
        .expect("table");
    let table = String::from_utf8(table).expect("utf-8");
    assert!(table.contains("uptime_pct"));
    assert!(table.contains("2.083"));
    assert!(table.contains("ignored: 1 torn, 0 invalid lines"));

    assert!(output.write(Format::Csv, Vec::new(), Some("nope")).is_err());
}

#[test]
fn progress_reaches_the_total() {
    let dir = tempfile::tempdir().expect("temp dir");
    let logs = connectivity_log(dir.path());
    let seen = std::sync::Mutex::new(Vec::new());
    run(&request(Report::Connectivity, &logs), &|p| {
        if let Ok(mut seen) = seen.lock() {
            seen.push(p);
        }
    })
    .expect("run");
    let seen = seen.into_inner().expect("lock");
    let reading: Vec<_> = seen
        .iter()
        .filter(|p| p.stage == herd_analytics::Stage::Reading)
        .collect();
    // Workers report as they finish, so the largest count, not the last call, is the end.
    let done = reading
        .iter()
        .map(|p| p.done)
        .max()
        .expect("reading progress");
    assert_eq!(done, reading[0].total);
    assert!(done > 0);
    assert_eq!(seen.last().map(|p| (p.done, p.total)), Some((1, 1)));
}

#[test]
fn bad_requests_are_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let logs = connectivity_log(dir.path());
    let mut backwards = request(Report::Fleet, &logs);
    backwards.to = Some(T - 1.0);
    assert!(run(&backwards, &|_| {}).is_err());
    let mut huge = request(Report::Fleet, &logs);
    huge.from = Some(0.0);
    assert!(run(&huge, &|_| {}).is_err());
    let missing = request(Report::Fleet, &[dir.path().join("missing.log")]);
    assert!(run(&missing, &|_| {}).is_err());
    assert!("weekly".parse::<Report>().is_err());
    assert_eq!("usage".parse::<Report>().ok(), Some(Report::Usage));
}
