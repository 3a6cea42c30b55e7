//! The client against a real server: every REST call (PROTOCOL §6), the error envelope,
//! and the notify stream (§5) including reconnection after a server restart.

use std::time::Duration;

use herd_client::{Client, DeviceChange, Error, LogsQuery, NewDevice, NotifyEvent, NotifyStream};
use herd_testkit::{SimDevice, TestServer, WAIT};
use serde_json::json;

/// Reads events until `pred` matches one; panics after [`WAIT`].
async fn wait_for(
    stream: &mut NotifyStream,
    mut pred: impl FnMut(&NotifyEvent) -> bool,
) -> NotifyEvent {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("timed out waiting for a notify event")
            .expect("stream ended");
        if pred(&event) {
            return event;
        }
    }
}

fn is_notification(event: &NotifyEvent, id: &str, name: &str) -> bool {
    matches!(event, NotifyEvent::Notification(n) if n.id == id && n.name == name)
}

#[tokio::test]
async fn device_lifecycle() {
    let server = TestServer::start().await;
    let client = server.client.clone();
    assert!(client.devices().await.expect("list").is_empty());

    let created = client
        .create_device(&NewDevice {
            name: Some("lamp".into()),
            id: Some("lamp-1".into()),
        })
        .await
        .expect("create");
    assert_eq!(created.id, "lamp-1");
    assert!(
        created.token.is_some(),
        "the token is shown once, on creation"
    );

    let listed = client.devices().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "lamp");
    assert!(listed[0].token.is_none());

    let renamed = client
        .change_device(
            "lamp-1",
            &DeviceChange {
                name: Some("porch".into()),
                ..Default::default()
            },
        )
        .await
        .expect("rename");
    assert_eq!(renamed.name, "porch");
    assert_eq!(client.device("lamp-1").await.expect("get").name, "porch");

    client.delete_device("lamp-1").await.expect("delete");
    let error = client.device("lamp-1").await.expect_err("deleted");
    // PROTOCOL §6: the server's envelope survives as a typed error.
    assert_eq!(error.status(), Some(404));
    assert!(error.to_string().contains("lamp-1 not found"), "{error}");

    // Ids typed by a user cannot escape their path segment.
    let error = client.device("../keys").await.expect_err("no such device");
    assert_eq!(error.status(), Some(404));
    server.shutdown().await;
}

#[tokio::test]
async fn shadow_updates_and_version_conflicts() {
    let server = TestServer::start().await;
    let client = server.client.clone();
    let (id, _) = server.create_device("lamp").await;

    let doc = client
        .update_shadow(&id, &json!({"state": {"desired": {"on": true}}}))
        .await
        .expect("update");
    assert_eq!(doc["state"]["desired"]["on"], true);
    // PROTOCOL §4.2: nothing reported yet, so the whole desired state is the delta.
    assert_eq!(doc["state"]["delta"], json!({"on": true}));
    let version = doc["version"].as_u64().expect("version");

    let fetched = client.shadow(&id).await.expect("get");
    assert_eq!(fetched["version"], version);

    // PROTOCOL §4.1: a stale version is rejected whole with 409.
    let error = client
        .update_shadow(
            &id,
            &json!({"state": {"desired": {"on": false}}, "version": version + 5}),
        )
        .await
        .expect_err("stale version");
    assert!(error.is_conflict(), "{error}");
    assert_eq!(
        client.shadow(&id).await.expect("get")["state"]["desired"]["on"],
        true
    );

    let error = client
        .update_shadow(&id, &json!({"state": "nope"}))
        .await
        .expect_err("invalid update");
    assert_eq!(error.status(), Some(400));
    server.shutdown().await;
}

