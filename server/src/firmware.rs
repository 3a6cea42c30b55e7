//! The firmware store on disk (PROTOCOL §10.1): images content-addressed by SHA-256 under
//! `<data dir>/firmware/`, never in database rows.
//!
//! An upload streams into `firmware/tmp/` while it is hashed, so a 64 MiB image never sits
//! in memory; only when the whole body arrived within the limit is the file renamed to its
//! hash. A crash mid-upload leaves a temporary file that the next start removes, and an
//! image file whose metadata row never got written is removed at start as well, so the
//! directory and the store always agree.
//!
//! [`describe`] reads what an image says about itself: a Mongoose OS `.zip` package's
//! `manifest.json` (name, version, platform, build id), an ELF header's machine, or the
//! `HERD-IMAGE {...}` first line of Herd images.

use std::collections::HashSet;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// How many leading bytes of an upload are kept to recognise its format.
const HEAD_BYTES: usize = 4096;
/// Bytes gathered before one write to disk.
const WRITE_BATCH: usize = 256 * 1024;
/// Largest `manifest.json` read from a package.
const MANIFEST_MAX: u64 = 256 * 1024;

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the image is larger than the {limit}-byte limit")]
    TooLarge { limit: u64 },
    #[error("the image is empty")]
    Empty,
    #[error("the upload was cut short: {0}")]
    Body(String),
    #[error("{0}")]
    Invalid(String),
    #[error("cannot store the image: {0}")]
    Io(#[from] std::io::Error),
}

/// The image files.
#[derive(Debug, Clone)]
pub struct FirmwareFiles {
    dir: PathBuf,
}

