//! End-to-end tests of `/metrics` against in-process servers on 127.0.0.1:0: the text passes
//! `promtool check metrics` (Debian package `prometheus`), names every metric family the
//! contract asks for, follows listeners and the source, and escapes label values.
//!
//! No test sleeps to synchronise: each waits for what it needs by polling `/metrics` with a
//! deadline, and every request, read and wait is bounded in time.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use common::api::{self, Api, STEP, within};
use pcmcast::source::tone;

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const ENDPOINTS: [&str; 7] = ["pcm", "wav", "ndjson", "events", "ws", "opus", "flac"];

const STATES: [&str; 5] = ["starting", "running", "ended", "stopped", "reconnecting"];

/// Every metric family the contract asks for, with its type.
const FAMILIES: [(&str, &str); 24] = [
    ("pcmcast_source_info", "gauge"),
    ("pcmcast_source_state", "gauge"),
    ("pcmcast_source_up", "gauge"),
    ("pcmcast_frames_produced_total", "counter"),
    ("pcmcast_samples_dropped_total", "counter"),
    ("pcmcast_frames_skipped_total", "counter"),
    ("pcmcast_realtime_threads", "gauge"),
    ("pcmcast_listeners_dropped_total", "counter"),
    ("pcmcast_backlog_frames", "gauge"),
    ("pcmcast_listeners_current", "gauge"),
    ("pcmcast_listeners_peak", "gauge"),
    ("pcmcast_listeners_total", "counter"),
    ("pcmcast_sent_bytes_total", "counter"),
    ("pcmcast_encoder_cpu_seconds_total", "counter"),
    ("pcmcast_encoded_audio_seconds_total", "counter"),
    ("pcmcast_encoder_faults_total", "counter"),
    ("pcmcast_pages_skipped_total", "counter"),
    ("pcmcast_all_listeners_current", "gauge"),
    ("pcmcast_all_listeners_peak", "gauge"),
    ("pcmcast_all_listeners_total", "counter"),
    ("pcmcast_level_rms_dbfs", "gauge"),
    ("pcmcast_level_peak_dbfs", "gauge"),
    ("pcmcast_last_frame_age_seconds", "gauge"),
    ("pcmcast_uptime_seconds", "gauge"),
];

/// The families `--icecast` adds, with their types.
const ICECAST_FAMILIES: [(&str, &str); 6] = [
    ("pcmcast_icecast_info", "gauge"),
    ("pcmcast_icecast_state", "gauge"),
    ("pcmcast_icecast_up", "gauge"),
    ("pcmcast_icecast_sent_bytes_total", "counter"),
    ("pcmcast_icecast_connects_total", "counter"),
    ("pcmcast_icecast_frames_skipped_total", "counter"),
];

const PUSH_STATES: [&str; 4] = ["connecting", "streaming", "retrying", "stopped"];

/// One `/metrics` response body.
struct Metrics {
    text: String,
}

impl Metrics {
    /// The value of one series, written exactly as the server writes it: `name` or
    /// `name{label="value",…}`, labels in the server's order. Panics if it is missing.
    fn value(&self, series: &str) -> f64 {
        let value = self
            .text
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no series {series} in:\n{}", self.text));
        match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            _ => value
                .parse()
                .unwrap_or_else(|e| panic!("{series}: value {value:?}: {e}")),
        }
    }

    fn endpoint(&self, name: &str, endpoint: &str) -> f64 {
        self.value(&format!("{name}{{endpoint=\"{endpoint}\"}}"))
    }

    /// One metric's value for every endpoint, in `ENDPOINTS` order.
    fn per_endpoint(&self, name: &str) -> [f64; 7] {
        ENDPOINTS.map(|endpoint| self.endpoint(name, endpoint))
    }

    /// (name, type) of every `# TYPE` line.
    fn families(&self) -> BTreeSet<(&str, &str)> {
        self.text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE ")?.split_once(' '))
            .collect()
    }
}

/// `/metrics` polling, for the client of [`common::api`].
impl Api {
    async fn metrics(&self) -> Metrics {
        let response = self.get_ok("/metrics").await;
        assert_eq!(common::header(&response, "content-type"), CONTENT_TYPE);
        let text = within(STEP, "the /metrics body", response.text())
            .await
            .expect("/metrics is text");
        Metrics { text }
    }

    /// Polls `/metrics` until `ready` holds for it; fails the test after [`STEP`].
    async fn wait_for(&self, what: &str, ready: impl Fn(&Metrics) -> bool) -> Metrics {
        let show = |m: &Metrics| format!("/metrics:\n{}", m.text);
        api::poll_until(what, || self.metrics(), ready, show).await
    }

    /// Waits until the source is up and has produced more than `more_than` frames.
    async fn wait_for_frames_metric(&self, what: &str, more_than: f64) -> Metrics {
        self.wait_for(what, |m| {
            m.value("pcmcast_frames_produced_total") > more_than
                && m.value("pcmcast_source_up") == 1.0
        })
        .await
    }
}

