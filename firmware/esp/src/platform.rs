//! The light's [`Platform`]: configuration records and firmware slots in the SPI flash
//! (the layouts live in `firmware_core::flash` and `firmware_core::idf`, tested on the
//! host), the light on a configurable GPIO, the boot button, and what the system says
//! about itself. Only register access is here.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;

use critical_section::Mutex;
use embedded_storage::nor_flash::{NorFlash, ReadNorFlash};
use esp_hal::gpio::{AnyPin, Input, InputConfig, Level, Output, OutputConfig, Pull};
use esp_storage::FlashStorage;
use firmware_core::config::Layer;
use firmware_core::flash::{Flash, Kind, RecordStore};
use firmware_core::idf::FlashSlots;
use firmware_core::platform::{
    Button, ConfigStorage, FileStore, Light, StorageError, System, SystemFacts,
};
use serde_json::{json, Value};

/// `arch` as `Sys.GetInfo` reports it and the chip id update images are checked for.
#[cfg(feature = "esp32c3")]
pub const ARCH: &str = "esp32c3";
/// `arch` as `Sys.GetInfo` reports it and the chip id update images are checked for.
#[cfg(feature = "esp32c6")]
pub const ARCH: &str = "esp32c6";

/// GPIOs a light may not take: the SPI flash and, on the C3, USB.
#[cfg(feature = "esp32c3")]
const RESERVED_PINS: &[i64] = &[12, 13, 14, 15, 16, 17, 18, 19];
#[cfg(feature = "esp32c6")]
const RESERVED_PINS: &[i64] = &[12, 13, 24, 25, 26, 27, 28, 29, 30];
#[cfg(feature = "esp32c3")]
const MAX_PIN: i64 = 21;
#[cfg(feature = "esp32c6")]
const MAX_PIN: i64 = 30;

/// The SPI flash as the record store and slots address it (absolute offsets).
pub struct EspFlash {
    storage: FlashStorage<'static>,
}

impl EspFlash {
    /// The flash behind `storage`.
    pub fn new(storage: FlashStorage<'static>) -> EspFlash {
        EspFlash { storage }
    }
}

fn flash_error(what: &str, offset: u32) -> StorageError {
    StorageError(format!("flash {what} failed at {offset:#x}"))
}

impl Flash for EspFlash {
    fn capacity(&self) -> u32 {
        self.storage.capacity() as u32
    }

    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), StorageError> {
        ReadNorFlash::read(&mut self.storage, offset, buf).map_err(|_| flash_error("read", offset))
    }

    fn erase(&mut self, offset: u32, len: u32) -> Result<(), StorageError> {
        NorFlash::erase(&mut self.storage, offset, offset + len)
            .map_err(|_| flash_error("erase", offset))
    }

    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), StorageError> {
        NorFlash::write(&mut self.storage, offset, data).map_err(|_| flash_error("write", offset))
    }
}

/// What the network side tells `Sys.GetInfo` (updated by the Wi-Fi task).
#[derive(Debug, Clone, Default)]
pub struct WifiStatus {
    /// Network joined, or the access point offered.
    pub ssid: String,
    /// `"sta"` or `"ap"`.
    pub mode: &'static str,
    /// IPv4 address, when there is one.
    pub ip: String,
    /// Whether the station is associated.
    pub connected: bool,
}

/// Shared between the network tasks and the platform.
pub static WIFI: Mutex<RefCell<Option<WifiStatus>>> = Mutex::new(RefCell::new(None));

/// The light's platform.
pub struct EspPlatform {
    /// Firmware slots; they own the flash, which the configuration records share.
    pub slots: FlashSlots<EspFlash>,
    records: RecordStore,
    light: Option<(i64, Output<'static>)>,
    mac: String,
    heap_total: u64,
    heap_low: u64,
}

impl EspPlatform {
    /// The platform over opened slots.
    pub fn new(
        slots: FlashSlots<EspFlash>,
        mac: String,
        heap_total: usize,
    ) -> Result<EspPlatform, StorageError> {
        let config = slots.layout().config.clone();
        let records = RecordStore::new(config.offset, config.size)?;
        Ok(EspPlatform {
            slots,
            records,
            light: None,
            mac,
            heap_total: heap_total as u64,
            heap_low: u64::MAX,
        })
    }
}

impl ConfigStorage for EspPlatform {
    fn load(&mut self, layer: Layer) -> Result<Option<Vec<u8>>, StorageError> {
        self.records
            .load(self.slots.flash_mut(), Kind::of_layer(layer))
    }

