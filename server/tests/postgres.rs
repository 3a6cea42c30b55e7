//! What only the PostgreSQL store can meet: its database going away and coming back, many
//! connections writing one shadow at once, and a database that cannot be reached at start.
//! Each test runs its own throwaway PostgreSQL so stopping it disturbs no other test.
//! Without PostgreSQL installed they are skipped, except under CI, where they fail.

use std::sync::Arc;

use herd_config::Durability;
use herd_server::store::postgres::PostgresStore;
use herd_server::store::{NewDevice, Store, StoreError};
use herd_testkit::postgres::PostgresServer;
use herd_testkit::TestServer;
use protocol::shadow::{Limits, Update};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_herd-server");

/// A PostgreSQL of the test's own, or `None` (skip) where it is not installed.
fn own_postgres() -> Option<PostgresServer> {
    if herd_testkit::postgres::bin_dir().is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "PostgreSQL is not installed; .ci/run installs it"
        );
        eprintln!("skipped: PostgreSQL is not installed");
        return None;
    }
    Some(PostgresServer::start().expect("PostgreSQL starts"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_going_away_is_a_clear_503_and_its_return_recovers() {
    let Some(mut postgres) = own_postgres() else {
        return;
    };
    let url = postgres.create_database().unwrap();
    let server = TestServer::start_with(|s| s.store = Some(url.clone())).await;
    let (id, token) = server.create_device("lamp").await;
    let mut device = server.device(&token).await;
    let reply = device.report(json!({"on": true})).await;
    assert!(reply.get("error").is_none(), "{reply}");

    postgres.stop();
    // REST calls that need the store fail with 503 and the error envelope, not a 500.
    let (status, body) = server
        .call("POST", "/devices", Some(json!({"name": "other"})))
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("database")),
        "{body}"
    );
    let health = server.wait_for_health(503).await;
    assert_eq!(health["status"], "failing", "{health}");
    // A device's shadow update gets an error reply; its session stays up.
    let reply = device.report(json!({"on": false})).await;
    assert!(reply.get("error").is_some(), "{reply}");

    postgres.start_again().unwrap();
    let health = server.wait_for_health(200).await;
    assert_eq!(health["status"], "ok", "{health}");
    let reply = device.report(json!({"on": false})).await;
    assert!(reply.get("error").is_none(), "{reply}");
    let (status, body) = server.call("GET", &format!("/devices/{id}"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["shadow"]["state"]["reported"]["on"], false, "{body}");
    assert_eq!(
        body["shadow"]["version"], 2,
        "the refused update left no trace"
    );
    let (status, body) = server
        .call("POST", "/devices", Some(json!({"name": "other"})))
        .await;
    assert_eq!(status, 200, "{body}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_of_one_shadow_lose_nothing() {
    let Some(postgres) = own_postgres() else {
        return;
    };
    let url = postgres.create_database().unwrap();
    let store = Arc::new(
        PostgresStore::open(&url, Durability::Process)
            .await
            .unwrap(),
    );
    for i in 0..4 {
        store
            .create_device(NewDevice {
                id: format!("d{i}"),
                name: format!("d{i}"),
                user_id: "email_a".into(),
                token_hash: format!("hash{i}"),
                created_at: 1.0,
            })
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for task in 0..32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..20 {
                let update =
                    Update::from_value(&json!({"state": {"reported": {format!("t{task}"): n}}}))
                        .unwrap();
                store
                    .update_shadow(
                        &format!("d{}", (task + n) % 4),
                        update,
                        2.0,
                        Limits::default(),
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let versions: u64 = store
        .list_devices(None)
        .await
        .unwrap()
        .iter()
        .map(|d| d.shadow.version)
        .sum();
    assert_eq!(versions, 32 * 20, "every acknowledged update counted");
    // A version conflict (PROTOCOL §4.1) changes nothing.
    let stale =
        Update::from_value(&json!({"state": {"reported": {"x": 1}}, "version": 1})).unwrap();
    assert!(matches!(
        store
            .update_shadow("d0", stale, 3.0, Limits::default())
            .await,
        Err(StoreError::Shadow(_))
    ));
    // Same semantics as SQLite: unique names, retired ids (PROTOCOL §11).
    assert!(store.create_user("a", "h", 1.0).await.unwrap().admin);
    assert!(!store.create_user("b", "h", 1.0).await.unwrap().admin);
    assert!(matches!(
        store.create_user("a", "h", 1.0).await,
        Err(StoreError::Exists(_))
    ));
    assert!(store.delete_device("d3").await.unwrap());
    let again = store
        .create_device(NewDevice {
            id: "d3".into(),
            name: "again".into(),
            user_id: "email_a".into(),
            token_hash: "fresh".into(),
            created_at: 4.0,
        })
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    store.close().await.unwrap();
    assert!(!store.writes_possible());
    assert!(matches!(store.device("d0").await, Err(StoreError::Closed)));
}

#[test]
fn an_unreachable_database_at_start_is_a_clear_error_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = dir.path().join("no-socket-here");
    let url = format!(
        "postgresql://herd:hunter2@/herd?host={}&connect_timeout=2",
        nowhere.display()
    );
    let out = std::process::Command::new(BIN)
        .args(["--data-dir", dir.path().to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--store", &url])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot open the store"), "{stderr}");
    assert!(stderr.contains("herd:***@"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}
