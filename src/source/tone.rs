//! The synthetic source: a deterministic sine at amplitude 0.5 (−6 dBFS) on every channel.

use super::{Generator, OpenSource, SourceInfo};
use crate::frame::StreamFormat;

pub const AMPLITUDE: f32 = 0.5;

struct Tone {
    hz: f64,
    format: StreamFormat,
    /// Index of the next sample frame.
    index: u64,
}

pub fn open(hz: f64, format: StreamFormat) -> OpenSource {
    OpenSource::paced(
        SourceInfo {
            kind: "tone",
            name: format!("{hz} Hz sine"),
            format,
        },
        Box::new(Tone {
            hz,
            format,
            index: 0,
        }),
    )
}

/// Sample `index` of the sine. The phase is reduced to one cycle in f64 from the index so that
/// it stays exact over long runs instead of accumulating rounding error.
pub fn sample_at(hz: f64, rate_hz: u32, index: u64) -> f32 {
    let rate = u64::from(rate_hz);
    let whole_seconds = index / rate;
    let within = (index % rate) as f64 / rate as f64;
    let cycles = (hz * whole_seconds as f64).fract() + hz * within;
    AMPLITUDE * (std::f64::consts::TAU * cycles.fract()).sin() as f32
}

impl Generator for Tone {
    fn fill(&mut self, out: &mut [f32]) -> usize {
        let channels = usize::from(self.format.channels);
        for sample_frame in out.chunks_exact_mut(channels) {
            sample_frame.fill(sample_at(self.hz, self.format.rate_hz, self.index));
            self.index += 1;
        }
        out.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sine_matches_the_closed_form_and_stays_in_phase() {
        for index in [0u64, 1, 47, 48_000, 48_000 * 3_600 + 12] {
            let t = index as f64 / 48_000.0;
            let expected = 0.5 * (std::f64::consts::TAU * 440.0 * t).sin();
            assert!((f64::from(sample_at(440.0, 48_000, index)) - expected).abs() < 1e-6);
        }
    }

    #[test]
    fn fill_writes_the_same_value_on_every_channel() {
        let format = StreamFormat {
            rate_hz: 8_000,
            channels: 3,
        };
        let mut tone = Tone {
            hz: 1_000.0,
            format,
            index: 0,
        };
        let mut out = [9.0f32; 12];
        assert_eq!(tone.fill(&mut out), 12);
        for (i, frame) in out.chunks_exact(3).enumerate() {
            assert!(frame.iter().all(|&s| s == frame[0]));
            assert_eq!(frame[0], sample_at(1_000.0, 8_000, i as u64));
        }
    }
}
