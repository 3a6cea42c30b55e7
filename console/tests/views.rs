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

// ---------------------------------------------------------------------------------------
// Firmware: rollouts and one-device pushes.

use herd_console::tui::rollouts::Reply;

/// Snapshots at 80x24, 200x50 and the too-small 20x5.
fn snapshot_all(name: &str, scene: impl Fn((u16, u16)) -> herd_console::tui::Model) {
    snapshot(name, &scene);
    let model = scene((20, 5));
    insta::assert_snapshot!(format!("{name}_20x5"), render(&model, 20, 5).backend());
}

fn rollouts_scene(size: (u16, u16)) -> herd_console::tui::Model {
    let mut model = loaded(20, false, size);
    send(&mut model, key(KeyCode::Char('R')));
    send(&mut model, Msg::from(Reply::Listed(Ok(rollouts()))));
    model
}

fn page_scene(size: (u16, u16)) -> herd_console::tui::Model {
    let mut model = rollouts_scene(size);
    send(&mut model, key(KeyCode::Enter));
    send(
        &mut model,
        Msg::from(Reply::Loaded {
            id: "r1".into(),
            result: Ok(rollout("r1", "lights 1.1.0", true)),
        }),
    );
    notify(
        &mut model,
        NOW + 0.5,
        vec![notification(
            &device(5).id,
            "ota.progress",
            json!({"firmware": rollout("r1", "", false).firmware, "percent": 70}),
        )],
    );
    // The soak countdown runs from when the console first saw the device verifying.
    send(&mut model, Msg::Tick(NOW + 20.0));
    model
}

#[test]
fn rollouts_list() {
    snapshot_all("rollouts", rollouts_scene);
    snapshot("rollouts_empty", |size| {
        let mut model = loaded(3, false, size);
        send(&mut model, key(KeyCode::Char('R')));
        send(&mut model, Msg::from(Reply::Listed(Ok(Vec::new()))));
        model
    });
}

#[test]
fn rollout_page() {
    snapshot_all("rollout_page", page_scene);
    snapshot("rollout_page_failures", |size| {
        let mut model = page_scene(size);
        send(&mut model, key(KeyCode::Tab));
        model
    });
    snapshot("rollout_abort", |size| {
        let mut model = page_scene(size);
        send(&mut model, key(KeyCode::Char('A')));
        model
    });
}

fn form_scene(size: (u16, u16)) -> herd_console::tui::Model {
    let mut model = loaded(20, false, size);
    for _ in 0..3 {
        send(&mut model, key(KeyCode::Char(' ')));
    }
    send(&mut model, key(KeyCode::Char('U')));
    send(
        &mut model,
        Msg::from(Reply::Firmware(Ok(vec![
            firmware(0, 86_400.0),
            firmware(1, 7200.0),
            firmware(2, 60.0),
        ]))),
    );
    send(&mut model, key(KeyCode::Down));
    send(&mut model, key(KeyCode::Tab));
    send(&mut model, key(KeyCode::Tab));
    model
}

#[test]
fn new_rollout_form_and_plan() {
    snapshot_all("new_rollout", form_scene);
    snapshot("new_rollout_error", |size| {
        let mut model = form_scene(size);
        send(&mut model, key(KeyCode::Enter));
        send(
            &mut model,
            Msg::from(Reply::Planned(Err(herd_console::tui::model::Failure {
                status: Some(400),
                message: "400 bad request: the rollout selects no device to update: 3 selected devices already run 1.1.0 and are left out".into(),
            }))),
        );
        model
    });
    snapshot_all("rollout_plan", |size| {
        let mut model = form_scene(size);
        send(&mut model, key(KeyCode::Enter));
        let mut plan = rollout("", "smart-light 1.1.0", true);
        plan.dry_run = true;
        plan.state = protocol::firmware::RolloutState::Planned;
        plan.notes = vec![
            "2 selected devices already run 1.1.0 and are left out".into(),
            "7 of 20 devices are offline now".into(),
        ];
        for device in plan.devices.iter_mut().flatten() {
            device.state = protocol::firmware::DeviceState::Pending;
        }
        send(&mut model, Msg::from(Reply::Planned(Ok(plan))));
        model
    });
}

#[test]
fn device_push_and_progress() {
    snapshot("device_push", |size| {
        let mut model = device_scene(size);
        send(&mut model, key(KeyCode::Char('u')));
        send(
            &mut model,
            Msg::from(Reply::Firmware(Ok(vec![
                firmware(1, 7200.0),
                firmware(2, 60.0),
            ]))),
        );
        model
    });
    snapshot("device_update", |size| {
        let mut model = device_scene(size);
        let id = device(5).id;
        let fw = firmware(2, 0.0).id;
        notify(
            &mut model,
            NOW + 2.0,
            vec![
                notification(
                    &id,
                    "ota.begin",
                    json!({"firmware": fw, "version": "1.2.0", "size": 918_528, "rollout": "r1"}),
                ),
                notification(&id, "ota.progress", json!({"firmware": fw, "percent": 40})),
            ],
        );
        model
    });
}

// ---------------------------------------------------------------------------------------
// The operator's day: staleness, results, the tail's changes and history, 80x24.

#[test]
fn stale_fleet_and_device() {
    let lose = |model: &mut herd_console::tui::Model| {
        send(
            model,
            Msg::Stream(Connection::Lost {
                reason: "Connection refused (os error 111)".into(),
                retry_at: NOW + 95.0,
            }),
        );
        send(model, Msg::Tick(NOW + 90.0));
    };
    snapshot_all("fleet_stale", |size| {
        let mut model = loaded(20, false, size);
        lose(&mut model);
        model
    });
    snapshot("device_stale", |size| {
        let mut model = device_scene(size);
        lose(&mut model);
        model
    });
}

