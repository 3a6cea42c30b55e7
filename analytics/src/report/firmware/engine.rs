//! The tables read from Herd's update engine (PROTOCOL §10.5, §10.6): `updates` per
//! firmware version, `rollouts`, `rollout_waves` and `revert_reasons`. The module
//! documentation of [`super`] defines their columns.

use std::cmp::Ordering;

use polars::prelude::*;
use protocol::firmware::Counters;
use rustc_hash::FxHashMap;

use super::super::{frame, optional_time_column, seconds, Scope, Table};
use crate::event::{Interner, Step, Update, NONE};
use crate::Error;

/// How a device's update ended, as its event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Outcome {
    Succeeded,
    Failed,
    Reverted,
}

impl Outcome {
    fn of(step: Step) -> Option<Outcome> {
        match step {
            Step::Success => Some(Outcome::Succeeded),
            Step::Failure => Some(Outcome::Failed),
            Step::Revert => Some(Outcome::Reverted),
            _ => None,
        }
    }
}

/// Succeeded, failed and reverted counts, and the rate they give.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    succeeded: u32,
    failed: u32,
    reverted: u32,
}

impl Tally {
    fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Succeeded => self.succeeded += 1,
            Outcome::Failed => self.failed += 1,
            Outcome::Reverted => self.reverted += 1,
        }
    }

    fn success_rate(&self) -> Option<f64> {
        rate(self.succeeded, self.succeeded + self.failed + self.reverted)
    }
}

fn rate(part: u32, whole: u32) -> Option<f64> {
    (whole > 0).then(|| f64::from(part) / f64::from(whole))
}

/// The `q` quantile of sorted values, interpolating linearly between the two nearest
/// ranks (what DuckDB's `quantile_cont` and NumPy's default compute).
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let position = q * last as f64;
    let low = position.floor() as usize;
    let high = position.ceil() as usize;
    Some(sorted[low] + (sorted[high] - sorted[low]) * (position - low as f64))
}

/// Median and 90th percentile of update times, in seconds.
fn median_p90(mut times: Vec<f64>) -> (Option<f64>, Option<f64>) {
    times.sort_by(f64::total_cmp);
    (quantile(&times, 0.5), quantile(&times, 0.9))
}

/// Orders versions by their numeric parts (`1.10.0` after `1.9.2`), text otherwise.
fn compare_versions(a: &str, b: &str) -> Ordering {
    let parts = |v: &str| -> Vec<Result<u64, String>> {
        v.split(['.', '-', '+'])
            .map(|part| part.parse::<u64>().map_err(|_| part.to_string()))
            .collect()
    };
    parts(a).cmp(&parts(b)).then_with(|| a.cmp(b))
}

fn text(interner: &Interner, id: u32) -> Option<String> {
    (id != NONE).then(|| interner.text(id))
}

/// One device of one rollout.
#[derive(Debug, Clone, Copy, Default)]
struct Member {
    /// The wave its last `ota.begin` fell in.
    begun: Option<u32>,
    /// Its last outcome since then, and the wave it counts in.
    outcome: Option<(u32, Outcome)>,
}

/// What the log says about one rollout up to the range's end.
#[derive(Debug, Default)]
struct Rollout {
    /// Its first event, for ordering rows.
    first: i64,
    /// Whether any of its events falls in the range.
    in_range: bool,
    /// Whether the filtered device took part (always true without a filter).
    wanted: bool,
    name: u32,
    firmware: u32,
    state: u32,
    reason: u32,
    /// The counters of its last rollout event.
    counters: Option<Counters>,
    /// Device outcomes logged after that event: the server emits rollout events only when
    /// the rollout changes (a wave starts, it halts), so these are folded into the
    /// counters.
    late: Vec<Outcome>,
    started: Option<i64>,
    finished: Option<i64>,
    /// The current wave, as the last `rollout.wave` set it.
    wave: u32,
    /// Sizes from `rollout.wave`.
    wave_sizes: FxHashMap<u32, u32>,
    members: FxHashMap<u32, Member>,
    /// `seconds` of its `ota.success` events.
    times: Vec<f64>,
}

