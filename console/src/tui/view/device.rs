//! The device view: its facts, the shadow side by side, the events, logs, info or
//! timeline below, and the editor, RPC and firmware dialogs over them.

use super::*;

fn json_text(
    value: &serde_json::Value,
    section: &str,
    view: &DeviceView,
    now: f64,
    theme: &Theme,
    all_pending: bool,
) -> Text<'static> {
    let lines = json_lines(value, section);
    Text::from(
        lines
            .into_iter()
            .map(|line| {
                let style = if view.is_changed(&line.path, now) {
                    theme.changed
                } else if all_pending {
                    theme.pending
                } else {
                    Style::default()
                };
                Line::styled(line.text, style)
            })
            .collect::<Vec<_>>(),
    )
}

pub(super) fn render_device(
    frame: &mut Frame,
    model: &Model,
    view: &DeviceView,
    theme: &Theme,
    area: Rect,
) {
    let Some(object) = &view.object else {
        let message = match &view.error {
            Some(error) => Paragraph::new(format!("Cannot load device {}: {error}", view.id))
                .style(theme.error),
            None => Paragraph::new(format!("Loading device {}…", view.id)).style(theme.dim),
        };
        frame.render_widget(
            message.wrap(Wrap { trim: false }),
            area.inner(ratatui::layout::Margin::new(1, 1)),
        );
        return;
    };
    let row = DeviceRow::from_object(object, model.now);
    let row = model.fleet.get(&view.id).cloned().unwrap_or(row);
    let job = model.ota.get(&view.id);
    let [info, shadow, events] = Layout::vertical([
        Constraint::Length(2 + u16::from(job.is_some())),
        Constraint::Percentage(55),
        Constraint::Min(3),
    ])
    .areas(area);

    let state = match (object.online, model.stale_since) {
        (true, Some(since)) => Span::styled(
            format!(
                "◌ online {} ago, not heard since",
                text::duration((model.now - since).max(0.0))
            ),
            theme.stale,
        ),
        (true, None) => Span::styled("● online", theme.online),
        (false, _) => Span::styled("○ offline", theme.offline),
    };
    let field = |name: &str, value: String| {
        vec![
            Span::styled(format!("{name} "), theme.dim),
            Span::raw(format!("{value}  ")),
        ]
    };
    let mut first = vec![Span::raw(" "), state, Span::raw("  ")];
    first.extend(field("name", object.name.clone()));
    first.extend(field("id", object.id.clone()));
    first.extend(field("owner", object.user_id.clone()));
    let mut second = vec![Span::raw(" ")];
    second.extend(field("app", row.app.to_string()));
    second.extend(field("arch", row.arch.to_string()));
    second.extend(field("fw", row.fw_version.to_string()));
    second.extend(field(
        "uptime",
        Column::Uptime.cell_stale(&row, model.now, model.stale_since),
    ));
    second.extend(field(
        "seen",
        row.last_seen_text_stale(model.now, model.stale_since),
    ));
    if let Some(error) = &view.error {
        second.push(Span::styled(error.clone(), theme.error));
    }
    let mut info_lines = vec![Line::from(first), Line::from(second)];
    if let Some(job) = job {
        let rollout = job.rollout.as_deref().map(|id| {
            model
                .rollouts
                .get(id)
                .map_or(id, crate::tui::rollouts::rollout_name)
        });
        info_lines.push(rollouts::ota_line(
            job,
            rollout,
            model.now,
            theme,
            info.width as usize,
        ));
    }
    frame.render_widget(Paragraph::new(info_lines), info);

    let [desired, reported, delta] = Layout::horizontal([
        Constraint::Ratio(1, 3),
        Constraint::Ratio(1, 3),
        Constraint::Ratio(1, 3),
    ])
    .areas(shadow);
    let version = view.version();
    for (area, part, section, title, pending) in [
        (
            desired,
            Part::Desired,
            "desired",
            format!("desired · v{version}"),
            false,
        ),
        (
            reported,
            Part::Reported,
            "reported",
            "reported".to_string(),
            false,
        ),
        (delta, Part::Delta, "delta", "delta".to_string(), true),
    ] {
        let value = view.section(section);
        let empty_delta = section == "delta" && value.as_object().is_some_and(|m| m.is_empty());
        let text = if empty_delta {
            Text::styled("in sync", theme.online)
        } else {
            json_text(&value, section, view, model.now, theme, pending)
        };
        let height = area.height.saturating_sub(2) as usize;
        let total = text.lines.len();
        let top = view.scroll_of(part).min(total.saturating_sub(height));
        let block = pane_block(&title, top, height, total, view.focus == part, theme);
        frame.render_widget(
            Paragraph::new(text)
                .block(block)
                .scroll((top.min(u16::MAX as usize) as u16, 0)),
            area,
        );
    }

    let label = |action: Action| model.keys.label(KeyScope::Device, action);
    let (logs, info, history) = (
        label(Action::Logs),
        label(Action::Info),
        label(Action::History),
    );
    let title = match view.pane {
        Pane::Events => format!("events · {logs}: logs · {info}: info · {history}: timeline"),
        Pane::Logs => format!("logs · {logs}: events · {info}: info"),
        Pane::Info => format!("info (Sys.GetInfo) · {info}: events"),
        Pane::Timeline => format!("timeline · ↑↓ choose · {history}: events"),
    };
    let title = title.as_str();
    let height = events.height.saturating_sub(2) as usize;
    let focused = view.focus == Part::Lower;
    if view.pane == Pane::Timeline {
        render_timeline(frame, view, theme, events, title, focused);
        render_device_dialogs(frame, model, view, theme, area);
        return;
    }
    if view.pane == Pane::Info {
        let lines: Vec<Line> = json_lines(&object.info, "info")
            .into_iter()
            .map(|line| Line::raw(line.text))
            .collect();
        let total = lines.len();
        let top = view
            .scroll_of(Part::Lower)
            .min(total.saturating_sub(height));
        let block = pane_block(title, top, height, total, focused, theme);
        frame.render_widget(
            Paragraph::new(lines)
                .block(block)
                .scroll((top.min(u16::MAX as usize) as u16, 0)),
            events,
        );
        render_device_dialogs(frame, model, view, theme, area);
        return;
    }
    let filter = TailFilter {
        device: Some(view.id.clone()),
        names: if view.pane == Pane::Logs {
            vec!["rpc.out.Log".to_string()]
        } else {
            Vec::new()
        },
        ..Default::default()
    };
    // Scrolled back by `back` lines from the newest.
    let back = view.scroll_of(Part::Lower);
    let mut entries = model.tail.window(&filter, height + back);
    let total = entries.len();
    let back = back.min(total.saturating_sub(height));
    entries.truncate(total - back);
    let lines: Vec<Line> = entries
        .iter()
        .rev()
        .take(height)
        .rev()
        .map(|entry| match (&view.pane, &entry.log) {
            (Pane::Logs, Some(log)) => Line::from(vec![
                Span::styled(format!("{} ", text::clock_time(entry.ts)), theme.dim),
                Span::raw(log.to_string()),
            ]),
            _ => super::tail::tail_line(entry, None, theme),
        })
        .collect();
    let mut title = title.to_string();
    if back > 0 {
        title.push_str(&format!(" · {back} newer below"));
    }
    let block = pane_block(&title, 0, height, 0, focused, theme);
    let content = if lines.is_empty() {
        Text::styled(
            match view.pane {
                Pane::Logs => "no log lines from this device since the console started",
                _ => "no notifications from this device since the console started",
            },
            theme.dim,
        )
    } else {
        Text::from(lines)
    };
    frame.render_widget(Paragraph::new(content).block(block), events);
    render_device_dialogs(frame, model, view, theme, area);
}

