//! `herd history DEVICE [--at TIME]`: the device as it was, rebuilt from the notification
//! log ([`crate::history`]), read from the same places as `herd report`.

use std::io::BufRead;
use std::path::PathBuf;

use herd_analytics::names::{describe_candidates, resolve, Resolution};
use herd_client::LogsQuery;
use protocol::notification::LoggedNotification;
use serde_json::{json, Value};

use super::commands::print;
use super::{CommandResult, Exit, Failure};
use crate::history::{describe, History};
use crate::profile::Profile;

/// The arguments of `herd history`.
#[derive(Debug, Clone, clap::Args)]
pub struct HistoryArgs {
    /// The device: its id, its name (as the log last gave it), or a unique start of either.
    pub device: String,
    /// The time: RFC 3339, unix seconds, or a time before now such as `-2h` (default:
    /// the end of the log).
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub at: Option<String>,
    /// The server's notification log: its data directory or log files; repeatable.
    /// Default: the profile's log, else the server's (`POST /logs`).
    #[arg(long, value_name = "PATH", num_args = 1..)]
    pub log: Vec<PathBuf>,
    /// One JSON object: {"id", "name", "at", "online", "since", "deleted", "firmware",
    /// "object", "timeline": [{"ts", "change"}]}.
    #[arg(long)]
    pub json: bool,
}

fn feed_line(history: &mut History, line: &[u8]) {
    // Lines the log's readers would refuse (PROTOCOL §7) say nothing here either.
    if let Ok(logged) = serde_json::from_slice::<LoggedNotification>(line) {
        history.feed(logged.ts, &logged.id, &logged.name, &logged.data);
    }
}

pub async fn run(profile: &Profile, args: HistoryArgs) -> CommandResult {
    let at = args
        .at
        .as_deref()
        .map(|text| {
            herd_analytics::parse_time(text).map_err(|e| Failure::usage(format!("--at: {e}")))
        })
        .transpose()?;
    let mut history = History::new(at);
    let files = if args.log.is_empty() {
        profile.log.clone()
    } else {
        args.log.clone()
    };
    if files.is_empty() {
        let client = profile.client().map_err(Failure::usage)?;
        let mut offset = 0;
        loop {
            let page = client
                .logs(LogsQuery {
                    start: Some(offset),
                    limit: Some(crate::logsource::PAGE),
                })
                .await?;
            for item in &page.items {
                if let Ok(logged) = serde_json::from_value::<LoggedNotification>(item.clone()) {
                    history.feed(logged.ts, &logged.id, &logged.name, &logged.data);
                }
            }
            let next = page.next.unwrap_or(offset + page.items.len() as u64);
            // Past the time asked about, the rest of the log cannot change the answer.
            if next <= offset || history.later > 0 {
                break;
            }
            offset = next;
        }
    } else {
        let files = herd_analytics::resolve(&files)
            .map_err(|e| Failure::new(Exit::NotFound, e.to_string()))?;
        history = tokio::task::spawn_blocking(move || {
            for path in files {
                let file = std::fs::File::open(&path).map_err(|e| {
                    Failure::new(
                        Exit::Failure,
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                let mut reader = std::io::BufReader::new(file);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    let read = reader.read_until(b'\n', &mut line).map_err(|e| {
                        Failure::new(
                            Exit::Failure,
                            format!("cannot read {}: {e}", path.display()),
                        )
                    })?;
                    if read == 0 {
                        break;
                    }
                    feed_line(&mut history, &line);
                }
            }
            Ok::<_, Failure>(history)
        })
        .await
        .map_err(|e| Failure::new(Exit::Failure, format!("reading the log stopped: {e}")))??;
    }
    let id = match resolve(&args.device, history.names()) {
        Resolution::Found(id) => id,
        Resolution::NotFound => {
            return Err(Failure::new(
                Exit::NotFound,
                format!(
                    "the log has no device with the id or name {:?}",
                    args.device
                ),
            ))
        }
        Resolution::Ambiguous(candidates) => {
            return Err(Failure::usage(format!(
                "{:?} names more than one device: {}",
                args.device,
                describe_candidates(&candidates)
            )))
        }
    };
    let state = history
        .device(&id)
        .ok_or_else(|| Failure::new(Exit::Failure, "a resolved device went missing"))?;
    if args.json {
        let object = json!({
            "id": state.id,
            "name": state.name,
            "at": at,
            "online": state.online,
            "since": state.since,
            "deleted": state.deleted,
            "firmware": state.firmware(),
            "object": state.object.as_ref().map(|(_, o)| o.clone()).unwrap_or(Value::Null),
            "timeline": state
                .timeline
                .iter()
                .map(|(ts, change)| json!({"ts": ts, "change": change}))
                .collect::<Vec<_>>(),
        });
        return print(&format!("{object}\n"));
    }
    print(&describe(state, at))
}
