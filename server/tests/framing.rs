//! Device socket framing and handshake rules (PROTOCOL §1, §2).

use futures_util::{SinkExt, StreamExt};
use herd_testkit::*;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn split_and_packed_frames_are_reassembled() {
    let server = TestServer::start().await;
    let (_, token) = server.create_device("lamp").await;
    let mut device = server.device(&token).await;
    // One frame split over three messages, then two frames packed in one with a newline.
    let text = json!({"id": 1, "method": "Dash.Shadow.Update", "params": {"state": {"reported": {"on": true, "s": "é {}"}}}}).to_string();
    let (a, rest) = text.split_at(7);
    let (b, c) = rest.split_at(20);
    for part in [a, b, c] {
        device
            .ws
            .send(Message::text(part.to_string()))
            .await
            .unwrap();
    }
    let reply = device.recv().await;
    assert_eq!(reply["id"], 1);
    assert_eq!(reply["result"]["state"]["reported"]["s"], "é {}");
    device
        .ws
        .send(Message::text("{\"id\":2,\"method\":\"Dash.Shadow.Get\"}\n  {\"id\":3,\"method\":\"Dash.Shadow.Get\"}"))
        .await
        .unwrap();
    assert_eq!(device.recv().await["id"], 2);
    assert_eq!(device.recv().await["id"], 3);
    server.shutdown().await;
}

#[tokio::test]
async fn malformed_input_is_dropped_and_the_socket_lives() {
    let server = TestServer::start().await;
    let (_, token) = server.create_device("lamp").await;
    let mut device = server.device(&token).await;
    device
        .ws
        .send(Message::text("{\"id\": 1, \"method\": tru}"))
        .await
        .unwrap();
    device.ws.send(Message::text("garbage")).await.unwrap();
    device.ws.send(Message::text("[1,2]")).await.unwrap();
    device
        .ws
        .send(Message::text("{\"id\": 9, \"method\": 5}"))
        .await
        .unwrap();
    let reply = device.recv().await;
    assert_eq!(
        reply["id"], 9,
        "an invalid frame with an id gets an error reply"
    );
    assert_eq!(reply["error"]["code"], 400);
    let reply = device.request("Dash.Shadow.Get", json!(null)).await;
    assert!(reply["result"].is_object());
    server.shutdown().await;
}

