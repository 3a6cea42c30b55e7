//! A throwaway NATS server with JetStream: Debian's `nats-server` as a real process on
//! 127.0.0.1 and a free port, its JetStream store in a temporary directory. The cluster
//! nodes of [`crate::cluster`] meet on it.
//!
//! Like the kit's PostgreSQL it is started from the kit's long-lived spawner thread with a
//! parent-death signal, so a test process that dies takes its NATS with it, and `Drop` kills
//! it on a normal end. Each [`crate::cluster::TestCluster`] starts its own, so clusters of
//! parallel tests never see each other's subjects and streams.
//!
//! ```no_run
//! let mut nats = herd_testkit::nats::NatsServer::start().expect("nats-server runs");
//! let url = nats.url(); // nats://127.0.0.1:PORT
//! nats.kill(); // SIGKILL, as a crash would
//! nats.start_again().expect("same port, same JetStream store");
//! # let _ = url;
//! ```

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Where Debian's `nats-server` package puts the program; `HERD_NATS_SERVER` overrides, and
/// `nats-server` on `PATH` serves where it is missing.
const DEFAULT_BIN: &str = "/usr/sbin/nats-server";

/// How long a start may take before it is an error.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a throwaway NATS server could not be had.
#[derive(Debug)]
pub struct NatsError(pub String);

impl std::fmt::Display for NatsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NatsError {}

fn error(message: impl Into<String>) -> NatsError {
    NatsError(message.into())
}

/// The `nats-server` program, if it is installed.
pub fn bin() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("HERD_NATS_SERVER") {
        let path = PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    let preferred = PathBuf::from(DEFAULT_BIN);
    if preferred.is_file() {
        return Some(preferred);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|path| path.is_file())
    })
}

/// A port on 127.0.0.1 that nobody listens on right now.
fn free_port() -> Result<u16, NatsError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| error(format!("no free port on 127.0.0.1: {e}")))
}

/// One `nats-server` with JetStream on 127.0.0.1.
pub struct NatsServer {
    bin: PathBuf,
    /// Holds the JetStream store (`jetstream/`) and the server's log (`nats.log`).
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    /// The `INFO` the server greeted the last readiness check with.
    info: Value,
}

impl NatsServer {
    /// Starts `nats-server -js` on a free port; returns once it accepts a TCP connection
    /// and greets it with its `INFO` line.
    pub fn start() -> Result<Self, NatsError> {
        let bin = bin().ok_or_else(|| {
            error(format!(
                "nats-server is not installed: not at {DEFAULT_BIN} nor on PATH (apt-get \
                 install nats-server, or set HERD_NATS_SERVER)"
            ))
        })?;
        let dir = tempfile::Builder::new()
            .prefix("herd-nats-")
            .tempdir()
            .map_err(|e| error(format!("cannot make a temporary directory: {e}")))?;
        let mut server = NatsServer {
            bin,
            dir,
            port: 0,
            child: None,
            info: Value::Null,
        };
        // Another process may take the free port between asking and binding; try again.
        let mut attempts = 0;
        loop {
            server.port = free_port()?;
            match server.run() {
                Ok(()) => return Ok(server),
                Err(e) if attempts < 3 && e.0.contains("address already in use") => {
                    attempts += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory (`-sd`), kept across [`start_again`](Self::start_again).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("jetstream")
    }

    /// What the server logged so far (all its runs), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The `INFO` object the server sent on the last readiness check (`server_id`,
    /// `version`, `jetstream`, …).
    pub fn info(&self) -> &Value {
        &self.info
    }

    /// Whether the process runs (it was started and not stopped or killed by the kit).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    /// Starts the process on `self.port` and waits for its greeting.
    fn run(&mut self) -> Result<(), NatsError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| error(format!("cannot open the NATS log: {e}")))?;
        let mut command = Command::new(&self.bin);
        command
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            // No monitoring port: nothing else to collide on.
            .args(["-m", "0", "-js", "-sd"])
            .arg(self.store_dir())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let mut child = crate::postgres::spawn_long_lived(command)
            .map_err(|e| error(format!("cannot run {}: {e}", self.bin.display())))?;
        let deadline = Instant::now() + START_TIMEOUT;
        let info = loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(error(format!(
                    "nats-server ended before it was ready ({status}):\n{}",
                    self.log()
                )));
            }
            match greeting(self.port) {
                Ok(info) => break info,
                Err(e) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(error(format!(
                        "nats-server on port {} not ready after {START_TIMEOUT:?}: {e}\n{}",
                        self.port,
                        self.log()
                    )));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        if info["jetstream"] != true {
            let _ = child.kill();
            let _ = child.wait();
            return Err(error(format!("nats-server runs without JetStream: {info}")));
        }
        self.info = info;
        self.child = Some(child);
        Ok(())
    }

    /// Stops the server the way an operator would (SIGINT: clients see their connections
    /// close); the JetStream store stays for [`start_again`](Self::start_again).
    pub fn stop(&mut self) {
        self.signal_and_wait(libc::SIGINT);
    }

    /// Kills the server with SIGKILL, as a crash or the OOM killer would.
    pub fn kill(&mut self) {
        self.signal_and_wait(libc::SIGKILL);
    }

    fn signal_and_wait(&mut self, signal: libc::c_int) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: signalling a child we own that has not been reaped.
        unsafe {
            libc::kill(child.id() as libc::pid_t, signal);
        }
        // A graceful stop is quick; never wait forever on one.
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Ok(None) = child.try_wait() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.wait();
    }

