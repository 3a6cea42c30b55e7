//! PostgreSQL store: a pool of connections, one transaction per operation.
//!
//! The driver is tokio-postgres with deadpool-postgres for the pool. It speaks the wire
//! protocol on the server's own tokio runtime with no blocking threads, pipelines queries on
//! a connection, and needs no TLS stack to reach a database over a Unix socket or plain TCP;
//! sqlx would have brought its own runtime glue, a macro layer and (for its pool) a second set
//! of connection types for the same work. TLS to the database is not offered yet:
//! `store = "postgres://..."` connects without it, so put the database on the same host or a
//! private network.
//!
//! Group commit: SQLite gains from one writer thread that folds queued jobs into one
//! transaction, because each of its commits is a file sync. PostgreSQL already folds the WAL
//! flushes of concurrent commits into one (its own group commit), and it lets many
//! connections write at once, so this store does not batch in the application: every
//! operation is its own short transaction on a pooled connection, and updates of different
//! devices run in parallel. A shadow update, the hot path, is a compare-and-set of two
//! autocommitted statements: read the row, apply PROTOCOL §4.1 in Rust, write the new
//! document only where the stored one is still the one read, and otherwise apply again to
//! what is stored now, so concurrent updates of one device never lose each other. That
//! halves the round trips of a transaction holding a row lock, which showed as the largest
//! cost per update in docs/BENCHMARKS.md (run K). [`Durability`] maps to `synchronous_commit`: `process` turns it
//! off (an acknowledged write survives herd-server dying, since PostgreSQL holds it, but the
//! last few milliseconds can be lost if PostgreSQL's host loses power), `power` keeps it on
//! (every acknowledged commit is flushed).
//!
//! Migrations are embedded and versioned in a `schema_version` table; they run under an
//! advisory lock so two servers starting at once do not race. [`Store::writes_possible`]
//! follows a probe that asks the database every second, and turns false at once when a call
//! cannot reach it.

use super::shadow_json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use herd_config::Durability;
use parking_lot::Mutex;
use protocol::firmware::{DeviceState, RolloutState};
use protocol::rest::Scope;
use protocol::shadow::{Limits, Shadow, Update};
use protocol::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use super::{
    ApiKey, DeviceRecord, FirmwareRecord, NewDevice, RolloutDeviceRecord, RolloutRecord,
    ShadowChange, Store, StoreError, User, UserCredentials,
};

/// Schema migrations, applied in order; `schema_version` records how many ran. The tables
/// match the SQLite store's, with PostgreSQL's types.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    pass_hash TEXT NOT NULL,
    admin BOOLEAN NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    key_hash TEXT NOT NULL UNIQUE,
    created_at DOUBLE PRECISION NOT NULL,
    last_used DOUBLE PRECISION,
    name TEXT NOT NULL DEFAULT '',
    scope TEXT,
    devices TEXT,
    expires_at DOUBLE PRECISION
);
CREATE INDEX api_keys_user ON api_keys(user_id);
CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    user_id TEXT NOT NULL,
    shared_with TEXT NOT NULL DEFAULT '',
    token_hash TEXT NOT NULL UNIQUE,
    created_at DOUBLE PRECISION NOT NULL,
    last_seen DOUBLE PRECISION,
    info TEXT NOT NULL DEFAULT '{}',
    shadow TEXT NOT NULL
);
CREATE INDEX devices_user ON devices(user_id);
CREATE TABLE retired_devices (
    id TEXT PRIMARY KEY,
    retired_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE firmware (
    id TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    version TEXT NOT NULL,
    platform TEXT NOT NULL,
    size BIGINT NOT NULL,
    signature TEXT,
    format TEXT NOT NULL,
    build_id TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    created_by TEXT NOT NULL
);
CREATE TABLE firmware_owners (
    firmware_id TEXT NOT NULL REFERENCES firmware(id) ON DELETE CASCADE,
    user_id TEXT NOT NULL,
    PRIMARY KEY (firmware_id, user_id)
);
CREATE INDEX firmware_owners_user ON firmware_owners(user_id);
CREATE TABLE rollouts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    firmware_id TEXT NOT NULL REFERENCES firmware(id),
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    current_wave BIGINT NOT NULL DEFAULT 0,
    wave_started_at DOUBLE PRECISION,
    reason TEXT NOT NULL DEFAULT '',
    created_by TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION
);
CREATE INDEX rollouts_state ON rollouts(state);
CREATE INDEX rollouts_firmware ON rollouts(firmware_id);
CREATE TABLE rollout_devices (
    rollout_id TEXT NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
    device_id TEXT NOT NULL,
    name TEXT NOT NULL,
    wave BIGINT NOT NULL,
    position BIGINT NOT NULL,
    state TEXT NOT NULL,
    from_version TEXT NOT NULL DEFAULT '',
    attempts BIGINT NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    PRIMARY KEY (rollout_id, device_id)
);
CREATE INDEX rollout_devices_device ON rollout_devices(device_id);
"#];

