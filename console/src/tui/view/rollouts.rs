//! Drawing the rollouts list, a rollout's page, the new-rollout form and its plan, the
//! device view's firmware picker and its update line. Devices are named as the fleet
//! names them; only the rows that fit are built.

use ratatui::layout::{Constraint, Layout, Margin, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Block, Cell, Clear, Paragraph, Row, Table, Wrap};
use ratatui::Frame;

use herd_client::{FirmwareObject, RolloutObject};
use protocol::firmware::{
    CommitPolicy, Counters, Delivery, DeviceState, OfflineThen, RolloutState, WaveStatus,
};

use crate::text;
use crate::tui::model::Model;
use crate::tui::rollouts::{
    bytes, device_label, rollout_name, version_text, FormField, FormStage, OtaJob, OtaPhase,
    PagePane, PageRow, PushDialog, RolloutPage,
};
use crate::tui::theme::Theme;

pub(super) fn state_style(state: RolloutState, theme: &Theme) -> Style {
    match state {
        RolloutState::Planned => theme.accent,
        RolloutState::Running => theme.title,
        RolloutState::Paused => theme.warn,
        RolloutState::Halted => theme.error,
        RolloutState::Aborted => theme.offline,
        RolloutState::Completed => theme.online,
    }
}

fn device_state_style(state: DeviceState, theme: &Theme) -> Style {
    match state {
        DeviceState::Pending => theme.dim,
        DeviceState::Sending | DeviceState::Rebooting | DeviceState::Verifying => theme.warn,
        DeviceState::Succeeded => theme.online,
        DeviceState::Failed | DeviceState::Reverted | DeviceState::TimedOut => theme.error,
        DeviceState::Skipped => theme.dim,
    }
}

/// `timed_out` reads better as "timed out".
fn state_words(state: DeviceState) -> String {
    state.as_str().replace('_', " ")
}

/// A bar of `width` cells: succeeded, failed, skipped, updating, pending, in that order,
/// each at least one cell when it has devices and there is room, failures above all.
pub(super) fn bar(counters: &Counters, width: usize, theme: &Theme) -> Vec<Span<'static>> {
    let parts = [
        (counters.succeeded, '█', theme.online),
        (counters.failures(), '▓', theme.error),
        (counters.skipped, '▒', theme.dim),
        (counters.active(), '▒', theme.warn),
        (counters.pending, '░', theme.dim),
    ];
    let total: u64 = parts.iter().map(|p| p.0).sum();
    if width == 0 {
        return Vec::new();
    }
    if total == 0 {
        return vec![Span::styled("░".repeat(width), theme.dim)];
    }
    let mut cells: Vec<usize> = parts
        .iter()
        .map(|p| (p.0 as u128 * width as u128 / total as u128) as usize)
        .collect();
    // Largest remainders get the cells left over.
    let mut left = width - cells.iter().sum::<usize>();
    let mut order: Vec<usize> = (0..parts.len()).collect();
    order.sort_by_key(|&i| {
        std::cmp::Reverse((parts[i].0 as u128 * width as u128 % total as u128, i == 1))
    });
    for &i in &order {
        if left == 0 {
            break;
        }
        if parts[i].0 > 0 {
            cells[i] += 1;
            left -= 1;
        }
    }
    // A failure never rounds away.
    if parts[1].0 > 0 && cells[1] == 0 {
        if let Some(biggest) = (0..parts.len()).max_by_key(|&i| cells[i]) {
            if cells[biggest] > 1 {
                cells[biggest] -= 1;
                cells[1] = 1;
            }
        }
    }
    parts
        .iter()
        .zip(cells)
        .filter(|(_, n)| *n > 0)
        .map(|((_, symbol, style), n)| Span::styled(symbol.to_string().repeat(n), *style))
        .collect()
}

fn percent(counters: &Counters) -> u64 {
    counters.finished() * 100 / counters.total.max(1)
}

fn age(rfc3339: &str, now: f64) -> String {
    text::parse_rfc3339(rfc3339)
        .map(|t| text::duration((now - t).max(0.0)))
        .unwrap_or_else(|| "-".into())
}

fn message(frame: &mut Frame, area: Rect, text: String, style: Style) {
    frame.render_widget(
        Paragraph::new(text).style(style).wrap(Wrap { trim: false }),
        area.inner(Margin::new(1, 1)),
    );
}

