//! The console's `update()` driven by messages, no terminal: navigation, live updates from
//! notifications (PROTOCOL §5), shadow editing with version conflicts (§4.1), RPC calls,
//! read-only mode, bulk actions, and floods.

mod support;

use crossterm::event::KeyCode;
use herd_console::tui::model::{BulkAction, Failure, Overlay, Screen};
use herd_console::tui::{Command, Connection, Msg};
use ratatui::style::Color;
use serde_json::json;
use support::*;

#[test]
fn connecting_lists_devices_and_reconnecting_lists_again() {
    let mut model = model(false, (80, 24));
    assert_eq!(
        send(&mut model, Msg::Stream(Connection::Connected)),
        vec![Command::LoadDevices]
    );
    send(
        &mut model,
        Msg::DevicesLoaded(Ok((0..9).map(row).collect())),
    );
    let counts = model.fleet.counts();
    assert_eq!((counts.total, counts.online), (9, 6));
    send(
        &mut model,
        Msg::Stream(Connection::Lost {
            reason: "closed".into(),
            retry_at: NOW + 1.0,
        }),
    );
    assert!(screen(&model, 80, 24).contains("disconnected"));
    // Back: the listing is fetched again, since events may have been missed meanwhile.
    assert_eq!(
        send(&mut model, Msg::Stream(Connection::Connected)),
        vec![Command::LoadDevices]
    );
    send(
        &mut model,
        Msg::DevicesLoaded(Err(Failure::new("503 unavailable: store busy"))),
    );
    assert!(model.loaded_once, "an old listing stays on screen");
}

#[test]
fn the_table_follows_the_stream_without_polling() {
    let mut model = loaded(6, false, (200, 50));
    let id = device(3).id;
    assert_eq!(model.fleet.get(&id).map(|r| r.online), Some(false));
    notify(
        &mut model,
        NOW + 1.0,
        vec![notification(&id, "online", json!(null))],
    );
    assert_eq!(model.fleet.get(&id).map(|r| r.online), Some(true));
    assert_eq!(model.fleet.counts().online, 5);

    // `updated` carries the device object: light and delta follow it.
    let mut object = device(3);
    object.online = true;
    object.shadow["state"]["reported"]["on"] = json!(true);
    notify(
        &mut model,
        NOW + 2.0,
        vec![notification(
            &id,
            "updated",
            serde_json::to_value(&object).expect("json"),
        )],
    );
    assert_eq!(model.fleet.get(&id).and_then(|r| r.light), Some(true));

    // A new device appears at once; a deleted one goes.
    let new = device(40);
    notify(
        &mut model,
        NOW + 3.0,
        vec![notification(
            &new.id,
            "created",
            serde_json::to_value(&new).expect("json"),
        )],
    );
    assert_eq!(model.fleet.view_len(), 7);
    notify(
        &mut model,
        NOW + 4.0,
        vec![notification(&new.id, "deleted", json!({"id": new.id}))],
    );
    assert_eq!(model.fleet.view_len(), 6);
    assert!(!screen(&model, 200, 50).contains("lamp-040"));

    // A listing that started before these events does not undo them.
    send(
        &mut model,
        Msg::DevicesLoaded(Ok((0..6).map(row).collect())),
    );
    assert_eq!(model.fleet.get(&id).map(|r| r.online), Some(true));
}

