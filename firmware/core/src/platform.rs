//! What differs per platform: where configuration and files are kept, how firmware slots
//! work, how the light is driven, what the system reports about itself, and the button.
//!
//! Storage calls are synchronous because the reply to an RPC depends on their outcome
//! (`Config.Save` must not say `saved: true` when the write failed). Implementations must
//! make [`ConfigStorage::store`] atomic: after a power cut the layer is either the old one
//! or the new one, never half of each.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use serde_json::Value;

use crate::config::Layer;
use crate::ota::{BootState, ImageInfo};

/// A storage operation failed; the text is shown to the RPC caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageError(pub String);

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for StorageError {
    fn from(text: &str) -> Self {
        StorageError(text.into())
    }
}

/// Persistent storage of the configuration layers.
pub trait ConfigStorage {
    /// The stored bytes of a layer, `None` if it was never written.
    fn load(&mut self, layer: Layer) -> Result<Option<Vec<u8>>, StorageError>;
    /// Replaces a layer atomically.
    fn store(&mut self, layer: Layer, json: &[u8]) -> Result<(), StorageError>;
    /// Removes a layer (factory reset removes the user layer).
    fn erase(&mut self, layer: Layer) -> Result<(), StorageError>;
}

/// A flat file store such as the SPIFFS/LittleFS partition of a Mongoose OS device.
/// Names are validated by the engine before they get here (see [`crate::fs::valid_name`]).
pub trait FileStore {
    /// Names of all files.
    fn list(&mut self) -> Result<Vec<String>, StorageError>;
    /// Size of a file, `None` if it does not exist.
    fn size(&mut self, name: &str) -> Result<Option<usize>, StorageError>;
    /// Up to `len` bytes from `offset`.
    fn read(&mut self, name: &str, offset: usize, len: usize) -> Result<Vec<u8>, StorageError>;
    /// Writes a whole file, or appends to it.
    fn write(&mut self, name: &str, data: &[u8], append: bool) -> Result<(), StorageError>;
    /// Deletes a file.
    fn remove(&mut self, name: &str) -> Result<(), StorageError>;
    /// Renames a file, replacing `to` if it exists.
    fn rename(&mut self, from: &str, to: &str) -> Result<(), StorageError>;
    /// `(total, free)` bytes.
    fn capacity(&mut self) -> (u64, u64);
}

/// Two firmware slots: the running one and the one an update is written to (PROTOCOL §8).
///
/// [`crate::ota::BootRecord`] holds the commit/revert bookkeeping that every
/// implementation needs; platforms persist it and consult it when they boot.
pub trait FirmwareSlots {
    /// What was booted: slot, whether it is committed, its commit timeout, and the outcome
    /// of the last update.
    fn boot_state(&mut self) -> BootState;
    /// The running image.
    fn running_image(&mut self) -> ImageInfo;
    /// Largest image the inactive slot holds.
    fn slot_capacity(&mut self) -> usize;
    /// Prepares the inactive slot for an image of `size` bytes.
    fn begin(&mut self, size: usize) -> Result<(), StorageError>;
    /// Writes a chunk at `offset`; chunks arrive in order, each exactly once.
    fn write(&mut self, offset: usize, data: &[u8]) -> Result<(), StorageError>;
    /// Makes sure the written image is complete and usable on this platform, and arranges
    /// for the next boot to run it uncommitted. The engine has already checked it against
    /// its size, SHA-256 and signature (PROTOCOL §10.4) and names it in `image`. With
    /// `commit_timeout_s == 0` the new image commits itself when it boots.
    fn finish(&mut self, image: &ImageInfo, commit_timeout_s: u32) -> Result<(), StorageError>;
    /// Discards a partly written image; the boot arrangement stays as it was.
    fn abort(&mut self);
    /// Keeps the running, uncommitted image.
    fn commit(&mut self) -> Result<(), StorageError>;
    /// Arranges for the next boot to run the previous image.
    fn revert(&mut self) -> Result<(), StorageError>;
    /// Why this platform takes no firmware update at all, if it does not; the engine
    /// refuses `OTA.Begin`, `OTA.Update` and `desired.ota` with this message.
    fn update_refusal(&mut self) -> Option<String> {
        None
    }
}

