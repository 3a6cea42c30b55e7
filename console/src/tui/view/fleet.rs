//! The fleet table: only the rows that fit are built.

use super::*;

/// Columns that fit `width`, in table order (see [`Column::visible`]).
pub fn fleet_columns(width: u16) -> Vec<(Column, u16)> {
    Column::visible(width)
}

fn row_cells<'a>(
    row: &DeviceRow,
    columns: &[(Column, u16)],
    now: f64,
    stale_since: Option<f64>,
    marked: bool,
    theme: &Theme,
) -> Row<'a> {
    let mut cells = Vec::with_capacity(columns.len() + 1);
    cells.push(Cell::from(if marked { "*" } else { " " }).style(theme.marked));
    for (column, _) in columns {
        let text = column.cell_stale(row, now, stale_since);
        let style = match column {
            Column::State | Column::LastSeen | Column::Uptime
                if row.online && stale_since.is_some() =>
            {
                theme.stale
            }
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

pub(super) fn render_fleet(frame: &mut Frame, model: &Model, theme: &Theme, area: Rect) {
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
            let built = row_cells(row, &columns, model.now, model.stale_since, marked, theme);
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
        .map(|row| row_cells(row, &columns, model.now, None, false, theme))
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
