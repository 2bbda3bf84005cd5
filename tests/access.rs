//! End-to-end tests of access control against real servers on 127.0.0.1:0: the bearer token
//! (by header and by query, on every protected endpoint, near misses refused, never logged),
//! the listener limit, and CORS for browser pages. Clients are reqwest, curl and a WebSocket
//! client.
//!
//! No test sleeps to synchronise: each waits for the event it needs by polling `/status` with a
//! deadline, and every request, read and wait is bounded in time.

mod common;

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::api::{Api, STEP, json_error_message, ok_body, send, within};
use futures_util::StreamExt;
use reqwest::header::{self, HeaderValue};
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};

const TOKEN: &str = "s3cret-Token_42";

/// Every protected plain-HTTP endpoint, with a query that makes streams end by themselves.
const PROTECTED: &[&str] = &[
    "/stream.pcm?frames=2",
    "/stream.wav?frames=2",
    "/stream.ndjson?frames=2",
    "/events?frames=2",
    "/stream.opus?frames=2",
    "/stream.flac?frames=2",
    "/status",
    "/metrics",
];

/// The WebSocket endpoint, protected too; a plain GET is refused before the upgrade is
/// looked at.
const WEBSOCKET: &str = "/ws?frames=2";

/// `path_and_query` with `token` added as the `token` query parameter, percent-encoded.
fn with_token(path_and_query: &str, token: &str) -> String {
    let separator = if path_and_query.contains('?') {
        '&'
    } else {
        '?'
    };
    let encoded: String = form_urlencoded::byte_serialize(token.as_bytes()).collect();
    format!("{path_and_query}{separator}token={encoded}")
}

/// Checks `response` is a 401 JSON error that tells the client how to authenticate.
async fn assert_unauthorized(response: Response, what: &str) {
    let url = response.url().clone();
    assert_eq!(response.status(), 401, "{what}: {url}");
    assert_eq!(
        common::header(&response, "www-authenticate"),
        "Bearer",
        "{url}"
    );
    assert_json_error(response, "token").await;
}

/// Checks `response` is a JSON error `{"error": "…"}` whose message contains `names`.
async fn assert_json_error(response: Response, names: &str) {
    let url = response.url().clone();
    let error = json_error_message(response).await;
    assert!(error.contains(names), "{url}: '{error}' names '{names}'");
}

/// A response header as text, or `None`.
fn optional_header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().expect("an ASCII header"))
}

/// The comma-separated items of a response header, lowercased; empty if it is missing.
fn header_list(response: &Response, name: &str) -> Vec<String> {
    optional_header(response, name)
        .unwrap_or_default()
        .split(',')
        .map(|item| item.trim().to_ascii_lowercase())
        .filter(|item| !item.is_empty())
        .collect()
}

/// Starts a server with `args`, and a client of it that authenticates its `/status` requests
/// when it has a token.
async fn start(args: &[&str], token: Option<&str>) -> (common::Server, Api) {
    let server = common::start(args).await;
    let api = Api::new(server.addr).bearer(token);
    (server, api)
}

/// Reads from a live stream until some bytes arrive.
async fn first_bytes(response: &mut Response) -> bytes::Bytes {
    let url = response.url().clone();
    let chunk = within(STEP, url.as_str(), response.chunk())
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .unwrap_or_else(|| panic!("{url}: the stream ended before any byte"));
    assert!(!chunk.is_empty(), "{url}");
    chunk
}

