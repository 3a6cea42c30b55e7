//! The ESP-IDF flash formats a Herd light lives in, and its firmware slots over them: the
//! partition table, the OTA data that tells the second-stage bootloader which app slot to
//! boot, the header and app descriptor of an app image, and [`FlashSlots`], the
//! [`FirmwareSlots`] of a device whose two app partitions, OTA data and boot record are in
//! one SPI flash.
//!
//! None of this touches a register: the device hands in its flash as a [`Flash`], the
//! bench tool (`herd flash`) builds the same partition table and factory partition, and
//! the host tests run it all on a [`crate::flash::MemoryFlash`].
//!
//! The bootloader boots the slot the newest valid OTA data entry selects. The commit and
//! revert rules are those of [`BootRecord`]: an image staged uncommitted gets one boot.
//! [`FlashSlots::open`] runs them at start-up and, when they choose another slot than the
//! one the bootloader started, rewrites the OTA data and asks for an immediate restart.
//! Entries are written with ESP-IDF's states (`NEW` when staged, `VALID` when committed),
//! so a bootloader built with rollback support agrees with the same one-boot rule.
//!
//! ```
//! use firmware_core::idf::{light_partition_table, PartitionTable};
//!
//! let table = light_partition_table();
//! let bytes = table.to_bytes();
//! assert_eq!(PartitionTable::parse(&bytes).unwrap(), table);
//! assert_eq!(table.find("ota_0").unwrap().offset, 0x20000);
//! ```

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use md5::{Digest as _, Md5};

use crate::flash::{crc32, Flash, Kind, RecordStore, SECTOR_SIZE};
use crate::ota::{BootRecord, BootState, ImageInfo, ImageStaging};
use crate::platform::{FirmwareSlots, StorageError};

/// Where the partition table is on every chip the light runs on.
pub const PARTITION_TABLE_OFFSET: u32 = 0x8000;
/// The most the partition table may take.
pub const PARTITION_TABLE_SIZE: usize = 0xc00;

/// Partition type of an app.
pub const TYPE_APP: u8 = 0x00;
/// Partition type of data.
pub const TYPE_DATA: u8 = 0x01;
/// App subtype of OTA slot `n` is this plus `n`.
pub const SUBTYPE_OTA_0: u8 = 0x10;
/// Data subtype of the OTA data partition.
pub const SUBTYPE_OTA_DATA: u8 = 0x00;
/// Data subtype ESP-IDF leaves to applications ("undefined").
pub const SUBTYPE_UNDEFINED: u8 = 0x06;

/// Label of the light's configuration partition (see [`crate::flash`]).
pub const CONFIG_LABEL: &str = "herdcfg";
/// Label of the OTA data partition.
pub const OTA_DATA_LABEL: &str = "otadata";

const ENTRY: usize = 32;
const ENTRY_MAGIC: [u8; 2] = [0xaa, 0x50];
const MD5_MAGIC: [u8; 2] = [0xeb, 0xeb];

/// One row of the partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Name, at most 16 bytes.
    pub label: String,
    /// [`TYPE_APP`], [`TYPE_DATA`] or a custom type.
    pub kind: u8,
    /// Subtype within the type.
    pub subtype: u8,
    /// Offset in flash.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
    /// Flags (bit 0: encrypted).
    pub flags: u32,
}

impl Partition {
    /// A partition without flags.
    pub fn new(label: &str, kind: u8, subtype: u8, offset: u32, size: u32) -> Partition {
        Partition {
            label: label.into(),
            kind,
            subtype,
            offset,
            size,
            flags: 0,
        }
    }

    /// One past the last byte.
    pub fn end(&self) -> u32 {
        self.offset.saturating_add(self.size)
    }
}

/// An ESP-IDF partition table (binary form, with its MD5 row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionTable {
    /// The rows, in order.
    pub partitions: Vec<Partition>,
}

