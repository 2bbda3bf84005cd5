//! End-to-end tests of the stream endpoints and `/status`, against real servers on
//! 127.0.0.1:0 (in-process, or the real binary where memory is measured), with real HTTP
//! clients: reqwest, and raw sockets for listeners that stop reading.
//!
//! No test sleeps to synchronise: each waits for the event it needs by polling `/status` with a
//! deadline, and every wait and read is bounded in time.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::api::{self, Api, Frame, STEP, frames_produced, json_error, parse_frame, within};
use pcmcast::source::tone;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::Value;
use tokio::net::TcpStream;

/// What hyper may buffer for a listener that stopped reading: a generous allowance for its
/// write buffer.
const HYPER_WRITE_BUFFER_BYTES: usize = 512 * 1024;

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Reads `count` NDJSON frames from a streaming response, bounded by [`STEP`].
async fn read_ndjson_frames(response: &mut reqwest::Response, count: usize) -> Vec<Frame> {
    let mut frames = Vec::with_capacity(count);
    let mut pending = Vec::new();
    within(STEP, "reading NDJSON frames", async {
        while frames.len() < count {
            let chunk = response
                .chunk()
                .await
                .expect("the body reads")
                .expect("the body goes on");
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                frames.push(parse_frame(&pending[..end]));
                pending.drain(..=end);
            }
        }
    })
    .await;
    frames.truncate(count);
    frames
}

/// Frames of `bytes_per_frame` that fill the buffers of a stalled NDJSON or PCM connection.
fn frames_to_fill_a_stalled_connection(bytes_per_frame: usize) -> u64 {
    api::frames_to_fill_a_stalled_connection(bytes_per_frame, HYPER_WRITE_BUFFER_BYTES)
}

/// A listener over raw HTTP/1.1 with a small receive buffer, that reads only when asked to:
/// stalled, it holds its connection open and lets the server's writes back up.
struct RawListener {
    stream: TcpStream,
    /// Received bytes not yet split into lines.
    pending: Vec<u8>,
}

