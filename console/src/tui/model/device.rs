//! The device view's keys (the editor and the RPC dialog while open, then the key map's
//! device actions and the scrolling keys) and the answers it waits for.

use super::*;

pub(super) fn submit_editor(editor: &mut Editor, id: &str) -> Vec<Command> {
    match editor.parse() {
        Err(message) => {
            editor.error = Some(message);
            Vec::new()
        }
        Ok(new) => {
            let (base, version) = match editor.conflict.take() {
                // Overwriting after a conflict: the difference is taken from the server's
                // copy, at the server's version.
                Some((server, version)) => (server, version),
                None => (editor.base.clone(), editor.base_version),
            };
            editor.base = base.clone();
            editor.base_version = version;
            let diff = desired_update(&base, &new);
            if diff.as_object().is_some_and(|m| m.is_empty()) {
                editor.error = Some("nothing changed".into());
                return Vec::new();
            }
            editor.error = None;
            editor.sending = true;
            let mut update = json!({"state": {"desired": diff}});
            if version > 0 {
                update["version"] = json!(version);
            }
            vec![Command::SendShadow {
                id: id.to_string(),
                update,
            }]
        }
    }
}

/// Keys for the editor and the RPC dialog, which take everything while open.
pub(super) fn device_modal_key(model: &mut Model, key: KeyEvent) -> Option<Vec<Command>> {
    let view = model.device.as_mut()?;
    if !matches!(model.stack.last(), Some(Screen::Device(_))) {
        return None;
    }
    if view.push.is_some() {
        return Some(rollouts::push_key(model, key));
    }
    let id = view.id.clone();
    if let Some(editor) = view.editor.as_mut() {
        if key.code == KeyCode::Esc {
            // Unsent changes are not dropped on one key: the first Esc asks.
            if editor.changed() && !editor.confirm_discard && !editor.sending {
                editor.confirm_discard = true;
                editor.error = Some(
                    "your changes are not sent: Esc again discards them, ^S sends them".into(),
                );
            } else {
                view.editor = None;
            }
            return Some(Vec::new());
        }
        if editor.confirm_discard {
            editor.confirm_discard = false;
            editor.error = None;
        }
        if is_ctrl(&key, 's') {
            if editor.sending {
                return Some(Vec::new());
            }
            return Some(submit_editor(editor, &id));
        }
        if is_ctrl(&key, 'r') {
            if let Some((server, version)) = editor.conflict.take() {
                let text = serde_json::to_string_pretty(&server).unwrap_or_default();
                editor.set_text(&text);
                editor.base = server;
                editor.base_version = version;
                editor.error = None;
            }
            return Some(Vec::new());
        }
        if is_ctrl(&key, 'o') {
            // Ctrl-S after a conflict already overwrites; Ctrl-O says so explicitly.
            if editor.conflict.is_some() {
                return Some(submit_editor(editor, &id));
            }
            return Some(Vec::new());
        }
        editor.textarea.input(key);
        return Some(Vec::new());
    }
    let read_only = model.profile.read_only;
    let scope = model.key.as_ref().and_then(|key| key.scope);
    let dialog = view.rpc.as_mut()?;
    match key.code {
        KeyCode::Esc => view.rpc = None,
        KeyCode::Tab | KeyCode::BackTab => {
            dialog.focus = match dialog.focus {
                RpcFocus::Methods => RpcFocus::Params,
                RpcFocus::Params => RpcFocus::Methods,
            }
        }
        KeyCode::Enter => {
            let Some(method) = dialog.selected_method().map(str::to_string) else {
                return Some(Vec::new());
            };
            if read_only && !crate::read_only_safe(&method) {
                let message = format!("read-only profile: refusing to call {method}");
                dialog.result = Some((method, Err(message.clone())));
                model.error(message);
                return Some(Vec::new());
            }
            let operation = Operation::of_call(&method);
            if let Some(scope) = scope.filter(|&scope| !operation.allowed(Some(scope))) {
                let message = operation.refusal(&format!("call {method}"), scope);
                dialog.result = Some((method, Err(message.clone())));
                model.error(message);
                return Some(Vec::new());
            }
            let text = dialog.params.text().trim();
            let params = if text.is_empty() {
                None
            } else {
                match serde_json::from_str::<Value>(text) {
                    Ok(value) => Some(value),
                    Err(e) => {
                        dialog.result =
                            Some((method, Err(format!("params are not valid JSON: {e}"))));
                        return Some(Vec::new());
                    }
                }
            };
            dialog.in_flight = Some(method.clone());
            return Some(vec![Command::CallRpc { id, method, params }]);
        }
        _ => match dialog.focus {
            RpcFocus::Methods => {
                let count = match &dialog.methods {
                    Some(Ok(methods)) => methods.len(),
                    _ => 0,
                };
                let page = 10;
                match key.code {
                    KeyCode::Down => {
                        dialog.selected = (dialog.selected + 1).min(count.saturating_sub(1))
                    }
                    KeyCode::Up => dialog.selected = dialog.selected.saturating_sub(1),
                    KeyCode::Home => dialog.selected = 0,
                    KeyCode::End => dialog.selected = count.saturating_sub(1),
                    KeyCode::PageDown => dialog.result_scroll += page,
                    KeyCode::PageUp => {
                        dialog.result_scroll = dialog.result_scroll.saturating_sub(page)
                    }
                    // Method names are letters, digits, dots: typing one jumps to it.
                    KeyCode::Char(c)
                        if !key.modifiers.contains(KeyModifiers::CONTROL)
                            && (c.is_alphanumeric() || c == '.' || c == '_') =>
                    {
                        let now = model.now;
                        dialog.jump_to(c, now);
                    }
                    KeyCode::Char(c) if !key.modifiers.contains(KeyModifiers::CONTROL) => {
                        // JSON starts with `{`, `[` or `"`: that goes to the params.
                        dialog.focus = RpcFocus::Params;
                        dialog.params.insert_str(&c.to_string());
                    }
                    _ => {}
                }
            }
            RpcFocus::Params => match key.code {
                KeyCode::PageDown => dialog.result_scroll += 10,
                KeyCode::PageUp => dialog.result_scroll = dialog.result_scroll.saturating_sub(10),
                _ => {
                    dialog.params.handle(key);
                }
            },
        },
    }
    Some(Vec::new())
}

