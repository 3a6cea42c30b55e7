//! Device shadow: stored document, updates, metadata, limits and delta (PROTOCOL §4).
//!
//! A [`Shadow`] holds the `desired` and `reported` sections, the metadata that
//! mirrors them, free-form `tags`, a version and a timestamp. [`Shadow::apply`]
//! takes an [`Update`] (PROTOCOL §4.1) all-or-nothing; [`delta`] computes what the
//! device still has to do (PROTOCOL §4.2). The caller passes the time in, so the
//! server can use a test clock.
//!
//! ```
//! use protocol::json;
//! use protocol::shadow::{Limits, Shadow, Update};
//!
//! let mut shadow = Shadow::default();
//! let update = Update::from_value(&json!({"state": {"desired": {"on": true}}})).unwrap();
//! shadow.apply(&update, 1_700_000_000.0, &Limits::default()).unwrap();
//! assert_eq!(shadow.version, 1);
//! assert_eq!(shadow.delta(), json!({"on": true}).as_object().unwrap().clone());
//! ```

use alloc::format;
use alloc::string::{String, ToString};
use core::fmt;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::codes;

type Object = Map<String, Value>;

/// Size and nesting bounds of a shadow (PROTOCOL §4.1, configurable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest compact serialised stored document, in bytes.
    pub max_bytes: usize,
    /// Deepest nesting inside a section; a section's top-level keys are depth 1.
    pub max_depth: usize,
}

impl Default for Limits {
    /// PROTOCOL §4.1: document 32 KiB, depth 8.
    fn default() -> Self {
        Limits {
            max_bytes: 32 * 1024,
            max_depth: 8,
        }
    }
}

/// A device shadow in its stored form (PROTOCOL §4).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Shadow {
    /// What the cloud wants the device to be.
    pub desired: Object,
    /// What the device says it is.
    pub reported: Object,
    /// Mirrors `desired`, with `{"timestamp": T}` at each leaf written.
    pub metadata_desired: Object,
    /// Mirrors `reported`, with `{"timestamp": T}` at each leaf written.
    pub metadata_reported: Object,
    /// Free-form labels.
    pub tags: Object,
    /// Incremented by one on every accepted update.
    pub version: u64,
    /// Unix seconds of the last accepted update.
    pub timestamp: f64,
}

/// A parsed update request (PROTOCOL §4.1). `None` means the section is untouched.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Update {
    /// Patch for `state.desired`.
    pub desired: Option<Object>,
    /// Patch for `state.reported`.
    pub reported: Option<Object>,
    /// Patch for `tags`.
    pub tags: Option<Object>,
    /// Version the writer based the update on; `None` or `Some(0)` skips the check.
    pub version: Option<u64>,
}

/// What an accepted update changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Applied {
    /// `desired` holds a different value than before.
    pub desired_changed: bool,
    /// `reported` holds a different value than before.
    pub reported_changed: bool,
}

/// Why a document or update was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum ShadowError {
    /// Not the expected shape (400).
    Invalid(String),
    /// The update named a version other than the stored one (409, PROTOCOL §4.1).
    Conflict {
        /// Version the update carried.
        expected: u64,
        /// Version the shadow is at.
        actual: u64,
    },
    /// The resulting document would be too big (413, PROTOCOL §4.1).
    TooLarge {
        /// Compact serialised size of the resulting document.
        size: usize,
        /// The configured bound.
        limit: usize,
    },
    /// A section would nest too deeply (413, PROTOCOL §4.1).
    TooDeep {
        /// Deepest nesting of the resulting sections.
        depth: usize,
        /// The configured bound.
        limit: usize,
    },
}

impl ShadowError {
    /// HTTP status and RPC error code for this error (PROTOCOL §4.1, §6).
    pub fn code(&self) -> i64 {
        match self {
            ShadowError::Invalid(_) => codes::BAD_REQUEST,
            ShadowError::Conflict { .. } => codes::CONFLICT,
            ShadowError::TooLarge { .. } | ShadowError::TooDeep { .. } => codes::TOO_LARGE,
        }
    }
}

impl fmt::Display for ShadowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShadowError::Invalid(message) => write!(f, "invalid shadow: {message}"),
            ShadowError::Conflict { expected, actual } => write!(
                f,
                "version conflict: update is for version {expected}, shadow is at version {actual}"
            ),
            ShadowError::TooLarge { size, limit } => write!(
                f,
                "shadow document would be {size} bytes, over the {limit}-byte limit"
            ),
            ShadowError::TooDeep { depth, limit } => write!(
                f,
                "shadow would nest {depth} levels deep, over the limit of {limit}"
            ),
        }
    }
}

impl core::error::Error for ShadowError {}

impl Update {
    /// Reads `{"state": {"desired"?, "reported"?}, "tags"?, "version"?}`
    /// (PROTOCOL §4.1).
    ///
    /// Sections must be objects; a `null` or missing section is left alone. Other
    /// keys (such as `state.delta`, `metadata` or `timestamp` in a document posted
    /// back) are ignored.
    pub fn from_value(value: &Value) -> Result<Update, ShadowError> {
        let root = value
            .as_object()
            .ok_or_else(|| invalid("update must be a JSON object"))?;
        let state = optional_object(root, "state", "state")?;
        let section = |name: &str, path: &str| match state {
            Some(state) => optional_object(state, name, path).map(|found| found.cloned()),
            None => Ok(None),
        };
        Ok(Update {
            desired: section("desired", "state.desired")?,
            reported: section("reported", "state.reported")?,
            tags: optional_object(root, "tags", "tags")?.cloned(),
            version: match root.get("version") {
                None | Some(Value::Null) => None,
                Some(version) => Some(
                    version
                        .as_u64()
                        .ok_or_else(|| invalid("`version` must be a non-negative integer"))?,
                ),
            },
        })
    }

    /// An update of `reported` only, as a device sends it (PROTOCOL §3, §4.3).
    pub fn reported(map: Object) -> Update {
        Update {
            reported: Some(map),
            ..Update::default()
        }
    }

