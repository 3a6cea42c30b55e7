//! Firmware in the console (PROTOCOL §10): the rollouts list, one rollout's page, the form
//! that plans and creates a rollout from the fleet's marks or filter, the firmware picker
//! of the device view, and the progress of updates as `ota.*` events tell it.
//!
//! Nothing here does IO. Keys and events change this state and ask for
//! [`Request`]s, which the runtime runs in tasks that answer with a [`Reply`]. A
//! `rollout.*` event changes the shown counters and state at once (its body carries them,
//! §10.6) and marks the rollout for a fetch; `tick` sends such fetches at most once a
//! second per rollout, and fetches a shown list or page again every few seconds anyway.
//!
//! ```
//! use herd_console::tui::rollouts::{parse_seconds, parse_waves};
//!
//! let waves = parse_waves("10, 30, 60%", 90).expect("valid");
//! assert_eq!(waves.len(), 3);
//! assert_eq!((waves[0].percent, waves[2].soak_s), (Some(10.0), 90));
//! assert!(parse_waves("10,ten", 0).is_err());
//! assert_eq!(parse_seconds("5m"), Some(300));
//! ```

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use herd_client::{FirmwareObject, Notification, RolloutCommand, RolloutObject, RolloutSpec};
use protocol::firmware::{CommitPolicy, Delivery, RolloutState, Selector};

use super::model::{Command, Failure, Model, Overlay, Screen};

mod form;
mod ota;
mod page;

use form::sort_firmware;
use page::done_text;

pub use form::{bytes, parse_seconds, parse_waves, version_text, FormField, FormStage, NewRollout};
pub use ota::{apply_ota, OtaJob, OtaPhase, PushDialog};
pub use page::{
    apply_event_body, count, device_label, question, rollout_name, PagePane, PageRow, RolloutList,
    RolloutPage, GROUP_ORDER,
};

/// Fewest seconds between two fetches of one rollout that events asked for.
const FETCH_SECS: f64 = 1.0;
/// How often a shown list, or the page of an unfinished rollout, is fetched without news.
const REFRESH_SECS: f64 = 10.0;
/// The same for the page of a running rollout: devices change state without events.
const RUNNING_REFRESH_SECS: f64 = 3.0;
/// How long a finished update stays in [`Model::ota`] for the views to show.
const OTA_KEEP_SECS: f64 = 600.0;

/// Work for the runtime; each answers with one [`Reply`].
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `GET /rollouts`.
    List,
    /// `GET /rollouts/:id`, with the per-device states when `devices`.
    Load { id: String, devices: bool },
    /// `POST /rollouts/:id/<command>`.
    Command { id: String, command: RolloutCommand },
    /// `GET /firmware`.
    Firmware,
    /// `POST /rollouts` with `dry_run`: the plan only.
    Plan(RolloutSpec),
    /// `POST /rollouts`: a planned rollout (started by a [`Request::Command`] after).
    Create(RolloutSpec),
    /// `POST /devices/:id/ota?firmware=...`.
    Push { device: String, firmware: String },
}

/// What the runtime answers.
#[derive(Debug, Clone)]
pub enum Reply {
    Listed(Result<Vec<RolloutObject>, Failure>),
    Loaded {
        id: String,
        result: Result<RolloutObject, Failure>,
    },
    Commanded {
        id: String,
        command: RolloutCommand,
        result: Result<RolloutObject, Failure>,
    },
    Firmware(Result<Vec<FirmwareObject>, Failure>),
    Planned(Result<RolloutObject, Failure>),
    Created(Result<RolloutObject, Failure>),
    Pushed {
        device: String,
        firmware: String,
        result: Result<(), Failure>,
    },
}

// ---------------------------------------------------------------------------------------
// Keys, replies and the clock.

fn is_ctrl(key: &KeyEvent) -> bool {
    key.modifiers.contains(KeyModifiers::CONTROL)
}

