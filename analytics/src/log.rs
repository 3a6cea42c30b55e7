//! A parsed log: the kept events of a rotated set in log order, with the accounting of
//! every line, built either in one parallel pass over files ([`Log::load`]) or
//! incrementally from appended bytes ([`Log::push`]).
//!
//! Loading splits each file into chunks, parses the chunks on every core, and merges the
//! per-chunk interners in chunk order, so the result is the same as a sequential read. A
//! chunk is mapped while it is parsed and unmapped after, so lines are read straight from
//! the page cache without copying and memory stays at a few chunks however large the log;
//! the end of a file the server may still write is read with positioned reads instead
//! (see [`LIVE_TAIL`]), as is anything that cannot be mapped.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use memchr::memchr;
use memmap2::{Mmap, MmapOptions};

use crate::event::{Batch, Event, Interner, Need, Tables, Update, NONE};
use crate::{cache, Error, Progress, Stage};

/// Bytes per parallel work item: large enough that per-chunk merging is noise, small
/// enough that the pages two workers hold mapped or buffered stay a few tens of MiB.
const CHUNK: u64 = 8 << 20;

/// Bytes mapped past a chunk's end, where its last line usually ends; a longer line is
/// finished with reads.
const SLACK: u64 = 256 << 10;

/// The end of the file the server may still write is read, not mapped. After a failed write
/// the server cuts the file back to its last complete batch, and unwritten data is given up
/// past 64 MiB, so no cut reaches further back than this from the end seen when listing.
/// A page of a mapping that a cut leaves wholly past the end of the file would kill the
/// process on access; read bytes are merely stale.
const LIVE_TAIL: u64 = 80 << 20;

/// The current file of a rotated set, the one the server appends to.
const CURRENT_FILE: &str = "notification.log";

/// How [`Log::load`] cuts files into work items and reads them; tests shrink the sizes to
/// reach every boundary with small files.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub chunk: u64,
    pub slack: u64,
    /// Bytes at the end of a file that may still be written which are read, not mapped.
    /// Such files are the last one listed and any named `notification.log`.
    pub live_tail: u64,
    /// Whether to map at all.
    pub map: bool,
    /// Worker threads; default: one per core.
    pub workers: Option<usize>,
}

