//! The Cloud Communication Module (CCM): a Herd device that stands in front of a host
//! microcontroller on a serial line, so that any MCU that can print a line of JSON gets a
//! shadow, RPC and events.
//!
//! [`Ccm`] wraps a [`Device`] (booted [`Device::without_light`]) and sits between two
//! channels. It takes bytes from the UART ([`Ccm::host_bytes`]) and from the cloud socket
//! ([`Ccm::receive`]) and returns [`Action`]s: [`Action::SendLocal`] is one frame for the
//! UART, written followed by `\n`; [`Action::Send`] is one frame for the cloud.
//!
//! # On the UART
//! Newline-delimited JSON-RPC as the mjson library on the host speaks it: one compact
//! JSON object per line, `\r\n` accepted, `jsonrpc` neither required nor sent. A request
//! with an `id` gets a reply with that id; without one it is a notification and gets none.
//! Errors use the JSON-RPC codes mjson knows: -32700 for a line that is not JSON, -32600
//! for JSON that is not a request, -32601 for an unknown method, -32602 for bad params;
//! failures of the cloud side carry the codes of PROTOCOL §2 ([`NOT_CONNECTED`],
//! [`TIMED_OUT`], ...).
//!
//! Lines are bounded ([`CcmOptions::max_line`]). A line over the bound is answered with
//! an error as soon as the bound is crossed and the rest of it is skipped up to its
//! newline. A line that is not JSON is answered with -32700; when its start is lost (a
//! host that reset in the middle of a line leaves half a frame before its next one), the
//! last complete frame in it is still served. Errors carry the line's `id` when one can be
//! read from it, so the host's pending call ends; otherwise they carry none, as mjson's own
//! errors do. Replies from the host that answer nothing (late, or to an error) are dropped
//! and counted; the CCM never answers a reply, so two peers cannot loop on errors.
//! [`CcmCounters`] count all of it.
//!
//! # Services to the host
//! | host calls | what the CCM does |
//! |---|---|
//! | `Shadow.Report` `{...}` | `Dash.Shadow.Update` with `{"state": {"reported": {...}}}` (PROTOCOL §3); the reply is `true` once the cloud took it. Offline, reports are merged and sent when the link comes up, and the reply is `true` at once |
//! | `Shadow.Get` | `Dash.Shadow.Get`; the reply is the shadow document without its per-leaf `metadata` |
//! | `MQTT.Pub` `{"topic", "message"}` | Herd has no broker: the message becomes a device notification `MQTT.Pub` that the server logs and streams as the event `rpc.out.MQTT.Pub` with data `{"topic", "message"}` (PROTOCOL §3, §5) |
//! | `MQTT.Sub` `{"topic"}` | remembers the topic filter (`+` and `#` as in MQTT); the cloud publishes to the host by calling the device method `MQTT.Pub` `{"topic", "message"}`, which the CCM delivers as the notification `MQTT.Message` `{"topic", "message"}` to the host when a filter matches (404 to the caller when none does) |
//! | `MQTT.Unsub` `{"topic"}` | forgets the filter |
//! | `Config.Get`, `Config.Set`, `Config.Save`, `Sys.GetInfo`, `Sys.Reboot` | the CCM's own configuration and system (PROTOCOL §9), served by the wrapped [`Device`] as a local caller |
//!
//! When the CCM boots it sends the notification `Sys.Init` to the host, so that the host
//! subscribes again (subscriptions live in the CCM's RAM only).
//!
//! # From the cloud
//! - `Shadow.Delta`: the notification `Shadow.Delta` to the host with the delta's `state`
//!   as params (mjson hosts read `$.on` from params), and `true` to the cloud; the host
//!   answers by reporting.
//! - `MQTT.Pub`: see above.
//! - The CCM's own methods ([`crate::device::METHODS`] but `Shadow.Delta`: `Sys.*`,
//!   `Config.*`, `FS.*`, `OTA.*`, `RPC.List`, `Wifi.Scan`): served by the [`Device`].
//! - Anything else (`Sum`, whatever the host exports): forwarded to the host with an id of
//!   the CCM's own and the original params; the host's `result` or `error` goes back to
//!   the cloud with the cloud's id and `tag`. Unanswered within
//!   [`CcmOptions::call_timeout_ms`], the cloud gets [`TIMED_OUT`] naming the method.
//!   At most [`CcmOptions::max_pending`] calls wait for the host at once.
//!
//! ```
//! use firmware_core::ccm::{Ccm, CcmOptions};
//! use firmware_core::device::{Action, Device};
//! use firmware_core::memory::MemoryPlatform;
//! use firmware_core::ota::ImageInfo;
//!
//! let device = Device::boot(MemoryPlatform::new(ImageInfo::default()), 0);
//! let mut ccm = Ccm::new(device, CcmOptions::default());
//! assert_eq!(ccm.start(0), vec![Action::SendLocal(r#"{"method":"Sys.Init"}"#.into())]);
//! ccm.connected(0);
//! // The cloud calls a method the host exports; the CCM forwards it with its own id...
//! let actions = ccm.receive(br#"{"id":7,"method":"Sum","params":{"a":2,"b":3}}"#, 10);
//! assert_eq!(actions, vec![Action::SendLocal(r#"{"id":1,"method":"Sum","params":{"a":2,"b":3}}"#.into())]);
//! // ...and the host's answer goes back under the cloud's id.
//! let actions = ccm.host_bytes(b"{\"id\":1,\"result\":5}\n", 20);
//! assert_eq!(actions, vec![Action::Send(r#"{"id":7,"result":5}"#.into())]);
//! ```

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use protocol::codes;
use protocol::frame::{Frame, FrameKind, RpcError};
use protocol::methods;
use protocol::splitter::FrameSplitter;
use serde_json::{json, Value};

use crate::config::Object;
use crate::device::{Action, Device, MAX_INPUT_FRAME, METHODS};
use crate::platform::Platform;

/// Longest line taken from or sent to the host, without its newline.
pub const DEFAULT_MAX_LINE: usize = 4096;

/// How long a cloud call waits for the host, and a host call for the cloud; shorter than
/// the server's RPC timeout (PROTOCOL §6, 20 s) so the caller sees the CCM's error.
pub const DEFAULT_CALL_TIMEOUT_MS: u64 = 10_000;

/// Calls waiting for the host at once.
pub const DEFAULT_MAX_PENDING: usize = 16;

