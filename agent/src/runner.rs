//! The thin IO loop around [`Device`]: it owns the WebSocket, the clock and the reconnect
//! policy, feeds the engine what happened and performs what it returns. All protocol
//! decisions stay in `firmware_core`, as in rumqttc's split between state and event loop.
//! The loop drives any [`Engine`]: the device itself, or the CCM wrapping it, whose second
//! channel (the serial line) comes in as [`Command::Local`] and goes out through
//! [`Observer::local`].

use std::future::pending;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use firmware_core::ccm::Ccm;
use firmware_core::device::{Action, Device};
use firmware_core::platform::Platform;
use firmware_core::pull::DownloadRequest;
use futures_util::{SinkExt, StreamExt};
use rand::rngs::SmallRng;
use rand::Rng;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Reconnect policy and socket limits.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// First reconnect delay; doubles per failure up to `backoff_max`.
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Longest wait for TCP, TLS and the WebSocket handshake.
    pub connect_timeout: Duration,
    /// Whom `wss://` and `https://` trust (see [`herd_client::tls`]); `None`: the
    /// system's certificate authorities.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Default for LinkOptions {
    fn default() -> Self {
        LinkOptions {
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(15),
            tls: None,
        }
    }
}

/// Small buffers: a fleet process holds a thousand of these sockets.
pub fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(256 * 1024)
        .max_message_size(Some(64 * 1024))
        .max_frame_size(Some(64 * 1024))
}

/// Exponential backoff with full jitter: each delay is drawn from the upper half of the
/// current step, so a fleet that lost its server does not come back in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// Starts at `initial`.
    pub fn new(options: &LinkOptions) -> Backoff {
        Backoff {
            initial: options.backoff_initial,
            max: options.backoff_max.max(options.backoff_initial),
            step: options.backoff_initial,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self, rng: &mut SmallRng) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        half + step.saturating_sub(half).mul_f64(rng.random::<f64>())
    }

    /// After a connection that worked.
    pub fn reset(&mut self) {
        self.step = self.initial;
    }
}

/// What a [`BootLoop`] drives: the device engine, or an engine wrapping one.
pub trait Engine: Send {
    /// The platform of the device inside.
    type Platform: Platform;
    /// The device inside, for what only a device does (buttons, downloads, status).
    fn device(&mut self) -> &mut Device<Self::Platform>;
    /// `(server URL, device token)` when the cloud connection is configured.
    fn cloud(&self) -> Option<(String, String)>;
    /// The cloud connection came up.
    fn connected(&mut self, now_ms: u64) -> Vec<Action>;
    /// The cloud connection went down.
    fn disconnected(&mut self, now_ms: u64) -> Vec<Action>;
    /// Bytes from the cloud.
    fn receive(&mut self, bytes: &[u8], now_ms: u64) -> Vec<Action>;
    /// Bytes from the local channel (a serial line); ignored unless the engine has one.
    fn local(&mut self, _bytes: &[u8], _now_ms: u64) -> Vec<Action> {
        Vec::new()
    }
    /// When [`Engine::poll`] next has work, in milliseconds of this boot.
    fn next_deadline(&self) -> Option<u64>;
    /// Runs timers.
    fn poll(&mut self, now_ms: u64) -> Vec<Action>;
}

impl<P: Platform + Send> Engine for Device<P> {
    type Platform = P;
    fn device(&mut self) -> &mut Device<P> {
        self
    }
    fn cloud(&self) -> Option<(String, String)> {
        Device::cloud(self)
    }
    fn connected(&mut self, now_ms: u64) -> Vec<Action> {
        Device::connected(self, now_ms)
    }
    fn disconnected(&mut self, now_ms: u64) -> Vec<Action> {
        Device::disconnected(self, now_ms);
        Vec::new()
    }
    fn receive(&mut self, bytes: &[u8], now_ms: u64) -> Vec<Action> {
        Device::receive(self, bytes, now_ms)
    }
    fn next_deadline(&self) -> Option<u64> {
        Device::next_deadline(self)
    }
    fn poll(&mut self, now_ms: u64) -> Vec<Action> {
        Device::poll(self, now_ms)
    }
}

impl<P: Platform + Send> Engine for Ccm<P> {
    type Platform = P;
    fn device(&mut self) -> &mut Device<P> {
        self.device_mut()
    }
    fn cloud(&self) -> Option<(String, String)> {
        Ccm::cloud(self)
    }
    fn connected(&mut self, now_ms: u64) -> Vec<Action> {
        Ccm::connected(self, now_ms)
    }
    fn disconnected(&mut self, now_ms: u64) -> Vec<Action> {
        Ccm::disconnected(self, now_ms)
    }
    fn receive(&mut self, bytes: &[u8], now_ms: u64) -> Vec<Action> {
        Ccm::receive(self, bytes, now_ms)
    }
    fn local(&mut self, bytes: &[u8], now_ms: u64) -> Vec<Action> {
        self.host_bytes(bytes, now_ms)
    }
    fn next_deadline(&self) -> Option<u64> {
        Ccm::next_deadline(self)
    }
    fn poll(&mut self, now_ms: u64) -> Vec<Action> {
        Ccm::poll(self, now_ms)
    }
}

