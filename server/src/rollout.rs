//! Rollouts (PROTOCOL §10.5): firmware for many devices, in waves, watched.
//!
//! [`plan`] turns a spec into waves: the selected devices the creator may deploy to, minus
//! those already running the image or made for another app or platform (said in `notes`),
//! in an order fixed by hashing the firmware and device ids, so the same spec over the same
//! fleet always gives the same waves. A dry run stops there.
//!
//! A started rollout has one runner task, the only writer of its state. The runner starts
//! devices of the current wave, at most `max_parallel` transferring at once; a device that
//! is offline when its turn comes is waited for (`offline.wait_s`), then skipped or kept
//! waiting. Each device's update is its own task ([`device_job`]): transfer (push or pull),
//! restart, come back running the image (committed at once with `commit: device`), then its
//! wave's soak: a device still online on the new image `soak_s` after it came back counts
//! as succeeded (committed then with `commit: after_soak`). A wave ends when each of its
//! devices did, and the next one starts. Failures, reverts and
//! timeouts count against `halt_when` as they happen, so a rollout halts in the wave where
//! the threshold is crossed and later waves are never touched.
//!
//! Every state change is stored before it is acted on: a device is `sending` in the store
//! before its first byte goes out. After a crash the runner of every unfinished rollout
//! starts again and each device carries on from its stored state; a device found `sending`
//! is asked what it runs first, so an image that did arrive is not sent twice.
//! Pausing or aborting stops new starts; updates under way finish (a device is never left
//! with half an image).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use protocol::filter::Filter;
use protocol::firmware::{
    rollout_event_body, stage, CommitPolicy, Counters, DeviceState, OfflineThen, RolloutDevice,
    RolloutObject, RolloutSpec, RolloutState, WaveSpec, WaveStatus, ROLLOUT_ABORTED,
    ROLLOUT_COMPLETED, ROLLOUT_HALTED, ROLLOUT_PAUSED, ROLLOUT_PLANNED, ROLLOUT_RESUMED,
    ROLLOUT_STARTED, ROLLOUT_WAVE,
};
use protocol::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::hub::Identity;
use crate::ota::{self, Failure, Return};
use crate::store::{DeviceRecord, FirmwareRecord, RolloutDeviceRecord, RolloutRecord};
use crate::{access, auth, clock, AppState};

/// How long a runner sleeps when nothing happens; offline waits and soaks are checked at
/// this pace.
const TICK: Duration = Duration::from_millis(250);
/// Extra time, beyond the commit timeout, for a device to come back after taking an image.
const RETURN_GRACE: Duration = Duration::from_secs(60);

/// An operator's command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Pause,
    Resume,
    Abort,
}

impl Action {
    /// The action a [`Action::name`] names.
    pub fn parse(name: &str) -> Option<Action> {
        [Action::Start, Action::Pause, Action::Resume, Action::Abort]
            .into_iter()
            .find(|action| action.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Abort => "abort",
        }
    }
}

struct Control {
    action: Action,
    reply: oneshot::Sender<Result<(), ApiError>>,
}

/// The runners of active rollouts, each with a generation so a runner that ends removes
/// only its own entry.
#[derive(Default)]
pub struct Rollouts {
    runners: Mutex<HashMap<String, (u64, mpsc::Sender<Control>)>>,
    generation: std::sync::atomic::AtomicU64,
}

impl Rollouts {
    /// Applies `action` to rollout `id` through its runner, starting one if none runs.
    pub async fn control(
        &self,
        state: &AppState,
        id: &str,
        action: Action,
    ) -> Result<(), ApiError> {
        if !state.runs_rollouts() {
            return forward(state, id, action).await;
        }
        for _ in 0..3 {
            let sender = self.runner(state, id).await?;
            let (reply, answer) = oneshot::channel();
            if sender.send(Control { action, reply }).await.is_err() {
                // The runner just ended; the next one loads the stored state.
                continue;
            }
            match answer.await {
                Ok(result) => return result,
                Err(_) => continue,
            }
        }
        Err(ApiError::internal(format!(
            "rollout {id} did not take the {} command",
            action.name()
        )))
    }

    async fn runner(&self, state: &AppState, id: &str) -> Result<mpsc::Sender<Control>, ApiError> {
        if let Some((_, sender)) = self.runners.lock().get(id) {
            return Ok(sender.clone());
        }
        let runner = Runner::load(state.clone(), id).await?;
        let mut runners = self.runners.lock();
        if let Some((_, sender)) = runners.get(id) {
            return Ok(sender.clone());
        }
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (sender, control) = mpsc::channel(8);
        runners.insert(id.to_string(), (generation, sender.clone()));
        tokio::spawn(runner.run(control, generation));
        Ok(sender)
    }

    /// Removes runner `generation` of rollout `id` unless a command waits for it; returns
    /// the waiting command.
    fn retire(
        &self,
        id: &str,
        generation: u64,
        control: &mut mpsc::Receiver<Control>,
    ) -> Option<Control> {
        let mut runners = self.runners.lock();
        if let Ok(command) = control.try_recv() {
            return Some(command);
        }
        if runners.get(id).is_some_and(|(g, _)| *g == generation) {
            runners.remove(id);
        }
        control.close();
        None
    }

