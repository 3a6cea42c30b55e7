//! Cluster mode, black box: several herd-server nodes on one PostgreSQL store and one NATS
//! server (JetStream), each with its own data directory. A device may connect to any node,
//! and every node serves it as if it were its own: REST and RPC (PROTOCOL §6), shadow
//! deltas (§4.3), notify streams (§5) and one cluster-wide notification log (§7). A node
//! that dies (SIGKILL) loses no acknowledged write; the others mark its devices offline
//! within the dead-after bound and take them over when they reconnect.
//!
//! The nodes come from herd-testkit's [`TestCluster`] (heartbeat 200 ms, dead after
//! 1500 ms). Without nats-server or PostgreSQL installed the tests are skipped, except
//! under CI, where they fail.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herd_testkit::cluster::{node_id, ProcessNode, TestCluster, DEAD_AFTER_MS, HEARTBEAT_MS};
use herd_testkit::*;
use protocol::methods::{SHADOW_DELTA, SHADOW_UPDATE, SYS_GET_INFO};
use protocol::notification::{OFFLINE, ONLINE, RPC_OUT_PREFIX, UPDATED};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_herd-server");

/// How long after a node's death the others may take to mark its devices offline: the
/// dead-after bound, one missed heartbeat of slack, and room for a loaded CI machine.
const OFFLINE_BOUND: Duration = Duration::from_millis(DEAD_AFTER_MS + HEARTBEAT_MS + 3_000);

// ---------------------------------------------------------------------------------------
// What `GET /healthz` says about the cluster. Every assumption about its shape is here.

/// One node as a cluster node's `/healthz` lists it.
#[derive(Debug, Clone, PartialEq)]
struct NodeHealth {
    id: String,
    devices: u64,
    alive: bool,
}

/// The `cluster` object of `/healthz`: this node's id, every node it knows of, and whether
/// its NATS connection and store are healthy.
#[derive(Debug)]
struct ClusterHealth {
    node: String,
    nodes: Vec<NodeHealth>,
    nats_ok: bool,
    store_ok: bool,
    /// Messages on the event stream that were not a node's event.
    stream_rejected: u64,
    /// Events the stream dropped before this node read them.
    log_gap_events: u64,
}

impl ClusterHealth {
    fn parse(health: &Value) -> Self {
        let cluster = &health["cluster"];
        assert!(
            cluster.is_object(),
            "no cluster object in /healthz: {health}"
        );
        let nodes = cluster["nodes"]
            .as_array()
            .unwrap_or_else(|| panic!("no cluster.nodes list in /healthz: {health}"))
            .iter()
            .map(|node| NodeHealth {
                id: node["id"].as_str().expect("a node id").to_string(),
                devices: node["devices"].as_u64().expect("a device count"),
                alive: node["alive"].as_bool().expect("alive true or false"),
            })
            .collect();
        ClusterHealth {
            node: cluster["node"]
                .as_str()
                .expect("this node's id")
                .to_string(),
            nodes,
            nats_ok: healthy(&cluster["nats"]),
            store_ok: cluster["store_ok"] == true && cluster["stream_ok"] == true,
            stream_rejected: cluster["stream_rejected"]
                .as_u64()
                .expect("stream_rejected"),
            log_gap_events: cluster["log_gap_events"].as_u64().expect("log_gap_events"),
        }
    }

    fn get(&self, id: &str) -> Option<&NodeHealth> {
        self.nodes.iter().find(|node| node.id == id)
    }
}

/// A component's health, written as a word or as an object with a `status` (or a
/// `connected` flag).
fn healthy(value: &Value) -> bool {
    let word = |v: &Value| matches!(v.as_str(), Some("ok" | "connected" | "running"));
    word(value) || word(&value["status"]) || value["connected"] == true
}

/// `GET /healthz` of the server at `url` (`http://ADDR`; the probe is outside `/api/v2`),
/// parsed; it must answer 200.
async fn cluster_health(http: &reqwest::Client, url: &str) -> ClusterHealth {
    let resp = http
        .get(format!("{url}/healthz"))
        .send()
        .await
        .expect("healthz answers");
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.expect("healthz sends JSON");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok", "{body}");
    ClusterHealth::parse(&body)
}

