//! Messages between the driver and its client shard processes: one JSON object per
//! line, commands on the shard's stdin, events on its stdout.

use serde::{Deserialize, Serialize};

/// What the far end of the sockets is, which decides how a device treats frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerKind {
    /// `herd-server`: answer its requests (`Sys.GetInfo`, `Shadow.Delta`), take frames
    /// with `result`/`error` as replies.
    Server,
    /// The echo peer: a frame that comes back with one of our ids is the reply.
    Echo,
    /// An MQTT 3.1.1 broker (mosquitto): each device is an MQTT client, an update is a
    /// QoS 1 PUBLISH and its PUBACK is the reply.
    Mqtt,
}

/// Which frame a load phase sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadKind {
    /// `Dash.Shadow.Update` with an id; the latency is until its reply.
    Update,
    /// `Bench.Ping` notification without id carrying the scheduled send time; the
    /// latency is measured by the notify consumers.
    Ping,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Open one socket per token and bring each device to idle: `Sys.GetInfo` answered
    /// (server only) and the initial shadow report acknowledged.
    Connect {
        /// `ws://127.0.0.1:PORT/api/v2/rpc`; `?access_token=<token>` is appended. For an
        /// MQTT broker `mqtt://127.0.0.1:PORT`, and each token is the client id.
        url: String,
        tokens: Vec<String>,
        /// Local address to bind before connecting, so that each shard has its own
        /// ephemeral port range.
        source_ip: String,
        peer: PeerKind,
        /// Size of the initial `reported` object in bytes.
        shadow_bytes: usize,
        /// Handshakes in flight at once; the listen backlog is finite.
        concurrency: usize,
        /// Bound for the whole connect phase.
        timeout_ms: u64,
    },
    /// Send `rate` frames per second for `duration_ms`, starting at `start_unix_ns`,
    /// round-robin over this shard's devices, then wait up to `drain_ms` for replies.
    Load {
        kind: LoadKind,
        rate: f64,
        duration_ms: u64,
        start_unix_ns: u64,
        drain_ms: u64,
    },
    /// Close every socket and exit.
    Close,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Connected {
        connected: usize,
        failed: usize,
        /// Devices that answered `Sys.GetInfo` (server) and got their shadow report
        /// acknowledged.
        ready: usize,
        /// Sockets the peer closed after they had connected.
        disconnected: usize,
        elapsed_ms: u64,
        first_error: Option<String>,
    },
    LoadDone {
        /// Frames written to sockets.
        sent: u64,
        /// Replies received (update load only).
        replied: u64,
        /// Error replies, and sends that could not be made.
        errors: u64,
        /// Sends still without a reply when the drain time ran out.
        unanswered: u64,
        disconnected: usize,
        /// Latency buckets, see [`crate::latency::to_buckets`].
        buckets: Vec<(u64, u64)>,
        /// `(token index, seq)`: the highest `reported.seq` the server acknowledged for
        /// this shard's first device, to check afterwards that it was persisted.
        probe: Option<(usize, u64)>,
        first_error: Option<String>,
        /// Worst latency per 100-ms window of scheduled send time (update load only).
        #[serde(default)]
        window_max_us: Vec<u64>,
    },
    Closed,
    /// The shard could not carry out a command.
    Failed {
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_round_trip() {
        let command = Command::Load {
            kind: LoadKind::Ping,
            rate: 1500.0,
            duration_ms: 3000,
            start_unix_ns: 42,
            drain_ms: 100,
        };
        let line = serde_json::to_string(&command).expect("serializable");
        assert!(line.starts_with(r#"{"cmd":"load","kind":"ping""#));
        let back: Command = serde_json::from_str(&line).expect("parses back");
        assert!(matches!(
            back,
            Command::Load {
                kind: LoadKind::Ping,
                start_unix_ns: 42,
                ..
            }
        ));
        let closed: Event = serde_json::from_str(r#"{"event":"closed"}"#).expect("parses");
        assert!(matches!(closed, Event::Closed));
    }
}