/// Runs `promtool check metrics` on `text` (through stdin) and fails the test unless it exits 0
/// and reports no problem at all.
fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): install the Debian package `prometheus`")
        });
    let mut stdin = child.stdin.take().unwrap();
    let body = text.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(body.as_bytes()));
    let read = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            pipe.read_to_string(&mut text).unwrap();
            text
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let status = common::wait_for_exit(&mut child, STEP).expect("promtool finishes within 5 s");
    writer
        .join()
        .unwrap()
        .expect("promtool reads all of /metrics");
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    assert!(
        status.success() && stdout.is_empty() && stderr.is_empty(),
        "promtool check metrics: {status}\nstdout: {stdout}\nstderr: {stderr}\non:\n{text}"
    );
}

/// The text passes promtool and has every family of the contract (and no `pcmcast_icecast_*`
/// without `--icecast`), each endpoint and state; the source is described and its level is the
/// tone's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_cover_the_contract() {
    // 8 whole cycles of the tone per frame, one sample exactly on each crest: the level of
    // every frame is exactly the sine's.
    let server = common::start_line("--tone 375 --rate 48000 --channels 2 --frame-size 1024").await;
    let _stop = server.shutdown.clone().drop_guard();
    let api = Api::new(server.addr);

    let metrics = api.wait_for_frames_metric("a first frame", 0.0).await;
    promtool_check(&metrics.text);
    assert_eq!(metrics.families(), BTreeSet::from(FAMILIES));

    assert_eq!(
        metrics.value(
            r#"pcmcast_source_info{kind="tone",name="375 Hz sine",rate="48000",channels="2",frame_size="1024"}"#
        ),
        1.0
    );
    let states =
        STATES.map(|state| metrics.value(&format!("pcmcast_source_state{{state=\"{state}\"}}")));
    assert_eq!(
        states,
        [0.0, 1.0, 0.0, 0.0, 0.0],
        "only running, in {STATES:?}"
    );
    for name in [
        "pcmcast_listeners_current",
        "pcmcast_listeners_peak",
        "pcmcast_listeners_total",
        "pcmcast_sent_bytes_total",
    ] {
        assert_eq!(metrics.per_endpoint(name), [0.0; 7], "{name}");
    }

    let amplitude_dbfs = 20.0 * f64::from(tone::AMPLITUDE).log10();
    let peak = metrics.value("pcmcast_level_peak_dbfs");
    let rms = metrics.value("pcmcast_level_rms_dbfs");
    assert!((peak - amplitude_dbfs).abs() < 0.01, "peak {peak} dBFS");
    // A sine's RMS is its amplitude / √2: 3.01 dB below its peak.
    assert!(
        (rms - (amplitude_dbfs - 3.0103)).abs() < 0.01,
        "RMS {rms} dBFS"
    );
    let age = metrics.value("pcmcast_last_frame_age_seconds");
    let uptime = metrics.value("pcmcast_uptime_seconds");
    assert!(
        (0.0..=uptime).contains(&age),
        "last frame {age} s ago, up {uptime} s"
    );
    server.stop().await;
}

/// Listener gauges and counters follow listeners per endpoint and overall; bytes sent count at
/// least what listeners received; frames produced grows; totals and peaks stay after leaving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_listeners_and_the_source() {
    let server = common::start_line("--tone 440 --rate 48000 --channels 2 --frame-size 480").await;
    let _stop = server.shutdown.clone().drop_guard();
    let api = Api::new(server.addr);
    let before = api.wait_for_frames_metric("a first frame", 0.0).await;
    assert_eq!(before.per_endpoint("pcmcast_listeners_total"), [0.0; 7]);
    assert_eq!(before.endpoint("pcmcast_sent_bytes_total", "pcm"), 0.0);

    let mut pcm = [
        api.get_ok("/stream.pcm").await,
        api.get_ok("/stream.pcm").await,
    ];
    let mut ndjson = api.get_ok("/stream.ndjson").await;
    let mut flac = api.get_ok("/stream.flac").await;
    let during = api.metrics().await;
    promtool_check(&during.text);
    let one_each = [2.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
    assert_eq!(during.per_endpoint("pcmcast_listeners_current"), one_each);
    assert_eq!(during.per_endpoint("pcmcast_listeners_peak"), one_each);
    assert_eq!(during.per_endpoint("pcmcast_listeners_total"), one_each);
    let overall = |m: &Metrics| {
        ["current", "peak", "total"].map(|k| m.value(&format!("pcmcast_all_listeners_{k}")))
    };
    assert_eq!(overall(&during), [4.0, 4.0, 4.0]);

    // Whatever a listener has received was counted as sent: reading more than had been sent at
    // the scrape proves the counter grew, and by at least that much.
    let sent = during.endpoint("pcmcast_sent_bytes_total", "pcm");
    let mut received = 0usize;
    within(STEP, "reading past what had been sent", async {
        while received as f64 <= sent {
            let [a, b] = &mut pcm;
            let (a, b) = tokio::join!(a.chunk(), b.chunk());
            for chunk in [a, b] {
                received += chunk.expect("reading").expect("the stream goes on").len();
            }
        }
    })
    .await;
    let ndjson_received = within(STEP, "an NDJSON chunk", ndjson.chunk())
        .await
        .expect("reading")
        .expect("the stream goes on")
        .len();
    let frames = during.value("pcmcast_frames_produced_total");
    let after = api.wait_for_frames_metric("more frames", frames).await;
    let sent_after = after.endpoint("pcmcast_sent_bytes_total", "pcm");
    assert!(
        sent_after >= received as f64,
        "{sent_after} bytes sent, {received} received"
    );
    assert!(after.endpoint("pcmcast_sent_bytes_total", "ndjson") >= ndjson_received as f64);

    // The FLAC listener's encoder counts its CPU time and the audio it encoded.
    within(STEP, "FLAC pages", async {
        for _ in 0..3 {
            flac.chunk()
                .await
                .expect("reading")
                .expect("the stream goes on");
        }
    })
    .await;
    let encoded = api
        .wait_for("the FLAC encoder's accounts", |m| {
            m.endpoint("pcmcast_encoded_audio_seconds_total", "flac") >= 0.02
                && m.endpoint("pcmcast_encoder_cpu_seconds_total", "flac") > 0.0
        })
        .await;
    assert_eq!(
        encoded.endpoint("pcmcast_encoder_faults_total", "flac"),
        0.0
    );

    drop(pcm);
    drop(ndjson);
    drop(flac);
    let left = api
        .wait_for("every listener gone", |m| {
            m.value("pcmcast_all_listeners_current") == 0.0
                && m.per_endpoint("pcmcast_listeners_current") == [0.0; 7]
        })
        .await;
    assert_eq!(left.per_endpoint("pcmcast_listeners_peak"), one_each);
    assert_eq!(left.per_endpoint("pcmcast_listeners_total"), one_each);
    assert_eq!(overall(&left), [0.0, 4.0, 4.0]);
    assert!(left.endpoint("pcmcast_sent_bytes_total", "pcm") >= sent_after);
    server.stop().await;
}

