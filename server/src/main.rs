//! `herd-server`: parses arguments, sets up logging, and runs the device cloud until SIGINT
//! or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use herd_config::{ServerSettings, TlsSettings};
use tracing_subscriber::EnvFilter;

/// Herd device cloud, wire-compatible with mDash.
#[derive(Parser, Debug)]
#[command(name = "herd-server", version)]
struct Args {
    /// Settings file (TOML); every key is optional.
    #[arg(long, env = "HERD_SERVER_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (store and notification.log); default: the platform data directory.
    #[arg(long, env = "HERD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Store URL, `postgres://user@host/db`, instead of SQLite in the data directory.
    #[arg(long, env = "HERD_STORE")]
    store: Option<String>,
    /// Cluster mode: the NATS server the nodes share (`nats://host:4222`, JetStream on);
    /// needs --store postgres://… shared by every node.
    #[arg(long, env = "HERD_NATS")]
    nats: Option<String>,
    /// This node's name in a cluster (default: made on first start, kept in the data
    /// directory).
    #[arg(long, env = "HERD_NODE_ID")]
    node_id: Option<String>,
    /// Address to listen on (default 127.0.0.1:8009).
    #[arg(long, env = "HERD_LISTEN")]
    listen: Option<SocketAddr>,
    /// PEM certificate chain; with --tls-key, serve wss:// and https://.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve wss:// and https:// with a certificate the server makes for these host names
    /// (default: localhost) and keeps in the data directory; its fingerprint is printed so
    /// clients can check it (`herd --ca-cert DATA/tls/self-signed.pem`).
    #[arg(long, num_args = 0.., value_name = "HOST", conflicts_with = "tls_cert")]
    tls_self_signed: Option<Vec<String>>,
    /// Let anyone make an account at /api/v2/app/signup (the customer app at /app/).
    #[arg(long)]
    app_signup: bool,
    /// Create user NAME with password PASS, print its API key as JSON, and exit.
    /// The first user created is the administrator.
    #[arg(long, num_args = 2, value_names = ["NAME", "PASS"])]
    register_user: Option<Vec<String>>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Show the cluster's nodes as the shared PostgreSQL store records them: each node's
    /// address, devices, heartbeat age and whether it counts as alive (needs --store).
    ClusterStatus {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn settings(args: &Args) -> anyhow::Result<ServerSettings> {
    let mut settings = match &args.config {
        Some(path) => ServerSettings::load(path)?,
        None => ServerSettings::default(),
    };
    if let Some(dir) = &args.data_dir {
        settings.data_dir = Some(dir.clone());
    }
    if let Some(store) = &args.store {
        settings.store = Some(store.clone());
    }
    if let Some(nats) = &args.nats {
        settings.nats = Some(nats.clone());
    }
    if let Some(node) = &args.node_id {
        settings.node_id = Some(node.clone());
    }
    if let Some(listen) = args.listen {
        settings.listen = listen;
    }
    settings.app_signup |= args.app_signup;
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        settings.tls = Some(TlsSettings {
            cert: cert.clone(),
            key: key.clone(),
        });
    }
    if let Some(names) = &args.tls_self_signed {
        let names = if names.is_empty() {
            vec!["localhost".to_string()]
        } else {
            names.clone()
        };
        let dir = settings.resolved_data_dir()?;
        let made = herd_server::http::self_signed(&dir, &names)?;
        tracing::info!(cert = %made.cert.display(), fingerprint = %made.fingerprint, "serving TLS with a self-signed certificate");
        eprintln!(
            "TLS certificate {} (SHA-256 {})",
            made.cert.display(),
            made.fingerprint
        );
        settings.tls = Some(TlsSettings {
            cert: made.cert,
            key: made.key,
        });
    }
    settings.validate()?;
    Ok(settings)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let settings = settings(&args)?;
    if let Some(Command::ClusterStatus { json }) = &args.command {
        let nodes = herd_server::cluster::cluster_status(&settings).await?;
        if *json {
            println!("{}", serde_json::to_string_pretty(&nodes)?);
        } else {
            println!(
                "{:<24} {:<22} {:>8} {:>10}  STATE",
                "NODE", "ADDRESS", "DEVICES", "HEARTBEAT"
            );
            for node in &nodes {
                println!(
                    "{:<24} {:<22} {:>8} {:>9.1}s  {}",
                    node.id,
                    node.addr,
                    node.devices,
                    node.heartbeat_age_s,
                    if node.alive { "alive" } else { "dead" }
                );
            }
        }
        return Ok(());
    }
    if let Some(pair) = &args.register_user {
        let (user, key) = herd_server::register_user(&settings, &pair[0], &pair[1]).await?;
        println!("{}", serde_json::json!({"user": user.id, "api_key": key}));
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    herd_server::run(settings, listener, shutdown_signal()).await
}
