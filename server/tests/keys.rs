//! API key scopes, device filters and expiry (PROTOCOL §11): every refusal next to the
//! request that is allowed, against the real server.

use std::time::Duration;

use herd_testkit::*;
use serde_json::{json, Value};

async fn key(server: &TestServer, with: &str, body: Value) -> (u16, Value) {
    server.call_as(with, "POST", "/keys", Some(body)).await
}

async fn new_key(server: &TestServer, body: Value) -> String {
    let (status, key) = key(server, &server.admin_key, body).await;
    assert_eq!(status, 200, "{key}");
    key["token"].as_str().unwrap().to_string()
}

async fn upload(server: &TestServer, with: &str) -> u16 {
    server
        .http
        .post(format!("{}/firmware", server.base))
        .bearer_auth(with)
        .body(b"HERD-IMAGE {\"fw_version\":\"9\"}\nimage".to_vec())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn each_scope_allows_its_own_and_refuses_the_next_naming_it() {
    let server = TestServer::start().await;
    let (id, token) = server.create_device("lamp").await;
    let mut device = server.device(&token).await;
    let answering = tokio::spawn(async move {
        loop {
            let frame = device.recv().await;
            if frame.get("method").is_some() && frame.get("id").is_some() {
                device.send(json!({"id": frame["id"], "result": {}})).await;
            }
        }
    });
    let read = new_key(&server, json!({"scope": "read", "name": "dashboard"})).await;
    let operate = new_key(&server, json!({"scope": "operate"})).await;
    let deploy = new_key(&server, json!({"scope": "deploy"})).await;
    let shadow = json!({"state": {"desired": {"on": true}}});
    let ota = json!({"state": {"desired": {"ota": {"url": "/x"}}}});

    // read: every GET, the stream and the log; nothing that changes anything.
    assert_eq!(server.call_as(&read, "GET", "/devices", None).await.0, 200);
    assert_eq!(
        server
            .call_as(&read, "GET", &format!("/devices/{id}/shadow"), None)
            .await
            .0,
        200
    );
    assert_eq!(
        server
            .call_as(&read, "POST", "/logs", Some(json!({})))
            .await
            .0,
        200
    );
    let _stream = server.notify(&read).await;
    let (status, body) = server
        .call_as(
            &read,
            "POST",
            &format!("/devices/{id}/shadow"),
            Some(shadow.clone()),
        )
        .await;
    assert_eq!(status, 403);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("scope operate"),
        "{body}"
    );
    assert_eq!(
        server
            .call_as(
                &read,
                "POST",
                &format!("/devices/{id}/rpc/Sys.GetInfo"),
                None
            )
            .await
            .0,
        403
    );
    assert_eq!(
        server
            .call_as(&read, "POST", "/devices", Some(json!({"name": "x"})))
            .await
            .0,
        403
    );

    // operate: shadows, calls, create and rename; not desired.ota, OTA.*, firmware, delete.
    assert_eq!(
        server
            .call_as(
                &operate,
                "POST",
                &format!("/devices/{id}/shadow"),
                Some(shadow)
            )
            .await
            .0,
        200
    );
    assert_eq!(
        server
            .call_as(
                &operate,
                "POST",
                &format!("/devices/{id}/rpc/Sys.GetInfo"),
                None
            )
            .await
            .0,
        200
    );
    assert_eq!(
        server
            .call_as(
                &operate,
                "POST",
                &format!("/devices/{id}"),
                Some(json!({"name": "porch"}))
            )
            .await
            .0,
        200
    );
    let (status, made) = server
        .call_as(&operate, "POST", "/devices", Some(json!({"name": "spare"})))
        .await;
    assert_eq!(status, 200);
    let spare = made["id"].as_str().unwrap().to_string();
    let (status, body) = server
        .call_as(
            &operate,
            "POST",
            &format!("/devices/{id}/shadow"),
            Some(ota.clone()),
        )
        .await;
    assert_eq!(status, 403);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("scope deploy"),
        "{body}"
    );
    assert_eq!(
        server
            .call_as(
                &operate,
                "POST",
                &format!("/devices/{id}/rpc/OTA.Commit"),
                None
            )
            .await
            .0,
        403
    );
    assert_eq!(upload(&server, &operate).await, 403);
    assert_eq!(
        server
            .call_as(&operate, "DELETE", &format!("/devices/{spare}"), None)
            .await
            .0,
        403
    );
    assert_eq!(
        server
            .call_as(
                &operate,
                "POST",
                "/rollouts",
                Some(json!({"firmware": "f", "select": {"query": ""}}))
            )
            .await
            .0,
        403
    );

    // deploy: firmware, desired.ota, OTA.*, delete; not users.
    assert_eq!(upload(&server, &deploy).await, 200);
    assert_eq!(
        server
            .call_as(&deploy, "POST", &format!("/devices/{id}/shadow"), Some(ota))
            .await
            .0,
        200
    );
    assert_eq!(
        server
            .call_as(
                &deploy,
                "POST",
                &format!("/devices/{id}/rpc/OTA.Commit"),
                None
            )
            .await
            .0,
        200
    );
    assert_eq!(
        server
            .call_as(&deploy, "DELETE", &format!("/devices/{spare}"), None)
            .await
            .0,
        200
    );
    let (status, body) = server
        .call_as(
            &deploy,
            "POST",
            "/user/add",
            Some(json!({"name": "eve", "pass": "pw"})),
        )
        .await;
    assert_eq!(status, 403);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("scope admin"),
        "{body}"
    );
    // The key --register-user printed may do everything, users included.
    let (status, _) = server
        .call(
            "POST",
            "/user/add",
            Some(json!({"name": "eve", "pass": "pw"})),
        )
        .await;
    assert_eq!(status, 200);
    answering.abort();
    server.shutdown().await;
}

