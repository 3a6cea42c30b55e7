//! The analytics scanner (PROTOCOL §7 whole-line rule) over arbitrary bytes: it never
//! panics, and bytes pushed in pieces, as a growing file is followed, count the same as
//! bytes pushed whole.
#![no_main]

use herd_analytics::{Log, Need};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, content)) = data.split_first() else {
        return;
    };
    let mut whole = Log::new(Need::ALL);
    whole.push(content);
    whole.end_file();

    let mut pieces = Log::new(Need::ALL);
    for chunk in content.chunks(usize::from(cut).max(1)) {
        pieces.push(chunk);
    }
    pieces.end_file();

    assert_eq!(whole.stats(), pieces.stats());
    assert_eq!(whole.len(), pieces.len());
    assert_eq!(pieces.pending_bytes(), 0);
});
