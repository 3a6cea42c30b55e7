//! One JSON-RPC frame as Mongoose OS and mDash use it (PROTOCOL §2).
//!
//! The dialect is loose: `jsonrpc` is never required, `params` has the legacy synonym
//! `args`, ids may be numbers or strings and must come back with the same type, and
//! fields we do not know (`key`, `v`, `jsonrpc`, ...) are ignored.

use alloc::format;
use alloc::string::{String, ToString};
use core::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// A frame exchanged with a device (PROTOCOL §2).
///
/// `params` and `result` keep the difference between "absent" (`None`) and an
/// explicit JSON `null` (`Some(Value::Null)`), because `Sys.Reboot` legitimately
/// replies with `"result": null`. `id` and `tag` treat `null` as absent.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(try_from = "RawFrame")]
pub struct Frame {
    /// Request id: a number or a string, echoed exactly in replies (PROTOCOL §2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    /// Sender; devices set their own id. The cloud never sets it (PROTOCOL §2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    /// Destination; devices drop requests whose `dst` is not their id, so the cloud
    /// never sets it (PROTOCOL §2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    /// Opaque value copied into the reply (PROTOCOL §2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<Value>,
    /// Method name; its presence makes the frame a request or notification.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Request parameters (legacy synonym `args` on input).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
    /// Successful reply value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Failed reply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<RpcError>,
}

/// The `error` member of a reply: `{code, message}` (PROTOCOL §2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RpcError {
    /// Error code; see [`crate::codes`]. Device codes are passed through unchanged.
    pub code: i64,
    /// Human-readable text; some firmware omits it, so it defaults to `""`.
    #[serde(default)]
    pub message: String,
}

impl RpcError {
    /// Builds an error value.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
        }
    }
}

/// What a frame is, by the rules of PROTOCOL §2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Has `method` and `id`: expects a reply.
    Request,
    /// Has `method` but no `id`: gets no reply.
    Notification,
    /// Has `id` but no `method`: answers an earlier request.
    Reply,
    /// Neither `method` nor `id`: nothing can be done with it.
    Invalid,
}

/// A JSON value that cannot be read as a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError(String);

impl FrameError {
    /// What was wrong, without the "invalid frame" prefix.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid frame: {}", self.0)
    }
}

impl core::error::Error for FrameError {}

impl Frame {
    /// Reads a frame from an already parsed JSON value.
    ///
    /// Fails when the value is not an object or a known field has the wrong type
    /// (for example a numeric `method`, or an `id` that is neither number nor string).
    pub fn from_value(value: Value) -> Result<Frame, FrameError> {
        if !value.is_object() {
            return Err(FrameError(format!(
                "expected a JSON object, got {}",
                crate::text::json_type_name(&value)
            )));
        }
        serde_json::from_value(value).map_err(|error| FrameError(error.to_string()))
    }

    /// Parses a frame from JSON text.
    pub fn from_slice(bytes: &[u8]) -> Result<Frame, FrameError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|error| FrameError(error.to_string()))?;
        Frame::from_value(value)
    }

    /// Classifies the frame (PROTOCOL §2).
    pub fn kind(&self) -> FrameKind {
        match (self.method.is_some(), self.id.is_some()) {
            (true, true) => FrameKind::Request,
            (true, false) => FrameKind::Notification,
            (false, true) => FrameKind::Reply,
            (false, false) => FrameKind::Invalid,
        }
    }

    /// A cloud-to-device request: numeric id, no `src`/`dst`, `params` omitted when
    /// `None` (PROTOCOL §2).
    pub fn request(id: u64, method: &str, params: Option<Value>) -> Frame {
        Frame {
            id: Some(Value::from(id)),
            method: Some(method.into()),
            params,
            ..Frame::default()
        }
    }

    /// A successful reply: echoes the request's `id` with its type and copies its
    /// `tag` (PROTOCOL §2).
    pub fn reply_to(request: &Frame, result: Value) -> Frame {
        Frame {
            id: request.id.clone(),
            tag: request.tag.clone(),
            result: Some(result),
            ..Frame::default()
        }
    }

    /// [`Frame::reply_to`] serialized at once, with `result` borrowed instead of built as
    /// a [`Value`]: the same text as `Frame::reply_to(request, result).to_json()`.
    pub fn reply_json<T: Serialize + ?Sized>(request: &Frame, result: &T) -> String {
        #[derive(Serialize)]
        struct Reply<'a, T: ?Sized> {
            #[serde(skip_serializing_if = "Option::is_none")]
            id: Option<&'a Value>,
            #[serde(skip_serializing_if = "Option::is_none")]
            tag: Option<&'a Value>,
            result: &'a T,
        }
        let reply = Reply {
            id: request.id.as_ref(),
            tag: request.tag.as_ref(),
            result,
        };
        serde_json::to_string(&reply).unwrap_or_else(|_| String::from("{}"))
    }

    /// An error reply, echoing `id` and `tag` like [`Frame::reply_to`].
    pub fn error_to(request: &Frame, code: i64, message: impl Into<String>) -> Frame {
        Frame {
            id: request.id.clone(),
            tag: request.tag.clone(),
            error: Some(RpcError::new(code, message)),
            ..Frame::default()
        }
    }

    /// Compact JSON, one value with nothing after it (PROTOCOL §1 output framing).
    pub fn to_json(&self) -> String {
        // Serialising can only fail for maps with non-string keys, which `Value`
        // cannot hold, so the fallback is unreachable in practice.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }

    /// `params` (or legacy `args`), or `null` when absent.
    pub fn params_or_null(&self) -> Value {
        self.params.clone().unwrap_or(Value::Null)
    }
}

