//! The analytics view: keys and worker messages through `update()`, snapshots drawn from
//! reports computed over a small hand-written log, and the worker itself following a real
//! log directory (appends, rotation, a line still being written) and pulling a real
//! server's log over `POST /logs`.

mod logs;
mod support;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crossterm::event::KeyCode;
use herd_analytics::{Bucket, Log, Report};
use herd_console::tui::analytics::worker::{Source, Timing, Worker};
use herd_console::tui::analytics::{
    report_data, Event, Progress, Range, ReportData, Request, Selection, Stage,
};
use herd_console::tui::model::Screen;
use herd_console::tui::{Command, Model, Msg};
use logs::{light, line};
use serde_json::{json, Value};
use support::*;
use tokio::sync::mpsc;

fn firmware(offset: i64, id: &str, version: &str) -> String {
    line(
        offset,
        id,
        "updated",
        json!({"id": id, "online": true, "info": {"fw_version": version},
               "shadow": {"state": {"reported": {"ota": {"fw_version": version, "status": 0}}}}}),
    )
}

/// Three lamps and a porch light over five hours: sessions with a flap, lights switched
/// in the evening, a firmware update on two devices, RPC calls both ways, plus one invalid
/// line and one event no report knows.
fn sample_log() -> String {
    let mut lines = Vec::new();
    for id in ["lamp-1", "lamp-2", "lamp-3", "porch"] {
        lines.push(line(0, id, "online", Value::Null));
        lines.push(firmware(5, id, "1.2.0"));
        lines.push(light(10, id, false));
    }
    lines.extend([
        light(1800, "lamp-1", true),
        light(3000, "lamp-1", false),
        light(3700, "lamp-2", true),
        line(4000, "lamp-3", "offline", Value::Null),
        line(4100, "lamp-3", "online", Value::Null),
        line(
            4200,
            "lamp-3",
            "rpc.in.Sys.Reboot",
            json!({"delay_ms": 100}),
        ),
        line(4300, "lamp-3", "offline", Value::Null),
        line(
            5400,
            "porch",
            "rpc.out.Log",
            json!({"fd": 1, "data": "hello\n"}),
        ),
        light(7300, "porch", true),
        light(7400, "lamp-2", false),
        line(8000, "lamp-1", "rpc.in.Sys.GetInfo", Value::Null),
        line(
            8100,
            "lamp-1",
            "rpc.out.Dash.Shadow.Update",
            json!({"state": {"reported": {"ota": {"fw_version": "1.3.0", "status": 1}}}}),
        ),
        firmware(8200, "lamp-1", "1.3.0"),
        line(
            8300,
            "lamp-2",
            "rpc.out.Dash.Shadow.Update",
            json!({"state": {"reported": {"ota": {"fw_version": "1.3.0", "status": 3}}}}),
        ),
        light(10_800, "lamp-1", true),
        line(11_000, "porch", "custom.thing", Value::Null),
        "not a notification\n".to_string(),
        light(14_000, "porch", false),
        line(17_999, "lamp-2", "offline", Value::Null),
    ]);
    lines.concat()
}

/// The sample's lamps are devices 1-3 of the test fleet, which the view names; the porch
/// light is not in the fleet and keeps its id.
fn sample(report: Report) -> ReportData {
    let mut text = sample_log();
    for i in 1..=3 {
        text = text.replace(&format!("\"lamp-{i}\""), &format!("\"{}\"", device(i).id));
    }
    let mut log = Log::new(herd_console::tui::analytics::worker::need());
    log.push(text.as_bytes());
    let selection = Selection {
        report,
        ..Selection::default()
    };
    report_data(&log, selection, NOW).expect("the sample computes")
}

/// The analytics view open on `report` with its data in.
fn analytics(report: Report, size: (u16, u16)) -> Model {
    let mut model = loaded(4, false, size);
    send(&mut model, key(KeyCode::Char('a')));
    send(
        &mut model,
        Msg::Analytics(Event::Started {
            source: "/var/lib/herd".into(),
        }),
    );
    let index = Report::ALL
        .iter()
        .position(|r| *r == report)
        .expect("known");
    send(
        &mut model,
        key(KeyCode::Char(char::from(b'1' + index as u8))),
    );
    send(
        &mut model,
        Msg::Analytics(Event::Report(Box::new(sample(report)))),
    );
    model
}

