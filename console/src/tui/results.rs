//! The results pane: what bulk actions and RPC calls answered, device by device, kept
//! until the operator dismisses them.
//!
//! A bulk `:call` or `:set` opens a [`ResultSet`] with one pending row per device; each
//! device's answer fills its row as it arrives (ok and the value, or the error). Calls
//! from the device view's RPC dialog are kept the same way, one row each. The pane lists
//! the rows of one set with a one-line summary of each value, and shows the selected
//! row's whole value beside or under the list, scrollable. Sets stay until dismissed
//! (`x`), the oldest going first past [`MAX_SETS`]; `s` saves one as JSON.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table, Wrap};
use ratatui::Frame;
use serde_json::{json, Value};

use super::input::LineInput;
use super::model::{Command, Model, Overlay, PromptKind};
use super::theme::Theme;
use crate::text;

/// Result sets kept; the oldest is dropped past this.
pub const MAX_SETS: usize = 20;

/// One device's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultRow {
    pub id: String,
    pub name: String,
    /// `None` while waiting.
    pub outcome: Option<Result<Value, String>>,
    /// When it answered (Unix seconds).
    pub at: Option<f64>,
}

impl ResultRow {
    /// The value on one line, cut to `width`.
    pub fn summary(&self, width: usize) -> String {
        let text = match &self.outcome {
            None => "waiting…".to_string(),
            Some(Ok(Value::Null)) => "null".to_string(),
            Some(Ok(value)) => value.to_string(),
            Some(Err(error)) => error.clone(),
        };
        text::truncate(&text, width)
    }
}

/// What one action answered.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultSet {
    /// Matches the answers of the task that runs the action.
    pub id: u64,
    /// What was done: `call Sys.GetInfo`, `set desired {"on":true}`.
    pub label: String,
    pub started: f64,
    pub rows: Vec<ResultRow>,
}

impl ResultSet {
    pub fn done(&self) -> usize {
        self.rows.iter().filter(|r| r.outcome.is_some()).count()
    }

    pub fn failed(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| matches!(r.outcome, Some(Err(_))))
            .count()
    }

    pub fn finished(&self) -> bool {
        self.done() == self.rows.len()
    }

    /// `3 of 5 answered, 1 failed`.
    pub fn progress(&self) -> String {
        let (done, total, failed) = (self.done(), self.rows.len(), self.failed());
        let mut text = if done == total {
            format!("{total} answered")
        } else {
            format!("{done} of {total} answered")
        };
        if failed > 0 {
            text.push_str(&format!(", {failed} failed"));
        }
        text
    }

    /// The set as saved: what was done, when, and each device's answer.
    pub fn to_json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|row| {
                let mut out = json!({"id": row.id, "name": row.name});
                match &row.outcome {
                    None => out["pending"] = json!(true),
                    Some(Ok(value)) => {
                        out["ok"] = json!(true);
                        out["result"] = value.clone();
                    }
                    Some(Err(error)) => {
                        out["ok"] = json!(false);
                        out["error"] = json!(error);
                    }
                }
                out
            })
            .collect();
        json!({
            "action": self.label,
            "started": text::rfc3339(self.started),
            "results": rows,
        })
    }
}

/// Which part of the pane takes the arrow keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Focus {
    #[default]
    List,
    Value,
}

/// Every kept result set and the pane's place in them.
#[derive(Debug, Default)]
pub struct Results {
    pub sets: Vec<ResultSet>,
    /// Index of the shown set.
    pub current: usize,
    pub selected: usize,
    pub offset: usize,
    /// First line of the value shown.
    pub scroll: usize,
    pub focus: Focus,
    next_id: u64,
}

