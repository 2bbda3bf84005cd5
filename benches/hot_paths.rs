//! Criterion micro-benchmarks of the per-frame hot paths, at the stream shape pcmcast is sized
//! for (48 kHz stereo f32, 1024-sample frames, 46.875 frames/s): cutting frames, encoding them
//! (f32le, s16le, NDJSON) and handing one frame to 1,000 listeners through the hub.
//!
//! Every input is generated, so runs are deterministic. `scripts/bench-micro` runs these and
//! writes the medians into `bench/RESULTS.md`.

use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio_stream::Stream;

use pcmcast::encode::{self, FrameJson};
use pcmcast::frame::{Frame, StreamFormat};
use pcmcast::framer::Framer;
use pcmcast::hub::{HubLimits, Subscription, hub};
use pcmcast::stats::{Endpoint, Stats};

const FORMAT: StreamFormat = StreamFormat {
    rate_hz: 48_000,
    channels: 2,
};
const FRAME_SIZE_SAMPLES: usize = 1024;
/// What a capture callback typically delivers at once.
const CHUNK_SIZE_SAMPLES: usize = 256;
const LISTENERS: usize = 1_000;
/// The server's default `--backlog`.
const BACKLOG_FRAMES: usize = 100;

/// `len_per_channel` sample frames of a 440 Hz sine at -6 dBFS on the left and a 660 Hz one
/// on the right: realistic, non-repeating digits for the JSON encoder.
fn sine(len_per_channel: usize) -> Vec<f32> {
    let rate = f64::from(FORMAT.rate_hz);
    (0..len_per_channel)
        .flat_map(|i| {
            let t = i as f64 / rate;
            [440.0, 660.0].map(|hz| (0.5 * (std::f64::consts::TAU * hz * t).sin()) as f32)
        })
        .collect()
}

fn framing(c: &mut Criterion) {
    let one_second = sine(FORMAT.rate_hz as usize);
    let chunk_len = CHUNK_SIZE_SAMPLES * usize::from(FORMAT.channels);
    let chunk_period_s = CHUNK_SIZE_SAMPLES as f64 / f64::from(FORMAT.rate_hz);
    let frames_per_second = FORMAT.rate_hz as usize / FRAME_SIZE_SAMPLES;

    let mut group = c.benchmark_group("framing");
    group.throughput(Throughput::Elements(frames_per_second as u64));
    group.bench_function("push_1s_in_256_sample_chunks", |b| {
        b.iter(|| {
            let mut framer = Framer::new(FORMAT, FRAME_SIZE_SAMPLES);
            let mut frames = 0;
            for (i, chunk) in one_second.chunks(chunk_len).enumerate() {
                let end_time = 1_000.0 + (i + 1) as f64 * chunk_period_s;
                framer.push(black_box(chunk), end_time, |frame| {
                    frames += 1;
                    drop(black_box(frame));
                });
            }
            assert_eq!(frames, frames_per_second);
        });
    });
    group.finish();
}

fn pcm_encoding(c: &mut Criterion) {
    let samples = sine(FRAME_SIZE_SAMPLES);
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("f32le_bytes", |b| {
        b.iter(|| encode::f32le_bytes(black_box(&samples)));
    });
    group.bench_function("s16le_bytes", |b| {
        b.iter(|| encode::s16le_bytes(black_box(&samples)));
    });
    group.finish();
}

fn json_encoding(c: &mut Criterion) {
    let samples = sine(FRAME_SIZE_SAMPLES);
    let frame = FrameJson {
        seq: 123_456,
        pts: 123_456 * FRAME_SIZE_SAMPLES as u64,
        time: 1_764_489_600.123_456,
        rate: FORMAT.rate_hz,
        channels: FORMAT.channels,
        samples: &samples,
    };
    // Read by scripts/bench-micro.
    println!(
        "json_line bytes per frame: {}",
        encode::json_line(&frame).len()
    );
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("json_line", |b| {
        b.iter(|| encode::json_line(black_box(&frame)));
    });
    group.finish();
}

/// Polls a subscription the way its listener's task does when woken: until it is pending
/// again (which re-registers the waker). Returns the frames it got.
fn drain(subscription: &mut Subscription, cx: &mut Context<'_>) -> usize {
    let mut frames = 0;
    while let Poll::Ready(delivery) = Pin::new(&mut *subscription).poll_next(cx) {
        black_box(delivery.expect("the publisher is alive"));
        frames += 1;
    }
    frames
}

/// Times `iters` frames published to `LISTENERS` waiting subscriptions; the time of the
/// listeners' receives counts only if `time_receives`.
fn publish_to_listeners(iters: u64, time_receives: bool) -> Duration {
    let (publisher, hub) = hub(
        HubLimits {
            backlog_frames: BACKLOG_FRAMES,
            burst_frames: 0,
            max_listeners: None,
        },
        Arc::new(Stats::default()),
    );
    // A waker that does nothing: what is measured is the hub, not a runtime's scheduling.
    let mut cx = Context::from_waker(Waker::noop());
    let mut subscriptions: Vec<Subscription> = (0..LISTENERS)
        .map(|_| hub.subscribe(Endpoint::Pcm).expect("the hub is open"))
        .collect();
    for subscription in &mut subscriptions {
        assert_eq!(drain(subscription, &mut cx), 0, "nothing published yet");
    }
    let samples = sine(FRAME_SIZE_SAMPLES);
    let mut elapsed = Duration::ZERO;
    for seq in 0..iters {
        let frame = Frame::new(
            seq,
            seq * FRAME_SIZE_SAMPLES as u64,
            0.0,
            FORMAT,
            samples.clone().into(),
        );
        let start = Instant::now();
        publisher.publish(frame);
        if !time_receives {
            elapsed += start.elapsed();
        }
        for subscription in &mut subscriptions {
            assert_eq!(drain(subscription, &mut cx), 1);
        }
        if time_receives {
            elapsed += start.elapsed();
        }
    }
    elapsed
}

fn hub_fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("hub_1000_listeners");
    group.throughput(Throughput::Elements(LISTENERS as u64));
    group.bench_function("publish_and_receive", |b| {
        b.iter_custom(|iters| publish_to_listeners(iters, true));
    });
    group.finish();

    // Criterion sizes a run by the time it is told was measured, and here every timed
    // microsecond of publishing brings ~20 untimed ones of receiving: fixed, short times keep
    // this one from dominating the whole run (they override the command line's).
    let mut group = c.benchmark_group("hub_1000_listeners");
    group.warm_up_time(Duration::from_millis(300));
    group.measurement_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(1));
    group.bench_function("publish", |b| {
        b.iter_custom(|iters| publish_to_listeners(iters, false));
    });
    group.finish();
}

criterion_group!(benches, framing, pcm_encoding, json_encoding, hub_fan_out);
criterion_main!(benches);
