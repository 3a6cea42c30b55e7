//! The `herd` command line: argument parsing, the scripting commands, and the exit codes
//! scripts rely on. Without a subcommand `herd` opens the console.

mod commands;
mod firmware;
mod flash;
mod history;
mod keys;
mod ota;
#[cfg(feature = "query")]
mod query;
mod report;
mod rollout;
mod tail;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::profile::{Overrides, Profile};

/// The text of [`EXIT_CODES`], as a literal so that the help can be put together at
/// compile time.
macro_rules! exit_codes {
    () => {
        "\
Exit codes:
  0  success
  1  any other failure (server error, unexpected answer)
  2  usage error: bad arguments, invalid JSON input
  3  the server cannot be reached or did not answer in time
  4  the API key was refused (HTTP 401/403)
  5  no such device or resource (HTTP 404), or no such log file or directory
  6  conflict (HTTP 409): a stale shadow version, an update already running on the
     device, firmware still used by an unfinished rollout
  7  the device is offline, did not reply, or returned an error; a firmware update
     (`herd ota push --wait`) failed or reverted
  8  refused by a read-only profile
  9  `herd flash`: the image could not be read or built, or does not suit the board
 10  `herd flash`: no board answered on the port (or the ports cannot be listed)
 11  `herd flash`: writing the board's flash or resetting it failed
 12  `herd flash`: the board was flashed but the light did not come online with its
     firmware in time (the device stays registered)

`herd rollout show --watch` exits 0 when the rollout completed and 1 when it halted or
was aborted.

Errors go to stderr as one line: `herd: <message>`.

Environment:
  HERD_PROFILE, HERD_SERVER, HERD_API_KEY, HERD_READ_ONLY, HERD_CONFIG, HERD_CA_CERT,
  HERD_CONSOLE_LOG the flags of the same names
  HERD_NOTIFICATION_LOG  `--log` of the console and `herd report` (comma-separated paths)
  HERD_REPORT_CACHE      `--cache` of `herd report` and the analytics view
  HERD_LOG_LEVEL   console log filter (default info)
  HERD_TAIL_LINES  notification lines the console keeps (default 20000)
  HERD_MOUSE=1     mouse: wheel scrolls, click selects
  NO_COLOR         no colours, only bold and reverse video
  VISUAL, EDITOR   the editor for `E` in the device view"
    };
}

/// Printed under `herd --help`; scripts depend on these numbers, so they never change.
pub const EXIT_CODES: &str = exit_codes!();

/// Everything under `herd --help`: the firmware workflow in brief, then [`EXIT_CODES`].
const AFTER_HELP: &str = concat!(
    "\
Firmware updates (PROTOCOL §10; ids may be shortened to 8 or more characters):
  herd firmware keygen                      a key; devices take its .pub as update.pubkey
  herd firmware upload FILE --sign KEYFILE  a signed image; prints its id
  herd firmware list | rm ID
  herd ota push DEVICE FILE --wait          one device; waits until it runs the image
  herd rollout plan --firmware ID --select 'fw:1.0.0' --waves 10,90 --soak 600
  herd rollout create ... --start           the same, stored and started; prints its id
  herd rollout show ID --watch              until completed (0), halted or aborted (1)
  herd rollout pause|resume|abort|retry ID

The Herd light on a board (ESP32-C3/C6):
  herd flash --list-ports
  herd flash --port /dev/ttyACM0 --name porch --wifi-ssid home --wifi-pass secret
  herd flash --out porch.bin --chip esp32c3 --name porch   the whole image, no board
  herd flash --monitor --port /dev/ttyACM0                 the board's serial log

",
    exit_codes!()
);

pub use crate::exit::{CommandResult, Exit, Failure};

