//! SQLite store: one write connection with group commit, a small pool of readers.
//!
//! Every write is a job run on the write connection inside a group transaction: the
//! transaction runs as many queued jobs as it finds (each inside a savepoint, so a failing job
//! does not undo its neighbours), commits once, and only then answers the callers. Thousands
//! of shadow updates per second therefore cost a handful of commits, and an answer always
//! means "on disk" (WAL; `Durability::Power` adds an fsync per commit). Readers use their own
//! connections, which WAL lets run beside the writer.
//!
//! Who runs a transaction: when the write connection is free and no job is waiting, the task
//! asking for the write runs it itself, taking along jobs queued meanwhile (at most
//! [`INLINE_BATCH`]). A WAL commit without fsync is a write into the page cache, cheaper than
//! the two thread hand-offs (wake the writer thread, wake the task again) it replaces; at low
//! and moderate rates those were most of an update's cost beyond the socket
//! (docs/BENCHMARKS.md, run P). Otherwise the job is queued for the writer thread, which
//! forms the batches under load. With `Durability::Power` (an fsync per commit) or a commit window,
//! every job goes to the writer thread, so no async task ever waits on a disk flush; so do
//! jobs whose size grows with the fleet (a rollout's device list).

use super::shadow_json;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herd_config::Durability;
use parking_lot::Mutex;
use protocol::shadow::{Limits, Shadow, Update};
use protocol::Value;
use rusqlite::{params, Connection, OptionalExtension, Row};
use tokio::sync::oneshot;

use protocol::firmware::{DeviceState, RolloutSpec, RolloutState};
use protocol::rest::Scope;

use super::{
    ApiKey, DeviceRecord, FirmwareRecord, NewDevice, RolloutDeviceRecord, RolloutRecord,
    ShadowChange, Store, StoreError, User, UserCredentials,
};

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    pass_hash TEXT NOT NULL,
    admin INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    key_hash TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    last_used REAL
);
CREATE INDEX api_keys_user ON api_keys(user_id);
CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    user_id TEXT NOT NULL,
    shared_with TEXT NOT NULL DEFAULT '',
    token_hash TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    last_seen REAL,
    info TEXT NOT NULL DEFAULT '{}',
    shadow TEXT NOT NULL
);
CREATE INDEX devices_user ON devices(user_id);
"#,
    r#"
CREATE TABLE firmware (
    id TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    version TEXT NOT NULL,
    platform TEXT NOT NULL,
    size INTEGER NOT NULL,
    signature TEXT,
    format TEXT NOT NULL,
    build_id TEXT,
    created_at REAL NOT NULL,
    created_by TEXT NOT NULL
);
CREATE TABLE firmware_owners (
    firmware_id TEXT NOT NULL REFERENCES firmware(id) ON DELETE CASCADE,
    user_id TEXT NOT NULL,
    PRIMARY KEY (firmware_id, user_id)
);
CREATE INDEX firmware_owners_user ON firmware_owners(user_id);
CREATE TABLE rollouts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    firmware_id TEXT NOT NULL REFERENCES firmware(id),
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    current_wave INTEGER NOT NULL DEFAULT 0,
    wave_started_at REAL,
    reason TEXT NOT NULL DEFAULT '',
    created_by TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX rollouts_state ON rollouts(state);
CREATE TABLE rollout_devices (
    rollout_id TEXT NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
    device_id TEXT NOT NULL,
    name TEXT NOT NULL,
    wave INTEGER NOT NULL,
    position INTEGER NOT NULL,
    state TEXT NOT NULL,
    from_version TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    started_at REAL,
    finished_at REAL,
    PRIMARY KEY (rollout_id, device_id)
);
CREATE INDEX rollout_devices_device ON rollout_devices(device_id);
"#,
    r#"
CREATE TABLE retired_devices (
    id TEXT PRIMARY KEY,
    retired_at REAL NOT NULL
);
"#,
    r#"
ALTER TABLE api_keys ADD COLUMN name TEXT NOT NULL DEFAULT '';
ALTER TABLE api_keys ADD COLUMN scope TEXT;
ALTER TABLE api_keys ADD COLUMN devices TEXT;
ALTER TABLE api_keys ADD COLUMN expires_at REAL;
"#,
];

const DEVICE_COLUMNS: &str = "id, name, user_id, shared_with, created_at, last_seen, info, shadow";
const READERS: usize = 4;
/// Most jobs one commit carries; bounds the latency of the first job in a batch.
const MAX_BATCH: usize = 2048;

/// Most jobs a task running a transaction itself takes along: bounds how long it keeps its
/// runtime thread (a job is tens of microseconds).
const INLINE_BATCH: usize = 32;

type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
type Job = Box<dyn FnOnce(&Connection) -> Completion + Send>;

/// Jobs waiting for the write connection, and the close request.
#[derive(Default)]
struct Queue {
    jobs: std::collections::VecDeque<Job>,
    closing: Option<oneshot::Sender<Result<(), StoreError>>>,
    closed: bool,
}

/// What the writer thread and the tasks running their own writes share.
struct Writer {
    conn: Mutex<Connection>,
    queue: Mutex<Queue>,
    /// Signalled when a job is queued or the store closes.
    work: parking_lot::Condvar,
    /// Whether tasks may run transactions themselves (no fsync per commit, no window).
    inline: bool,
    commit_window: Duration,
}

impl Writer {
    /// Queues `job` for the writer thread; `Err` gives it back once the store is closed.
    fn enqueue(&self, job: Job) -> Result<(), Job> {
        let mut queue = self.queue.lock();
        if queue.closed {
            return Err(job);
        }
        queue.jobs.push_back(job);
        drop(queue);
        self.work.notify_one();
        Ok(())
    }

    /// Whether a task holding the free connection runs its job itself: not after the
    /// close, and not while jobs wait for the writer thread (under load, its batches are
    /// the cheaper way, and they keep the runtime's threads for the sockets).
    fn runs_inline(&self) -> bool {
        let queue = self.queue.lock();
        !queue.closed && queue.jobs.is_empty()
    }

    fn next_job(&self) -> Option<Job> {
        self.queue.lock().jobs.pop_front()
    }
}

