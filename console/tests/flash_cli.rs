//! `herd flash` without a board: the whole flash image written to a file, checked the way
//! a board's bootloader and firmware will read it (partition table, app slot, factory
//! configuration read back by the firmware's own reader), and by esptool when it is
//! installed (CI installs it and requires it); a whole `herd flash --port` run against the
//! ROM loader stand-in, with a device that connects with what was written to its flash;
//! the exit codes of the steps.

mod cli_support;
mod light_elf;
mod rom_loader;

use std::path::{Path, PathBuf};
use std::process::Command;

use cli_support::{herd, run};
use firmware_core::config::{Config, Layer, Object};
use firmware_core::flash::{FlashConfig, MemoryFlash};
use firmware_core::idf::{
    light_partition_table, AppImage, PartitionTable, PARTITION_TABLE_OFFSET, PARTITION_TABLE_SIZE,
};
use firmware_core::platform::ConfigStorage;
use herd_console::bench::{build_image, Chip, Factory};
use herd_testkit::TestServer;
use light_elf::{synthetic_elf, synthetic_elf_with_code};
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
        ca_cert: None,
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
fn an_app_over_the_budget_is_refused() {
    let fits = synthetic_elf_with_code(Chip::Esp32c3, "1.0.0", 1_100 * 1024);
    assert!(build_image(Chip::Esp32c3, &fits, &factory()).is_ok());
    let over = synthetic_elf_with_code(Chip::Esp32c3, "1.0.0", 1_201 * 1024);
    let error = build_image(Chip::Esp32c3, &over, &factory()).expect_err("too big");
    assert!(error.contains("1228800"), "{error}");
    // An image for the other chip is refused, not laid out wrong.
    let c6 = synthetic_elf(Chip::Esp32c6, "1.0.0");
    let error = build_image(Chip::Esp32c3, &c6, &factory()).expect_err("not a C3 image");
    assert!(error.contains("esp32c3"), "{error}");
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
    let device = server.client.clone().device(&id).await.expect("registered");
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
    assert!(server
        .client
        .clone()
        .devices()
        .await
        .expect("devices")
        .is_empty());
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

/// What a light reads at boot from a flash the stand-in recorded: its factory
/// configuration and the app in ota_0 (SHA-256, hex, of the image).
fn read_back(rom: &rom_loader::Rom) -> (Config, String) {
    let layout = light_partition_table()
        .layout()
        .expect("the light's partitions");
    let config = rom.read(layout.config.offset, layout.config.size as usize);
    let mut storage = FlashConfig::new(MemoryFlash::from_bytes(config), 0, layout.config.size);
    let bytes = storage
        .load(Layer::Factory)
        .expect("readable")
        .expect("a factory layer");
    let Value::Object(layer) = serde_json::from_slice(&bytes).expect("JSON") else {
        panic!("not an object")
    };
    let slot = &layout.slots[0];
    let mut app = MemoryFlash::from_bytes(rom.read(slot.offset, slot.size as usize));
    let length = AppImage::length(&mut app, 0, slot.size).expect("an app image in ota_0");
    let app = rom.read(slot.offset, length as usize);
    let sha: String = Sha256::digest(&app)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (Config::new(layer, Object::new()), sha)
}

/// Plays the light once the flasher has verified its configuration and app: connects to
/// `dash.server` with `dash.token` from the flash and answers `Sys.GetInfo` with the
/// version and the image it finds there, until the socket closes.
async fn boot_light(
    rom: std::sync::Arc<std::sync::Mutex<rom_loader::Rom>>,
    mut verified: tokio::sync::mpsc::UnboundedReceiver<u32>,
    version: &str,
) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let layout = light_partition_table()
        .layout()
        .expect("the light's partitions");
    let mut seen = std::collections::HashSet::new();
    while !(seen.contains(&layout.config.offset) && seen.contains(&layout.slots[0].offset)) {
        seen.insert(
            verified
                .recv()
                .await
                .expect("the flasher verifies what it wrote"),
        );
    }
    let (config, fw_id) = read_back(&rom.lock().expect("rom"));
    let mut request = config
        .get_str("dash.server")
        .into_client_request()
        .expect("dash.server is a URL");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", config.get_str("dash.token"))
            .parse()
            .expect("a header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("the server takes the light's token");
    while let Some(Ok(message)) = ws.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let frame: Value = serde_json::from_str(&text).expect("JSON");
        if frame["method"] == "Sys.GetInfo" {
            let info = serde_json::json!({
                "id": config.get_str("device.id"),
                "app": "herd-light",
                "arch": "esp32c3",
                "fw_version": version,
                "fw_id": fw_id,
            });
            let reply = serde_json::json!({"id": frame["id"], "result": info});
            ws.send(Message::text(reply.to_string()))
                .await
                .expect("reply");
        }
    }
}

