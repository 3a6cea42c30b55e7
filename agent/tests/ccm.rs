//! `herd-agent ccm` as a real process on one side of a pseudo-terminal, a scripted host
//! MCU on the other, and a real server: the CCM's bridge between newline-delimited
//! JSON-RPC on the serial line and the device socket.

mod common;

use std::io::{Read, Write};
use std::process::Stdio;

use common::*;
use herd_client::NotifyStream;
use portable_pty::{native_pty_system, PtyPair, PtySize};
use serde_json::{json, Value};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// The host MCU: what it reads from the line, parsed (or as a string when it is not
/// JSON), and a writer for its own lines.
struct Host {
    frames: mpsc::UnboundedReceiver<Value>,
    writer: Box<dyn Write + Send>,
    _pair: PtyPair,
}

impl Host {
    /// A pseudo-terminal whose slave side the CCM opens by the returned path.
    fn open() -> (Host, String) {
        let pair = native_pty_system()
            .openpty(PtySize::default())
            .expect("a pseudo-terminal");
        let path = pair
            .master
            .tty_name()
            .expect("the terminal's name")
            .display()
            .to_string();
        let mut reader = pair.master.try_clone_reader().expect("reader");
        let writer = pair.master.take_writer().expect("writer");
        let (sender, frames) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let mut line = Vec::new();
            let mut buffer = [0u8; 1024];
            while let Ok(n) = reader.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                for &byte in &buffer[..n] {
                    if byte != b'\n' {
                        line.push(byte);
                        continue;
                    }
                    let text = String::from_utf8_lossy(&line).trim().to_string();
                    line.clear();
                    let frame = serde_json::from_str(&text).unwrap_or(Value::String(text));
                    if sender.send(frame).is_err() {
                        return;
                    }
                }
            }
        });
        (
            Host {
                frames,
                writer,
                _pair: pair,
            },
            path,
        )
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write to the line");
        self.writer.flush().expect("flush the line");
    }

    /// The next frame from the CCM that satisfies `predicate`; others are skipped.
    async fn wait_for(&mut self, what: &str, mut predicate: impl FnMut(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.frames.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting on the line for {what}"))
                .expect("the line closed");
            if predicate(&frame) {
                return frame;
            }
        }
    }

    /// The reply with `id`.
    async fn reply(&mut self, id: Value) -> Value {
        let what = format!("the reply to {id}");
        self.wait_for(&what, |frame| {
            frame["id"] == id && frame.get("method").is_none()
        })
        .await
    }
}

fn spawn_ccm(server: &TestServer, token: &str, serial: &str, data_dir: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_herd-agent"))
        .args(["ccm", "--serial", serial])
        .args(["--server", &server.socket_url(), "--token", token])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--call-timeout-ms", "1500", "--max-line", "512"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the agent binary starts")
}

/// A server, a device, its CCM process and the host on the line, with the CCM connected.
struct Bench {
    server: TestServer,
    id: String,
    events: NotifyStream,
    host: Host,
    _ccm: Child,
    _data_dir: tempfile::TempDir,
}

async fn bench() -> Bench {
    let server = TestServer::start().await;
    let (id, token) = server.create_device("mcu").await;
    let mut events = server.client.notify();
    subscribed(&mut events).await;
    let (mut host, serial) = Host::open();
    let data_dir = tempfile::tempdir().expect("tempdir");
    let ccm = spawn_ccm(&server, &token, &serial, data_dir.path());
    // The CCM says it booted once the port is open and raw; only then may the host talk.
    host.wait_for("Sys.Init", |frame| frame["method"] == "Sys.Init")
        .await;
    // Its own report on connect: firmware and memory, but no light of its own.
    let report = wait_event(&mut events, &id, "rpc.out.Dash.Shadow.Update", |data| {
        data["state"]["reported"].get("ota").is_some()
    })
    .await;
    assert!(report["state"]["reported"].get("on").is_none(), "{report}");
    Bench {
        server,
        id,
        events,
        host,
        _ccm: ccm,
        _data_dir: data_dir,
    }
}

