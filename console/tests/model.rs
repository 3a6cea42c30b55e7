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
    // The first connection also reads the end of the server's log for the tail; every
    // connection asks what the key may do (PROTOCOL §11).
    assert_eq!(
        send(&mut model, Msg::Stream(Connection::Connected)),
        vec![
            Command::LoadDevices,
            Command::LoadKey,
            Command::LoadHistory { lines: 500 }
        ]
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
        vec![Command::LoadDevices, Command::LoadKey]
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
    assert_eq!(commands, vec![Command::LoadDevice(id.clone())]);
    assert!(model.device.as_ref().is_some_and(|v| v.editor.is_none()));
    assert!(screen(&model, 200, 50).contains("desired updated as version 12; reloading"));
    // By the reload the device has reported: the message says both, as the pane shows 13.
    let mut reloaded = device(5);
    reloaded.shadow["version"] = json!(13);
    send(
        &mut model,
        Msg::DeviceLoaded {
            id,
            result: Ok(reloaded),
        },
    );
    let text = screen(&model, 200, 50);
    assert!(text.contains("desired · v13"), "{text}");
    assert!(
        text.contains("desired updated as version 12; the shadow is at version 13 now"),
        "{text}"
    );
}

#[test]
fn esc_in_the_editor_asks_before_dropping_changes() {
    let mut model = loaded(10, false, (80, 24));
    open_device_5(&mut model);
    // Nothing typed: Esc closes at once.
    send(&mut model, key(KeyCode::Char('e')));
    send(&mut model, key(KeyCode::Esc));
    assert!(model.device.as_ref().is_some_and(|v| v.editor.is_none()));
    send(&mut model, key(KeyCode::Char('e')));
    chars(&mut model, "x");
    send(&mut model, key(KeyCode::Esc));
    assert!(model.device.as_ref().is_some_and(|v| v.editor.is_some()));
    assert!(screen(&model, 80, 24).contains("Esc again discards"));
    // Another key: the question is off, the edit goes on.
    chars(&mut model, "y");
    send(&mut model, key(KeyCode::Esc));
    send(&mut model, key(KeyCode::Esc));
    assert!(model.device.as_ref().is_some_and(|v| v.editor.is_none()));
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
    let text = screen(&model, 80, 24);
    assert!(text.contains("on 3 devices?"), "{text}");
    assert!(text.contains("lamp-000, lamp-001, lamp-002"), "{text}");
    assert!(text.contains("y yes"), "{text}");
    assert!(send(&mut model, key(KeyCode::Char('n'))).is_empty());
    send(&mut model, key(KeyCode::Char(':')));
    chars(&mut model, "set {\"on\": true}");
    send(&mut model, key(KeyCode::Enter));
    let commands = send(&mut model, key(KeyCode::Char('y')));
    let ids: Vec<String> = (0..3).map(|i| device(i).id).collect();
    let set = model.results.shown().expect("a result set").id;
    assert_eq!(
        commands,
        vec![Command::Bulk {
            set,
            label: "set desired {\"on\":true}".into(),
            ids: ids.clone(),
            action: BulkAction::Desired(json!({"state": {"desired": {"on": true}}})),
        }]
    );
    for (i, id) in ids.iter().enumerate() {
        let result = if i == 1 {
            Err("503 unavailable".to_string())
        } else {
            Ok(json!({"version": 9}))
        };
        send(
            &mut model,
            Msg::BulkAnswer {
                set,
                id: id.clone(),
                result,
            },
        );
    }
    send(&mut model, Msg::BulkDone { set });
    let text = screen(&model, 80, 24);
    assert!(text.contains("3 answered, 1 failed"), "{text}");
}

