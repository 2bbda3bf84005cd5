//! `--icecast` end to end, against real Icecast 2.4 servers (Debian's icecast2) on 127.0.0.1
//! and the real pcmcast binary: ffmpeg listening on the Icecast mount decodes pcmcast's 440 Hz
//! tone, and so does a listener of a second Icecast that relays the first; when Icecast is
//! killed and restarted on the same port pcmcast says `retrying`, then pushes again by itself;
//! a wrong password (401) and a mount already taken (403) show in `/status` while pcmcast keeps
//! serving its own endpoints; the password is never shown; a bad URL fails at once; SIGTERM
//! ends the push cleanly; an Icecast that reads too slowly is skipped forward, one that stops
//! reading is dropped, and listeners of pcmcast notice neither.
//!
//! No test sleeps to synchronise: each polls `/status` or Icecast's `/status-json.xsl` with a
//! deadline, and every wait is bounded.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::api::{Api, STEP, send, within};
use common::free_port;
use common::icecast::{Icecast, Relay};
use common::tools;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MOUNT: &str = "/live";
const RATE_HZ: u32 = 48_000;
const CHANNELS: usize = 2;
const TONE_HZ: f64 = 440.0;
/// What a listener decodes, in seconds of audio.
const LISTEN_S: f64 = 2.0;
/// Icecast takes a moment to start a relay after it starts.
const RELAY_LIMIT: Duration = Duration::from_secs(10);
/// Past the longest backoff delay (2 s) and Icecast's start-up.
const RECONNECT_LIMIT: Duration = Duration::from_secs(10);

/// pcmcast with a 440 Hz stereo tone, pushing to `url`, given in the environment (which `ps`
/// does not show) as a user would; and a client of it.
fn spawn_pushing(url: &str) -> (common::Process, Api) {
    let mut command = Command::new(common::binary());
    command
        .args(["--tone", "440", "--rate", "48000", "--channels", "2"])
        .args(["--bind", "127.0.0.1:0"])
        .env("PCMCAST_ICECAST", url);
    let pcmcast = tokio::task::block_in_place(|| common::spawn_command(command));
    let api = Api::new(pcmcast.addr);
    (pcmcast, api)
}

/// [`spawn_pushing`], once the push is streaming; with the push's `/status` then.
async fn spawn_streaming(url: &str) -> (common::Process, Api, Value) {
    let (pcmcast, api) = spawn_pushing(url);
    let push = wait_for_push(&api, "streaming", STEP, |p| p["state"] == "streaming").await;
    (pcmcast, api, push)
}

/// A second Icecast, named `name`, relaying `mount` of `master`.
async fn start_relay(name: &str, master: &Icecast, mount: &'static str) -> Icecast {
    let relay = Relay {
        port: master.port,
        mount,
    };
    Icecast::start(name, free_port(), Some(relay)).await
}

