//! The first request head of a connection, read before hyper sees the connection, to pick out
//! the raw stream requests that [`crate::fanout`] serves. Everything else goes to hyper with
//! the bytes already read put back in front ([`Rewind`]), so hyper answers it as if it had
//! read it itself: oversized and malformed heads included.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, Uri, Version, header};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::MAX_REQUEST_HEAD_BYTES;

/// The paths whose plain GETs are served by [`crate::fanout`].
const DIRECT_PATHS: [&str; 3] = ["/stream.pcm", "/stream.wav", "/stream.ndjson"];
/// Headers parsed before giving up and leaving the request to hyper (which allows 100).
const MAX_HEADERS: usize = 32;
/// Bytes read at a time; a typical request head fits in one read.
const READ_SIZE: usize = 2048;

pub enum FirstRequest {
    /// A complete GET of a raw stream endpoint, with nothing after it.
    Stream(Box<Request<Body>>),
    /// Anything else: these bytes, then the rest of the connection, are hyper's.
    Other(Bytes),
    /// The client closed the connection, or it failed, or `deadline` passed, before a
    /// complete request head arrived.
    Gone,
}

/// Reads until `stream` has sent a complete request head (or enough to know it is not one
/// for [`crate::fanout`]) or `deadline` passes.
pub async fn read_first(stream: &mut TcpStream, deadline: Instant) -> FirstRequest {
    let mut buffer = BytesMut::with_capacity(READ_SIZE);
    loop {
        if buffer.capacity() == buffer.len() {
            buffer.reserve(READ_SIZE);
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) | Err(_) => return FirstRequest::Gone,
            Ok(Ok(_)) => {}
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&buffer) {
            Ok(httparse::Status::Complete(len)) => {
                let request = (len == buffer.len())
                    .then(|| direct_request(&parsed))
                    .flatten();
                return match request {
                    Some(request) => FirstRequest::Stream(Box::new(request)),
                    None => FirstRequest::Other(buffer.freeze()),
                };
            }
            Ok(httparse::Status::Partial) if buffer.len() <= MAX_REQUEST_HEAD_BYTES => {}
            // Too big, too many headers or malformed: hyper gives the answer.
            _ => return FirstRequest::Other(buffer.freeze()),
        }
    }
}

/// `parsed` as a request, if it is a plain GET of a direct path: no body, no upgrade, no
/// `Expect`.
fn direct_request(parsed: &httparse::Request<'_, '_>) -> Option<Request<Body>> {
    if parsed.method? != "GET" {
        return None;
    }
    let target = parsed.path?;
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if !DIRECT_PATHS.contains(&path) {
        return None;
    }
    let version = match parsed.version? {
        0 => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut request = Request::builder()
        .method(Method::GET)
        .uri(target.parse::<Uri>().ok()?)
        .version(version)
        .body(Body::empty())
        .ok()?;
    let headers = request.headers_mut();
    for field in parsed.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(field.value).ok()?;
        headers.append(name, value);
    }
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|length| length != "0");
    let special = headers.contains_key(header::UPGRADE) || headers.contains_key(header::EXPECT);
    (!has_body && !special).then_some(request)
}

/// A connection with bytes already read from it put back in front.
pub struct Rewind {
    prefix: Bytes,
    inner: TcpStream,
}

impl Rewind {
    pub fn new(prefix: Bytes, inner: TcpStream) -> Rewind {
        Rewind { prefix, inner }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let len = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..len]);
        self.prefix.advance(len);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
