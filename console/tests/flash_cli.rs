//! `herd flash` without a board: the whole flash image written to a file, checked the way
//! a board's bootloader and firmware will read it (partition table, app slot, factory
//! configuration read back by the firmware's own reader), and by esptool when it is
//! installed (CI installs it and requires it); the exit codes of the steps that need a
//! board.

mod cli_support;
mod light_elf;

use std::path::{Path, PathBuf};
use std::process::Command;

use cli_support::common::TestServer;
use cli_support::{herd, run};
use firmware_core::config::{Config, Layer, Object};
use firmware_core::flash::{FlashConfig, MemoryFlash};
use firmware_core::idf::{
    light_partition_table, AppImage, PartitionTable, PARTITION_TABLE_OFFSET, PARTITION_TABLE_SIZE,
};
use firmware_core::platform::ConfigStorage;
use herd_console::bench::{build_image, Chip, Factory};
use light_elf::synthetic_elf;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The real light for `chip` when there is a release build of it: under
/// `HERD_LIGHT_TARGET_DIR` when that is set (scripts/check builds the light there first,
/// so it must be there), else in firmware/esp/target when this checkout has one.
fn built_light(chip: Chip) -> Option<PathBuf> {
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let Some(dir) = std::env::var_os("HERD_LIGHT_TARGET_DIR") else {
        let path = checkout.join(chip.default_elf());
        return path.exists().then_some(path);
    };
    let path = checkout
        .join(dir)
        .join(chip.target())
        .join("release/herd-light");
    assert!(path.exists(), "{} is missing", path.display());
    Some(path)
}

/// esptool's command, if it is installed; in CI its absence is a failure.
fn esptool() -> Option<Vec<String>> {
    let candidates: [&[&str]; 3] = [&["esptool"], &["esptool.py"], &["python3", "-m", "esptool"]];
    for candidate in candidates {
        let works = Command::new(candidate[0])
            .args(&candidate[1..])
            .arg("version")
            .output()
            .is_ok_and(|out| out.status.success());
        if works {
            return Some(candidate.iter().map(|s| s.to_string()).collect());
        }
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "esptool is required in CI (pip install esptool) to check the flash image"
    );
    eprintln!("esptool is not installed; the image is checked without it");
    None
}

/// Runs `esptool image-info` on `file`, returning its report.
fn image_info(esptool: &[String], chip: Chip, file: &Path) -> String {
    let output = Command::new(&esptool[0])
        .args(&esptool[1..])
        .args([
            "--chip",
            chip.name(),
            "image-info",
            &file.display().to_string(),
        ])
        .output()
        .expect("esptool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "esptool image-info {}: {text}",
        file.display()
    );
    text
}

fn factory() -> Factory {
    Factory {
        device_id: "0123456789abcdef01234567".into(),
        token: "89abcdef0123456789abcdef".into(),
        server: "ws://192.168.1.10:8009/api/v2/rpc".into(),
        name: "porch".into(),
        wifi: Some(("home".into(), "secret".into())),
        pin: Some(4),
        inverted: Some(true),
        update_pubkey: None,
    }
}

