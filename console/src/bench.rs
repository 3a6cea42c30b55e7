//! The bench: a Herd light's whole flash image with its factory configuration, and a
//! board on a serial port to write it to (espflash as a library).
//!
//! [`build_image`] turns the light's ELF into what goes into flash: the ESP-IDF
//! second-stage bootloader espflash ships, the light's partition table
//! ([`firmware_core::idf::light_partition_table`]), the app in slot `ota_0`, blank OTA
//! data (so the new app boots), and the configuration partition holding the factory layer
//! ([`firmware_core::flash::factory_partition`]) that the firmware reads with the same code.
//! [`FlashImage::merged`] is that image as one file; [`Board`] writes it to a board. Nothing
//! here talks to the server: `herd flash` and the console's bench view do the registering.
//!
//! ```
//! use herd_console::bench::Factory;
//!
//! let factory = Factory {
//!     device_id: "0123456789abcdef01234567".into(),
//!     token: "secret".into(),
//!     server: "ws://192.168.1.10:8009/api/v2/rpc".into(),
//!     name: "porch".into(),
//!     wifi: Some(("home".into(), "password".into())),
//!     ..Factory::default()
//! };
//! let layer = factory.layer().unwrap();
//! assert_eq!(layer["dash"]["server"], "ws://192.168.1.10:8009/api/v2/rpc");
//! assert_eq!(layer["wifi"]["sta"]["enable"], true);
//! ```

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use espflash::connection::{Connection, ResetAfterOperation, ResetBeforeOperation};
use espflash::flasher::{FlashData, FlashSettings, FlashSize, Flasher};
use espflash::image_format::idf::IdfBootloaderFormat;
use espflash::image_format::Metadata;
use espflash::target::ProgressCallbacks;
use firmware_core::config::{Config, Object};
use firmware_core::flash::{factory_partition, CONFIG_PARTITION_SIZE};
use firmware_core::idf::{
    light_partition_table, AppImage, CONFIG_LABEL, OTA_DATA_LABEL, PARTITION_TABLE_OFFSET,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub mod provision;

/// The chips the light is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Chip {
    /// ESP32-C3 (`riscv32imc-unknown-none-elf`).
    Esp32c3,
    /// ESP32-C6 (`riscv32imac-unknown-none-elf`).
    Esp32c6,
}

impl Chip {
    /// Both, in the order they are offered.
    pub const ALL: [Chip; 2] = [Chip::Esp32c3, Chip::Esp32c6];

    /// The name `arch` and `--chip` use.
    pub fn name(self) -> &'static str {
        match self {
            Chip::Esp32c3 => "esp32c3",
            Chip::Esp32c6 => "esp32c6",
        }
    }

    /// Reads a `--chip` value.
    pub fn from_name(name: &str) -> Option<Chip> {
        Chip::ALL.into_iter().find(|chip| chip.name() == name)
    }

    /// The Rust target the light is built for on this chip.
    pub fn target(self) -> &'static str {
        match self {
            Chip::Esp32c3 => "riscv32imc-unknown-none-elf",
            Chip::Esp32c6 => "riscv32imac-unknown-none-elf",
        }
    }

    /// Where a release build of the light in a checkout puts its ELF, relative to the
    /// checkout.
    pub fn default_elf(self) -> PathBuf {
        Path::new("firmware/esp/target")
            .join(self.target())
            .join("release/herd-light")
    }

    fn espflash(self) -> espflash::target::Chip {
        match self {
            Chip::Esp32c3 => espflash::target::Chip::Esp32c3,
            Chip::Esp32c6 => espflash::target::Chip::Esp32c6,
        }
    }

    fn from_espflash(chip: espflash::target::Chip) -> Option<Chip> {
        match chip {
            espflash::target::Chip::Esp32c3 => Some(Chip::Esp32c3),
            espflash::target::Chip::Esp32c6 => Some(Chip::Esp32c6),
            _ => None,
        }
    }
}

