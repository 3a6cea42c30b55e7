//! Updating one device's firmware (PROTOCOL §8, §10.2, §10.3, §10.6): the steps a push, a
//! pull and a rollout share.
//!
//! - [`OtaJobs`] keeps one update per device: a second one is refused (409) while the
//!   first runs, and a device may download an image only while an update with it is under
//!   way or the image is its owner's.
//! - [`push`] writes an image with `OTA.Begin` / `OTA.Write` / `OTA.End`: chunks of
//!   `ota_chunk_bytes`, up to `ota_window` of them unanswered at once (in order on one
//!   socket, so any device that handles its requests one after another takes them), a
//!   timed-out chunk retried up to `ota_chunk_retries` times, `ota.begin` and `ota.progress`
//!   events on the way.
//! - [`request_pull`] tells a device to fetch the image itself (`OTA.Update`) and follows
//!   its progress in `reported.ota`.
//! - [`await_return`] waits for the device to come back on a new connection and says
//!   whether it runs the new image or went back to the old one; [`commit`] keeps it.
//!
//! The caller decides what an outcome means (a one-device push answers REST, a rollout
//! moves the device's state) and emits the final `ota.success` / `ota.failure` /
//! `ota.revert` event through [`emit_success`], [`emit_failure`] and [`emit_revert`].

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use parking_lot::Mutex;
use protocol::firmware::{
    stage, Delivery, OTA_BEGIN, OTA_FAILURE, OTA_PROGRESS, OTA_REVERT, OTA_SUCCESS,
};
use protocol::frame::RpcError;
use protocol::methods;
use protocol::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;

use crate::hub::Identity;
use crate::registry::{CallError, DeviceConn};
use crate::store::{FirmwareRecord, StoreError};
use crate::{ops, AppState};

/// What runs on one device right now.
#[derive(Debug, Clone, PartialEq)]
struct Active {
    firmware: String,
    rollout: Option<String>,
}

/// One update per device (see the module docs).
#[derive(Debug, Default)]
pub struct OtaJobs {
    active: Mutex<HashMap<String, Active>>,
}

impl OtaJobs {
    /// Claims device `device` for an update with `firmware`; `None` if one already runs.
    pub fn claim(
        self: &Arc<Self>,
        device: &str,
        firmware: &str,
        rollout: Option<&str>,
    ) -> Option<JobGuard> {
        let mut active = self.active.lock();
        if active.contains_key(device) {
            return None;
        }
        active.insert(
            device.to_string(),
            Active {
                firmware: firmware.to_string(),
                rollout: rollout.map(str::to_string),
            },
        );
        Some(JobGuard {
            jobs: self.clone(),
            device: device.to_string(),
        })
    }

    /// Whether an update of `device` with `firmware` is under way.
    pub fn updating_with(&self, device: &str, firmware: &str) -> bool {
        self.active
            .lock()
            .get(device)
            .is_some_and(|active| active.firmware == firmware)
    }

    /// Whether any update of `device` is under way.
    pub fn is_busy(&self, device: &str) -> bool {
        self.active.lock().contains_key(device)
    }
}

/// Holds a device's update slot until dropped.
#[derive(Debug)]
pub struct JobGuard {
    jobs: Arc<OtaJobs>,
    device: String,
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        self.jobs.active.lock().remove(&self.device);
    }
}

/// Why an update step failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// `ota.failure`'s `stage` (PROTOCOL §10.6).
    pub stage: &'static str,
    /// For people.
    pub message: String,
    /// How the call failed, for REST status codes.
    pub cause: Option<CallError>,
}

impl Failure {
    fn new(stage: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            stage,
            message: message.into(),
            cause: None,
        }
    }

    fn call(stage: &'static str, method: &str, error: CallError) -> Failure {
        let message = match &error {
            CallError::Offline => "the device is offline".to_string(),
            CallError::Disconnected => format!("the device disconnected during {method}"),
            CallError::Timeout => format!("the device did not answer {method} in time"),
            CallError::Device(RpcError { code, message }) => {
                format!("the device refused {method}: {message} ({code})")
            }
        };
        Failure {
            stage,
            message,
            cause: Some(error),
        }
    }
}