impl RawListener {
    async fn connect(addr: SocketAddr, path_and_query: &str) -> RawListener {
        let stream = api::connect_stalling(addr).await;
        let request = format!("GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        let mut unsent = request.as_bytes();
        while !unsent.is_empty() {
            within(STEP, "sending a request", stream.writable())
                .await
                .unwrap();
            match stream.try_write(unsent) {
                Ok(n) => unsent = &unsent[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("sending a request: {e}"),
            }
        }
        RawListener {
            stream,
            pending: Vec::new(),
        }
    }

    /// Reads until the next NDJSON frame. The chunked framing is skipped rather than decoded:
    /// each chunk is whole lines, so chunk-size lines and the header never start with `{`.
    async fn next_frame(&mut self) -> Frame {
        let mut buffer = vec![0; 64 * 1024];
        loop {
            while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                if line.starts_with(b"HTTP/") {
                    assert!(
                        line.starts_with(b"HTTP/1.1 200 "),
                        "{}",
                        String::from_utf8_lossy(&line)
                    );
                }
                if line.starts_with(b"{") {
                    return parse_frame(&line);
                }
            }
            within(STEP, "reading", self.stream.readable())
                .await
                .unwrap();
            match self.stream.try_read(&mut buffer) {
                Ok(0) => panic!("the server closed the stream"),
                Ok(n) => self.pending.extend_from_slice(&buffer[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("reading: {e}"),
            }
        }
    }

    /// Reads frames until the first one with `seq >= until_seq`, checking on the way that a
    /// frame follows its predecessor, or carries `skipped` equal to the seq gap before it.
    /// Returns the frames read.
    async fn read_until_seq(&mut self, until_seq: u64) -> Vec<Frame> {
        let mut frames: Vec<Frame> = Vec::new();
        within(STEP, "catching up", async {
            loop {
                let frame = self.next_frame().await;
                if let Some(previous) = frames.last() {
                    let gap = frame
                        .seq
                        .checked_sub(previous.seq + 1)
                        .unwrap_or_else(|| panic!("seq {} after seq {}", frame.seq, previous.seq));
                    assert_eq!(
                        frame.skipped,
                        (gap > 0).then_some(gap),
                        "seq {} after seq {}",
                        frame.seq,
                        previous.seq
                    );
                }
                let done = frame.seq >= until_seq;
                frames.push(frame);
                if done {
                    return;
                }
            }
        })
        .await;
        frames
    }
}

/// Listeners connected together get the same bytes: the file's samples, exactly, from the
/// first frame after they connected to the end of the file, where the stream ends cleanly and
/// the server exits by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcm_listeners_get_the_file_exactly_until_it_ends() {
    const RATE_HZ: u32 = 48_000;
    const CHANNELS: usize = 2;
    const FRAME_SIZE: usize = 1024;
    let frame_len = FRAME_SIZE * CHANNELS;
    // Two seconds and a bit: the last frame is short.
    let sample_frames = 2 * RATE_HZ as usize + 500;
    assert_ne!(sample_frames % FRAME_SIZE, 0);
    let samples = common::noise(sample_frames * CHANNELS, 16, 1);
    let path = common::scratch_dir("pcm_listeners_get_the_file_exactly").join("noise.wav");
    common::write_int_wav(&path, RATE_HZ, CHANNELS as u16, 16, &samples);
    let file: Vec<f32> = samples.iter().map(|&s| s as f32 / 32768.0).collect();

    let server = common::start(&["--wav", path.to_str().unwrap(), "--frame-size", "1024"]).await;
    let _stop = server.shutdown.clone().drop_guard();
    let api = Api::new(server.addr);
    let before = frames_produced(&api.status().await);
    let (a, b, c) = tokio::join!(
        api.get("/stream.pcm"),
        api.get("/stream.pcm"),
        api.get("/stream.pcm")
    );
    let after = frames_produced(&api.status().await);
    let (a, b, c) = within(
        Duration::from_secs(10),
        "the bodies end with the file",
        async { tokio::join!(a.bytes(), b.bytes(), c.bytes()) },
    )
    .await;
    let bodies = [a, b, c].map(|body| body.expect("the body ends cleanly"));

    for body in &bodies {
        let received = common::f32le(body);
        let offset = common::source_offset(&received, &file, frame_len, false);
        assert_eq!(
            offset + received.len(),
            file.len(),
            "the body runs to the end of the file, short last frame included"
        );
        // The frame being published while /status was read may reach a listener that
        // connected just after: hence `before - 1`.
        let first_frame = (offset / frame_len) as u64;
        assert!(
            (before.saturating_sub(1)..=after).contains(&first_frame),
            "first frame {first_frame} is the first after connecting ({before}..={after})"
        );
    }
    let shortest = bodies.iter().map(Bytes::len).min().unwrap();
    let tail = |body: &Bytes| body.slice(body.len() - shortest..);
    assert!(
        bodies.iter().all(|body| tail(body) == tail(&bodies[0])),
        "every listener got the same bytes"
    );

    // Its streams are over: nothing should keep it waiting (its shutdown grace is 5 s).
    within(
        Duration::from_secs(2),
        "the server exits after the file",
        server.handle,
    )
    .await
    .expect("the server task completes")
    .expect("the server exits without error");
}

/// s16le carries a 16-bit file's samples exactly; both formats announce themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcm_formats_carry_exact_samples_and_describe_themselves() {
    const RATE_HZ: u32 = 48_000;
    const CHANNELS: usize = 2;
    const FRAME_SIZE: usize = 480;
    const FRAMES: usize = 25;
    let samples = common::noise(RATE_HZ as usize / 2 * CHANNELS, 16, 2);
    let path = common::scratch_dir("pcm_formats_carry_exact_samples").join("noise.wav");
    common::write_int_wav(&path, RATE_HZ, CHANNELS as u16, 16, &samples);
    let file: Vec<f32> = samples.iter().map(|&s| s as f32 / 32768.0).collect();
    let server = common::start(&[
        "--wav",
        path.to_str().unwrap(),
        "--loop",
        "--frame-size",
        "480",
    ])
    .await;
    let _stop = server.shutdown.clone().drop_guard();
    let api = Api::new(server.addr);

    for (query, format, bytes_per_sample) in [
        ("", "f32le", 4),
        ("format=f32le&", "f32le", 4),
        ("format=s16le&", "s16le", 2),
    ] {
        let path = format!("/stream.pcm?{query}frames={FRAMES}");
        let response = api.get(&path).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(
            common::header(&response, "content-type"),
            "application/octet-stream"
        );
        assert_eq!(common::header(&response, "x-pcm-format"), format, "{path}");
        assert_eq!(common::header(&response, "x-pcm-rate"), RATE_HZ.to_string());
        assert_eq!(
            common::header(&response, "x-pcm-channels"),
            CHANNELS.to_string()
        );
        assert_eq!(
            common::header(&response, "x-pcm-frame-size"),
            FRAME_SIZE.to_string()
        );
        let body = within(STEP, &path, response.bytes()).await.unwrap();
        assert_eq!(
            body.len(),
            FRAMES * FRAME_SIZE * CHANNELS * bytes_per_sample
        );
        let received: Vec<f32> = match bytes_per_sample {
            4 => common::f32le(&body),
            _ => body
                .chunks_exact(2)
                .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
                .collect(),
        };
        // The file loops, so its frames drift against it: align on sample frames.
        common::source_offset(&received, &file, CHANNELS, true);
    }
    server.stop().await;
}

/// `frames=N` gives exactly N well-formed, consecutive, correctly timed tone frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_gives_n_consecutive_frames_of_the_tone() {
    const HZ: f64 = 440.0;
    const RATE_HZ: u32 = 48_000;
    const CHANNELS: usize = 2;
    const FRAME_SIZE: u64 = 256;
    const FRAMES: usize = 25;
    let server = common::start(&[
        "--tone",
        "440",
        "--rate",
        "48000",
        "--channels",
        "2",
        "--frame-size",
        "256",
    ])
    .await;
    let _stop = server.shutdown.clone().drop_guard();
    let api = Api::new(server.addr);