/// Connection options every command shares.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionArgs {
    /// Profile from the config file.
    #[arg(long, short = 'p', env = "HERD_PROFILE", global = true)]
    pub profile: Option<String>,
    /// Server URL, e.g. http://127.0.0.1:8009 (overrides the profile).
    #[arg(long, env = "HERD_SERVER", global = true)]
    pub server: Option<String>,
    /// API key (overrides the profile).
    #[arg(long, env = "HERD_API_KEY", global = true, hide_env_values = true)]
    pub api_key: Option<String>,
    /// Refuse every change: shadow edits, RPC calls, registrations, firmware uploads and
    /// deletions, updates and rollout commands.
    #[arg(long, env = "HERD_READ_ONLY", global = true)]
    pub read_only: bool,
    /// Config file with profiles (default: console.toml in the platform config directory).
    #[arg(long, env = "HERD_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// PEM file of a CA to trust besides the system's, for a server with a private or
    /// self-signed certificate.
    #[arg(long, env = "HERD_CA_CERT", global = true, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Trust only the server certificate with this SHA-256 fingerprint (AB:CD:…, as
    /// `herd-server --tls-self-signed` prints it).
    #[arg(
        long,
        env = "HERD_TLS_FINGERPRINT",
        global = true,
        value_name = "SHA256"
    )]
    pub tls_fingerprint: Option<String>,
}

impl ConnectionArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            profile: self.profile.clone(),
            server: self.server.clone(),
            api_key: self.api_key.clone(),
            read_only: self.read_only,
            config: self.config.clone(),
            ca_cert: self.ca_cert.clone(),
            tls_fingerprint: self.tls_fingerprint.clone(),
            log: Vec::new(),
        }
    }
}

