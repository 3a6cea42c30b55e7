//! The operator console: terminal setup, the event loop, and the tasks that do IO.
//!
//! The loop is The Elm Architecture: input, ticks and IO results arrive as [`Msg`]s over
//! one channel; [`update`] changes the [`Model`] and returns [`Command`]s, which run as
//! tasks that answer with more messages. The screen is redrawn only when the model is
//! dirty, at most [`FRAME_INTERVAL`] apart, so a flood of notifications costs one draw per
//! frame rather than one per notification, and keys are handled between batches.

pub mod analytics;
pub mod bench;
pub mod device;
pub mod help;
pub mod input;
pub mod keymap;
pub mod model;
pub mod notifications;
pub mod palette;
pub mod results;
pub mod rollouts;
pub mod theme;
pub mod view;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossterm::event::{
    DisableBracketedPaste, DisableMouseCapture, EnableBracketedPaste, EnableMouseCapture, Event,
    EventStream,
};
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use futures_util::StreamExt;
use herd_client::{Client, NotifyEvent};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use keymap::KeyMap;
pub use model::{update, Command, Connection, Model, ModelOptions, Msg, ProfileInfo};
pub use theme::Theme;

use crate::exit::{CommandResult, Exit, Failure};
use crate::profile::{Contexts, Profile};
use crate::session::Session;
use crate::text::unix_now;

/// Shortest time between two draws: 30 frames a second at most.
pub const FRAME_INTERVAL: Duration = Duration::from_millis(33);
/// How often the clock ticks (relative times, re-sorting a changing fleet).
const TICK: Duration = Duration::from_millis(250);
/// Lines the notification ring keeps unless `HERD_TAIL_LINES` says otherwise.
const DEFAULT_TAIL_LINES: usize = 20_000;
/// Longest the loop spends applying queued messages before it draws and reads keys again.
const BATCH_BUDGET: Duration = Duration::from_millis(12);

/// Options of one console session.
#[derive(Debug, Clone)]
pub struct ConsoleOptions {
    pub tail_lines: usize,
    pub mouse: bool,
    pub theme: Theme,
    /// The server's notification log readable from here, followed by the analytics view;
    /// empty when the view pulls it from the server.
    pub notification_log: Vec<PathBuf>,
    /// Where the analytics view keeps parsed rotated log files between sessions.
    pub report_cache: Option<PathBuf>,
    /// `dash.ca_cert` for lights the bench view flashes (the profile's CA, base64 DER).
    pub bench_ca_cert: Option<String>,
}

impl ConsoleOptions {
    /// Defaults, adjusted by `HERD_TAIL_LINES`, `HERD_MOUSE` and `NO_COLOR`.
    pub fn from_env() -> Self {
        ConsoleOptions {
            tail_lines: std::env::var("HERD_TAIL_LINES")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|&n: &usize| n > 0)
                .unwrap_or(DEFAULT_TAIL_LINES),
            mouse: std::env::var("HERD_MOUSE").is_ok_and(|v| v == "1" || v == "true"),
            theme: Theme::from_env(),
            notification_log: Vec::new(),
            report_cache: std::env::var_os("HERD_REPORT_CACHE")
                .map(PathBuf::from)
                .or_else(|| herd_config::default_cache_dir("reports").ok()),
            bench_ca_cert: None,
        }
    }
}

/// Opens the console on `profile`'s server; returns when the operator quits.
pub async fn run(profile: Profile, contexts: Contexts, log: Option<PathBuf>) -> CommandResult {
    init_logging(log);
    // A config mistake is said before the screen is taken, never papered over.
    let theme = Theme::from_config(&profile.theme).map_err(Failure::usage)?;
    profile.client().map_err(Failure::usage)?;
    // Read-only asks the server for nothing more than read (PROTOCOL §11).
    let session = Session::open(profile).await;
    let profile = &session.profile;
    let client = profile.client().map_err(Failure::usage)?;
    let info = ProfileInfo {
        name: profile.name.clone(),
        server: profile.server.clone(),
        read_only: profile.read_only,
    };
    // The lights the bench flashes check a wss:// server against the CA this console
    // trusts; the client has read the file already, so it is readable.
    let bench_ca_cert = profile
        .ca_cert
        .as_ref()
        .and_then(|path| std::fs::read(path).ok())
        .and_then(|bytes| crate::bench::ca_cert_from_file(&bytes).ok());
    let options = ConsoleOptions {
        notification_log: profile.log.clone(),
        theme,
        bench_ca_cert,
        ..ConsoleOptions::from_env()
    };
    let keys = KeyMap::with_overrides(&profile.keys).map_err(Failure::usage)?;
    let warning = session.warning.clone();
    let mut switching = Switching {
        contexts,
        session: Some(session),
        keys,
        warning,
    };
    let outcome = console_loop(client, info, options, Some(&mut switching)).await;
    if let Some(session) = switching.session {
        session.close().await;
    }
    outcome
}