impl Results {
    /// Starts a set for `devices` (`(id, name)`); returns its id.
    pub fn start(&mut self, label: String, devices: Vec<(String, String)>, now: f64) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.sets.push(ResultSet {
            id,
            label,
            started: now,
            rows: devices
                .into_iter()
                .map(|(id, name)| ResultRow {
                    id,
                    name,
                    outcome: None,
                    at: None,
                })
                .collect(),
        });
        if self.sets.len() > MAX_SETS {
            self.sets.remove(0);
        }
        self.show_last();
        id
    }

    /// Shows the newest set from its top.
    pub fn show_last(&mut self) {
        self.current = self.sets.len().saturating_sub(1);
        self.selected = 0;
        self.offset = 0;
        self.scroll = 0;
        self.focus = Focus::List;
    }

    pub fn shown(&self) -> Option<&ResultSet> {
        self.sets.get(self.current)
    }

    pub fn get_mut(&mut self, set: u64) -> Option<&mut ResultSet> {
        self.sets.iter_mut().find(|s| s.id == set)
    }

    /// Records device `id`'s answer in set `set`; false when the set was dismissed.
    pub fn record(&mut self, set: u64, id: &str, outcome: Result<Value, String>, now: f64) -> bool {
        let Some(set) = self.get_mut(set) else {
            return false;
        };
        if let Some(row) = set
            .rows
            .iter_mut()
            .find(|r| r.id == id && r.outcome.is_none())
        {
            row.outcome = Some(outcome);
            row.at = Some(now);
        }
        true
    }

    pub fn selected_row(&self) -> Option<&ResultRow> {
        self.shown()?.rows.get(self.selected)
    }

    fn move_to(&mut self, index: isize, rows: usize) {
        let len = self.shown().map_or(0, |s| s.rows.len());
        if len == 0 {
            return;
        }
        let target = index.clamp(0, len as isize - 1) as usize;
        if target != self.selected {
            self.scroll = 0;
        }
        self.selected = target;
        let rows = rows.max(1);
        if self.selected < self.offset {
            self.offset = self.selected;
        } else if self.selected >= self.offset + rows {
            self.offset = self.selected + 1 - rows;
        }
    }

    /// Moves the selection by `delta` rows, `rows` being the list's height.
    pub fn move_by(&mut self, delta: isize, rows: usize) {
        let target = (self.selected as isize).saturating_add(delta);
        self.move_to(target, rows);
    }

    fn switch(&mut self, delta: isize) {
        if self.sets.is_empty() {
            return;
        }
        let last = self.sets.len() as isize - 1;
        self.current = (self.current as isize + delta).clamp(0, last) as usize;
        self.selected = 0;
        self.offset = 0;
        self.scroll = 0;
    }

    /// Drops the shown set.
    pub fn dismiss(&mut self) {
        if self.current < self.sets.len() {
            self.sets.remove(self.current);
        }
        self.current = self.current.min(self.sets.len().saturating_sub(1));
        self.selected = 0;
        self.offset = 0;
        self.scroll = 0;
    }
}

/// How the pane splits `area`: the list, and the value beside it on wide screens or under
/// it on narrow ones.
pub fn layout(area: Rect) -> (Rect, Rect, Rect) {
    let [title, body] = Layout::vertical([Constraint::Length(1), Constraint::Min(1)]).areas(area);
    let (list, value) = if body.width >= 120 {
        let [list, value] =
            Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)])
                .areas(body);
        (list, value)
    } else {
        let [list, value] =
            Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(body);
        (list, value)
    };
    (title, list, value)
}

/// Rows the list shows at `size`.
pub fn list_rows(size: (u16, u16)) -> usize {
    let body = Rect::new(
        0,
        0,
        size.0,
        size.1.saturating_sub(super::model::CHROME_ROWS - 1),
    );
    let (_, list, _) = layout(body);
    list.height.saturating_sub(1) as usize
}

/// Lines of the value pane at `size`.
fn value_rows(size: (u16, u16)) -> usize {
    let body = Rect::new(
        0,
        0,
        size.0,
        size.1.saturating_sub(super::model::CHROME_ROWS - 1),
    );
    let (_, _, value) = layout(body);
    value.height.saturating_sub(2) as usize
}

/// The selected row's value, pretty, line by line.
fn value_lines(row: &ResultRow) -> Vec<String> {
    match &row.outcome {
        None => vec!["waiting for the device…".into()],
        Some(Ok(value)) => serde_json::to_string_pretty(value)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect(),
        Some(Err(error)) => vec![error.clone()],
    }
}

