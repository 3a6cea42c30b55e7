//! Firmware slots for the agent itself (PROTOCOL §8): two image files and a boot record in
//! `<data dir>/slots/`.
//!
//! Slot 0 starts out as the installed `herd-agent` binary; an update is written to
//! `slot<N>.img.part`, checked to be something Linux can execute (an ELF file or a `#!`
//! script), made executable and renamed to `slot<N>.img` only when complete, and only then
//! does the boot record point at it. The record (`boot.json`, written atomically) follows
//! [`BootRecord`]'s rules: an uncommitted image gets one boot, so an image that crashes,
//! hangs up or cannot even start is replaced by the previous one on the next start.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use firmware_core::ota::{BootRecord, BootState, ImageInfo, ImageStaging};
use firmware_core::platform::{FirmwareSlots, StorageError};

use crate::storage::write_atomic;

/// Largest image accepted.
pub const SLOT_CAPACITY: usize = 256 * 1024 * 1024;

struct Staging {
    file: File,
    path: PathBuf,
    image: ImageStaging,
}

/// Two slots on disk (see the module docs).
pub struct FileSlots {
    dir: PathBuf,
    factory_path: PathBuf,
    record: BootRecord,
    booted: BootState,
    staging: Option<Staging>,
    refusal: Option<String>,
}

impl std::fmt::Debug for FileSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSlots")
            .field("dir", &self.dir)
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

impl FileSlots {
    /// Opens the slots in `dir`. `factory` describes the installed binary at
    /// `factory_path`, which is slot 0 until an update replaces it. With `count_boot`, this
    /// is a boot: the bootloader rules run and may revert an uncommitted image. A process
    /// that was started by such a boot (an exec into the image) passes `false`.
    pub fn open(
        dir: impl Into<PathBuf>,
        factory: ImageInfo,
        factory_path: PathBuf,
        count_boot: bool,
    ) -> io::Result<FileSlots> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        let mut record = match fs::read(dir.join("boot.json")) {
            Ok(bytes) => match serde_json::from_slice::<BootRecord>(&bytes) {
                Ok(record) => record,
                Err(e) => {
                    // A record we cannot read must not brick the device: boot the
                    // installed binary, which is always there.
                    tracing::warn!(error = %e, "boot record unreadable; booting the installed image");
                    BootRecord::new(factory.clone())
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => BootRecord::new(factory.clone()),
            Err(e) => return Err(e),
        };
        let mut slots = FileSlots {
            factory_path,
            booted: BootState::default(),
            staging: None,
            refusal: None,
            dir,
            record: BootRecord::new(factory.clone()),
        };
        if record.images[0].is_none() || !slots.slot_file(0).exists() {
            // Slot 0 without its own file is the installed binary, whatever version that
            // is now (the package manager may have upgraded it).
            record.images[0] = Some(factory);
        }
        if record.active == 1 && !slots.slot_file(1).exists() {
            record.active = 0;
            record.committed = true;
        }
        if count_boot {
            record.on_boot();
        }
        slots.record = record;
        slots.persist()?;
        slots.booted = slots.record.state();
        Ok(slots)
    }

    fn slot_file(&self, slot: u8) -> PathBuf {
        self.dir.join(format!("slot{slot}.img"))
    }

    fn persist(&self) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.record).map_err(io::Error::other)?;
        write_atomic(&self.dir.join("boot.json"), &bytes)
    }

    /// The slot this boot runs.
    pub fn booted_slot(&self) -> u8 {
        self.booted.partition
    }

    /// The executable of `slot`: its image file, or the installed binary for slot 0.
    pub fn image_path(&self, slot: u8) -> PathBuf {
        let file = self.slot_file(slot);
        if slot == 0 && !file.exists() {
            self.factory_path.clone()
        } else {
            file
        }
    }

    /// The image of the booted slot could not be started: go back to the other one.
    pub fn revert_unstartable(&mut self, message: &str) -> io::Result<()> {
        self.record.revert(message);
        self.persist()?;
        self.booted = self.record.state();
        Ok(())
    }

    /// The boot record as stored.
    pub fn record(&self) -> &BootRecord {
        &self.record
    }

    /// Refuses every update with `reason` (see [`FirmwareSlots::update_refusal`]), or
    /// takes them again with `None`.
    pub fn refuse_updates(&mut self, reason: Option<String>) {
        self.refusal = reason;
    }
}

