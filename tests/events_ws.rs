//! End-to-end tests of `/events` (SSE) and `/ws` (WebSocket) against real in-process servers
//! on 127.0.0.1:0, with real clients: reqwest (its streaming body parsed as SSE here) and
//! tokio-tungstenite.
//!
//! No test sleeps to synchronise: each waits for the event it needs, polling `/status` with a
//! deadline where the event is on the server, and every wait and read is bounded in time.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::api::{
    self, Api, Frame, STEP, error_message, frames_produced, json_error, parse_frame, parse_json,
    within,
};
use futures_util::StreamExt;
use pcmcast::source::tone;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Checks the stream info that opens `/events` and `/ws`.
fn check_info(info: &Value, rate_hz: u32, channels: u16, frame_size: usize) {
    assert_eq!(info["rate"], rate_hz, "{info}");
    assert_eq!(info["channels"], channels, "{info}");
    assert_eq!(info["frame_size"], frame_size, "{info}");
    assert_eq!(info["format"], "f32", "{info}");
    assert_eq!(info["source"]["kind"], "tone", "{info}");
    assert!(info["source"]["name"].is_string(), "{info}");
}

/// One Server-Sent Event.
#[derive(Debug)]
struct SseEvent {
    event: String,
    id: Option<String>,
    data: String,
}

/// An `/events` response read event by event, the SSE framing parsed by hand.
struct SseClient {
    response: reqwest::Response,
    /// Received bytes not yet split into events.
    pending: Vec<u8>,
    /// How much of `pending` holds no event end (frame events can be large).
    scanned: usize,
}

impl SseClient {
    async fn open(api: &Api, path_and_query: &str) -> SseClient {
        let response = api.get(path_and_query).await;
        assert_eq!(response.status(), 200, "GET {path_and_query}");
        assert_eq!(
            common::header(&response, "content-type"),
            "text/event-stream"
        );
        SseClient {
            response,
            pending: Vec::new(),
            scanned: 0,
        }
    }

    /// The next event, skipping comments; `None` once the body has ended cleanly.
    async fn next_event(&mut self) -> Option<SseEvent> {
        within(STEP, "an SSE event", async {
            loop {
                let from = self.scanned.saturating_sub(1);
                if let Some(at) = self.pending[from..].windows(2).position(|w| w == b"\n\n") {
                    let end = from + at;
                    let block: Vec<u8> = self.pending.drain(..end + 2).collect();
                    self.scanned = 0;
                    if let Some(event) = parse_event(&block[..end]) {
                        return Some(event);
                    }
                    continue;
                }
                self.scanned = self.pending.len();
                let chunk = self.response.chunk().await.expect("the body reads");
                match chunk {
                    Some(chunk) => self.pending.extend_from_slice(&chunk),
                    None => {
                        assert!(self.pending.is_empty(), "the body ends between events");
                        return None;
                    }
                }
            }
        })
        .await
    }

    /// The `info` event that opens the stream.
    async fn info(&mut self) -> Value {
        let info = self.next_event().await.expect("an info event");
        assert_eq!(info.event, "info", "the first event is the info");
        parse_json(info.data.as_bytes())
    }

    /// The next `frame` event's data, checking that its id is its seq.
    async fn next_frame(&mut self) -> Option<(Value, Frame)> {
        let event = self.next_event().await?;
        assert_eq!(event.event, "frame");
        let frame = parse_frame(event.data.as_bytes());
        assert_eq!(
            event.id,
            Some(frame.seq.to_string()),
            "the event id is the seq"
        );
        Some((parse_json(event.data.as_bytes()), frame))
    }

    /// The frame events up to the end of the body, which must come within [`STEP`].
    async fn frames_to_end(&mut self) -> Vec<(Value, Frame)> {
        within(STEP, "the end of the SSE body", async {
            let mut frames = Vec::new();
            while let Some(frame) = self.next_frame().await {
                frames.push(frame);
            }
            frames
        })
        .await
    }
}

/// Parses one event block (its lines without the blank line); `None` for comments only.
fn parse_event(block: &[u8]) -> Option<SseEvent> {
    let block = std::str::from_utf8(block).expect("SSE is UTF-8");
    let mut event = None;
    let mut id = None;
    let mut data: Option<String> = None;
    for line in block.split('\n') {
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(": ").expect("field: value");
        match field {
            "event" => event = Some(value.to_owned()),
            "id" => id = Some(value.to_owned()),
            "data" => {
                assert!(data.is_none(), "one data line per event: {block:.200}");
                data = Some(value.to_owned());
            }
            _ => panic!("unexpected SSE field '{field}'"),
        }
    }
    let data = data?;
    Some(SseEvent {
        event: event.expect("every event is named"),
        id,
        data,
    })
}