/// Calls `method` on the device through the REST RPC endpoint, from a task of its own.
fn call(
    bench: &Bench,
    method: &str,
    params: Value,
) -> tokio::task::JoinHandle<Result<Value, herd_client::Error>> {
    let client = bench.server.client.clone();
    let (id, method) = (bench.id.clone(), method.to_string());
    tokio::spawn(async move { client.call(&id, &method, Some(&params)).await })
}

#[tokio::test]
async fn deltas_reports_and_calls_cross_the_serial_line() {
    let mut bench = bench().await;
    let id = bench.id.clone();

    // A desired change reaches the host as Shadow.Delta with the delta as params.
    bench
        .server
        .client
        .update_shadow(&id, &json!({"state": {"desired": {"on": true}}}))
        .await
        .expect("set desired");
    let delta = bench
        .host
        .wait_for("Shadow.Delta", |frame| frame["method"] == "Shadow.Delta")
        .await;
    assert_eq!(delta["params"], json!({"on": true}));
    assert!(delta.get("id").is_none(), "a notification: {delta}");

    // The host reports the way mjson's examples do, and once as a call.
    bench
        .host
        .send(b"{\"method\":\"Shadow.Report\",\"params\":{\"on\":true}}\n");
    bench
        .host
        .send(b"{\"id\":1,\"method\":\"Shadow.Report\",\"params\":{\"temp\":21.5}}\r\n");
    assert_eq!(bench.host.reply(json!(1)).await["result"], true);
    let shadow = bench.server.client.shadow(&id).await.expect("shadow");
    assert_eq!(shadow["state"]["reported"]["on"], true, "{shadow}");
    assert_eq!(shadow["state"]["reported"]["temp"], 21.5, "{shadow}");
    assert_eq!(shadow["state"]["delta"], json!({}), "{shadow}");

    // The host reads the shadow back.
    bench.host.send(b"{\"id\":2,\"method\":\"Shadow.Get\"}\n");
    let got = bench.host.reply(json!(2)).await;
    assert_eq!(got["result"]["state"]["desired"]["on"], true, "{got}");
    assert!(got["result"].get("metadata").is_none(), "{got}");

    // A cloud call to a method the host exports comes back with the host's result.
    let sum = call(&bench, "Sum", json!({"a": 2, "b": 3}));
    let request = bench
        .host
        .wait_for("Sum", |frame| frame["method"] == "Sum")
        .await;
    assert_eq!(request["params"], json!({"a": 2, "b": 3}));
    let (a, b) = (
        request["params"]["a"].as_i64(),
        request["params"]["b"].as_i64(),
    );
    let answer = json!({"id": request["id"], "result": a.unwrap_or(0) + b.unwrap_or(0)});
    bench.host.send(format!("{answer}\n").as_bytes());
    let result = sum.await.expect("the call task").expect("Sum answers");
    assert_eq!(result, 5);

    // A method the host never answers times out with an error that says so.
    let started = std::time::Instant::now();
    let hang = call(&bench, "Hang", json!({}));
    bench
        .host
        .wait_for("Hang", |frame| frame["method"] == "Hang")
        .await;
    let error = hang.await.expect("the call task").expect_err("no answer");
    let waited = started.elapsed();
    match &error {
        herd_client::Error::Api { device, .. } => {
            let device = device.as_ref().expect("the device's error");
            assert_eq!(device.code, 504, "{error}");
            assert!(device.message.contains("did not answer Hang"), "{error}");
        }
        other => panic!("expected the device's error, got {other}"),
    }
    assert!(
        waited >= std::time::Duration::from_millis(1400),
        "{waited:?}"
    );

    // A host's publish becomes an event, and a subscription gets the cloud's messages.
    bench.host.send(
        b"{\"id\":3,\"method\":\"MQTT.Pub\",\"params\":{\"topic\":\"mcu/temp\",\"message\":\"21.5\"}}\n",
    );
    assert_eq!(bench.host.reply(json!(3)).await["result"], true);
    let event = wait_event(&mut bench.events, &id, "rpc.out.MQTT.Pub", |_| true).await;
    assert_eq!(event, json!({"topic": "mcu/temp", "message": "21.5"}));
    bench
        .host
        .send(b"{\"id\":4,\"method\":\"MQTT.Sub\",\"params\":{\"topic\":\"ccm/#\"}}\n");
    assert_eq!(bench.host.reply(json!(4)).await["result"], true);
    let publish = call(
        &bench,
        "MQTT.Pub",
        json!({"topic": "ccm/led", "message": "1"}),
    );
    let message = bench
        .host
        .wait_for("MQTT.Message", |frame| frame["method"] == "MQTT.Message")
        .await;
    assert_eq!(
        message["params"],
        json!({"topic": "ccm/led", "message": "1"})
    );
    assert_eq!(publish.await.expect("task").expect("published"), true);

    // The host configures the CCM itself.
    bench
        .host
        .send(b"{\"id\":5,\"method\":\"Config.Get\",\"params\":{\"key\":\"dash.enable\"}}\n");
    assert_eq!(bench.host.reply(json!(5)).await["result"], true);
}