    fn store(&mut self, layer: Layer, json: &[u8]) -> Result<(), StorageError> {
        self.records
            .store(self.slots.flash_mut(), Kind::of_layer(layer), json)
    }

    fn erase(&mut self, layer: Layer) -> Result<(), StorageError> {
        self.records
            .remove(self.slots.flash_mut(), Kind::of_layer(layer))
    }
}

/// The light keeps no files: its flash holds the two app slots and the configuration.
impl FileStore for EspPlatform {
    fn list(&mut self) -> Result<Vec<String>, StorageError> {
        Ok(Vec::new())
    }
    fn size(&mut self, _name: &str) -> Result<Option<usize>, StorageError> {
        Ok(None)
    }
    fn read(&mut self, _name: &str, _offset: usize, _len: usize) -> Result<Vec<u8>, StorageError> {
        Err("this device has no file store".into())
    }
    fn write(&mut self, _name: &str, _data: &[u8], _append: bool) -> Result<(), StorageError> {
        Err("this device has no file store".into())
    }
    fn remove(&mut self, _name: &str) -> Result<(), StorageError> {
        Err("this device has no file store".into())
    }
    fn rename(&mut self, _from: &str, _to: &str) -> Result<(), StorageError> {
        Err("this device has no file store".into())
    }
    fn capacity(&mut self) -> (u64, u64) {
        (0, 0)
    }
}

firmware_core::delegate_firmware_slots!(EspPlatform, slots);

impl Light for EspPlatform {
    fn set_level(&mut self, pin: i64, level: bool) {
        let level = if level { Level::High } else { Level::Low };
        if let Some((current, output)) = &mut self.light {
            if *current == pin {
                output.set_level(level);
                return;
            }
        }
        // The pin is configuration (smartlight.pin): take it by number, refusing those the
        // flash and USB use.
        if !(0..=MAX_PIN).contains(&pin) || RESERVED_PINS.contains(&pin) {
            log::warn!("smartlight.pin {pin} cannot drive a light on this chip");
            self.light = None;
            return;
        }
        self.light = None;
        // SAFETY: the pin is not reserved and no other driver in this firmware holds it
        // (the button pin is refused by `main` when it equals the light's).
        let any = unsafe { AnyPin::steal(pin as u8) };
        let output = Output::new(any, level, OutputConfig::default());
        self.light = Some((pin, output));
    }
}

impl System for EspPlatform {
    fn facts(&mut self) -> SystemFacts {
        let free = esp_alloc::HEAP.free() as u64;
        self.heap_low = self.heap_low.min(free);
        let wifi = critical_section::with(|cs| WIFI.borrow_ref(cs).clone()).map(|status| {
            json!({
                "ssid": status.ssid,
                "mode": status.mode,
                "ip": status.ip,
                "connected": status.connected,
            })
        });
        SystemFacts {
            mac: self.mac.clone(),
            ram_size: self.heap_total,
            ram_free: free,
            ram_min_free: self.heap_low,
            wifi,
        }
    }

    fn wifi_scan(&mut self) -> Vec<Value> {
        Vec::new()
    }
}

/// The boot button: held low when pressed.
pub struct BootButton {
    input: Input<'static>,
}

impl BootButton {
    /// The button on GPIO `pin`.
    pub fn new(pin: u8) -> BootButton {
        // SAFETY: the button pin is only taken here.
        let any = unsafe { AnyPin::steal(pin) };
        BootButton {
            input: Input::new(any, InputConfig::default().with_pull(Pull::Up)),
        }
    }
}

impl Button for BootButton {
    fn is_pressed(&mut self) -> bool {
        self.input.is_low()
    }
}
