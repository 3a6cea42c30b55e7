//! Small text helpers shared by the CLI and the console: globs, times, durations.

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Matches `text` against a glob with `*` (any run) and `?` (one character).
pub use protocol::text::glob_match;

/// `HH:MM:SS.mmm` in UTC: the console and `herd tail` show UTC so that lines compare with
/// the server's log, whatever the operator's time zone.
pub fn clock_time(ts: f64) -> String {
    let ts = if ts.is_finite() && ts >= 0.0 { ts } else { 0.0 };
    let millis = (ts * 1000.0).round() as u64;
    let day_millis = millis % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_millis / 3_600_000,
        day_millis / 60_000 % 60,
        day_millis / 1000 % 60,
        day_millis % 1000
    )
}

/// A compact duration: `42s`, `5m`, `3h12m`, `4d2h`.
pub fn duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "-".into();
    }
    let s = seconds as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        _ => format!("{}d{}h", s / 86_400, s / 3600 % 24),
    }
}

/// How long ago `then` was, relative to `now`: `12s ago`, `3h04m ago`.
pub fn ago(then: f64, now: f64) -> String {
    format!("{} ago", duration((now - then).max(0.0)))
}

/// Parses an RFC 3339 timestamp from a REST body into Unix seconds.
pub fn parse_rfc3339(text: &str) -> Option<f64> {
    let parsed =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some(parsed.unix_timestamp_nanos() as f64 / 1e9)
}

/// `ts` (Unix seconds) as RFC 3339 in UTC, to the second: `2023-11-14T22:13:20Z`.
pub fn rfc3339(ts: f64) -> String {
    let seconds = if ts.is_finite() { ts.floor() as i64 } else { 0 };
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| seconds.to_string())
}

/// Cuts `text` to at most `max` characters, marking the cut with `…`.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    if max == 0 {
        return String::new();
    }
    let mut out: String = text.chars().take(max - 1).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(clock_time(3661.5), "01:01:01.500");
        assert_eq!(clock_time(f64::NAN), "00:00:00.000");
        assert_eq!(duration(42.0), "42s");
        assert_eq!(duration(3600.0 * 3.0 + 12.0 * 60.0), "3h12m");
        assert_eq!(duration(86_400.0 * 4.0 + 7200.0), "4d2h");
        assert_eq!(ago(100.0, 160.0), "1m ago");
        assert_eq!(parse_rfc3339("1970-01-01T00:01:00Z"), Some(60.0));
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(rfc3339(1_700_000_000.7), "2023-11-14T22:13:20Z");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }
}
