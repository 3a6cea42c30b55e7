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
use crate::{Error, Progress};

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

impl Follower {
    /// Reads what `dir` holds now: rotated files in parallel (they are final), then the
    /// current file, whose unterminated last line stays pending rather than torn.
    pub fn open<P>(dir: impl Into<PathBuf>, need: Need, progress: &P) -> Result<Follower, Error>
    where
        P: Fn(Progress) + Sync,
    {
        let dir = dir.into();
        let files = log_files(&dir)?;
        let (closed, open) = match files.split_last() {
            Some((last, rest)) => (rest.to_vec(), Some(last.clone())),
            None => (Vec::new(), None),
        };
        let log = Log::load(&closed, need, progress)?;
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
        if let Some(path) = open {
            follower.read_from(&path, 0)?;
        }
        Ok(follower)
    }

    /// Reads whatever was appended or rotated since the last call; returns the number of
    /// new bytes.
    pub fn poll(&mut self) -> Result<u64, Error> {
        let before = self.log.stats().bytes;
        let files = log_files(&self.dir)?;
        let last = files.len().saturating_sub(1);
        for (index, path) in files.iter().enumerate() {
            let print = fingerprint(path)?;
            if print.is_empty() || self.finished.iter().any(|f| same_file(f, &print)) {
                continue;
            }
            // A file neither finished nor followed is new: written after the last poll, or
            // rotated away before this follower saw it; either way it is read whole.
            let offset = match &self.current {
                Some((known, offset)) if same_file(known, &print) => *offset,
                _ => 0,
            };
            if index < last {
                if self
                    .current
                    .as_ref()
                    .is_some_and(|(known, _)| same_file(known, &print))
                {
                    self.current = None;
                }
                self.read_rest(path, offset)?;
                self.log.end_file();
                self.finished.push(print);
            } else {
                if self
                    .current
                    .as_ref()
                    .is_some_and(|(known, _)| !same_file(known, &print))
                {
                    // The file we followed is gone without being rotated into the set
                    // (deleted); its held-back tail will never complete.
                    self.log.end_file();
                }
                self.read_from(path, offset)?;
            }
        }
        Ok(self.log.stats().bytes - before)
    }

    /// The events read so far.
    pub fn log(&self) -> &Log {
        &self.log
    }

    fn read_from(&mut self, path: &Path, offset: u64) -> Result<(), Error> {
        let end = self.read_rest(path, offset)?;
        self.current = Some((fingerprint(path)?, end));
        Ok(())
    }

    /// Pushes the bytes of `path` after `offset`; returns the offset reached.
    fn read_rest(&mut self, path: &Path, offset: u64) -> Result<u64, Error> {
        let io = |e| Error::io(path, e);
        let mut file = File::open(path).map_err(io)?;
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
        }
    }
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
