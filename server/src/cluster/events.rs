//! The cluster's events: published by the node that emits them to the JetStream stream
//! `HERD_EVENTS`, and read back from the stream by every node, in the stream's order, into
//! its notification.log (PROTOCOL §7) and, for the other nodes' events, its notify streams
//! (PROTOCOL §5). One read per node per event serves both.
//!
//! Each message is one log line exactly as a single server writes it (`{"ts":…,"id":…,
//! "name":…,"data":…}`), with headers saying which node sent it and who may see it. Its
//! `Nats-Msg-Id` (`<node>.<run>.<n>`) lets the stream drop a message published twice after
//! a lost acknowledgement.
//!
//! **The log, exactly once.** A node's copy of the log is written only by [`mirror`], from
//! an ordered consumer of the stream. After each batch reaches the file, the stream
//! sequence and the number of lines in the log are written to `cluster-log.pos`. After a
//! crash, lines past the recorded count are the first messages after the recorded
//! sequence (written, then the process died before recording them), so that many are
//! skipped instead of written twice.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use async_nats::HeaderMap;
use futures_util::{FutureExt, StreamExt};
use herd_config::Durability;
use protocol::notification::{OFFLINE, ONLINE};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{Cluster, EVENTS_PREFIX, STREAM};
use crate::hub::{Event, Identity};
use crate::notification_log::{log_files, NotificationLog};
use crate::AppState;

const NODE: &str = "Herd-Node";
const OWNER: &str = "Herd-Owner";
const SHARED: &str = "Herd-Shared";
/// Longest a batch of mirrored lines waits to grow.
const MIRROR_BATCH: usize = 4096;

/// An event on its way to the stream.
pub struct Outgoing {
    pub device: Identity,
    /// The notification.log line (PROTOCOL §7).
    pub line: String,
}

/// Makes the stream if it is missing. An existing stream is left as the operator set it
/// (replicas, limits).
pub async fn ensure_stream(
    js: &jetstream::Context,
    settings: &herd_config::ServerSettings,
) -> anyhow::Result<()> {
    js.get_or_create_stream(jetstream::stream::Config {
        name: STREAM.to_string(),
        subjects: vec![format!("{EVENTS_PREFIX}>")],
        storage: jetstream::stream::StorageType::File,
        max_age: Duration::from_secs(settings.stream_max_age_h.max(1) * 3600),
        max_bytes: match settings.stream_max_bytes {
            0 => -1,
            bytes => i64::try_from(bytes).unwrap_or(i64::MAX),
        },
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))
    .context("cannot make the JetStream stream HERD_EVENTS (is JetStream enabled, -js?)")?;
    Ok(())
}

/// The stream's last sequence number.
pub async fn stream_end(js: &jetstream::Context) -> anyhow::Result<u64> {
    let mut stream = js
        .get_stream(STREAM)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let info = stream.info().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(info.state.last_sequence)
}

