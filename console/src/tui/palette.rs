//! The `:` command palette: what can be typed, and parsing it.

use serde_json::Value;

use crate::fleet::{Column, Sort};

/// Palette entries: name, arguments, what it does. Shown as suggestions and in help.
pub const COMMANDS: &[(&str, &str, &str)] = &[
    ("fleet", "", "the device table (also :devices)"),
    (
        "notifications",
        "",
        "live notification tail (also :tail, :events)",
    ),
    (
        "analytics",
        "",
        "reports and charts over the notification log (also :report)",
    ),
    (
        "rollouts",
        "",
        "firmware rollouts: progress, pause, resume, abort (also :rollout)",
    ),
    ("bench", "", "flash a light onto a board on a serial port"),
    (
        "device",
        "NAME",
        "open one device: its name, id, or the start of either",
    ),
    (
        "filter",
        "TEXT",
        "filter the fleet: text, field:value, globs",
    ),
    ("sort", "COLUMN [desc]", "sort the fleet by a column"),
    (
        "set",
        "JSON",
        "merge JSON into desired of the marked devices",
    ),
    ("call", "METHOD [JSON]", "call an RPC on the marked devices"),
    (
        "delete",
        "",
        "delete the marked devices, or the one selected (asks; also ^D)",
    ),
    (
        "rename",
        "NAME",
        "give the selected or open device a new name",
    ),
    ("save", "[FILE]", "save the notification tail as JSON lines"),
    (
        "results",
        "",
        "what bulk actions and RPC calls answered, per device (also o)",
    ),
    (
        "ctx",
        "[NAME]",
        "list the config's profiles, or switch the console to one",
    ),
    ("help", "", "keys and commands"),
    ("quit", "", "leave (also :q)"),
];

/// A parsed palette line.
#[derive(Debug, Clone, PartialEq)]
pub enum PaletteCommand {
    Fleet,
    Notifications,
    Analytics,
    Rollouts,
    Bench,
    Device(String),
    Filter(String),
    Sort(Sort),
    SetDesired(Value),
    Call {
        method: String,
        params: Option<Value>,
    },
    Save(Option<String>),
    Delete,
    Rename(String),
    Results,
    /// `:ctx` lists the profiles; `:ctx NAME` switches to one.
    Context(Option<String>),
    Help,
    Quit,
}

/// Parses a palette line, or explains what is wrong with it.
pub fn parse(line: &str) -> Result<PaletteCommand, String> {
    let line = line.trim();
    let (word, rest) = match line.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim()),
        None => (line, ""),
    };
    let json = |text: &str, what: &str| -> Result<Value, String> {
        serde_json::from_str(text).map_err(|e| format!("{what} is not valid JSON: {e}"))
    };
    let resolved = resolve(word);
    let word = resolved.unwrap_or(word);
    match word {
        "" => Err("type a command; Tab completes, Esc closes".into()),
        "fleet" | "devices" | "f" => Ok(PaletteCommand::Fleet),
        "notifications" | "notify" | "events" | "tail" | "n" => Ok(PaletteCommand::Notifications),
        "analytics" | "report" | "reports" | "a" => Ok(PaletteCommand::Analytics),
        "rollouts" | "rollout" | "updates" => Ok(PaletteCommand::Rollouts),
        "bench" | "flash" => Ok(PaletteCommand::Bench),
        "device" | "d" => {
            if rest.is_empty() {
                Err(":device needs a name or an id".into())
            } else {
                Ok(PaletteCommand::Device(rest.to_string()))
            }
        }
        "filter" | "/" => Ok(PaletteCommand::Filter(rest.to_string())),
        "sort" => {
            let mut words = rest.split_whitespace();
            let column = words.next().ok_or(":sort needs a column")?;
            let column = Column::from_key(column).ok_or_else(|| {
                let known: Vec<_> = Column::ALL.iter().map(|c| c.key()).collect();
                format!("unknown column {column:?}; one of {}", known.join(", "))
            })?;
            let descending = matches!(words.next(), Some("desc" | "descending" | "-"));
            Ok(PaletteCommand::Sort(Sort { column, descending }))
        }
        "set" => {
            let value = json(rest, "the desired change")?;
            if !value.is_object() {
                return Err(":set needs a JSON object, e.g. :set {\"on\": true}".into());
            }
            Ok(PaletteCommand::SetDesired(value))
        }
        "call" => {
            let (method, params) = match rest.split_once(char::is_whitespace) {
                Some((method, params)) => (method, Some(json(params.trim(), "the params")?)),
                None => (rest, None),
            };
            if method.is_empty() {
                return Err(":call needs a method, e.g. :call Sys.Reboot".into());
            }
            Ok(PaletteCommand::Call {
                method: method.to_string(),
                params,
            })
        }
        "save" | "w" => Ok(PaletteCommand::Save(
            (!rest.is_empty()).then(|| rest.to_string()),
        )),
        "results" | "res" => Ok(PaletteCommand::Results),
        "delete" | "rm" => Ok(PaletteCommand::Delete),
        "rename" => {
            if rest.is_empty() {
                Err(":rename needs the new name".into())
            } else {
                Ok(PaletteCommand::Rename(rest.to_string()))
            }
        }
        "ctx" => Ok(PaletteCommand::Context(
            (!rest.is_empty()).then(|| rest.to_string()),
        )),
        "help" | "h" | "?" => Ok(PaletteCommand::Help),
        "quit" | "q" | "q!" | "exit" => Ok(PaletteCommand::Quit),
        other => Err(format!("unknown command :{other} (Tab lists commands)")),
    }
}

