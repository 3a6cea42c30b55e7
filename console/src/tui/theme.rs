//! Colours. Only the 16 ANSI colours plus bold/reverse are used, so the console looks the
//! same on a 16-colour console as on a true-colour terminal; `NO_COLOR` turns colour off
//! and leaves the emphasis to bold and reverse video.

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
        }
    }

    /// Colour unless the `NO_COLOR` convention says otherwise.
    pub fn from_env() -> Theme {
        match std::env::var_os("NO_COLOR") {
            Some(value) if !value.is_empty() => Theme::monochrome(),
            _ => Theme::colour(),
        }
    }
}
