//! Persistence behind a trait, with two implementations: SQLite in the data directory
//! ([`sqlite`], the default) and PostgreSQL ([`postgres`], `store = "postgres://..."`);
//! [`open`] picks one from the settings.
//!
//! The store owns users, API keys, devices and their shadows. Read-modify-write of a shadow
//! (PROTOCOL §4.1) happens inside the store, atomically, so that concurrent updates from a
//! device and from REST never lose each other's changes. Secrets (passwords, API keys, device
//! tokens) are never stored in clear: callers pass hashes.

pub mod postgres;
pub mod sqlite;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use protocol::firmware::{DeviceState, RolloutSpec, RolloutState};
use protocol::rest::Scope;
use protocol::shadow::{Applied, Limits, Shadow, ShadowError, Update};
use protocol::Value;

/// A user account. `id` is `email_<name>` (PROTOCOL §6).
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: String,
    pub name: String,
    pub admin: bool,
    pub created_at: f64,
}

/// A user with its password hash, for Basic authentication only.
#[derive(Clone)]
pub struct UserCredentials {
    pub user: User,
    pub pass_hash: String,
}

/// An API key's public record; the secret is only its hash in the store.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ApiKey {
    pub id: String,
    pub user_id: String,
    pub created_at: f64,
    pub last_used: Option<f64>,
    pub name: String,
    /// `None` for keys made before scopes existed (PROTOCOL §11 says what they may do).
    pub scope: Option<Scope>,
    /// Device filter the key is limited to.
    pub devices: Option<String>,
    /// Unix seconds after which the key is refused.
    pub expires_at: Option<f64>,
}

/// Everything stored about a device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceRecord {
    pub id: String,
    pub name: String,
    pub user_id: String,
    /// Comma-separated user ids (PROTOCOL §6).
    pub shared_with: String,
    pub created_at: f64,
    pub last_seen: Option<f64>,
    pub info: Value,
    pub shadow: Shadow,
}

impl DeviceRecord {
    /// Whether `user` may see this device: owner, shared with, or admin (PROTOCOL §5, §6).
    pub fn visible_to(&self, user: &User) -> bool {
        crate::access::may_see(user, &self.user_id, &self.shared_with)
    }
}

/// The stored form of a shadow (PROTOCOL §4), serialized without copying it.
pub fn shadow_json(shadow: &protocol::shadow::Shadow) -> String {
    serde_json::to_string(&shadow.document()).unwrap_or_else(|_| shadow.to_document().to_string())
}

/// Whether a comma-separated `shared_with` list names `user_id`.
pub fn shared_contains(shared_with: &str, user_id: &str) -> bool {
    shared_with.split(',').any(|s| s.trim() == user_id)
}

/// A new device to insert.
#[derive(Debug, Clone)]
pub struct NewDevice {
    pub id: String,
    pub name: String,
    pub user_id: String,
    pub token_hash: String,
    pub created_at: f64,
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists")]
    Exists(String),
    #[error("{0} not found")]
    NotFound(String),
    /// The change is refused because of the state of something else (a firmware image
    /// in use by a rollout).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Shadow(#[from] ShadowError),
    #[error("store failure: {0}")]
    Backend(String),
    #[error("the store is shut down")]
    Closed,
    /// The database cannot be reached now (PostgreSQL stopped or unreachable); the call may
    /// succeed later.
    #[error("the database is unreachable: {0}")]
    Unavailable(String),
    /// Another cluster node carried the operation out and refused it with this status.
    #[error("{message}")]
    Remote { status: u16, message: String },
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        // A unique key already taken reads as PostgreSQL's unique violation does.
        if let rusqlite::Error::SqliteFailure(failure, _) = &e {
            if matches!(
                failure.extended_code,
                rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            ) {
                return StoreError::Exists("a row with this key".into());
            }
        }
        StoreError::Backend(e.to_string())
    }
}

/// Opens the store `settings` name: PostgreSQL for `store = "postgres://..."`, otherwise
/// SQLite (`herd.db`) in `data_dir`.
pub async fn open(
    settings: &herd_config::ServerSettings,
    data_dir: &Path,
    commit_window: Duration,
) -> Result<Arc<dyn Store>, StoreError> {
    match settings.store.as_deref() {
        Some(url) => Ok(Arc::new(
            postgres::PostgresStore::open(url, settings.durability).await?,
        )),
        None => Ok(Arc::new(sqlite::SqliteStore::open(
            data_dir,
            settings.durability,
            commit_window,
        )?)),
    }
}

/// The result of an accepted shadow update.
#[derive(Debug, Clone)]
pub struct ShadowChange {
    pub device: DeviceRecord,
    pub applied: Applied,
}

/// A stored firmware image's metadata (PROTOCOL §10.1); the bytes live in the data
/// directory under the id.
#[derive(Debug, Clone, PartialEq)]
pub struct FirmwareRecord {
    /// SHA-256 of the image, lowercase hex.
    pub id: String,
    pub app: String,
    pub version: String,
    pub platform: String,
    pub size: u64,
    pub signature: Option<String>,
    /// `raw`, `elf` or `zip`.
    pub format: String,
    /// A package manifest's build id, which Mongoose OS devices report as `fw_id`.
    pub build_id: Option<String>,
    pub created_at: f64,
    pub created_by: String,
}