/// The SQLite implementation of [`Store`].
pub struct SqliteStore {
    path: PathBuf,
    writer: Arc<Writer>,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    checkpointer: Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    /// One permit per pooled reader: a read waits for a free connection.
    reader_slots: Arc<tokio::sync::Semaphore>,
}

/// How often the WAL is folded into the database, off the writer thread.
const CHECKPOINT_PERIOD: Duration = Duration::from_millis(500);

/// Checkpoints on a connection of its own. SQLite's automatic checkpoint runs inside the
/// commit that crosses the threshold, stalling every write queued behind it (and with it the
/// devices waiting for their replies); a passive checkpoint beside the writer never blocks it.
fn checkpoint_loop(conn: Connection, stop: mpsc::Receiver<()>) {
    loop {
        match stop.recv_timeout(CHECKPOINT_PERIOD) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)") {
                    tracing::warn!(error = %e, "WAL checkpoint failed");
                }
            }
            _ => return,
        }
    }
}

impl SqliteStore {
    /// Opens (creating and migrating as needed) `herd.db` in `dir`.
    pub fn open(
        dir: &Path,
        durability: Durability,
        commit_window: Duration,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Backend(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("herd.db");
        let mut writer = open_connection(&path, durability)?;
        migrate(&mut writer)?;
        writer.execute_batch("PRAGMA wal_autocheckpoint = 0")?;
        let checkpoint_conn = open_connection(&path, durability)?;
        let (stop_checkpoints, stop) = mpsc::channel();
        let checkpointer = std::thread::Builder::new()
            .name("herd-store-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpoint_conn, stop))
            .map_err(|e| StoreError::Backend(format!("cannot start checkpoint thread: {e}")))?;
        let readers = (0..READERS)
            .map(|_| open_connection(&path, durability))
            .collect::<Result<Vec<_>, _>>()?;
        let writer = Arc::new(Writer {
            conn: Mutex::new(writer),
            queue: Mutex::new(Queue::default()),
            work: parking_lot::Condvar::new(),
            inline: durability == Durability::Process && commit_window.is_zero(),
            commit_window,
        });
        let shared = writer.clone();
        let thread = std::thread::Builder::new()
            .name("herd-store-writer".into())
            .spawn(move || writer_loop(&shared))
            .map_err(|e| StoreError::Backend(format!("cannot start writer thread: {e}")))?;
        Ok(Self {
            path,
            writer,
            writer_thread: Mutex::new(Some(thread)),
            checkpointer: Mutex::new(Some((stop_checkpoints, checkpointer))),
            readers: Arc::new(Mutex::new(readers)),
            reader_slots: Arc::new(tokio::sync::Semaphore::new(READERS)),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the writer thread runs (it ends only with [`Store::close`] or a fault the
    /// job guard did not catch).
    pub fn writer_alive(&self) -> bool {
        self.writer_thread
            .lock()
            .as_ref()
            .is_some_and(|thread| !thread.is_finished())
    }

    /// Runs `job` on the write connection inside a group transaction (on this task when the
    /// connection is free, else on the writer thread); resolves after the transaction that
    /// carried it committed.
    async fn write<T, F>(&self, job: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit(job, true).await
    }

    /// [`write`](Self::write) for a job whose size grows with the fleet (a rollout's
    /// device list): always on the writer thread, so no runtime thread is held for it.
    async fn write_bulk<T, F>(&self, job: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit(job, false).await
    }

    async fn submit<T, F>(&self, job: F, may_run_here: bool) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn: &Connection| {
            let result = in_savepoint(conn, job);
            Box::new(move |commit: Result<(), StoreError>| {
                let _ = tx.send(commit.and(result));
            })
        });
        let writer = &self.writer;
        let job = match (may_run_here && writer.inline)
            .then(|| writer.conn.try_lock())
            .flatten()
        {
            Some(conn) if writer.runs_inline() => {
                run_batch(&conn, writer, job, INLINE_BATCH, Duration::ZERO);
                None
            }
            _ => Some(job),
        };
        if let Some(job) = job {
            writer.enqueue(job).map_err(|_| StoreError::Closed)?;
        }
        match rx.await {
            Ok(result) => result,
            // The answer was dropped: the job panicked (the writer lives on), or the
            // transaction could not begin.
            Err(_) if self.writer_alive() => Err(StoreError::Backend(
                "the store could not carry out this write; see the server log".into(),
            )),
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// Runs `job` on a pooled reader connection off the async runtime.
    async fn read<T, F>(&self, job: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        // A read waits for one of the pooled connections. Opening a temporary one when
        // the pool ran dry cost a schema parse per read under load, and the page caches of
        // thousands of such connections made the server's memory climb with each wave of
        // reconnecting devices.
        let permit = self
            .reader_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        let readers = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let pooled = readers.lock().pop();
            let conn = match pooled {
                Some(conn) => conn,
                // A connection lost to a failed job: open its replacement.
                None => open_connection(&path, Durability::Process)?,
            };
            let result = job(&conn);
            readers.lock().push(conn);
            result
        })
        .await
        .map_err(|e| StoreError::Backend(format!("reader task failed: {e}")))?
    }
}

fn open_connection(path: &Path, durability: Durability) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let synchronous = match durability {
        Durability::Process => "NORMAL",
        Durability::Power => "FULL",
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; PRAGMA foreign_keys = ON;"
    ))?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let version = usize::try_from(version).unwrap_or(usize::MAX);
    if version > MIGRATIONS.len() {
        return Err(StoreError::Backend(format!(
            "database schema version {version} is newer than this server ({})",
            MIGRATIONS.len()
        )));
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(migration)?;
        tx.pragma_update(None, "user_version", (index + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

fn in_savepoint<T>(
    conn: &Connection,
    job: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    // Cached statements: parsing these four words for every job showed in profiles.
    conn.prepare_cached("SAVEPOINT job")?.execute([])?;
    let result = job(conn);
    if result.is_err() {
        conn.prepare_cached("ROLLBACK TO job")?.execute([])?;
    }
    conn.prepare_cached("RELEASE job")?.execute([])?;
    result
}

/// Runs one job in the group transaction. A job that panics loses only itself: its
/// savepoint is rolled back, its caller hears that the job failed (the oneshot it waits on
/// is dropped), and the writer goes on with the next job.
fn run_job(conn: &Connection, job: Job) -> Option<Completion> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(conn))) {
        Ok(completion) => Some(completion),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            tracing::error!(panic = %what, "a store job panicked; its write is undone");
            JOB_PANICS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // The savepoint the job opened may still be open.
            let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
            None
        }
    }
}

/// Store jobs that panicked since the process started, for `/healthz`.
static JOB_PANICS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many store jobs panicked since the process started.
pub fn job_panics() -> u64 {
    JOB_PANICS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Runs one group transaction: `first`, then queued jobs until the queue is empty (after
/// waiting up to `window` for more) or `max` jobs ran; commits, then answers every caller.
/// Returns without running anything but answering `first` if no transaction can begin.
fn run_batch(conn: &Connection, writer: &Writer, first: Job, max: usize, window: Duration) {
    // A transaction left open by a batch that unwound would make every later BEGIN fail.
    if !conn.is_autocommit() {
        tracing::error!("store found a transaction left open; rolling it back");
        let _ = conn.execute_batch("ROLLBACK");
    }
    // Cached statements: parsing BEGIN and COMMIT for every batch showed in profiles.
    if let Err(e) = conn
        .prepare_cached("BEGIN IMMEDIATE")
        .and_then(|mut begin| begin.execute([]))
    {
        // Running the job outside a transaction would commit it on its own; dropping it
        // answers its caller with an error instead.
        tracing::error!(error = %e, "store cannot begin a transaction; write refused");
        drop(first);
        return;
    }
    let mut completions: Vec<Completion> = run_job(conn, first).into_iter().collect();
    let deadline = Instant::now() + window;
    while completions.len() < max {
        let next = match writer.next_job() {
            Some(job) => Some(job),
            None if window.is_zero() => None,
            None => {
                let mut queue = writer.queue.lock();
                while queue.jobs.is_empty()
                    && queue.closing.is_none()
                    && !writer.work.wait_until(&mut queue, deadline).timed_out()
                {}
                queue.jobs.pop_front()
            }
        };
        match next {
            Some(job) => completions.extend(run_job(conn, job)),
            None => break,
        }
    }
    let commit = conn
        .prepare_cached("COMMIT")
        .and_then(|mut commit| commit.execute([]))
        .map(|_| ())
        .map_err(StoreError::from);
    if commit.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    for completion in completions {
        let result = match &commit {
            Ok(()) => Ok(()),
            Err(e) => Err(StoreError::Backend(e.to_string())),
        };
        completion(result);
    }
}

/// The writer thread: runs the jobs queued while the connection was busy, batching them,
/// until the store closes; then folds the WAL into the database.
fn writer_loop(writer: &Writer) {
    /// However the thread ends, later writes are refused and queued ones answered (their
    /// callers see the writer gone) instead of waiting for a thread that is not there.
    struct Ended<'a>(&'a Writer);
    impl Drop for Ended<'_> {
        fn drop(&mut self) {
            let mut queue = self.0.queue.lock();
            queue.closed = true;
            queue.jobs.clear();
        }
    }
    let _ended = Ended(writer);
    let closing = loop {
        {
            let mut queue = writer.queue.lock();
            while queue.jobs.is_empty() && queue.closing.is_none() {
                writer.work.wait(&mut queue);
            }
            if queue.jobs.is_empty() {
                // Closing, and every job queued before the close ran.
                queue.closed = true;
                break queue.closing.take();
            }
        }
        let conn = writer.conn.lock();
        // A task holding the connection may have taken the queued jobs along.
        if let Some(first) = writer.next_job() {
            run_batch(&conn, writer, first, MAX_BATCH, writer.commit_window);
        }
    };
    // Fold the WAL into the database so a clean shutdown leaves one self-contained file.
    let result = writer
        .conn
        .lock()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .map_err(StoreError::from);
    if let Some(done) = closing {
        let _ = done.send(result);
    }
}

fn user_from_row(row: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: row.get(0)?,
        name: row.get(1)?,
        admin: row.get::<_, i64>(2)? != 0,
        created_at: row.get(3)?,
    })
}

