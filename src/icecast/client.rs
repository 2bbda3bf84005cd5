//! The source side of Icecast 2.4's HTTP protocol: `PUT /MOUNT` with Basic authentication and
//! the `Ice-*` headers, the answer read (`200 OK`, possibly after `100 Continue`), then the body
//! written raw, without chunked encoding or a length, for as long as the connection lasts.
//!
//! [`open`] connects and reads the answer; [`send_body`] streams one connection's body from a
//! hub subscription until Icecast goes away, the source ends or the push is cancelled.

use std::io;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use super::PushStatus;
use super::format::{PushEncoder, PushFormat};
use super::url::IcecastUrl;
use crate::frame::StreamFormat;
use crate::hub::Subscription;
use crate::net::ConnectError;
use crate::net::response::ResponseHead;

/// How long connecting, sending the request and reading the answer may take. Icecast answers
/// at once; this only bounds a host that does not.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(3);
/// A connection that takes nothing for this long is given up and reopened: Icecast may be
/// gone without closing it.
pub const STALL_LIMIT: Duration = Duration::from_secs(5);
/// The send buffer asked for (the kernel doubles it): ~0.7 s of 48 kHz stereo s16le, room for a
/// round trip to a distant Icecast. Autotuning would let megabytes — many seconds of audio —
/// queue for an Icecast that reads too slowly; bounded, the push falls behind in the hub
/// instead, where it is skipped forward to live audio.
const SEND_BUFFER_BYTES: usize = 64 * 1024;
/// Most bytes of the explanation Icecast sends with a refusal.
const MAX_MESSAGE_BYTES: usize = 512;
/// How long to wait for the explanation that follows a refusal's head.
const MESSAGE_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the connection to Icecast failed")]
    Io(#[source] io::Error),
    #[error("the server closed the connection without answering")]
    NoAnswer,
    #[error("the answer is not an HTTP response")]
    NotHttp,
    #[error("Icecast refused the source: {status} {reason}{}{}", detail(.message), hint(*.status))]
    Refused {
        status: u16,
        reason: String,
        message: Option<String>,
    },
    #[error("Icecast closed the connection")]
    Closed,
    #[error("Icecast took nothing for {0:?}")]
    Stalled(Duration),
}

fn detail(message: &Option<String>) -> String {
    message
        .as_ref()
        .map(|message| format!(" ({message})"))
        .unwrap_or_default()
}

/// What to check, for the refusals whose cause is known.
fn hint(status: u16) -> &'static str {
    match status {
        401 => "; check the user and password in --icecast",
        403 => "; is another source on this mount, or is Icecast's source limit reached?",
        _ => "",
    }
}

/// The request head: everything Icecast needs to set up the mount.
pub fn request_head(
    url: &IcecastUrl,
    format: PushFormat,
    stream: StreamFormat,
    description: &str,
) -> String {
    let credentials = base64::engine::general_purpose::STANDARD.encode(url.credentials());
    format!(
        "PUT {mount} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Basic {credentials}\r\n\
         User-Agent: pcmcast/{version}\r\nContent-Type: {content_type}\r\nIce-Public: 0\r\n\
         Ice-Name: pcmcast\r\nIce-Description: {description}\r\n\
         Ice-Audio-Info: samplerate={rate};channels={channels}\r\n\r\n",
        mount = url.mount(),
        host = url.server().authority(),
        version = env!("CARGO_PKG_VERSION"),
        content_type = format.content_type(),
        rate = stream.rate_hz,
        channels = stream.channels,
    )
}

/// Connects, sends `head` and reads Icecast's answer, all within [`OPEN_TIMEOUT`]. Returns the
/// connection, ready for the body, if Icecast accepted the source.
pub async fn open(url: &IcecastUrl, head: &str) -> Result<TcpStream, PushError> {
    let deadline = Instant::now() + OPEN_TIMEOUT;
    let mut socket = connect(url, deadline).await?;
    let socket_options = socket2::SockRef::from(&socket);
    socket_options
        .set_send_buffer_size(SEND_BUFFER_BYTES)
        .and_then(|()| socket_options.set_tcp_nodelay(true))
        .map_err(PushError::Io)?;
    tokio::time::timeout_at(deadline, socket.write_all(head.as_bytes()))
        .await
        .map_err(|_| PushError::Timeout(OPEN_TIMEOUT))?
        .map_err(PushError::Io)?;
    let mut buffer = Vec::with_capacity(1024);
    loop {
        // A head too long is no answer from Icecast either.
        let head = match ResponseHead::parse(&buffer).map_err(|_| PushError::NotHttp)? {
            Some(head) => head,
            None => {
                let read = tokio::time::timeout_at(deadline, socket.read_buf(&mut buffer))
                    .await
                    .map_err(|_| PushError::Timeout(OPEN_TIMEOUT))?
                    .map_err(PushError::Io)?;
                match (read, buffer.is_empty()) {
                    (0, true) => return Err(PushError::NoAnswer),
                    (0, false) => return Err(PushError::NotHttp),
                    _ => continue,
                }
            }
        };
        buffer.drain(..head.len);
        match head.status {
            // Another head follows an interim answer.
            100 => continue,
            200..=299 => return Ok(socket),
            _ => {
                let message = refusal_message(&mut socket, buffer).await;
                return Err(PushError::Refused {
                    status: head.status,
                    reason: head.reason,
                    message,
                });
            }
        }
    }
}

