//! End-to-end tests of the stream endpoints and `/status`, against real servers on
//! 127.0.0.1:0 (in-process, or the real binary where memory is measured), with real HTTP
//! clients: reqwest, and raw sockets for listeners that read slowly or stop reading.
//!
//! The raw PCM, WAV and NDJSON streams are written by the fan-out threads straight into
//! non-blocking sockets with a capped send buffer, holding at most one unsent frame per
//! listener: a listener more than `--backlog` frames behind is skipped forward while its
//! connection takes bytes; one whose connection takes nothing is dropped (reset) within the
//! time the backlog lasts.
//!
//! No test sleeps to synchronise: each waits for the event it needs by polling `/status` (or
//! /proc) with a deadline, and every wait and read is bounded in time. The only timed pauses
//! are a slow listener's pace.

mod common;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::api::{self, Api, Frame, STEP, frames_produced, json_error, parse_frame, within};
use pcmcast::fanout::SEND_BUFFER_BYTES;
use pcmcast::source::tone;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

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

/// The server-side connections on `server_port`, by the client's port, each with its send
/// queue (bytes written that the client's kernel has not acknowledged), from /proc/net/tcp. A
/// connection that was reset is no longer there (nor, rarely, one that the kernel's listing
/// skipped because connections came or went while it was read).
fn server_send_queues(server_port: u16) -> HashMap<u16, u64> {
    let local_port = format!(":{server_port:04X} ");
    std::fs::read_to_string("/proc/net/tcp")
        .expect("/proc/net/tcp")
        .lines()
        .skip(1)
        .filter_map(|line| {
            // After "sl: ", fixed widths: "0100007F:1F40 0100007F:A0B2 01 00000000:00000000 …"
            // (local address, remote address, state, tx_queue:rx_queue, …). Thousands of
            // lines: only those of the server's port are parsed.
            let fields = &line[line.find(": ")? + 2..];
            if fields.get(8..14)? != local_port {
                return None;
            }
            let client_port = u16::from_str_radix(fields.get(23..27)?, 16).ok()?;
            let tx_queue = u64::from_str_radix(fields.get(31..39)?, 16).ok()?;
            Some((client_port, tx_queue))
        })
        .collect()
}

/// Samples [`server_send_queues`] every `interval` on a blocking thread (with thousands of
/// connections listed, a sample takes milliseconds) until `stop` is cancelled. Returns, by
/// client port, the largest send queue seen and how many samples saw the connection.
fn sample_send_queues(
    server_port: u16,
    interval: Duration,
    stop: CancellationToken,
) -> JoinHandle<HashMap<u16, (u64, usize)>> {
    tokio::task::spawn_blocking(move || {
        let mut seen: HashMap<u16, (u64, usize)> = HashMap::new();
        while !stop.is_cancelled() {
            for (port, queue) in server_send_queues(server_port) {
                let (largest, samples) = seen.entry(port).or_default();
                *largest = queue.max(*largest);
                *samples += 1;
            }
            std::thread::sleep(interval);
        }
        seen
    })
}

