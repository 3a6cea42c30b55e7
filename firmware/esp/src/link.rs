//! The cloud link: a TCP connection (TLS 1.3 for `wss://` and `https://`, checked against
//! `dash.ca_cert`), the WebSocket upgrade with the device token as a Bearer header
//! (PROTOCOL §1), text frames in and out, and plain HTTP GETs for firmware pulls
//! (PROTOCOL §10.3).

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use base64::Engine as _;
use embassy_net::dns::DnsQueryType;
use embassy_net::tcp::TcpSocket;
use embassy_net::Stack;
use embassy_time::Duration;
use embedded_io_async::Write;
use embedded_tls::pki::CertVerifier;
use embedded_tls::{
    Aes128GcmSha256, Certificate, CryptoProvider, NoClock, TlsConfig, TlsConnection, TlsContext,
    TlsError, TlsVerifier,
};
use embedded_websocket::{
    WebSocketClient, WebSocketOptions, WebSocketReceiveMessageType, WebSocketSendMessageType,
    WebSocketState,
};

use crate::rng::Entropy;

/// Socket buffers of one connection.
pub const TCP_BUFFER: usize = 4096;
/// A TLS record at most (16 KiB plus its overhead).
pub const TLS_RECORD: usize = 16_640;

/// What a URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Over TLS.
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path and query.
    pub path: String,
}

/// Reads `ws://`, `wss://`, `http://` and `https://` URLs.
pub fn parse_url(url: &str) -> Result<Target, String> {
    let (scheme, rest) = url.split_once("://").ok_or("not a URL")?;
    let tls = match scheme {
        "ws" | "http" => false,
        "wss" | "https" => true,
        other => return Err(format!("cannot connect over {other}://")),
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, port.parse().map_err(|_| "bad port")?),
        None => (authority, if tls { 443 } else { 80 }),
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    Ok(Target {
        tls,
        host: host.into(),
        port,
        path: path.into(),
    })
}

/// Why the link failed.
#[derive(Debug)]
pub enum LinkError {
    /// DNS, TCP or an IO error.
    Network(String),
    /// The TLS handshake or record layer failed.
    Tls(TlsError),
    /// The server answered something else than expected.
    Protocol(String),
}

impl core::fmt::Display for LinkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LinkError::Network(text) => write!(f, "network: {text}"),
            LinkError::Tls(e) => write!(f, "tls: {e:?}"),
            LinkError::Protocol(text) => write!(f, "protocol: {text}"),
        }
    }
}

/// A TLS provider that checks the server's chain against one CA and its name.
struct Checked<'a> {
    rng: Entropy,
    verifier: CertVerifier<'a, Aes128GcmSha256, NoClock, 4096>,
}

impl CryptoProvider for Checked<'_> {
    type CipherSuite = Aes128GcmSha256;
    type Signature = p256::ecdsa::DerSignature;

    fn rng(&mut self) -> impl embedded_tls::CryptoRngCore {
        &mut self.rng
    }

    fn verifier(&mut self) -> Result<&mut impl TlsVerifier<Self::CipherSuite>, TlsError> {
        Ok(&mut self.verifier)
    }
}

/// A byte stream to a server, plain or over TLS.
// A stream lives in its task's future for a whole session or download; boxing the TLS
// side would only move the same state to the heap, with an allocation per connection.
#[allow(clippy::large_enum_variant)]
pub enum Stream<'s> {
    /// Plain TCP.
    Plain(TcpSocket<'s>),
    /// TLS over TCP.
    Tls(TlsConnection<'s, TcpSocket<'s>, Aes128GcmSha256>),
}

impl Stream<'_> {
    /// Reads some bytes; 0 at the end.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, LinkError> {
        match self {
            Stream::Plain(socket) => socket
                .read(buf)
                .await
                .map_err(|e| LinkError::Network(format!("{e:?}"))),
            Stream::Tls(tls) => tls.read(buf).await.map_err(LinkError::Tls),
        }
    }

    /// Writes all of `bytes` and flushes.
    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), LinkError> {
        match self {
            Stream::Plain(socket) => {
                socket
                    .write_all(bytes)
                    .await
                    .map_err(|e| LinkError::Network(format!("{e:?}")))?;
                socket
                    .flush()
                    .await
                    .map_err(|e| LinkError::Network(format!("{e:?}")))
            }
            Stream::Tls(tls) => {
                tls.write_all(bytes).await.map_err(LinkError::Tls)?;
                tls.flush().await.map_err(LinkError::Tls)
            }
        }
    }
}

