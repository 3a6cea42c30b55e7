//! The agent fetching its own firmware (PROTOCOL §10.3) against the real server, with the
//! image on a small HTTP server beside it: it resumes a broken download, checks the image
//! before it boots it (§10.4), and refuses updates it would not run.

mod common;

use base64::Engine as _;
use common::*;
use ed25519_dalek::{Signer as _, SigningKey};
use herd_agent::agent::{ImagePolicy, REFUSE_IMAGES};
use serde_json::{json, Value};

/// An image the agent's slots take: a `#!` script, padded to span several pieces.
fn script_image(version: &str, len: usize) -> Vec<u8> {
    let mut image = format!("#!/bin/sh\n# herd-agent test image {version}\n").into_bytes();
    image.resize(len - 1, b'#');
    image.push(b'\n');
    image
}

fn ota(data: &Value) -> &Value {
    &data["shadow"]["state"]["reported"]["ota"]
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn the_agent_resumes_a_broken_download_and_boots_the_image() {
    let Connected {
        server,
        id,
        token: _,
        data_dir,
        mut events,
        mut agent,
    } = connected_agent().await;
    let image = script_image("5", 80_000);
    let sha = sha256_hex(&image);
    let files = ImageServer::start(
        image.clone(),
        Faults {
            cut_first_after: Some(30_000),
            ..Faults::default()
        },
    )
    .await;
    let url = files.url("/firmware.bin");
    server
        .client
        .update_shadow(
            &id,
            &json!({"state": {"desired": {"ota": {"url": url, "sha256": sha, "size": image.len()}}}}),
        )
        .await
        .expect("shadow update");

    let status = wait_status(&mut agent, "boot into the download", |s| {
        s.boots == 2 && s.partition == 1 && s.connected
    })
    .await;
    assert!(status.committed, "commit_timeout 0: committed on boot");
    let data = wait_event(&mut events, &id, "updated", |d| {
        ota(d)["partition"] == 1 && ota(d)["fw_id"] == sha.as_str()
    })
    .await;
    // The fields the device took were reported back, so nothing is left to do.
    assert_eq!(data["shadow"]["state"]["delta"], json!({}), "{data}");
    assert_eq!(ota(&data)["url"], url);
    assert_eq!(ota(&data)["fw_version"], format!("build-{}", &sha[..8]));
    let stored = std::fs::read(data_dir.path().join("slots/slot1.img")).expect("slot 1");
    assert!(stored == image, "the slot holds the image byte for byte");

    let requests = files.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[1].range.as_deref(), Some("bytes=30000-"));
    // The token goes only to the server the device is connected to, not to this one.
    assert!(requests.iter().all(|r| r.authorization.is_none()));
    agent.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn without_exec_images_the_agent_refuses_updates_and_says_how_to_allow_them() {
    let server = TestServer::start().await;
    let (id, token) = server.create_device("refuser").await;
    let data_dir = tempfile::tempdir().expect("tempdir");
    let mut events = server.client.notify();
    subscribed(&mut events).await;
    let mut options = agent_options(&server, &token, data_dir.path().into());
    options.images = ImagePolicy::Refuse;
    let agent = start_agent(options).await;
    wait_connect_report(&mut events, &id, |_| true).await;

    let error = server
        .rpc(&id, "OTA.Begin", json!({"size": 1000}))
        .await
        .expect_err("push refused");
    assert_eq!(error.status(), Some(403), "{error}");
    assert!(error.to_string().contains("--exec-images"), "{error}");
    let error = server
        .rpc(&id, "OTA.Update", json!({"url": "http://127.0.0.1:9/fw"}))
        .await
        .expect_err("pull refused");
    assert!(error.to_string().contains("--exec-images"), "{error}");

    server
        .client
        .update_shadow(
            &id,
            &json!({"state": {"desired": {"ota": {"url": "http://127.0.0.1:9/other"}}}}),
        )
        .await
        .expect("shadow update");
    let data = wait_event(&mut events, &id, "updated", |d| {
        ota(d)["url"] == "http://127.0.0.1:9/other" && ota(d)["status"] == 2
    })
    .await;
    assert_eq!(ota(&data)["message"], REFUSE_IMAGES);
    assert_eq!(ota(&data)["partition"], 0);
    assert!(!data_dir.path().join("slots/slot1.img").exists());
    agent.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn an_agent_holding_a_key_takes_only_signed_images() {
    let server = TestServer::start().await;
    let (id, token) = server.create_device("signed").await;
    let data_dir = tempfile::tempdir().expect("tempdir");
    let mut events = server.client.notify();
    subscribed(&mut events).await;
    let operator = SigningKey::from_bytes(&[5; 32]);
    let mut options = agent_options(&server, &token, data_dir.path().into());
    options.update_pubkey = Some(b64(operator.verifying_key().as_bytes()));
    let mut agent = start_agent(options).await;
    wait_connect_report(&mut events, &id, |_| true).await;

    let image = script_image("6", 20_000);
    let sha = sha256_hex(&image);
    let files = ImageServer::start(image.clone(), Faults::default()).await;
    let url = files.url("/signed.bin");

    // No signature: refused before anything is fetched (PROTOCOL §10.4).
    let error = server
        .rpc(&id, "OTA.Update", json!({"url": url, "sha256": sha}))
        .await
        .expect_err("unsigned refused");
    assert!(error.to_string().contains("signature missing"), "{error}");
    assert!(files.requests().is_empty());

    // Signed by someone else: fetched, checked, discarded.
    let forger = SigningKey::from_bytes(&[6; 32]);
    let digest = firmware_core::ota::ContentHash::of(&image).0;
    let forged = b64(&forger.sign(&digest).to_bytes());
    let reply = server
        .rpc(
            &id,
            "OTA.Update",
            json!({"url": url, "sha256": sha, "signature": forged}),
        )
        .await
        .expect("OTA.Update");
    assert_eq!(reply, true);
    let data = wait_event(&mut events, &id, "updated", |d| {
        ota(d)["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("signature does not verify"))
    })
    .await;
    assert_eq!(ota(&data)["status"], 2);
    assert!(!data_dir.path().join("slots/slot1.img").exists());
    assert_eq!(agent.status().partition, 0);

    // Signed by the operator: boots.
    let signature = b64(&operator.sign(&digest).to_bytes());
    let reply = server
        .rpc(
            &id,
            "OTA.Update",
            json!({"url": url, "sha256": sha, "signature": signature, "commit_timeout": 60}),
        )
        .await
        .expect("OTA.Update");
    assert_eq!(reply, true);
    let status = wait_status(&mut agent, "boot into the signed image", |s| {
        s.boots == 2 && s.partition == 1 && s.connected
    })
    .await;
    assert!(!status.committed, "waits for OTA.Commit");
    // The agent has its new socket; the server has it once the new image's report arrives
    // over it (until then a call finds the device offline).
    wait_connect_report(&mut events, &id, |reported| {
        reported["ota"]["partition"] == 1
    })
    .await;
    // The key was recorded on the bench side, where the cloud cannot change it.
    let error = server
        .rpc(
            &id,
            "Config.Set",
            json!({"key": "update.pubkey", "value": ""}),
        )
        .await
        .expect_err("the key stays");
    assert_eq!(error.status(), Some(403), "{error}");
    agent.shutdown().await.expect("clean shutdown");
}
