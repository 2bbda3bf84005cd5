//! Sample-rate conversion of interleaved f32 streams, for codecs with a rate of their own
//! (Opus: 48 kHz). A windowed-sinc resampler (rubato's `SincFixedIn`): band-limited, any ratio,
//! no drift. Its input chunk is the frame size, so each frame is resampled as it arrives.

use rubato::{
    Resampler as _, SincFixedIn, SincInterpolationParameters, SincInterpolationType,
    WindowFunction, calculate_cutoff,
};

use super::CodecError;

/// Taps of the interpolation filter: with the Blackman-Harris window, a pass band to about
/// 90 % of the lower Nyquist frequency (19.8 kHz from 44.1 kHz) and a stop band below
/// -100 dB; the resampler delays by half of it.
const SINC_LEN: usize = 128;

pub struct Resampler {
    inner: SincFixedIn<f32>,
    /// Input not yet resampled, one vector per channel; resampled when a chunk is full.
    input: Vec<Vec<f32>>,
    output: Vec<Vec<f32>>,
    chunk_frames: usize,
}

impl Resampler {
    /// Resamples `channels` channels from `from_hz` to `to_hz`, taking input in chunks of
    /// `chunk_frames` samples per channel.
    pub fn new(
        from_hz: u32,
        to_hz: u32,
        channels: usize,
        chunk_frames: usize,
    ) -> Result<Resampler, CodecError> {
        let window = WindowFunction::BlackmanHarris2;
        let parameters = SincInterpolationParameters {
            sinc_len: SINC_LEN,
            f_cutoff: calculate_cutoff(SINC_LEN, window),
            interpolation: SincInterpolationType::Linear,
            oversampling_factor: 256,
            window,
        };
        let ratio = f64::from(to_hz) / f64::from(from_hz);
        let inner = SincFixedIn::new(ratio, 1.0, parameters, chunk_frames, channels)
            .map_err(|e| CodecError::Resample(Box::new(e)))?;
        let output = inner.output_buffer_allocate(true);
        Ok(Resampler {
            inner,
            input: vec![Vec::with_capacity(chunk_frames); channels],
            output,
            chunk_frames,
        })
    }

    /// Output samples per channel by which the output lags the input.
    pub fn delay_frames(&self) -> usize {
        self.inner.output_delay()
    }

    /// Resamples interleaved `samples`, appending what comes out (interleaved) to `out`.
    pub fn process(&mut self, samples: &[f32], out: &mut Vec<f32>) -> Result<(), CodecError> {
        let channels = self.input.len();
        for frame in samples.chunks_exact(channels) {
            for (channel, &sample) in self.input.iter_mut().zip(frame) {
                channel.push(sample);
            }
            if self.input[0].len() == self.chunk_frames {
                let (_, produced) = self
                    .inner
                    .process_into_buffer(&self.input, &mut self.output, None)
                    .map_err(|e| CodecError::Resample(Box::new(e)))?;
                self.interleave(produced, out);
                for channel in &mut self.input {
                    channel.clear();
                }
            }
        }
        Ok(())
    }

    /// Resamples what is left, then zeros until everything delayed is out.
    pub fn flush(&mut self, out: &mut Vec<f32>) -> Result<(), CodecError> {
        let mut flushed = 0;
        // rubato reads an empty channel as a missing one: pass no input rather than none.
        let mut partial = !self.input[0].is_empty();
        while flushed <= self.delay_frames() {
            let input = partial.then_some(&self.input[..]);
            let (_, produced) = self
                .inner
                .process_partial_into_buffer(input, &mut self.output, None)
                .map_err(|e| CodecError::Resample(Box::new(e)))?;
            self.interleave(produced, out);
            flushed += produced;
            partial = false;
        }
        for channel in &mut self.input {
            channel.clear();
        }
        Ok(())
    }

    fn interleave(&self, frames: usize, out: &mut Vec<f32>) {
        out.reserve(frames * self.output.len());
        for i in 0..frames {
            out.extend(self.output.iter().map(|channel| channel[i]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frequency of a mono sine by its zero crossings (upward, interpolated).
    fn frequency(samples: &[f32], rate_hz: u32) -> f64 {
        let crossings: Vec<f64> = samples
            .windows(2)
            .enumerate()
            .filter(|(_, w)| w[0] < 0.0 && w[1] >= 0.0)
            .map(|(i, w)| i as f64 + f64::from(w[0] / (w[0] - w[1])))
            .collect();
        let periods = (crossings.len() - 1) as f64;
        periods * f64::from(rate_hz) / (crossings[crossings.len() - 1] - crossings[0])
    }

    #[test]
    fn a_tone_keeps_its_frequency_and_level() {
        let (from_hz, to_hz, tone_hz, chunk) = (44_100, 48_000, 1_000.0, 441);
        let input: Vec<f32> = (0..from_hz)
            .map(|i| {
                (0.5 * (2.0 * std::f64::consts::PI * tone_hz * f64::from(i) / f64::from(from_hz))
                    .sin()) as f32
            })
            .collect();
        let mut resampler = Resampler::new(from_hz, to_hz, 1, chunk).unwrap();
        let mut out = Vec::new();
        for frame in input.chunks(chunk) {
            resampler.process(frame, &mut out).unwrap();
        }
        resampler.flush(&mut out).unwrap();
        let delay = resampler.delay_frames();
        let expected = to_hz as usize;
        assert!(out.len() >= expected + delay, "{} samples out", out.len());
        let steady = &out[delay + 1000..expected - 1000];
        let measured = frequency(steady, to_hz);
        assert!((measured - tone_hz).abs() < 0.01, "{measured} Hz");
        let peak = steady.iter().fold(0f32, |m, s| m.max(s.abs()));
        assert!((peak - 0.5).abs() < 0.001, "peak {peak}");
    }

    #[test]
    fn channels_stay_apart_and_in_step() {
        let mut resampler = Resampler::new(32_000, 48_000, 2, 320).unwrap();
        let input: Vec<f32> = (0..3200).flat_map(|_| [0.25, -0.5]).collect();
        let mut out = Vec::new();
        resampler.process(&input, &mut out).unwrap();
        assert_eq!(out.len() % 2, 0);
        let settled = &out[2 * (resampler.delay_frames() + 100)..];
        for pair in settled.chunks_exact(2) {
            assert!(
                (pair[0] - 0.25).abs() < 1e-3 && (pair[1] + 0.5).abs() < 1e-3,
                "{pair:?}"
            );
        }
    }
}