/// What the console needs to switch profiles (`:ctx`) and the session it runs in.
struct Switching {
    contexts: Contexts,
    /// The session of the profile in use; closed when left.
    session: Option<Session>,
    keys: KeyMap,
    /// Said first: read-only holds only in the console.
    warning: Option<String>,
}

/// Opens the config's profile `name`: its session (a read key when read-only) and client.
async fn open_profile(
    contexts: &Contexts,
    name: &str,
) -> Result<(Session, Client, ProfileInfo), String> {
    let profile = contexts.profile(name).map_err(|e| e.to_string())?;
    profile.client()?;
    let session = Session::open(profile).await;
    let client = match session.profile.client() {
        Ok(client) => client,
        Err(e) => {
            session.close().await;
            return Err(e);
        }
    };
    let info = ProfileInfo {
        name: session.profile.name.clone(),
        server: session.profile.server.clone(),
        read_only: session.profile.read_only,
    };
    Ok((session, client, info))
}

/// Sends logs to a file: the console owns the screen, so nothing may print on it.
pub fn init_logging(path: Option<PathBuf>) {
    let path = path.or_else(|| {
        herd_config::default_data_dir("console")
            .ok()
            .map(|dir| dir.join("console.log"))
    });
    let Some(path) = path else { return };
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let Ok(file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    else {
        return;
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("HERD_LOG_LEVEL")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
}

type Term = Terminal<CrosstermBackend<std::io::Stdout>>;

/// Whether this process has the terminal in raw mode on the alternate screen.
static TERMINAL_TAKEN: AtomicBool = AtomicBool::new(false);

/// Puts the terminal back as the shell had it. Only the first call after taking the
/// terminal acts: leaving the alternate screen twice would move the cursor back up, over
/// whatever was printed in between (a panic message).
fn restore_terminal(mouse: bool) {
    if !TERMINAL_TAKEN.swap(false, Ordering::SeqCst) {
        return;
    }
    let _ = disable_raw_mode();
    let mut stdout = std::io::stdout();
    if mouse {
        let _ = crossterm::execute!(stdout, DisableMouseCapture);
    }
    let _ = crossterm::execute!(
        stdout,
        DisableBracketedPaste,
        LeaveAlternateScreen,
        crossterm::cursor::Show
    );
    let _ = stdout.flush();
}

fn setup_terminal(mouse: bool) -> Result<Term, Failure> {
    let fail =
        |e: std::io::Error| Failure::new(Exit::Failure, format!("cannot set up the terminal: {e}"));
    enable_raw_mode().map_err(fail)?;
    TERMINAL_TAKEN.store(true, Ordering::SeqCst);
    let mut stdout = std::io::stdout();
    let entered =
        crossterm::execute!(stdout, EnterAlternateScreen, EnableBracketedPaste).and_then(|()| {
            if mouse {
                crossterm::execute!(stdout, EnableMouseCapture)
            } else {
                Ok(())
            }
        });
    if let Err(e) = entered {
        restore_terminal(mouse);
        return Err(fail(e));
    }
    // A panic anywhere must leave a usable shell and a readable message: restore first,
    // then let the previous hook print.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal(mouse);
        previous(info);
    }));
    Terminal::new(CrosstermBackend::new(std::io::stdout())).map_err(|e| {
        restore_terminal(mouse);
        fail(e)
    })
}