/// Topic filters the host may hold.
pub const MAX_SUBSCRIPTIONS: usize = 32;

/// Ids of the CCM's own requests to the cloud start here, far above the ids the wrapped
/// [`Device`] counts up from 1, so replies find their way without sharing a counter.
pub const CLOUD_ID_BASE: u64 = 1 << 40;

/// JSON-RPC: the line is not JSON.
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC: JSON, but not a request.
pub const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC: no such method (mjson's code; PROTOCOL §2 passes it through).
pub const METHOD_NOT_FOUND: i64 = codes::METHOD_NOT_FOUND;
/// JSON-RPC: the params do not fit the method.
pub const INVALID_PARAMS: i64 = -32602;
/// The cloud link is down, or the host cannot take another call.
pub const NOT_CONNECTED: i64 = 503;
/// The other side did not answer in time.
pub const TIMED_OUT: i64 = 504;

/// What the host may call (see the module docs).
pub const HOST_METHODS: &[&str] = &[
    "Shadow.Report",
    "Shadow.Get",
    "MQTT.Pub",
    "MQTT.Sub",
    "MQTT.Unsub",
    methods::CONFIG_GET,
    methods::CONFIG_SET,
    methods::CONFIG_SAVE,
    methods::SYS_GET_INFO,
    methods::SYS_REBOOT,
];

/// Limits of the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CcmOptions {
    /// Longest line in either direction, in bytes without the newline.
    pub max_line: usize,
    /// How long a call waits for the other side.
    pub call_timeout_ms: u64,
    /// Cloud calls waiting for the host at once; more are refused with [`NOT_CONNECTED`].
    pub max_pending: usize,
}

impl Default for CcmOptions {
    fn default() -> Self {
        CcmOptions {
            max_line: DEFAULT_MAX_LINE,
            call_timeout_ms: DEFAULT_CALL_TIMEOUT_MS,
            max_pending: DEFAULT_MAX_PENDING,
        }
    }
}

/// What happened on the UART, for logs and status displays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CcmCounters {
    /// Frames from the host that were served (requests, notifications, replies).
    pub host_frames: u64,
    /// Lines or frames answered with an error: not JSON, torn, too long, not a request,
    /// unknown method, bad params.
    pub host_errors: u64,
    /// Frames dropped without an answer: replies that match no call, errors without an id.
    pub host_dropped: u64,
    /// Cloud calls forwarded to the host.
    pub forwarded: u64,
    /// Cloud calls the host did not answer in time.
    pub timeouts: u64,
    /// Frames for the host that were over the line bound and not sent.
    pub oversized_out: u64,
}

/// A cloud call waiting for the host.
#[derive(Debug)]
struct Forwarded {
    cloud_id: Value,
    tag: Option<Value>,
    method: String,
    deadline_ms: u64,
}

/// What a host call waiting for the cloud asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upstream {
    Report,
    Get,
}

/// A host call waiting for the cloud.
#[derive(Debug)]
struct HostCall {
    host_id: Option<Value>,
    what: Upstream,
    deadline_ms: u64,
}

/// The answer to a host frame: now, when the cloud replies, or already given.
enum Answer {
    Now(Result<Value, (i64, String)>),
    Later,
    Given,
}

/// The CCM engine (see the module docs).
#[derive(Debug)]
pub struct Ccm<P: Platform> {
    device: Device<P>,
    options: CcmOptions,
    line: Vec<u8>,
    /// Skipping the rest of an over-long line.
    skipping: bool,
    cloud_input: FrameSplitter,
    connected: bool,
    next_host_id: u64,
    next_cloud_id: u64,
    forwarded: BTreeMap<u64, Forwarded>,
    upstream: BTreeMap<u64, HostCall>,
    /// Reports taken while offline, merged, for when the link comes up.
    unsent_report: Option<Object>,
    subscriptions: Vec<String>,
    counters: CcmCounters,
}

fn error_frame(id: Option<Value>, code: i64, message: impl Into<String>) -> Frame {
    Frame {
        id,
        error: Some(RpcError::new(code, message)),
        ..Frame::default()
    }
}

fn reply_frame(id: Option<Value>, outcome: Result<Value, (i64, String)>) -> Frame {
    match outcome {
        Ok(result) => Frame {
            id,
            result: Some(result),
            ..Frame::default()
        },
        Err((code, message)) => error_frame(id, code, message),
    }
}

fn invalid_params(message: impl Into<String>) -> (i64, String) {
    (INVALID_PARAMS, message.into())
}

fn topic_param(params: &Value) -> Result<String, (i64, String)> {
    match params.get("topic") {
        Some(Value::String(topic)) if !topic.is_empty() => Ok(topic.clone()),
        _ => Err(invalid_params("topic must be a non-empty string")),
    }
}

