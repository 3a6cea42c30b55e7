//! Firmware: versions in the fleet, update attempts per device, and how Herd's update
//! engine fared per version, per rollout and per wave (PROTOCOL §4.4, §8, §10.5, §10.6).
//!
//! A device's version is the latest `reported.ota.fw_version` (from
//! `rpc.out.Dash.Shadow.Update` or the shadow inside `updated`), `info.fw_version` of an
//! `updated` event whose shadow names none, the `version` of `ota.success`, or the
//! `running_version` of `ota.revert`.
//!
//! Update attempts are read from `reported.ota.status` changes (0 idle, 1 in progress,
//! 2 error, 3 success) and from the engine's device events: a change to 1, or `ota.begin`,
//! opens an attempt unless one is open without an outcome yet (the two sources describe
//! the same attempt); a change to 3 or `ota.success` sets its outcome to success; a change
//! to 2 sets failure, or revert when `reported.ota.message` says the device reverted, and
//! `ota.failure` / `ota.revert` do the same. The last outcome wins, because an image is
//! first staged (status 3) and may still be reverted after its reboot. Attempts count in
//! the range they started in; one without an outcome is in progress. Only the event names
//! of PROTOCOL §10.6 are read; other `ota.*` and `rollout.*` names are unknown events.
//!
//! The engine's tables read its events alone. A failure or revert names only the image;
//! its version is the one an `ota.begin` or `ota.success` anywhere in the log gives that
//! image. Success rates are succeeded over updates that ended (null when none did), and
//! update times are the `seconds` of `ota.success`, with the median and the 90th
//! percentile interpolated between ranks.
//!
//! Tables:
//! - `devices`: `id`, `fw_version` at the range's end, `ota_attempts`, `ota_successes`,
//!   `ota_failures`, `ota_reverts`, `ota_in_progress`.
//! - `versions`: `bucket`, `fw_version`, `devices` running it at the bucket's end, or the
//!   range's end for the last bucket.
//! - `updates`, one row per version: `fw_version` (null for images no event names a
//!   version of), and counted from the engine's events in the range `begun` (`ota.begin`),
//!   `succeeded`, `failed`, `reverted`, `success_rate`, `median_update_s`, `p90_update_s`;
//!   and `devices_running` it at the range's end, as in `devices`.
//! - `rollouts`, one row per rollout with an event in the range (with `--device`: one the
//!   device took part in), as it stood at the range's end, by first event: `id`, `name`,
//!   `firmware` (image id), `fw_version`, `state` of its last `rollout.*` event, `devices`,
//!   `succeeded`, `failed`, `reverted`, `timed_out`, `skipped` (the counters of that event;
//!   outcomes logged after it, such as those of devices still under way when it halted or
//!   of devices a running wave updated since it started, move a device from under way, or
//!   else from pending, to its outcome, a timeout counting as failed), `success_rate` (succeeded
//!   over succeeded, failed, reverted and timed out), `median_update_s`, `p90_update_s`,
//!   `started` (`rollout.started`), `finished` (`rollout.completed`, `.halted` or
//!   `.aborted`), `duration_s` between the two, and the halt's `reason`.
//! - `rollout_waves`, one row per wave of those rollouts: `rollout`, `wave` (from 0),
//!   `devices` (the size `rollout.wave` announced), `begun`, `succeeded`, `failed`,
//!   `reverted`, `success_rate`. A device counts once, in the wave that was current for
//!   its rollout (the last `rollout.wave` before) when its last `ota.begin` came, with its
//!   last outcome since; one that failed without a begin counts in the wave current then.
//! - `revert_reasons`: failures and reverts in the range by `rollout` (null for one-device
//!   pushes), `outcome` (`failed` or `reverted`), `stage` (of a failure), `message`, with
//!   their `count`; most frequent first.

use polars::prelude::*;

use rustc_hash::FxHashMap;

use super::{frame, time_column, Scope, Table};
use crate::event::{Event, Kind, OtaSignal, NONE};
use crate::Error;

mod engine;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Success,
    Failure,
    Revert,
}

#[derive(Debug, Clone, Copy)]
struct Attempt {
    start: i64,
    outcome: Option<Outcome>,
}

#[derive(Debug, Default)]
struct History {
    /// `(time, version)` at each change; [`NONE`] after a deletion.
    versions: Vec<(i64, u32)>,
    attempts: Vec<Attempt>,
}

