//! Shadow merge and delta (PROTOCOL §4): a stored document and an update, both arbitrary
//! JSON. An update is applied all or nothing; an accepted one moves the version by one,
//! keeps the document within its limits, and the stored form reads back the same; the
//! delta only names keys of `desired`.
#![no_main]

use protocol::shadow::{Limits, Shadow, Update};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    // The input is `DOCUMENT \0 UPDATE`.
    let mut parts = data.splitn(2, |&b| b == 0);
    let (Some(document), Some(update)) = (parts.next(), parts.next()) else {
        return;
    };
    let (Ok(document), Ok(update)) = (
        serde_json::from_slice::<Value>(document),
        serde_json::from_slice::<Value>(update),
    ) else {
        return;
    };
    let Ok(mut shadow) = Shadow::from_document(&document) else {
        return;
    };
    let Ok(update) = Update::from_value(&update) else {
        return;
    };
    let limits = Limits {
        max_bytes: 4096,
        max_depth: 6,
    };
    let before = shadow.clone();
    match shadow.apply(&update, 1_700_000_000.5, &limits) {
        Err(_) => assert_eq!(shadow, before, "a refused update changes nothing"),
        Ok(_) => {
            assert_eq!(shadow.version, before.version + 1);
            assert!(shadow.document_size() <= limits.max_bytes);
            let stored = shadow.to_document();
            let back = Shadow::from_document(&stored).expect("the stored form reads back");
            assert_eq!(back, shadow);
        }
    }
    for key in shadow.delta().keys() {
        assert!(shadow.desired.contains_key(key), "delta key {key} not desired");
    }
    let _ = shadow.to_document_with_delta();
});
