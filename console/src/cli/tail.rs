//! `herd tail`: the notify stream (PROTOCOL §5) as lines on stdout.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use herd_client::{Client, DeviceObject, Notification, NotifyEvent};

use super::commands::{pick_device, write_out};
use super::{CommandResult, Exit, Failure};
use crate::lines::{human_line, human_text, json_line, ObjectMemory};
use crate::logsource::last_lines;
use crate::text::{glob_match, unix_now};

#[derive(Debug, Clone, Default)]
pub struct TailOptions {
    pub device: Option<String>,
    pub name: Option<String>,
    /// Event name globs whose lines are left out.
    pub exclude: Vec<String>,
    pub json: bool,
    pub save: Option<PathBuf>,
    pub count: Option<u64>,
    /// Lines of the server's log to show first.
    pub history: u64,
    /// How long to keep trying once the stream is lost, before giving up with exit 3.
    pub retry_for: Duration,
}

/// The names of the devices the stream speaks of, kept current from `created`, `updated`
/// and `deleted` (PROTOCOL §5): lines name devices as people know them.
#[derive(Debug, Default, Clone)]
pub struct Names(HashMap<String, String>);

impl Names {
    pub fn from_devices(devices: &[DeviceObject]) -> Names {
        Names(
            devices
                .iter()
                .map(|d| (d.id.clone(), d.name.clone()))
                .collect(),
        )
    }

    /// The name of device `id`; `None` when unknown or unnamed.
    pub fn get(&self, id: &str) -> Option<&str> {
        self.0.get(id).map(String::as_str).filter(|n| !n.is_empty())
    }

    /// Learns what `notification` says about names.
    pub fn learn(&mut self, notification: &Notification) {
        match notification.name.as_str() {
            "created" | "updated" => {
                if let Some(name) = notification.data.get("name").and_then(|n| n.as_str()) {
                    self.0.insert(notification.id.clone(), name.to_string());
                }
            }
            // The line of the deletion still names it; later lines cannot be about it.
            "deleted" => {}
            _ => {}
        }
    }
}

impl TailOptions {
    fn wants(&self, notification: &Notification) -> bool {
        self.device
            .as_deref()
            .is_none_or(|device| device == notification.id)
            && self
                .name
                .as_deref()
                .is_none_or(|glob| glob_match(glob, &notification.name))
            && !self
                .exclude
                .iter()
                .any(|glob| glob_match(glob, &notification.name))
    }
}

/// What the tail writes: stdout, and the save file when there is one.
struct Output {
    save: Option<std::fs::File>,
    json: bool,
    /// Each device's last `updated` object, so the human form shows what changed.
    memory: ObjectMemory,
    out: String,
    shown: u64,
}

impl Output {
    /// Adds one line; true once `--count` is reached.
    fn line(
        &mut self,
        ts: f64,
        notification: &Notification,
        name: Option<&str>,
        options: &TailOptions,
    ) -> Result<bool, Failure> {
        let line = json_line(ts, notification, name);
        if let Some(file) = self.save.as_mut() {
            writeln!(file, "{line}").map_err(|e| {
                Failure::new(Exit::Failure, format!("cannot write the save file: {e}"))
            })?;
        }
        if self.json {
            self.out.push_str(&line);
        } else if notification.name == "updated" {
            // People see what changed; the save file and --json keep the whole object.
            let summary = self.memory.summarize(&notification.id, &notification.data);
            let who = name.unwrap_or(&notification.id);
            self.out
                .push_str(&human_text(ts, who, "updated", &format!("Δ {summary}")));
        } else {
            self.out.push_str(&human_line(ts, notification, name));
        }
        self.out.push('\n');
        self.shown += 1;
        Ok(options.count.is_some_and(|count| self.shown >= count))
    }

    /// Writes what was added; false once the reader went away.
    fn flush(&mut self) -> Result<bool, Failure> {
        let text = std::mem::take(&mut self.out);
        write_out(&text)
    }
}

