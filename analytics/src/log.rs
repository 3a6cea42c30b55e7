//! A parsed log: the kept events of a rotated set in log order, with the accounting of
//! every line, built either in one parallel pass over files ([`Log::load`]) or
//! incrementally from appended bytes ([`Log::push`]).
//!
//! Loading splits each file into chunks read with plain positioned reads into per-worker
//! buffers (not mapped, so memory stays at a few chunks however large the log), parses the
//! chunks on every core, and merges the per-chunk interners in chunk order, so the result
//! is the same as a sequential read.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use memchr::memchr;

use crate::event::{Batch, Event, Interner, Need, NONE};
use crate::{Error, Progress, Stage};

/// Bytes per parallel work item: large enough that per-chunk merging is noise, small
/// enough that two workers' buffers stay a few tens of MiB.
const CHUNK: u64 = 8 << 20;

/// How the lines of a log were accounted for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Files read.
    pub files: u64,
    /// Bytes read, torn tails included.
    pub bytes: u64,
    /// Complete lines.
    pub lines: u64,
    /// Unterminated last lines of files: a crash or a write in progress. Ignored.
    pub torn_lines: u64,
    /// Complete lines that are not a notification object. Ignored.
    pub invalid_lines: u64,
    /// Notifications whose event name no report knows. Ignored.
    pub unknown_events: u64,
}

/// The events of one log, ready for any report its [`Need`] covers.
#[derive(Debug, Clone, Default)]
pub struct Log {
    pub(crate) need: Need,
    pub(crate) events: Vec<Event>,
    pub(crate) devices: Interner,
    pub(crate) first_seen: Vec<i64>,
    pub(crate) names: Interner,
    pub(crate) versions: Interner,
    pub(crate) min_ts: Option<i64>,
    pub(crate) max_ts: Option<i64>,
    pub(crate) stats: LogStats,
    /// Bytes after the last newline pushed so far (an incomplete line).
    partial: Vec<u8>,
}

impl Log {
    /// An empty log that keeps what `need` asks for; feed it with [`push`](Self::push).
    pub fn new(need: Need) -> Log {
        Log {
            need,
            ..Log::default()
        }
    }

    /// What this log extracted from its lines.
    pub fn need(&self) -> Need {
        self.need
    }

    /// Line accounting so far.
    pub fn stats(&self) -> LogStats {
        self.stats
    }

