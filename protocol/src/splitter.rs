//! Extracts complete top-level JSON values from a device's byte stream
//! (PROTOCOL §1, input framing).
//!
//! Devices may split one value across many WebSocket frames or pack several values,
//! separated by whitespace, into one. [`FrameSplitter`] is fed bytes with
//! [`FrameSplitter::push`] and hands out values with [`FrameSplitter::next_value`].
//!
//! Scanning is incremental: each byte is looked at once, with the string, escape and
//! nesting state carried between pushes. Only the unfinished tail of a value that is
//! split across pushes is copied into the splitter; a value that arrives whole inside
//! one push is parsed straight from the caller's slice. An idle splitter owns no heap
//! memory, which matters with tens of thousands of idle device connections.

use alloc::collections::VecDeque;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use serde_json::Value;

/// Buffer bound used by the server (PROTOCOL §1: default 64 KiB).
pub const DEFAULT_MAX_BUFFER: usize = 64 * 1024;

/// Capacity kept for the next split value once a buffered value completes; anything
/// above it is returned to the allocator.
const RETAINED_CAPACITY: usize = 1024;

/// Why a value could not be produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitError {
    /// A single value grew beyond the buffer bound. The partial value is discarded;
    /// PROTOCOL §1 says the connection should be closed.
    Overflow {
        /// The bound that was exceeded, in bytes.
        limit: usize,
    },
    /// A complete value (balanced brackets) that is not valid JSON, including invalid
    /// UTF-8 inside strings. The value is discarded and splitting continues.
    Malformed(String),
    /// Non-whitespace bytes outside any object or array. They are skipped up to the
    /// next `{` or `[`; one error is reported per run of such bytes.
    Garbage,
}

impl fmt::Display for SplitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SplitError::Overflow { limit } => {
                write!(f, "JSON value exceeds the {limit}-byte input buffer")
            }
            SplitError::Malformed(message) => write!(f, "malformed JSON value: {message}"),
            SplitError::Garbage => f.write_str("unexpected bytes outside a JSON value"),
        }
    }
}

impl core::error::Error for SplitError {}

/// Incremental splitter of a byte stream into top-level JSON objects and arrays.
///
/// ```
/// use protocol::splitter::FrameSplitter;
///
/// let mut splitter = FrameSplitter::default();
/// splitter.push(b"{\"a\":1}\n{\"b\":").unwrap();
/// splitter.push(b"[2]}").unwrap();
/// assert_eq!(splitter.next_value().unwrap().unwrap(), protocol::json!({"a": 1}));
/// assert_eq!(splitter.next_value().unwrap().unwrap(), protocol::json!({"b": [2]}));
/// assert!(splitter.next_value().is_none());
/// assert_eq!(splitter.buffered(), 0);
/// ```
#[derive(Debug)]
pub struct FrameSplitter {
    /// Bytes of the current, unfinished value received in earlier pushes.
    partial: Vec<u8>,
    /// Values (or errors) found but not yet taken by `next_value`, in stream order.
    ready: VecDeque<Result<Value, SplitError>>,
    max_buffer: usize,
    /// Nesting depth of the current value; 0 between values.
    depth: usize,
    in_string: bool,
    /// The previous byte inside a string was an unescaped backslash.
    escaped: bool,
    /// Inside a run of garbage that has already been reported.
    skipping: bool,
}

impl Default for FrameSplitter {
    fn default() -> Self {
        FrameSplitter::new(DEFAULT_MAX_BUFFER)
    }
}

impl FrameSplitter {
    /// A splitter that refuses values longer than `max_buffer` bytes (at least one
    /// byte). Allocates nothing until a value is split across pushes.
    pub fn new(max_buffer: usize) -> Self {
        FrameSplitter {
            partial: Vec::new(),
            ready: VecDeque::new(),
            max_buffer: max_buffer.max(1),
            depth: 0,
            in_string: false,
            escaped: false,
            skipping: false,
        }
    }