/// Key of the advisory lock held while migrating.
const MIGRATION_LOCK: i64 = 0x6865_7264_6462; // "herddb"
/// Most connections one server opens.
const POOL_SIZE: usize = 16;
/// How long a call waits for a pooled connection or a new one before it fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Reads of a shadow one update may take when other writers keep changing it.
const SHADOW_ATTEMPTS: usize = 64;
/// How often the health probe asks the database.
const PROBE_PERIOD: Duration = Duration::from_secs(1);

const DEVICE_COLUMNS: &str = "id, name, user_id, shared_with, created_at, last_seen, info, shadow";
const KEY_COLUMNS: &str =
    "k.id, k.user_id, k.created_at, k.last_used, k.name, k.scope, k.devices, k.expires_at";
const FIRMWARE_COLUMNS: &str =
    "id, app, version, platform, size, signature, format, build_id, created_at, created_by";
const ROLLOUT_COLUMNS: &str = "id, name, firmware_id, spec, state, current_wave, wave_started_at, reason, created_by, created_at, started_at, finished_at";
const ROLLOUT_DEVICE_COLUMNS: &str = "rollout_id, device_id, name, wave, position, state, from_version, attempts, message, started_at, finished_at";

/// The PostgreSQL implementation of [`Store`].
pub struct PostgresStore {
    pool: Pool,
    healthy: Arc<AtomicBool>,
    closed: AtomicBool,
    probe: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        use tokio_postgres::error::SqlState;
        if let Some(db) = e.as_db_error() {
            let code = db.code();
            if *code == SqlState::UNIQUE_VIOLATION {
                let what = match db.table() {
                    Some(table) => format!("a row of {table} with this key"),
                    None => "a row with this key".to_string(),
                };
                return StoreError::Exists(what);
            }
            // The database is shutting down, restarting or refusing connections.
            if code.code().starts_with("57P") || code.code().starts_with("08") {
                return StoreError::Unavailable(db.message().to_string());
            }
            return StoreError::Backend(format!("{}: {}", code.code(), db.message()));
        }
        if e.is_closed() || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>())
        {
            return StoreError::Unavailable(e.to_string());
        }
        StoreError::Backend(e.to_string())
    }
}

impl From<PoolError> for StoreError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Backend(e) => match StoreError::from(e) {
                // A connection that could not be made is always the database being away.
                StoreError::Backend(message) => StoreError::Unavailable(message),
                other => other,
            },
            PoolError::Closed => StoreError::Closed,
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

impl PostgresStore {
    /// Connects to the database `url` names, creates or migrates its tables, and starts the
    /// health probe.
    pub async fn open(url: &str, durability: Durability) -> Result<Self, StoreError> {
        let pool = connect_pool(url, durability, POOL_SIZE)?;
        migrate(&pool).await.map_err(|e| match e {
            StoreError::Unavailable(message) => StoreError::Backend(format!(
                "cannot reach the database {}: {message}",
                herd_config::redact_store_url(url)
            )),
            other => other,
        })?;
        let healthy = Arc::new(AtomicBool::new(true));
        let probe = tokio::spawn(probe_loop(pool.clone(), healthy.clone()));
        Ok(Self {
            pool,
            healthy,
            closed: AtomicBool::new(false),
            probe: Mutex::new(Some(probe)),
        })
    }

    /// A pooled connection; failing to get one marks the store unhealthy until the probe
    /// reaches the database again.
    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        match self.pool.get().await {
            Ok(client) => Ok(client),
            Err(e) => {
                let e = StoreError::from(e);
                if matches!(e, StoreError::Unavailable(_)) {
                    self.healthy.store(false, Ordering::Release);
                }
                Err(e)
            }
        }
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        if let Some(probe) = self.probe.lock().take() {
            probe.abort();
        }
    }
}

