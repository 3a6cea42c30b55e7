//! `herd demo`: an embedded server on a free loopback port, a fresh data directory, a
//! simulated fleet, and the console on top.

use std::path::PathBuf;

use crate::cli::CommandResult;

pub async fn run(_devices: usize, _log: Option<PathBuf>) -> CommandResult {
    Ok(())
}
