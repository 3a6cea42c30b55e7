//! `herd report`: the analytics reports of herd-analytics over the server's notification log
//! (PROTOCOL §7), as an aligned table for people or CSV, JSON and Parquet for scripts.
//!
//! The log comes from the `--log` paths given to the command, else the profile's `log`
//! (`herd --log`, `HERD_NOTIFICATION_LOG`, `log` in console.toml), else the server itself
//! through `POST /logs` ([`crate::logsource::pull`]). Everything the command line says is
//! checked before the log is read, so a typo fails at once rather than after a long read.
//! Data goes to stdout, or with `--out` to a file that appears whole or not at all; the
//! line accounting and progress go to stderr, so stdout stays clean for data.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use herd_analytics::{
    Bucket, Error as AnalyticsError, Format, Log, LogStats, Progress, Report, ReportOutput,
    ReportRequest, Stage,
};

use super::{CommandResult, Exit, Failure};
use crate::profile::Profile;

/// The arguments of `herd report`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = tables_help())]
pub struct ReportArgs {
    /// The report: fleet, connectivity, usage, firmware or rpc.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The server's notification log: its data directory (the whole rotated set) or log
    /// files, in order; repeatable. Default: the profile's log, else the server's
    /// (`POST /logs`, with the API key: a key sees only its own devices' lines).
    #[arg(long, value_name = "PATH", num_args = 1..)]
    pub log: Vec<PathBuf>,
    /// Start of the range: RFC 3339, unix seconds, `now`, or a time before now such as
    /// `-24h` (s, m, h, d, w) (default: the log's first event).
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub from: Option<String>,
    /// End of the range, inclusive, in the same forms as --from (default: the log's last
    /// event).
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub to: Option<String>,
    /// Only this device: its id, its name, or a unique start of either (names as the
    /// log's `created` and `updated` lines give them).
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
    /// table (aligned text), csv, json (an array of row objects) or parquet (refused on a
    /// terminal).
    #[arg(long, value_name = "FORMAT", default_value = "table")]
    pub format: String,
    /// Write to FILE instead of stdout; it is replaced whole, or not at all on failure.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Width of the time buckets of the `buckets` tables: hour or day (UTC).
    #[arg(long, value_name = "WIDTH", default_value = "hour")]
    pub bucket: String,
    /// Rows of the fleet report's `busiest` table.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,
    /// Which of the report's tables to write (default: its main one); `all` writes every
    /// table, in the table, csv and json formats.
    #[arg(long, value_name = "TABLE")]
    pub table: Option<String>,
    /// Where parsed rotated log files are kept, so the next report over the same files
    /// parses only what is new (default: `reports` in the platform cache directory).
    /// Entries are checked against their file and rebuilt when stale or damaged.
    #[arg(long, value_name = "DIR", env = "HERD_REPORT_CACHE")]
    pub cache: Option<PathBuf>,
    /// Parse every file and keep nothing (wins over --cache and HERD_REPORT_CACHE).
    #[arg(long)]
    pub no_cache: bool,
}

/// The reports and their tables, under `herd report --help`.
fn tables_help() -> String {
    let mut text = String::from("Reports and their tables (the main table first):\n");
    for report in Report::ALL {
        text.push_str(&format!(
            "  {:<13} {}\n",
            report.name(),
            report.tables().join(", ")
        ));
    }
    text.push_str(
        "Per-device tables have one row per device, its id in column `id` and its last \
         name in the log in column `name`. Lines the \
         reports cannot use (a torn last line, invalid lines, unknown events) are counted \
         on stderr.",
    );
    text
}

/// A validated command line: what to compute and how to write it.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    /// `logs` is filled in once the source is known.
    request: ReportRequest,
    format: Format,
    /// The table to write; `None` for every table.
    table: Option<&'static str>,
}

