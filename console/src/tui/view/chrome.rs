//! The lines around every view: the header (profile, connection, counts, what the key
//! may do) and the breadcrumbs with the status line.

use super::*;

fn connection_span(model: &Model, theme: &Theme) -> Span<'static> {
    match &model.connection {
        Connection::Connected => Span::styled("● live", theme.online),
        Connection::Connecting { attempt } if *attempt <= 1 => {
            Span::styled("◌ connecting", theme.warn)
        }
        Connection::Connecting { attempt } => {
            Span::styled(format!("◌ reconnecting (attempt {attempt})"), theme.warn)
        }
        Connection::Lost { retry_at, .. } => {
            let wait = (retry_at - model.now).max(0.0).ceil();
            Span::styled(format!("○ disconnected, retry {wait:.0}s"), theme.error)
        }
        Connection::Rejected(_) => Span::styled("✗ API key refused", theme.error),
    }
}

pub(super) fn render_header(frame: &mut Frame, model: &Model, theme: &Theme, area: Rect) {
    let counts = model.fleet.counts();
    let sep = || Span::styled(" │ ", theme.dim);
    let badges = key_badges(model, theme, area.width as usize / 2);
    let badges_width: usize = badges.iter().map(|s| s.width()).sum();
    let room = (area.width as usize).saturating_sub(badges_width);
    let offline = counts.total - counts.online;
    let offline_style = if offline > 0 {
        theme.offline
    } else {
        theme.dim
    };
    // What matters most survives a narrow screen: the server's URL goes first, then the
    // words of the counts; the staleness never does.
    let build = |server: bool, long: bool| -> Vec<Span<'static>> {
        let mut spans = vec![
            Span::styled(" herd", theme.title),
            sep(),
            Span::styled(model.profile.name.clone(), theme.header),
        ];
        if server {
            spans.push(Span::raw(" "));
            spans.push(Span::styled(model.profile.server.clone(), theme.dim));
        }
        spans.push(sep());
        spans.push(connection_span(model, theme));
        spans.push(sep());
        if long {
            spans.push(Span::raw(format!("{} devices ", counts.total)));
            spans.push(Span::styled(
                format!("{} online", counts.online),
                theme.online,
            ));
            spans.push(Span::raw(" "));
            spans.push(Span::styled(format!("{offline} offline"), offline_style));
        } else {
            spans.push(Span::styled(format!("{}", counts.online), theme.online));
            spans.push(Span::raw(format!("/{} online", counts.total)));
        }
        if let Some(since) = model.stale_since {
            // The counts are what was last heard: say how old that is, right after them.
            spans.push(Span::styled(
                format!(" STALE {}", text::duration((model.now - since).max(0.0))),
                theme.stale,
            ));
        }
        if counts.pending > 0 {
            spans.push(Span::raw(" "));
            spans.push(Span::styled(format!("{} Δ", counts.pending), theme.pending));
        }
        spans
    };
    let width = |spans: &[Span]| spans.iter().map(|s| s.width()).sum::<usize>();
    let mut spans = build(true, true);
    if width(&spans) > room {
        spans = build(false, true);
    }
    if width(&spans) > room {
        spans = build(false, false);
    }
    let line = Line::from(spans);
    if badges_width > 0 {
        // The badges go first on the right, and survive truncation of the rest.
        let [left, right] =
            Layout::horizontal([Constraint::Min(1), Constraint::Length(badges_width as u16)])
                .areas(area);
        frame.render_widget(Paragraph::new(Line::from(badges)), right);
        frame.render_widget(Paragraph::new(line), left);
        return;
    }
    frame.render_widget(Paragraph::new(line), area);
}

/// What the session may do, for the right of the header in at most `room` columns:
/// `READ-ONLY` for a read-only profile, then the key's scope (PROTOCOL §11), its device
/// filter and the time left before it expires. The filter and expiry give way first.
fn key_badges(model: &Model, theme: &Theme, room: usize) -> Vec<Span<'static>> {
    let mut badges = Vec::new();
    if model.profile.read_only {
        badges.push(Span::styled(" READ-ONLY ", theme.badge));
    }
    let Some(key) = &model.key else {
        return badges;
    };
    if let Some(scope) = key.scope {
        let style = if scope == herd_client::Scope::Admin {
            theme.badge
        } else {
            theme.key.add_modifier(Modifier::REVERSED)
        };
        badges.push(Span::raw(" "));
        badges.push(Span::styled(format!(" {} ", scope.as_str()), style));
    }
    let mut extras = Vec::new();
    if let Some(devices) = key.devices.as_deref().filter(|d| !d.is_empty()) {
        extras.push(Span::styled(
            format!(" devices:{}", text::truncate(devices, 18)),
            theme.warn,
        ));
    }
    if let Some(at) = key.expires_at.as_deref().and_then(text::parse_rfc3339) {
        let left = at - model.now;
        let shown = if left > 0.0 {
            format!(" exp {}", text::duration(left))
        } else {
            " expired".to_string()
        };
        extras.push(Span::styled(shown, theme.warn));
    }
    let width = |spans: &[Span]| spans.iter().map(|s| s.width()).sum::<usize>();
    while !extras.is_empty() && width(&badges) + width(&extras) + 1 > room {
        extras.pop();
    }
    badges.extend(extras);
    if badges.len() > usize::from(model.profile.read_only) {
        badges.push(Span::raw(" "));
    }
    badges
}

