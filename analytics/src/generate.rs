//! A seeded generator of realistic notification logs, for benchmarks and soak tests.
//!
//! It simulates a fleet of smart lights the way the server would log them (PROTOCOL §3,
//! §5, §7): connects (`online`, `updated`, `rpc.in.Sys.GetInfo`, the device's first
//! `Dash.Shadow.Update`), device logs (`rpc.out.Log`, the bulk of the lines), button
//! presses reported with `Dash.Shadow.Update`, switches from the cloud
//! (`rpc.in.Shadow.Delta` and the merged `updated`), requests the server has no handler
//! for, firmware updates that commit or revert (§8), and disconnects. A few devices flap.
//!
//! Firmware updates are the update engine's (§10.6): one-device updates now and then, and
//! every few hours a rollout over about a tenth of the fleet in two waves (20 % first),
//! which completes, or halts when half of a wave failed; every third rollout's image is a
//! bad one that most devices revert. Each update logs `ota.begin`, `ota.progress`, and
//! `ota.success`, `ota.failure` or `ota.revert`; a device that stays away after its reboot
//! times out, and one offline for the whole of its wave's turn is skipped. The same seed
//! and size give the same bytes.

use std::io::{self, Write};

use protocol::firmware::{Counters, DeviceState};

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub seed: u64,
    pub devices: u32,
    /// Stop after the first line that reaches this many bytes.
    pub bytes: u64,
    /// Unix seconds of the first event.
    pub start: f64,
    /// Stop before the first line past this time (unix seconds), if it comes before
    /// `bytes` are written.
    pub until: Option<f64>,
    /// Mean seconds between the actions of an online device (a log line, a switch, a
    /// sensor report...); flapping devices act 4.5 times as often. Longer means a thinner
    /// log over the same time.
    pub action_mean_s: f64,
    /// Lights follow the hour of day (UTC): mostly on in the evening, off at night, a
    /// little in the morning; otherwise they switch at random.
    pub daily_rhythm: bool,
    /// `(id, name)` of the first devices, for a log about a fleet that exists; the others
    /// get generated ones.
    pub names: Vec<(String, String)>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            seed: 1,
            devices: 2000,
            bytes: 1 << 30,
            start: 1_767_225_600.0, // 2026-01-01T00:00:00Z
            until: None,
            action_mean_s: 45.0,
            daily_rhythm: false,
            names: Vec::new(),
        }
    }
}

/// What was generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub lines: u64,
    pub bytes: u64,
    /// Unix microseconds of the last line.
    pub last_us: i64,
}

/// splitmix64: tiny, fast, and stable across versions, so a seed always means one log.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Exponentially distributed with the given mean, in microseconds.
    fn wait_us(&mut self, mean_s: f64) -> i64 {
        (-(1.0 - self.unit()).ln() * mean_s * 1e6) as i64 + 1
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Offline,
    Online,
    /// Downloading an update: progress reports, then staged.
    Updating {
        percent: u8,
    },
}

struct Device {
    id: String,
    name: String,
    flaky: bool,
    online: bool,
    on: bool,
    fw: u32,
    /// Version being installed, while updating or waiting to reboot into it.
    pending_fw: Option<u32>,
    /// The update the engine follows, until it logged its outcome.
    update: Option<EngineUpdate>,
    /// Its place in the running rollout, while that rollout may still start it.
    member: Option<usize>,
    phase: Phase,
    version: u64,
    seq: u64,
    session_end: i64,
    created_us: i64,
    last_seen_us: i64,
    ota_status: u8,
    ota_message: &'static str,
}

/// An update as the server's engine sees it (PROTOCOL §10.6).
#[derive(Debug, Clone)]
struct EngineUpdate {
    /// Target version.
    fw: u32,
    rollout: Option<String>,
    started_us: i64,
    /// When the device rebooted into the image, to time out one that stays away.
    staged_us: Option<i64>,
    /// The image is one most devices revert.
    bad: bool,
}

