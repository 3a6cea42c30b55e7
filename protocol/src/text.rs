//! Text rules both ends share: the `*`/`?` globs of `conf_acl` (PROTOCOL §9) and of
//! notification filters, and the JSON type names error messages use.

use serde_json::Value;

/// Matches `text` against a glob where `*` is any run of characters and `?` one character.
///
/// Iterative with a single backtrack point: linear enough for keys and event names, no
/// recursion on a small device stack, and no exponential blow-up on `*a*a*a*b`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    // Byte offsets, always on character boundaries.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while let Some(tc) = text[t..].chars().next() {
        match pattern[p..].chars().next() {
            Some(pc) if pc == '?' || pc == tc => {
                p += pc.len_utf8();
                t += tc.len_utf8();
            }
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            _ => {
                let Some((star_p, star_t)) = star else {
                    return false;
                };
                // Let the last `*` swallow one more character and retry after it.
                let skipped = text[star_t..].chars().next().map_or(1, char::len_utf8);
                p = star_p + 1;
                t = star_t + skipped;
                star = Some((star_p, t));
            }
        }
    }
    pattern[p..].bytes().all(|b| b == b'*')
}

/// "a string", "an object", ...: how error messages name a JSON value's type.
pub fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;
    use proptest::prelude::*;

    #[test]
    fn globs() {
        assert!(glob_match("rpc.out.*", "rpc.out.Log"));
        assert!(glob_match("*", ""));
        assert!(glob_match("", ""));
        assert!(!glob_match("", "a"));
        assert!(glob_match("on?ine", "online"));
        assert!(glob_match("*line", "offline"));
        assert!(glob_match("wifi.*.ssid", "wifi.sta.ssid"));
        assert!(!glob_match("rpc.in.*", "rpc.out.Log"));
        assert!(!glob_match("online", "online2"));
        assert!(glob_match("*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaab"));
        assert!(!glob_match("*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaa"));
        // `?` is one character, not one byte.
        assert!(glob_match("l?mp", "lämp"));
        assert!(glob_match("*é", "caféé"));
        assert!(!glob_match("l?mp", "lämmp"));
    }

    /// The definition, slowly: what the fast matcher must agree with.
    fn reference(pattern: &[char], text: &[char]) -> bool {
        match pattern.split_first() {
            None => text.is_empty(),
            Some(('*', rest)) => (0..=text.len()).any(|i| reference(rest, &text[i..])),
            Some((&c, rest)) => text
                .split_first()
                .is_some_and(|(&t, tail)| (c == '?' || c == t) && reference(rest, tail)),
        }
    }

    proptest! {
        #[test]
        fn agrees_with_the_definition(pattern in "[ab*?é]{0,8}", text in "[abé]{0,10}") {
            let p: alloc::vec::Vec<char> = pattern.chars().collect();
            let t: alloc::vec::Vec<char> = text.chars().collect();
            prop_assert_eq!(glob_match(&pattern, &text), reference(&p, &t));
        }

        #[test]
        fn a_plain_pattern_is_equality(text in "\\PC{0,12}", other in "\\PC{0,12}") {
            let plain: String = text.chars().filter(|c| *c != '*' && *c != '?').collect();
            prop_assert!(glob_match(&plain, &plain));
            prop_assert_eq!(glob_match(&plain, &other), plain == other);
        }
    }
}
