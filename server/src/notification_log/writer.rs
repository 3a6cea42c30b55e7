//! The writer thread: batches lines, writes each batch with one `write_all`, rotates at line
//! boundaries, and repairs a torn tail when the log is opened.
//!
//! The writer assumes it is the only process appending to the directory's current file; its
//! own byte count decides rotation and where to cut after a failed write.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use time::Date;

use super::{
    date_of_unix, list, rotated_name, utc_date, Clock, Command, LogConfig, Slot, CURRENT_FILE,
};

/// A batch this large is written without waiting for the interval: bigger batches buy
/// little throughput and delay lines for no reason.
const BATCH_BYTES: usize = 256 * 1024;

/// Past this much unwritten data during a disk failure the unwritten lines are given up, so
/// a full disk cannot also exhaust memory.
const MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;

/// How long to wait before trying again when a rename or open for rotation failed.
const ROTATION_RETRY: Duration = Duration::from_secs(10);

/// How far into the file the first line is looked for when guessing its start date.
const FIRST_LINE_LIMIT: u64 = 64 * 1024;

pub(super) struct Writer {
    config: LogConfig,
    clock: Clock,
    /// `dir/notification.log`.
    path: PathBuf,
    file: File,
    /// Bytes in `file` that are known to end at a line boundary.
    file_len: u64,
    /// UTC date the current file was started; it names the file when rotated.
    file_date: Date,
    /// A rotation renamed the file but could not create a new one; lines keep going to the
    /// renamed file (still in order) until a retry succeeds.
    detached: bool,
    rotation_retry_at: Option<Instant>,
    pending: Vec<u8>,
    pending_lines: usize,
    batch_started: Instant,
    last_write: Instant,
    /// Inside a run of failed writes; errors are logged once per run.
    failing: bool,
    /// Written but not yet fsynced (only tracked when fsync is on).
    unsynced: bool,
}

impl Writer {
    pub(super) fn open(config: LogConfig, clock: Clock) -> io::Result<Writer> {
        let path = config.dir.join(CURRENT_FILE);
        repair_tail(&path)?;
        let file = open_append(&path)?;
        let meta = file.metadata()?;
        let today = utc_date(clock());
        let file_date = if meta.len() == 0 {
            today
        } else {
            first_line_date(&path)
                .or_else(|| meta.modified().ok().map(utc_date))
                .unwrap_or(today)
        };
        let now = Instant::now();
        Ok(Writer {
            path,
            file,
            file_len: meta.len(),
            file_date,
            detached: false,
            rotation_retry_at: None,
            pending: Vec::with_capacity(BATCH_BYTES),
            pending_lines: 0,
            batch_started: now,
            // Lets the first line after opening be written at once.
            last_write: now.checked_sub(config.flush_interval).unwrap_or(now),
            failing: false,
            unsynced: false,
            config,
            clock,
        })
    }

    pub(super) fn run(mut self, commands: &Receiver<Command>) {
        let mut shutdown_flushes = Vec::new();
        loop {
            let command = if self.pending.is_empty() {
                match commands.recv() {
                    Ok(command) => command,
                    Err(_) => break,
                }
            } else {
                match commands.try_recv() {
                    Ok(command) => command,
                    Err(TryRecvError::Disconnected) => break,
                    // Idle: write now unless the last write was too recent, then wait for it.
                    Err(TryRecvError::Empty) => {
                        let due = self.last_write + self.config.flush_interval;
                        let now = Instant::now();
                        if now >= due {
                            let _ = self.write_pending();
                            continue;
                        }
                        // Parked rather than waiting on the channel, so appending under
                        // load wakes nobody (a futex wake per line cost more than the line);
                        // flush and shutdown requests unpark the thread.
                        std::thread::park_timeout(due - now);
                        continue;
                    }
                }
            };
            match command {
                Command::Line(line) => self.push(line),
                Command::Flush(reply) => {
                    let _ = reply.send(self.flush());
                }
                #[cfg(test)]
                Command::Crash => panic!("notification log writer crash asked for by a test"),
                Command::Shutdown => {
                    // Whatever raced in before the receiver goes away is still written.
                    while let Ok(command) = commands.try_recv() {
                        match command {
                            Command::Line(line) => self.push(line),
                            Command::Flush(reply) => shutdown_flushes.push(reply),
                            Command::Shutdown => {}
                            #[cfg(test)]
                            Command::Crash => {}
                        }
                    }
                    break;
                }
            }
        }
        let result = self.finish();
        for reply in shutdown_flushes {
            let _ = reply.send(clone_result(&result));
        }
    }

