//! `/stream.pcm` (raw interleaved PCM) and `/stream.wav` (the same behind an endless WAV
//! header), f32le or s16le. Served by [`crate::fanout`] when the server offers it.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};

use super::listener::StreamRequest;
use super::{AppError, AppState, params};
use crate::encode::{self, PcmFormat};
use crate::fanout::{DirectEncoding, DirectOffer};
use crate::stats::Endpoint;

const PARAMS: &[&str] = &["format", "frames"];

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/stream.pcm", get(stream_pcm))
        .route("/stream.wav", get(stream_wav))
}

async fn stream_pcm(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    offer: Option<Extension<DirectOffer>>,
) -> Result<Response, AppError> {
    let params = params::parse(query.as_deref(), PARAMS)?;
    let format = params.format.unwrap_or(PcmFormat::F32le);
    let stream = StreamRequest {
        endpoint: Endpoint::Pcm,
        content_type: "application/octet-stream",
        encoding: DirectEncoding::Pcm(format),
        preamble: None,
        frames: params.frames,
    };
    stream.respond(&state, offer, &pcm_headers(&state, format))
}

async fn stream_wav(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    offer: Option<Extension<DirectOffer>>,
) -> Result<Response, AppError> {
    let params = params::parse(query.as_deref(), PARAMS)?;
    let format = params.format.unwrap_or(PcmFormat::S16le);
    let source = state.source.format;
    let stream = StreamRequest {
        endpoint: Endpoint::Wav,
        content_type: "audio/wav",
        encoding: DirectEncoding::Pcm(format),
        preamble: Some(encode::wav_header(format, source.rate_hz, source.channels)),
        frames: params.frames,
    };
    stream.respond(&state, offer, &pcm_headers(&state, format))
}

/// `X-Pcm-*` headers: what a raw-PCM client needs to play the body.
fn pcm_headers(state: &AppState, format: PcmFormat) -> [(HeaderName, HeaderValue); 4] {
    let stream = state.source.format;
    [
        (
            HeaderName::from_static("x-pcm-format"),
            HeaderValue::from_static(format.name()),
        ),
        (HeaderName::from_static("x-pcm-rate"), stream.rate_hz.into()),
        (
            HeaderName::from_static("x-pcm-channels"),
            stream.channels.into(),
        ),
        (
            HeaderName::from_static("x-pcm-frame-size"),
            state.frame_size_samples.into(),
        ),
    ]
}
