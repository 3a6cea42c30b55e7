//! The footer: the current view's keys as the key map has them, greyed when the key in
//! use may not do what they do, the ways back and to the help kept when it is narrow; or
//! the one-line prompt.

use super::*;

/// One key hint of the footer.
struct Hint {
    pub key: String,
    pub what: &'static str,
    /// What it asks of the server: greyed out when the key may not (PROTOCOL §11).
    pub needs: Option<Operation>,
    /// Kept when the footer is too narrow for every hint: the ways back and to the help.
    pub essential: bool,
}

fn hint(key: impl Into<String>, what: &'static str) -> Hint {
    Hint {
        key: key.into(),
        what,
        needs: None,
        essential: false,
    }
}

/// A hint that asks `operation` of the server.
fn hint_needs(key: impl Into<String>, what: &'static str, operation: Operation) -> Hint {
    Hint {
        needs: Some(operation),
        ..hint(key, what)
    }
}

/// A hint that survives a narrow footer.
fn essential(key: impl Into<String>, what: &'static str) -> Hint {
    Hint {
        essential: true,
        ..hint(key, what)
    }
}

/// The hint of a key map action: its key as configured, and what it needs.
fn mapped(model: &Model, scope: KeyScope, action: Action, what: &'static str) -> Hint {
    Hint {
        needs: crate::access::key_action(action),
        essential: action == Action::Help,
        ..hint(model.keys.label(scope, action), what)
    }
}

fn key_hints(model: &Model) -> Vec<Hint> {
    if let Some(overlay) = &model.overlay {
        return match overlay {
            Overlay::Palette { .. } => vec![
                hint("⏎", "run"),
                hint("Tab", "complete"),
                essential("Esc", "close"),
            ],
            Overlay::Help { .. } => vec![
                hint("↑↓ PgUp PgDn", "scroll"),
                essential("Esc q ?", "close"),
            ],
            Overlay::Confirm { .. } => vec![essential("y", "yes"), essential("n/Esc", "no")],
            Overlay::Prompt { .. } => vec![hint("⏎", "apply"), essential("Esc", "cancel")],
            Overlay::Contexts { .. } => vec![
                hint("↑↓", "move"),
                hint("⏎", "switch"),
                essential("Esc", "close"),
            ],
        };
    }
    let back = || essential("Esc", "back");
    match model.screen() {
        Screen::Fleet => {
            let f = KeyScope::Fleet;
            vec![
                mapped(model, f, Action::Open, "open"),
                mapped(model, f, Action::Filter, "filter"),
                hint(sort_keys(model.size.0), "sort"),
                mapped(model, f, Action::Mark, "mark"),
                mapped(model, f, Action::Tail, "tail"),
                mapped(model, f, Action::Analytics, "reports"),
                mapped(model, f, Action::Palette, "cmd"),
                mapped(model, f, Action::Help, "help"),
                Hint {
                    essential: true,
                    ..mapped(model, f, Action::Quit, "quit")
                },
                mapped(model, f, Action::Rollouts, "rollouts"),
                mapped(model, f, Action::NewRollout, "update"),
            ]
        }
        Screen::Device(_) => match &model.device {
            Some(view) if view.editor.is_some() => vec![
                hint("^S", "send"),
                hint("^R", "server copy"),
                hint("^O", "overwrite"),
                essential("Esc", "cancel"),
            ],
            Some(view) if view.rpc.is_some() => vec![
                hint("↑↓ a-z", "method"),
                hint("Tab", "params"),
                hint_needs("⏎", "call", Operation::Call),
                hint("PgUp PgDn", "result"),
                essential("Esc", "close"),
            ],
            Some(view) if view.push.is_some() => vec![
                hint("↑↓", "firmware"),
                hint_needs("⏎", "push", Operation::PushFirmware),
                essential("Esc", "close"),
            ],
            _ => {
                let d = KeyScope::Device;
                vec![
                    mapped(model, d, Action::Edit, "edit"),
                    mapped(model, d, Action::EditExternal, "$EDITOR"),
                    mapped(model, d, Action::Call, "call"),
                    mapped(model, d, Action::Logs, "logs"),
                    mapped(model, d, Action::Info, "info"),
                    mapped(model, d, Action::DeviceTail, "tail"),
                    hint("Tab ↑↓", "scroll"),
                    mapped(model, d, Action::DeviceReload, "reload"),
                    back(),
                    mapped(model, d, Action::Help, "help"),
                    mapped(model, d, Action::Push, "update"),
                    mapped(model, d, Action::History, "timeline"),
                ]
            }
        },
        Screen::Notifications => {
            let t = KeyScope::Tail;
            vec![
                mapped(model, t, Action::Follow, "follow"),
                mapped(model, t, Action::TailDevice, "device"),
                mapped(model, t, Action::TailNames, "events"),
                mapped(model, t, Action::TailFilter, "filter"),
                mapped(model, t, Action::ClearFilter, "clear"),
                mapped(model, t, Action::Wrap, "wrap"),
                mapped(model, t, Action::Save, "save"),
                back(),
            ]
        }
        Screen::Analytics => vec![
            hint("1-5", "report"),
            mapped(model, KeyScope::Analytics, Action::Range, "range"),
            mapped(model, KeyScope::Analytics, Action::Bucket, "bucket"),
            mapped(model, KeyScope::Analytics, Action::NextTable, "table"),
            mapped(model, KeyScope::Analytics, Action::SortNext, "sort"),
            mapped(model, KeyScope::Analytics, Action::Query, "sql"),
            // In order: on a narrow screen its own keys come before the way back.
            hint("Esc", "back"),
            hint("?", "help"),
        ],
        Screen::Results => vec![
            hint("↑↓", "move"),
            hint("Tab", "value"),
            hint(
                format!(
                    "{} {}",
                    model.keys.label(KeyScope::Results, Action::OlderResults),
                    model.keys.label(KeyScope::Results, Action::NewerResults)
                ),
                "sets",
            ),
            mapped(model, KeyScope::Results, Action::SaveResults, "save"),
            mapped(model, KeyScope::Results, Action::DismissResults, "dismiss"),
            back(),
        ],
        Screen::Rollouts => vec![
            hint("⏎", "open"),
            mapped(model, KeyScope::Rollouts, Action::RolloutNew, "new"),
            hint("↑↓", "move"),
            back(),
            essential("?", "help"),
        ],
        Screen::Rollout(_) => {
            let planned = model
                .rollout_page
                .as_ref()
                .and_then(|p| p.object.as_ref())
                .is_some_and(|o| o.state == protocol::firmware::RolloutState::Planned);
            let r = KeyScope::Rollout;
            let mut hints = if planned {
                vec![mapped(model, r, Action::RolloutStart, "start")]
            } else {
                Vec::new()
            };
            hints.extend([
                mapped(model, r, Action::RolloutPause, "pause"),
                mapped(model, r, Action::RolloutResume, "resume"),
                mapped(model, r, Action::RolloutAbort, "abort"),
                mapped(model, r, Action::RolloutRetry, "retry"),
                hint("⏎", "device"),
                hint("Tab", "list"),
                back(),
                essential("?", "help"),
            ]);
            hints
        }
        Screen::Bench => vec![
            hint("↑↓", "port"),
            hint(
                [
                    Action::BenchName,
                    Action::BenchWifi,
                    Action::BenchPass,
                    Action::BenchImage,
                ]
                .map(|a| model.keys.label(KeyScope::Bench, a))
                .join(" "),
                "name, Wi-Fi, pass, image",
            ),
            mapped(model, KeyScope::Bench, Action::Flash, "flash"),
            mapped(model, KeyScope::Bench, Action::Ports, "ports"),
            back(),
        ],
        Screen::NewRollout => match model.new_rollout.as_ref().map(|f| &f.stage) {
            Some(crate::tui::rollouts::FormStage::Plan { .. }) => vec![
                hint_needs("⏎", "create and start", Operation::Rollout),
                essential("Esc", "back to the form"),
            ],
            Some(crate::tui::rollouts::FormStage::Editing) | None => vec![
                hint("Tab", "next field"),
                hint("↑↓", "firmware"),
                hint("←→", "choose"),
                hint("⏎", "dry run"),
                essential("Esc", "cancel"),
            ],
            Some(_) => vec![essential("Esc", "stop waiting")],
        },
    }
}