/// Other names of commands.
const ALIASES: [(&str, &str); 12] = [
    ("devices", "fleet"),
    ("tail", "notifications"),
    ("events", "notifications"),
    ("notify", "notifications"),
    ("exit", "quit"),
    ("report", "analytics"),
    ("reports", "analytics"),
    ("rollout", "rollouts"),
    ("updates", "rollouts"),
    ("rm", "delete"),
    ("context", "ctx"),
    ("profile", "ctx"),
];

/// The command `word` names: a name or alias, or a start of one. When a start fits
/// several, the shortest wins if it starts every other (`:dev` is `:device`, not
/// `:devices`); otherwise it names none. Completion and running use this one rule, so
/// Tab never completes to one command while Enter runs another.
pub fn resolve(word: &str) -> Option<&'static str> {
    if word.is_empty() {
        return None;
    }
    let names = COMMANDS
        .iter()
        .map(|(name, _, _)| (*name, *name))
        .chain(ALIASES);
    let mut matches: Vec<(&'static str, &'static str)> =
        names.filter(|(name, _)| name.starts_with(word)).collect();
    if let Some(&(_, canonical)) = matches.iter().find(|(name, _)| *name == word) {
        return Some(canonical);
    }
    matches.sort_by_key(|(name, _)| name.len());
    let (shortest, canonical) = *matches.first()?;
    let all_same = matches.iter().all(|(_, c)| *c == canonical);
    let starts_all = matches.iter().all(|(name, _)| name.starts_with(shortest));
    (all_same || starts_all).then_some(canonical)
}

/// Commands whose name starts with what was typed so far.
pub fn suggestions(line: &str) -> Vec<&'static (&'static str, &'static str, &'static str)> {
    let word = line
        .trim_start()
        .split(char::is_whitespace)
        .next()
        .unwrap_or("");
    COMMANDS
        .iter()
        .filter(|(name, _, _)| name.starts_with(word))
        .collect()
}

/// Completes the command word to the command [`resolve`] finds for it.
pub fn complete(line: &str) -> Option<String> {
    if line.contains(char::is_whitespace) {
        return None;
    }
    let canonical = resolve(line.trim())?;
    let (name, args, _) = COMMANDS.iter().find(|(name, _, _)| *name == canonical)?;
    Some(if args.is_empty() {
        name.to_string()
    } else {
        format!("{name} ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses() {
        assert_eq!(parse("devices"), Ok(PaletteCommand::Fleet));
        assert_eq!(parse(" tail "), Ok(PaletteCommand::Notifications));
        assert_eq!(
            parse("device abc"),
            Ok(PaletteCommand::Device("abc".into()))
        );
        assert_eq!(
            parse("sort seen desc"),
            Ok(PaletteCommand::Sort(Sort {
                column: Column::LastSeen,
                descending: true
            }))
        );
        assert_eq!(
            parse("set {\"on\": true}"),
            Ok(PaletteCommand::SetDesired(json!({"on": true})))
        );
        assert_eq!(
            parse("call Sys.Reboot {\"delay_ms\": 10}"),
            Ok(PaletteCommand::Call {
                method: "Sys.Reboot".into(),
                params: Some(json!({"delay_ms": 10}))
            })
        );
        assert_eq!(parse("q"), Ok(PaletteCommand::Quit));
        assert!(parse("set [1]").is_err());
        assert!(parse("set {")
            .expect_err("bad json")
            .contains("not valid JSON"));
        assert!(parse("sort colour")
            .expect_err("bad column")
            .contains("unknown column"));
        assert!(parse("frobnicate").is_err());
        assert_eq!(parse("tai"), Ok(PaletteCommand::Notifications));
        assert_eq!(parse("noti"), Ok(PaletteCommand::Notifications));
        assert_eq!(parse("an"), Ok(PaletteCommand::Analytics));
        assert_eq!(parse("report"), Ok(PaletteCommand::Analytics));
        assert_eq!(parse("rep"), Ok(PaletteCommand::Analytics));
        assert!(parse("s").is_err(), "ambiguous");
        assert_eq!(parse("rollouts"), Ok(PaletteCommand::Rollouts));
        assert_eq!(parse("roll"), Ok(PaletteCommand::Rollouts));
        assert_eq!(parse("rollout"), Ok(PaletteCommand::Rollouts));
        assert_eq!(parse("ctx"), Ok(PaletteCommand::Context(None)));
        assert_eq!(
            parse("ctx prod"),
            Ok(PaletteCommand::Context(Some("prod".into())))
        );
        assert_eq!(
            parse("profile prod"),
            Ok(PaletteCommand::Context(Some("prod".into())))
        );
    }

    #[test]
    fn completes() {
        assert_eq!(complete("no"), Some("notifications".into()));
        // Tab and Enter agree: `:dev` is `:device` both ways.
        assert_eq!(complete("dev"), Some("device ".into()));
        assert_eq!(parse("dev lamp"), Ok(PaletteCommand::Device("lamp".into())));
        assert_eq!(parse("devices"), Ok(PaletteCommand::Fleet));
        assert_eq!(complete("devices"), Some("fleet".into()));
        assert_eq!(complete("tai"), Some("notifications".into()));
        assert_eq!(complete("s"), None);
        assert_eq!(suggestions("s").len(), 3);
    }
}
