//! Builders for console tests: a model with a deterministic fleet, keys, and rendering
//! into a `TestBackend`.
#![allow(dead_code)]

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use herd_client::{DeviceObject, Notification};
use herd_console::tui::{
    update, view, Command, Connection, Model, ModelOptions, Msg, ProfileInfo, Theme,
};
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use serde_json::{json, Value};

/// A fixed clock: 2023-11-14T22:13:20Z.
pub const NOW: f64 = 1_700_000_000.0;

pub fn model(read_only: bool, size: (u16, u16)) -> Model {
    Model::new(ModelOptions {
        profile: ProfileInfo {
            name: "lab".into(),
            server: "http://127.0.0.1:8009".into(),
            read_only,
        },
        tail_lines: 1000,
        now: NOW,
        size,
    })
}

fn rfc3339(ts: f64) -> String {
    let time = time::OffsetDateTime::from_unix_timestamp(ts as i64).expect("valid time");
    time.format(&time::format_description::well_known::Rfc3339)
        .expect("formattable")
}

/// Device `i` of a made-up fleet: every third offline, every other light on, every
/// fifth with a pending delta.
pub fn device(i: usize) -> DeviceObject {
    let online = !i.is_multiple_of(3);
    let on = i.is_multiple_of(2);
    let desired_on = if i.is_multiple_of(5) { !on } else { on };
    let mut shadow = json!({
        "state": {
            "desired": {"on": desired_on},
            "reported": {"on": on, "ota": {"fw_version": "1.2.3", "status": 0}},
            "delta": {}
        },
        "version": 3 + i,
        "timestamp": NOW - 60.0,
    });
    if desired_on != on {
        shadow["state"]["delta"] = json!({"on": desired_on});
    }
    DeviceObject {
        id: format!("{:024x}", 0xabc000 + i),
        name: format!("lamp-{i:03}"),
        token: None,
        user_id: "email_admin".into(),
        shared_with: String::new(),
        online,
        created_at: rfc3339(NOW - 86_400.0),
        last_seen: Some(rfc3339(NOW - 60.0 * i as f64)),
        info: json!({"app": "smart-light", "arch": if i.is_multiple_of(4) { "esp32c6" } else { "esp32c3" },
                     "fw_version": format!("1.{}.0", i % 3), "uptime": 3600 + i * 7}),
        shadow,
        quarantine: None,
    }
}

/// Device `i` as a table row, as the listing task delivers it.
pub fn row(i: usize) -> herd_console::fleet::DeviceRow {
    herd_console::fleet::DeviceRow::from_object(&device(i), NOW)
}

/// A model connected and loaded with `count` devices.
pub fn loaded(count: usize, read_only: bool, size: (u16, u16)) -> Model {
    let mut model = model(read_only, size);
    send(&mut model, Msg::Stream(Connection::Connected));
    send(
        &mut model,
        Msg::DevicesLoaded(Ok((0..count).map(row).collect())),
    );
    model
}

pub fn send(model: &mut Model, msg: Msg) -> Vec<Command> {
    update(model, msg)
}

pub fn key(code: KeyCode) -> Msg {
    Msg::Key(KeyEvent::new(code, KeyModifiers::NONE))
}

pub fn ctrl(c: char) -> Msg {
    Msg::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL))
}

pub fn chars(model: &mut Model, text: &str) -> Vec<Command> {
    let mut commands = Vec::new();
    for c in text.chars() {
        commands.extend(send(model, key(KeyCode::Char(c))));
    }
    commands
}

pub fn notification(id: &str, name: &str, data: Value) -> Notification {
    Notification::new(id, name, data)
}

pub fn notify(model: &mut Model, at: f64, items: Vec<Notification>) {
    send(model, Msg::Notifications { at, items });
}

/// Draws the model at `width`x`height`.
pub fn render(model: &Model, width: u16, height: u16) -> Terminal<TestBackend> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test terminal");
    let theme = Theme::colour();
    terminal
        .draw(|frame| view::render(frame, model, &theme))
        .expect("draws");
    terminal
}