impl PartitionTable {
    /// The binary table: 32-byte rows, the MD5 row, `0xff` up to [`PARTITION_TABLE_SIZE`].
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(PARTITION_TABLE_SIZE);
        for partition in &self.partitions {
            bytes.extend_from_slice(&ENTRY_MAGIC);
            bytes.push(partition.kind);
            bytes.push(partition.subtype);
            bytes.extend_from_slice(&partition.offset.to_le_bytes());
            bytes.extend_from_slice(&partition.size.to_le_bytes());
            let mut label = [0u8; 16];
            let name = partition.label.as_bytes();
            let n = name.len().min(16);
            label[..n].copy_from_slice(&name[..n]);
            bytes.extend_from_slice(&label);
            bytes.extend_from_slice(&partition.flags.to_le_bytes());
        }
        let digest = Md5::digest(&bytes);
        bytes.extend_from_slice(&MD5_MAGIC);
        bytes.extend_from_slice(&[0xff; 14]);
        bytes.extend_from_slice(&digest);
        bytes.resize(PARTITION_TABLE_SIZE, 0xff);
        bytes
    }

    /// Reads a binary table; checks the MD5 row when there is one.
    pub fn parse(bytes: &[u8]) -> Result<PartitionTable, String> {
        let mut partitions = Vec::new();
        let mut md5 = Md5::new();
        for (n, row) in bytes.chunks_exact(ENTRY).enumerate() {
            if row[..2] == MD5_MAGIC {
                let digest = md5.clone().finalize();
                if row[16..] != digest[..] {
                    return Err("the partition table's MD5 does not match".into());
                }
                continue;
            }
            if row.iter().all(|&b| b == 0xff) {
                return Ok(PartitionTable { partitions });
            }
            if row[..2] != ENTRY_MAGIC {
                return Err(format!("partition table row {n} has no magic"));
            }
            md5.update(row);
            let word =
                |at: usize| u32::from_le_bytes([row[at], row[at + 1], row[at + 2], row[at + 3]]);
            let label = &row[12..28];
            let end = label.iter().position(|&b| b == 0).unwrap_or(label.len());
            partitions.push(Partition {
                label: String::from_utf8_lossy(&label[..end]).into_owned(),
                kind: row[2],
                subtype: row[3],
                offset: word(4),
                size: word(8),
                flags: word(28),
            });
        }
        Err("the partition table has no end".into())
    }

    /// The partition called `label`.
    pub fn find(&self, label: &str) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.label == label)
    }

    /// The first partition of a type and subtype.
    pub fn find_kind(&self, kind: u8, subtype: u8) -> Option<&Partition> {
        self.partitions
            .iter()
            .find(|p| p.kind == kind && p.subtype == subtype)
    }

    /// Where everything [`FlashSlots`] and the configuration need is, or why the table
    /// does not have it.
    pub fn layout(&self) -> Result<Layout, String> {
        let need = |found: Option<&Partition>, what: &str| {
            found
                .cloned()
                .ok_or_else(|| format!("the partition table has no {what} partition"))
        };
        Ok(Layout {
            config: need(self.find(CONFIG_LABEL), CONFIG_LABEL)?,
            ota_data: need(self.find_kind(TYPE_DATA, SUBTYPE_OTA_DATA), "OTA data")?,
            slots: [
                need(self.find_kind(TYPE_APP, SUBTYPE_OTA_0), "ota_0")?,
                need(self.find_kind(TYPE_APP, SUBTYPE_OTA_0 + 1), "ota_1")?,
            ],
        })
    }
}

/// Size of each app slot of the light: two fit in 4 MB with the small partitions before.
pub const LIGHT_SLOT_SIZE: u32 = 0x1e_0000;

/// The light's partition table for a 4 MB (or larger) flash: the configuration records,
/// the OTA data and two app slots, the first of which boots a freshly flashed board.
pub fn light_partition_table() -> PartitionTable {
    PartitionTable {
        partitions: vec![
            Partition::new(
                CONFIG_LABEL,
                TYPE_DATA,
                SUBTYPE_UNDEFINED,
                0x9000,
                crate::flash::CONFIG_PARTITION_SIZE,
            ),
            Partition::new(OTA_DATA_LABEL, TYPE_DATA, SUBTYPE_OTA_DATA, 0xf000, 0x2000),
            Partition::new("ota_0", TYPE_APP, SUBTYPE_OTA_0, 0x2_0000, LIGHT_SLOT_SIZE),
            Partition::new(
                "ota_1",
                TYPE_APP,
                SUBTYPE_OTA_0 + 1,
                0x20_0000,
                LIGHT_SLOT_SIZE,
            ),
        ],
    }
}

/// The partitions the light uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Configuration records and the boot record ([`crate::flash::RecordStore`]).
    pub config: Partition,
    /// ESP-IDF OTA data: two sectors of boot selection.
    pub ota_data: Partition,
    /// The two app slots.
    pub slots: [Partition; 2],
}

/// ESP-IDF's OTA image states (`esp_ota_img_states_t`).
pub mod ota_state {
    /// Staged, not yet booted.
    pub const NEW: u32 = 0;
    /// Booted once, waiting to be confirmed (set by a bootloader with rollback support).
    pub const PENDING_VERIFY: u32 = 1;
    /// Confirmed.
    pub const VALID: u32 = 2;
    /// Given up.
    pub const INVALID: u32 = 3;
    /// Given up by the bootloader.
    pub const ABORTED: u32 = 4;
    /// Not set (erased flash).
    pub const UNDEFINED: u32 = u32::MAX;
}

