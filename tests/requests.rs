//! Property tests of bad requests to every stream endpoint, against one in-process server with a
//! tone source: unknown, repeated, malformed and non-UTF-8 query parameters are each a 400 whose
//! JSON error `{"error": "…"}` names the parameter, `/ws` refuses them before the upgrade, and
//! none of them becomes a listener. A request line that is not valid at all (raw non-UTF-8
//! bytes) is refused by the HTTP layer, and the server keeps serving.
//!
//! "Naming" a parameter means the message contains `parameter '<name>'`. Names and values are
//! percent-decoded with bytes that are not UTF-8 turned into U+FFFD, so a name that is not UTF-8
//! (`%FF%FE`) is named in that lossy form (`'\u{FFFD}\u{FFFD}'`).
//!
//! Every request and read is bounded in time; no test sleeps.

mod common;

use std::net::SocketAddr;
use std::sync::OnceLock;

use common::api::{Api, STEP, error_message, json_error, within};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio_tungstenite::tungstenite;

/// Cases per property: each is one or two requests to the shared server.
const CASES: u32 = 64;

/// A stream endpoint: the parameters it takes besides `token`, and the `format` values it
/// accepts.
#[derive(Debug)]
struct Endpoint {
    path: &'static str,
    params: &'static [&'static str],
    formats: &'static [&'static str],
}

impl Endpoint {
    const fn new(
        path: &'static str,
        params: &'static [&'static str],
        formats: &'static [&'static str],
    ) -> Endpoint {
        Endpoint {
            path,
            params,
            formats,
        }
    }
}

/// Every stream endpoint: its path, parameters and formats.
const ENDPOINTS: &[Endpoint] = &[
    Endpoint::new("/stream.pcm", &["format", "frames"], &["f32le", "s16le"]),
    Endpoint::new("/stream.wav", &["format", "frames"], &["f32le", "s16le"]),
    Endpoint::new("/stream.ndjson", &["frames"], &[]),
    Endpoint::new("/events", &["frames"], &[]),
    Endpoint::new("/ws", &["format", "frames"], &["f32le", "json"]),
    Endpoint::new("/stream.opus", &["bitrate", "frames"], &[]),
    Endpoint::new("/stream.flac", &["frames"], &[]),
];

/// Every format any endpoint accepts, and near misses of them.
const FORMAT_LOOKALIKES: &[&str] = &[
    "f32le",
    "s16le",
    "json",
    "F32LE",
    "S16le",
    "Json",
    "f32",
    "s16",
    "f32be",
    "s16be",
    "u8",
    "pcm",
    "wav",
    "ndjson",
    " f32le",
    "s16le ",
    "f32le\0",
    "f32le,s16le",
    "",
];

/// Near misses of the parameter names.
const NAME_LOOKALIKES: &[&str] = &[
    "format", "frames", "Format", "FRAMES", "frame", "framess", " frames", "frames ", "format[]",
    "Token", "tokens", "token ", "volume", "rate", "channels", "",
];

/// The server every test shares, and the runtime that drives it and the clients.
struct Shared {
    runtime: Runtime,
    api: Api,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let runtime = common::runtime();
        // Runs until the test process exits: its task is detached, never cancelled.
        let server = runtime.block_on(common::start(&["--tone", "440"]));
        let api = Api::new(server.addr);
        Shared { runtime, api }
    })
}

/// Runs `test` on [`CASES`] cases of `strategy`, then checks that no request so far became a
/// listener (no test in this file ever makes one).
fn check<S: Strategy>(strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>) {
    let mut runner = TestRunner::new(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&strategy, test)
        .unwrap_or_else(|failure| panic!("{failure}"));
    let shared = shared();
    let status = shared.runtime.block_on(shared.api.status());
    assert_eq!(
        status["listeners"]["total"], 0,
        "rejected requests never subscribe: {status}"
    );
}

fn endpoint() -> impl Strategy<Value = &'static Endpoint> {
    proptest::sample::select(ENDPOINTS.iter().collect::<Vec<_>>())
}

