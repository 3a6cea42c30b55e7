//! `herd ota push`: one device, one image (PROTOCOL §10.2), followed through the `ota.*`
//! events (§10.6) until the device runs it, when asked to wait.

use std::path::PathBuf;
use std::time::Duration;

use herd_client::{Client, DeviceObject, FirmwareObject, Notification, NotifyEvent, NotifyStream};
use protocol::firmware::{OTA_FAILURE, OTA_PROGRESS, OTA_REVERT, OTA_SUCCESS};
use serde_json::{json, Value};

use super::commands::{print, resolve_device};
use super::firmware::{progress_bar, resolve_firmware, to_json, upload_file};
use super::{CommandResult, Exit, Failure};

/// The server waits this long past the commit timeout for a device to come back
/// (PROTOCOL §10.2); `--wait` waits a little longer still, so the server speaks first.
const SERVER_GRACE: Duration = Duration::from_secs(60);
const WAIT_MARGIN: Duration = Duration::from_secs(30);
/// The commit timeout the server uses when none is given (PROTOCOL §10.5's default).
const DEFAULT_COMMIT_TIMEOUT_S: u32 = 300;
/// How long the notify stream may take to come up before a push.
const STREAM_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, clap::Subcommand)]
pub enum OtaCommand {
    /// Write firmware to one online device (PROTOCOL §10.2): a file (uploaded first) or a
    /// stored image. Shows the transfer to the device; with --wait, follows the device
    /// through its restart until it runs and commits the image (exit 0) or reverts or
    /// fails (exit 7). Exit 7 also for an offline device, 6 when an update is already
    /// running on it, 4 when the key may not deploy.
    #[command(
        group(clap::ArgGroup::new("image").required(true).args(["file", "firmware"])),
        override_usage = "herd ota push [OPTIONS] <DEVICE> <FILE | --firmware ID>"
    )]
    Push {
        /// Device id, or a unique device name.
        device: String,
        /// An image file to upload and push.
        file: Option<PathBuf>,
        /// A stored image: its id or a unique prefix of at least 8 characters.
        #[arg(long, value_name = "ID")]
        firmware: Option<String>,
        /// Wait for the device to run and commit the image (`ota.success`), or to revert
        /// or fail; bounded by the commit timeout plus a margin.
        #[arg(long)]
        wait: bool,
        /// Seconds the device has to come back and commit (the server's default: 300).
        #[arg(long, value_name = "S")]
        commit_timeout: Option<u32>,
        /// Sign FILE with this key before uploading (PROTOCOL §10.4).
        #[arg(long, value_name = "KEYFILE", requires = "file")]
        sign: Option<PathBuf>,
        /// Print {"device", "name", "firmware", "version", "state", ...} instead.
        #[arg(long)]
        json: bool,
    },
}

/// Opens the notify stream and returns once the server accepted it, so that every event
/// after this point arrives (PROTOCOL §5).
pub async fn open_stream(client: &Client) -> Result<NotifyStream, Failure> {
    let mut stream = client.notify();
    let mut last_problem = String::new();
    let deadline = tokio::time::Instant::now() + STREAM_TIMEOUT;
    loop {
        let event = tokio::time::timeout_at(deadline, stream.next())
            .await
            .map_err(|_| {
                Failure::new(
                    Exit::Unreachable,
                    format!("the notify stream did not open: {last_problem}"),
                )
            })?;
        match event {
            Some(NotifyEvent::Connected) => return Ok(stream),
            Some(NotifyEvent::Rejected(error)) => return Err(error.into()),
            Some(NotifyEvent::Disconnected { reason, .. }) => last_problem = reason,
            Some(_) => {}
            None => return Err(Failure::new(Exit::Unreachable, "the notify stream ended")),
        }
    }
}

/// How a device's update ended, from its `ota.*` events.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded {
        version: String,
        seconds: f64,
    },
    Reverted {
        running_version: String,
        message: String,
    },
    Failed {
        stage: String,
        message: String,
    },
}

/// What one notification says about the update of `firmware` on `device`.
pub enum Seen {
    Progress(u64),
    Done(Outcome),
    Other,
}