/// Opens the list (`:rollouts`, `R` in the fleet).
pub(super) fn open_list(model: &mut Model) -> Vec<Command> {
    model.go_to(Screen::Rollouts);
    list_fetch(model)
}

fn list_fetch(model: &mut Model) -> Vec<Command> {
    let list = &mut model.rollouts;
    if list.loading {
        return Vec::new();
    }
    list.loading = true;
    list.listed_at = model.now;
    let page = model.rollout_page.as_ref().map(|p| p.id.as_str());
    list.stale.retain(|id| Some(id.as_str()) == page);
    vec![Command::Rollouts(Request::List)]
}

/// Opens rollout `id`'s page over the list.
pub(super) fn open_page(model: &mut Model, id: &str) -> Vec<Command> {
    if !model.stack.contains(&Screen::Rollouts) {
        model.go_to(Screen::Rollouts);
    }
    while !matches!(model.screen(), Screen::Rollouts) {
        model.stack.pop();
    }
    model.stack.push(Screen::Rollout(id.to_string()));
    model.forget_closed();
    let summary = model.rollouts.get(id).cloned();
    model.rollout_page = Some(RolloutPage::new(id, summary));
    page_fetch(model).into_iter().collect()
}

fn page_fetch(model: &mut Model) -> Option<Command> {
    let page = model.rollout_page.as_mut()?;
    if model.rollouts.in_flight.contains(&page.id) {
        return None;
    }
    page.fetched_at = model.now;
    model.rollouts.stale.remove(&page.id);
    model.rollouts.in_flight.insert(page.id.clone());
    Some(Command::Rollouts(Request::Load {
        id: page.id.clone(),
        devices: true,
    }))
}

/// Starts the form from the fleet: the marked devices, else the current filter.
pub(super) fn open_form(model: &mut Model) -> Vec<Command> {
    if model.refuse(crate::access::Operation::Rollout, "create a rollout") {
        return Vec::new();
    }
    let marked = &model.fleet_ui.marked;
    let (select, describe) = if !marked.is_empty() {
        let mut ids: Vec<String> = marked.iter().map(|id| id.to_string()).collect();
        ids.sort();
        let mut names: Vec<&str> = ids.iter().map(|id| model.fleet.label(id)).collect();
        names.sort_unstable();
        let shown = names.iter().take(5).copied().collect::<Vec<_>>().join(", ");
        let more = if names.len() > 5 { ", …" } else { "" };
        let describe = format!(
            "{}: {shown}{more}",
            count(ids.len() as u64, "marked device")
        );
        (
            Selector {
                ids: Some(ids),
                query: None,
            },
            describe,
        )
    } else {
        let filter = model.fleet.filter().text().to_string();
        if model.loaded_once && model.fleet.view_len() == 0 {
            model.error(if model.fleet.is_empty() {
                "no devices to update"
            } else {
                "no device matches the filter: nothing to update"
            });
            return Vec::new();
        }
        let describe = if filter.is_empty() {
            format!(
                "every device (nothing marked, no filter): {} now",
                count(model.fleet.len() as u64, "device")
            )
        } else {
            format!(
                "the filter {filter} ({} shown now)",
                count(model.fleet.view_len() as u64, "device")
            )
        };
        (
            Selector {
                ids: None,
                query: Some(filter),
            },
            describe,
        )
    };
    if matches!(model.screen(), Screen::NewRollout) {
        model.stack.pop();
    }
    model.stack.push(Screen::NewRollout);
    model.new_rollout = Some(NewRollout::new(select, describe));
    vec![Command::Rollouts(Request::Firmware)]
}

