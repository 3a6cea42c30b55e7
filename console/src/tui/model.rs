//! The console's state and its one transition function, [`update`].
//!
//! Everything that happens arrives as a [`Msg`]: keys, ticks, notifications, answers of
//! REST calls. [`update`] changes the [`Model`] synchronously and returns the
//! [`Command`]s to run (REST calls, saving a file); the runtime runs them in tasks that
//! answer with more messages. Nothing here touches a terminal or a socket, so tests drive
//! the whole console by feeding messages.

mod device;
mod fleet;
mod tail;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers, MouseEvent, MouseEventKind};
use herd_client::{DeviceObject, Notification};
use serde::Deserialize;
use serde_json::{json, Value};

use super::analytics::{self, AnalyticsView};
use super::bench::{self, Bench};
use super::device::{desired_update, DeviceView, Editor, Pane, Part, RpcDialog, RpcFocus};
use super::input::LineInput;
use super::keymap::{Action, KeyMap, Scope as KeyScope};
use super::notifications::{Tail, TailFilter, Term};
use super::palette::{self, PaletteCommand};
use super::results::{self, Results};
use super::rollouts::{self, NewRollout, OtaJob, RolloutList, RolloutPage};
use crate::access::Operation;
use crate::fleet::{Column, DeviceRow, Filter, Fleet, Sort};
use crate::profile::ContextInfo;
use herd_client::{KeyObject, Scope};

/// A failed REST call as the model keeps it: status and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub status: Option<u16>,
    pub message: String,
}

impl From<herd_client::Error> for Failure {
    fn from(error: herd_client::Error) -> Self {
        Failure {
            status: error.status(),
            message: error.to_string(),
        }
    }
}

impl Failure {
    pub fn new(message: impl Into<String>) -> Self {
        Failure {
            status: None,
            message: message.into(),
        }
    }
}

/// State of the notify stream, for the header.
#[derive(Debug, Clone, PartialEq)]
pub enum Connection {
    Connecting {
        attempt: u32,
    },
    Connected,
    /// Lost; the next attempt is due at `retry_at` (Unix seconds).
    Lost {
        reason: String,
        retry_at: f64,
    },
    /// The server refused the API key; nothing will change without a new one.
    Rejected(String),
}

/// Everything that can happen to the console.
#[derive(Debug, Clone)]
pub enum Msg {
    Key(KeyEvent),
    Mouse(MouseEvent),
    Paste(String),
    Resize(u16, u16),
    /// The clock moved on (Unix seconds).
    Tick(f64),
    Stream(Connection),
    /// A batch of notifications, received at `at`.
    Notifications {
        at: f64,
        items: Vec<Notification>,
    },
    /// The server dropped this many notifications for us (PROTOCOL §5 `lagged`).
    Lagged(u64),
    /// A `GET /devices` listing, already turned into rows by the task that fetched it:
    /// a 100,000-device listing must not stall the loop.
    DevicesLoaded(Result<Vec<DeviceRow>, Failure>),
    DeviceLoaded {
        id: String,
        result: Result<DeviceObject, Failure>,
    },
    ShadowSent {
        id: String,
        result: Result<Value, Failure>,
    },
    RpcListed {
        id: String,
        result: Result<Vec<String>, Failure>,
    },
    RpcDone {
        id: String,
        method: String,
        result: Result<Value, Failure>,
    },
    /// One device's answer to a bulk action, for result set `set`.
    BulkAnswer {
        set: u64,
        id: String,
        result: Result<Value, String>,
    },
    /// Every device of result set `set` answered.
    BulkDone {
        set: u64,
    },
    Saved(Result<(PathBuf, usize), String>),
    /// The end of the server's log (PROTOCOL §7), oldest first, with the log's times.
    History(Result<Vec<(f64, Notification)>, Failure>),
    /// `$EDITOR` returned with this text (or failed).
    ExternalEdit {
        id: String,
        result: Result<String, String>,
    },
    /// The analytics worker reports.
    Analytics(analytics::Event),
    /// A firmware or rollout call answered (boxed: rollout objects are large).
    Rollouts(Box<rollouts::Reply>),
    /// The bench view's ports and flash progress.
    Bench(bench::Msg),
    /// `GET /keys/current`: the key in use, its scope, device filter and expiry.
    KeyLoaded(Result<KeyObject, Failure>),
    /// The server's log, read for one device's timeline.
    TimelineLoaded {
        id: String,
        result: Result<crate::history::Timeline, Failure>,
    },
    /// The console switched to another profile (with a warning when read-only holds only
    /// in the console), or could not.
    Switched(Result<(ProfileInfo, Option<String>), String>),
}

impl From<rollouts::Reply> for Msg {
    fn from(reply: rollouts::Reply) -> Self {
        Msg::Rollouts(Box::new(reply))
    }
}

/// What a bulk action does to each device.
#[derive(Debug, Clone, PartialEq)]
pub enum BulkAction {
    /// A PROTOCOL §4.1 update of `desired`.
    Desired(Value),
    Call {
        method: String,
        params: Option<Value>,
    },
    /// `DELETE /devices/:id`.
    Delete,
    /// `POST /devices/:id` with a new name.
    Rename(String),
}

/// Work for the runtime.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    LoadDevices,
    LoadDevice(String),
    SendShadow {
        id: String,
        update: Value,
    },
    ListRpc(String),
    CallRpc {
        id: String,
        method: String,
        params: Option<Value>,
    },
    /// Runs `action` on each device, answering with a [`Msg::BulkAnswer`] per device and
    /// a [`Msg::BulkDone`] at the end; `set` is the result set they fill.
    Bulk {
        set: u64,
        label: String,
        ids: Vec<String>,
        action: BulkAction,
    },
    Save {
        path: PathBuf,
        lines: Vec<String>,
    },
    /// The last `lines` lines of the server's log, for the tail; answers with
    /// [`Msg::History`].
    LoadHistory {
        lines: u64,
    },
    /// Suspend the screen, edit `text` in `$EDITOR`, answer with [`Msg::ExternalEdit`].
    ExternalEditor {
        id: String,
        text: String,
    },
    /// Tell the analytics worker (started on the first) what the view shows, or that it
    /// was left.
    Analytics(analytics::Request),
    /// A firmware or rollout call; answers with [`Msg::Rollouts`].
    Rollouts(rollouts::Request),
    /// Ports or a flash for the bench view; answers with [`Msg::Bench`].
    Bench(bench::Task),
    /// `GET /keys/current`; answers with [`Msg::KeyLoaded`].
    LoadKey,
    /// Reads the server's log (PROTOCOL §7) for device `0`'s timeline; answers with
    /// [`Msg::TimelineLoaded`].
    LoadTimeline(String),
    /// Switch the whole console to the config's profile of this name: a new client (and
    /// read key when read-only), a new stream; answers with [`Msg::Switched`].
    SwitchProfile(String),
    Quit,
}

