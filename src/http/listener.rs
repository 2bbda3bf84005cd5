//! One listener's response body: its hub subscription turned into encoded chunks.
//!
//! The body is polled by hyper. Each frame is written as soon as the hub delivers it; frames
//! already waiting are yielded back to back, and hyper coalesces them into one write. Encoded
//! bytes are the frame's shared `Bytes` (a reference count, not a copy), except for the rare
//! NDJSON line that must carry a `skipped` count and the few bytes of an SSE event's header:
//! an event goes out as three chunks (header, shared line, blank line) rather than as one
//! copy of the line per listener. The body ends, with a clean final chunk, when
//! the hub closes, after `frames=N` frames, or on shutdown; dropping it (the client went away)
//! unsubscribes the listener at once.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::Extension;
use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use tokio_stream::Stream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::{AppError, AppState};
use crate::encode::{self, PcmFormat};
use crate::fanout::{DirectEncoding, DirectOffer, DirectStream};
use crate::hub::{Delivery, Subscription};
use crate::stats::Endpoint;

#[derive(Clone, Copy, Debug)]
pub enum Encoding {
    Pcm(PcmFormat),
    Ndjson,
    /// Server-Sent Events: an `event: frame` per frame, its seq as the event id and its NDJSON
    /// object as the data.
    Sse,
}

pub struct ListenerBody {
    /// Chunks to send before the next frame: the preamble (the WAV header, the SSE info
    /// event), then the rest of each SSE event.
    queued: VecDeque<Bytes>,
    subscription: Subscription,
    encoding: Encoding,
    /// Frames still to send when the listener asked for `frames=N`.
    remaining_frames: Option<u64>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl ListenerBody {
    pub fn new(
        subscription: Subscription,
        encoding: Encoding,
        preamble: Option<Bytes>,
        frames: Option<u64>,
        shutdown: &CancellationToken,
    ) -> ListenerBody {
        // Room for the preamble or the three chunks of an SSE event.
        let mut queued = VecDeque::with_capacity(3);
        queued.extend(preamble);
        ListenerBody {
            queued,
            subscription,
            encoding,
            remaining_frames: frames,
            shutdown: Box::pin(shutdown.clone().cancelled_owned()),
        }
    }

    /// Queues the chunks of one frame.
    fn encode(&mut self, delivery: &Delivery) {
        match self.encoding {
            Encoding::Pcm(format) => self.queued.push_back(delivery.frame.pcm(format).clone()),
            Encoding::Ndjson => self.queued.push_back(json_line(delivery)),
            Encoding::Sse => {
                let header = format!("event: frame\nid: {}\ndata: ", delivery.frame.seq);
                // The line's own newline ends the `data:` field; the blank line ends the event.
                self.queued.extend([
                    Bytes::from(header),
                    json_line(delivery),
                    Bytes::from_static(b"\n"),
                ]);
            }
        }
    }

    /// The streaming response: `content_type`, no caching, extra headers, this body.
    pub fn into_response(
        self,
        content_type: &'static str,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Response {
        streaming_response(Body::from_stream(self), content_type, headers)
    }
}

/// A stream request that [`crate::fanout`] can serve.
pub struct StreamRequest {
    pub endpoint: Endpoint,
    pub content_type: &'static str,
    pub encoding: DirectEncoding,
    /// Bytes before the first frame (the WAV header).
    pub preamble: Option<Bytes>,
    /// `frames=N`.
    pub frames: Option<u64>,
}

impl StreamRequest {
    /// Accepts the server's offer to hand the connection to the fan-out when there is one
    /// (the response is then the head only), else streams the body through hyper.
    pub fn respond(
        self,
        state: &AppState,
        offer: Option<Extension<DirectOffer>>,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Result<Response, AppError> {
        if let Some(Extension(offer)) = offer {
            offer.accept(DirectStream {
                membership: state.hub.join(self.endpoint)?,
                encoding: self.encoding,
                preamble: self.preamble,
                frames: self.frames,
            });
            return Ok(streaming_response(
                Body::empty(),
                self.content_type,
                headers,
            ));
        }
        let encoding = match self.encoding {
            DirectEncoding::Pcm(format) => Encoding::Pcm(format),
            DirectEncoding::Ndjson => Encoding::Ndjson,
        };
        let body = ListenerBody::new(
            state.hub.subscribe(self.endpoint)?,
            encoding,
            self.preamble,
            self.frames,
            &state.shutdown,
        );
        Ok(body.into_response(self.content_type, headers))
    }
}

/// The frame's NDJSON line, with `"skipped":N` if frames were skipped just before it.
pub fn json_line(delivery: &Delivery) -> Bytes {
    if delivery.skipped > 0 {
        encode::with_skipped(delivery.frame.json_line(), delivery.skipped)
    } else {
        delivery.frame.json_line().clone()
    }
}

/// A streaming response: `content_type`, no caching, extra headers, `body` (a listener's,
/// possibly wrapped).
pub fn streaming_response(
    body: Body,
    content_type: &'static str,
    headers: &[(HeaderName, HeaderValue)],
) -> Response {
    let mut response = Response::new(body);
    let response_headers = response.headers_mut();
    response_headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response_headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store"),
    );
    for (name, value) in headers {
        response_headers.insert(name.clone(), value.clone());
    }
    response
}

impl Stream for ListenerBody {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            // Queued chunks go first, so that neither the end of the stream nor shutdown cuts
            // an SSE event short.
            if let Some(chunk) = self.queued.pop_front() {
                self.subscription.sent(chunk.len());
                return Poll::Ready(Some(Ok(chunk)));
            }
            if self.remaining_frames == Some(0) || self.shutdown.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            let Some(delivery) = ready!(Pin::new(&mut self.subscription).poll_next(cx)) else {
                return Poll::Ready(None);
            };
            if let Some(remaining) = self.remaining_frames.as_mut() {
                *remaining -= 1;
            }
            self.encode(&delivery);
        }
    }
}
