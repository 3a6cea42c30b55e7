//! The firmware store (PROTOCOL §10.1) and one-device updates (§10.2, §8, §10.6), against
//! the real server with real HTTP and WebSocket clients. The devices here speak the wire
//! protocol by hand, as a Mongoose OS device would.

use std::io::Write;

use base64::Engine as _;
use herd_testkit::{expect_event, Device, TestServer, WAIT};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn herd_image(version: &str, size: usize) -> Vec<u8> {
    let mut image = format!(
        "HERD-IMAGE {{\"app\":\"herd-light\",\"fw_version\":\"{version}\",\"arch\":\"sim\"}}\n"
    )
    .into_bytes();
    let mut n = 0u32;
    while image.len() < size {
        n = n.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        image.push((n >> 16) as u8);
    }
    image
}

fn zip_package(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut buffer = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buffer);
        for (name, bytes) in entries {
            zip.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
    }
    buffer.into_inner()
}

async fn upload_raw(server: &TestServer, key: &str, query: &str, bytes: Vec<u8>) -> (u16, Value) {
    let resp = server
        .http
        .post(format!("{}/firmware{query}", server.base))
        .bearer_auth(key)
        .header("content-type", "application/octet-stream")
        .body(bytes)
        .send()
        .await
        .expect("sent");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn upload_multipart(
    server: &TestServer,
    path: &str,
    bytes: Vec<u8>,
    fields: &[(&str, &str)],
) -> (u16, Value) {
    let mut form = reqwest::multipart::Form::new();
    for (name, value) in fields {
        form = form.text(name.to_string(), value.to_string());
    }
    form = form.part(
        "file",
        reqwest::multipart::Part::bytes(bytes).file_name("fw.zip"),
    );
    let resp = server
        .http
        .post(format!("{}{path}", server.base))
        .bearer_auth(&server.admin_key)
        .multipart(form)
        .send()
        .await
        .expect("sent");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Image files and temporary uploads in the data directory.
fn stored_files(server: &TestServer) -> (usize, usize) {
    let dir = server.dir.path().join("firmware");
    let images = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_file())
        .count();
    let temporary = std::fs::read_dir(dir.join("tmp")).unwrap().count();
    (images, temporary)
}

#[tokio::test]
async fn raw_uploads_are_content_addressed_listed_and_served_with_ranges() {
    let server = TestServer::start().await;
    let image = herd_image("1.1.0", 10_000);
    let (status, fw) = upload_raw(&server, &server.admin_key, "", image.clone()).await;
    assert_eq!(status, 200, "{fw}");
    let id = sha256_hex(&image);
    assert_eq!(fw["id"], id);
    assert_eq!(fw["sha256"], id);
    assert_eq!(fw["size"], 10_000);
    assert_eq!(fw["app"], "herd-light", "read from the image's header");
    assert_eq!(fw["version"], "1.1.0");
    assert_eq!(fw["platform"], "sim");
    assert_eq!(fw["signed"], false);
    assert_eq!(fw["created_by"], "email_admin");
    // Query metadata wins over what the image says; the same bytes give the same object.
    let (status, again) =
        upload_raw(&server, &server.admin_key, "?version=9.9", image.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(again["id"], id);
    assert_eq!(
        again["version"], "1.1.0",
        "the stored object is returned as it is"
    );
    let (_, list) = server.call("GET", "/firmware", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (status, one) = server.call("GET", &format!("/firmware/{id}"), None).await;
    assert_eq!((status, one["id"].clone()), (200, json!(id)));

    let get = |range: Option<&str>| {
        let mut req = server
            .http
            .get(format!("{}/firmware/{id}/image", server.base))
            .bearer_auth(&server.admin_key);
        if let Some(range) = range {
            req = req.header("range", range);
        }
        req.send()
    };
    let whole = get(None).await.unwrap();
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.headers()["accept-ranges"], "bytes");
    assert_eq!(whole.bytes().await.unwrap().as_ref(), image.as_slice());
    let part = get(Some("bytes=9000-")).await.unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-range"], "bytes 9000-9999/10000");
    assert_eq!(part.bytes().await.unwrap().as_ref(), &image[9000..]);
    let beyond = get(Some("bytes=10000-")).await.unwrap();
    assert_eq!(beyond.status(), 416);
    assert_eq!(beyond.headers()["content-range"], "bytes */10000");

    // Nobody else sees it; without credentials it is 401.
    let bob = server.add_user("bob").await;
    let (status, _) = server
        .call_as(&bob, "GET", &format!("/firmware/{id}"), None)
        .await;
    assert_eq!(status, 404);
    let (_, list) = server.call_as(&bob, "GET", "/firmware", None).await;
    assert_eq!(list, json!([]));
    let anonymous = server
        .http
        .get(format!("{}/firmware/{id}/image", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    // A device of its owner may fetch it with its token; another user's device may not.
    let (_, token) = server.create_device("lamp").await;
    let by_device = server
        .http
        .get(format!("{}/firmware/{id}/image", server.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(by_device.status(), 200);
    let (_, bobs_device) = server
        .call_as(&bob, "POST", "/devices", Some(json!({"name": "b"})))
        .await;
    let by_other = server
        .http
        .get(format!("{}/firmware/{id}/image", server.base))
        .bearer_auth(bobs_device["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(by_other.status(), 404);

    // Deleting takes it away, bytes and all.
    let (status, _) = server
        .call("DELETE", &format!("/firmware/{id}"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(stored_files(&server), (0, 0));
    let (status, _) = server.call("GET", &format!("/firmware/{id}"), None).await;
    assert_eq!(status, 404);
    server.shutdown().await;
}

#[tokio::test]
async fn mongoose_packages_are_read_from_their_manifest() {
    let server = TestServer::start().await;
    let manifest = br#"{"name": "smartlight", "version": "2.0.1", "platform": "esp32", "build_id": "20250601-120000/2.0.1"}"#;
    let package = zip_package(&[
        ("smartlight/manifest.json", manifest),
        ("smartlight/app.bin", &[1, 2, 3]),
    ]);
    let (status, fw) = upload_multipart(&server, "/firmware", package.clone(), &[]).await;
    assert_eq!(status, 200, "{fw}");
    assert_eq!(fw["format"], "zip");
    assert_eq!(
        (
            fw["app"].as_str(),
            fw["version"].as_str(),
            fw["platform"].as_str()
        ),
        (Some("smartlight"), Some("2.0.1"), Some("esp32"))
    );
    assert_eq!(fw["build_id"], "20250601-120000/2.0.1");
    assert_eq!(fw["id"], sha256_hex(&package));
    // Fields given with the upload win over the manifest.
    let other = zip_package(&[("manifest.json", br#"{"name": "x", "version": "1"}"#)]);
    let (status, fw) =
        upload_multipart(&server, "/firmware", other, &[("version", "1.0.0-rc1")]).await;
    assert_eq!(status, 200, "{fw}");
    assert_eq!(fw["version"], "1.0.0-rc1");
    server.shutdown().await;
}

#[tokio::test]
async fn bad_uploads_get_a_clear_4xx_and_leave_nothing_behind() {
    let server = TestServer::start_with(|s| s.firmware_max_bytes = 64 * 1024).await;
    let package = zip_package(&[
        ("manifest.json", br#"{"name": "a", "version": "1"}"#),
        ("a.bin", &[7; 100]),
    ]);
    let truncated = package[..package.len() - 30].to_vec();
    let cases: Vec<(&str, u16, &str, Vec<u8>, &str)> = vec![
        ("truncated zip", 400, "", truncated, "zip"),
        (
            "zip without manifest",
            400,
            "",
            zip_package(&[("a.bin", &[1])]),
            "manifest",
        ),
        ("empty body", 400, "", Vec::new(), "empty"),
        ("over the limit", 413, "", vec![0; 64 * 1024 + 1], "limit"),
        (
            "signature of the wrong size",
            400,
            "?signature=AAAA",
            vec![1; 10],
            "signature",
        ),
        (
            "signature not base64",
            400,
            "?signature=%21%21",
            vec![1; 10],
            "base64",
        ),
    ];
    for (what, status, query, bytes, says) in cases {
        let (got, body) = upload_raw(&server, &server.admin_key, query, bytes).await;
        assert_eq!(got, status, "{what}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{what}: {message}");
        assert_eq!(stored_files(&server), (0, 0), "{what} left files behind");
    }
    // A multipart upload over the limit is refused too, and so is one without a file.
    let (status, _) = upload_multipart(&server, "/firmware", vec![0; 70 * 1024], &[]).await;
    assert_eq!(status, 413);
    let resp = server
        .http
        .post(format!("{}/firmware", server.base))
        .bearer_auth(&server.admin_key)
        .multipart(reqwest::multipart::Form::new().text("version", "1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(stored_files(&server), (0, 0));
    let (_, list) = server.call("GET", "/firmware", None).await;
    assert_eq!(list, json!([]));
    // Unknown ids are 404, for the object and for the image.
    let unknown = "0".repeat(64);
    assert_eq!(
        server
            .call("GET", &format!("/firmware/{unknown}"), None)
            .await
            .0,
        404
    );
    assert_eq!(
        server
            .call("GET", &format!("/firmware/{unknown}/image"), None)
            .await
            .0,
        404
    );
    assert_eq!(
        server
            .call("DELETE", &format!("/firmware/{unknown}"), None)
            .await
            .0,
        404
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_large_upload_streams_to_disk() {
    let server = TestServer::start().await;
    let image = herd_image("3.0.0", 64 * 1024 * 1024);
    let id = sha256_hex(&image);
    // Sent in pieces, as a real client streams a file.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        image.chunks(1 << 20).map(|c| Ok(c.to_vec())).collect();
    let resp = server
        .http
        .post(format!("{}/firmware", server.base))
        .bearer_auth(&server.admin_key)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let fw: Value = resp.json().await.unwrap();
    assert_eq!(fw["id"], id);
    assert_eq!(fw["size"], 64 * 1024 * 1024);
    let on_disk = std::fs::read(server.dir.path().join("firmware").join(&id)).unwrap();
    assert_eq!(sha256_hex(&on_disk), id);
    server.shutdown().await;
}

/// What a device saw of a transfer.
struct Received {
    bytes: Vec<u8>,
    commit_timeout: u64,
    writes: usize,
}

/// Answers OTA.Begin / OTA.Write / OTA.End like the mDash device library, checking
/// offsets; `drop_write` names a write (by count) whose first copy gets no answer.
async fn take_image(device: &mut Device, drop_write: Option<usize>) -> Received {
    let mut received = Received {
        bytes: Vec::new(),
        commit_timeout: 0,
        writes: 0,
    };
    let mut size = 0usize;
    let mut dropped = false;
    loop {
        let frame = device.recv().await;
        let id = frame["id"].clone();
        match frame["method"].as_str() {
            Some("OTA.Begin") => {
                size = frame["params"]["size"].as_u64().unwrap() as usize;
                received.commit_timeout = frame["params"]["commit_timeout"].as_u64().unwrap();
                device.send(json!({"id": id, "result": true})).await;
            }
            Some("OTA.Write") => {
                received.writes += 1;
                if drop_write == Some(received.writes) && !dropped {
                    dropped = true;
                    continue;
                }
                let offset = frame["params"]["offset"].as_u64().unwrap() as usize;
                let data = base64::engine::general_purpose::STANDARD
                    .decode(frame["params"]["data"].as_str().unwrap())
                    .unwrap();
                if offset + data.len() == received.bytes.len() {
                    // A retry of what we already have.
                    device.send(json!({"id": id, "result": true})).await;
                } else if offset == received.bytes.len() {
                    received.bytes.extend_from_slice(&data);
                    device.send(json!({"id": id, "result": true})).await;
                } else {
                    device
                        .send(json!({"id": id, "error": {"code": 400, "message": format!("offset {offset} is wrong, expected {}", received.bytes.len())}}))
                        .await;
                }
            }
            Some("OTA.End") => {
                assert_eq!(received.bytes.len(), size, "every byte before OTA.End");
                device.send(json!({"id": id, "result": true})).await;
                return received;
            }
            _ => {}
        }
    }
}

async fn push(server: &TestServer, key: &str, device: &str, image: Vec<u8>) -> (u16, Value) {
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(image).file_name("fw.bin"),
    );
    let resp = server
        .http
        .post(format!(
            "{}/devices/{device}/ota?commit_timeout=60",
            server.base
        ))
        .bearer_auth(key)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_push_writes_the_image_and_the_device_comes_back_committed() {
    // A short call timeout makes the lost chunk's retry quick.
    let server = TestServer::start_with(|s| s.rpc_timeout_ms = 1500).await;
    let (id, token) = server.create_device("lamp").await;
    let mut events = server.notify(&server.admin_key).await;
    let mut device = server.device(&token).await;
    let image = herd_image("1.1.0", 5000);
    let fw_id = sha256_hex(&image);
    let pushing = {
        let image = image.clone();
        let (http, base, key, id) = (
            server.http.clone(),
            server.base.clone(),
            server.admin_key.clone(),
            id.clone(),
        );
        tokio::spawn(async move {
            let form = reqwest::multipart::Form::new().part(
                "file",
                reqwest::multipart::Part::bytes(image).file_name("fw.bin"),
            );
            let resp = http
                .post(format!("{base}/devices/{id}/ota?commit_timeout=60"))
                .bearer_auth(key)
                .multipart(form)
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        })
    };
    let received = take_image(&mut device, Some(3)).await;
    assert_eq!(
        received.bytes, image,
        "the device got the image, byte for byte"
    );
    assert_eq!(received.commit_timeout, 60);
    assert!(
        received.writes > 5,
        "1 KiB chunks plus the retried one: {}",
        received.writes
    );
    let (status, body) = pushing.await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "true"),
        "mDash answers true after OTA.End"
    );

    let begin = expect_event(&mut events, &id, "ota.begin").await;
    assert_eq!(
        begin["data"],
        json!({"firmware": fw_id, "version": "1.1.0", "size": 5000})
    );
    // Five 1 KiB chunks: progress in steps of 20, each a multiple of ten (PROTOCOL §10.6).
    let mut seen = Vec::new();
    while seen.last() != Some(&100) {
        let progress = expect_event(&mut events, &id, "ota.progress").await;
        seen.push(progress["data"]["percent"].as_u64().unwrap());
    }
    assert_eq!(seen, [20, 40, 60, 80, 100]);

    // The device restarts into the new image and reports it; the server commits it.
    drop(device);
    let mut device = server
        .device_with_info(
            &token,
            json!({"app": "herd-light", "fw_version": "1.1.0", "fw_id": fw_id, "arch": "sim"}),
        )
        .await;
    let commit = device.expect_request("OTA.Commit").await;
    device
        .send(json!({"id": commit["id"], "result": true}))
        .await;
    let success = expect_event(&mut events, &id, "ota.success").await;
    assert_eq!(success["data"]["firmware"], fw_id);
    assert_eq!(success["data"]["version"], "1.1.0");
    assert!(success["data"]["seconds"].as_f64().unwrap() >= 0.0);
    server.shutdown().await;
}

#[tokio::test]
async fn a_device_that_comes_back_on_its_old_image_is_reported_reverted() {
    let server = TestServer::start().await;
    let (id, token) = server.create_device("lamp").await;
    let mut events = server.notify(&server.admin_key).await;
    let mut device = server.device(&token).await;
    let image = herd_image("2.0.0", 3000);
    let (http, base, key, device_id) = (
        server.http.clone(),
        server.base.clone(),
        server.admin_key.clone(),
        id.clone(),
    );
    let bytes = image.clone();
    let pushing = tokio::spawn(async move {
        http.post(format!("{base}/devices/{device_id}/ota"))
            .bearer_auth(key)
            .header("content-type", "application/octet-stream")
            .body(bytes)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    take_image(&mut device, None).await;
    assert_eq!(pushing.await.unwrap(), 200);
    drop(device);
    // Back on 1.0 after a crash of the new image, and it says why (PROTOCOL §4.4).
    let mut device = server.device(&token).await;
    device
        .report(json!({"ota": {"fw_version": "1.0", "status": 2, "message": "reverted: the new firmware restarted before it was committed"}}))
        .await;
    let revert = expect_event(&mut events, &id, "ota.revert").await;
    assert_eq!(revert["data"]["running_version"], "1.0");
    assert_eq!(revert["data"]["firmware"], sha256_hex(&image));
    server.shutdown().await;
}

#[tokio::test]
async fn pushes_are_refused_plainly() {
    let server = TestServer::start().await;
    let (id, token) = server.create_device("lamp").await;
    let image = herd_image("1.1.0", 2000);
    // Offline: 503.
    let (status, body) = push(&server, &server.admin_key, &id, image.clone()).await;
    assert_eq!(status, 503, "{body}");
    // Unknown device: 404; unknown stored firmware: 404.
    let (status, _) = push(&server, &server.admin_key, "nope", image.clone()).await;
    assert_eq!(status, 404);
    let mut device = server.device(&token).await;
    let (status, _) = server
        .call(
            "POST",
            &format!("/devices/{id}/ota?firmware={}", "a".repeat(64)),
            None,
        )
        .await;
    assert_eq!(status, 404);
    // A device that refuses the image at OTA.End: the device's error comes back.
    let (http, base, key, device_id) = (
        server.http.clone(),
        server.base.clone(),
        server.admin_key.clone(),
        id.clone(),
    );
    let bytes = image.clone();
    let pushing = tokio::spawn(async move {
        let resp = http
            .post(format!("{base}/devices/{device_id}/ota"))
            .bearer_auth(key)
            .body(bytes)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
    });
    let mut second = None;
    loop {
        let frame = device.recv().await;
        match frame["method"].as_str() {
            Some("OTA.Begin") | Some("OTA.Write") => {
                if frame["method"] == "OTA.Begin" && second.is_none() {
                    // While this one runs, a second push is a conflict.
                    let (status, _) = push(&server, &server.admin_key, &id, image.clone()).await;
                    second = Some(status);
                }
                device
                    .send(json!({"id": frame["id"], "result": true}))
                    .await;
            }
            Some("OTA.End") => {
                device
                    .send(json!({"id": frame["id"], "error": {"code": 500, "message": "image verification failed"}}))
                    .await;
                break;
            }
            _ => {}
        }
    }
    assert_eq!(second, Some(409));
    let (status, body) = pushing.await.unwrap();
    assert_eq!(status, 500, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("image verification failed"),
        "{body}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn only_the_owner_or_the_admin_may_change_firmware() {
    let server = TestServer::start().await;
    let ann = server.add_user("ann").await;
    let bob = server.add_user("bob").await;
    let (status, device) = server
        .call_as(&ann, "POST", "/devices", Some(json!({"name": "lamp"})))
        .await;
    assert_eq!(status, 200);
    let id = device["id"].as_str().unwrap().to_string();
    let token = device["token"].as_str().unwrap().to_string();
    let (status, _) = server
        .call_as(
            &ann,
            "POST",
            &format!("/devices/{id}"),
            Some(json!({"shared_with": "email_bob"})),
        )
        .await;
    assert_eq!(status, 200);
    let mut lamp = server.device(&token).await;
    let answer = tokio::spawn(async move {
        // Answer whatever reaches the device, so allowed calls complete.
        loop {
            let frame = lamp.recv().await;
            if frame.get("method").is_some() && frame.get("id").is_some() {
                lamp.send(json!({"id": frame["id"], "result": true})).await;
            }
        }
    });

    // Bob, with whom the lamp is shared: reads, desired state and RPCs, but not firmware.
    let ota = json!({"state": {"desired": {"ota": {"url": "http://evil.example/x.bin"}}}});
    let (status, body) = server
        .call_as(
            &bob,
            "POST",
            &format!("/devices/{id}/shadow"),
            Some(ota.clone()),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("desired.ota"));
    let (status, _) = server
        .call_as(
            &bob,
            "POST",
            &format!("/devices/{id}"),
            Some(json!({"shadow": ota})),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = server
        .call_as(
            &bob,
            "POST",
            &format!("/devices/{id}/shadow"),
            Some(json!({"state": {"desired": {"on": true}}})),
        )
        .await;
    assert_eq!(status, 200);
    for method in ["OTA.Begin", "OTA.Update", "OTA.Commit"] {
        let (status, body) = server
            .call_as(
                &bob,
                "POST",
                &format!("/devices/{id}/rpc/{method}"),
                Some(json!({})),
            )
            .await;
        assert_eq!(status, 403, "{method}: {body}");
    }
    let (status, _) = server
        .call_as(
            &bob,
            "POST",
            &format!("/devices/{id}/rpc/Sys.GetInfo"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = push(&server, &bob, &id, herd_image("6.6.6", 100)).await;
    assert_eq!(status, 403);
    // The per-device RPC socket refuses OTA.* the same way.
    let mut rpc = server
        .ws(&format!("/devices/{id}/rpc?access_token={bob}"))
        .await;
    futures_util::SinkExt::send(
        &mut rpc,
        tokio_tungstenite::tungstenite::Message::text(r#"{"id":1,"method":"OTA.Revert"}"#),
    )
    .await
    .unwrap();
    let reply = herd_testkit::recv_json(&mut rpc).await;
    assert_eq!(reply["error"]["code"], 403, "{reply}");

    // Ann, the owner, and the admin may.
    let desired_ota = json!({"state": {"desired": {"ota": {"url": "/api/v2/firmware/x/image"}}}});
    for key in [&ann, &server.admin_key] {
        let (status, body) = server
            .call_as(
                key,
                "POST",
                &format!("/devices/{id}/shadow"),
                Some(desired_ota.clone()),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = server
            .call_as(key, "POST", &format!("/devices/{id}/rpc/OTA.Commit"), None)
            .await;
        assert_eq!(status, 200, "{body}");
    }
    answer.abort();
    let _ = tokio::time::timeout(WAIT, answer).await;
    server.shutdown().await;
}