impl fmt::Display for Chip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What goes into the factory configuration layer of a new light.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Factory {
    /// `device.id`.
    pub device_id: String,
    /// `dash.token`.
    pub token: String,
    /// `dash.server`: the device socket URL the light connects to (`ws://` or `wss://`).
    pub server: String,
    /// `device.name`.
    pub name: String,
    /// `wifi.sta.ssid` and `.pass`; without it the light starts its access point.
    pub wifi: Option<(String, String)>,
    /// `smartlight.pin`, when not the default.
    pub pin: Option<i64>,
    /// `smartlight.inverted`, when not the default.
    pub inverted: Option<bool>,
    /// `update.pubkey`: base64 Ed25519 key updates must be signed with (PROTOCOL §10.4).
    pub update_pubkey: Option<String>,
}

impl Factory {
    /// The factory layer, checked against the firmware's own configuration schema.
    pub fn layer(&self) -> Result<Object, String> {
        let mut layer = json!({
            "device": {"id": self.device_id, "name": self.name},
            "dash": {"enable": true, "server": self.server, "token": self.token},
        });
        if let Some((ssid, pass)) = &self.wifi {
            layer["wifi"] = json!({"sta": {"enable": true, "ssid": ssid, "pass": pass}});
        }
        if let Some(pin) = self.pin {
            layer["smartlight"]["pin"] = json!(pin);
        }
        if let Some(inverted) = self.inverted {
            layer["smartlight"]["inverted"] = json!(inverted);
        }
        if let Some(key) = &self.update_pubkey {
            layer["update"] = json!({"pubkey": key});
        }
        let Value::Object(patch) = layer else {
            unreachable!("built as an object")
        };
        Config::default()
            .factory_layer_with(&patch)
            .map_err(|e| e.to_string())
    }

    /// The configuration partition's bytes.
    pub fn partition(&self) -> Result<Vec<u8>, String> {
        let layer = self.layer()?;
        let json = serde_json::to_vec(&Value::Object(layer)).map_err(|e| e.to_string())?;
        factory_partition(CONFIG_PARTITION_SIZE, &json).map_err(|e| e.to_string())
    }
}

/// The device socket URL for a server the operator reaches at `rest` (its base URL):
/// `http` becomes `ws`, `https` becomes `wss`, the path `/api/v2/rpc` (PROTOCOL §1).
pub fn device_socket_url(rest: &str) -> Result<String, String> {
    let (scheme, rest) = rest
        .split_once("://")
        .ok_or_else(|| format!("{rest} is not a URL"))?;
    let scheme = match scheme {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        other => return Err(format!("cannot reach a server over {other}://")),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() {
        return Err("the server URL has no host".into());
    }
    Ok(format!("{scheme}://{authority}/api/v2/rpc"))
}

/// One piece of the flash image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// What it is: `bootloader`, `partition-table`, a partition's label.
    pub name: String,
    /// Flash offset.
    pub offset: u32,
    /// Bytes.
    pub data: Vec<u8>,
}

/// Everything a new light's flash holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlashImage {
    /// The chip it is for.
    pub chip: Chip,
    /// In flash order.
    pub segments: Vec<Segment>,
    /// The app's version, from its app descriptor.
    pub app_version: String,
    /// SHA-256 of the app image, hex: the `fw_id` the light reports (PROTOCOL §10.1).
    pub app_sha256: String,
}

/// The most an app image may take: CI holds the light to this too.
pub const APP_BUDGET: usize = 1_200 * 1024;

impl FlashImage {
    /// The segment called `name`.
    pub fn segment(&self, name: &str) -> Option<&Segment> {
        self.segments.iter().find(|s| s.name == name)
    }

    /// The app image.
    pub fn app(&self) -> &[u8] {
        self.segment("ota_0").map_or(&[], |s| &s.data)
    }

    /// The whole image as one file from offset 0, gaps filled with `0xff` as erased
    /// flash reads.
    pub fn merged(&self) -> Vec<u8> {
        let end = self
            .segments
            .iter()
            .map(|s| s.offset as usize + s.data.len())
            .max()
            .unwrap_or(0);
        let mut bytes = vec![0xff; end];
        for segment in &self.segments {
            let at = segment.offset as usize;
            bytes[at..at + segment.data.len()].copy_from_slice(&segment.data);
        }
        bytes
    }

    /// Total bytes written to a board.
    pub fn size(&self) -> usize {
        self.segments.iter().map(|s| s.data.len()).sum()
    }
}

