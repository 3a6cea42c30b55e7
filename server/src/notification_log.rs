//! The append-only notification log of PROTOCOL §7: `notification.log` in the data directory,
//! one compact JSON object per line, rotated by size or UTC day to
//! `notification.log.<YYYY-MM-DD>[.<n>]`, and read back as one log by `POST /logs` and the
//! analytics.
//!
//! [`NotificationLog`] is a cheap handle over one dedicated writer thread. [`append`] only
//! hands the line to that thread, so the event path never waits for the disk; the thread
//! gathers lines into batches and writes each batch with a single `write_all`, which is why a
//! crash can only ever tear the last line. [`NotificationLog::open`] cuts such a torn tail
//! away, and [`read_page`] never returns one. Readers address notifications by their index
//! across the whole rotated set ([`log_files`] gives the order), and a per-file line index
//! keeps deep offsets cheap.
//!
//! One writer per directory: two servers sharing a data directory would interleave batches
//! and rotate each other's files.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use herd_server::notification_log::{read_page, LogConfig, NotificationLog};
//!
//! let log = NotificationLog::open(LogConfig::new("/tmp/herd-data"))?;
//! log.append(r#"{"ts":1700000000.5,"id":"d1","name":"online","data":null}"#.to_string());
//! log.flush().await?;
//! let page = read_page(log.dir(), 0, 100)?;
//! assert_eq!(page.items.len(), page.next as usize);
//! log.shutdown();
//! # Ok(()) }
//! ```
//!
//! [`append`]: NotificationLog::append

mod reader;
mod writer;

#[cfg(test)]
mod tests;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::{Date, OffsetDateTime};

pub use reader::{is_notification, read_page, LogPage};

/// Name of the file being appended to; rotated files add `.<date>[.<n>]`.
pub const CURRENT_FILE: &str = "notification.log";

/// Where and how the log is written.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Directory that holds `notification.log` and its rotated files; created if missing.
    pub dir: PathBuf,
    /// Rotate before the current file would grow past this many bytes; 0 disables size
    /// rotation. A single line longer than this still goes whole into its own file.
    pub rotate_bytes: u64,
    /// Rotate when the UTC date differs from the date the current file was started.
    pub rotate_daily: bool,
    /// Longest time a line waits in the writer's buffer under load, and the least time
    /// between two writes; an idle writer writes a new line at once.
    pub flush_interval: Duration,
    /// `fdatasync` after every batch. Off, a power cut may lose the last interval's lines
    /// (a process crash loses nothing that reached the writer's `write`).
    pub fsync: bool,
}

impl LogConfig {
    /// Defaults: 64 MiB files, daily rotation, 50 ms batches, no fsync per batch.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            rotate_bytes: 64 * 1024 * 1024,
            rotate_daily: true,
            flush_interval: Duration::from_millis(50),
            fsync: false,
        }
    }
}

/// Source of wall-clock time for the writer's day rotation; tests pass their own.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// What the handle sends to the writer thread. One channel for lines and control keeps
/// control requests ordered after every line appended before them.
enum Command {
    Line(String),
    Flush(tokio::sync::oneshot::Sender<io::Result<()>>),
    Shutdown,
    /// Makes the writer panic, to test its supervision.
    #[cfg(test)]
    Crash,
}

/// Handle to the log. Clones share one writer thread; the thread also ends (after writing
/// what it holds) when the last handle is dropped, but only [`shutdown`](Self::shutdown)
/// waits for it and fsyncs.
#[derive(Clone)]
pub struct NotificationLog {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    sender: mpsc::Sender<Command>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The writer thread, to unpark it for requests that must not wait for its batch.
    writer: std::thread::Thread,
    closed: AtomicBool,
    /// Times the writer failed and was started again.
    restarts: Arc<std::sync::atomic::AtomicU64>,
    /// Lines appended after shutdown are lost; say so once rather than per line.
    warned_closed: AtomicBool,
}

impl NotificationLog {
    /// Creates the directory, repairs a torn last line of `notification.log` left by a crash,
    /// and starts the writer thread, which continues the existing file.
    pub fn open(config: LogConfig) -> io::Result<NotificationLog> {
        Self::open_with_clock(config, Arc::new(SystemTime::now))
    }

    /// [`open`](Self::open) with the wall clock supplied, so day rotation can be tested.
    pub fn open_with_clock(config: LogConfig, clock: Clock) -> io::Result<NotificationLog> {
        std::fs::create_dir_all(&config.dir)?;
        let dir = config.dir.clone();
        let writer = writer::Writer::open(config.clone(), clock.clone())?;
        let (sender, receiver) = mpsc::channel();
        let restarts = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = restarts.clone();
        let thread = std::thread::Builder::new()
            .name("notification-log".to_string())
            .spawn(move || supervise(writer, receiver, config, clock, counted))?;
        Ok(NotificationLog {
            inner: Arc::new(Inner {
                dir,
                sender,
                writer: thread.thread().clone(),
                thread: Mutex::new(Some(thread)),
                closed: AtomicBool::new(false),
                restarts,
                warned_closed: AtomicBool::new(false),
            }),
        })
    }

