//! Rollouts (PROTOCOL §10.5, §10.6) against the real server and a simulated fleet: each
//! device is the real firmware engine on a real WebSocket.

use std::collections::HashMap;
use std::time::Duration;

use herd_agent::fleet::{Behaviour, Fleet, FleetHandle, FleetOptions};
use herd_agent::runner::{Command, LinkOptions};
use herd_testkit::{recv_json, TestServer, Ws};
use serde_json::{json, Value};

fn quick_link() -> LinkOptions {
    LinkOptions {
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        connect_timeout: Duration::from_secs(5),
        ..LinkOptions::default()
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
    let fleet = fleet_at(&server.base, &server.admin_key, dir, count, behaviour).await;
    // A device is online before the server has stored its Sys.GetInfo answer (PROTOCOL §3),
    // which the selections below match on; wait until every device's info is in.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, devices) = server.call("GET", "/devices", None).await;
        assert_eq!(status, 200, "{devices}");
        let described = devices
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["info"]["fw_version"].is_string())
            .count();
        if described >= count {
            return fleet;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {described} of {count} devices have their info stored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn fleet_at(
    base: &str,
    key: &str,
    dir: &std::path::Path,
    count: usize,
    behaviour: Behaviour,
) -> FleetHandle {
    let base = base.trim_end_matches("/api/v2").to_string();
    let fleet = Fleet::start(FleetOptions {
        link: quick_link(),
        behaviour,
        seed: 3,
        ..FleetOptions::new(&base, key, count, dir.into())
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

/// Every logged notification (PROTOCOL §7), read page by page through `POST /logs`.
async fn logged(server: &TestServer) -> Vec<Value> {
    let mut lines = Vec::new();
    let mut start = 0u64;
    loop {
        let resp = server
            .http
            .post(format!("{}/logs", server.base))
            .bearer_auth(&server.admin_key)
            .body(json!({"start": start, "limit": 10_000}).to_string())
            .send()
            .await
            .unwrap();
        let next: u64 = resp.headers()["x-herd-next-offset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let page: Vec<Value> = resp.json().await.unwrap();
        if page.is_empty() {
            return lines;
        }
        lines.extend(page);
        start = next;
    }
}

/// `ota.*` events of rollout `rollout`, counted by name and by device.
fn ota_counts(lines: &[Value], rollout: &str) -> HashMap<(String, String), usize> {
    let mut counts = HashMap::new();
    for line in lines {
        let name = line["name"].as_str().unwrap_or_default();
        if name.starts_with("ota.") && line["data"]["rollout"] == rollout {
            *counts
                .entry((name.to_string(), line["id"].as_str().unwrap().to_string()))
                .or_insert(0) += 1;
        }
    }
    counts
}

fn total(counts: &HashMap<(String, String), usize>, name: &str) -> usize {
    counts
        .iter()
        .filter(|((n, _), _)| n == name)
        .map(|(_, c)| c)
        .sum()
}

/// Polls the rollout until `done` says so.
async fn wait_rollout(
    server: &TestServer,
    id: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let (status, rollout) = server
            .call("GET", &format!("/rollouts/{id}?devices=1"), None)
            .await;
        assert_eq!(status, 200, "{rollout}");
        if done(&rollout) {
            return rollout;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rollout never got there: {rollout}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn quiet(rollout: &Value) -> bool {
    let c = &rollout["counters"];
    c["sending"] == 0 && c["rebooting"] == 0 && c["verifying"] == 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_halts_in_the_wave_where_failures_cross_the_threshold() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let count = 200;
    let behaviour = Behaviour {
        ota_failure_fraction: 0.05,
        ..Behaviour::idle()
    };
    let fleet = fleet(&server, dir.path(), count, behaviour).await;
    let failing: std::collections::HashSet<String> = fleet.failing_ids().into_iter().collect();
    assert_eq!(failing.len(), 10, "5 % of 200 devices fail their update");
    let firmware = upload(&server, sim_image("1.1.0", 2048)).await;
    let mut spec = json!({
        "firmware": firmware,
        "select": {"query": "name:sim-*"},
        "waves": [{"percent": 10}, {"percent": 30}, {"percent": 60}],
        "max_parallel": 20,
        "dry_run": true,
    });
    // The plan is fixed by the image and the device ids; where it puts the failing devices
    // says which threshold is crossed in which wave.
    let (status, planned) = server.call("POST", "/rollouts", Some(spec.clone())).await;
    assert_eq!(status, 200, "{planned}");
    let sizes: Vec<u64> = planned["waves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["size"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [20, 60, 120]);
    let failing_in = |wave: u64| {
        planned["devices"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["wave"] == wave && failing.contains(d["id"].as_str().unwrap()))
            .count() as f64
    };
    // The first wave with a failure crosses a threshold set at exactly its failure rate.
    let expected_wave = (0..3u64).find(|&w| failing_in(w) > 0.0).unwrap();
    let limit = failing_in(expected_wave) * 100.0 / sizes[expected_wave as usize] as f64;
    spec["dry_run"] = json!(false);
    spec["halt_when"] = json!({"failed_percent": limit});
    let (status, rollout) = server.call("POST", "/rollouts", Some(spec)).await;
    assert_eq!(status, 200, "{rollout}");
    let id = rollout["id"].as_str().unwrap().to_string();
    let (_, stored) = server
        .call("GET", &format!("/rollouts/{id}?devices=1"), None)
        .await;
    let order = |object: &Value| -> Vec<(String, u64)> {
        object["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["id"].as_str().unwrap().to_string(),
                    d["wave"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(
        order(&stored),
        order(&planned),
        "the stored plan is the dry run's"
    );
    server
        .call("POST", &format!("/rollouts/{id}/start"), None)
        .await;
    let finished = wait_rollout(&server, &id, Duration::from_secs(120), |r| {
        r["state"] != "running" && quiet(r)
    })
    .await;
    assert_eq!(finished["state"], "halted", "{finished}");
    assert_eq!(finished["current_wave"], expected_wave);
    assert!(
        finished["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("wave {expected_wave}")),
        "{}",
        finished["reason"]
    );
    let devices = finished["devices"].as_array().unwrap();
    for device in devices {
        let id_text = device["id"].as_str().unwrap();
        let state = device["state"].as_str().unwrap();
        if device["wave"].as_u64().unwrap() > expected_wave {
            assert_eq!(state, "pending", "later waves are untouched: {device}");
            assert_eq!(device["attempts"], 0);
        } else if failing.contains(id_text) && state != "pending" {
            assert_eq!(state, "reverted", "{device}");
            assert!(
                device["message"].as_str().unwrap().contains("reverted"),
                "{device}"
            );
        } else {
            assert!(["succeeded", "pending"].contains(&state), "{device}");
        }
    }
    // The counts in the rollout, in the events and per device agree.
    let counts = ota_counts(&logged(&server).await, &id);
    let counters = &finished["counters"];
    assert_eq!(
        total(&counts, "ota.success") as u64,
        counters["succeeded"].as_u64().unwrap()
    );
    assert_eq!(
        total(&counts, "ota.revert") as u64,
        counters["reverted"].as_u64().unwrap()
    );
    assert_eq!(
        total(&counts, "ota.failure") as u64,
        counters["failed"].as_u64().unwrap() + counters["timed_out"].as_u64().unwrap()
    );
    let started = devices
        .iter()
        .filter(|d| d["attempts"].as_u64().unwrap() > 0)
        .count();
    assert_eq!(
        total(&counts, "ota.begin"),
        started,
        "one ota.begin per device started"
    );
    for device in devices
        .iter()
        .filter(|d| d["wave"].as_u64().unwrap() > expected_wave)
    {
        assert!(!counts.contains_key(&(
            "ota.begin".to_string(),
            device["id"].as_str().unwrap().to_string()
        )));
    }
    // A finished rollout can be retried for the devices that did not make it.
    let (status, retry) = server
        .call("POST", &format!("/rollouts/{id}/retry"), None)
        .await;
    assert_eq!(status, 200, "{retry}");
    assert_eq!(retry["state"], "planned");
    let retried = retry["counters"]["total"].as_u64().unwrap();
    assert_eq!(
        retried,
        counters["reverted"].as_u64().unwrap() + counters["failed"].as_u64().unwrap()
    );
    fleet.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_lets_updates_under_way_finish_and_skips_the_rest() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let count = 12;
    let fleet = fleet(&server, dir.path(), count, Behaviour::idle()).await;
    let firmware = upload(&server, sim_image("1.1.0", 1024 * 1024)).await;
    // One device stays away and is waited for, so the rollout cannot end before the abort.
    fleet
        .send(0, Command::Offline(Duration::from_secs(300)))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), fleet.wait_offline(count - 1))
        .await
        .unwrap();
    let (_, rollout) = server
        .call(
            "POST",
            "/rollouts",
            Some(json!({"firmware": firmware, "select": {"query": ""}, "max_parallel": 2, "offline": {"wait_s": 600, "then": "keep_waiting"}})),
        )
        .await;
    let id = rollout["id"].as_str().unwrap().to_string();
    server
        .call("POST", &format!("/rollouts/{id}/start"), None)
        .await;
    // Abort once a few devices are through and others are mid-transfer.
    wait_rollout(&server, &id, Duration::from_secs(60), |r| {
        r["counters"]["succeeded"].as_u64().unwrap() >= 2
    })
    .await;
    let (status, aborted) = server
        .call("POST", &format!("/rollouts/{id}/abort"), None)
        .await;
    assert_eq!(status, 200, "{aborted}");
    assert_eq!(aborted["state"], "aborted");
    let (status, _) = server
        .call("POST", &format!("/rollouts/{id}/start"), None)
        .await;
    assert_eq!(status, 409, "an aborted rollout does not start again");
    let done = wait_rollout(&server, &id, Duration::from_secs(60), quiet).await;
    let counters = &done["counters"];
    assert_eq!(counters["pending"], 0);
    assert!(counters["skipped"].as_u64().unwrap() > 0, "{counters}");
    assert_eq!(
        counters["succeeded"].as_u64().unwrap() + counters["skipped"].as_u64().unwrap(),
        count as u64,
        "each device finished its update or was never touched: {counters}"
    );
    // No device is left half written: each runs a committed image, old or new.
    for device in done["devices"].as_array().unwrap() {
        let (_, shadow) = server
            .call(
                "GET",
                &format!("/devices/{}/shadow", device["id"].as_str().unwrap()),
                None,
            )
            .await;
        let ota = &shadow["state"]["reported"]["ota"];
        let version = if device["state"] == "succeeded" {
            "1.1.0"
        } else {
            "1.0.0"
        };
        assert_eq!(ota["fw_version"], version, "{device}: {ota}");
        assert_eq!(ota["is_committed"], true, "{device}: {ota}");
    }
    fleet.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_devices_are_waited_for_then_skipped_or_kept() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet(&server, dir.path(), 4, Behaviour::idle()).await;
    let firmware = upload(&server, sim_image("1.1.0", 2048)).await;
    let away = fleet.devices()[0].id.clone();
    let back_soon = fleet.devices()[1].id.clone();
    fleet
        .send(0, Command::Offline(Duration::from_secs(120)))
        .await
        .unwrap();
    fleet
        .send(1, Command::Offline(Duration::from_secs(3)))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), fleet.wait_offline(2))
        .await
        .unwrap();
    // The plan reads the server's view of who is offline, which follows the devices'.
    server.wait_online(&away, false).await;
    // Skip after one second offline.
    let (status, plan) = server
        .call(
            "POST",
            "/rollouts",
            Some(json!({"firmware": firmware, "select": {"ids": [away.clone()]}, "offline": {"wait_s": 1, "then": "skip"}, "dry_run": true})),
        )
        .await;
    assert_eq!(status, 200, "{plan}");
    assert!(
        plan["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains("offline")),
        "{plan}"
    );
    let (_, skipping) = server
        .call(
            "POST",
            "/rollouts",
            Some(json!({"firmware": firmware, "select": {"ids": [away.clone()]}, "offline": {"wait_s": 1, "then": "skip"}})),
        )
        .await;
    let skip_id = skipping["id"].as_str().unwrap().to_string();
    server
        .call("POST", &format!("/rollouts/{skip_id}/start"), None)
        .await;
    let done = wait_rollout(&server, &skip_id, Duration::from_secs(30), |r| {
        r["state"] == "completed"
    })
    .await;
    assert_eq!(done["devices"][0]["state"], "skipped");
    assert!(done["devices"][0]["message"]
        .as_str()
        .unwrap()
        .contains("offline"));
    // Keep waiting: the device that comes back is updated.
    let (_, keeping) = server
        .call(
            "POST",
            "/rollouts",
            Some(json!({"firmware": firmware, "select": {"ids": [back_soon.clone()]}, "offline": {"wait_s": 1, "then": "keep_waiting"}})),
        )
        .await;
    let keep_id = keeping["id"].as_str().unwrap().to_string();
    server
        .call("POST", &format!("/rollouts/{keep_id}/start"), None)
        .await;
    let done = wait_rollout(&server, &keep_id, Duration::from_secs(60), |r| {
        r["state"] == "completed"
    })
    .await;
    assert_eq!(done["devices"][0]["state"], "succeeded", "{done}");
    fleet.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_only_devices_and_pulling_devices_both_update() {
    let server = TestServer::start().await;
    // Devices that speak only OTA.Begin/Write/End, as the mDash device library does.
    let dir = tempfile::tempdir().unwrap();
    let push_only = fleet(
        &server,
        dir.path(),
        3,
        Behaviour {
            ota_methods: firmware_core::ota::OtaMethods::Push,
            ..Behaviour::idle()
        },
    )
    .await;
    let (_, methods) = server
        .call(
            "POST",
            &format!("/devices/{}/rpc/RPC.List", push_only.devices()[0].id),
            None,
        )
        .await;
    assert!(
        !methods.as_array().unwrap().contains(&json!("OTA.Commit")),
        "{methods}"
    );
    let firmware = upload(&server, sim_image("1.1.0", 3000)).await;
    let (_, rollout) = server
        .call(
            "POST",
            "/rollouts",
            Some(json!({"firmware": firmware, "select": {"query": ""}})),
        )
        .await;
    let id = rollout["id"].as_str().unwrap().to_string();
    server
        .call("POST", &format!("/rollouts/{id}/start"), None)
        .await;
    let done = wait_rollout(&server, &id, Duration::from_secs(60), |r| {
        r["state"] == "completed"
    })
    .await;
    assert_eq!(done["counters"]["succeeded"], 3, "{done}");
    push_only.shutdown().await;

    // Devices that fetch the image themselves from the image endpoint (PROTOCOL §10.3).
    let dir = tempfile::tempdir().unwrap();
    let pulling = fleet_at(
        &server.base,
        &server.admin_key,
        dir.path(),
        3,
        Behaviour::idle(),
    )
    .await;
    let firmware = upload(&server, sim_image("1.2.0", 40_000)).await;
    let ids: Vec<String> = pulling.devices().iter().map(|d| d.id.clone()).collect();
    let (status, rollout) = server
        .call(
            "POST",
            "/rollouts",
            Some(json!({"firmware": firmware, "select": {"ids": ids}, "delivery": "pull"})),
        )
        .await;
    assert_eq!(status, 200, "{rollout}");
    let id = rollout["id"].as_str().unwrap().to_string();
    server
        .call("POST", &format!("/rollouts/{id}/start"), None)
        .await;
    let done = wait_rollout(&server, &id, Duration::from_secs(60), |r| {
        r["state"] == "completed"
    })
    .await;
    assert_eq!(done["counters"]["succeeded"], 3, "{done}");
    for id in &ids {
        let (_, device) = server.call("GET", &format!("/devices/{id}"), None).await;
        assert_eq!(device["info"]["fw_version"], "1.2.0");
        assert_eq!(
            device["info"]["fw_id"], firmware,
            "Herd devices report the image's SHA-256"
        );
    }
    pulling.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn bad_rollouts_get_clear_errors() {
    let server = TestServer::start().await;
    let firmware = upload(&server, sim_image("1.1.0", 1000)).await;
    let cases = [
        (
            json!({"firmware": "f".repeat(64), "select": {"query": ""}}),
            404,
            "firmware",
        ),
        (
            json!({"firmware": firmware, "select": {"query": ""}}),
            400,
            "no device",
        ),
        (
            json!({"firmware": firmware, "select": {"ids": ["nope"]}}),
            404,
            "nope",
        ),
        (json!({"firmware": firmware}), 400, "select"),
        (
            json!({"firmware": firmware, "select": {"query": ""}, "halt_when": {"failed_pct": 3}}),
            400,
            "failed_pct",
        ),
        (
            json!({"firmware": firmware, "select": {"query": ""}, "waves": [{"percent": 70}, {"percent": 70}]}),
            400,
            "100",
        ),
        (json!("not a spec"), 400, "invalid rollout spec"),
    ];
    for (spec, status, says) in cases {
        let (got, body) = server.call("POST", "/rollouts", Some(spec.clone())).await;
        assert_eq!(got, status, "{spec}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{spec}: {message}");
    }
    let (status, _) = server.call("GET", "/rollouts/nope", None).await;
    assert_eq!(status, 404);
    let (status, _) = server.call("POST", "/rollouts/nope/start", None).await;
    assert_eq!(status, 404);
    // An image a planned rollout uses cannot be deleted; another user sees neither.
    let (_, token) = server.create_device("lamp").await;
    let mut device = server
        .device_with_info(
            &token,
            json!({"app": "herd-light", "fw_version": "1.0.0", "arch": "sim"}),
        )
        .await;
    let (status, planned) = server
        .call(
            "POST",
            "/rollouts",
            Some(json!({"firmware": firmware, "select": {"query": "name:lamp"}})),
        )
        .await;
    assert_eq!(status, 200, "{planned}");
    let (status, body) = server
        .call("DELETE", &format!("/firmware/{firmware}"), None)
        .await;
    assert_eq!(status, 409, "{body}");
    let bob = server.add_user("bob").await;
    let (status, _) = server
        .call_as(
            &bob,
            "GET",
            &format!("/rollouts/{}", planned["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(
        server.call_as(&bob, "GET", "/rollouts", None).await.1,
        json!([])
    );
    let (status, _) = server
        .call_as(
            &bob,
            "POST",
            "/rollouts",
            Some(json!({"firmware": firmware, "select": {"query": ""}})),
        )
        .await;
    assert_eq!(status, 404, "another user's image is not there for bob");
    device.ws.close(None).await.ok();
    server.shutdown().await;
}

/// Lines of `notification.log` on disk that whole lines have reached so far.
fn log_on_disk(dir: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join("notification.log")).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_survives_sigkill_mid_wave() {
    const BIN: &str = env!("CARGO_BIN_EXE_herd-server");
    let dir = tempfile::tempdir().unwrap();
    let key = herd_testkit::register_binary(BIN, dir.path());
    let (mut child, addr) = herd_testkit::spawn_binary(BIN, dir.path(), "127.0.0.1:0");
    let base = format!("http://{addr}/api/v2");
    let http = herd_testkit::http_client();
    let count = 40;
    let max_parallel = 4;
    let fleet_dir = tempfile::tempdir().unwrap();
    let fleet = fleet_at(&base, &key, fleet_dir.path(), count, Behaviour::idle()).await;
    let call = |method: reqwest::Method, path: String, body: Option<Value>| {
        let mut request = http
            .request(method, format!("{base}{path}"))
            .bearer_auth(&key);
        if let Some(body) = body {
            request = request.body(body.to_string());
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let image = sim_image("1.1.0", 512 * 1024);
    let (status, firmware) = {
        let response = http
            .post(format!("{base}/firmware"))
            .bearer_auth(&key)
            .body(image)
            .send()
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json::<Value>().await.unwrap(),
        )
    };
    assert_eq!(status, 200);
    let spec = json!({
        "firmware": firmware["id"],
        "select": {"query": ""},
        "waves": [{"percent": 25}, {"percent": 75}],
        "max_parallel": max_parallel,
    });
    let (status, rollout) = call(reqwest::Method::POST, "/rollouts".into(), Some(spec)).await;
    assert_eq!(status, 200, "{rollout}");
    let id = rollout["id"].as_str().unwrap().to_string();
    call(reqwest::Method::POST, format!("/rollouts/{id}/start"), None).await;

    // Kill without warning once the second wave is under way.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let begun = log_on_disk(dir.path())
            .iter()
            .filter(|l| l["name"] == "ota.begin" && l["data"]["rollout"] == id)
            .count();
        if begun >= count / 4 + 4 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rollout never got going"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // A fresh process on the same port; the fleet finds it by itself.
    let (mut child, _) = herd_testkit::spawn_binary(BIN, dir.path(), &addr);
    let finished = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        loop {
            let (status, rollout) = call(
                reqwest::Method::GET,
                format!("/rollouts/{id}?devices=1"),
                None,
            )
            .await;
            if status == 200 && rollout["state"] == "completed" {
                break rollout;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the rollout did not finish: {rollout}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert_eq!(
        finished["counters"]["succeeded"], count,
        "{}",
        finished["counters"]
    );
    for device in finished["devices"].as_array().unwrap() {
        let (_, object) = call(
            reqwest::Method::GET,
            format!("/devices/{}", device["id"].as_str().unwrap()),
            None,
        )
        .await;
        assert_eq!(object["info"]["fw_version"], "1.1.0", "{device}");
    }
    // No device got the image twice: only transfers cut by the kill were sent again, and
    // none after it had succeeded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let lines = log_on_disk(dir.path());
        if lines
            .iter()
            .any(|l| l["name"] == "rollout.completed" && l["id"] == id)
        {
            break lines;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rollout.completed never reached the log"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut resent = 0;
    for device in finished["devices"].as_array().unwrap() {
        let device_id = device["id"].as_str().unwrap();
        let events: Vec<&str> = lines
            .iter()
            .filter(|l| l["id"] == device_id && l["data"]["rollout"] == id)
            .map(|l| l["name"].as_str().unwrap())
            .filter(|name| ["ota.begin", "ota.success"].contains(name))
            .collect();
        let begins = events.iter().filter(|n| **n == "ota.begin").count();
        let successes = events.iter().filter(|n| **n == "ota.success").count();
        assert!((1..=2).contains(&begins), "{device_id}: {events:?}");
        assert!(successes <= 1, "{device_id}: {events:?}");
        if let Some(success) = events.iter().position(|n| *n == "ota.success") {
            assert!(
                !events[success..].contains(&"ota.begin"),
                "{device_id} was sent the image after it took it: {events:?}"
            );
        }
        if begins == 2 {
            resent += 1;
        }
    }
    assert!(
        resent <= max_parallel,
        "only transfers under way at the kill start again: {resent}"
    );
    fleet.shutdown().await;
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_with_an_update_key_take_only_signed_images() {
    use base64::Engine as _;
    use sha2::Digest as _;
    let server = TestServer::start().await;
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let public = base64::engine::general_purpose::STANDARD.encode(key.verifying_key().to_bytes());
    let dir = tempfile::tempdir().unwrap();
    let base = server.base.trim_end_matches("/api/v2").to_string();
    let fleet = Fleet::start(FleetOptions {
        link: quick_link(),
        behaviour: Behaviour::idle(),
        update_pubkey: Some(public),
        ..FleetOptions::new(&base, &server.admin_key, 2, dir.path().into())
    })
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(60), fleet.wait_online(2))
        .await
        .unwrap();
    let ids: Vec<String> = fleet.devices().iter().map(|d| d.id.clone()).collect();
    let rollout = |firmware: String, delivery: &'static str| {
        let ids = ids.clone();
        let server = &server;
        async move {
            let (status, rollout) = server
                .call(
                    "POST",
                    "/rollouts",
                    Some(
                        json!({"firmware": firmware, "select": {"ids": ids}, "delivery": delivery}),
                    ),
                )
                .await;
            assert_eq!(status, 200, "{rollout}");
            let id = rollout["id"].as_str().unwrap().to_string();
            server
                .call("POST", &format!("/rollouts/{id}/start"), None)
                .await;
            wait_rollout(server, &id, Duration::from_secs(60), |r| {
                r["state"] == "completed"
            })
            .await
        }
    };
    // Unsigned: refused, pushed or pulled, and the devices say why (PROTOCOL §10.4).
    let unsigned = upload(&server, sim_image("1.1.0", 3000)).await;
    for delivery in ["push", "pull"] {
        let done = rollout(unsigned.clone(), delivery).await;
        for device in done["devices"].as_array().unwrap() {
            assert_eq!(device["state"], "failed", "{delivery}: {device}");
            assert!(
                device["message"]
                    .as_str()
                    .unwrap()
                    .contains("signature missing"),
                "{delivery}: {device}"
            );
        }
    }
    let signed_upload = |image: Vec<u8>| {
        let digest = sha2::Sha256::digest(&image);
        let signature = base64::engine::general_purpose::STANDARD
            .encode(ed25519_dalek::Signer::sign(&key, &digest).to_bytes());
        let server = &server;
        async move {
            let resp = server
                .http
                .post(format!("{}/firmware", server.base))
                .query(&[("signature", signature)])
                .bearer_auth(&server.admin_key)
                .body(image)
                .send()
                .await
                .unwrap();
            let firmware: Value = resp.json().await.unwrap();
            assert_eq!(firmware["signed"], true);
            firmware["id"].as_str().unwrap().to_string()
        }
    };
    // Signed but too large for the slot: refused before a byte is written.
    let huge = signed_upload(sim_image("1.1.1", 1024 * 1024 + 1)).await;
    let done = rollout(huge, "push").await;
    assert!(
        done["devices"][0]["message"]
            .as_str()
            .unwrap()
            .contains("does not fit"),
        "{done}"
    );
    // Signed with the key the devices hold: taken, pushed and pulled alike.
    for (version, delivery) in [("1.2.0", "push"), ("1.3.0", "pull")] {
        let firmware = signed_upload(sim_image(version, 3000)).await;
        let done = rollout(firmware, delivery).await;
        assert_eq!(done["counters"]["succeeded"], 2, "{delivery}: {done}");
    }
    fleet.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_rollout_starts_nothing_new_until_resumed() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let count = 10;
    let fleet = fleet(&server, dir.path(), count, Behaviour::idle()).await;
    let firmware = upload(&server, sim_image("1.1.0", 512 * 1024)).await;
    let (_, rollout) = server
        .call(
            "POST",
            "/rollouts",
            Some(json!({"firmware": firmware, "select": {"query": ""}, "max_parallel": 1})),
        )
        .await;
    let id = rollout["id"].as_str().unwrap().to_string();
    let (status, body) = server
        .call("POST", &format!("/rollouts/{id}/pause"), None)
        .await;
    assert_eq!(status, 409, "a planned rollout cannot be paused: {body}");
    server
        .call("POST", &format!("/rollouts/{id}/start"), None)
        .await;
    wait_rollout(&server, &id, Duration::from_secs(60), |r| {
        r["counters"]["succeeded"].as_u64().unwrap() >= 1
    })
    .await;
    let (status, paused) = server
        .call("POST", &format!("/rollouts/{id}/pause"), None)
        .await;
    assert_eq!((status, paused["state"].as_str()), (200, Some("paused")));
    // What was under way finishes; nothing else starts.
    let settled = wait_rollout(&server, &id, Duration::from_secs(60), quiet).await;
    let done_while_paused = settled["counters"]["succeeded"].as_u64().unwrap();
    assert!(
        settled["counters"]["pending"].as_u64().unwrap() > 0,
        "{settled}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, later) = server.call("GET", &format!("/rollouts/{id}"), None).await;
    assert_eq!(
        later["counters"]["succeeded"].as_u64().unwrap(),
        done_while_paused,
        "{later}"
    );
    assert_eq!(later["state"], "paused");
    let (status, resumed) = server
        .call("POST", &format!("/rollouts/{id}/resume"), None)
        .await;
    assert_eq!((status, resumed["state"].as_str()), (200, Some("running")));
    let done = wait_rollout(&server, &id, Duration::from_secs(60), |r| {
        r["state"] == "completed"
    })
    .await;
    assert_eq!(done["counters"]["succeeded"], count);
    let names: Vec<String> = logged(&server)
        .await
        .iter()
        .filter(|l| l["id"] == id)
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect();
    for name in [
        "rollout.planned",
        "rollout.started",
        "rollout.wave",
        "rollout.paused",
        "rollout.resumed",
        "rollout.completed",
    ] {
        assert!(
            names.contains(&name.to_string()),
            "{name} missing from {names:?}"
        );
    }
    fleet.shutdown().await;
    server.shutdown().await;
}