impl FirmwareFiles {
    /// Opens `<data dir>/firmware`, creating it and clearing abandoned uploads.
    pub fn open(data_dir: &Path) -> std::io::Result<FirmwareFiles> {
        let dir = data_dir.join("firmware");
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp)?;
        for entry in std::fs::read_dir(&tmp)? {
            let path = entry?.path();
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(file = %path.display(), error = %e, "cannot remove an abandoned upload");
            }
        }
        Ok(FirmwareFiles { dir })
    }

    /// Where the image `id` lives.
    pub fn path(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Removes image files that no stored firmware names (an upload that crashed between
    /// the rename and the row, or a delete that crashed after the row).
    pub fn remove_unknown(&self, known: &HashSet<String>) -> std::io::Result<usize> {
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type()?.is_file() && is_sha256_hex(&name) && !known.contains(&name) {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Starts an upload of at most `limit` bytes.
    pub fn stage(&self, limit: u64) -> Result<Staging, UploadError> {
        let name = format!("{}.part", crate::auth::new_secret());
        let path = self.dir.join("tmp").join(name);
        let file = std::fs::File::create(&path)?;
        Ok(Staging {
            path: Some(path),
            file: Some(file),
            hasher: Sha256::new(),
            size: 0,
            limit,
            head: Vec::new(),
            pending: Vec::new(),
        })
    }

    /// Moves a finished upload to its content address; the same bytes stored before are
    /// kept as they are.
    pub fn keep(&self, staged: Staged) -> std::io::Result<PathBuf> {
        let target = self.path(&staged.sha256);
        let mut staged = staged;
        let from = staged.path.take().unwrap_or_default();
        if target.exists() {
            std::fs::remove_file(&from)?;
        } else {
            std::fs::rename(&from, &target)?;
        }
        Ok(target)
    }

    /// Removes an image's bytes.
    pub fn remove(&self, id: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Whether `text` looks like a SHA-256 in lowercase hex: the only names the store uses.
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// An upload under way: bytes go to a temporary file and through the hash.
#[derive(Debug)]
pub struct Staging {
    path: Option<PathBuf>,
    file: Option<std::fs::File>,
    hasher: Sha256,
    size: u64,
    limit: u64,
    head: Vec<u8>,
    pending: Vec<u8>,
}

impl Staging {
    /// Adds the next bytes of the image.
    pub async fn push(&mut self, bytes: &[u8]) -> Result<(), UploadError> {
        self.size += bytes.len() as u64;
        if self.size > self.limit {
            return Err(UploadError::TooLarge { limit: self.limit });
        }
        let room = HEAD_BYTES.saturating_sub(self.head.len());
        self.head.extend_from_slice(&bytes[..bytes.len().min(room)]);
        self.pending.extend_from_slice(bytes);
        if self.pending.len() >= WRITE_BATCH {
            self.write_pending().await?;
        }
        Ok(())
    }

    /// Hashing and writing happen off the async threads, a batch at a time.
    async fn write_pending(&mut self) -> Result<(), UploadError> {
        let batch = std::mem::take(&mut self.pending);
        let mut file = self.file.take().ok_or_else(|| {
            UploadError::Io(std::io::Error::other("the upload was already finished"))
        })?;
        let mut hasher = std::mem::take(&mut self.hasher);
        let (file, hasher, result) = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            hasher.update(&batch);
            let result = file.write_all(&batch);
            (file, hasher, result)
        })
        .await
        .map_err(|e| UploadError::Io(std::io::Error::other(e.to_string())))?;
        self.file = Some(file);
        self.hasher = hasher;
        result?;
        Ok(())
    }

    /// Ends the upload: the bytes are on disk (synced) and hashed.
    pub async fn finish(mut self) -> Result<Staged, UploadError> {
        if self.size == 0 {
            return Err(UploadError::Empty);
        }
        self.write_pending().await?;
        let file = self.file.take();
        if let Some(file) = file {
            tokio::task::spawn_blocking(move || file.sync_all())
                .await
                .map_err(|e| UploadError::Io(std::io::Error::other(e.to_string())))??;
        }
        let hasher = std::mem::take(&mut self.hasher);
        Ok(Staged {
            path: self.path.take(),
            sha256: hex::encode(hasher.finalize()),
            size: self.size,
            head: std::mem::take(&mut self.head),
        })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // An upload that did not finish leaves nothing behind.
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A complete upload in its temporary file.
#[derive(Debug)]
pub struct Staged {
    path: Option<PathBuf>,
    /// SHA-256 of the bytes, lowercase hex.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
    /// The first bytes, for [`describe`].
    pub head: Vec<u8>,
}

impl Staged {
    /// The temporary file.
    pub fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// What an image says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Description {
    pub app: String,
    pub version: String,
    pub platform: String,
    /// `raw`, `elf` or `zip`.
    pub format: String,
    pub build_id: Option<String>,
}

/// Reads the image's own metadata (see the module docs). A file that claims to be a zip
/// package must be a whole one with a manifest; anything else is a raw image.
pub fn describe(path: &Path, head: &[u8]) -> Result<Description, UploadError> {
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return describe_zip(path);
    }
    if head.starts_with(b"\x7fELF") {
        return Ok(Description {
            platform: elf_machine(head).unwrap_or_default().into(),
            format: "elf".into(),
            ..Description::default()
        });
    }
    let mut description = Description {
        format: "raw".into(),
        ..Description::default()
    };
    if let Some(rest) = head.strip_prefix(b"HERD-IMAGE ".as_slice()) {
        let line = rest.split(|&b| b == b'\n').next().unwrap_or_default();
        if let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(line) {
            let text = |key: &str| {
                fields
                    .get(key)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            description.app = text("app");
            description.version = text("fw_version");
            description.platform = text("arch");
        }
    }
    Ok(description)
}

fn describe_zip(path: &Path) -> Result<Description, UploadError> {
    let file = std::fs::File::open(path)?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| UploadError::Invalid(format!("not a readable zip package: {e}")))?;
    let manifest = read_manifest(&mut archive)?;
    let text = |key: &str| {
        manifest
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    Ok(Description {
        app: text("name"),
        version: text("version"),
        platform: text("platform"),
        format: "zip".into(),
        build_id: Some(text("build_id")).filter(|id| !id.is_empty()),
    })
}

/// The package's `manifest.json`: at the top, or in the one directory Mongoose OS packages
/// put everything in.
fn read_manifest<R: Read + Seek>(archive: &mut zip::ZipArchive<R>) -> Result<Value, UploadError> {
    let name = archive
        .file_names()
        .filter_map(|name| name.ok().map(|name| name.into_owned()))
        .filter(|name| name == "manifest.json" || name.ends_with("/manifest.json"))
        .min_by_key(|name| name.matches('/').count())
        .filter(|name| name.matches('/').count() <= 1)
        .ok_or_else(|| UploadError::Invalid("the zip package has no manifest.json".into()))?;
    let entry = archive
        .by_name(&name)
        .map_err(|e| UploadError::Invalid(format!("cannot read {name}: {e}")))?;
    let mut bytes = Vec::new();
    entry
        .take(MANIFEST_MAX)
        .read_to_end(&mut bytes)
        .map_err(|e| UploadError::Invalid(format!("cannot read {name}: {e}")))?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(manifest @ Value::Object(_)) => Ok(manifest),
        Ok(_) => Err(UploadError::Invalid(format!("{name} is not a JSON object"))),
        Err(e) => Err(UploadError::Invalid(format!(
            "{name} is not valid JSON: {e}"
        ))),
    }
}

/// The architecture an ELF header names (`e_machine`).
fn elf_machine(head: &[u8]) -> Option<&'static str> {
    let bytes = head.get(18..20)?;
    let little = head.get(5) != Some(&2);
    let machine = if little {
        u16::from_le_bytes([bytes[0], bytes[1]])
    } else {
        u16::from_be_bytes([bytes[0], bytes[1]])
    };
    Some(match machine {
        3 => "x86",
        0x28 => "arm",
        0x3e => "x86_64",
        0x5e => "xtensa",
        0xb7 => "aarch64",
        0xf3 => "riscv",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn zip_with(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut buffer = std::io::Cursor::new(Vec::new());
        {
            let mut zip = zip::ZipWriter::new(&mut buffer);
            for (name, bytes) in entries {
                zip.start_file(*name, zip::write::SimpleFileOptions::default())
                    .unwrap();
                zip.write_all(bytes).unwrap();
            }
            zip.finish().unwrap();
        }
        buffer.into_inner()
    }

    fn described(bytes: &[u8]) -> Result<Description, UploadError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        std::fs::write(&path, bytes).unwrap();
        describe(&path, &bytes[..bytes.len().min(HEAD_BYTES)])
    }

    #[test]
    fn zip_packages_are_read_from_their_manifest() {
        let manifest = br#"{"name": "smartlight", "version": "1.2.0", "platform": "esp32", "build_id": "20250101-1"}"#;
        let package = zip_with(&[
            ("smartlight/manifest.json", manifest),
            ("smartlight/app.bin", b"image"),
        ]);
        let d = described(&package).unwrap();
        assert_eq!(
            (d.app.as_str(), d.version.as_str(), d.platform.as_str()),
            ("smartlight", "1.2.0", "esp32")
        );
        assert_eq!(d.format, "zip");
        assert_eq!(d.build_id.as_deref(), Some("20250101-1"));
    }

    #[test]
    fn bad_packages_are_refused() {
        let no_manifest = zip_with(&[("app.bin", b"image")]);
        let err = described(&no_manifest).unwrap_err();
        assert!(err.to_string().contains("no manifest.json"), "{err}");
        let package = zip_with(&[("manifest.json", b"{\"name\": \"x\"}")]);
        let truncated = &package[..package.len() - 10];
        let err = described(truncated).unwrap_err();
        assert!(err.to_string().contains("not a readable zip"), "{err}");
        let not_json = zip_with(&[("manifest.json", b"{oops")]);
        assert!(described(&not_json).is_err());
        let too_deep = zip_with(&[("a/b/manifest.json", b"{}")]);
        assert!(described(&too_deep).is_err());
    }

    #[test]
    fn elf_and_herd_images() {
        let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
        elf.resize(64, 0);
        elf[18] = 0x3e;
        let d = described(&elf).unwrap();
        assert_eq!((d.format.as_str(), d.platform.as_str()), ("elf", "x86_64"));
        let herd =
            b"HERD-IMAGE {\"app\":\"herd-light\",\"fw_version\":\"1.1.0\",\"arch\":\"sim\"}\nbody";
        let d = described(herd).unwrap();
        assert_eq!(
            (d.app.as_str(), d.version.as_str(), d.platform.as_str()),
            ("herd-light", "1.1.0", "sim")
        );
        let d = described(b"\x00\x01raw").unwrap();
        assert_eq!(d.format, "raw");
        assert!(d.version.is_empty());
    }

    #[tokio::test]
    async fn staging_hashes_limits_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let files = FirmwareFiles::open(dir.path()).unwrap();
        let mut staging = files.stage(1 << 20).unwrap();
        let body = vec![7u8; 300 * 1024];
        for chunk in body.chunks(10_000) {
            staging.push(chunk).await.unwrap();
        }
        let staged = staging.finish().await.unwrap();
        assert_eq!(staged.sha256, hex::encode(Sha256::digest(&body)));
        assert_eq!(staged.size, body.len() as u64);
        let id = staged.sha256.clone();
        let path = files.keep(staged).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), body);
        // Over the limit: refused, and the temporary file is gone with the staging.
        let mut staging = files.stage(100).unwrap();
        assert!(matches!(
            staging.push(&[0; 101]).await,
            Err(UploadError::TooLarge { .. })
        ));
        drop(staging);
        assert_eq!(
            std::fs::read_dir(dir.path().join("firmware/tmp"))
                .unwrap()
                .count(),
            0
        );
        // Files nobody knows are removed; known ones stay.
        std::fs::write(files.path(&"0".repeat(64)), b"orphan").unwrap();
        let known: HashSet<String> = [id.clone()].into();
        assert_eq!(files.remove_unknown(&known).unwrap(), 1);
        assert!(files.path(&id).exists());
    }
}
