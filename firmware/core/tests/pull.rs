//! Firmware updates the device checks itself: pulls through `OTA.Update` and
//! `desired.ota` (PROTOCOL §10.3) with their size, SHA-256 and Ed25519 signature (§10.4),
//! pushes that tolerate retried and offset-less chunks (§8, §10.2), and the push-only mode
//! of devices like the mDash device library's.

mod common;

use base64::Engine as _;
use common::Board;
use ed25519_dalek::{Signer as _, SigningKey};
use firmware_core::memory::MemoryPlatform;
use firmware_core::ota::ContentHash;
use serde_json::{json, Value};

const SERVER: &str = "ws://herd.example:8009/api/v2/rpc";
const TOKEN: &str = "0123456789abcdef01234567";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn image_bytes(version: &str, len: usize) -> Vec<u8> {
    let mut bytes = format!("HERD-IMAGE {{\"fw_version\": \"{version}\"}}\n").into_bytes();
    let mut x = 11u32;
    while bytes.len() < len {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        bytes.push((x >> 16) as u8);
    }
    bytes
}

fn sha256(image: &[u8]) -> String {
    ContentHash::of(image).hex()
}

/// The operator's key: fixed, so the tests need no randomness.
fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn pubkey(key: &SigningKey) -> String {
    b64(key.verifying_key().as_bytes())
}

/// PROTOCOL §10.4: Ed25519 over the 32-byte SHA-256 digest, standard base64.
fn sign(key: &SigningKey, image: &[u8]) -> String {
    b64(&key.sign(&ContentHash::of(image).0).to_bytes())
}

/// A connected device whose factory layer holds the cloud and, optionally, a key.
fn board(factory: Value) -> Board {
    let mut platform = MemoryPlatform::new(common::image());
    let mut layer = json!({"dash": {"enable": true, "server": SERVER, "token": TOKEN}});
    protocol::shadow::merge(
        layer.as_object_mut().expect("object"),
        factory.as_object().expect("object"),
    );
    platform
        .layers
        .insert("factory", layer.to_string().into_bytes());
    let mut board = Board::with(platform);
    board.connect();
    board
}

fn keyed_board() -> Board {
    board(json!({"update": {"pubkey": pubkey(&signing_key())}}))
}

fn ota(board: &Board) -> Value {
    board.last_ota_report()
}

/// The running image stayed: slot 0, committed, version 1.0.0, after a reboot too.
fn assert_running_untouched(board: &mut Board) {
    assert_eq!(board.reboots, 0, "no reboot into a refused image");
    board.reboot();
    let report = ota(board);
    assert_eq!(report["partition"], 0, "{report}");
    assert_eq!(report["fw_version"], "1.0.0");
    assert_eq!(report["is_committed"], true);
}

#[test]
fn a_signed_image_is_pulled_and_boots_with_its_sha256_as_id() {
    let key = signing_key();
    let mut board = keyed_board();
    let image = image_bytes("2.0.0", 5000);
    let id = sha256(&image);
    let reply = board.call(
        1,
        "OTA.Update",
        json!({
            "url": format!("/api/v2/firmware/{id}/image"),
            "sha256": id,
            "signature": sign(&key, &image),
            "size": image.len(),
            "commit_timeout": 60,
        }),
    );
    assert_eq!(reply["result"], true, "{reply}");
    // The URL resolves against the server the device is connected to, which gets the
    // device token (PROTOCOL §10.3).
    let request = board.downloads.last().expect("a download").clone();
    assert_eq!(
        request.url,
        format!("http://herd.example:8009/api/v2/firmware/{id}/image")
    );
    assert_eq!(request.token.as_deref(), Some(TOKEN));
    assert_eq!(request.size, Some(5000));
    assert_eq!(request.sha256.as_deref(), Some(id.as_str()));
    assert_eq!(request.commit_timeout_s, 60);
    assert_eq!(ota(&board)["status"], 1);

    board.sent.clear();
    board.serve_download(&image, 512);
    // Progress at every tenth on the way (PROTOCOL §4.4).
    let percents: Vec<u64> = board
        .reported_updates()
        .iter()
        .filter_map(|r| r["ota"]["progress_percent"].as_u64())
        .collect();
    for tenth in [10, 50, 90] {
        assert!(
            percents.iter().any(|p| p / 10 == tenth / 10),
            "{percents:?}"
        );
    }
    assert_eq!(board.reboots, 1);
    let report = ota(&board);
    assert_eq!(report["fw_version"], "2.0.0");
    assert_eq!(report["fw_id"], id, "fw_id is the image's SHA-256");
    assert_eq!(report["partition"], 1);
    assert_eq!(report["is_committed"], false);
    assert_eq!(report["commit_timeout"], 60);
    assert_eq!(board.call(2, "OTA.Commit", json!({}))["result"], true);
    assert_eq!(ota(&board)["status"], 3);
}

