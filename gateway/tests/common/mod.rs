//! What both gateway tests need: a real herd-server in this process and a way to wait for
//! a device to reach a state through the REST API.
#![allow(dead_code)]

use std::time::Duration;

use herd_client::Client;
use serde_json::Value;

pub const WAIT: Duration = Duration::from_secs(30);

pub struct Server {
    pub server: herd_server::Server,
    _dir: tempfile::TempDir,
    pub client: Client,
}

pub async fn server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let settings = herd_config::ServerSettings {
        data_dir: Some(dir.path().to_path_buf()),
        bcrypt_cost: 4,
        ..Default::default()
    };
    let (_, key) = herd_server::register_user(&settings, "admin", "pw")
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = herd_server::Server::start(settings, listener)
        .await
        .unwrap();
    let client = Client::new(&format!("http://{}", server.local_addr()), Some(&key)).unwrap();
    Server {
        server,
        _dir: dir,
        client,
    }
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
