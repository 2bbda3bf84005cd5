//! `/`: the player page and its assets (`assets/web/`), embedded in the binary.
//!
//! They sit outside access control: the page carries no audio or status itself, and passes
//! the `?token=` it was opened with to every endpoint it calls. The page loads nothing from
//! elsewhere, and its Content-Security-Policy says so.

use std::sync::Arc;

use axum::Router;
use axum::http::HeaderValue;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS,
};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppState;

/// Path, content type and body of each asset.
const ASSETS: [(&str, &str, &str); 4] = [
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../../assets/web/index.html"),
    ),
    (
        "/app.js",
        "text/javascript",
        include_str!("../../assets/web/app.js"),
    ),
    (
        "/worklet.js",
        "text/javascript",
        include_str!("../../assets/web/worklet.js"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_str!("../../assets/web/style.css"),
    ),
];

/// Scripts, styles, the worklet and requests only from this server; the favicon is `data:,`
/// (none); no plugins, frames, forms or `<base>`.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

pub fn routes() -> Router<Arc<AppState>> {
    ASSETS
        .into_iter()
        .fold(Router::new(), |router, (path, content_type, body)| {
            router.route(path, get(move || async move { asset(content_type, body) }))
        })
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // Revalidate every time: a new pcmcast must never run a cached old player.
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)),
            (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        ],
        body,
    )
        .into_response()
}
