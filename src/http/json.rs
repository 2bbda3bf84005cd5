//! `/stream.ndjson`: one JSON object per frame and line.

use std::sync::Arc;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use axum::routing::get;

use super::listener::{Encoding, ListenerBody};
use super::{AppError, AppState, params};
use crate::stats::Endpoint;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/stream.ndjson", get(stream_ndjson))
}

async fn stream_ndjson(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<Response, AppError> {
    let params = params::parse(query.as_deref(), &["frames"])?;
    let subscription = state.hub.subscribe(Endpoint::Ndjson)?;
    let body = ListenerBody::new(
        subscription,
        Encoding::Ndjson,
        None,
        params.frames,
        &state.shutdown,
    );
    Ok(body.into_response("application/x-ndjson", &[]))
}
