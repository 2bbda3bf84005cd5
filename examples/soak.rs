//! Soak test of a running pcmcast: holds `--listeners` listeners on every stream endpoint and
//! churns more (the cycles of `tests/churn.rs`) for `--seconds`, sampling the process once a
//! second: resident memory, open file descriptors, current listeners and the frames produced
//! over the last second. Ends with one JSON summary line and exits non-zero unless memory and
//! descriptors stayed flat after the warm-up, every second's frame rate was the source's, and
//! every listener and churn cycle was served. `scripts/soak` builds and starts pcmcast for it.
//!
//!   soak --addr 127.0.0.1:8000 --pid PID [--seconds 600] [--listeners 300]

#[path = "../tests/churn/cycles.rs"]
mod cycles;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The endpoints the held listeners use, in turn.
const LISTENER_PATHS: [&str; 4] = ["/stream.pcm", "/stream.wav", "/stream.ndjson", "/events"];
/// Churn cycles in flight. Each holds a descriptor in the server, so this stays well inside
/// [`FD_TOLERANCE`].
const CHURN_IN_FLIGHT: usize = 2;
/// Cycles per churn batch; the churn stops at the end of a batch once the time is up.
const CHURN_BATCH: usize = 100;
/// Longest warm-up: memory and descriptors are judged against the first sample after it.
const WARM_UP_MAX_S: u64 = 30;
/// Limits of the flatness checks.
const RSS_GROWTH_PCT: f64 = 10.0;
const FD_TOLERANCE: i64 = 5;
const FPS_TOLERANCE_FRAMES: f64 = 2.0;
/// Bound on one `/status` request and on connecting all the listeners.
const STATUS_LIMIT: Duration = Duration::from_secs(5);
const CONNECT_LIMIT: Duration = Duration::from_secs(30);

#[derive(Parser)]
struct Args {
    /// The address pcmcast listens on.
    #[arg(long)]
    addr: SocketAddr,
    /// pcmcast's process id, to read its memory and descriptors from /proc.
    #[arg(long)]
    pid: u32,
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    #[arg(long, default_value_t = 300)]
    listeners: usize,
}

/// One second's reading of the process.
struct Sample {
    elapsed_s: u64,
    rss_kib: u64,
    fds: i64,
    listeners: u64,
    fps: f64,
}

