//! End to end in a real pseudo-terminal: the `herd` binary draws on a pty whose output a
//! VT100 parser turns back into a screen, against a real server and real simulated
//! devices (herd-agent's fleet). Keys are typed as bytes, as a person would.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herd_agent::fleet::{Behaviour, Fleet, FleetOptions};
use herd_testkit::{SimDevice, TestServer, WAIT};
use portable_pty::{CommandBuilder, MasterPty, PtySize};
use tokio::sync::mpsc;

struct Pty {
    parser: Arc<Mutex<vt100::Parser>>,
    output: mpsc::UnboundedReceiver<()>,
    writer: Box<dyn Write + Send>,
    child: Box<dyn portable_pty::Child + Send + Sync>,
    master: Box<dyn MasterPty + Send>,
    log: std::path::PathBuf,
}

impl Pty {
    fn spawn(args: &[&str], env: &[(&str, String)], dir: &std::path::Path) -> Pty {
        let system = portable_pty::native_pty_system();
        let pair = system
            .openpty(PtySize {
                rows: 30,
                cols: 120,
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("open a pty");
        let mut command = CommandBuilder::new(env!("CARGO_BIN_EXE_herd"));
        command.args(args);
        let log = dir.join("console.log");
        command.env("TERM", "xterm-256color");
        command.env("HERD_CONFIG", dir.join("no-console.toml"));
        command.env("HERD_CONSOLE_LOG", &log);
        command.env_remove("HERD_PROFILE");
        command.env_remove("HERD_READ_ONLY");
        command.env_remove("NO_COLOR");
        for (key, value) in env {
            command.env(key, value);
        }
        let child = pair.slave.spawn_command(command).expect("spawn herd");
        drop(pair.slave);
        let mut reader = pair.master.try_clone_reader().expect("reader");
        let writer = pair.master.take_writer().expect("writer");
        let parser = Arc::new(Mutex::new(vt100::Parser::new(30, 120, 0)));
        let (tell, output) = mpsc::unbounded_channel();
        let screen = parser.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 8192];
            loop {
                match reader.read(&mut buffer) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if let Ok(mut parser) = screen.lock() {
                            parser.process(&buffer[..n]);
                        }
                        if tell.send(()).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Pty {
            parser,
            output,
            writer,
            child,
            master: pair.master,
            log,
        }
    }

    fn screen(&self) -> String {
        self.parser.lock().expect("parser").screen().contents()
    }

    /// Waits until the screen satisfies `check`, woken by terminal output, not a timer.
    async fn wait_for(&mut self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let screen = self.screen();
            if check(&screen) {
                return screen;
            }
            match tokio::time::timeout_at(deadline, self.output.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => {
                    let screen = self.screen();
                    assert!(
                        check(&screen),
                        "herd exited before {what}; screen:\n{screen}"
                    );
                    return screen;
                }
                Err(_) => panic!(
                    "timed out waiting for {what}; screen:\n{screen}\nlog:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ),
            }
        }
    }

    fn type_text(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).expect("type");
        self.writer.flush().expect("flush");
    }

    /// Waits for the process to end; returns its success and whether the terminal was
    /// handed back (the alternate screen left).
    async fn exit(mut self) -> (bool, bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Drain what is left of the output.
                while let Ok(Some(())) =
                    tokio::time::timeout(Duration::from_millis(200), self.output.recv()).await
                {
                }
                let restored = !self
                    .parser
                    .lock()
                    .expect("parser")
                    .screen()
                    .alternate_screen();
                return (status.success(), restored);
            }
            match tokio::time::timeout_at(deadline, self.output.recv()).await {
                Ok(Some(())) => {}
                // Output closed: the child is gone or about to be; poll its status.
                Ok(None) => tokio::task::yield_now().await,
                Err(_) => panic!("herd did not exit; screen:\n{}", self.screen()),
            }
        }
    }
}

