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
    /// `dash.ca_cert`: base64 DER of the certificate authority the light checks a
    /// `wss://` server against (see [`ca_cert_from_file`]).
    pub ca_cert: Option<String>,
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
        if let Some(ca) = &self.ca_cert {
            layer["dash"]["ca_cert"] = json!(ca);
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

/// `dash.ca_cert` from a certificate file, PEM or DER. The light keeps one certificate
/// and has no root store of its own, so of a PEM chain (leaf first, as servers send them)
/// it takes the last: the one closest to the root.
pub fn ca_cert_from_file(bytes: &[u8]) -> Result<String, String> {
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::STANDARD;
    if bytes.first() == Some(&0x30) {
        // A DER SEQUENCE: the certificate itself.
        return Ok(engine.encode(bytes));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "neither PEM nor DER".to_string())?;
    let mut last = None;
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let body = &rest[start + "-----BEGIN CERTIFICATE-----".len()..];
        let end = body
            .find("-----END CERTIFICATE-----")
            .ok_or("a PEM certificate without its END line")?;
        let base64: String = body[..end].chars().filter(|c| !c.is_whitespace()).collect();
        let der = engine
            .decode(&base64)
            .map_err(|e| format!("a PEM certificate that is not base64: {e}"))?;
        if der.first() != Some(&0x30) {
            return Err("a PEM certificate that does not hold DER".into());
        }
        last = Some(base64);
        rest = &body[end..];
    }
    last.ok_or_else(|| "no certificate in it (PEM or DER)".into())
}