/// `name=value`, percent-encoded (`form_urlencoded` writes a space as `+`).
fn pair(name: &str, value: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair(name, value)
        .finish()
}

/// Every byte as `%XX`.
fn percent_encoded(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

/// A value `endpoint` accepts for its parameter `name`.
fn valid_value(endpoint: &Endpoint, name: &str) -> BoxedStrategy<String> {
    match name {
        "frames" => (1..=u64::MAX).prop_map(|n| n.to_string()).boxed(),
        "format" => proptest::sample::select(endpoint.formats)
            .prop_map(str::to_owned)
            .boxed(),
        "bitrate" => proptest::sample::select(&pcmcast::codec::opus::BITRATES_KBPS[..])
            .prop_map(|kbps| kbps.to_string())
            .boxed(),
        "token" => any::<String>().boxed(),
        _ => unreachable!("{name} is not a parameter of {}", endpoint.path),
    }
}

/// A query of one valid pair for each of `endpoint`'s parameters, in order, and `token`.
fn valid_pairs(endpoint: &'static Endpoint) -> impl Strategy<Value = Vec<String>> {
    endpoint
        .params
        .iter()
        .chain(&["token"])
        .map(|&name| valid_value(endpoint, name).prop_map(move |value| pair(name, &value)))
        .collect::<Vec<_>>()
}

/// Bytes that are not UTF-8: one byte that never occurs in UTF-8, anywhere among others.
fn non_utf8() -> impl Strategy<Value = Vec<u8>> {
    let never_utf8 = prop_oneof![0xF5u8..=0xFF, 0xC0u8..=0xC1];
    prop_oneof![
        Just(vec![0xFF, 0xFE]),
        (
            proptest::collection::vec(any::<u8>(), 0..6),
            never_utf8,
            proptest::collection::vec(any::<u8>(), 0..6),
        )
            .prop_map(|(mut bytes, invalid, after)| {
                bytes.push(invalid);
                bytes.extend(after);
                bytes
            }),
    ]
}

/// The message of the 400 JSON error that `GET path?query` must get; for `/ws`, through a
/// WebSocket handshake that the 400 must refuse before any upgrade.
fn rejection(path: &str, query: &str) -> String {
    let shared = shared();
    shared.runtime.block_on(async {
        if path == "/ws" {
            refused_handshake(shared.api.addr, query).await
        } else {
            json_error(shared.api.get(&format!("{path}?{query}")).await, 400).await
        }
    })
}

async fn refused_handshake(addr: SocketAddr, query: &str) -> String {
    let url = format!("ws://{addr}/ws?{query}");
    match within(STEP, &url, tokio_tungstenite::connect_async(url.as_str())).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400, "{url}");
            let content_type = response
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap());
            assert!(
                content_type.is_some_and(|t| t.starts_with("application/json")),
                "{url}: content-type {content_type:?}"
            );
            error_message(&url, response.body().as_deref().expect("a body"))
        }
        other => panic!("{url}: the handshake is refused with 400 before the upgrade: {other:?}"),
    }
}

/// Checks that the 400 for `path?query` names the parameter `name`.
fn names(path: &str, query: &str, name: &str) -> Result<(), TestCaseError> {
    let error = rejection(path, query);
    let naming = format!("parameter '{name}'");
    prop_assert!(
        error.contains(&naming),
        "{path}?{query}: {error:?} does not contain {naming:?}"
    );
    Ok(())
}

/// Property: a parameter the endpoint does not take is refused by name, wherever it stands
/// among valid ones.
#[test]
fn unknown_parameters_are_refused_by_name() {
    let names_and_queries = endpoint()
        .prop_flat_map(|endpoint| {
            let name = prop_oneof![
                proptest::sample::select(NAME_LOOKALIKES).prop_map(str::to_owned),
                any::<String>(),
            ]
            .prop_filter("a parameter of the endpoint", move |name| {
                name != "token" && !endpoint.params.contains(&name.as_str())
            });
            let valid = valid_pairs(endpoint);
            (
                Just(endpoint),
                name,
                any::<String>(),
                valid,
                any::<prop::sample::Index>(),
            )
        })
        .prop_map(|(endpoint, name, value, mut pairs, at)| {
            pairs.insert(at.index(pairs.len() + 1), pair(&name, &value));
            (endpoint, name, pairs.join("&"))
        });
    check(names_and_queries, |(endpoint, name, query)| {
        names(endpoint.path, &query, &name)
    });
}