/// One OTA data entry (`esp_ota_select_entry_t`, 32 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtaSelect {
    /// Sequence number; the slot is `(seq - 1) % 2`.
    pub seq: u32,
    /// State ([`ota_state`]).
    pub state: u32,
}

impl OtaSelect {
    /// Bytes of an entry.
    pub const SIZE: usize = 32;

    /// The CRC ESP-IDF keeps of the sequence number.
    fn crc(seq: u32) -> u32 {
        crc32(u32::MAX, &seq.to_le_bytes())
    }

    /// The entry's bytes.
    pub fn to_bytes(self) -> [u8; 32] {
        let mut bytes = [0xff; 32];
        bytes[..4].copy_from_slice(&self.seq.to_le_bytes());
        bytes[24..28].copy_from_slice(&self.state.to_le_bytes());
        bytes[28..].copy_from_slice(&Self::crc(self.seq).to_le_bytes());
        bytes
    }

    /// A valid entry, or `None` for an erased, torn or given-up one.
    pub fn parse(bytes: &[u8]) -> Option<OtaSelect> {
        let word = |at: usize| {
            bytes
                .get(at..at + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let seq = word(0)?;
        let state = word(24)?;
        let valid = seq != u32::MAX
            && word(28)? == Self::crc(seq)
            && state != ota_state::INVALID
            && state != ota_state::ABORTED;
        valid.then_some(OtaSelect { seq, state })
    }

    /// The app slot this entry selects.
    pub fn slot(self) -> u8 {
        u8::from(self.seq.wrapping_sub(1) % 2 == 1)
    }
}

/// The two entries of the OTA data partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OtaData {
    /// The entries in the first and second sector.
    pub entries: [Option<OtaSelect>; 2],
}

impl OtaData {
    /// Reads both sectors' entries.
    pub fn read(flash: &mut impl Flash, partition: &Partition) -> Result<OtaData, StorageError> {
        let mut data = OtaData::default();
        for (n, entry) in data.entries.iter_mut().enumerate() {
            let mut bytes = [0u8; OtaSelect::SIZE];
            flash.read(partition.offset + n as u32 * SECTOR_SIZE, &mut bytes)?;
            *entry = OtaSelect::parse(&bytes);
        }
        Ok(data)
    }

    /// The newest valid entry and the sector it is in.
    pub fn newest(&self) -> Option<(usize, OtaSelect)> {
        let mut best: Option<(usize, OtaSelect)> = None;
        for (n, entry) in self.entries.iter().enumerate() {
            if let Some(entry) = entry {
                if best.is_none_or(|(_, b)| entry.seq > b.seq) {
                    best = Some((n, *entry));
                }
            }
        }
        best
    }

    /// The slot the bootloader boots: the newest entry's, slot 0 without one.
    pub fn selected(&self) -> u8 {
        self.newest().map_or(0, |(_, entry)| entry.slot())
    }

    /// Selects `slot` with `state`: a new entry with the next sequence number that names
    /// the slot, in the sector the newest entry is not in, so the old selection stays
    /// until the new one is whole.
    pub fn select(
        &mut self,
        flash: &mut impl Flash,
        partition: &Partition,
        slot: u8,
        state: u32,
    ) -> Result<(), StorageError> {
        let (sector, mut seq) = match self.newest() {
            Some((n, entry)) => (1 - n, entry.seq.wrapping_add(1)),
            None => (0, 1),
        };
        if (seq.wrapping_sub(1) % 2) as u8 != slot {
            seq = seq.wrapping_add(1);
        }
        let entry = OtaSelect { seq, state };
        let offset = partition.offset + sector as u32 * SECTOR_SIZE;
        flash.erase(offset, SECTOR_SIZE)?;
        flash.write(offset, &entry.to_bytes())?;
        self.entries[sector] = Some(entry);
        Ok(())
    }
}

/// ESP-IDF chip ids as app image headers carry them.
pub mod chip_id {
    /// ESP32-C3.
    pub const ESP32C3: u16 = 0x0005;
    /// ESP32-C6.
    pub const ESP32C6: u16 = 0x000d;
}

/// The chip id an `arch` name stands for (`esp32c3`, `esp32c6`).
pub fn chip_id_of(arch: &str) -> Option<u16> {
    match arch {
        "esp32c3" => Some(chip_id::ESP32C3),
        "esp32c6" => Some(chip_id::ESP32C6),
        _ => None,
    }
}

/// First byte of an app (or bootloader) image.
pub const IMAGE_MAGIC: u8 = 0xe9;
const APP_DESC_MAGIC: u32 = 0xabcd_5432;
/// Where the app descriptor starts in an app image: after the image header (24 bytes)
/// and the first segment's header (8).
pub const APP_DESC_OFFSET: usize = 32;

/// What an app image's header and descriptor say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppImage {
    /// Chip the image is for.
    pub chip_id: u16,
    /// Segment count.
    pub segments: u8,
    /// Whether a SHA-256 of the image is appended.
    pub hash_appended: bool,
    /// `version` of the app descriptor, if the image has one.
    pub version: Option<String>,
    /// `project_name` of the app descriptor, if the image has one.
    pub project_name: Option<String>,
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

impl AppImage {
    /// Reads the header and descriptor from the first bytes of an image (at least 24; the
    /// descriptor needs 112).
    pub fn parse(head: &[u8]) -> Result<AppImage, String> {
        if head.len() < 24 || head[0] != IMAGE_MAGIC {
            return Err("not an ESP app image (no 0xE9 header)".into());
        }
        let desc = head.get(APP_DESC_OFFSET..);
        let has_desc = desc
            .and_then(|d| d.get(..4))
            .is_some_and(|m| u32::from_le_bytes([m[0], m[1], m[2], m[3]]) == APP_DESC_MAGIC);
        let field = |from: usize, to: usize| {
            has_desc
                .then(|| head.get(APP_DESC_OFFSET + from..APP_DESC_OFFSET + to))
                .flatten()
                .map(c_string)
        };
        Ok(AppImage {
            chip_id: u16::from_le_bytes([head[12], head[13]]),
            segments: head[1],
            hash_appended: head[23] == 1,
            version: field(16, 48),
            project_name: field(48, 80),
        })
    }