/// First row drawn so that `cursor` is visible in `height` rows.
fn window_start(cursor: usize, height: usize) -> usize {
    cursor.saturating_sub(height.saturating_sub(1))
}

// ---------------------------------------------------------------------------------------
// The list.

pub(super) fn render_list(frame: &mut Frame, model: &Model, theme: &Theme, area: Rect) {
    let list = &model.rollouts;
    if list.rollouts.is_empty() {
        let (text, style) = match (&list.error, list.loaded) {
            (Some(error), _) => (
                format!("Cannot list rollouts: {error}\n\nTrying again by itself; Esc goes back."),
                theme.error,
            ),
            (None, false) => ("Loading rollouts…".to_string(), theme.dim),
            (None, true) => (
                "No rollouts yet.\n\nMark devices in the fleet (␣) or filter them (/), then press U to plan one; n does the same from here."
                    .to_string(),
                theme.dim,
            ),
        };
        message(frame, area, text, style);
        return;
    }
    let wide = area.width >= 120;
    // State, firmware, wave, ok, failed, age, (by); then name and progress share the rest.
    let mut fixed = vec![9u16, 10, 5, 5, 6, 5];
    if wide {
        fixed.push(16);
    }
    let spacing = fixed.len() as u16 + 1;
    let rest = area
        .width
        .saturating_sub(fixed.iter().sum::<u16>() + spacing);
    let name_width = (rest / 2).clamp(8, 48);
    let progress_width = rest.saturating_sub(name_width).clamp(8, 60);
    let bar_width = progress_width.saturating_sub(5) as usize;
    let mut titles = vec![
        "NAME", "STATE", "FIRMWARE", "WAVE", "PROGRESS", "OK", "FAILED", "AGE",
    ];
    let mut widths = vec![
        Constraint::Length(name_width),
        Constraint::Length(fixed[0]),
        Constraint::Length(fixed[1]),
        Constraint::Length(fixed[2]),
        Constraint::Length(progress_width),
        Constraint::Length(fixed[3]),
        Constraint::Length(fixed[4]),
        Constraint::Length(fixed[5]),
    ];
    if wide {
        titles.push("BY");
        widths.push(Constraint::Length(16));
    }
    let height = area.height.saturating_sub(1) as usize;
    let start = window_start(list.selected, height);
    let rows: Vec<Row> = list
        .rollouts
        .iter()
        .enumerate()
        .skip(start)
        .take(height)
        .map(|(i, rollout)| {
            let c = &rollout.counters;
            let mut progress = bar(c, bar_width, theme);
            progress.push(Span::raw(format!(" {:>3}%", percent(c))));
            let wave = if rollout.state == RolloutState::Planned {
                format!("-/{}", rollout.waves.len())
            } else {
                format!("{}/{}", rollout.current_wave + 1, rollout.waves.len())
            };
            let mut cells = vec![
                Cell::from(text::truncate(rollout_name(rollout), name_width as usize)),
                Cell::from(rollout.state.as_str()).style(state_style(rollout.state, theme)),
                Cell::from(text::truncate(&rollout.version, 10)),
                Cell::from(wave),
                Cell::from(Line::from(progress)),
                Cell::from(format!("{:>5}", c.succeeded)).style(theme.online),
                Cell::from(format!("{:>6}", c.failures())).style(if c.failures() > 0 {
                    theme.error
                } else {
                    theme.dim
                }),
                Cell::from(age(&rollout.created_at, model.now)),
            ];
            if wide {
                cells.push(
                    Cell::from(
                        rollout
                            .created_by
                            .strip_prefix("email_")
                            .unwrap_or(&rollout.created_by)
                            .to_string(),
                    )
                    .style(theme.dim),
                );
            }
            let row = Row::new(cells);
            if i == list.selected {
                row.style(theme.selected)
            } else {
                row
            }
        })
        .collect();
    let table = Table::new(rows, widths)
        .header(Row::new(titles).style(theme.header.add_modifier(Modifier::UNDERLINED)))
        .column_spacing(1);
    frame.render_widget(table, area);
}

// ---------------------------------------------------------------------------------------
// The page.