fn history(events: &[Event]) -> History {
    let mut result = History::default();
    let mut current = NONE;
    let mut status: Option<i8> = None;
    for event in events {
        if event.kind == Kind::Deleted {
            if current != NONE {
                current = NONE;
                result.versions.push((event.ts, NONE));
            }
            status = None;
            continue;
        }
        if event.fw != NONE && event.fw != current {
            current = event.fw;
            result.versions.push((event.ts, current));
        }
        let mut signals = [None, None];
        if event.ota_status >= 0 && status != Some(event.ota_status) {
            status = Some(event.ota_status);
            signals[0] = match event.ota_status {
                1 => Some(OtaSignal::Start),
                2 if event.reverted => Some(OtaSignal::Revert),
                2 => Some(OtaSignal::Failure),
                3 => Some(OtaSignal::Success),
                _ => None,
            };
        }
        if let Kind::Ota(signal) = event.kind {
            signals[1] = Some(signal);
        }
        for signal in signals.into_iter().flatten() {
            let outcome = match signal {
                OtaSignal::Start => {
                    let open = result.attempts.last().is_some_and(|a| a.outcome.is_none());
                    if !open {
                        result.attempts.push(Attempt {
                            start: event.ts,
                            outcome: None,
                        });
                    }
                    continue;
                }
                OtaSignal::Success => Outcome::Success,
                OtaSignal::Failure => Outcome::Failure,
                OtaSignal::Revert => Outcome::Revert,
                OtaSignal::Other => continue,
            };
            // An outcome with no attempt seen (the log starts mid-update, or a device
            // reports its last outcome on connect) belongs to nothing countable.
            if let Some(attempt) = result.attempts.last_mut() {
                attempt.outcome = Some(outcome);
            }
        }
    }
    result
}

/// The version at `at`: the last change at or before it.
fn version_at(versions: &[(i64, u32)], at: i64) -> u32 {
    let index = versions.partition_point(|&(t, _)| t <= at);
    if index == 0 {
        NONE
    } else {
        versions[index - 1].1
    }
}

pub(super) fn compute(scope: &Scope<'_>) -> Result<Vec<Table>, Error> {
    let buckets = scope.buckets();
    let ends: Vec<i64> = buckets
        .iter()
        .map(|&b| (b + scope.bucket - 1).min(scope.to))
        .collect();
    let mut running: FxHashMap<(usize, u32), u32> = FxHashMap::default();
    let mut running_now: FxHashMap<u32, u32> = FxHashMap::default();

    let mut ids = Vec::new();
    let mut names = Vec::new();
    let mut versions = Vec::new();
    let mut attempts = Vec::new();
    let mut successes = Vec::new();
    let mut failures = Vec::new();
    let mut reverts = Vec::new();
    let mut in_progress = Vec::new();
    for device in scope.per_device() {
        let found = history(device.until(scope.to));
        for (bucket, &end) in ends.iter().enumerate() {
            let fw = version_at(&found.versions, end);
            if fw != NONE {
                *running.entry((bucket, fw)).or_default() += 1;
            }
        }
        let mut counts = [0u32; 5];
        for attempt in found.attempts.iter().filter(|a| scope.in_range(a.start)) {
            counts[0] += 1;
            let slot = match attempt.outcome {
                Some(Outcome::Success) => 1,
                Some(Outcome::Failure) => 2,
                Some(Outcome::Revert) => 3,
                None => 4,
            };
            counts[slot] += 1;
        }
        let fw = version_at(&found.versions, scope.to);
        if fw != NONE {
            *running_now.entry(fw).or_default() += 1;
        }
        ids.push(device.id);
        names.push(device.name);
        versions.push((fw != NONE).then(|| scope.log.versions.text(fw)));
        attempts.push(counts[0]);
        successes.push(counts[1]);
        failures.push(counts[2]);
        reverts.push(counts[3]);
        in_progress.push(counts[4]);
    }
    let devices = frame(vec![
        Column::new("id".into(), ids),
        Column::new("name".into(), names),
        Column::new("fw_version".into(), versions),
        Column::new("ota_attempts".into(), attempts),
        Column::new("ota_successes".into(), successes),
        Column::new("ota_failures".into(), failures),
        Column::new("ota_reverts".into(), reverts),
        Column::new("ota_in_progress".into(), in_progress),
    ])?;
    let mut rows: Vec<(i64, String, u32)> = running
        .into_iter()
        .map(|((bucket, fw), count)| (buckets[bucket], scope.log.versions.text(fw), count))
        .collect();
    rows.sort();
    let versions = frame(vec![
        time_column("bucket", rows.iter().map(|r| r.0).collect()),
        Column::new(
            "fw_version".into(),
            rows.iter().map(|r| r.1.clone()).collect::<Vec<String>>(),
        ),
        Column::new(
            "devices".into(),
            rows.iter().map(|r| r.2).collect::<Vec<u32>>(),
        ),
    ])?;
    let mut tables = vec![
        Table::new("devices", devices),
        Table::new("versions", versions),
    ];
    tables.extend(engine::tables(scope, &running_now)?);
    Ok(tables)
}
