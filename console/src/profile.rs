//! Connection profiles: which server, which API key, read-only or not.
//!
//! The config file (`console.toml` in the platform config directory, or `--config FILE` /
//! `HERD_CONFIG`) names profiles:
//!
//! ```toml
//! default_profile = "lab"
//!
//! [profiles.lab]
//! server = "http://127.0.0.1:8009"
//! api_key = "..."
//!
//! [profiles.prod]
//! server = "https://herd.example.com"
//! api_key = "..."
//! read_only = true
//! ca_cert = "/etc/herd/ca.pem"   # trust a private CA besides the system's
//!
//! [profiles.bench]
//! server = "https://10.0.0.2:8009"
//! tls_fingerprint = "AB:CD:…"      # trust only this certificate (herd-server --tls-self-signed)
//!
//! [theme]                          # any style of the console (see tui::theme)
//! stale = "italic #d0a020"
//! ```
//!
//! Flags (`--server`, `--api-key`, `--read-only`) and `HERD_*` variables override the
//! selected profile field by field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The server a bare `herd` talks to when nothing says otherwise: a local `herd-server`.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8009";

/// One `[profiles.NAME]` table.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProfileEntry {
    pub server: Option<String>,
    pub api_key: Option<String>,
    pub read_only: bool,
    /// PEM file of a CA to trust besides the system's (a self-signed server).
    pub ca_cert: Option<PathBuf>,
    /// SHA-256 fingerprint of the one server certificate to trust (pinning).
    pub tls_fingerprint: Option<String>,
    /// The server's notification log as this machine sees it (its data directory or a
    /// log file), for reports and the analytics view; without it they use `POST /logs`.
    pub log: Option<PathBuf>,
}

impl std::fmt::Debug for ProfileEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProfileEntry")
            .field("server", &self.server)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("read_only", &self.read_only)
            .field("ca_cert", &self.ca_cert)
            .field("tls_fingerprint", &self.tls_fingerprint)
            .field("log", &self.log)
            .finish()
    }
}

/// The whole config file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    pub default_profile: Option<String>,
    pub profiles: BTreeMap<String, ProfileEntry>,
    /// Styles replacing the built-in ones (see [`crate::tui::theme`]); checked when the
    /// console starts.
    pub theme: BTreeMap<String, String>,
    /// Keys replacing the built-in ones (see [`crate::tui::keymap`]); checked when the
    /// console starts.
    pub keys: BTreeMap<String, String>,
}

/// Why the profile could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("no profile named {name:?} in {path} (known: {known})")]
    Unknown {
        name: String,
        path: PathBuf,
        known: String,
    },
}

impl ConsoleConfig {
    /// The default location, `<config dir>/console.toml`; `None` without a home directory.
    pub fn default_path() -> Option<PathBuf> {
        herd_config::default_config_dir()
            .ok()
            .map(|dir| dir.join("console.toml"))
    }

    /// Reads `path`; a missing file is an empty config, because a fresh machine has none.
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(ProfileError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        toml::from_str(&text).map_err(|e| ProfileError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }
}

/// What the command line and environment said (clap has already merged flags over
/// `HERD_*` variables).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub profile: Option<String>,
    pub server: Option<String>,
    pub api_key: Option<String>,
    pub read_only: bool,
    pub config: Option<PathBuf>,
    pub ca_cert: Option<PathBuf>,
    pub tls_fingerprint: Option<String>,
    /// Notification log paths given on the command line; they replace the profile's.
    pub log: Vec<PathBuf>,
}

/// The connection the console and CLI use.
#[derive(Clone, PartialEq)]
pub struct Profile {
    /// Shown in the header; `default` when no profile was selected.
    pub name: String,
    pub server: String,
    pub api_key: Option<String>,
    pub read_only: bool,
    pub ca_cert: Option<PathBuf>,
    /// Trust only the server certificate with this SHA-256 fingerprint.
    pub tls_fingerprint: Option<String>,
    /// The server's notification log readable from here (directories or files); empty
    /// when reports must pull it from the server.
    pub log: Vec<PathBuf>,
    /// The config file's `[theme]` table.
    pub theme: BTreeMap<String, String>,
    /// The config file's `[keys]` table.
    pub keys: BTreeMap<String, String>,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("name", &self.name)
            .field("server", &self.server)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("read_only", &self.read_only)
            .field("ca_cert", &self.ca_cert)
            .field("tls_fingerprint", &self.tls_fingerprint)
            .field("log", &self.log)
            .field("theme", &self.theme)
            .field("keys", &self.keys)
            .finish()
    }
}