/// `herd`: the operator console and the scripting CLI for a Herd device cloud.
#[derive(Debug, Parser)]
#[command(name = "herd", version, after_help = AFTER_HELP)]
pub struct Args {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Where the console writes its own log (default: console.log in the platform data
    /// directory). The console never logs to the screen it draws.
    #[arg(long, env = "HERD_CONSOLE_LOG", global = true, value_name = "FILE")]
    pub console_log: Option<PathBuf>,
    /// The server's notification log, when this machine can read it: its data directory
    /// (the whole rotated set) or log files. The analytics view follows it and `herd report`
    /// reads it; without it they pull the log from the server (`POST /logs`).
    #[arg(
        long,
        env = "HERD_NOTIFICATION_LOG",
        value_name = "PATH",
        value_delimiter = ','
    )]
    pub log: Vec<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List devices: id, name, state, app, firmware, last seen.
    Devices {
        /// One JSON array of PROTOCOL §6 device objects, sorted by id.
        #[arg(long)]
        json: bool,
    },
    /// Show one device.
    Device {
        id: String,
        /// The PROTOCOL §6 device object as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Read or change a device's shadow.
    Shadow {
        #[command(subcommand)]
        command: ShadowCommand,
    },
    /// Call a device RPC and print its result as JSON.
    Call {
        id: String,
        method: String,
        /// Params as JSON; `-` reads them from stdin.
        params: Option<String>,
    },
    /// Follow the live notification stream. Lines name devices by name; an `updated`
    /// line shows what changed in the device object (`--json` and `--save` keep it
    /// whole). Reconnects by itself, and exits 3 when the server cannot be reached or
    /// stays lost longer than --retry-for.
    Tail {
        /// Only this device: its id, its name, or a unique start of either.
        #[arg(long)]
        device: Option<String>,
        /// Only events whose name matches this glob (`*` and `?`), e.g. `rpc.out.*`.
        #[arg(long)]
        name: Option<String>,
        /// Leave out events whose name matches this glob, e.g. `updated`; repeatable.
        #[arg(long, value_name = "GLOB")]
        exclude: Vec<String>,
        /// First show the last N lines of the server's log (PROTOCOL §7), filtered the
        /// same way, with the times the server logged them.
        #[arg(long, value_name = "N", default_value_t = 0)]
        history: u64,
        /// Seconds to keep trying to get a lost stream back before exiting 3.
        #[arg(long, value_name = "S", default_value_t = 60)]
        retry_for: u64,
        /// One JSON object per line: {"ts", "id", "name", "data"} (PROTOCOL §7 form).
        #[arg(long)]
        json: bool,
        /// Also append every shown notification to FILE as JSON lines.
        #[arg(long, value_name = "FILE")]
        save: Option<PathBuf>,
        /// Exit after this many notifications.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Delete devices: each DEVICE is an id, a name or a unique start of either. Prints
    /// `deleted NAME (ID)` per device. Ids are never given again (PROTOCOL §11).
    #[command(visible_alias = "rm")]
    Delete {
        #[arg(required = true, value_name = "DEVICE")]
        devices: Vec<String>,
        /// Print {"id", "name", "deleted": true} per device, one JSON object a line.
        #[arg(long)]
        json: bool,
    },
    /// Give a device a new name.
    Rename {
        /// The device: its id, its name, or a unique start of either.
        device: String,
        /// The new name.
        name: String,
        /// Print the PROTOCOL §6 device object as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Register a new device; prints `ID TOKEN` on one line.
    Register {
        name: String,
        /// Choose the device id instead of letting the server pick one.
        #[arg(long)]
        id: Option<String>,
        /// Print {"id", "token"} instead.
        #[arg(long)]
        json: bool,
    },
    /// A usage report over the server's notification log: fleet, connectivity, usage,
    /// firmware or rpc, as a table or as CSV, JSON or Parquet.
    Report(report::ReportArgs),
    /// A device as it was at a time (default: now): its connection, firmware and shadow,
    /// and a timeline of what changed, rebuilt from the notification log.
    History(history::HistoryArgs),
    /// Ad-hoc SQL (Polars SQL) over the notification log's tables: events, sessions,
    /// switches, shadow_reported; as a table or as CSV, JSON or Parquet.
    #[cfg(feature = "query")]
    Query(query::QueryArgs),
    /// Firmware images: signing keys, upload, list, delete (PROTOCOL §10.1, §10.4).
    /// Wherever a firmware id is taken, a unique prefix of at least 8 characters will do.
    Firmware {
        #[command(subcommand)]
        command: firmware::FirmwareCommand,
    },
    /// Update one device with an image (PROTOCOL §10.2).
    Ota {
        #[command(subcommand)]
        command: ota::OtaCommand,
    },
    /// Staged firmware rollouts over many devices, in waves, watched (PROTOCOL §10.5).
    /// Rollout ids may be given as a unique prefix of at least 8 characters.
    Rollout {
        #[command(subcommand)]
        command: rollout::RolloutSubcommand,
    },
    /// Put the Herd light on an ESP32-C3/C6 board: register the device, write bootloader,
    /// partition table, app and factory configuration, reset, and wait until it is online.
    /// Also --list-ports, --out FILE (the whole flash image, no board) and --monitor.
    Flash(flash::FlashArgs),
    /// API keys: a scope (read, operate, deploy, admin), a device filter, an expiry
    /// (PROTOCOL §11).
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Start an embedded server and a simulated fleet on loopback, and open the console on
    /// them: the whole product, no setup.
    #[cfg(feature = "demo")]
    Demo {
        /// How many simulated devices.
        #[arg(long, default_value_t = 50)]
        devices: usize,
        /// Simulated seconds per real second: at 120 a simulated day passes in 12
        /// minutes, so lights switch and devices drop off while you watch.
        #[arg(long, default_value_t = 120.0)]
        speedup: f64,
    },
}

#[derive(Debug, Subcommand)]
pub enum ShadowCommand {
    /// Print the shadow document with its delta (PROTOCOL §4).
    Get { id: String },
    /// Apply an update. JSON with a top-level `state` is a full PROTOCOL §4.1 update;
    /// any other object is taken as the `desired` section. `-` reads stdin.
    Set {
        id: String,
        json: String,
        /// Reject the update if the shadow's version is no longer N (PROTOCOL §4.1).
        #[arg(long)]
        version: Option<u64>,
    },
}

/// Entry point of the `herd` binary.
pub fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("herd: cannot start the async runtime: {e}");
            return Exit::Failure.into();
        }
    };
    let outcome = runtime.block_on(run(args));
    // Background tasks (a reconnecting stream) must not hold the process open.
    runtime.shutdown_background();
    match outcome {
        Ok(()) => Exit::Success.into(),
        Err(failure) => {
            eprintln!("herd: {}", failure.message);
            failure.exit.into()
        }
    }
}

