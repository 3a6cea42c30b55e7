//! Firmware update (PROTOCOL §8): the transfer state machine behind `OTA.Begin`,
//! `OTA.Write`, `OTA.End` and `OTA.Status`, and the boot bookkeeping that makes an
//! uncommitted image revert.
//!
//! [`BootRecord`] is pure data plus rules; a platform persists it next to its slots and
//! calls [`BootRecord::on_boot`] before running anything. An image that boots uncommitted
//! gets exactly one boot: if the device starts again without an `OTA.Commit` in between
//! (crash, power cut, commit timeout, reboot), the previous slot runs.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::platform::{FirmwareSlots, StorageError};
use protocol::codes;

/// Default inactivity timeout of a transfer, in seconds, when `OTA.Begin` names none.
pub const DEFAULT_TRANSFER_TIMEOUT_S: u64 = 600;

/// Identity of a firmware image, as `Sys.GetInfo` and `reported.ota` show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// Application name.
    pub app: String,
    /// Architecture, e.g. `esp32c3` or `x86_64`.
    pub arch: String,
    /// Version text.
    pub fw_version: String,
    /// Build id; Herd uses a content hash.
    pub fw_id: String,
}

/// Outcome of the last update, reported once in `reported.ota`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateOutcome {
    /// Committed (true) or reverted/failed (false).
    pub ok: bool,
    /// What happened, for people.
    pub message: String,
}

/// What the running boot is (PROTOCOL §4.4 `partition`, `is_committed`, `commit_timeout`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootState {
    /// Slot the running image was booted from.
    pub partition: u8,
    /// Whether the running image is committed.
    pub committed: bool,
    /// Seconds the running, uncommitted image has to get an `OTA.Commit`.
    pub commit_timeout_s: u32,
    /// Outcome of the last update, if there was one.
    pub last: Option<UpdateOutcome>,
}

/// Which slot boots next and whether it is on trial. Persist it atomically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootRecord {
    /// Slot to boot (0 or 1).
    pub active: u8,
    /// Whether the active slot is committed.
    pub committed: bool,
    /// Commit timeout of the active, uncommitted slot.
    #[serde(default)]
    pub commit_timeout_s: u32,
    /// Boots of the active slot while uncommitted.
    #[serde(default)]
    pub trial_boots: u32,
    /// What each slot holds.
    #[serde(default)]
    pub images: [Option<ImageInfo>; 2],
    /// Outcome of the last update.
    #[serde(default)]
    pub last: Option<UpdateOutcome>,
}

impl BootRecord {
    /// A device running `image` from slot 0, committed.
    pub fn new(image: ImageInfo) -> BootRecord {
        BootRecord {
            active: 0,
            committed: true,
            commit_timeout_s: 0,
            trial_boots: 0,
            images: [Some(image), None],
            last: None,
        }
    }

    /// The slot an update is written to.
    pub fn inactive(&self) -> u8 {
        1 - self.active.min(1)
    }

    /// After a verified transfer: the next boot runs `image` from the inactive slot,
    /// uncommitted.
    pub fn stage(&mut self, image: ImageInfo, commit_timeout_s: u32) {
        let slot = self.inactive();
        self.images[usize::from(slot)] = Some(image);
        self.active = slot;
        self.committed = false;
        self.commit_timeout_s = commit_timeout_s;
        self.trial_boots = 0;
        self.last = None;
    }

    /// Called once per boot before the image runs; returns the slot to run.
    pub fn on_boot(&mut self) -> u8 {
        self.active = self.active.min(1);
        if !self.committed {
            if self.commit_timeout_s == 0 {
                // PROTOCOL §8 leaves commit to the cloud; Mongoose OS treats a zero commit
                // timeout as "commit on first boot", and so do we.
                self.commit();
            } else if self.trial_boots >= 1 {
                self.revert("reverted: the new firmware restarted before it was committed");
            } else {
                self.trial_boots += 1;
            }
        }
        self.active
    }

