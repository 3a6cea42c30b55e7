//! The key's scope in the console (PROTOCOL §11): the header says it, what it may not do
//! is greyed out in the footer, the help and the palette, and pressing such a key explains
//! the scope it needs instead of calling the server.

mod support;

use crossterm::event::KeyCode;
use herd_client::{KeyObject, Scope};
use herd_console::tui::{Command, Msg};
use ratatui::style::Modifier;
use support::*;

fn key_object(scope: Scope, devices: Option<&str>, expires_in: Option<f64>) -> KeyObject {
    KeyObject {
        id: "k1".into(),
        user_id: "email_admin".into(),
        name: "wall".into(),
        scope: Some(scope),
        devices: devices.map(str::to_string),
        expires_at: expires_in.map(|secs| herd_console::text::rfc3339(NOW + secs)),
        created_at: herd_console::text::rfc3339(NOW - 60.0),
        last_used: None,
        token: None,
    }
}

fn with_key(scope: Scope, size: (u16, u16)) -> herd_console::tui::Model {
    let mut model = loaded(10, false, size);
    send(
        &mut model,
        Msg::KeyLoaded(Ok(key_object(scope, None, None))),
    );
    model
}

/// Whether the text `needle` on row `row` is drawn crossed out.
fn crossed_out(model: &herd_console::tui::Model, row: u16, needle: &str) -> bool {
    let (width, height) = model.size;
    let terminal = render(model, width, height);
    let buffer = terminal.backend().buffer();
    let line: String = (0..width).map(|x| buffer[(x, row)].symbol()).collect();
    let column = line
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} on row {row}: {line:?}"));
    let x = line[..column].chars().count() as u16;
    buffer[(x, row)].modifier.contains(Modifier::CROSSED_OUT)
}

#[test]
fn the_header_shows_the_scope_filter_and_expiry() {
    let mut model = loaded(10, false, (80, 24));
    assert!(!screen(&model, 80, 24)
        .lines()
        .next()
        .unwrap()
        .contains("read"));
    send(
        &mut model,
        Msg::KeyLoaded(Ok(key_object(
            Scope::Deploy,
            Some("name:lamp*"),
            Some(3.0 * 3600.0),
        ))),
    );
    let header = screen(&model, 80, 24).lines().next().unwrap().to_string();
    assert!(header.contains(" deploy "), "{header}");
    assert!(header.contains("devices:name:lamp*"), "{header}");
    assert!(header.contains("exp 3h00m"), "{header}");
    assert!(header.contains("online"), "the counts stay: {header}");
    insta::assert_snapshot!("header_deploy_filter_expiry_80x24", screen(&model, 80, 24));
}

#[test]
fn a_read_key_greys_out_writes_and_explains_instead_of_calling() {
    let mut model = with_key(Scope::Read, (80, 24));
    // The fleet: delete is not in the footer at 80 columns, but the update (rollout) is at
    // 200; both refuse with the scope they need.
    let mut wide = with_key(Scope::Read, (200, 50));
    assert!(crossed_out(&wide, 49, "U update"));
    assert!(!crossed_out(&wide, 49, "t tail"));
    assert!(send(&mut wide, key(KeyCode::Char('U'))).is_empty());
    let status = wide.status.clone().expect("a reason");
    assert!(status.error, "{status:?}");
    assert!(
        status.text.contains("scope deploy") && status.text.contains("this key's scope is read"),
        "{status:?}"
    );
    assert!(send(&mut model, ctrl('d')).is_empty());
    assert!(model.overlay.is_none(), "no question is asked");
    assert!(model
        .status
        .as_ref()
        .is_some_and(|s| s.text.contains("cannot delete devices")));

    // The device view: edit, call and update are greyed; pressing them explains.
    send(&mut model, key(KeyCode::Enter));
    let id = device(0).id;
    send(
        &mut model,
        Msg::DeviceLoaded {
            id: id.clone(),
            result: Ok(device(0)),
        },
    );
    let footer = model.size.1 - 1;
    assert!(crossed_out(&model, footer, "e edit"));
    assert!(crossed_out(&model, footer, "c call"));
    assert!(!crossed_out(&model, footer, "l logs"));
    for (code, words) in [
        ('e', "cannot edit desired"),
        (
            'c',
            "cannot call RPCs: it needs an API key with scope operate",
        ),
        (
            'u',
            "cannot push firmware: it needs an API key with scope deploy",
        ),
    ] {
        let commands = send(&mut model, key(KeyCode::Char(code)));
        assert!(commands.is_empty(), "{code}: {commands:?}");
        let status = model.status.clone().expect("a reason");
        assert!(status.text.contains(words), "{code}: {status:?}");
        let view = model.device.as_ref().expect("the device");
        assert!(view.editor.is_none() && view.rpc.is_none() && view.push.is_none());
    }

    // The palette: :set and :call are greyed with the scope; running one explains.
    send(&mut model, key(KeyCode::Char(':')));
    chars(&mut model, "c");
    let text = screen(&model, 80, 24);
    assert!(text.contains("needs operate: call an RPC"), "{text}");
    insta::assert_snapshot!("palette_read_key_80x24", text);
    chars(&mut model, "all Sys.Reboot");
    let commands = send(&mut model, key(KeyCode::Enter));
    assert!(
        !commands.iter().any(|c| matches!(c, Command::Bulk { .. })),
        "{commands:?}"
    );
    assert!(model.overlay.is_none(), "no confirmation is asked");
    assert!(model
        .status
        .as_ref()
        .is_some_and(|s| s.text.contains("cannot call Sys.Reboot")));

    // The help says what each greyed key needs.
    send(&mut model, key(KeyCode::Char('?')));
    let text = screen(&model, 80, 24);
    assert!(text.contains("(needs operate)"), "{text}");
    insta::assert_snapshot!("help_device_read_key_80x24", text);
}

#[test]
fn an_operate_key_may_set_desired_but_not_desired_ota_nor_ota_calls() {
    let mut model = with_key(Scope::Operate, (80, 24));
    send(&mut model, key(KeyCode::Char(':')));
    chars(&mut model, "set {\"on\": true}");
    send(&mut model, key(KeyCode::Enter));
    assert!(
        matches!(
            model.overlay,
            Some(herd_console::tui::model::Overlay::Confirm { .. })
        ),
        "asks before setting"
    );
    send(&mut model, key(KeyCode::Char('n')));
    send(&mut model, key(KeyCode::Char(':')));
    chars(&mut model, "set {\"ota\": {\"url\": \"/x\"}}");
    send(&mut model, key(KeyCode::Enter));
    assert!(model.overlay.is_none());
    assert!(model
        .status
        .as_ref()
        .is_some_and(|s| s.text.contains("scope deploy")));
    send(&mut model, key(KeyCode::Char(':')));
    chars(&mut model, "call OTA.Update");
    send(&mut model, key(KeyCode::Enter));
    assert!(model.overlay.is_none());
    assert!(model
        .status
        .as_ref()
        .is_some_and(|s| s.text.contains("cannot call OTA.Update")));
}