async fn ws_connect(addr: SocketAddr, path_and_query: &str) -> Ws {
    let url = format!("ws://{addr}{path_and_query}");
    let (ws, _) = within(
        STEP,
        "a WebSocket handshake",
        tokio_tungstenite::connect_async(url),
    )
    .await
    .unwrap_or_else(|e| panic!("WebSocket {path_and_query}: {e}"));
    ws
}

/// The next message; the connection must not end first.
async fn ws_next<S>(ws: &mut WebSocketStream<S>) -> Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    within(STEP, "a WebSocket message", ws.next())
        .await
        .expect("the connection stays open")
        .expect("the message reads")
}

/// The text message with the stream info that opens `/ws`.
async fn ws_info<S>(ws: &mut WebSocketStream<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match ws_next(ws).await {
        Message::Text(text) => parse_json(text.as_bytes()),
        other => panic!("the first message is the info text, not {other:?}"),
    }
}

/// Reads messages up to the server's Close frame, then checks the closing handshake completes
/// (the stream ends without error). Returns the messages before the Close, and the Close.
async fn ws_until_close(ws: &mut Ws) -> (Vec<Message>, CloseFrame) {
    let mut messages = Vec::new();
    let close = within(STEP, "the server's Close", async {
        loop {
            match ws_next(ws).await {
                Message::Close(frame) => return frame.expect("the Close frame says why"),
                message => messages.push(message),
            }
        }
    })
    .await;
    let end = within(STEP, "the end of the closing handshake", ws.next()).await;
    assert!(end.is_none(), "the connection ends cleanly: {end:?}");
    (messages, close)
}

/// An NDJSON listener read by its own task, so that it keeps up while the test reads others.
struct NdjsonListener {
    frames: mpsc::UnboundedReceiver<(Value, Frame)>,
}

impl NdjsonListener {
    async fn open(api: &Api) -> NdjsonListener {
        let mut response = api.get("/stream.ndjson").await;
        assert_eq!(response.status(), 200);
        let (sender, frames) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut pending = Vec::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                pending.extend_from_slice(&chunk);
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    let frame = (parse_json(&line), parse_frame(&line));
                    if sender.send(frame).is_err() {
                        return;
                    }
                }
            }
        });
        NdjsonListener { frames }
    }

    /// Frames read up to and including seq `last`, checking that none was skipped.
    async fn frames_until(&mut self, last: u64) -> Vec<(Value, Frame)> {
        let mut frames: Vec<(Value, Frame)> = Vec::new();
        within(STEP, "NDJSON frames", async {
            while frames.last().is_none_or(|(_, f)| f.seq < last) {
                let frame = self.frames.recv().await.expect("the NDJSON body goes on");
                if let Some((_, previous)) = frames.last() {
                    assert_eq!(
                        frame.1.seq,
                        previous.seq + 1,
                        "the NDJSON listener keeps up"
                    );
                }
                frames.push(frame);
            }
        })
        .await;
        frames
    }
}

