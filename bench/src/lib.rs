//! Load and footprint benchmark for `herd-server`, measured side by side with a bare
//! tokio-tungstenite echo peer and, with `--targets all`, the mosquitto MQTT broker, on
//! the same harness.
//!
//! The `herd-bench` binary is a driver: it starts the server (fresh data directory), the
//! `echo-peer` binary and mosquitto (generated configuration, [`driver::MosquittoProcess`])
//! on loopback, creates devices over REST, and re-executes itself
//! as client shard processes (`herd-bench client`) that hold the device sockets, because
//! one process may not open more than about 20,000 files. The driver talks to its shards
//! with one JSON object per line ([`shard::Command`] down, [`shard::Event`] up). It
//! measures:
//!
//! - memory per idle connected device (RSS and private memory growth, [`procfs`]),
//! - `Dash.Shadow.Update` round trips under open-loop load ([`client`]), then the highest
//!   rate that still passes; against mosquitto a QoS 1 PUBLISH of the same shadow
//!   document until its PUBACK ([`client::mqtt`]),
//! - notification fan-out to notify-stream consumers ([`consumer`]),
//!
//! and prints a table ([`report`]). Example, from the workspace root:
//!
//! ```text
//! cargo build --release -p herd-server -p herd-bench
//! target/release/herd-bench --devices 19000 --markdown
//! target/release/herd-bench --devices 500 --duration 3s --targets echo   # smoke test
//! target/release/herd-bench --targets all --markdown   # also mosquitto (apt-get install mosquitto)
//! ```
//!
//! All load goes to 127.0.0.0/8 only; every phase is bounded in count and time.

pub mod client;
pub mod cluster;
pub mod consumer;
pub mod driver;
pub mod flood;
pub mod latency;
pub mod ota;
pub mod procfs;
pub mod report;
pub mod shard;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Parses `20s`, `500ms`, `2m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale_ms) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        (text, 1000.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("not a duration: {text:?} (use e.g. 20s, 500ms, 2m)"))?;
    if !(value.is_finite() && value > 0.0) {
        return Err(format!("duration must be positive: {text:?}"));
    }
    Ok(Duration::from_secs_f64(value * scale_ms / 1000.0))
}

/// Wall-clock nanoseconds since the Unix epoch. Shards and consumers are separate
/// processes on one machine, so this is the clock they can share.
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
