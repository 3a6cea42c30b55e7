//! Rendering the fleet view at 200x50 into a `TestBackend`, with 1k, 100k and 1M devices:
//! the console's table (only visible rows built) against a stock ratatui `Table` fed every
//! row. Also the cost of applying notifications and of re-sorting a big fleet, which
//! bound how many notifications a second the console keeps up with.
//!
//! `cargo bench -p herd-console --bench fleet_render`; results in docs/BENCHMARKS.md.

use std::collections::HashSet;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use herd_client::Notification;
use herd_console::fleet::DeviceRow;
use herd_console::tui::{update, view, Model, ModelOptions, Msg, ProfileInfo, Theme};
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use serde_json::Value;

const NOW: f64 = 1_700_000_000.0;
const WIDTH: u16 = 200;
const HEIGHT: u16 = 50;

fn row(i: usize) -> DeviceRow {
    DeviceRow {
        id: format!("{i:024x}").into(),
        name: format!("lamp-{i:07}").into(),
        online: !i.is_multiple_of(3),
        app: "smart-light".into(),
        arch: if i.is_multiple_of(4) {
            "esp32c6"
        } else {
            "esp32c3"
        }
        .into(),
        fw_version: format!("1.{}.0", i % 5).into(),
        uptime: Some(((i % 86_400) as f64, NOW)),
        last_seen: Some(NOW - (i % 10_000) as f64),
        light: Some(i.is_multiple_of(2)),
        delta_pending: i.is_multiple_of(7),
    }
}

/// A loaded model with `count` devices, the cursor in the middle of the table.
fn model(count: usize) -> Model {
    let mut model = Model::new(ModelOptions {
        profile: ProfileInfo {
            name: "bench".into(),
            server: "http://127.0.0.1:8009".into(),
            read_only: false,
        },
        tail_lines: 20_000,
        now: NOW,
        size: (WIDTH, HEIGHT),
    });
    update(&mut model, Msg::DevicesLoaded(Ok(Vec::new())));
    model
        .fleet
        .replace_all((0..count).map(row).collect(), &HashSet::new());
    model.fleet_ui.selected = count / 2;
    model.fleet_ui.offset = (count / 2).saturating_sub(20);
    model
}

fn rendering(c: &mut Criterion) {
    let theme = Theme::colour();
    let mut group = c.benchmark_group("fleet_view_200x50");
    group.measurement_time(Duration::from_secs(3));
    for count in [1_000usize, 100_000, 1_000_000] {
        let model = model(count);
        let mut terminal = Terminal::new(TestBackend::new(WIDTH, HEIGHT)).expect("terminal");
        group.bench_with_input(BenchmarkId::new("herd", count), &count, |b, _| {
            b.iter(|| {
                terminal
                    .draw(|frame| view::render(frame, black_box(&model), &theme))
                    .expect("draw");
            })
        });
        if count <= 1_000 {
            group.bench_with_input(BenchmarkId::new("stock_table", count), &count, |b, _| {
                b.iter(|| {
                    terminal
                        .draw(|frame| view::render_fleet_naive(frame, black_box(&model), &theme))
                        .expect("draw");
                })
            });
        }
    }
    group.finish();

    // The stock table at 100k and 1M rows takes long enough per frame that a few samples
    // say everything.
    let mut group = c.benchmark_group("fleet_view_200x50_slow");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    for count in [100_000usize, 1_000_000] {
        let model = model(count);
        let mut terminal = Terminal::new(TestBackend::new(WIDTH, HEIGHT)).expect("terminal");
        group.bench_with_input(BenchmarkId::new("stock_table", count), &count, |b, _| {
            b.iter(|| {
                terminal
                    .draw(|frame| view::render_fleet_naive(frame, black_box(&model), &theme))
                    .expect("draw");
            })
        });
    }
    group.finish();
}

fn updating(c: &mut Criterion) {
    let mut group = c.benchmark_group("fleet_updates_100k");
    group.measurement_time(Duration::from_secs(3));
    let mut base = model(100_000);
    let ids: Vec<String> = (0..1000).map(|i| format!("{:024x}", i * 97)).collect();
    let mut flip = false;
    group.bench_function("notifications_batch_1000", |b| {
        b.iter(|| {
            flip = !flip;
            let items = ids
                .iter()
                .map(|id| {
                    let name = if flip { "online" } else { "offline" };
                    Notification::new(id.clone(), name, Value::Null)
                })
                .collect();
            update(&mut base, Msg::Notifications { at: NOW, items });
        })
    });
    // `updated` carries a whole device object (PROTOCOL §5), the expensive kind.
    let objects: Vec<Value> = ids
        .iter()
        .map(|id| {
            serde_json::json!({
                "id": id, "name": "lamp", "user_id": "email_admin", "shared_with": "",
                "online": true, "created_at": "2023-11-14T22:13:20Z",
                "last_seen": "2023-11-14T22:13:20Z",
                "info": {"app": "smart-light", "arch": "esp32c3", "fw_version": "1.2.3", "uptime": 42},
                "shadow": {"state": {"desired": {"on": true}, "reported": {"on": true,
                    "ota": {"fw_version": "1.2.3", "status": 0}}, "delta": {}},
                    "version": 7, "timestamp": NOW}
            })
        })
        .collect();
    group.bench_function("updated_batch_1000", |b| {
        b.iter(|| {
            let items = ids
                .iter()
                .zip(&objects)
                .map(|(id, object)| Notification::new(id.clone(), "updated", object.clone()))
                .collect();
            update(&mut base, Msg::Notifications { at: NOW, items });
        })
    });
    group.bench_function("resort_after_changes", |b| {
        b.iter(|| {
            // Mark the order stale and let a tick rebuild it, as the console does a few
            // times a second while notifications flow.
            base.fleet.modify(&ids[0], |row| row.online = !row.online);
            base.fleet.refresh();
        })
    });
    group.finish();
}

criterion_group!(benches, rendering, updating);
criterion_main!(benches);