/// A full-screen view; the navigation stack holds these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Screen {
    Fleet,
    Device(String),
    Notifications,
    /// Reports over the notification log.
    Analytics,
    /// Firmware rollouts.
    Rollouts,
    /// One rollout's page.
    Rollout(String),
    /// Planning a rollout from the fleet's marks or filter.
    NewRollout,
    /// What bulk actions and RPC calls answered.
    Results,
    /// Flashing a board on the bench.
    Bench,
}

/// What the one-line prompt is asking for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptKind {
    FleetFilter,
    TailDevice,
    TailName,
    TailRegex,
    SavePath,
    SaveResults,
}

impl PromptKind {
    pub fn label(self) -> &'static str {
        match self {
            PromptKind::FleetFilter => "filter",
            PromptKind::TailDevice => "device",
            PromptKind::TailName => "events",
            PromptKind::TailRegex => "filter",
            PromptKind::SavePath => "save to",
            PromptKind::SaveResults => "save results to",
        }
    }

    /// What the prompt takes, shown while it is empty.
    pub fn hint(self) -> &'static str {
        match self {
            PromptKind::FleetFilter => "text, field:value, globs: state:offline fw:1.2 name:lamp-*",
            PromptKind::TailDevice => "a name, an id, or the start of either",
            PromptKind::TailName => "globs; a leading - hides: rpc.* -rpc.out.Log",
            PromptKind::TailRegex => "name:G -name:G device:D -device:D, a regex; -regex hides",
            PromptKind::SavePath | PromptKind::SaveResults => "",
        }
    }
}

/// Something drawn over the current screen that takes the keys first.
#[derive(Debug)]
pub enum Overlay {
    Palette {
        input: LineInput,
        error: Option<String>,
    },
    /// Keys and commands, scrolled to line `scroll`.
    Help { scroll: usize },
    Prompt {
        kind: PromptKind,
        input: LineInput,
        error: Option<String>,
    },
    /// A question that must be answered before `command` runs.
    Confirm { question: String, command: Command },
    /// The config's profiles (`:ctx`), the cursor on `selected`.
    Contexts { selected: usize },
}

/// A line in the status bar.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub text: String,
    pub error: bool,
    pub at: f64,
}

/// How long a status line stays.
const STATUS_SECS: f64 = 6.0;
/// Lines of the server's log the tail starts with.
pub const HISTORY_LINES: u64 = 500;
/// An error stays at least this long, then until the next key.
const ERROR_SECS: f64 = 2.0;
/// How often a changing fleet is re-sorted and re-filtered.
const REFRESH_SECS: f64 = 0.5;
/// Rows the chrome takes: header, breadcrumbs, table header, footer.
pub const CHROME_ROWS: u16 = 4;

/// Connection facts shown in the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileInfo {
    pub name: String,
    pub server: String,
    pub read_only: bool,
}

/// Table selection and marks.
#[derive(Debug, Default)]
pub struct FleetUi {
    /// Table position of the cursor.
    pub selected: usize,
    /// First visible table position.
    pub offset: usize,
    /// Device the cursor is on, so it stays on it when rows move.
    pub selected_id: Option<Box<str>>,
    pub marked: HashSet<Box<str>>,
}

/// The console's whole state.
pub struct Model {
    pub profile: ProfileInfo,
    pub now: f64,
    pub size: (u16, u16),
    pub connection: Connection,
    pub fleet: Fleet,
    pub fleet_ui: FleetUi,
    /// A `GET /devices` is in flight.
    pub loading: bool,
    /// Devices the stream told us about since the last listing was requested.
    touched: HashSet<Box<str>>,
    pub loaded_once: bool,
    pub load_error: Option<String>,
    /// When the news stopped: the stream was lost at this time (Unix seconds) and the
    /// table has not been listed again since. Rows then show what was last heard, marked.
    pub stale_since: Option<f64>,
    pub tail: Tail,
    /// What bulk actions and RPC calls answered, until dismissed.
    pub results: Results,
    /// The tail's filter before a device's `t` replaced it, put back when that tail is
    /// left.
    pub tail_filter_before: Option<TailFilter>,
    pub device: Option<DeviceView>,
    pub analytics: AnalyticsView,
    pub rollouts: RolloutList,
    pub bench: Bench,
    pub rollout_page: Option<RolloutPage>,
    pub new_rollout: Option<NewRollout>,
    /// Each device's latest firmware update, from `ota.*` events (PROTOCOL §10.6).
    pub ota: HashMap<String, OtaJob>,
    pub stack: Vec<Screen>,
    pub overlay: Option<Overlay>,
    pub status: Option<Status>,
    /// Something visible changed since the last draw.
    pub dirty: bool,
    pub quit: bool,
    last_refresh: f64,
    /// The API key in use as the server describes it (PROTOCOL §11); `None` until it
    /// answered, or when it cannot say (a password, an older server).
    pub key: Option<KeyObject>,
    /// Which key does what (the config's `[keys]` over the defaults).
    pub keys: KeyMap,
    /// The config's profiles, for `:ctx`.
    pub contexts: Vec<ContextInfo>,
}

/// Options of a new [`Model`].
#[derive(Debug, Clone)]
pub struct ModelOptions {
    pub profile: ProfileInfo,
    /// Lines the notification ring keeps.
    pub tail_lines: usize,
    pub now: f64,
    pub size: (u16, u16),
}

