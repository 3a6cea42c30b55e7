use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command as Process, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde_json::Value;

use super::*;

/// 2024-03-10T12:00:00Z.
const NOON: u64 = 1_710_072_000;
const DAY: u64 = 86_400;

fn line(seq: u64) -> String {
    format!(
        r#"{{"ts":{}.{:06},"id":"device-{}","name":"test","data":{{"seq":{seq}}}}}"#,
        NOON + seq / 1000,
        seq % 1000,
        seq % 7
    )
}

fn seq(item: &Value) -> u64 {
    item["data"]["seq"].as_u64().expect("a test line")
}

fn config(dir: &Path) -> LogConfig {
    LogConfig::new(dir)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A wall clock the test moves by hand.
fn manual_clock(seconds: &Arc<AtomicU64>) -> Clock {
    let seconds = Arc::clone(seconds);
    Arc::new(move || UNIX_EPOCH + Duration::from_secs(seconds.load(Ordering::SeqCst)))
}

/// Every item of the log, read in pages of `page` so page boundaries are exercised.
fn read_all(dir: &Path, page: usize) -> Vec<Value> {
    let mut items = Vec::new();
    let mut start = 0;
    loop {
        let got = read_page(dir, start, page).expect("read_page");
        if got.items.is_empty() {
            assert_eq!(got.next, start, "an empty page does not move");
            return items;
        }
        assert!(got.next > start);
        start = got.next;
        items.extend(got.items);
    }
}

fn file_names(dir: &Path) -> Vec<String> {
    log_files(dir)
        .expect("log_files")
        .iter()
        .map(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

fn total_bytes(dir: &Path) -> u64 {
    log_files(dir)
        .unwrap_or_default()
        .iter()
        .filter_map(|path| fs::metadata(path).ok())
        .map(|meta| meta.len())
        .sum()
}

fn raw_lines(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for path in log_files(dir).expect("log_files") {
        let text = fs::read_to_string(&path).expect("read");
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{path:?} ends mid-line"
        );
        lines.extend(text.lines().map(str::to_string));
    }
    lines
}

#[test]
fn the_handle_can_be_shared_between_tasks() {
    fn shareable<T: Send + Sync + Clone + 'static>() {}
    shareable::<NotificationLog>();
}

#[test]
fn keeps_append_order_across_threads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = NotificationLog::open(config(dir.path())).expect("open");
    // Like the hub: a sequence number is taken and the line appended under one lock, so
    // the file must come out sorted by it.
    let next = Arc::new(Mutex::new(0u64));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let log = log.clone();
            let next = Arc::clone(&next);
            std::thread::spawn(move || {
                for _ in 0..5_000 {
                    let mut next = next.lock().expect("lock");
                    log.append(line(*next));
                    *next += 1;
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("thread");
    }
    log.shutdown();
    let seqs: Vec<u64> = read_all(dir.path(), 777).iter().map(seq).collect();
    assert_eq!(seqs, (0..20_000).collect::<Vec<_>>());
}

#[tokio::test]
async fn flush_makes_appended_lines_readable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = NotificationLog::open(LogConfig {
        // Without the flush these lines would sit in the buffer for an hour.
        flush_interval: Duration::from_secs(3600),
        ..config(dir.path())
    })
    .expect("open");
    for round in 0..3u64 {
        for i in 0..10 {
            log.append(line(round * 10 + i));
        }
        log.flush().await.expect("flush");
        let page = read_page(dir.path(), 0, 1000).expect("read");
        assert_eq!(page.items.len() as u64, (round + 1) * 10);
        assert_eq!(page.next, (round + 1) * 10);
    }
    let page = read_page(dir.path(), 25, 3).expect("read");
    assert_eq!(page.items.iter().map(seq).collect::<Vec<_>>(), [25, 26, 27]);
    assert_eq!(page.next, 28);
    log.shutdown();
}

#[tokio::test]
async fn fsync_mode_writes_and_rotates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = NotificationLog::open(LogConfig {
        fsync: true,
        rotate_bytes: 1_000,
        ..config(dir.path())
    })
    .expect("open");
    for i in 0..50 {
        log.append(line(i));
    }
    log.flush().await.expect("flush");
    let seqs: Vec<u64> = read_all(dir.path(), 9).iter().map(seq).collect();
    assert_eq!(seqs, (0..50).collect::<Vec<_>>());
    assert!(file_names(dir.path()).len() > 1);
    log.shutdown();
}

/// `/dev/full` fails every write with ENOSPC, like a full disk.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_failing_disk_is_reported_by_flush() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink("/dev/full", dir.path().join(CURRENT_FILE)).expect("symlink");
    let log = NotificationLog::open(config(dir.path())).expect("open");
    log.append(line(0));
    let error = log.flush().await.expect_err("a full disk");
    assert_eq!(error.raw_os_error(), Some(28), "ENOSPC: {error}");
    // Appending goes on without blocking, and the lines are retried.
    log.append(line(1));
    assert!(log.flush().await.is_err());
    log.shutdown();
}