fn show(report: Report, range: Range, bucket: Bucket) -> Command {
    Command::Analytics(Request::Show(Selection {
        report,
        range,
        bucket,
    }))
}

// --- the model -------------------------------------------------------------------------

#[test]
fn the_view_opens_from_the_fleet_and_the_palette_and_tells_the_worker() {
    let mut model = loaded(3, false, (80, 24));
    let commands = send(&mut model, key(KeyCode::Char('a')));
    assert_eq!(model.screen(), &Screen::Analytics);
    assert_eq!(
        commands,
        vec![show(Report::Fleet, Range::All, Bucket::Hour)]
    );
    assert!(screen(&model, 80, 24).contains("Fleet › Analytics"));
    assert!(screen(&model, 80, 24).contains("Computing the fleet report"));

    let commands = send(&mut model, key(KeyCode::Esc));
    assert_eq!(model.screen(), &Screen::Fleet);
    assert_eq!(commands, vec![Command::Analytics(Request::Hide)]);

    send(&mut model, key(KeyCode::Char(':')));
    chars(&mut model, "report");
    let commands = send(&mut model, key(KeyCode::Enter));
    assert_eq!(model.screen(), &Screen::Analytics);
    assert_eq!(
        commands,
        vec![show(Report::Fleet, Range::All, Bucket::Hour)]
    );
    // Leaving by the palette also tells the worker.
    send(&mut model, key(KeyCode::Char(':')));
    chars(&mut model, "tail");
    let commands = send(&mut model, key(KeyCode::Enter));
    assert_eq!(model.screen(), &Screen::Notifications);
    assert_eq!(commands, vec![Command::Analytics(Request::Hide)]);

    // The help lists the view's keys, the palette lists the view.
    send(&mut model, key(KeyCode::Esc));
    send(&mut model, key(KeyCode::Char('?')));
    let help = screen(&model, 200, 50);
    assert!(
        help.contains("analytics: reports over the notification log"),
        "{help}"
    );
    assert!(help.contains(":analytics"), "{help}");
}

#[test]
fn keys_change_what_the_worker_computes() {
    let mut model = analytics(Report::Fleet, (80, 24));
    assert_eq!(
        send(&mut model, key(KeyCode::Char('3'))),
        vec![show(Report::Usage, Range::All, Bucket::Hour)]
    );
    assert_eq!(
        send(&mut model, key(KeyCode::Tab)),
        vec![show(Report::Firmware, Range::All, Bucket::Hour)]
    );
    assert_eq!(
        send(&mut model, key(KeyCode::Right)),
        vec![show(Report::Rpc, Range::All, Bucket::Hour)]
    );
    assert_eq!(
        send(&mut model, key(KeyCode::Right)),
        vec![show(Report::Fleet, Range::All, Bucket::Hour)],
        "wraps around"
    );
    assert_eq!(
        send(&mut model, key(KeyCode::Left)),
        vec![show(Report::Rpc, Range::All, Bucket::Hour)]
    );
    assert_eq!(
        send(&mut model, key(KeyCode::Char('r'))),
        vec![show(Report::Rpc, Range::LastHour, Bucket::Hour)]
    );
    assert_eq!(
        send(&mut model, key(KeyCode::Char('r'))),
        vec![show(Report::Rpc, Range::LastDay, Bucket::Hour)]
    );
    assert_eq!(
        send(&mut model, key(KeyCode::Char('b'))),
        vec![show(Report::Rpc, Range::LastDay, Bucket::Day)]
    );
    // Keys that change nothing send nothing; the same report again neither.
    assert!(send(&mut model, key(KeyCode::Char('5'))).is_empty());
    assert!(send(&mut model, key(KeyCode::Char('z'))).is_empty());
    let shown = screen(&model, 80, 24);
    assert!(shown.contains("last 24 h · by day"), "{shown}");
}

