//! Device pull (PROTOCOL §10.3): the request to fetch an image (`OTA.Update` or
//! `desired.ota`), the URL it names resolved against the server the device is connected
//! to, and the [`DownloadRequest`] the platform performs.
//!
//! The platform only moves bytes: it fetches [`DownloadRequest::url`] (sending
//! [`DownloadRequest::token`] as `Authorization: Bearer` when there is one, resuming with
//! `Range` after a broken connection) and feeds what arrives to
//! [`crate::device::Device::download_chunk`]. Whether the image may boot is decided by the
//! engine ([`crate::verify`]).
//!
//! ```
//! use firmware_core::pull::resolve_url;
//!
//! let (url, same_server) =
//!     resolve_url("/api/v2/firmware/ab12/image", "wss://herd.example:8443/api/v2/rpc").unwrap();
//! assert_eq!(url, "https://herd.example:8443/api/v2/firmware/ab12/image");
//! assert!(same_server);
//! ```

use alloc::format;
use alloc::string::{String, ToString};
use core::fmt;

use serde_json::Value;

use crate::config::Object;
use crate::ota::param_commit_timeout;
use crate::verify::Expected;

/// The fields of `desired.ota` / `OTA.Update` the device understands (PROTOCOL §4.4,
/// §10.3); these are the ones it reports back when it takes a `desired.ota`.
pub const FIELDS: &[&str] = &[
    "firmware",
    "url",
    "sha256",
    "size",
    "signature",
    "commit_timeout",
];

/// What the platform fetches, carried by [`crate::device::Action::Download`].
#[derive(Clone, PartialEq, Eq)]
pub struct DownloadRequest {
    /// Absolute `http://` or `https://` URL; a path in the request was resolved against
    /// `dash.server`.
    pub url: String,
    /// The device token to send as `Authorization: Bearer <token>`. Only set when the URL
    /// is on the server the device is connected to: the token must not leak to other hosts.
    pub token: Option<String>,
    /// Size in bytes, when the request named one.
    pub size: Option<u64>,
    /// SHA-256 of the image as lowercase hex, when the request named one.
    pub sha256: Option<String>,
    /// Ed25519 signature, standard base64, when the request carried one.
    pub signature: Option<String>,
    /// Seconds the new image has to be committed (0: it commits itself when it boots).
    pub commit_timeout_s: u32,
}

impl fmt::Debug for DownloadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DownloadRequest")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("size", &self.size)
            .field("sha256", &self.sha256)
            .field("signature", &self.signature)
            .field("commit_timeout_s", &self.commit_timeout_s)
            .finish()
    }
}

/// An update request as the device read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pull {
    /// Where the image is, as given (absolute, or a path on the server).
    pub url: String,
    /// What the image must be.
    pub expected: Expected,
    /// Commit timeout, when the request names one.
    pub commit_timeout_s: Option<u32>,
}

impl Pull {
    /// Reads `{"url", "sha256"?, "signature"?, "size"?, "commit_timeout"?, "firmware"?}`.
    pub fn from_params(params: &Value) -> Result<Pull, String> {
        let url = match params.get("url") {
            Some(Value::String(url)) if !url.trim().is_empty() => url.trim().to_string(),
            None | Some(Value::Null) => return Err("url is required".into()),
            Some(_) => return Err("url must be a non-empty string".into()),
        };
        if let Some(firmware) = params.get("firmware") {
            if !(firmware.is_string() || firmware.is_null()) {
                return Err("firmware must be a string".into());
            }
        }
        let expected = Expected::from_params(params)?;
        let commit_timeout_s = param_commit_timeout(params).map_err(|(_, message)| message)?;
        Ok(Pull {
            url,
            expected,
            commit_timeout_s,
        })
    }
}

