//! Rollouts (PROTOCOL §10.5, §10.6) against the real server and a simulated fleet: each
//! device is the real firmware engine on a real WebSocket.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{recv_json, TestServer, Ws};
use herd_agent::fleet::{Behaviour, Fleet, FleetHandle, FleetOptions};
use herd_agent::runner::LinkOptions;
use serde_json::{json, Value};

fn quick_link() -> LinkOptions {
    LinkOptions {
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        connect_timeout: Duration::from_secs(5),
    }
}

/// A simulated-fleet image: the header names it, the rest is filler.
fn sim_image(version: &str, size: usize) -> Vec<u8> {
    let mut image = format!(
        "HERD-IMAGE {{\"app\":\"herd-light\",\"fw_version\":\"{version}\",\"arch\":\"sim\"}}\n"
    )
    .into_bytes();
    image.resize(size, b'.');
    image
}

async fn upload(server: &TestServer, image: Vec<u8>) -> String {
    let resp = server
        .http
        .post(format!("{}/firmware", server.base))
        .bearer_auth(&server.admin_key)
        .body(image)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let fw: Value = resp.json().await.unwrap();
    fw["id"].as_str().unwrap().to_string()
}

async fn fleet(
    server: &TestServer,
    dir: &std::path::Path,
    count: usize,
    behaviour: Behaviour,
) -> FleetHandle {
    let base = server.base.trim_end_matches("/api/v2").to_string();
    let fleet = Fleet::start(FleetOptions {
        link: quick_link(),
        behaviour,
        seed: 3,
        ..FleetOptions::new(&base, &server.admin_key, count, dir.into())
    })
    .await
    .expect("fleet starts");
    tokio::time::timeout(Duration::from_secs(60), fleet.wait_online(count))
        .await
        .expect("fleet online");
    fleet
}

/// Waits on the notify stream for `rollout.<name>` of rollout `id`.
async fn rollout_event(events: &mut Ws, id: &str, names: &[&str], limit: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let event = tokio::time::timeout_at(deadline, recv_json(events))
            .await
            .unwrap_or_else(|_| panic!("no {names:?} for rollout {id}"));
        if event["id"] == id
            && names
                .iter()
                .any(|n| event["name"] == format!("rollout.{n}"))
        {
            return event;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_updates_the_fleet_in_waves() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let count = 20;
    let fleet = fleet(&server, dir.path(), count, Behaviour::idle()).await;
    let firmware = upload(&server, sim_image("1.1.0", 4096)).await;
    let mut events = server.notify(&server.admin_key).await;
    let spec = json!({
        "name": "lights 1.1.0",
        "firmware": firmware,
        "select": {"query": "fw:1.0.0 name:sim-*"},
        "waves": [{"percent": 25, "soak_s": 1}, {"percent": 75, "soak_s": 0}],
        "max_parallel": 5,
    });
    // The dry run shows the plan and stores nothing.
    let (status, plan) = server
        .call("POST", "/rollouts", Some(json!({"dry_run": true, "firmware": firmware, "select": {"query": "fw:1.0.0"}, "waves": [{"percent": 25}, {"percent": 75}]})))
        .await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["waves"][0]["size"], 5);
    assert_eq!(plan["waves"][1]["size"], 15);
    assert_eq!(plan["devices"].as_array().unwrap().len(), count);
    assert_eq!(server.call("GET", "/rollouts", None).await.1, json!([]));

    let (status, rollout) = server.call("POST", "/rollouts", Some(spec)).await;
    assert_eq!(status, 200, "{rollout}");
    assert_eq!(rollout["state"], "planned");
    let id = rollout["id"].as_str().unwrap().to_string();
    // The same spec plans the same waves.
    let (_, again) = server
        .call("GET", &format!("/rollouts/{id}?devices=1"), None)
        .await;
    let wave_of: HashMap<String, u64> = again["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["id"].as_str().unwrap().to_string(),
                d["wave"].as_u64().unwrap(),
            )
        })
        .collect();
    for device in plan["devices"].as_array().unwrap() {
        assert_eq!(
            wave_of[device["id"].as_str().unwrap()],
            device["wave"].as_u64().unwrap()
        );
    }

    let (status, started) = server
        .call("POST", &format!("/rollouts/{id}/start"), None)
        .await;
    assert_eq!(status, 200, "{started}");
    assert_eq!(started["state"], "running");
    let done = rollout_event(
        &mut events,
        &id,
        &["completed", "halted"],
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(done["name"], "rollout.completed", "{done}");
    if done["data"]["succeeded"] != count {
        let (_, detail) = server
            .call("GET", &format!("/rollouts/{id}?devices=1"), None)
            .await;
        let bad: Vec<&Value> = detail["devices"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["state"] != "succeeded")
            .collect();
        let (_, log) = server
            .call("POST", "/logs", Some(json!({"limit": 10000})))
            .await;
        for device in &bad {
            eprintln!("{device}");
            for line in log
                .as_array()
                .unwrap()
                .iter()
                .filter(|l| l["id"] == device["id"])
            {
                let mut line = line.clone();
                if line["name"] == "updated" {
                    line["data"] =
                        json!({"info": line["data"]["info"], "online": line["data"]["online"]});
                }
                eprintln!("  {line}");
            }
        }
        panic!("not all succeeded");
    }
    let (_, finished) = server
        .call("GET", &format!("/rollouts/{id}?devices=1"), None)
        .await;
    assert_eq!(finished["state"], "completed");
    assert_eq!(finished["counters"]["succeeded"], count);
    for device in finished["devices"].as_array().unwrap() {
        assert_eq!(device["state"], "succeeded", "{device}");
        let info = server
            .call(
                "GET",
                &format!("/devices/{}", device["id"].as_str().unwrap()),
                None,
            )
            .await
            .1;
        assert_eq!(info["info"]["fw_version"], "1.1.0");
    }
    // Nothing left to update: a second rollout selects no device.
    let (status, body) = server
        .call(
            "POST",
            "/rollouts",
            Some(json!({"firmware": firmware, "select": {"query": ""}})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already run 1.1.0"),
        "{body}"
    );
    // The image may not go while... it is finished now, so it may.
    fleet.shutdown().await;
    server.shutdown().await;
}
