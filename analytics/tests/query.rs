//! `herd query`'s tables against the built-in reports on the same generated log: a query
//! that asks what a report computes gets the report's numbers.
#![cfg(feature = "query")]

use std::collections::BTreeMap;

use herd_analytics::{compute, json_rows, query, Log, Need, Report, ReportRequest};
use serde_json::Value;

fn generated_log() -> Log {
    let config = herd_analytics::generate::Config {
        seed: 7,
        devices: 40,
        bytes: 2 << 20,
        ..Default::default()
    };
    let mut bytes = Vec::new();
    herd_analytics::generate::generate(&config, &mut bytes).expect("generate");
    let mut log = Log::new(Need::ALL);
    log.push(&bytes);
    log.end_file();
    log
}

fn rows(frame: &herd_analytics::DataFrame) -> Vec<Value> {
    json_rows(frame)
        .expect("rows")
        .as_array()
        .expect("an array")
        .clone()
}

/// `column` of each row by `id`, as a float, leaving out rows where it is zero.
fn by_id(rows: &[Value], column: &str) -> BTreeMap<String, f64> {
    rows.iter()
        .map(|row| {
            (
                row["id"].as_str().expect("id").to_string(),
                row[column].as_f64().unwrap_or(0.0),
            )
        })
        .filter(|(_, value)| *value != 0.0)
        .collect()
}

fn assert_close(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>, what: &str) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{what}: devices"
    );
    for (id, x) in a {
        let y = b[id];
        assert!((x - y).abs() < 1e-6, "{what} of {id}: {x} vs {y}");
    }
    assert!(!a.is_empty(), "{what}: the log should have some");
}

fn report(log: &Log, report: Report) -> Vec<Value> {
    let output = compute(log, &ReportRequest::new(report, Vec::new())).expect("report");
    rows(output.main())
}

#[test]
fn switches_are_the_usage_reports() {
    let log = generated_log();
    let usage = report(&log, Report::Usage);
    let sql = rows(
        &query::query(
            &log,
            "SELECT id, SUM(CASE WHEN \"on\" THEN 1 ELSE 0 END) AS switch_ons, \
             SUM(CASE WHEN \"on\" THEN 0 ELSE 1 END) AS switch_offs \
             FROM switches GROUP BY id",
        )
        .expect("query"),
    );
    assert_close(
        &by_id(&sql, "switch_ons"),
        &by_id(&usage, "switch_ons"),
        "switch-ons",
    );
    assert_close(
        &by_id(&sql, "switch_offs"),
        &by_id(&usage, "switch_offs"),
        "switch-offs",
    );
}

#[test]
fn on_periods_are_the_usage_reports_hours() {
    let log = generated_log();
    let usage = report(&log, Report::Usage);
    let sql = rows(
        &query::query(
            &log,
            "SELECT id, SUM(seconds) / 3600.0 AS hours_on FROM on_periods GROUP BY id",
        )
        .expect("query"),
    );
    assert_close(
        &by_id(&sql, "hours_on"),
        &by_id(&usage, "hours_on"),
        "hours on",
    );
}

/// PROTOCOL §7: sessions a crash left open end at the `server.started` line, in the
/// `sessions` table as in the report.
#[test]
fn sessions_end_at_a_restart() {
    let mut log = Log::new(Need::ALL);
    let started = protocol::notification::SERVER_STARTED;
    log.push(
        format!(
            "{{\"ts\":10,\"id\":\"a\",\"name\":\"online\",\"data\":null}}\n\
             {{\"ts\":70,\"id\":\"\",\"name\":\"{started}\",\"data\":null}}\n\
             {{\"ts\":80,\"id\":\"a\",\"name\":\"online\",\"data\":null}}\n\
             {{\"ts\":100,\"id\":\"a\",\"name\":\"offline\",\"data\":null}}\n"
        )
        .as_bytes(),
    );
    log.end_file();
    let sql = rows(
        &query::query(
            &log,
            "SELECT id, seconds FROM sessions WHERE \"end\" IS NOT NULL ORDER BY start",
        )
        .expect("query"),
    );
    assert_eq!(
        sql,
        [
            serde_json::json!({"id": "a", "seconds": 60.0}),
            serde_json::json!({"id": "a", "seconds": 20.0})
        ]
    );
    let connectivity = report(&log, Report::Connectivity);
    assert_eq!(connectivity[0]["sessions"], 2);
    assert_eq!(connectivity[0]["online_s"], 80.0);
}

#[test]
fn sessions_are_the_connectivity_reports() {
    let log = generated_log();
    let connectivity = report(&log, Report::Connectivity);
    let sql = rows(
        &query::query(
            &log,
            "SELECT id, COUNT(*) AS sessions, SUM(seconds) AS online_s FROM sessions GROUP BY id",
        )
        .expect("query"),
    );
    assert_close(
        &by_id(&sql, "sessions"),
        &by_id(&connectivity, "sessions"),
        "sessions",
    );
    assert_close(
        &by_id(&sql, "online_s"),
        &by_id(&connectivity, "online_s"),
        "online seconds",
    );
}

#[test]
fn events_are_the_fleet_reports_and_names_come_along() {
    let log = generated_log();
    let output = compute(&log, &ReportRequest::new(Report::Fleet, Vec::new())).expect("fleet");
    let summary = rows(output.main());
    let sql = rows(&query::query(&log, "SELECT COUNT(*) AS n FROM events").expect("query"));
    assert_eq!(sql[0]["n"], summary[0]["notifications"], "{summary:?}");

    // The busiest devices, by name as well as id.
    let busiest = rows(output.table("busiest").expect("busiest"));
    let sql = rows(
        &query::query(
            &log,
            "SELECT id, device AS name, COUNT(*) AS notifications FROM events \
             WHERE id IS NOT NULL GROUP BY id, device ORDER BY notifications DESC, id LIMIT 10",
        )
        .expect("query"),
    );
    assert_eq!(sql, busiest);

    // A query that cannot run says why, as a request error.
    let error = query::query(&log, "SELECT nothing FROM nowhere").expect_err("no such table");
    assert!(error.to_string().contains("the query failed"), "{error}");
}
