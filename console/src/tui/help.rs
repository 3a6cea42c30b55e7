//! The `?` help: every key of the current view and every `:` command, in a box that
//! scrolls when the terminal is too short to show it whole (80x24 shows a third of it).

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::layout::Rect;
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};
use ratatui::Frame;

use super::keymap::{Action, Scope as KeyScope};
use super::model::{Model, Overlay, Screen};
use super::palette;
use super::theme::Theme;
use crate::access::Operation;

/// One key of a view: the key as shown, what it does, and what it asks of the server.
struct ViewKey {
    key: String,
    what: &'static str,
    needs: Option<Operation>,
}

fn fixed(key: &'static str, what: &'static str) -> ViewKey {
    ViewKey {
        key: key.to_string(),
        what,
        needs: None,
    }
}

/// The keys of the current view, those of the key map as configured.
fn screen_keys(model: &Model) -> Vec<ViewKey> {
    let mapped = |scope: KeyScope, keys: &[Action], what: &'static str| {
        let labels: Vec<String> = keys.iter().map(|&a| model.keys.label(scope, a)).collect();
        ViewKey {
            key: labels.join(" "),
            what,
            needs: keys.iter().find_map(|&a| crate::access::key_action(a)),
        }
    };
    let table = |pairs: &[(&'static str, &'static str)]| {
        pairs.iter().map(|&(k, w)| fixed(k, w)).collect::<Vec<_>>()
    };
    match model.screen() {
        Screen::Fleet => {
            let f = KeyScope::Fleet;
            vec![
                fixed("↑↓ j k", "move; PgUp PgDn g G jump"),
                mapped(f, &[Action::Open], "open the device"),
                mapped(
                    f,
                    &[Action::Filter],
                    "filter: text, field:value, globs (state:offline fw:1.2 name:lamp-*)",
                ),
                fixed(
                    "1-9 0",
                    "sort by the 1st..10th column on screen; again reverses",
                ),
                mapped(
                    f,
                    &[Action::Mark, Action::MarkAll],
                    "mark one / all shown, for :set and :call",
                ),
                mapped(f, &[Action::Tail], "notification tail"),
                mapped(
                    f,
                    &[Action::Results],
                    "results of bulk actions and RPC calls",
                ),
                mapped(
                    f,
                    &[Action::Analytics],
                    "analytics: reports over the notification log",
                ),
                mapped(f, &[Action::Reload], "list devices again"),
                mapped(f, &[Action::Rollouts], "firmware rollouts"),
                mapped(
                    f,
                    &[Action::NewRollout],
                    "new rollout of the marked devices, else of the filter",
                ),
                mapped(
                    f,
                    &[Action::Delete],
                    "delete the marked devices, or the one selected (asks)",
                ),
                mapped(f, &[Action::Quit], "quit"),
            ]
        }
        Screen::Device(_) => {
            let d = KeyScope::Device;
            vec![
                fixed(
                    "Tab ⇧Tab",
                    "choose the pane the arrows scroll (desired, reported, delta, events)",
                ),
                fixed("↑↓ PgUp PgDn", "scroll it; g G top, bottom"),
                mapped(d, &[Action::Edit], "edit desired here (^S sends)"),
                mapped(d, &[Action::EditExternal], "edit desired in $EDITOR"),
                mapped(
                    d,
                    &[Action::Call],
                    "call an RPC from RPC.List (type a name to jump to it)",
                ),
                mapped(d, &[Action::Logs], "events / logs"),
                mapped(d, &[Action::Info], "the device's Sys.GetInfo"),
                mapped(
                    d,
                    &[Action::History],
                    "timeline: its events from the server's log (online, offline, shadow diffs, firmware); ↑↓ choose one to see the device as it was then",
                ),
                mapped(d, &[Action::DeviceTail], "tail this device"),
                mapped(
                    d,
                    &[Action::Push],
                    "push a firmware image to this device, with progress",
                ),
                mapped(d, &[Action::DeviceReload], "reload"),
                mapped(d, &[Action::Delete], "delete this device (asks)"),
            ]
        }
        Screen::Notifications => {
            let t = KeyScope::Tail;
            vec![
                ViewKey {
                    key: format!("{} ␣", model.keys.label(t, Action::Follow)),
                    what: "follow / pause",
                    needs: None,
                },
                fixed("↑↓ PgUp", "scroll (pauses); G follows"),
                mapped(
                    t,
                    &[Action::TailDevice],
                    "only one device: its name, id, or the start of either",
                ),
                mapped(
                    t,
                    &[Action::TailNames],
                    "event names: globs; -glob hides (-updated)",
                ),
                mapped(
                    t,
                    &[Action::TailFilter],
                    "filter: name:G -name:G device:D -device:D, a regex; -regex hides",
                ),
                mapped(t, &[Action::ClearFilter], "clear filters"),
                mapped(t, &[Action::Wrap], "wrap long lines"),
                mapped(t, &[Action::Save], "save shown lines as JSON lines"),
                mapped(t, &[Action::ClearTail], "clear the buffer"),
            ]
        }
        Screen::Analytics => {
            let a = KeyScope::Analytics;
            vec![
                fixed("1-5", "fleet, connectivity, usage, firmware, rpc"),
                fixed("Tab ← →", "next / previous report"),
                mapped(a, &[Action::Range], "range: last hour, last 24 h, all"),
                mapped(a, &[Action::Bucket], "buckets of an hour or a day"),
                mapped(a, &[Action::NextTable], "next table of the report"),
                mapped(
                    a,
                    &[Action::SortNext, Action::SortReverse],
                    "sort by the next column; reverse",
                ),
                mapped(
                    a,
                    &[Action::Query],
                    "SQL over the log's tables (events, sessions, switches, ...)",
                ),
                fixed("↑↓ PgUp", "scroll the table; g G jump"),
            ]
        }
        Screen::Results => {
            let r = KeyScope::Results;
            let sets = mapped(
                r,
                &[Action::OlderResults, Action::NewerResults],
                "older / newer result sets",
            );
            vec![
                fixed("↑↓ j k", "move; PgUp PgDn g G jump"),
                fixed("Tab ⏎", "scroll the value instead of the list, and back"),
                ViewKey {
                    key: format!("{} ← →", sets.key),
                    ..sets
                },
                mapped(r, &[Action::SaveResults], "save the set as JSON"),
                mapped(r, &[Action::DismissResults], "dismiss the set"),
            ]
        }
        Screen::Rollouts => {
            let r = KeyScope::Rollouts;
            vec![
                fixed("↑↓ j k", "move; PgUp PgDn g G jump"),
                fixed("⏎", "open the rollout"),
                mapped(
                    r,
                    &[Action::RolloutNew],
                    "new rollout of the fleet's marked devices, else its filter",
                ),
                mapped(r, &[Action::RolloutsReload], "list again"),
            ]
        }
        Screen::Rollout(_) => {
            let r = KeyScope::Rollout;
            vec![
                fixed("Tab", "devices by state / failures"),
                fixed("↑↓ j k", "move in the list; g G jump"),
                fixed("⏎", "open the device under the cursor"),
                mapped(r, &[Action::RolloutStart], "start a planned rollout"),
                mapped(
                    r,
                    &[Action::RolloutPause, Action::RolloutResume],
                    "pause / resume, a halted one too (asks first)",
                ),
                mapped(
                    r,
                    &[Action::RolloutAbort],
                    "abort: pending devices are skipped (asks first)",
                ),
                mapped(
                    r,
                    &[Action::RolloutRetry],
                    "retry the failed devices in a new rollout",
                ),
                mapped(r, &[Action::RolloutReload], "load the rollout again"),
            ]
        }
        Screen::Bench => {
            let b = KeyScope::Bench;
            let flash = mapped(
                b,
                &[Action::Flash],
                "register, flash, reset, wait until online, open it",
            );
            vec![
                ViewKey {
                    key: "↑↓".into(),
                    what: "choose the board's serial port",
                    needs: None,
                },
                mapped(b, &[Action::Ports], "list the serial ports again"),
                mapped(
                    b,
                    &[
                        Action::BenchName,
                        Action::BenchWifi,
                        Action::BenchPass,
                        Action::BenchImage,
                    ],
                    "type the name, Wi-Fi network, passphrase, image; ⏎ ends",
                ),
                ViewKey {
                    key: format!("{} ⏎", flash.key),
                    ..flash
                },
                mapped(b, &[Action::BenchOpen], "open the light just flashed"),
            ]
        }
        Screen::NewRollout => table(&[
            ("Tab ⇧Tab", "next / previous field"),
            ("↑↓", "choose the firmware; move between fields"),
            ("←→ ␣", "change commit and delivery"),
            ("⏎", "dry run: the server's plan; ⏎ again creates"),
            ("Esc", "back; cancel"),
        ]),
    }
}