#[test]
fn shutdown_writes_everything_and_later_calls_are_harmless() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = NotificationLog::open(LogConfig {
        flush_interval: Duration::from_secs(3600),
        ..config(dir.path())
    })
    .expect("open");
    for i in 0..10_000 {
        log.append(line(i));
    }
    log.shutdown();
    assert_eq!(raw_lines(dir.path()).len(), 10_000);
    log.shutdown();
    log.append(line(10_000));
    runtime()
        .block_on(log.flush())
        .expect("flush after shutdown");
    assert_eq!(raw_lines(dir.path()).len(), 10_000);
}

#[test]
fn dropping_every_handle_still_writes_the_buffer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = NotificationLog::open(LogConfig {
        flush_interval: Duration::from_secs(3600),
        ..config(dir.path())
    })
    .expect("open");
    let thread = log
        .inner
        .thread
        .lock()
        .expect("lock")
        .take()
        .expect("writer thread");
    for i in 0..100 {
        log.append(line(i));
    }
    drop(log);
    thread
        .join()
        .expect("writer ends when the handles are gone");
    assert_eq!(raw_lines(dir.path()).len(), 100);
}

#[test]
fn reopening_continues_the_same_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The test lines' `ts` say 2024-03-10, which reopening takes as the file's start date.
    let now = Arc::new(AtomicU64::new(NOON));
    for round in 0..3 {
        let log =
            NotificationLog::open_with_clock(config(dir.path()), manual_clock(&now)).expect("open");
        for i in 0..5 {
            log.append(line(round * 5 + i));
        }
        log.shutdown();
    }
    assert_eq!(file_names(dir.path()), ["notification.log"]);
    let seqs: Vec<u64> = read_all(dir.path(), 4).iter().map(seq).collect();
    assert_eq!(seqs, (0..15).collect::<Vec<_>>());
}

#[test]
fn torn_tail_is_never_read_and_is_cut_on_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = NotificationLog::open(config(dir.path())).expect("open");
    log.append(line(0));
    log.append(line(1));
    log.shutdown();
    let path = dir.path().join(CURRENT_FILE);
    let whole = fs::metadata(&path).expect("meta").len();
    let torn = &line(2)[..20];
    fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(torn.as_bytes()))
        .expect("tear");

    let page = read_page(dir.path(), 0, 10).expect("read");
    assert_eq!(page.items.len(), 2);
    assert_eq!(page.next, 2, "a torn tail takes no offset");
    assert!(read_page(dir.path(), 2, 10).expect("read").items.is_empty());

    let log = NotificationLog::open(config(dir.path())).expect("reopen");
    assert_eq!(fs::metadata(&path).expect("meta").len(), whole);
    log.append(line(2));
    log.shutdown();
    let seqs: Vec<u64> = read_all(dir.path(), 10).iter().map(seq).collect();
    assert_eq!(seqs, [0, 1, 2]);
    assert_eq!(raw_lines(dir.path()).len(), 3);
}

