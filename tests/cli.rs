//! The real binary from the command line: bad input fails fast with one clear line (bad WAV
//! files are in tests/bad_wav.rs), every option reads its `PCMCAST_*` variable, `--help`
//! documents the options and the client recipes, a file played once ends the process with
//! status 0, and SIGTERM ends every stream cleanly.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use clap::CommandFactory;
use pcmcast::config::Cli;
use serde_json::Value;

/// The hint clap prints under a usage error; it repeats no part of the error.
const CLAP_HINT: &str = "For more information, try '--help'.";

/// Whether `line` is a `tracing` log line ("2025-01-01T00:00:00.000000Z  INFO target: …").
fn is_log_line(line: &str) -> bool {
    let mut words = line.split_whitespace();
    let timestamp = words.next().unwrap_or("");
    let level = words.next().unwrap_or("");
    timestamp.starts_with(|c: char| c.is_ascii_digit())
        && timestamp.contains('T')
        && timestamp.ends_with('Z')
        && ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level)
}

/// Runs the binary with `args` and checks that it exits non-zero with one error line, after any
/// log lines, that contains every one of `needles`. Returns that line, or what is wrong.
fn check_refused(args: &[&str], needles: &[&str]) -> Result<String, String> {
    let (code, stderr) = common::run_to_exit(args);
    let fail = |why: &str| Err(format!("{args:?}: {why}; exit {code:?}, stderr:\n{stderr}"));
    if code == Some(0) || code.is_none() {
        return fail("must exit with a non-zero status");
    }
    if stderr.contains("panicked") {
        return fail("panicked");
    }
    let lines: Vec<&str> = stderr.lines().collect();
    let message: Vec<usize> = (0..lines.len())
        .filter(|&i| !is_log_line(lines[i]) && !lines[i].trim().is_empty())
        .filter(|&i| lines[i] != CLAP_HINT)
        .collect();
    let [error_line] = message[..] else {
        return fail("must print exactly one error line");
    };
    if lines[error_line..].iter().any(|line| is_log_line(line)) {
        return fail("the error line must come after every log line");
    }
    let missing: Vec<&&str> = needles
        .iter()
        .filter(|n| !lines[error_line].contains(**n))
        .collect();
    if !missing.is_empty() {
        return fail(&format!("the error line must name {missing:?}"));
    }
    Ok(lines[error_line].to_owned())
}

/// Runs every case at once and fails with all that went wrong.
fn assert_all_refused(cases: &[(Vec<&str>, Vec<&str>)]) {
    common::check_all(cases, |(args, needles)| {
        check_refused(args, needles).map(|line| format!("refused: {line}"))
    });
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn bad_option_values_are_refused_with_one_line_that_names_the_option() {
    let dir = common::scratch_dir("bad_option_values");
    let wav = dir.join("valid.wav");
    common::write_int_wav(&wav, 8_000, 1, 16, &common::noise(800, 16, 1));
    let wav = path_str(&wav);
    let any_port = ["--bind", "127.0.0.1:0"];
    let with_port = |args: &[&'static str]| [args, &any_port].concat();
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            with_port(&["--frame-size", "0"]),
            vec!["--frame-size", "'0'"],
        ),
        (
            with_port(&["--frame-size", "abc"]),
            vec!["--frame-size", "'abc'"],
        ),
        (
            with_port(&["--tone", "30000"]),
            vec!["--tone", "30000", "24000 Hz"],
        ),
        (
            with_port(&["--burst", "200", "--backlog", "100"]),
            vec!["--burst", "--backlog", "200", "100"],
        ),
        (
            [&["--wav", wav, "--rate", "8000"][..], &any_port].concat(),
            vec!["--rate"],
        ),
        (
            vec!["--tone", "440", "--bind", "nonsense"],
            vec!["--bind", "'nonsense'"],
        ),
    ];
    assert_all_refused(&cases);
}

#[test]
fn a_busy_port_is_refused_with_one_line_that_names_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    assert_all_refused(&[(
        vec!["--tone", "440", "--bind", &address],
        vec!["cannot listen", &address],
    )]);
    drop(taken);
}

/// Starts the binary configured by `env` alone (no arguments, not even `--bind`) and waits for
/// its "listening on" line.
fn spawn_configured_by(env: &[(&str, &str)]) -> common::Process {
    let mut command = Command::new(common::binary());
    command.envs(env.iter().copied());
    common::spawn_command(command)
}

async fn get_status(process: &common::Process) -> Value {
    common::get_json(process.url("/status")).await
}

