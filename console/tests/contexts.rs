//! `:ctx`: the config's profiles listed, and the whole console switched to one (k9s's
//! contexts). The model's part here; the switch against real servers is in terminal.rs.

mod support;

use crossterm::event::KeyCode;
use herd_console::profile::ContextInfo;
use herd_console::tui::model::Overlay;
use herd_console::tui::{Command, Msg, ProfileInfo};
use support::*;

fn contexts() -> Vec<ContextInfo> {
    [
        ("lab", "http://127.0.0.1:8009", false),
        ("prod", "https://herd.example.com", true),
        ("bench", "https://10.0.0.2:8009", false),
    ]
    .into_iter()
    .map(|(name, server, read_only)| ContextInfo {
        name: name.into(),
        server: server.into(),
        read_only,
    })
    .collect()
}

fn with_contexts(size: (u16, u16)) -> herd_console::tui::Model {
    let mut model = loaded(10, false, size);
    model.contexts = contexts();
    model
}

fn palette(model: &mut herd_console::tui::Model, line: &str) -> Vec<Command> {
    send(model, key(KeyCode::Char(':')));
    chars(model, line);
    send(model, key(KeyCode::Enter))
}

#[test]
fn ctx_lists_the_profiles_with_the_current_one_marked() {
    let mut model = with_contexts((80, 24));
    assert!(palette(&mut model, "ctx").is_empty());
    assert!(matches!(
        model.overlay,
        Some(Overlay::Contexts { selected: 0 })
    ));
    let text = screen(&model, 80, 24);
    assert!(text.contains("● lab"), "{text}");
    assert!(text.contains("read-only"), "{text}");
    insta::assert_snapshot!("ctx_list_80x24", text);

    // Enter on another profile asks the runtime to switch.
    send(&mut model, key(KeyCode::Down));
    let commands = send(&mut model, key(KeyCode::Enter));
    assert_eq!(commands, vec![Command::SwitchProfile("prod".into())]);
    assert!(model.overlay.is_none());
}

#[test]
fn ctx_name_switches_the_whole_console_and_an_unknown_name_is_an_error() {
    let mut model = with_contexts((80, 24));
    let commands = palette(&mut model, "ctx staging");
    assert!(commands.is_empty());
    match &model.overlay {
        Some(Overlay::Palette {
            error: Some(error), ..
        }) => assert!(
            error.contains("no profile named \"staging\" (known: lab, prod, bench)"),
            "{error}"
        ),
        other => panic!("the palette stays open with the error: {other:?}"),
    }
    send(&mut model, key(KeyCode::Esc));

    // Open a device, then switch: everything shown came from the old server and goes.
    send(&mut model, key(KeyCode::Enter));
    assert_eq!(
        palette(&mut model, "ctx bench"),
        vec![Command::SwitchProfile("bench".into())]
    );
    send(
        &mut model,
        Msg::Switched(Ok((
            ProfileInfo {
                name: "bench".into(),
                server: "https://10.0.0.2:8009".into(),
                read_only: false,
            },
            None,
        ))),
    );
    assert_eq!(model.stack.len(), 1, "back on the fleet");
    assert!(model.device.is_none());
    assert!(model.fleet.is_empty() && !model.loaded_once);
    assert_eq!(model.contexts.len(), 3, "the profiles stay");
    let header = screen(&model, 80, 24);
    assert!(header.lines().next().unwrap().contains("bench"), "{header}");
    assert!(header.contains("switched to profile bench"), "{header}");
    // The new stream's connection lists the new server's fleet and asks about the key.
    let commands = send(
        &mut model,
        Msg::Stream(herd_console::tui::Connection::Connected),
    );
    assert!(commands.contains(&Command::LoadDevices), "{commands:?}");
    assert!(commands.contains(&Command::LoadKey), "{commands:?}");

    // A profile that cannot be opened leaves the console where it was, saying why.
    send(
        &mut model,
        Msg::Switched(Err(
            "cannot switch to profile prod: cannot read the CA".into()
        )),
    );
    assert_eq!(model.profile.name, "bench");
    assert!(model.status.as_ref().is_some_and(|s| s.error));
}

#[test]
fn without_profiles_ctx_says_how_to_add_them() {
    let mut model = loaded(3, false, (80, 24));
    palette(&mut model, "ctx");
    assert!(screen(&model, 80, 24).contains("no profiles: add [profiles.NAME]"));
    send(&mut model, key(KeyCode::Esc));
    palette(&mut model, "ctx lab");
    assert!(matches!(
        &model.overlay,
        Some(Overlay::Palette { error: Some(e), .. }) if e.contains("has no [profiles.NAME]")
    ));
}
