//! `herd-gateway mqtt`: devices on an MQTT broker as Herd devices.
//!
//! One MQTT session to the broker (rumqttc) subscribes to both schemes of
//! [`crate::topics`]. Each node that shows a sign of life gets a [`crate::link`] task, its
//! device socket to herd-server; a node silent for longer than the timeout (Pyaiot's 120 s
//! by default), or whose Herd `status` says `offline`, loses its link and so goes offline
//! in Herd. Every `check_interval` the gateway publishes Pyaiot's `gateway/check` so quiet
//! Pyaiot nodes answer.
//!
//! The broker connection uses TLS unless the operator asks for plain MQTT with `--plain`:
//! an `mqtt://` URL alone is refused. Bad messages are counted and logged, never fatal.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use herd_client::Client;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::link::{LinkContext, Links, ToCloud, ToNode};
use crate::nodes::Registry;
use crate::topics::{self, Family, Inbound, NodeKey};

/// Pyaiot's default: a node not heard from for this long is gone.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// How to run the MQTT gateway.
#[derive(Debug, Clone)]
pub struct MqttGatewayOptions {
    /// `mqtts://host[:8883]`, or `mqtt://host[:1883]` together with `plain`.
    pub broker: String,
    /// Allow `mqtt://` without TLS.
    pub plain: bool,
    /// Whom the broker's certificate must chain to; `None`: the system's roots.
    pub broker_tls: Option<Arc<rustls::ClientConfig>>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// The gateway's MQTT client id.
    pub client_id: String,
    /// Prefix of the Herd topic scheme.
    pub prefix: String,
    /// A node silent this long goes offline.
    pub timeout: Duration,
    /// How often `gateway/check` asks Pyaiot nodes to say they are alive.
    pub check_interval: Duration,
    /// How long a forwarded cloud call waits for the node.
    pub rpc_timeout: Duration,
    /// Where `nodes.json` lives.
    pub data_dir: PathBuf,
    /// Most nodes given devices; more are refused (a runaway publisher must not fill the
    /// server with devices).
    pub max_nodes: usize,
}

impl MqttGatewayOptions {
    /// Defaults for a broker URL and data directory.
    pub fn new(broker: impl Into<String>, data_dir: PathBuf) -> MqttGatewayOptions {
        MqttGatewayOptions {
            broker: broker.into(),
            plain: false,
            broker_tls: None,
            username: None,
            password: None,
            client_id: format!("herd-gateway-{}", std::process::id()),
            prefix: topics::DEFAULT_PREFIX.to_string(),
            timeout: DEFAULT_TIMEOUT,
            check_interval: Duration::from_secs(30),
            rpc_timeout: Duration::from_secs(10),
            data_dir,
            max_nodes: 10_000,
        }
    }
}

/// Where the broker is and whether to use TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

