//! The notification tail's keys: the key map's tail actions, then scrolling.

use super::*;

pub(super) fn tail_key(model: &mut Model, key: KeyEvent) -> Vec<Command> {
    let page = model.table_rows().max(1) as isize;
    let prompt = |kind: PromptKind, text: &str| Overlay::Prompt {
        kind,
        input: LineInput::new(text),
        error: None,
    };
    if let Some(action) = model.keys.action(KeyScope::Tail, &key) {
        let mut handled = true;
        match action {
            Action::Follow => model.tail.toggle_follow(),
            Action::Wrap => model.tail.wrap = !model.tail.wrap,
            Action::TailDevice => {
                let current = model
                    .tail
                    .filter
                    .device
                    .as_deref()
                    .map(|id| model.fleet.label(id).to_string())
                    .unwrap_or_default();
                model.overlay = Some(prompt(PromptKind::TailDevice, &current));
            }
            Action::TailNames => {
                let current = model.tail.filter.names_text();
                model.overlay = Some(prompt(PromptKind::TailName, &current));
            }
            Action::TailFilter => {
                let current = model.tail.filter.text();
                model.overlay = Some(prompt(PromptKind::TailRegex, &current));
            }
            Action::ClearFilter => model.tail.filter = Default::default(),
            Action::Save => {
                let default = format!("herd-notifications-{}.ndjson", model.now as u64);
                model.overlay = Some(prompt(PromptKind::SavePath, &default));
            }
            Action::ClearTail => model.tail.clear(),
            _ => handled = false,
        }
        if handled {
            return Vec::new();
        }
    }
    match key.code {
        KeyCode::Esc | KeyCode::Char('q') => model.back(),
        KeyCode::Char(' ') => model.tail.toggle_follow(),
        KeyCode::Up | KeyCode::Char('k') => model.tail.scroll(-1),
        KeyCode::Down | KeyCode::Char('j') => model.tail.scroll(1),
        KeyCode::PageUp => model.tail.scroll(-page),
        KeyCode::PageDown => model.tail.scroll(page),
        KeyCode::End | KeyCode::Char('G') => model.tail.follow = true,
        KeyCode::Home | KeyCode::Char('g') => model.tail.scroll(isize::MIN / 2),
        _ => model.dirty = false,
    }
    Vec::new()
}
