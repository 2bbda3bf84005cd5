//! The accept loop and the HTTP/1 connection settings: which connections the server takes,
//! how long a client may take to send a request head and how big it may be, and how open
//! connections finish on shutdown. What is served on a connection is [`crate::http`]'s.
//!
//! This replaces `axum::serve`, which gives hyper no timer (so no header-read timeout: a
//! client that sends its headers one byte a second, or never sends anything, holds its
//! connection forever) and keeps hyper's default ~400 KiB request-head buffer per connection.
//! Here every connection must deliver a complete request head within
//! [`HEADER_READ_TIMEOUT`] of when the server starts waiting for one (the first request, or the
//! next on a kept-alive connection) and within [`MAX_REQUEST_HEAD_BYTES`]; otherwise hyper
//! answers 431/414/400 or just closes it. Each connection is its own task, so none of this
//! delays another connection's frames.
//!
//! A connection's first request head is read here ([`head`]): a plain GET of `/stream.pcm`,
//! `/stream.wav` or `/stream.ndjson` is answered by [`direct`] and its socket handed to
//! [`crate::fanout`]; anything else goes to hyper with those bytes put back in front.

mod direct;
mod head;

use std::future::Future;
use std::io;
use std::pin::pin;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::fanout::Fanout;
use head::{FirstRequest, Rewind};

/// How long a client has to send a complete request head, counted from when the server starts
/// reading it and not reset by partial progress, so trickling bytes buys nothing. Also the
/// longest a kept-alive connection may sit idle between requests.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest request head (request line and headers) a connection may send; a bigger one
/// is refused with 431 as soon as that much has arrived. pcmcast's requests are a GET with a
/// short query and a token, and without this limit hyper buffers up to ~400 KiB per
/// connection while it waits for the end of a head.
pub const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;

/// How long the accept loop pauses after an error that is not about one connection: typically
/// EMFILE/ENFILE (out of file descriptors), which retrying at once would only repeat, at full
/// CPU, until some connection closes.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `app` on every connection accepted from `listener` until `finish` completes. Then
/// stops accepting, lets each connection finish the response it is sending (stream bodies end
/// on the shutdown token) and close instead of waiting for another request, and returns once
/// all have closed. Dropping the returned future (aborting its task) drops every connection.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    fanout: Fanout,
    finish: impl Future<Output = ()>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(MAX_REQUEST_HEAD_BYTES)
        .keep_alive(true);
    // Connections watch this, not `finish`, which only the accept loop can await.
    let draining = CancellationToken::new();
    // Owning the connection tasks in a JoinSet is what makes dropping `serve` close them.
    let mut connections = JoinSet::new();
    let mut finish = pin!(finish);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut finish => break,
            // Reaps finished connections so the set holds only open ones.
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                if let Err(error) = joined {
                    tracing::error!("a connection task failed: {error}");
                }
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                connections.spawn(serve_connection(
                    stream,
                    builder.clone(),
                    app.clone(),
                    fanout.clone(),
                    draining.clone(),
                ));
            }
            // The client gave up before we took the connection: nothing to do.
            Err(error) if is_per_connection(&error) => {
                tracing::debug!("accepting a connection failed: {error}");
            }
            Err(error) => {
                tracing::error!(
                    "cannot accept connections: {error}; retrying in {ACCEPT_ERROR_BACKOFF:?}"
                );
                tokio::select! {
                    () = &mut finish => break,
                    () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => {}
                }
            }
        }
    }
    drop(listener);
    draining.cancel();
    while connections.join_next().await.is_some() {}
}

/// Errors from `accept` that concern one connection that is already gone, not the listener.
fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// Serves one connection until the client closes it, hyper gives up on it (header timeout,
/// oversized or malformed head) or, once `draining` is cancelled, its current response ends.
/// A WebSocket upgrade hands the socket over to the task axum spawns for it and ends this one.
async fn serve_connection(
    mut stream: TcpStream,
    builder: http1::Builder,
    app: Router,
    fanout: Fanout,
    draining: CancellationToken,
) {
    // Frames are written as soon as they exist; Nagle would hold a small one back until the
    // previous one is acknowledged.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!("cannot set TCP_NODELAY on a connection: {error}");
    }
    let deadline = tokio::time::Instant::now() + HEADER_READ_TIMEOUT;
    let first = tokio::select! {
        first = head::read_first(&mut stream, deadline) => first,
        () = draining.cancelled() => return,
    };
    let prefix = match first {
        FirstRequest::Stream(request) => {
            return direct::serve(stream, *request, app, fanout).await;
        }
        FirstRequest::Other(prefix) => prefix,
        FirstRequest::Gone => return,
    };
    let connection = builder
        .serve_connection(
            TokioIo::new(Rewind::new(prefix, stream)),
            TowerToHyperService::new(app),
        )
        .with_upgrades();
    let mut connection = pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = draining.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    // Timeouts, refused heads and clients that vanish are the normal lot of a public server.
    if let Err(error) = result {
        tracing::debug!("connection closed: {error}");
    }
}
