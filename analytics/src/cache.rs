//! A cache of parsed rotated files, so that a report over a rotated set it has seen before
//! only parses the files that are new (PROTOCOL §7: rotated files are final).
//!
//! One cache file holds the parsed [`Batch`] of one log file for one [`Need`]. Its header
//! names the source by path, length, modification time, inode and a hash of its first
//! bytes, and the file ends with a CRC-32 of everything before it; a cache file that does
//! not match its source in every one of these, or that is short, malformed or fails its
//! check, is ignored and rebuilt, never trusted. Cache files are written to a temporary name and renamed
//! into place, so readers see either the old or the new file whole.

use std::fs::File;
use std::hash::Hasher;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustc_hash::FxHasher;

use protocol::firmware::Counters;

use crate::event::{Batch, Event, Interner, Kind, Need, OtaSignal, Step, Update, NONE};

const MAGIC: &[u8; 8] = b"HERDLOGC";
/// Bumped whenever the layout or the meaning of a parsed field changes. 2: the engine's
/// events of PROTOCOL §10.6 only, rollout events without a device, and [`Update`]s. 3: the
/// devices' names. 4: the whole-line rule of PROTOCOL §7 (a torn line that ended in `}` was
/// once kept) and `server.started` events, which version 3 counted as unknown.
const VERSION: u32 = 4;
/// Bytes of the source hashed into its identity.
const HEAD_BYTES: usize = 4096;

/// What identifies a source file's content: a rotated file keeps all of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Source {
    len: u64,
    modified_ns: i128,
    inode: u64,
    head: u64,
}

impl Source {
    /// The identity of `path` now; `None` when it cannot be read.
    pub fn of(path: &Path) -> Option<Source> {
        let mut file = File::open(path).ok()?;
        let meta = file.metadata().ok()?;
        let modified_ns = meta
            .modified()
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        let mut head = vec![0u8; HEAD_BYTES];
        let mut filled = 0;
        while filled < head.len() {
            match file.read(&mut head[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(_) => return None,
            }
        }
        Some(Source {
            len: meta.len(),
            modified_ns,
            inode: inode(&meta),
            head: hash(&head[..filled]),
        })
    }
}

#[cfg(unix)]
fn inode(meta: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(meta)
}

#[cfg(not(unix))]
fn inode(_meta: &std::fs::Metadata) -> u64 {
    0
}

fn hash(bytes: &[u8]) -> u64 {
    let mut hasher = FxHasher::default();
    hasher.write(bytes);
    hasher.write_usize(bytes.len());
    hasher.finish()
}

/// A file's parsed lines as the cache keeps them.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub batch: Batch,
    pub torn: u64,
}

/// Where the cache keeps the entry of `path` read for `need`.
pub(crate) fn entry_path(dir: &Path, path: &Path, need: Need) -> PathBuf {
    let absolute = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let key = hash(absolute.as_os_str().as_encoded_bytes());
    dir.join(format!("{key:016x}-{}.parsed", need_bits(need)))
}

fn need_bits(need: Need) -> u32 {
    u32::from(need.names) | u32::from(need.shadow) << 1 | u32::from(need.firmware) << 2
}

/// The cached entry for `source` read with `need`, if there is a sound one. A hit marks
/// the entry as used now, for [`prune`].
pub(crate) fn load(entry: &Path, source: &Source, need: Need) -> Option<Entry> {
    let bytes = std::fs::read(entry).ok()?;
    let decoded = decode(&bytes, source, need)?;
    if let Ok(file) = File::options().write(true).open(entry) {
        let _ = file.set_modified(std::time::SystemTime::now());
    }
    Some(decoded)
}

/// Entries unused for this long are removed: their rotated file was most likely deleted
/// or archived, and a report that still wants one only pays a parse.
pub const UNUSED_FOR: Duration = Duration::from_secs(30 * 86_400);

/// Temporary files older than this were left by a report that died while storing.
const ABANDONED_AFTER: Duration = Duration::from_secs(3600);