    /// Feeds bytes from the stream; complete values become available through
    /// [`FrameSplitter::next_value`].
    ///
    /// Returns [`SplitError::Overflow`] when the value being assembled would exceed
    /// the bound. Values completed earlier in the same push stay available; the
    /// partial value and the rest of `bytes` are dropped, and the splitter resumes at
    /// the next `{` or `[` of a later push.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), SplitError> {
        // Start in `bytes` of the part of the current value that lies in this push.
        let mut segment_start = 0;
        for (index, &byte) in bytes.iter().enumerate() {
            if self.depth == 0 {
                match byte {
                    b'{' | b'[' => {
                        self.depth = 1;
                        self.skipping = false;
                        segment_start = index;
                    }
                    b' ' | b'\t' | b'\n' | b'\r' => {}
                    _ => {
                        if !self.skipping {
                            self.skipping = true;
                            self.ready.push_back(Err(SplitError::Garbage));
                        }
                    }
                }
            } else {
                if self.partial.len() + (index - segment_start) >= self.max_buffer {
                    // This byte would make the value longer than the bound, whether
                    // it arrived in one push or many.
                    self.reset_after_overflow();
                    return Err(SplitError::Overflow {
                        limit: self.max_buffer,
                    });
                }
                if self.scan_value_byte(byte) {
                    self.complete(&bytes[segment_start..=index]);
                }
            }
        }
        if self.depth > 0 {
            self.keep_partial(&bytes[segment_start..]);
        }
        Ok(())
    }

    /// The next complete value, or error, in stream order; `None` when more bytes
    /// are needed.
    pub fn next_value(&mut self) -> Option<Result<Value, SplitError>> {
        let next = self.ready.pop_front();
        if self.ready.is_empty() && self.ready.capacity() > 0 {
            // An idle connection should own nothing.
            self.ready = VecDeque::new();
        }
        next
    }

    /// Bytes of an unfinished value held by the splitter (never more than the
    /// bound). Values already complete but not yet taken are not counted.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// The bound given to [`FrameSplitter::new`].
    pub fn max_buffer(&self) -> usize {
        self.max_buffer
    }

    /// Advances the scanner over one byte inside a value; true when it closed the
    /// top-level value.
    fn scan_value_byte(&mut self, byte: u8) -> bool {
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if byte == b'\\' {
                self.escaped = true;
            } else if byte == b'"' {
                self.in_string = false;
            }
            return false;
        }
        match byte {
            b'"' => self.in_string = true,
            b'{' | b'[' => self.depth += 1,
            b'}' | b']' => {
                // Mismatched kinds (`{]`) are left for the parser to reject.
                self.depth -= 1;
                return self.depth == 0;
            }
            _ => {}
        }
        false
    }

    /// Parses a value whose last part is `tail` and queues the result.
    fn complete(&mut self, tail: &[u8]) {
        let parsed = if self.partial.is_empty() {
            parse(tail)
        } else {
            self.keep_partial(tail);
            let parsed = parse(&self.partial);
            self.release_partial();
            parsed
        };
        self.ready.push_back(parsed);
    }

    /// Stores the unfinished part of a value, growing the buffer no further than the
    /// bound so a large value costs at most `max_buffer` bytes of capacity.
    fn keep_partial(&mut self, bytes: &[u8]) {
        let needed = self.partial.len() + bytes.len();
        if needed > self.partial.capacity() {
            let target = needed
                .max(self.partial.capacity().saturating_mul(2))
                .max(64)
                .min(self.max_buffer.max(needed));
            self.partial.reserve_exact(target - self.partial.len());
        }
        self.partial.extend_from_slice(bytes);
    }

    fn release_partial(&mut self) {
        if self.partial.capacity() > RETAINED_CAPACITY {
            self.partial = Vec::new();
        } else {
            self.partial.clear();
        }
    }

    fn reset_after_overflow(&mut self) {
        self.partial = Vec::new();
        self.depth = 0;
        self.in_string = false;
        self.escaped = false;
        // The rest of the oversized value is not worth a Garbage report per run.
        self.skipping = true;
    }
}

