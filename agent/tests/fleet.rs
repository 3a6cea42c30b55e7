//! Fleet mode against the real server: N devices registered through REST come online,
//! stay online across a server restart, and a rerun reuses their tokens; they pull
//! firmware over HTTP (PROTOCOL §10.3), a named set of them fails updates, and push-only
//! fleets answer like the mDash device library.

mod common;

use common::{
    named_image, quick_download, quick_link, sha256_hex, subscribed, wait_connect_report, Faults,
    ImageServer, TestServer, WAIT,
};
use firmware_core::ota::OtaMethods;
use herd_agent::fleet::{Behaviour, Fleet, FleetOptions};
use herd_agent::runner::Command;
use herd_client::NotifyEvent;
use serde_json::{json, Value};

fn options(server: &TestServer, dir: &std::path::Path, count: usize) -> FleetOptions {
    FleetOptions {
        link: quick_link(),
        behaviour: Behaviour::idle(),
        download: quick_download(),
        ..FleetOptions::new(&server.url(), &server.admin_key, count, dir.into())
    }
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[tokio::test]
async fn fleet_comes_online_and_survives_a_server_restart() {
    let mut server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let count = 12;
    let fleet = Fleet::start(options(&server, dir.path(), count))
        .await
        .expect("fleet starts");
    within("all devices online", fleet.wait_online(count)).await;
    let listed = server.client.devices().await.expect("devices");
    assert_eq!(listed.len(), count);
    assert!(listed.iter().all(|d| d.name.starts_with("sim-")));

    // Each simulated device is the real engine: a delta reaches its light.
    let first = fleet.devices()[0].id.clone();
    server
        .client
        .update_shadow(&first, &json!({"state": {"desired": {"on": true}}}))
        .await
        .expect("shadow update");
    within(
        "the simulated light on",
        fleet.wait_for(|s| s.lights_on == 1),
    )
    .await;
    let info = server
        .rpc(&first, "Sys.GetInfo", json!({}))
        .await
        .expect("Sys.GetInfo");
    assert_eq!(info["app"], "herd-light");

    server.stop().await;
    within("all devices offline", fleet.wait_offline(0)).await;
    server.start_again().await;
    within("all devices back", fleet.wait_online(count)).await;
    assert!(fleet.stats().connects >= 2 * count as u64);

    fleet.shutdown().await;
    // A rerun reuses the remembered tokens instead of registering new devices.
    let fleet = Fleet::start(options(&server, dir.path(), count))
        .await
        .expect("fleet restarts");
    within("rerun online", fleet.wait_online(count)).await;
    assert_eq!(server.client.devices().await.expect("devices").len(), count);
    fleet.shutdown().await;
}

#[tokio::test]
async fn behaviour_switches_lights_and_a_fraction_fails_updates() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let count = 6;
    let mut events = server.client.notify();
    subscribed(&mut events).await;
    let fleet = Fleet::start(FleetOptions {
        seed: 7,
        behaviour: Behaviour {
            // A simulated day in under ten seconds, with a switch per device per hour.
            speedup: 10_000.0,
            start_hour: Some(18.0),
            switches_per_day: 24.0,
            flaps_per_day: 0.0,
            reboots_per_day: 0.0,
            ota_failure_fraction: 1.0,
            ..Behaviour::default()
        },
        ..options(&server, dir.path(), count)
    })
    .await
    .expect("fleet starts");
    within("online", fleet.wait_online(count)).await;
    // Evening switches turn some lights on.
    within("a light switched on", fleet.wait_for(|s| s.lights_on > 0)).await;

    // Every device is set to fail updates here: the new image crashes and reverts.
    let id = fleet.devices()[2].id.clone();
    // Its connect report has reached the server, so the RPC proxy can reach it.
    wait_connect_report(&mut events, &id, |_| true).await;
    let image = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [1u8; 512]);
    server
        .rpc(&id, "OTA.Begin", json!({"size": 512, "commit_timeout": 60}))
        .await
        .expect("begin");
    server
        .rpc(&id, "OTA.Write", json!({"offset": 0, "data": image}))
        .await
        .expect("write");
    server.rpc(&id, "OTA.End", json!({})).await.expect("end");
    within(
        "the update to crash",
        fleet.wait_for(|s| s.ota_crashes == 1),
    )
    .await;
    within("back online", fleet.wait_online(count)).await;
    fleet
        .send(2, Command::Reboot)
        .await
        .expect("reboot command");
    fleet.shutdown().await;
}

#[tokio::test]
async fn flapping_and_rebooting_devices_come_back() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let count = 4;
    let fleet = Fleet::start(FleetOptions {
        seed: 3,
        behaviour: Behaviour {
            // Every device drops off or power-cycles several times a (simulated) minute.
            speedup: 1_000.0,
            switches_per_day: 0.0,
            flaps_per_day: 2_000.0,
            flap_seconds: [100.0, 300.0],
            reboots_per_day: 2_000.0,
            ota_failure_fraction: 0.0,
            ..Behaviour::default()
        },
        ..options(&server, dir.path(), count)
    })
    .await
    .expect("fleet starts");
    let busy = within(
        "flaps and reboots",
        fleet.wait_for(|s| s.reboots >= count as u64 && s.connects >= 3 * count as u64),
    )
    .await;
    assert!(busy.reboots >= count as u64, "{busy:?}");
    fleet.shutdown().await;
    let listed = server.client.devices().await.expect("devices");
    assert_eq!(listed.len(), count, "no device was registered twice");
}

