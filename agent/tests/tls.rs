//! The agent over `wss://` to a server with a self-signed certificate (PROTOCOL §1):
//! trusted by its fingerprint, refused with another.

mod common;

use std::time::Duration;

use common::*;
use herd_agent::runner::LinkOptions;
use herd_client::tls::{Fingerprint, Trust};
use herd_client::{Client, ClientOptions, NewDevice};
use herd_config::{ServerSettings, TlsSettings};
use herd_server::Server;

#[tokio::test]
async fn a_pinned_server_is_reached_and_an_impostor_is_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let made = herd_server::http::self_signed(dir.path(), &["localhost".to_string()])
        .expect("self-signed certificate");
    let settings = ServerSettings {
        data_dir: Some(dir.path().to_path_buf()),
        bcrypt_cost: 4,
        tls: Some(TlsSettings {
            cert: made.cert.clone(),
            key: made.key.clone(),
        }),
        ..Default::default()
    };
    let (_, admin_key) = herd_server::register_user(&settings, "admin", "secret")
        .await
        .expect("register admin");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let server = Server::start(settings, listener)
        .await
        .expect("server starts");
    let addr = server.local_addr();
    // The fingerprint as the server printed it.
    let pin: Fingerprint = made
        .fingerprint
        .parse()
        .expect("printed fingerprint parses");

    let mut options = ClientOptions::new(format!("https://{addr}"), Some(admin_key));
    options.tls_fingerprint = Some(pin);
    let client = Client::with_options(options).expect("client");
    let device = client
        .create_device(&NewDevice {
            name: Some("lamp".into()),
            id: None,
        })
        .await
        .expect("create over https");
    let token = device.token.expect("token");

    let agent_dir = tempfile::tempdir().expect("tempdir");
    let link = |fingerprint| LinkOptions {
        tls: Trust {
            ca_cert: None,
            fingerprint: Some(fingerprint),
        }
        .config()
        .expect("tls config"),
        ..quick_link()
    };
    let mut agent = start_agent(herd_agent::agent::AgentOptions {
        server: Some(format!("wss://{addr}/api/v2/rpc")),
        token: Some(token.clone()),
        link: link(pin),
        images: herd_agent::agent::ImagePolicy::StageOnly,
        ..herd_agent::agent::AgentOptions::new(agent_dir.path().to_path_buf())
    })
    .await;
    wait_status(&mut agent, "connected over wss", |s| s.connected).await;
    agent.shutdown().await.expect("agent stops");

    // Pinned to another certificate, the agent keeps trying and never connects.
    let mut other = pin.0;
    other[31] ^= 0x80;
    let impostor_dir = tempfile::tempdir().expect("tempdir");
    let agent = start_agent(herd_agent::agent::AgentOptions {
        server: Some(format!("wss://{addr}/api/v2/rpc")),
        token: Some(token),
        link: link(Fingerprint(other)),
        images: herd_agent::agent::ImagePolicy::StageOnly,
        ..herd_agent::agent::AgentOptions::new(impostor_dir.path().to_path_buf())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = agent.status();
    assert!(!status.connected && status.connections == 0, "{status:?}");
    agent.shutdown().await.expect("agent stops");
    server.shutdown().await.expect("server stops");
}