/// How a raw listener's stream ended.
#[derive(Debug)]
enum Ended {
    /// The server closed the connection.
    Eof,
    /// The server reset the connection.
    Reset,
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// A listener over raw HTTP/1.1 with a small receive buffer, that reads only when asked to:
/// stalled, it holds its connection open and lets the server's writes back up; paced, it
/// reads a little at a time, slower than the stream.
struct RawListener {
    stream: TcpStream,
    /// Received bytes not yet decoded.
    pending: Vec<u8>,
    /// The response head has been read (and checked).
    head_read: bool,
    /// Reads at most this many bytes at a time, one read per tick, when set.
    pace: Option<(usize, Interval)>,
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
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("sending a request: {e}"),
            }
        }
        RawListener {
            stream,
            pending: Vec::new(),
            head_read: false,
            pace: None,
        }
    }

    /// From now on, reads at most `read_bytes` every `interval`.
    fn paced(mut self, read_bytes: usize, interval: Duration) -> RawListener {
        let mut ticks = tokio::time::interval(interval);
        // A late read is not made up for with a burst of reads.
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        self.pace = Some((read_bytes, ticks));
        self
    }

    /// The client's end of the connection.
    fn local_port(&self) -> u16 {
        self.stream.local_addr().unwrap().port()
    }

    /// Whether the server has reset the connection, as far as the kernel knows (without
    /// reading what it buffered). Answers true once only: it takes the socket's error.
    fn reset_seen(&self) -> bool {
        match self.stream.take_error().unwrap() {
            None => false,
            Some(e) if e.kind() == io::ErrorKind::ConnectionReset => true,
            Some(e) => panic!("the connection failed otherwise: {e}"),
        }
    }

    /// Waits for bytes (at the listener's pace, if it has one) and appends them to `pending`.
    /// `Ok(0)` at the end of the stream.
    async fn read_some(&mut self) -> io::Result<usize> {
        let read_bytes = match &mut self.pace {
            Some((read_bytes, ticks)) => {
                ticks.tick().await;
                *read_bytes
            }
            None => 64 * 1024,
        };
        let mut buffer = vec![0; read_bytes];
        loop {
            within(STEP, "reading", self.stream.readable()).await?;
            match self.stream.try_read(&mut buffer) {
                Ok(n) => {
                    self.pending.extend_from_slice(&buffer[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The data of the next chunk, once all of it has arrived; the response head before the
    /// first is checked and dropped. Panics if the bytes are not well-formed chunks.
    fn take_chunk(&mut self) -> Option<Vec<u8>> {
        if !self.head_read {
            let end = find(&self.pending, b"\r\n\r\n")? + 4;
            let head = String::from_utf8_lossy(&self.pending[..end]).to_ascii_lowercase();
            assert!(
                head.starts_with("http/1.1 200 ")
                    && head.contains("\r\ntransfer-encoding: chunked\r\n"),
                "{head}"
            );
            self.pending.drain(..end);
            self.head_read = true;
        }
        let size_end = find(&self.pending, b"\r\n")?;
        let size_line = &self.pending[..size_end];
        let size = std::str::from_utf8(size_line)
            .ok()
            .and_then(|size| usize::from_str_radix(size, 16).ok())
            .unwrap_or_else(|| {
                panic!(
                    "not a chunk size: {:?}",
                    String::from_utf8_lossy(&size_line[..size_line.len().min(40)])
                )
            });
        let end = size_end + 2 + size + 2;
        if self.pending.len() < end {
            return None;
        }
        assert_eq!(
            String::from_utf8_lossy(&self.pending[end - 2..end]),
            "\r\n",
            "a chunk of {size} bytes ends there: its size is wrong, or bytes were lost"
        );
        let chunk = self.pending[size_end + 2..end - 2].to_vec();
        self.pending.drain(..end);
        Some(chunk)
    }

    /// Reads the next NDJSON frame: the next chunk, which is one whole line.
    async fn next_frame(&mut self) -> Frame {
        loop {
            if let Some(chunk) = self.take_chunk() {
                assert!(!chunk.is_empty(), "the server ended the stream");
                assert_eq!(
                    find(&chunk, b"\n"),
                    Some(chunk.len() - 1),
                    "a chunk is one whole line"
                );
                return parse_frame(&chunk);
            }
            match self.read_some().await {
                Ok(0) => panic!("the server closed the connection"),
                Ok(_) => {}
                Err(e) => panic!("reading: {e}"),
            }
        }
    }

    /// Reads frames until `done` holds for those read, within `limit`, checking on the way
    /// that a frame follows its predecessor, or carries `skipped` equal to the seq gap before
    /// it. Returns the frames read.
    async fn read_until(
        &mut self,
        limit: Duration,
        what: &str,
        done: impl Fn(&[Frame]) -> bool,
    ) -> Vec<Frame> {
        let mut frames: Vec<Frame> = Vec::new();
        within(limit, what, async {
            while !done(&frames) {
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
                frames.push(frame);
            }
        })
        .await;
        frames
    }

    /// Reads everything left, within [`STEP`]: returns how many bytes that was (the response
    /// head included, if not read yet) and how the stream ended.
    async fn read_to_end(&mut self) -> (usize, Ended) {
        let mut bytes = self.pending.len();
        within(STEP, "reading to the end", async {
            loop {
                self.pending.clear();
                match self.read_some().await {
                    Ok(0) => return (bytes, Ended::Eof),
                    Ok(n) => bytes += n,
                    Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                        return (bytes, Ended::Reset);
                    }
                    Err(e) => panic!("reading to the end: {e}"),
                }
            }
        })
        .await
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
    let (path, file) = common::noise_wav(
        "pcm_listeners_get_the_file_exactly",
        RATE_HZ,
        CHANNELS,
        sample_frames,
        1,
    );

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
    server
        .exits_by_itself(Duration::from_secs(2), "after the file")
        .await;
}

/// A listener that has not read for a while when the file ends, far more behind than the
/// socket holds, still gets the file to its end once it reads: no frame comes after the end to
/// prompt the server, which must go on sending by itself, and must not end the stream early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_behind_when_the_file_ends_still_gets_all_of_it() {
    const RATE_HZ: u32 = 48_000;
    const CHANNELS: usize = 2;
    const FRAME_SIZE: usize = 1024;
    // Two seconds (768 kB of f32): at the end, most of it waits in the server, not in the
    // sockets. A backlog of 200 frames (4.3 s) keeps the listener from being skipped forward
    // or dropped meanwhile.
    let sample_frames = 2 * RATE_HZ as usize + 300;
    let (path, file) = common::noise_wav(
        "a_listener_behind_when_the_file_ends",
        RATE_HZ,
        CHANNELS,
        sample_frames,
        7,
    );
    let server = common::start(&[
        "--wav",
        path.to_str().unwrap(),
        "--frame-size",
        "1024",
        "--backlog",
        "200",
    ])
    .await;
    let _stop = server.shutdown.clone().drop_guard();
    let api = Api::new(server.addr);

    let mut behind = RawListener::connect(server.addr, "/stream.pcm").await;
    // The NDJSON stream ends when the file does: until then, `behind` reads nothing.
    let ndjson = api.get("/stream.ndjson").await;
    within(Duration::from_secs(10), "the file ends", ndjson.bytes())
        .await
        .expect("the NDJSON stream ends cleanly");

    let mut received = Vec::new();
    within(Duration::from_secs(10), "the rest of the file", async {
        loop {
            if let Some(chunk) = behind.take_chunk() {
                if chunk.is_empty() {
                    return;
                }
                received.extend_from_slice(&chunk);
                continue;
            }
            match behind.read_some().await {
                Ok(0) => panic!("the connection closed before the last chunk"),
                Ok(_) => {}
                Err(e) => panic!("reading: {e}"),
            }
        }
    })
    .await;
    let received = common::f32le(&received);
    let offset = common::source_offset(&received, &file, FRAME_SIZE * CHANNELS, false);
    assert_eq!(
        offset + received.len(),
        file.len(),
        "the body runs to the end of the file"
    );
    // The sockets hold the send buffer (which Linux doubles) and the small receive buffer;
    // twice that again and more waited in the server when the file ended.
    let bytes = received.len() * size_of::<f32>();
    assert!(
        bytes > 4 * SEND_BUFFER_BYTES,
        "more than the sockets hold waited in the server: {bytes} bytes in all"
    );
    server
        .exits_by_itself(Duration::from_secs(2), "after the file")
        .await;
}

/// s16le carries a 16-bit file's samples exactly; both formats announce themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcm_formats_carry_exact_samples_and_describe_themselves() {
    const RATE_HZ: u32 = 48_000;
    const CHANNELS: usize = 2;
    const FRAME_SIZE: usize = 480;
    const FRAMES: usize = 25;
    let (path, file) = common::noise_wav(
        "pcm_formats_carry_exact_samples",
        RATE_HZ,
        CHANNELS,
        RATE_HZ as usize / 2,
        2,
    );
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
    let server = common::start_line("--tone 440 --rate 48000 --channels 2 --frame-size 256").await;
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

/// A listener that keeps reading, but slower than the stream, falls behind, is skipped forward
/// to within the backlog, and sees it: a seq gap whose first frame says how many were skipped,
/// counted in `/status`. Its connection always takes bytes, so it is never dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_listener_is_skipped_forward_and_told() {
    // 48 kHz stereo is about 1 MB/s of NDJSON (some 11 bytes a sample), five times what the
    // listener reads (4 KiB every 20 ms): it falls behind by 0.8 frame per frame and passes
    // the backlog (32 frames of 21 ms, 0.68 s) in about a second. A connection is dropped
    // only after taking nothing for a good part of the backlog, and even half of it is 17 of
    // the listener's reads: it never goes that long without taking bytes, even on a loaded
    // machine.
    const READ_BYTES: usize = 4096;
    const READ_INTERVAL: Duration = Duration::from_millis(20);
    const SKIPS: usize = 2;
    let server =
        common::start_line("--tone 1000 --rate 48000 --channels 2 --frame-size 1024 --backlog 32")
            .await;
    let _stop = server.shutdown.clone().drop_guard();
    let api = Api::new(server.addr);

    let started = Instant::now();
    let mut listener = RawListener::connect(server.addr, "/stream.ndjson")
        .await
        .paced(READ_BYTES, READ_INTERVAL);
    let frames = listener
        .read_until(Duration::from_secs(10), "being skipped forward", |frames| {
            frames.iter().filter(|f| f.skipped.is_some()).count() >= SKIPS
        })
        .await;
    let elapsed = started.elapsed();
    let skipped: Vec<u64> = frames.iter().filter_map(|f| f.skipped).collect();
    let skipped_total: u64 = skipped.iter().sum();
    println!(
        "{} frames read in {elapsed:.2?}, from seq {} to {}; skips {skipped:?}",
        frames.len(),
        frames[0].seq,
        frames[frames.len() - 1].seq
    );
    assert!(
        frames[0].skipped.is_none() && frames.len() > SKIPS + 1,
        "read frames before the skips"
    );
    let status = api.status().await;
    assert!(
        status["frames_skipped"].as_u64().unwrap() >= skipped_total,
        "/status counts the {skipped_total} frames skipped: {status}"
    );
    assert_eq!(
        status["listeners"]["dropped"], 0,
        "a listener that keeps reading is not dropped: {status}"
    );
    assert_eq!(status["listeners"]["current"], 1, "{status}");
    // Still served: the next frame comes.
    listener.next_frame().await;
    drop(listener);
    server.stop().await;
}

/// Listeners that never read cost the source and the other listeners nothing: a good
/// listener, reading while they stall and after they are dropped, gets consecutive frames,
/// the ring drops nothing and the source keeps its pace. The stalled ones are dropped, and
/// their connections end once what was buffered is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_listeners_do_not_slow_the_source_or_others() {
    const RATE_HZ: u64 = 48_000;
    const FRAME_SIZE: u64 = 512;
    const STALLED: u64 = 3;
    // ~1.5 s: longer than the stalled listeners last (at most the backlog, 100 frames of
    // 10.7 ms, once their buffers are full).
    const FRAMES: usize = 141;
    let server =
        common::start_line("--tone 440 --rate 48000 --channels 8 --frame-size 512 --backlog 100")
            .await;
    let _stop = server.shutdown.clone().drop_guard();
    let api = Api::new(server.addr);

    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        stalled.push(RawListener::connect(server.addr, "/stream.ndjson").await);
    }
    api.wait_for_listeners(STALLED).await;
    let mut good = api.get(&format!("/stream.ndjson?frames={FRAMES}")).await;
    let status = api.status().await;
    assert_eq!(
        (
            &status["listeners"]["current"],
            &status["listeners"]["dropped"]
        ),
        (&Value::from(STALLED + 1), &Value::from(0)),
        "the good listener starts while the stalled ones are there: {status}"
    );

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

    api.wait_for_status("the stalled listeners dropped", |s| {
        s["listeners"]["dropped"] == STALLED
    })
    .await;
    for listener in &mut stalled {
        let (bytes, ended) = listener.read_to_end().await;
        println!("a stalled connection: {bytes} bytes buffered, then {ended:?}");
    }
    server.stop().await;
}

/// A stalled listener costs bounded memory for a bounded time: the real binary at a high data
/// rate (6 MB/s), with waves of listeners that never read. Each is dropped (its connection
/// reset) within the backlog; until then its connection's send queue stays within the send
/// buffer the server asks for, and the server's memory does not grow from wave to wave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_listener_costs_bounded_memory_for_a_bounded_time() {
    const RATE_HZ: u32 = 192_000;
    const CHANNELS: usize = 8;
    const FRAME_SIZE: usize = 1024;
    const BACKLOG: u32 = 100; // the default
    const STALLED: usize = 4;
    const WAVES: usize = 5;
    const POLL: Duration = Duration::from_millis(5);
    // A stalled connection's send queue only grows until it is reset: a few samples suffice.
    const SEND_QUEUE_SAMPLE_INTERVAL: Duration = Duration::from_millis(50);
    let frame_period = Duration::from_secs_f64(FRAME_SIZE as f64 / f64::from(RATE_HZ));
    let backlog = frame_period * BACKLOG;
    let frame_bytes = FRAME_SIZE * CHANNELS * 4;
    // The kernel doubles the send buffer asked for; a write may end one chunk past it.
    let chunk_bytes = frame_bytes + format!("{frame_bytes:x}\r\n\r\n").len();
    let send_queue_max = (2 * SEND_BUFFER_BYTES + chunk_bytes) as u64;
    // The stall is timed from the last write the socket took: all the buffers (both ends',
    // and a pending frame) are full within that many bytes of stream, …
    let buffered_bytes =
        2 * SEND_BUFFER_BYTES + 2 * api::STALLED_RECV_BUFFER_BYTES as usize + chunk_bytes;
    let fill = frame_period * (buffered_bytes.div_ceil(frame_bytes) as u32 + 1);
    // … the shard notices at a frame, this test at its next poll, and on a loaded machine
    // either may run a little late.
    let slack = fill + frame_period + POLL + Duration::from_millis(100);

    let process = common::spawn(&["--tone", "1000", "--rate", "192000", "--channels", "8"]);
    let api = Api::new(process.addr);
    // Every frame the server keeps (the fan-out's window, the hub's) has been made once.
    api.wait_for_frames(2 * (u64::from(BACKLOG) + 1)).await;
    let rss_before = process.rss_kib();
    let mut rss_max_by_wave = Vec::new();
    let mut drop_times = Vec::new();
    let mut send_queue_seen_max = 0;
    for wave in 1..=WAVES {
        let mut stalled = Vec::new();
        for _ in 0..STALLED {
            let connecting = Instant::now();
            let listener = RawListener::connect(process.addr, "/stream.pcm").await;
            stalled.push((listener.local_port(), connecting, listener));
        }
        let stop_sampling = CancellationToken::new();
        let _stop_sampling_on_panic = stop_sampling.clone().drop_guard();
        let sampler = sample_send_queues(
            process.addr.port(),
            SEND_QUEUE_SAMPLE_INTERVAL,
            stop_sampling.clone(),
        );
        let mut dropped_after: Vec<Option<Duration>> = vec![None; STALLED];
        let mut rss_max = 0;
        let mut ticks = tokio::time::interval(POLL);
        let deadline = Instant::now() + STEP;
        while dropped_after.contains(&None) {
            ticks.tick().await;
            assert!(
                Instant::now() < deadline,
                "wave {wave}: stalled listeners not reset within {STEP:?}: {dropped_after:?}"
            );
            rss_max = rss_max.max(process.rss_kib());
            for ((_, connecting, listener), dropped) in stalled.iter().zip(&mut dropped_after) {
                if dropped.is_none() && listener.reset_seen() {
                    *dropped = Some(connecting.elapsed());
                }
            }
        }
        stop_sampling.cancel();
        let send_queues = within(STEP, "sampling send queues", sampler).await.unwrap();
        let send_queues: Vec<(u64, usize)> = stalled
            .iter()
            .map(|(port, ..)| send_queues.get(port).copied().unwrap_or_default())
            .collect();
        api.wait_for_status("the stalled listeners counted as dropped", |s| {
            s["listeners"]["dropped"] == wave * STALLED && s["listeners"]["current"] == 0
        })
        .await;
        println!(
            "wave {wave}: reset {dropped_after:.3?} after connecting; send queues (largest, \
             samples) {send_queues:?}; RSS at most {rss_max} KiB"
        );
        assert!(
            send_queues.iter().all(|&(_, samples)| samples > 0),
            "wave {wave}: the send queue of every connection was seen"
        );
        let largest = send_queues.iter().map(|&(largest, _)| largest);
        send_queue_seen_max = largest.fold(send_queue_seen_max, u64::max);
        rss_max_by_wave.push(rss_max);
        drop_times.extend(dropped_after.into_iter().flatten());
    }
    println!(
        "backlog {backlog:.3?} + slack {slack:.3?}; RSS {rss_before} KiB before the first wave; \
         send queues at most {send_queue_seen_max} bytes (bound {send_queue_max})"
    );

    for dropped_after in &drop_times {
        assert!(
            *dropped_after <= backlog + slack,
            "a stalled listener was dropped {dropped_after:.3?} after connecting: not within \
             the backlog ({backlog:.3?}) and {slack:.3?}"
        );
    }
    assert!(
        send_queue_seen_max <= send_queue_max,
        "a stalled connection's send queue reached {send_queue_seen_max} bytes, more than \
         twice the {SEND_BUFFER_BYTES} asked for and a chunk ({send_queue_max})"
    );
    // What stalled listeners cost while attached (the frames they are sent, encoded once for
    // all) is bounded, and freed when they go: no wave costs more than the first.
    let first = rss_max_by_wave[0];
    let later = *rss_max_by_wave[1..].iter().max().unwrap();
    assert!(
        first <= rss_before + 4 * 1024 && later <= first + 1024,
        "RSS grew from {rss_before} KiB to {rss_max_by_wave:?} KiB over {WAVES} waves of \
         stalled listeners"
    );
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
    let runtime = common::runtime();
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
    let server = common::start_line("--tone 440 --rate 44100 --channels 3 --frame-size 441").await;
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
    let server =
        common::start_line("--tone 440 --rate 48000 --channels 1 --frame-size 4800 --burst 5")
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