    fn push(&mut self, line: String) {
        if line.is_empty() {
            return;
        }
        let mut line = line.into_bytes();
        // Compact JSON never holds a raw newline; outside strings it is whitespace, so a
        // space keeps the object valid and the file one object per line.
        for byte in line.iter_mut().filter(|b| **b == b'\n') {
            *byte = b' ';
        }
        let now = Instant::now();
        if self.pending.is_empty() {
            self.batch_started = now;
        }
        // While writes fail, a new file would not help and trying per line would hammer
        // the disk; retries come from the interval alone.
        if !self.failing
            && self.needs_rotation(line.len() as u64 + 1, now)
            && self.write_pending().is_ok()
        {
            self.rotate(now);
        }
        self.pending.extend_from_slice(&line);
        self.pending.push(b'\n');
        self.pending_lines += 1;
        let due = if self.failing {
            now >= self.last_write + self.config.flush_interval
        } else {
            self.pending.len() >= BATCH_BYTES
                || now.duration_since(self.batch_started) >= self.config.flush_interval
        };
        if due {
            let _ = self.write_pending();
        }
    }

    /// Whether the current file must be closed before a line of `incoming` bytes is added.
    fn needs_rotation(&mut self, incoming: u64, now: Instant) -> bool {
        if self.rotation_retry_at.is_some_and(|at| now < at) {
            return false;
        }
        if self.detached {
            return true;
        }
        let used = self.file_len + self.pending.len() as u64;
        if used == 0 {
            // An empty file takes the date of its first line rather than being rotated into
            // an empty dated file.
            self.file_date = self.file_date.max(utc_date((self.clock)()));
            return false;
        }
        let too_big = self.config.rotate_bytes > 0 && used + incoming > self.config.rotate_bytes;
        // Only a new batch looks at the clock; a batch never spans more than an interval.
        // A clock that went backwards does not rotate: the names must stay in order.
        let new_day = self.config.rotate_daily
            && self.pending.is_empty()
            && utc_date((self.clock)()) > self.file_date;
        too_big || new_day
    }

