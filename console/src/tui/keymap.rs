//! Key maps: which key does what, with the defaults built in and the `[keys]` table of the
//! config file changing any of them.
//!
//! ```toml
//! [keys]
//! results = "O"
//! delete = "ctrl-x"
//! tail = "l"
//! ```
//!
//! A key is a character (`o`, `O`, `?`), a name (`enter`, `esc`, `tab`, `backtab`,
//! `space`, `delete`, `backspace`, `home`, `end`, `pageup`, `pagedown`, `up`, `down`,
//! `left`, `right`, `f1`..`f12`), or either with `ctrl-` or `alt-` before it. The map is
//! checked when the console starts: an unknown action, a key that cannot be read, or two
//! actions of one view on the same key are errors that name the entry, never a silent
//! fallback. Navigation (arrows, PgUp/PgDn, j/k, g/G) and typing into fields are not
//! remapped. The fleet, device and tail views dispatch on [`KeyMap::action`]; the results,
//! rollouts, rollout, bench and analytics views match on their built-in keys, which
//! [`KeyMap::translate`] turns remapped keys into. Footer hints and the help show
//! [`KeyMap::label`].

use std::collections::BTreeMap;
use std::fmt;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// What a key can be bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    // Everywhere.
    Palette,
    Help,
    // The fleet.
    Quit,
    Open,
    Filter,
    Mark,
    MarkAll,
    Tail,
    Analytics,
    Results,
    Rollouts,
    NewRollout,
    Reload,
    Delete,
    // A device.
    Edit,
    EditExternal,
    Call,
    Logs,
    Info,
    DeviceTail,
    Push,
    DeviceReload,
    History,
    // The tail.
    Follow,
    TailDevice,
    TailNames,
    TailFilter,
    ClearFilter,
    Wrap,
    Save,
    ClearTail,
    // The results pane.
    OlderResults,
    NewerResults,
    SaveResults,
    DismissResults,
    // The rollouts list and one rollout's page.
    RolloutNew,
    RolloutsReload,
    RolloutStart,
    RolloutPause,
    RolloutResume,
    RolloutAbort,
    RolloutRetry,
    RolloutReload,
    // The bench.
    Flash,
    Ports,
    BenchName,
    BenchWifi,
    BenchPass,
    BenchImage,
    BenchOpen,
    // Analytics.
    Range,
    Bucket,
    NextTable,
    SortNext,
    SortReverse,
    Query,
}

/// Where an action applies; keys must be unique within one scope and the global one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Global,
    Fleet,
    Device,
    Tail,
    Results,
    Rollouts,
    Rollout,
    Bench,
    Analytics,
}

