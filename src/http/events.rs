//! `/events`: Server-Sent Events, one `frame` event per frame.

use std::sync::Arc;

use axum::Router;

use super::AppState;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
}