fn counter_spans(c: &Counters, theme: &Theme) -> Vec<Span<'static>> {
    let mut spans = vec![Span::styled(
        format!(" {} devices: ", c.total),
        theme.header,
    )];
    let parts = [
        (c.succeeded, "succeeded", theme.online),
        (c.failed, "failed", theme.error),
        (c.reverted, "reverted", theme.error),
        (c.timed_out, "timed out", theme.error),
        (c.skipped, "skipped", theme.dim),
        (c.active(), "updating", theme.warn),
        (c.pending, "pending", theme.dim),
    ];
    // Only what is there: the line reads at a glance and fits 80 columns.
    let mut first = true;
    for (n, what, style) in parts {
        if n == 0 && !(first && what == "succeeded") {
            continue;
        }
        if !first {
            spans.push(Span::styled(" · ", theme.dim));
        }
        first = false;
        let style = if n == 0 { theme.dim } else { style };
        spans.push(Span::styled(format!("{n} {what}"), style));
    }
    spans
}

fn policy_text(rollout: &RolloutObject) -> String {
    let spec = &rollout.spec;
    let mut parts = vec![format!("{} at once", spec.max_parallel)];
    match (spec.halt_when.failed_percent, spec.halt_when.failed_count) {
        (Some(p), _) => parts.push(format!("halt at {p}% failed")),
        (None, Some(n)) => parts.push(format!("halt at {n} failed")),
        (None, None) => parts.push("never halts".into()),
    }
    parts.push(
        match spec.commit {
            CommitPolicy::Device => "commit when back",
            CommitPolicy::AfterSoak => "commit after soak",
        }
        .into(),
    );
    parts.push(
        match spec.delivery {
            Delivery::Push => "push",
            Delivery::Pull => "pull",
        }
        .into(),
    );
    parts.push(match spec.offline.then {
        OfflineThen::Skip => format!(
            "offline: skipped after {}",
            text::duration(spec.offline.wait_s as f64)
        ),
        OfflineThen::KeepWaiting => "offline: waited for".into(),
    });
    parts.join(" · ")
}

/// What a wave is doing, for its line.
fn wave_status(
    rollout: &RolloutObject,
    page: &RolloutPage,
    wave: &WaveStatus,
    now: f64,
) -> (String, bool) {
    let c = &wave.counters;
    let current = wave.index == rollout.current_wave;
    if wave.size == 0 {
        return ("empty".into(), false);
    }
    if rollout.state == RolloutState::Planned {
        return (soak_note(wave), false);
    }
    if c.finished() >= wave.size && (!current || rollout.state.is_finished()) {
        return ("done".into(), false);
    }
    if wave.index > rollout.current_wave {
        let waiting = if rollout.state.is_finished() {
            "not started"
        } else {
            "waiting"
        };
        return (format!("{waiting} · {}", soak_note(wave)), false);
    }
    if current {
        // Each device soaks on its own from when it came back; the wave waits for the
        // last of them.
        let soaking = page
            .devices()
            .iter()
            .filter(|d| d.wave == wave.index)
            .filter_map(|d| page.soak_left(d, now));
        let (count, left) = soaking.fold((0, 0.0f64), |(n, most), left| (n + 1, most.max(left)));
        if count > 0 && c.active() == count && !rollout.state.is_finished() {
            return (
                format!("{count} soaking, ~{} left", text::duration(left)),
                true,
            );
        }
        let status = match rollout.state {
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Halted => "halted",
            RolloutState::Aborted => "aborted",
            _ => "done",
        };
        return (status.into(), rollout.state == RolloutState::Running);
    }
    ("done".into(), false)
}

fn soak_note(wave: &WaveStatus) -> String {
    if wave.soak_s == 0 {
        "no soak".into()
    } else {
        format!("soak {}", text::duration(wave.soak_s as f64))
    }
}

