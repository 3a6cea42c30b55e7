//! Drawing the bench view: the ports, the new light's settings, and the running flash.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Gauge, Paragraph, Wrap};
use ratatui::Frame;

use crate::tui::bench::{Bench, Field};
use crate::tui::model::Model;
use crate::tui::theme::Theme;

pub(super) fn render(frame: &mut Frame, model: &Model, theme: &Theme, area: Rect) {
    let bench = &model.bench;
    // The ports take what they need (a few lines on most benches); the flash's steps
    // take the rest.
    let listed = u16::try_from(bench.ports.len()).unwrap_or(u16::MAX).max(1);
    let [ports, settings, progress] = Layout::vertical([
        Constraint::Length(listed.saturating_add(2).clamp(3, 12)),
        Constraint::Length(6),
        Constraint::Min(5),
    ])
    .areas(area);
    frame.render_widget(port_list(bench, theme, ports.height), ports);
    frame.render_widget(settings_text(bench, theme), settings);
    render_progress(frame, bench, theme, progress);
}

fn port_list<'a>(bench: &'a Bench, theme: &Theme, height: u16) -> Paragraph<'a> {
    let mut lines = Vec::new();
    if let Some(error) = &bench.ports_error {
        lines.push(Line::styled(
            format!("cannot list ports: {error}"),
            theme.error,
        ));
    } else if bench.ports.is_empty() {
        lines.push(Line::styled(
            "no serial ports (plug a board in, then r)",
            theme.dim,
        ));
    }
    let visible = usize::from(height.saturating_sub(2)).max(1);
    let first = bench.cursor.saturating_sub(visible - 1);
    for (n, port) in bench.ports.iter().enumerate().skip(first).take(visible) {
        let style = if n == bench.cursor {
            theme.selected
        } else {
            Default::default()
        };
        let mark = if port.likely_board { "board" } else { "" };
        lines.push(Line::styled(
            format!("{:<22} {:<6} {}", port.name, mark, port.kind),
            style,
        ));
    }
    Paragraph::new(lines).block(Block::bordered().title(" Serial ports "))
}

fn settings_text<'a>(bench: &'a Bench, theme: &Theme) -> Paragraph<'a> {
    let field = |label: &'a str, key: &'a str, value: String, which: Field| {
        let editing = bench.editing == which;
        let shown = if value.is_empty() && !editing {
            "-".to_string()
        } else {
            value
        };
        Line::from(vec![
            Span::styled(format!(" {key} "), theme.key),
            Span::raw(format!("{label:<10}")),
            Span::styled(
                if editing { format!("{shown}_") } else { shown },
                if editing {
                    theme.selected
                } else {
                    Default::default()
                },
            ),
        ])
    };
    let pass = "*".repeat(bench.pass.chars().count());
    let image = if bench.image.is_empty() && bench.editing != Field::Image {
        "the release build in this checkout for the chip found".to_string()
    } else {
        bench.image.clone()
    };
    Paragraph::new(vec![
        field("name", "n", bench.name.clone(), Field::Name),
        field("wi-fi", "w", bench.ssid.clone(), Field::Ssid),
        field("pass", "p", pass, Field::Pass),
        field("image", "i", image, Field::Image),
    ])
    .block(Block::bordered().title(" New light (f flashes the selected port) "))
}

fn render_progress(frame: &mut Frame, bench: &Bench, theme: &Theme, area: Rect) {
    let [gauge, log] = Layout::vertical([Constraint::Length(3), Constraint::Min(1)]).areas(area);
    let (done, total) = bench.progress;
    let ratio = if total == 0 {
        0.0
    } else {
        (done as f64 / total as f64).clamp(0.0, 1.0)
    };
    let label = if bench.running && total > 0 {
        format!("{} {:.0}%", bench.step, ratio * 100.0)
    } else if bench.running {
        bench.step.clone()
    } else {
        "idle".to_string()
    };
    frame.render_widget(
        Gauge::default()
            .block(Block::bordered().title(" Flash "))
            .gauge_style(theme.accent)
            .ratio(ratio)
            .label(label),
        gauge,
    );
    let mut lines: Vec<Line> = bench
        .log
        .iter()
        .map(|line| Line::raw(line.clone()))
        .collect();
    match &bench.outcome {
        Some(Ok(done)) => lines.push(Line::styled(
            format!(
                "{} ({}) flashed on {}: {} {}; o opens it",
                done.name,
                done.id,
                done.port,
                done.chip,
                done.fw_version.as_deref().unwrap_or(&done.app_version)
            ),
            theme.online,
        )),
        Some(Err(error)) => lines.push(Line::styled(error.clone(), theme.error)),
        None => {}
    }
    frame.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }), log);
}