/// A light reaching `server` over `wss://` checks its certificate chain against
/// `dash.ca_cert` and connects to nothing without one; say so before flashing.
pub fn check_tls(server: &str, ca_cert: Option<&str>) -> Result<(), String> {
    if server.starts_with("wss://") && ca_cert.is_none() {
        return Err(format!(
            "the light would reach {server} over TLS but has no CA certificate to check it with: give --ca-cert, or --device-ca-cert for the light alone (the server's CA or, for --tls-self-signed, its certificate)"
        ));
    }
    Ok(())
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

/// The functions of the light's ELF, to name the code addresses a board prints (a panic's
/// backtrace from esp-backtrace, an exception's `MEPC`/`RA`).
#[derive(Debug, Clone, Default)]
pub struct Symbols {
    /// Start, end and demangled name, sorted by start.
    functions: Vec<(u32, u32, String)>,
}

impl Symbols {
    /// From `(address, size, name)` of each function; names are demangled.
    pub fn new(functions: impl IntoIterator<Item = (u32, u32, String)>) -> Symbols {
        let mut functions: Vec<(u32, u32, String)> = functions
            .into_iter()
            .filter(|(_, size, _)| *size > 0)
            .map(|(start, size, name)| {
                let name = format!("{:#}", rustc_demangle::demangle(&name));
                (start, start.saturating_add(size), name)
            })
            .collect();
        functions.sort_by_key(|f| f.0);
        Symbols { functions }
    }

    /// The function symbols of an ELF.
    pub fn from_elf(elf: &[u8]) -> Result<Symbols, String> {
        use object::{Object as _, ObjectSymbol as _};
        let file = object::File::parse(elf).map_err(|e| format!("not an ELF file: {e}"))?;
        Ok(Symbols::new(
            file.symbols()
                .filter(|s| s.kind() == object::SymbolKind::Text)
                .filter_map(|s| {
                    let start = u32::try_from(s.address()).ok()?;
                    let size = u32::try_from(s.size()).ok()?;
                    Some((start, size, s.name().ok()?.to_string()))
                }),
        ))
    }

    /// The function holding `address`, and how far into it.
    pub fn lookup(&self, address: u32) -> Option<(&str, u32)> {
        let at = self.functions.partition_point(|f| f.0 <= address);
        let (start, end, name) = self.functions.get(at.checked_sub(1)?)?;
        (address < *end).then_some((name.as_str(), address - start))
    }

    /// One line per code address in `line` that falls in a function:
    /// `    0x42001234 - herd_light::main+0x10`.
    pub fn annotate(&self, line: &str) -> Vec<String> {
        let mut found = Vec::new();
        let bytes = line.as_bytes();
        let mut at = 0;
        while let Some(start) = line[at..].find("0x").map(|n| at + n) {
            let digits = bytes[start + 2..]
                .iter()
                .take_while(|b| b.is_ascii_hexdigit())
                .count();
            at = start + 2 + digits;
            if digits != 8 {
                continue;
            }
            let Ok(address) = u32::from_str_radix(&line[start + 2..at], 16) else {
                continue;
            };
            if let Some((name, offset)) = self.lookup(address) {
                found.push(format!("    {address:#010x} - {name}+{offset:#x}"));
            }
        }
        found
    }
}

/// Copies what the board prints on `port` to `out` until `keep_going` says stop (it is
/// asked at least every 200 ms), naming after each line the functions of the code
/// addresses in it when `symbols` has them. With `reset`, the board is restarted into its
/// app first (DTR/RTS), so the log starts at boot. Blocking.
pub fn monitor(
    port: &str,
    baud: u32,
    reset: bool,
    symbols: Option<&Symbols>,
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
    // The line being received, for the addresses in it; the bytes themselves go out as
    // they come, so a line without its end yet is not held back.
    let mut line = Vec::new();
    while keep_going() {
        match serial.read(&mut buffer) {
            Ok(0) => {}
            Ok(n) => {
                let write = |out: &mut dyn Write, bytes: &[u8]| {
                    out.write_all(bytes).map_err(|e| e.to_string())
                };
                let mut rest = &buffer[..n];
                while let Some(end) = rest.iter().position(|&b| b == b'\n') {
                    write(out, &rest[..=end])?;
                    line.extend_from_slice(&rest[..end]);
                    if let Some(symbols) = symbols {
                        for note in symbols.annotate(&String::from_utf8_lossy(&line)) {
                            write(out, format!("{note}\n").as_bytes())?;
                        }
                    }
                    line.clear();
                    rest = &rest[end + 1..];
                }
                write(out, rest)?;
                // A runaway line without an end is not kept whole.
                if line.len() < 4096 {
                    line.extend_from_slice(rest);
                }
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
    fn code_addresses_in_the_log_are_named() {
        let symbols = Symbols::new([
            (
                0x4200_0100,
                0x40,
                "_ZN10herd_light4main17h0123456789abcdefE".to_string(),
            ),
            (0x4200_0200, 0x10, "rust_begin_unwind".to_string()),
            (0x4200_0300, 0, "a_label".to_string()),
        ]);
        assert_eq!(
            symbols.lookup(0x4200_0110),
            Some(("herd_light::main", 0x10))
        );
        assert_eq!(symbols.lookup(0x4200_0140), None);
        assert_eq!(symbols.lookup(0x4200_0300), None);
        assert_eq!(symbols.lookup(0x4000_0000), None);
        assert_eq!(
            symbols.annotate("0x42000104\r"),
            ["    0x42000104 - herd_light::main+0x4"]
        );
        assert_eq!(
            symbols.annotate("MEPC 0x42000208 RA 0x4200010c SP 0x3fc9ff00 0x4200"),
            [
                "    0x42000208 - rust_begin_unwind+0x8",
                "    0x4200010c - herd_light::main+0xc"
            ]
        );
        assert!(symbols.annotate("no addresses 0x 0xzz").is_empty());
    }

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
            ca_cert: Some("MIIB".into()),
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
        assert_eq!(config.get_str("dash.ca_cert"), "MIIB");
        assert_eq!(storage.load(Layer::User).unwrap(), None);
    }

    #[test]
    fn the_ca_certificate_is_taken_from_pem_or_der() {
        use base64::Engine as _;
        let der = [0x30u8, 0x82, 0x01, 0x0a, 1, 2, 3];
        let base64 = base64::engine::general_purpose::STANDARD.encode(der);
        assert_eq!(ca_cert_from_file(&der).unwrap(), base64);
        let leaf = base64::engine::general_purpose::STANDARD.encode([0x30u8, 9]);
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{leaf}\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\n{}\n{}\n-----END CERTIFICATE-----\n",
            &base64[..4],
            &base64[4..]
        );
        assert_eq!(ca_cert_from_file(pem.as_bytes()).unwrap(), base64);
        assert!(ca_cert_from_file(b"hello").is_err());
        assert!(ca_cert_from_file(b"-----BEGIN CERTIFICATE-----\nMIIB").is_err());
        assert!(check_tls("wss://h/api/v2/rpc", None).is_err());
        assert!(check_tls("wss://h/api/v2/rpc", Some("MIIB")).is_ok());
        assert!(check_tls("ws://h/api/v2/rpc", None).is_ok());
    }
}
