//! A simulated board around the engine: a clock, a cloud that records what the device
//! sent, and reboots that go through the bootloader.
#![allow(dead_code)]

use firmware_core::device::{Action, Device};
use firmware_core::memory::MemoryPlatform;
use firmware_core::ota::ImageInfo;
use firmware_core::pull::DownloadRequest;
use serde_json::{json, Value};

pub fn image() -> ImageInfo {
    ImageInfo {
        app: "herd-light".into(),
        arch: "esp32c3".into(),
        fw_version: "1.0.0".into(),
        fw_id: "0000000000000001".into(),
    }
}

pub struct Board {
    pub device: Option<Device<MemoryPlatform>>,
    /// Milliseconds since the current boot.
    pub now: u64,
    /// Frames sent to the cloud since the last `take_sent`.
    pub sent: Vec<Value>,
    pub local: Vec<Value>,
    pub reboots: u32,
    /// Downloads the device asked for, in order.
    pub downloads: Vec<DownloadRequest>,
    pub connected: bool,
}

impl Board {
    pub fn new() -> Board {
        Board::with(MemoryPlatform::new(image()))
    }

    pub fn with(platform: MemoryPlatform) -> Board {
        Board {
            device: Some(Device::boot(platform, 0)),
            now: 0,
            sent: Vec::new(),
            local: Vec::new(),
            reboots: 0,
            downloads: Vec::new(),
            connected: false,
        }
    }

    pub fn device(&mut self) -> &mut Device<MemoryPlatform> {
        self.device.as_mut().expect("device is booted")
    }

    pub fn platform(&mut self) -> &mut MemoryPlatform {
        self.device().platform_mut()
    }

    pub fn advance(&mut self, ms: u64) {
        self.now += ms;
        let now = self.now;
        let actions = self.device().poll(now);
        self.perform(actions);
    }

    pub fn connect(&mut self) {
        self.connected = true;
        let now = self.now;
        let actions = self.device().connected(now);
        self.perform(actions);
    }

    pub fn disconnect(&mut self) {
        self.connected = false;
        let now = self.now;
        self.device().disconnected(now);
    }

    /// Sends raw bytes from the cloud and performs what comes back.
    pub fn feed(&mut self, bytes: &[u8]) {
        let now = self.now;
        let actions = self.device().receive(bytes, now);
        self.perform(actions);
    }

    /// A cloud request; returns the reply frame.
    pub fn call(&mut self, id: u64, method: &str, params: Value) -> Value {
        self.sent.clear();
        let frame = json!({"id": id, "method": method, "params": params});
        self.feed(frame.to_string().as_bytes());
        self.sent
            .iter()
            .find(|f| f["id"] == id && f.get("method").is_none())
            .cloned()
            .unwrap_or_else(|| panic!("no reply to {method}: {:?}", self.sent))
    }

    pub fn local_call(&mut self, id: u64, method: &str, params: Value) -> Value {
        self.local.clear();
        let frame = json!({"id": id, "method": method, "params": params});
        let now = self.now;
        let actions = self
            .device()
            .receive_local(frame.to_string().as_bytes(), now);
        self.perform(actions);
        self.local.last().cloned().expect("local reply")
    }

    pub fn perform(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send(text) => {
                    assert!(self.connected, "sent while disconnected: {text}");
                    self.sent
                        .push(serde_json::from_str(&text).expect("device sends JSON"));
                }
                Action::SendLocal(text) => self
                    .local
                    .push(serde_json::from_str(&text).expect("device sends JSON")),
                Action::Reboot { .. } => self.reboot(),
                Action::Download(request) => self.downloads.push(request),
            }
        }
    }

    /// Restarts through the bootloader, as a real board does.
    pub fn reboot(&mut self) {
        let mut platform = self.device.take().expect("booted").into_platform();
        platform.reboot();
        self.reboots += 1;
        self.now = 0;
        self.device = Some(Device::boot(platform, 0));
        if self.connected {
            self.connected = false;
            self.connect();
        }
    }

    /// Reported states the device sent with `Dash.Shadow.Update`, merged in order.
    pub fn reported_updates(&self) -> Vec<Value> {
        self.sent
            .iter()
            .filter(|f| f["method"] == "Dash.Shadow.Update")
            .map(|f| f["params"]["state"]["reported"].clone())
            .collect()
    }

    /// Feeds `image` as the platform would for the last download, in `chunk`-byte pieces.
    pub fn serve_download(&mut self, image: &[u8], chunk: usize) {
        let now = self.now;
        let actions = self.device().download_started(image.len(), now);
        self.perform(actions);
        for (n, piece) in image.chunks(chunk).enumerate() {
            let actions = self.device().download_chunk((n * chunk) as u64, piece, now);
            self.perform(actions);
        }
        let actions = self.device().download_finished(now);
        self.perform(actions);
    }

    pub fn last_ota_report(&self) -> Value {
        self.reported_updates()
            .into_iter()
            .rev()
            .find_map(|r| r.get("ota").cloned())
            .expect("an ota report")
    }
}
