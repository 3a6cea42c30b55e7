//! Credentials: secrets, their hashes, and who a request is (PROTOCOL §1, §5, §6).
//!
//! API keys and device tokens are 96-bit random values; only their SHA-256 is stored, which
//! is enough for secrets of that entropy and keeps lookups to one indexed query. Passwords are
//! bcrypt. A Basic login that was verified recently is remembered for a minute (keyed by a
//! hash of the password) so scripts using Basic auth do not pay a bcrypt per request.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use base64::Engine;
use parking_lot::Mutex;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use protocol::filter::Filter;
use protocol::rest::Scope;

use crate::store::{ApiKey, DeviceRecord, User};
use crate::AppState;

const BASIC_CACHE_TTL: Duration = Duration::from_secs(60);
const BASIC_CACHE_MAX: usize = 4096;

/// A fresh identifier or secret: 24 lowercase hex characters (PROTOCOL identifiers).
pub fn new_secret() -> String {
    let mut bytes = [0u8; 12];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The stored form of a token or API key.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A credential as presented by a client.
#[derive(Debug, Clone, PartialEq)]
pub enum Credential {
    /// A bearer token or `?access_token=`: an API key or a device token.
    Token(String),
    Basic {
        user: String,
        pass: String,
    },
}

/// Reads `Authorization: Bearer`, `Authorization: Basic` or `?access_token=`.
pub fn credential(headers: &HeaderMap, query: Option<&str>) -> Option<Credential> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let value = value.trim();
        if let Some((scheme, rest)) = value.split_once(' ') {
            let rest = rest.trim();
            if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
                return Some(Credential::Token(rest.to_string()));
            }
            if scheme.eq_ignore_ascii_case("basic") {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(rest)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())?;
                let (user, pass) = decoded.split_once(':').unwrap_or((decoded.as_str(), ""));
                // `ws://KEY@host/...` arrives as Basic with the key as the user name.
                if pass.is_empty() {
                    return Some(Credential::Token(user.to_string()));
                }
                return Some(Credential::Basic {
                    user: user.to_string(),
                    pass: pass.to_string(),
                });
            }
        }
    }
    let query = query?;
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .ok()?
        .into_iter()
        .find(|(k, v)| k == "access_token" && !v.is_empty())
        .map(|(_, v)| Credential::Token(v))
}

/// Remembers recent successful Basic logins.
#[derive(Default)]
pub struct BasicCache {
    entries: Mutex<HashMap<String, (String, User, Instant)>>,
}

impl BasicCache {
    fn get(&self, name: &str, pass_hash: &str) -> Option<User> {
        let entries = self.entries.lock();
        let (hash, user, at) = entries.get(name)?;
        (hash == pass_hash && at.elapsed() < BASIC_CACHE_TTL).then(|| user.clone())
    }

    fn put(&self, name: &str, pass_hash: String, user: User) {
        let mut entries = self.entries.lock();
        if entries.len() >= BASIC_CACHE_MAX {
            entries.retain(|_, (_, _, at)| at.elapsed() < BASIC_CACHE_TTL);
            if entries.len() >= BASIC_CACHE_MAX {
                entries.clear();
            }
        }
        entries.insert(name.to_string(), (pass_hash, user, Instant::now()));
    }
}

/// Who a REST or notify request is, and what its credential lets it do (PROTOCOL §11).
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: User,
    /// What the credential may do. A password, or a key made before scopes existed, may do
    /// what its user may: `admin` for the administrator, `deploy` for others.
    pub scope: Scope,
    /// The device filter a limited key is held to.
    pub devices: Option<Filter>,
    /// The API key the request came with; `None` for a password login.
    pub key: Option<ApiKey>,
}

impl Caller {
    /// Everything `user` may do (a password login).
    pub fn full(user: User) -> Caller {
        let scope = if user.admin {
            Scope::Admin
        } else {
            Scope::Deploy
        };
        Caller {
            user,
            scope,
            devices: None,
            key: None,
        }
    }