#[test]
fn a_file_that_is_all_torn_is_emptied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(CURRENT_FILE);
    // Longer than the backwards scan's chunk, with no newline anywhere.
    fs::write(&path, "x".repeat(200_000)).expect("write");
    assert_eq!(writer::repair_tail(&path).expect("repair"), 200_000);
    assert_eq!(fs::metadata(&path).expect("meta").len(), 0);
    assert_eq!(writer::repair_tail(&path).expect("repair again"), 0);
}

#[test]
fn unreadable_lines_are_skipped_but_keep_their_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = [
        line(0),
        "{not json".to_string(),
        line(2),
        "42".to_string(),
        String::new(),
        line(5),
    ]
    .join("\n")
        + "\n";
    fs::write(dir.path().join(CURRENT_FILE), text).expect("write");
    let page = read_page(dir.path(), 0, 10).expect("read");
    assert_eq!(page.items.iter().map(seq).collect::<Vec<_>>(), [0, 2, 5]);
    assert_eq!(page.next, 6);
    let page = read_page(dir.path(), 1, 1).expect("read");
    assert_eq!(page.items.iter().map(seq).collect::<Vec<_>>(), [2]);
    assert_eq!(page.next, 3);
    let page = read_page(dir.path(), 3, 1).expect("read");
    assert_eq!(page.items.iter().map(seq).collect::<Vec<_>>(), [5]);
    assert_eq!(page.next, 6);
}

#[test]
fn start_past_the_end_returns_nothing_and_stays_put() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nothing-here");
    assert_eq!(
        read_page(&missing, 7, 10).expect("read"),
        LogPage {
            items: Vec::new(),
            next: 7
        }
    );
    let log = NotificationLog::open(config(dir.path())).expect("open");
    for i in 0..3 {
        log.append(line(i));
    }
    log.shutdown();
    for start in [3, 4, 1_000_000, u64::MAX] {
        let page = read_page(dir.path(), start, 10).expect("read");
        assert!(page.items.is_empty());
        assert_eq!(page.next, start);
    }
    let page = read_page(dir.path(), 0, 0).expect("read");
    assert!(page.items.is_empty());
    assert_eq!(page.next, 0);
}

#[test]
fn size_rotation_reads_as_one_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rotate_bytes = 2_000;
    let log = NotificationLog::open(LogConfig {
        rotate_bytes,
        ..config(dir.path())
    })
    .expect("open");
    let total = 3_000;
    for i in 0..total {
        log.append(line(i));
    }
    log.shutdown();

    let names = file_names(dir.path());
    assert!(names.len() > 10, "{names:?}");
    assert_eq!(names.last().map(String::as_str), Some(CURRENT_FILE));
    for name in &names[..names.len() - 1] {
        assert!(parse_name(name).is_some(), "{name}");
    }
    for path in log_files(dir.path()).expect("files") {
        assert!(fs::metadata(&path).expect("meta").len() <= rotate_bytes);
    }
    // The files in log_files order hold the lines in append order.
    let seqs: Vec<u64> = raw_lines(dir.path())
        .iter()
        .map(|l| seq(&serde_json::from_str(l).expect("json")))
        .collect();
    assert_eq!(seqs, (0..total).collect::<Vec<_>>());

    let seqs: Vec<u64> = read_all(dir.path(), 13).iter().map(seq).collect();
    assert_eq!(seqs, (0..total).collect::<Vec<_>>());
    for start in [0, 1, 17, 1023, 1024, 1025, 2047, 2500, total - 1] {
        let page = read_page(dir.path(), start, 40).expect("read");
        let expected: Vec<u64> = (start..(start + 40).min(total)).collect();
        assert_eq!(page.items.iter().map(seq).collect::<Vec<_>>(), expected);
        assert_eq!(page.next, start + expected.len() as u64);
    }
}

