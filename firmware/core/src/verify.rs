//! The checks an image passes before it may boot (PROTOCOL §10.3, §10.4): its size, its
//! SHA-256 and, on a device whose configuration holds `update.pubkey`, an Ed25519
//! signature over that SHA-256 digest.
//!
//! A request names what the image must be ([`Expected`]); the engine checks twice: before
//! anything is fetched or written ([`admit`], so a device holding a key refuses an
//! unsigned image without downloading it) and once every byte is in ([`check`], before the
//! platform may stage the image). Messages start with a stable phrase (`signature
//! missing`, `signature does not verify`, `sha256 mismatch`, `size mismatch`) that the
//! cloud may match on; the rest is for people.
//!
//! ```
//! use firmware_core::ota::ContentHash;
//! use firmware_core::verify::{check, Expected, UpdateKey};
//!
//! let image = b"firmware bytes";
//! let expected = Expected { size: Some(14), sha256: Some(ContentHash::of(image)), signature: None };
//! assert!(check(&expected, image.len(), &ContentHash::of(image), &UpdateKey::Absent).is_ok());
//! let wrong = check(&expected, image.len(), &ContentHash::of(b"other bytes!!!"), &UpdateKey::Absent);
//! assert!(wrong.unwrap_err().starts_with("sha256 mismatch"));
//! ```

use alloc::format;
use alloc::string::String;
use core::fmt;

use base64::Engine as _;
use ed25519_dalek::{Signature, VerifyingKey};
use serde_json::Value;

use crate::ota::ImageDigest;

/// The configuration key holding the base64 Ed25519 public key images must be signed for.
pub const PUBKEY_KEY: &str = "update.pubkey";

/// What an image must turn out to be; unknown fields are not checked.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Expected {
    /// Size in bytes.
    pub size: Option<u64>,
    /// SHA-256 of the image.
    pub sha256: Option<ImageDigest>,
    /// Ed25519 signature over the SHA-256 digest (PROTOCOL §10.4).
    pub signature: Option<[u8; 64]>,
}

impl fmt::Debug for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Expected")
            .field("size", &self.size)
            .field("sha256", &self.sha256)
            .field("signed", &self.signature.is_some())
            .finish()
    }
}

impl Expected {
    /// Reads `size`, `sha256` (64 hex digits) and `signature` (standard base64 of 64
    /// bytes) from an update request; absent, null or empty fields stay unknown.
    pub fn from_params(params: &Value) -> Result<Expected, String> {
        let size = match params.get("size") {
            None | Some(Value::Null) => None,
            Some(value) => Some(
                value
                    .as_u64()
                    .ok_or("size must be a non-negative integer")?,
            ),
        };
        let sha256 = match text_param(params, "sha256")? {
            None => None,
            Some(text) => {
                Some(ImageDigest::from_hex(text).ok_or("sha256 must be 64 hexadecimal digits")?)
            }
        };
        let signature = match text_param(params, "signature")? {
            None => None,
            Some(text) => Some(parse_signature(text)?),
        };
        Ok(Expected {
            size,
            sha256,
            signature,
        })
    }
}

fn text_param<'a>(params: &'a Value, key: &str) -> Result<Option<&'a str>, String> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.trim().is_empty() => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.trim())),
        Some(_) => Err(format!("{key} must be a string")),
    }
}

fn parse_signature(text: &str) -> Result<[u8; 64], String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| String::from("signature is not valid base64"))?;
    <[u8; 64]>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "signature must be 64 bytes of Ed25519 signature, not {}",
            bytes.len()
        )
    })
}

/// The key a device checks signatures with (`update.pubkey`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateKey {
    /// No key configured: images need no signature.
    Absent,
    /// Images must carry a valid signature for this key.
    Key(VerifyingKey),
    /// A key is configured but unusable: every image is refused, since the owner asked
    /// for signed images and none can be checked.
    Unusable(String),
}

impl UpdateKey {
    /// Reads the configured value: empty means no key, otherwise standard base64 of the
    /// 32-byte Ed25519 public key.
    pub fn from_config(text: &str) -> UpdateKey {
        let text = text.trim();
        if text.is_empty() {
            return UpdateKey::Absent;
        }
        let unusable =
            || UpdateKey::Unusable(format!("{PUBKEY_KEY} is not a base64 Ed25519 public key"));
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(text) else {
            return unusable();
        };
        let Ok(bytes) = <[u8; 32]>::try_from(bytes.as_slice()) else {
            return unusable();
        };
        match VerifyingKey::from_bytes(&bytes) {
            Ok(key) => UpdateKey::Key(key),
            Err(_) => unusable(),
        }
    }

    /// Whether images must be signed.
    pub fn required(&self) -> bool {
        !matches!(self, UpdateKey::Absent)
    }
}