#[test]
fn progress_reports_and_failures_update_the_view() {
    let mut model = loaded(3, false, (80, 24));
    send(&mut model, key(KeyCode::Char('a')));
    send(
        &mut model,
        Msg::Analytics(Event::Started {
            source: "server".into(),
        }),
    );
    // A big log loads: the gauge moves, and keys are handled meanwhile, each at once.
    for done in [0, 40, 80] {
        send(
            &mut model,
            Msg::Analytics(Event::Progress(Progress {
                stage: Stage::Reading,
                done,
                total: Some(200),
            })),
        );
    }
    let shown = screen(&model, 80, 24);
    assert!(shown.contains("reading 40%"), "{shown}");
    assert!(shown.contains("Reading the notification log"), "{shown}");
    assert_eq!(
        send(&mut model, key(KeyCode::Char('2'))),
        vec![show(Report::Connectivity, Range::All, Bucket::Hour)]
    );
    assert_eq!(
        send(&mut model, key(KeyCode::Char('1'))),
        vec![show(Report::Fleet, Range::All, Bucket::Hour)]
    );
    assert!(model.analytics.pending());

    // A report of an earlier selection is kept but not shown as this one.
    send(
        &mut model,
        Msg::Analytics(Event::Report(Box::new(sample(Report::Connectivity)))),
    );
    assert!(model.analytics.progress.is_none());
    assert!(model.analytics.pending());
    assert!(screen(&model, 80, 24).contains("Computing the fleet report"));

    send(
        &mut model,
        Msg::Analytics(Event::Report(Box::new(sample(Report::Fleet)))),
    );
    assert!(!model.analytics.pending());
    let shown = screen(&model, 80, 24);
    assert!(shown.contains("notifications by event"), "{shown}");
    assert!(
        shown.contains("31 lines · 0 torn · 1 invalid · 1 unknown"),
        "{shown}"
    );

    // A failed pull shows in the view's status line; the old report stays.
    send(
        &mut model,
        Msg::Analytics(Event::Failed(
            "cannot pull the log from the server: connection refused".into(),
        )),
    );
    let shown = screen(&model, 80, 24);
    assert!(
        shown.contains("✗ cannot pull the log from the server"),
        "{shown}"
    );
    assert!(shown.contains("notifications by event"), "{shown}");
    send(
        &mut model,
        Msg::Analytics(Event::Report(Box::new(sample(Report::Fleet)))),
    );
    assert!(model.analytics.error.is_none());
    assert!(!screen(&model, 80, 24).contains("✗"));

    // Before any report, a failure is the whole message.
    let mut model = loaded(3, false, (80, 24));
    send(&mut model, key(KeyCode::Char('a')));
    send(
        &mut model,
        Msg::Analytics(Event::Failed("/nope/notification.log: denied".into())),
    );
    let shown = screen(&model, 80, 24);
    assert!(shown.contains("Trying again by itself"), "{shown}");
}

#[test]
fn tables_scroll_and_cycle() {
    // A short terminal: no charts, three rows of the five-bucket table at a time.
    let size = (80, 10);
    let mut model = analytics(Report::Connectivity, size);
    assert_eq!(model.analytics.table, 0);
    assert!(screen(&model, size.0, size.1).contains(" devices · table 1/2"));
    send(&mut model, key(KeyCode::Char('t')));
    let shown = screen(&model, size.0, size.1);
    assert!(
        shown.contains(" buckets · table 2/2 · rows 1-3 of 5"),
        "{shown}"
    );
    assert!(!shown.contains("uptime % by device"), "no room for charts");
    assert_eq!(herd_console::tui::analytics::table_rows(size), 3);
    send(&mut model, key(KeyCode::Char('j')));
    assert!(screen(&model, size.0, size.1).contains("rows 2-4 of 5"));
    send(&mut model, key(KeyCode::Char('G')));
    assert_eq!(model.analytics.offset, 2);
    let shown = screen(&model, size.0, size.1);
    assert!(shown.contains("rows 3-5 of 5"), "{shown}");
    assert!(shown.contains("2023-11-15 03:00"), "{shown}");
    assert!(!shown.contains("2023-11-15 00:00"), "{shown}");
    send(&mut model, key(KeyCode::Down));
    assert_eq!(model.analytics.offset, 2, "no scrolling past the end");
    send(&mut model, key(KeyCode::Char('k')));
    assert_eq!(model.analytics.offset, 1);
    send(&mut model, key(KeyCode::Char('g')));
    assert_eq!(model.analytics.offset, 0);
    send(&mut model, key(KeyCode::Char('t')));
    assert_eq!(model.analytics.table, 0, "back to the first table");
    // Another report starts at its first table.
    send(&mut model, key(KeyCode::Char('t')));
    send(&mut model, key(KeyCode::Char('3')));
    assert_eq!((model.analytics.table, model.analytics.offset), (0, 0));
}