/// Something that happens to the device from outside the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// The button went down (`true`) or up.
    Button(bool),
    /// Someone switched the light locally.
    SetLight(bool),
    /// The network drops for this long (a flapping device).
    Offline(Duration),
    /// Power-cycle.
    Reboot,
    /// Progress of the firmware download with this id (see [`DownloadFeed`]).
    Download(u64, DownloadEvent),
    /// Bytes from the local channel (the serial line of a CCM).
    Local(Vec<u8>),
}

/// What a download task reports back to the device loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownloadEvent {
    /// The image's size is known; sent again, the download starts over.
    Started(usize),
    /// Bytes at an offset in the image.
    Chunk(u64, Vec<u8>),
    /// All bytes delivered.
    Finished,
    /// The download failed.
    Failed(String),
}

/// Ids of downloads, unique in the process, so that events of a download that was given
/// up never reach a later one.
static DOWNLOAD_IDS: AtomicU64 = AtomicU64::new(1);

/// How a download task hands what it fetched to the device loop. The loop cancels it when
/// the device no longer wants the bytes (the image was refused, the device rebooted, the
/// agent stops).
#[derive(Debug, Clone)]
pub struct DownloadFeed {
    id: u64,
    events: mpsc::Sender<Command>,
    cancel: CancellationToken,
}

impl DownloadFeed {
    /// A feed into `events`, stopped by `cancel`.
    pub fn new(events: mpsc::Sender<Command>, cancel: CancellationToken) -> DownloadFeed {
        DownloadFeed {
            id: DOWNLOAD_IDS.fetch_add(1, Ordering::Relaxed),
            events,
            cancel,
        }
    }

    /// Hands an event to the device; `false` once the device no longer listens.
    pub async fn send(&self, event: DownloadEvent) -> bool {
        tokio::select! {
            _ = self.cancel.cancelled() => false,
            sent = self.events.send(Command::Download(self.id, event)) => sent.is_ok(),
        }
    }

    /// Whether the device gave up on this download.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Resolves when the device gives up on this download.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }
}

/// Why a boot ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The owner asked to stop.
    Shutdown,
    /// The device reboots; boot a new [`Device`] on the platform.
    Reboot,
}

/// Hooks for the owner of the loop: status displays, counters, tests.
pub trait Observer<E: Engine>: Send {
    /// The cloud connection came up or went down.
    fn connection(&mut self, _up: bool) {}
    /// Something may have changed (light, firmware state).
    fn changed(&mut self, _engine: &mut E) {}
    /// One frame for the local channel ([`Action::SendLocal`]); dropped by default.
    fn local(&mut self, _frame: String) {}
    /// The device asked for a firmware download (`OTA.Update`, `desired.ota`): fetch
    /// it and hand it over through `feed`, from a task of its own. The default refuses it.
    fn download(&mut self, request: DownloadRequest, feed: DownloadFeed) {
        tokio::spawn(async move {
            let message = format!("downloads are not supported here ({})", request.url);
            feed.send(DownloadEvent::Failed(message)).await;
        });
    }
}

/// What a boot has pending besides the socket: a reboot, a download.
#[derive(Debug, Default)]
struct Pending {
    reboot_at: Option<Instant>,
    /// The download under way, by id, and how to stop it.
    download: Option<(u64, CancellationToken)>,
}

impl Pending {
    fn stop_download(&mut self) {
        if let Some((_, cancel)) = self.download.take() {
            cancel.cancel();
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // A boot that ends takes its download with it.
        self.stop_download();
    }
}

/// Runs one boot of `device` until it reboots or `shutdown` fires.
pub struct BootLoop<'a, E: Engine, O: Observer<E>> {
    /// The engine.
    pub device: &'a mut E,
    /// Reconnect policy.
    pub link: &'a LinkOptions,
    /// Jitter source.
    pub rng: &'a mut SmallRng,
    /// Commands from outside.
    pub commands: &'a mut mpsc::Receiver<Command>,
    /// A sender into `commands`, for download tasks.
    pub command_sender: mpsc::Sender<Command>,
    /// Stops everything.
    pub shutdown: &'a CancellationToken,
    /// Hooks.
    pub observer: &'a mut O,
    /// When this boot started; engine time is milliseconds since then.
    pub boot_start: Instant,
}

