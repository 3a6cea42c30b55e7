//! Running the real `herd` binary in tests, against the in-process server of
//! herd-testkit.
#![allow(dead_code)]

use std::process::Stdio;
use std::time::Duration;

use herd_testkit::{TestServer, WAIT};

/// What a finished `herd` said.
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// `herd` with a config file that does not exist, so nothing on this machine leaks in.
pub fn herd(server: &TestServer, key: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_herd"));
    command
        .env("HERD_CONFIG", server.dir.path().join("no-console.toml"))
        .env("HERD_SERVER", server.url())
        .env("HERD_API_KEY", key)
        .env_remove("HERD_PROFILE")
        .env_remove("HERD_READ_ONLY")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs `herd` with `args` to its end, within [`WAIT`].
pub async fn run(command: tokio::process::Command, args: &[&str]) -> Output {
    run_within(command, args, WAIT).await
}

/// Runs `herd` with `args` to its end, within `limit`.
pub async fn run_within(
    mut command: tokio::process::Command,
    args: &[&str],
    limit: Duration,
) -> Output {
    let output = tokio::time::timeout(limit, command.args(args).output())
        .await
        .unwrap_or_else(|_| panic!("herd {args:?} finishes within {limit:?}"))
        .expect("herd runs");
    Output {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