    /// Starts the runners of rollouts a previous process left unfinished.
    pub async fn resume_all(&self, state: &AppState) {
        if !state.runs_rollouts() {
            return;
        }
        let rollouts = match state.store.list_rollouts(None).await {
            Ok(rollouts) => rollouts,
            Err(e) => {
                tracing::error!(error = %e, "cannot list rollouts to resume");
                return;
            }
        };
        for rollout in rollouts {
            let wanted = match rollout.state {
                RolloutState::Running => true,
                RolloutState::Planned | RolloutState::Completed => false,
                // Updates under way when the process stopped still need watching.
                _ => match state.store.rollout_devices(&rollout.id).await {
                    Ok(devices) => devices.iter().any(|d| d.state.is_active()),
                    Err(_) => false,
                },
            };
            if wanted {
                match self.runner(state, &rollout.id).await {
                    Ok(_) => {
                        tracing::info!(rollout = %rollout.id, state = rollout.state.as_str(), "rollout resumed")
                    }
                    Err(e) => {
                        tracing::error!(rollout = %rollout.id, error = %e, "cannot resume rollout")
                    }
                }
            }
        }
    }

    /// Whether a runner is alive for rollout `id` (tests, shutdown).
    pub fn is_running(&self, id: &str) -> bool {
        self.runners.lock().contains_key(id)
    }
}

/// Sends an operator's command to the cluster node that runs the rollouts.
async fn forward(state: &AppState, id: &str, action: Action) -> Result<(), ApiError> {
    let Some(cluster) = state.cluster.as_ref() else {
        return Err(ApiError::internal("no node runs the rollouts"));
    };
    let Some(leader) =
        crate::cluster::route::lease_holder(cluster, crate::cluster::ROLLOUT_LEASE).await
    else {
        return Err(ApiError::unavailable(
            "no node runs the rollouts right now; try again in a few seconds",
        ));
    };
    let request = crate::cluster::route::Request::Rollout {
        id: id.to_string(),
        action: action.name().to_string(),
    };
    match cluster
        .request(&leader, &request, std::time::Duration::from_secs(30))
        .await
    {
        Ok(_) => Ok(()),
        Err(crate::cluster::route::RouteError::Failed(e)) => Err(e),
        Err(e) => Err(ApiError::unavailable(format!(
            "the node that runs the rollouts ({leader}) did not answer: {e:?}"
        ))),
    }
}

/// A planned rollout, stored or not.
pub struct Plan {
    pub rollout: RolloutRecord,
    pub devices: Vec<RolloutDeviceRecord>,
    pub notes: Vec<String>,
    pub firmware: FirmwareRecord,
}

fn check_spec(spec: &RolloutSpec) -> Result<(), ApiError> {
    let bad = |message: String| Err(ApiError::bad_request(message));
    if spec.select.ids.is_none() && spec.select.query.is_none() {
        return bad(
            "select needs ids or a query (an empty query selects every device you may update)"
                .into(),
        );
    }
    if spec.select.ids.as_ref().is_some_and(Vec::is_empty) {
        return bad("select.ids is empty".into());
    }
    if !(1..=10_000).contains(&spec.max_parallel) {
        return bad("max_parallel must be within 1..=10000".into());
    }
    if spec.commit_timeout_s == 0 {
        return bad("commit_timeout_s must be positive".into());
    }
    if let Some(p) = spec.halt_when.failed_percent {
        if !(0.0..=100.0).contains(&p) || !p.is_finite() {
            return bad("halt_when.failed_percent must be within 0..=100".into());
        }
    }
    let mut percent_sum = 0.0;
    for (i, wave) in spec.waves.iter().enumerate() {
        match (wave.percent, wave.count) {
            (Some(p), None) if p.is_finite() && p > 0.0 && p <= 100.0 => percent_sum += p,
            (None, Some(c)) if c > 0 => {}
            (Some(_), Some(_)) => return bad(format!("wave {i}: give percent or count, not both")),
            (None, None) => return bad(format!("wave {i}: give percent or count")),
            _ => {
                return bad(format!(
                    "wave {i}: percent must be within (0, 100], count positive"
                ))
            }
        }
    }
    if percent_sum > 100.0 + 1e-9 {
        return bad(format!(
            "the waves' percents add up to {percent_sum}, more than 100"
        ));
    }
    Ok(())
}

/// Wave sizes for `total` devices: waves take their share in order; the last one takes
/// whatever is left.
pub fn wave_sizes(waves: &[WaveSpec], total: u64) -> Vec<u64> {
    if waves.is_empty() {
        return vec![total];
    }
    let mut sizes = Vec::with_capacity(waves.len());
    let mut assigned = 0u64;
    let mut cumulative = 0.0f64;
    for (i, wave) in waves.iter().enumerate() {
        let left = total - assigned;
        let size = if i + 1 == waves.len() {
            left
        } else if let Some(count) = wave.count {
            count.min(left)
        } else {
            cumulative += wave.percent.unwrap_or(0.0);
            let target = ((total as f64) * cumulative / 100.0).ceil() as u64;
            target.saturating_sub(assigned).min(left)
        };
        assigned += size;
        sizes.push(size);
    }
    sizes
}

/// The plan's order: a hash of firmware and device ids, so waves mix the fleet but the
/// same spec gives the same plan.
fn plan_key(firmware: &str, device: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(firmware.as_bytes());
    hasher.update(b":");
    hasher.update(device.as_bytes());
    hasher.finalize().into()
}