/// Settings of a transfer.
#[derive(Debug, Clone)]
pub struct TransferOptions {
    pub chunk_bytes: usize,
    pub window: usize,
    pub retries: u32,
    pub call_timeout: Duration,
    pub commit_timeout_s: u32,
    /// `rollout` in `ota.begin` (PROTOCOL §10.6).
    pub rollout: Option<String>,
}

impl TransferOptions {
    /// The server's settings, with this commit timeout.
    pub fn from_settings(state: &AppState, commit_timeout_s: u32) -> TransferOptions {
        TransferOptions {
            chunk_bytes: state.settings.ota_chunk_bytes,
            window: state.settings.ota_window,
            retries: state.settings.ota_chunk_retries,
            call_timeout: state.rpc_timeout(),
            commit_timeout_s,
            rollout: None,
        }
    }
}

/// Emits `ota.begin` (PROTOCOL §10.6).
pub fn emit_begin(
    state: &AppState,
    device: &Identity,
    firmware: &FirmwareRecord,
    rollout: Option<&str>,
) {
    let mut data =
        json!({"firmware": firmware.id, "version": firmware.version, "size": firmware.size});
    if let Some(rollout) = rollout {
        data["rollout"] = json!(rollout);
    }
    state.hub.emit(device, OTA_BEGIN, &data);
}

/// Emits `ota.success` (PROTOCOL §10.6).
pub fn emit_success(
    state: &AppState,
    device: &Identity,
    firmware: &FirmwareRecord,
    seconds: f64,
    rollout: Option<&str>,
) {
    let mut data =
        json!({"firmware": firmware.id, "version": firmware.version, "seconds": round_ms(seconds)});
    if let Some(rollout) = rollout {
        data["rollout"] = json!(rollout);
    }
    state.hub.emit(device, OTA_SUCCESS, &data);
}

/// Emits `ota.failure` (PROTOCOL §10.6).
pub fn emit_failure(
    state: &AppState,
    device: &Identity,
    firmware: &FirmwareRecord,
    failure: &Failure,
    rollout: Option<&str>,
) {
    let mut data =
        json!({"firmware": firmware.id, "stage": failure.stage, "message": failure.message});
    if let Some(rollout) = rollout {
        data["rollout"] = json!(rollout);
    }
    state.hub.emit(device, OTA_FAILURE, &data);
}

/// Emits `ota.revert` (PROTOCOL §10.6).
pub fn emit_revert(
    state: &AppState,
    device: &Identity,
    firmware: &FirmwareRecord,
    running_version: &str,
    message: &str,
    rollout: Option<&str>,
) {
    let mut data =
        json!({"firmware": firmware.id, "running_version": running_version, "message": message});
    if let Some(rollout) = rollout {
        data["rollout"] = json!(rollout);
    }
    state.hub.emit(device, OTA_REVERT, &data);
}

fn round_ms(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

/// Emits `ota.progress` when the percentage reached a new tenth.
struct Progress<'a> {
    state: &'a AppState,
    device: Identity,
    firmware: &'a str,
    last_tenth: u64,
}

impl Progress<'_> {
    fn update(&mut self, percent: u64) {
        let tenth = percent.min(100) / 10;
        if tenth > self.last_tenth {
            self.last_tenth = tenth;
            self.state.hub.emit(
                &self.device,
                OTA_PROGRESS,
                &json!({"firmware": self.firmware, "percent": tenth * 10}),
            );
        }
    }
}

async fn call(
    state: &AppState,
    conn: &DeviceConn,
    method: &str,
    params: Value,
    timeout: Duration,
) -> Result<Value, CallError> {
    let (id, reply) = ops::call::start(state, conn, method, Some(params));
    ops::call::finish(conn, id, reply, timeout).await
}

struct InFlight {
    offset: u64,
    bytes: Arc<Vec<u8>>,
    attempt: u32,
    request: u64,
    reply: oneshot::Receiver<Result<Value, CallError>>,
}