async fn run(args: Args) -> CommandResult {
    let Some(command) = args.command else {
        let mut overrides = args.connection.overrides();
        overrides.log = args.log;
        let profile = Profile::resolve(&overrides)?;
        let contexts = crate::profile::Contexts::load(&overrides)?;
        return crate::tui::run(profile, contexts, args.console_log).await;
    };
    #[cfg(feature = "demo")]
    if let Command::Demo { devices, speedup } = command {
        return crate::demo::run(
            crate::demo::DemoOptions { devices, speedup },
            args.console_log,
        )
        .await;
    }
    // A key is made locally; it needs no server or profile.
    if let Command::Firmware {
        command: firmware::FirmwareCommand::Keygen { out, json },
    } = &command
    {
        return firmware::keygen(out, *json);
    }
    // Listing ports and following a board's log need no server or profile.
    if let Command::Flash(flash) = &command {
        if !flash::needs_server(flash) {
            return flash::run_local(flash).await;
        }
    }
    let mut overrides = args.connection.overrides();
    overrides.log = args.log;
    let profile = Profile::resolve(&overrides)?;
    // Before the client: a report over local files needs no server.
    if let Command::Report(report) = command {
        return report::run(&profile, report).await;
    }
    if let Command::History(history) = command {
        return history::run(&profile, history).await;
    }
    #[cfg(feature = "query")]
    if let Command::Query(query) = command {
        return query::run(&profile, query).await;
    }
    if let Command::Flash(flash) = command {
        return flash::run(&profile, flash).await;
    }
    // Read-only asks the server for nothing more than read (PROTOCOL §11): the command
    // runs with a read key made for it, deleted after it.
    let session = crate::session::Session::open(profile).await;
    if let Some(warning) = &session.warning {
        eprintln!("herd: warning: {warning}");
    }
    let outcome = server_command(&session.profile, command).await;
    session.close().await;
    outcome
}

/// Runs a command that talks to the server with `profile`'s key.
async fn server_command(profile: &Profile, command: Command) -> CommandResult {
    let client = profile.client().map_err(Failure::usage)?;
    match command {
        Command::Devices { json } => commands::devices(&client, json).await,
        Command::Device { id, json } => commands::device(&client, &id, json).await,
        Command::Shadow {
            command: ShadowCommand::Get { id },
        } => commands::shadow_get(&client, &id).await,
        Command::Shadow {
            command: ShadowCommand::Set { id, json, version },
        } => {
            if profile.read_only {
                return Err(Failure::read_only("change a shadow"));
            }
            commands::shadow_set(&client, &id, &json, version).await
        }
        Command::Call { id, method, params } => {
            if profile.read_only && !crate::read_only_safe(&method) {
                return Err(Failure::read_only(&format!("call {method}")));
            }
            commands::call(&client, &id, &method, params.as_deref()).await
        }
        Command::Tail {
            device,
            name,
            exclude,
            history,
            retry_for,
            json,
            save,
            count,
        } => {
            tail::run(
                &client,
                tail::TailOptions {
                    device,
                    name,
                    exclude,
                    json,
                    save,
                    count,
                    history,
                    retry_for: std::time::Duration::from_secs(retry_for),
                },
            )
            .await
        }
        Command::Delete { devices, json } => {
            if profile.read_only {
                return Err(Failure::read_only("delete a device"));
            }
            commands::delete(&client, &devices, json).await
        }
        Command::Rename { device, name, json } => {
            if profile.read_only {
                return Err(Failure::read_only("rename a device"));
            }
            commands::rename(&client, &device, &name, json).await
        }
        Command::Register { name, id, json } => {
            if profile.read_only {
                return Err(Failure::read_only("register a device"));
            }
            commands::register(&client, &name, id, json).await
        }
        Command::Firmware { command } => firmware::run(&client, profile.read_only, command).await,
        Command::Keys { command } => keys::run(&client, profile.read_only, command).await,
        Command::Ota { command } => ota::run(&client, profile.read_only, command).await,
        Command::Rollout { command } => rollout::run(&client, profile.read_only, command).await,
        Command::Report(_) | Command::History(_) | Command::Flash(_) => Ok(()),
        #[cfg(feature = "demo")]
        Command::Demo { .. } => Ok(()),
        #[cfg(feature = "query")]
        Command::Query(_) => Ok(()),
    }
}