/// Plans `spec` for `user` (see the module docs).
pub async fn plan(
    state: &AppState,
    caller: &Caller,
    mut spec: RolloutSpec,
) -> Result<Plan, ApiError> {
    let user = &caller.user;
    check_spec(&spec)?;
    let (firmware, owners) = state
        .store
        .firmware(&spec.firmware)
        .await?
        .filter(|(_, owners)| access::can_see_firmware(user, owners))
        .ok_or_else(|| ApiError::not_found(format!("firmware {} not found", spec.firmware)))?;
    let _ = owners;
    let visible = crate::rest::visible_devices(state, caller).await?;
    let filter = Filter::parse(spec.select.query.as_deref().unwrap_or(""));
    let wanted: Option<HashSet<&str>> = spec
        .select
        .ids
        .as_ref()
        .map(|ids| ids.iter().map(String::as_str).collect());
    if let Some(wanted) = &wanted {
        let known: HashSet<&str> = visible.iter().map(|d| d.id.as_str()).collect();
        let mut unknown: Vec<&str> = wanted
            .iter()
            .filter(|id| !known.contains(*id))
            .copied()
            .collect();
        if !unknown.is_empty() {
            unknown.sort_unstable();
            return Err(ApiError::not_found(format!(
                "devices not found: {}",
                unknown.join(", ")
            )));
        }
    }
    let mut notes = Vec::new();
    let (mut up_to_date, mut other_app, mut other_platform, mut not_deployable) = (0, 0, 0, 0);
    let mut chosen: Vec<(&DeviceRecord, bool)> = Vec::new();
    for device in &visible {
        if wanted
            .as_ref()
            .is_some_and(|w| !w.contains(device.id.as_str()))
        {
            continue;
        }
        let candidate = access::DeviceFacts {
            device,
            online: state.is_online(&device.id),
        };
        if !filter.matches(&candidate) {
            continue;
        }
        if access::require_deploy(caller, device).is_err() {
            not_deployable += 1;
            continue;
        }
        let app = access::info_text(device, "app");
        let arch = access::info_text(device, "arch");
        if ota::runs(
            &firmware,
            access::info_text(device, "fw_id"),
            access::info_text(device, "fw_version"),
        ) {
            up_to_date += 1;
        } else if !firmware.app.is_empty() && !app.is_empty() && app != firmware.app {
            other_app += 1;
        } else if !firmware.platform.is_empty() && !arch.is_empty() && arch != firmware.platform {
            other_platform += 1;
        } else {
            chosen.push((device, candidate.online));
        }
    }
    if up_to_date > 0 {
        notes.push(format!(
            "{up_to_date} selected devices already run {} and are left out",
            version_text(&firmware)
        ));
    }
    if other_app > 0 {
        notes.push(format!(
            "{other_app} selected devices run another app than {} and are left out",
            firmware.app
        ));
    }
    if other_platform > 0 {
        notes.push(format!(
            "{other_platform} selected devices are not {} and are left out",
            firmware.platform
        ));
    }
    if not_deployable > 0 {
        notes.push(format!(
            "{not_deployable} selected devices are only shared with you and are left out"
        ));
    }
    if chosen.is_empty() {
        let mut message = "the rollout selects no device to update".to_string();
        if !notes.is_empty() {
            message = format!("{message}: {}", notes.join("; "));
        }
        return Err(ApiError::bad_request(message));
    }
    chosen.sort_by_key(|(device, _)| plan_key(&firmware.id, &device.id));
    let offline = chosen.iter().filter(|(_, online)| !online).count();
    if offline > 0 {
        notes.push(format!(
            "{offline} of {} devices are offline now",
            chosen.len()
        ));
    }
    let sizes = wave_sizes(&spec.waves, chosen.len() as u64);
    if spec.waves.is_empty() {
        spec.waves.push(WaveSpec {
            percent: Some(100.0),
            count: None,
            soak_s: 0,
        });
    }
    let id = if spec.dry_run {
        String::new()
    } else {
        auth::new_secret()
    };
    let now = clock::now();
    let mut devices = Vec::with_capacity(chosen.len());
    let mut position = 0u32;
    for (wave, size) in sizes.iter().enumerate() {
        for (device, _) in chosen.iter().skip(position as usize).take(*size as usize) {
            devices.push(RolloutDeviceRecord {
                rollout_id: id.clone(),
                device_id: device.id.clone(),
                name: device.name.clone(),
                wave: wave as u32,
                position,
                state: DeviceState::Pending,
                from_version: access::info_text(device, "fw_version").to_string(),
                attempts: 0,
                message: String::new(),
                started_at: None,
                finished_at: None,
            });
            position += 1;
        }
    }
    let name = spec
        .name
        .clone()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| {
            format!("{} {}", firmware.app, version_text(&firmware))
                .trim()
                .to_string()
        });
    Ok(Plan {
        rollout: RolloutRecord {
            id,
            name,
            firmware_id: firmware.id.clone(),
            spec,
            state: RolloutState::Planned,
            current_wave: 0,
            wave_started_at: None,
            reason: String::new(),
            created_by: user.id.clone(),
            created_at: now,
            started_at: None,
            finished_at: None,
        },
        devices,
        notes,
        firmware,
    })
}

fn version_text(firmware: &FirmwareRecord) -> String {
    if firmware.version.is_empty() {
        format!("firmware {}", &firmware.id[..12.min(firmware.id.len())])
    } else {
        firmware.version.clone()
    }
}

/// Stores a plan and announces it (`rollout.planned`).
pub async fn create(state: &AppState, plan: Plan) -> Result<RolloutObject, ApiError> {
    state
        .store
        .create_rollout(plan.rollout.clone(), plan.devices.clone())
        .await?;
    let object = object(
        state,
        &plan.rollout,
        &plan.devices,
        &plan.firmware,
        false,
        plan.notes,
    );
    state.hub.emit(
        &audience(&plan.rollout),
        ROLLOUT_PLANNED,
        &rollout_event_body(&object, &[("name", json!(object.name))]),
    );
    Ok(object)
}

