//! Writing report tables: an aligned text table for terminals, CSV, Parquet and JSON.
//!
//! Times are UTC: RFC 3339 text in the text formats, a timestamp column in Parquet. Nulls
//! are empty in CSV, `null` in JSON and `-` in text tables. A report has several tables;
//! [`ReportOutput::write`] writes one (by name, default the main one) or, for the text
//! formats, all of them.

use std::fmt::Write as _;
use std::io::Write;
use std::str::FromStr;

use polars::prelude::*;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::report::ReportOutput;
use crate::Error;

/// An export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns for a terminal.
    Table,
    Csv,
    /// Needs a single table; the bytes are binary.
    Parquet,
    /// An array of row objects.
    Json,
}

impl FromStr for Format {
    type Err = Error;

    fn from_str(s: &str) -> Result<Format, Error> {
        match s {
            "table" => Ok(Format::Table),
            "csv" => Ok(Format::Csv),
            "parquet" => Ok(Format::Parquet),
            "json" => Ok(Format::Json),
            _ => Err(Error::Request(format!(
                "unknown format {s:?}; expected table, csv, parquet or json"
            ))),
        }
    }
}

/// One cell as text, or `None` for null.
fn cell(value: &AnyValue<'_>) -> Option<String> {
    Some(match value {
        AnyValue::Null => return None,
        AnyValue::Boolean(b) => b.to_string(),
        AnyValue::String(s) => (*s).to_string(),
        AnyValue::StringOwned(s) => s.to_string(),
        AnyValue::UInt8(v) => v.to_string(),
        AnyValue::UInt16(v) => v.to_string(),
        AnyValue::UInt32(v) => v.to_string(),
        AnyValue::UInt64(v) => v.to_string(),
        AnyValue::Int8(v) => v.to_string(),
        AnyValue::Int16(v) => v.to_string(),
        AnyValue::Int32(v) => v.to_string(),
        AnyValue::Int64(v) => v.to_string(),
        AnyValue::Float32(v) => v.to_string(),
        AnyValue::Float64(v) => v.to_string(),
        AnyValue::Datetime(v, unit, _) => rfc3339(*v, *unit),
        AnyValue::DatetimeOwned(v, unit, _) => rfc3339(*v, *unit),
        other => other.to_string(),
    })
}

fn rfc3339(value: i64, unit: TimeUnit) -> String {
    let nanos = match unit {
        TimeUnit::Nanoseconds => i128::from(value),
        TimeUnit::Microseconds => i128::from(value) * 1_000,
        TimeUnit::Milliseconds => i128::from(value) * 1_000_000,
    };
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| value.to_string())
}

/// Every row as text cells, column by column.
fn cells(frame: &DataFrame) -> Result<Vec<Vec<Option<String>>>, Error> {
    let mut columns = Vec::with_capacity(frame.width());
    for column in frame.columns() {
        let mut values = Vec::with_capacity(frame.height());
        for row in 0..frame.height() {
            values.push(cell(&column.get(row)?));
        }
        columns.push(values);
    }
    Ok(columns)
}

