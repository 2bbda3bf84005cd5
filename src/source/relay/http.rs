//! The smallest HTTP/1.1 client the relay needs: one blocking `GET` over a `std` TCP stream,
//! its response head, and its body read incrementally (chunked, sized or until close).
//!
//! Blocking on purpose: the relay runs on the source thread like capture does, and
//! `Pcmcast::open` (synchronous) must see the upstream answer before the server binds. Reads
//! after the head time out every [`POLL_INTERVAL`], so the caller can notice cancellation and a
//! stalled upstream without another thread.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::chunked::{ChunkedDecoder, ChunkedError};
use super::url::RelayUrl;

/// How long a body read waits before handing control back to the caller.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Most bytes a response head may take; pcmcast's are a few hundred.
const MAX_HEAD_BYTES: usize = 16 * 1024;
const READ_BUFFER_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot resolve {host}")]
    Resolve {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot connect to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("no response within {0:?}")]
    Timeout(Duration),
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
    pub status: u16,
    pub reason: String,
    headers: Vec<(String, String)>,
    stream: TcpStream,
    body: Body,
    /// Body bytes that came in with the head, handed out by the first `read_body`.
    early: Vec<u8>,
    buffer: Box<[u8]>,
}

/// Sends `GET url` and reads the response head, all within `timeout`.
pub fn get(url: &RelayUrl, timeout: Duration) -> Result<Response, HttpError> {
    let deadline = Instant::now() + timeout;
    let mut stream = connect(url, deadline)?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: pcmcast/{} (relay)\r\nAccept: */*\r\n\
         Connection: close\r\n\r\n",
        url.target(),
        url.authority(),
        env!("CARGO_PKG_VERSION"),
    );
    stream
        .set_write_timeout(Some(timeout))
        .map_err(HttpError::Io)?;
    stream
        .write_all(request.as_bytes())
        .map_err(HttpError::Io)?;
    let (head, early) = read_head(&mut stream, deadline, timeout)?;
    let (status, reason, headers) = parse_head(&head)?;
    let body = body_kind(&headers)?;
    stream
        .set_read_timeout(Some(POLL_INTERVAL))
        .map_err(HttpError::Io)?;
    Ok(Response {
        status,
        reason,
        headers,
        stream,
        body,
        early,
        buffer: vec![0; READ_BUFFER_BYTES].into_boxed_slice(),
    })
}

/// Connects to the first address of the host that accepts, before `deadline`.
fn connect(url: &RelayUrl, deadline: Instant) -> Result<TcpStream, HttpError> {
    let resolve_error = |source| HttpError::Resolve {
        host: url.host().to_owned(),
        source,
    };
    let addrs: Vec<SocketAddr> = (url.host(), url.port())
        .to_socket_addrs()
        .map_err(resolve_error)?
        .collect();
    let mut last_error = io::Error::new(io::ErrorKind::NotFound, "the host has no address");
    for addr in &addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(addr, left) {
            Ok(stream) => return Ok(stream),
            Err(error) => last_error = error,
        }
    }
    Err(HttpError::Connect {
        addr: format!("{}:{}", url.host(), url.port()),
        source: last_error,
    })
}

/// Reads up to the end of the head; returns the head and the body bytes read past it.
fn read_head(
    stream: &mut TcpStream,
    deadline: Instant,
    timeout: Duration,
) -> Result<(Vec<u8>, Vec<u8>), HttpError> {
    let mut head = Vec::with_capacity(1024);
    let mut buffer = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HttpError::Timeout(timeout));
        }
        stream.set_read_timeout(Some(left)).map_err(HttpError::Io)?;
        let read = match stream.read(&mut buffer) {
            Ok(0) if head.is_empty() => return Err(HttpError::NoAnswer),
            Ok(0) => return Err(HttpError::NotHttp),
            Ok(read) => read,
            Err(error) if is_timeout(&error) => return Err(HttpError::Timeout(timeout)),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(HttpError::Io(error)),
        };
        let searched_from = head.len().saturating_sub(3);
        head.extend_from_slice(&buffer[..read]);
        if let Some(at) = find(&head[searched_from..], b"\r\n\r\n") {
            let end = searched_from + at + 4;
            let early = head.split_off(end);
            return Ok((head, early));
        }
        if !head.starts_with(&b"HTTP/1."[..head.len().min(7)]) {
            return Err(HttpError::NotHttp);
        }
        if head.len() > MAX_HEAD_BYTES {
            return Err(HttpError::HeadTooLong);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

type Head = (u16, String, Vec<(String, String)>);

/// Status code, reason phrase and header fields of a head ending in an empty line.
fn parse_head(head: &[u8]) -> Result<Head, HttpError> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let (version, rest) = status_line.split_once(' ').ok_or(HttpError::NotHttp)?;
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::NotHttp);
    }
    let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
    let status = match code.parse::<u16>() {
        Ok(status) if code.len() == 3 && (100..600).contains(&status) => status,
        _ => return Err(HttpError::NotHttp),
    };
    let mut headers = Vec::new();
    for line in lines.take_while(|line| !line.is_empty()) {
        let (name, value) = line.split_once(':').ok_or(HttpError::NotHttp)?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    Ok((status, reason.to_owned(), headers))
}

fn body_kind(headers: &[(String, String)]) -> Result<Body, HttpError> {
    let field = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    };
    if let Some(codings) = field("transfer-encoding") {
        let last = codings.rsplit(',').next().unwrap_or_default().trim();
        if last.eq_ignore_ascii_case("chunked") {
            return Ok(Body::Chunked(ChunkedDecoder::default()));
        }
        return Ok(Body::UntilClose);
    }
    match field("content-length") {
        Some(length) => length
            .parse()
            .map(|left| Body::Length { left })
            .map_err(|_| HttpError::BadLength(length.to_owned())),
        None => Ok(Body::UntilClose),
    }
}

impl Response {
    /// The value of header field `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

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
    fn a_head_gives_status_reason_and_fields() {
        let head = b"HTTP/1.1 200 OK\r\nX-Pcm-Rate:  48000 \r\ntransfer-encoding: chunked\r\n\r\n";
        let (status, reason, headers) = parse_head(head).unwrap();
        assert_eq!((status, reason.as_str()), (200, "OK"));
        assert_eq!(headers[0], ("X-Pcm-Rate".to_owned(), "48000".to_owned()));
        assert!(matches!(body_kind(&headers), Ok(Body::Chunked(_))));
        let (status, reason, _) = parse_head(b"HTTP/1.0 404\r\n\r\n").unwrap();
        assert_eq!((status, reason.as_str()), (404, ""));
    }

    #[test]
    fn what_is_not_an_http_head_is_refused() {
        for head in [
            &b"SSH-2.0-OpenSSH_9.6\r\n\r\n"[..],
            b"HTTP/2 200\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        ] {
            assert!(
                matches!(parse_head(head), Err(HttpError::NotHttp)),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn the_body_ends_by_length_by_chunks_or_at_close() {
        let fields = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        let mut sized = body_kind(&fields(&[("Content-Length", "5")])).unwrap();
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
        let gzip = fields(&[("Transfer-Encoding", "gzip")]);
        assert!(matches!(body_kind(&gzip), Ok(Body::UntilClose)));
        assert!(matches!(body_kind(&[]), Ok(Body::UntilClose)));
        let bad = fields(&[("content-length", "-1")]);
        assert!(matches!(body_kind(&bad), Err(HttpError::BadLength(_))));
    }
}