pub(super) fn device_key(model: &mut Model, key: KeyEvent, id: &str) -> Vec<Command> {
    if let Some(action) = model.keys.action(KeyScope::Device, &key) {
        if let Some(commands) = device_action(model, action, id) {
            return commands;
        }
    }
    let page = (model.size.1 / 3).max(1) as isize;
    let scroll = match key.code {
        KeyCode::Down | KeyCode::Char('j') => Some(1),
        KeyCode::Up | KeyCode::Char('k') => Some(-1),
        KeyCode::PageDown => Some(page),
        KeyCode::PageUp => Some(-page),
        KeyCode::Char('d') if key.modifiers.contains(KeyModifiers::CONTROL) => Some(page),
        KeyCode::Char('u') if key.modifiers.contains(KeyModifiers::CONTROL) => Some(-page),
        KeyCode::Home | KeyCode::Char('g') => Some(isize::MIN / 2),
        KeyCode::End | KeyCode::Char('G') => Some(isize::MAX / 2),
        _ => None,
    };
    if let (Some(delta), Some(view)) = (scroll, model.device.as_mut()) {
        if view.pane == Pane::Timeline && view.focus == Part::Lower {
            view.move_timeline(delta);
        } else {
            view.scroll_by(delta);
        }
        return Vec::new();
    }
    match key.code {
        KeyCode::Tab | KeyCode::BackTab => {
            if let Some(view) = model.device.as_mut() {
                view.focus = view
                    .focus
                    .next(if key.code == KeyCode::Tab { 1 } else { -1 });
            }
        }
        KeyCode::Esc | KeyCode::Char('q') | KeyCode::Backspace => model.back(),
        _ => model.dirty = false,
    }
    Vec::new()
}

