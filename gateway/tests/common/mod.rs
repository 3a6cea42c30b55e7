//! What both gateway tests need besides the test kit's server: a way to wait for a device to
//! reach a state through the REST API.
#![allow(dead_code)]

use std::time::Duration;

use herd_client::Client;
use serde_json::Value;

pub use herd_testkit::WAIT;

/// herd-server from the test kit (on the store `HERD_TEST_STORE` names).
pub async fn server() -> herd_testkit::TestServer {
    herd_testkit::TestServer::start().await
}

/// Polls the server until `check` holds for the device named `name` (its device object,
/// with the shadow document added as `shadow_doc`).
pub async fn wait_device(
    client: &Client,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let devices = client.devices().await.unwrap();
        if let Some(device) = devices.iter().find(|d| d.name == name) {
            let mut value = serde_json::to_value(device).unwrap();
            value["shadow_doc"] = client.shadow(&device.id).await.unwrap();
            if check(&value) {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name}: not {what} within {WAIT:?}: {value}"
            );
        } else {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no device {name} within {WAIT:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