/// Asks the database whether it answers, every [`PROBE_PERIOD`].
/// A connection pool of `size` to the database `url` names, with the server's timeouts and
/// the commit durability `durability` asks for. Connections are made on first use.
pub(crate) fn connect_pool(
    url: &str,
    durability: Durability,
    size: usize,
) -> Result<Pool, StoreError> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
        StoreError::Backend(format!(
            "store URL {} is not valid: {e}",
            herd_config::redact_store_url(url)
        ))
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("herd-server");
    }
    let synchronous = match durability {
        Durability::Process => "off",
        Durability::Power => "on",
    };
    let options = match config.get_options() {
        Some(given) => format!("{given} -c synchronous_commit={synchronous}"),
        None => format!("-c synchronous_commit={synchronous}"),
    };
    config.options(&options);
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(CONNECT_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|e| StoreError::Backend(format!("cannot make the connection pool: {e}")))?;
    Ok(pool)
}

async fn probe_loop(pool: Pool, healthy: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(PROBE_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let answered = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let client = pool.get().await.ok()?;
            client.simple_query("SELECT 1").await.ok()
        })
        .await
        .ok()
        .flatten()
        .is_some();
        let was = healthy.swap(answered, Ordering::AcqRel);
        if was != answered {
            if answered {
                tracing::info!("the database answers again; writes resume");
            } else {
                tracing::error!("the database does not answer; writes fail until it is back");
            }
        }
    }
}

async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "SET LOCAL client_min_messages = warning;
         CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)",
    )
    .await?;
    let version: Option<i64> = tx
        .query_one("SELECT max(version) FROM schema_version", &[])
        .await?
        .try_get(0)?;
    let version = usize::try_from(version.unwrap_or(0)).unwrap_or(usize::MAX);
    if version > MIGRATIONS.len() {
        return Err(StoreError::Backend(format!(
            "database schema version {version} is newer than this server ({})",
            MIGRATIONS.len()
        )));
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.batch_execute(migration).await?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&((index + 1) as i64)],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

fn user_from_row(row: &Row, at: usize) -> Result<User, StoreError> {
    Ok(User {
        id: row.try_get(at)?,
        name: row.try_get(at + 1)?,
        admin: row.try_get(at + 2)?,
        created_at: row.try_get(at + 3)?,
    })
}

/// A key row (columns [`KEY_COLUMNS`]); an unknown stored scope reads as the narrowest.
fn key_from_row(row: &Row) -> Result<ApiKey, StoreError> {
    let scope: Option<String> = row.try_get(5)?;
    Ok(ApiKey {
        id: row.try_get(0)?,
        user_id: row.try_get(1)?,
        created_at: row.try_get(2)?,
        last_used: row.try_get(3)?,
        name: row.try_get(4)?,
        scope: scope.map(|s| Scope::parse(&s).unwrap_or(Scope::Read)),
        devices: row.try_get(6)?,
        expires_at: row.try_get(7)?,
    })
}

/// A device row (columns [`DEVICE_COLUMNS`]); a corrupt JSON column is a clear error.
fn device_from_row(row: &Row) -> Result<DeviceRecord, StoreError> {
    let id: String = row.try_get(0)?;
    let info: String = row.try_get(6)?;
    let shadow: String = row.try_get(7)?;
    let corrupt = |what: &str, e: &dyn std::fmt::Display| {
        StoreError::Backend(format!("device {id}: stored {what} is corrupt: {e}"))
    };
    let info: Value = serde_json::from_str(&info).map_err(|e| corrupt("info", &e))?;
    let doc: Value = serde_json::from_str(&shadow).map_err(|e| corrupt("shadow", &e))?;
    let shadow = Shadow::from_document(&doc).map_err(|e| corrupt("shadow", &e))?;
    Ok(DeviceRecord {
        name: row.try_get(1)?,
        user_id: row.try_get(2)?,
        shared_with: row.try_get(3)?,
        created_at: row.try_get(4)?,
        last_seen: row.try_get(5)?,
        info,
        shadow,
        id,
    })
}

