//! The frame parser (PROTOCOL §2): any bytes give a frame or an error, and a parsed frame
//! written back parses to the same frame.
#![no_main]

use protocol::frame::Frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = Frame::from_slice(data) else {
        return;
    };
    let _ = frame.kind();
    let _ = frame.params_or_null();
    let text = frame.to_json();
    let again = Frame::from_slice(text.as_bytes()).expect("a written frame parses");
    assert_eq!(again, frame);
});