/// Whether an update may start at all: a device holding a key needs the image's SHA-256
/// and a signature before it fetches or writes anything (PROTOCOL §10.4).
pub fn admit(expected: &Expected, key: &UpdateKey) -> Result<(), String> {
    match key {
        UpdateKey::Absent => Ok(()),
        UpdateKey::Unusable(message) => Err(message.clone()),
        UpdateKey::Key(_) => {
            if expected.signature.is_none() {
                Err(format!(
                    "signature missing: this device takes only images signed for its {PUBKEY_KEY}"
                ))
            } else if expected.sha256.is_none() {
                Err(format!(
                    "sha256 missing: this device holds {PUBKEY_KEY} and needs the image's sha256"
                ))
            } else {
                Ok(())
            }
        }
    }
}

/// Checks a complete image of `size` bytes whose SHA-256 is `digest`: the size and the
/// SHA-256 when they were given, then the signature when the device holds a key.
pub fn check(
    expected: &Expected,
    size: usize,
    digest: &ImageDigest,
    key: &UpdateKey,
) -> Result<(), String> {
    if let Some(wanted) = expected.size {
        if wanted != size as u64 {
            return Err(size_message(wanted, size as u64));
        }
    }
    if let Some(wanted) = &expected.sha256 {
        if wanted != digest {
            return Err(format!("sha256 mismatch: expected {wanted}, got {digest}"));
        }
    }
    admit(expected, key)?;
    if let (UpdateKey::Key(key), Some(signature)) = (key, &expected.signature) {
        // The strict check also refuses malleable signatures and weak keys; a signer
        // following RFC 8032 never produces those.
        key.verify_strict(&digest.0, &Signature::from_bytes(signature))
            .map_err(|_| {
                format!("signature does not verify: the image is not signed for this device's {PUBKEY_KEY}")
            })?;
    }
    Ok(())
}

/// The refusal of an image whose size is not the expected one.
pub fn size_message(expected: u64, actual: u64) -> String {
    format!("size mismatch: expected {expected} bytes, got {actual}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ota::ContentHash;
    use serde_json::json;

    // A fixed public key (of the RFC 8032 test vector 1 secret key) keeps this module's
    // tests free of a signing dependency; signing is tested in tests/pull.rs.
    const RFC8032_PUBLIC: &str = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

    #[test]
    fn expectations_are_read_from_requests() {
        let digest = ContentHash::of(b"x");
        let params = json!({"size": 1, "sha256": digest.hex().to_uppercase(), "signature": ""});
        let expected = Expected::from_params(&params).expect("valid");
        assert_eq!(expected.size, Some(1));
        assert_eq!(expected.sha256, Some(digest));
        assert_eq!(expected.signature, None, "an empty signature is none");
        for bad in [
            json!({"size": -1}),
            json!({"sha256": "abc"}),
            json!({"sha256": "zz".repeat(32)}),
            json!({"signature": "***"}),
            json!({"signature": "AAAA"}),
            json!({"signature": 5}),
        ] {
            assert!(Expected::from_params(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_are_read_from_the_config() {
        assert_eq!(UpdateKey::from_config(""), UpdateKey::Absent);
        assert!(matches!(
            UpdateKey::from_config(RFC8032_PUBLIC),
            UpdateKey::Key(_)
        ));
        for bad in ["not base64!", "AAAA", &"A".repeat(44)] {
            match UpdateKey::from_config(bad) {
                UpdateKey::Unusable(message) => assert!(message.contains(PUBKEY_KEY)),
                other => panic!("{bad} -> {other:?}"),
            }
        }
    }

    #[test]
    fn a_key_needs_a_signature_and_a_sha256() {
        let key = UpdateKey::from_config(RFC8032_PUBLIC);
        let digest = ContentHash::of(b"image");
        let unsigned = Expected {
            sha256: Some(digest),
            ..Expected::default()
        };
        assert!(admit(&unsigned, &key)
            .unwrap_err()
            .starts_with("signature missing"));
        let no_sha = Expected {
            signature: Some([0; 64]),
            ..Expected::default()
        };
        assert!(admit(&no_sha, &key)
            .unwrap_err()
            .starts_with("sha256 missing"));
        let forged = Expected {
            sha256: Some(digest),
            signature: Some([7; 64]),
            ..Expected::default()
        };
        assert!(admit(&forged, &key).is_ok());
        assert!(check(&forged, 5, &digest, &key)
            .unwrap_err()
            .starts_with("signature does not verify"));
        assert!(admit(&unsigned, &UpdateKey::Absent).is_ok());
    }

    #[test]
    fn size_is_checked_before_the_hash() {
        let digest = ContentHash::of(b"image");
        let expected = Expected {
            size: Some(6),
            sha256: Some(ContentHash::of(b"other")),
            signature: None,
        };
        assert_eq!(
            check(&expected, 5, &digest, &UpdateKey::Absent),
            Err("size mismatch: expected 6 bytes, got 5".into())
        );
    }
}
