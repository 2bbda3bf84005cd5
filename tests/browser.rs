//! The browser player at `/`, in real headless Chromium driven through chromedriver (W3C
//! WebDriver over HTTP, spoken with reqwest): the page plays the stream through WebAudio, and
//! shows the stream, the listeners and the level of what it plays.
//!
//! Needs Debian's `chromium` and `chromium-driver` (scripts/test installs them).

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::ProcessGroup;
use common::api::Api;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const TOKEN: &str = "s3cret";

/// Chromium as it runs here: headless, no sandbox (root), no GPU, no network of its own, a
/// fresh profile. Its autoplay policy stays on: audio starts only from the click on Play, as
/// for a person (a WebDriver click is a real user gesture).
const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--disable-breakpad",
    "--window-size=1000,1100",
];

/// chromedriver on a free loopback port, in a [`ProcessGroup`] that Chromium joins: a failed
/// test leaves no browser behind.
struct Chromedriver {
    _process: ProcessGroup,
    url: String,
    http: reqwest::Client,
    profile: PathBuf,
}

impl Chromedriver {
    /// Starts chromedriver; its Chromium will use a fresh profile in `profile` (a scratch dir).
    async fn start(profile: &str) -> Chromedriver {
        for program in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(program).exists(),
                "{program} is missing: install Debian's chromium and chromium-driver (scripts/test does)"
            );
        }
        let port = common::free_port();
        let process = ProcessGroup::spawn(Command::new(CHROMEDRIVER).arg(format!("--port={port}")));
        let driver = Chromedriver {
            _process: process,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .unwrap(),
            profile: common::scratch_dir(profile),
        };
        eventually("chromedriver is ready", Duration::from_secs(10), || async {
            let status = driver.http.get(format!("{}/status", driver.url)).send();
            match status.await {
                Ok(response) => {
                    let body = response.bytes().await.map_err(|e| e.to_string())?;
                    let body: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
                    ready(body["value"]["ready"] == true, body)
                }
                Err(error) => Err(error.to_string()),
            }
        })
        .await;
        driver
    }

    /// Opens headless Chromium.
    async fn session(&self) -> Browser {
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| a.to_string()).collect();
        args.push(format!("--user-data-dir={}", self.profile.display()));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let response = webdriver(json_body(
            self.http.post(format!("{}/session", self.url)),
            &capabilities,
        ))
        .await;
        let id = response["sessionId"].as_str().expect("a session id");
        Browser {
            http: self.http.clone(),
            url: format!("{}/session/{id}", self.url),
        }
    }
}

/// One WebDriver session: a Chromium window.
struct Browser {
    http: reqwest::Client,
    url: String,
}

impl Browser {
    async fn post(&self, path: &str, body: Value) -> Value {
        webdriver(json_body(
            self.http.post(format!("{}{path}", self.url)),
            &body,
        ))
        .await
    }

    async fn get(&self, path: &str) -> Value {
        webdriver(self.http.get(format!("{}{path}", self.url))).await
    }

