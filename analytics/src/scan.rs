//! Field-selective JSON scanning of notification lines (PROTOCOL §7).
//!
//! A report needs a handful of fields out of lines that can be a kilobyte long (an `updated`
//! event carries the whole device object), so lines are never parsed into a DOM: the scanner
//! reads the head (`ts`, `id`, `name`), and walks into `data` only along the paths a report
//! asks for, skipping every other value by bracket counting. Lines the server wrote take a
//! fast path that expects its exact key order (`ts`, `id`, `name`, `data`); anything else
//! (other order, whitespace, escapes) takes a general path that accepts any valid object.
//! Either way the whole line must be one JSON object (PROTOCOL §7): the fast path checks
//! the grammar of `data` to the end of the line in the same pass that finds its end, and
//! the general path asks `serde_json`.

use std::borrow::Cow;

use memchr::{memchr, memchr2, memchr3};

/// The fields every report reads from a line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Head<'a> {
    /// Emission time in microseconds since the epoch.
    pub ts_us: i64,
    pub id: Cow<'a, [u8]>,
    pub name: Cow<'a, [u8]>,
    /// The raw `data` value; empty when the line has none.
    pub data: &'a [u8],
}

/// Reads the head of one line (without its newline). `None`: not a notification.
///
/// PROTOCOL §7: a line counts only if the whole of it is one complete JSON object with a
/// numeric `ts` and string `id` and `name`. A torn line (a crash cut it, and the next
/// write went on after it) often ends in `}` and may even start like a good line, so the
/// fast path checks the grammar of everything after the head to the end of the line
/// rather than trusting the closing brace; lines it cannot judge go to `serde_json`.
pub(crate) fn head(line: &[u8]) -> Option<Head<'_>> {
    match fast_head(line) {
        Fast::Valid(head) => Some(head),
        Fast::Invalid => None,
        Fast::Other => general_head(line),
    }
}

/// What the fast path made of a line.
enum Fast<'a> {
    Valid(Head<'a>),
    /// Not JSON, for certain.
    Invalid,
    /// Not in the server's layout, or beyond what the fast check judges.
    Other,
}

/// The server's own layout: `{"ts":<n>,"id":"<id>","name":"<name>","data":<v>}`.
fn fast_head(line: &[u8]) -> Fast<'_> {
    let Some(rest) = line.strip_prefix(b"{\"ts\":") else {
        return Fast::Other;
    };
    let Some((ts_us, used)) = number_us(rest) else {
        return Fast::Other;
    };
    // `number_us` is lenient (leading zeros); the line must still be JSON.
    if json_number(rest, 0) != Ok(used) {
        return Fast::Other;
    }
    let Some(rest) = rest[used..].strip_prefix(b",\"id\":") else {
        return Fast::Other;
    };
    let Some(id) = plain_string(rest) else {
        return Fast::Other;
    };
    let Some(rest) = rest[id.len() + 2..].strip_prefix(b",\"name\":") else {
        return Fast::Other;
    };
    let Some(name) = plain_string(rest) else {
        return Fast::Other;
    };
    let Some(rest) = rest[name.len() + 2..].strip_prefix(b",\"data\":") else {
        return Fast::Other;
    };
    let start = skip_ws(rest, 0);
    let end = match json_value(rest, start) {
        Ok(end) => end,
        Err(Unsure::Invalid) => return Fast::Invalid,
        Err(Unsure::Undecided) => return Fast::Other,
    };
    let close = skip_ws(rest, end);
    if rest.get(close) != Some(&b'}') || skip_ws(rest, close + 1) != rest.len() {
        // Whatever follows the object (another one glued on, a torn tail) spoils the line.
        return Fast::Invalid;
    }
    Fast::Valid(Head {
        ts_us,
        id: Cow::Borrowed(id),
        name: Cow::Borrowed(name),
        data: &rest[start..end],
    })
}

/// The contents of the string that opens at 0 of `bytes` when it needs no decoding: no
/// escapes, no control characters, ASCII only (anything else goes the general way).
fn plain_string(bytes: &[u8]) -> Option<&[u8]> {
    if bytes.first() != Some(&b'"') {
        return None;
    }
    let end = 1 + bytes[1..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || !(0x20..0x80).contains(&b))?;
    (bytes[end] == b'"').then(|| &bytes[1..end])
}

