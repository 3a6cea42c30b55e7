//! `herd-agent ccm --serial PORT`: the agent as a Cloud Communication Module for a host
//! MCU on a serial line.
//!
//! The bridge itself is [`firmware_core::ccm::Ccm`]; this module opens the serial port
//! (through `serialport`), boots the CCM's own device on an [`AgentPlatform`] in the data
//! directory (configuration and files as `herd-agent run` keeps them; firmware updates
//! refused), and drives both with the same [`BootLoop`] as a device, so reconnects, TLS
//! and the device socket behave as they do for `herd-agent run`. A thread reads the port
//! and hands its bytes to the loop as [`Command::Local`]; another writes the frames the
//! CCM returns, one line each. Neither can stall the loop: a host that stops reading
//! loses frames (counted and logged) once [`OUTBOX`] frames wait.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use herd_agent::ccm::{run, CcmAgentOptions};
//! use tokio_util::sync::CancellationToken;
//!
//! let mut options = CcmAgentOptions::new("/dev/ttyUSB0".into(), "/var/lib/herd-ccm".into());
//! options.server = Some("ws://127.0.0.1:8009/api/v2/rpc".into());
//! options.token = Some("0123456789abcdef01234567".into());
//! run(options, CancellationToken::new()).await?;
//! # Ok(()) }
//! ```

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use firmware_core::ccm::{Ccm, CcmCounters, CcmOptions};
use firmware_core::device::Device;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::agent::{builtin_image, factory_patch, AgentOptions, AgentPlatform};
use crate::light::LightOptions;
use crate::runner::{BootLoop, Command, LinkOptions, Observer, Stop};
use crate::slots::FileSlots;

/// Frames waiting for the serial line before new ones are dropped.
pub const OUTBOX: usize = 256;

/// Default line speed, as mjson's examples and most USB bridges use.
pub const DEFAULT_BAUD: u32 = 115_200;

/// Why a CCM takes no firmware: it is the agent binary, which this mode does not replace.
pub const REFUSE_IMAGES: &str = "a CCM takes no firmware updates";

/// How to run the CCM.
#[derive(Debug, Clone)]
pub struct CcmAgentOptions {
    /// The serial port the host MCU is on, e.g. `/dev/ttyUSB0`.
    pub serial: String,
    /// Line speed.
    pub baud: u32,
    /// Device socket URL; remembered in the factory layer like the agent's.
    pub server: Option<String>,
    /// Device token; remembered like `server`.
    pub token: Option<String>,
    /// Where the CCM's configuration and files live.
    pub data_dir: PathBuf,
    /// Reconnect policy and TLS.
    pub link: LinkOptions,
    /// Bounds and timeouts of the bridge.
    pub bridge: CcmOptions,
}

impl CcmAgentOptions {
    /// A CCM on `serial` keeping its state in `data_dir`, everything else by default.
    pub fn new(serial: String, data_dir: PathBuf) -> CcmAgentOptions {
        CcmAgentOptions {
            serial,
            baud: DEFAULT_BAUD,
            server: None,
            token: None,
            data_dir,
            link: LinkOptions::default(),
            bridge: CcmOptions::default(),
        }
    }
}

/// Opens the port and runs the CCM until `shutdown` fires or the port fails.
pub async fn run(options: CcmAgentOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    std::fs::create_dir_all(&options.data_dir)
        .with_context(|| format!("cannot create {}", options.data_dir.display()))?;
    let port = serialport::new(&options.serial, options.baud)
        .timeout(Duration::from_millis(100))
        .open_native()
        .with_context(|| format!("cannot open {}", options.serial))?;
    let writer = port
        .try_clone_native()
        .with_context(|| format!("cannot share {}", options.serial))?;
    let (commands_tx, mut commands) = mpsc::channel(16);
    let (outbox, outgoing) = mpsc::channel(OUTBOX);
    let failure = Arc::new(Mutex::new(None::<String>));
    let stop = shutdown.child_token();
    let reader = {
        let (commands, stop, failure) = (commands_tx.clone(), stop.clone(), failure.clone());
        std::thread::spawn(move || read_port(port, commands, stop, failure))
    };
    let writer = {
        let (stop, failure) = (stop.clone(), failure.clone());
        std::thread::spawn(move || write_port(writer, outgoing, stop, failure))
    };
    tracing::info!(port = %options.serial, baud = options.baud, "serial port open");

    let mut observer = CcmObserver {
        outbox,
        dropped: 0,
        counters: CcmCounters::default(),
    };
    let result = boot_loop(&options, &mut commands, commands_tx, &stop, &mut observer).await;
    stop.cancel();
    drop(observer);
    let _ = reader.join();
    let _ = writer.join();
    let failure = failure.lock().ok().and_then(|mut slot| slot.take());
    match (result, failure) {
        (Err(e), _) => Err(e),
        (Ok(()), Some(reason)) => Err(anyhow::anyhow!("{}: {reason}", options.serial)),
        (Ok(()), None) => Ok(()),
    }
}

