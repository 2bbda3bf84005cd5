//! `/events`: Server-Sent Events. First an `info` event whose data is the stream info (the
//! same JSON as the first `/ws` message), then one `frame` event per frame: its seq as the
//! event id, its NDJSON object (with `"skipped":N` after a skip) as the data.
//!
//! The body is a [`ListenerBody`], so it ends like every stream: on `frames=N`, when the hub
//! closes and on shutdown. While no frame comes (the source is down) a comment line every
//! [`KEEP_ALIVE`] or so keeps proxies and clients from timing the connection out.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_stream::Stream;

use super::listener::{self, Encoding, ListenerBody};
use super::{AppError, AppState, params, ws};
use crate::stats::Endpoint;

/// Longest silence, give or take as much again, before a keep-alive comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/events", get(events))
}

async fn events(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<Response, AppError> {
    let params = params::parse(query.as_deref(), &["frames"])?;
    let subscription = state.hub.subscribe(Endpoint::Events)?;
    let info = format!("event: info\ndata: {}\n\n", ws::stream_info(&state));
    let body = ListenerBody::new(
        subscription,
        Encoding::Sse,
        Some(Bytes::from(info)),
        params.frames,
        &state.shutdown,
    );
    let body = Body::from_stream(KeepAlive::new(body, KEEP_ALIVE));
    Ok(listener::streaming_response(body, "text/event-stream", &[]))
}

/// Passes an SSE body through, adding a comment line when a whole `period` went by without a
/// chunk. A comment is only ever added while the body waits for a frame, which is between
/// events: a [`ListenerBody`] yields an event's chunks without waiting.
struct KeepAlive<S> {
    body: S,
    ticks: Interval,
    /// Whether the body yielded since the last tick.
    active: bool,
}

impl<S> KeepAlive<S> {
    fn new(body: S, period: Duration) -> KeepAlive<S> {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        KeepAlive {
            body,
            ticks,
            active: false,
        }
    }
}

impl<S> Stream for KeepAlive<S>
where
    S: Stream<Item = Result<Bytes, Infallible>> + Unpin,
{
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Poll::Ready(item) = Pin::new(&mut self.body).poll_next(cx) {
            self.active = true;
            return Poll::Ready(item);
        }
        // Polled until pending, so that the next tick wakes this task.
        while self.ticks.poll_tick(cx).is_ready() {
            if !std::mem::take(&mut self.active) {
                return Poll::Ready(Some(Ok(Bytes::from_static(b":\n\n"))));
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    /// Bounds every wait; the period is short so that comments come soon.
    const WITHIN: Duration = Duration::from_secs(5);
    const PERIOD: Duration = Duration::from_millis(20);

    fn event(n: u8) -> Result<Bytes, Infallible> {
        Ok(Bytes::from(format!("data: {n}\n\n")))
    }

    #[tokio::test]
    async fn events_pass_through_then_silence_gets_comments() {
        let body = tokio_stream::iter([event(1), event(2)]).chain(tokio_stream::pending());
        let mut stream = KeepAlive::new(body, PERIOD);
        for expected in ["data: 1\n\n", "data: 2\n\n", ":\n\n", ":\n\n"] {
            let chunk = tokio::time::timeout(WITHIN, stream.next()).await.unwrap();
            assert_eq!(chunk.unwrap().unwrap(), expected);
        }
    }

    #[tokio::test]
    async fn the_stream_ends_with_its_body() {
        let stream = KeepAlive::new(tokio_stream::iter([event(1)]), PERIOD);
        let chunks = tokio::time::timeout(WITHIN, stream.collect::<Vec<_>>()).await;
        assert_eq!(chunks.unwrap(), vec![event(1)]);
    }
}
