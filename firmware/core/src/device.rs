//! The device engine: one [`Device`] per booted device.
//!
//! The caller owns the socket, the clock and the pins. It tells the engine what happened
//! ([`Device::connected`], [`Device::receive`], [`Device::button`], [`Device::poll`]) and
//! performs the [`Action`]s it gets back, in order. Time is milliseconds since boot.
//! [`Device::next_deadline`] says when `poll` has something to do, so an idle device
//! needs no periodic wake-ups.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use base64::Engine as _;
use protocol::codes;
use protocol::frame::{Frame, FrameKind};
use protocol::splitter::FrameSplitter;
use serde_json::{json, Value};

use crate::config::{self, Config, Layer, Object};
use crate::fs;
use crate::ota::{self, Begin, BootState, ImageInfo, Ota, OtaMethods, Outcome, Transfer};
use crate::platform::{Button, Platform};
use crate::pull::{self, DownloadRequest, Pull};
use crate::verify::{self, Expected, UpdateKey};

/// Largest JSON value the device accepts from the cloud; `OTA.Write` with a 1 KiB chunk
/// (PROTOCOL §8) needs well under half of it.
pub const MAX_INPUT_FRAME: usize = 16 * 1024;

/// Delay before a reboot that an RPC asked for, so its reply still leaves the device.
pub const DEFAULT_REBOOT_DELAY_MS: u64 = 100;

/// Every method the engine answers (PROTOCOL §8, §9), as `RPC.List` reports them; a
/// device with `rpc.ota_methods = "push"` leaves out those [`OtaMethods::offers`] does not.
pub const METHODS: &[&str] = &[
    "RPC.List",
    "Sys.GetInfo",
    "Sys.Reboot",
    "Config.Get",
    "Config.Set",
    "Config.Save",
    "FS.List",
    "FS.Get",
    "FS.Put",
    "FS.Remove",
    "FS.Rename",
    "Wifi.Scan",
    "OTA.Begin",
    "OTA.Write",
    "OTA.End",
    "OTA.Status",
    "OTA.Commit",
    "OTA.Revert",
    "OTA.Update",
    "Shadow.Delta",
];

/// What the platform must do, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send one JSON frame to the cloud (only returned while connected).
    Send(String),
    /// Send one JSON frame on the local channel (access point or serial), answering a
    /// request that came in through [`Device::receive_local`].
    SendLocal(String),
    /// Restart after `delay_ms`; then boot a new [`Device`] on the same platform.
    Reboot {
        /// Milliseconds to wait, so that replies already queued get out.
        delay_ms: u64,
    },
    /// Download firmware as the request says and feed it through
    /// [`Device::download_started`], [`Device::download_chunk`] and
    /// [`Device::download_finished`], or [`Device::download_failed`] (PROTOCOL §10.3
    /// `OTA.Update`, §4.4 `desired.ota`). Whether the image may boot is the engine's
    /// decision, made in [`Device::download_finished`].
    Download(DownloadRequest),
}

/// How the device reaches the network (provisioning as the reference product does it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// Unprovisioned: offer an access point where a phone sets Wi-Fi and the name.
    AccessPoint {
        /// Network name.
        ssid: String,
        /// WPA2 passphrase.
        pass: String,
    },
    /// Provisioned: join this network.
    Station {
        /// Network name.
        ssid: String,
        /// Passphrase.
        pass: String,
    },
    /// Neither is enabled (a wired Linux host, for example).
    None,
}

/// Where a request came from; replies go back the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Channel {
    Cloud,
    Local,
}

/// The device engine (see the module docs).
#[derive(Debug)]
pub struct Device<P: Platform> {
    platform: P,
    config: Config,
    ota: Ota,
    /// A download the platform performs for this device, feeding the transfer instead of
    /// `OTA.Write` over the socket.
    pull: Option<ActivePull>,
    /// `desired.ota` as the deltas of this boot built it up: a delta holds only the
    /// leaves that differ (PROTOCOL §4.2), so each is merged over the previous ones.
    desired_ota: Object,
    /// The `desired.ota` fields last acted on, so a repeated delta does not start the
    /// same download again.
    last_desired_ota: Option<Object>,
    image: ImageInfo,
    /// Whether this device is the smart light; see [`Device::without_light`].
    light: bool,
    light_on: bool,
    connected: bool,
    splitter: FrameSplitter,
    next_id: u64,
    now_ms: u64,
    /// Uptime at which an uncommitted image gives up and reverts (PROTOCOL §8).
    commit_deadline: Option<u64>,
    button_since: Option<u64>,
    reset_done: bool,
    heartbeat_due: Option<u64>,
    reported_percent: Option<u8>,
    /// Problems found while booting (unreadable config layers), for the platform to log.
    boot_notes: Vec<String>,
}

/// A device pull under way (PROTOCOL §10.3).
#[derive(Debug)]
struct ActivePull {
    expected: Expected,
    commit_timeout_s: u32,
    /// The platform announced the size and the slot is being written.
    started: bool,
    /// Uptime by which the platform must have announced the size; after that the
    /// transfer's own inactivity timeout applies.
    start_deadline_ms: u64,
}