/// An SSE client and WebSocket clients in both formats each get N consecutive frames after
/// the info, then the end (SSE: the body ends; WebSocket: a normal Close right after the Nth
/// frame); for the same seq, every one carries exactly what an NDJSON listener gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_and_ws_frames_are_the_ndjson_frames() {
    const FRAMES: usize = 20;
    const RATE_HZ: u32 = 48_000;
    const CHANNELS: u16 = 2;
    const FRAME_SIZE: usize = 256;
    // A backlog far larger than any scheduling hiccup: nobody is skipped here.
    let server =
        common::start_line("--tone 1001 --rate 48000 --channels 2 --frame-size 256 --backlog 1000")
            .await;
    let _stop = server.shutdown.clone().drop_guard();
    let api = Api::new(server.addr);
    // Connected first, the NDJSON listener gets every frame the others get.
    let mut ndjson = NdjsonListener::open(&api).await;

    let sse = async {
        let mut sse = SseClient::open(&api, &format!("/events?frames={FRAMES}")).await;
        let info = sse.info().await;
        (info, sse.frames_to_end().await)
    };
    let ws_json = async {
        let mut ws = ws_connect(server.addr, &format!("/ws?format=json&frames={FRAMES}")).await;
        let info = ws_info(&mut ws).await;
        let (messages, close) = ws_until_close(&mut ws).await;
        (info, messages, close)
    };
    let ws_binary = async {
        let mut ws = ws_connect(server.addr, &format!("/ws?frames={FRAMES}")).await;
        let info = ws_info(&mut ws).await;
        let (messages, close) = ws_until_close(&mut ws).await;
        (info, messages, close)
    };
    let ((sse_info, sse), (json_info, json, json_close), (binary_info, binary, binary_close)) =
        tokio::join!(sse, ws_json, ws_binary);

    for info in [&sse_info, &json_info, &binary_info] {
        check_info(info, RATE_HZ, CHANNELS, FRAME_SIZE);
    }
    assert_eq!(
        sse_info, json_info,
        "SSE and WebSocket open with the same info"
    );
    assert_eq!(sse.len(), FRAMES, "the SSE body ends after N frames");
    for (messages, close) in [(&json, &json_close), (&binary, &binary_close)] {
        assert_eq!(messages.len(), FRAMES, "a Close right after N frames");
        assert_eq!(close.code, CloseCode::Normal, "{close:?}");
    }
    let json: Vec<(Value, Frame)> = json
        .iter()
        .map(|message| match message {
            Message::Text(text) => (parse_json(text.as_bytes()), parse_frame(text.as_bytes())),
            other => panic!("format=json sends text messages, not {other:?}"),
        })
        .collect();
    let binary: Vec<Vec<f32>> = binary
        .iter()
        .map(|message| match message {
            Message::Binary(bytes) => common::f32le(bytes),
            other => panic!("binary frames only (nothing was skipped), not {other:?}"),
        })
        .collect();

    // Every frame any client got has been published: the NDJSON listener gets it too.
    let newest = frames_produced(&api.status().await) - 1;
    let reference = ndjson.frames_until(newest).await;
    let by_seq: HashMap<u64, &(Value, Frame)> =
        reference.iter().map(|frame| (frame.1.seq, frame)).collect();
    for (name, frames) in [("SSE", &sse), ("WebSocket json", &json)] {
        for (i, (value, frame)) in frames.iter().enumerate() {
            assert_eq!(frame.seq, frames[0].1.seq + i as u64, "{name}: consecutive");
            assert_eq!(frame.skipped, None, "{name}");
            let (expected, _) = by_seq[&frame.seq];
            assert_eq!(value, expected, "{name}: seq {} as in NDJSON", frame.seq);
        }
    }
    // Binary messages carry no seq: the first is found by its samples (the tone's frames
    // repeat only every 375 frames, 2 s), the rest follow it.
    let first = reference
        .iter()
        .position(|(_, frame)| same_bits(&frame.samples, &binary[0]))
        .expect("the first binary frame is an NDJSON frame");
    for (i, samples) in binary.iter().enumerate() {
        let (_, expected) = reference
            .get(first + i)
            .expect("NDJSON frames cover the binary ones");
        assert_eq!(samples.len(), FRAME_SIZE * usize::from(CHANNELS));
        assert!(
            same_bits(samples, &expected.samples),
            "binary frame {i} is NDJSON seq {}",
            expected.seq
        );
    }
    server.stop().await;
}

/// What both ends' WebSocket layers may buffer for a client that stopped reading.
const WEBSOCKET_BUFFER_BYTES: usize = 1024 * 1024;

/// Frames of `bytes_per_frame` that fill the buffers of a stalled WebSocket connection.
fn frames_to_fill_a_stalled_connection(bytes_per_frame: usize) -> u64 {
    api::frames_to_fill_a_stalled_connection(bytes_per_frame, WEBSOCKET_BUFFER_BYTES)
}

/// A WebSocket client with a small receive buffer, that reads only when asked to.
async fn ws_connect_stalling(addr: SocketAddr, path_and_query: &str) -> WebSocketStream<TcpStream> {
    let stream = api::connect_stalling(addr).await;
    let url = format!("ws://{addr}{path_and_query}");
    let (ws, _) = within(
        STEP,
        "a WebSocket handshake",
        tokio_tungstenite::client_async(url, stream),
    )
    .await
    .unwrap_or_else(|e| panic!("WebSocket {path_and_query}: {e}"));
    ws
}