impl Profile {
    /// A client for this profile's server, trusting its CA file if it names one.
    pub fn client(&self) -> Result<herd_client::Client, String> {
        let mut options =
            herd_client::ClientOptions::new(self.server.clone(), self.api_key.clone());
        if let Some(path) = &self.ca_cert {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read the CA certificate {}: {e}", path.display()))?;
            options.ca_cert = Some(pem);
        }
        if let Some(pin) = &self.tls_fingerprint {
            options.tls_fingerprint = Some(pin.parse()?);
        }
        herd_client::Client::with_options(options).map_err(|e| e.to_string())
    }

    /// Resolves the profile: flags and variables over the selected profile over defaults.
    pub fn resolve(overrides: &Overrides) -> Result<Profile, ProfileError> {
        let path = overrides
            .config
            .clone()
            .or_else(ConsoleConfig::default_path);
        let config = match &path {
            Some(path) => ConsoleConfig::load(path)?,
            None => ConsoleConfig::default(),
        };
        Self::resolve_with(overrides, &config, path.as_deref())
    }

    /// [`Profile::resolve`] on an already-loaded config.
    pub fn resolve_with(
        overrides: &Overrides,
        config: &ConsoleConfig,
        path: Option<&Path>,
    ) -> Result<Profile, ProfileError> {
        let selected = overrides
            .profile
            .clone()
            .or_else(|| config.default_profile.clone());
        let entry = match &selected {
            Some(name) => match config.profiles.get(name) {
                Some(entry) => entry.clone(),
                None => {
                    let known: Vec<&str> = config.profiles.keys().map(String::as_str).collect();
                    return Err(ProfileError::Unknown {
                        name: name.clone(),
                        path: path.map(Path::to_path_buf).unwrap_or_default(),
                        known: if known.is_empty() {
                            "none".into()
                        } else {
                            known.join(", ")
                        },
                    });
                }
            },
            None => ProfileEntry::default(),
        };
        Ok(Profile {
            name: selected.unwrap_or_else(|| "default".into()),
            server: overrides
                .server
                .clone()
                .or(entry.server)
                .unwrap_or_else(|| DEFAULT_SERVER.into()),
            api_key: overrides.api_key.clone().or(entry.api_key),
            read_only: overrides.read_only || entry.read_only,
            ca_cert: overrides.ca_cert.clone().or(entry.ca_cert),
            tls_fingerprint: overrides.tls_fingerprint.clone().or(entry.tls_fingerprint),
            log: if overrides.log.is_empty() {
                entry.log.into_iter().collect()
            } else {
                overrides.log.clone()
            },
            theme: config.theme.clone(),
            keys: config.keys.clone(),
        })
    }
}

/// A profile of the config file as the console's `:ctx` list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextInfo {
    pub name: String,
    pub server: String,
    pub read_only: bool,
}

/// The profiles the console can switch between (`:ctx`, as k9s switches contexts), and
/// how to resolve one: the config file's entry, still read-only when `--read-only` said
/// so, without the other flags that named the first profile's server and key.
#[derive(Debug, Clone, Default)]
pub struct Contexts {
    overrides: Overrides,
    config: ConsoleConfig,
    path: Option<PathBuf>,
}

impl Contexts {
    /// Reads the config file the overrides name (or the default one).
    pub fn load(overrides: &Overrides) -> Result<Contexts, ProfileError> {
        let path = overrides
            .config
            .clone()
            .or_else(ConsoleConfig::default_path);
        let config = match &path {
            Some(path) => ConsoleConfig::load(path)?,
            None => ConsoleConfig::default(),
        };
        Ok(Contexts {
            overrides: overrides.clone(),
            config,
            path,
        })
    }

    /// The contexts of an already-loaded config.
    pub fn with_config(
        overrides: &Overrides,
        config: ConsoleConfig,
        path: Option<PathBuf>,
    ) -> Self {
        Contexts {
            overrides: overrides.clone(),
            config,
            path,
        }
    }

    /// Every profile of the config, by name.
    pub fn list(&self) -> Vec<ContextInfo> {
        self.config
            .profiles
            .iter()
            .map(|(name, entry)| ContextInfo {
                name: name.clone(),
                server: entry
                    .server
                    .clone()
                    .unwrap_or_else(|| DEFAULT_SERVER.into()),
                read_only: self.overrides.read_only || entry.read_only,
            })
            .collect()
    }

