//! A device's life on the host: boot, connect, delta, config save, reboot, OTA, commit,
//! revert, provisioning and factory reset, driven through the engine's public API.

mod common;

use base64::Engine as _;
use common::Board;
use firmware_core::device::Network;
use firmware_core::memory::MemoryPlatform;
use serde_json::{json, Value};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn image_bytes(version: &str, len: usize) -> Vec<u8> {
    let mut bytes = format!("HERD-IMAGE {{\"fw_version\": \"{version}\"}}\n").into_bytes();
    let mut x = 7u32;
    while bytes.len() < len {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        bytes.push((x >> 16) as u8);
    }
    bytes
}

/// Uploads an image in 1 KiB chunks (PROTOCOL §8) and returns the `OTA.End` reply.
fn upload(board: &mut Board, image: &[u8], commit_timeout: u64) -> Value {
    let begin = board.call(
        100,
        "OTA.Begin",
        json!({"size": image.len(), "timeout": 60, "commit_timeout": commit_timeout}),
    );
    assert_eq!(begin["result"], true, "{begin}");
    for (n, chunk) in image.chunks(1024).enumerate() {
        let reply = board.call(
            101 + n as u64,
            "OTA.Write",
            json!({"offset": n * 1024, "data": b64(chunk)}),
        );
        assert_eq!(reply["result"], true, "{reply}");
    }
    board.call(99, "OTA.End", json!({}))
}

#[test]
fn connect_reports_light_and_firmware() {
    // PROTOCOL §4.4: reported.ota carries the firmware identity and update status.
    let mut board = Board::new();
    board.connect();
    let reported = board.reported_updates();
    assert_eq!(reported.len(), 1);
    assert_eq!(reported[0]["on"], false);
    let ota = &reported[0]["ota"];
    assert_eq!(ota["fw_version"], "1.0.0");
    assert_eq!(ota["app"], "herd-light");
    assert_eq!(ota["partition"], 0);
    assert_eq!(ota["is_committed"], true);
    assert_eq!(ota["status"], 0);
    let stats = &reported[0]["stats"];
    assert_eq!(stats["ram_total"], 320 * 1024);
    assert!(stats["ram_free"].is_u64() && stats["ram_lwm"].is_u64());
}

#[test]
fn delta_drives_the_light_and_reports() {
    // PROTOCOL §4.3: apply the delta, reply with the object to merge into reported.
    let mut board = Board::new();
    board.connect();
    let reply = board.call(
        1,
        "Shadow.Delta",
        json!({"state": {"on": true}, "version": 3}),
    );
    assert_eq!(reply["result"], json!({"on": true}));
    assert_eq!(board.platform().light, Some((8, true)));
    let reply = board.call(2, "Shadow.Delta", json!({"state": {"on": false}}));
    assert_eq!(reply["result"], json!({"on": false}));
    assert_eq!(board.platform().light, Some((8, false)));
}

#[test]
fn inverted_light_on_a_configured_pin() {
    let mut platform = MemoryPlatform::new(common::image());
    platform.layers.insert(
        "factory",
        br#"{"smartlight": {"pin": 5, "inverted": true}}"#.to_vec(),
    );
    let mut board = Board::with(platform);
    // Booting drives the light off, which an inverted light means a high pin.
    assert_eq!(board.platform().light, Some((5, true)));
    board.connect();
    board.call(1, "Shadow.Delta", json!({"state": {"on": true}}));
    assert_eq!(board.platform().light, Some((5, false)));
}

#[test]
fn delta_of_the_wrong_type_is_refused_and_changes_nothing() {
    let mut board = Board::new();
    board.connect();
    for bad in [json!("yes"), json!(1), json!(null), json!({"x": 1})] {
        let reply = board.call(7, "Shadow.Delta", json!({"state": {"on": bad}}));
        assert_eq!(reply["error"]["code"], 400, "{reply}");
        assert!(!board.device().light_on());
    }
    let reply = board.call(8, "Shadow.Delta", json!({"state": "on"}));
    assert_eq!(reply["error"]["code"], 400);
    let reply = board.call(9, "Shadow.Delta", json!({"state": {"on": true}}));
    assert_eq!(reply["result"]["on"], true);
}