#[test]
fn reading_stays_right_while_the_log_grows_and_rotates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = NotificationLog::open(LogConfig {
        rotate_bytes: 40_000,
        ..config(dir.path())
    })
    .expect("open");
    let rt = runtime();
    let mut written = 0u64;
    let mut read = 0u64;
    for round in 0..40u64 {
        for _ in 0..(50 + round * 13) {
            log.append(line(written));
            written += 1;
        }
        rt.block_on(log.flush()).expect("flush");
        // Pages from where the last one stopped, so indexes are reused and extended.
        loop {
            let page = read_page(dir.path(), read, 64).expect("read");
            for item in &page.items {
                assert_eq!(seq(item), read);
                read += 1;
            }
            assert_eq!(page.next, read);
            if page.items.is_empty() {
                break;
            }
        }
        assert_eq!(read, written);
        // A deep random-ish offset agrees too.
        let probe = (round * 7919) % written;
        let page = read_page(dir.path(), probe, 1).expect("read");
        assert_eq!(page.items.iter().map(seq).collect::<Vec<_>>(), [probe]);
    }
    assert!(file_names(dir.path()).len() > 3);
    log.shutdown();
}

#[test]
fn a_reader_racing_the_writer_sees_every_line_once_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = NotificationLog::open(LogConfig {
        rotate_bytes: 8 * 1024,
        flush_interval: Duration::from_millis(1),
        ..config(dir.path())
    })
    .expect("open");
    let total = 30_000u64;
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            for i in 0..total {
                log.append(line(i));
                if i % 500 == 0 {
                    std::thread::yield_now();
                }
            }
            log.shutdown();
        })
    };
    let mut read = 0u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while read < total && Instant::now() < deadline {
        let page = read_page(dir.path(), read, 100).expect("read");
        for item in &page.items {
            assert_eq!(seq(item), read, "offset and content agree");
            read += 1;
        }
        assert_eq!(page.next, read);
    }
    writer.join().expect("writer");
    assert_eq!(read, total);
    assert!(file_names(dir.path()).len() > 100);
}

#[test]
fn a_replaced_file_is_indexed_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(CURRENT_FILE);
    let text = |range: std::ops::Range<u64>, tag: &str| -> String {
        range
            .map(|i| {
                format!(r#"{{"ts":1,"id":"x","name":"test","tag":"{tag}","data":{{"seq":{i}}}}}"#)
                    + "\n"
            })
            .collect()
    };
    fs::write(&path, text(0..3000, "first")).expect("write");
    assert_eq!(read_all(dir.path(), 500).len(), 3000);
    fs::write(&path, text(0..5000, "other")).expect("write");
    let items = read_all(dir.path(), 500);
    assert_eq!(items.len(), 5000);
    assert_eq!(
        items.iter().map(seq).collect::<Vec<_>>(),
        (0..5000).collect::<Vec<_>>()
    );
    assert!(items.iter().all(|item| item["tag"] == "other"));
}

#[test]
fn log_files_orders_by_date_then_number() {
    let dir = tempfile::tempdir().expect("tempdir");
    let names = [
        "notification.log",
        "notification.log.2024-01-02",
        "notification.log.2024-01-01.10",
        "notification.log.2024-01-01.2",
        "notification.log.2024-01-01",
        "notification.log.2023-12-31.1",
        "notification.log.2024-01-01.junk",
        "notification.log.2024-1-01",
        "notification.log.2024-01-01.+3",
        "notification.log.2024-01-01.",
        "notification.logx",
        "other.log",
    ];
    for name in names {
        fs::write(dir.path().join(name), "").expect("write");
    }
    fs::create_dir(dir.path().join("notification.log.2024-01-03")).expect("dir");
    assert_eq!(
        file_names(dir.path()),
        [
            "notification.log.2023-12-31.1",
            "notification.log.2024-01-01",
            "notification.log.2024-01-01.2",
            "notification.log.2024-01-01.10",
            "notification.log.2024-01-02",
            "notification.log",
        ]
    );
}

