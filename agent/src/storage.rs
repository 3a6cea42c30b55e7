//! The agent's persistent storage: configuration layers as JSON files and a flat file store,
//! both in the data directory.
//!
//! Every write goes to a temporary file in the same directory, is fsynced, renamed over the
//! target and the directory fsynced, so a crash or power cut leaves the old file or the new
//! one, never a mixture (the guarantee [`ConfigStorage::store`] asks for).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use firmware_core::config::Layer;
use firmware_core::fs::valid_name;
use firmware_core::platform::{ConfigStorage, FileStore, StorageError};

/// Replaces `path` with `bytes` atomically: temp file, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no directory"))?;
    fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

fn storage_error(context: &str, e: io::Error) -> StorageError {
    StorageError(format!("{context}: {e}"))
}

/// Configuration layers as `config/factory.json` and `config/user.json`.
#[derive(Debug, Clone)]
pub struct FileConfigStorage {
    dir: PathBuf,
}

impl FileConfigStorage {
    /// Layers under `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileConfigStorage { dir: dir.into() }
    }

    /// The file of one layer.
    pub fn path(&self, layer: Layer) -> PathBuf {
        self.dir.join(format!("{}.json", layer.name()))
    }
}

impl ConfigStorage for FileConfigStorage {
    fn load(&mut self, layer: Layer) -> Result<Option<Vec<u8>>, StorageError> {
        match fs::read(self.path(layer)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(storage_error("cannot read config", e)),
        }
    }

    fn store(&mut self, layer: Layer, json: &[u8]) -> Result<(), StorageError> {
        write_atomic(&self.path(layer), json).map_err(|e| storage_error("cannot write config", e))
    }

    fn erase(&mut self, layer: Layer) -> Result<(), StorageError> {
        match fs::remove_file(self.path(layer)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(storage_error("cannot erase config", e)),
        }
    }
}

/// The `FS.*` file store: one directory, flat names (validated by the engine, and checked
/// again here because this is where a bad name would escape the directory).
#[derive(Debug, Clone)]
pub struct DirFileStore {
    dir: PathBuf,
    capacity: u64,
}

impl DirFileStore {
    /// Files under `dir`, at most `capacity` bytes in total.
    pub fn new(dir: impl Into<PathBuf>, capacity: u64) -> Self {
        DirFileStore {
            dir: dir.into(),
            capacity,
        }
    }

    fn path(&self, name: &str) -> Result<PathBuf, StorageError> {
        if valid_name(name) {
            Ok(self.dir.join(name))
        } else {
            Err(StorageError(format!("invalid file name {name:?}")))
        }
    }

    fn used(&self) -> u64 {
        fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_name().to_str().is_some_and(valid_name))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }
}

impl FileStore for DirFileStore {
    fn list(&mut self) -> Result<Vec<String>, StorageError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(storage_error("cannot list files", e)),
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| valid_name(n))
            .collect();
        names.sort();
        Ok(names)
    }

    fn size(&mut self, name: &str) -> Result<Option<usize>, StorageError> {
        match fs::metadata(self.path(name)?) {
            Ok(meta) if meta.is_file() => Ok(Some(meta.len() as usize)),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(storage_error("cannot stat file", e)),
        }
    }

    fn read(&mut self, name: &str, offset: usize, len: usize) -> Result<Vec<u8>, StorageError> {
        let mut file = File::open(self.path(name)?).map_err(|e| storage_error("cannot open", e))?;
        file.seek(SeekFrom::Start(offset as u64))
            .map_err(|e| storage_error("cannot seek", e))?;
        let mut data = Vec::with_capacity(len);
        file.take(len as u64)
            .read_to_end(&mut data)
            .map_err(|e| storage_error("cannot read", e))?;
        Ok(data)
    }

    fn write(&mut self, name: &str, data: &[u8], append: bool) -> Result<(), StorageError> {
        let path = self.path(name)?;
        if self.used().saturating_add(data.len() as u64) > self.capacity {
            return Err("file store full".into());
        }
        if append {
            fs::create_dir_all(&self.dir).map_err(|e| storage_error("cannot create", e))?;
            let mut file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| storage_error("cannot open", e))?;
            file.write_all(data)
                .and_then(|()| file.sync_data())
                .map_err(|e| storage_error("cannot append", e))
        } else {
            write_atomic(&path, data).map_err(|e| storage_error("cannot write", e))
        }
    }

    fn remove(&mut self, name: &str) -> Result<(), StorageError> {
        fs::remove_file(self.path(name)?).map_err(|e| storage_error("cannot remove", e))
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), StorageError> {
        fs::rename(self.path(from)?, self.path(to)?).map_err(|e| storage_error("cannot rename", e))
    }

    fn capacity(&mut self) -> (u64, u64) {
        (self.capacity, self.capacity.saturating_sub(self.used()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config").join("user.json");
        write_atomic(&path, b"{\"a\":1}").expect("first write");
        write_atomic(&path, b"{\"a\":2}").expect("second write");
        assert_eq!(fs::read(&path).expect("read"), b"{\"a\":2}");
        let names: Vec<_> = fs::read_dir(path.parent().expect("dir"))
            .expect("list")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn file_store_stays_in_its_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = DirFileStore::new(dir.path().join("fs"), 1000);
        assert!(store.write("../escape", b"x", false).is_err());
        store.write("a.txt", b"abc", false).expect("write");
        store.write("a.txt", b"def", true).expect("append");
        assert_eq!(store.read("a.txt", 1, 4).expect("read"), b"bcde");
        assert_eq!(store.list().expect("list"), vec!["a.txt".to_string()]);
        assert!(store.write("big", &[0; 2000], false).is_err());
        assert_eq!(store.capacity(), (1000, 994));
    }
}