pub(super) fn list_key(model: &mut Model, key: KeyEvent) -> Vec<Command> {
    let page = model.table_rows().max(1) as isize;
    let list = &mut model.rollouts;
    match key.code {
        KeyCode::Esc | KeyCode::Char('q') | KeyCode::Backspace => model.back(),
        KeyCode::Down | KeyCode::Char('j') => list.move_cursor(1),
        KeyCode::Up | KeyCode::Char('k') => list.move_cursor(-1),
        KeyCode::PageDown => list.move_cursor(page),
        KeyCode::PageUp => list.move_cursor(-page),
        KeyCode::Home | KeyCode::Char('g') => list.move_cursor(isize::MIN / 2),
        KeyCode::End | KeyCode::Char('G') => list.move_cursor(isize::MAX / 2),
        KeyCode::Enter => {
            if let Some(id) = list.selected().map(|r| r.id.clone()) {
                return open_page(model, &id);
            }
        }
        KeyCode::Char('n') => return open_form(model),
        KeyCode::Char('l') if is_ctrl(&key) => return list_fetch(model),
        _ => model.dirty = false,
    }
    Vec::new()
}

pub(super) fn page_key(model: &mut Model, key: KeyEvent) -> Vec<Command> {
    let rows = model.table_rows().max(1) as isize;
    let Some(page) = model.rollout_page.as_mut() else {
        model.back();
        return Vec::new();
    };
    let command = match key.code {
        KeyCode::Esc | KeyCode::Char('q') | KeyCode::Backspace => {
            model.back();
            return Vec::new();
        }
        KeyCode::Down | KeyCode::Char('j') => {
            page.move_cursor(1);
            return Vec::new();
        }
        KeyCode::Up | KeyCode::Char('k') => {
            page.move_cursor(-1);
            return Vec::new();
        }
        KeyCode::PageDown => {
            page.move_cursor(rows / 2);
            return Vec::new();
        }
        KeyCode::PageUp => {
            page.move_cursor(-rows / 2);
            return Vec::new();
        }
        KeyCode::Home | KeyCode::Char('g') => {
            page.move_cursor(isize::MIN / 2);
            return Vec::new();
        }
        KeyCode::End | KeyCode::Char('G') => {
            page.move_cursor(isize::MAX / 2);
            return Vec::new();
        }
        KeyCode::Tab | KeyCode::BackTab | KeyCode::Char('f') => {
            page.pane = match page.pane {
                PagePane::Devices => PagePane::Failures,
                PagePane::Failures => PagePane::Devices,
            };
            return Vec::new();
        }
        KeyCode::Enter => {
            let Some(id) = page.selected_device().map(|d| d.id.clone()) else {
                return Vec::new();
            };
            return model.open_device(&id);
        }
        KeyCode::Char('l') if is_ctrl(&key) => return page_fetch(model).into_iter().collect(),
        KeyCode::Char('s') => RolloutCommand::Start,
        KeyCode::Char('p') => RolloutCommand::Pause,
        KeyCode::Char('r') => RolloutCommand::Resume,
        KeyCode::Char('A') => RolloutCommand::Abort,
        KeyCode::Char('R') => RolloutCommand::Retry,
        _ => {
            model.dirty = false;
            return Vec::new();
        }
    };
    let Some(object) = page.object.as_ref() else {
        model.error("the rollout is still loading");
        return Vec::new();
    };
    let what = format!("{} rollout {}", command.as_str(), rollout_name(object));
    match question(object, command) {
        Err(reason) => model.error(reason),
        Ok(question) => {
            let id = object.id.clone();
            if !model.refuse(crate::access::Operation::Rollout, &what) {
                model.overlay = Some(Overlay::Confirm {
                    question,
                    command: Command::Rollouts(Request::Command { id, command }),
                });
            }
        }
    }
    Vec::new()
}