fn parse(bytes: &[u8]) -> Result<Value, SplitError> {
    serde_json::from_slice(bytes).map_err(|error| SplitError::Malformed(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use proptest::prelude::*;
    use serde_json::json;

    fn drain(splitter: &mut FrameSplitter) -> Vec<Result<Value, SplitError>> {
        core::iter::from_fn(|| splitter.next_value()).collect()
    }

    fn values(splitter: &mut FrameSplitter) -> Vec<Value> {
        drain(splitter)
            .into_iter()
            .map(|r| r.expect("no errors expected"))
            .collect()
    }

    #[test]
    fn value_split_across_pushes() {
        // PROTOCOL §1: a device may split one JSON value across many frames.
        let mut s = FrameSplitter::default();
        let text =
            br#"{"method":"Dash.Shadow.Update","params":{"state":{"reported":{"on":true}}}}"#;
        for byte in text.iter() {
            assert!(s.next_value().is_none());
            s.push(core::slice::from_ref(byte)).expect("within bound");
        }
        assert_eq!(
            values(&mut s),
            vec![
                json!({"method":"Dash.Shadow.Update","params":{"state":{"reported":{"on":true}}}})
            ]
        );
        assert_eq!(s.buffered(), 0);
    }

    #[test]
    fn several_values_in_one_push() {
        // PROTOCOL §1: several values in one frame with whitespace or newlines.
        let mut s = FrameSplitter::default();
        s.push(b"{\"a\":1}{\"b\":2}\n\r\n\t [3,{\"c\":[]}]  {\"d\"")
            .expect("within bound");
        assert_eq!(
            values(&mut s),
            vec![json!({"a": 1}), json!({"b": 2}), json!([3, {"c": []}])]
        );
        assert_eq!(s.buffered(), 4);
        s.push(b":4}").expect("within bound");
        assert_eq!(values(&mut s), vec![json!({"d": 4})]);
    }

    #[test]
    fn brackets_and_quotes_inside_strings_do_not_count() {
        let mut s = FrameSplitter::default();
        let text = br#"{"a":"}{][","b":"\"}","c":"\\","d":"\\\"{"}"#;
        // Every cut point, so escape state is carried across pushes too.
        for cut in 0..=text.len() {
            s.push(&text[..cut]).expect("within bound");
            s.push(&text[cut..]).expect("within bound");
            assert_eq!(
                values(&mut s),
                vec![json!({"a": "}{][", "b": "\"}", "c": "\\", "d": "\\\"{"})],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn malformed_value_is_reported_and_skipped() {
        let mut s = FrameSplitter::default();
        s.push(b"{\"a\":} {\"b\":1} [1,,2] {]")
            .expect("within bound");
        let out = drain(&mut s);
        assert_eq!(out.len(), 4);
        assert!(matches!(out[0], Err(SplitError::Malformed(_))));
        assert_eq!(out[1], Ok(json!({"b": 1})));
        assert!(matches!(out[2], Err(SplitError::Malformed(_))));
        assert!(matches!(out[3], Err(SplitError::Malformed(_))));
    }

    #[test]
    fn invalid_utf8_is_malformed_not_a_panic() {
        let mut s = FrameSplitter::default();
        s.push(b"{\"a\":\"\xff\xfe\"}{\"\xc3\":1}{\"ok\":1}")
            .expect("within bound");
        let out = drain(&mut s);
        assert!(matches!(out[0], Err(SplitError::Malformed(_))), "{out:?}");
        assert!(matches!(out[1], Err(SplitError::Malformed(_))), "{out:?}");
        assert_eq!(out[2], Ok(json!({"ok": 1})));
    }

    #[test]
    fn garbage_is_reported_once_per_run_and_skipped() {
        let mut s = FrameSplitter::default();
        s.push(b"hello world {\"a\":1} 42 \"x\" ")
            .expect("within bound");
        s.push(b"more ]} [true]").expect("within bound");
        let out = drain(&mut s);
        assert_eq!(
            out,
            vec![
                Err(SplitError::Garbage),
                Ok(json!({"a": 1})),
                Err(SplitError::Garbage),
                Ok(json!([true])),
            ]
        );
    }

    #[test]
    fn overflow_when_a_value_exceeds_the_bound() {
        // PROTOCOL §1: the buffer is bounded.
        let mut s = FrameSplitter::new(16);
        s.push(b"{\"a\":\"0123456").expect("15 bytes fit");
        assert_eq!(s.buffered(), 13);
        assert_eq!(s.push(b"789\"}"), Err(SplitError::Overflow { limit: 16 }));
        assert_eq!(s.buffered(), 0);
        // A value of exactly the bound is fine, in one push or split.
        s.push(b" {\"a\":\"01234567\"}")
            .expect("16-byte value fits");
        s.push(b"{\"a\":\"0123").expect("fits");
        s.push(b"4567\"}").expect("fits");
        assert_eq!(
            values(&mut s),
            vec![json!({"a": "01234567"}), json!({"a": "01234567"})]
        );
    }

    #[test]
    fn overflow_counts_whole_value_even_in_one_push() {
        let mut s = FrameSplitter::new(8);
        let out = s.push(b"{\"a\":1} {\"abcdefgh\":1} {\"b\":2}");
        assert_eq!(out, Err(SplitError::Overflow { limit: 8 }));
        // Values completed before the overflow remain available.
        assert_eq!(values(&mut s), vec![json!({"a": 1})]);
        // After an overflow the splitter resynchronises on the next value.
        s.push(b"\"rest\"} {\"c\":3}").expect("fits");
        assert_eq!(values(&mut s), vec![json!({"c": 3})]);
    }

    #[test]
    fn idle_splitter_holds_no_memory() {
        let mut s = FrameSplitter::default();
        assert_eq!(s.partial.capacity(), 0);
        assert_eq!(s.ready.capacity(), 0);
        // A value arriving whole is parsed from the caller's slice.
        s.push(b"{\"a\":1}\n").expect("fits");
        assert_eq!(s.partial.capacity(), 0);
        let _ = drain(&mut s);
        assert_eq!(s.ready.capacity(), 0);
        // A large split value gives its capacity back once complete.
        let big = format!("{{\"a\":\"{}\"}}", "x".repeat(10_000));
        let (head, tail) = big.as_bytes().split_at(5_000);
        s.push(head).expect("fits");
        assert!(s.partial.capacity() >= 5_000);
        s.push(tail).expect("fits");
        assert_eq!(s.partial.capacity(), 0);
        let _ = drain(&mut s);
        assert_eq!(s.ready.capacity(), 0);
    }

    #[test]
    fn buffer_capacity_never_exceeds_the_bound() {
        let mut s = FrameSplitter::new(1000);
        let mut pushed = 0;
        s.push(b"[").expect("fits");
        while pushed < 990 {
            s.push(b"1,").expect("fits");
            pushed += 2;
            assert!(s.partial.capacity() <= 1000, "{}", s.partial.capacity());
        }
    }

    #[test]
    fn very_deep_nesting_is_malformed_not_a_stack_overflow() {
        let mut s = FrameSplitter::default();
        let deep = format!("{}{}", "[".repeat(5_000), "]".repeat(5_000));
        s.push(deep.as_bytes()).expect("within bound");
        assert!(matches!(
            s.next_value(),
            Some(Err(SplitError::Malformed(_)))
        ));
    }

    #[test]
    fn byte_at_a_time_scanning_is_linear() {
        // A rescan from the start on every push would take ~10^9 steps here.
        let big = format!("{{\"a\":\"{}\"}}", "x".repeat(60_000));
        let mut s = FrameSplitter::default();
        for byte in big.as_bytes() {
            s.push(core::slice::from_ref(byte)).expect("within bound");
        }
        let value = s.next_value().expect("complete").expect("valid");
        assert_eq!(value["a"].as_str().map(str::len), Some(60_000));
        assert_eq!(s.partial.capacity(), 0);
    }

    #[test]
    fn display_messages() {
        assert_eq!(
            SplitError::Overflow { limit: 10 }.to_string(),
            "JSON value exceeds the 10-byte input buffer"
        );
        assert!(SplitError::Malformed("x".into()).to_string().contains('x'));
        assert!(!SplitError::Garbage.to_string().is_empty());
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            // Binary fractions, because serde_json without `float_roundtrip` may
            // parse other decimals one ulp off.
            (-4_000_000i32..4_000_000).prop_map(|n| Value::from(f64::from(n) / 4.0)),
            "[ -~é\"\\\\{}\\[\\]\\n\\t]{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map("[a-z{}\"\\\\]{0,4}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_top_level() -> impl Strategy<Value = Value> {
        prop_oneof![
            prop::collection::btree_map("[a-z]{1,4}", arb_json(), 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            prop::collection::vec(arb_json(), 0..3).prop_map(Value::from),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn chunked_values_come_out_identical_and_in_order(
            values_in in prop::collection::vec(arb_top_level(), 1..6),
            separators in prop::collection::vec("[ \t\r\n]{0,3}", 6),
            cuts in prop::collection::vec(0usize..64, 0..40),
            one_byte in any::<bool>(),
        ) {
            // PROTOCOL §1: whatever the chunking, the same values in the same order.
            let mut stream = Vec::new();
            for (value, separator) in values_in.iter().zip(separators.iter().cycle()) {
                stream.extend_from_slice(separator.as_bytes());
                stream.extend_from_slice(serde_json::to_string(value).expect("serialisable").as_bytes());
            }
            let mut s = FrameSplitter::default();
            let mut out = Vec::new();
            let mut rest: &[u8] = &stream;
            let mut cut_iter = cuts.iter();
            while !rest.is_empty() {
                let size = if one_byte { 1 } else { cut_iter.next().map_or(rest.len(), |c| c + 1) };
                let (chunk, tail) = rest.split_at(size.min(rest.len()));
                s.push(chunk).map_err(|e| TestCaseError::fail(e.to_string()))?;
                while let Some(item) = s.next_value() {
                    out.push(item.map_err(|e| TestCaseError::fail(e.to_string()))?);
                }
                rest = tail;
            }
            prop_assert_eq!(out, values_in);
            prop_assert_eq!(s.buffered(), 0);
        }

        #[test]
        fn arbitrary_bytes_never_panic_or_exceed_the_bound(
            chunks in prop::collection::vec(
                prop_oneof![
                    prop::collection::vec(any::<u8>(), 0..48),
                    prop::collection::vec(prop::sample::select(b"{}[]\"\\ ,:a1".to_vec()), 0..48),
                ],
                0..24,
            ),
            max_buffer in 1usize..96,
        ) {
            let mut s = FrameSplitter::new(max_buffer);
            for chunk in &chunks {
                let _ = s.push(chunk);
                prop_assert!(s.buffered() <= max_buffer);
                prop_assert!(s.partial.capacity() <= max_buffer.max(64));
                while s.next_value().is_some() {}
            }
        }
    }
}
