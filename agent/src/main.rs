//! `herd-agent`: runs one Linux device, a simulated fleet with `herd-agent fleet`, or a
//! Cloud Communication Module for a host MCU on a serial line with `herd-agent ccm`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use firmware_core::ota::OtaMethods;
use herd_agent::agent::{Agent, AgentOptions, ImagePolicy};
use herd_agent::ccm::CcmAgentOptions;
use herd_agent::fleet::{Behaviour, Fleet, FleetOptions};
use herd_agent::light::LightOptions;
use herd_agent::runner::LinkOptions;

#[derive(Parser, Debug)]
#[command(
    name = "herd-agent",
    version,
    about = "Herd device agent for Linux and simulated fleets"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Mode>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Run N simulated devices in one process.
    Fleet(FleetArgs),
    /// Be the Cloud Communication Module of a host MCU on a serial line: newline-delimited
    /// JSON-RPC (mjson style) on the UART, the device socket to the server.
    Ccm(CcmArgs),
}

#[derive(Args, Debug)]
struct CcmArgs {
    /// Serial port of the host MCU, e.g. /dev/ttyUSB0.
    #[arg(long, value_name = "PORT")]
    serial: String,
    /// Line speed.
    #[arg(long, default_value_t = herd_agent::ccm::DEFAULT_BAUD)]
    baud: u32,
    /// Device socket, e.g. ws://HOST:PORT/api/v2/rpc (remembered in the data directory).
    #[arg(long, env = "HERD_AGENT_SERVER")]
    server: Option<String>,
    /// Device token (remembered in the data directory).
    #[arg(long, env = "HERD_AGENT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Where the CCM's configuration and files live.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// How long a cloud call waits for the host MCU's answer, and a host call for the
    /// cloud's, in milliseconds.
    #[arg(long, default_value_t = firmware_core::ccm::DEFAULT_CALL_TIMEOUT_MS)]
    call_timeout_ms: u64,
    /// Longest line on the serial port, in bytes.
    #[arg(long, default_value_t = firmware_core::ccm::DEFAULT_MAX_LINE as u64, value_parser = clap::value_parser!(u64).range(64..=65536))]
    max_line: u64,
    #[command(flatten)]
    tls: TlsArgs,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Device socket, e.g. ws://HOST:PORT/api/v2/rpc (remembered in the data directory).
    #[arg(long, env = "HERD_AGENT_SERVER")]
    server: Option<String>,
    /// Device token (remembered in the data directory).
    #[arg(long, env = "HERD_AGENT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Where configuration, files and firmware slots live.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// GPIO chip for the light, e.g. /dev/gpiochip0; without it the light is simulated.
    #[arg(long)]
    gpio_chip: Option<PathBuf>,
    /// GPIO line offset for the light; defaults to the configured smartlight.pin.
    #[arg(long, requires = "gpio_chip")]
    gpio_line: Option<u32>,
    /// Take firmware updates and run them: after an update the process replaces itself
    /// with the new image. Without it the agent refuses updates.
    #[arg(long)]
    exec_images: bool,
    /// Base64 Ed25519 public key; only images signed for it are taken (remembered in the
    /// data directory).
    #[arg(long, env = "HERD_AGENT_UPDATE_PUBKEY")]
    update_pubkey: Option<String>,
    /// OTA methods to offer: all, or push (only OTA.Begin, OTA.Write and OTA.End, like the
    /// mDash device library; new images commit themselves on boot). Remembered in the
    /// data directory.
    #[arg(long, value_parser = parse_ota_methods)]
    ota_methods: Option<OtaMethods>,
    #[command(flatten)]
    tls: TlsArgs,
}

/// Whom `wss://` and `https://` trust besides, or instead of, the system's authorities.
#[derive(Args, Debug)]
struct TlsArgs {
    /// Also trust the CA certificates in this PEM file (e.g. the certificate of
    /// `herd-server --tls-self-signed`, DATA/tls/self-signed.pem).
    #[arg(long, value_name = "PEM")]
    ca_cert: Option<PathBuf>,
    /// Trust only the server certificate with this SHA-256 fingerprint (AB:CD:…, as
    /// `herd-server --tls-self-signed` prints it).
    #[arg(long, value_name = "SHA256", conflicts_with = "ca_cert", value_parser = parse_fingerprint)]
    tls_fingerprint: Option<herd_client::tls::Fingerprint>,
}

impl TlsArgs {
    fn trust(&self) -> anyhow::Result<herd_client::tls::Trust> {
        let ca_cert = match &self.ca_cert {
            Some(path) => Some(
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
            ),
            None => None,
        };
        Ok(herd_client::tls::Trust {
            ca_cert,
            fingerprint: self.tls_fingerprint,
        })
    }
}

fn parse_fingerprint(text: &str) -> Result<herd_client::tls::Fingerprint, String> {
    text.parse()
}