/// The chip an ELF was built for, when esp-hal recorded it.
pub fn elf_chip(elf: &[u8]) -> Option<String> {
    Metadata::from_bytes(Some(elf))
        .chip_name()
        .map(str::to_string)
}

/// Builds the whole flash image of a light on `chip` from its ELF and factory
/// configuration (see the module docs).
pub fn build_image(chip: Chip, elf: &[u8], factory: &Factory) -> Result<FlashImage, String> {
    if let Some(built_for) = elf_chip(elf) {
        if built_for != chip.name() {
            return Err(format!(
                "the image was built for {built_for}, not for {chip}"
            ));
        }
    }
    check_app_descriptor(chip, elf)?;
    let table = light_partition_table();
    let layout = table.layout()?;
    // espflash reads the partition table from a file.
    let mut table_file = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    table_file
        .write_all(&table.to_bytes())
        .map_err(|e| e.to_string())?;
    let settings = FlashSettings::new(None, Some(FlashSize::_4Mb), None);
    let flash_data = FlashData::new(
        settings,
        0,
        None,
        chip.espflash(),
        chip.espflash().default_xtal_frequency(),
    );
    let format = IdfBootloaderFormat::new(
        elf,
        &flash_data,
        Some(table_file.path()),
        None,
        Some(PARTITION_TABLE_OFFSET),
        Some("ota_0"),
    )
    .map_err(|e| format!("cannot make an ESP image of it: {e}"))?;
    let mut segments = Vec::new();
    for (n, segment) in format.flash_segments().enumerate() {
        let name = ["bootloader", "partition-table", "ota_0"]
            .get(n)
            .copied()
            .unwrap_or("extra");
        segments.push(Segment {
            name: name.into(),
            offset: segment.addr,
            data: segment.data().to_vec(),
        });
    }
    let app = segments
        .iter()
        .find(|s| s.name == "ota_0")
        .ok_or("espflash made no app segment")?;
    if app.offset != layout.slots[0].offset {
        return Err(format!(
            "the app landed at {:#x}, not in ota_0 at {:#x}",
            app.offset, layout.slots[0].offset
        ));
    }
    if app.data.len() > APP_BUDGET || app.data.len() > layout.slots[0].size as usize {
        return Err(format!(
            "the app takes {} bytes, more than the {} allowed",
            app.data.len(),
            APP_BUDGET.min(layout.slots[0].size as usize)
        ));
    }
    let described = AppImage::parse(&app.data)?;
    let app_sha256 = hex(&Sha256::digest(&app.data));
    let app_version = described.version.unwrap_or_default();
    segments.push(Segment {
        name: CONFIG_LABEL.into(),
        offset: layout.config.offset,
        data: factory.partition()?,
    });
    segments.push(Segment {
        name: OTA_DATA_LABEL.into(),
        offset: layout.ota_data.offset,
        data: vec![0xff; layout.ota_data.size as usize],
    });
    segments.sort_by_key(|s| s.offset);
    Ok(FlashImage {
        chip,
        segments,
        app_version,
        app_sha256,
    })
}

