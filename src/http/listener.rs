//! One listener's response body: its hub subscription turned into encoded chunks.
//!
//! The body is polled by hyper. Each frame is written as soon as the hub delivers it; frames
//! already waiting are yielded back to back, and hyper coalesces them into one write. Encoded
//! bytes are the frame's shared `Bytes` (a reference count, not a copy), except for the rare
//! NDJSON line that must carry a `skipped` count. The body ends, with a clean final chunk, when
//! the hub closes, after `frames=N` frames, or on shutdown; dropping it (the client went away)
//! unsubscribes the listener at once.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use tokio_stream::Stream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::encode::{self, PcmFormat};
use crate::hub::{Delivery, Subscription};

#[derive(Clone, Copy, Debug)]
pub enum Encoding {
    Pcm(PcmFormat),
    Ndjson,
}

pub struct ListenerBody {
    /// Sent before the first frame (the WAV header), if any.
    preamble: Option<Bytes>,
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
        ListenerBody {
            preamble,
            subscription,
            encoding,
            remaining_frames: frames,
            shutdown: Box::pin(shutdown.clone().cancelled_owned()),
        }
    }

    fn encode(&self, delivery: &Delivery) -> Bytes {
        match self.encoding {
            Encoding::Pcm(format) => delivery.frame.pcm(format).clone(),
            Encoding::Ndjson if delivery.skipped > 0 => {
                encode::with_skipped(delivery.frame.json_line(), delivery.skipped)
            }
            Encoding::Ndjson => delivery.frame.json_line().clone(),
        }
    }

    /// The streaming response: `content_type`, no caching, extra headers, this body.
    pub fn into_response(
        self,
        content_type: &'static str,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Response {
        let mut response = Response::new(Body::from_stream(self));
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
}

impl Stream for ListenerBody {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(preamble) = self.preamble.take() {
            self.subscription.sent(preamble.len());
            return Poll::Ready(Some(Ok(preamble)));
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
        let chunk = self.encode(&delivery);
        self.subscription.sent(chunk.len());
        Poll::Ready(Some(Ok(chunk)))
    }
}