impl Action {
    /// Every action with its config name, scope and default key.
    pub const ALL: [(Action, &'static str, Scope, &'static str); 57] = [
        (Action::Palette, "palette", Scope::Global, ":"),
        (Action::Help, "help", Scope::Global, "?"),
        (Action::Quit, "quit", Scope::Fleet, "q"),
        (Action::Open, "open", Scope::Fleet, "enter"),
        (Action::Filter, "filter", Scope::Fleet, "/"),
        (Action::Mark, "mark", Scope::Fleet, "space"),
        (Action::MarkAll, "mark_all", Scope::Fleet, "*"),
        (Action::Tail, "tail", Scope::Fleet, "t"),
        (Action::Analytics, "analytics", Scope::Fleet, "a"),
        (Action::Results, "results", Scope::Fleet, "o"),
        (Action::Rollouts, "rollouts", Scope::Fleet, "R"),
        (Action::NewRollout, "new_rollout", Scope::Fleet, "U"),
        (Action::Reload, "reload", Scope::Fleet, "r"),
        (Action::Delete, "delete", Scope::Fleet, "ctrl-d"),
        (Action::Edit, "edit", Scope::Device, "e"),
        (Action::EditExternal, "edit_external", Scope::Device, "E"),
        (Action::Call, "call", Scope::Device, "c"),
        (Action::Logs, "logs", Scope::Device, "l"),
        (Action::Info, "info", Scope::Device, "i"),
        (Action::DeviceTail, "device_tail", Scope::Device, "t"),
        (Action::Push, "push", Scope::Device, "u"),
        (Action::DeviceReload, "device_reload", Scope::Device, "r"),
        (Action::History, "history", Scope::Device, "h"),
        (Action::Follow, "follow", Scope::Tail, "f"),
        (Action::TailDevice, "tail_device", Scope::Tail, "d"),
        (Action::TailNames, "tail_names", Scope::Tail, "n"),
        (Action::TailFilter, "tail_filter", Scope::Tail, "/"),
        (Action::ClearFilter, "clear_filter", Scope::Tail, "x"),
        (Action::Wrap, "wrap", Scope::Tail, "w"),
        (Action::Save, "save", Scope::Tail, "s"),
        (Action::ClearTail, "clear_tail", Scope::Tail, "c"),
        (Action::Delete, "device_delete", Scope::Device, "delete"),
        (Action::OlderResults, "older_results", Scope::Results, "["),
        (Action::NewerResults, "newer_results", Scope::Results, "]"),
        (Action::SaveResults, "save_results", Scope::Results, "s"),
        (
            Action::DismissResults,
            "dismiss_results",
            Scope::Results,
            "x",
        ),
        (Action::RolloutNew, "rollouts_new", Scope::Rollouts, "n"),
        (
            Action::RolloutsReload,
            "rollouts_reload",
            Scope::Rollouts,
            "ctrl-l",
        ),
        (Action::RolloutStart, "rollout_start", Scope::Rollout, "s"),
        (Action::RolloutPause, "rollout_pause", Scope::Rollout, "p"),
        (Action::RolloutResume, "rollout_resume", Scope::Rollout, "r"),
        (Action::RolloutAbort, "rollout_abort", Scope::Rollout, "A"),
        (Action::RolloutRetry, "rollout_retry", Scope::Rollout, "R"),
        (
            Action::RolloutReload,
            "rollout_reload",
            Scope::Rollout,
            "ctrl-l",
        ),
        (Action::Flash, "flash", Scope::Bench, "f"),
        (Action::Ports, "ports", Scope::Bench, "r"),
        (Action::BenchName, "bench_name", Scope::Bench, "n"),
        (Action::BenchWifi, "bench_wifi", Scope::Bench, "w"),
        (Action::BenchPass, "bench_pass", Scope::Bench, "p"),
        (Action::BenchImage, "bench_image", Scope::Bench, "i"),
        (Action::BenchOpen, "bench_open", Scope::Bench, "o"),
        (Action::Range, "range", Scope::Analytics, "r"),
        (Action::Bucket, "bucket", Scope::Analytics, "b"),
        (Action::NextTable, "next_table", Scope::Analytics, "t"),
        (Action::SortNext, "sort", Scope::Analytics, "s"),
        (Action::SortReverse, "sort_reverse", Scope::Analytics, "S"),
        (Action::Query, "query", Scope::Analytics, "e"),
    ];
}

/// A key as the config writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub code: KeyCode,
    pub modifiers: KeyModifiers,
}

impl Key {
    /// Reads `ctrl-d`, `O`, `space`, `f5`.
    pub fn parse(text: &str) -> Result<Key, String> {
        let mut modifiers = KeyModifiers::NONE;
        let mut rest = text;
        loop {
            let lower = rest.to_ascii_lowercase();
            if rest.chars().count() > 1 && lower.starts_with("ctrl-") {
                modifiers |= KeyModifiers::CONTROL;
                rest = &rest[5..];
            } else if rest.chars().count() > 1 && lower.starts_with("alt-") {
                modifiers |= KeyModifiers::ALT;
                rest = &rest[4..];
            } else {
                break;
            }
        }
        let mut chars = rest.chars();
        let code = match (chars.next(), chars.next()) {
            (Some(c), None) => KeyCode::Char(c),
            _ => match rest.to_ascii_lowercase().as_str() {
                "enter" | "return" => KeyCode::Enter,
                "esc" | "escape" => KeyCode::Esc,
                "tab" => KeyCode::Tab,
                "backtab" => KeyCode::BackTab,
                "space" => KeyCode::Char(' '),
                "delete" | "del" => KeyCode::Delete,
                "backspace" => KeyCode::Backspace,
                "home" => KeyCode::Home,
                "end" => KeyCode::End,
                "pageup" => KeyCode::PageUp,
                "pagedown" => KeyCode::PageDown,
                "up" => KeyCode::Up,
                "down" => KeyCode::Down,
                "left" => KeyCode::Left,
                "right" => KeyCode::Right,
                other => match other.strip_prefix('f').and_then(|n| n.parse::<u8>().ok()) {
                    Some(n) if (1..=12).contains(&n) => KeyCode::F(n),
                    _ => return Err(format!("{text:?} is not a key")),
                },
            },
        };
        Ok(Key { code, modifiers })
    }

