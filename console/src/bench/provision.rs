//! One board from blank to online: find the chip, register the device, build its image
//! with the factory configuration, write it, reset, and wait on the notify stream until
//! the light is online and reports its firmware. `herd flash` and the console's bench view
//! both run this; they differ only in how they show the [`Event`]s.

use std::path::PathBuf;
use std::time::Duration;

use herd_client::{Client, DeviceObject, NewDevice, NotifyEvent};
use tokio::sync::mpsc::UnboundedSender;

use super::{
    build_image, device_socket_url, Board, Chip, Factory, FlashImage, PortOptions, Progress, Step,
};

/// What to flash and where.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The board's port.
    pub port: PortOptions,
    /// The chip it must be; `None` takes what is found.
    pub chip: Option<Chip>,
    /// The light's ELF; `None` takes a release build in this checkout for the chip found.
    pub image: Option<PathBuf>,
    /// Device name.
    pub name: String,
    /// Wi-Fi network and passphrase.
    pub wifi: Option<(String, String)>,
    /// `dash.server`; `None` derives it from the client's server URL.
    pub device_server: Option<String>,
    /// `smartlight.pin`.
    pub pin: Option<i64>,
    /// `smartlight.inverted`.
    pub inverted: Option<bool>,
    /// `update.pubkey`.
    pub update_pubkey: Option<String>,
    /// `dash.ca_cert` (base64 DER); required when `dash.server` is `wss://`.
    pub ca_cert: Option<String>,
    /// An already registered device (id, token) instead of a new registration.
    pub existing: Option<(String, String)>,
    /// How long to wait for the light to come online; `None` does not wait.
    pub wait: Option<Duration>,
}

/// How far it got, for a live display.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The board answered; it is this chip.
    Connected(Chip),
    /// The device is registered.
    Registered {
        /// Its id.
        id: String,
    },
    /// The image is built.
    Built {
        /// Bytes to write.
        total: usize,
    },
    /// Bytes written so far.
    Writing {
        /// The segment being written.
        segment: String,
        /// Bytes of the whole image written.
        done: usize,
        /// Bytes of the whole image.
        total: usize,
    },
    /// The segment just written is being checked.
    Verifying(String),
    /// Written and reset; now waiting for the light.
    Waiting,
}

/// Where a provisioning stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The light's settings cannot work (a `wss://` server without a CA certificate).
    Settings,
    /// The image could not be read or built, or does not suit the board.
    Image,
    /// No board answered on the port.
    Connect,
    /// The server refused or could not be reached (the client error says which).
    Register,
    /// Writing flash or resetting failed.
    Write,
    /// The light did not come online with its firmware in time.
    Online,
}

/// A provisioning that stopped.
#[derive(Debug)]
pub struct ProvisionError {
    /// Where.
    pub stage: Stage,
    /// Why.
    pub message: String,
    /// The server's error, for [`Stage::Register`] and [`Stage::Online`].
    pub client: Option<herd_client::Error>,
    /// The device, when it was registered before the failure.
    pub device_id: Option<String>,
}

impl ProvisionError {
    fn new(stage: Stage, message: impl Into<String>) -> ProvisionError {
        ProvisionError {
            stage,
            message: message.into(),
            client: None,
            device_id: None,
        }
    }

    fn with_device(mut self, id: &str) -> ProvisionError {
        self.device_id = Some(id.to_string());
        if !self.message.contains(id) {
            self.message
                .push_str(&format!(" (device {id} is registered)"));
        }
        self
    }
}

fn stage_of(step: Step) -> Stage {
    match step {
        Step::Connect => Stage::Connect,
        Step::Image => Stage::Image,
        Step::Write | Step::Reset => Stage::Write,
    }
}

/// What a provisioned light is.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Provisioned {
    /// Device id.
    pub id: String,
    /// Device name.
    pub name: String,
    /// The port.
    pub port: String,
    /// The chip.
    pub chip: String,
    /// Version in the app descriptor of what was written.
    pub app_version: String,
    /// SHA-256 of the app image written.
    pub app_sha256: String,
    /// Whether it came online (false when not waited for).
    pub online: bool,
    /// The firmware it reports (`info.fw_version`).
    pub fw_version: Option<String>,
    /// The image it reports running (`info.fw_id`).
    pub fw_id: Option<String>,
}