#[tokio::main]
async fn main() -> ExitCode {
    match soak(Args::parse()).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("soak: error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the soak and prints its samples and summary; whether every check passed.
async fn soak(args: Args) -> anyhow::Result<bool> {
    let monitor = Monitor::new(&args)?;
    let status = monitor.status().await?;
    let rate_hz = status["source"]["rate"].as_f64().context("source rate")?;
    let frame_size = status["source"]["frame_size"]
        .as_f64()
        .context("source frame size")?;
    let expected_fps = rate_hz / frame_size;
    let warm_up_s = (args.seconds / 5).clamp(1, WARM_UP_MAX_S);

    let stop = CancellationToken::new();
    let mut listeners = hold_listeners(args.addr, args.listeners, &stop).await?;
    let churn = tokio::spawn(churn_until(args.addr, stop.clone()));

    let samples = monitor.sample(args.seconds).await?;
    let end = monitor.status().await.context("GET /status")?;
    stop.cancel();
    let churned = churn.await.context("the churn task")?;
    let mut lost = Vec::new();
    while let Some(held) = listeners.join_next().await {
        if let Err(reason) = held.context("a listener task")? {
            lost.push(reason);
        }
    }

    let checks = Checks {
        warm_up_s,
        expected_fps,
        listeners: args.listeners,
    };
    let (mut summary, pass) = checks.summarise(&samples, &lost, &churned);
    // For the reader: skips and drops explain a memory step (listeners that fell behind).
    summary["server"] = json!({
        "frames_skipped": end["frames_skipped"],
        "samples_dropped": end["samples_dropped"],
        "listeners_total": end["listeners"]["total"],
    });
    println!("{summary}");
    Ok(pass)
}

/// Reads pcmcast's `/status` and its process's /proc entries.
struct Monitor {
    client: reqwest::Client,
    status_url: String,
    pid: u32,
}

impl Monitor {
    fn new(args: &Args) -> anyhow::Result<Monitor> {
        Ok(Monitor {
            client: reqwest::Client::builder().timeout(STATUS_LIMIT).build()?,
            status_url: format!("http://{}/status", args.addr),
            pid: args.pid,
        })
    }

    async fn status(&self) -> anyhow::Result<Value> {
        let response = self.client.get(&self.status_url).send().await?;
        let body = response.error_for_status()?.bytes().await?;
        Ok(serde_json::from_slice(&body)?)
    }

    /// Samples once a second for `seconds`, printing each sample. Frame rates are measured
    /// against the server's own uptime, so the latency of `/status` does not count.
    async fn sample(&self, seconds: u64) -> anyhow::Result<Vec<Sample>> {
        println!("elapsed_s rss_kib fds listeners fps");
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let started = Instant::now();
        let mut samples = Vec::new();
        let mut previous: Option<(u64, f64)> = None;
        while samples.len() < seconds as usize {
            ticks.tick().await;
            let status = self.status().await.context("GET /status")?;
            let frames = status["frames_produced"].as_u64().context("frames")?;
            let uptime_s = status["uptime_s"].as_f64().context("uptime")?;
            let listeners = status["listeners"]["current"]
                .as_u64()
                .context("listeners")?;
            let (rss_kib, fds) = self.usage()?;
            if let Some((previous_frames, previous_uptime_s)) = previous {
                let sample = Sample {
                    elapsed_s: started.elapsed().as_secs_f64().round() as u64,
                    rss_kib,
                    fds,
                    listeners,
                    fps: (frames - previous_frames) as f64 / (uptime_s - previous_uptime_s),
                };
                println!(
                    "{:>9} {:>7} {:>3} {:>9} {:>5.1}",
                    sample.elapsed_s, sample.rss_kib, sample.fds, sample.listeners, sample.fps
                );
                samples.push(sample);
            }
            previous = Some((frames, uptime_s));
        }
        Ok(samples)
    }

    /// Resident memory (KiB) and open descriptors of the process.
    fn usage(&self) -> anyhow::Result<(u64, i64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .with_context(|| format!("pcmcast (pid {}) is gone", self.pid))?;
        let rss_kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.split_whitespace().next()?.parse().ok())
            .context("VmRSS in /proc/PID/status")?;
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid))?.count();
        Ok((rss_kib, fds as i64))
    }
}

/// Opens `count` listeners, on the endpoints in turn, and reads each until `stop`. A task
/// returns why its listener ended early, if it did.
async fn hold_listeners(
    addr: SocketAddr,
    count: usize,
    stop: &CancellationToken,
) -> anyhow::Result<JoinSet<Result<(), String>>> {
    let mut opening = JoinSet::new();
    for index in 0..count {
        let path = LISTENER_PATHS[index % LISTENER_PATHS.len()];
        opening.spawn(async move { (path, cycles::open_stream(addr, path).await) });
    }
    let mut held = JoinSet::new();
    let opened = tokio::time::timeout(CONNECT_LIMIT, async {
        while let Some(joined) = opening.join_next().await {
            let (path, stream) = joined?;
            let stream = stream.with_context(|| format!("opening a listener on {path}"))?;
            held.spawn(listen(stream, path, stop.clone()));
        }
        anyhow::Ok(())
    });
    match opened.await {
        Ok(result) => result.map(|()| held),
        Err(_) => bail!("{count} listeners not connected within {CONNECT_LIMIT:?}"),
    }
}