/// With `--token`, every stream and API endpoint refuses a request without the token or with a
/// wrong one (by header or by query), before it becomes a listener; the right token by either
/// route gets the endpoint's content. `/healthz` and `/` stay open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_every_stream_and_api_endpoint() {
    let (server, api) = start(&["--tone", "440", "--token", TOKEN], Some(TOKEN)).await;
    for path in PROTECTED.iter().chain(&[WEBSOCKET]) {
        assert_unauthorized(send(api.request(path)).await, "no token").await;
        let by_header = api.request(path).bearer_auth("wrong");
        assert_unauthorized(send(by_header).await, "wrong header").await;
        let by_query = api.request(&with_token(path, "wrong"));
        assert_unauthorized(send(by_query).await, "wrong query").await;
    }
    assert_eq!(
        api.status().await["listeners"]["total"],
        0,
        "refused requests never subscribe"
    );

    for path in PROTECTED {
        for request in [api.authed(path), api.request(&with_token(path, TOKEN))] {
            let body = ok_body(send(request).await).await;
            assert!(!body.is_empty(), "{path}: an empty body");
        }
    }
    let pcm = &ok_body(send(api.authed("/stream.pcm?frames=2")).await).await;
    assert_eq!(pcm.len(), 2 * 1024 * 2 * 4, "two f32le stereo frames");

    let healthz = send(api.request("/healthz")).await;
    assert_eq!(ok_body(healthz).await, "ok");
    let page = send(api.request("/")).await;
    assert_ne!(page.status(), 401, "the page is open");
    server.stop().await;
}

/// Tokens that are almost right — one byte off at the end or start, a byte short or long, in
/// another case, empty — are refused, by header and by query; so are other schemes and
/// parameter names carrying the right token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_misses_are_refused() {
    let (server, api) = start(&["--tone", "440", "--token", TOKEN], Some(TOKEN)).await;
    let (body, last) = TOKEN.split_at(TOKEN.len() - 1);
    let last_byte_off = format!("{body}{}", char::from(last.as_bytes()[0] + 1));
    let first_byte_off = format!("t{}", &TOKEN[1..]);
    let wrong = [
        last_byte_off.as_str(),
        first_byte_off.as_str(),
        body,
        &format!("{TOKEN}x"),
        &TOKEN.to_ascii_uppercase(),
        &format!("{TOKEN}{TOKEN}"),
        "",
    ];
    // The first two reach the byte-by-byte comparison; the others differ in length.
    assert_eq!(
        [last_byte_off.len(), first_byte_off.len()],
        [TOKEN.len(); 2]
    );
    for token in wrong {
        let by_header = api.request("/status").bearer_auth(token);
        assert_unauthorized(send(by_header).await, token).await;
        let by_query = api.request(&with_token("/stream.pcm?frames=1", token));
        assert_unauthorized(send(by_query).await, token).await;
    }
    for authorization in [
        format!("Basic {TOKEN}"),
        format!("Token {TOKEN}"),
        format!("Bearer{TOKEN}"),
        TOKEN.to_owned(),
    ] {
        let request = api
            .request("/status")
            .header(header::AUTHORIZATION, &authorization);
        assert_unauthorized(send(request).await, &authorization).await;
    }
    for query in [
        format!("/status?Token={TOKEN}"),
        format!("/status?access_token={TOKEN}"),
    ] {
        assert_unauthorized(send(api.request(&query)).await, &query).await;
    }
    // The right token still works, whatever the case of the scheme.
    let request = api
        .request("/status")
        .header(header::AUTHORIZATION, format!("bEaReR {TOKEN}"));
    ok_body(send(request).await).await;
    server.stop().await;
}

/// The query token is percent-decoded (`%20` and `+` for a space alike), so a token with
/// reserved and non-ASCII characters works by query as it does by header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_token_is_percent_decoded() {
    const ODD: &str = "a b&c=d/é?+%";
    let (server, api) = start(&["--tone", "440", "--token", ODD], None).await;
    let every_byte_escaped: String = ODD.bytes().map(|b| format!("%{b:02X}")).collect();
    for query in [
        with_token("/status", ODD),
        format!("/status?token={every_byte_escaped}"),
    ] {
        assert!(!query.contains(' ') && !query.contains('é'), "{query}");
        ok_body(send(api.request(&query)).await).await;
    }
    let raw = HeaderValue::from_bytes(format!("Bearer {ODD}").as_bytes()).unwrap();
    let by_header = api.request("/status").header(header::AUTHORIZATION, raw);
    ok_body(send(by_header).await).await;
    let undecoded = api.request(&format!("/status?token={every_byte_escaped}x"));
    assert_unauthorized(send(undecoded).await, "one byte too many").await;
    server.stop().await;
}