/// What the wire may carry, before the `args`/`params` synonym is resolved and the
/// `id` type is checked.
#[derive(Deserialize)]
struct RawFrame {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    src: Option<String>,
    #[serde(default)]
    dst: Option<String>,
    #[serde(default)]
    tag: Option<Value>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default, deserialize_with = "present")]
    params: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    args: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    result: Option<Value>,
    #[serde(default)]
    error: Option<RpcError>,
}

/// Keeps an explicit `null` as `Some(Value::Null)`; a missing field stays `None`
/// through `#[serde(default)]`.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

impl TryFrom<RawFrame> for Frame {
    type Error = String;

    fn try_from(raw: RawFrame) -> Result<Frame, String> {
        // Replies must echo the id with its type, so only the two types a device can
        // match on are accepted (PROTOCOL §2).
        if let Some(id) = &raw.id {
            if !(id.is_number() || id.is_string()) {
                return Err(format!(
                    "`id` must be a number or a string, got {}",
                    crate::text::json_type_name(id)
                ));
            }
        }
        Ok(Frame {
            id: raw.id,
            src: raw.src,
            dst: raw.dst,
            tag: raw.tag,
            method: raw.method,
            // PROTOCOL §2: `args` is the legacy name; `params` wins when both appear.
            params: raw.params.or(raw.args),
            result: raw.result,
            error: raw.error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn a_borrowed_reply_is_the_built_one() {
        let result = json!({"state": {"reported": {"on": true}}, "version": 3});
        for request in [
            json!({"id": 7, "method": "Dash.Shadow.Update"}),
            json!({"id": "a", "tag": {"t": 1}, "method": "M"}),
            json!({"method": "M"}),
        ] {
            let request = Frame::from_value(request).unwrap();
            assert_eq!(
                Frame::reply_json(&request, &result),
                Frame::reply_to(&request, result.clone()).to_json()
            );
        }
    }

    fn frame(value: Value) -> Frame {
        Frame::from_value(value).expect("test frame is valid")
    }

    #[test]
    fn kinds_follow_protocol_2() {
        // PROTOCOL §2: method+id request, method only notification, id only reply.
        assert_eq!(
            frame(json!({"id": 1, "method": "X"})).kind(),
            FrameKind::Request
        );
        assert_eq!(
            frame(json!({"method": "X"})).kind(),
            FrameKind::Notification
        );
        assert_eq!(
            frame(json!({"id": 1, "result": 2})).kind(),
            FrameKind::Reply
        );
        assert_eq!(
            frame(json!({"id": "a", "error": {"code": 404}})).kind(),
            FrameKind::Reply
        );
        assert_eq!(frame(json!({"result": 1})).kind(), FrameKind::Invalid);
        assert_eq!(frame(json!({})).kind(), FrameKind::Invalid);
    }

    #[test]
    fn null_id_counts_as_absent() {
        assert_eq!(
            frame(json!({"id": null, "method": "X"})).kind(),
            FrameKind::Notification
        );
    }

    #[test]
    fn args_is_a_legacy_synonym_for_params() {
        // PROTOCOL §2: `params` (legacy synonym `args`).
        let f = frame(json!({"id": 1, "method": "X", "args": {"a": 1}}));
        assert_eq!(f.params, Some(json!({"a": 1})));
        let f = frame(json!({"method": "X", "args": [1], "params": [2]}));
        assert_eq!(f.params, Some(json!([2])), "params wins over args");
        let f = frame(json!({"method": "X", "params": [2], "args": [1]}));
        assert_eq!(f.params, Some(json!([2])), "regardless of order");
    }

    #[test]
    fn unknown_fields_are_ignored() {
        // PROTOCOL §2: `key` (legacy auth), `v`, `jsonrpc` are accepted and ignored.
        let f = frame(json!({
            "jsonrpc": "2.0", "key": "secret", "v": 2, "id": 3, "method": "M",
            "something_new": {"x": 1}
        }));
        assert_eq!(f, Frame::request(3, "M", None));
    }

    #[test]
    fn jsonrpc_is_not_required() {
        assert_eq!(
            frame(json!({"id": 1, "method": "M"})).kind(),
            FrameKind::Request
        );
    }

    #[test]
    fn numeric_and_string_ids_are_echoed_with_their_type() {
        // PROTOCOL §2: replies echo `id` exactly as received (type included).
        for id in [json!(17), json!("17"), json!(-3), json!(1.5), json!("x-y")] {
            let request = frame(json!({"id": id.clone(), "method": "M"}));
            let reply = Frame::reply_to(&request, json!(true));
            assert_eq!(reply.id.as_ref(), Some(&id));
            let wire: Value = serde_json::from_str(&reply.to_json()).expect("valid json");
            assert_eq!(wire["id"], id);
        }
        let reply = Frame::reply_to(&frame(json!({"id": "17", "method": "M"})), json!(1));
        assert_eq!(reply.to_json(), r#"{"id":"17","result":1}"#);
        let reply = Frame::reply_to(&frame(json!({"id": 17, "method": "M"})), json!(1));
        assert_eq!(reply.to_json(), r#"{"id":17,"result":1}"#);
    }

    #[test]
    fn replies_copy_tag() {
        // PROTOCOL §2: replies copy `tag` if present.
        let request = frame(json!({"id": 1, "method": "M", "tag": {"t": 1}}));
        let reply = Frame::reply_to(&request, json!(null));
        assert_eq!(reply.tag, Some(json!({"t": 1})));
        let error = Frame::error_to(&request, crate::codes::NOT_FOUND, "No handler for M");
        assert_eq!(
            error.to_json(),
            r#"{"id":1,"tag":{"t":1},"error":{"code":404,"message":"No handler for M"}}"#
        );
        let untagged = Frame::reply_to(&frame(json!({"id": 1, "method": "M"})), json!(1));
        assert_eq!(untagged.tag, None);
    }

    #[test]
    fn cloud_requests_have_numeric_id_and_no_src_or_dst() {
        // PROTOCOL §2: positive integer id, params omitted when none, never src/dst.
        let r = Frame::request(5, "Sys.GetInfo", None);
        assert_eq!(r.to_json(), r#"{"id":5,"method":"Sys.GetInfo"}"#);
        let r = Frame::request(6, "Sys.Reboot", Some(json!({"delay_ms": 100})));
        assert_eq!(
            r.to_json(),
            r#"{"id":6,"method":"Sys.Reboot","params":{"delay_ms":100}}"#
        );
    }

    #[test]
    fn explicit_null_result_is_kept() {
        // Sys.Reboot replies `null` (PROTOCOL §9); that is a result, not a missing one.
        let f = frame(json!({"id": 1, "result": null}));
        assert_eq!(f.result, Some(Value::Null));
        assert_eq!(f.to_json(), r#"{"id":1,"result":null}"#);
        let f = frame(json!({"id": 1, "error": {"code": 1, "message": "x"}}));
        assert_eq!(f.result, None);
    }

    #[test]
    fn error_message_defaults_to_empty() {
        let f = frame(json!({"id": 1, "error": {"code": -32601}}));
        assert_eq!(
            f.error,
            Some(RpcError::new(crate::codes::METHOD_NOT_FOUND, ""))
        );
    }

    #[test]
    fn device_error_codes_pass_through() {
        // PROTOCOL §2: error codes seen from devices pass through unchanged.
        for code in [400, 403, 404, 500, -32601, -1, 12345] {
            let f = frame(json!({"id": 1, "error": {"code": code, "message": "m"}}));
            assert_eq!(f.error.map(|e| e.code), Some(code));
        }
    }

    #[test]
    fn params_or_null() {
        assert_eq!(frame(json!({"method": "M"})).params_or_null(), Value::Null);
        assert_eq!(
            frame(json!({"method": "M", "params": [1]})).params_or_null(),
            json!([1])
        );
    }

    #[test]
    fn non_objects_and_wrong_types_are_rejected_with_a_message() {
        let cases = [
            json!([1, 2]),
            json!("text"),
            json!(null),
            json!({"method": 5}),
            json!({"id": true, "method": "M"}),
            json!({"id": {"a": 1}, "method": "M"}),
            json!({"id": 1, "src": 7}),
            json!({"id": 1, "error": {"message": "no code"}}),
            json!({"id": 1, "error": "boom"}),
        ];
        for case in cases {
            let error = Frame::from_value(case.clone()).expect_err("must be rejected");
            let text = error.to_string();
            assert!(text.starts_with("invalid frame: "), "{text}");
            assert!(!error.message().is_empty(), "{case}");
        }
        let error = Frame::from_value(json!(3)).expect_err("not an object");
        assert_eq!(error.message(), "expected a JSON object, got a number");
    }

    #[test]
    fn from_slice_parses_text() {
        let f = Frame::from_slice(br#"{"id":1,"method":"M"}"#).expect("valid");
        assert_eq!(f.kind(), FrameKind::Request);
        assert!(Frame::from_slice(b"{\"id\":").is_err());
        assert!(Frame::from_slice(b"\xff").is_err());
    }

    #[test]
    fn serialisation_is_compact_and_omits_absent_fields() {
        let f = Frame {
            id: Some(json!(1)),
            src: Some("dev".into()),
            dst: Some("cloud".into()),
            method: Some("M".into()),
            params: Some(json!({"a": [1, 2]})),
            ..Frame::default()
        };
        assert_eq!(
            f.to_json(),
            r#"{"id":1,"src":"dev","dst":"cloud","method":"M","params":{"a":[1,2]}}"#
        );
        assert_eq!(Frame::default().to_json(), "{}");
    }

    fn arb_scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[a-z\"\\\\ é]{0,8}".prop_map(Value::from),
        ]
    }

    fn arb_id() -> impl Strategy<Value = Option<Value>> {
        prop::option::of(prop_oneof![
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[a-z0-9]{0,6}".prop_map(Value::from),
        ])
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        let payload = prop::option::of(prop_oneof![
            arb_scalar(),
            prop::collection::vec(arb_scalar(), 0..3).prop_map(Value::from),
            prop::collection::btree_map("[a-c]", arb_scalar(), 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]);
        (
            arb_id(),
            prop::option::of("[a-z0-9]{1,6}"),
            prop::option::of("[a-z0-9]{1,6}"),
            prop::option::of(any::<u32>().prop_map(Value::from)),
            prop::option::of("[A-Za-z.]{1,12}"),
            payload.clone(),
            payload,
            prop::option::of((any::<i64>(), ".{0,8}").prop_map(|(c, m)| RpcError::new(c, m))),
        )
            .prop_map(|(id, src, dst, tag, method, params, result, error)| Frame {
                id,
                src,
                dst,
                tag,
                method,
                params,
                result,
                error,
            })
    }

    /// Found by the `frame` fuzz target: an id too large for an integer is a float, and
    /// the reply must carry the same number back (serde_json parses floats exactly only
    /// with `float_roundtrip`).
    #[test]
    fn a_huge_numeric_id_is_echoed_as_the_same_number() {
        let digits = "4".repeat(71);
        let text = format!(r#"{{"id":{digits},"ret*":{{"app":44444444444}}}}"#);
        let frame = Frame::from_slice(text.as_bytes()).expect("parses");
        let again = Frame::from_slice(frame.to_json().as_bytes()).expect("parses again");
        assert_eq!(again, frame);
        let reply = Frame::reply_to(&frame, Value::Bool(true));
        let sent: f64 = digits.parse().unwrap();
        assert_eq!(reply.id.unwrap().as_f64(), Some(sent));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn frames_round_trip_through_json(f in arb_frame()) {
            let text = f.to_json();
            let back = Frame::from_slice(text.as_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back, f);
        }

        #[test]
        fn from_value_never_panics(v in arb_scalar(), key in "[a-z]{1,8}") {
            let mut map = serde_json::Map::new();
            map.insert(key, v.clone());
            let _ = Frame::from_value(Value::Object(map));
            let _ = Frame::from_value(v);
        }
    }
}
