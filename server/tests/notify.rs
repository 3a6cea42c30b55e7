//! The notify stream (PROTOCOL §5): audience, order, slow consumers.

use futures_util::StreamExt;
use herd_testkit::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn each_user_sees_only_its_devices() {
    let server = TestServer::start().await;
    let ann = server.add_user("ann").await;
    let mut ann_stream = server.notify(&ann).await;
    let mut admin_stream = server.notify(&server.admin_key).await;
    let (status, _) = server
        .call("POST", "/devices", Some(json!({"id": "admins"})))
        .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .call_as(&ann, "POST", "/devices", Some(json!({"id": "anns"})))
        .await;
    assert_eq!(status, 200);
    // The admin sees both, ann only hers: her first event is about her device.
    expect_event(&mut admin_stream, "admins", "created").await;
    expect_event(&mut admin_stream, "anns", "created").await;
    let first = recv_json(&mut ann_stream).await;
    assert_eq!(first["id"], "anns");
    // Basic credentials work for the stream too; a bad key is refused before upgrading.
    let url = format!("{}/notify", server.ws_base);
    match tokio_tungstenite::connect_async(format!("{url}?access_token=nope")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|(_, r)| r.status())),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_slow_consumer_is_lagged_and_never_stalls_others() {
    let server = TestServer::start_with(|s| {
        s.notify_backlog = 64;
        // The load here is the point: the device is not held to a device's limits.
        s.device_messages_per_s = 1e6;
        s.device_message_burst = 1e6;
        s.device_bytes_per_s = 1e9;
        s.device_byte_burst = 1e9;
    })
    .await;
    let (id, token) = server.create_device("chatty").await;
    let mut fast = server.notify(&server.admin_key).await;
    // The slow consumer connects and then does not read at all for a while.
    let mut slow = server.notify(&server.admin_key).await;
    let mut device = server.device(&token).await;
    expect_event(&mut fast, &id, "online").await;

    // Enough bytes to fill the slow consumer's socket buffers many times over.
    let payload = "x".repeat(4096);
    const COUNT: usize = 3000;
    // The device never runs more than half the backlog ahead of the fast consumer, so the
    // fast one cannot lag whatever the scheduling; the slow one, reading nothing, must.
    const AHEAD: usize = 32;
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let reader = tokio::spawn(async move {
        let mut seen = 0usize;
        let mut last = -1i64;
        while seen < COUNT {
            let event = recv_json(&mut fast).await;
            if event["name"] == "rpc.out.Flood" {
                let n = event["data"]["n"].as_i64().unwrap();
                assert_eq!(n, last + 1, "the fast consumer sees every event in order");
                last = n;
                seen += 1;
                let _ = progress_tx.send(seen);
            }
        }
        seen
    });
    for n in 0..COUNT {
        device
            .send(json!({"method": "Flood", "params": {"n": n, "pad": payload}}))
            .await;
        if (n + 1) % AHEAD == 0 {
            tokio::time::timeout(WAIT, progress.wait_for(|seen| *seen > n))
                .await
                .expect("the fast consumer keeps up")
                .expect("the fast consumer's reader runs");
        }
    }
    assert_eq!(reader.await.unwrap(), COUNT);

    // Now drain the slow one: it must have been told it lagged, and the stream continues.
    let mut lagged = 0u64;
    let mut last_n = None;
    while last_n != Some(COUNT as i64 - 1) {
        let message = tokio::time::timeout(WAIT, slow.next())
            .await
            .expect("slow stream alive")
            .unwrap()
            .unwrap();
        let Message::Text(text) = message else {
            continue;
        };
        let event: serde_json::Value = serde_json::from_str(&text).unwrap();
        if event["name"] == "lagged" {
            lagged += event["data"]["dropped"].as_u64().unwrap();
        } else if event["name"] == "rpc.out.Flood" {
            last_n = event["data"]["n"].as_i64();
        }
    }
    assert!(
        lagged > 0,
        "the slow consumer must have been told it lagged"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn per_device_rpc_socket_forwards_calls_and_console_events() {
    let server = TestServer::start().await;
    let (id, token) = server.create_device("lamp").await;
    let mut device = server.device(&token).await;
    // API key as URL userinfo, the `mos --port ws://KEY@host/...` convention.
    // Clients turn `ws://KEY@host/...` into Basic credentials with the key as the user name.
    use base64::Engine;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("{}/devices/{id}/rpc", server.ws_base)
        .into_client_request()
        .unwrap();
    let userinfo =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:", server.admin_key));
    req.headers_mut().insert(
        "Authorization",
        format!("Basic {userinfo}").parse().unwrap(),
    );
    let (mut client, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("rpc socket");
    use futures_util::SinkExt;
    client
        .send(Message::text(
            json!({"id": 1, "method": "Dash.Console.Subscribe"}).to_string(),
        ))
        .await
        .unwrap();
    let reply = recv_json(&mut client).await;
    assert_eq!(reply, json!({"id": 1, "result": true}));

    client
        .send(Message::text(
            json!({"id": 5, "method": "Sys.GetInfo"}).to_string(),
        ))
        .await
        .unwrap();
    let request = device.expect_request("Sys.GetInfo").await;
    assert_ne!(request["id"], serde_json::Value::Null);
    device
        .send(json!({"id": request["id"], "result": {"app": "lamp"}}))
        .await;
    // Console events for this device arrive too; find the reply among them.
    let reply = loop {
        let frame = recv_json(&mut client).await;
        if frame.get("method").is_none() {
            break frame;
        }
        assert_eq!(frame["method"], "Dash.Console.Event");
    };
    assert_eq!(reply, json!({"id": 5, "result": {"app": "lamp"}}));

    device
        .send(json!({"method": "Log", "params": {"fd": 1, "data": "hi"}}))
        .await;
    let event = loop {
        let frame = recv_json(&mut client).await;
        if frame["params"]["name"] == "rpc.out.Log" {
            break frame;
        }
    };
    assert_eq!(event["method"], "Dash.Console.Event");
    assert_eq!(event["params"]["id"], id);
    server.shutdown().await;
}

#[tokio::test]
async fn disconnect_policy_closes_a_slow_consumer() {
    let server = TestServer::start_with(|s| {
        s.notify_backlog = 16;
        s.notify_lag_policy = herd_config::LagPolicy::Disconnect;
        s.device_messages_per_s = 1e6;
        s.device_message_burst = 1e6;
        s.device_bytes_per_s = 1e9;
        s.device_byte_burst = 1e9;
    })
    .await;
    let (_, token) = server.create_device("chatty").await;
    let mut slow = server.notify(&server.admin_key).await;
    let mut device = server.device(&token).await;
    let payload = "x".repeat(4096);
    for n in 0..3000 {
        device
            .send(json!({"method": "Flood", "params": {"n": n, "pad": payload}}))
            .await;
    }
    // Reading now, the consumer finds its stream ended by the server instead of `lagged`.
    let mut closed = false;
    while let Ok(Some(message)) = tokio::time::timeout(WAIT, slow.next()).await {
        match message {
            Ok(Message::Text(text)) => {
                assert!(!text.contains("\"lagged\""), "policy is disconnect")
            }
            Ok(Message::Close(_)) | Err(_) => {
                closed = true;
                break;
            }
            Ok(_) => {}
        }
    }
    assert!(closed, "the slow consumer was disconnected");
    // The device and the server carry on.
    assert!(device.request("Dash.Shadow.Get", json!(null)).await["result"].is_object());
    server.shutdown().await;
}

/// The per-device RPC socket asks who may do what per call: unsharing the device ends a
/// shared user's access through a socket opened before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsharing_revokes_an_open_per_device_socket() {
    use futures_util::SinkExt;
    let server = TestServer::start().await;
    let bob = server.add_user("bob").await;
    let (id, token) = server.create_device("lamp").await;
    let (status, _) = server
        .call(
            "POST",
            &format!("/devices/{id}"),
            Some(json!({"shared_with": "email_bob"})),
        )
        .await;
    assert_eq!(status, 200);
    let mut device = server.device(&token).await;
    let mut client = server
        .ws(&format!("/devices/{id}/rpc?access_token={bob}"))
        .await;
    client
        .send(Message::text(
            json!({"id": 1, "method": "Sys.GetInfo"}).to_string(),
        ))
        .await
        .unwrap();
    let request = device.expect_request("Sys.GetInfo").await;
    device
        .send(json!({"id": request["id"], "result": {"app": "lamp"}}))
        .await;
    let reply = recv_json(&mut client).await;
    assert_eq!(reply, json!({"id": 1, "result": {"app": "lamp"}}));
    // Unshared: the next call through the same socket is refused.
    let (status, _) = server
        .call(
            "POST",
            &format!("/devices/{id}"),
            Some(json!({"shared_with": ""})),
        )
        .await;
    assert_eq!(status, 200);
    client
        .send(Message::text(
            json!({"id": 2, "method": "Sys.GetInfo"}).to_string(),
        ))
        .await
        .unwrap();
    let reply = recv_json(&mut client).await;
    assert_eq!(reply["id"], 2);
    assert_eq!(reply["error"]["code"], 404, "{reply}");
    server.shutdown().await;
}