/// Who sees a rollout's events: its creator and the admin (PROTOCOL §10.6).
pub fn audience(rollout: &RolloutRecord) -> Identity {
    Identity {
        id: rollout.id.as_str().into(),
        owner: rollout.created_by.as_str().into(),
        shared_with: "".into(),
    }
}

fn counters_of<'a>(devices: impl Iterator<Item = &'a RolloutDeviceRecord>) -> Counters {
    let mut counters = Counters::default();
    for device in devices {
        counters.add(device.state);
    }
    counters
}

/// The API form of a rollout.
pub fn object(
    state: &AppState,
    rollout: &RolloutRecord,
    devices: &[RolloutDeviceRecord],
    firmware: &FirmwareRecord,
    with_devices: bool,
    notes: Vec<String>,
) -> RolloutObject {
    let sizes: Vec<u64> = (0..rollout.spec.waves.len())
        .map(|w| devices.iter().filter(|d| d.wave as usize == w).count() as u64)
        .collect();
    let waves = rollout
        .spec
        .waves
        .iter()
        .enumerate()
        .map(|(i, wave)| WaveStatus {
            index: i as u32,
            size: sizes[i],
            soak_s: wave.soak_s,
            counters: counters_of(devices.iter().filter(|d| d.wave as usize == i)),
            started_at: (i as u32 == rollout.current_wave)
                .then_some(rollout.wave_started_at)
                .flatten()
                .map(clock::rfc3339),
        })
        .collect();
    let dry_run = rollout.id.is_empty();
    RolloutObject {
        id: rollout.id.clone(),
        name: rollout.name.clone(),
        firmware: rollout.firmware_id.clone(),
        version: firmware.version.clone(),
        state: rollout.state,
        spec: rollout.spec.clone(),
        counters: counters_of(devices.iter()),
        waves,
        current_wave: rollout.current_wave,
        reason: rollout.reason.clone(),
        created_by: rollout.created_by.clone(),
        created_at: clock::rfc3339(rollout.created_at),
        started_at: rollout.started_at.map(clock::rfc3339),
        finished_at: rollout.finished_at.map(clock::rfc3339),
        dry_run,
        notes,
        devices: (with_devices || dry_run).then(|| {
            devices
                .iter()
                .map(|d| RolloutDevice {
                    id: d.device_id.clone(),
                    name: d.name.clone(),
                    wave: d.wave,
                    state: d.state,
                    online: state.is_online(&d.device_id),
                    from_version: d.from_version.clone(),
                    attempts: d.attempts,
                    message: d.message.clone(),
                    started_at: d.started_at.map(clock::rfc3339),
                    finished_at: d.finished_at.map(clock::rfc3339),
                })
                .collect()
        }),
    }
}

/// What a device's update task tells its runner.
#[derive(Debug)]
struct JobEvent {
    index: usize,
    state: DeviceState,
    message: String,
    stage: Option<&'static str>,
    running_version: String,
    identity: Identity,
    /// The task ends with this event.
    ended: bool,
    /// A transfer starts again (after a restart of the server cut the last one).
    new_attempt: bool,
}

/// A device's update task, as the runner tracks it.
struct Job;

struct Runner {
    state: AppState,
    rollout: RolloutRecord,
    devices: Vec<RolloutDeviceRecord>,
    firmware: Arc<FirmwareRecord>,
    jobs: HashMap<usize, Job>,
    waiting_since: HashMap<usize, Instant>,
    events_tx: mpsc::UnboundedSender<JobEvent>,
    events: mpsc::UnboundedReceiver<JobEvent>,
}

