//! The bench view (`:bench`): the serial ports of this machine, the new light's name and
//! Wi-Fi, and a flash with live progress that ends on the new device's page. The work is
//! [`crate::bench::provision`], the same as `herd flash`; this only shows it.

use crossterm::event::{KeyCode, KeyEvent};

use super::model::{Command, Model, Screen};
use crate::bench::provision::{Event, Provisioned, Request};
use crate::bench::{Port, PortOptions};

/// Which field typed keys go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Field {
    /// Keys move between ports and start things.
    #[default]
    None,
    /// The device name.
    Name,
    /// The Wi-Fi network.
    Ssid,
    /// The Wi-Fi passphrase.
    Pass,
    /// The light's ELF.
    Image,
}

/// The view's state.
#[derive(Debug, Clone, Default)]
pub struct Bench {
    /// Ports found, likely boards first.
    pub ports: Vec<Port>,
    /// Why the ports could not be listed.
    pub ports_error: Option<String>,
    /// The selected port.
    pub cursor: usize,
    /// Device name.
    pub name: String,
    /// Wi-Fi network.
    pub ssid: String,
    /// Wi-Fi passphrase.
    pub pass: String,
    /// The light's ELF; empty takes the release build in this checkout for the chip found.
    pub image: String,
    /// Where typing goes.
    pub editing: Field,
    /// A flash is running.
    pub running: bool,
    /// What it is doing now.
    pub step: String,
    /// Bytes written and of how many.
    pub progress: (usize, usize),
    /// Steps so far, for the record.
    pub log: Vec<String>,
    /// How the last flash ended.
    pub outcome: Option<Result<Provisioned, String>>,
    /// `dash.ca_cert` for the lights flashed here: the profile's CA.
    pub ca_cert: Option<String>,
}

/// What the bench's tasks report.
#[derive(Debug, Clone)]
pub enum Msg {
    /// The ports of this machine.
    Ports(Result<Vec<Port>, String>),
    /// Progress of the running flash.
    Progress(Event),
    /// The flash ended.
    Done(Result<Provisioned, String>),
}

/// What the bench asks the loop to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Task {
    /// List the serial ports.
    ListPorts,
    /// Flash a light.
    Flash(Box<Request>),
}

/// `:bench`: opens the view and lists the ports.
pub fn open(model: &mut Model) -> Vec<Command> {
    model.go_to(Screen::Bench);
    vec![Command::Bench(Task::ListPorts)]
}

/// A key on the bench view.
pub fn key(model: &mut Model, key: KeyEvent) -> Vec<Command> {
    let bench = &mut model.bench;
    model.dirty = true;
    if bench.editing != Field::None {
        let field = match bench.editing {
            Field::Name => &mut bench.name,
            Field::Ssid => &mut bench.ssid,
            Field::Pass => &mut bench.pass,
            Field::Image => &mut bench.image,
            Field::None => return Vec::new(),
        };
        match key.code {
            KeyCode::Char(c) => field.push(c),
            KeyCode::Backspace => {
                field.pop();
            }
            KeyCode::Enter | KeyCode::Esc | KeyCode::Tab => bench.editing = Field::None,
            _ => {}
        }
        return Vec::new();
    }
    match key.code {
        KeyCode::Up | KeyCode::Char('k') => bench.cursor = bench.cursor.saturating_sub(1),
        KeyCode::Down | KeyCode::Char('j') => {
            bench.cursor = (bench.cursor + 1).min(bench.ports.len().saturating_sub(1));
        }
        KeyCode::Char('r') if !bench.running => return vec![Command::Bench(Task::ListPorts)],
        KeyCode::Char('n') if !bench.running => bench.editing = Field::Name,
        KeyCode::Char('w') if !bench.running => bench.editing = Field::Ssid,
        KeyCode::Char('p') if !bench.running => bench.editing = Field::Pass,
        KeyCode::Char('i') if !bench.running => bench.editing = Field::Image,
        KeyCode::Char('f') | KeyCode::Enter if !bench.running => return start(model),
        KeyCode::Char('o') => {
            if let Some(Ok(done)) = &model.bench.outcome {
                let id = done.id.clone();
                return model.open_device(&id);
            }
        }
        KeyCode::Esc => model.back(),
        _ => {}
    }
    Vec::new()
}