#[tokio::test]
async fn a_key_never_gets_more_than_the_key_that_made_it() {
    let server = TestServer::start().await;
    let read = new_key(&server, json!({"scope": "read"})).await;
    let (status, body) = key(&server, &read, json!({"scope": "deploy"})).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = key(&server, &read, json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["scope"], "read",
        "a key without a scope gets its maker's"
    );
    // A read key may not delete the deploy key of the same user either.
    let (_, keys) = server.call("GET", "/keys", None).await;
    let admin_key = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k.get("scope").is_none())
        .unwrap();
    let (status, _) = server
        .call_as(
            &read,
            "DELETE",
            &format!("/keys/{}", admin_key["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 403);
    // Bad specs are plain 400s.
    for bad in [
        json!({"scope": "root"}),
        json!({"expires_at": "soon"}),
        json!({"expires_at": "2001-01-01T00:00:00Z"}),
        json!({"colour": "red"}),
    ] {
        let (status, body) = key(&server, &server.admin_key, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn an_expired_key_is_refused_with_401() {
    let server = TestServer::start().await;
    let soon = time::OffsetDateTime::now_utc() + time::Duration::milliseconds(1500);
    let expiring = new_key(
        &server,
        json!({"scope": "read", "expires_at": soon.format(&time::format_description::well_known::Rfc3339).unwrap()}),
    )
    .await;
    assert_eq!(
        server.call_as(&expiring, "GET", "/devices", None).await.0,
        200
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = server.call_as(&expiring, "GET", "/devices", None).await;
        if status == 401 {
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("expired"),
                "{body}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the key never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_limited_to_some_devices_sees_and_acts_on_those_only() {
    let server = TestServer::start().await;
    let (lamp, lamp_token) = server.create_device("lamp-1").await;
    let (kitchen, _) = server.create_device("kitchen").await;
    let lamps = new_key(
        &server,
        json!({"scope": "operate", "devices": "name:lamp-*"}),
    )
    .await;
    let mut stream = server.notify(&lamps).await;
    let (_, listed) = server.call_as(&lamps, "GET", "/devices", None).await;
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [lamp.as_str()]);
    assert_eq!(
        server
            .call_as(&lamps, "GET", &format!("/devices/{kitchen}"), None)
            .await
            .0,
        404
    );
    let change = json!({"state": {"desired": {"on": true}}});
    assert_eq!(
        server
            .call_as(
                &lamps,
                "POST",
                &format!("/devices/{kitchen}/shadow"),
                Some(change.clone())
            )
            .await
            .0,
        404
    );
    assert_eq!(
        server
            .call_as(
                &lamps,
                "POST",
                &format!("/devices/{lamp}/shadow"),
                Some(change.clone())
            )
            .await
            .0,
        200
    );
    // It creates only devices it will see.
    assert_eq!(
        server
            .call_as(&lamps, "POST", "/devices", Some(json!({"name": "garage"})))
            .await
            .0,
        403
    );
    // The kitchen changes; the lamp changes: the stream carries only the lamp.
    server
        .call(
            "POST",
            &format!("/devices/{kitchen}/shadow"),
            Some(change.clone()),
        )
        .await;
    let _device = server.device(&lamp_token).await;
    let first = recv_json(&mut stream).await;
    assert_eq!(first["id"], lamp, "{first}");
    // Its log holds only the lamp's lines, besides the server's start marker (§7), which
    // names no device.
    let (_, log) = server
        .call_as(&lamps, "POST", "/logs", Some(json!({"limit": 1000})))
        .await;
    let log = log.as_array().unwrap();
    assert!(log.iter().any(|l| l["id"] == lamp), "{log:?}");
    assert!(
        log.iter()
            .all(|l| l["id"] == lamp || (l["id"] == "" && l["name"] == "server.started")),
        "{log:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn the_current_key_shows_its_own_scope_filter_and_expiry_to_any_scope() {
    let server = TestServer::start().await;
    let later = time::OffsetDateTime::now_utc() + time::Duration::hours(2);
    let later = later
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (status, made) = key(
        &server,
        &server.admin_key,
        json!({"scope": "read", "name": "wall", "devices": "name:lamp*", "expires_at": later}),
    )
    .await;
    assert_eq!(status, 200, "{made}");
    let read = made["token"].as_str().unwrap();
    // PROTOCOL §11: a read key may read its own object; the secret is never in it.
    let (status, current) = server.call_as(read, "GET", "/keys/current", None).await;
    assert_eq!(status, 200, "{current}");
    assert_eq!(current["id"], made["id"]);
    assert_eq!(current["user_id"], "email_admin");
    assert_eq!(current["name"], "wall");
    assert_eq!(current["scope"], "read");
    assert_eq!(current["devices"], "name:lamp*");
    assert_eq!(current["expires_at"], made["expires_at"]);
    assert!(current["created_at"].is_string(), "{current}");
    assert!(current.get("last_used").is_some(), "{current}");
    assert!(current.get("token").is_none(), "{current}");

    // A key made before scopes existed shows what it may do: admin for the admin.
    let (status, admin) = server
        .call_as(&server.admin_key, "GET", "/keys/current", None)
        .await;
    assert_eq!(status, 200, "{admin}");
    assert_eq!(admin["scope"], "admin");
    assert_ne!(admin["id"], made["id"]);
    assert!(admin.get("devices").is_none() && admin.get("expires_at").is_none());

    // A user's key is that user's, and no more than the user may do.
    let bob = server.add_user("bob").await;
    let (status, mine) = server.call_as(&bob, "GET", "/keys/current", None).await;
    assert_eq!(status, 200, "{mine}");
    assert_eq!(mine["user_id"], "email_bob");
    assert_eq!(mine["scope"], "deploy");

    // A password has no key to show; no credentials are 401.
    let response = server
        .http
        .get(format!("{}/keys/current", server.base))
        .basic_auth("admin", Some("secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not an API key"),
        "{body}"
    );
    let response = server
        .http
        .get(format!("{}/keys/current", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    server.shutdown().await;
}

#[tokio::test]
async fn an_expired_key_cannot_read_itself() {
    let server = TestServer::start().await;
    let soon = time::OffsetDateTime::now_utc() + time::Duration::milliseconds(1500);
    let expiring = new_key(
        &server,
        json!({"scope": "read", "expires_at": soon.format(&time::format_description::well_known::Rfc3339).unwrap()}),
    )
    .await;
    let (status, body) = server
        .call_as(&expiring, "GET", "/keys/current", None)
        .await;
    assert_eq!(status, 200, "{body}");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = server
            .call_as(&expiring, "GET", "/keys/current", None)
            .await;
        if status == 401 {
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("expired"),
                "{body}"
            );
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the key never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.shutdown().await;
}