/// An update's transfer, as the node holding the device carries it out.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Transfer {
    pub firmware: String,
    pub commit_timeout_s: u32,
    pub rollout: Option<String>,
    pub delivery: Delivery,
}

/// Sends `firmware` to device `id` on whichever node holds it (PROTOCOL §10.2, §10.3);
/// returns the connection it went over, whose end [`await_return`] waits for.
pub async fn transfer(
    state: &AppState,
    id: &str,
    firmware: &FirmwareRecord,
    transfer: Transfer,
) -> Result<u64, Failure> {
    let Some(conn) = state.registry.get(id) else {
        return match &state.cluster {
            Some(cluster) => cluster.transfer(id, transfer).await,
            None => Err(Failure::call(
                stage::BEGIN,
                methods::OTA_BEGIN,
                CallError::Offline,
            )),
        };
    };
    let path = state.firmware_files.path(&firmware.id);
    if let Some(cluster) = &state.cluster {
        if let Err(e) = cluster.fetch_image(&firmware.id, &path).await {
            return Err(Failure::new(
                stage::BEGIN,
                format!("the image is not available: {e:#}"),
            ));
        }
    }
    let mut options = TransferOptions::from_settings(state, transfer.commit_timeout_s);
    options.rollout = transfer.rollout;
    match transfer.delivery {
        Delivery::Push => push(state, &conn, firmware, &path, &options).await?,
        Delivery::Pull => request_pull(state, &conn, firmware, &options).await?,
    }
    Ok(conn.conn_id)
}

/// Rebuilds a failure another node reported (its stage is one of [`stage`]'s).
pub fn failure_from(stage_name: &str, message: String, cause: Option<CallError>) -> Failure {
    let stage = [
        stage::BEGIN,
        stage::WRITE,
        stage::END,
        stage::DOWNLOAD,
        stage::REBOOT,
        stage::VERIFY,
        stage::ABORT,
    ]
    .into_iter()
    .find(|s| *s == stage_name)
    .unwrap_or(stage::BEGIN);
    Failure {
        stage,
        message,
        cause,
    }
}