fn firmware_from_row(row: &Row) -> Result<FirmwareRecord, StoreError> {
    Ok(FirmwareRecord {
        id: row.try_get(0)?,
        app: row.try_get(1)?,
        version: row.try_get(2)?,
        platform: row.try_get(3)?,
        size: row.try_get::<_, i64>(4)?.max(0) as u64,
        signature: row.try_get(5)?,
        format: row.try_get(6)?,
        build_id: row.try_get(7)?,
        created_at: row.try_get(8)?,
        created_by: row.try_get(9)?,
    })
}

fn rollout_from_row(row: &Row) -> Result<RolloutRecord, StoreError> {
    let id: String = row.try_get(0)?;
    let spec: String = row.try_get(3)?;
    let state: String = row.try_get(4)?;
    let spec = serde_json::from_str(&spec)
        .map_err(|e| StoreError::Backend(format!("rollout {id}: stored spec is corrupt: {e}")))?;
    let state = RolloutState::parse(&state).ok_or_else(|| {
        StoreError::Backend(format!("rollout {id}: unknown stored state {state:?}"))
    })?;
    Ok(RolloutRecord {
        name: row.try_get(1)?,
        firmware_id: row.try_get(2)?,
        spec,
        state,
        current_wave: row.try_get::<_, i64>(5)?.max(0) as u32,
        wave_started_at: row.try_get(6)?,
        reason: row.try_get(7)?,
        created_by: row.try_get(8)?,
        created_at: row.try_get(9)?,
        started_at: row.try_get(10)?,
        finished_at: row.try_get(11)?,
        id,
    })
}

fn rollout_device_from_row(row: &Row) -> Result<RolloutDeviceRecord, StoreError> {
    let rollout_id: String = row.try_get(0)?;
    let device_id: String = row.try_get(1)?;
    let state: String = row.try_get(5)?;
    let state = DeviceState::parse(&state).ok_or_else(|| {
        StoreError::Backend(format!(
            "rollout {rollout_id}: device {device_id} has unknown stored state {state:?}"
        ))
    })?;
    Ok(RolloutDeviceRecord {
        name: row.try_get(2)?,
        wave: row.try_get::<_, i64>(3)?.max(0) as u32,
        position: row.try_get::<_, i64>(4)?.max(0) as u32,
        state,
        from_version: row.try_get(6)?,
        attempts: row.try_get::<_, i64>(7)?.max(0) as u32,
        message: row.try_get(8)?,
        started_at: row.try_get(9)?,
        finished_at: row.try_get(10)?,
        rollout_id,
        device_id,
    })
}

/// Parses rows that may be corrupt one by one: a bad row is logged and skipped so that it
/// does not hide the others.
fn parse_each<T>(
    rows: Vec<Row>,
    what: &str,
    parse: impl Fn(&Row) -> Result<T, StoreError>,
) -> Vec<T> {
    let mut list = Vec::with_capacity(rows.len());
    for row in &rows {
        match parse(row) {
            Ok(item) => list.push(item),
            Err(e) => tracing::error!(error = %e, "skipping unreadable {what} row"),
        }
    }
    list
}

async fn load_device<C: deadpool_postgres::GenericClient>(
    client: &C,
    id: &str,
    for_update: bool,
) -> Result<Option<DeviceRecord>, StoreError> {
    let sql = if for_update {
        format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1 FOR UPDATE")
    } else {
        format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1")
    };
    let statement = client.prepare_cached(&sql).await?;
    client
        .query_opt(&statement, &[&id])
        .await?
        .as_ref()
        .map(device_from_row)
        .transpose()
}

fn spec_json(spec: &protocol::firmware::RolloutSpec) -> Result<String, StoreError> {
    serde_json::to_string(spec).map_err(|e| StoreError::Backend(format!("spec: {e}")))
}

