//! The smallest HTTP/1.1 client the relay needs: one blocking `GET` over a `std` TCP stream,
//! its response head, and its body read incrementally (chunked, sized or until close).
//!
//! Blocking on purpose: the relay runs on the source thread like capture does, and
//! `Pcmcast::open` (synchronous) must see the upstream answer before the server binds. Every
//! wait (connecting, the head, the body) hands control back at least every [`POLL_INTERVAL`], so
//! that cancellation and a stalled upstream are noticed without another thread.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::chunked::{ChunkedDecoder, ChunkedError};
use super::url::RelayUrl;
use crate::net::ConnectError;
use crate::net::response::{HeadError, MAX_HEAD_BYTES, ResponseHead};

/// How long a body read waits before handing control back to the caller.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

const READ_BUFFER_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("cancelled")]
    Cancelled,
    #[error("the connection failed")]
    Io(#[source] io::Error),
    #[error("the server closed the connection without answering")]
    NoAnswer,
    #[error("the answer is not an HTTP/1.x response")]
    NotHttp,
    #[error("the response head is longer than {MAX_HEAD_BYTES} bytes")]
    HeadTooLong,
    #[error("bad Content-Length '{0}'")]
    BadLength(String),
    #[error("the response body is malformed")]
    Chunked(#[from] ChunkedError),
    #[error("the connection closed in the middle of the response body")]
    Truncated,
}

impl From<HeadError> for HttpError {
    fn from(error: HeadError) -> HttpError {
        match error {
            HeadError::NotHttp => HttpError::NotHttp,
            HeadError::TooLong => HttpError::HeadTooLong,
        }
    }
}

/// How the end of the body is known.
enum Body {
    Chunked(ChunkedDecoder),
    Length { left: u64 },
    UntilClose,
}

impl Body {
    /// Hands the body bytes in `input` to `out`; true once the body is complete.
    fn feed(&mut self, input: &[u8], out: &mut impl FnMut(&[u8])) -> Result<bool, HttpError> {
        match self {
            Body::Chunked(decoder) => Ok(decoder.feed(input, out)?),
            Body::Length { left } => {
                let take = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                if take > 0 {
                    out(&input[..take]);
                }
                *left -= take as u64;
                Ok(*left == 0)
            }
            Body::UntilClose => {
                if !input.is_empty() {
                    out(input);
                }
                Ok(false)
            }
        }
    }
}

/// What one [`Response::read_body`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Body bytes arrived (possibly only framing).
    Data,
    /// Nothing within [`POLL_INTERVAL`].
    Idle,
    /// The body is complete.
    End,
}

pub struct Response {
    pub head: ResponseHead,
    stream: TcpStream,
    body: Body,
    /// Body bytes that came in with the head, handed out by the first `read_body`.
    early: Vec<u8>,
    buffer: Box<[u8]>,
}

