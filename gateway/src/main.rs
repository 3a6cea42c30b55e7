//! `herd-gateway`: MQTT and CoAP devices as Herd devices. See the crate documentation.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use herd_client::{Client, ClientOptions};
use herd_gateway::coap::{self, CoapGatewayOptions};
use herd_gateway::mqtt::{self, MqttGatewayOptions};
use herd_gateway::Counters;
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
    /// Serve Pyaiot's CoAP nodes on UDP and map them to Herd devices.
    Coap(CoapArgs),
}

/// Where herd-server is and how to trust it.
#[derive(clap::Args)]
struct ServerArgs {
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
    /// Most nodes given devices.
    #[arg(long, default_value_t = 10_000)]
    max_nodes: usize,
}

impl ServerArgs {
    fn client(&self) -> anyhow::Result<Client> {
        let mut options = ClientOptions::new(&self.server, Some(self.api_key.clone()));
        if let Some(path) = &self.ca_cert {
            options.ca_cert = Some(read(path)?);
        }
        if let Some(pin) = &self.tls_fingerprint {
            options.tls_fingerprint = Some(pin.parse().map_err(anyhow::Error::msg)?);
        }
        Ok(Client::with_options(options)?)
    }
}

#[derive(clap::Args)]
struct CoapArgs {
    /// UDP address to serve CoAP on.
    #[arg(long, default_value = "[::]:5683")]
    listen: std::net::SocketAddr,
    #[command(flatten)]
    server: ServerArgs,
}

fn read(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
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
    /// Seconds between the `gateway/check` requests to Pyaiot nodes.
    #[arg(long, default_value_t = 30.0)]
    check_interval: f64,
    /// Seconds a forwarded cloud call waits for its node.
    #[arg(long, default_value_t = 10.0)]
    rpc_timeout: f64,
    /// Prefix of the Herd topic scheme.
    #[arg(long, default_value = herd_gateway::topics::DEFAULT_PREFIX)]
    prefix: String,
    /// The gateway's MQTT client id.
    #[arg(long)]
    client_id: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
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
    let counters = Arc::new(Counters::default());
    match cli.command {
        Command::Mqtt(args) => {
            let client = args.server.client()?;
            let mut options = MqttGatewayOptions::new(args.broker, args.server.data_dir.clone());
            options.plain = args.plain;
            if let Some(path) = &args.broker_ca_cert {
                options.broker_tls =
                    Some(herd_client::tls::client_config(Some(&read(path)?), None)?);
            }
            options.username = args.username;
            options.password = args.password;
            options.prefix = args.prefix;
            options.timeout = seconds("timeout", args.server.timeout)?;
            options.check_interval = seconds("check-interval", args.check_interval)?;
            options.rpc_timeout = seconds("rpc-timeout", args.rpc_timeout)?;
            options.max_nodes = args.server.max_nodes;
            if let Some(id) = args.client_id {
                options.client_id = id;
            }
            // Options that cannot work are refused before anything connects.
            mqtt::broker(&options.broker, options.plain)?;
            mqtt::run(options, client, counters, shutdown).await
        }
        Command::Coap(args) => {
            let client = args.server.client()?;
            let mut options = CoapGatewayOptions::new(args.server.data_dir.clone());
            options.timeout = seconds("timeout", args.server.timeout)?;
            options.max_nodes = args.server.max_nodes;
            coap::run(args.listen, options, client, counters, shutdown).await
        }
    }
}
