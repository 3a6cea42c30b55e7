//! The notification-log reader (PROTOCOL §7) over an arbitrary file: only whole
//! notification lines come back, and reading page by page gives what one read gives.
#![no_main]

use herd_server::notification_log::{is_notification, read_page};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&page, content)) = data.split_first() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::write(dir.path().join("notification.log"), content).expect("write the log");
    let all = read_page(dir.path(), 0, 100_000).expect("read the log");
    assert!(all.items.iter().all(is_notification));
    let lines = content.iter().filter(|&&b| b == b'\n').count() as u64;
    assert!(all.items.len() as u64 <= lines);
    assert!(all.next <= lines);

    let limit = usize::from(page % 7) + 1;
    let mut paged = Vec::new();
    let mut start = 0;
    loop {
        let next = read_page(dir.path(), start, limit).expect("read a page");
        assert!(next.items.len() <= limit);
        if next.items.is_empty() {
            break;
        }
        assert!(next.next > start, "a page moves forward");
        start = next.next;
        paged.extend(next.items);
    }
    assert_eq!(paged, all.items);
});