#[derive(Args, Debug)]
struct FleetArgs {
    /// Server base URL, e.g. http://HOST:PORT.
    #[arg(long, env = "HERD_SERVER")]
    server: String,
    /// API key used to list and register the devices.
    #[arg(long, env = "HERD_API_KEY", hide_env_values = true)]
    api_key: String,
    /// Number of devices.
    #[arg(long, default_value_t = 10)]
    count: usize,
    /// Seed of every random choice, for reproducible runs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// JSON file with behaviour settings (see the Behaviour type's documentation).
    #[arg(long)]
    behaviour: Option<PathBuf>,
    /// Simulated seconds per real second (overrides the behaviour file).
    #[arg(long)]
    speedup: Option<f64>,
    /// Where device tokens are remembered between runs.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Name prefix of the simulated devices.
    #[arg(long, default_value = "sim")]
    prefix: String,
    /// OTA methods the devices offer: all, or push (overrides the behaviour file).
    #[arg(long, value_parser = parse_ota_methods)]
    ota_methods: Option<OtaMethods>,
    /// Base64 Ed25519 public key every device requires its images to be signed for.
    #[arg(long)]
    update_pubkey: Option<String>,
    #[command(flatten)]
    tls: TlsArgs,
}

fn parse_ota_methods(text: &str) -> Result<OtaMethods, String> {
    match text {
        "all" => Ok(OtaMethods::All),
        "push" => Ok(OtaMethods::Push),
        other => Err(format!("expected all or push, not {other:?}")),
    }
}

fn data_dir(given: Option<PathBuf>, component: &str) -> anyhow::Result<PathBuf> {
    match given {
        Some(dir) => Ok(dir),
        None => {
            herd_config::default_data_dir(component).context("no data directory; pass --data-dir")
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Some(Mode::Fleet(args)) => run_fleet(args).await,
        Some(Mode::Ccm(args)) => run_ccm(args).await,
        None => run_agent(cli.run).await,
    }
}

async fn run_agent(args: RunArgs) -> anyhow::Result<()> {
    let light = match args.gpio_chip {
        Some(chip) => LightOptions::Gpio {
            chip,
            line: args.gpio_line,
        },
        None => LightOptions::Simulated,
    };
    let agent = Agent::start(AgentOptions {
        server: args.server,
        token: args.token,
        data_dir: data_dir(args.data_dir, "agent")?,
        light,
        link: LinkOptions {
            tls: args.tls.trust()?.config()?,
            ..LinkOptions::default()
        },
        images: if args.exec_images {
            ImagePolicy::Exec
        } else {
            ImagePolicy::Refuse
        },
        update_pubkey: args.update_pubkey,
        ota_methods: args.ota_methods,
        download: Default::default(),
    })
    .await?;
    let stop = agent.shutdown_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        stop.cancel();
    });
    agent.wait().await
}

async fn run_ccm(args: CcmArgs) -> anyhow::Result<()> {
    let options = CcmAgentOptions {
        baud: args.baud,
        server: args.server,
        token: args.token,
        link: LinkOptions {
            tls: args.tls.trust()?.config()?,
            ..LinkOptions::default()
        },
        bridge: firmware_core::ccm::CcmOptions {
            max_line: usize::try_from(args.max_line)?,
            call_timeout_ms: args.call_timeout_ms,
            ..Default::default()
        },
        ..CcmAgentOptions::new(args.serial, data_dir(args.data_dir, "ccm")?)
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let signalled = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        signalled.cancel();
    });
    herd_agent::ccm::run(options, stop).await
}

async fn run_fleet(args: FleetArgs) -> anyhow::Result<()> {
    let mut behaviour = match &args.behaviour {
        Some(path) => Behaviour::load(path)?,
        None => Behaviour::default(),
    };
    if let Some(speedup) = args.speedup {
        behaviour.speedup = speedup;
    }
    if let Some(methods) = args.ota_methods {
        behaviour.ota_methods = methods;
    }
    let fleet = Fleet::start(FleetOptions {
        server: args.server,
        api_key: args.api_key,
        count: args.count,
        seed: args.seed,
        behaviour,
        data_dir: data_dir(args.data_dir, "fleet")?,
        prefix: args.prefix,
        names_as_ids: false,
        link: LinkOptions::default(),
        trust: args.tls.trust()?,
        update_pubkey: args.update_pubkey,
        download: Default::default(),
    })
    .await?;
    let mut ticker = tokio::time::interval(Duration::from_secs(10));
    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = &mut signal => break,
            _ = ticker.tick() => {
                let stats = fleet.stats();
                tracing::info!(online = stats.online, devices = stats.devices, connects = stats.connects, reboots = stats.reboots, "fleet");
            }
        }
    }
    fleet.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