pub(super) fn render_page(
    frame: &mut Frame,
    model: &Model,
    page: &RolloutPage,
    theme: &Theme,
    area: Rect,
) {
    let Some(rollout) = &page.object else {
        let (text, style) = match &page.error {
            Some(error) => (
                format!("Cannot load rollout {}: {error}", page.id),
                theme.error,
            ),
            None => (format!("Loading rollout {}…", page.id), theme.dim),
        };
        message(frame, area, text, style);
        return;
    };
    let note = match (&page.error, rollout.reason.is_empty()) {
        (Some(error), _) => Some(Line::styled(format!(" {error}"), theme.error)),
        (None, false) => Some(Line::styled(
            format!(" {}: {}", rollout.state.as_str(), rollout.reason),
            if rollout.state == RolloutState::Halted {
                theme.error
            } else {
                theme.warn
            },
        )),
        (None, true) => None,
    };
    let summary_rows = 3 + u16::from(note.is_some());
    let wave_rows = (rollout.waves.len() as u16 + 2)
        .min(area.height.saturating_sub(summary_rows + 4) / 2)
        .max(3);
    let [summary, waves, lists] = Layout::vertical([
        Constraint::Length(summary_rows),
        Constraint::Length(wave_rows),
        Constraint::Min(3),
    ])
    .areas(area);

    // Summary: state, firmware, wave, times; counters; policy; reason.
    let wave_text = if rollout.state == RolloutState::Planned {
        format!("{} waves, not started", rollout.waves.len())
    } else {
        format!("wave {}/{}", rollout.current_wave + 1, rollout.waves.len())
    };
    let mut first = vec![
        Span::raw(" "),
        Span::styled(
            format!("● {}", rollout.state.as_str()),
            state_style(rollout.state, theme),
        ),
        Span::raw("  "),
        Span::styled("firmware ", theme.dim),
        Span::raw(format!(
            "{} ({}…)  ",
            if rollout.version.is_empty() {
                "-"
            } else {
                &rollout.version
            },
            rollout.firmware.chars().take(12).collect::<String>()
        )),
        Span::raw(format!("{wave_text}  ")),
        Span::styled(
            format!("{}% done", percent(&rollout.counters)),
            theme.header,
        ),
    ];
    let started = rollout
        .started_at
        .as_deref()
        .map(|t| format!("  started {} ago", age(t, model.now)))
        .unwrap_or_else(|| format!("  created {} ago", age(&rollout.created_at, model.now)));
    first.push(Span::styled(started, theme.dim));
    if !rollout.created_by.is_empty() {
        first.push(Span::styled(
            format!(
                " by {}",
                rollout
                    .created_by
                    .strip_prefix("email_")
                    .unwrap_or(&rollout.created_by)
            ),
            theme.dim,
        ));
    }
    let mut lines = vec![
        Line::from(first),
        Line::from(counter_spans(&rollout.counters, theme)),
        Line::styled(format!(" {}", policy_text(rollout)), theme.dim),
    ];
    lines.extend(note);
    frame.render_widget(Paragraph::new(lines), summary);

    render_waves(frame, model, page, rollout, theme, waves);

    let [devices, failures] =
        Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(lists);
    render_devices(frame, model, page, rollout, theme, devices);
    render_failures(frame, model, page, theme, failures);
}

fn render_waves(
    frame: &mut Frame,
    model: &Model,
    page: &RolloutPage,
    rollout: &RolloutObject,
    theme: &Theme,
    area: Rect,
) {
    let block = Block::bordered().title(Span::styled(" waves ", theme.title));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let height = inner.height as usize;
    let start = window_start(rollout.current_wave as usize, height);
    let width = inner.width as usize;
    let lines: Vec<Line> = rollout
        .waves
        .iter()
        .skip(start)
        .take(height)
        .map(|wave| {
            let c = &wave.counters;
            let current =
                wave.index == rollout.current_wave && rollout.state != RolloutState::Planned;
            let (status, live) = wave_status(rollout, page, wave, model.now);
            // "▶ 2      6 devices " bar " 66%  2 ok  2 failed  2 updating · soaking"
            let head = vec![
                Span::styled(
                    format!("{} {:<2}", if current { "▶" } else { " " }, wave.index + 1),
                    if current { theme.title } else { theme.dim },
                ),
                Span::raw(format!(
                    "{:>5} {:<8}",
                    wave.size,
                    if wave.size == 1 { "device" } else { "devices" }
                )),
            ];
            let quiet = |n: u64, style: Style| if n > 0 { style } else { theme.dim };
            let mut tail = vec![
                Span::raw(format!(" {:>3}%", percent(c))),
                Span::styled(
                    format!("  {} ok", c.succeeded),
                    quiet(c.succeeded, theme.online),
                ),
                Span::styled(
                    format!("  {} failed", c.failures()),
                    quiet(c.failures(), theme.error),
                ),
            ];
            if c.active() > 0 {
                tail.push(Span::styled(
                    format!("  {} updating", c.active()),
                    theme.warn,
                ));
            }
            tail.push(Span::styled(
                format!(" · {status}"),
                if live { theme.warn } else { theme.dim },
            ));
            let used: usize = head.iter().chain(&tail).map(|s| s.width()).sum();
            let bar_width = width.saturating_sub(used).clamp(8, 60);
            let mut spans = head;
            spans.extend(bar(c, bar_width, theme));
            spans.extend(tail);
            Line::from(spans)
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), inner);
}

