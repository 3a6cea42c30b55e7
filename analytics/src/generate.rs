//! A seeded generator of realistic notification logs, for benchmarks and soak tests.
//!
//! It simulates a fleet of smart lights the way the server would log them (PROTOCOL §3,
//! §5, §7): connects (`online`, `updated`, `rpc.in.Sys.GetInfo`, the device's first
//! `Dash.Shadow.Update`), device logs (`rpc.out.Log`, the bulk of the lines), button
//! presses reported with `Dash.Shadow.Update`, switches from the cloud
//! (`rpc.in.Shadow.Delta` and the merged `updated`), requests the server has no handler
//! for, firmware updates that commit or revert (§8), and disconnects. A few devices flap.
//! The same seed and size give the same bytes.

use std::io::{self, Write};

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub seed: u64,
    pub devices: u32,
    /// Stop after the first line that reaches this many bytes.
    pub bytes: u64,
    /// Unix seconds of the first event.
    pub start: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            seed: 1,
            devices: 2000,
            bytes: 1 << 30,
            start: 1_767_225_600.0, // 2026-01-01T00:00:00Z
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
    phase: Phase,
    version: u64,
    seq: u64,
    session_end: i64,
    created_us: i64,
    last_seen_us: i64,
    ota_status: u8,
    ota_message: &'static str,
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
            Device {
                id: format!("{:024x}", rng.next() as u128 * 0x1_0000 + u128::from(i)),
                name: format!("light-{i:05}"),
                flaky,
                online: false,
                on: rng.below(3) == 0,
                fw: 10 + rng.below(3) as u32,
                pending_fw: None,
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
    // Next action time per device; a binary heap ordered by time.
    let mut queue = std::collections::BinaryHeap::new();
    for (i, _) in devices.iter().enumerate() {
        queue.push(std::cmp::Reverse((start_us + rng.wait_us(300.0), i)));
    }
    let mut summary = Summary::default();
    let mut line = String::with_capacity(2048);
    while summary.bytes < config.bytes {
        let Some(std::cmp::Reverse((now, index))) = queue.pop() else {
            break;
        };
        summary.last_us = now;
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
                if let Some(fw) = device.pending_fw.take() {
                    // Rebooted into the new image: it commits, or it reverts.
                    if rng.below(5) == 0 {
                        device.ota_status = 2;
                        device.ota_message =
                            "reverted: the new firmware restarted before it was committed";
                    } else {
                        device.fw = fw;
                        device.ota_status = 3;
                        device.ota_message = "committed";
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
                let mean = if device.flaky { 30.0 } else { 1800.0 };
                t + rng.wait_us(mean)
            }
            Phase::Online => {
                let roll = rng.below(1000);
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
                } else if device.pending_fw.is_none() {
                    // An operator pushes the next firmware through desired.ota.url.
                    let data = format!(
                        r#"{{"state":{{"ota":{{"url":"http://herd.local/fw/light-1.{}.bin"}}}},"version":{},"timestamp":{:.3}}}"#,
                        device.fw + 1,
                        device.version,
                        now as f64 / 1e6
                    );
                    notification(
                        &mut line,
                        tick(&mut rng),
                        &device.id,
                        "rpc.in.Shadow.Delta",
                        &data,
                    );
                    emit(&mut line, &mut summary, &mut out)?;
                    device.phase = Phase::Updating { percent: 0 };
                    device.ota_status = 1;
                    device.ota_message = "receiving";
                }
                t + rng.wait_us(if device.flaky { 10.0 } else { 45.0 })
            }
            Phase::Updating { percent } => {
                let percent = (percent + 25).min(100);
                let failed = rng.below(40) == 0;
                if failed {
                    device.ota_status = 2;
                    device.ota_message = "the update timed out waiting for data";
                    device.phase = Phase::Online;
                } else if percent >= 100 {
                    device.ota_status = 3;
                    device.ota_message = "staged; rebooting into the new firmware";
                    device.pending_fw = Some(device.fw + 1);
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
