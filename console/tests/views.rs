//! Snapshot tests of every view at 80x24 (the smallest supported terminal) and 200x50,
//! rendered from a model into ratatui's `TestBackend`.

mod support;

use crossterm::event::KeyCode;
use herd_console::tui::{Connection, Msg};
use serde_json::json;
use support::*;

const SIZES: [(u16, u16); 2] = [(80, 24), (200, 50)];

fn snapshot(name: &str, scene: impl Fn((u16, u16)) -> herd_console::tui::Model) {
    for (width, height) in SIZES {
        let model = scene((width, height));
        let terminal = render(&model, width, height);
        insta::assert_snapshot!(format!("{name}_{width}x{height}"), terminal.backend());
    }
}

#[test]
fn fleet() {
    snapshot("fleet", |size| {
        let mut model = loaded(60, false, size);
        send(&mut model, key(KeyCode::Down));
        send(&mut model, key(KeyCode::Down));
        model
    });
}

#[test]
fn fleet_filtered_sorted_marked_read_only() {
    snapshot("fleet_filtered", |size| {
        let mut model = loaded(60, true, size);
        send(&mut model, key(KeyCode::Char('/')));
        chars(&mut model, "state:online light:on");
        send(&mut model, key(KeyCode::Enter));
        send(&mut model, key(KeyCode::Char('8'))); // sort by last seen
        send(&mut model, key(KeyCode::Char(' ')));
        send(&mut model, key(KeyCode::Char(' ')));
        model
    });
}

#[test]
fn fleet_states_before_data() {
    snapshot("fleet_connecting", |size| model(false, size));
    snapshot("fleet_unreachable", |size| {
        let mut model = model(false, size);
        send(
            &mut model,
            Msg::Stream(Connection::Lost {
                reason: "Connection refused (os error 111)".into(),
                retry_at: NOW + 2.0,
            }),
        );
        model
    });
    snapshot("fleet_rejected", |size| {
        let mut model = model(false, size);
        send(
            &mut model,
            Msg::Stream(Connection::Rejected(
                "401 unauthorized: invalid API key".into(),
            )),
        );
        model
    });
    snapshot("fleet_empty", |size| loaded(0, false, size));
}

/// The device view of device 5 after a report changed `reported.on`.
fn device_scene(size: (u16, u16)) -> herd_console::tui::Model {
    let mut model = loaded(10, false, size);
    send(&mut model, key(KeyCode::Char('5'))); // sort by firmware, to move around
    send(&mut model, key(KeyCode::Char('2'))); // back to name order
    for _ in 0..5 {
        send(&mut model, key(KeyCode::Down));
    }
    send(&mut model, key(KeyCode::Enter));
    let mut object = device(5);
    send(
        &mut model,
        Msg::DeviceLoaded {
            id: object.id.clone(),
            result: Ok(object.clone()),
        },
    );
    object.shadow["state"]["reported"]["on"] = json!(true);
    object.shadow["state"]["delta"] = json!({});
    object.shadow["version"] = json!(9);
    notify(
        &mut model,
        NOW + 1.0,
        vec![
            notification(
                &object.id,
                "rpc.out.Log",
                json!({"fd": 1, "data": "light on\n"}),
            ),
            notification(
                &object.id,
                "rpc.out.Dash.Shadow.Update",
                json!({"state": {"reported": {"on": true}}}),
            ),
            notification(
                &object.id,
                "updated",
                serde_json::to_value(&object).expect("json"),
            ),
        ],
    );
    model
}

#[test]
fn device_view() {
    snapshot("device", device_scene);
    snapshot("device_info", |size| {
        let mut model = device_scene(size);
        send(&mut model, key(KeyCode::Char('i')));
        model
    });
    snapshot("device_logs", |size| {
        let mut model = device_scene(size);
        send(&mut model, key(KeyCode::Char('l')));
        model
    });
}