#[tokio::test]
async fn rpc_calls_reach_the_device() {
    let server = TestServer::start().await;
    let client = server.client.clone();
    let (id, token) = server.create_device("lamp").await;

    // PROTOCOL §6: an offline device is 503.
    let error = client.call(&id, "Echo", None).await.expect_err("offline");
    assert_eq!(error.status(), Some(503));

    let device = SimDevice::connect(&server.ws_base, &token).await;
    let result = client
        .call(&id, "Echo", Some(&json!({"x": [1, 2]})))
        .await
        .expect("echo");
    assert_eq!(result, json!({"x": [1, 2]}));
    let methods = client.call(&id, "RPC.List", None).await.expect("list");
    assert!(methods
        .as_array()
        .is_some_and(|m| m.contains(&json!("Echo"))));

    // A device error comes back with the device's own code and message.
    let error = client
        .call(&id, "Fail", None)
        .await
        .expect_err("device error");
    match &error {
        Error::Api {
            device: Some(device),
            ..
        } => {
            assert_eq!((device.code, device.message.as_str()), (-1, "bad pin"))
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(error.to_string().contains("bad pin"), "{error}");
    device.disconnect().await;
    server.shutdown().await;
}

#[tokio::test]
async fn credentials_and_reachability_errors() {
    let server = TestServer::start().await;
    let wrong = Client::new(&server.url(), Some("0123456789abcdef01234567")).expect("client");
    let error = wrong.devices().await.expect_err("wrong key");
    assert!(error.is_unauthorized(), "{error}");
    assert!(!error.is_connection());

    let none = Client::new(&server.url(), None).expect("client");
    assert!(none.devices().await.expect_err("no key").is_unauthorized());

    // A port nobody listens on: bind one, learn its number, close it.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let nowhere = Client::new(&format!("http://{closed}"), Some("k")).expect("client");
    let error = nowhere.devices().await.expect_err("nobody listens");
    assert!(error.is_connection(), "{error:?}");
    assert!(
        error.to_string().contains("cannot reach the server"),
        "{error}"
    );

    assert!(matches!(
        Client::new("ftp://x", None),
        Err(Error::InvalidUrl { .. })
    ));
    server.shutdown().await;
}

#[tokio::test]
async fn keys_users_and_logs() {
    let server = TestServer::start().await;
    let client = server.client.clone();
    let key = client
        .create_key(&Default::default())
        .await
        .expect("create key");
    let secret = key.token.clone().expect("secret shown once");
    assert!(client
        .keys()
        .await
        .expect("keys")
        .iter()
        .any(|k| k.id == key.id));
    let with_new_key = Client::new(&server.url(), Some(&secret)).expect("client");
    with_new_key.devices().await.expect("the new key works");
    // PROTOCOL §11: a key made without a scope gets its maker's, and says so.
    let current = with_new_key.current_key().await.expect("current key");
    assert_eq!(current.id, key.id);
    assert_eq!(current.scope, Some(herd_client::Scope::Admin));
    assert!(current.token.is_none());
    client.delete_key(&key.id).await.expect("delete key");
    assert!(with_new_key
        .devices()
        .await
        .expect_err("revoked")
        .is_unauthorized());

    let bob = client.add_user("bob", "pw").await.expect("add user");
    assert_eq!(bob.user.id, "email_bob");
    let as_bob = Client::new(&server.url(), Some(&bob.api_key)).expect("client");
    assert!(as_bob.devices().await.expect("bob's devices").is_empty());
    assert_eq!(
        as_bob
            .add_user("eve", "pw")
            .await
            .expect_err("not admin")
            .status(),
        Some(403)
    );

    let (id, _) = server.create_device("lamp").await;
    let page = client
        .logs(LogsQuery {
            start: Some(0),
            limit: Some(100),
        })
        .await
        .expect("logs");
    // PROTOCOL §7: `created` was logged.
    assert!(page
        .items
        .iter()
        .any(|n| n["id"] == id.as_str() && n["name"] == "created"));
    assert!(page.next.is_some());
    server.shutdown().await;
}

#[tokio::test]
async fn notify_stream_follows_devices_and_survives_a_restart() {
    let mut server = TestServer::start().await;
    let client = server.client.clone();
    let mut stream = client.notify();
    wait_for(&mut stream, |e| matches!(e, NotifyEvent::Connected)).await;

    let (id, token) = server.create_device("lamp").await;
    wait_for(&mut stream, |e| is_notification(e, &id, "created")).await;
    let device = SimDevice::connect(&server.ws_base, &token).await;
    wait_for(&mut stream, |e| is_notification(e, &id, "online")).await;

    // A desired change travels to the device, which reports it (PROTOCOL §4.3): the stream
    // shows the device's report.
    client
        .update_shadow(&id, &json!({"state": {"desired": {"on": true}}}))
        .await
        .expect("update");
    wait_for(&mut stream, |e| {
        is_notification(e, &id, "rpc.out.Dash.Shadow.Update")
    })
    .await;
    drop(device);

    // Server restart mid-session: the stream reports the loss and comes back by itself.
    server.stop().await;
    let lost = wait_for(&mut stream, |e| {
        matches!(e, NotifyEvent::Disconnected { .. })
    })
    .await;
    let NotifyEvent::Disconnected { reason, retry_in } = lost else {
        unreachable!()
    };
    assert!(!reason.is_empty());
    assert!(retry_in > Duration::ZERO);
    server.start_again().await;
    wait_for(&mut stream, |e| matches!(e, NotifyEvent::Connected)).await;
    let _device = SimDevice::connect(&server.ws_base, &token).await;
    wait_for(&mut stream, |e| is_notification(e, &id, "online")).await;
    server.shutdown().await;
}

#[tokio::test]
async fn notify_stream_with_a_wrong_key_ends_with_rejected() {
    let server = TestServer::start().await;
    let client = Client::new(&server.url(), Some("0123456789abcdef01234567")).expect("client");
    let mut stream = client.notify();
    match wait_for(&mut stream, |e| matches!(e, NotifyEvent::Rejected(_))).await {
        NotifyEvent::Rejected(error) => assert!(error.is_unauthorized(), "{error}"),
        _ => unreachable!(),
    }
    assert!(
        stream.next().await.is_none(),
        "the stream ends after a refusal"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn notify_batches() {
    let server = TestServer::start().await;
    let client = server.client.clone();
    let mut stream = client.notify();
    wait_for(&mut stream, |e| matches!(e, NotifyEvent::Connected)).await;
    for i in 0..20 {
        server.create_device(&format!("d{i}")).await;
    }
    let mut created = 0;
    let mut batch = Vec::new();
    while created < 20 {
        batch.clear();
        let n = tokio::time::timeout(WAIT, stream.next_batch(&mut batch, 64))
            .await
            .expect("events arrive");
        assert!((1..=64).contains(&n));
        created += batch
            .iter()
            .filter(|e| matches!(e, NotifyEvent::Notification(n) if n.name == "created"))
            .count();
    }
    server.shutdown().await;
}

#[tokio::test]
async fn https_and_wss_with_a_private_ca() {
    let server = TestServer::start_tls().await;
    let url = server.https_url();

    // Without the CA the certificate is refused, and the error says it cannot connect.
    let untrusting = Client::new(&url, Some(&server.admin_key)).expect("client");
    assert!(untrusting
        .devices()
        .await
        .expect_err("untrusted")
        .is_connection());

    let mut options = herd_client::ClientOptions::new(&url, Some(server.admin_key.clone()));
    options.ca_cert = Some(std::fs::read(server.ca_cert()).expect("read the certificate"));
    let client = Client::with_options(options).expect("client");
    let mut stream = client.notify();
    wait_for(&mut stream, |e| matches!(e, NotifyEvent::Connected)).await;
    let device = client
        .create_device(&NewDevice {
            name: Some("secure".into()),
            id: None,
        })
        .await
        .expect("create over https");
    wait_for(&mut stream, |e| is_notification(e, &device.id, "created")).await;

    let mut options = herd_client::ClientOptions::new(&url, None);
    options.ca_cert = Some(b"not a certificate".to_vec());
    assert!(matches!(
        Client::with_options(options),
        Err(Error::Certificate(_))
    ));
    server.shutdown().await;
}

#[tokio::test]
async fn a_pinned_certificate_is_trusted_and_no_other() {
    use herd_client::tls::Fingerprint;
    use rustls::pki_types::pem::PemObject;
    let server = TestServer::start_tls().await;
    let pem = std::fs::read(server.ca_cert()).expect("read the certificate");
    let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem).expect("one certificate");
    let pin = Fingerprint::of(&der);
    // The pin names the certificate, not a host: an address the certificate was not made
    // for is fine.
    let url = server.https_url().replace("localhost", "127.0.0.1");

    let mut options = herd_client::ClientOptions::new(&url, Some(server.admin_key.clone()));
    options.tls_fingerprint = Some(pin);
    let client = Client::with_options(options).expect("client");
    let mut stream = client.notify();
    wait_for(&mut stream, |e| matches!(e, NotifyEvent::Connected)).await;
    let device = client
        .create_device(&NewDevice {
            name: Some("pinned".into()),
            id: None,
        })
        .await
        .expect("create over https with a pinned certificate");
    wait_for(&mut stream, |e| is_notification(e, &device.id, "created")).await;

    // Another fingerprint is refused, even with the certificate among the trusted CAs.
    let mut other = pin.0;
    other[0] ^= 1;
    let mut options =
        herd_client::ClientOptions::new(server.https_url(), Some(server.admin_key.clone()));
    options.tls_fingerprint = Some(Fingerprint(other));
    options.ca_cert = Some(pem);
    let refused = Client::with_options(options).expect("client");
    assert!(refused
        .devices()
        .await
        .expect_err("wrong pin")
        .is_connection());
    server.shutdown().await;
}