/// Polls `/status` until `done` holds (10 s at most) and returns that status.
async fn status_when(process: &common::Process, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = get_status(process).await;
        if done(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "status never got there: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn every_option_has_its_pcmcast_variable() {
    let mut command = Cli::command();
    command.build();
    let mut checked = 0;
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if ["help", "version"].contains(&long) {
            continue;
        }
        let expected = format!("PCMCAST_{}", long.to_uppercase().replace('-', "_"));
        let env = arg.get_env().map(|env| env.to_string_lossy().into_owned());
        assert_eq!(env, Some(expected), "--{long}");
        checked += 1;
    }
    assert!(
        checked >= 9,
        "the contract's options are all there: {checked}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tone_options_come_from_the_environment() {
    let process = tokio::task::block_in_place(|| {
        spawn_configured_by(&[
            ("PCMCAST_TONE", "1000"),
            ("PCMCAST_RATE", "8000"),
            ("PCMCAST_CHANNELS", "3"),
            ("PCMCAST_FRAME_SIZE", "800"),
            ("PCMCAST_BACKLOG", "7"),
            ("PCMCAST_BURST", "3"),
            ("PCMCAST_BIND", "127.0.0.1:0"),
        ])
    });
    assert!(process.addr.ip().is_loopback() && process.addr.port() != 0);
    let status = status_when(&process, |s| s["frames_produced"].as_u64() >= Some(3)).await;
    let source = &status["source"];
    assert_eq!(source["kind"], "tone", "{status}");
    assert!(
        source["name"].as_str().unwrap().contains("1000"),
        "{status}"
    );
    assert_eq!(
        (&source["rate"], &source["channels"], &source["frame_size"]),
        (&Value::from(8000), &Value::from(3), &Value::from(800)),
        "{status}"
    );
    assert_eq!(status["backlog_frames"], 7, "{status}");

    // PCMCAST_BURST: a new listener first gets the 3 frames published before it came. A frame
    // comes every 100 ms, so when none was published around the request (checked on both
    // sides), its first frame is exactly the third newest; otherwise try again.
    for _ in 0..10 {
        let before = get_status(&process).await["frames_produced"]
            .as_u64()
            .unwrap();
        let url = process.url("/stream.ndjson?frames=1");
        let line = reqwest::get(url).await.unwrap().text().await.unwrap();
        let after = get_status(&process).await["frames_produced"]
            .as_u64()
            .unwrap();
        if before != after {
            continue;
        }
        let frame: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(frame["seq"].as_u64(), Some(before - 3), "{line}");
        assert_eq!(frame["channels"], 3);
        return;
    }
    panic!("frames kept coming during every request: cannot tell the burst from live frames");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wav_options_come_from_the_environment() {
    let dir = common::scratch_dir("wav_options_come_from_the_environment");
    let wav = dir.join("short.wav");
    let file_frames = 1_600;
    common::write_int_wav(&wav, 8_000, 1, 16, &common::noise(file_frames, 16, 1));
    let process = tokio::task::block_in_place(|| {
        spawn_configured_by(&[
            ("PCMCAST_WAV", path_str(&wav)),
            ("PCMCAST_LOOP", "true"),
            ("PCMCAST_FRAME_SIZE", "256"),
            ("PCMCAST_BIND", "127.0.0.1:0"),
        ])
    });
    // Looping: frames keep coming well past three passes of the 0.2 s file.
    let past_three_passes =
        |s: &Value| s["frames_produced"].as_u64().unwrap() * 256 > 3 * file_frames as u64;
    let status = status_when(&process, past_three_passes).await;
    let source = &status["source"];
    assert_eq!(source["kind"], "wav", "{status}");
    assert_eq!(source["name"], path_str(&wav), "{status}");
    assert_eq!(source["state"], "running", "{status}");
    assert_eq!(
        (&source["rate"], &source["channels"], &source["frame_size"]),
        (&Value::from(8000), &Value::from(1), &Value::from(256)),
        "{status}"
    );
}

#[test]
fn help_names_every_option_and_the_client_recipes() {
    let output = common::output_within(
        Command::new(common::binary()).arg("--help"),
        Duration::from_secs(10),
    );
    assert!(output.status.success(), "{output:?}");
    let help = String::from_utf8(output.stdout).unwrap();
    let mut command = Cli::command();
    command.build();
    let mut expected = Vec::new();
    for arg in command.get_arguments() {
        expected.extend(arg.get_long().map(|long| format!("--{long}")));
        expected.extend(arg.get_env().map(|env| env.to_string_lossy().into_owned()));
    }
    // The contract's options and its client recipes (DESIGN.md).
    for option in [
        "--wav",
        "--loop",
        "--tone",
        "--rate",
        "--channels",
        "--frame-size",
        "--bind",
        "--backlog",
        "--burst",
        "--help",
    ] {
        assert!(
            expected.iter().any(|e| e == option),
            "{option} is an option"
        );
    }
    expected.extend(
        [
            "ffplay -nodisp http://",
            "/stream.wav",
            "curl -sN http://",
            "/stream.pcm | ffplay -f f32le",
            "curl -sN 'http://",
            "/stream.ndjson?frames=5'",
            "ffmpeg -i http://",
        ]
        .map(String::from),
    );
    let missing: Vec<&String> = expected.iter().filter(|e| !help.contains(*e)).collect();
    assert!(missing.is_empty(), "--help lacks {missing:?}:\n{help}");
}

#[test]
fn a_file_played_once_ends_the_stream_and_the_process_cleanly() {
    let (rate_hz, channels, frame_size) = (44_100, 2, 256);
    let (wav, expected) = common::noise_wav(
        "a_file_played_once",
        rate_hz,
        channels,
        rate_hz as usize * 8 / 10,
        7,
    );

    let mut process = common::spawn(&["--wav", path_str(&wav), "--frame-size", "256"]);
    let curl = common::output_within(
        Command::new("curl").args(["-sN", &process.url("/stream.pcm")]),
        Duration::from_secs(10),
    );
    assert!(
        curl.status.success(),
        "curl ends with status 0 (a clean final chunk): {curl:?}"
    );
    let received = common::f32le(&curl.stdout);
    assert_eq!(curl.stdout.len() % 4, 0);
    let offset = common::source_offset(&received, &expected, frame_size * channels, false);
    assert_eq!(
        offset + received.len(),
        expected.len(),
        "the stream carries the file to its last sample"
    );
    println!(
        "curl received samples {offset}..{} of the file's {}",
        expected.len(),
        expected.len()
    );

    let started = Instant::now();
    let status = common::wait_for_exit(&mut process.child, Duration::from_secs(10))
        .expect("pcmcast exits by itself after the file");
    println!("pcmcast exited {:?} after curl finished", started.elapsed());
    assert_eq!(status.code(), Some(0));
    let log: Vec<String> = process.stderr.iter().collect();
    assert!(
        log.iter().any(|l| l.contains("the source has ended")),
        "{log:#?}"
    );
    assert!(
        !log.iter()
            .any(|l| l.contains(" WARN ") || l.contains(" ERROR ")),
        "a clean end warns about nothing: {log:#?}"
    );
}

/// Reads a whole response body, announcing on `attached` when its first bytes arrive.
async fn read_to_end(
    url: String,
    attached: tokio::sync::mpsc::Sender<()>,
) -> Result<Vec<u8>, reqwest::Error> {
    let mut response = reqwest::get(url).await?.error_for_status()?;
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.is_empty() {
            let _ = attached.send(()).await;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_every_stream_cleanly_and_exits_at_once() {
    let channels = 2;
    let mut process = tokio::task::block_in_place(|| {
        common::spawn(&["--tone", "440", "--channels", "2", "--frame-size", "256"])
    });
    let (attached, mut listening) = tokio::sync::mpsc::channel(3);
    let paths = ["/stream.pcm", "/stream.wav", "/stream.ndjson"];
    let listeners: Vec<_> = paths
        .iter()
        .map(|path| tokio::spawn(read_to_end(process.url(path), attached.clone())))
        .collect();
    for _ in paths {
        tokio::time::timeout(Duration::from_secs(10), listening.recv())
            .await
            .expect("every listener gets its first bytes within 10 s");
    }

    let signalled = Instant::now();
    process.terminate();
    let status = tokio::task::block_in_place(|| {
        common::wait_for_exit(&mut process.child, Duration::from_secs(5))
    })
    .expect("pcmcast exits after SIGTERM");
    let exit_after = signalled.elapsed();
    println!("pcmcast exited {exit_after:?} after SIGTERM, status {status}");
    assert_eq!(status.code(), Some(0));
    assert!(exit_after < Duration::from_secs(1), "{exit_after:?}");

    let mut bodies = Vec::new();
    for (path, listener) in paths.iter().zip(listeners) {
        let body = tokio::time::timeout(Duration::from_secs(5), listener)
            .await
            .unwrap_or_else(|_| panic!("{path} ends"))
            .unwrap()
            .unwrap_or_else(|e| panic!("{path} ends with a clean final chunk: {e:?}"));
        println!("{path}: {} bytes", body.len());
        bodies.push(body);
    }
    let [pcm, wav, ndjson] = &bodies[..] else {
        unreachable!("three listeners")
    };
    assert_eq!(pcm.len() % (4 * channels), 0, "whole f32 sample frames");
    assert!(wav.starts_with(b"RIFF") && &wav[8..12] == b"WAVE");
    assert_eq!(
        (wav.len() - 44) % (2 * channels),
        0,
        "whole s16 sample frames"
    );
    assert!(ndjson.ends_with(b"\n"), "whole NDJSON lines");
    for line in ndjson.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let frame: Value = serde_json::from_slice(line).expect("each line is a JSON frame");
        assert_eq!(frame["channels"], channels);
    }
}