/// WebSocket clients that stop reading fall behind, are skipped forward, and see it: in json
/// mode a `skipped` field equal to the seq gap; in binary mode a `{"skipped":N,"seq":S}` text
/// message just before frame S, whose samples (and those of the frame before the notice)
/// show exactly N frames are missing. Meanwhile the source and other listeners go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_clients_that_stop_reading_are_skipped_forward_and_told() {
    const HZ: f64 = 1001.0;
    const RATE_HZ: u32 = 96_000;
    const CHANNELS: usize = 8;
    const FRAME_SIZE: usize = 4096;
    const BACKLOG: u64 = 8;
    // Big frames fill the socket buffers fast. The tone's frames repeat only every 375 frames
    // (4096 × 1001 / 96000 cycles per frame), so a frame's samples identify its seq here.
    let server =
        common::start_line("--tone 1001 --rate 96000 --channels 8 --frame-size 4096 --backlog 8")
            .await;
    let _stop = server.shutdown.clone().drop_guard();
    let api = Api::new(server.addr);
    let binary_frame_bytes = FRAME_SIZE * CHANNELS * 4;
    let stall_frames = frames_to_fill_a_stalled_connection(api.shortest_ndjson_line().await)
        .max(frames_to_fill_a_stalled_connection(binary_frame_bytes));
    let tone_frame = |seq: u64| -> Vec<f32> {
        let pts = seq * FRAME_SIZE as u64;
        (0..FRAME_SIZE as u64)
            .flat_map(|i| [tone::sample_at(HZ, RATE_HZ, pts + i); CHANNELS])
            .collect()
    };

    let before = frames_produced(&api.status().await);
    let mut json = ws_connect_stalling(server.addr, "/ws?format=json").await;
    let mut binary = ws_connect_stalling(server.addr, "/ws").await;
    ws_info(&mut json).await;
    ws_info(&mut binary).await;
    let connected = frames_produced(&api.wait_for_listeners(2).await);
    // Once the buffers hold all they can, every further frame puts the clients further behind.
    let status = api
        .wait_for_frames(connected + stall_frames + BACKLOG)
        .await;
    let newest_before_reading = frames_produced(&status);
    // Stalled clients hold nobody else up: a new listener gets its frames.
    let mut sse = SseClient::open(&api, "/events?frames=3").await;
    sse.info().await;
    assert_eq!(sse.frames_to_end().await.len(), 3);

    // Everything a client reads now was buffered before it stalled, until the frame the hub
    // skips it forward to: within the backlog of the newest frame, or later.
    let until_seq = newest_before_reading - BACKLOG - 1;
    let mut previous: Option<u64> = None;
    let mut skips = 0;
    within(STEP, "the json client catching up", async {
        while previous.is_none_or(|seq| seq < until_seq) {
            let message = ws_next(&mut json).await;
            let Message::Text(text) = message else {
                panic!("format=json sends text messages, not {message:?}");
            };
            let frame = parse_frame(text.as_bytes());
            if let Some(previous) = previous {
                let gap = frame.seq - previous - 1;
                assert_eq!(
                    frame.skipped,
                    (gap > 0).then_some(gap),
                    "seq {} after seq {previous}",
                    frame.seq
                );
                skips += usize::from(gap > 0);
            }
            previous = Some(frame.seq);
        }
    })
    .await;
    assert!(skips > 0, "the json client was skipped forward");

    // The first binary frame is the first frame published after the client subscribed
    // (one may have been in flight), unless the server was so slow to start sending that it
    // was skipped forward already.
    let mut seq = match ws_next(&mut binary).await {
        Message::Binary(bytes) => {
            let samples = common::f32le(&bytes);
            (before.saturating_sub(1)..=connected)
                .find(|&seq| same_bits(&samples, &tone_frame(seq)))
                .expect("the first binary frame is one published while the client connected")
        }
        Message::Text(text) => {
            let seq = parse_json(text.as_bytes())["seq"]
                .as_u64()
                .expect("a skip notice");
            let Message::Binary(bytes) = ws_next(&mut binary).await else {
                panic!("a binary frame after a skip notice");
            };
            assert!(
                same_bits(&common::f32le(&bytes), &tone_frame(seq)),
                "seq {seq}"
            );
            seq
        }
        other => panic!("a binary frame first, not {other:?}"),
    };
    let mut notices = 0;
    within(STEP, "the binary client catching up", async {
        while seq < until_seq {
            let mut expected = seq + 1;
            let mut message = ws_next(&mut binary).await;
            if let Message::Text(text) = &message {
                let notice = parse_json(text.as_bytes());
                let skipped = notice["skipped"].as_u64().expect("a skip notice");
                assert!(skipped > 0, "{notice}");
                assert_eq!(
                    notice["seq"],
                    expected + skipped,
                    "{notice} after seq {seq}"
                );
                expected += skipped;
                notices += 1;
                message = ws_next(&mut binary).await;
            }
            let Message::Binary(bytes) = message else {
                panic!("a binary frame, not {message:?}");
            };
            assert!(
                same_bits(&common::f32le(&bytes), &tone_frame(expected)),
                "the frame after seq {seq} is seq {expected}"
            );
            seq = expected;
        }
    })
    .await;
    assert!(notices > 0, "the binary client was skipped forward");

    let status = api.status().await;
    assert!(
        status["frames_skipped"].as_u64().unwrap() > 0,
        "/status counts the skips: {status}"
    );
    drop((json, binary));
    server.stop().await;
}

