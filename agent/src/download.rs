//! Fetching a firmware image for a device pull (PROTOCOL §10.3) over HTTP(S), for the
//! Linux agent and for simulated fleets alike.
//!
//! [`fetch`] streams the image to the device loop as it arrives, never holding it whole:
//! it announces the size ([`DownloadEvent::Started`]), hands over the bytes in pieces of
//! at most [`DownloadOptions::piece`] ([`DownloadEvent::Chunk`]) and says when all are in
//! ([`DownloadEvent::Finished`]). The device token goes along as `Authorization: Bearer`
//! when the engine put it in the request (only for the server the device is connected
//! to). A broken connection is resumed with `Range: bytes=<received>-` after a backoff; a
//! server that answers a range request with the whole image (200) makes the download
//! start over. Whether the image may boot is decided by the engine, not here.
//!
//! ```no_run
//! # async fn demo(request: firmware_core::pull::DownloadRequest, feed: herd_agent::runner::DownloadFeed) {
//! use herd_agent::download::{fetch, http_client, DownloadOptions};
//! use herd_agent::runner::DownloadEvent;
//!
//! let client = http_client(None).expect("an HTTP client");
//! if let Err(message) = fetch(&client, &request, &DownloadOptions::default(), &feed).await {
//!     feed.send(DownloadEvent::Failed(message)).await;
//! }
//! # }
//! ```

use std::time::Duration;

use firmware_core::pull::DownloadRequest;
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::StatusCode;

use crate::runner::{DownloadEvent, DownloadFeed};

/// Retry policy and piece size of downloads.
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// Attempts in a row that may fail before the download is given up; an attempt that
    /// brought bytes starts the count again.
    pub attempts: u32,
    /// Wait before the first retry; doubles per failure up to `backoff_max`.
    pub backoff_initial: Duration,
    /// Longest wait between attempts.
    pub backoff_max: Duration,
    /// Largest piece handed to the device at once.
    pub piece: usize,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            attempts: 5,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(15),
            piece: 16 * 1024,
        }
    }
}

/// An HTTP client for downloads: connect and read timeouts but no limit on the whole
/// transfer (a big image on a slow link takes as long as it takes), and few idle
/// connections kept, since a fleet of thousands shares one client.
/// `tls` decides whom `https://` trusts, as for the device socket.
pub fn http_client(tls: Option<&rustls::ClientConfig>) -> reqwest::Result<reqwest::Client> {
    // https:// needs one process-wide rustls provider; ring is what the workspace builds.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(8)
        .pool_idle_timeout(Duration::from_secs(30));
    if let Some(tls) = tls {
        builder = builder.tls_backend_preconfigured(tls.clone());
    }
    builder.build()
}

/// How one attempt ended.
enum Attempt {
    /// Every byte was handed over.
    Complete,
    /// The device no longer wants the image.
    Cancelled,
    /// Worth trying again from where it stopped.
    Retry(String),
    /// Trying again would not help.
    Fatal(String),
}

/// Where a download stands across attempts.
struct Progress {
    /// Bytes handed to the device.
    received: u64,
    /// The image's size, once announced to the device.
    size: Option<u64>,
}

/// Fetches `request` and feeds it through `feed` (see the module docs). Returns `Ok` when
/// the image was handed over whole or the device gave up on it; the error says why the
/// download failed, for the caller to report as [`DownloadEvent::Failed`].
pub async fn fetch(
    client: &reqwest::Client,
    request: &DownloadRequest,
    options: &DownloadOptions,
    feed: &DownloadFeed,
) -> Result<(), String> {
    let mut progress = Progress {
        received: 0,
        size: None,
    };
    let mut failures = 0;
    let mut delay = options.backoff_initial;
    loop {
        let before = progress.received;
        match attempt(client, request, options, feed, &mut progress).await {
            Attempt::Complete => {
                feed.send(DownloadEvent::Finished).await;
                return Ok(());
            }
            Attempt::Cancelled => return Ok(()),
            Attempt::Fatal(message) => return Err(message),
            Attempt::Retry(message) => {
                if progress.received > before {
                    failures = 0;
                    delay = options.backoff_initial;
                }
                failures += 1;
                if failures >= options.attempts.max(1) {
                    return Err(format!(
                        "download failed after {failures} attempts in a row: {message}"
                    ));
                }
                tracing::debug!(url = %request.url, received = progress.received, %message, "download interrupted; resuming");
                tokio::select! {
                    _ = feed.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(options.backoff_max.max(options.backoff_initial));
            }
        }
    }
}

/// `bytes START-END/TOTAL` -> `(START, TOTAL)`; the total may be `*`.
fn content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        total => Some(total.parse().ok()?),
    };
    Some((start.trim().parse().ok()?, total))
}

