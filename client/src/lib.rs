//! herd-client: the typed client for a Herd (or mDash) server.
//!
//! [`Client`] wraps the REST API under `/api/v2` (PROTOCOL §6) with one method per endpoint
//! and returns the protocol crate's body types; every failure is an [`Error`], and a
//! non-2xx answer keeps the server's `{"error": {code, message}}` envelope as
//! [`Error::Api`]. [`Client::notify`] opens the live notification stream (PROTOCOL §5) as a
//! [`NotifyStream`] that reconnects by itself and reports its connection state as events.
//!
//! The console, the scripting CLI and tests of other crates share this client, so nothing
//! in it prints or exits.
//!
//! ```no_run
//! # async fn demo() -> Result<(), herd_client::Error> {
//! use herd_client::{Client, NotifyEvent};
//!
//! let client = Client::new("http://127.0.0.1:8009", Some("my-api-key"))?;
//! for device in client.devices().await? {
//!     println!("{} online={}", device.id, device.online);
//! }
//! let mut stream = client.notify();
//! while let Some(event) = stream.next().await {
//!     if let NotifyEvent::Notification(n) = event {
//!         println!("{} {}", n.id, n.name);
//!     }
//! }
//! # Ok(()) }
//! ```

mod client;
mod error;
mod firmware;
mod notify;
pub mod tls;
mod url;

pub use client::{Client, ClientOptions, LogPage, NewUserResponse};
pub use error::{DeviceError, Error};
pub use firmware::{Progress, RolloutCommand, UploadMeta};
pub use notify::{NotifyEvent, NotifyOptions, NotifyStream};
pub use protocol::firmware::{FirmwareObject, RolloutObject, RolloutSpec};
pub use protocol::notification::Notification;
pub use protocol::rest::{
    DeviceChange, DeviceObject, KeyObject, LogsQuery, NewDevice, NewKey, Scope, UserObject,
};
