//! Following a growing log: each [`Follower::poll`] reads only the bytes appended since the
//! last one, across rotation (PROTOCOL §7).
//!
//! The server only ever appends to `notification.log` and renames it when it rotates, so a
//! file is recognised by its first bytes (the first line's `ts` makes them unique): when
//! the file being followed turns up under a rotated name, reading goes on where it
//! stopped, its end is final, and the new `notification.log` is read from its start.
//! The log followed is a directory's rotated set, named files, or both, listed the way
//! [`resolve`] lists them. When something already read is gone (old files deleted, a named
//! file replaced, a file cut back), the next poll reads the log again from what is there.
//! What to call `poll` on is the caller's business: a file watcher's events (the console
//! uses `notify`), a timer, or both.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::event::Need;
use crate::files::resolve;
use crate::log::Log;
use crate::{Error, Progress, Stage};

/// How many leading bytes identify a file.
const FINGERPRINT: usize = 64;

/// A log read incrementally into a [`Log`].
#[derive(Debug)]
pub struct Follower {
    /// What the log is: directories and files, as given.
    paths: Vec<PathBuf>,
    need: Need,
    cache: Option<PathBuf>,
    log: Log,
    /// Fingerprints of files read to their end and closed.
    finished: Vec<Vec<u8>>,
    /// The open file: its fingerprint when last read and how far it was read.
    current: Option<(Vec<u8>, u64)>,
}

/// What a [`Follower::poll`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Polled {
    /// Bytes read by this poll.
    pub bytes: u64,
    /// Whether something read before was gone, so the whole log was read again.
    pub reread: bool,
}

/// How often a poll lists the files again when a rotation races it before it leaves
/// the reading to the next poll.
const SNAPSHOT_ATTEMPTS: usize = 8;

/// The log's files, opened: the handles keep reading the same files whatever is renamed
/// after they were opened.
struct Snapshot {
    files: Vec<(PathBuf, File, Vec<u8>)>,
}

impl Follower {
    /// Reads what `path` (a directory's rotated set, or one file) holds now: rotated files
    /// in parallel (they are final), then the current file, whose unterminated last line
    /// stays pending rather than torn.
    pub fn open<P>(path: impl Into<PathBuf>, need: Need, progress: &P) -> Result<Follower, Error>
    where
        P: Fn(Progress) + Sync,
    {
        Self::open_all(vec![path.into()], need, None, progress)
    }

    /// Like [`open`](Self::open), serving rotated files from the parse cache in `cache`
    /// (see [`Log::load_cached`]).
    pub fn open_cached<P>(
        path: impl Into<PathBuf>,
        need: Need,
        cache: &Path,
        progress: &P,
    ) -> Result<Follower, Error>
    where
        P: Fn(Progress) + Sync,
    {
        Self::open_all(vec![path.into()], need, Some(cache.to_path_buf()), progress)
    }

