//! Following a growing log directory: each [`Follower::poll`] reads only the bytes
//! appended since the last one, across rotation (PROTOCOL §7).
//!
//! The server only ever appends to `notification.log` and renames it when it rotates, so a
//! file is recognised by its first bytes (the first line's `ts` makes them unique): when
//! the file being followed turns up under a rotated name, reading goes on where it
//! stopped, its end is final, and the new `notification.log` is read from its start.
//! What to call `poll` on is the caller's business: a file watcher's events (the console
//! uses `notify`), a timer, or both.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::event::Need;
use crate::files::log_files;
use crate::log::Log;
use crate::{Error, Progress, Stage};

/// How many leading bytes identify a file.
const FINGERPRINT: usize = 64;

/// A log directory read incrementally into a [`Log`].
#[derive(Debug)]
pub struct Follower {
    dir: PathBuf,
    log: Log,
    /// Fingerprints of files read to their end and closed.
    finished: Vec<Vec<u8>>,
    /// The open file: its fingerprint when last read and how far it was read.
    current: Option<(Vec<u8>, u64)>,
}

/// How often a poll lists the directory again when a rotation races it before it leaves
/// the reading to the next poll.
const SNAPSHOT_ATTEMPTS: usize = 8;

/// The log files of a directory, opened: the handles keep reading the same files whatever
/// is renamed after they were opened.
struct Snapshot {
    files: Vec<(PathBuf, File, Vec<u8>)>,
}

impl Follower {
    /// Reads what `dir` holds now: rotated files in parallel (they are final), then the
    /// current file, whose unterminated last line stays pending rather than torn.
    pub fn open<P>(dir: impl Into<PathBuf>, need: Need, progress: &P) -> Result<Follower, Error>
    where
        P: Fn(Progress) + Sync,
    {
        Self::open_with(dir.into(), need, None, progress)
    }

    /// Like [`open`](Self::open), serving rotated files from the parse cache in `cache`
    /// (see [`Log::load_cached`]).
    pub fn open_cached<P>(
        dir: impl Into<PathBuf>,
        need: Need,
        cache: &Path,
        progress: &P,
    ) -> Result<Follower, Error>
    where
        P: Fn(Progress) + Sync,
    {
        Self::open_with(dir.into(), need, Some(cache), progress)
    }

    fn open_with<P>(
        dir: PathBuf,
        need: Need,
        cache: Option<&Path>,
        progress: &P,
    ) -> Result<Follower, Error>
    where
        P: Fn(Progress) + Sync,
    {
        let files = log_files(&dir)?;
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
        let log = match cache {
            Some(cache) => Log::load_cached(&closed, need, cache, &scaled)?,
            None => Log::load(&closed, need, &scaled)?,
        };
        let mut finished = Vec::new();
        for path in &closed {
            finished.push(fingerprint(path)?);
        }
        let mut follower = Follower {
            dir,
            log,
            finished,
            current: None,
        };
        // Rotations while the closed files were read are picked up here, with the rules
        // of every later poll.
        follower.poll_with(&|done| {
            progress(Progress {
                stage: Stage::Reading,
                done: closed_bytes + done,
                total: total.max(closed_bytes + done),
            })
        })?;
        Ok(follower)
    }

    /// Reads whatever was appended or rotated since the last call; returns the number of
    /// new bytes.
    pub fn poll(&mut self) -> Result<u64, Error> {
        self.poll_with(&|_| {})
    }

    fn poll_with(&mut self, read: &dyn Fn(u64)) -> Result<u64, Error> {
        let before = self.log.stats().bytes;
        let Some(snapshot) = self.snapshot()? else {
            // Rotating faster than the files can be listed: nothing is lost by waiting
            // for the next poll.
            return Ok(0);
        };
        let last = snapshot.files.len().saturating_sub(1);
        let followed = |print: &[u8], current: &Option<(Vec<u8>, u64)>| {
            current
                .as_ref()
                .is_some_and(|(known, _)| same_file(known, print))
        };
        // The followed file is still there, under its name or a rotated one; if not, it
        // was deleted and its held-back tail will never complete.
        if self.current.is_some()
            && !snapshot
                .files
                .iter()
                .any(|(_, _, print)| followed(print, &self.current))
        {
            self.log.end_file();
            self.current = None;
        }
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

    /// Opens the directory's log files between two listings that agree, so no rotation
    /// happened while they were opened: each handle is the file its name had in the
    /// listing, and the followed file is found under whichever name it has now.
    fn snapshot(&self) -> Result<Option<Snapshot>, Error> {
        let mut names = log_files(&self.dir)?;
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
            let again = log_files(&self.dir)?;
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