    /// The profile `name` of the config; an unknown name is an error naming the known.
    pub fn profile(&self, name: &str) -> Result<Profile, ProfileError> {
        let overrides = Overrides {
            profile: Some(name.to_string()),
            read_only: self.overrides.read_only,
            config: self.overrides.config.clone(),
            ..Overrides::default()
        };
        Profile::resolve_with(&overrides, &self.config, self.path.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ConsoleConfig {
        toml::from_str(
            r#"
            default_profile = "lab"
            [profiles.lab]
            server = "http://lab:8009"
            api_key = "lab-key"
            [profiles.prod]
            server = "https://prod"
            api_key = "prod-key"
            read_only = true
            log = "/var/lib/herd"
            "#,
        )
        .expect("valid config")
    }

    #[test]
    fn default_profile_applies() {
        let profile = Profile::resolve_with(&Overrides::default(), &config(), None).expect("ok");
        assert_eq!(profile.name, "lab");
        assert_eq!(profile.server, "http://lab:8009");
        assert_eq!(profile.api_key.as_deref(), Some("lab-key"));
        assert!(!profile.read_only);
    }

    #[test]
    fn flags_override_field_by_field() {
        let overrides = Overrides {
            profile: Some("prod".into()),
            api_key: Some("other".into()),
            ..Default::default()
        };
        let profile = Profile::resolve_with(&overrides, &config(), None).expect("ok");
        assert_eq!(profile.server, "https://prod");
        assert_eq!(profile.api_key.as_deref(), Some("other"));
        assert!(profile.read_only, "a read-only profile stays read-only");
    }

    #[test]
    fn log_paths_on_the_command_line_replace_the_profiles() {
        let prod = Overrides {
            profile: Some("prod".into()),
            ..Default::default()
        };
        let profile = Profile::resolve_with(&prod, &config(), None).expect("ok");
        assert_eq!(profile.log, vec![PathBuf::from("/var/lib/herd")]);
        let flags = Overrides {
            log: vec!["/a".into(), "/b.log".into()],
            ..prod
        };
        let profile = Profile::resolve_with(&flags, &config(), None).expect("ok");
        assert_eq!(
            profile.log,
            vec![PathBuf::from("/a"), PathBuf::from("/b.log")]
        );
        let lab = Profile::resolve_with(&Overrides::default(), &config(), None).expect("ok");
        assert!(
            lab.log.is_empty(),
            "no log configured: reports use the server"
        );
    }

    #[test]
    fn contexts_list_the_profiles_and_switch_without_the_first_ones_flags() {
        let overrides = Overrides {
            server: Some("http://flag:1".into()),
            api_key: Some("flag-key".into()),
            ..Default::default()
        };
        let contexts = Contexts::with_config(&overrides, config(), None);
        let names: Vec<(String, bool)> = contexts
            .list()
            .into_iter()
            .map(|c| (c.name, c.read_only))
            .collect();
        assert_eq!(
            names,
            vec![("lab".to_string(), false), ("prod".to_string(), true)]
        );
        let prod = contexts.profile("prod").expect("prod");
        assert_eq!(prod.server, "https://prod");
        assert_eq!(prod.api_key.as_deref(), Some("prod-key"));
        assert!(prod.read_only);
        let error = contexts.profile("staging").expect_err("unknown");
        assert!(error.to_string().contains("lab, prod"), "{error}");
        // --read-only holds for every profile switched to.
        let read_only = Overrides {
            read_only: true,
            ..Default::default()
        };
        let contexts = Contexts::with_config(&read_only, config(), None);
        assert!(contexts.profile("lab").expect("lab").read_only);
        assert!(contexts.list().iter().all(|c| c.read_only));
    }

    #[test]
    fn nothing_configured_means_a_local_server() {
        let profile = Profile::resolve_with(&Overrides::default(), &ConsoleConfig::default(), None)
            .expect("ok");
        assert_eq!(profile.server, DEFAULT_SERVER);
        assert_eq!(profile.name, "default");
        assert!(profile.api_key.is_none());
    }

    #[test]
    fn unknown_profiles_and_bad_files_are_named() {
        let overrides = Overrides {
            profile: Some("nope".into()),
            ..Default::default()
        };
        let error = Profile::resolve_with(&overrides, &config(), Some(Path::new("/x.toml")))
            .expect_err("unknown");
        assert!(error.to_string().contains("lab, prod"), "{error}");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.toml");
        std::fs::write(&path, "profiles = 3").expect("write");
        assert!(matches!(
            ConsoleConfig::load(&path),
            Err(ProfileError::Parse { .. })
        ));
        assert_eq!(
            ConsoleConfig::load(&dir.path().join("missing.toml")).expect("missing is empty"),
            ConsoleConfig::default()
        );
    }
}