/// Why [`json_value`] gave no end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unsure {
    /// The bytes are not JSON.
    Invalid,
    /// Nested deeper than the fast check follows; `serde_json` decides.
    Undecided,
}

/// Nesting the fast check follows; `serde_json` refuses deeper than 128 anyway.
const MAX_DEPTH: usize = 64;

/// The end of the one JSON value that starts at `at` (no leading whitespace), checking
/// the whole grammar (RFC 8259) on the way: brackets of both kinds, strings with their
/// escapes and UTF-8, numbers, literals, commas and colons.
pub(crate) fn json_value(bytes: &[u8], at: usize) -> Result<usize, Unsure> {
    // Open containers, innermost last: `true` for an object.
    let mut stack = [false; MAX_DEPTH];
    let mut depth = 0;
    let mut at = at;
    'value: loop {
        match bytes.get(at) {
            Some(b'{') => {
                at = skip_ws(bytes, at + 1);
                if bytes.get(at) == Some(&b'}') {
                    at += 1;
                } else {
                    if depth == MAX_DEPTH {
                        return Err(Unsure::Undecided);
                    }
                    stack[depth] = true;
                    depth += 1;
                    at = member_value(bytes, at)?;
                    continue 'value;
                }
            }
            Some(b'[') => {
                at = skip_ws(bytes, at + 1);
                if bytes.get(at) == Some(&b']') {
                    at += 1;
                } else {
                    if depth == MAX_DEPTH {
                        return Err(Unsure::Undecided);
                    }
                    stack[depth] = false;
                    depth += 1;
                    continue 'value;
                }
            }
            Some(b'"') => at = json_string(bytes, at)?,
            Some(b't') => at = literal(bytes, at, b"true")?,
            Some(b'f') => at = literal(bytes, at, b"false")?,
            Some(b'n') => at = literal(bytes, at, b"null")?,
            Some(b'-' | b'0'..=b'9') => at = json_number(bytes, at)?,
            _ => return Err(Unsure::Invalid),
        }
        // After a value: close containers until one goes on.
        loop {
            if depth == 0 {
                return Ok(at);
            }
            at = skip_ws(bytes, at);
            let object = stack[depth - 1];
            match bytes.get(at) {
                Some(b',') => {
                    at = skip_ws(bytes, at + 1);
                    if object {
                        at = member_value(bytes, at)?;
                    }
                    continue 'value;
                }
                Some(b'}') if object => {}
                Some(b']') if !object => {}
                _ => return Err(Unsure::Invalid),
            }
            depth -= 1;
            at += 1;
        }
    }
}

/// From a member's key at `at` to the start of its value.
fn member_value(bytes: &[u8], at: usize) -> Result<usize, Unsure> {
    if bytes.get(at) != Some(&b'"') {
        return Err(Unsure::Invalid);
    }
    let at = skip_ws(bytes, json_string(bytes, at)?);
    if bytes.get(at) != Some(&b':') {
        return Err(Unsure::Invalid);
    }
    Ok(skip_ws(bytes, at + 1))
}

fn literal(bytes: &[u8], at: usize, word: &[u8]) -> Result<usize, Unsure> {
    match bytes.get(at..at + word.len()) {
        Some(found) if found == word => Ok(at + word.len()),
        _ => Err(Unsure::Invalid),
    }
}

/// The end of the JSON number at `at`: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
pub(crate) fn json_number(bytes: &[u8], at: usize) -> Result<usize, Unsure> {
    let digits = |from: usize| {
        let mut end = from;
        while bytes.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
        end
    };
    let mut at = at;
    if bytes.get(at) == Some(&b'-') {
        at += 1;
    }
    match bytes.get(at) {
        Some(b'0') => at += 1,
        Some(b'1'..=b'9') => at = digits(at + 1),
        _ => return Err(Unsure::Invalid),
    }
    if bytes.get(at) == Some(&b'.') {
        let end = digits(at + 1);
        if end == at + 1 {
            return Err(Unsure::Invalid);
        }
        at = end;
    }
    if matches!(bytes.get(at), Some(b'e' | b'E')) {
        at += 1;
        if matches!(bytes.get(at), Some(b'+' | b'-')) {
            at += 1;
        }
        let end = digits(at);
        if end == at {
            return Err(Unsure::Invalid);
        }
        at = end;
    }
    Ok(at)
}