impl Rollout {
    fn new(first: i64) -> Rollout {
        Rollout {
            first,
            name: NONE,
            firmware: NONE,
            state: NONE,
            reason: NONE,
            ..Rollout::default()
        }
    }

    fn rollout_event(&mut self, update: &Update) {
        if update.firmware != NONE {
            self.firmware = update.firmware;
        }
        if update.state != NONE {
            self.state = update.state;
        }
        self.counters = Some(update.counters);
        self.late.clear();
        match update.step {
            Step::Planned if update.text != NONE => self.name = update.text,
            Step::Started => {
                self.started.get_or_insert(update.ts);
            }
            Step::Wave if update.wave != NONE => {
                self.wave = update.wave;
                if update.devices != NONE {
                    self.wave_sizes.insert(update.wave, update.devices);
                }
            }
            step if step.ends_rollout() => {
                self.finished = Some(update.ts);
                if update.step == Step::Halted {
                    self.reason = update.text;
                }
            }
            _ => {}
        }
    }

    fn device_event(&mut self, update: &Update) {
        let wave = self.wave;
        let member = self.members.entry(update.device).or_default();
        if update.step == Step::Begin {
            member.begun = Some(wave);
            member.outcome = None;
            return;
        }
        let Some(outcome) = Outcome::of(update.step) else {
            return;
        };
        // A device that failed before its transfer began has no `ota.begin`; it failed
        // in the wave current then.
        member.outcome = Some((member.begun.unwrap_or(wave), outcome));
        self.late.push(outcome);
        if let Some(us) = update.seconds_us.filter(|_| outcome == Outcome::Succeeded) {
            self.times.push(seconds(us));
        }
    }

    /// The device counts as the rollout ended, or stands at the range's end.
    fn counts(&self) -> Counters {
        let Some(mut counters) = self.counters else {
            // No rollout event in the log: only the devices' own events tell.
            let mut counters = Counters::default();
            for member in self.members.values() {
                counters.total += 1;
                match member.outcome {
                    Some((_, Outcome::Succeeded)) => counters.succeeded += 1,
                    Some((_, Outcome::Failed)) => counters.failed += 1,
                    Some((_, Outcome::Reverted)) => counters.reverted += 1,
                    None => counters.sending += 1,
                }
            }
            return counters;
        };
        for &outcome in &self.late {
            // Devices under way end first; after them, devices that started since.
            let unfinished = [
                &mut counters.verifying,
                &mut counters.rebooting,
                &mut counters.sending,
                &mut counters.pending,
            ]
            .into_iter()
            .find(|n| **n > 0);
            // An outcome with no device left to end was counted already.
            let Some(unfinished) = unfinished else {
                continue;
            };
            *unfinished -= 1;
            match outcome {
                Outcome::Succeeded => counters.succeeded += 1,
                Outcome::Failed => counters.failed += 1,
                Outcome::Reverted => counters.reverted += 1,
            }
        }
        counters
    }

    /// Per wave: its size, devices begun, and outcomes, in wave order.
    fn waves(&self) -> Vec<(u32, Option<u32>, u32, Tally)> {
        let mut waves: FxHashMap<u32, (Option<u32>, u32, Tally)> = FxHashMap::default();
        for (&wave, &size) in &self.wave_sizes {
            waves.entry(wave).or_default().0 = Some(size);
        }
        for member in self.members.values() {
            if let Some(wave) = member.begun {
                waves.entry(wave).or_default().1 += 1;
            }
            if let Some((wave, outcome)) = member.outcome {
                waves.entry(wave).or_default().2.add(outcome);
            }
        }
        let mut rows: Vec<_> = waves
            .into_iter()
            .map(|(wave, (size, begun, tally))| (wave, size, begun, tally))
            .collect();
        rows.sort_by_key(|row| row.0);
        rows
    }
}

/// Per firmware version, from device events in the range.
#[derive(Debug, Default)]
struct VersionRow {
    begun: u32,
    tally: Tally,
    times: Vec<f64>,
    running: u32,
}