/// Polls `/healthz` at `url` until `done` holds for its cluster object; returns that.
async fn wait_for_cluster(
    http: &reqwest::Client,
    url: &str,
    what: &str,
    done: impl Fn(&ClusterHealth) -> bool,
) -> ClusterHealth {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let health = cluster_health(http, url).await;
        if done(&health) {
            return health;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/healthz at {url} never showed {what}: {health:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Helpers.

/// Fails if any line appears twice (the same `ts`, `id`, `name` and `data`).
fn assert_no_duplicates(log: &[Value]) {
    let mut seen = std::collections::HashSet::new();
    for line in log {
        assert!(
            seen.insert(line.to_string()),
            "the log holds this line twice: {line}"
        );
    }
}

/// Where two logs part: their lengths and the first line that differs.
fn log_difference(a: &[Value], b: &[Value]) -> String {
    let first = a.iter().zip(b).position(|(x, y)| x != y);
    let line = |log: &[Value], i: usize| log.get(i).map_or("(none)".into(), Value::to_string);
    match first.or((a.len() != b.len()).then_some(a.len().min(b.len()))) {
        Some(i) => format!(
            "{} and {} lines; line {i} is\n  {}\nand\n  {}",
            a.len(),
            b.len(),
            line(a, i),
            line(b, i)
        ),
        None => format!("the same {} lines", a.len()),
    }
}

/// The shadow versions of the `updated` events of device `id` in `events`, in order.
fn updated_versions(events: &[Value], id: &str) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e["id"] == id && e["name"] == UPDATED)
        .map(|e| {
            e["data"]["shadow"]["version"]
                .as_u64()
                .unwrap_or_else(|| panic!("updated without a shadow version: {e}"))
        })
        .collect()
}

fn assert_rising(versions: &[u64], what: &str) {
    assert!(
        versions.windows(2).all(|pair| pair[0] <= pair[1]),
        "{what}: shadow versions went back: {versions:?}"
    );
}

/// Reads a notify stream into a channel from a task of its own, so the server never sees a
/// slow consumer while the test does other things (PROTOCOL §5 would drop events).
fn collect(mut ws: Ws) -> mpsc::UnboundedReceiver<Value> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Text(text) = message {
                let event: Value = serde_json::from_str(&text).expect("notify sends JSON");
                if tx.send(event).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// Takes events from `events` until each of `devices` had one named `name`, in any order.
async fn every_event(
    events: &mut mpsc::UnboundedReceiver<Value>,
    devices: &[(String, String)],
    name: &str,
) {
    let mut waiting: std::collections::HashSet<&str> =
        devices.iter().map(|(id, _)| id.as_str()).collect();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !waiting.is_empty() {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("no {name} for {waiting:?} within {WAIT:?}"))
            .expect("the notify stream ended");
        if event["name"] == name {
            if let Some(id) = event["id"].as_str() {
                waiting.remove(id);
            }
        }
    }
}

/// Waits until `node`'s health says one device is on node `on`.
async fn wait_device_on(node: &TestServer, on: &str) {
    wait_for_cluster(&node.http, &node.url(), "the device on its node", |h| {
        h.get(on).is_some_and(|n| n.devices == 1)
    })
    .await;
}

/// Takes events from `events` until one for device `id` named `name`; returns it.
async fn next_event(events: &mut mpsc::UnboundedReceiver<Value>, id: &str, name: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("no {name} for {id} within {WAIT:?}"))
            .expect("the notify stream ended");
        if event["id"] == id && event["name"] == name {
            return event;
        }
    }
}

/// Waits until the device's old socket is closed by the server (a close frame, the end of
/// the stream or a reset), answering nothing.
async fn wait_closed(ws: &mut Ws) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("the older session was not closed within {WAIT:?}"),
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return,
            Ok(Some(Ok(_))) => continue,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The tests.

/// PROTOCOL §6: an RPC through node B reaches the device on node A and returns its result
/// verbatim; a device error comes back exactly as node A, where the device is, answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_on_one_node_reaches_a_device_on_another() {
    let Some(cluster) = TestCluster::start(2).await else {
        return;
    };
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let (id, token) = a.create_device("lamp").await;
    // Created on A, known on B: one store.
    let (status, body) = b.call("GET", &format!("/devices/{id}"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["online"], false, "{body}");

    let device = SimDevice::connect(&a.ws_base, &token).await;
    b.wait_online(&id, true).await;

    let params = json!({"text": "hello", "n": [1, 2, 3]});
    let (status, body) = b
        .call(
            "POST",
            &format!("/devices/{id}/rpc/Echo"),
            Some(params.clone()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, params);
    assert_eq!(
        b.rpc(&id, "Echo", json!({"x": 1})).await.unwrap(),
        json!({"x": 1})
    );

    // The device's error and its own "no handler", as the device's node answers them.
    for method in ["Fail", "No.Such"] {
        let path = format!("/devices/{id}/rpc/{method}");
        let on_a = a.call("POST", &path, Some(json!({}))).await;
        let on_b = b.call("POST", &path, Some(json!({}))).await;
        assert!(on_a.0 >= 400, "{method} on A: {on_a:?}");
        assert_eq!(on_b, on_a, "{method}: B answers otherwise than A");
    }
    let (status, body) = b
        .call("POST", &format!("/devices/{id}/rpc/Fail"), Some(json!({})))
        .await;
    // The device's own error, as on one server (PROTOCOL §6).
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["device"]["code"], -1, "{body}");
    assert_eq!(body["error"]["device"]["message"], "bad pin", "{body}");

    // Gone from A: offline everywhere, and B's proxy says so (503).
    device.disconnect().await;
    b.wait_online(&id, false).await;
    let (status, body) = b
        .call("POST", &format!("/devices/{id}/rpc/Echo"), Some(json!({})))
        .await;
    assert_eq!(status, 503, "{body}");
    cluster.shutdown().await;
}

