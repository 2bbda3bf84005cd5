//! The HTTP layer: axum routes over the hub. One file per family of endpoints, each with its
//! own `routes()`; this file puts them together and owns the state every handler shares.
//!
//! The stream and API endpoints sit behind `access` (token, CORS); the player page, its
//! assets and `/healthz` stay open.

mod access;
mod codec;
mod error;
mod events;
mod json;
mod listener;
mod metrics;
mod page;
mod params;
mod pcm;
mod status;
mod ws;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::codec::Encoders;
use crate::config::Access;
use crate::hub::Hub;
use crate::icecast::PushStatus;
use crate::source::SourceInfo;
use crate::stats::Stats;
pub use error::AppError;

pub struct AppState {
    pub hub: Hub,
    /// The encoders of the compressed streams, started by their first listener.
    pub encoders: Encoders,
    pub stats: Arc<Stats>,
    pub source: SourceInfo,
    pub frame_size_samples: usize,
    pub access: Access,
    /// The Icecast push's state, if `--icecast` is given.
    pub icecast: Option<Arc<PushStatus>>,
    /// Cancelled on shutdown: every open stream body ends at once with a clean final chunk.
    pub shutdown: CancellationToken,
    /// Connection tasks that outlive their request (upgraded WebSockets), which axum's
    /// graceful shutdown does not wait for; `run` waits for them to send their Close.
    pub tasks: TaskTracker,
}

pub fn app(state: Arc<AppState>) -> Router {
    let protected = Router::new()
        .merge(pcm::routes())
        .merge(codec::routes())
        .merge(json::routes())
        .merge(events::routes())
        .merge(ws::routes())
        .merge(status::routes())
        .merge(metrics::routes());
    Router::new()
        .merge(access::protect(protected, &state))
        .merge(page::routes())
        .route("/healthz", get(status::healthz))
        .fallback(|| async { AppError::NotFound })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .with_state(state)
}