/// Keys of the results pane.
pub fn key(model: &mut Model, key: KeyEvent) -> Vec<Command> {
    let rows = list_rows(model.size);
    let lines = value_rows(model.size);
    let results = &mut model.results;
    let page = rows.max(1) as isize;
    match key.code {
        KeyCode::Esc | KeyCode::Char('q') | KeyCode::Backspace => model.back(),
        KeyCode::Tab | KeyCode::Enter => {
            results.focus = match results.focus {
                Focus::List => Focus::Value,
                Focus::Value => Focus::List,
            }
        }
        KeyCode::Left | KeyCode::Char('[') => results.switch(-1),
        KeyCode::Right | KeyCode::Char(']') => results.switch(1),
        KeyCode::Char('x') => {
            results.dismiss();
            if results.sets.is_empty() {
                model.back();
            }
        }
        KeyCode::Char('s') => {
            if let Some(set) = results.shown() {
                let default = format!("herd-results-{}.json", set.started as u64);
                model.overlay = Some(Overlay::Prompt {
                    kind: PromptKind::SaveResults,
                    input: LineInput::new(&default),
                    error: None,
                });
            }
        }
        code => {
            let delta: Option<isize> = match code {
                KeyCode::Down | KeyCode::Char('j') => Some(1),
                KeyCode::Up | KeyCode::Char('k') => Some(-1),
                KeyCode::PageDown => Some(page),
                KeyCode::PageUp => Some(-page),
                KeyCode::Char('d') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                    Some(page / 2)
                }
                KeyCode::Char('u') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                    Some(-page / 2)
                }
                KeyCode::Home | KeyCode::Char('g') => Some(isize::MIN / 2),
                KeyCode::End | KeyCode::Char('G') => Some(isize::MAX / 2),
                _ => None,
            };
            let Some(delta) = delta else {
                model.dirty = false;
                return Vec::new();
            };
            match results.focus {
                Focus::List => results.move_by(delta, rows),
                Focus::Value => {
                    let total = results.selected_row().map_or(0, |r| value_lines(r).len());
                    let most = total.saturating_sub(lines.max(1)) as isize;
                    results.scroll = (results.scroll as isize)
                        .saturating_add(delta)
                        .clamp(0, most) as usize;
                }
            }
        }
    }
    Vec::new()
}

/// Saves the shown set as pretty JSON at `path`.
pub fn save(model: &mut Model, path: String) -> Vec<Command> {
    let Some(set) = model.results.shown() else {
        model.error("no results to save");
        return Vec::new();
    };
    let text = serde_json::to_string_pretty(&set.to_json()).unwrap_or_default();
    vec![Command::Save {
        path: path.into(),
        lines: vec![text],
    }]
}