/// The light's app descriptor (esp-bootloader-esp-idf's `.flash.appdesc`) must be in the
/// chip's flash-mapped memory: the bootloader finds the version there, and espflash stops
/// the process on an ELF whose descriptor lies anywhere else (an image for another chip).
fn check_app_descriptor(chip: Chip, elf: &[u8]) -> Result<(), String> {
    use object::{Object as _, ObjectSection as _};
    let file = object::File::parse(elf).map_err(|e| format!("not an ELF file: {e}"))?;
    let descriptor = file
        .section_by_name(".flash.appdesc")
        .ok_or("the ELF has no app descriptor (.flash.appdesc): not a Herd light image")?;
    let address = u32::try_from(descriptor.address())
        .map_err(|_| "the app descriptor lies beyond 32-bit addresses".to_string())?;
    if !chip.espflash().addr_is_flash(address) {
        return Err(format!(
            "the app descriptor at {address:#x} is not in the {chip}'s flash: built for another chip?"
        ));
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A serial port a board may be on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// Device path, e.g. `/dev/ttyACM0`.
    pub name: String,
    /// `usb 303a:1001 Espressif USB JTAG/serial debug unit`, `pci`, `bluetooth` or `unknown`.
    pub kind: String,
    /// Whether it looks like an Espressif board (their USB vendor id, or a common
    /// USB-serial bridge).
    pub likely_board: bool,
}

/// USB vendor ids of Espressif and of the USB-serial bridges their boards carry.
const BOARD_VENDORS: [u16; 4] = [0x303a, 0x10c4, 0x1a86, 0x0403];

/// The serial ports of this machine, likely boards first.
pub fn list_ports() -> Result<Vec<Port>, String> {
    let ports = serialport::available_ports().map_err(|e| e.to_string())?;
    let mut ports: Vec<Port> = ports
        .into_iter()
        .map(|port| {
            let (kind, likely_board) = match &port.port_type {
                serialport::SerialPortType::UsbPort(usb) => {
                    let mut kind = format!("usb {:04x}:{:04x}", usb.vid, usb.pid);
                    for part in [&usb.manufacturer, &usb.product].into_iter().flatten() {
                        kind.push(' ');
                        kind.push_str(part);
                    }
                    (kind, BOARD_VENDORS.contains(&usb.vid))
                }
                serialport::SerialPortType::PciPort => ("pci".into(), false),
                serialport::SerialPortType::BluetoothPort => ("bluetooth".into(), false),
                serialport::SerialPortType::Unknown => ("unknown".into(), false),
            };
            Port {
                name: port.port_name,
                kind,
                likely_board,
            }
        })
        .collect();
    ports.sort_by(|a, b| {
        b.likely_board
            .cmp(&a.likely_board)
            .then(a.name.cmp(&b.name))
    });
    Ok(ports)
}

/// The step of a flash that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Opening the port, syncing with the ROM loader, finding the chip.
    Connect,
    /// The image did not suit the board.
    Image,
    /// Writing or verifying flash.
    Write,
    /// Resetting the board into the new app.
    Reset,
}

/// A failed step and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchError {
    /// Which step.
    pub step: Step,
    /// Why.
    pub message: String,
}

impl BenchError {
    fn new(step: Step, message: impl fmt::Display) -> BenchError {
        BenchError {
            step,
            message: message.to_string(),
        }
    }
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// How to reach the ROM loader on a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortOptions {
    /// Device path.
    pub port: String,
    /// Baud rate after connecting (115200 to connect).
    pub baud: u32,
    /// Whether to reset the board into its loader with DTR/RTS first (off for a
    /// board already held in download mode, and for the test stand-in).
    pub reset_into_loader: bool,
    /// Whether to upload espflash's RAM stub loader (faster, compressed writes).
    pub stub: bool,
}

impl PortOptions {
    /// The usual: reset into the loader, the stub, 460800 baud.
    pub fn new(port: impl Into<String>) -> PortOptions {
        PortOptions {
            port: port.into(),
            baud: 460_800,
            reset_into_loader: true,
            stub: true,
        }
    }
}

/// A board in its ROM loader, ready to be written.
pub struct Board {
    flasher: Flasher,
    chip: Chip,
    stub: bool,
}

impl fmt::Debug for Board {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Board").field("chip", &self.chip).finish()
    }
}