pub async fn run(client: &Client, mut options: TailOptions) -> CommandResult {
    // The listing names the devices; it also finds a server that is not there, which is
    // exit 3 at once rather than retrying against nothing.
    let devices = client.devices().await?;
    if let Some(query) = options.device.take() {
        options.device = Some(pick_device(devices.clone(), &query)?.id);
    }
    let mut names = Names::from_devices(&devices);
    drop(devices);
    let save = match &options.save {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| {
                    Failure::new(
                        Exit::Failure,
                        format!("cannot open {}: {e}", path.display()),
                    )
                })?,
        ),
        None => None,
    };
    let mut output = Output {
        save,
        json: options.json,
        memory: ObjectMemory::default(),
        out: String::new(),
        shown: 0,
    };
    // Opened before the history is read, so nothing falls between the two.
    let mut stream = client.notify();
    if options.history > 0 {
        for (ts, notification) in last_lines(client, options.history).await? {
            if !options.wants(&notification) {
                continue;
            }
            let name = names.get(&notification.id).map(str::to_string);
            if output.line(ts, &notification, name.as_deref(), &options)? {
                return output.flush().map(|_| ());
            }
        }
        if !output.flush()? {
            return Ok(());
        }
    }
    let mut batch = Vec::new();
    // Since when the stream has been down, while it is.
    let mut lost_since: Option<tokio::time::Instant> = None;
    loop {
        batch.clear();
        let give_up = lost_since.map(|since| since + options.retry_for);
        let received = tokio::select! {
            received = stream.next_batch(&mut batch, 512) => received,
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = sleep_until(give_up) => {
                return Err(Failure::new(
                    Exit::Unreachable,
                    format!(
                        "lost the notify stream of {} and could not get it back within {} s",
                        client.server(),
                        options.retry_for.as_secs()
                    ),
                ));
            }
        };
        if received == 0 {
            return Ok(());
        }
        for event in batch.drain(..) {
            match event {
                NotifyEvent::Connecting { .. } => {}
                NotifyEvent::Connected => {
                    lost_since = None;
                    // stderr, so that stdout stays pure data for scripts.
                    eprintln!("herd: streaming notifications from {}", client.server());
                }
                NotifyEvent::Disconnected { reason, retry_in } => {
                    lost_since.get_or_insert_with(tokio::time::Instant::now);
                    eprintln!(
                        "herd: notify stream lost ({reason}); retrying in {:.1} s",
                        retry_in.as_secs_f64()
                    )
                }
                NotifyEvent::Lagged { dropped } => eprintln!(
                    "herd: the server dropped {dropped} notifications because this consumer fell behind"
                ),
                NotifyEvent::Rejected(error) => {
                    output.flush()?;
                    return Err(error.into());
                }
                NotifyEvent::Notification(notification) => {
                    names.learn(&notification);
                    if notification.name == "deleted" {
                        output.memory.forget(&notification.id);
                    }
                    if !options.wants(&notification) {
                        continue;
                    }
                    let name = names.get(&notification.id).map(str::to_string);
                    if output.line(unix_now(), &notification, name.as_deref(), &options)? {
                        return output.flush().map(|_| ());
                    }
                }
            }
        }
        if !output.flush()? {
            // `herd tail | head -3`: the reader is gone, so is the point of streaming.
            return Ok(());
        }
    }
}

/// Sleeps until `deadline`, or for ever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn filters_by_device_and_glob() {
        let options = TailOptions {
            device: Some("d1".into()),
            name: Some("rpc.out.*".into()),
            exclude: vec!["*.Log".into()],
            ..Default::default()
        };
        assert!(!options.wants(&Notification::new("d1", "rpc.out.Log", Value::Null)));
        assert!(options.wants(&Notification::new(
            "d1",
            "rpc.out.Dash.Heartbeat",
            Value::Null
        )));
        assert!(!options.wants(&Notification::new("d2", "rpc.out.Log", Value::Null)));
        assert!(!options.wants(&Notification::new("d1", "online", Value::Null)));
    }
}
