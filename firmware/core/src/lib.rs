//! The sans-IO engine of a Herd device: the Mongoose OS RPC services of PROTOCOL §9, the
//! layered configuration, firmware update with commit and revert (PROTOCOL §8), the
//! smart-light application and its provisioning, all without touching a socket, a clock or
//! a pin.
//!
//! The same code runs on the ESP32 image, in `herd-agent` on Linux and in simulated
//! fleets. A platform implements the traits in [`platform`] (configuration storage, a file
//! store, two firmware slots, the light, system facts); [`device::Device`] takes what
//! happened (bytes from the cloud, the time, button changes) and returns
//! [`device::Action`]s to perform: frames to send, reboots, downloads. Firmware images are
//! named by their SHA-256 and checked by the engine (size, SHA-256, Ed25519 signature,
//! PROTOCOL §10.4, in [`verify`]) before the platform may boot them; a platform only moves
//! their bytes ([`pull::DownloadRequest`]). Main types: [`device::Device`],
//! [`config::Config`], [`ota::BootRecord`], and [`memory::MemoryPlatform`] for tests and
//! simulations. A device without a file system keeps its configuration and boot record
//! in raw flash ([`flash`]); the ESP-IDF partition table, OTA data and firmware slots of
//! the ESP32 light are in [`idf`], shared with the bench tool that writes new boards.
//! [`ccm::Ccm`] turns a device into a Cloud Communication Module that bridges a host
//! microcontroller on a serial line to the cloud.
//!
//! ```
//! use firmware_core::device::{Action, Device};
//! use firmware_core::memory::MemoryPlatform;
//! use firmware_core::ota::ImageInfo;
//!
//! let platform = MemoryPlatform::new(ImageInfo::default());
//! let mut device = Device::boot(platform, 0);
//! // On connect the device reports its light and firmware (PROTOCOL §4.4).
//! let actions = device.connected(10);
//! assert!(matches!(&actions[0], Action::Send(frame) if frame.contains("Dash.Shadow.Update")));
//! // The cloud turns the light on (PROTOCOL §4.3); the reply reports the new state.
//! let actions = device.receive(br#"{"id":1,"method":"Shadow.Delta","params":{"state":{"on":true}}}"#, 20);
//! assert_eq!(actions, vec![Action::Send(r#"{"id":1,"result":{"on":true}}"#.into())]);
//! assert!(device.light_on());
//! ```
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

#[cfg(test)]
extern crate std;

pub mod ccm;
pub mod config;
pub mod device;
pub mod flash;
pub mod fs;
pub mod idf;
pub mod memory;
pub mod ota;
pub mod platform;
pub mod pull;
pub mod verify;

pub use device::{Action, Device};

/// What exported macros name, for crates that have no `alloc` of their own in scope.
#[doc(hidden)]
pub mod __private {
    pub use alloc::string::String;
}
