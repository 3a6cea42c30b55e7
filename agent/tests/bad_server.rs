//! A server that misbehaves: garbage, huge frames, unknown methods, deltas of the wrong
//! type, and vanishing in the middle of a firmware upload. The agent answers with Mongoose
//! OS style errors, keeps running, and its configuration and slots stay whole.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::{quick_link, wait_status, WAIT};
use futures_util::{SinkExt, StreamExt};
use herd_agent::agent::{Agent, AgentOptions, ImagePolicy};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

async fn accept(listener: &TcpListener) -> Ws {
    let (stream, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .expect("the agent connects")
        .expect("accept");
    tokio_tungstenite::accept_async(stream)
        .await
        .expect("handshake")
}

async fn send(ws: &mut Ws, text: impl Into<String>) {
    ws.send(Message::text(text.into())).await.expect("send");
}

/// The next frame from the device that answers `id`.
async fn reply(ws: &mut Ws, id: u64) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for a reply")
            .expect("socket ended")
            .expect("socket error");
        if let Message::Text(text) = message {
            let frame: Value = serde_json::from_str(&text).expect("the device sends JSON");
            if frame["id"] == id && frame.get("method").is_none() {
                return frame;
            }
        }
    }
}

#[tokio::test]
async fn a_misbehaving_server_does_not_break_the_device() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/api/v2/rpc", listener.local_addr().expect("addr"));
    let data_dir = tempfile::tempdir().expect("tempdir");
    let mut agent = Agent::start(AgentOptions {
        server: Some(url),
        token: Some("0123456789abcdef01234567".into()),
        link: quick_link(),
        images: ImagePolicy::StageOnly,
        ..AgentOptions::new(data_dir.path().into())
    })
    .await
    .expect("agent starts");

    let mut ws = accept(&listener).await;
    send(&mut ws, "\u{0}not json at all ]]] {{{").await;
    send(&mut ws, "}}}").await;
    send(&mut ws, r#"{"id": 1, "method": "No.Such.Method"}"#).await;
    let unknown = reply(&mut ws, 1).await;
    assert_eq!(unknown["error"]["code"], 404);
    assert_eq!(unknown["error"]["message"], "No handler for No.Such.Method");

    send(
        &mut ws,
        r#"{"id": 2, "method": "Shadow.Delta", "params": {"state": {"on": "yes"}}}"#,
    )
    .await;
    let wrong_type = reply(&mut ws, 2).await;
    assert_eq!(wrong_type["error"]["code"], 400);
    assert!(!agent.status().light_on);

    // A value bigger than the device's input bound is dropped without an answer...
    let big = format!(
        r#"{{"id": 3, "method": "Config.Set", "params": {{"config": {{"device": {{"name": "{}"}}}}}}}}"#,
        "x".repeat(40_000)
    );
    send(&mut ws, big).await;
    send(&mut ws, r#"{"id": 4, "method": "Config.Set", "params": {"config": {"device": {"name": "ok"}}, "save": true}}"#).await;
    let saved = reply(&mut ws, 4).await;
    assert_eq!(saved["result"], json!({"saved": true}), "{saved}");

    // ...and a WebSocket message over the socket limit ends the connection.
    let _ = ws.send(Message::text("y".repeat(200_000))).await;
    let mut ws = accept(&listener).await;
    wait_status(&mut agent, "second connection", |s| s.connections == 2).await;

    // The server vanishes in the middle of a firmware upload.
    send(
        &mut ws,
        r#"{"id": 5, "method": "OTA.Begin", "params": {"size": 10000, "commit_timeout": 60}}"#,
    )
    .await;
    assert_eq!(reply(&mut ws, 5).await["result"], true);
    let chunk = base64::engine::general_purpose::STANDARD.encode([0x7f; 1024]);
    send(
        &mut ws,
        json!({"id": 6, "method": "OTA.Write", "params": {"offset": 0, "data": chunk}}).to_string(),
    )
    .await;
    assert_eq!(reply(&mut ws, 6).await["result"], true);
    drop(ws);

    let mut ws = accept(&listener).await;
    send(&mut ws, r#"{"id": 7, "method": "OTA.Status"}"#).await;
    let status = reply(&mut ws, 7).await;
    assert_eq!(status["result"]["state"], 2, "{status}");
    send(&mut ws, r#"{"id": 8, "method": "OTA.End"}"#).await;
    assert_eq!(reply(&mut ws, 8).await["error"]["code"], 400);
    send(
        &mut ws,
        r#"{"id": 9, "method": "Config.Get", "params": {"key": "device.name"}}"#,
    )
    .await;
    assert_eq!(reply(&mut ws, 9).await["result"], "ok");

    // Nothing half-written is left behind.
    let slots: Vec<String> = std::fs::read_dir(data_dir.path().join("slots"))
        .expect("slots dir")
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    assert_eq!(slots, vec!["boot.json".to_string()], "{slots:?}");
    let user: Value = serde_json::from_slice(
        &std::fs::read(data_dir.path().join("config/user.json")).expect("user layer"),
    )
    .expect("the user layer is whole JSON");
    assert_eq!(user["device"]["name"], "ok");
    let status = agent.status();
    assert_eq!(
        (status.partition, status.committed, status.boots),
        (0, true, 1)
    );

    // The agent keeps retrying while the server is gone, and comes back when it returns.
    drop(ws);
    drop(listener);
    tokio::time::timeout(Duration::from_secs(5), agent.shutdown())
        .await
        .expect("shutdown is prompt")
        .expect("clean shutdown");
}
