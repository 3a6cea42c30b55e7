//! Colours. Only the 16 ANSI colours plus bold/reverse are used by default, so the console
//! looks the same on a 16-colour console as on a true-colour terminal; `NO_COLOR` turns
//! colour off and leaves the emphasis to bold and reverse video.
//!
//! The `[theme]` table of the config file changes any style, checked when the console
//! starts (an unknown style name or word is an error naming it):
//!
//! ```toml
//! [theme]
//! base = "colour"            # or "monochrome"
//! online = "bright green"
//! selected = "black on cyan"
//! error = "bold white on red"
//! stale = "italic #d0a020"
//! ```
//!
//! A style is words: colour names (`black`, `red`, ..., `gray`, `dark gray`, `bright
//! red`, ..., `#rrggbb`, or a number 0-255), `on` and a background colour, and the
//! modifiers `bold`, `dim`, `italic`, `underlined`, `reversed`, `crossed`.

use std::collections::BTreeMap;

use ratatui::style::{Color, Modifier, Style};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Theme {
    pub header: Style,
    pub title: Style,
    pub badge: Style,
    pub online: Style,
    pub offline: Style,
    pub warn: Style,
    pub error: Style,
    pub dim: Style,
    pub key: Style,
    pub selected: Style,
    pub marked: Style,
    pub changed: Style,
    pub pending: Style,
    pub accent: Style,
    /// What was last heard while the server cannot be reached.
    pub stale: Style,
}

impl Theme {
    /// The default: 16 ANSI colours.
    pub fn colour() -> Theme {
        let plain = Style::default();
        Theme {
            header: plain.add_modifier(Modifier::BOLD),
            title: plain.fg(Color::Cyan).add_modifier(Modifier::BOLD),
            badge: plain
                .fg(Color::White)
                .bg(Color::Red)
                .add_modifier(Modifier::BOLD),
            online: plain.fg(Color::Green),
            offline: plain.fg(Color::Red),
            warn: plain.fg(Color::Yellow),
            error: plain.fg(Color::Red).add_modifier(Modifier::BOLD),
            dim: plain.fg(Color::DarkGray),
            key: plain.fg(Color::Cyan).add_modifier(Modifier::BOLD),
            selected: plain.add_modifier(Modifier::REVERSED),
            marked: plain.fg(Color::Magenta).add_modifier(Modifier::BOLD),
            changed: plain.fg(Color::Black).bg(Color::Yellow),
            pending: plain.fg(Color::Yellow),
            accent: plain.fg(Color::Blue),
            stale: plain.fg(Color::Yellow).add_modifier(Modifier::ITALIC),
        }
    }

    /// No colour at all (`NO_COLOR`).
    pub fn monochrome() -> Theme {
        let plain = Style::default();
        let bold = plain.add_modifier(Modifier::BOLD);
        Theme {
            header: bold,
            title: bold,
            badge: plain.add_modifier(Modifier::REVERSED | Modifier::BOLD),
            online: plain,
            offline: plain.add_modifier(Modifier::DIM),
            warn: bold,
            error: bold,
            dim: plain.add_modifier(Modifier::DIM),
            key: bold,
            selected: plain.add_modifier(Modifier::REVERSED),
            marked: bold,
            changed: plain.add_modifier(Modifier::REVERSED),
            pending: plain.add_modifier(Modifier::UNDERLINED),
            accent: plain,
            stale: plain.add_modifier(Modifier::ITALIC | Modifier::DIM),
        }
    }

    /// Colour unless the `NO_COLOR` convention says otherwise.
    pub fn from_env() -> Theme {
        if no_color() {
            Theme::monochrome()
        } else {
            Theme::colour()
        }
    }

    /// The style called `name` in the config, to change it.
    fn slot(&mut self, name: &str) -> Option<&mut Style> {
        Some(match name {
            "header" => &mut self.header,
            "title" => &mut self.title,
            "badge" => &mut self.badge,
            "online" => &mut self.online,
            "offline" => &mut self.offline,
            "warn" => &mut self.warn,
            "error" => &mut self.error,
            "dim" => &mut self.dim,
            "key" => &mut self.key,
            "selected" => &mut self.selected,
            "marked" => &mut self.marked,
            "changed" => &mut self.changed,
            "pending" => &mut self.pending,
            "accent" => &mut self.accent,
            "stale" => &mut self.stale,
            _ => return None,
        })
    }

    /// The names `[theme]` takes.
    pub const STYLES: [&'static str; 15] = [
        "header", "title", "badge", "online", "offline", "warn", "error", "dim", "key", "selected",
        "marked", "changed", "pending", "accent", "stale",
    ];

    /// The theme a `[theme]` table describes: its `base` (default: colour, or monochrome
    /// under `NO_COLOR`) with its styles replaced. Under `NO_COLOR` colours are dropped
    /// from the replacements too, keeping their modifiers.
    pub fn from_config(table: &BTreeMap<String, String>) -> Result<Theme, String> {
        Theme::from_config_with(table, no_color())
    }

