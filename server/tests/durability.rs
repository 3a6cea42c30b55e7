//! The real binary, killed and restarted: acknowledged writes survive SIGKILL, and
//! notification.log never keeps a torn line (PROTOCOL §4.1, §7).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herd_testkit::*;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_herd-server");

fn register(dir: &Path) -> String {
    let key = register_binary(BIN, dir);
    // A second registration of the same name fails with a clear message.
    let again = Command::new(BIN)
        .args([
            "--data-dir",
            dir.to_str().unwrap(),
            "--register-user",
            "admin",
            "pw",
        ])
        .args(store_args(dir))
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    key
}

fn spawn(dir: &Path) -> (std::process::Child, String) {
    spawn_binary(BIN, dir, "127.0.0.1:0")
}

fn check_log(dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join("notification.log")).unwrap();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "notification.log ends with a torn line"
    );
    text.lines()
        .map(|line| {
            let value: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("torn line {line:?}: {e}"));
            assert!(
                value["ts"].is_number() && value["id"].is_string() && value["name"].is_string()
            );
            value
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_updates_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let key = register(dir.path());
    let (mut child, addr) = spawn(dir.path());
    let http = http_client();
    const DEVICES: usize = 16;
    let mut devices = Vec::new();
    for i in 0..DEVICES {
        let body: Value = http
            .post(format!("http://{addr}/api/v2/devices"))
            .bearer_auth(&key)
            .body(json!({"name": format!("d{i}")}).to_string())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        devices.push((
            body["id"].as_str().unwrap().to_string(),
            body["token"].as_str().unwrap().to_string(),
        ));
    }
    // Each device updates as fast as replies come back and records the last acknowledged n.
    let acked: Arc<Vec<std::sync::atomic::AtomicI64>> = Arc::new(
        (0..DEVICES)
            .map(|_| std::sync::atomic::AtomicI64::new(-1))
            .collect(),
    );
    let mut tasks = Vec::new();
    for (index, (_, token)) in devices.iter().enumerate() {
        let url = format!("ws://{addr}/api/v2/rpc?access_token={token}");
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            for n in 0i64..1_000_000 {
                let frame = json!({"id": n + 1, "method": "Dash.Shadow.Update", "params": {"state": {"reported": {"n": n}}}});
                if ws.send(Message::text(frame.to_string())).await.is_err() {
                    return;
                }
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(text))) => {
                            let reply: Value = serde_json::from_str(&text).unwrap();
                            if reply["id"] == n + 1 && reply.get("result").is_some() {
                                acked[index].store(n, std::sync::atomic::Ordering::SeqCst);
                                break;
                            }
                            // Sys.GetInfo and the like: ignore.
                        }
                        Some(Ok(_)) => continue,
                        _ => return,
                    }
                }
            }
        }));
    }
    // Let the burst run, then kill the server without warning.
    let deadline = tokio::time::Instant::now() + WAIT;
    while acked
        .iter()
        .map(|a| a.load(std::sync::atomic::Ordering::SeqCst))
        .sum::<i64>()
        < 200
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "updates are not being acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The log is written in batches (`LogConfig::flush_interval`); a SIGKILL loses what the
    // last interval had not yet written. What is checked below is what the restart does
    // with sessions the log saw open, so wait until every device's `online` is on disk.
    let log_path = dir.path().join("notification.log");
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let online = text
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|line| line["name"] == "online")
            .count();
        if online >= DEVICES {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {online} of {DEVICES} devices' `online` reached notification.log"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    for task in tasks {
        let _ = task.await;
    }
    let acked: Vec<i64> = acked
        .iter()
        .map(|a| a.load(std::sync::atomic::Ordering::SeqCst))
        .collect();

    let (mut child, addr) = spawn(dir.path());
    for (index, (id, _)) in devices.iter().enumerate() {
        let doc: Value = http
            .get(format!("http://{addr}/api/v2/devices/{id}/shadow"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let stored = doc["state"]["reported"]["n"].as_i64().unwrap_or(-1);
        assert!(
            stored >= acked[index],
            "device {index}: acknowledged n={} but only n={stored} survived",
            acked[index]
        );
        assert_eq!(
            doc["version"].as_i64().unwrap(),
            stored + 1,
            "one version per accepted update"
        );
    }
    // After the restart repaired it, the log has only whole lines.
    let lines = check_log(dir.path());
    assert!(lines.iter().any(|l| l["name"] == "created"));
    // PROTOCOL §7: each run starts with a `server.started` marker, so a reader can close
    // the sessions the killed run left open: the devices were online when it died and no
    // `offline` was ever written for them.
    let markers: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i]["name"] == "server.started")
        .collect();
    assert_eq!(markers.len(), 2, "one marker per start");
    assert_eq!(
        markers[0], 0,
        "the first run's marker is the log's first line"
    );
    assert!(lines[markers[0]]["id"] == "" && lines[markers[1]]["id"] == "");
    let before_restart = &lines[..markers[1]];
    assert!(before_restart.iter().any(|l| l["name"] == "online"));
    assert!(before_restart.iter().all(|l| l["name"] != "offline"));
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_the_log_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let key = register(dir.path());
    let (child, addr) = spawn(dir.path());
    let http = http_client();
    for i in 0..50 {
        let resp = http
            .post(format!("http://{addr}/api/v2/devices"))
            .bearer_auth(&key)
            .body(json!({"id": format!("dev{i}")}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "graceful exit after SIGTERM");
    let lines = check_log(dir.path());
    let created = lines.iter().filter(|l| l["name"] == "created").count();
    assert_eq!(
        created, 50,
        "every notification emitted before SIGTERM is in the log"
    );
}

#[test]
fn a_bad_config_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herd.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\nrpc_timeout = 5\n").unwrap();
    let out = Command::new(BIN)
        .args([
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            dir.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("herd.toml") && stderr.contains("rpc_timeout"),
        "{stderr}"
    );
    let out = Command::new(BIN)
        .args([
            "--config",
            dir.path().join("missing.toml").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

/// PROTOCOL §5 on SIGTERM: the server ends device sessions first and closes the notify
/// streams after, so a live consumer sees every device's `offline`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_consumers_see_every_device_go_offline() {
    let dir = tempfile::tempdir().unwrap();
    let key = register(dir.path());
    let (child, addr) = spawn(dir.path());
    let http = http_client();
    let mut devices = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for i in 0..200 {
        let body: Value = http
            .post(format!("http://{addr}/api/v2/devices"))
            .bearer_auth(&key)
            .body(json!({"name": format!("d{i}")}).to_string())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = body["token"].as_str().unwrap().to_string();
        ids.insert(body["id"].as_str().unwrap().to_string());
        let (ws, _) = tokio_tungstenite::connect_async(format!(
            "ws://{addr}/api/v2/rpc?access_token={token}"
        ))
        .await
        .unwrap();
        devices.push(ws);
    }
    let (mut consumer, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/api/v2/notify?access_token={key}"))
            .await
            .unwrap();
    // Every device is online before the signal.
    let health = format!("http://{addr}/healthz");
    let deadline = tokio::time::Instant::now() + WAIT;
    while http
        .get(&health)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["devices_online"]
        != 200
    {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let mut offline = std::collections::HashSet::new();
    loop {
        match tokio::time::timeout(WAIT, consumer.next())
            .await
            .expect("the stream ends")
        {
            Some(Ok(Message::Text(text))) => {
                let event: Value = serde_json::from_str(&text).unwrap();
                if event["name"] == "offline" {
                    offline.insert(event["id"].as_str().unwrap().to_string());
                }
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => {}
        }
    }
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        offline.len(),
        ids.len(),
        "offline reached the consumer for every device"
    );
    drop(devices);
}

/// Two servers on one data directory would interleave one notification.log and contend
/// for one store: the second is refused while the first runs, and starts once it stopped.
#[tokio::test]
async fn a_second_server_on_the_same_data_directory_is_refused() {
    let mut server = TestServer::start().await;
    let settings = server.settings();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = herd_server::Server::start(settings.clone(), listener)
        .await
        .err()
        .expect("refused");
    assert!(
        refused
            .to_string()
            .contains("another herd-server is using the data directory"),
        "{refused:#}"
    );
    // The first one was not disturbed, and after it stops the directory is free.
    let (status, _) = server.call("GET", "/devices", None).await;
    assert_eq!(status, 200);
    server.restart().await;
    let (status, _) = server.call("GET", "/devices", None).await;
    assert_eq!(status, 200);
    server.shutdown().await;
}
