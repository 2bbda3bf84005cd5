//! HTTP errors: every failure is a JSON `{"error": "…"}` body with the right status.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::codec::OpenError;
use crate::hub::SubscribeError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A query parameter is unknown, repeated or has a bad value; the message names it.
    #[error("{0}")]
    BadParameter(String),
    #[error(
        "no such endpoint (try /stream.pcm, /stream.wav, /stream.ndjson, /stream.opus, /stream.flac, /status, /healthz)"
    )]
    NotFound,
    #[error("method not allowed; streams and status are GET")]
    MethodNotAllowed,
    #[error("the source has ended; no more frames will be streamed")]
    SourceEnded,
    #[error("too many listeners; try again later")]
    Full,
    #[error("missing or wrong token; send Authorization: Bearer TOKEN or ?token=TOKEN")]
    Unauthorized,
    /// The source's format cannot be carried by this endpoint's codec; the message says why.
    #[error("{0}")]
    Unsupported(String),
    /// The endpoint's encoder failed; it may be tried again after `retry_after_s`.
    #[error(
        "this stream's encoder failed ({message}); try again in {retry_after_s} s or use /stream.pcm"
    )]
    EncoderFailed { message: String, retry_after_s: u64 },
}

impl From<OpenError> for AppError {
    fn from(error: OpenError) -> AppError {
        match error {
            OpenError::Unsupported(reason) => AppError::Unsupported(reason),
            OpenError::Faulted {
                message,
                retry_after,
            } => AppError::EncoderFailed {
                message,
                // Rounded up: a client that waits this long finds the stream open again.
                retry_after_s: retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0),
            },
            OpenError::Subscribe(error) => error.into(),
        }
    }
}

impl From<SubscribeError> for AppError {
    fn from(error: SubscribeError) -> AppError {
        match error {
            SubscribeError::Ended => AppError::SourceEnded,
            SubscribeError::Full => AppError::Full,
        }
    }
}

/// Seconds a client refused with 503 Full should wait before trying again.
const RETRY_AFTER_S: &str = "5";

impl AppError {
    fn status(&self) -> StatusCode {
        match self {
            AppError::BadParameter(_) => StatusCode::BAD_REQUEST,
            AppError::NotFound => StatusCode::NOT_FOUND,
            AppError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AppError::SourceEnded | AppError::Full | AppError::EncoderFailed { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            AppError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
            AppError::Unauthorized => StatusCode::UNAUTHORIZED,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.to_string() }));
        let mut response = (self.status(), body).into_response();
        let headers = response.headers_mut();
        match self {
            AppError::Full => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_S));
            }
            AppError::EncoderFailed { retry_after_s, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
            }
            AppError::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}
