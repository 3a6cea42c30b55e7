//! The analytics view: report tabs, the log's accounting, charts and one table of the
//! report. Everything drawn was prepared by the worker; only visible rows are built.

use ratatui::layout::{Alignment, Constraint, Direction, Layout, Rect};
use ratatui::style::Modifier;
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Bar, BarChart, BarGroup, Block, Cell, LineGauge, Paragraph, Row, Sparkline, Table, Wrap,
};
use ratatui::Frame;

use herd_analytics::Report;

use crate::text;
use crate::tui::analytics::{
    areas, thousands, time_text, AnalyticsView, Bars, QueryPrompt, ReportData, Spark, Stage,
    TableData,
};
use crate::tui::model::Model;
use crate::tui::theme::Theme;

/// Widest a table column is drawn; longer cells are cut.
const MAX_COLUMN: u16 = 28;

pub(super) fn render(frame: &mut Frame, model: &Model, theme: &Theme, area: Rect) {
    let view = &model.analytics;
    let areas = areas(area);
    render_tabs(frame, view, theme, areas.tabs);
    render_info(frame, view, theme, areas.info);
    let rest = match areas.charts {
        Some(charts) => charts.union(areas.table),
        None => areas.table,
    };
    let device = |id: &str| model.fleet.label(id).to_string();
    if let Some(prompt) = &view.query {
        // The answer takes the table's place; the report's charts stay.
        if let (Some(charts), Some(data)) = (areas.charts, view.shown()) {
            render_charts(frame, data, theme, charts, &device);
        }
        render_query(frame, prompt, theme, areas.table);
        return;
    }
    let Some(data) = view.shown() else {
        let (message, style) = match (&view.error, &view.progress) {
            (Some(error), _) => (
                format!("{error}\n\nTrying again by itself; Esc goes back."),
                theme.error,
            ),
            (None, Some(progress)) if progress.stage != Stage::Computing => {
                ("Reading the notification log…".to_string(), theme.dim)
            }
            (None, _) => (
                format!("Computing the {} report…", view.selection.report),
                theme.dim,
            ),
        };
        frame.render_widget(
            Paragraph::new(message)
                .style(style)
                .wrap(Wrap { trim: false }),
            rest.inner(ratatui::layout::Margin::new(1, 1)),
        );
        return;
    };
    // Reports name devices by id; operators know them by name.
    if let Some(charts) = areas.charts {
        render_charts(frame, data, theme, charts, &device);
    }
    render_table(frame, view, data, theme, areas.table, &device);
}

