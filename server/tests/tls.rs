//! `wss://` and `https://` when the server has a certificate (PROTOCOL §1).

use std::sync::Arc;

use futures_util::StreamExt;
use herd_config::TlsSettings;
use herd_testkit::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn devices_connect_over_wss() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();
    let server = TestServer::start_with(|s| {
        s.tls = Some(TlsSettings {
            cert: cert_path.clone(),
            key: key_path.clone(),
        })
    })
    .await;
    let addr = server
        .base
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();

    // HTTPS REST: create a device with a raw HTTP/1.1 request over TLS.
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut tls = connector
        .connect(name.clone(), tcp)
        .await
        .expect("TLS handshake");
    let body = "{\"name\":\"secure\"}";
    let request = format!(
        "POST /api/v2/devices HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        server.admin_key,
        body.len()
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tls.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let json_start = response.find("\r\n\r\n").unwrap() + 4;
    let device: Value = serde_json::from_str(&response[json_start..]).unwrap();
    let token = device["token"].as_str().unwrap();

    // WSS device socket.
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let url = format!("wss://localhost/api/v2/rpc?access_token={token}");
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls)
        .await
        .expect("wss upgrade");
    let first = loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(text) => break serde_json::from_str::<Value>(&text).unwrap(),
            _ => continue,
        }
    };
    assert_eq!(first["method"], "Sys.GetInfo");

    // Plain HTTP on the TLS port is refused, and the server keeps serving.
    let mut plain = tokio::net::TcpStream::connect(&addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("\"ok\""));
    server.shutdown().await;
}

/// `herd-server --tls-self-signed`: the server makes its own certificate, prints its
/// fingerprint, serves HTTPS with it, and keeps the same one across a restart.
#[tokio::test]
async fn a_self_signed_certificate_is_made_once_and_served() {
    const BIN: &str = env!("CARGO_BIN_EXE_herd-server");
    let dir = tempfile::tempdir().unwrap();
    let mut fingerprints = Vec::new();
    for _ in 0..2 {
        let ((mut child, addr), printed) = spawn_binary_with(
            BIN,
            dir.path(),
            "127.0.0.1:0",
            &["--tls-self-signed", "localhost", "herd.test"],
        );
        let line = printed
            .iter()
            .find(|l| l.contains("SHA-256"))
            .expect("the fingerprint is printed");
        let fingerprint = line.split("SHA-256 ").nth(1).unwrap().trim_end_matches(')');
        fingerprints.push(fingerprint.to_string());

        let pem = std::fs::read(dir.path().join("tls/self-signed.pem")).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        for host in ["localhost", "herd.test"] {
            let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from(host).unwrap();
            let mut tls = connector
                .connect(name, tcp)
                .await
                .unwrap_or_else(|e| panic!("TLS handshake as {host}: {e}"));
            tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut answer = String::new();
            let _ = tls.read_to_string(&mut answer).await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        }
        // A name the certificate was not made for is refused.
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("other.test").unwrap();
        assert!(connector.connect(name, tcp).await.is_err());
        child.kill().unwrap();
        child.wait().unwrap();
    }
    assert_eq!(
        fingerprints[0], fingerprints[1],
        "a restart keeps the certificate"
    );
}
