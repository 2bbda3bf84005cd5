//! Live capture through the real cpal → ALSA → PulseAudio path: each test starts its own
//! virtual microphone (`scripts/virtual-mic`, a PulseAudio null sink looping a 440 Hz sine at
//! amplitude 0.5, exposed to ALSA as the PCM `vmic`) and the real pcmcast binary capturing it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio_stream::StreamExt;

const RATE_HZ: f64 = 48_000.0;
const FRAME_SIZE: usize = 1024;
const SINE_HZ: f64 = 440.0;
const SINE_AMPLITUDE: f64 = 0.5;

/// One private virtual-microphone instance, stopped (by the script, by PID) when dropped.
/// One runs at a time: each is a PulseAudio daemon plus a feeder that must keep real time,
/// and several at once on a 2-core machine make the feeders glitch.
struct VirtualMic {
    dir: PathBuf,
    env: Vec<(String, String)>,
    _one_at_a_time: MutexGuard<'static, ()>,
}

static ONE_MIC: Mutex<()> = Mutex::new(());

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/virtual-mic")
}

impl VirtualMic {
    fn start(name: &str) -> VirtualMic {
        // A test that failed while holding the lock leaves nothing behind that matters here.
        let turn = ONE_MIC
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let dir = common::scratch_dir(&format!("vmic-{name}"));
        let mut mic = VirtualMic {
            dir,
            env: Vec::new(),
            _one_at_a_time: turn,
        };
        mic.env = mic.run("start");
        mic
    }