/// What a WebSocket handshake for `request` got: the messages until the server closed, or the
/// HTTP status it was refused with.
async fn websocket(request: impl IntoClientRequest + Unpin) -> Result<Vec<Message>, u16> {
    let (mut socket, _) = match within(STEP, "a WebSocket handshake", connect_async(request)).await
    {
        Ok(connected) => connected,
        Err(tungstenite::Error::Http(response)) => return Err(response.status().as_u16()),
        Err(e) => panic!("WebSocket handshake: {e}"),
    };
    let mut messages = Vec::new();
    while let Some(message) = within(STEP, "a WebSocket message", socket.next()).await {
        match message.expect("a WebSocket message") {
            Message::Close(_) => break,
            message => messages.push(message),
        }
    }
    Ok(messages)
}

/// The WebSocket handshake is refused with 401 without the right token, and succeeds with it
/// by query (what a browser can send) or by header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_needs_the_token_too() {
    let (server, api) = start(&["--tone", "440", "--token", TOKEN], Some(TOKEN)).await;
    let url = format!("ws://{}{WEBSOCKET}", api.addr);
    assert_eq!(websocket(url.as_str()).await, Err(401), "no token");
    let wrong = with_token(&url, "wrong");
    assert_eq!(websocket(wrong.as_str()).await, Err(401), "wrong token");

    let by_query = with_token(&url, TOKEN).into_client_request().unwrap();
    let mut by_header = url.as_str().into_client_request().unwrap();
    let bearer = HeaderValue::from_str(&format!("Bearer {TOKEN}")).unwrap();
    by_header
        .headers_mut()
        .insert(header::AUTHORIZATION, bearer);
    for request in [by_query, by_header] {
        let messages = websocket(request).await.expect("the handshake succeeds");
        let frames = messages.iter().filter(|m| m.is_binary()).count();
        assert!(messages[0].is_text(), "the stream info first: {messages:?}");
        assert_eq!(frames, 2, "{messages:?}");
    }
    server.stop().await;
}

/// Runs `curl` with `args` on a blocking thread, so the runtime stays free for the server.
async fn curl(args: Vec<String>) -> std::process::Output {
    let output = tokio::task::spawn_blocking(move || {
        common::output_within(Command::new("curl").args(&args), Duration::from_secs(20))
    })
    .await
    .unwrap();
    assert!(output.status.success(), "curl: {output:?}");
    output
}

/// curl, as the README shows it, streams with the token by header or query and is told why
/// without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_streams_with_the_token_and_is_refused_without() {
    let (server, api) = start(&["--tone", "440", "--token", TOKEN], Some(TOKEN)).await;
    let url = api.url("/stream.pcm?frames=3");
    let expected_bytes = 3 * 1024 * 2 * 4;
    let by_header = curl(vec![
        "-sSN".into(),
        "-H".into(),
        format!("Authorization: Bearer {TOKEN}"),
        url.clone(),
    ])
    .await;
    assert_eq!(by_header.stdout.len(), expected_bytes);
    let by_query = curl(vec!["-sSN".into(), with_token(&url, TOKEN)]).await;
    assert_eq!(by_query.stdout.len(), expected_bytes);

    let refused = curl(vec![
        "-sS".into(),
        "-w".into(),
        "\n%{http_code}".into(),
        url,
    ])
    .await;
    let text = String::from_utf8(refused.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    assert_eq!(code, "401", "{text}");
    let body: Value = serde_json::from_str(body).expect("a JSON error");
    assert!(body["error"].as_str().unwrap().contains("token"), "{body}");
    server.stop().await;
}

