//! herd-light: the Herd smart light on an ESP32-C3 or ESP32-C6.
//!
//! Board wiring and the IO loop only. Everything the light decides (RPC services,
//! configuration layers, shadow, OTA, provisioning, the button) is the `firmware_core`
//! engine that `herd-agent` runs on Linux too; the flash layouts (configuration records,
//! partition table, OTA data, boot record) are `firmware_core::flash` and
//! `firmware_core::idf`, tested on the host. This file brings up the chip, opens the
//! slots, boots the engine, and then either joins the configured Wi-Fi and keeps a
//! WebSocket to `dash.server` (reconnecting with backoff), or, unprovisioned, offers an
//! access point with the RPC services at `POST http://192.168.4.1/rpc`.
#![no_std]
#![no_main]

extern crate alloc;

mod dhcp;
mod link;
mod platform;
mod rng;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use portable_atomic::{AtomicU32, Ordering};

use embassy_executor::Spawner;
use embassy_futures::select::{select3, Either3};
use embassy_net::{
    Config as NetConfig, Ipv4Address, Ipv4Cidr, Runner, Stack, StackResources, StaticConfigV4,
};
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::channel::Channel;
use embassy_time::{Duration, Instant, Timer};
use esp_hal::clock::CpuClock;
use esp_hal::timer::timg::TimerGroup;
use esp_radio::wifi::ap::AccessPointConfig;
use esp_radio::wifi::sta::StationConfig;
use esp_radio::wifi::{
    AuthenticationMethodConfig, Config as WifiConfig, Interface, WifiController,
};
use esp_storage::FlashStorage;
use firmware_core::device::{Action, Device, Network};
use firmware_core::flash::Flash as _;
use firmware_core::idf::{
    FlashSlots, Opened, PartitionTable, PARTITION_TABLE_OFFSET, PARTITION_TABLE_SIZE,
};
use firmware_core::pull::DownloadRequest;
use log::{info, warn};
use rand_core::RngCore as _;
use static_cell::StaticCell;

use crate::link::{Buffers, Incoming, Stream, WebSocket};
use crate::platform::{BootButton, EspFlash, EspPlatform, WifiStatus, ARCH, WIFI};
use crate::rng::Entropy;

use esp_backtrace as _;

esp_bootloader_esp_idf::esp_app_desc!();

/// Heap: the radio needs about 60 KiB, a TLS session about 40 KiB.
const HEAP_RECLAIMED: usize = 64 * 1024;
const HEAP_MAIN: usize = 96 * 1024;

/// How often the button is sampled while nothing else happens.
const BUTTON_POLL: Duration = Duration::from_millis(25);

/// The access point's own address while provisioning.
const AP_ADDRESS: Ipv4Address = Ipv4Address::new(192, 168, 4, 1);

type Light = Device<EspPlatform>;

fn now_ms() -> u64 {
    Instant::now().as_millis()
}

/// Stops here for good, saying why on the console (a board that cannot read its own
/// partition table has nothing better to do).
fn halt(why: &str) -> ! {
    log::error!("halted: {why}");
    loop {
        core::hint::spin_loop();
    }
}

fn read_layout(flash: &mut EspFlash) -> firmware_core::idf::Layout {
    let mut table = vec![0u8; PARTITION_TABLE_SIZE];
    if let Err(e) = flash.read(PARTITION_TABLE_OFFSET, &mut table) {
        halt(&format!("cannot read the partition table: {e}"));
    }
    match PartitionTable::parse(&table).and_then(|table| table.layout()) {
        Ok(layout) => layout,
        Err(e) => halt(&format!("unusable partition table: {e}")),
    }
}

