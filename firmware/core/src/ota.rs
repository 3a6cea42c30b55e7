//! Firmware update (PROTOCOL §8): the transfer state machine behind `OTA.Begin`,
//! `OTA.Write`, `OTA.End` and `OTA.Status`, and the boot bookkeeping that makes an
//! uncommitted image revert.
//!
//! Whether the bytes come over the socket or from a download (§10.3), [`Ota`] hashes
//! them as they are written; the SHA-256 names the image (`fw_id`, §10.1) and is what
//! [`crate::verify`] checks, with the signature, before the platform may stage it.
//!
//! [`BootRecord`] is pure data plus rules; a platform persists it next to its slots and
//! calls [`BootRecord::on_boot`] before running anything. An image that boots uncommitted
//! gets exactly one boot: if the device starts again without an `OTA.Commit` in between
//! (crash, power cut, commit timeout, reboot), the previous slot runs.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt::{self, Write as _};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::platform::{FirmwareSlots, StorageError};
use crate::verify::{self, Expected, UpdateKey};
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
    /// Build id: the lowercase hex SHA-256 of the image (PROTOCOL §4.4, §10.1).
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

/// Reads the identity an image declares in its header line; the id is its SHA-256
/// (PROTOCOL §10.1: a firmware object's id is the SHA-256 of its bytes).
pub fn describe_image(head: &[u8], digest: ImageDigest, fallback: &ImageInfo) -> ImageInfo {
    let mut info = ImageInfo {
        app: fallback.app.clone(),
        arch: fallback.arch.clone(),
        fw_version: String::new(),
        fw_id: digest.hex(),
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

/// The bookkeeping a platform keeps for an image being written into a slot, whatever
/// holds its bytes: in-order chunks within the announced size, and the first
/// [`IMAGE_HEAD`] bytes (to check the image's type). The engine hashes the bytes and
/// names the image; see [`FirmwareSlots::finish`].
#[derive(Debug, Clone)]
pub struct ImageStaging {
    size: usize,
    written: usize,
    head: Vec<u8>,
}

impl ImageStaging {
    /// An image of `size` bytes, nothing written yet.
    pub fn new(size: usize) -> ImageStaging {
        ImageStaging {
            size,
            written: 0,
            head: Vec::new(),
        }
    }

    /// Accounts for a chunk at `offset`; refuses one out of order or past the size. The
    /// caller stores the bytes only when this succeeds.
    pub fn accept(&mut self, offset: usize, data: &[u8]) -> Result<(), StorageError> {
        if offset != self.written || self.written + data.len() > self.size {
            return Err("write outside the image".into());
        }
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
}

/// The SHA-256 of an image: its id (PROTOCOL §10.1) and what a signature signs (§10.4).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageDigest(pub [u8; 32]);

impl ImageDigest {
    /// 64 lowercase hex digits, as `fw_id` and firmware ids show it.
    pub fn hex(&self) -> String {
        let mut text = String::with_capacity(64);
        for byte in self.0 {
            let _ = write!(text, "{byte:02x}");
        }
        text
    }

    /// Reads 64 hex digits (either case); `None` for anything else.
    pub fn from_hex(text: &str) -> Option<ImageDigest> {
        let text = text.as_bytes();
        if text.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
            let high = char::from(pair[0]).to_digit(16)?;
            let low = char::from(pair[1]).to_digit(16)?;
            *byte = u8::try_from(high * 16 + low).ok()?;
        }
        Some(ImageDigest(bytes))
    }
}

impl fmt::Debug for ImageDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImageDigest({})", self.hex())
    }
}

impl fmt::Display for ImageDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

/// SHA-256 fed chunk by chunk as an image arrives.
#[derive(Clone, Default)]
pub struct ContentHash(Sha256);

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ContentHash(sha256)")
    }
}

impl ContentHash {
    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest of everything fed so far; more may be fed afterwards.
    pub fn digest(&self) -> ImageDigest {
        ImageDigest(self.0.clone().finalize().into())
    }

    /// The digest of a whole buffer.
    pub fn of(bytes: &[u8]) -> ImageDigest {
        let mut hash = ContentHash::default();
        hash.update(bytes);
        hash.digest()
    }
}

/// Which of the OTA methods a device offers (configuration key `rpc.ota_methods`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OtaMethods {
    /// Every method of PROTOCOL §8 and the device pull of §10.3 (`"all"`, the default).
    #[default]
    All,
    /// Only `OTA.Begin`, `OTA.Write` and `OTA.End`, as the mDash device library offers
    /// them (`"push"`). Such a device never gets an `OTA.Commit`, so a new image commits
    /// itself when it boots, and it neither pulls images nor acts on `desired.ota`.
    Push,
}

impl OtaMethods {
    /// The configuration key that chooses.
    pub const CONFIG_KEY: &'static str = "rpc.ota_methods";

    /// Reads the configured value; anything but `"push"` offers every method.
    pub fn from_config(text: &str) -> OtaMethods {
        if text.trim().eq_ignore_ascii_case("push") {
            OtaMethods::Push
        } else {
            OtaMethods::All
        }
    }

