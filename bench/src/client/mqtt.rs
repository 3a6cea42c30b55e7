//! Devices as MQTT 3.1.1 clients, for measuring an MQTT broker (mosquitto) on the same
//! harness as herd-server and the echo peer.
//!
//! The few packets a device needs (CONNECT/CONNACK, SUBSCRIBE/SUBACK, PUBLISH at QoS 1
//! and its PUBACK, PINGREQ/PINGRESP, DISCONNECT) are written here by hand rather than
//! taken from a client crate such as `rumqttc`. A shard holds 5,000 clients on one
//! current-thread runtime, and the harness needs three things a full client gets in the
//! way of: every socket bound to the shard's own 127.x source address before it
//! connects; one task per device that owns its socket, exactly like the WebSocket
//! devices, so the schedule, the latency clock and the per-device pending list are the
//! same code paths; and nothing in the client that buffers, retries or reconnects on its
//! own, which would hide the broker's behaviour. `rumqttc` runs one `EventLoop` per
//! client, polled by the caller, with its own request channel, an in-flight table
//! (100 slots by default) and read and write buffers preallocated at 10 KiB each, and
//! reconnects by itself; it was read, not measured. Here a device is one task with a
//! read buffer that starts empty and grows to the largest packet it sees (a few dozen
//! bytes). Measured: a shard process holding 5,000 idle MQTT devices has 24 MiB RSS,
//! against 48 MiB for 5,000 WebSocket devices. The client side does not enter the
//! broker's memory figures either way, but it shares the machine's two cores with the
//! broker under load, so it should cost no more than the WebSocket devices do.
//!
//! What a device does, mirroring a herd device: connect with a clean session and a 60-s
//! keepalive (`PINGREQ` after 30 s without sending), subscribe to
//! `herd/<client id>/shadow/delta` at QoS 1 (where a backend would send it desired
//! state, as herd-server sends `Shadow.Delta`), publish its initial ~200-byte
//! `{"state":{"reported":...}}` to `herd/<client id>/shadow/update` at QoS 1, and is idle
//! once the SUBACK and that PUBACK arrived. Under load each update is the same shadow
//! document the herd devices send as `Dash.Shadow.Update` params, published at QoS 1
//! (not retained) to the update topic; the round trip is until its PUBACK.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc::UnboundedReceiver;

use super::{duration_nanos, DeviceCommand, Pending, Purpose, Shared};

/// Keepalive announced in CONNECT; the broker drops a client silent for 1.5 times this.
pub const KEEPALIVE: Duration = Duration::from_secs(60);
/// A device that sent nothing for this long sends `PINGREQ`.
const PING_AFTER: Duration = Duration::from_secs(30);
/// The largest packet a device accepts from the broker.
const MAX_PACKET: usize = 1 << 20;

/// The broker address of an `mqtt://IP:PORT` URL, refused unless it is on 127.0.0.0/8
/// or ::1: this harness must never send load anywhere else.
pub fn loopback_target(url: &str) -> Result<SocketAddr> {
    let rest = url
        .strip_prefix("mqtt://")
        .ok_or_else(|| anyhow!("url {url} is not mqtt://IP:PORT"))?;
    let address: SocketAddr = rest
        .trim_end_matches('/')
        .parse()
        .with_context(|| format!("url {url} must name an IP address and port"))?;
    if !address.ip().is_loopback() {
        bail!("refusing non-loopback target {address}");
    }
    Ok(address)
}

pub fn update_topic(client_id: &str) -> String {
    format!("herd/{client_id}/shadow/update")
}

pub fn delta_topic(client_id: &str) -> String {
    format!("herd/{client_id}/shadow/delta")
}

