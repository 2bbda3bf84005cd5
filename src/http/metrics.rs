//! `/metrics`: the counters and gauges in the Prometheus text format, `pcmcast_` prefix.

use std::sync::Arc;

use axum::Router;

use super::AppState;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
}