/// The sort keys of the fleet at `width`: one digit per column on screen.
fn sort_keys(width: u16) -> &'static str {
    const KEYS: [&str; 11] = [
        "-", "1", "1-2", "1-3", "1-4", "1-5", "1-6", "1-7", "1-8", "1-9", "1-0",
    ];
    KEYS[Column::visible(width).len().min(10)]
}

pub(super) fn render_footer(frame: &mut Frame, model: &Model, theme: &Theme, area: Rect) {
    if let Some(Overlay::Prompt { kind, input, error }) = &model.overlay {
        let label = format!(" {}: ", kind.label());
        let mut spans = vec![
            Span::styled(label.clone(), theme.key),
            Span::raw(input.text().to_string()),
        ];
        if let Some(error) = error {
            spans.push(Span::styled(format!("  {error}"), theme.error));
        } else if input.text().is_empty() {
            spans.push(Span::styled(format!(" {}", kind.hint()), theme.dim));
        }
        frame.render_widget(Paragraph::new(Line::from(spans)), area);
        let x = area.x + (label.chars().count() + input.cursor()) as u16;
        frame.set_cursor_position((x.min(area.right().saturating_sub(1)), area.y));
        return;
    }
    let hints = key_hints(model);
    let width = |hint: &Hint| hint.key.chars().count() + hint.what.chars().count() + 3;
    // The ways back and to the help always show; the others in order while they fit.
    let mut left = (area.width as usize).saturating_sub(1)
        - hints
            .iter()
            .filter(|h| h.essential)
            .map(width)
            .sum::<usize>()
            .min((area.width as usize).saturating_sub(1));
    let mut shown = vec![false; hints.len()];
    let mut room = true;
    for (i, hint) in hints.iter().enumerate() {
        if hint.essential {
            shown[i] = true;
        } else if room && width(hint) <= left {
            left -= width(hint);
            shown[i] = true;
        } else {
            // Hints keep their order: once one does not fit, the later ones give way too.
            room = false;
        }
    }
    let mut spans = vec![Span::raw(" ")];
    for (hint, _) in hints.iter().zip(&shown).filter(|(_, shown)| **shown) {
        let allowed = hint.needs.is_none_or(|operation| model.may(operation));
        let (key_style, what_style) = if allowed {
            (theme.key, theme.dim)
        } else {
            let greyed = theme.dim.add_modifier(Modifier::CROSSED_OUT);
            (greyed, greyed)
        };
        spans.push(Span::styled(hint.key.clone(), key_style));
        spans.push(Span::styled(format!(" {}", hint.what), what_style));
        spans.push(Span::raw("  "));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)).style(theme.dim), area);
}