    /// An update of `desired` only.
    pub fn desired(map: Object) -> Update {
        Update {
            desired: Some(map),
            ..Update::default()
        }
    }

    /// The wire form accepted by [`Update::from_value`].
    pub fn to_value(&self) -> Value {
        let mut state = Object::new();
        if let Some(desired) = &self.desired {
            state.insert("desired".into(), Value::Object(desired.clone()));
        }
        if let Some(reported) = &self.reported {
            state.insert("reported".into(), Value::Object(reported.clone()));
        }
        let mut root = Object::new();
        root.insert("state".into(), Value::Object(state));
        if let Some(tags) = &self.tags {
            root.insert("tags".into(), Value::Object(tags.clone()));
        }
        if let Some(version) = self.version {
            root.insert("version".into(), Value::from(version));
        }
        Value::Object(root)
    }
}

impl Shadow {
    /// Reads the stored document form; `state.delta` is ignored because it is always
    /// recomputed (PROTOCOL §4). Missing parts default to empty, version 0.
    pub fn from_document(value: &Value) -> Result<Shadow, ShadowError> {
        let root = value
            .as_object()
            .ok_or_else(|| invalid("shadow document must be a JSON object"))?;
        let state = optional_object(root, "state", "state")?;
        let metadata = optional_object(root, "metadata", "metadata")?;
        let section = |parent: Option<&Object>, name: &str, path: &str| match parent {
            Some(parent) => optional_object(parent, name, path).map(|found| found.cloned()),
            None => Ok(None),
        };
        Ok(Shadow {
            desired: section(state, "desired", "state.desired")?.unwrap_or_default(),
            reported: section(state, "reported", "state.reported")?.unwrap_or_default(),
            metadata_desired: section(metadata, "desired", "metadata.desired")?.unwrap_or_default(),
            metadata_reported: section(metadata, "reported", "metadata.reported")?
                .unwrap_or_default(),
            tags: optional_object(root, "tags", "tags")?
                .cloned()
                .unwrap_or_default(),
            version: match root.get("version") {
                None | Some(Value::Null) => 0,
                Some(version) => version
                    .as_u64()
                    .ok_or_else(|| invalid("`version` must be a non-negative integer"))?,
            },
            timestamp: match root.get("timestamp") {
                None | Some(Value::Null) => 0.0,
                Some(timestamp) => timestamp
                    .as_f64()
                    .ok_or_else(|| invalid("`timestamp` must be a number"))?,
            },
        })
    }

    /// The stored document: `{"state": {"desired", "reported"}, "metadata":
    /// {"desired", "reported"}, "tags", "version", "timestamp"}`, without delta.
    pub fn to_document(&self) -> Value {
        let mut root = Object::new();
        root.insert(
            "state".into(),
            sections(self.desired.clone(), self.reported.clone()),
        );
        root.insert(
            "metadata".into(),
            sections(
                self.metadata_desired.clone(),
                self.metadata_reported.clone(),
            ),
        );
        root.insert("tags".into(), Value::Object(self.tags.clone()));
        root.insert("version".into(), Value::from(self.version));
        root.insert("timestamp".into(), Value::from(self.timestamp));
        Value::Object(root)
    }

    /// The API form: the stored document plus the computed `state.delta`
    /// (PROTOCOL §4, §6).
    pub fn to_document_with_delta(&self) -> Value {
        let mut document = self.to_document();
        if let Some(Value::Object(state)) = document.get_mut("state") {
            state.insert("delta".into(), Value::Object(self.delta()));
        }
        document
    }

    /// Borrowed twin of [`Shadow::to_document`]: serializes to the same JSON without
    /// copying the sections.
    pub fn document(&self) -> DocumentView<'_> {
        self.view(None)
    }

    /// Borrowed twin of [`Shadow::to_document_with_delta`]; only the delta is computed.
    pub fn document_with_delta(&self) -> DocumentView<'_> {
        self.view(Some(self.delta()))
    }

    fn view(&self, delta: Option<Object>) -> DocumentView<'_> {
        DocumentView {
            metadata: SectionsView {
                desired: &self.metadata_desired,
                reported: &self.metadata_reported,
            },
            state: StateView {
                delta,
                desired: &self.desired,
                reported: &self.reported,
            },
            tags: &self.tags,
            timestamp: self.timestamp,
            version: self.version,
        }
    }

    /// Length of `to_document()` serialised compactly, computed without copying
    /// the sections. This is the size the limit applies to (PROTOCOL §4.1).
    pub fn document_size(&self) -> usize {
        // Serialising string-keyed maps cannot fail; an impossible error counts as
        // too large rather than slipping past the limit.
        serde_json::to_vec(&self.document()).map_or(usize::MAX, |bytes| bytes.len())
    }

    /// Applies an update all-or-nothing (PROTOCOL §4.1): on any error the shadow is
    /// left exactly as it was.
    pub fn apply(
        &mut self,
        update: &Update,
        now: f64,
        limits: &Limits,
    ) -> Result<Applied, ShadowError> {
        if let Some(expected) = update.version {
            if expected != 0 && expected != self.version {
                return Err(ShadowError::Conflict {
                    expected,
                    actual: self.version,
                });
            }
        }
        // Work on a copy so a limit violation found after merging leaves `self`
        // untouched; documents are bounded by the size limit, so the copy is cheap.
        let mut next = self.clone();
        if let Some(patch) = &update.desired {
            merge_section(
                &mut next.desired,
                patch,
                Some(&mut next.metadata_desired),
                now,
            );
        }
        if let Some(patch) = &update.reported {
            merge_section(
                &mut next.reported,
                patch,
                Some(&mut next.metadata_reported),
                now,
            );
        }
        if let Some(patch) = &update.tags {
            merge(&mut next.tags, patch);
        }
        next.version = self.version.saturating_add(1);
        next.timestamp = now;

        let depth = depth(&next.desired)
            .max(depth(&next.reported))
            .max(depth(&next.tags));
        if depth > limits.max_depth {
            return Err(ShadowError::TooDeep {
                depth,
                limit: limits.max_depth,
            });
        }
        let size = next.document_size();
        if size > limits.max_bytes {
            return Err(ShadowError::TooLarge {
                size,
                limit: limits.max_bytes,
            });
        }

        let applied = Applied {
            desired_changed: next.desired != self.desired,
            reported_changed: next.reported != self.reported,
        };
        *self = next;
        Ok(applied)
    }

    /// `delta(desired, reported)` (PROTOCOL §4.2).
    pub fn delta(&self) -> Object {
        delta(&self.desired, &self.reported)
    }

    /// Params of the `Shadow.Delta` request pushed to the device:
    /// `{"state": <delta>, "version": N, "timestamp": T}` (PROTOCOL §4.3).
    pub fn delta_request_params(&self) -> Value {
        let mut params = Object::new();
        params.insert("state".into(), Value::Object(self.delta()));
        params.insert("version".into(), Value::from(self.version));
        params.insert("timestamp".into(), Value::from(self.timestamp));
        Value::Object(params)
    }
}

