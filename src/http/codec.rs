//! `/stream.opus` (Ogg/Opus, `?bitrate=` kbit/s) and `/stream.flac` (native FLAC): the
//! compressed streams, each encoded once for all its listeners by [`crate::codec`].
//!
//! A listener's body is the stream header, then every page its encoder sends from the moment
//! it joined, each the encoder's shared `Bytes`. A listener that falls more than the page
//! backlog behind skips whole pages (counted in `pages_skipped`); the encoder never waits for
//! it. The body ends when the encoder ends (end of source, or a fault: then the endpoint
//! answers 503 for a while), on shutdown, and with `frames=N` after the page that completes N
//! frames' worth of audio. Dropping it leaves the encoder, which stops with its last listener.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::Router;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use tokio_stream::Stream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::{AppError, AppState, listener, params};
use crate::codec::{Codec, EncodedStream, opus};
use crate::hub::Membership;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/stream.opus", get(stream_opus))
        .route("/stream.flac", get(stream_flac))
}

async fn stream_opus(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<Response, AppError> {
    let params = params::parse(query.as_deref(), &["bitrate", "frames"])?;
    let codec = Codec::Opus {
        bitrate_kbps: params.bitrate_kbps.unwrap_or(opus::DEFAULT_BITRATE_KBPS),
    };
    respond(&state, codec, "audio/ogg", params.frames)
}

async fn stream_flac(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<Response, AppError> {
    let params = params::parse(query.as_deref(), &["frames"])?;
    respond(&state, Codec::Flac, "audio/flac", params.frames)
}

fn respond(
    state: &AppState,
    codec: Codec,
    content_type: &'static str,
    frames: Option<u64>,
) -> Result<Response, AppError> {
    // The stream first, so that a request the codec cannot serve is never counted as a
    // listener; an encoder started for a listener then refused (the server is full) stops at
    // once.
    let stream = state.encoders.open(codec)?;
    let membership = state.hub.join(codec.endpoint())?;
    let body = EncodedBody {
        header: Some(stream.header.clone()),
        stream,
        membership,
        remaining_samples: frames.map(|n| n.saturating_mul(state.frame_size_samples as u64)),
        shutdown: Box::pin(state.shutdown.clone().cancelled_owned()),
    };
    Ok(listener::streaming_response(
        Body::from_stream(body),
        content_type,
        &[],
    ))
}

/// One listener of an encoded stream.
struct EncodedBody {
    /// Sent first, then `None`.
    header: Option<Bytes>,
    stream: EncodedStream,
    membership: Membership,
    /// Source samples per channel still to send when the listener asked for `frames=N`.
    remaining_samples: Option<u64>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl EncodedBody {
    fn send(&self, bytes: Bytes) -> Poll<Option<Result<Bytes, Infallible>>> {
        self.membership.sent(bytes.len() as u64);
        Poll::Ready(Some(Ok(bytes)))
    }
}

impl Stream for EncodedBody {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(header) = self.header.take() {
            return self.send(header);
        }
        loop {
            if self.remaining_samples == Some(0) || self.shutdown.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut self.stream.pages).poll_next(cx)) {
                Some(Ok(page)) => {
                    if let Some(remaining) = self.remaining_samples.as_mut() {
                        *remaining = remaining.saturating_sub(page.source_samples);
                    }
                    return self.send(page.bytes);
                }
                Some(Err(BroadcastStreamRecvError::Lagged(pages))) => {
                    self.membership.skipped_pages(pages);
                }
                None => return Poll::Ready(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use tokio_stream::StreamExt;
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;
    use tower::ServiceExt;

    use std::sync::atomic::Ordering::Relaxed;

    use super::*;
    use crate::codec::{CodecError, Encoders, Factory, Page, StreamEncoder};
    use crate::frame::{Frame, StreamFormat};
    use crate::hub::{self, HubLimits, Publisher};
    use crate::source::SourceInfo;
    use crate::stats::{Endpoint, Stats};

    const WITHIN: Duration = Duration::from_secs(5);
    const FORMAT: StreamFormat = StreamFormat {
        rate_hz: 8_000,
        channels: 1,
    };

    /// An encoder that sends each frame's first sample as a page, and panics on a frame whose
    /// first sample is negative.
    struct Faulty;

    impl StreamEncoder for Faulty {
        fn header(&self) -> Bytes {
            Bytes::from_static(b"HEAD")
        }

        fn encode(&mut self, samples: &[f32], pages: &mut Vec<Page>) -> Result<(), CodecError> {
            assert!(samples[0] >= 0.0, "a negative sample");
            pages.push(Page {
                bytes: Bytes::from(format!("[{}]", samples[0])),
                source_samples: samples.len() as u64,
            });
            Ok(())
        }

        fn finish(&mut self, _: &mut Vec<Page>) -> Result<(), CodecError> {
            Ok(())
        }
    }

    fn server() -> (Publisher, Router, Arc<AppState>) {
        let stats = Arc::new(Stats::default());
        let limits = HubLimits {
            backlog_frames: 16,
            burst_frames: 0,
            max_listeners: None,
        };
        let (publisher, hub) = hub::hub(limits, stats.clone());
        let (shutdown, tasks) = (CancellationToken::new(), TaskTracker::new());
        let factory: Factory = Arc::new(|_| Ok(Box::new(Faulty) as Box<dyn StreamEncoder>));
        let encoders = Encoders::with_factory(
            hub.clone(),
            stats.clone(),
            factory,
            shutdown.clone(),
            tasks.clone(),
        );
        let state = Arc::new(AppState {
            hub,
            encoders,
            stats: stats.clone(),
            source: SourceInfo {
                kind: "tone",
                name: "test".into(),
                format: FORMAT,
            },
            frame_size_samples: 4,
            access: Default::default(),
            shutdown,
            tasks,
            icecast: None,
        });
        (publisher, super::super::app(state.clone()), state)
    }

    fn frame(seq: u64, value: f32) -> Frame {
        Frame::new(seq, seq * 4, 0.0, FORMAT, vec![value; 4].into())
    }

    /// The next chunk of a body, within [`WITHIN`].
    async fn next(body: &mut axum::body::BodyDataStream) -> Bytes {
        let chunk = tokio::time::timeout(WITHIN, body.next()).await;
        chunk.unwrap().expect("the body goes on").unwrap()
    }

    async fn get(app: &Router, uri: &str) -> axum::response::Response {
        let request = Request::get(uri).body(Body::empty()).unwrap();
        app.clone().oneshot(request).await.unwrap()
    }

    #[tokio::test]
    async fn a_failed_encoder_ends_its_listeners_and_answers_503_while_pcm_flows_on() {
        let (publisher, app, state) = server();
        let stats = &state.stats;
        let flac = get(&app, "/stream.flac").await;
        assert_eq!(flac.status(), StatusCode::OK);
        let pcm = get(&app, "/stream.pcm?format=f32le").await;
        assert_eq!(pcm.status(), StatusCode::OK);
        let mut flac = flac.into_body().into_data_stream();
        let mut pcm = pcm.into_body().into_data_stream();

        publisher.publish(frame(0, 0.5));
        publisher.publish(frame(1, -0.5));
        publisher.publish(frame(2, 0.25));
        let mut received = Vec::new();
        while let Some(chunk) = tokio::time::timeout(WITHIN, flac.next()).await.unwrap() {
            received.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(received, b"HEAD[0.5]", "the stream ends at the fault");

        let refused = get(&app, "/stream.flac").await;
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        let retry_after = refused.headers()[header::RETRY_AFTER].to_str().unwrap();
        assert!(matches!(retry_after, "4" | "5"), "{retry_after}");
        let body = axum::body::to_bytes(refused.into_body(), 4096)
            .await
            .unwrap();
        let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let message = error["error"].as_str().unwrap();
        assert!(message.contains("panicked: a negative sample"), "{message}");
        assert_eq!(
            stats.endpoint(Endpoint::Flac).encoder_faults.load(Relaxed),
            1
        );

        // The PCM listener got every frame, and gets the next one.
        publisher.publish(frame(3, 0.125));
        let mut samples = Vec::new();
        while samples.len() < 16 {
            let chunk = tokio::time::timeout(WITHIN, pcm.next()).await.unwrap();
            samples.extend(
                chunk
                    .unwrap()
                    .unwrap()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap())),
            );
        }
        assert_eq!(
            samples.iter().step_by(4).copied().collect::<Vec<_>>(),
            [0.5, -0.5, 0.25, 0.125]
        );
    }

    #[tokio::test]
    async fn a_listener_that_falls_behind_skips_whole_pages_and_the_others_get_all() {
        let (publisher, app, state) = server();
        let mut fast = get(&app, "/stream.flac")
            .await
            .into_body()
            .into_data_stream();
        let mut slow = get(&app, "/stream.flac")
            .await
            .into_body()
            .into_data_stream();
        assert_eq!(next(&mut fast).await, "HEAD");
        assert_eq!(next(&mut slow).await, "HEAD");
        // One frame at a time, each page taken by the fast listener before the next frame:
        // the encoder keeps up, the slow listener reads nothing.
        for seq in 0..40u16 {
            publisher.publish(frame(u64::from(seq), f32::from(seq)));
            assert_eq!(next(&mut fast).await, format!("[{seq}]"));
        }
        // The page broadcast holds 16 pages: the slow listener gets the last 16, told of 24.
        for seq in 24..40 {
            assert_eq!(next(&mut slow).await, format!("[{seq}]"));
        }
        let skipped = state
            .stats
            .endpoint(Endpoint::Flac)
            .pages_skipped
            .load(Relaxed);
        assert_eq!(skipped, 24);
        publisher.publish(frame(40, 40.0));
        assert_eq!(next(&mut slow).await, "[40]");
        assert_eq!(next(&mut fast).await, "[40]");
    }

    #[tokio::test]
    async fn listeners_share_one_encoder_per_stream_which_stops_with_the_last() {
        let (publisher, app, state) = server();
        let first = get(&app, "/stream.opus")
            .await
            .into_body()
            .into_data_stream();
        let mut second = get(&app, "/stream.opus?bitrate=96")
            .await
            .into_body()
            .into_data_stream();
        let other = get(&app, "/stream.opus?bitrate=32").await;
        assert_eq!(other.status(), StatusCode::OK);
        let running: Vec<(Codec, Option<usize>)> = state
            .encoders
            .status()
            .into_iter()
            .map(|e| (e.codec, e.listeners))
            .collect();
        assert_eq!(
            running,
            [
                (Codec::Opus { bitrate_kbps: 32 }, Some(1)),
                (Codec::Opus { bitrate_kbps: 96 }, Some(2)),
            ]
        );
        publisher.publish(frame(0, 0.5));
        let header = tokio::time::timeout(WITHIN, second.next()).await.unwrap();
        assert_eq!(header.unwrap().unwrap(), "HEAD");
        let page = tokio::time::timeout(WITHIN, second.next()).await.unwrap();
        assert_eq!(page.unwrap().unwrap(), "[0.5]");
        drop((first, second, other));
        assert_eq!(state.encoders.status(), []);
    }
}