/// The engine's tables; `running` is how many devices run each version at the range's
/// end (from the devices table).
pub(super) fn tables(
    scope: &Scope<'_>,
    running: &FxHashMap<u32, u32>,
) -> Result<Vec<Table>, Error> {
    let log = scope.log;
    // A version for each firmware id, wherever in the log a begin or success names it:
    // failures and reverts name only the image.
    let mut version_of: FxHashMap<u32, u32> = FxHashMap::default();
    for update in &log.updates {
        if matches!(update.step, Step::Begin | Step::Success)
            && update.firmware != NONE
            && update.version != NONE
        {
            version_of.entry(update.firmware).or_insert(update.version);
        }
    }
    let version_of_image = |firmware: u32| version_of.get(&firmware).copied().unwrap_or(NONE);

    let mut order: Vec<&Update> = log.updates.iter().filter(|u| u.ts <= scope.to).collect();
    // Stable, so equal times keep log order (a failure before the halt it caused).
    order.sort_by_key(|u| u.ts);

    let mut versions: FxHashMap<u32, VersionRow> = FxHashMap::default();
    for (&version, &count) in running {
        versions.entry(version).or_default().running = count;
    }
    let mut rollouts: FxHashMap<u32, Rollout> = FxHashMap::default();
    let mut reasons: FxHashMap<(u32, Outcome, u32, u32), u32> = FxHashMap::default();
    for update in order {
        let in_range = scope.in_range(update.ts);
        if update.rollout != NONE {
            let rollout = rollouts
                .entry(update.rollout)
                .or_insert_with(|| Rollout::new(update.ts));
            if update.step.is_rollout() {
                rollout.in_range |= in_range;
                rollout.rollout_event(update);
            } else {
                if scope.wants(update.device) {
                    rollout.wanted = true;
                    rollout.in_range |= in_range;
                }
                rollout.device_event(update);
            }
        }
        if update.step.is_rollout() || !in_range || !scope.wants(update.device) {
            continue;
        }
        let version = match update.step {
            Step::Begin | Step::Success if update.version != NONE => update.version,
            _ => version_of_image(update.firmware),
        };
        let row = versions.entry(version).or_default();
        if update.step == Step::Begin {
            row.begun += 1;
            continue;
        }
        let Some(outcome) = Outcome::of(update.step) else {
            continue;
        };
        row.tally.add(outcome);
        if let Some(us) = update.seconds_us.filter(|_| outcome == Outcome::Succeeded) {
            row.times.push(seconds(us));
        }
        if outcome != Outcome::Succeeded {
            *reasons
                .entry((update.rollout, outcome, update.stage, update.text))
                .or_default() += 1;
        }
    }

    let filtered = scope.device.is_some();
    let mut listed: Vec<(u32, Rollout)> = rollouts
        .into_iter()
        .filter(|(_, r)| r.in_range && (r.wanted || !filtered))
        .collect();
    listed.sort_by(|a, b| (a.1.first, log.texts.get(a.0)).cmp(&(b.1.first, log.texts.get(b.0))));

    Ok(vec![
        Table::new("updates", versions_table(scope, versions)?),
        Table::new("rollouts", rollouts_table(scope, &listed, &version_of)?),
        Table::new("rollout_waves", waves_table(scope, &listed)?),
        Table::new("revert_reasons", reasons_table(scope, reasons)?),
    ])
}

