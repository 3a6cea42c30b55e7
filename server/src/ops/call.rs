//! A call to a device (PROTOCOL §2, §6): a request with a fresh numeric id queued on the
//! device's connection, `rpc.in.<method>` announced, and the reply (or the timeout, or the
//! disconnect) handed to whoever waits. The REST proxy, the per-device RPC socket, the
//! server's own `Sys.GetInfo` and the firmware engine all call devices through here.

use std::time::Duration;

use protocol::frame::Frame;
use protocol::notification::RPC_IN_PREFIX;
use protocol::Value;
use tokio::sync::oneshot;

use crate::registry::{CallError, DeviceConn, Out, Pending};
use crate::AppState;

/// Where a call's outcome arrives.
pub type Reply = oneshot::Receiver<Result<Value, CallError>>;

/// Queues a request to `conn`, announced as `rpc.in.<method>`; returns its id and where
/// its reply will arrive.
pub fn start(
    state: &AppState,
    conn: &DeviceConn,
    method: &str,
    params: Option<Value>,
) -> (u64, Reply) {
    state.hub.emit(
        &conn.identity(),
        &format!("{RPC_IN_PREFIX}{method}"),
        params.as_ref().unwrap_or(&Value::Null),
    );
    start_unlogged(conn, method, params)
}

/// [`start`] without the `rpc.in` event: for firmware chunks, whose every kilobyte would
/// otherwise be copied into notification.log (`ota.progress` tells the story instead,
/// PROTOCOL §10.6).
pub fn start_unlogged(conn: &DeviceConn, method: &str, params: Option<Value>) -> (u64, Reply) {
    let request_id = conn.next_id();
    let (tx, rx) = oneshot::channel();
    conn.expect_reply(request_id, Pending::Call(tx));
    conn.push(Out::Frame(
        Frame::request(request_id, method, params).to_json(),
    ));
    (request_id, rx)
}

/// Awaits the reply to a request queued with [`start`].
pub async fn finish(
    conn: &DeviceConn,
    request_id: u64,
    reply: Reply,
    timeout: Duration,
) -> Result<Value, CallError> {
    match tokio::time::timeout(timeout, reply).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(_)) => Err(CallError::Disconnected),
        Err(_) => {
            conn.take_pending(request_id);
            Err(CallError::Timeout)
        }
    }
}

/// Sends a request to online device `id` and awaits its reply (PROTOCOL §2, §6).
pub async fn run(
    state: &AppState,
    id: &str,
    method: &str,
    params: Option<Value>,
    timeout: Duration,
) -> Result<Value, CallError> {
    let Some(conn) = state.registry.get(id) else {
        // In a cluster, the node holding the device makes the call.
        return match &state.cluster {
            Some(cluster) => cluster.call(id, method, params, timeout).await,
            None => Err(CallError::Offline),
        };
    };
    let (request_id, reply) = start(state, &conn, method, params);
    finish(&conn, request_id, reply, timeout).await
}