/// The line of the table that shows `name`.
fn row<'a>(screen: &'a str, name: &str) -> Option<&'a str> {
    screen.lines().find(|line| line.contains(name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_come_online_and_a_shadow_change_arrives() {
    let server = TestServer::start().await;
    let mut pty = Pty::spawn(
        &[],
        &[
            ("HERD_SERVER", server.url()),
            ("HERD_API_KEY", server.admin_key.clone()),
        ],
        server.dir.path(),
    );
    pty.wait_for("the empty fleet", |s| {
        s.contains("● live") && s.contains("No devices yet")
    })
    .await;

    // Two simulated lights register and connect while the console watches.
    let fleet_dir = tempfile::tempdir().expect("tempdir");
    let fleet = Fleet::start(FleetOptions {
        behaviour: Behaviour::idle(),
        prefix: "e2e".into(),
        ..FleetOptions::new(&server.url(), &server.admin_key, 2, fleet_dir.path().into())
    })
    .await
    .expect("fleet starts");
    // A device is online before its first report: its light shows once that arrives.
    let screen = pty
        .wait_for("both devices online, the first light reported", |s| {
            s.contains("2 devices 2 on")
                && ["e2e-0000", "e2e-0001"]
                    .iter()
                    .all(|name| row(s, name).is_some_and(|line| line.contains("online")))
                && row(s, "e2e-0000")
                    .is_some_and(|line| line.contains(" off ") || line.contains(" on "))
        })
        .await;
    let line = row(&screen, "e2e-0000").expect("row");
    assert!(line.contains("off"), "the light starts off: {line}");

    // Narrow the table to the first light, so the cursor is on it whatever order the
    // devices arrived in, then switch it on through the palette.
    pty.type_text("/e2e-0000\r");
    pty.wait_for("the filtered table", |s| {
        s.contains("filter: e2e-0000") && row(s, "e2e-0001").is_none()
    })
    .await;
    pty.type_text(":set {\"on\": true}\r");
    pty.wait_for("the confirmation", |s| {
        s.contains("set desired {\"on\":true} on device")
    })
    .await;
    pty.type_text("y");
    // The answer lands in the results pane, which opens over the fleet.
    pty.wait_for("the answer in the results pane", |s| {
        s.contains("Fleet › Results") && s.lines().any(|l| l.starts_with("ok    e2e-0000"))
    })
    .await;
    pty.type_text("\x1b");
    // The device applies the delta and reports; the row follows the notify stream.
    pty.wait_for("the light reported on", |s| {
        row(s, "e2e-0000").is_some_and(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            words.len() >= 2 && words[words.len() - 2] == "on" && words[words.len() - 1] == "-"
        })
    })
    .await;

    // The device view shows desired, reported and an empty delta.
    pty.type_text("\r");
    let screen = pty
        .wait_for("the device view in sync", |s| {
            s.contains("Fleet › e2e-0000") && s.contains("in sync") && s.contains("desired · v")
        })
        .await;
    assert!(screen.matches("on: true").count() >= 2, "{screen}");

    pty.type_text("\x1b");
    pty.wait_for("back on the fleet", |s| !s.contains("Fleet › e2e-0000"))
        .await;
    pty.type_text("q");
    let (success, restored) = pty.exit().await;
    assert!(success, "herd exits 0");
    assert!(restored, "the terminal is handed back");
    fleet.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_is_survived_and_tiny_terminals_are_explained() {
    let mut server = TestServer::start().await;
    let (_, token) = server.create_device("porch").await;
    let _device = SimDevice::connect(&server.ws_base, &token).await;
    let mut pty = Pty::spawn(
        &[],
        &[
            ("HERD_SERVER", server.url()),
            ("HERD_API_KEY", server.admin_key.clone()),
        ],
        server.dir.path(),
    );
    pty.wait_for("the fleet", |s| {
        s.contains("● live") && row(s, "porch").is_some_and(|line| line.contains("online"))
    })
    .await;
    server.stop().await;
    // A clean stop says goodbye: the device went offline before the stream closed, and
    // the header says the rest is what was last heard.
    pty.wait_for("the loss, marked stale", |s| {
        (s.contains("disconnected") || s.contains("reconnecting"))
            && s.contains("STALE")
            && row(s, "porch").is_some_and(|line| line.contains("offline"))
    })
    .await;
    server.start_again().await;
    pty.wait_for("the reconnection", |s| {
        s.contains("● live") && !s.contains("STALE") && s.contains("porch")
    })
    .await;

    pty.master
        .resize(PtySize {
            rows: 5,
            cols: 20,
            pixel_width: 0,
            pixel_height: 0,
        })
        .expect("resize");
    pty.parser.lock().expect("parser").set_size(5, 20);
    pty.wait_for("the size message", |s| s.contains("Terminal too small"))
        .await;
    pty.type_text("q");
    let (success, restored) = pty.exit().await;
    assert!(success && restored);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_and_unreachable_server_are_explained() {
    let server = TestServer::start().await;
    let mut pty = Pty::spawn(
        &[],
        &[
            ("HERD_SERVER", server.url()),
            ("HERD_API_KEY", "0123456789abcdef01234567".into()),
        ],
        server.dir.path(),
    );
    pty.wait_for("the refusal", |s| s.contains("refused the API key"))
        .await;
    pty.type_text("\x03");
    let (success, restored) = pty.exit().await;
    assert!(success && restored);

    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let mut pty = Pty::spawn(
        &[],
        &[
            ("HERD_SERVER", format!("http://{closed}")),
            ("HERD_API_KEY", server.admin_key.clone()),
        ],
        server.dir.path(),
    );
    pty.wait_for("the unreachable server", |s| {
        s.contains("Cannot reach the server")
    })
    .await;
    pty.type_text("q");
    let (success, restored) = pty.exit().await;
    assert!(success && restored);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_the_whole_product() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut pty = Pty::spawn(
        &["demo", "--devices", "3", "--speedup", "1"],
        &[],
        dir.path(),
    );
    pty.wait_for("the demo fleet online", |s| {
        s.contains("3 devices 3 on") && s.contains("lamp-0002")
    })
    .await;
    pty.type_text("q");
    let (success, restored) = pty.exit().await;
    assert!(success && restored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_analytics_follow_the_servers_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut pty = Pty::spawn(
        &["demo", "--devices", "3", "--speedup", "1"],
        &[],
        dir.path(),
    );
    pty.wait_for("the demo fleet online", |s| s.contains("3 devices 3 on"))
        .await;
    // The demo's server writes its log on this machine: the view follows the file.
    pty.type_text("a");
    let screen = pty
        .wait_for("the fleet report", |s| {
            s.contains("Fleet › Analytics")
                && s.contains("1 fleet  2 connectivity  3 usage  4 firmware  5 rpc")
                && s.contains("notifications by event")
                && s.contains("herd-demo-")
        })
        .await;
    assert!(screen.contains(" lines · 0 torn · 0 invalid"), "{screen}");
    pty.type_text("2");
    pty.wait_for("the connectivity report", |s| {
        s.contains("uptime % by device") && s.contains("lamp-0001")
    })
    .await;
    pty.type_text("3");
    pty.wait_for("the usage report", |s| {
        s.contains("switch-ons by hour of day") && s.contains("switch_ons")
    })
    .await;
    pty.type_text("q");
    pty.wait_for("back on the fleet", |s| !s.contains("Analytics"))
        .await;
    pty.type_text("q");
    let (success, restored) = pty.exit().await;
    assert!(success && restored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_rolls_out_firmware_and_pushes_an_image_to_one_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut pty = Pty::spawn(
        &["demo", "--devices", "3", "--speedup", "1"],
        &[],
        dir.path(),
    );
    pty.wait_for("the demo fleet online", |s| s.contains("3 devices 3 on"))
        .await;
    // Nothing marked, no filter: the rollout is for every device. The demo's images are
    // listed newest first.
    pty.type_text("U");
    pty.wait_for("the form with the demo images", |s| {
        s.contains("Fleet › New rollout")
            && s.contains("every device (nothing marked, no filter): 3 devices")
            && s.contains("▸ 1.2.0")
            && s.contains("1.1.0")
    })
    .await;
    // Two waves and no soak, typed over the defaults (Ctrl-U clears a field).
    pty.type_text("\t\t\x1550,50\t\x150\r");
    pty.wait_for("the dry-run plan", |s| {
        s.contains("New rollout › plan")
            && s.contains("herd-light 1.2.0: firmware 1.2.0 to 3 devices in 2 waves")
    })
    .await;
    pty.type_text("\r");
    pty.wait_for("the rollout completed", |s| {
        s.contains("Fleet › Rollouts › herd-light 1.2.0")
            && s.contains("● completed")
            && s.contains("3 devices: 3 succeeded")
    })
    .await;
    pty.type_text("\x1b");
    pty.wait_for("the list", |s| {
        row(s, "herd-light 1.2.0").is_some_and(|line| line.contains("completed"))
    })
    .await;
    // Back to the fleet, which runs 1.2.0 now; push 1.1.0 to the first light.
    pty.type_text("\x1b");
    pty.wait_for("the fleet on 1.2.0", |s| {
        ["lamp-0000", "lamp-0001", "lamp-0002"]
            .iter()
            .all(|name| row(s, name).is_some_and(|line| line.contains("1.2.0")))
    })
    .await;
    pty.type_text("\r");
    pty.wait_for("the device view", |s| s.contains("Fleet › lamp-0000"))
        .await;
    pty.type_text("u");
    // It runs the newest image: the one before is chosen for it.
    pty.wait_for("the firmware picker", |s| {
        s.contains("push firmware to lamp-0000") && s.contains("(running)") && s.contains("▸ 1.1.0")
    })
    .await;
    pty.type_text("\r");
    pty.wait_for("the confirmation", |s| {
        s.contains("Push 1.1.0 (herd-light for sim, 256.0 KiB) to lamp-0000")
    })
    .await;
    pty.type_text("y");
    pty.wait_for("the outcome", |s| s.contains("✓ updated to 1.1.0"))
        .await;
    // Esc and q apart: together they read as Alt-q.
    pty.type_text("\x1b");
    pty.wait_for("back on the fleet", |s| !s.contains("Fleet › lamp-0000"))
        .await;
    pty.type_text("q");
    let (success, restored) = pty.exit().await;
    assert!(success && restored);
}

/// A TCP path to the server that the test can cut and mend: the server out of reach
/// without a goodbye (a crash, a partition), while its devices stay connected to it.
struct Path {
    addr: std::net::SocketAddr,
    to: std::net::SocketAddr,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Path {
    async fn open(to: std::net::SocketAddr) -> Path {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut path = Path {
            addr: listener.local_addr().expect("addr"),
            to,
            tasks: Arc::default(),
        };
        path.serve(listener);
        path
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let tasks = self.tasks.clone();
        let to = self.to;
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let relay = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tasks.lock().expect("tasks").push(relay.abort_handle());
            }
        });
        self.tasks
            .lock()
            .expect("tasks")
            .push(accept.abort_handle());
    }

    /// Drops every connection and stops listening: nothing reaches the server.
    fn cut(&self) {
        for task in self.tasks.lock().expect("tasks").drain(..) {
            task.abort();
        }
    }

    /// Listens again on the same address.
    async fn mend(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("rebind the same port");
        self.serve(listener);
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// The server out of reach while its devices stay online: every row that said online
/// says it is only what was last heard, with the age, until the console hears again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_are_marked_stale_while_the_server_is_out_of_reach() {
    let server = TestServer::start().await;
    let (_, token) = server.create_device("porch").await;
    let _device = SimDevice::connect(&server.ws_base, &token).await;
    let mut path = Path::open(server.addr).await;
    let mut pty = Pty::spawn(
        &[],
        &[
            ("HERD_SERVER", path.url()),
            ("HERD_API_KEY", server.admin_key.clone()),
        ],
        server.dir.path(),
    );
    pty.wait_for("the device online", |s| {
        s.contains("● live")
            && row(s, "porch").is_some_and(|line| line.contains("online ") && line.contains("now"))
    })
    .await;

    path.cut();
    let screen = pty
        .wait_for("the stale mark", |s| {
            s.contains("STALE")
                && row(s, "porch")
                    .is_some_and(|line| line.contains("online?") && line.contains("stale "))
        })
        .await;
    assert!(!screen.contains("● live"), "{screen}");

    path.mend().await;
    pty.wait_for("the mark cleared", |s| {
        s.contains("● live")
            && !s.contains("STALE")
            && row(s, "porch").is_some_and(|line| {
                line.contains("online ") && line.contains("now") && !line.contains("stale")
            })
    })
    .await;
    pty.type_text("q");
    let (success, restored) = pty.exit().await;
    assert!(success && restored);
    server.shutdown().await;
}

/// The `[theme]` table of the config file: a mistake is refused before the screen is
/// taken, naming the entry; a good one is drawn with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_theme_from_the_config_is_checked_before_the_screen() {
    let server = TestServer::start().await;
    let config = server.dir.path().join("themed.toml");
    let env = |config: &std::path::Path| {
        [
            ("HERD_SERVER", server.url()),
            ("HERD_API_KEY", server.admin_key.clone()),
            ("HERD_CONFIG", config.display().to_string()),
        ]
    };
    std::fs::write(&config, "[theme]\nonline = \"neon green\"\n").expect("write");
    let mut pty = Pty::spawn(&[], &env(&config), server.dir.path());
    pty.wait_for("the refusal", |s| s.contains("[theme] online"))
        .await;
    let (success, restored) = pty.exit().await;
    assert!(!success && restored);

    std::fs::write(
        &config,
        "[theme]\nonline = \"bold bright green\"\nstale = \"italic #d0a020\"\n",
    )
    .expect("write");
    let mut pty = Pty::spawn(&[], &env(&config), server.dir.path());
    pty.wait_for("the fleet", |s| s.contains("● live")).await;
    pty.type_text("q");
    let (success, restored) = pty.exit().await;
    assert!(success && restored);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_console_runs_on_a_read_key_it_deletes_on_quit() {
    let server = TestServer::start().await;
    let session_keys = || async {
        server
            .client
            .keys()
            .await
            .expect("keys")
            .into_iter()
            .filter(|k| {
                k.name
                    .starts_with(herd_console::session::SESSION_KEY_PREFIX)
            })
            .count()
    };
    let mut pty = Pty::spawn(
        &["--read-only"],
        &[
            ("HERD_SERVER", server.url()),
            ("HERD_API_KEY", server.admin_key.clone()),
        ],
        server.dir.path(),
    );
    // The header says both: the profile is read-only, and the server was told (§11).
    let screen = pty
        .wait_for("the read-only badge and the key's scope", |s| {
            s.contains("● live") && s.contains("READ-ONLY") && s.contains(" read ")
        })
        .await;
    assert!(
        !screen.contains("enforced by this console only"),
        "{screen}"
    );
    assert_eq!(
        session_keys().await,
        1,
        "the session's key exists while it runs"
    );
    pty.type_text("q");
    let (success, restored) = pty.exit().await;
    assert!(success && restored);
    assert_eq!(session_keys().await, 0, "and is deleted on quit");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctx_switches_the_console_to_another_server() {
    let first = TestServer::start().await;
    let second = TestServer::start().await;
    first.create_device("alpha").await;
    second.create_device("beta").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("console.toml");
    std::fs::write(
        &config,
        format!(
            "default_profile = \"one\"\n\
             [profiles.one]\nserver = \"{}\"\napi_key = \"{}\"\n\
             [profiles.two]\nserver = \"{}\"\napi_key = \"{}\"\nread_only = true\n",
            first.url(),
            first.admin_key,
            second.url(),
            second.admin_key
        ),
    )
    .expect("config");
    let mut pty = Pty::spawn(
        &[],
        &[("HERD_CONFIG", config.display().to_string())],
        dir.path(),
    );
    pty.wait_for("the first server's fleet", |s| {
        s.contains("● live") && row(s, "alpha").is_some()
    })
    .await;
    pty.type_text(":ctx\r");
    pty.wait_for("the profiles", |s| s.contains("● one") && s.contains("two"))
        .await;
    // Esc alone first: Esc and a key in one read are Alt and that key.
    pty.type_text("\x1b");
    pty.wait_for("the list closed", |s| !s.contains("profiles (:ctx NAME)"))
        .await;
    pty.type_text(":ctx nope\r");
    pty.wait_for("the unknown name refused", |s| {
        s.contains("no profile named \"nope\" (known: one, two)")
    })
    .await;
    pty.type_text("\x1b");
    pty.wait_for("the palette closed", |s| !s.contains("no profile named"))
        .await;
    pty.type_text(":ctx two\r");
    // A new client, a new stream and the second server's fleet; read-only there, with a
    // read key minted on that server (PROTOCOL §11).
    pty.wait_for("the second server's fleet", |s| {
        s.contains("● live")
            && row(s, "beta").is_some()
            && row(s, "alpha").is_none()
            && s.contains("READ-ONLY")
            && s.contains(" read ")
            && s.lines().next().is_some_and(|l| l.contains("two"))
    })
    .await;
    let made = second.client.keys().await.expect("keys").len();
    assert_eq!(made, 2, "the session key on the second server");
    pty.type_text("q");
    let (success, restored) = pty.exit().await;
    assert!(success && restored);
    assert_eq!(second.client.keys().await.expect("keys").len(), 1);
    first.shutdown().await;
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_timeline_reads_the_servers_log() {
    let server = TestServer::start().await;
    let (_, token) = server.create_device("porch").await;
    let device = SimDevice::connect(&server.ws_base, &token).await;
    let mut pty = Pty::spawn(
        &[],
        &[
            ("HERD_SERVER", server.url()),
            ("HERD_API_KEY", server.admin_key.clone()),
        ],
        server.dir.path(),
    );
    pty.wait_for("the device online", |s| {
        row(s, "porch").is_some_and(|line| line.contains("online"))
    })
    .await;
    pty.type_text("\r");
    pty.wait_for("the device view", |s| s.contains("Fleet › porch"))
        .await;
    pty.type_text("h");
    // The log (PROTOCOL §7) has its creation and its connection; the newest is chosen.
    pty.wait_for("the timeline from the log", |s| {
        s.contains("timeline · ↑↓ choose")
            && s.contains("created: first copy")
            && s.lines().any(|l| l.contains(" online "))
            && s.contains("online since")
    })
    .await;
    // Live: the device goes away, and the timeline says so at once.
    drop(device);
    pty.wait_for("the offline event", |s| {
        s.lines().any(|l| l.contains(" offline ")) && s.contains("offline since")
    })
    .await;
    pty.type_text("\x1b");
    pty.wait_for("back on the fleet", |s| !s.contains("Fleet › porch"))
        .await;
    pty.type_text("q");
    let (success, restored) = pty.exit().await;
    assert!(success && restored);
    server.shutdown().await;
}