    /// Refuses the request unless the credential's scope includes `needed`.
    pub fn require(&self, needed: Scope) -> Result<(), ApiError> {
        if self.scope >= needed {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this needs an API key with scope {} or more; this key's scope is {}",
                needed.as_str(),
                self.scope.as_str()
            )))
        }
    }

    /// Whether the caller sees `device`: its user does (owner, shared, admin) and a
    /// limited key's filter matches it.
    pub fn sees(&self, device: &DeviceRecord, online: bool) -> bool {
        device.visible_to(&self.user)
            && self
                .devices
                .as_ref()
                .is_none_or(|filter| filter.matches(&crate::access::DeviceFacts { device, online }))
    }

    /// Resolves a credential; `None` when it matches nobody, 401 when the key expired.
    pub async fn resolve(
        state: &AppState,
        credential: Credential,
    ) -> Result<Option<Caller>, ApiError> {
        match credential {
            Credential::Token(token) => {
                let Some((key, user)) = state.store.key_by_hash(&hash_secret(&token)).await? else {
                    return Ok(None);
                };
                let now = crate::clock::now();
                if let Some(expiry) = key.expires_at.filter(|t| *t <= now) {
                    return Err(ApiError::unauthorized(format!(
                        "this API key expired at {}",
                        crate::clock::rfc3339(expiry)
                    )));
                }
                // Recording every use would turn each read into a write; a minute is precise
                // enough for "last used".
                if key.last_used.is_none_or(|t| now - t > 60.0) {
                    let store = state.store.clone();
                    let id = key.id.clone();
                    tokio::spawn(async move {
                        if let Err(e) = store.touch_key(&id, now).await {
                            tracing::debug!(error = %e, "cannot record key use");
                        }
                    });
                }
                let mut caller = Caller::full(user);
                if let Some(scope) = key.scope {
                    // A key never does more than its user may.
                    caller.scope = caller.scope.min(scope);
                }
                caller.devices = key.devices.as_deref().map(Filter::parse);
                caller.key = Some(key);
                Ok(Some(caller))
            }
            Credential::Basic { user, pass } => {
                let pass_hash = hash_secret(&pass);
                if let Some(found) = state.basic_cache.get(&user, &pass_hash) {
                    return Ok(Some(Caller::full(found)));
                }
                let Some(credentials) = state.store.user_credentials(&user).await? else {
                    return Ok(None);
                };
                let stored = credentials.pass_hash.clone();
                let ok = tokio::task::spawn_blocking(move || {
                    bcrypt::verify(pass, &stored).unwrap_or(false)
                })
                .await
                .unwrap_or(false);
                if !ok {
                    return Ok(None);
                }
                state
                    .basic_cache
                    .put(&user, pass_hash, credentials.user.clone());
                Ok(Some(Caller::full(credentials.user)))
            }
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let credential = credential(&parts.headers, parts.uri.query())
            .ok_or_else(|| ApiError::unauthorized("missing credentials: use an API key (Bearer or ?access_token=) or Basic user:password"))?;
        match Caller::resolve(state, credential).await? {
            Some(caller) => Ok(caller),
            None => Err(ApiError::unauthorized("invalid credentials")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn secrets_are_24_hex_and_distinct() {
        let a = new_secret();
        assert_eq!(a.len(), 24);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, new_secret());
        assert_eq!(hash_secret("x"), hash_secret("x"));
    }

    #[test]
    fn reads_all_three_forms() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            credential(&headers, Some("a=1&access_token=abc")),
            Some(Credential::Token("abc".into()))
        );
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer k1"));
        assert_eq!(
            credential(&headers, None),
            Some(Credential::Token("k1".into()))
        );
        // user "ann", password "p:w" (a colon inside the password is legal)
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic YW5uOnA6dw=="),
        );
        assert_eq!(
            credential(&headers, None),
            Some(Credential::Basic {
                user: "ann".into(),
                pass: "p:w".into()
            })
        );
        // userinfo with the key alone
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic a2V5MTo="),
        );
        assert_eq!(
            credential(&headers, None),
            Some(Credential::Token("key1".into()))
        );
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert_eq!(credential(&headers, None), None);
    }
}
