//! The `herd-agent` binary updating itself (PROTOCOL §8): the image goes to the inactive
//! slot, the process restarts into it by exec, and an image that dies before it is
//! committed, or cannot start at all, gives way to the previous one.

mod common;

use std::path::Path;
use std::process::Stdio;

use base64::Engine as _;
use common::*;
use serde_json::{json, Value};
use tokio::process::{Child, Command};

fn spawn_agent(server: &TestServer, token: &str, data_dir: &Path) -> Child {
    spawn_agent_with(server, token, data_dir, &["--exec-images"])
}

fn spawn_agent_with(server: &TestServer, token: &str, data_dir: &Path, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_herd-agent"))
        .arg("--server")
        .arg(server.socket_url())
        .arg("--token")
        .arg(token)
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .env("RUST_LOG", "warn")
        .env_remove("HERD_AGENT_BOOTED")
        .env_remove("HERD_AGENT_FACTORY_IMAGE")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the agent binary starts")
}

/// A small executable image, padded so it takes a few `OTA.Write` chunks.
fn image(script: &str) -> Vec<u8> {
    let mut bytes = script.as_bytes().to_vec();
    bytes.extend_from_slice(b"\n");
    bytes.extend(std::iter::repeat_n(b'#', 2500));
    bytes.push(b'\n');
    bytes
}

async fn upload(server: &TestServer, id: &str, image: &[u8]) -> Value {
    let begin = server
        .rpc(
            id,
            "OTA.Begin",
            json!({"size": image.len(), "commit_timeout": 120}),
        )
        .await
        .expect("OTA.Begin");
    assert_eq!(begin, true);
    for (n, chunk) in image.chunks(1024).enumerate() {
        let data = base64::engine::general_purpose::STANDARD.encode(chunk);
        server
            .rpc(id, "OTA.Write", json!({"offset": n * 1024, "data": data}))
            .await
            .expect("OTA.Write");
    }
    server.rpc(id, "OTA.End", json!({})).await.expect("OTA.End")
}

fn ota(data: &Value) -> &Value {
    &data["shadow"]["state"]["reported"]["ota"]
}

#[tokio::test]
async fn the_binary_restarts_into_its_update_and_reverts_a_bad_one() {
    let server = TestServer::start().await;
    let (id, token) = server.create_device("linux-box").await;
    let data_dir = tempfile::tempdir().expect("tempdir");
    let mut events = server.client.notify();
    subscribed(&mut events).await;
    let mut agent = spawn_agent(&server, &token, data_dir.path());
    wait_event(&mut events, &id, "updated", |d| ota(d)["partition"] == 0).await;

    // A real image: a script that runs the installed agent. After OTA.End the process
    // execs slot 1, which comes back uncommitted.
    let wrapper = image("#!/bin/sh\nexec \"$HERD_AGENT_FACTORY_IMAGE\" \"$@\"");
    assert_eq!(upload(&server, &id, &wrapper).await, true);
    let data = wait_event(&mut events, &id, "updated", |d| {
        ota(d)["partition"] == 1 && ota(d)["is_committed"] == false
    })
    .await;
    assert_eq!(ota(&data)["commit_timeout"], 120);
    assert_eq!(
        server
            .rpc(&id, "OTA.Commit", json!({}))
            .await
            .expect("commit"),
        true
    );
    wait_event(&mut events, &id, "updated", |d| {
        ota(d)["partition"] == 1 && ota(d)["is_committed"] == true
    })
    .await;
    assert!(agent.try_wait().expect("status").is_none(), "still running");

    // An image that dies before anyone commits it: the process exits...
    assert_eq!(
        upload(&server, &id, &image("#!/bin/sh\nexit 3")).await,
        true
    );
    let status = tokio::time::timeout(WAIT, agent.wait())
        .await
        .expect("the broken image exits")
        .expect("wait");
    assert_eq!(status.code(), Some(3));
    // ...and the next start (a service manager would do it) runs the previous image.
    let mut agent = spawn_agent(&server, &token, data_dir.path());
    wait_event(&mut events, &id, "updated", |d| {
        ota(d)["partition"] == 1 && ota(d)["is_committed"] == true && ota(d)["status"] == 2
    })
    .await;

    // An image whose interpreter does not exist cannot even start: reverted at once.
    let unstartable = image("#!/nonexistent/interpreter");
    assert_eq!(upload(&server, &id, &unstartable).await, true);
    let data = wait_event(&mut events, &id, "updated", |d| {
        let message = ota(d)["message"].as_str().unwrap_or_default();
        ota(d)["partition"] == 1 && message.contains("could not start")
    })
    .await;
    assert_eq!(ota(&data)["status"], 2);
    assert!(agent.try_wait().expect("status").is_none(), "still running");
    agent.kill().await.expect("kill");
}

#[tokio::test]
async fn without_exec_images_the_binary_refuses_updates_naming_the_flag() {
    let server = TestServer::start().await;
    let (id, token) = server.create_device("cautious-box").await;
    let data_dir = tempfile::tempdir().expect("tempdir");
    let mut events = server.client.notify();
    subscribed(&mut events).await;
    let mut agent = spawn_agent_with(&server, &token, data_dir.path(), &["--ota-methods", "push"]);
    wait_event(&mut events, &id, "updated", |d| ota(d)["partition"] == 0).await;
    let error = server
        .rpc(&id, "OTA.Begin", json!({"size": 3000}))
        .await
        .expect_err("refused");
    assert_eq!(error.status(), Some(403), "{error}");
    assert!(error.to_string().contains("--exec-images"), "{error}");
    // --ota-methods push: the device answers like the mDash device library.
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
    assert!(!data_dir.path().join("slots/slot1.img").exists());
    agent.kill().await.expect("kill");
}