impl Default for Plan {
    fn default() -> Plan {
        Plan {
            chunk: CHUNK,
            slack: SLACK,
            live_tail: LIVE_TAIL,
            map: true,
            workers: None,
        }
    }
}

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
    /// The last name of each device the log showed, in `texts`; [`NONE`] when none.
    pub(crate) labels: Vec<u32>,
    pub(crate) names: Interner,
    pub(crate) versions: Interner,
    /// Firmware ids, rollout ids and the other texts of `updates`.
    pub(crate) texts: Interner,
    /// What the engine's events said, in log order (kept with the firmware need).
    pub(crate) updates: Vec<Update>,
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

    /// The name device `id` last had in the log (`created` and `updated` carry it), if
    /// the log showed one.
    pub fn device_name(&self, id: &str) -> Option<String> {
        let device = self.devices.find(id.as_bytes())?;
        self.label(device)
    }

    /// The device `query` names: an id, a name or the start of one ([`crate::names`]);
    /// `None` when the log has no such device, an error when several fit.
    pub fn find_device(&self, query: &str) -> Result<Option<u32>, Error> {
        if let Some(device) = self.devices.find(query.as_bytes()) {
            return Ok(Some(device));
        }
        let pairs: Vec<(String, String)> = self.device_names().collect();
        let found = crate::names::resolve(
            query,
            pairs.iter().map(|(id, name)| (id.as_str(), name.as_str())),
        );
        match found {
            crate::names::Resolution::Found(id) => Ok(self.devices.find(id.as_bytes())),
            crate::names::Resolution::NotFound => Ok(None),
            crate::names::Resolution::Ambiguous(candidates) => Err(Error::Request(format!(
                "{query:?} names more than one device: {}",
                crate::names::describe_candidates(&candidates)
            ))),
        }
    }

    pub(crate) fn label(&self, device: u32) -> Option<String> {
        let label = *self.labels.get(device as usize)?;
        (label != NONE).then(|| self.texts.text(label))
    }

    /// The name of device `device`, or an empty text.
    pub(crate) fn label_or_empty(&self, device: u32) -> String {
        self.label(device).unwrap_or_default()
    }

    /// Every device of the log with its last name (empty when none), in first-seen order.
    pub fn device_names(&self) -> impl Iterator<Item = (String, String)> + '_ {
        (0..self.devices.len() as u32)
            .map(|device| (self.devices.text(device), self.label_or_empty(device)))
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
        Log::load_with(files, need, progress, Plan::default(), None)
    }

    /// Like [`load`](Self::load), keeping the parsed lines of rotated files in `cache` (a
    /// directory, created when missing) and reusing them while those files stay as they
    /// were: a report over a rotated set seen before parses only the new files and the
    /// current one. The cache only ever costs a parse: an entry that is missing, stale or
    /// damaged is rebuilt, and failing to write one is not an error.
    pub fn load_cached<P>(
        files: &[PathBuf],
        need: Need,
        cache: &Path,
        progress: &P,
    ) -> Result<Log, Error>
    where
        P: Fn(Progress) + Sync,
    {
        Log::load_with(files, need, progress, Plan::default(), Some(cache))
    }

    pub(crate) fn load_with<P>(
        files: &[PathBuf],
        need: Need,
        progress: &P,
        plan: Plan,
        cache: Option<&Path>,
    ) -> Result<Log, Error>
    where
        P: Fn(Progress) + Sync,
    {
        // Final files the cache may serve: their identity before parsing, where their entry
        // goes, and the entry when there is a sound one.
        let mut cacheable: Vec<Option<(cache::Source, PathBuf)>> = vec![None; files.len()];
        let mut cached: Vec<Option<cache::Entry>> = (0..files.len()).map(|_| None).collect();
        if let Some(dir) = cache {
            for (index, path) in files.iter().enumerate() {
                if is_live(files, index) {
                    continue;
                }
                let Some(source) = cache::Source::of(path) else {
                    continue;
                };
                let entry = cache::entry_path(dir, path, need);
                cached[index] = cache::load(&entry, &source, need);
                cacheable[index] = Some((source, entry));
            }
            cache::prune(dir, cache::UNUSED_FOR);
        }
        let skip: Vec<bool> = cached.iter().map(Option::is_some).collect();
        let (chunks, total, skipped) = plan_chunks(files, plan, &skip)?;
        progress(Progress {
            stage: Stage::Reading,
            done: skipped,
            total,
        });
        let next = AtomicUsize::new(0);
        let done = AtomicU64::new(skipped);
        let slots = Slots::new(chunks.len());
        let workers = plan
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
            .clamp(1, chunks.len().max(1));
        // Results are merged in log order as they arrive, so at most a few chunks' batches
        // (with their interners) are held at once however long the log: workers stay within
        // `AHEAD` chunks of the merge.
        let ahead = workers * AHEAD_PER_WORKER;
        let merged = std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| {
                    let _guard = AbandonOnPanic(&slots);
                    let mut buffer = Vec::new();
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(chunk) = chunks.get(index) else {
                            break;
                        };
                        if !slots.wait_for_room(index, ahead) {
                            break;
                        }
                        let path = &files[chunk.file];
                        let result = read_chunk(path, chunk, need, plan.slack, &mut buffer);
                        let bytes = chunk.end - chunk.start;
                        let so_far = done.fetch_add(bytes, Ordering::Relaxed) + bytes;
                        progress(Progress {
                            stage: Stage::Reading,
                            done: so_far,
                            total,
                        });
                        let failed = result.is_err();
                        slots.put(index, result);
                        if failed {
                            // Let the other workers run dry quickly.
                            next.store(chunks.len(), Ordering::Relaxed);
                        }
                    }
                });
            }
            let merged =
                merge_in_order(files, &chunks, &slots, &mut cached, &cacheable, need, total);
            if merged.is_err() {
                next.store(chunks.len(), Ordering::Relaxed);
                slots.abandon();
            }
            merged
        });
        let log = merged?;
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
        batch.append_to(Tables {
            events: &mut self.events,
            devices: &mut self.devices,
            first_seen: &mut self.first_seen,
            labels: &mut self.labels,
            names: &mut self.names,
            versions: &mut self.versions,
            texts: &mut self.texts,
            updates: &mut self.updates,
            min_ts: &mut self.min_ts,
            max_ts: &mut self.max_ts,
        });
    }
}