    /// The length of the whole image in `flash` at `offset`: header, segments, padding
    /// and checksum to a multiple of 16, and the appended SHA-256.
    pub fn length(flash: &mut impl Flash, offset: u32, limit: u32) -> Result<u32, StorageError> {
        let mut header = [0u8; 24];
        flash.read(offset, &mut header)?;
        let image = AppImage::parse(&header).map_err(StorageError)?;
        let mut position: u32 = 24;
        for _ in 0..image.segments {
            let mut segment = [0u8; 8];
            flash.read(offset + position, &mut segment)?;
            let length = u32::from_le_bytes([segment[4], segment[5], segment[6], segment[7]]);
            position = position
                .checked_add(8)
                .and_then(|p| p.checked_add(length))
                .filter(|&p| p <= limit)
                .ok_or("an image segment runs past its partition")?;
        }
        // One checksum byte, then padding so the total is a multiple of 16.
        position = (position + 1).div_ceil(16) * 16;
        if image.hash_appended {
            position += 32;
        }
        if position > limit {
            return Err("the image runs past its partition".into());
        }
        Ok(position)
    }
}

/// The identity of a raw app image: `fw_id` is the SHA-256 of its bytes (PROTOCOL §10.1);
/// the name and version come from the app descriptor.
pub fn describe_app(head: &[u8], fw_id: String, arch: &str) -> ImageInfo {
    let app = AppImage::parse(head).ok();
    let field = |f: fn(&AppImage) -> Option<String>| {
        app.as_ref().and_then(f).filter(|text| !text.is_empty())
    };
    ImageInfo {
        app: field(|a| a.project_name.clone()).unwrap_or_else(|| "herd-light".into()),
        arch: arch.into(),
        fw_version: field(|a| a.version.clone()).unwrap_or_else(|| {
            let short = fw_id.get(..8).unwrap_or(&fw_id);
            format!("build-{short}")
        }),
        fw_id,
    }
}

/// What [`FlashSlots::open`] found.
// Made once at boot and taken apart at once: boxing the slots would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Opened<F: Flash> {
    /// Run: the bootloader started the slot the boot record chose.
    Run(FlashSlots<F>),
    /// The boot record chose the other slot (a revert, or an image that never got its
    /// commit); the OTA data now selects it. Restart at once, before anything else runs.
    Restart(F),
}

/// Firmware slots in ESP-IDF app partitions (see the module docs).
#[derive(Debug)]
pub struct FlashSlots<F: Flash> {
    flash: F,
    layout: Layout,
    store: RecordStore,
    arch: String,
    ota_data: OtaData,
    record: BootRecord,
    booted: BootState,
    staging: Option<ImageStaging>,
    /// The inactive slot is erased up to here (relative to its start).
    erased: u32,
}

