//! Fetching an image for a device pull (PROTOCOL §10.3) against a real HTTP server on
//! 127.0.0.1: the device token as Bearer, resuming with `Range` after a broken connection,
//! starting over when the server sends the whole image again, and giving up in time.

mod common;

use std::time::Duration;

use common::{noise, quick_download, Faults, ImageServer, WAIT};
use firmware_core::pull::DownloadRequest;
use herd_agent::download::{fetch, http_client, DownloadOptions};
use herd_agent::runner::{Command, DownloadEvent, DownloadFeed};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn request(url: String, token: Option<&str>) -> DownloadRequest {
    DownloadRequest {
        url,
        token: token.map(str::to_string),
        size: None,
        sha256: None,
        signature: None,
        commit_timeout_s: 0,
    }
}

/// What the device loop would have received.
#[derive(Debug, Default)]
struct Received {
    starts: Vec<usize>,
    image: Vec<u8>,
    pieces: usize,
    finished: bool,
    failed: Option<String>,
}

/// Runs `fetch` as the agent does and collects the events it feeds.
async fn download(
    request: DownloadRequest,
    options: DownloadOptions,
) -> (Received, Result<(), String>) {
    let (events, mut inbox) = mpsc::channel(8);
    let feed = DownloadFeed::new(events, CancellationToken::new());
    let task = tokio::spawn(async move {
        let client = http_client(None).expect("client");
        let result = fetch(&client, &request, &options, &feed).await;
        if let Err(message) = &result {
            feed.send(DownloadEvent::Failed(message.clone())).await;
        }
        result
    });
    let mut received = Received::default();
    while !received.finished && received.failed.is_none() {
        let event = tokio::time::timeout(WAIT, inbox.recv())
            .await
            .expect("the download goes on")
            .expect("events until the end");
        let Command::Download(_, event) = event else {
            panic!("not a download event: {event:?}")
        };
        match event {
            DownloadEvent::Started(size) => {
                received.starts.push(size);
                received.image.clear();
            }
            DownloadEvent::Chunk(offset, bytes) => {
                assert_eq!(
                    offset,
                    received.image.len() as u64,
                    "chunks arrive in order"
                );
                received.pieces += 1;
                received.image.extend_from_slice(&bytes);
            }
            DownloadEvent::Finished => received.finished = true,
            DownloadEvent::Failed(message) => received.failed = Some(message),
        }
    }
    (received, task.await.expect("the task ends"))
}

#[tokio::test]
async fn a_broken_download_resumes_where_it_stopped_with_the_token() {
    let image = noise(100_000, 1);
    let server = ImageServer::start(
        image.clone(),
        Faults {
            cut_first_after: Some(40_000),
            ..Faults::default()
        },
    )
    .await;
    let (received, result) = download(
        request(server.url("/api/v2/firmware/x/image"), Some("device-token")),
        quick_download(),
    )
    .await;
    assert_eq!(result, Ok(()));
    assert!(received.finished);
    assert_eq!(received.starts, vec![100_000], "announced once");
    assert!(
        received.image == image,
        "the image arrives whole and in order"
    );
    assert!(received.pieces >= 7, "streamed in pieces of at most 16 KiB");
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0].range, None);
    assert_eq!(requests[1].range.as_deref(), Some("bytes=40000-"));
    for seen in &requests {
        assert_eq!(seen.path, "/api/v2/firmware/x/image");
        assert_eq!(seen.authorization.as_deref(), Some("Bearer device-token"));
    }
}

#[tokio::test]
async fn a_server_that_ignores_the_range_makes_the_download_start_over() {
    let image = noise(50_000, 2);
    let server = ImageServer::start(
        image.clone(),
        Faults {
            cut_first_after: Some(20_000),
            ignore_first_range: true,
            ..Faults::default()
        },
    )
    .await;
    let (received, result) = download(request(server.url("/fw"), None), quick_download()).await;
    assert_eq!(result, Ok(()));
    assert_eq!(received.starts, vec![50_000, 50_000], "started over");
    assert!(received.image == image);
    let requests = server.requests();
    assert_eq!(requests[1].range.as_deref(), Some("bytes=20000-"));
    assert!(
        requests.iter().all(|r| r.authorization.is_none()),
        "no token was given"
    );
}

#[tokio::test]
async fn missing_images_fail_at_once_and_failing_servers_after_a_few_attempts() {
    let faults = |code| Faults {
        always_status: Some(code),
        ..Faults::default()
    };
    let options = DownloadOptions {
        attempts: 3,
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(20),
        ..DownloadOptions::default()
    };
    let missing = ImageServer::start(noise(100, 4), faults(404)).await;
    let (received, result) = download(request(missing.url("/fw"), None), options.clone()).await;
    let message = result.expect_err("no image");
    assert!(message.contains("404"), "{message}");
    assert_eq!(received.failed.as_deref(), Some(message.as_str()));
    assert_eq!(missing.requests().len(), 1, "a 404 is not retried");

    let busy = ImageServer::start(noise(100, 4), faults(503)).await;
    let (_, result) = download(request(busy.url("/fw"), None), options.clone()).await;
    let message = result.expect_err("never available");
    assert!(message.contains("after 3 attempts"), "{message}");
    assert_eq!(busy.requests().len(), 3);

    // Nobody listens on this port: every attempt fails to connect.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let (received, result) = download(request(format!("http://{closed}/fw"), None), options).await;
    assert!(result.expect_err("no server").contains("after 3 attempts"));
    assert!(received.starts.is_empty());
}

#[tokio::test]
async fn a_cancelled_download_stops() {
    let server = ImageServer::start(noise(10_000, 3), Faults::default()).await;
    let (events, mut inbox) = mpsc::channel(1);
    let cancel = CancellationToken::new();
    let feed = DownloadFeed::new(events, cancel.clone());
    let request = request(server.url("/fw"), None);
    let task = tokio::spawn(async move {
        let client = http_client(None).expect("client");
        fetch(&client, &request, &quick_download(), &feed).await
    });
    // The device takes the size, then gives up (it refused the image, say).
    let first = tokio::time::timeout(WAIT, inbox.recv())
        .await
        .expect("an event");
    assert!(matches!(
        first,
        Some(Command::Download(_, DownloadEvent::Started(10_000)))
    ));
    cancel.cancel();
    let result = tokio::time::timeout(WAIT, task)
        .await
        .expect("the download stops")
        .expect("no panic");
    assert_eq!(result, Ok(()));
}