#[test]
fn local_switch_reports_while_connected() {
    let mut board = Board::new();
    let actions = board.device().set_light(true, 5);
    assert!(actions.is_empty(), "nothing is sent while offline");
    board.connect();
    board.sent.clear();
    let now = board.now;
    let actions = board.device().set_light(false, now);
    board.perform(actions);
    assert_eq!(board.reported_updates(), vec![json!({"on": false})]);
}

#[test]
fn config_set_lives_in_ram_until_saved() {
    let mut board = Board::new();
    board.connect();
    let reply = board.call(1, "Config.Set", json!({"config": {"debug": {"level": 3}}}));
    assert_eq!(reply["result"], json!({"saved": false}));
    let reply = board.call(2, "Config.Get", json!({"key": "debug.level"}));
    assert_eq!(reply["result"], 3);
    board.reboot();
    let reply = board.call(3, "Config.Get", json!({"key": "debug.level"}));
    assert_eq!(reply["result"], 2, "unsaved changes are lost on reboot");

    let reply = board.call(4, "Config.Set", json!({"key": "debug.level", "value": 4}));
    assert_eq!(reply["result"], json!({"saved": false}));
    let reply = board.call(5, "Config.Save", json!({}));
    assert_eq!(reply["result"], json!({"saved": true}));
    board.reboot();
    let reply = board.call(6, "Config.Get", json!({"key": "debug"}));
    assert_eq!(reply["result"], json!({"level": 4}));

    let reply = board.call(
        7,
        "Config.Set",
        json!({"config": {"smartlight": {"pin": 3}}, "save": true, "reboot": true}),
    );
    assert_eq!(reply["result"], json!({"saved": true}));
    assert_eq!(board.reboots, 3);
    assert_eq!(board.platform().light, Some((3, false)));
}

