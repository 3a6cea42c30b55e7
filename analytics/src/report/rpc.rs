//! RPC: requests by method and direction (PROTOCOL §3, §5).
//!
//! `rpc.out.<method>` is a request the device sent, `rpc.in.<method>` one the cloud sent.
//! The log holds requests, not replies, so the only failures it shows are device requests
//! for methods the server has no handler for, which PROTOCOL §3 answers with 404; for
//! cloud-to-device calls `errors` and `error_rate` are null (unknown), not zero.
//!
//! Tables: `methods` (`direction` "out" or "in", `method`, `calls`, `errors`,
//! `error_rate`; most calls first) and `buckets` (`bucket`, `calls_out`, `calls_in`,
//! `errors_out`).

use polars::prelude::*;

use super::{frame, time_column, Scope, Table};
use crate::event::{handled_by_server, Kind, NONE};
use crate::Error;

pub(super) fn compute(scope: &Scope<'_>) -> Result<Vec<Table>, Error> {
    let log = scope.log;
    let buckets = scope.buckets();
    let mut calls_out = vec![0u64; buckets.len()];
    let mut calls_in = vec![0u64; buckets.len()];
    let mut errors_out = vec![0u64; buckets.len()];
    let mut by_name = vec![0u64; log.names.len()];
    for event in &log.events {
        if !matches!(event.kind, Kind::RpcOut | Kind::RpcIn)
            || event.name == NONE
            || !scope.in_range(event.ts)
            || !scope.wants(event.device)
        {
            continue;
        }
        by_name[event.name as usize] += 1;
        let bucket = scope.bucket_index(event.ts);
        if event.kind == Kind::RpcIn {
            calls_in[bucket] += 1;
        } else {
            calls_out[bucket] += 1;
            let method = log.names.get(event.name).strip_prefix(b"rpc.out.");
            if !method.is_some_and(handled_by_server) {
                errors_out[bucket] += 1;
            }
        }
    }
    let mut rows = Vec::new();
    for (name, &calls) in by_name.iter().enumerate() {
        if calls == 0 {
            continue;
        }
        let name = log.names.get(name as u32);
        let (direction, method, errors) = if let Some(m) = name.strip_prefix(b"rpc.out.") {
            ("out", m, Some(if handled_by_server(m) { 0 } else { calls }))
        } else if let Some(m) = name.strip_prefix(b"rpc.in.") {
            ("in", m, None)
        } else {
            continue;
        };
        rows.push((
            calls,
            direction,
            String::from_utf8_lossy(method).into_owned(),
            errors,
        ));
    }
    rows.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)).then(a.2.cmp(&b.2)));
    let methods = frame(vec![
        Column::new(
            "direction".into(),
            rows.iter().map(|r| r.1).collect::<Vec<&str>>(),
        ),
        Column::new(
            "method".into(),
            rows.iter().map(|r| r.2.as_str()).collect::<Vec<&str>>(),
        ),
        Column::new(
            "calls".into(),
            rows.iter().map(|r| r.0).collect::<Vec<u64>>(),
        ),
        Column::new(
            "errors".into(),
            rows.iter().map(|r| r.3).collect::<Vec<Option<u64>>>(),
        ),
        Column::new(
            "error_rate".into(),
            rows.iter()
                .map(|r| r.3.map(|e| e as f64 / r.0 as f64))
                .collect::<Vec<Option<f64>>>(),
        ),
    ])?;
    let by_bucket = frame(vec![
        time_column("bucket", buckets),
        Column::new("calls_out".into(), calls_out),
        Column::new("calls_in".into(), calls_in),
        Column::new("errors_out".into(), errors_out),
    ])?;
    Ok(vec![
        Table::new("methods", methods),
        Table::new("buckets", by_bucket),
    ])
}
