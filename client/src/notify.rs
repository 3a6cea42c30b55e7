//! The live notification stream (PROTOCOL §5) with automatic reconnection.
//!
//! One background task owns the WebSocket: it connects, forwards every message as a
//! [`NotifyEvent`] over a bounded channel, and on any failure waits (backing off up to
//! [`NotifyOptions::max_backoff`]) and connects again. Its connection state travels on the
//! same channel as the notifications, so a consumer sees "connected", "lost", "retrying in
//! 2 s" in order with the data. A slow consumer fills the channel, the task stops reading,
//! and the server drops events for this stream and says so with `lagged` (PROTOCOL §5),
//! which arrives here as [`NotifyEvent::Lagged`]: nobody else slows down.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use protocol::notification::{Notification, LAGGED};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::Error;

/// Tuning of a [`NotifyStream`].
#[derive(Debug, Clone)]
pub struct NotifyOptions {
    /// Events buffered between the socket task and the consumer.
    pub capacity: usize,
    /// First wait before reconnecting; doubles per failed attempt.
    pub min_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
    /// A ping this often finds a connection that died without a close (a pulled cable, a
    /// suspended laptop) even when no notifications flow.
    pub ping_interval: Duration,
}

impl Default for NotifyOptions {
    fn default() -> Self {
        NotifyOptions {
            capacity: 4096,
            min_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(5),
            ping_interval: Duration::from_secs(20),
        }
    }
}

/// What a [`NotifyStream`] yields.
#[derive(Debug)]
pub enum NotifyEvent {
    /// About to connect; `attempt` counts from 1 since the last success.
    Connecting { attempt: u32 },
    /// The server accepted the stream; notifications follow.
    Connected,
    /// One notification.
    Notification(Notification),
    /// The server dropped `dropped` notifications because this consumer fell behind.
    Lagged { dropped: u64 },
    /// The connection failed or ended; the next attempt follows after `retry_in`.
    Disconnected { reason: String, retry_in: Duration },
    /// The server refused the credentials; the stream has ended for good.
    Rejected(Error),
}

/// A reconnecting notify stream. Dropping it closes the socket.
pub struct NotifyStream {
    events: mpsc::Receiver<NotifyEvent>,
    task: JoinHandle<()>,
}

impl NotifyStream {
    /// The next event; `None` once the stream ended (after [`NotifyEvent::Rejected`]).
    pub async fn next(&mut self) -> Option<NotifyEvent> {
        self.events.recv().await
    }

    /// Waits for at least one event, then appends everything already waiting, up to
    /// `limit`; returns how many were appended (0 once the stream ended). Consumers that
    /// handle thousands of events a second take them in batches this way.
    pub async fn next_batch(&mut self, buffer: &mut Vec<NotifyEvent>, limit: usize) -> usize {
        self.events.recv_many(buffer, limit.max(1)).await
    }
}

impl Drop for NotifyStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) struct Target {
    pub url: String,
    pub server: String,
    pub api_key: Option<String>,
    pub connect_timeout: Duration,
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

pub(crate) fn spawn(target: Target, options: NotifyOptions) -> NotifyStream {
    let (sender, events) = mpsc::channel(options.capacity.max(1));
    let task = tokio::spawn(run(target, options, sender));
    NotifyStream { events, task }
}

enum ConnectError {
    Rejected(Error),
    Failed(String),
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(target: &Target) -> Result<Socket, ConnectError> {
    let mut request = target.url.as_str().into_client_request().map_err(|e| {
        ConnectError::Rejected(Error::InvalidUrl {
            url: target.url.clone(),
            reason: e.to_string(),
        })
    })?;
    if let Some(key) = &target.api_key {
        let value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
            ConnectError::Rejected(Error::Protocol(
                "the API key contains characters a header cannot carry".into(),
            ))
        })?;
        request.headers_mut().insert("authorization", value);
    }
    let connector = target.tls.clone().map(tokio_tungstenite::Connector::Rustls);
    let connecting =
        tokio_tungstenite::connect_async_tls_with_config(request, None, false, connector);
    match tokio::time::timeout(target.connect_timeout, connecting).await {
        Err(_) => Err(ConnectError::Failed(format!(
            "no answer from {} within {} s",
            target.server,
            target.connect_timeout.as_secs()
        ))),
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
            let status = response.status().as_u16();
            let error = Error::from_response(status, response.body().as_deref().unwrap_or(&[]));
            if matches!(status, 401 | 403) {
                Err(ConnectError::Rejected(error))
            } else {
                Err(ConnectError::Failed(error.to_string()))
            }
        }
        Ok(Err(e)) => Err(ConnectError::Failed(crate::error::root_cause(&e))),
    }
}