/// Statistics and state the platform may show or log.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// Light on.
    pub light_on: bool,
    /// Connected to the cloud.
    pub connected: bool,
    /// The running boot.
    pub boot: BootState,
    /// The running image.
    pub image: ImageInfo,
    /// Numeric OTA state (PROTOCOL §8).
    pub ota_state: u8,
}

fn outcome_frame(request: &Frame, outcome: Outcome) -> Frame {
    match outcome {
        Ok(result) => Frame::reply_to(request, result),
        Err((code, message)) => Frame::error_to(request, code, message),
    }
}

fn bad(message: impl Into<String>) -> (i64, String) {
    (codes::BAD_REQUEST, message.into())
}

fn optional_bool(params: &Value, key: &str) -> Result<bool, (i64, String)> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad(format!("{key} must be a boolean"))),
    }
}

impl<P: Platform> Device<P> {
    /// Boots the engine on `platform`: reads the configuration layers and the boot state
    /// and drives the light to off. Unreadable layers count as empty (the device must
    /// come up, if only to be repaired); see [`Device::boot_notes`].
    pub fn boot(mut platform: P, now_ms: u64) -> Device<P> {
        let mut notes = Vec::new();
        let mut layer = |platform: &mut P, which: Layer| match platform.load(which) {
            Ok(Some(bytes)) => match config::parse_layer(&bytes) {
                Ok(map) => map,
                Err(e) => {
                    notes.push(format!("{} config layer ignored: {e}", which.name()));
                    Object::new()
                }
            },
            Ok(None) => Object::new(),
            Err(e) => {
                notes.push(format!("{} config layer unreadable: {e}", which.name()));
                Object::new()
            }
        };
        let factory = layer(&mut platform, Layer::Factory);
        let user = layer(&mut platform, Layer::User);
        let boot = platform.boot_state();
        let image = platform.running_image();
        let commit_deadline = (!boot.committed && boot.commit_timeout_s > 0)
            .then(|| now_ms.saturating_add(u64::from(boot.commit_timeout_s) * 1000));
        let mut device = Device {
            platform,
            config: Config::new(factory, user),
            ota: Ota::default(),
            pull: None,
            desired_ota: Object::new(),
            last_desired_ota: None,
            image,
            light: true,
            light_on: false,
            connected: false,
            splitter: FrameSplitter::new(MAX_INPUT_FRAME),
            next_id: 1,
            now_ms,
            commit_deadline,
            button_since: None,
            reset_done: false,
            heartbeat_due: None,
            reported_percent: None,
            boot_notes: notes,
        };
        device.drive_light();
        device
    }

    /// Makes this a device without the smart light: from now on it drives no pin, and its
    /// reports and heartbeats leave `on` out, because something else owns the shadow's
    /// state. A CCM is such a device ([`crate::ccm`]): the host MCU behind it reports its
    /// own state.
    pub fn without_light(mut self) -> Device<P> {
        self.light = false;
        self
    }

    /// Problems found while booting.
    pub fn boot_notes(&self) -> &[String] {
        &self.boot_notes
    }

    /// The platform, for inspection.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// The platform, for the caller's own bookkeeping.
    pub fn platform_mut(&mut self) -> &mut P {
        &mut self.platform
    }