#[test]
fn tables_sort_by_any_column_and_keep_it_as_reports_arrive() {
    let size = (200, 50);
    let mut model = analytics(Report::Connectivity, size);
    // The device column of the table's rows, top to bottom (the chart's lines start
    // with its border).
    let drawn = |model: &Model| -> Vec<String> {
        screen(model, size.0, size.1)
            .lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .filter(|cells| {
                cells.len() == 8 && (cells[0].starts_with("lamp-") || cells[0] == "porch")
            })
            .map(|cells| cells[0].to_string())
            .collect()
    };
    let as_reported = drawn(&model);
    assert_eq!(as_reported, ["lamp-001", "lamp-002", "lamp-003", "porch"]);

    // First the device column, A to Z, then sessions: numbers biggest first.
    send(&mut model, key(KeyCode::Char('s')));
    assert!(screen(&model, size.0, size.1).contains("device▲"));
    assert_eq!(drawn(&model), as_reported);
    send(&mut model, key(KeyCode::Char('S')));
    assert_eq!(drawn(&model), ["porch", "lamp-003", "lamp-002", "lamp-001"]);
    send(&mut model, key(KeyCode::Char('s')));
    let shown = screen(&model, size.0, size.1);
    assert!(shown.contains("sessions▼"), "{shown}");
    assert_eq!(drawn(&model)[0], "lamp-003", "two sessions");
    // online_s, then reversed: the least online first.
    send(&mut model, key(KeyCode::Char('s')));
    send(&mut model, key(KeyCode::Char('S')));
    assert!(screen(&model, size.0, size.1).contains("online_s▲"));
    assert_eq!(drawn(&model)[0], "lamp-003");

    // A new report of the same selection is drawn in the same order.
    send(
        &mut model,
        Msg::Analytics(Event::Report(Box::new(sample(Report::Connectivity)))),
    );
    assert_eq!(drawn(&model)[0], "lamp-003");

    // Past the last column: the report's order again.
    for _ in 0..6 {
        send(&mut model, key(KeyCode::Char('s')));
    }
    assert_eq!(model.analytics.sort, None);
    assert_eq!(drawn(&model), as_reported);
    assert!(!screen(&model, size.0, size.1).contains('▲'));

    // Another table starts in the report's order.
    send(&mut model, key(KeyCode::Char('s')));
    send(&mut model, key(KeyCode::Char('t')));
    assert_eq!(model.analytics.sort, None);
}

// --- snapshots -------------------------------------------------------------------------

const SIZES: [(u16, u16); 2] = [(80, 24), (200, 50)];

fn snapshot(name: &str, scene: impl Fn((u16, u16)) -> Model) {
    for (width, height) in SIZES {
        let model = scene((width, height));
        let terminal = render(&model, width, height);
        insta::assert_snapshot!(format!("{name}_{width}x{height}"), terminal.backend());
    }
}

#[test]
fn every_report_drawn() {
    for report in Report::ALL {
        snapshot(&format!("analytics_{report}"), |size| {
            analytics(report, size)
        });
    }
}

