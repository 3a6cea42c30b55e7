//! The notification log (PROTOCOL §7) as the reports read it when it is not on this
//! machine: pulled from the server with `POST /logs`, page by page, into an analytics
//! [`Log`].
//!
//! Offsets of `POST /logs` count lines across the rotated set, so a caller that keeps the
//! returned offset can pull again later and receive only what was appended since.

use herd_analytics::Log;
use herd_client::{Client, Error, LogsQuery};

/// Notifications asked for per request: the server's largest page.
pub const PAGE: u64 = 10_000;

/// Pulls every stored notification from line `start` on into `log`, until the server has
/// nothing newer; returns the offset to pull from next time. `progress` is told the
/// number of lines pulled so far after each page.
///
/// Lines of devices the key cannot see are left out by the server; their offsets are
/// still skipped, so the offset keeps advancing.
pub async fn pull(
    client: &Client,
    log: &mut Log,
    start: u64,
    mut progress: impl FnMut(u64),
) -> Result<u64, Error> {
    let mut offset = start;
    let mut pulled = 0u64;
    let mut line = Vec::with_capacity(256);
    loop {
        let page = client
            .logs(LogsQuery {
                start: Some(offset),
                limit: Some(PAGE),
            })
            .await?;
        let count = page.items.len() as u64;
        let mut bytes = Vec::with_capacity(page.items.len() * 160);
        for item in &page.items {
            line.clear();
            serde_json::to_writer(&mut line, item)
                .map_err(|e| Error::Protocol(format!("cannot re-encode a log line: {e}")))?;
            bytes.extend_from_slice(&line);
            bytes.push(b'\n');
        }
        log.push(&bytes);
        pulled += count;
        progress(pulled);
        let next = page.next.unwrap_or(offset + count);
        if next <= offset {
            return Ok(offset);
        }
        offset = next;
    }
}
