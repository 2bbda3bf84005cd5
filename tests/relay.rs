//! `--relay` end to end, with the real binary on both sides: a pcmcast relaying another serves
//! the upstream's samples; when the upstream is killed it reports `reconnecting`, refuses the
//! upstream while it comes back in another format, and resumes by itself once it is back, to
//! the same listener after a seq jump; an upstream token and s16le pass through the URL; a bad
//! `--relay` URL fails at once with one line; a relay stops at once on SIGTERM even in the middle
//! of a reconnect attempt that the upstream leaves hanging.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::pin::Pin;
use std::process::Command;
use std::time::{Duration, Instant};

use common::api::{Api, Frame, STEP, parse_frame, poll_until, send, within};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio_stream::{Stream, StreamExt};

const RATE_HZ: u32 = 16_000;
const CHANNELS: usize = 2;
const UPSTREAM_FRAME_SIZE: usize = 512;
/// Different from the upstream's: the relay cuts its own frames.
const RELAY_FRAME_SIZE: usize = 300;

/// A stereo noise file of 2 s (looped by the upstream), and its samples as pcmcast streams
/// them.
fn noise_wav(test: &str) -> (std::path::PathBuf, Vec<f32>) {
    common::noise_wav(test, RATE_HZ, CHANNELS, 2 * RATE_HZ as usize, 11)
}

/// The real binary with `args`, listening on `port` of loopback (0: any).
fn spawn_on(port: u16, args: &[&str]) -> common::Process {
    let mut command = Command::new(common::binary());
    command
        .args(args)
        .args(["--bind", &format!("127.0.0.1:{port}")]);
    tokio::task::block_in_place(|| common::spawn_command(command))
}

/// The upstream: `wav` looped, in frames of its own size, on `port` of loopback (0: any).
fn spawn_upstream(port: u16, wav: &Path) -> common::Process {
    let frame_size = UPSTREAM_FRAME_SIZE.to_string();
    let wav = wav.to_str().unwrap();
    spawn_on(port, &["--wav", wav, "--loop", "--frame-size", &frame_size])
}

fn spawn_relay(upstream: &common::Process) -> common::Process {
    let frame_size = RELAY_FRAME_SIZE.to_string();
    spawn_on(
        0,
        &[
            "--relay",
            &upstream.url("/stream.pcm"),
            "--frame-size",
            &frame_size,
        ],
    )
}

type Frames = Pin<Box<dyn Stream<Item = Frame> + Send>>;

/// A listener of `url` (an NDJSON stream), frame by frame.
async fn listen(url: String) -> Frames {
    let response = send(reqwest::Client::new().get(&url)).await;
    assert_eq!(response.status(), 200, "{url}");
    let body = response
        .bytes_stream()
        .map(|chunk| chunk.map_err(std::io::Error::other));
    let lines = tokio_util::io::StreamReader::new(body).lines();
    Box::pin(
        tokio_stream::wrappers::LinesStream::new(lines)
            .map(|line| parse_frame(line.expect("whole NDJSON lines").as_bytes())),
    )
}

async fn next_frame(frames: &mut Frames, limit: Duration, what: &str) -> Frame {
    within(limit, what, frames.next())
        .await
        .unwrap_or_else(|| panic!("{what}: the stream ended"))
}

async fn collect(frames: &mut Frames, count: usize, what: &str) -> Vec<Frame> {
    let mut collected = Vec::with_capacity(count);
    for _ in 0..count {
        collected.push(next_frame(frames, STEP, what).await);
    }
    collected
}

fn samples_of(frames: &[Frame]) -> Vec<f32> {
    frames
        .iter()
        .flat_map(|f| f.samples.iter().copied())
        .collect()
}

/// Where `run` starts in `stream`, at a sample-frame boundary, comparing every sample exactly.
fn position_of_run(stream: &[f32], run: &[f32]) -> Option<usize> {
    let last_start = stream.len().checked_sub(run.len())?;
    (0..=last_start).step_by(CHANNELS).find(|&start| {
        stream[start..start + run.len()]
            .iter()
            .zip(run)
            .all(|(a, b)| a.to_bits() == b.to_bits())
    })
}