#[test]
fn small_terminals() {
    // The smallest size drawn: tabs, the accounting, and what rows of the table fit.
    for report in [Report::Fleet, Report::Usage] {
        let model = analytics(report, (40, 8));
        insta::assert_snapshot!(
            format!("analytics_{report}_40x8"),
            render(&model, 40, 8).backend()
        );
    }
    // Below it, the console says so, as every view does.
    let model = analytics(Report::Usage, (20, 5));
    insta::assert_snapshot!("analytics_20x5", render(&model, 20, 5).backend());
}

#[test]
fn loading_and_failing_drawn() {
    snapshot("analytics_loading", |size| {
        let mut model = analytics(Report::Usage, size);
        send(&mut model, key(KeyCode::Char('b')));
        send(
            &mut model,
            Msg::Analytics(Event::Progress(Progress {
                stage: Stage::Reading,
                done: 3 << 20,
                total: Some(8 << 20),
            })),
        );
        model
    });
    snapshot("analytics_failed", |size| {
        let mut model = analytics(Report::Rpc, size);
        send(
            &mut model,
            Msg::Analytics(Event::Failed(
                "cannot pull the log from the server: 503 unavailable".into(),
            )),
        );
        model
    });
}

/// The SQL prompt over the sample's tables: typed, answered by the worker's message, and
/// scrolled; a query Polars refuses shows its error in place of the table.
#[cfg(feature = "query")]
#[test]
fn query_prompt_drawn() {
    use crossterm::event::{KeyEvent, KeyModifiers};
    use herd_console::tui::analytics::query_table;
    // Through the console's own key handling: `e` opens the prompt, the typed keys go to
    // it (not to the view: `s`, `t` and `e` are letters of the SQL), Enter runs it.
    let typed = |model: &mut Model, sql: &str| {
        let key = |code| Msg::Key(KeyEvent::new(code, KeyModifiers::NONE));
        send(model, key(KeyCode::Char('e')));
        for c in sql.chars() {
            assert!(send(model, key(KeyCode::Char(c))).is_empty());
        }
        let commands = send(model, key(KeyCode::Enter));
        let Some(sql) = commands.iter().find_map(|command| match command {
            Command::Analytics(Request::Query(sql)) => Some(sql.clone()),
            _ => None,
        }) else {
            panic!("Enter runs the query: {commands:?}");
        };
        let mut log = Log::new(herd_console::tui::analytics::worker::need());
        log.push(sample_log().as_bytes());
        herd_analytics::query::query(&log, &sql)
            .map_err(|e| e.to_string())
            .and_then(|frame| query_table(&frame))
            .map(Box::new)
    };
    let size = (80, 24);
    let mut model = analytics(Report::Usage, size);
    let answer = typed(
        &mut model,
        "SELECT id, COUNT(*) AS switches, SUM(CASE WHEN \"on\" THEN 1 ELSE 0 END) AS ons \
         FROM switches GROUP BY id ORDER BY id",
    );
    assert!(answer.is_ok(), "{answer:?}");
    send(&mut model, Msg::Analytics(Event::Query(answer)));
    insta::assert_snapshot!("analytics_query_80x24", render(&model, 80, 24).backend());

    let mut model = analytics(Report::Usage, size);
    let answer = typed(&mut model, "SELECT nothing FROM nowhere");
    assert!(answer.is_err());
    send(&mut model, Msg::Analytics(Event::Query(answer)));
    insta::assert_snapshot!(
        "analytics_query_error_80x24",
        render(&model, 80, 24).backend()
    );
}

// --- the worker ------------------------------------------------------------------------

const WAIT: Duration = herd_testkit::WAIT;

/// Short intervals so the tests do not idle; nothing asserts on them.
fn quick() -> Timing {
    Timing {
        poll: Duration::from_millis(200),
        pull: Duration::from_millis(200),
        debounce: Duration::from_millis(100),
        settle: Duration::from_millis(50),
        moving_range: Duration::from_secs(30),
    }
}

fn clock() -> f64 {
    NOW
}