fn pane_block(title: String, focused: bool, theme: &Theme) -> Block<'static> {
    Block::bordered().title(Span::styled(
        title,
        if focused { theme.title } else { theme.dim },
    ))
}

fn render_devices(
    frame: &mut Frame,
    model: &Model,
    page: &RolloutPage,
    rollout: &RolloutObject,
    theme: &Theme,
    area: Rect,
) {
    let focused = page.pane == PagePane::Devices;
    let block = pane_block(" devices by state ".into(), focused, theme);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let devices = page.devices();
    if rollout.devices.is_none() {
        frame.render_widget(Paragraph::new("loading devices…").style(theme.dim), inner);
        return;
    }
    let height = inner.height as usize;
    let width = inner.width as usize;
    let start = window_start(page.devices_cursor, height);
    let name_width = (width / 2).clamp(8, 32);
    let lines: Vec<Line> = page
        .rows
        .iter()
        .enumerate()
        .skip(start)
        .take(height)
        .map(|(i, row)| match *row {
            PageRow::Group(state, n) => Line::styled(
                format!("{} {n}", state_words(state)),
                device_state_style(state, theme).add_modifier(Modifier::BOLD),
            ),
            PageRow::Device(d) => {
                let device = &devices[d];
                let name = text::truncate(device_label(&model.fleet, device), name_width);
                let detail = match device.state {
                    DeviceState::Sending => match model.ota.get(&device.id) {
                        Some(job) if job.firmware == rollout.firmware => {
                            format!("{}%", job.percent)
                        }
                        _ => "starting".into(),
                    },
                    DeviceState::Verifying => match page.soak_left(device, model.now) {
                        Some(left) if left > 0.0 => {
                            format!("soaking, ~{} left", text::duration(left))
                        }
                        _ => "soaked; finishing".into(),
                    },
                    DeviceState::Pending if !device.online => "offline".into(),
                    DeviceState::Pending => String::new(),
                    DeviceState::Succeeded if !device.from_version.is_empty() => {
                        format!("from {}", device.from_version)
                    }
                    _ => device.message.clone(),
                };
                let line = Line::from(vec![
                    Span::raw(format!("  {name:<name_width$} ")),
                    Span::styled(detail, theme.dim),
                ]);
                if focused && i == page.devices_cursor {
                    line.style(theme.selected)
                } else {
                    line
                }
            }
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), inner);
}

fn render_failures(
    frame: &mut Frame,
    model: &Model,
    page: &RolloutPage,
    theme: &Theme,
    area: Rect,
) {
    let focused = page.pane == PagePane::Failures;
    let block = pane_block(
        format!(" failures ({}) · ⏎ opens ", page.failures.len()),
        focused,
        theme,
    );
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if page.failures.is_empty() {
        let text = if page.object.as_ref().is_some_and(|o| o.devices.is_some()) {
            "no failures"
        } else {
            "loading devices…"
        };
        frame.render_widget(Paragraph::new(text).style(theme.dim), inner);
        return;
    }
    let devices = page.devices();
    let height = inner.height as usize;
    let width = inner.width as usize;
    let name_width = (width / 3).clamp(8, 24);
    // Narrow: the message goes under the name, or it would be cut to a few words.
    let narrow = width < 60;
    let per_item = if narrow { 2 } else { 1 };
    let start = window_start(page.failures_cursor, (height / per_item).max(1));
    let mut lines: Vec<Line> = Vec::with_capacity(height);
    for (i, &d) in page
        .failures
        .iter()
        .enumerate()
        .skip(start)
        .take(height.div_ceil(per_item))
    {
        let device = &devices[d];
        let name = text::truncate(device_label(&model.fleet, device), name_width);
        let mut first = vec![
            Span::raw(format!("{name:<name_width$} ")),
            Span::styled(
                format!("{:<9} ", state_words(device.state)),
                device_state_style(device.state, theme),
            ),
        ];
        let mut item = Vec::with_capacity(per_item);
        if narrow {
            item.push(Line::from(first));
            item.push(Line::styled(format!("  {}", device.message), theme.dim));
        } else {
            first.push(Span::raw(device.message.clone()));
            item.push(Line::from(first));
        }
        for line in item {
            lines.push(if focused && i == page.failures_cursor {
                line.style(theme.selected)
            } else {
                line
            });
        }
    }
    frame.render_widget(Paragraph::new(lines), inner);
}

