//! herd-gateway: devices that never open a WebSocket, brought into Herd.
//!
//! Sensor nodes that speak MQTT (Pyaiot's topic scheme, or Herd's own scheme modelled on
//! AWS IoT shadow topics, see [`topics`]) become Herd devices: each node gets a device,
//! created through the REST API with the gateway's key and remembered in `nodes.json`
//! ([`nodes`]), and while the node is alive the gateway holds that device's socket to
//! herd-server ([`link`]). So a node has a shadow (its resources as `reported`; `desired`
//! turned into `set` messages), RPC (Herd scheme), online/offline and events in
//! notification.log exactly like a device that connects itself. Pyaiot's CoAP nodes come in
//! the same way through [`coap`].
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use herd_gateway::mqtt::{run, Counters, MqttGatewayOptions};
//!
//! let client = herd_client::Client::new("https://herd.example.com", Some("API_KEY"))?;
//! let options = MqttGatewayOptions::new("mqtts://broker.example.com", "/var/lib/herd-gateway".into());
//! run(options, client, Arc::new(Counters::default()), Default::default()).await?;
//! # Ok(()) }
//! ```

pub mod coap;
pub mod link;
pub mod mqtt;
pub mod nodes;
pub mod topics;

use std::sync::atomic::AtomicU64;

/// What a gateway has done, for logs and tests.
#[derive(Debug, Default)]
pub struct Counters {
    /// MQTT: subscriptions the broker confirmed (made again after each reconnect).
    pub subscribed: AtomicU64,
    /// Messages (MQTT) or datagrams (CoAP) received.
    pub messages: AtomicU64,
    /// Of those, not understood: counted and logged, never fatal.
    pub rejected: AtomicU64,
    /// Messages sent to nodes.
    pub published: AtomicU64,
    /// Messages dropped because a queue was full or a node did not answer.
    pub dropped: AtomicU64,
}