#[test]
fn navigation_breadcrumbs_and_palette() {
    let mut model = loaded(6, false, (80, 24));
    send(&mut model, key(KeyCode::Down));
    let commands = send(&mut model, key(KeyCode::Enter));
    let id = device(1).id;
    assert_eq!(commands, vec![Command::LoadDevice(id.clone())]);
    assert_eq!(model.screen(), &Screen::Device(id.clone()));
    assert!(screen(&model, 80, 24).contains("Fleet › lamp-001"));
    send(&mut model, key(KeyCode::Esc));
    assert_eq!(model.screen(), &Screen::Fleet);

    send(&mut model, key(KeyCode::Char(':')));
    chars(&mut model, "nonsense");
    send(&mut model, key(KeyCode::Enter));
    match &model.overlay {
        Some(Overlay::Palette {
            error: Some(error), ..
        }) => assert!(error.contains("unknown command")),
        other => panic!("palette with an error expected, got {other:?}"),
    }
    send(&mut model, key(KeyCode::Esc));
    send(&mut model, key(KeyCode::Char(':')));
    chars(&mut model, "tai");
    send(&mut model, key(KeyCode::Enter));
    assert_eq!(model.screen(), &Screen::Notifications);
    send(&mut model, key(KeyCode::Char(':')));
    chars(&mut model, &format!("device {id}"));
    assert_eq!(
        send(&mut model, key(KeyCode::Enter)),
        vec![Command::LoadDevice(id.clone())]
    );
    assert_eq!(model.stack, vec![Screen::Fleet, Screen::Device(id)]);
    send(&mut model, key(KeyCode::Char('?')));
    assert!(screen(&model, 80, 24).contains("help"));
    send(&mut model, key(KeyCode::Char('x')));
    assert!(model.overlay.is_none());
    assert_eq!(send(&mut model, ctrl('c')), vec![Command::Quit]);
    assert!(model.quit);
}

#[test]
fn sorting_and_filtering_keys() {
    let mut model = loaded(30, false, (80, 24));
    send(&mut model, key(KeyCode::Char('/')));
    chars(&mut model, "state:offline");
    // The table filters while typing.
    assert_eq!(model.fleet.view_len(), 10);
    send(&mut model, key(KeyCode::Enter));
    send(&mut model, key(KeyCode::Char('2')));
    assert!(
        model.fleet.sort().descending,
        "pressing the sorted column again reverses"
    );
    assert_eq!(
        model.fleet.row_at(0).map(|r| r.name.to_string()),
        Some("lamp-027".into())
    );
    send(&mut model, key(KeyCode::Esc));
    assert_eq!(model.fleet.view_len(), 30, "Esc clears the filter");
    send(&mut model, key(KeyCode::End));
    assert_eq!(model.fleet_ui.selected, 29);
    assert!(model.fleet_ui.offset > 0, "the selection stays visible");
}

fn open_device_5(model: &mut herd_console::tui::Model) -> String {
    let id = device(5).id;
    send(model, key(KeyCode::Char(':')));
    chars(model, &format!("device {id}"));
    send(model, key(KeyCode::Enter));
    send(
        model,
        Msg::DeviceLoaded {
            id: id.clone(),
            result: Ok(device(5)),
        },
    );
    id
}

#[test]
fn editing_desired_sends_only_the_difference_and_handles_conflicts() {
    let mut model = loaded(10, false, (200, 50));
    let id = open_device_5(&mut model);
    send(&mut model, key(KeyCode::Char('e')));
    // Replace the text: select nothing fancy, just clear and type.
    for _ in 0..3 {
        send(&mut model, key(KeyCode::Down));
    }
    send(&mut model, key(KeyCode::End));
    for _ in 0..40 {
        send(&mut model, key(KeyCode::Backspace));
    }
    chars(&mut model, "{\"on\": true, \"brightness\": 50}");
    let commands = send(&mut model, ctrl('s'));
    // Device 5: desired {"on": true} at version 8 (PROTOCOL §4.1).
    assert_eq!(
        commands,
        vec![Command::SendShadow {
            id: id.clone(),
            update: json!({"state": {"desired": {"brightness": 50}}, "version": 8}),
        }]
    );
    // The server says the shadow moved on: the console fetches its copy and shows it.
    let commands = send(
        &mut model,
        Msg::ShadowSent {
            id: id.clone(),
            result: Err(Failure {
                status: Some(409),
                message: "409 conflict".into(),
            }),
        },
    );
    assert_eq!(commands, vec![Command::LoadDevice(id.clone())]);
    let mut server = device(5);
    server.shadow["state"]["desired"] = json!({"on": false, "colour": "red"});
    server.shadow["version"] = json!(11);
    send(
        &mut model,
        Msg::DeviceLoaded {
            id: id.clone(),
            result: Ok(server),
        },
    );
    let text = screen(&model, 200, 50);
    assert!(text.contains("server's copy · v11"), "{text}");
    assert!(text.contains("version conflict"), "{text}");
    // Overwrite: the difference from the server's copy, at its version.
    let commands = send(&mut model, ctrl('o'));
    assert_eq!(
        commands,
        vec![Command::SendShadow {
            id: id.clone(),
            update: json!({"state": {"desired": {"on": true, "brightness": 50, "colour": null}}, "version": 11}),
        }]
    );
    let commands = send(
        &mut model,
        Msg::ShadowSent {
            id: id.clone(),
            result: Ok(json!({"version": 12})),
        },
    );
    assert_eq!(commands, vec![Command::LoadDevice(id)]);
    assert!(model.device.as_ref().is_some_and(|v| v.editor.is_none()));
    assert!(screen(&model, 200, 50).contains("desired updated (shadow version 12)"));
}