impl Plan {
    /// Checks every argument; `stdout_is_terminal` decides whether Parquet may go to stdout.
    fn new(args: &ReportArgs, stdout_is_terminal: bool) -> Result<Plan, Failure> {
        let usage = |e: AnalyticsError| Failure::usage(e.to_string());
        let report = Report::from_str(&args.name).map_err(usage)?;
        let format = Format::from_str(&args.format).map_err(usage)?;
        let bucket = Bucket::from_str(&args.bucket).map_err(usage)?;
        let time = |flag: &str, text: &Option<String>| {
            text.as_deref()
                .map(|text| {
                    herd_analytics::parse_time(text)
                        .map_err(|e| Failure::usage(format!("{flag}: {e}")))
                })
                .transpose()
        };
        let from = time("--from", &args.from)?;
        let to = time("--to", &args.to)?;
        if let (Some(from), Some(to)) = (from, to) {
            if from >= to {
                return Err(Failure::usage(format!(
                    "--from ({from}) must be before --to ({to})"
                )));
            }
        }
        let table = match args.table.as_deref() {
            None => Some(report.tables()[0]),
            Some("all") if format == Format::Parquet => {
                return Err(Failure::usage(format!(
                    "a Parquet file holds one table; name one with --table ({})",
                    report.tables().join(", ")
                )))
            }
            Some("all") => None,
            Some(name) => Some(
                report
                    .tables()
                    .iter()
                    .copied()
                    .find(|table| *table == name)
                    .ok_or_else(|| {
                        Failure::usage(format!(
                            "the {report} report has no table {name:?}; it has {} (or all)",
                            report.tables().join(", ")
                        ))
                    })?,
            ),
        };
        if format == Format::Parquet && args.out.is_none() && stdout_is_terminal {
            return Err(Failure::usage(
                "refusing to write Parquet to a terminal; use --out FILE or redirect stdout",
            ));
        }
        let mut request = ReportRequest::new(report, Vec::new());
        request.from = from;
        request.to = to;
        request.device = args.device.clone();
        request.bucket = bucket;
        request.top = args.top;
        request.cache = if args.no_cache {
            None
        } else {
            args.cache
                .clone()
                .or_else(|| herd_config::default_cache_dir("reports").ok())
        };
        Ok(Plan {
            request,
            format,
            table,
        })
    }
}

/// Where the log is read from, in order of preference.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    Files(Vec<PathBuf>),
    Server,
}

impl Source {
    fn choose(args: &ReportArgs, profile: &Profile) -> Source {
        if !args.log.is_empty() {
            Source::Files(args.log.clone())
        } else if !profile.log.is_empty() {
            Source::Files(profile.log.clone())
        } else {
            Source::Server
        }
    }
}

pub async fn run(profile: &Profile, args: ReportArgs) -> CommandResult {
    let plan = Plan::new(&args, std::io::stdout().is_terminal())?;
    // Created before the long read, so an unwritable destination fails at once.
    let out = args.out.as_deref().map(OutFile::create).transpose()?;
    let meter = Meter::new(std::io::stderr().is_terminal());
    let output = match Source::choose(&args, profile) {
        Source::Files(paths) => from_files(plan.request.clone(), paths, meter).await?,
        Source::Server => from_server(profile, plan.request.clone(), meter).await?,
    };
    let mut bytes = Vec::new();
    output
        .write(plan.format, &mut bytes, plan.table)
        .map_err(failure)?;
    if let Some(line) = summary(&output.stats) {
        eprintln!("{line}");
    }
    match out {
        Some(file) => file.commit(&bytes),
        None => write_stdout(&bytes),
    }
}

async fn from_files(
    mut request: ReportRequest,
    paths: Vec<PathBuf>,
    meter: Meter,
) -> Result<ReportOutput, Failure> {
    request.logs = paths;
    // Reading and computing are CPU-bound; they stay off the async runtime.
    tokio::task::spawn_blocking(move || {
        let output = herd_analytics::resolve(&request.logs).and_then(|files| {
            let need = request.report.need();
            let progress = |p| meter.progress(p);
            let log = match &request.cache {
                Some(cache) => Log::load_cached(&files, need, cache, &progress)?,
                None => Log::load(&files, need, &progress)?,
            };
            meter.computing();
            herd_analytics::compute(&log, &request)
        });
        // The progress line goes before anything else is printed, an error included.
        meter.clear();
        output.map_err(failure)
    })
    .await
    .map_err(|e| Failure::new(Exit::Failure, format!("the report stopped: {e}")))?
}

