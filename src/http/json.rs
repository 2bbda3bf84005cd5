//! `/stream.ndjson`: one JSON object per frame and line. Served by [`crate::fanout`] when the
//! server offers it.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};

use super::listener::StreamRequest;
use super::{AppError, AppState, params};
use crate::fanout::{DirectEncoding, DirectOffer};
use crate::stats::Endpoint;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/stream.ndjson", get(stream_ndjson))
}

async fn stream_ndjson(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    offer: Option<Extension<DirectOffer>>,
) -> Result<Response, AppError> {
    let params = params::parse(query.as_deref(), &["frames"])?;
    let stream = StreamRequest {
        endpoint: Endpoint::Ndjson,
        content_type: "application/x-ndjson",
        encoding: DirectEncoding::Ndjson,
        preamble: None,
        frames: params.frames,
    };
    stream.respond(&state, offer, &[])
}