struct Forward(UnboundedSender<Event>);

impl Progress for Forward {
    fn advance(&mut self, segment: &str, done: usize, total: usize) {
        let _ = self.0.send(Event::Writing {
            segment: segment.to_string(),
            done,
            total,
        });
    }

    fn verifying(&mut self, segment: &str) {
        let _ = self.0.send(Event::Verifying(segment.to_string()));
    }
}

/// Reads the light's ELF for `chip`.
pub fn read_elf(image: Option<&PathBuf>, chip: Chip) -> Result<Vec<u8>, ProvisionError> {
    let path = image.cloned().unwrap_or_else(|| chip.default_elf());
    std::fs::read(&path).map_err(|e| {
        let hint = if image.is_none() {
            format!(
                " (build it with `cargo build --release --target {}` in firmware/esp, or pass --image)",
                chip.target()
            )
        } else {
            String::new()
        };
        ProvisionError::new(
            Stage::Image,
            format!("cannot read {}: {e}{hint}", path.display()),
        )
    })
}

/// `dash.server` for the light, checked against its other settings.
fn socket_url(client: &Client, request: &Request) -> Result<String, ProvisionError> {
    let server = match &request.device_server {
        Some(url) => url.clone(),
        None => device_socket_url(client.server())
            .map_err(|e| ProvisionError::new(Stage::Settings, e))?,
    };
    super::check_tls(&server, request.ca_cert.as_deref())
        .map_err(|e| ProvisionError::new(Stage::Settings, e))?;
    Ok(server)
}

/// Registers the device (or takes the existing one) and returns the factory layer.
pub async fn register(client: &Client, request: &Request) -> Result<Factory, ProvisionError> {
    let server = socket_url(client, request)?;
    let (device_id, token) = match &request.existing {
        Some(existing) => existing.clone(),
        None => {
            let device = client
                .create_device(&NewDevice {
                    name: Some(request.name.clone()),
                    id: None,
                })
                .await
                .map_err(|e| ProvisionError {
                    stage: Stage::Register,
                    message: format!("cannot register {}: {e}", request.name),
                    client: Some(e),
                    device_id: None,
                })?;
            let token = device.token.clone().ok_or_else(|| {
                ProvisionError::new(Stage::Register, "the server returned no device token")
            })?;
            (device.id, token)
        }
    };
    Ok(Factory {
        device_id,
        token,
        server,
        name: request.name.clone(),
        wifi: request.wifi.clone(),
        pin: request.pin,
        inverted: request.inverted,
        update_pubkey: request.update_pubkey.clone(),
        ca_cert: request.ca_cert.clone(),
    })
}

/// Builds the image for `chip`, blocking work off the runtime.
pub async fn build(
    chip: Chip,
    elf: Vec<u8>,
    factory: Factory,
) -> Result<FlashImage, ProvisionError> {
    let id = factory.device_id.clone();
    tokio::task::spawn_blocking(move || build_image(chip, &elf, &factory))
        .await
        .map_err(|e| ProvisionError::new(Stage::Image, e.to_string()))?
        .map_err(|e| ProvisionError::new(Stage::Image, e).with_device(&id))
}