    /// Whether `event` is this key. Shift is part of the character (`O` is shifted `o`),
    /// so it is not compared for characters.
    pub fn matches(&self, event: &KeyEvent) -> bool {
        let relevant = KeyModifiers::CONTROL | KeyModifiers::ALT;
        let modifiers = if matches!(self.code, KeyCode::Char(_)) {
            event.modifiers & relevant
        } else {
            event.modifiers & (relevant | KeyModifiers::SHIFT)
        };
        event.code == self.code && modifiers == self.modifiers
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.modifiers.contains(KeyModifiers::CONTROL) {
            f.write_str("^")?;
        }
        if self.modifiers.contains(KeyModifiers::ALT) {
            f.write_str("M-")?;
        }
        match self.code {
            KeyCode::Char(' ') => f.write_str("␣"),
            KeyCode::Char(c) if self.modifiers.contains(KeyModifiers::CONTROL) => {
                write!(f, "{}", c.to_ascii_uppercase())
            }
            KeyCode::Char(c) => write!(f, "{c}"),
            KeyCode::Enter => f.write_str("⏎"),
            KeyCode::Esc => f.write_str("Esc"),
            KeyCode::Tab => f.write_str("Tab"),
            KeyCode::BackTab => f.write_str("⇧Tab"),
            KeyCode::Delete => f.write_str("Del"),
            KeyCode::Backspace => f.write_str("⌫"),
            KeyCode::Home => f.write_str("Home"),
            KeyCode::End => f.write_str("End"),
            KeyCode::PageUp => f.write_str("PgUp"),
            KeyCode::PageDown => f.write_str("PgDn"),
            KeyCode::Up => f.write_str("↑"),
            KeyCode::Down => f.write_str("↓"),
            KeyCode::Left => f.write_str("←"),
            KeyCode::Right => f.write_str("→"),
            KeyCode::F(n) => write!(f, "F{n}"),
            other => write!(f, "{other:?}"),
        }
    }
}

/// One binding: the action, its config name, where it applies, and its key.
#[derive(Debug, Clone, PartialEq)]
struct Binding {
    action: Action,
    name: &'static str,
    scope: Scope,
    key: Key,
}

/// The keys in force.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyMap {
    bindings: Vec<Binding>,
}

impl Default for KeyMap {
    fn default() -> Self {
        let bindings = Action::ALL
            .iter()
            .filter_map(|&(action, name, scope, key)| {
                Key::parse(key).ok().map(|key| Binding {
                    action,
                    name,
                    scope,
                    key,
                })
            })
            .collect();
        KeyMap { bindings }
    }
}

impl KeyMap {
    /// The defaults with `overrides` (config name to key) applied, checked.
    pub fn with_overrides(overrides: &BTreeMap<String, String>) -> Result<KeyMap, String> {
        let mut map = KeyMap::default();
        for (name, text) in overrides {
            let Some(index) = Action::ALL.iter().position(|(_, n, _, _)| n == name) else {
                let known: Vec<&str> = Action::ALL.iter().map(|(_, n, _, _)| *n).collect();
                return Err(format!(
                    "[keys] {name}: no such action; the actions are {}",
                    known.join(", ")
                ));
            };
            let key = Key::parse(text).map_err(|e| format!("[keys] {name}: {e}"))?;
            map.bindings[index].key = key;
        }
        // One key, one meaning: within a view, and against the keys of every view.
        for (i, a) in map.bindings.iter().enumerate() {
            for b in &map.bindings[i + 1..] {
                let overlap =
                    a.scope == b.scope || a.scope == Scope::Global || b.scope == Scope::Global;
                if overlap && a.key == b.key {
                    return Err(format!(
                        "[keys] {} and {} are both on {}",
                        a.name, b.name, a.key
                    ));
                }
            }
        }
        Ok(map)
    }

    /// The action `event` means in `scope` (global actions count everywhere).
    pub fn action(&self, scope: Scope, event: &KeyEvent) -> Option<Action> {
        self.bindings
            .iter()
            .find(|b| (b.scope == scope || b.scope == Scope::Global) && b.key.matches(event))
            .map(|b| b.action)
    }

    /// `event` as the built-in keys of a view in `scope` know it: a remapped key becomes
    /// its action's default key, and a default key remapped away means nothing (`None`).
    /// Views that match on their default keys take their key map this way.
    pub fn translate(&self, scope: Scope, event: KeyEvent) -> Option<KeyEvent> {
        let default_of = |binding: &Binding| {
            Action::ALL
                .iter()
                .find(|(_, name, _, _)| *name == binding.name)
                .and_then(|(_, _, _, key)| Key::parse(key).ok())
        };
        let in_scope = || self.bindings.iter().filter(|b| b.scope == scope);
        if let Some(binding) = in_scope().find(|b| b.key.matches(&event)) {
            return default_of(binding).map(|key| KeyEvent::new(key.code, key.modifiers));
        }
        let remapped_away =
            in_scope().any(|b| default_of(b).is_some_and(|key| key.matches(&event)));
        (!remapped_away).then_some(event)
    }

