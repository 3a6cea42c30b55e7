//! Drawing: a pure function of the [`Model`]. Tables build only the rows that fit.

mod analytics;
mod bench;
mod rollouts;

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, Wrap};
use ratatui::Frame;

use super::device::{json_lines, DeviceView, Pane, RpcFocus};
use super::model::{Connection, Model, Overlay, Screen};
use super::notifications::{Entry, TailFilter};
use super::palette;
use super::theme::Theme;
use crate::fleet::{Column, DeviceRow};
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
    render_header(frame, model, theme, header);
    render_crumbs(frame, model, theme, crumbs);
    match model.screen() {
        Screen::Fleet => render_fleet(frame, model, theme, body),
        Screen::Device(_) => match &model.device {
            Some(view) => render_device(frame, model, view, theme, body),
            None => frame.render_widget(Paragraph::new("no device open"), body),
        },
        Screen::Notifications => render_tail(frame, model, theme, body),
        Screen::Analytics => analytics::render(frame, model, theme, body),
        Screen::Rollouts => rollouts::render_list(frame, model, theme, body),
        Screen::Rollout(_) => match &model.rollout_page {
            Some(page) => rollouts::render_page(frame, model, page, theme, body),
            None => frame.render_widget(Paragraph::new("no rollout open"), body),
        },
        Screen::NewRollout => rollouts::render_form(frame, model, theme, body),
        Screen::Bench => bench::render(frame, model, theme, body),
    }
    render_footer(frame, model, theme, footer);
    match &model.overlay {
        Some(Overlay::Help) => render_help(frame, model, theme, body),
        Some(Overlay::Palette { input, error }) => render_palette(
            frame,
            theme,
            body,
            input.text(),
            input.cursor(),
            error.as_deref(),
        ),
        Some(Overlay::Confirm { question, .. }) => render_confirm(frame, theme, body, question),
        // The prompt lives in the footer.
        Some(Overlay::Prompt { .. }) | None => {}
    }
}

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
            Span::styled(format!("○ disconnected, retry in {wait:.0}s"), theme.error)
        }
        Connection::Rejected(_) => Span::styled("✗ API key refused", theme.error),
    }
}

fn render_header(frame: &mut Frame, model: &Model, theme: &Theme, area: Rect) {
    let counts = model.fleet.counts();
    let sep = || Span::styled(" │ ", theme.dim);
    let mut spans = vec![
        Span::styled(" herd", theme.title),
        sep(),
        Span::styled(model.profile.name.clone(), theme.header),
        Span::raw(" "),
        Span::styled(model.profile.server.clone(), theme.dim),
        sep(),
        connection_span(model, theme),
        sep(),
        Span::raw(format!("{} devices ", counts.total)),
        Span::styled(format!("{} on", counts.online), theme.online),
        Span::raw(" "),
        Span::styled(
            format!("{} off", counts.total - counts.online),
            if counts.total > counts.online {
                theme.offline
            } else {
                theme.dim
            },
        ),
    ];
    if counts.pending > 0 {
        spans.push(Span::raw(" "));
        spans.push(Span::styled(format!("{} Δ", counts.pending), theme.pending));
    }
    let mut line = Line::from(spans);
    if model.profile.read_only {
        // The badge goes first on the right, and survives truncation of the rest.
        let badge = " READ-ONLY ";
        let [left, right] =
            Layout::horizontal([Constraint::Min(1), Constraint::Length(badge.len() as u16)])
                .areas(area);
        frame.render_widget(Paragraph::new(Line::styled(badge, theme.badge)), right);
        frame.render_widget(Paragraph::new(std::mem::take(&mut line)), left);
        return;
    }
    frame.render_widget(Paragraph::new(line), area);
}