/// `ts` as month, day and time in UTC: `11-14 22:13:20`.
fn short_time(ts: f64) -> String {
    let full = text::rfc3339(ts);
    full.get(5..19).map(|t| t.replace('T', " ")).unwrap_or(full)
}

/// The device's events over time on the left, the device as it was at the chosen one on
/// the right (what `herd history --at` says).
fn render_timeline(
    frame: &mut Frame,
    view: &DeviceView,
    theme: &Theme,
    area: Rect,
    title: &str,
    focused: bool,
) {
    let height = area.height.saturating_sub(2) as usize;
    let timeline = match &view.timeline {
        Some(Ok(timeline)) if !timeline.is_empty() => timeline,
        other => {
            let (message, style) = match other {
                Some(Err(error)) => (
                    format!("cannot read the server's log: {error}"),
                    theme.error,
                ),
                Some(Ok(_)) => (
                    "the server's log has no events of this device".into(),
                    theme.dim,
                ),
                None => ("reading the server's log…".into(), theme.dim),
            };
            let block = pane_block(title, 0, height, 0, focused, theme);
            frame.render_widget(
                Paragraph::new(message)
                    .style(style)
                    .wrap(Wrap { trim: false })
                    .block(block),
                area,
            );
            return;
        }
    };
    let cursor = view.timeline_cursor().unwrap_or(0);
    let total = timeline.len();
    // The cursor's row stays in view, as low as it can be: the newest events at the end.
    let top = (cursor + 1)
        .saturating_sub(height)
        .min(total.saturating_sub(height));
    let [list, state] =
        Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(area);
    let list_width = list.width.saturating_sub(2) as usize;
    let lines: Vec<Line> = timeline
        .events()
        .iter()
        .enumerate()
        .skip(top)
        .take(height)
        .map(|(i, event)| {
            let style = match event.kind {
                EventKind::Online => theme.online,
                EventKind::Offline | EventKind::Deleted => theme.offline,
                EventKind::Firmware => theme.accent,
                EventKind::Shadow => theme.pending,
                EventKind::Created | EventKind::Changed => Style::default(),
            };
            let when = short_time(event.ts);
            let room = list_width.saturating_sub(when.chars().count() + 1);
            let line = Line::from(vec![
                Span::styled(format!("{when} "), theme.dim),
                Span::styled(text::truncate(&event.text, room), style),
            ]);
            if i == cursor {
                line.style(theme.selected)
            } else {
                line
            }
        })
        .collect();
    let block = pane_block(title, top, height, total, focused, theme);
    frame.render_widget(Paragraph::new(lines).block(block), list);

    let Some(at) = timeline.state_at(cursor) else {
        return;
    };
    let event_ts = timeline.events().get(cursor).map_or(0.0, |e| e.ts);
    let mut lines = Vec::new();
    let connection = match (at.deleted, at.online, at.since) {
        (Some(_), _, _) => "deleted".to_string(),
        (None, Some(true), Some(since)) => format!("online since {}", short_time(since)),
        (None, Some(false), Some(since)) => format!("offline since {}", short_time(since)),
        (None, Some(online), None) => if online { "online" } else { "offline" }.to_string(),
        (None, None, _) => "connection unknown".to_string(),
    };
    lines.push(Line::raw(connection));
    lines.push(Line::from(vec![
        Span::styled("firmware ", theme.dim),
        Span::raw(at.firmware().unwrap_or("unknown").to_string()),
    ]));
    if let Some(shadow) = at.shadow_state() {
        for section in ["desired", "reported"] {
            if let Some(value) = shadow.get(section) {
                lines.push(Line::from(vec![
                    Span::styled(format!("{section} "), theme.dim),
                    Span::raw(value.to_string()),
                ]));
            }
        }
    }
    let block = Block::bordered().title(Span::styled(
        format!(" as at {} ", short_time(event_ts)),
        theme.title,
    ));
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(block),
        state,
    );
}

