//! The OpenAPI document at `/api/v2/openapi.json`: served without credentials, and in step
//! with the router (every route documented, every documented operation routed).

use std::collections::{BTreeMap, BTreeSet};

use herd_testkit::TestServer;
use serde_json::Value;

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// The paths the router has, read from the router itself: its debug form lists every path it
/// matches. Paths axum adds for its own use are left out. Should that form change, the checks
/// of known paths below fail rather than pass on an empty list.
fn router_paths() -> BTreeSet<String> {
    let (router, _) = herd_server::rest::openapi::routes().split_for_parts();
    let debug = format!("{router:?}");
    // The routes come first; the fallback router after them has paths of its own.
    let routes = debug
        .split("fallback_router")
        .next()
        .expect("split yields at least one piece");
    let mut paths = BTreeSet::new();
    for piece in routes.split('"').skip(1).step_by(2) {
        if piece.starts_with('/') && !piece.contains("__private__") {
            paths.insert(piece.to_string());
        }
    }
    paths
}

/// `(path, methods)` of every operation in the document.
fn documented(doc: &Value) -> BTreeMap<String, BTreeSet<String>> {
    doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .map(|(path, item)| {
            let methods = METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(|m| m.to_string())
                .collect();
            (path.clone(), methods)
        })
        .collect()
}

/// A concrete URL path for a templated one: every `{param}` becomes `x`.
fn concrete(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => in_param = true,
            '}' => {
                in_param = false;
                out.push('x');
            }
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

#[tokio::test]
async fn document_is_served_without_credentials() {
    let server = TestServer::start().await;
    let origin = server.base.trim_end_matches("/api/v2").to_string();
    let resp = server
        .http
        .get(format!("{}/openapi.json", server.base))
        .send()
        .await
        .expect("request sent");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let doc: Value = resp.json().await.expect("JSON");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["basic"]["scheme"], "basic");
    assert_eq!(schemes["access_token"]["in"], "query");
    assert_eq!(doc["security"].as_array().unwrap().len(), 3);
    // The error envelope of PROTOCOL §6, with the device's own error for proxied calls.
    let error = &doc["components"]["schemas"]["ErrorBody"];
    assert_eq!(error["required"], serde_json::json!(["error"]));
    let detail = &doc["components"]["schemas"]["ErrorDetail"]["properties"];
    assert!(detail.get("code").is_some() && detail.get("device").is_some());

    // Every operation that needs credentials says what it answers without them, and every
    // error answer is the envelope.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let open = op["security"] == serde_json::json!([{}]);
            let responses = op["responses"].as_object().unwrap();
            assert_eq!(
                responses.contains_key("401"),
                !open,
                "{method} {path}: 401 documented exactly when credentials are needed"
            );
            for (status, response) in responses {
                // /healthz answers 503 with its usual body, saying what fails.
                let health = path == "/healthz";
                if !health && (status.starts_with('4') || status.starts_with('5')) {
                    let schema = &response["content"]["application/json"]["schema"];
                    assert_eq!(
                        schema["$ref"], "#/components/schemas/ErrorBody",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
    // Operation ids are unique, as OpenAPI requires.
    let mut ids = BTreeSet::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            let id = op["operationId"].as_str().expect("operationId").to_string();
            assert!(ids.insert(id.clone()), "duplicate operationId {id}");
        }
    }

    // Health and the document itself need no credentials.
    let health = server
        .http
        .get(format!("{origin}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    server.shutdown().await;
}

#[tokio::test]
async fn every_route_is_documented_and_every_operation_is_routed() {
    let server = TestServer::start().await;
    let origin = server.base.trim_end_matches("/api/v2").to_string();
    let (_, doc) = server.call("GET", "/openapi.json", None).await;
    let documented = documented(&doc);

    // Paths: the router's and the document's are the same set.
    let routed = router_paths();
    for path in [
        "/healthz",
        "/api/v1/rpc",
        "/api/v2/devices/{id}",
        "/api/v2/openapi.json",
    ] {
        assert!(
            routed.contains(path),
            "{path} not found in the router: {routed:?}"
        );
    }
    let paths: BTreeSet<String> = documented.keys().cloned().collect();
    assert_eq!(
        routed, paths,
        "the router's paths and the document's paths differ"
    );

    // Methods: on each path, the router answers exactly the documented methods; the
    // others get the 405 of the method fallback.
    for (path, methods) in &documented {
        let url = format!("{origin}{}", concrete(path));
        for method in METHODS {
            let resp = server
                .http
                .request(method.to_uppercase().parse().unwrap(), &url)
                .bearer_auth(&server.admin_key)
                .send()
                .await
                .expect("request sent");
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert_ne!(
                message, "no such endpoint",
                "{method} {path}: the router does not know the path"
            );
            if methods.contains(method) {
                assert_ne!(status, 405, "{method} {path} is documented but not routed");
            } else {
                assert_eq!(status, 405, "{method} {path} is routed but not documented");
            }
        }
    }
    server.shutdown().await;
}