    /// The key of `action` in `scope`, for hints and help.
    pub fn key(&self, scope: Scope, action: Action) -> Option<Key> {
        self.bindings
            .iter()
            .find(|b| b.action == action && (b.scope == scope || b.scope == Scope::Global))
            .map(|b| b.key)
    }

    /// The key of `action` in `scope` as hints show it (`?` when unbound).
    pub fn label(&self, scope: Scope, action: Action) -> String {
        self.key(scope, action)
            .map_or_else(|| "?".into(), |key| key.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(code: KeyCode, modifiers: KeyModifiers) -> KeyEvent {
        KeyEvent::new(code, modifiers)
    }

    #[test]
    fn keys_read_and_match() {
        assert_eq!(
            Key::parse("ctrl-d"),
            Ok(Key {
                code: KeyCode::Char('d'),
                modifiers: KeyModifiers::CONTROL
            })
        );
        assert_eq!(Key::parse("F5").map(|k| k.code), Ok(KeyCode::F(5)));
        assert_eq!(Key::parse("space").map(|k| k.code), Ok(KeyCode::Char(' ')));
        assert!(Key::parse("ctrl-").is_err(), "a modifier needs a key");
        assert!(Key::parse("hyper-x").is_err());
        let shifted = event(KeyCode::Char('O'), KeyModifiers::SHIFT);
        assert!(Key::parse("O").expect("key").matches(&shifted));
        assert!(!Key::parse("o").expect("key").matches(&shifted));
        assert_eq!(Key::parse("ctrl-d").expect("key").to_string(), "^D");
    }

    #[test]
    fn defaults_and_overrides_are_checked() {
        let defaults = KeyMap::with_overrides(&BTreeMap::new()).expect("the defaults are sound");
        let o = event(KeyCode::Char('o'), KeyModifiers::NONE);
        assert_eq!(defaults.action(Scope::Fleet, &o), Some(Action::Results));
        assert_eq!(defaults.action(Scope::Device, &o), None);
        let colon = event(KeyCode::Char(':'), KeyModifiers::NONE);
        assert_eq!(defaults.action(Scope::Tail, &colon), Some(Action::Palette));

        let mut overrides = BTreeMap::new();
        overrides.insert("results".to_string(), "O".to_string());
        let map = KeyMap::with_overrides(&overrides).expect("valid");
        assert_eq!(map.action(Scope::Fleet, &o), None);
        assert_eq!(map.label(Scope::Fleet, Action::Results), "O");

        overrides.insert("tail".to_string(), "O".to_string());
        let error = KeyMap::with_overrides(&overrides).expect_err("clash");
        assert!(
            error.contains("tail and results are both on O")
                || error.contains("results and tail are both on O"),
            "{error}"
        );
        let mut overrides = BTreeMap::new();
        overrides.insert("teleport".to_string(), "x".to_string());
        assert!(KeyMap::with_overrides(&overrides)
            .expect_err("unknown")
            .contains("no such action"));
        // Views that match on their built-in keys get those keys through translate.
        let mut overrides = BTreeMap::new();
        overrides.insert("rollout_abort".to_string(), "ctrl-k".to_string());
        let map = KeyMap::with_overrides(&overrides).expect("valid");
        let ctrl_k = event(KeyCode::Char('k'), KeyModifiers::CONTROL);
        let abort = event(KeyCode::Char('A'), KeyModifiers::SHIFT);
        assert_eq!(
            map.translate(Scope::Rollout, ctrl_k).map(|e| e.code),
            Some(KeyCode::Char('A'))
        );
        assert_eq!(map.translate(Scope::Rollout, abort), None, "remapped away");
        let down = event(KeyCode::Down, KeyModifiers::NONE);
        assert_eq!(map.translate(Scope::Rollout, down), Some(down));
        assert_eq!(map.translate(Scope::Rollouts, abort), Some(abort));
        let mut overrides = BTreeMap::new();
        overrides.insert("edit".to_string(), ":".to_string());
        assert!(KeyMap::with_overrides(&overrides)
            .expect_err("the palette's key")
            .contains("palette and edit"));
    }
}
