//! The HTTP layer: axum routes over the hub. One file per family of endpoints; this file
//! builds the router and owns the state every handler shares.

mod error;
mod json;
mod listener;
mod params;
mod pcm;
mod status;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::source::SourceInfo;
use crate::stats::Stats;
pub use error::AppError;

pub struct AppState {
    pub hub: Hub,
    pub stats: Arc<Stats>,
    pub source: SourceInfo,
    pub frame_size_samples: usize,
    /// Cancelled on shutdown: every open stream body ends at once with a clean final chunk.
    pub shutdown: CancellationToken,
}

pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/stream.pcm", get(pcm::stream_pcm))
        .route("/stream.wav", get(pcm::stream_wav))
        .route("/stream.ndjson", get(json::stream_ndjson))
        .route("/status", get(status::status))
        .route("/healthz", get(status::healthz))
        .fallback(|| async { AppError::NotFound })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .with_state(state)
}
