//! `herd demo`: the whole product on a fresh machine. An embedded `herd-server` on a free
//! loopback port with a fresh data directory, an administrator, a simulated fleet from
//! `herd-agent` (real device engines over real sockets), two firmware images for the
//! simulated lights in the store (so a rollout or a push can be tried at once), and the
//! console on top. Quitting the console stops the fleet and the server and removes the
//! data directory.

use std::path::PathBuf;

use herd_agent::fleet::{Behaviour, Fleet, FleetOptions};
use herd_client::{Client, UploadMeta};
use herd_config::ServerSettings;
use herd_server::Server;

use crate::cli::{CommandResult, Exit, Failure};
use crate::tui::{self, ConsoleOptions, ProfileInfo};

/// What `herd demo` runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub devices: usize,
    pub speedup: f64,
}

fn failed(what: &str) -> impl Fn(anyhow::Error) -> Failure + '_ {
    move |e| Failure::new(Exit::Failure, format!("{what}: {e:#}"))
}

/// Versions of the images put in the store; the simulated lights run 1.0.0.
pub const DEMO_VERSIONS: [&str; 2] = ["1.1.0", "1.2.0"];

/// An image the simulated lights take: the header names it (PROTOCOL §10.1), filler makes
/// the transfer long enough to watch.
fn demo_image(version: &str) -> Vec<u8> {
    let mut image = format!(
        "HERD-IMAGE {{\"app\":\"herd-light\",\"fw_version\":\"{version}\",\"arch\":\"sim\"}}\n"
    )
    .into_bytes();
    image.resize(96 * 1024, b'.');
    image
}

/// Puts the demo images in the store. A failure only costs the demo its images.
async fn upload_images(client: &Client, dir: &std::path::Path) {
    for version in DEMO_VERSIONS {
        let path = dir.join(format!("herd-light-{version}.bin"));
        let uploaded = match tokio::fs::write(&path, demo_image(version)).await {
            Ok(()) => client
                .upload_firmware(&path, &UploadMeta::default(), None)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(error) = uploaded {
            tracing::warn!(%version, %error, "cannot put a demo image in the store");
        }
    }
}

pub async fn run(options: DemoOptions, log: Option<PathBuf>) -> CommandResult {
    // Everything, the embedded server and the fleet included, logs to the file: the
    // console owns the screen.
    tui::init_logging(log);
    let dir = tempfile::Builder::new()
        .prefix("herd-demo-")
        .tempdir()
        .map_err(|e| {
            Failure::new(
                Exit::Failure,
                format!("cannot create a data directory: {e}"),
            )
        })?;
    let settings = ServerSettings {
        data_dir: Some(dir.path().join("server")),
        ..Default::default()
    };
    // A throwaway administrator: the password is random and never shown; the console
    // uses the API key.
    let (_, api_key) =
        herd_server::register_user(&settings, "admin", &herd_server::auth::new_secret())
            .await
            .map_err(failed("cannot create the demo administrator"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Failure::new(Exit::Failure, format!("cannot bind a loopback port: {e}")))?;
    let server = Server::start(settings, listener)
        .await
        .map_err(failed("cannot start the embedded server"))?;
    let url = format!("http://{}", server.local_addr());
    tracing::info!(%url, devices = options.devices, "demo server up");
    let fleet = Fleet::start(FleetOptions {
        behaviour: Behaviour {
            speedup: options.speedup,
            // Evening: the busiest hour for lights, so there is something to watch.
            start_hour: Some(18.0),
            ..Behaviour::default()
        },
        prefix: "lamp".into(),
        ..FleetOptions::new(&url, &api_key, options.devices, dir.path().join("fleet"))
    })
    .await;
    let fleet = match fleet {
        Ok(fleet) => fleet,
        Err(e) => {
            let _ = server.shutdown().await;
            return Err(failed("cannot start the simulated fleet")(e));
        }
    };
    let outcome = match Client::new(&url, Some(&api_key)) {
        Ok(client) => {
            upload_images(&client, dir.path()).await;
            let profile = ProfileInfo {
                name: "demo".into(),
                server: url.clone(),
                read_only: false,
            };
            // The embedded server's log is on this machine: the analytics view follows
            // the file itself.
            let options = ConsoleOptions {
                notification_log: vec![dir.path().join("server")],
                // The demo's log goes away with it: nothing worth keeping.
                report_cache: None,
                ..ConsoleOptions::from_env()
            };
            tui::run_console(client, profile, options).await
        }
        Err(e) => Err(e.into()),
    };
    fleet.shutdown().await;
    if let Err(e) = server.shutdown().await {
        tracing::warn!(error = %e, "demo server did not stop cleanly");
    }
    outcome
}