/// Removes the cache's entries unused for `unused_for` and abandoned temporary files; other
/// files in the directory are not the cache's and stay. Returns how many were removed.
pub(crate) fn prune(dir: &Path, unused_for: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let now = std::time::SystemTime::now();
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let limit = if name.ends_with(".parsed") {
            unused_for
        } else if name.starts_with('.') && name.ends_with(".tmp") {
            ABANDONED_AFTER
        } else {
            continue;
        };
        let age = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| now.duration_since(modified).ok());
        if age.is_some_and(|age| age > limit) && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Stores `entry` for `source`; failures only cost the next report a parse.
pub(crate) fn store(path: &Path, source: &Source, need: Need, entry: &Entry) {
    let result = (|| -> std::io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let bytes = encode(source, need, entry);
        // Unique per process and call, so concurrent reports never share a temp file.
        static STORES: AtomicU64 = AtomicU64::new(0);
        let temp = dir.join(format!(
            ".{}.{}.{}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
            std::process::id(),
            STORES.fetch_add(1, Ordering::Relaxed)
        ));
        // No fsync: after a crash an entry may be empty or garbage, and its check rejects
        // it; a cache is not worth a disk flush per file.
        let written = File::create(&temp).and_then(|mut file| file.write_all(&bytes));
        match written.and_then(|()| std::fs::rename(&temp, path)) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                Err(e)
            }
        }
    })();
    // A report does not fail for want of a cache; the next one parses again.
    drop(result);
}

fn encode(source: &Source, need: Need, entry: &Entry) -> Vec<u8> {
    let batch = &entry.batch;
    let mut payload = Writer::default();
    for n in [batch.lines, batch.unknown, batch.invalid, entry.torn] {
        payload.u64(n);
    }
    for t in [batch.min_ts, batch.max_ts] {
        payload.u8(u8::from(t.is_some()));
        payload.i64(t.unwrap_or(0));
    }
    for interner in [&batch.devices, &batch.names, &batch.versions, &batch.texts] {
        payload.u64(interner.len() as u64);
        for value in interner.values() {
            payload.u64(value.len() as u64);
            payload.0.extend_from_slice(value);
        }
    }
    payload.u64(batch.first_seen.len() as u64);
    for &t in &batch.first_seen {
        payload.i64(t);
    }
    for device in 0..batch.first_seen.len() {
        payload.u32(batch.labels.get(device).copied().unwrap_or(NONE));
    }
    payload.u64(batch.events.len() as u64);
    for event in &batch.events {
        let (kind, signal) = kind_code(event.kind);
        payload.i64(event.ts);
        payload.u32(event.device);
        payload.u32(event.name);
        payload.u32(event.fw);
        payload.0.extend_from_slice(&[
            kind,
            signal,
            event.on as u8,
            event.ota_status as u8,
            u8::from(event.reverted),
        ]);
    }
    payload.u64(batch.updates.len() as u64);
    for update in &batch.updates {
        payload.i64(update.ts);
        payload.u8(update.step as u8);
        for id in [
            update.device,
            update.rollout,
            update.firmware,
            update.version,
            update.stage,
            update.text,
            update.state,
            update.wave,
            update.devices,
        ] {
            payload.u32(id);
        }
        payload.u8(u8::from(update.seconds_us.is_some()));
        payload.i64(update.seconds_us.unwrap_or(0));
        for n in counters(&update.counters) {
            payload.u64(n);
        }
    }
    let mut out = Writer::default();
    out.0.extend_from_slice(MAGIC);
    out.u32(VERSION);
    out.u32(need_bits(need));
    out.u64(source.len);
    out.0.extend_from_slice(&source.modified_ns.to_le_bytes());
    out.u64(source.inode);
    out.u64(source.head);
    out.u64(payload.0.len() as u64);
    out.0.extend_from_slice(&payload.0);
    let check = crc32fast::hash(&out.0);
    out.u32(check);
    out.0
}