/// Bytes a JSON string cannot hold as they are: the quote, the backslash, control
/// characters; and bytes past ASCII, which must form UTF-8.
const STRING_SPECIAL: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] =
            byte < 0x20 || byte == b'"' as usize || byte == b'\\' as usize || byte >= 0x80;
        byte += 1;
    }
    table
};

/// The end of the JSON string that opens at `at`, checking escapes, control characters
/// and UTF-8.
pub(crate) fn json_string(bytes: &[u8], at: usize) -> Result<usize, Unsure> {
    let mut from = at + 1;
    // Most strings in a notification are keys and short values, which a plain loop ends
    // sooner than a vector search can start.
    let short_end = bytes.len().min(from + 16);
    while from < short_end {
        let byte = bytes[from];
        if !STRING_SPECIAL[byte as usize] {
            from += 1;
            continue;
        }
        match byte {
            b'"' => return Ok(from + 1),
            b'\\' => from = escape_end(bytes, from)?,
            // Past ASCII, or a control character: the general loop judges.
            _ => break,
        }
    }
    loop {
        let rest = bytes.get(from..).ok_or(Unsure::Invalid)?;
        let found = from + memchr2(b'"', b'\\', rest).ok_or(Unsure::Invalid)?;
        plain(&bytes[from..found])?;
        if bytes[found] == b'"' {
            return Ok(found + 1);
        }
        from = escape_end(bytes, found)?;
    }
}

/// Checks the bytes of a string between escapes: no control characters, UTF-8. Written
/// without early exits, so that it runs a vector at a time.
fn plain(span: &[u8]) -> Result<(), Unsure> {
    let (control, wide) = span.iter().fold((false, false), |(control, wide), &b| {
        (control | (b < 0x20), wide | (b >= 0x80))
    });
    if control || (wide && std::str::from_utf8(span).is_err()) {
        return Err(Unsure::Invalid);
    }
    Ok(())
}

/// The end of the escape whose backslash is at `at`.
fn escape_end(bytes: &[u8], at: usize) -> Result<usize, Unsure> {
    match bytes.get(at + 1) {
        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(at + 2),
        Some(b'u') => {
            let hex = bytes.get(at + 2..at + 6).ok_or(Unsure::Invalid)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return Err(Unsure::Invalid);
            }
            // Surrogates must pair up; `serde_json` judges those.
            if matches!(hex[0], b'd' | b'D')
                && matches!(hex[1], b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F')
            {
                return Err(Unsure::Undecided);
            }
            Ok(at + 6)
        }
        _ => Err(Unsure::Invalid),
    }
}

/// Any JSON object with a numeric `ts` and string `id` and `name`; other members ignored.
/// The line must be JSON as a whole, which `serde_json` decides: this path serves lines
/// not in the server's layout, which are rare.
/// Any JSON object with a numeric `ts` and string `id` and `name`; other members ignored.
fn general_head(line: &[u8]) -> Option<Head<'_>> {
    serde_json::from_slice::<serde_json::Value>(line).ok()?;
    let start = skip_ws(line, 0);
    let mut ts_us = None;
    let mut id = None;
    let mut name = None;
    let mut data: &[u8] = &[];
    let end = members(line, start, |key, value| {
        match key {
            b"ts" => ts_us = number_us(value).filter(|(_, used)| *used == value.len()),
            b"id" => id = string(value),
            b"name" => name = string(value),
            b"data" => data = value,
            _ => {}
        }
        true
    })?;
    // Anything but whitespace after the object makes the line invalid.
    if skip_ws(line, end) != line.len() {
        return None;
    }
    Some(Head {
        ts_us: ts_us?.0,
        id: id?,
        name: name?,
        data,
    })
}

pub(crate) fn skip_ws(bytes: &[u8], mut at: usize) -> usize {
    while at < bytes.len() && matches!(bytes[at], b' ' | b'\t' | b'\r' | b'\n') {
        at += 1;
    }
    at
}

/// A JSON number at the start of `bytes` as whole microseconds, and the bytes it took.
/// Plain decimals are converted exactly; exponents go through `f64`.
pub(crate) fn number_us(bytes: &[u8]) -> Option<(i64, usize)> {
    seconds_micros(bytes).or_else(|| any_number_us(bytes))
}