#[test]
fn a_new_utc_day_rotates_to_the_day_the_file_started() {
    let dir = tempfile::tempdir().expect("tempdir");
    let now = Arc::new(AtomicU64::new(NOON));
    let log =
        NotificationLog::open_with_clock(config(dir.path()), manual_clock(&now)).expect("open");
    let rt = runtime();
    log.append(line(0));
    rt.block_on(log.flush()).expect("flush");
    now.store(NOON + DAY, Ordering::SeqCst);
    log.append(line(1));
    rt.block_on(log.flush()).expect("flush");
    // A clock that steps back must not rotate or name files out of order.
    now.store(NOON - 3 * DAY, Ordering::SeqCst);
    log.append(line(2));
    rt.block_on(log.flush()).expect("flush");
    now.store(NOON + 2 * DAY, Ordering::SeqCst);
    log.append(line(3));
    log.shutdown();
    assert_eq!(
        file_names(dir.path()),
        [
            "notification.log.2024-03-10",
            "notification.log.2024-03-11",
            "notification.log"
        ]
    );
    let seqs: Vec<u64> = read_all(dir.path(), 2).iter().map(seq).collect();
    assert_eq!(seqs, [0, 1, 2, 3]);
}

#[test]
fn daily_rotation_can_be_turned_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let now = Arc::new(AtomicU64::new(NOON));
    let log = NotificationLog::open_with_clock(
        LogConfig {
            rotate_daily: false,
            ..config(dir.path())
        },
        manual_clock(&now),
    )
    .expect("open");
    let rt = runtime();
    log.append(line(0));
    rt.block_on(log.flush()).expect("flush");
    now.store(NOON + DAY, Ordering::SeqCst);
    log.append(line(1));
    log.shutdown();
    assert_eq!(file_names(dir.path()), ["notification.log"]);
}

#[test]
fn an_existing_file_keeps_the_date_of_its_first_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 2020-01-01T00:00:05Z
    fs::write(
        dir.path().join(CURRENT_FILE),
        "{\"ts\":1577836805.25,\"id\":\"d\",\"name\":\"online\",\"data\":null}\n",
    )
    .expect("write");
    let now = Arc::new(AtomicU64::new(NOON));
    let log =
        NotificationLog::open_with_clock(config(dir.path()), manual_clock(&now)).expect("open");
    log.append(line(1));
    log.shutdown();
    assert_eq!(
        file_names(dir.path()),
        ["notification.log.2020-01-01", "notification.log"]
    );
    let items = read_all(dir.path(), 10);
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["name"], "online");
    assert_eq!(seq(&items[1]), 1);
}

#[test]
fn rotated_names_never_sort_before_existing_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A file from a clock that was once ahead.
    fs::write(
        dir.path().join("notification.log.2030-06-01.4"),
        line(0) + "\n",
    )
    .expect("write");
    let now = Arc::new(AtomicU64::new(NOON));
    let log = NotificationLog::open_with_clock(
        LogConfig {
            rotate_bytes: 300,
            ..config(dir.path())
        },
        manual_clock(&now),
    )
    .expect("open");
    for i in 1..10 {
        log.append(line(i));
    }
    log.shutdown();
    let names = file_names(dir.path());
    assert_eq!(names[0], "notification.log.2030-06-01.4");
    assert_eq!(names[1], "notification.log.2030-06-01.5");
    let seqs: Vec<u64> = read_all(dir.path(), 3).iter().map(seq).collect();
    assert_eq!(seqs, (0..10).collect::<Vec<_>>());
}

#[test]
fn a_line_with_a_raw_newline_stays_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = NotificationLog::open(config(dir.path())).expect("open");
    log.append("{\"ts\":1,\"id\":\"d\",\"name\":\"test\",\n\"data\":{\"seq\":0}}".to_string());
    log.append(String::new());
    log.append(line(1));
    log.shutdown();
    let seqs: Vec<u64> = read_all(dir.path(), 10).iter().map(seq).collect();
    assert_eq!(seqs, [0, 1]);
    assert_eq!(raw_lines(dir.path()).len(), 2);
}

#[test]
fn many_lines_append_quickly_and_deep_offsets_resolve() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = NotificationLog::open(config(dir.path())).expect("open");
    let total = 200_000u64;
    let lines: Vec<String> = (0..total).map(line).collect();
    let started = Instant::now();
    for line in lines {
        log.append(line);
    }
    let appended = started.elapsed();
    runtime().block_on(log.flush()).expect("flush");
    let flushed = started.elapsed();
    eprintln!(
        "{total} appends took {appended:?} ({:.0}/s); written after {flushed:?}",
        total as f64 / appended.as_secs_f64()
    );
    let started = Instant::now();
    let page = read_page(dir.path(), total - 1, 10).expect("read");
    let first_read = started.elapsed();
    assert_eq!(page.items.iter().map(seq).collect::<Vec<_>>(), [total - 1]);
    let started = Instant::now();
    let page = read_page(dir.path(), total - 5000, 2).expect("read");
    eprintln!(
        "deep read: first {first_read:?} (builds the index), then {:?}",
        started.elapsed()
    );
    assert_eq!(
        page.items.iter().map(seq).collect::<Vec<_>>(),
        [total - 5000, total - 4999]
    );
    log.shutdown();
}