impl<F: Flash> FlashSlots<F> {
    /// Opens the slots at start-up. `running` describes the image the bootloader started
    /// when the boot record does not know it (a freshly flashed board); see
    /// [`FlashSlots::running_from_flash`].
    pub fn open(
        mut flash: F,
        layout: Layout,
        arch: &str,
        mut running: impl FnMut(&mut F, &Partition) -> ImageInfo,
    ) -> Result<Opened<F>, StorageError> {
        let store = RecordStore::new(layout.config.offset, layout.config.size)?;
        let mut ota_data = OtaData::read(&mut flash, &layout.ota_data)?;
        let started = ota_data.selected();
        let stored = store
            .load(&mut flash, Kind::Boot)?
            .and_then(|bytes| serde_json::from_slice::<BootRecord>(&bytes).ok());
        let mut record = match stored {
            Some(record) => record,
            None => {
                let image = running(&mut flash, &layout.slots[usize::from(started)]);
                let mut record = BootRecord::new(image);
                record.images.swap(0, usize::from(started));
                record.active = started;
                record
            }
        };
        if record.images[usize::from(started)].is_none() {
            let slot = &layout.slots[usize::from(started)];
            record.images[usize::from(started)] = Some(running(&mut flash, slot));
        }
        // The record is written before the OTA data, so where they disagree the record
        // says what was meant and the OTA data write was lost.
        let chosen = record.on_boot();
        if chosen != started {
            // The image has not run yet: the restart into it is its boot on trial.
            if !record.committed {
                record.trial_boots = 0;
            }
            store.store(&mut flash, Kind::Boot, &record_bytes(&record)?)?;
            let state = if record.committed {
                ota_state::VALID
            } else {
                ota_state::NEW
            };
            ota_data.select(&mut flash, &layout.ota_data, chosen, state)?;
            return Ok(Opened::Restart(flash));
        }
        store.store(&mut flash, Kind::Boot, &record_bytes(&record)?)?;
        let booted = record.state();
        Ok(Opened::Run(FlashSlots {
            flash,
            layout,
            store,
            arch: arch.into(),
            ota_data,
            record,
            booted,
            staging: None,
            erased: 0,
        }))
    }

    /// Describes the image in `slot` by hashing it: what a board that was just flashed
    /// runs before any update named it. Reads the whole image once.
    pub fn running_from_flash(flash: &mut F, slot: &Partition, arch: &str) -> ImageInfo {
        let mut head = [0u8; 256];
        if flash.read(slot.offset, &mut head).is_err() {
            return describe_app(&[], String::new(), arch);
        }
        let fw_id = match AppImage::length(flash, slot.offset, slot.size) {
            Ok(length) => {
                let mut hash = crate::ota::ContentHash::default();
                let mut buf = [0u8; 1024];
                let mut done = 0;
                let mut ok = true;
                while done < length {
                    let n = (length - done).min(buf.len() as u32) as usize;
                    if flash.read(slot.offset + done, &mut buf[..n]).is_err() {
                        ok = false;
                        break;
                    }
                    hash.update(&buf[..n]);
                    done += n as u32;
                }
                if ok {
                    hash.digest().hex()
                } else {
                    String::new()
                }
            }
            Err(_) => String::new(),
        };
        describe_app(&head, fw_id, arch)
    }

    /// The boot record as persisted.
    pub fn record(&self) -> &BootRecord {
        &self.record
    }

    /// The flash, for the configuration records that share it.
    pub fn flash_mut(&mut self) -> &mut F {
        &mut self.flash
    }

    /// The layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Ends the use of the slots and hands the flash back.
    pub fn into_flash(self) -> F {
        self.flash
    }

    fn persist(&mut self) -> Result<(), StorageError> {
        self.store
            .store(&mut self.flash, Kind::Boot, &record_bytes(&self.record)?)
    }

    fn inactive(&self) -> &Partition {
        &self.layout.slots[usize::from(self.record.inactive())]
    }
}

fn record_bytes(record: &BootRecord) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(record).map_err(|e| StorageError(e.to_string()))
}

impl<F: Flash> FirmwareSlots for FlashSlots<F> {
    fn boot_state(&mut self) -> BootState {
        self.record.boot_state_since(&self.booted)
    }

    fn running_image(&mut self) -> ImageInfo {
        self.record.image_in(self.booted.partition)
    }

    fn slot_capacity(&mut self) -> usize {
        self.inactive().size as usize
    }

    fn begin(&mut self, size: usize) -> Result<(), StorageError> {
        if self.record.inactive() == self.booted.partition {
            return Err(
                "the running image is in the slot an update would overwrite; reboot first".into(),
            );
        }
        if size > self.inactive().size as usize {
            return Err("the image does not fit in the slot".into());
        }
        // Sectors are erased as the image reaches them, so no call blocks for seconds.
        self.erased = 0;
        self.staging = Some(ImageStaging::new(size));
        Ok(())
    }

    fn write(&mut self, offset: usize, data: &[u8]) -> Result<(), StorageError> {
        let staging = self.staging.as_mut().ok_or("no image being written")?;
        staging.accept(offset, data)?;
        let slot = self.inactive().clone();
        let end = u32::try_from(offset + data.len())
            .map_err(|_| StorageError::from("offset too large"))?;
        while self.erased < end {
            self.flash.erase(slot.offset + self.erased, SECTOR_SIZE)?;
            self.erased += SECTOR_SIZE;
        }
        // Flash is programmed in words: a chunk that does not end on one is completed
        // with 0xff, which leaves those bytes programmable by the next chunk.
        let start = offset as u32;
        let aligned_start = start & !3;
        let mut buffer = vec![0xffu8; (start - aligned_start) as usize];
        buffer.extend_from_slice(data);
        while !buffer.len().is_multiple_of(4) {
            buffer.push(0xff);
        }
        self.flash.write(slot.offset + aligned_start, &buffer)
    }