/// With `--max-listeners 2`, a third listener gets 503 with Retry-After while two are
/// connected, and is accepted once one of them has gone; `/status` is not a listener, and a
/// request without the token is refused for that before it could take a place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_listeners_refuses_the_third_until_one_leaves() {
    let args = ["--tone", "440", "--token", TOKEN, "--max-listeners", "2"];
    let (server, api) = start(&args, Some(TOKEN)).await;
    let mut first = send(api.authed("/stream.pcm")).await;
    let mut second = send(api.authed("/stream.ndjson")).await;
    for listener in [&mut first, &mut second] {
        assert_eq!(listener.status(), 200);
        first_bytes(listener).await;
    }
    api.wait_for_listeners(2).await;

    for path in ["/stream.wav", "/stream.pcm", "/stream.ndjson", "/events"] {
        let refused = send(api.authed(path)).await;
        assert_eq!(refused.status(), 503, "{path}");
        let retry_after: u64 = common::header(&refused, "retry-after")
            .parse()
            .expect("Retry-After in seconds");
        assert!(retry_after > 0, "{path}");
        assert_json_error(refused, "too many listeners").await;
    }
    assert_unauthorized(send(api.request("/stream.wav")).await, "full, no token").await;
    let ws_url = format!("ws://{}/ws", server.addr);
    assert_eq!(websocket(with_token(&ws_url, TOKEN)).await, Err(503));
    let status = api.status().await;
    assert_eq!(status["listeners"]["current"], 2);
    assert_eq!(
        status["listeners"]["total"], 2,
        "refused listeners are not counted"
    );

    drop(first);
    api.wait_for_listeners(1).await;
    let mut third = send(api.authed("/stream.wav")).await;
    assert_eq!(third.status(), 200);
    first_bytes(&mut third).await;
    let status = api.wait_for_listeners(2).await;
    assert_eq!(status["listeners"]["peak"], 2);
    assert_eq!(status["listeners"]["total"], 3);
    drop((second, third));
    server.stop().await;
}

/// A CORS preflight for a GET with an Authorization header, from `origin`.
fn preflight(api: &Api, path: &str, origin: &str) -> RequestBuilder {
    api.client
        .request(Method::OPTIONS, api.url(path))
        .header(header::ORIGIN, origin)
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "authorization")
}

/// Checks a preflight response allows a GET with an Authorization header from `allowed_origin`.
fn assert_preflight_allows(response: &Response, allowed_origin: &str) {
    let url = response.url();
    assert!(
        [200, 204].contains(&response.status().as_u16()),
        "{url}: {}",
        response.status()
    );
    assert_eq!(
        optional_header(response, "access-control-allow-origin"),
        Some(allowed_origin),
        "{url}"
    );
    let methods = header_list(response, "access-control-allow-methods");
    assert!(methods.contains(&"get".to_owned()), "{url}: {methods:?}");
    let headers = header_list(response, "access-control-allow-headers");
    assert!(
        headers.contains(&"authorization".to_owned()),
        "{url}: {headers:?}"
    );
}

/// With `--cors-origin` and `--token`, a page on that origin may read the streams and their
/// X-Pcm-* headers (and a refusal's reasons); its preflight succeeds without the token, as
/// browsers send none; another origin is not allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_lets_the_configured_origin_read_streams() {
    const ORIGIN: &str = "https://example.org";
    let args = ["--tone", "440", "--token", TOKEN, "--cors-origin", ORIGIN];
    let (server, api) = start(&args, Some(TOKEN)).await;

    for path in PROTECTED {
        let response = send(preflight(&api, path, ORIGIN)).await;
        assert_preflight_allows(&response, ORIGIN);
    }

    let response = send(
        api.authed("/stream.pcm?frames=1")
            .header(header::ORIGIN, ORIGIN),
    )
    .await;
    assert_eq!(
        optional_header(&response, "access-control-allow-origin"),
        Some(ORIGIN)
    );
    let exposed = header_list(&response, "access-control-expose-headers");
    for name in [
        "x-pcm-format",
        "x-pcm-rate",
        "x-pcm-channels",
        "x-pcm-frame-size",
        "retry-after",
    ] {
        assert!(exposed.contains(&name.to_owned()), "{name} in {exposed:?}");
    }
    ok_body(response).await;

    let refused = send(api.request("/status").header(header::ORIGIN, ORIGIN)).await;
    assert_eq!(
        optional_header(&refused, "access-control-allow-origin"),
        Some(ORIGIN),
        "a page can read why it was refused"
    );
    assert_unauthorized(refused, "CORS without token").await;

    const OTHER: &str = "https://evil.example";
    let response = send(api.authed("/status").header(header::ORIGIN, OTHER)).await;
    assert_eq!(
        optional_header(&response, "access-control-allow-origin"),
        None
    );
    let response = send(preflight(&api, "/status", OTHER)).await;
    assert_eq!(
        optional_header(&response, "access-control-allow-origin"),
        None
    );
    server.stop().await;
}