/// A bulk call on four devices: two answered, one failed, one waiting.
fn results_scene(size: (u16, u16)) -> herd_console::tui::Model {
    let mut model = loaded(10, false, size);
    for _ in 0..4 {
        send(&mut model, key(KeyCode::Char(' ')));
    }
    send(&mut model, key(KeyCode::Char(':')));
    chars(&mut model, "call Sys.GetInfo");
    send(&mut model, key(KeyCode::Enter));
    let commands = send(&mut model, key(KeyCode::Char('y')));
    let Some(herd_console::tui::Command::Bulk { set, ids, .. }) = commands.into_iter().next()
    else {
        panic!("a bulk command");
    };
    for (i, id) in ids.iter().enumerate().take(3) {
        let result = if i == 1 {
            Err("503 service unavailable: the device is offline".to_string())
        } else {
            Ok(
                json!({"app": "smart-light", "fw_version": "1.2.0", "arch": "esp32c3",
                      "mac": format!("24:0A:C4:00:00:0{i}"), "uptime": 3600 + i,
                      "ram_size": 327680, "ram_free": 123456, "ram_min_free": 100000,
                      "fs_size": 233681, "fs_free": 150000, "wifi": {"sta_ip": "10.0.0.7", "ssid": "lab"}}),
            )
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
    model
}

#[test]
fn results_pane() {
    snapshot_all("results", results_scene);
    snapshot("results_value_scrolled", |size| {
        let mut model = results_scene(size);
        send(&mut model, key(KeyCode::Tab));
        for _ in 0..6 {
            send(&mut model, key(KeyCode::Down));
        }
        model
    });
}

#[test]
fn tail_with_history_and_changes() {
    snapshot_all("tail_history", |size| {
        let mut model = loaded(5, false, size);
        let id = device(2).id;
        let mut object = serde_json::to_value(device(2)).expect("json");
        let history = vec![
            (NOW - 300.0, notification(&id, "offline", json!(null))),
            (NOW - 240.0, notification(&id, "online", json!(null))),
            (NOW - 239.0, notification(&id, "updated", object.clone())),
        ];
        send(&mut model, Msg::History(Ok(history)));
        object["shadow"]["state"]["desired"]["on"] = json!(false);
        object["shadow"]["state"]["delta"] = json!({"on": false});
        object["shadow"]["version"] = json!(6);
        notify(
            &mut model,
            NOW + 1.0,
            vec![notification(&id, "updated", object.clone())],
        );
        object["shadow"]["state"]["reported"]["on"] = json!(false);
        object["shadow"]["state"]["delta"] = json!({});
        object["shadow"]["version"] = json!(7);
        notify(
            &mut model,
            NOW + 2.0,
            vec![
                notification(
                    &id,
                    "rpc.out.Dash.Shadow.Update",
                    json!({"state": {"reported": {"on": false}}}),
                ),
                notification(&id, "updated", object),
            ],
        );
        send(&mut model, key(KeyCode::Char('t')));
        model
    });
}

#[test]
fn help_scrolled_and_sorted_off_screen() {
    snapshot("help_scrolled", |size| {
        let mut model = loaded(10, false, size);
        send(&mut model, key(KeyCode::Char('?')));
        send(&mut model, key(KeyCode::PageDown));
        model
    });
    snapshot("fleet_sorted_off_screen", |size| {
        let mut model = loaded(10, false, size);
        send(&mut model, key(KeyCode::Char(':')));
        chars(&mut model, "sort uptime desc");
        send(&mut model, key(KeyCode::Enter));
        model
    });
}

// The bench: ports, the new light's settings, a flash under way and one that failed.

use herd_console::bench::provision::Event;
use herd_console::bench::Port;
use herd_console::tui::bench::Msg as BenchMsg;

fn bench_scene(size: (u16, u16)) -> herd_console::tui::Model {
    let mut model = loaded(3, false, size);
    send(&mut model, key(KeyCode::Char(':')));
    chars(&mut model, "bench");
    send(&mut model, key(KeyCode::Enter));
    let ports = vec![
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
    ];
    send(&mut model, Msg::Bench(BenchMsg::Ports(Ok(ports))));
    send(&mut model, key(KeyCode::Char('n')));
    chars(&mut model, "porch");
    send(&mut model, key(KeyCode::Enter));
    send(&mut model, key(KeyCode::Char('w')));
    chars(&mut model, "home");
    send(&mut model, key(KeyCode::Enter));
    send(&mut model, key(KeyCode::Char('p')));
    chars(&mut model, "secret");
    send(&mut model, key(KeyCode::Enter));
    model
}

#[test]
fn bench_view() {
    snapshot("bench", bench_scene);
    snapshot("bench_flashing", |size| {
        let mut model = bench_scene(size);
        send(&mut model, key(KeyCode::Char('f')));
        send(
            &mut model,
            Msg::Bench(BenchMsg::Progress(Event::Registered {
                id: "0123456789abcdef01234567".into(),
            })),
        );
        send(
            &mut model,
            Msg::Bench(BenchMsg::Progress(Event::Writing {
                segment: "ota_0".into(),
                done: 420_000,
                total: 1_000_000,
            })),
        );
        model
    });
    snapshot("bench_failed", |size| {
        let mut model = bench_scene(size);
        send(&mut model, key(KeyCode::Char('f')));
        send(
            &mut model,
            Msg::Bench(BenchMsg::Done(Err(
                "cannot connect to /dev/ttyACM0: timed out waiting for the ROM loader".into(),
            ))),
        );
        model
    });
}