impl Model {
    pub fn new(options: ModelOptions) -> Self {
        Model {
            profile: options.profile,
            now: options.now,
            size: options.size,
            connection: Connection::Connecting { attempt: 1 },
            fleet: Fleet::new(),
            fleet_ui: FleetUi::default(),
            loading: false,
            touched: HashSet::new(),
            loaded_once: false,
            load_error: None,
            stale_since: None,
            tail: Tail::new(options.tail_lines),
            results: Results::default(),
            tail_filter_before: None,
            device: None,
            analytics: AnalyticsView::default(),
            rollouts: RolloutList::default(),
            bench: Bench::default(),
            rollout_page: None,
            new_rollout: None,
            ota: HashMap::new(),
            stack: vec![Screen::Fleet],
            overlay: None,
            status: None,
            dirty: true,
            quit: false,
            last_refresh: options.now,
            key: None,
            keys: KeyMap::default(),
            contexts: Vec::new(),
        }
    }

    /// The console afresh on another profile: what was shown came from the old server.
    /// The key map, the profiles and the terminal's size stay.
    fn switch_to(&mut self, profile: ProfileInfo) {
        let mut fresh = Model::new(ModelOptions {
            profile,
            tail_lines: self.tail.capacity(),
            now: self.now,
            size: self.size,
        });
        fresh.keys = std::mem::take(&mut self.keys);
        fresh.contexts = std::mem::take(&mut self.contexts);
        fresh.bench.ca_cert = self.bench.ca_cert.take();
        *self = fresh;
    }

    /// The scope of the key in use, once the server said it.
    pub fn scope(&self) -> Option<Scope> {
        self.key.as_ref().and_then(|key| key.scope)
    }

    /// Whether the key in use may do `operation` (PROTOCOL §11); true while unknown.
    pub fn may(&self, operation: Operation) -> bool {
        operation.allowed(self.scope())
    }

    /// Refuses `operation` (described as `what`) in read-only mode or when the key's scope
    /// does not cover it, saying why; true if refused.
    pub(super) fn refuse(&mut self, operation: Operation, what: &str) -> bool {
        self.refuse_write(what) || self.refuse_scope(operation, what)
    }

    /// Refuses `operation` when the key's scope does not cover it, naming the scope it
    /// needs instead of calling the server; true if refused.
    pub(super) fn refuse_scope(&mut self, operation: Operation, what: &str) -> bool {
        match self.scope() {
            Some(scope) if !operation.allowed(Some(scope)) => {
                self.error(operation.refusal(what, scope));
                true
            }
            _ => false,
        }
    }

    pub fn screen(&self) -> &Screen {
        self.stack.last().unwrap_or(&Screen::Fleet)
    }

    /// Rows available to the fleet table.
    pub fn table_rows(&self) -> usize {
        self.size.1.saturating_sub(CHROME_ROWS) as usize
    }

    pub(super) fn info(&mut self, text: impl Into<String>) {
        self.status = Some(Status {
            text: text.into(),
            error: false,
            at: self.now,
        });
    }

    pub(super) fn error(&mut self, text: impl Into<String>) {
        self.status = Some(Status {
            text: text.into(),
            error: true,
            at: self.now,
        });
    }

    /// Refuses a write in read-only mode, saying so; true if refused.
    pub(super) fn refuse_write(&mut self, what: &str) -> bool {
        if self.profile.read_only {
            self.error(format!("read-only profile: refusing to {what}"));
            true
        } else {
            false
        }
    }

    fn selected_row(&self) -> Option<&DeviceRow> {
        self.fleet.row_at(self.fleet_ui.selected)
    }

    /// Keeps the cursor on the same device after the order changed, and in range.
    fn follow_selection(&mut self) {
        if let Some(id) = self.fleet_ui.selected_id.clone() {
            if let Some(position) = self.fleet.position_of(&id) {
                self.fleet_ui.selected = position;
            }
        }
        self.clamp_selection();
    }

    fn clamp_selection(&mut self) {
        let len = self.fleet.view_len();
        let ui = &mut self.fleet_ui;
        ui.selected = ui.selected.min(len.saturating_sub(1));
        let rows = (self.size.1.saturating_sub(CHROME_ROWS) as usize).max(1);
        if ui.selected < ui.offset {
            ui.offset = ui.selected;
        } else if ui.selected >= ui.offset + rows {
            ui.offset = ui.selected + 1 - rows;
        }
        ui.offset = ui.offset.min(len.saturating_sub(rows.min(len)));
        ui.selected_id = self.fleet.row_at(ui.selected).map(|r| r.id.clone());
    }

    fn move_selection(&mut self, delta: isize) {
        let len = self.fleet.view_len();
        if len == 0 {
            return;
        }
        let target = (self.fleet_ui.selected as isize + delta).clamp(0, len as isize - 1);
        self.fleet_ui.selected = target as usize;
        self.clamp_selection();
    }

    pub(super) fn open_device(&mut self, id: &str) -> Vec<Command> {
        self.device = Some(DeviceView::new(id));
        if matches!(self.screen(), Screen::Device(_)) {
            self.stack.pop();
        }
        self.stack.push(Screen::Device(id.to_string()));
        vec![Command::LoadDevice(id.to_string())]
    }

    pub(super) fn go_to(&mut self, screen: Screen) {
        if let Some(filter) = self.tail_filter_before.take() {
            self.tail.filter = filter;
        }
        self.stack.truncate(1);
        if screen != Screen::Fleet {
            self.stack.push(screen);
        }
        self.forget_closed();
    }

    pub(super) fn back(&mut self) {
        if self.stack.len() > 1 {
            if self.stack.pop() == Some(Screen::Notifications) {
                if let Some(filter) = self.tail_filter_before.take() {
                    self.tail.filter = filter;
                }
            }
            if !matches!(self.screen(), Screen::Device(_)) {
                self.device = None;
            }
            self.forget_closed();
        }
    }

    /// Drops the state of views no longer on the stack.
    pub(super) fn forget_closed(&mut self) {
        if !self.stack.iter().any(|s| matches!(s, Screen::Rollout(_))) {
            self.rollout_page = None;
        }
        if !self.stack.contains(&Screen::NewRollout) {
            self.new_rollout = None;
        }
        if !self.stack.iter().any(|s| matches!(s, Screen::Device(_))) {
            self.device = None;
        }
    }

