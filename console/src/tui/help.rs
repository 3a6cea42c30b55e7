//! The `?` help: every key of the current view and every `:` command, in a box that
//! scrolls when the terminal is too short to show it whole (80x24 shows a third of it).

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};
use ratatui::Frame;

use super::model::{Model, Overlay, Screen};
use super::palette;
use super::theme::Theme;

/// The keys of the current view: key and what it does.
fn screen_keys(model: &Model) -> &'static [(&'static str, &'static str)] {
    match model.screen() {
        Screen::Fleet => &[
            ("↑↓ j k", "move; PgUp PgDn g G jump"),
            ("⏎", "open the device"),
            (
                "/",
                "filter: text, field:value, globs (state:offline fw:1.2 name:lamp-*)",
            ),
            (
                "1-9 0",
                "sort by the 1st..10th column on screen; again reverses",
            ),
            ("␣ *", "mark one / all shown, for :set and :call"),
            ("t", "notification tail"),
            ("o", "results of bulk actions and RPC calls"),
            ("a", "analytics: reports over the notification log"),
            ("r", "list devices again"),
            ("R", "firmware rollouts"),
            ("U", "new rollout of the marked devices, else of the filter"),
        ],
        Screen::Device(_) => &[
            (
                "Tab ⇧Tab",
                "choose the pane the arrows scroll (desired, reported, delta, events)",
            ),
            ("↑↓ PgUp PgDn", "scroll it; g G top, bottom"),
            ("e", "edit desired here (^S sends)"),
            ("E", "edit desired in $EDITOR"),
            ("c", "call an RPC from RPC.List (type a name to jump to it)"),
            ("l", "events / logs"),
            ("i", "the device's Sys.GetInfo"),
            ("t", "tail this device"),
            ("u", "push a firmware image to this device, with progress"),
            ("r", "reload"),
        ],
        Screen::Notifications => &[
            ("f ␣", "follow / pause"),
            ("↑↓ PgUp", "scroll (pauses); G follows"),
            ("d", "only one device: its name, id, or the start of either"),
            ("n", "event names: globs; -glob hides (-updated)"),
            (
                "/",
                "filter: name:G -name:G device:D -device:D, a regex; -regex hides",
            ),
            ("x", "clear filters"),
            ("w", "wrap long lines"),
            ("s", "save shown lines as JSON lines"),
            ("c", "clear the buffer"),
        ],
        Screen::Analytics => &[
            ("1-5", "fleet, connectivity, usage, firmware, rpc"),
            ("Tab ← →", "next / previous report"),
            ("r", "range: last hour, last 24 h, all"),
            ("b", "buckets of an hour or a day"),
            ("t", "next table of the report"),
            ("s S", "sort by the next column; reverse"),
            ("↑↓ PgUp", "scroll the table; g G jump"),
        ],
        Screen::Results => &[
            ("↑↓ j k", "move; PgUp PgDn g G jump"),
            ("Tab ⏎", "scroll the value instead of the list, and back"),
            ("[ ] ← →", "older / newer result sets"),
            ("s", "save the set as JSON"),
            ("x", "dismiss the set"),
        ],
        Screen::Rollouts => &[
            ("↑↓ j k", "move; PgUp PgDn g G jump"),
            ("⏎", "open the rollout"),
            (
                "n",
                "new rollout of the fleet's marked devices, else its filter",
            ),
            ("^L", "list again"),
        ],
        Screen::Rollout(_) => &[
            ("Tab", "devices by state / failures"),
            ("↑↓ j k", "move in the list; g G jump"),
            ("⏎", "open the device under the cursor"),
            ("s", "start a planned rollout"),
            ("p r", "pause / resume, a halted one too (asks first)"),
            ("A", "abort: pending devices are skipped (asks first)"),
            ("R", "retry the failed devices in a new rollout"),
        ],
        Screen::Bench => &[
            ("↑↓", "choose the board's serial port; r lists them again"),
            (
                "n w p i",
                "type the name, Wi-Fi network, passphrase, image; ⏎ ends",
            ),
            ("f ⏎", "register, flash, reset, wait until online, open it"),
            ("o", "open the light just flashed"),
        ],
        Screen::NewRollout => &[
            ("Tab ⇧Tab", "next / previous field"),
            ("↑↓", "choose the firmware; move between fields"),
            ("←→ ␣", "change commit and delivery"),
            ("⏎", "dry run: the server's plan; ⏎ again creates"),
            ("Esc", "back; cancel"),
        ],
    }
}

/// One line of the help: a heading, or a key or command and what it does.
enum Item {
    Heading(&'static str),
    Key(&'static str, &'static str),
    Command(String, &'static str),
}

fn items(model: &Model) -> Vec<Item> {
    let mut items = vec![
        Item::Heading("everywhere"),
        Item::Key(":", "command palette (Tab completes)"),
        Item::Key("?", "this help (↑↓ PgUp PgDn scroll it)"),
        Item::Key("Esc", "back, close, clear"),
        Item::Key("Ctrl-C", "quit"),
        Item::Heading("this view"),
    ];
    items.extend(screen_keys(model).iter().map(|(k, w)| Item::Key(k, w)));
    items.push(Item::Heading("commands"));
    for (name, args, what) in palette::COMMANDS {
        items.push(Item::Command(format!(":{name} {args}"), what));
    }
    items
}

/// Lines the help has for the current view.
pub fn len(model: &Model) -> usize {
    items(model).len()
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
    let key_width = 10.min(width / 3);
    let lines: Vec<Line> = items(model)
        .into_iter()
        .map(|item| match item {
            Item::Heading(text) => Line::styled(text, theme.title),
            Item::Key(key, what) => Line::from(vec![
                Span::styled(format!("{key:>key_width$}  "), theme.key),
                Span::raw(what),
            ]),
            Item::Command(command, what) => Line::from(vec![
                Span::styled(format!("  {command:<16} "), theme.key),
                Span::raw(what),
            ]),
        })
        .collect();
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