/// PROTOCOL §4.3: a desired-state update made on node B is pushed as `Shadow.Delta` to the
/// device connected to node A; the device's report through A clears the delta seen on B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_update_on_one_node_sends_the_delta_to_a_device_on_another() {
    let Some(cluster) = TestCluster::start(2).await else {
        return;
    };
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let (id, token) = a.create_device("lamp").await;
    let mut device = a.device(&token).await;
    b.wait_online(&id, true).await;

    let (status, shadow) = b
        .call(
            "POST",
            &format!("/devices/{id}/shadow"),
            Some(json!({"state": {"desired": {"on": true, "level": 7}}})),
        )
        .await;
    assert_eq!(status, 200, "{shadow}");
    let version = shadow["version"].as_u64().expect("a version");

    let delta = device.expect_request(SHADOW_DELTA).await;
    assert_eq!(
        delta["params"]["state"],
        json!({"on": true, "level": 7}),
        "{delta}"
    );
    assert_eq!(delta["params"]["version"], version, "{delta}");
    device
        .send(json!({"id": delta["id"], "result": null}))
        .await;

    let reply = device.report(json!({"on": true, "level": 7})).await;
    assert!(reply.get("error").is_none(), "{reply}");
    let (status, shadow) = b.call("GET", &format!("/devices/{id}/shadow"), None).await;
    assert_eq!(status, 200, "{shadow}");
    assert_eq!(shadow["state"]["reported"], json!({"on": true, "level": 7}));
    assert_eq!(shadow["state"]["delta"], json!({}), "{shadow}");
    assert!(shadow["version"].as_u64() > Some(version), "{shadow}");
    cluster.shutdown().await;
}

/// PROTOCOL §5: a notify consumer on node B sees what a device on node A does (`online`,
/// its `rpc.out.*` requests, `updated` for its own and REST shadow writes), in order per
/// device: the shadow versions of `updated` never go back, and every accepted write's
/// version shows up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_on_one_node_sees_the_events_of_a_device_on_another_in_order() {
    let Some(cluster) = TestCluster::start(2).await else {
        return;
    };
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let (id, token) = a.create_device("lamp").await;
    let mut events = collect(b.notify(&b.admin_key).await);

    let mut device = a.device(&token).await;
    let online = next_event(&mut events, &id, ONLINE).await;
    assert_eq!(online["data"], Value::Null, "{online}");

    const REPORTS: u64 = 20;
    let mut accepted = Vec::new();
    for n in 0..REPORTS {
        let reply = device.report(json!({"n": n})).await;
        accepted.push(reply["result"]["version"].as_u64().expect("a version"));
        if n == REPORTS / 2 {
            // A write through the REST API of A, amid the device's own.
            let (status, shadow) = a
                .call(
                    "POST",
                    &format!("/devices/{id}/shadow"),
                    Some(json!({"state": {"desired": {"n": REPORTS}}})),
                )
                .await;
            assert_eq!(status, 200, "{shadow}");
            accepted.push(shadow["version"].as_u64().expect("a version"));
        }
    }
    // A device-to-cloud request the server has no handler for becomes rpc.out.<method>.
    device
        .send(json!({"method": "Custom.Event", "params": {"k": "v"}}))
        .await;

    let last = *accepted.iter().max().expect("writes were accepted");
    let mut seen = Vec::new();
    loop {
        let event = next_event(&mut events, &id, UPDATED).await;
        let version = event["data"]["shadow"]["version"]
            .as_u64()
            .expect("a version");
        seen.push(event);
        if version >= last {
            break;
        }
    }
    let versions = updated_versions(&seen, &id);
    assert_rising(&versions, "notify on B");
    for version in &accepted {
        assert!(
            versions.contains(version),
            "no updated event for version {version}: {versions:?}"
        );
    }
    let custom = next_event(&mut events, &id, &format!("{RPC_OUT_PREFIX}Custom.Event")).await;
    assert_eq!(custom["data"], json!({"k": "v"}), "{custom}");
    cluster.shutdown().await;
}

