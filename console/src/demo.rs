//! `herd demo`: the whole product on a fresh machine. An embedded `herd-server` on a free
//! loopback port with a fresh data directory, an administrator, a simulated fleet from
//! `herd-agent` (real device engines over real sockets), and the console on top. Quitting
//! the console stops the fleet and the server and removes the data directory.
//!
//! The fleet runs firmware 1.0.0 and the server already stores 1.1.0 and 1.2.0, so a
//! rollout can be planned and started at once, and a lamp on one can be pushed the other. One lamp in ten has an update that crashes on its first
//! boot and reverts (the fleet's default behaviour): a rollout with a `halt_when`
//! threshold halts in front of the user.

use std::path::PathBuf;

use herd_agent::fleet::{Behaviour, Fleet, FleetOptions};
use herd_client::Client;
use herd_config::ServerSettings;
use herd_server::Server;

use crate::exit::{CommandResult, Exit, Failure};
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
            if let Err(e) = seed_firmware(&client, dir.path()).await {
                // The console is still worth opening without it.
                tracing::warn!(error = %e, "cannot store the demo's firmware");
            }
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

/// The version the demo fleet can be updated to.
pub const DEMO_UPDATE_VERSION: &str = "1.1.0";
/// A newer one, so there is a choice (and a device on one can be pushed the other).
pub const DEMO_NEXT_VERSION: &str = "1.2.0";

/// A firmware image for the simulated lamps: the header names it (app `herd-light`, arch
/// `sim`, as the fleet reports), the rest is filler a real image would carry.
pub fn demo_image(version: &str, size: usize) -> Vec<u8> {
    let mut image = format!(
        "HERD-IMAGE {{\"app\":\"herd-light\",\"fw_version\":\"{version}\",\"arch\":\"sim\"}}\n"
    )
    .into_bytes();
    let mut state = 0x9e37_79b9_u32;
    while image.len() < size {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        image.push((state >> 24) as u8);
    }
    image
}

/// Stores firmware 1.1.0 and 1.2.0 for the demo fleet, through the API as an operator
/// would.
async fn seed_firmware(client: &Client, dir: &std::path::Path) -> Result<(), String> {
    for version in [DEMO_UPDATE_VERSION, DEMO_NEXT_VERSION] {
        let path = dir.join(format!("herd-light-{version}.bin"));
        std::fs::write(&path, demo_image(version, 256 * 1024))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        client
            .upload_firmware(&path, &herd_client::UploadMeta::default(), None)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_image_names_itself() {
        let image = demo_image("1.1.0", 4096);
        assert_eq!(image.len(), 4096);
        assert!(image.starts_with(b"HERD-IMAGE {\"app\":\"herd-light\",\"fw_version\":\"1.1.0\""));
        assert_eq!(
            image,
            demo_image("1.1.0", 4096),
            "the same bytes every time"
        );
    }
}