/// A pane's border: its title, where it is scrolled to when it does not fit, and
/// whether it has the scrolling keys (Tab moves them).
fn pane_block(
    title: &str,
    top: usize,
    height: usize,
    total: usize,
    focused: bool,
    theme: &Theme,
) -> Block<'static> {
    let mut title = format!(" {title} ");
    if total > height {
        title.push_str(&format!(
            "{}-{}/{} ",
            top + 1,
            (top + height).min(total),
            total
        ));
    }
    let style = if focused { theme.key } else { theme.title };
    let block = Block::bordered().title(Span::styled(title, style));
    if focused {
        block.border_style(theme.title)
    } else {
        block
    }
}

fn render_device_dialogs(
    frame: &mut Frame,
    model: &Model,
    view: &DeviceView,
    theme: &Theme,
    area: Rect,
) {
    if let Some(editor) = &view.editor {
        render_editor(frame, editor, view, theme, area);
    } else if let Some(dialog) = &view.rpc {
        render_rpc(frame, dialog, model.now, theme, area);
    } else if let Some(dialog) = &view.push {
        let running = model
            .fleet
            .get(&view.id)
            .map(|r| r.fw_version.to_string())
            .unwrap_or_default();
        let label = model.fleet.label(&view.id).to_string();
        rollouts::render_push(frame, dialog, &label, &running, theme, area);
    }
}