#[tokio::test]
async fn herd_flash_writes_the_board_then_waits_until_the_light_is_online() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let elf = dir.path().join("light.elf");
    std::fs::write(&elf, synthetic_elf(Chip::Esp32c3, "2.1.0")).expect("write");
    let loader = rom_loader::Loader::start(Chip::Esp32c3);
    let light = tokio::spawn(boot_light(loader.rom.clone(), loader.watch(), "2.1.0"));
    let output = run(
        herd(&server, &server.admin_key),
        &[
            "flash",
            "--port",
            &loader.path,
            "--no-reset",
            "--image",
            &elf.display().to_string(),
            "--name",
            "porch",
            "--wifi-ssid",
            "home",
            "--wifi-pass",
            "secret",
            "--pin",
            "7",
            "--wait",
            "25",
            "--json",
        ],
    )
    .await;
    assert_eq!(output.code, 0, "{}", output.stderr);
    let report: Value = serde_json::from_str(&output.stdout).expect("JSON");
    assert_eq!(report["online"], true, "{report}");
    assert_eq!(report["chip"], "esp32c3");
    assert_eq!(report["port"], loader.path.as_str());
    assert_eq!(report["fw_version"], "2.1.0");
    assert_eq!(report["app_version"], "2.1.0");
    // The light runs the image written: what it found in ota_0 is what herd built.
    assert_eq!(report["fw_id"], report["app_sha256"]);
    let id = report["id"].as_str().expect("an id");
    let device = server.client.clone().device(id).await.expect("registered");
    assert_eq!(device.name, "porch");
    assert!(device.online);
    light.abort();
    let rom = loader.release();
    let (config, _) = read_back(&rom.lock().expect("rom"));
    assert_eq!(config.get_str("device.id"), id);
    assert_eq!(config.get_str("wifi.sta.ssid"), "home");
    assert_eq!(config.get_i64("smartlight.pin"), 7);
}

#[tokio::test]
async fn a_light_for_a_tls_server_gets_the_ca_the_console_trusts() {
    let server = TestServer::start_tls().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let elf = dir.path().join("light.elf");
    std::fs::write(&elf, synthetic_elf(Chip::Esp32c6, "2.0.0")).expect("write");
    let out = dir.path().join("tls.bin");
    let mut command = herd(&server, &server.admin_key);
    command.env("HERD_SERVER", server.https_url());
    let ca = server.ca_cert().display().to_string();
    let output = run(
        command,
        &[
            "--ca-cert",
            &ca,
            "flash",
            "--out",
            &out.display().to_string(),
            "--chip",
            "esp32c6",
            "--image",
            &elf.display().to_string(),
            "--name",
            "attic",
        ],
    )
    .await;
    assert_eq!(output.code, 0, "{}", output.stderr);
    let layer = check_merged(&std::fs::read(&out).expect("the image"), Chip::Esp32c6);
    let config = Config::new(layer, Object::new());
    assert_eq!(
        config.get_str("dash.server"),
        format!("wss://localhost:{}/api/v2/rpc", server.addr.port())
    );
    // The certificate itself (self-signed, its own CA), as base64 DER.
    let pem = std::fs::read_to_string(server.ca_cert()).expect("the certificate");
    let body: String = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    assert_eq!(config.get_str("dash.ca_cert"), body);

    // A wss:// device socket and no CA to check it with: a usage error, before
    // registering anything.
    let plain = TestServer::start().await;
    let refused = run(
        herd(&plain, &plain.admin_key),
        &[
            "flash",
            "--out",
            &out.display().to_string(),
            "--chip",
            "esp32c6",
            "--image",
            &elf.display().to_string(),
            "--name",
            "attic",
            "--device-server",
            "wss://herd.example/api/v2/rpc",
        ],
    )
    .await;
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(refused.stderr.contains("--ca-cert"), "{}", refused.stderr);
    assert!(plain.client.devices().await.expect("devices").is_empty());
    // The light's own CA, for a server this machine reaches otherwise.
    let other = run(
        herd(&plain, &plain.admin_key),
        &[
            "flash",
            "--out",
            &out.display().to_string(),
            "--chip",
            "esp32c6",
            "--image",
            &elf.display().to_string(),
            "--name",
            "attic",
            "--device-server",
            "wss://herd.example/api/v2/rpc",
            "--device-ca-cert",
            &ca,
        ],
    )
    .await;
    assert_eq!(other.code, 0, "{}", other.stderr);
    let layer = check_merged(&std::fs::read(&out).expect("the image"), Chip::Esp32c6);
    let config = Config::new(layer, Object::new());
    assert_eq!(
        config.get_str("dash.server"),
        "wss://herd.example/api/v2/rpc"
    );
    assert_eq!(config.get_str("dash.ca_cert"), body);
}
