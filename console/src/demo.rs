//! `herd demo`: the whole product on a fresh machine. An embedded `herd-server` on a free
//! loopback port with a fresh data directory, an administrator, a simulated fleet from
//! `herd-agent` (real device engines over real sockets), and the console on top. Quitting
//! the console stops the fleet and the server and removes the data directory.
//!
//! The fleet runs firmware 1.0.0 and the server already stores 1.1.0 and 1.2.0, so a
//! rollout can be planned and started at once, and a lamp on one can be pushed the other. One lamp in ten has an update that crashes on its first
//! boot and reverts (the fleet's default behaviour): a rollout with a `halt_when`
//! threshold halts in front of the user.
//!
//! Before the server starts, its log is seeded with a week of simulated history of the
//! same fleet (same ids and names), ending now: the analytics view shows the evening peak
//! of the lights, reverted updates and flapping devices from the first second, and the
//! server appends the live fleet's notifications after it.

use std::path::{Path, PathBuf};

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
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    match seed_history(&dir.path().join("server"), options.devices, now) {
        Ok(summary) => tracing::info!(
            lines = summary.lines,
            bytes = summary.bytes,
            "seeded the demo log with a week of history"
        ),
        // The demo is still worth running with an empty history.
        Err(e) => tracing::warn!(error = %e, "cannot seed the demo log"),
    }
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
        prefix: DEVICE_PREFIX.into(),
        // The history seeded into the log names them.
        names_as_ids: true,
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

/// The demo's devices are `lamp-0000`, `lamp-0001`, ..., ids and names alike.
const DEVICE_PREFIX: &str = "lamp";

/// How far back the seeded history goes.
pub const HISTORY_DAYS: f64 = 7.0;

/// Mean seconds between a simulated device's actions in the history (the generator's
/// benchmark logs use 45): a week of the default 50 lamps then comes to about 16 MB
/// (63,000 lines), written in about 0.1 s and read back in about 0.15 s even by a debug
/// build, where 45 s would make it some 300 MB.
const HISTORY_ACTION_MEAN_S: f64 = 900.0;

/// Writes a week of simulated history of a fleet of `devices` lamps, ending at `now`
/// (unix seconds), as the server's log in `server_dir`, which the server then appends to
/// (PROTOCOL §7). Lights follow the hour of day, so the evening peak shows; the
/// generator's rollouts, reverts and flapping devices come along.
pub fn seed_history(
    server_dir: &Path,
    devices: usize,
    now: f64,
) -> std::io::Result<herd_analytics::generate::Summary> {
    use herd_analytics::generate::{generate, Config};
    std::fs::create_dir_all(server_dir)?;
    let names = (0..devices)
        .map(|i| {
            let name = format!("{DEVICE_PREFIX}-{i:04}");
            (name.clone(), name)
        })
        .collect();
    let config = Config {
        devices: u32::try_from(devices).unwrap_or(u32::MAX),
        bytes: u64::MAX,
        start: now - HISTORY_DAYS * 86_400.0,
        until: Some(now),
        action_mean_s: HISTORY_ACTION_MEAN_S,
        daily_rhythm: true,
        names,
        ..Config::default()
    };
    let path = server_dir.join(herd_server::notification_log::CURRENT_FILE);
    generate(&config, std::fs::File::create(path)?)
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
    use herd_analytics::{json_rows, run as report, Report, ReportRequest};

    /// The seeded week, read by the reports as the analytics view reads it, and then the
    /// real server started over it: it appends after the history.
    #[tokio::test]
    async fn the_seeded_week_shows_at_once_and_the_server_appends_after_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let server_dir = dir.path().join("server");
        // 2026-03-04T12:34:56Z: any time works; a fixed one keeps the test exact.
        let now = 1_772_627_696.0;
        let summary = seed_history(&server_dir, 50, now).expect("seed");
        let seconds = summary.last_us as f64 / 1e6;
        assert!(
            seconds <= now && seconds > now - 3600.0,
            "ends now: {seconds}"
        );
        assert!(
            summary.bytes < 20 << 20,
            "small enough to read at once: {}",
            summary.bytes
        );

        let request = |kind: Report| {
            let mut request = ReportRequest::new(kind, vec![server_dir.clone()]);
            request.from = Some(now - HISTORY_DAYS * 86_400.0);
            request.to = Some(now);
            request
        };
        let rows = |kind: Report, table: &str| {
            let output = report(&request(kind), &|_| {}).expect("report");
            json_rows(output.table(table).expect("table")).expect("rows")
        };
        // The evening peak: more light from 18:00 to 23:00 than in any hour of the day.
        let hours = rows(Report::Usage, "hours");
        let on = |hour: usize| hours[hour]["hours_on"].as_f64().expect("hours_on");
        let evening = (18..23).map(on).fold(f64::INFINITY, f64::min);
        let day = (9..17).map(on).fold(0.0, f64::max);
        assert!(evening > 2.0 * day, "evening {evening} vs day {day}");
        // The fleet's own ids and names, and no others.
        let devices = rows(Report::Usage, "devices");
        let devices = devices.as_array().expect("rows");
        assert_eq!(devices.len(), 50);
        assert_eq!(devices[0]["id"], "lamp-0000");
        assert_eq!(devices[0]["name"], "lamp-0000");
        // Reverted updates and flapping devices.
        let firmware = rows(Report::Firmware, "versions");
        assert!(!firmware.as_array().expect("rows").is_empty());
        let reverts = rows(Report::Firmware, "revert_reasons");
        assert!(
            !reverts.as_array().expect("rows").is_empty(),
            "some updates revert"
        );
        let connectivity = rows(Report::Connectivity, "devices");
        let flapping = connectivity
            .as_array()
            .expect("rows")
            .iter()
            .filter(|row| row["flapping"] == true)
            .count();
        assert!(flapping >= 1, "{connectivity}");

        // The server opens the seeded log and appends to it.
        let settings = ServerSettings {
            data_dir: Some(server_dir.clone()),
            ..Default::default()
        };
        let (_, api_key) =
            herd_server::register_user(&settings, "admin", &herd_server::auth::new_secret())
                .await
                .expect("user");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let server = Server::start(settings, listener).await.expect("server");
        let client = Client::new(&format!("http://{}", server.local_addr()), Some(&api_key))
            .expect("client");
        client
            .create_device(&herd_client::NewDevice {
                name: Some("lamp-0050".into()),
                id: Some("lamp-0050".into()),
            })
            .await
            .expect("create");
        server.shutdown().await.expect("shutdown");
        let log = herd_analytics::Log::load(
            &herd_analytics::log_files(&server_dir).expect("files"),
            herd_analytics::Need::ALL,
            &|_| {},
        )
        .expect("load");
        assert!(log.stats().lines > summary.lines, "the server appended");
        assert_eq!(log.stats().invalid_lines, 0);
        assert_eq!(log.device_name("lamp-0050").as_deref(), Some("lamp-0050"));
        assert_eq!(log.device_name("lamp-0049").as_deref(), Some("lamp-0049"));
    }

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
