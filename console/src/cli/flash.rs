//! `herd flash`: put the Herd light on a board with its factory configuration, list the
//! serial ports, write the whole flash image to a file, or follow a board's serial log.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::commands::{print, table};
use super::firmware::{human_size, progress_bar, to_json};
use super::{CommandResult, Exit, Failure};
use crate::bench::provision::{self, Event, ProvisionError, Request, Stage};
use crate::bench::{self, Chip, PortOptions};
use crate::profile::Profile;

#[derive(Debug, Clone, clap::Args)]
pub struct FlashArgs {
    /// The board's serial port, e.g. /dev/ttyACM0 (see --list-ports).
    #[arg(long, value_name = "PORT")]
    pub port: Option<String>,
    /// The chip: auto finds it on the board (or, with --out, in the image).
    #[arg(long, default_value = "auto", value_parser = ["auto", "esp32c3", "esp32c6"])]
    pub chip: String,
    /// The light's ELF (default: the release build of firmware/esp in this checkout for
    /// the chip).
    #[arg(long, value_name = "FILE")]
    pub image: Option<PathBuf>,
    /// Name of the new device; it is registered with the server under this name.
    #[arg(long)]
    pub name: Option<String>,
    /// Wi-Fi network the light joins; without it the light starts its access point.
    #[arg(long, value_name = "SSID")]
    pub wifi_ssid: Option<String>,
    /// Wi-Fi passphrase.
    #[arg(long, value_name = "PASS", requires = "wifi_ssid")]
    pub wifi_pass: Option<String>,
    /// The device socket URL the light connects to (default: the server URL as ws:// or
    /// wss://, path /api/v2/rpc). Set it when the board reaches the server under another
    /// address than this machine does.
    #[arg(long, value_name = "URL")]
    pub device_server: Option<String>,
    /// GPIO of the light (smartlight.pin).
    #[arg(long)]
    pub pin: Option<i64>,
    /// The light is on when its pin is low (smartlight.inverted).
    #[arg(long)]
    pub inverted: bool,
    /// Public key file (`herd firmware keygen`'s FILE.pub): the light then takes only
    /// updates signed with its private key (update.pubkey, PROTOCOL §10.4).
    #[arg(long, value_name = "FILE")]
    pub update_pubkey: Option<PathBuf>,
    /// The certificate authority (PEM or DER) the light checks a wss:// server against
    /// (dash.ca_cert; of a PEM chain, the last). Default: the CA this command trusts
    /// (--ca-cert, HERD_CA_CERT or the profile's); give it when the light reaches another
    /// server (--device-server).
    #[arg(long, value_name = "FILE")]
    pub device_ca_cert: Option<PathBuf>,
    /// Use this registered device (with --token) instead of registering a new one.
    #[arg(long, requires = "token")]
    pub id: Option<String>,
    /// The token of the device given with --id.
    #[arg(long, requires = "id", hide_env_values = true)]
    pub token: Option<String>,
    /// List serial ports, likely boards first.
    #[arg(long, conflicts_with_all = ["out", "monitor", "name"])]
    pub list_ports: bool,
    /// Write the whole flash image (bootloader, partition table, factory configuration,
    /// app) to FILE instead of a board; no board needed.
    #[arg(long, value_name = "FILE", conflicts_with = "monitor")]
    pub out: Option<PathBuf>,
    /// Print the board's serial log until interrupted (after flashing, when --name is
    /// given), naming the light's functions at the code addresses a panic or exception
    /// prints (from --image, or the release build for --chip).
    #[arg(long)]
    pub monitor: bool,
    /// Baud rate for writing (connecting is always at 115200) and for --monitor.
    #[arg(long, default_value_t = 460_800)]
    pub baud: u32,
    /// Do not reset the board into its loader with DTR/RTS (it is already in download
    /// mode).
    #[arg(long)]
    pub no_reset: bool,
    /// Write through the ROM loader itself instead of uploading espflash's faster stub
    /// (for boards where the stub does not run, e.g. in secure download mode).
    #[arg(long)]
    pub no_stub: bool,
    /// Seconds to wait for the light to come online; 0 does not wait.
    #[arg(long, default_value_t = 180, value_name = "SECONDS")]
    pub wait: u64,
    /// One JSON object (or array, with --list-ports) on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The failure of a provisioning: the exit code says which step stopped it; a server
/// error keeps the code it has everywhere else (unreachable, refused key...).
pub fn failure(error: ProvisionError) -> Failure {
    let exit = match (error.stage, error.client) {
        (Stage::Register | Stage::Online, Some(client)) => Failure::from(client).exit,
        (Stage::Settings, _) => Exit::Usage,
        (Stage::Image, _) => Exit::Image,
        (Stage::Connect, _) => Exit::Board,
        (Stage::Write, _) => Exit::FlashWrite,
        (Stage::Online, None) => Exit::NotOnline,
        (Stage::Register, None) => Exit::Failure,
    };
    Failure::new(exit, error.message)
}

fn chip_choice(args: &FlashArgs) -> Option<Chip> {
    Chip::from_name(&args.chip)
}

fn read_pubkey(path: &std::path::Path) -> Result<String, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))?;
    let key = text.trim().to_string();
    if !matches!(
        firmware_core::verify::UpdateKey::from_config(&key),
        firmware_core::verify::UpdateKey::Key(_)
    ) {
        return Err(Failure::usage(format!(
            "{} does not hold a base64 Ed25519 public key",
            path.display()
        )));
    }
    Ok(key)
}

