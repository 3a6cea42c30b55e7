//! `herd-cluster-bench`: what a shadow update, an RPC and a notification cost on one SQLite
//! node, one PostgreSQL node and two nodes sharing PostgreSQL and NATS, side by side; see
//! [`herd_bench::cluster`].

use anyhow::{Context, Result};
use clap::Parser;
use herd_bench::cluster::{self, ClusterArgs};

#[derive(Parser)]
#[command(
    version,
    about = "Measure per-operation costs of herd-server on SQLite, on PostgreSQL and as a two-node cluster"
)]
struct Cli {
    #[command(flatten)]
    args: ClusterArgs,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    cluster::kill_children_on_panic();
    // reqwest is built with rustls but without a chosen crypto provider when the whole
    // workspace is built together; choose ring, as the rest of Herd does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let command = std::iter::once("target/release/herd-cluster-bench".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let runtime = tokio::runtime::Runtime::new()?;
    // Returning from the block drops every child process handle, which kills the
    // children: on Ctrl-C or SIGTERM too.
    let report = runtime.block_on(async {
        tokio::select! {
            report = cluster::run(&cli.args, command) => report,
            signal = shutdown_signal() => {
                signal?;
                anyhow::bail!("interrupted; child processes stopped")
            }
        }
    })?;
    if let Some(path) = &cli.args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("`{}`\n\n{}", report.command, report.markdown());
    Ok(())
}

async fn shutdown_signal() -> Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = terminate.recv() => {}
    }
    Ok(())
}
