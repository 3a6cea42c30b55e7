//! herd-gateway against a real mosquitto and a real herd-server: MQTT nodes in the test
//! speak Pyaiot's and Herd's topic schemes, and everything is checked through the REST API.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use herd_bench::driver::{find_program, MosquittoProcess};
use herd_client::Client;
use herd_gateway::mqtt::{self, Counters, MqttGatewayOptions};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

mod common;

use common::{wait_device, WAIT};

struct Bed {
    _server: herd_testkit::TestServer,
    broker: MosquittoProcess,
    client: Client,
}

/// mosquitto (or `None` where it is not installed and CI is not set), and herd-server.
async fn bed_with(extra: impl FnOnce(&std::path::Path) -> anyhow::Result<String>) -> Option<Bed> {
    let Some(bin) = find_program("mosquitto") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "mosquitto is not installed (Debian: apt-get install mosquitto)"
        );
        eprintln!("skipped: mosquitto is not installed");
        return None;
    };
    let broker = MosquittoProcess::start_with(&bin, extra)
        .await
        .expect("mosquitto starts");
    let server = common::server().await;
    let client = server.client.clone();
    Some(Bed {
        _server: server,
        broker,
        client,
    })
}

async fn bed() -> Option<Bed> {
    bed_with(|_| Ok(String::new())).await
}

struct Gateway {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    counters: Arc<Counters>,
}

impl Gateway {
    fn start(
        bed: &Bed,
        dir: &std::path::Path,
        tweak: impl FnOnce(&mut MqttGatewayOptions),
    ) -> Gateway {
        let mut options =
            MqttGatewayOptions::new(format!("mqtt://{}", bed.broker.address), dir.to_path_buf());
        options.plain = true;
        options.timeout = Duration::from_secs(3);
        options.check_interval = Duration::from_secs(1);
        options.rpc_timeout = Duration::from_secs(5);
        tweak(&mut options);
        let stop = CancellationToken::new();
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(mqtt::run(
            options,
            bed.client.clone(),
            counters.clone(),
            stop.clone(),
        ));
        Gateway {
            stop,
            task,
            counters,
        }
    }