fn decode(bytes: &[u8], source: &Source, need: Need) -> Option<Entry> {
    let (bytes, check) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    if crc32fast::hash(bytes).to_le_bytes() != check {
        return None;
    }
    let mut header = Reader(bytes);
    if header.take(MAGIC.len())? != MAGIC
        || header.u32()? != VERSION
        || header.u32()? != need_bits(need)
        || header.u64()? != source.len
        || i128::from_le_bytes(header.take(16)?.try_into().ok()?) != source.modified_ns
        || header.u64()? != source.inode
        || header.u64()? != source.head
    {
        return None;
    }
    let len = header.u64()?;
    let payload = header.0;
    if payload.len() as u64 != len {
        return None;
    }
    let mut r = Reader(payload);
    let mut batch = Batch {
        lines: r.u64()?,
        unknown: r.u64()?,
        invalid: r.u64()?,
        ..Batch::default()
    };
    let torn = r.u64()?;
    let mut times = [None; 2];
    for t in &mut times {
        let present = r.u8()?;
        let value = r.i64()?;
        *t = match present {
            0 => None,
            1 => Some(value),
            _ => return None,
        };
    }
    [batch.min_ts, batch.max_ts] = times;
    for interner in [
        &mut batch.devices,
        &mut batch.names,
        &mut batch.versions,
        &mut batch.texts,
    ] {
        let count = r.u64()?;
        for _ in 0..count {
            let len = usize::try_from(r.u64()?).ok()?;
            let value = r.take(len)?;
            // A repeated value would shift every later id.
            if interner.intern(value) as usize + 1 != interner.len() {
                return None;
            }
        }
    }
    let seen = r.u64()?;
    if seen != batch.devices.len() as u64 {
        return None;
    }
    for _ in 0..seen {
        batch.first_seen.push(r.i64()?);
    }
    for _ in 0..seen {
        let label = r.u32()?;
        if label != NONE && label as usize >= batch.texts.len() {
            return None;
        }
        batch.labels.push(label);
    }
    let count = usize::try_from(r.u64()?).ok()?;
    // Each event takes 25 bytes: a count the payload cannot hold is a lie.
    if count > r.0.len() / 25 {
        return None;
    }
    let known = |id: u32, interner: &Interner| id == NONE || (id as usize) < interner.len();
    batch.events.reserve_exact(count);
    for _ in 0..count {
        let ts = r.i64()?;
        let device = r.u32()?;
        let name = r.u32()?;
        let fw = r.u32()?;
        let [kind, signal, on, ota_status, reverted] = r.take(5)?.try_into().ok()?;
        let kind = kind_from(kind, signal)?;
        // Only a rollout's events have no device (and never one).
        let device_ok = if matches!(kind, Kind::Rollout | Kind::ServerStarted) {
            device == NONE
        } else {
            (device as usize) < batch.devices.len()
        };
        if !device_ok || !known(name, &batch.names) || !known(fw, &batch.versions) {
            return None;
        }
        batch.events.push(Event {
            ts,
            device,
            name,
            fw,
            kind,
            on: on as i8,
            ota_status: ota_status as i8,
            reverted: match reverted {
                0 => false,
                1 => true,
                _ => return None,
            },
        });
    }
    let count = usize::try_from(r.u64()?).ok()?;
    if count > r.0.len() / UPDATE_BYTES {
        return None;
    }
    batch.updates.reserve_exact(count);
    for _ in 0..count {
        let ts = r.i64()?;
        let step = *Step::ALL.get(usize::from(r.u8()?))?;
        let mut ids = [0u32; 9];
        for id in &mut ids {
            *id = r.u32()?;
        }
        let [device, rollout, firmware, version, stage, text, state, wave, devices] = ids;
        let seconds_us = match (r.u8()?, r.i64()?) {
            (0, 0) => None,
            (1, us) => Some(us),
            _ => return None,
        };
        let mut values = [0u64; 10];
        for n in &mut values {
            *n = r.u64()?;
        }
        let device_ok = if step.is_rollout() {
            device == NONE
        } else {
            (device as usize) < batch.devices.len()
        };
        if !device_ok
            || !known(version, &batch.versions)
            || ![rollout, firmware, stage, text, state]
                .iter()
                .all(|&id| known(id, &batch.texts))
        {
            return None;
        }
        let [total, pending, sending, rebooting, verifying, succeeded, failed, reverted, skipped, timed_out] =
            values;
        batch.updates.push(Update {
            ts,
            step,
            device,
            rollout,
            firmware,
            version,
            seconds_us,
            stage,
            text,
            state,
            wave,
            devices,
            counters: Counters {
                total,
                pending,
                sending,
                rebooting,
                verifying,
                succeeded,
                failed,
                reverted,
                skipped,
                timed_out,
            },
        });
    }
    if !r.0.is_empty() {
        return None;
    }
    Some(Entry { batch, torn })
}