async fn run(target: Target, options: NotifyOptions, sender: mpsc::Sender<NotifyEvent>) {
    let mut backoff = options.min_backoff;
    let mut attempt = 0;
    loop {
        attempt += 1;
        if sender
            .send(NotifyEvent::Connecting { attempt })
            .await
            .is_err()
        {
            return;
        }
        let reason = match connect(&target).await {
            Ok(socket) => {
                tracing::debug!(server = %target.server, "notify stream connected");
                attempt = 0;
                backoff = options.min_backoff;
                if sender.send(NotifyEvent::Connected).await.is_err() {
                    return;
                }
                match pump(socket, &sender, options.ping_interval).await {
                    Some(reason) => reason,
                    None => return,
                }
            }
            Err(ConnectError::Rejected(error)) => {
                let _ = sender.send(NotifyEvent::Rejected(error)).await;
                return;
            }
            Err(ConnectError::Failed(reason)) => reason,
        };
        tracing::debug!(server = %target.server, %reason, "notify stream lost");
        let event = NotifyEvent::Disconnected {
            reason,
            retry_in: backoff,
        };
        if sender.send(event).await.is_err() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(options.max_backoff);
    }
}

/// Forwards messages until the socket ends (returns why) or the consumer is gone (`None`).
async fn pump(
    mut socket: Socket,
    sender: &mpsc::Sender<NotifyEvent>,
    ping_interval: Duration,
) -> Option<String> {
    let mut ping = tokio::time::interval(ping_interval);
    ping.tick().await;
    loop {
        let message = tokio::select! {
            message = socket.next() => message,
            _ = ping.tick() => {
                if let Err(e) = socket.send(Message::Ping(Default::default())).await {
                    return Some(crate::error::root_cause(&e));
                }
                continue;
            }
            _ = sender.closed() => return None,
        };
        let text = match message {
            None => return Some("the server closed the stream".into()),
            Some(Err(e)) => return Some(crate::error::root_cause(&e)),
            Some(Ok(Message::Close(frame))) => {
                return Some(match frame {
                    Some(frame) if !frame.reason.is_empty() => {
                        format!("the server closed the stream: {}", frame.reason)
                    }
                    _ => "the server closed the stream".into(),
                })
            }
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(_)) => continue,
        };
        let Some(event) = parse(text.as_str()) else {
            tracing::debug!(message = %text, "ignoring a malformed notification");
            continue;
        };
        if sender.send(event).await.is_err() {
            return None;
        }
    }
}

/// One stream message as an event; `None` for anything that is not a notification.
fn parse(text: &str) -> Option<NotifyEvent> {
    let value: Value = serde_json::from_str(text).ok()?;
    if value.get("name").and_then(Value::as_str) == Some(LAGGED) && value.get("id").is_none() {
        let dropped = value
            .get("data")
            .and_then(|d| d.get("dropped"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        return Some(NotifyEvent::Lagged { dropped });
    }
    serde_json::from_value(value)
        .ok()
        .map(NotifyEvent::Notification)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stream_messages() {
        // PROTOCOL §5: {"id", "name", "data"}; `lagged` has no id.
        match parse(r#"{"id":"d1","name":"online","data":null}"#) {
            Some(NotifyEvent::Notification(n)) => {
                assert_eq!((n.id.as_str(), n.name.as_str()), ("d1", "online"))
            }
            other => panic!("unexpected {other:?}"),
        }
        match parse(r#"{"name":"lagged","data":{"dropped":17}}"#) {
            Some(NotifyEvent::Lagged { dropped }) => assert_eq!(dropped, 17),
            other => panic!("unexpected {other:?}"),
        }
        assert!(parse("not json").is_none());
        assert!(parse(r#"{"name":"online"}"#).is_none());
        assert!(parse("[1,2]").is_none());
    }
}