/// Restores the terminal when dropped, on every way out of the loop.
struct TerminalGuard {
    mouse: bool,
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal(self.mouse);
    }
}

fn spawn_input(sender: mpsc::Sender<Msg>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut events = EventStream::new();
        while let Some(event) = events.next().await {
            let msg = match event {
                Ok(Event::Key(key)) => Msg::Key(key),
                Ok(Event::Mouse(mouse)) => Msg::Mouse(mouse),
                Ok(Event::Paste(text)) => Msg::Paste(text),
                Ok(Event::Resize(width, height)) => Msg::Resize(width, height),
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "terminal input failed");
                    return;
                }
            };
            if sender.send(msg).await.is_err() {
                return;
            }
        }
    })
}

fn spawn_ticks(sender: mpsc::Sender<Msg>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            interval.tick().await;
            if sender.send(Msg::Tick(unix_now())).await.is_err() {
                return;
            }
        }
    })
}

/// Feeds the notify stream into the loop, many notifications per message.
fn spawn_notify(client: Client, sender: mpsc::Sender<Msg>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut stream = client.notify();
        let mut batch = Vec::with_capacity(1024);
        loop {
            batch.clear();
            if stream.next_batch(&mut batch, 1024).await == 0 {
                return;
            }
            let at = unix_now();
            let mut items = Vec::new();
            for event in batch.drain(..) {
                let msg = match event {
                    NotifyEvent::Notification(notification) => {
                        items.push(notification);
                        continue;
                    }
                    NotifyEvent::Connecting { attempt } => {
                        Msg::Stream(Connection::Connecting { attempt })
                    }
                    NotifyEvent::Connected => Msg::Stream(Connection::Connected),
                    NotifyEvent::Disconnected { reason, retry_in } => {
                        Msg::Stream(Connection::Lost {
                            reason,
                            retry_at: unix_now() + retry_in.as_secs_f64(),
                        })
                    }
                    NotifyEvent::Lagged { dropped } => Msg::Lagged(dropped),
                    NotifyEvent::Rejected(error) => {
                        Msg::Stream(Connection::Rejected(error.to_string()))
                    }
                };
                if !items.is_empty() {
                    let items = std::mem::take(&mut items);
                    if sender.send(Msg::Notifications { at, items }).await.is_err() {
                        return;
                    }
                }
                if sender.send(msg).await.is_err() {
                    return;
                }
            }
            if !items.is_empty() && sender.send(Msg::Notifications { at, items }).await.is_err() {
                return;
            }
        }
    })
}