/// Reads `stream` until `stop`; why it ended early otherwise.
async fn listen(mut stream: TcpStream, path: &str, stop: CancellationToken) -> Result<(), String> {
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let read = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            read = stream.read(&mut buffer) => read,
        };
        match read {
            Ok(0) => return Err(format!("{path}: the server closed the stream")),
            Ok(_) => {}
            Err(error) => return Err(format!("{path}: {error}")),
        }
    }
}

/// Runs churn cycles in batches until `stop`.
async fn churn_until(addr: SocketAddr, stop: CancellationToken) -> cycles::Tally {
    let mut tally = cycles::Tally::default();
    let mut next = 0;
    while !stop.is_cancelled() {
        tally.add(cycles::churn(addr, next..next + CHURN_BATCH, CHURN_IN_FLIGHT).await);
        next += CHURN_BATCH;
    }
    tally
}

/// The flatness checks and what they are measured against.
struct Checks {
    warm_up_s: u64,
    expected_fps: f64,
    listeners: usize,
}

impl Checks {
    /// The JSON summary of a run and whether it passed.
    fn summarise(
        &self,
        samples: &[Sample],
        lost: &[String],
        churn: &cycles::Tally,
    ) -> (Value, bool) {
        let settled: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.elapsed_s > self.warm_up_s)
            .collect();
        let (Some(first), Some(last)) = (settled.first(), settled.last()) else {
            let summary = json!({ "pass": false, "error": "no samples after the warm-up" });
            return (summary, false);
        };
        let rss_max = settled.iter().map(|s| s.rss_kib).max().unwrap_or(0);
        let rss_growth_pct = (rss_max as f64 / first.rss_kib as f64 - 1.0) * 100.0;
        let fds_min = settled.iter().map(|s| s.fds).min().unwrap_or(0);
        let fds_max = settled.iter().map(|s| s.fds).max().unwrap_or(0);
        let mut fps: Vec<f64> = samples.iter().map(|s| s.fps).collect();
        fps.sort_by(f64::total_cmp);
        let listeners_min = samples.iter().map(|s| s.listeners).min().unwrap_or(0);

        let rss_ok = rss_growth_pct <= RSS_GROWTH_PCT;
        let fds_ok = fds_max - first.fds <= FD_TOLERANCE && first.fds - fds_min <= FD_TOLERANCE;
        let fps_ok = fps
            .iter()
            .all(|f| (f - self.expected_fps).abs() <= FPS_TOLERANCE_FRAMES);
        let listeners_ok = lost.is_empty() && listeners_min >= self.listeners as u64;
        let churn_ok = churn.errors == 0;
        let pass = rss_ok && fds_ok && fps_ok && listeners_ok && churn_ok;
        let summary = json!({
            "seconds": samples.len(),
            "warm_up_s": self.warm_up_s,
            "rss_kib": {
                "first": first.rss_kib, "last": last.rss_kib, "max": rss_max,
                "max_growth_pct": round2(rss_growth_pct), "limit_pct": RSS_GROWTH_PCT,
                "ok": rss_ok,
            },
            "fds": {
                "first": first.fds, "last": last.fds, "min": fds_min, "max": fds_max,
                "tolerance": FD_TOLERANCE, "ok": fds_ok,
            },
            "fps": {
                "expected": self.expected_fps,
                "min": round2(fps[0]),
                "median": round2(fps[fps.len() / 2]),
                "max": round2(fps[fps.len() - 1]),
                "tolerance_frames": FPS_TOLERANCE_FRAMES, "ok": fps_ok,
            },
            "listeners": {
                "held": self.listeners, "lost": lost.len(), "first_lost": lost.first(),
                "server_current_min": listeners_min,
                "server_current_max": samples.iter().map(|s| s.listeners).max(),
                "ok": listeners_ok,
            },
            "churn": {
                "cycles": churn.cycles(), "listened": churn.listened,
                "abandoned": churn.abandoned_partial + churn.abandoned_complete,
                "errors": churn.errors, "first_error": churn.first_error, "ok": churn_ok,
            },
            "pass": pass,
        });
        (summary, pass)
    }
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}