fn names(frame: &DataFrame) -> Vec<String> {
    frame
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect()
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// Writes one table in `format`.
pub fn export<W: Write>(frame: &DataFrame, format: Format, mut out: W) -> Result<(), Error> {
    match format {
        Format::Parquet => {
            let mut frame = frame.clone();
            ParquetWriter::new(&mut out).finish(&mut frame)?;
        }
        Format::Csv => {
            let columns = cells(frame)?;
            let mut text = names(frame)
                .iter()
                .map(|n| csv_field(n))
                .collect::<Vec<_>>()
                .join(",");
            text.push('\n');
            for row in 0..frame.height() {
                for (i, column) in columns.iter().enumerate() {
                    if i > 0 {
                        text.push(',');
                    }
                    if let Some(value) = &column[row] {
                        text.push_str(&csv_field(value));
                    }
                }
                text.push('\n');
            }
            out.write_all(text.as_bytes())?;
        }
        Format::Json => {
            let rows = json_rows(frame)?;
            serde_json::to_writer(&mut out, &rows)?;
            out.write_all(b"\n")?;
        }
        Format::Table => {
            let columns = cells(frame)?;
            let headers = names(frame);
            let shown: Vec<Vec<String>> = columns
                .into_iter()
                .map(|c| {
                    c.into_iter()
                        .map(|v| v.map_or_else(|| "-".to_string(), |v| shorten(&v)))
                        .collect()
                })
                .collect();
            let widths: Vec<usize> = headers
                .iter()
                .zip(&shown)
                .map(|(h, c)| {
                    c.iter()
                        .map(|v| v.chars().count())
                        .fold(h.len(), usize::max)
                })
                .collect();
            let mut text = String::new();
            let line = |text: &mut String, values: Vec<&str>| {
                let cols: Vec<String> = values
                    .iter()
                    .zip(&widths)
                    .map(|(v, w)| format!("{v:<w$}"))
                    .collect();
                let _ = writeln!(text, "{}", cols.join("  ").trim_end());
            };
            line(&mut text, headers.iter().map(String::as_str).collect());
            line(
                &mut text,
                widths
                    .iter()
                    .map(|&w| "-".repeat(w))
                    .collect::<Vec<_>>()
                    .iter()
                    .map(String::as_str)
                    .collect(),
            );
            for row in 0..frame.height() {
                line(&mut text, shown.iter().map(|c| c[row].as_str()).collect());
            }
            out.write_all(text.as_bytes())?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Floats with many digits are noise on a terminal; three decimals are enough to read.
fn shorten(value: &str) -> String {
    match value.split_once('.') {
        Some((whole, fraction))
            if fraction.len() > 3
                && fraction.bytes().all(|b| b.is_ascii_digit())
                && whole
                    .trim_start_matches('-')
                    .bytes()
                    .all(|b| b.is_ascii_digit()) =>
        {
            value
                .parse::<f64>()
                .map_or_else(|_| value.to_string(), |v| format!("{v:.3}"))
        }
        _ => value.to_string(),
    }
}

/// A table as JSON objects, one per row, with typed values.
pub fn json_rows(frame: &DataFrame) -> Result<serde_json::Value, Error> {
    use serde_json::{Map, Value};
    let headers = names(frame);
    let mut rows = vec![Map::new(); frame.height()];
    for (column, name) in frame.columns().iter().zip(&headers) {
        for (row, object) in rows.iter_mut().enumerate() {
            let value = match column.get(row)? {
                AnyValue::Null => Value::Null,
                AnyValue::Boolean(b) => Value::Bool(b),
                AnyValue::UInt8(v) => v.into(),
                AnyValue::UInt16(v) => v.into(),
                AnyValue::UInt32(v) => v.into(),
                AnyValue::UInt64(v) => v.into(),
                AnyValue::Int8(v) => v.into(),
                AnyValue::Int16(v) => v.into(),
                AnyValue::Int32(v) => v.into(),
                AnyValue::Int64(v) => v.into(),
                AnyValue::Float32(v) => f64::from(v).into(),
                AnyValue::Float64(v) => v.into(),
                other => cell(&other).map_or(Value::Null, Value::String),
            };
            object.insert(name.clone(), value);
        }
    }
    Ok(Value::Array(rows.into_iter().map(Value::Object).collect()))
}

impl ReportOutput {
    /// Writes the table called `table` (default: the main table) in `format`. With no
    /// table named, the text formats write every table, each under a `# <name>` line for
    /// CSV and a heading for text; JSON writes one object with the range, the line
    /// accounting and every table.
    pub fn write<W: Write>(
        &self,
        format: Format,
        mut out: W,
        table: Option<&str>,
    ) -> Result<(), Error> {
        if let Some(name) = table {
            let frame = self.table(name).ok_or_else(|| {
                Error::Request(format!(
                    "the {} report has no table {name:?}; it has {}",
                    self.report,
                    self.report.tables().join(", ")
                ))
            })?;
            return export(frame, format, out);
        }
        match format {
            Format::Parquet => export(self.main(), format, out),
            Format::Json => {
                let mut tables = serde_json::Map::new();
                for table in &self.tables {
                    tables.insert(table.name.to_string(), json_rows(&table.frame)?);
                }
                let stats = self.stats;
                let document = serde_json::json!({
                    "report": self.report.name(),
                    "from": self.from,
                    "to": self.to,
                    "stats": {
                        "files": stats.files,
                        "bytes": stats.bytes,
                        "lines": stats.lines,
                        "torn_lines": stats.torn_lines,
                        "invalid_lines": stats.invalid_lines,
                        "unknown_events": stats.unknown_events,
                    },
                    "tables": tables,
                });
                serde_json::to_writer_pretty(&mut out, &document)?;
                out.write_all(b"\n")?;
                out.flush()?;
                Ok(())
            }
            Format::Csv | Format::Table => {
                for (i, table) in self.tables.iter().enumerate() {
                    if i > 0 {
                        out.write_all(b"\n")?;
                    }
                    match format {
                        Format::Csv => writeln!(out, "# {}", table.name)?,
                        _ => writeln!(out, "{} {}", self.report, table.name)?,
                    }
                    export(&table.frame, format, &mut out)?;
                }
                let stats = self.stats;
                if format == Format::Table && (stats.torn_lines + stats.invalid_lines) > 0 {
                    writeln!(
                        out,
                        "\nignored: {} torn, {} invalid lines",
                        stats.torn_lines, stats.invalid_lines
                    )?;
                }
                Ok(())
            }
        }
    }
}