    fn from_config_with(table: &BTreeMap<String, String>, no_color: bool) -> Result<Theme, String> {
        let mut theme = match table.get("base").map(String::as_str) {
            None if no_color => Theme::monochrome(),
            None | Some("colour" | "color") => Theme::colour(),
            Some("monochrome") => Theme::monochrome(),
            Some(other) => {
                return Err(format!(
                    "[theme] base: {other:?} is neither \"colour\" nor \"monochrome\""
                ))
            }
        };
        for (name, text) in table {
            if name == "base" {
                continue;
            }
            let mut style = parse_style(text).map_err(|e| format!("[theme] {name}: {e}"))?;
            if no_color {
                style.fg = None;
                style.bg = None;
            }
            let slot = theme.slot(name).ok_or_else(|| {
                format!(
                    "[theme] {name}: no such style; the styles are base, {}",
                    Theme::STYLES.join(", ")
                )
            })?;
            *slot = style;
        }
        Ok(theme)
    }
}

fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty())
}

/// A colour word: a name, `#rrggbb`, or an index 0-255.
fn parse_colour(word: &str) -> Option<Color> {
    if let Some(hex) = word.strip_prefix('#') {
        if hex.len() == 6 {
            let value = u32::from_str_radix(hex, 16).ok()?;
            return Some(Color::Rgb(
                (value >> 16) as u8,
                (value >> 8) as u8,
                value as u8,
            ));
        }
        return None;
    }
    if let Ok(index) = word.parse::<u8>() {
        return Some(Color::Indexed(index));
    }
    Some(match word {
        "black" => Color::Black,
        "red" => Color::Red,
        "green" => Color::Green,
        "yellow" => Color::Yellow,
        "blue" => Color::Blue,
        "magenta" => Color::Magenta,
        "cyan" => Color::Cyan,
        "gray" | "grey" => Color::Gray,
        "darkgray" | "darkgrey" => Color::DarkGray,
        "lightred" => Color::LightRed,
        "lightgreen" => Color::LightGreen,
        "lightyellow" => Color::LightYellow,
        "lightblue" => Color::LightBlue,
        "lightmagenta" => Color::LightMagenta,
        "lightcyan" => Color::LightCyan,
        "white" => Color::White,
        "reset" | "default" => Color::Reset,
        _ => return None,
    })
}

/// Reads `bold white on red`, `dark gray`, `bright green`, `reversed`.
pub fn parse_style(text: &str) -> Result<Style, String> {
    let mut style = Style::default();
    let words: Vec<String> = text.split_whitespace().map(str::to_lowercase).collect();
    let mut background = false;
    let mut i = 0;
    while i < words.len() {
        let word = words[i].as_str();
        // Two-word colours: `dark gray`, `bright red` (the light shades).
        let joined = words.get(i + 1).and_then(|next| match word {
            "dark" => Some(format!("dark{next}")),
            "bright" | "light" => Some(format!("light{next}")),
            _ => None,
        });
        if let Some(colour) = joined.as_deref().and_then(parse_colour) {
            if background {
                style = style.bg(colour);
            } else {
                style = style.fg(colour);
            }
            i += 2;
            continue;
        }
        let modifier = match word {
            "bold" => Some(Modifier::BOLD),
            "dim" => Some(Modifier::DIM),
            "italic" => Some(Modifier::ITALIC),
            "underlined" | "underline" => Some(Modifier::UNDERLINED),
            "reversed" | "reverse" => Some(Modifier::REVERSED),
            "crossed" => Some(Modifier::CROSSED_OUT),
            _ => None,
        };
        if let Some(modifier) = modifier {
            style = style.add_modifier(modifier);
        } else if word == "on" {
            background = true;
        } else if let Some(colour) = parse_colour(word) {
            if background {
                style = style.bg(colour);
            } else {
                style = style.fg(colour);
            }
        } else {
            return Err(format!("{word:?} is neither a colour nor a modifier"));
        }
        i += 1;
    }
    Ok(style)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn styles_read_as_written() {
        assert_eq!(
            parse_style("bold white on red"),
            Ok(Style::default()
                .fg(Color::White)
                .bg(Color::Red)
                .add_modifier(Modifier::BOLD))
        );
        assert_eq!(
            parse_style("dark gray"),
            Ok(Style::default().fg(Color::DarkGray))
        );
        assert_eq!(
            parse_style("italic #d0a020 on 17"),
            Ok(Style::default()
                .fg(Color::Rgb(0xd0, 0xa0, 0x20))
                .bg(Color::Indexed(17))
                .add_modifier(Modifier::ITALIC))
        );
        assert!(parse_style("sparkly").is_err());
    }

    #[test]
    fn the_config_changes_named_styles_only() {
        let mut table = BTreeMap::new();
        table.insert("base".to_string(), "colour".to_string());
        table.insert("online".to_string(), "bright green".to_string());
        let theme = Theme::from_config_with(&table, false).expect("valid");
        assert_eq!(theme.online, Style::default().fg(Color::LightGreen));
        assert_eq!(theme.offline, Theme::colour().offline);
        let plain = Theme::from_config_with(&table, true).expect("valid");
        assert_eq!(plain.online, Style::default(), "NO_COLOR keeps colours out");
        table.insert("onlin".to_string(), "red".to_string());
        assert!(Theme::from_config_with(&table, false)
            .expect_err("typo")
            .contains("[theme] onlin: no such style"));
        let mut table = BTreeMap::new();
        table.insert("base".to_string(), "sepia".to_string());
        assert!(Theme::from_config_with(&table, false).is_err());
    }
}
