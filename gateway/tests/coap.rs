//! herd-gateway coap against a real herd-server, with a Pyaiot-style CoAP node on a real
//! UDP socket in the test: discovery, values into the shadow, `desired` into PUT, silence
//! into offline, and garbage datagrams.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use common::wait_device;
use herd_gateway::coap::{self, CoapGatewayOptions};
use herd_gateway::Counters;
use serde_json::json;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

struct Gateway {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    counters: Arc<Counters>,
}

async fn gateway(server: &herd_testkit::TestServer, dir: &std::path::Path) -> Gateway {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let mut options = CoapGatewayOptions::new(dir.to_path_buf());
    options.timeout = Duration::from_secs(3);
    options.ack_timeout = Duration::from_millis(500);
    let stop = CancellationToken::new();
    let counters = Arc::new(Counters::default());
    let task = tokio::spawn(coap::run_on(
        socket,
        options,
        server.client.clone(),
        counters.clone(),
        stop.clone(),
    ));
    Gateway {
        addr,
        stop,
        task,
        counters,
    }
}

fn request(method: RequestType, path: &str, payload: &[u8]) -> Packet {
    let mut packet = Packet::new();
    packet.header.set_type(MessageType::Confirmable);
    packet.header.code = MessageClass::Request(method);
    packet.header.message_id = rand_id();
    packet.set_token(vec![1, 2, 3, 4]);
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        packet.add_option(CoapOption::UriPath, segment.as_bytes().to_vec());
    }
    packet.payload = payload.to_vec();
    packet
}

fn rand_id() -> u16 {
    use std::sync::atomic::AtomicU16;
    static NEXT: AtomicU16 = AtomicU16::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn path_of(packet: &Packet) -> String {
    packet
        .get_option(CoapOption::UriPath)
        .map(|segments| {
            segments
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
                .join("/")
        })
        .unwrap_or_default()
}

/// A Pyaiot CoAP node: serves its resources, posts `/alive` every 300 ms, and posts
/// `/server` when a PUT changes a value. Returns its address and its task.
async fn node(gateway: SocketAddr) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = socket.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut led = "0".to_string();
        let mut tick = tokio::time::interval(Duration::from_millis(300));
        let mut buf = vec![0u8; 1500];
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let alive = request(RequestType::Post, "alive", b"Alive");
                    socket.send_to(&alive.to_bytes().unwrap(), gateway).await.unwrap();
                }
                received = socket.recv_from(&mut buf) => {
                    let (len, peer) = received.unwrap();
                    let packet = Packet::from_bytes(&buf[..len]).unwrap();
                    let MessageClass::Request(method) = packet.header.code else { continue };
                    let path = path_of(&packet);
                    let (code, body): (ResponseType, Vec<u8>) = match (method, path.as_str()) {
                        (RequestType::Get, ".well-known/core") => (
                            ResponseType::Content,
                            b"</.well-known/core>;ct=40,</temperature>;ct=0,</led>".to_vec(),
                        ),
                        (RequestType::Get, "temperature") => (ResponseType::Content, b"21.5".to_vec()),
                        (RequestType::Get, "led") => (ResponseType::Content, led.clone().into_bytes()),
                        (RequestType::Put, "led") => {
                            led = String::from_utf8_lossy(&packet.payload).into_owned();
                            let update = request(RequestType::Post, "server", format!("led:{led}").as_bytes());
                            socket.send_to(&update.to_bytes().unwrap(), gateway).await.unwrap();
                            (ResponseType::Changed, Vec::new())
                        }
                        _ => (ResponseType::NotFound, Vec::new()),
                    };
                    let mut response = Packet::new();
                    response.header.set_type(MessageType::Acknowledgement);
                    response.header.message_id = packet.header.message_id;
                    response.header.code = MessageClass::Response(code);
                    response.set_token(packet.get_token().to_vec());
                    response.payload = body;
                    socket.send_to(&response.to_bytes().unwrap(), peer).await.unwrap();
                }
            }
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coap_node_is_discovered_switched_and_goes_offline_when_silent() {
    let server = common::server().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway(&server, dir.path()).await;
    let (addr, node_task) = node(gateway.addr).await;
    let name = addr.to_string();

    let device = wait_device(&server.client, &name, "discovered", |d| {
        d["online"] == true
            && d["shadow_doc"]["state"]["reported"] == json!({"temperature": 21.5, "led": 0})
    })
    .await;
    let id = device["id"].as_str().unwrap().to_string();
    let info = server.client.call(&id, "Sys.GetInfo", None).await.unwrap();
    assert_eq!(info["arch"], "coap");
    assert_eq!(info["resources"], json!(["temperature", "led"]));

    // `desired` becomes a PUT; the node's POST /server brings `reported` along.
    server
        .client
        .update_shadow(&id, &json!({"state": {"desired": {"led": 1}}}))
        .await
        .unwrap();
    wait_device(&server.client, &name, "switched", |d| {
        d["shadow_doc"]["state"]["reported"]["led"] == 1
            && d["shadow_doc"]["state"]["delta"] == json!({})
    })
    .await;

    node_task.abort();
    wait_device(&server.client, &name, "offline", |d| d["online"] == false).await;
    gateway.stop.cancel();
    gateway.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_datagrams_get_errors_and_the_gateway_keeps_serving() {
    let server = common::server().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway(&server, dir.path()).await;
    let probe = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 3],
        b"hello, not coap".to_vec(),
        vec![0x40],
    ];
    for datagram in &garbage {
        probe.send_to(datagram, gateway.addr).await.unwrap();
    }
    // Requests it does not serve are answered with an error, not silence.
    let mut buf = vec![0u8; 1500];
    for (packet, expected) in [
        (
            request(RequestType::Get, "alive", b""),
            ResponseType::NotFound,
        ),
        (
            request(RequestType::Post, "nothing", b""),
            ResponseType::NotFound,
        ),
        (
            request(RequestType::Post, "server", b"no colon"),
            ResponseType::BadRequest,
        ),
    ] {
        probe
            .send_to(&packet.to_bytes().unwrap(), gateway.addr)
            .await
            .unwrap();
        let (len, _) = tokio::time::timeout(common::WAIT, probe.recv_from(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        let answer = Packet::from_bytes(&buf[..len]).unwrap();
        assert_eq!(answer.header.code, MessageClass::Response(expected));
        assert_eq!(answer.header.message_id, packet.header.message_id);
        assert_eq!(answer.get_token(), packet.get_token());
    }
    // A real node after all that still works, and nothing else became a device.
    let (addr, node_task) = node(gateway.addr).await;
    wait_device(&server.client, &addr.to_string(), "discovered", |d| {
        d["shadow_doc"]["state"]["reported"]["temperature"] == 21.5
    })
    .await;
    assert_eq!(server.client.devices().await.unwrap().len(), 1);
    assert!(
        gateway.counters.rejected.load(Ordering::Relaxed) >= garbage.len() as u64 + 3,
        "{:?}",
        gateway.counters
    );
    node_task.abort();
    gateway.stop.cancel();
    gateway.task.await.unwrap().unwrap();
}