/// Runs a command in a task that reports back.
fn execute(client: &Client, command: Command, sender: &mpsc::Sender<Msg>) {
    let client = client.clone();
    let sender = sender.clone();
    let task = async move {
        let msg = match command {
            Command::LoadDevices => {
                let result = client.devices().await.map(|devices| {
                    let now = unix_now();
                    devices
                        .iter()
                        .map(|device| crate::fleet::DeviceRow::from_object(device, now))
                        .collect()
                });
                Msg::DevicesLoaded(result.map_err(Into::into))
            }
            Command::LoadDevice(id) => {
                let result = client.device(&id).await.map_err(Into::into);
                Msg::DeviceLoaded { id, result }
            }
            Command::SendShadow { id, update } => {
                let result = client.update_shadow(&id, &update).await.map_err(Into::into);
                Msg::ShadowSent { id, result }
            }
            Command::ListRpc(id) => {
                let result = client
                    .call(&id, "RPC.List", None)
                    .await
                    .map_err(model::Failure::from)
                    .and_then(|value| {
                        serde_json::from_value::<Vec<String>>(value)
                            .map(|mut methods| {
                                methods.sort();
                                methods
                            })
                            .map_err(|e| {
                                model::Failure::new(format!(
                                    "RPC.List did not return a list of names: {e}"
                                ))
                            })
                    });
                Msg::RpcListed { id, result }
            }
            Command::CallRpc { id, method, params } => {
                let result = client
                    .call(&id, &method, params.as_ref())
                    .await
                    .map_err(Into::into);
                Msg::RpcDone { id, method, result }
            }
            Command::Bulk {
                set, ids, action, ..
            } => {
                // Each answer goes to the results pane as it comes.
                let mut answers = futures_util::stream::iter(ids)
                    .map(|id| {
                        let client = client.clone();
                        let action = action.clone();
                        async move {
                            let result = match &action {
                                model::BulkAction::Desired(update) => {
                                    client.update_shadow(&id, update).await
                                }
                                model::BulkAction::Call { method, params } => {
                                    client.call(&id, method, params.as_ref()).await
                                }
                                model::BulkAction::Delete => {
                                    client.delete_device(&id).await.map(|()| Value::Bool(true))
                                }
                                model::BulkAction::Rename(name) => {
                                    let change = herd_client::DeviceChange {
                                        name: Some(name.clone()),
                                        ..Default::default()
                                    };
                                    client
                                        .change_device(&id, &change)
                                        .await
                                        .map(|d| serde_json::json!({"name": d.name}))
                                }
                            };
                            (id, result.map_err(|e| e.to_string()))
                        }
                    })
                    .buffer_unordered(16);
                while let Some((id, result)) = answers.next().await {
                    if sender
                        .send(Msg::BulkAnswer { set, id, result })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Msg::BulkDone { set }
            }
            Command::Save { path, lines } => {
                let count = lines.len();
                let target = path.clone();
                let written = tokio::task::spawn_blocking(move || {
                    let mut text = lines.join("\n");
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    std::fs::write(&target, text)
                })
                .await;
                Msg::Saved(match written {
                    Ok(Ok(())) => Ok((path, count)),
                    Ok(Err(e)) => Err(format!("cannot save to {}: {e}", path.display())),
                    Err(e) => Err(format!("saving failed: {e}")),
                })
            }
            Command::LoadHistory { lines } => Msg::History(
                crate::logsource::last_lines(&client, lines)
                    .await
                    .map_err(Into::into),
            ),
            Command::LoadKey => Msg::KeyLoaded(client.current_key().await.map_err(Into::into)),
            Command::LoadTimeline(id) => {
                let result = load_timeline(&client, &id).await.map_err(Into::into);
                Msg::TimelineLoaded { id, result }
            }
            Command::Rollouts(request) => Msg::from(rollout_call(&client, request).await),
            Command::Bench(task) => {
                let progress = sender.clone();
                let send = move |msg: bench::Msg| {
                    let _ = progress.try_send(Msg::Bench(msg));
                };
                Msg::Bench(bench::run(&client, task, send).await)
            }
            // Handled by the loop itself, which owns the terminal and the analytics worker.
            Command::ExternalEditor { .. }
            | Command::Analytics(_)
            | Command::SwitchProfile(_)
            | Command::Quit => return,
        };
        let _ = sender.send(msg).await;
    };
    tokio::spawn(task);
}

/// Reads the server's whole log (PROTOCOL §7) for one device's timeline.
async fn load_timeline(
    client: &Client,
    id: &str,
) -> Result<crate::history::Timeline, herd_client::Error> {
    let mut timeline = crate::history::Timeline::new(id);
    let mut offset = 0;
    loop {
        let page = client
            .logs(herd_client::LogsQuery {
                start: Some(offset),
                limit: Some(crate::logsource::PAGE),
            })
            .await?;
        for item in &page.items {
            if let Ok(logged) =
                serde_json::from_value::<protocol::notification::LoggedNotification>(item.clone())
            {
                timeline.feed(logged.ts, &logged.id, &logged.name, &logged.data);
            }
        }
        let next = page.next.unwrap_or(offset + page.items.len() as u64);
        if next <= offset {
            return Ok(timeline);
        }
        offset = next;
    }
}

/// Runs one firmware or rollout call (PROTOCOL §10).
async fn rollout_call(client: &Client, request: rollouts::Request) -> rollouts::Reply {
    use rollouts::{Reply, Request};
    match request {
        Request::List => Reply::Listed(client.rollouts().await.map_err(Into::into)),
        Request::Load { id, devices } => {
            let result = client.rollout(&id, devices).await.map_err(Into::into);
            Reply::Loaded { id, result }
        }
        Request::Command { id, command } => {
            let result = client
                .rollout_command(&id, command)
                .await
                .map_err(Into::into);
            Reply::Commanded {
                id,
                command,
                result,
            }
        }
        Request::Firmware => Reply::Firmware(client.firmware_list().await.map_err(Into::into)),
        Request::Plan(spec) => {
            Reply::Planned(client.create_rollout(&spec).await.map_err(Into::into))
        }
        Request::Create(spec) => {
            Reply::Created(client.create_rollout(&spec).await.map_err(Into::into))
        }
        Request::Push { device, firmware } => {
            let result = client
                .push_firmware(&device, &firmware, None)
                .await
                .map_err(Into::into);
            Reply::Pushed {
                device,
                firmware,
                result,
            }
        }
    }
}

/// Edits `text` in `$VISUAL`/`$EDITOR` (or `vi`) with the screen handed over.
async fn external_editor(terminal: &mut Term, mouse: bool, text: &str) -> Result<String, String> {
    let file = tempfile::Builder::new()
        .prefix("herd-desired-")
        .suffix(".json")
        .tempfile()
        .map_err(|e| format!("cannot create a temporary file: {e}"))?;
    std::fs::write(file.path(), text)
        .map_err(|e| format!("cannot write the temporary file: {e}"))?;
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    restore_terminal(mouse);
    // The editor may be "code --wait": split words, the file goes last.
    let mut words = editor.split_whitespace();
    let program = words.next().unwrap_or("vi").to_string();
    let status = tokio::process::Command::new(&program)
        .args(words)
        .arg(file.path())
        .status()
        .await;
    let _ = enable_raw_mode();
    TERMINAL_TAKEN.store(true, Ordering::SeqCst);
    let _ = crossterm::execute!(
        std::io::stdout(),
        EnterAlternateScreen,
        EnableBracketedPaste
    );
    if mouse {
        let _ = crossterm::execute!(std::io::stdout(), EnableMouseCapture);
    }
    let _ = terminal.clear();
    match status {
        Ok(status) if status.success() => std::fs::read_to_string(file.path())
            .map_err(|e| format!("cannot read the edited file: {e}")),
        Ok(status) => Err(format!("{program} exited with {status}; nothing sent")),
        Err(e) => Err(format!("cannot run {program}: {e} (set $EDITOR)")),
    }
}

/// The analytics view's log: the paths the options name, else the server's.
fn analytics_source(client: &Client, options: &ConsoleOptions) -> analytics::worker::Source {
    if options.notification_log.is_empty() {
        analytics::worker::Source::Remote {
            client: client.clone(),
            runtime: tokio::runtime::Handle::current(),
        }
    } else {
        analytics::worker::Source::Local {
            paths: options.notification_log.clone(),
            cache: options.report_cache.clone(),
        }
    }
}

// One value per loop turn, never stored: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Wake {
    Msg(Msg),
    Draw,
    Closed,
}