/// How a connected session ended.
enum SessionEnd {
    Stop(Stop),
    Lost,
    Offline(Duration),
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => pending().await,
    }
}

impl<E: Engine, O: Observer<E>> BootLoop<'_, E, O> {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.boot_start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn deadline(&self) -> Option<Instant> {
        self.device
            .next_deadline()
            .map(|ms| self.boot_start + Duration::from_millis(ms))
    }

    /// Runs the boot to its end.
    pub async fn run(mut self) -> Stop {
        let mut backoff = Backoff::new(self.link);
        let mut pending = Pending::default();
        loop {
            let mut offline_for = None;
            if let Some((url, token)) = self.device.cloud() {
                let connecting = connect(
                    &url,
                    &token,
                    self.link.connect_timeout,
                    self.link.tls.clone(),
                );
                let result = tokio::select! {
                    _ = self.shutdown.cancelled() => return Stop::Shutdown,
                    _ = sleep_opt(pending.reboot_at) => return Stop::Reboot,
                    result = connecting => result,
                };
                match result {
                    Ok(ws) => match self.session(ws, &mut backoff, &mut pending).await {
                        SessionEnd::Stop(stop) => return stop,
                        SessionEnd::Lost => {}
                        SessionEnd::Offline(duration) => offline_for = Some(duration),
                    },
                    Err(e) => tracing::debug!(error = %e, "cannot connect"),
                }
            }
            let delay = offline_for.unwrap_or_else(|| backoff.next_delay(self.rng));
            if let Some(stop) = self.offline(Instant::now() + delay, &mut pending).await {
                return stop;
            }
        }
    }

    /// Waits until `until` without a connection, still serving commands and timers.
    async fn offline(&mut self, until: Instant, pending: &mut Pending) -> Option<Stop> {
        loop {
            let deadline = self.deadline();
            tokio::select! {
                _ = self.shutdown.cancelled() => return Some(Stop::Shutdown),
                _ = sleep_opt(pending.reboot_at) => return Some(Stop::Reboot),
                _ = sleep_until(until) => return None,
                _ = sleep_opt(deadline) => {
                    let actions = self.device.poll(self.now_ms());
                    self.perform_offline(actions, pending);
                }
                command = self.commands.recv() => {
                    let Some(command) = command else { return Some(Stop::Shutdown) };
                    match command {
                        Command::Offline(_) => {}
                        other => {
                            let actions = self.command(other, pending);
                            self.perform_offline(actions, pending);
                        }
                    }
                }
            }
            self.settle(pending);
        }
    }

    /// After every event: stop a download the device no longer wants, and tell the
    /// observer.
    fn settle(&mut self, pending: &mut Pending) {
        if pending.download.is_some() && !self.device.device().downloading() {
            pending.stop_download();
        }
        self.observer.changed(self.device);
    }

    fn command(&mut self, command: Command, pending: &mut Pending) -> Vec<Action> {
        let now = self.now_ms();
        match command {
            Command::Button(pressed) => self.device.device().button(pressed, now),
            Command::SetLight(on) => self.device.device().set_light(on, now),
            Command::Local(bytes) => self.device.local(&bytes, now),
            Command::Reboot => {
                pending.reboot_at = Some(Instant::now());
                Vec::new()
            }
            Command::Offline(_) => Vec::new(),
            Command::Download(id, event) => {
                if pending.download.as_ref().map(|(current, _)| *current) != Some(id) {
                    // A download given up on; its bytes are for nobody.
                    return Vec::new();
                }
                let device = self.device.device();
                match event {
                    DownloadEvent::Started(size) => device.download_started(size, now),
                    DownloadEvent::Chunk(offset, bytes) => {
                        device.download_chunk(offset, &bytes, now)
                    }
                    DownloadEvent::Finished => device.download_finished(now),
                    DownloadEvent::Failed(message) => device.download_failed(&message, now),
                }
            }
        }
    }

    /// Performs actions while disconnected: frames have nowhere to go.
    fn perform_offline(&mut self, actions: Vec<Action>, pending: &mut Pending) {
        for action in actions {
            self.side_effect(action, pending);
        }
    }

    fn side_effect(&mut self, action: Action, pending: &mut Pending) {
        match action {
            Action::Send(_) => {}
            Action::SendLocal(frame) => self.observer.local(frame),
            Action::Reboot { delay_ms } => {
                let at = Instant::now() + Duration::from_millis(delay_ms);
                pending.reboot_at = Some(pending.reboot_at.map_or(at, |t| t.min(at)));
            }
            Action::Download(request) => {
                pending.stop_download();
                let cancel = self.shutdown.child_token();
                let feed = DownloadFeed::new(self.command_sender.clone(), cancel.clone());
                pending.download = Some((feed.id, cancel));
                self.observer.download(request, feed);
            }
        }
    }

    async fn perform(
        &mut self,
        ws: &mut Ws,
        actions: Vec<Action>,
        pending: &mut Pending,
    ) -> Result<(), String> {
        let mut queued = false;
        for action in actions {
            match action {
                Action::Send(text) => {
                    ws.feed(Message::text(text))
                        .await
                        .map_err(|e| e.to_string())?;
                    queued = true;
                }
                other => self.side_effect(other, pending),
            }
        }
        if queued {
            ws.flush().await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    async fn session(
        &mut self,
        mut ws: Ws,
        backoff: &mut Backoff,
        pending: &mut Pending,
    ) -> SessionEnd {
        self.observer.connection(true);
        let actions = self.device.connected(self.now_ms());
        let mut end = match self.perform(&mut ws, actions, pending).await {
            Ok(()) => None,
            Err(_) => Some(SessionEnd::Lost),
        };
        self.observer.changed(self.device);
        while end.is_none() {
            let deadline = self.deadline();
            let result: Result<(), String> = tokio::select! {
                _ = self.shutdown.cancelled() => {
                    let _ = ws.close(None).await;
                    end = Some(SessionEnd::Stop(Stop::Shutdown));
                    Ok(())
                }
                _ = sleep_opt(pending.reboot_at) => {
                    let _ = ws.close(None).await;
                    end = Some(SessionEnd::Stop(Stop::Reboot));
                    Ok(())
                }
                message = ws.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        // The server speaks first (Sys.GetInfo): the link works, so the
                        // next failure starts the backoff from the bottom again.
                        backoff.reset();
                        let actions = self.device.receive(text.as_bytes(), self.now_ms());
                        self.perform(&mut ws, actions, pending).await
                    }
                    Some(Ok(Message::Binary(bytes))) => {
                        let actions = self.device.receive(&bytes, self.now_ms());
                        self.perform(&mut ws, actions, pending).await
                    }
                    // tungstenite queued the pong; flush it now.
                    Some(Ok(Message::Ping(_))) => ws.flush().await.map_err(|e| e.to_string()),
                    Some(Ok(Message::Close(_))) | None => Err("closed by the server".into()),
                    Some(Ok(_)) => Ok(()),
                    Some(Err(e)) => Err(e.to_string()),
                },
                _ = sleep_opt(deadline) => {
                    let actions = self.device.poll(self.now_ms());
                    self.perform(&mut ws, actions, pending).await
                }
                command = self.commands.recv() => match command {
                    None => {
                        end = Some(SessionEnd::Stop(Stop::Shutdown));
                        Ok(())
                    }
                    Some(Command::Offline(duration)) => {
                        let _ = ws.close(None).await;
                        end = Some(SessionEnd::Offline(duration));
                        Ok(())
                    }
                    Some(command) => {
                        let actions = self.command(command, pending);
                        self.perform(&mut ws, actions, pending).await
                    }
                },
            };
            if let Err(reason) = result {
                tracing::debug!(%reason, "connection lost");
                end = Some(SessionEnd::Lost);
            }
            self.settle(pending);
        }
        let actions = self.device.disconnected(self.now_ms());
        self.perform_offline(actions, pending);
        self.observer.connection(false);
        self.observer.changed(self.device);
        end.unwrap_or(SessionEnd::Lost)
    }
}

