//! Wall-clock helpers: unix seconds for shadows and notifications, RFC 3339 for REST bodies
//! (PROTOCOL, identifiers and timestamps).

use std::time::{SystemTime, UNIX_EPOCH};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Now as unix seconds with microsecond resolution.
pub fn now() -> f64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (since.as_micros() as f64) / 1e6
}

/// Unix seconds rendered as RFC 3339 UTC, e.g. `2026-11-22T03:30:00.123Z`.
pub fn rfc3339(unix: f64) -> String {
    // Millisecond precision is plenty for REST bodies, and rounding at that scale avoids
    // binary-fraction artefacts such as .249999 for .25.
    let nanos = ((unix * 1e3).round() as i128) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_utc_with_milliseconds() {
        assert_eq!(rfc3339(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000.25), "2023-11-14T22:13:20.25Z");
    }

    #[test]
    fn now_is_after_2020() {
        assert!(now() > 1_577_836_800.0);
    }
}
