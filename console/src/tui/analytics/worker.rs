//! The analytics worker: a thread that owns the notification log (PROTOCOL §7), keeps it
//! current and computes the report the view shows, so that neither reading a large log
//! nor computing a report ever holds up the console's event loop.
//!
//! Where the log comes from:
//! - Paths on this machine (the server's data directory, as `herd demo` and a profile's
//!   `log` name it, or files, like `herd report --log`): a [`Follower`] reads them once,
//!   then only the bytes appended since, across rotation when a directory is named. When
//!   bytes it read are gone (old files deleted, a named file replaced or cut back) it
//!   reads the log again. A `notify` watcher on the directories (not recursive) says when
//!   to look, and a timer looks every [`Timing::poll`] anyway, because file events can be
//!   missed (a full inotify queue, a network file system).
//! - No path: the server's log over `POST /logs`, pulled every [`Timing::pull`], only the
//!   lines after the offset reached last time.
//!
//! The log keeps the fields of every report (the union of their needs), so switching
//! reports computes from memory without reading again. While the log grows, the report is
//! recomputed at most once per [`Timing::debounce`]. The worker starts when the view first
//! opens and keeps the log afterwards; while the view is closed it neither reads nor
//! computes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};

use herd_analytics::{Follower, Log, LogStats, Need, Report};
use herd_client::Client;
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{report_data, Event, Progress, Request, Selection, Stage};
use crate::tui::Msg;

/// Where the worker reads the log.
#[derive(Debug, Clone)]
pub enum Source {
    /// Paths on this machine: one directory, followed with its rotation, or files. With a
    /// `cache` directory, parsed rotated files are kept there for the next session (see
    /// [`herd_analytics::Log::load_cached`]).
    Local {
        paths: Vec<PathBuf>,
        cache: Option<PathBuf>,
    },
    /// The server's log over `POST /logs`; requests run on `runtime`.
    Remote {
        client: Client,
        runtime: tokio::runtime::Handle,
    },
}

/// How often the worker looks and computes.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Local files are checked this often even without a file event.
    pub poll: Duration,
    /// The server is asked for new lines this often.
    pub pull: Duration,
    /// Shortest time between two reports while the log grows.
    pub debounce: Duration,
    /// How long after a file event the files are read. Events come in bursts (rotating is
    /// a rename, then a create, then the first write): reading a moment later finds the
    /// burst over instead of half a rotation.
    pub settle: Duration,
    /// A range that ends now moves with the clock: recompute this often even when the log
    /// did not change.
    pub moving_range: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            poll: Duration::from_secs(2),
            pull: Duration::from_secs(5),
            debounce: Duration::from_secs(1),
            settle: Duration::from_millis(50),
            moving_range: Duration::from_secs(30),
        }
    }
}

/// The fields every report needs: one read serves them all.
pub fn need() -> Need {
    Report::ALL
        .iter()
        .fold(Need::default(), |need, report| need.union(report.need()))
}

enum Input {
    Request(Request),
    /// A file event in a watched directory.
    Changed,
    Stop,
}

/// The handle of a running worker; dropping it stops the thread after its current step.
pub struct Worker {
    input: std_mpsc::Sender<Input>,
}

impl Worker {
    /// Starts a worker that answers with [`Msg::Analytics`] on `output`.
    pub fn start(source: Source, output: mpsc::Sender<Msg>) -> Worker {
        Worker::start_with(source, output, Timing::default(), crate::text::unix_now)
    }

    /// [`start`](Self::start) with other timing and a clock (unix seconds) for the ranges
    /// that end now.
    pub fn start_with(
        source: Source,
        output: mpsc::Sender<Msg>,
        timing: Timing,
        clock: fn() -> f64,
    ) -> Worker {
        let (input, inputs) = std_mpsc::channel();
        let notifier = input.clone();
        let failed = output.clone();
        let spawned = std::thread::Builder::new()
            .name("herd-analytics".into())
            .spawn(move || {
                let output = Output(output);
                let reader = Reader::new(source);
                run(reader, inputs, notifier, &output, timing, clock);
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the analytics worker");
            let _ = failed.try_send(Msg::Analytics(Event::Failed(format!(
                "cannot start the analytics worker: {e}"
            ))));
        }
        Worker { input }
    }

    pub fn request(&self, request: Request) {
        let _ = self.input.send(Input::Request(request));
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.input.send(Input::Stop);
    }
}

/// Messages to the console. Reports wait for room in the channel; progress is dropped
/// when the console is behind, since a newer one follows.
struct Output(mpsc::Sender<Msg>);

impl Output {
    /// False when the console is gone.
    fn send(&self, event: Event) -> bool {
        self.0.blocking_send(Msg::Analytics(event)).is_ok()
    }