// ---------------------------------------------------------------------------------------
// The form and its plan.

fn firmware_line(firmware: &FirmwareObject, width: usize) -> String {
    let line = format!(
        "{:<10} {:<12} {:<8} {:>9}  {:<8} {}",
        text::truncate(&version_text(firmware), 10),
        text::truncate(&firmware.app, 12),
        text::truncate(&firmware.platform, 8),
        bytes(firmware.size),
        if firmware.signed {
            "signed"
        } else {
            "unsigned"
        },
        firmware.id.chars().take(12).collect::<String>(),
    );
    text::truncate(&line, width)
}

pub(super) fn render_form(frame: &mut Frame, model: &Model, theme: &Theme, area: Rect) {
    let Some(form) = &model.new_rollout else {
        return;
    };
    match &form.stage {
        FormStage::Plan { plan, .. } => return render_plan(frame, model, plan, false, theme, area),
        FormStage::Creating { plan } => return render_plan(frame, model, plan, true, theme, area),
        FormStage::Editing | FormStage::Planning(_) => {}
    }
    let block = Block::bordered().title(Span::styled(" new rollout ", theme.title));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let label = |field: FormField| {
        Span::styled(
            format!(" {:<9} ", field.label()),
            if form.focus == field {
                theme.key
            } else {
                theme.dim
            },
        )
    };
    let firmware_rows = match &form.firmware {
        Some(Ok(list)) if !list.is_empty() => list.len(),
        _ => 1,
    };
    // Devices line, fields, a gap and two lines of messages.
    let room = (inner.height as usize).saturating_sub(1 + 7 + 1 + 2);
    let firmware_rows = firmware_rows.min(room.clamp(1, 6));
    let mut lines = vec![Line::from(vec![
        Span::styled(format!(" {:<9} ", "devices"), theme.dim),
        Span::raw(form.describe.clone()),
    ])];
    let width = inner.width.saturating_sub(12) as usize;
    let firmware_lines: Vec<Line> = match &form.firmware {
        None => vec![Line::styled("loading the firmware list…", theme.dim)],
        Some(Err(error)) => vec![Line::styled(
            format!("cannot list firmware: {error}"),
            theme.error,
        )],
        Some(Ok(list)) if list.is_empty() => vec![Line::styled(
            "no firmware in the store: upload an image first (herd firmware upload)",
            theme.warn,
        )],
        Some(Ok(list)) => {
            let start = window_start(form.firmware_cursor, firmware_rows);
            list.iter()
                .enumerate()
                .skip(start)
                .take(firmware_rows)
                .map(|(i, firmware)| {
                    let chosen = i == form.firmware_cursor;
                    let text = format!(
                        "{} {}",
                        if chosen { "▸" } else { " " },
                        firmware_line(firmware, width.saturating_sub(2))
                    );
                    if chosen && form.focus == FormField::Firmware {
                        Line::styled(text, theme.selected)
                    } else if chosen {
                        Line::styled(text, theme.header)
                    } else {
                        Line::raw(text)
                    }
                })
                .collect()
        }
    };
    for (i, line) in firmware_lines.into_iter().enumerate() {
        let mut spans = vec![if i == 0 {
            label(FormField::Firmware)
        } else {
            Span::raw(" ".repeat(11))
        }];
        spans.extend(
            line.spans
                .iter()
                .cloned()
                .map(|s| s.patch_style(line.style)),
        );
        lines.push(Line::from(spans));
    }
    let mut cursor = None;
    for field in FormField::ALL.into_iter().skip(1) {
        let mut spans = vec![label(field)];
        if let Some(input) = form.input(field) {
            let text = format!("{:<22}", input.text());
            if form.focus == field {
                cursor = Some((lines.len(), 11 + input.cursor()));
                spans.push(Span::styled(format!("[{text}]"), theme.header));
            } else {
                spans.push(Span::raw(format!("[{text}]")));
            }
        } else {
            let (options, chosen): (&[&str], usize) = match field {
                FormField::Commit => (
                    &["device", "after soak"],
                    usize::from(form.commit == CommitPolicy::AfterSoak),
                ),
                _ => (
                    &["push", "pull"],
                    usize::from(form.delivery == Delivery::Pull),
                ),
            };
            for (i, option) in options.iter().enumerate() {
                if i == chosen {
                    let style = if form.focus == field {
                        theme.selected
                    } else {
                        theme.header
                    };
                    spans.push(Span::styled(format!("‹{option}›"), style));
                } else {
                    spans.push(Span::styled(format!(" {option} "), theme.dim));
                }
                spans.push(Span::raw(" "));
            }
        }
        spans.push(Span::styled(format!("  {}", field.hint()), theme.dim));
        lines.push(Line::from(spans));
    }
    let note = match (&form.error, &form.stage) {
        (_, FormStage::Planning(_)) => {
            Line::styled(" asking the server for the plan (a dry run)…", theme.dim)
        }
        (Some(error), _) => Line::styled(format!(" {error}"), theme.error),
        (None, _) => Line::styled(
            " ⏎ shows the plan (a dry run: nothing is sent); Esc cancels",
            theme.dim,
        ),
    };
    // The fields never wrap, so the cursor lands where it should; the message may.
    let fields = (lines.len() as u16).min(inner.height);
    let [top, _, bottom] = Layout::vertical([
        Constraint::Length(fields),
        Constraint::Length(1),
        Constraint::Min(0),
    ])
    .areas(inner);
    frame.render_widget(Paragraph::new(lines), top);
    frame.render_widget(Paragraph::new(note).wrap(Wrap { trim: false }), bottom);
    if let Some((row, column)) = cursor {
        let x = inner.x + column as u16 + 1;
        let y = inner.y + row as u16;
        if y < inner.bottom() {
            frame.set_cursor_position((x.min(inner.right().saturating_sub(1)), y));
        }
    }
}