/// `dash.ca_cert` from --device-ca-cert, else from the CA the client trusts.
fn read_ca_cert(args: &FlashArgs, profile: &Profile) -> Result<Option<String>, Failure> {
    let Some(path) = args.device_ca_cert.as_ref().or(profile.ca_cert.as_ref()) else {
        return Ok(None);
    };
    let bytes = std::fs::read(path)
        .map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))?;
    bench::ca_cert_from_file(&bytes)
        .map(Some)
        .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))
}

fn request(args: &FlashArgs, profile: &Profile, port: &str) -> Result<Request, Failure> {
    let name = args
        .name
        .clone()
        .ok_or_else(|| Failure::usage("--name is required to flash a light"))?;
    let mut port = PortOptions::new(port);
    port.baud = args.baud;
    port.reset_into_loader = !args.no_reset;
    port.stub = !args.no_stub;
    Ok(Request {
        port,
        chip: chip_choice(args),
        image: args.image.clone(),
        name,
        wifi: args
            .wifi_ssid
            .clone()
            .map(|ssid| (ssid, args.wifi_pass.clone().unwrap_or_default())),
        device_server: args.device_server.clone(),
        pin: args.pin,
        inverted: args.inverted.then_some(true),
        update_pubkey: args.update_pubkey.as_deref().map(read_pubkey).transpose()?,
        ca_cert: read_ca_cert(args, profile)?,
        existing: args.id.clone().zip(args.token.clone()),
        wait: (args.wait > 0).then(|| Duration::from_secs(args.wait)),
    })
}

/// Whether the command registers a device (listing ports and following a log do not).
pub fn needs_server(args: &FlashArgs) -> bool {
    !args.list_ports && (args.out.is_some() || args.name.is_some())
}

/// `herd flash --list-ports`, `herd flash --monitor --port PORT`, and the usage error
/// for a command that says neither what to flash nor where.
pub async fn run_local(args: &FlashArgs) -> CommandResult {
    if args.list_ports {
        return list_ports(args.json);
    }
    if args.monitor {
        let port = args
            .port
            .clone()
            .ok_or_else(|| Failure::usage("--monitor needs --port"))?;
        let symbols = symbols_for(args);
        return monitor(&port, 115_200, true, symbols).await;
    }
    Err(Failure::usage(
        "say what to do: --name NAME --port PORT to flash a light, --out FILE --name NAME for an image, --list-ports, or --monitor --port PORT",
    ))
}