/// Runs the whole provisioning (see the module docs).
pub async fn provision(
    client: &Client,
    request: Request,
    events: UnboundedSender<Event>,
) -> Result<Provisioned, ProvisionError> {
    // Settings and the image file first: neither should cost a registration.
    socket_url(client, &request)?;
    let given_elf = match &request.image {
        Some(path) => Some(read_elf(Some(path), Chip::Esp32c3)?),
        None => None,
    };
    let port = request.port.clone();
    let expected = request.chip;
    let board = tokio::task::spawn_blocking(move || Board::connect(&port, expected))
        .await
        .map_err(|e| ProvisionError::new(Stage::Connect, e.to_string()))?
        .map_err(|e| ProvisionError::new(stage_of(e.step), e.message))?;
    let chip = board.chip();
    let _ = events.send(Event::Connected(chip));
    let elf = match given_elf {
        Some(elf) => elf,
        None => read_elf(None, chip)?,
    };
    if let Some(built_for) = super::elf_chip(&elf) {
        if built_for != chip.name() {
            return Err(ProvisionError::new(
                Stage::Image,
                format!("the image was built for {built_for}; the board is an {chip}"),
            ));
        }
    }
    let factory = register(client, &request).await?;
    let id = factory.device_id.clone();
    let _ = events.send(Event::Registered { id: id.clone() });
    let image = build(chip, elf, factory).await?;
    let _ = events.send(Event::Built {
        total: image.size(),
    });
    // Before the reset: the light's `online` must not be missed.
    let mut stream = match request.wait {
        Some(_) => Some(open_stream(client).await.map_err(|e| e.with_device(&id))?),
        None => None,
    };
    let forward = events.clone();
    let written = image.clone();
    tokio::task::spawn_blocking(move || {
        let mut board = board;
        board.write(&written, &mut Forward(forward))?;
        board.reset()
    })
    .await
    .map_err(|e| ProvisionError::new(Stage::Write, e.to_string()))?
    .map_err(|e| ProvisionError::new(stage_of(e.step), e.message).with_device(&id))?;
    let mut provisioned = Provisioned {
        id: id.clone(),
        name: request.name.clone(),
        port: request.port.port.clone(),
        chip: chip.name().into(),
        app_version: image.app_version.clone(),
        app_sha256: image.app_sha256.clone(),
        online: false,
        fw_version: None,
        fw_id: None,
    };
    if let (Some(limit), Some(stream)) = (request.wait, stream.as_mut()) {
        let _ = events.send(Event::Waiting);
        let device = wait_online(client, stream, &id, limit).await?;
        provisioned.online = device.online;
        provisioned.fw_version = info_text(&device, "fw_version");
        provisioned.fw_id = info_text(&device, "fw_id");
    }
    Ok(provisioned)
}

fn info_text(device: &DeviceObject, key: &str) -> Option<String> {
    device
        .info
        .get(key)
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

async fn open_stream(client: &Client) -> Result<herd_client::NotifyStream, ProvisionError> {
    let mut stream = client.notify();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut last = String::from("no answer");
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => {
                return Err(ProvisionError::new(
                    Stage::Online,
                    format!("the notify stream did not open: {last}"),
                ))
            }
            Ok(Some(NotifyEvent::Connected)) => return Ok(stream),
            Ok(Some(NotifyEvent::Rejected(e))) => {
                return Err(ProvisionError {
                    stage: Stage::Online,
                    message: format!("the notify stream was refused: {e}"),
                    client: Some(e),
                    device_id: None,
                })
            }
            Ok(Some(NotifyEvent::Disconnected { reason, .. })) => last = reason,
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(ProvisionError::new(
                    Stage::Online,
                    "the notify stream ended",
                ))
            }
        }
    }
}

/// Waits until `id` is online and its `info` names its firmware; looks the device up
/// whenever the stream says something about it, and every few seconds besides.
async fn wait_online(
    client: &Client,
    stream: &mut herd_client::NotifyStream,
    id: &str,
    limit: Duration,
) -> Result<DeviceObject, ProvisionError> {
    let deadline = tokio::time::Instant::now() + limit;
    let timed_out = || {
        ProvisionError::new(
            Stage::Online,
            format!(
                "the board was flashed but {id} did not come online with its firmware within {} s",
                limit.as_secs()
            ),
        )
        .with_device(id)
    };
    // Once the stream has ended (refused mid-wait), only the periodic look-ups remain.
    let mut ended = false;
    loop {
        let look = match tokio::time::timeout_at(deadline, async {
            tokio::select! {
                event = stream.next(), if !ended => match event {
                    Some(NotifyEvent::Notification(n)) => n.id == id,
                    Some(NotifyEvent::Connected) => true,
                    Some(_) => false,
                    None => {
                        ended = true;
                        false
                    }
                },
                _ = tokio::time::sleep(Duration::from_secs(5)) => true,
            }
        })
        .await
        {
            Ok(look) => look,
            Err(_) => return Err(timed_out()),
        };
        if !look {
            continue;
        }
        match client.device(id).await {
            Ok(device) if device.online && info_text(&device, "fw_version").is_some() => {
                return Ok(device)
            }
            Ok(_) => {}
            Err(e) if e.is_connection() => {}
            Err(e) => {
                return Err(ProvisionError {
                    stage: Stage::Online,
                    message: format!("cannot look up {id}: {e}"),
                    client: Some(e),
                    device_id: Some(id.to_string()),
                })
            }
        }
    }
}