    async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    async fn element(&self, id: &str) -> String {
        let found = self
            .post(
                "/element",
                json!({"using": "css selector", "value": format!("#{id}")}),
            )
            .await;
        // The W3C name of an element reference.
        found["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .unwrap_or_else(|| panic!("element #{id}: {found}"))
            .to_owned()
    }

    async fn click(&self, id: &str) {
        let element = self.element(id).await;
        self.post(&format!("/element/{element}/click"), json!({}))
            .await;
    }

    async fn text(&self, id: &str) -> String {
        let element = self.element(id).await;
        let text = self.get(&format!("/element/{element}/text")).await;
        text.as_str().unwrap().to_owned()
    }

    /// Runs `script` (a function body) in the page and returns what it returns.
    async fn eval(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": []}))
            .await
    }

    async fn screenshot(&self, path: &Path) {
        let png = self.get("/screenshot").await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// The browser console since the last call (chromedriver's log endpoint).
    async fn console(&self) -> Vec<Value> {
        let log = self.post("/se/log", json!({"type": "browser"})).await;
        log.as_array().unwrap().clone()
    }

    /// Ends the session, which closes Chromium.
    async fn close(self) {
        webdriver(self.http.delete(&self.url)).await;
    }
}

fn json_body(request: reqwest::RequestBuilder, body: &Value) -> reqwest::RequestBuilder {
    request
        .header("content-type", "application/json")
        .body(body.to_string())
}

/// Sends a WebDriver command and returns its `value`; panics with the driver's error.
async fn webdriver(request: reqwest::RequestBuilder) -> Value {
    let response = request.send().await.expect("chromedriver answers");
    let status = response.status();
    let body = response.bytes().await.expect("an answer");
    let body: Value = serde_json::from_slice(&body).expect("a JSON answer");
    assert!(status.is_success(), "WebDriver error {status}: {body}");
    body["value"].clone()
}

fn ready<T>(ok: bool, observed: T) -> Result<T, String>
where
    T: std::fmt::Display,
{
    if ok {
        Ok(observed)
    } else {
        Err(observed.to_string())
    }
}

/// Calls `probe` every 100 ms until it returns `Ok`; panics with the last observation after
/// `limit`.
async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) if Instant::now() > deadline => {
                panic!("{what}: not within {limit:?}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn listeners_in_status(server: &common::Server) -> u64 {
    let status = common::get_json(server.url(&format!("/status?token={TOKEN}"))).await;
    status["listeners"]["current"].as_u64().unwrap()
}

/// Where the test leaves its screenshot: `target/browser-artifacts/`.
fn artifact(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("browser-artifacts")
        .join(name)
}

/// Waits until the worklet has received `seconds` of the stream and rendered as much, with the
/// AudioContext running; returns `window.pcmcast` then.
async fn wait_for_audio(browser: &Browser, rate_hz: u64, channels: u64, seconds: u64) -> Value {
    eventually(
        "the worklet receives and renders the stream",
        Duration::from_secs(10),
        || async {
            let p = browser.eval("return window.pcmcast").await;
            let context_rate_hz = p["audio"]["sampleRate"].as_u64().unwrap_or(u64::MAX);
            let ok = p["samplesReceived"].as_u64() >= Some(seconds * rate_hz * channels)
                && p["framesRendered"].as_u64() >= Some(seconds * context_rate_hz)
                && p["audio"]["state"] == "running";
            ready(ok, p)
        },
    )
    .await
}

/// Checks that the meter measures what pcmcast's tone is, a sine of amplitude 0.5: peak
/// −6.02 dBFS, RMS −9.03 dBFS (within 1 dB), and that the page shows it.
async fn check_tone_level(browser: &Browser) {
    let near = |db: Option<f64>, expected: f64| db.is_some_and(|db| (db - expected).abs() < 1.0);
    // The first report of the tone: playback has settled.
    let level = eventually(
        "the meter measures the tone",
        Duration::from_secs(5),
        || async {
            let level = browser.eval("return window.pcmcast.level").await;
            let ok =
                near(level["peakDbfs"].as_f64(), -6.02) && near(level["rmsDbfs"].as_f64(), -9.03);
            ready(ok, level)
        },
    )
    .await;
    println!("level: {level}");
    for (id, expected) in [("level-peak", -6.0), ("level-rms", -9.0)] {
        let shown: f64 = browser.text(id).await.parse().unwrap();
        assert!((shown - expected).abs() <= 1.0, "#{id} shows {shown}");
    }
    // Then a second of reports: each peak is the tone's (misread bytes make huge values or
    // NaN), and so is the typical RMS (an underrun's silence may lower one report's).
    let mut rms = Vec::new();
    let end = Instant::now() + Duration::from_secs(1);
    while Instant::now() < end {
        let level = browser.eval("return window.pcmcast.level").await;
        assert!(near(level["peakDbfs"].as_f64(), -6.02), "level {level}");
        rms.push(level["rmsDbfs"].as_f64().unwrap_or(f64::NEG_INFINITY));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rms.sort_by(f64::total_cmp);
    assert!(near(Some(rms[rms.len() / 2]), -9.03), "RMS {rms:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_player_plays_the_tone_and_shows_the_stream() {
    let started = Instant::now();
    let server = common::start_line(&format!(
        "--tone 440 --rate 48000 --channels 2 --token {TOKEN}"
    ))
    .await;
    let driver = Chromedriver::start("browser-player").await;
    let browser = driver.session().await;
    browser.goto(&server.url(&format!("/?token={TOKEN}"))).await;

    // Before Play: the stream's format from /status, and the commands for this server.
    eventually(
        "the page shows the stream",
        Duration::from_secs(5),
        || async {
            let shown = [
                browser.text("rate").await,
                browser.text("channels").await,
                browser.text("frame-size").await,
            ];
            ready(shown == ["48000", "2", "1024"], format!("{shown:?}"))
        },
    )
    .await;
    assert_eq!(browser.text("state").await, "stopped");
    assert_eq!(browser.text("listeners").await, "0");
    let host = server.addr;
    assert_eq!(
        browser.text("cmd-pcm").await,
        format!(
            "curl -sN 'http://{host}/stream.pcm?token={TOKEN}' | ffplay -f f32le -ar 48000 -ch_layout stereo -"
        )
    );

    // Every request the page makes from now on is recorded, to check that it carries the token.
    browser
        .eval(
            "window.requested = [];
             const fetchOriginal = window.fetch;
             window.fetch = (url, options) => {
                 window.requested.push(String(url));
                 return fetchOriginal(url, options);
             };",
        )
        .await;

    browser.click("play").await;
    let audio = wait_for_audio(&browser, 48_000, 2, 1).await;
    println!("audio after {:?}: {audio}", started.elapsed());
    assert_eq!(
        audio["audio"]["sampleRate"], 48_000,
        "the context runs at the stream's rate"
    );
    assert_eq!(browser.text("play").await, "Stop");
    check_tone_level(&browser).await;

    eventually(
        "the page and /status show one listener",
        Duration::from_secs(5),
        || async {
            let shown = browser.text("listeners").await;
            let status = listeners_in_status(&server).await;
            ready(
                shown == "1" && status == 1,
                format!("page {shown}, /status {status}"),
            )
        },
    )
    .await;
    assert_eq!(browser.text("state").await, "playing");
    browser.screenshot(&artifact("player.png")).await;

    let requested = browser.eval("return window.requested").await;
    let requested: Vec<&str> = requested
        .as_array()
        .unwrap()
        .iter()
        .map(|url| url.as_str().unwrap())
        .collect();
    assert!(
        requested.iter().any(|url| url.contains("/stream.pcm"))
            && requested.iter().any(|url| url.contains("/status")),
        "{requested:?}"
    );
    for url in &requested {
        assert!(
            url.contains(&format!("token={TOKEN}")),
            "{url} has no token"
        );
    }

    browser.click("play").await;
    eventually(
        "/status and the page count no listener after Stop",
        Duration::from_secs(5),
        || async {
            let status = listeners_in_status(&server).await;
            let shown = browser.text("listeners").await;
            ready(
                status == 0 && shown == "0",
                format!("/status {status}, page {shown}"),
            )
        },
    )
    .await;
    assert_eq!(browser.text("state").await, "stopped");
    assert_eq!(browser.text("play").await, "Play");

    let errors: Vec<Value> = browser
        .console()
        .await
        .into_iter()
        .filter(|entry| entry["level"] == "SEVERE")
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");

    browser.close().await;
    drop(driver);
    server.stop().await;
    println!("took {:?}", started.elapsed());
}

/// A TCP relay in front of a server: it forwards what the server sends in pieces of at most
/// `piece_bytes`, each written on its own with a pause after it, so that the browser's reads
/// of the body end anywhere, inside samples and inside sample frames; and it can cut every
/// open connection.
struct Relay {
    addr: SocketAddr,
    cut: Arc<Notify>,
}

impl Relay {
    async fn start(upstream: SocketAddr, piece_bytes: usize) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(Notify::new());
        let cut_all = cut.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, upstream, piece_bytes, cut_all.clone()));
            }
        });
        Relay { addr, cut }
    }

    /// Closes every connection open now; new ones go through as before.
    fn cut(&self) {
        self.cut.notify_waiters();
    }
}