fn render_plan(
    frame: &mut Frame,
    model: &Model,
    plan: &RolloutObject,
    creating: bool,
    theme: &Theme,
    area: Rect,
) {
    let block = Block::bordered().title(Span::styled(
        " plan · dry run, nothing sent yet ",
        theme.title,
    ));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let width = inner.width as usize;
    let devices = plan.devices.as_deref().unwrap_or_default();
    let offline = devices.iter().filter(|d| !d.online).count();
    let mut lines = vec![
        Line::from(vec![
            Span::styled(format!(" {}", rollout_name(plan)), theme.header),
            Span::raw(format!(
                ": firmware {} to {} in {}",
                if plan.version.is_empty() {
                    "-"
                } else {
                    &plan.version
                },
                crate::tui::rollouts::count(plan.counters.total, "device"),
                crate::tui::rollouts::count(plan.waves.len() as u64, "wave"),
            )),
            Span::styled(
                if offline > 0 {
                    format!(", {offline} offline now")
                } else {
                    String::new()
                },
                theme.warn,
            ),
        ]),
        Line::styled(format!(" {}", policy_text(plan)), theme.dim),
        Line::raw(""),
    ];
    for wave in &plan.waves {
        let in_wave: Vec<_> = devices.iter().filter(|d| d.wave == wave.index).collect();
        let wave_offline = in_wave.iter().filter(|d| !d.online).count();
        let head = format!(
            "  wave {:<2} {:>5} {:<8} {:<9} {:<10} ",
            wave.index + 1,
            wave.size,
            if wave.size == 1 { "device" } else { "devices" },
            soak_note(wave),
            if wave_offline > 0 {
                format!("{wave_offline} offline")
            } else {
                String::new()
            },
        );
        let room = width.saturating_sub(head.chars().count() + 1);
        let mut names = String::new();
        for device in &in_wave {
            let name = device_label(&model.fleet, device);
            let next = if names.is_empty() {
                name.to_string()
            } else {
                format!(", {name}")
            };
            if names.chars().count() + next.chars().count() > room {
                names.push_str(", …");
                break;
            }
            names.push_str(&next);
        }
        lines.push(Line::from(vec![
            Span::raw(head),
            Span::styled(text::truncate(&names, room), theme.dim),
        ]));
    }
    if !plan.notes.is_empty() {
        lines.push(Line::raw(""));
        lines.push(Line::styled(" the server notes:", theme.header));
        for note in &plan.notes {
            lines.push(Line::styled(format!("  • {note}"), theme.warn));
        }
    }
    lines.push(Line::raw(""));
    lines.push(if creating {
        Line::styled(" creating the rollout…", theme.dim)
    } else {
        Line::from(vec![
            Span::raw(" "),
            Span::styled("⏎", theme.key),
            Span::raw(" create and start it   "),
            Span::styled("Esc", theme.key),
            Span::raw(" back to the form"),
        ])
    });
    frame.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }), inner);
}