/// A source name holding a double quote, a backslash and a newline is escaped in its label, and
/// the text still passes promtool; silence is -Inf dBFS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_name_is_escaped_and_silence_is_minus_infinity() {
    let dir = common::scratch_dir("metrics_source_name_is_escaped");
    let dir_text = dir.to_str().unwrap();
    assert!(
        !dir_text.contains(['\\', '"', '\n']),
        "the scratch dir itself needs no escaping: {dir_text}"
    );
    let path = dir.join("we\"ird\\name\n.wav");
    common::write_int_wav(&path, 48_000, 1, 16, &[0; 4800]);
    let server = common::start(&["--wav", path.to_str().unwrap(), "--loop"]).await;
    let _stop = server.shutdown.clone().drop_guard();
    let api = Api::new(server.addr);

    let metrics = api.wait_for_frames_metric("a first frame", 0.0).await;
    promtool_check(&metrics.text);
    let info = format!(
        r#"pcmcast_source_info{{kind="wav",name="{dir_text}/we\"ird\\name\n.wav",rate="48000",channels="1",frame_size="1024"}}"#
    );
    assert_eq!(metrics.value(&info), 1.0);
    assert_eq!(metrics.value("pcmcast_level_rms_dbfs"), f64::NEG_INFINITY);
    assert_eq!(metrics.value("pcmcast_level_peak_dbfs"), f64::NEG_INFINITY);
    server.stop().await;
}

/// With `--icecast`, the push's families are there too and still pass promtool; a push to a
/// closed port is down and retrying; the URL is shown without its password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_icecast_push_adds_its_families() {
    let closed_port = common::free_port();
    let url = format!("http://source:pa55word@127.0.0.1:{closed_port}/live");
    let server = common::start(&["--tone", "440", "--icecast", &url]).await;
    let _stop = server.shutdown.clone().drop_guard();
    let api = Api::new(server.addr);

    let metrics = api
        .wait_for("the push retrying", |m| {
            m.value(r#"pcmcast_icecast_state{state="retrying"}"#) == 1.0
        })
        .await;
    promtool_check(&metrics.text);
    let expected: BTreeSet<_> = FAMILIES.into_iter().chain(ICECAST_FAMILIES).collect();
    assert_eq!(metrics.families(), expected);
    let states = PUSH_STATES
        .map(|state| metrics.value(&format!("pcmcast_icecast_state{{state=\"{state}\"}}")));
    assert_eq!(
        states,
        [0.0, 0.0, 1.0, 0.0],
        "only retrying, in {PUSH_STATES:?}"
    );
    assert_eq!(metrics.value("pcmcast_icecast_up"), 0.0);
    assert_eq!(metrics.value("pcmcast_icecast_connects_total"), 0.0);
    let info = format!(
        r#"pcmcast_icecast_info{{url="http://127.0.0.1:{closed_port}/live",format="pcm",content_type="application/octet-stream"}}"#
    );
    assert_eq!(metrics.value(&info), 1.0);
    assert!(!metrics.text.contains("pa55word"), "{}", metrics.text);
    server.stop().await;
}