pub fn classify(notification: &Notification, device: &str, firmware: &str) -> Seen {
    let data = &notification.data;
    if notification.id != device || data["firmware"].as_str() != Some(firmware) {
        return Seen::Other;
    }
    let text = |key: &str| data[key].as_str().unwrap_or_default().to_string();
    match notification.name.as_str() {
        OTA_PROGRESS => Seen::Progress(data["percent"].as_u64().unwrap_or(0).min(100)),
        OTA_SUCCESS => Seen::Done(Outcome::Succeeded {
            version: text("version"),
            seconds: data["seconds"].as_f64().unwrap_or(0.0),
        }),
        OTA_REVERT => Seen::Done(Outcome::Reverted {
            running_version: text("running_version"),
            message: text("message"),
        }),
        OTA_FAILURE => Seen::Done(Outcome::Failed {
            stage: text("stage"),
            message: text("message"),
        }),
        _ => Seen::Other,
    }
}

struct Target<'a> {
    device: &'a DeviceObject,
    firmware: &'a FirmwareObject,
}

impl Target<'_> {
    fn label(&self) -> String {
        if self.device.name.is_empty() || self.device.name == self.device.id {
            self.device.id.clone()
        } else {
            format!("{} ({})", self.device.name, self.device.id)
        }
    }

    fn version(&self) -> &str {
        if self.firmware.version.is_empty() {
            super::firmware::short_id(&self.firmware.id)
        } else {
            &self.firmware.version
        }
    }

    fn json(&self, state: &str, extra: Value) -> Value {
        let mut value = json!({
            "device": self.device.id,
            "name": self.device.name,
            "firmware": self.firmware.id,
            "version": self.firmware.version,
            "state": state,
        });
        if let (Value::Object(map), Value::Object(more)) = (&mut value, extra) {
            map.extend(more);
        }
        value
    }
}

pub async fn run(client: &Client, read_only: bool, command: OtaCommand) -> CommandResult {
    if read_only {
        return Err(Failure::read_only("push firmware"));
    }
    match command {
        OtaCommand::Push {
            device,
            file,
            firmware,
            wait,
            commit_timeout,
            sign,
            json,
        } => {
            let image = match (file, firmware) {
                (Some(file), _) => Image::File { file, sign },
                (None, Some(id)) => Image::Stored(id),
                (None, None) => return Err(Failure::usage("give an image FILE or --firmware ID")),
            };
            push(client, &device, image, wait, commit_timeout, json).await
        }
    }
}

/// What `ota push` sends.
pub enum Image {
    /// A file to upload first, signed with a key file when given.
    File {
        file: PathBuf,
        sign: Option<PathBuf>,
    },
    /// A stored image: its id or a unique prefix.
    Stored(String),
}