/// The known fields of a `desired.ota` object, for the device to report back.
pub fn known_fields(ota: &Object) -> Object {
    ota.iter()
        .filter(|(key, _)| FIELDS.contains(&key.as_str()))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

/// Splits `scheme://authority/...` into the scheme and the authority.
fn origin(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    (!scheme.is_empty() && !authority.is_empty()).then_some((scheme, authority))
}

/// The HTTP origin of the device socket URL (`ws` becomes `http`, `wss` becomes `https`).
fn server_origin(server: &str) -> Option<(&'static str, &str)> {
    let (scheme, authority) = origin(server.trim())?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "ws" | "http" => "http",
        "wss" | "https" => "https",
        _ => return None,
    };
    Some((scheme, authority))
}

/// Resolves the `url` of an update request against `server` (the `dash.server` socket
/// URL): a path keeps the server's host and port, with `ws` turned into `http` and `wss`
/// into `https`; an absolute `http(s)` URL stays as it is. Also says whether the result is
/// on that server, which is where the device token may go.
pub fn resolve_url(url: &str, server: &str) -> Result<(String, bool), String> {
    let url = url.trim();
    if url.starts_with('/') && !url.starts_with("//") {
        let (scheme, authority) = server_origin(server)
            .ok_or("a url without a host needs dash.server to be a ws:// or wss:// URL")?;
        return Ok((format!("{scheme}://{authority}{url}"), true));
    }
    let Some((scheme, authority)) = origin(url) else {
        return Err(format!(
            "url {url:?} is neither an http(s) URL nor a path on the server"
        ));
    };
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(format!(
            "url {url:?} is neither an http(s) URL nor a path on the server"
        ));
    }
    let same = server_origin(server).is_some_and(|(server_scheme, server_authority)| {
        server_scheme == scheme && server_authority.eq_ignore_ascii_case(authority)
    });
    Ok((url.to_string(), same))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_resolve_against_the_socket_url() {
        assert_eq!(
            resolve_url("/api/v2/firmware/x/image", "ws://10.0.0.2:8009/api/v2/rpc"),
            Ok(("http://10.0.0.2:8009/api/v2/firmware/x/image".into(), true))
        );
        assert_eq!(
            resolve_url("/f?a=1", "WSS://h/api/v2/rpc?access_token=t"),
            Ok(("https://h/f?a=1".into(), true))
        );
        assert!(resolve_url("/f", "").is_err());
        assert!(resolve_url("/f", "mqtt://h").is_err());
    }

    #[test]
    fn absolute_urls_stay_and_get_the_token_only_on_the_same_server() {
        let server = "ws://Herd.example:8009/api/v2/rpc";
        assert_eq!(
            resolve_url("http://herd.example:8009/fw", server),
            Ok(("http://herd.example:8009/fw".into(), true))
        );
        assert_eq!(
            resolve_url("https://herd.example:8009/fw", server),
            Ok(("https://herd.example:8009/fw".into(), false)),
            "another scheme is another origin"
        );
        assert_eq!(
            resolve_url("http://cdn.example/fw", server),
            Ok(("http://cdn.example/fw".into(), false))
        );
        for bad in ["fw.bin", "//cdn.example/fw", "ftp://h/fw", "http://"] {
            assert!(resolve_url(bad, server).is_err(), "{bad}");
        }
    }

    #[test]
    fn requests_are_read() {
        let pull = Pull::from_params(&json!({"url": " /fw ", "commit_timeout": 30, "size": 9}))
            .expect("valid");
        assert_eq!(pull.url, "/fw");
        assert_eq!(pull.commit_timeout_s, Some(30));
        assert_eq!(pull.expected.size, Some(9));
        for bad in [
            json!({}),
            json!({"url": ""}),
            json!({"url": 3}),
            json!({"url": "/fw", "commit_timeout": "soon"}),
            json!({"url": "/fw", "firmware": 1}),
        ] {
            assert!(Pull::from_params(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tokens_stay_out_of_debug_output() {
        let request = DownloadRequest {
            url: "http://h/fw".into(),
            token: Some("secret-token".into()),
            size: None,
            sha256: None,
            signature: None,
            commit_timeout_s: 0,
        };
        let text = alloc::format!("{request:?}");
        assert!(!text.contains("secret-token"), "{text}");
    }
}