/// Writes `firmware` (stored at `path`) to the device on `conn` (PROTOCOL §10.2) and ends
/// with `OTA.End`; the device then restarts into it. Emits `ota.begin` and `ota.progress`.
pub async fn push(
    state: &AppState,
    conn: &Arc<DeviceConn>,
    firmware: &FirmwareRecord,
    path: &Path,
    options: &TransferOptions,
) -> Result<(), Failure> {
    let identity = conn.identity();
    emit_begin(state, &identity, firmware, options.rollout.as_deref());
    let size = firmware.size;
    // `sha256` and `signature` let a device that holds an update key check a pushed image
    // as it checks a pulled one (PROTOCOL §10.4); devices that do not know them ignore them.
    let mut begin = json!({
        "size": size,
        "timeout": 600,
        "commit_timeout": options.commit_timeout_s,
        "sha256": firmware.id,
    });
    if let Some(signature) = &firmware.signature {
        begin["signature"] = json!(signature);
    }
    call(state, conn, methods::OTA_BEGIN, begin, options.call_timeout)
        .await
        .map_err(|e| Failure::call(stage::BEGIN, methods::OTA_BEGIN, e))?;

    // Read in large blocks: every read of a tokio file is a trip to the blocking pool, one
    // per 1 KiB chunk would cost more than the chunk itself.
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| Failure::new(stage::WRITE, format!("cannot read the stored image: {e}")))?;
    let mut file = tokio::io::BufReader::with_capacity(64 * 1024, file);
    let mut progress = Progress {
        state,
        device: identity,
        firmware: &firmware.id,
        last_tenth: 0,
    };
    let chunk_bytes = options.chunk_bytes.max(1) as u64;
    let mut read_offset = 0u64;
    let mut acked = 0u64;
    // Chunks to send again after a timeout, before reading new ones.
    let mut again: VecDeque<(u64, Arc<Vec<u8>>, u32)> = VecDeque::new();
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    loop {
        while in_flight.len() < options.window.max(1) {
            let (offset, bytes, attempt) = if let Some(next) = again.pop_front() {
                next
            } else if read_offset < size {
                let len = chunk_bytes.min(size - read_offset) as usize;
                let mut bytes = vec![0u8; len];
                file.read_exact(&mut bytes).await.map_err(|e| {
                    Failure::new(stage::WRITE, format!("cannot read the stored image: {e}"))
                })?;
                let offset = read_offset;
                read_offset += len as u64;
                (offset, Arc::new(bytes), 0)
            } else {
                break;
            };
            let data = base64::engine::general_purpose::STANDARD.encode(bytes.as_slice());
            let (request, reply) = ops::call::start_unlogged(
                conn,
                methods::OTA_WRITE,
                Some(json!({"offset": offset, "data": data})),
            );
            in_flight.push_back(InFlight {
                offset,
                bytes,
                attempt,
                request,
                reply,
            });
        }
        let Some(first) = in_flight.pop_front() else {
            break;
        };
        match ops::call::finish(conn, first.request, first.reply, options.call_timeout).await {
            Ok(_) => {
                acked = first.offset + first.bytes.len() as u64;
                progress.update(acked * 100 / size.max(1));
            }
            Err(CallError::Timeout) if first.attempt < options.retries => {
                // Whatever was sent after the lost chunk may or may not have been taken;
                // a device that checks offsets answered the later ones, so resume after
                // the last chunk it confirmed.
                let mut resume = vec![(first.offset, first.bytes, first.attempt + 1)];
                for later in in_flight.drain(..) {
                    let confirmed =
                        ops::call::finish(conn, later.request, later.reply, options.call_timeout)
                            .await
                            .is_ok();
                    if confirmed {
                        resume.clear();
                        acked = later.offset + later.bytes.len() as u64;
                    } else {
                        resume.push((later.offset, later.bytes, later.attempt + 1));
                    }
                }
                tracing::debug!(device = %conn.identity().id, offset = first.offset, "retrying a chunk after a timeout");
                again.extend(resume);
            }
            Err(error) => {
                // Later requests are still pending on the connection; forget them.
                for later in in_flight.drain(..) {
                    conn.take_pending(later.request);
                }
                return Err(Failure::call(stage::WRITE, methods::OTA_WRITE, error));
            }
        }
    }
    if acked != size {
        return Err(Failure::new(
            stage::WRITE,
            format!("only {acked} of {size} bytes were confirmed"),
        ));
    }
    call(
        state,
        conn,
        methods::OTA_END,
        json!({}),
        options.call_timeout,
    )
    .await
    .map_err(|e| Failure::call(stage::END, methods::OTA_END, e))?;
    progress.update(100);
    Ok(())
}

/// What the device reports about its firmware: `Sys.GetInfo` (`info`) and `reported.ota`
/// (PROTOCOL §4.4).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Observed {
    pub online: bool,
    /// The connection it is on now.
    pub conn_id: Option<u64>,
    /// `Sys.GetInfo` answered on this connection: `fw_id` and `fw_version` are current.
    pub info_fresh: bool,
    pub fw_id: String,
    pub fw_version: String,
    /// `reported.ota.status` (0 idle, 1 progress, 2 error, 3 success).
    pub ota_status: Option<i64>,
    pub ota_message: String,
    pub ota_percent: Option<u64>,
    /// When `reported.ota.status` was last written, unix seconds.
    pub ota_status_at: Option<f64>,
    pub committed: Option<bool>,
}

/// Reads what device `id` says about its firmware now; in a cluster, from the node that
/// holds it.
pub async fn observe(state: &AppState, id: &str) -> Result<Observed, StoreError> {
    if !state.registry.is_online(id) {
        if let Some(cluster) = &state.cluster {
            if let Some(observed) = cluster.observe(id).await {
                return Ok(observed);
            }
        }
    }
    observe_here(state, id).await
}

