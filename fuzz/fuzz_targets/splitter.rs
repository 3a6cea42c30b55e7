//! The frame splitter (PROTOCOL §1 input framing) over arbitrary bytes cut at arbitrary
//! places: it never panics, never holds more than its bound, and a stream cut into pieces
//! gives the same values as the stream pushed whole.
#![no_main]

use protocol::splitter::FrameSplitter;
use libfuzzer_sys::fuzz_target;

fn values(splitter: &mut FrameSplitter, out: &mut Vec<String>) {
    while let Some(next) = splitter.next_value() {
        out.push(match next {
            Ok(value) => {
                assert!(value.is_object() || value.is_array(), "only objects and arrays");
                value.to_string()
            }
            Err(e) => format!("error: {e}"),
        });
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let bound = 4096;
    let mut whole = FrameSplitter::new(bound);
    let mut whole_out = Vec::new();
    let whole_overflowed = whole.push(stream).is_err();
    values(&mut whole, &mut whole_out);
    assert!(whole.buffered() <= bound);

    let mut pieces = FrameSplitter::new(bound);
    let mut pieces_out = Vec::new();
    let mut overflowed = false;
    for chunk in stream.chunks(usize::from(cut).max(1)) {
        overflowed |= pieces.push(chunk).is_err();
        assert!(pieces.buffered() <= bound);
        values(&mut pieces, &mut pieces_out);
    }
    // An overflow drops the rest of its push, so only overflow-free streams must agree.
    if !whole_overflowed && !overflowed {
        assert_eq!(whole_out, pieces_out);
        assert_eq!(whole.buffered(), pieces.buffered());
    }
});