#[test]
fn editor_with_invalid_json_and_conflict() {
    snapshot("editor_invalid", |size| {
        let mut model = device_scene(size);
        send(&mut model, key(KeyCode::Char('e')));
        send(&mut model, key(KeyCode::End));
        chars(&mut model, "oops");
        send(&mut model, ctrl('s'));
        model
    });
    snapshot("editor_conflict", |size| {
        let mut model = device_scene(size);
        send(&mut model, key(KeyCode::Char('e')));
        send(&mut model, ctrl('s')); // unchanged: "nothing changed"
        let id = device(5).id;
        send(
            &mut model,
            Msg::ShadowSent {
                id: id.clone(),
                result: Err(herd_console::tui::model::Failure {
                    status: Some(409),
                    message: "409 conflict: version mismatch".into(),
                }),
            },
        );
        let mut server = device(5);
        server.shadow["state"]["desired"] = json!({"on": false, "brightness": 80});
        server.shadow["version"] = json!(12);
        send(
            &mut model,
            Msg::DeviceLoaded {
                id,
                result: Ok(server),
            },
        );
        model
    });
}

#[test]
fn rpc_dialog() {
    snapshot("rpc", |size| {
        let mut model = device_scene(size);
        let id = device(5).id;
        send(&mut model, key(KeyCode::Char('c')));
        send(
            &mut model,
            Msg::RpcListed {
                id: id.clone(),
                result: Ok(vec![
                    "Config.Get".into(),
                    "RPC.List".into(),
                    "Sys.GetInfo".into(),
                    "Sys.Reboot".into(),
                ]),
            },
        );
        send(&mut model, key(KeyCode::Down));
        send(&mut model, key(KeyCode::Down));
        send(
            &mut model,
            Msg::RpcDone {
                id,
                method: "Sys.GetInfo".into(),
                result: Ok(json!({"app": "smart-light", "uptime": 3605})),
            },
        );
        model
    });
}

fn tail_scene(size: (u16, u16)) -> herd_console::tui::Model {
    let mut model = loaded(5, false, size);
    send(&mut model, key(KeyCode::Char('t')));
    for i in 0..1200u32 {
        let id = device(i as usize % 5).id;
        let (name, data) = match i % 4 {
            0 => ("online", json!(null)),
            1 => (
                "rpc.out.Log",
                json!({"fd": 1, "data": format!("line {i} with a long tail of text that will not fit in eighty columns at all")}),
            ),
            2 => ("rpc.in.Sys.GetInfo", json!(null)),
            _ => ("offline", json!(null)),
        };
        notify(
            &mut model,
            NOW + i as f64 / 10.0,
            vec![notification(&id, name, data)],
        );
    }
    send(&mut model, Msg::Lagged(42));
    model
}

#[test]
fn notifications_view() {
    snapshot("tail", tail_scene);
    snapshot("tail_paused_filtered_wrapped", |size| {
        let mut model = tail_scene(size);
        send(&mut model, key(KeyCode::Char('f')));
        send(&mut model, key(KeyCode::Char('n')));
        chars(&mut model, "rpc.out.*");
        send(&mut model, key(KeyCode::Enter));
        send(&mut model, key(KeyCode::Char('w')));
        send(&mut model, key(KeyCode::Up));
        notify(
            &mut model,
            NOW + 500.0,
            vec![notification("x", "online", json!(null))],
        );
        model
    });
}

#[test]
fn overlays() {
    snapshot("palette", |size| {
        let mut model = loaded(10, false, size);
        send(&mut model, key(KeyCode::Char(':')));
        chars(&mut model, "s");
        model
    });
    snapshot("help", |size| {
        let mut model = loaded(10, false, size);
        send(&mut model, key(KeyCode::Char('?')));
        model
    });
    snapshot("confirm", |size| {
        let mut model = loaded(10, false, size);
        send(&mut model, key(KeyCode::Char('*')));
        send(&mut model, key(KeyCode::Char(':')));
        chars(&mut model, "set {\"on\": true}");
        send(&mut model, key(KeyCode::Enter));
        model
    });
}

#[test]
fn tiny_terminal() {
    let model = loaded(10, false, (20, 5));
    insta::assert_snapshot!("tiny_20x5", render(&model, 20, 5).backend());
}