async fn healthz(api: &Api) -> u16 {
    api.get("/healthz").await.status().as_u16()
}

fn consecutive(frames: &[Frame]) -> bool {
    frames.windows(2).all(|pair| pair[1].seq == pair[0].seq + 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_serves_the_same_samples_as_its_upstream() {
    let (wav, file) = noise_wav("relay_same_samples");
    let upstream = spawn_upstream(0, &wav);
    let relay = spawn_relay(&upstream);
    let (upstream_api, relay_api) = (Api::new(upstream.addr), Api::new(relay.addr));

    // The upstream's listener first, a few frames ahead, so that its stream holds every sample
    // the relay's listener will get.
    let mut from_upstream = listen(upstream.url("/stream.ndjson")).await;
    let mut upstream_frames = collect(&mut from_upstream, 5, "upstream frames").await;
    let mut from_relay = listen(relay.url("/stream.ndjson")).await;
    let relay_count = 40;
    let upstream_more = relay_count * RELAY_FRAME_SIZE / UPSTREAM_FRAME_SIZE + 20;
    let (relay_frames, more) = tokio::join!(
        collect(&mut from_relay, relay_count, "relay frames"),
        collect(&mut from_upstream, upstream_more, "upstream frames"),
    );
    upstream_frames.extend(more);

    for frame in &relay_frames {
        assert_eq!(
            (frame.rate, usize::from(frame.channels)),
            (RATE_HZ, CHANNELS)
        );
        assert_eq!(
            frame.samples.len(),
            RELAY_FRAME_SIZE * CHANNELS,
            "seq {}",
            frame.seq
        );
    }
    assert!(consecutive(&relay_frames) && consecutive(&upstream_frames));
    let relayed = samples_of(&relay_frames);
    let upstream_samples = samples_of(&upstream_frames);
    let at = position_of_run(&upstream_samples, &relayed)
        .expect("the relay's samples are a contiguous run of the upstream's, channels in place");
    let file_at = common::source_offset(&relayed, &file, CHANNELS, true);
    println!(
        "{} relayed samples ({relay_count} frames of {RELAY_FRAME_SIZE}) = upstream listener's \
         samples {at}.. of {} = file samples {file_at}..",
        relayed.len(),
        upstream_samples.len()
    );

    let status = relay_api.status().await;
    let source = &status["source"];
    assert_eq!(source["kind"], "relay", "{status}");
    assert_eq!(source["name"], upstream.url("/stream.pcm"), "{status}");
    assert_eq!(source["state"], "running", "{status}");
    assert_eq!(
        (&source["rate"], &source["channels"], &source["frame_size"]),
        (
            &Value::from(RATE_HZ),
            &Value::from(CHANNELS),
            &Value::from(RELAY_FRAME_SIZE)
        ),
    );
    assert_eq!(status["samples_dropped"], 0, "{status}");
    let upstream_status = upstream_api.status().await;
    assert_eq!(
        upstream_status["listeners"]["current"], 2,
        "the relay is one listener of the upstream, beside the test's: {upstream_status}"
    );
}

/// Waits (bounded) for a line of `process`'s log that contains `needle`.
fn wait_for_log(process: &common::Process, needle: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match process.stderr.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(_) => panic!("no log line with '{needle}' within {limit:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_resumes_by_itself_after_the_upstream_restarts() {
    let (wav, file) = noise_wav("relay_resumes");
    let mut upstream = spawn_upstream(0, &wav);
    let port = upstream.addr.port();
    let relay = spawn_relay(&upstream);
    let relay_api = Api::new(relay.addr);
    let mut frames = listen(relay.url("/stream.ndjson")).await;
    let before = collect(&mut frames, 10, "frames before the kill").await;
    assert!(consecutive(&before));
    let (mut last, mut last_pts) = (before.last().unwrap().seq, before.last().unwrap().pts);
    poll_until(
        "/healthz 200",
        || healthz(&relay_api),
        |&s| s == 200,
        u16::to_string,
    )
    .await;

    // Kill the upstream (SIGKILL, by PID): its connection ends mid-body.
    let killed_at = Instant::now();
    upstream.child.kill().unwrap();
    upstream.child.wait().unwrap();
    let down = relay_api
        .wait_for_status("the relay reconnecting", |s| {
            s["source"]["state"] == "reconnecting"
        })
        .await;
    assert_eq!(
        down["listeners"]["current"], 1,
        "the listener stays: {down}"
    );
    poll_until(
        "/healthz 503",
        || healthz(&relay_api),
        |&s| s == 503,
        u16::to_string,
    )
    .await;

    // Keep it down long enough for the framer to count the outage as a gap (over 0.5 s): the
    // relay has failed three times once it waits 400 ms, 0.7 s after the kill.
    tokio::task::block_in_place(|| {
        wait_for_log(&relay, "reconnecting in 400ms", Duration::from_secs(5))
    });

    // Back on the same port in another format: refused, and the relay stays down.
    let wrong = spawn_on(
        port,
        &["--tone", "440", "--rate", "8000", "--channels", "2"],
    );
    let refusal = tokio::task::block_in_place(|| {
        wait_for_log(&relay, "refusing the upstream", Duration::from_secs(5))
    });
    println!("{refusal}");
    assert!(
        refusal.contains("8000 Hz") && refusal.contains("16000 Hz"),
        "{refusal}"
    );
    assert_eq!(relay_api.status().await["source"]["state"], "reconnecting");
    assert_eq!(healthz(&relay_api).await, 503);
    drop(wrong); // killed by PID

    // Back in the right format: the same listener gets frames again, after a jump. Frames
    // sent before the kill (and the short one pending then) come first.
    let _upstream = spawn_upstream(port, &wav);
    let deadline = Instant::now() + Duration::from_secs(10);
    let resumed = loop {
        assert!(
            Instant::now() < deadline,
            "no seq jump within 10 s of the restart; last seq {last}"
        );
        let frame = next_frame(&mut frames, STEP, "frames after the restart").await;
        if frame.seq > last + 1 {
            break frame;
        }
        assert_eq!(frame.seq, last + 1);
        (last, last_pts) = (frame.seq, frame.pts);
    };
    let outage = killed_at.elapsed();
    let jump_s = (resumed.seq - last) as f64 * RELAY_FRAME_SIZE as f64 / f64::from(RATE_HZ);
    println!(
        "seq {last} -> {} after the restart: a jump of {jump_s:.2} s of frames for an outage \
         of {outage:.2?} seen by the test",
        resumed.seq
    );
    assert!(jump_s > 0.5, "the outage shows as a seq jump: {jump_s} s");
    let pts_jump_s = (resumed.pts - last_pts) as f64 / f64::from(RATE_HZ);
    assert!(pts_jump_s > 0.5, "and as a pts jump: {pts_jump_s} s");
    assert!(
        jump_s < outage.as_secs_f64() + 0.5,
        "no longer than the outage"
    );

    let mut after = vec![resumed];
    after.extend(collect(&mut frames, 30, "frames after the jump").await);
    assert!(consecutive(&after), "no further gap");
    let file_at = common::source_offset(&samples_of(&after), &file, CHANNELS, true);
    println!("after the jump the relay serves file samples {file_at}.. again");
    poll_until(
        "/healthz 200 again",
        || healthz(&relay_api),
        |&s| s == 200,
        u16::to_string,
    )
    .await;
    assert_eq!(relay_api.status().await["source"]["state"], "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_token_and_s16le_pass_through_the_url() {
    let token = "relay-test-token";
    let mut command = Command::new(common::binary());
    command
        .args(["--tone", "1000", "--rate", "8000", "--channels", "1"])
        .args(["--bind", "127.0.0.1:0"])
        .env("PCMCAST_TOKEN", token);
    let upstream = tokio::task::block_in_place(|| common::spawn_command(command));
    let url = upstream.url(&format!("/stream.pcm?format=s16le&token={token}"));
    let mut command = Command::new(common::binary());
    command
        .args(["--bind", "127.0.0.1:0"])
        .env("PCMCAST_RELAY", &url);
    let relay = tokio::task::block_in_place(|| common::spawn_command(command));
    let relay_api = Api::new(relay.addr);

    let mut frames = listen(relay.url("/stream.ndjson")).await;
    let received = collect(&mut frames, 5, "relayed frames").await;
    let samples = samples_of(&received);
    assert!(
        samples.iter().all(|s| (s * 32_768.0).fract() == 0.0),
        "s16le samples, scaled back exactly"
    );
    let peak = samples.iter().fold(0.0f32, |m, s| m.max(s.abs()));
    assert!((peak - 0.5).abs() < 0.01, "the tone's amplitude: {peak}");
    let status = relay_api.status().await;
    assert_eq!(status["source"]["state"], "running", "{status}");
    let shown = status["source"]["name"].as_str().unwrap();
    assert_eq!(
        shown,
        upstream.url("/stream.pcm"),
        "shown without its query"
    );
    let log: Vec<String> = relay
        .startup
        .iter()
        .cloned()
        .chain(relay.stderr.try_iter())
        .collect();
    assert!(
        !log.iter().any(|l| l.contains(token)),
        "the token stays out of the log: {log:#?}"
    );
}

/// Whether `line` is a `tracing` log line rather than the error line.
fn is_log_line(line: &str) -> bool {
    let mut words = line.split_whitespace();
    let timestamp = words.next().unwrap_or("");
    let level = words.next().unwrap_or("");
    timestamp.ends_with('Z') && ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level)
}

/// Runs `pcmcast --relay URL`; checks that it exits non-zero within `limit` with one error line
/// naming every one of `needles`. Returns that line and how long it took, or what is wrong.
fn check_refused(url: &str, needles: &[&str], limit: Duration) -> Result<String, String> {
    let started = Instant::now();
    let (code, stderr) = common::run_to_exit(&["--relay", url, "--bind", "127.0.0.1:0"]);
    let took = started.elapsed();
    let fail = |why: &str| {
        Err(format!(
            "{url}: {why}; exit {code:?} after {took:?}:\n{stderr}"
        ))
    };
    if code == Some(0) || code.is_none() || stderr.contains("panicked") {
        return fail("must exit non-zero");
    }
    if took > limit {
        return fail(&format!("must fail within {limit:?}"));
    }
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !is_log_line(l))
        .collect();
    let [line] = errors[..] else {
        return fail("must print exactly one error line");
    };
    match needles.iter().find(|n| !line.contains(**n)) {
        Some(missing) => fail(&format!("the error must name '{missing}'")),
        None => Ok(format!("{took:.2?}: {line}")),
    }
}

/// A TCP server on loopback that answers every connection with `answer` (nothing if `None`,
/// holding the connection open), for as long as the test runs.
fn fake_server(answer: Option<&'static [u8]>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut stream in listener.incoming().map_while(Result::ok) {
            if let Some(answer) = answer {
                let _ = stream.read(&mut [0; 1024]);
                let _ = stream.write_all(answer);
            }
            held.push(stream);
        }
    });
    format!("http://{addr}/stream.pcm")
}