/// The connection device `id` is on now, on this node or (in a cluster) another.
pub async fn connection(state: &AppState, id: &str) -> Option<u64> {
    match state.registry.get(id) {
        Some(conn) => Some(conn.conn_id),
        None => match &state.cluster {
            Some(cluster) => cluster.observe(id).await.and_then(|seen| seen.conn_id),
            None => None,
        },
    }
}

/// [`observe`] with this node's connections only.
pub async fn observe_here(state: &AppState, id: &str) -> Result<Observed, StoreError> {
    let conn = state.registry.get(id);
    // Read before the store: the flag is set only after the info was written, so a true
    // flag guarantees the read below sees that info.
    let info_fresh = conn.as_ref().is_some_and(|c| c.info_fresh());
    let device = state
        .store
        .device(id)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("device {id}")))?;
    let text = |value: Option<&Value>| {
        value
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let ota = device.shadow.reported.get("ota");
    let field = |key: &str| ota.and_then(|ota| ota.get(key));
    let status_at = device
        .shadow
        .metadata_reported
        .get("ota")
        .and_then(|ota| ota.get("status"))
        .and_then(|status| status.get("timestamp"))
        .and_then(Value::as_f64);
    let mut fw_id = text(device.info.get("fw_id"));
    let mut fw_version = text(device.info.get("fw_version"));
    if fw_id.is_empty() && fw_version.is_empty() {
        fw_id = text(field("fw_id"));
        fw_version = text(field("fw_version"));
    }
    Ok(Observed {
        online: conn.is_some(),
        conn_id: conn.as_ref().map(|c| c.conn_id),
        info_fresh,
        fw_id,
        fw_version,
        ota_status: field("status").and_then(Value::as_i64),
        ota_message: text(field("message")),
        ota_percent: field("progress_percent").and_then(Value::as_u64),
        ota_status_at: status_at,
        committed: field("is_committed").and_then(Value::as_bool),
    })
}

/// Whether a device reporting `fw_id` / `fw_version` runs `firmware`: its id is the
/// image's SHA-256 (Herd devices) or the package's build id (Mongoose OS), or, failing
/// both, the versions agree.
pub fn runs(firmware: &FirmwareRecord, fw_id: &str, fw_version: &str) -> bool {
    if !fw_id.is_empty()
        && (fw_id.eq_ignore_ascii_case(&firmware.id) || firmware.build_id.as_deref() == Some(fw_id))
    {
        return true;
    }
    !firmware.version.is_empty() && fw_version == firmware.version
}

/// How a device came back after taking an image.
#[derive(Debug, Clone, PartialEq)]
pub enum Return {
    /// It runs the new image.
    Updated { committed: Option<bool> },
    /// It runs something else: it went back to its previous image.
    Reverted {
        running_version: String,
        message: String,
    },
    /// It did not come back in time.
    TimedOut,
}