    /// Ends this boot and hands the platform back (to reboot on it).
    pub fn into_platform(self) -> P {
        self.platform
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether the light is on.
    pub fn light_on(&self) -> bool {
        self.light_on
    }

    /// A snapshot for display and logs.
    pub fn status(&mut self) -> Status {
        Status {
            light_on: self.light_on,
            connected: self.connected,
            boot: self.platform.boot_state(),
            image: self.image.clone(),
            ota_state: if self.pull.is_some() {
                1
            } else {
                self.ota.transfer.code()
            },
        }
    }

    /// Whether a download the device asked for is under way; once it is not, the platform
    /// may stop fetching.
    pub fn downloading(&self) -> bool {
        self.pull.is_some()
    }

    /// Bytes of the current download written so far; a resumed download asks for the rest
    /// from here.
    pub fn download_received(&self) -> Option<u64> {
        self.pull
            .as_ref()
            .filter(|pull| pull.started)
            .and_then(|_| self.ota.written())
            .map(|n| n as u64)
    }

    /// Which OTA methods this device offers (`rpc.ota_methods`).
    pub fn ota_methods(&self) -> OtaMethods {
        OtaMethods::from_config(&self.config.get_str(OtaMethods::CONFIG_KEY))
    }

    /// Provisioned means the station interface has a network to join.
    pub fn is_provisioned(&self) -> bool {
        self.config.get_bool("wifi.sta.enable") && !self.config.get_str("wifi.sta.ssid").is_empty()
    }

    /// How to reach the network: the access point until provisioned.
    pub fn network(&self) -> Network {
        if self.is_provisioned() {
            Network::Station {
                ssid: self.config.get_str("wifi.sta.ssid"),
                pass: self.config.get_str("wifi.sta.pass"),
            }
        } else if self.config.get_bool("wifi.ap.enable") {
            Network::AccessPoint {
                ssid: self.config.get_str("wifi.ap.ssid"),
                pass: self.config.get_str("wifi.ap.pass"),
            }
        } else {
            Network::None
        }
    }

    /// `(server URL, device token)` when the cloud connection is enabled and configured.
    pub fn cloud(&self) -> Option<(String, String)> {
        let server = self.config.get_str("dash.server");
        let token = self.config.get_str("dash.token");
        (self.config.get_bool("dash.enable") && !server.is_empty() && !token.is_empty())
            .then_some((server, token))
    }

    /// Merges `patch` into the factory layer and persists it (bench provisioning: server,
    /// token, board wiring). The schema applies; `conf_acl` does not.
    pub fn write_factory(&mut self, patch: &Object) -> Result<(), String> {
        let factory = self
            .config
            .factory_layer_with(patch)
            .map_err(|e| e.to_string())?;
        let bytes =
            serde_json::to_vec(&Value::Object(factory.clone())).map_err(|e| e.to_string())?;
        self.platform
            .store(Layer::Factory, &bytes)
            .map_err(|e| format!("cannot store the factory layer: {e}"))?;
        self.config.set_factory_layer(factory);
        Ok(())
    }

    /// The cloud connection is up: report the light, the firmware and memory (PROTOCOL
    /// §4.4 `reported.ota`, `reported.stats`).
    pub fn connected(&mut self, now_ms: u64) -> Vec<Action> {
        self.now_ms = now_ms;
        self.connected = true;
        self.splitter = FrameSplitter::new(MAX_INPUT_FRAME);
        let interval = self.heartbeat_interval_ms();
        self.heartbeat_due = interval.map(|ms| now_ms.saturating_add(ms));
        let facts = self.platform.facts();
        let mut reported = json!({
            "ota": self.ota_report(),
            "stats": {
                "ram_total": facts.ram_size,
                "ram_free": facts.ram_free,
                "ram_lwm": facts.ram_min_free,
            },
        });
        if self.light {
            reported["on"] = Value::Bool(self.light_on);
        }
        let mut out = Vec::new();
        self.report(reported, &mut out);
        out
    }

    /// The cloud connection is gone. A transfer fed over the socket cannot go on, so it is
    /// abandoned and the inactive slot discarded; the running image is untouched.
    pub fn disconnected(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        self.connected = false;
        self.heartbeat_due = None;
        if self.pull.is_none() {
            self.ota
                .fail(&mut self.platform, "connection lost during the update");
        }
    }

    /// Bytes from the cloud socket; frames may be split or packed arbitrarily (PROTOCOL §1).
    pub fn receive(&mut self, bytes: &[u8], now_ms: u64) -> Vec<Action> {
        self.now_ms = now_ms;
        let mut out = Vec::new();
        // Over the bound, the splitter drops the oversized value (whose id is unknown, so
        // nothing can be answered) and resyncs at the next value; values completed before
        // it in the same push are still handed out below.
        let _ = self.splitter.push(bytes);
        while let Some(next) = self.splitter.next_value() {
            if let Ok(value) = next {
                self.on_value(value, Channel::Cloud, &mut out);
            }
        }
        out
    }

    /// One complete JSON value from the cloud.
    pub fn receive_value(&mut self, value: Value, now_ms: u64) -> Vec<Action> {
        self.now_ms = now_ms;
        let mut out = Vec::new();
        self.on_value(value, Channel::Cloud, &mut out);
        out
    }

    /// One complete request on the local channel (the access point's RPC endpoint or a
    /// serial console). Replies come back as [`Action::SendLocal`].
    pub fn receive_local(&mut self, bytes: &[u8], now_ms: u64) -> Vec<Action> {
        self.now_ms = now_ms;
        let mut out = Vec::new();
        match serde_json::from_slice::<Value>(bytes) {
            Ok(value) => self.on_value(value, Channel::Local, &mut out),
            Err(e) => out.push(Action::SendLocal(
                Frame {
                    error: Some(protocol::frame::RpcError::new(
                        codes::BAD_REQUEST,
                        format!("invalid JSON: {e}"),
                    )),
                    ..Frame::default()
                }
                .to_json(),
            )),
        }
        out
    }

    /// The button changed state. A short press toggles the light; holding it for
    /// `provision.button.hold_ms` resets to factory (seen by [`Device::poll`]).
    pub fn button(&mut self, pressed: bool, now_ms: u64) -> Vec<Action> {
        self.now_ms = now_ms;
        let mut out = Vec::new();
        match (pressed, self.button_since) {
            (true, None) => self.button_since = Some(now_ms),
            (false, Some(since)) => {
                self.button_since = None;
                if !self.reset_done && now_ms.saturating_sub(since) < self.hold_ms() {
                    let on = !self.light_on;
                    self.switch_light(on, &mut out);
                }
            }
            _ => {}
        }
        out.extend(self.poll(now_ms));
        out
    }

    /// Samples a polled button, then runs [`Device::poll`].
    pub fn poll_button(&mut self, button: &mut impl Button, now_ms: u64) -> Vec<Action> {
        self.button(button.is_pressed(), now_ms)
    }

    /// A person switched the light locally (a wall switch, the app in the same room).
    pub fn set_light(&mut self, on: bool, now_ms: u64) -> Vec<Action> {
        self.now_ms = now_ms;
        let mut out = Vec::new();
        self.switch_light(on, &mut out);
        out
    }

    /// When [`Device::poll`] next has work, in uptime milliseconds.
    pub fn next_deadline(&self) -> Option<u64> {
        [
            self.ota.deadline(),
            self.pull
                .as_ref()
                .filter(|pull| !pull.started)
                .map(|pull| pull.start_deadline_ms),
            self.commit_deadline,
            self.button_since
                .filter(|_| !self.reset_done)
                .map(|since| since.saturating_add(self.hold_ms())),
            self.heartbeat_due,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs timers: transfer inactivity, commit timeout, button hold, heartbeat.
    pub fn poll(&mut self, now_ms: u64) -> Vec<Action> {
        self.now_ms = now_ms;
        let mut out = Vec::new();
        if self
            .ota
            .deadline()
            .is_some_and(|deadline| now_ms >= deadline)
        {
            self.pull = None;
            self.ota
                .fail(&mut self.platform, "the update timed out waiting for data");
            self.report_ota(&mut out);
        }
        if self
            .pull
            .as_ref()
            .is_some_and(|pull| !pull.started && now_ms >= pull.start_deadline_ms)
        {
            self.pull = None;
            self.ota
                .refused("the download did not start in time; the platform gave no size");
            self.report_ota(&mut out);
        }
        if self
            .commit_deadline
            .is_some_and(|deadline| now_ms >= deadline)
        {
            self.commit_deadline = None;
            if !self.platform.boot_state().committed {
                // PROTOCOL §8: no OTA.Commit within commit_timeout -> previous image.
                let _ = self.platform.revert();
                out.push(Action::Reboot { delay_ms: 0 });
            }
        }
        if let Some(since) = self.button_since {
            if !self.reset_done && now_ms.saturating_sub(since) >= self.hold_ms() {
                self.reset_done = true;
                self.factory_reset(&mut out);
            }
        }
        if let Some(due) = self.heartbeat_due {
            if now_ms >= due {
                self.heartbeat_due = self
                    .heartbeat_interval_ms()
                    .map(|ms| now_ms.saturating_add(ms));
                if self.connected {
                    let mut params = json!({"uptime": now_ms / 1000});
                    if self.light {
                        params["on"] = Value::Bool(self.light_on);
                    }
                    out.push(Action::Send(
                        Frame {
                            method: Some(protocol::methods::HEARTBEAT.into()),
                            params: Some(params),
                            ..Frame::default()
                        }
                        .to_json(),
                    ));
                }
            }
        }
        out
    }

    /// The download of an [`Action::Download`] announced its size: the slot is prepared.
    /// Called again for the same download, it starts over (a server that answered a
    /// resumed request with the whole image).
    pub fn download_started(&mut self, size: usize, now_ms: u64) -> Vec<Action> {
        self.now_ms = now_ms;
        let mut out = Vec::new();
        let Some(pull) = &mut self.pull else {
            return out;
        };
        if pull.started {
            pull.started = false;
            self.ota.restart(&mut self.platform);
        }
        let expected = pull.expected.clone();
        let commit_timeout_s = pull.commit_timeout_s;
        let result = match expected.size {
            Some(wanted) if wanted != size as u64 => Err((
                codes::BAD_REQUEST,
                verify::size_message(wanted, size as u64),
            )),
            _ => self.ota.start(
                &mut self.platform,
                size,
                ota::DEFAULT_TRANSFER_TIMEOUT_S,
                commit_timeout_s,
                expected,
                now_ms,
            ),
        };
        match result {
            Ok(_) => {
                if let Some(pull) = &mut self.pull {
                    pull.started = true;
                }
            }
            Err((_, message)) => {
                self.pull = None;
                self.ota.refused(&message);
            }
        }
        self.report_ota(&mut out);
        out
    }

    /// The next bytes of the download, at `offset` in the image.
    pub fn download_chunk(&mut self, offset: u64, bytes: &[u8], now_ms: u64) -> Vec<Action> {
        self.now_ms = now_ms;
        let mut out = Vec::new();
        if !self.pull.as_ref().is_some_and(|pull| pull.started) {
            return out;
        }
        match self
            .ota
            .write_bytes(&mut self.platform, Some(offset), bytes, now_ms)
        {
            Ok(_) => self.report_progress(&mut out),
            Err((_, message)) => {
                self.pull = None;
                self.ota.fail(&mut self.platform, &message);
                self.report_ota(&mut out);
            }
        }
        out
    }

    /// The download is complete: check the image (PROTOCOL §10.3, §10.4), stage it and
    /// reboot into it. A refused image is discarded and the refusal reported.
    pub fn download_finished(&mut self, now_ms: u64) -> Vec<Action> {
        self.now_ms = now_ms;
        let mut out = Vec::new();
        let Some(pull) = self.pull.take() else {
            return out;
        };
        if !pull.started {
            self.ota
                .refused("the download ended before the image's size was known");
            self.report_ota(&mut out);
            return out;
        }
        let key = self.update_key();
        let running = self.image.clone();
        let result = self.ota.end(&mut self.platform, &running, &key);
        if let Err((_, message)) = &result {
            // An incomplete image leaves the transfer open; a download will not add to it.
            self.ota.fail(&mut self.platform, message);
        }
        self.report_ota(&mut out);
        if result.is_ok() {
            out.push(Action::Reboot {
                delay_ms: DEFAULT_REBOOT_DELAY_MS,
            });
        }
        out
    }

    /// The download failed; the partly written slot is discarded.
    pub fn download_failed(&mut self, message: &str, now_ms: u64) -> Vec<Action> {
        self.now_ms = now_ms;
        let mut out = Vec::new();
        if self.pull.take().is_none() {
            return out;
        }
        self.ota.fail(&mut self.platform, message);
        self.ota.refused(message);
        self.report_ota(&mut out);
        out
    }

    /// The key images must be signed for (`update.pubkey`, PROTOCOL §10.4).
    fn update_key(&self) -> UpdateKey {
        UpdateKey::from_config(&self.config.get_str(verify::PUBKEY_KEY))
    }

    /// The commit timeout of a new image: what the request says, else `update.commit_timeout`.
    /// A push-only device gets no `OTA.Commit`, so its images commit themselves on boot.
    fn commit_timeout_for(&self, requested: Option<u32>) -> u32 {
        if self.ota_methods() == OtaMethods::Push {
            return 0;
        }
        requested.unwrap_or_else(|| {
            u32::try_from(self.config.get_i64("update.commit_timeout")).unwrap_or(0)
        })
    }

    /// Refuses an update: the refusal shows in `reported.ota` as well as in the reply.
    fn refuse(&mut self, code: i64, message: String, after: &mut Vec<Action>) -> Outcome {
        self.ota.refused(&message);
        self.report_ota(after);
        Err((code, message))
    }

    fn update_in_progress(&self) -> Option<(i64, String)> {
        if self.pull.is_some() || matches!(self.ota.transfer, Transfer::Receiving { .. }) {
            Some(bad("an update is already in progress"))
        } else if matches!(self.ota.transfer, Transfer::Staged) {
            Some(bad("an update is staged; the device is rebooting"))
        } else {
            None
        }
    }

    /// `OTA.Begin` (PROTOCOL §8).
    fn begin_push(&mut self, params: &Value, after: &mut Vec<Action>) -> Outcome {
        let begin = Begin::from_params(params)?;
        if let Some(busy) = self.update_in_progress() {
            return Err(busy);
        }
        if let Some(reason) = self.platform.update_refusal() {
            return self.refuse(codes::FORBIDDEN, reason, after);
        }
        if let Err(message) = verify::admit(&begin.expected, &self.update_key()) {
            return self.refuse(codes::BAD_REQUEST, message, after);
        }
        let commit_timeout_s = self.commit_timeout_for(begin.commit_timeout_s);
        let result = self.ota.start(
            &mut self.platform,
            begin.size,
            begin.timeout_s,
            commit_timeout_s,
            begin.expected,
            self.now_ms,
        );
        if result.is_ok() || matches!(self.ota.transfer, Transfer::Failed(_)) {
            self.report_ota(after);
        }
        result
    }

    /// Starts a device pull (PROTOCOL §10.3): checks what can be checked before anything
    /// is fetched, then asks the platform for the download.
    fn start_pull(&mut self, pull: Pull, after: &mut Vec<Action>) -> Outcome {
        if let Some(busy) = self.update_in_progress() {
            return Err(busy);
        }
        if let Some(reason) = self.platform.update_refusal() {
            return self.refuse(codes::FORBIDDEN, reason, after);
        }
        if !self.platform.boot_state().committed {
            let message =
                "the running firmware is not committed yet; commit or revert it first".into();
            return self.refuse(codes::BAD_REQUEST, message, after);
        }
        if let Err(message) = verify::admit(&pull.expected, &self.update_key()) {
            return self.refuse(codes::BAD_REQUEST, message, after);
        }
        if let Some(size) = pull.expected.size {
            let capacity = self.platform.slot_capacity();
            if size == 0 {
                return self.refuse(codes::BAD_REQUEST, "size must be positive".into(), after);
            }
            if size > capacity as u64 {
                return self.refuse(codes::BAD_REQUEST, ota::fit_message(size, capacity), after);
            }
        }
        let server = self.config.get_str("dash.server");
        let (url, same_server) = match pull::resolve_url(&pull.url, &server) {
            Ok(resolved) => resolved,
            Err(message) => return self.refuse(codes::BAD_REQUEST, message, after),
        };
        let token = Some(self.config.get_str("dash.token"))
            .filter(|token| same_server && !token.is_empty());
        let commit_timeout_s = self.commit_timeout_for(pull.commit_timeout_s);
        let request = DownloadRequest {
            url,
            token,
            size: pull.expected.size,
            sha256: pull.expected.sha256.map(|digest| digest.hex()),
            signature: pull
                .expected
                .signature
                .map(|bytes| base64::engine::general_purpose::STANDARD.encode(bytes)),
            commit_timeout_s,
        };
        self.pull = Some(ActivePull {
            expected: pull.expected,
            commit_timeout_s,
            started: false,
            start_deadline_ms: self
                .now_ms
                .saturating_add(ota::DEFAULT_TRANSFER_TIMEOUT_S * 1000),
        });
        // An earlier failure no longer describes the state: the device is downloading.
        self.ota.transfer = Transfer::Idle;
        self.report_ota(after);
        after.push(Action::Download(request));
        Ok(Value::Bool(true))
    }

    /// A `desired.ota` delta (PROTOCOL §4.4, §10.3): merged over what this boot saw
    /// before, acted on when it asks for something new. Returns the fields to report back
    /// so the delta clears, or `None` while they cannot be taken yet (another update is
    /// under way; the delta then stays and comes again).
    fn desired_ota(&mut self, delta: &Object, after: &mut Vec<Action>) -> Option<Value> {
        protocol::shadow::merge(&mut self.desired_ota, delta);
        let wanted = pull::known_fields(&self.desired_ota);
        if wanted.is_empty() {
            return None;
        }
        if self.last_desired_ota.as_ref() == Some(&wanted) {
            return Some(Value::Object(wanted));
        }
        if self.update_in_progress().is_some() {
            return None;
        }
        self.last_desired_ota = Some(wanted.clone());
        match Pull::from_params(&Value::Object(wanted.clone())) {
            Err(message) => {
                let _ = self.refuse(codes::BAD_REQUEST, format!("desired.ota: {message}"), after);
            }
            Ok(pull) => {
                let running = pull
                    .expected
                    .sha256
                    .is_some_and(|digest| digest.hex() == self.image.fw_id);
                if !running {
                    // Refusals are reported in `reported.ota`; the delta reply only says
                    // the fields were seen.
                    let _ = self.start_pull(pull, after);
                }
            }
        }
        Some(Value::Object(wanted))
    }

    fn hold_ms(&self) -> u64 {
        u64::try_from(self.config.get_i64("provision.button.hold_ms"))
            .unwrap_or(0)
            .max(1)
    }

    fn heartbeat_interval_ms(&self) -> Option<u64> {
        u64::try_from(self.config.get_i64("dash.heartbeat_interval"))
            .ok()
            .filter(|&s| s > 0)
            .map(|s| s.saturating_mul(1000))
    }

    fn drive_light(&mut self) {
        if !self.light {
            return;
        }
        let pin = self.config.get_i64("smartlight.pin");
        let level = self.light_on ^ self.config.get_bool("smartlight.inverted");
        self.platform.set_level(pin, level);
    }

    fn switch_light(&mut self, on: bool, out: &mut Vec<Action>) {
        self.light_on = on;
        self.drive_light();
        self.report(json!({"on": on}), out);
    }

    fn factory_reset(&mut self, out: &mut Vec<Action>) {
        // A failed erase still reboots: the user layer may be corrupt, and the device
        // must not sit in a half-reset state.
        let _ = self.platform.erase(Layer::User);
        self.config.factory_reset();
        out.push(Action::Reboot {
            delay_ms: DEFAULT_REBOOT_DELAY_MS,
        });
    }

    /// Sends `Dash.Shadow.Update` with `reported` if connected.
    fn report(&mut self, reported: Value, out: &mut Vec<Action>) {
        if !self.connected {
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let params = json!({"state": {"reported": reported}});
        out.push(Action::Send(
            Frame {
                id: Some(Value::from(id)),
                method: Some(protocol::methods::SHADOW_UPDATE.into()),
                params: Some(params),
                ..Frame::default()
            }
            .to_json(),
        ));
    }

    fn report_ota(&mut self, out: &mut Vec<Action>) {
        self.reported_percent = self.ota.transfer.percent();
        let ota = self.ota_report();
        self.report(json!({ "ota": ota }), out);
    }

    /// Reports progress at every tenth.
    fn report_progress(&mut self, out: &mut Vec<Action>) {
        let percent = self.ota.transfer.percent();
        let step = |p: Option<u8>| p.map(|p| p / 10);
        if step(percent) != step(self.reported_percent) {
            self.report_ota(out);
        }
    }

    /// `reported.ota` (PROTOCOL §4.4).
    fn ota_report(&mut self) -> Value {
        let boot = self.platform.boot_state();
        let (status, message) = match &self.ota.transfer {
            _ if self.pull.is_some() => (1, "downloading".to_string()),
            Transfer::Idle => match &boot.last {
                Some(outcome) if outcome.ok => (3, outcome.message.clone()),
                Some(outcome) => (2, outcome.message.clone()),
                None => (0, String::new()),
            },
            Transfer::Receiving { .. } => (1, "receiving".to_string()),
            Transfer::Failed(message) => (2, message.clone()),
            Transfer::Staged => (3, "staged; rebooting into the new firmware".to_string()),
        };
        json!({
            "app": self.image.app,
            "arch": self.image.arch,
            "fw_version": self.image.fw_version,
            "fw_id": self.image.fw_id,
            "partition": boot.partition,
            "is_committed": boot.committed,
            "commit_timeout": boot.commit_timeout_s,
            "status": status,
            "message": message,
            "progress_percent": self.ota.transfer.percent().unwrap_or(if status == 3 { 100 } else { 0 }),
        })
    }

    fn send(&self, channel: Channel, frame: Frame, out: &mut Vec<Action>) {
        let text = frame.to_json();
        match channel {
            Channel::Cloud => out.push(Action::Send(text)),
            Channel::Local => out.push(Action::SendLocal(text)),
        }
    }

    fn on_value(&mut self, value: Value, channel: Channel, out: &mut Vec<Action>) {
        let id = value
            .get("id")
            .cloned()
            .filter(|id| id.is_number() || id.is_string());
        let frame = match Frame::from_value(value) {
            Ok(frame) => frame,
            Err(e) => {
                if let Some(id) = id {
                    let reply = Frame {
                        id: Some(id),
                        error: Some(protocol::frame::RpcError::new(
                            codes::BAD_REQUEST,
                            e.to_string(),
                        )),
                        ..Frame::default()
                    };
                    self.send(channel, reply, out);
                }
                return;
            }
        };
        // PROTOCOL §2: a device drops requests addressed to another device.
        let own_id = self.config.get_str("device.id");
        if let Some(dst) = &frame.dst {
            if !own_id.is_empty() && *dst != own_id {
                return;
            }
        }
        match frame.kind() {
            FrameKind::Request | FrameKind::Notification => {
                let mut after = Vec::new();
                let method = frame.method.clone().unwrap_or_default();
                let params = frame.params_or_null();
                let outcome = self.call(&method, &params, channel, &mut after);
                if frame.kind() == FrameKind::Request {
                    self.send(channel, outcome_frame(&frame, outcome), out);
                }
                out.extend(after);
            }
            // Replies to our own `Dash.Shadow.Update`s need no action.
            FrameKind::Reply | FrameKind::Invalid => {}
        }
    }

    fn call(
        &mut self,
        method: &str,
        params: &Value,
        channel: Channel,
        after: &mut Vec<Action>,
    ) -> Outcome {
        if let Some(outcome) = fs::handle(&mut self.platform, method, params) {
            return outcome;
        }
        if method.starts_with("OTA.") && !self.ota_methods().offers(method) {
            return Err((codes::NOT_FOUND, format!("No handler for {method}")));
        }
        match method {
            "RPC.List" => {
                let ota_methods = self.ota_methods();
                Ok(json!(METHODS
                    .iter()
                    .filter(|name| ota_methods.offers(name))
                    .collect::<Vec<_>>()))
            }
            "Sys.GetInfo" => Ok(self.sys_info()),
            "Sys.Reboot" => {
                let delay_ms = match params.get("delay_ms") {
                    None | Some(Value::Null) => DEFAULT_REBOOT_DELAY_MS,
                    Some(v) => v
                        .as_u64()
                        .ok_or_else(|| bad("delay_ms must be a non-negative integer"))?,
                };
                after.push(Action::Reboot { delay_ms });
                Ok(Value::Null)
            }
            "Config.Get" => self.config_get(params),
            "Config.Set" => self.config_set(params, channel, after),
            "Config.Save" => {
                let reboot = optional_bool(params, "reboot")?;
                self.save(after)?;
                if reboot {
                    after.push(Action::Reboot {
                        delay_ms: DEFAULT_REBOOT_DELAY_MS,
                    });
                }
                Ok(json!({"saved": true}))
            }
            "Wifi.Scan" => Ok(json!({"results": self.platform.wifi_scan()})),
            "OTA.Begin" => self.begin_push(params, after),
            "OTA.Write" | "OTA.End" if self.pull.is_some() => Err(bad(
                "the device is downloading its update itself; no OTA.Write or OTA.End expected",
            )),
            "OTA.Write" => {
                let result = self.ota.write(&mut self.platform, params, self.now_ms);
                if result.is_ok() {
                    self.report_progress(after);
                } else if matches!(self.ota.transfer, Transfer::Failed(_)) {
                    self.report_ota(after);
                }
                result
            }
            "OTA.End" => {
                let key = self.update_key();
                let running = self.image.clone();
                let result = self.ota.end(&mut self.platform, &running, &key);
                self.report_ota(after);
                if result.is_ok() {
                    // PROTOCOL §8: after OTA.End the device reboots into the new image.
                    after.push(Action::Reboot {
                        delay_ms: DEFAULT_REBOOT_DELAY_MS,
                    });
                }
                result
            }
            "OTA.Status" if self.pull.is_some() => Ok(json!({
                "state": 1,
                "progress_percent": self.ota.transfer.percent().unwrap_or(0),
            })),
            "OTA.Status" => Ok(self.ota.status()),
            "OTA.Commit" => {
                if !self.platform.boot_state().committed {
                    self.platform
                        .commit()
                        .map_err(|e| (codes::INTERNAL, format!("cannot commit: {e}")))?;
                    self.commit_deadline = None;
                    self.report_ota(after);
                }
                Ok(Value::Bool(true))
            }
            "OTA.Revert" => {
                if self.platform.boot_state().committed {
                    return Err(bad("the running firmware is committed; nothing to revert"));
                }
                self.platform
                    .revert()
                    .map_err(|e| (codes::INTERNAL, format!("cannot revert: {e}")))?;
                after.push(Action::Reboot {
                    delay_ms: DEFAULT_REBOOT_DELAY_MS,
                });
                Ok(Value::Bool(true))
            }
            "OTA.Update" => {
                let pull = Pull::from_params(params).map_err(bad)?;
                self.start_pull(pull, after)
            }
            "Shadow.Delta" if channel == Channel::Cloud => self.shadow_delta(params, after),
            _ => Err((codes::NOT_FOUND, format!("No handler for {method}"))),
        }
    }

    fn sys_info(&mut self) -> Value {
        let facts = self.platform.facts();
        let (fs_size, fs_free) = self.platform.capacity();
        let mut info = json!({
            "id": self.config.get_str("device.id"),
            "app": self.image.app,
            "fw_version": self.image.fw_version,
            "fw_id": self.image.fw_id,
            "arch": self.image.arch,
            "mac": facts.mac,
            "uptime": self.now_ms / 1000,
            "ram_size": facts.ram_size,
            "ram_free": facts.ram_free,
            "ram_min_free": facts.ram_min_free,
            "fs_size": fs_size,
            "fs_free": fs_free,
        });
        if let Some(wifi) = facts.wifi {
            info["wifi"] = wifi;
        }
        info
    }

    fn config_get(&self, params: &Value) -> Outcome {
        let key = match params.get("key") {
            None | Some(Value::Null) => "",
            Some(Value::String(key)) => key.as_str(),
            Some(_) => return Err(bad("key must be a string")),
        };
        self.config
            .get(key)
            .ok_or_else(|| (codes::NOT_FOUND, format!("no config key {key}")))
    }

    fn config_set(&mut self, params: &Value, channel: Channel, after: &mut Vec<Action>) -> Outcome {
        let patch = match (params.get("config"), params.get("key")) {
            (Some(Value::Object(config)), _) => config.clone(),
            (Some(_), _) => return Err(bad("config must be an object")),
            (None, Some(Value::String(key))) => {
                let value = params
                    .get("value")
                    .cloned()
                    .ok_or_else(|| bad("value is required with key"))?;
                config::nest(key, value).map_err(|e| (e.code(), e.to_string()))?
            }
            _ => return Err(bad("expected {\"config\": {...}} or {\"key\", \"value\"}")),
        };
        let save = optional_bool(params, "save")?;
        let reboot = optional_bool(params, "reboot")?;
        if channel == Channel::Cloud && config::lookup(&patch, verify::PUBKEY_KEY).is_some() {
            // PROTOCOL §10.4: the key protects the device from whoever can reach it through
            // the cloud, so the cloud must not be able to change or remove it.
            return Err((
                codes::FORBIDDEN,
                format!(
                    "{} can only be set locally or in the factory layer",
                    verify::PUBKEY_KEY
                ),
            ));
        }
        match params.get("level") {
            None | Some(Value::Null) => {}
            Some(Value::String(level)) if level == "factory" => {
                // The factory layer is written on the bench, never from the cloud.
                if channel != Channel::Local {
                    return Err((
                        codes::FORBIDDEN,
                        "the factory layer can only be written locally".into(),
                    ));
                }
                self.write_factory(&patch)
                    .map_err(|e| (codes::BAD_REQUEST, e))?;
                return Ok(json!({"saved": true}));
            }
            Some(_) => return Err(bad("level must be \"factory\" or absent")),
        }
        self.config
            .set(&patch)
            .map_err(|e| (e.code(), e.to_string()))?;
        if save {
            self.save(after)?;
        }
        if reboot {
            after.push(Action::Reboot {
                delay_ms: DEFAULT_REBOOT_DELAY_MS,
            });
        }
        Ok(json!({"saved": save}))
    }

    /// Persists the user layer. On failure nothing stored changes and the unsaved
    /// changes stay in RAM, so a retry can still save them.
    fn save(&mut self, after: &mut Vec<Action>) -> Result<(), (i64, String)> {
        let was_provisioned = self.is_provisioned_stored();
        let user = self.config.user_layer_to_save();
        let bytes = serde_json::to_vec(&Value::Object(user.clone()))
            .map_err(|e| (codes::INTERNAL, e.to_string()))?;
        self.platform
            .store(Layer::User, &bytes)
            .map_err(|e| (codes::INTERNAL, format!("cannot save config: {e}")))?;
        self.config.saved(user);
        if !was_provisioned && self.is_provisioned() {
            // Leaving access point mode for the configured network takes a restart.
            after.push(Action::Reboot {
                delay_ms: DEFAULT_REBOOT_DELAY_MS,
            });
        }
        Ok(())
    }

    fn is_provisioned_stored(&self) -> bool {
        let stored = Config::new(
            self.config.factory_layer().clone(),
            self.config.user_layer().clone(),
        );
        stored.get_bool("wifi.sta.enable") && !stored.get_str("wifi.sta.ssid").is_empty()
    }

    /// PROTOCOL §4.3: apply the delta, drive the light, reply with what is now reported.
    fn shadow_delta(&mut self, params: &Value, after: &mut Vec<Action>) -> Outcome {
        let Some(state) = params.get("state").and_then(Value::as_object) else {
            return Err(bad("state must be an object"));
        };
        let on = match state.get("on") {
            None => None,
            Some(Value::Bool(on)) => Some(*on),
            Some(_) => return Err(bad("on must be a boolean")),
        };
        let mut reported = Object::new();
        if let Some(on) = on {
            self.light_on = on;
            self.drive_light();
            reported.insert("on".into(), Value::Bool(on));
        }
        // A push-only device does not pull, like the mDash device library: it leaves
        // `desired.ota` alone.
        if let Some(Value::Object(ota)) = state.get("ota") {
            if self.ota_methods() == OtaMethods::All {
                if let Some(echo) = self.desired_ota(ota, after) {
                    reported.insert("ota".into(), echo);
                }
            }
        }
        Ok(Value::Object(reported))
    }
}
