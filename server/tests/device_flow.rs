//! A device's life against the real server: connect, report, delta, RPC, offline
//! (PROTOCOL §1-§6).

use herd_testkit::*;
use serde_json::json;

#[tokio::test]
async fn connect_report_delta_and_notify_sequence() {
    let server = TestServer::start().await;
    let mut notify = server.notify(&server.admin_key).await;
    let (id, token) = server.create_device("lamp").await;
    expect_event(&mut notify, &id, "created").await;

    let mut device = server.device(&token).await;
    // PROTOCOL §3: on connect, online then updated.
    expect_event(&mut notify, &id, "online").await;
    let updated = expect_event(&mut notify, &id, "updated").await;
    assert_eq!(updated["data"]["online"], true);
    assert!(
        updated["data"].get("token").is_none(),
        "updated must not leak the token"
    );

    // The Sys.GetInfo answer is stored as info.
    let info = loop {
        let (_, body) = server.call("GET", &format!("/devices/{id}"), None).await;
        if body["info"]["app"] == "test" {
            break body["info"].clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(info["fw_version"], "1.0");

    let reply = device.report(json!({"on": false})).await;
    assert_eq!(reply["result"]["state"]["reported"]["on"], false);
    assert_eq!(reply["result"]["version"], 1);
    expect_event(&mut notify, &id, "rpc.out.Dash.Shadow.Update").await;

    // REST desired change -> Shadow.Delta to the device (PROTOCOL §4.3).
    let (status, doc) = server
        .call(
            "POST",
            &format!("/devices/{id}/shadow"),
            Some(json!({"state": {"desired": {"on": true}}})),
        )
        .await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["state"]["delta"], json!({"on": true}));
    let push = device.expect_request("Shadow.Delta").await;
    assert_eq!(push["params"]["state"], json!({"on": true}));
    assert_eq!(push["params"]["version"], 2);
    assert!(push["id"].is_u64());
    assert!(push.get("src").is_none() && push.get("dst").is_none());

    // The device applies and reports; the delta clears.
    let reply = device.report(json!({"on": true})).await;
    assert_eq!(reply["result"]["state"]["delta"], json!({}));
    // PROTOCOL §5: `updated` carries the device object exactly as the REST API shows it,
    // and the reply's result is the shadow it shows.
    let updated = loop {
        let event = expect_event(&mut notify, &id, "updated").await;
        if event["data"]["shadow"]["version"] == 3 {
            break event;
        }
    };
    let (_, object) = server.call("GET", &format!("/devices/{id}"), None).await;
    assert_eq!(updated["data"], object);
    assert_eq!(reply["result"], object["shadow"]);
    let (_, doc) = server
        .call("GET", &format!("/devices/{id}/shadow"), None)
        .await;
    assert_eq!(doc["state"]["delta"], json!({}));
    assert!(doc["metadata"]["reported"]["on"]["timestamp"].is_number());

    drop(device);
    expect_event(&mut notify, &id, "offline").await;
    let updated = expect_event(&mut notify, &id, "updated").await;
    assert_eq!(updated["data"]["online"], false);
    assert!(updated["data"]["last_seen"].is_string());
    server.shutdown().await;
}

#[tokio::test]
async fn delta_pushed_on_connect_and_result_object_applied_as_reported() {
    let server = TestServer::start().await;
    let (id, token) = server.create_device("lamp").await;
    server
        .call(
            "POST",
            &format!("/devices/{id}/shadow"),
            Some(json!({"state": {"desired": {"on": true, "level": 3}}})),
        )
        .await;
    let mut device = server.device(&token).await;
    let push = device.expect_request("Shadow.Delta").await;
    assert_eq!(push["params"]["state"], json!({"on": true, "level": 3}));
    // PROTOCOL §4.3: an object result is applied as a reported update.
    device
        .send(json!({"id": push["id"], "result": {"on": true, "level": 3}}))
        .await;
    let doc = loop {
        let (_, doc) = server
            .call("GET", &format!("/devices/{id}/shadow"), None)
            .await;
        if doc["state"]["delta"] == json!({}) {
            break doc;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(doc["state"]["reported"], json!({"on": true, "level": 3}));
    server.shutdown().await;
}

#[tokio::test]
async fn identical_delta_is_not_pushed_twice_unless_desired_changes() {
    let server = TestServer::start().await;
    let (id, token) = server.create_device("lamp").await;
    let mut device = server.device(&token).await;
    let path = format!("/devices/{id}/shadow");
    server
        .call(
            "POST",
            &path,
            Some(json!({"state": {"desired": {"on": true}}})),
        )
        .await;
    device.expect_request("Shadow.Delta").await;
    // A reported change that leaves the delta identical: no second push.
    device.report(json!({"other": 1})).await;
    // Desired written again (same value): pushed again, because desired was written.
    server
        .call(
            "POST",
            &path,
            Some(json!({"state": {"desired": {"level": 1}}})),
        )
        .await;
    let push = device.expect_request("Shadow.Delta").await;
    assert_eq!(
        push["params"]["state"],
        json!({"on": true, "level": 1}),
        "the reported-only update must not have produced a push"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn rpc_proxy_round_trip_and_error_mapping() {
    let server = TestServer::start_with(|s| s.rpc_timeout_ms = 500).await;
    let (id, token) = server.create_device("lamp").await;
    let mut device = server.device(&token).await;

    let base = server.base.clone();
    let key = server.admin_key.clone();
    let http = server.http.clone();
    let call = |method: &'static str, body: serde_json::Value| {
        let (http, base, key, id) = (http.clone(), base.clone(), key.clone(), id.clone());
        tokio::spawn(async move {
            let resp = http
                .post(format!("{base}/devices/{id}/rpc/{method}"))
                .bearer_auth(key)
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<serde_json::Value>().await.unwrap())
        })
    };

    let pending = call("Custom.Echo", json!({"x": 1}));
    let request = device.expect_request("Custom.Echo").await;
    assert_eq!(request["params"], json!({"x": 1}));
    device
        .send(json!({"id": request["id"], "result": {"echo": 1}}))
        .await;
    assert_eq!(pending.await.unwrap(), (200, json!({"echo": 1})));

    let pending = call("Custom.Fail", json!({}));
    let request = device.expect_request("Custom.Fail").await;
    device
        .send(json!({"id": request["id"], "error": {"code": 404, "message": "No handler"}}))
        .await;
    let (status, body) = pending.await.unwrap();
    assert_eq!(status, 404);
    assert_eq!(body["error"]["device"]["code"], 404);

    let pending = call("Custom.Broken", json!({}));
    let request = device.expect_request("Custom.Broken").await;
    device
        .send(json!({"id": request["id"], "error": {"code": -1, "message": "boom"}}))
        .await;
    let (status, body) = pending.await.unwrap();
    assert_eq!(status, 500);
    assert_eq!(body["error"]["message"], "boom");

    // No reply within the timeout: 504.
    let pending = call("Custom.Silent", json!({}));
    device.expect_request("Custom.Silent").await;
    let (status, body) = pending.await.unwrap();
    assert_eq!(status, 504, "{body}");

    // The device disconnects mid-call: 503, promptly.
    let pending = call("Custom.Vanish", json!({}));
    device.expect_request("Custom.Vanish").await;
    drop(device);
    let (status, body) = pending.await.unwrap();
    assert_eq!(status, 503, "{body}");

    // Offline: 503.
    let (status, body) = call("Custom.Echo", json!({})).await.unwrap();
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], 503);
    server.shutdown().await;
}

#[tokio::test]
async fn device_requests_get_mongoose_style_replies() {
    let server = TestServer::start().await;
    let mut notify = server.notify(&server.admin_key).await;
    let (id, token) = server.create_device("lamp").await;
    let mut device = server.device(&token).await;

    // Numeric ids come back numeric, string ids as strings, tag copied (PROTOCOL §2).
    device
        .send(json!({"id": 7, "method": "Dash.Shadow.Get", "tag": "t1"}))
        .await;
    let reply = device.recv().await;
    assert_eq!(reply["id"], 7);
    assert_eq!(reply["tag"], "t1");
    assert!(reply["result"]["state"]["delta"].is_object());

    device
        .send(json!({"id": "abc", "method": "Nope.Nothing", "params": {"a": 1}}))
        .await;
    let reply = device.recv().await;
    assert_eq!(reply["id"], "abc");
    assert_eq!(
        reply["error"],
        json!({"code": 404, "message": "No handler for Nope.Nothing"})
    );
    let event = expect_event(&mut notify, &id, "rpc.out.Nope.Nothing").await;
    assert_eq!(event["data"], json!({"a": 1}));

    let reply = device
        .request("Dash.Heartbeat", json!({"uptime": 5, "fw_version": "2.0"}))
        .await;
    assert_eq!(reply["result"], true);
    let (_, body) = server.call("GET", &format!("/devices/{id}"), None).await;
    assert_eq!(body["info"]["fw_version"], "2.0");

    device
        .send(json!({"method": "Log", "params": {"fd": 1, "data": "hello\n", "t": 1.5, "seq": 3}}))
        .await;
    let event = expect_event(&mut notify, &id, "rpc.out.Log").await;
    assert_eq!(event["data"]["data"], "hello\n");

    // A custom notification (no id) gets no reply but is published.
    device
        .send(json!({"method": "Bench.Ping", "args": {"t": 1}}))
        .await;
    let event = expect_event(&mut notify, &id, "rpc.out.Bench.Ping").await;
    assert_eq!(event["data"], json!({"t": 1}));

    // Version conflict over the device socket: RPC error 409, nothing changes.
    let reply = device
        .request(
            "Dash.Shadow.Update",
            json!({"state": {"reported": {"a": 1}}, "version": 99}),
        )
        .await;
    assert_eq!(reply["error"]["code"], 409);
    server.shutdown().await;
}

#[tokio::test]
async fn data_survives_a_restart() {
    let mut server = TestServer::start().await;
    let (id, token) = server.create_device("lamp").await;
    {
        let mut device = server.device(&token).await;
        device
            .report(json!({"on": true, "nested": {"a": [1, 2]}}))
            .await;
    }
    server
        .call(
            "POST",
            &format!("/devices/{id}/shadow"),
            Some(json!({"state": {"desired": {"on": false}}})),
        )
        .await;
    server.restart().await;
    let (status, doc) = server
        .call("GET", &format!("/devices/{id}/shadow"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        doc["state"]["reported"],
        json!({"on": true, "nested": {"a": [1, 2]}})
    );
    assert_eq!(doc["state"]["delta"], json!({"on": false}));
    // The token still works and the delta is pushed on reconnect.
    let mut device = server.device(&token).await;
    let push = device.expect_request("Shadow.Delta").await;
    assert_eq!(push["params"]["state"], json!({"on": false}));
    server.shutdown().await;
}

/// Concurrent updates of one device from REST and from the device: every `updated` comes
/// in version order, on the stream and in notification.log, and the last one is what the
/// device object says (PROTOCOL §4.1, §5, §7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_are_announced_in_commit_order() {
    let server = TestServer::start().await;
    let (id, token) = server.create_device("busy").await;
    let mut device = server.device(&token).await;
    let mut events = server.notify(&server.admin_key).await;
    const EACH: u64 = 60;
    // The device reports without waiting for replies, while REST clients write desired.
    for n in 0..EACH {
        device
            .send(json!({"id": 1000 + n, "method": "Dash.Shadow.Update", "params": {"state": {"reported": {"n": n}}}}))
            .await;
    }
    let writers: Vec<_> = (0..EACH)
        .map(|n| {
            let (http, base, key, id) = (
                server.http.clone(),
                server.base.clone(),
                server.admin_key.clone(),
                id.clone(),
            );
            tokio::spawn(async move {
                let resp = http
                    .post(format!("{base}/devices/{id}/shadow"))
                    .bearer_auth(key)
                    .body(json!({"state": {"desired": {"m": n}}}).to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let total = 2 * EACH;
    let mut versions = Vec::new();
    while versions.last() != Some(&total) {
        let event = recv_json(&mut events).await;
        if event["id"] == id && event["name"] == "updated" {
            let version = event["data"]["shadow"]["version"].as_u64().unwrap();
            if version > 0 {
                versions.push(version);
            }
        }
    }
    let mut sorted = versions.clone();
    sorted.sort_unstable();
    assert_eq!(
        versions, sorted,
        "updated events in version order on the stream"
    );
    let (_, object) = server.call("GET", &format!("/devices/{id}"), None).await;
    assert_eq!(object["shadow"]["version"], total);
    // The same order in notification.log.
    let (_, log) = server
        .call("POST", "/logs", Some(json!({"limit": 10_000})))
        .await;
    let logged: Vec<u64> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["id"] == id && l["name"] == "updated")
        .filter_map(|l| l["data"]["shadow"]["version"].as_u64())
        .filter(|v| *v > 0)
        .collect();
    let mut sorted = logged.clone();
    sorted.sort_unstable();
    assert_eq!(logged, sorted, "updated lines in version order in the log");
    assert_eq!(logged.last(), Some(&total));
    server.shutdown().await;
}

/// A REST client that hangs up right after sending an update does not leave a stored change
/// without its `updated` event and its delta.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_whose_client_hangs_up_still_has_its_event_and_delta() {
    use tokio::io::AsyncWriteExt;
    // Commits wait a while to gather writes, so the hang-up lands while the update waits.
    let server = TestServer::start_with(|s| s.commit_window_us = 300_000).await;
    let (id, token) = server.create_device("lamp").await;
    let mut device = server.device(&token).await;
    let mut events = server.notify(&server.admin_key).await;
    let body = json!({"state": {"desired": {"on": true}}}).to_string();
    let addr = server
        .base
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let mut raw = tokio::net::TcpStream::connect(&addr).await.unwrap();
    raw.write_all(
        format!(
            "POST /api/v2/devices/{id}/shadow HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n{body}",
            server.admin_key,
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    drop(raw);
    let delta = device.expect_request("Shadow.Delta").await;
    assert_eq!(delta["params"]["state"], json!({"on": true}));
    loop {
        let event = expect_event(&mut events, &id, "updated").await;
        if event["data"]["shadow"]["state"]["desired"]["on"] == true {
            break;
        }
    }
    server.shutdown().await;
}