// ---------------------------------------------------------------------------------------
// The device view: the firmware picker and the update line.

pub(super) fn render_push(
    frame: &mut Frame,
    dialog: &PushDialog,
    title: &str,
    running: &str,
    theme: &Theme,
    area: Rect,
) {
    let popup = super::centered(area, 90, 70);
    frame.render_widget(Clear, popup);
    let block = Block::bordered().title(Span::styled(
        format!(" push firmware to {title} "),
        theme.title,
    ));
    let inner = block.inner(popup);
    frame.render_widget(block, popup);
    let [list, hint] = Layout::vertical([Constraint::Min(1), Constraint::Length(1)]).areas(inner);
    let width = list.width as usize;
    let text: Text = match &dialog.firmware {
        None => Text::styled("loading the firmware list…", theme.dim),
        Some(Err(error)) => Text::styled(format!("cannot list firmware: {error}"), theme.error),
        Some(Ok(all)) if all.is_empty() => Text::styled(
            "no firmware in the store: upload an image first (herd firmware upload)",
            theme.warn,
        ),
        Some(Ok(all)) => {
            let height = list.height as usize;
            let start = window_start(dialog.cursor, height);
            Text::from(
                all.iter()
                    .enumerate()
                    .skip(start)
                    .take(height)
                    .map(|(i, firmware)| {
                        let mut text = firmware_line(firmware, width.saturating_sub(14));
                        if !running.is_empty() && firmware.version == running {
                            text.push_str("  (running)");
                        }
                        if i == dialog.cursor {
                            Line::styled(format!("▸ {text}"), theme.selected)
                        } else {
                            Line::raw(format!("  {text}"))
                        }
                    })
                    .collect::<Vec<_>>(),
            )
        }
    };
    frame.render_widget(Paragraph::new(text), list);
    frame.render_widget(
        Paragraph::new("⏎ pushes the chosen image (asks first) · Esc closes").style(theme.dim),
        hint,
    );
}

/// The device view's line about its latest update.
pub(super) fn ota_line(
    job: &OtaJob,
    rollout: Option<&str>,
    now: f64,
    theme: &Theme,
    width: usize,
) -> Line<'static> {
    let version = if job.version.is_empty() {
        job.firmware.chars().take(12).collect()
    } else {
        job.version.clone()
    };
    let mut spans = vec![Span::raw(" ")];
    match &job.phase {
        OtaPhase::Requested | OtaPhase::Sending | OtaPhase::Rebooting => {
            spans.push(Span::styled(format!("update to {version} "), theme.warn));
            let bar_width = width.saturating_sub(48).clamp(10, 40);
            let filled = bar_width * job.percent as usize / 100;
            spans.push(Span::styled("█".repeat(filled), theme.online));
            spans.push(Span::styled("░".repeat(bar_width - filled), theme.dim));
            let what = match job.phase {
                OtaPhase::Requested => "requested".to_string(),
                OtaPhase::Sending => "sending".to_string(),
                _ => "written; the device restarts into it".to_string(),
            };
            spans.push(Span::raw(format!(" {:>3}% {what}", job.percent)));
        }
        OtaPhase::Succeeded { seconds } => {
            let took = seconds.map(|s| format!(" in {s:.1} s")).unwrap_or_default();
            spans.push(Span::styled(
                format!("✓ updated to {version}{took}"),
                theme.online,
            ));
            spans.push(Span::styled(
                format!("  {} ago", text::duration((now - job.since).max(0.0))),
                theme.dim,
            ));
        }
        OtaPhase::Failed { stage, message } => {
            let at = if stage.is_empty() {
                String::new()
            } else {
                format!(" at {stage}")
            };
            spans.push(Span::styled(
                format!("✗ update to {version} failed{at}: {message}"),
                theme.error,
            ));
        }
        OtaPhase::Reverted {
            running_version,
            message,
        } => {
            let why = if message.is_empty() {
                String::new()
            } else {
                format!(": {message}")
            };
            spans.push(Span::styled(
                format!("↺ update to {version} reverted; running {running_version}{why}"),
                theme.error,
            ));
        }
    }
    if let Some(rollout) = rollout {
        spans.push(Span::styled(format!("  · rollout {rollout}"), theme.dim));
    }
    Line::from(spans)
}