impl Runner {
    async fn load(state: AppState, id: &str) -> Result<Runner, ApiError> {
        let rollout = state
            .store
            .rollout(id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("rollout {id} not found")))?;
        let devices = state.store.rollout_devices(id).await?;
        let (firmware, _) = state
            .store
            .firmware(&rollout.firmware_id)
            .await?
            .ok_or_else(|| ApiError::internal(format!("rollout {id}: its firmware is gone")))?;
        let (events_tx, events) = mpsc::unbounded_channel();
        Ok(Runner {
            state,
            rollout,
            devices,
            firmware: Arc::new(firmware),
            jobs: HashMap::new(),
            waiting_since: HashMap::new(),
            events_tx,
            events,
        })
    }

    async fn run(mut self, mut control: mpsc::Receiver<Control>, generation: u64) {
        // Updates under way when the last process stopped carry on from their stored state.
        for index in 0..self.devices.len() {
            if self.devices[index].state.is_active() {
                self.spawn(index, true).await;
            }
        }
        loop {
            if !self.state.runs_rollouts() {
                // The cluster's rollout lease went to another node, which runs it now.
                let mut runners = self.state.rollouts.runners.lock();
                if runners
                    .get(&self.rollout.id)
                    .is_some_and(|(g, _)| *g == generation)
                {
                    runners.remove(&self.rollout.id);
                }
                return;
            }
            self.step().await;
            if self.rollout.state != RolloutState::Running && self.jobs.is_empty() {
                let rollouts = &self.state.rollouts;
                match rollouts.retire(&self.rollout.id, generation, &mut control) {
                    Some(command) => {
                        let result = self.command(command.action).await;
                        let _ = command.reply.send(result);
                        continue;
                    }
                    None => return,
                }
            }
            tokio::select! {
                biased;
                // On shutdown the device sockets close under the updates; what they report
                // then is not the devices' doing, and the next runner resumes them.
                _ = self.state.shutdown.cancelled() => return,
                Some(event) = self.events.recv() => self.apply(event).await,
                command = control.recv() => if let Some(command) = command {
                    let result = self.command(command.action).await;
                    let _ = command.reply.send(result);
                },
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }

    fn emit(&self, name: &str, extra: &[(&str, Value)]) {
        let object = object(
            &self.state,
            &self.rollout,
            &self.devices,
            &self.firmware,
            false,
            Vec::new(),
        );
        self.state.hub.emit(
            &audience(&self.rollout),
            name,
            &rollout_event_body(&object, extra),
        );
    }

    async fn save(&self) {
        if let Err(e) = self.state.store.save_rollout(self.rollout.clone()).await {
            tracing::error!(rollout = %self.rollout.id, error = %e, "cannot store the rollout's state");
        }
    }

    async fn save_device(&self, index: usize) -> Result<(), ApiError> {
        self.state
            .store
            .save_rollout_devices(vec![self.devices[index].clone()])
            .await
            .map_err(ApiError::from)
    }

    async fn command(&mut self, action: Action) -> Result<(), ApiError> {
        let from = self.rollout.state;
        let refuse = || {
            Err(ApiError::conflict(format!(
                "cannot {} a rollout that is {}",
                action.name(),
                from.as_str()
            )))
        };
        match (action, from) {
            (Action::Start, RolloutState::Planned) => {
                let now = clock::now();
                self.rollout.state = RolloutState::Running;
                self.rollout.started_at = Some(now);
                self.rollout.current_wave = 0;
                self.rollout.wave_started_at = Some(now);
                self.save().await;
                self.emit(ROLLOUT_STARTED, &[]);
                self.emit(ROLLOUT_WAVE, &[("devices", json!(self.wave_size(0)))]);
            }
            (Action::Pause, RolloutState::Running) => {
                self.rollout.state = RolloutState::Paused;
                self.save().await;
                self.emit(ROLLOUT_PAUSED, &[]);
            }
            // A halted rollout goes on when an operator says so, having looked at the
            // failures; a new failure in the same wave halts it again.
            (Action::Resume, RolloutState::Paused | RolloutState::Halted) => {
                self.rollout.state = RolloutState::Running;
                self.rollout.finished_at = None;
                self.save().await;
                self.emit(ROLLOUT_RESUMED, &[]);
            }
            (
                Action::Abort,
                RolloutState::Planned | RolloutState::Running | RolloutState::Paused,
            ) => {
                self.rollout.state = RolloutState::Aborted;
                self.rollout.reason = "aborted by an operator".into();
                let now = clock::now();
                let mut skipped = Vec::new();
                for device in &mut self.devices {
                    if device.state == DeviceState::Pending {
                        device.state = DeviceState::Skipped;
                        device.message = "the rollout was aborted".into();
                        device.finished_at = Some(now);
                        skipped.push(device.clone());
                    }
                }
                if let Err(e) = self.state.store.save_rollout_devices(skipped).await {
                    return Err(e.into());
                }
                if self.jobs.is_empty() {
                    self.rollout.finished_at = Some(now);
                }
                self.save().await;
                self.emit(ROLLOUT_ABORTED, &[]);
            }
            _ => return refuse(),
        }
        Ok(())
    }

    fn wave_size(&self, wave: u32) -> usize {
        self.devices.iter().filter(|d| d.wave == wave).count()
    }

    fn in_wave(&self, wave: u32) -> impl Iterator<Item = usize> + '_ {
        (0..self.devices.len()).filter(move |&i| self.devices[i].wave == wave)
    }

    async fn step(&mut self) {
        let wave = self.rollout.current_wave;
        if self.rollout.state == RolloutState::Running {
            self.start_devices(wave).await;
        }
        let running = self.rollout.state == RolloutState::Running;
        // A wave is over when each of its devices is: updated and soaked, failed, or
        // skipped. Once nothing new may start, pending devices no longer hold it open.
        let open = self.in_wave(wave).any(|i| {
            let s = self.devices[i].state;
            s.is_active() || (running && s == DeviceState::Pending)
        });
        if open {
            return;
        }
        let now = clock::now();
        match self.rollout.state {
            RolloutState::Running => {
                if (wave as usize) + 1 < self.rollout.spec.waves.len() {
                    self.rollout.current_wave = wave + 1;
                    self.rollout.wave_started_at = Some(now);
                    self.save().await;
                    self.emit(
                        ROLLOUT_WAVE,
                        &[("devices", json!(self.wave_size(wave + 1)))],
                    );
                } else {
                    self.rollout.state = RolloutState::Completed;
                    self.rollout.finished_at = Some(now);
                    self.save().await;
                    self.emit(ROLLOUT_COMPLETED, &[]);
                }
            }
            RolloutState::Halted | RolloutState::Aborted
                if self.jobs.is_empty() && self.rollout.finished_at.is_none() =>
            {
                self.rollout.finished_at = Some(now);
                self.save().await;
            }
            _ => {}
        }
    }

    async fn start_devices(&mut self, wave: u32) {
        let mut transferring = self
            .devices
            .iter()
            .filter(|d| matches!(d.state, DeviceState::Sending | DeviceState::Rebooting))
            .count();
        let limit = self.rollout.spec.max_parallel as usize;
        let offline = self.rollout.spec.offline;
        let pending: Vec<usize> = self
            .in_wave(wave)
            .filter(|&i| self.devices[i].state == DeviceState::Pending)
            .collect();
        for index in pending {
            if transferring >= limit {
                break;
            }
            let id = self.devices[index].device_id.clone();
            if !self.state.registry.is_online(&id) {
                let since = *self.waiting_since.entry(index).or_insert_with(Instant::now);
                let waited = since.elapsed();
                if offline.then == OfflineThen::Skip
                    && waited >= Duration::from_secs(offline.wait_s)
                {
                    let device = &mut self.devices[index];
                    device.state = DeviceState::Skipped;
                    device.message = format!(
                        "offline for more than {} s when its turn came",
                        offline.wait_s
                    );
                    device.finished_at = Some(clock::now());
                    if let Err(e) = self.save_device(index).await {
                        tracing::error!(error = %e, "cannot store a skipped device");
                    }
                } else if self.devices[index].message.is_empty() {
                    self.devices[index].message = "offline; waiting for it".into();
                }
                continue;
            }
            if self.state.ota_jobs.is_busy(&id) {
                // A one-device push runs on it; its turn comes when that ends.
                continue;
            }
            self.waiting_since.remove(&index);
            let device = &mut self.devices[index];
            device.state = DeviceState::Sending;
            device.attempts += 1;
            device.started_at = Some(clock::now());
            device.message.clear();
            // Stored before the first byte goes out, so a crash can never forget it.
            if let Err(e) = self.save_device(index).await {
                tracing::error!(error = %e, "cannot store a device's start; not starting it");
                self.devices[index].state = DeviceState::Pending;
                self.devices[index].attempts -= 1;
                return;
            }
            self.spawn(index, false).await;
            transferring += 1;
        }
    }

    /// Starts device `index`'s update task; when another update holds the device (a
    /// one-device push), it goes back to `pending` and starts once that ended.
    async fn spawn(&mut self, index: usize, resumed: bool) {
        let device = &self.devices[index];
        let Some(guard) =
            self.state
                .ota_jobs
                .claim(&device.device_id, &self.firmware.id, Some(&self.rollout.id))
        else {
            tracing::info!(device = %device.device_id, "another update runs on the device; it waits");
            let device = &mut self.devices[index];
            if device.state == DeviceState::Sending && !resumed {
                device.attempts = device.attempts.saturating_sub(1);
            }
            device.state = DeviceState::Pending;
            device.message = "waiting: another update runs on the device".into();
            if let Err(e) = self.save_device(index).await {
                tracing::error!(error = %e, "cannot store a device's state");
            }
            return;
        };
        self.jobs.insert(index, Job);
        let context = JobContext {
            state: self.state.clone(),
            firmware: self.firmware.clone(),
            spec: self.rollout.spec.clone(),
            rollout: self.rollout.id.clone(),
            index,
            soak: Duration::from_secs(
                self.rollout
                    .spec
                    .waves
                    .get(self.devices[index].wave as usize)
                    .map_or(0, |w| w.soak_s),
            ),
            device: self.devices[index].device_id.clone(),
            events: self.events_tx.clone(),
        };
        let from = self.devices[index].state;
        tokio::spawn(async move {
            let _guard = guard;
            device_job(context, from, resumed).await;
        });
    }

    async fn apply(&mut self, event: JobEvent) {
        if self.state.shutdown.is_cancelled() {
            return;
        }
        let index = event.index;
        if event.ended {
            self.jobs.remove(&index);
        }
        let now = clock::now();
        let device = &mut self.devices[index];
        device.state = event.state;
        device.message = event.message.clone();
        if event.new_attempt {
            device.attempts += 1;
            device.started_at = Some(now);
        }
        if event.state.is_final() {
            device.finished_at = Some(now);
        }
        let started = device.started_at.unwrap_or(now);
        if let Err(e) = self.save_device(index).await {
            tracing::error!(error = %e, "cannot store a device's state");
        }
        let firmware = &self.firmware;
        let rollout = Some(self.rollout.id.as_str());
        match event.state {
            DeviceState::Succeeded => ota::emit_success(
                &self.state,
                &event.identity,
                firmware,
                now - started,
                rollout,
            ),
            DeviceState::Failed | DeviceState::TimedOut => ota::emit_failure(
                &self.state,
                &event.identity,
                firmware,
                &Failure {
                    stage: event.stage.unwrap_or(stage::VERIFY),
                    message: event.message.clone(),
                    cause: None,
                },
                rollout,
            ),
            DeviceState::Reverted => ota::emit_revert(
                &self.state,
                &event.identity,
                firmware,
                &event.running_version,
                &event.message,
                rollout,
            ),
            _ => {}
        }
        if event.state.is_failure() {
            self.check_thresholds().await;
        }
    }

    async fn check_thresholds(&mut self) {
        if !matches!(
            self.rollout.state,
            RolloutState::Running | RolloutState::Paused
        ) {
            return;
        }
        let halt = &self.rollout.spec.halt_when;
        let wave = self.rollout.current_wave;
        let wave_counters = counters_of(self.devices.iter().filter(|d| d.wave == wave));
        let total_failures = counters_of(self.devices.iter()).failures();
        let mut reason = None;
        if let Some(limit) = halt.failed_percent {
            let size = wave_counters.total.max(1);
            let failed = wave_counters.failures();
            let percent = failed as f64 * 100.0 / size as f64;
            if failed > 0 && percent >= limit {
                reason = Some(format!(
                    "wave {wave}: {failed} of {size} devices failed ({percent:.1} %), the limit is {limit} %"
                ));
            }
        }
        if let Some(limit) = halt.failed_count {
            if reason.is_none() && total_failures >= limit && limit > 0 {
                reason = Some(format!(
                    "{total_failures} devices failed, the limit is {limit}"
                ));
            }
        }
        if let Some(reason) = reason {
            tracing::warn!(rollout = %self.rollout.id, %reason, "rollout halted");
            self.rollout.state = RolloutState::Halted;
            self.rollout.reason = reason.clone();
            self.save().await;
            self.emit(ROLLOUT_HALTED, &[("reason", json!(reason))]);
        }
    }
}

