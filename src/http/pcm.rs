//! `/stream.pcm` (raw interleaved PCM) and `/stream.wav` (the same behind an endless WAV
//! header), f32le or s16le.

use std::sync::Arc;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use axum::routing::get;

use super::listener::{Encoding, ListenerBody};
use super::{AppError, AppState, params};
use crate::encode::{self, PcmFormat};
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
) -> Result<Response, AppError> {
    let params = params::parse(query.as_deref(), PARAMS)?;
    let format = params.format.unwrap_or(PcmFormat::F32le);
    let body = listener(&state, Endpoint::Pcm, format, None, params.frames)?;
    Ok(body.into_response("application/octet-stream", &pcm_headers(&state, format)))
}

async fn stream_wav(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<Response, AppError> {
    let params = params::parse(query.as_deref(), PARAMS)?;
    let format = params.format.unwrap_or(PcmFormat::S16le);
    let stream = state.source.format;
    let header = encode::wav_header(format, stream.rate_hz, stream.channels);
    let body = listener(&state, Endpoint::Wav, format, Some(header), params.frames)?;
    Ok(body.into_response("audio/wav", &pcm_headers(&state, format)))
}

fn listener(
    state: &AppState,
    endpoint: Endpoint,
    format: PcmFormat,
    preamble: Option<bytes::Bytes>,
    frames: Option<u64>,
) -> Result<ListenerBody, AppError> {
    let subscription = state.hub.subscribe(endpoint)?;
    Ok(ListenerBody::new(
        subscription,
        Encoding::Pcm(format),
        preamble,
        frames,
        &state.shutdown,
    ))
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