    /// Devices a bulk action applies to: the marked ones, else the one under the cursor.
    fn targets(&self) -> Vec<String> {
        if let Screen::Device(id) = self.screen() {
            return vec![id.clone()];
        }
        if self.fleet_ui.marked.is_empty() {
            self.selected_row()
                .map(|r| vec![r.id.to_string()])
                .unwrap_or_default()
        } else {
            let mut ids: Vec<String> = self
                .fleet_ui
                .marked
                .iter()
                .map(|id| id.to_string())
                .collect();
            ids.sort();
            ids
        }
    }

    fn confirm_bulk(&mut self, label: String, action: BulkAction) {
        let ids = self.targets();
        if ids.is_empty() {
            self.error("no device selected");
            return;
        }
        let count = ids.len();
        // What and how many first: a narrow box cuts the names at the end, never those.
        let question = if count == 1 {
            let name = self.fleet.label(&ids[0]);
            if name == ids[0] {
                format!("{label} on device {name}?")
            } else {
                format!("{label} on device {name} ({})?", ids[0])
            }
        } else {
            const NAMED: usize = 6;
            let mut names: Vec<&str> = ids
                .iter()
                .take(NAMED)
                .map(|id| self.fleet.label(id))
                .collect();
            let more = format!("{} more", count - NAMED.min(count));
            if count > NAMED {
                names.push(&more);
            }
            format!("{label} on {count} devices? ({})", names.join(", "))
        };
        self.overlay = Some(Overlay::Confirm {
            question,
            command: Command::Bulk {
                set: 0,
                label,
                ids,
                action,
            },
        });
    }

    fn apply_notification(&mut self, notification: &Notification) {
        let id = notification.id.as_str();
        // The open device's timeline goes on live once the log was read.
        if let Some(Some(Ok(timeline))) = self
            .device
            .as_mut()
            .filter(|v| v.id == id)
            .map(|v| v.timeline.as_mut())
        {
            timeline.feed(self.now, id, &notification.name, &notification.data);
        }
        match notification.name.as_str() {
            "online" | "offline" => {
                let online = notification.name == "online";
                let now = self.now;
                self.fleet.modify(id, |row| {
                    row.online = online;
                    row.last_seen = Some(now);
                    if online {
                        // A reconnect reboots the clock only when Sys.GetInfo says so; until
                        // then count from now rather than show a stale uptime.
                        row.uptime = row.uptime.map(|(_, _)| (0.0, now));
                    }
                });
                if let Some(view) = self.device.as_mut().filter(|v| v.id == id) {
                    if let Some(object) = view.object.as_mut() {
                        object.online = online;
                    }
                }
            }
            "created" | "updated" => {
                let Ok(object) = DeviceObject::deserialize(&notification.data) else {
                    return;
                };
                self.fleet.upsert(DeviceRow::from_object(&object, self.now));
                if let Some(view) = self.device.as_mut().filter(|v| v.id == id) {
                    view.set_object(object, self.now);
                }
            }
            "deleted" => {
                self.fleet.remove(id);
                self.fleet_ui.marked.remove(id);
                self.follow_selection();
                if self.device.as_ref().is_some_and(|v| v.id == id) {
                    if let Some(view) = self.device.as_mut() {
                        view.error = Some("this device was deleted".into());
                    }
                }
            }
            _ => return,
        }
        self.touched.insert(id.into());
    }
}

/// Applies one message; returns the work it asks for.
pub fn update(model: &mut Model, msg: Msg) -> Vec<Command> {
    let was_open = *model.screen() == Screen::Analytics;
    let before = model.analytics.selection;
    let mut commands = apply(model, msg);
    // However the view was reached or left (key, palette, back), the worker hears of it,
    // and of every change of what it shows.
    let open = *model.screen() == Screen::Analytics;
    if open && (!was_open || model.analytics.selection != before) {
        commands.push(Command::Analytics(analytics::Request::Show(
            model.analytics.selection,
        )));
    } else if was_open && !open {
        commands.push(Command::Analytics(analytics::Request::Hide));
    }
    commands
}

