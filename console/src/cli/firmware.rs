//! `herd firmware`: signing keys, upload, list and delete (PROTOCOL §10.1, §10.4), plus
//! what the OTA and rollout commands share: firmware id prefixes, the streaming SHA-256,
//! and progress bars.
//!
//! A signing key file is text, so that an operator can tell what it is:
//!
//! ```text
//! herd-firmware-key v1 ed25519
//! private: <standard base64 of the 32-byte Ed25519 secret key>
//! public: <standard base64 of the 32-byte public key>
//! ```
//!
//! Lines starting with `#` and blank lines are ignored; `public:` is optional and, when
//! present, must belong to the private key. `FILE.pub` holds the public key alone, in
//! the form devices take as `update.pubkey`.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey};
use herd_client::{Client, FirmwareObject, UploadMeta};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::commands::{print, table};
use super::{CommandResult, Exit, Failure};

/// First line of a signing key file.
pub const KEY_HEADER: &str = "herd-firmware-key v1 ed25519";
/// Where `keygen` writes when not told otherwise.
pub const DEFAULT_KEY_FILE: &str = "herd-firmware.key";
/// The shortest id prefix accepted for firmware and rollouts.
pub const MIN_PREFIX: usize = 8;

const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Debug, clap::Subcommand)]
pub enum FirmwareCommand {
    /// Make a new Ed25519 signing key. The private key goes to FILE (mode 0600, never
    /// overwritten), the base64 public key to FILE.pub. Devices take the public key as
    /// `update.pubkey` (PROTOCOL §10.4), set locally or in the factory configuration
    /// layer; they refuse `update.pubkey` from the cloud.
    ///
    /// FILE is text: a header line `herd-firmware-key v1 ed25519`, then `private: <base64
    /// of the 32-byte secret key>` and `public: <base64 public key>`.
    Keygen {
        /// Where to write the private key.
        #[arg(long, value_name = "FILE", default_value = DEFAULT_KEY_FILE)]
        out: PathBuf,
        /// Print {"private_key_file", "public_key"}.
        #[arg(long)]
        json: bool,
    },
    /// Upload an image to the firmware store; prints its id (the image's SHA-256).
    /// What the image says about itself fills in app, version and platform.
    Upload {
        file: PathBuf,
        #[arg(long)]
        app: Option<String>,
        #[arg(long)]
        version: Option<String>,
        #[arg(long)]
        platform: Option<String>,
        /// Sign the image's SHA-256 with this key file (from `herd firmware keygen`), so
        /// that devices holding the public key accept it (PROTOCOL §10.4).
        #[arg(long, value_name = "KEYFILE")]
        sign: Option<PathBuf>,
        /// Print the PROTOCOL §10.1 firmware object.
        #[arg(long)]
        json: bool,
    },
    /// List stored images: id (first 12 characters), app, version, platform, size,
    /// signed, created.
    List {
        /// One JSON array of PROTOCOL §10.1 firmware objects.
        #[arg(long)]
        json: bool,
    },
    /// Delete an image. Refused (exit 6) while an unfinished rollout uses it.
    Rm {
        /// Firmware id, or a unique prefix of at least 8 characters.
        id: String,
    },
}

