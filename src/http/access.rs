//! Access control for the stream and API endpoints: the bearer token and CORS.
//!
//! [`protect`] wraps the protected routes in two layers. Outside, CORS (with `--cors-origin`)
//! answers every preflight itself — browsers never send credentials on a preflight — and adds
//! its headers to every response, 401s included, so a page can read why it was refused.
//! Inside, the token check (with `--token`) lets a request through only if it carries the
//! token as `Authorization: Bearer TOKEN` or `?token=TOKEN`. The handlers behind it accept and
//! ignore the `token` parameter (see `params`).

use std::hint::black_box;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::{AppError, AppState};

/// Wraps `routes` in the checks `state.access` asks for.
pub fn protect(routes: Router<Arc<AppState>>, state: &AppState) -> Router<Arc<AppState>> {
    // Layers wrap each route's fallback too, but the app's `method_not_allowed_fallback`
    // later replaces default fallbacks with its own, unwrapped handler. Giving these routes
    // their own keeps their other methods inside the layers: above all OPTIONS, the preflight.
    let mut routes = routes.method_not_allowed_fallback(|| async { AppError::MethodNotAllowed });
    if let Some(token) = &state.access.token {
        let token: Arc<[u8]> = token.as_bytes().into();
        routes = routes.layer(middleware::from_fn_with_state(token, require_token));
    }
    if let Some(origin) = &state.access.cors_origin {
        routes = routes.layer(cors(origin));
    }
    routes
}

async fn require_token(
    State(token): State<Arc<[u8]>>,
    request: Request,
    next: Next,
) -> Result<Response, AppError> {
    if presented_tokens(&request).any(|presented| constant_time_eq(&presented, &token)) {
        Ok(next.run(request).await)
    } else {
        // Neither the presented token nor the query (which may hold it) is logged.
        tracing::debug!(
            path = request.uri().path(),
            "refused: missing or wrong token"
        );
        Err(AppError::Unauthorized)
    }
}

/// Every token `request` carries: the `Authorization: Bearer` one and the `token` query
/// parameters, percent-decoded.
fn presented_tokens(request: &Request) -> impl Iterator<Item = Vec<u8>> + '_ {
    let bearer = request
        .headers()
        .get_all(header::AUTHORIZATION)
        .into_iter()
        .filter_map(|value| bearer_token(value.as_bytes()))
        .map(<[u8]>::to_vec);
    let query = form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
        .filter(|(name, _)| name == "token")
        .map(|(_, value)| value.into_owned().into_bytes());
    bearer.chain(query)
}

/// The token of an `Authorization` value `Bearer TOKEN` (the scheme is case-insensitive).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    if value.len() < SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    Some(value[SCHEME.len()..].trim_ascii())
}

/// Whether `a == b`, in a time that depends on their lengths but not on their contents, so
/// that timing a wrong guess does not tell how much of it was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    // black_box keeps the optimiser from turning the fold into an early exit.
    let difference = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| black_box(acc | (x ^ y)));
    difference == 0
}

/// CORS for pages on `origin` (`*` for any): GET with an `Authorization` header, and the
/// response headers a client needs to play the stream or to back off.
fn cors(origin: &str) -> CorsLayer {
    let allow_origin = if origin == "*" {
        AllowOrigin::any()
    } else {
        // Named only to that origin, rather than to everyone with `exact`.
        AllowOrigin::list([
            HeaderValue::from_str(origin).expect("config validated the origin as visible ASCII")
        ])
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET])
        .allow_headers([header::AUTHORIZATION])
        .expose_headers([
            HeaderName::from_static("x-pcm-format"),
            HeaderName::from_static("x-pcm-rate"),
            HeaderName::from_static("x-pcm-channels"),
            HeaderName::from_static("x-pcm-frame-size"),
            header::RETRY_AFTER,
        ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3cres"), "last byte differs");
        assert!(
            !constant_time_eq(b"s3cret", b"t3cret"),
            "first byte differs"
        );
        assert!(!constant_time_eq(b"s3cret", b"s3cre"), "shorter");
        assert!(!constant_time_eq(b"s3cret", b"s3cret!"), "longer");
        assert!(!constant_time_eq(b"", b"x"));
        // Every single-bit difference at every position is caught.
        let token = b"0123456789abcdef";
        for i in 0..token.len() {
            for bit in 0..8 {
                let mut other = *token;
                other[i] ^= 1 << bit;
                assert!(!constant_time_eq(token, &other), "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn bearer_token_takes_the_scheme_in_any_case() {
        assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"BEARER abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"Basic YWJj"), None);
        assert_eq!(bearer_token(b"Bearer"), None);
        assert_eq!(bearer_token(b"abc"), None);
    }
}