pub(super) fn form_key(model: &mut Model, key: KeyEvent) -> Vec<Command> {
    let Some(form) = model.new_rollout.as_mut() else {
        model.back();
        return Vec::new();
    };
    match &form.stage {
        FormStage::Planning(_) | FormStage::Creating { .. } => {
            if key.code == KeyCode::Esc {
                // The answer, when it comes, is for a stage that is gone and is dropped.
                form.stage = FormStage::Editing;
            }
            return Vec::new();
        }
        FormStage::Plan { .. } => {
            match key.code {
                KeyCode::Esc | KeyCode::Backspace => form.stage = FormStage::Editing,
                KeyCode::Enter => {
                    let stage = std::mem::replace(&mut form.stage, FormStage::Editing);
                    if let FormStage::Plan { plan, spec } = stage {
                        let mut spec = *spec;
                        spec.dry_run = false;
                        form.stage = FormStage::Creating { plan };
                        return vec![Command::Rollouts(Request::Create(spec))];
                    }
                }
                _ => {}
            }
            return Vec::new();
        }
        FormStage::Editing => {}
    }
    match key.code {
        KeyCode::Esc => {
            model.back();
            return Vec::new();
        }
        KeyCode::Enter => match form.spec() {
            Err(message) => form.error = Some(message),
            Ok(mut spec) => {
                spec.dry_run = true;
                form.error = None;
                form.stage = FormStage::Planning(Box::new(spec.clone()));
                return vec![Command::Rollouts(Request::Plan(spec))];
            }
        },
        KeyCode::Tab => form.focus = form.focus.step(1),
        KeyCode::BackTab => form.focus = form.focus.step(-1),
        KeyCode::Down | KeyCode::Up if form.focus == FormField::Firmware => {
            let len = match &form.firmware {
                Some(Ok(list)) => list.len(),
                _ => 0,
            };
            let down = key.code == KeyCode::Down;
            if down && form.firmware_cursor + 1 >= len {
                form.focus = form.focus.step(1);
            } else if down {
                form.firmware_cursor += 1;
            } else {
                form.firmware_cursor = form.firmware_cursor.saturating_sub(1);
            }
        }
        KeyCode::Down => form.focus = form.focus.step(1),
        KeyCode::Up => form.focus = form.focus.step(-1),
        KeyCode::Left | KeyCode::Right | KeyCode::Char(' ')
            if matches!(form.focus, FormField::Commit | FormField::Delivery) =>
        {
            if form.focus == FormField::Commit {
                form.commit = match form.commit {
                    CommitPolicy::Device => CommitPolicy::AfterSoak,
                    CommitPolicy::AfterSoak => CommitPolicy::Device,
                };
            } else {
                form.delivery = match form.delivery {
                    Delivery::Push => Delivery::Pull,
                    Delivery::Pull => Delivery::Push,
                };
            }
            form.error = None;
        }
        _ => {
            let focus = form.focus;
            if let Some(input) = form.input_mut(focus) {
                if input.handle(key) {
                    form.error = None;
                }
            }
        }
    }
    Vec::new()
}

/// Text pasted while the form is open goes into the focused field.
pub(super) fn paste_into_form(form: &mut NewRollout, text: &str) {
    if matches!(form.stage, FormStage::Editing) {
        let focus = form.focus;
        if let Some(input) = form.input_mut(focus) {
            input.insert_str(text);
        }
    }
}

/// `u` in the device view.
pub(super) fn open_push(model: &mut Model) -> Vec<Command> {
    if model.refuse(crate::access::Operation::PushFirmware, "push firmware") {
        return Vec::new();
    }
    let Some(view) = model.device.as_mut() else {
        return Vec::new();
    };
    if view.object.is_none() {
        model.error("the device is still loading");
        return Vec::new();
    }
    if !view.online() {
        model.error("the device is offline: a push needs it connected");
        return Vec::new();
    }
    view.push = Some(PushDialog::default());
    vec![Command::Rollouts(Request::Firmware)]
}