/// Publishes events in emit order and counts acknowledgements. A message the stream does
/// not acknowledge is published again with the same id (the stream keeps one copy).
pub async fn publisher(cluster: Arc<Cluster>, mut outgoing: mpsc::UnboundedReceiver<Outgoing>) {
    let subject = format!("{EVENTS_PREFIX}{}", cluster.node);
    let (acks, mut pending) = mpsc::channel::<(u64, HeaderMap, bytes::Bytes, _)>(8192);
    let acker = {
        let cluster = cluster.clone();
        let subject = subject.clone();
        tokio::spawn(async move {
            while let Some((n, headers, payload, ack)) = pending.recv().await {
                let ack: jetstream::context::PublishAckFuture = ack;
                let mut outcome = ack.await.map(|_| ());
                let mut wait = Duration::from_millis(100);
                while let Err(e) = outcome {
                    {
                        let mut health = cluster.health();
                        health.stream_ok = false;
                        health.stream_failures += 1;
                    }
                    tracing::warn!(error = %e, "an event did not reach the stream; publishing it again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(1));
                    outcome = match cluster
                        .js
                        .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                        .await
                    {
                        Ok(ack) => ack.await.map(|_| ()),
                        Err(e) => Err(e),
                    };
                }
                cluster.health().stream_ok = true;
                cluster.acked.send_replace(n);
            }
        })
    };
    let mut n = 0u64;
    while let Some(event) = outgoing.recv().await {
        n += 1;
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            format!("{}.{}.{n}", cluster.node, cluster.run),
        );
        headers.insert(NODE, &*cluster.node);
        headers.insert(OWNER, &*event.device.owner);
        headers.insert(SHARED, &*event.device.shared_with);
        let payload = bytes::Bytes::from(event.line);
        loop {
            match cluster
                .js
                .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                .await
            {
                Ok(ack) => {
                    if acks.send((n, headers, payload, ack)).await.is_err() {
                        return;
                    }
                    break;
                }
                Err(e) => {
                    cluster.health().stream_ok = false;
                    tracing::warn!(error = %e, "cannot publish an event; trying again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    drop(acks);
    let _ = acker.await;
}

/// Another node's event, read from the stream: handed to this node's notify streams, and
/// the presence map kept from its `online` and `offline`.
fn deliver(cluster: &Cluster, state: &AppState, message: &jetstream::Message, event: NodeEvent) {
    if event.node == &*cluster.node {
        // This node's own events went to its streams when they were emitted.
        return;
    }
    let Some(json) = stream_form(event.line) else {
        return;
    };
    let header = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(name))
            .map(|value| value.as_str())
            .unwrap_or_default()
    };
    let (node, name) = (event.node, event.name);
    let device = Identity {
        id: event.id.into(),
        owner: header(OWNER).into(),
        shared_with: header(SHARED).into(),
    };
    match name.as_str() {
        ONLINE => cluster.note_remote_online(&device.id, node),
        OFFLINE => cluster.note_remote_offline(&device.id),
        // A device held off on one node is held off on all, so it cannot flood another
        // through the balancer; a release on any node lets it back in everywhere.
        crate::ops::quarantine::QUARANTINED => hold_off(state, &device.id, &json),
        crate::ops::release::RELEASED => {
            state.guard.release(&device.id);
        }
        _ => {}
    }
    // Whoever waits for this device here (an update awaiting its return) looks again.
    state.watch.notify(&device.id);
    state.hub.inject(Arc::new(Event {
        device,
        name: name.into(),
        json: Utf8Bytes::from(json),
    }));
}

/// Quarantines device `id` here as another node did, until the time its event names.
fn hold_off(state: &AppState, id: &str, json: &str) {
    let Ok(event) = serde_json::from_str::<serde_json::Value>(json) else {
        return;
    };
    let data = &event["data"];
    let reason = data["reason"]
        .as_str()
        .unwrap_or("quarantined on another node");
    let until = data["until"]
        .as_str()
        .and_then(|until| {
            time::OffsetDateTime::parse(until, &time::format_description::well_known::Rfc3339).ok()
        })
        .map(|until| until.unix_timestamp_nanos() as f64 / 1e9);
    let left = match until {
        Some(until) => until - crate::clock::now(),
        None => state.settings.quarantine_s as f64,
    };
    if left > 0.0 {
        state
            .guard
            .quarantine(id, reason, Duration::from_secs_f64(left));
    }
}

/// Devices other nodes took over without an event ([`super::Cluster::announce_presence`]).
pub async fn presence(cluster: Arc<Cluster>, mut messages: async_nats::Subscriber) {
    while let Some(message) = messages.next().await {
        let Some(node) = message.subject.strip_prefix(super::PRESENCE_PREFIX) else {
            continue;
        };
        if let Ok(id) = std::str::from_utf8(&message.payload) {
            cluster.note_remote_online(id, node);
        }
    }
}

/// The message's payload if it is an event a node published: its headers name the node,
/// and the payload is one complete log line, `{"ts":<number>,"id":<string>,"name":
/// <string>,…}` (PROTOCOL §7).
fn log_line(message: &jetstream::Message) -> Option<NodeEvent<'_>> {
    /// The fields a log line must have; `data` and anything else are checked as JSON and
    /// skipped.
    #[derive(serde::Deserialize)]
    struct Fields<'a> {
        #[allow(dead_code)]
        ts: f64,
        #[serde(borrow)]
        id: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        name: std::borrow::Cow<'a, str>,
    }
    let node = message.headers.as_ref()?.get(NODE)?.as_str();
    let line = std::str::from_utf8(&message.payload).ok()?;
    if line.contains('\n') || !line.starts_with("{\"ts\":") {
        return None;
    }
    let fields: Fields = serde_json::from_str(line).ok()?;
    Some(NodeEvent {
        node,
        line,
        id: fields.id.into_owned(),
        name: fields.name.into_owned(),
    })
}

/// A log line a node published, with what its readers need, parsed once.
struct NodeEvent<'a> {
    node: &'a str,
    line: &'a str,
    id: String,
    name: String,
}