/// A rollout in progress (PROTOCOL §10.5): devices in wave order and their states.
struct Rollout {
    id: String,
    fw: u32,
    members: Vec<(usize, u32, DeviceState)>,
    waves: u32,
    wave: u32,
    wave_started_us: i64,
    /// Most devices revert this image.
    bad: bool,
}

impl Rollout {
    fn counters(&self, wave: Option<u32>) -> Counters {
        let mut counters = Counters::default();
        for &(_, member_wave, state) in &self.members {
            if wave.is_none_or(|w| w == member_wave) {
                counters.add(state);
            }
        }
        counters
    }

    /// The body of a rollout event: counters, state, image and wave, then `extra`.
    fn body(&self, state: &str, extra: &str) -> String {
        let c = self.counters(None);
        format!(
            concat!(
                r#"{{"total":{},"pending":{},"sending":{},"rebooting":{},"verifying":{},"#,
                r#""succeeded":{},"failed":{},"reverted":{},"skipped":{},"timed_out":{},"#,
                r#""state":"{}","firmware":"{}","wave":{}{}}}"#
            ),
            c.total,
            c.pending,
            c.sending,
            c.rebooting,
            c.verifying,
            c.succeeded,
            c.failed,
            c.reverted,
            c.skipped,
            c.timed_out,
            state,
            firmware_id(self.fw),
            self.wave,
            extra
        )
    }
}

/// Seconds between two looks of the rollout planner.
const PLANNER_TICK_US: i64 = 120_000_000;
/// A device pending in a wave is skipped after this long offline.
const OFFLINE_WAIT_US: i64 = 1800 * 1_000_000;
/// A device that does not come back this long after its reboot has timed out.
const RETURN_TIMEOUT_US: i64 = 600 * 1_000_000;

fn timeout_message() -> String {
    format!(
        "did not come back within {} s",
        RETURN_TIMEOUT_US / 1_000_000
    )
}

/// The image id of version `1.<fw>.0`: a stand-in SHA-256, the same for every seed.
fn firmware_id(fw: u32) -> String {
    let mut rng = Rng(0x0005_eedf_1a5e ^ u64::from(fw));
    (0..4).map(|_| format!("{:016x}", rng.next())).collect()
}

fn image_size(fw: u32) -> u64 {
    900_000 + u64::from(fw) * 4096
}