/// `keygen` needs no server, so it runs before a profile is resolved.
pub fn keygen(out: &Path, json: bool) -> CommandResult {
    let public_path = public_key_path(out);
    for path in [out, public_path.as_path()] {
        if path.exists() {
            return Err(Failure::usage(format!(
                "{} exists; refusing to overwrite it (choose another --out)",
                path.display()
            )));
        }
    }
    let mut secret = [0u8; 32];
    rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut secret).map_err(|e| {
        Failure::new(
            Exit::Failure,
            format!("cannot get random bytes from the system: {e}"),
        )
    })?;
    let key = SigningKey::from_bytes(&secret);
    let public = BASE64.encode(key.verifying_key().to_bytes());
    let text = format!(
        "{KEY_HEADER}\n# Sign firmware with `herd firmware upload --sign`; keep this file secret.\nprivate: {}\npublic: {public}\n",
        BASE64.encode(secret)
    );
    write_new(out, text.as_bytes(), 0o600)?;
    write_new(&public_path, format!("{public}\n").as_bytes(), 0o644)?;
    if json {
        let private_file = std::path::absolute(out).unwrap_or_else(|_| out.to_path_buf());
        return print(&format!(
            "{}\n",
            json!({"private_key_file": private_file, "public_key": public})
        ));
    }
    print(&format!(
        "{public}\nprivate key in {}, public key in {}\nDevices take the public key as update.pubkey (PROTOCOL §10.4): set it on the device or in its factory layer; devices refuse update.pubkey from the cloud.\n",
        out.display(),
        public_path.display()
    ))
}

/// `FILE.pub` beside `FILE`.
pub fn public_key_path(private: &Path) -> PathBuf {
    let mut name = private.as_os_str().to_os_string();
    name.push(".pub");
    PathBuf::from(name)
}

/// Creates `path`, failing if it exists, with `mode` on Unix from the first byte on (a
/// private key is never readable by others, not even for a moment).
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> CommandResult {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(|e| {
        let exit = if e.kind() == std::io::ErrorKind::AlreadyExists {
            Exit::Usage
        } else {
            Exit::Failure
        };
        Failure::new(exit, format!("cannot create {}: {e}", path.display()))
    })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| {
            Failure::new(
                Exit::Failure,
                format!("cannot write {}: {e}", path.display()),
            )
        })
}

/// Parses a key file's text (the format in the module docs).
pub fn parse_key(text: &str) -> Result<SigningKey, String> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'));
    if lines.next() != Some(KEY_HEADER) {
        return Err(format!(
            "not a herd signing key (the first line must be `{KEY_HEADER}`)"
        ));
    }
    let (mut private, mut public) = (None, None);
    for line in lines {
        let Some((field, value)) = line.split_once(':') else {
            return Err(format!("unexpected line {line:?}"));
        };
        let bytes: [u8; 32] = BASE64
            .decode(value.trim())
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| format!("{} is not base64 of 32 bytes", field.trim()))?;
        match field.trim() {
            "private" => private = Some(bytes),
            "public" => public = Some(bytes),
            other => return Err(format!("unknown field {other:?}")),
        }
    }
    let key = SigningKey::from_bytes(&private.ok_or("the private key is missing")?);
    if public.is_some_and(|public| public != key.verifying_key().to_bytes()) {
        return Err("the public key does not belong to the private key".into());
    }
    Ok(key)
}

/// Reads a key file.
pub fn load_key(path: &Path) -> Result<SigningKey, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::usage(format!("cannot read the key {}: {e}", path.display())))?;
    parse_key(&text).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))
}

/// The SHA-256 of a file, read in pieces so that an image of any size fits.
pub fn sha256_file(path: &Path) -> Result<[u8; 32], Failure> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| Failure::usage(format!("cannot open {}: {e}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buffer).map_err(|e| {
            Failure::new(
                Exit::Failure,
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher.finalize().into())
}

/// The `signature` of PROTOCOL §10.4: Ed25519 over the image's SHA-256 digest, base64.
pub fn signature(key: &SigningKey, digest: &[u8; 32]) -> String {
    BASE64.encode(key.sign(digest).to_bytes())
}

/// A progress bar on stderr when stderr is a terminal; hidden otherwise, so that logs and
/// pipes get no control characters.
pub fn progress_bar(length: u64, prefix: &str, template: &str) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(length), target);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(prefix.to_string());
    bar
}

