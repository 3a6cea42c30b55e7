//! The registry of connected devices: for each online device, the handle other tasks use to
//! send it frames and await its replies (PROTOCOL §2 ids, §6 RPC proxy).
//!
//! A connection costs little while idle: the outbox and the pending-call map allocate only
//! when used, and liveness pings come from one sweeper for all devices instead of a timer per
//! socket.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use protocol::frame::RpcError;
use protocol::{Map, Value};
use tokio::sync::{oneshot, Notify};

use crate::hub::Identity;

/// Something for a device's socket task to send.
#[derive(Debug)]
pub enum Out {
    /// A complete frame, already serialized (PROTOCOL §1 output framing).
    Frame(String),
    /// A candidate `Shadow.Delta` push; the socket task applies the §4.3 rules.
    Delta {
        delta: Map<String, Value>,
        version: u64,
        timestamp: f64,
        desired_changed: bool,
    },
    Ping,
    /// Close the socket, with a reason for the log and the close frame.
    Close(String),
}

/// A request the cloud sent and whose reply is awaited.
#[derive(Debug)]
pub enum Pending {
    /// Someone awaits the reply (RPC proxy, `Sys.GetInfo`).
    Call(oneshot::Sender<Result<Value, CallError>>),
    /// A `Shadow.Delta` push: an object `result` is applied as `reported` (PROTOCOL §4.3).
    ShadowDelta,
}

/// Why a call to a device did not produce a result.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    Offline,
    Timeout,
    /// The device disconnected before replying.
    Disconnected,
    Device(RpcError),
}

/// One live device connection.
#[derive(Debug)]
pub struct DeviceConn {
    pub conn_id: u64,
    identity: RwLock<Identity>,
    outbox: Mutex<VecDeque<Out>>,
    wake: Notify,
    pending: Mutex<HashMap<u64, Pending>>,
    next_id: AtomicU64,
    missed_pongs: AtomicU32,
    /// `Sys.GetInfo` was answered on this connection (PROTOCOL §3).
    info_fresh: AtomicBool,
    /// `scheme://host[:port]` the device used to reach the server, for URLs it must fetch.
    origin: Option<Box<str>>,
    /// Most frames the outbox holds; past it the device is too slow and is dropped.
    outbox_limit: usize,
    /// The outbox overflowed: the session ends at its next wake-up.
    overflowed: AtomicBool,
}

impl DeviceConn {
    /// Records that the device's info was fetched on this connection.
    pub fn note_info(&self) {
        self.info_fresh.store(true, Ordering::Release);
    }

    /// Whether the stored device info comes from this connection.
    pub fn info_fresh(&self) -> bool {
        self.info_fresh.load(Ordering::Acquire)
    }

    /// How the device reached the server, e.g. `http://10.0.0.5:8009`.
    pub fn origin(&self) -> Option<&str> {
        self.origin.as_deref()
    }

    pub fn identity(&self) -> Identity {
        self.identity.read().clone()
    }

    pub fn set_identity(&self, identity: Identity) {
        *self.identity.write() = identity;
    }

    /// Queues `out` and wakes the socket task. A device whose outbox is full is not
    /// reading: nothing more is queued, and its session ends.
    pub fn push(&self, out: Out) {
        {
            let mut outbox = self.outbox.lock();
            if outbox.len() >= self.outbox_limit {
                outbox.clear();
                self.overflowed.store(true, Ordering::Release);
            } else {
                outbox.push_back(out);
            }
        }
        self.wake.notify_one();
    }