    let response = api.get(&format!("/stream.ndjson?frames={FRAMES}")).await;
    assert_eq!(
        common::header(&response, "content-type"),
        "application/x-ndjson"
    );
    let body = within(STEP, "the NDJSON body", response.bytes())
        .await
        .expect("the body ends cleanly after N frames");
    let now = unix_now();
    assert!(body.ends_with(b"\n"), "the last line is complete");
    let frames: Vec<Frame> = body[..body.len() - 1]
        .split(|&b| b == b'\n')
        .map(parse_frame)
        .collect();
    assert_eq!(frames.len(), FRAMES);

    for (i, frame) in frames.iter().enumerate() {
        if i > 0 {
            assert_eq!(frame.seq, frames[i - 1].seq + 1);
            assert_eq!(frame.pts, frames[i - 1].pts + FRAME_SIZE);
        }
        assert_eq!(
            frame.pts,
            frame.seq * FRAME_SIZE,
            "a tone has only full frames"
        );
        assert_eq!((frame.rate, frame.channels), (RATE_HZ, CHANNELS as u16));
        assert_eq!(frame.skipped, None);
        assert_eq!(frame.samples.len(), FRAME_SIZE as usize * CHANNELS);
        for (index, sample_frame) in frame.samples.chunks_exact(CHANNELS).enumerate() {
            let expected = tone::sample_at(HZ, RATE_HZ, frame.pts + index as u64);
            for &sample in sample_frame {
                assert_eq!(
                    sample.to_bits(),
                    expected.to_bits(),
                    "seq {} sample {index}: {sample} != {expected}",
                    frame.seq
                );
            }
        }
        assert!(
            (frame.time - now).abs() < 1.0,
            "frame time {} is within a second of now ({now})",
            frame.time
        );
    }
    server.stop().await;
}