/// With `--cors-origin '*'`, any origin may read the streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_star_allows_any_origin() {
    let (server, api) = start(&["--tone", "440", "--cors-origin", "*"], None).await;
    for origin in ["https://example.org", "http://localhost:3000"] {
        let response = send(
            api.request("/stream.ndjson?frames=1")
                .header(header::ORIGIN, origin),
        )
        .await;
        assert_eq!(
            optional_header(&response, "access-control-allow-origin"),
            Some("*")
        );
        ok_body(response).await;
        let response = send(preflight(&api, "/stream.pcm", origin)).await;
        assert_preflight_allows(&response, "*");
    }
    server.stop().await;
}

/// Without `--cors-origin`, responses carry no CORS headers and a preflight is not allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cors_origin_there_are_no_cors_headers() {
    const ORIGIN: &str = "https://example.org";
    let (server, api) = start(&["--tone", "440"], None).await;
    let response = send(
        api.request("/stream.pcm?frames=1")
            .header(header::ORIGIN, ORIGIN),
    )
    .await;
    assert_eq!(
        optional_header(&response, "access-control-allow-origin"),
        None
    );
    assert_eq!(
        optional_header(&response, "access-control-expose-headers"),
        None
    );
    ok_body(response).await;
    let response = send(preflight(&api, "/stream.pcm", ORIGIN)).await;
    assert_eq!(
        optional_header(&response, "access-control-allow-origin"),
        None
    );
    assert_eq!(
        optional_header(&response, "access-control-allow-methods"),
        None
    );
    assert!(!response.status().is_success(), "{}", response.status());
    server.stop().await;
}

/// Neither a wrong token nor the right one appears in the log, even at the most verbose
/// level, while the refusal itself is logged (which shows the log was captured).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_never_logged() {
    const WRONG_IN_HEADER: &str = "wrong-header-7f3a9c";
    const WRONG_IN_QUERY: &str = "wrong-query-5e81d2";
    // The harness's `spawn` sets RUST_LOG=info; this test needs trace.
    let mut child = Command::new(common::binary())
        .args(["--tone", "440", "--bind", "127.0.0.1:0"])
        .env("PCMCAST_TOKEN", TOKEN)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pcmcast binary starts");
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let addr: std::net::SocketAddr = loop {
        let line = lines
            .recv_timeout(STEP)
            .expect("pcmcast prints its address within 5 s");
        let addr = line
            .split("listening on http://")
            .nth(1)
            .map(|rest| rest.trim_end_matches('/').parse().expect("an address"));
        log.push(line);
        if let Some(addr) = addr {
            break addr;
        }
    };

    let client = reqwest::Client::new();
    let url = format!("http://{addr}/stream.pcm?frames=1");
    assert_unauthorized(
        send(client.get(&url).bearer_auth(WRONG_IN_HEADER)).await,
        "wrong header",
    )
    .await;
    let by_query = client.get(with_token(&url, WRONG_IN_QUERY));
    assert_unauthorized(send(by_query).await, "wrong query").await;
    ok_body(send(client.get(with_token(&url, TOKEN))).await).await;

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || common::wait_for_exit(&mut child, STEP))
        .await
        .unwrap()
        .expect("pcmcast exits within 5 s of SIGTERM");
    assert!(exit.success(), "{exit:?}");
    // The process has exited: the reader thread reaches EOF and closes the channel.
    loop {
        match lines.recv_timeout(STEP) {
            Ok(line) => log.push(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("stderr still open after exit"),
        }
    }
    let log = log.join("\n");
    assert!(
        log.contains("missing or wrong token"),
        "the refusal is logged at debug level:\n{log}"
    );
    for secret in [WRONG_IN_HEADER, WRONG_IN_QUERY, TOKEN] {
        assert!(!log.contains(secret), "'{secret}' is in the log:\n{log}");
    }
}