/// Relays one connection until either side closes it or the relay cuts it; then both close.
async fn relay(client: TcpStream, upstream: SocketAddr, piece_bytes: usize, cut: Arc<Notify>) {
    let server = TcpStream::connect(upstream).await.unwrap();
    client.set_nodelay(true).unwrap();
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let responses = async {
        let mut piece = vec![0; piece_bytes];
        loop {
            let n = server_read.read(&mut piece).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            client_write.write_all(&piece[..n]).await?;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::select! {
        _ = tokio::io::copy(&mut client_read, &mut server_write) => {}
        _ = responses => {}
        _ = cut.notified() => {}
    }
}

/// The hard cases, through a relay that splits the stream at odd byte counts: a rate Chromium
/// refuses (below 3 kHz: the page falls back to the default rate and the worklet resamples), a
/// burst on connecting that is more than the buffer holds (the player drops the oldest audio
/// and says it is behind), and a cut connection (it reconnects by itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_player_copes_with_odd_rates_split_chunks_bursts_and_cuts() {
    const BURST_FRAMES: u64 = 12;
    let started = Instant::now();
    let server = common::start_line(&format!(
        "--tone 100 --rate 2000 --channels 2 --frame-size 256 --burst {BURST_FRAMES}"
    ))
    .await;
    let relay = Relay::start(server.addr, 1001).await;
    let driver = Chromedriver::start("browser-hard-cases").await;
    let browser = driver.session().await;
    browser.goto(&format!("http://{}/", relay.addr)).await;
    eventually(
        "the burst is there and the page shows the stream",
        Duration::from_secs(5),
        || async {
            let status = common::get_json(server.url("/status")).await;
            let rate = browser.text("rate").await;
            let ok = status["frames_produced"].as_u64() >= Some(BURST_FRAMES) && rate == "2000";
            ready(
                ok,
                format!("{} frames, rate {rate}", status["frames_produced"]),
            )
        },
    )
    .await;

    browser.click("play").await;
    // 1.5 s of burst against a limit of 0.76 s (a frame and 0.15 s, then a frame and 0.35 s).
    let behind = eventually(
        "the player drops the burst's oldest audio and says so",
        Duration::from_secs(5),
        || async {
            let p = browser.eval("return window.pcmcast").await;
            ready(
                p["behind"] == true && p["droppedMs"].as_f64() > Some(0.0),
                p,
            )
        },
    )
    .await;
    println!("behind: {behind}");
    assert!(browser.text("notice").await.starts_with("behind"));

    let audio = wait_for_audio(&browser, 2_000, 2, 1).await;
    println!("audio after {:?}: {audio}", started.elapsed());
    let context_rate = audio["audio"]["sampleRate"].as_u64().unwrap();
    assert!(context_rate >= 3_000, "context at {context_rate} Hz");
    assert!(browser.text("audio").await.ends_with("resampled"));
    check_tone_level(&browser).await;

    let before = browser.eval("return window.pcmcast.samplesReceived").await;
    relay.cut();
    eventually(
        "the player reconnects and plays on",
        Duration::from_secs(5),
        || async {
            let p = browser.eval("return window.pcmcast").await;
            let ok = p["reconnects"].as_u64() >= Some(1)
                && p["state"] == "playing"
                && p["samplesReceived"].as_u64() > Some(before.as_u64().unwrap() + 2_000);
            ready(ok, p)
        },
    )
    .await;
    check_tone_level(&browser).await;

    browser.close().await;
    drop(driver);
    server.stop().await;
    println!("took {:?}", started.elapsed());
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_with_their_types() {
    let server = common::start(&["--tone", "440", "--token", TOKEN]).await;
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/app.js", "text/javascript"),
        ("/worklet.js", "text/javascript"),
        ("/style.css", "text/css; charset=utf-8"),
    ] {
        // No token: the page must load for the user to pass its token on.
        let response = reqwest::get(server.url(path)).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(common::header(&response, "content-type"), content_type);
        assert_eq!(common::header(&response, "cache-control"), "no-cache");
        let csp = common::header(&response, "content-security-policy");
        assert!(csp.starts_with("default-src 'none'"), "{csp}");
        let body = response.text().await.unwrap();
        assert!(!body.contains("://"), "{path} names another origin");
    }
    server.stop().await;
}

/// `<audio src=/stream.opus>` and `<audio src=/stream.flac>` play in Chromium: each element,
/// joining its stream mid-stream (another listener keeps the encoder running), advances its
/// `currentTime` by a second and more with no media error. They start from a click on a button
/// the test adds (autoplay wants a user gesture) to `/healthz`, a page with no
/// Content-Security-Policy to forbid media.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_elements_play_the_compressed_streams() {
    let started = Instant::now();
    let server = common::start(&["--tone", "440", "--rate", "44100"]).await;
    let api = Api::new(server.addr);
    let mut keep_running = Vec::new();
    for path in ["/stream.opus", "/stream.flac"] {
        keep_running.push(api.keep_listening(path).await);
    }
    let driver = Chromedriver::start("browser-audio-elements").await;
    let browser = driver.session().await;
    browser.goto(&server.url("/healthz")).await;
    browser
        .eval(
            "window.players = {};
             const button = document.createElement('button');
             button.id = 'start';
             button.textContent = 'Play';
             button.onclick = () => {
                 for (const name of ['opus', 'flac']) {
                     const audio = new Audio('/stream.' + name);
                     audio.play().catch(error => { audio.dataset.refused = String(error); });
                     window.players[name] = audio;
                 }
             };
             document.body.append(button);",
        )
        .await;
    browser.click("start").await;
    let state = |name: &str| {
        format!(
            "const a = window.players.{name};
             return {{time: a.currentTime, paused: a.paused, ready: a.readyState,
                      error: a.error && a.error.message, refused: a.dataset.refused || null}};"
        )
    };
    for name in ["opus", "flac"] {
        let played = eventually(
            &format!("<audio src=/stream.{name}> plays"),
            Duration::from_secs(10),
            || async {
                let s = browser.eval(&state(name)).await;
                assert!(
                    s["error"].is_null() && s["refused"].is_null(),
                    "{name}: {s}"
                );
                ready(s["time"].as_f64() > Some(1.0) && s["paused"] == false, s)
            },
        )
        .await;
        println!(
            "/stream.{name} in <audio> after {:?}: {played}",
            started.elapsed()
        );
    }
    let status = api.status().await;
    for endpoint in ["opus", "flac"] {
        let listeners = &status["endpoints"][endpoint]["listeners"];
        assert_eq!(listeners["current"], 2, "{endpoint}: {status}");
    }

    browser.close().await;
    drop(driver);
    for task in keep_running {
        task.abort();
    }
    server.stop().await;
}
