//! Usage reports over Herd's notification log (PROTOCOL §7), on Polars.
//!
//! The server appends every notification to `notification.log` as one JSON object per
//! line and rotates it to `notification.log.<date>[.<n>]`. This crate reads such a log (one
//! file, the rotated set of a directory, or bytes as they are appended), keeps only the
//! fields a report needs, and computes five reports as Polars [`DataFrame`]s: [`Report::Fleet`],
//! [`Report::Connectivity`], [`Report::Usage`], [`Report::Firmware`] and [`Report::Rpc`].
//! Each module under `report` documents its definitions and columns. Tables export to CSV,
//! Parquet, JSON or an aligned text table ([`export`], [`ReportOutput::write`]).
//!
//! Main types: [`ReportRequest`] and [`run`] for a one-shot report; [`Log`] to read once and
//! compute many reports ([`Log::load`], [`compute`]); [`Log::load_cached`] (or
//! [`ReportRequest::cache`]) to keep the parsed lines of rotated files for later reports;
//! [`Log::push`] and [`Follower`] to keep a log current from appended bytes. Torn last lines, invalid lines and unknown event
//! names are ignored and counted in [`LogStats`].
//!
//! ```
//! use herd_analytics::{run, Format, Report, ReportRequest};
//!
//! let dir = tempfile::tempdir()?;
//! std::fs::write(
//!     dir.path().join("notification.log"),
//!     concat!(
//!         r#"{"ts":0,"id":"lamp","name":"online","data":null}"#, "\n",
//!         r#"{"ts":1800,"id":"lamp","name":"offline","data":null}"#, "\n",
//!     ),
//! )?;
//! let mut request = ReportRequest::new(Report::Connectivity, vec![dir.path().to_path_buf()]);
//! request.to = Some(3600.0);
//! let output = run(&request, &|_| {})?;
//! let uptime = output.main().column("uptime_pct")?.f64()?.get(0);
//! assert_eq!(uptime, Some(50.0));
//! output.write(Format::Csv, std::io::sink(), None)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod cache;
mod event;
#[cfg(feature = "tables")]
mod export;
mod files;
mod follow;
pub mod generate;
mod log;
pub mod names;
#[cfg(feature = "query")]
pub mod query;
#[cfg(feature = "tables")]
mod report;
mod scan;

use std::path::{Path, PathBuf};

#[cfg(feature = "tables")]
pub use polars::prelude::DataFrame;

pub use event::Need;
#[cfg(feature = "tables")]
pub use export::{export, json_rows, Format};
pub use files::{log_files, resolve};
pub use follow::{Follower, Polled};
pub use log::{Log, LogStats};
#[cfg(feature = "tables")]
pub use report::{compute, run, Bucket, FlapRule, Report, ReportOutput, ReportRequest, Table};

/// Errors of reading logs, computing reports and writing them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the report: {0}")]
    Write(#[from] std::io::Error),
    #[error("cannot write JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[cfg(feature = "tables")]
    #[error("table error: {0}")]
    Polars(#[from] polars::error::PolarsError),
    /// The request cannot be served as asked.
    #[error("{0}")]
    Request(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Where a long computation is, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub stage: Stage,
    /// Units done out of `total`: bytes while reading, steps while computing.
    pub done: u64,
    pub total: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Reading,
    Computing,
}

/// A time given on a command line: unix seconds (fractions allowed), RFC 3339, `now`, or
/// a time before now as `-` and a count of `s`, `m`, `h`, `d` or `w` (`-24h`, `-7d`).
pub fn parse_time(text: &str) -> Result<f64, Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    parse_time_at(text, now)
}

/// [`parse_time`] with relative times counted back from `now` (unix seconds).
pub fn parse_time_at(text: &str, now: f64) -> Result<f64, Error> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        if seconds.is_finite() {
            return Ok(seconds);
        }
    }
    if text == "now" {
        return Ok(now);
    }
    if let Some(ago) = text.strip_prefix('-').and_then(relative_seconds) {
        return Ok(now - ago);
    }
    let parsed = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            Error::Request(format!(
                "{text:?} is neither unix seconds, an RFC 3339 time, now, nor a time before now \
                 such as -24h: {e}"
            ))
        })?;
    Ok(parsed.unix_timestamp_nanos() as f64 / 1e9)
}

/// A span such as `90m`, `24h`, `7d` or `2w` (`s`, `m`, `h`, `d`, `w`) as seconds.
pub fn relative_seconds(text: &str) -> Option<f64> {
    let unit = match text.chars().last()? {
        's' => 1.0,
        'm' => 60.0,
        'h' => 3600.0,
        'd' => 86_400.0,
        'w' => 7.0 * 86_400.0,
        _ => return None,
    };
    let count = &text[..text.len() - 1];
    if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    count.parse::<f64>().ok().map(|n| n * unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse() {
        assert_eq!(parse_time("1700000000").ok(), Some(1_700_000_000.0));
        assert_eq!(parse_time("12.5").ok(), Some(12.5));
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z").ok(),
            Some(1_700_000_000.0)
        );
        assert_eq!(
            parse_time("2023-11-14T23:13:20.5+01:00").ok(),
            Some(1_700_000_000.5)
        );
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("inf").is_err());
        let now = 1_700_000_000.0;
        assert_eq!(parse_time_at("now", now).ok(), Some(now));
        assert_eq!(parse_time_at("-24h", now).ok(), Some(now - 86_400.0));
        assert_eq!(parse_time_at("-90m", now).ok(), Some(now - 5400.0));
        assert_eq!(parse_time_at("-7d", now).ok(), Some(now - 604_800.0));
        assert_eq!(parse_time_at("-2w", now).ok(), Some(now - 1_209_600.0));
        assert_eq!(parse_time_at("-30s", now).ok(), Some(now - 30.0));
        assert_eq!(parse_time_at("-5", now).ok(), Some(-5.0), "unix seconds");
        for bad in ["-h", "-1.5h", "-24x", "24h", "-+3h", "--3h", "-3 h"] {
            assert!(parse_time_at(bad, now).is_err(), "{bad}");
        }
    }
}