#[test]
fn config_errors_follow_mongoose_conventions() {
    let mut board = Board::new();
    board.connect();
    let cases = [
        (json!({"config": {"nope": 1}}), 400),
        (json!({"config": {"debug": {"level": "high"}}}), 400),
        (json!({"config": 5}), 400),
        (json!({}), 400),
        (json!({"key": "", "value": 1}), 400),
        (json!({"key": "debug.level"}), 400),
        (
            json!({"config": {"debug": {"level": 1}}, "save": "yes"}),
            400,
        ),
        (
            json!({"config": {"device": {"name": "x"}}, "level": "factory"}),
            403,
        ),
    ];
    for (params, code) in cases {
        let reply = board.call(1, "Config.Set", params.clone());
        assert_eq!(reply["error"]["code"], code, "{params} -> {reply}");
        assert!(reply["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    let reply = board.call(2, "Config.Get", json!({"key": "no.such"}));
    assert_eq!(reply["error"]["code"], 404);
    assert!(!board.device().config().has_unsaved_changes());
}

#[test]
fn conf_acl_limits_what_config_set_may_change() {
    let mut platform = MemoryPlatform::new(common::image());
    platform.layers.insert(
        "factory",
        br#"{"conf_acl": "wifi.*,device.name,debug.*", "dash": {"token": "secret"}}"#.to_vec(),
    );
    let mut board = Board::with(platform);
    board.connect();
    let reply = board.call(
        1,
        "Config.Set",
        json!({"config": {"dash": {"token": "stolen"}}}),
    );
    assert_eq!(reply["error"]["code"], 403);
    let reply = board.call(2, "Config.Set", json!({"config": {"conf_acl": "*"}}));
    assert_eq!(reply["error"]["code"], 403);
    let reply = board.call(
        3,
        "Config.Set",
        json!({"config": {"device": {"name": "kitchen"}}}),
    );
    assert_eq!(reply["result"]["saved"], false);
    assert_eq!(board.device().config().get_str("dash.token"), "secret");
}

#[test]
fn a_failed_save_leaves_the_stored_config_alone() {
    let mut board = Board::new();
    board.connect();
    board.call(
        1,
        "Config.Set",
        json!({"config": {"debug": {"level": 1}}, "save": true}),
    );
    let stored = board.platform().layers.get("user").cloned();
    board.platform().fail_config_writes = true;
    let reply = board.call(
        2,
        "Config.Set",
        json!({"config": {"debug": {"level": 3}}, "save": true}),
    );
    assert_eq!(reply["error"]["code"], 500);
    assert_eq!(board.platform().layers.get("user").cloned(), stored);
    // The change is still pending; a later save persists it.
    board.platform().fail_config_writes = false;
    let reply = board.call(3, "Config.Save", json!({}));
    assert_eq!(reply["result"]["saved"], true);
    board.reboot();
    assert_eq!(board.device().config().get_i64("debug.level"), 3);
}

#[test]
fn corrupt_stored_layers_do_not_stop_the_boot() {
    let mut platform = MemoryPlatform::new(common::image());
    platform
        .layers
        .insert("user", b"{\"debug\": {\"lev".to_vec());
    platform
        .layers
        .insert("factory", br#"{"dash": {"server": "ws://x"}}"#.to_vec());
    let mut board = Board::with(platform);
    assert_eq!(board.device().boot_notes().len(), 1);
    assert_eq!(board.device().config().get_str("dash.server"), "ws://x");
    assert_eq!(board.device().config().get_i64("debug.level"), 2);
}

#[test]
fn provisioning_over_the_access_point() {
    // An unprovisioned device offers its access point; the phone sets Wi-Fi and the
    // name over the local channel, saves, and the device restarts onto the network.
    let mut board = Board::new();
    assert!(matches!(
        board.device().network(),
        Network::AccessPoint { .. }
    ));
    let reply = board.local_call(
        1,
        "Config.Set",
        json!({"config": {
            "wifi": {"sta": {"enable": true, "ssid": "home", "pass": "pw"}, "ap": {"enable": false}},
            "device": {"name": "Kitchen light"}
        }}),
    );
    assert_eq!(reply["result"], json!({"saved": false}));
    assert_eq!(board.reboots, 0);
    let reply = board.local_call(2, "Config.Save", json!({}));
    assert_eq!(reply["result"], json!({"saved": true}));
    assert_eq!(board.reboots, 1, "provisioning restarts the device");
    assert_eq!(
        board.device().network(),
        Network::Station {
            ssid: "home".into(),
            pass: "pw".into()
        }
    );
    assert_eq!(
        board.device().config().get_str("device.name"),
        "Kitchen light"
    );
}

#[test]
fn factory_layer_is_written_locally_and_survives_a_factory_reset() {
    let mut board = Board::new();
    let reply = board.local_call(
        1,
        "Config.Set",
        json!({"level": "factory", "config": {"dash": {"enable": true, "server": "ws://cloud", "token": "t0"}}}),
    );
    assert_eq!(reply["result"]["saved"], true, "{reply}");
    board.connect();
    board.call(2, "Config.Set", json!({"config": {"device": {"name": "desk"}, "dash": {"server": "ws://other"}}, "save": true}));
    board.reboot();
    assert_eq!(board.device().config().get_str("dash.server"), "ws://other");

    // Holding the button for provision.button.hold_ms resets to factory.
    let now = board.now;
    let actions = board.device().button(true, now);
    board.perform(actions);
    assert_eq!(board.device().next_deadline(), Some(now + 3000));
    board.advance(2999);
    assert_eq!(board.reboots, 1);
    board.advance(1);
    assert_eq!(board.reboots, 2, "the reset reboots");
    let device = board.device();
    assert_eq!(device.config().get_str("dash.server"), "ws://cloud");
    assert_eq!(device.config().get_str("dash.token"), "t0");
    assert_eq!(device.config().get_str("device.name"), "");
    assert_eq!(
        device.cloud(),
        Some(("ws://cloud".to_string(), "t0".to_string()))
    );
}

#[test]
fn a_short_press_toggles_the_light() {
    let mut board = Board::new();
    board.connect();
    board.sent.clear();
    let actions = board.device().button(true, 100);
    board.perform(actions);
    let actions = board.device().button(false, 300);
    board.perform(actions);
    assert!(board.device().light_on());
    assert_eq!(board.reported_updates(), vec![json!({"on": true})]);
    assert_eq!(board.device().next_deadline(), None);
}

#[test]
fn ota_update_commit() {
    // PROTOCOL §8: Begin, Write, End; reboot into the new image uncommitted; Commit keeps it.
    let mut board = Board::new();
    board.connect();
    let image = image_bytes("2.0.0", 5000);
    let end = upload(&mut board, &image, 60);
    assert_eq!(end["result"], true, "{end}");
    assert_eq!(board.reboots, 1, "the device reboots after OTA.End");
    let ota = board.last_ota_report();
    assert_eq!(ota["partition"], 1);
    assert_eq!(ota["is_committed"], false);
    assert_eq!(ota["commit_timeout"], 60);
    assert_eq!(ota["fw_version"], "2.0.0");
    let reply = board.call(1, "Sys.GetInfo", json!(null));
    assert_eq!(reply["result"]["fw_version"], "2.0.0");

    let reply = board.call(2, "OTA.Commit", json!({}));
    assert_eq!(reply["result"], true);
    let ota = board.last_ota_report();
    assert_eq!(ota["is_committed"], true);
    assert_eq!(ota["status"], 3);
    assert_eq!(board.device().next_deadline(), None);
    board.advance(120_000);
    board.reboot();
    assert_eq!(board.last_ota_report()["partition"], 1);
    assert_eq!(board.last_ota_report()["fw_version"], "2.0.0");
}

#[test]
fn ota_reverts_without_commit() {
    let mut board = Board::new();
    board.connect();
    let end = upload(&mut board, &image_bytes("2.0.0", 3000), 30);
    assert_eq!(end["result"], true);
    assert_eq!(board.device().next_deadline(), Some(30_000));
    board.advance(29_999);
    assert_eq!(board.reboots, 1);
    board.advance(1);
    assert_eq!(
        board.reboots, 2,
        "commit timeout reboots into the old image"
    );
    let ota = board.last_ota_report();
    assert_eq!(ota["partition"], 0);
    assert_eq!(ota["is_committed"], true);
    assert_eq!(ota["fw_version"], "1.0.0");
    assert_eq!(ota["status"], 2);
}

#[test]
fn a_crash_before_commit_reverts() {
    let mut board = Board::new();
    board.connect();
    upload(&mut board, &image_bytes("2.0.0", 2000), 300);
    assert_eq!(board.last_ota_report()["partition"], 1);
    board.reboot(); // a crash or power cut before OTA.Commit
    assert_eq!(board.last_ota_report()["partition"], 0);
    assert_eq!(board.last_ota_report()["status"], 2);
}

#[test]
fn ota_revert_on_request() {
    let mut board = Board::new();
    board.connect();
    let reply = board.call(1, "OTA.Revert", json!({}));
    assert_eq!(reply["error"]["code"], 400, "nothing to revert");
    upload(&mut board, &image_bytes("2.0.0", 2000), 300);
    let reply = board.call(2, "OTA.Begin", json!({"size": 10}));
    assert_eq!(
        reply["error"]["code"], 400,
        "no update on top of an uncommitted one"
    );
    let reply = board.call(3, "OTA.Revert", json!({}));
    assert_eq!(reply["result"], true);
    assert_eq!(board.reboots, 2);
    assert_eq!(board.last_ota_report()["partition"], 0);
}

#[test]
fn ota_refuses_bad_transfers_and_keeps_the_running_image() {
    let mut board = Board::new();
    board.connect();
    assert_eq!(
        board.call(1, "OTA.Write", json!({"offset": 0, "data": ""}))["error"]["code"],
        400
    );
    assert_eq!(board.call(2, "OTA.End", json!({}))["error"]["code"], 400);
    assert_eq!(board.call(3, "OTA.Begin", json!({}))["error"]["code"], 400);
    assert_eq!(
        board.call(4, "OTA.Begin", json!({"size": -1}))["error"]["code"],
        400
    );
    assert_eq!(
        board.call(5, "OTA.Begin", json!({"size": 0}))["error"]["code"],
        400
    );
    assert_eq!(
        board.call(6, "OTA.Begin", json!({"size": 1u64 << 40}))["error"]["code"],
        400
    );
    assert_eq!(
        board.call(7, "OTA.Begin", json!({"size": 10}))["result"],
        true
    );
    assert_eq!(
        board.call(8, "OTA.Begin", json!({"size": 10}))["error"]["code"],
        400
    );
    assert_eq!(board.call(9, "OTA.Status", json!({}))["result"]["state"], 1);
    let wrong_offset = board.call(10, "OTA.Write", json!({"offset": 4, "data": b64(b"abcd")}));
    assert_eq!(wrong_offset["error"]["code"], 400);
    let not_base64 = board.call(11, "OTA.Write", json!({"offset": 0, "data": "***"}));
    assert_eq!(not_base64["error"]["code"], 400);
    let overrun = board.call(12, "OTA.Write", json!({"offset": 0, "data": b64(&[0; 11])}));
    assert_eq!(overrun["error"]["code"], 400);
    board.call(13, "OTA.Write", json!({"offset": 0, "data": b64(b"abcd")}));
    let early_end = board.call(14, "OTA.End", json!({}));
    assert_eq!(early_end["error"]["code"], 400);
    // The server vanishes mid-transfer: the partial image is dropped.
    board.disconnect();
    board.connect();
    assert_eq!(
        board.call(15, "OTA.Status", json!({}))["result"]["state"],
        2
    );
    assert_eq!(
        board.call(16, "OTA.Begin", json!({"size": 4}))["result"],
        true
    );

    // An image the platform refuses to verify never becomes bootable.
    board.platform().slots.reject_images = true;
    board.call(17, "OTA.Write", json!({"offset": 0, "data": b64(b"abcd")}));
    let end = board.call(18, "OTA.End", json!({}));
    assert_eq!(end["error"]["code"], 500);
    assert_eq!(board.last_ota_report()["status"], 2);
    assert_eq!(board.reboots, 0);
    board.reboot();
    assert_eq!(board.last_ota_report()["partition"], 0);
}

#[test]
fn a_stalled_transfer_times_out() {
    let mut board = Board::new();
    board.connect();
    board.call(1, "OTA.Begin", json!({"size": 100, "timeout": 5}));
    assert_eq!(board.device().next_deadline(), Some(5000));
    board.advance(5000);
    assert_eq!(board.last_ota_report()["status"], 2);
    assert_eq!(board.device().next_deadline(), None);
}

#[test]
fn download_updates_from_the_shadow() {
    // PROTOCOL §4.4: desired.ota.url makes the device download the image.
    let mut board = Board::new();
    board.connect();
    let reply = board.call(
        1,
        "Shadow.Delta",
        json!({"state": {"ota": {"url": "http://x/fw.bin"}}}),
    );
    assert_eq!(reply["result"], json!({"ota": {"url": "http://x/fw.bin"}}));
    assert_eq!(board.downloads.len(), 1);
    assert_eq!(board.downloads[0].url, "http://x/fw.bin");
    assert_eq!(board.downloads[0].commit_timeout_s, 0);
    assert_eq!(board.last_ota_report()["status"], 1);
    // The same delta again does not start a second download.
    board.call(
        2,
        "Shadow.Delta",
        json!({"state": {"ota": {"url": "http://x/fw.bin"}}}),
    );
    assert_eq!(board.downloads.len(), 1);

    let image = image_bytes("3.0.0", 2500);
    board.serve_download(&image, 1000);
    assert_eq!(board.reboots, 1);
    let ota = board.last_ota_report();
    assert_eq!(ota["fw_version"], "3.0.0");
    assert_eq!(
        ota["is_committed"], true,
        "commit_timeout 0 commits on boot"
    );

    let reply = board.call(
        3,
        "OTA.Update",
        json!({"url": "http://y", "commit_timeout": 10}),
    );
    assert_eq!(reply["result"], true);
    let last = board.downloads.last().expect("a download");
    assert_eq!((last.url.as_str(), last.commit_timeout_s), ("http://y", 10));
    assert_eq!(board.call(4, "OTA.Update", json!({}))["error"]["code"], 400);
}

#[test]
fn services_answer_like_mongoose_os() {
    let mut board = Board::new();
    board.connect();
    let list = board.call(1, "RPC.List", json!(null));
    let methods = list["result"].as_array().expect("array");
    for name in ["Sys.GetInfo", "Config.Set", "FS.Get", "OTA.Begin"] {
        assert!(methods.iter().any(|m| m == name), "{name} in RPC.List");
    }
    let info = board.call(2, "Sys.GetInfo", json!({}))["result"].clone();
    for key in [
        "id",
        "app",
        "fw_version",
        "fw_id",
        "arch",
        "mac",
        "uptime",
        "ram_size",
        "ram_free",
        "ram_min_free",
        "fs_size",
        "fs_free",
    ] {
        assert!(info.get(key).is_some(), "Sys.GetInfo has {key}: {info}");
    }
    let unknown = board.call(3, "Foo.Bar", json!({}));
    assert_eq!(
        unknown["error"],
        json!({"code": 404, "message": "No handler for Foo.Bar"})
    );
    let reboot = board.call(4, "Sys.Reboot", json!({"delay_ms": 10}));
    assert_eq!(reboot, json!({"id": 4, "result": null}));
    assert_eq!(board.reboots, 1);
    assert_eq!(
        board.call(5, "Sys.Reboot", json!({"delay_ms": "x"}))["error"]["code"],
        400
    );
    assert!(board.call(6, "Wifi.Scan", json!({}))["result"]["results"].is_array());
}

#[test]
fn file_services() {
    let mut board = Board::new();
    board.connect();
    let put = board.call(
        1,
        "FS.Put",
        json!({"filename": "a.txt", "data": b64(b"hello ")}),
    );
    assert_eq!(put["result"], Value::Null);
    board.call(
        2,
        "FS.Put",
        json!({"filename": "a.txt", "data": b64(b"world"), "append": true}),
    );
    let get = board.call(
        3,
        "FS.Get",
        json!({"filename": "a.txt", "offset": 2, "len": 4}),
    );
    assert_eq!(get["result"], json!({"data": b64(b"llo "), "left": 5}));
    assert_eq!(
        board.call(4, "FS.List", json!({}))["result"],
        json!(["a.txt"])
    );
    assert_eq!(
        board.call(5, "FS.Rename", json!({"src": "a.txt", "dst": "b.txt"}))["result"],
        Value::Null
    );
    assert_eq!(
        board.call(6, "FS.Get", json!({"filename": "a.txt"}))["error"]["code"],
        404
    );
    assert_eq!(
        board.call(7, "FS.Get", json!({"filename": "../b.txt"}))["error"]["code"],
        400
    );
    assert_eq!(
        board.call(8, "FS.Remove", json!({"filename": "b.txt"}))["result"],
        Value::Null
    );
    assert_eq!(board.call(9, "FS.List", json!({}))["result"], json!([]));
    board.platform().fs_capacity = 1000;
    let too_big = board.call(
        10,
        "FS.Put",
        json!({"filename": "big", "data": b64(&[0; 2000])}),
    );
    assert_eq!(too_big["error"]["code"], 500);
    assert_eq!(
        board.call(11, "FS.Put", json!({"filename": "x", "data": "%%"}))["error"]["code"],
        400
    );
}

#[test]
fn garbage_and_oversized_input_are_survived() {
    let mut board = Board::new();
    board.connect();
    board.sent.clear();
    board.feed(b"\x00\xffnot json at all ]]]");
    board.feed(b"{\"id\": 1, \"method\": }");
    let mut huge = b"{\"id\": 2, \"method\": \"RPC.List\", \"params\": \"".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 100_000));
    huge.extend_from_slice(b"\"}");
    board.feed(&huge);
    assert!(board.sent.is_empty(), "{:?}", board.sent);
    // Values split across pushes and packed together still work afterwards.
    board.feed(b"{\"id\": 3, \"meth");
    board.feed(b"od\": \"OTA.Status\"} {\"id\": 4, \"method\": \"OTA.Status\"}");
    let ids: Vec<Value> = board.sent.iter().map(|f| f["id"].clone()).collect();
    assert_eq!(ids, vec![json!(3), json!(4)]);
    // A request packed before an oversized value in the same chunk is still answered.
    board.sent.clear();
    let mut packed = br#"{"id": 5, "method": "OTA.Status"}"#.to_vec();
    packed.extend_from_slice(&huge);
    board.feed(&packed);
    board.feed(br#"{"id": 6, "method": "OTA.Status"}"#);
    let ids: Vec<Value> = board.sent.iter().map(|f| f["id"].clone()).collect();
    assert_eq!(ids, vec![json!(5), json!(6)]);
}

#[test]
fn frames_are_answered_only_when_they_should_be() {
    let mut platform = MemoryPlatform::new(common::image());
    platform
        .layers
        .insert("factory", br#"{"device": {"id": "light1"}}"#.to_vec());
    let mut board = Board::with(platform);
    board.connect();
    board.sent.clear();
    board.feed(br#"{"method": "Sys.GetInfo"}"#); // notification: no reply
    board.feed(br#"{"id": 1, "result": {"state": {}}}"#); // reply to our report
    board.feed(br#"{"id": 2, "dst": "another-device", "method": "Sys.Reboot"}"#);
    assert!(board.sent.is_empty());
    assert_eq!(board.reboots, 0);
    board.feed(br#"{"id": 3, "dst": "light1", "method": "RPC.List"}"#);
    assert_eq!(board.sent.len(), 1, "requests for this device are answered");
    board.sent.clear();
    board.feed(br#"{"id": true, "method": "RPC.List"}"#); // unusable id: nothing to echo
    assert!(board.sent.is_empty());
    board.feed(br#"{"id": "s1", "tag": 9, "method": 5}"#);
    assert_eq!(board.sent[0]["id"], "s1");
    assert_eq!(board.sent[0]["error"]["code"], 400);
    board.sent.clear();
    board.feed(br#"{"id": "s2", "tag": 9, "method": "RPC.List", "args": {}}"#);
    assert_eq!(board.sent[0]["id"], "s2");
    assert_eq!(board.sent[0]["tag"], 9);
}

#[test]
fn heartbeat_when_configured() {
    let mut platform = MemoryPlatform::new(common::image());
    platform.layers.insert(
        "factory",
        br#"{"dash": {"heartbeat_interval": 60}}"#.to_vec(),
    );
    let mut board = Board::with(platform);
    assert_eq!(board.device().next_deadline(), None);
    board.connect();
    assert_eq!(board.device().next_deadline(), Some(60_000));
    board.sent.clear();
    board.advance(60_000);
    assert_eq!(board.sent[0]["method"], "Dash.Heartbeat");
    assert!(board.sent[0].get("id").is_none());
}

#[test]
fn a_devices_life() {
    // Factory: the bench writes the cloud address; the owner provisions over the AP.
    let mut board = Board::new();
    board.local_call(
        1,
        "Config.Set",
        json!({"level": "factory", "config": {"dash": {"enable": true, "server": "ws://cloud", "token": "t"}}}),
    );
    board.local_call(
        2,
        "Config.Set",
        json!({"config": {"wifi": {"sta": {"enable": true, "ssid": "home"}}, "device": {"name": "porch"}}, "save": true}),
    );
    assert_eq!(board.reboots, 1);
    assert!(board.device().cloud().is_some());

    // Connect, follow a delta, save a setting, survive a reboot.
    board.connect();
    board.call(3, "Shadow.Delta", json!({"state": {"on": true}}));
    assert_eq!(board.platform().light, Some((8, true)));
    board.call(
        4,
        "Config.Set",
        json!({"config": {"smartlight": {"inverted": true}}, "save": true}),
    );
    board.call(5, "Sys.Reboot", json!({}));
    assert_eq!(board.reboots, 2);
    assert!(
        !board.device().light_on(),
        "the light starts off after a reboot"
    );
    assert_eq!(
        board.platform().light,
        Some((8, true)),
        "inverted: off is a high pin"
    );
    board.call(6, "Shadow.Delta", json!({"state": {"on": true}}));
    assert_eq!(board.platform().light, Some((8, false)));

    // Update, commit; update again, let it revert.
    upload(&mut board, &image_bytes("2.0.0", 4096), 30);
    assert_eq!(board.last_ota_report()["fw_version"], "2.0.0");
    board.call(7, "OTA.Commit", json!({}));
    upload(&mut board, &image_bytes("3.0.0", 4096), 30);
    assert_eq!(board.last_ota_report()["fw_version"], "3.0.0");
    board.advance(30_000);
    let ota = board.last_ota_report();
    assert_eq!(ota["fw_version"], "2.0.0");
    assert_eq!(ota["partition"], 1);
    assert_eq!(ota["status"], 2);
    assert_eq!(board.device().config().get_str("device.name"), "porch");
    assert_eq!(board.reboots, 5);
}
