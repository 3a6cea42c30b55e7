//! Notify-stream consumers: each holds `/api/v2/notify` open and measures how long a
//! `Bench.Ping`, or a device's shadow report carrying `reported.t`, took from its scheduled
//! send time to delivery.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{latency, unix_nanos};

/// What one consumer saw during one collection window.
struct Window {
    histogram: Histogram<u64>,
    deliveries: u64,
    lagged_dropped: u64,
    error: Option<String>,
}

impl Window {
    fn new() -> Self {
        Self {
            histogram: latency::new_histogram(),
            deliveries: 0,
            lagged_dropped: 0,
            error: None,
        }
    }
}

/// The sum over all consumers of one window.
pub struct Collected {
    pub histogram: Histogram<u64>,
    pub deliveries: u64,
    pub lagged_dropped: u64,
    pub reporting: usize,
    /// Fewest deliveries any one consumer saw.
    pub min_deliveries: u64,
    pub errors: Vec<String>,
}

pub struct Consumers {
    count: usize,
    generation: watch::Sender<u64>,
    windows: mpsc::UnboundedReceiver<(u64, Window)>,
    /// Deliveries since start, live, so the driver can tell when a phase has drained.
    pub deliveries: Arc<AtomicU64>,
}

impl Consumers {
    /// Opens `count` notify streams; fails unless all of them connect.
    pub async fn connect(url: &str, count: usize) -> Result<Self> {
        crate::client::loopback_target(url)?;
        let (generation, _) = watch::channel(0u64);
        let (window_sender, windows) = mpsc::unbounded_channel();
        let deliveries = Arc::new(AtomicU64::new(0));
        for index in 0..count {
            let connecting = tokio_tungstenite::connect_async(url);
            let (socket, _response) = tokio::time::timeout(Duration::from_secs(10), connecting)
                .await
                .map_err(|_| anyhow!("notify consumer {index}: connect timed out"))?
                .with_context(|| format!("notify consumer {index}: connect"))?;
            if let MaybeTlsStream::Plain(stream) = socket.get_ref() {
                stream.set_nodelay(true)?;
            }
            tokio::spawn(consume(
                socket,
                generation.subscribe(),
                window_sender.clone(),
                deliveries.clone(),
            ));
        }
        Ok(Self {
            count,
            generation,
            windows,
            deliveries,
        })
    }

    /// Closes the current window of every consumer and sums them.
    pub async fn collect(&mut self) -> Result<Collected> {
        let closing = *self.generation.borrow();
        self.generation.send_replace(closing + 1);
        let mut collected = Collected {
            histogram: latency::new_histogram(),
            deliveries: 0,
            lagged_dropped: 0,
            reporting: 0,
            min_deliveries: u64::MAX,
            errors: Vec::new(),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while collected.reporting < self.count {
            let received = tokio::time::timeout_at(deadline, self.windows.recv()).await;
            let Ok(Some((generation, window))) = received else {
                bail!(
                    "only {} of {} consumers reported",
                    collected.reporting,
                    self.count
                );
            };
            if generation != closing {
                continue;
            }
            collected.reporting += 1;
            collected
                .histogram
                .add(&window.histogram)
                .context("merging histograms")?;
            collected.deliveries += window.deliveries;
            collected.min_deliveries = collected.min_deliveries.min(window.deliveries);
            collected.lagged_dropped += window.lagged_dropped;
            collected.errors.extend(window.error);
        }
        Ok(collected)
    }
}

#[derive(Deserialize)]
struct Notification<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(default)]
    data: serde_json::Value,
}

async fn consume(
    mut socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    mut generation: watch::Receiver<u64>,
    windows: mpsc::UnboundedSender<(u64, Window)>,
    deliveries: Arc<AtomicU64>,
) {
    let mut window = Window::new();
    let mut open = true;
    loop {
        tokio::select! {
            changed = generation.changed() => {
                if changed.is_err() {
                    // The driver dropped its handle: the run is over.
                    let _ = socket.close(None).await;
                    return;
                }
                let closing = *generation.borrow_and_update() - 1;
                let error = window.error.clone();
                let finished = std::mem::replace(&mut window, Window::new());
                // A consumer whose socket died keeps saying so in every window.
                window.error = error;
                if windows.send((closing, finished)).is_err() {
                    return;
                }
            }
            message = socket.next(), if open => match message {
                Some(Ok(Message::Text(text))) => on_notification(text.as_str(), &mut window, &deliveries),
                Some(Ok(Message::Close(frame))) => {
                    open = false;
                    window.error = Some(format!("notify stream closed by server: {frame:?}"));
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    open = false;
                    window.error = Some(format!("notify stream failed: {error}"));
                }
                None => {
                    open = false;
                    window.error = Some("notify stream ended".into());
                }
            },
        }
    }
}

fn on_notification(text: &str, window: &mut Window, deliveries: &AtomicU64) {
    let Ok(notification) = serde_json::from_str::<Notification>(text) else {
        window
            .error
            .get_or_insert_with(|| format!("unparsable notification: {text:.200}"));
        return;
    };
    match notification.name.as_ref() {
        "rpc.out.Bench.Ping" => {
            let Some(sent) = notification
                .data
                .get("t")
                .and_then(serde_json::Value::as_u64)
            else {
                window
                    .error
                    .get_or_insert_with(|| format!("ping without t: {text:.200}"));
                return;
            };
            delivered(sent, window, deliveries);
        }
        // A device's shadow report carrying its scheduled send time (herd-cluster-bench);
        // reports without `t` are not part of a fan-out measurement.
        "rpc.out.Dash.Shadow.Update" => {
            if let Some(sent) = notification
                .data
                .pointer("/state/reported/t")
                .and_then(serde_json::Value::as_u64)
            {
                delivered(sent, window, deliveries);
            }
        }
        "lagged" => {
            window.lagged_dropped += notification
                .data
                .get("dropped")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
        }
        // Other events (online, updated, ...) are not part of the measurement.
        _ => {}
    }
}

fn delivered(sent_unix_ns: u64, window: &mut Window, deliveries: &AtomicU64) {
    latency::record_nanos(
        &mut window.histogram,
        unix_nanos().saturating_sub(sent_unix_ns),
    );
    window.deliveries += 1;
    deliveries.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_pings_and_lag() {
        let mut window = Window::new();
        let deliveries = AtomicU64::new(0);
        let t = unix_nanos();
        on_notification(
            &format!(r#"{{"id":"a","name":"rpc.out.Bench.Ping","data":{{"t":{t}}}}}"#),
            &mut window,
            &deliveries,
        );
        on_notification(
            r#"{"name":"lagged","data":{"dropped":5}}"#,
            &mut window,
            &deliveries,
        );
        on_notification(
            r#"{"id":"a","name":"online","data":null}"#,
            &mut window,
            &deliveries,
        );
        on_notification(
            &format!(
                r#"{{"id":"a","name":"rpc.out.Dash.Shadow.Update","data":{{"state":{{"reported":{{"seq":1,"t":{t}}}}}}}}}"#
            ),
            &mut window,
            &deliveries,
        );
        on_notification(
            r#"{"id":"a","name":"rpc.out.Dash.Shadow.Update","data":{"state":{"reported":{"seq":2}}}}"#,
            &mut window,
            &deliveries,
        );
        assert_eq!(window.deliveries, 2);
        assert_eq!(deliveries.load(Ordering::Relaxed), 2);
        assert_eq!(window.lagged_dropped, 5);
        assert!(window.error.is_none());
    }
}