#[tokio::test]
async fn garbage_half_lines_and_long_lines_get_errors_and_the_bridge_goes_on() {
    let mut bench = bench().await;
    let id = bench.id.clone();
    // A cloud call is waiting for the host while the line turns to noise.
    let sum = call(&bench, "Sum", json!({"a": 40, "b": 2}));
    let request = bench
        .host
        .wait_for("Sum", |frame| frame["method"] == "Sum")
        .await;

    // Noise without an id: an error without one, as mjson answers.
    bench
        .host
        .send(b"ets Jan  8 2013,rst cause:2, boot mode:(3,6)\n");
    let error = bench
        .host
        .wait_for("an error", |frame| frame.get("error").is_some())
        .await;
    assert_eq!(error["error"]["code"], -32700, "{error}");
    assert!(error.get("id").is_none(), "{error}");

    // Half a frame, cut where the host reset, then its next frame on the same line.
    bench.host.send(b"{\"id\":7,\"method\":\"Shadow.Rep");
    bench
        .host
        .send(b"{\"id\":8,\"method\":\"Config.Get\",\"params\":{\"key\":\"dash.enable\"}}\n");
    let torn = bench.host.reply(json!(7)).await;
    assert_eq!(torn["error"]["code"], -32700, "{torn}");
    assert_eq!(bench.host.reply(json!(8)).await["result"], true);

    // A line over the bound (512 bytes) is refused once and skipped to its end.
    let mut long = b"{\"id\":9,\"method\":\"Shadow.Report\",\"params\":{\"blob\":\"".to_vec();
    long.extend(std::iter::repeat_n(b'x', 3000));
    long.extend_from_slice(b"\"}}\n");
    bench.host.send(&long);
    let refused = bench.host.reply(json!(9)).await;
    assert_eq!(refused["error"]["code"], -32700, "{refused}");
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("512"), "{refused}");

    // JSON that is not a request, and a method the CCM does not have.
    bench
        .host
        .send(b"[1,2,3]\n{\"id\":10,\"method\":\"Foo.Bar\"}\n");
    let invalid = bench
        .host
        .wait_for("-32600", |frame| frame["error"]["code"] == -32600)
        .await;
    assert!(invalid.get("id").is_none(), "{invalid}");
    assert_eq!(bench.host.reply(json!(10)).await["error"]["code"], -32601);

    // The bridge still works both ways: the waiting call completes...
    let answer = json!({"id": request["id"], "result": 42});
    bench.host.send(format!("{answer}\n").as_bytes());
    assert_eq!(sum.await.expect("task").expect("Sum answers"), 42);
    // ...and a report still reaches the shadow.
    bench
        .host
        .send(b"{\"id\":11,\"method\":\"Shadow.Report\",\"params\":{\"alive\":true}}\n");
    assert_eq!(bench.host.reply(json!(11)).await["result"], true);
    let shadow = bench.server.client.shadow(&id).await.expect("shadow");
    assert_eq!(shadow["state"]["reported"]["alive"], true, "{shadow}");
}