/// Bytes of one encoded [`Update`].
const UPDATE_BYTES: usize = 8 + 1 + 9 * 4 + 1 + 8 + 10 * 8;

/// The counters in the order they are stored.
fn counters(c: &Counters) -> [u64; 10] {
    [
        c.total,
        c.pending,
        c.sending,
        c.rebooting,
        c.verifying,
        c.succeeded,
        c.failed,
        c.reverted,
        c.skipped,
        c.timed_out,
    ]
}

fn kind_code(kind: Kind) -> (u8, u8) {
    match kind {
        Kind::Online => (0, 0),
        Kind::Offline => (1, 0),
        Kind::Created => (2, 0),
        Kind::Updated => (3, 0),
        Kind::Deleted => (4, 0),
        Kind::RpcOut => (5, 0),
        Kind::RpcIn => (6, 0),
        Kind::Rollout => (7, 0),
        Kind::ServerStarted => (9, 0),
        Kind::Ota(signal) => (
            8,
            match signal {
                OtaSignal::Start => 0,
                OtaSignal::Success => 1,
                OtaSignal::Failure => 2,
                OtaSignal::Revert => 3,
                OtaSignal::Other => 4,
            },
        ),
    }
}

fn kind_from(kind: u8, signal: u8) -> Option<Kind> {
    let plain = |k| (signal == 0).then_some(k);
    match kind {
        0 => plain(Kind::Online),
        1 => plain(Kind::Offline),
        2 => plain(Kind::Created),
        3 => plain(Kind::Updated),
        4 => plain(Kind::Deleted),
        5 => plain(Kind::RpcOut),
        6 => plain(Kind::RpcIn),
        7 => plain(Kind::Rollout),
        8 => Some(Kind::Ota(match signal {
            0 => OtaSignal::Start,
            1 => OtaSignal::Success,
            2 => OtaSignal::Failure,
            3 => OtaSignal::Revert,
            4 => OtaSignal::Other,
            _ => return None,
        })),
        9 => plain(Kind::ServerStarted),
        _ => None,
    }
}

