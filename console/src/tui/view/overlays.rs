//! What is drawn over a view: the command palette, the `:ctx` profiles and the
//! confirmation box (the help is `tui::help`).

use super::*;

pub(super) fn render_palette(
    frame: &mut Frame,
    model: &Model,
    theme: &Theme,
    area: Rect,
    text: &str,
    cursor: usize,
    error: Option<&str>,
) {
    let suggestions = palette::suggestions(text);
    let height = (3 + suggestions.len() as u16 + u16::from(error.is_some())).min(area.height);
    let popup = Rect {
        x: area.x + 2.min(area.width / 10),
        y: area.y,
        width: area.width.saturating_sub(4.min(area.width / 5)),
        height,
    };
    frame.render_widget(Clear, popup);
    let block = Block::bordered().title(Span::styled(" command ", theme.title));
    let inner = block.inner(popup);
    let mut lines = vec![Line::from(vec![
        Span::styled(":", theme.key),
        Span::raw(text.to_string()),
    ])];
    if let Some(error) = error {
        lines.push(Line::styled(error.to_string(), theme.error));
    }
    for (name, args, what) in suggestions {
        // What the key may not do is greyed out and says the scope it needs (§11).
        match crate::access::palette_command(name).filter(|&op| !model.may(op)) {
            Some(operation) => lines.push(Line::from(vec![
                Span::styled(
                    format!("{name} {args}"),
                    theme.dim.add_modifier(Modifier::CROSSED_OUT),
                ),
                Span::styled(
                    format!("  needs {}: {what}", operation.needs().as_str()),
                    theme.dim,
                ),
            ])),
            None => lines.push(Line::from(vec![
                Span::styled(format!("{name} {args}"), theme.key),
                Span::styled(format!("  {what}"), theme.dim),
            ])),
        }
    }
    frame.render_widget(Paragraph::new(lines).block(block), popup);
    let x = inner.x + 1 + cursor as u16;
    frame.set_cursor_position((x.min(inner.right().saturating_sub(1)), inner.y));
}

/// The `:ctx` list: the config's profiles, the current one marked.
pub(super) fn render_contexts(
    frame: &mut Frame,
    model: &Model,
    theme: &Theme,
    area: Rect,
    selected: usize,
) {
    let rows = model.contexts.len().max(1) as u16;
    let height = (rows + 2).min(area.height);
    let popup = Rect {
        x: area.x + 2.min(area.width / 10),
        y: area.y,
        width: area.width.saturating_sub(4.min(area.width / 5)),
        height,
    };
    frame.render_widget(Clear, popup);
    let block = Block::bordered().title(Span::styled(" profiles (:ctx NAME) ", theme.title));
    let inner = block.inner(popup);
    let width = inner.width as usize;
    let lines: Vec<Line> = if model.contexts.is_empty() {
        vec![Line::styled(
            "no profiles: add [profiles.NAME] tables to the config file (console.toml)",
            theme.dim,
        )]
    } else {
        let name_width = model
            .contexts
            .iter()
            .map(|c| c.name.chars().count())
            .max()
            .unwrap_or(0)
            .min(width / 3);
        // The cursor's row scrolls into view when the list is taller than the box.
        let shown = inner.height as usize;
        let first = selected.saturating_sub(shown.saturating_sub(1));
        model
            .contexts
            .iter()
            .enumerate()
            .skip(first)
            .take(shown)
            .map(|(i, context)| {
                let current = context.name == model.profile.name;
                let mark = if current { "● " } else { "  " };
                let mut spans = vec![
                    Span::styled(mark, theme.online),
                    Span::styled(
                        format!(
                            "{:<name_width$}  ",
                            text::truncate(&context.name, name_width)
                        ),
                        theme.header,
                    ),
                ];
                let flag = if context.read_only { "  read-only" } else { "" };
                let room = width.saturating_sub(name_width + 4 + flag.len());
                spans.push(Span::styled(
                    text::truncate(&context.server, room),
                    theme.dim,
                ));
                if context.read_only {
                    spans.push(Span::styled(flag, theme.warn));
                }
                let line = Line::from(spans);
                if i == selected {
                    line.style(theme.selected)
                } else {
                    line
                }
            })
            .collect()
    };
    frame.render_widget(Paragraph::new(lines).block(block), popup);
}

pub(super) fn render_confirm(frame: &mut Frame, theme: &Theme, area: Rect, question: &str) {
    // As wide as the question wants, within the screen; the answer keys always show, and
    // the question's first lines (which say what and how many) come before any cut.
    let width = (question.chars().count() as u16 + 4)
        .max(34)
        .min(area.width);
    let inner_width = width.saturating_sub(2) as usize;
    let mut lines = wrap_words(question, inner_width.max(1));
    let room = area.height.saturating_sub(3) as usize;
    if lines.len() > room {
        lines.truncate(room.max(1));
        if let Some(last) = lines.last_mut() {
            *last = text::truncate(&format!("{last} …"), inner_width);
        }
    }
    let height = (lines.len() as u16 + 3).min(area.height);
    let popup = Rect {
        x: area.x + (area.width - width) / 2,
        y: (area.y + area.height / 3).min(area.bottom().saturating_sub(height)),
        width,
        height,
    };
    frame.render_widget(Clear, popup);
    let mut shown: Vec<Line> = lines
        .into_iter()
        .map(|line| Line::styled(line, theme.header))
        .collect();
    shown.truncate(height.saturating_sub(3) as usize);
    shown.push(Line::from(vec![
        Span::styled("y", theme.key),
        Span::raw(" yes   "),
        Span::styled("n", theme.key),
        Span::raw(" no"),
    ]));
    let block = Block::bordered().title(Span::styled(" confirm ", theme.warn));
    frame.render_widget(Paragraph::new(shown).block(block), popup);
}
