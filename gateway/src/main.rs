//! `herd-gateway`: MQTT devices as Herd devices. See the crate documentation.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use herd_client::{Client, ClientOptions};
use herd_gateway::mqtt::{self, Counters, MqttGatewayOptions};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "herd-gateway",
    version,
    about = "Brings MQTT devices into Herd"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Map the devices on an MQTT broker (Pyaiot's topics and Herd's) to Herd devices.
    Mqtt(MqttArgs),
}

#[derive(clap::Args)]
struct MqttArgs {
    /// The broker: mqtts://HOST[:PORT], or mqtt://HOST[:PORT] with --plain.
    #[arg(long, env = "HERD_GATEWAY_BROKER")]
    broker: String,
    /// Allow plain MQTT (no TLS) to the broker.
    #[arg(long)]
    plain: bool,
    /// PEM file with the CA that signed the broker's certificate (else the system's roots).
    #[arg(long)]
    broker_ca_cert: Option<PathBuf>,
    /// Broker user name.
    #[arg(long, env = "HERD_GATEWAY_USERNAME")]
    username: Option<String>,
    /// Broker password.
    #[arg(long, env = "HERD_GATEWAY_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// herd-server, e.g. https://herd.example.com.
    #[arg(long, env = "HERD_SERVER")]
    server: String,
    /// API key with scope `operate` or more (it creates the nodes' devices).
    #[arg(long, env = "HERD_API_KEY", hide_env_values = true)]
    api_key: String,
    /// PEM file with the CA that signed herd-server's certificate.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// Pin herd-server's certificate by its SHA-256 fingerprint.
    #[arg(long)]
    tls_fingerprint: Option<String>,
    /// Where the node-to-device map is kept.
    #[arg(long, default_value = "herd-gateway-data")]
    data_dir: PathBuf,
    /// Seconds of silence after which a node is offline.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
    /// Seconds between the `gateway/check` requests to Pyaiot nodes.
    #[arg(long, default_value_t = 30.0)]
    check_interval: f64,
    /// Seconds a forwarded cloud call waits for its node.
    #[arg(long, default_value_t = 10.0)]
    rpc_timeout: f64,
    /// Prefix of the Herd topic scheme.
    #[arg(long, default_value = herd_gateway::topics::DEFAULT_PREFIX)]
    prefix: String,
    /// Most nodes given devices.
    #[arg(long, default_value_t = 10_000)]
    max_nodes: usize,
    /// The gateway's MQTT client id.
    #[arg(long)]
    client_id: Option<String>,
}

fn seconds(name: &str, value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("--{name} must be a positive number of seconds"))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herd-gateway: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let Command::Mqtt(args) = cli.command;
    let read = |path: &PathBuf| {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let mut client_options = ClientOptions::new(&args.server, Some(args.api_key.clone()));
    if let Some(path) = &args.ca_cert {
        client_options.ca_cert = Some(read(path)?);
    }
    if let Some(pin) = &args.tls_fingerprint {
        client_options.tls_fingerprint = Some(pin.parse().map_err(anyhow::Error::msg)?);
    }
    let client = Client::with_options(client_options)?;
    let mut options = MqttGatewayOptions::new(args.broker, args.data_dir);
    options.plain = args.plain;
    if let Some(path) = &args.broker_ca_cert {
        options.broker_tls = Some(herd_client::tls::client_config(Some(&read(path)?), None)?);
    }
    options.username = args.username;
    options.password = args.password;
    options.prefix = args.prefix;
    options.timeout = seconds("timeout", args.timeout)?;
    options.check_interval = seconds("check-interval", args.check_interval)?;
    options.rpc_timeout = seconds("rpc-timeout", args.rpc_timeout)?;
    options.max_nodes = args.max_nodes;
    if let Some(id) = args.client_id {
        options.client_id = id;
    }
    // Options that cannot work are refused before anything connects.
    mqtt::broker(&options.broker, options.plain)?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    #[cfg(unix)]
    {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            if let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                term.recv().await;
                stop.cancel();
            }
        });
    }
    mqtt::run(options, client, Arc::new(Counters::default()), shutdown).await
}
