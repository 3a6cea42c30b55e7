//! The accept loop: TCP (optionally TLS) connections served by hyper with upgrades, so REST,
//! device sockets and notify streams share one port (PROTOCOL §1, §5, §6).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for in-flight HTTP requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds a TLS acceptor from PEM files.
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert).with_context(|| format!("cannot open {}", cert.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| format!("cannot read certificates from {}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("no certificate found in {}", cert.display());
    }
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).with_context(|| format!("cannot open {}", key.display()))?,
    ))
    .with_context(|| format!("cannot read private key from {}", key.display()))?
    .with_context(|| format!("no private key found in {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("invalid certificate or key")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `router` on `listener` until `shutdown` fires, then drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    let builder = Arc::new(builder);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let result =
                match tls {
                    None => {
                        let conn =
                            builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                        watcher.watch(conn.into_owned()).await
                    }
                    Some(acceptor) => {
                        let stream =
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(stream)) => stream,
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                        let conn =
                            builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                        watcher.watch(conn.into_owned()).await
                    }
                };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some HTTP connections did not finish in time");
    }
}

/// A certificate the server made for itself (`herd-server --tls-self-signed`): where its
/// files are and the SHA-256 fingerprint clients can check it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfSigned {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// SHA-256 of the certificate (DER), uppercase hex pairs joined by `:`.
    pub fingerprint: String,
}

/// Makes, or finds from an earlier start, a self-signed certificate for `names` in
/// `<data dir>/tls/` (the key readable by its owner only), so a server reachable over TLS
/// needs no certificate authority. The certificate stays the same across restarts, so
/// clients that trusted it keep trusting it.
pub fn self_signed(data_dir: &Path, names: &[String]) -> anyhow::Result<SelfSigned> {
    use std::io::Write;
    let dir = data_dir.join("tls");
    let cert = dir.join("self-signed.pem");
    let key = dir.join("self-signed.key");
    if !(cert.exists() && key.exists()) {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let made = rcgen::generate_simple_self_signed(names.to_vec())
            .context("cannot make a self-signed certificate")?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options
            .open(&key)
            .with_context(|| format!("cannot write {}", key.display()))?;
        file.write_all(made.signing_key.serialize_pem().as_bytes())?;
        file.sync_all()?;
        std::fs::write(&cert, made.cert.pem())
            .with_context(|| format!("cannot write {}", cert.display()))?;
    }
    let der = rustls_pemfile::certs(&mut std::io::BufReader::new(std::fs::File::open(&cert)?))
        .next()
        .context("no certificate in the self-signed file")??;
    let digest = <sha2::Sha256 as sha2::Digest>::digest(der.as_ref());
    let fingerprint = digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    Ok(SelfSigned {
        cert,
        key,
        fingerprint,
    })
}

#[cfg(test)]
mod self_signed_tests {
    use super::*;

    #[test]
    fn made_once_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string()];
        let first = self_signed(dir.path(), &names).unwrap();
        assert_eq!(first.fingerprint.len(), 32 * 3 - 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&first.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "the key is its owner's alone");
        }
        let again = self_signed(dir.path(), &names).unwrap();
        assert_eq!(again, first, "a restart keeps the certificate");
        assert!(tls_acceptor(&first.cert, &first.key).is_ok());
    }
}
