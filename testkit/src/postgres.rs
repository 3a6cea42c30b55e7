//! A throwaway PostgreSQL: `initdb` into a temporary directory, `postgres` listening only on
//! a Unix socket there, one fresh database per caller.
//!
//! PostgreSQL refuses to run as root; as root (this is how CI runs) the directory is handed to
//! the `postgres` system user that Debian's package creates, and `initdb` and `postgres` run
//! as that user. Every server is started from one long-lived thread with a parent-death
//! signal, so a test process that dies takes its PostgreSQL with it; [`PostgresServer`]'s
//! `Drop` and the process-wide [`shared_database`] instance's exit hook stop it on a normal end.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

/// Where Debian's `postgresql-15` puts its programs; `HERD_PG_BIN` overrides, and another
/// version under /usr/lib/postgresql serves where 15 is missing.
const DEFAULT_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Why a throwaway PostgreSQL could not be had.
#[derive(Debug)]
pub struct PostgresError(pub String);

impl std::fmt::Display for PostgresError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PostgresError {}

fn error(message: impl Into<String>) -> PostgresError {
    PostgresError(message.into())
}

/// The directory of `initdb`, `postgres` and `createdb`, if PostgreSQL is installed.
pub fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("HERD_PG_BIN") {
        let dir = PathBuf::from(dir);
        return dir.join("postgres").is_file().then_some(dir);
    }
    let preferred = PathBuf::from(DEFAULT_BIN);
    if preferred.join("postgres").is_file() {
        return Some(preferred);
    }
    // The newest other version Debian installed.
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// The user PostgreSQL's programs run as: `None` to run them as ourselves (not root), or
/// the uid and gid of the `postgres` system user.
fn run_as() -> Result<Option<(u32, u32)>, PostgresError> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return Ok(None);
    }
    let name = c"postgres";
    // SAFETY: `name` is NUL-terminated; the returned record is read before any other
    // passwd call could overwrite it, and only while the kit holds no other pointer to it.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return Err(error(
            "running as root, and PostgreSQL refuses root: the `postgres` user is missing \
             (install Debian's postgresql package, which creates it)",
        ));
    }
    // SAFETY: checked non-null above.
    let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
    Ok(Some((uid, gid)))
}

/// A request to the spawner thread.
type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `command` from a thread that lives as long as the process. The parent-death
/// signal fires when the *thread* that forked a child ends, so children of short-lived test
/// threads would be stopped as soon as their test ended.
pub(crate) fn spawn_long_lived(mut command: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("herd-testkit-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("spawner thread starts");
        Mutex::new(tx)
    });
    // SAFETY: prctl is async-signal-safe and touches only this child's own state.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (reply, answer) = mpsc::channel();
    sender
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .send((command, reply))
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?
}

/// One PostgreSQL server in a temporary directory.
pub struct PostgresServer {
    bin: PathBuf,
    /// Holds the data directory and the socket; removed on drop.
    dir: Option<tempfile::TempDir>,
    user: Option<(u32, u32)>,
    child: Option<Child>,
    databases: AtomicU64,
    /// Keep PostgreSQL's own defaults for flushing (fsync, full page writes); off for tests.
    durable: bool,
}

impl PostgresServer {
    /// Creates a cluster with `initdb` and starts `postgres` on it, without fsync (the data
    /// is thrown away); returns once it accepts connections.
    pub fn start() -> Result<Self, PostgresError> {
        Self::start_with(false)
    }

    /// [`start`](Self::start) keeping PostgreSQL's flushing defaults, for measurements that
    /// compare stores.
    pub fn start_durable() -> Result<Self, PostgresError> {
        Self::start_with(true)
    }