/// Set in the re-executed test binary: the directory the child appends to until killed.
const CRASH_CHILD_DIR: &str = "HERD_NOTIFICATION_LOG_CRASH_CHILD";

/// Child side of [`a_killed_writer_leaves_only_whole_lines`]; does nothing in a normal run.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CRASH_CHILD_DIR) else {
        return;
    };
    let log = NotificationLog::open(LogConfig {
        rotate_bytes: 64 * 1024,
        flush_interval: Duration::from_millis(1),
        ..LogConfig::new(dir)
    })
    .expect("open");
    let rt = runtime();
    let mut stdout = std::io::stdout();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut next = 0u64;
    // Bounded so an orphaned child cannot run forever.
    while Instant::now() < deadline {
        for _ in 0..10_000 {
            log.append(line(next));
            next += 1;
        }
        rt.block_on(log.flush()).expect("flush");
        writeln!(stdout, "tick {next}")
            .and_then(|()| stdout.flush())
            .expect("stdout");
    }
}

#[test]
fn a_killed_writer_leaves_only_whole_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let module = module_path!()
        .split_once("::")
        .map_or(module_path!(), |(_, rest)| rest);
    let mut child = Process::new(std::env::current_exe().expect("test binary"))
        .args([&format!("{module}::crash_child"), "--exact", "--nocapture"])
        .env(CRASH_CHILD_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut ticks = 0;
    let mut flushed = 0u64;
    for output in BufReader::new(stdout).lines() {
        let output = output.expect("child output");
        if let Some(count) = output.strip_prefix("tick ") {
            flushed = count.parse().expect("count");
            ticks += 1;
            // Killed while it is busy with the next batch of appends.
            if ticks == 3 {
                break;
            }
        }
    }
    assert_eq!(ticks, 3, "the child did not get going");
    // Kill only once the writer is well into unflushed lines, so the kill lands mid-stream.
    let flushed_bytes = total_bytes(dir.path());
    let deadline = Instant::now() + Duration::from_secs(20);
    while total_bytes(dir.path()) < flushed_bytes + 100_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().expect("kill");
    child.wait().expect("reap");

    let log = NotificationLog::open(config(dir.path())).expect("reopen");
    log.shutdown();
    let lines = raw_lines(dir.path());
    assert!(lines.len() as u64 >= flushed, "flushed lines were lost");
    for (i, text) in lines.iter().enumerate() {
        let value: Value = serde_json::from_str(text).expect("every line is whole JSON");
        assert_eq!(seq(&value), i as u64, "lines are contiguous and in order");
    }
    assert_eq!(read_all(dir.path(), 5000).len(), lines.len());
    eprintln!(
        "killed after {flushed} flushed lines; {} lines survived in {} files",
        lines.len(),
        log_files(dir.path()).expect("files").len()
    );
}

#[test]
fn a_writer_that_fails_is_started_again_and_later_lines_are_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = NotificationLog::open(config(dir.path())).expect("open");
    let runtime = runtime();
    log.append(line(1));
    runtime.block_on(log.flush()).expect("flush");
    log.crash_writer();
    log.append(line(2));
    log.append(line(3));
    runtime
        .block_on(log.flush())
        .expect("the writer answers again");
    assert_eq!(log.restarts(), 1);
    let seqs: Vec<u64> = read_all(dir.path(), 10).iter().map(seq).collect();
    assert_eq!(
        seqs,
        [1, 2, 3],
        "nothing appended after the failure is lost"
    );
    log.shutdown();
}