/// Chunks a worker may read ahead of the merge, per worker.
const AHEAD_PER_WORKER: usize = 4;

/// Chunk results waiting to be merged, by chunk index.
struct Slots {
    state: Mutex<SlotState>,
    changed: Condvar,
}

struct SlotState {
    results: Vec<Option<Result<ChunkResult, Error>>>,
    /// Chunks merged so far.
    merged: usize,
    /// The merge gave up: workers stop.
    abandoned: bool,
}

impl Slots {
    fn new(count: usize) -> Slots {
        Slots {
            state: Mutex::new(SlotState {
                results: (0..count).map(|_| None).collect(),
                merged: 0,
                abandoned: false,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        // A worker that panicked holding the lock left nothing half-done in it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until chunk `index` is at most `ahead` chunks past the merge; `false` when the
    /// merge was abandoned.
    fn wait_for_room(&self, index: usize, ahead: usize) -> bool {
        let mut state = self.lock();
        while !state.abandoned && index >= state.merged + ahead {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        !state.abandoned
    }

    fn put(&self, index: usize, result: Result<ChunkResult, Error>) {
        let mut state = self.lock();
        if let Some(slot) = state.results.get_mut(index) {
            *slot = Some(result);
        }
        self.changed.notify_all();
    }

    /// Waits for the result of chunk `index`, the next to merge.
    fn take(&self, index: usize) -> Result<ChunkResult, Error> {
        let mut state = self.lock();
        loop {
            if let Some(result) = state.results.get_mut(index).and_then(Option::take) {
                state.merged = index + 1;
                self.changed.notify_all();
                return result;
            }
            if state.abandoned || index >= state.results.len() {
                return Err(Error::Internal("a log chunk was not read".into()));
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn abandon(&self) {
        self.lock().abandoned = true;
        self.changed.notify_all();
    }
}

/// Abandons the merge when a worker panics, so the merge does not wait for its chunk.
struct AbandonOnPanic<'a>(&'a Slots);

impl Drop for AbandonOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.abandon();
        }
    }
}

/// Merges cache entries and chunk results into one log, in log order, as the chunks are
/// read; files worth caching are stored once read whole.
fn merge_in_order(
    files: &[PathBuf],
    chunks: &[Chunk],
    slots: &Slots,
    cached: &mut [Option<cache::Entry>],
    cacheable: &[Option<(cache::Source, PathBuf)>],
    need: Need,
    total: u64,
) -> Result<Log, Error> {
    let mut log = Log::new(need);
    log.stats.files = files.len() as u64;
    log.stats.bytes = total;
    let mut next_chunk = 0;
    for (index, path) in files.iter().enumerate() {
        if let Some(entry) = cached[index].take() {
            log.stats.torn_lines += entry.torn;
            log.merge(entry.batch);
            continue;
        }
        // A file to cache is gathered into one batch first; others merge chunk by chunk.
        let mut whole = cacheable[index].as_ref().map(|_| cache::Entry {
            batch: Batch::default(),
            torn: 0,
        });
        let mut grew = false;
        while chunks.get(next_chunk).is_some_and(|c| c.file == index) {
            let result = slots.take(next_chunk)?;
            next_chunk += 1;
            log.stats.bytes += result.extra_bytes;
            grew |= result.extra_bytes > 0;
            match &mut whole {
                Some(entry) => {
                    entry.torn += u64::from(result.torn);
                    entry.batch.absorb(result.batch);
                }
                None => {
                    log.stats.torn_lines += u64::from(result.torn);
                    log.merge(result.batch);
                }
            }
        }
        if let (Some(entry), Some((source, entry_path))) = (whole, &cacheable[index]) {
            // Only what was read from the very file the identity names is stored.
            if !grew && cache::Source::of(path).as_ref() == Some(source) {
                cache::store(entry_path, source, need, &entry);
            }
            log.stats.torn_lines += entry.torn;
            log.merge(entry.batch);
        }
    }
    Ok(log)
}

/// Whether the server may still write `files[index]`: the current file, or the last file
/// listed (the newest, which the server appends to while it cannot start a new current
/// file).
fn is_live(files: &[PathBuf], index: usize) -> bool {
    index + 1 == files.len()
        || files[index]
            .file_name()
            .is_some_and(|name| name == CURRENT_FILE)
}

/// Cuts `files` into work items in log order, leaving out those `skip` marks. Also returns
/// the total length of the files and that of the skipped ones.
fn plan_chunks(
    files: &[PathBuf],
    plan: Plan,
    skip: &[bool],
) -> Result<(Vec<Chunk>, u64, u64), Error> {
    let chunk_bytes = plan.chunk.max(1);
    let mut chunks = Vec::new();
    let mut total = 0;
    let mut skipped = 0;
    for (file, path) in files.iter().enumerate() {
        let len = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
        total += len;
        if skip.get(file).copied().unwrap_or(false) {
            skipped += len;
            continue;
        }
        let live = is_live(files, file);
        let map_limit = if !plan.map {
            0
        } else if live {
            len.saturating_sub(plan.live_tail)
        } else {
            len
        };
        let mut start = 0;
        loop {
            // Mapped and read chunks meet at the mapping limit, so that no chunk is half
            // of each.
            let boundary = if start < map_limit { map_limit } else { len };
            let end = (start + chunk_bytes).min(boundary);
            chunks.push(Chunk {
                file,
                start,
                end,
                file_len: len,
                map_limit: (end <= map_limit && end > start).then_some(map_limit),
            });
            if end >= len {
                break;
            }
            start = end;
        }
    }
    Ok((chunks, total, skipped))
}

#[derive(Debug, Clone, Copy)]
struct Chunk {
    file: usize,
    start: u64,
    end: u64,
    file_len: u64,
    /// Mapped up to this offset when the chunk lies below it; read otherwise.
    map_limit: Option<u64>,
}

struct ChunkResult {
    batch: Batch,
    torn: bool,
    /// Bytes read past the listed end of a file that grew while being read.
    extra_bytes: u64,
}

/// Maps `[from, to)` of `file`, or `None` when it cannot be mapped (then it is read).
fn map(file: &File, from: u64, to: u64) -> Option<Mmap> {
    if to <= from {
        return None;
    }
    // A page wholly past the end of the file faults on access, so the file must still hold
    // every mapped byte now; see [`LIVE_TAIL`] for why it keeps holding them.
    if file.metadata().ok()?.len() < to {
        return None;
    }
    let len = usize::try_from(to - from).ok()?;
    // SAFETY: the mapping is only read, and only while this function's caller holds it.
    // Another process may change the file meanwhile: the server only appends past `to`
    // and renames files, which leaves mapped bytes as they are; shortening the file below
    // `to` is the one change that would fault, and `load` keeps the bytes the server may
    // cut (the live tail) out of every mapping.
    unsafe { MmapOptions::new().offset(from).len(len).map(file) }.ok()
}

/// Parses the lines that start inside `chunk`; the last one may run past its end.
fn read_chunk(
    path: &Path,
    chunk: &Chunk,
    need: Need,
    slack: u64,
    buffer: &mut Vec<u8>,
) -> Result<ChunkResult, Error> {
    let io = |e| Error::io(path, e);
    let mut file = File::open(path).map_err(io)?;
    // One byte before the chunk tells whether a line starts exactly at its start.
    let read_from = chunk.start.saturating_sub(1);
    let mapping = chunk
        .map_limit
        .and_then(|limit| map(&file, read_from, limit.min(chunk.end.saturating_add(slack))));
    let window: &[u8] = match &mapping {
        Some(mapping) => mapping,
        None => {
            file.seek(SeekFrom::Start(read_from)).map_err(io)?;
            buffer.clear();
            (&mut file)
                .take(chunk.end - read_from)
                .read_to_end(buffer)
                .map_err(io)?;
            buffer
        }
    };
    // Bytes of the window at or past this index belong to the next chunk's lines.
    let body = usize::try_from(chunk.end - read_from)
        .unwrap_or(usize::MAX)
        .min(window.len());
    let mut batch = Batch::default();
    let mut at = if chunk.start == 0 {
        0
    } else {
        // The whole chunk may be inside a line that started earlier.
        memchr(b'\n', window).map_or(window.len(), |newline| newline + 1)
    };
    let mut torn = false;
    let mut extra_bytes = 0;
    while at < body {
        if let Some(len) = memchr(b'\n', &window[at..]) {
            batch.line(&window[at..at + len], need);
            at += len + 1;
            continue;
        }
        // A line starts here and goes on past the window: read on to its newline.
        let mut line = window[at..].to_vec();
        let mut position = read_from + window.len() as u64;
        file.seek(SeekFrom::Start(position)).map_err(io)?;
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
        break;
    }
    Ok(ChunkResult {
        batch,
        torn,
        extra_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A log read line by line, the reference every chunked read must match.
    fn sequential(bytes: &[u8], need: Need) -> Log {
        let mut log = Log::new(need);
        log.push(bytes);
        log.end_file();
        log
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write");
        path
    }

    fn assert_same(loaded: &Log, expected: &Log, context: &str) {
        assert_eq!(loaded.stats, expected.stats, "{context}");
        assert_eq!(loaded.events, expected.events, "{context}");
        let values = |i: &Interner| i.values().map(<[u8]>::to_vec).collect::<Vec<_>>();
        assert_eq!(
            values(&loaded.devices),
            values(&expected.devices),
            "{context}"
        );
        assert_eq!(values(&loaded.names), values(&expected.names), "{context}");
        assert_eq!(
            values(&loaded.versions),
            values(&expected.versions),
            "{context}"
        );
        assert_eq!(values(&loaded.texts), values(&expected.texts), "{context}");
        assert_eq!(loaded.updates, expected.updates, "{context}");
        assert_eq!(loaded.first_seen, expected.first_seen, "{context}");
        let labels = |log: &Log| {
            (0..log.devices.len() as u32)
                .map(|d| log.label(d))
                .collect::<Vec<_>>()
        };
        assert_eq!(labels(loaded), labels(expected), "{context}");
        assert_eq!(
            (loaded.min_ts, loaded.max_ts),
            (expected.min_ts, expected.max_ts)
        );
    }

    fn line(ts: u32, device: u32, name: &str, data: &str) -> String {
        format!(r#"{{"ts":{ts}.5,"id":"device-{device}","name":"{name}","data":{data}}}"#)
    }

    /// Every mapping and reading plan worth telling apart on a file of `len` bytes.
    fn plans(len: u64) -> Vec<Plan> {
        let mut plans = Vec::new();
        for chunk in [1, 2, 3, 7, 64, len.max(1)] {
            for slack in [0, 1, 5, 1 << 20] {
                for (map, live_tail) in [(false, 0), (true, 0), (true, 33), (true, len)] {
                    plans.push(Plan {
                        chunk,
                        slack,
                        live_tail,
                        map,
                        workers: Some(2),
                    });
                }
            }
        }
        plans
    }

    #[test]
    fn lines_straddling_chunk_ends_are_read_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let text = [
            line(1, 1, "online", "null"),
            line(
                2,
                2,
                "updated",
                r#"{"shadow":{"state":{"reported":{"on":true}}}}"#,
            ),
            String::new(),
            "not json".to_string(),
            line(
                3,
                1,
                "rpc.out.Dash.Shadow.Update",
                r#"{"state":{"reported":{"on":false}}}"#,
            ),
            line(4, 3, "whatever", "null"),
            line(5, 2, "offline", "null"),
        ]
        .join("\n")
            + "\n";
        let path = write(dir.path(), "a.log", text.as_bytes());
        let expected = sequential(text.as_bytes(), Need::ALL);
        assert_eq!(expected.stats.lines, 7);
        for plan in plans(text.len() as u64) {
            let loaded =
                Log::load_with(std::slice::from_ref(&path), Need::ALL, &|_| {}, plan, None)
                    .expect("load");
            assert_same(&loaded, &expected, &format!("{plan:?}"));
        }
    }

    #[test]
    fn a_torn_last_line_is_counted_and_dropped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let text = format!(
            "{}\n{}",
            line(1, 1, "online", "null"),
            &line(2, 1, "offline", "null")[..20]
        );
        let path = write(dir.path(), "a.log", text.as_bytes());
        let expected = sequential(text.as_bytes(), Need::default());
        assert_eq!((expected.stats.lines, expected.stats.torn_lines), (1, 1));
        for plan in plans(text.len() as u64) {
            let loaded = Log::load_with(
                std::slice::from_ref(&path),
                Need::default(),
                &|_| {},
                plan,
                None,
            )
            .expect("load");
            assert_same(&loaded, &expected, &format!("{plan:?}"));
        }
    }

    #[test]
    fn empty_files_are_empty_logs() {
        let dir = tempfile::tempdir().expect("temp dir");
        let empty = write(dir.path(), "empty.log", b"");
        let one = write(
            dir.path(),
            "one.log",
            line(1, 1, "online", "null").as_bytes(),
        );
        let files = [empty.clone(), one, empty];
        for plan in plans(1) {
            let loaded = Log::load_with(&files, Need::ALL, &|_| {}, plan, None).expect("load");
            assert_eq!(loaded.stats.files, 3);
            assert_eq!(
                (loaded.stats.lines, loaded.stats.torn_lines),
                (0, 1),
                "{plan:?}"
            );
            assert!(loaded.is_empty());
        }
        let none = Log::load(&[], Need::ALL, &|_| {}).expect("load");
        assert_eq!(none.stats, LogStats::default());
    }

    #[test]
    fn only_the_live_tail_is_kept_out_of_mappings() {
        let plan = Plan {
            chunk: 10,
            live_tail: 25,
            ..Plan::default()
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let bytes = vec![b'\n'; 100];
        let rotated = write(dir.path(), "notification.log.2024-01-01", &bytes);
        let current = write(dir.path(), "notification.log", &bytes);
        let last = write(dir.path(), "other.log", &bytes);
        let mapped = |files: &[PathBuf]| {
            let (chunks, _, _) = plan_chunks(files, plan, &[]).expect("plan");
            chunks
                .iter()
                .map(|c| (c.file, c.start, c.end, c.map_limit))
                .filter(|c| c.3.is_none())
                .map(|c| (c.0, c.1, c.2))
                .collect::<Vec<_>>()
        };
        // The current file and the last listed file keep their ends out of mappings;
        // rotated files before them are mapped whole.
        assert_eq!(
            mapped(&[rotated.clone(), current.clone(), last]),
            [
                (1, 75, 85),
                (1, 85, 95),
                (1, 95, 100),
                (2, 75, 85),
                (2, 85, 95),
                (2, 95, 100)
            ]
        );
        assert_eq!(
            mapped(&[rotated, current]),
            [(1, 75, 85), (1, 85, 95), (1, 95, 100)]
        );
    }

    fn arbitrary_line() -> impl Strategy<Value = String> {
        let name = prop::sample::select(vec![
            "online",
            "offline",
            "deleted",
            "updated",
            "rpc.out.Log",
            "rpc.out.Dash.Shadow.Update",
            "ota.failed",
            "ota.failure",
            "rollout.wave",
            "unknown",
        ]);
        let data = prop::sample::select(vec![
            "null",
            r#"{"shadow":{"state":{"reported":{"on":true,"ota":{"status":3,"fw_version":"2.0"}}}},"info":{"fw_version":"1.0"}}"#,
            r#"{"state":{"reported":{"on":false}}}"#,
            r#"{"padding":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
            r#"{"firmware":"ab","stage":"write","message":"no","rollout":"r","wave":1,"devices":4,"total":4,"state":"running"}"#,
        ]);
        prop_oneof![
            8 => (0u32..1000, 0u32..20, name, data)
                .prop_map(|(ts, device, name, data)| line(ts, device, name, data)),
            1 => "[ -~]{0,40}",
        ]
    }

    proptest! {
        #[test]
        fn chunked_parallel_reads_equal_a_sequential_read(
            files in prop::collection::vec(
                (prop::collection::vec(arbitrary_line(), 0..40), any::<bool>()),
                1..4,
            ),
            chunk in 1u64..400,
            slack in 0u64..300,
            live_tail in 0u64..600,
            map in any::<bool>(),
            workers in 1usize..4,
            need in prop::sample::select(vec![Need::default(), Need { shadow: true, ..Need::default() }, Need::ALL]),
        ) {
            let dir = tempfile::tempdir().expect("temp dir");
            let mut paths = Vec::new();
            let mut expected = Log::new(need);
            for (index, (lines, torn)) in files.iter().enumerate() {
                let mut text = lines.join("\n");
                if !torn && !text.is_empty() {
                    text.push('\n');
                }
                paths.push(write(dir.path(), &format!("{index}.log"), text.as_bytes()));
                expected.push(text.as_bytes());
                expected.end_file();
            }
            let plan = Plan { chunk, slack, live_tail, map, workers: Some(workers) };
            let loaded = Log::load_with(&paths, need, &|_| {}, plan, None).expect("load");
            assert_same(&loaded, &expected, &format!("{plan:?}"));
        }
    }
}