/// How the fake upstream of [`a_relay_stops_at_once_in_the_middle_of_a_reconnect`] leaves the
/// relay's attempts after the first.
#[derive(Clone, Copy, Debug)]
enum Hang {
    /// The connection is accepted, the request never answered.
    Head,
    /// The accept queue is full: the connection attempt (its SYN) is dropped.
    Connect,
}

/// An upstream on loopback that serves its first connection a pcmcast raw PCM head and a frame,
/// then ends it, and leaves each later one hanging as `hang` says. Returns its URL and its
/// port; `hanging` gets a message when a later connection is accepted (`Head`), or once the
/// queue is full (`Connect`).
fn hanging_upstream(hang: Hang, hanging: std::sync::mpsc::Sender<()>) -> (String, u16) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&any.into()).unwrap();
    // Room for one connection that is not accepted yet.
    socket.listen(0).unwrap();
    let listener: TcpListener = socket.into();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut first, _) = listener.accept().unwrap();
        let _ = first.read(&mut [0; 1024]);
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                    X-Pcm-Format: f32le\r\nX-Pcm-Rate: 16000\r\nX-Pcm-Channels: 2\r\n\
                    X-Pcm-Frame-Size: 512\r\nConnection: close\r\n\r\n";
        first.write_all(head.as_bytes()).unwrap();
        first.write_all(&[0; 512 * 2 * 4]).unwrap();
        let mut held = Vec::new();
        if let Hang::Connect = hang {
            // Fills the queue before the relay tries again; nothing is accepted any more.
            held.push(std::net::TcpStream::connect(addr).unwrap());
        }
        drop(first);
        match hang {
            Hang::Head => {
                for stream in listener.incoming().map_while(Result::ok) {
                    held.push(stream);
                    let _ = hanging.send(());
                }
            }
            Hang::Connect => {
                let _ = hanging.send(());
                std::thread::park();
            }
        }
    });
    (format!("http://{addr}/stream.pcm"), addr.port())
}