    /// Queues one notification line: a compact JSON object without a trailing newline.
    /// Never waits for the disk; lines land in the file in the order of `append` calls.
    /// The hand-off is unbounded, so a disk slower than the event rate costs memory rather
    /// than stalling devices; the writer drains tens of MB/s.
    /// A raw newline inside `line` (which compact JSON never has) is written as a space so
    /// the one-object-per-line framing holds.
    pub fn append(&self, line: String) {
        if self.inner.sender.send(Command::Line(line)).is_err()
            && !self.inner.warned_closed.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                dir = %self.inner.dir.display(),
                "notification log is shut down; dropping appended lines"
            );
        }
    }

    /// Resolves once every line appended before this call has been handed to the OS (and
    /// fsynced when [`LogConfig::fsync`] is set). After [`shutdown`](Self::shutdown) there is
    /// nothing left to write and it returns at once.
    pub async fn flush(&self) -> io::Result<()> {
        let (reply, done) = tokio::sync::oneshot::channel();
        if self.inner.sender.send(Command::Flush(reply)).is_err() {
            return self.stopped();
        }
        self.inner.writer.unpark();
        match done.await {
            Ok(result) => result,
            // The writer ended between taking the request and answering it.
            Err(_) => self.stopped(),
        }
    }

    fn stopped(&self) -> io::Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the notification log writer has stopped",
            ))
        }
    }

    /// Writes everything appended so far, fsyncs, stops the writer thread and waits for it.
    /// Blocking; meant for graceful shutdown. Later calls return at once.
    pub fn shutdown(&self) {
        self.inner.closed.store(true, Ordering::Release);
        let thread = match self.inner.thread.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        let Some(thread) = thread else { return };
        // A send error means the thread is already gone; joining still reaps it.
        let _ = self.inner.sender.send(Command::Shutdown);
        self.inner.writer.unpark();
        if thread.join().is_err() {
            tracing::error!(dir = %self.inner.dir.display(), "notification log writer panicked");
        }
    }

    /// How many times the writer failed and was started again since the log was opened.
    pub fn restarts(&self) -> u64 {
        self.inner.restarts.load(Ordering::Relaxed)
    }

    /// Makes the writer thread panic (tests of its supervision).
    #[cfg(test)]
    fn crash_writer(&self) {
        let _ = self.inner.sender.send(Command::Crash);
        self.inner.writer.unpark();
    }

    /// The directory holding the log files.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }
}

/// Where a log file sits in the rotated set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Slot {
    Rotated { date: Date, n: u64 },
    Current,
}

/// Parses `notification.log`, `notification.log.<YYYY-MM-DD>` and
/// `notification.log.<YYYY-MM-DD>.<n>`; anything else is not part of the log.
fn parse_name(name: &str) -> Option<Slot> {
    if name == CURRENT_FILE {
        return Some(Slot::Current);
    }
    let rest = name.strip_prefix(CURRENT_FILE)?.strip_prefix('.')?;
    let (date, n) = match rest.split_once('.') {
        Some((date, n)) => {
            // Digits only: `u64::from_str` would also take a leading '+'.
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (date, n.parse().ok()?)
        }
        None => (rest, 0),
    };
    // The strict width keeps the name sort and the date sort the same.
    if date.len() != 10 {
        return None;
    }
    let date = Date::parse(date, DATE_FORMAT).ok()?;
    Some(Slot::Rotated { date, n })
}

const DATE_FORMAT: &[time::format_description::FormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]");

fn rotated_name(date: Date, n: u64) -> String {
    let date = date
        .format(DATE_FORMAT)
        .unwrap_or_else(|_| date.to_string());
    if n == 0 {
        format!("{CURRENT_FILE}.{date}")
    } else {
        format!("{CURRENT_FILE}.{date}.{n}")
    }
}

/// The files of the log in order, oldest first: rotated files by date then number (no
/// number before `.1`), then `notification.log` if it exists. A missing directory is an
/// empty log.
pub fn log_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    Ok(list(dir)?
        .into_iter()
        .map(|(_, name)| dir.join(name))
        .collect())
}

/// [`log_files`] with each file's place in the set, sorted the same way.
fn list(dir: &Path) -> io::Result<Vec<(Slot, std::ffi::OsString)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(slot) = name.to_str().and_then(parse_name) else {
            continue;
        };
        // Follows symlinks on purpose: an operator may link archived files back in.
        match std::fs::metadata(entry.path()) {
            Ok(meta) if meta.is_file() => files.push((slot, name)),
            Ok(_) => {}
            // Rotated or deleted since the listing; the reader's consistency check retries.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    // `.0` and no suffix share a slot; the name breaks the tie with the bare name first.
    files.sort();
    Ok(files)
}

/// The UTC calendar date of a wall-clock time; times before 1970 count as 1970-01-01.
fn utc_date(at: SystemTime) -> Date {
    let seconds = at
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    date_of_unix(seconds).unwrap_or(OffsetDateTime::UNIX_EPOCH.date())
}

fn date_of_unix(seconds: i64) -> Option<Date> {
    OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .map(OffsetDateTime::date)
}

/// Runs the writer; if it panics, the lines of the batch it held are lost, the file is
/// opened again (its torn tail repaired) and later lines are written as before, instead of
/// every later line going nowhere.
fn supervise(
    writer: writer::Writer,
    commands: mpsc::Receiver<Command>,
    config: LogConfig,
    clock: Clock,
    restarts: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut writer = writer;
    loop {
        let running = writer;
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| running.run(&commands)));
        if outcome.is_ok() {
            return;
        }
        restarts.fetch_add(1, Ordering::Relaxed);
        tracing::error!(dir = %config.dir.display(), "the notification log writer failed; opening the log again");
        writer = loop {
            match writer::Writer::open(config.clone(), clock.clone()) {
                Ok(writer) => break writer,
                Err(e) => {
                    tracing::error!(error = %e, "cannot open the notification log again; retrying");
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
            }
        };
    }
}
