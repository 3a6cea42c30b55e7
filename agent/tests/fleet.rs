//! Fleet mode against the real server: N devices registered through REST come online,
//! stay online across a server restart, and a rerun reuses their tokens.

mod common;

use common::{quick_link, subscribed, wait_connect_report, TestServer, WAIT};
use herd_agent::fleet::{Behaviour, Fleet, FleetOptions};
use herd_agent::runner::Command;
use serde_json::json;

fn options(server: &TestServer, dir: &std::path::Path, count: usize) -> FleetOptions {
    FleetOptions {
        link: quick_link(),
        behaviour: Behaviour::idle(),
        ..FleetOptions::new(&server.http(), &server.admin_key, count, dir.into())
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
    let mut events = server.notify();
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
