//! Which files make up a log, and in what order (PROTOCOL §7).
//!
//! The server appends to `notification.log` and rotates it to
//! `notification.log.<YYYY-MM-DD>[.<n>]`; the set read oldest first is one log. A report
//! may name a directory (its rotated set), single files, or both.

use std::io;
use std::path::{Path, PathBuf};

use crate::Error;

const CURRENT: &str = "notification.log";

/// Place of a file name in the rotated set: rotated files by date then number, the
/// current file last. `None`: not a log file.
fn slot(name: &str) -> Option<(u8, String, u64)> {
    if name == CURRENT {
        return Some((1, String::new(), 0));
    }
    let rest = name.strip_prefix(CURRENT)?.strip_prefix('.')?;
    let (date, n) = match rest.split_once('.') {
        Some((date, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            (date, n.parse().ok()?)
        }
        Some(_) => return None,
        None => (rest, 0),
    };
    let bytes = date.as_bytes();
    let shaped = bytes.len() == 10
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes
            .iter()
            .enumerate()
            .all(|(i, b)| i == 4 || i == 7 || b.is_ascii_digit());
    // A fixed-width date sorts as text in calendar order.
    shaped.then(|| (0, date.to_string(), n))
}

/// The log files in a directory, oldest first. A missing directory is an empty log.
pub fn log_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let Some(key) = name.to_str().and_then(slot) else {
            continue;
        };
        let path = entry.path();
        // Follows symlinks: archived files may be linked back in.
        if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            found.push((key, path));
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, path)| path).collect())
}

/// Expands directories to their rotated sets; files stay as given, in the given order.
pub fn resolve(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Error> {
    let mut files = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            files.extend(log_files(path)?);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_set_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        for name in [
            "notification.log",
            "notification.log.2024-01-02",
            "notification.log.2024-01-01.2",
            "notification.log.2024-01-01.10",
            "notification.log.2024-01-01",
            "notification.log.2024-1-01",
            "notification.log.2024-01-01.x",
            "other.log",
        ] {
            std::fs::write(dir.path().join(name), "").expect("write");
        }
        let names: Vec<String> = log_files(dir.path())
            .expect("list")
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .collect();
        assert_eq!(
            names,
            [
                "notification.log.2024-01-01",
                "notification.log.2024-01-01.2",
                "notification.log.2024-01-01.10",
                "notification.log.2024-01-02",
                "notification.log",
            ]
        );
    }

    #[test]
    fn missing_directory_is_empty() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(log_files(&dir.path().join("nope"))
            .expect("list")
            .is_empty());
        assert!(resolve(&[dir.path().join("nope")]).is_err());
    }
}