/// Keys while the firmware picker is open.
pub(super) fn push_key(model: &mut Model, key: KeyEvent) -> Vec<Command> {
    let Some(view) = model.device.as_mut() else {
        return Vec::new();
    };
    let device = view.id.clone();
    let Some(dialog) = view.push.as_mut() else {
        return Vec::new();
    };
    let len = match &dialog.firmware {
        Some(Ok(list)) => list.len(),
        _ => 0,
    };
    match key.code {
        KeyCode::Esc | KeyCode::Char('q') => view.push = None,
        KeyCode::Down | KeyCode::Char('j') => {
            dialog.cursor = (dialog.cursor + 1).min(len.saturating_sub(1))
        }
        KeyCode::Up | KeyCode::Char('k') => dialog.cursor = dialog.cursor.saturating_sub(1),
        KeyCode::Enter => {
            let Some(firmware) = dialog.chosen() else {
                return Vec::new();
            };
            let name = model.fleet.label(&device);
            let who = if name == device {
                device.clone()
            } else {
                format!("{name} ({device})")
            };
            let question = format!(
                "Push {} ({}{}, {}) to {who}? It restarts into the new image.",
                version_text(firmware),
                if firmware.app.is_empty() {
                    "no app"
                } else {
                    &firmware.app
                },
                if firmware.platform.is_empty() {
                    String::new()
                } else {
                    format!(" for {}", firmware.platform)
                },
                bytes(firmware.size),
            );
            let command = Command::Rollouts(Request::Push {
                device,
                firmware: firmware.id.clone(),
            });
            model.overlay = Some(Overlay::Confirm { question, command });
        }
        _ => model.dirty = false,
    }
    Vec::new()
}

/// A confirmation was answered yes: a push shows as requested at once.
pub(super) fn confirmed(model: &mut Model, command: &Command) {
    let Command::Rollouts(Request::Push { device, firmware }) = command else {
        return;
    };
    let now = model.now;
    let Some(view) = model.device.as_mut().filter(|v| &v.id == device) else {
        return;
    };
    let version = view
        .push
        .as_ref()
        .and_then(|d| d.chosen())
        .filter(|f| &f.id == firmware)
        .map(version_text)
        .unwrap_or_default();
    view.push = None;
    model
        .ota
        .insert(device.clone(), OtaJob::requested(firmware, &version, now));
}

/// A notification: `rollout.*` and `ota.*` events move what is shown.
pub(super) fn notification(model: &mut Model, notification: &Notification) {
    let name = notification.name.as_str();
    if name.starts_with("ota.") {
        // `ota.progress` names no rollout, but it changes no device state either: the
        // page shows its percent from the job.
        if let Some(rollout) = apply_ota(&mut model.ota, notification, model.now) {
            model.rollouts.stale.insert(rollout);
        }
        // The server says what the device runs now. The table hears it from `updated`
        // too, but an `updated` of the connection the device restarted out of can arrive
        // after the fresh one and carry the old version.
        if name == protocol::firmware::OTA_SUCCESS {
            if let Some(version) = notification
                .data
                .get("version")
                .and_then(serde_json::Value::as_str)
                .filter(|v| !v.is_empty())
            {
                model
                    .fleet
                    .modify(&notification.id, |row| row.fw_version = version.into());
            }
        }
    } else if name.starts_with("rollout.") {
        let id = notification.id.as_str();
        if let Some(rollout) = model.rollouts.rollouts.iter_mut().find(|r| r.id == id) {
            apply_event_body(rollout, &notification.data);
        }
        if let Some(object) = model
            .rollout_page
            .as_mut()
            .filter(|p| p.id == id)
            .and_then(|p| p.object.as_mut())
        {
            apply_event_body(object, &notification.data);
        }
        model.rollouts.stale.insert(id.to_string());
    }
}