/// Waits until device `id` is online on a connection other than `old_conn` with fresh
/// device info, then says what it runs; gives up after `timeout`.
pub async fn await_return(
    state: &AppState,
    id: &str,
    firmware: &FirmwareRecord,
    old_conn: Option<u64>,
    timeout: Duration,
) -> Return {
    let deadline = tokio::time::Instant::now() + timeout;
    let notify = state.watch.subscribe(id);
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match observe(state, id).await {
            Ok(seen) if seen.online && seen.info_fresh && seen.conn_id != old_conn => {
                return if runs(firmware, &seen.fw_id, &seen.fw_version) {
                    Return::Updated {
                        committed: seen.committed,
                    }
                } else {
                    let message = if seen.ota_status == Some(2) && !seen.ota_message.is_empty() {
                        seen.ota_message
                    } else {
                        format!(
                            "the device came back running {} instead of {}",
                            display_version(&seen.fw_version),
                            display_version(&firmware.version)
                        )
                    };
                    Return::Reverted {
                        running_version: seen.fw_version,
                        message,
                    }
                };
            }
            Ok(_) => {}
            Err(StoreError::NotFound(_)) => return Return::TimedOut,
            Err(e) => tracing::warn!(device = id, error = %e, "cannot read the device"),
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(deadline) => return Return::TimedOut,
            // The info flag is set without an event of its own; look again now and then.
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

fn display_version(version: &str) -> &str {
    if version.is_empty() {
        "an unknown version"
    } else {
        version
    }
}

/// Keeps the running image (`OTA.Commit`, PROTOCOL §8). A device without `OTA.Commit` (the
/// mDash device library commits on boot) counts as committed.
pub async fn commit(state: &AppState, id: &str) -> Result<(), Failure> {
    match ops::call::run(state, id, methods::OTA_COMMIT, None, state.rpc_timeout()).await {
        Ok(_) => Ok(()),
        Err(CallError::Device(RpcError { code, .. }))
            if code == protocol::codes::NOT_FOUND || code == protocol::codes::METHOD_NOT_FOUND =>
        {
            Ok(())
        }
        Err(e) => Err(Failure::call(stage::VERIFY, methods::OTA_COMMIT, e)),
    }
}

/// The URL a device fetches `firmware` from: on the server it is connected to, as it
/// reached it (PROTOCOL §10.3).
pub fn image_url(conn: &DeviceConn, firmware: &FirmwareRecord) -> String {
    let path = format!("/api/v2/firmware/{}/image", firmware.id);
    match conn.origin() {
        Some(origin) => format!("{origin}{path}"),
        None => path,
    }
}

/// Tells the device on `conn` to fetch `firmware` itself (`OTA.Update`, PROTOCOL §10.3) and
/// follows it until it restarts into the image. Emits `ota.begin` and `ota.progress`.
pub async fn request_pull(
    state: &AppState,
    conn: &Arc<DeviceConn>,
    firmware: &FirmwareRecord,
    options: &TransferOptions,
) -> Result<(), Failure> {
    let identity = conn.identity();
    let id = identity.id.to_string();
    emit_begin(state, &identity, firmware, options.rollout.as_deref());
    let asked_at = crate::clock::now();
    let mut params = json!({
        "url": image_url(conn, firmware),
        "sha256": firmware.id,
        "size": firmware.size,
        "commit_timeout": options.commit_timeout_s,
    });
    if let Some(signature) = &firmware.signature {
        params["signature"] = json!(signature);
    }
    call(
        state,
        conn,
        methods::OTA_UPDATE,
        params,
        options.call_timeout,
    )
    .await
    .map_err(|e| Failure::call(stage::DOWNLOAD, methods::OTA_UPDATE, e))?;
    let mut progress = Progress {
        state,
        device: identity,
        firmware: &firmware.id,
        last_tenth: 0,
    };
    // A download has no steady stream of replies; it must show progress within this time.
    let quiet_limit = Duration::from_secs(600);
    let mut quiet_until = tokio::time::Instant::now() + quiet_limit;
    let notify = state.watch.subscribe(&id);
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let seen = observe(state, &id)
            .await
            .map_err(|e| Failure::new(stage::DOWNLOAD, e.to_string()))?;
        if !seen.online || seen.conn_id != Some(conn.conn_id) {
            // It restarts into the new image (or lost its connection: the caller finds
            // out which when it comes back).
            progress.update(100);
            return Ok(());
        }
        let fresh = seen.ota_status_at.is_some_and(|at| at >= asked_at);
        if fresh {
            match seen.ota_status {
                Some(2) => {
                    let message = if seen.ota_message.is_empty() {
                        "the device could not take the image".to_string()
                    } else {
                        seen.ota_message
                    };
                    return Err(Failure::new(stage::DOWNLOAD, message));
                }
                Some(1) => {
                    if let Some(percent) = seen.ota_percent {
                        if percent / 10 > progress.last_tenth {
                            quiet_until = tokio::time::Instant::now() + quiet_limit;
                        }
                        progress.update(percent);
                    }
                }
                _ => {}
            }
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(quiet_until) => {
                return Err(Failure::new(stage::DOWNLOAD, "the device reported no download progress for 10 minutes"));
            }
        }
    }
}