    /// The configuration value.
    pub fn as_str(self) -> &'static str {
        match self {
            OtaMethods::All => "all",
            OtaMethods::Push => "push",
        }
    }

    /// Whether a device in this mode has a handler for `method`.
    pub fn offers(self, method: &str) -> bool {
        match self {
            OtaMethods::All => true,
            OtaMethods::Push => !matches!(
                method,
                "OTA.Update" | "OTA.Status" | "OTA.Commit" | "OTA.Revert"
            ),
        }
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

/// Reads an optional non-negative integer parameter.
pub fn param_u64(params: &Value, key: &str) -> Result<Option<u64>, (i64, String)> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad(format!("{key} must be a non-negative integer"))),
    }
}

/// Reads an optional commit timeout in seconds.
pub fn param_commit_timeout(params: &Value) -> Result<Option<u32>, (i64, String)> {
    param_u64(params, "commit_timeout")?
        .map(|n| u32::try_from(n).map_err(|_| bad("commit_timeout is too large")))
        .transpose()
}

/// `OTA.Begin {"size", "timeout"?, "commit_timeout"?, "sha256"?, "signature"?}` (PROTOCOL
/// §8), read but not acted on. `sha256` and `signature` are optional: a pushed image is
/// checked against them like a pulled one (§10.4), and a device holding `update.pubkey`
/// needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// Announced size.
    pub size: usize,
    /// Inactivity timeout in seconds.
    pub timeout_s: u64,
    /// Commit timeout of the new image, when the request names one.
    pub commit_timeout_s: Option<u32>,
    /// What the image must be.
    pub expected: Expected,
}

impl Begin {
    /// Reads the parameters.
    pub fn from_params(params: &Value) -> Result<Begin, (i64, String)> {
        let size = param_u64(params, "size")?.ok_or_else(|| bad("size is required"))?;
        let size = usize::try_from(size).map_err(|_| bad("size is too large"))?;
        let timeout_s = param_u64(params, "timeout")?.unwrap_or(DEFAULT_TRANSFER_TIMEOUT_S);
        let commit_timeout_s = param_commit_timeout(params)?;
        let mut expected = Expected::from_params(params).map_err(bad)?;
        expected.size = Some(size as u64);
        Ok(Begin {
            size,
            timeout_s,
            commit_timeout_s,
            expected,
        })
    }
}

/// The image being received: its hash and first bytes, and what it must turn out to be.
#[derive(Debug, Clone)]
struct Incoming {
    hash: ContentHash,
    head: Vec<u8>,
    expected: Expected,
}

/// The transfer side of the engine; owned by [`crate::device::Device`]. Whether the bytes
/// come from `OTA.Write` or from a download, the engine hashes them here, checks them
/// (PROTOCOL §10.3, §10.4) and names the image before the platform may stage it.
#[derive(Debug, Default)]
pub struct Ota {
    /// Current state.
    pub transfer: Transfer,
    incoming: Option<Incoming>,
}

impl Ota {
    /// Starts a transfer of `size` bytes (`OTA.Begin`, or a download that announced its
    /// size). An image that does not fit leaves the transfer failed, so the refusal shows
    /// in `reported.ota`.
    pub fn start(
        &mut self,
        slots: &mut impl FirmwareSlots,
        size: usize,
        timeout_s: u64,
        commit_timeout_s: u32,
        expected: Expected,
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
            let message = fit_message(size as u64, capacity);
            self.transfer = Transfer::Failed(message.clone());
            return Err(bad(message));
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
        self.incoming = Some(Incoming {
            hash: ContentHash::default(),
            head: Vec::new(),
            expected,
        });
        Ok(Value::Bool(true))
    }

    /// `OTA.Write {"offset"?, "data": <base64>}`. Without `offset` the chunk goes at the
    /// current position, as the mDash device library's `OTA.Write` takes it.
    pub fn write(
        &mut self,
        slots: &mut impl FirmwareSlots,
        params: &Value,
        now_ms: u64,
    ) -> Outcome {
        let offset = param_u64(params, "offset")?;
        let Some(data) = params.get("data").and_then(Value::as_str) else {
            return Err(bad("data must be a base64 string"));
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| bad(format!("data is not valid base64: {e}")))?;
        self.write_bytes(slots, offset, &bytes, now_ms)
    }