#[esp_rtos::main]
async fn main(spawner: Spawner) -> ! {
    esp_println::logger::init_logger_from_env();
    let peripherals = esp_hal::init(esp_hal::Config::default().with_cpu_clock(CpuClock::max()));
    esp_alloc::heap_allocator!(#[esp_hal::ram(reclaimed)] size: HEAP_RECLAIMED);
    esp_alloc::heap_allocator!(size: HEAP_MAIN);
    let timg0 = TimerGroup::new(peripherals.TIMG0);
    esp_rtos::start(timg0.timer0, peripherals.FROM_CPU_INTR0);

    let mut flash = EspFlash::new(FlashStorage::new(peripherals.FLASH));
    let layout = read_layout(&mut flash);
    let slots = match FlashSlots::open(flash, layout, ARCH, |flash, slot| {
        FlashSlots::running_from_flash(flash, slot, ARCH)
    }) {
        Ok(Opened::Run(slots)) => slots,
        Ok(Opened::Restart(_)) => {
            info!("the boot record chose the other slot; restarting into it");
            esp_hal::system::software_reset()
        }
        Err(e) => halt(&format!("cannot open the firmware slots: {e}")),
    };
    let mac = esp_hal::efuse::base_mac_address().to_string();
    let platform = match EspPlatform::new(slots, mac, HEAP_RECLAIMED + HEAP_MAIN) {
        Ok(platform) => platform,
        Err(e) => halt(&format!("cannot open the configuration records: {e}")),
    };
    let mut device = Device::boot(platform, now_ms());
    for note in device.boot_notes() {
        warn!("{note}");
    }
    let status = device.status();
    info!(
        "herd-light {} ({}) slot {} committed {}",
        status.image.fw_version, ARCH, status.boot.partition, status.boot.committed
    );
    let button_pin = device.config().get_i64("provision.button.pin");
    let light_pin = device.config().get_i64("smartlight.pin");
    let mut button = (button_pin != light_pin)
        .then(|| u8::try_from(button_pin).ok())
        .flatten()
        .map(BootButton::new);

    let controller = match WifiController::new(peripherals.WIFI, Default::default()) {
        Ok(controller) => controller,
        Err(e) => halt(&format!("cannot start Wi-Fi: {e:?}")),
    };
    let seed = Entropy.next_u64();
    static RESOURCES: StaticCell<StackResources<6>> = StaticCell::new();
    match device.network() {
        Network::Station { ssid, pass } => {
            let (stack, runner) = embassy_net::new(
                Interface::station(),
                NetConfig::dhcpv4(Default::default()),
                RESOURCES.init(StackResources::new()),
                seed,
            );
            spawner.spawn(net_task(runner).expect("one network task"));
            spawner.spawn(station_task(controller, ssid, pass, stack).expect("one Wi-Fi task"));
            cloud(stack, &mut device, &mut button, spawner).await
        }
        Network::AccessPoint { ssid, pass } => {
            let config = NetConfig::ipv4_static(StaticConfigV4 {
                address: Ipv4Cidr::new(AP_ADDRESS, 24),
                gateway: Some(AP_ADDRESS),
                dns_servers: Default::default(),
            });
            let (stack, runner) = embassy_net::new(
                Interface::access_point(),
                config,
                RESOURCES.init(StackResources::new()),
                seed,
            );
            spawner.spawn(net_task(runner).expect("one network task"));
            spawner.spawn(access_point_task(controller, ssid, pass).expect("one Wi-Fi task"));
            spawner.spawn(dhcp::server_task(stack, AP_ADDRESS).expect("one DHCP task"));
            provisioning(stack, &mut device, &mut button).await
        }
        Network::None => loop {
            let actions = local_events(&mut device, &mut button, None).await;
            perform_offline(&mut device, actions, spawner, None);
        },
    }
}

#[embassy_executor::task]
async fn net_task(mut runner: Runner<'static, Interface>) -> ! {
    runner.run().await
}

fn set_wifi(status: WifiStatus) {
    critical_section::with(|cs| *WIFI.borrow_ref_mut(cs) = Some(status));
}

/// Keeps the station joined to `ssid`, retrying with backoff when it drops.
#[embassy_executor::task]
async fn station_task(
    mut controller: WifiController<'static>,
    ssid: String,
    pass: String,
    stack: Stack<'static>,
) -> ! {
    let authentication = if pass.is_empty() {
        AuthenticationMethodConfig::Open
    } else {
        match pass.as_str().try_into() {
            Ok(password) => AuthenticationMethodConfig::Wpa2Personal(password),
            Err(_) => halt("wifi.sta.pass is too long"),
        }
    };
    let Ok(name) = ssid.as_str().try_into() else {
        halt("wifi.sta.ssid is too long")
    };
    let config = WifiConfig::Station(
        StationConfig::default()
            .with_ssid(name)
            .with_authentication(authentication),
    );
    if let Err(e) = controller.set_config(&config) {
        halt(&format!("cannot configure the station: {e:?}"));
    }
    let mut backoff = Backoff::new();
    loop {
        set_wifi(WifiStatus {
            ssid: ssid.clone(),
            mode: "sta",
            ..WifiStatus::default()
        });
        match controller.connect_async().await {
            Ok(_) => {
                info!("joined {ssid}");
                backoff.reset();
                let ip = loop {
                    if let Some(config) = stack.config_v4() {
                        break config.address.address().to_string();
                    }
                    if !controller.is_connected() {
                        break String::new();
                    }
                    Timer::after(Duration::from_millis(200)).await;
                };
                set_wifi(WifiStatus {
                    ssid: ssid.clone(),
                    mode: "sta",
                    ip,
                    connected: true,
                });
                let _ = controller.wait_for_disconnect_async().await;
                warn!("left {ssid}");
            }
            Err(e) => {
                let delay = backoff.next();
                warn!(
                    "cannot join {ssid}: {e:?}; again in {} ms",
                    delay.as_millis()
                );
                Timer::after(delay).await;
            }
        }
    }
}

/// Offers the provisioning access point.
#[embassy_executor::task]
async fn access_point_task(
    mut controller: WifiController<'static>,
    ssid: String,
    pass: String,
) -> ! {
    let authentication = if pass.len() < 8 {
        AuthenticationMethodConfig::Open
    } else {
        match pass.as_str().try_into() {
            Ok(password) => AuthenticationMethodConfig::Wpa2Personal(password),
            Err(_) => AuthenticationMethodConfig::Open,
        }
    };
    let Ok(name) = ssid.as_str().try_into() else {
        halt("wifi.ap.ssid is too long")
    };
    let config = WifiConfig::AccessPoint(
        AccessPointConfig::default()
            .with_ssid(name)
            .with_authentication(authentication),
    );
    if let Err(e) = controller.set_config(&config) {
        halt(&format!("cannot start the access point: {e:?}"));
    }
    info!("provisioning: access point {ssid}, RPC at http://{AP_ADDRESS}/rpc");
    set_wifi(WifiStatus {
        ssid,
        mode: "ap",
        ip: AP_ADDRESS.to_string(),
        connected: true,
    });
    loop {
        Timer::after(Duration::from_secs(3600)).await;
    }
}

/// Exponential backoff with jitter, 1 s to 60 s.
struct Backoff {
    step_ms: u64,
}

impl Backoff {
    const FIRST_MS: u64 = 1000;
    const MAX_MS: u64 = 60_000;

    fn new() -> Backoff {
        Backoff {
            step_ms: Self::FIRST_MS,
        }
    }

    fn next(&mut self) -> Duration {
        let step = self.step_ms;
        self.step_ms = (self.step_ms * 2).min(Self::MAX_MS);
        let half = step / 2;
        Duration::from_millis(half + u64::from(Entropy.next_u32()) % (step - half + 1))
    }

    fn reset(&mut self) {
        self.step_ms = Self::FIRST_MS;
    }
}

/// Firmware downloads: one at a time, by generation, so the bytes of one given up on
/// reach nobody.
static DOWNLOAD_GENERATION: AtomicU32 = AtomicU32::new(0);
static DOWNLOADS: Channel<CriticalSectionRawMutex, (u32, Fetched), 2> = Channel::new();

/// What the download task hands to the engine.
enum Fetched {
    Started(usize),
    Chunk(u64, Vec<u8>),
    Finished,
    Failed(String),
}

fn feed(device: &mut Light, generation: u32, fetched: Fetched) -> Vec<Action> {
    if generation != DOWNLOAD_GENERATION.load(Ordering::Relaxed) || !device.downloading() {
        return Vec::new();
    }
    let now = now_ms();
    match fetched {
        Fetched::Started(size) => device.download_started(size, now),
        Fetched::Chunk(offset, bytes) => device.download_chunk(offset, &bytes, now),
        Fetched::Finished => device.download_finished(now),
        Fetched::Failed(message) => device.download_failed(&message, now),
    }
}

#[embassy_executor::task]
async fn download_task(
    stack: Stack<'static>,
    request: DownloadRequest,
    ca: Vec<u8>,
    generation: u32,
) {
    let current = || DOWNLOAD_GENERATION.load(Ordering::Relaxed) == generation;
    let result = fetch(stack, &request, &ca, generation, &current).await;
    if let Err(message) = result {
        if current() {
            DOWNLOADS.send((generation, Fetched::Failed(message))).await;
        }
    }
}

async fn fetch(
    stack: Stack<'static>,
    request: &DownloadRequest,
    ca: &[u8],
    generation: u32,
    current: &dyn Fn() -> bool,
) -> Result<(), String> {
    let target = link::parse_url(&request.url)?;
    let mut buffers = Buffers::new();
    let stream = link::connect(stack, &target, ca, &mut buffers, Duration::from_secs(20))
        .await
        .map_err(|e| link::describe(&e))?;
    let (head, first, mut stream) = link::get(stream, &target, request.token.as_deref())
        .await
        .map_err(|e| link::describe(&e))?;
    if head.status != 200 {
        return Err(format!("the server answered {} for the image", head.status));
    }
    let size = head.length.ok_or("the server gave no Content-Length")? as usize;
    DOWNLOADS.send((generation, Fetched::Started(size))).await;
    let mut offset = 0u64;
    if !first.is_empty() {
        offset += first.len() as u64;
        DOWNLOADS.send((generation, Fetched::Chunk(0, first))).await;
    }
    let mut chunk = vec![0u8; 2048];
    while offset < size as u64 {
        if !current() {
            return Ok(());
        }
        let n = read_some(&mut stream, &mut chunk).await?;
        if n == 0 {
            return Err(format!("the download ended after {offset} of {size} bytes"));
        }
        DOWNLOADS
            .send((generation, Fetched::Chunk(offset, chunk[..n].to_vec())))
            .await;
        offset += n as u64;
    }
    DOWNLOADS.send((generation, Fetched::Finished)).await;
    Ok(())
}

async fn read_some(stream: &mut Stream<'_>, buf: &mut [u8]) -> Result<usize, String> {
    stream.read(buf).await.map_err(|e| link::describe(&e))
}

/// Performs what needs no cloud link: reboots, downloads. Frames have nowhere to go.
fn perform_offline(
    device: &mut Light,
    actions: Vec<Action>,
    spawner: Spawner,
    stack: Option<Stack<'static>>,
) {
    for action in actions {
        side_effect(device, action, spawner, stack);
    }
}

fn side_effect(
    device: &mut Light,
    action: Action,
    spawner: Spawner,
    stack: Option<Stack<'static>>,
) {
    match action {
        Action::Send(_) | Action::SendLocal(_) => {}
        Action::Reboot { delay_ms } => {
            info!("restarting in {delay_ms} ms");
            // The replies already written need a moment to leave.
            let until = Instant::now() + Duration::from_millis(delay_ms.max(50));
            while Instant::now() < until {}
            esp_hal::system::software_reset()
        }
        Action::Download(request) => {
            let generation = DOWNLOAD_GENERATION.fetch_add(1, Ordering::Relaxed) + 1;
            let ca = link::ca_from_config(&device.config().get_str("dash.ca_cert"));
            let spawned = stack.ok_or("no network").and_then(|stack| {
                spawner.spawn(
                    download_task(stack, request, ca, generation)
                        .map_err(|_| "a download is still running")?,
                );
                Ok(())
            });
            if let Err(why) = spawned {
                let actions = device.download_failed(why, now_ms());
                perform_offline(device, actions, spawner, stack);
            }
        }
    }
}

/// Waits for the next local event: the button (sampled), an engine deadline, or a
/// download, and returns what the engine made of it.
async fn local_events(
    device: &mut Light,
    button: &mut Option<BootButton>,
    until: Option<Instant>,
) -> Vec<Action> {
    let deadline = device
        .next_deadline()
        .map(Instant::from_millis)
        .unwrap_or(Instant::MAX)
        .min(Instant::now() + BUTTON_POLL)
        .min(until.unwrap_or(Instant::MAX));
    match embassy_futures::select::select(Timer::at(deadline), DOWNLOADS.receive()).await {
        embassy_futures::select::Either::First(()) => match button {
            Some(button) => device.poll_button(button, now_ms()),
            None => device.poll(now_ms()),
        },
        embassy_futures::select::Either::Second((generation, fetched)) => {
            feed(device, generation, fetched)
        }
    }
}

/// The provisioned light: join the cloud and stay joined.
async fn cloud(
    stack: Stack<'static>,
    device: &mut Light,
    button: &mut Option<BootButton>,
    spawner: Spawner,
) -> ! {
    let mut backoff = Backoff::new();
    let mut buffers = Buffers::new();
    loop {
        let delay = match device.cloud() {
            None => Duration::from_secs(3600),
            Some((url, token)) if stack.config_v4().is_some() => {
                match session(
                    stack,
                    device,
                    button,
                    spawner,
                    &mut buffers,
                    &url,
                    &token,
                    &mut backoff,
                )
                .await
                {
                    Ok(()) => Duration::from_millis(0),
                    Err(e) => {
                        warn!("cloud link: {e}");
                        backoff.next()
                    }
                }
            }
            Some(_) => Duration::from_millis(500),
        };
        let until = Instant::now() + delay;
        while Instant::now() < until {
            let actions = local_events(device, button, Some(until)).await;
            perform_offline(device, actions, spawner, Some(stack));
        }
    }
}

/// One connected session, until the link fails.
#[allow(clippy::too_many_arguments)]
async fn session(
    stack: Stack<'static>,
    device: &mut Light,
    button: &mut Option<BootButton>,
    spawner: Spawner,
    buffers: &mut Buffers,
    url: &str,
    token: &str,
    backoff: &mut Backoff,
) -> Result<(), String> {
    let target = link::parse_url(url)?;
    let ca = link::ca_from_config(&device.config().get_str("dash.ca_cert"));
    let stream = link::connect(stack, &target, &ca, buffers, Duration::from_secs(15))
        .await
        .map_err(|e| link::describe(&e))?;
    let mut ws = WebSocket::open(stream, &target, token)
        .await
        .map_err(|e| link::describe(&e))?;
    info!("connected to {}", target.host);
    let actions = device.connected(now_ms());
    let result = run_session(&mut ws, device, button, spawner, stack, actions, backoff).await;
    device.disconnected(now_ms());
    result
}

async fn run_session(
    ws: &mut WebSocket<'_>,
    device: &mut Light,
    button: &mut Option<BootButton>,
    spawner: Spawner,
    stack: Stack<'static>,
    first: Vec<Action>,
    backoff: &mut Backoff,
) -> Result<(), String> {
    let mut actions = first;
    loop {
        for action in core::mem::take(&mut actions) {
            match action {
                Action::Send(text) => ws.send(&text).await.map_err(|e| link::describe(&e))?,
                other => side_effect(device, other, spawner, Some(stack)),
            }
        }
        if !device.downloading() {
            DOWNLOAD_GENERATION.fetch_add(1, Ordering::Relaxed);
        }
        let deadline = device
            .next_deadline()
            .map(Instant::from_millis)
            .unwrap_or(Instant::MAX)
            .min(Instant::now() + BUTTON_POLL);
        actions = match select3(ws.receive(), Timer::at(deadline), DOWNLOADS.receive()).await {
            Either3::First(Ok(Incoming::Data(bytes))) => {
                // The server speaks first (Sys.GetInfo): the link works.
                backoff.reset();
                device.receive(&bytes, now_ms())
            }
            Either3::First(Ok(Incoming::Nothing)) => Vec::new(),
            Either3::First(Err(e)) => return Err(link::describe(&e)),
            Either3::Second(()) => match button {
                Some(button) => device.poll_button(button, now_ms()),
                None => device.poll(now_ms()),
            },
            Either3::Third((generation, fetched)) => feed(device, generation, fetched),
        };
    }
}

/// The unprovisioned light: the RPC services over HTTP on the access point
/// (`POST /rpc` with one JSON-RPC frame, as Mongoose OS devices offer them), until a
/// `Config.Set` with `save` provisions it and the engine restarts it.
async fn provisioning(
    stack: Stack<'static>,
    device: &mut Light,
    button: &mut Option<BootButton>,
) -> ! {
    let mut rx = vec![0u8; 2048];
    let mut tx = vec![0u8; 2048];
    loop {
        let mut socket = embassy_net::tcp::TcpSocket::new(stack, &mut rx, &mut tx);
        socket.set_timeout(Some(Duration::from_secs(10)));
        let accepted = embassy_futures::select::select(socket.accept(80), async {
            loop {
                let actions = local_events(device, button, None).await;
                for action in actions {
                    if let Action::Reboot { .. } = action {
                        return action;
                    }
                }
            }
        })
        .await;
        match accepted {
            embassy_futures::select::Either::First(Ok(())) => {
                let reply = serve_rpc(&mut socket, device).await;
                socket.close();
                let _ = socket.flush().await;
                if let Some(Action::Reboot { delay_ms }) = reply {
                    Timer::after(Duration::from_millis(delay_ms.max(100))).await;
                    esp_hal::system::software_reset();
                }
            }
            embassy_futures::select::Either::First(Err(e)) => warn!("accept: {e:?}"),
            embassy_futures::select::Either::Second(_) => esp_hal::system::software_reset(),
        }
    }
}

/// Reads one HTTP request, answers `POST /rpc` through the engine, and returns a reboot
/// the engine asked for.
async fn serve_rpc(
    socket: &mut embassy_net::tcp::TcpSocket<'_>,
    device: &mut Light,
) -> Option<Action> {
    use embedded_io_async::Write as _;
    let mut request = Vec::new();
    let mut chunk = [0u8; 512];
    let (head_end, length) = loop {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        request.extend_from_slice(&chunk[..n]);
        if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = core::str::from_utf8(&request[..end]).ok()?;
            let length = head
                .split("\r\n")
                .filter_map(|line| line.split_once(':'))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, value)| value.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if !head.starts_with("POST /rpc") {
                let _ = socket
                    .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 28\r\nConnection: close\r\n\r\nPOST a JSON-RPC frame to /rpc")
                    .await;
                return None;
            }
            break (end + 4, length);
        }
        if request.len() > 4096 {
            return None;
        }
    };
    while request.len() < head_end + length.min(16 * 1024) {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&chunk[..n]);
    }
    let body = &request[head_end..request.len().min(head_end + length)];
    let actions = device.receive_local(body, now_ms());
    let mut reboot = None;
    let mut reply = String::new();
    for action in actions {
        match action {
            Action::SendLocal(text) => reply = text,
            Action::Reboot { .. } => reboot = Some(action),
            _ => {}
        }
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
        reply.len()
    );
    let _ = socket.write_all(response.as_bytes()).await;
    reboot
}
