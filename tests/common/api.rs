//! Time-bounded HTTP helpers for tests against one server: an [`Api`] client with `/status`
//! polling and listeners kept in the background, the NDJSON frame shape, JSON error checks,
//! and the sizing of listeners that stop reading.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::{RequestBuilder, Response};
use serde::Deserialize;
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;

/// Bound on any single step: a request, a short read, a wait for a condition.
pub const STEP: Duration = Duration::from_secs(5);

/// Receive buffer of clients that stop reading, so that the server's writes back up after
/// little data (Linux doubles it and keeps it from autotuning).
pub const STALLED_RECV_BUFFER_BYTES: u32 = 4096;

/// Awaits `future`, failing the test if it takes longer than `limit`.
pub async fn within<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {limit:?}"))
}

/// Calls `fetch` until `ready` holds for what it returns; fails the test after [`STEP`],
/// showing the last value with `show`.
pub async fn poll_until<T, F: Future<Output = T>>(
    what: &str,
    mut fetch: impl FnMut() -> F,
    ready: impl Fn(&T) -> bool,
    show: impl Fn(&T) -> String,
) -> T {
    let deadline = Instant::now() + STEP;
    loop {
        let value = fetch().await;
        if ready(&value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "waited {STEP:?} for {what}; last {}",
            show(&value)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends `request` and returns once the response headers are in.
pub async fn send(request: RequestBuilder) -> Response {
    let (client, request) = request.build_split();
    let request = request.expect("a valid request");
    let what = format!("{} {}", request.method(), request.url());
    within(STEP, &what, client.execute(request))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// The whole body of a 200 response that ends by itself.
pub async fn ok_body(response: Response) -> Bytes {
    let url = response.url().clone();
    assert_eq!(response.status(), 200, "{url}");
    within(STEP, url.as_str(), response.bytes())
        .await
        .unwrap_or_else(|e| panic!("{url}: the body ends cleanly: {e}"))
}

/// A reqwest client for one server; its `/status` requests carry the bearer token, if any.
pub struct Api {
    pub client: reqwest::Client,
    pub addr: SocketAddr,
    pub token: Option<String>,
}

impl Api {
    pub fn new(addr: SocketAddr) -> Api {
        Api {
            client: reqwest::Client::new(),
            addr,
            token: None,
        }
    }

    /// This client, authenticating its `/status` requests with `token` when there is one.
    pub fn bearer(self, token: Option<&str>) -> Api {
        Api {
            token: token.map(str::to_owned),
            ..self
        }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    /// A GET, not sent yet, without the token.
    pub fn request(&self, path_and_query: &str) -> RequestBuilder {
        self.client.get(self.url(path_and_query))
    }

    /// A GET, not sent yet, carrying the token (if there is one) as a bearer header.
    pub fn authed(&self, path_and_query: &str) -> RequestBuilder {
        let request = self.request(path_and_query);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends a GET (without the token) and returns once the response headers are in.
    pub async fn get(&self, path_and_query: &str) -> Response {
        send(self.request(path_and_query)).await
    }

    /// Like [`Api::get`], and checks the status is 200.
    pub async fn get_ok(&self, path_and_query: &str) -> Response {
        let response = self.get(path_and_query).await;
        assert_eq!(response.status(), 200, "GET {path_and_query}");
        response
    }

    /// The whole body of a 200 response that is expected to end by itself.
    pub async fn body(&self, path_and_query: &str) -> Bytes {
        ok_body(self.get(path_and_query).await).await
    }

    pub async fn status(&self) -> Value {
        let body = ok_body(send(self.authed("/status")).await).await;
        serde_json::from_slice(&body).expect("/status is JSON")
    }

    /// Polls `/status` until `ready` holds for it; fails the test after [`STEP`].
    pub async fn wait_for_status(&self, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        poll_until(what, || self.status(), ready, |s| format!("/status: {s}")).await
    }

    pub async fn wait_for_listeners(&self, current: u64) -> Value {
        self.wait_for_status(&format!("{current} listeners"), |s| {
            s["listeners"]["current"] == current
        })
        .await
    }

    /// Waits until the source has produced at least `frames` frames in all.
    pub async fn wait_for_frames(&self, frames: u64) -> Value {
        self.wait_for_status(&format!("{frames} frames produced"), |s| {
            frames_produced(s) >= frames
        })
        .await
    }

    /// Starts a listener of `path` that keeps reading in the background, so that the stream's
    /// encoder is running when another listener joins: that one joins mid-stream. Returns once
    /// the first listener has its header and a page; the task ends when the stream does, and
    /// fails unless it ends cleanly.
    pub async fn keep_listening(&self, path: &str) -> JoinHandle<()> {
        let response = self.get_ok(path).await;
        let mut body = response.bytes_stream();
        let mut received = 0;
        while received < 2 {
            within(STEP, "the first listener's header and page", body.next())
                .await
                .expect("the stream goes on")
                .unwrap();
            received += 1;
        }
        tokio::spawn(async move {
            while let Some(chunk) = body.next().await {
                chunk.expect("the stream ends cleanly");
            }
        })
    }

    /// The shortest of a few NDJSON lines, to size what socket buffers can hold in frames.
    pub async fn shortest_ndjson_line(&self) -> usize {
        let body = self.body("/stream.ndjson?frames=3").await;
        body.split_inclusive(|&b| b == b'\n')
            .map(<[u8]>::len)
            .min()
            .expect("3 lines")
    }
}

/// `frames_produced` of a `/status` document.
pub fn frames_produced(status: &Value) -> u64 {
    status["frames_produced"]
        .as_u64()
        .expect("frames_produced is a count")
}

/// Parses JSON text, failing the test if it is not JSON.
pub fn parse_json(text: &[u8]) -> Value {
    serde_json::from_slice(text).expect("JSON")
}

/// One frame object (an NDJSON line, an SSE frame event, a WebSocket json message), as the
/// contract defines it.
#[derive(Debug, Deserialize)]
pub struct Frame {
    pub seq: u64,
    pub pts: u64,
    pub time: f64,
    pub rate: u32,
    pub channels: u16,
    pub samples: Vec<f32>,
    pub skipped: Option<u64>,
}

pub fn parse_frame(text: &[u8]) -> Frame {
    serde_json::from_slice(text).unwrap_or_else(|e| {
        panic!(
            "not a JSON frame ({e}): {}",
            String::from_utf8_lossy(&text[..text.len().min(200)])
        )
    })
}

/// Checks a response is a JSON error `{"error": "…"}` with `status`; returns the message.
pub async fn json_error(response: Response, status: u16) -> String {
    assert_eq!(response.status(), status, "{}", response.url());
    json_error_message(response).await
}

/// Checks a response (of any status) is a JSON error `{"error": "…"}`; returns the message.
pub async fn json_error_message(response: Response) -> String {
    let url = response.url().clone();
    assert!(
        super::header(&response, "content-type").starts_with("application/json"),
        "{url}"
    );
    let body = within(STEP, url.as_str(), response.bytes())
        .await
        .unwrap_or_else(|e| panic!("{url}: the error body: {e}"));
    error_message(url.as_str(), &body)
}

/// The non-empty message of a JSON error body `{"error": "…"}`, from `what`.
pub fn error_message(what: &str, body: &[u8]) -> String {
    let body: Value = serde_json::from_slice(body).expect("the error is JSON");
    let error = body["error"].as_str().expect("an \"error\" string");
    assert!(!error.is_empty(), "{what}: an empty error message");
    error.to_owned()
}

/// A connection to `addr` with a receive buffer of [`STALLED_RECV_BUFFER_BYTES`], for a client
/// that stops reading.
pub async fn connect_stalling(addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .set_recv_buffer_size(STALLED_RECV_BUFFER_BYTES)
        .unwrap();
    within(STEP, "connecting", socket.connect(addr))
        .await
        .unwrap()
}

/// Most bytes that one loopback connection whose client stopped reading can hold: the
/// server's send buffer at its autotuning cap (`tcp_wmem` max), the client's receive buffer,
/// and `app_buffer_bytes` for what the layers above TCP buffer (hyper's write buffer, both
/// ends' WebSocket buffers).
pub fn stalled_connection_bytes_max(app_buffer_bytes: usize) -> usize {
    let tcp_wmem = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem").unwrap();
    let send_buffer_max: usize = tcp_wmem
        .split_whitespace()
        .nth(2)
        .and_then(|max| max.parse().ok())
        .expect("tcp_wmem has a maximum");
    send_buffer_max + 2 * STALLED_RECV_BUFFER_BYTES as usize + app_buffer_bytes
}

/// Frames of `bytes_per_frame` that fill a stalled connection's buffers (see
/// [`stalled_connection_bytes_max`]), with a 25 % margin.
pub fn frames_to_fill_a_stalled_connection(bytes_per_frame: usize, app_buffer_bytes: usize) -> u64 {
    (stalled_connection_bytes_max(app_buffer_bytes) * 5 / 4 / bytes_per_frame) as u64 + 1
}