/// The payload of a shadow update: the document a herd device sends as the params of
/// `Dash.Shadow.Update`.
pub fn shadow_payload(reported: &str) -> String {
    format!(r#"{{"state":{{"reported":{reported}}}}}"#)
}

// ---------------------------------------------------------------------------------
// packets

/// Appends the fixed header: packet type and flags, then the remaining length as a
/// variable-length integer.
fn fixed_header(out: &mut Vec<u8>, first: u8, remaining: usize) {
    out.push(first);
    let mut length = remaining;
    loop {
        let mut byte = (length % 128) as u8;
        length /= 128;
        if length > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if length == 0 {
            break;
        }
    }
}

fn string(out: &mut Vec<u8>, text: &str) {
    let length = u16::try_from(text.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(&text.as_bytes()[..usize::from(length)]);
}

/// CONNECT, MQTT 3.1.1, clean session, no credentials.
pub fn connect(client_id: &str, keepalive: Duration) -> Vec<u8> {
    let keepalive = u16::try_from(keepalive.as_secs()).unwrap_or(u16::MAX);
    let remaining = 10 + 2 + client_id.len();
    let mut out = Vec::with_capacity(remaining + 5);
    fixed_header(&mut out, 0x10, remaining);
    string(&mut out, "MQTT");
    out.push(4); // protocol level 3.1.1
    out.push(0x02); // clean session
    out.extend_from_slice(&keepalive.to_be_bytes());
    string(&mut out, client_id);
    out
}

/// SUBSCRIBE to one topic filter at QoS 1.
pub fn subscribe(packet_id: u16, filter: &str) -> Vec<u8> {
    let remaining = 2 + 2 + filter.len() + 1;
    let mut out = Vec::with_capacity(remaining + 5);
    fixed_header(&mut out, 0x82, remaining);
    out.extend_from_slice(&packet_id.to_be_bytes());
    string(&mut out, filter);
    out.push(1);
    out
}

/// PUBLISH at QoS 1, not retained, not a duplicate.
pub fn publish_qos1(out: &mut Vec<u8>, packet_id: u16, topic: &str, payload: &[u8]) {
    let remaining = 2 + topic.len() + 2 + payload.len();
    out.reserve(remaining + 5);
    fixed_header(out, 0x32, remaining);
    string(out, topic);
    out.extend_from_slice(&packet_id.to_be_bytes());
    out.extend_from_slice(payload);
}

pub fn puback(packet_id: u16) -> [u8; 4] {
    let id = packet_id.to_be_bytes();
    [0x40, 0x02, id[0], id[1]]
}

pub const PINGREQ: [u8; 2] = [0xc0, 0x00];
pub const DISCONNECT: [u8; 2] = [0xe0, 0x00];

/// A packet from the broker, as far as a device cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet {
    ConnAck {
        return_code: u8,
    },
    SubAck {
        packet_id: u16,
        granted: u8,
    },
    PubAck {
        packet_id: u16,
    },
    /// A message on a subscribed topic; QoS 1 needs a PUBACK.
    Publish {
        qos: u8,
        packet_id: Option<u16>,
    },
    PingResp,
    Other {
        kind: u8,
    },
}

/// Decodes the first packet in `buffer`: `Ok(None)` while it is incomplete, else the
/// packet and its length in bytes.
pub fn decode(buffer: &[u8]) -> Result<Option<(Packet, usize)>> {
    let Some(&first) = buffer.first() else {
        return Ok(None);
    };
    let mut remaining = 0usize;
    let mut header = 1;
    loop {
        let Some(&byte) = buffer.get(header) else {
            return Ok(None);
        };
        remaining |= usize::from(byte & 0x7f) << (7 * (header - 1));
        header += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if header > 4 {
            bail!("malformed remaining length");
        }
    }
    if remaining > MAX_PACKET {
        bail!("packet of {remaining} bytes from the broker");
    }
    let total = header + remaining;
    let Some(body) = buffer.get(header..total) else {
        return Ok(None);
    };
    let u16_at = |i: usize| -> Result<u16> {
        body.get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| anyhow!("short packet 0x{first:02x}"))
    };
    let packet = match first >> 4 {
        2 => Packet::ConnAck {
            return_code: *body.get(1).ok_or_else(|| anyhow!("short CONNACK"))?,
        },
        9 => Packet::SubAck {
            packet_id: u16_at(0)?,
            granted: *body.get(2).ok_or_else(|| anyhow!("short SUBACK"))?,
        },
        4 => Packet::PubAck {
            packet_id: u16_at(0)?,
        },
        3 => {
            let qos = (first >> 1) & 0x03;
            let topic_length = usize::from(u16_at(0)?);
            let packet_id = if qos > 0 {
                Some(u16_at(2 + topic_length)?)
            } else {
                None
            };
            Packet::Publish { qos, packet_id }
        }
        13 => Packet::PingResp,
        kind => Packet::Other { kind },
    };
    Ok(Some((packet, total)))
}

// ---------------------------------------------------------------------------------
// a device