/// PROTOCOL §7 in a cluster: one logical log. `POST /logs` on every node serves the same
/// lines in the same order, each node's events among them, no line twice; an offset means
/// the same line on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_serves_the_same_log_with_each_event_once() {
    let Some(cluster) = TestCluster::start(2).await else {
        return;
    };
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let (on_a, token_a) = a.create_device("on-a").await;
    let (on_b, token_b) = b.create_device("on-b").await;
    let mut device_a = a.device(&token_a).await;
    let mut device_b = b.device(&token_b).await;
    let mut last = [0, 0];
    for n in 0..5 {
        let reply = device_a.report(json!({"n": n})).await;
        last[0] = reply["result"]["version"].as_u64().expect("a version");
        let reply = device_b.report(json!({"n": n})).await;
        last[1] = reply["result"]["version"].as_u64().expect("a version");
    }

    // The log may reach a node a moment after the write was acknowledged; wait until both
    // serve every node's last write and agree.
    let deadline = tokio::time::Instant::now() + WAIT;
    let (log_a, log_b) = loop {
        let log_a = whole_log(&a.client).await;
        let log_b = whole_log(&b.client).await;
        let complete = |log: &[Value]| {
            updated_versions(log, &on_a).contains(&last[0])
                && updated_versions(log, &on_b).contains(&last[1])
        };
        if complete(&log_a) && complete(&log_b) && log_a == log_b {
            break (log_a, log_b);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the nodes' logs never held both devices' last writes (A: {}, B: {}) and agreed: {}",
            complete(&log_a),
            complete(&log_b),
            log_difference(&log_a, &log_b)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(log_a, log_b);
    assert_no_duplicates(&log_a);
    for (id, last) in [(&on_a, last[0]), (&on_b, last[1])] {
        for name in [ONLINE, UPDATED, &format!("{RPC_OUT_PREFIX}{SHADOW_UPDATE}")] {
            assert!(
                log_a.iter().any(|l| l["id"] == *id && l["name"] == name),
                "no {name} of {id} in the log"
            );
        }
        let versions = updated_versions(&log_a, id);
        assert_rising(&versions, "the log");
        // Every accepted write of the device, in order.
        let mut writes: Vec<u64> = versions.iter().copied().filter(|v| *v > 0).collect();
        writes.dedup();
        assert_eq!(writes, (1..=last).collect::<Vec<_>>(), "{id}: {versions:?}");
    }
    // Offsets are cluster-wide: the same page from either node.
    let page = json!({"start": 2, "limit": 3});
    let (status, page_a) = a.call("POST", "/logs", Some(page.clone())).await;
    assert_eq!(status, 200, "{page_a}");
    let (_, page_b) = b.call("POST", "/logs", Some(page)).await;
    assert_eq!(page_a, page_b);
    assert_eq!(page_a.as_array().map(Vec::as_slice), Some(&log_a[2..5]));
    cluster.shutdown().await;
}

/// The same device connecting to node A and then to node B: the newer session wins. A
/// closes the older socket, the device stays online (no `offline` is emitted), and RPCs
/// through either node reach the newer session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newer_session_wins_when_a_device_connects_to_another_node() {
    let Some(cluster) = TestCluster::start(2).await else {
        return;
    };
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let (id, token) = a.create_device("lamp").await;
    let mut events = collect(a.notify(&a.admin_key).await);
    let mut older = a.device(&token).await;
    next_event(&mut events, &id, ONLINE).await;

    let mut newer = b.device(&token).await;
    wait_closed(&mut older.ws).await;

    // A marker after the takeover: everything the takeover caused comes before it.
    let reply = newer.report(json!({"marker": true})).await;
    let marker = reply["result"]["version"].as_u64().expect("a version");
    loop {
        let event = tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("events keep coming")
            .expect("the notify stream goes on");
        if event["id"] != id {
            continue;
        }
        assert_ne!(event["name"], OFFLINE, "the device went offline: {event}");
        if event["name"] == UPDATED && event["data"]["shadow"]["version"] == marker {
            break;
        }
    }
    a.wait_online(&id, true).await;
    b.wait_online(&id, true).await;

    // Through A (where the older session was) and through B, the newer session answers.
    for node in [a, b] {
        let path = format!("/devices/{id}/rpc/Echo");
        let ((), (status, body)) = tokio::join!(
            async {
                let request = newer.expect_request("Echo").await;
                newer
                    .send(json!({"id": request["id"], "result": request["params"]}))
                    .await;
            },
            node.call("POST", &path, Some(json!({"via": node.url()})))
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, json!({"via": node.url()}));
    }
    cluster.shutdown().await;
}

/// A device that leaves node A and at once connects to node B, before B has seen A's
/// `offline`: B still announces it `online`, after the `offline`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_hopping_between_nodes_goes_offline_then_online() {
    let Some(cluster) = TestCluster::start(2).await else {
        return;
    };
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let (id, token) = a.create_device("lamp").await;
    let mut events = collect(b.notify(&b.admin_key).await);
    for round in 0..5 {
        let device = a.device(&token).await;
        next_event(&mut events, &id, ONLINE).await;
        b.wait_online(&id, true).await;
        drop(device);
        let device = b.device(&token).await;
        next_event(&mut events, &id, OFFLINE).await;
        let online = next_event(&mut events, &id, ONLINE).await;
        assert_eq!(online["id"], id.as_str(), "round {round}");
        drop(device);
        next_event(&mut events, &id, OFFLINE).await;
    }
    cluster.shutdown().await;
}

/// A device whose node was killed reconnects to another node before the node is found
/// dead: the takeover finds nobody to hand over the session, so the old session is
/// announced ended (`offline`) before the new one (`online`), as when the survivors find
/// the node dead first, and the reaper that comes later announces nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_back_before_its_node_is_found_dead_still_goes_offline_then_online() {
    let Some(mut cluster) = TestCluster::start(1).await else {
        return;
    };
    let mut doomed: ProcessNode = cluster.spawn_process(BIN);
    let survivor = &cluster.nodes[0];
    let (id, token) = survivor.create_device("lamp").await;
    let mut events = collect(survivor.notify(&survivor.admin_key).await);
    let info = json!({"app": "test", "fw_version": "1.0", "arch": "x86_64"});
    let device = Device::connect(&doomed.ws_base, &token, info).await;
    next_event(&mut events, &id, ONLINE).await;
    wait_device_on(survivor, &doomed.node_id).await;

    doomed.kill();
    drop(device);
    // Straight back, well within dead-after.
    let mut device = survivor.device(&token).await;
    next_event(&mut events, &id, OFFLINE).await;
    next_event(&mut events, &id, ONLINE).await;
    // Past the point where the dead node is found dead: no second `offline`.
    wait_for_cluster(
        &survivor.http,
        &survivor.url(),
        "the doomed node found dead",
        |h| h.get(&doomed.node_id).is_none_or(|n| !n.alive),
    )
    .await;
    let marker = device.report(json!({"marker": true})).await["result"]["version"]
        .as_u64()
        .expect("a version");
    loop {
        let event = tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("events keep coming")
            .expect("the notify stream goes on");
        if event["id"] != id.as_str() {
            continue;
        }
        assert_ne!(event["name"], OFFLINE, "a second offline: {event}");
        if event["name"] == UPDATED && event["data"]["shadow"]["version"] == marker {
            assert_eq!(event["data"]["online"], true);
            break;
        }
    }
    cluster.shutdown().await;
}