/// Implements [`FirmwareSlots`] for a platform type by handing every call to one of its
/// fields, for platforms that keep their slots in a value of their own:
/// `delegate_firmware_slots!(MyPlatform, slots);`.
#[macro_export]
macro_rules! delegate_firmware_slots {
    ($platform:ty, $field:ident) => {
        impl $crate::platform::FirmwareSlots for $platform {
            fn boot_state(&mut self) -> $crate::ota::BootState {
                $crate::platform::FirmwareSlots::boot_state(&mut self.$field)
            }
            fn running_image(&mut self) -> $crate::ota::ImageInfo {
                $crate::platform::FirmwareSlots::running_image(&mut self.$field)
            }
            fn slot_capacity(&mut self) -> usize {
                $crate::platform::FirmwareSlots::slot_capacity(&mut self.$field)
            }
            fn begin(
                &mut self,
                size: usize,
            ) -> ::core::result::Result<(), $crate::platform::StorageError> {
                $crate::platform::FirmwareSlots::begin(&mut self.$field, size)
            }
            fn write(
                &mut self,
                offset: usize,
                data: &[u8],
            ) -> ::core::result::Result<(), $crate::platform::StorageError> {
                $crate::platform::FirmwareSlots::write(&mut self.$field, offset, data)
            }
            fn finish(
                &mut self,
                image: &$crate::ota::ImageInfo,
                commit_timeout_s: u32,
            ) -> ::core::result::Result<(), $crate::platform::StorageError> {
                $crate::platform::FirmwareSlots::finish(&mut self.$field, image, commit_timeout_s)
            }
            fn abort(&mut self) {
                $crate::platform::FirmwareSlots::abort(&mut self.$field)
            }
            fn commit(&mut self) -> ::core::result::Result<(), $crate::platform::StorageError> {
                $crate::platform::FirmwareSlots::commit(&mut self.$field)
            }
            fn revert(&mut self) -> ::core::result::Result<(), $crate::platform::StorageError> {
                $crate::platform::FirmwareSlots::revert(&mut self.$field)
            }
            fn update_refusal(&mut self) -> ::core::option::Option<$crate::__private::String> {
                $crate::platform::FirmwareSlots::update_refusal(&mut self.$field)
            }
        }
    };
}

/// The light output.
pub trait Light {
    /// Drives `pin` to `level` (already corrected for an inverted light).
    fn set_level(&mut self, pin: i64, level: bool);
}

/// A push button that the platform samples; see [`crate::device::Device::poll_button`].
pub trait Button {
    /// Whether the button is held down right now.
    fn is_pressed(&mut self) -> bool;
}

/// Facts about the running system for `Sys.GetInfo` (PROTOCOL §9).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SystemFacts {
    /// MAC address, as text.
    pub mac: String,
    /// Total RAM in bytes.
    pub ram_size: u64,
    /// Free RAM in bytes.
    pub ram_free: u64,
    /// Lowest free RAM seen since boot.
    pub ram_min_free: u64,
    /// Wi-Fi status object, if the platform has Wi-Fi.
    pub wifi: Option<Value>,
}

/// What the system says about itself.
pub trait System {
    /// Current facts.
    fn facts(&mut self) -> SystemFacts;
    /// Access points in range for `Wifi.Scan`; empty where there is no radio.
    fn wifi_scan(&mut self) -> Vec<Value> {
        Vec::new()
    }
}

/// Everything the engine needs from a platform.
pub trait Platform: ConfigStorage + FileStore + FirmwareSlots + Light + System {}

impl<T: ConfigStorage + FileStore + FirmwareSlots + Light + System> Platform for T {}