    /// Keeps the active image.
    pub fn commit(&mut self) {
        if !self.committed {
            self.committed = true;
            self.trial_boots = 0;
            self.last = Some(UpdateOutcome {
                ok: true,
                message: "committed".into(),
            });
        }
    }

    /// Goes back to the other slot if the active one is uncommitted.
    pub fn revert(&mut self, message: &str) {
        if !self.committed {
            self.active = self.inactive();
            self.committed = true;
            self.trial_boots = 0;
            self.commit_timeout_s = 0;
            self.last = Some(UpdateOutcome {
                ok: false,
                message: message.into(),
            });
        }
    }

    /// The running boot as the engine sees it.
    pub fn state(&self) -> BootState {
        BootState {
            partition: self.active,
            committed: self.committed,
            commit_timeout_s: if self.committed {
                0
            } else {
                self.commit_timeout_s
            },
            last: self.last.clone(),
        }
    }

    /// The image in the active slot.
    pub fn active_image(&self) -> Option<&ImageInfo> {
        self.images[usize::from(self.active.min(1))].as_ref()
    }

    /// What a running system reports as its boot: `booted` as [`BootRecord::on_boot`] left
    /// it, brought up to date with the commits, reverts and outcomes recorded since.
    pub fn boot_state_since(&self, booted: &BootState) -> BootState {
        let mut state = booted.clone();
        // A commit happens while running; the boot snapshot must reflect it.
        state.committed = self.committed || state.partition != self.active;
        state.last = self.last.clone();
        if state.committed {
            state.commit_timeout_s = 0;
        }
        state
    }

    /// The image in `partition` (the running one when given the booted partition); an
    /// empty identity when the slot never held one.
    pub fn image_in(&self, partition: u8) -> ImageInfo {
        self.images[usize::from(partition.min(1))]
            .clone()
            .unwrap_or_default()
    }
}

/// Prefix of the optional first line of an image that names it:
/// `HERD-IMAGE {"app": ..., "fw_version": ..., "arch": ...}\n`.
pub const IMAGE_HEADER: &[u8] = b"HERD-IMAGE ";

/// How many leading bytes of an image are kept to read its header and check its type.
pub const IMAGE_HEAD: usize = 256;

/// Reads the identity an image declares in its header line; the id is the content hash.
pub fn describe_image(head: &[u8], hash: ContentHash, fallback: &ImageInfo) -> ImageInfo {
    let mut info = ImageInfo {
        app: fallback.app.clone(),
        arch: fallback.arch.clone(),
        fw_version: String::new(),
        fw_id: hash.hex(),
    };
    if let Some(rest) = head.strip_prefix(IMAGE_HEADER) {
        let line = rest.split(|&b| b == b'\n').next().unwrap_or_default();
        if let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(line) {
            for (key, slot) in [
                ("app", &mut info.app),
                ("arch", &mut info.arch),
                ("fw_version", &mut info.fw_version),
            ] {
                if let Some(Value::String(text)) = fields.get(key) {
                    *slot = text.clone();
                }
            }
        }
    }
    if info.fw_version.is_empty() {
        info.fw_version = format!("build-{}", &info.fw_id[..8]);
    }
    info
}

/// The bookkeeping of an image being written into a slot, whatever holds its bytes:
/// in-order chunks within the announced size, the content hash, and the first
/// [`IMAGE_HEAD`] bytes.
#[derive(Debug, Clone)]
pub struct ImageStaging {
    size: usize,
    written: usize,
    hash: ContentHash,
    head: Vec<u8>,
}

impl ImageStaging {
    /// An image of `size` bytes, nothing written yet.
    pub fn new(size: usize) -> ImageStaging {
        ImageStaging {
            size,
            written: 0,
            hash: ContentHash::default(),
            head: Vec::new(),
        }
    }

    /// Accounts for a chunk at `offset`; refuses one out of order or past the size. The
    /// caller stores the bytes only when this succeeds.
    pub fn accept(&mut self, offset: usize, data: &[u8]) -> Result<(), StorageError> {
        if offset != self.written || self.written + data.len() > self.size {
            return Err("write outside the image".into());
        }
        self.hash.update(data);
        let room = IMAGE_HEAD.saturating_sub(self.head.len());
        self.head.extend_from_slice(&data[..data.len().min(room)]);
        self.written += data.len();
        Ok(())
    }