/// SSE and WebSocket clients count as listeners while connected and stop counting as soon as
/// they leave: dropped, or (WebSocket) closed with a Close frame, which the server answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_are_counted_and_removed_when_they_leave() {
    let server = common::start(&["--tone", "440", "--frame-size", "256"]).await;
    let _stop = server.shutdown.clone().drop_guard();
    let api = Api::new(server.addr);

    let mut sse = SseClient::open(&api, "/events").await;
    sse.info().await;
    sse.next_frame().await.expect("a frame");
    let mut dropped = ws_connect(server.addr, "/ws").await;
    let mut closing = ws_connect(server.addr, "/ws?format=json").await;
    for ws in [&mut dropped, &mut closing] {
        ws_info(ws).await;
        ws_next(ws).await;
    }
    let status = api.status().await;
    assert_eq!(status["listeners"]["current"], 3, "{status}");
    assert_eq!(status["listeners"]["total"], 3, "{status}");

    drop(sse);
    drop(dropped);
    api.wait_for_listeners(1).await;
    within(STEP, "sending Close", closing.close(None))
        .await
        .unwrap();
    // Frames sent before the server saw the Close may come first; then its reply.
    let mut answered = false;
    within(STEP, "the closing handshake", async {
        while let Some(message) = closing.next().await {
            match message.expect("the connection ends cleanly") {
                Message::Close(_) => answered = true,
                Message::Text(_) => assert!(!answered, "nothing after the Close reply"),
                other => panic!("{other:?}"),
            }
        }
    })
    .await;
    assert!(answered, "the server answers the client's Close");
    let status = api.wait_for_listeners(0).await;
    assert_eq!(status["listeners"]["total"], 3, "{status}");
    server.stop().await;
}

/// On shutdown an SSE body ends cleanly and a WebSocket gets a Close frame (going away), and
/// the server stops without waiting for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_sse_and_ws_cleanly() {
    let server = common::start(&["--tone", "440", "--frame-size", "256"]).await;
    let api = Api::new(server.addr);
    let mut sse = SseClient::open(&api, "/events").await;
    sse.info().await;
    let mut ws = ws_connect(server.addr, "/ws").await;
    ws_info(&mut ws).await;
    sse.next_frame().await.expect("a frame");
    ws_next(&mut ws).await;

    server.shutdown.cancel();
    sse.frames_to_end().await;
    let (_, close) = ws_until_close(&mut ws).await;
    assert_eq!(close.code, CloseCode::Away, "{close:?}");
    server.stop().await;
}

