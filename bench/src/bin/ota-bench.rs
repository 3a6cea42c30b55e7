//! `herd-ota-bench`: one firmware image to a whole simulated fleet, pushed and pulled;
//! see [`herd_bench::ota`].

use anyhow::Result;
use clap::Parser;
use herd_bench::ota::{self, OtaArgs};

#[derive(Parser)]
#[command(
    version,
    about = "Benchmark firmware rollouts: push and pull to a simulated fleet"
)]
struct Cli {
    #[command(flatten)]
    args: OtaArgs,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // reqwest is built with rustls but without a chosen crypto provider when the whole
    // workspace is built together; choose ring, as the rest of Herd does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Runtime::new()?;
    let results = runtime.block_on(ota::run(&cli.args))?;
    let command: Vec<String> = std::env::args().skip(1).collect();
    println!(
        "`target/release/herd-ota-bench {}`\n\n{}",
        command.join(" "),
        ota::markdown(&cli.args, &results)
    );
    Ok(())
}