#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Log;

    #[test]
    fn pruning_removes_old_entries_and_abandoned_temp_files_only() {
        let dir = tempfile::tempdir().expect("temp dir");
        let old = std::time::SystemTime::now() - Duration::from_secs(40 * 86_400);
        let write = |name: &str, aged: bool| {
            let path = dir.path().join(name);
            std::fs::write(&path, b"x").expect("write");
            if aged {
                let file = File::options().write(true).open(&path).expect("open");
                file.set_modified(old).expect("age");
            }
            path
        };
        let stale = write("00000000000000aa-7.parsed", true);
        let fresh = write("00000000000000bb-7.parsed", false);
        let abandoned = write(".00000000000000cc-7.parsed.1.0.tmp", true);
        let in_flight = write(".00000000000000dd-7.parsed.2.0.tmp", false);
        let foreign = write("notes.txt", true);
        assert_eq!(prune(dir.path(), UNUSED_FOR), 2);
        assert!(!stale.exists() && !abandoned.exists());
        assert!(fresh.exists() && in_flight.exists() && foreign.exists());
        assert_eq!(prune(&dir.path().join("missing"), UNUSED_FOR), 0);
    }

    #[test]
    fn a_hit_marks_the_entry_as_used() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log_path = dir.path().join("notification.log.2023-11-14");
        std::fs::write(
            &log_path,
            b"{\"ts\":1,\"id\":\"a\",\"name\":\"online\",\"data\":null}\n",
        )
        .expect("write");
        let source = Source::of(&log_path).expect("source");
        let entry_path = entry_path(dir.path(), &log_path, Need::ALL);
        store(&entry_path, &source, Need::ALL, &sample());
        let old = std::time::SystemTime::now() - Duration::from_secs(40 * 86_400);
        File::options()
            .write(true)
            .open(&entry_path)
            .and_then(|f| f.set_modified(old))
            .expect("age");
        assert!(load(&entry_path, &source, Need::ALL).is_some());
        assert_eq!(prune(dir.path(), UNUSED_FOR), 0, "just used");
        assert!(entry_path.exists());
    }

    fn sample() -> Entry {
        let mut batch = Batch::default();
        for line in [
            r#"{"ts":1,"id":"a","name":"online","data":null}"#,
            r#"{"ts":2,"id":"b","name":"updated","data":{"id":"b","name":"porch","info":{"fw_version":"1.0"},"shadow":{"state":{"reported":{"on":true,"ota":{"status":2,"message":"reverted"}}}}}}"#,
            r#"{"ts":3,"id":"a","name":"ota.failure","data":{"firmware":"ab","stage":"end","message":"refused","rollout":"r"}}"#,
            r#"{"ts":3.5,"id":"r","name":"rollout.wave","data":{"total":2,"sending":1,"state":"running","firmware":"ab","wave":1,"devices":1}}"#,
            r#"{"ts":3.75,"id":"a","name":"ota.success","data":{"firmware":"ab","version":"2.0","seconds":12.5}}"#,
            r#"{"ts":4,"id":"b","name":"nonsense","data":null}"#,
            "not json",
        ] {
            batch.line(line.as_bytes(), Need::ALL);
        }
        Entry { batch, torn: 1 }
    }

    fn source() -> Source {
        Source {
            len: 1234,
            modified_ns: 1_700_000_000_123_456_789,
            inode: 42,
            head: 7,
        }
    }

    fn same(a: &Entry, b: &Entry) {
        let values = |i: &Interner| i.values().map(<[u8]>::to_vec).collect::<Vec<_>>();
        assert_eq!(a.torn, b.torn);
        assert_eq!(a.batch.events, b.batch.events);
        assert_eq!(values(&a.batch.devices), values(&b.batch.devices));
        assert_eq!(values(&a.batch.names), values(&b.batch.names));
        assert_eq!(values(&a.batch.versions), values(&b.batch.versions));
        assert_eq!(values(&a.batch.texts), values(&b.batch.texts));
        assert_eq!(a.batch.updates, b.batch.updates);
        assert_eq!(a.batch.first_seen, b.batch.first_seen);
        assert_eq!(a.batch.labels, b.batch.labels);
        assert_eq!(
            (a.batch.lines, a.batch.unknown, a.batch.invalid),
            (b.batch.lines, b.batch.unknown, b.batch.invalid)
        );
        assert_eq!(
            (a.batch.min_ts, a.batch.max_ts),
            (b.batch.min_ts, b.batch.max_ts)
        );
    }

    #[test]
    fn entries_round_trip() {
        let entry = sample();
        assert_eq!(entry.batch.events.len(), 5);
        assert_eq!(entry.batch.updates.len(), 3);
        let bytes = encode(&source(), Need::ALL, &entry);
        let decoded = decode(&bytes, &source(), Need::ALL).expect("decodes");
        same(&decoded, &entry);
        let empty = Entry {
            batch: Batch::default(),
            torn: 0,
        };
        let bytes = encode(&source(), Need::default(), &empty);
        same(
            &decode(&bytes, &source(), Need::default()).expect("decodes"),
            &empty,
        );
    }

    #[test]
    fn torn_or_damaged_entries_are_never_trusted() {
        let bytes = encode(&source(), Need::ALL, &sample());
        for len in 0..bytes.len() {
            assert!(
                decode(&bytes[..len], &source(), Need::ALL).is_none(),
                "{len}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer, &source(), Need::ALL).is_none());
        for at in 0..bytes.len() {
            for bit in [0x01, 0x80] {
                let mut damaged = bytes.clone();
                damaged[at] ^= bit;
                assert!(
                    decode(&damaged, &source(), Need::ALL).is_none(),
                    "byte {at} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn entries_of_another_source_or_need_are_ignored() {
        let bytes = encode(&source(), Need::ALL, &sample());
        assert!(decode(&bytes, &source(), Need::default()).is_none());
        for other in [
            Source {
                len: 1235,
                ..source()
            },
            Source {
                modified_ns: 1,
                ..source()
            },
            Source {
                inode: 43,
                ..source()
            },
            Source {
                head: 8,
                ..source()
            },
        ] {
            assert!(decode(&bytes, &other, Need::ALL).is_none());
        }
    }

    /// Payloads that pass the check but say impossible things are rejected too: the CRC
    /// guards against damage, the checks against a writer's mistakes.
    #[test]
    fn well_hashed_nonsense_is_rejected() {
        let mut entry = sample();
        entry.batch.events[0].device = 99;
        let bytes = encode(&source(), Need::ALL, &entry);
        assert!(decode(&bytes, &source(), Need::ALL).is_none());
        let mut entry = sample();
        entry.batch.first_seen.pop();
        let bytes = encode(&source(), Need::ALL, &entry);
        assert!(decode(&bytes, &source(), Need::ALL).is_none());
        let mut entry = sample();
        entry.batch.updates[0].firmware = 99;
        let bytes = encode(&source(), Need::ALL, &entry);
        assert!(decode(&bytes, &source(), Need::ALL).is_none());
        // A rollout's update with a device, or a device's without one.
        let mut entry = sample();
        entry.batch.updates[1].device = 0;
        let bytes = encode(&source(), Need::ALL, &entry);
        assert!(decode(&bytes, &source(), Need::ALL).is_none());
        let mut entry = sample();
        entry.batch.updates[0].device = NONE;
        let bytes = encode(&source(), Need::ALL, &entry);
        assert!(decode(&bytes, &source(), Need::ALL).is_none());
    }

    fn write_log(path: &Path, lines: &[String]) {
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(path, text).expect("write");
    }

    fn rotated_set(dir: &Path) -> Vec<PathBuf> {
        let line = |ts: u32, id: &str, name: &str| {
            format!(
                r#"{{"ts":{ts},"id":"{id}","name":"{name}","data":{{"state":{{"reported":{{"on":{}}}}}}}}}"#,
                ts % 2 == 0
            )
        };
        let names = [
            "notification.log.2024-01-01",
            "notification.log.2024-01-02",
            "notification.log",
        ];
        for (file, name) in names.iter().enumerate() {
            let base = file as u32 * 100;
            write_log(
                &dir.join(name),
                &[
                    line(base + 1, "a", "online"),
                    line(
                        base + 2,
                        &format!("dev{file}"),
                        "rpc.out.Dash.Shadow.Update",
                    ),
                    line(base + 3, "a", "rpc.out.Dash.Shadow.Update"),
                    line(base + 4, "b", "offline"),
                ],
            );
        }
        crate::log_files(dir).expect("list")
    }

    fn assert_logs_equal(a: &Log, b: &Log) {
        assert_eq!(a.stats, b.stats);
        assert_eq!(a.events, b.events);
        let values = |i: &Interner| i.values().map(<[u8]>::to_vec).collect::<Vec<_>>();
        assert_eq!(values(&a.devices), values(&b.devices));
        assert_eq!(a.first_seen, b.first_seen);
        assert_eq!((a.min_ts, a.max_ts), (b.min_ts, b.max_ts));
    }

    #[test]
    fn rotated_files_are_served_from_the_cache_while_they_stay_the_same() {
        let logs = tempfile::tempdir().expect("temp dir");
        let cache_dir = tempfile::tempdir().expect("temp dir");
        let files = rotated_set(logs.path());
        let need = Need {
            shadow: true,
            ..Need::default()
        };
        let fresh = Log::load(&files, need, &|_| {}).expect("load");
        let first = Log::load_cached(&files, need, cache_dir.path(), &|_| {}).expect("load");
        assert_logs_equal(&first, &fresh);
        // Only the two rotated files have entries; the current file is always read.
        let mut entries: Vec<_> = std::fs::read_dir(cache_dir.path())
            .expect("list")
            .map(|e| e.expect("entry").path())
            .collect();
        entries.sort();
        assert_eq!(entries.len(), 2, "{entries:?}");
        let second = Log::load_cached(&files, need, cache_dir.path(), &|_| {}).expect("load");
        assert_logs_equal(&second, &fresh);

        // A sound entry is used as it is: doctor one and the result shows it.
        let entry_path = entry_path(cache_dir.path(), &files[0], need);
        let source = Source::of(&files[0]).expect("source");
        let mut entry = load(&entry_path, &source, need).expect("entry");
        entry.batch.lines += 1000;
        store(&entry_path, &source, need, &entry);
        let doctored = Log::load_cached(&files, need, cache_dir.path(), &|_| {}).expect("load");
        assert_eq!(doctored.stats.lines, fresh.stats.lines + 1000);

        // A damaged entry is ignored and rebuilt.
        std::fs::write(&entry_path, b"HERDLOGC garbage").expect("write");
        let rebuilt = Log::load_cached(&files, need, cache_dir.path(), &|_| {}).expect("load");
        assert_logs_equal(&rebuilt, &fresh);
        assert!(load(&entry_path, &source, need).is_some());

        // A rotated file that changed is parsed again, never served stale.
        let mut text = std::fs::read_to_string(&files[1]).expect("read");
        text.push_str(r#"{"ts":150,"id":"c","name":"online","data":null}"#);
        text.push('\n');
        std::fs::write(&files[1], text).expect("write");
        let fresh = Log::load(&files, need, &|_| {}).expect("load");
        let changed = Log::load_cached(&files, need, cache_dir.path(), &|_| {}).expect("load");
        assert_logs_equal(&changed, &fresh);
        assert!(changed.devices.find(b"c").is_some());

        // Another need has entries of its own.
        let all = Log::load_cached(&files, Need::ALL, cache_dir.path(), &|_| {}).expect("load");
        assert_logs_equal(&all, &Log::load(&files, Need::ALL, &|_| {}).expect("load"));
    }

    /// An entry written by an older version of the parser, as that version would have
    /// written it, is rebuilt rather than read: version 3 took `server.started`
    /// (PROTOCOL §7) for an unknown event, so its entry has no restart in it.
    #[test]
    fn entries_of_an_older_version_are_rebuilt() {
        let logs = tempfile::tempdir().expect("temp dir");
        let cache_dir = tempfile::tempdir().expect("temp dir");
        let started = format!(
            r#"{{"ts":5,"id":"","name":"{}","data":null}}"#,
            protocol::notification::SERVER_STARTED
        );
        let rotated = logs.path().join("notification.log.2024-01-01");
        write_log(
            &rotated,
            &[
                r#"{"ts":1,"id":"a","name":"online","data":null}"#.to_string(),
                started.clone(),
            ],
        );
        write_log(
            &logs.path().join("notification.log"),
            &[r#"{"ts":9,"id":"b","name":"online","data":null}"#.to_string()],
        );
        let files = crate::log_files(logs.path()).expect("list");
        let need = Need::default();
        let fresh = Log::load(&files, need, &|_| {}).expect("load");
        assert!(fresh.events.iter().any(|e| e.kind == Kind::ServerStarted));

        // What version 3 stored for the rotated file: the restart as an unknown event.
        let source = Source::of(&rotated).expect("source");
        let mut old = Entry {
            batch: Batch::default(),
            torn: 0,
        };
        old.batch
            .line(br#"{"ts":1,"id":"a","name":"online","data":null}"#, need);
        old.batch.lines += 1;
        old.batch.unknown += 1;
        old.batch.max_ts = Some(5_000_000);
        let mut bytes = encode(&source, need, &old);
        bytes[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(&3u32.to_le_bytes());
        let body = bytes.len() - 4;
        let check = crc32fast::hash(&bytes[..body]);
        bytes[body..].copy_from_slice(&check.to_le_bytes());
        let entry_path = entry_path(cache_dir.path(), &rotated, need);
        std::fs::write(&entry_path, &bytes).expect("write");
        assert!(decode(&bytes, &source, need).is_none());

        let loaded = Log::load_cached(&files, need, cache_dir.path(), &|_| {}).expect("load");
        assert_logs_equal(&loaded, &fresh);
        assert_eq!(loaded.stats.unknown_events, 0);
        // And the entry was replaced by one of this version.
        let rebuilt = load(&entry_path, &source, need).expect("rebuilt entry");
        assert!(rebuilt
            .batch
            .events
            .iter()
            .any(|e| e.kind == Kind::ServerStarted && e.device == NONE));
    }

    #[test]
    fn an_unwritable_cache_is_no_error() {
        let logs = tempfile::tempdir().expect("temp dir");
        let files = rotated_set(logs.path());
        // A file where the cache directory should be: nothing can be stored under it.
        let blocked = logs.path().join("blocked");
        std::fs::write(&blocked, b"").expect("write");
        let loaded = Log::load_cached(&files, Need::default(), &blocked, &|_| {}).expect("load");
        assert_logs_equal(
            &loaded,
            &Log::load(&files, Need::default(), &|_| {}).expect("load"),
        );
    }
}
