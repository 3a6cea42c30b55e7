//! Reading the rotated set as one log, by line offset.
//!
//! A line is the bytes up to and including a `\n`. An unterminated tail is not a line yet (it
//! is either still being written or a crash remnant that the next open cuts), so it is neither
//! returned nor counted, and offsets stay the same before and after the repair.
//!
//! A read works on a snapshot that is always a prefix of the log, even while the writer
//! rotates (see [`snapshot`]), so offsets mean the same in every call.
//!
//! Each file gets an index of its line count and the byte offset of every [`STRIDE`]th line,
//! kept in a process-wide cache. The index is extended, not rebuilt, as the current file
//! grows, and it follows the file through rotation: an entry is matched by the file's first
//! bytes (the first line's `ts` makes them unique in practice), so a reader only scans new
//! bytes, and a deep offset costs one small read per file plus at most [`STRIDE`] skipped
//! lines. This relies on files only ever growing at the end or being renamed, which is how
//! the writer treats them.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use serde_json::Value;

use super::{list, Slot};

/// One line in this many has its byte offset remembered.
const STRIDE: u64 = 1024;

/// How many leading bytes identify a file's content.
const FINGERPRINT_BYTES: usize = 64;

/// Retries when a rotated file disappeared (deleted by an operator) while a page was read.
const ATTEMPTS: usize = 5;

/// Directories are few (one per server); the bound only matters to long-lived processes
/// that open many, such as test runs.
const MAX_CACHED_DIRS: usize = 64;

/// A page of the log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogPage {
    /// Parsed notifications, in log order.
    pub items: Vec<Value>,
    /// Offset to ask for next: just past the last line read (skipped lines included), or
    /// `start` when there was nothing at or after it.
    pub next: u64,
}

/// Up to `limit` notifications starting at line `start` (0-based, across all files in
/// [`log_files`](super::log_files) order). Lines that are not a JSON object are skipped but
/// still take their offset.
///
/// Blocking file IO: call it from `spawn_blocking` in async code.
pub fn read_page(dir: &Path, start: u64, limit: usize) -> io::Result<LogPage> {
    if limit == 0 {
        return Ok(LogPage {
            items: Vec::new(),
            next: start,
        });
    }
    for _ in 0..ATTEMPTS {
        let Some(sources) = snapshot(dir)? else {
            continue;
        };
        let Some(indexes) = index_files(dir, &sources)? else {
            continue;
        };
        if let Some(page) = read_sources(&sources, &indexes, start, limit)? {
            return Ok(page);
        }
    }
    Err(io::Error::other(
        "files of the notification log kept disappearing while being read",
    ))
}

/// One file of a snapshot of the log.
struct Source {
    path: PathBuf,
    /// The current file is read through the descriptor taken before listing: its name can
    /// move to a rotated one at any moment, while its content stays where it is.
    held: Option<File>,
    len: u64,
    fingerprint: Vec<u8>,
}

