//! Typed settings for every Herd binary.
//!
//! Settings come from a TOML file whose every key is optional (defaults are built in), then
//! command-line flags override single fields. The platform directories (data, config) come
//! from the `directories` crate so a fresh machine needs no setup.
//!
//! ```
//! let settings = herd_config::ServerSettings::from_toml_str("listen = \"127.0.0.1:9000\"").unwrap();
//! assert_eq!(settings.listen.port(), 9000);
//! assert_eq!(settings.rpc_timeout_ms, 20_000);
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid settings in {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting: {0}")]
    Invalid(String),
    #[error("no home directory found; pass --data-dir")]
    NoHome,
}

/// The platform data directory for a Herd component, e.g. `~/.local/share/herd/server`.
pub fn default_data_dir(component: &str) -> Result<PathBuf, ConfigError> {
    let dirs = directories::ProjectDirs::from("org", "herd", "herd").ok_or(ConfigError::NoHome)?;
    Ok(dirs.data_dir().join(component))
}

/// The platform cache directory for a Herd component, e.g. `~/.cache/herd/reports`:
/// things that may be deleted at any time and are rebuilt when needed.
pub fn default_cache_dir(component: &str) -> Result<PathBuf, ConfigError> {
    let dirs = directories::ProjectDirs::from("org", "herd", "herd").ok_or(ConfigError::NoHome)?;
    Ok(dirs.cache_dir().join(component))
}

/// The platform config directory, e.g. `~/.config/herd`.
pub fn default_config_dir() -> Result<PathBuf, ConfigError> {
    let dirs = directories::ProjectDirs::from("org", "herd", "herd").ok_or(ConfigError::NoHome)?;
    Ok(dirs.config_dir().to_path_buf())
}

/// What happens to a notify consumer whose backlog overflows (PROTOCOL §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LagPolicy {
    /// Tell it `lagged` with the number of dropped notifications and continue.
    #[default]
    Notify,
    /// Close its socket.
    Disconnect,
}

/// How hard the store pushes acknowledged writes to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Acknowledged writes survive a killed process (WAL, `synchronous=NORMAL`).
    #[default]
    Process,
    /// Acknowledged writes also survive power loss (`synchronous=FULL`, one fsync per group commit).
    Power,
}