/// Sends `GET url` and reads the response head, all within `timeout`; gives up with
/// [`HttpError::Cancelled`] within [`POLL_INTERVAL`] of `cancel` firing.
pub fn get(
    url: &RelayUrl,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<Response, HttpError> {
    let deadline = Instant::now() + timeout;
    let mut stream = connect(url, deadline, cancel)?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: pcmcast/{} (relay)\r\nAccept: */*\r\n\
         Connection: close\r\n\r\n",
        url.target(),
        url.server().authority(),
        env!("CARGO_PKG_VERSION"),
    );
    stream
        .set_write_timeout(Some(timeout))
        .map_err(HttpError::Io)?;
    stream
        .write_all(request.as_bytes())
        .map_err(HttpError::Io)?;
    let (head, early) = read_head(&mut stream, deadline, timeout, cancel)?;
    let body = body_kind(&head)?;
    stream
        .set_read_timeout(Some(POLL_INTERVAL))
        .map_err(HttpError::Io)?;
    Ok(Response {
        head,
        stream,
        body,
        early,
        buffer: vec![0; READ_BUFFER_BYTES].into_boxed_slice(),
    })
}

/// Connects to the first address of the host that accepts, before `deadline`.
fn connect(
    url: &RelayUrl,
    deadline: Instant,
    cancel: &CancellationToken,
) -> Result<TcpStream, HttpError> {
    let server = url.server();
    let addrs: Vec<SocketAddr> = (server.host(), server.port())
        .to_socket_addrs()
        .map_err(|error| server.unresolved(error))?
        .collect();
    let mut last_error = io::Error::new(io::ErrorKind::NotFound, "the host has no address");
    for &addr in &addrs {
        match connect_to(addr, deadline, cancel) {
            Ok(Some(stream)) => return Ok(stream),
            Ok(None) => return Err(HttpError::Cancelled),
            Err(error) => last_error = error,
        }
    }
    Err(server.unreachable(last_error).into())
}

/// Connects to `addr` before `deadline` (a blocking stream), or `None` once `cancel` fires: a
/// host that drops the connection attempt keeps it pending for seconds.
fn connect_to(
    addr: SocketAddr,
    deadline: Instant,
    cancel: &CancellationToken,
) -> io::Result<Option<TcpStream>> {
    let mut stream = mio::net::TcpStream::connect(addr)?;
    let mut poll = mio::Poll::new()?;
    poll.registry()
        .register(&mut stream, mio::Token(0), mio::Interest::WRITABLE)?;
    let mut events = mio::Events::with_capacity(1);
    loop {
        if cancel.is_cancelled() {
            return Ok(None);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        match poll.poll(&mut events, Some(left.min(POLL_INTERVAL))) {
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            polled => polled?,
        }
        if events.is_empty() {
            continue;
        }
        if let Some(error) = stream.take_error()? {
            return Err(error);
        }
        // Writable and connected, unless the wake-up was spurious.
        match stream.peer_addr() {
            Ok(_) => break,
            Err(error) if error.kind() == io::ErrorKind::NotConnected => {}
            Err(error) => return Err(error),
        }
    }
    let stream = TcpStream::from(stream);
    stream.set_nonblocking(false)?;
    Ok(Some(stream))
}

/// Reads up to the end of the head; returns the head and the body bytes read past it.
fn read_head(
    stream: &mut TcpStream,
    deadline: Instant,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<(ResponseHead, Vec<u8>), HttpError> {
    let mut read_so_far = Vec::with_capacity(1024);
    let mut buffer = [0u8; 4096];
    loop {
        if cancel.is_cancelled() {
            return Err(HttpError::Cancelled);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HttpError::Timeout(timeout));
        }
        stream
            .set_read_timeout(Some(left.min(POLL_INTERVAL)))
            .map_err(HttpError::Io)?;
        let read = match stream.read(&mut buffer) {
            Ok(0) if read_so_far.is_empty() => return Err(HttpError::NoAnswer),
            Ok(0) => return Err(HttpError::NotHttp),
            Ok(read) => read,
            Err(error) if is_timeout(&error) || error.kind() == io::ErrorKind::Interrupted => {
                continue;
            }
            Err(error) => return Err(HttpError::Io(error)),
        };
        read_so_far.extend_from_slice(&buffer[..read]);
        if let Some(head) = ResponseHead::parse(&read_so_far)? {
            let early = read_so_far.split_off(head.len);
            return Ok((head, early));
        }
    }
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn body_kind(head: &ResponseHead) -> Result<Body, HttpError> {
    if let Some(codings) = head.field("transfer-encoding") {
        let last = codings.rsplit(',').next().unwrap_or_default().trim();
        if last.eq_ignore_ascii_case("chunked") {
            return Ok(Body::Chunked(ChunkedDecoder::default()));
        }
        return Ok(Body::UntilClose);
    }
    match head.field("content-length") {
        Some(length) => length
            .parse()
            .map(|left| Body::Length { left })
            .map_err(|_| HttpError::BadLength(length.to_owned())),
        None => Ok(Body::UntilClose),
    }
}

impl Response {
    /// Waits up to [`POLL_INTERVAL`] for body bytes and hands what arrives to `out`.
    pub fn read_body(&mut self, mut out: impl FnMut(&[u8])) -> Result<Progress, HttpError> {
        if !self.early.is_empty() {
            let early = std::mem::take(&mut self.early);
            return self.fed(&early, &mut out);
        }
        match self.stream.read(&mut self.buffer) {
            Ok(0) => match self.body {
                Body::UntilClose => Ok(Progress::End),
                _ => Err(HttpError::Truncated),
            },
            Ok(read) => {
                // The buffer is lent out while `body` decodes it; both are fields of `self`.
                let buffer = std::mem::take(&mut self.buffer);
                let progress = self.fed(&buffer[..read], &mut out);
                self.buffer = buffer;
                progress
            }
            Err(error) if is_timeout(&error) || error.kind() == io::ErrorKind::Interrupted => {
                Ok(Progress::Idle)
            }
            Err(error) => Err(HttpError::Io(error)),
        }
    }

    fn fed(&mut self, input: &[u8], out: &mut impl FnMut(&[u8])) -> Result<Progress, HttpError> {
        match self.body.feed(input, out)? {
            true => Ok(Progress::End),
            false => Ok(Progress::Data),
        }
    }

    /// The message of a pcmcast JSON error body (`{"error": "…"}`), if the body is one and
    /// comes within `timeout`.
    pub fn error_message(mut self, timeout: Duration) -> Option<String> {
        const MAX_ERROR_BYTES: usize = 4096;
        let deadline = Instant::now() + timeout;
        let mut body = Vec::new();
        while body.len() < MAX_ERROR_BYTES && Instant::now() < deadline {
            match self.read_body(|bytes| body.extend_from_slice(bytes)) {
                Ok(Progress::End) => break,
                Ok(Progress::Data | Progress::Idle) => {}
                Err(_) => return None,
            }
        }
        let json: serde_json::Value = serde_json::from_slice(&body).ok()?;
        json["error"].as_str().map(str::to_owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_ends_by_length_by_chunks_or_at_close() {
        let head = |fields: &str| {
            let head = format!("HTTP/1.1 200 OK\r\n{fields}\r\n");
            ResponseHead::parse(head.as_bytes()).unwrap().unwrap()
        };
        let mut sized = body_kind(&head("Content-Length: 5\r\n")).unwrap();
        let mut out = Vec::new();
        assert!(
            !sized
                .feed(b"abc", &mut |b| out.extend_from_slice(b))
                .unwrap()
        );
        assert!(
            sized
                .feed(b"defgh", &mut |b| out.extend_from_slice(b))
                .unwrap()
        );
        assert_eq!(out, b"abcde");
        let chunked = head("transfer-encoding: chunked\r\n");
        assert!(matches!(body_kind(&chunked), Ok(Body::Chunked(_))));
        let gzip = head("Transfer-Encoding: gzip\r\n");
        assert!(matches!(body_kind(&gzip), Ok(Body::UntilClose)));
        assert!(matches!(body_kind(&head("")), Ok(Body::UntilClose)));
        let bad = head("content-length: -1\r\n");
        assert!(matches!(body_kind(&bad), Err(HttpError::BadLength(_))));
    }
}