/// Property: a parameter given twice is refused by name, even with valid values and others in
/// between.
#[test]
fn repeated_parameters_are_refused_by_name() {
    let names_and_queries = endpoint()
        .prop_flat_map(|endpoint| {
            let all: Vec<&str> = endpoint.params.iter().copied().chain(["token"]).collect();
            (Just(endpoint), proptest::sample::select(all))
        })
        .prop_flat_map(|(endpoint, name)| {
            let values = (valid_value(endpoint, name), valid_value(endpoint, name));
            (Just(name), values, valid_pairs(endpoint), any::<bool>()).prop_map(
                move |(name, (first, second), others, between)| {
                    let (first, second) = (pair(name, &first), pair(name, &second));
                    // The other valid parameters, none of them `name`, between the two or after.
                    let others: Vec<String> = others
                        .into_iter()
                        .filter(|p| !p.starts_with(&format!("{name}=")))
                        .collect();
                    let query = if between {
                        [vec![first], others, vec![second]].concat()
                    } else {
                        [vec![first, second], others].concat()
                    };
                    (endpoint, name, query.join("&"))
                },
            )
        });
    check(names_and_queries, |(endpoint, name, query)| {
        let error = rejection(endpoint.path, &query);
        let naming = format!("parameter '{name}' is given more than once");
        prop_assert!(error.contains(&naming), "{query}: {error:?}");
        Ok(())
    });
}

/// What `frames` accepts: a whole number from 1 to `u64::MAX`, in decimal digits.
fn valid_frames(value: &str) -> bool {
    value.bytes().all(|b| b.is_ascii_digit()) && value.parse::<u64>().is_ok_and(|n| n > 0)
}

/// Encoded `frames` values that must be refused.
fn bad_frames() -> impl Strategy<Value = String> {
    let whitespace =
        proptest::sample::select(&["", " ", "\t", "\n", "\r", "\u{a0}", "\u{3000}"][..]);
    let decoded = prop_oneof![
        (1..=u64::MAX).prop_map(|n| format!("-{n}")),
        proptest::sample::select(
            &[
                "0", "00", "-0", "+0", "1.5", "1e3", "0x10", "5_000", "٣", "５"
            ][..]
        )
        .prop_map(str::to_owned),
        (u128::from(u64::MAX) + 1..=u128::MAX).prop_map(|n| n.to_string()),
        "[1-9][0-9]{39,60}",
        (whitespace.clone(), 1..=u64::MAX, whitespace)
            .prop_filter("some whitespace", |(before, _, after)| {
                !before.is_empty() || !after.is_empty()
            })
            .prop_map(|(before, n, after)| format!("{before}{n}{after}")),
        (1..=u64::MAX).prop_map(|n| format!("+{n}")),
        any::<String>().prop_filter("a valid count", |v| !valid_frames(v)),
    ];
    prop_oneof![
        decoded.prop_map(|value| pair("frames", &value)),
        // A literal `+` in a query is a space.
        (1..=u64::MAX).prop_map(|n| format!("frames=+{n}")),
    ]
}

/// Property: `frames` that is not a whole number from 1 to `u64::MAX` in plain digits (negative,
/// zero, too big, padded, signed, not a number) is refused by name.
#[test]
fn bad_frames_are_refused_by_name() {
    check((endpoint(), bad_frames()), |(endpoint, query)| {
        names(endpoint.path, &query, "frames")
    });
}