async fn from_server(
    profile: &Profile,
    request: ReportRequest,
    meter: Meter,
) -> Result<ReportOutput, Failure> {
    let client = profile.client().map_err(Failure::usage)?;
    let mut log = Log::new(request.report.need());
    crate::logsource::pull(&client, &mut log, 0, |lines| meter.pulled(lines))
        .await
        .map_err(|e| {
            meter.clear();
            let mut failure = Failure::from(e.error);
            if failure.exit == Exit::Unreachable {
                failure.message.push_str(
                    " (without --log or a profile log, the report reads the log from the server)",
                );
            }
            failure
        })?;
    tokio::task::spawn_blocking(move || {
        meter.computing();
        let output = herd_analytics::compute(&log, &request).map_err(failure);
        meter.clear();
        output
    })
    .await
    .map_err(|e| Failure::new(Exit::Failure, format!("the report stopped: {e}")))?
}

/// The log with every field, for `herd query`: from `logs` (else the profile's log), else
/// from the server (`POST /logs`).
#[cfg(feature = "query")]
pub(super) async fn read_whole_log(
    profile: &Profile,
    logs: &[PathBuf],
    cache: Option<PathBuf>,
) -> Result<Log, Failure> {
    let meter = Meter::new(std::io::stderr().is_terminal());
    let files = if !logs.is_empty() {
        logs.to_vec()
    } else {
        profile.log.clone()
    };
    if files.is_empty() {
        let client = profile.client().map_err(Failure::usage)?;
        let mut log = Log::new(herd_analytics::Need::ALL);
        let pulled =
            crate::logsource::pull(&client, &mut log, 0, |lines| meter.pulled(lines)).await;
        meter.clear();
        pulled.map_err(|e| Failure::from(e.error))?;
        return Ok(log);
    }
    tokio::task::spawn_blocking(move || {
        let log = herd_analytics::resolve(&files).and_then(|files| {
            let progress = |p| meter.progress(p);
            match &cache {
                Some(cache) => {
                    Log::load_cached(&files, herd_analytics::Need::ALL, cache, &progress)
                }
                None => Log::load(&files, herd_analytics::Need::ALL, &progress),
            }
        });
        meter.clear();
        log.map_err(failure)
    })
    .await
    .map_err(|e| Failure::new(Exit::Failure, format!("reading the log stopped: {e}")))?
}

/// The exit code of a library error: a log path that does not exist is exit 5 (like a
/// device that does not exist), a request the library cannot serve is a usage error.
pub(super) fn failure(error: AnalyticsError) -> Failure {
    match error {
        AnalyticsError::Io { path, source } if source.kind() == std::io::ErrorKind::NotFound => {
            Failure::new(
                Exit::NotFound,
                format!("no such log file or directory: {}", path.display()),
            )
        }
        AnalyticsError::Io { path, source } => Failure::new(
            Exit::Failure,
            format!("cannot read the log {}: {source}", path.display()),
        ),
        AnalyticsError::Request(message) => Failure::usage(message),
        other => Failure::new(Exit::Failure, other.to_string()),
    }
}

/// The line accounting for stderr, when some lines were left out of the report.
pub(super) fn summary(stats: &LogStats) -> Option<String> {
    let ignored = stats.torn_lines + stats.invalid_lines + stats.unknown_events;
    (ignored > 0).then(|| {
        format!(
            "herd: read {} lines; ignored {} torn, {} invalid, {} with an unknown event name",
            stats.lines, stats.torn_lines, stats.invalid_lines, stats.unknown_events
        )
    })
}