/// A listener that stops reading falls behind, is skipped forward to within the backlog, and
/// sees it: a seq gap whose first frame says how many were skipped, counted in `/status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_listener_is_skipped_forward_and_told() {
    const BACKLOG: u64 = 8;
    // Big lines fill the socket buffers fast; long (85 ms) frames make the few frames produced
    // while the client drains them negligible against the backlog.
    let server = common::start(&[
        "--tone",
        "1000",
        "--rate",
        "48000",
        "--channels",
        "8",
        "--frame-size",
        "4096",
        "--backlog",
        "8",
    ])
    .await;
    let _stop = server.shutdown.clone().drop_guard();
    let api = Api::new(server.addr);
    let stall_frames = frames_to_fill_a_stalled_connection(api.shortest_ndjson_line().await);

    let mut listener = RawListener::connect(server.addr, "/stream.ndjson").await;
    let connected = frames_produced(&api.wait_for_listeners(1).await);
    // Once the buffers hold all they can, every further frame puts the listener further behind.
    let status = api
        .wait_for_frames(connected + stall_frames + BACKLOG)
        .await;
    let newest_before_reading = frames_produced(&status);

    // Everything the listener reads now was buffered before the stall ended, until the frame
    // the hub skips it forward to: within the backlog of the newest frame, or later.
    let frames = listener
        .read_until_seq(newest_before_reading - BACKLOG - 1)
        .await;
    let caught_up = frames.last().unwrap();
    let skipped = caught_up
        .skipped
        .expect("the first frame after the stall follows a gap and says so");
    assert!(frames.len() > 1, "read buffered frames before the skip");
    let skipped_total: u64 = frames.iter().filter_map(|f| f.skipped).sum();
    let status = api.status().await;
    assert!(
        status["frames_skipped"].as_u64().unwrap() >= skipped_total,
        "/status counts the {skipped_total} frames skipped (the last gap: {skipped}): {status}"
    );
    drop(listener);
    server.stop().await;
}

/// Listeners that never read cost the source and the other listeners nothing: a good
/// listener gets consecutive frames, the ring drops nothing and the source keeps its pace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_listeners_do_not_slow_the_source_or_others() {
    const RATE_HZ: u64 = 48_000;
    const FRAME_SIZE: u64 = 512;
    const BACKLOG: u64 = 50;
    const STALLED: u64 = 3;
    const FRAMES: usize = 94; // ~1 s
    let server = common::start(&[
        "--tone",
        "440",
        "--rate",
        "48000",
        "--channels",
        "8",
        "--frame-size",
        "512",
        "--backlog",
        "50",
    ])
    .await;
    let _stop = server.shutdown.clone().drop_guard();
    let api = Api::new(server.addr);
    let stall_frames = frames_to_fill_a_stalled_connection(api.shortest_ndjson_line().await);

    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        stalled.push(RawListener::connect(server.addr, "/stream.ndjson").await);
    }
    let connected = frames_produced(&api.wait_for_listeners(STALLED).await);
    let status = api
        .wait_for_frames(connected + stall_frames + BACKLOG)
        .await;
    let stalled_from = frames_produced(&status);

    let mut good = api.get(&format!("/stream.ndjson?frames={FRAMES}")).await;
    let frames = read_ndjson_frames(&mut good, FRAMES).await;
    let status = api.status().await;
    for pair in frames.windows(2) {
        assert_eq!(
            pair[1].seq,
            pair[0].seq + 1,
            "the good listener misses nothing"
        );
    }
    assert!(frames.iter().all(|f| f.skipped.is_none()));
    assert_eq!(status["samples_dropped"], 0, "{status}");
    // The source's pace, from the capture times the framer stamped on the frames the good
    // listener got: immune to how promptly this (loaded) test process reads them.
    let (first, last) = (&frames[0], &frames[frames.len() - 1]);
    let elapsed = last.time - first.time;
    let produced = (last.seq - first.seq) as f64;
    let expected = RATE_HZ as f64 / FRAME_SIZE as f64 * elapsed;
    println!("{produced} frames produced in {elapsed:.3} s (real time: {expected:.1})");
    assert!(
        (produced - expected).abs() <= expected * 0.05,
        "the source keeps real-time pace: {produced} frames in {elapsed:.3} s, expected {expected:.1}"
    );

    // The test only means something if the stalled listeners really were more than the
    // backlog behind throughout: the last frame buffered for one before its skip proves it.
    let frames = stalled[0].read_until_seq(stalled_from).await;
    let gap_at = frames
        .iter()
        .rposition(|f| f.skipped.is_some())
        .expect("the stalled listener was skipped forward");
    let last_buffered = frames[gap_at - 1].seq;
    assert!(
        last_buffered + BACKLOG < stalled_from,
        "stalled listener's last buffered frame {last_buffered} is more than {BACKLOG} frames \
         behind frame {stalled_from}"
    );
    drop(stalled);
    server.stop().await;
}