/// The event loop on an already-built client.
pub async fn run_console(
    client: Client,
    profile: ProfileInfo,
    options: ConsoleOptions,
) -> CommandResult {
    console_loop(client, profile, options, None).await
}

/// The event loop; `switching` lets `:ctx` change profiles, without it there is one.
async fn console_loop(
    mut client: Client,
    profile: ProfileInfo,
    options: ConsoleOptions,
    mut switching: Option<&mut Switching>,
) -> CommandResult {
    let mut terminal = setup_terminal(options.mouse)?;
    let _guard = TerminalGuard {
        mouse: options.mouse,
    };
    let size = terminal
        .size()
        .map(|s| (s.width, s.height))
        .unwrap_or((80, 24));
    let mut model = Model::new(ModelOptions {
        profile,
        tail_lines: options.tail_lines,
        now: unix_now(),
        size,
    });
    model.bench.ca_cert = options.bench_ca_cert.clone();
    if let Some(switching) = switching.as_deref_mut() {
        model.keys = switching.keys.clone();
        model.contexts = switching.contexts.list();
        if let Some(warning) = switching.warning.take() {
            model.error(warning);
        }
    }
    // Keys travel apart from everything else and are read first, so a flood of
    // notifications queued ahead of a keypress cannot delay it.
    let (input_sender, mut input_receiver) = mpsc::channel::<Msg>(64);
    // Small: when the loop falls behind, the notify task stops reading and the server
    // drops for us and says how many (PROTOCOL §5), instead of memory growing here.
    let (mut sender, mut receiver) = mpsc::channel::<Msg>(64);
    let mut input = spawn_input(input_sender.clone());
    let mut ticks = spawn_ticks(sender.clone());
    let mut notify = spawn_notify(client.clone(), sender.clone());
    // Started when the analytics view first opens; it keeps the log read so far.
    let mut analytics: Option<analytics::worker::Worker> = None;
    let mut last_draw = Instant::now() - FRAME_INTERVAL;

    let outcome = loop {
        let deadline = tokio::time::Instant::from_std(last_draw + FRAME_INTERVAL);
        let dirty = model.dirty;
        let wake = tokio::select! {
            biased;
            msg = input_receiver.recv() => msg.map_or(Wake::Closed, Wake::Msg),
            msg = receiver.recv() => msg.map_or(Wake::Closed, Wake::Msg),
            _ = tokio::time::sleep_until(deadline), if dirty => Wake::Draw,
        };
        let mut pending = match wake {
            Wake::Msg(msg) => vec![msg],
            Wake::Draw => Vec::new(),
            Wake::Closed => break Ok(()),
        };
        let started = Instant::now();
        while let Some(msg) = pending.pop() {
            for command in update(&mut model, msg) {
                match command {
                    Command::Quit => {}
                    Command::ExternalEditor { id, text } => {
                        // The editor needs the keyboard: stop reading keys meanwhile.
                        input.abort();
                        let result = external_editor(&mut terminal, options.mouse, &text).await;
                        input = spawn_input(input_sender.clone());
                        pending.push(Msg::ExternalEdit { id, result });
                    }
                    Command::SwitchProfile(name) => {
                        let Some(switching) = switching.as_deref_mut() else {
                            pending.push(Msg::Switched(Err(
                                "this console has no profiles to switch to".into(),
                            )));
                            continue;
                        };
                        match open_profile(&switching.contexts, &name).await {
                            Ok((session, new_client, info)) => {
                                let warning = session.warning.clone();
                                if let Some(old) = switching.session.replace(session) {
                                    tokio::spawn(old.close());
                                }
                                client = new_client;
                                // Answers of the old server's tasks go to a channel nobody
                                // reads any more: nothing of it reaches the new view.
                                notify.abort();
                                ticks.abort();
                                (sender, receiver) = mpsc::channel::<Msg>(64);
                                ticks = spawn_ticks(sender.clone());
                                notify = spawn_notify(client.clone(), sender.clone());
                                analytics = None;
                                pending.push(Msg::Switched(Ok((info, warning))));
                            }
                            Err(reason) => pending.push(Msg::Switched(Err(format!(
                                "cannot switch to profile {name}: {reason}"
                            )))),
                        }
                    }
                    // Nothing to hide when the worker is not running (or was left behind
                    // with the previous profile).
                    Command::Analytics(analytics::Request::Hide) if analytics.is_none() => {}
                    Command::Analytics(request) => analytics
                        .get_or_insert_with(|| {
                            analytics::worker::Worker::start(
                                analytics_source(&client, &options),
                                sender.clone(),
                            )
                        })
                        .request(request),
                    other => execute(&client, other, &sender),
                }
            }
            if model.quit {
                break;
            }
            if pending.is_empty() {
                if let Ok(msg) = input_receiver.try_recv() {
                    pending.push(msg);
                } else if started.elapsed() < BATCH_BUDGET {
                    if let Ok(msg) = receiver.try_recv() {
                        pending.push(msg);
                    }
                }
            }
        }
        if model.quit {
            break Ok(());
        }
        if model.dirty && last_draw.elapsed() >= FRAME_INTERVAL {
            let theme = options.theme;
            if let Err(e) = terminal.draw(|frame| view::render(frame, &model, &theme)) {
                break Err(Failure::new(Exit::Failure, format!("cannot draw: {e}")));
            }
            model.dirty = false;
            last_draw = Instant::now();
        }
    };
    input.abort();
    ticks.abort();
    notify.abort();
    outcome
}
