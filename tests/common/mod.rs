//! Shared test harness: real pcmcast servers on 127.0.0.1:0, in-process (through the library)
//! or as the real binary, plus WAV fixtures; [`icecast`] runs real Icecast servers and [`tools`]
//! the real client programs.

#![allow(dead_code)] // each test binary uses its own part of the harness

pub mod api;
pub mod icecast;
pub mod tools;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use clap::Parser;
use pcmcast::config::Cli;
use pcmcast::{Pcmcast, Settings};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Runs `check` on every case at once, a thread each (the cases are separate processes that
/// mostly wait), prints what each passing case returned and fails with every failure.
pub fn check_all<C: Sync>(cases: &[C], check: impl Fn(&C) -> Result<String, String> + Sync) {
    let check = &check;
    let results: Vec<Result<String, String>> = std::thread::scope(|scope| {
        let runs: Vec<_> = cases
            .iter()
            .map(|case| scope.spawn(move || check(case)))
            .collect();
        runs.into_iter().map(|run| run.join().unwrap()).collect()
    });
    let mut failures = Vec::new();
    for result in results {
        match result {
            Ok(line) => println!("{line}"),
            Err(failure) => failures.push(failure),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A runtime like the one `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]` gives,
/// for tests that drive a server from plain code (property tests).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A pcmcast running inside the test process, on an ephemeral loopback port.
pub struct Server {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<Result<(), pcmcast::Error>>,
}

/// Starts an in-process server with these command-line arguments (`--bind` is ignored: the
/// server always listens on 127.0.0.1:0).
pub async fn start(args: &[&str]) -> Server {
    let cli = Cli::try_parse_from(std::iter::once("pcmcast").chain(args.iter().copied()))
        .expect("valid test arguments");
    let args = cli.into_serve_args().expect("serve arguments");
    let settings = Settings::try_from(args).expect("valid test settings");
    let pcmcast = Pcmcast::open(settings).expect("source opens");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(pcmcast.run(listener, shutdown.clone()));
    Server {
        addr,
        shutdown,
        handle,
    }
}

/// Like [`start`], with the arguments written as one command line (`"--tone 440 --rate 48000"`),
/// split at white space: no argument may contain any.
pub async fn start_line(command_line: &str) -> Server {
    start(&command_line.split_whitespace().collect::<Vec<_>>()).await
}

impl Server {
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    /// Cancels the server and waits for `run` to return.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.handle)
            .await
            .expect("server stops within 5 s")
            .unwrap()
            .expect("server ran without error");
    }

    /// Waits up to `limit` for `run` to return by itself (`when`: after what), without error.
    pub async fn exits_by_itself(self, limit: Duration, when: &str) {
        tokio::time::timeout(limit, self.handle)
            .await
            .unwrap_or_else(|_| panic!("the server exits {when} within {limit:?}"))
            .expect("the server task completes")
            .expect("the server exits without error");
    }
}

/// The real `pcmcast` binary, started with `args` and `--bind 127.0.0.1:0`.
pub struct Process {
    pub child: Child,
    pub addr: SocketAddr,
    /// Lines of stderr before the "listening on" line.
    pub startup: Vec<String>,
    /// Lines of stderr after the "listening on" line.
    pub stderr: mpsc::Receiver<String>,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_pcmcast")
}

/// Spawns the binary on an ephemeral port and waits (up to 10 s) for its "listening on" line.
pub fn spawn(args: &[&str]) -> Process {
    let mut command = Command::new(binary());
    command.args(args).args(["--bind", "127.0.0.1:0"]);
    spawn_command(command)
}

/// Spawns `command` (the binary, configured as the caller likes) with stderr captured, and
/// waits (up to 10 s) for its "listening on" line.
pub fn spawn_command(mut command: Command) -> Process {
    let mut child = command
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pcmcast binary starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut startup = Vec::new();
    let addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("pcmcast prints its address within 10 s");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.trim_end_matches('/').parse().expect("an address");
        }
        startup.push(line);
    };
    Process {
        child,
        addr,
        startup,
        stderr: rx,
    }
}

impl Process {
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM to this process (only this one, by PID).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A program in a process group of its own, its output discarded. The whole group (the program
/// and the processes it starts, no others) is killed when this is dropped, so that a failed
/// test leaves none of them behind: killing the program alone would orphan its children.
pub struct ProcessGroup {
    child: Child,
}

impl ProcessGroup {
    /// Spawns `command` as the leader of a new process group.
    pub fn spawn(command: &mut Command) -> ProcessGroup {
        let child = command
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{command:?} starts: {e}"));
        ProcessGroup { child }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let group = -i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) with a negative PID signals that process group: the one made for
        // this program at spawn.
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// A port of 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Runs the binary to completion with `args` (a 10 s limit), returning (exit code, stderr).
pub fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(binary())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut text).unwrap();
        text
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("pcmcast {args:?} did not exit within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.code(), reader.join().unwrap())
}

/// A scratch directory under the target dir, unique per test name.
pub fn scratch_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes an integer WAV of `bits` bits whose samples are `samples` (interleaved).
pub fn write_int_wav(path: &Path, rate_hz: u32, channels: u16, bits: u16, samples: &[i32]) {
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate_hz,
        bits_per_sample: bits,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(path, spec).unwrap();
    for &s in samples {
        match bits {
            8 => writer.write_sample(s as i8).unwrap(),
            16 => writer.write_sample(s as i16).unwrap(),
            _ => writer.write_sample(s).unwrap(),
        }
    }
    writer.finalize().unwrap();
}

pub fn write_float_wav(path: &Path, rate_hz: u32, channels: u16, samples: &[f32]) {
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate_hz,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let mut writer = hound::WavWriter::create(path, spec).unwrap();
    for &s in samples {
        writer.write_sample(s).unwrap();
    }
    writer.finalize().unwrap();
}

/// A 16-bit WAV of `sample_frames` of [`noise`] in `test`'s scratch directory: its path, and
/// its samples as f32 (what the stream carries).
pub fn noise_wav(
    test: &str,
    rate_hz: u32,
    channels: usize,
    sample_frames: usize,
    seed: u64,
) -> (PathBuf, Vec<f32>) {
    let samples = noise(sample_frames * channels, 16, seed);
    let path = scratch_dir(test).join("noise.wav");
    write_int_wav(&path, rate_hz, channels as u16, 16, &samples);
    let file = samples.iter().map(|&s| s as f32 / 32_768.0).collect();
    (path, file)
}

/// Deterministic pseudo-random integer samples spanning the full range of `bits` bits, so that
/// any position in the file is recognisable from a few samples.
pub fn noise(len: usize, bits: u16, seed: u64) -> Vec<i32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let shift = 64 - u32::from(bits);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state as i64) >> shift) as i32
        })
        .collect()
}