/// The screen as text lines, for assertions that are not snapshots.
pub fn screen(model: &Model, width: u16, height: u16) -> String {
    let terminal = render(model, width, height);
    let buffer = terminal.backend().buffer();
    let mut out = String::new();
    for y in 0..buffer.area.height {
        for x in 0..buffer.area.width {
            out.push_str(buffer[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

/// A firmware image of the store: `1.{minor}.0` of the smart light, built `age` seconds ago.
pub fn firmware(minor: u32, age: f64) -> herd_client::FirmwareObject {
    let id = format!("{:064x}", 0xf1a9_0000u64 + minor as u64);
    serde_json::from_value(json!({
        "id": id, "sha256": id, "app": "smart-light", "version": format!("1.{minor}.0"),
        "platform": "esp32c3", "size": 917_504 + minor as u64 * 1024, "signed": minor % 2 == 1,
        "created_at": rfc3339(NOW - age), "created_by": "email_admin",
    }))
    .expect("firmware object")
}

/// The device states of the fixture rollout, device `i` of [`device`] in wave `wave`.
const PLAN: [(u32, &str, &str); 20] = [
    (0, "succeeded", ""),
    (0, "succeeded", ""),
    (1, "succeeded", ""),
    (1, "succeeded", ""),
    (1, "reverted", "crashed on first boot; back on 1.0.0"),
    (1, "sending", ""),
    (1, "verifying", "running the new firmware; soaking"),
    (1, "failed", "OTA.Write at 40960: device did not reply"),
    (2, "pending", ""),
    (2, "pending", ""),
    (2, "pending", ""),
    (2, "pending", ""),
    (2, "pending", ""),
    (2, "pending", ""),
    (2, "pending", ""),
    (2, "pending", ""),
    (2, "pending", ""),
    (2, "pending", ""),
    (2, "pending", ""),
    (2, "pending", ""),
];

/// A rollout of [`firmware`] 1.1.0 to 20 of the made-up devices in waves of 10, 30 and 60
/// percent, running in its second wave: 4 succeeded, a revert and a failure, one device
/// sending, one soaking, 12 pending. With the per-device states when `devices`.
pub fn rollout(id: &str, name: &str, devices: bool) -> herd_client::RolloutObject {
    use protocol::firmware::{Counters, DeviceState};
    let firmware = firmware(1, 3600.0);
    let mut waves = vec![Counters::default(); 3];
    let mut total = Counters::default();
    let mut list = Vec::new();
    for (i, (wave, state, message)) in PLAN.iter().enumerate() {
        let state = DeviceState::parse(state).expect("state");
        waves[*wave as usize].add(state);
        total.add(state);
        let device = device(i);
        list.push(json!({
            "id": device.id, "name": device.name, "wave": wave, "state": state,
            "online": device.online, "from_version": "1.0.0", "attempts": u32::from(state != DeviceState::Pending),
            "message": message,
            "finished_at": state.is_final().then(|| rfc3339(NOW - 100.0 + i as f64)),
        }));
    }
    let wave_json: Vec<Value> = waves
        .iter()
        .enumerate()
        .map(|(i, counters)| {
            json!({"index": i, "size": counters.total, "soak_s": 60, "counters": counters,
                   "started_at": (i == 1).then(|| rfc3339(NOW - 300.0))})
        })
        .collect();
    let mut object = json!({
        "id": id, "name": name, "firmware": firmware.id, "version": firmware.version,
        "state": "running",
        "spec": {"firmware": firmware.id, "select": {"query": "fw:1.0.0"},
                 "waves": [{"percent": 10, "soak_s": 60}, {"percent": 30, "soak_s": 60}, {"percent": 60, "soak_s": 60}],
                 "max_parallel": 5, "halt_when": {"failed_percent": 50}},
        "counters": total, "waves": wave_json, "current_wave": 1,
        "created_by": "email_admin", "created_at": rfc3339(NOW - 900.0),
        "started_at": rfc3339(NOW - 840.0),
    });
    if devices {
        object["devices"] = Value::Array(list);
    }
    serde_json::from_value(object).expect("rollout object")
}

/// Three rollouts, newest first: the running fixture, a halted one and a completed one.
pub fn rollouts() -> Vec<herd_client::RolloutObject> {
    let running = rollout("r1", "lights 1.1.0", false);
    let mut halted = rollout("r0", "porch lights 1.1.0-rc1", false);
    halted.state = protocol::firmware::RolloutState::Halted;
    halted.reason = "3 of 6 devices failed in wave 2 (50%)".into();
    halted.created_at = rfc3339(NOW - 86_400.0);
    let mut done = rollout("rz", "all 1.0.0", false);
    done.state = protocol::firmware::RolloutState::Completed;
    done.version = "1.0.0".into();
    done.current_wave = 2;
    done.counters = protocol::firmware::Counters {
        total: 20,
        succeeded: 19,
        skipped: 1,
        ..Default::default()
    };
    done.created_at = rfc3339(NOW - 5.0 * 86_400.0);
    vec![running, halted, done]
}