fn apply(model: &mut Model, msg: Msg) -> Vec<Command> {
    match msg {
        Msg::Tick(now) => {
            let second_changed = now.floor() != model.now.floor();
            model.now = now;
            // Errors stay until a key is pressed: nobody should miss one by looking away.
            if model
                .status
                .as_ref()
                .is_some_and(|s| !s.error && now - s.at > STATUS_SECS)
            {
                model.status = None;
                model.dirty = true;
            }
            // Re-sorting costs O(n log n): about 25 ms at 100k rows. Big fleets re-sort
            // less often so that keys stay responsive while notifications flow.
            let interval = REFRESH_SECS.max(model.fleet.len() as f64 / 200_000.0);
            if now - model.last_refresh >= interval {
                model.last_refresh = now;
                if model.fleet.refresh() {
                    model.follow_selection();
                    model.dirty = true;
                }
            }
            // Relative times ("12s ago", uptime) move once a second.
            if second_changed {
                model.dirty = true;
            }
            rollouts::tick(model)
        }
        Msg::Resize(width, height) => {
            model.size = (width, height);
            model.clamp_selection();
            model.dirty = true;
            Vec::new()
        }
        Msg::Stream(connection) => {
            let connected = connection == Connection::Connected;
            if !connected && model.loaded_once && model.stale_since.is_none() {
                model.stale_since = Some(model.now);
            }
            model.connection = connection;
            model.dirty = true;
            if connected {
                // (Re)connected: events may have been missed while away, so list again.
                model.loading = true;
                model.touched.clear();
                let mut commands = vec![Command::LoadDevices, Command::LoadKey];
                if let Some(view) = &model.device {
                    commands.push(Command::LoadDevice(view.id.clone()));
                }
                // Once a session: the tail starts with what happened before it opened.
                if !model.tail.history_requested {
                    model.tail.history_requested = true;
                    commands.push(Command::LoadHistory {
                        lines: HISTORY_LINES.min(model.tail.capacity() as u64),
                    });
                }
                commands.extend(rollouts::reconnected(model));
                commands
            } else {
                Vec::new()
            }
        }
        Msg::Notifications { at, items } => {
            model.now = model.now.max(at);
            for notification in &items {
                model.tail.push(at, notification);
                model.apply_notification(notification);
                rollouts::notification(model, notification);
            }
            model.dirty = true;
            Vec::new()
        }
        Msg::Lagged(dropped) => {
            model.tail.lagged += dropped;
            model.dirty = true;
            // Rollout events may be among the dropped: list again on the next tick.
            model.rollouts.listed_at = f64::NEG_INFINITY;
            if let Some(page) = model.rollout_page.as_ref() {
                model.rollouts.stale.insert(page.id.clone());
            }
            Vec::new()
        }
        Msg::DevicesLoaded(result) => {
            model.loading = false;
            model.dirty = true;
            match result {
                Ok(rows) => {
                    let touched = std::mem::take(&mut model.touched);
                    model.fleet.replace_all(rows, &touched);
                    model.loaded_once = true;
                    model.load_error = None;
                    // A listing taken while the stream is up is the news again.
                    if model.connection == Connection::Connected {
                        model.stale_since = None;
                    }
                    model.follow_selection();
                }
                Err(failure) => model.load_error = Some(failure.message),
            }
            Vec::new()
        }
        Msg::DeviceLoaded { id, result } => device::device_loaded(model, id, result),
        Msg::ShadowSent { id, result } => device::shadow_sent(model, id, result),
        Msg::RpcListed { id, result } => device::rpc_listed(model, id, result),
        Msg::RpcDone { id, method, result } => device::rpc_done(model, id, method, result),
        Msg::BulkAnswer { set, id, result } => {
            model.dirty = true;
            let now = model.now;
            model.results.record(set, &id, result, now);
            Vec::new()
        }
        Msg::BulkDone { set } => {
            model.dirty = true;
            let Some(set) = model.results.get_mut(set) else {
                return Vec::new();
            };
            let message = format!("{}: {} (o shows the results)", set.label, set.progress());
            if set.failed() > 0 {
                model.error(message);
            } else {
                model.info(message);
            }
            Vec::new()
        }
        Msg::History(result) => {
            model.dirty = true;
            match result {
                Ok(items) => {
                    let added = model.tail.prepend_history(items);
                    tracing::debug!(added, "tail history from the server's log");
                }
                Err(failure) => {
                    tracing::warn!(error = %failure.message, "no tail history");
                    model.tail.history_error = Some(failure.message);
                }
            }
            Vec::new()
        }
        Msg::Saved(result) => {
            model.dirty = true;
            match result {
                Ok((path, lines)) => {
                    model.info(format!("saved {lines} lines to {}", path.display()))
                }
                Err(reason) => model.error(reason),
            }
            Vec::new()
        }
        Msg::ExternalEdit { id, result } => {
            model.dirty = true;
            match result {
                Ok(text) => {
                    let Some(view) = model.device.as_mut().filter(|v| v.id == id) else {
                        return Vec::new();
                    };
                    let base = view.section("desired");
                    let mut editor = Editor::with_text(&text, &base, view.version());
                    // Show what came back in the built-in editor, checked: valid text is
                    // sent at once, invalid text stays there with the reason.
                    let commands = device::submit_editor(&mut editor, &id);
                    view.editor = Some(editor);
                    commands
                }
                Err(reason) => {
                    model.error(reason);
                    Vec::new()
                }
            }
        }
        Msg::Analytics(event) => {
            model.dirty = true;
            let report = matches!(event, analytics::Event::Report(_));
            model.analytics.apply(event);
            if report {
                order_analytics_rows(model);
            }
            Vec::new()
        }
        Msg::KeyLoaded(result) => {
            model.dirty = true;
            match result {
                Ok(key) => model.key = Some(key),
                // A password login or an older server: the console cannot tell, and the
                // server still refuses what the key may not do.
                Err(failure) => {
                    tracing::info!(error = %failure.message, "the key's scope is unknown");
                    model.key = None;
                }
            }
            Vec::new()
        }
        Msg::TimelineLoaded { id, result } => device::timeline_loaded(model, id, result),
        Msg::Switched(result) => {
            model.dirty = true;
            match result {
                Ok((profile, warning)) => {
                    let name = profile.name.clone();
                    model.switch_to(profile);
                    match warning {
                        Some(warning) => model.error(warning),
                        None => model.info(format!("switched to profile {name}")),
                    }
                }
                Err(reason) => model.error(reason),
            }
            Vec::new()
        }
        Msg::Rollouts(reply) => rollouts::reply(model, *reply),
        Msg::Bench(msg) => bench::reply(model, msg),
        Msg::Paste(text) => {
            model.dirty = true;
            paste(model, &text);
            Vec::new()
        }
        Msg::Mouse(mouse) => mouse_event(model, mouse),
        Msg::Key(key) => {
            if key.kind == KeyEventKind::Release {
                return Vec::new();
            }
            model.dirty = true;
            if model
                .status
                .as_ref()
                .is_some_and(|s| s.error && model.now - s.at >= ERROR_SECS)
            {
                model.status = None;
            }
            key_event(model, key)
        }
    }
}

fn paste(model: &mut Model, text: &str) {
    match &mut model.overlay {
        Some(Overlay::Palette { input, .. }) | Some(Overlay::Prompt { input, .. }) => {
            input.insert_str(text);
            return;
        }
        _ => {}
    }
    if *model.screen() == Screen::NewRollout {
        if let Some(form) = model.new_rollout.as_mut() {
            rollouts::paste_into_form(form, text);
        }
        return;
    }
    if let Some(view) = model.device.as_mut() {
        if let Some(editor) = view.editor.as_mut() {
            editor.textarea.insert_str(text);
        } else if let Some(dialog) = view.rpc.as_mut() {
            dialog.params.insert_str(text);
        }
    }
}