/// Memory stays bounded while listeners stall: the real binary at a high data rate, with
/// several listeners that never read, stops growing once their buffers are full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_while_listeners_stall() {
    const CHANNELS: usize = 8;
    const FRAME_SIZE: usize = 1024;
    const STALLED: u64 = 4;
    // The hub retains fewer than twice the default backlog (100) frames.
    const RETAINED_FRAMES: u64 = 256;
    let process = common::spawn(&["--tone", "1000", "--rate", "192000", "--channels", "8"]);
    let api = Api::new(process.addr);
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        stalled.push(RawListener::connect(process.addr, "/stream.pcm").await);
    }
    let connected = frames_produced(&api.wait_for_listeners(STALLED).await);
    let stall_frames = frames_to_fill_a_stalled_connection(FRAME_SIZE * CHANNELS * 4);
    api.wait_for_frames(connected + stall_frames + RETAINED_FRAMES)
        .await;

    let start = Instant::now();
    let mut samples_kib = Vec::new();
    let mut interval = tokio::time::interval(Duration::from_millis(250));
    for _ in 0..=16 {
        interval.tick().await;
        samples_kib.push((start.elapsed().as_secs_f64(), process.rss_kib()));
    }
    for (at, rss) in &samples_kib {
        println!("RSS at {at:.2} s: {rss} KiB");
    }
    assert_eq!(api.status().await["listeners"]["current"], STALLED);
    let at_1s = samples_kib[4].1;
    let last = samples_kib.last().unwrap().1;
    assert!(
        last <= at_1s + 4 * 1024,
        "RSS grew from {at_1s} KiB at 1 s to {last} KiB at 4 s while listeners stalled"
    );
    drop(stalled);
}

/// Bad requests get JSON errors with the right status, naming what is wrong, and never
/// become listeners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors() {
    let server = common::start(&["--tone", "440"]).await;
    let _stop = server.shutdown.clone().drop_guard();
    let api = Api::new(server.addr);
    // (method, path and query, status, a word the message must contain)
    let cases: &[(&str, &str, u16, &str)] = &[
        ("GET", "/stream.pcm?format=mp3", 400, "format"),
        ("GET", "/stream.wav?format=u8", 400, "format"),
        ("GET", "/stream.pcm?frames=-1", 400, "frames"),
        ("GET", "/stream.ndjson?frames=0", 400, "frames"),
        ("GET", "/stream.pcm?frames=abc", 400, "frames"),
        (
            "GET",
            "/stream.wav?frames=99999999999999999999999",
            400,
            "frames",
        ),
        ("GET", "/stream.pcm?volume=11", 400, "volume"),
        ("GET", "/stream.ndjson?format=s16le", 400, "format"),
        ("GET", "/stream.pcm?frames=1&frames=2", 400, "frames"),
        (
            "GET",
            "/stream.wav?format=s16le&format=s16le",
            400,
            "format",
        ),
        ("GET", "/nowhere", 404, ""),
        ("GET", "/stream.pcm/more", 404, ""),
        ("POST", "/stream.pcm", 405, ""),
        ("POST", "/stream.ndjson", 405, ""),
        ("PUT", "/status", 405, ""),
    ];
    for &(method, path, status, names) in cases {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let request = api.client.request(method.clone(), api.url(path)).send();
        let response = within(STEP, path, request).await.unwrap();
        let error = json_error(response, status).await;
        assert!(
            error.contains(names),
            "{method} {path}: '{error}' names '{names}'"
        );
    }
    let status = api.status().await;
    assert_eq!(
        status["listeners"]["total"], 0,
        "rejected requests never subscribe"
    );
    server.stop().await;
}