#[test]
fn bulk_results_are_kept_per_device_until_dismissed_and_saved_as_json() {
    let mut model = loaded(10, false, (80, 24));
    for _ in 0..3 {
        send(&mut model, key(KeyCode::Char(' ')));
    }
    send(&mut model, key(KeyCode::Char(':')));
    chars(&mut model, "call Sys.GetInfo");
    send(&mut model, key(KeyCode::Enter));
    let text = screen(&model, 80, 24);
    assert!(text.contains("call Sys.GetInfo on 3 devices?"), "{text}");
    assert!(text.contains("y yes   n no"), "{text}");
    let commands = send(&mut model, key(KeyCode::Char('y')));
    let Some(Command::Bulk { set, ids, .. }) = commands.into_iter().next() else {
        panic!("a bulk command");
    };
    // The pane opens at once, every device waiting.
    assert_eq!(model.screen(), &Screen::Results);
    let text = screen(&model, 80, 24);
    assert!(text.contains("0 of 3 answered"), "{text}");
    assert_eq!(text.matches("waiting…").count(), 3, "{text}");
    for (i, id) in ids.iter().enumerate() {
        let result = if i == 2 {
            Err("503 device offline".to_string())
        } else {
            Ok(json!({"app": "smart-light", "uptime": 100 + i}))
        };
        send(
            &mut model,
            Msg::BulkAnswer {
                set,
                id: id.clone(),
                result,
            },
        );
    }
    send(&mut model, Msg::BulkDone { set });
    let text = screen(&model, 80, 24);
    assert!(text.contains("3 answered, 1 failed"), "{text}");
    assert!(
        text.contains(r#"{"app":"smart-light","uptime":100}"#),
        "{text}"
    );
    assert!(text.contains("503 device offline"), "{text}");
    assert!(text.contains("lamp-000"), "{text}");
    // The selected row's whole value, pretty.
    assert!(text.contains("\"uptime\": 100"), "{text}");
    // Long after, leaving and coming back: still there.
    send(&mut model, Msg::Tick(NOW + 600.0));
    send(&mut model, key(KeyCode::Esc));
    assert_eq!(model.screen(), &Screen::Fleet);
    send(&mut model, key(KeyCode::Char('o')));
    assert_eq!(model.screen(), &Screen::Results);
    assert!(screen(&model, 80, 24).contains("3 answered, 1 failed"));
    // Saved as JSON.
    send(&mut model, key(KeyCode::Char('s')));
    send(&mut model, ctrl('u'));
    chars(&mut model, "out.json");
    match send(&mut model, key(KeyCode::Enter)).as_slice() {
        [Command::Save { path, lines }] => {
            assert_eq!(path.to_str(), Some("out.json"));
            let saved: serde_json::Value = serde_json::from_str(&lines[0]).expect("json");
            assert_eq!(saved["action"], "call Sys.GetInfo");
            assert_eq!(saved["results"][0]["name"], "lamp-000");
            assert_eq!(saved["results"][0]["ok"], true);
            assert_eq!(saved["results"][0]["result"]["uptime"], 100);
            assert_eq!(saved["results"][2]["ok"], false);
            assert_eq!(saved["results"][2]["error"], "503 device offline");
        }
        other => panic!("save expected, got {other:?}"),
    }
    // Dismissed: gone, and the pane closes.
    send(&mut model, key(KeyCode::Char('x')));
    assert!(model.results.sets.is_empty());
    assert_eq!(model.screen(), &Screen::Fleet);
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

// ---------------------------------------------------------------------------------------
// Firmware: rollouts (PROTOCOL §10.5, §10.6) and one-device pushes (§10.2).

use herd_client::RolloutCommand;
use herd_console::tui::rollouts::{FormStage, OtaPhase, PagePane, Reply, Request};
use protocol::firmware::{DeviceState, RolloutState};

fn request(request: Request) -> Command {
    Command::Rollouts(request)
}

/// The fleet, then the rollouts list with the fixture rollouts, then `r1`'s page.
fn on_rollout_page(read_only: bool) -> herd_console::tui::Model {
    let mut model = loaded(20, read_only, (200, 50));
    assert_eq!(
        send(&mut model, key(KeyCode::Char('R'))),
        vec![request(Request::List)]
    );
    send(&mut model, Msg::from(Reply::Listed(Ok(rollouts()))));
    assert_eq!(
        send(&mut model, key(KeyCode::Enter)),
        vec![request(Request::Load {
            id: "r1".into(),
            devices: true
        })]
    );
    send(
        &mut model,
        Msg::from(Reply::Loaded {
            id: "r1".into(),
            result: Ok(rollout("r1", "lights 1.1.0", true)),
        }),
    );
    model
}

#[test]
fn the_rollouts_list_opens_from_the_fleet_and_the_palette() {
    let mut model = loaded(5, false, (80, 24));
    send(&mut model, key(KeyCode::Char(':')));
    chars(&mut model, "rollouts");
    assert_eq!(
        send(&mut model, key(KeyCode::Enter)),
        vec![request(Request::List)]
    );
    assert_eq!(model.stack, vec![Screen::Fleet, Screen::Rollouts]);
    assert!(screen(&model, 80, 24).contains("Loading rollouts"));
    send(
        &mut model,
        Msg::from(Reply::Listed(Err(Failure::new("503 unavailable")))),
    );
    assert!(screen(&model, 80, 24).contains("Cannot list rollouts: 503 unavailable"));
    send(&mut model, Msg::from(Reply::Listed(Ok(rollouts()))));
    let text = screen(&model, 80, 24);
    assert!(text.contains("Fleet › Rollouts"), "{text}");
    assert!(
        text.contains("lights 1.1.0") && text.contains("halted"),
        "{text}"
    );
    send(&mut model, key(KeyCode::Down));
    assert_eq!(
        send(&mut model, key(KeyCode::Enter)),
        vec![request(Request::Load {
            id: "r0".into(),
            devices: true
        })]
    );
    assert_eq!(
        model.stack,
        vec![
            Screen::Fleet,
            Screen::Rollouts,
            Screen::Rollout("r0".into())
        ]
    );
    // The list's summary shows at once, before the devices arrive.
    let text = screen(&model, 80, 24);
    assert!(text.contains("Fleet › Rollouts › porch lights"), "{text}");
    assert!(text.contains("loading devices"), "{text}");
    send(&mut model, key(KeyCode::Esc));
    assert_eq!(model.stack, vec![Screen::Fleet, Screen::Rollouts]);
    assert!(model.rollout_page.is_none());
    // `n` plans a new rollout from the fleet's marks or filter.
    assert_eq!(
        send(&mut model, key(KeyCode::Char('n'))),
        vec![request(Request::Firmware)]
    );
    assert_eq!(
        model.stack,
        vec![Screen::Fleet, Screen::Rollouts, Screen::NewRollout]
    );
}

#[test]
fn rollout_events_show_at_once_and_are_fetched_through_the_client() {
    let mut model = loaded(5, false, (80, 24));
    send(&mut model, key(KeyCode::Char('R')));
    send(&mut model, Msg::from(Reply::Listed(Ok(rollouts()))));
    // The event's body carries the counters and the state (PROTOCOL §10.6).
    let mut body = serde_json::to_value(rollout("r1", "", false).counters).expect("json");
    body["state"] = json!("paused");
    body["wave"] = json!(1);
    body["firmware"] = json!("f");
    notify(
        &mut model,
        NOW + 0.5,
        vec![notification("r1", "rollout.paused", body)],
    );
    assert_eq!(
        model.rollouts.get("r1").map(|r| r.state),
        Some(RolloutState::Paused)
    );
    assert!(screen(&model, 80, 24).contains("paused"));
    // The refetch happens on the clock, not on the event, and only once.
    assert_eq!(
        send(&mut model, Msg::Tick(NOW + 1.5)),
        vec![request(Request::Load {
            id: "r1".into(),
            devices: false
        })]
    );
    assert!(send(&mut model, Msg::Tick(NOW + 1.75)).is_empty());
    // An update of one of its devices names the rollout: fetched again, after the first
    // answer is in.
    notify(
        &mut model,
        NOW + 2.0,
        vec![notification(
            &device(5).id,
            "ota.success",
            json!({"firmware": "f", "version": "1.1.0", "seconds": 12.5, "rollout": "r1"}),
        )],
    );
    assert!(
        send(&mut model, Msg::Tick(NOW + 2.25)).is_empty(),
        "in flight"
    );
    let mut fresh = rollout("r1", "lights 1.1.0", false);
    fresh.state = RolloutState::Paused;
    fresh.counters.succeeded += 1;
    send(
        &mut model,
        Msg::from(Reply::Loaded {
            id: "r1".into(),
            result: Ok(fresh),
        }),
    );
    assert_eq!(
        send(&mut model, Msg::Tick(NOW + 2.5)),
        vec![request(Request::Load {
            id: "r1".into(),
            devices: false
        })]
    );
    // A rollout created elsewhere appears once fetched; the list refreshes by itself.
    notify(
        &mut model,
        NOW + 3.0,
        vec![notification("r9", "rollout.planned", json!({"total": 3}))],
    );
    send(
        &mut model,
        Msg::from(Reply::Loaded {
            id: "r1".into(),
            result: Ok(rollout("r1", "lights 1.1.0", false)),
        }),
    );
    assert_eq!(
        send(&mut model, Msg::Tick(NOW + 4.0)),
        vec![request(Request::Load {
            id: "r9".into(),
            devices: false
        })]
    );
    send(
        &mut model,
        Msg::from(Reply::Loaded {
            id: "r9".into(),
            result: Ok(rollout("r9", "kitchen 1.1.0", false)),
        }),
    );
    assert_eq!(model.rollouts.rollouts[0].id, "r9", "newest first");
    assert_eq!(
        model.rollouts.selected().map(|r| r.id.as_str()),
        Some("r1"),
        "the cursor stays on its rollout"
    );
    assert_eq!(
        send(&mut model, Msg::Tick(NOW + 12.0)),
        vec![request(Request::List)]
    );
    // Away from the list, events change it but fetch nothing.
    send(&mut model, key(KeyCode::Esc));
    notify(
        &mut model,
        NOW + 13.0,
        vec![notification(
            "r1",
            "rollout.resumed",
            json!({"state": "running"}),
        )],
    );
    assert!(send(&mut model, Msg::Tick(NOW + 30.0)).is_empty());
}

#[test]
fn the_page_asks_before_pause_resume_abort_and_retry_naming_the_counts() {
    let mut model = on_rollout_page(false);
    let text = screen(&model, 200, 50);
    assert!(text.contains("Fleet › Rollouts › lights 1.1.0"), "{text}");
    // Only what the state allows is asked; the rest is explained.
    assert!(send(&mut model, key(KeyCode::Char('r'))).is_empty());
    assert!(model.overlay.is_none());
    assert!(screen(&model, 200, 50).contains("cannot resume rollout lights 1.1.0: it is running"));
    send(&mut model, key(KeyCode::Char('A')));
    match &model.overlay {
        Some(Overlay::Confirm { question, .. }) => assert_eq!(
            question,
            "Abort rollout lights 1.1.0: 12 pending devices will be skipped, 2 updating devices will finish?"
        ),
        other => panic!("a confirmation expected, got {other:?}"),
    }
    assert!(screen(&model, 80, 24).contains("12 pending devices will be skipped"));
    assert!(send(&mut model, key(KeyCode::Char('n'))).is_empty());
    assert!(model.overlay.is_none());
    send(&mut model, key(KeyCode::Char('p')));
    match &model.overlay {
        Some(Overlay::Confirm { question, .. }) => assert_eq!(
            question,
            "Pause rollout lights 1.1.0: 12 pending devices will wait, 2 updating devices will finish?"
        ),
        other => panic!("a confirmation expected, got {other:?}"),
    }
    assert_eq!(
        send(&mut model, key(KeyCode::Char('y'))),
        vec![request(Request::Command {
            id: "r1".into(),
            command: RolloutCommand::Pause
        })]
    );
    let mut paused = rollout("r1", "lights 1.1.0", false);
    paused.state = RolloutState::Paused;
    send(
        &mut model,
        Msg::from(Reply::Commanded {
            id: "r1".into(),
            command: RolloutCommand::Pause,
            result: Ok(paused),
        }),
    );
    let text = screen(&model, 200, 50);
    assert!(text.contains("rollout lights 1.1.0 paused"), "{text}");
    assert!(text.contains("● paused"), "{text}");
    assert!(
        !text.contains("loading devices"),
        "an answer without devices keeps the devices known"
    );
    send(&mut model, key(KeyCode::Char('r')));
    assert!(matches!(
        &model.overlay,
        Some(Overlay::Confirm { question, .. })
            if question == "Resume rollout lights 1.1.0: 12 pending devices will be updated, up to 5 at a time?"
    ));
    send(&mut model, key(KeyCode::Esc));
    // A refused command says why.
    send(
        &mut model,
        Msg::from(Reply::Commanded {
            id: "r1".into(),
            command: RolloutCommand::Resume,
            result: Err(Failure {
                status: Some(409),
                message: "409 conflict: cannot resume a rollout that is running".into(),
            }),
        }),
    );
    assert!(screen(&model, 200, 50)
        .contains("cannot resume rollout lights 1.1.0: 409 conflict: cannot resume a rollout"));

    // Retry once it is over: a new rollout over the failed devices, started at once.
    let mut halted = rollout("r1", "lights 1.1.0", true);
    halted.state = RolloutState::Halted;
    halted.reason = "2 of 6 devices failed in wave 2".into();
    send(
        &mut model,
        Msg::from(Reply::Loaded {
            id: "r1".into(),
            result: Ok(halted),
        }),
    );
    assert!(screen(&model, 200, 50).contains("halted: 2 of 6 devices failed in wave 2"));
    // A halted rollout may go on, after a question that says what failed.
    send(&mut model, key(KeyCode::Char('r')));
    assert!(matches!(
        &model.overlay,
        Some(Overlay::Confirm { question, .. })
            if question == "Resume halted rollout lights 1.1.0 despite 2 failed devices: 12 pending devices will be updated, up to 5 at a time; a new failure in this wave halts it again?"
    ));
    send(&mut model, key(KeyCode::Char('n')));
    send(&mut model, key(KeyCode::Char('R')));
    assert!(matches!(
        &model.overlay,
        Some(Overlay::Confirm { question, .. })
            if question == "Retry rollout lights 1.1.0: a new rollout over 2 failed devices and 0 skipped devices starts now?"
    ));
    assert_eq!(
        send(&mut model, key(KeyCode::Char('y'))),
        vec![request(Request::Command {
            id: "r1".into(),
            command: RolloutCommand::Retry
        })]
    );
    let mut retry = rollout("r2", "retry of lights 1.1.0", false);
    retry.state = RolloutState::Planned;
    let commands = send(
        &mut model,
        Msg::from(Reply::Commanded {
            id: "r1".into(),
            command: RolloutCommand::Retry,
            result: Ok(retry),
        }),
    );
    assert_eq!(
        commands,
        vec![
            request(Request::Load {
                id: "r2".into(),
                devices: true
            }),
            request(Request::Command {
                id: "r2".into(),
                command: RolloutCommand::Start
            })
        ]
    );
    assert_eq!(
        model.stack,
        vec![
            Screen::Fleet,
            Screen::Rollouts,
            Screen::Rollout("r2".into())
        ]
    );
}

#[test]
fn the_page_follows_events_and_opens_failed_devices() {
    let mut model = on_rollout_page(false);
    // Devices by state, with the fleet's names; the cursor starts on a device.
    let text = screen(&model, 200, 50);
    for expected in [
        "sending 1",
        "verifying 1",
        "pending 12",
        "reverted 1",
        "lamp-004",
        "crashed on first boot",
        "failures (2)",
    ] {
        assert!(text.contains(expected), "{expected}: {text}");
    }
    assert_eq!(
        model
            .rollout_page
            .as_ref()
            .and_then(|p| p.selected_device())
            .map(|d| d.state),
        Some(DeviceState::Sending)
    );
    // The cursor steps over the headings.
    let selected = |model: &herd_console::tui::Model| {
        model
            .rollout_page
            .as_ref()
            .and_then(|p| p.selected_device())
            .map(|d| d.id.clone())
    };
    send(&mut model, key(KeyCode::Up));
    assert_eq!(
        selected(&model),
        Some(device(5).id),
        "nothing above the first"
    );
    send(&mut model, key(KeyCode::Down));
    assert_eq!(
        selected(&model),
        Some(device(6).id),
        "past the verifying heading"
    );
    send(&mut model, key(KeyCode::Down));
    assert_eq!(selected(&model), Some(device(8).id), "the first pending");
    send(&mut model, key(KeyCode::Up));
    assert_eq!(selected(&model), Some(device(6).id));
    send(&mut model, key(KeyCode::Char('G')));
    send(&mut model, key(KeyCode::Char('g')));
    assert_eq!(selected(&model), Some(device(5).id));
    // Progress of a device of the rollout shows at once.
    notify(
        &mut model,
        NOW + 1.0,
        vec![notification(
            &device(5).id,
            "ota.progress",
            json!({"firmware": rollout("r1", "", false).firmware, "percent": 40}),
        )],
    );
    assert!(screen(&model, 200, 50).contains("40%"));
    // A wave event refreshes the page with its devices, on the next tick.
    notify(
        &mut model,
        NOW + 1.2,
        vec![notification(
            "r1",
            "rollout.wave",
            json!({"wave": 2, "devices": 12}),
        )],
    );
    assert_eq!(
        send(&mut model, Msg::Tick(NOW + 1.5)),
        vec![request(Request::Load {
            id: "r1".into(),
            devices: true
        })]
    );
    // The failures: latest first; Enter opens that device, Esc comes back.
    send(&mut model, key(KeyCode::Tab));
    let page = model.rollout_page.as_ref().expect("page");
    assert_eq!(page.pane, PagePane::Failures);
    assert_eq!(
        page.selected_device().map(|d| d.id.clone()),
        Some(device(7).id)
    );
    send(&mut model, key(KeyCode::Down));
    let id = device(4).id;
    assert_eq!(
        send(&mut model, key(KeyCode::Enter)),
        vec![Command::LoadDevice(id.clone())]
    );
    assert_eq!(
        model.stack,
        vec![
            Screen::Fleet,
            Screen::Rollouts,
            Screen::Rollout("r1".into()),
            Screen::Device(id)
        ]
    );
    assert!(screen(&model, 200, 50).contains("Fleet › Rollouts › lights 1.1.0 › lamp-004"));
    send(&mut model, key(KeyCode::Esc));
    assert_eq!(model.screen(), &Screen::Rollout("r1".into()));
    assert!(model.rollout_page.is_some(), "the page is kept underneath");
    // A rollout that is gone says so.
    send(
        &mut model,
        Msg::from(Reply::Loaded {
            id: "r1".into(),
            result: Err(Failure {
                status: Some(404),
                message: "404 not found: rollout r1 not found".into(),
            }),
        }),
    );
    assert!(model.rollouts.get("r1").is_none());
    assert!(screen(&model, 200, 50).contains("rollout r1 not found"));
}

#[test]
fn read_only_refuses_rollout_and_push_writes() {
    let mut model = on_rollout_page(true);
    for (c, what) in [
        ('p', "pause rollout lights 1.1.0"),
        ('A', "abort rollout lights 1.1.0"),
    ] {
        assert!(send(&mut model, key(KeyCode::Char(c))).is_empty());
        assert!(model.overlay.is_none(), "refused outright, no confirmation");
        assert!(
            screen(&model, 200, 50).contains(&format!("read-only profile: refusing to {what}")),
            "{what}"
        );
    }
    send(&mut model, key(KeyCode::Char('n')));
    send(&mut model, key(KeyCode::Esc));
    assert!(send(&mut model, key(KeyCode::Char('n'))).is_empty());
    assert!(screen(&model, 200, 50).contains("refusing to create a rollout"));
    assert!(model.new_rollout.is_none());
    send(&mut model, key(KeyCode::Esc));
    assert!(send(&mut model, key(KeyCode::Char('U'))).is_empty());
    assert_eq!(model.screen(), &Screen::Fleet);
    let id = open_device_5(&mut model);
    assert!(send(&mut model, key(KeyCode::Char('u'))).is_empty());
    assert!(model.device.as_ref().is_some_and(|v| v.push.is_none()));
    assert!(screen(&model, 200, 50).contains("refusing to push firmware"));
    assert_eq!(model.screen(), &Screen::Device(id));
}

fn plan_of(spec_ids: usize) -> herd_client::RolloutObject {
    let mut plan = rollout("", "smart-light 1.1.0", true);
    plan.dry_run = true;
    plan.state = RolloutState::Planned;
    plan.notes = vec![
        "2 selected devices already run 1.1.0 and are left out".into(),
        "1 of 3 devices are offline now".into(),
    ];
    if let Some(devices) = plan.devices.as_mut() {
        devices.truncate(spec_ids);
        for device in devices.iter_mut() {
            device.state = DeviceState::Pending;
        }
    }
    plan
}

#[test]
fn a_rollout_is_planned_from_the_marks_shown_as_a_dry_run_then_created_and_started() {
    let mut model = loaded(10, false, (80, 24));
    for _ in 0..3 {
        send(&mut model, key(KeyCode::Char(' ')));
    }
    assert_eq!(
        send(&mut model, key(KeyCode::Char('U'))),
        vec![request(Request::Firmware)]
    );
    assert_eq!(model.screen(), &Screen::NewRollout);
    let text = screen(&model, 80, 24);
    assert!(
        text.contains("3 marked devices: lamp-000, lamp-001, lamp-002"),
        "{text}"
    );
    assert!(text.contains("loading the firmware list"), "{text}");
    // Enter before the list came: said, not sent.
    assert!(send(&mut model, key(KeyCode::Enter)).is_empty());
    assert!(screen(&model, 80, 24).contains("still loading"));
    send(
        &mut model,
        Msg::from(Reply::Firmware(Ok(vec![
            firmware(1, 7200.0),
            firmware(2, 60.0),
        ]))),
    );
    // Newest first: 1.2.0 is chosen; take 1.1.0.
    send(&mut model, key(KeyCode::Down));
    assert_eq!(
        model
            .new_rollout
            .as_ref()
            .and_then(|f| f.chosen_firmware())
            .map(|f| f.version.as_str()),
        Some("1.1.0")
    );
    // Waves: a typo is caught here.
    send(&mut model, key(KeyCode::Tab)); // name
    send(&mut model, key(KeyCode::Tab)); // waves
    send(&mut model, ctrl('u'));
    chars(&mut model, "50,fifty");
    assert!(send(&mut model, key(KeyCode::Enter)).is_empty());
    assert!(screen(&model, 80, 24).contains("\"fifty\" is not a percent"));
    for _ in 0..5 {
        send(&mut model, key(KeyCode::Backspace));
    }
    chars(&mut model, "50");
    send(&mut model, key(KeyCode::Tab)); // soak
    send(&mut model, ctrl('u'));
    chars(&mut model, "2m");
    send(&mut model, key(KeyCode::Down)); // parallel
    send(&mut model, key(KeyCode::Down)); // halt
    send(&mut model, ctrl('u'));
    send(&mut model, key(KeyCode::Down)); // commit
    send(&mut model, key(KeyCode::Right));
    send(&mut model, key(KeyCode::Tab)); // delivery
    send(&mut model, key(KeyCode::Char(' ')));
    let commands = send(&mut model, key(KeyCode::Enter));
    let [Command::Rollouts(Request::Plan(spec))] = commands.as_slice() else {
        panic!("a dry run expected, got {commands:?}");
    };
    let ids: Vec<String> = (0..3).map(|i| device(i).id).collect();
    assert_eq!(
        serde_json::to_value(spec).expect("json"),
        json!({
            "firmware": firmware(1, 0.0).id,
            "select": {"ids": ids},
            "waves": [{"percent": 50.0, "soak_s": 120}, {"percent": 50.0, "soak_s": 120}],
            "max_parallel": 50,
            "halt_when": {},
            "commit": "after_soak",
            "offline": {"wait_s": 300, "then": "skip"},
            "delivery": "pull",
            "commit_timeout_s": 300,
            "dry_run": true,
        })
    );
    let spec = spec.clone();
    assert!(screen(&model, 80, 24).contains("asking the server for the plan"));
    // The server's refusal lands in the form.
    send(
        &mut model,
        Msg::from(Reply::Planned(Err(Failure {
            status: Some(400),
            message: "400 bad request: the rollout selects no device to update: 3 selected devices already run 1.1.0 and are left out".into(),
        }))),
    );
    let text = screen(&model, 80, 24);
    assert!(
        text.contains("the rollout selects no device to update"),
        "{text}"
    );
    // Again, and this time the plan comes.
    assert_eq!(
        send(&mut model, key(KeyCode::Enter)),
        vec![request(Request::Plan(spec.clone()))]
    );
    send(&mut model, Msg::from(Reply::Planned(Ok(plan_of(3)))));
    let text = screen(&model, 80, 24);
    assert!(text.contains("New rollout › plan"), "{text}");
    assert!(text.contains("already run 1.1.0"), "{text}");
    assert!(text.contains("lamp-000, lamp-001"), "{text}");
    // Esc goes back to the form, as it was.
    send(&mut model, key(KeyCode::Esc));
    assert!(matches!(
        model.new_rollout.as_ref().map(|f| &f.stage),
        Some(FormStage::Editing)
    ));
    send(&mut model, key(KeyCode::Enter));
    send(&mut model, Msg::from(Reply::Planned(Ok(plan_of(3)))));
    // Waiting for the creation can be given up; the rollout then stays planned, listed.
    send(&mut model, key(KeyCode::Enter));
    send(&mut model, key(KeyCode::Esc));
    let mut late = rollout("r4", "smart-light 1.1.0", false);
    late.state = RolloutState::Planned;
    assert!(send(&mut model, Msg::from(Reply::Created(Ok(late)))).is_empty());
    assert!(screen(&model, 80, 24).contains("was created and waits, planned"));
    assert!(model.rollouts.get("r4").is_some());
    send(&mut model, key(KeyCode::Enter));
    send(&mut model, Msg::from(Reply::Planned(Ok(plan_of(3)))));
    let mut create = spec.clone();
    create.dry_run = false;
    assert_eq!(
        send(&mut model, key(KeyCode::Enter)),
        vec![request(Request::Create(create))]
    );
    assert!(screen(&model, 80, 24).contains("creating the rollout"));
    let mut created = rollout("r5", "smart-light 1.1.0", false);
    created.state = RolloutState::Planned;
    let commands = send(&mut model, Msg::from(Reply::Created(Ok(created))));
    assert_eq!(
        commands,
        vec![
            request(Request::Load {
                id: "r5".into(),
                devices: true
            }),
            request(Request::Command {
                id: "r5".into(),
                command: RolloutCommand::Start
            })
        ]
    );
    assert_eq!(
        model.stack,
        vec![
            Screen::Fleet,
            Screen::Rollouts,
            Screen::Rollout("r5".into())
        ]
    );
    assert!(model.new_rollout.is_none());
    // A start that fails leaves it planned, and says so; `s` starts it after asking.
    send(
        &mut model,
        Msg::from(Reply::Commanded {
            id: "r5".into(),
            command: RolloutCommand::Start,
            result: Err(Failure::new("503 unavailable")),
        }),
    );
    assert!(screen(&model, 80, 24).contains("cannot start rollout smart-light 1.1.0: 503"));
    send(&mut model, key(KeyCode::Char('s')));
    assert!(matches!(
        &model.overlay,
        Some(Overlay::Confirm { question, .. })
            if question == "Start rollout smart-light 1.1.0: 20 devices in 3 waves, up to 5 at a time?"
    ));
}

#[test]
fn without_marks_the_rollout_takes_the_filter() {
    let mut model = loaded(10, false, (80, 24));
    send(&mut model, key(KeyCode::Char('/')));
    chars(&mut model, "name:lamp-00* state:online");
    send(&mut model, key(KeyCode::Enter));
    send(&mut model, key(KeyCode::Char('U')));
    let form = model.new_rollout.as_ref().expect("form");
    assert_eq!(
        form.select.query.as_deref(),
        Some("name:lamp-00* state:online")
    );
    assert_eq!(form.select.ids, None);
    assert!(screen(&model, 80, 24)
        .contains("the filter name:lamp-00* state:online (6 devices shown now)"));
    // Esc leaves the form; a filter that matches nothing plans nothing.
    send(&mut model, key(KeyCode::Esc));
    assert_eq!(model.screen(), &Screen::Fleet);
    assert!(model.new_rollout.is_none());
    send(&mut model, key(KeyCode::Char('/')));
    chars(&mut model, "zzz");
    send(&mut model, key(KeyCode::Enter));
    assert!(send(&mut model, key(KeyCode::Char('U'))).is_empty());
    assert!(screen(&model, 80, 24).contains("no device matches the filter"));
}

#[test]
fn u_pushes_an_image_to_one_device_with_live_progress() {
    let mut model = loaded(10, false, (200, 50));
    // Offline devices cannot take a push.
    send(&mut model, key(KeyCode::Char(':')));
    chars(&mut model, &format!("device {}", device(3).id));
    send(&mut model, key(KeyCode::Enter));
    send(
        &mut model,
        Msg::DeviceLoaded {
            id: device(3).id,
            result: Ok(device(3)),
        },
    );
    assert!(send(&mut model, key(KeyCode::Char('u'))).is_empty());
    assert!(screen(&model, 200, 50).contains("the device is offline"));
    send(&mut model, key(KeyCode::Esc));

    let id = open_device_5(&mut model);
    assert_eq!(
        send(&mut model, key(KeyCode::Char('u'))),
        vec![request(Request::Firmware)]
    );
    send(
        &mut model,
        Msg::from(Reply::Firmware(Ok(vec![
            firmware(1, 7200.0),
            firmware(2, 60.0),
        ]))),
    );
    let text = screen(&model, 200, 50);
    assert!(text.contains("push firmware to lamp-005"), "{text}");
    assert!(
        text.contains("1.2.0") && text.contains("(running)"),
        "{text}"
    );
    // The device runs 1.2.0, the newest: the next one down is chosen. Take 1.2.0 anyway.
    let chosen = |model: &herd_console::tui::Model| {
        model
            .device
            .as_ref()
            .and_then(|v| v.push.as_ref())
            .and_then(|d| d.chosen())
            .map(|f| f.version.clone())
    };
    assert_eq!(chosen(&model).as_deref(), Some("1.1.0"));
    send(&mut model, key(KeyCode::Up));
    assert_eq!(chosen(&model).as_deref(), Some("1.2.0"));
    assert!(send(&mut model, key(KeyCode::Enter)).is_empty());
    match &model.overlay {
        Some(Overlay::Confirm { question, .. }) => assert_eq!(
            question,
            &format!("Push 1.2.0 (smart-light for esp32c3, 898.0 KiB) to lamp-005 ({id})? It restarts into the new image.")
        ),
        other => panic!("a confirmation expected, got {other:?}"),
    }
    // No: back to the picker.
    send(&mut model, key(KeyCode::Char('n')));
    assert!(model.device.as_ref().is_some_and(|v| v.push.is_some()));
    send(&mut model, key(KeyCode::Enter));
    let fw = firmware(2, 0.0).id;
    assert_eq!(
        send(&mut model, key(KeyCode::Char('y'))),
        vec![request(Request::Push {
            device: id.clone(),
            firmware: fw.clone()
        })]
    );
    assert!(model.device.as_ref().is_some_and(|v| v.push.is_none()));
    assert_eq!(
        model.ota.get(&id).map(|j| j.phase.clone()),
        Some(OtaPhase::Requested)
    );
    assert!(screen(&model, 200, 50).contains("update to 1.2.0"));
    notify(
        &mut model,
        NOW + 1.0,
        vec![
            notification(
                &id,
                "ota.begin",
                json!({"firmware": fw, "version": "1.2.0", "size": 918_528}),
            ),
            notification(&id, "ota.progress", json!({"firmware": fw, "percent": 60})),
        ],
    );
    let text = screen(&model, 200, 50);
    assert!(text.contains(" 60% sending"), "{text}");
    send(
        &mut model,
        Msg::from(Reply::Pushed {
            device: id.clone(),
            firmware: fw.clone(),
            result: Ok(()),
        }),
    );
    assert!(screen(&model, 200, 50).contains("the device restarts into it"));
    notify(
        &mut model,
        NOW + 9.0,
        vec![notification(
            &id,
            "ota.success",
            json!({"firmware": fw, "version": "1.2.0", "seconds": 8.25}),
        )],
    );
    assert!(screen(&model, 200, 50).contains("✓ updated to 1.2.0 in 8.2 s"));
    // The table believes the server's word on what the device runs now.
    notify(
        &mut model,
        NOW + 9.5,
        vec![notification(
            &device(4).id,
            "ota.success",
            json!({"firmware": fw, "version": "1.9.0", "seconds": 3.0}),
        )],
    );
    assert_eq!(
        model
            .fleet
            .get(&device(4).id)
            .map(|r| r.fw_version.to_string()),
        Some("1.9.0".into())
    );
    // A revert is told as such, with what the device runs.
    notify(
        &mut model,
        NOW + 20.0,
        vec![
            notification(
                &id,
                "ota.begin",
                json!({"firmware": "other", "version": "2.0.0"}),
            ),
            notification(
                &id,
                "ota.revert",
                json!({"firmware": "other", "running_version": "1.2.0", "message": "no commit in time"}),
            ),
        ],
    );
    assert!(screen(&model, 200, 50)
        .contains("↺ update to 2.0.0 reverted; running 1.2.0: no commit in time"));
    // A refused push is an error in the view and the status line.
    send(
        &mut model,
        Msg::from(Reply::Pushed {
            device: id.clone(),
            firmware: "third".into(),
            result: Err(Failure {
                status: Some(409),
                message: "409 conflict: an update is already in progress".into(),
            }),
        }),
    );
    assert!(screen(&model, 200, 50).contains("push to lamp-005 failed: 409 conflict"));
}

#[test]
fn devices_are_named_by_name_or_a_unique_start_wherever_an_id_was_taken() {
    let mut model = loaded(12, false, (80, 24));
    // `:device` takes the name, as the table shows it.
    send(&mut model, key(KeyCode::Char(':')));
    chars(&mut model, "device lamp-005");
    assert_eq!(
        send(&mut model, key(KeyCode::Enter)),
        vec![Command::LoadDevice(device(5).id)]
    );
    // A unique start of a name will do; an ambiguous one lists the candidates.
    send(&mut model, key(KeyCode::Esc));
    send(&mut model, key(KeyCode::Char(':')));
    chars(&mut model, "device lamp-01");
    assert!(send(&mut model, key(KeyCode::Enter)).is_empty());
    match &model.overlay {
        Some(Overlay::Palette {
            error: Some(error), ..
        }) => {
            assert!(error.contains("names several devices"), "{error}");
            assert!(error.contains("lamp-010"), "{error}");
        }
        other => panic!("an ambiguity error expected, got {other:?}"),
    }
    send(&mut model, key(KeyCode::Esc));
    send(&mut model, key(KeyCode::Char(':')));
    chars(&mut model, "device attic");
    send(&mut model, key(KeyCode::Enter));
    assert!(matches!(
        &model.overlay,
        Some(Overlay::Palette { error: Some(e), .. }) if e.contains("no device has the id or name")
    ));
    send(&mut model, key(KeyCode::Esc));

    // The tail's `d` filter takes names too, and its title says the name.
    send(&mut model, key(KeyCode::Char('t')));
    for i in 0..12 {
        notify(
            &mut model,
            NOW + i as f64,
            vec![notification(&device(i).id, "online", json!(null))],
        );
    }
    send(&mut model, key(KeyCode::Char('d')));
    chars(&mut model, "lamp-007");
    send(&mut model, key(KeyCode::Enter));
    assert_eq!(
        model.tail.filter.device.as_deref(),
        Some(device(7).id.as_str())
    );
    let text = screen(&model, 80, 24);
    assert!(text.contains("device=lamp-007"), "{text}");
    assert!(text.contains("lamp-007 online"), "{text}");
    assert!(!text.contains("lamp-006"), "{text}");

    // Saved tails carry the device's name beside its id.
    send(&mut model, key(KeyCode::Char(':')));
    chars(&mut model, "save out.ndjson");
    match send(&mut model, key(KeyCode::Enter)).as_slice() {
        [Command::Save { lines, .. }] => {
            let line: serde_json::Value = serde_json::from_str(&lines[0]).expect("json");
            assert_eq!(line["id"], device(7).id.as_str());
            assert_eq!(line["device_name"], "lamp-007");
            assert_eq!(line["name"], "online");
        }
        other => panic!("save expected, got {other:?}"),
    }
}

#[test]
fn a_lost_server_marks_rows_and_header_stale_with_the_age() {
    let mut model = loaded(6, false, (80, 24));
    let text = screen(&model, 80, 24);
    assert!(text.contains("4 online 2 offline"), "{text}");
    assert!(text.contains(" now"), "{text}");
    assert!(!text.contains("STALE"), "{text}");
    send(
        &mut model,
        Msg::Stream(Connection::Lost {
            reason: "Connection refused".into(),
            retry_at: NOW + 2.0,
        }),
    );
    send(&mut model, Msg::Tick(NOW + 42.0));
    let text = screen(&model, 80, 24);
    assert!(text.contains("STALE 42s"), "{text}");
    assert!(text.contains("online?"), "{text}");
    assert!(text.contains("stale 42s"), "{text}");
    assert!(
        !text.contains(" now"),
        "no row claims to be seen now: {text}"
    );
    // Still stale while reconnecting, and until the table is listed again.
    send(
        &mut model,
        Msg::Stream(Connection::Connecting { attempt: 3 }),
    );
    send(&mut model, Msg::Stream(Connection::Connected));
    assert_eq!(model.stale_since, Some(NOW));
    send(
        &mut model,
        Msg::DevicesLoaded(Ok((0..6).map(row).collect())),
    );
    assert_eq!(model.stale_since, None);
    let text = screen(&model, 80, 24);
    assert!(
        !text.contains("STALE") && !text.contains("online?"),
        "{text}"
    );
}

#[test]
fn the_tail_starts_with_the_logs_history_and_shows_updates_as_changes() {
    let mut model = loaded(3, false, (100, 24));
    let id = device(1).id;
    let mut object = serde_json::to_value(device(1)).expect("json");
    let history = vec![
        (NOW - 100.0, notification(&id, "offline", json!(null))),
        (NOW - 90.0, notification(&id, "updated", object.clone())),
    ];
    notify(
        &mut model,
        NOW,
        vec![notification(&id, "online", json!(null))],
    );
    send(&mut model, Msg::History(Ok(history)));
    object["shadow"]["state"]["reported"]["on"] = json!(true);
    object["shadow"]["version"] = json!(5);
    notify(
        &mut model,
        NOW + 1.0,
        vec![notification(&id, "updated", object)],
    );
    send(&mut model, key(KeyCode::Char('t')));
    let text = screen(&model, 100, 24);
    assert!(text.contains("2 from the log"), "{text}");
    assert!(text.contains("above: the server's log"), "{text}");
    assert!(text.contains("first copy"), "{text}");
    // The live `updated` is compared with the one from the log.
    assert!(
        text.contains("reported.on false→true · version 4→5"),
        "{text}"
    );
    // `-name:updated` hides them.
    send(&mut model, key(KeyCode::Char('/')));
    send(&mut model, ctrl('u'));
    chars(&mut model, "-name:updated device:lamp-001");
    send(&mut model, key(KeyCode::Enter));
    let text = screen(&model, 100, 24);
    assert!(text.contains("-name=updated"), "{text}");
    assert!(!text.contains("false→true"), "{text}");
    assert!(text.contains(" offline"), "{text}");
    // The `n` prompt says the same with a leading minus.
    send(&mut model, key(KeyCode::Char('n')));
    assert!(
        matches!(&model.overlay, Some(Overlay::Prompt { input, .. }) if input.text() == "-updated")
    );
}

#[test]
fn at_80x24_help_scrolls_and_sort_keys_are_the_columns_on_screen() {
    let mut model = loaded(12, false, (80, 24));
    send(&mut model, key(KeyCode::Char('?')));
    let text = screen(&model, 80, 24);
    assert!(text.contains("help · 1-19 of"), "{text}");
    assert!(!text.contains(":quit"), "{text}");
    send(&mut model, key(KeyCode::Char('G')));
    let text = screen(&model, 80, 24);
    assert!(text.contains(":quit"), "the end shows: {text}");
    send(&mut model, key(KeyCode::PageUp));
    assert!(matches!(model.overlay, Some(Overlay::Help { .. })));
    send(&mut model, key(KeyCode::Esc));
    assert!(model.overlay.is_none());

    // Six columns fit at 80: STATE NAME ID FIRMWARE LAST SEEN LIGHT.
    send(&mut model, key(KeyCode::Char('3')));
    assert_eq!(model.fleet.sort().column, herd_console::fleet::Column::Id);
    send(&mut model, key(KeyCode::Char('7')));
    let text = screen(&model, 80, 24);
    assert!(text.contains("6 columns fit on screen"), "{text}");
    assert_eq!(model.fleet.sort().column, herd_console::fleet::Column::Id);
    // A sort by a column off screen is still shown.
    send(&mut model, key(KeyCode::Char(':')));
    chars(&mut model, "sort arch desc");
    send(&mut model, key(KeyCode::Enter));
    let text = screen(&model, 80, 24);
    assert!(text.contains("sorted by ARCH▼"), "{text}");
}

#[test]
fn at_80x24_the_confirm_box_shows_what_how_many_and_the_keys() {
    let mut model = loaded(40, false, (80, 24));
    send(&mut model, key(KeyCode::Char('*')));
    send(&mut model, key(KeyCode::Char(':')));
    chars(
        &mut model,
        r#"set {"on": true, "brightness": 80, "colour": "warm white", "schedule": {"from": "18:00", "to": "23:30"}}"#,
    );
    send(&mut model, key(KeyCode::Enter));
    let text = screen(&model, 80, 24);
    assert!(text.contains("on 40 devices?"), "{text}");
    assert!(text.contains("y yes   n no"), "{text}");
    assert!(text.contains("34 more"), "{text}");
}

#[test]
fn device_panes_and_rpc_results_scroll_and_methods_jump_as_typed() {
    let mut model = loaded(10, false, (80, 24));
    let id = open_device_5(&mut model);
    let mut object = device(5);
    let reported: serde_json::Map<String, serde_json::Value> =
        (0..30).map(|i| (format!("key{i:02}"), json!(i))).collect();
    object.shadow["state"]["reported"] = serde_json::Value::Object(reported);
    send(
        &mut model,
        Msg::DeviceLoaded {
            id: id.clone(),
            result: Ok(object),
        },
    );
    let text = screen(&model, 80, 24);
    assert!(text.contains("key00"), "{text}");
    // Tab to the reported pane, then scroll it.
    send(&mut model, key(KeyCode::Tab));
    send(&mut model, key(KeyCode::Tab));
    for _ in 0..5 {
        send(&mut model, key(KeyCode::Char('j')));
    }
    let text = screen(&model, 80, 24);
    assert!(!text.contains("key00"), "{text}");
    assert!(text.contains("key05"), "{text}");
    assert!(text.contains("6-"), "the pane says where it is: {text}");

    send(&mut model, key(KeyCode::Char('c')));
    send(
        &mut model,
        Msg::RpcListed {
            id: id.clone(),
            result: Ok(vec![
                "Config.Get".into(),
                "Echo".into(),
                "Sys.GetInfo".into(),
                "Sys.Reboot".into(),
            ]),
        },
    );
    chars(&mut model, "sys.r");
    let dialog = model
        .device
        .as_ref()
        .and_then(|v| v.rpc.as_ref())
        .expect("dialog");
    assert_eq!(dialog.selected_method(), Some("Sys.Reboot"));
    // After a pause, typing starts anew.
    send(&mut model, Msg::Tick(NOW + 5.0));
    chars(&mut model, "ec");
    let dialog = model
        .device
        .as_ref()
        .and_then(|v| v.rpc.as_ref())
        .expect("dialog");
    assert_eq!(dialog.selected_method(), Some("Echo"));
    send(&mut model, key(KeyCode::Enter));
    let long: serde_json::Map<String, serde_json::Value> = (0..60)
        .map(|i| (format!("field{i:02}"), json!(i)))
        .collect();
    send(
        &mut model,
        Msg::RpcDone {
            id: id.clone(),
            method: "Echo".into(),
            result: Ok(serde_json::Value::Object(long)),
        },
    );
    let text = screen(&model, 80, 24);
    assert!(text.contains("\"field00\""), "{text}");
    send(&mut model, key(KeyCode::PageDown));
    let text = screen(&model, 80, 24);
    assert!(!text.contains("\"field00\""), "{text}");
    assert!(text.contains("PgUp PgDn"), "{text}");
    // The call is kept in the results pane too.
    assert_eq!(model.results.sets.len(), 1);
}

#[test]
fn delete_and_rename_ask_and_report_per_device() {
    let mut model = loaded(10, false, (80, 24));
    send(&mut model, key(KeyCode::Char(' ')));
    send(&mut model, key(KeyCode::Char(' ')));
    send(&mut model, ctrl('d'));
    let text = screen(&model, 80, 24);
    assert!(
        text.contains("delete on 2 devices? (lamp-000, lamp-001)"),
        "{text}"
    );
    match send(&mut model, key(KeyCode::Char('y'))).as_slice() {
        [Command::Bulk { ids, action, .. }] => {
            assert_eq!(ids, &vec![device(0).id, device(1).id]);
            assert_eq!(action, &BulkAction::Delete);
        }
        other => panic!("a bulk delete expected, got {other:?}"),
    }
    send(&mut model, key(KeyCode::Esc));
    send(&mut model, key(KeyCode::Esc)); // unmark
    send(&mut model, key(KeyCode::Char(':')));
    chars(&mut model, "rename porch light");
    send(&mut model, key(KeyCode::Enter));
    assert!(screen(&model, 80, 24).contains("rename lamp-002 to porch light?"));
    match send(&mut model, key(KeyCode::Char('y'))).as_slice() {
        [Command::Bulk { ids, action, .. }] => {
            assert_eq!(ids, &vec![device(2).id]);
            assert_eq!(action, &BulkAction::Rename("porch light".into()));
        }
        other => panic!("a rename expected, got {other:?}"),
    }
    // Read-only: refused.
    let mut model = loaded(10, true, (80, 24));
    send(&mut model, ctrl('d'));
    assert!(model.overlay.is_none());
    assert!(screen(&model, 80, 24).contains("read-only"));
}

#[test]
fn esc_from_a_devices_tail_goes_back_to_the_device() {
    let mut model = loaded(10, false, (80, 24));
    let id = open_device_5(&mut model);
    send(&mut model, key(KeyCode::Char('t')));
    assert_eq!(model.screen(), &Screen::Notifications);
    assert_eq!(model.tail.filter.device.as_deref(), Some(id.as_str()));
    send(&mut model, key(KeyCode::Esc));
    assert_eq!(model.screen(), &Screen::Device(id));
    assert!(
        model.tail.filter.is_empty(),
        "the tail's own filter is back"
    );
    send(&mut model, key(KeyCode::Esc));
    assert_eq!(model.screen(), &Screen::Fleet);
}

// The bench view: ports, the new light's settings, a flash, then the new device's page.

use herd_console::bench::provision::{Event, Provisioned};
use herd_console::bench::{Chip, Port};
use herd_console::tui::bench::{Msg as BenchMsg, Task};

fn bench_ports() -> Vec<Port> {
    vec![
        Port {
            name: "/dev/ttyACM0".into(),
            kind: "usb 303a:1001 Espressif USB JTAG/serial debug unit".into(),
            likely_board: true,
        },
        Port {
            name: "/dev/ttyS0".into(),
            kind: "pci".into(),
            likely_board: false,
        },
    ]
}

fn open_bench(model: &mut herd_console::tui::Model) {
    send(model, key(KeyCode::Char(':')));
    chars(model, "bench");
    let commands = send(model, key(KeyCode::Enter));
    assert!(
        matches!(commands.as_slice(), [Command::Bench(Task::ListPorts)]),
        "{commands:?}"
    );
    assert_eq!(*model.screen(), Screen::Bench);
    send(model, Msg::Bench(BenchMsg::Ports(Ok(bench_ports()))));
}

#[test]
fn the_bench_flashes_the_chosen_port_and_opens_the_new_light() {
    let mut model = loaded(3, false, (80, 24));
    open_bench(&mut model);
    // Flashing needs a name first: the name field opens.
    assert!(send(&mut model, key(KeyCode::Char('f'))).is_empty());
    chars(&mut model, "porch");
    send(&mut model, key(KeyCode::Enter));
    send(&mut model, key(KeyCode::Char('w')));
    chars(&mut model, "home");
    send(&mut model, key(KeyCode::Tab));
    send(&mut model, key(KeyCode::Char('p')));
    chars(&mut model, "secret");
    send(&mut model, key(KeyCode::Enter));
    send(&mut model, key(KeyCode::Char('i')));
    chars(&mut model, "/srv/light/herd-light");
    send(&mut model, key(KeyCode::Enter));
    // Typed keys went to the fields, not to the view's own keys ('p', 'f', 'r'...).
    assert_eq!(model.bench.name, "porch");
    assert_eq!(model.bench.ssid, "home");
    assert_eq!(model.bench.pass, "secret");
    let commands = send(&mut model, key(KeyCode::Char('f')));
    let [Command::Bench(Task::Flash(request))] = commands.as_slice() else {
        panic!("a flash: {commands:?}")
    };
    assert_eq!(request.port.port, "/dev/ttyACM0");
    assert_eq!(request.name, "porch");
    assert_eq!(request.wifi, Some(("home".into(), "secret".into())));
    assert_eq!(
        request.image.as_deref(),
        Some(std::path::Path::new("/srv/light/herd-light"))
    );
    assert!(model.bench.running);
    // A second flash does not start while one runs.
    assert!(send(&mut model, key(KeyCode::Char('f'))).is_empty());

    send(
        &mut model,
        Msg::Bench(BenchMsg::Progress(Event::Connected(Chip::Esp32c3))),
    );
    send(
        &mut model,
        Msg::Bench(BenchMsg::Progress(Event::Writing {
            segment: "ota_0".into(),
            done: 300,
            total: 1000,
        })),
    );
    assert_eq!(model.bench.progress, (300, 1000));
    assert_eq!(model.bench.step, "writing ota_0");
    let commands = send(
        &mut model,
        Msg::Bench(BenchMsg::Done(Ok(Provisioned {
            id: "0123456789abcdef01234567".into(),
            name: "porch".into(),
            port: "/dev/ttyACM0".into(),
            chip: "esp32c3".into(),
            app_version: "1.0.0".into(),
            app_sha256: "ab".repeat(32),
            online: true,
            fw_version: Some("1.0.0".into()),
            fw_id: Some("ab".repeat(32)),
        }))),
    );
    assert!(!model.bench.running);
    assert_eq!(
        *model.screen(),
        Screen::Device("0123456789abcdef01234567".into())
    );
    assert!(
        matches!(commands.as_slice(), [Command::LoadDevice(id)] if id == "0123456789abcdef01234567")
    );
    // Back on the bench, the outcome stays.
    send(&mut model, key(KeyCode::Esc));
    assert_eq!(*model.screen(), Screen::Bench);
    assert!(matches!(model.bench.outcome, Some(Ok(_))));
}

#[test]
fn a_read_only_profile_does_not_flash_and_a_failure_is_shown() {
    let mut model = loaded(3, true, (80, 24));
    open_bench(&mut model);
    send(&mut model, key(KeyCode::Char('n')));
    chars(&mut model, "porch");
    send(&mut model, key(KeyCode::Enter));
    assert!(send(&mut model, key(KeyCode::Char('f'))).is_empty());
    assert!(matches!(&model.bench.outcome, Some(Err(e)) if e.contains("read-only")));

    let mut model = loaded(3, false, (80, 24));
    open_bench(&mut model);
    send(&mut model, key(KeyCode::Char('n')));
    chars(&mut model, "porch");
    send(&mut model, key(KeyCode::Enter));
    assert_eq!(send(&mut model, key(KeyCode::Char('f'))).len(), 1);
    let commands = send(
        &mut model,
        Msg::Bench(BenchMsg::Done(Err("cannot connect to /dev/ttyACM0".into()))),
    );
    assert!(commands.is_empty());
    assert_eq!(*model.screen(), Screen::Bench);
    assert!(!model.bench.running);
}