/// A key map action of the device view; `None` for actions of other views.
fn device_action(model: &mut Model, action: Action, id: &str) -> Option<Vec<Command>> {
    match action {
        Action::DeviceReload => {
            if let Some(view) = model.device.as_mut() {
                view.loading = true;
            }
            return Some(vec![Command::LoadDevice(id.to_string())]);
        }
        Action::Logs => {
            if let Some(view) = model.device.as_mut() {
                view.pane = match view.pane {
                    Pane::Events | Pane::Timeline => Pane::Logs,
                    Pane::Logs | Pane::Info => Pane::Events,
                };
                view.scroll[3] = 0;
                view.focus = Part::Lower;
            }
        }
        Action::Info => {
            if let Some(view) = model.device.as_mut() {
                view.pane = match view.pane {
                    Pane::Info => Pane::Events,
                    _ => Pane::Info,
                };
                view.scroll[3] = 0;
                view.focus = Part::Lower;
            }
        }
        Action::Edit | Action::EditExternal => {
            if model.refuse(Operation::SetDesired, "edit desired") {
                return Some(Vec::new());
            }
            let Some(view) = model.device.as_mut() else {
                return Some(Vec::new());
            };
            if view.object.is_none() {
                model.error("the device is still loading");
                return Some(Vec::new());
            }
            let desired = view.section("desired");
            if action == Action::EditExternal {
                let text = serde_json::to_string_pretty(&desired).unwrap_or_default();
                return Some(vec![Command::ExternalEditor {
                    id: id.to_string(),
                    text,
                }]);
            }
            view.editor = Some(Editor::new(&desired, view.version()));
        }
        Action::Call => {
            if model.refuse_scope(Operation::Call, "call RPCs") {
                return Some(Vec::new());
            }
            let Some(view) = model.device.as_mut() else {
                return Some(Vec::new());
            };
            if !view.online() {
                model.error("the device is offline: RPC needs it connected");
                return Some(Vec::new());
            }
            view.rpc = Some(RpcDialog::new());
            return Some(vec![Command::ListRpc(id.to_string())]);
        }
        Action::DeviceTail => {
            // The device's tail sits on top of the device: Esc comes back to it, with
            // the tail's own filter as it was.
            let device_filter = TailFilter {
                device: Some(id.to_string()),
                device_label: Some(model.fleet.label(id).to_string()).filter(|l| l != id),
                ..Default::default()
            };
            let previous = std::mem::replace(&mut model.tail.filter, device_filter);
            model.tail_filter_before = Some(previous);
            model.stack.push(Screen::Notifications);
        }
        Action::History => {
            let Some(view) = model.device.as_mut() else {
                return Some(Vec::new());
            };
            view.focus = Part::Lower;
            if view.pane == Pane::Timeline {
                view.pane = Pane::Events;
                view.scroll[3] = 0;
                return Some(Vec::new());
            }
            view.pane = Pane::Timeline;
            // Read once per opening of the device; live events extend it after.
            if view.timeline.is_none() && !view.timeline_loading {
                view.timeline_loading = true;
                return Some(vec![Command::LoadTimeline(id.to_string())]);
            }
        }
        Action::Push => return Some(rollouts::open_push(model)),
        Action::Delete => delete_targets(model),
        _ => return None,
    }
    Some(Vec::new())
}

/// The device answered `GET /devices/:id`: the view takes it; a sent edit says which version it made; a conflict gets the server's copy.
pub(super) fn device_loaded(
    model: &mut Model,
    id: String,
    result: Result<DeviceObject, Failure>,
) -> Vec<Command> {
    model.dirty = true;
    let now = model.now;
    let Some(view) = model.device.as_mut().filter(|v| v.id == id) else {
        return Vec::new();
    };
    let mut message = None;
    match result {
        Ok(object) => {
            view.set_object(object, now);
            if let Some(sent) = view.sent_version.take() {
                let now_at = view.version();
                message = Some(if now_at > sent {
                    format!(
                            "desired updated as version {sent}; the shadow is at version {now_at} now (the device reported since)"
                        )
                } else {
                    format!("desired updated: version {sent}")
                });
            }
            if let Some(editor) = view.editor.as_mut().filter(|e| e.awaiting_conflict_copy) {
                editor.awaiting_conflict_copy = false;
                let desired = view
                    .object
                    .as_ref()
                    .and_then(|o| o.shadow.pointer("/state/desired"))
                    .cloned()
                    .unwrap_or_else(|| json!({}));
                let version = view
                    .object
                    .as_ref()
                    .and_then(|o| o.shadow.get("version"))
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                editor.conflict = Some((desired, version));
            }
        }
        Err(failure) => {
            view.loading = false;
            view.error = Some(failure.message);
        }
    }
    if let Some(message) = message {
        model.info(message);
    }
    Vec::new()
}

