//! The customer app in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`), driven over WebDriver: sign up, pair a light by its label, switch it
//! and see the device follow, see a change made elsewhere arrive live, rename, unpair,
//! while another user's light never shows.
//!
//! With `HERD_SCREENSHOTS=1` the phone and desktop screenshots are written to
//! `docs/app/` (that is how the ones in the repository were made).

use std::time::Duration;

use fantoccini::{Client as Browser, ClientBuilder, Locator};
use herd_testkit::*;
use serde_json::{json, Value};

/// `name` on PATH, or `None`; with CI set a missing browser fails the test instead.
fn program(name: &str) -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is not installed (Debian: apt-get install chromium chromium-driver)"
        );
        eprintln!("skipped: {name} is not installed");
    }
    found
}

struct Driver {
    child: std::process::Child,
    url: String,
}

impl Drop for Driver {
    /// Ends chromedriver and every browser it started (its own process group), also when
    /// the test failed before closing its sessions.
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn chromedriver(bin: &std::path::Path) -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    use std::os::unix::process::CommandExt;
    let child = std::process::Command::new(bin)
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "chromedriver is not listening"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

/// A headless Chromium: a phone (390x844 CSS pixels, touch) or a 1280x800 desktop.
async fn browser(driver: &Driver, chromium: &std::path::Path, phone: bool) -> Browser {
    let mut options = json!({
        "binary": chromium,
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,800", "--hide-scrollbars", "--force-device-scale-factor=1"],
    });
    if phone {
        options["mobileEmulation"] = json!({
            "deviceMetrics": {"width": 390, "height": 844, "pixelRatio": 1.0, "touch": true}
        });
    }
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("goog:chromeOptions".into(), options);
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a browser session")
}

/// Waits for an element matching `css`.
async fn wait_for(browser: &Browser, css: &str) -> fantoccini::elements::Element {
    browser
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} within {WAIT:?}: {e}"))
}

async fn fill(browser: &Browser, css: &str, text: &str) {
    let field = wait_for(browser, css).await;
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

/// Clicks `css`; the page redraws its list on every event, so an element found a moment
/// ago may be gone: find it again.
async fn click(browser: &Browser, css: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match wait_for(browser, css).await.click().await {
            Ok(()) => return,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("clicking {css} again: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot click {css}: {e}"),
        }
    }
}

/// The text of `css`, found again if the page redrew it meanwhile.
async fn text(browser: &Browser, css: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match wait_for(browser, css).await.text().await {
            Ok(text) => return text,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("reading {css} again: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot read {css}: {e}"),
        }
    }
}

async fn screenshot(browser: &Browser, name: &str) {
    let png = browser.screenshot().await.unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG image");
    if std::env::var_os("HERD_SCREENSHOTS").is_some() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/app");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

/// A light on the device socket: every `Shadow.Delta` is applied and reported back as its
/// reply's result (PROTOCOL §4.3).
fn light(mut device: Device) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let frame = device.recv().await;
            if frame["method"] == "Shadow.Delta" {
                let state = frame["params"]["state"].clone();
                device
                    .send(json!({"id": frame["id"], "result": state}))
                    .await;
            } else if frame.get("method").is_some() {
                device
                    .send(json!({"id": frame["id"], "result": null}))
                    .await;
            }
        }
    })
}