/// Connects to the first address of the host that accepts, before `deadline`.
async fn connect(url: &IcecastUrl, deadline: Instant) -> Result<TcpStream, PushError> {
    let server = url.server();
    let addrs: Vec<_> = tokio::time::timeout_at(
        deadline,
        tokio::net::lookup_host((server.host(), server.port())),
    )
    .await
    .map_err(|_| PushError::Timeout(OPEN_TIMEOUT))?
    .map_err(|error| server.unresolved(error))?
    .collect();
    let mut last_error = io::Error::new(io::ErrorKind::NotFound, "the host has no address");
    for addr in addrs {
        match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(socket)) => return Ok(socket),
            Ok(Err(error)) => last_error = error,
            Err(_) => return Err(PushError::Timeout(OPEN_TIMEOUT)),
        }
    }
    Err(server.unreachable(last_error).into())
}

/// The first line of the text Icecast sends after a refusal (e.g. "Mountpoint in use"), if
/// it comes within [`MESSAGE_TIMEOUT`].
async fn refusal_message(socket: &mut TcpStream, mut body: Vec<u8>) -> Option<String> {
    let deadline = Instant::now() + MESSAGE_TIMEOUT;
    while body.len() < MAX_MESSAGE_BYTES && !body.contains(&b'\n') {
        match tokio::time::timeout_at(deadline, socket.read_buf(&mut body)).await {
            Ok(Ok(read)) if read > 0 => {}
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX_MESSAGE_BYTES)]);
    let line = text.lines().next()?.trim();
    let printable = line.chars().all(|c| !c.is_control());
    (!line.is_empty() && printable).then(|| line.to_owned())
}

/// Why a connection's body ended without an error.
pub enum End {
    Cancelled,
    /// The hub closed: the source has ended.
    SourceEnded,
}

/// Writes the encoder's header, then each frame of `frames` as it comes, until Icecast closes
/// the connection or stops taking data, the hub closes, or `cancel` fires. A write that makes
/// no progress for [`STALL_LIMIT`] fails the connection; meanwhile the hub skips this
/// subscription forward, so nothing upstream waits for it.
pub async fn send_body(
    mut socket: TcpStream,
    mut frames: Subscription,
    mut encoder: Box<dyn PushEncoder>,
    status: &PushStatus,
    cancel: &CancellationToken,
) -> Result<End, PushError> {
    let (mut reader, mut writer) = socket.split();
    let mut pending = encoder.header();
    // Icecast sends nothing once it has answered; reading only notices when it closes.
    let mut scratch = [0u8; 256];
    loop {
        if !pending.is_empty() {
            tokio::select! {
                () = cancel.cancelled() => return Ok(End::Cancelled),
                written = tokio::time::timeout(STALL_LIMIT, writer.write_all(&pending)) => {
                    written
                        .map_err(|_| PushError::Stalled(STALL_LIMIT))?
                        .map_err(PushError::Io)?;
                    status.sent(pending.len());
                }
            }
        }
        pending = tokio::select! {
            () = cancel.cancelled() => return Ok(End::Cancelled),
            read = reader.read(&mut scratch) => match read {
                Ok(0) => return Err(PushError::Closed),
                Ok(_) => Bytes::new(),
                Err(error) => return Err(PushError::Io(error)),
            },
            delivery = frames.next() => match delivery {
                None => return Ok(End::SourceEnded),
                Some(delivery) => {
                    status.skipped(delivery.skipped);
                    encoder.encode(&delivery.frame)
                }
            },
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_carries_the_mount_credentials_and_stream_description() {
        let url: IcecastUrl = "http://source:hackme@127.0.0.1:8000/live".parse().unwrap();
        let stream = StreamFormat {
            rate_hz: 44_100,
            channels: 1,
        };
        let head = request_head(&url, PushFormat::Pcm, stream, "a test");
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut request = httparse::Request::new(&mut headers);
        assert!(request.parse(head.as_bytes()).unwrap().is_complete());
        assert_eq!((request.method, request.path), (Some("PUT"), Some("/live")));
        let field = |name: &str| {
            let header = request.headers.iter().find(|h| h.name == name);
            std::str::from_utf8(header.unwrap().value)
                .unwrap()
                .to_owned()
        };
        // base64("source:hackme")
        assert_eq!(field("Authorization"), "Basic c291cmNlOmhhY2ttZQ==");
        assert_eq!(field("Host"), "127.0.0.1:8000");
        assert_eq!(field("Content-Type"), "application/octet-stream");
        assert_eq!(field("Ice-Audio-Info"), "samplerate=44100;channels=1");
        assert_eq!(field("Ice-Public"), "0");
        assert_eq!(field("Ice-Description"), "a test");
        assert!(
            !head.contains("Transfer-Encoding") && !head.contains("Content-Length"),
            "Icecast reads the body raw, until the connection closes"
        );
    }

    #[test]
    fn refusals_say_what_to_check() {
        let refused = |status, reason: &str, message: Option<&str>| {
            PushError::Refused {
                status,
                reason: reason.to_owned(),
                message: message.map(str::to_owned),
            }
            .to_string()
        };
        assert_eq!(
            refused(
                401,
                "Authentication Required",
                Some("You need to authenticate")
            ),
            "Icecast refused the source: 401 Authentication Required (You need to \
             authenticate); check the user and password in --icecast"
        );
        assert!(refused(403, "Forbidden", Some("Mountpoint in use")).contains("another source"));
        assert_eq!(
            refused(500, "Internal Server Error", None),
            "Icecast refused the source: 500 Internal Server Error"
        );
    }
}
