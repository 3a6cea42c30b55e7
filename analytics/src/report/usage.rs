//! Usage of the smart light: `reported.on` as seen in shadow updates (PROTOCOL §4.4).
//!
//! The light's state is read from `rpc.out.Dash.Shadow.Update` (`data.state.reported.on`,
//! what the device sent) and from `updated` (`data.shadow.state.reported.on`, the merged
//! shadow, which also covers states the device reported by answering `Shadow.Delta`,
//! §4.3). A switch-on is a change from `false` to `true`, a switch-off the reverse;
//! repeats are not changes, and the first state seen of a device is not one either (it
//! was not seen to change). An "on" period runs from the report that turned the light on
//! (or first showed it on) to the report that turned it off, a `deleted` event, or else the
//! range's end; hours on are those periods clipped to the range. Going offline does not
//! end a period: the light keeps its state without the cloud.
//!
//! Tables: `devices` (`id`, `switch_ons`, `switch_offs`, `hours_on`), `hours` (UTC hour of
//! day 0-23 across the fleet: `hour`, `switch_ons`, `switch_offs`, `hours_on`) and
//! `buckets` (`bucket`, `switch_ons`, `switch_offs`, `hours_on`, `devices_on`).

use polars::prelude::*;

use super::{frame, hours, time_column, Scope, Table, US};
use crate::event::{Event, Kind};
use crate::Error;

/// One device's light history up to the range's end.
#[derive(Debug, Default)]
pub(crate) struct Light {
    pub periods: Vec<(i64, i64)>,
    pub ons: Vec<i64>,
    pub offs: Vec<i64>,
}

pub(crate) fn light(events: &[Event], to: i64) -> Light {
    let mut result = Light::default();
    let mut state: Option<bool> = None;
    let mut since = None;
    for event in events {
        if event.kind == Kind::Deleted {
            if let Some(start) = since.take() {
                result.periods.push((start, event.ts));
            }
            state = None;
            continue;
        }
        if event.on < 0 {
            continue;
        }
        let on = event.on == 1;
        match (state, on) {
            (Some(false), true) => result.ons.push(event.ts),
            (Some(true), false) => result.offs.push(event.ts),
            _ => {}
        }
        if on && since.is_none() {
            since = Some(event.ts);
        }
        if !on {
            if let Some(start) = since.take() {
                result.periods.push((start, event.ts));
            }
        }
        state = Some(on);
    }
    if let Some(start) = since {
        result.periods.push((start, to.max(start)));
    }
    result
}

const HOUR: i64 = 3600 * US;

pub(super) fn compute(scope: &Scope<'_>) -> Result<Vec<Table>, Error> {
    let buckets = scope.buckets();
    let mut bucket_ons = vec![0u32; buckets.len()];
    let mut bucket_offs = vec![0u32; buckets.len()];
    let mut bucket_on = vec![0i64; buckets.len()];
    let mut bucket_devices = vec![0u32; buckets.len()];
    let mut touched = vec![usize::MAX; buckets.len()];
    let mut hour_ons = [0u32; 24];
    let mut hour_offs = [0u32; 24];
    let mut hour_on = [0i64; 24];
    let hour_of = |ts: i64| (ts.div_euclid(HOUR).rem_euclid(24)) as usize;

    let mut ids = Vec::new();
    let mut names = Vec::new();
    let mut ons = Vec::new();
    let mut offs = Vec::new();
    let mut on_hours = Vec::new();
    for (row, device) in scope.per_device().enumerate() {
        let found = light(device.until(scope.to), scope.to);
        let mut total = 0;
        for &(start, end) in &found.periods {
            let Some((start, end)) = scope.clip(start, end) else {
                continue;
            };
            total += end - start;
            scope.split(start, end, |bucket, us| {
                bucket_on[bucket] += us;
                if us > 0 && touched[bucket] != row {
                    touched[bucket] = row;
                    bucket_devices[bucket] += 1;
                }
            });
            let mut at = start;
            while at < end {
                let piece_end = end.min(at.div_euclid(HOUR) * HOUR + HOUR);
                hour_on[hour_of(at)] += piece_end - at;
                at = piece_end;
            }
        }
        let count = |times: &[i64], by_bucket: &mut [u32], by_hour: &mut [u32; 24]| {
            let mut n = 0u32;
            for &t in times.iter().filter(|&&t| scope.in_range(t)) {
                n += 1;
                by_bucket[scope.bucket_index(t)] += 1;
                by_hour[hour_of(t)] += 1;
            }
            n
        };
        ons.push(count(&found.ons, &mut bucket_ons, &mut hour_ons));
        offs.push(count(&found.offs, &mut bucket_offs, &mut hour_offs));
        ids.push(device.id);
        names.push(device.name);
        on_hours.push(hours(total));
    }
    let devices = frame(vec![
        Column::new("id".into(), ids),
        Column::new("name".into(), names),
        Column::new("switch_ons".into(), ons),
        Column::new("switch_offs".into(), offs),
        Column::new("hours_on".into(), on_hours),
    ])?;
    let by_hour = frame(vec![
        Column::new("hour".into(), (0u32..24).collect::<Vec<_>>()),
        Column::new("switch_ons".into(), hour_ons.to_vec()),
        Column::new("switch_offs".into(), hour_offs.to_vec()),
        Column::new(
            "hours_on".into(),
            hour_on.iter().map(|&us| hours(us)).collect::<Vec<f64>>(),
        ),
    ])?;
    let by_bucket = frame(vec![
        time_column("bucket", buckets),
        Column::new("switch_ons".into(), bucket_ons),
        Column::new("switch_offs".into(), bucket_offs),
        Column::new(
            "hours_on".into(),
            bucket_on.into_iter().map(hours).collect::<Vec<f64>>(),
        ),
        Column::new("devices_on".into(), bucket_devices),
    ])?;
    Ok(vec![
        Table::new("devices", devices),
        Table::new("hours", by_hour),
        Table::new("buckets", by_bucket),
    ])
}