/// The clock: fetches what events marked, refreshes shown views now and then, and forgets
/// updates that ended long ago.
pub(super) fn tick(model: &mut Model) -> Vec<Command> {
    let now = model.now;
    let mut commands = Vec::new();
    if !model.ota.is_empty() && now - model.rollouts.ota_pruned_at >= 10.0 {
        model.rollouts.ota_pruned_at = now;
        let shown = model.device.as_ref().map(|v| v.id.clone());
        model.ota.retain(|id, job| {
            !job.is_final() || now - job.since < OTA_KEEP_SECS || Some(id) == shown.as_ref()
        });
    }
    match model.screen().clone() {
        Screen::Rollouts => {
            let list = &mut model.rollouts;
            if !list.loading && now - list.listed_at >= REFRESH_SECS {
                return list_fetch(model);
            }
            if list.loading || now - list.listed_at < FETCH_SECS {
                return commands;
            }
            let mut ids: Vec<String> = list
                .stale
                .iter()
                .filter(|id| !list.in_flight.contains(*id))
                .cloned()
                .collect();
            ids.sort();
            for id in ids {
                list.stale.remove(&id);
                list.in_flight.insert(id.clone());
                commands.push(Command::Rollouts(Request::Load { id, devices: false }));
            }
        }
        Screen::Rollout(id) => {
            let Some(page) = model.rollout_page.as_ref().filter(|p| p.id == id) else {
                return commands;
            };
            let (finished, running) = page.object.as_ref().map_or((false, false), |o| {
                (
                    o.state.is_finished() && o.counters.active() == 0,
                    o.state == RolloutState::Running || o.counters.active() > 0,
                )
            });
            let every = if running {
                RUNNING_REFRESH_SECS
            } else {
                REFRESH_SECS
            };
            let since = now - page.fetched_at;
            let due = (model.rollouts.stale.contains(&id) && since >= FETCH_SECS)
                || (!finished && since >= every);
            if due {
                commands.extend(page_fetch(model));
            }
        }
        _ => {}
    }
    commands
}

/// The notify stream came back: what is shown may have missed events.
pub(super) fn reconnected(model: &mut Model) -> Vec<Command> {
    match model.screen() {
        Screen::Rollouts => list_fetch(model),
        Screen::Rollout(_) => page_fetch(model).into_iter().collect(),
        _ => Vec::new(),
    }
}