    fn start_with(durable: bool) -> Result<Self, PostgresError> {
        let bin = bin_dir().ok_or_else(|| {
            error(format!(
                "PostgreSQL is not installed: no postgres in {DEFAULT_BIN} (apt-get install \
                 postgresql, or set HERD_PG_BIN)"
            ))
        })?;
        let user = run_as()?;
        let dir = tempfile::Builder::new()
            .prefix("herd-pg-")
            .tempdir()
            .map_err(|e| error(format!("cannot make a temporary directory: {e}")))?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).map_err(|e| {
                error(format!(
                    "cannot hand {} to postgres: {e}",
                    dir.path().display()
                ))
            })?;
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args(["--auth=trust", "--username=postgres", "--encoding=UTF8"])
            .args(["--no-sync", "--locale=C", "-D"])
            .arg(dir.path().join("data"))
            // The postgres user may not enter the directory the tests run in.
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = user {
            initdb.uid(uid).gid(gid);
        }
        let out = initdb
            .output()
            .map_err(|e| error(format!("cannot run initdb: {e}")))?;
        if !out.status.success() {
            return Err(error(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let mut server = PostgresServer {
            bin,
            dir: Some(dir),
            user,
            child: None,
            databases: AtomicU64::new(0),
            durable,
        };
        server.run()?;
        Ok(server)
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().expect("directory kept until drop").path()
    }

    /// Starts `postgres` on the cluster and waits for its "ready to accept connections".
    fn run(&mut self) -> Result<(), PostgresError> {
        let mut command = Command::new(self.bin.join("postgres"));
        command
            .arg("-D")
            .arg(self.dir().join("data"))
            .arg("-k")
            .arg(self.dir())
            .current_dir(self.dir())
            // No TCP, and room for many parallel test servers.
            .args(["-c", "listen_addresses=", "-c", "max_connections=400"])
            .args(["-c", "shared_buffers=64MB"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if !self.durable {
            // Throwaway data needs no durability.
            command.args(["-c", "fsync=off", "-c", "synchronous_commit=off"]);
            command.args(["-c", "full_page_writes=off"]);
        }
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        let mut child =
            spawn_long_lived(command).map_err(|e| error(format!("cannot run postgres: {e}")))?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let mut lines = BufReader::new(stderr).lines();
        let mut said = Vec::new();
        loop {
            match lines.next() {
                Some(Ok(line)) => {
                    let ready = line.contains("ready to accept connections");
                    said.push(line);
                    if ready {
                        break;
                    }
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(error(format!(
                        "postgres ended before it was ready:\n{}",
                        said.join("\n")
                    )));
                }
            }
        }
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        self.child = Some(child);
        Ok(())
    }

    /// Stops the server (fast shutdown: connections are cut); the data stays for
    /// [`start_again`](Self::start_again).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling a child we own that has not been reaped.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGINT);
            }
            let _ = child.wait();
        }
    }

    /// Starts the stopped server again on the same data.
    pub fn start_again(&mut self) -> Result<(), PostgresError> {
        assert!(self.child.is_none(), "stop first");
        self.run()
    }

    /// Whether `postgres` runs.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// The process id of the postmaster, whose children are the connections' backends.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgresql://postgres@/{name}?host={}",
            self.dir().display()
        )
    }

    /// Creates a fresh database and returns its URL.
    pub fn create_database(&self) -> Result<String, PostgresError> {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("herd_{n}");
        let out = Command::new(self.bin.join("createdb"))
            .arg("-h")
            .arg(self.dir())
            .args(["-U", "postgres", &name])
            .output()
            .map_err(|e| error(format!("cannot run createdb: {e}")))?;
        if !out.status.success() {
            return Err(error(format!(
                "createdb {name} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(self.url(&name))
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Everything stored in the database at `url`, as `pg_dump` writes it.
pub fn dump(url: &str) -> Result<String, PostgresError> {
    let bin = bin_dir().ok_or_else(|| error("PostgreSQL is not installed"))?;
    let out = Command::new(bin.join("pg_dump"))
        .arg(url)
        .output()
        .map_err(|e| error(format!("cannot run pg_dump: {e}")))?;
    if !out.status.success() {
        return Err(error(format!(
            "pg_dump failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

static SHARED: OnceLock<Result<Mutex<Option<PostgresServer>>, String>> = OnceLock::new();

/// Stops the shared server when the process exits normally.
extern "C" fn stop_shared() {
    if let Some(Ok(server)) = SHARED.get() {
        let taken = server
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        drop(taken);
    }
}

/// A fresh database on the one PostgreSQL of this process, started on first use.
pub fn shared_database() -> Result<String, PostgresError> {
    let shared = SHARED.get_or_init(|| {
        let server = PostgresServer::start().map_err(|e| e.0)?;
        // SAFETY: registering a plain function without arguments.
        unsafe {
            libc::atexit(stop_shared);
        }
        Ok(Mutex::new(Some(server)))
    });
    match shared {
        Ok(server) => server
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
            .ok_or_else(|| error("the shared PostgreSQL was stopped"))?
            .create_database(),
        Err(message) => Err(error(message.clone())),
    }
}