fn render_tabs(frame: &mut Frame, view: &AnalyticsView, theme: &Theme, area: Rect) {
    // Narrow terminals name only the selected report; the others keep their numbers.
    let full: usize = Report::ALL
        .iter()
        .map(|r| r.name().len() + 4)
        .sum::<usize>()
        + 23;
    let compact = full > area.width as usize;
    let mut spans = vec![Span::raw(" ")];
    for (i, report) in Report::ALL.iter().enumerate() {
        let label = if compact && *report != view.selection.report {
            format!(" {} ", i + 1)
        } else {
            format!(" {} {} ", i + 1, report.name())
        };
        if *report == view.selection.report {
            spans.push(Span::styled(
                label,
                theme.selected.add_modifier(Modifier::BOLD),
            ));
        } else {
            spans.push(Span::raw(label));
        }
    }
    spans.push(Span::styled(" │ ", theme.dim));
    spans.push(Span::styled(view.selection.range.label(), theme.accent));
    spans.push(Span::styled(" · by ", theme.dim));
    spans.push(Span::styled(view.selection.bucket_label(), theme.accent));
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn render_info(frame: &mut Frame, view: &AnalyticsView, theme: &Theme, area: Rect) {
    let (text_area, gauge_area) = match &view.progress {
        Some(_) if area.width >= 40 => {
            let [text, gauge] =
                Layout::horizontal([Constraint::Min(1), Constraint::Length(26)]).areas(area);
            (text, Some(gauge))
        }
        _ => (area, None),
    };
    let width = text_area.width as usize;
    let mut spans = vec![Span::raw(" ")];
    if let Some(error) = &view.error {
        spans.push(Span::styled(
            text::truncate(&format!("✗ {error}"), width.saturating_sub(2)),
            theme.error,
        ));
    } else {
        let mut facts = Vec::new();
        if let Some(data) = &view.data {
            let stats = data.stats;
            facts.push(format!("{} lines", thousands(stats.lines)));
            facts.push(format!("{} torn", thousands(stats.torn_lines)));
            facts.push(format!("{} invalid", thousands(stats.invalid_lines)));
            facts.push(format!("{} unknown", thousands(stats.unknown_events)));
            facts.push(format!(
                "at {}",
                text::clock_time(data.computed_at)
                    .get(..8)
                    .unwrap_or_default()
            ));
        }
        let facts = facts.join(" · ");
        let source = view.source.as_deref().unwrap_or("starting");
        // The end of a path says more than its start.
        let room = width.saturating_sub(facts.chars().count() + 4).max(8);
        let count = source.chars().count();
        let source = if count > room {
            let tail: String = source.chars().skip(count - (room - 1)).collect();
            format!("…{tail}")
        } else {
            source.to_string()
        };
        spans.push(Span::styled(source, theme.accent));
        if !facts.is_empty() {
            spans.push(Span::styled(" · ", theme.dim));
            spans.push(Span::styled(facts, theme.dim));
        }
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), text_area);
    if let (Some(progress), Some(gauge_area)) = (&view.progress, gauge_area) {
        let label = format!("⟳ {}", progress.label());
        match progress.ratio() {
            Some(ratio) if progress.stage == Stage::Reading => frame.render_widget(
                LineGauge::default()
                    .ratio(ratio)
                    .label(Span::styled(label, theme.warn))
                    .filled_style(theme.online)
                    .unfilled_style(theme.dim),
                gauge_area,
            ),
            _ => frame.render_widget(
                Paragraph::new(Span::styled(label, theme.warn)).alignment(Alignment::Right),
                gauge_area,
            ),
        }
    }
}

fn render_charts(
    frame: &mut Frame,
    data: &ReportData,
    theme: &Theme,
    area: Rect,
    device: &dyn Fn(&str) -> String,
) {
    match (&data.bars, &data.spark) {
        (Some(bars), Some(spark)) => {
            let [left, right] =
                Layout::horizontal([Constraint::Ratio(1, 2), Constraint::Ratio(1, 2)]).areas(area);
            render_bars(frame, bars, theme, left, device);
            render_spark(frame, spark, theme, right);
        }
        (Some(bars), None) => render_bars(frame, bars, theme, area, device),
        (None, Some(spark)) => render_spark(frame, spark, theme, area),
        (None, None) => {}
    }
}

fn chart_block<'a>(title: &str, theme: &Theme) -> Block<'a> {
    Block::bordered().title(Span::styled(format!(" {title} "), theme.title))
}

