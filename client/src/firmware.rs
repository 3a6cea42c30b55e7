//! Firmware, one-device updates and rollouts (PROTOCOL §10).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use protocol::firmware::{FirmwareObject, RolloutObject, RolloutSpec};
use reqwest::Method;
use serde_json::Value;

use crate::{url, Client, Error};

/// An upload or a push may run much longer than an ordinary request: the bytes travel at
/// the link's pace, and a push answers only when the device took the whole image.
const LONG_REQUEST: Duration = Duration::from_secs(60 * 60);

/// Metadata sent with an upload; what the image says about itself fills the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadMeta {
    pub app: Option<String>,
    pub version: Option<String>,
    pub platform: Option<String>,
    /// Ed25519 signature over the image's SHA-256, base64 (PROTOCOL §10.4).
    pub signature: Option<String>,
}

impl UploadMeta {
    fn query(&self) -> Vec<(&'static str, &str)> {
        [
            ("app", &self.app),
            ("version", &self.version),
            ("platform", &self.platform),
            ("signature", &self.signature),
        ]
        .into_iter()
        .filter_map(|(key, value)| value.as_deref().map(|v| (key, v)))
        .collect()
    }
}

/// Called with the bytes sent so far.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// A rollout command (PROTOCOL §10.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutCommand {
    Start,
    Pause,
    Resume,
    Abort,
    /// A new rollout over the devices that failed.
    Retry,
}

impl RolloutCommand {
    /// The path segment.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutCommand::Start => "start",
            RolloutCommand::Pause => "pause",
            RolloutCommand::Resume => "resume",
            RolloutCommand::Abort => "abort",
            RolloutCommand::Retry => "retry",
        }
    }
}

impl Client {
    /// `POST /firmware`: streams the file at `path` (never whole in memory); `progress`
    /// hears how many bytes left so far.
    pub async fn upload_firmware(
        &self,
        path: &Path,
        meta: &UploadMeta,
        progress: Option<Progress>,
    ) -> Result<FirmwareObject, Error> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| Error::Io(format!("cannot open {}: {e}", path.display())))?;
        let size = file
            .metadata()
            .await
            .map_err(|e| Error::Io(format!("cannot read {}: {e}", path.display())))?
            .len();
        let mut sent = 0u64;
        let stream =
            tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024).map(move |chunk| {
                if let (Ok(bytes), Some(progress)) = (&chunk, &progress) {
                    sent += bytes.len() as u64;
                    progress(sent);
                }
                chunk
            });
        let request = self
            .request(Method::POST, "/firmware")
            .query(&meta.query())
            .timeout(LONG_REQUEST)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, size)
            .body(reqwest::Body::wrap_stream(stream));
        let response = self.execute(request).await?;
        self.decode(response).await
    }

    /// `GET /firmware`.
    pub async fn firmware_list(&self) -> Result<Vec<FirmwareObject>, Error> {
        self.json(Method::GET, "/firmware", None::<&Value>).await
    }

    /// `GET /firmware/:id`.
    pub async fn firmware(&self, id: &str) -> Result<FirmwareObject, Error> {
        let path = format!("/firmware/{}", url::segment(id));
        self.json(Method::GET, &path, None::<&Value>).await
    }

    /// `DELETE /firmware/:id`; 409 while an unfinished rollout uses it.
    pub async fn delete_firmware(&self, id: &str) -> Result<(), Error> {
        let path = format!("/firmware/{}", url::segment(id));
        let _: Value = self.json(Method::DELETE, &path, None::<&Value>).await?;
        Ok(())
    }

    /// `POST /devices/:id/ota?firmware=...`: writes a stored image to an online device and
    /// returns once the device took it all (PROTOCOL §10.2). Its restart, commit or revert
    /// follow as `ota.*` events.
    pub async fn push_firmware(
        &self,
        device: &str,
        firmware: &str,
        commit_timeout_s: Option<u32>,
    ) -> Result<(), Error> {
        let path = format!("/devices/{}/ota", url::segment(device));
        let mut query = vec![("firmware", firmware.to_string())];
        if let Some(timeout) = commit_timeout_s {
            query.push(("commit_timeout", timeout.to_string()));
        }
        let request = self
            .request(Method::POST, &path)
            .query(&query)
            .timeout(LONG_REQUEST);
        let response = self.execute(request).await?;
        let _: Value = self.decode(response).await?;
        Ok(())
    }

    /// `POST /rollouts`: a planned rollout, or only the plan with `dry_run`.
    pub async fn create_rollout(&self, spec: &RolloutSpec) -> Result<RolloutObject, Error> {
        self.json(Method::POST, "/rollouts", Some(spec)).await
    }

    /// `GET /rollouts`.
    pub async fn rollouts(&self) -> Result<Vec<RolloutObject>, Error> {
        self.json(Method::GET, "/rollouts", None::<&Value>).await
    }

    /// `GET /rollouts/:id`, with the per-device states when `devices`.
    pub async fn rollout(&self, id: &str, devices: bool) -> Result<RolloutObject, Error> {
        let mut path = format!("/rollouts/{}", url::segment(id));
        if devices {
            path.push_str("?devices=1");
        }
        self.json(Method::GET, &path, None::<&Value>).await
    }

    /// `POST /rollouts/:id/<command>`; `Retry` answers with the new rollout.
    pub async fn rollout_command(
        &self,
        id: &str,
        command: RolloutCommand,
    ) -> Result<RolloutObject, Error> {
        let path = format!("/rollouts/{}/{}", url::segment(id), command.as_str());
        self.json(Method::POST, &path, None::<&Value>).await
    }
}