/// Deep-merges `patch` into `target` (PROTOCOL §4.1): objects merge key by key,
/// scalars and arrays replace, `null` deletes at any depth, and objects left empty
/// by deletion are removed.
pub fn merge(target: &mut Object, patch: &Object) {
    merge_section(target, patch, None, 0.0);
}

/// What `desired` asks for that `reported` does not show (PROTOCOL §4.2).
///
/// Keys only in `reported` never appear; nested objects recurse so only differing
/// leaves are included. Numbers compare by value, so `1` and `1.0` are the same.
pub fn delta(desired: &Object, reported: &Object) -> Object {
    let mut out = Object::new();
    for (key, wanted) in desired {
        match (wanted, reported.get(key)) {
            (Value::Object(wanted), Some(Value::Object(actual))) => {
                let nested = delta(wanted, actual);
                if !nested.is_empty() {
                    out.insert(key.clone(), Value::Object(nested));
                }
            }
            (wanted, Some(actual)) if same_value(wanted, actual) => {}
            (wanted, _) => {
                out.insert(key.clone(), wanted.clone());
            }
        }
    }
    out
}

/// Nesting depth of a section: its top-level keys are depth 1, and each object
/// key or array element below adds one (PROTOCOL §4.1 depth limit).
pub fn depth(section: &Object) -> usize {
    section
        .values()
        .map(|value| 1 + nested_depth(value))
        .max()
        .unwrap_or(0)
}

fn nested_depth(value: &Value) -> usize {
    match value {
        Value::Object(object) => depth(object),
        Value::Array(items) => items
            .iter()
            .map(|item| 1 + nested_depth(item))
            .max()
            .unwrap_or(0),
        _ => 0,
    }
}

/// JSON equality in which numbers compare by value (`1 == 1.0`), because devices
/// written in C often report integers as floats.
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y
                // Integers compare exactly; only a float on either side makes a
                // numeric comparison meaningful.
                || ((x.is_f64() || y.is_f64()) && x.as_f64().is_some() && x.as_f64() == y.as_f64())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_value(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(key, a)| y.get(key).is_some_and(|b| same_value(a, b)))
        }
        _ => a == b,
    }
}

/// The merge of PROTOCOL §4.1, also maintaining `metadata` when given: every leaf
/// written gets `{"timestamp": now}`, deleted keys lose their metadata, and an
/// object that replaces a leaf gets fresh metadata.
fn merge_section(target: &mut Object, patch: &Object, mut metadata: Option<&mut Object>, now: f64) {
    for (key, change) in patch {
        match change {
            Value::Null => {
                target.remove(key);
                if let Some(metadata) = metadata.as_deref_mut() {
                    metadata.remove(key);
                }
            }
            Value::Object(child_patch) => {
                if let Some(Value::Object(existing)) = target.get_mut(key) {
                    if child_patch.is_empty() {
                        // Merging no keys into an object changes nothing.
                        continue;
                    }
                    // An empty object's metadata is a leaf stamp; once it gains keys
                    // its metadata must become a mirror instead.
                    let reset = existing.is_empty();
                    let child_metadata = metadata
                        .as_deref_mut()
                        .and_then(|metadata| child_object(metadata, key, reset));
                    merge_section(existing, child_patch, child_metadata, now);
                    if existing.is_empty() {
                        target.remove(key);
                        if let Some(metadata) = metadata.as_deref_mut() {
                            metadata.remove(key);
                        }
                    }
                } else {
                    // Absent or a leaf: the object replaces it, minus its deletions.
                    let mut fresh = Object::new();
                    let mut fresh_metadata = Object::new();
                    let tracked = metadata.is_some();
                    merge_section(
                        &mut fresh,
                        child_patch,
                        tracked.then_some(&mut fresh_metadata),
                        now,
                    );
                    if fresh.is_empty() && !child_patch.is_empty() {
                        // Only deletions of keys that do not exist: nothing written.
                        continue;
                    }
                    if let Some(metadata) = metadata.as_deref_mut() {
                        let entry = if fresh.is_empty() {
                            stamp(now)
                        } else {
                            Value::Object(fresh_metadata)
                        };
                        metadata.insert(key.clone(), entry);
                    }
                    target.insert(key.clone(), Value::Object(fresh));
                }
            }
            leaf => {
                // Scalars and arrays replace whatever was there; arrays are leaves.
                target.insert(key.clone(), leaf.clone());
                if let Some(metadata) = metadata.as_deref_mut() {
                    metadata.insert(key.clone(), stamp(now));
                }
            }
        }
    }
}

/// The metadata object under `key`, created (or replaced, when `reset` or when it
/// is not an object) as needed.
fn child_object<'a>(metadata: &'a mut Object, key: &str, reset: bool) -> Option<&'a mut Object> {
    if reset || !matches!(metadata.get(key), Some(Value::Object(_))) {
        metadata.insert(key.into(), Value::Object(Object::new()));
    }
    match metadata.get_mut(key) {
        Some(Value::Object(object)) => Some(object),
        _ => None,
    }
}

fn stamp(now: f64) -> Value {
    let mut leaf = Object::new();
    leaf.insert("timestamp".into(), Value::from(now));
    Value::Object(leaf)
}