fn render_bars(
    frame: &mut Frame,
    bars: &Bars,
    theme: &Theme,
    area: Rect,
    device: &dyn Fn(&str) -> String,
) {
    let block = chart_block(&bars.title, theme);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if inner.width < 4 || inner.height < 1 {
        return;
    }
    if bars.bars.iter().all(|(_, value)| *value == 0) {
        frame.render_widget(
            Paragraph::new("nothing in this range").style(theme.dim),
            inner,
        );
        return;
    }
    let (chart, chart_area) = if bars.vertical {
        let count = bars.bars.len().max(1) as u16;
        // The widest bars that fit, a column apart when there is room for it.
        let (width, gap) = if inner.width >= count * 3 {
            ((inner.width + 1) / count - 1, 1)
        } else {
            ((inner.width / count).max(1), 0)
        };
        let fitting = (inner.width / (width + gap).max(1)).max(1) as usize;
        // Two-digit labels need a column between bars to be read.
        let labelled = width + gap >= 3 && inner.height >= 3;
        let mut inner = inner;
        if !labelled && inner.height >= 3 {
            // Too narrow for a label under each bar: an axis line with every sixth.
            let axis = Rect {
                y: inner.bottom() - 1,
                height: 1,
                ..inner
            };
            inner.height -= 1;
            let mut line = String::new();
            for (i, (label, _)) in bars.bars.iter().enumerate().take(fitting) {
                let x = i * (width + gap) as usize;
                if i % 6 == 0 && line.chars().count() <= x {
                    line.push_str(&" ".repeat(x - line.chars().count()));
                    line.push_str(label);
                }
            }
            frame.render_widget(Paragraph::new(line).style(theme.dim), axis);
        }
        let shown: Vec<Bar> = bars
            .bars
            .iter()
            .take(fitting)
            .map(|(label, value)| {
                let bar = Bar::default().value(*value).text_value(String::new());
                if labelled {
                    bar.label(Line::from(label.clone()))
                } else {
                    bar
                }
            })
            .collect();
        let chart = BarChart::default()
            .bar_width(width)
            .bar_gap(gap)
            .data(BarGroup::default().bars(&shown));
        (chart, inner)
    } else {
        let rows = inner.height as usize;
        let labels: Vec<String> = bars
            .bars
            .iter()
            .take(rows)
            .map(|(label, _)| {
                if bars.devices {
                    device(label)
                } else {
                    label.clone()
                }
            })
            .collect();
        let label_width = labels
            .iter()
            .map(|label| label.chars().count())
            .max()
            .unwrap_or(0)
            .min(inner.width as usize / 2);
        let shown: Vec<Bar> = bars
            .bars
            .iter()
            .zip(&labels)
            .map(|((_, value), label)| {
                Bar::default()
                    .value(*value)
                    .text_value(thousands(*value))
                    .label(Line::from(text::truncate(label, label_width)))
            })
            .collect();
        let chart = BarChart::default()
            .direction(Direction::Horizontal)
            .bar_width(1)
            .bar_gap(0)
            .data(BarGroup::default().bars(&shown));
        (chart, inner)
    };
    frame.render_widget(
        chart
            .bar_style(theme.accent)
            .value_style(theme.selected)
            .label_style(theme.dim),
        chart_area,
    );
}

fn render_spark(frame: &mut Frame, spark: &Spark, theme: &Theme, area: Rect) {
    let title = format!("{} · peak {}", spark.title, spark.peak);
    let block = chart_block(&title, theme);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if inner.width == 0 || inner.height == 0 {
        return;
    }
    // The newest buckets when they do not all fit; a few buckets are drawn wider, so a
    // short range still reads as a shape.
    let width = inner.width as usize;
    let start = spark.values.len().saturating_sub(width);
    let shown = &spark.values[start..];
    let repeat = (width / shown.len().max(1)).clamp(1, 8);
    let values: Vec<u64> = shown
        .iter()
        .flat_map(|v| std::iter::repeat_n(*v, repeat))
        .collect();
    frame.render_widget(
        Sparkline::default().data(&values).style(theme.online),
        inner,
    );
}

/// `2023-11-14 23:00 – 2023-11-15 00:00 UTC`.
fn range_text(data: &ReportData) -> String {
    format!("{} – {} UTC", time_text(data.from), time_text(data.to))
}