    /// Follows directories and files together, in the order [`resolve`] lists them: every
    /// file but the last is read whole, the last is followed. With a `cache`, files other
    /// than the last come from the parse cache when they are in it.
    pub fn open_all<P>(
        paths: Vec<PathBuf>,
        need: Need,
        cache: Option<PathBuf>,
        progress: &P,
    ) -> Result<Follower, Error>
    where
        P: Fn(Progress) + Sync,
    {
        let files = resolve(&paths)?;
        let (closed, open) = match files.split_last() {
            Some((last, rest)) => (rest.to_vec(), Some(last.clone())),
            None => (Vec::new(), None),
        };
        // The bytes of every file, so the gauge also covers the current file, which is
        // usually the largest.
        let closed_bytes: u64 = closed
            .iter()
            .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
            .sum();
        let open_bytes = open
            .as_ref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len());
        let total = closed_bytes + open_bytes;
        let scaled = |p: Progress| match p.stage {
            Stage::Reading => progress(Progress { total, ..p }),
            Stage::Computing => {}
        };
        let log = match &cache {
            Some(cache) => Log::load_cached(&closed, need, cache, &scaled)?,
            None => Log::load(&closed, need, &scaled)?,
        };
        let mut finished = Vec::new();
        for path in &closed {
            let print = fingerprint(path)?;
            if !print.is_empty() {
                finished.push(print);
            }
        }
        let mut follower = Follower {
            paths,
            need,
            cache,
            log,
            finished,
            current: None,
        };
        // Rotations while the closed files were read are picked up here, with the rules
        // of every later poll.
        let snapshot = follower.snapshot()?;
        if let Some(snapshot) = snapshot {
            follower.read_snapshot(snapshot, &|done| {
                progress(Progress {
                    stage: Stage::Reading,
                    done: closed_bytes + done,
                    total: total.max(closed_bytes + done),
                })
            })?;
        }
        Ok(follower)
    }

    /// Reads whatever was appended or rotated since the last call.
    pub fn poll(&mut self) -> Result<Polled, Error> {
        self.poll_reporting(&|_| {})
    }

    /// Like [`poll`](Self::poll), reporting the progress of reading the log again when it
    /// has to.
    pub fn poll_reporting<P>(&mut self, progress: &P) -> Result<Polled, Error>
    where
        P: Fn(Progress) + Sync,
    {
        let Some(snapshot) = self.snapshot()? else {
            // Rotating faster than the files can be listed: nothing is lost by waiting
            // for the next poll.
            return Ok(Polled {
                bytes: 0,
                reread: false,
            });
        };
        if self.lost_read_bytes(&snapshot) {
            drop(snapshot);
            // On failure this follower stays as it was, and the next poll tries again.
            let again =
                Follower::open_all(self.paths.clone(), self.need, self.cache.clone(), progress)?;
            *self = again;
            return Ok(Polled {
                bytes: self.log.stats().bytes,
                reread: true,
            });
        }
        let bytes = self.read_snapshot(snapshot, &|_| {})?;
        Ok(Polled {
            bytes,
            reread: false,
        })
    }

    /// Whether a file read before is no longer among the log's files, or the followed
    /// file was cut back.
    fn lost_read_bytes(&self, snapshot: &Snapshot) -> bool {
        let listed = |print: &[u8]| {
            snapshot
                .files
                .iter()
                .find(|(_, _, listed)| same_file(print, listed))
        };
        if self.finished.iter().any(|print| listed(print).is_none()) {
            return true;
        }
        let Some((print, offset)) = &self.current else {
            return false;
        };
        match listed(print) {
            None => true,
            Some((_, file, _)) => file.metadata().map_or(true, |meta| meta.len() < *offset),
        }
    }

    /// Reads the files of `snapshot` that are new or grew; returns the bytes read.
    fn read_snapshot(&mut self, snapshot: Snapshot, read: &dyn Fn(u64)) -> Result<u64, Error> {
        let before = self.log.stats().bytes;
        let last = snapshot.files.len().saturating_sub(1);
        let followed = |print: &[u8], current: &Option<(Vec<u8>, u64)>| {
            current
                .as_ref()
                .is_some_and(|(known, _)| same_file(known, print))
        };
        let mut done = 0u64;
        for (index, (path, mut file, print)) in snapshot.files.into_iter().enumerate() {
            if print.is_empty() || self.finished.iter().any(|f| same_file(f, &print)) {
                continue;
            }
            // A file neither finished nor followed is new: written after the last poll, or
            // rotated away before this follower saw it; either way it is read whole.
            let is_current = followed(&print, &self.current);
            let offset = match &self.current {
                Some((_, offset)) if is_current => *offset,
                _ => 0,
            };
            let end = self.read_rest(&path, &mut file, offset, &mut |n| {
                done += n;
                read(done)
            })?;
            if index < last {
                if is_current {
                    self.current = None;
                }
                self.log.end_file();
                self.finished.push(print);
            } else {
                self.current = Some((print, end));
            }
        }
        Ok(self.log.stats().bytes - before)
    }

    /// The events read so far.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Opens the log's files between two listings that agree, so no rotation happened
    /// while they were opened: each handle is the file its name had in the listing, and
    /// the followed file is found under whichever name it has now.
    fn snapshot(&self) -> Result<Option<Snapshot>, Error> {
        let mut names = resolve(&self.paths)?;
        for _ in 0..SNAPSHOT_ATTEMPTS {
            let mut files = Vec::with_capacity(names.len());
            let mut vanished = false;
            for path in &names {
                match File::open(path) {
                    Ok(mut file) => {
                        let print = read_fingerprint(&mut file).map_err(|e| Error::io(path, e))?;
                        files.push((path.clone(), file, print));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        vanished = true;
                        break;
                    }
                    Err(e) => return Err(Error::io(path, e)),
                }
            }
            let again = resolve(&self.paths)?;
            if !vanished && again == names {
                return Ok(Some(Snapshot { files }));
            }
            names = again;
        }
        Ok(None)
    }

    /// Pushes the bytes of `file` after `offset`; returns the offset reached.
    fn read_rest(
        &mut self,
        path: &Path,
        file: &mut File,
        offset: u64,
        read: &mut dyn FnMut(u64),
    ) -> Result<u64, Error> {
        let io = |e| Error::io(path, e);
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut position = offset;
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buffer).map_err(io)?;
            if n == 0 {
                return Ok(position);
            }
            self.log.push(&buffer[..n]);
            position += n as u64;
            read(n as u64);
        }
    }
}

/// The first bytes of an open file.
fn read_fingerprint(file: &mut File) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(FINGERPRINT);
    file.take(FINGERPRINT as u64).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The first bytes of a file; empty for an empty or vanished file.
fn fingerprint(path: &Path) -> Result<Vec<u8>, Error> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut bytes = Vec::with_capacity(FINGERPRINT);
    (&mut file)
        .take(FINGERPRINT as u64)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    Ok(bytes)
}

/// Whether two fingerprints, taken at different sizes of a growing file, are of one file.
fn same_file(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().min(b.len());
    n > 0 && a[..n] == b[..n]
}