fn start(model: &mut Model) -> Vec<Command> {
    if model.profile.read_only {
        model.bench.outcome = Some(Err(
            "this profile is read-only: flashing registers a device".into(),
        ));
        return Vec::new();
    }
    if let Some(scope) = model
        .scope()
        .filter(|&scope| !crate::access::Operation::CreateDevice.allowed(Some(scope)))
    {
        model.bench.outcome = Some(Err(crate::access::Operation::CreateDevice
            .refusal("flash a light (it registers a device)", scope)));
        return Vec::new();
    }
    let bench = &mut model.bench;
    let Some(port) = bench.ports.get(bench.cursor) else {
        bench.outcome = Some(Err("no serial port to flash (r lists them again)".into()));
        return Vec::new();
    };
    if bench.name.trim().is_empty() {
        bench.editing = Field::Name;
        bench.outcome = Some(Err("name the light first".into()));
        return Vec::new();
    }
    let request = Request {
        port: PortOptions::new(port.name.clone()),
        chip: None,
        image: (!bench.image.trim().is_empty())
            .then(|| std::path::PathBuf::from(bench.image.trim())),
        name: bench.name.trim().to_string(),
        wifi: (!bench.ssid.is_empty()).then(|| (bench.ssid.clone(), bench.pass.clone())),
        device_server: None,
        pin: None,
        inverted: None,
        update_pubkey: None,
        ca_cert: bench.ca_cert.clone(),
        existing: None,
        wait: Some(std::time::Duration::from_secs(180)),
    };
    bench.running = true;
    bench.outcome = None;
    bench.progress = (0, 0);
    bench.log.clear();
    bench.step = format!("connecting on {}", port.name);
    vec![Command::Bench(Task::Flash(Box::new(request)))]
}

/// A report from the bench's tasks; a finished flash opens the new device's page.
pub fn reply(model: &mut Model, msg: Msg) -> Vec<Command> {
    model.dirty = true;
    let bench = &mut model.bench;
    match msg {
        Msg::Ports(Ok(ports)) => {
            bench.ports = ports;
            bench.ports_error = None;
            bench.cursor = bench.cursor.min(bench.ports.len().saturating_sub(1));
        }
        Msg::Ports(Err(e)) => bench.ports_error = Some(e),
        Msg::Progress(event) => {
            let line = match event {
                Event::Connected(chip) => format!("{chip} found"),
                Event::Registered { id } => format!("registered {id}"),
                Event::Built { total } => format!("image built: {total} bytes to write"),
                Event::Writing {
                    segment,
                    done,
                    total,
                } => {
                    bench.progress = (done, total);
                    bench.step = format!("writing {segment}");
                    return Vec::new();
                }
                Event::Verifying(segment) => {
                    bench.step = format!("verifying {segment}");
                    return Vec::new();
                }
                Event::Waiting => "written and reset; waiting for the light to come online".into(),
            };
            bench.step = line.clone();
            bench.log.push(line);
        }
        Msg::Done(result) => {
            bench.running = false;
            bench.step.clear();
            let id = result.as_ref().ok().map(|done| done.id.clone());
            bench.outcome = Some(result);
            if let Some(id) = id {
                if *model.screen() == Screen::Bench {
                    return model.open_device(&id);
                }
            }
        }
    }
    Vec::new()
}

/// Runs a bench task, reporting through `send`.
pub async fn run(
    client: &herd_client::Client,
    task: Task,
    send: impl Fn(Msg) + Send + 'static,
) -> Msg {
    match task {
        Task::ListPorts => Msg::Ports(
            tokio::task::spawn_blocking(crate::bench::list_ports)
                .await
                .unwrap_or_else(|e| Err(e.to_string())),
        ),
        Task::Flash(request) => {
            let (sender, mut events) = tokio::sync::mpsc::unbounded_channel();
            let forward = tokio::spawn(async move {
                while let Some(event) = events.recv().await {
                    send(Msg::Progress(event));
                }
            });
            let result = crate::bench::provision::provision(client, *request, sender).await;
            let _ = forward.await;
            Msg::Done(result.map_err(|e| e.message))
        }
    }
}
