//! A device connects (PROTOCOL §3): it is registered as online (`online`, unless it only
//! replaced a connection not yet noticed gone), its current state goes out as `updated`,
//! `Sys.GetInfo` is asked first, then the pending delta is pushed (§4.3). In a cluster, a
//! device that held a session on another node takes it over; when that node does not answer,
//! the old session is announced ended (`offline`) before this one (`online`).

use std::sync::Arc;

use protocol::methods;
use protocol::notification::{OFFLINE, ONLINE};
use protocol::Value;

use crate::cluster::route::RouteError;
use crate::cluster::Previous;
use crate::hub::Identity;
use crate::ops::device_info;
use crate::registry::{DeviceConn, Out};
use crate::store::DeviceRecord;
use crate::{clock, AppState};

/// Registers the connection of `device` (as authenticated) and carries out the effects of
/// connecting; returns the connection for its session.
pub async fn run(
    state: &AppState,
    device: &DeviceRecord,
    origin: Option<String>,
) -> Arc<DeviceConn> {
    let _turn = state.sequencer.turn(&device.id).await;
    let identity = Identity::of(device);
    let limit = state.settings.device_outbox_limit;
    // In a cluster: the node that held the device until now, whose session this one ends.
    let elsewhere = state.cluster.as_ref().and_then(|c| c.owner(&device.id));
    let (conn, replaced) = state
        .registry
        .insert(identity.clone(), origin, limit, |replaced| {
            // A device that reconnected before its old socket was noticed gone never went
            // offline: no second `online`. The same holds when its old socket is on another
            // cluster node, which is told below to drop it quietly.
            if replaced.is_none() && elsewhere.is_none() {
                state.hub.emit(&identity, ONLINE, &Value::Null);
            }
        });
    let replaced_here = replaced.is_some();
    // Whether this session's `online` is still owed: the device was believed held on another
    // node, and that session turns out to have ended by itself.
    let owed = elsewhere.is_some() && !replaced_here;
    if let Some(old) = replaced {
        old.push(Out::Close("replaced by a newer connection".into()));
    }
    if let Some(cluster) = &state.cluster {
        // One session per device in the cluster: the node that held it drops its own.
        let previous = cluster.claim(&device.id, conn.conn_id).await;
        cluster.announce_presence(&device.id).await;
        let (state, identity, conn_id) = (state.clone(), identity.clone(), conn.conn_id);
        match previous {
            Previous::Node(previous) => {
                let request = crate::cluster::route::Request::Takeover {
                    device: device.id.clone(),
                };
                let cluster = cluster.clone();
                tokio::spawn(async move {
                    let answer = cluster
                        .request(&previous, &request, std::time::Duration::from_secs(2))
                        .await;
                    match answer {
                        Err(RouteError::NoNode | RouteError::Timeout) => {
                            previous_session_lost(&state, &identity, conn_id).await;
                        }
                        // Its session there ended by itself (its `offline` is out) between
                        // this node reading the owner and claiming the device.
                        Ok(reply) if owed && reply["held"] == false => {
                            wait_for_offline_from(&state, &identity.id, &previous).await;
                            let _turn = state.sequencer.turn(&identity.id).await;
                            if is_current(&state, &identity.id, conn_id) {
                                state.hub.emit(&identity, ONLINE, &Value::Null);
                            }
                        }
                        _ => {}
                    }
                });
            }
            // A dead node's session whose end nobody announced yet: this connection does.
            Previous::Orphan => {
                tokio::spawn(async move {
                    previous_session_lost(&state, &identity, conn_id).await;
                });
            }
            // The node this node believed held the device has let it go (its session ended
            // and its `offline` is out, but not yet seen here): this session is news. Its
            // `online` waits for that `offline` to arrive, so every stream has them in order.
            Previous::Nobody if owed => {
                if let Some(node) = &elsewhere {
                    wait_for_offline_from(&state, &identity.id, node).await;
                }
                state.hub.emit(&identity, ONLINE, &Value::Null);
            }
            Previous::Nobody => {}
        }
    }
    // The record read when the device authenticated may predate an update committed since.
    let device = match state.store.device(&device.id).await {
        Ok(Some(stored)) => stored,
        _ => device.clone(),
    };
    state.emit_updated(&device);
    tracing::debug!(device = %identity.id, "device connected");
    // Sys.GetInfo goes out first, before any delta (PROTOCOL §3 order).
    let (request_id, reply) = super::call::start(state, &conn, methods::SYS_GET_INFO, None);
    tokio::spawn(device_info::fetch(
        state.clone(),
        conn.clone(),
        request_id,
        reply,
    ));
    let delta = device.shadow.delta();
    if !delta.is_empty() {
        conn.push(Out::Delta {
            delta,
            version: device.shadow.version,
            timestamp: device.shadow.timestamp,
            desired_changed: false,
        });
    }
    conn
}

/// Longest wait for another node's `offline` before this node's `online` goes out anyway
/// (the stream carries it within milliseconds; a node in trouble must not hold a session up).
const OFFLINE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Waits (at most [`OFFLINE_WAIT`]) until this node has seen `node`'s `offline` for device
/// `id`, which clears `node` as the device's holder here.
async fn wait_for_offline_from(state: &AppState, id: &str, node: &str) {
    let Some(cluster) = &state.cluster else {
        return;
    };
    let wake = state.watch.subscribe(id);
    let _ = tokio::time::timeout(OFFLINE_WAIT, async {
        loop {
            // Armed before looking, so an event between the look and the wait still wakes.
            let woken = wake.notified();
            if cluster.owner(id).as_deref() != Some(node) {
                return;
            }
            woken.await;
        }
    })
    .await;
}

/// Whether connection `conn_id` is still device `id`'s session here.
fn is_current(state: &AppState, id: &str, conn_id: u64) -> bool {
    state
        .registry
        .get(id)
        .is_some_and(|conn| conn.conn_id == conn_id)
}

/// The node that held the device did not answer the takeover: it is gone (or stuck), and
/// the device's session there ended without a word. Announced as the survivors announce a
/// dead node's sessions (`offline`, `last_seen`), then this session's `online`, so a device
/// moving off a dead node gives the same events whether it reconnects before the node is
/// found dead or after.
async fn previous_session_lost(state: &AppState, identity: &Identity, conn_id: u64) {
    let _turn = state.sequencer.turn(&identity.id).await;
    // A session that has ended or been replaced since has had its own events.
    if !is_current(state, &identity.id, conn_id) {
        return;
    }
    state.hub.emit(identity, OFFLINE, &Value::Null);
    if let Err(e) = state.store.set_last_seen(&identity.id, clock::now()).await {
        tracing::warn!(device = %identity.id, error = %e, "cannot record last_seen");
    }
    state.hub.emit(identity, ONLINE, &Value::Null);
    if let Ok(Some(device)) = state.store.device(&identity.id).await {
        state.emit_updated(&device);
    }
}