const KEY_COLUMNS: &str =
    "k.id, k.user_id, k.created_at, k.last_used, k.name, k.scope, k.devices, k.expires_at";

/// A key row (columns [`KEY_COLUMNS`]); an unknown stored scope reads as the narrowest.
fn key_from_row(row: &Row<'_>) -> rusqlite::Result<ApiKey> {
    let scope: Option<String> = row.get(5)?;
    Ok(ApiKey {
        id: row.get(0)?,
        user_id: row.get(1)?,
        created_at: row.get(2)?,
        last_used: row.get(3)?,
        name: row.get(4)?,
        scope: scope.map(|s| Scope::parse(&s).unwrap_or(Scope::Read)),
        devices: row.get(6)?,
        expires_at: row.get(7)?,
    })
}

/// Raw device row; JSON columns are parsed outside rusqlite's row callback so that a
/// corrupt column becomes a clear error instead of a panic.
struct RawDevice {
    id: String,
    name: String,
    user_id: String,
    shared_with: String,
    created_at: f64,
    last_seen: Option<f64>,
    info: String,
    shadow: String,
}

fn raw_device(row: &Row<'_>) -> rusqlite::Result<RawDevice> {
    Ok(RawDevice {
        id: row.get(0)?,
        name: row.get(1)?,
        user_id: row.get(2)?,
        shared_with: row.get(3)?,
        created_at: row.get(4)?,
        last_seen: row.get(5)?,
        info: row.get(6)?,
        shadow: row.get(7)?,
    })
}

impl RawDevice {
    fn parse(self) -> Result<DeviceRecord, StoreError> {
        let corrupt = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Backend(format!("device {}: stored {what} is corrupt: {e}", self.id))
        };
        let info: Value = serde_json::from_str(&self.info).map_err(|e| corrupt("info", &e))?;
        let doc: Value = serde_json::from_str(&self.shadow).map_err(|e| corrupt("shadow", &e))?;
        let shadow = Shadow::from_document(&doc).map_err(|e| corrupt("shadow", &e))?;
        Ok(DeviceRecord {
            id: self.id,
            name: self.name,
            user_id: self.user_id,
            shared_with: self.shared_with,
            created_at: self.created_at,
            last_seen: self.last_seen,
            info,
            shadow,
        })
    }
}