/// Property: any `format` other than f32le and s16le is a 400 that names the parameter.
#[test]
fn any_other_format_is_refused_by_name() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = runtime.block_on(common::start(&["--tone", "440"]));
    let _stop = server.shutdown.clone().drop_guard();
    let api = Api::new(server.addr);
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let formats =
        any::<String>().prop_filter("a supported format", |f| f != "f32le" && f != "s16le");
    runner
        .run(&(formats, any::<bool>()), |(format, wav)| {
            let query = form_urlencoded::Serializer::new(String::new())
                .append_pair("format", &format)
                .finish();
            let endpoint = if wav { "/stream.wav" } else { "/stream.pcm" };
            let error = runtime.block_on(async {
                json_error(api.get(&format!("{endpoint}?{query}")).await, 400).await
            });
            // The message quotes the value first, so name the parameter by what follows it: a
            // value such as "a" or "format" must not be able to fake or hide the name.
            prop_assert!(
                error.ends_with("for parameter 'format' (use f32le or s16le)"),
                "{:?}: {}",
                format,
                error
            );
            Ok(())
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
    runtime.block_on(server.stop());
}

/// `/status` describes the source, counts frames and listeners (current back to 0 when they
/// leave); `/healthz` is ok while the tone runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_source_frames_and_listeners() {
    let server = common::start(&[
        "--tone",
        "440",
        "--rate",
        "44100",
        "--channels",
        "3",
        "--frame-size",
        "441",
    ])
    .await;
    let _stop = server.shutdown.clone().drop_guard();
    let api = Api::new(server.addr);

    let status = api
        .wait_for_status("the source running", |s| s["source"]["state"] == "running")
        .await;
    let source = &status["source"];
    assert_eq!(source["kind"], "tone");
    assert!(source["name"].as_str().unwrap().contains("440"), "{source}");
    assert_eq!(
        (&source["rate"], &source["channels"], &source["frame_size"]),
        (&Value::from(44_100), &Value::from(3), &Value::from(441))
    );
    let listeners =
        |s: &Value| ["current", "peak", "total"].map(|k| s["listeners"][k].as_u64().unwrap());
    assert_eq!(listeners(&status), [0, 0, 0]);
    let first = frames_produced(&status);
    api.wait_for_frames(first + 2).await;

    let health = api.get("/healthz").await;
    assert_eq!(health.status(), 200);
    assert_eq!(within(STEP, "/healthz", health.text()).await.unwrap(), "ok");

    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(api.get("/stream.ndjson").await);
    }
    assert_eq!(listeners(&api.status().await), [3, 3, 3]);
    open.pop();
    let status = api.wait_for_listeners(2).await;
    assert_eq!(listeners(&status), [2, 3, 3]);
    open.clear();
    let status = api.wait_for_listeners(0).await;
    assert_eq!(listeners(&status), [0, 3, 3]);
    let again = api.get("/stream.ndjson").await;
    assert_eq!(listeners(&api.status().await), [1, 3, 4]);
    drop(again);
    server.stop().await;
}

/// `--burst B`: a new listener starts B frames back from the newest, then goes on live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_starts_a_listener_with_recent_frames() {
    const BURST: u64 = 5;
    // 100 ms frames: connecting takes far less than the burst's 500 ms.
    let server = common::start(&[
        "--tone",
        "440",
        "--rate",
        "48000",
        "--channels",
        "1",
        "--frame-size",
        "4800",
        "--burst",
        "5",
    ])
    .await;
    let _stop = server.shutdown.clone().drop_guard();
    let api = Api::new(server.addr);
    api.wait_for_frames(BURST + 1).await;

    let before = frames_produced(&api.status().await);
    let mut response = api
        .get(&format!("/stream.ndjson?frames={}", BURST + 1))
        .await;
    let after = frames_produced(&api.status().await);
    let frames = read_ndjson_frames(&mut response, BURST as usize + 1).await;
    for pair in frames.windows(2) {
        assert_eq!(pair[1].seq, pair[0].seq + 1, "burst then live, no gap");
    }
    // The newest frame at connect time was frame `before - 2` (one may have been in flight)
    // to `after - 1`; the burst starts B - 1 frames before it.
    let first = frames[0].seq;
    assert!(
        (before - BURST - 1..=after - BURST).contains(&first),
        "first frame {first}: {BURST} back from the newest (frames produced {before}..{after})"
    );
    drop(response);
    server.stop().await;
}