async fn shadow_on(server: &TestServer, id: &str) -> Value {
    let (_, shadow) = server
        .call("GET", &format!("/devices/{id}/shadow"), None)
        .await;
    shadow["state"]["reported"]["on"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_pairs_and_switches_a_light_in_a_real_browser() {
    let (Some(chromium), Some(driver_bin)) = (program("chromium"), program("chromedriver")) else {
        return;
    };
    let server = TestServer::start_with(|s| s.app_signup = true).await;
    let (lamp, password) = server.create_device("lamp-0001").await;
    let (other, other_token) = server.create_device("lamp-0002").await;
    let lamp_task = light(server.device(&password).await);
    let other_task = light(server.device(&other_token).await);
    let root = server.base.trim_end_matches("/api/v2").to_string();

    let driver = chromedriver(&driver_bin).await;
    let browser = browser(&driver, &chromium, true).await;
    browser.goto(&format!("{root}/app/")).await.unwrap();

    // Sign up.
    fill(&browser, "#auth-name", "ann").await;
    fill(&browser, "#auth-pass", "correct horse").await;
    click(&browser, "#signup").await;
    wait_for(&browser, "#home:not([hidden]) #empty:not([hidden])").await;

    // Pair the light with the id and password on its label.
    click(&browser, "#pair-box summary").await;
    fill(&browser, "#pair-id", &lamp).await;
    fill(&browser, "#pair-pass", &password).await;
    fill(&browser, "#pair-name", "Kitchen").await;
    click(&browser, "#pair").await;
    let row = format!("li.device[data-id=\"{lamp}\"]");
    wait_for(&browser, &format!("{row} .dot.online")).await;
    assert_eq!(text(&browser, &format!("{row} .name")).await, "Kitchen");

    // Switch it on: the device applies the delta and the page shows what it reported.
    click(&browser, &format!("{row} .toggle")).await;
    wait_for(
        &browser,
        &format!("{row} .toggle[aria-checked=\"true\"]:not(.pending)"),
    )
    .await;
    assert_eq!(shadow_on(&server, &lamp).await, json!(true));
    screenshot(&browser, "phone").await;

    // Switched off elsewhere (the owner, over the API): the page follows, live.
    server
        .call(
            "POST",
            &format!("/devices/{lamp}/shadow"),
            Some(json!({"state": {"desired": {"on": false}}})),
        )
        .await;
    wait_for(
        &browser,
        &format!("{row} .toggle[aria-checked=\"false\"]:not(.pending)"),
    )
    .await;

    // Only the paired light is on the page, never the other one.
    let rows = browser.find_all(Locator::Css("li.device")).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert!(browser
        .find_all(Locator::Css(&format!("li.device[data-id=\"{other}\"]")))
        .await
        .unwrap()
        .is_empty());

    // Rename it in place.
    click(&browser, &format!("{row} .rename")).await;
    // The field opens with the old name selected, so typing replaces it (no WebDriver
    // clear: it blurs the field, which saves it).
    wait_for(&browser, &format!("{row} input.name"))
        .await
        .send_keys("Hall\n")
        .await
        .unwrap();
    wait_for(&browser, &format!("{row} span.name")).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = wait_for(&browser, &format!("{row} span.name"))
            .await
            .text()
            .await
            .unwrap();
        if text == "Hall" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the name did not change: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, device) = server.call("GET", &format!("/devices/{lamp}"), None).await;
    assert_eq!(device["name"], "Hall");

    // The same account signed in on a desktop browser: the light, on, under its new name.
    click(&browser, &format!("{row} .toggle")).await;
    let on = format!("{row} .toggle[aria-checked=\"true\"]:not(.pending)");
    wait_for(&browser, &on).await;
    let desktop = self::browser(&driver, &chromium, false).await;
    desktop.goto(&format!("{root}/app/")).await.unwrap();
    fill(&desktop, "#auth-name", "ann").await;
    fill(&desktop, "#auth-pass", "wrong").await;
    click(&desktop, "#signin").await;
    wait_for(&desktop, "#status.error").await;
    assert_eq!(text(&desktop, "#status").await, "Wrong name or password.");
    fill(&desktop, "#auth-pass", "correct horse").await;
    click(&desktop, "#signin").await;
    wait_for(&desktop, &on).await;
    assert_eq!(text(&desktop, &format!("{row} .name")).await, "Hall");
    screenshot(&desktop, "desktop").await;
    desktop.close().await.unwrap();

    // Unpair (two taps) and it is gone, from the page and from the account.
    click(&browser, &format!("{row} .unpair")).await;
    click(&browser, &format!("{row} .unpair")).await;
    wait_for(&browser, "#empty:not([hidden])").await;
    let (_, device) = server.call("GET", &format!("/devices/{lamp}"), None).await;
    assert_eq!(device["shared_with"], "");

    click(&browser, "#signout").await;
    wait_for(&browser, "#auth:not([hidden])").await;
    browser.close().await.unwrap();
    lamp_task.abort();
    other_task.abort();
    server.shutdown().await;
}
