//! The raw stream requests [`super::head`] picked out: answered by the axum app like any
//! other (access control, parameters, limits), then, when the handler accepted the
//! [`DirectOffer`], the response head is written here and the socket handed to
//! [`Fanout`]. Any other answer (an error) is written here too, and the connection closed.

use std::fmt::Write as _;
use std::time::SystemTime;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, Version, header, response::Parts};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tower::ServiceExt;

use super::HEADER_READ_TIMEOUT;
use crate::fanout::{DirectOffer, Fanout};

/// The largest non-stream answer (a JSON error) passed on.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// How a response's body is delimited.
enum Framing {
    Chunked,
    Length(usize),
    /// By closing the connection (HTTP/1.0).
    Close,
}

pub async fn serve(mut stream: TcpStream, mut request: Request<Body>, app: Router, fanout: Fanout) {
    // The stream starts with the first frame published from now on, as a hyper body would
    // (its subscription is taken in the handler, before the head is written).
    let start = fanout.position();
    let offer = DirectOffer::default();
    request.extensions_mut().insert(offer.clone());
    let chunked = request.version() != Version::HTTP_10;
    let Ok(response) = app.oneshot(request).await;
    let (parts, body) = response.into_parts();
    if let Some(direct) = offer.take().filter(|_| parts.status == StatusCode::OK) {
        let framing = if chunked {
            Framing::Chunked
        } else {
            Framing::Close
        };
        if !write(&mut stream, response_head(&parts, framing).as_bytes()).await {
            return;
        }
        let added = stream
            .into_std()
            .and_then(|socket| fanout.add(socket, chunked, direct, start));
        if let Err(error) = added {
            tracing::debug!("cannot hand a listener over to the fan-out: {error}");
        }
        return;
    }
    let body = axum::body::to_bytes(body, MAX_ANSWER_BYTES)
        .await
        .unwrap_or_default();
    let mut answer = response_head(&parts, Framing::Length(body.len())).into_bytes();
    answer.extend_from_slice(&body);
    if write(&mut stream, &answer).await {
        let _ = stream.shutdown().await;
    }
}

/// Writes `bytes`, giving the client as long as it had for its request.
async fn write(stream: &mut TcpStream, bytes: &[u8]) -> bool {
    match tokio::time::timeout(HEADER_READ_TIMEOUT, stream.write_all(bytes)).await {
        Ok(Ok(())) => true,
        Ok(Err(error)) => {
            tracing::debug!("cannot write a response head: {error}");
            false
        }
        Err(_) => false,
    }
}

/// The status line and headers of `parts`, with `Date`, the body's framing and
/// `Connection: close` (the connection ends with this response).
fn response_head(parts: &Parts, framing: Framing) -> String {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_str(),
        parts.status.canonical_reason().unwrap_or("")
    );
    for (name, value) in &parts.headers {
        if [
            header::CONTENT_LENGTH,
            header::TRANSFER_ENCODING,
            header::CONNECTION,
            header::DATE,
        ]
        .contains(name)
        {
            continue;
        }
        // Header values from the handlers are ASCII; anything else is written as it is.
        let _ = write!(
            head,
            "{name}: {}\r\n",
            String::from_utf8_lossy(value.as_bytes())
        );
    }
    let _ = write!(
        head,
        "date: {}\r\n",
        httpdate::fmt_http_date(SystemTime::now())
    );
    match framing {
        Framing::Chunked => head.push_str("transfer-encoding: chunked\r\n"),
        Framing::Length(len) => {
            let _ = write!(head, "content-length: {len}\r\n");
        }
        Framing::Close => {}
    }
    head.push_str("connection: close\r\n\r\n");
    head
}