/// `herd flash` with --name: a board, or the image with --out.
pub async fn run(profile: &Profile, args: FlashArgs) -> CommandResult {
    if profile.read_only && args.id.is_none() {
        return Err(Failure::read_only("register a device"));
    }
    let client = profile.client().map_err(Failure::usage)?;
    if let Some(out) = &args.out {
        return write_image(&client, profile, &args, out).await;
    }
    let port = args
        .port
        .clone()
        .ok_or_else(|| Failure::usage("--port is required (see herd flash --list-ports)"))?;
    let request = request(&args, profile, &port)?;
    let (sender, mut events) = tokio::sync::mpsc::unbounded_channel();
    let bar = progress_bar(
        100,
        "flash",
        "{prefix:>8} [{bar:30}] {percent:>3}% {wide_msg}",
    );
    bar.set_message(format!("connecting on {port}"));
    let running = provision::provision(&client, request, sender);
    tokio::pin!(running);
    let outcome = loop {
        tokio::select! {
            outcome = &mut running => break outcome,
            Some(event) = events.recv() => show(&bar, event, args.json),
        }
    };
    bar.finish_and_clear();
    let provisioned = outcome.map_err(failure)?;
    if args.json {
        print(&to_json(&provisioned)?)?;
    } else {
        let mut text = format!(
            "flashed {} ({}) on {}: {} {}",
            provisioned.name,
            provisioned.id,
            provisioned.port,
            provisioned.chip,
            provisioned.app_version
        );
        match (&provisioned.fw_version, &provisioned.fw_id) {
            (Some(version), Some(fw_id)) if *fw_id == provisioned.app_sha256 => {
                text.push_str(&format!("; online, running {version} (the image written)"));
            }
            (Some(version), _) => text.push_str(&format!("; online, running {version}")),
            _ => text.push_str("; not waited for"),
        }
        print(&format!("{text}\n"))?;
    }
    if args.monitor {
        let chip = Chip::from_name(&provisioned.chip);
        let symbols = provision::read_elf(args.image.as_ref(), chip.unwrap_or(Chip::Esp32c3))
            .ok()
            .and_then(|elf| bench::Symbols::from_elf(&elf).ok());
        return monitor(&port, 115_200, false, symbols).await;
    }
    Ok(())
}

/// The light's functions for naming addresses in the log: from --image, else from the
/// release build in this checkout for --chip; without either the log is shown as is.
fn symbols_for(args: &FlashArgs) -> Option<bench::Symbols> {
    let elf = match (&args.image, chip_choice(args)) {
        (Some(path), _) => std::fs::read(path).ok()?,
        (None, Some(chip)) => std::fs::read(chip.default_elf()).ok()?,
        (None, None) => return None,
    };
    bench::Symbols::from_elf(&elf).ok()
}

fn show(bar: &indicatif::ProgressBar, event: Event, json: bool) {
    match event {
        Event::Connected(chip) => bar.set_message(format!("{chip} found")),
        Event::Registered { id } => {
            if !json {
                bar.println(format!("registered {id}"));
            }
        }
        Event::Built { total } => bar.set_message(format!("writing {}", human_size(total as u64))),
        Event::Writing {
            segment,
            done,
            total,
        } => {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message(segment);
        }
        Event::Verifying(segment) => bar.set_message(format!("{segment}: verifying")),
        Event::Waiting => bar.set_message("reset; waiting for the light to come online"),
    }
}

fn list_ports(json: bool) -> CommandResult {
    let ports = bench::list_ports()
        .map_err(|e| Failure::new(Exit::Board, format!("cannot list serial ports: {e}")))?;
    if json {
        let list: Vec<_> = ports
            .iter()
            .map(|p| json!({"port": p.name, "kind": p.kind, "likely_board": p.likely_board}))
            .collect();
        return print(&to_json(&list)?);
    }
    if ports.is_empty() {
        return print("no serial ports\n");
    }
    let rows: Vec<Vec<String>> = ports
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                if p.likely_board { "yes" } else { "" }.to_string(),
                p.kind.clone(),
            ]
        })
        .collect();
    print(&table(&["PORT", "BOARD?", "KIND"], &rows))
}