fn mouse_event(model: &mut Model, mouse: MouseEvent) -> Vec<Command> {
    let step = match mouse.kind {
        MouseEventKind::ScrollDown => 3,
        MouseEventKind::ScrollUp => -3,
        MouseEventKind::Down(_) => {
            // Rows start under the header, breadcrumbs and table header.
            if *model.screen() == Screen::Fleet && model.overlay.is_none() && mouse.row >= 3 {
                let position = model.fleet_ui.offset + (mouse.row - 3) as usize;
                if position < model.fleet.view_len() {
                    model.fleet_ui.selected = position;
                    model.clamp_selection();
                    model.dirty = true;
                }
            }
            return Vec::new();
        }
        _ => return Vec::new(),
    };
    model.dirty = true;
    match model.screen() {
        Screen::Fleet => model.move_selection(step),
        Screen::Notifications => model.tail.scroll(step),
        Screen::Analytics => {
            let rows = analytics::table_rows(model.size);
            model.analytics.scroll(step, rows);
        }
        Screen::Rollouts => model.rollouts.move_cursor(step),
        Screen::Rollout(_) => {
            if let Some(page) = model.rollout_page.as_mut() {
                page.move_cursor(step);
            }
        }
        Screen::Results => {
            let rows = results::list_rows(model.size);
            model.results.move_by(step, rows);
        }
        Screen::Device(_) | Screen::NewRollout | Screen::Bench => {}
    }
    Vec::new()
}

fn is_ctrl(key: &KeyEvent, c: char) -> bool {
    key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char(c)
}

/// A view's own key handling.
type KeyHandler = fn(&mut Model, KeyEvent) -> Vec<Command>;

fn key_event(model: &mut Model, key: KeyEvent) -> Vec<Command> {
    if is_ctrl(&key, 'c') {
        model.quit = true;
        return vec![Command::Quit];
    }
    if model.overlay.is_some() {
        return overlay_key(model, key);
    }
    if let Some(commands) = device::device_modal_key(model, key) {
        return commands;
    }
    // The form takes every key: its fields are typed into.
    if *model.screen() == Screen::NewRollout {
        return rollouts::form_key(model, key);
    }
    if *model.screen() == Screen::Bench && model.bench.editing != bench::Field::None {
        return bench::key(model, key);
    }
    match model.keys.action(KeyScope::Global, &key) {
        Some(Action::Palette) => {
            model.overlay = Some(Overlay::Palette {
                input: LineInput::default(),
                error: None,
            });
            return Vec::new();
        }
        Some(Action::Help) => {
            model.overlay = Some(Overlay::Help { scroll: 0 });
            return Vec::new();
        }
        _ => {}
    }
    match model.screen().clone() {
        Screen::Fleet => fleet::fleet_key(model, key),
        Screen::Device(id) => device::device_key(model, key, &id),
        Screen::Notifications => tail::tail_key(model, key),
        Screen::NewRollout => rollouts::form_key(model, key),
        // These views match on their built-in keys: the key map translates to them.
        screen => {
            let (scope, handler): (KeyScope, KeyHandler) = match screen {
                Screen::Analytics => (KeyScope::Analytics, analytics_key),
                Screen::Rollouts => (KeyScope::Rollouts, rollouts::list_key),
                Screen::Rollout(_) => (KeyScope::Rollout, rollouts::page_key),
                Screen::Results => (KeyScope::Results, results::key),
                _ => (KeyScope::Bench, bench::key),
            };
            match model.keys.translate(scope, key) {
                Some(key) => handler(model, key),
                None => {
                    model.dirty = false;
                    Vec::new()
                }
            }
        }
    }
}

fn overlay_key(model: &mut Model, key: KeyEvent) -> Vec<Command> {
    let Some(overlay) = model.overlay.take() else {
        return Vec::new();
    };
    match overlay {
        Overlay::Help { scroll } => {
            super::help::key(model, scroll, key);
            Vec::new()
        }
        Overlay::Contexts { selected } => {
            let count = model.contexts.len();
            let selected = match key.code {
                KeyCode::Down | KeyCode::Char('j') => (selected + 1).min(count.saturating_sub(1)),
                KeyCode::Up | KeyCode::Char('k') => selected.saturating_sub(1),
                KeyCode::Home | KeyCode::Char('g') => 0,
                KeyCode::End | KeyCode::Char('G') => count.saturating_sub(1),
                KeyCode::Enter => {
                    let Some(context) = model.contexts.get(selected) else {
                        return Vec::new();
                    };
                    if context.name == model.profile.name {
                        model.info(format!("already on profile {}", context.name));
                        return Vec::new();
                    }
                    let name = context.name.clone();
                    model.info(format!("switching to profile {name}…"));
                    return vec![Command::SwitchProfile(name)];
                }
                KeyCode::Esc | KeyCode::Char('q') => return Vec::new(),
                _ => selected,
            };
            model.overlay = Some(Overlay::Contexts { selected });
            Vec::new()
        }
        Overlay::Confirm { question, command } => match key.code {
            KeyCode::Char('y') | KeyCode::Char('Y') => {
                model.info("working…");
                rollouts::confirmed(model, &command);
                vec![start_results(model, command)]
            }
            KeyCode::Char('n') | KeyCode::Char('N') | KeyCode::Esc => {
                model.info("cancelled");
                Vec::new()
            }
            _ => {
                model.overlay = Some(Overlay::Confirm { question, command });
                Vec::new()
            }
        },
        Overlay::Palette { mut input, error } => match key.code {
            KeyCode::Esc => Vec::new(),
            KeyCode::Tab => {
                if let Some(completed) = palette::complete(input.text()) {
                    input.set(&completed);
                }
                model.overlay = Some(Overlay::Palette { input, error: None });
                Vec::new()
            }
            KeyCode::Enter => match palette::parse(input.text()) {
                Ok(command) => {
                    // A new command makes older messages moot.
                    model.status = None;
                    run_palette(model, command)
                }
                Err(message) => {
                    model.overlay = Some(Overlay::Palette {
                        input,
                        error: Some(message),
                    });
                    Vec::new()
                }
            },
            _ => {
                let changed = input.handle(key);
                model.overlay = Some(Overlay::Palette {
                    input,
                    error: if changed { None } else { error },
                });
                Vec::new()
            }
        },
        Overlay::Prompt {
            kind,
            mut input,
            error,
        } => match key.code {
            KeyCode::Esc => {
                if kind == PromptKind::FleetFilter {
                    // Esc abandons a live filter.
                    set_fleet_filter(model, "");
                }
                Vec::new()
            }
            KeyCode::Enter => finish_prompt(model, kind, input),
            _ => {
                input.handle(key);
                if kind == PromptKind::FleetFilter {
                    // The table filters as you type, like k9s.
                    set_fleet_filter(model, input.text());
                }
                model.overlay = Some(Overlay::Prompt { kind, input, error });
                Vec::new()
            }
        },
    }
}