#[async_trait]
impl Store for PostgresStore {
    async fn create_user(&self, name: &str, pass_hash: &str, now: f64) -> Result<User, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The first user becomes the administrator: creations take turns so two cannot
        // both see an empty table.
        tx.batch_execute("LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE")
            .await?;
        let id = format!("email_{name}");
        let exists = tx
            .query_opt(
                "SELECT 1 FROM users WHERE name = $1 OR id = $2",
                &[&name, &id],
            )
            .await?
            .is_some();
        if exists {
            return Err(StoreError::Exists(format!("user {name}")));
        }
        let count: i64 = tx
            .query_one("SELECT COUNT(*) FROM users", &[])
            .await?
            .try_get(0)?;
        let admin = count == 0;
        tx.execute(
            "INSERT INTO users (id, name, pass_hash, admin, created_at) VALUES ($1, $2, $3, $4, $5)",
            &[&id, &name, &pass_hash, &admin, &now],
        )
        .await?;
        tx.commit().await?;
        Ok(User {
            id,
            name: name.to_string(),
            admin,
            created_at: now,
        })
    }

    async fn user_credentials(&self, name: &str) -> Result<Option<UserCredentials>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT id, name, admin, created_at, pass_hash FROM users WHERE name = $1",
            )
            .await?;
        match client.query_opt(&statement, &[&name]).await? {
            Some(row) => Ok(Some(UserCredentials {
                user: user_from_row(&row, 0)?,
                pass_hash: row.try_get(4)?,
            })),
            None => Ok(None),
        }
    }

    async fn create_key(&self, key: ApiKey, key_hash: &str) -> Result<ApiKey, StoreError> {
        let client = self.client().await?;
        let scope = key.scope.map(Scope::as_str);
        client
            .execute(
                "INSERT INTO api_keys (id, user_id, key_hash, created_at, name, scope, devices, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &key.id,
                    &key.user_id,
                    &key_hash,
                    &key.created_at,
                    &key.name,
                    &scope,
                    &key.devices,
                    &key.expires_at,
                ],
            )
            .await?;
        Ok(ApiKey {
            last_used: None,
            ..key
        })
    }

    async fn key_by_hash(&self, key_hash: &str) -> Result<Option<(ApiKey, User)>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!(
                "SELECT {KEY_COLUMNS}, u.id, u.name, u.admin, u.created_at
                 FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.key_hash = $1"
            ))
            .await?;
        match client.query_opt(&statement, &[&key_hash]).await? {
            Some(row) => Ok(Some((key_from_row(&row)?, user_from_row(&row, 8)?))),
            None => Ok(None),
        }
    }

    async fn list_keys(&self, user_id: &str) -> Result<Vec<ApiKey>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.user_id = $1 ORDER BY k.created_at, k.id"
            ))
            .await?;
        client
            .query(&statement, &[&user_id])
            .await?
            .iter()
            .map(key_from_row)
            .collect()
    }

    async fn delete_key(&self, user_id: &str, id: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let n = client
            .execute(
                "DELETE FROM api_keys WHERE id = $1 AND user_id = $2",
                &[&id, &user_id],
            )
            .await?;
        Ok(n > 0)
    }

    async fn touch_key(&self, id: &str, now: f64) -> Result<(), StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached("UPDATE api_keys SET last_used = $2 WHERE id = $1")
            .await?;
        client.execute(&statement, &[&id, &now]).await?;
        Ok(())
    }

    async fn create_device(&self, device: NewDevice) -> Result<DeviceRecord, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let exists = tx
            .query_opt("SELECT 1 FROM devices WHERE id = $1", &[&device.id])
            .await?
            .is_some();
        if exists {
            return Err(StoreError::Exists(format!("device {}", device.id)));
        }
        // A deleted device's id is never given again: its history in notification.log must
        // not become a later owner's (PROTOCOL §11).
        let retired = tx
            .query_opt("SELECT 1 FROM retired_devices WHERE id = $1", &[&device.id])
            .await?
            .is_some();
        if retired {
            return Err(StoreError::Conflict(format!(
                "device id {} belonged to a deleted device and is not given again",
                device.id
            )));
        }
        let shadow = Shadow::default();
        tx.execute(
            "INSERT INTO devices (id, name, user_id, token_hash, created_at, shadow) VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &device.id,
                &device.name,
                &device.user_id,
                &device.token_hash,
                &device.created_at,
                &shadow_json(&shadow),
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(DeviceRecord {
            id: device.id,
            name: device.name,
            user_id: device.user_id,
            shared_with: String::new(),
            created_at: device.created_at,
            last_seen: None,
            info: Value::Object(Default::default()),
            shadow,
        })
    }

    async fn device(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        let client = self.client().await?;
        load_device(&client, id, false).await
    }

    async fn device_by_token_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!(
                "SELECT {DEVICE_COLUMNS} FROM devices WHERE token_hash = $1"
            ))
            .await?;
        client
            .query_opt(&statement, &[&token_hash])
            .await?
            .as_ref()
            .map(device_from_row)
            .transpose()
    }

    async fn list_devices(&self, user: Option<&User>) -> Result<Vec<DeviceRecord>, StoreError> {
        let client = self.client().await?;
        let rows = match user {
            None => {
                let statement = client
                    .prepare_cached(&format!("SELECT {DEVICE_COLUMNS} FROM devices ORDER BY id"))
                    .await?;
                client.query(&statement, &[]).await?
            }
            Some(user) => {
                // shared_with is a short comma list; matching it with delimiters stays exact
                // (no prefix matches) without a second table.
                let statement = client
                    .prepare_cached(&format!(
                        "SELECT {DEVICE_COLUMNS} FROM devices
                         WHERE user_id = $1
                            OR strpos(',' || replace(shared_with, ' ', '') || ',', ',' || $1 || ',') > 0
                         ORDER BY id"
                    ))
                    .await?;
                client.query(&statement, &[&user.id]).await?
            }
        };
        // One corrupt row must not hide the whole fleet.
        let mut devices = parse_each(rows, "device", device_from_row);
        if let Some(user) = user {
            devices.retain(|d| d.visible_to(user));
        }
        Ok(devices)
    }

    async fn update_device_meta(
        &self,
        id: &str,
        name: Option<String>,
        shared_with: Option<String>,
    ) -> Result<DeviceRecord, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let mut device = load_device(&tx, id, true)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("device {id}")))?;
        if let Some(name) = name {
            device.name = name;
        }
        if let Some(shared) = shared_with {
            device.shared_with = shared;
        }
        tx.execute(
            "UPDATE devices SET name = $2, shared_with = $3 WHERE id = $1",
            &[&id, &device.name, &device.shared_with],
        )
        .await?;
        tx.commit().await?;
        Ok(device)
    }

    async fn delete_device(&self, id: &str) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if tx
            .execute("DELETE FROM devices WHERE id = $1", &[&id])
            .await?
            == 0
        {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO retired_devices (id, retired_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
            &[&id, &crate::clock::now()],
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn set_info(&self, id: &str, info: Value) -> Result<(), StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached("UPDATE devices SET info = $2 WHERE id = $1")
            .await?;
        client
            .execute(&statement, &[&id, &info.to_string()])
            .await?;
        Ok(())
    }

    async fn set_last_seen(&self, id: &str, when: f64) -> Result<(), StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached("UPDATE devices SET last_seen = $2 WHERE id = $1")
            .await?;
        client.execute(&statement, &[&id, &when]).await?;
        Ok(())
    }

    async fn update_shadow(
        &self,
        id: &str,
        update: Update,
        now: f64,
        limits: Limits,
    ) -> Result<ShadowChange, StoreError> {
        let client = self.client().await?;
        let read = client
            .prepare_cached(&format!(
                "SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1"
            ))
            .await?;
        let write = client
            .prepare_cached("UPDATE devices SET shadow = $2 WHERE id = $1 AND shadow = $3")
            .await?;
        // Compare-and-set: the write lands only if the stored shadow is still the one the
        // update was applied to (PROTOCOL §4.1), else the update is applied again to what
        // is stored now. Each statement commits on its own: two round trips, where a
        // transaction with a row lock took four (BEGIN, SELECT FOR UPDATE, UPDATE, COMMIT).
        for _ in 0..SHADOW_ATTEMPTS {
            let row = client
                .query_opt(&read, &[&id])
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("device {id}")))?;
            let stored: String = row.try_get(7)?;
            let mut device = device_from_row(&row)?;
            let applied = device.shadow.apply(&update, now, &limits)?;
            let written = client
                .execute(&write, &[&id, &shadow_json(&device.shadow), &stored])
                .await?;
            if written == 1 {
                return Ok(ShadowChange { device, applied });
            }
        }
        Err(StoreError::Backend(format!(
            "the shadow of device {id} changed under {SHADOW_ATTEMPTS} attempts in a row; update not applied"
        )))
    }

    async fn put_firmware(
        &self,
        firmware: FirmwareRecord,
        owner: &str,
    ) -> Result<(FirmwareRecord, bool), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let size = firmware.size as i64;
        let inserted = tx
            .execute(
                "INSERT INTO firmware (id, app, version, platform, size, signature, format, build_id, created_at, created_by)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING",
                &[
                    &firmware.id,
                    &firmware.app,
                    &firmware.version,
                    &firmware.platform,
                    &size,
                    &firmware.signature,
                    &firmware.format,
                    &firmware.build_id,
                    &firmware.created_at,
                    &firmware.created_by,
                ],
            )
            .await?;
        let record = if inserted == 1 {
            firmware
        } else {
            let row = tx
                .query_one(
                    &format!("SELECT {FIRMWARE_COLUMNS} FROM firmware WHERE id = $1"),
                    &[&firmware.id],
                )
                .await?;
            firmware_from_row(&row)?
        };
        tx.execute(
            "INSERT INTO firmware_owners (firmware_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&record.id, &owner],
        )
        .await?;
        tx.commit().await?;
        Ok((record, inserted == 1))
    }

    async fn firmware(
        &self,
        id: &str,
    ) -> Result<Option<(FirmwareRecord, Vec<String>)>, StoreError> {
        let client = self.client().await?;
        let Some(row) = client
            .query_opt(
                &format!("SELECT {FIRMWARE_COLUMNS} FROM firmware WHERE id = $1"),
                &[&id],
            )
            .await?
        else {
            return Ok(None);
        };
        let record = firmware_from_row(&row)?;
        let owners = client
            .query(
                "SELECT user_id FROM firmware_owners WHERE firmware_id = $1 ORDER BY user_id",
                &[&id],
            )
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<Vec<String>, _>>()?;
        Ok(Some((record, owners)))
    }

    async fn list_firmware(&self, user: Option<&str>) -> Result<Vec<FirmwareRecord>, StoreError> {
        let client = self.client().await?;
        let rows = match user {
            None => {
                client
                    .query(
                        &format!(
                            "SELECT {FIRMWARE_COLUMNS} FROM firmware ORDER BY created_at DESC, id"
                        ),
                        &[],
                    )
                    .await?
            }
            Some(user) => {
                client
                    .query(
                        &format!(
                            "SELECT {FIRMWARE_COLUMNS} FROM firmware WHERE id IN
                             (SELECT firmware_id FROM firmware_owners WHERE user_id = $1)
                             ORDER BY created_at DESC, id"
                        ),
                        &[&user],
                    )
                    .await?
            }
        };
        rows.iter().map(firmware_from_row).collect()
    }

    async fn delete_firmware(&self, id: &str, user: Option<&str>) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The row lock orders this against other changes of the same image.
        let exists = tx
            .query_opt("SELECT 1 FROM firmware WHERE id = $1 FOR UPDATE", &[&id])
            .await?
            .is_some();
        if !exists {
            return Err(StoreError::NotFound(format!("firmware {id}")));
        }
        // The bytes must stay while a rollout may still send them, whoever asks.
        let unfinished: Vec<String> = tx
            .query(
                "SELECT id FROM rollouts WHERE firmware_id = $1
                 AND state IN ('planned', 'running', 'paused', 'halted') ORDER BY created_at",
                &[&id],
            )
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
        if !unfinished.is_empty() {
            return Err(StoreError::Conflict(format!(
                "firmware {id} is used by unfinished rollout {}",
                unfinished.join(", ")
            )));
        }
        let removed = match user {
            Some(user) => {
                tx.execute(
                    "DELETE FROM firmware_owners WHERE firmware_id = $1 AND user_id = $2",
                    &[&id, &user],
                )
                .await?
            }
            None => {
                tx.execute("DELETE FROM firmware_owners WHERE firmware_id = $1", &[&id])
                    .await?
            }
        };
        if removed == 0 && user.is_some() {
            return Err(StoreError::NotFound(format!("firmware {id}")));
        }
        let owners: i64 = tx
            .query_one(
                "SELECT COUNT(*) FROM firmware_owners WHERE firmware_id = $1",
                &[&id],
            )
            .await?
            .try_get(0)?;
        let used = tx
            .query_opt(
                "SELECT 1 FROM rollouts WHERE firmware_id = $1 LIMIT 1",
                &[&id],
            )
            .await?
            .is_some();
        let gone = if owners > 0 {
            false
        } else {
            if !used {
                tx.execute("DELETE FROM firmware WHERE id = $1", &[&id])
                    .await?;
            }
            // Finished rollouts keep naming the image; its row stays for their history,
            // its bytes go.
            true
        };
        tx.commit().await?;
        Ok(gone)
    }

    async fn create_rollout(
        &self,
        rollout: RolloutRecord,
        devices: Vec<RolloutDeviceRecord>,
    ) -> Result<(), StoreError> {
        let spec = spec_json(&rollout.spec)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            &format!("INSERT INTO rollouts ({ROLLOUT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"),
            &[
                &rollout.id,
                &rollout.name,
                &rollout.firmware_id,
                &spec,
                &rollout.state.as_str(),
                &(rollout.current_wave as i64),
                &rollout.wave_started_at,
                &rollout.reason,
                &rollout.created_by,
                &rollout.created_at,
                &rollout.started_at,
                &rollout.finished_at,
            ],
        )
        .await?;
        let statement = tx
            .prepare_cached(&format!(
                "INSERT INTO rollout_devices ({ROLLOUT_DEVICE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            ))
            .await?;
        for d in &devices {
            let (wave, position, attempts) = (d.wave as i64, d.position as i64, d.attempts as i64);
            let params: [&(dyn ToSql + Sync); 11] = [
                &d.rollout_id,
                &d.device_id,
                &d.name,
                &wave,
                &position,
                &d.state.as_str(),
                &d.from_version,
                &attempts,
                &d.message,
                &d.started_at,
                &d.finished_at,
            ];
            tx.execute(&statement, &params).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn rollout(&self, id: &str) -> Result<Option<RolloutRecord>, StoreError> {
        let client = self.client().await?;
        client
            .query_opt(
                &format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = $1"),
                &[&id],
            )
            .await?
            .as_ref()
            .map(rollout_from_row)
            .transpose()
    }

    async fn list_rollouts(&self, user: Option<&str>) -> Result<Vec<RolloutRecord>, StoreError> {
        let client = self.client().await?;
        let rows = match user {
            None => {
                client
                    .query(
                        &format!(
                            "SELECT {ROLLOUT_COLUMNS} FROM rollouts ORDER BY created_at DESC, id"
                        ),
                        &[],
                    )
                    .await?
            }
            Some(user) => {
                client
                    .query(
                        &format!(
                            "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE created_by = $1 ORDER BY created_at DESC, id"
                        ),
                        &[&user],
                    )
                    .await?
            }
        };
        Ok(parse_each(rows, "rollout", rollout_from_row))
    }

    async fn rollout_devices(&self, id: &str) -> Result<Vec<RolloutDeviceRecord>, StoreError> {
        let client = self.client().await?;
        client
            .query(
                &format!(
                    "SELECT {ROLLOUT_DEVICE_COLUMNS} FROM rollout_devices WHERE rollout_id = $1 ORDER BY position"
                ),
                &[&id],
            )
            .await?
            .iter()
            .map(rollout_device_from_row)
            .collect()
    }

    async fn save_rollout(&self, rollout: RolloutRecord) -> Result<(), StoreError> {
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE rollouts SET state = $2, current_wave = $3, wave_started_at = $4,
                 reason = $5, started_at = $6, finished_at = $7 WHERE id = $1",
                &[
                    &rollout.id,
                    &rollout.state.as_str(),
                    &(rollout.current_wave as i64),
                    &rollout.wave_started_at,
                    &rollout.reason,
                    &rollout.started_at,
                    &rollout.finished_at,
                ],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("rollout {}", rollout.id)));
        }
        Ok(())
    }

    async fn save_rollout_devices(
        &self,
        devices: Vec<RolloutDeviceRecord>,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let statement = tx
            .prepare_cached(
                "UPDATE rollout_devices SET state = $3, attempts = $4, message = $5, started_at = $6,
                 finished_at = $7 WHERE rollout_id = $1 AND device_id = $2",
            )
            .await?;
        for d in &devices {
            let attempts = d.attempts as i64;
            tx.execute(
                &statement,
                &[
                    &d.rollout_id,
                    &d.device_id,
                    &d.state.as_str(),
                    &attempts,
                    &d.message,
                    &d.started_at,
                    &d.finished_at,
                ],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    fn writes_possible(&self) -> bool {
        !self.closed.load(Ordering::Acquire) && self.healthy.load(Ordering::Acquire)
    }

    async fn close(&self) -> Result<(), StoreError> {
        // Every acknowledged write already committed; closing only stops new ones.
        self.closed.store(true, Ordering::Release);
        if let Some(probe) = self.probe.lock().take() {
            probe.abort();
        }
        self.pool.close();
        Ok(())
    }
}
