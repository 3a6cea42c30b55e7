//! The `[keys]` table: a remapped key changes what the key does and what the footer and
//! the help say, in every view the key map covers.

mod support;

use std::collections::BTreeMap;

use crossterm::event::KeyCode;
use herd_console::tui::model::{Overlay, Screen};
use herd_console::tui::{KeyMap, Msg};
use support::*;

fn remapped(pairs: &[(&str, &str)]) -> KeyMap {
    let overrides: BTreeMap<String, String> = pairs
        .iter()
        .map(|(a, k)| (a.to_string(), k.to_string()))
        .collect();
    KeyMap::with_overrides(&overrides).expect("a valid map")
}

fn footer(model: &herd_console::tui::Model) -> String {
    let (width, height) = model.size;
    screen(model, width, height)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_remapped_key_changes_behaviour_and_hints_in_the_fleet() {
    let mut model = loaded(10, false, (200, 50));
    model.keys = remapped(&[("tail", "l"), ("palette", ";"), ("quit", "Q")]);
    let hints = footer(&model);
    assert!(hints.contains("l tail"), "{hints}");
    assert!(hints.contains("; cmd"), "{hints}");
    assert!(hints.contains("Q quit"), "{hints}");
    assert!(!hints.contains("t tail"), "{hints}");

    // The old keys do nothing; the new ones act.
    send(&mut model, key(KeyCode::Char('t')));
    assert_eq!(*model.screen(), Screen::Fleet);
    send(&mut model, key(KeyCode::Char(':')));
    assert!(model.overlay.is_none());
    assert!(send(&mut model, key(KeyCode::Char('q'))).is_empty());
    assert!(!model.quit);
    send(&mut model, key(KeyCode::Char(';')));
    assert!(matches!(model.overlay, Some(Overlay::Palette { .. })));
    send(&mut model, key(KeyCode::Esc));
    send(&mut model, key(KeyCode::Char('l')));
    assert_eq!(*model.screen(), Screen::Notifications);

    // The help lists the keys as mapped.
    send(&mut model, key(KeyCode::Esc));
    send(&mut model, key(KeyCode::Char('?')));
    let help = screen(&model, 200, 50);
    assert!(help.contains("         l  notification tail"), "{help}");
    assert!(help.contains("         ;  command palette"), "{help}");
}

#[test]
fn a_remapped_key_changes_behaviour_and_hints_in_the_device_view_and_the_tail() {
    let mut model = loaded(10, false, (80, 24));
    model.keys = remapped(&[("edit", "x"), ("device_tail", "T"), ("wrap", "W")]);
    send(&mut model, key(KeyCode::Enter));
    let object = device(0);
    send(
        &mut model,
        Msg::DeviceLoaded {
            id: object.id.clone(),
            result: Ok(object),
        },
    );
    let hints = footer(&model);
    assert!(hints.starts_with(" x edit"), "{hints}");
    insta::assert_snapshot!("device_remapped_80x24", screen(&model, 80, 24));
    send(&mut model, key(KeyCode::Char('e')));
    assert!(model.device.as_ref().is_some_and(|v| v.editor.is_none()));
    send(&mut model, key(KeyCode::Char('x')));
    assert!(model.device.as_ref().is_some_and(|v| v.editor.is_some()));
    send(&mut model, key(KeyCode::Esc));

    send(&mut model, key(KeyCode::Char('t')));
    assert!(matches!(model.screen(), Screen::Device(_)));
    send(&mut model, key(KeyCode::Char('T')));
    assert_eq!(*model.screen(), Screen::Notifications);
    assert!(footer(&model).contains("W wrap"), "{}", footer(&model));
    let wrapped = model.tail.wrap;
    send(&mut model, key(KeyCode::Char('w')));
    assert_eq!(model.tail.wrap, wrapped);
    send(&mut model, key(KeyCode::Char('W')));
    assert_ne!(model.tail.wrap, wrapped);
}

#[test]
fn the_results_pane_the_rollouts_and_analytics_take_the_map_too() {
    let mut model = loaded(3, false, (200, 50));
    model.keys = remapped(&[
        ("dismiss_results", "D"),
        ("range", "R"),
        ("rollouts_new", "N"),
    ]);
    // A bulk answer opens the results pane.
    let id = device(1).id;
    send(&mut model, key(KeyCode::Char(':')));
    chars(&mut model, "call Sys.Reboot");
    send(&mut model, key(KeyCode::Enter));
    send(&mut model, key(KeyCode::Char('y')));
    send(
        &mut model,
        Msg::BulkAnswer {
            set: 1,
            id,
            result: Ok(serde_json::json!(true)),
        },
    );
    assert_eq!(*model.screen(), Screen::Results);
    assert!(footer(&model).contains("D dismiss"), "{}", footer(&model));
    send(&mut model, key(KeyCode::Char('x')));
    assert_eq!(model.results.sets.len(), 1, "x does nothing now");
    send(&mut model, key(KeyCode::Char('D')));
    assert!(model.results.sets.is_empty());

    send(&mut model, key(KeyCode::Char(':')));
    chars(&mut model, "analytics");
    send(&mut model, key(KeyCode::Enter));
    assert!(footer(&model).contains("R range"), "{}", footer(&model));
    let range = model.analytics.selection.range;
    send(&mut model, key(KeyCode::Char('r')));
    assert_eq!(model.analytics.selection.range, range);
    send(&mut model, key(KeyCode::Char('R')));
    assert_ne!(model.analytics.selection.range, range);

    send(&mut model, key(KeyCode::Char(':')));
    chars(&mut model, "rollouts");
    send(&mut model, key(KeyCode::Enter));
    assert!(footer(&model).contains("N new"), "{}", footer(&model));
    send(&mut model, key(KeyCode::Char('?')));
    assert!(screen(&model, 200, 50).contains("         N  new rollout"));
}