/// TCP connection from `source`, CONNECT, and CONNACK accepted.
pub async fn open(target: SocketAddr, client_id: &str, source: IpAddr) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket
        .bind(SocketAddr::new(source, 0))
        .with_context(|| format!("bind {source}"))?;
    let mut stream = socket.connect(target).await.context("tcp connect")?;
    // Packets are small and latency is what is measured: do not let Nagle hold them.
    stream.set_nodelay(true)?;
    stream.write_all(&connect(client_id, KEEPALIVE)).await?;
    // Nothing but the CONNACK comes before the device sends again.
    let mut buffer = [0u8; 4];
    stream
        .read_exact(&mut buffer)
        .await
        .context("reading CONNACK")?;
    match decode(&buffer)? {
        Some((Packet::ConnAck { return_code: 0 }, 4)) => Ok(stream),
        Some((Packet::ConnAck { return_code }, _)) => {
            bail!("broker refused the connection (CONNACK return code {return_code})")
        }
        other => bail!("expected CONNACK, got {other:?}"),
    }
}

pub(super) struct MqttDevice {
    shared: Arc<Shared>,
    client_id: String,
    /// The first device of a shard reports the last acknowledged seq (for symmetry
    /// with the other peers; nothing is read back from a broker).
    probe: bool,
    pending: VecDeque<Pending>,
    next_id: u16,
    subscribed: bool,
    initial_done: bool,
    counted_ready: bool,
}

impl MqttDevice {
    pub(super) fn new(shared: Arc<Shared>, client_id: String, probe: bool) -> Self {
        Self {
            shared,
            client_id,
            probe,
            pending: VecDeque::new(),
            next_id: 1,
            subscribed: false,
            initial_done: false,
            counted_ready: false,
        }
    }

    pub(super) async fn run(
        mut self,
        stream: TcpStream,
        commands: UnboundedReceiver<DeviceCommand>,
        initial: String,
    ) {
        let shared = self.shared.clone();
        if let Err(error) = self.serve(stream, commands, &initial).await {
            shared.disconnected.fetch_add(1, Ordering::SeqCst);
            shared.note_error(format!("mqtt client: {error:#}"));
        }
        shared.live.fetch_sub(1, Ordering::SeqCst);
        shared.changed.notify_waiters();
    }