    /// Fails unless every announced byte was written.
    pub fn check_complete(&self) -> Result<(), StorageError> {
        if self.written == self.size {
            Ok(())
        } else {
            Err("image incomplete".into())
        }
    }

    /// The first bytes written.
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// The identity of the written image; see [`describe_image`].
    pub fn describe(&self, running: &ImageInfo) -> ImageInfo {
        describe_image(&self.head, self.hash, running)
    }
}

/// 64-bit FNV-1a, fed chunk by chunk; a content id, not a security measure (the transport
/// and the operator's credentials protect the image).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentHash(u64);

impl Default for ContentHash {
    fn default() -> Self {
        ContentHash(0xcbf2_9ce4_8422_2325)
    }
}

impl ContentHash {
    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// 16 lowercase hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }

    /// The hash of a whole buffer.
    pub fn of(bytes: &[u8]) -> ContentHash {
        let mut hash = ContentHash::default();
        hash.update(bytes);
        hash
    }
}

/// Progress of the transfer state machine (PROTOCOL §8 `OTA.Status` states).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Transfer {
    /// No update under way (state 0).
    #[default]
    Idle,
    /// Receiving an image (state 1).
    Receiving {
        /// Announced size.
        size: usize,
        /// Bytes written so far.
        written: usize,
        /// Inactivity timeout.
        timeout_ms: u64,
        /// Uptime at which the transfer is abandoned.
        deadline_ms: u64,
        /// Commit timeout for the new image.
        commit_timeout_s: u32,
    },
    /// The last transfer failed (state 2).
    Failed(String),
    /// The image is staged; the device is about to reboot into it (state 3).
    Staged,
}

impl Transfer {
    /// The numeric state of PROTOCOL §8 / §4.4.
    pub fn code(&self) -> u8 {
        match self {
            Transfer::Idle => 0,
            Transfer::Receiving { .. } => 1,
            Transfer::Failed(_) => 2,
            Transfer::Staged => 3,
        }
    }

    /// Percent written, while receiving.
    pub fn percent(&self) -> Option<u8> {
        match self {
            Transfer::Receiving { size, written, .. } if *size > 0 => {
                Some(((*written as u64 * 100) / *size as u64).min(100) as u8)
            }
            _ => None,
        }
    }
}

/// An RPC outcome: a result, or `(code, message)`.
pub type Outcome = Result<Value, (i64, String)>;

fn bad(message: impl Into<String>) -> (i64, String) {
    (codes::BAD_REQUEST, message.into())
}

fn param_u64(params: &Value, key: &str) -> Result<Option<u64>, (i64, String)> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad(format!("{key} must be a non-negative integer"))),
    }
}

/// The transfer side of the engine; owned by [`crate::device::Device`].
#[derive(Debug, Default)]
pub struct Ota {
    /// Current state.
    pub transfer: Transfer,
}

impl Ota {
    /// `OTA.Begin {"size", "timeout"?, "commit_timeout"?}`.
    pub fn begin(
        &mut self,
        slots: &mut impl FirmwareSlots,
        params: &Value,
        now_ms: u64,
    ) -> Outcome {
        let size = param_u64(params, "size")?.ok_or_else(|| bad("size is required"))?;
        let timeout_s = param_u64(params, "timeout")?.unwrap_or(DEFAULT_TRANSFER_TIMEOUT_S);
        let commit_timeout = param_u64(params, "commit_timeout")?.unwrap_or(0);
        let commit_timeout_s =
            u32::try_from(commit_timeout).map_err(|_| bad("commit_timeout is too large"))?;
        let size = usize::try_from(size).map_err(|_| bad("size is too large"))?;
        self.start(slots, size, timeout_s, commit_timeout_s, now_ms)
    }