/// `{"ts":…,"id":…}` → `{"id":…}`: the stream form of a log line (PROTOCOL §5, §7).
fn stream_form(line: &str) -> Option<String> {
    let rest = line.strip_prefix("{\"ts\":")?;
    let comma = rest.find(',')?;
    Some(format!("{{{}", &rest[comma + 1..]))
}

/// Where the mirror has got to: the last stream sequence written and the log's line count
/// after it.
pub struct Mirror {
    path: PathBuf,
    sequence: u64,
    lines: u64,
    /// Lines already in the log past `lines`: the first messages after `sequence`.
    skip: u64,
    fsync: bool,
}

impl Mirror {
    /// Reads `cluster-log.pos` in `dir` and counts the log's lines.
    pub fn open(dir: &Path, durability: Durability) -> anyhow::Result<Mirror> {
        let path = dir.join("cluster-log.pos");
        let total = count_lines(dir)?;
        let (sequence, lines) = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let mut parts = text.split_whitespace().map(str::parse::<u64>);
                match (parts.next(), parts.next()) {
                    (Some(Ok(sequence)), Some(Ok(lines))) => (sequence, lines),
                    _ => anyhow::bail!("{} is not a log position", path.display()),
                }
            }
            // A node's first start in a cluster: its log so far stays, the cluster's follows.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, total),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let skip = match total.checked_sub(lines) {
            Some(skip) => skip,
            None => {
                tracing::warn!(
                    recorded = lines,
                    found = total,
                    "notification.log has fewer lines than recorded; continuing after them"
                );
                0
            }
        };
        if skip > 0 {
            tracing::info!(
                lines = skip,
                "lines written before the last stop were not recorded; skipping their messages"
            );
        }
        Ok(Mirror {
            path,
            sequence,
            lines: total - skip,
            skip,
            fsync: durability == Durability::Power,
        })
    }

    fn save(&self) -> std::io::Result<()> {
        let temporary = self.path.with_extension("pos.tmp");
        let mut file = std::fs::File::create(&temporary)?;
        writeln!(file, "{} {}", self.sequence, self.lines)?;
        if self.fsync {
            file.sync_all()?;
        }
        std::fs::rename(&temporary, &self.path)
    }
}

/// Lines in the whole rotated log set (complete lines: the writer repaired a torn tail
/// when it opened).
fn count_lines(dir: &Path) -> anyhow::Result<u64> {
    use std::io::Read;
    let mut lines = 0u64;
    let mut buffer = vec![0u8; 1 << 20];
    for path in log_files(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let mut file = std::fs::File::open(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        loop {
            let read = match file.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
            };
            lines += buffer[..read].iter().filter(|&&b| b == b'\n').count() as u64;
        }
    }
    Ok(lines)
}