/// Asks to delete the marked devices, else the one under the cursor or open.
fn delete_targets(model: &mut Model) {
    if !model.refuse(Operation::DeleteDevice, "delete devices") {
        model.confirm_bulk("delete".into(), BulkAction::Delete);
    }
}

/// Opens the results pane on the newest set.
pub(super) fn open_results(model: &mut Model) {
    model.results.show_last();
    if *model.screen() != Screen::Results {
        model.stack.push(Screen::Results);
    }
}

/// A confirmed bulk action opens its result set in the results pane, where the answers
/// arrive; other commands pass through.
fn start_results(model: &mut Model, command: Command) -> Command {
    let Command::Bulk {
        label, ids, action, ..
    } = command
    else {
        return command;
    };
    let devices = ids
        .iter()
        .map(|id| {
            let name = model.fleet.get(id).map(|r| r.name.to_string());
            (id.clone(), name.unwrap_or_default())
        })
        .collect();
    let set = model.results.start(label.clone(), devices, model.now);
    if *model.screen() != Screen::Results {
        model.stack.push(Screen::Results);
    }
    Command::Bulk {
        set,
        label,
        ids,
        action,
    }
}

fn set_fleet_filter(model: &mut Model, text: &str) {
    model.fleet.set_filter(Filter::parse(text));
    model.follow_selection();
}

fn finish_prompt(model: &mut Model, kind: PromptKind, input: LineInput) -> Vec<Command> {
    let text = input.text().trim().to_string();
    let value = (!text.is_empty()).then(|| text.clone());
    match kind {
        PromptKind::FleetFilter => set_fleet_filter(model, &text),
        PromptKind::TailDevice => match value {
            None => {
                model.tail.filter.device = None;
                model.tail.filter.device_label = None;
            }
            Some(query) => match resolve_device(model, &query) {
                Ok(id) => {
                    model.tail.filter.device_label =
                        Some(model.fleet.label(&id).to_string()).filter(|label| *label != id);
                    model.tail.filter.device = Some(id);
                }
                Err(message) => {
                    model.overlay = Some(Overlay::Prompt {
                        kind,
                        input,
                        error: Some(message),
                    });
                }
            },
        },
        PromptKind::TailName => model.tail.filter.set_names(&text),
        PromptKind::TailRegex => match tail_filter(model, &text) {
            Ok(filter) => model.tail.filter = filter,
            Err(error) => {
                model.overlay = Some(Overlay::Prompt {
                    kind,
                    input,
                    error: Some(error),
                });
            }
        },
        PromptKind::SavePath => return save_tail(model, value),
        PromptKind::SaveResults => {
            let path = value.unwrap_or_else(|| format!("herd-results-{}.json", model.now as u64));
            return results::save(model, path);
        }
    }
    Vec::new()
}

/// The tail filter a `/` line describes (see [`TailFilter::parse_terms`]), its devices
/// named as anywhere else.
fn tail_filter(model: &Model, text: &str) -> Result<TailFilter, String> {
    let mut filter = TailFilter::default();
    let regex = |text: &str| regex::Regex::new(text).map_err(|e| format!("invalid regex: {e}"));
    for term in TailFilter::parse_terms(text) {
        match term {
            Term::Name(glob) => filter.names.push(glob),
            Term::NotName(glob) => filter.exclude_names.push(glob),
            Term::Device(query) => {
                let id = resolve_device(model, &query)?;
                filter.device_label =
                    Some(model.fleet.label(&id).to_string()).filter(|label| *label != id);
                filter.device = Some(id);
            }
            Term::NotDevice(query) => {
                let id = resolve_device(model, &query)?;
                let label = model.fleet.label(&id).to_string();
                filter.exclude_devices.push((id, label));
            }
            Term::Regex(text) => filter.regex = Some(regex(&text)?),
            Term::NotRegex(text) => filter.exclude_regex = Some(regex(&text)?),
        }
    }
    Ok(filter)
}

/// The id of the device `query` names in the fleet: an id, a name, or a unique start of
/// either. Before the fleet is listed, or when it does not know the text, the text is
/// taken as an id and the server has the last word.
pub(super) fn resolve_device(model: &Model, query: &str) -> Result<String, String> {
    use herd_analytics::names::{describe_candidates, Resolution};
    match model.fleet.resolve(query) {
        Resolution::Found(id) => Ok(id),
        Resolution::Ambiguous(candidates) => Err(format!(
            "{query:?} names several devices: {}",
            describe_candidates(&candidates)
        )),
        Resolution::NotFound if model.loaded_once && !model.fleet.is_empty() => {
            Err(format!("no device has the id or name {query:?}"))
        }
        Resolution::NotFound => Ok(query.trim().to_string()),
    }
}

fn save_tail(model: &mut Model, path: Option<String>) -> Vec<Command> {
    let path = path.unwrap_or_else(|| format!("herd-notifications-{}.ndjson", model.now as u64));
    let fleet = &model.fleet;
    let lines: Vec<String> = model
        .tail
        .matching()
        .map(|e| e.json(fleet.get(&e.id).map(|r| &*r.name).filter(|n| !n.is_empty())))
        .collect();
    vec![Command::Save {
        path: PathBuf::from(path),
        lines,
    }]
}