    /// Starts a transfer of `size` bytes (also used for `OTA.Update` downloads).
    pub fn start(
        &mut self,
        slots: &mut impl FirmwareSlots,
        size: usize,
        timeout_s: u64,
        commit_timeout_s: u32,
        now_ms: u64,
    ) -> Outcome {
        if matches!(self.transfer, Transfer::Receiving { .. }) {
            return Err(bad("an update is already in progress"));
        }
        if matches!(self.transfer, Transfer::Staged) {
            return Err(bad("an update is staged; the device is rebooting"));
        }
        if !slots.boot_state().committed {
            return Err(bad(
                "the running firmware is not committed yet; commit or revert it first",
            ));
        }
        if size == 0 {
            return Err(bad("size must be positive"));
        }
        let capacity = slots.slot_capacity();
        if size > capacity {
            return Err(bad(format!(
                "image of {size} bytes does not fit the {capacity}-byte slot"
            )));
        }
        if let Err(e) = slots.begin(size) {
            self.transfer = Transfer::Failed(e.0.clone());
            return Err((codes::INTERNAL, format!("cannot prepare the slot: {e}")));
        }
        let timeout_ms = timeout_s.max(1).saturating_mul(1000);
        self.transfer = Transfer::Receiving {
            size,
            written: 0,
            timeout_ms,
            deadline_ms: now_ms.saturating_add(timeout_ms),
            commit_timeout_s,
        };
        Ok(Value::Bool(true))
    }

    /// `OTA.Write {"offset", "data": <base64>}`.
    pub fn write(
        &mut self,
        slots: &mut impl FirmwareSlots,
        params: &Value,
        now_ms: u64,
    ) -> Outcome {
        let offset = param_u64(params, "offset")?.unwrap_or(0);
        let Some(data) = params.get("data").and_then(Value::as_str) else {
            return Err(bad("data must be a base64 string"));
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| bad(format!("data is not valid base64: {e}")))?;
        self.write_bytes(slots, offset, &bytes, now_ms)
    }

    /// Writes raw bytes at `offset` (shared by `OTA.Write` and downloads).
    pub fn write_bytes(
        &mut self,
        slots: &mut impl FirmwareSlots,
        offset: u64,
        bytes: &[u8],
        now_ms: u64,
    ) -> Outcome {
        let Transfer::Receiving {
            size,
            written,
            timeout_ms,
            deadline_ms,
            ..
        } = &mut self.transfer
        else {
            return Err(bad("no update in progress; call OTA.Begin first"));
        };
        if offset != *written as u64 {
            return Err(bad(format!("offset {offset} is wrong, expected {written}")));
        }
        if bytes.len() > *size - *written {
            return Err(bad(format!(
                "{} bytes at offset {offset} overrun the announced size {size}",
                bytes.len()
            )));
        }
        if let Err(e) = slots.write(*written, bytes) {
            let message = format!("cannot write the slot: {e}");
            slots.abort();
            self.transfer = Transfer::Failed(message.clone());
            return Err((codes::INTERNAL, message));
        }
        *written += bytes.len();
        *deadline_ms = now_ms.saturating_add(*timeout_ms);
        Ok(Value::Bool(true))
    }

    /// `OTA.End`: verifies and stages the image. The caller reboots on success.
    pub fn end(&mut self, slots: &mut impl FirmwareSlots) -> Outcome {
        let Transfer::Receiving {
            size,
            written,
            commit_timeout_s,
            ..
        } = self.transfer
        else {
            return Err(bad("no update in progress; call OTA.Begin first"));
        };
        if written != size {
            return Err(bad(format!("only {written} of {size} bytes were written")));
        }
        match slots.finish(commit_timeout_s) {
            Ok(()) => {
                self.transfer = Transfer::Staged;
                Ok(Value::Bool(true))
            }
            Err(e) => {
                let message = format!("invalid image: {e}");
                slots.abort();
                self.transfer = Transfer::Failed(message.clone());
                Err((codes::INTERNAL, message))
            }
        }
    }

    /// Abandons a transfer (inactivity, lost connection, failed download).
    pub fn fail(&mut self, slots: &mut impl FirmwareSlots, message: &str) {
        if matches!(self.transfer, Transfer::Receiving { .. }) {
            slots.abort();
            self.transfer = Transfer::Failed(message.to_string());
        }
    }

