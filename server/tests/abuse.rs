//! Devices that misbehave are held off (PROTOCOL §1, §11): one that floods is quarantined,
//! refused with 429 until released, and the others go on as ever.

use futures_util::{SinkExt, StreamExt};
use herd_testkit::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

async fn connect_status(server: &TestServer, token: &str) -> Result<Ws, (u16, Option<String>)> {
    match tokio_tungstenite::connect_async(format!("{}/rpc?access_token={token}", server.ws_base))
        .await
    {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err((
            resp.status().as_u16(),
            resp.headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string()),
        )),
        Err(e) => panic!("unexpected: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_device_is_quarantined_until_released_and_others_go_on() {
    let server = TestServer::start_with(|s| {
        s.device_messages_per_s = 20.0;
        s.device_message_burst = 40.0;
        s.quarantine_s = 300;
    })
    .await;
    let (flooder, flood_token) = server.create_device("noisy").await;
    let (calm, calm_token) = server.create_device("calm").await;
    let mut events = server.notify(&server.admin_key).await;
    let mut noisy = server.device(&flood_token).await;
    let mut good = server.device(&calm_token).await;
    // Far beyond the burst, without waiting for replies.
    for n in 0..500 {
        if noisy
            .ws
            .send(Message::text(
                json!({"method": "Log", "params": {"n": n}}).to_string(),
            ))
            .await
            .is_err()
        {
            break;
        }
    }
    let held = expect_event(&mut events, &flooder, "quarantined").await;
    assert!(
        held["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("messages"),
        "{held}"
    );
    expect_event(&mut events, &flooder, "offline").await;
    // The calm device is served as ever.
    let reply = good.report(json!({"on": true})).await;
    assert!(reply.get("result").is_some(), "{reply}");
    // The flooder is refused with 429 and told when to come back; its object says so.
    let (status, retry) = connect_status(&server, &flood_token)
        .await
        .expect_err("refused");
    assert_eq!(status, 429);
    assert!(retry.unwrap().parse::<u64>().unwrap() > 0);
    let (_, object) = server
        .call("GET", &format!("/devices/{flooder}"), None)
        .await;
    assert!(object["quarantine"]["reason"].is_string(), "{object}");
    let (_, calm_object) = server.call("GET", &format!("/devices/{calm}"), None).await;
    assert!(calm_object.get("quarantine").is_none());
    // A shared user may not release it; the owner may, and then it connects again.
    let bob = server.add_user("bob").await;
    let (status, _) = server
        .call_as(&bob, "POST", &format!("/devices/{flooder}/release"), None)
        .await;
    assert_eq!(status, 404);
    let (status, released) = server
        .call("POST", &format!("/devices/{flooder}/release"), None)
        .await;
    assert_eq!((status, released), (200, json!(true)));
    expect_event(&mut events, &flooder, "released").await;
    assert!(connect_status(&server, &flood_token).await.is_ok());
    drop(noisy.ws.next().await);
    server.shutdown().await;
}

#[tokio::test]
async fn a_device_that_reconnects_again_and_again_is_held_off() {
    let server = TestServer::start_with(|s| s.device_connects_per_minute = 3).await;
    let (id, token) = server.create_device("flappy").await;
    for _ in 0..3 {
        let ws = connect_status(&server, &token).await.expect("allowed");
        drop(ws);
    }
    let (status, _) = connect_status(&server, &token).await.expect_err("held off");
    assert_eq!(status, 429);
    let (_, object) = server.call("GET", &format!("/devices/{id}"), None).await;
    assert!(
        object["quarantine"]["reason"]
            .as_str()
            .unwrap()
            .contains("connects"),
        "{object}"
    );
    server.shutdown().await;
}
