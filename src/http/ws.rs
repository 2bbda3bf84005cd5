//! `/ws`: WebSocket, the stream info as text, then one binary f32le message per frame.

use std::sync::Arc;

use axum::Router;

use super::AppState;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
}