impl Board {
    /// Opens the port, syncs with the loader and finds the chip; `expected` refuses any
    /// other. Blocking.
    pub fn connect(options: &PortOptions, expected: Option<Chip>) -> Result<Board, BenchError> {
        let connect = |e: &dyn fmt::Display| {
            BenchError::new(
                Step::Connect,
                format!("cannot connect to {}: {e}", options.port),
            )
        };
        let serial = serialport::new(&options.port, 115_200)
            .timeout(Duration::from_secs(3))
            .open_native()
            .map_err(|e| connect(&e))?;
        // The USB ids choose how the board is reset: the built-in USB-Serial-JTAG of the
        // C3 and C6 needs another sequence than a USB-UART bridge's DTR/RTS.
        let port_info = serialport::available_ports()
            .unwrap_or_default()
            .into_iter()
            .find(|p| p.port_name == options.port)
            .and_then(|p| match p.port_type {
                serialport::SerialPortType::UsbPort(usb) => Some(usb),
                _ => None,
            })
            .unwrap_or(serialport::UsbPortInfo {
                vid: 0,
                pid: 0,
                serial_number: None,
                manufacturer: None,
                product: None,
            });
        let before = if options.reset_into_loader {
            ResetBeforeOperation::DefaultReset
        } else {
            ResetBeforeOperation::NoReset
        };
        let after = if options.reset_into_loader {
            ResetAfterOperation::HardReset
        } else {
            ResetAfterOperation::NoReset
        };
        let connection = Connection::new(serial, port_info, after, before, 115_200);
        let flasher = Flasher::connect(
            connection,
            options.stub,
            true,
            false,
            expected.map(Chip::espflash),
            (options.baud > 115_200).then_some(options.baud),
        )
        .map_err(|e| connect(&e))?;
        let found = flasher.chip();
        let chip = Chip::from_espflash(found).ok_or_else(|| {
            BenchError::new(
                Step::Image,
                format!("the board is an {found}; the light is built for esp32c3 and esp32c6"),
            )
        })?;
        Ok(Board {
            flasher,
            chip,
            stub: options.stub,
        })
    }

    /// The chip found.
    pub fn chip(&self) -> Chip {
        self.chip
    }

    /// Writes every segment of `image` in one session, verifying each, reporting to
    /// `progress`. Blocking.
    pub fn write(
        &mut self,
        image: &FlashImage,
        progress: &mut dyn Progress,
    ) -> Result<(), BenchError> {
        if image.chip != self.chip {
            return Err(BenchError::new(
                Step::Image,
                format!(
                    "the image is for {}, the board is an {}",
                    image.chip, self.chip
                ),
            ));
        }
        let segments: Vec<espflash::image_format::Segment<'_>> = image
            .segments
            .iter()
            .map(|s| espflash::image_format::Segment::new(s.offset, &s.data))
            .collect();
        let mut callbacks = Callbacks {
            image,
            progress,
            current: 0,
            done_before: 0,
            blocks: 1,
        };
        self.flasher
            .write_bins_to_flash(&segments, &mut callbacks)
            .map_err(|e| BenchError::new(Step::Write, format!("writing flash failed: {e}")))
    }

    /// Restarts the board into its app.
    pub fn reset(self) -> Result<(), BenchError> {
        let mut connection = self.flasher.into_connection();
        let chip = self.chip.espflash();
        connection
            .reset_after(self.stub, chip)
            .map_err(|e| BenchError::new(Step::Reset, format!("cannot reset the board: {e}")))
    }
}

/// Progress of a write, in bytes of the whole image.
pub trait Progress: Send {
    /// `done` of `total` bytes are written; `segment` is being written.
    fn advance(&mut self, segment: &str, done: usize, total: usize);
    /// The segment just written is being verified.
    fn verifying(&mut self, _segment: &str) {}
}

/// Progress that goes nowhere.
#[derive(Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn advance(&mut self, _segment: &str, _done: usize, _total: usize) {}
}

struct Callbacks<'a> {
    image: &'a FlashImage,
    progress: &'a mut dyn Progress,
    current: usize,
    done_before: usize,
    /// Blocks espflash sends the current segment in.
    blocks: usize,
}

impl Callbacks<'_> {
    fn name(&self) -> &str {
        self.image
            .segments
            .get(self.current)
            .map_or("", |s| s.name.as_str())
    }
}

impl ProgressCallbacks for Callbacks<'_> {
    fn init(&mut self, addr: u32, total: usize) {
        self.blocks = total.max(1);
        if let Some(n) = self.image.segments.iter().position(|s| s.offset == addr) {
            self.current = n;
            self.done_before = self.image.segments[..n].iter().map(|s| s.data.len()).sum();
        }
        let name = self.name().to_string();
        self.progress
            .advance(&name, self.done_before, self.image.size());
    }

    fn update(&mut self, current: usize) {
        // espflash counts the blocks of the (possibly compressed) segment; scale to bytes.
        let segment = self
            .image
            .segments
            .get(self.current)
            .map_or(0, |s| s.data.len());
        let name = self.name().to_string();
        let done = self.done_before + segment * current.min(self.blocks) / self.blocks;
        self.progress.advance(&name, done, self.image.size());
    }

    fn verifying(&mut self) {
        let name = self.name().to_string();
        self.progress.verifying(&name);
    }

    fn finish(&mut self, _skipped: bool) {
        let segment = self
            .image
            .segments
            .get(self.current)
            .map_or(0, |s| s.data.len());
        let name = self.name().to_string();
        self.progress
            .advance(&name, self.done_before + segment, self.image.size());
    }
}