/// One line of the help: a heading, or a key or command and what it does.
enum Item {
    Heading(&'static str),
    Key(ViewKey),
    Command(String, &'static str, Option<Operation>),
}

fn items(model: &Model) -> Vec<Item> {
    let global = KeyScope::Global;
    let mut items = vec![
        Item::Heading("everywhere"),
        Item::Key(ViewKey {
            key: model.keys.label(global, Action::Palette),
            what: "command palette (Tab completes)",
            needs: None,
        }),
        Item::Key(ViewKey {
            key: model.keys.label(global, Action::Help),
            what: "this help (↑↓ PgUp PgDn scroll it)",
            needs: None,
        }),
        Item::Key(fixed("Esc", "back, close, clear")),
        Item::Key(fixed("Ctrl-C", "quit")),
        Item::Heading("this view"),
    ];
    items.extend(screen_keys(model).into_iter().map(Item::Key));
    items.push(Item::Heading("commands"));
    for (name, args, what) in palette::COMMANDS {
        items.push(Item::Command(
            format!(":{name} {args}"),
            what,
            crate::access::palette_command(name),
        ));
    }
    items
}

/// Inner width of the help box when the terminal is `size`.
fn inner_width(size: (u16, u16)) -> usize {
    (size.0 as usize * 94 / 100).saturating_sub(2)
}

/// What a greyed entry adds: the scope it needs (PROTOCOL §11).
fn needs_note(model: &Model, needs: Option<Operation>) -> Option<String> {
    let operation = needs.filter(|&operation| !model.may(operation))?;
    Some(format!(" (needs {})", operation.needs().as_str()))
}

/// `head` then `what` wrapped to `width`, its later lines under its first.
fn wrapped(
    out: &mut Vec<Line<'static>>,
    head: String,
    head_style: Style,
    what: &str,
    what_style: Style,
    width: usize,
) {
    let indent = head.chars().count();
    let room = width.saturating_sub(indent).max(8);
    for (i, part) in super::view::wrap_words(what, room).into_iter().enumerate() {
        let lead = if i == 0 {
            Span::styled(head.clone(), head_style)
        } else {
            Span::raw(" ".repeat(indent))
        };
        out.push(Line::from(vec![lead, Span::styled(part, what_style)]));
    }
}

/// The help's lines at inner width `width`: long descriptions wrap under themselves.
fn lines(model: &Model, theme: &Theme, width: usize) -> Vec<Line<'static>> {
    let key_width = 10.min(width / 3);
    let greyed = theme.dim.add_modifier(Modifier::CROSSED_OUT);
    let mut out = Vec::new();
    for item in items(model) {
        let (head, what, note) = match item {
            Item::Heading(text) => {
                out.push(Line::styled(text, theme.title));
                continue;
            }
            Item::Key(key) => (
                format!("{:>key_width$}  ", key.key),
                key.what,
                needs_note(model, key.needs),
            ),
            Item::Command(command, what, needs) => {
                (format!("  {command:<16} "), what, needs_note(model, needs))
            }
        };
        let (head_style, what_style) = match note {
            Some(_) => (greyed, theme.dim),
            None => (theme.key, Style::default()),
        };
        let what = format!("{what}{}", note.as_deref().unwrap_or_default());
        wrapped(&mut out, head, head_style, &what, what_style, width);
    }
    out
}

/// Lines the help has for the current view at the current size.
pub fn len(model: &Model) -> usize {
    lines(model, &Theme::monochrome(), inner_width(model.size)).len()
}

/// Inner rows of the help box at `size`: the body less its border.
fn rows(size: (u16, u16)) -> usize {
    size.1.saturating_sub(super::model::CHROME_ROWS - 1 + 2) as usize
}

/// Keys while the help is open: scrolling keys scroll, the others close it.
pub fn key(model: &mut Model, scroll: usize, key: KeyEvent) {
    let most = len(model).saturating_sub(rows(model.size));
    let page = rows(model.size).max(1);
    let control = key.modifiers.contains(KeyModifiers::CONTROL);
    let next = match key.code {
        KeyCode::Down | KeyCode::Char('j') => scroll + 1,
        KeyCode::Up | KeyCode::Char('k') => scroll.saturating_sub(1),
        KeyCode::PageDown | KeyCode::Char(' ') => scroll + page,
        KeyCode::Char('f') | KeyCode::Char('d') if control => scroll + page,
        KeyCode::PageUp => scroll.saturating_sub(page),
        KeyCode::Char('b') | KeyCode::Char('u') if control => scroll.saturating_sub(page),
        KeyCode::Home | KeyCode::Char('g') => 0,
        KeyCode::End | KeyCode::Char('G') => most,
        // Any other key closes, as people try `q` and Esc first.
        _ => return,
    };
    model.overlay = Some(Overlay::Help {
        scroll: next.min(most),
    });
}

/// Draws the help over `area`, from line `scroll`.
pub fn render(frame: &mut Frame, model: &Model, scroll: usize, theme: &Theme, area: Rect) {
    let popup = super::view::centered(area, 94, 100);
    frame.render_widget(Clear, popup);
    let width = popup.width.saturating_sub(2) as usize;
    let lines = lines(model, theme, width);
    let height = popup.height.saturating_sub(2) as usize;
    let total = lines.len();
    let scroll = scroll.min(total.saturating_sub(height));
    let title = if total > height {
        format!(
            " help · {}-{} of {} · ↑↓ PgDn scroll · Esc closes ",
            scroll + 1,
            (scroll + height).min(total),
            total
        )
    } else {
        " help · any key closes ".to_string()
    };
    let block = Block::bordered().title(Span::styled(title, theme.title));
    let shown: Vec<Line> = lines.into_iter().skip(scroll).take(height).collect();
    frame.render_widget(Paragraph::new(shown).block(block), popup);
}