fn breadcrumbs(model: &Model) -> Vec<String> {
    let mut crumbs = Vec::new();
    for screen in &model.stack {
        match screen {
            Screen::Fleet => crumbs.push("Fleet".to_string()),
            Screen::Notifications => crumbs.push("Notifications".into()),
            Screen::Analytics => crumbs.push("Analytics".into()),
            Screen::Rollouts => crumbs.push("Rollouts".into()),
            Screen::Results => crumbs.push("Results".into()),
            Screen::Rollout(id) => {
                let name = model
                    .rollout_page
                    .as_ref()
                    .and_then(|p| p.object.as_ref())
                    .or_else(|| model.rollouts.get(id))
                    .map(|r| crate::tui::rollouts::rollout_name(r).to_string());
                crumbs.push(name.unwrap_or_else(|| id.clone()));
            }
            Screen::Bench => crumbs.push("Bench".into()),
            Screen::NewRollout => {
                crumbs.push("New rollout".into());
                if let Some(form) = &model.new_rollout {
                    if matches!(
                        form.stage,
                        crate::tui::rollouts::FormStage::Plan { .. }
                            | crate::tui::rollouts::FormStage::Creating { .. }
                    ) {
                        crumbs.push("plan".into());
                    }
                }
            }
            Screen::Device(id) => {
                let name = model
                    .fleet
                    .get(id)
                    .map(|r| r.name.to_string())
                    .filter(|n| !n.is_empty() && n != id);
                crumbs.push(match name {
                    Some(name) => format!("{name} ({id})"),
                    None => id.clone(),
                });
                if let Some(view) = &model.device {
                    if view.editor.is_some() {
                        crumbs.push("edit desired".into());
                    } else if view.rpc.is_some() {
                        crumbs.push("call RPC".into());
                    } else if view.push.is_some() {
                        crumbs.push("push firmware".into());
                    }
                }
            }
        }
    }
    crumbs
}

pub(super) fn render_crumbs(frame: &mut Frame, model: &Model, theme: &Theme, area: Rect) {
    let right = match &model.status {
        Some(status) => Some(Span::styled(
            status.text.clone(),
            if status.error {
                theme.error
            } else {
                theme.online
            },
        )),
        None => match model.screen() {
            Screen::Fleet => {
                let mut parts = Vec::new();
                if !model.fleet.filter().is_empty() {
                    parts.push(format!(
                        "filter: {}  ({} of {})",
                        model.fleet.filter().text(),
                        model.fleet.view_len(),
                        model.fleet.len()
                    ));
                }
                if !model.fleet_ui.marked.is_empty() {
                    parts.push(format!("{} marked", model.fleet_ui.marked.len()));
                }
                // The header arrow shows the sort; a column with no room on screen is
                // named here instead, so the order is never a mystery.
                let sort = model.fleet.sort();
                if !Column::visible(model.size.0)
                    .iter()
                    .any(|(c, _)| *c == sort.column)
                {
                    let arrow = if sort.descending { '▼' } else { '▲' };
                    parts.push(format!("sorted by {}{arrow}", sort.column.title()));
                }
                let style = if model.fleet.filter().is_empty() {
                    theme.marked
                } else {
                    theme.warn
                };
                (!parts.is_empty()).then(|| Span::styled(parts.join(" · "), style))
            }
            _ => None,
        },
    };
    let width = area.width as usize;
    // The status line matters more than the trail: the trail gives way first.
    let right_text = right
        .as_ref()
        .map(|span| text::truncate(&span.content, width.saturating_sub(12)))
        .unwrap_or_default();
    let right_width = right_text.chars().count();
    let room = width.saturating_sub(right_width + 3);
    let crumbs = breadcrumbs(model);
    let mut spans = vec![Span::raw(" ")];
    let mut used = 1;
    for (i, crumb) in crumbs.iter().enumerate() {
        let separator = if i > 0 { " › " } else { "" };
        let style = if i + 1 == crumbs.len() {
            theme.header
        } else {
            theme.dim
        };
        let wanted = separator.chars().count() + crumb.chars().count();
        let left = room.saturating_sub(used);
        if left == 0 {
            break;
        }
        if !separator.is_empty() {
            spans.push(Span::styled(separator, theme.dim));
        }
        let shown = text::truncate(crumb, left.saturating_sub(separator.chars().count()));
        used += separator.chars().count() + shown.chars().count();
        spans.push(Span::styled(shown, style));
        if wanted > left {
            break;
        }
    }
    if let Some(right) = right {
        spans.push(Span::raw(
            " ".repeat(width.saturating_sub(used + right_width + 1)),
        ));
        spans.push(Span::styled(right_text, right.style));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}