/// Progress on stderr for slow reads, only when stderr is a terminal: scripts capturing
/// stderr get the summary and errors, not a stream of carriage returns.
struct Meter {
    enabled: bool,
    /// Last percentage shown plus one (0: nothing shown yet), so reader threads repaint
    /// only on change.
    shown: AtomicU64,
}

impl Meter {
    fn new(enabled: bool) -> Meter {
        Meter {
            enabled,
            shown: AtomicU64::new(0),
        }
    }

    fn line(&self, text: &str) {
        if self.enabled {
            let mut stderr = std::io::stderr().lock();
            let _ = write!(stderr, "\r\x1b[2K{text}");
            let _ = stderr.flush();
        }
    }

    fn progress(&self, progress: Progress) {
        if !self.enabled || progress.stage != Stage::Reading {
            return;
        }
        let percent = progress.done.saturating_mul(100) / progress.total.max(1);
        if self.shown.swap(percent + 1, Ordering::Relaxed) != percent + 1 {
            self.line(&format!("herd: reading the log, {percent}%"));
        }
    }

    fn pulled(&self, lines: u64) {
        self.line(&format!("herd: pulled {lines} lines from the server"));
    }

    fn computing(&self) {
        self.line("herd: computing the report");
    }

    fn clear(&self) {
        self.line("");
    }
}

/// Writes the report to stdout; a reader that went away (`| head`) is not an error.
pub(super) fn write_stdout(bytes: &[u8]) -> CommandResult {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::new(
            Exit::Failure,
            format!("cannot write the report: {e}"),
        )),
    }
}

/// `--out FILE`: written to a temporary file beside it and renamed over it at the end, so a
/// failed report leaves no half file (and an older report stays as it was).
pub(super) struct OutFile {
    temp: tempfile::NamedTempFile,
    path: PathBuf,
}