    /// Number of events kept.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether no event was kept.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Reads `files` in order as one log, on all cores, reporting bytes read.
    pub fn load<P>(files: &[PathBuf], need: Need, progress: &P) -> Result<Log, Error>
    where
        P: Fn(Progress) + Sync,
    {
        let mut chunks = Vec::new();
        let mut total = 0;
        for (file, path) in files.iter().enumerate() {
            let len = std::fs::metadata(path)
                .map_err(|e| Error::io(path, e))?
                .len();
            total += len;
            let mut start = 0;
            loop {
                let end = (start + CHUNK).min(len);
                chunks.push(Chunk {
                    file,
                    start,
                    end,
                    file_len: len,
                });
                if end >= len {
                    break;
                }
                start = end;
            }
        }
        progress(Progress {
            stage: Stage::Reading,
            done: 0,
            total,
        });
        let next = AtomicUsize::new(0);
        let done = AtomicU64::new(0);
        let results: Mutex<Vec<Option<Result<ChunkResult, Error>>>> =
            Mutex::new((0..chunks.len()).map(|_| None).collect());
        let workers = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(chunks.len().max(1));
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| {
                    let mut buffer = Vec::new();
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(chunk) = chunks.get(index) else {
                            break;
                        };
                        let path = &files[chunk.file];
                        let result = read_chunk(path, chunk, need, &mut buffer);
                        let bytes = chunk.end - chunk.start;
                        let so_far = done.fetch_add(bytes, Ordering::Relaxed) + bytes;
                        progress(Progress {
                            stage: Stage::Reading,
                            done: so_far,
                            total,
                        });
                        let failed = result.is_err();
                        if let Ok(mut slots) = results.lock() {
                            slots[index] = Some(result);
                        }
                        if failed {
                            // Let the other workers run dry quickly.
                            next.store(chunks.len(), Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        let results = results
            .into_inner()
            .map_err(|_| Error::Internal("a log reader thread panicked".into()))?;
        let mut log = Log::new(need);
        log.stats.files = files.len() as u64;
        log.stats.bytes = total;
        for result in results {
            let Some(result) = result else {
                return Err(Error::Internal("a log chunk was not read".into()));
            };
            let result = result?;
            log.stats.torn_lines += u64::from(result.torn);
            log.stats.bytes += result.extra_bytes;
            log.merge(result.batch);
        }
        Ok(log)
    }

    /// Appends raw log bytes, such as the new end of a growing file. Complete lines are
    /// parsed at once; an unterminated tail waits for the next call, since the writer may
    /// be in the middle of it.
    pub fn push(&mut self, bytes: &[u8]) {
        self.stats.bytes += bytes.len() as u64;
        let mut batch = Batch::default();
        let mut rest = bytes;
        if !self.partial.is_empty() {
            match memchr(b'\n', rest) {
                Some(end) => {
                    let mut line = std::mem::take(&mut self.partial);
                    line.extend_from_slice(&rest[..end]);
                    batch.line(&line, self.need);
                    rest = &rest[end + 1..];
                }
                None => {
                    self.partial.extend_from_slice(rest);
                    return;
                }
            }
        }
        while let Some(end) = memchr(b'\n', rest) {
            batch.line(&rest[..end], self.need);
            rest = &rest[end + 1..];
        }
        self.partial.extend_from_slice(rest);
        self.merge(batch);
    }

    /// Ends the current file: an unterminated tail left by [`push`](Self::push) is a torn
    /// line, counted and dropped. Call it when a file is known to be complete (rotated
    /// away, or a whole file was pushed).
    pub fn end_file(&mut self) {
        self.stats.files += 1;
        if !self.partial.is_empty() {
            self.partial.clear();
            self.stats.torn_lines += 1;
        }
    }

    /// Bytes of an incomplete last line held back by [`push`](Self::push).
    pub fn pending_bytes(&self) -> usize {
        self.partial.len()
    }

    fn merge(&mut self, batch: Batch) {
        self.stats.lines += batch.lines;
        self.stats.invalid_lines += batch.invalid;
        self.stats.unknown_events += batch.unknown;
        if let Some(t) = batch.min_ts {
            self.min_ts = Some(self.min_ts.map_or(t, |m| m.min(t)));
        }
        if let Some(t) = batch.max_ts {
            self.max_ts = Some(self.max_ts.map_or(t, |m| m.max(t)));
        }
        let devices: Vec<u32> = batch
            .devices
            .values()
            .map(|id| self.devices.intern(id))
            .collect();
        for (local, &global) in devices.iter().enumerate() {
            let first = batch.first_seen.get(local).copied().unwrap_or(i64::MAX);
            match self.first_seen.get_mut(global as usize) {
                Some(seen) => *seen = (*seen).min(first),
                None => self.first_seen.push(first),
            }
        }
        let names: Vec<u32> = batch.names.values().map(|n| self.names.intern(n)).collect();
        let versions: Vec<u32> = batch
            .versions
            .values()
            .map(|v| self.versions.intern(v))
            .collect();
        let remap = |table: &[u32], id: u32| {
            if id == NONE {
                NONE
            } else {
                table.get(id as usize).copied().unwrap_or(NONE)
            }
        };
        self.events.reserve(batch.events.len());
        for mut event in batch.events {
            event.device = remap(&devices, event.device);
            event.name = remap(&names, event.name);
            event.fw = remap(&versions, event.fw);
            self.events.push(event);
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Chunk {
    file: usize,
    start: u64,
    end: u64,
    file_len: u64,
}

struct ChunkResult {
    batch: Batch,
    torn: bool,
    /// Bytes read past the listed end of a file that grew while being read.
    extra_bytes: u64,
}

/// Parses the lines that start inside `chunk`; the last one may run past its end.
fn read_chunk(
    path: &Path,
    chunk: &Chunk,
    need: Need,
    buffer: &mut Vec<u8>,
) -> Result<ChunkResult, Error> {
    let io = |e| Error::io(path, e);
    let mut file = File::open(path).map_err(io)?;
    // One byte before the chunk tells whether a line starts exactly at its start.
    let read_from = chunk.start.saturating_sub(1);
    file.seek(SeekFrom::Start(read_from)).map_err(io)?;
    buffer.clear();
    (&mut file)
        .take(chunk.end - read_from)
        .read_to_end(buffer)
        .map_err(io)?;
    let mut batch = Batch::default();
    let mut at = if chunk.start == 0 {
        0
    } else {
        match memchr(b'\n', buffer) {
            Some(newline) => newline + 1,
            // The whole chunk is inside a line that started earlier.
            None => buffer.len(),
        }
    };
    while let Some(end) = memchr(b'\n', &buffer[at..]) {
        batch.line(&buffer[at..at + end], need);
        at += end + 1;
    }
    let mut torn = false;
    let mut extra_bytes = 0;
    if at < buffer.len() {
        // A line starts here and goes on past the chunk: read on to its newline.
        let mut line = buffer[at..].to_vec();
        let mut position = chunk.end;
        let mut piece = vec![0u8; 64 << 10];
        loop {
            let n = file.read(&mut piece).map_err(io)?;
            if n == 0 {
                torn = true;
                break;
            }
            let got = &piece[..n];
            let newline = memchr(b'\n', got);
            let take = newline.map_or(n, |i| i);
            let past_listed_end =
                (position + take as u64).saturating_sub(chunk.file_len.max(position));
            extra_bytes += past_listed_end;
            line.extend_from_slice(&got[..take]);
            position += n as u64;
            if newline.is_some() {
                batch.line(&line, need);
                break;
            }
        }
    }
    Ok(ChunkResult {
        batch,
        torn,
        extra_bytes,
    })
}