fn load_device(conn: &Connection, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
    let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = ?1");
    conn.prepare_cached(&sql)?
        .query_row([id], raw_device)
        .optional()?
        .map(RawDevice::parse)
        .transpose()
}

fn require_device(conn: &Connection, id: &str) -> Result<DeviceRecord, StoreError> {
    load_device(conn, id)?.ok_or_else(|| StoreError::NotFound(format!("device {id}")))
}

const FIRMWARE_COLUMNS: &str =
    "id, app, version, platform, size, signature, format, build_id, created_at, created_by";

fn firmware_from_row(row: &Row<'_>) -> rusqlite::Result<FirmwareRecord> {
    Ok(FirmwareRecord {
        id: row.get(0)?,
        app: row.get(1)?,
        version: row.get(2)?,
        platform: row.get(3)?,
        size: row.get::<_, i64>(4)?.max(0) as u64,
        signature: row.get(5)?,
        format: row.get(6)?,
        build_id: row.get(7)?,
        created_at: row.get(8)?,
        created_by: row.get(9)?,
    })
}

const ROLLOUT_COLUMNS: &str = "id, name, firmware_id, spec, state, current_wave, wave_started_at, reason, created_by, created_at, started_at, finished_at";

/// A rollout row before its JSON and enum columns are checked.
struct RawRollout {
    record: RolloutRecord,
    spec: String,
    state: String,
}

fn raw_rollout(row: &Row<'_>) -> rusqlite::Result<RawRollout> {
    let spec: String = row.get(3)?;
    let state: String = row.get(4)?;
    Ok(RawRollout {
        record: RolloutRecord {
            id: row.get(0)?,
            name: row.get(1)?,
            firmware_id: row.get(2)?,
            // Replaced by `parse`; a placeholder keeps the row callback free of JSON work.
            spec: RolloutSpec {
                name: None,
                firmware: String::new(),
                select: Default::default(),
                waves: Vec::new(),
                max_parallel: 1,
                halt_when: Default::default(),
                commit: Default::default(),
                offline: Default::default(),
                delivery: Default::default(),
                commit_timeout_s: 0,
                dry_run: false,
            },
            state: RolloutState::Planned,
            current_wave: row.get::<_, i64>(5)?.max(0) as u32,
            wave_started_at: row.get(6)?,
            reason: row.get(7)?,
            created_by: row.get(8)?,
            created_at: row.get(9)?,
            started_at: row.get(10)?,
            finished_at: row.get(11)?,
        },
        spec,
        state,
    })
}

impl RawRollout {
    fn parse(self) -> Result<RolloutRecord, StoreError> {
        let mut record = self.record;
        record.spec = serde_json::from_str(&self.spec).map_err(|e| {
            StoreError::Backend(format!(
                "rollout {}: stored spec is corrupt: {e}",
                record.id
            ))
        })?;
        record.state = RolloutState::parse(&self.state).ok_or_else(|| {
            StoreError::Backend(format!(
                "rollout {}: unknown stored state {:?}",
                record.id, self.state
            ))
        })?;
        Ok(record)
    }
}

const ROLLOUT_DEVICE_COLUMNS: &str = "rollout_id, device_id, name, wave, position, state, from_version, attempts, message, started_at, finished_at";

fn rollout_device_from_row(row: &Row<'_>) -> rusqlite::Result<(RolloutDeviceRecord, String)> {
    Ok((
        RolloutDeviceRecord {
            rollout_id: row.get(0)?,
            device_id: row.get(1)?,
            name: row.get(2)?,
            wave: row.get::<_, i64>(3)?.max(0) as u32,
            position: row.get::<_, i64>(4)?.max(0) as u32,
            state: DeviceState::Pending,
            from_version: row.get(6)?,
            attempts: row.get::<_, i64>(7)?.max(0) as u32,
            message: row.get(8)?,
            started_at: row.get(9)?,
            finished_at: row.get(10)?,
        },
        row.get(5)?,
    ))
}

