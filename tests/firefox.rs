//! `<audio src=/stream.opus>` and `<audio src=/stream.flac>` in real headless Firefox: both
//! play, joining their streams mid-stream. Firefox is driven through Marionette, its own
//! remote protocol (length-prefixed JSON over TCP), since Debian has no geckodriver. Firefox
//! needs an audio sink to play to, or the elements fail with `OnMediaSinkAudioError`: a private
//! PulseAudio daemon from `scripts/virtual-mic` gives it a null sink.
//!
//! Needs Debian's `firefox-esr` and `pulseaudio` (scripts/test installs them).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::ProcessGroup;
use common::api::{Api, STEP, within};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FIREFOX: &str = "/usr/bin/firefox-esr";
/// Bound on one Marionette command: a cold start of Firefox on a busy 2-core machine (the
/// new session) takes many seconds.
const COMMAND_LIMIT: Duration = Duration::from_secs(30);

/// A private PulseAudio daemon (and the script's feeder), stopped when dropped.
struct Sink {
    dir: std::path::PathBuf,
    env: Vec<(String, String)>,
}

fn virtual_mic(command: &str, dir: &Path) -> std::process::Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/virtual-mic");
    let output = common::output_within(
        Command::new(script).arg(command).env("VMIC_DIR", dir),
        Duration::from_secs(120),
    );
    assert!(
        output.status.success(),
        "virtual-mic {command}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

impl Sink {
    fn start() -> Sink {
        let dir = common::scratch_dir("firefox-sink");
        let exports = String::from_utf8(virtual_mic("start", &dir).stdout).unwrap();
        let env = exports
            .lines()
            .filter_map(|line| line.strip_prefix("export ")?.split_once('='))
            .map(|(name, value)| (name.to_owned(), value.trim_matches('\'').to_owned()))
            .collect();
        Sink { dir, env }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        virtual_mic("stop", &self.dir);
    }
}

/// Headless Firefox with Marionette on a free port, in a [`ProcessGroup`]: a failed test
/// leaves none of its processes behind.
struct Firefox {
    _process: ProcessGroup,
    port: u16,
}

impl Firefox {
    fn start(sink: &Sink) -> Firefox {
        assert!(
            Path::new(FIREFOX).exists(),
            "{FIREFOX} is missing: install Debian's firefox-esr (scripts/test does)"
        );
        let port = common::free_port();
        let profile = common::scratch_dir("firefox-profile");
        // Media may start without a click: the test has no user to click.
        let prefs = format!(
            "user_pref(\"marionette.port\", {port});\n\
             user_pref(\"media.autoplay.default\", 0);\n\
             user_pref(\"browser.shell.checkDefaultBrowser\", false);\n"
        );
        std::fs::write(profile.join("user.js"), prefs).unwrap();
        let process = ProcessGroup::spawn(
            Command::new(FIREFOX)
                .args(["--headless", "--marionette", "--no-remote", "--profile"])
                .arg(&profile)
                .envs(sink.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .env("HOME", &profile),
        );
        Firefox {
            _process: process,
            port,
        }
    }
}

/// A Marionette connection: messages are `LENGTH:JSON`; a command is `[0, id, name, params]`
/// and its answer `[1, id, error, result]`.
struct Marionette {
    stream: TcpStream,
    buffer: Vec<u8>,
    next_id: u64,
}

impl Marionette {
    /// Connects (retrying while Firefox starts, up to 30 s) and reads the greeting.
    async fn connect(port: u16) -> Marionette {
        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match TcpStream::connect(("127.0.0.1", port)).await {
                Ok(stream) => break stream,
                Err(error) => {
                    assert!(Instant::now() < deadline, "Marionette on {port}: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let mut marionette = Marionette {
            stream,
            buffer: Vec::new(),
            next_id: 1,
        };
        let greeting = within(STEP, "the Marionette greeting", marionette.read()).await;
        assert_eq!(greeting["applicationType"], "gecko", "{greeting}");
        marionette
    }

    async fn read(&mut self) -> Value {
        loop {
            if let Some(colon) = self.buffer.iter().position(|&b| b == b':') {
                let len: usize = std::str::from_utf8(&self.buffer[..colon])
                    .unwrap()
                    .parse()
                    .unwrap();
                if self.buffer.len() > colon + len {
                    let message: Vec<u8> = self.buffer.drain(..=colon + len).collect();
                    return serde_json::from_slice(&message[colon + 1..]).unwrap();
                }
            }
            let mut chunk = vec![0; 16 * 1024];
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "Marionette closed the connection");
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends a command and returns its result; panics with Firefox's error.
    async fn command(&mut self, name: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let message = json!([0, id, name, params]).to_string();
        let framed = format!("{}:{message}", message.len());
        self.stream.write_all(framed.as_bytes()).await.unwrap();
        let answer = within(COMMAND_LIMIT, name, self.read()).await;
        assert_eq!(answer[1], id, "{answer}");
        assert!(answer[2].is_null(), "{name}: {}", answer[2]);
        answer[3].clone()
    }

    async fn script(&mut self, script: &str) -> Value {
        let result = self
            .command(
                "WebDriver:ExecuteScript",
                json!({"script": script, "args": []}),
            )
            .await;
        result["value"].clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_elements_play_the_compressed_streams_in_firefox() {
    let started = Instant::now();
    let server = common::start(&["--tone", "440", "--rate", "44100"]).await;
    let api = Api::new(server.addr);
    // Other listeners keep both encoders running: Firefox joins mid-stream.
    let mut keep_running = Vec::new();
    for path in ["/stream.opus", "/stream.flac"] {
        keep_running.push(api.keep_listening(path).await);
    }
    let sink = tokio::task::spawn_blocking(Sink::start).await.unwrap();
    let firefox = Firefox::start(&sink);
    let mut marionette = Marionette::connect(firefox.port).await;
    marionette.command("WebDriver:NewSession", json!({})).await;
    let url = server.url("/healthz");
    marionette
        .command("WebDriver:Navigate", json!({ "url": url }))
        .await;
    marionette
        .script(
            "window.players = {};
             for (const name of ['opus', 'flac']) {
                 const audio = new Audio('/stream.' + name);
                 audio.play().catch(error => { audio.dataset.refused = String(error); });
                 window.players[name] = audio;
             }",
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let players = marionette
            .script(
                "const out = {};
                 for (const [name, a] of Object.entries(window.players)) {
                     out[name] = {time: a.currentTime, paused: a.paused, ready: a.readyState,
                                  error: a.error && a.error.message,
                                  refused: a.dataset.refused || null};
                 }
                 return out;",
            )
            .await;
        for name in ["opus", "flac"] {
            let player = &players[name];
            assert!(
                player["error"].is_null() && player["refused"].is_null(),
                "{name}: {player}"
            );
        }
        let playing = ["opus", "flac"].iter().all(|name| {
            players[name]["time"].as_f64() > Some(1.0) && players[name]["paused"] == false
        });
        if playing {
            println!("Firefox after {:?}: {players}", started.elapsed());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not playing within 15 s: {players}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = api.status().await;
    for endpoint in ["opus", "flac"] {
        let listeners = &status["endpoints"][endpoint]["listeners"];
        assert_eq!(listeners["current"], 2, "{endpoint}: {status}");
    }

    drop(marionette);
    drop(firefox);
    tokio::task::spawn_blocking(move || drop(sink))
        .await
        .unwrap();
    for task in keep_running {
        task.abort();
    }
    server.stop().await;
}