/// Writes the stream, in its order, into this node's notification.log.
/// Stops when `stop` fires; what it has not read yet, it reads at the next start.
pub async fn mirror(cluster: Arc<Cluster>, state: AppState, mut position: Mirror, live_after: u64) {
    let log = state.hub.log().clone();
    let stop = state.streams_shutdown.clone();
    loop {
        let outcome = tokio::select! {
            outcome = mirror_from(&cluster, &state, &log, &mut position, live_after) => outcome,
            _ = cluster.reconnected.notified() => continue,
            _ = stop.cancelled() => return,
        };
        match outcome {
            Ok(()) => return,
            Err(e) => {
                cluster.health().stream_ok = false;
                tracing::warn!(error = %e, "reading the cluster's log stream failed; starting again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn mirror_from(
    cluster: &Cluster,
    state: &AppState,
    log: &NotificationLog,
    position: &mut Mirror,
    live_after: u64,
) -> anyhow::Result<()> {
    let stream = cluster
        .js
        .get_stream(STREAM)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let deliver_policy = match position.sequence {
        0 => jetstream::consumer::DeliverPolicy::All,
        sequence => jetstream::consumer::DeliverPolicy::ByStartSequence {
            start_sequence: sequence + 1,
        },
    };
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    loop {
        let Some(first) = messages.next().await else {
            return Err(anyhow::anyhow!("the consumer ended"));
        };
        let mut batch = vec![first.map_err(|e| anyhow::anyhow!("{e}"))?];
        while batch.len() < MIRROR_BATCH {
            match messages.next().now_or_never() {
                Some(Some(message)) => batch.push(message.map_err(|e| anyhow::anyhow!("{e}"))?),
                _ => break,
            }
        }
        let mut written = 0u64;
        for message in &batch {
            let sequence = message
                .info()
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .stream_sequence;
            if position.sequence > 0 && sequence > position.sequence + 1 {
                // The stream dropped them (its age or size limit) before this node read
                // them: its log lacks them. Say so; the other nodes' logs may have them.
                let missing = sequence - position.sequence - 1;
                cluster.health().log_gap_events += missing;
                tracing::error!(
                    from = position.sequence + 1,
                    to = sequence - 1,
                    "events left the cluster's stream before this node read them; its notification.log lacks them"
                );
            }
            position.sequence = sequence;
            // Anyone who may publish on the stream's subjects could put anything there;
            // only a log line a node wrote goes into the log (PROTOCOL §7).
            let Some(event) = log_line(message) else {
                cluster.health().rejected += 1;
                tracing::warn!(
                    sequence,
                    "a message on the event stream is not a node's event; left out of the log"
                );
                continue;
            };
            // Events from before this node started are history for its log, not news
            // for its streams.
            let line = event.line;
            if sequence > live_after {
                deliver(cluster, state, message, event);
            }
            position.lines += 1;
            if position.skip > 0 {
                position.skip -= 1;
                continue;
            }
            log.append(line.to_string());
            written += 1;
        }
        log.flush().await.context("cannot write notification.log")?;
        position
            .save()
            .with_context(|| format!("cannot write {}", position.path.display()))?;
        let mut health = cluster.health();
        health.log_lines_mirrored += written;
        health.stream_ok = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_form_drops_ts() {
        assert_eq!(
            stream_form(r#"{"ts":1700000000.25,"id":"d1","name":"online","data":null}"#).as_deref(),
            Some(r#"{"id":"d1","name":"online","data":null}"#)
        );
        assert_eq!(stream_form(r#"{"id":"d1"}"#), None);
    }

    #[test]
    fn a_position_past_the_recorded_lines_skips_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notification.log"), "{}\n{}\n{}\n").unwrap();
        std::fs::write(dir.path().join("cluster-log.pos"), "40 1\n").unwrap();
        let mirror = Mirror::open(dir.path(), Durability::Process).unwrap();
        assert_eq!((mirror.sequence, mirror.lines, mirror.skip), (40, 1, 2));
        std::fs::write(dir.path().join("cluster-log.pos"), "forty\n").unwrap();
        assert!(Mirror::open(dir.path(), Durability::Process).is_err());
    }

    #[test]
    fn lines_are_counted_over_the_rotated_set_and_across_reads() {
        let dir = tempfile::tempdir().unwrap();
        // More than one read's worth in a rotated file, a few lines in the current one.
        let line = format!(
            "{{\"ts\":1,\"id\":\"d\",\"name\":\"{}\"}}\n",
            "x".repeat(100)
        );
        let many = line.repeat(20_000);
        std::fs::write(dir.path().join("notification.log.2026-12-01"), &many).unwrap();
        std::fs::write(dir.path().join("notification.log"), line.repeat(3)).unwrap();
        std::fs::write(dir.path().join("unrelated.txt"), "\n\n").unwrap();
        assert!(many.len() > 1 << 20);
        assert_eq!(count_lines(dir.path()).unwrap(), 20_003);
    }

    #[test]
    fn a_first_start_keeps_the_log_so_far() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notification.log"), "{}\n{}\n").unwrap();
        let mirror = Mirror::open(dir.path(), Durability::Process).unwrap();
        assert_eq!((mirror.sequence, mirror.lines, mirror.skip), (0, 2, 0));
    }
}