async fn attempt(
    client: &reqwest::Client,
    request: &DownloadRequest,
    options: &DownloadOptions,
    feed: &DownloadFeed,
    progress: &mut Progress,
) -> Attempt {
    let mut get = client.get(&request.url);
    if let Some(token) = &request.token {
        get = get.bearer_auth(token);
    }
    let resuming = progress.received > 0;
    if resuming {
        get = get.header(RANGE, format!("bytes={}-", progress.received));
    }
    let sent = tokio::select! {
        _ = feed.cancelled() => return Attempt::Cancelled,
        sent = get.send() => sent,
    };
    let mut response = match sent {
        Ok(response) => response,
        Err(e) => return Attempt::Retry(e.to_string()),
    };
    let status = response.status();
    let size = match status {
        StatusCode::OK => {
            // The whole image: new, or a server that ignored the range (start over).
            let Some(size) = response.content_length().or(request.size) else {
                return Attempt::Fatal("the server did not say how large the image is".into());
            };
            progress.received = 0;
            progress.size = None;
            size
        }
        StatusCode::PARTIAL_CONTENT if resuming => {
            let range = response
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|value| value.to_str().ok())
                .and_then(content_range);
            match range {
                Some((start, total)) if start == progress.received => {
                    match (total, progress.size) {
                        (Some(total), Some(size)) if total != size => {
                            return Attempt::Fatal(format!(
                                "the image changed during the download ({size} bytes, now {total})"
                            ))
                        }
                        (_, Some(size)) => size,
                        (_, None) => return Attempt::Fatal("resumed an unstarted download".into()),
                    }
                }
                _ => {
                    return Attempt::Fatal(format!(
                        "the server resumed at another byte than {} (Content-Range {:?})",
                        progress.received,
                        response.headers().get(CONTENT_RANGE)
                    ))
                }
            }
        }
        status if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS => {
            return Attempt::Retry(format!("the server answered {status}"));
        }
        status => return Attempt::Fatal(format!("the server answered {status}")),
    };
    if progress.size.is_none() {
        let Ok(announced) = usize::try_from(size) else {
            return Attempt::Fatal(format!("an image of {size} bytes is too large"));
        };
        if !feed.send(DownloadEvent::Started(announced)).await {
            return Attempt::Cancelled;
        }
        progress.size = Some(size);
    }
    loop {
        let next = tokio::select! {
            _ = feed.cancelled() => return Attempt::Cancelled,
            next = response.chunk() => next,
        };
        let bytes = match next {
            Ok(Some(bytes)) => bytes,
            Ok(None) => break,
            Err(e) => return Attempt::Retry(e.to_string()),
        };
        for piece in bytes.chunks(options.piece.max(1)) {
            if progress.received + piece.len() as u64 > size {
                return Attempt::Fatal(format!(
                    "the server sent more than the {size} bytes it announced"
                ));
            }
            let event = DownloadEvent::Chunk(progress.received, piece.to_vec());
            if !feed.send(event).await {
                return Attempt::Cancelled;
            }
            progress.received += piece.len() as u64;
        }
    }
    if progress.received < size {
        Attempt::Retry(format!(
            "the connection closed after {} of {size} bytes",
            progress.received
        ))
    } else {
        Attempt::Complete
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_are_read() {
        assert_eq!(content_range("bytes 100-199/200"), Some((100, Some(200))));
        assert_eq!(content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(content_range("items 1-2/3"), None);
        assert_eq!(content_range("bytes x-9/10"), None);
    }
}
