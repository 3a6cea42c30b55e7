//! The notification tail.

use super::*;

fn event_style(name: &str, theme: &Theme) -> Style {
    match name {
        "online" | "created" => theme.online,
        "offline" | "deleted" => theme.offline,
        "updated" => theme.accent,
        "ota.success" | "rollout.completed" => theme.online,
        "ota.failure" | "ota.revert" | "rollout.halted" | "rollout.aborted" => theme.error,
        n if n.starts_with("ota.") || n.starts_with("rollout.") => theme.title,
        n if n.starts_with("rpc.out.") => theme.warn,
        n if n.starts_with("rpc.in.") => theme.marked,
        _ => Style::default(),
    }
}

/// One tail line; `who` names the device (its name when the fleet knows it, else its id),
/// and is left out where every line is about the same device.
pub(super) fn tail_line(entry: &Entry, who: Option<&str>, theme: &Theme) -> Line<'static> {
    let mut spans = vec![Span::styled(
        format!("{} ", text::clock_time(entry.ts)),
        theme.dim,
    )];
    if let Some(who) = who {
        spans.push(Span::styled(format!("{who} "), theme.accent));
    }
    spans.push(Span::styled(
        format!("{} ", entry.name),
        event_style(&entry.name, theme),
    ));
    if entry.summary.is_some() {
        spans.push(Span::styled("Δ ", theme.accent));
    }
    spans.push(Span::raw(entry.shown().to_string()));
    Line::from(spans)
}

/// The name for tail lines: shorter than an id and what operators recognise. `rollout.*`
/// events carry a rollout's id, named from the rollouts list when it is known.
fn device_label<'a>(model: &'a Model, id: &'a str) -> &'a str {
    if model.fleet.get(id).is_none() {
        if let Some(rollout) = model.rollouts.get(id) {
            return crate::tui::rollouts::rollout_name(rollout);
        }
    }
    model.fleet.label(id)
}

pub(super) fn render_tail(frame: &mut Frame, model: &Model, theme: &Theme, area: Rect) {
    let tail = &model.tail;
    let [title, body] = Layout::vertical([Constraint::Length(1), Constraint::Min(1)]).areas(area);
    let mut spans = vec![Span::raw(" ")];
    if tail.follow {
        spans.push(Span::styled("following", theme.online));
    } else {
        spans.push(Span::styled(
            format!("PAUSED · {} new", tail.newer_than_anchor()),
            theme.warn,
        ));
    }
    spans.push(Span::styled(
        format!(
            " · {}/{} lines · dropped {}",
            tail.len(),
            tail.capacity(),
            tail.dropped()
        ),
        if tail.dropped() > 0 {
            theme.warn
        } else {
            theme.dim
        },
    ));
    if tail.history_lines > 0 {
        spans.push(Span::styled(
            format!(" · {} from the log", tail.history_lines),
            theme.dim,
        ));
    }
    if tail.wrap {
        spans.push(Span::styled(" · wrap", theme.dim));
    }
    if !tail.filter.is_empty() {
        spans.push(Span::styled(
            format!(" · filter {}", tail.filter.describe()),
            theme.warn,
        ));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), title);
    let height = body.height as usize;
    let entries = tail.window(&tail.filter, height);
    if entries.is_empty() {
        let message = if tail.is_empty() {
            "waiting for notifications…"
        } else {
            "no notification matches the filter (x clears it)"
        };
        frame.render_widget(Paragraph::new(message).style(theme.dim), body);
        return;
    }
    let mut lines: Vec<Line> = Vec::with_capacity(entries.len() + 1);
    for (i, entry) in entries.iter().enumerate() {
        // Where the server's log ends and what arrived live begins.
        if i > 0 && entries[i - 1].history && !entry.history {
            lines.push(Line::styled(
                "── above: the server's log · below: live ──",
                theme.dim,
            ));
        }
        lines.push(tail_line(
            entry,
            Some(device_label(model, &entry.id)),
            theme,
        ));
    }
    if lines.len() > height {
        // The marker took a row: the oldest line gives way.
        lines.remove(0);
    }
    if tail.wrap {
        // Keep the newest lines at the bottom: drop from the top what wrapping pushes out.
        let width = body.width.max(1) as usize;
        let mut rows = 0;
        let mut keep = lines.len();
        for (i, line) in lines.iter().enumerate().rev() {
            let needed = line.width().div_ceil(width).max(1);
            if rows + needed > height {
                break;
            }
            rows += needed;
            keep = i;
        }
        lines.drain(..keep);
        frame.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }), body);
    } else {
        frame.render_widget(Paragraph::new(lines), body);
    }
}
