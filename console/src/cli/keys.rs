//! `herd keys create|list|rm`: API keys with a scope, a device filter and an expiry
//! (PROTOCOL §11).

use clap::Subcommand;
use herd_client::{Client, KeyObject, NewKey, Scope};

use super::commands::{print, table};
use super::{CommandResult, Exit, Failure};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a key; its secret is printed once.
    Create {
        /// read (GETs, the stream, the log), operate (also shadows, calls, create and
        /// rename), deploy (also firmware, OTA, rollouts, delete) or admin (also users).
        /// Default: the scope of the key in use.
        #[arg(long, value_parser = parse_scope)]
        scope: Option<Scope>,
        /// Only devices matching this filter, e.g. 'name:lamp-*'.
        #[arg(long)]
        devices: Option<String>,
        /// When it stops working: a span from now (30d, 12h, 2w) or an RFC 3339 time.
        #[arg(long)]
        expires: Option<String>,
        /// A name for people.
        #[arg(long)]
        name: Option<String>,
        /// Print the key object, secret included, as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List this user's keys (without secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete a key by id.
    Rm { id: String },
}

fn parse_scope(text: &str) -> Result<Scope, String> {
    Scope::parse(text).ok_or_else(|| format!("{text:?} is not read, operate, deploy or admin"))
}

/// `30d` from now, or an RFC 3339 time as given.
fn expiry(text: &str) -> Result<String, Failure> {
    let text = text.trim();
    if let Some(seconds) = herd_analytics::relative_seconds(text) {
        let at = time::OffsetDateTime::now_utc() + time::Duration::seconds_f64(seconds);
        return at
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|e| Failure::usage(e.to_string()));
    }
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|_| text.to_string())
        .map_err(|_| {
            Failure::usage(format!(
                "--expires {text:?} is neither a span such as 30d nor an RFC 3339 time"
            ))
        })
}

fn json_text(value: &impl serde::Serialize) -> Result<String, Failure> {
    serde_json::to_string_pretty(value)
        .map(|t| t + "\n")
        .map_err(|e| Failure::new(Exit::Failure, e.to_string()))
}

fn row(key: &KeyObject) -> [String; 6] {
    [
        key.id.clone(),
        key.name.clone(),
        key.scope
            .map_or("(full)".to_string(), |s| s.as_str().to_string()),
        key.devices.clone().unwrap_or_else(|| "-".into()),
        key.expires_at.clone().unwrap_or_else(|| "never".into()),
        key.last_used.clone().unwrap_or_else(|| "never".into()),
    ]
}

pub async fn run(client: &Client, read_only: bool, command: KeysCommand) -> CommandResult {
    match command {
        KeysCommand::Create {
            scope,
            devices,
            expires,
            name,
            json,
        } => {
            if read_only {
                return Err(Failure::read_only("make a key"));
            }
            let key = NewKey {
                name,
                scope,
                devices,
                expires_at: expires.as_deref().map(expiry).transpose()?,
            };
            let made = client.create_key(&key).await?;
            if json {
                return print(&json_text(&made)?);
            }
            let secret = made.token.clone().unwrap_or_default();
            print(&format!(
                "{secret}\n{}\n",
                table(
                    &["ID", "NAME", "SCOPE", "DEVICES", "EXPIRES", "LAST USED"],
                    &[row(&made)]
                )
                .trim_end()
            ))
        }
        KeysCommand::List { json } => {
            let keys = client.keys().await?;
            if json {
                return print(&json_text(&keys)?);
            }
            let rows: Vec<[String; 6]> = keys.iter().map(row).collect();
            print(&table(
                &["ID", "NAME", "SCOPE", "DEVICES", "EXPIRES", "LAST USED"],
                &rows,
            ))
        }
        KeysCommand::Rm { id } => {
            if read_only {
                return Err(Failure::read_only("delete a key"));
            }
            client.delete_key(&id).await?;
            Ok(())
        }
    }
}
