//! `herd-flood-bench`: what well-behaved devices see while another device floods the
//! server; see [`herd_bench::flood`].

use anyhow::Result;
use clap::Parser;
use herd_bench::flood::{self, FloodArgs};

#[derive(Parser)]
#[command(
    version,
    about = "Benchmark the device limits: well-behaved devices' latency while one floods"
)]
struct Cli {
    #[command(flatten)]
    args: FloodArgs,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // reqwest is built with rustls but without a chosen crypto provider when the whole
    // workspace is built together; choose ring, as the rest of Herd does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Runtime::new()?;
    let phases = runtime.block_on(flood::run(&cli.args))?;
    let command: Vec<String> = std::env::args().skip(1).collect();
    println!(
        "`target/release/herd-flood-bench {}`\n\n{}",
        command.join(" "),
        flood::markdown(&cli.args, &phases)
    );
    Ok(())
}