#[test]
fn a_device_holding_a_key_refuses_an_unsigned_image_before_fetching_it() {
    let mut board = keyed_board();
    let image = image_bytes("2.0.0", 3000);
    let reply = board.call(
        1,
        "OTA.Update",
        json!({"url": "/fw", "sha256": sha256(&image)}),
    );
    assert_eq!(reply["error"]["code"], 400);
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("signature missing"), "{message}");
    assert!(board.downloads.is_empty(), "nothing is fetched");
    let report = ota(&board);
    assert_eq!(report["status"], 2);
    assert_eq!(report["message"], message);

    // A signature without the SHA-256 it signs is refused too.
    let reply = board.call(
        2,
        "OTA.Update",
        json!({"url": "/fw", "signature": sign(&signing_key(), &image)}),
    );
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("sha256 missing"), "{message}");

    // So is a push without them.
    let reply = board.call(3, "OTA.Begin", json!({"size": image.len()}));
    assert!(reply["error"]["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("signature missing")));
    assert!(board.downloads.is_empty());
    assert_running_untouched(&mut board);
}

#[test]
fn a_wrong_signature_is_refused_after_the_download_and_the_slot_discarded() {
    let mut board = keyed_board();
    let image = image_bytes("2.0.0", 3000);
    let intruder = SigningKey::from_bytes(&[9; 32]);
    let reply = board.call(
        1,
        "OTA.Update",
        json!({"url": "/fw", "sha256": sha256(&image), "signature": sign(&intruder, &image)}),
    );
    assert_eq!(reply["result"], true);
    board.serve_download(&image, 1000);
    let report = ota(&board);
    assert_eq!(report["status"], 2);
    assert!(
        report["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("signature does not verify")),
        "{report}"
    );
    assert_eq!(board.call(2, "OTA.Status", json!({}))["result"]["state"], 2);
    // The slot is free for the next attempt.
    let reply = board.call(
        3,
        "OTA.Update",
        json!({"url": "/fw", "sha256": sha256(&image), "signature": sign(&signing_key(), &image)}),
    );
    assert_eq!(reply["result"], true);
    let now = board.now;
    let actions = board.device().download_failed("connection refused", now);
    board.perform(actions);
    assert_eq!(ota(&board)["message"], "connection refused");
    assert_running_untouched(&mut board);
}

#[test]
fn a_wrong_sha256_is_refused_with_both_digests() {
    let mut board = board(json!({}));
    let image = image_bytes("2.0.0", 2000);
    let claimed = sha256(b"another image");
    board.call(1, "OTA.Update", json!({"url": "/fw", "sha256": claimed}));
    board.serve_download(&image, 700);
    let message = ota(&board)["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        message,
        format!(
            "sha256 mismatch: expected {claimed}, got {}",
            sha256(&image)
        )
    );
    assert_eq!(ota(&board)["status"], 2);
    assert_running_untouched(&mut board);
}

#[test]
fn a_wrong_size_is_refused_as_soon_as_it_is_known() {
    let mut board = board(json!({}));
    let image = image_bytes("2.0.0", 2000);
    board.call(1, "OTA.Update", json!({"url": "/fw", "size": 1999}));
    board.serve_download(&image, 700);
    let report = ota(&board);
    assert_eq!(report["status"], 2);
    assert_eq!(
        report["message"],
        "size mismatch: expected 1999 bytes, got 2000"
    );
    assert!(
        !board.device().downloading(),
        "the platform may stop fetching"
    );

    // A server that announces the size but delivers less.
    board.call(2, "OTA.Update", json!({"url": "/fw"}));
    let now = board.now;
    let actions = board.device().download_started(image.len(), now);
    board.perform(actions);
    let actions = board.device().download_chunk(0, &image[..1000], now);
    board.perform(actions);
    assert_eq!(board.device().download_received(), Some(1000));
    let actions = board.device().download_finished(now);
    board.perform(actions);
    assert_eq!(ota(&board)["status"], 2);
    assert_eq!(
        ota(&board)["message"],
        "only 1000 of 2000 bytes were written"
    );
    assert_running_untouched(&mut board);
}

#[test]
fn an_image_larger_than_the_slot_is_refused() {
    let mut platform = MemoryPlatform::new(common::image());
    platform.slots = firmware_core::memory::MemorySlots::new(common::image(), 4096);
    let mut board = Board::with(platform);
    board.connect();
    let reply = board.call(1, "OTA.Update", json!({"url": "http://h/fw", "size": 5000}));
    let expected = "image of 5000 bytes does not fit the 4096-byte slot";
    assert_eq!(reply["error"]["message"], expected);
    assert_eq!(ota(&board)["message"], expected);
    assert!(board.downloads.is_empty());

    // Without a size in the request, the download's announced size is refused.
    board.call(2, "OTA.Update", json!({"url": "http://h/fw"}));
    board.serve_download(&image_bytes("2.0.0", 5000), 1000);
    assert_eq!(ota(&board)["message"], expected);

    // A push of the same is refused and reported too.
    let reply = board.call(3, "OTA.Begin", json!({"size": 5000}));
    assert_eq!(reply["error"]["message"], expected);
    assert_eq!(ota(&board)["status"], 2);
    assert_running_untouched(&mut board);
}

#[test]
fn retried_chunks_are_acknowledged_without_writing_them_twice() {
    // PROTOCOL §10.2: the cloud retries a chunk whose reply it did not see in time, with
    // several chunks in flight.
    let mut board = board(json!({}));
    let image = image_bytes("2.0.0", 4000);
    let begin = board.call(
        1,
        "OTA.Begin",
        json!({"size": image.len(), "commit_timeout": 30}),
    );
    assert_eq!(begin["result"], true);
    let write = |board: &mut Board, id: u64, offset: usize, len: usize| {
        let end = (offset + len).min(image.len());
        board.call(
            id,
            "OTA.Write",
            json!({"offset": offset, "data": b64(&image[offset..end])}),
        )
    };
    assert_eq!(write(&mut board, 2, 0, 1024)["result"], true);
    assert_eq!(
        write(&mut board, 3, 0, 1024)["result"],
        true,
        "last chunk again"
    );
    assert_eq!(write(&mut board, 4, 1024, 1024)["result"], true);
    assert_eq!(write(&mut board, 5, 2048, 1024)["result"], true);
    assert_eq!(
        write(&mut board, 6, 1024, 1024)["result"],
        true,
        "an earlier chunk again"
    );
    assert_eq!(
        board.call(7, "OTA.Status", json!({}))["result"]["progress_percent"],
        76
    );
    // Overlapping what was written without ending inside it is not a retry.
    assert_eq!(write(&mut board, 8, 2000, 1100)["error"]["code"], 400);
    assert_eq!(write(&mut board, 9, 3072, 1024)["result"], true);
    assert_eq!(board.call(10, "OTA.End", json!({}))["result"], true);
    let report = ota(&board);
    assert_eq!(report["fw_id"], sha256(&image), "each byte was hashed once");
    assert_eq!(report["fw_version"], "2.0.0");
}

#[test]
fn writes_without_an_offset_append() {
    // The mDash device library's OTA.Write takes only `data`.
    let mut board = board(json!({}));
    let image = image_bytes("2.1.0", 2500);
    board.call(1, "OTA.Begin", json!({"size": image.len()}));
    for (n, chunk) in image.chunks(1024).enumerate() {
        let reply = board.call(2 + n as u64, "OTA.Write", json!({"data": b64(chunk)}));
        assert_eq!(reply["result"], true, "{reply}");
    }
    assert_eq!(board.call(9, "OTA.End", json!({}))["result"], true);
    assert_eq!(ota(&board)["fw_id"], sha256(&image));
    assert_eq!(ota(&board)["fw_version"], "2.1.0");
}

#[test]
fn a_pushed_image_is_checked_against_a_sha256_and_signature_given_with_it() {
    let key = signing_key();
    let mut board = keyed_board();
    let image = image_bytes("2.2.0", 1500);
    let other = image_bytes("6.6.6", 1500);
    board.call(
        1,
        "OTA.Begin",
        json!({"size": 1500, "sha256": sha256(&image), "signature": sign(&key, &image)}),
    );
    board.call(2, "OTA.Write", json!({"data": b64(&other)}));
    let end = board.call(3, "OTA.End", json!({}));
    assert!(end["error"]["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("sha256 mismatch")));
    board.call(
        4,
        "OTA.Begin",
        json!({"size": 1500, "sha256": sha256(&image), "signature": sign(&key, &image)}),
    );
    board.call(5, "OTA.Write", json!({"data": b64(&image)}));
    assert_eq!(board.call(6, "OTA.End", json!({}))["result"], true);
    assert_eq!(ota(&board)["fw_version"], "2.2.0");
}

#[test]
fn desired_ota_is_reported_back_and_partial_deltas_merge() {
    // PROTOCOL §4.2: a delta holds only the leaves that differ.
    let mut board = board(json!({}));
    let image = image_bytes("3.0.0", 2000);
    let id = sha256(&image);
    let url = format!("/api/v2/firmware/{id}/image");
    let wrong = sha256(b"stale");
    let reply = board.call(
        1,
        "Shadow.Delta",
        json!({"state": {"on": true, "ota": {"firmware": id, "url": url, "sha256": wrong, "size": 2000, "extra": 1}}}),
    );
    // The fields the device understood go back, so the delta clears (PROTOCOL §4.3).
    assert_eq!(
        reply["result"],
        json!({"on": true, "ota": {"firmware": id, "url": url, "sha256": wrong, "size": 2000}})
    );
    assert_eq!(board.downloads.len(), 1);
    board.serve_download(&image, 1000);
    assert!(ota(&board)["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("sha256 mismatch")));

    // The operator fixes the hash: the delta carries only that leaf.
    let reply = board.call(2, "Shadow.Delta", json!({"state": {"ota": {"sha256": id}}}));
    assert_eq!(
        reply["result"]["ota"],
        json!({"firmware": id, "url": url, "sha256": id, "size": 2000})
    );
    assert_eq!(board.downloads.len(), 2);
    let request = board.downloads[1].clone();
    assert_eq!(request.url, format!("http://herd.example:8009{url}"));
    assert_eq!(request.sha256.as_deref(), Some(id.as_str()));
    assert_eq!(request.size, Some(2000));
    // The same delta again (a reconnect) does not start another download.
    board.call(3, "Shadow.Delta", json!({"state": {"ota": {"sha256": id}}}));
    assert_eq!(board.downloads.len(), 2);

    board.serve_download(&image, 1000);
    assert_eq!(board.reboots, 1);
    let report = ota(&board);
    assert_eq!(report["fw_id"], id);
    assert_eq!(report["fw_version"], "3.0.0");
    assert_eq!(
        report["is_committed"], true,
        "commit_timeout 0 commits on boot"
    );

    // After the reboot, a delta for the image already running is reported, not fetched.
    let reply = board.call(
        4,
        "Shadow.Delta",
        json!({"state": {"ota": {"url": url, "sha256": id}}}),
    );
    assert_eq!(reply["result"]["ota"], json!({"url": url, "sha256": id}));
    assert_eq!(board.downloads.len(), 2);
}

#[test]
fn desired_ota_refusals_are_reported_and_leaves_can_be_removed() {
    let mut board = keyed_board();
    let image = image_bytes("3.0.0", 2000);
    let reply = board.call(
        1,
        "Shadow.Delta",
        json!({"state": {"ota": {"url": "/fw", "sha256": sha256(&image), "signature": "not base64!"}}}),
    );
    assert_eq!(reply["result"]["ota"]["signature"], "not base64!");
    let message = ota(&board)["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(message, "desired.ota: signature is not valid base64");
    assert!(board.downloads.is_empty());

    // A null removes the leaf (PROTOCOL §4.1): now the signature is missing.
    let reply = board.call(
        2,
        "Shadow.Delta",
        json!({"state": {"ota": {"signature": null}}}),
    );
    assert_eq!(
        reply["result"]["ota"],
        json!({"url": "/fw", "sha256": sha256(&image)})
    );
    assert!(ota(&board)["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("signature missing")));
    assert!(board.downloads.is_empty());

    let reply = board.call(
        3,
        "Shadow.Delta",
        json!({"state": {"ota": {"signature": sign(&signing_key(), &image)}}}),
    );
    assert_eq!(reply["result"]["ota"]["url"], "/fw");
    assert_eq!(board.downloads.len(), 1);
    // While that download runs, a different desired.ota is not taken yet: the delta stays.
    let reply = board.call(
        4,
        "Shadow.Delta",
        json!({"state": {"ota": {"url": "/fw2"}}}),
    );
    assert_eq!(reply["result"], json!({}));
    board.serve_download(&image, 2000);
    assert_eq!(ota(&board)["fw_version"], "3.0.0");
}

#[test]
fn the_token_goes_only_to_the_server_the_device_is_connected_to() {
    let mut board = board(json!({}));
    board.call(
        1,
        "OTA.Update",
        json!({"url": "http://herd.example:8009/fw"}),
    );
    assert_eq!(board.downloads[0].token.as_deref(), Some(TOKEN));
    let now = board.now;
    let actions = board.device().download_failed("stop", now);
    board.perform(actions);
    board.call(2, "OTA.Update", json!({"url": "https://cdn.example/fw"}));
    assert_eq!(board.downloads[1].url, "https://cdn.example/fw");
    assert_eq!(board.downloads[1].token, None);
    let reply = board.call(3, "OTA.Update", json!({"url": "fw.bin"}));
    assert_eq!(reply["error"]["code"], 400, "already downloading");
    let now = board.now;
    let actions = board.device().download_failed("stop", now);
    board.perform(actions);
    let reply = board.call(4, "OTA.Update", json!({"url": "fw.bin"}));
    assert_eq!(reply["error"]["code"], 400, "{reply}");
    assert_eq!(ota(&board)["status"], 2);
}

#[test]
fn a_download_the_server_restarts_starts_over() {
    // A server that answers a resumed request with the whole image (200): the platform
    // announces the size again and feeds from byte 0.
    let mut board = board(json!({}));
    let image = image_bytes("4.0.0", 3000);
    board.call(
        1,
        "OTA.Update",
        json!({"url": "/fw", "sha256": sha256(&image)}),
    );
    let now = board.now;
    let actions = board.device().download_started(image.len(), now);
    board.perform(actions);
    let actions = board.device().download_chunk(0, &image[..1200], now);
    board.perform(actions);
    board.serve_download(&image, 1000);
    assert_eq!(board.reboots, 1);
    assert_eq!(ota(&board)["fw_id"], sha256(&image));
}

#[test]
fn a_download_that_never_starts_times_out() {
    let mut board = board(json!({}));
    board.call(1, "OTA.Update", json!({"url": "/fw"}));
    assert_eq!(board.device().next_deadline(), Some(600_000));
    board.advance(600_000);
    assert!(!board.device().downloading());
    assert_eq!(ota(&board)["status"], 2);
    assert!(ota(&board)["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("the download did not start")));
    // Late bytes are for nobody.
    let actions = board.device().download_started(100, 600_001);
    assert!(actions.is_empty());
}

#[test]
fn the_commit_timeout_defaults_to_the_configured_one() {
    let mut board = board(json!({"update": {"commit_timeout": 45}}));
    board.call(1, "OTA.Update", json!({"url": "/fw"}));
    assert_eq!(board.downloads[0].commit_timeout_s, 45);
    let now = board.now;
    let actions = board.device().download_failed("stop", now);
    board.perform(actions);
    board.call(2, "OTA.Begin", json!({"size": 2000}));
    board.call(
        3,
        "OTA.Write",
        json!({"data": b64(&image_bytes("2.0.0", 2000))}),
    );
    board.call(4, "OTA.End", json!({}));
    assert_eq!(ota(&board)["commit_timeout"], 45);
}

#[test]
fn push_only_devices_answer_like_the_mdash_device_library() {
    let mut board = board(json!({"rpc": {"ota_methods": "push"}}));
    let list = board.call(1, "RPC.List", json!({}));
    let ota_methods: Vec<&str> = list["result"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(Value::as_str)
        .filter(|m| m.starts_with("OTA."))
        .collect();
    assert_eq!(ota_methods, ["OTA.Begin", "OTA.Write", "OTA.End"]);
    for (id, method) in [
        (2, "OTA.Update"),
        (3, "OTA.Status"),
        (4, "OTA.Commit"),
        (5, "OTA.Revert"),
    ] {
        let reply = board.call(id, method, json!({"url": "/fw"}));
        assert_eq!(
            reply["error"],
            json!({"code": 404, "message": format!("No handler for {method}")})
        );
    }
    // desired.ota is not for such a device: neither taken nor reported back.
    let reply = board.call(6, "Shadow.Delta", json!({"state": {"ota": {"url": "/fw"}}}));
    assert_eq!(reply["result"], json!({}));
    assert!(board.downloads.is_empty());

    // It gets no OTA.Commit, so the new image commits itself on boot whatever the cloud
    // asked for.
    let image = image_bytes("2.0.0", 2500);
    board.call(
        7,
        "OTA.Begin",
        json!({"size": image.len(), "commit_timeout": 300}),
    );
    for chunk in image.chunks(1024) {
        board.call(8, "OTA.Write", json!({"data": b64(chunk)}));
    }
    assert_eq!(board.call(9, "OTA.End", json!({}))["result"], true);
    let report = ota(&board);
    assert_eq!(report["fw_version"], "2.0.0");
    assert_eq!(report["is_committed"], true);
    assert_eq!(report["status"], 3);
    assert_eq!(board.device().next_deadline(), None, "no revert pending");
}

#[test]
fn a_platform_that_takes_no_updates_says_why() {
    let mut board = board(json!({}));
    let reason = "start it with --exec-images";
    board.platform().slots.refuse_updates = Some(reason.into());
    let reply = board.call(1, "OTA.Begin", json!({"size": 10}));
    assert_eq!(reply["error"], json!({"code": 403, "message": reason}));
    let reply = board.call(2, "OTA.Update", json!({"url": "/fw"}));
    assert_eq!(reply["error"]["code"], 403);
    board.call(3, "Shadow.Delta", json!({"state": {"ota": {"url": "/fw"}}}));
    assert_eq!(ota(&board)["message"], reason);
    assert_eq!(ota(&board)["status"], 2);
    assert!(board.downloads.is_empty());
}

#[test]
fn the_update_key_cannot_be_changed_through_the_cloud() {
    let mut board = keyed_board();
    for params in [
        json!({"config": {"update": {"pubkey": ""}}}),
        json!({"key": "update.pubkey", "value": "AAAA"}),
        json!({"key": "update", "value": {"pubkey": ""}}),
    ] {
        let reply = board.call(1, "Config.Set", params.clone());
        assert_eq!(reply["error"]["code"], 403, "{params} -> {reply}");
    }
    let reply = board.call(
        2,
        "Config.Set",
        json!({"config": {"update": {"commit_timeout": 5}}}),
    );
    assert_eq!(reply["result"], json!({"saved": false}));
    // On the bench it can.
    let reply = board.local_call(
        3,
        "Config.Set",
        json!({"config": {"update": {"pubkey": ""}}}),
    );
    assert_eq!(reply["result"], json!({"saved": false}));
    assert_eq!(board.device().config().get_str("update.pubkey"), "");
}

#[test]
fn an_unusable_key_refuses_every_image() {
    let mut board = board(json!({"update": {"pubkey": "not a key"}}));
    let reply = board.call(1, "OTA.Update", json!({"url": "/fw"}));
    assert_eq!(
        reply["error"]["message"],
        "update.pubkey is not a base64 Ed25519 public key"
    );
    assert!(board.downloads.is_empty());
}