/// The server's own timestamps, `<10 digits>.<6 digits>` not followed by more digits or
/// an exponent, read eight digits at a time.
fn seconds_micros(bytes: &[u8]) -> Option<(i64, usize)> {
    let head: &[u8; 18] = bytes.get(..18)?.try_into().ok()?;
    if head[10] != b'.' || matches!(head[17], b'0'..=b'9' | b'e' | b'E') {
        return None;
    }
    let high = eight_digits(head[..8].try_into().ok()?)?;
    let low = eight_digits([
        head[8], head[9], head[11], head[12], head[13], head[14], head[15], head[16],
    ])?;
    // high: the first eight digits of the seconds; low: two more, then six of micros.
    let micros = i64::from(high) * 100_000_000 + i64::from(low);
    Some((micros, 17))
}

/// Eight ASCII digits as a number, or `None` if any byte is not a digit.
fn eight_digits(bytes: [u8; 8]) -> Option<u32> {
    let word = u64::from_le_bytes(bytes);
    let digits = word.wrapping_sub(0x3030_3030_3030_3030);
    // A byte below '0' wraps and sets its top bit; one above '9' does so once 0x76 is
    // added. The lowest bad byte is computed exactly (the digits below it neither borrow
    // nor carry), so it always shows.
    if (digits | digits.wrapping_add(0x7676_7676_7676_7676)) & 0x8080_8080_8080_8080 != 0 {
        return None;
    }
    // Pairs, then quads, then the whole: the first byte is the most significant digit.
    let pairs = (digits.wrapping_mul(10) + (digits >> 8)) & 0x00ff_00ff_00ff_00ff;
    let quads = (pairs.wrapping_mul(100) + (pairs >> 16)) & 0x0000_ffff_0000_ffff;
    Some(((quads.wrapping_mul(10_000) + (quads >> 32)) & 0xffff_ffff) as u32)
}

fn any_number_us(bytes: &[u8]) -> Option<(i64, usize)> {
    let mut at = 0;
    let negative = bytes.first() == Some(&b'-');
    if negative {
        at = 1;
    }
    let int_start = at;
    let mut whole: i64 = 0;
    while let Some(digit) = bytes.get(at).filter(|b| b.is_ascii_digit()) {
        whole = whole
            .checked_mul(10)?
            .checked_add(i64::from(digit - b'0'))?;
        at += 1;
    }
    if at == int_start {
        return None;
    }
    let mut micros: i64 = 0;
    let mut scale = 100_000;
    let mut round_up = false;
    if bytes.get(at) == Some(&b'.') {
        at += 1;
        let frac_start = at;
        while let Some(digit) = bytes.get(at).filter(|b| b.is_ascii_digit()) {
            let digit = i64::from(digit - b'0');
            if scale > 0 {
                micros += digit * scale;
                scale /= 10;
            } else if scale == 0 {
                // The seventh decimal rounds; later ones cannot change the result except
                // at exact halves, which the server's microsecond clock never writes.
                round_up = digit >= 5;
                scale = -1;
            }
            at += 1;
        }
        if at == frac_start {
            return None;
        }
    }
    if matches!(bytes.get(at), Some(b'e' | b'E')) {
        let mut end = at + 1;
        while end < bytes.len() && matches!(bytes[end], b'+' | b'-' | b'0'..=b'9') {
            end += 1;
        }
        let text = std::str::from_utf8(&bytes[..end]).ok()?;
        let value: f64 = text.parse().ok()?;
        let us = (value * 1e6).round();
        if !us.is_finite() || us.abs() > 9.0e18 {
            return None;
        }
        return Some((us as i64, end));
    }
    let total = whole
        .checked_mul(1_000_000)?
        .checked_add(micros + i64::from(round_up))?;
    Some((if negative { -total } else { total }, at))
}

/// End of the string whose opening quote is at `at`.
fn skip_string(bytes: &[u8], at: usize) -> Option<usize> {
    let mut from = at + 1;
    // Most strings in a notification are keys and short values, which a plain loop ends
    // sooner than a vector search can start.
    let short_end = bytes.len().min(from + 16);
    while from < short_end {
        match bytes[from] {
            b'"' => return Some(from + 1),
            b'\\' => from += 2,
            _ => from += 1,
        }
    }
    loop {
        let found = from + memchr2(b'"', b'\\', bytes.get(from..)?)?;
        if bytes[found] == b'"' {
            return Some(found + 1);
        }
        from = found + 2;
    }
}