/// Draws the pane.
pub fn render(frame: &mut Frame, model: &Model, theme: &Theme, area: Rect) {
    let results = &model.results;
    let Some(set) = results.shown() else {
        frame.render_widget(
            Paragraph::new(
                "No results kept. A :call or :set on marked devices, or an RPC call from a \
                 device, puts its answers here.",
            )
            .style(theme.dim)
            .wrap(Wrap { trim: true }),
            area,
        );
        return;
    };
    let (title, list, value) = layout(area);
    let mut spans = vec![
        Span::raw(" "),
        Span::styled(set.label.clone(), theme.header),
        Span::styled(
            format!(" · {}", set.progress()),
            if set.failed() > 0 {
                theme.error
            } else if set.finished() {
                theme.online
            } else {
                theme.warn
            },
        ),
        Span::styled(format!(" · {}", text::clock_time(set.started)), theme.dim),
    ];
    if results.sets.len() > 1 {
        spans.push(Span::styled(
            format!(
                " · set {} of {} ([ ])",
                results.current + 1,
                results.sets.len()
            ),
            theme.dim,
        ));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), title);

    let visible = list.height.saturating_sub(1) as usize;
    let offset = results.offset.min(set.rows.len().saturating_sub(1));
    let name_width = set
        .rows
        .iter()
        .map(|r| r.name.chars().count().max(r.id.chars().count().min(12)))
        .max()
        .unwrap_or(4)
        .clamp(4, 24) as u16;
    // The state column, the name, and a space after each.
    let summary_width = list.width.saturating_sub(5 + name_width + 2) as usize;
    let rows: Vec<Row> = set
        .rows
        .iter()
        .enumerate()
        .skip(offset)
        .take(visible)
        .map(|(i, row)| {
            let (state, style) = match &row.outcome {
                None => ("…", theme.warn),
                Some(Ok(_)) => ("ok", theme.online),
                Some(Err(_)) => ("error", theme.error),
            };
            let who = if row.name.is_empty() {
                &row.id
            } else {
                &row.name
            };
            let built = Row::new(vec![
                Cell::from(state).style(style),
                Cell::from(who.clone()),
                Cell::from(row.summary(summary_width)).style(if row.outcome.is_none() {
                    theme.dim
                } else {
                    Style::default()
                }),
            ]);
            if i == results.selected {
                built.style(theme.selected)
            } else {
                built
            }
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Length(5),
            Constraint::Length(name_width),
            Constraint::Min(8),
        ],
    )
    .header(Row::new(["", "DEVICE", "RESULT"]).style(theme.header))
    .column_spacing(1);
    frame.render_widget(table, list);

    let Some(row) = results.selected_row() else {
        return;
    };
    let lines = value_lines(row);
    let height = value.height.saturating_sub(2) as usize;
    let scroll = results
        .scroll
        .min(lines.len().saturating_sub(height.max(1)));
    let more = lines.len().saturating_sub(scroll + height);
    let who = if row.name.is_empty() {
        row.id.clone()
    } else {
        format!("{} ({})", row.name, row.id)
    };
    let mut title = format!(" {who} ");
    if scroll > 0 || more > 0 {
        title.push_str(&format!(
            "· lines {}-{} of {} ",
            scroll + 1,
            (scroll + height).min(lines.len()),
            lines.len()
        ));
    }
    let focused = results.focus == Focus::Value;
    let block = Block::bordered().title(Span::styled(
        title,
        if focused { theme.title } else { theme.dim },
    ));
    let style = if matches!(row.outcome, Some(Err(_))) {
        theme.error
    } else {
        Style::default()
    };
    let shown: Vec<Line> = lines
        .into_iter()
        .skip(scroll)
        .take(height)
        .map(|l| Line::styled(l, style))
        .collect();
    frame.render_widget(Paragraph::new(shown).block(block), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_fills_as_answers_arrive_and_saves_whole() {
        let mut results = Results::default();
        let set = results.start(
            "call Sys.GetInfo".into(),
            vec![("a".into(), "porch".into()), ("b".into(), "".into())],
            1_700_000_000.0,
        );
        assert_eq!(
            results.shown().map(ResultSet::progress).as_deref(),
            Some("0 of 2 answered")
        );
        assert!(results.record(set, "b", Err("device offline".into()), 1.0));
        assert!(results.record(set, "a", Ok(json!({"uptime": 5})), 2.0));
        let shown = results.shown().expect("set");
        assert_eq!(shown.progress(), "2 answered, 1 failed");
        assert_eq!(shown.rows[0].summary(40), r#"{"uptime":5}"#);
        assert_eq!(
            shown.to_json(),
            json!({"action": "call Sys.GetInfo", "started": "2023-11-14T22:13:20Z", "results": [
                {"id": "a", "name": "porch", "ok": true, "result": {"uptime": 5}},
                {"id": "b", "name": "", "ok": false, "error": "device offline"},
            ]})
        );
        results.dismiss();
        assert!(results.shown().is_none());
        assert!(!results.record(set, "a", Ok(Value::Null), 3.0), "dismissed");
    }

    #[test]
    fn only_the_newest_sets_are_kept() {
        let mut results = Results::default();
        for i in 0..MAX_SETS + 3 {
            results.start(format!("call {i}"), Vec::new(), 0.0);
        }
        assert_eq!(results.sets.len(), MAX_SETS);
        assert_eq!(results.shown().map(|s| s.label.as_str()), Some("call 22"));
    }
}