#[test]
fn invalid_json_is_not_sent() {
    let mut model = loaded(10, false, (80, 24));
    let id = open_device_5(&mut model);
    send(&mut model, key(KeyCode::Char('e')));
    chars(&mut model, "garbage");
    assert!(send(&mut model, ctrl('s')).is_empty());
    assert!(screen(&model, 80, 24).contains("invalid JSON at line 1"));
    // $EDITOR returning junk lands in the built-in editor with the reason, unsent.
    send(&mut model, key(KeyCode::Esc));
    assert_eq!(
        send(&mut model, key(KeyCode::Char('E'))),
        vec![Command::ExternalEditor {
            id: id.clone(),
            text: "{\n  \"on\": true\n}".into()
        }]
    );
    let commands = send(
        &mut model,
        Msg::ExternalEdit {
            id: id.clone(),
            result: Ok("[1, 2".into()),
        },
    );
    assert!(commands.is_empty());
    assert!(screen(&model, 80, 24).contains("invalid JSON"));
    send(&mut model, key(KeyCode::Esc));
    let commands = send(
        &mut model,
        Msg::ExternalEdit {
            id: id.clone(),
            result: Ok("{\"on\": false}\n".into()),
        },
    );
    assert_eq!(
        commands,
        vec![Command::SendShadow {
            id,
            update: json!({"state": {"desired": {"on": false}}, "version": 8})
        }]
    );
}

#[test]
fn changed_keys_are_highlighted() {
    let mut model = loaded(10, false, (200, 50));
    let id = open_device_5(&mut model);
    let mut object = device(5);
    object.shadow["state"]["reported"]["on"] = json!(true);
    notify(
        &mut model,
        NOW + 1.0,
        vec![notification(
            &id,
            "updated",
            serde_json::to_value(&object).expect("json"),
        )],
    );
    let terminal = render(&model, 200, 50);
    let buffer = terminal.backend().buffer();
    // Find "on: true" in the reported column (the middle third) and check its colour.
    let row = (0..50)
        .find(|&y| {
            let line: String = (67..133)
                .map(|x| buffer[(x, y)].symbol().to_string())
                .collect();
            line.contains("on: true")
        })
        .expect("reported on: true is shown");
    let x = (67..133)
        .find(|&x| buffer[(x, row)].symbol() == "o")
        .expect("cell");
    assert_eq!(
        buffer[(x, row)].bg,
        Color::Yellow,
        "a changed key stands out"
    );
    // Long after, it does not.
    send(&mut model, Msg::Tick(NOW + 60.0));
    let terminal = render(&model, 200, 50);
    assert_ne!(terminal.backend().buffer()[(x, row)].bg, Color::Yellow);
}