struct JobContext {
    state: AppState,
    firmware: Arc<FirmwareRecord>,
    spec: RolloutSpec,
    rollout: String,
    index: usize,
    /// How long the device must stay healthy on the new image (its wave's `soak_s`).
    soak: Duration,
    device: String,
    events: mpsc::UnboundedSender<JobEvent>,
}

impl JobContext {
    async fn identity(&self) -> Identity {
        if let Some(conn) = self.state.registry.get(&self.device) {
            return conn.identity();
        }
        match self.state.store.device(&self.device).await {
            Ok(Some(device)) => Identity::of(&device),
            _ => Identity {
                id: self.device.as_str().into(),
                owner: "".into(),
                shared_with: "".into(),
            },
        }
    }

    async fn send(
        &self,
        state: DeviceState,
        message: impl Into<String>,
        stage: Option<&'static str>,
        running_version: &str,
    ) {
        let ended = state.is_final();
        let _ = self.events.send(JobEvent {
            index: self.index,
            state,
            message: message.into(),
            stage,
            running_version: running_version.to_string(),
            identity: self.identity().await,
            ended,
            new_attempt: false,
        });
    }

    /// Tells the runner a cut transfer starts again: one more attempt.
    async fn send_again(&self) {
        let _ = self.events.send(JobEvent {
            index: self.index,
            state: DeviceState::Sending,
            message: "sending again: the last transfer was cut".into(),
            stage: None,
            running_version: String::new(),
            identity: self.identity().await,
            ended: false,
            new_attempt: true,
        });
    }

