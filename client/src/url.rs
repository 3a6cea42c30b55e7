//! Server addresses as users type them, turned into the API and WebSocket bases.

use crate::Error;

/// `http://host:port`, `host:port`, or either with `/api/v2` already appended; returns the
/// REST base (`.../api/v2`) and the matching WebSocket base (`ws://` or `wss://`).
pub(crate) fn bases(server: &str) -> Result<(String, String), Error> {
    let invalid = |reason: &str| Error::InvalidUrl {
        url: server.to_string(),
        reason: reason.to_string(),
    };
    let trimmed = server.trim();
    if trimmed.is_empty() {
        return Err(invalid("empty"));
    }
    let (scheme, rest) = match trimmed.split_once("://") {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
        None => ("http".to_string(), trimmed),
    };
    let ws_scheme = match scheme.as_str() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        _ => return Err(invalid("the scheme must be http or https")),
    };
    let http_scheme = if ws_scheme == "ws" { "http" } else { "https" };
    let rest = rest.trim_end_matches('/');
    let rest = rest
        .strip_suffix("/api/v2")
        .or_else(|| rest.strip_suffix("/api/v1"))
        .unwrap_or(rest);
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(invalid("no host"));
    }
    Ok((
        format!("{http_scheme}://{rest}/api/v2"),
        format!("{ws_scheme}://{rest}/api/v2"),
    ))
}

/// Percent-encodes one path segment, so an id or method typed by a user cannot change the
/// path (`/`, `?`, `#`, `%`).
pub(crate) fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~' | b':') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_users_type() {
        let expect = (
            "http://127.0.0.1:8009/api/v2".to_string(),
            "ws://127.0.0.1:8009/api/v2".to_string(),
        );
        for form in [
            "127.0.0.1:8009",
            "http://127.0.0.1:8009",
            "http://127.0.0.1:8009/",
            "HTTP://127.0.0.1:8009/api/v2",
            "ws://127.0.0.1:8009/api/v1/",
        ] {
            assert_eq!(bases(form).expect(form), expect, "{form}");
        }
        assert_eq!(
            bases("https://herd.example/prefix").expect("valid").1,
            "wss://herd.example/prefix/api/v2"
        );
        assert!(bases("").is_err());
        assert!(bases("ftp://x").is_err());
        assert!(bases("http://").is_err());
    }

    #[test]
    fn segments_cannot_escape() {
        assert_eq!(segment("Sys.GetInfo"), "Sys.GetInfo");
        assert_eq!(segment("a/b?c#d%"), "a%2Fb%3Fc%23d%25");
        assert_eq!(segment("dev:1"), "dev:1");
    }
}