#[tokio::test]
async fn input_over_the_limit_closes_the_socket() {
    let server = TestServer::start_with(|s| s.frame_buffer_bytes = 4096).await;
    let (id, token) = server.create_device("lamp").await;
    let mut device = server.device(&token).await;
    // An unterminated value growing past the bound, sent in pieces.
    device
        .ws
        .send(Message::text(format!(
            "{{\"id\":1,\"x\":\"{}",
            "a".repeat(3000)
        )))
        .await
        .unwrap();
    let _ = device.ws.send(Message::text("b".repeat(3000))).await;
    let mut closed = false;
    while let Ok(Some(message)) = tokio::time::timeout(WAIT, device.ws.next()).await {
        match message {
            Ok(Message::Close(_)) | Err(_) => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    assert!(closed, "the server must close an over-limit connection");
    // The server is fine and the device can come back.
    let mut device = server.device(&token).await;
    assert!(device.request("Dash.Shadow.Get", json!(null)).await["result"].is_object());
    let (_, body) = server.call("GET", &format!("/devices/{id}"), None).await;
    assert_eq!(body["online"], true);
    server.shutdown().await;
}

#[tokio::test]
async fn handshake_rules_token_subprotocol_and_legacy_path() {
    let server = TestServer::start().await;
    let (_, token) = server.create_device("lamp").await;
    // Unknown or missing token: 401 before upgrading.
    for url in [
        format!(
            "{}/rpc?access_token=ffffffffffffffffffffffff",
            server.ws_base
        ),
        format!("{}/rpc", server.ws_base),
    ] {
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 401)
            }
            other => panic!("expected 401, got {:?}", other.map(|(_, r)| r.status())),
        }
    }
    // Bearer header, the legacy v1 path, and the first offered subprotocol echoed.
    let url = format!("{}/rpc", server.ws_base.replace("/api/v2", "/api/v1"));
    let mut req = request_with_token(&url, &token);
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "mg_ws, other".parse().unwrap());
    req.headers_mut()
        .insert("Origin", "http://evil.example".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade");
    assert_eq!(resp.headers()["sec-websocket-protocol"], "mg_ws");
    let first = recv_json(&mut ws).await;
    assert_eq!(first["method"], "Sys.GetInfo");
    // No subprotocol offered: none in the response.
    let req = format!("{}/rpc?access_token={token}", server.ws_base)
        .into_client_request()
        .unwrap();
    let (_, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert!(resp.headers().get("sec-websocket-protocol").is_none());
    server.shutdown().await;
}

#[tokio::test]
async fn a_second_connection_replaces_the_first_without_going_offline() {
    let server = TestServer::start().await;
    let mut notify = server.notify(&server.admin_key).await;
    let (id, token) = server.create_device("lamp").await;
    let mut first = server.device(&token).await;
    expect_event(&mut notify, &id, "online").await;
    let mut second = server.device(&token).await;
    // The first socket is closed by the server.
    loop {
        match tokio::time::timeout(WAIT, first.ws.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            _ => continue,
        }
    }
    assert!(second.request("Dash.Shadow.Get", json!(null)).await["result"].is_object());
    let (_, body) = server.call("GET", &format!("/devices/{id}"), None).await;
    assert_eq!(body["online"], true);
    // No offline was emitted between: the next online-state event is an `updated` with online=true.
    let event = loop {
        let event = recv_json(&mut notify).await;
        if event["name"] == "offline"
            || (event["name"] == "updated" && event["data"]["online"] == true)
        {
            break event;
        }
    };
    assert_eq!(event["name"], "updated");
    server.shutdown().await;
}

#[tokio::test]
async fn silent_devices_are_dropped_after_missed_pongs() {
    let server = TestServer::start_with(|s| s.ping_interval_secs = 1).await;
    let mut notify = server.notify(&server.admin_key).await;
    let (id, token) = server.create_device("lamp").await;
    // A raw TCP client that completes the handshake and then never reads (so never pongs).
    let addr = server
        .base
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    let handshake = format!(
        "GET /api/v2/rpc?access_token={token} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(handshake.as_bytes()).await.unwrap();
    expect_event(&mut notify, &id, "online").await;
    expect_event(&mut notify, &id, "offline").await;
    drop(stream);
    server.shutdown().await;
}

/// A device that stops reading cannot pin its session: writes give up after
/// `device_write_timeout_ms`, the device goes offline, and the server serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_never_reads_is_dropped_within_the_bound() {
    let server = TestServer::start_with(|s| s.device_write_timeout_ms = 500).await;
    let (id, token) = server.create_device("deaf").await;
    let mut events = server.notify(&server.admin_key).await;
    // Connect, and never read again: Sys.GetInfo goes unanswered, deltas pile up.
    let (deaf, _) =
        tokio_tungstenite::connect_async(format!("{}/rpc?access_token={token}", server.ws_base))
            .await
            .unwrap();
    expect_event(&mut events, &id, "online").await;
    // Deltas of about 24 KiB each until the socket buffers between us are full.
    let filler = "x".repeat(24 * 1024);
    let started = tokio::time::Instant::now();
    let mut offline = false;
    for n in 0..2000 {
        let (status, _) = server
            .call(
                "POST",
                &format!("/devices/{id}/shadow"),
                Some(json!({"state": {"desired": {"blob": format!("{n}{filler}")}}})),
            )
            .await;
        assert_eq!(status, 200);
        let (_, device) = server.call("GET", &format!("/devices/{id}"), None).await;
        if device["online"] == false {
            offline = true;
            break;
        }
    }
    assert!(offline, "the device was never dropped");
    assert!(started.elapsed() < WAIT, "dropped within the bound");
    // The server is fine: health, and another device works.
    let health: Value = server
        .http
        .get(server.base.replace("/api/v2", "/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let (_, other) = server.create_device("other").await;
    let mut other = server.device(&other).await;
    let reply = other.report(json!({"on": true})).await;
    assert!(reply.get("result").is_some(), "{reply}");
    drop(deaf);
    server.shutdown().await;
}

/// The code of the close frame the server sends next, skipping anything before it.
async fn close_code(
    ws: &mut Ws,
) -> Option<tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| f.code),
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// RFC 6455 framing on the device socket (PROTOCOL §1): a message fragmented with a ping in
/// between is one message and the ping gets its pong; a frame a server must refuse closes the
/// socket with the right code, and the device can come back.
#[tokio::test]
async fn fragments_pings_and_refused_frames() {
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::MaybeTlsStream;

    let server = TestServer::start().await;
    let (id, token) = server.create_device("lamp").await;
    let mut device = server.device(&token).await;
    let text = |s: &str, opcode, fin| Message::Frame(Frame::message(s.to_string(), opcode, fin));
    device
        .ws
        .send(text("{\"id\":7,\"met", OpCode::Data(Data::Text), false))
        .await
        .unwrap();
    device
        .ws
        .send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    device
        .ws
        .send(text(
            "hod\":\"Dash.Shadow",
            OpCode::Data(Data::Continue),
            false,
        ))
        .await
        .unwrap();
    device
        .ws
        .send(text(".Get\"}", OpCode::Data(Data::Continue), true))
        .await
        .unwrap();
    let mut pong = false;
    let reply = loop {
        match tokio::time::timeout(WAIT, device.ws.next()).await {
            Ok(Some(Ok(Message::Pong(payload)))) => {
                assert_eq!(&payload[..], b"are you there");
                pong = true;
            }
            Ok(Some(Ok(Message::Text(t)))) => break serde_json::from_str::<Value>(&t).unwrap(),
            other => panic!("expected a pong and a reply, got {other:?}"),
        }
    };
    assert!(pong, "the pong comes before the reply");
    assert_eq!(reply["id"], 7);
    assert!(reply["result"].is_object(), "{reply}");

    // An unmasked frame, written under the client's framing: refused with 1002.
    match device.ws.get_mut() {
        MaybeTlsStream::Plain(tcp) => tcp.write_all(&[0x81, 0x01, b'x']).await.unwrap(),
        _ => panic!("plain socket expected"),
    }
    let code = close_code(&mut device.ws).await;
    assert_eq!(code, Some(CloseCode::Protocol));

    // Text that is not UTF-8: refused with 1007.
    let mut device = server.device(&token).await;
    device
        .ws
        .send(Message::Frame(Frame::message(
            vec![b'{', 0xff, b'}'],
            OpCode::Data(Data::Text),
            true,
        )))
        .await
        .unwrap();
    let code = close_code(&mut device.ws).await;
    assert_eq!(code, Some(CloseCode::Invalid));

    // The device comes back and is served.
    let mut device = server.device(&token).await;
    assert!(device.request("Dash.Shadow.Get", json!(null)).await["result"].is_object());
    let (_, body) = server.call("GET", &format!("/devices/{id}"), None).await;
    assert_eq!(body["online"], true);
    server.shutdown().await;
}
