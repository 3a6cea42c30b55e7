//! The real `herd` binary against an in-process server: output formats and the exit codes
//! scripts rely on (`herd --help` lists them).

mod cli_support;

use std::process::Stdio;

use cli_support::{herd, run, Output};
use herd_testkit::{SimDevice, TestServer, WAIT};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[tokio::test]
async fn devices_device_and_register() {
    let server = TestServer::start().await;
    let key = server.admin_key.clone();

    let out = run(herd(&server, &key), &["devices", "--json"]).await;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "[]\n"),
        "{}",
        out.stderr
    );

    let out = run(
        herd(&server, &key),
        &["register", "porch", "--id", "lamp-1"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let words: Vec<&str> = out.stdout.split_whitespace().collect();
    assert_eq!(words.len(), 2, "ID TOKEN on one line: {}", out.stdout);
    assert_eq!(words[0], "lamp-1");
    let token = words[1].to_string();

    let out = run(herd(&server, &key), &["register", "kitchen", "--json"]).await;
    let registered: Value = serde_json::from_str(&out.stdout).expect("json");
    assert!(registered["id"].is_string() && registered["token"].is_string());

    let _device = SimDevice::connect(&server.ws_base, &token).await;
    let out = run(herd(&server, &key), &["devices", "--json"]).await;
    let devices: Vec<Value> = serde_json::from_str(&out.stdout).expect("json array");
    assert_eq!(devices.len(), 2);
    // Sorted by id, PROTOCOL §6 device objects.
    assert!(devices[0]["id"].as_str() < devices[1]["id"].as_str());
    let lamp = devices
        .iter()
        .find(|d| d["id"] == "lamp-1")
        .expect("lamp listed");
    assert_eq!(lamp["online"], true);
    assert_eq!(lamp["info"]["app"], "smart-light");

    let out = run(herd(&server, &key), &["devices"]).await;
    let mut lines = out.stdout.lines();
    assert!(lines.next().expect("header").starts_with("ID"));
    assert!(out.stdout.contains("porch") && out.stdout.contains("online"));
    assert!(out.stdout.contains("1.2.3"));

    let out = run(herd(&server, &key), &["device", "lamp-1", "--json"]).await;
    let device: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(device["name"], "porch");
    let out = run(herd(&server, &key), &["device", "lamp-1"]).await;
    assert!(out.stdout.contains("name         porch"), "{}", out.stdout);

    let out = run(herd(&server, &key), &["device", "nope"]).await;
    assert_eq!(out.code, 5);
    assert!(
        out.stderr
            .starts_with("herd: no device has the id or name \"nope\""),
        "{}",
        out.stderr
    );
    server.shutdown().await;
}

#[tokio::test]
async fn shadow_get_and_set() {
    let server = TestServer::start().await;
    let key = server.admin_key.clone();
    let (id, _) = server.create_device("lamp").await;

    let out = run(
        herd(&server, &key),
        &["shadow", "set", &id, r#"{"on": true}"#],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let doc: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(doc["state"]["desired"]["on"], true);
    assert_eq!(doc["state"]["delta"], json!({"on": true}));
    let version = doc["version"].as_u64().expect("version");

    // From stdin, as a full PROTOCOL §4.1 update.
    let mut command = herd(&server, &key);
    command
        .args(["shadow", "set", &id, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(br#"{"state": {"desired": {"brightness": 40}}}"#)
        .await
        .expect("write");
    drop(stdin);
    let output = child.wait_with_output().await.expect("wait");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let out = run(herd(&server, &key), &["shadow", "get", &id]).await;
    let doc: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(
        doc["state"]["desired"],
        json!({"on": true, "brightness": 40})
    );

    // A stale version: 409, exit 6, nothing changes.
    let out = run(
        herd(&server, &key),
        &[
            "shadow",
            "set",
            &id,
            r#"{"on": false}"#,
            "--version",
            &version.to_string(),
        ],
    )
    .await;
    assert_eq!(out.code, 6, "{}", out.stderr);
    assert!(out.stderr.contains("409"), "{}", out.stderr);

    let out = run(herd(&server, &key), &["shadow", "set", &id, "{not json"]).await;
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("not valid JSON"), "{}", out.stderr);
    server.shutdown().await;
}

#[tokio::test]
async fn rpc_calls_and_their_failures() {
    let server = TestServer::start().await;
    let key = server.admin_key.clone();
    let (id, token) = server.create_device("lamp").await;

    let out = run(herd(&server, &key), &["call", &id, "Echo"]).await;
    assert_eq!(out.code, 7, "offline: {}", out.stderr);
    assert!(out.stderr.contains("offline"), "{}", out.stderr);

    let _device = SimDevice::connect(&server.ws_base, &token).await;
    let out = run(herd(&server, &key), &["call", &id, "Echo", r#"{"x":1}"#]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        serde_json::from_str::<Value>(&out.stdout).expect("json"),
        json!({"x": 1})
    );

    let out = run(herd(&server, &key), &["call", &id, "Fail"]).await;
    assert_eq!(out.code, 7);
    assert!(out.stderr.contains("bad pin"), "{}", out.stderr);
    server.shutdown().await;
}

#[tokio::test]
async fn connection_failures_and_read_only() {
    let server = TestServer::start().await;
    let (id, _) = server.create_device("lamp").await;

    let out = run(herd(&server, "0123456789abcdef01234567"), &["devices"]).await;
    assert_eq!(out.code, 4);
    assert!(out.stderr.starts_with("herd: 401"), "{}", out.stderr);

    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let mut command = herd(&server, &server.admin_key);
    command.env("HERD_SERVER", format!("http://{closed}"));
    let out = run(command, &["devices"]).await;
    assert_eq!(out.code, 3);
    assert!(
        out.stderr.contains("cannot reach the server"),
        "{}",
        out.stderr
    );

    for args in [
        vec![
            "--read-only",
            "shadow",
            "set",
            id.as_str(),
            r#"{"on":true}"#,
        ],
        vec!["--read-only", "call", id.as_str(), "Sys.Reboot"],
        vec!["--read-only", "register", "x"],
    ] {
        let out = run(herd(&server, &server.admin_key), &args).await;
        assert_eq!(out.code, 8, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("read-only"), "{}", out.stderr);
    }
    // Reading still works read-only.
    let out = run(
        herd(&server, &server.admin_key),
        &["--read-only", "shadow", "get", &id],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);

    // A profile from the config file.
    let config = server.dir.path().join("console.toml");
    std::fs::write(
        &config,
        format!(
            "default_profile = \"lab\"\n[profiles.lab]\nserver = \"{}\"\napi_key = \"{}\"\nread_only = true\n",
            server.url(),
            server.admin_key
        ),
    )
    .expect("write config");
    let mut command = herd(&server, "");
    command
        .env("HERD_CONFIG", &config)
        .env_remove("HERD_SERVER")
        .env_remove("HERD_API_KEY");
    let out = run(command, &["register", "x"]).await;
    assert_eq!(out.code, 8, "the profile is read-only: {}", out.stderr);
    let mut command = herd(&server, "");
    command
        .env("HERD_CONFIG", &config)
        .env_remove("HERD_SERVER")
        .env_remove("HERD_API_KEY");
    let out = run(command, &["--profile", "prod", "devices"]).await;
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("no profile named \"prod\""),
        "{}",
        out.stderr
    );

    let out = run(herd(&server, &server.admin_key), &["frobnicate"]).await;
    assert_eq!(out.code, 2);
    let out = run(herd(&server, &server.admin_key), &["--help"]).await;
    assert!(out.stdout.contains("Exit codes:"));
    server.shutdown().await;
}

#[tokio::test]
async fn tail_streams_json_lines() {
    let server = TestServer::start().await;
    let (id, token) = server.create_device("lamp").await;
    let save = server.dir.path().join("saved.ndjson");
    let mut command = herd(&server, &server.admin_key);
    command
        .args([
            "tail", "--json", "--device", &id, "--name", "on*", "--count", "1", "--save",
        ])
        .arg(&save)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn");
    // Wait until the stream is up: herd says so on stderr.
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    loop {
        let line = tokio::time::timeout(WAIT, stderr.next_line())
            .await
            .expect("herd connects")
            .expect("read")
            .expect("stderr open");
        if line.contains("streaming notifications") {
            break;
        }
    }
    let _device = SimDevice::connect(&server.ws_base, &token).await;
    let output = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("herd exits after --count")
        .expect("wait");
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let event: Value = serde_json::from_str(lines[0]).expect("json line");
    assert_eq!(
        (event["id"].as_str(), event["name"].as_str()),
        (Some(id.as_str()), Some("online"))
    );
    assert!(event["ts"].as_f64().is_some());
    assert!(
        lines[0].starts_with("{\"ts\":"),
        "PROTOCOL §7 field order: {}",
        lines[0]
    );
    let saved = std::fs::read_to_string(&save).expect("saved file");
    assert_eq!(saved.trim_end(), lines[0]);
    server.shutdown().await;
}

#[tokio::test]
async fn a_private_ca_is_trusted_when_named() {
    let server = TestServer::start_tls().await;
    let url = server.https_url();
    let mut command = herd(&server, &server.admin_key);
    command.env("HERD_SERVER", &url);
    let out = run(command, &["devices", "--json"]).await;
    assert_eq!(out.code, 3, "untrusted certificate: {}", out.stderr);
    let mut command = herd(&server, &server.admin_key);
    command
        .env("HERD_SERVER", &url)
        .env("HERD_CA_CERT", server.ca_cert());
    let out = run(command, &["devices", "--json"]).await;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "[]\n"),
        "{}",
        out.stderr
    );
    let mut command = herd(&server, &server.admin_key);
    command.env("HERD_SERVER", &url);
    let out = run(command, &["--ca-cert", "/nonexistent.pem", "devices"]).await;
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("cannot read the CA certificate"),
        "{}",
        out.stderr
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_pinned_certificate_is_trusted_by_its_fingerprint_alone() {
    let server = TestServer::start_tls().await;
    use base64::Engine as _;
    let pem = std::fs::read_to_string(server.ca_cert()).expect("certificate");
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("PEM body");
    let pin = herd_client::tls::Fingerprint::of(&der).to_string();
    // The pin names the certificate, not the host: the bare address works too.
    let url = server.https_url().replace("localhost", "127.0.0.1");
    let mut command = herd(&server, &server.admin_key);
    command.env("HERD_SERVER", &url);
    let out = run(command, &["--tls-fingerprint", &pin, "devices", "--json"]).await;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "[]\n"),
        "{}",
        out.stderr
    );
    let other = format!(
        "{}{}",
        if pin.starts_with('0') { "1" } else { "0" },
        &pin[1..]
    );
    let mut command = herd(&server, &server.admin_key);
    command.env("HERD_SERVER", &url);
    let out = run(command, &["--tls-fingerprint", &other, "devices"]).await;
    assert_eq!(
        out.code, 3,
        "another certificate is refused: {}",
        out.stderr
    );
    let mut command = herd(&server, &server.admin_key);
    command.env("HERD_SERVER", &url);
    let out = run(command, &["--tls-fingerprint", "AB:CD", "devices"]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("SHA-256 fingerprint"), "{}", out.stderr);
    server.shutdown().await;
}

#[tokio::test]
async fn tail_stops_when_its_reader_goes_away() {
    let server = TestServer::start().await;
    let (_, token) = server.create_device("lamp").await;
    let mut command = herd(&server, &server.admin_key);
    command
        .args(["tail"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    loop {
        let line = tokio::time::timeout(WAIT, stderr.next_line())
            .await
            .expect("herd connects")
            .expect("read")
            .expect("stderr open");
        if line.contains("streaming notifications") {
            break;
        }
    }
    // Read one line, then close the pipe, as `herd tail | head -1` does.
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let device = SimDevice::connect(&server.ws_base, &token).await;
    let first = tokio::time::timeout(WAIT, stdout.next_line())
        .await
        .expect("a line")
        .expect("read")
        .expect("open");
    assert!(
        first.contains("online") || first.contains("updated") || first.contains("rpc."),
        "{first}"
    );
    drop(stdout);
    // More notifications: the next write finds the pipe closed and herd ends.
    device.disconnect().await;
    let (_, token2) = server.create_device("porch").await;
    let _again = SimDevice::connect(&server.ws_base, &token2).await;
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("herd exits once nobody reads")
        .expect("wait");
    assert!(status.success());
    server.shutdown().await;
}

#[tokio::test]
async fn devices_are_named_by_name_wherever_an_id_was_taken() {
    let server = TestServer::start().await;
    let key = server.admin_key.clone();
    let (porch, token) = server.create_device("porch-lamp").await;
    let (kitchen, _) = server.create_device("kitchen-lamp").await;
    let _device = SimDevice::connect(&server.ws_base, &token).await;

    let out = run(herd(&server, &key), &["device", "porch-lamp", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let device: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(device["id"], porch.as_str());
    // A unique start of a name, and a unique start of an id.
    let out = run(herd(&server, &key), &["device", "kit", "--json"]).await;
    let device: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(device["id"], kitchen.as_str(), "{}", out.stderr);
    let out = run(herd(&server, &key), &["device", &porch[..10], "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    // Ambiguous: usage error naming the candidates; unknown: not found.
    let out = run(herd(&server, &key), &["device", "k", "--json"]).await;
    assert_eq!(out.code, 0, "one name starts with k: {}", out.stderr);
    let (_, _) = server.create_device("kitchen-spot").await;
    let out = run(herd(&server, &key), &["device", "kitchen"]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("kitchen-lamp ("), "{}", out.stderr);
    assert!(out.stderr.contains("kitchen-spot ("), "{}", out.stderr);
    let out = run(herd(&server, &key), &["device", "attic"]).await;
    assert_eq!(out.code, 5, "{}", out.stderr);

    let out = run(herd(&server, &key), &["shadow", "get", "porch-lamp"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = run(
        herd(&server, &key),
        &["call", "porch-lamp", "Echo", r#"{"x":2}"#],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        serde_json::from_str::<Value>(&out.stdout).expect("json"),
        json!({"x": 2})
    );

    // The tail follows a device by name and shows names.
    let mut command = herd(&server, &key);
    command
        .args(["tail", "--device", "porch-lamp", "--count", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    loop {
        let line = tokio::time::timeout(WAIT, stderr.next_line())
            .await
            .expect("herd connects")
            .expect("read")
            .expect("stderr open");
        if line.contains("streaming notifications") {
            break;
        }
    }
    let out = run(herd(&server, &key), &["call", "porch-lamp", "Echo"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let output = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("herd exits after --count")
        .expect("wait");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("  porch-lamp  rpc.in.Echo"), "{stdout}");
    server.shutdown().await;
}

/// Spawns `herd tail ARGS` and returns once it says it is streaming.
async fn tail_streaming(
    server: &TestServer,
    args: &[&str],
) -> (
    tokio::process::Child,
    tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
) {
    let mut command = herd(server, &server.admin_key);
    command
        .arg("tail")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    loop {
        let line = tokio::time::timeout(WAIT, stderr.next_line())
            .await
            .expect("herd connects")
            .expect("read")
            .expect("stderr open");
        if line.contains("streaming notifications") {
            return (child, stderr);
        }
    }
}

#[tokio::test]
async fn tail_shows_history_and_changes_excludes_and_gives_up_on_a_dead_server() {
    let mut server = TestServer::start().await;
    let key = server.admin_key.clone();
    let (_, token) = server.create_device("porch").await;
    let device = SimDevice::connect(&server.ws_base, &token).await;
    let out = run(
        herd(&server, &key),
        &["shadow", "set", "porch", r#"{"on": true}"#],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);

    // History first, named, with the `updated` objects as what changed.
    let (mut child, _stderr) =
        tail_streaming(&server, &["--history", "50", "--exclude", "rpc.*"]).await;
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut stdout = String::new();
    while !stdout.contains("desired.on ∅→true") {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("the change shows: {stdout}"))
            .expect("read")
            .expect("open");
        stdout.push_str(&line);
        stdout.push('\n');
    }
    child.kill().await.expect("kill");
    assert!(stdout.contains("  porch  online"), "{stdout}");
    assert!(
        stdout.contains("  porch  updated  Δ first copy"),
        "{stdout}"
    );
    assert!(stdout.contains("desired.on ∅→true"), "{stdout}");
    assert!(!stdout.contains("rpc."), "excluded: {stdout}");

    // A server that goes away for longer than --retry-for: exit 3.
    let (child, mut stderr) = tail_streaming(&server, &["--retry-for", "1"]).await;
    device.disconnect().await;
    server.stop().await;
    let output = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("herd gives up")
        .expect("wait");
    assert_eq!(output.status.code(), Some(3));
    let mut said = String::new();
    while let Ok(Some(line)) = stderr.next_line().await {
        said.push_str(&line);
        said.push('\n');
    }
    assert!(said.contains("could not get it back"), "{said}");
    // Nobody there at all: exit 3 at once.
    let out = run(herd(&server, &key), &["tail"]).await;
    assert_eq!(out.code, 3, "{}", out.stderr);
}

/// `herd keys` (PROTOCOL §11): a read key made from the CLI reads and is refused a change
/// with exit 4; it shows in the list with its scope and goes away with `rm`.
#[tokio::test]
async fn keys_with_a_scope_and_an_expiry() {
    let server = TestServer::start().await;
    let admin = server.admin_key.clone();
    let out = run(
        herd(&server, &admin),
        &[
            "keys",
            "create",
            "--scope",
            "read",
            "--expires",
            "30d",
            "--name",
            "wall screen",
            "--json",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let made: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(made["scope"], "read");
    assert_eq!(made["name"], "wall screen");
    assert!(made["expires_at"]
        .as_str()
        .is_some_and(|t| t.starts_with("20")));
    let read = made["token"]
        .as_str()
        .expect("the secret, once")
        .to_string();
    let out = run(herd(&server, &read), &["devices", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = run(herd(&server, &read), &["register", "lamp"]).await;
    assert_eq!(out.code, 4, "a read key may not register: {}", out.stderr);
    assert!(out.stderr.contains("scope operate"), "{}", out.stderr);
    let out = run(herd(&server, &admin), &["keys", "list"]).await;
    assert!(
        out.stdout.contains("wall screen") && out.stdout.contains("read"),
        "{}",
        out.stdout
    );
    let out = run(
        herd(&server, &admin),
        &["keys", "create", "--expires", "soon"],
    )
    .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    let id = made["id"].as_str().unwrap();
    let out = run(herd(&server, &admin), &["keys", "rm", id]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = run(herd(&server, &read), &["devices"]).await;
    assert_eq!(out.code, 4, "a deleted key is refused: {}", out.stderr);
    server.shutdown().await;
}

/// `herd history`: the device as the log says it was at a time, by name.
#[tokio::test]
async fn history_rebuilds_a_device_at_a_time() {
    let server = TestServer::start().await;
    let key = server.admin_key.clone();
    server.create_device("porch").await;
    let set = |on: bool| {
        let update = if on {
            r#"{"on": true}"#
        } else {
            r#"{"on": false}"#
        };
        let (server, key) = (&server, &key);
        async move { run(herd(server, key), &["shadow", "set", "porch", update]).await }
    };
    assert_eq!(set(true).await.code, 0);
    let between = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert_eq!(set(false).await.code, 0);

    // The log is written behind the replies: ask until it holds the second change.
    let desired_on = |out: &Output| {
        let state: Value = serde_json::from_str(&out.stdout).expect("json");
        state["object"]["shadow"]["state"]["desired"]["on"].clone()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let out = run(herd(&server, &key), &["history", "porch", "--json"]).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        if desired_on(&out) == json!(false) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", out.stdout);
    }
    let at = format!("{between}");
    let out = run(
        herd(&server, &key),
        &["history", "porch", "--at", &at, "--json"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(desired_on(&out), json!(true), "{}", out.stdout);

    // The same from the log files, as people read it.
    let log = server.dir.path().to_string_lossy().to_string();
    let out = run(
        herd(&server, &key),
        &["history", "por", "--at", &at, "--log", &log],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("porch ("), "{}", out.stdout);
    assert!(
        out.stdout.contains(r#"desired      {"on":true}"#),
        "{}",
        out.stdout
    );
    let out = run(herd(&server, &key), &["history", "attic"]).await;
    assert_eq!(out.code, 5, "{}", out.stderr);
    server.shutdown().await;
}

/// The keys of the admin whose name says they were made for a read-only session.
async fn session_keys(server: &TestServer) -> Vec<herd_client::KeyObject> {
    server
        .client
        .keys()
        .await
        .expect("keys")
        .into_iter()
        .filter(|k| {
            k.name
                .starts_with(herd_console::session::SESSION_KEY_PREFIX)
        })
        .collect()
}

#[tokio::test]
async fn read_only_runs_with_a_read_key_the_server_enforces_and_deletes_after() {
    let server = TestServer::start().await;
    let (id, _) = server.create_device("lamp").await;

    // A call the console's own check lets through (it only reads) reaches the server with
    // the session's key, and the server refuses it: that key is `read` (PROTOCOL §11).
    let out = run(
        herd(&server, &server.admin_key),
        &["--read-only", "call", &id, "Sys.GetInfo"],
    )
    .await;
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains("403"), "{}", out.stderr);
    assert!(
        out.stderr.contains("this key's scope is read"),
        "{}",
        out.stderr
    );
    // Reading works, and no session key is left behind either way.
    let out = run(
        herd(&server, &server.admin_key),
        &["--read-only", "devices", "--json"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains(&id), "{}", out.stdout);
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
    assert_eq!(session_keys(&server).await, Vec::new());

    // Without read-only the same call goes out with the profile's own key.
    let out = run(
        herd(&server, &server.admin_key),
        &["call", &id, "Sys.GetInfo"],
    )
    .await;
    assert_eq!(
        out.code, 7,
        "the device is offline, not refused: {}",
        out.stderr
    );

    // A key that cannot make keys leaves only the console's own checks, and says so.
    let out = run(
        herd(&server, "0123456789abcdef01234567"),
        &["--read-only", "devices"],
    )
    .await;
    assert!(
        out.stderr
            .contains("warning: read-only is enforced by this console only"),
        "{}",
        out.stderr
    );
    assert_eq!(out.code, 4, "{}", out.stderr);
    server.shutdown().await;
}

#[tokio::test]
async fn a_read_only_session_key_is_read_scoped_short_lived_and_deleted_on_close() {
    let server = TestServer::start().await;
    let (id, _) = server.create_device("lamp").await;
    let profile = herd_console::profile::Profile {
        name: "lab".into(),
        server: server.url(),
        api_key: Some(server.admin_key.clone()),
        read_only: true,
        ca_cert: None,
        tls_fingerprint: None,
        log: Vec::new(),
        theme: Default::default(),
        keys: Default::default(),
    };
    let session = herd_console::session::Session::open(profile.clone()).await;
    assert!(session.enforced(), "{:?}", session.warning);
    assert_ne!(session.profile.api_key, profile.api_key);
    let client = session.profile.client().expect("client");
    let current = client.current_key().await.expect("the session key");
    assert_eq!(current.scope, Some(herd_client::Scope::Read));
    let expires = herd_console::text::parse_rfc3339(current.expires_at.as_deref().unwrap())
        .expect("an expiry");
    let hours = (expires - herd_console::text::unix_now()) / 3600.0;
    assert!(hours > 11.0 && hours <= 12.0, "{hours}");
    assert_eq!(session_keys(&server).await.len(), 1);
    let refused = client
        .update_shadow(&id, &json!({"state": {"desired": {"on": true}}}))
        .await
        .expect_err("a read key may not write");
    assert_eq!(refused.status(), Some(403), "{refused}");
    client.devices().await.expect("a read key reads");
    session.close().await;
    assert_eq!(session_keys(&server).await, Vec::new());
    assert!(client
        .devices()
        .await
        .expect_err("deleted")
        .is_unauthorized());

    // Not read-only: the profile's own key, nothing made.
    let session = herd_console::session::Session::open(herd_console::profile::Profile {
        read_only: false,
        ..profile
    })
    .await;
    assert!(!session.enforced() && session.warning.is_none());
    assert_eq!(
        session.profile.api_key.as_deref(),
        Some(server.admin_key.as_str())
    );
    session.close().await;
    assert_eq!(server.client.keys().await.expect("keys").len(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn a_key_map_that_clashes_is_refused_before_the_screen_is_taken() {
    let server = TestServer::start().await;
    let config = server.dir.path().join("console.toml");
    std::fs::write(&config, "[keys]\nresults = \"t\"\n").expect("write config");
    let mut command = herd(&server, &server.admin_key);
    command.env("HERD_CONFIG", &config);
    let out = run(command, &[]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("[keys] tail and results are both on t")
            || out.stderr.contains("[keys] results and tail are both on t"),
        "{}",
        out.stderr
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_read_only_tail_stopped_by_ctrl_c_deletes_its_session_key() {
    let server = TestServer::start().await;
    let mut command = herd(&server, &server.admin_key);
    command
        .args(["--read-only", "tail"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    loop {
        let line = tokio::time::timeout(WAIT, stderr.next_line())
            .await
            .expect("herd connects")
            .expect("read")
            .expect("stderr open");
        if line.contains("streaming notifications") {
            break;
        }
    }
    assert_eq!(
        session_keys(&server).await.len(),
        1,
        "the tail runs on its key"
    );
    let pid = child.id().expect("running").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("herd ends on Ctrl-C")
        .expect("wait");
    // herd tail ends on Ctrl-C as it always has, and the session's key goes with it.
    assert_eq!(status.code(), Some(0));
    assert_eq!(session_keys(&server).await, Vec::new());
    server.shutdown().await;
}