fn sections(desired: Object, reported: Object) -> Value {
    let mut object = Object::new();
    object.insert("desired".into(), Value::Object(desired));
    object.insert("reported".into(), Value::Object(reported));
    Value::Object(object)
}

fn invalid(message: &str) -> ShadowError {
    ShadowError::Invalid(message.to_string())
}

/// `parent[name]` as an object; `None` when missing or `null`, an error otherwise.
fn optional_object<'a>(
    parent: &'a Object,
    name: &str,
    path: &str,
) -> Result<Option<&'a Object>, ShadowError> {
    match parent.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(object)) => Ok(Some(object)),
        Some(_) => Err(ShadowError::Invalid(format!(
            "`{path}` must be a JSON object"
        ))),
    }
}

/// A shadow document borrowed from its [`Shadow`] ([`Shadow::document`],
/// [`Shadow::document_with_delta`]). Fields are in the order a JSON object's keys are
/// serialized (sorted), so the text is the same as the owned document's.
#[derive(Serialize)]
pub struct DocumentView<'a> {
    metadata: SectionsView<'a>,
    state: StateView<'a>,
    tags: &'a Object,
    timestamp: f64,
    version: u64,
}

#[derive(Serialize)]
struct SectionsView<'a> {
    desired: &'a Object,
    reported: &'a Object,
}

