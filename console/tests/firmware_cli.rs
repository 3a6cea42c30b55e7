//! `herd firmware`, `herd ota` and `herd rollout` (PROTOCOL §10): the real binary against
//! an in-process server and, where devices must take an image, a simulated fleet whose
//! devices run the real firmware engine.

mod cli_support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use cli_support::{herd, run, run_within};
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use herd_agent::fleet::{Behaviour, Fleet, FleetHandle, FleetOptions};
use herd_agent::runner::LinkOptions;
use herd_client::NotifyEvent;
use herd_testkit::{TestServer, WAIT};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A rollout or a waited-for push takes several device restarts.
const LONG_WAIT: Duration = Duration::from_secs(120);

/// An image simulated devices (app herd-light, arch sim, 1.0.0) take: the header names
/// it, the rest is filler.
fn sim_image(dir: &Path, version: &str) -> PathBuf {
    let mut image = format!(
        "HERD-IMAGE {{\"app\":\"herd-light\",\"fw_version\":\"{version}\",\"arch\":\"sim\"}}\n"
    )
    .into_bytes();
    image.resize(4096, b'.');
    let path = dir.join(format!("light-{version}.bin"));
    std::fs::write(&path, image).expect("write image");
    path
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Starts `count` idle simulated devices and returns once the server has every one
/// online with its info, which rollout filters such as `fw:1.0.0` read.
async fn fleet(server: &TestServer, dir: &Path, count: usize) -> FleetHandle {
    keyed_fleet(server, dir, count, None).await
}

/// [`fleet`] with devices that hold `update.pubkey` (PROTOCOL §10.4).
async fn keyed_fleet(
    server: &TestServer,
    dir: &Path,
    count: usize,
    update_pubkey: Option<String>,
) -> FleetHandle {
    fleet_with(server, dir, count, update_pubkey, Behaviour::idle()).await
}

/// [`fleet`] with a key and a behaviour of choice.
async fn fleet_with(
    server: &TestServer,
    dir: &Path,
    count: usize,
    update_pubkey: Option<String>,
    behaviour: Behaviour,
) -> FleetHandle {
    let client = server.client.clone();
    // Listen first: a device's `updated` must not slip by before the stream is open.
    let mut stream = client.notify();
    loop {
        match tokio::time::timeout(WAIT, stream.next()).await {
            Ok(Some(NotifyEvent::Connected)) => break,
            Ok(Some(_)) => continue,
            other => panic!("notify stream did not open: {other:?}"),
        }
    }
    let fleet = Fleet::start(FleetOptions {
        behaviour,
        update_pubkey,
        link: LinkOptions {
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(5),
            ..LinkOptions::default()
        },
        ..FleetOptions::new(&server.url(), &server.admin_key, count, dir.into())
    })
    .await
    .expect("fleet starts");
    let mut ready = HashSet::new();
    while ready.len() < count {
        let event = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("devices come online")
            .expect("stream open");
        if let NotifyEvent::Notification(n) = event {
            if n.name == "updated"
                && n.data["online"] == true
                && n.data["info"]["fw_version"].is_string()
            {
                ready.insert(n.id);
            }
        }
    }
    fleet
}

#[tokio::test]
async fn keygen_writes_a_private_key_once() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("signing.key");
    let key_arg = key_file.to_str().expect("utf-8 path");

    let out = run(
        herd(&server, &server.admin_key),
        &["firmware", "keygen", "--out", key_arg],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let public = std::fs::read_to_string(dir.path().join("signing.key.pub")).expect("pub file");
    let public = public.trim();
    assert_eq!(out.stdout.lines().next(), Some(public), "{}", out.stdout);
    // The hint names the configuration key devices take it as (PROTOCOL §10.4).
    assert!(out.stdout.contains("update.pubkey"), "{}", out.stdout);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(public)
        .expect("base64 public key");
    VerifyingKey::from_bytes(&bytes.try_into().expect("32 bytes")).expect("an Ed25519 key");
    let text = std::fs::read_to_string(&key_file).expect("key file");
    assert_eq!(text.lines().next(), Some("herd-firmware-key v1 ed25519"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "private key mode {mode:o}");
    }

    // Never over an existing key.
    let out = run(
        herd(&server, &server.admin_key),
        &["firmware", "keygen", "--out", key_arg],
    )
    .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("refusing to overwrite"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read_to_string(&key_file).expect("key file"), text);

    // The default name, in the current directory; --json.
    let mut command = herd(&server, &server.admin_key);
    command.current_dir(dir.path());
    let out = run(command, &["firmware", "keygen", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let made = json(&out.stdout);
    let private = PathBuf::from(made["private_key_file"].as_str().expect("path"));
    assert_eq!(private, dir.path().join("herd-firmware.key"));
    assert!(private.exists());
    assert_eq!(
        made["public_key"].as_str().map(str::to_string),
        std::fs::read_to_string(dir.path().join("herd-firmware.key.pub"))
            .ok()
            .map(|t| t.trim().to_string())
    );
    server.shutdown().await;
}

#[tokio::test]
async fn upload_signs_lists_and_removes() {
    let server = TestServer::start().await;
    let key = server.admin_key.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("k.key");
    let out = run(
        herd(&server, &key),
        &[
            "firmware",
            "keygen",
            "--out",
            key_file.to_str().expect("utf-8"),
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let image = sim_image(dir.path(), "1.1.0");

    let out = run(
        herd(&server, &key),
        &[
            "firmware",
            "upload",
            image.to_str().expect("utf-8"),
            "--sign",
            key_file.to_str().expect("utf-8"),
            "--json",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let firmware = json(&out.stdout);
    let digest: [u8; 32] = Sha256::digest(std::fs::read(&image).expect("image")).into();
    let id = firmware["id"].as_str().expect("id").to_string();
    assert_eq!(
        id,
        hex(&digest),
        "the id is the image's SHA-256 (PROTOCOL §10.1)"
    );
    assert_eq!(
        (&firmware["app"], &firmware["version"], &firmware["signed"]),
        (
            &Value::from("herd-light"),
            &Value::from("1.1.0"),
            &Value::from(true)
        )
    );
    // PROTOCOL §10.4: Ed25519 over the SHA-256 digest, base64; it verifies with the
    // public key from FILE.pub.
    let b64 = base64::engine::general_purpose::STANDARD;
    let public = std::fs::read_to_string(dir.path().join("k.key.pub")).expect("pub");
    let public: [u8; 32] = b64
        .decode(public.trim())
        .expect("base64")
        .try_into()
        .expect("32 bytes");
    let signature = b64
        .decode(firmware["signature"].as_str().expect("signature"))
        .expect("base64 signature");
    let signature = Signature::from_slice(&signature).expect("64 bytes");
    VerifyingKey::from_bytes(&public)
        .expect("key")
        .verify(&digest, &signature)
        .expect("the signature verifies");

    // Plain output is the id alone; the same bytes again are the same image.
    let out = run(
        herd(&server, &key),
        &["firmware", "upload", image.to_str().expect("utf-8")],
    )
    .await;
    assert_eq!(
        (out.code, out.stdout.trim()),
        (0, id.as_str()),
        "{}",
        out.stderr
    );

    let out = run(herd(&server, &key), &["firmware", "list", "--json"]).await;
    let list = json(&out.stdout);
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    let out = run(herd(&server, &key), &["firmware", "list"]).await;
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    for column in [
        "ID", "APP", "VERSION", "PLATFORM", "SIZE", "SIGNED", "CREATED",
    ] {
        assert!(lines[0].contains(column), "{}", lines[0]);
    }
    let cells: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(&cells[..4], [&id[..12], "herd-light", "1.1.0", "sim"]);
    assert!(
        lines[1].contains("4.0 KiB") && lines[1].contains("yes"),
        "{}",
        lines[1]
    );

    // Deleting: an unknown id is 404, a short prefix a usage error, a prefix works.
    let out = run(herd(&server, &key), &["firmware", "rm", &"0".repeat(64)]).await;
    assert_eq!(out.code, 5, "{}", out.stderr);
    let out = run(herd(&server, &key), &["firmware", "rm", &id[..4]]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    let out = run(herd(&server, &key), &["firmware", "rm", "ffffffffff"]).await;
    assert_eq!(out.code, 5, "{}", out.stderr);
    let out = run(herd(&server, &key), &["firmware", "rm", &id[..10]]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = run(herd(&server, &key), &["firmware", "list", "--json"]).await;
    assert_eq!(out.stdout.trim(), "[]");
    server.shutdown().await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn plan_stores_nothing_and_a_planned_rollout_keeps_its_image() {
    let server = TestServer::start().await;
    let key = server.admin_key.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    // Registered, never connected: offline devices the plan must mention.
    for name in ["lamp-1", "lamp-2", "lamp-3", "porch"] {
        server.create_device(name).await;
    }
    let image = sim_image(dir.path(), "1.1.0");
    let out = run(
        herd(&server, &key),
        &["firmware", "upload", image.to_str().expect("utf-8")],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let firmware = out.stdout.trim().to_string();
    let spec_args = [
        "--firmware",
        &firmware[..8],
        "--select",
        "name:lamp-*",
        "--wave-counts",
        "1,2",
        "--soak",
        "5",
    ];

    let mut args = vec!["rollout", "plan"];
    args.extend(spec_args);
    let out = run(herd(&server, &key), &args).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("3 devices in 2 waves, 3 offline now"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("wave 1: 1 device, soak 5s, 1 offline: lamp-"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("wave 2: 2 devices, soak 5s, 2 offline: lamp-"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("note: 3 of 3 devices are offline now"),
        "the server's notes: {}",
        out.stdout
    );
    assert!(!out.stdout.contains("porch"), "{}", out.stdout);
    args.push("--json");
    let out = run(herd(&server, &key), &args).await;
    let plan = json(&out.stdout);
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["devices"].as_array().map(Vec::len), Some(3));
    let out = run(herd(&server, &key), &["rollout", "list", "--json"]).await;
    assert_eq!(out.stdout.trim(), "[]", "a plan stores nothing");

    // A bad spec is a usage error before anything is sent.
    let out = run(
        herd(&server, &key),
        &["rollout", "plan", "--firmware", &firmware],
    )
    .await;
    assert_eq!(out.code, 2, "{}", out.stderr);

    // The same arguments store it.
    let mut args = vec!["rollout", "create", "--name", "lamps"];
    args.extend(spec_args);
    let out = run(herd(&server, &key), &args).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rollout = out.stdout.trim().to_string();
    assert_eq!(rollout.len(), 24, "{}", out.stdout);
    let out = run(herd(&server, &key), &["rollout", "list"]).await;
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("ID") && lines[0].contains("SUCCEEDED/FAILED/PENDING"));
    assert!(lines[1].starts_with(&rollout), "{}", out.stdout);
    assert!(
        lines[1].contains("planned") && lines[1].contains("0/0/3"),
        "{}",
        lines[1]
    );
    let out = run(
        herd(&server, &key),
        &["rollout", "show", &rollout[..8], "--devices"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("state     planned, wave 1 of 2"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("wave 2  [....................]"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("NAME") && out.stdout.contains("ATTEMPTS"));

    // 409 while an unfinished rollout uses the image: exit 6 with the server's message.
    let out = run(herd(&server, &key), &["firmware", "rm", &firmware]).await;
    assert_eq!(out.code, 6, "{}", out.stderr);
    assert!(out.stderr.contains("unfinished rollout"), "{}", out.stderr);
    assert!(out.stderr.contains(&rollout), "{}", out.stderr);

    // Off a terminal an abort needs --yes.
    let out = run(herd(&server, &key), &["rollout", "abort", &rollout]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("--yes"), "{}", out.stderr);
    let out = run(
        herd(&server, &key),
        &["rollout", "abort", &rollout[..12], "--yes"],
    )
    .await;
    assert_eq!(
        (out.code, out.stdout.trim()),
        (0, "aborted"),
        "{}",
        out.stderr
    );
    // Watching an aborted rollout ends at once, with exit 1.
    let out = run(
        herd(&server, &key),
        &["rollout", "show", &rollout, "--watch"],
    )
    .await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stdout.contains("aborted"), "{}", out.stdout);
    // Finished, the rollout no longer holds the image.
    let out = run(herd(&server, &key), &["firmware", "rm", &firmware]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = run(herd(&server, &key), &["rollout", "show", "0123456789"]).await;
    assert_eq!(out.code, 5, "{}", out.stderr);
    server.shutdown().await;
}

#[tokio::test]
async fn read_only_refuses_every_change() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let image = sim_image(dir.path(), "1.1.0");
    let image = image.to_str().expect("utf-8");
    let rollout = "0123456789abcdef01234567";
    for args in [
        vec!["firmware", "upload", image],
        vec!["firmware", "rm", "0123456789ab"],
        vec!["ota", "push", "lamp", image],
        vec!["ota", "push", "lamp", "--firmware", "0123456789ab"],
        vec![
            "rollout",
            "create",
            "--firmware",
            "0123456789ab",
            "--select",
            "",
        ],
        vec!["rollout", "start", rollout],
        vec!["rollout", "pause", rollout],
        vec!["rollout", "resume", rollout],
        vec!["rollout", "abort", rollout, "--yes"],
        vec!["rollout", "retry", rollout],
    ] {
        let mut command = herd(&server, &server.admin_key);
        command.env("HERD_READ_ONLY", "true");
        let out = run(command, &args).await;
        assert_eq!(out.code, 8, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("read-only"), "{}", out.stderr);
    }
    for args in [vec!["firmware", "list"], vec!["rollout", "list"]] {
        let mut command = herd(&server, &server.admin_key);
        command.env("HERD_READ_ONLY", "true");
        let out = run(command, &args).await;
        assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
    }
    // `herd --help` documents the commands and the watch exit codes.
    let out = run(herd(&server, &server.admin_key), &["--help"]).await;
    for text in [
        "firmware keygen",
        "ota push",
        "rollout show ID --watch",
        "halted or",
    ] {
        assert!(out.stdout.contains(text), "{text}: {}", out.stdout);
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ota_push_updates_one_device_and_refuses_an_offline_one() {
    let server = TestServer::start().await;
    let key = server.admin_key.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = fleet(&server, &dir.path().join("fleet"), 2).await;
    let device = fleet.devices()[1].clone();
    let image = sim_image(dir.path(), "1.1.0");

    // By name, from a file, waiting for the device to run the image.
    let out = run_within(
        herd(&server, &key),
        &[
            "ota",
            "push",
            &device.name,
            image.to_str().expect("utf-8"),
            "--wait",
            "--commit-timeout",
            "30",
            "--json",
        ],
        LONG_WAIT,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let result = json(&out.stdout);
    assert_eq!(result["state"], "succeeded", "{result}");
    assert_eq!(result["device"], device.id.as_str());
    assert_eq!(result["version"], "1.1.0");
    let out = run(herd(&server, &key), &["device", &device.id, "--json"]).await;
    assert_eq!(
        json(&out.stdout)["info"]["fw_version"],
        "1.1.0",
        "{}",
        out.stdout
    );
    // The other device was left alone.
    let out = run(
        herd(&server, &key),
        &["device", &fleet.devices()[0].id, "--json"],
    )
    .await;
    assert_eq!(json(&out.stdout)["info"]["fw_version"], "1.0.0");

    // A stored image by prefix, to a device that is not connected: 503, exit 7.
    let firmware = result["firmware"]
        .as_str()
        .expect("firmware id")
        .to_string();
    let (offline, _) = server.create_device("attic").await;
    let out = run(
        herd(&server, &key),
        &["ota", "push", "attic", "--firmware", &firmware[..8]],
    )
    .await;
    assert_eq!(out.code, 7, "{}", out.stderr);
    assert!(out.stderr.contains("offline"), "{}", out.stderr);
    assert!(out.stderr.contains(&offline), "{}", out.stderr);
    let out = run(
        herd(&server, &key),
        &["ota", "push", "nobody", "--firmware", &firmware],
    )
    .await;
    assert_eq!(out.code, 5, "{}", out.stderr);
    fleet.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_rollout_is_watched_to_completion() {
    let server = TestServer::start().await;
    let key = server.admin_key.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let count = 6;
    let fleet = fleet(&server, &dir.path().join("fleet"), count).await;
    let image = sim_image(dir.path(), "1.1.0");
    let out = run(
        herd(&server, &key),
        &["firmware", "upload", image.to_str().expect("utf-8")],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let firmware = out.stdout.trim().to_string();

    let out = run(
        herd(&server, &key),
        &[
            "rollout",
            "create",
            "--firmware",
            &firmware,
            "--select",
            "fw:1.0.0 name:sim-*",
            "--waves",
            "50,50",
            "--soak",
            "1",
            "--max-parallel",
            "3",
            "--commit-timeout",
            "30",
            "--start",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rollout = out.stdout.trim().to_string();

    let out = run_within(
        herd(&server, &key),
        &["rollout", "show", &rollout[..8], "--watch"],
        LONG_WAIT,
    )
    .await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    // Off a terminal: one line per change, the last one the end.
    let last = out.stdout.lines().last().expect("lines");
    assert!(
        last.contains("completed") && last.contains("6 succeeded"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.lines().count() >= 2, "{}", out.stdout);

    let out = run(
        herd(&server, &key),
        &["rollout", "show", &rollout, "--json"],
    )
    .await;
    let shown = json(&out.stdout);
    assert_eq!(shown["state"], "completed");
    assert_eq!(shown["counters"]["succeeded"], count);
    assert_eq!(shown["waves"].as_array().map(Vec::len), Some(2));
    let out = run(herd(&server, &key), &["devices", "--json"]).await;
    for device in json(&out.stdout).as_array().expect("devices") {
        assert_eq!(device["info"]["fw_version"], "1.1.0", "{device}");
    }
    // Watching a finished rollout ends at once, with its exit code.
    let out = run(
        herd(&server, &key),
        &["rollout", "show", &rollout, "--watch"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    fleet.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_holding_the_public_key_take_the_signed_image() {
    let server = TestServer::start().await;
    let key = server.admin_key.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("k.key");
    let key_arg = key_file.to_str().expect("utf-8");
    let out = run(
        herd(&server, &key),
        &["firmware", "keygen", "--out", key_arg],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let public = out.stdout.lines().next().expect("public key").to_string();
    let fleet = keyed_fleet(&server, &dir.path().join("fleet"), 2, Some(public)).await;
    let image = sim_image(dir.path(), "1.1.0");
    let out = run(
        herd(&server, &key),
        &[
            "firmware",
            "upload",
            image.to_str().expect("utf-8"),
            "--sign",
            key_arg,
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let firmware = out.stdout.trim().to_string();

    // Pulled (PROTOCOL §10.3), the image comes with its signature, which each device
    // checks against its key before it switches.
    let out = run(
        herd(&server, &key),
        &[
            "rollout",
            "create",
            "--firmware",
            &firmware,
            "--select",
            "",
            "--delivery",
            "pull",
            "--commit-timeout",
            "30",
            "--halt-failed-count",
            "1",
            "--start",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rollout = out.stdout.trim().to_string();
    let out = run_within(
        herd(&server, &key),
        &["rollout", "show", &rollout, "--watch", "--json"],
        LONG_WAIT,
    )
    .await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    // --json --watch: the rollout object, one line per change.
    let last = json(out.stdout.lines().last().expect("a line"));
    assert_eq!(last["state"], "completed", "{last}");
    assert_eq!(last["counters"]["succeeded"], 2, "{last}");
    let out = run(herd(&server, &key), &["devices", "--json"]).await;
    for device in json(&out.stdout).as_array().expect("devices") {
        assert_eq!(device["info"]["fw_version"], "1.1.0", "{device}");
    }

    // Signed with another key, the image is refused; the rollout halts at the first
    // failure and the watch ends with exit 1.
    let other_key = dir.path().join("other.key");
    let other_arg = other_key.to_str().expect("utf-8");
    let out = run(
        herd(&server, &key),
        &["firmware", "keygen", "--out", other_arg],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let image = sim_image(dir.path(), "1.2.0");
    let out = run(
        herd(&server, &key),
        &[
            "firmware",
            "upload",
            image.to_str().expect("utf-8"),
            "--sign",
            other_arg,
        ],
    )
    .await;
    let forged = out.stdout.trim().to_string();
    let out = run(
        herd(&server, &key),
        &[
            "rollout",
            "create",
            "--firmware",
            &forged,
            "--select",
            "",
            "--delivery",
            "pull",
            "--max-parallel",
            "1",
            "--halt-failed-count",
            "1",
            "--start",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rollout = out.stdout.trim().to_string();
    let out = run_within(
        herd(&server, &key),
        &["rollout", "show", &rollout, "--watch"],
        LONG_WAIT,
    )
    .await;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("halted"), "{}", out.stderr);
    let out = run(
        herd(&server, &key),
        &["rollout", "show", &rollout, "--devices"],
    )
    .await;
    assert!(
        out.stdout.contains("signature"),
        "the device says why: {}",
        out.stdout
    );
    fleet.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_device_only_shared_with_the_caller_is_forbidden() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (id, _) = server.create_device("attic").await;
    let bob = server
        .client
        .add_user("bob", "secret-pw")
        .await
        .expect("user");
    server
        .client
        .change_device(
            &id,
            &herd_client::DeviceChange {
                shared_with: Some(bob.user.id.clone()),
                ..Default::default()
            },
        )
        .await
        .expect("shared");
    // PROTOCOL §11: whom a device is shared with may not change its firmware: 403, exit 4.
    let image = sim_image(dir.path(), "1.1.0");
    let out = run(
        herd(&server, &bob.api_key),
        &["ota", "push", "attic", image.to_str().expect("utf-8")],
    )
    .await;
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains("403"), "{}", out.stderr);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_push_while_one_runs_is_a_conflict() {
    let server = TestServer::start().await;
    let key = server.admin_key.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = fleet(&server, &dir.path().join("fleet"), 1).await;
    let device = fleet.devices()[0].id.clone();
    // Big enough (the simulated slot takes 1 MiB) that the transfer is still under way
    // when the second push comes.
    let image = dir.path().join("big.bin");
    let mut bytes =
        b"HERD-IMAGE {\"app\":\"herd-light\",\"fw_version\":\"1.1.0\",\"arch\":\"sim\"}\n".to_vec();
    bytes.resize(1000 * 1024, b'.');
    std::fs::write(&image, bytes).expect("write image");
    let out = run(
        herd(&server, &key),
        &["firmware", "upload", image.to_str().expect("utf-8")],
    )
    .await;
    let firmware = out.stdout.trim().to_string();

    let mut events = server.client.clone().notify();
    while !matches!(
        tokio::time::timeout(WAIT, events.next()).await,
        Ok(Some(NotifyEvent::Connected))
    ) {}
    let mut first = herd(&server, &key);
    first.args(["ota", "push", &device, "--firmware", &firmware, "--wait"]);
    let first = first.output();
    let first = tokio::spawn(first);
    // PROTOCOL §10.6: `ota.begin` says the first update is under way.
    loop {
        let event = tokio::time::timeout(WAIT, events.next())
            .await
            .expect("ota.begin")
            .expect("stream open");
        if let NotifyEvent::Notification(n) = event {
            if n.id == device && n.name == "ota.begin" {
                break;
            }
        }
    }
    let out = run(
        herd(&server, &key),
        &["ota", "push", &device, "--firmware", &firmware],
    )
    .await;
    assert_eq!(out.code, 6, "{}", out.stderr);
    assert!(out.stderr.contains("already in progress"), "{}", out.stderr);
    let first = tokio::time::timeout(LONG_WAIT, first)
        .await
        .expect("the first push ends")
        .expect("joined")
        .expect("ran");
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    fleet.shutdown().await;
    server.shutdown().await;
}

/// PROTOCOL §10.5, §10.6: after a rollout halts, the API's counters, the `ota.*` events in
/// notification.log and `herd report firmware` all say the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halted_rollout_counts_the_same_in_the_api_the_log_and_the_report() {
    let server = TestServer::start().await;
    let key = server.admin_key.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let count = 20;
    // Half the fleet fails, so the first wave holds a failing device (all ten of the
    // first wave passing has odds of 1 in 184,756) and the second wave is never started.
    let behaviour = Behaviour {
        ota_failure_fraction: 0.5,
        ..Behaviour::idle()
    };
    let fleet = fleet_with(&server, &dir.path().join("fleet"), count, None, behaviour).await;
    assert_eq!(fleet.failing_ids().len(), 10);
    let image = sim_image(dir.path(), "1.1.0");
    let out = run(
        herd(&server, &key),
        &["firmware", "upload", image.to_str().expect("utf-8")],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let firmware = out.stdout.trim().to_string();
    let out = run(
        herd(&server, &key),
        &[
            "rollout",
            "create",
            "--firmware",
            &firmware,
            "--select",
            "",
            "--waves",
            "50,50",
            "--max-parallel",
            "4",
            "--halt-failed-count",
            "1",
            "--start",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rollout = out.stdout.trim().to_string();
    let out = run_within(
        herd(&server, &key),
        &["rollout", "show", &rollout, "--watch"],
        LONG_WAIT,
    )
    .await;
    assert_eq!(
        out.code, 1,
        "the first revert halts it: {}\n{}",
        out.stdout, out.stderr
    );
    // Updates under way when it halted finish; then everything is counted.
    let deadline = tokio::time::Instant::now() + LONG_WAIT;
    let shown = loop {
        let out = run(
            herd(&server, &key),
            &["rollout", "show", &rollout, "--json"],
        )
        .await;
        let shown = json(&out.stdout);
        let c = &shown["counters"];
        if c["sending"] == 0 && c["rebooting"] == 0 && c["verifying"] == 0 {
            break shown;
        }
        assert!(tokio::time::Instant::now() < deadline, "{shown}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(shown["state"], "halted");
    let counters = &shown["counters"];
    assert!(
        counters["reverted"].as_u64().expect("reverted") >= 1,
        "{counters}"
    );
    assert!(
        counters["pending"].as_u64().expect("pending") > 0,
        "later devices untouched: {counters}"
    );
    // The events as logged.
    let log = server.dir.path().join("notification.log");
    let deadline = tokio::time::Instant::now() + WAIT;
    let events = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let events: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let counted = |name: &str| {
            events
                .iter()
                .filter(|e| e["name"] == name && e["data"]["rollout"] == rollout.as_str())
                .count() as u64
        };
        if counted("ota.success") == counters["succeeded"].as_u64().unwrap_or(0)
            && counted("ota.revert") == counters["reverted"].as_u64().unwrap_or(0)
        {
            break events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the log never caught up with {counters}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let failures = events
        .iter()
        .filter(|e| e["name"] == "ota.failure" && e["data"]["rollout"] == rollout.as_str())
        .count() as u64;
    assert_eq!(
        failures,
        counters["failed"].as_u64().unwrap_or(0) + counters["timed_out"].as_u64().unwrap_or(0)
    );
    // The report over that log.
    let out = run(
        herd(&server, &key),
        &[
            "report",
            "firmware",
            "--table",
            "rollouts",
            "--format",
            "json",
            "--no-cache",
            "--log",
            server.dir.path().to_str().expect("utf-8"),
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = json(&out.stdout);
    let rows = report.as_array().expect("rows");
    let row = rows
        .iter()
        .find(|r| r["id"] == rollout.as_str())
        .unwrap_or_else(|| panic!("{report}"));
    assert_eq!(row["state"], "halted", "{row}");
    for field in ["succeeded", "reverted", "failed", "skipped"] {
        assert_eq!(
            row[field].as_u64(),
            counters[field].as_u64(),
            "{field}: {row} vs {counters}"
        );
    }
    assert_eq!(row["devices"].as_u64(), Some(count as u64), "{row}");
    fleet.shutdown().await;
    server.shutdown().await;
}