impl OutFile {
    pub(super) fn create(path: &Path) -> Result<OutFile, Failure> {
        let cannot = |e: std::io::Error| {
            Failure::new(
                Exit::Failure,
                format!("cannot write {}: {e}", path.display()),
            )
        };
        let name = path
            .file_name()
            .ok_or_else(|| Failure::usage(format!("--out {} is not a file", path.display())))?;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let mut builder = tempfile::Builder::new();
        let prefix = format!(".{}.", name.to_string_lossy());
        builder.prefix(&prefix).suffix(".part");
        // Like any new file (the umask applies), rather than a temporary file's owner-only
        // mode.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            builder.permissions(std::fs::Permissions::from_mode(0o666));
        }
        let temp = builder.tempfile_in(dir).map_err(cannot)?;
        Ok(OutFile {
            temp,
            path: path.to_path_buf(),
        })
    }

    pub(super) fn commit(mut self, bytes: &[u8]) -> CommandResult {
        let path = self.path;
        let cannot = |e: std::io::Error| {
            Failure::new(
                Exit::Failure,
                format!("cannot write {}: {e}", path.display()),
            )
        };
        self.temp.write_all(bytes).map_err(cannot)?;
        self.temp.as_file().sync_all().map_err(cannot)?;
        self.temp.persist(&path).map_err(|e| cannot(e.error))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Command {
        #[command(flatten)]
        report: ReportArgs,
    }

    fn args(line: &[&str]) -> ReportArgs {
        let mut argv = vec!["report"];
        argv.extend_from_slice(line);
        Command::try_parse_from(argv).expect("parses").report
    }

    fn plan(line: &[&str]) -> Result<Plan, Failure> {
        Plan::new(&args(line), false)
    }

    #[test]
    fn defaults_name_the_main_table_and_the_table_format() {
        let plan = plan(&["usage"]).expect("valid");
        assert_eq!(plan.request.report, Report::Usage);
        assert_eq!(plan.format, Format::Table);
        assert_eq!(plan.table, Some("devices"));
        assert_eq!(plan.request.bucket, Bucket::Hour);
        assert_eq!(plan.request.top, 10);
    }

    #[test]
    fn times_tables_and_buckets_are_read() {
        let fleet = plan(&[
            "fleet",
            "--from",
            "2023-11-14T22:13:20Z",
            "--to",
            "1700003600",
            "--table",
            "busiest",
            "--bucket",
            "day",
            "--top",
            "3",
            "--device",
            "lamp",
        ])
        .expect("valid");
        assert_eq!(fleet.request.from, Some(1_700_000_000.0));
        assert_eq!(fleet.request.to, Some(1_700_003_600.0));
        assert_eq!(fleet.table, Some("busiest"));
        assert_eq!(fleet.request.bucket, Bucket::Day);
        assert_eq!(fleet.request.top, 3);
        assert_eq!(fleet.request.device.as_deref(), Some("lamp"));
        assert_eq!(plan(&["rpc", "--table", "all"]).expect("ok").table, None);
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        for line in [
            &["uptime"][..],
            &["fleet", "--format", "xml"],
            &["fleet", "--bucket", "week"],
            &["fleet", "--from", "yesterday"],
            &["fleet", "--from", "20", "--to", "10"],
            &["fleet", "--from", "10", "--to", "10"],
            &["fleet", "--table", "devices"],
            &["fleet", "--format", "parquet", "--table", "all"],
        ] {
            let failure = plan(line).expect_err("invalid");
            assert_eq!(failure.exit, Exit::Usage, "{line:?}: {}", failure.message);
        }
        let failure = plan(&["fleet", "--from", "yesterday"]).expect_err("invalid");
        assert!(
            failure.message.starts_with("--from: "),
            "{}",
            failure.message
        );
    }

    #[test]
    fn parquet_goes_to_a_terminal_only_through_a_file() {
        let refused = Plan::new(&args(&["fleet", "--format", "parquet"]), true)
            .expect_err("binary on a terminal");
        assert_eq!(refused.exit, Exit::Usage);
        assert!(refused.message.contains("--out"), "{}", refused.message);
        Plan::new(
            &args(&["fleet", "--format", "parquet", "--out", "x.parquet"]),
            true,
        )
        .expect("to a file");
        Plan::new(&args(&["fleet", "--format", "parquet"]), false).expect("to a pipe");
    }

    #[test]
    fn the_log_comes_from_the_command_then_the_profile_then_the_server() {
        let mut profile = Profile::resolve_with(&Default::default(), &Default::default(), None)
            .expect("default profile");
        assert_eq!(Source::choose(&args(&["fleet"]), &profile), Source::Server);
        profile.log = vec!["/var/lib/herd".into()];
        assert_eq!(
            Source::choose(&args(&["fleet"]), &profile),
            Source::Files(vec!["/var/lib/herd".into()])
        );
        assert_eq!(
            Source::choose(
                &args(&["fleet", "--log", "a.log", "b.log", "--log", "c"]),
                &profile
            ),
            Source::Files(vec!["a.log".into(), "b.log".into(), "c".into()])
        );
    }

    #[test]
    fn the_summary_appears_only_when_lines_were_ignored() {
        let mut stats = LogStats {
            lines: 10,
            ..LogStats::default()
        };
        assert_eq!(summary(&stats), None);
        stats.torn_lines = 1;
        stats.unknown_events = 2;
        assert_eq!(
            summary(&stats).as_deref(),
            Some("herd: read 10 lines; ignored 1 torn, 0 invalid, 2 with an unknown event name")
        );
    }

    #[test]
    fn a_missing_log_is_not_found() {
        let error = herd_analytics::resolve(&[PathBuf::from("/nonexistent/notification.log")])
            .expect_err("missing");
        let failure = failure(error);
        assert_eq!(failure.exit, Exit::NotFound);
        assert!(
            failure.message.contains("/nonexistent"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn a_failed_report_leaves_no_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("report.csv");
        let out = OutFile::create(&path).expect("create");
        drop(out);
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0);
        let out = OutFile::create(&path).expect("create");
        out.commit(b"id\n").expect("commit");
        assert_eq!(std::fs::read(&path).expect("read"), b"id\n");
    }
}