/// End of the object or array that opens at `at`. Only the opening kind's brackets are
/// counted: the other kind nests in balanced pairs inside it, and strings are skipped, so
/// a SIMD search for three bytes does the walking.
fn skip_container(bytes: &[u8], at: usize) -> Option<usize> {
    let (open, close) = match bytes[at] {
        b'{' => (b'{', b'}'),
        _ => (b'[', b']'),
    };
    let mut depth = 0usize;
    let mut from = at;
    loop {
        let found = from + memchr3(b'"', open, close, bytes.get(from..)?)?;
        match bytes[found] {
            b'"' => {
                from = skip_string(bytes, found)?;
                continue;
            }
            b if b == open => depth += 1,
            _ => {
                depth -= 1;
                if depth == 0 {
                    return Some(found + 1);
                }
            }
        }
        from = found + 1;
    }
}

/// End of the value that starts at `at` (no leading whitespace).
fn skip_value(bytes: &[u8], at: usize) -> Option<usize> {
    match *bytes.get(at)? {
        b'"' => skip_string(bytes, at),
        b'{' | b'[' => skip_container(bytes, at),
        _ => {
            let mut end = at;
            while end < bytes.len()
                && !matches!(
                    bytes[end],
                    b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n'
                )
            {
                end += 1;
            }
            (end > at).then_some(end)
        }
    }
}

/// Calls `visit(key, value)` for each member of the object that opens at `at`, stopping
/// early when it returns false. Keys are raw (escapes not decoded; no key Herd reads has
/// one). Returns the end of the object, or of the last member visited when stopped early;
/// `None` when the object is malformed up to that point.
pub(crate) fn members<'a>(
    bytes: &'a [u8],
    at: usize,
    mut visit: impl FnMut(&'a [u8], &'a [u8]) -> bool,
) -> Option<usize> {
    if bytes.get(at) != Some(&b'{') {
        return None;
    }
    let mut pos = skip_ws(bytes, at + 1);
    if bytes.get(pos) == Some(&b'}') {
        return Some(pos + 1);
    }
    loop {
        if bytes.get(pos) != Some(&b'"') {
            return None;
        }
        let key_end = skip_string(bytes, pos)?;
        let key = &bytes[pos + 1..key_end - 1];
        pos = skip_ws(bytes, key_end);
        if bytes.get(pos) != Some(&b':') {
            return None;
        }
        let value_start = skip_ws(bytes, pos + 1);
        let value_end = skip_value(bytes, value_start)?;
        if !visit(key, &bytes[value_start..value_end]) {
            return Some(value_end);
        }
        pos = skip_ws(bytes, value_end);
        match bytes.get(pos) {
            Some(b',') => pos = skip_ws(bytes, pos + 1),
            Some(b'}') => return Some(pos + 1),
            _ => return None,
        }
    }
}

/// The value of `key` in the object `value`, if it is one and has it.
#[cfg(test)]
pub(crate) fn get<'a>(value: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut found = None;
    members(value, 0, |k, v| {
        if k == key {
            found = Some(v);
            false
        } else {
            true
        }
    })?;
    found
}

/// The value at `keys` inside the object `value`, descending without first measuring the
/// objects on the way: each byte before the target is scanned once, where repeated
/// [`get`]s would skip each enclosing object whole before looking inside it.
pub(crate) fn path<'a>(value: &'a [u8], keys: &[&[u8]]) -> Option<&'a [u8]> {
    let mut rest = value;
    for (depth, key) in keys.iter().enumerate() {
        let start = member_start(rest, key)?;
        if depth + 1 == keys.len() {
            let end = skip_value(rest, start)?;
            return Some(&rest[start..end]);
        }
        rest = &rest[start..];
    }
    Some(value)
}

/// Where the value of `key` starts in the object that opens at 0 of `bytes` (which may go
/// on past the object's end).
fn member_start(bytes: &[u8], key: &[u8]) -> Option<usize> {
    if bytes.first() != Some(&b'{') {
        return None;
    }
    let mut pos = skip_ws(bytes, 1);
    loop {
        if bytes.get(pos) != Some(&b'"') {
            return None;
        }
        let key_end = skip_string(bytes, pos)?;
        let found = &bytes[pos + 1..key_end - 1] == key;
        pos = skip_ws(bytes, key_end);
        if bytes.get(pos) != Some(&b':') {
            return None;
        }
        let value_start = skip_ws(bytes, pos + 1);
        if found {
            return Some(value_start);
        }
        pos = skip_ws(bytes, skip_value(bytes, value_start)?);
        match bytes.get(pos) {
            Some(b',') => pos = skip_ws(bytes, pos + 1),
            _ => return None,
        }
    }
}