    /// Whether the outbox overflowed (see [`DeviceConn::push`]).
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }

    /// Takes everything queued so far.
    pub fn drain(&self) -> VecDeque<Out> {
        std::mem::take(&mut *self.outbox.lock())
    }

    /// Resolves when something was queued since the last drain.
    pub async fn woken(&self) {
        self.wake.notified().await
    }

    /// A fresh positive request id (PROTOCOL §2: cloud-to-device ids are positive integers).
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn expect_reply(&self, id: u64, pending: Pending) {
        self.pending.lock().insert(id, pending);
    }

    pub fn take_pending(&self, id: u64) -> Option<Pending> {
        let mut pending = self.pending.lock();
        let taken = pending.remove(&id);
        if pending.is_empty() && pending.capacity() > 0 {
            // An idle connection should own nothing: most hold one call at a time.
            *pending = HashMap::new();
        }
        taken
    }

    /// Fails every outstanding call; the socket is gone.
    pub fn fail_pending(&self) {
        let pending = std::mem::take(&mut *self.pending.lock());
        for (_, waiter) in pending {
            if let Pending::Call(tx) = waiter {
                let _ = tx.send(Err(CallError::Disconnected));
            }
        }
    }

    /// Counts a ping sent without an answer yet; returns the count before this one.
    pub fn note_ping(&self) -> u32 {
        self.missed_pongs.fetch_add(1, Ordering::Relaxed)
    }

    /// Any traffic from the device proves it is alive.
    pub fn note_alive(&self) {
        self.missed_pongs.store(0, Ordering::Relaxed);
    }
}

/// All online devices, by id.
#[derive(Debug)]
pub struct Registry {
    devices: RwLock<HashMap<Arc<str>, Arc<DeviceConn>>>,
    next_conn: AtomicU64,
}

impl Default for Registry {
    /// Connection numbers start at a random multiple of 2^32, so that numbers from two
    /// processes (two cluster nodes, or one node's runs) do not meet: an update that waits
    /// for a device to come back on a new connection compares numbers across nodes.
    fn default() -> Self {
        Registry {
            devices: RwLock::default(),
            next_conn: AtomicU64::new(u64::from(rand::random::<u32>()) << 32),
        }
    }
}

impl Registry {
    /// Registers a new connection for `identity`, returning it and the connection it replaced
    /// (a device that reconnects before its old socket was noticed gone).
    ///
    /// `announce` runs under the registry lock with the replaced connection, so that
    /// online/offline events of one device are emitted in the order its connections changed.
    pub fn insert(
        &self,
        identity: Identity,
        origin: Option<String>,
        outbox_limit: usize,
        announce: impl FnOnce(Option<&Arc<DeviceConn>>),
    ) -> (Arc<DeviceConn>, Option<Arc<DeviceConn>>) {
        let conn = Arc::new(DeviceConn {
            conn_id: self.next_conn.fetch_add(1, Ordering::Relaxed),
            identity: RwLock::new(identity.clone()),
            outbox: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            missed_pongs: AtomicU32::new(0),
            info_fresh: AtomicBool::new(false),
            origin: origin.map(String::into_boxed_str),
            outbox_limit: outbox_limit.max(1),
            overflowed: AtomicBool::new(false),
        });
        let mut devices = self.devices.write();
        let old = devices.insert(identity.id, conn.clone());
        announce(old.as_ref());
        (conn, old)
    }

    /// Removes the device's entry if it still belongs to connection `conn_id`; true if so.
    /// `announce` runs under the registry lock when the entry is removed (see [`Self::insert`]).
    pub fn remove(&self, id: &str, conn_id: u64, announce: impl FnOnce(&DeviceConn)) -> bool {
        let mut devices = self.devices.write();
        match devices.get(id) {
            Some(conn) if conn.conn_id == conn_id => {
                if let Some(conn) = devices.remove(id) {
                    announce(&conn);
                }
                true
            }
            _ => false,
        }
    }

    /// Removes the device's entry whatever its connection, announcing nothing: another
    /// cluster node holds the device now. The session, when it ends, finds itself replaced.
    pub fn take(&self, id: &str) -> Option<Arc<DeviceConn>> {
        self.devices.write().remove(id)
    }

    pub fn get(&self, id: &str) -> Option<Arc<DeviceConn>> {
        self.devices.read().get(id).cloned()
    }

    pub fn is_online(&self, id: &str) -> bool {
        self.devices.read().contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.devices.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The connections whose `conn_id % slices == slice`, for the liveness sweeper.
    pub fn slice(&self, slice: u64, slices: u64) -> Vec<Arc<DeviceConn>> {
        self.devices
            .read()
            .values()
            .filter(|conn| conn.conn_id % slices == slice)
            .cloned()
            .collect()
    }
}
