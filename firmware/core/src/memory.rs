//! A platform held entirely in RAM: host tests and simulated fleets run the real engine on
//! it. "Rebooting" means building a new [`crate::device::Device`] on the same
//! [`MemoryPlatform`] after calling [`MemoryPlatform::reboot`].

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::config::Layer;
use crate::ota::{BootRecord, BootState, ImageInfo, ImageStaging};
use crate::platform::{
    ConfigStorage, FileStore, FirmwareSlots, Light, StorageError, System, SystemFacts,
};

pub use crate::ota::{describe_image, IMAGE_HEADER};

/// Two firmware slots in RAM. Images are hashed by the engine and not kept, so a thousand
/// simulated devices updating at once stay small.
#[derive(Debug, Clone)]
pub struct MemorySlots {
    record: BootRecord,
    booted: BootState,
    capacity: usize,
    staging: Option<ImageStaging>,
    /// When set, `finish` refuses every image (a device whose update always fails).
    pub reject_images: bool,
    /// When set, the platform refuses every update with this message (see
    /// [`FirmwareSlots::update_refusal`]).
    pub refuse_updates: Option<String>,
}

impl MemorySlots {
    /// Slots holding `image` in slot 0, committed, each `capacity` bytes large.
    pub fn new(image: ImageInfo, capacity: usize) -> MemorySlots {
        let mut record = BootRecord::new(image);
        record.on_boot();
        MemorySlots {
            booted: record.state(),
            record,
            capacity,
            staging: None,
            reject_images: false,
            refuse_updates: None,
        }
    }

    /// What the bootloader does on a restart; see [`BootRecord::on_boot`].
    pub fn reboot(&mut self) {
        self.staging = None;
        self.record.on_boot();
        self.booted = self.record.state();
    }

    /// The persisted boot bookkeeping.
    pub fn record(&self) -> &BootRecord {
        &self.record
    }

    /// A staged image that crashes on its first boot, before it could commit itself: the
    /// record goes back to the previous image, as the bootloader finds it after that
    /// boot. Returns whether there was such an image. Call it before [`Self::reboot`].
    pub fn crash_staged_image(&mut self) -> bool {
        let staged = !self.record.committed && self.record.trial_boots == 0;
        if staged {
            self.record
                .revert("reverted: the new firmware crashed on its first boot");
        }
        staged
    }
}

impl FirmwareSlots for MemorySlots {
    fn boot_state(&mut self) -> BootState {
        self.record.boot_state_since(&self.booted)
    }

    fn running_image(&mut self) -> ImageInfo {
        self.record.image_in(self.booted.partition)
    }

    fn slot_capacity(&mut self) -> usize {
        self.capacity
    }

    fn begin(&mut self, size: usize) -> Result<(), StorageError> {
        self.staging = Some(ImageStaging::new(size));
        Ok(())
    }

    fn write(&mut self, offset: usize, data: &[u8]) -> Result<(), StorageError> {
        self.staging
            .as_mut()
            .ok_or("no image being written")?
            .accept(offset, data)
    }

    fn finish(&mut self, image: &ImageInfo, commit_timeout_s: u32) -> Result<(), StorageError> {
        let staging = self.staging.take().ok_or("no image being written")?;
        staging.check_complete()?;
        if self.reject_images {
            return Err("image verification failed".into());
        }
        self.record.stage(image.clone(), commit_timeout_s);
        Ok(())
    }

    fn abort(&mut self) {
        self.staging = None;
    }

    fn commit(&mut self) -> Result<(), StorageError> {
        self.record.commit();
        Ok(())
    }

    fn revert(&mut self) -> Result<(), StorageError> {
        self.record.revert("reverted on request");
        Ok(())
    }

    fn update_refusal(&mut self) -> Option<String> {
        self.refuse_updates.clone()
    }
}