/// A rollout's stored state (PROTOCOL §10.5); its devices are [`RolloutDeviceRecord`]s.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutRecord {
    pub id: String,
    pub name: String,
    pub firmware_id: String,
    pub spec: RolloutSpec,
    pub state: RolloutState,
    pub current_wave: u32,
    pub wave_started_at: Option<f64>,
    pub reason: String,
    pub created_by: String,
    pub created_at: f64,
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
}

/// One device of a rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutDeviceRecord {
    pub rollout_id: String,
    pub device_id: String,
    pub name: String,
    pub wave: u32,
    /// Place in the plan's deterministic order.
    pub position: u32,
    pub state: DeviceState,
    pub from_version: String,
    pub attempts: u32,
    pub message: String,
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
}

/// The persistence contract of herd-server.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates a user; the first user ever created becomes the administrator.
    async fn create_user(&self, name: &str, pass_hash: &str, now: f64) -> Result<User, StoreError>;
    async fn user_credentials(&self, name: &str) -> Result<Option<UserCredentials>, StoreError>;

    /// Stores `key` (its `last_used` is ignored) with the hash of its secret.
    async fn create_key(&self, key: ApiKey, key_hash: &str) -> Result<ApiKey, StoreError>;
    /// The key and its user, by the key's hash.
    async fn key_by_hash(&self, key_hash: &str) -> Result<Option<(ApiKey, User)>, StoreError>;
    async fn list_keys(&self, user_id: &str) -> Result<Vec<ApiKey>, StoreError>;
    /// Deletes a key of `user_id`; false when it has no such key.
    async fn delete_key(&self, user_id: &str, id: &str) -> Result<bool, StoreError>;
    /// Records use of a key; best effort, never on the request's critical path.
    async fn touch_key(&self, id: &str, now: f64) -> Result<(), StoreError>;

    async fn create_device(&self, device: NewDevice) -> Result<DeviceRecord, StoreError>;
    async fn device(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError>;
    async fn device_by_token_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<DeviceRecord>, StoreError>;
    /// All devices, or those visible to `user` (owned or shared with it).
    async fn list_devices(&self, user: Option<&User>) -> Result<Vec<DeviceRecord>, StoreError>;
    async fn update_device_meta(
        &self,
        id: &str,
        name: Option<String>,
        shared_with: Option<String>,
    ) -> Result<DeviceRecord, StoreError>;
    /// Deletes a device; its id is retired and never given again (PROTOCOL §11).
    async fn delete_device(&self, id: &str) -> Result<bool, StoreError>;
    async fn set_info(&self, id: &str, info: Value) -> Result<(), StoreError>;
    async fn set_last_seen(&self, id: &str, when: f64) -> Result<(), StoreError>;
    /// Applies a PROTOCOL §4.1 update atomically; on error nothing changes.
    async fn update_shadow(
        &self,
        id: &str,
        update: Update,
        now: f64,
        limits: Limits,
    ) -> Result<ShadowChange, StoreError>;

    /// Stores firmware metadata for `owner`, or adds `owner` to an image already stored
    /// (same bytes, same id); returns the stored record and whether it was new.
    async fn put_firmware(
        &self,
        firmware: FirmwareRecord,
        owner: &str,
    ) -> Result<(FirmwareRecord, bool), StoreError>;
    /// A firmware image and the users it belongs to.
    async fn firmware(&self, id: &str)
        -> Result<Option<(FirmwareRecord, Vec<String>)>, StoreError>;
    /// All images, or those belonging to `user`.
    async fn list_firmware(&self, user: Option<&str>) -> Result<Vec<FirmwareRecord>, StoreError>;
    /// Takes the image from `user` (from everyone when `None`); refused with
    /// [`StoreError::Conflict`] while an unfinished rollout uses it. Returns true when the
    /// image belongs to nobody any more and its bytes may go.
    async fn delete_firmware(&self, id: &str, user: Option<&str>) -> Result<bool, StoreError>;

    /// Stores a new rollout and its devices in one transaction.
    async fn create_rollout(
        &self,
        rollout: RolloutRecord,
        devices: Vec<RolloutDeviceRecord>,
    ) -> Result<(), StoreError>;
    async fn rollout(&self, id: &str) -> Result<Option<RolloutRecord>, StoreError>;
    /// All rollouts, or those created by `user`, newest first.
    async fn list_rollouts(&self, user: Option<&str>) -> Result<Vec<RolloutRecord>, StoreError>;
    /// A rollout's devices in plan order.
    async fn rollout_devices(&self, id: &str) -> Result<Vec<RolloutDeviceRecord>, StoreError>;
    /// Saves the mutable fields of a rollout (state, wave, times, reason).
    async fn save_rollout(&self, rollout: RolloutRecord) -> Result<(), StoreError>;
    /// Saves the mutable fields of rollout devices (state, attempts, message, times).
    async fn save_rollout_devices(
        &self,
        devices: Vec<RolloutDeviceRecord>,
    ) -> Result<(), StoreError>;

    /// Makes every acknowledged write durable and stops accepting writes.
    async fn close(&self) -> Result<(), StoreError>;

    /// Whether writes can be carried out now, for `/healthz`.
    fn writes_possible(&self) -> bool {
        true
    }
}