async fn boot_loop(
    options: &CcmAgentOptions,
    commands: &mut mpsc::Receiver<Command>,
    command_sender: mpsc::Sender<Command>,
    stop: &CancellationToken,
    observer: &mut CcmObserver,
) -> anyhow::Result<()> {
    let current_exe = std::env::current_exe().context("cannot find the running executable")?;
    let mut rng = SmallRng::from_os_rng();
    let mut factory_written = false;
    loop {
        let mut slots = FileSlots::open(
            options.data_dir.join("slots"),
            builtin_image(),
            current_exe.clone(),
            true,
        )
        .context("cannot open the firmware slots")?;
        slots.refuse_updates(Some(REFUSE_IMAGES.into()));
        let platform = AgentPlatform::open(&options.data_dir, slots, &LightOptions::Simulated);
        let mut device = Device::boot(platform, 0);
        for note in device.boot_notes() {
            tracing::warn!(%note, "configuration problem at boot");
        }
        if !factory_written {
            let recorded = AgentOptions {
                server: options.server.clone(),
                token: options.token.clone(),
                ..AgentOptions::new(options.data_dir.clone())
            };
            if let Some(patch) = factory_patch(&recorded) {
                device
                    .write_factory(&patch)
                    .map_err(|e| anyhow::anyhow!("cannot record the server and token: {e}"))?;
            }
            factory_written = true;
        }
        if device.cloud().is_none() {
            tracing::warn!("no server or token configured; bridging offline");
        }
        let mut ccm = Ccm::new(device, options.bridge);
        for action in ccm.start(0) {
            if let firmware_core::Action::SendLocal(frame) = action {
                observer.local(frame);
            }
        }
        let boot_loop = BootLoop {
            device: &mut ccm,
            link: &options.link,
            rng: &mut rng,
            commands,
            command_sender: command_sender.clone(),
            shutdown: stop,
            observer,
            boot_start: Instant::now(),
        };
        match boot_loop.run().await {
            Stop::Shutdown => return Ok(()),
            Stop::Reboot => tracing::info!("rebooting"),
        }
    }
}

/// Hands the port's bytes to the loop until told to stop or the port fails.
fn read_port(
    mut port: serialport::TTYPort,
    commands: mpsc::Sender<Command>,
    stop: CancellationToken,
    failure: Arc<Mutex<Option<String>>>,
) {
    let mut buffer = [0u8; 1024];
    while !stop.is_cancelled() {
        match port.read(&mut buffer) {
            Ok(0) => {}
            Ok(n) => {
                if commands
                    .blocking_send(Command::Local(buffer[..n].to_vec()))
                    .is_err()
                {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                fail(&failure, &stop, format!("reading failed: {e}"));
                return;
            }
        }
    }
}

/// Writes each frame and its newline.
fn write_port(
    mut port: serialport::TTYPort,
    mut outgoing: mpsc::Receiver<String>,
    stop: CancellationToken,
    failure: Arc<Mutex<Option<String>>>,
) {
    while let Some(mut frame) = outgoing.blocking_recv() {
        frame.push('\n');
        if let Err(e) = port.write_all(frame.as_bytes()).and_then(|()| port.flush()) {
            fail(&failure, &stop, format!("writing failed: {e}"));
            return;
        }
    }
}

fn fail(failure: &Mutex<Option<String>>, stop: &CancellationToken, reason: String) {
    if !stop.is_cancelled() {
        tracing::error!(%reason, "serial port failed");
        if let Ok(mut slot) = failure.lock() {
            slot.get_or_insert(reason);
        }
        stop.cancel();
    }
}

struct CcmObserver {
    outbox: mpsc::Sender<String>,
    dropped: u64,
    counters: CcmCounters,
}

impl Observer<Ccm<AgentPlatform>> for CcmObserver {
    fn connection(&mut self, up: bool) {
        if up {
            tracing::info!("connected");
        } else {
            tracing::info!("disconnected");
        }
    }

    fn changed(&mut self, ccm: &mut Ccm<AgentPlatform>) {
        let counters = ccm.counters();
        if counters == self.counters {
            return;
        }
        if counters.host_errors > self.counters.host_errors {
            tracing::warn!(
                total = counters.host_errors,
                "the host sent a line that was answered with an error"
            );
        }
        if counters.timeouts > self.counters.timeouts {
            tracing::warn!(
                total = counters.timeouts,
                "the host did not answer a call in time"
            );
        }
        tracing::debug!(?counters, "bridge");
        self.counters = counters;
    }

    fn local(&mut self, frame: String) {
        if self.outbox.try_send(frame).is_err() {
            self.dropped += 1;
            tracing::warn!(
                total = self.dropped,
                "the serial line is not keeping up; frame dropped"
            );
        }
    }
}