    /// Renames the current file to its dated name and starts a new one. Failures are logged
    /// and retried later; lines keep flowing to whichever file is open, still in order.
    fn rotate(&mut self, now: Instant) {
        let today = utc_date((self.clock)());
        if !self.detached {
            // The rotated name promises a complete file; a failure was logged by sync.
            let _ = self.sync();
            let target = match self.rotated_target() {
                Ok(target) => target,
                Err(e) => {
                    tracing::error!(error = %e, dir = %self.config.dir.display(), "cannot list the log directory to rotate notification.log");
                    self.rotation_retry_at = Some(now + ROTATION_RETRY);
                    return;
                }
            };
            // `rename` replaces an existing target; never lose a rotated file that way.
            let taken = std::fs::symlink_metadata(&target).is_ok();
            let renamed = if taken {
                Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "rotated file name already taken",
                ))
            } else {
                std::fs::rename(&self.path, &target)
            };
            if let Err(e) = renamed {
                tracing::error!(error = %e, to = %target.display(), "cannot rotate notification.log");
                self.rotation_retry_at = Some(now + ROTATION_RETRY);
                return;
            }
            self.detached = true;
            tracing::info!(file = %target.display(), bytes = self.file_len, "rotated notification.log");
        }
        match open_append(&self.path).and_then(|file| Ok((file.metadata()?.len(), file))) {
            Ok((len, file)) => {
                self.file = file;
                self.file_len = len;
                self.file_date = today;
                self.detached = false;
                self.rotation_retry_at = None;
                if self.config.fsync {
                    sync_dir(&self.config.dir);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, path = %self.path.display(), "cannot start a new notification.log; appending to the rotated file");
                self.rotation_retry_at = Some(now + ROTATION_RETRY);
            }
        }
    }

    /// The name the current file gets: its start date, numbered past any file of that date,
    /// and never sorting before an existing rotated file even if the clock went backwards.
    fn rotated_target(&self) -> io::Result<PathBuf> {
        let newest = list(&self.config.dir)?
            .into_iter()
            .filter_map(|(slot, _)| match slot {
                Slot::Rotated { date, n } => Some((date, n)),
                Slot::Current => None,
            })
            .max();
        let (date, n) = match newest {
            Some((date, n)) if date >= self.file_date => (date, n.saturating_add(1)),
            _ => (self.file_date, 0),
        };
        Ok(self.config.dir.join(rotated_name(date, n)))
    }

    /// Writes the batch with one `write_all`. On failure the file is cut back to the last
    /// whole line and the batch kept for the next attempt.
    fn write_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        self.last_write = now;
        match self.file.write_all(&self.pending) {
            Ok(()) => {
                self.file_len += self.pending.len() as u64;
                self.pending.clear();
                self.pending_lines = 0;
                if self.pending.capacity() > 4 * BATCH_BYTES {
                    self.pending.shrink_to(BATCH_BYTES);
                }
                if self.config.fsync {
                    self.unsynced = true;
                    self.sync()?;
                }
                if self.failing {
                    self.failing = false;
                    tracing::info!(path = %self.path.display(), "notification.log writable again");
                }
                Ok(())
            }
            Err(e) => {
                self.cut_partial_write();
                if !self.failing {
                    self.failing = true;
                    tracing::error!(error = %e, path = %self.path.display(), lines = self.pending_lines, "cannot write notification.log; retrying");
                }
                if self.pending.len() > MAX_PENDING_BYTES {
                    tracing::error!(
                        lines = self.pending_lines,
                        "giving up unwritten notification lines"
                    );
                    self.pending.clear();
                    self.pending_lines = 0;
                }
                Err(e)
            }
        }
    }

    /// A failed `write_all` may have written part of the batch; keeping it would glue the
    /// retried batch onto half a line.
    fn cut_partial_write(&mut self) {
        let grew = self
            .file
            .metadata()
            .map(|meta| meta.len() > self.file_len)
            .unwrap_or(true);
        if grew {
            if let Err(e) = self.file.set_len(self.file_len) {
                tracing::warn!(error = %e, path = %self.path.display(), "cannot cut a partly written batch");
            }
        }
    }

    /// Fsyncs what was written; a failure is kept so the next flush tries again.
    fn sync(&mut self) -> io::Result<()> {
        if !self.unsynced {
            return Ok(());
        }
        match self.file.sync_data() {
            Ok(()) => {
                self.unsynced = false;
                Ok(())
            }
            Err(e) => {
                if !self.failing {
                    self.failing = true;
                    tracing::error!(error = %e, path = %self.path.display(), "cannot fsync notification.log; retrying");
                }
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_pending()?;
        self.sync()
    }

    fn finish(&mut self) -> io::Result<()> {
        let written = self.write_pending();
        if let Err(e) = &written {
            tracing::error!(error = %e, lines = self.pending_lines, "notification lines lost at shutdown");
        }
        let synced = self.file.sync_all();
        if let Err(e) = &synced {
            tracing::error!(error = %e, "cannot fsync notification.log at shutdown");
        }
        written.and(synced)
    }
}

fn clone_result(result: &io::Result<()>) -> io::Result<()> {
    match result {
        Ok(()) => Ok(()),
        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

#[cfg(unix)]
fn sync_dir(dir: &Path) {
    // Makes the rename and the new file's entry durable along with their data.
    if let Err(e) = File::open(dir).and_then(|dir| dir.sync_all()) {
        tracing::warn!(error = %e, dir = %dir.display(), "cannot fsync the log directory");
    }
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) {}

/// Cuts a last line without its newline, which only a crash in the middle of a write leaves.
/// Returns how many bytes were removed.
pub(super) fn repair_tail(path: &Path) -> io::Result<u64> {
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let keep = end_of_last_line(&mut file, len)?;
    if keep == len {
        return Ok(0);
    }
    file.set_len(keep)?;
    file.sync_all()?;
    let removed = len - keep;
    tracing::warn!(
        path = %path.display(),
        bytes = removed,
        "cut a torn last line from notification.log"
    );
    Ok(removed)
}

/// Offset just past the last newline in the first `len` bytes (0 if there is none).
fn end_of_last_line(file: &mut File, len: u64) -> io::Result<u64> {
    const CHUNK: u64 = 64 * 1024;
    let mut buf = vec![0u8; CHUNK as usize];
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// The UTC date of the first line's `ts`, if the file starts with a readable notification.
fn first_line_date(path: &Path) -> Option<Date> {
    let file = File::open(path).ok()?;
    let mut reader = BufReader::new(file.take(FIRST_LINE_LIMIT));
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&line).ok()?;
    let ts = value.get("ts")?.as_f64()?;
    if !ts.is_finite() {
        return None;
    }
    // `as` saturates; out-of-range seconds are then rejected by the conversion.
    date_of_unix(ts.floor() as i64)
}