/// The next report that satisfies `check`, skipping progress and older reports.
async fn report_where(
    messages: &mut mpsc::Receiver<Msg>,
    what: &str,
    check: impl Fn(&ReportData) -> bool,
) -> ReportData {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last = None;
    loop {
        match tokio::time::timeout_at(deadline, messages.recv()).await {
            Ok(Some(Msg::Analytics(Event::Report(data)))) => {
                if check(&data) {
                    return *data;
                }
                last = Some(data);
            }
            Ok(Some(Msg::Analytics(Event::Failed(message)))) => {
                panic!("waiting for {what}, the worker failed: {message}")
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("the worker stopped before {what}"),
            Err(_) => panic!("timed out waiting for {what}; last report: {last:#?}"),
        }
    }
}

fn cell<'a>(data: &'a ReportData, table: &str, row: usize, column: &str) -> &'a str {
    let table = data.tables.iter().find(|t| t.name == table).expect("table");
    let index = table
        .columns
        .iter()
        .position(|c| c == column)
        .expect("column");
    &table.rows[row][index]
}

fn append(path: &Path, text: &str) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open the log");
    file.write_all(text.as_bytes()).expect("append");
    file.flush().expect("flush");
}

fn selection(report: Report) -> Selection {
    Selection {
        report,
        ..Selection::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_follows_a_growing_rotating_log_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let current = dir.path().join("notification.log");
    // The store's files beside the log change all the time; they are not the log.
    std::fs::write(dir.path().join("herd.db"), "").expect("write");
    append(
        &current,
        &[
            line(0, "lamp", "online", Value::Null),
            line(0, "porch", "online", Value::Null),
            light(60, "lamp", true),
        ]
        .concat(),
    );
    let (sender, mut messages) = mpsc::channel(64);
    // With a parse cache: files the follower reads again after a deletion come from it.
    let cache = tempfile::tempdir().expect("tempdir");
    let worker = Worker::start_with(
        Source::Local {
            paths: vec![dir.path().to_path_buf()],
            cache: Some(cache.path().to_path_buf()),
        },
        sender,
        quick(),
        clock,
    );
    match tokio::time::timeout(WAIT, messages.recv()).await {
        Ok(Some(Msg::Analytics(Event::Started { source }))) => {
            assert_eq!(source, dir.path().display().to_string())
        }
        other => panic!("expected the start, got {other:?}"),
    }
    worker.request(Request::Show(selection(Report::Fleet)));
    let first = report_where(&mut messages, "the first report", |_| true).await;
    assert_eq!(first.stats.lines, 3);
    assert_eq!(cell(&first, "summary", 0, "devices_seen"), "2");
    assert_eq!(cell(&first, "summary", 0, "notifications"), "3");

    // Appended lines arrive without asking.
    append(
        &current,
        &[
            light(120, "lamp", false),
            line(180, "porch", "offline", Value::Null),
        ]
        .concat(),
    );
    let grown = report_where(&mut messages, "the appended lines", |d| d.stats.lines == 5).await;
    assert_eq!(cell(&grown, "summary", 0, "notifications"), "5");
    assert_eq!(cell(&grown, "summary", 0, "online_now"), "1");

    // Rotation: the file moves away and a new one starts; nothing is read twice.
    std::fs::rename(&current, dir.path().join("notification.log.2023-11-14")).expect("rotate");
    append(&current, &line(240, "desk", "online", Value::Null));
    let rotated = report_where(&mut messages, "the rotated set", |d| d.stats.lines == 6).await;
    assert_eq!(cell(&rotated, "summary", 0, "devices_seen"), "3");
    assert_eq!(cell(&rotated, "summary", 0, "notifications"), "6");
    assert_eq!(rotated.stats.torn_lines, 0);

    // Half a line being written is not a line yet: switching reports reads the log first
    // and still counts six.
    let next = line(300, "desk", "offline", Value::Null);
    let (head, tail) = next.split_at(25);
    append(&current, head);
    worker.request(Request::Show(selection(Report::Connectivity)));
    let pending = report_where(&mut messages, "the connectivity report", |d| {
        d.selection.report == Report::Connectivity
    })
    .await;
    assert_eq!(pending.stats.lines, 6, "the half line is not counted");
    assert_eq!(pending.stats.torn_lines, 0, "nor torn: it is being written");
    append(&current, tail);
    let completed = report_where(&mut messages, "the completed line", |d| d.stats.lines == 7).await;
    assert_eq!(completed.selection.report, Report::Connectivity);
    assert_eq!(completed.stats.invalid_lines, 0, "the halves joined");
    let desk = completed.tables[0]
        .rows
        .iter()
        .find(|row| row[0] == "desk")
        .expect("desk's row");
    assert_eq!(desk[1], "1", "one session: {desk:?}");

    // Hidden, the worker does nothing; shown again, it catches up at once.
    worker.request(Request::Hide);
    append(&current, &line(360, "desk", "online", Value::Null));
    worker.request(Request::Show(selection(Report::Fleet)));
    let caught_up = report_where(&mut messages, "the catch-up", |d| {
        d.selection.report == Report::Fleet && d.stats.lines == 8
    })
    .await;
    assert_eq!(cell(&caught_up, "summary", 0, "notifications"), "8");

    // Old files deleted by retention: the log is what the directory holds again.
    std::fs::remove_file(dir.path().join("notification.log.2023-11-14")).expect("delete");
    let pruned = report_where(&mut messages, "the pruned log", |d| d.stats.lines == 3).await;
    assert_eq!(cell(&pruned, "summary", 0, "devices_seen"), "1");
    drop(worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_follows_a_named_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("exported.log");
    append(&file, &line(0, "lamp", "online", Value::Null));
    let (sender, mut messages) = mpsc::channel(64);
    let worker = Worker::start_with(
        Source::Local {
            paths: vec![file.clone()],
            cache: None,
        },
        sender,
        quick(),
        clock,
    );
    worker.request(Request::Show(selection(Report::Fleet)));
    report_where(&mut messages, "the first report", |d| d.stats.lines == 1).await;
    append(&file, &line(60, "lamp", "offline", Value::Null));
    report_where(&mut messages, "the appended line", |d| d.stats.lines == 2).await;
    // Replaced by another file: read again from its start.
    std::fs::write(&file, line(0, "porch", "online", Value::Null)).expect("replace");
    let replaced = report_where(&mut messages, "the replaced file", |d| d.stats.lines == 1).await;
    assert_eq!(cell(&replaced, "busiest", 0, "id"), "porch");
}

/// The worker's next answer to a query.
#[cfg(feature = "query")]
async fn query_answer(
    messages: &mut mpsc::Receiver<Msg>,
) -> Result<Box<herd_console::tui::analytics::TableData>, String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, messages.recv()).await {
            Ok(Some(Msg::Analytics(Event::Query(answer)))) => return answer,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the worker stopped"),
            Err(_) => panic!("timed out waiting for the answer"),
        }
    }
}

