//! WAV replay end to end: every sample format hound reads reaches a listener as exactly the
//! f32 the contract defines, a looped file repeats without a seam, and frames come out at the
//! pace of the sample clock.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

#[derive(Clone, Copy, Debug)]
enum Encoding {
    Int { bits: u16 },
    Float,
}

#[derive(Clone, Copy, Debug)]
struct Case {
    encoding: Encoding,
    channels: u16,
    rate_hz: u32,
}

/// Small frames, so that the files end in a short last frame at some rates and not at others.
const FRAME_SIZE: usize = 100;

/// Writes a quarter of a second of full-range noise in `case`'s format, with the extreme values
/// of the format at both ends, and returns the samples the stream must carry: `s / 2^(b-1)`
/// computed in f64 and rounded to f32 for integers, the very same bits for float.
fn write_fixture(case: Case, path: &Path, seed: u64) -> Vec<f32> {
    let len = case.rate_hz as usize / 4 * usize::from(case.channels);
    match case.encoding {
        Encoding::Int { bits } => {
            let full_scale = 1i64 << (bits - 1);
            let (min, max) = ((-full_scale) as i32, (full_scale - 1) as i32);
            let mut samples = common::noise(len, bits, seed);
            samples[..2].copy_from_slice(&[min, max]);
            samples[len - 2..].copy_from_slice(&[max, min]);
            common::write_int_wav(path, case.rate_hz, case.channels, bits, &samples);
            samples
                .iter()
                .map(|&s| (f64::from(s) / full_scale as f64) as f32)
                .collect()
        }
        Encoding::Float => {
            let mut samples: Vec<f32> = common::noise(len, 32, seed)
                .iter()
                .map(|&s| (f64::from(s) / 2f64.powi(31)) as f32)
                .collect();
            let special = [-1.0, 1.0, -0.0, f32::MIN_POSITIVE, 1e-40, -f32::EPSILON];
            samples[..special.len()].copy_from_slice(&special);
            samples[len - 2..].copy_from_slice(&[1.0, -1.0]);
            common::write_float_wav(path, case.rate_hz, case.channels, &samples);
            samples
        }
    }
}

/// Plays one fixture through an in-process server and returns the whole `/stream.pcm` body.
/// Checking it is left to the caller, so that the runtime's threads stay free for the servers.
async fn play_once(case: Case, path: PathBuf, frames_in_file: usize) -> Vec<f32> {
    // A burst as long as the file lets a listener that connects after the first frames still
    // get the file from its first sample (including the extreme values placed there).
    let frames_in_file = frames_in_file.to_string();
    let server = common::start(&[
        "--wav",
        path.to_str().unwrap(),
        "--frame-size",
        &FRAME_SIZE.to_string(),
        "--backlog",
        &frames_in_file,
        "--burst",
        &frames_in_file,
    ])
    .await;
    let response = reqwest::get(server.url("/stream.pcm")).await.unwrap();
    assert_eq!(response.status(), 200, "{case:?}");
    assert_eq!(
        common::header(&response, "x-pcm-format"),
        "f32le",
        "{case:?}"
    );
    assert_eq!(
        common::header(&response, "x-pcm-rate"),
        case.rate_hz.to_string(),
        "{case:?}"
    );
    assert_eq!(
        common::header(&response, "x-pcm-channels"),
        case.channels.to_string(),
        "{case:?}"
    );
    assert_eq!(
        common::header(&response, "x-pcm-frame-size"),
        FRAME_SIZE.to_string(),
        "{case:?}"
    );
    let body = response
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("{case:?}: the stream ends cleanly: {e}"));
    server
        .exits_by_itself(
            Duration::from_secs(10),
            &format!("after the file of {case:?}"),
        )
        .await;
    assert_eq!(body.len() % 4, 0, "{case:?}: whole f32 samples");
    common::f32le(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sample_format_streams_exactly() {
    let dir = common::scratch_dir("every_sample_format_streams_exactly");
    let encodings = [
        Encoding::Int { bits: 8 },
        Encoding::Int { bits: 16 },
        Encoding::Int { bits: 24 },
        Encoding::Int { bits: 32 },
        Encoding::Float,
    ];
    let mut fixtures = Vec::new();
    for encoding in encodings {
        for channels in [1, 2, 6, 8] {
            for rate_hz in [8_000, 44_100, 96_000] {
                let case = Case {
                    encoding,
                    channels,
                    rate_hz,
                };
                let seed = fixtures.len() as u64 + 1;
                let path = dir.join(format!("{seed}.wav"));
                let expected = write_fixture(case, &path, seed);
                fixtures.push((case, path, expected));
            }
        }
    }

    // All 60 at once would ask this 2-core machine for 12 million samples a second of real-time
    // replay in a debug build; a few at a time keeps every server on its clock.
    let at_once = Arc::new(Semaphore::new(6));
    let started = Instant::now();
    let mut plays = JoinSet::new();
    for (index, (case, path, expected)) in fixtures.iter().enumerate() {
        let frames_in_file = (expected.len() / usize::from(case.channels)).div_ceil(FRAME_SIZE);
        let play = play_once(*case, path.clone(), frames_in_file);
        let at_once = at_once.clone();
        plays.spawn(async move {
            let _permit = at_once.acquire().await.unwrap();
            (index, play.await)
        });
    }
    let mut received = vec![Vec::new(); fixtures.len()];
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(joined) = plays.join_next().await {
            match joined {
                Ok((index, samples)) => received[index] = samples,
                Err(error) => std::panic::resume_unwind(error.into_panic()),
            }
        }
    })
    .await
    .expect("every file plays within 30 s");
    println!(
        "{} files played, 6 at a time, in {:?}",
        fixtures.len(),
        started.elapsed()
    );

    for ((case, _, expected), received) in fixtures.iter().zip(&received) {
        let mismatch = received
            .iter()
            .zip(expected)
            .position(|(r, e)| r.to_bits() != e.to_bits());
        if let Some(i) = mismatch {
            panic!(
                "{case:?}: sample {i} is {} ({:#010x}), expected {} ({:#010x})",
                received[i],
                received[i].to_bits(),
                expected[i],
                expected[i].to_bits()
            );
        }
        assert_eq!(
            received.len(),
            expected.len(),
            "{case:?}: the whole file, from its first sample to its last"
        );
    }
}