/// Checks a merged image the way the bootloader and the firmware read it, and returns
/// the factory layer the firmware finds.
fn check_merged(merged: &[u8], chip: Chip) -> Object {
    assert_eq!(merged[0], 0xe9, "a bootloader image at 0");
    let table = &merged[PARTITION_TABLE_OFFSET as usize..][..PARTITION_TABLE_SIZE];
    let table = PartitionTable::parse(table).expect("the partition table");
    assert_eq!(table, light_partition_table());
    let layout = table.layout().expect("the light's partitions");
    // The app is where the table says, is for this chip and fits its slot.
    let app_at = layout.slots[0].offset as usize;
    let app = AppImage::parse(&merged[app_at..]).expect("an app image in ota_0");
    assert_eq!(
        app.chip_id,
        firmware_core::idf::chip_id_of(chip.name()).unwrap()
    );
    let mut flash = merged.to_vec();
    flash.resize(0x40_0000, 0xff);
    let mut flash = MemoryFlash::from_bytes(flash);
    let length = AppImage::length(&mut flash, layout.slots[0].offset, layout.slots[0].size)
        .expect("its length");
    assert!(length as usize + app_at <= merged.len());
    // Blank OTA data: the bootloader starts ota_0.
    let ota = &merged[layout.ota_data.offset as usize..layout.ota_data.end() as usize];
    assert!(ota.iter().all(|&b| b == 0xff));
    // The firmware's own reader finds the factory layer in the configuration partition.
    let mut storage = FlashConfig::new(flash, layout.config.offset, layout.config.size);
    let bytes = storage
        .load(Layer::Factory)
        .expect("readable")
        .expect("a factory layer");
    assert_eq!(storage.load(Layer::User).expect("readable"), None);
    match serde_json::from_slice(&bytes).expect("JSON") {
        Value::Object(layer) => layer,
        other => panic!("not an object: {other}"),
    }
}

#[test]
fn the_image_puts_every_partition_where_the_table_says() {
    for chip in Chip::ALL {
        let elf = synthetic_elf(chip, "1.4.2");
        let image = build_image(chip, &elf, &factory()).expect("an image");
        let merged = image.merged();
        let layer = check_merged(&merged, chip);
        let config = Config::new(layer, Object::new());
        assert_eq!(config.get_str("device.id"), "0123456789abcdef01234567");
        assert_eq!(config.get_str("dash.token"), "89abcdef0123456789abcdef");
        assert_eq!(
            config.get_str("dash.server"),
            "ws://192.168.1.10:8009/api/v2/rpc"
        );
        assert!(config.get_bool("dash.enable"));
        assert_eq!(config.get_str("wifi.sta.ssid"), "home");
        assert_eq!(config.get_i64("smartlight.pin"), 4);
        assert!(config.get_bool("smartlight.inverted"));
        assert_eq!(image.app_version, "1.4.2");
        assert_eq!(
            image.app_sha256,
            Sha256::digest(image.app())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
    }
}

#[test]
fn esptool_reads_the_merged_image_and_the_app() {
    let Some(esptool) = esptool() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cases: Vec<_> = Chip::ALL
        .into_iter()
        .map(|chip| (chip, synthetic_elf(chip, "1.0.0"), "synthetic"))
        .collect();
    for chip in Chip::ALL {
        if let Some(path) = built_light(chip) {
            cases.push((chip, std::fs::read(path).expect("the built light"), "built"));
        }
    }
    for (chip, elf, kind) in cases {
        let image = build_image(chip, &elf, &factory()).expect("an image");
        let merged_path = dir.path().join(format!("{kind}-{chip}-merged.bin"));
        std::fs::write(&merged_path, image.merged()).expect("write");
        // At offset 0 is the bootloader; esptool checks its header, segments, checksum
        // and digest.
        let report = image_info(&esptool, chip, &merged_path);
        assert!(report.to_lowercase().contains("checksum"), "{report}");
        let app_path = dir.path().join(format!("{kind}-{chip}-app.bin"));
        std::fs::write(&app_path, image.app()).expect("write");
        let report = image_info(&esptool, chip, &app_path);
        assert!(
            report.to_lowercase().contains("valid"),
            "{kind} {chip}: {report}"
        );
    }
}

#[tokio::test]
async fn herd_flash_out_registers_the_device_and_writes_its_image() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let elf = dir.path().join("light.elf");
    std::fs::write(&elf, synthetic_elf(Chip::Esp32c3, "2.0.0")).expect("write");
    let out = dir.path().join("porch.bin");
    let output = run(
        herd(&server, &server.admin_key),
        &[
            "flash",
            "--out",
            &out.display().to_string(),
            "--chip",
            "esp32c3",
            "--image",
            &elf.display().to_string(),
            "--name",
            "porch",
            "--wifi-ssid",
            "home",
            "--wifi-pass",
            "secret",
            "--json",
        ],
    )
    .await;
    assert_eq!(output.code, 0, "{}", output.stderr);
    let report: Value = serde_json::from_str(&output.stdout).expect("JSON");
    let id = report["id"].as_str().expect("an id").to_string();
    assert_eq!(report["app_version"], "2.0.0");
    let device = server.client().device(&id).await.expect("registered");
    assert_eq!(device.name, "porch");
    let layer = check_merged(&std::fs::read(&out).expect("the image"), Chip::Esp32c3);
    let config = Config::new(layer, Object::new());
    assert_eq!(config.get_str("device.id"), id);
    assert_eq!(config.get_str("dash.token").len(), 24);
    assert_eq!(
        config.get_str("dash.server"),
        format!("ws://{}/api/v2/rpc", server.addr)
    );
    assert_eq!(config.get_str("wifi.sta.pass"), "secret");
}