#[test]
fn rpc_calls_from_the_device_view() {
    let mut model = loaded(10, false, (80, 24));
    let id = open_device_5(&mut model);
    assert_eq!(
        send(&mut model, key(KeyCode::Char('c'))),
        vec![Command::ListRpc(id.clone())]
    );
    send(
        &mut model,
        Msg::RpcListed {
            id: id.clone(),
            result: Ok(vec!["Echo".into(), "Sys.Reboot".into()]),
        },
    );
    chars(&mut model, "{\"x\":");
    assert!(
        send(&mut model, key(KeyCode::Enter)).is_empty(),
        "invalid params are not sent"
    );
    assert!(screen(&model, 80, 24).contains("not valid JSON"));
    chars(&mut model, "1}");
    assert_eq!(
        send(&mut model, key(KeyCode::Enter)),
        vec![Command::CallRpc {
            id: id.clone(),
            method: "Echo".into(),
            params: Some(json!({"x": 1}))
        }]
    );
    send(
        &mut model,
        Msg::RpcDone {
            id: id.clone(),
            method: "Echo".into(),
            result: Err(Failure::new("504 timeout: device did not reply")),
        },
    );
    assert!(screen(&model, 80, 24).contains("device did not reply"));
    send(&mut model, key(KeyCode::Esc));
    // An offline device cannot be called.
    send(&mut model, key(KeyCode::Esc));
    let offline = device(3).id;
    send(&mut model, key(KeyCode::Char(':')));
    chars(&mut model, &format!("device {offline}"));
    send(&mut model, key(KeyCode::Enter));
    send(
        &mut model,
        Msg::DeviceLoaded {
            id: offline.clone(),
            result: Ok(device(3)),
        },
    );
    assert!(send(&mut model, key(KeyCode::Char('c'))).is_empty());
    assert!(screen(&model, 80, 24).contains("offline"));
}

#[test]
fn read_only_refuses_every_write_visibly() {
    let mut model = loaded(10, true, (80, 24));
    assert!(screen(&model, 80, 24).contains("READ-ONLY"));
    let id = open_device_5(&mut model);
    assert!(send(&mut model, key(KeyCode::Char('e'))).is_empty());
    assert!(screen(&model, 80, 24).contains("read-only profile: refusing to edit desired"));
    assert!(send(&mut model, key(KeyCode::Char('E'))).is_empty());
    // RPC: reading methods allowed, others refused.
    send(&mut model, key(KeyCode::Char('c')));
    send(
        &mut model,
        Msg::RpcListed {
            id: id.clone(),
            result: Ok(vec!["Sys.GetInfo".into(), "Sys.Reboot".into()]),
        },
    );
    assert_eq!(
        send(&mut model, key(KeyCode::Enter)).len(),
        1,
        "Sys.GetInfo only reads"
    );
    send(&mut model, key(KeyCode::Down));
    assert!(send(&mut model, key(KeyCode::Enter)).is_empty());
    assert!(screen(&model, 80, 24).contains("refusing to call Sys.Reboot"));
    send(&mut model, key(KeyCode::Esc));
    send(&mut model, key(KeyCode::Esc));
    send(&mut model, key(KeyCode::Char(':')));
    chars(&mut model, "set {\"on\": true}");
    send(&mut model, key(KeyCode::Enter));
    assert!(model.overlay.is_none(), "no confirmation: refused outright");
    assert!(screen(&model, 80, 24).contains("refusing to change desired"));
}

