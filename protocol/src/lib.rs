//! Wire types and pure protocol logic for Herd, the self-hosted device cloud that
//! speaks Cesanta mDash's protocol (see `PROTOCOL.md`).
//!
//! Everything here is `no_std` + `alloc` and free of IO and clocks, so the same code
//! runs in the server, in host tools and on a microcontroller. The main pieces are
//! [`frame::Frame`] (one JSON-RPC frame as Mongoose OS sends it, PROTOCOL §2),
//! [`splitter::FrameSplitter`] (extracts whole JSON values from a device's byte
//! stream, PROTOCOL §1), [`shadow::Shadow`] (device shadow merge, metadata, limits and
//! delta, PROTOCOL §4), [`notification::Notification`] (PROTOCOL §5, §7) and the REST
//! bodies in [`rest`] (PROTOCOL §6). Time is always passed in by the caller.
//!
//! ```
//! use protocol::frame::{Frame, FrameKind};
//! use protocol::splitter::FrameSplitter;
//!
//! let mut splitter = FrameSplitter::new(64 * 1024);
//! splitter.push(br#"{"id": 7, "method": "Dash.Heartbeat", "#).unwrap();
//! assert!(splitter.next_value().is_none()); // the value is not complete yet
//! splitter.push(br#""params": {"uptime": 12}}"#).unwrap();
//!
//! let value = splitter.next_value().unwrap().unwrap();
//! let request = Frame::from_value(value).unwrap();
//! assert_eq!(request.kind(), FrameKind::Request);
//!
//! let reply = Frame::reply_to(&request, protocol::Value::Bool(true));
//! assert_eq!(reply.to_json(), r#"{"id":7,"result":true}"#);
//! ```
// The `openapi` feature (host builds only) derives `utoipa::ToSchema`, whose generated code
// needs std's prelude; the code itself stays `no_std` + `alloc` either way.
#![cfg_attr(not(feature = "openapi"), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

// Unit tests and proptest use std's macros (`vec!`, `format!`); the library itself
// must not, so std is linked only for tests.
#[cfg(all(test, not(feature = "openapi")))]
#[macro_use]
extern crate std;

pub mod codes;
pub mod filter;
pub mod firmware;
pub mod frame;
pub mod methods;
pub mod notification;
pub mod rest;
pub mod shadow;
pub mod splitter;
pub mod text;

pub use serde_json::{json, Map, Value};
