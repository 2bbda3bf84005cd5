//! What the compressed streams cost: for each encoder, the CPU time it takes per second of
//! audio and the bytes per second each of its listeners is sent (the encoded stream; every
//! listener gets the same pages). Encodes the bundled demo recording (speech over music, 48 kHz
//! stereo, 16-bit), the same resampled to 44.1 kHz (so Opus resamples it back), and white noise
//! at 24 bits (FLAC's worst case), frame by frame as the server does.
//!
//!   cargo run --release --example codec_cost [SECONDS]     (default 60 s of audio each)

use std::time::Duration;

use pcmcast::codec::{Codec, Page, new_encoder};
use pcmcast::frame::StreamFormat;

const FRAME_SIZE: usize = 1024;

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("SECONDS is a number"))
        .unwrap_or(60.0);
    let demo = demo_samples();
    let demo_44k = decimate_to_44_1k(&demo);
    let noise = noise_24_bit(48_000 * 2);
    let inputs = [
        ("demo 48 kHz", 48_000, &demo),
        ("demo 44.1 kHz", 44_100, &demo_44k),
        ("noise 48 kHz", 48_000, &noise),
    ];
    let codecs = [
        Codec::Flac,
        Codec::Opus { bitrate_kbps: 64 },
        Codec::Opus { bitrate_kbps: 96 },
        Codec::Opus { bitrate_kbps: 128 },
    ];
    println!(
        "{:<14} {:<12} {:>14} {:>14} {:>12}",
        "input", "codec", "cpu µs/s", "bytes/s", "kbit/s"
    );
    for (name, rate_hz, samples) in inputs {
        for codec in codecs {
            let (cpu, bytes, audio_s) = measure(codec, rate_hz, samples, seconds);
            let label = match codec {
                Codec::Flac => "flac".to_owned(),
                Codec::Opus { bitrate_kbps } => format!("opus {bitrate_kbps}k"),
            };
            println!(
                "{name:<14} {label:<12} {:>14.0} {:>14.0} {:>12.1}",
                cpu.as_secs_f64() * 1e6 / audio_s,
                bytes as f64 / audio_s,
                bytes as f64 * 8.0 / audio_s / 1000.0
            );
        }
    }
}

/// Encodes `seconds` of `samples` (looped, stereo) as the server would: CPU time of this
/// thread, bytes of header and pages, seconds of audio.
fn measure(codec: Codec, rate_hz: u32, samples: &[f32], seconds: f64) -> (Duration, usize, f64) {
    let format = StreamFormat {
        rate_hz,
        channels: 2,
    };
    let frames = (seconds * f64::from(rate_hz) / FRAME_SIZE as f64) as usize;
    let frame_len = FRAME_SIZE * 2;
    let mut encoder = new_encoder(codec, format, FRAME_SIZE).expect("the encoder starts");
    let mut bytes = encoder.header().len();
    let mut pages: Vec<Page> = Vec::new();
    let start = thread_cpu();
    for i in 0..frames {
        let offset = (i * frame_len) % (samples.len() - frame_len + 1);
        encoder
            .encode(&samples[offset..offset + frame_len], &mut pages)
            .expect("encodes");
        bytes += pages.drain(..).map(|p| p.bytes.len()).sum::<usize>();
    }
    let cpu = thread_cpu() - start;
    let audio_s = (frames * FRAME_SIZE) as f64 / f64::from(rate_hz);
    (cpu, bytes, audio_s)
}

fn demo_samples() -> Vec<f32> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo.wav");
    let mut reader = hound::WavReader::open(path).expect("assets/demo.wav");
    reader
        .samples::<i16>()
        .map(|s| f32::from(s.expect("a sample")) / 32_768.0)
        .collect()
}

/// The demo at 44.1 kHz, by linear interpolation: good enough to make Opus resample.
fn decimate_to_44_1k(samples: &[f32]) -> Vec<f32> {
    let frames_in = samples.len() / 2;
    let frames_out = frames_in * 441 / 480;
    (0..frames_out)
        .flat_map(|i| {
            let position = i as f64 * 480.0 / 441.0;
            let (index, fraction) = (position as usize, position.fract() as f32);
            let next = (index + 1).min(frames_in - 1);
            (0..2).map(move |c| {
                samples[2 * index + c] * (1.0 - fraction) + samples[2 * next + c] * fraction
            })
        })
        .collect()
}

fn noise_24_bit(len: usize) -> Vec<f32> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state as i64) >> 40) as f32 / 8_388_608.0
        })
        .collect()
}

fn thread_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to write.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(status, 0, "clock_gettime");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}
