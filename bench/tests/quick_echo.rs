//! Runs the benchmark's quick mode against the echo peer, and against mosquitto where it
//! is installed: every process the full run uses (driver, client shard, peer) starts,
//! talks and stops, in seconds.

use std::process::Command;

#[test]
fn quick_mode_against_echo_peer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("result.json");
    let output = Command::new(env!("CARGO_BIN_EXE_herd-bench"))
        .args([
            "--targets",
            "echo",
            "--devices",
            "200",
            "--duration",
            "1s",
            "--max-rate",
            "10000",
            "--markdown",
        ])
        .arg("--json")
        .arg(&json)
        .output()
        .expect("herd-bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "herd-bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("| metric | target | herd-server | tokio-tungstenite echo peer |"),
        "{stdout}"
    );

    let text = std::fs::read_to_string(&json).expect("result file written");
    let report: serde_json::Value = serde_json::from_str(&text).expect("result is JSON");
    assert!(report["server"].is_null(), "the server was not asked for");
    let echo = &report["echo"];
    assert_eq!(echo["connect"]["ready"], 200, "{echo}");
    assert!(
        echo["memory"]["after"]["rss"].as_u64() > echo["memory"]["before"]["rss"].as_u64(),
        "{echo}"
    );
    let target = &echo["rtt_steps"][0];
    assert_eq!(target["at_target"], true, "{target}");
    // 5,000/s for one second: every echo must come back, whatever the latency.
    assert_eq!(target["sent"], 5000, "{target}");
    assert_eq!(target["completed"], 5000, "{target}");
    assert_eq!(target["errors"], 0, "{target}");
    assert!(
        target["latency"]["p50_us"].as_u64().unwrap_or(0) > 0,
        "{target}"
    );
    let steps = echo["rtt_steps"].as_array().map(Vec::len).unwrap_or(0);
    assert!(
        (1..=3).contains(&steps),
        "stops at the 10,000/s cap: {steps} steps"
    );
}

/// A short real run against mosquitto: broker started from a generated configuration,
/// MQTT clients connected from a shard, QoS 1 updates acknowledged. Skipped, with a
/// message, only where the broker is not installed (`apt-get install mosquitto`).
#[test]
fn quick_mode_against_mosquitto() {
    let Some(mosquitto) = herd_bench::driver::find_program("mosquitto") else {
        eprintln!(
            "skipped: mosquitto not found on PATH or in /usr/sbin (apt-get install mosquitto)"
        );
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("result.json");
    let output = Command::new(env!("CARGO_BIN_EXE_herd-bench"))
        .args([
            "--targets",
            "mosquitto",
            "--devices",
            "300",
            "--rate",
            "2000",
            "--duration",
            "2s",
            "--max-rate",
            "2000",
            "--markdown",
        ])
        .arg("--mosquitto-bin")
        .arg(&mosquitto)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("herd-bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "herd-bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains(
            "| metric | target | herd-server | tokio-tungstenite echo peer | mosquitto (MQTT QoS 1) |"
        ),
        "{stdout}"
    );

    let text = std::fs::read_to_string(&json).expect("result file written");
    let report: serde_json::Value = serde_json::from_str(&text).expect("result is JSON");
    assert!(report["server"].is_null(), "the server was not asked for");
    assert!(report["echo"].is_null(), "the echo peer was not asked for");
    let broker = &report["mosquitto"];
    assert!(broker["skipped"].is_null(), "{broker}");
    assert_eq!(broker["connect"]["ready"], 300, "{broker}");
    assert!(
        broker["memory"]["after"]["rss"].as_u64() > broker["memory"]["before"]["rss"].as_u64(),
        "{broker}"
    );
    let target = &broker["rtt_steps"][0];
    assert_eq!(target["at_target"], true, "{target}");
    // 2,000/s for two seconds: every PUBLISH must be acknowledged, whatever the latency.
    assert_eq!(target["sent"], 4000, "{target}");
    assert_eq!(target["completed"], 4000, "{target}");
    assert_eq!(target["errors"], 0, "{target}");
    assert_eq!(target["unanswered"], 0, "{target}");
    assert!(
        target["latency"]["p50_us"].as_u64().unwrap_or(0) > 0,
        "{target}"
    );
}

/// Without the broker the mosquitto column says why and the run still succeeds.
#[test]
fn missing_mosquitto_is_reported_not_fatal() {
    let output = Command::new(env!("CARGO_BIN_EXE_herd-bench"))
        .args([
            "--targets",
            "mosquitto",
            "--mosquitto-bin",
            "/nonexistent/mosquitto",
            "--devices",
            "10",
            "--markdown",
        ])
        .output()
        .expect("herd-bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "herd-bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("not run: /nonexistent/mosquitto not found"),
        "{stdout}"
    );
}
