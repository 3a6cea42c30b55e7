//! `herd query 'SQL'`: ad-hoc questions over the notification log in Polars SQL, read from
//! the same places as `herd report` (see [`herd_analytics::query`] for the tables).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::str::FromStr;

use herd_analytics::{query, Format};

use super::report::{failure, read_whole_log, summary, write_stdout, OutFile};
use super::{CommandResult, Exit, Failure};
use crate::profile::Profile;

/// The arguments of `herd query`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = tables_help())]
pub struct QueryArgs {
    /// The query in Polars SQL over the tables below, e.g. `SELECT device, COUNT(*) AS n
    /// FROM switches WHERE on GROUP BY device ORDER BY n DESC`; `-` reads it from stdin.
    #[arg(value_name = "SQL", required_unless_present = "tables")]
    pub sql: Option<String>,
    /// The server's notification log: its data directory or log files; repeatable.
    /// Default: the profile's log, else the server's (`POST /logs`).
    #[arg(long, value_name = "PATH", num_args = 1..)]
    pub log: Vec<PathBuf>,
    /// table (aligned text), csv, json (an array of row objects) or parquet.
    #[arg(long, value_name = "FORMAT", default_value = "table")]
    pub format: String,
    /// Write to FILE instead of stdout; it is replaced whole, or not at all on failure.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Where parsed rotated log files are kept (as for `herd report`).
    #[arg(long, value_name = "DIR", env = "HERD_REPORT_CACHE")]
    pub cache: Option<PathBuf>,
    /// Parse every file and keep nothing.
    #[arg(long)]
    pub no_cache: bool,
    /// List the tables and their columns instead of running a query.
    #[arg(long)]
    pub tables: bool,
}

fn tables_help() -> String {
    let mut text = String::from("Tables:\n");
    for (name, columns) in query::TABLES {
        text.push_str(&format!("  {name:<16} {columns}\n"));
    }
    text.push_str(
        "Times are UTC datetimes; `id` is the device id, `device` the last name the log \
         gave it.",
    );
    text
}

pub async fn run(profile: &Profile, args: QueryArgs) -> CommandResult {
    if args.tables {
        return write_stdout(format!("{}\n", tables_help()).as_bytes());
    }
    let format = Format::from_str(&args.format).map_err(|e| Failure::usage(e.to_string()))?;
    if format == Format::Parquet && args.out.is_none() && std::io::stdout().is_terminal() {
        return Err(Failure::usage(
            "refusing to write Parquet to a terminal; use --out FILE or redirect stdout",
        ));
    }
    let sql = match args.sql.as_deref() {
        Some("-") => std::io::read_to_string(std::io::stdin())
            .map_err(|e| Failure::new(Exit::Failure, format!("cannot read stdin: {e}")))?,
        Some(sql) => sql.to_string(),
        None => return Err(Failure::usage("a query is needed")),
    };
    let out = args.out.as_deref().map(OutFile::create).transpose()?;
    let cache = if args.no_cache {
        None
    } else {
        args.cache
            .clone()
            .or_else(|| herd_config::default_cache_dir("reports").ok())
    };
    let log = read_whole_log(profile, &args.log, cache).await?;
    let stats = log.stats();
    // Polars plans and runs the query on its own threads; it stays off the async runtime.
    let bytes = tokio::task::spawn_blocking(move || {
        let frame = query::query(&log, &sql).map_err(failure)?;
        let mut bytes = Vec::new();
        herd_analytics::export(&frame, format, &mut bytes).map_err(failure)?;
        Ok::<_, Failure>(bytes)
    })
    .await
    .map_err(|e| Failure::new(Exit::Failure, format!("the query stopped: {e}")))??;
    if let Some(line) = summary(&stats) {
        eprintln!("{line}");
    }
    match out {
        Some(file) => file.commit(&bytes),
        None => write_stdout(&bytes),
    }
}
