//! `herd rollout`: plan, create and steer staged firmware rollouts (PROTOCOL §10.5), and
//! watch them through their events (§10.6).

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use herd_client::{Client, Notification, NotifyEvent, RolloutCommand};
use protocol::firmware::{
    CommitPolicy, Counters, Delivery, OfflineThen, RolloutObject, RolloutSpec, RolloutState,
    WaveSpec,
};
use serde_json::Value;

use super::commands::{print, table, write_out};
use super::firmware::{resolve_firmware, short_id, short_time, to_json, unique_prefix};
use super::ota::open_stream;
use super::{CommandResult, Exit, Failure};

/// Device names a plan shows per wave.
const PLAN_NAMES: usize = 5;
/// Characters of a wave's gauge.
const GAUGE_WIDTH: usize = 20;
/// `--watch` asks the server again at least this often, in case an event was lost to a
/// reconnect.
const WATCH_REFRESH: Duration = Duration::from_secs(5);
/// ... and at most this often, however many events arrive.
const WATCH_MIN_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CommitArg {
    /// The device commits as soon as it is back running the new image.
    Device,
    /// Commit only after the wave's soak; a device that fails during it reverts.
    AfterSoak,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OfflineThenArg {
    /// Give up on the device after --offline-wait.
    Skip,
    /// Keep waiting; the wave does not end without it.
    KeepWaiting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeliveryArg {
    /// The server writes the image to the device (PROTOCOL §10.2).
    Push,
    /// The device fetches the image itself (PROTOCOL §10.3).
    Pull,
}

/// What `plan` and `create` take: a PROTOCOL §10.5 spec as flags, or as JSON with flags
/// over it.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SpecArgs {
    /// A JSON rollout spec (PROTOCOL §10.5) from FILE, or `-` for stdin; flags override
    /// its fields.
    #[arg(long, value_name = "FILE|-")]
    pub spec: Option<String>,
    /// The firmware: its id or a unique prefix of at least 8 characters.
    #[arg(long, value_name = "ID")]
    pub firmware: Option<String>,
    /// Devices matching a filter in the console's language, terms ANDed, e.g.
    /// "fw:1.0.0 name:lamp-*"; '' selects every device.
    #[arg(long, value_name = "FILTER")]
    pub select: Option<String>,
    /// Device ids, comma-separated (ANDed with --select).
    #[arg(long, value_name = "ID,...", value_delimiter = ',')]
    pub ids: Option<Vec<String>>,
    /// Wave sizes in percent of the selected devices, e.g. 10,30,60.
    #[arg(
        long,
        value_name = "P,...",
        value_delimiter = ',',
        conflicts_with = "wave_counts"
    )]
    pub waves: Option<Vec<f64>>,
    /// Wave sizes as device counts, e.g. 5,20; the last wave takes the rest.
    #[arg(long, value_name = "N,...", value_delimiter = ',')]
    pub wave_counts: Option<Vec<u64>>,
    /// Seconds every wave's devices must stay healthy before the next wave starts.
    #[arg(long, value_name = "SECONDS")]
    pub soak: Option<u64>,
    /// Devices updating at once (default 50).
    #[arg(long, value_name = "N")]
    pub max_parallel: Option<u32>,
    /// Halt when a wave's failures reach this percentage of the wave.
    #[arg(long, value_name = "P")]
    pub halt_failed_percent: Option<f64>,
    /// Halt when the rollout's failures reach this count.
    #[arg(long, value_name = "N")]
    pub halt_failed_count: Option<u64>,
    /// Who commits the new image (default: device).
    #[arg(long, value_enum)]
    pub commit: Option<CommitArg>,
    /// Seconds to wait for a device that is offline when its turn comes (default 300).
    #[arg(long, value_name = "S")]
    pub offline_wait: Option<u64>,
    /// Then skip it or keep waiting (default: skip).
    #[arg(long, value_enum)]
    pub offline_then: Option<OfflineThenArg>,
    /// How the image reaches devices (default: push).
    #[arg(long, value_enum)]
    pub delivery: Option<DeliveryArg>,
    /// Seconds a device has to come back and commit after taking the image (default 300).
    #[arg(long, value_name = "S")]
    pub commit_timeout: Option<u32>,
    /// A name for people (default: app and version).
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum RolloutSubcommand {
    /// Show what a rollout would do: its waves with their sizes and first devices, how
    /// many devices are offline, and the server's notes. Stores nothing.
    Plan {
        #[command(flatten)]
        spec: SpecArgs,
        /// Print the plan as the PROTOCOL §10.5 rollout object (with "dry_run": true).
        #[arg(long)]
        json: bool,
    },
    /// Store a rollout (state planned) and print its id; `--start` also starts it.
    Create {
        #[command(flatten)]
        spec: SpecArgs,
        /// Start it at once.
        #[arg(long)]
        start: bool,
        /// Print the rollout object.
        #[arg(long)]
        json: bool,
    },
    /// Start a planned rollout; prints the new state.
    Start {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Pause: nothing new starts; devices mid-update finish. Prints the new state.
    Pause {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Resume a paused rollout; prints the new state.
    Resume {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Abort: pending devices are skipped, devices mid-update finish. Asks first on a
    /// terminal; elsewhere --yes is required.
    Abort {
        id: String,
        /// Do not ask.
        #[arg(long, short = 'y')]
        yes: bool,
        #[arg(long)]
        json: bool,
    },
    /// A new rollout over the devices that failed, reverted, timed out or were skipped
    /// in a finished one; prints its id.
    Retry {
        id: String,
        /// Start it at once.
        #[arg(long)]
        start: bool,
        #[arg(long)]
        json: bool,
    },
    /// List rollouts: id, name, state, firmware version, wave, succeeded/failed/pending,
    /// created.
    List {
        /// One JSON array of PROTOCOL §10.5 rollout objects.
        #[arg(long)]
        json: bool,
    },
    /// Show a rollout: state, reason, counters and a gauge per wave.
    ///
    /// With --watch it redraws on every event of the rollout until it is completed
    /// (exit 0), halted or aborted (exit 1); off a terminal it prints one line per
    /// change instead of redrawing (with --json: the object, one line per change).
    Show {
        id: String,
        /// Also the device table: name, id, wave, state, attempts, message.
        #[arg(long)]
        devices: bool,
        /// Follow the rollout until it is over.
        #[arg(long)]
        watch: bool,
        /// Print the rollout object.
        #[arg(long)]
        json: bool,
    },
}

impl RolloutSubcommand {
    /// What a read-only profile refuses, named for the message.
    pub fn change(&self) -> Option<&'static str> {
        match self {
            RolloutSubcommand::Create { .. } => Some("create a rollout"),
            RolloutSubcommand::Start { .. } => Some("start a rollout"),
            RolloutSubcommand::Pause { .. } => Some("pause a rollout"),
            RolloutSubcommand::Resume { .. } => Some("resume a rollout"),
            RolloutSubcommand::Abort { .. } => Some("abort a rollout"),
            RolloutSubcommand::Retry { .. } => Some("retry a rollout"),
            RolloutSubcommand::Plan { .. }
            | RolloutSubcommand::List { .. }
            | RolloutSubcommand::Show { .. } => None,
        }
    }
}

fn read_spec(source: &str) -> Result<Value, Failure> {
    let text = if source == "-" {
        let mut buffer = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut buffer)
            .map_err(|e| Failure::usage(format!("cannot read the spec from stdin: {e}")))?;
        buffer
    } else {
        std::fs::read_to_string(source)
            .map_err(|e| Failure::usage(format!("cannot read the spec {source}: {e}")))?
    };
    serde_json::from_str(&text)
        .map_err(|e| Failure::usage(format!("the spec is not valid JSON: {e}")))
}

/// The spec from `--spec` (already read, if given) with the flags over it. The firmware
/// is still as the user wrote it (perhaps a prefix).
pub fn build_spec(args: &SpecArgs, base: Option<Value>) -> Result<RolloutSpec, Failure> {
    let mut base = match base {
        None => serde_json::Map::new(),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(Failure::usage("the spec must be a JSON object")),
    };
    if let Some(firmware) = &args.firmware {
        base.insert("firmware".into(), Value::String(firmware.clone()));
    }
    if !base.contains_key("firmware") {
        return Err(Failure::usage("say which firmware: --firmware ID"));
    }
    let mut spec: RolloutSpec = serde_json::from_value(Value::Object(base))
        .map_err(|e| Failure::usage(format!("invalid rollout spec: {e}")))?;
    if let Some(name) = &args.name {
        spec.name = Some(name.clone());
    }
    if let Some(query) = &args.select {
        spec.select.query = Some(query.clone());
    }
    if let Some(ids) = &args.ids {
        spec.select.ids = Some(
            ids.iter()
                .map(|id| id.trim().to_string())
                .filter(|id| !id.is_empty())
                .collect(),
        );
    }
    if spec.select.query.is_none() && spec.select.ids.is_none() {
        return Err(Failure::usage(
            "say which devices: --select FILTER (--select '' for every device) or --ids",
        ));
    }
    let soak_of = |spec: &RolloutSpec, index: usize| {
        args.soak
            .or_else(|| spec.waves.get(index).map(|w| w.soak_s))
            .unwrap_or(0)
    };
    if let Some(percents) = &args.waves {
        spec.waves = percents
            .iter()
            .enumerate()
            .map(|(i, &percent)| WaveSpec {
                percent: Some(percent),
                count: None,
                soak_s: soak_of(&spec, i),
            })
            .collect();
    } else if let Some(counts) = &args.wave_counts {
        spec.waves = counts
            .iter()
            .enumerate()
            .map(|(i, &count)| WaveSpec {
                percent: None,
                count: Some(count),
                soak_s: soak_of(&spec, i),
            })
            .collect();
    } else if let Some(soak) = args.soak {
        if spec.waves.is_empty() {
            spec.waves.push(WaveSpec {
                percent: Some(100.0),
                count: None,
                soak_s: soak,
            });
        }
        for wave in &mut spec.waves {
            wave.soak_s = soak;
        }
    }
    if let Some(n) = args.max_parallel {
        spec.max_parallel = n;
    }
    if let Some(p) = args.halt_failed_percent {
        spec.halt_when.failed_percent = Some(p);
    }
    if let Some(n) = args.halt_failed_count {
        spec.halt_when.failed_count = Some(n);
    }
    if let Some(commit) = args.commit {
        spec.commit = match commit {
            CommitArg::Device => CommitPolicy::Device,
            CommitArg::AfterSoak => CommitPolicy::AfterSoak,
        };
    }
    if let Some(wait) = args.offline_wait {
        spec.offline.wait_s = wait;
    }
    if let Some(then) = args.offline_then {
        spec.offline.then = match then {
            OfflineThenArg::Skip => OfflineThen::Skip,
            OfflineThenArg::KeepWaiting => OfflineThen::KeepWaiting,
        };
    }
    if let Some(delivery) = args.delivery {
        spec.delivery = match delivery {
            DeliveryArg::Push => Delivery::Push,
            DeliveryArg::Pull => Delivery::Pull,
        };
    }
    if let Some(timeout) = args.commit_timeout {
        spec.commit_timeout_s = timeout;
    }
    Ok(spec)
}

async fn spec_for(client: &Client, args: &SpecArgs, dry_run: bool) -> Result<RolloutSpec, Failure> {
    let base = args.spec.as_deref().map(read_spec).transpose()?;
    let mut spec = build_spec(args, base)?;
    spec.firmware = resolve_firmware(client, &spec.firmware).await?.id;
    spec.dry_run = dry_run;
    Ok(spec)
}

/// Whether `text` is a whole rollout id: 24 hex digits.
fn is_full_rollout_id(text: &str) -> bool {
    text.len() == 24 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A rollout id or unique prefix, as the whole id.
pub async fn resolve_rollout(client: &Client, text: &str) -> Result<String, Failure> {
    if is_full_rollout_id(text) {
        return Ok(text.to_ascii_lowercase());
    }
    let list = client.rollouts().await?;
    Ok(unique_prefix(&list, text, |r| r.id.as_str(), "rollout")?
        .id
        .clone())
}

/// Devices by state in words, the non-zero ones: `3 succeeded, 1 updating, 2 pending`.
pub fn counter_text(counters: &Counters) -> String {
    let parts: Vec<String> = [
        (counters.succeeded, "succeeded"),
        (counters.failed, "failed"),
        (counters.reverted, "reverted"),
        (counters.timed_out, "timed out"),
        (counters.skipped, "skipped"),
        (counters.active(), "updating"),
        (counters.pending, "pending"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    if parts.is_empty() {
        "no devices".into()
    } else {
        parts.join(", ")
    }
}

/// A text gauge of a wave: `#` succeeded, `x` failed, reverted or timed out, `-` skipped,
/// `>` updating, `.` pending.
pub fn gauge(counters: &Counters, width: usize) -> String {
    let total = counters.total.max(1);
    let parts = [
        (counters.succeeded, '#'),
        (counters.failures(), 'x'),
        (counters.skipped, '-'),
        (counters.active(), '>'),
    ];
    let mut out = String::with_capacity(width + 2);
    out.push('[');
    let mut count = 0u64;
    let mut drawn = 0usize;
    for (n, mark) in parts {
        count += n;
        // Cumulative rounding: the marks always add up to the share done so far.
        let end = ((count * width as u64 + total / 2) / total).min(width as u64) as usize;
        // A state with any device shows at least one mark.
        let end = if n > 0 {
            end.max(drawn + 1).min(width)
        } else {
            end
        };
        while drawn < end {
            out.push(mark);
            drawn += 1;
        }
    }
    while drawn < width {
        out.push('.');
        drawn += 1;
    }
    out.push(']');
    out
}

fn firmware_text(rollout: &RolloutObject) -> String {
    if rollout.version.is_empty() {
        short_id(&rollout.firmware).to_string()
    } else {
        format!("{} ({})", rollout.version, short_id(&rollout.firmware))
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The human form of a dry run.
pub fn plan_text(plan: &RolloutObject) -> String {
    let devices = plan.devices.as_deref().unwrap_or_default();
    let offline = devices.iter().filter(|d| !d.online).count() as u64;
    let mut out = format!(
        "plan {:?}: firmware {}, {} in {}, {} offline now\n",
        plan.name,
        firmware_text(plan),
        plural(plan.counters.total, "device", "devices"),
        plural(plan.waves.len() as u64, "wave", "waves"),
        offline,
    );
    for wave in &plan.waves {
        let members: Vec<_> = devices.iter().filter(|d| d.wave == wave.index).collect();
        let wave_offline = members.iter().filter(|d| !d.online).count();
        let mut names: Vec<&str> = members
            .iter()
            .take(PLAN_NAMES)
            .map(|d| {
                if d.name.is_empty() {
                    d.id.as_str()
                } else {
                    d.name.as_str()
                }
            })
            .collect();
        let more = members.len().saturating_sub(PLAN_NAMES);
        let more_text = format!("+{more} more");
        if more > 0 {
            names.push(&more_text);
        }
        out.push_str(&format!(
            "wave {}: {}, soak {}s{}: {}\n",
            wave.index + 1,
            plural(wave.size, "device", "devices"),
            wave.soak_s,
            if wave_offline > 0 {
                format!(", {wave_offline} offline")
            } else {
                String::new()
            },
            names.join(", ")
        ));
    }
    for note in &plan.notes {
        out.push_str(&format!("note: {note}\n"));
    }
    out.push_str("nothing was stored; `herd rollout create` with the same arguments stores it\n");
    out
}

/// The human form of `rollout show`.
pub fn show_text(rollout: &RolloutObject, with_devices: bool) -> String {
    let mut out = String::new();
    let mut field = |key: &str, value: String| out.push_str(&format!("{key:<9} {value}\n"));
    field("rollout", format!("{}  {}", rollout.id, rollout.name));
    field(
        "state",
        format!(
            "{}, wave {} of {}",
            rollout.state.as_str(),
            (rollout.current_wave + 1).min(rollout.waves.len().max(1) as u32),
            rollout.waves.len()
        ),
    );
    if !rollout.reason.is_empty() {
        field("reason", rollout.reason.clone());
    }
    field("firmware", firmware_text(rollout));
    field(
        "devices",
        format!(
            "{}: {}",
            rollout.counters.total,
            counter_text(&rollout.counters)
        ),
    );
    let mut times = format!("created {}", short_time(&rollout.created_at));
    if let Some(started) = &rollout.started_at {
        times.push_str(&format!(", started {}", short_time(started)));
    }
    if let Some(finished) = &rollout.finished_at {
        times.push_str(&format!(", finished {}", short_time(finished)));
    }
    field("times", times);
    for wave in &rollout.waves {
        out.push_str(&format!(
            "wave {:<2} {} {:>3}/{:<3} soak {}s  {}\n",
            wave.index + 1,
            gauge(&wave.counters, GAUGE_WIDTH),
            wave.counters.finished(),
            wave.size,
            wave.soak_s,
            counter_text(&wave.counters)
        ));
    }
    if with_devices {
        let rows: Vec<Vec<String>> = rollout
            .devices
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|d| {
                vec![
                    d.name.clone(),
                    d.id.clone(),
                    (d.wave + 1).to_string(),
                    d.state.as_str().to_string(),
                    d.attempts.to_string(),
                    d.message.clone(),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(
            &["NAME", "ID", "WAVE", "STATE", "ATTEMPTS", "MESSAGE"],
            &rows,
        ));
    }
    out
}

/// The table of `rollout list`.
pub fn rollout_table(list: &[RolloutObject]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.name.clone(),
                r.state.as_str().to_string(),
                if r.version.is_empty() {
                    short_id(&r.firmware).to_string()
                } else {
                    r.version.clone()
                },
                format!(
                    "{}/{}",
                    (r.current_wave + 1).min(r.waves.len() as u32),
                    r.waves.len()
                ),
                format!(
                    "{}/{}/{}",
                    r.counters.succeeded,
                    r.counters.failures(),
                    r.counters.pending
                ),
                short_time(&r.created_at),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "STATE",
            "FIRMWARE",
            "WAVE",
            "SUCCEEDED/FAILED/PENDING",
            "CREATED",
        ],
        &rows,
    )
}

/// One line of `show --watch` off a terminal (without the time).
pub fn summary_line(rollout: &RolloutObject) -> String {
    let mut line = format!(
        "{}  wave {}/{}  {}",
        rollout.state.as_str(),
        (rollout.current_wave + 1).min(rollout.waves.len() as u32),
        rollout.waves.len(),
        counter_text(&rollout.counters)
    );
    if !rollout.reason.is_empty() {
        line.push_str(&format!("  ({})", rollout.reason));
    }
    line
}

/// Whether a notification belongs to rollout `id` (PROTOCOL §10.6): its own `rollout.*`
/// events, and the `ota.*` events of its devices.
pub fn concerns(notification: &Notification, id: &str) -> bool {
    if notification.name.starts_with("rollout.") {
        notification.id == id
    } else if notification.name.starts_with("ota.") {
        notification.data["rollout"].as_str() == Some(id)
    } else {
        false
    }
}

/// How `--watch` ends: 0 when completed, 1 when halted or aborted.
fn finished(rollout: &RolloutObject) -> CommandResult {
    match rollout.state {
        RolloutState::Completed => Ok(()),
        state => {
            let mut message = format!("rollout {} {}", rollout.id, state.as_str());
            if !rollout.reason.is_empty() {
                message.push_str(&format!(": {}", rollout.reason));
            }
            Err(Failure::new(Exit::Failure, message))
        }
    }
}

/// Cuts a frame to what fits a terminal, so that redrawing in place works.
fn fit(frame: &str, (width, height): (u16, u16)) -> String {
    let width = usize::from(width.max(2)) - 1;
    let height = usize::from(height.max(3)) - 1;
    let lines: Vec<&str> = frame.lines().collect();
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        if i + 1 == height && lines.len() > height {
            out.push_str(&format!("… {} more lines\n", lines.len() - i));
            break;
        }
        out.push_str(&crate::text::truncate(line, width));
        out.push('\n');
    }
    out
}

async fn watch(client: &Client, id: &str, devices: bool, json: bool) -> CommandResult {
    // The stream first: an event between the first fetch and the stream would be lost.
    let mut stream = open_stream(client).await?;
    let terminal = !json && std::io::stdout().is_terminal();
    let mut drawn_lines = 0usize;
    let mut last = String::new();
    let mut batch = Vec::new();
    loop {
        let fetched_at = tokio::time::Instant::now();
        let rollout = client.rollout(id, devices).await?;
        if json {
            let line = to_json(&rollout)?;
            if line != last {
                if !write_out(&line)? {
                    // `| head -1`: nobody reads any more.
                    return Ok(());
                }
                last = line;
            }
        } else if terminal {
            let mut frame = show_text(&rollout, devices);
            // A terminal that does not say its size (0 x 0) gets the frame uncut.
            if let Some(size) = crossterm::terminal::size()
                .ok()
                .filter(|&(width, height)| width > 0 && height > 0)
            {
                frame = fit(&frame, size);
            }
            let mut stdout = std::io::stdout().lock();
            if drawn_lines > 0 {
                // Up to the first line of the last frame, and clear from there down.
                let _ = write!(stdout, "\x1b[{drawn_lines}A\x1b[J");
            }
            let _ = stdout.write_all(frame.as_bytes());
            let _ = stdout.flush();
            drawn_lines = frame.lines().count();
        } else {
            let line = summary_line(&rollout);
            if line != last {
                let stamped = format!(
                    "{}  {line}\n",
                    crate::text::clock_time(crate::text::unix_now())
                );
                if !write_out(&stamped)? {
                    return Ok(());
                }
                last = line;
            }
        }
        if rollout.state.is_finished() {
            return finished(&rollout);
        }
        tokio::time::sleep_until(fetched_at + WATCH_MIN_INTERVAL).await;
        let refresh = tokio::time::sleep(WATCH_REFRESH);
        tokio::pin!(refresh);
        'wait: loop {
            batch.clear();
            tokio::select! {
                received = stream.next_batch(&mut batch, 512) => {
                    if received == 0 {
                        return Err(Failure::new(Exit::Unreachable, "the notify stream ended"));
                    }
                    for event in batch.drain(..) {
                        match event {
                            NotifyEvent::Notification(n) if concerns(&n, id) => break 'wait,
                            // After a gap, ask again: events may have been lost.
                            NotifyEvent::Connected | NotifyEvent::Lagged { .. } => break 'wait,
                            NotifyEvent::Rejected(error) => return Err(error.into()),
                            _ => {}
                        }
                    }
                }
                _ = &mut refresh => break 'wait,
            }
        }
    }
}

/// Asks on the terminal before an abort, naming what it does.
fn confirm_abort(rollout: &RolloutObject) -> CommandResult {
    let pending = rollout.counters.pending;
    let active = rollout.counters.active();
    eprint!(
        "Abort rollout {:?} ({})? {} will be skipped; {} mid-update will finish. [y/N] ",
        rollout.name,
        rollout.id,
        plural(pending, "pending device", "pending devices"),
        plural(active, "device", "devices"),
    );
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Failure::new(Exit::Failure, format!("cannot read the answer: {e}")))?;
    if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        Err(Failure::new(Exit::Failure, "not aborted"))
    }
}

fn state_output(rollout: &RolloutObject, json: bool) -> CommandResult {
    if json {
        print(&to_json(rollout)?)
    } else {
        print(&format!("{}\n", rollout.state.as_str()))
    }
}

fn id_output(rollout: &RolloutObject, json: bool) -> CommandResult {
    if json {
        print(&to_json(rollout)?)
    } else {
        print(&format!("{}\n", rollout.id))
    }
}

/// Starts a rollout just made; a failure names it, since it exists now.
async fn start_new(client: &Client, rollout: RolloutObject) -> Result<RolloutObject, Failure> {
    client
        .rollout_command(&rollout.id, RolloutCommand::Start)
        .await
        .map_err(|e| {
            let mut failure = Failure::from(e);
            failure.message = format!(
                "rollout {} was created but did not start: {}",
                rollout.id, failure.message
            );
            failure
        })
}

pub async fn run(client: &Client, read_only: bool, command: RolloutSubcommand) -> CommandResult {
    if let Some(change) = command.change() {
        if read_only {
            return Err(Failure::read_only(change));
        }
    }
    match command {
        RolloutSubcommand::Plan { spec, json } => {
            let spec = spec_for(client, &spec, true).await?;
            let plan = client.create_rollout(&spec).await?;
            if json {
                print(&to_json(&plan)?)
            } else {
                print(&plan_text(&plan))
            }
        }
        RolloutSubcommand::Create { spec, start, json } => {
            let spec = spec_for(client, &spec, false).await?;
            let mut rollout = client.create_rollout(&spec).await?;
            if !json {
                for note in &rollout.notes {
                    eprintln!("herd: note: {note}");
                }
            }
            if start {
                rollout = start_new(client, rollout).await?;
            }
            id_output(&rollout, json)
        }
        RolloutSubcommand::Start { id, json } => {
            let id = resolve_rollout(client, &id).await?;
            let rollout = client.rollout_command(&id, RolloutCommand::Start).await?;
            state_output(&rollout, json)
        }
        RolloutSubcommand::Pause { id, json } => {
            let id = resolve_rollout(client, &id).await?;
            let rollout = client.rollout_command(&id, RolloutCommand::Pause).await?;
            state_output(&rollout, json)
        }
        RolloutSubcommand::Resume { id, json } => {
            let id = resolve_rollout(client, &id).await?;
            let rollout = client.rollout_command(&id, RolloutCommand::Resume).await?;
            state_output(&rollout, json)
        }
        RolloutSubcommand::Abort { id, yes, json } => {
            if !yes && !std::io::stdin().is_terminal() {
                return Err(Failure::usage(
                    "abort asks for confirmation on a terminal; pass --yes to abort without asking",
                ));
            }
            let id = resolve_rollout(client, &id).await?;
            if !yes {
                let rollout = client.rollout(&id, false).await?;
                confirm_abort(&rollout)?;
            }
            let rollout = client.rollout_command(&id, RolloutCommand::Abort).await?;
            state_output(&rollout, json)
        }
        RolloutSubcommand::Retry { id, start, json } => {
            let id = resolve_rollout(client, &id).await?;
            let mut rollout = client.rollout_command(&id, RolloutCommand::Retry).await?;
            if start {
                rollout = start_new(client, rollout).await?;
            }
            id_output(&rollout, json)
        }
        RolloutSubcommand::List { json } => {
            let list = client.rollouts().await?;
            if json {
                print(&to_json(&list)?)
            } else {
                print(&rollout_table(&list))
            }
        }
        RolloutSubcommand::Show {
            id,
            devices,
            watch: true,
            json,
        } => {
            let id = resolve_rollout(client, &id).await?;
            self::watch(client, &id, devices, json).await
        }
        RolloutSubcommand::Show {
            id, devices, json, ..
        } => {
            let id = resolve_rollout(client, &id).await?;
            let rollout = client.rollout(&id, devices).await?;
            if json {
                print(&to_json(&rollout)?)
            } else {
                print(&show_text(&rollout, devices))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flags_build_the_spec() {
        let args = SpecArgs {
            firmware: Some("abcdef01".into()),
            select: Some("fw:1.0.0 name:lamp-*".into()),
            waves: Some(vec![10.0, 30.0, 60.0]),
            soak: Some(60),
            max_parallel: Some(5),
            halt_failed_percent: Some(20.0),
            commit: Some(CommitArg::AfterSoak),
            offline_then: Some(OfflineThenArg::KeepWaiting),
            delivery: Some(DeliveryArg::Pull),
            ..Default::default()
        };
        let spec = build_spec(&args, None).expect("valid");
        // PROTOCOL §10.5 field names on the wire.
        let wire = serde_json::to_value(&spec).expect("serialisable");
        assert_eq!(wire["select"], json!({"query": "fw:1.0.0 name:lamp-*"}));
        assert_eq!(
            wire["waves"],
            json!([{"percent": 10.0, "soak_s": 60}, {"percent": 30.0, "soak_s": 60}, {"percent": 60.0, "soak_s": 60}])
        );
        assert_eq!(wire["max_parallel"], 5);
        assert_eq!(wire["halt_when"], json!({"failed_percent": 20.0}));
        assert_eq!(wire["commit"], "after_soak");
        assert_eq!(wire["offline"]["then"], "keep_waiting");
        assert_eq!(wire["delivery"], "pull");
    }

    #[test]
    fn flags_override_a_spec_file() {
        let base = json!({"firmware": "ff00ff00", "select": {"ids": ["a"]},
            "waves": [{"count": 1, "soak_s": 30}, {"percent": 100, "soak_s": 0}], "max_parallel": 2});
        let args = SpecArgs {
            soak: Some(5),
            name: Some("night".into()),
            ..Default::default()
        };
        let spec = build_spec(&args, Some(base.clone())).expect("valid");
        assert_eq!(spec.name.as_deref(), Some("night"));
        assert_eq!(spec.max_parallel, 2);
        assert!(spec.waves.iter().all(|w| w.soak_s == 5));
        let args = SpecArgs {
            wave_counts: Some(vec![1, 4]),
            ..Default::default()
        };
        let spec = build_spec(&args, Some(base)).expect("valid");
        assert_eq!(spec.waves[0].count, Some(1));
        // Without --soak the file's soak of the same wave stays.
        assert_eq!((spec.waves[0].soak_s, spec.waves[1].soak_s), (30, 0));
    }

    #[test]
    fn spec_mistakes_are_usage_errors() {
        let no_firmware = SpecArgs {
            select: Some(String::new()),
            ..Default::default()
        };
        assert_eq!(
            build_spec(&no_firmware, None).expect_err("").exit,
            Exit::Usage
        );
        let no_devices = SpecArgs {
            firmware: Some("abcdef01".into()),
            ..Default::default()
        };
        assert_eq!(
            build_spec(&no_devices, None).expect_err("").exit,
            Exit::Usage
        );
        let typo =
            json!({"firmware": "ab", "select": {"query": ""}, "halt_when": {"failed_pct": 1}});
        assert_eq!(
            build_spec(&SpecArgs::default(), Some(typo))
                .expect_err("")
                .exit,
            Exit::Usage
        );
    }

    #[test]
    fn gauges_add_up() {
        let counters = Counters {
            total: 10,
            succeeded: 5,
            failed: 1,
            sending: 1,
            pending: 3,
            ..Default::default()
        };
        assert_eq!(gauge(&counters, 10), "[#####x>...]");
        assert_eq!(gauge(&Counters::default(), 4), "[....]");
        let one_of_many = Counters {
            total: 1000,
            failed: 1,
            pending: 999,
            ..Default::default()
        };
        assert_eq!(gauge(&one_of_many, 10), "[x.........]");
        assert_eq!(
            counter_text(&counters),
            "5 succeeded, 1 failed, 1 updating, 3 pending"
        );
    }

    #[test]
    fn events_of_a_rollout() {
        let n = |id: &str, name: &str, data: Value| Notification::new(id, name, data);
        assert!(concerns(&n("r1", "rollout.wave", json!({})), "r1"));
        assert!(!concerns(&n("r2", "rollout.wave", json!({})), "r1"));
        assert!(concerns(
            &n("dev", "ota.success", json!({"rollout": "r1"})),
            "r1"
        ));
        assert!(!concerns(&n("dev", "ota.success", json!({})), "r1"));
        assert!(!concerns(&n("r1", "online", Value::Null), "r1"));
    }
}
