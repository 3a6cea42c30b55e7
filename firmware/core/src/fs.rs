//! `FS.*` RPC services (PROTOCOL §9) over a [`FileStore`].

use alloc::format;
use alloc::string::String;

use base64::Engine as _;
use serde_json::{json, Value};

use crate::ota::Outcome;
use crate::platform::FileStore;
use protocol::codes;

/// Largest chunk `FS.Get` returns in one reply when the caller names no `len`.
pub const MAX_GET_CHUNK: usize = 4096;

/// Whether `name` is a plain file name: 1 to 64 of `[A-Za-z0-9._-]`, not starting with a
/// dot. Platforms that map names to host paths rely on this to stay inside their directory.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn name_param<'a>(params: &'a Value, key: &str) -> Result<&'a str, (i64, String)> {
    let name = params
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| (codes::BAD_REQUEST, format!("{key} is required")))?;
    if !valid_name(name) {
        return Err((codes::BAD_REQUEST, format!("invalid file name {name:?}")));
    }
    Ok(name)
}

fn usize_param(params: &Value, key: &str) -> Result<Option<usize>, (i64, String)> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                (
                    codes::BAD_REQUEST,
                    format!("{key} must be a non-negative integer"),
                )
            }),
    }
}

fn internal(e: impl core::fmt::Display) -> (i64, String) {
    (codes::INTERNAL, format!("{e}"))
}

/// Dispatches one `FS.*` method; `None` when the method is not a file service.
pub fn handle(store: &mut impl FileStore, method: &str, params: &Value) -> Option<Outcome> {
    let outcome = match method {
        "FS.List" => store.list().map(|names| json!(names)).map_err(internal),
        "FS.Get" => get(store, params),
        "FS.Put" => put(store, params),
        "FS.Remove" => name_param(params, "filename").and_then(|name| {
            match store.size(name).map_err(internal)? {
                None => Err((codes::NOT_FOUND, format!("{name} not found"))),
                Some(_) => store.remove(name).map(|()| Value::Null).map_err(internal),
            }
        }),
        "FS.Rename" => rename(store, params),
        _ => return None,
    };
    Some(outcome)
}

fn get(store: &mut impl FileStore, params: &Value) -> Outcome {
    let name = name_param(params, "filename")?;
    let offset = usize_param(params, "offset")?.unwrap_or(0);
    let Some(size) = store.size(name).map_err(internal)? else {
        return Err((codes::NOT_FOUND, format!("{name} not found")));
    };
    let remaining = size.saturating_sub(offset);
    let len = usize_param(params, "len")?
        .unwrap_or(MAX_GET_CHUNK)
        .min(remaining)
        .min(MAX_GET_CHUNK);
    let data = store.read(name, offset, len).map_err(internal)?;
    let left = remaining.saturating_sub(data.len());
    Ok(json!({
        "data": base64::engine::general_purpose::STANDARD.encode(&data),
        "left": left,
    }))
}

fn put(store: &mut impl FileStore, params: &Value) -> Outcome {
    let name = name_param(params, "filename")?;
    let data = params
        .get("data")
        .and_then(Value::as_str)
        .ok_or_else(|| (codes::BAD_REQUEST, "data must be a base64 string".into()))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| (codes::BAD_REQUEST, format!("data is not valid base64: {e}")))?;
    let append = match params.get("append") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err((codes::BAD_REQUEST, "append must be a boolean".into())),
    };
    let (_, free) = store.capacity();
    if bytes.len() as u64 > free {
        return Err((codes::INTERNAL, "not enough space".into()));
    }
    store.write(name, &bytes, append).map_err(internal)?;
    Ok(Value::Null)
}

fn rename(store: &mut impl FileStore, params: &Value) -> Outcome {
    let from = name_param(params, "src")?;
    let to = name_param(params, "dst")?;
    if store.size(from).map_err(internal)?.is_none() {
        return Err((codes::NOT_FOUND, format!("{from} not found")));
    }
    store.rename(from, to).map_err(internal)?;
    Ok(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_flat() {
        assert!(valid_name("index.html"));
        assert!(valid_name("conf9.json"));
        assert!(!valid_name(""));
        assert!(!valid_name("../etc/passwd"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(".hidden"));
        assert!(!valid_name(&"x".repeat(65)));
    }
}