/// When a file played once ends, an SSE body ends cleanly and a WebSocket gets a normal Close,
/// after the file's last frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_of_the_source_ends_sse_and_ws() {
    const RATE_HZ: u32 = 8_000;
    const FRAME_SIZE: usize = 800;
    // 2 s: time enough to connect; 20 frames.
    let frames = 20;
    let dir = common::scratch_dir("events_ws_end_of_source");
    let wav = dir.join("two_seconds.wav");
    let samples: Vec<f32> = (0..frames * FRAME_SIZE)
        .map(|i| (i as f32 / 1e5).sin())
        .collect();
    common::write_float_wav(&wav, RATE_HZ, 1, &samples);
    let server = common::start(&["--wav", wav.to_str().unwrap(), "--frame-size", "800"]).await;
    let api = Api::new(server.addr);

    let mut sse = SseClient::open(&api, "/events").await;
    let mut ws = ws_connect(server.addr, "/ws?format=json").await;
    assert_eq!(sse.info().await["rate"], RATE_HZ);
    assert_eq!(ws_info(&mut ws).await["rate"], RATE_HZ);
    let (sse_last, ws_last) = tokio::join!(
        async { sse.frames_to_end().await.last().map(|(_, frame)| frame.seq) },
        async {
            let (messages, close) = ws_until_close(&mut ws).await;
            assert_eq!(close.code, CloseCode::Normal, "{close:?}");
            messages.last().map(|message| match message {
                Message::Text(text) => parse_frame(text.as_bytes()).seq,
                other => panic!("{other:?}"),
            })
        },
    );
    let last_seq = frames as u64 - 1;
    assert_eq!(
        sse_last,
        Some(last_seq),
        "SSE got up to the file's last frame"
    );
    assert_eq!(
        ws_last,
        Some(last_seq),
        "WebSocket got up to the file's last frame"
    );
    server
        .exits_by_itself(Duration::from_secs(10), "at the end of the file")
        .await;
}

/// With the hub full, `/events` and the `/ws` handshake are refused with 503 (and Retry-After)
/// before anything is streamed or upgraded, and nothing is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_refuses_sse_and_ws_with_503() {
    let server = common::start(&["--tone", "440", "--max-listeners", "1"]).await;
    let _stop = server.shutdown.clone().drop_guard();
    let api = Api::new(server.addr);
    let holder = api.get("/stream.ndjson").await;

    let response = api.get("/events").await;
    assert_eq!(common::header(&response, "retry-after"), "5");
    json_error(response, 503).await;
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr));
    match within(STEP, "a WebSocket handshake", refused).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            error_message(
                "the WebSocket handshake",
                response.body().as_deref().expect("a body"),
            );
        }
        other => panic!("the handshake is refused with 503, not {other:?}"),
    }
    drop(holder);
    api.wait_for_listeners(0).await;
    let mut ws = ws_connect(server.addr, "/ws?frames=1").await;
    ws_info(&mut ws).await;
    let (messages, _) = ws_until_close(&mut ws).await;
    assert_eq!(messages.len(), 1);
    let status = api.status().await;
    assert_eq!(
        status["listeners"]["total"], 2,
        "refused clients never count: {status}"
    );
    server.stop().await;
}

/// Bad parameters are 400 JSON errors naming the parameter, before any upgrade; a request to
/// `/ws` that is not a WebSocket handshake is a JSON error too; `token` is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors() {
    let server = common::start(&["--tone", "440"]).await;
    let _stop = server.shutdown.clone().drop_guard();
    let api = Api::new(server.addr);
    // (path and query, a word the message must contain)
    let cases = [
        ("/events?format=x", "format"),
        ("/events?format=json", "format"),
        ("/events?frames=0", "frames"),
        ("/events?frames=-1", "frames"),
        ("/events?frames=1&frames=1", "frames"),
        ("/events?volume=11", "volume"),
        ("/ws?format=x", "format"),
        ("/ws?format=s16le", "format"),
        ("/ws?frames=-1", "frames"),
        ("/ws?format=json&format=json", "format"),
        ("/ws", "WebSocket"),
    ];
    for (path, names) in cases {
        let error = json_error(api.get(path).await, 400).await;
        assert!(error.contains(names), "{path}: '{error}' names '{names}'");
    }
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/ws?format=x", server.addr));
    match within(STEP, "a WebSocket handshake", refused).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400);
            let error = error_message(
                "the WebSocket handshake",
                response.body().as_deref().expect("a body"),
            );
            assert!(error.contains("format"), "{error}");
        }
        other => panic!("the handshake is refused with 400, not {other:?}"),
    }
    let status = api.status().await;
    assert_eq!(
        status["listeners"]["total"], 0,
        "rejected requests never subscribe"
    );

    let mut sse = SseClient::open(&api, "/events?frames=1&token=unused").await;
    sse.info().await;
    assert_eq!(sse.frames_to_end().await.len(), 1);
    let mut ws = ws_connect(server.addr, "/ws?frames=1&token=unused&format=f32le").await;
    ws_info(&mut ws).await;
    let (messages, _) = ws_until_close(&mut ws).await;
    assert!(matches!(messages[..], [Message::Binary(_)]), "{messages:?}");
    server.stop().await;
}