    /// Uptime at which the transfer times out.
    pub fn deadline(&self) -> Option<u64> {
        match self.transfer {
            Transfer::Receiving { deadline_ms, .. } => Some(deadline_ms),
            _ => None,
        }
    }

    /// `OTA.Status` -> `{"state", "progress_percent"?, "message"?}`.
    pub fn status(&self) -> Value {
        let mut status = json!({"state": self.transfer.code()});
        if let Some(percent) = self.transfer.percent() {
            status["progress_percent"] = json!(percent);
        }
        if let Transfer::Failed(message) = &self.transfer {
            status["message"] = json!(message);
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(v: &str) -> ImageInfo {
        ImageInfo {
            fw_version: v.into(),
            ..ImageInfo::default()
        }
    }

    #[test]
    fn staging_takes_chunks_in_order_within_the_size() {
        let header = b"HERD-IMAGE {\"fw_version\": \"2.0\"}\n";
        let mut body = header.to_vec();
        body.resize(600, b'x');
        let mut staging = ImageStaging::new(body.len());
        assert!(staging.accept(1, &body[..10]).is_err(), "a gap is refused");
        staging.accept(0, &body[..300]).expect("first chunk");
        assert!(
            staging.accept(0, &body[..10]).is_err(),
            "a repeat is refused"
        );
        assert!(staging.check_complete().is_err());
        assert!(
            staging.accept(300, &[0; 301]).is_err(),
            "past the size is refused"
        );
        staging.accept(300, &body[300..]).expect("last chunk");
        staging.check_complete().expect("complete");
        assert_eq!(staging.head(), &body[..IMAGE_HEAD]);
        let info = staging.describe(&image("1"));
        assert_eq!(info.fw_version, "2.0");
        assert_eq!(info.fw_id, ContentHash::of(&body).hex());
    }

    #[test]
    fn boot_state_follows_a_commit_made_while_running() {
        let mut record = BootRecord::new(image("1"));
        record.stage(image("2"), 30);
        record.on_boot();
        let booted = record.state();
        assert!(!record.boot_state_since(&booted).committed);
        assert_eq!(record.boot_state_since(&booted).commit_timeout_s, 30);
        assert_eq!(record.image_in(booted.partition).fw_version, "2");
        record.commit();
        let state = record.boot_state_since(&booted);
        assert!(state.committed);
        assert_eq!(state.commit_timeout_s, 0);
    }

    #[test]
    fn staged_image_gets_one_trial_boot() {
        let mut record = BootRecord::new(image("1"));
        record.stage(image("2"), 60);
        assert_eq!(record.on_boot(), 1);
        assert!(!record.state().committed);
        assert_eq!(record.state().commit_timeout_s, 60);
        // Second boot without a commit: back to slot 0 (PROTOCOL §8).
        assert_eq!(record.on_boot(), 0);
        assert!(record.committed);
        assert_eq!(record.last.as_ref().map(|o| o.ok), Some(false));
        assert_eq!(record.active_image(), Some(&image("1")));
    }

    #[test]
    fn committed_image_stays() {
        let mut record = BootRecord::new(image("1"));
        record.stage(image("2"), 60);
        record.on_boot();
        record.commit();
        assert_eq!(record.on_boot(), 1);
        assert_eq!(record.on_boot(), 1);
        assert_eq!(record.last.as_ref().map(|o| o.ok), Some(true));
        assert_eq!(record.inactive(), 0);
    }

    #[test]
    fn zero_commit_timeout_commits_on_boot() {
        let mut record = BootRecord::new(image("1"));
        record.stage(image("2"), 0);
        assert_eq!(record.on_boot(), 1);
        assert!(record.committed);
    }

    #[test]
    fn content_hash_is_stable() {
        assert_eq!(ContentHash::of(b"").hex(), "cbf29ce484222325");
        let mut split = ContentHash::default();
        split.update(b"hel");
        split.update(b"lo");
        assert_eq!(split, ContentHash::of(b"hello"));
    }
}