/// TLS material for `wss://` and `https://`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Settings of `herd-server`. Every field has a default; see [`ServerSettings::default`].
#[derive(Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Where the store and notification.log live; `None` means the platform data directory.
    pub data_dir: Option<PathBuf>,
    /// Where users, keys, devices, firmware metadata and rollouts are kept: `None` is SQLite
    /// (`herd.db` in the data directory), `postgres://user@host/db` a PostgreSQL database.
    /// The data directory still holds notification.log and firmware images either way.
    pub store: Option<String>,
    pub listen: SocketAddr,
    pub tls: Option<TlsSettings>,
    /// RPC proxy timeout (PROTOCOL §6), milliseconds.
    pub rpc_timeout_ms: u64,
    /// Ping period for device sockets (PROTOCOL §1), seconds.
    pub ping_interval_secs: u64,
    /// Pongs a device may miss before it is treated as gone.
    pub missed_pongs: u32,
    /// Per-connection input buffer bound (PROTOCOL §1).
    pub frame_buffer_bytes: usize,
    /// Shadow document limit (PROTOCOL §4.1).
    pub shadow_max_bytes: usize,
    pub shadow_max_depth: usize,
    /// Notifications a notify consumer may fall behind before it is lagged (PROTOCOL §5).
    pub notify_backlog: usize,
    pub notify_lag_policy: LagPolicy,
    /// Rotate notification.log past this size (PROTOCOL §7).
    pub log_rotate_bytes: u64,
    pub log_flush_ms: u64,
    /// Largest REST request body, bytes.
    pub max_body_bytes: usize,
    pub durability: Durability,
    /// Longest a group commit waits to gather more writes, microseconds.
    pub commit_window_us: u64,
    /// bcrypt cost for new passwords.
    pub bcrypt_cost: u32,
    /// Largest firmware image an upload may carry, bytes (PROTOCOL §10.1).
    pub firmware_max_bytes: u64,
    /// Raw bytes per `OTA.Write` chunk (PROTOCOL §8, §10.2).
    pub ota_chunk_bytes: usize,
    /// `OTA.Write` requests one device may have unanswered at once (PROTOCOL §10.2).
    pub ota_window: usize,
    /// Retries of one `OTA.Write` chunk after a timeout (PROTOCOL §10.2).
    pub ota_chunk_retries: u32,
    /// Commit timeout sent in `OTA.Begin` for a one-device push, seconds (PROTOCOL §8).
    pub ota_commit_timeout_s: u32,
    /// Longest a write to a device socket may wait for the device to read, milliseconds;
    /// a device that does not read for that long is dropped.
    pub device_write_timeout_ms: u64,
    /// Frames queued for one device beyond which it is dropped as too slow.
    pub device_outbox_limit: usize,
    /// WebSocket messages a device may send per second, on average.
    pub device_messages_per_s: f64,
    /// Messages a device may send at once before the average applies.
    pub device_message_burst: f64,
    /// Bytes a device may send per second, on average.
    pub device_bytes_per_s: f64,
    /// Bytes a device may send at once before the average applies.
    pub device_byte_burst: f64,
    /// Connects of one device in a minute past which it counts as flapping.
    pub device_connects_per_minute: u32,
    /// How long a device over its limits is refused, seconds.
    pub quarantine_s: u64,
    /// Whether anyone may make an account with `POST /api/v2/app/signup`, as customers of
    /// the customer app at `/app/` do. Off by default: accounts are made by the admin.
    pub app_signup: bool,
    /// Cluster mode: the NATS server (`nats://host:4222`, JetStream enabled) that several
    /// nodes sharing one PostgreSQL store use to reach each other's devices and events.
    /// `None` is a single server.
    pub nats: Option<String>,
    /// This node's name in a cluster; by default one made on first start and kept in the
    /// data directory (`node-id`). Each node needs its own data directory.
    pub node_id: Option<String>,
    /// How often a cluster node records that it is alive, milliseconds.
    pub node_heartbeat_ms: u64,
    /// A node silent for this long is dead: the others mark its devices offline,
    /// milliseconds.
    pub node_dead_after_ms: u64,
    /// How long the cluster's event stream keeps events, hours; each node's
    /// notification.log keeps them for good. Applied when a node makes the stream.
    pub stream_max_age_h: u64,
    /// Most bytes the cluster's event stream keeps (oldest dropped first); 0 is no limit.
    pub stream_max_bytes: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            data_dir: None,
            store: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8009)),
            tls: None,
            rpc_timeout_ms: 20_000,
            ping_interval_secs: 30,
            missed_pongs: 2,
            frame_buffer_bytes: 64 * 1024,
            shadow_max_bytes: 32 * 1024,
            shadow_max_depth: 8,
            notify_backlog: 4096,
            notify_lag_policy: LagPolicy::Notify,
            log_rotate_bytes: 64 * 1024 * 1024,
            log_flush_ms: 50,
            max_body_bytes: 1024 * 1024,
            durability: Durability::Process,
            commit_window_us: 0,
            bcrypt_cost: 10,
            firmware_max_bytes: 128 * 1024 * 1024,
            ota_chunk_bytes: 1024,
            ota_window: 4,
            ota_chunk_retries: 3,
            ota_commit_timeout_s: 300,
            device_write_timeout_ms: 10_000,
            device_outbox_limit: 4096,
            device_messages_per_s: 100.0,
            device_message_burst: 1000.0,
            device_bytes_per_s: 256.0 * 1024.0,
            device_byte_burst: 4.0 * 1024.0 * 1024.0,
            device_connects_per_minute: 20,
            quarantine_s: 300,
            app_signup: false,
            nats: None,
            node_id: None,
            node_heartbeat_ms: 1_000,
            node_dead_after_ms: 5_000,
            stream_max_age_h: 168,
            stream_max_bytes: 0,
        }
    }
}