/// Opens the device socket with the token as a Bearer header (PROTOCOL §1).
async fn connect(
    url: &str,
    token: &str,
    timeout: Duration,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> Result<Ws, String> {
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    let header = format!("Bearer {token}")
        .parse()
        .map_err(|_| "the token is not a valid header value".to_string())?;
    request.headers_mut().insert("Authorization", header);
    let connecting = tokio_tungstenite::connect_async_tls_with_config(
        request,
        Some(socket_config()),
        true,
        tls.map(tokio_tungstenite::Connector::Rustls),
    );
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("connect timed out".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn backoff_grows_with_jitter_and_resets() {
        let options = LinkOptions {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
            connect_timeout: Duration::from_secs(1),
            tls: None,
        };
        let mut rng = SmallRng::seed_from_u64(1);
        let mut backoff = Backoff::new(&options);
        let delays: Vec<Duration> = (0..8).map(|_| backoff.next_delay(&mut rng)).collect();
        for (n, delay) in delays.iter().enumerate() {
            let step = (100u64 << n).min(1000);
            assert!(*delay >= Duration::from_millis(step / 2), "{n}: {delay:?}");
            assert!(*delay <= Duration::from_millis(step), "{n}: {delay:?}");
        }
        backoff.reset();
        assert!(backoff.next_delay(&mut rng) <= Duration::from_millis(100));
    }
}