/// The worker answers a query over the log it follows, lines appended since included; a
/// query Polars refuses is an answer too, and the worker goes on.
#[cfg(feature = "query")]
#[tokio::test]
async fn the_worker_answers_queries_over_the_log_it_follows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("notification.log");
    append(&file, &line(0, "lamp", "online", Value::Null));
    let (sender, mut messages) = mpsc::channel(64);
    let worker = Worker::start_with(
        Source::Local {
            paths: vec![dir.path().to_path_buf()],
            cache: None,
        },
        sender,
        quick(),
        clock,
    );
    worker.request(Request::Show(selection(Report::Fleet)));
    report_where(&mut messages, "the first report", |d| d.stats.lines == 1).await;
    append(&file, &line(60, "lamp", "offline", Value::Null));
    report_where(&mut messages, "the appended line", |d| d.stats.lines == 2).await;
    worker.request(Request::Query("SELECT id, seconds FROM sessions".into()));
    let table = query_answer(&mut messages).await.expect("the query runs");
    assert_eq!(table.columns, ["id", "seconds"]);
    assert_eq!(table.rows, [["lamp", "60"]]);
    worker.request(Request::Query("SELECT * FROM nowhere".into()));
    let error = query_answer(&mut messages)
        .await
        .expect_err("no such table");
    assert!(error.contains("nowhere"), "{error}");
    append(&file, &line(120, "lamp", "online", Value::Null));
    report_where(&mut messages, "a report after the failed query", |d| {
        d.stats.lines == 3
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_pulls_the_servers_log_and_reports_failures() {
    let mut server = herd_testkit::TestServer::start().await;
    let client = server.client.clone();
    let (_, token) = server.create_device("lamp").await;
    let device = herd_testkit::SimDevice::connect(&server.ws_base, &token).await;
    let expected = || async { herd_testkit::visible_log_lines(&client).await as u64 };

    let (sender, mut messages) = mpsc::channel(64);
    let worker = Worker::start_with(
        Source::Remote {
            client: client.clone(),
            runtime: tokio::runtime::Handle::current(),
        },
        sender,
        quick(),
        clock,
    );
    worker.request(Request::Show(selection(Report::Fleet)));
    let logged = expected().await;
    assert!(logged >= 2, "created and online at least");
    let mut first = report_where(&mut messages, "the pulled report", |d| {
        d.stats.lines >= logged
    })
    .await;
    // What the worker pulled is what the server holds, computed as `herd report` would.
    // The device's own lines may still be landing: compare once both saw the same log.
    loop {
        let mut log = Log::new(herd_console::tui::analytics::worker::need());
        herd_console::logsource::pull(&client, &mut log, 0, |_| {})
            .await
            .expect("pull");
        let direct = report_data(&log, selection(Report::Fleet), NOW).expect("computes");
        if direct.stats.lines == first.stats.lines {
            assert_eq!(first, direct);
            break;
        }
        first = report_where(&mut messages, "the rest of the log", |d| {
            d.stats.lines >= direct.stats.lines
        })
        .await;
    }
    let pulled_lines = first.stats.lines;
    assert_eq!(cell(&first, "summary", 0, "devices_seen"), "1");

    // New lines are pulled on the timer.
    server.create_device("porch").await;
    let grown = report_where(&mut messages, "the new device", |d| {
        cell(d, "summary", 0, "devices_seen") == "2"
    })
    .await;
    assert!(grown.stats.lines > pulled_lines);
    assert_eq!(grown.stats.lines, expected().await);

    // The server goes away: the failure is shown; when it is back, a report replaces the
    // failure even if the log did not change.
    drop(device);
    server.stop().await;
    loop {
        match tokio::time::timeout(WAIT, messages.recv()).await {
            Ok(Some(Msg::Analytics(Event::Failed(message)))) => {
                assert!(message.starts_with("cannot pull the log"), "{message}");
                break;
            }
            Ok(Some(_)) => {}
            other => panic!("expected a failure, got {other:?}"),
        }
    }
    server.start_again().await;
    // Failures of pulls made before the restart may still be queued.
    let back = loop {
        match tokio::time::timeout(WAIT, messages.recv()).await {
            Ok(Some(Msg::Analytics(Event::Report(data)))) => break data,
            Ok(Some(_)) => {}
            other => panic!("expected a report after the restart, got {other:?}"),
        }
    };
    assert!(back.stats.lines >= grown.stats.lines);
    drop(worker);
    server.shutdown().await;

    // Nobody listening: the failure is reported, and reported again on retry.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let client = herd_client::Client::new(
        &format!("http://{closed}"),
        Some("0123456789abcdef01234567"),
    )
    .expect("client");
    let (sender, mut messages) = mpsc::channel(64);
    let worker = Worker::start_with(
        Source::Remote {
            client,
            runtime: tokio::runtime::Handle::current(),
        },
        sender,
        quick(),
        clock,
    );
    worker.request(Request::Show(selection(Report::Usage)));
    let mut failures = 0;
    while failures < 2 {
        match tokio::time::timeout(WAIT, messages.recv()).await {
            Ok(Some(Msg::Analytics(Event::Failed(message)))) => {
                assert!(
                    message.starts_with("cannot pull the log from the server"),
                    "{message}"
                );
                failures += 1;
            }
            Ok(Some(Msg::Analytics(Event::Report(data)))) => {
                panic!("a report without a log: {data:?}")
            }
            Ok(Some(_)) => {}
            other => panic!("expected failures, got {other:?}"),
        }
    }
}