    fn return_timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.spec.commit_timeout_s)) + RETURN_GRACE
    }

    /// Waits up to the offline policy's time for the device to be online again.
    async fn wait_online(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(self.spec.offline.wait_s.max(30));
        let notify = self.state.watch.subscribe(&self.device);
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.state.registry.is_online(&self.device) {
                return true;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => return false,
            }
        }
    }
}

/// One device's part of a rollout, from `from` (see the module docs).
async fn device_job(ctx: JobContext, from: DeviceState, resumed: bool) {
    let firmware = ctx.firmware.clone();
    let mut phase = from;
    let mut old_conn = None;
    if phase == DeviceState::Sending && resumed {
        // Ask the device what it runs before sending anything again.
        if !ctx.wait_online().await {
            ctx.send(
                DeviceState::Failed,
                "offline since the server restarted during its update",
                Some(stage::BEGIN),
                "",
            )
            .await;
            return;
        }
        match ota::await_return(
            &ctx.state,
            &ctx.device,
            &firmware,
            None,
            ctx.return_timeout(),
        )
        .await
        {
            Return::Updated { .. } => phase = DeviceState::Rebooting,
            Return::Reverted { .. } => {}
            Return::TimedOut => {
                ctx.send(
                    DeviceState::TimedOut,
                    "did not report its firmware after the server restarted",
                    Some(stage::REBOOT),
                    "",
                )
                .await;
                return;
            }
        }
    }
    if phase == DeviceState::Sending {
        if resumed {
            ctx.send_again().await;
        }
        if !ctx.state.is_online(&ctx.device) {
            ctx.send(
                DeviceState::Failed,
                "went offline before its update began",
                Some(stage::BEGIN),
                "",
            )
            .await;
            return;
        }
        // On this node or, in a cluster, on the node that holds the device.
        let transfer = ota::Transfer {
            firmware: firmware.id.clone(),
            commit_timeout_s: ctx.spec.commit_timeout_s,
            rollout: Some(ctx.rollout.clone()),
            delivery: ctx.spec.delivery,
        };
        match ota::transfer(&ctx.state, &ctx.device, &firmware, transfer).await {
            Ok(conn) => old_conn = Some(conn),
            Err(failure) => {
                ctx.send(
                    DeviceState::Failed,
                    failure.message,
                    Some(failure.stage),
                    "",
                )
                .await;
                return;
            }
        }
        ctx.send(
            DeviceState::Rebooting,
            "restarting into the new firmware",
            None,
            "",
        )
        .await;
        phase = DeviceState::Rebooting;
    }
    if phase == DeviceState::Rebooting || (phase == DeviceState::Verifying && resumed) {
        match ota::await_return(
            &ctx.state,
            &ctx.device,
            &firmware,
            old_conn,
            ctx.return_timeout(),
        )
        .await
        {
            Return::Updated { .. } => {
                if ctx.spec.commit == CommitPolicy::Device {
                    if let Err(failure) = ota::commit(&ctx.state, &ctx.device).await {
                        ctx.send(
                            DeviceState::Failed,
                            failure.message,
                            Some(failure.stage),
                            "",
                        )
                        .await;
                        return;
                    }
                }
                ctx.send(
                    DeviceState::Verifying,
                    "running the new firmware; soaking",
                    None,
                    "",
                )
                .await;
            }
            Return::Reverted {
                running_version,
                message,
            } => {
                ctx.send(
                    DeviceState::Reverted,
                    message,
                    Some(stage::REBOOT),
                    &running_version,
                )
                .await;
                return;
            }
            Return::TimedOut => {
                let message = format!(
                    "did not come back within {} s",
                    ctx.return_timeout().as_secs()
                );
                ctx.send(DeviceState::TimedOut, message, Some(stage::REBOOT), "")
                    .await;
                return;
            }
        }
    }
    // The soak: the device must stay on the connection it came back on.
    let conn_at_verify = ota::connection(&ctx.state, &ctx.device).await;
    let mut left = false;
    let soak_end = Instant::now() + ctx.soak;
    let notify = ctx.state.watch.subscribe(&ctx.device);
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if ota::connection(&ctx.state, &ctx.device).await != conn_at_verify {
            left = true;
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(soak_end) => break,
            _ = notified => {}
            // The next runner resumes this device from `verifying`.
            _ = ctx.state.shutdown.cancelled() => return,
        }
    }
    if !left
        && ota::connection(&ctx.state, &ctx.device).await == conn_at_verify
        && conn_at_verify.is_some()
    {
        if ctx.spec.commit == CommitPolicy::AfterSoak {
            if let Err(failure) = ota::commit(&ctx.state, &ctx.device).await {
                ctx.send(
                    DeviceState::Failed,
                    failure.message,
                    Some(failure.stage),
                    "",
                )
                .await;
                return;
            }
        }
        ctx.send(DeviceState::Succeeded, "", None, "").await;
        return;
    }
    // It left during the soak: see what it comes back with.
    match ota::await_return(
        &ctx.state,
        &ctx.device,
        &firmware,
        conn_at_verify,
        ctx.return_timeout(),
    )
    .await
    {
        Return::Updated { .. } => {
            ctx.send(
                DeviceState::Failed,
                "disconnected during the soak",
                Some(stage::VERIFY),
                "",
            )
            .await;
        }
        Return::Reverted {
            running_version,
            message,
        } => {
            ctx.send(
                DeviceState::Reverted,
                message,
                Some(stage::VERIFY),
                &running_version,
            )
            .await;
        }
        Return::TimedOut => {
            ctx.send(
                DeviceState::TimedOut,
                "left during the soak and did not come back",
                Some(stage::VERIFY),
                "",
            )
            .await;
        }
    }
}