/// Parses little-endian f32 bytes.
pub fn f32le(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// Where `received` starts inside `source`, searching positions that are multiples of
/// `align_samples` (a frame for a file played once; a sample frame for a looped one, whose
/// frames drift against the file). Panics unless `received` is a contiguous run of `source`
/// from there (wrapping around if `looped`).
pub fn source_offset(
    received: &[f32],
    source: &[f32],
    align_samples: usize,
    looped: bool,
) -> usize {
    assert!(!received.is_empty(), "received nothing");
    let offset = (0..source.len())
        .step_by(align_samples)
        .find(|&start| {
            (0..received.len().min(64))
                .all(|i| source[(start + i) % source.len()].to_bits() == received[i].to_bits())
        })
        .expect("the first received frame is a frame of the source");
    for (i, &sample) in received.iter().enumerate() {
        let index = offset + i;
        assert!(
            looped || index < source.len(),
            "received more than the file holds"
        );
        assert_eq!(
            sample.to_bits(),
            source[index % source.len()].to_bits(),
            "sample {i} after connecting (source index {index})"
        );
    }
    offset
}

/// Runs `command` to completion with stdin closed and stdout and stderr captured. Kills it (by
/// PID) and panics if it runs longer than `limit`.
pub fn output_within(command: &mut Command, limit: Duration) -> std::process::Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let collect = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut pipe, &mut bytes).unwrap();
            bytes
        })
    };
    let stdout = collect(Box::new(child.stdout.take().unwrap()));
    let stderr = collect(Box::new(child.stderr.take().unwrap()));
    let status = wait_for_exit(&mut child, limit)
        .unwrap_or_else(|| panic!("{command:?} did not finish within {limit:?}"));
    std::process::Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Waits up to `limit` for `child` to exit; on time-out kills it (by PID) and returns `None`.
pub fn wait_for_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A response header as text; panics if it is missing.
pub fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("header {name}"))
        .to_str()
        .unwrap()
}

/// GETs `url` and parses the body as JSON.
pub async fn get_json(url: String) -> serde_json::Value {
    let body = reqwest::get(url).await.unwrap().bytes().await.unwrap();
    serde_json::from_slice(&body).unwrap()
}