#[derive(Serialize)]
struct StateView<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    delta: Option<Object>,
    desired: &'a Object,
    reported: &'a Object,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const NOW: f64 = 1_700_000_000.5;

    fn object(value: Value) -> Object {
        match value {
            Value::Object(object) => object,
            other => panic!("test value is not an object: {other}"),
        }
    }

    fn update(value: Value) -> Update {
        Update::from_value(&value).expect("valid test update")
    }

    fn shadow_with(value: Value) -> Shadow {
        let mut shadow = Shadow::default();
        shadow
            .apply(&update(value), NOW, &Limits::default())
            .expect("accepted");
        shadow
    }

    #[test]
    fn objects_merge_key_by_key() {
        // PROTOCOL §4.1: objects merge key by key.
        let mut target = object(json!({"a": 1, "b": {"c": 2, "d": 3}}));
        merge(
            &mut target,
            &object(json!({"b": {"c": 20, "e": 5}, "f": 6})),
        );
        assert_eq!(
            Value::Object(target),
            json!({"a": 1, "b": {"c": 20, "d": 3, "e": 5}, "f": 6})
        );
    }

    #[test]
    fn scalars_and_arrays_replace() {
        // PROTOCOL §4.1: scalars and arrays replace.
        let mut target = object(json!({"a": [1, 2, 3], "b": {"x": 1}, "c": "s"}));
        merge(
            &mut target,
            &object(json!({"a": [9], "b": 7, "c": {"k": true}})),
        );
        assert_eq!(
            Value::Object(target),
            json!({"a": [9], "b": 7, "c": {"k": true}})
        );
    }

    #[test]
    fn null_deletes_at_any_depth_and_empty_objects_are_removed() {
        // PROTOCOL §4.1: null deletes at any depth; objects left empty are removed.
        let mut target = object(json!({"a": 1, "b": {"c": {"d": 1}}, "e": {"f": 1, "g": 2}}));
        merge(
            &mut target,
            &object(json!({"a": null, "b": {"c": {"d": null}}, "e": {"f": null}})),
        );
        assert_eq!(Value::Object(target), json!({"e": {"g": 2}}));
    }

    #[test]
    fn deleting_missing_keys_writes_nothing() {
        let mut target = object(json!({"a": 5}));
        merge(
            &mut target,
            &object(json!({"a": {"x": null}, "b": {"y": null}, "c": null})),
        );
        assert_eq!(Value::Object(target), json!({"a": 5}));
    }

    #[test]
    fn nulls_inside_new_objects_are_dropped() {
        let mut target = Object::new();
        merge(&mut target, &object(json!({"a": {"x": null, "y": 1}})));
        assert_eq!(Value::Object(target), json!({"a": {"y": 1}}));
    }

    #[test]
    fn explicit_empty_object_is_kept() {
        let mut target = object(json!({"a": 1, "b": {"x": 1}}));
        merge(&mut target, &object(json!({"a": {}, "b": {}, "c": {}})));
        assert_eq!(
            Value::Object(target),
            json!({"a": {}, "b": {"x": 1}, "c": {}})
        );
    }

    #[test]
    fn version_increments_and_timestamp_is_set() {
        // PROTOCOL §4.1: each accepted update increments version by one.
        let mut shadow = Shadow::default();
        for expected in 1..=3 {
            let t = NOW + expected as f64;
            shadow
                .apply(
                    &update(json!({"state": {"reported": {"n": expected}}})),
                    t,
                    &Limits::default(),
                )
                .expect("accepted");
            assert_eq!(shadow.version, expected);
            assert_eq!(shadow.timestamp, t);
        }
        // Even an update that changes nothing is an accepted update.
        shadow
            .apply(&update(json!({})), NOW, &Limits::default())
            .expect("accepted");
        assert_eq!(shadow.version, 4);
    }

    #[test]
    fn version_conflict_rejects_whole_update() {
        // PROTOCOL §4.1: present, non-zero and different version -> 409, nothing changes.
        let mut shadow = shadow_with(json!({"state": {"desired": {"a": 1}}}));
        let before = shadow.clone();
        let error = shadow
            .apply(
                &update(json!({"state": {"desired": {"a": 2}}, "version": 7})),
                NOW + 1.0,
                &Limits::default(),
            )
            .expect_err("conflict");
        assert_eq!(
            error,
            ShadowError::Conflict {
                expected: 7,
                actual: 1
            }
        );
        assert_eq!(error.code(), 409);
        assert_eq!(shadow, before);

        // Matching version or version 0 are accepted.
        shadow
            .apply(
                &update(json!({"state": {"desired": {"a": 2}}, "version": 1})),
                NOW,
                &Limits::default(),
            )
            .expect("matching version");
        shadow
            .apply(
                &update(json!({"state": {"desired": {"a": 3}}, "version": 0})),
                NOW,
                &Limits::default(),
            )
            .expect("version 0 skips the check");
        assert_eq!(shadow.version, 3);
        assert_eq!(shadow.desired, object(json!({"a": 3})));
    }

    #[test]
    fn metadata_mirrors_written_leaves() {
        // PROTOCOL §4.1: metadata.<section>.<path>.timestamp for every leaf written.
        let mut shadow = Shadow::default();
        let limits = Limits::default();
        shadow
            .apply(
                &update(json!({"state": {"reported": {"a": 1, "b": {"c": [1, 2], "d": "x"}}}})),
                10.0,
                &limits,
            )
            .expect("accepted");
        assert_eq!(
            Value::Object(shadow.metadata_reported.clone()),
            json!({"a": {"timestamp": 10.0}, "b": {"c": {"timestamp": 10.0}, "d": {"timestamp": 10.0}}})
        );
        assert!(shadow.metadata_desired.is_empty());

        // Only written leaves get the new time; deleted keys lose their metadata.
        shadow
            .apply(
                &update(json!({"state": {"reported": {"b": {"d": "y", "c": null}}}})),
                20.0,
                &limits,
            )
            .expect("accepted");
        assert_eq!(
            Value::Object(shadow.metadata_reported.clone()),
            json!({"a": {"timestamp": 10.0}, "b": {"d": {"timestamp": 20.0}}})
        );

        // A leaf replaced by an object gets a mirror; an object replaced by a leaf a stamp.
        shadow
            .apply(
                &update(json!({"state": {"reported": {"a": {"x": 1}, "b": 2}}})),
                30.0,
                &limits,
            )
            .expect("accepted");
        assert_eq!(
            Value::Object(shadow.metadata_reported.clone()),
            json!({"a": {"x": {"timestamp": 30.0}}, "b": {"timestamp": 30.0}})
        );

        // Deleting the last key of an object removes it and its metadata.
        shadow
            .apply(
                &update(json!({"state": {"reported": {"a": {"x": null}}}})),
                40.0,
                &limits,
            )
            .expect("accepted");
        assert_eq!(Value::Object(shadow.reported.clone()), json!({"b": 2}));
        assert_eq!(
            Value::Object(shadow.metadata_reported.clone()),
            json!({"b": {"timestamp": 30.0}})
        );
    }

    #[test]
    fn empty_object_metadata_becomes_a_mirror_when_filled() {
        let mut shadow = Shadow::default();
        let limits = Limits::default();
        shadow
            .apply(
                &update(json!({"state": {"desired": {"a": {}}}})),
                1.0,
                &limits,
            )
            .expect("accepted");
        assert_eq!(
            Value::Object(shadow.metadata_desired.clone()),
            json!({"a": {"timestamp": 1.0}})
        );
        shadow
            .apply(
                &update(json!({"state": {"desired": {"a": {"timestamp": 5}}}})),
                2.0,
                &limits,
            )
            .expect("accepted");
        assert_eq!(
            Value::Object(shadow.metadata_desired.clone()),
            json!({"a": {"timestamp": {"timestamp": 2.0}}})
        );
    }

    #[test]
    fn changed_flags_report_value_changes() {
        let mut shadow = Shadow::default();
        let limits = Limits::default();
        let applied = shadow
            .apply(
                &update(json!({"state": {"desired": {"on": true}}})),
                1.0,
                &limits,
            )
            .expect("accepted");
        assert_eq!(
            applied,
            Applied {
                desired_changed: true,
                reported_changed: false
            }
        );
        // Rewriting the same value is accepted but is not a change.
        let applied = shadow
            .apply(
                &update(json!({"state": {"desired": {"on": true}, "reported": {"on": true}}})),
                2.0,
                &limits,
            )
            .expect("accepted");
        assert_eq!(
            applied,
            Applied {
                desired_changed: false,
                reported_changed: true
            }
        );
        assert_eq!(shadow.version, 2);
        let applied = shadow
            .apply(
                &update(json!({"state": {"desired": {"missing": null}}})),
                3.0,
                &limits,
            )
            .expect("accepted");
        assert!(!applied.desired_changed);
    }

    #[test]
    fn tags_merge_without_metadata() {
        let mut shadow = shadow_with(json!({"tags": {"room": "kitchen", "floor": 1}}));
        shadow
            .apply(
                &update(json!({"tags": {"floor": null, "zone": "b"}})),
                NOW,
                &Limits::default(),
            )
            .expect("accepted");
        assert_eq!(
            Value::Object(shadow.tags.clone()),
            json!({"room": "kitchen", "zone": "b"})
        );
        assert!(shadow.metadata_desired.is_empty() && shadow.metadata_reported.is_empty());
    }

    #[test]
    fn too_large_is_rejected_and_nothing_changes() {
        // PROTOCOL §4.1: over the size limit -> 413.
        let limits = Limits {
            max_bytes: 200,
            max_depth: 8,
        };
        let mut shadow = Shadow::default();
        shadow
            .apply(
                &update(json!({"state": {"reported": {"a": "x"}}})),
                NOW,
                &limits,
            )
            .expect("small");
        let before = shadow.clone();
        let big = "y".repeat(200);
        let error = shadow
            .apply(
                &update(json!({"state": {"reported": {"b": big}}})),
                NOW,
                &limits,
            )
            .expect_err("too large");
        assert!(matches!(error, ShadowError::TooLarge { limit: 200, size } if size > 200));
        assert_eq!(error.code(), 413);
        assert_eq!(shadow, before);
    }

    #[test]
    fn size_is_the_compact_stored_document() {
        let shadow = shadow_with(json!({
            "state": {"desired": {"a": [1, 2.5, "é\n"]}, "reported": {"b": {"c": null, "d": true}}},
            "tags": {"t": "x"}
        }));
        let compact = serde_json::to_string(&shadow.to_document()).expect("serialisable");
        assert_eq!(shadow.document_size(), compact.len());

        // A limit of exactly the resulting size is accepted, one byte less is not.
        let mut exact = Shadow::default();
        let u = update(json!({"state": {"reported": {"k": "v"}}}));
        let mut probe = exact.clone();
        probe.apply(&u, NOW, &Limits::default()).expect("accepted");
        let size = probe.document_size();
        let tight = Limits {
            max_bytes: size - 1,
            max_depth: 8,
        };
        assert_eq!(
            exact.apply(&u, NOW, &tight),
            Err(ShadowError::TooLarge {
                size,
                limit: size - 1
            })
        );
        exact
            .apply(
                &u,
                NOW,
                &Limits {
                    max_bytes: size,
                    max_depth: 8,
                },
            )
            .expect("exactly at the limit");
    }

    #[test]
    fn borrowed_documents_serialize_as_the_owned_ones() {
        let mut shadow = shadow_with(json!({"state": {
            "desired": {"on": true, "color": {"r": 1, "g": 2}, "list": [1, "a"]},
            "reported": {"on": false, "color": {"r": 1, "g": 3}, "temp": 21.5}
        }}));
        shadow.tags.insert("site".into(), json!("north"));
        for shadow in [Shadow::default(), shadow] {
            assert_eq!(
                serde_json::to_string(&shadow.document()).unwrap(),
                shadow.to_document().to_string()
            );
            assert_eq!(
                serde_json::to_string(&shadow.document_with_delta()).unwrap(),
                shadow.to_document_with_delta().to_string()
            );
        }
    }

    #[test]
    fn too_deep_is_rejected_and_nothing_changes() {
        // PROTOCOL §4.1: depth limit 8 by default; top-level keys are depth 1.
        let mut eight = json!(1);
        for _ in 0..8 {
            eight = json!({"k": eight});
        }
        let mut shadow = Shadow::default();
        shadow
            .apply(
                &update(json!({"state": {"desired": eight.clone()}})),
                NOW,
                &Limits::default(),
            )
            .expect("depth 8 is allowed");
        assert_eq!(depth(&shadow.desired), 8);
        let before = shadow.clone();
        let nine = json!({"state": {"reported": {"k": eight}}});
        let error = shadow
            .apply(&update(nine), NOW, &Limits::default())
            .expect_err("depth 9");
        assert_eq!(error, ShadowError::TooDeep { depth: 9, limit: 8 });
        assert_eq!(error.code(), 413);
        assert_eq!(shadow, before);
        // Tags count as a section too.
        let mut tags = json!(1);
        for _ in 0..9 {
            tags = json!({"t": tags});
        }
        assert!(matches!(
            shadow.apply(&update(json!({"tags": tags})), NOW, &Limits::default()),
            Err(ShadowError::TooDeep { .. })
        ));
    }

    #[test]
    fn depth_counts_arrays_and_ignores_empty_containers() {
        assert_eq!(depth(&Object::new()), 0);
        assert_eq!(depth(&object(json!({"a": 1}))), 1);
        assert_eq!(depth(&object(json!({"a": {}}))), 1);
        assert_eq!(depth(&object(json!({"a": []}))), 1);
        assert_eq!(depth(&object(json!({"a": [1]}))), 2);
        assert_eq!(depth(&object(json!({"a": [[{"b": 1}]]}))), 4);
        assert_eq!(depth(&object(json!({"a": {"b": {"c": 1}}, "d": 1}))), 3);
    }

    #[test]
    fn deleting_can_bring_a_document_back_under_the_limit() {
        let mut shadow = shadow_with(json!({"state": {"reported": {"big": "z".repeat(300)}}}));
        let limits = Limits {
            max_bytes: 250,
            max_depth: 8,
        };
        shadow
            .apply(
                &update(json!({"state": {"reported": {"big": null}}})),
                NOW,
                &limits,
            )
            .expect("result is small");
        assert!(shadow.reported.is_empty());
    }

    #[test]
    fn delta_rules_of_protocol_4_2() {
        // PROTOCOL §4.2: missing or different keys appear with the desired value,
        // nested objects hold only differing leaves, reported-only keys never appear.
        let desired = object(json!({
            "on": true, "level": 5, "same": "x",
            "nested": {"a": 1, "b": 2, "deep": {"c": 3, "d": 4}},
            "list": [1, 2], "obj_vs_leaf": {"x": 1}, "leaf_vs_obj": 3
        }));
        let reported = object(json!({
            "on": false, "same": "x", "extra": 9,
            "nested": {"a": 1, "b": 20, "deep": {"c": 3, "d": 40, "e": 5}},
            "list": [1, 2, 3], "obj_vs_leaf": 7, "leaf_vs_obj": {"y": 1}
        }));
        assert_eq!(
            Value::Object(delta(&desired, &reported)),
            json!({
                "on": true, "level": 5,
                "nested": {"b": 2, "deep": {"d": 4}},
                "list": [1, 2], "obj_vs_leaf": {"x": 1}, "leaf_vs_obj": 3
            })
        );
        // No differences: {}.
        assert!(delta(&desired, &desired).is_empty());
        assert!(delta(&Object::new(), &reported).is_empty());
    }

    #[test]
    fn delta_compares_numbers_by_value() {
        let desired = object(json!({"a": 1, "b": [2], "c": {"d": 3}, "big": u64::MAX}));
        let reported = object(json!({"a": 1.0, "b": [2.0], "c": {"d": 3.0}, "big": u64::MAX - 1}));
        assert_eq!(
            Value::Object(delta(&desired, &reported)),
            json!({"big": u64::MAX})
        );
        let reported = object(json!({"a": 1.5, "b": [2], "c": {"d": 3}, "big": u64::MAX}));
        assert_eq!(Value::Object(delta(&desired, &reported)), json!({"a": 1}));
    }

    #[test]
    fn document_forms() {
        // PROTOCOL §4: stored form has no delta; the API form adds state.delta.
        let shadow = shadow_with(json!({
            "state": {"desired": {"on": true}, "reported": {"on": false, "t": 20}},
            "tags": {"room": "a"}
        }));
        let document = shadow.to_document();
        assert_eq!(
            document,
            json!({
                "state": {"desired": {"on": true}, "reported": {"on": false, "t": 20}},
                "metadata": {
                    "desired": {"on": {"timestamp": NOW}},
                    "reported": {"on": {"timestamp": NOW}, "t": {"timestamp": NOW}}
                },
                "tags": {"room": "a"}, "version": 1, "timestamp": NOW
            })
        );
        let with_delta = shadow.to_document_with_delta();
        assert_eq!(with_delta["state"]["delta"], json!({"on": true}));
        assert_eq!(Shadow::from_document(&document), Ok(shadow.clone()));
        // The stored form reads back ignoring any delta.
        assert_eq!(Shadow::from_document(&with_delta), Ok(shadow));
    }

    #[test]
    fn from_document_defaults_and_rejects_wrong_types() {
        assert_eq!(Shadow::from_document(&json!({})), Ok(Shadow::default()));
        assert_eq!(
            Shadow::from_document(&json!({"state": null, "version": null, "timestamp": null})),
            Ok(Shadow::default())
        );
        for bad in [
            json!([]),
            json!({"state": []}),
            json!({"state": {"desired": 1}}),
            json!({"metadata": {"reported": "x"}}),
            json!({"tags": [1]}),
            json!({"version": -1}),
            json!({"version": 1.5}),
            json!({"timestamp": "now"}),
        ] {
            let error = Shadow::from_document(&bad).expect_err("rejected");
            assert_eq!(error.code(), 400, "{bad}");
        }
    }

    #[test]
    fn update_parsing() {
        // PROTOCOL §4.1 update shape.
        let u = update(json!({
            "state": {"desired": {"a": 1}, "reported": null, "delta": {"ignored": 1}},
            "tags": {"t": 1}, "version": 4, "metadata": {}, "timestamp": 1
        }));
        assert_eq!(
            u,
            Update {
                desired: Some(object(json!({"a": 1}))),
                reported: None,
                tags: Some(object(json!({"t": 1}))),
                version: Some(4),
            }
        );
        assert_eq!(update(json!({})), Update::default());
        assert_eq!(
            update(json!({"state": null, "version": null})),
            Update::default()
        );
        assert_eq!(Update::from_value(&u.to_value()), Ok(u));
        assert_eq!(
            Update::reported(object(json!({"x": 1}))).reported,
            Some(object(json!({"x": 1})))
        );
        assert_eq!(
            Update::desired(object(json!({"x": 1}))).desired,
            Some(object(json!({"x": 1})))
        );

        for bad in [
            json!(null),
            json!("state"),
            json!({"state": 1}),
            json!({"state": {"desired": [1]}}),
            json!({"state": {"reported": "on"}}),
            json!({"tags": true}),
            json!({"version": -2}),
            json!({"version": 2.5}),
            json!({"version": "3"}),
        ] {
            let error = Update::from_value(&bad).expect_err("rejected");
            assert_eq!(error.code(), 400, "{bad}");
            assert!(error.to_string().starts_with("invalid shadow: "));
        }
    }

    #[test]
    fn delta_request_params_follow_protocol_4_3() {
        let shadow = shadow_with(json!({"state": {"desired": {"on": true}}}));
        assert_eq!(
            shadow.delta_request_params(),
            json!({"state": {"on": true}, "version": 1, "timestamp": NOW})
        );
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            ShadowError::Conflict {
                expected: 3,
                actual: 5
            }
            .to_string(),
            "version conflict: update is for version 3, shadow is at version 5"
        );
        assert!(ShadowError::TooLarge { size: 10, limit: 5 }
            .to_string()
            .contains("10 bytes"));
        assert!(ShadowError::TooDeep { depth: 9, limit: 8 }
            .to_string()
            .contains('9'));
    }

    // ---- properties -------------------------------------------------------------

    fn arb_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            (-5i64..5).prop_map(Value::from),
            (-8i32..8).prop_map(|n| Value::from(f64::from(n) / 2.0)),
            "[a-c]{0,2}".prop_map(Value::from),
            prop::collection::vec((-3i64..3).prop_map(Value::from), 0..3).prop_map(Value::from),
        ]
    }

    /// Small key set so patches and documents collide often.
    fn arb_key() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "b", "c", "timestamp"]).prop_map(String::from)
    }

    fn arb_tree(with_nulls: bool) -> impl Strategy<Value = Object> {
        let leaf = if with_nulls {
            prop_oneof![1 => Just(Value::Null), 4 => arb_leaf()].boxed()
        } else {
            arb_leaf().boxed()
        };
        let value = leaf.prop_recursive(4, 32, 4, |inner| {
            prop::collection::btree_map(arb_key(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect()))
        });
        prop::collection::btree_map(arb_key(), value, 0..4).prop_map(|m| m.into_iter().collect())
    }

    fn arb_any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[a-z]{0,3}".prop_map(Value::from),
        ];
        let key = prop::sample::select(vec![
            "state", "desired", "reported", "tags", "version", "delta", "a", "b",
        ])
        .prop_map(String::from);
        leaf.prop_recursive(6, 48, 5, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map(key.clone(), inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_shadow() -> impl Strategy<Value = Shadow> {
        prop::collection::vec((arb_tree(true), arb_tree(true), any::<bool>()), 0..4).prop_map(
            |steps| {
                let mut shadow = Shadow::default();
                for (index, (patch, other, both)) in steps.into_iter().enumerate() {
                    let update = Update {
                        desired: Some(patch),
                        reported: both.then_some(other),
                        ..Update::default()
                    };
                    let generous = Limits {
                        max_bytes: usize::MAX,
                        max_depth: usize::MAX,
                    };
                    // Generous limits: building the starting point never fails.
                    let _ = shadow.apply(&update, index as f64, &generous);
                }
                shadow
            },
        )
    }

    /// Metadata has exactly the section's keys; non-empty objects are mirrored and
    /// everything else carries a `{"timestamp": T}` stamp.
    fn mirrors(section: &Object, metadata: &Object) -> bool {
        section.len() == metadata.len()
            && section
                .iter()
                .all(|(key, value)| match (value, metadata.get(key)) {
                    (Value::Object(child), Some(Value::Object(meta))) if !child.is_empty() => {
                        mirrors(child, meta)
                    }
                    (_, Some(Value::Object(meta))) => {
                        meta.len() == 1 && meta.get("timestamp").is_some_and(Value::is_number)
                    }
                    _ => false,
                })
    }

    fn contains_null(section: &Object) -> bool {
        section.values().any(|value| match value {
            Value::Null => true,
            Value::Object(child) => contains_null(child),
            _ => false,
        })
    }

    /// Every entry of `delta` is a leaf of `desired` that `reported` lacks or holds
    /// differently; objects appear only where both sides are objects.
    fn only_differing_leaves(delta: &Object, desired: &Object, reported: &Object) -> bool {
        delta.iter().all(|(key, value)| {
            let Some(wanted) = desired.get(key) else {
                return false;
            };
            match (wanted, reported.get(key)) {
                (Value::Object(wanted), Some(Value::Object(actual))) => match value {
                    Value::Object(nested) => {
                        !nested.is_empty() && only_differing_leaves(nested, wanted, actual)
                    }
                    _ => false,
                },
                (wanted, actual) => {
                    value == wanted && actual.is_none_or(|actual| !same_value(wanted, actual))
                }
            }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn merge_is_idempotent_for_null_free_patches(
            target in arb_tree(false),
            patch in arb_tree(false),
        ) {
            let mut once = target.clone();
            merge(&mut once, &patch);
            let mut twice = once.clone();
            merge(&mut twice, &patch);
            prop_assert_eq!(once, twice);
        }

        #[test]
        fn merge_leaves_no_nulls(target in arb_tree(false), patch in arb_tree(true)) {
            // PROTOCOL §4.1: null means delete, so none is ever stored.
            let mut merged = target.clone();
            merge(&mut merged, &patch);
            prop_assert!(!contains_null(&merged));
        }

        #[test]
        fn delta_of_equal_sections_is_empty(desired in arb_tree(true)) {
            // PROTOCOL §4.2: no differences gives {}.
            prop_assert!(delta(&desired, &desired).is_empty());
        }

        #[test]
        fn reporting_the_desired_state_empties_the_delta(
            mut shadow in arb_shadow(),
            reported in arb_tree(true),
        ) {
            let generous = Limits { max_bytes: usize::MAX, max_depth: usize::MAX };
            shadow.apply(&Update::reported(reported), 1.0, &generous).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let desired = shadow.desired.clone();
            shadow.apply(&Update::reported(desired), 2.0, &generous).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(shadow.delta().is_empty(), "{:?}", shadow.delta());
        }

        #[test]
        fn applying_the_delta_as_reported_empties_it(mut shadow in arb_shadow()) {
            // The §4.3 loop: a device that applies the delta and reports it converges.
            let generous = Limits { max_bytes: usize::MAX, max_depth: usize::MAX };
            let pending = shadow.delta();
            shadow.apply(&Update::reported(pending), 3.0, &generous).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(shadow.delta().is_empty(), "{:?}", shadow.delta());
        }

        #[test]
        fn nested_delta_holds_only_differing_leaves(
            desired in arb_tree(false),
            reported in arb_tree(false),
        ) {
            // PROTOCOL §4.2.
            let computed = delta(&desired, &reported);
            prop_assert!(only_differing_leaves(&computed, &desired, &reported), "{:?}", computed);
        }

        #[test]
        fn metadata_mirrors_sections(shadow in arb_shadow()) {
            // PROTOCOL §4.1 metadata.
            prop_assert!(mirrors(&shadow.desired, &shadow.metadata_desired));
            prop_assert!(mirrors(&shadow.reported, &shadow.metadata_reported));
        }

        #[test]
        fn apply_never_panics_on_arbitrary_json(
            mut shadow in arb_shadow(),
            input in arb_any_json(),
            wrapped in arb_any_json(),
            max_bytes in 0usize..2048,
            max_depth in 0usize..6,
        ) {
            let limits = Limits { max_bytes, max_depth };
            let candidates = [
                input.clone(),
                serde_json::json!({"state": {"desired": input.clone(), "reported": wrapped.clone()}}),
                serde_json::json!({"state": wrapped, "tags": input, "version": shadow.version}),
            ];
            for candidate in candidates {
                if let Ok(update) = Update::from_value(&candidate) {
                    let _ = shadow.apply(&update, 5.0, &limits);
                }
            }
            let _ = Shadow::from_document(&shadow.to_document_with_delta());
        }

        #[test]
        fn rejected_updates_change_nothing(
            mut shadow in arb_shadow(),
            desired in arb_tree(true),
            reported in arb_tree(true),
            version in prop::option::of(0u64..6),
            max_bytes in 0usize..600,
            max_depth in 0usize..4,
        ) {
            let limits = Limits { max_bytes, max_depth };
            let before = shadow.clone();
            let update = Update { desired: Some(desired), reported: Some(reported), tags: None, version };
            match shadow.apply(&update, 9.0, &limits) {
                Ok(_) => {
                    prop_assert_eq!(shadow.version, before.version + 1);
                    prop_assert!(shadow.document_size() <= max_bytes);
                    prop_assert!(depth(&shadow.desired) <= max_depth);
                    prop_assert!(depth(&shadow.reported) <= max_depth);
                }
                Err(_) => prop_assert_eq!(&shadow, &before),
            }
        }

        #[test]
        fn documents_round_trip(shadow in arb_shadow()) {
            let document = shadow.to_document();
            prop_assert_eq!(Shadow::from_document(&document), Ok(shadow.clone()));
            prop_assert_eq!(
                serde_json::to_vec(&document).map(|bytes| bytes.len()).ok(),
                Some(shadow.document_size())
            );
        }
    }

    #[test]
    fn property_helpers_accept_known_cases() {
        let desired = object(json!({"a": {"b": 1, "c": 2}}));
        let reported = object(json!({"a": {"b": 1}}));
        let computed = delta(&desired, &reported);
        assert!(only_differing_leaves(&computed, &desired, &reported));
        assert!(!only_differing_leaves(&desired, &desired, &reported));
        let shadow = shadow_with(json!({"state": {"desired": {"a": {"b": 1}, "c": {}}}}));
        assert!(mirrors(&shadow.desired, &shadow.metadata_desired));
    }
}