/// The (n, version) of every write of one device that the server acknowledged.
type Acked = Arc<Mutex<Vec<(u64, u64)>>>;

/// A device's burst of shadow updates through a process node: answers `Sys.GetInfo`,
/// sends `{"n": 0}`, `{"n": 1}`, … each after the previous one was acknowledged, and
/// records every acknowledged (n, version), until the socket ends or after `CAP` updates.
async fn update_burst(ws_base: String, token: String, acked: Acked) {
    const CAP: u64 = 400;
    let Ok((mut ws, _)) =
        tokio_tungstenite::connect_async(format!("{ws_base}/rpc?access_token={token}")).await
    else {
        return;
    };
    for n in 0..CAP {
        let frame = json!({"id": n + 1, "method": SHADOW_UPDATE,
            "params": {"state": {"reported": {"n": n}}}});
        if ws.send(Message::text(frame.to_string())).await.is_err() {
            return;
        }
        loop {
            let Some(Ok(message)) = ws.next().await else {
                return;
            };
            let Message::Text(text) = message else {
                continue;
            };
            let frame: Value = serde_json::from_str(&text).expect("the server sends JSON");
            if frame["method"] == SYS_GET_INFO {
                let info = json!({"app": "test", "fw_version": "1.0", "arch": "x86_64"});
                let reply = json!({"id": frame["id"], "result": info});
                if ws.send(Message::text(reply.to_string())).await.is_err() {
                    return;
                }
            } else if frame["id"] == n + 1 && frame.get("method").is_none() {
                let version = frame["result"]["version"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("update {n} refused: {frame}"));
                acked.lock().unwrap().push((n, version));
                break;
            }
        }
    }
    // Stay connected until the node dies.
    while let Some(Ok(_)) = ws.next().await {}
}

