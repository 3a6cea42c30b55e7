//! Connectivity: online sessions from `online`/`offline` events (PROTOCOL §3, §5).
//!
//! A session starts at `online` and ends at the next `offline` (or `deleted`, or the
//! `server.started` line of a restart, PROTOCOL §7: a crash leaves sessions open); repeated
//! `online`s within a session and `offline`s outside one change nothing, because the
//! server only emits them on real transitions and duplicates come from merged or replayed
//! files. A session still open at the end of the log runs to the range's end. Online time
//! is each session clipped to the range; uptime % is online time over the range's length.
//!
//! Tables: `devices` (one row per device: `id`, `sessions`, `online_s`, `uptime_pct`,
//! `connects`, `disconnects`, `peak_connects`, `flapping`) and `buckets` (`bucket`,
//! `devices_online`, `online_hours`, `connects`, `disconnects`).

use polars::prelude::*;

use super::{frame, hours, seconds, time_column, Scope, Table};
use crate::event::{Event, Kind};
use crate::Error;

/// One device's sessions up to the range's end.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    /// `[start, end]` in microseconds, in time order.
    pub spans: Vec<(i64, i64)>,
    /// Times of `online` events that started a session.
    pub connects: Vec<i64>,
    /// Times of `offline` events that ended one.
    pub disconnects: Vec<i64>,
    /// Whether the last session is still open at the range's end.
    pub open: bool,
}

pub(crate) fn sessions(events: &[Event], to: i64) -> Sessions {
    let mut result = Sessions::default();
    let mut since = None;
    for event in events {
        match event.kind {
            Kind::Online if since.is_none() => {
                since = Some(event.ts);
                result.connects.push(event.ts);
            }
            Kind::Offline => {
                if let Some(start) = since.take() {
                    result.spans.push((start, event.ts));
                    result.disconnects.push(event.ts);
                }
            }
            // The server (re)started: whatever was connected before is not any more, and
            // a crash wrote no `offline` for it (PROTOCOL §7).
            Kind::Deleted | Kind::ServerStarted => {
                if let Some(start) = since.take() {
                    result.spans.push((start, event.ts));
                }
            }
            _ => {}
        }
    }
    if let Some(start) = since {
        result.spans.push((start, to.max(start)));
        result.open = true;
    }
    result
}

/// The most of `times` (sorted) that fit in any window of `window` microseconds.
fn peak_in_window(times: &[i64], window: i64) -> usize {
    let mut best = 0;
    let mut first = 0;
    for (last, &t) in times.iter().enumerate() {
        while t - times[first] > window {
            first += 1;
        }
        best = best.max(last + 1 - first);
    }
    best
}

pub(super) fn compute(scope: &Scope<'_>) -> Result<Vec<Table>, Error> {
    let buckets = scope.buckets();
    let mut bucket_devices = vec![0u32; buckets.len()];
    let mut bucket_online = vec![0i64; buckets.len()];
    let mut bucket_connects = vec![0u32; buckets.len()];
    let mut bucket_disconnects = vec![0u32; buckets.len()];
    let window = (scope.request.flapping.window_s * 1e6).round() as i64;

    let mut ids = Vec::new();
    let mut names = Vec::new();
    let mut session_counts = Vec::new();
    let mut online_s = Vec::new();
    let mut uptime = Vec::new();
    let mut connect_counts = Vec::new();
    let mut disconnect_counts = Vec::new();
    let mut peaks = Vec::new();
    let mut flapping = Vec::new();
    let mut touched = vec![usize::MAX; buckets.len()];
    for (row, device) in scope.per_device().enumerate() {
        let found = sessions(device.until(scope.to), scope.to);
        let mut online = 0;
        let mut count = 0u32;
        for &(start, end) in &found.spans {
            if let Some((start, end)) = scope.clip(start, end) {
                online += end - start;
                count += 1;
                scope.split(start, end, |bucket, us| {
                    bucket_online[bucket] += us;
                    if touched[bucket] != row {
                        touched[bucket] = row;
                        bucket_devices[bucket] += 1;
                    }
                });
            }
        }
        let connects: Vec<i64> = found
            .connects
            .iter()
            .copied()
            .filter(|&t| scope.in_range(t))
            .collect();
        let disconnects = found
            .disconnects
            .iter()
            .filter(|&&t| scope.in_range(t))
            .inspect(|&&t| bucket_disconnects[scope.bucket_index(t)] += 1)
            .count();
        for &t in &connects {
            bucket_connects[scope.bucket_index(t)] += 1;
        }
        let peak = peak_in_window(&connects, window);
        ids.push(device.id);
        names.push(device.name);
        session_counts.push(count);
        online_s.push(seconds(online));
        uptime.push(if scope.range_us() > 0 {
            100.0 * online as f64 / scope.range_us() as f64
        } else {
            0.0
        });
        connect_counts.push(connects.len() as u32);
        disconnect_counts.push(disconnects as u32);
        peaks.push(peak as u32);
        flapping.push(peak >= scope.request.flapping.connects.max(1) as usize);
    }
    let devices = frame(vec![
        Column::new("id".into(), ids),
        Column::new("name".into(), names),
        Column::new("sessions".into(), session_counts),
        Column::new("online_s".into(), online_s),
        Column::new("uptime_pct".into(), uptime),
        Column::new("connects".into(), connect_counts),
        Column::new("disconnects".into(), disconnect_counts),
        Column::new("peak_connects".into(), peaks),
        Column::new("flapping".into(), flapping),
    ])?;
    let bucket_table = frame(vec![
        time_column("bucket", buckets),
        Column::new("devices_online".into(), bucket_devices),
        Column::new(
            "online_hours".into(),
            bucket_online.into_iter().map(hours).collect::<Vec<f64>>(),
        ),
        Column::new("connects".into(), bucket_connects),
        Column::new("disconnects".into(), bucket_disconnects),
    ])?;
    Ok(vec![
        Table::new("devices", devices),
        Table::new("buckets", bucket_table),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_window() {
        assert_eq!(peak_in_window(&[], 10), 0);
        assert_eq!(peak_in_window(&[0, 5, 10, 11, 30], 10), 3);
        assert_eq!(peak_in_window(&[0, 100, 200], 10), 1);
    }
}