    fn progress(&self, stage: Stage, done: u64, total: Option<u64>) {
        let _ = self.0.try_send(Msg::Analytics(Event::Progress(Progress {
            stage,
            done,
            total,
        })));
    }
}

/// Line accounting that changes only when a line completes (not with each byte of a line
/// still being written).
fn settled(stats: LogStats) -> LogStats {
    LogStats { bytes: 0, ..stats }
}

fn run(
    mut reader: Reader,
    inputs: std_mpsc::Receiver<Input>,
    notifier: std_mpsc::Sender<Input>,
    output: &Output,
    timing: Timing,
    clock: fn() -> f64,
) {
    if !output.send(Event::Started {
        source: reader.label(),
    }) {
        return;
    }
    // Set by the watcher, cleared when the files are read: one wake-up per batch of file
    // events, however many arrive meanwhile.
    let changed = Arc::new(AtomicBool::new(false));
    let _watcher = reader.watch(notifier, changed.clone());
    let interval = match reader {
        Reader::Server { .. } => timing.pull,
        _ => timing.poll,
    };
    let mut selection: Option<Selection> = None;
    let mut visible = false;
    let mut last_read: Option<Instant> = None;
    // The selection and line accounting the last report was computed from, and when.
    let mut reported: Option<(Selection, LogStats, Instant)> = None;
    let mut stale = false;
    // Opening the view or changing what it shows reads the log first, so that what it
    // shows is current.
    let mut read_now = false;
    // When the first file event since the last read arrived.
    let mut event_at: Option<Instant> = None;
    // The last read failed: the view shows the failure until a report replaces it, so the
    // next good read sends one even when nothing changed.
    let mut failing = false;
    // A query waiting for the log.
    let mut query: Option<String> = None;
    loop {
        let first = if visible {
            let now = Instant::now();
            let mut deadline = last_read.map_or(now, |at| at + interval);
            if let Some(at) = event_at {
                deadline = deadline.min(at + timing.settle);
            }
            if let Some((selection, _, at)) = reported {
                if stale {
                    deadline = deadline.min(at + timing.debounce);
                }
                if selection.range.seconds().is_some() {
                    deadline = deadline.min(at + timing.moving_range);
                }
            }
            match inputs.recv_timeout(deadline.saturating_duration_since(now)) {
                Ok(input) => Some(input),
                Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            }
        } else {
            match inputs.recv() {
                Ok(input) => Some(input),
                Err(_) => return,
            }
        };
        // Everything queued meanwhile: only the latest selection matters.
        for input in first.into_iter().chain(inputs.try_iter()) {
            match input {
                Input::Request(Request::Show(wanted)) => {
                    visible = true;
                    read_now = true;
                    selection = Some(wanted);
                }
                Input::Request(Request::Hide) => visible = false,
                Input::Request(Request::Query(sql)) => query = Some(sql),
                Input::Changed => {
                    event_at.get_or_insert_with(Instant::now);
                }
                Input::Stop => return,
            }
        }
        let Some(selection) = selection.filter(|_| visible) else {
            continue;
        };
        let now = Instant::now();
        let due = last_read.is_none_or(|at| now >= at + interval)
            || event_at.is_some_and(|at| now >= at + timing.settle);
        if due || std::mem::take(&mut read_now) {
            last_read = Some(now);
            event_at = None;
            changed.store(false, Ordering::SeqCst);
            let mut result = reader.refresh(output);
            if result.is_err() && !matches!(reader, Reader::Server { .. }) {
                // A file rotated away between listing the directory and opening it: a
                // second look sees the new set.
                result = reader.refresh(output);
            }
            if let Err(message) = result {
                tracing::warn!(%message, "analytics: reading the log failed");
                failing = true;
                if !output.send(Event::Failed(message)) {
                    return;
                }
                continue;
            }
        }
        let Some(log) = reader.log() else {
            continue;
        };
        if let Some(sql) = query.take() {
            if !output.send(Event::Query(run_query(log, &sql).map(Box::new))) {
                return;
            }
        }
        let stats = settled(log.stats());
        let now = Instant::now();
        let compute = match reported {
            _ if std::mem::take(&mut failing) => true,
            None => true,
            Some((shown, _, _)) if shown != selection => true,
            Some((_, shown, at)) if shown != stats => {
                stale = true;
                now >= at + timing.debounce
            }
            Some((_, _, at)) => {
                selection.range.seconds().is_some() && now >= at + timing.moving_range
            }
        };
        if !compute {
            continue;
        }
        if reported.is_none_or(|(shown, _, _)| shown != selection) {
            output.progress(Stage::Computing, 0, Some(1));
        }
        let event = match report_data(log, selection, clock()) {
            Ok(data) => Event::Report(Box::new(data)),
            Err(message) => Event::Failed(message),
        };
        reported = Some((selection, stats, Instant::now()));
        stale = false;
        if !output.send(event) {
            return;
        }
    }
}

/// Runs `sql` over the log's tables, as `herd query` does.
#[cfg(feature = "query")]
fn run_query(log: &Log, sql: &str) -> Result<super::TableData, String> {
    let frame = herd_analytics::query::query(log, sql).map_err(|e| e.to_string())?;
    super::query_table(&frame)
}

#[cfg(not(feature = "query"))]
fn run_query(_: &Log, _: &str) -> Result<super::TableData, String> {
    Err("this herd was built without the query feature".into())
}

/// The log and how it is kept current.
enum Reader {
    Local {
        paths: Vec<PathBuf>,
        cache: Option<PathBuf>,
        follower: Option<Follower>,
    },
    Server {
        client: Client,
        runtime: tokio::runtime::Handle,
        log: Log,
        offset: u64,
        pulled_once: bool,
    },
}

impl Reader {
    fn new(source: Source) -> Reader {
        match source {
            Source::Local { paths, cache } => Reader::Local {
                paths,
                cache,
                follower: None,
            },
            Source::Remote { client, runtime } => Reader::Server {
                client,
                runtime,
                log: Log::new(need()),
                offset: 0,
                pulled_once: false,
            },
        }
    }

