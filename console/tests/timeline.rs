//! The device view's timeline (`h`): the device's events from the server's log, and the
//! device as it was at the chosen one.

mod support;

use crossterm::event::KeyCode;
use herd_console::history::{EventKind, Timeline};
use herd_console::tui::device::Pane;
use herd_console::tui::{Command, Msg};
use serde_json::json;
use support::*;

/// Device 0's log: created offline, online, the light switched on, a firmware update,
/// offline.
fn timeline() -> Timeline {
    let mut object = serde_json::to_value(device(0)).expect("json");
    let id = device(0).id;
    let mut timeline = Timeline::new(&id);
    object["online"] = json!(false);
    object["shadow"]["state"]["reported"]["on"] = json!(false);
    object["info"]["fw_version"] = json!("1.0.0");
    timeline.feed(NOW - 3600.0, &id, "created", &object);
    timeline.feed(NOW - 3000.0, &id, "online", &json!(null));
    object["online"] = json!(true);
    object["shadow"]["state"]["reported"]["on"] = json!(true);
    object["shadow"]["version"] = json!(4);
    timeline.feed(NOW - 2400.0, &id, "updated", &object);
    object["info"]["fw_version"] = json!("1.1.0");
    timeline.feed(NOW - 1800.0, &id, "updated", &object);
    timeline.feed(NOW - 600.0, &id, "offline", &json!(null));
    // Another device's line says nothing of this one.
    timeline.feed(NOW - 500.0, "other", "online", &json!(null));
    timeline
}

fn timeline_scene(size: (u16, u16)) -> herd_console::tui::Model {
    let mut model = loaded(10, false, size);
    send(&mut model, key(KeyCode::Enter));
    let object = device(0);
    let id = object.id.clone();
    send(
        &mut model,
        Msg::DeviceLoaded {
            id: id.clone(),
            result: Ok(object),
        },
    );
    let commands = send(&mut model, key(KeyCode::Char('h')));
    assert_eq!(commands, vec![Command::LoadTimeline(id.clone())]);
    send(
        &mut model,
        Msg::TimelineLoaded {
            id,
            result: Ok(timeline()),
        },
    );
    model
}

#[test]
fn the_timeline_lists_events_and_the_state_at_the_chosen_one() {
    let timeline = timeline();
    let kinds: Vec<EventKind> = timeline.events().iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![
            EventKind::Created,
            EventKind::Online,
            EventKind::Shadow,
            EventKind::Firmware,
            EventKind::Offline
        ]
    );
    assert!(timeline.events()[3]
        .text
        .contains("info.fw_version \"1.0.0\"→\"1.1.0\""));
    let before_update = timeline.state_at(2).expect("state");
    assert_eq!(before_update.firmware(), Some("1.0.0"));
    assert_eq!(before_update.online, Some(true));
    assert_eq!(timeline.state_at(4).expect("state").online, Some(false));

    for size in [(80, 24), (200, 50)] {
        let mut model = timeline_scene(size);
        let text = screen(&model, size.0, size.1);
        // The newest event is chosen: offline, firmware 1.1.0.
        assert!(text.contains("offline since 11-14 22:03:20"), "{text}");
        assert!(text.contains("firmware 1.1.0"), "{text}");
        insta::assert_snapshot!(format!("timeline_{}x{}", size.0, size.1), text);
        // Two events back: the light went on, before the update.
        send(&mut model, key(KeyCode::Up));
        send(&mut model, key(KeyCode::Up));
        let view = model.device.as_ref().expect("device");
        assert_eq!(view.timeline_cursor(), Some(2));
        let text = screen(&model, size.0, size.1);
        assert!(text.contains("firmware 1.0.0"), "{text}");
        assert!(text.contains("online since 11-14 21:23:20"), "{text}");
        insta::assert_snapshot!(format!("timeline_chosen_{}x{}", size.0, size.1), text);
    }
}

#[test]
fn live_events_extend_the_timeline_and_h_goes_back_to_the_events() {
    let mut model = timeline_scene((80, 24));
    let id = device(0).id;
    notify(
        &mut model,
        NOW + 5.0,
        vec![notification(&id, "online", json!(null))],
    );
    let view = model.device.as_ref().expect("device");
    let Some(Ok(timeline)) = &view.timeline else {
        panic!("loaded");
    };
    assert_eq!(timeline.len(), 6);
    assert_eq!(view.timeline_cursor(), Some(5), "following the newest");
    send(&mut model, key(KeyCode::Char('h')));
    let view = model.device.as_ref().expect("device");
    assert_eq!(view.pane, Pane::Events);
    // Opened again: read already, nothing asked of the server.
    assert!(send(&mut model, key(KeyCode::Char('h'))).is_empty());

    // A log the key may not read is said in the pane.
    let mut model = loaded(3, false, (80, 24));
    send(&mut model, key(KeyCode::Enter));
    send(
        &mut model,
        Msg::DeviceLoaded {
            id: device(0).id,
            result: Ok(device(0)),
        },
    );
    send(&mut model, key(KeyCode::Char('h')));
    assert!(screen(&model, 80, 24).contains("reading the server's log"));
    send(
        &mut model,
        Msg::TimelineLoaded {
            id: device(0).id,
            result: Err(herd_console::tui::model::Failure::new("403 forbidden")),
        },
    );
    assert!(screen(&model, 80, 24).contains("cannot read the server's log: 403"));
}