    /// Runs the script with `command` on this instance; returns the exports it printed.
    fn run(&self, command: &str) -> Vec<(String, String)> {
        let output = common::output_within(
            Command::new(script())
                .arg(command)
                .env("VMIC_DIR", &self.dir),
            Duration::from_secs(120),
        );
        assert!(
            output.status.success(),
            "virtual-mic {command} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .filter_map(|line| line.strip_prefix("export "))
            .filter_map(|pair| pair.split_once('='))
            .map(|(name, value)| (name.to_owned(), value.trim_matches('\'').to_owned()))
            .collect()
    }

    fn device(&self) -> &str {
        self.env
            .iter()
            .find(|(name, _)| name == "PCMCAST_TEST_VMIC_DEVICE")
            .map(|(_, value)| value.as_str())
            .expect("the script exports the cpal device id")
    }

    fn command(&self) -> Command {
        let mut command = Command::new(common::binary());
        command.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command
    }

    fn spawn_pcmcast(&self) -> common::Process {
        let mut command = self.command();
        command.args(["--input", self.device(), "--bind", "127.0.0.1:0"]);
        common::spawn_command(command)
    }
}

impl Drop for VirtualMic {
    fn drop(&mut self) {
        let _ = common::output_within(
            Command::new(script())
                .arg("stop")
                .env("VMIC_DIR", &self.dir),
            Duration::from_secs(30),
        );
    }
}

/// A frame as received, with the client's clock.
struct Received {
    frame: Value,
    at: Instant,
    unix_at: f64,
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Opens `/stream.ndjson` and yields frames as they arrive.
async fn ndjson(url: String) -> impl tokio_stream::Stream<Item = Received> {
    let response = reqwest::get(url).await.unwrap();
    assert!(response.status().is_success());
    let body = response
        .bytes_stream()
        .map(|chunk| chunk.map_err(std::io::Error::other));
    let lines = tokio_util::io::StreamReader::new(body).lines();
    tokio_stream::wrappers::LinesStream::new(lines).map(|line| {
        let line = line.expect("the stream carries whole lines");
        Received {
            frame: serde_json::from_str(&line).expect("each line is JSON"),
            at: Instant::now(),
            unix_at: unix_now(),
        }
    })
}

async fn status(process: &common::Process) -> Value {
    common::get_json(process.url("/status")).await
}

async fn healthz(process: &common::Process) -> u16 {
    reqwest::get(process.url("/healthz"))
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Polls until `check` holds, failing after `limit`.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn samples(frame: &Value) -> Vec<f64> {
    frame["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// Rising zero crossings of a signal, interpolated between samples.
fn rising_crossings(signal: &[f64]) -> Vec<f64> {
    let crossings: Vec<f64> = signal
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[0] < 0.0 && w[1] >= 0.0)
        .map(|(i, w)| i as f64 + w[0] / (w[0] - w[1]))
        .collect();
    assert!(crossings.len() > 10, "the signal crosses zero");
    crossings
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Frequency of a sine from the median period between rising zero crossings: a glitch of the
/// virtual device's feeder on a loaded machine spoils a cycle or two, not the estimate.
fn frequency_hz(signal: &[f64], rate_hz: f64) -> f64 {
    let periods = rising_crossings(signal)
        .windows(2)
        .map(|w| w[1] - w[0])
        .collect();
    rate_hz / median(periods)
}

/// Amplitude of a sine: the median of its per-cycle peaks.
fn amplitude(signal: &[f64]) -> f64 {
    let peaks = rising_crossings(signal)
        .windows(2)
        .map(|w| {
            signal[w[0] as usize..w[1] as usize]
                .iter()
                .fold(0.0f64, |m, s| m.max(s.abs()))
        })
        .collect();
    median(peaks)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_streams_the_known_signal_at_real_time_pace() {
    let mic = VirtualMic::start("signal");
    let pcmcast = mic.spawn_pcmcast();
    let info = status(&pcmcast).await;
    assert_eq!(info["source"]["kind"], "capture");
    assert!(
        info["source"]["name"]
            .as_str()
            .unwrap()
            .contains(mic.device())
    );
    assert_eq!(info["source"]["rate"], 48_000);
    assert_eq!(info["source"]["channels"], 2);

    let mut frames = Box::pin(ndjson(pcmcast.url("/stream.ndjson")).await);
    // Frames that piled up while the client connected arrive together; start counting after.
    let settle = Instant::now() + Duration::from_millis(500);
    let mut first = frames.next().await.unwrap();
    while first.at < settle {
        first = frames.next().await.unwrap();
    }
    let window = Duration::from_secs(5);
    let mut received = vec![first];
    loop {
        let next = tokio::time::timeout(Duration::from_secs(2), frames.next())
            .await
            .expect("frames keep coming")
            .unwrap();
        if next.at - received[0].at > window {
            break;
        }
        received.push(next);
    }

    let elapsed = (received.last().unwrap().at - received[0].at).as_secs_f64();
    let fps = (received.len() - 1) as f64 / elapsed;
    let expected_fps = RATE_HZ / FRAME_SIZE as f64;
    println!("pace: {fps:.3} frames/s over {elapsed:.3} s (expected {expected_fps:.3})");
    assert!(
        (fps / expected_fps - 1.0).abs() < 0.02,
        "{fps:.3} frames/s is not within 2% of {expected_fps:.3}"
    );
    for pair in received.windows(2) {
        assert_eq!(
            pair[1].frame["seq"],
            pair[0].frame["seq"].as_u64().unwrap() + 1
        );
    }

    let left: Vec<f64> = received
        .iter()
        .flat_map(|r| samples(&r.frame).into_iter().step_by(2))
        .collect();
    let right: Vec<f64> = received
        .iter()
        .flat_map(|r| samples(&r.frame).into_iter().skip(1).step_by(2))
        .collect();
    assert_eq!(
        left, right,
        "the feeder plays the same sine on both channels"
    );
    let hz = frequency_hz(&left, RATE_HZ);
    let peak = amplitude(&left);
    let rms = (left.iter().map(|s| s * s).sum::<f64>() / left.len() as f64).sqrt();
    println!(
        "signal: {hz:.3} Hz, amplitude {peak:.4}, rms {rms:.4} (sine: {SINE_HZ} Hz, {SINE_AMPLITUDE})"
    );
    assert!((hz - SINE_HZ).abs() < 1.0, "frequency {hz} Hz");
    assert!(
        (peak / SINE_AMPLITUDE - 1.0).abs() < 0.02,
        "amplitude {peak}"
    );

    // Capture-to-listener latency: a frame's `time` is its first sample's capture time.
    let mut latency_ms: Vec<f64> = received
        .iter()
        .map(|r| (r.unix_at - r.frame["time"].as_f64().unwrap()) * 1_000.0)
        .collect();
    latency_ms.sort_by(f64::total_cmp);
    let frame_ms = FRAME_SIZE as f64 / RATE_HZ * 1_000.0;
    let (p50, p99) = (percentile(&latency_ms, 0.5), percentile(&latency_ms, 0.99));
    println!(
        "latency: p50 {p50:.2} ms, p99 {p99:.2} ms, max {:.2} ms (frame period {frame_ms:.2} ms)",
        latency_ms.last().unwrap()
    );
    assert!(
        latency_ms[0] > 0.0,
        "a frame cannot arrive before its capture"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_device_is_reported_and_the_same_listener_resumes() {
    let mic = VirtualMic::start("fault");
    let pcmcast = mic.spawn_pcmcast();
    let mut frames = Box::pin(ndjson(pcmcast.url("/stream.ndjson")).await);
    let before = frames.next().await.unwrap().frame["seq"].as_u64().unwrap();
    eventually("healthy", Duration::from_secs(5), || async {
        healthz(&pcmcast).await == 200
    })
    .await;

    mic.run("kill-daemon");
    eventually("/healthz 503", Duration::from_secs(5), || async {
        healthz(&pcmcast).await == 503
    })
    .await;
    let down = status(&pcmcast).await;
    assert_eq!(down["source"]["state"], "reconnecting");
    assert_eq!(
        down["listeners"]["current"], 1,
        "the listener stays connected"
    );

    // Bring the device back. The listener first gets the short frame that was pending when the
    // device went away, then frames jump ahead by the length of the outage.
    mic.run("start");
    eventually("/healthz 200 again", Duration::from_secs(15), || async {
        healthz(&pcmcast).await == 200
    })
    .await;
    let mut last = before;
    let jumped_to = loop {
        let next = tokio::time::timeout(Duration::from_secs(5), frames.next())
            .await
            .expect("frames flow to the same listener again")
            .unwrap();
        let seq = next.frame["seq"].as_u64().unwrap();
        if seq > last + 1 {
            break seq;
        }
        last = seq;
    };
    println!("seq {last} before the outage, {jumped_to} after");
    // The device was gone for longer than the half second pcmcast takes for a gap.
    let expected_jump = 0.5 * RATE_HZ / FRAME_SIZE as f64;
    assert!(
        (jumped_to - last) as f64 > expected_jump,
        "the outage shows as a seq jump of more than {expected_jump} frames"
    );
    assert_eq!(status(&pcmcast).await["source"]["state"], "running");
    let next = frames.next().await.unwrap();
    assert_eq!(next.frame["seq"].as_u64().unwrap(), jumped_to + 1);
}

#[test]
fn devices_lists_the_virtual_microphone() {
    let mic = VirtualMic::start("devices");
    let output = common::output_within(mic.command().arg("devices"), Duration::from_secs(30));
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let line = stdout
        .lines()
        .find(|l| l.starts_with(mic.device()))
        .unwrap_or_else(|| panic!("{} not listed in:\n{stdout}", mic.device()));
    assert!(line.contains("virtual microphone"), "{line}");
    assert!(stdout.contains("supports:"), "{stdout}");
}

#[test]
fn an_unknown_input_is_refused_with_the_list_of_devices() {
    let mic = VirtualMic::start("unknown");
    let output = common::output_within(
        mic.command()
            .args(["--input", "nosuchdevice", "--bind", "127.0.0.1:0"]),
        Duration::from_secs(30),
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    let error = stderr.lines().last().unwrap();
    assert!(
        error.contains("no input device matches 'nosuchdevice'"),
        "{stderr}"
    );
    assert!(error.contains(mic.device()), "lists the devices: {error}");
}

/// Runs pcmcast with `args` against `mic` until it exits; returns (success, its error line).
fn refused(mic: &VirtualMic, args: &[&str]) -> (bool, String) {
    let output = common::output_within(
        mic.command().args(args).args(["--bind", "127.0.0.1:0"]),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8(output.stderr).unwrap();
    let line = stderr.lines().last().unwrap_or_default().to_owned();
    (output.status.success(), line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_and_channels_are_honoured_or_refused_with_what_the_device_supports() {
    let mic = VirtualMic::start("config");
    let mut command = mic.command();
    command.args([
        "--input",
        "VIRTUAL MICROPHONE",
        "--rate",
        "44100",
        "--channels",
        "1",
    ]);
    command.args(["--frame-size", "441", "--bind", "127.0.0.1:0"]);
    let pcmcast = common::spawn_command(command);
    let info = status(&pcmcast).await;
    assert_eq!(
        info["source"]["kind"], "capture",
        "found by part of its name"
    );
    assert!(
        info["source"]["name"]
            .as_str()
            .unwrap()
            .contains(mic.device())
    );
    assert_eq!(
        (
            info["source"]["rate"].as_u64(),
            info["source"]["channels"].as_u64()
        ),
        (Some(44_100), Some(1))
    );
    let mut frames = Box::pin(ndjson(pcmcast.url("/stream.ndjson?frames=20")).await);
    let mut mono = Vec::new();
    while let Some(received) = frames.next().await {
        assert_eq!(received.frame["rate"], 44_100);
        mono.extend(samples(&received.frame));
    }
    assert_eq!(mono.len(), 20 * 441);
    let hz = frequency_hz(&mono, 44_100.0);
    assert!(
        (hz - SINE_HZ).abs() < 1.0,
        "resampled by the device, still {hz} Hz"
    );

    let (ok, error) = refused(&mic, &["--input", mic.device(), "--rate", "768000"]);
    assert!(!ok);
    assert!(
        error.contains("cannot capture 768000 Hz with 2 channels"),
        "{error}"
    );
    assert!(
        error.contains("supports: 1-32 ch, 1-384000 Hz"),
        "lists what it supports: {error}"
    );
}

#[test]
fn a_name_that_matches_several_devices_is_refused_with_the_matches() {
    let mic = VirtualMic::start("ambiguous");
    // "plugin" is in the names of several ALSA plugin devices.
    let (ok, error) = refused(&mic, &["--input", "plugin"]);
    assert!(!ok);
    assert!(
        error.contains("'plugin' matches several input devices"),
        "{error}"
    );
    assert!(
        error.matches("alsa:").count() >= 2,
        "names the matches: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_source_option_the_default_input_device_is_captured() {
    let mic = VirtualMic::start("default");
    // PulseAudio's default source is the virtual microphone, and ALSA's default PCM goes to
    // PulseAudio while the daemon runs.
    let mut command = mic.command();
    command.args(["--bind", "127.0.0.1:0"]);
    let pcmcast = common::spawn_command(command);
    let info = status(&pcmcast).await;
    assert_eq!(info["source"]["kind"], "capture");
    assert!(
        info["source"]["name"]
            .as_str()
            .unwrap()
            .starts_with("alsa:default")
    );
    let mut frames = Box::pin(ndjson(pcmcast.url("/stream.ndjson?frames=10")).await);
    let mut left = Vec::new();
    while let Some(received) = frames.next().await {
        left.extend(samples(&received.frame).into_iter().step_by(2));
    }
    let hz = frequency_hz(&left, RATE_HZ);
    assert!((hz - SINE_HZ).abs() < 1.0, "{hz} Hz");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_usable_device_the_demo_recording_plays_after_one_log_line() {
    let dir = common::scratch_dir("no-device");
    let asoundrc = dir.join("asoundrc");
    // A default PCM that names a sound card this machine does not have.
    std::fs::write(&asoundrc, "pcm.!default { type hw card 99 }\n").unwrap();
    let mut command = Command::new(common::binary());
    command.env(
        "ALSA_CONFIG_PATH",
        format!("/usr/share/alsa/alsa.conf:{}", asoundrc.display()),
    );
    command.args(["--bind", "127.0.0.1:0"]);
    let pcmcast = common::spawn_command(command);
    let info = status(&pcmcast).await;
    assert_eq!(info["source"]["kind"], "demo");
    assert_eq!(
        info["source"]["state"]
            .as_str()
            .map(|s| s == "running" || s == "starting"),
        Some(true)
    );
    let said: Vec<String> = pcmcast.startup.clone();
    let warnings: Vec<&String> = said
        .iter()
        .filter(|l| l.contains("no usable input device"))
        .collect();
    assert_eq!(warnings.len(), 1, "one line says so: {said:?}");
    assert!(warnings[0].contains("demo recording"), "{}", warnings[0]);
    assert!(
        said.iter()
            .all(|l| l.contains(" INFO ") || l.contains(" WARN ")),
        "nothing but pcmcast's own log lines: {said:?}"
    );
}