fn breadcrumbs(model: &Model) -> Vec<String> {
    let mut crumbs = Vec::new();
    for screen in &model.stack {
        match screen {
            Screen::Fleet => crumbs.push("Fleet".to_string()),
            Screen::Notifications => crumbs.push("Notifications".into()),
            Screen::Analytics => crumbs.push("Analytics".into()),
            Screen::Rollouts => crumbs.push("Rollouts".into()),
            Screen::Rollout(id) => {
                let name = model
                    .rollout_page
                    .as_ref()
                    .and_then(|p| p.object.as_ref())
                    .or_else(|| model.rollouts.get(id))
                    .map(|r| super::rollouts::rollout_name(r).to_string());
                crumbs.push(name.unwrap_or_else(|| id.clone()));
            }
            Screen::Bench => crumbs.push("Bench".into()),
            Screen::NewRollout => {
                crumbs.push("New rollout".into());
                if let Some(form) = &model.new_rollout {
                    if matches!(
                        form.stage,
                        super::rollouts::FormStage::Plan { .. }
                            | super::rollouts::FormStage::Creating { .. }
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

fn render_crumbs(frame: &mut Frame, model: &Model, theme: &Theme, area: Rect) {
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
            Screen::Fleet if !model.fleet.filter().is_empty() => Some(Span::styled(
                format!(
                    "filter: {}  ({} of {})",
                    model.fleet.filter().text(),
                    model.fleet.view_len(),
                    model.fleet.len()
                ),
                theme.warn,
            )),
            Screen::Fleet if !model.fleet_ui.marked.is_empty() => Some(Span::styled(
                format!("{} marked", model.fleet_ui.marked.len()),
                theme.marked,
            )),
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

fn key_hints(model: &Model) -> Vec<(&'static str, &'static str)> {
    if let Some(overlay) = &model.overlay {
        return match overlay {
            Overlay::Palette { .. } => vec![("⏎", "run"), ("Tab", "complete"), ("Esc", "close")],
            Overlay::Help => vec![("any key", "close")],
            Overlay::Confirm { .. } => vec![("y", "yes"), ("n/Esc", "no")],
            Overlay::Prompt { .. } => vec![("⏎", "apply"), ("Esc", "cancel")],
        };
    }
    match model.screen() {
        Screen::Fleet => vec![
            ("⏎", "open"),
            ("/", "filter"),
            ("1-0", "sort"),
            ("␣", "mark"),
            ("t", "tail"),
            ("a", "reports"),
            (":", "cmd"),
            ("?", "help"),
            ("q", "quit"),
            ("R", "rollouts"),
            ("U", "update"),
        ],
        Screen::Device(_) => match &model.device {
            Some(view) if view.editor.is_some() => vec![
                ("^S", "send"),
                ("^R", "server copy"),
                ("^O", "overwrite"),
                ("Esc", "cancel"),
            ],
            Some(view) if view.rpc.is_some() => vec![
                ("↑↓", "method"),
                ("Tab", "params"),
                ("⏎", "call"),
                ("Esc", "close"),
            ],
            Some(view) if view.push.is_some() => {
                vec![("↑↓", "firmware"), ("⏎", "push"), ("Esc", "close")]
            }
            _ => vec![
                ("e", "edit"),
                ("E", "$EDITOR"),
                ("c", "call"),
                ("l", "logs"),
                ("i", "info"),
                ("t", "tail"),
                ("r", "reload"),
                ("Esc", "back"),
                ("?", "help"),
                ("u", "update"),
            ],
        },
        Screen::Notifications => vec![
            ("f", "follow"),
            ("d", "device"),
            ("n", "name"),
            ("/", "regex"),
            ("x", "clear filter"),
            ("w", "wrap"),
            ("s", "save"),
            ("Esc", "back"),
        ],
        Screen::Analytics => vec![
            ("1-5", "report"),
            ("r", "range"),
            ("b", "bucket"),
            ("t", "table"),
            ("s", "sort"),
            ("↑↓", "scroll"),
            ("Esc", "back"),
            ("?", "help"),
        ],
        Screen::Rollouts => vec![
            ("⏎", "open"),
            ("n", "new"),
            ("↑↓", "move"),
            ("Esc", "back"),
            ("?", "help"),
        ],
        Screen::Rollout(_) => {
            let planned = model
                .rollout_page
                .as_ref()
                .and_then(|p| p.object.as_ref())
                .is_some_and(|o| o.state == protocol::firmware::RolloutState::Planned);
            let mut hints = if planned {
                vec![("s", "start")]
            } else {
                Vec::new()
            };
            hints.extend([
                ("p", "pause"),
                ("r", "resume"),
                ("A", "abort"),
                ("R", "retry"),
                ("⏎", "device"),
                ("Tab", "list"),
                ("Esc", "back"),
                ("?", "help"),
            ]);
            hints
        }
        Screen::Bench => vec![
            ("↑↓", "port"),
            ("n w p i", "name, Wi-Fi, pass, image"),
            ("f", "flash"),
            ("r", "ports"),
            ("Esc", "back"),
        ],
        Screen::NewRollout => match model.new_rollout.as_ref().map(|f| &f.stage) {
            Some(super::rollouts::FormStage::Plan { .. }) => {
                vec![("⏎", "create and start"), ("Esc", "back to the form")]
            }
            Some(super::rollouts::FormStage::Editing) | None => vec![
                ("Tab", "next field"),
                ("↑↓", "firmware"),
                ("←→", "choose"),
                ("⏎", "dry run"),
                ("Esc", "cancel"),
            ],
            Some(_) => vec![("Esc", "stop waiting")],
        },
    }
}

fn render_footer(frame: &mut Frame, model: &Model, theme: &Theme, area: Rect) {
    if let Some(Overlay::Prompt { kind, input, error }) = &model.overlay {
        let label = format!(" {}: ", kind.label());
        let mut spans = vec![
            Span::styled(label.clone(), theme.key),
            Span::raw(input.text().to_string()),
        ];
        if let Some(error) = error {
            spans.push(Span::styled(format!("  {error}"), theme.error));
        }
        frame.render_widget(Paragraph::new(Line::from(spans)), area);
        let x = area.x + (label.chars().count() + input.cursor()) as u16;
        frame.set_cursor_position((x.min(area.right().saturating_sub(1)), area.y));
        return;
    }
    let mut spans = vec![Span::raw(" ")];
    let mut used = 1;
    for (key, what) in key_hints(model) {
        let width = key.chars().count() + what.chars().count() + 3;
        if used + width > area.width as usize {
            break;
        }
        used += width;
        spans.push(Span::styled(key, theme.key));
        spans.push(Span::raw(format!(" {what}  ")));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)).style(theme.dim), area);
}

/// Columns that fit `width`, most useful first, then shown in table order.
pub fn fleet_columns(width: u16) -> Vec<(Column, u16)> {
    const PRIORITY: [(Column, u16); 10] = [
        (Column::State, 7),
        (Column::Name, 14),
        (Column::Id, 24),
        (Column::Firmware, 9),
        (Column::LastSeen, 10),
        (Column::Light, 5),
        (Column::Delta, 7),
        (Column::App, 12),
        (Column::Uptime, 7),
        (Column::Arch, 8),
    ];
    // One column for the mark, one space between columns.
    let mut budget = width.saturating_sub(2) as i32;
    let mut chosen = Vec::new();
    for (column, min) in PRIORITY {
        let need = min as i32 + 1;
        if need <= budget {
            budget -= need;
            chosen.push((column, min));
        }
    }
    // The name takes what is left, up to a point.
    for (column, width) in chosen.iter_mut() {
        if *column == Column::Name {
            *width += budget.clamp(0, 26) as u16;
        }
    }
    chosen.sort_by_key(|(column, _)| Column::ALL.iter().position(|c| c == column));
    chosen
}

fn row_cells<'a>(
    row: &DeviceRow,
    columns: &[(Column, u16)],
    now: f64,
    marked: bool,
    theme: &Theme,
) -> Row<'a> {
    let mut cells = Vec::with_capacity(columns.len() + 1);
    cells.push(Cell::from(if marked { "*" } else { " " }).style(theme.marked));
    for (column, _) in columns {
        let text = column.cell(row, now);
        let style = match column {
            Column::State if row.online => theme.online,
            Column::State => theme.offline,
            Column::Delta if row.delta_pending => theme.pending,
            Column::Light if row.light == Some(true) => theme.warn,
            Column::Id => theme.dim,
            _ => Style::default(),
        };
        cells.push(Cell::from(text).style(style));
    }
    Row::new(cells)
}

fn fleet_message(model: &Model) -> Option<(String, bool)> {
    if let Connection::Rejected(reason) = &model.connection {
        return Some((
            format!(
                "The server at {} refused the API key ({reason}).\n\nSet a valid key with --api-key, HERD_API_KEY, or the api_key of profile {:?}.",
                model.profile.server, model.profile.name
            ),
            true,
        ));
    }
    if model.loaded_once {
        if model.fleet.is_empty() {
            return Some((
                "No devices yet.\n\nRegister one with `herd register NAME` and give its token to the device.".into(),
                false,
            ));
        }
        if model.fleet.view_len() == 0 {
            return Some((
                format!(
                    "No device matches the filter {:?}. Esc clears it.",
                    model.fleet.filter().text()
                ),
                false,
            ));
        }
        return None;
    }
    if let Some(error) = &model.load_error {
        return Some((
            format!("Cannot list devices: {error}\n\nPress r to retry."),
            true,
        ));
    }
    match &model.connection {
        Connection::Lost { reason, .. } => Some((
            format!(
                "Cannot reach the server at {}: {reason}\n\nRetrying by itself; Ctrl-C quits.",
                model.profile.server
            ),
            true,
        )),
        _ => Some((format!("Connecting to {}…", model.profile.server), false)),
    }
}

fn render_fleet(frame: &mut Frame, model: &Model, theme: &Theme, area: Rect) {
    if let Some((message, error)) = fleet_message(model) {
        let style = if error { theme.error } else { theme.dim };
        frame.render_widget(
            Paragraph::new(message)
                .style(style)
                .wrap(Wrap { trim: false })
                .block(Block::default().borders(Borders::NONE)),
            area.inner(ratatui::layout::Margin::new(1, 1)),
        );
        return;
    }
    let columns = fleet_columns(area.width);
    let sort = model.fleet.sort();
    let mut header = vec![Cell::from(" ")];
    for (column, _) in &columns {
        let mut title = column.title().to_string();
        if sort.column == *column {
            title.push(if sort.descending { '▼' } else { '▲' });
        }
        header.push(Cell::from(title));
    }
    let visible_rows = area.height.saturating_sub(1) as usize;
    let offset = model
        .fleet_ui
        .offset
        .min(model.fleet.view_len().saturating_sub(1));
    let rows: Vec<Row> = model
        .fleet
        .visible(offset, visible_rows)
        .enumerate()
        .map(|(i, row)| {
            let marked = model.fleet_ui.marked.contains(&row.id);
            let built = row_cells(row, &columns, model.now, marked, theme);
            if offset + i == model.fleet_ui.selected {
                built.style(theme.selected)
            } else {
                built
            }
        })
        .collect();
    let mut widths = vec![Constraint::Length(1)];
    widths.extend(columns.iter().map(|(_, w)| Constraint::Length(*w)));
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(theme.header.add_modifier(Modifier::UNDERLINED)))
        .column_spacing(1);
    frame.render_widget(table, area);
}

/// The stock way, for comparison in the benchmark: every row built, `TableState` scrolls.
pub fn render_fleet_naive(frame: &mut Frame, model: &Model, theme: &Theme) {
    let area = frame.area();
    let columns = fleet_columns(area.width);
    let rows: Vec<Row> = (0..model.fleet.view_len())
        .filter_map(|i| model.fleet.row_at(i))
        .map(|row| row_cells(row, &columns, model.now, false, theme))
        .collect();
    let mut widths = vec![Constraint::Length(1)];
    widths.extend(columns.iter().map(|(_, w)| Constraint::Length(*w)));
    let table = Table::new(rows, widths)
        .header(Row::new(columns.iter().map(|(c, _)| Cell::from(c.title()))))
        .row_highlight_style(theme.selected);
    let mut state =
        ratatui::widgets::TableState::default().with_selected(Some(model.fleet_ui.selected));
    frame.render_stateful_widget(table, area, &mut state);
}

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

fn render_device(frame: &mut Frame, model: &Model, view: &DeviceView, theme: &Theme, area: Rect) {
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

    let state = if object.online {
        Span::styled("● online", theme.online)
    } else {
        Span::styled("○ offline", theme.offline)
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
    second.extend(field("uptime", Column::Uptime.cell(&row, model.now)));
    second.extend(field("seen", row.last_seen_text(model.now)));
    if let Some(error) = &view.error {
        second.push(Span::styled(error.clone(), theme.error));
    }
    let mut info_lines = vec![Line::from(first), Line::from(second)];
    if let Some(job) = job {
        let rollout = job.rollout.as_deref().map(|id| {
            model
                .rollouts
                .get(id)
                .map_or(id, super::rollouts::rollout_name)
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
    for (area, section, title, pending) in [
        (desired, "desired", format!(" desired · v{version} "), false),
        (reported, "reported", " reported ".to_string(), false),
        (delta, "delta", " delta ".to_string(), true),
    ] {
        let value = view.section(section);
        let empty_delta = section == "delta" && value.as_object().is_some_and(|m| m.is_empty());
        let text = if empty_delta {
            Text::styled("in sync", theme.online)
        } else {
            json_text(&value, section, view, model.now, theme, pending)
        };
        let block = Block::bordered().title(Span::styled(title, theme.title));
        frame.render_widget(Paragraph::new(text).block(block), area);
    }

    let title = match view.pane {
        Pane::Events => " events · l: logs · i: info ",
        Pane::Logs => " logs · l: events · i: info ",
        Pane::Info => " info (Sys.GetInfo) · i: events ",
    };
    let block = Block::bordered().title(Span::styled(title, theme.title));
    if view.pane == Pane::Info {
        let lines: Vec<Line> = json_lines(&object.info, "info")
            .into_iter()
            .map(|line| Line::raw(line.text))
            .collect();
        frame.render_widget(Paragraph::new(lines).block(block), events);
        render_device_dialogs(frame, model, view, theme, area);
        return;
    }
    let height = events.height.saturating_sub(2) as usize;
    let filter = TailFilter {
        device: Some(view.id.clone()),
        name: (view.pane == Pane::Logs).then(|| "rpc.out.Log".to_string()),
        regex: None,
    };
    let entries = model.tail.window(&filter, height);
    let lines: Vec<Line> = entries
        .iter()
        .map(|entry| match (&view.pane, &entry.log) {
            (Pane::Logs, Some(log)) => Line::from(vec![
                Span::styled(format!("{} ", text::clock_time(entry.ts)), theme.dim),
                Span::raw(log.to_string()),
            ]),
            _ => tail_line(entry, None, theme),
        })
        .collect();
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
        render_rpc(frame, dialog, theme, area);
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
    editor: &super::device::Editor,
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

fn render_rpc(frame: &mut Frame, dialog: &super::device::RpcDialog, theme: &Theme, area: Rect) {
    let popup = centered(area, 90, 90);
    frame.render_widget(Clear, popup);
    let outer = Block::bordered().title(Span::styled(" call RPC ", theme.title));
    let inner = outer.inner(popup);
    frame.render_widget(outer, popup);
    let [list, right] =
        Layout::horizontal([Constraint::Length(24), Constraint::Min(10)]).areas(inner);
    let focus_style = |focused: bool| if focused { theme.title } else { theme.dim };
    let list_block = Block::bordered().title(Span::styled(
        " RPC.List ",
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
    frame.render_widget(
        Paragraph::new(body)
            .style(style)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(Span::styled(title, theme.title))),
        result,
    );
}

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
fn tail_line(entry: &Entry, who: Option<&str>, theme: &Theme) -> Line<'static> {
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
    spans.push(Span::raw(entry.data.to_string()));
    Line::from(spans)
}

/// The name for tail lines: shorter than an id and what operators recognise. `rollout.*`
/// events carry a rollout's id, named from the rollouts list when it is known.
fn device_label<'a>(model: &'a Model, id: &'a str) -> &'a str {
    if model.fleet.get(id).is_none() {
        if let Some(rollout) = model.rollouts.get(id) {
            return super::rollouts::rollout_name(rollout);
        }
    }
    model.fleet.label(id)
}

fn render_tail(frame: &mut Frame, model: &Model, theme: &Theme, area: Rect) {
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
    let mut lines: Vec<Line> = entries
        .iter()
        .map(|e| tail_line(e, Some(device_label(model, &e.id)), theme))
        .collect();
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

fn centered(area: Rect, width_percent: u16, height_percent: u16) -> Rect {
    let width = (area.width as u32 * width_percent as u32 / 100) as u16;
    let height = (area.height as u32 * height_percent as u32 / 100) as u16;
    Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    }
}

fn render_help(frame: &mut Frame, model: &Model, theme: &Theme, area: Rect) {
    let popup = centered(area, 90, 100);
    frame.render_widget(Clear, popup);
    let key = |k: &str, what: &str| {
        Line::from(vec![
            Span::styled(format!("{k:>9}  "), theme.key),
            Span::raw(what.to_string()),
        ])
    };
    let mut lines = vec![Line::styled("everywhere", theme.title)];
    lines.extend([
        key(":", "command palette (Tab completes)"),
        key("?", "this help"),
        key("Esc", "back, close, clear"),
        key("Ctrl-C", "quit"),
    ]);
    let screen: &[(&str, &str)] = match model.screen() {
        Screen::Fleet => &[
            ("↑↓ j k", "move; PgUp PgDn g G jump"),
            ("⏎", "open the device"),
            (
                "/",
                "filter: text, field:value, globs (state:offline fw:1.2 name:lamp-*)",
            ),
            ("1-0", "sort by column 1-10; again reverses"),
            ("␣ *", "mark one / all shown, for :set and :call"),
            ("t", "notification tail"),
            ("a", "analytics: reports over the notification log"),
            ("r", "list devices again"),
            ("R", "firmware rollouts"),
            ("U", "new rollout of the marked devices, else of the filter"),
        ],
        Screen::Device(_) => &[
            ("e", "edit desired here (^S sends)"),
            ("E", "edit desired in $EDITOR"),
            ("c", "call an RPC from RPC.List"),
            ("l", "events / logs"),
            ("i", "the device's Sys.GetInfo"),
            ("t", "tail this device"),
            ("u", "push a firmware image to this device, with progress"),
            ("r", "reload"),
        ],
        Screen::Notifications => &[
            ("f ␣", "follow / pause"),
            ("↑↓ PgUp", "scroll (pauses); G follows"),
            ("d n /", "filter by device, event glob, regex"),
            ("x", "clear filters"),
            ("w", "wrap long lines"),
            ("s", "save shown lines as JSON lines"),
            ("c", "clear the buffer"),
        ],
        Screen::Analytics => &[
            ("1-5", "fleet, connectivity, usage, firmware, rpc"),
            ("Tab ← →", "next / previous report"),
            ("r", "range: last hour, last 24 h, all"),
            ("b", "buckets of an hour or a day"),
            ("t", "next table of the report"),
            ("s S", "sort by the next column; reverse"),
            ("↑↓ PgUp", "scroll the table; g G jump"),
        ],
        Screen::Rollouts => &[
            ("↑↓ j k", "move; PgUp PgDn g G jump"),
            ("⏎", "open the rollout"),
            (
                "n",
                "new rollout of the fleet's marked devices, else its filter",
            ),
            ("^L", "list again"),
        ],
        Screen::Rollout(_) => &[
            ("Tab", "devices by state / failures"),
            ("↑↓ j k", "move in the list; g G jump"),
            ("⏎", "open the device under the cursor"),
            ("s", "start a planned rollout"),
            ("p r", "pause / resume, a halted one too (asks first)"),
            ("A", "abort: pending devices are skipped (asks first)"),
            ("R", "retry the failed devices in a new rollout"),
        ],
        Screen::Bench => &[
            ("↑↓", "choose the board's serial port; r lists them again"),
            (
                "n w p i",
                "type the name, Wi-Fi network, passphrase, image; ⏎ ends",
            ),
            ("f ⏎", "register, flash, reset, wait until online, open it"),
            ("o", "open the light just flashed"),
        ],
        Screen::NewRollout => &[
            ("Tab ⇧Tab", "next / previous field"),
            ("↑↓", "choose the firmware; move between fields"),
            ("←→ ␣", "change commit and delivery"),
            ("⏎", "dry run: the server's plan; ⏎ again creates"),
            ("Esc", "back; cancel"),
        ],
    };
    lines.push(Line::styled("this view", theme.title));
    lines.extend(screen.iter().map(|(k, w)| key(k, w)));
    lines.push(Line::styled("commands", theme.title));
    for (name, args, what) in palette::COMMANDS {
        lines.push(Line::from(vec![
            Span::styled(format!("  :{name} {args:<14}"), theme.key),
            Span::raw(what.to_string()),
        ]));
    }
    let block = Block::bordered().title(Span::styled(" help · any key closes ", theme.title));
    frame.render_widget(Paragraph::new(lines).block(block), popup);
}

fn render_palette(
    frame: &mut Frame,
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
        lines.push(Line::from(vec![
            Span::styled(format!("{name} {args}"), theme.key),
            Span::styled(format!("  {what}"), theme.dim),
        ]));
    }
    frame.render_widget(Paragraph::new(lines).block(block), popup);
    let x = inner.x + 1 + cursor as u16;
    frame.set_cursor_position((x.min(inner.right().saturating_sub(1)), inner.y));
}

fn render_confirm(frame: &mut Frame, theme: &Theme, area: Rect, question: &str) {
    let width = (question.chars().count() as u16 + 4)
        .max(30)
        .min(area.width);
    // A long question wraps: the answer keys stay visible under it.
    let question_rows = wrapped_rows(question, width.saturating_sub(2) as usize) as u16;
    let height = (question_rows + 3).min(area.height);
    let popup = Rect {
        x: area.x + (area.width - width) / 2,
        y: (area.y + area.height / 3).min(area.bottom().saturating_sub(height)),
        width,
        height,
    };
    frame.render_widget(Clear, popup);
    let lines = vec![
        Line::styled(question.to_string(), theme.header),
        Line::from(vec![
            Span::styled("y", theme.key),
            Span::raw(" yes   "),
            Span::styled("n", theme.key),
            Span::raw(" no"),
        ]),
    ];
    let block = Block::bordered().title(Span::styled(" confirm ", theme.warn));
    frame.render_widget(
        Paragraph::new(lines).wrap(Wrap { trim: true }).block(block),
        popup,
    );
}

/// Lines `text` takes when wrapped at word boundaries into `width` columns.
fn wrapped_rows(text: &str, width: usize) -> usize {
    let width = width.max(1);
    let mut rows = 1;
    let mut used = 0;
    for word in text.split_whitespace() {
        let length = word.chars().count().max(1);
        if used > 0 && used + 1 + length <= width {
            used += 1 + length;
            continue;
        }
        if used > 0 {
            rows += 1;
        }
        // A word longer than a line is broken over several.
        rows += (length - 1) / width;
        used = (length - 1) % width + 1;
    }
    rows
}