/// `,"rollout":"<id>"` when there is one.
fn rollout_field(rollout: &Option<String>) -> String {
    rollout
        .as_ref()
        .map(|id| format!(r#","rollout":"{id}""#))
        .unwrap_or_default()
}

const LOG_MESSAGES: [&str; 6] = [
    "wifi rssi -61",
    "dash ping",
    "pwm 100",
    "http accept",
    "sntp ok",
    "ram 187432",
];

/// Writes a log of about `config.bytes` bytes to `out`.
pub fn generate<W: Write>(config: &Config, out: W) -> io::Result<Summary> {
    let mut out = io::BufWriter::with_capacity(1 << 20, out);
    let mut rng = Rng(config.seed);
    let start_us = (config.start * 1e6) as i64;
    let mut devices: Vec<Device> = (0..config.devices.max(1))
        .map(|i| {
            let flaky = rng.below(40) == 0;
            let generated = format!("{:024x}", rng.next() as u128 * 0x1_0000 + u128::from(i));
            let (id, name) = match config.names.get(i as usize) {
                Some((id, name)) => (id.clone(), name.clone()),
                None => (generated, format!("light-{i:05}")),
            };
            Device {
                id,
                name,
                flaky,
                online: false,
                on: rng.below(3) == 0,
                fw: 10 + rng.below(3) as u32,
                pending_fw: None,
                update: None,
                member: None,
                phase: Phase::Offline,
                version: 1 + rng.below(50),
                seq: 0,
                session_end: 0,
                created_us: start_us - 86_400_000_000 * (1 + rng.below(300) as i64),
                last_seen_us: start_us,
                ota_status: 0,
                ota_message: "",
            }
        })
        .collect();
    // Next action time per device; a binary heap ordered by time. The index past the last
    // device is the rollout planner.
    let mut queue = std::collections::BinaryHeap::new();
    for (i, _) in devices.iter().enumerate() {
        queue.push(std::cmp::Reverse((start_us + rng.wait_us(300.0), i)));
    }
    let planner = devices.len();
    queue.push(std::cmp::Reverse((start_us + PLANNER_TICK_US, planner)));
    let mut rollout: Option<Rollout> = None;
    let mut rollouts = 0u32;
    let mut next_rollout_us = start_us + 900_000_000;
    let mut summary = Summary::default();
    let mut line = String::with_capacity(2048);
    let until_us = config.until.map(|until| (until * 1e6) as i64);
    while summary.bytes < config.bytes {
        let Some(std::cmp::Reverse((now, index))) = queue.pop() else {
            break;
        };
        if until_us.is_some_and(|until| now > until) {
            break;
        }
        summary.last_us = now;
        if index == planner {
            let mut t = now;
            let mut tick = |rng: &mut Rng| {
                t += 200 + rng.below(4000) as i64;
                t
            };
            let mut sink = Sink {
                line: &mut line,
                summary: &mut summary,
                out: &mut out,
            };
            if rollout.is_none() && now >= next_rollout_us {
                rollouts += 1;
                rollout = plan(&mut devices, rollouts, &mut rng, &mut tick, &mut sink)?;
            } else if let Some(running) = &mut rollout {
                if !advance(running, &mut devices, &mut rng, &mut tick, &mut sink)? {
                    end(running, &mut devices);
                    rollout = None;
                    next_rollout_us = now + rng.wait_us(4.0 * 3600.0);
                }
            }
            queue.push(std::cmp::Reverse((now + PLANNER_TICK_US, planner)));
            continue;
        }
        let device = &mut devices[index];
        let mut t = now;
        // Lines of one action are a few milliseconds apart, as the server would log them.
        let mut tick = |rng: &mut Rng| {
            t += 200 + rng.below(4000) as i64;
            t
        };
        let next = match device.phase {
            Phase::Offline => {
                device.online = true;
                device.phase = Phase::Online;
                let mut outcome = None;
                if let Some(fw) = device.pending_fw.take() {
                    // Rebooted into the new image: it commits, or it reverts.
                    let bad = device.update.as_ref().is_some_and(|u| u.bad);
                    let reverts = if bad {
                        rng.below(5) < 3
                    } else {
                        rng.below(5) == 0
                    };
                    if reverts {
                        device.ota_status = 2;
                        device.ota_message =
                            "reverted: the new firmware restarted before it was committed";
                        outcome = Some(DeviceState::Reverted);
                    } else {
                        device.fw = fw;
                        device.ota_status = 3;
                        device.ota_message = "committed";
                        outcome = Some(DeviceState::Succeeded);
                    }
                }
                let mean = if device.flaky { 90.0 } else { 6.0 * 3600.0 };
                device.session_end = now + rng.wait_us(mean);
                notification(&mut line, tick(&mut rng), &device.id, "online", "null");
                emit(&mut line, &mut summary, &mut out)?;
                updated(&mut line, tick(&mut rng), device);
                emit(&mut line, &mut summary, &mut out)?;
                notification(
                    &mut line,
                    tick(&mut rng),
                    &device.id,
                    "rpc.in.Sys.GetInfo",
                    "null",
                );
                emit(&mut line, &mut summary, &mut out)?;
                let data = format!(
                    r#"{{"state":{{"reported":{{"on":{},"ota":{}}}}}}}"#,
                    device.on,
                    ota_object(device)
                );
                let ts = [tick(&mut rng), tick(&mut rng)];
                shadow_change(
                    &mut line,
                    ts,
                    device,
                    ("rpc.out.Dash.Shadow.Update", &data),
                    &mut summary,
                    &mut out,
                )?;
                if let Some(state) = outcome {
                    let ts = tick(&mut rng);
                    let mut sink = Sink {
                        line: &mut line,
                        summary: &mut summary,
                        out: &mut out,
                    };
                    // The engine gave up on a device that stayed away too long.
                    let late = device
                        .update
                        .as_ref()
                        .and_then(|u| u.staged_us)
                        .is_some_and(|staged| ts - staged > RETURN_TIMEOUT_US);
                    if late {
                        let message = timeout_message();
                        if finish_failed(device, "reboot", &message, ts, &mut sink)? {
                            set_state(device.member, &mut rollout, DeviceState::TimedOut);
                        }
                    } else if finish(device, state, ts, &mut sink)? {
                        set_state(device.member, &mut rollout, state);
                    }
                }
                t + rng.wait_us(20.0)
            }
            Phase::Online if now >= device.session_end => {
                device.online = false;
                device.phase = Phase::Offline;
                device.last_seen_us = now;
                notification(&mut line, tick(&mut rng), &device.id, "offline", "null");
                emit(&mut line, &mut summary, &mut out)?;
                updated(&mut line, tick(&mut rng), device);
                emit(&mut line, &mut summary, &mut out)?;
                let mean = if device.pending_fw.is_some() {
                    // Rebooting into a new image: back in seconds, or now and then hours.
                    if rng.below(50) == 0 {
                        2.0 * 3600.0
                    } else {
                        20.0
                    }
                } else if device.flaky {
                    30.0
                } else {
                    1800.0
                };
                t + rng.wait_us(mean)
            }
            Phase::Online
                if device.member.is_some_and(|slot| {
                    rollout.as_ref().is_some_and(|r| {
                        r.members[slot].2 == DeviceState::Pending && r.members[slot].1 == r.wave
                    })
                }) =>
            {
                // Its wave's turn: the engine tells it to fetch the rollout's image.
                let mut sink = Sink {
                    line: &mut line,
                    summary: &mut summary,
                    out: &mut out,
                };
                if let (Some(running), Some(slot)) = (&mut rollout, device.member) {
                    running.members[slot].2 = DeviceState::Sending;
                    let image = (running.fw, Some(running.id.clone()), running.bad);
                    begin(device, image, now, &mut tick, &mut rng, &mut sink)?;
                }
                t + rng.wait_us(5.0)
            }
            Phase::Online => {
                // With the daily rhythm a device now and then sets its light as people
                // do at this hour, which is a button press when that changes it.
                let wanted = (config.daily_rhythm && rng.below(3) == 0)
                    .then(|| rng.unit() < share_on(now))
                    .filter(|&on| on != device.on);
                let roll = if wanted.is_some() {
                    955
                } else {
                    rng.below(1000)
                };
                if roll < 955 {
                    device.seq += 1;
                    let message = LOG_MESSAGES[rng.below(LOG_MESSAGES.len() as u64) as usize];
                    let data = format!(
                        r#"{{"fd":1,"data":"{}\n","t":{:.3},"seq":{}}}"#,
                        message,
                        now as f64 / 1e6,
                        device.seq
                    );
                    notification(&mut line, tick(&mut rng), &device.id, "rpc.out.Log", &data);
                    emit(&mut line, &mut summary, &mut out)?;
                } else if roll < 970 {
                    // Button press: the device reports its new state.
                    device.on = !device.on;
                    let data = format!(r#"{{"state":{{"reported":{{"on":{}}}}}}}"#, device.on);
                    let ts = [tick(&mut rng), tick(&mut rng)];
                    shadow_change(
                        &mut line,
                        ts,
                        device,
                        ("rpc.out.Dash.Shadow.Update", &data),
                        &mut summary,
                        &mut out,
                    )?;
                } else if roll < 980 {
                    // Switched from the cloud: the delta's reply is the new reported state.
                    device.on = !device.on;
                    device.version += 1;
                    let data = format!(
                        r#"{{"state":{{"on":{}}},"version":{},"timestamp":{:.3}}}"#,
                        device.on,
                        device.version,
                        now as f64 / 1e6
                    );
                    let ts = [tick(&mut rng), tick(&mut rng)];
                    shadow_change(
                        &mut line,
                        ts,
                        device,
                        ("rpc.in.Shadow.Delta", &data),
                        &mut summary,
                        &mut out,
                    )?;
                } else if roll < 998 {
                    let data = format!(
                        r#"{{"lux":{},"temp":{:.1}}}"#,
                        rng.below(1000),
                        18.0 + rng.unit() * 8.0
                    );
                    notification(
                        &mut line,
                        tick(&mut rng),
                        &device.id,
                        "rpc.out.Sensor.Report",
                        &data,
                    );
                    emit(&mut line, &mut summary, &mut out)?;
                } else if device.pending_fw.is_none() && device.member.is_none() {
                    // An operator updates this one device to the next firmware.
                    let mut sink = Sink {
                        line: &mut line,
                        summary: &mut summary,
                        out: &mut out,
                    };
                    let image = (device.fw + 1, None, false);
                    begin(device, image, now, &mut tick, &mut rng, &mut sink)?;
                }
                let mean = config.action_mean_s / if device.flaky { 4.5 } else { 1.0 };
                t + rng.wait_us(mean)
            }
            Phase::Updating { percent } => {
                let percent = (percent + 25).min(100);
                let failed = rng.below(40) == 0;
                let target = device.update.as_ref().map_or(device.fw + 1, |u| u.fw);
                if failed {
                    device.ota_status = 2;
                    device.ota_message = "the update timed out waiting for data";
                    device.phase = Phase::Online;
                } else if percent >= 100 {
                    device.ota_status = 3;
                    device.ota_message = "staged; rebooting into the new firmware";
                    device.pending_fw = Some(target);
                } else {
                    device.phase = Phase::Updating { percent };
                }
                let data = format!(
                    r#"{{"state":{{"reported":{{"ota":{}}}}}}}"#,
                    ota_object_with(device, percent)
                );
                let ts = [tick(&mut rng), tick(&mut rng)];
                shadow_change(
                    &mut line,
                    ts,
                    device,
                    ("rpc.out.Dash.Shadow.Update", &data),
                    &mut summary,
                    &mut out,
                )?;
                let ts = tick(&mut rng);
                let mut sink = Sink {
                    line: &mut line,
                    summary: &mut summary,
                    out: &mut out,
                };
                if failed {
                    let message = device.ota_message;
                    if finish_failed(device, "download", message, ts, &mut sink)? {
                        set_state(device.member, &mut rollout, DeviceState::Failed);
                    }
                } else if let Some(update) = &mut device.update {
                    let data = format!(
                        r#"{{"firmware":"{}","percent":{percent}}}"#,
                        firmware_id(update.fw)
                    );
                    sink.event(ts, &device.id, "ota.progress", &data)?;
                    if device.pending_fw.is_some() {
                        update.staged_us = Some(ts);
                        set_state(device.member, &mut rollout, DeviceState::Rebooting);
                    }
                }
                if device.pending_fw.is_some() {
                    // Reboot: the socket drops, the device comes back on the new image.
                    device.session_end = t;
                    device.phase = Phase::Online;
                    t + 1000
                } else {
                    t + rng.wait_us(5.0)
                }
            }
        };
        queue.push(std::cmp::Reverse((next.max(t + 1), index)));
    }
    out.flush()?;
    Ok(summary)
}

/// The share of lights on at `us` (unix microseconds) under the daily rhythm: the evening
/// peak from 18:00 to 23:00 UTC, a little light in the morning, little at night or by day.
fn share_on(us: i64) -> f64 {
    match us.div_euclid(3_600_000_000).rem_euclid(24) {
        18..=22 => 0.85,
        23 | 6..=7 => 0.4,
        _ => 0.08,
    }
}

/// Where lines go: the line being built, the running counts, the output.
struct Sink<'a, W> {
    line: &'a mut String,
    summary: &'a mut Summary,
    out: &'a mut W,
}

impl<W: Write> Sink<'_, W> {
    fn event(&mut self, ts: i64, id: &str, name: &str, data: &str) -> io::Result<()> {
        notification(self.line, ts, id, name, data);
        emit(self.line, self.summary, self.out)
    }
}

/// Starts an update of `device` to `1.<fw>.0` (for `rollout`, of a `bad` image or not):
/// the engine logs `ota.begin` and tells the device where to fetch the image
/// (`desired.ota`, PROTOCOL §10.3).
fn begin<W: Write>(
    device: &mut Device,
    (fw, rollout, bad): (u32, Option<String>, bool),
    now: i64,
    tick: &mut impl FnMut(&mut Rng) -> i64,
    rng: &mut Rng,
    sink: &mut Sink<'_, W>,
) -> io::Result<()> {
    let ts = tick(rng);
    let data = format!(
        r#"{{"firmware":"{}","version":"1.{fw}.0","size":{}{}}}"#,
        firmware_id(fw),
        image_size(fw),
        rollout_field(&rollout)
    );
    sink.event(ts, &device.id, "ota.begin", &data)?;
    device.update = Some(EngineUpdate {
        fw,
        rollout,
        started_us: ts,
        staged_us: None,
        bad,
    });
    let data = format!(
        r#"{{"state":{{"ota":{{"url":"http://herd.local/fw/light-1.{fw}.bin"}}}},"version":{},"timestamp":{:.3}}}"#,
        device.version,
        now as f64 / 1e6
    );
    sink.event(tick(rng), &device.id, "rpc.in.Shadow.Delta", &data)?;
    device.phase = Phase::Updating { percent: 0 };
    device.ota_status = 1;
    device.ota_message = "receiving";
    Ok(())
}

/// Moves a rollout member to `state`.
fn set_state(member: Option<usize>, rollout: &mut Option<Rollout>, state: DeviceState) {
    if let (Some(slot), Some(rollout)) = (member, rollout) {
        rollout.members[slot].2 = state;
    }
}

/// The engine logs how the device's update ended, `ota.success` or `ota.revert`, if it
/// still follows that update; returns whether it did.
fn finish<W: Write>(
    device: &mut Device,
    state: DeviceState,
    ts: i64,
    sink: &mut Sink<'_, W>,
) -> io::Result<bool> {
    let Some(update) = device.update.take() else {
        return Ok(false);
    };
    let data = if state == DeviceState::Succeeded {
        format!(
            r#"{{"firmware":"{}","version":"1.{}.0","seconds":{:.3}{}}}"#,
            firmware_id(update.fw),
            update.fw,
            seconds(ts - update.started_us),
            rollout_field(&update.rollout)
        )
    } else {
        format!(
            r#"{{"firmware":"{}","running_version":"1.{}.0","message":"{}"{}}}"#,
            firmware_id(update.fw),
            device.fw,
            device.ota_message,
            rollout_field(&update.rollout)
        )
    };
    let name = if state == DeviceState::Succeeded {
        "ota.success"
    } else {
        "ota.revert"
    };
    sink.event(ts, &device.id, name, &data)?;
    Ok(true)
}

/// The engine logs `ota.failure` for the device's update, if it still follows it;
/// returns whether it did.
fn finish_failed<W: Write>(
    device: &mut Device,
    stage: &str,
    message: &str,
    ts: i64,
    sink: &mut Sink<'_, W>,
) -> io::Result<bool> {
    let Some(update) = device.update.take() else {
        return Ok(false);
    };
    let data = format!(
        r#"{{"firmware":"{}","stage":"{stage}","message":"{message}"{}}}"#,
        firmware_id(update.fw),
        rollout_field(&update.rollout)
    );
    sink.event(ts, &device.id, "ota.failure", &data)
        .map(|()| true)
}

/// Plans and starts a rollout of the version after the newest one in the fleet over
/// about a tenth of the devices that are not updating; `None` when too few are.
fn plan<W: Write>(
    devices: &mut [Device],
    number: u32,
    rng: &mut Rng,
    tick: &mut impl FnMut(&mut Rng) -> i64,
    sink: &mut Sink<'_, W>,
) -> io::Result<Option<Rollout>> {
    let fw = devices.iter().map(|d| d.fw).max().unwrap_or(10) + 1;
    let mut chosen: Vec<usize> = Vec::new();
    for (index, device) in devices.iter().enumerate() {
        if rng.below(10) == 0 && device.update.is_none() && device.pending_fw.is_none() {
            chosen.push(index);
        }
    }
    if chosen.len() < 2 {
        return Ok(None);
    }
    let first = (chosen.len() / 5).max(1);
    let members: Vec<(usize, u32, DeviceState)> = chosen
        .iter()
        .enumerate()
        .map(|(position, &index)| (index, u32::from(position >= first), DeviceState::Pending))
        .collect();
    for (slot, &(index, _, _)) in members.iter().enumerate() {
        devices[index].member = Some(slot);
    }
    let rollout = Rollout {
        id: format!("{number:08x}{:016x}", rng.next()),
        fw,
        members,
        waves: 2,
        wave: 0,
        wave_started_us: 0,
        bad: number % 3 == 0,
    };
    let name = format!(r#","name":"smart-light 1.{fw}.0""#);
    sink.event(
        tick(rng),
        &rollout.id,
        "rollout.planned",
        &rollout.body("planned", &name),
    )?;
    sink.event(
        tick(rng),
        &rollout.id,
        "rollout.started",
        &rollout.body("running", ""),
    )?;
    let mut rollout = rollout;
    start_wave(&mut rollout, 0, rng, tick, sink)?;
    Ok(Some(rollout))
}

fn start_wave<W: Write>(
    rollout: &mut Rollout,
    wave: u32,
    rng: &mut Rng,
    tick: &mut impl FnMut(&mut Rng) -> i64,
    sink: &mut Sink<'_, W>,
) -> io::Result<()> {
    let ts = tick(rng);
    rollout.wave = wave;
    rollout.wave_started_us = ts;
    let devices = rollout.counters(Some(wave)).total;
    let extra = format!(r#","devices":{devices}"#);
    sink.event(
        ts,
        &rollout.id,
        "rollout.wave",
        &rollout.body("running", &extra),
    )
}

/// The planner's look at a running rollout: devices offline for their whole turn are
/// skipped, devices that never came back time out, a wave with half its devices failed
/// halts the rollout, and a finished wave starts the next or completes it. Returns
/// whether the rollout goes on.
fn advance<W: Write>(
    rollout: &mut Rollout,
    devices: &mut [Device],
    rng: &mut Rng,
    tick: &mut impl FnMut(&mut Rng) -> i64,
    sink: &mut Sink<'_, W>,
) -> io::Result<bool> {
    let now = tick(rng);
    for slot in 0..rollout.members.len() {
        let (index, wave, state) = rollout.members[slot];
        if wave != rollout.wave {
            continue;
        }
        let device = &mut devices[index];
        if state == DeviceState::Pending && now - rollout.wave_started_us > OFFLINE_WAIT_US {
            rollout.members[slot].2 = DeviceState::Skipped;
        } else if state == DeviceState::Rebooting
            && device
                .update
                .as_ref()
                .and_then(|u| u.staged_us)
                .is_some_and(|staged| now - staged > RETURN_TIMEOUT_US)
        {
            finish_failed(device, "reboot", &timeout_message(), now, sink)?;
            rollout.members[slot].2 = DeviceState::TimedOut;
        }
    }
    let wave = rollout.counters(Some(rollout.wave));
    if wave.failures() > 0 && wave.failures() * 2 >= wave.total {
        let reason = format!(
            "wave {}: {} of {} devices failed ({:.1} %), the limit is 50 %",
            rollout.wave,
            wave.failures(),
            wave.total,
            wave.failures() as f64 * 100.0 / wave.total as f64
        );
        let extra = format!(r#","reason":"{reason}""#);
        sink.event(
            tick(rng),
            &rollout.id,
            "rollout.halted",
            &rollout.body("halted", &extra),
        )?;
        return Ok(false);
    }
    if wave.finished() < wave.total {
        return Ok(true);
    }
    if rollout.wave + 1 < rollout.waves {
        start_wave(rollout, rollout.wave + 1, rng, tick, sink)?;
        return Ok(true);
    }
    sink.event(
        tick(rng),
        &rollout.id,
        "rollout.completed",
        &rollout.body("completed", ""),
    )?;
    Ok(false)
}

/// A rollout that completed or halted starts no device any more; devices still updating
/// finish and log their outcomes with its id.
fn end(rollout: &Rollout, devices: &mut [Device]) {
    for &(index, _, _) in &rollout.members {
        devices[index].member = None;
    }
}

/// Ends `line`, counts it and writes it.
fn emit<W: Write>(line: &mut String, summary: &mut Summary, out: &mut W) -> io::Result<()> {
    line.push('\n');
    summary.lines += 1;
    summary.bytes += line.len() as u64;
    let result = out.write_all(line.as_bytes());
    line.clear();
    result
}

fn seconds(us: i64) -> f64 {
    us as f64 / 1e6
}

fn notification(line: &mut String, ts: i64, id: &str, name: &str, data: &str) {
    use std::fmt::Write as _;
    let _ = write!(
        line,
        r#"{{"ts":{},"id":"{id}","name":"{name}","data":{data}}}"#,
        seconds(ts)
    );
}

fn ota_object(device: &Device) -> String {
    ota_object_with(device, if device.ota_status == 3 { 100 } else { 0 })
}

fn ota_object_with(device: &Device, percent: u8) -> String {
    format!(
        r#"{{"app":"smart-light","arch":"esp32c3","fw_version":"1.{}.0","fw_id":"2026010{}","partition":{},"is_committed":{},"commit_timeout":0,"status":{},"message":"{}","progress_percent":{}}}"#,
        device.fw,
        device.fw % 10,
        device.fw % 2,
        device.ota_status != 3 || device.ota_message == "committed",
        device.ota_status,
        device.ota_message,
        percent
    )
}

/// A shadow change (PROTOCOL §4): the device's report or the delta sent to it, `name`
/// with `data` at `ts[0]`, and the `updated` event of the new version at `ts[1]`.
fn shadow_change<W: Write>(
    line: &mut String,
    ts: [i64; 2],
    device: &mut Device,
    (name, data): (&str, &str),
    summary: &mut Summary,
    out: &mut W,
) -> io::Result<()> {
    notification(line, ts[0], &device.id, name, data);
    emit(line, summary, out)?;
    device.version += 1;
    updated(line, ts[1], device);
    emit(line, summary, out)
}

/// The `updated` event: the device object without its token (PROTOCOL §5, §6).
fn updated(line: &mut String, ts: i64, device: &Device) {
    let data = format!(
        concat!(
            r#"{{"id":"{id}","name":"{name}","user_id":"email_admin","shared_with":"","online":{online},"#,
            r#""created_at":"{created}","last_seen":"{seen}","#,
            r#""info":{{"app":"smart-light","fw_version":"1.{fw}.0","arch":"esp32c3","uptime":{uptime}}},"#,
            r#""shadow":{{"state":{{"desired":{{"on":{on}}},"reported":{{"on":{on},"ota":{ota}}},"delta":{{}}}},"#,
            r#""tags":{{}},"version":{version},"timestamp":{ts}}}}}"#
        ),
        id = device.id,
        name = device.name,
        online = device.online,
        created = rfc3339(device.created_us),
        seen = rfc3339(device.last_seen_us),
        fw = device.fw,
        uptime = (ts - device.last_seen_us).max(0) / 1_000_000,
        on = device.on,
        ota = ota_object(device),
        version = device.version,
        ts = seconds(ts),
    );
    notification(line, ts, &device.id, "updated", &data);
}

fn rfc3339(us: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes_and_valid_lines() {
        let config = Config {
            seed: 7,
            devices: 20,
            bytes: 200_000,
            ..Config::default()
        };
        let mut a = Vec::new();
        let mut b = Vec::new();
        let summary = generate(&config, &mut a).expect("generate");
        generate(&config, &mut b).expect("generate");
        assert_eq!(a, b);
        assert!(summary.bytes >= 200_000);
        assert_eq!(summary.bytes, a.len() as u64);
        for line in a.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let value: serde_json::Value = serde_json::from_slice(line).expect("valid JSON");
            assert!(value["ts"].is_f64() || value["ts"].is_u64());
            assert!(value["name"].is_string());
        }
    }
}
