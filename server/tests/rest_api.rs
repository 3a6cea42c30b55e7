//! REST API behaviour (PROTOCOL §6): auth forms, error envelope, visibility, shadows, keys,
//! users, logs.

use herd_testkit::*;
use serde_json::{json, Value};

fn assert_envelope(status: u16, body: &Value) {
    assert_eq!(
        body["error"]["code"], status,
        "envelope code must be the HTTP status: {body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn three_auth_forms_and_clear_401s() {
    let server = TestServer::start().await;
    let url = format!("{}/devices", server.base);
    let ok = server
        .http
        .get(&url)
        .bearer_auth(&server.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let ok = server
        .http
        .get(format!("{url}?access_token={}", server.admin_key))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let ok = server
        .http
        .get(&url)
        .basic_auth("admin", Some("secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    // Cached Basic login still checks the password.
    for (user, pass) in [("admin", "wrong"), ("nobody", "secret")] {
        let resp = server
            .http
            .get(&url)
            .basic_auth(user, Some(pass))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        assert_envelope(401, &resp.json().await.unwrap());
    }
    let resp = server
        .http
        .get(&url)
        .bearer_auth("0123456789abcdef01234567")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = server.http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_envelope(401, &resp.json().await.unwrap());
    server.shutdown().await;
}

/// Found by the API fuzzer (scripts/api-fuzz): a query string or a path parameter that does
/// not parse was refused with axum's plain-text 400, not the JSON envelope of PROTOCOL §6.
#[tokio::test]
async fn malformed_query_and_path_get_the_error_envelope() {
    let server = TestServer::start().await;
    let (id, _) = server.create_device("lamp").await;
    let cases: Vec<(&str, String)> = vec![
        ("POST", format!("/devices/{id}/ota?commit_timeout=-1")),
        ("POST", format!("/devices/{id}/ota?commit_timeout=soon")),
        ("GET", "/rollouts?devices=1&devices=2".into()),
        ("GET", "/rollouts/r1?devices=1&devices=2".into()),
        ("POST", "/firmware?app=a&app=b".into()),
        ("GET", "/devices/%FF".into()),
        ("DELETE", "/keys/%C0%AF".into()),
        ("POST", format!("/devices/{id}/rpc/%FF")),
        ("GET", "/firmware/%FE/image".into()),
    ];
    for (method, path) in cases {
        let resp = server
            .http
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}{}", server.base, path),
            )
            .bearer_auth(&server.admin_key)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 400, "{method} {path}: {body}");
        assert_eq!(content_type, "application/json", "{method} {path}");
        assert_envelope(status, &body);
    }
    // The same parameters, well formed, are accepted.
    let (status, body) = server.call("GET", "/rollouts?devices=1", None).await;
    assert_eq!(status, 200, "{body}");
    server.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_the_error_envelope() {
    let server = TestServer::start_with(|s| s.max_body_bytes = 4096).await;
    let (id, _) = server.create_device("lamp").await;
    let cases: Vec<(&str, String, Option<String>, u16)> = vec![
        (
            "POST",
            format!("/devices/{id}/shadow"),
            Some("{not json".into()),
            400,
        ),
        (
            "POST",
            format!("/devices/{id}/shadow"),
            Some(r#"{"state": 5}"#.into()),
            400,
        ),
        (
            "POST",
            format!("/devices/{id}/shadow"),
            Some(format!(
                r#"{{"state":{{"desired":{{"x":"{}"}}}}}}"#,
                "a".repeat(8000)
            )),
            413,
        ),
        ("GET", "/devices/does-not-exist".into(), None, 404),
        ("GET", "/no/such/endpoint".into(), None, 404),
        ("PATCH", format!("/devices/{id}"), None, 405),
        (
            "POST",
            "/devices".into(),
            Some(r#"{"id": "bad id with spaces"}"#.into()),
            400,
        ),
        (
            "POST",
            "/user/add".into(),
            Some(r#"{"name": "x"}"#.into()),
            400,
        ),
    ];
    for (method, path, body, expected) in cases {
        let mut req = server
            .http
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}{}", server.base, path),
            )
            .bearer_auth(&server.admin_key);
        if let Some(body) = body {
            req = req.body(body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, expected, "{method} {path}: {body}");
        assert_envelope(status, &body);
    }
    // The device is untouched by the rejected updates.
    let (_, doc) = server
        .call("GET", &format!("/devices/{id}/shadow"), None)
        .await;
    assert_eq!(doc["version"], 0);
    server.shutdown().await;
}

#[tokio::test]
async fn shadow_version_conflict_and_limits() {
    let server = TestServer::start().await;
    let (id, _) = server.create_device("lamp").await;
    let path = format!("/devices/{id}/shadow");
    let (status, doc) = server
        .call(
            "POST",
            &path,
            Some(json!({"state": {"desired": {"a": {"b": 1}}}})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(doc["version"], 1);
    let (status, body) = server
        .call(
            "POST",
            &path,
            Some(json!({"state": {"desired": {"a": 2}}, "version": 5})),
        )
        .await;
    assert_eq!(status, 409);
    assert_envelope(409, &body);
    let (status, doc) = server
        .call(
            "POST",
            &path,
            Some(json!({"state": {"desired": {"a": {"c": 2}}}, "version": 1})),
        )
        .await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["state"]["desired"], json!({"a": {"b": 1, "c": 2}}));
    // null deletes; emptied objects vanish (PROTOCOL §4.1)
    let (_, doc) = server
        .call(
            "POST",
            &path,
            Some(json!({"state": {"desired": {"a": {"b": null, "c": null}}}})),
        )
        .await;
    assert_eq!(doc["state"]["desired"], json!({}));
    // Too deep: 413, nothing changes.
    let deep = json!({"state": {"desired": {"1": {"2": {"3": {"4": {"5": {"6": {"7": {"8": {"9": 1}}}}}}}}}}});
    let (status, body) = server.call("POST", &path, Some(deep)).await;
    assert_eq!(status, 413, "{body}");
    // Too large (over 32 KiB, under the body limit): 413.
    let big = json!({"state": {"reported": {"blob": "x".repeat(40 * 1024)}}});
    let (status, _) = server.call("POST", &path, Some(big)).await;
    assert_eq!(status, 413);
    let (_, doc) = server.call("GET", &path, None).await;
    assert_eq!(doc["version"], 3);
    server.shutdown().await;
}

#[tokio::test]
async fn visibility_owner_shared_admin() {
    let server = TestServer::start().await;
    let ann = server.add_user("ann").await;
    let bob = server.add_user("bob").await;
    // Repeating /user/add for an existing name is an error the caller may ignore.
    let (status, body) = server
        .call(
            "POST",
            "/user/add",
            Some(json!({"name": "ann", "pass": "x"})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    // Only the admin adds users.
    let (status, _) = server
        .call_as(
            &ann,
            "POST",
            "/user/add",
            Some(json!({"name": "eve", "pass": "x"})),
        )
        .await;
    assert_eq!(status, 403);

    let (status, device) = server
        .call_as(
            &ann,
            "POST",
            "/devices",
            Some(json!({"name": "ann-lamp", "id": "ann-lamp"})),
        )
        .await;
    assert_eq!(status, 200, "{device}");
    assert_eq!(device["id"], "ann-lamp");
    assert_eq!(device["user_id"], "email_ann");
    assert_eq!(device["token"].as_str().unwrap().len(), 24);
    let (status, _) = server
        .call_as(&ann, "POST", "/devices", Some(json!({"id": "ann-lamp"})))
        .await;
    assert_eq!(status, 409);

    let (_, list) = server.call_as(&bob, "GET", "/devices", None).await;
    assert_eq!(list, json!([]));
    let (status, body) = server.call_as(&bob, "GET", "/devices/ann-lamp", None).await;
    assert_eq!(status, 404, "another user's device is invisible: {body}");
    let (status, _) = server
        .call_as(&bob, "DELETE", "/devices/ann-lamp", None)
        .await;
    assert_eq!(status, 404);

    // The admin sees everything; GET never shows the token again.
    let (_, list) = server.call("GET", "/devices", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(list[0].get("token").is_none());

    // Shared with bob: visible, shadow writable, but not deletable or renamable by bob.
    let (status, _) = server
        .call_as(
            &ann,
            "PUT",
            "/devices/ann-lamp",
            Some(json!({"shared_with": "email_bob"})),
        )
        .await;
    assert_eq!(status, 200);
    let (_, list) = server.call_as(&bob, "GET", "/devices", None).await;
    assert_eq!(list[0]["id"], "ann-lamp");
    let (status, _) = server
        .call_as(
            &bob,
            "POST",
            "/devices/ann-lamp",
            Some(json!({"shadow": {"state": {"desired": {"on": true}}}})),
        )
        .await;
    assert_eq!(status, 200);
    // A user it is shared with may name it (customers name the lights they paired), but
    // not share it further or delete it.
    let (status, _) = server
        .call_as(
            &bob,
            "PUT",
            "/devices/ann-lamp",
            Some(json!({"name": "mine"})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .call_as(
            &bob,
            "PUT",
            "/devices/ann-lamp",
            Some(json!({"shared_with": "email_bob,email_eve"})),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = server
        .call_as(&bob, "DELETE", "/devices/ann-lamp", None)
        .await;
    assert_eq!(status, 403);

    // A user id that is a prefix of another must not match (email_bo vs email_bob).
    let bo = server.add_user("bo").await;
    let (_, list) = server.call_as(&bo, "GET", "/devices", None).await;
    assert_eq!(list, json!([]));

    let (status, body) = server
        .call_as(&ann, "DELETE", "/devices/ann-lamp", None)
        .await;
    assert_eq!((status, body), (200, json!(true)));
    let (status, _) = server.call_as(&ann, "GET", "/devices/ann-lamp", None).await;
    assert_eq!(status, 404);
    server.shutdown().await;
}

#[tokio::test]
async fn keys_are_listed_created_and_deleted() {
    let server = TestServer::start().await;
    let (status, key) = server.call("POST", "/keys", None).await;
    assert_eq!(status, 200);
    let token = key["token"].as_str().unwrap().to_string();
    let key_id = key["id"].as_str().unwrap().to_string();
    assert_ne!(token, key_id, "the key's id is not its secret");
    let (status, _) = server.call_as(&token, "GET", "/devices", None).await;
    assert_eq!(status, 200);
    let (_, keys) = server.call("GET", "/keys", None).await;
    assert_eq!(keys.as_array().unwrap().len(), 2);
    assert!(keys
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k.get("token").is_none()));
    let (status, _) = server
        .call("DELETE", &format!("/keys/{key_id}"), None)
        .await;
    assert_eq!(status, 200);
    let (status, _) = server.call_as(&token, "GET", "/devices", None).await;
    assert_eq!(status, 401, "a deleted key no longer works");
    let (status, _) = server
        .call("DELETE", &format!("/keys/{key_id}"), None)
        .await;
    assert_eq!(status, 404);
    // Keys and tokens are stored hashed, never in clear.
    let text = server.store_contents();
    assert!(text.contains("email_admin"), "the dump holds the users");
    assert!(!text.contains(&server.admin_key));
    server.shutdown().await;
}

#[tokio::test]
async fn logs_serve_the_notification_log_in_order() {
    let server = TestServer::start().await;
    let (id, _) = server.create_device("one").await;
    server
        .call(
            "POST",
            &format!("/devices/{id}/shadow"),
            Some(json!({"state": {"desired": {"on": true}}})),
        )
        .await;
    // PROTOCOL §7: the server's start marker comes first, naming no device. A cluster's log
    // starts with each node's marker instead, and reaches a node's file from the cluster's
    // stream a moment after the write is acknowledged.
    let expected: &[&str] = match herd_testkit::test_store() {
        herd_testkit::TestStore::Cluster => &["node.started", "node.started", "created", "updated"],
        _ => &["server.started", "created", "updated"],
    };
    let deadline = tokio::time::Instant::now() + herd_testkit::WAIT;
    let (next, items) = loop {
        let resp = server
            .http
            .post(format!("{}/logs", server.base))
            .bearer_auth(&server.admin_key)
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let next: u64 = resp.headers()["x-herd-next-offset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let items: Vec<Value> = resp.json().await.unwrap();
        if items.len() >= expected.len() || tokio::time::Instant::now() > deadline {
            break (next, items);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let names: Vec<&str> = items.iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, expected);
    let markers = expected.len() - 2;
    assert_eq!(items[0]["id"], "");
    assert!(items.iter().all(|i| i["ts"].is_f64()));
    assert!(items[markers..].iter().all(|i| i["id"] == id));
    assert_eq!(next, expected.len() as u64);
    let (_, page) = server
        .call(
            "POST",
            "/logs",
            Some(json!({"start": markers + 1, "limit": 5})),
        )
        .await;
    assert_eq!(page.as_array().unwrap().len(), 1);
    // Another user sees only its own devices' lines, and the server's marker.
    let ann = server.add_user("ann").await;
    let (_, page) = server.call_as(&ann, "POST", "/logs", Some(json!({}))).await;
    let names: Vec<&str> = page
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    // A cluster node's marker names a node, which only the admin sees.
    let visible: &[&str] = if markers == 1 {
        &["server.started"]
    } else {
        &[]
    };
    assert_eq!(names, visible);
    server.shutdown().await;
}

#[tokio::test]
async fn healthz_answers() {
    let server = TestServer::start().await;
    let url = server.base.replace("/api/v2", "/healthz");
    let body: Value = server
        .http
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["store"]["writer"], "running");
    assert!(body["store"]["failed_jobs"].is_u64());
    // The server's own process: its resident set is read live, never zero.
    assert!(body["memory"]["rss_bytes"].as_u64().unwrap() > 1 << 20);
    assert!(body["memory"]["trims"].is_u64());
    assert!(body["memory"]["returned_bytes"].is_u64());
    server.shutdown().await;
}

/// PROTOCOL §11: a deleted device's id is never given again, so its history is never shown
/// to a later owner of the same id.
#[tokio::test]
async fn a_deleted_device_id_is_never_given_again() {
    let server = TestServer::start().await;
    let bob = server.add_user("bob").await;
    let (status, body) = server
        .call(
            "POST",
            "/devices",
            Some(json!({"id": "lamp", "name": "admin's lamp"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = server.call("DELETE", "/devices/lamp", None).await;
    assert_eq!(status, 200);
    for key in [&bob, &server.admin_key] {
        let (status, body) = server
            .call_as(key, "POST", "/devices", Some(json!({"id": "lamp"})))
            .await;
        assert_eq!(status, 409, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("not given again"),
            "{body}"
        );
    }
    // Bob reads no line about anyone's `lamp`.
    let (_, logs) = server
        .call_as(&bob, "POST", "/logs", Some(json!({"limit": 1000})))
        .await;
    assert!(
        logs.as_array().unwrap().iter().all(|l| l["id"] != "lamp"),
        "{logs}"
    );
    // A fresh id works as ever.
    let (status, _) = server
        .call_as(&bob, "POST", "/devices", Some(json!({"id": "bobs-lamp"})))
        .await;
    assert_eq!(status, 200);
    server.shutdown().await;
}

/// PROTOCOL §7: `POST /logs` serves only lines that are whole notifications (numeric `ts`,
/// string `id` and `name`); other lines are skipped but keep their place in the offsets.
#[tokio::test]
async fn logs_skip_lines_that_are_not_notifications() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("notification.log"),
        concat!(
            "{\"ts\":1.5,\"id\":\"a\",\"name\":\"online\",\"data\":null}\n",
            "{\"id\":\"b\",\"name\":\"online\"}\n",
            "{\"ts\":\"2\",\"id\":\"c\",\"name\":\"online\"}\n",
            "[1,2,3]\n",
            "{\"ts\":3,\"id\":\"d\",\"name\":\"offline\",\"data\":null}\n",
        ),
    )
    .unwrap();
    let mut settings = test_settings(dir.path());
    settings.data_dir = Some(dir.path().to_path_buf());
    let (_, key) = herd_server::register_user(&settings, "admin", "pw")
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = herd_server::Server::start(settings, listener)
        .await
        .unwrap();
    let resp = http_client()
        .post(format!("http://{}/api/v2/logs", server.local_addr()))
        .bearer_auth(&key)
        .body(json!({"start": 0, "limit": 10}).to_string())
        .send()
        .await
        .unwrap();
    let next: u64 = resp.headers()["x-herd-next-offset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let items: Vec<Value> = resp.json().await.unwrap();
    let ids: Vec<&str> = items.iter().filter_map(|i| i["id"].as_str()).collect();
    assert_eq!(&ids[..2], ["a", "d"], "{items:?}");
    assert!(next >= 5, "skipped lines keep their offsets: {next}");
    server.shutdown().await.unwrap();
}
