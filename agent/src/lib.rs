//! herd-agent: the Herd device runtime for Linux hosts and simulated fleets, built on the
//! sans-IO engine in `firmware_core`.
//!
//! [`agent::Agent`] runs one device whose configuration (JSON files written atomically),
//! `FS.*` files and firmware slots live in a data directory, with the light simulated or
//! on a GPIO line. [`fleet::Fleet`] runs many simulated devices in one process, registered
//! through the REST API, with seeded, time-of-day behaviour. Both drive the engine through
//! [`runner::BootLoop`], the thin IO loop that owns the WebSocket and reconnects with
//! exponential backoff and jitter. Firmware pulls (PROTOCOL §10.3) are fetched by
//! [`download::fetch`], which streams the image into the engine and resumes broken
//! transfers. [`ccm`] runs the agent as a Cloud Communication Module for a host MCU on a
//! serial line (`herd-agent ccm`).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use herd_agent::agent::{Agent, AgentOptions, ImagePolicy};
//!
//! let mut agent = Agent::start(AgentOptions {
//!     server: Some("ws://127.0.0.1:8009/api/v2/rpc".into()),
//!     token: Some("0123456789abcdef01234567".into()),
//!     data_dir: "/var/lib/herd-agent".into(),
//!     light: Default::default(),
//!     link: Default::default(),
//!     images: ImagePolicy::Refuse,
//!     update_pubkey: None,
//!     ota_methods: None,
//!     download: Default::default(),
//! })
//! .await?;
//! agent.wait_for(|status| status.connected).await?;
//! agent.shutdown().await?;
//! # Ok(()) }
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod agent;
pub mod ccm;
pub mod download;
pub mod fleet;
pub mod light;
pub mod runner;
pub mod slots;
pub mod storage;
