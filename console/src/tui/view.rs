//! Drawing: a pure function of the [`Model`]. Tables build only the rows that fit.

mod analytics;
mod bench;
mod device;
mod fleet;
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
    render_header(frame, model, theme, header);
    render_crumbs(frame, model, theme, crumbs);
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
    render_footer(frame, model, theme, footer);
    match &model.overlay {
        Some(Overlay::Help { scroll }) => super::help::render(frame, model, *scroll, theme, body),
        Some(Overlay::Palette { input, error }) => render_palette(
            frame,
            model,
            theme,
            body,
            input.text(),
            input.cursor(),
            error.as_deref(),
        ),
        Some(Overlay::Confirm { question, .. }) => render_confirm(frame, theme, body, question),
        Some(Overlay::Contexts { selected }) => {
            render_contexts(frame, model, theme, body, *selected)
        }
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
            Span::styled(format!("○ disconnected, retry {wait:.0}s"), theme.error)
        }
        Connection::Rejected(_) => Span::styled("✗ API key refused", theme.error),
    }
}

fn render_header(frame: &mut Frame, model: &Model, theme: &Theme, area: Rect) {
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

/// One key hint of the footer.
pub(super) struct Hint {
    pub key: String,
    pub what: &'static str,
    /// What it asks of the server: greyed out when the key may not (PROTOCOL §11).
    pub needs: Option<Operation>,
    /// Kept when the footer is too narrow for every hint: the ways back and to the help.
    pub essential: bool,
}

fn hint(key: impl Into<String>, what: &'static str) -> Hint {
    Hint {
        key: key.into(),
        what,
        needs: None,
        essential: false,
    }
}

/// A hint that asks `operation` of the server.
fn hint_needs(key: impl Into<String>, what: &'static str, operation: Operation) -> Hint {
    Hint {
        needs: Some(operation),
        ..hint(key, what)
    }
}

/// A hint that survives a narrow footer.
fn essential(key: impl Into<String>, what: &'static str) -> Hint {
    Hint {
        essential: true,
        ..hint(key, what)
    }
}

/// The hint of a key map action: its key as configured, and what it needs.
fn mapped(model: &Model, scope: KeyScope, action: Action, what: &'static str) -> Hint {
    Hint {
        needs: crate::access::key_action(action),
        essential: action == Action::Help,
        ..hint(model.keys.label(scope, action), what)
    }
}

fn key_hints(model: &Model) -> Vec<Hint> {
    if let Some(overlay) = &model.overlay {
        return match overlay {
            Overlay::Palette { .. } => vec![
                hint("⏎", "run"),
                hint("Tab", "complete"),
                essential("Esc", "close"),
            ],
            Overlay::Help { .. } => vec![
                hint("↑↓ PgUp PgDn", "scroll"),
                essential("Esc q ?", "close"),
            ],
            Overlay::Confirm { .. } => vec![essential("y", "yes"), essential("n/Esc", "no")],
            Overlay::Prompt { .. } => vec![hint("⏎", "apply"), essential("Esc", "cancel")],
            Overlay::Contexts { .. } => vec![
                hint("↑↓", "move"),
                hint("⏎", "switch"),
                essential("Esc", "close"),
            ],
        };
    }
    let back = || essential("Esc", "back");
    match model.screen() {
        Screen::Fleet => {
            let f = KeyScope::Fleet;
            vec![
                mapped(model, f, Action::Open, "open"),
                mapped(model, f, Action::Filter, "filter"),
                hint(sort_keys(model.size.0), "sort"),
                mapped(model, f, Action::Mark, "mark"),
                mapped(model, f, Action::Tail, "tail"),
                mapped(model, f, Action::Analytics, "reports"),
                mapped(model, f, Action::Palette, "cmd"),
                mapped(model, f, Action::Help, "help"),
                Hint {
                    essential: true,
                    ..mapped(model, f, Action::Quit, "quit")
                },
                mapped(model, f, Action::Rollouts, "rollouts"),
                mapped(model, f, Action::NewRollout, "update"),
            ]
        }
        Screen::Device(_) => match &model.device {
            Some(view) if view.editor.is_some() => vec![
                hint("^S", "send"),
                hint("^R", "server copy"),
                hint("^O", "overwrite"),
                essential("Esc", "cancel"),
            ],
            Some(view) if view.rpc.is_some() => vec![
                hint("↑↓ a-z", "method"),
                hint("Tab", "params"),
                hint_needs("⏎", "call", Operation::Call),
                hint("PgUp PgDn", "result"),
                essential("Esc", "close"),
            ],
            Some(view) if view.push.is_some() => vec![
                hint("↑↓", "firmware"),
                hint_needs("⏎", "push", Operation::PushFirmware),
                essential("Esc", "close"),
            ],
            _ => {
                let d = KeyScope::Device;
                vec![
                    mapped(model, d, Action::Edit, "edit"),
                    mapped(model, d, Action::EditExternal, "$EDITOR"),
                    mapped(model, d, Action::Call, "call"),
                    mapped(model, d, Action::Logs, "logs"),
                    mapped(model, d, Action::Info, "info"),
                    mapped(model, d, Action::DeviceTail, "tail"),
                    hint("Tab ↑↓", "scroll"),
                    mapped(model, d, Action::DeviceReload, "reload"),
                    back(),
                    mapped(model, d, Action::Help, "help"),
                    mapped(model, d, Action::Push, "update"),
                    mapped(model, d, Action::History, "timeline"),
                ]
            }
        },
        Screen::Notifications => {
            let t = KeyScope::Tail;
            vec![
                mapped(model, t, Action::Follow, "follow"),
                mapped(model, t, Action::TailDevice, "device"),
                mapped(model, t, Action::TailNames, "events"),
                mapped(model, t, Action::TailFilter, "filter"),
                mapped(model, t, Action::ClearFilter, "clear"),
                mapped(model, t, Action::Wrap, "wrap"),
                mapped(model, t, Action::Save, "save"),
                back(),
            ]
        }
        Screen::Analytics => vec![
            hint("1-5", "report"),
            mapped(model, KeyScope::Analytics, Action::Range, "range"),
            mapped(model, KeyScope::Analytics, Action::Bucket, "bucket"),
            mapped(model, KeyScope::Analytics, Action::NextTable, "table"),
            mapped(model, KeyScope::Analytics, Action::SortNext, "sort"),
            hint("↑↓", "scroll"),
            // In order: on a narrow screen its own keys come before the way back.
            hint("Esc", "back"),
            hint("?", "help"),
        ],
        Screen::Results => vec![
            hint("↑↓", "move"),
            hint("Tab", "value"),
            hint(
                format!(
                    "{} {}",
                    model.keys.label(KeyScope::Results, Action::OlderResults),
                    model.keys.label(KeyScope::Results, Action::NewerResults)
                ),
                "sets",
            ),
            mapped(model, KeyScope::Results, Action::SaveResults, "save"),
            mapped(model, KeyScope::Results, Action::DismissResults, "dismiss"),
            back(),
        ],
        Screen::Rollouts => vec![
            hint("⏎", "open"),
            mapped(model, KeyScope::Rollouts, Action::RolloutNew, "new"),
            hint("↑↓", "move"),
            back(),
            essential("?", "help"),
        ],
        Screen::Rollout(_) => {
            let planned = model
                .rollout_page
                .as_ref()
                .and_then(|p| p.object.as_ref())
                .is_some_and(|o| o.state == protocol::firmware::RolloutState::Planned);
            let r = KeyScope::Rollout;
            let mut hints = if planned {
                vec![mapped(model, r, Action::RolloutStart, "start")]
            } else {
                Vec::new()
            };
            hints.extend([
                mapped(model, r, Action::RolloutPause, "pause"),
                mapped(model, r, Action::RolloutResume, "resume"),
                mapped(model, r, Action::RolloutAbort, "abort"),
                mapped(model, r, Action::RolloutRetry, "retry"),
                hint("⏎", "device"),
                hint("Tab", "list"),
                back(),
                essential("?", "help"),
            ]);
            hints
        }
        Screen::Bench => vec![
            hint("↑↓", "port"),
            hint(
                [
                    Action::BenchName,
                    Action::BenchWifi,
                    Action::BenchPass,
                    Action::BenchImage,
                ]
                .map(|a| model.keys.label(KeyScope::Bench, a))
                .join(" "),
                "name, Wi-Fi, pass, image",
            ),
            mapped(model, KeyScope::Bench, Action::Flash, "flash"),
            mapped(model, KeyScope::Bench, Action::Ports, "ports"),
            back(),
        ],
        Screen::NewRollout => match model.new_rollout.as_ref().map(|f| &f.stage) {
            Some(super::rollouts::FormStage::Plan { .. }) => vec![
                hint_needs("⏎", "create and start", Operation::Rollout),
                essential("Esc", "back to the form"),
            ],
            Some(super::rollouts::FormStage::Editing) | None => vec![
                hint("Tab", "next field"),
                hint("↑↓", "firmware"),
                hint("←→", "choose"),
                hint("⏎", "dry run"),
                essential("Esc", "cancel"),
            ],
            Some(_) => vec![essential("Esc", "stop waiting")],
        },
    }
}

/// The sort keys of the fleet at `width`: one digit per column on screen.
fn sort_keys(width: u16) -> &'static str {
    const KEYS: [&str; 11] = [
        "-", "1", "1-2", "1-3", "1-4", "1-5", "1-6", "1-7", "1-8", "1-9", "1-0",
    ];
    KEYS[Column::visible(width).len().min(10)]
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
        } else if input.text().is_empty() {
            spans.push(Span::styled(format!(" {}", kind.hint()), theme.dim));
        }
        frame.render_widget(Paragraph::new(Line::from(spans)), area);
        let x = area.x + (label.chars().count() + input.cursor()) as u16;
        frame.set_cursor_position((x.min(area.right().saturating_sub(1)), area.y));
        return;
    }
    let hints = key_hints(model);
    let width = |hint: &Hint| hint.key.chars().count() + hint.what.chars().count() + 3;
    // The ways back and to the help always show; the others in order while they fit.
    let mut left = (area.width as usize).saturating_sub(1)
        - hints
            .iter()
            .filter(|h| h.essential)
            .map(width)
            .sum::<usize>()
            .min((area.width as usize).saturating_sub(1));
    let mut shown = vec![false; hints.len()];
    let mut room = true;
    for (i, hint) in hints.iter().enumerate() {
        if hint.essential {
            shown[i] = true;
        } else if room && width(hint) <= left {
            left -= width(hint);
            shown[i] = true;
        } else {
            // Hints keep their order: once one does not fit, the later ones give way too.
            room = false;
        }
    }
    let mut spans = vec![Span::raw(" ")];
    for (hint, _) in hints.iter().zip(&shown).filter(|(_, shown)| **shown) {
        let allowed = hint.needs.is_none_or(|operation| model.may(operation));
        let (key_style, what_style) = if allowed {
            (theme.key, theme.dim)
        } else {
            let greyed = theme.dim.add_modifier(Modifier::CROSSED_OUT);
            (greyed, greyed)
        };
        spans.push(Span::styled(hint.key.clone(), key_style));
        spans.push(Span::styled(format!(" {}", hint.what), what_style));
        spans.push(Span::raw("  "));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)).style(theme.dim), area);
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

fn render_palette(
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
fn render_contexts(frame: &mut Frame, model: &Model, theme: &Theme, area: Rect, selected: usize) {
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

fn render_confirm(frame: &mut Frame, theme: &Theme, area: Rect, question: &str) {
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