impl std::fmt::Debug for ServerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The TLS key path is not a secret, but its contents are never read into settings.
        f.debug_struct("ServerSettings")
            .field("data_dir", &self.data_dir)
            .field("store", &self.store.as_deref().map(redact_store_url))
            .field("listen", &self.listen)
            .field("tls", &self.tls.as_ref().map(|t| &t.cert))
            .field("rpc_timeout_ms", &self.rpc_timeout_ms)
            .field("ping_interval_secs", &self.ping_interval_secs)
            .field("durability", &self.durability)
            .field("nats", &self.nats.as_deref().map(redact_store_url))
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// Whether `url` names a PostgreSQL database (`postgres://` or `postgresql://`).
pub fn store_url_is_postgres(url: &str) -> bool {
    ["postgres://", "postgresql://"]
        .iter()
        .any(|scheme| url.len() > scheme.len() && url[..scheme.len()].eq_ignore_ascii_case(scheme))
}

/// `url` with the password of its user part replaced by `***`, for logs and `Debug`.
pub fn redact_store_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

impl ServerSettings {
    /// Parses settings from TOML text and validates them.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let settings: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<string>"),
            message: e.to_string(),
        })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Reads settings from a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let settings: Self = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Rejects values that would make the server misbehave rather than fail loudly.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let checks: [(bool, &str); 15] = [
            (self.rpc_timeout_ms > 0, "rpc_timeout_ms must be positive"),
            (
                self.ping_interval_secs > 0,
                "ping_interval_secs must be positive",
            ),
            (self.missed_pongs > 0, "missed_pongs must be positive"),
            (
                self.frame_buffer_bytes >= 1024,
                "frame_buffer_bytes must be at least 1024",
            ),
            (
                self.shadow_max_depth >= 1,
                "shadow_max_depth must be at least 1",
            ),
            (
                self.notify_backlog >= 1,
                "notify_backlog must be at least 1",
            ),
            (
                (4..=31).contains(&self.bcrypt_cost),
                "bcrypt_cost must be within 4..=31",
            ),
            (
                self.firmware_max_bytes > 0,
                "firmware_max_bytes must be positive",
            ),
            (
                (16..=8 * 1024).contains(&self.ota_chunk_bytes),
                "ota_chunk_bytes must be within 16..=8192",
            ),
            (
                (1..=64).contains(&self.ota_window),
                "ota_window must be within 1..=64",
            ),
            (
                self.device_write_timeout_ms > 0,
                "device_write_timeout_ms must be positive",
            ),
            (
                self.device_outbox_limit >= 16,
                "device_outbox_limit must be at least 16",
            ),
            (
                self.device_messages_per_s > 0.0 && self.device_message_burst >= 1.0,
                "device_messages_per_s must be positive and device_message_burst at least 1",
            ),
            (
                self.device_bytes_per_s > 0.0 && self.device_byte_burst >= 1024.0,
                "device_bytes_per_s must be positive and device_byte_burst at least 1024",
            ),
            (
                self.device_connects_per_minute >= 1,
                "device_connects_per_minute must be at least 1",
            ),
        ];
        if let Some((_, message)) = checks.iter().find(|(ok, _)| !ok) {
            return Err(ConfigError::Invalid((*message).to_string()));
        }
        if let Some(nats) = self.nats.as_deref() {
            if !(nats.starts_with("nats://") || nats.starts_with("tls://")) {
                return Err(ConfigError::Invalid(format!(
                    "nats must be a nats:// or tls:// URL, not {:?}",
                    redact_store_url(nats)
                )));
            }
            if !self.store.as_deref().is_some_and(store_url_is_postgres) {
                return Err(ConfigError::Invalid(
                    "cluster mode (nats) needs a PostgreSQL store that every node shares"
                        .to_string(),
                ));
            }
            if self.stream_max_age_h == 0 {
                return Err(ConfigError::Invalid(
                    "stream_max_age_h must be at least 1".to_string(),
                ));
            }
            if self.node_dead_after_ms < 2 * self.node_heartbeat_ms.max(1) {
                return Err(ConfigError::Invalid(
                    "node_dead_after_ms must be at least twice node_heartbeat_ms".to_string(),
                ));
            }
        }
        if let Some(node) = self.node_id.as_deref() {
            if node.is_empty()
                || node.len() > 64
                || !node
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(ConfigError::Invalid(
                    "node_id must be 1-64 characters of A-Z a-z 0-9 - _".to_string(),
                ));
            }
        }
        match self.store.as_deref() {
            Some(url) if store_url_is_postgres(url) => Ok(()),
            Some(url) => Err(ConfigError::Invalid(format!(
                "store must be a postgres:// or postgresql:// URL, not {:?}",
                redact_store_url(url)
            ))),
            None => Ok(()),
        }
    }

    /// The data directory to use: the configured one or the platform default.
    pub fn resolved_data_dir(&self) -> Result<PathBuf, ConfigError> {
        match &self.data_dir {
            Some(dir) => Ok(dir.clone()),
            None => default_data_dir("server"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let settings = ServerSettings::from_toml_str("").unwrap();
        assert_eq!(settings, ServerSettings::default());
        assert_eq!(settings.listen.to_string(), "127.0.0.1:8009");
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = ServerSettings::from_toml_str("rpc_timeout = 5").unwrap_err();
        assert!(err.to_string().contains("rpc_timeout"), "{err}");
    }

    #[test]
    fn invalid_values_are_rejected() {
        let err = ServerSettings::from_toml_str("ping_interval_secs = 0").unwrap_err();
        assert!(err.to_string().contains("ping_interval_secs"), "{err}");
    }

    #[test]
    fn a_postgres_store_url_is_accepted_and_its_password_never_printed() {
        let settings =
            ServerSettings::from_toml_str("store = \"postgres://herd:hunter2@db.example/herd\"\n")
                .unwrap();
        assert_eq!(
            settings.store.as_deref(),
            Some("postgres://herd:hunter2@db.example/herd")
        );
        let debug = format!("{settings:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(
            debug.contains("postgres://herd:***@db.example/herd"),
            "{debug}"
        );
        assert!(
            ServerSettings::from_toml_str("store = \"postgresql:///herd?host=/run/pg\"\n").is_ok()
        );
    }

    #[test]
    fn a_store_that_is_not_postgres_is_refused() {
        let err = ServerSettings::from_toml_str("store = \"mysql://u:secret@h/db\"\n").unwrap_err();
        let message = err.to_string();
        assert!(message.contains("postgres://"), "{message}");
        assert!(!message.contains("secret"), "{message}");
    }

    #[test]
    fn cluster_mode_needs_a_shared_postgres_store_and_sane_bounds() {
        let pg = "store = \"postgres://herd@db/herd\"\n";
        let ok = ServerSettings::from_toml_str(&format!(
            "{pg}nats = \"nats://10.0.0.2:4222\"\nnode_id = \"node-a\"\n"
        ))
        .expect("a cluster node");
        assert_eq!(ok.nats.as_deref(), Some("nats://10.0.0.2:4222"));
        let refused = |toml: &str, says: &str| {
            let message = ServerSettings::from_toml_str(toml).unwrap_err().to_string();
            assert!(message.contains(says), "{toml}: {message}");
        };
        refused("nats = \"nats://h:4222\"\n", "PostgreSQL");
        refused(
            &format!("{pg}nats = \"http://h:4222\"\n"),
            "nats:// or tls://",
        );
        refused(
            &format!("{pg}nats = \"nats://h\"\nnode_dead_after_ms = 1500\n"),
            "twice node_heartbeat_ms",
        );
        refused("node_id = \"node a\"\n", "node_id");
        refused("node_id = \"\"\n", "node_id");
        refused(&format!("node_id = \"{}\"\n", "n".repeat(65)), "node_id");
        // The password in a NATS URL is never printed.
        let settings =
            ServerSettings::from_toml_str(&format!("{pg}nats = \"nats://herd:hunter2@h:4222\"\n"))
                .unwrap();
        assert!(!format!("{settings:?}").contains("hunter2"));
    }

    #[test]
    fn nested_tls_and_enums_parse() {
        let settings = ServerSettings::from_toml_str(
            "durability = \"power\"\nnotify_lag_policy = \"disconnect\"\n[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
        )
        .unwrap();
        assert_eq!(settings.durability, Durability::Power);
        assert_eq!(settings.notify_lag_policy, LagPolicy::Disconnect);
        assert_eq!(settings.tls.unwrap().key, PathBuf::from("k.pem"));
    }
}