fn versions_table(
    scope: &Scope<'_>,
    versions: FxHashMap<u32, VersionRow>,
) -> Result<DataFrame, Error> {
    let log = scope.log;
    let mut rows: Vec<(Option<String>, VersionRow)> = versions
        .into_iter()
        .map(|(version, row)| (text(&log.versions, version), row))
        .collect();
    // Unknown versions last.
    rows.sort_by(|a, b| match (&a.0, &b.0) {
        (Some(a), Some(b)) => compare_versions(a, b),
        (a, b) => b.is_some().cmp(&a.is_some()),
    });
    let mut medians = Vec::with_capacity(rows.len());
    let mut p90s = Vec::with_capacity(rows.len());
    for (_, row) in &mut rows {
        let (median, p90) = median_p90(std::mem::take(&mut row.times));
        medians.push(median);
        p90s.push(p90);
    }
    frame(vec![
        Column::new(
            "fw_version".into(),
            rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
        ),
        Column::new(
            "begun".into(),
            rows.iter().map(|r| r.1.begun).collect::<Vec<_>>(),
        ),
        Column::new(
            "succeeded".into(),
            rows.iter().map(|r| r.1.tally.succeeded).collect::<Vec<_>>(),
        ),
        Column::new(
            "failed".into(),
            rows.iter().map(|r| r.1.tally.failed).collect::<Vec<_>>(),
        ),
        Column::new(
            "reverted".into(),
            rows.iter().map(|r| r.1.tally.reverted).collect::<Vec<_>>(),
        ),
        Column::new(
            "success_rate".into(),
            rows.iter()
                .map(|r| r.1.tally.success_rate())
                .collect::<Vec<_>>(),
        ),
        Column::new("median_update_s".into(), medians),
        Column::new("p90_update_s".into(), p90s),
        Column::new(
            "devices_running".into(),
            rows.iter().map(|r| r.1.running).collect::<Vec<_>>(),
        ),
    ])
}

fn rollouts_table(
    scope: &Scope<'_>,
    listed: &[(u32, Rollout)],
    version_of: &FxHashMap<u32, u32>,
) -> Result<DataFrame, Error> {
    let log = scope.log;
    let texts = &log.texts;
    let counts: Vec<Counters> = listed.iter().map(|(_, r)| r.counts()).collect();
    let times: Vec<(Option<f64>, Option<f64>)> = listed
        .iter()
        .map(|(_, r)| median_p90(r.times.clone()))
        .collect();
    let count = |get: fn(&Counters) -> u64| counts.iter().map(get).collect::<Vec<u64>>();
    let success_rate: Vec<Option<f64>> = counts
        .iter()
        .map(|c| {
            let ended = c.succeeded + c.failures();
            (ended > 0).then(|| c.succeeded as f64 / ended as f64)
        })
        .collect();
    let duration: Vec<Option<f64>> = listed
        .iter()
        .map(|(_, r)| match (r.started, r.finished) {
            (Some(start), Some(end)) => Some(seconds(end - start)),
            _ => None,
        })
        .collect();
    frame(vec![
        Column::new(
            "id".into(),
            listed
                .iter()
                .map(|(id, _)| texts.text(*id))
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "name".into(),
            listed
                .iter()
                .map(|(_, r)| text(texts, r.name))
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "firmware".into(),
            listed
                .iter()
                .map(|(_, r)| text(texts, r.firmware))
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "fw_version".into(),
            listed
                .iter()
                .map(|(_, r)| {
                    let version = version_of.get(&r.firmware).copied().unwrap_or(NONE);
                    text(&log.versions, version)
                })
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "state".into(),
            listed
                .iter()
                .map(|(_, r)| text(texts, r.state))
                .collect::<Vec<_>>(),
        ),
        Column::new("devices".into(), count(|c| c.total)),
        Column::new("succeeded".into(), count(|c| c.succeeded)),
        Column::new("failed".into(), count(|c| c.failed)),
        Column::new("reverted".into(), count(|c| c.reverted)),
        Column::new("timed_out".into(), count(|c| c.timed_out)),
        Column::new("skipped".into(), count(|c| c.skipped)),
        Column::new("success_rate".into(), success_rate),
        Column::new(
            "median_update_s".into(),
            times.iter().map(|t| t.0).collect::<Vec<_>>(),
        ),
        Column::new(
            "p90_update_s".into(),
            times.iter().map(|t| t.1).collect::<Vec<_>>(),
        ),
        optional_time_column("started", listed.iter().map(|(_, r)| r.started).collect()),
        optional_time_column("finished", listed.iter().map(|(_, r)| r.finished).collect()),
        Column::new("duration_s".into(), duration),
        Column::new(
            "reason".into(),
            listed
                .iter()
                .map(|(_, r)| text(texts, r.reason))
                .collect::<Vec<_>>(),
        ),
    ])
}

