//! `herd tail`: the notify stream (PROTOCOL §5) as lines on stdout.

use std::io::Write;
use std::path::PathBuf;

use herd_client::{Client, Notification, NotifyEvent};
use protocol::notification::LoggedNotification;

use super::commands::{print, write_out};
use super::{CommandResult, Exit, Failure};
use crate::text::{glob_match, unix_now};

#[derive(Debug, Clone, Default)]
pub struct TailOptions {
    pub device: Option<String>,
    pub name: Option<String>,
    pub json: bool,
    pub save: Option<PathBuf>,
    pub count: Option<u64>,
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
    }
}

/// One notification in the persisted form of PROTOCOL §7, stamped with the time it
/// arrived here.
pub fn json_line(ts: f64, notification: &Notification) -> String {
    let logged = LoggedNotification {
        ts,
        id: notification.id.clone(),
        name: notification.name.clone(),
        data: notification.data.clone(),
    };
    serde_json::to_string(&logged).unwrap_or_default()
}

/// One notification for people: time, device, event, data.
pub fn human_line(ts: f64, notification: &Notification) -> String {
    let data = if notification.data.is_null() {
        String::new()
    } else {
        notification.data.to_string()
    };
    format!(
        "{}  {}  {}  {}",
        crate::text::clock_time(ts),
        notification.id,
        notification.name,
        data
    )
    .trim_end()
    .to_string()
}

pub async fn run(client: &Client, options: TailOptions) -> CommandResult {
    let mut save = match &options.save {
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
    let mut stream = client.notify();
    let mut shown = 0u64;
    let mut batch = Vec::new();
    loop {
        batch.clear();
        let received = tokio::select! {
            received = stream.next_batch(&mut batch, 512) => received,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        if received == 0 {
            return Ok(());
        }
        let mut out = String::new();
        for event in batch.drain(..) {
            match event {
                NotifyEvent::Connecting { .. } => {}
                NotifyEvent::Connected => {
                    // stderr, so that stdout stays pure data for scripts.
                    eprintln!("herd: streaming notifications from {}", client.server());
                }
                NotifyEvent::Disconnected { reason, retry_in } => eprintln!(
                    "herd: notify stream lost ({reason}); retrying in {:.1} s",
                    retry_in.as_secs_f64()
                ),
                NotifyEvent::Lagged { dropped } => eprintln!(
                    "herd: the server dropped {dropped} notifications because this consumer fell behind"
                ),
                NotifyEvent::Rejected(error) => {
                    print(&out)?;
                    return Err(error.into());
                }
                NotifyEvent::Notification(notification) => {
                    if !options.wants(&notification) {
                        continue;
                    }
                    let ts = unix_now();
                    let line = json_line(ts, &notification);
                    if let Some(file) = save.as_mut() {
                        writeln!(file, "{line}").map_err(|e| {
                            Failure::new(Exit::Failure, format!("cannot write the save file: {e}"))
                        })?;
                    }
                    if options.json {
                        out.push_str(&line);
                    } else {
                        out.push_str(&human_line(ts, &notification));
                    }
                    out.push('\n');
                    shown += 1;
                    if options.count.is_some_and(|count| shown >= count) {
                        return print(&out);
                    }
                }
            }
        }
        if !write_out(&out)? {
            // `herd tail | head -3`: the reader is gone, so is the point of streaming.
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn lines_have_the_log_shape() {
        let notification = Notification::new("d1", "online", Value::Null);
        // PROTOCOL §7 form: {"ts", "id", "name", "data"}.
        assert_eq!(
            json_line(1.5, &notification),
            r#"{"ts":1.5,"id":"d1","name":"online","data":null}"#
        );
        assert_eq!(human_line(0.0, &notification), "00:00:00.000  d1  online");
    }

    #[test]
    fn filters_by_device_and_glob() {
        let options = TailOptions {
            device: Some("d1".into()),
            name: Some("rpc.out.*".into()),
            ..Default::default()
        };
        assert!(options.wants(&Notification::new("d1", "rpc.out.Log", Value::Null)));
        assert!(!options.wants(&Notification::new("d2", "rpc.out.Log", Value::Null)));
        assert!(!options.wants(&Notification::new("d1", "online", Value::Null)));
    }
}