    /// Writes raw bytes at `offset`, or at the current position when `None` (shared by
    /// `OTA.Write` and downloads).
    ///
    /// A chunk that lies wholly within what was already written is acknowledged without
    /// writing again: the sender retries a chunk whose reply it did not see in time
    /// (PROTOCOL §10.2), and with several chunks in flight the retry may arrive after
    /// chunks that followed it.
    pub fn write_bytes(
        &mut self,
        slots: &mut impl FirmwareSlots,
        offset: Option<u64>,
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
        let offset = offset.unwrap_or(*written as u64);
        let end = offset.saturating_add(bytes.len() as u64);
        if end <= *written as u64 && !bytes.is_empty() {
            *deadline_ms = now_ms.saturating_add(*timeout_ms);
            return Ok(Value::Bool(true));
        }
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
            self.incoming = None;
            return Err((codes::INTERNAL, message));
        }
        *written += bytes.len();
        *deadline_ms = now_ms.saturating_add(*timeout_ms);
        if let Some(incoming) = &mut self.incoming {
            incoming.hash.update(bytes);
            let room = IMAGE_HEAD.saturating_sub(incoming.head.len());
            incoming
                .head
                .extend_from_slice(&bytes[..bytes.len().min(room)]);
        }
        Ok(Value::Bool(true))
    }

    /// Bytes written so far in the current transfer.
    pub fn written(&self) -> Option<usize> {
        match self.transfer {
            Transfer::Receiving { written, .. } => Some(written),
            _ => None,
        }
    }

    /// `OTA.End`, or the end of a download: checks the image against what was expected and
    /// `key` (PROTOCOL §10.3, §10.4), names it after `running` and its header, and has the
    /// platform stage it. The caller reboots on success. A refused image is discarded; the
    /// running one stays.
    pub fn end(
        &mut self,
        slots: &mut impl FirmwareSlots,
        running: &ImageInfo,
        key: &UpdateKey,
    ) -> Outcome {
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
        let Some(incoming) = self.incoming.take() else {
            return Err((codes::INTERNAL, "the transfer lost its state".into()));
        };
        let digest = incoming.hash.digest();
        if let Err(message) = verify::check(&incoming.expected, written, &digest, key) {
            slots.abort();
            self.transfer = Transfer::Failed(message.clone());
            return Err(bad(message));
        }
        let image = describe_image(&incoming.head, digest, running);
        match slots.finish(&image, commit_timeout_s) {
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
            self.incoming = None;
        }
    }

    /// Records a refusal that happened before any transfer started, unless one is
    /// under way or staged (its state must not be overwritten).
    pub fn refused(&mut self, message: &str) {
        if matches!(self.transfer, Transfer::Idle | Transfer::Failed(_)) {
            self.transfer = Transfer::Failed(message.to_string());
        }
    }

    /// Drops a partly received image to receive it again from the start.
    pub fn restart(&mut self, slots: &mut impl FirmwareSlots) {
        if matches!(self.transfer, Transfer::Receiving { .. }) {
            slots.abort();
            self.transfer = Transfer::Idle;
            self.incoming = None;
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

/// The refusal of an image larger than the slot.
pub fn fit_message(size: u64, capacity: usize) -> String {
    format!("image of {size} bytes does not fit the {capacity}-byte slot")
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
    }

    #[test]
    fn an_image_is_named_by_its_header_and_its_sha256() {
        let mut body = b"HERD-IMAGE {\"fw_version\": \"2.0\", \"arch\": 5}\nrest".to_vec();
        let info = describe_image(&body, ContentHash::of(&body), &image("1"));
        assert_eq!(info.fw_version, "2.0");
        assert_eq!(info.arch, "", "a header field of the wrong type is ignored");
        assert_eq!(info.fw_id, ContentHash::of(&body).hex());
        body[0] = b'h';
        let info = describe_image(&body, ContentHash::of(&body), &image("1"));
        let id = ContentHash::of(&body).hex();
        assert_eq!(info.fw_version, format!("build-{}", &id[..8]));
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
    fn content_hash_is_sha256() {
        // FIPS 180-2 test vectors.
        assert_eq!(
            ContentHash::of(b"").hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            ContentHash::of(b"abc").hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut split = ContentHash::default();
        split.update(b"a");
        let early = split.digest();
        split.update(b"bc");
        assert_eq!(split.digest(), ContentHash::of(b"abc"));
        assert_eq!(
            early,
            ContentHash::of(b"a"),
            "a digest does not end the hash"
        );
    }

    #[test]
    fn digests_read_back_from_hex() {
        let digest = ContentHash::of(b"abc");
        assert_eq!(ImageDigest::from_hex(&digest.hex()), Some(digest));
        assert_eq!(
            ImageDigest::from_hex(&digest.hex().to_uppercase()),
            Some(digest)
        );
        assert_eq!(ImageDigest::from_hex("abc"), None);
        assert_eq!(ImageDigest::from_hex(&"g".repeat(64)), None);
        assert_eq!(ImageDigest::from_hex(&"é".repeat(32)), None);
    }

    #[test]
    fn push_only_devices_offer_the_mdash_library_methods() {
        assert_eq!(OtaMethods::from_config("push"), OtaMethods::Push);
        assert_eq!(OtaMethods::from_config(" PUSH "), OtaMethods::Push);
        assert_eq!(OtaMethods::from_config("all"), OtaMethods::All);
        assert_eq!(OtaMethods::from_config("bogus"), OtaMethods::All);
        for method in ["OTA.Begin", "OTA.Write", "OTA.End", "Sys.GetInfo"] {
            assert!(OtaMethods::Push.offers(method), "{method}");
        }
        for method in ["OTA.Update", "OTA.Status", "OTA.Commit", "OTA.Revert"] {
            assert!(!OtaMethods::Push.offers(method), "{method}");
            assert!(OtaMethods::All.offers(method), "{method}");
        }
    }
}