impl Source {
    /// A descriptor positioned anywhere; `None` if a rotated file was deleted meanwhile.
    fn open(&self) -> io::Result<Option<File>> {
        match &self.held {
            Some(file) => file.try_clone().map(Some),
            None => match File::open(&self.path) {
                Ok(file) => Ok(Some(file)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            },
        }
    }
}

/// The files of the log as one consistent prefix, without retrying on rotation.
///
/// `notification.log` is opened before the directory is listed, so every rotation that
/// happened before the open shows in the listing. If the open file has been rotated since,
/// its new name is in the listing too and it is read under that name; anything newer than
/// the listing is simply not part of this snapshot. `None` when a rotated file vanished
/// (deleted by an operator) between the listing and its probe.
fn snapshot(dir: &Path) -> io::Result<Option<Vec<Source>>> {
    let current_path = dir.join(super::CURRENT_FILE);
    let mut current = match File::open(&current_path) {
        Ok(file) => Some(file),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let current_probe = match current.as_mut() {
        Some(file) => Some((file.metadata()?, fingerprint(file)?)),
        None => None,
    };
    let mut sources = Vec::new();
    let mut current_was_rotated = false;
    for (slot, name) in list(dir)? {
        if slot == Slot::Current {
            continue;
        }
        let path = dir.join(name);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        let fingerprint = fingerprint(&mut file)?;
        if let Some((current_meta, current_fingerprint)) = &current_probe {
            current_was_rotated |=
                same_file(&meta, &fingerprint, current_meta, current_fingerprint);
        }
        sources.push(Source {
            path,
            held: None,
            len: meta.len(),
            fingerprint,
        });
    }
    if let (Some(file), Some((meta, fingerprint)), false) =
        (current, current_probe, current_was_rotated)
    {
        sources.push(Source {
            path: current_path,
            held: Some(file),
            len: meta.len(),
            fingerprint,
        });
    }
    Ok(Some(sources))
}

#[cfg(unix)]
fn same_file(a: &Metadata, _: &[u8], b: &Metadata, _: &[u8]) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

/// Without inode numbers, the first line (with its microsecond `ts`) identifies the file.
#[cfg(not(unix))]
fn same_file(_: &Metadata, a: &[u8], _: &Metadata, b: &[u8]) -> bool {
    !a.is_empty() && a == b
}

fn fingerprint(file: &mut File) -> io::Result<Vec<u8>> {
    let mut fingerprint = Vec::with_capacity(FINGERPRINT_BYTES);
    file.seek(SeekFrom::Start(0))?;
    file.take(FINGERPRINT_BYTES as u64)
        .read_to_end(&mut fingerprint)?;
    Ok(fingerprint)
}

#[derive(Clone)]
struct FileIndex {
    fingerprint: Vec<u8>,
    /// Bytes covered: always just past a newline (or 0).
    scanned: u64,
    lines: u64,
    /// `checkpoints[k]` is the byte offset where line `k * STRIDE` starts.
    checkpoints: Vec<u64>,
}

impl FileIndex {
    fn new() -> Self {
        Self {
            fingerprint: Vec::new(),
            scanned: 0,
            lines: 0,
            checkpoints: vec![0],
        }
    }

    /// Whether this index describes a prefix of a file with these first bytes and length.
    fn fits(&self, fingerprint: &[u8], len: u64) -> bool {
        fingerprint.starts_with(&self.fingerprint) && len >= self.scanned
    }

    /// Counts the lines between `scanned` and `to`.
    fn extend(&mut self, file: &mut File, to: u64) -> io::Result<()> {
        if to <= self.scanned {
            return Ok(());
        }
        file.seek(SeekFrom::Start(self.scanned))?;
        let mut reader = file.take(to - self.scanned);
        let mut buf = vec![0u8; 256 * 1024];
        let mut pos = self.scanned;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            for (i, _) in buf[..n].iter().enumerate().filter(|(_, &b)| b == b'\n') {
                let end = pos + i as u64 + 1;
                self.lines += 1;
                self.scanned = end;
                // The next remembered line is the first one of the next stride.
                if self.lines == self.checkpoints.len() as u64 * STRIDE {
                    self.checkpoints.push(end);
                }
            }
            pos += n as u64;
        }
        Ok(())
    }

    /// The nearest remembered line at or before `line`: its number and byte offset.
    fn seek_point(&self, line: u64) -> (u64, u64) {
        let k = usize::try_from(line / STRIDE)
            .unwrap_or(usize::MAX)
            .min(self.checkpoints.len() - 1);
        (k as u64 * STRIDE, self.checkpoints[k])
    }
}

type DirIndex = HashMap<PathBuf, Arc<FileIndex>>;

static CACHE: LazyLock<Mutex<HashMap<PathBuf, DirIndex>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn cached(dir: &Path) -> DirIndex {
    let cache = CACHE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    cache.get(dir).cloned().unwrap_or_default()
}

fn store(dir: &Path, index: DirIndex) {
    let mut cache = CACHE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if cache.len() >= MAX_CACHED_DIRS && !cache.contains_key(dir) {
        cache.clear();
    }
    cache.insert(dir.to_path_buf(), index);
}

/// Reads the page from a snapshot; `None` when a rotated file vanished meanwhile.
fn read_sources(
    sources: &[Source],
    indexes: &[Arc<FileIndex>],
    start: u64,
    limit: usize,
) -> io::Result<Option<LogPage>> {
    let mut items = Vec::new();
    let mut next = start;
    let Some(last) = indexes.len().checked_sub(1) else {
        return Ok(Some(LogPage { items, next }));
    };

    // The file holding `start`; past the indexed end, the newest file, which may have grown.
    let mut before = 0u64;
    let mut first = last;
    for (i, index) in indexes.iter().enumerate() {
        if start < before + index.lines {
            first = i;
            break;
        }
        if i < last {
            before += index.lines;
        }
    }

    let mut line = Vec::new();
    for (i, (source, index)) in sources.iter().zip(indexes).enumerate().skip(first) {
        let local = if i == first { start - before } else { 0 };
        let Some(file) = source.open()? else {
            return Ok(None);
        };
        let (mut number, offset) = index.seek_point(local);
        let mut reader = BufReader::with_capacity(64 * 1024, file);
        reader.seek(SeekFrom::Start(offset))?;
        loop {
            line.clear();
            reader.read_until(b'\n', &mut line)?;
            let Some(body) = line.strip_suffix(b"\n") else {
                // End of file, or a tail that is not a whole line (yet).
                break;
            };
            number += 1;
            if number <= local {
                continue;
            }
            match serde_json::from_slice::<Value>(body) {
                Ok(value) if is_notification(&value) => items.push(value),
                _ => tracing::debug!(offset = next, "skipping an unreadable notification line"),
            }
            next += 1;
            if items.len() == limit {
                return Ok(Some(LogPage { items, next }));
            }
        }
    }
    Ok(Some(LogPage { items, next }))
}

/// Brings an index for every file up to date, reusing cached ones where they still describe
/// the file, and stores the result as the directory's cache. `None` when a rotated file
/// vanished or changed under its name meanwhile.
fn index_files(dir: &Path, sources: &[Source]) -> io::Result<Option<Vec<Arc<FileIndex>>>> {
    let old = cached(dir);
    let current: HashMap<&Path, &Source> = sources.iter().map(|s| (s.path.as_path(), s)).collect();
    let mut fresh = DirIndex::with_capacity(sources.len());
    let mut indexes = Vec::with_capacity(sources.len());
    for source in sources {
        let fits = |index: &FileIndex| index.fits(&source.fingerprint, source.len);
        let own = old.get(&source.path).filter(|index| fits(index));
        // A rotated file arrives under a new name; take over the index its content had
        // under its old name, if that name now holds something else.
        let moved = || {
            old.iter()
                .filter(|(_, index)| !index.fingerprint.is_empty() && fits(index))
                .find(|(path, index)| {
                    current
                        .get(path.as_path())
                        .is_none_or(|owner| !index.fits(&owner.fingerprint, owner.len))
                })
                .map(|(_, index)| index)
        };
        let index = match own.or_else(moved) {
            Some(index)
                if index.scanned == source.len && index.fingerprint == source.fingerprint =>
            {
                Arc::clone(index)
            }
            base => {
                let mut index = base.map_or_else(FileIndex::new, |index| FileIndex::clone(index));
                let Some(mut file) = source.open()? else {
                    return Ok(None);
                };
                // A rotated name may have been given to other content since the first look.
                let again = fingerprint(&mut file)?;
                if !again.starts_with(&source.fingerprint) {
                    return Ok(None);
                }
                let len = file.metadata()?.len();
                if !index.fits(&again, len) {
                    return Ok(None);
                }
                index.extend(&mut file, len)?;
                index.fingerprint = again;
                Arc::new(index)
            }
        };
        fresh.insert(source.path.clone(), Arc::clone(&index));
        indexes.push(index);
    }
    store(dir, fresh);
    Ok(Some(indexes))
}

/// PROTOCOL §7: a line counts only as one whole JSON object with a numeric `ts`, a string
/// `id` and a string `name`; anything else is skipped (but keeps its place in the offsets).
pub fn is_notification(value: &Value) -> bool {
    value.get("ts").is_some_and(Value::is_number)
        && value.get("id").is_some_and(Value::is_string)
        && value.get("name").is_some_and(Value::is_string)
}