async fn write_image(
    client: &herd_client::Client,
    profile: &Profile,
    args: &FlashArgs,
    out: &std::path::Path,
) -> CommandResult {
    let name = args.name.clone().unwrap_or_default();
    let given = args.image.as_ref();
    let chip = match chip_choice(args) {
        Some(chip) => chip,
        None => {
            let path = given.ok_or_else(|| {
                Failure::usage("with --out, give --chip or an --image whose chip is recorded in it")
            })?;
            let elf = provision::read_elf(Some(path), Chip::Esp32c3).map_err(failure)?;
            let found = bench::elf_chip(&elf).ok_or_else(|| {
                Failure::new(
                    Exit::Image,
                    format!("{} does not say its chip; give --chip", path.display()),
                )
            })?;
            Chip::from_name(&found).ok_or_else(|| {
                Failure::new(
                    Exit::Image,
                    format!("{} is built for {found}, not a light chip", path.display()),
                )
            })?
        }
    };
    let elf = provision::read_elf(given, chip).map_err(failure)?;
    let request = Request {
        name,
        ..request_for_image(args, profile, chip)?
    };
    let factory = provision::register(client, &request)
        .await
        .map_err(failure)?;
    let id = factory.device_id.clone();
    let image = provision::build(chip, elf, factory)
        .await
        .map_err(failure)?;
    let merged = image.merged();
    std::fs::write(out, &merged).map_err(|e| {
        Failure::new(
            Exit::Failure,
            format!("cannot write {}: {e}", out.display()),
        )
    })?;
    if args.json {
        let segments: Vec<_> = image
            .segments
            .iter()
            .map(|s| json!({"name": s.name, "offset": s.offset, "size": s.data.len()}))
            .collect();
        return print(&to_json(&json!({
            "id": id,
            "name": request.name,
            "chip": chip.name(),
            "file": out.display().to_string(),
            "size": merged.len(),
            "app_version": image.app_version,
            "app_sha256": image.app_sha256,
            "segments": segments,
        }))?);
    }
    let mut text = format!(
        "wrote {} ({}) for {} ({chip}, app {} {}) to {}\n",
        human_size(merged.len() as u64),
        merged.len(),
        request.name,
        image.app_version,
        &image.app_sha256[..12],
        out.display()
    );
    for segment in &image.segments {
        text.push_str(&format!(
            "  {:#08x}  {:>8}  {}\n",
            segment.offset,
            segment.data.len(),
            segment.name
        ));
    }
    text.push_str(&format!(
        "device {id}; write it at offset 0, e.g. `espflash write-bin 0 {}`\n",
        out.display()
    ));
    print(&text)
}

fn request_for_image(args: &FlashArgs, profile: &Profile, chip: Chip) -> Result<Request, Failure> {
    if args.name.is_none() {
        return Err(Failure::usage("--name is required"));
    }
    let mut request = request(args, profile, args.port.as_deref().unwrap_or(""))?;
    request.chip = Some(chip);
    Ok(request)
}

/// Copies the board's log to stdout until Ctrl-C.
async fn monitor(
    port: &str,
    baud: u32,
    reset: bool,
    symbols: Option<bench::Symbols>,
) -> CommandResult {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        flag.store(true, Ordering::Relaxed);
    });
    let port = port.to_string();
    eprintln!("herd: {port} at {baud} baud; Ctrl-C ends");
    tokio::task::spawn_blocking(move || {
        let mut out = std::io::stdout();
        bench::monitor(&port, baud, reset, symbols.as_ref(), &mut out, &mut || {
            !stop.load(Ordering::Relaxed)
        })
    })
    .await
    .map_err(|e| Failure::new(Exit::Failure, e.to_string()))?
    .map_err(|e| Failure::new(Exit::Board, e))
}