fn io_error(context: &str, e: io::Error) -> StorageError {
    StorageError(format!("{context}: {e}"))
}

/// Whether Linux can execute an image starting with `head`.
pub fn looks_executable(head: &[u8]) -> bool {
    head.starts_with(b"\x7fELF") || head.starts_with(b"#!")
}

impl FirmwareSlots for FileSlots {
    fn boot_state(&mut self) -> BootState {
        self.record.boot_state_since(&self.booted)
    }

    fn running_image(&mut self) -> ImageInfo {
        self.record.image_in(self.booted.partition)
    }

    fn slot_capacity(&mut self) -> usize {
        SLOT_CAPACITY
    }

    fn begin(&mut self, size: usize) -> Result<(), StorageError> {
        let slot = 1 - self.booted.partition.min(1);
        let path = self.dir.join(format!("slot{slot}.img.part"));
        let file = File::create(&path).map_err(|e| io_error("cannot create the slot", e))?;
        self.staging = Some(Staging {
            file,
            path,
            image: ImageStaging::new(size),
        });
        Ok(())
    }

    fn write(&mut self, offset: usize, data: &[u8]) -> Result<(), StorageError> {
        let staging = self.staging.as_mut().ok_or("no image being written")?;
        // Checked before the bytes are stored, so a refused chunk leaves the file as it was.
        let mut image = staging.image.clone();
        image.accept(offset, data)?;
        staging
            .file
            .write_all(data)
            .map_err(|e| io_error("cannot write the slot", e))?;
        staging.image = image;
        Ok(())
    }

    fn finish(&mut self, image: &ImageInfo, commit_timeout_s: u32) -> Result<(), StorageError> {
        let staging = self.staging.take().ok_or("no image being written")?;
        let result = (|| {
            staging.image.check_complete()?;
            if !looks_executable(staging.image.head()) {
                return Err(StorageError(
                    "not an executable image (neither ELF nor a #! script)".into(),
                ));
            }
            staging
                .file
                .sync_all()
                .map_err(|e| io_error("cannot flush the slot", e))?;
            drop(staging.file);
            set_executable(&staging.path).map_err(|e| io_error("cannot chmod the slot", e))?;
            let slot = 1 - self.booted.partition.min(1);
            fs::rename(&staging.path, self.slot_file(slot))
                .map_err(|e| io_error("cannot install the slot", e))?;
            let previous = self.record.clone();
            self.record.stage(image.clone(), commit_timeout_s);
            if let Err(e) = self.persist() {
                self.record = previous;
                return Err(io_error("cannot write the boot record", e));
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&staging.path);
        }
        result
    }

    fn abort(&mut self) {
        if let Some(staging) = self.staging.take() {
            let _ = fs::remove_file(&staging.path);
        }
    }

    fn commit(&mut self) -> Result<(), StorageError> {
        let previous = self.record.clone();
        self.record.commit();
        self.persist().map_err(|e| {
            self.record = previous;
            io_error("cannot write the boot record", e)
        })
    }

    fn update_refusal(&mut self) -> Option<String> {
        self.refusal.clone()
    }

    fn revert(&mut self) -> Result<(), StorageError> {
        let previous = self.record.clone();
        self.record
            .revert("reverted: not committed in time, or on request");
        self.persist().map_err(|e| {
            self.record = previous;
            io_error("cannot write the boot record", e)
        })
    }
}

fn set_executable(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
}