/// `retry`: a new planned rollout of the same image for the devices that failed, reverted,
/// timed out or were skipped.
pub async fn retry(
    state: &AppState,
    caller: &Caller,
    rollout: &RolloutRecord,
) -> Result<RolloutObject, ApiError> {
    if !rollout.state.is_finished() {
        return Err(ApiError::conflict(format!(
            "rollout {} is {}; retry it once it is halted, aborted or completed",
            rollout.id,
            rollout.state.as_str()
        )));
    }
    let devices = state.store.rollout_devices(&rollout.id).await?;
    let ids: Vec<String> = devices
        .iter()
        .filter(|d| d.state.is_failure() || d.state == DeviceState::Skipped)
        .map(|d| d.device_id.clone())
        .collect();
    if ids.is_empty() {
        return Err(ApiError::bad_request(format!(
            "rollout {} has no failed or skipped device to retry",
            rollout.id
        )));
    }
    let mut spec = rollout.spec.clone();
    spec.select.ids = Some(ids);
    spec.select.query = None;
    spec.dry_run = false;
    spec.name = Some(format!("retry of {}", rollout.name));
    let plan = plan(state, caller, spec).await?;
    create(state, plan).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wave(percent: Option<f64>, count: Option<u64>) -> WaveSpec {
        WaveSpec {
            percent,
            count,
            soak_s: 0,
        }
    }

    #[test]
    fn waves_take_their_share_and_the_last_takes_the_rest() {
        assert_eq!(wave_sizes(&[], 7), vec![7]);
        let spec = [
            wave(Some(10.0), None),
            wave(Some(30.0), None),
            wave(Some(60.0), None),
        ];
        assert_eq!(wave_sizes(&spec, 200), vec![20, 60, 120]);
        assert_eq!(wave_sizes(&spec, 3), vec![1, 1, 1]);
        assert_eq!(wave_sizes(&spec, 1), vec![1, 0, 0]);
        let mixed = [
            wave(None, Some(5)),
            wave(Some(50.0), None),
            wave(Some(10.0), None),
        ];
        assert_eq!(wave_sizes(&mixed, 100), vec![5, 45, 50]);
        assert_eq!(wave_sizes(&mixed, 2).iter().sum::<u64>(), 2);
    }

    #[test]
    fn specs_are_checked() {
        let spec = |value: Value| serde_json::from_value::<RolloutSpec>(value).unwrap();
        assert!(check_spec(&spec(json!({"firmware": "f", "select": {"query": ""}}))).is_ok());
        for bad in [
            json!({"firmware": "f"}),
            json!({"firmware": "f", "select": {"ids": []}}),
            json!({"firmware": "f", "select": {"query": ""}, "max_parallel": 0}),
            json!({"firmware": "f", "select": {"query": ""}, "waves": [{"percent": 60}, {"percent": 50}]}),
            json!({"firmware": "f", "select": {"query": ""}, "waves": [{"soak_s": 5}]}),
            json!({"firmware": "f", "select": {"query": ""}, "waves": [{"percent": 5, "count": 2}]}),
            json!({"firmware": "f", "select": {"query": ""}, "halt_when": {"failed_percent": 120}}),
        ] {
            assert!(check_spec(&spec(bad.clone())).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_plan_order_is_fixed_by_the_ids() {
        assert_eq!(plan_key("f", "a"), plan_key("f", "a"));
        assert_ne!(plan_key("f", "a"), plan_key("g", "a"));
    }
}