/// The contents of a JSON string value, with escapes decoded when there are any.
pub(crate) fn string(value: &[u8]) -> Option<Cow<'_, [u8]>> {
    let inner = value.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if memchr(b'\\', inner).is_none() {
        return Some(Cow::Borrowed(inner));
    }
    let decoded: String = serde_json::from_slice(value).ok()?;
    Some(Cow::Owned(decoded.into_bytes()))
}

/// `true` or `false`; anything else is not a boolean.
pub(crate) fn boolean(value: &[u8]) -> Option<bool> {
    match value {
        b"true" => Some(true),
        b"false" => Some(false),
        _ => None,
    }
}

/// A small non-negative integer such as an OTA status code.
pub(crate) fn small_int(value: &[u8]) -> Option<u8> {
    let (us, used) = number_us(value)?;
    if used != value.len() || us % 1_000_000 != 0 {
        return None;
    }
    u8::try_from(us / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_and_general_heads_agree() {
        let line = br#"{"ts":1700000000.5,"id":"d1","name":"online","data":null}"#;
        let spaced = br#" { "name" : "online", "data": null, "id":"d1", "ts": 1.7000000005e9 } "#;
        let Fast::Valid(fast) = fast_head(line) else {
            panic!("fast path");
        };
        assert_eq!(fast.ts_us, 1_700_000_000_500_000);
        assert_eq!(&*fast.id, b"d1");
        assert_eq!(fast.data, b"null");
        assert!(matches!(fast_head(spaced), Fast::Other));
        let general = head(spaced).expect("general path");
        assert_eq!(general, fast);
    }

    #[test]
    fn escaped_ids_are_decoded() {
        let line = br#"{"ts":1,"id":"a\"b","name":"online","data":null}"#;
        let parsed = head(line).expect("valid line");
        assert_eq!(&*parsed.id, b"a\"b");
    }

    #[test]
    fn invalid_lines_are_rejected() {
        for line in [
            &b""[..],
            b"{",
            b"[1,2]",
            br#"{"ts":"x","id":"a","name":"online","data":null}"#,
            br#"{"ts":1,"id":"a","name":"online","data":null} trailing"#,
            br#"{"ts":1,"name":"online","data":null}"#,
            br#"{"ts":1,"id":"a","name":"online","data":{"x":"#,
        ] {
            assert!(head(line).is_none(), "{}", String::from_utf8_lossy(line));
        }
    }

    /// A good line in the server's layout whose `data` carries a shadow update that
    /// switches a light on.
    const SWITCH_ON: &[u8] = br#"{"ts":1767225600.031823,"id":"lamp","name":"rpc.out.Dash.Shadow.Update","data":{"state":{"reported":{"on":true,"ota":{"status":0,"fw_version":"1.0"}}}}}"#;
    const ONLINE: &[u8] = br#"{"ts":1767225601.000000,"id":"lamp","name":"online","data":null}"#;

    /// PROTOCOL §7: torn lines are invalid as a whole, however they end.
    #[test]
    fn torn_lines_are_rejected() {
        assert!(head(SWITCH_ON).is_some());
        assert!(head(ONLINE).is_some());
        let glued = |a: &[u8], b: &[u8]| [a, b].concat();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            // Cut inside `data`, and the next write went on after it: ends in `}`.
            (
                "cut mid-object, next line glued on",
                glued(&SWITCH_ON[..60], ONLINE),
            ),
            // Cut after `"on":true`, and a later line's end supplied the `}}`.
            (
                "ends in }} and looks like a switch-on",
                glued(&SWITCH_ON[..108], b"}}"),
            ),
            ("cut mid-object ending in }", glued(&SWITCH_ON[..108], b"}")),
            (
                "truncated last line",
                SWITCH_ON[..SWITCH_ON.len() - 3].to_vec(),
            ),
            ("two objects on one line", glued(ONLINE, ONLINE)),
            ("trailing garbage", glued(ONLINE, b" x")),
            ("trailing brace", glued(ONLINE, b"}")),
            (
                "unbalanced brackets",
                br#"{"ts":1,"id":"a","name":"online","data":[{]}}"#.to_vec(),
            ),
            (
                "bare word",
                br#"{"ts":1,"id":"a","name":"online","data":{"a":nul}}"#.to_vec(),
            ),
            (
                "leading zero",
                br#"{"ts":01,"id":"a","name":"online","data":null}"#.to_vec(),
            ),
            (
                "control character",
                b"{\"ts\":1,\"id\":\"a\",\"name\":\"online\",\"data\":\"a\x01\"}".to_vec(),
            ),
            (
                "bad escape",
                br#"{"ts":1,"id":"a","name":"online","data":"\x"}"#.to_vec(),
            ),
            (
                "bad UTF-8",
                b"{\"ts\":1,\"id\":\"a\",\"name\":\"online\",\"data\":\"\xff\"}".to_vec(),
            ),
        ];
        for (what, line) in cases {
            assert!(
                head(&line).is_none(),
                "{what}: {}",
                String::from_utf8_lossy(&line)
            );
            assert!(
                serde_json::from_slice::<serde_json::Value>(&line).is_err(),
                "{what} is not JSON"
            );
        }
        assert_eq!(
            head(
                r#"{"ts":1,"id":"a","name":"online","data":"K\u00fcche \ud83d\ude00 Küche"}"#
                    .as_bytes()
            )
            .map(|h| h.ts_us),
            Some(1_000_000)
        );
    }

    #[test]
    fn grammar_matches_serde_json() {
        for text in [
            &b"0"[..],
            b"-0.5e+3",
            b"1E9",
            b"[]",
            b"{}",
            br#"{"a":[1,{"b":[]}],"c":"\u0041"}"#,
            b" [ 1 , 2 ] ",
            b"-",
            b"1.",
            b"1e",
            b".5",
            b"00",
            b"[1,]",
            br#"{"a":1,}"#,
            br#"{"a"}"#,
            br#"{"a":}"#,
            b"[1 2]",
            br#"{1:2}"#,
            b"tru",
            b"nulll",
            br#""\ud800""#,
        ] {
            let start = skip_ws(text, 0);
            let ours = match json_value(text, start) {
                Ok(end) => Some(skip_ws(text, end) == text.len()),
                Err(Unsure::Invalid) => Some(false),
                Err(Unsure::Undecided) => None,
            };
            let theirs = serde_json::from_slice::<serde_json::Value>(text).is_ok();
            if let Some(ours) = ours {
                assert_eq!(ours, theirs, "{}", String::from_utf8_lossy(text));
            }
        }
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert_eq!(json_value(deep.as_bytes(), 0), Err(Unsure::Undecided));
        assert!(
            head(format!(r#"{{"ts":1,"id":"a","name":"x","data":{deep}}}"#).as_bytes()).is_some()
        );
    }

    #[test]
    fn numbers_convert_to_microseconds() {
        assert_eq!(number_us(b"12"), Some((12_000_000, 2)));
        assert_eq!(number_us(b"1.25,"), Some((1_250_000, 4)));
        assert_eq!(number_us(b"-1.5"), Some((-1_500_000, 4)));
        assert_eq!(number_us(b"0.0000005"), Some((1, 9)));
        assert_eq!(number_us(b"1e3"), Some((1_000_000_000, 3)));
        assert_eq!(number_us(b"1."), None);
        assert_eq!(number_us(b"x"), None);
        assert_eq!(number_us(b"99999999999999999999"), None);
        assert_eq!(
            number_us(b"1767225600.031823,"),
            Some((1_767_225_600_031_823, 17))
        );
        assert_eq!(eight_digits(*b"01234567"), Some(1_234_567));
        assert_eq!(eight_digits(*b"99999999"), Some(99_999_999));
        assert_eq!(eight_digits(*b"0123456:"), None);
        assert_eq!(eight_digits(*b"/1234567"), None);
        assert_eq!(
            number_us(b"1767225600.0318234"),
            Some((1_767_225_600_031_823, 18))
        );
        assert_eq!(
            number_us(b"1767225600.031823e1"),
            Some((17_672_256_000_318_230, 19))
        );
    }

    #[test]
    fn nested_lookup_skips_other_values() {
        let data = br#"{"info":{"a":[1,{"b":"}"}],"fw_version":"1.0"},"shadow":{"state":{"reported":{"on":true}}}}"#;
        let shadow = get(data, b"shadow").expect("shadow");
        let reported = get(get(shadow, b"state").expect("state"), b"reported").expect("reported");
        assert_eq!(get(reported, b"on").and_then(boolean), Some(true));
        let info = get(data, b"info").expect("info");
        assert_eq!(
            get(info, b"fw_version").and_then(string).as_deref(),
            Some(&b"1.0"[..])
        );
        assert_eq!(get(b"null", b"x"), None);
        assert_eq!(
            path(data, &[b"shadow", b"state", b"reported"]),
            Some(&br#"{"on":true}"#[..])
        );
        assert_eq!(path(data, &[b"shadow", b"nope"]), None);
        assert_eq!(path(b"{}", &[b"a"]), None);
        assert_eq!(path(br#"{"a":1"#, &[b"b"]), None);
        assert_eq!(get(br#"{"a":"\"}"}"#, b"a"), Some(&br#""\"}""#[..]));
    }

    /// Lines as the generator writes them, a sample of every kind.
    fn sample_lines() -> Vec<Vec<u8>> {
        let config = crate::generate::Config {
            devices: 20,
            bytes: 64 << 10,
            ..crate::generate::Config::default()
        };
        let mut out = Vec::new();
        crate::generate::generate(&config, &mut out).expect("generate");
        out.split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .map(<[u8]>::to_vec)
            .collect()
    }

    proptest::proptest! {
        /// PROTOCOL §7: a line cut anywhere, alone or with any other line written after
        /// it, is never accepted; and nothing is accepted that is not JSON.
        #[test]
        fn cut_lines_are_never_accepted(
            first in proptest::prelude::any::<proptest::sample::Index>(),
            second in proptest::prelude::any::<proptest::sample::Index>(),
            cut in proptest::prelude::any::<proptest::sample::Index>(),
            tail in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            thread_local! {
                static LINES: Vec<Vec<u8>> = sample_lines();
            }
            LINES.with(|lines| {
                let line = first.get(lines);
                let next = second.get(lines);
                proptest::prop_assert!(head(line).is_some());
                // A torn line kept at least its first byte, and lost at least its last.
                let at = 1 + cut.index(line.len() - 1);
                let torn = &line[..at];
                proptest::prop_assert!(head(torn).is_none());
                // After a crash the next write starts a whole line after the torn one.
                let glued = [torn, next.as_slice()].concat();
                proptest::prop_assert!(head(&glued).is_none(), "{}", String::from_utf8_lossy(&glued));
                // Any bytes after the cut: accepted only when `serde_json` agrees it is JSON.
                let spliced = [torn, &next[tail.index(next.len())..]].concat();
                if head(&spliced).is_some() {
                    proptest::prop_assert!(
                        serde_json::from_slice::<serde_json::Value>(&spliced).is_ok(),
                        "{}",
                        String::from_utf8_lossy(&spliced)
                    );
                }
                Ok(())
            })?;
        }

        #[test]
        fn fast_timestamps_read_like_any_number(text in "[0-9]{10}\\.[0-9]{6}[,0-9eE.}]?") {
            let bytes = text.as_bytes();
            proptest::prop_assert_eq!(number_us(bytes), any_number_us(bytes));
        }

        #[test]
        fn eight_digits_reads_only_digits(bytes in proptest::array::uniform8(proptest::prelude::any::<u8>())) {
            let expected = std::str::from_utf8(&bytes)
                .ok()
                .filter(|text| text.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|text| text.parse::<u32>().ok());
            proptest::prop_assert_eq!(eight_digits(bytes), expected);
        }

        #[test]
        fn near_timestamps_read_like_any_number(text in "[0-9/:]{10}[.,][0-9/:]{6}[,0-9eE.}]?") {
            let bytes = text.as_bytes();
            proptest::prop_assert_eq!(number_us(bytes), any_number_us(bytes));
        }
    }

    #[test]
    fn small_ints() {
        assert_eq!(small_int(b"3"), Some(3));
        assert_eq!(small_int(b"3.5"), None);
        assert_eq!(small_int(b"-1"), None);
        assert_eq!(small_int(b"300"), None);
    }
}
