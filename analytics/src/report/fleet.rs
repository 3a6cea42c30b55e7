//! Fleet: what the log says about the fleet as a whole (PROTOCOL §5).
//!
//! Tables: `summary` (one row: `from`, `to`, `devices_seen` with an event in the range
//! (rollouts are not devices: their events count as notifications only),
//! `online_now` at the range's end, `notifications` in the range, and the log's `lines`,
//! `torn_lines`, `invalid_lines`, `unknown_events`), `events` (`name`, `count`; most
//! frequent first), `busiest` (`id`, `notifications`; the request's `top` devices) and
//! `buckets` (`bucket`, `notifications`, `devices` active).

use polars::prelude::*;
use rustc_hash::FxHashSet;

use super::connectivity::sessions;
use super::{frame, time_column, Scope, Table};
use crate::Error;

pub(super) fn compute(scope: &Scope<'_>) -> Result<Vec<Table>, Error> {
    let log = scope.log;
    let buckets = scope.buckets();
    let mut bucket_events = vec![0u64; buckets.len()];
    let mut bucket_devices = vec![0u32; buckets.len()];
    // Last bucket each device was counted in, so a device counts once per bucket.
    let mut last_bucket = vec![usize::MAX; log.devices.len()];
    let mut by_name = vec![0u64; log.names.len()];
    let mut by_device = vec![0u64; log.devices.len()];
    let mut total = 0u64;
    let mut active: FxHashSet<(usize, usize)> = FxHashSet::default();
    for event in &log.events {
        if !scope.in_range(event.ts) || !scope.wants(event.device) {
            continue;
        }
        total += 1;
        if let Some(count) = by_name.get_mut(event.name as usize) {
            *count += 1;
        }
        let bucket = scope.bucket_index(event.ts);
        bucket_events[bucket] += 1;
        // Rollout events belong to no device.
        let Some(count) = by_device.get_mut(event.device as usize) else {
            continue;
        };
        *count += 1;
        let device = event.device as usize;
        // The remembered bucket spares the set a lookup per event in time-ordered logs;
        // the set keeps the count exact when lines are out of order.
        if last_bucket[device] != bucket {
            last_bucket[device] = bucket;
            if active.insert((bucket, device)) {
                bucket_devices[bucket] += 1;
            }
        }
    }
    let online_now = scope
        .per_device()
        .filter(|d| sessions(d.until(scope.to), scope.to).open)
        .count() as u64;
    let seen = by_device.iter().filter(|&&n| n > 0).count() as u64;
    let stats = log.stats;
    let summary = frame(vec![
        time_column("from", vec![scope.from]),
        time_column("to", vec![scope.to]),
        Column::new("devices_seen".into(), [seen]),
        Column::new("online_now".into(), [online_now]),
        Column::new("notifications".into(), [total]),
        Column::new("lines".into(), [stats.lines]),
        Column::new("torn_lines".into(), [stats.torn_lines]),
        Column::new("invalid_lines".into(), [stats.invalid_lines]),
        Column::new("unknown_events".into(), [stats.unknown_events]),
    ])?;
    let mut names: Vec<(u64, String)> = by_name
        .iter()
        .enumerate()
        .filter(|(_, &n)| n > 0)
        .map(|(name, &n)| (n, log.names.text(name as u32)))
        .collect();
    names.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let events = frame(vec![
        Column::new(
            "name".into(),
            names.iter().map(|n| n.1.as_str()).collect::<Vec<_>>(),
        ),
        Column::new(
            "count".into(),
            names.iter().map(|n| n.0).collect::<Vec<u64>>(),
        ),
    ])?;
    let mut busiest: Vec<(u64, String, String)> = by_device
        .iter()
        .enumerate()
        .filter(|(_, &n)| n > 0)
        .map(|(device, &n)| {
            let device = device as u32;
            (n, log.devices.text(device), log.label_or_empty(device))
        })
        .collect();
    busiest.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    busiest.truncate(scope.request.top);
    let busiest = frame(vec![
        Column::new(
            "id".into(),
            busiest.iter().map(|n| n.1.as_str()).collect::<Vec<_>>(),
        ),
        Column::new(
            "name".into(),
            busiest.iter().map(|n| n.2.as_str()).collect::<Vec<_>>(),
        ),
        Column::new(
            "notifications".into(),
            busiest.iter().map(|n| n.0).collect::<Vec<u64>>(),
        ),
    ])?;
    let by_bucket = frame(vec![
        time_column("bucket", buckets),
        Column::new("notifications".into(), bucket_events),
        Column::new("devices".into(), bucket_devices),
    ])?;
    Ok(vec![
        Table::new("summary", summary),
        Table::new("events", events),
        Table::new("busiest", busiest),
        Table::new("buckets", by_bucket),
    ])
}
