//! The agent against the real server, in-process: register, connect, report, delta, config
//! persistence, factory reset, reboot and firmware update (PROTOCOL §3, §4, §8, §9).

mod common;

use base64::Engine as _;
use common::*;
use herd_agent::runner::Command;
use serde_json::{json, Value};

fn reported_on(data: &Value) -> Option<bool> {
    data["shadow"]["state"]["reported"]["on"].as_bool()
}

#[tokio::test]
async fn delta_drives_the_light_and_is_reported() {
    let Connected {
        server,
        id,
        token: _,
        data_dir: _data_dir,
        mut events,
        mut agent,
    } = connected_agent().await;

    // On connect the device reports its light and firmware (PROTOCOL §4.4).
    wait_event(&mut events, &id, "updated", |d| {
        reported_on(d) == Some(false)
    })
    .await;
    let shadow = server.client.shadow(&id).await.expect("shadow");
    assert_eq!(shadow["state"]["reported"]["ota"]["app"], "herd-agent");
    assert_eq!(shadow["state"]["reported"]["ota"]["is_committed"], true);
    let device = server.client.device(&id).await.expect("device");
    assert!(device.online);

    // REST desired change -> Shadow.Delta -> light -> reported (PROTOCOL §4.3).
    server
        .client
        .update_shadow(&id, &json!({"state": {"desired": {"on": true}}}))
        .await
        .expect("update shadow");
    wait_status(&mut agent, "light on", |s| s.light_on).await;
    wait_event(&mut events, &id, "updated", |d| {
        reported_on(d) == Some(true)
    })
    .await;
    let shadow = server.client.shadow(&id).await.expect("shadow");
    assert_eq!(shadow["state"]["delta"], json!({}));

    // A person switches the light off at the wall: the device reports it.
    agent.send(Command::SetLight(false)).await.expect("send");
    wait_event(&mut events, &id, "updated", |d| {
        reported_on(d) == Some(false)
    })
    .await;

    // The server called Sys.GetInfo on connect and stored it (PROTOCOL §3).
    let info = server
        .rpc(&id, "Sys.GetInfo", json!({}))
        .await
        .expect("info");
    assert_eq!(info["app"], "herd-agent");
    assert!(info["ram_size"].as_u64().is_some());
    agent.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn saved_config_survives_an_agent_restart() {
    let Connected {
        server,
        id,
        token,
        data_dir,
        mut events,
        agent,
    } = connected_agent().await;

    let set = server
        .rpc(
            &id,
            "Config.Set",
            json!({"config": {"device": {"name": "hall"}, "debug": {"level": 3}}}),
        )
        .await
        .expect("Config.Set");
    assert_eq!(set, json!({"saved": false}));
    let save = server
        .rpc(&id, "Config.Save", json!({}))
        .await
        .expect("Config.Save");
    assert_eq!(save, json!({"saved": true}));
    let unsaved = server
        .rpc(
            &id,
            "Config.Set",
            json!({"key": "smartlight.pin", "value": 4}),
        )
        .await
        .expect("Config.Set");
    assert_eq!(unsaved, json!({"saved": false}));
    agent.shutdown().await.expect("clean shutdown");

    // The user layer is a JSON file, written atomically.
    let user: Value = serde_json::from_slice(
        &std::fs::read(data_dir.path().join("config/user.json")).expect("user layer"),
    )
    .expect("valid JSON");
    assert_eq!(user["device"]["name"], "hall");

    // Restart without --server/--token: both were kept in the factory layer.
    let mut options = agent_options(&server, &token, data_dir.path().into());
    options.server = None;
    options.token = None;
    let agent = start_agent(options).await;
    wait_connect_report(&mut events, &id, |_| true).await;
    let config = server
        .rpc(&id, "Config.Get", json!({}))
        .await
        .expect("Config.Get");
    assert_eq!(config["device"]["name"], "hall");
    assert_eq!(config["debug"]["level"], 3);
    assert_eq!(config["smartlight"]["pin"], 8, "unsaved changes are gone");
    agent.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn factory_reset_keeps_the_factory_layer() {
    let Connected {
        server,
        id,
        token,
        data_dir,
        mut events,
        mut agent,
    } = connected_agent().await;
    server
        .rpc(
            &id,
            "Config.Set",
            json!({"config": {"device": {"name": "hall"}, "provision": {"button": {"hold_ms": 200}}}, "save": true}),
        )
        .await
        .expect("Config.Set");

    // Hold the button: the user layer goes, the server and token stay.
    agent.send(Command::Button(true)).await.expect("press");
    wait_status(&mut agent, "reboot after reset", |s| s.boots == 2).await;
    agent.send(Command::Button(false)).await.expect("release");
    wait_status(&mut agent, "reconnected", |s| s.boots == 2 && s.connected).await;
    wait_connect_report(&mut events, &id, |_| true).await;
    assert!(!data_dir.path().join("config/user.json").exists());
    let config = server
        .rpc(&id, "Config.Get", json!({}))
        .await
        .expect("Config.Get");
    assert_eq!(config["device"]["name"], "");
    assert_eq!(config["provision"]["button"]["hold_ms"], 3000);
    assert_eq!(config["dash"]["server"], server.socket_url());
    assert_eq!(config["dash"]["token"], token);
    agent.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn sys_reboot_reconnects() {
    let Connected {
        server,
        id,
        token: _,
        data_dir: _data_dir,
        mut events,
        mut agent,
    } = connected_agent().await;
    let reply = server
        .rpc(&id, "Sys.Reboot", json!({"delay_ms": 50}))
        .await
        .expect("Sys.Reboot");
    assert_eq!(reply, Value::Null);
    // Both events arrive, but not necessarily in this order: the server may announce the
    // new connection before it finishes recording the end of the old one.
    let (mut offline, mut online) = (false, false);
    while !(offline && online) {
        match tokio::time::timeout(WAIT, events.next()).await {
            Ok(Some(herd_client::NotifyEvent::Notification(n))) if n.id == id => {
                offline |= n.name == "offline";
                online |= n.name == "online";
            }
            Ok(Some(_)) => {}
            other => panic!("no offline/online pair: {other:?}"),
        }
    }
    wait_connect_report(&mut events, &id, |_| true).await;
    let status = wait_status(&mut agent, "second boot", |s| s.boots == 2 && s.connected).await;
    assert_eq!(status.connections, 2);
    agent.shutdown().await.expect("clean shutdown");
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Uploads `image` through the REST RPC proxy (PROTOCOL §6, §8); returns the End result.
async fn upload(
    server: &TestServer,
    id: &str,
    image: &[u8],
    commit_timeout: u64,
) -> Result<Value, herd_client::Error> {
    let begin = server
        .rpc(
            id,
            "OTA.Begin",
            json!({"size": image.len(), "commit_timeout": commit_timeout}),
        )
        .await?;
    assert_eq!(begin, true);
    for (n, chunk) in image.chunks(1024).enumerate() {
        server
            .rpc(
                id,
                "OTA.Write",
                json!({"offset": n * 1024, "data": b64(chunk)}),
            )
            .await?;
    }
    server.rpc(id, "OTA.End", json!({})).await
}

fn script_image(version: &str) -> Vec<u8> {
    let mut image = format!("#!/bin/sh\n# herd-agent test image {version}\n").into_bytes();
    image.extend(std::iter::repeat_n(b'#', 3000));
    image.push(b'\n');
    image
}

#[tokio::test]
async fn firmware_update_commit_and_revert() {
    let Connected {
        server,
        id,
        token: _,
        data_dir,
        mut events,
        mut agent,
    } = connected_agent().await;

    // Something that is not an executable never becomes a bootable slot.
    let error = upload(&server, &id, &[0x55; 2048], 60)
        .await
        .expect_err("garbage image refused");
    assert_eq!(error.status(), Some(500), "{error}");
    let status = server
        .rpc(&id, "OTA.Status", json!({}))
        .await
        .expect("status");
    assert_eq!(status["state"], 2);
    assert_eq!(agent.status().partition, 0);
    assert!(!data_dir.path().join("slots/slot1.img").exists());

    // A good image: reboot into slot 1 uncommitted, then commit (PROTOCOL §8).
    let end = upload(&server, &id, &script_image("2"), 60)
        .await
        .expect("upload");
    assert_eq!(end, true);
    let status = wait_status(&mut agent, "boot into slot 1", |s| {
        s.boots == 2 && s.connected && s.partition == 1
    })
    .await;
    assert!(!status.committed);
    let reported = wait_connect_report(&mut events, &id, |r| r["ota"]["partition"] == 1).await;
    assert_eq!(reported["ota"]["is_committed"], false);
    assert_eq!(
        server
            .rpc(&id, "OTA.Commit", json!({}))
            .await
            .expect("commit"),
        true
    );
    wait_status(&mut agent, "committed", |s| s.committed).await;

    // Next update is not committed within its timeout: back to the previous image.
    let end = upload(&server, &id, &script_image("3"), 1)
        .await
        .expect("upload");
    assert_eq!(end, true);
    let status = wait_status(&mut agent, "reverted", |s| {
        s.boots == 4 && s.partition == 1 && s.committed && s.connected
    })
    .await;
    assert_eq!(status.partition, 1, "the committed image runs again");
    // The device reports the outcome of the update (PROTOCOL §4.4).
    let data = wait_event(&mut events, &id, "updated", |d| {
        let ota = &d["shadow"]["state"]["reported"]["ota"];
        ota["status"] == 2 && ota["partition"] == 1
    })
    .await;
    assert_eq!(
        data["shadow"]["state"]["reported"]["ota"]["is_committed"],
        true
    );
    agent.shutdown().await.expect("clean shutdown");
}

/// Serves `body` to every GET on a loopback port; returns the URL.
async fn serve_file(body: Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "http://{}/firmware.bin",
        listener.local_addr().expect("addr")
    );
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body).await;
            });
        }
    });
    url
}

#[tokio::test]
async fn desired_ota_url_downloads_and_boots_the_image() {
    // PROTOCOL §4.4: desired.ota.url makes the device fetch the firmware itself.
    let Connected {
        server,
        id,
        token: _,
        data_dir: _data_dir,
        mut events,
        mut agent,
    } = connected_agent().await;

    let url = serve_file(script_image("4")).await;
    server
        .client
        .update_shadow(&id, &json!({"state": {"desired": {"ota": {"url": url}}}}))
        .await
        .expect("shadow update");
    // A zero commit timeout commits the new image on its first boot, as Mongoose OS does.
    let status = wait_status(&mut agent, "boot into the download", |s| {
        s.boots == 2 && s.partition == 1 && s.connected
    })
    .await;
    assert!(status.committed);
    let data = wait_event(&mut events, &id, "updated", |d| {
        d["shadow"]["state"]["reported"]["ota"]["partition"] == 1
    })
    .await;
    assert_eq!(data["shadow"]["state"]["delta"], json!({}), "{data}");
    agent.shutdown().await.expect("clean shutdown");
}