fn run_palette(model: &mut Model, command: PaletteCommand) -> Vec<Command> {
    match command {
        PaletteCommand::Fleet => model.go_to(Screen::Fleet),
        PaletteCommand::Notifications => model.go_to(Screen::Notifications),
        PaletteCommand::Analytics => model.go_to(Screen::Analytics),
        PaletteCommand::Rollouts => return rollouts::open_list(model),
        PaletteCommand::Bench => return bench::open(model),
        PaletteCommand::Device(query) => {
            let id = match resolve_device(model, &query) {
                Ok(id) => id,
                Err(message) => {
                    model.overlay = Some(Overlay::Palette {
                        input: LineInput::new(&format!("device {query}")),
                        error: Some(message),
                    });
                    return Vec::new();
                }
            };
            model.go_to(Screen::Fleet);
            return model.open_device(&id);
        }
        PaletteCommand::Filter(text) => {
            model.go_to(Screen::Fleet);
            set_fleet_filter(model, &text);
        }
        PaletteCommand::Sort(sort) => {
            model.fleet.set_sort(sort);
            model.follow_selection();
        }
        PaletteCommand::SetDesired(value) => {
            if !model.refuse(Operation::of_desired(&value), "change desired") {
                let label = format!("set desired {value}");
                model.confirm_bulk(
                    label,
                    BulkAction::Desired(json!({"state": {"desired": value}})),
                );
            }
        }
        PaletteCommand::Call { method, params } => {
            if model.profile.read_only && !crate::read_only_safe(&method) {
                model.refuse_write(&format!("call {method}"));
            } else if !model.refuse_scope(Operation::of_call(&method), &format!("call {method}")) {
                let label = format!("call {method}");
                model.confirm_bulk(label, BulkAction::Call { method, params });
            }
        }
        PaletteCommand::Delete => delete_targets(model),
        PaletteCommand::Rename(name) => {
            if model.refuse(Operation::RenameDevice, "rename a device") {
                return Vec::new();
            }
            let ids = model.targets();
            match ids.as_slice() {
                [id] => {
                    let label = format!("rename {} to {name}", model.fleet.label(id));
                    model.overlay = Some(Overlay::Confirm {
                        question: format!("{label}?"),
                        command: Command::Bulk {
                            set: 0,
                            label,
                            ids: ids.clone(),
                            action: BulkAction::Rename(name),
                        },
                    });
                }
                [] => model.error("no device selected"),
                _ => model.error(":rename names one device: unmark the others, or open it"),
            }
        }
        PaletteCommand::Save(path) => return save_tail(model, path),
        PaletteCommand::Results => open_results(model),
        PaletteCommand::Context(None) => {
            let selected = model
                .contexts
                .iter()
                .position(|c| c.name == model.profile.name)
                .unwrap_or(0);
            model.overlay = Some(Overlay::Contexts { selected });
        }
        PaletteCommand::Context(Some(name)) => {
            if model.contexts.iter().any(|c| c.name == name) {
                model.info(format!("switching to profile {name}…"));
                return vec![Command::SwitchProfile(name)];
            }
            let known: Vec<&str> = model.contexts.iter().map(|c| c.name.as_str()).collect();
            let message = if known.is_empty() {
                format!("no profile named {name:?}: the config file has no [profiles.NAME] tables")
            } else {
                format!("no profile named {name:?} (known: {})", known.join(", "))
            };
            model.overlay = Some(Overlay::Palette {
                input: LineInput::new(&format!("ctx {name}")),
                error: Some(message),
            });
        }
        PaletteCommand::Help => model.overlay = Some(Overlay::Help { scroll: 0 }),
        PaletteCommand::Quit => {
            model.quit = true;
            return vec![Command::Quit];
        }
    }
    Vec::new()
}

/// Orders the analytics table's rows for its sort, device ids read as the names shown.
fn order_analytics_rows(model: &mut Model) {
    let fleet = &model.fleet;
    model
        .analytics
        .order_rows(&|id| fleet.label(id).to_string());
}

fn analytics_key(model: &mut Model, key: KeyEvent) -> Vec<Command> {
    let rows = analytics::table_rows(model.size);
    let page = rows.max(1) as isize;
    // The SQL prompt, while open, takes the keys it handles.
    match model.analytics.query_key(key, rows) {
        analytics::PromptOutcome::Ignored => {}
        analytics::PromptOutcome::Handled | analytics::PromptOutcome::Closed => return Vec::new(),
        analytics::PromptOutcome::Run(request) => return vec![Command::Analytics(request)],
    }
    let view = &mut model.analytics;
    let step = |report: herd_analytics::Report, delta: isize| {
        let all = herd_analytics::Report::ALL;
        let index = all.iter().position(|r| *r == report).unwrap_or(0) as isize;
        all[(index + delta).rem_euclid(all.len() as isize) as usize]
    };
    match key.code {
        KeyCode::Esc | KeyCode::Char('q') | KeyCode::Backspace => model.back(),
        KeyCode::Char(c @ '1'..='5') => {
            let report = herd_analytics::Report::ALL[c as usize - '1' as usize];
            view.select_report(report);
        }
        KeyCode::Tab | KeyCode::Right | KeyCode::Char('l') => {
            view.select_report(step(view.selection.report, 1))
        }
        KeyCode::BackTab | KeyCode::Left | KeyCode::Char('h') => {
            view.select_report(step(view.selection.report, -1))
        }
        KeyCode::Char('r') => view.selection.range = view.selection.range.next(),
        KeyCode::Char('b') => {
            view.selection.bucket = match view.selection.bucket {
                herd_analytics::Bucket::Hour => herd_analytics::Bucket::Day,
                herd_analytics::Bucket::Day => herd_analytics::Bucket::Hour,
            }
        }
        KeyCode::Char('t') => view.next_table(),
        KeyCode::Char('e') => view.open_query(),
        KeyCode::Char('s') => {
            view.next_sort();
            order_analytics_rows(model);
        }
        KeyCode::Char('S') => {
            view.reverse_sort();
            order_analytics_rows(model);
        }
        KeyCode::Down | KeyCode::Char('j') => view.scroll(1, rows),
        KeyCode::Up | KeyCode::Char('k') => view.scroll(-1, rows),
        KeyCode::PageDown => view.scroll(page, rows),
        KeyCode::PageUp => view.scroll(-page, rows),
        KeyCode::Home | KeyCode::Char('g') => view.scroll(isize::MIN / 2, rows),
        KeyCode::End | KeyCode::Char('G') => view.scroll(isize::MAX / 2, rows),
        _ => model.dirty = false,
    }
    Vec::new()
}