/// Buffers one connection needs; kept by the caller so a reconnect reuses them.
pub struct Buffers {
    rx: Vec<u8>,
    tx: Vec<u8>,
    tls_read: Vec<u8>,
    tls_write: Vec<u8>,
}

impl Buffers {
    /// Buffers for plain and TLS connections.
    pub fn new() -> Buffers {
        Buffers {
            rx: vec![0; TCP_BUFFER],
            tx: vec![0; TCP_BUFFER],
            tls_read: vec![0; TLS_RECORD],
            tls_write: vec![0; TLS_RECORD],
        }
    }
}

/// Connects to `target`: DNS, TCP, and TLS checked against `ca_der` when it asks for TLS.
pub async fn connect<'s>(
    stack: Stack<'s>,
    target: &Target,
    ca_der: &'s [u8],
    buffers: &'s mut Buffers,
    timeout: Duration,
) -> Result<Stream<'s>, LinkError> {
    let address = match target.host.parse() {
        Ok(address) => address,
        Err(_) => *stack
            .dns_query(&target.host, DnsQueryType::A)
            .await
            .map_err(|e| LinkError::Network(format!("cannot resolve {}: {e:?}", target.host)))?
            .first()
            .ok_or_else(|| LinkError::Network(format!("{} has no address", target.host)))?,
    };
    let mut socket = TcpSocket::new(stack, &mut buffers.rx, &mut buffers.tx);
    socket.set_timeout(Some(timeout));
    socket
        .connect((address, target.port))
        .await
        .map_err(|e| LinkError::Network(format!("cannot connect to {}: {e:?}", target.host)))?;
    // Idle links are kept alive by the server's pings (PROTOCOL §1); a dead one is found
    // by this timeout.
    socket.set_timeout(Some(Duration::from_secs(90)));
    if !target.tls {
        return Ok(Stream::Plain(socket));
    }
    if ca_der.is_empty() {
        return Err(LinkError::Protocol(
            "wss:// needs dash.ca_cert (base64 DER of the server's certificate authority)".into(),
        ));
    }
    let config = TlsConfig::new().with_server_name(&target.host);
    let mut tls = TlsConnection::new(socket, &mut buffers.tls_read, &mut buffers.tls_write);
    let provider = Checked {
        rng: Entropy,
        verifier: CertVerifier::new(Certificate::X509(ca_der)),
    };
    tls.open(TlsContext::new(&config, provider))
        .await
        .map_err(LinkError::Tls)?;
    Ok(Stream::Tls(tls))
}

/// Decodes `dash.ca_cert`.
pub fn ca_from_config(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .unwrap_or_default()
}

/// A WebSocket client session on a stream.
pub struct WebSocket<'s> {
    stream: Stream<'s>,
    ws: WebSocketClient<Entropy>,
    /// Raw bytes read but not yet decoded.
    pending: Vec<u8>,
    /// `pending` ends in a frame that needs more bytes.
    incomplete: bool,
    frame: Vec<u8>,
}

/// What one read from the socket gave.
pub enum Incoming {
    /// Text (or binary) payload bytes; a JSON value may span several.
    Data(Vec<u8>),
    /// Nothing for the caller (a ping answered, a partial frame).
    Nothing,
}

