//! `herd-bench`: drives herd-server, the echo peer and (with `--targets all`) mosquitto
//! over loopback and reports the results side by side; `herd-bench client` is the shard
//! process it re-executes.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use herd_bench::driver::{self, RunArgs};

#[derive(Parser)]
#[command(
    version,
    about = "Benchmark herd-server device sockets against a tokio-tungstenite echo peer and mosquitto"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Mode>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Mode {
    /// Internal: a client shard, driven over stdin/stdout by the driver.
    Client,
}

fn main() -> Result<()> {
    // reqwest is built with rustls but without a chosen crypto provider when the whole
    // workspace is built together; choose ring, as the rest of Herd does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Some(Mode::Client) => {
            // One thread per shard: shards are separate processes already, and the
            // machine's cores are better left to the peer under test.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(herd_bench::client::run())
        }
        None => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(drive(cli.run))
        }
    }
}

async fn drive(args: RunArgs) -> Result<()> {
    let command_line = std::env::args()
        .enumerate()
        .map(|(i, arg)| {
            if i == 0 {
                "target/release/herd-bench".to_string()
            } else {
                arg
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    let markdown = args.markdown;
    let json = args.json.clone();
    // Returning from here drops every child process handle, which kills the children:
    // on Ctrl-C or SIGTERM too, not only on success or error.
    let report = tokio::select! {
        report = driver::run(args, command_line) => report?,
        signal = shutdown_signal() => {
            signal?;
            anyhow::bail!("interrupted; child processes stopped");
        }
    };
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    if markdown {
        println!("{}", report.markdown());
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
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