/// The SQL prompt on the first line, then its answer: a table scrolled to the prompt's
/// offset, or the error.
fn render_query(frame: &mut Frame, prompt: &QueryPrompt, theme: &Theme, area: Rect) {
    if area.height == 0 {
        return;
    }
    let [input, title, body] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(0),
    ])
    .areas(area);
    // The end of a long query stays in sight while typing.
    let room = (input.width as usize).saturating_sub(8);
    let typed: String = {
        let skip = prompt.input.chars().count().saturating_sub(room);
        prompt.input.chars().skip(skip).collect()
    };
    let mut spans = vec![Span::styled(" SQL › ", theme.accent), Span::raw(typed)];
    if prompt.editing {
        spans.push(Span::styled("▏", theme.accent));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), input);
    let hint = if prompt.editing {
        "Enter runs · Esc stops editing"
    } else {
        "Enter edits · ↑↓ scroll · Esc closes"
    };
    let (heading, answer) = match (&prompt.answer, prompt.running) {
        (_, true) => (format!(" query · running… · {hint}"), None),
        (None, false) => (
            format!(
                " query · tables: events, sessions, switches, on_periods, shadow_reported · {hint}"
            ),
            None,
        ),
        (Some(Err(error)), false) => {
            frame.render_widget(
                Paragraph::new(Line::from(Span::styled(
                    format!(" query · {hint}"),
                    theme.dim,
                ))),
                title,
            );
            frame.render_widget(
                Paragraph::new(error.as_str())
                    .style(theme.error)
                    .wrap(Wrap { trim: false }),
                body.inner(ratatui::layout::Margin::new(1, 0)),
            );
            return;
        }
        (Some(Ok(table)), false) => {
            let visible = body.height.saturating_sub(1) as usize;
            let len = table.rows.len();
            let start = prompt.offset.min(len.saturating_sub(visible));
            let end = (start + visible).min(len);
            let rows = match len {
                0 => "no rows".to_string(),
                1 => "1 row".to_string(),
                _ if end - start < len => format!("rows {}-{} of {}", start + 1, end, len),
                _ => format!("{len} rows"),
            };
            (
                format!(" query · {rows} · {hint}"),
                Some((table, start, end)),
            )
        }
    };
    frame.render_widget(
        Paragraph::new(Line::from(Span::styled(
            text::truncate(&heading, title.width as usize),
            theme.dim,
        ))),
        title,
    );
    let Some((table, start, end)) = answer else {
        return;
    };
    let mut budget = area.width as i32;
    let mut shown = 0;
    for width in &table.widths {
        let need = i32::from((*width).min(MAX_COLUMN)) + i32::from(shown > 0);
        if shown > 0 && need > budget {
            break;
        }
        budget -= need;
        shown += 1;
    }
    let align = |text: &str, numeric: bool| {
        let line = Line::from(text.to_string());
        if numeric {
            line.alignment(Alignment::Right)
        } else {
            line
        }
    };
    let header = Row::new(
        table
            .columns
            .iter()
            .zip(&table.numeric)
            .take(shown)
            .map(|(name, numeric)| Cell::from(align(name, *numeric))),
    )
    .style(theme.header.add_modifier(Modifier::UNDERLINED));
    let rows: Vec<Row> = table.rows[start..end]
        .iter()
        .map(|row| {
            Row::new(
                row.iter()
                    .zip(&table.numeric)
                    .take(shown)
                    .map(|(text, numeric)| Cell::from(align(text, *numeric))),
            )
        })
        .collect();
    let widths: Vec<Constraint> = table
        .widths
        .iter()
        .take(shown)
        .map(|w| Constraint::Length((*w).min(MAX_COLUMN)))
        .collect();
    frame.render_widget(
        Table::new(rows, widths).header(header).column_spacing(1),
        body,
    );
}