/// Reads a broker URL: `mqtts://` (TLS, port 8883 by default) or `mqtt://` (plain, 1883),
/// the latter only with `plain`.
pub fn broker(url: &str, plain: bool) -> anyhow::Result<Broker> {
    let (scheme, rest) = url
        .split_once("://")
        .with_context(|| format!("{url:?}: expected mqtts://HOST[:PORT] or mqtt://HOST[:PORT]"))?;
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "mqtts" | "ssl" | "tls" => true,
        "mqtt" | "tcp" => {
            anyhow::ensure!(
                plain,
                "{url}: plain MQTT sends tokens and device data in the clear; use mqtts:// or pass --plain"
            );
            false
        }
        other => anyhow::bail!("{url}: unknown scheme {other:?}; use mqtts:// or mqtt://"),
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => (
            host,
            port.parse::<u16>()
                .with_context(|| format!("{url}: {port:?} is not a port"))?,
        ),
        _ => (rest, if tls { 8883 } else { 1883 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    anyhow::ensure!(!host.is_empty() && !host.contains('/'), "{url}: no host");
    Ok(Broker {
        host: host.to_string(),
        port,
        tls,
    })
}

pub use crate::Counters;

/// Runs the gateway until `shutdown` fires. Errors only for what cannot work at all
/// (bad options, an unreadable node map); a broker or server that is away is waited for.
pub async fn run(
    options: MqttGatewayOptions,
    client: Client,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let broker = broker(&options.broker, options.plain)?;
    let registry = Arc::new(Registry::open(&options.data_dir, options.max_nodes)?);
    let mut mqtt = MqttOptions::new(&options.client_id, &broker.host, broker.port);
    mqtt.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_max_packet_size(256 * 1024, 256 * 1024);
    if let Some(user) = &options.username {
        mqtt.set_credentials(user, options.password.clone().unwrap_or_default());
    }
    if broker.tls {
        let config = match &options.broker_tls {
            Some(config) => config.clone(),
            None => herd_client::tls::client_config(None, None)
                .context("cannot load the system's certificate authorities")?,
        };
        mqtt.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
    }
    let (mqtt_client, mut events) = AsyncClient::new(mqtt, 1024);
    let (context, mut from_links) =
        LinkContext::new(client, registry, options.rpc_timeout, "mqtt-node");
    let mut links: Links<NodeKey> = Links::new(context);
    let mut sweep =
        tokio::time::interval(options.timeout.div_f64(8.0).max(Duration::from_millis(100)));
    let mut check = tokio::time::interval(options.check_interval);
    let mut broker_down_since: Option<Instant> = None;
    tracing::info!(host = %broker.host, port = broker.port, tls = broker.tls, "connecting to the broker");

    let publish = |topic: String, payload: Vec<u8>| match mqtt_client.try_publish(
        topic,
        QoS::AtLeastOnce,
        false,
        payload,
    ) {
        Ok(()) => {
            counters.published.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "cannot queue a message for the broker");
        }
    };

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            event = events.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    broker_down_since = None;
                    tracing::info!("connected to the broker");
                    for topic in topics::subscriptions(&options.prefix) {
                        if let Err(e) = mqtt_client.try_subscribe(topic, QoS::AtLeastOnce) {
                            tracing::error!(error = %e, "cannot subscribe");
                        }
                    }
                    publish(topics::PYAIOT_REQUEST_CHECK.to_string(), Vec::new());
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    counters.subscribed.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Event::Incoming(Packet::Publish(message))) => {
                    counters.messages.fetch_add(1, Ordering::Relaxed);
                    match topics::parse(&options.prefix, &message.topic, &message.payload) {
                        Ok(Some(inbound)) => {
                            for (topic, payload) in handle(inbound, &mut links, &counters) {
                                publish(topic, payload);
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            counters.rejected.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(error = %e, "ignoring a message");
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let since = *broker_down_since.get_or_insert_with(Instant::now);
                    tracing::warn!(error = %e, down_for = ?since.elapsed(), "broker connection failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            },
            Some((node, out)) = from_links.recv() => {
                let (topic, payload) = match (&node.family, &out) {
                    (Family::Herd, ToNode::Desired(params)) => topics::delta(&options.prefix, &node.node, params),
                    (Family::Herd, ToNode::Rpc { id, method, params }) => {
                        topics::rpc_request(&options.prefix, &node.node, *id, method, params.as_ref())
                    }
                    (Family::Pyaiot, ToNode::Desired(params)) => {
                        // One `set` per changed resource.
                        let Some(state) = params.get("state").and_then(|s| s.as_object()) else { continue };
                        for (resource, value) in state {
                            if topics::valid_node_id(resource) {
                                let (topic, payload) = topics::set(&node.node, resource, value);
                                publish(topic, payload);
                            }
                        }
                        continue;
                    }
                    (Family::Pyaiot | Family::Coap, ToNode::Rpc { .. }) | (Family::Coap, _) => continue,
                };
                publish(topic, payload);
            }
            _ = sweep.tick() => links.sweep(options.timeout),
            _ = check.tick() => publish(topics::PYAIOT_REQUEST_CHECK.to_string(), Vec::new()),
        }
    }
    // Closing every device socket takes the nodes offline in Herd.
    links.close().await;
    let _ = mqtt_client.try_disconnect();
    Ok(())
}

/// Applies one message from a node; returns what to publish in answer.
fn handle(
    inbound: Inbound,
    links: &mut Links<NodeKey>,
    counters: &Counters,
) -> Vec<(String, Vec<u8>)> {
    let node = match &inbound {
        Inbound::Alive(node)
        | Inbound::Resources(node, _)
        | Inbound::Reported(node, _)
        | Inbound::Status(node, _) => node.clone(),
        Inbound::RpcResponse { node, .. } => node.clone(),
    };
    if let Inbound::Status(_, false) = inbound {
        if links.remove(&node) {
            tracing::info!(%node, "node says it is offline");
        }
        return Vec::new();
    }
    let mut out = Vec::new();
    let (inbox, new) = links.touch(node.clone(), || node.clone());
    if new && node.family == Family::Pyaiot {
        // Pyaiot's handshake: ask for the resource list, then for the values.
        out.push(topics::discover(&node.node, "resources"));
    }
    let message = match inbound {
        Inbound::Resources(_, names) => {
            out.push(topics::discover(&node.node, "values"));
            Some(ToCloud::Resources(names))
        }
        Inbound::Reported(_, patch) => Some(ToCloud::Report(patch)),
        Inbound::RpcResponse { id, outcome, .. } => Some(ToCloud::RpcResponse { id, outcome }),
        Inbound::Alive(_) | Inbound::Status(..) => None,
    };
    if let Some(message) = message {
        if inbox.try_send(message).is_err() {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%node, "node sends faster than its device socket takes; dropping a message");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        assert_eq!(
            broker("mqtts://broker.example", false).unwrap(),
            Broker {
                host: "broker.example".into(),
                port: 8883,
                tls: true
            }
        );
        assert_eq!(
            broker("mqtt://127.0.0.1:1884", true).unwrap(),
            Broker {
                host: "127.0.0.1".into(),
                port: 1884,
                tls: false
            }
        );
        let refused = broker("mqtt://127.0.0.1", false).unwrap_err().to_string();
        assert!(refused.contains("--plain"), "{refused}");
        assert!(broker("http://x", true).is_err());
        assert!(broker("mqtts://x:notaport", false).is_err());
        assert!(broker("broker:1883", true).is_err());
        assert_eq!(broker("mqtts://[::1]:8884", false).unwrap().host, "::1");
    }
}