/// Whether this machine has a TCP socket in SYN_SENT towards port `port` of loopback
/// (/proc/net/tcp: remote address 0100007F:PORT, state 02).
fn connecting_to(port: u16) -> bool {
    let remote = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields[2] == remote && fields[3] == "02"
        })
}

#[test]
fn a_relay_stops_at_once_in_the_middle_of_a_reconnect() {
    for hang in [Hang::Head, Hang::Connect] {
        let (sender, hanging) = std::sync::mpsc::channel();
        let (url, port) = hanging_upstream(hang, sender);
        let mut relay = common::spawn(&["--relay", &url]);
        // Head: a reconnect attempt was accepted. Connect: the queue is full, and then the
        // relay's attempt must be pending.
        hanging
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("{hang:?}: the upstream hangs within 5 s"));
        if let Hang::Connect = hang {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !connecting_to(port) {
                assert!(
                    Instant::now() < deadline,
                    "{hang:?}: no attempt in SYN_SENT"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let asked = Instant::now();
        relay.terminate();
        let exit = common::wait_for_exit(&mut relay.child, Duration::from_secs(10));
        let took = asked.elapsed();
        println!("{hang:?}: exited {exit:?} {took:.2?} after SIGTERM");
        assert!(
            exit.is_some_and(|status| status.success()),
            "{hang:?}: {exit:?}"
        );
        // The attempt's own limit is 3 s; cancellation is noticed every 50 ms.
        assert!(took < Duration::from_secs(1), "{hang:?}: {took:?}");
    }
}

#[test]
fn bad_relay_urls_fail_at_once_with_one_line() {
    let token = "sekrit";
    let mut command = Command::new(common::binary());
    command
        .args(["--tone", "440", "--bind", "127.0.0.1:0"])
        .env("PCMCAST_TOKEN", token);
    let upstream = common::spawn_command(command);
    let closed_port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let with_token = |path: &str| upstream.url(&format!("{path}?token={token}"));
    let silent = fake_server(None);
    let not_http = fake_server(Some(b"SSH-2.0-OpenSSH_9.6\r\n"));
    let quick = Duration::from_secs(2);
    let cases: Vec<(String, Vec<&str>, Duration)> = vec![
        ("not a url".into(), vec!["--relay", "spaces"], quick),
        (
            "127.0.0.1:8000".into(),
            vec!["--relay", "expected a URL"],
            quick,
        ),
        (
            "https://127.0.0.1:8000/stream.pcm".into(),
            vec!["--relay", "only plain http://"],
            quick,
        ),
        (
            "http://:8000/stream.pcm".into(),
            vec!["--relay", "no host"],
            quick,
        ),
        (
            format!("http://127.0.0.1:{closed_port}/stream.pcm"),
            vec!["cannot relay", "cannot connect", "refused"],
            quick,
        ),
        (
            with_token("/status"),
            vec!["cannot relay", "not a pcmcast stream", "X-Pcm-Format"],
            quick,
        ),
        (
            with_token("/stream.wav"),
            vec!["not raw PCM", "audio/wav"],
            quick,
        ),
        (with_token("/nope"), vec!["404", "no such endpoint"], quick),
        (upstream.url("/stream.pcm"), vec!["401", "token"], quick),
        (not_http, vec!["not an HTTP/1.x response"], quick),
        (
            silent,
            vec!["no response within 3s"],
            Duration::from_secs(5),
        ),
    ];
    common::check_all(&cases, |(url, needles, limit)| {
        check_refused(url, needles, *limit).map(|line| format!("refused in {line}"))
    });
}
