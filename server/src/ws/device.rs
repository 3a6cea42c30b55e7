//! The server side of RFC 6455 framing for device sockets, written for connections that are
//! idle almost all of their lives.
//!
//! tungstenite keeps a read and a write buffer per socket at the capacity of the largest
//! frame each way, about 2.1 KiB per device for the life of the connection (a heap profile
//! of 3,000 idle devices, docs/BENCHMARKS.md). Here a socket holds no heap memory between
//! messages: bytes are read into a buffer on the stack of the poll, only the part of a frame
//! that has not fully arrived is kept, and output lives only until it is written. Reading is
//! poll-based, so [`DeviceSocket::next`] is cancel-safe and its future holds nothing but a
//! reference: the session waits on it inside `select!` without carrying a buffer.
//!
//! What a device sends is checked as RFC 6455 §5 says a server must: client frames are
//! masked, no reserved bits, control frames short and unfragmented, continuation frames only
//! inside a fragmented message, text UTF-8, and no message over the limit (checked from the
//! frame header, before the payload is read).

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Close codes (RFC 6455 §7.4.1).
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const INVALID_DATA: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const SIZE: u16 = 1009;
}

/// How much one poll reads at most; it lives on the poll's stack, not in the socket.
const READ_CHUNK: usize = 2048;

/// A message from the device.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A whole text or binary message (text is checked to be UTF-8).
    Data(Vec<u8>),
    /// A ping; its pong is queued and goes out with the next [`DeviceSocket::flush`].
    Ping,
    Pong,
    /// The device closes; the reply is queued. The code, when it sent one.
    Close(Option<u16>),
}

/// Why the socket cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("message over the limit of {limit} bytes")]
    TooBig { limit: usize },
    #[error("text message is not UTF-8")]
    NotUtf8,
}

impl WsError {
    /// The close code to tell the device, when the socket can still carry one.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            WsError::Io(_) => None,
            WsError::Protocol(_) => Some(close::PROTOCOL),
            WsError::TooBig { .. } => Some(close::SIZE),
            WsError::NotUtf8 => Some(close::INVALID_DATA),
        }
    }
}

/// One device's WebSocket after the upgrade.
pub struct DeviceSocket<T> {
    io: T,
    /// Bytes read but not yet making a whole frame; unallocated between frames.
    input: Vec<u8>,
    /// A fragmented message being gathered: whether it is text, and its bytes so far.
    fragments: Option<Box<(bool, Vec<u8>)>>,
    /// Frames queued for the next flush; unallocated once written.
    output: Vec<u8>,
    max_message: usize,
    /// The device's close frame arrived: nothing more is read.
    closed: bool,
}

/// A frame header as read (RFC 6455 §5.2).
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    len: u64,
    header_len: usize,
}