fn render_table(
    frame: &mut Frame,
    view: &AnalyticsView,
    data: &ReportData,
    theme: &Theme,
    area: Rect,
    device: &dyn Fn(&str) -> String,
) {
    let Some(table) = data.tables.get(view.table) else {
        return;
    };
    if area.height == 0 {
        return;
    }
    let [title, body] = Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(area);
    let visible = body.height.saturating_sub(1) as usize;
    let len = table.rows.len();
    let start = view.offset.min(len.saturating_sub(visible));
    let end = (start + visible).min(len);

    // Only the visible rows are built; an `id` column shows device names, as wide as the
    // names on screen need.
    let id_column = table.columns.iter().position(|c| c == "id");
    // A sort made for other rows (a report just arrived) is not applied.
    let ordered = view.order.len() == len;
    let cells: Vec<Vec<String>> = (start..end)
        .map(|n| {
            let index = if ordered { view.row_at(n) } else { n };
            let mut row = table.rows[index].clone();
            if let Some(cell) = id_column.and_then(|i| row.get_mut(i)) {
                *cell = device(cell);
            }
            row
        })
        .collect();
    let mut widths = table.widths.clone();
    let mut columns = table.columns.clone();
    if let Some(i) = id_column {
        columns[i] = "device".into();
        widths[i] = cells
            .iter()
            .map(|row| row[i].chars().count() as u16)
            .fold(6, u16::max);
    }
    if let Some(sort) = view.sort.filter(|sort| sort.column < columns.len()) {
        let column = &mut columns[sort.column];
        column.push(if sort.descending { '▼' } else { '▲' });
        let width = column.chars().count() as u16;
        widths[sort.column] = widths[sort.column].max(width);
    }

    // Columns in order while they fit; at least the first.
    let mut budget = area.width as i32;
    let mut shown = 0;
    for width in &widths {
        let need = i32::from((*width).min(MAX_COLUMN)) + i32::from(shown > 0);
        if shown > 0 && need > budget {
            break;
        }
        budget -= need;
        shown += 1;
    }
    let mut heading = vec![
        Span::styled(format!(" {} ", table.name), theme.title),
        Span::styled(
            format!("· table {}/{} ", view.table + 1, data.tables.len()),
            theme.dim,
        ),
    ];
    let rows_text = if len == 0 {
        "· no rows ".to_string()
    } else if len == 1 {
        "· 1 row ".to_string()
    } else if end - start < len {
        format!("· rows {}-{} of {} ", start + 1, end, len)
    } else {
        format!("· {len} rows ")
    };
    heading.push(Span::styled(rows_text, theme.dim));
    if shown < table.columns.len() && len != 1 {
        heading.push(Span::styled(
            match table.columns.len() - shown {
                1 => "· 1 more column ".to_string(),
                more => format!("· {more} more columns "),
            },
            theme.warn,
        ));
    }
    heading.push(Span::styled(format!("· {}", range_text(data)), theme.dim));
    frame.render_widget(Paragraph::new(Line::from(heading)), title);

    if len == 1 && shown < table.columns.len() {
        render_record(frame, table, theme, body);
        return;
    }
    let align = |text: &str, numeric: bool| {
        let line = Line::from(text.to_string());
        if numeric {
            line.alignment(Alignment::Right)
        } else {
            line
        }
    };
    let header = Row::new(
        columns
            .iter()
            .zip(&table.numeric)
            .take(shown)
            .map(|(name, numeric)| Cell::from(align(name, *numeric))),
    )
    .style(theme.header.add_modifier(Modifier::UNDERLINED));
    let rows: Vec<Row> = cells
        .iter()
        .map(|row| {
            Row::new(
                row.iter()
                    .zip(&table.numeric)
                    .take(shown)
                    .map(|(text, numeric)| Cell::from(align(text, *numeric))),
            )
        })
        .collect();
    let widths: Vec<Constraint> = widths
        .iter()
        .take(shown)
        .map(|w| Constraint::Length((*w).min(MAX_COLUMN)))
        .collect();
    frame.render_widget(
        Table::new(rows, widths).header(header).column_spacing(1),
        body,
    );
}

/// A one-row table too wide for the screen (the fleet summary), as name and value lines,
/// in as many side-by-side columns as fit.
fn render_record(frame: &mut Frame, table: &TableData, theme: &Theme, area: Rect) {
    let name_width = table
        .columns
        .iter()
        .map(|c| c.chars().count())
        .max()
        .unwrap_or(0);
    let value_width = table.rows[0]
        .iter()
        .map(|v| v.chars().count())
        .max()
        .unwrap_or(0)
        .min(MAX_COLUMN as usize);
    let pair = (name_width + value_width + 4) as u16;
    let height = area.height.max(1) as usize;
    let fit = (area.width / pair.max(1)).max(1) as usize;
    let columns = table.columns.len().div_ceil(height).clamp(1, fit);
    let lines: Vec<Line> = (0..height.min(table.columns.len()))
        .map(|line| {
            let mut spans = Vec::new();
            for column in 0..columns {
                let index = column * height + line;
                let (Some(name), Some(value)) =
                    (table.columns.get(index), table.rows[0].get(index))
                else {
                    continue;
                };
                spans.push(Span::styled(format!("{name:<name_width$}  "), theme.header));
                spans.push(Span::raw(format!(
                    "{:<value_width$}  ",
                    text::truncate(value, value_width)
                )));
            }
            Line::from(spans)
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), area);
}