pub(super) fn reply(model: &mut Model, reply: Reply) -> Vec<Command> {
    model.dirty = true;
    match reply {
        Reply::Listed(result) => {
            let list = &mut model.rollouts;
            list.loading = false;
            match result {
                Ok(rollouts) => {
                    list.replace_all(rollouts);
                    list.loaded = true;
                    list.error = None;
                }
                Err(failure) => list.error = Some(failure.message),
            }
        }
        Reply::Loaded { id, result } => {
            model.rollouts.in_flight.remove(&id);
            match result {
                Ok(object) => {
                    if let Some(page) = model.rollout_page.as_mut().filter(|p| p.id == id) {
                        page.set_object(object.clone(), &model.fleet, model.now);
                    }
                    model.rollouts.upsert(object);
                }
                Err(failure) if failure.status == Some(404) => {
                    model.rollouts.remove(&id);
                    if let Some(page) = model.rollout_page.as_mut().filter(|p| p.id == id) {
                        page.error = Some(failure.message);
                    }
                }
                Err(failure) => {
                    if let Some(page) = model.rollout_page.as_mut().filter(|p| p.id == id) {
                        page.error = Some(failure.message);
                    }
                }
            }
        }
        Reply::Commanded {
            id,
            command,
            result,
        } => match result {
            Ok(object) if command == RolloutCommand::Retry => {
                model.info(format!(
                    "rollout {} created over {}; starting it",
                    rollout_name(&object),
                    count(object.counters.total, "device")
                ));
                let new = object.id.clone();
                model.rollouts.upsert(object);
                let mut commands = open_page(model, &new);
                commands.push(Command::Rollouts(Request::Command {
                    id: new,
                    command: RolloutCommand::Start,
                }));
                return commands;
            }
            Ok(object) => {
                model.info(format!(
                    "rollout {} {}",
                    rollout_name(&object),
                    done_text(command)
                ));
                if let Some(page) = model.rollout_page.as_mut().filter(|p| p.id == id) {
                    page.set_object(object.clone(), &model.fleet, model.now);
                }
                model.rollouts.upsert(object);
                model.rollouts.stale.insert(id);
            }
            Err(failure) => {
                let name = model
                    .rollouts
                    .get(&id)
                    .map_or(id.clone(), |r| rollout_name(r).to_string());
                model.error(format!(
                    "cannot {} rollout {name}: {}",
                    command.as_str(),
                    failure.message
                ));
                model.rollouts.stale.insert(id);
            }
        },
        Reply::Firmware(result) => {
            let result = result.map_err(|f| f.message).map(|mut list| {
                sort_firmware(&mut list);
                list
            });
            if let Some(form) = model.new_rollout.as_mut() {
                form.firmware = Some(result.clone());
                form.firmware_cursor = 0;
            }
            if let Some(view) = model.device.as_mut() {
                // The newest image the device does not run yet is the likely choice.
                let running = model
                    .fleet
                    .get(&view.id)
                    .map(|r| r.fw_version.to_string())
                    .unwrap_or_default();
                if let Some(dialog) = view.push.as_mut() {
                    dialog.cursor = match &result {
                        Ok(list) => list
                            .iter()
                            .position(|f| running.is_empty() || f.version != running)
                            .unwrap_or(0),
                        Err(_) => 0,
                    };
                    dialog.firmware = Some(result);
                }
            }
        }
        Reply::Planned(result) => {
            let Some(form) = model.new_rollout.as_mut() else {
                return Vec::new();
            };
            let FormStage::Planning(spec) = &form.stage else {
                return Vec::new();
            };
            match result {
                Ok(plan) => {
                    form.stage = FormStage::Plan {
                        plan: Box::new(plan),
                        spec: spec.clone(),
                    };
                }
                Err(failure) => {
                    form.stage = FormStage::Editing;
                    form.error = Some(failure.message);
                }
            }
        }
        Reply::Created(result) => {
            let waiting = model
                .new_rollout
                .as_ref()
                .is_some_and(|f| matches!(f.stage, FormStage::Creating { .. }));
            if !waiting {
                // Nobody waits any more, but the rollout exists: say so, start nothing.
                if let Ok(object) = result {
                    model.info(format!(
                        "rollout {} was created and waits, planned: s on its page starts it",
                        rollout_name(&object)
                    ));
                    model.rollouts.upsert(object);
                }
                return Vec::new();
            }
            let Some(form) = model.new_rollout.as_mut() else {
                return Vec::new();
            };
            match result {
                Ok(object) => {
                    let id = object.id.clone();
                    model.info(format!(
                        "rollout {} created over {}; starting it",
                        rollout_name(&object),
                        count(object.counters.total, "device")
                    ));
                    model.rollouts.upsert(object);
                    model.new_rollout = None;
                    model.go_to(Screen::Rollouts);
                    let mut commands = open_page(model, &id);
                    commands.push(Command::Rollouts(Request::Command {
                        id,
                        command: RolloutCommand::Start,
                    }));
                    return commands;
                }
                Err(failure) => {
                    form.stage = FormStage::Editing;
                    form.error = Some(failure.message);
                }
            }
        }
        Reply::Pushed {
            device,
            firmware,
            result,
        } => {
            let now = model.now;
            let label = model.fleet.label(&device).to_string();
            match result {
                Ok(()) => {
                    // The outcome's event may have come first: it stands.
                    if let Some(job) = model.ota.get_mut(&device).filter(|j| {
                        j.firmware == firmware
                            && matches!(j.phase, OtaPhase::Requested | OtaPhase::Sending)
                    }) {
                        job.phase = OtaPhase::Rebooting;
                        job.percent = 100;
                        job.since = now;
                        model.info(format!("{label} took the image and restarts into it"));
                    }
                }
                Err(failure) => {
                    let job = model
                        .ota
                        .entry(device.clone())
                        .or_insert_with(|| OtaJob::requested(&firmware, "", now));
                    if !job.is_final() {
                        job.phase = OtaPhase::Failed {
                            stage: String::new(),
                            message: failure.message.clone(),
                        };
                        job.since = now;
                    }
                    model.error(format!("push to {label} failed: {}", failure.message));
                }
            }
        }
    }
    Vec::new()
}
