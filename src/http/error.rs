//! HTTP errors: every failure is a JSON `{"error": "…"}` body with the right status.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A query parameter is unknown, repeated or has a bad value; the message names it.
    #[error("{0}")]
    BadParameter(String),
    #[error("no such endpoint (try /stream.pcm, /stream.wav, /stream.ndjson, /status, /healthz)")]
    NotFound,
    #[error("method not allowed; streams and status are GET")]
    MethodNotAllowed,
    #[error("the source has ended; no more frames will be streamed")]
    SourceEnded,
}

impl AppError {
    fn status(&self) -> StatusCode {
        match self {
            AppError::BadParameter(_) => StatusCode::BAD_REQUEST,
            AppError::NotFound => StatusCode::NOT_FOUND,
            AppError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AppError::SourceEnded => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.to_string() }));
        (self.status(), body).into_response()
    }
}
