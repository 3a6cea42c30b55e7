//! Runs one report the way `herd report` will, and prints how long it took and the peak
//! memory of the process, for the benchmark script:
//! `herd-analytics-bench REPORT --log PATH... [--from T] [--to T] [--device ID]
//! [--bucket hour|day] [--format table|csv|parquet|json] [--table NAME] [--out FILE]
//! [--cache DIR]`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use herd_analytics::{parse_time, run, Format, Report, ReportRequest};

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() -> ExitCode {
    match main_inner() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herd-analytics-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main_inner() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let report: Report = args.next().ok_or("missing REPORT")?.parse()?;
    let mut request = ReportRequest::new(report, Vec::new());
    let mut format = Format::Table;
    let mut table = None;
    let mut out: Option<PathBuf> = None;
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--log" => request.logs.push(value()?.into()),
            "--from" => request.from = Some(parse_time(&value()?)?),
            "--to" => request.to = Some(parse_time(&value()?)?),
            "--device" => request.device = Some(value()?),
            "--bucket" => request.bucket = value()?.parse()?,
            "--format" => format = value()?.parse()?,
            "--table" => table = Some(value()?),
            "--out" => out = Some(value()?.into()),
            "--cache" => request.cache = Some(value()?.into()),
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    if request.logs.is_empty() {
        return Err("no --log given".into());
    }
    let started = Instant::now();
    let output = run(&request, &|_| {})?;
    let elapsed = started.elapsed();
    match &out {
        Some(path) => output.write(format, std::fs::File::create(path)?, table.as_deref())?,
        None => output.write(format, std::io::stdout().lock(), table.as_deref())?,
    }
    let stats = output.stats;
    let mut err = std::io::stderr().lock();
    writeln!(
        err,
        "report={} seconds={:.3} peak_rss_mib={:.1} lines={} bytes={} torn={} invalid={} unknown={}",
        report,
        elapsed.as_secs_f64(),
        peak_rss_kib().unwrap_or(0) as f64 / 1024.0,
        stats.lines,
        stats.bytes,
        stats.torn_lines,
        stats.invalid_lines,
        stats.unknown_events
    )?;
    Ok(())
}