/// Whether an MQTT topic filter (`+` one level, `#` the rest) matches a topic.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut wanted = filter.split('/');
    let mut levels = topic.split('/');
    loop {
        match (wanted.next(), levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Sets `patch` over `target`: objects merge key by key, anything else (`null` included,
/// so that a deletion still reaches the shadow) replaces.
fn overlay(target: &mut Object, patch: &Object) {
    for (key, value) in patch {
        match (target.get_mut(key), value) {
            (Some(Value::Object(inner)), Value::Object(patch)) => overlay(inner, patch),
            _ => {
                target.insert(key.clone(), value.clone());
            }
        }
    }
}

/// The `id` of a line that is not a whole frame, read from its text: `"id"`, a colon and
/// a number or a simple string. Best effort: it lets an error end the host's call.
fn recover_id(line: &[u8]) -> Option<Value> {
    const KEY: &[u8] = b"\"id\"";
    let start = line.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let mut rest = line[start..]
        .iter()
        .copied()
        .skip_while(u8::is_ascii_whitespace);
    if rest.next()? != b':' {
        return None;
    }
    let rest: Vec<u8> = rest.skip_while(u8::is_ascii_whitespace).collect();
    match rest.first()? {
        b'"' => {
            let end = rest[1..].iter().position(|&b| b == b'"' || b == b'\\')?;
            (rest[1 + end] == b'"')
                .then(|| core::str::from_utf8(&rest[1..1 + end]).ok())
                .flatten()
                .map(|text| Value::String(text.into()))
        }
        b'-' | b'0'..=b'9' => {
            let end = rest
                .iter()
                .skip(1)
                .position(|b| !b.is_ascii_digit())
                .map_or(rest.len(), |n| n + 1);
            let text = core::str::from_utf8(&rest[..end]).ok()?;
            text.parse::<i64>().ok().map(Value::from)
        }
        _ => None,
    }
}

/// The id of a parsed value, if it is one a reply can carry.
fn value_id(value: &Value) -> Option<Value> {
    value
        .get("id")
        .filter(|id| id.is_number() || id.is_string())
        .cloned()
}

impl<P: Platform> Ccm<P> {
    /// A CCM around `device`, which becomes a device without the smart light.
    pub fn new(device: Device<P>, options: CcmOptions) -> Ccm<P> {
        Ccm {
            device: device.without_light(),
            options,
            line: Vec::new(),
            skipping: false,
            cloud_input: FrameSplitter::new(MAX_INPUT_FRAME),
            connected: false,
            next_host_id: 1,
            next_cloud_id: CLOUD_ID_BASE,
            forwarded: BTreeMap::new(),
            upstream: BTreeMap::new(),
            unsent_report: None,
            subscriptions: Vec::new(),
            counters: CcmCounters::default(),
        }
    }

    /// The wrapped device.
    pub fn device(&self) -> &Device<P> {
        &self.device
    }

    /// The wrapped device, for the platform's own calls (downloads, status).
    pub fn device_mut(&mut self) -> &mut Device<P> {
        &mut self.device
    }

    /// Ends this boot and hands the device back.
    pub fn into_device(self) -> Device<P> {
        self.device
    }

    /// What happened on the UART so far.
    pub fn counters(&self) -> CcmCounters {
        self.counters
    }

    /// The topic filters the host subscribed to.
    pub fn subscriptions(&self) -> &[String] {
        &self.subscriptions
    }

    /// `(server URL, device token)` when the cloud connection is configured.
    pub fn cloud(&self) -> Option<(String, String)> {
        self.device.cloud()
    }

    /// The CCM booted: tell the host (`Sys.Init`), so it subscribes again.
    pub fn start(&mut self, _now_ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        let init = Frame {
            method: Some("Sys.Init".into()),
            ..Frame::default()
        };
        self.tell_host(init, &mut out);
        out
    }

    /// The cloud connection is up: the device reports itself, then what the host reported
    /// while it was down.
    pub fn connected(&mut self, now_ms: u64) -> Vec<Action> {
        self.connected = true;
        self.cloud_input = FrameSplitter::new(MAX_INPUT_FRAME);
        let mut out = self.device.connected(now_ms);
        if let Some(reported) = self.unsent_report.take() {
            self.report(Value::Object(reported), None, now_ms, &mut out);
        }
        out
    }

    /// The cloud connection is gone: host calls waiting for the cloud fail now; cloud
    /// calls waiting for the host are forgotten (their replies would have nowhere to go).
    pub fn disconnected(&mut self, now_ms: u64) -> Vec<Action> {
        self.connected = false;
        self.device.disconnected(now_ms);
        self.forwarded.clear();
        let mut out = Vec::new();
        for (_, call) in core::mem::take(&mut self.upstream) {
            if call.host_id.is_some() {
                let frame =
                    error_frame(call.host_id, NOT_CONNECTED, "the cloud connection was lost");
                self.tell_host(frame, &mut out);
            }
        }
        out
    }

    /// When [`Ccm::poll`] next has work, in uptime milliseconds.
    pub fn next_deadline(&self) -> Option<u64> {
        let forwarded = self.forwarded.values().map(|call| call.deadline_ms);
        let upstream = self.upstream.values().map(|call| call.deadline_ms);
        forwarded
            .chain(upstream)
            .chain(self.device.next_deadline())
            .min()
    }

    /// Runs timers: calls that waited too long, and the device's own.
    pub fn poll(&mut self, now_ms: u64) -> Vec<Action> {
        let mut out = self.device.poll(now_ms);
        let expired: Vec<u64> = self
            .forwarded
            .iter()
            .filter(|(_, call)| now_ms >= call.deadline_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(call) = self.forwarded.remove(&id) {
                self.counters.timeouts += 1;
                let message = format!(
                    "the host MCU did not answer {} within {} ms",
                    call.method, self.options.call_timeout_ms
                );
                let frame = Frame {
                    tag: call.tag,
                    ..error_frame(Some(call.cloud_id), TIMED_OUT, message)
                };
                out.push(Action::Send(frame.to_json()));
            }
        }
        let expired: Vec<u64> = self
            .upstream
            .iter()
            .filter(|(_, call)| now_ms >= call.deadline_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(call) = self.upstream.remove(&id) {
                if call.host_id.is_some() {
                    let message = format!(
                        "the cloud did not answer within {} ms",
                        self.options.call_timeout_ms
                    );
                    self.tell_host(error_frame(call.host_id, TIMED_OUT, message), &mut out);
                }
            }
        }
        out
    }

    /// Bytes from the UART, split or packed any way.
    pub fn host_bytes(&mut self, bytes: &[u8], now_ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        for &byte in bytes {
            if byte == b'\n' {
                if !core::mem::take(&mut self.skipping) {
                    let line = core::mem::take(&mut self.line);
                    self.host_line(&line, now_ms, &mut out);
                }
                continue;
            }
            if self.skipping {
                continue;
            }
            if self.line.len() >= self.options.max_line {
                let start = core::mem::take(&mut self.line);
                self.skipping = true;
                self.counters.host_errors += 1;
                let message = format!(
                    "line longer than {} bytes; skipped to its end",
                    self.options.max_line
                );
                self.tell_host(
                    error_frame(recover_id(&start), PARSE_ERROR, message),
                    &mut out,
                );
            } else {
                self.line.push(byte);
            }
        }
        out
    }

    /// Bytes from the cloud socket; frames may be split or packed (PROTOCOL §1).
    pub fn receive(&mut self, bytes: &[u8], now_ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        // Over the bound the splitter drops the value it was collecting and resyncs; the
        // values it completed are still served, as the device does.
        let _ = self.cloud_input.push(bytes);
        while let Some(next) = self.cloud_input.next_value() {
            if let Ok(value) = next {
                self.cloud_value(value, now_ms, &mut out);
            }
        }
        out
    }

    /// Queues one of the CCM's own frames (replies, errors, `Sys.Init`) for the host.
    fn tell_host(&mut self, frame: Frame, out: &mut Vec<Action>) {
        out.push(Action::SendLocal(frame.to_json()));
    }

    /// Queues a frame carrying what the cloud sent, unless it is over the line bound,
    /// which the host's buffer is assumed to match.
    fn tell_host_bounded(&mut self, frame: Frame, out: &mut Vec<Action>) -> bool {
        let text = frame.to_json();
        if text.len() > self.options.max_line {
            self.counters.oversized_out += 1;
            return false;
        }
        out.push(Action::SendLocal(text));
        true
    }

    fn host_line(&mut self, line: &[u8], now_ms: u64, out: &mut Vec<Action>) {
        let line = line.trim_ascii();
        if line.is_empty() {
            return;
        }
        match serde_json::from_slice::<Value>(line) {
            Ok(value) => self.host_value(value, now_ms, out),
            Err(error) => {
                self.counters.host_errors += 1;
                // A torn frame followed by a whole one: answer the torn part, serve the rest.
                let whole = (1..line.len())
                    .filter(|&at| line[at] == b'{')
                    .find_map(|at| serde_json::from_slice::<Value>(&line[at..]).ok())
                    .filter(Value::is_object);
                let message = match whole {
                    Some(_) => "incomplete frame before the next one".to_string(),
                    None => format!("parse error: {error}"),
                };
                self.tell_host(error_frame(recover_id(line), PARSE_ERROR, message), out);
                if let Some(value) = whole {
                    self.host_value(value, now_ms, out);
                }
            }
        }
    }

    fn host_value(&mut self, value: Value, now_ms: u64, out: &mut Vec<Action>) {
        let id = value_id(&value);
        let frame = match Frame::from_value(value) {
            Ok(frame) => frame,
            Err(error) => {
                self.counters.host_errors += 1;
                let message = format!("invalid request: {}", error.message());
                self.tell_host(error_frame(id, INVALID_REQUEST, message), out);
                return;
            }
        };
        match frame.kind() {
            FrameKind::Reply => self.host_reply(frame, out),
            FrameKind::Invalid if frame.result.is_some() || frame.error.is_some() => {
                // An answer to nothing (an error about one of ours, most likely).
                self.counters.host_dropped += 1;
            }
            FrameKind::Invalid => {
                self.counters.host_errors += 1;
                self.tell_host(
                    error_frame(None, INVALID_REQUEST, "a frame needs a method or an id"),
                    out,
                );
            }
            FrameKind::Request | FrameKind::Notification => {
                let method = frame.method.clone().unwrap_or_default();
                let answer = self.host_call(&method, &frame, now_ms, out);
                match answer {
                    Answer::Now(outcome) => {
                        if outcome.is_err() {
                            self.counters.host_errors += 1;
                        } else {
                            self.counters.host_frames += 1;
                        }
                        if frame.id.is_some() {
                            self.tell_host(reply_frame(frame.id, outcome), out);
                        }
                    }
                    Answer::Later => self.counters.host_frames += 1,
                    Answer::Given => {}
                }
            }
        }
    }

    /// The host answers a cloud call.
    fn host_reply(&mut self, frame: Frame, out: &mut Vec<Action>) {
        let call = frame
            .id
            .as_ref()
            .and_then(Value::as_u64)
            .and_then(|id| self.forwarded.remove(&id));
        let Some(call) = call else {
            self.counters.host_dropped += 1;
            return;
        };
        self.counters.host_frames += 1;
        let reply = Frame {
            id: Some(call.cloud_id),
            tag: call.tag,
            result: if frame.error.is_some() {
                None
            } else {
                Some(frame.result.unwrap_or(Value::Null))
            },
            error: frame.error,
            ..Frame::default()
        };
        out.push(Action::Send(reply.to_json()));
    }

    fn host_call(
        &mut self,
        method: &str,
        frame: &Frame,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) -> Answer {
        let params = frame.params_or_null();
        match method {
            "Shadow.Report" => match params {
                Value::Object(reported) => {
                    self.report(Value::Object(reported), frame.id.clone(), now_ms, out)
                }
                _ => Answer::Now(Err(invalid_params("params must be the reported object"))),
            },
            "Shadow.Get" => {
                if !self.connected {
                    return Answer::Now(Err((NOT_CONNECTED, "not connected to the cloud".into())));
                }
                self.upstream(
                    methods::SHADOW_GET,
                    None,
                    Upstream::Get,
                    frame.id.clone(),
                    now_ms,
                    out,
                );
                Answer::Later
            }
            "MQTT.Pub" => {
                let topic = match topic_param(&params) {
                    Ok(topic) => topic,
                    Err(error) => return Answer::Now(Err(error)),
                };
                if !self.connected {
                    return Answer::Now(Err((
                        NOT_CONNECTED,
                        "not connected to the cloud; message dropped".into(),
                    )));
                }
                let message = params.get("message").cloned().unwrap_or(Value::Null);
                let event = Frame {
                    method: Some("MQTT.Pub".into()),
                    params: Some(json!({"topic": topic, "message": message})),
                    ..Frame::default()
                };
                out.push(Action::Send(event.to_json()));
                Answer::Now(Ok(Value::Bool(true)))
            }
            "MQTT.Sub" => Answer::Now(topic_param(&params).and_then(|topic| {
                if !self.subscriptions.contains(&topic) {
                    if self.subscriptions.len() >= MAX_SUBSCRIPTIONS {
                        return Err(invalid_params(format!(
                            "at most {MAX_SUBSCRIPTIONS} subscriptions"
                        )));
                    }
                    self.subscriptions.push(topic);
                }
                Ok(Value::Bool(true))
            })),
            "MQTT.Unsub" => Answer::Now(topic_param(&params).map(|topic| {
                self.subscriptions.retain(|held| *held != topic);
                Value::Bool(true)
            })),
            _ if HOST_METHODS.contains(&method) => {
                // The device serves its own services to a local caller and answers in
                // SendLocal frames that already carry the host's id.
                let request = Frame {
                    id: frame.id.clone(),
                    method: Some(method.into()),
                    params: frame.params.clone(),
                    ..Frame::default()
                };
                let actions = self
                    .device
                    .receive_local(request.to_json().as_bytes(), now_ms);
                let mut failed = false;
                for action in actions {
                    if let Action::SendLocal(text) = &action {
                        failed |= serde_json::from_str::<Value>(text)
                            .is_ok_and(|reply| reply.get("error").is_some());
                    }
                    out.push(action);
                }
                if failed {
                    self.counters.host_errors += 1;
                } else {
                    self.counters.host_frames += 1;
                }
                Answer::Given
            }
            _ => Answer::Now(Err((METHOD_NOT_FOUND, "method not found".into()))),
        }
    }

    /// `Shadow.Report`: to the cloud now, or merged for later.
    fn report(
        &mut self,
        reported: Value,
        host_id: Option<Value>,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) -> Answer {
        if !self.connected {
            if let Value::Object(reported) = &reported {
                let pending = self.unsent_report.get_or_insert_with(Object::new);
                overlay(pending, reported);
            }
            return Answer::Now(Ok(Value::Bool(true)));
        }
        let params = json!({"state": {"reported": reported}});
        self.upstream(
            methods::SHADOW_UPDATE,
            Some(params),
            Upstream::Report,
            host_id,
            now_ms,
            out,
        );
        Answer::Later
    }

    fn upstream(
        &mut self,
        method: &str,
        params: Option<Value>,
        what: Upstream,
        host_id: Option<Value>,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) {
        let id = self.next_cloud_id;
        self.next_cloud_id += 1;
        out.push(Action::Send(Frame::request(id, method, params).to_json()));
        self.upstream.insert(
            id,
            HostCall {
                host_id,
                what,
                deadline_ms: now_ms.saturating_add(self.options.call_timeout_ms),
            },
        );
    }

    fn cloud_value(&mut self, value: Value, now_ms: u64, out: &mut Vec<Action>) {
        let frame = match Frame::from_value(value.clone()) {
            Ok(frame) => frame,
            // The device answers malformed frames as it always does.
            Err(_) => {
                out.extend(self.device.receive_value(value, now_ms));
                return;
            }
        };
        match frame.kind() {
            FrameKind::Reply => {
                let ours = frame
                    .id
                    .as_ref()
                    .and_then(Value::as_u64)
                    .filter(|id| *id >= CLOUD_ID_BASE);
                match ours {
                    Some(id) => self.cloud_reply(id, frame, out),
                    None => out.extend(self.device.receive_value(value, now_ms)),
                }
            }
            FrameKind::Request | FrameKind::Notification => {
                let method = frame.method.clone().unwrap_or_default();
                if method == methods::SHADOW_DELTA {
                    self.delta_to_host(&frame, out);
                } else if method == "MQTT.Pub" {
                    self.publish_to_host(&frame, out);
                } else if METHODS.contains(&method.as_str()) {
                    out.extend(self.device.receive_value(value, now_ms));
                } else {
                    self.forward(frame, now_ms, out);
                }
            }
            FrameKind::Invalid => {}
        }
    }

    /// The cloud answers a host call.
    fn cloud_reply(&mut self, id: u64, frame: Frame, out: &mut Vec<Action>) {
        let Some(call) = self.upstream.remove(&id) else {
            return;
        };
        if call.host_id.is_none() {
            return;
        }
        let outcome = match (frame.error, call.what) {
            (Some(error), _) => Err((error.code, error.message)),
            (None, Upstream::Report) => Ok(Value::Bool(true)),
            (None, Upstream::Get) => {
                let mut shadow = frame.result.unwrap_or(Value::Null);
                if let Value::Object(document) = &mut shadow {
                    // Per-leaf timestamps would double what a small host has to buffer.
                    document.remove("metadata");
                }
                Ok(shadow)
            }
        };
        let reply = reply_frame(call.host_id.clone(), outcome);
        if !self.tell_host_bounded(reply, out) {
            let message = format!("the answer is longer than {} bytes", self.options.max_line);
            self.tell_host(error_frame(call.host_id, codes::TOO_LARGE, message), out);
        }
    }

    /// PROTOCOL §4.3 on a CCM: the host gets the delta's state; the cloud hears it went.
    fn delta_to_host(&mut self, frame: &Frame, out: &mut Vec<Action>) {
        let state = frame
            .params
            .as_ref()
            .and_then(|params| params.get("state"))
            .cloned()
            .unwrap_or(Value::Null);
        let delta = Frame {
            method: Some(methods::SHADOW_DELTA.into()),
            params: Some(state),
            ..Frame::default()
        };
        let outcome = if self.tell_host_bounded(delta, out) {
            Ok(Value::Bool(true))
        } else {
            Err((
                codes::TOO_LARGE,
                "the delta is too long for the host's line".into(),
            ))
        };
        if frame.id.is_some() {
            out.push(Action::Send(reply_frame_to(frame, outcome).to_json()));
        }
    }

    /// A cloud publish for the host's subscriptions.
    fn publish_to_host(&mut self, frame: &Frame, out: &mut Vec<Action>) {
        let params = frame.params_or_null();
        let outcome = topic_param(&params).and_then(|topic| {
            if !self
                .subscriptions
                .iter()
                .any(|filter| topic_matches(filter, &topic))
            {
                return Err((
                    codes::NOT_FOUND,
                    format!("the host has not subscribed to {topic}"),
                ));
            }
            let message = params.get("message").cloned().unwrap_or(Value::Null);
            let delivery = Frame {
                method: Some("MQTT.Message".into()),
                params: Some(json!({"topic": topic, "message": message})),
                ..Frame::default()
            };
            if self.tell_host_bounded(delivery, out) {
                Ok(Value::Bool(true))
            } else {
                Err((
                    codes::TOO_LARGE,
                    "the message is too long for the host's line".into(),
                ))
            }
        });
        if frame.id.is_some() {
            out.push(Action::Send(reply_frame_to(frame, outcome).to_json()));
        }
    }

    /// A cloud call for a method the host exports (or does not: it says so).
    fn forward(&mut self, frame: Frame, now_ms: u64, out: &mut Vec<Action>) {
        let method = frame.method.clone().unwrap_or_default();
        if frame.id.is_none() {
            let notification = Frame {
                method: Some(method),
                params: frame.params,
                ..Frame::default()
            };
            self.tell_host_bounded(notification, out);
            return;
        }
        if self.forwarded.len() >= self.options.max_pending {
            let message = format!(
                "the host MCU has {} calls outstanding; try again later",
                self.forwarded.len()
            );
            out.push(Action::Send(
                Frame::error_to(&frame, NOT_CONNECTED, message).to_json(),
            ));
            return;
        }
        let host_id = self.next_host_id;
        let request = Frame {
            id: Some(Value::from(host_id)),
            method: Some(method.clone()),
            params: frame.params.clone(),
            ..Frame::default()
        };
        if !self.tell_host_bounded(request, out) {
            let message = format!(
                "the call is longer than the host's {} byte line",
                self.options.max_line
            );
            out.push(Action::Send(
                Frame::error_to(&frame, codes::TOO_LARGE, message).to_json(),
            ));
            return;
        }
        self.next_host_id = self.next_host_id.wrapping_add(1).max(1);
        self.counters.forwarded += 1;
        self.forwarded.insert(
            host_id,
            Forwarded {
                cloud_id: frame.id.clone().unwrap_or(Value::Null),
                tag: frame.tag,
                method,
                deadline_ms: now_ms.saturating_add(self.options.call_timeout_ms),
            },
        );
    }
}

fn reply_frame_to(request: &Frame, outcome: Result<Value, (i64, String)>) -> Frame {
    match outcome {
        Ok(result) => Frame::reply_to(request, result),
        Err((code, message)) => Frame::error_to(request, code, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryPlatform;
    use crate::ota::ImageInfo;
    use alloc::vec;
    use proptest::prelude::*;

    fn ccm_with(options: CcmOptions) -> Ccm<MemoryPlatform> {
        let device = Device::boot(MemoryPlatform::new(ImageInfo::default()), 0);
        Ccm::new(device, options)
    }

    /// A CCM whose cloud link is up, with the connect report already taken.
    fn online() -> Ccm<MemoryPlatform> {
        let mut ccm = ccm_with(CcmOptions {
            call_timeout_ms: 1000,
            ..CcmOptions::default()
        });
        ccm.start(0);
        ccm.connected(0);
        ccm
    }

    fn json_of(text: &str) -> Value {
        serde_json::from_str(text).expect("a JSON frame")
    }

    /// The frames for the host and for the cloud, parsed.
    fn split(actions: Vec<Action>) -> (Vec<Value>, Vec<Value>) {
        let mut host = Vec::new();
        let mut cloud = Vec::new();
        for action in actions {
            match action {
                Action::SendLocal(text) => {
                    assert!(!text.contains('\n'), "one line per frame: {text}");
                    host.push(json_of(&text));
                }
                Action::Send(text) => cloud.push(json_of(&text)),
                other => panic!("unexpected action {other:?}"),
            }
        }
        (host, cloud)
    }

    #[test]
    fn the_connect_report_leaves_the_shadow_state_to_the_host() {
        let mut ccm = ccm_with(CcmOptions::default());
        let (_, cloud) = split(ccm.connected(0));
        let reported = &cloud[0]["params"]["state"]["reported"];
        assert!(reported.get("ota").is_some(), "{reported}");
        assert!(reported.get("on").is_none(), "{reported}");
    }

    #[test]
    fn a_cloud_call_goes_to_the_host_and_its_answer_comes_back() {
        let mut ccm = online();
        let (host, cloud) = split(ccm.receive(
            br#"{"id":"abc","tag":9,"method":"Sum","params":{"a":1,"b":2}}"#,
            5,
        ));
        assert!(cloud.is_empty());
        assert_eq!(
            host,
            vec![json!({"id": 1, "method": "Sum", "params": {"a": 1, "b": 2}})]
        );
        let (host, cloud) = split(ccm.host_bytes(b"{\"id\":1,\"result\":3}\r\n", 6));
        assert!(host.is_empty());
        assert_eq!(cloud, vec![json!({"id": "abc", "tag": 9, "result": 3})]);
        // The host's errors pass through unchanged.
        ccm.receive(br#"{"id":8,"method":"Div","params":[1,0]}"#, 7);
        let (_, cloud) = split(ccm.host_bytes(
            br#"{"id":2,"error":{"code":-32602,"message":"division by zero"}}
"#,
            8,
        ));
        assert_eq!(
            cloud,
            vec![json!({"id": 8, "error": {"code": -32602, "message": "division by zero"}})]
        );
        assert_eq!(ccm.counters().forwarded, 2);
        assert_eq!(ccm.next_deadline(), None);
    }

    #[test]
    fn an_unanswered_call_times_out_and_a_late_answer_is_dropped() {
        let mut ccm = online();
        ccm.receive(br#"{"id":4,"method":"Slow"}"#, 100);
        assert_eq!(ccm.next_deadline(), Some(1100));
        assert!(ccm.poll(1099).is_empty());
        let (_, cloud) = split(ccm.poll(1100));
        assert_eq!(cloud[0]["id"], 4);
        assert_eq!(cloud[0]["error"]["code"], TIMED_OUT);
        let message = cloud[0]["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("Slow") && message.contains("1000 ms"),
            "{message}"
        );
        assert!(ccm
            .host_bytes(b"{\"id\":1,\"result\":true}\n", 1200)
            .is_empty());
        assert_eq!(ccm.counters().timeouts, 1);
        assert_eq!(ccm.counters().host_dropped, 1);
    }

    #[test]
    fn too_many_outstanding_calls_are_refused() {
        let mut ccm = ccm_with(CcmOptions {
            max_pending: 2,
            ..CcmOptions::default()
        });
        ccm.connected(0);
        ccm.receive(br#"{"id":1,"method":"A"}{"id":2,"method":"B"}"#, 0);
        let (host, cloud) = split(ccm.receive(br#"{"id":3,"method":"C"}"#, 0));
        assert!(host.is_empty());
        assert_eq!(cloud[0]["error"]["code"], NOT_CONNECTED);
    }

    #[test]
    fn a_delta_reaches_the_host_as_a_notification() {
        let mut ccm = online();
        let (host, cloud) = split(ccm.receive(
            br#"{"id":3,"method":"Shadow.Delta","params":{"state":{"on":true},"version":4}}"#,
            0,
        ));
        assert_eq!(
            host,
            vec![json!({"method": "Shadow.Delta", "params": {"on": true}})]
        );
        assert_eq!(cloud, vec![json!({"id": 3, "result": true})]);
    }

    #[test]
    fn reports_reach_the_cloud_and_are_kept_while_offline() {
        let mut ccm = ccm_with(CcmOptions::default());
        // Offline: accepted and merged, nulls kept so deletions still happen.
        let (host, _) = split(ccm.host_bytes(
            b"{\"id\":1,\"method\":\"Shadow.Report\",\"params\":{\"on\":false,\"t\":{\"a\":1}}}\n\
              {\"method\":\"Shadow.Report\",\"params\":{\"on\":true,\"t\":{\"b\":null}}}\n",
            0,
        ));
        assert_eq!(host, vec![json!({"id": 1, "result": true})]);
        let (_, cloud) = split(ccm.connected(10));
        assert_eq!(cloud.len(), 2, "{cloud:?}");
        assert_eq!(cloud[1]["method"], "Dash.Shadow.Update");
        assert_eq!(
            cloud[1]["params"],
            json!({"state": {"reported": {"on": true, "t": {"a": 1, "b": null}}}})
        );
        // Online: the host hears back once the cloud took it.
        let (host, cloud) = split(ccm.host_bytes(
            b"{\"id\":2,\"method\":\"Shadow.Report\",\"params\":{\"on\":false}}\n",
            20,
        ));
        assert!(host.is_empty());
        let id = cloud[0]["id"].as_u64().expect("numeric id");
        assert!(id >= CLOUD_ID_BASE);
        let reply = format!(r#"{{"id":{id},"result":{{"state":{{}},"version":3}}}}"#);
        let (host, _) = split(ccm.receive(reply.as_bytes(), 30));
        assert_eq!(host, vec![json!({"id": 2, "result": true})]);
        // A rejected report says why.
        ccm.host_bytes(
            b"{\"id\":3,\"method\":\"Shadow.Report\",\"params\":{\"x\":1}}\n",
            40,
        );
        let reply = format!(
            r#"{{"id":{},"error":{{"code":413,"message":"too big"}}}}"#,
            id + 1
        );
        let (host, _) = split(ccm.receive(reply.as_bytes(), 50));
        assert_eq!(
            host,
            vec![json!({"id": 3, "error": {"code": 413, "message": "too big"}})]
        );
    }

    #[test]
    fn shadow_get_returns_the_document_without_metadata() {
        let mut ccm = online();
        let (_, cloud) = split(ccm.host_bytes(b"{\"id\":\"g\",\"method\":\"Shadow.Get\"}\n", 0));
        assert_eq!(cloud[0]["method"], "Dash.Shadow.Get");
        let id = cloud[0]["id"].as_u64().expect("id");
        let reply = json!({"id": id, "result": {
            "state": {"desired": {"on": true}, "reported": {}, "delta": {"on": true}},
            "metadata": {"desired": {"on": {"timestamp": 1}}},
            "version": 2,
        }});
        let (host, _) = split(ccm.receive(reply.to_string().as_bytes(), 1));
        assert_eq!(host[0]["id"], "g");
        assert_eq!(host[0]["result"]["state"]["delta"], json!({"on": true}));
        assert!(host[0]["result"].get("metadata").is_none());
        // Unanswered, the host hears that too; offline, at once.
        ccm.host_bytes(b"{\"id\":5,\"method\":\"Shadow.Get\"}\n", 10);
        let (host, _) = split(ccm.poll(1010));
        assert_eq!(host[0]["error"]["code"], TIMED_OUT);
        ccm.disconnected(1020);
        let (host, _) = split(ccm.host_bytes(b"{\"id\":6,\"method\":\"Shadow.Get\"}\n", 1030));
        assert_eq!(host[0]["error"]["code"], NOT_CONNECTED);
    }

    #[test]
    fn a_lost_link_fails_host_calls_waiting_for_the_cloud() {
        let mut ccm = online();
        ccm.host_bytes(b"{\"id\":1,\"method\":\"Shadow.Get\"}\n", 0);
        ccm.receive(br#"{"id":9,"method":"Sum"}"#, 0);
        let (host, _) = split(ccm.disconnected(5));
        assert_eq!(host[0]["id"], 1);
        assert_eq!(host[0]["error"]["code"], NOT_CONNECTED);
        assert_eq!(ccm.next_deadline(), None);
    }

    #[test]
    fn mqtt_publishes_become_events_and_subscriptions_get_messages() {
        let mut ccm = online();
        let (host, cloud) = split(ccm.host_bytes(
            b"{\"id\":1,\"method\":\"MQTT.Pub\",\"params\":{\"topic\":\"t/1\",\"message\":\"hi\"}}\n",
            0,
        ));
        assert_eq!(host, vec![json!({"id": 1, "result": true})]);
        assert_eq!(
            cloud,
            vec![json!({"method": "MQTT.Pub", "params": {"topic": "t/1", "message": "hi"}})]
        );
        let (_, cloud) = split(ccm.receive(
            br#"{"id":2,"method":"MQTT.Pub","params":{"topic":"ccm/led","message":"1"}}"#,
            0,
        ));
        assert_eq!(cloud[0]["error"]["code"], 404);
        ccm.host_bytes(
            b"{\"method\":\"MQTT.Sub\",\"params\":{\"topic\":\"ccm/+\"}}\n",
            0,
        );
        assert_eq!(ccm.subscriptions(), ["ccm/+"]);
        let (host, cloud) = split(ccm.receive(
            br#"{"id":3,"method":"MQTT.Pub","params":{"topic":"ccm/led","message":"1"}}"#,
            0,
        ));
        assert_eq!(
            host,
            vec![json!({"method": "MQTT.Message", "params": {"topic": "ccm/led", "message": "1"}})]
        );
        assert_eq!(cloud, vec![json!({"id": 3, "result": true})]);
        ccm.host_bytes(
            b"{\"method\":\"MQTT.Unsub\",\"params\":{\"topic\":\"ccm/+\"}}\n",
            0,
        );
        assert!(ccm.subscriptions().is_empty());
        let (host, _) = split(ccm.host_bytes(b"{\"id\":4,\"method\":\"MQTT.Pub\"}\n", 0));
        assert_eq!(host[0]["error"]["code"], INVALID_PARAMS);
    }

    #[test]
    fn topic_filters_match_as_in_mqtt() {
        assert!(topic_matches("a/b", "a/b"));
        assert!(!topic_matches("a/b", "a/c"));
        assert!(topic_matches("a/+/c", "a/b/c"));
        assert!(!topic_matches("a/+", "a/b/c"));
        assert!(topic_matches("a/#", "a/b/c"));
        assert!(topic_matches("#", "x"));
        assert!(!topic_matches("a/b/c", "a/b"));
    }

    #[test]
    fn the_host_reaches_the_ccms_own_services() {
        let mut ccm = online();
        let (host, cloud) = split(ccm.host_bytes(
            b"{\"id\":1,\"method\":\"Config.Set\",\"params\":{\"config\":{\"device\":{\"id\":\"box\"}}}}\n\
              {\"id\":2,\"method\":\"Config.Get\",\"params\":{\"key\":\"device.id\"}}\n\
              {\"id\":3,\"method\":\"Sys.GetInfo\"}\n",
            0,
        ));
        assert!(cloud.is_empty());
        assert_eq!(host[0], json!({"id": 1, "result": {"saved": false}}));
        assert_eq!(host[1], json!({"id": 2, "result": "box"}));
        assert_eq!(host[2]["id"], 3);
        assert_eq!(host[2]["result"]["id"], "box");
        let actions = ccm.host_bytes(b"{\"id\":4,\"method\":\"Sys.Reboot\"}\n", 0);
        assert!(actions.iter().any(|a| matches!(a, Action::Reboot { .. })));
        // The cloud reaches them too, not the host.
        let (host, cloud) = split(ccm.receive(br#"{"id":5,"method":"Sys.GetInfo"}"#, 0));
        assert!(host.is_empty());
        assert_eq!(cloud[0]["result"]["id"], "box");
    }

    #[test]
    fn garbage_gets_errors_and_the_bridge_goes_on() {
        let mut ccm = online();
        let (host, _) = split(ccm.host_bytes(b"hello from the bootloader\n", 0));
        assert_eq!(host.len(), 1);
        assert_eq!(host[0]["error"]["code"], PARSE_ERROR);
        assert!(host[0].get("id").is_none());
        // A frame cut short, with its id readable.
        let (host, _) = split(ccm.host_bytes(b"{\"id\":12,\"method\":\"Shadow.Rep\n", 0));
        assert_eq!(host[0]["id"], 12);
        assert_eq!(host[0]["error"]["code"], PARSE_ERROR);
        // Half a frame, then a whole one on the same line: both are answered.
        let (host, _) = split(ccm.host_bytes(
            b"{\"id\":13,\"meth{\"id\":14,\"method\":\"Config.Get\",\"params\":{\"key\":\"device.id\"}}\n",
            0,
        ));
        assert_eq!(host[0]["id"], 13);
        assert_eq!(host[0]["error"]["code"], PARSE_ERROR);
        assert_eq!(host[1]["id"], 14);
        assert!(host[1].get("result").is_some());
        // JSON that is not a request, unknown methods, bad params.
        let (host, _) = split(ccm.host_bytes(
            b"[1,2]\n{\"id\":\"x\",\"method\":5}\n{}\n{\"id\":15,\"method\":\"Nope\"}\n\
              {\"id\":16,\"method\":\"Shadow.Report\",\"params\":[1]}\n",
            0,
        ));
        let codes: Vec<&Value> = host.iter().map(|frame| &frame["error"]["code"]).collect();
        assert_eq!(
            codes,
            [
                INVALID_REQUEST,
                INVALID_REQUEST,
                INVALID_REQUEST,
                METHOD_NOT_FOUND,
                INVALID_PARAMS
            ]
        );
        assert_eq!(host[1]["id"], "x");
        // Answers to nothing are dropped, never answered.
        assert!(ccm
            .host_bytes(
                b"{\"error\":{\"code\":-32700,\"message\":\"?\"}}\n{\"id\":99,\"result\":1}\n\n",
                0
            )
            .is_empty());
        assert_eq!(ccm.counters().host_dropped, 2);
        assert_eq!(ccm.counters().host_errors, 8);
        // Still serving, a frame split over many writes.
        let mut actions = Vec::new();
        for chunk in b"{\"id\":17,\"method\":\"Sys.GetInfo\"}\n".chunks(3) {
            actions.extend(ccm.host_bytes(chunk, 0));
        }
        let (host, _) = split(actions);
        assert_eq!(host[0]["id"], 17);
    }

    #[test]
    fn an_over_long_line_is_refused_once_and_skipped() {
        let mut ccm = ccm_with(CcmOptions {
            max_line: 64,
            ..CcmOptions::default()
        });
        let mut line = b"{\"id\":21,\"method\":\"Shadow.Report\",\"params\":{\"blob\":\"".to_vec();
        line.extend(core::iter::repeat_n(b'x', 500));
        line.extend_from_slice(b"\"}}\n{\"id\":22,\"method\":\"Sys.GetInfo\"}\n");
        let (host, _) = split(ccm.host_bytes(&line, 0));
        assert_eq!(host.len(), 2, "{host:?}");
        assert_eq!(host[0]["id"], 21);
        assert_eq!(host[0]["error"]["code"], PARSE_ERROR);
        assert_eq!(host[1]["id"], 22);
        assert!(host[1].get("result").is_some());
        // Nothing longer than the line goes to the host either.
        ccm.connected(0);
        let call = format!(
            r#"{{"id":1,"method":"Big","params":"{}"}}"#,
            "y".repeat(100)
        );
        let (host, cloud) = split(ccm.receive(call.as_bytes(), 0));
        assert!(host.is_empty());
        assert_eq!(cloud[0]["error"]["code"], codes::TOO_LARGE);
    }

    #[test]
    fn ids_are_recovered_from_broken_lines() {
        assert_eq!(recover_id(b"{\"id\" : 42, \"meth"), Some(json!(42)));
        assert_eq!(recover_id(b"{\"id\":\"a1\",\"x"), Some(json!("a1")));
        assert_eq!(recover_id(b"{\"id\":-3"), Some(json!(-3)));
        assert_eq!(recover_id(b"{\"id\":true"), None);
        assert_eq!(recover_id(b"garbage"), None);
        assert_eq!(recover_id(b"{\"id\":\"unterminated"), None);
    }

    proptest! {
        #[test]
        fn any_bytes_leave_the_bridge_serving(noise in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut ccm = ccm_with(CcmOptions { max_line: 128, ..CcmOptions::default() });
            ccm.connected(0);
            for action in ccm.host_bytes(&noise, 0) {
                if let Action::SendLocal(text) = action {
                    prop_assert!(!text.contains('\n'));
                }
            }
            let actions = ccm.host_bytes(b"\n{\"id\":\"last\",\"method\":\"Config.Get\",\"params\":{\"key\":\"device\"}}\n", 0);
            let served = actions.iter().any(|action| matches!(
                action,
                Action::SendLocal(text) if text.starts_with("{\"id\":\"last\",\"result\"")
            ));
            prop_assert!(served, "{actions:?}");
        }
    }
}