    /// Starts the stopped or killed server again on the same port and JetStream store.
    pub fn start_again(&mut self) -> Result<(), NatsError> {
        assert!(self.child.is_none(), "stop or kill first");
        self.run()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Connects to 127.0.0.1:`port` and reads the server's first line, which must be
/// `INFO {json}` (the NATS client protocol's greeting); returns the JSON.
fn greeting(port: u16) -> Result<Value, String> {
    let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let json = line
        .strip_prefix("INFO ")
        .ok_or_else(|| format!("the server greeted with {line:?}, not INFO"))?;
    serde_json::from_str(json.trim_end()).map_err(|e| format!("INFO is not JSON: {e}: {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Whether the server wrote anything into the directory `path`.
    fn store_used(path: &Path) -> bool {
        std::fs::read_dir(path)
            .map(|mut entries| entries.next().is_some())
            .unwrap_or(false)
    }

    /// False (skip) where nats-server is missing, except under CI, where it fails.
    fn available() -> bool {
        crate::available_or_skip(
            bin().is_some(),
            "nats-server",
            "apt-get install nats-server",
        )
    }

    #[test]
    fn starts_greets_with_jetstream_dies_and_starts_again_on_its_port() {
        if !available() {
            return;
        }
        let mut nats = NatsServer::start().expect("nats-server starts");
        assert!(
            nats.url().starts_with("nats://127.0.0.1:"),
            "{}",
            nats.url()
        );
        assert!(nats.url().ends_with(&format!(":{}", nats.port())));
        assert_eq!(nats.info()["jetstream"], true, "{}", nats.info());
        assert!(nats.info()["server_id"].is_string(), "{}", nats.info());
        // A second client gets the same greeting from the same server.
        let again = greeting(nats.port()).expect("INFO again");
        assert_eq!(again["server_id"], nats.info()["server_id"]);
        // JetStream made its store where it was told to.
        assert!(store_used(&nats.store_dir()), "{}", nats.log());

        let pid = nats.pid().expect("a process");
        nats.kill();
        assert!(!nats.running());
        // SAFETY: signal 0 only asks whether the process exists; it was reaped by kill.
        let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
        assert!(!alive, "nats-server {pid} outlived SIGKILL");
        assert!(
            greeting(nats.port()).is_err(),
            "something still answers on the port"
        );

        let port = nats.port();
        nats.start_again().expect("starts again");
        assert_eq!(nats.port(), port);
        assert_eq!(nats.url(), format!("nats://127.0.0.1:{port}"));
        assert_eq!(nats.info()["jetstream"], true);
        assert!(store_used(&nats.store_dir()));
        nats.stop();
        assert!(!nats.running());
        assert!(greeting(port).is_err());
    }

    #[test]
    fn drop_ends_the_process() {
        if !available() {
            return;
        }
        let nats = NatsServer::start().expect("nats-server starts");
        let pid = nats.pid().expect("a process") as libc::pid_t;
        let port = nats.port();
        drop(nats);
        // SAFETY: signal 0 only asks whether the process exists.
        assert_ne!(
            unsafe { libc::kill(pid, 0) },
            0,
            "nats-server {pid} left behind"
        );
        assert!(greeting(port).is_err());
    }
}