/// A whole platform in RAM.
#[derive(Debug, Clone)]
pub struct MemoryPlatform {
    /// Stored configuration layers.
    pub layers: BTreeMap<&'static str, Vec<u8>>,
    /// Files.
    pub files: BTreeMap<String, Vec<u8>>,
    /// Size of the file store.
    pub fs_capacity: u64,
    /// Firmware slots.
    pub slots: MemorySlots,
    /// Last `(pin, level)` the light was driven to.
    pub light: Option<(i64, bool)>,
    /// When set, storing configuration fails (to test error paths).
    pub fail_config_writes: bool,
    /// What `Sys.GetInfo` reports about the system.
    pub facts: SystemFacts,
}

impl MemoryPlatform {
    /// A platform running `image`, with empty storage.
    pub fn new(image: ImageInfo) -> MemoryPlatform {
        MemoryPlatform {
            layers: BTreeMap::new(),
            files: BTreeMap::new(),
            fs_capacity: 64 * 1024,
            slots: MemorySlots::new(image, 1024 * 1024),
            light: None,
            fail_config_writes: false,
            facts: SystemFacts {
                mac: "02:00:00:00:00:01".into(),
                ram_size: 320 * 1024,
                ram_free: 200 * 1024,
                ram_min_free: 180 * 1024,
                wifi: None,
            },
        }
    }

    /// Simulates a restart: the bootloader picks the slot; RAM state (the light) is lost.
    pub fn reboot(&mut self) {
        self.slots.reboot();
        self.light = None;
    }

    fn used(&self) -> u64 {
        self.files.values().map(|f| f.len() as u64).sum()
    }
}

impl ConfigStorage for MemoryPlatform {
    fn load(&mut self, layer: Layer) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.layers.get(layer.name()).cloned())
    }

    fn store(&mut self, layer: Layer, json: &[u8]) -> Result<(), StorageError> {
        if self.fail_config_writes {
            return Err("flash write failed".into());
        }
        self.layers.insert(layer.name(), json.to_vec());
        Ok(())
    }

    fn erase(&mut self, layer: Layer) -> Result<(), StorageError> {
        self.layers.remove(layer.name());
        Ok(())
    }
}

impl FileStore for MemoryPlatform {
    fn list(&mut self) -> Result<Vec<String>, StorageError> {
        Ok(self.files.keys().cloned().collect())
    }

    fn size(&mut self, name: &str) -> Result<Option<usize>, StorageError> {
        Ok(self.files.get(name).map(Vec::len))
    }

    fn read(&mut self, name: &str, offset: usize, len: usize) -> Result<Vec<u8>, StorageError> {
        let file = self.files.get(name).ok_or("no such file")?;
        let start = offset.min(file.len());
        let end = start.saturating_add(len).min(file.len());
        Ok(file[start..end].to_vec())
    }

    fn write(&mut self, name: &str, data: &[u8], append: bool) -> Result<(), StorageError> {
        let replaced = if append {
            0
        } else {
            self.files.get(name).map_or(0, |f| f.len() as u64)
        };
        if self.used() - replaced + data.len() as u64 > self.fs_capacity {
            return Err("file store full".into());
        }
        let file = self.files.entry(name.to_string()).or_default();
        if !append {
            file.clear();
        }
        file.extend_from_slice(data);
        Ok(())
    }

    fn remove(&mut self, name: &str) -> Result<(), StorageError> {
        self.files.remove(name);
        Ok(())
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), StorageError> {
        let file = self.files.remove(from).ok_or("no such file")?;
        self.files.insert(to.to_string(), file);
        Ok(())
    }

    fn capacity(&mut self) -> (u64, u64) {
        (
            self.fs_capacity,
            self.fs_capacity.saturating_sub(self.used()),
        )
    }
}

crate::delegate_firmware_slots!(MemoryPlatform, slots);

impl Light for MemoryPlatform {
    fn set_level(&mut self, pin: i64, level: bool) {
        self.light = Some((pin, level));
    }
}

impl System for MemoryPlatform {
    fn facts(&mut self) -> SystemFacts {
        self.facts.clone()
    }
}