/// Property: a `format` the endpoint does not accept (`/stream.ndjson` and `/events` accept
/// none) is refused by name.
#[test]
fn other_formats_are_refused_by_name() {
    let formats = prop_oneof![
        proptest::sample::select(FORMAT_LOOKALIKES).prop_map(str::to_owned),
        any::<String>(),
    ];
    let cases = (endpoint(), formats).prop_filter("an accepted format", |(endpoint, format)| {
        !endpoint.formats.contains(&format.as_str())
    });
    check(cases, |(endpoint, format)| {
        names(endpoint.path, &pair("format", &format), "format")
    });
}

/// Property: percent-encoded bytes that are not UTF-8 are refused by name, as the value of a
/// parameter and as a name (named in its lossy form).
#[test]
fn non_utf8_names_and_values_are_refused_by_name() {
    let cases = (
        endpoint(),
        proptest::sample::select(&["frames", "format"][..]),
        non_utf8(),
        any::<bool>(),
    );
    check(cases, |(endpoint, param, bytes, as_name)| {
        let encoded = percent_encoded(&bytes);
        if as_name {
            let lossy = String::from_utf8_lossy(&bytes);
            prop_assert!(lossy.contains(char::REPLACEMENT_CHARACTER), "{lossy:?}");
            names(endpoint.path, &format!("{encoded}=1"), &lossy)
        } else {
            names(endpoint.path, &format!("{param}={encoded}"), param)
        }
    });
}

/// Where raw bytes go in a request line.
#[derive(Clone, Copy, Debug)]
enum Position {
    Path,
    Name,
    Value,
}

/// Sends `GET target HTTP/1.1` over a raw socket (for `/ws` with the upgrade headers) and
/// returns the response's status code.
async fn raw_status(addr: SocketAddr, target: &[u8], websocket: bool) -> u16 {
    let mut socket = within(STEP, "connecting", TcpStream::connect(addr))
        .await
        .unwrap();
    let mut request = [b"GET ", target, b" HTTP/1.1\r\nHost: pcmcast\r\n"].concat();
    if websocket {
        request.extend_from_slice(
            b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        );
    } else {
        request.extend_from_slice(b"Connection: close\r\n");
    }
    request.extend_from_slice(b"\r\n");
    socket.write_all(&request).await.unwrap();
    let mut status_line = String::new();
    within(
        STEP,
        "the status line",
        BufReader::new(socket).read_line(&mut status_line),
    )
    .await
    .unwrap();
    status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3)?.parse().ok())
        .unwrap_or_else(|| panic!("a status line, not {status_line:?}"))
}

/// Property: raw bytes that are not UTF-8 in the request line (invalid in a URI) are refused
/// with a 4xx before any handler, and the server keeps serving: `/status` answers after each.
#[test]
fn raw_non_utf8_request_lines_are_refused() {
    let raw = proptest::collection::vec(0x80u8..=0xFF, 0..4).prop_flat_map(|prefix| {
        (
            Just(prefix),
            0xF5u8..=0xFF,
            proptest::collection::vec(0x80u8..=0xFF, 0..4),
        )
            .prop_map(|(mut bytes, invalid, after)| {
                bytes.push(invalid);
                bytes.extend(after);
                bytes
            })
    });
    let position = prop_oneof![
        Just(Position::Path),
        Just(Position::Name),
        Just(Position::Value)
    ];
    check((endpoint(), position, raw), |(endpoint, position, raw)| {
        let path = endpoint.path.as_bytes();
        let target = match position {
            Position::Path => [path, &raw].concat(),
            Position::Name => [path, b"?", &raw, b"=1"].concat(),
            Position::Value => [path, b"?frames=", &raw].concat(),
        };
        let shared = shared();
        let status = shared.runtime.block_on(async {
            let status = raw_status(shared.api.addr, &target, endpoint.path == "/ws").await;
            shared.api.status().await;
            status
        });
        prop_assert!(
            (400..500).contains(&status),
            "{:?}: status {status}",
            String::from_utf8_lossy(&target)
        );
        Ok(())
    });
}