fn render_editor(
    frame: &mut Frame,
    editor: &crate::tui::device::Editor,
    view: &DeviceView,
    theme: &Theme,
    area: Rect,
) {
    let popup = centered(area, 90, 90);
    frame.render_widget(Clear, popup);
    let title = format!(" edit desired of {} · v{} ", view.id, editor.base_version);
    let outer = Block::bordered().title(Span::styled(title, theme.title));
    let inner = outer.inner(popup);
    frame.render_widget(outer, popup);
    let [main, message] =
        Layout::vertical([Constraint::Min(1), Constraint::Length(2)]).areas(inner);
    let text_area = if let Some((server, version)) = &editor.conflict {
        let [mine, theirs] =
            Layout::horizontal([Constraint::Ratio(1, 2), Constraint::Ratio(1, 2)]).areas(main);
        let copy = serde_json::to_string_pretty(server).unwrap_or_default();
        frame.render_widget(
            Paragraph::new(copy).block(Block::bordered().title(Span::styled(
                format!(" server's copy · v{version} "),
                theme.warn,
            ))),
            theirs,
        );
        mine
    } else {
        main
    };
    frame.render_widget(&editor.textarea, text_area);
    let (line, style) = match (&editor.error, editor.sending) {
        (_, true) => ("sending…".to_string(), theme.dim),
        (Some(error), _) if editor.conflict.is_some() => (
            format!("{error}. ^R takes the server's copy, ^O overwrites it with yours."),
            theme.error,
        ),
        (Some(error), _) => (error.clone(), theme.error),
        (None, _) => (
            "^S sends the change (only changed keys; removed keys become null). Esc cancels."
                .to_string(),
            theme.dim,
        ),
    };
    frame.render_widget(
        Paragraph::new(line).style(style).wrap(Wrap { trim: true }),
        message,
    );
}

fn render_rpc(
    frame: &mut Frame,
    dialog: &crate::tui::device::RpcDialog,
    now: f64,
    theme: &Theme,
    area: Rect,
) {
    let popup = centered(area, 90, 90);
    frame.render_widget(Clear, popup);
    let outer = Block::bordered().title(Span::styled(" call RPC ", theme.title));
    let inner = outer.inner(popup);
    frame.render_widget(outer, popup);
    let [list, right] =
        Layout::horizontal([Constraint::Length(24), Constraint::Min(10)]).areas(inner);
    let focus_style = |focused: bool| if focused { theme.title } else { theme.dim };
    // What was typed to jump, while it counts.
    let list_title = if dialog.jump.is_empty() || now - dialog.jump_at > JUMP_PAUSE_SECS {
        " RPC.List ".to_string()
    } else {
        format!(" RPC.List · {}… ", dialog.jump)
    };
    let list_block = Block::bordered().title(Span::styled(
        list_title,
        focus_style(dialog.focus == RpcFocus::Methods),
    ));
    let list_text: Text = match &dialog.methods {
        None => Text::styled("asking the device…", theme.dim),
        Some(Err(error)) => Text::styled(error.clone(), theme.error),
        Some(Ok(methods)) => {
            let height = list.height.saturating_sub(2) as usize;
            let start = dialog.selected.saturating_sub(height.saturating_sub(1));
            Text::from(
                methods
                    .iter()
                    .enumerate()
                    .skip(start)
                    .take(height)
                    .map(|(i, m)| {
                        if i == dialog.selected {
                            Line::styled(m.clone(), theme.selected)
                        } else {
                            Line::raw(m.clone())
                        }
                    })
                    .collect::<Vec<_>>(),
            )
        }
    };
    frame.render_widget(Paragraph::new(list_text).block(list_block), list);
    let [params, result] =
        Layout::vertical([Constraint::Length(3), Constraint::Min(1)]).areas(right);
    let params_block = Block::bordered().title(Span::styled(
        " params (JSON, empty for none) ",
        focus_style(dialog.focus == RpcFocus::Params),
    ));
    let params_inner = params_block.inner(params);
    frame.render_widget(
        Paragraph::new(dialog.params.text().to_string()).block(params_block),
        params,
    );
    if dialog.focus == RpcFocus::Params {
        let x = params_inner.x + dialog.params.cursor() as u16;
        frame.set_cursor_position((
            x.min(params_inner.right().saturating_sub(1)),
            params_inner.y,
        ));
    }
    let (title, body, style) = match (&dialog.in_flight, &dialog.result) {
        (Some(method), _) => (
            format!(" {method} "),
            "waiting for the device…".to_string(),
            theme.dim,
        ),
        (None, Some((method, Ok(text)))) => (
            format!(" {method} → result "),
            text.clone(),
            Style::default(),
        ),
        (None, Some((method, Err(error)))) => {
            (format!(" {method} → error "), error.clone(), theme.error)
        }
        (None, None) => (
            " result ".into(),
            "choose a method, Enter calls it".into(),
            theme.dim,
        ),
    };
    let lines = body.lines().count();
    let height = result.height.saturating_sub(2) as usize;
    let top = dialog.result_scroll.min(lines.saturating_sub(height));
    let title = if lines > height {
        format!(
            "{title}· {}-{}/{} · PgUp PgDn ",
            top + 1,
            (top + height).min(lines),
            lines
        )
    } else {
        title
    };
    frame.render_widget(
        Paragraph::new(body)
            .style(style)
            .wrap(Wrap { trim: false })
            .scroll((top.min(u16::MAX as usize) as u16, 0))
            .block(Block::bordered().title(Span::styled(title, theme.title))),
        result,
    );
}
