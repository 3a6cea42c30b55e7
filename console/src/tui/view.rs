//! Drawing: a pure function of the [`Model`]. Tables build only the rows that fit.

mod analytics;
mod bench;
mod chrome;
mod device;
mod fleet;
mod footer;
mod overlays;
mod rollouts;
mod tail;

pub use fleet::{fleet_columns, render_fleet_naive};

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, Wrap};
use ratatui::Frame;

use super::device::{json_lines, DeviceView, Pane, Part, RpcFocus, JUMP_PAUSE_SECS};
use super::keymap::{Action, Scope as KeyScope};
use super::model::{Connection, Model, Overlay, Screen};
use super::notifications::{Entry, TailFilter};
use super::palette;
use super::theme::Theme;
use crate::access::Operation;
use crate::fleet::{Column, DeviceRow};
use crate::history::EventKind;
use crate::text;

/// Smallest size the console draws its views in; below it, it says so instead.
pub const MIN_WIDTH: u16 = 40;
pub const MIN_HEIGHT: u16 = 8;

/// Draws the whole screen.
pub fn render(frame: &mut Frame, model: &Model, theme: &Theme) {
    let area = frame.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let message = format!(
            "Terminal too small: {}x{}. herd needs at least {MIN_WIDTH}x{MIN_HEIGHT}. Ctrl-C quits.",
            area.width, area.height
        );
        frame.render_widget(
            Paragraph::new(message)
                .style(theme.warn)
                .wrap(Wrap { trim: true }),
            area,
        );
        return;
    }
    let [header, crumbs, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(area);
    chrome::render_header(frame, model, theme, header);
    chrome::render_crumbs(frame, model, theme, crumbs);
    match model.screen() {
        Screen::Fleet => fleet::render_fleet(frame, model, theme, body),
        Screen::Device(_) => match &model.device {
            Some(view) => device::render_device(frame, model, view, theme, body),
            None => frame.render_widget(Paragraph::new("no device open"), body),
        },
        Screen::Notifications => tail::render_tail(frame, model, theme, body),
        Screen::Analytics => analytics::render(frame, model, theme, body),
        Screen::Rollouts => rollouts::render_list(frame, model, theme, body),
        Screen::Rollout(_) => match &model.rollout_page {
            Some(page) => rollouts::render_page(frame, model, page, theme, body),
            None => frame.render_widget(Paragraph::new("no rollout open"), body),
        },
        Screen::NewRollout => rollouts::render_form(frame, model, theme, body),
        Screen::Results => super::results::render(frame, model, theme, body),
        Screen::Bench => bench::render(frame, model, theme, body),
    }
    footer::render_footer(frame, model, theme, footer);
    match &model.overlay {
        Some(Overlay::Help { scroll }) => super::help::render(frame, model, *scroll, theme, body),
        Some(Overlay::Palette { input, error }) => overlays::render_palette(
            frame,
            model,
            theme,
            body,
            input.text(),
            input.cursor(),
            error.as_deref(),
        ),
        Some(Overlay::Confirm { question, .. }) => {
            overlays::render_confirm(frame, theme, body, question)
        }
        Some(Overlay::Contexts { selected }) => {
            overlays::render_contexts(frame, model, theme, body, *selected)
        }
        // The prompt lives in the footer.
        Some(Overlay::Prompt { .. }) | None => {}
    }
}

pub(super) fn centered(area: Rect, width_percent: u16, height_percent: u16) -> Rect {
    let width = (area.width as u32 * width_percent as u32 / 100) as u16;
    let height = (area.height as u32 * height_percent as u32 / 100) as u16;
    Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    }
}

/// `text` broken into lines of at most `width` characters at spaces; a word longer than
/// a line is broken where it must.
pub fn wrap_words(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines = Vec::new();
    for paragraph in text.split('\n') {
        let mut line = String::new();
        for word in paragraph.split_whitespace() {
            let mut word: Vec<char> = word.chars().collect();
            let used = line.chars().count();
            if used > 0 && used + 1 + word.len() <= width {
                line.push(' ');
                line.extend(word.iter());
                continue;
            }
            if used > 0 {
                lines.push(std::mem::take(&mut line));
            }
            while word.len() > width {
                let rest = word.split_off(width);
                lines.push(word.iter().collect());
                word = rest;
            }
            line.extend(word.iter());
        }
        lines.push(line);
    }
    lines
}