impl Header {
    /// The header at the start of `bytes`, or `None` when it has not fully arrived.
    fn parse(bytes: &[u8]) -> Result<Option<Header>, WsError> {
        let [b0, b1, ..] = *bytes else {
            return Ok(None);
        };
        if b0 & 0x70 != 0 {
            return Err(WsError::Protocol("reserved bits set without an extension"));
        }
        if b1 & 0x80 == 0 {
            return Err(WsError::Protocol("client frames must be masked"));
        }
        let (len, at) = match b1 & 0x7f {
            126 => match bytes.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return Ok(None),
            },
            127 => match bytes.get(2..10) {
                Some(b) => {
                    let len = u64::from_be_bytes(b.try_into().expect("eight bytes"));
                    if len >> 63 != 0 {
                        return Err(WsError::Protocol("payload length with the top bit set"));
                    }
                    (len, 10)
                }
                None => return Ok(None),
            },
            short => (u64::from(short), 2),
        };
        let Some(mask) = bytes.get(at..at + 4) else {
            return Ok(None);
        };
        Ok(Some(Header {
            fin: b0 & 0x80 != 0,
            opcode: b0 & 0x0f,
            mask: mask.try_into().expect("four bytes"),
            len,
            header_len: at + 4,
        }))
    }
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let value = u32::from_ne_bytes(chunk.try_into().expect("four bytes")) ^ word;
        chunk.copy_from_slice(&value.to_ne_bytes());
    }
    for (byte, m) in chunks.into_remainder().iter_mut().zip(mask) {
        *byte ^= m;
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> DeviceSocket<T> {
    /// Frames `io`, refusing messages over `max_message` bytes.
    pub fn new(io: T, max_message: usize) -> Self {
        Self {
            io,
            input: Vec::new(),
            fragments: None,
            output: Vec::new(),
            max_message,
            closed: false,
        }
    }

    /// The next message; `None` once the device closed the connection. Cancel-safe.
    pub async fn next(&mut self) -> Option<Result<Incoming, WsError>> {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Polls for the next message (see [`DeviceSocket::next`]).
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Incoming, WsError>>> {
        loop {
            if self.closed {
                return Poll::Ready(None);
            }
            match self.parse() {
                Ok(Some(message)) => return Poll::Ready(Some(Ok(message))),
                Ok(None) => {}
                Err(e) => {
                    self.closed = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut buf = ReadBuf::new(&mut chunk);
            if let Err(e) = ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf)) {
                self.closed = true;
                return Poll::Ready(Some(Err(e.into())));
            }
            if buf.filled().is_empty() {
                self.closed = true;
                if self.input.is_empty() && self.fragments.is_none() {
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Err(WsError::Io(io::ErrorKind::UnexpectedEof.into()))));
            }
            self.input.extend_from_slice(buf.filled());
        }
    }

    /// Takes whole frames from the input until one makes a message.
    fn parse(&mut self) -> Result<Option<Incoming>, WsError> {
        loop {
            let Some(header) = Header::parse(&self.input)? else {
                return Ok(None);
            };
            let control = header.opcode & 0x8 != 0;
            if control && (!header.fin || header.len > 125) {
                return Err(WsError::Protocol(
                    "control frames must be whole and at most 125 bytes",
                ));
            }
            let gathered = self.fragments.as_ref().map_or(0, |f| f.1.len());
            if !control && header.len.saturating_add(gathered as u64) > self.max_message as u64 {
                return Err(WsError::TooBig {
                    limit: self.max_message,
                });
            }
            let total = header.header_len + header.len as usize;
            if self.input.len() < total {
                self.input.reserve(total - self.input.len());
                return Ok(None);
            }
            let mut payload = self.input[header.header_len..total].to_vec();
            if self.input.len() == total {
                // Nothing of the next frame: give the memory back while the device is quiet.
                self.input = Vec::new();
            } else {
                self.input.drain(..total);
            }
            unmask(&mut payload, header.mask);
            if let Some(message) = self.on_frame(&header, payload)? {
                return Ok(Some(message));
            }
        }
    }

    fn on_frame(&mut self, header: &Header, payload: Vec<u8>) -> Result<Option<Incoming>, WsError> {
        match header.opcode {
            OP_TEXT | OP_BINARY => {
                if self.fragments.is_some() {
                    return Err(WsError::Protocol(
                        "a new message inside a fragmented message",
                    ));
                }
                let text = header.opcode == OP_TEXT;
                if header.fin {
                    return whole(text, payload).map(Some);
                }
                self.fragments = Some(Box::new((text, payload)));
                Ok(None)
            }
            OP_CONTINUATION => {
                let Some(fragments) = self.fragments.as_mut() else {
                    return Err(WsError::Protocol("a continuation frame with no message"));
                };
                fragments.1.extend_from_slice(&payload);
                if !header.fin {
                    return Ok(None);
                }
                let (text, bytes) = *self.fragments.take().expect("gathering");
                whole(text, bytes).map(Some)
            }
            OP_PING => {
                self.queue(OP_PONG, &payload);
                Ok(Some(Incoming::Ping))
            }
            OP_PONG => Ok(Some(Incoming::Pong)),
            OP_CLOSE => {
                let code = match payload.len() {
                    0 => None,
                    1 => return Err(WsError::Protocol("a close frame with a one-byte body")),
                    _ => {
                        if std::str::from_utf8(&payload[2..]).is_err() {
                            return Err(WsError::NotUtf8);
                        }
                        Some(u16::from_be_bytes([payload[0], payload[1]]))
                    }
                };
                // RFC 6455 §5.5.1: answer with a close frame, echoing the code.
                match code {
                    Some(code) => self.queue(OP_CLOSE, &code.to_be_bytes()),
                    None => self.queue(OP_CLOSE, &[]),
                }
                self.closed = true;
                Ok(Some(Incoming::Close(code)))
            }
            _ => Err(WsError::Protocol("unknown opcode")),
        }
    }

    fn queue(&mut self, opcode: u8, payload: &[u8]) {
        let out = &mut self.output;
        out.reserve(payload.len() + 10);
        out.push(0x80 | opcode);
        match payload.len() {
            len @ 0..=125 => out.push(len as u8),
            len @ 126..=0xffff => {
                out.push(126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
    }

    /// Queues a text message for the next flush.
    pub fn queue_text(&mut self, text: &str) {
        self.queue(OP_TEXT, text.as_bytes());
    }

    /// Queues a ping for the next flush.
    pub fn queue_ping(&mut self) {
        self.queue(OP_PING, &[]);
    }

    /// Queues a close frame for the next flush; the reason is cut to fit a control frame.
    pub fn queue_close(&mut self, code: u16, reason: &str) {
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let mut body = Vec::with_capacity(2 + end);
        body.extend_from_slice(&code.to_be_bytes());
        body.extend_from_slice(&reason.as_bytes()[..end]);
        self.queue(OP_CLOSE, &body);
    }

    /// Writes what is queued. Not cancel-safe: a write given up halfway ends the socket.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.output.is_empty() {
            self.io.write_all(&self.output).await?;
            self.output = Vec::new();
        }
        self.io.flush().await
    }

    /// Queues `text` and writes it.
    pub async fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.queue_text(text);
        self.flush().await
    }
}

fn whole(text: bool, bytes: Vec<u8>) -> Result<Incoming, WsError> {
    if text && std::str::from_utf8(&bytes).is_err() {
        return Err(WsError::NotUtf8);
    }
    Ok(Incoming::Data(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncReadExt};

    /// A client frame as a device would send it: masked.
    fn frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            len @ 0..=125 => out.push(0x80 | len as u8),
            len @ 126..=0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        let mut body = payload.to_vec();
        unmask(&mut body, mask);
        out.extend_from_slice(&body);
        out
    }

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    type Seen = Vec<Result<Incoming, (String, Option<u16>)>>;

    /// Every message `socket` reads, until the end or the first error (kept, with its code).
    async fn read_all<T: AsyncRead + AsyncWrite + Unpin>(socket: &mut DeviceSocket<T>) -> Seen {
        let mut seen = Vec::new();
        while let Some(next) = socket.next().await {
            let failed = next.is_err();
            seen.push(next.map_err(|e| (e.to_string(), e.close_code())));
            if failed {
                break;
            }
        }
        seen
    }

    /// What the server reads from `bytes` followed by end of stream, and what it wrote.
    async fn feed(bytes: &[u8], max: usize) -> (Seen, Vec<u8>) {
        let (mut client, server) = duplex(1 << 20);
        client.write_all(bytes).await.unwrap();
        client.shutdown().await.unwrap();
        let mut socket = DeviceSocket::new(server, max);
        let seen = read_all(&mut socket).await;
        socket.flush().await.unwrap();
        drop(socket);
        let mut written = Vec::new();
        client.read_to_end(&mut written).await.unwrap();
        (seen, written)
    }

    #[tokio::test]
    async fn whole_fragmented_and_interleaved_messages() {
        let mut bytes = frame(true, OP_TEXT, b"{\"id\":1}", MASK);
        bytes.extend(frame(false, OP_TEXT, b"{\"a\":", MASK));
        bytes.extend(frame(true, OP_PING, b"hi", MASK));
        bytes.extend(frame(false, OP_CONTINUATION, b"\"\xc3", MASK));
        bytes.extend(frame(true, OP_CONTINUATION, b"\xa9\"}", MASK));
        bytes.extend(frame(true, OP_BINARY, &[0u8; 300], MASK));
        bytes.extend(frame(true, OP_BINARY, &vec![7u8; 70_000], MASK));
        bytes.extend(frame(true, OP_CLOSE, &1000u16.to_be_bytes(), MASK));
        let (seen, written) = feed(&bytes, 1 << 20).await;
        assert_eq!(
            seen,
            vec![
                Ok(Incoming::Data(b"{\"id\":1}".to_vec())),
                Ok(Incoming::Ping),
                Ok(Incoming::Data("{\"a\":\"é\"}".as_bytes().to_vec())),
                Ok(Incoming::Data(vec![0u8; 300])),
                Ok(Incoming::Data(vec![7u8; 70_000])),
                Ok(Incoming::Close(Some(1000))),
            ]
        );
        // The pong echoes the ping's payload; the close reply echoes the code.
        assert_eq!(written, [0x8a, 2, b'h', b'i', 0x88, 2, 0x03, 0xe8]);
    }

    #[tokio::test]
    async fn frames_arriving_a_byte_at_a_time() {
        let (mut client, server) = duplex(1);
        let mut bytes = frame(true, OP_TEXT, &[b'x'; 200], MASK);
        bytes.extend(frame(true, OP_TEXT, b"y", MASK));
        let writer = tokio::spawn(async move {
            for byte in bytes {
                client.write_all(&[byte]).await.unwrap();
            }
            client
        });
        let mut socket = DeviceSocket::new(server, 1024);
        assert_eq!(
            socket.next().await.unwrap().unwrap(),
            Incoming::Data(vec![b'x'; 200])
        );
        assert_eq!(
            socket.next().await.unwrap().unwrap(),
            Incoming::Data(b"y".to_vec())
        );
        assert!(socket.input.capacity() == 0, "nothing kept between frames");
        drop(writer.await.unwrap());
        assert!(socket.next().await.is_none());
    }

    #[tokio::test]
    async fn a_read_given_up_in_select_loses_nothing() {
        let (mut client, server) = duplex(64);
        let mut socket = DeviceSocket::new(server, 1024);
        let bytes = frame(true, OP_TEXT, b"{\"id\":42}", MASK);
        client.write_all(&bytes[..5]).await.unwrap();
        // The read is dropped after it took the first bytes.
        let timed_out =
            tokio::time::timeout(std::time::Duration::from_millis(20), socket.next()).await;
        assert!(timed_out.is_err());
        client.write_all(&bytes[5..]).await.unwrap();
        assert_eq!(
            socket.next().await.unwrap().unwrap(),
            Incoming::Data(b"{\"id\":42}".to_vec())
        );
    }

    #[tokio::test]
    async fn what_a_server_must_refuse() {
        let unmasked = {
            let mut f = frame(true, OP_TEXT, b"a", MASK);
            f[1] &= 0x7f;
            f.drain(2..6);
            f
        };
        let cases: Vec<(&str, Vec<u8>, u16)> = vec![
            ("unmasked", unmasked, close::PROTOCOL),
            (
                "reserved bits",
                {
                    let mut f = frame(true, OP_TEXT, b"a", MASK);
                    f[0] |= 0x40;
                    f
                },
                close::PROTOCOL,
            ),
            (
                "unknown opcode",
                frame(true, 0x3, b"a", MASK),
                close::PROTOCOL,
            ),
            (
                "fragmented ping",
                frame(false, OP_PING, b"", MASK),
                close::PROTOCOL,
            ),
            (
                "long ping",
                frame(true, OP_PING, &[0; 126], MASK),
                close::PROTOCOL,
            ),
            (
                "stray continuation",
                frame(true, OP_CONTINUATION, b"a", MASK),
                close::PROTOCOL,
            ),
            (
                "new message inside one",
                {
                    let mut f = frame(false, OP_TEXT, b"a", MASK);
                    f.extend(frame(true, OP_TEXT, b"b", MASK));
                    f
                },
                close::PROTOCOL,
            ),
            (
                "one-byte close",
                frame(true, OP_CLOSE, b"x", MASK),
                close::PROTOCOL,
            ),
            (
                "bad UTF-8",
                frame(true, OP_TEXT, b"\xff\xfe", MASK),
                close::INVALID_DATA,
            ),
            (
                "bad UTF-8 across fragments",
                {
                    let mut f = frame(false, OP_TEXT, b"\xc3", MASK);
                    f.extend(frame(true, OP_CONTINUATION, b"(", MASK));
                    f
                },
                close::INVALID_DATA,
            ),
            (
                "over the limit",
                frame(true, OP_TEXT, &[b'a'; 101], MASK),
                close::SIZE,
            ),
            (
                "over the limit across fragments",
                {
                    let mut f = frame(false, OP_TEXT, &[b'a'; 60], MASK);
                    f.extend(frame(true, OP_CONTINUATION, &[b'a'; 60], MASK));
                    f
                },
                close::SIZE,
            ),
        ];
        for (what, bytes, code) in cases {
            let (seen, _) = feed(&bytes, 100).await;
            let Some(Err((error, refused))) = seen.last() else {
                panic!("{what}: accepted: {seen:?}");
            };
            assert_eq!(*refused, Some(code), "{what}: {error}");
        }
    }

    #[tokio::test]
    async fn a_huge_declared_length_is_refused_before_its_payload() {
        // The header alone says 1 GiB: refused at once, nothing reserved for it.
        let mut bytes = vec![0x81, 0x80 | 127];
        bytes.extend_from_slice(&(1u64 << 30).to_be_bytes());
        bytes.extend_from_slice(&MASK);
        let (seen, _) = feed(&bytes, 64 * 1024).await;
        assert_eq!(seen.len(), 1);
        assert_eq!(
            seen[0].as_ref().unwrap_err().1,
            Some(close::SIZE),
            "{seen:?}"
        );
    }

    #[tokio::test]
    async fn a_half_written_frame_then_eof_is_an_error_not_a_message() {
        let bytes = frame(true, OP_TEXT, b"{\"id\":1}", MASK);
        let (seen, _) = feed(&bytes[..bytes.len() - 2], 1024).await;
        assert_eq!(seen.len(), 1);
        assert!(seen[0].is_err(), "{seen:?}");
    }

    #[tokio::test]
    async fn written_frames_are_unmasked_and_sized() {
        let (mut client, server) = duplex(1 << 20);
        let mut socket = DeviceSocket::new(server, 1024);
        socket.queue_text("hi");
        socket.queue_ping();
        socket.queue_text(&"z".repeat(200));
        socket.queue_close(close::AWAY, &"é".repeat(100));
        socket.flush().await.unwrap();
        assert_eq!(socket.output.capacity(), 0, "output freed once written");
        drop(socket);
        let mut written = Vec::new();
        client.read_to_end(&mut written).await.unwrap();
        assert_eq!(&written[..4], [0x81, 2, b'h', b'i']);
        assert_eq!(&written[4..6], [0x89, 0]);
        assert_eq!(&written[6..10], [0x81, 126, 0, 200]);
        let close = &written[210..];
        assert_eq!(close[0], 0x88);
        assert!(close[1] <= 125);
        assert_eq!(&close[2..4], 1001u16.to_be_bytes());
        assert!(
            std::str::from_utf8(&close[4..]).is_ok(),
            "cut at a char boundary"
        );
    }

    #[test]
    fn unmasking_twice_gives_the_bytes_back() {
        for len in 0..20 {
            let original: Vec<u8> = (0..len as u8).collect();
            let mut bytes = original.clone();
            unmask(&mut bytes, MASK);
            if len > 0 {
                assert_ne!(bytes, original);
            }
            unmask(&mut bytes, MASK);
            assert_eq!(bytes, original);
        }
    }

    /// Input handed over in the given pieces, one per read, with a `Pending` between
    /// them, as a slow network would.
    struct Pieces {
        pieces: std::collections::VecDeque<Vec<u8>>,
        ready: bool,
    }

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if !self.ready {
                self.ready = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.ready = false;
            if let Some(mut piece) = self.pieces.pop_front() {
                let n = piece.len().min(buf.remaining());
                buf.put_slice(&piece[..n]);
                if n < piece.len() {
                    self.pieces.push_front(piece.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Pieces {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Everything read from `bytes` cut at `cuts`, until the end or the first error.
    fn read_in_pieces(bytes: &[u8], cuts: &[usize], max: usize) -> Seen {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        points.sort_unstable();
        points.dedup();
        let mut pieces = std::collections::VecDeque::new();
        let mut at = 0;
        for point in points.into_iter().chain([bytes.len()]) {
            if point > at {
                pieces.push_back(bytes[at..point].to_vec());
                at = point;
            }
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let mut socket = DeviceSocket::new(
                Pieces {
                    pieces,
                    ready: false,
                },
                max,
            );
            read_all(&mut socket).await
        })
    }

    proptest::proptest! {
        /// Whatever the messages, their fragments, masks and the way the bytes arrive, the
        /// same messages come out.
        #[test]
        fn messages_survive_any_fragmenting_and_any_cutting(
            messages in proptest::collection::vec(
                (proptest::bool::ANY, ".{0,40}", proptest::collection::vec(proptest::num::u8::ANY, 0..300), 1usize..4),
                1..6,
            ),
            masks in proptest::collection::vec(proptest::array::uniform4(proptest::num::u8::ANY), 8),
            cuts in proptest::collection::vec(proptest::num::usize::ANY, 0..20),
        ) {
            let mut bytes = Vec::new();
            let mut expected = Vec::new();
            for (i, (text, string, binary, parts)) in messages.iter().enumerate() {
                let payload = if *text { string.as_bytes().to_vec() } else { binary.clone() };
                let opcode = if *text { OP_TEXT } else { OP_BINARY };
                // Cut into `parts` fragments (at byte positions: fragments of text need not
                // be valid UTF-8 on their own).
                let step = payload.len().div_ceil(*parts).max(1);
                let chunks: Vec<&[u8]> = if payload.is_empty() { vec![&[][..]] } else { payload.chunks(step).collect() };
                for (j, chunk) in chunks.iter().enumerate() {
                    let first = j == 0;
                    let last = j + 1 == chunks.len();
                    let op = if first { opcode } else { OP_CONTINUATION };
                    bytes.extend(frame(last, op, chunk, masks[(i + j) % masks.len()]));
                }
                expected.push(Ok(Incoming::Data(payload)));
            }
            proptest::prop_assert_eq!(read_in_pieces(&bytes, &cuts, 1 << 16), expected);
        }

        /// Arbitrary bytes never panic the reader: they end in messages, then the end or
        /// one error.
        #[test]
        fn arbitrary_bytes_end_cleanly(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            cuts in proptest::collection::vec(proptest::num::usize::ANY, 0..10),
        ) {
            let seen = read_in_pieces(&bytes, &cuts, 256);
            for item in seen.iter().rev().skip(1) {
                proptest::prop_assert!(item.is_ok());
            }
        }
    }
}
