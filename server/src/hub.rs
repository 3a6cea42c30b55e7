//! The notification hub: every event goes to notification.log (PROTOCOL §7) and to the live
//! notify streams (PROTOCOL §5), in one order.
//!
//! Fan-out uses a bounded broadcast ring: each event is serialized once and shared by
//! reference, a consumer that falls more than the ring's length behind loses the oldest
//! events and is told `lagged`, and publishing never waits for any consumer.

use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::notification_log::NotificationLog;
use crate::store::{DeviceRecord, User};

/// Who a device belongs to, carried with each of its events for audience checks.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub id: Arc<str>,
    pub owner: Arc<str>,
    pub shared_with: Arc<str>,
}

impl Identity {
    pub fn of(device: &DeviceRecord) -> Self {
        Self {
            id: device.id.as_str().into(),
            owner: device.user_id.as_str().into(),
            shared_with: device.shared_with.as_str().into(),
        }
    }

    /// The server itself, for events about no device (`server.started`, PROTOCOL §7).
    pub fn server() -> Self {
        Self {
            id: "".into(),
            owner: "".into(),
            shared_with: "".into(),
        }
    }

    /// Whether `user` may see this device's events (PROTOCOL §5 audience).
    pub fn visible_to(&self, user: &User) -> bool {
        crate::access::may_see(user, &self.owner, &self.shared_with)
    }
}

/// One emitted notification, serialized once in its stream form (PROTOCOL §5).
#[derive(Debug)]
pub struct Event {
    pub device: Identity,
    pub name: Box<str>,
    /// Shared bytes, so handing the event to many sockets copies nothing.
    pub json: Utf8Bytes,
}

#[derive(Serialize)]
struct Message<'a, T: Serialize + ?Sized> {
    id: &'a str,
    name: &'a str,
    data: &'a T,
}

/// Cheap to clone; all clones publish into the same log and ring.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    ring: broadcast::Sender<Arc<Event>>,
    log: NotificationLog,
    /// In a cluster, events go to the cluster's stream, which every node's log is written
    /// from ([`crate::cluster::events`]), instead of straight to the log.
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    /// Serializes "append to log" with "publish to ring" so both see one order.
    order: Mutex<()>,
}

impl Hub {
    pub fn new(log: NotificationLog, backlog: usize) -> Self {
        let (ring, _) = broadcast::channel(backlog.max(1));
        Self {
            inner: Arc::new(Inner {
                ring,
                log,
                cluster: std::sync::OnceLock::new(),
                order: Mutex::new(()),
            }),
        }
    }

    /// Emits `name` for `device` with `data`.
    pub fn emit<T: Serialize + ?Sized>(&self, device: &Identity, name: &str, data: &T) {
        let message = Message {
            id: &device.id,
            name,
            data,
        };
        let json = match serde_json::to_string(&message) {
            Ok(json) => json,
            Err(e) => {
                tracing::error!(error = %e, name, "cannot serialize notification");
                return;
            }
        };
        let event = Arc::new(Event {
            device: device.clone(),
            name: name.into(),
            json: Utf8Bytes::from(json),
        });
        let _order = self.inner.order.lock();
        let ts = crate::clock::now();
        // `json` starts with '{'; the persisted form puts `ts` first (PROTOCOL §7).
        let line = format!("{{\"ts\":{ts},{}", &event.json.as_str()[1..]);
        match self.inner.cluster.get() {
            Some(cluster) => cluster.publish(crate::cluster::events::Outgoing {
                device: event.device.clone(),
                line,
            }),
            None => self.inner.log.append(line),
        }
        // No receivers is not an error: nobody is watching right now.
        let _ = self.inner.ring.send(event);
    }

    /// Sends events to `cluster` from now on (cluster mode).
    pub fn join(&self, cluster: Arc<crate::cluster::Cluster>) {
        let _ = self.inner.cluster.set(cluster);
    }

    /// Hands another node's event to this node's live consumers; the log has it from the
    /// cluster's stream.
    pub fn inject(&self, event: Arc<Event>) {
        let _order = self.inner.order.lock();
        let _ = self.inner.ring.send(event);
    }

    /// A new live consumer, starting at the next event.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.inner.ring.subscribe()
    }

    pub fn log(&self) -> &NotificationLog {
        &self.inner.log
    }
}