#[tokio::test]
async fn herd_flash_exit_codes_name_the_step() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let elf = dir.path().join("light.elf");
    std::fs::write(&elf, synthetic_elf(Chip::Esp32c3, "2.0.0")).expect("write");
    let out = dir.path().join("x.bin").display().to_string();
    // The image cannot be read: 9, and nothing was registered.
    let missing = run(
        herd(&server, &server.admin_key),
        &[
            "flash",
            "--out",
            &out,
            "--chip",
            "esp32c3",
            "--image",
            "/nonexistent/light",
            "--name",
            "x",
        ],
    )
    .await;
    assert_eq!(missing.code, 9, "{}", missing.stderr);
    assert!(server.client().devices().await.expect("devices").is_empty());
    // Not an ELF at all: 9, after registering (the image is built with the token).
    let not_elf = dir.path().join("notes.txt");
    std::fs::write(&not_elf, "not firmware").expect("write");
    let garbage = run(
        herd(&server, &server.admin_key),
        &[
            "flash",
            "--out",
            &out,
            "--chip",
            "esp32c6",
            "--image",
            &not_elf.display().to_string(),
            "--name",
            "x",
            "--id",
            "abc",
            "--token",
            "def",
        ],
    )
    .await;
    assert_eq!(garbage.code, 9, "{}", garbage.stderr);
    // No board on the port: 10.
    let no_board = run(
        herd(&server, &server.admin_key),
        &[
            "flash",
            "--port",
            "/nonexistent/ttyACM9",
            "--name",
            "x",
            "--image",
            &elf.display().to_string(),
            "--wait",
            "0",
        ],
    )
    .await;
    assert_eq!(no_board.code, 10, "{}", no_board.stderr);
    assert!(
        no_board.stderr.contains("/nonexistent/ttyACM9"),
        "{}",
        no_board.stderr
    );
    // A refused key at registration: 4, as everywhere.
    let refused = run(
        herd(&server, "not-a-key"),
        &[
            "flash",
            "--out",
            &out,
            "--chip",
            "esp32c3",
            "--image",
            &elf.display().to_string(),
            "--name",
            "x",
        ],
    )
    .await;
    assert_eq!(refused.code, 4, "{}", refused.stderr);
    // Listing ports needs no server and prints JSON.
    let ports = run(
        herd(&server, "unused"),
        &["flash", "--list-ports", "--json"],
    )
    .await;
    assert_eq!(ports.code, 0, "{}", ports.stderr);
    assert!(serde_json::from_str::<Value>(&ports.stdout)
        .expect("JSON")
        .is_array());
    // Saying nothing to do is a usage error.
    let nothing = run(herd(&server, "unused"), &["flash"]).await;
    assert_eq!(nothing.code, 2, "{}", nothing.stderr);
}