    fn label(&self) -> String {
        match self {
            Reader::Local { paths, .. } => paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            Reader::Server { .. } => "server".into(),
        }
    }

    fn log(&self) -> Option<&Log> {
        match self {
            Reader::Local { follower, .. } => follower.as_ref().map(Follower::log),
            Reader::Server {
                log, pulled_once, ..
            } => pulled_once.then_some(log),
        }
    }

    /// Watches the directories of local logs; file events set `changed` and wake the
    /// worker. Without a watcher (no such directory yet, no inotify) the timer still reads.
    fn watch(
        &self,
        notifier: std_mpsc::Sender<Input>,
        changed: Arc<AtomicBool>,
    ) -> Option<RecommendedWatcher> {
        let (dirs, names): (Vec<PathBuf>, Option<Vec<std::ffi::OsString>>) = match self {
            Reader::Local { paths, .. } => {
                let mut dirs = Vec::new();
                let mut names = Vec::new();
                for path in paths {
                    if path.is_dir() {
                        dirs.push(path.clone());
                        continue;
                    }
                    let parent = match path.parent() {
                        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
                        _ => PathBuf::from("."),
                    };
                    dirs.push(parent);
                    names.extend(path.file_name().map(ToOwned::to_owned));
                }
                dirs.sort();
                dirs.dedup();
                let named_dir = paths.iter().any(|p| p.is_dir());
                (dirs, (!named_dir).then_some(names))
            }
            Reader::Server { .. } => return None,
        };
        let wanted = move |path: &Path| {
            let Some(name) = path.file_name() else {
                return false;
            };
            match &names {
                Some(names) => names.iter().any(|n| n == name),
                // Everything of a rotated set; not the store's files beside it.
                None => name.to_string_lossy().starts_with("notification.log"),
            }
        };
        let handler = move |event: notify::Result<notify::Event>| {
            let relevant = match &event {
                Ok(event) => event.paths.iter().any(|p| wanted(p)),
                Err(_) => true,
            };
            if relevant && !changed.swap(true, Ordering::SeqCst) {
                let _ = notifier.send(Input::Changed);
            }
        };
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(watcher) => watcher,
            Err(e) => {
                tracing::warn!(error = %e, "analytics: no file watcher; polling only");
                return None;
            }
        };
        for dir in &dirs {
            if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), error = %e, "analytics: cannot watch; polling only");
            }
        }
        Some(watcher)
    }

    /// Reads the whole log the first time, then what is new.
    fn refresh(&mut self, output: &Output) -> Result<(), String> {
        let reading = |progress: herd_analytics::Progress| {
            // Nothing to read in rotated files says nothing about the current one.
            let total = Some(progress.total).filter(|total| *total > 0);
            output.progress(Stage::Reading, progress.done, total);
        };
        if self.log().is_none() && !matches!(self, Reader::Server { .. }) {
            // The first read may be long, and the current file reports no progress of
            // its own: say that reading started.
            output.progress(Stage::Reading, 0, None);
        }
        match self {
            Reader::Local {
                paths,
                cache,
                follower,
            } => {
                if let Some(followed) = follower {
                    let polled = followed
                        .poll_reporting(&reading)
                        .map_err(|e| e.to_string())?;
                    if polled.reread {
                        tracing::warn!(
                            ?paths,
                            "analytics: bytes read before are gone; read the log again"
                        );
                    }
                    return Ok(());
                }
                *follower = Some(
                    Follower::open_all(paths.clone(), need(), cache.clone(), &reading)
                        .map_err(|e| e.to_string())?,
                );
                Ok(())
            }
            Reader::Server {
                client,
                runtime,
                log,
                offset,
                pulled_once,
            } => {
                if !*pulled_once {
                    output.progress(Stage::Pulling, 0, None);
                }
                let result = runtime.block_on(crate::logsource::pull(client, log, *offset, |n| {
                    output.progress(Stage::Pulling, n, None);
                }));
                match result {
                    Ok(next) => {
                        *offset = next;
                        *pulled_once = true;
                        Ok(())
                    }
                    Err(e) => {
                        // The pages before the failure are in the log: go on after them.
                        *offset = e.offset;
                        Err(format!("cannot pull the log from the server: {e}"))
                    }
                }
            }
        }
    }
}
