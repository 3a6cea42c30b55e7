//! The device filter language shared by the console's `/` filter and rollout selectors
//! (PROTOCOL §10.5): whitespace-separated terms that must all match.
//!
//! - `field:value` matches one field: `name`, `id`, `app`, `arch`, `fw` (or `firmware`),
//!   `state` (or `online`: `yes`/`on`/`online`/`up`, `no`/`off`/`offline`/`down`),
//!   `light` (`on`, `off`, `-`), `delta` (`yes`, `no`).
//! - A bare term matches id, name, app or firmware version.
//! - Text is compared without regard to case. A value with `*` or `?` is a glob over the
//!   whole field (`name:lamp-*`); any other value matches anywhere inside the field
//!   (`name:lamp` matches `porch-lamp`).
//! - An unknown field is searched as plain text, so a typo selects nothing instead of
//!   being silently ignored.
//!
//! ```
//! use protocol::filter::{Field, Filter, Subject};
//!
//! struct Lamp;
//! impl Subject for Lamp {
//!     fn text(&self, field: Field) -> &str {
//!         match field {
//!             Field::Name => "lamp-7",
//!             Field::Firmware => "1.0.0",
//!             _ => "",
//!         }
//!     }
//!     fn online(&self) -> bool { true }
//! }
//! assert!(Filter::parse("fw:1.0.0 name:lamp-* online:yes").matches(&Lamp));
//! assert!(!Filter::parse("name:lamp-1*").matches(&Lamp));
//! ```

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::text::glob_match;

/// What a term can look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// Device id.
    Id,
    /// Display name.
    Name,
    /// Application (`info.app`).
    App,
    /// Architecture (`info.arch`).
    Arch,
    /// Firmware version (`info.fw_version`).
    Firmware,
    /// Online or offline.
    State,
    /// Light on or off.
    Light,
    /// A shadow delta is pending.
    Delta,
    /// Uptime or last-seen columns: times have no useful text, so terms on them pass.
    Time,
}

impl Field {
    /// The field a `field:` prefix names.
    pub fn from_key(key: &str) -> Option<Field> {
        let key = key.to_ascii_lowercase();
        Some(match key.as_str() {
            "id" => Field::Id,
            "name" => Field::Name,
            "app" => Field::App,
            "arch" => Field::Arch,
            "fw" | "firmware" | "version" => Field::Firmware,
            "state" | "online" => Field::State,
            "light" => Field::Light,
            "delta" => Field::Delta,
            "uptime" | "seen" | "lastseen" | "last_seen" => Field::Time,
            _ => return None,
        })
    }
}

/// A device as a filter sees it.
pub trait Subject {
    /// The text of [`Field::Id`], [`Field::Name`], [`Field::App`], [`Field::Arch`] or
    /// [`Field::Firmware`]; empty when unknown.
    fn text(&self, field: Field) -> &str;
    /// Connected now.
    fn online(&self) -> bool;
    /// The light, when known.
    fn light(&self) -> Option<bool> {
        None
    }
    /// A shadow delta is pending.
    fn delta_pending(&self) -> bool {
        false
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Term {
    field: Option<Field>,
    value: String,
    glob: bool,
}

/// A parsed filter (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    text: String,
    terms: Vec<Term>,
}

impl Filter {
    /// Parses `text`; every text is a valid filter.
    pub fn parse(text: &str) -> Filter {
        let terms = text
            .split_whitespace()
            .map(|term| {
                let (field, value) = match term.split_once(':') {
                    Some((key, value)) => match Field::from_key(key) {
                        Some(field) => (Some(field), value),
                        None => (None, term),
                    },
                    None => (None, term),
                };
                let value = value.to_lowercase();
                Term {
                    field,
                    glob: value.contains(['*', '?']),
                    value,
                }
            })
            .collect();
        Filter {
            text: text.trim().to_string(),
            terms,
        }
    }

