//! The fleet table's keys: the key map's fleet actions, then the fixed navigation and
//! sort keys.

use super::*;

/// A key map action of the fleet; `None` for actions of other views.
fn fleet_action(model: &mut Model, action: Action) -> Option<Vec<Command>> {
    match action {
        Action::Quit => {
            model.quit = true;
            return Some(vec![Command::Quit]);
        }
        Action::Open => {
            if let Some(id) = model.selected_row().map(|r| r.id.to_string()) {
                return Some(model.open_device(&id));
            }
        }
        Action::Filter => {
            model.overlay = Some(Overlay::Prompt {
                kind: PromptKind::FleetFilter,
                input: LineInput::new(model.fleet.filter().text()),
                error: None,
            })
        }
        Action::Mark => {
            if let Some(id) = model.selected_row().map(|r| r.id.clone()) {
                if !model.fleet_ui.marked.remove(&id) {
                    model.fleet_ui.marked.insert(id);
                }
                model.move_selection(1);
            }
        }
        Action::MarkAll => {
            let ids = model.fleet.view_ids();
            if ids
                .iter()
                .all(|id| model.fleet_ui.marked.contains(id.as_str()))
            {
                model.fleet_ui.marked.clear();
            } else {
                model
                    .fleet_ui
                    .marked
                    .extend(ids.into_iter().map(Into::into));
            }
        }
        Action::Tail => model.go_to(Screen::Notifications),
        Action::Analytics => model.go_to(Screen::Analytics),
        Action::Results => open_results(model),
        Action::Delete => delete_targets(model),
        Action::Rollouts => return Some(rollouts::open_list(model)),
        Action::NewRollout => return Some(rollouts::open_form(model)),
        Action::Reload => {
            model.loading = true;
            model.touched.clear();
            return Some(vec![Command::LoadDevices]);
        }
        _ => return None,
    }
    Some(Vec::new())
}

pub(super) fn fleet_key(model: &mut Model, key: KeyEvent) -> Vec<Command> {
    if let Some(action) = model.keys.action(KeyScope::Fleet, &key) {
        if let Some(commands) = fleet_action(model, action) {
            return commands;
        }
    }
    let page = model.table_rows().max(1) as isize;
    match key.code {
        KeyCode::Down | KeyCode::Char('j') => model.move_selection(1),
        KeyCode::Up | KeyCode::Char('k') => model.move_selection(-1),
        KeyCode::PageDown => model.move_selection(page),
        KeyCode::PageUp => model.move_selection(-page),
        KeyCode::Char('f') if key.modifiers.contains(KeyModifiers::CONTROL) => {
            model.move_selection(page)
        }
        KeyCode::Char('b') if key.modifiers.contains(KeyModifiers::CONTROL) => {
            model.move_selection(-page)
        }
        KeyCode::Home | KeyCode::Char('g') => model.move_selection(isize::MIN / 2),
        KeyCode::End | KeyCode::Char('G') => model.move_selection(isize::MAX / 2),
        KeyCode::Esc => {
            if !model.fleet.filter().is_empty() {
                set_fleet_filter(model, "");
            } else if !model.fleet_ui.marked.is_empty() {
                model.fleet_ui.marked.clear();
            }
        }
        KeyCode::Char(c @ '0'..='9') => {
            // The digits are the columns on screen, left to right: what is not shown
            // cannot be sorted by by accident.
            let index = if c == '0' {
                9
            } else {
                c as usize - '1' as usize
            };
            let columns = Column::visible(model.size.0);
            match columns.get(index) {
                Some(&(column, _)) => {
                    let current = model.fleet.sort();
                    let descending = current.column == column && !current.descending;
                    model.fleet.set_sort(Sort { column, descending });
                    model.follow_selection();
                }
                None => model.error(format!(
                    "{} columns fit on screen: sort keys 1-{}; :sort COLUMN sorts by any",
                    columns.len(),
                    columns.len()
                )),
            }
        }
        _ => model.dirty = false,
    }
    Vec::new()
}