pub async fn push(
    client: &Client,
    device: &str,
    image: Image,
    wait: bool,
    commit_timeout: Option<u32>,
    json: bool,
) -> CommandResult {
    let device = resolve_device(client, device).await?;
    let firmware = match image {
        Image::File { file, sign } => {
            upload_file(client, &file, Default::default(), sign.as_deref()).await?
        }
        Image::Stored(id) => resolve_firmware(client, &id).await?,
    };
    let target = Target {
        device: &device,
        firmware: &firmware,
    };
    // Before the push: an `ota.*` event sent while the push runs must not be missed.
    let mut stream = open_stream(client).await?;
    let bar = progress_bar(100, "device", "{prefix:>8} [{bar:30}] {pos:>3}% {wide_msg}");
    bar.set_message(if device.name.is_empty() {
        device.id.clone()
    } else {
        device.name.clone()
    });
    let pushing = client.push_firmware(&device.id, &firmware.id, commit_timeout);
    tokio::pin!(pushing);
    let mut outcome = None;
    let pushed = loop {
        tokio::select! {
            result = &mut pushing => break result,
            event = stream.next() => match event {
                Some(NotifyEvent::Notification(n)) => match classify(&n, &device.id, &firmware.id) {
                    Seen::Progress(percent) => bar.set_position(percent),
                    Seen::Done(done) => outcome = Some(done),
                    Seen::Other => {}
                },
                Some(_) => {}
                // The stream ended (its credentials were refused); the push decides.
                None => break pushing.await,
            },
        }
    };
    bar.finish_and_clear();
    pushed?;
    if !wait {
        if json {
            return print(&to_json(&target.json("sent", json!({})))?);
        }
        return print(&format!(
            "sent {} to {}; it restarts into it and commits\n",
            target.version(),
            target.label()
        ));
    }
    if !json {
        eprintln!(
            "herd: sent {} to {}; waiting for it to restart and commit",
            target.version(),
            target.label()
        );
    }
    let limit = Duration::from_secs(u64::from(
        commit_timeout.unwrap_or(DEFAULT_COMMIT_TIMEOUT_S),
    )) + SERVER_GRACE
        + WAIT_MARGIN;
    let deadline = tokio::time::Instant::now() + limit;
    let outcome = loop {
        if let Some(outcome) = outcome.take() {
            break outcome;
        }
        let event = tokio::time::timeout_at(deadline, stream.next())
            .await
            .map_err(|_| {
                Failure::new(
                    Exit::Device,
                    format!(
                        "{} did not report the outcome within {} s",
                        target.label(),
                        limit.as_secs()
                    ),
                )
            })?;
        match event {
            Some(NotifyEvent::Notification(n)) => {
                if let Seen::Done(done) = classify(&n, &device.id, &firmware.id) {
                    outcome = Some(done);
                }
            }
            Some(NotifyEvent::Rejected(error)) => return Err(error.into()),
            Some(_) => {}
            None => return Err(Failure::new(Exit::Unreachable, "the notify stream ended")),
        }
    };
    report(&target, outcome, json)
}

fn report(target: &Target, outcome: Outcome, json: bool) -> CommandResult {
    match outcome {
        Outcome::Succeeded { version, seconds } => {
            if json {
                return print(&to_json(
                    &target.json("succeeded", json!({"seconds": seconds})),
                )?);
            }
            let version = if version.is_empty() {
                target.version().to_string()
            } else {
                version
            };
            print(&format!(
                "{} runs {version} (updated in {seconds:.1} s)\n",
                target.label()
            ))
        }
        Outcome::Reverted {
            running_version,
            message,
        } => {
            if json {
                print(&to_json(&target.json(
                    "reverted",
                    json!({"running_version": running_version, "message": message}),
                ))?)?;
            }
            let mut text = format!(
                "{} reverted to {running_version} instead of running {}",
                target.label(),
                target.version()
            );
            if !message.is_empty() {
                text.push_str(&format!(": {message}"));
            }
            Err(Failure::new(Exit::Device, text))
        }
        Outcome::Failed { stage, message } => {
            if json {
                print(&to_json(
                    &target.json("failed", json!({"stage": stage, "message": message})),
                )?)?;
            }
            Err(Failure::new(
                Exit::Device,
                format!(
                    "the update of {} failed ({stage}): {message}",
                    target.label()
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_of_other_devices_or_images_are_ignored() {
        // PROTOCOL §10.6: ota.* events carry the device id and the firmware.
        let event = |id: &str, name: &str, data: Value| Notification::new(id, name, data);
        assert!(matches!(
            classify(
                &event("d1", OTA_PROGRESS, json!({"firmware": "f", "percent": 40})),
                "d1",
                "f"
            ),
            Seen::Progress(40)
        ));
        assert!(matches!(
            classify(
                &event("d2", OTA_SUCCESS, json!({"firmware": "f"})),
                "d1",
                "f"
            ),
            Seen::Other
        ));
        assert!(matches!(
            classify(
                &event("d1", OTA_SUCCESS, json!({"firmware": "g"})),
                "d1",
                "f"
            ),
            Seen::Other
        ));
        match classify(
            &event(
                "d1",
                OTA_REVERT,
                json!({"firmware": "f", "running_version": "1.0.0", "message": "crashed"}),
            ),
            "d1",
            "f",
        ) {
            Seen::Done(Outcome::Reverted {
                running_version,
                message,
            }) => {
                assert_eq!(
                    (running_version.as_str(), message.as_str()),
                    ("1.0.0", "crashed")
                )
            }
            _ => panic!("a revert"),
        }
    }
}