/// A node killed with SIGKILL: within the dead-after bound the surviving node emits
/// `offline` for the devices that were on it; `/healthz` shows it dead; every shadow write
/// it acknowledged is in the store; a device that reconnects to the surviving node is
/// `online` again; the log holds each acknowledged write's `updated` event and no line twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_no_acknowledged_write_and_its_devices_move() {
    let Some(mut cluster) = TestCluster::start(1).await else {
        return;
    };
    let mut doomed: ProcessNode = cluster.spawn_process(BIN);
    let survivor = &cluster.nodes[0];
    let survivor_id = node_id(0);
    let doomed_id = doomed.node_id.clone();
    let http = http_client();

    const DEVICES: usize = 3;
    let mut devices = Vec::new();
    for i in 0..DEVICES {
        devices.push(survivor.create_device(&format!("d{i}")).await);
    }
    let mut events = collect(survivor.notify(&survivor.admin_key).await);
    let acked: Vec<Acked> = (0..DEVICES).map(|_| Arc::default()).collect();
    let bursts: Vec<_> = devices
        .iter()
        .zip(&acked)
        .map(|((_, token), acked)| {
            tokio::spawn(update_burst(
                doomed.ws_base.clone(),
                token.clone(),
                acked.clone(),
            ))
        })
        .collect();
    every_event(&mut events, &devices, ONLINE).await;
    wait_for_cluster(
        &http,
        &survivor.url(),
        "the doomed node's devices",
        |health| {
            health
                .get(&doomed_id)
                .is_some_and(|node| node.alive && node.devices == DEVICES as u64)
        },
    )
    .await;

    // Kill amid the bursts, once every device has had some writes acknowledged.
    let deadline = tokio::time::Instant::now() + WAIT;
    while acked.iter().any(|a| a.lock().unwrap().len() < 10) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "updates through the process node are not acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    doomed.kill();
    let killed = tokio::time::Instant::now();
    for burst in bursts {
        burst.await.expect("the burst task ends with the socket");
    }
    let acked: Vec<Vec<(u64, u64)>> = acked.iter().map(|a| a.lock().unwrap().clone()).collect();

    every_event(&mut events, &devices, OFFLINE).await;
    let took = killed.elapsed();
    assert!(
        took <= OFFLINE_BOUND,
        "offline after {took:?}, beyond {OFFLINE_BOUND:?} (dead after {DEAD_AFTER_MS} ms)"
    );
    let health = wait_for_cluster(&http, &survivor.url(), "the node dead", |health| {
        health.get(&doomed_id).is_none_or(|node| !node.alive)
    })
    .await;
    assert_eq!(health.node, survivor_id);
    assert!(health.nats_ok && health.store_ok, "{health:?}");
    assert!(
        health.get(&survivor_id).is_some_and(|node| node.alive),
        "{health:?}"
    );

    // Every acknowledged write is in the store: the last acknowledged n, or the one after
    // it when that was written but its reply was cut off by the kill.
    for ((id, _), acked) in devices.iter().zip(&acked) {
        let &(n, version) = acked.last().expect("acknowledged writes");
        let (status, shadow) = survivor
            .call("GET", &format!("/devices/{id}/shadow"), None)
            .await;
        assert_eq!(status, 200, "{shadow}");
        let stored_n = shadow["state"]["reported"]["n"].as_u64().expect("n stored");
        let stored_version = shadow["version"].as_u64().expect("a version");
        assert!(
            (n..=n + 1).contains(&stored_n) && (version..=version + 1).contains(&stored_version),
            "{id}: acknowledged n={n} version={version}, stored {shadow}"
        );
    }

    // The devices come back through the surviving node.
    let mut back = Vec::new();
    for (id, token) in &devices {
        back.push(survivor.device(token).await);
        next_event(&mut events, id, ONLINE).await;
        survivor.wait_online(id, true).await;
    }

    // The log: no line twice, and each acknowledged write's `updated` event, in order. It
    // may reach the log a moment after the notify streams: wait for the last `online`s.
    let sessions = |log: &[Value], id: &str| -> Vec<String> {
        log.iter()
            .filter(|l| l["id"] == id)
            .filter_map(|l| l["name"].as_str())
            .filter(|name| [ONLINE, OFFLINE].contains(name))
            .map(str::to_string)
            .collect()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    let log = loop {
        let log = whole_log(&survivor.client).await;
        if devices.iter().all(|(id, _)| sessions(&log, id).len() >= 3) {
            break log;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the log never showed the devices back: {:?}",
            devices
                .iter()
                .map(|(id, _)| (id, sessions(&log, id)))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_no_duplicates(&log);
    for ((id, _), acked) in devices.iter().zip(&acked) {
        let versions = updated_versions(&log, id);
        assert_rising(&versions, "the log");
        for (n, version) in acked {
            assert!(
                versions.contains(version),
                "{id}: no updated event for acknowledged write n={n} version={version}"
            );
        }
        assert_eq!(
            sessions(&log, id),
            [ONLINE, OFFLINE, ONLINE],
            "{id}: sessions in the log"
        );
    }
    drop(back);
    cluster.shutdown().await;
}

/// `GET /healthz` on a cluster node: its own id, every node alive with its device count,
/// NATS and the store healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_shows_the_cluster() {
    let Some(cluster) = TestCluster::start(2).await else {
        return;
    };
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let (_, token) = b.create_device("lamp").await;
    let _device = SimDevice::connect(&b.ws_base, &token).await;
    for (index, node) in [a, b].into_iter().enumerate() {
        let health = wait_for_cluster(&node.http, &node.url(), "both nodes", |health| {
            health.nodes.len() == 2
                && health.nodes.iter().all(|n| n.alive)
                && health.get("node-b").is_some_and(|n| n.devices == 1)
        })
        .await;
        assert_eq!(health.node, node_id(index), "{health:?}");
        assert_eq!(
            health.get("node-a").map(|n| n.devices),
            Some(0),
            "{health:?}"
        );
        assert!(health.nats_ok, "{health:?}");
        assert!(health.store_ok, "{health:?}");
    }
    cluster.shutdown().await;
}

/// Requests on a node's subject that are not requests, or name what the node does not hold,
/// get an error reply and change nothing; garbage on the event stream stays out of every
/// node's log; the node goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_between_nodes_get_errors_and_change_nothing() {
    let Some(cluster) = TestCluster::start(2).await else {
        return;
    };
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let nats = async_nats::connect(cluster.nats.url())
        .await
        .expect("connect to the cluster's NATS");
    let subject = format!("herd.node.{}", node_id(0));
    let garbage: [&[u8]; 6] = [
        b"not json",
        b"{}",
        b"{\"op\":\"explode\"}",
        b"{\"op\":\"call\"}",
        b"[1,2,3]",
        &[0xff, 0xfe, 0x00],
    ];
    for payload in garbage {
        let reply = nats
            .request(subject.clone(), payload.to_vec().into())
            .await
            .expect("the node answers");
        let body: Value = serde_json::from_slice(&reply.payload).expect("a JSON reply");
        assert_eq!(body["error"]["status"], 400, "{body}");
    }
    // Well-formed, about a device the node does not hold.
    for request in [
        json!({"op": "call", "device": "nope", "method": "Echo", "params": null, "timeout_ms": 100}),
        json!({"op": "observe", "device": "nope"}),
        json!({"op": "shadow_update", "device": "nope", "update": {"state": {"desired": {"on": true}}}}),
        json!({"op": "transfer", "device": "nope", "transfer": {"firmware": "0".repeat(64), "commit_timeout_s": 1, "rollout": null, "delivery": "push"}}),
    ] {
        let reply = nats
            .request(subject.clone(), request.to_string().into())
            .await
            .expect("the node answers");
        let body: Value = serde_json::from_slice(&reply.payload).expect("a JSON reply");
        assert!(
            body["error"]["status"].as_u64().is_some_and(|s| s >= 400),
            "{request}: {body}"
        );
    }
    // Garbage where events and presence travel.
    let js = async_nats::jetstream::new(nats.clone());
    for payload in [
        "garbage",
        "{\"ts\":1}",
        "{\"id\":\"x\",\"name\":\"online\"}",
        "{\"ts\":1,\"id\":\"x\",\"name\":\"online\"}\n{}",
    ] {
        js.publish("herd.events.node-x", payload.into())
            .await
            .expect("published")
            .await
            .expect("stored");
    }
    nats.publish("herd.presence.node-x", vec![0xff].into())
        .await
        .unwrap();
    nats.flush().await.unwrap();
    // The nodes go on: a device, a write and its event reach both logs, and nothing else.
    let (id, token) = a.create_device("after").await;
    let mut device = b.device(&token).await;
    device.report(json!({"on": true})).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let (log_a, log_b) = loop {
        let (log_a, log_b) = (whole_log(&a.client).await, whole_log(&b.client).await);
        let has = |log: &[Value]| {
            log.iter().any(|l| {
                l["id"] == id
                    && l["name"] == UPDATED
                    && l["data"]["shadow"]["state"]["reported"]["on"] == true
            })
        };
        if (has(&log_a) && has(&log_b)) || tokio::time::Instant::now() > deadline {
            break (log_a, log_b);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(log_a, log_b, "both nodes serve the same log");
    assert!(
        log_a
            .iter()
            .all(|l| l["ts"].is_number() && l["name"].is_string() && l["id"] != "x"),
        "only node events in the log: {log_a:?}"
    );
    for node in [a, b] {
        let health = wait_for_cluster(&node.http, &node.url(), "healthy", |health| {
            health.nats_ok && health.store_ok
        })
        .await;
        assert_eq!(health.stream_rejected, 4, "{health:?}");
    }
    cluster.shutdown().await;
}

/// A node away longer than the event stream keeps events (here a stream of 16 KiB) finds a
/// gap when it comes back: its log lacks what the stream dropped, and `/healthz` says how
/// many events, instead of the log silently missing them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_after_the_stream_dropped_events_reports_the_gap() {
    let Some(mut cluster) =
        TestCluster::start_with(2, |_, settings| settings.stream_max_bytes = 16 * 1024).await
    else {
        return;
    };
    let (id, _) = cluster.nodes[0].create_device("chatty").await;
    cluster.nodes[1].stop().await;
    for n in 0..100 {
        let (status, body) = cluster.nodes[0]
            .call(
                "POST",
                &format!("/devices/{id}/shadow"),
                Some(json!({"state": {"desired": {"n": n, "pad": "x".repeat(200)}}})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    cluster.nodes[1].start_again().await;
    let b = &cluster.nodes[1];
    let gap = wait_for_cluster(&b.http, &b.url(), "a gap reported", |health| {
        health.log_gap_events > 0
    })
    .await
    .log_gap_events;
    // What the stream still had arrived: the last write is in B's log.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let log = whole_log(&b.client).await;
        if log
            .iter()
            .any(|l| l["name"] == UPDATED && l["data"]["shadow"]["state"]["desired"]["n"] == 99)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "B's log never got the last write"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gap < 200, "at most every event was missed: {gap}");
    cluster.shutdown().await;
}

/// NATS killed and started again: the nodes say `failing` while it is away, a write made
/// meanwhile is acknowledged and kept, and afterwards calls cross nodes again and both logs
/// hold that write's event, with no line twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_recovers_when_nats_comes_back() {
    let Some(mut cluster) = TestCluster::start(2).await else {
        return;
    };
    let (id, token) = cluster.nodes[0].create_device("lamp").await;
    let _device = SimDevice::connect(&cluster.nodes[0].ws_base, &token).await;
    cluster.nodes[1].wait_online(&id, true).await;

    cluster.nats.kill();
    for node in &cluster.nodes {
        node.wait_for_health(503).await;
    }
    let (status, body) = cluster.nodes[0]
        .call(
            "POST",
            &format!("/devices/{id}/shadow"),
            Some(json!({"state": {"desired": {"while_away": true}}})),
        )
        .await;
    assert_eq!(status, 200, "a write on the device's node goes on: {body}");

    cluster.nats.start_again().expect("NATS starts again");
    for node in &cluster.nodes {
        node.wait_for_health(200).await;
    }
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = b
            .call(
                "POST",
                &format!("/devices/{id}/rpc/Echo"),
                Some(json!({"k": 1})),
            )
            .await;
        if status == 200 {
            assert_eq!(body, json!({"k": 1}));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no RPC across nodes: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let written = |log: &[Value]| {
        log.iter().any(|l| {
            l["name"] == UPDATED && l["data"]["shadow"]["state"]["desired"]["while_away"] == true
        })
    };
    loop {
        let (log_a, log_b) = (whole_log(&a.client).await, whole_log(&b.client).await);
        if written(&log_a) && log_a == log_b {
            // Events published again after the outage are stored once (their message ids).
            let mut lines: Vec<String> = log_a.iter().map(Value::to_string).collect();
            let all = lines.len();
            lines.sort();
            lines.dedup();
            assert_eq!(lines.len(), all, "a line twice in the log");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the logs did not converge"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.shutdown().await;
}

/// PostgreSQL away for longer than `node_dead_after_ms`: every heartbeat goes stale at once,
/// and when the database is back no node calls the others dead. The devices keep their
/// sockets and no `offline` is announced; the cluster is healthy again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_declares_no_node_dead() {
    if !herd_testkit::cluster::available() {
        return;
    }
    let mut postgres = tokio::task::spawn_blocking(herd_testkit::postgres::PostgresServer::start)
        .await
        .expect("task")
        .expect("a PostgreSQL of this test's own");
    let store = postgres.create_database().expect("a database");
    let cluster = TestCluster::start_on(store, 2, |_, _| {}).await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let (id, token) = a.create_device("lamp").await;
    let mut events = collect(a.notify(&a.admin_key).await);
    let mut device = b.device(&token).await;
    next_event(&mut events, &id, ONLINE).await;
    // Both nodes judge each other from here on.
    tokio::time::sleep(Duration::from_millis(2 * DEAD_AFTER_MS)).await;

    let mut postgres = tokio::task::spawn_blocking(move || {
        postgres.stop();
        postgres
    })
    .await
    .expect("task");
    tokio::time::sleep(Duration::from_millis(2 * DEAD_AFTER_MS + 1_000)).await;
    let postgres = tokio::task::spawn_blocking(move || {
        postgres.start_again().expect("PostgreSQL starts again");
        postgres
    })
    .await
    .expect("task");
    for node in [a, b] {
        node.wait_for_health(200).await;
    }
    // A few more rounds of heartbeats and judging.
    tokio::time::sleep(Duration::from_millis(3 * DEAD_AFTER_MS)).await;
    wait_for_cluster(&a.http, &a.url(), "both alive", |health| {
        health.nodes.len() == 2 && health.nodes.iter().all(|n| n.alive)
    })
    .await;
    // The device's socket is open and served: it reports and is answered.
    let reply = device.report(json!({"after": true})).await;
    assert!(reply["result"]["version"].is_u64(), "{reply}");
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(200), events.recv()).await
    {
        assert!(
            !(event["id"] == id && event["name"] == OFFLINE),
            "the device was announced offline: {event}"
        );
    }
    cluster.shutdown().await;
    drop(postgres);
}

/// HAProxy, started by the test, in front of two nodes: a real device agent connects
/// through it and lands on one node; that node is killed with SIGKILL; the survivor
/// announces the device `offline`, the agent reconnects through the balancer to the
/// survivor, which announces it `online` and serves its RPC (issue: devices reconnect
/// through the balancer to another node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_behind_the_balancer_moves_to_the_surviving_node() {
    let haproxy = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
        .into_iter()
        .find(|path| std::path::Path::new(path).exists());
    if !available_or_skip(haproxy.is_some(), "haproxy", "apt-get install haproxy") {
        return;
    }
    let Some(mut cluster) = TestCluster::start(1).await else {
        return;
    };
    let mut doomed: ProcessNode = cluster.spawn_process(BIN);
    let survivor = &cluster.nodes[0];

    // `balance first`: every connection goes to the first server that is up, the doomed
    // node while it lives; health checks every 100 ms take it out when it dies.
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let config = dir.path().join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n  maxconn 1000\ndefaults\n  mode tcp\n  timeout connect 2s\n  \
             timeout client 1h\n  timeout server 1h\nfrontend devices\n  bind 127.0.0.1:{port}\n  \
             default_backend nodes\nbackend nodes\n  balance first\n  \
             server doomed {} check inter 100ms fall 1 rise 1\n  \
             server survivor {} check inter 100ms fall 1 rise 1\n",
            doomed.addr, survivor.addr
        ),
    )
    .expect("write the balancer's config");
    let mut balancer = std::process::Command::new(haproxy.unwrap())
        .args(["-db", "-f"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("haproxy starts");
    let through = format!("ws://127.0.0.1:{port}/api/v2/rpc");

    let (id, token) = survivor.create_device("behind-the-balancer").await;
    let mut events = collect(survivor.notify(&survivor.admin_key).await);
    let data = tempfile::tempdir().expect("tempdir");
    let agent = herd_agent::agent::Agent::start(herd_agent::agent::AgentOptions {
        server: Some(through.clone()),
        token: Some(token.clone()),
        link: herd_agent::runner::LinkOptions {
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(5),
            ..herd_agent::runner::LinkOptions::default()
        },
        ..herd_agent::agent::AgentOptions::new(data.path().to_path_buf())
    })
    .await
    .expect("the agent starts");
    next_event(&mut events, &id, ONLINE).await;
    let on_doomed: Value = doomed
        .http
        .get(format!("{}/devices/{id}", doomed.base))
        .bearer_auth(&doomed.admin_key)
        .send()
        .await
        .expect("GET on the doomed node")
        .json()
        .await
        .expect("JSON");
    assert_eq!(on_doomed["online"], true, "{on_doomed}");
    wait_device_on(survivor, &doomed.node_id).await;

    doomed.kill();
    // The survivor ends the session the dead node held, then the agent is back through
    // the balancer, now on the survivor.
    next_event(&mut events, &id, OFFLINE).await;
    next_event(&mut events, &id, ONLINE).await;
    let health = wait_for_cluster(
        &survivor.http,
        &survivor.url(),
        "the device on the survivor",
        |h| {
            h.get(&node_id(0)).is_some_and(|n| n.devices == 1)
                && h.get(&doomed.node_id).is_none_or(|n| !n.alive)
        },
    )
    .await;
    assert!(health.nats_ok && health.store_ok, "{health:?}");
    let (status, body) = survivor
        .call(
            "POST",
            &format!("/devices/{id}/rpc/Sys.GetInfo"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    drop(agent);
    let _ = balancer.kill();
    let _ = balancer.wait();
    cluster.shutdown().await;
}