fn spec_json(spec: &RolloutSpec) -> Result<String, StoreError> {
    serde_json::to_string(spec).map_err(|e| StoreError::Backend(format!("spec: {e}")))
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_user(&self, name: &str, pass_hash: &str, now: f64) -> Result<User, StoreError> {
        let name = name.to_string();
        let pass_hash = pass_hash.to_string();
        self.write(move |conn| {
            let id = format!("email_{name}");
            let exists: bool = conn
                .prepare_cached("SELECT 1 FROM users WHERE name = ?1 OR id = ?2")?
                .exists(params![name, id])?;
            if exists {
                return Err(StoreError::Exists(format!("user {name}")));
            }
            let count: i64 = conn.query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))?;
            let admin = count == 0;
            conn.execute(
                "INSERT INTO users (id, name, pass_hash, admin, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, name, pass_hash, admin as i64, now],
            )?;
            Ok(User {
                id,
                name,
                admin,
                created_at: now,
            })
        })
        .await
    }

    async fn user_credentials(&self, name: &str) -> Result<Option<UserCredentials>, StoreError> {
        let name = name.to_string();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT id, name, admin, created_at, pass_hash FROM users WHERE name = ?1",
                )?
                .query_row([name], |row| {
                    Ok(UserCredentials {
                        user: user_from_row(row)?,
                        pass_hash: row.get(4)?,
                    })
                })
                .optional()?)
        })
        .await
    }

    async fn create_key(&self, key: ApiKey, key_hash: &str) -> Result<ApiKey, StoreError> {
        let key_hash = key_hash.to_string();
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO api_keys (id, user_id, key_hash, created_at, name, scope, devices, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    key.id,
                    key.user_id,
                    key_hash,
                    key.created_at,
                    key.name,
                    key.scope.map(Scope::as_str),
                    key.devices,
                    key.expires_at
                ],
            )?;
            Ok(ApiKey {
                last_used: None,
                ..key
            })
        })
        .await
    }

    async fn key_by_hash(&self, key_hash: &str) -> Result<Option<(ApiKey, User)>, StoreError> {
        let key_hash = key_hash.to_string();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {KEY_COLUMNS}, u.id, u.name, u.admin, u.created_at
                     FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.key_hash = ?1"
                ))?
                .query_row([key_hash], |row| {
                    Ok((
                        key_from_row(row)?,
                        User {
                            id: row.get(8)?,
                            name: row.get(9)?,
                            admin: row.get::<_, i64>(10)? != 0,
                            created_at: row.get(11)?,
                        },
                    ))
                })
                .optional()?)
        })
        .await
    }

    async fn list_keys(&self, user_id: &str) -> Result<Vec<ApiKey>, StoreError> {
        let user_id = user_id.to_string();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.user_id = ?1 ORDER BY k.created_at, k.id"
            ))?;
            let keys = stmt
                .query_map([user_id], key_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(keys)
        })
        .await
    }

    async fn delete_key(&self, user_id: &str, id: &str) -> Result<bool, StoreError> {
        let (user_id, id) = (user_id.to_string(), id.to_string());
        self.write(move |conn| {
            let n = conn.execute(
                "DELETE FROM api_keys WHERE id = ?1 AND user_id = ?2",
                params![id, user_id],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn touch_key(&self, id: &str, now: f64) -> Result<(), StoreError> {
        let id = id.to_string();
        self.write(move |conn| {
            conn.prepare_cached("UPDATE api_keys SET last_used = ?2 WHERE id = ?1")?
                .execute(params![id, now])?;
            Ok(())
        })
        .await
    }

    async fn create_device(&self, device: NewDevice) -> Result<DeviceRecord, StoreError> {
        self.write(move |conn| {
            let exists = conn
                .prepare_cached("SELECT 1 FROM devices WHERE id = ?1")?
                .exists([&device.id])?;
            if exists {
                return Err(StoreError::Exists(format!("device {}", device.id)));
            }
            // A deleted device's id is never given again: its history in notification.log
            // must not become a later owner's (PROTOCOL §11).
            let retired = conn
                .prepare_cached("SELECT 1 FROM retired_devices WHERE id = ?1")?
                .exists([&device.id])?;
            if retired {
                return Err(StoreError::Conflict(format!(
                    "device id {} belonged to a deleted device and is not given again",
                    device.id
                )));
            }
            let shadow = Shadow::default();
            conn.execute(
                "INSERT INTO devices (id, name, user_id, token_hash, created_at, shadow) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    device.id,
                    device.name,
                    device.user_id,
                    device.token_hash,
                    device.created_at,
                    shadow_json(&shadow)
                ],
            )?;
            Ok(DeviceRecord {
                id: device.id,
                name: device.name,
                user_id: device.user_id,
                shared_with: String::new(),
                created_at: device.created_at,
                last_seen: None,
                info: Value::Object(Default::default()),
                shadow,
            })
        })
        .await
    }

    async fn device(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| load_device(conn, &id)).await
    }

    async fn device_by_token_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        let token_hash = token_hash.to_string();
        self.read(move |conn| {
            let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE token_hash = ?1");
            conn.prepare_cached(&sql)?
                .query_row([token_hash], raw_device)
                .optional()?
                .map(RawDevice::parse)
                .transpose()
        })
        .await
    }

    async fn list_devices(&self, user: Option<&User>) -> Result<Vec<DeviceRecord>, StoreError> {
        let user = user.cloned();
        self.read(move |conn| {
            let raws = match &user {
                None => {
                    let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices ORDER BY id");
                    let mut stmt = conn.prepare_cached(&sql)?;
                    let rows = stmt.query_map([], raw_device)?;
                    rows.collect::<Result<Vec<_>, _>>()?
                }
                Some(user) => {
                    // shared_with is a short comma list; matching it in SQL with delimiters
                    // avoids a second table while staying exact (no prefix matches).
                    let sql = format!(
                        "SELECT {DEVICE_COLUMNS} FROM devices
                         WHERE user_id = ?1 OR (',' || replace(shared_with, ' ', '') || ',') LIKE ('%,' || ?1 || ',%') ESCAPE '\\'
                         ORDER BY id"
                    );
                    let mut stmt = conn.prepare_cached(&sql)?;
                    let rows = stmt.query_map([&user.id], raw_device)?;
                    rows.collect::<Result<Vec<_>, _>>()?
                }
            };
            let mut devices = Vec::with_capacity(raws.len());
            for raw in raws {
                match raw.parse() {
                    Ok(device) => devices.push(device),
                    // One corrupt row must not hide the whole fleet.
                    Err(e) => tracing::error!(error = %e, "skipping unreadable device row"),
                }
            }
            // LIKE treats '_' in user ids as a wildcard; re-check exactly.
            if let Some(user) = &user {
                devices.retain(|d| d.visible_to(user));
            }
            Ok(devices)
        })
        .await
    }

    async fn update_device_meta(
        &self,
        id: &str,
        name: Option<String>,
        shared_with: Option<String>,
    ) -> Result<DeviceRecord, StoreError> {
        let id = id.to_string();
        self.write(move |conn| {
            let mut device = require_device(conn, &id)?;
            if let Some(name) = name {
                device.name = name;
            }
            if let Some(shared) = shared_with {
                device.shared_with = shared;
            }
            conn.execute(
                "UPDATE devices SET name = ?2, shared_with = ?3 WHERE id = ?1",
                params![id, device.name, device.shared_with],
            )?;
            Ok(device)
        })
        .await
    }

    async fn delete_device(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.write(move |conn| {
            if conn.execute("DELETE FROM devices WHERE id = ?1", [&id])? == 0 {
                return Ok(false);
            }
            conn.execute(
                "INSERT OR IGNORE INTO retired_devices (id, retired_at) VALUES (?1, ?2)",
                params![id, crate::clock::now()],
            )?;
            Ok(true)
        })
        .await
    }

    async fn set_info(&self, id: &str, info: Value) -> Result<(), StoreError> {
        let id = id.to_string();
        self.write(move |conn| {
            conn.prepare_cached("UPDATE devices SET info = ?2 WHERE id = ?1")?
                .execute(params![id, info.to_string()])?;
            Ok(())
        })
        .await
    }

    async fn set_last_seen(&self, id: &str, when: f64) -> Result<(), StoreError> {
        let id = id.to_string();
        self.write(move |conn| {
            conn.prepare_cached("UPDATE devices SET last_seen = ?2 WHERE id = ?1")?
                .execute(params![id, when])?;
            Ok(())
        })
        .await
    }

    async fn update_shadow(
        &self,
        id: &str,
        update: Update,
        now: f64,
        limits: Limits,
    ) -> Result<ShadowChange, StoreError> {
        let id = id.to_string();
        self.write(move |conn| {
            let mut device = require_device(conn, &id)?;
            let applied = device.shadow.apply(&update, now, &limits)?;
            conn.prepare_cached("UPDATE devices SET shadow = ?2 WHERE id = ?1")?
                .execute(params![id, shadow_json(&device.shadow)])?;
            Ok(ShadowChange { device, applied })
        })
        .await
    }

    async fn put_firmware(
        &self,
        firmware: FirmwareRecord,
        owner: &str,
    ) -> Result<(FirmwareRecord, bool), StoreError> {
        let owner = owner.to_string();
        self.write(move |conn| {
            let sql = format!("SELECT {FIRMWARE_COLUMNS} FROM firmware WHERE id = ?1");
            let existing = conn
                .prepare_cached(&sql)?
                .query_row([&firmware.id], firmware_from_row)
                .optional()?;
            let (record, created) = match existing {
                Some(existing) => (existing, false),
                None => {
                    conn.execute(
                        "INSERT INTO firmware (id, app, version, platform, size, signature, format, build_id, created_at, created_by)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                        params![
                            firmware.id,
                            firmware.app,
                            firmware.version,
                            firmware.platform,
                            firmware.size as i64,
                            firmware.signature,
                            firmware.format,
                            firmware.build_id,
                            firmware.created_at,
                            firmware.created_by
                        ],
                    )?;
                    (firmware, true)
                }
            };
            conn.execute(
                "INSERT OR IGNORE INTO firmware_owners (firmware_id, user_id) VALUES (?1, ?2)",
                params![record.id, owner],
            )?;
            Ok((record, created))
        })
        .await
    }

    async fn firmware(
        &self,
        id: &str,
    ) -> Result<Option<(FirmwareRecord, Vec<String>)>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| {
            let sql = format!("SELECT {FIRMWARE_COLUMNS} FROM firmware WHERE id = ?1");
            let Some(record) = conn
                .prepare_cached(&sql)?
                .query_row([&id], firmware_from_row)
                .optional()?
            else {
                return Ok(None);
            };
            let owners = conn
                .prepare_cached(
                    "SELECT user_id FROM firmware_owners WHERE firmware_id = ?1 ORDER BY user_id",
                )?
                .query_map([&id], |row| row.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            Ok(Some((record, owners)))
        })
        .await
    }

    async fn list_firmware(&self, user: Option<&str>) -> Result<Vec<FirmwareRecord>, StoreError> {
        let user = user.map(str::to_string);
        self.read(move |conn| {
            let list = match &user {
                None => {
                    let sql = format!(
                        "SELECT {FIRMWARE_COLUMNS} FROM firmware ORDER BY created_at DESC, id"
                    );
                    let mut stmt = conn.prepare_cached(&sql)?;
                    let rows = stmt.query_map([], firmware_from_row)?;
                    rows.collect::<Result<Vec<_>, _>>()?
                }
                Some(user) => {
                    let sql = format!(
                        "SELECT {FIRMWARE_COLUMNS} FROM firmware WHERE id IN
                         (SELECT firmware_id FROM firmware_owners WHERE user_id = ?1)
                         ORDER BY created_at DESC, id"
                    );
                    let mut stmt = conn.prepare_cached(&sql)?;
                    let rows = stmt.query_map([user], firmware_from_row)?;
                    rows.collect::<Result<Vec<_>, _>>()?
                }
            };
            Ok(list)
        })
        .await
    }

    async fn delete_firmware(&self, id: &str, user: Option<&str>) -> Result<bool, StoreError> {
        let id = id.to_string();
        let user = user.map(str::to_string);
        self.write(move |conn| {
            let exists = conn
                .prepare_cached("SELECT 1 FROM firmware WHERE id = ?1")?
                .exists([&id])?;
            if !exists {
                return Err(StoreError::NotFound(format!("firmware {id}")));
            }
            // The bytes must stay while a rollout may still send them, whoever asks.
            let unfinished: Vec<String> = conn
                .prepare_cached(
                    "SELECT id FROM rollouts WHERE firmware_id = ?1
                     AND state IN ('planned', 'running', 'paused', 'halted') ORDER BY created_at",
                )?
                .query_map([&id], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            if !unfinished.is_empty() {
                return Err(StoreError::Conflict(format!(
                    "firmware {id} is used by unfinished rollout {}",
                    unfinished.join(", ")
                )));
            }
            let removed = match &user {
                Some(user) => conn.execute(
                    "DELETE FROM firmware_owners WHERE firmware_id = ?1 AND user_id = ?2",
                    params![id, user],
                )?,
                None => {
                    conn.execute("DELETE FROM firmware_owners WHERE firmware_id = ?1", [&id])?
                }
            };
            if removed == 0 && user.is_some() {
                return Err(StoreError::NotFound(format!("firmware {id}")));
            }
            let owners: i64 = conn.query_row(
                "SELECT COUNT(*) FROM firmware_owners WHERE firmware_id = ?1",
                [&id],
                |row| row.get(0),
            )?;
            let used: bool = conn
                .prepare_cached("SELECT 1 FROM rollouts WHERE firmware_id = ?1")?
                .exists([&id])?;
            if owners > 0 {
                return Ok(false);
            }
            if used {
                // Finished rollouts keep naming the image; its row stays for their history,
                // its bytes go.
                return Ok(true);
            }
            conn.execute("DELETE FROM firmware WHERE id = ?1", [&id])?;
            Ok(true)
        })
        .await
    }

    async fn create_rollout(
        &self,
        rollout: RolloutRecord,
        devices: Vec<RolloutDeviceRecord>,
    ) -> Result<(), StoreError> {
        let spec = spec_json(&rollout.spec)?;
        self.write_bulk(move |conn| {
            conn.execute(
                &format!("INSERT INTO rollouts ({ROLLOUT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"),
                params![
                    rollout.id,
                    rollout.name,
                    rollout.firmware_id,
                    spec,
                    rollout.state.as_str(),
                    rollout.current_wave as i64,
                    rollout.wave_started_at,
                    rollout.reason,
                    rollout.created_by,
                    rollout.created_at,
                    rollout.started_at,
                    rollout.finished_at
                ],
            )?;
            let sql = format!("INSERT INTO rollout_devices ({ROLLOUT_DEVICE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)");
            let mut stmt = conn.prepare_cached(&sql)?;
            for d in devices {
                stmt.execute(params![
                    d.rollout_id,
                    d.device_id,
                    d.name,
                    d.wave as i64,
                    d.position as i64,
                    d.state.as_str(),
                    d.from_version,
                    d.attempts as i64,
                    d.message,
                    d.started_at,
                    d.finished_at
                ])?;
            }
            Ok(())
        })
        .await
    }

    async fn rollout(&self, id: &str) -> Result<Option<RolloutRecord>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| {
            let sql = format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = ?1");
            conn.prepare_cached(&sql)?
                .query_row([id], raw_rollout)
                .optional()?
                .map(RawRollout::parse)
                .transpose()
        })
        .await
    }

    async fn list_rollouts(&self, user: Option<&str>) -> Result<Vec<RolloutRecord>, StoreError> {
        let user = user.map(str::to_string);
        self.read(move |conn| {
            let raws = match &user {
                None => {
                    let sql = format!(
                        "SELECT {ROLLOUT_COLUMNS} FROM rollouts ORDER BY created_at DESC, id"
                    );
                    let mut stmt = conn.prepare_cached(&sql)?;
                    let rows = stmt.query_map([], raw_rollout)?;
                    rows.collect::<Result<Vec<_>, _>>()?
                }
                Some(user) => {
                    let sql = format!(
                        "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE created_by = ?1 ORDER BY created_at DESC, id"
                    );
                    let mut stmt = conn.prepare_cached(&sql)?;
                    let rows = stmt.query_map([user], raw_rollout)?;
                    rows.collect::<Result<Vec<_>, _>>()?
                }
            };
            let mut list = Vec::with_capacity(raws.len());
            for raw in raws {
                match raw.parse() {
                    Ok(rollout) => list.push(rollout),
                    Err(e) => tracing::error!(error = %e, "skipping unreadable rollout row"),
                }
            }
            Ok(list)
        })
        .await
    }

    async fn rollout_devices(&self, id: &str) -> Result<Vec<RolloutDeviceRecord>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| {
            let sql = format!(
                "SELECT {ROLLOUT_DEVICE_COLUMNS} FROM rollout_devices WHERE rollout_id = ?1 ORDER BY position"
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map([&id], rollout_device_from_row)?;
            let mut devices = Vec::new();
            for row in rows {
                let (mut device, state) = row?;
                device.state = DeviceState::parse(&state).ok_or_else(|| {
                    StoreError::Backend(format!(
                        "rollout {id}: device {} has unknown stored state {state:?}",
                        device.device_id
                    ))
                })?;
                devices.push(device);
            }
            Ok(devices)
        })
        .await
    }

    async fn save_rollout(&self, rollout: RolloutRecord) -> Result<(), StoreError> {
        self.write(move |conn| {
            let n = conn
                .prepare_cached(
                    "UPDATE rollouts SET state = ?2, current_wave = ?3, wave_started_at = ?4,
                     reason = ?5, started_at = ?6, finished_at = ?7 WHERE id = ?1",
                )?
                .execute(params![
                    rollout.id,
                    rollout.state.as_str(),
                    rollout.current_wave as i64,
                    rollout.wave_started_at,
                    rollout.reason,
                    rollout.started_at,
                    rollout.finished_at
                ])?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("rollout {}", rollout.id)));
            }
            Ok(())
        })
        .await
    }

    async fn save_rollout_devices(
        &self,
        devices: Vec<RolloutDeviceRecord>,
    ) -> Result<(), StoreError> {
        self.write_bulk(move |conn| {
            let mut stmt = conn.prepare_cached(
                "UPDATE rollout_devices SET state = ?3, attempts = ?4, message = ?5, started_at = ?6,
                 finished_at = ?7 WHERE rollout_id = ?1 AND device_id = ?2",
            )?;
            for d in devices {
                stmt.execute(params![
                    d.rollout_id,
                    d.device_id,
                    d.state.as_str(),
                    d.attempts as i64,
                    d.message,
                    d.started_at,
                    d.finished_at
                ])?;
            }
            Ok(())
        })
        .await
    }

    fn writes_possible(&self) -> bool {
        self.writer_alive()
    }

    async fn close(&self) -> Result<(), StoreError> {
        let checkpointer = self.checkpointer.lock().take();
        if let Some((stop, thread)) = checkpointer {
            drop(stop);
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut queue = self.writer.queue.lock();
            if queue.closed || queue.closing.is_some() {
                return Ok(());
            }
            queue.closing = Some(tx);
        }
        self.writer.work.notify_one();
        let result = rx.await.map_err(|_| StoreError::Closed)?;
        let thread = self.writer_thread.lock().take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::json;

    fn update(value: Value) -> Update {
        Update::from_value(&value).expect("valid update")
    }

    async fn store_with_devices(dir: &Path, count: usize) -> Arc<SqliteStore> {
        let store = Arc::new(SqliteStore::open(dir, Durability::Process, Duration::ZERO).unwrap());
        for i in 0..count {
            store
                .create_device(NewDevice {
                    id: format!("d{i}"),
                    name: format!("d{i}"),
                    user_id: "email_a".into(),
                    token_hash: format!("hash{i}"),
                    created_at: 1.0,
                })
                .await
                .unwrap();
        }
        store
    }

    /// The thread a write's job ran on.
    async fn job_thread(store: &SqliteStore) -> String {
        store
            .write(|_| Ok(std::thread::current().name().unwrap_or("").to_string()))
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_runs_on_its_task_when_the_connection_is_free_and_queues_when_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_devices(dir.path(), 1).await;
        let caller = tokio::spawn({
            let store = store.clone();
            async move {
                let here = std::thread::current().name().unwrap_or("").to_string();
                (here, job_thread(&store).await)
            }
        });
        let (here, ran_on) = caller.await.unwrap();
        assert_eq!(ran_on, here, "a free connection is used by the task itself");

        // While the connection is held, a write waits in the queue for the writer thread.
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (holding, held) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn({
            let store = store.clone();
            move || {
                let _conn = store.writer.conn.lock();
                holding.send(()).unwrap();
                released.recv().unwrap();
            }
        });
        held.recv().unwrap();
        let queued = tokio::spawn({
            let store = store.clone();
            async move { job_thread(&store).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!queued.is_finished(), "ran while the connection was held");
        release.send(()).unwrap();
        holder.join().unwrap();
        assert_eq!(queued.await.unwrap(), "herd-store-writer");

        store.close().await.unwrap();
        let closed = store.write(|_| Ok(())).await.unwrap_err();
        assert!(matches!(closed, StoreError::Closed), "{closed}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bulk_write_always_goes_to_the_writer_thread() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_devices(dir.path(), 1).await;
        let ran_on = store
            .write_bulk(|_| Ok(std::thread::current().name().unwrap_or("").to_string()))
            .await
            .unwrap();
        assert_eq!(ran_on, "herd-store-writer");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_an_fsync_per_commit_or_a_commit_window_every_write_goes_to_the_writer_thread() {
        for (durability, window) in [
            (Durability::Power, Duration::ZERO),
            (Durability::Process, Duration::from_micros(200)),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let store = SqliteStore::open(dir.path(), durability, window).unwrap();
            assert_eq!(job_thread(&store).await, "herd-store-writer");
            store.close().await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_updates_are_group_committed_and_none_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_devices(dir.path(), 8).await;
        let mut tasks = Vec::new();
        for task in 0..64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for n in 0..25 {
                    let id = format!("d{}", (task + n) % 8);
                    let key = format!("t{task}");
                    store
                        .update_shadow(
                            &id,
                            update(json!({"state": {"reported": {key: n}}})),
                            2.0,
                            Limits::default(),
                        )
                        .await
                        .unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let devices = store.list_devices(None).await.unwrap();
        let versions: u64 = devices.iter().map(|d| d.shadow.version).sum();
        assert_eq!(
            versions,
            64 * 25,
            "every acknowledged update incremented a version"
        );
        store.close().await.unwrap();
        // Reopened from disk, everything is still there.
        let store = SqliteStore::open(dir.path(), Durability::Process, Duration::ZERO).unwrap();
        let versions: u64 = store
            .list_devices(None)
            .await
            .unwrap()
            .iter()
            .map(|d| d.shadow.version)
            .sum();
        assert_eq!(versions, 64 * 25);
    }

    #[tokio::test]
    async fn a_failing_write_does_not_undo_its_batch_neighbours() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_devices(dir.path(), 1).await;
        let good = store.update_shadow(
            "d0",
            update(json!({"state": {"reported": {"a": 1}}})),
            1.0,
            Limits::default(),
        );
        let conflict = store.update_shadow(
            "d0",
            update(json!({"state": {"reported": {"a": 2}}, "version": 42})),
            1.0,
            Limits::default(),
        );
        let missing =
            store.update_shadow("nope", update(json!({"state": {}})), 1.0, Limits::default());
        let good2 = store.update_shadow(
            "d0",
            update(json!({"state": {"reported": {"b": 1}}})),
            1.0,
            Limits::default(),
        );
        let (good, conflict, missing, good2) = tokio::join!(good, conflict, missing, good2);
        assert!(good.is_ok() && good2.is_ok());
        assert!(matches!(conflict, Err(StoreError::Shadow(_))));
        assert!(matches!(missing, Err(StoreError::NotFound(_))));
        let device = store.device("d0").await.unwrap().unwrap();
        assert_eq!(device.shadow.version, 2);
        assert_eq!(
            device.shadow.reported,
            json!({"a": 1, "b": 1}).as_object().unwrap().clone()
        );
    }

    #[tokio::test]
    async fn first_user_is_admin_and_names_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), Durability::Power, Duration::ZERO).unwrap();
        assert!(store.create_user("a", "h", 1.0).await.unwrap().admin);
        assert!(!store.create_user("b", "h", 1.0).await.unwrap().admin);
        assert!(matches!(
            store.create_user("a", "h", 1.0).await,
            Err(StoreError::Exists(_))
        ));
        store.close().await.unwrap();
        assert!(matches!(
            store.create_user("c", "h", 1.0).await,
            Err(StoreError::Closed)
        ));
    }

    #[tokio::test]
    async fn a_corrupt_row_is_a_clear_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_devices(dir.path(), 2).await;
        let conn = Connection::open(dir.path().join("herd.db")).unwrap();
        conn.execute("UPDATE devices SET shadow = '{broken' WHERE id = 'd0'", [])
            .unwrap();
        let err = store.device("d0").await.unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
        // The rest of the fleet stays listable.
        let ids: Vec<String> = store
            .list_devices(None)
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(ids, ["d1"]);
    }

    #[tokio::test]
    async fn a_panicking_job_fails_alone_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_devices(dir.path(), 1).await;
        let before = job_panics();
        let failed = store
            .write(|conn| -> Result<(), StoreError> {
                conn.execute("UPDATE devices SET name = 'half-done' WHERE id = 'd0'", [])?;
                panic!("a bug in a store job")
            })
            .await;
        let message = failed.unwrap_err().to_string();
        assert!(message.contains("could not carry out"), "{message}");
        assert!(store.writer_alive());
        // The panicking job's change is undone; the next writes work as ever.
        let device = store.device("d0").await.unwrap().unwrap();
        assert_eq!(device.name, "d0");
        let change = store
            .update_shadow(
                "d0",
                update(json!({"state": {"reported": {"on": true}}})),
                1.0,
                Limits::default(),
            )
            .await
            .unwrap();
        assert_eq!(change.device.shadow.version, 1);
        // Counted once the writer was done with it, which the write above waited for.
        assert!(job_panics() > before);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("herd.db")).unwrap();
        conn.pragma_update(None, "user_version", 99i64).unwrap();
        drop(conn);
        let err = SqliteStore::open(dir.path(), Durability::Process, Duration::ZERO)
            .err()
            .unwrap();
        assert!(err.to_string().contains("newer"), "{err}");
    }
}