/// Copies what the board prints on `port` to `out` until `keep_going` says stop (it is
/// asked at least every 200 ms). With `reset`, the board is restarted into its app first
/// (DTR/RTS), so the log starts at boot. Blocking.
pub fn monitor(
    port: &str,
    baud: u32,
    reset: bool,
    out: &mut dyn Write,
    keep_going: &mut dyn FnMut() -> bool,
) -> Result<(), String> {
    let mut serial = serialport::new(port, baud)
        .timeout(Duration::from_millis(200))
        .open_native()
        .map_err(|e| format!("cannot open {port}: {e}"))?;
    if reset {
        use serialport::SerialPort as _;
        let mut pulse = || -> serialport::Result<()> {
            serial.write_data_terminal_ready(false)?;
            serial.write_request_to_send(true)?;
            std::thread::sleep(Duration::from_millis(100));
            serial.write_request_to_send(false)
        };
        pulse().map_err(|e| format!("cannot reset the board on {port}: {e}"))?;
    }
    let mut buffer = [0u8; 1024];
    while keep_going() {
        match serial.read(&mut buffer) {
            Ok(0) => {}
            Ok(n) => {
                out.write_all(&buffer[..n]).map_err(|e| e.to_string())?;
                out.flush().map_err(|e| e.to_string())?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading {port} failed: {e}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use firmware_core::config::Layer;
    use firmware_core::flash::{FlashConfig, MemoryFlash};
    use firmware_core::platform::ConfigStorage;

    #[test]
    fn socket_urls_follow_the_rest_url() {
        assert_eq!(
            device_socket_url("http://10.0.0.2:8009").unwrap(),
            "ws://10.0.0.2:8009/api/v2/rpc"
        );
        assert_eq!(
            device_socket_url("https://herd.example/some/path").unwrap(),
            "wss://herd.example/api/v2/rpc"
        );
        assert!(device_socket_url("ftp://x").is_err());
        assert!(device_socket_url("herd.example").is_err());
    }

    #[test]
    fn the_factory_layer_is_checked_against_the_firmware_schema() {
        let factory = Factory {
            pin: Some(5),
            inverted: Some(true),
            ..Factory::default()
        };
        let layer = factory.layer().unwrap();
        assert_eq!(layer["smartlight"], json!({"pin": 5, "inverted": true}));
        assert!(layer.get("wifi").is_none());
    }

    #[test]
    fn the_firmware_reads_the_factory_partition_back() {
        let factory = Factory {
            device_id: "0123456789abcdef01234567".into(),
            token: "tok".into(),
            server: "wss://herd.example/api/v2/rpc".into(),
            name: "porch".into(),
            wifi: Some(("home".into(), "secret".into())),
            pin: Some(3),
            inverted: Some(true),
            update_pubkey: Some("AAAA".into()),
        };
        let partition = factory.partition().unwrap();
        let mut storage =
            FlashConfig::new(MemoryFlash::from_bytes(partition), 0, CONFIG_PARTITION_SIZE);
        let bytes = storage
            .load(Layer::Factory)
            .unwrap()
            .expect("a factory layer");
        let Value::Object(stored) = serde_json::from_slice(&bytes).unwrap() else {
            panic!("not an object")
        };
        let config = Config::new(stored, Object::new());
        assert_eq!(config.get_str("dash.token"), "tok");
        assert_eq!(
            config.get_str("dash.server"),
            "wss://herd.example/api/v2/rpc"
        );
        assert_eq!(config.get_str("wifi.sta.ssid"), "home");
        assert!(config.get_bool("wifi.sta.enable"));
        assert_eq!(config.get_i64("smartlight.pin"), 3);
        assert!(config.get_bool("smartlight.inverted"));
        assert_eq!(config.get_str("update.pubkey"), "AAAA");
        assert_eq!(storage.load(Layer::User).unwrap(), None);
    }
}