    fn finish(&mut self, image: &ImageInfo, commit_timeout_s: u32) -> Result<(), StorageError> {
        let staging = self.staging.take().ok_or("no image being written")?;
        staging.check_complete()?;
        let app = AppImage::parse(staging.head()).map_err(StorageError)?;
        let expected = chip_id_of(&self.arch);
        if expected.is_some_and(|id| id != app.chip_id) {
            return Err(StorageError(format!(
                "the image is for chip id {}, not for this {}",
                app.chip_id, self.arch
            )));
        }
        let named = describe_app(staging.head(), image.fw_id.clone(), &self.arch);
        let slot = self.record.inactive();
        self.record.stage(named, commit_timeout_s);
        self.persist()?;
        let state = if self.record.committed {
            ota_state::VALID
        } else {
            ota_state::NEW
        };
        self.ota_data
            .select(&mut self.flash, &self.layout.ota_data, slot, state)
    }

    fn abort(&mut self) {
        self.staging = None;
    }

    fn commit(&mut self) -> Result<(), StorageError> {
        self.record.commit();
        self.persist()?;
        let slot = self.record.active;
        self.ota_data.select(
            &mut self.flash,
            &self.layout.ota_data,
            slot,
            ota_state::VALID,
        )
    }

    fn revert(&mut self) -> Result<(), StorageError> {
        self.record.revert("reverted on request");
        self.persist()?;
        let slot = self.record.active;
        if self.ota_data.selected() != slot {
            self.ota_data.select(
                &mut self.flash,
                &self.layout.ota_data,
                slot,
                ota_state::VALID,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flash::MemoryFlash;
    use crate::ota::ContentHash;

    const FLASH: u32 = 0x40_0000;

    /// A small but well-formed app image for `chip` with a descriptor naming `version`.
    pub(crate) fn app_image(chip: u16, version: &str, filler: u8) -> Vec<u8> {
        let mut desc = vec![0u8; 256];
        desc[..4].copy_from_slice(&APP_DESC_MAGIC.to_le_bytes());
        desc[16..16 + version.len()].copy_from_slice(version.as_bytes());
        desc[48..58].copy_from_slice(b"herd-light");
        let code = vec![filler; 700];
        let mut image = vec![IMAGE_MAGIC, 2, 2, 0x1f, 0, 0, 0, 0x42, 0xee, 0, 0, 0];
        image.extend_from_slice(&chip.to_le_bytes());
        image.extend_from_slice(&[0; 9]);
        image.push(1);
        for (addr, data) in [(0x3c00_0020u32, &desc), (0x4200_0120, &code)] {
            image.extend_from_slice(&addr.to_le_bytes());
            image.extend_from_slice(&(data.len() as u32).to_le_bytes());
            image.extend_from_slice(data);
        }
        while (image.len() + 1) % 16 != 0 {
            image.push(0);
        }
        image.push(0xef);
        let digest = ContentHash::of(&image);
        image.extend_from_slice(&digest.0);
        image
    }

    fn flashed_board(app: &[u8]) -> MemoryFlash {
        let table = light_partition_table();
        let mut bytes = vec![0xffu8; FLASH as usize];
        bytes[PARTITION_TABLE_OFFSET as usize..][..PARTITION_TABLE_SIZE]
            .copy_from_slice(&table.to_bytes());
        let slot = table.find("ota_0").unwrap().offset as usize;
        bytes[slot..slot + app.len()].copy_from_slice(app);
        MemoryFlash::from_bytes(bytes)
    }

    fn open(flash: MemoryFlash) -> Opened<MemoryFlash> {
        let layout = light_partition_table().layout().unwrap();
        FlashSlots::open(flash, layout, "esp32c3", |flash, slot| {
            FlashSlots::running_from_flash(flash, slot, "esp32c3")
        })
        .unwrap()
    }

    fn run(flash: MemoryFlash) -> FlashSlots<MemoryFlash> {
        match open(flash) {
            Opened::Run(slots) => slots,
            Opened::Restart(_) => panic!("expected to run"),
        }
    }

    /// Writes `image` into the inactive slot in 1000-byte chunks and stages it.
    fn update(
        slots: &mut FlashSlots<MemoryFlash>,
        image: &[u8],
        commit_timeout_s: u32,
    ) -> Result<(), StorageError> {
        slots.begin(image.len())?;
        for (n, chunk) in image.chunks(1000).enumerate() {
            slots.write(n * 1000, chunk)?;
        }
        let info = ImageInfo {
            fw_id: ContentHash::of(image).hex(),
            ..ImageInfo::default()
        };
        slots.finish(&info, commit_timeout_s)
    }

    #[test]
    fn the_table_round_trips_and_espidf_rows_are_where_expected() {
        let table = light_partition_table();
        let bytes = table.to_bytes();
        assert_eq!(bytes.len(), PARTITION_TABLE_SIZE);
        assert_eq!(&bytes[..4], &[0xaa, 0x50, TYPE_DATA, SUBTYPE_UNDEFINED]);
        assert_eq!(&bytes[32 * 4..32 * 4 + 2], &MD5_MAGIC);
        assert_eq!(PartitionTable::parse(&bytes).unwrap(), table);
        let mut damaged = bytes.clone();
        damaged[5] ^= 1;
        assert!(PartitionTable::parse(&damaged).is_err());
        let layout = table.layout().unwrap();
        assert_eq!(layout.slots[1].offset, 0x20_0000);
        // Everything fits in 4 MB and nothing overlaps.
        let mut parts = table.partitions.clone();
        parts.sort_by_key(|p| p.offset);
        assert!(parts.windows(2).all(|w| w[0].end() <= w[1].offset));
        assert!(parts.last().unwrap().end() <= FLASH);
        assert!(parts[0].offset >= PARTITION_TABLE_OFFSET + 0x1000);
    }

    #[test]
    fn ota_data_entries_match_espidf() {
        // The CRC ESP-IDF computes for sequence 1 (crc32_le(UINT32_MAX, &seq, 4)).
        let entry = OtaSelect {
            seq: 1,
            state: ota_state::VALID,
        };
        let bytes = entry.to_bytes();
        assert_eq!(
            u32::from_le_bytes(bytes[28..].try_into().unwrap()),
            0x4743_989a
        );
        assert_eq!(OtaSelect::parse(&bytes), Some(entry));
        assert_eq!(entry.slot(), 0);
        assert_eq!(OtaSelect { seq: 2, state: 0 }.slot(), 1);
        assert_eq!(OtaSelect::parse(&[0xff; 32]), None);
        let aborted = OtaSelect {
            seq: 3,
            state: ota_state::ABORTED,
        }
        .to_bytes();
        assert_eq!(OtaSelect::parse(&aborted), None);
    }

    #[test]
    fn selecting_alternates_sectors_and_counts_up() {
        let partition = light_partition_table().layout().unwrap().ota_data;
        let mut flash = MemoryFlash::new(FLASH);
        let mut data = OtaData::read(&mut flash, &partition).unwrap();
        assert_eq!(data.selected(), 0);
        data.select(&mut flash, &partition, 1, ota_state::NEW)
            .unwrap();
        data.select(&mut flash, &partition, 1, ota_state::VALID)
            .unwrap();
        data.select(&mut flash, &partition, 0, ota_state::VALID)
            .unwrap();
        let read = OtaData::read(&mut flash, &partition).unwrap();
        assert_eq!(read, data);
        assert_eq!(read.selected(), 0);
        let (_, newest) = read.newest().unwrap();
        assert_eq!(newest.seq, 5);
    }

    #[test]
    fn app_images_are_read_and_measured() {
        let image = app_image(chip_id::ESP32C3, "1.2.3", 7);
        let app = AppImage::parse(&image).unwrap();
        assert_eq!(app.chip_id, chip_id::ESP32C3);
        assert_eq!(app.version.as_deref(), Some("1.2.3"));
        assert_eq!(app.project_name.as_deref(), Some("herd-light"));
        let mut flash = flashed_board(&image);
        assert_eq!(
            AppImage::length(&mut flash, 0x2_0000, LIGHT_SLOT_SIZE).unwrap() as usize,
            image.len()
        );
        assert!(AppImage::parse(b"HERD-IMAGE {}\n and more bytes").is_err());
    }

    #[test]
    fn a_fresh_board_names_its_image_by_its_hash() {
        let image = app_image(chip_id::ESP32C3, "1.0.0", 1);
        let mut slots = run(flashed_board(&image));
        let running = slots.running_image();
        assert_eq!(running.fw_id, ContentHash::of(&image).hex());
        assert_eq!(running.fw_version, "1.0.0");
        assert_eq!(running.arch, "esp32c3");
        assert!(slots.boot_state().committed);
        assert_eq!(slots.boot_state().partition, 0);
    }

    #[test]
    fn an_update_boots_once_uncommitted_and_commits() {
        let mut slots = run(flashed_board(&app_image(chip_id::ESP32C3, "1.0.0", 1)));
        let new = app_image(chip_id::ESP32C3, "2.0.0", 2);
        update(&mut slots, &new, 60).unwrap();
        let flash = slots.into_flash();
        // The bootloader now starts slot 1.
        let ota = light_partition_table().layout().unwrap().ota_data;
        let mut flash = flash;
        assert_eq!(OtaData::read(&mut flash, &ota).unwrap().selected(), 1);
        assert_eq!(&flash.bytes()[0x20_0000..0x20_0000 + new.len()], &new[..]);
        let mut slots = run(flash);
        let state = slots.boot_state();
        assert_eq!(
            (state.partition, state.committed, state.commit_timeout_s),
            (1, false, 60)
        );
        assert_eq!(slots.running_image().fw_version, "2.0.0");
        slots.commit().unwrap();
        let mut slots = run(slots.into_flash());
        assert!(slots.boot_state().committed);
        assert_eq!(slots.boot_state().partition, 1);
        assert_eq!(slots.boot_state().last.unwrap().message, "committed");
    }

    #[test]
    fn an_uncommitted_image_that_restarts_goes_back_to_the_previous_one() {
        let mut slots = run(flashed_board(&app_image(chip_id::ESP32C3, "1.0.0", 1)));
        update(&mut slots, &app_image(chip_id::ESP32C3, "2.0.0", 2), 60).unwrap();
        let slots = run(slots.into_flash());
        // It crashes (or is reset) before it commits: the next start selects slot 0.
        let flash = match open(slots.into_flash()) {
            Opened::Restart(flash) => flash,
            Opened::Run(_) => panic!("expected a restart into the previous image"),
        };
        let mut slots = run(flash);
        let state = slots.boot_state();
        assert_eq!((state.partition, state.committed), (0, true));
        assert!(!state.last.unwrap().ok);
        assert_eq!(slots.running_image().fw_version, "1.0.0");
    }

    #[test]
    fn a_requested_revert_and_a_zero_timeout() {
        let mut slots = run(flashed_board(&app_image(chip_id::ESP32C3, "1.0.0", 1)));
        update(&mut slots, &app_image(chip_id::ESP32C3, "2.0.0", 2), 0).unwrap();
        // A zero commit timeout commits on the first boot.
        let mut slots = run(slots.into_flash());
        assert!(slots.boot_state().committed);
        update(&mut slots, &app_image(chip_id::ESP32C3, "3.0.0", 3), 30).unwrap();
        let mut slots = run(slots.into_flash());
        assert_eq!(slots.running_image().fw_version, "3.0.0");
        slots.revert().unwrap();
        let mut slots = run(slots.into_flash());
        assert_eq!(slots.running_image().fw_version, "2.0.0");
        assert_eq!(slots.boot_state().partition, 1);
    }

    #[test]
    fn images_for_another_chip_or_of_another_kind_are_refused() {
        let mut slots = run(flashed_board(&app_image(chip_id::ESP32C3, "1.0.0", 1)));
        let error = update(&mut slots, &app_image(chip_id::ESP32C6, "2.0.0", 2), 60).unwrap_err();
        assert!(error.0.contains("chip id"), "{error}");
        let error = update(&mut slots, &[0x7f; 2000], 60).unwrap_err();
        assert!(error.0.contains("not an ESP app image"), "{error}");
        // Nothing was staged.
        let mut slots = run(slots.into_flash());
        assert_eq!(slots.boot_state().partition, 0);
        assert_eq!(slots.running_image().fw_version, "1.0.0");
    }

    #[test]
    fn a_power_cut_while_staging_keeps_the_running_image_bootable() {
        let reference = {
            let mut slots = run(flashed_board(&app_image(chip_id::ESP32C3, "1.0.0", 1)));
            let before = slots.flash.touched;
            update(&mut slots, &app_image(chip_id::ESP32C3, "2.0.0", 2), 60).unwrap();
            slots.flash.touched - before
        };
        // Cut at points across the finish (boot record and OTA data writes).
        for cut in (reference.saturating_sub(9000)..=reference).step_by(97) {
            let mut slots = run(flashed_board(&app_image(chip_id::ESP32C3, "1.0.0", 1)));
            slots.flash.cut_power_after(cut);
            let result = update(&mut slots, &app_image(chip_id::ESP32C3, "2.0.0", 2), 60);
            let mut flash = slots.into_flash();
            flash.restore_power();
            let mut slots = match open(flash) {
                Opened::Run(slots) => slots,
                Opened::Restart(flash) => run(flash),
            };
            let version = slots.running_image().fw_version;
            if result.is_ok() {
                assert_eq!(version, "2.0.0", "cut after {cut}");
            } else {
                assert!(
                    version == "1.0.0" || version == "2.0.0",
                    "cut after {cut}: {version}"
                );
            }
        }
    }
}