/// Streams `wraps` passes of a 0.1 s looped file (a length that is not a whole number of frames,
/// so frames straddle the seam) and checks it is the file repeated with nothing lost or doubled.
async fn loops_seamlessly(case: Case, frame_size: usize, dir: PathBuf, seed: u64) {
    let path = dir.join(format!("{seed}.wav"));
    let Encoding::Int { bits } = case.encoding else {
        unreachable!("integer fixtures only")
    };
    let channels = usize::from(case.channels);
    let file_frames = case.rate_hz as usize / 10;
    assert_ne!(
        file_frames % frame_size,
        0,
        "{case:?}: the seam falls inside a frame"
    );
    let samples = common::noise(file_frames * channels, bits, seed);
    common::write_int_wav(&path, case.rate_hz, case.channels, bits, &samples);
    let full_scale = f64::from(1u32 << (bits - 1));
    let expected: Vec<f32> = samples
        .iter()
        .map(|&s| (f64::from(s) / full_scale) as f32)
        .collect();

    let wraps = 5;
    let frames = (wraps * file_frames).div_ceil(frame_size) + 1;
    let server = common::start(&[
        "--wav",
        path.to_str().unwrap(),
        "--loop",
        "--frame-size",
        &frame_size.to_string(),
    ])
    .await;
    let body = reqwest::get(server.url(&format!("/stream.pcm?frames={frames}")))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let received = common::f32le(&body);
    assert_eq!(received.len(), frames * frame_size * channels, "{case:?}");
    assert!(received.len() > wraps * expected.len(), "{case:?}");
    let offset = common::source_offset(&received, &expected, channels, true);
    println!(
        "{case:?}: {} samples from offset {offset} = {:.2} passes of the file, seamless",
        received.len(),
        received.len() as f64 / expected.len() as f64
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looped_file_repeats_seamlessly() {
    let dir = common::scratch_dir("a_looped_file_repeats_seamlessly");
    let stereo = Case {
        encoding: Encoding::Int { bits: 16 },
        channels: 2,
        rate_hz: 44_100,
    };
    let six = Case {
        encoding: Encoding::Int { bits: 24 },
        channels: 6,
        rate_hz: 8_000,
    };
    let both = async {
        tokio::join!(
            loops_seamlessly(stereo, 256, dir.clone(), 1),
            loops_seamlessly(six, 96, dir.clone(), 2),
        )
    };
    tokio::time::timeout(Duration::from_secs(15), both)
        .await
        .expect("the looped streams finish within 15 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_arrive_at_the_pace_of_the_sample_clock() {
    const RATE_HZ: u32 = 48_000;
    const FRAME: u64 = 1024;
    let server = common::start_line(&format!(
        "--tone 440 --rate {RATE_HZ} --channels 1 --frame-size {FRAME}"
    ))
    .await;
    let mut response = reqwest::get(server.url("/stream.ndjson")).await.unwrap();
    assert_eq!(response.status(), 200);

    // (pts, arrival) of every frame after a short warm-up, until four seconds are covered.
    let warm_up = Duration::from_millis(250);
    let span = Duration::from_secs(4);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut first_arrival = None;
    let mut arrivals: Vec<(u64, Instant)> = Vec::new();
    let mut pending = Vec::new();
    while arrivals.len() < 2 || arrivals[arrivals.len() - 1].1 - arrivals[0].1 < span {
        let chunk = tokio::time::timeout_at(deadline.into(), response.chunk())
            .await
            .expect("four seconds of frames within 15 s")
            .unwrap()
            .expect("the stream goes on");
        let now = Instant::now();
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let frame: serde_json::Value = serde_json::from_slice(&line).unwrap();
            let pts = frame["pts"].as_u64().expect("pts");
            if now - *first_arrival.get_or_insert(now) >= warm_up {
                arrivals.push((pts, now));
            }
        }
    }
    for pair in arrivals.windows(2) {
        assert_eq!(pair[1].0 - pair[0].0, FRAME, "consecutive frames");
    }
    let (first, last) = (arrivals[0], arrivals[arrivals.len() - 1]);
    let pts_span = (last.0 - first.0) as f64;
    let wall = (last.1 - first.1).as_secs_f64();
    let clock_span = wall * f64::from(RATE_HZ);
    let drift_frames = (pts_span - clock_span) / FRAME as f64;
    println!(
        "pacing: {} frames over {wall:.3} s: pts advanced {pts_span} samples, the clock \
         {clock_span:.0} (rate x elapsed); difference {drift_frames:+.3} frames",
        arrivals.len()
    );
    assert!(
        drift_frames.abs() < 2.0,
        "pts and wall clock differ by {drift_frames:.3} frames"
    );
    server.stop().await;
}
