//! `/stream.ndjson`: one JSON object per frame and line.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::response::Response;

use super::listener::{Encoding, ListenerBody};
use super::{AppError, AppState, params};

pub async fn stream_ndjson(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<Response, AppError> {
    let params = params::parse(query.as_deref(), &["frames"])?;
    let subscription = state.hub.subscribe().ok_or(AppError::SourceEnded)?;
    let body = ListenerBody::new(
        subscription,
        Encoding::Ndjson,
        None,
        params.frames,
        &state.shutdown,
    );
    Ok(body.into_response("application/x-ndjson", &[]))
}