fn waves_table(scope: &Scope<'_>, listed: &[(u32, Rollout)]) -> Result<DataFrame, Error> {
    let mut ids = Vec::new();
    let mut waves = Vec::new();
    let mut sizes = Vec::new();
    let mut begun = Vec::new();
    let mut tallies = Vec::new();
    for (id, rollout) in listed {
        for (wave, size, started, tally) in rollout.waves() {
            ids.push(scope.log.texts.text(*id));
            waves.push(wave);
            sizes.push(size);
            begun.push(started);
            tallies.push(tally);
        }
    }
    frame(vec![
        Column::new("rollout".into(), ids),
        Column::new("wave".into(), waves),
        Column::new("devices".into(), sizes),
        Column::new("begun".into(), begun),
        Column::new(
            "succeeded".into(),
            tallies.iter().map(|t| t.succeeded).collect::<Vec<_>>(),
        ),
        Column::new(
            "failed".into(),
            tallies.iter().map(|t| t.failed).collect::<Vec<_>>(),
        ),
        Column::new(
            "reverted".into(),
            tallies.iter().map(|t| t.reverted).collect::<Vec<_>>(),
        ),
        Column::new(
            "success_rate".into(),
            tallies.iter().map(Tally::success_rate).collect::<Vec<_>>(),
        ),
    ])
}

fn reasons_table(
    scope: &Scope<'_>,
    reasons: FxHashMap<(u32, Outcome, u32, u32), u32>,
) -> Result<DataFrame, Error> {
    let texts = &scope.log.texts;
    type Row = (
        u32,
        Option<String>,
        &'static str,
        Option<String>,
        Option<String>,
    );
    let mut rows: Vec<Row> = reasons
        .into_iter()
        .map(|((rollout, outcome, stage, message), count)| {
            let outcome = match outcome {
                Outcome::Reverted => "reverted",
                _ => "failed",
            };
            (
                count,
                text(texts, rollout),
                outcome,
                text(texts, stage),
                text(texts, message),
            )
        })
        .collect();
    // Most frequent first; one-device pushes (no rollout) before rollouts at equal counts.
    rows.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then_with(|| (&a.1, a.2, &a.3, &a.4).cmp(&(&b.1, b.2, &b.3, &b.4)))
    });
    frame(vec![
        Column::new(
            "rollout".into(),
            rows.iter().map(|r| r.1.clone()).collect::<Vec<_>>(),
        ),
        Column::new(
            "outcome".into(),
            rows.iter().map(|r| r.2).collect::<Vec<_>>(),
        ),
        Column::new(
            "stage".into(),
            rows.iter().map(|r| r.3.clone()).collect::<Vec<_>>(),
        ),
        Column::new(
            "message".into(),
            rows.iter().map(|r| r.4.clone()).collect::<Vec<_>>(),
        ),
        Column::new("count".into(), rows.iter().map(|r| r.0).collect::<Vec<_>>()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_between_ranks() {
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[7.0], 0.9), Some(7.0));
        assert_eq!(quantile(&[10.0, 20.0], 0.5), Some(15.0));
        let five = [10.0, 20.0, 30.0, 40.0, 50.0];
        assert_eq!(quantile(&five, 0.5), Some(30.0));
        assert_eq!(quantile(&five, 0.9), Some(46.0));
        let (median, p90) = median_p90(vec![3.0, 1.0, 2.0]);
        assert_eq!(median, Some(2.0));
        assert!(p90.is_some_and(|p| (p - 2.8).abs() < 1e-12), "{p90:?}");
    }

    #[test]
    fn versions_order_by_their_numbers() {
        let mut versions = vec!["1.10.0", "1.9.2", "1.9.10", "2.0", "1.9.2-rc1", "beta"];
        versions.sort_by(|a, b| compare_versions(a, b));
        assert_eq!(
            versions,
            ["1.9.2", "1.9.2-rc1", "1.9.10", "1.10.0", "2.0", "beta"]
        );
    }
}