/// The editor's update answered: reload, or keep the editor open with the conflict or error.
pub(super) fn shadow_sent(
    model: &mut Model,
    id: String,
    result: Result<Value, Failure>,
) -> Vec<Command> {
    model.dirty = true;
    let Some(view) = model.device.as_mut().filter(|v| v.id == id) else {
        return Vec::new();
    };
    match result {
        Ok(shadow) => {
            let version = shadow.get("version").and_then(Value::as_u64).unwrap_or(0);
            view.editor = None;
            // The pane shows the shadow as reloaded; by then the device may have
            // reported, moving the version on. The message says so when it does.
            view.sent_version = Some(version);
            model.info(format!("desired updated as version {version}; reloading"));
            vec![Command::LoadDevice(id)]
        }
        Err(failure) if failure.status == Some(409) => {
            if let Some(editor) = view.editor.as_mut() {
                editor.sending = false;
                editor.awaiting_conflict_copy = true;
                editor.error = Some(
                    "version conflict: the shadow changed on the server since you started editing"
                        .into(),
                );
            }
            vec![Command::LoadDevice(id)]
        }
        Err(failure) => {
            if let Some(editor) = view.editor.as_mut() {
                editor.sending = false;
                editor.error = Some(failure.message);
            }
            Vec::new()
        }
    }
}

/// `RPC.List` answered for the RPC dialog.
pub(super) fn rpc_listed(
    model: &mut Model,
    id: String,
    result: Result<Vec<String>, Failure>,
) -> Vec<Command> {
    model.dirty = true;
    if let Some(dialog) = model
        .device
        .as_mut()
        .filter(|v| v.id == id)
        .and_then(|v| v.rpc.as_mut())
    {
        dialog.methods = Some(result.map_err(|f| f.message));
        dialog.selected = 0;
    }
    Vec::new()
}

/// A call of the RPC dialog answered: shown in the dialog and kept in the results pane.
pub(super) fn rpc_done(
    model: &mut Model,
    id: String,
    method: String,
    result: Result<Value, Failure>,
) -> Vec<Command> {
    model.dirty = true;
    if let Some(dialog) = model
        .device
        .as_mut()
        .filter(|v| v.id == id)
        .and_then(|v| v.rpc.as_mut())
    {
        dialog.in_flight = None;
        let shown = result
            .as_ref()
            .map(|v| serde_json::to_string_pretty(v).unwrap_or_default())
            .map_err(|f| f.message.clone());
        dialog.result = Some((method.clone(), shown));
        dialog.result_scroll = 0;
    }
    // Kept in the results pane too, so closing the dialog loses nothing.
    let name = model.fleet.get(&id).map(|r| r.name.to_string());
    let now = model.now;
    let set = model.results.start(
        format!("call {method} on {}", model.fleet.label(&id)),
        vec![(id.clone(), name.unwrap_or_default())],
        now,
    );
    model
        .results
        .record(set, &id, result.map_err(|f| f.message), now);
    Vec::new()
}

/// The server's log was read for the timeline.
pub(super) fn timeline_loaded(
    model: &mut Model,
    id: String,
    result: Result<crate::history::Timeline, Failure>,
) -> Vec<Command> {
    model.dirty = true;
    if let Some(view) = model.device.as_mut().filter(|v| v.id == id) {
        view.timeline_loading = false;
        view.timeline = Some(result.map_err(|f| f.message));
    }
    Vec::new()
}