    /// The text it was parsed from, trimmed.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// No terms: everything matches.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Whether every term matches `subject`.
    pub fn matches(&self, subject: &impl Subject) -> bool {
        self.terms.iter().all(|term| term.matches(subject))
    }
}

impl Term {
    fn text_matches(&self, text: &str) -> bool {
        if self.glob {
            glob_match(&self.value, &text.to_lowercase())
        } else {
            contains_lower(text, &self.value)
        }
    }

    fn matches(&self, subject: &impl Subject) -> bool {
        let yes = |v: &str| matches!(v, "yes" | "on" | "online" | "up" | "true");
        let no = |v: &str| matches!(v, "no" | "off" | "offline" | "down" | "false");
        let value = self.value.as_str();
        match self.field {
            None => [Field::Id, Field::Name, Field::App, Field::Firmware]
                .into_iter()
                .any(|field| self.text_matches(subject.text(field))),
            Some(Field::State) => {
                (yes(value) && subject.online()) || (no(value) && !subject.online())
            }
            Some(Field::Light) => match subject.light() {
                Some(on) => (on && yes(value)) || (!on && no(value)),
                None => matches!(value, "-" | "unknown"),
            },
            Some(Field::Delta) => {
                let pending = subject.delta_pending();
                (pending && (yes(value) || value == "pending"))
                    || (!pending && (no(value) || value == "none"))
            }
            Some(Field::Time) => true,
            Some(field) => self.text_matches(subject.text(field)),
        }
    }
}

/// Whether `haystack` contains `needle_lower` (already lower case), ignoring case.
fn contains_lower(haystack: &str, needle_lower: &str) -> bool {
    if needle_lower.is_empty() {
        return true;
    }
    if haystack.is_ascii() {
        // The common case, without an allocation per row and term.
        haystack
            .as_bytes()
            .windows(needle_lower.len())
            .any(|w| w.eq_ignore_ascii_case(needle_lower.as_bytes()))
    } else {
        haystack.to_lowercase().contains(needle_lower)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    struct Row {
        id: &'static str,
        name: &'static str,
        fw: &'static str,
        online: bool,
        light: Option<bool>,
        delta: bool,
    }

    impl Subject for Row {
        fn text(&self, field: Field) -> &str {
            match field {
                Field::Id => self.id,
                Field::Name => self.name,
                Field::App => "smartlight",
                Field::Arch => "esp32c3",
                Field::Firmware => self.fw,
                _ => "",
            }
        }
        fn online(&self) -> bool {
            self.online
        }
        fn light(&self) -> Option<bool> {
            self.light
        }
        fn delta_pending(&self) -> bool {
            self.delta
        }
    }

    fn lamp() -> Row {
        Row {
            id: "abc123",
            name: "porch-lamp",
            fw: "1.0.0",
            online: true,
            light: Some(false),
            delta: true,
        }
    }

    #[test]
    fn terms() {
        let check = |text: &str| Filter::parse(text).matches(&lamp());
        assert!(check(""));
        assert!(check("porch"));
        assert!(check("PORCH abc"));
        assert!(check("name:lamp state:online light:off delta:yes"));
        assert!(check("online:yes app:smart fw:1.0 arch:esp32"));
        assert!(check("name:porch-* fw:1.0.? uptime:whatever"));
        assert!(!check("name:lamp-*"), "a glob covers the whole field");
        assert!(!check("state:offline"));
        assert!(!check("online:no"));
        assert!(!check("name:kitchen"));
        assert!(!check("zzz"));
        assert!(!check("colour:red"), "an unknown field is plain text");
        assert!(!check("delta:no"));
        let unknown = Row {
            light: None,
            ..lamp()
        };
        assert!(Filter::parse("light:-").matches(&unknown));
        assert!(!Filter::parse("light:off").matches(&unknown));
    }

    #[test]
    fn text_is_kept() {
        let filter = Filter::parse("  fw:1.0.0   name:a ");
        assert_eq!(filter.text(), "fw:1.0.0   name:a");
        assert!(!filter.is_empty());
        assert!(Filter::parse("   ").is_empty());
    }

    proptest! {
        #[test]
        fn any_text_parses_and_never_panics(text in ".{0,64}") {
            let filter = Filter::parse(&text);
            let _ = filter.matches(&lamp());
        }
    }
}