    /// Packet ids run 1..=65535 and wrap; at most a handful are in flight per device.
    fn take_id(&mut self) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        id
    }

    /// Returns `Ok` when the shard closed the connection, `Err` when the broker did or
    /// the socket failed.
    async fn serve(
        &mut self,
        mut stream: TcpStream,
        mut commands: UnboundedReceiver<DeviceCommand>,
        initial: &str,
    ) -> Result<()> {
        let topic = update_topic(&self.client_id);
        let mut out = subscribe(self.take_id(), &delta_topic(&self.client_id));
        let id = self.take_id();
        publish_qos1(&mut out, id, &topic, shadow_payload(initial).as_bytes());
        stream.write_all(&out).await?;
        self.pending.push_back(Pending {
            id: u64::from(id),
            since: Instant::now(),
            purpose: Purpose::Initial,
        });
        let mut input: Vec<u8> = Vec::new();
        let mut last_sent = tokio::time::Instant::now();
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    None => {
                        // Best effort: the shard is going away either way.
                        let _ = stream.write_all(&DISCONNECT).await;
                        return Ok(());
                    }
                    Some(DeviceCommand::Update { seq, scheduled, phase }) => {
                        let id = self.take_id();
                        out.clear();
                        let payload = shadow_payload(&format!(r#"{{"seq":{seq}}}"#));
                        publish_qos1(&mut out, id, &topic, payload.as_bytes());
                        if let Err(error) = stream.write_all(&out).await {
                            phase.error(format!("send: {error}"));
                            return Err(error.into());
                        }
                        last_sent = tokio::time::Instant::now();
                        phase.sent.fetch_add(1, Ordering::Relaxed);
                        self.pending.push_back(Pending {
                            id: u64::from(id),
                            since: scheduled,
                            purpose: Purpose::Load { phase, seq },
                        });
                    }
                    Some(DeviceCommand::Ping { phase, .. }) => {
                        phase.error("notify fan-out is not measured against an MQTT broker".into());
                    }
                },
                read = stream.read_buf(&mut input) => {
                    if read.context("read")? == 0 {
                        bail!("closed by broker");
                    }
                    let mut used = 0;
                    while let Some((packet, length)) = decode(&input[used..])? {
                        used += length;
                        if let Some(reply) = self.on_packet(packet)? {
                            stream.write_all(&reply).await?;
                            last_sent = tokio::time::Instant::now();
                        }
                    }
                    input.drain(..used);
                }
                _ = tokio::time::sleep_until(last_sent + PING_AFTER) => {
                    stream.write_all(&PINGREQ).await?;
                    last_sent = tokio::time::Instant::now();
                }
            }
        }
    }

    /// Handles one packet; returns bytes to send back, if any.
    fn on_packet(&mut self, packet: Packet) -> Result<Option<[u8; 4]>> {
        match packet {
            Packet::PubAck { packet_id } => self.complete(packet_id),
            Packet::SubAck { granted, .. } => {
                if granted > 2 {
                    bail!("broker refused the subscription (SUBACK 0x{granted:02x})");
                }
                self.subscribed = true;
                self.check_ready();
            }
            Packet::Publish {
                packet_id: Some(packet_id),
                ..
            } => return Ok(Some(puback(packet_id))),
            Packet::Publish { .. } | Packet::PingResp => {}
            Packet::ConnAck { .. } => bail!("second CONNACK"),
            Packet::Other { kind } => bail!("unexpected packet type {kind} from the broker"),
        }
        Ok(None)
    }

    fn complete(&mut self, packet_id: u16) {
        let id = u64::from(packet_id);
        let Some(position) = self.pending.iter().position(|p| p.id == id) else {
            self.shared
                .note_error(format!("PUBACK for unknown packet id {id}"));
            return;
        };
        let Some(pending) = self.pending.remove(position) else {
            return;
        };
        match pending.purpose {
            Purpose::Initial => {
                self.initial_done = true;
                self.check_ready();
            }
            Purpose::Load { phase, seq } => {
                phase.record(pending.since, duration_nanos(pending.since.elapsed()));
                phase.replied.fetch_add(1, Ordering::Relaxed);
                if self.probe {
                    phase.probe_seq.fetch_max(seq, Ordering::Relaxed);
                }
            }
        }
    }

    fn check_ready(&mut self) {
        if self.subscribed && self.initial_done && !self.counted_ready {
            self.counted_ready = true;
            self.shared.ready.fetch_add(1, Ordering::SeqCst);
            self.shared.changed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_packet_is_mqtt_311() {
        let packet = connect("dev-1", Duration::from_secs(60));
        assert_eq!(
            packet,
            [
                0x10, 17, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 5, b'd', b'e', b'v',
                b'-', b'1'
            ]
        );
    }

    #[test]
    fn publish_round_trips_through_decode() {
        let mut out = Vec::new();
        let payload = vec![b'x'; 300];
        publish_qos1(&mut out, 513, "herd/d/shadow/update", &payload);
        // 300 + 2 + 20 + 2 = 324 needs two length bytes.
        assert_eq!(&out[..3], &[0x32, 0xc4, 0x02]);
        let (packet, length) = decode(&out).expect("valid").expect("complete");
        assert_eq!(length, out.len());
        assert_eq!(
            packet,
            Packet::Publish {
                qos: 1,
                packet_id: Some(513)
            }
        );
        assert_eq!(decode(&out[..out.len() - 1]).expect("valid"), None);
        assert_eq!(decode(&out[..2]).expect("valid"), None);
    }

    #[test]
    fn acks_decode() {
        assert_eq!(
            decode(&puback(7)).expect("valid"),
            Some((Packet::PubAck { packet_id: 7 }, 4))
        );
        assert_eq!(
            decode(&[0x20, 2, 0, 5]).expect("valid"),
            Some((Packet::ConnAck { return_code: 5 }, 4))
        );
        assert_eq!(
            decode(&[0x90, 3, 0, 1, 1, 0xd0, 0]).expect("valid"),
            Some((
                Packet::SubAck {
                    packet_id: 1,
                    granted: 1
                },
                5
            ))
        );
        assert_eq!(
            decode(&[0xd0, 0]).expect("valid"),
            Some((Packet::PingResp, 2))
        );
        assert!(decode(&[0x30, 0xff, 0xff, 0xff, 0xff, 1]).is_err());
    }

    #[test]
    fn subscribe_packet() {
        assert_eq!(
            subscribe(1, "a/b"),
            [0x82, 8, 0, 1, 0, 3, b'a', b'/', b'b', 1]
        );
    }

    #[test]
    fn only_loopback_brokers_are_accepted() {
        assert!(loopback_target("mqtt://127.0.0.1:1883").is_ok());
        assert!(loopback_target("mqtt://10.0.0.1:1883").is_err());
        assert!(loopback_target("ws://127.0.0.1:1883").is_err());
        assert!(loopback_target("mqtt://localhost:1883").is_err());
    }

    #[test]
    fn payload_is_the_shadow_document() {
        let payload = shadow_payload(r#"{"seq":3}"#);
        let value: serde_json::Value = serde_json::from_str(&payload).expect("JSON");
        assert_eq!(value["state"]["reported"]["seq"], 3);
    }
}