fn ota(data: &Value) -> &Value {
    &data["shadow"]["state"]["reported"]["ota"]
}

#[tokio::test]
async fn fleet_devices_pull_firmware_and_the_named_ones_fail() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let count = 4;
    let mut events = server.client.notify();
    subscribed(&mut events).await;
    let fleet = Fleet::start(FleetOptions {
        seed: 5,
        behaviour: Behaviour {
            ota_failure_fraction: 0.5,
            ..Behaviour::idle()
        },
        ..options(&server, dir.path(), count)
    })
    .await
    .expect("fleet starts");
    within("online", fleet.wait_online(count)).await;
    // Exactly round(0.5 * 4) devices fail, and the fleet says which.
    let failing = fleet.failing_ids();
    assert_eq!(failing.len(), 2, "{failing:?}");
    let healthy = fleet
        .devices()
        .iter()
        .map(|d| d.id.clone())
        .find(|id| !failing.contains(id))
        .expect("a healthy device");
    let doomed = failing[0].clone();

    let image = named_image("2.0.0", 40_000);
    let sha = sha256_hex(&image);
    let files = ImageServer::start(
        image.clone(),
        Faults {
            cut_first_after: Some(15_000),
            ..Faults::default()
        },
    )
    .await;
    let ota_desired =
        json!({"firmware": sha, "url": files.url("/fw"), "sha256": sha, "size": image.len()});
    for id in [&healthy, &doomed] {
        server
            .client
            .update_shadow(id, &json!({"state": {"desired": {"ota": ota_desired}}}))
            .await
            .expect("shadow update");
    }

    // Both outcomes show in reported.ota (PROTOCOL §4.4), in whatever order they come.
    let (mut updated, mut reverted) = (None, None);
    let deadline = tokio::time::Instant::now() + WAIT;
    while updated.is_none() || reverted.is_none() {
        let event = tokio::time::timeout_at(deadline, events.next())
            .await
            .unwrap_or_else(|_| panic!("no outcome yet: {updated:?} {reverted:?}"))
            .expect("notify stream");
        let NotifyEvent::Notification(n) = event else {
            continue;
        };
        if n.name != "updated" {
            continue;
        }
        let report = ota(&n.data);
        if n.id == healthy && report["fw_id"] == sha.as_str() && report["status"] == 3 {
            updated = Some(n.data.clone());
        }
        if n.id == doomed && report["status"] == 2 && report["partition"] == 0 {
            reverted = Some(n.data.clone());
        }
    }
    let updated = updated.expect("updated");
    assert_eq!(ota(&updated)["fw_version"], "2.0.0");
    assert_eq!(ota(&updated)["partition"], 1);
    assert_eq!(ota(&updated)["is_committed"], true);
    assert_eq!(updated["shadow"]["state"]["delta"], json!({}), "{updated}");
    let reverted = reverted.expect("reverted");
    assert_eq!(ota(&reverted)["fw_version"], "1.0.0");
    let message = ota(&reverted)["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("reverted") && message.contains("crashed"),
        "{message}"
    );
    assert_eq!(fleet.stats().ota_crashes, 1);
    let requests = files.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.range.as_deref() == Some("bytes=15000-")),
        "the broken download resumed: {requests:?}"
    );
    fleet.shutdown().await;
}

#[tokio::test]
async fn push_only_fleets_answer_like_the_mdash_device_library() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut events = server.client.notify();
    subscribed(&mut events).await;
    let fleet = Fleet::start(FleetOptions {
        behaviour: Behaviour {
            ota_methods: OtaMethods::Push,
            ..Behaviour::idle()
        },
        ..options(&server, dir.path(), 1)
    })
    .await
    .expect("fleet starts");
    let id = fleet.devices()[0].id.clone();
    wait_connect_report(&mut events, &id, |_| true).await;
    let list = server
        .rpc(&id, "RPC.List", json!({}))
        .await
        .expect("RPC.List");
    let methods: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(Value::as_str)
        .filter(|m| m.starts_with("OTA."))
        .collect();
    assert_eq!(methods, ["OTA.Begin", "OTA.Write", "OTA.End"]);
    let error = server
        .rpc(&id, "OTA.Update", json!({"url": "/fw"}))
        .await
        .expect_err("no handler");
    assert_eq!(error.status(), Some(404), "{error}");

    // Pushed without offsets, as the mDash library's cloud does; committed on boot since no
    // OTA.Commit will come.
    let image = named_image("1.1.0", 2500);
    server
        .rpc(
            &id,
            "OTA.Begin",
            json!({"size": image.len(), "commit_timeout": 60}),
        )
        .await
        .expect("begin");
    for chunk in image.chunks(1024) {
        let data = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, chunk);
        server
            .rpc(&id, "OTA.Write", json!({"data": data}))
            .await
            .expect("write");
    }
    server.rpc(&id, "OTA.End", json!({})).await.expect("end");
    let reported =
        wait_connect_report(&mut events, &id, |r| r["ota"]["fw_version"] == "1.1.0").await;
    assert_eq!(reported["ota"]["is_committed"], true);
    assert_eq!(reported["ota"]["fw_id"], sha256_hex(&image));
    fleet.shutdown().await;
}