#[test]
fn bulk_actions_name_the_count_and_wait_for_yes() {
    let mut model = loaded(10, false, (80, 24));
    for _ in 0..3 {
        send(&mut model, key(KeyCode::Char(' ')));
    }
    send(&mut model, key(KeyCode::Char(':')));
    chars(&mut model, "set {\"on\": true}");
    assert!(send(&mut model, key(KeyCode::Enter)).is_empty());
    assert!(screen(&model, 80, 24).contains("on 3 devices?"));
    assert!(send(&mut model, key(KeyCode::Char('n'))).is_empty());
    send(&mut model, key(KeyCode::Char(':')));
    chars(&mut model, "set {\"on\": true}");
    send(&mut model, key(KeyCode::Enter));
    let commands = send(&mut model, key(KeyCode::Char('y')));
    let ids: Vec<String> = (0..3).map(|i| device(i).id).collect();
    assert_eq!(
        commands,
        vec![Command::Bulk {
            label: "set desired {\"on\":true}".into(),
            ids,
            action: BulkAction::Desired(json!({"state": {"desired": {"on": true}}})),
        }]
    );
    send(
        &mut model,
        Msg::BulkDone {
            label: "set desired".into(),
            ok: 2,
            failed: vec![("x".into(), "503 unavailable".into())],
        },
    );
    assert!(screen(&model, 80, 24).contains("2 ok, 1 failed"));
}

#[test]
fn tail_follow_pause_filters_and_save() {
    let mut model = loaded(3, false, (80, 24));
    send(&mut model, key(KeyCode::Char('t')));
    for i in 0..50 {
        notify(
            &mut model,
            NOW + i as f64,
            vec![notification(
                &device(i % 3).id,
                if i % 2 == 0 { "online" } else { "rpc.out.Log" },
                json!({"i": i}),
            )],
        );
    }
    send(&mut model, key(KeyCode::Char(' ')));
    notify(
        &mut model,
        NOW + 60.0,
        vec![notification("late", "online", json!(null))],
    );
    let text = screen(&model, 80, 24);
    assert!(text.contains("PAUSED · 1 new"), "{text}");
    assert!(!text.contains("late"));
    send(&mut model, key(KeyCode::Char('G')));
    assert!(screen(&model, 80, 24).contains("late"));

    send(&mut model, key(KeyCode::Char('/')));
    chars(&mut model, "(unclosed");
    send(&mut model, key(KeyCode::Enter));
    assert!(screen(&model, 80, 24).contains("invalid regex"));
    send(&mut model, key(KeyCode::Esc));
    send(&mut model, key(KeyCode::Char('d')));
    chars(&mut model, &device(1).id);
    send(&mut model, key(KeyCode::Enter));
    send(&mut model, key(KeyCode::Char('s')));
    for _ in 0..60 {
        send(&mut model, key(KeyCode::Backspace));
    }
    chars(&mut model, "out.ndjson");
    match send(&mut model, key(KeyCode::Enter)).as_slice() {
        [Command::Save { path, lines }] => {
            assert_eq!(path.to_str(), Some("out.ndjson"));
            assert_eq!(lines.len(), 17, "only the filtered lines");
            let first: serde_json::Value = serde_json::from_str(&lines[0]).expect("json line");
            assert_eq!(first["id"], device(1).id.as_str());
        }
        other => panic!("save expected, got {other:?}"),
    }
}

#[test]
fn a_flood_stays_bounded() {
    let mut model = loaded(1000, false, (200, 50));
    let ids: Vec<String> = (0..1000).map(|i| device(i).id).collect();
    for batch in 0..100 {
        let items = (0..1000)
            .map(|i| {
                let name = if (batch + i) % 2 == 0 {
                    "online"
                } else {
                    "offline"
                };
                notification(&ids[i], name, json!(null))
            })
            .collect();
        notify(&mut model, NOW + batch as f64 * 0.01, items);
        send(&mut model, Msg::Tick(NOW + batch as f64 * 0.01));
    }
    send(&mut model, Msg::Lagged(5000));
    assert_eq!(model.tail.len(), 1000, "the ring keeps its capacity");
    assert_eq!(model.tail.dropped(), 99_000 + 5000);
    send(&mut model, key(KeyCode::Char('t')));
    assert!(screen(&model, 200, 50).contains("dropped 104000"));
    for size in [(20, 5), (1, 1), (80, 24)] {
        send(&mut model, Msg::Resize(size.0, size.1));
        render(&model, size.0, size.1);
    }
}