/// Uploads `file`, signed with `sign` when given, showing a progress bar.
pub async fn upload_file(
    client: &Client,
    file: &Path,
    mut meta: UploadMeta,
    sign: Option<&Path>,
) -> Result<FirmwareObject, Failure> {
    let size = std::fs::metadata(file)
        .map_err(|e| Failure::usage(format!("cannot read {}: {e}", file.display())))?
        .len();
    if let Some(key_file) = sign {
        let key = load_key(key_file)?;
        let path = file.to_path_buf();
        let digest = tokio::task::spawn_blocking(move || sha256_file(&path))
            .await
            .map_err(|e| Failure::new(Exit::Failure, format!("hashing failed: {e}")))??;
        meta.signature = Some(signature(&key, &digest));
    }
    let bar = progress_bar(
        size,
        "upload",
        "{prefix:>8} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
    );
    let shown = bar.clone();
    let progress: herd_client::Progress = Arc::new(move |sent| shown.set_position(sent));
    let result = client.upload_firmware(file, &meta, Some(progress)).await;
    bar.finish_and_clear();
    Ok(result?)
}

/// Whether `text` is a whole firmware id: 64 hex digits.
fn is_full_firmware_id(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The one item whose id starts with `prefix` (of at least [`MIN_PREFIX`] characters).
pub fn unique_prefix<'a, T>(
    items: &'a [T],
    prefix: &str,
    id: impl Fn(&T) -> &str,
    what: &str,
) -> Result<&'a T, Failure> {
    if prefix.chars().count() < MIN_PREFIX {
        return Err(Failure::usage(format!(
            "{what} {prefix:?}: give the whole id or at least {MIN_PREFIX} characters of it"
        )));
    }
    let lower = prefix.to_ascii_lowercase();
    let found: Vec<&T> = items
        .iter()
        .filter(|item| id(item).to_ascii_lowercase().starts_with(&lower))
        .collect();
    match found.as_slice() {
        [one] => Ok(one),
        [] => Err(Failure::new(
            Exit::NotFound,
            format!("no {what} id starts with {prefix}"),
        )),
        many => Err(Failure::usage(format!(
            "{what} id prefix {prefix} is ambiguous: {}",
            many.iter()
                .map(|item| id(item))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// A firmware id or unique prefix, as the stored image.
pub async fn resolve_firmware(client: &Client, text: &str) -> Result<FirmwareObject, Failure> {
    if is_full_firmware_id(text) {
        return Ok(client.firmware(&text.to_ascii_lowercase()).await?);
    }
    let list = client.firmware_list().await?;
    unique_prefix(&list, text, |f| f.id.as_str(), "firmware").cloned()
}

/// `1.5 KiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// An RFC 3339 time as `2024-05-01 12:30` (UTC), or the text as it came.
pub fn short_time(text: &str) -> String {
    let Some(ts) = crate::text::parse_rfc3339(text) else {
        return text.to_string();
    };
    time::OffsetDateTime::from_unix_timestamp(ts as i64)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]"
            ))
            .ok()
        })
        .unwrap_or_else(|| text.to_string())
}

/// The first 12 characters of an id, as tables show it.
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The table of `herd firmware list`.
pub fn firmware_table(list: &[FirmwareObject]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|f| {
            vec![
                short_id(&f.id).to_string(),
                f.app.clone(),
                f.version.clone(),
                f.platform.clone(),
                human_size(f.size),
                if f.signed { "yes" } else { "no" }.into(),
                short_time(&f.created_at),
            ]
        })
        .collect();
    table(
        &[
            "ID", "APP", "VERSION", "PLATFORM", "SIZE", "SIGNED", "CREATED",
        ],
        &rows,
    )
}

pub(crate) fn to_json(value: &impl serde::Serialize) -> Result<String, Failure> {
    serde_json::to_string(value)
        .map(|mut text| {
            text.push('\n');
            text
        })
        .map_err(|e| Failure::new(Exit::Failure, e.to_string()))
}

