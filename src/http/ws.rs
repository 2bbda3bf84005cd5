//! `/ws`: WebSocket. The first message is the stream info, as JSON text:
//!
//! ```text
//! {"rate":48000,"channels":2,"frame_size":1024,"format":"f32","source":{"kind":"tone","name":"440 Hz sine"}}
//! ```
//!
//! then one message per frame:
//!
//! - by default (`?format=f32le`) a binary message: the frame's interleaved samples, f32le.
//!   Binary messages carry no seq, so a skip is told in a text message just before the first
//!   frame after it: `{"skipped":N,"seq":S}` says that frame is seq S and the N frames before
//!   it were skipped;
//! - with `?format=json` a text message: the frame's NDJSON object, with `"skipped":N` after a
//!   skip.
//!
//! The server ends the connection with a Close frame: 1000 after `frames=N` frames and when
//! the source ends, 1001 on shutdown. Messages from the client are read only to see it close.
//!
//! Each connection is one task that owns its socket and its hub subscription. A client that
//! stops reading blocks only its own task's sends, and the hub skips it forward meanwhile; a
//! client that goes away ends the task, which unsubscribes it at once.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{AppError, AppState, listener, params};
use crate::encode::PcmFormat;
use crate::hub::{Delivery, Subscription};
use crate::stats::Endpoint;

/// Largest message a client may send. Clients have nothing to say but Close, ping and pong
/// (at most 125 bytes each); the bound keeps one from making the server buffer more.
const CLIENT_MESSAGE_MAX_BYTES: usize = 4096;

/// How long the closing handshake may take. A client that stopped reading cannot take our
/// Close frame, and must not keep its task (and socket) alive.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/ws", get(ws))
}

/// How frames are sent, from `?format=`.
#[derive(Clone, Copy)]
enum MessageFormat {
    /// Binary messages of f32le samples.
    F32le,
    /// Text messages, each a frame's NDJSON object.
    Json,
}

fn parse_format(value: &str) -> Result<MessageFormat, AppError> {
    match value {
        "f32le" => Ok(MessageFormat::F32le),
        "json" => Ok(MessageFormat::Json),
        _ => Err(AppError::BadParameter(format!(
            "unknown format '{value}' for parameter 'format' (use f32le or json)"
        ))),
    }
}

/// The stream info that opens a `/ws` connection and an `/events` stream.
pub fn stream_info(state: &AppState) -> String {
    let source = &state.source;
    json!({
        "rate": source.format.rate_hz,
        "channels": source.format.channels,
        "frame_size": state.frame_size_samples,
        "format": "f32",
        "source": { "kind": source.kind, "name": source.name },
    })
    .to_string()
}

async fn ws(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, AppError> {
    let params = params::parse_with(query.as_deref(), &["format", "frames"], parse_format)?;
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return Ok(not_a_websocket(rejection)),
    };
    // Before the upgrade, so that a full hub or an ended source is a plain 503.
    let subscription = state.hub.subscribe(Endpoint::Ws)?;
    let listener = Listener {
        subscription,
        format: params.format.unwrap_or(MessageFormat::F32le),
        info: stream_info(&state).into(),
        remaining_frames: params.frames,
        shutdown: state.shutdown.clone(),
    };
    Ok(upgrade
        .max_message_size(CLIENT_MESSAGE_MAX_BYTES)
        .max_frame_size(CLIENT_MESSAGE_MAX_BYTES)
        .on_upgrade(move |socket| state.tasks.track_future(listener.run(socket))))
}

/// A request that cannot be upgraded, as a JSON error like every other.
fn not_a_websocket(rejection: WebSocketUpgradeRejection) -> Response {
    let error = format!(
        "/ws is a WebSocket endpoint; connect with a WebSocket client ({})",
        rejection.body_text()
    );
    (rejection.status(), Json(json!({ "error": error }))).into_response()
}

/// One WebSocket listener: what its task needs besides the socket.
struct Listener {
    subscription: Subscription,
    format: MessageFormat,
    info: Utf8Bytes,
    /// Frames still to send when the client asked for `frames=N`.
    remaining_frames: Option<u64>,
    shutdown: CancellationToken,
}