/// Polls pcmcast's `/status` until its `icecast` object satisfies `ready`, for up to `limit`.
async fn wait_for_push(
    api: &Api,
    what: &str,
    limit: Duration,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let status = api.status().await;
        if ready(&status["icecast"]) {
            return status["icecast"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "waited {limit:?} for the push {what}; last /status: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a listener heard: the left channel of what ffmpeg decoded, and whether the right one
/// was the same.
struct Heard {
    left: Vec<f64>,
    channels_equal: bool,
}

/// `LISTEN_S` seconds of the mount at `url`, decoded by ffmpeg as raw s16le stereo at 48 kHz.
async fn listen(url: String) -> Heard {
    listen_as(&["-f", "s16le", "-ar", "48000", "-ac", "2"], url).await
}

/// `LISTEN_S` seconds of the mount at `url`, read by ffmpeg with `input` options (none: it
/// finds the format itself), as s16le stereo at 48 kHz.
async fn listen_as(input: &[&str], url: String) -> Heard {
    let seconds = LISTEN_S.to_string();
    let mut args: Vec<String> = ["-nostdin", "-v", "error"].map(String::from).to_vec();
    args.extend(input.iter().map(|arg| arg.to_string()));
    args.extend(
        [
            "-i", &url, "-t", &seconds, "-f", "s16le", "-ar", "48000", "-ac", "2", "-",
        ]
        .map(String::from),
    );
    let output = tools::run("ffmpeg", args).await;
    assert!(tools::succeeded(&output), "ffmpeg on {url}: {output:?}");
    let samples: Vec<i16> = output
        .stdout
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    Heard {
        left: samples
            .chunks_exact(CHANNELS)
            .map(|s| f64::from(s[0]) / 32_768.0)
            .collect(),
        channels_equal: samples.chunks_exact(CHANNELS).all(|s| s[0] == s[1]),
    }
}

impl Heard {
    /// Checks the left channel has the tone's level (an RMS within `rms_tolerance` of the
    /// tone's) and frequency (440 Hz within 0.5 Hz, from its rising zero crossings), printing
    /// what it measured; returns the crossings, interpolated between samples.
    fn check_level_and_frequency(&self, what: &str, rms_tolerance: f64) -> Vec<f64> {
        let rms = (self.left.iter().map(|s| s * s).sum::<f64>() / self.left.len() as f64).sqrt();
        let expected_rms = f64::from(pcmcast::source::tone::AMPLITUDE) / 2f64.sqrt();
        let crossings: Vec<f64> = self
            .left
            .windows(2)
            .enumerate()
            .filter(|(_, pair)| pair[0] < 0.0 && pair[1] >= 0.0)
            .map(|(i, pair)| i as f64 + pair[0] / (pair[0] - pair[1]))
            .collect();
        assert!(
            crossings.len() > 100,
            "{what}: {} crossings",
            crossings.len()
        );
        let span = crossings.last().unwrap() - crossings[0];
        let frequency_hz = (crossings.len() - 1) as f64 * f64::from(RATE_HZ) / span;
        println!(
            "{what}: {} samples per channel, RMS {rms:.4} (tone {expected_rms:.4}), \
             {frequency_hz:.2} Hz",
            self.left.len()
        );
        assert!(
            (rms - expected_rms).abs() < rms_tolerance,
            "{what}: RMS {rms}, expected {expected_rms}"
        );
        assert!(
            (frequency_hz - TONE_HZ).abs() < 0.5,
            "{what}: {frequency_hz} Hz"
        );
        crossings
    }

    /// Checks this is pcmcast's tone, whole: the expected length, both channels equal, the
    /// tone's level, 440 Hz, and every period of it in place (no gap, no misaligned sample).
    /// Prints what it measured.
    fn check_tone(&self, what: &str) {
        let expected_len = (LISTEN_S * f64::from(RATE_HZ)) as usize;
        assert_eq!(self.left.len(), expected_len, "{what}: samples per channel");
        assert!(self.channels_equal, "{what}: both channels carry the tone");
        let crossings = self.check_level_and_frequency(what, 0.01);
        let period = f64::from(RATE_HZ) / TONE_HZ;
        let worst_period_error = crossings
            .windows(2)
            .map(|pair| (pair[1] - pair[0] - period).abs())
            .fold(0.0, f64::max);
        println!("{what}: worst period off by {worst_period_error:.3} samples");
        assert!(
            worst_period_error < 0.05,
            "{what}: a period off by {worst_period_error} samples: a gap or a jump"
        );
    }
}

async fn metrics(api: &Api) -> String {
    let response = api.get_ok("/metrics").await;
    within(STEP, "/metrics", response.text()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_of_the_mount_and_of_a_relay_decode_the_pushed_tone() {
    let master = Icecast::start("master", free_port(), None).await;
    let (pcmcast, api, push) = spawn_streaming(&master.source_url(MOUNT)).await;
    assert_eq!(push["url"], master.url(MOUNT), "{push}");
    assert_eq!(push["format"], "pcm", "{push}");
    assert_eq!(push["connects"], 1, "{push}");
    assert_eq!(push["last_error"], Value::Null, "{push}");

    // Icecast took the stream description from the request's headers.
    let mount = master.wait_for_mount(MOUNT, STEP).await;
    println!("master's mount: {mount}");
    assert_eq!(mount["server_type"], "application/octet-stream");
    assert_eq!(mount["audio_info"], "samplerate=48000;channels=2");
    assert_eq!(
        (&mount["samplerate"], &mount["channels"]),
        (&48_000.into(), &2.into())
    );
    assert_eq!(mount["server_name"], "pcmcast");

    listen(master.url(MOUNT))
        .await
        .check_tone("a listener of the master's mount");

    // A second Icecast relaying the first serves the stream too.
    let relay = start_relay("relay", &master, MOUNT).await;
    let relayed = relay.wait_for_mount(MOUNT, RELAY_LIMIT).await;
    assert_eq!(relayed["server_type"], "application/octet-stream");
    listen(relay.url(MOUNT))
        .await
        .check_tone("a listener of the relay's mount");

    let status = api.status().await;
    let push = &status["icecast"];
    assert_eq!(push["state"], "streaming", "{status}");
    assert_eq!(push["connects"], 1, "one connection all along: {status}");
    assert_eq!(push["frames_skipped"], 0, "{status}");
    let sent = push["bytes_sent"].as_u64().unwrap();
    let uptime_s = status["uptime_s"].as_f64().unwrap();
    println!(
        "pcmcast pushed {sent} bytes in {uptime_s:.1} s ({:.0} B/s; the tone is {} B/s)",
        sent as f64 / uptime_s,
        RATE_HZ as usize * CHANNELS * 2
    );
    assert!(sent > 0, "{status}");
    assert_eq!(
        status["listeners"]["total"], 0,
        "the push is not a listener: {status}"
    );
    let text = metrics(&api).await;
    for line in [
        "pcmcast_icecast_up 1",
        "pcmcast_icecast_connects_total 1",
        "pcmcast_icecast_state{state=\"streaming\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
    }

    // SIGTERM: pcmcast ends the push with the rest and exits 0; Icecast drops the mount.
    let mut pcmcast = pcmcast;
    pcmcast.terminate();
    let exit = tokio::task::block_in_place(|| common::wait_for_exit(&mut pcmcast.child, STEP));
    assert!(
        exit.is_some_and(|status| status.success()),
        "pcmcast exits 0: {exit:?}"
    );
    let deadline = Instant::now() + STEP;
    while master.mount_status(MOUNT).await.is_some() {
        assert!(Instant::now() < deadline, "Icecast still serves {MOUNT}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Ogg/Opus, chosen by the mount's extension: Icecast parses it, and a listener who joins a
/// second after the push began gets the header pages and decodes the tone, as does a listener
/// of a second Icecast relaying the mount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opus_push_plays_for_listeners_who_join_late() {
    const OPUS_MOUNT: &str = "/live.opus";
    let master = Icecast::start("opus", free_port(), None).await;
    let (_pcmcast, api, push) = spawn_streaming(&master.source_url(OPUS_MOUNT)).await;
    assert_eq!(
        (&push["format"], &push["content_type"]),
        (&"opus".into(), &"audio/ogg".into()),
        "{push}"
    );
    let mount = master.wait_for_mount(OPUS_MOUNT, STEP).await;
    println!("the Opus mount: {mount}");
    assert_eq!(mount["server_type"], "audio/ogg");
    // Joins late: well after the first pages.
    api.wait_for_frames(100).await;
    let heard = listen_as(&[], master.url(OPUS_MOUNT)).await;
    assert_eq!(heard.left.len(), (LISTEN_S * f64::from(RATE_HZ)) as usize);
    heard.check_level_and_frequency("a late listener of the Opus mount", 0.02);

    // A second Icecast relaying the Ogg/Opus mount serves it too.
    let relay = start_relay("opus-relay", &master, OPUS_MOUNT).await;
    let relayed = relay.wait_for_mount(OPUS_MOUNT, RELAY_LIMIT).await;
    assert_eq!(relayed["server_type"], "audio/ogg");
    listen_as(&[], relay.url(OPUS_MOUNT))
        .await
        .check_level_and_frequency("a listener of the relay's Opus mount", 0.02);
    let status = api.status().await;
    assert_eq!(status["icecast"]["connects"], 1, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_push_resumes_by_itself_when_icecast_restarts() {
    let mut icecast = Icecast::start("restart", free_port(), None).await;
    let (_pcmcast, api, _) = spawn_streaming(&icecast.source_url(MOUNT)).await;
    icecast.wait_for_mount(MOUNT, STEP).await;

    // Kill Icecast (SIGKILL, by PID): the push fails and retries.
    icecast.kill();
    let killed = Instant::now();
    let down = wait_for_push(&api, "retrying", STEP, |p| p["state"] == "retrying").await;
    println!("{:.0?} after the kill: {down}", killed.elapsed());
    // Down long enough for attempts to be refused, not just for the connection to drop.
    let refused = wait_for_push(&api, "refused connections", STEP, |p| {
        p["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot connect"))
    })
    .await;
    println!("{:.0?} after the kill: {refused}", killed.elapsed());
    // pcmcast's own endpoints go on meanwhile.
    assert_eq!(api.get("/healthz").await.status(), 200);
    let frames = api.body("/stream.ndjson?frames=3").await;
    assert_eq!(
        frames
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count(),
        3
    );

    // The same Icecast again on the same port: pcmcast reconnects by itself.
    icecast.restart().await;
    let restarted = Instant::now();
    let up = wait_for_push(&api, "streaming again", RECONNECT_LIMIT, |p| {
        p["state"] == "streaming" && p["connects"] == 2
    })
    .await;
    println!(
        "streaming again {:.2?} after Icecast answered ({:.2?} after the kill): {up}",
        restarted.elapsed(),
        killed.elapsed()
    );
    assert!(
        up["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot connect")),
        "the last error stays on show: {up}"
    );
    icecast.wait_for_mount(MOUNT, STEP).await;
    listen(icecast.url(MOUNT))
        .await
        .check_tone("a listener after the restart");
}

/// The log lines pcmcast has printed so far.
fn log(process: &common::Process) -> Vec<String> {
    process
        .startup
        .iter()
        .cloned()
        .chain(process.stderr.try_iter())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_show_in_status_while_pcmcast_keeps_serving() {
    let icecast = Icecast::start("refusals", free_port(), None).await;
    let (first, first_api, _) = spawn_streaming(&icecast.source_url(MOUNT)).await;
    let has_error = |needle: &'static str| {
        move |p: &Value| {
            p["state"] == "retrying" && p["last_error"].as_str().is_some_and(|e| e.contains(needle))
        }
    };

    // A second source for the same mount: 403.
    let (second, second_api) = spawn_pushing(&icecast.source_url(MOUNT));
    let taken = wait_for_push(&second_api, "refused with 403", STEP, has_error("403")).await;
    println!("mount taken: {}", taken["last_error"]);
    assert!(
        taken["last_error"]
            .as_str()
            .unwrap()
            .contains("Mountpoint in use"),
        "{taken}"
    );

    // A wrong password: 401.
    let wrong_password = "not-the-password";
    let wrong_url = format!(
        "http://source:{wrong_password}@127.0.0.1:{}/other",
        icecast.port
    );
    let (wrong, wrong_api) = spawn_pushing(&wrong_url);
    let refused = wait_for_push(&wrong_api, "refused with 401", STEP, has_error("401")).await;
    println!("wrong password: {}", refused["last_error"]);
    assert!(
        refused["last_error"]
            .as_str()
            .unwrap()
            .contains("check the user and password"),
        "{refused}"
    );
    assert_eq!(refused["connects"], 0, "{refused}");
    assert_eq!(refused["url"], icecast.url("/other"), "{refused}");

    // Refused pushes leave pcmcast serving its own endpoints.
    for api in [&second_api, &wrong_api] {
        // A refusal can come before the source's first frame, while /healthz still says 503.
        api.wait_for_frames(1).await;
        assert_eq!(api.get("/healthz").await.status(), 200);
        let response = send(api.request("/stream.ndjson?frames=3")).await;
        assert_eq!(response.status(), 200);
        let body = within(STEP, "3 frames", response.bytes()).await.unwrap();
        assert_eq!(
            body.split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .count(),
            3
        );
    }
    // And they never disturb the source that has the mount.
    let push = first_api.status().await["icecast"].clone();
    assert_eq!(
        (&push["state"], &push["connects"]),
        (&"streaming".into(), &1.into()),
        "{push}"
    );

    // No password anywhere: /status, /metrics, logs.
    for (process, api, password) in [
        (&first, &first_api, icecast.password.as_str()),
        (&second, &second_api, icecast.password.as_str()),
        (&wrong, &wrong_api, wrong_password),
    ] {
        let status = api.status().await.to_string();
        let text = metrics(api).await;
        let lines = log(process);
        assert!(
            !status.contains(password),
            "/status shows the password: {status}"
        );
        assert!(
            !text.contains(password),
            "/metrics shows the password: {text}"
        );
        assert!(
            !lines.iter().any(|l| l.contains(password)),
            "the log shows the password: {lines:#?}"
        );
        assert!(
            text.contains("pcmcast_icecast_up"),
            "the push's metrics are there"
        );
    }
}

/// Whether `line` is a `tracing` log line rather than the error line.
fn is_log_line(line: &str) -> bool {
    let mut words = line.split_whitespace();
    let timestamp = words.next().unwrap_or("");
    let level = words.next().unwrap_or("");
    timestamp.ends_with('Z') && ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level)
}

#[test]
fn bad_icecast_urls_fail_at_once_with_one_line_and_no_password() {
    let password = "s3cret";
    let cases = [
        ("http://127.0.0.1:8000/live", "no source password"),
        (
            "https://source:s3cret@127.0.0.1:8000/live",
            "only plain http://",
        ),
        (
            "icecast://source:s3cret@127.0.0.1:8000/live",
            "only http://",
        ),
        ("http://source:s3cret@127.0.0.1:8000/", "names no mount"),
        ("http://source:s3cret@:8000/live", "no host"),
        (
            "http://source:s3cret@127.0.0.1:8000/live.flac",
            "cannot push (Icecast needs FLAC in Ogg)",
        ),
        // Opus carries 1 or 2 channels: checked before anything starts.
        (
            "http://source:s3cret@127.0.0.1:8000/live.opus 6",
            "cannot push this source as opus",
        ),
    ];
    for (case, needle) in cases {
        let (url, channels) = case.split_once(' ').unwrap_or((case, "2"));
        let started = Instant::now();
        let (code, stderr) = common::run_to_exit(&[
            "--tone",
            "440",
            "--channels",
            channels,
            "--bind",
            "127.0.0.1:0",
            "--icecast",
            url,
        ]);
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.trim().is_empty() && !is_log_line(l))
            .collect();
        println!(
            "{url}: exit {code:?} after {:.2?}: {errors:?}",
            started.elapsed()
        );
        assert!(
            matches!(code, Some(c) if c != 0),
            "{url}: exit {code:?}\n{stderr}"
        );
        assert_eq!(errors.len(), 1, "{url}: one error line\n{stderr}");
        assert!(errors[0].contains("--icecast"), "{url}: {stderr}");
        assert!(errors[0].contains(needle), "{url}: '{needle}' in {stderr}");
        assert!(
            !stderr.contains(password),
            "{url}: the password shows: {stderr}"
        );
    }
}

/// A server that takes a source like Icecast (answers `200 OK`), then reads it slowly (4 KiB
/// every 100 ms, a fifth of the tone's rate) while `reading` holds, and not at all after; its
/// receive buffer is small so that the push's writes back up soon.
async fn slow_icecast(reading: Arc<AtomicBool>) -> u16 {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .set_recv_buffer_size(common::api::STALLED_RECV_BUFFER_BYTES)
        .unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(8).unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut connection, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut buffer = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match connection.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(read) => head.extend_from_slice(&buffer[..read]),
                }
            }
            let _ = connection.write_all(b"HTTP/1.0 200 OK\r\n\r\n").await;
            let reading = reading.clone();
            held.push(tokio::spawn(async move {
                while reading.load(Ordering::Relaxed) {
                    if matches!(connection.read(&mut buffer).await, Ok(0) | Err(_)) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                // Holds the connection, reading nothing, until the test ends.
                std::future::pending::<()>().await;
            }));
        }
    });
    port
}

/// Polls pcmcast's `/status` while `listener` reads its stream, until the push satisfies
/// `ready`; returns the push's status and the bytes the listener got.
async fn listen_until_push(
    api: &Api,
    listener: &mut reqwest::Response,
    what: &str,
    limit: Duration,
    ready: impl Fn(&Value) -> bool,
) -> (Value, usize) {
    let deadline = Instant::now() + limit;
    let mut received = 0;
    loop {
        let chunk = within(STEP, "the listener's stream", listener.chunk())
            .await
            .unwrap()
            .expect("the listener's stream goes on");
        received += chunk.len();
        let push = api.status().await["icecast"].clone();
        if ready(&push) {
            return (push, received);
        }
        assert!(
            Instant::now() < deadline,
            "waited {limit:?} for the push {what}: {push}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_icecast_is_skipped_forward_and_a_stalled_one_dropped_without_slowing_listeners() {
    let reading = Arc::new(AtomicBool::new(true));
    let port = slow_icecast(reading.clone()).await;
    let (_pcmcast, api) = spawn_pushing(&format!("http://source:pw@127.0.0.1:{port}{MOUNT}"));
    let mut listener = api.get_ok("/stream.pcm?format=s16le").await;
    let started = Instant::now();
    let bytes_per_s = f64::from(RATE_HZ) * (CHANNELS * 2) as f64;

    let (slow, slow_received) = listen_until_push(
        &api,
        &mut listener,
        "skipped",
        Duration::from_secs(15),
        |p| p["frames_skipped"].as_u64().unwrap_or(0) > 0,
    )
    .await;
    let slow_s = started.elapsed().as_secs_f64();
    println!(
        "slow Icecast: the push skipped forward after {slow_s:.1} s: {slow}; a listener got \
         {:.0}% of the audio meanwhile",
        100.0 * slow_received as f64 / (slow_s * bytes_per_s)
    );
    assert_eq!(slow["state"], "streaming", "{slow}");

    reading.store(false, Ordering::Relaxed);
    let stopped = Instant::now();
    let (stalled, stalled_received) = listen_until_push(
        &api,
        &mut listener,
        "dropped",
        Duration::from_secs(15),
        |p| {
            p["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("took nothing"))
        },
    )
    .await;
    println!(
        "stalled Icecast: dropped {:.1?} after it stopped reading: {stalled}",
        stopped.elapsed()
    );
    let elapsed_s = started.elapsed().as_secs_f64();
    let received = slow_received + stalled_received;
    println!(
        "the listener got {received} bytes in {elapsed_s:.1} s: {:.0}% of the audio",
        100.0 * received as f64 / (elapsed_s * bytes_per_s)
    );
    assert!(
        received as f64 > 0.9 * elapsed_s * bytes_per_s,
        "the listener kept up"
    );
    let status = api.status().await;
    assert_eq!(status["frames_skipped"], 0, "no listener skipped: {status}");
}
