//! The customer app's endpoints and files (`/app/`), over real HTTP: sign-up, pairing by
//! the password on a device's label, what a customer may then do, unpairing.

use herd_testkit::*;
use serde_json::{json, Value};

async fn signup(server: &TestServer, name: &str) -> (u16, Value) {
    let response = server
        .http
        .post(format!("{}/app/signup", server.base))
        .body(json!({"name": name, "pass": "pw"}).to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn sign_up_is_off_unless_the_server_allows_it() {
    let closed = TestServer::start().await;
    let (status, body) = signup(&closed, "ann").await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("sign-up is off"));
    closed.shutdown().await;

    let open = TestServer::start_with(|s| s.app_signup = true).await;
    let (status, body) = signup(&open, "ann").await;
    assert_eq!(status, 200, "{body}");
    let key = body["api_key"].as_str().unwrap();
    // The key made at sign-up operates, with an expiry, and is not an admin's.
    let (_, current) = open.call_as(key, "GET", "/keys", None).await;
    let made = &current.as_array().unwrap()[0];
    assert_eq!(made["scope"], "operate", "{made}");
    assert!(made["expires_at"].is_string(), "{made}");
    let (status, _) = open
        .call_as(
            key,
            "POST",
            "/user/add",
            Some(json!({"name": "x", "pass": "y"})),
        )
        .await;
    assert_eq!(status, 403);
    // Taken names and bad names are refused.
    assert_eq!(signup(&open, "ann").await.0, 409);
    assert_eq!(signup(&open, "two words").await.0, 400);
    open.shutdown().await;
}

#[tokio::test]
async fn a_customer_pairs_switches_renames_and_unpairs_a_light() {
    let server = TestServer::start_with(|s| s.app_signup = true).await;
    let (lamp, password) = server.create_device("lamp-0001").await;
    let (other, other_password) = server.create_device("lamp-0002").await;
    let ann = signup(&server, "ann").await.1["api_key"]
        .as_str()
        .unwrap()
        .to_string();
    let bob = signup(&server, "bob").await.1["api_key"]
        .as_str()
        .unwrap()
        .to_string();

    // Wrong password, right password of another device, unknown id: one answer, 404.
    for (id, pass) in [
        (lamp.as_str(), "0000"),
        (lamp.as_str(), other_password.as_str()),
        ("nope", password.as_str()),
    ] {
        let (status, body) = server
            .call_as(
                &ann,
                "POST",
                &format!("/devices/{id}/pair"),
                Some(json!({"password": pass})),
            )
            .await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(
            body["error"]["message"],
            "no device with this id and password"
        );
    }
    let (status, device) = server
        .call_as(
            &ann,
            "POST",
            &format!("/devices/{lamp}/pair"),
            Some(json!({"password": password, "name": "Kitchen"})),
        )
        .await;
    assert_eq!(status, 200, "{device}");
    assert_eq!(device["name"], "Kitchen");
    assert!(
        device.get("token").is_none(),
        "the token is never shown again"
    );
    let (_, mine) = server.call_as(&ann, "GET", "/devices", None).await;
    let ids: Vec<&str> = mine
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [lamp.as_str()], "only the paired light");

    // Switch it, but never touch its firmware (PROTOCOL §11, shared users).
    let (status, _) = server
        .call_as(
            &ann,
            "POST",
            &format!("/devices/{lamp}/shadow"),
            Some(json!({"state": {"desired": {"on": true}}})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .call_as(
            &ann,
            "POST",
            &format!("/devices/{lamp}/shadow"),
            Some(json!({"state": {"desired": {"ota": {"url": "http://x/fw.bin"}}}})),
        )
        .await;
    assert_eq!(status, 403);
    // Rename yes; share with others or delete no.
    let (status, renamed) = server
        .call_as(
            &ann,
            "PUT",
            &format!("/devices/{lamp}"),
            Some(json!({"name": "Hall"})),
        )
        .await;
    assert_eq!((status, renamed["name"].clone()), (200, json!("Hall")));
    let (status, _) = server
        .call_as(
            &ann,
            "PUT",
            &format!("/devices/{lamp}"),
            Some(json!({"shared_with": "email_bob"})),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = server
        .call_as(&ann, "DELETE", &format!("/devices/{lamp}"), None)
        .await;
    assert_eq!(status, 403);
    // Bob sees neither light, and cannot rename or unpair what he cannot see.
    let (_, bobs) = server.call_as(&bob, "GET", "/devices", None).await;
    assert_eq!(bobs, json!([]));
    for (method, path) in [
        ("PUT", format!("/devices/{lamp}")),
        ("POST", format!("/devices/{lamp}/unpair")),
    ] {
        let (status, _) = server
            .call_as(&bob, method, &path, Some(json!({"name": "mine"})))
            .await;
        assert_eq!(status, 404, "{method} {path}");
    }
    // Pairing twice changes nothing; the owner cannot unpair its own device.
    let (status, again) = server
        .call_as(
            &ann,
            "POST",
            &format!("/devices/{lamp}/pair"),
            Some(json!({"password": password})),
        )
        .await;
    assert_eq!(
        (status, again["shared_with"].clone()),
        (200, json!("email_ann"))
    );
    let (status, _) = server
        .call("POST", &format!("/devices/{other}/unpair"), None)
        .await;
    assert_eq!(status, 400);

    let (status, body) = server
        .call_as(&ann, "POST", &format!("/devices/{lamp}/unpair"), None)
        .await;
    assert_eq!((status, body), (200, json!(true)));
    let (status, _) = server
        .call_as(&ann, "GET", &format!("/devices/{lamp}"), None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = server
        .call_as(&ann, "POST", &format!("/devices/{lamp}/unpair"), None)
        .await;
    assert_eq!(status, 404);
    // The owner still has it, under the customer's last name for it.
    let (_, owned) = server.call("GET", &format!("/devices/{lamp}"), None).await;
    assert_eq!(
        (owned["name"].clone(), owned["shared_with"].clone()),
        (json!("Hall"), json!(""))
    );
    server.shutdown().await;
}

#[tokio::test]
async fn the_app_files_are_served_with_a_strict_policy() {
    let server = TestServer::start().await;
    let root = server.base.trim_end_matches("/api/v2").to_string();
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = no_redirects
        .get(format!("{root}/app"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 308);
    assert_eq!(response.headers()["location"], "/app/");
    for (path, kind) in [
        ("/app/", "text/html"),
        ("/app/app.js", "text/javascript"),
        ("/app/app.css", "text/css"),
        ("/app/manifest.json", "application/manifest+json"),
    ] {
        let response = server
            .http
            .get(format!("{root}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers();
        assert!(
            headers["content-type"].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        assert!(headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'self'"));
        assert_eq!(headers["x-content-type-options"], "nosniff");
    }
    let response = server
        .http
        .get(format!("{root}/app/secret.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let response = server
        .http
        .get(format!("{root}/app/..%2FCargo.toml"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    server.shutdown().await;
}