/// Why a connection stops streaming.
enum End {
    /// The server ends it with this Close frame.
    Close(CloseFrame),
    /// The client sent Close; the reply is queued in the socket.
    ClientClosed,
    /// The connection is gone: nothing more can be sent.
    ClientLeft,
}

impl End {
    fn close(code: u16, reason: &'static str) -> End {
        End::Close(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        })
    }

    fn shutdown() -> End {
        End::close(close_code::AWAY, "the server is shutting down")
    }
}

impl Listener {
    async fn run(mut self, mut socket: WebSocket) {
        let close = match self.stream(&mut socket).await {
            End::Close(frame) => Some(frame),
            End::ClientClosed => None,
            End::ClientLeft => return,
        };
        // The subscription goes first: the listener has left as far as the hub is concerned.
        drop(self);
        finish_closing(&mut socket, close).await;
    }

    /// Sends the info, then frames until the stream ends.
    async fn stream(&mut self, socket: &mut WebSocket) -> End {
        if let Err(end) = self.send(socket, Message::Text(self.info.clone())).await {
            return end;
        }
        loop {
            // Shutdown first, then the client's messages: a client that closes must not be
            // sent more frames just because frames are waiting.
            let delivery = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return End::shutdown(),
                incoming = socket.recv() => match incoming {
                    Some(Ok(Message::Close(_))) => return End::ClientClosed,
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return End::ClientLeft,
                },
                delivery = self.subscription.next() => match delivery {
                    Some(delivery) => delivery,
                    None => return End::close(close_code::NORMAL, "the source has ended"),
                },
            };
            if let Some(remaining) = self.remaining_frames.as_mut() {
                *remaining -= 1;
            }
            if let Err(end) = self.send_frame(socket, &delivery).await {
                return end;
            }
            if self.remaining_frames == Some(0) {
                return End::close(close_code::NORMAL, "all the frames asked for were sent");
            }
        }
    }

    async fn send_frame(&self, socket: &mut WebSocket, delivery: &Delivery) -> Result<(), End> {
        match self.format {
            MessageFormat::F32le => {
                if delivery.skipped > 0 {
                    let notice = json!({ "skipped": delivery.skipped, "seq": delivery.frame.seq });
                    self.send(socket, Message::Text(notice.to_string().into()))
                        .await?;
                }
                let samples = delivery.frame.pcm(PcmFormat::F32le).clone();
                self.send(socket, Message::Binary(samples)).await
            }
            MessageFormat::Json => {
                let line = listener::json_line(delivery);
                // The object without the line's newline: a slice of the shared line, not a copy.
                let object = line.slice(..line.len() - 1);
                let text = Utf8Bytes::try_from(object).expect("serde_json writes UTF-8");
                self.send(socket, Message::Text(text)).await
            }
        }
    }

    /// Sends one message and counts its payload, unless the client goes away or the server
    /// shuts down first (a client that stopped reading can hold a send up indefinitely).
    async fn send(&self, socket: &mut WebSocket, message: Message) -> Result<(), End> {
        let payload_bytes = match &message {
            Message::Text(text) => text.len(),
            Message::Binary(bytes) => bytes.len(),
            _ => 0,
        };
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => Err(End::shutdown()),
            sent = socket.send(message) => match sent {
                Ok(()) => {
                    self.subscription.sent(payload_bytes);
                    Ok(())
                }
                Err(_) => Err(End::ClientLeft),
            },
        }
    }
}

/// Completes the closing handshake, within [`CLOSE_GRACE`]: sends `close` if the server is
/// the one closing, then reads until the connection ends. Reading also flushes the reply to a
/// client's Close, which the socket queues.
async fn finish_closing(socket: &mut WebSocket, close: Option<CloseFrame>) {
    let handshake = async {
        if let Some(frame) = close {
            if socket.send(Message::Close(Some(frame))).await.is_err() {
                return;
            }
        }
        while let Some(Ok(_)) = socket.recv().await {}
    };
    // Past the grace period the socket is simply dropped.
    let _ = tokio::time::timeout(CLOSE_GRACE, handshake).await;
}