    /// Waits until the broker confirmed every subscription, so what is published next
    /// reaches the gateway.
    async fn ready(&self) {
        let all =
            herd_gateway::topics::subscriptions(herd_gateway::topics::DEFAULT_PREFIX).len() as u64;
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.counters.subscribed.load(Ordering::Relaxed) < all {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the gateway did not subscribe"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// An MQTT client on the test broker; its messages arrive on the returned channel.
async fn mqtt_client(
    broker: &str,
    id: &str,
    subscriptions: &[&str],
    will: Option<rumqttc::LastWill>,
) -> (
    AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    tokio::task::JoinHandle<()>,
) {
    let (host, port) = broker.rsplit_once(':').unwrap();
    let mut options = MqttOptions::new(id, host, port.parse().unwrap());
    options
        .set_keep_alive(Duration::from_secs(5))
        .set_max_packet_size(1 << 20, 1 << 20);
    if let Some(will) = will {
        options.set_last_will(will);
    }
    let (client, mut events) = AsyncClient::new(options, 64);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let subscriptions: Vec<String> = subscriptions.iter().map(|s| s.to_string()).collect();
    let subscriber = client.clone();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut ready_tx = Some(ready_tx);
    let task = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    for topic in &subscriptions {
                        subscriber.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
                    }
                    if subscriptions.is_empty() {
                        if let Some(ready) = ready_tx.take() {
                            let _ = ready.send(());
                        }
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(ready) = ready_tx.take() {
                        let _ = ready.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(message))) => {
                    let _ = tx.send((message.topic.clone(), message.payload.to_vec()));
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    let _ = tokio::time::timeout(WAIT, ready_rx).await;
    (client, rx, task)
}

async fn publish(client: &AsyncClient, topic: &str, payload: impl Into<Vec<u8>>) {
    client
        .publish(topic, QoS::AtLeastOnce, false, payload)
        .await
        .unwrap();
}

/// A Pyaiot node: answers `gateway/check` and the discovery, applies `set`.
fn pyaiot_node(
    client: AsyncClient,
    mut inbox: tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    id: &'static str,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut led = "0".to_string();
        publish(&client, "node/check", json!({"id": id}).to_string()).await;
        while let Some((topic, payload)) = inbox.recv().await {
            let text = String::from_utf8_lossy(&payload).to_string();
            if topic == "gateway/check" {
                publish(&client, "node/check", json!({"id": id}).to_string()).await;
            } else if topic == format!("gateway/{id}/discover") && text == "resources" {
                publish(
                    &client,
                    &format!("node/{id}/resources"),
                    json!(["temperature", "led"]).to_string(),
                )
                .await;
            } else if topic == format!("gateway/{id}/discover") && text == "values" {
                publish(
                    &client,
                    &format!("node/{id}/temperature"),
                    json!({"value": 21.5}).to_string(),
                )
                .await;
                publish(
                    &client,
                    &format!("node/{id}/led"),
                    json!({"value": led}).to_string(),
                )
                .await;
            } else if topic == format!("gateway/{id}/led/set") {
                led = text;
                publish(
                    &client,
                    &format!("node/{id}/led"),
                    json!({"value": led}).to_string(),
                )
                .await;
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pyaiot_node_becomes_a_device_with_a_shadow_and_goes_offline_when_silent() {
    let Some(bed) = bed().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&bed, dir.path(), |_| {});
    let (node, inbox, node_task) = mqtt_client(
        &bed.broker.address,
        "n1",
        &["gateway/check", "gateway/n1/#"],
        None,
    )
    .await;
    let behaviour = pyaiot_node(node.clone(), inbox, "n1");

    // Discovery: the resources arrive as `reported`, the device is online.
    let device = wait_device(&bed.client, "n1", "reported", |d| {
        d["online"] == true
            && d["shadow_doc"]["state"]["reported"] == json!({"temperature": 21.5, "led": "0"})
    })
    .await;
    let id = device["id"].as_str().unwrap().to_string();

    // `desired` becomes a `set` message; the node's answer clears the delta.
    bed.client
        .update_shadow(&id, &json!({"state": {"desired": {"led": "1"}}}))
        .await
        .unwrap();
    wait_device(&bed.client, "n1", "switched", |d| {
        d["shadow_doc"]["state"]["reported"]["led"] == "1"
            && d["shadow_doc"]["state"]["delta"] == json!({})
    })
    .await;

    // The gateway answers Sys.GetInfo for the node; other calls have no handler.
    let info = bed.client.call(&id, "Sys.GetInfo", None).await.unwrap();
    assert_eq!(info["arch"], "pyaiot");
    assert_eq!(info["resources"], json!(["temperature", "led"]));
    let refused = bed
        .client
        .call(&id, "Light.Toggle", None)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("No handler"), "{refused}");

    // The node goes silent: offline after the timeout (3 s here).
    behaviour.abort();
    node_task.abort();
    drop(node);
    wait_device(&bed.client, "n1", "offline", |d| d["online"] == false).await;

    // Its events are in the log like any device's.
    let page = bed
        .client
        .logs(herd_client::LogsQuery {
            start: None,
            limit: Some(10_000),
        })
        .await
        .unwrap();
    let names: Vec<String> = page
        .items
        .iter()
        .filter(|n| n["id"] == id.as_str())
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect();
    for expected in ["created", "online", "rpc.out.Dash.Shadow.Update", "offline"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_scheme_node_gets_deltas_and_calls_and_its_last_will_takes_it_offline() {
    let Some(bed) = bed().await else { return };
    let dir = tempfile::tempdir().unwrap();
    // A long timeout: going offline below must come from the last will, not from silence.
    let gateway = Gateway::start(&bed, dir.path(), |o| o.timeout = Duration::from_secs(600));
    gateway.ready().await;
    let will = rumqttc::LastWill::new("herd/lamp/status", "offline", QoS::AtLeastOnce, false);
    let (node, mut inbox, node_task) = mqtt_client(
        &bed.broker.address,
        "lamp",
        &["herd/lamp/shadow/delta", "herd/lamp/rpc/request"],
        Some(will),
    )
    .await;
    publish(&node, "herd/lamp/status", "online").await;
    publish(
        &node,
        "herd/lamp/shadow/update",
        json!({"state": {"reported": {"on": false}}}).to_string(),
    )
    .await;
    let device = wait_device(&bed.client, "lamp", "reported", |d| {
        d["online"] == true && d["shadow_doc"]["state"]["reported"]["on"] == false
    })
    .await;
    let id = device["id"].as_str().unwrap().to_string();

    let node_side = {
        let node = node.clone();
        tokio::spawn(async move {
            let mut on = false;
            while let Some((topic, payload)) = inbox.recv().await {
                let message: Value = serde_json::from_slice(&payload).unwrap();
                if topic == "herd/lamp/shadow/delta" {
                    if let Some(wanted) = message["state"]["on"].as_bool() {
                        on = wanted;
                        publish(
                            &node,
                            "herd/lamp/shadow/update",
                            json!({"state": {"reported": {"on": on}}}).to_string(),
                        )
                        .await;
                    }
                } else if message["method"] == "Light.Toggle" {
                    on = !on;
                    let reply = json!({"id": message["id"], "result": {"on": on}});
                    publish(&node, "herd/lamp/rpc/response", reply.to_string()).await;
                } else {
                    let reply = json!({"id": message["id"], "error": {"code": 404, "message": "no such method"}});
                    publish(&node, "herd/lamp/rpc/response", reply.to_string()).await;
                }
            }
        })
    };

    bed.client
        .update_shadow(&id, &json!({"state": {"desired": {"on": true}}}))
        .await
        .unwrap();
    wait_device(&bed.client, "lamp", "on", |d| {
        d["shadow_doc"]["state"]["reported"]["on"] == true
            && d["shadow_doc"]["state"]["delta"] == json!({})
    })
    .await;
    // A cloud call reaches the node and its answer comes back.
    let result = bed.client.call(&id, "Light.Toggle", None).await.unwrap();
    assert_eq!(result, json!({"on": false}));
    let error = bed.client.call(&id, "Nope", None).await.unwrap_err();
    assert!(error.to_string().contains("no such method"), "{error}");

    // The node drops off the network without a word: the broker publishes its will.
    node_side.abort();
    node_task.abort();
    drop(node);
    wait_device(&bed.client, "lamp", "offline", |d| d["online"] == false).await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_broker_creates_nothing_and_stops_nothing() {
    let Some(bed) = bed().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&bed, dir.path(), |_| {});
    gateway.ready().await;
    let (noise, _inbox, _task) = mqtt_client(&bed.broker.address, "noise", &[], None).await;
    let long = "x".repeat(200);
    let bad: Vec<(String, Vec<u8>)> = vec![
        ("node/check".into(), b"not json".to_vec()),
        ("node/check".into(), br#"{"id": 5}"#.to_vec()),
        ("node/check".into(), br#"{"id": "two words"}"#.to_vec()),
        (
            "node/check".into(),
            format!(r#"{{"id": "{long}"}}"#).into_bytes(),
        ),
        ("node/n9/temperature".into(), b"\xff\xfe".to_vec()),
        ("node/n9/resources".into(), br#"{"no": "list"}"#.to_vec()),
        (
            "herd/lamp2/shadow/update".into(),
            br#"{"state": {"reported": 3}}"#.to_vec(),
        ),
        (
            "herd/lamp2/rpc/response".into(),
            br#"{"id": "one"}"#.to_vec(),
        ),
        ("herd/lamp2/status".into(), b"perhaps".to_vec()),
        ("herd/lamp2/shadow/update".into(), vec![b'{'; 100_000]),
    ];
    for (topic, payload) in &bad {
        publish(&noise, topic, payload.clone()).await;
    }
    // A good node after all that still works.
    publish(
        &noise,
        "herd/good/shadow/update",
        json!({"state": {"reported": {"ok": true}}}).to_string(),
    )
    .await;
    wait_device(&bed.client, "good", "reported", |d| {
        d["shadow_doc"]["state"]["reported"]["ok"] == true
    })
    .await;
    assert_eq!(
        gateway.counters.rejected.load(Ordering::Relaxed),
        bad.len() as u64,
        "each bad message counted once"
    );
    let names: Vec<String> = bed
        .client
        .devices()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, ["good"], "no device for any bad message");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_gateway_keeps_each_node_on_its_device() {
    let Some(bed) = bed().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let (node, _inbox, _task) = mqtt_client(&bed.broker.address, "keeper", &[], None).await;
    let report = |n: i64| json!({"state": {"reported": {"n": n}}}).to_string();
    let gateway = Gateway::start(&bed, dir.path(), |_| {});
    gateway.ready().await;
    publish(&node, "herd/keeper/shadow/update", report(1)).await;
    let first = wait_device(&bed.client, "keeper", "n=1", |d| {
        d["shadow_doc"]["state"]["reported"]["n"] == 1
    })
    .await;
    gateway.stop().await;
    wait_device(&bed.client, "keeper", "offline", |d| d["online"] == false).await;

    let gateway = Gateway::start(&bed, dir.path(), |_| {});
    gateway.ready().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        publish(&node, "herd/keeper/shadow/update", report(2)).await;
        let devices = bed.client.devices().await.unwrap();
        let shadow = bed.client.shadow(&devices[0].id).await.unwrap();
        if shadow["state"]["reported"]["n"] == 2 {
            assert_eq!(devices.len(), 1, "the same device, not a new one");
            assert_eq!(devices[0].id, first["id"].as_str().unwrap());
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no update after the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_is_reached_over_tls_and_its_certificate_is_checked() {
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let ca_pem = certified.cert.pem();
    let key_pem = certified.signing_key.serialize_pem();
    let cert_for_broker = ca_pem.clone();
    let Some(bed) = bed_with(move |dir| {
        std::fs::write(dir.join("cert.pem"), &cert_for_broker)?;
        std::fs::write(dir.join("key.pem"), &key_pem)?;
        Ok(format!(
            "listener {tls_port} 127.0.0.1\ncertfile {}\nkeyfile {}\n",
            dir.join("cert.pem").display(),
            dir.join("key.pem").display()
        ))
    })
    .await
    else {
        return;
    };
    // Without trusting the broker's CA the gateway connects nowhere and creates nothing.
    let untrusting_dir = tempfile::tempdir().unwrap();
    let untrusting = Gateway::start(&bed, untrusting_dir.path(), |o| {
        o.broker = format!("mqtts://localhost:{tls_port}");
        o.plain = false;
    });
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&bed, dir.path(), |o| {
        o.broker = format!("mqtts://localhost:{tls_port}");
        o.plain = false;
        o.broker_tls =
            Some(herd_client::tls::client_config(Some(ca_pem.as_bytes()), None).unwrap());
    });
    // The node itself is on the plain listener of the same broker.
    let (node, _inbox, _task) = mqtt_client(&bed.broker.address, "secure", &[], None).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        publish(
            &node,
            "herd/secure/shadow/update",
            json!({"state": {"reported": {"tls": true}}}).to_string(),
        )
        .await;
        let devices = bed.client.devices().await.unwrap();
        if let Some(device) = devices.first() {
            let shadow = bed.client.shadow(&device.id).await.unwrap();
            if shadow["state"]["reported"]["tls"] == true {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing through the TLS gateway"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(untrusting.counters.messages.load(Ordering::Relaxed), 0);
    assert_eq!(bed.client.devices().await.unwrap().len(), 1);
    untrusting.stop().await;
    gateway.stop().await;
}