pub async fn run(client: &Client, read_only: bool, command: FirmwareCommand) -> CommandResult {
    match command {
        FirmwareCommand::Keygen { out, json } => keygen(&out, json),
        FirmwareCommand::Upload {
            file,
            app,
            version,
            platform,
            sign,
            json,
        } => {
            if read_only {
                return Err(Failure::read_only("upload firmware"));
            }
            let meta = UploadMeta {
                app,
                version,
                platform,
                signature: None,
            };
            let firmware = upload_file(client, &file, meta, sign.as_deref()).await?;
            if json {
                print(&to_json(&firmware)?)
            } else {
                print(&format!("{}\n", firmware.id))
            }
        }
        FirmwareCommand::List { json } => {
            let mut list = client.firmware_list().await?;
            if json {
                return print(&to_json(&list)?);
            }
            list.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
            print(&firmware_table(&list))
        }
        FirmwareCommand::Rm { id } => {
            if read_only {
                return Err(Failure::read_only("delete firmware"));
            }
            let firmware = resolve_firmware(client, &id).await?;
            client.delete_firmware(&firmware.id).await?;
            print(&format!("deleted {}\n", firmware.id))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Verifier, VerifyingKey};

    #[test]
    fn key_files_round_trip() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let text = format!(
            "{KEY_HEADER}\n# comment\n\nprivate: {}\npublic: {}\n",
            BASE64.encode([7u8; 32]),
            BASE64.encode(key.verifying_key().to_bytes())
        );
        assert_eq!(parse_key(&text).expect("valid").to_bytes(), [7; 32]);
        let wrong_public = format!(
            "{KEY_HEADER}\nprivate: {}\npublic: {}\n",
            BASE64.encode([7u8; 32]),
            BASE64.encode([1u8; 32])
        );
        assert!(parse_key(&wrong_public).is_err());
        assert!(parse_key("-----BEGIN PRIVATE KEY-----\n").is_err());
        assert!(parse_key(&format!("{KEY_HEADER}\nprivate: AAAA\n")).is_err());
        assert!(parse_key(&format!("{KEY_HEADER}\n")).is_err());
    }

    #[test]
    fn signatures_cover_the_digest() {
        // PROTOCOL §10.4: Ed25519 over the image's SHA-256 digest.
        let key = SigningKey::from_bytes(&[9; 32]);
        let digest: [u8; 32] = Sha256::digest(b"image").into();
        let signature = BASE64.decode(signature(&key, &digest)).expect("base64");
        let signature = ed25519_dalek::Signature::from_slice(&signature).expect("64 bytes");
        let public = VerifyingKey::from_bytes(&key.verifying_key().to_bytes()).expect("key");
        assert!(public.verify(&digest, &signature).is_ok());
        assert!(public.verify(b"image", &signature).is_err());
    }

    #[test]
    fn prefixes_must_be_long_and_unique() {
        let ids = ["abcdef0123", "abcdef0199", "12345678aa"];
        fn id<'a>(s: &'a &str) -> &'a str {
            s
        }
        assert_eq!(
            unique_prefix(&ids, "12345678", id, "firmware").ok(),
            Some(&"12345678aa")
        );
        assert_eq!(
            unique_prefix(&ids, "ABCDEF0123", id, "firmware").ok(),
            Some(&"abcdef0123")
        );
        let short = unique_prefix(&ids, "1234", id, "firmware").expect_err("too short");
        assert_eq!(short.exit, Exit::Usage);
        let ambiguous = unique_prefix(&ids, "abcdef01", id, "firmware").expect_err("two");
        assert_eq!(ambiguous.exit, Exit::Usage);
        assert!(ambiguous.message.contains("abcdef0199"));
        let none = unique_prefix(&ids, "99999999", id, "firmware").expect_err("none");
        assert_eq!(none.exit, Exit::NotFound);
    }

    #[test]
    fn sizes_and_times() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(4096), "4.0 KiB");
        assert_eq!(human_size(3 * 1024 * 1024 / 2), "1.5 MiB");
        assert_eq!(short_time("2024-05-01T12:30:59Z"), "2024-05-01 12:30");
        assert_eq!(short_time("soon"), "soon");
        assert_eq!(
            public_key_path(Path::new("a/k.key")),
            Path::new("a/k.key.pub")
        );
    }
}