impl<'s> WebSocket<'s> {
    /// Upgrades `stream` to a WebSocket on `target` with `token` as Bearer.
    pub async fn open(
        mut stream: Stream<'s>,
        target: &Target,
        token: &str,
    ) -> Result<WebSocket<'s>, LinkError> {
        let mut ws = WebSocketClient::new_client(Entropy);
        let authorization = format!("Authorization: Bearer {token}");
        let headers = [authorization.as_str()];
        let options = WebSocketOptions {
            path: &target.path,
            host: &target.host,
            origin: "",
            sub_protocols: None,
            additional_headers: Some(&headers),
        };
        let mut buffer = vec![0u8; 1024];
        let (length, key) = ws
            .client_connect(&options, &mut buffer)
            .map_err(|e| LinkError::Protocol(format!("{e:?}")))?;
        stream.write_all(&buffer[..length]).await?;
        let mut received = 0;
        loop {
            if received == buffer.len() {
                return Err(LinkError::Protocol("the upgrade answer is too long".into()));
            }
            let n = stream.read(&mut buffer[received..]).await?;
            if n == 0 {
                return Err(LinkError::Protocol("closed during the upgrade".into()));
            }
            received += n;
            match ws.client_accept(&key, &buffer[..received]) {
                Ok((used, _)) => {
                    let pending = buffer[used..received].to_vec();
                    return Ok(WebSocket {
                        stream,
                        ws,
                        pending,
                        incomplete: false,
                        frame: vec![0; 2048],
                    });
                }
                Err(embedded_websocket::Error::HttpHeaderIncomplete) => continue,
                Err(e) => {
                    let status = core::str::from_utf8(&buffer[..received.min(40)]).unwrap_or("");
                    return Err(LinkError::Protocol(format!(
                        "upgrade refused ({e:?}): {status}"
                    )));
                }
            }
        }
    }

    /// Sends one text frame.
    pub async fn send(&mut self, text: &str) -> Result<(), LinkError> {
        let mut out = vec![0u8; text.len() + 16];
        let length = self
            .ws
            .write(
                WebSocketSendMessageType::Text,
                true,
                text.as_bytes(),
                &mut out,
            )
            .map_err(|e| LinkError::Protocol(format!("{e:?}")))?;
        self.stream.write_all(&out[..length]).await
    }

    /// Waits for the next bytes and decodes what frames they complete.
    pub async fn receive(&mut self) -> Result<Incoming, LinkError> {
        // Bytes left over from the upgrade may hold whole frames: decode those before
        // waiting for more.
        if self.pending.is_empty() || self.incomplete {
            self.incomplete = false;
            let mut chunk = [0u8; 1024];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(LinkError::Network("closed by the server".into()));
            }
            self.pending.extend_from_slice(&chunk[..n]);
        }
        let mut data = Vec::new();
        loop {
            if self.pending.is_empty() {
                break;
            }
            if self.frame.len() < self.pending.len() + 16 {
                self.frame.resize(self.pending.len() + 16, 0);
            }
            let result = match self.ws.read(&self.pending, &mut self.frame) {
                Ok(result) => result,
                Err(embedded_websocket::Error::ReadFrameIncomplete) => {
                    self.incomplete = true;
                    break;
                }
                Err(e) => return Err(LinkError::Protocol(format!("{e:?}"))),
            };
            if result.len_from == 0 && result.len_to == 0 {
                self.incomplete = true;
                break;
            }
            let payload = self.frame[..result.len_to].to_vec();
            self.pending.drain(..result.len_from);
            match result.message_type {
                WebSocketReceiveMessageType::Text | WebSocketReceiveMessageType::Binary => {
                    data.extend_from_slice(&payload);
                }
                WebSocketReceiveMessageType::Ping => {
                    let mut out = vec![0u8; payload.len() + 16];
                    let length = self
                        .ws
                        .write(WebSocketSendMessageType::Pong, true, &payload, &mut out)
                        .map_err(|e| LinkError::Protocol(format!("{e:?}")))?;
                    self.stream.write_all(&out[..length]).await?;
                }
                WebSocketReceiveMessageType::CloseMustReply
                | WebSocketReceiveMessageType::CloseCompleted => {
                    return Err(LinkError::Network("closed by the server".into()));
                }
                WebSocketReceiveMessageType::Pong => {}
            }
            if self.ws.state != WebSocketState::Open {
                return Err(LinkError::Network("the WebSocket closed".into()));
            }
        }
        Ok(if data.is_empty() {
            Incoming::Nothing
        } else {
            Incoming::Data(data)
        })
    }
}

/// The head of an HTTP response to a GET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// `Content-Length`, when given.
    pub length: Option<u64>,
}

/// Sends `GET target` with an optional Bearer token and reads the response head; the
/// body follows on the returned stream, with any body bytes already read.
pub async fn get<'s>(
    mut stream: Stream<'s>,
    target: &Target,
    token: Option<&str>,
) -> Result<(ResponseHead, Vec<u8>, Stream<'s>), LinkError> {
    let mut request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: herd-light\r\n",
        target.path, target.host
    );
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(LinkError::Protocol(
                "closed before the response head".into(),
            ));
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = head.split_off(end + 4);
            let text = core::str::from_utf8(&head)
                .map_err(|_| LinkError::Protocol("bad response head".into()))?;
            return Ok((parse_head(text)?, rest, stream));
        }
        if head.len() > 8192 {
            return Err(LinkError::Protocol("response head too long".into()));
        }
    }
}

fn parse_head(text: &str) -> Result<ResponseHead, LinkError> {
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| LinkError::Protocol("no status line".into()))?;
    let mut length = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok();
            }
        }
    }
    Ok(ResponseHead { status, length })
}

/// The error text of a failed link, for logs and `reported.ota.message`.
pub fn describe(error: &LinkError) -> String {
    error.to_string()
}
