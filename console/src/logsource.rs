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

/// A pull that stopped part way: the pages before the failure are in the log, and
/// `offset` is where to go on from.
#[derive(Debug)]
pub struct PullError {
    pub offset: u64,
    pub error: Error,
}

impl std::fmt::Display for PullError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for PullError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// Pulls every stored notification from line `start` on into `log`, until the server has
/// nothing newer; returns the offset to pull from next time. `progress` is told the
/// number of lines pulled so far after each page. A failure keeps the pages already
/// pulled and says where they end, so a retry neither loses nor repeats lines.
///
/// Lines of devices the key cannot see are left out by the server; their offsets are
/// still skipped, so the offset keeps advancing.
pub async fn pull(
    client: &Client,
    log: &mut Log,
    start: u64,
    mut progress: impl FnMut(u64),
) -> Result<u64, PullError> {
    let mut offset = start;
    let mut pulled = 0u64;
    let mut line = Vec::with_capacity(256);
    loop {
        let page = client
            .logs(LogsQuery {
                start: Some(offset),
                limit: Some(PAGE),
            })
            .await
            .map_err(|error| PullError { offset, error })?;
        let count = page.items.len() as u64;
        let mut bytes = Vec::with_capacity(page.items.len() * 160);
        for item in &page.items {
            line.clear();
            serde_json::to_writer(&mut line, item).map_err(|e| PullError {
                offset,
                error: Error::Protocol(format!("cannot re-encode a log line: {e}")),
            })?;
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

/// Whether the log holds a line at `offset` (a line of a device the key cannot see
/// counts: the server still steps over it).
async fn has_line(client: &Client, offset: u64) -> Result<bool, Error> {
    let page = client
        .logs(LogsQuery {
            start: Some(offset),
            limit: Some(1),
        })
        .await?;
    Ok(match page.next {
        Some(next) => next > offset,
        None => !page.items.is_empty(),
    })
}

/// The number of lines in the server's log: `POST /logs` reads forwards from an offset
/// only, so the end is found by doubling, then halving, with one-line pages (about
/// 2·log2(lines) small requests).
pub async fn log_end(client: &Client) -> Result<u64, Error> {
    if !has_line(client, 0).await? {
        return Ok(0);
    }
    // `low` holds a line, `high` does not.
    let mut low = 0u64;
    let mut high = 1u64;
    while has_line(client, high).await? {
        low = high;
        high = high.saturating_mul(2);
        if high == u64::MAX {
            break;
        }
    }
    while high - low > 1 {
        let middle = low + (high - low) / 2;
        if has_line(client, middle).await? {
            low = middle;
        } else {
            high = middle;
        }
    }
    Ok(high)
}

/// The last `count` notifications of the server's log (at most one page), oldest first,
/// with their log times: what a tail shows of the past when it opens.
pub async fn last_lines(
    client: &Client,
    count: u64,
) -> Result<Vec<(f64, herd_client::Notification)>, Error> {
    let count = count.min(PAGE);
    let end = log_end(client).await?;
    if end == 0 || count == 0 {
        return Ok(Vec::new());
    }
    let page = client
        .logs(LogsQuery {
            start: Some(end.saturating_sub(count)),
            limit: Some(count),
        })
        .await?;
    Ok(page
        .items
        .into_iter()
        .filter_map(|item| {
            let logged: protocol::notification::LoggedNotification =
                serde_json::from_value(item).ok()?;
            Some((
                logged.ts,
                herd_client::Notification::new(logged.id, logged.name, logged.data),
            ))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_analytics::Need;

    #[tokio::test]
    async fn a_failed_pull_says_where_to_go_on() {
        // A port nothing listens on: the first page fails, nothing was pulled.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let client = Client::new(&format!("http://127.0.0.1:{port}"), Some("key")).expect("client");
        let mut log = Log::new(Need::ALL);
        let error = pull(&client, &mut log, 42, |_| {})
            .await
            .expect_err("nothing listens");
        assert_eq!(error.offset, 42);
        assert!(error.error.is_connection(), "{error}");
        assert!(log.is_empty());
    }
}
