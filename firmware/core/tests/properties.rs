//! Whatever the cloud sends, the device does not panic and answers a request exactly once
//! (PROTOCOL §2), and notifications and replies not at all.

mod common;

use common::Board;
use firmware_core::device::{Action, METHODS};
use firmware_core::ota::ImageDigest;
use firmware_core::pull::{resolve_url, Pull};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[a-z0-9=+/ .]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("on".to_string()),
                    Just("state".to_string()),
                    Just("config".to_string()),
                    Just("key".to_string()),
                    Just("value".to_string()),
                    Just("size".to_string()),
                    Just("offset".to_string()),
                    Just("data".to_string()),
                    Just("filename".to_string()),
                    Just("debug".to_string()),
                    Just("level".to_string()),
                    "[a-z_.]{1,8}",
                ],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn arb_method() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(METHODS).prop_map(str::to_string),
        "[A-Za-z.]{0,12}",
    ]
}

fn replies_to(actions: &[Action], id: &Value) -> usize {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(text) => serde_json::from_str::<Value>(text).ok(),
            _ => None,
        })
        .filter(|f| f.get("method").is_none() && f.get("id") == Some(id))
        .count()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_request_gets_exactly_one_reply(
        id in prop_oneof![any::<u32>().prop_map(Value::from), "[a-z0-9]{1,6}".prop_map(Value::from)],
        method in arb_method(),
        params in arb_json(),
    ) {
        // Keep the device from rebooting into a new Device mid-test: reboots are actions,
        // and this test only reads them.
        let mut board = Board::new();
        board.connect();
        let frame = json!({"id": id.clone(), "method": method, "params": params});
        let actions = board.device().receive(frame.to_string().as_bytes(), 1);
        prop_assert_eq!(replies_to(&actions, &id), 1, "{} -> {:?}", frame, actions);
    }

    #[test]
    fn notifications_and_replies_get_nothing_back(
        method in arb_method(),
        params in arb_json(),
        result in arb_json(),
    ) {
        let mut board = Board::new();
        board.connect();
        let notification = json!({"method": method, "params": params});
        let actions = board.device().receive(notification.to_string().as_bytes(), 1);
        let answers = actions.iter().filter(|a| matches!(a, Action::Send(t) if !t.contains("\"method\""))).count();
        prop_assert_eq!(answers, 0);
        let reply = json!({"id": 77, "result": result});
        let actions = board.device().receive(reply.to_string().as_bytes(), 2);
        prop_assert!(actions.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..8)) {
        let mut board = Board::new();
        board.connect();
        for chunk in chunks {
            let _ = board.device().receive(&chunk, 1);
        }
        // The device still answers afterwards once the stream is sane again.
        let actions = board.device().receive(b"]}]}\"  {\"id\": 5, \"method\": \"RPC.List\"}", 2);
        let _ = actions;
        let actions = board.device().receive(b"{\"id\": 6, \"method\": \"RPC.List\"}", 3);
        prop_assert!(replies_to(&actions, &json!(6)) <= 1);
    }

    #[test]
    fn any_local_request_gets_exactly_one_reply(method in arb_method(), params in arb_json()) {
        let mut board = Board::new();
        let frame = json!({"id": 1, "method": method, "params": params});
        let actions = board.device().receive_local(frame.to_string().as_bytes(), 1);
        let local = actions.iter().filter(|a| matches!(a, Action::SendLocal(_))).count();
        prop_assert_eq!(local, 1);
    }

    #[test]
    fn update_requests_never_panic(url in ".{0,40}", server in ".{0,40}", sha in ".{0,70}", params in arb_json()) {
        if let Ok((resolved, _)) = resolve_url(&url, &server) {
            prop_assert!(resolved.starts_with("http://") || resolved.starts_with("https://"), "{}", resolved);
        }
        if let Some(digest) = ImageDigest::from_hex(&sha) {
            prop_assert_eq!(digest.hex(), sha.to_ascii_lowercase());
        }
        let _ = Pull::from_params(&params);
        let _ = Pull::from_params(&json!({"url": url, "sha256": sha, "signature": server}));
    }
}
