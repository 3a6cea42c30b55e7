//! A read-only session asks the server for nothing more than `read` (PROTOCOL §11).
//!
//! With `--read-only` or a profile's `read_only = true`, the console and the CLI mint a
//! short-lived key of scope `read` with the profile's key, use only that key while they
//! run, and delete it when they end; its expiry covers a crash. The server then refuses
//! every write of the session whatever the console's own checks say, which stay the first
//! line (exit code `ReadOnly`). When the profile's key cannot mint one (an older server, a
//! password), the session keeps the profile's key and says that only the console's own
//! checks hold.
//!
//! ```no_run
//! # async fn example(profile: herd_console::profile::Profile) {
//! let session = herd_console::session::Session::open(profile).await;
//! if let Some(warning) = &session.warning {
//!     eprintln!("herd: {warning}");
//! }
//! // ... session.profile.client() calls with the read key ...
//! session.close().await;
//! # }
//! ```

use herd_client::{Client, NewKey, Scope};

use crate::profile::Profile;

/// How long a session key lives when nobody deletes it.
pub const SESSION_KEY_HOURS: i64 = 12;
/// The start of a session key's name, followed by this machine's name.
pub const SESSION_KEY_PREFIX: &str = "herd read-only";

/// The profile a command or console runs with, and the key to delete at its end.
pub struct Session {
    /// The profile, with the session key instead of the profile's own when read-only.
    pub profile: Profile,
    /// Why read-only holds only in this console: the key could not be minted.
    pub warning: Option<String>,
    minted: Option<Minted>,
}

/// A session key and the client (with the profile's key) that deletes it.
struct Minted {
    owner: Client,
    id: String,
}

impl Session {
    /// A session on `profile`: when read-only, with a fresh `read` key minted by the
    /// profile's key; otherwise the profile as it is.
    pub async fn open(profile: Profile) -> Session {
        if !profile.read_only {
            return Session {
                profile,
                warning: None,
                minted: None,
            };
        }
        match mint(&profile).await {
            Ok((owner, id, token)) => {
                tracing::info!(key = %id, "read-only session key minted");
                Session {
                    profile: Profile {
                        api_key: Some(token),
                        ..profile
                    },
                    warning: None,
                    minted: Some(Minted { owner, id }),
                }
            }
            Err(reason) => Session {
                warning: Some(format!(
                    "read-only is enforced by this console only: cannot make a read key ({reason})"
                )),
                profile,
                minted: None,
            },
        }
    }

    /// Whether the server enforces read-only for this session.
    pub fn enforced(&self) -> bool {
        self.minted.is_some()
    }

    /// Deletes the session key, if one was minted. Best effort: the key expires anyway.
    pub async fn close(self) {
        if let Some(minted) = self.minted {
            if let Err(e) = minted.owner.delete_key(&minted.id).await {
                tracing::warn!(key = %minted.id, error = %e, "cannot delete the session key; it expires on its own");
            }
        }
    }
}

/// Mints a `read` key with `profile`'s key; answers with the client of the profile's key,
/// the new key's id and its secret.
async fn mint(profile: &Profile) -> Result<(Client, String, String), String> {
    let owner = profile.client()?;
    let expires = time::OffsetDateTime::now_utc() + time::Duration::hours(SESSION_KEY_HOURS);
    let expires_at = expires
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| e.to_string())?;
    let key = NewKey {
        name: Some(format!("{SESSION_KEY_PREFIX} {}", host_name())),
        scope: Some(Scope::Read),
        devices: None,
        expires_at: Some(expires_at),
    };
    let made = owner.create_key(&key).await.map_err(|e| e.to_string())?;
    // A server that ignores scopes would hand back a key as wide as the profile's.
    if made.scope != Some(Scope::Read) {
        let _ = owner.delete_key(&made.id).await;
        return Err("the server did not make a read-scoped key".into());
    }
    let token = made
        .token
        .ok_or_else(|| "the server did not show the new key".to_string())?;
    Ok((owner, made.id, token))
}

/// This machine's name, so the key says where it came from.
fn host_name() -> String {
    let from_file = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok();
    from_file
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|name| {
            name.trim()
                .chars()
                .filter(|c| !c.is_control())
                .take(64)
                .collect::<String>()
        })
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown host".into())
}
