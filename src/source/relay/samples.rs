//! Raw PCM bytes (f32le or s16le, interleaved) to f32 samples, in whole sample frames. Reads
//! split the byte stream anywhere, even inside a sample; the bytes of an incomplete sample
//! frame are carried to the next read, so the ring only ever gets whole sample frames and the
//! channels stay in place across reads (and, with a fresh decoder, across reconnects).

use crate::encode::PcmFormat;
use crate::source::convert::CaptureSample;

pub struct SampleDecoder {
    encoding: PcmFormat,
    sample_frame_bytes: usize,
    /// The start of a sample frame whose remaining bytes have not arrived yet.
    carry: Vec<u8>,
    /// Reused for every call's samples.
    samples: Vec<f32>,
}

impl SampleDecoder {
    pub fn new(encoding: PcmFormat, channels: u16) -> SampleDecoder {
        let sample_frame_bytes = usize::from(encoding.bytes_per_sample()) * usize::from(channels);
        SampleDecoder {
            encoding,
            sample_frame_bytes,
            carry: Vec::with_capacity(sample_frame_bytes),
            samples: Vec::new(),
        }
    }

    /// Decodes `bytes` after what earlier calls left incomplete, and hands every sample frame
    /// now complete to `push` in one call (none if there is none).
    pub fn decode(&mut self, mut bytes: &[u8], push: impl FnOnce(&[f32])) {
        self.samples.clear();
        if !self.carry.is_empty() {
            let take = (self.sample_frame_bytes - self.carry.len()).min(bytes.len());
            self.carry.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.carry.len() < self.sample_frame_bytes {
                return;
            }
            decode_into(self.encoding, &self.carry, &mut self.samples);
            self.carry.clear();
        }
        let whole = bytes.len() / self.sample_frame_bytes * self.sample_frame_bytes;
        decode_into(self.encoding, &bytes[..whole], &mut self.samples);
        self.carry.extend_from_slice(&bytes[whole..]);
        if !self.samples.is_empty() {
            push(&self.samples);
        }
    }
}

/// Appends the samples of `bytes` (whole samples) to `out`. A non-finite float (which no
/// pcmcast sends) becomes silence rather than poisoning levels and JSON downstream.
fn decode_into(encoding: PcmFormat, bytes: &[u8], out: &mut Vec<f32>) {
    match encoding {
        PcmFormat::F32le => out.extend(bytes.chunks_exact(4).map(|b| {
            let sample = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            if sample.is_finite() { sample } else { 0.0 }
        })),
        PcmFormat::S16le => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_in_pieces(
        encoding: PcmFormat,
        channels: u16,
        bytes: &[u8],
        cuts: &[usize],
    ) -> Vec<Vec<f32>> {
        let mut decoder = SampleDecoder::new(encoding, channels);
        let mut pushes = Vec::new();
        let mut cuts: Vec<usize> = cuts.iter().map(|&c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.push(bytes.len());
        let mut start = 0;
        for cut in cuts {
            decoder.decode(&bytes[start..cut], |s| pushes.push(s.to_vec()));
            start = cut;
        }
        pushes
    }

    proptest! {
        #[test]
        fn f32le_comes_out_exactly_in_whole_sample_frames(
            channels in 1u16..=6,
            sample_frames in proptest::collection::vec(-1.0f32..=1.0, 0..200),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let samples: Vec<f32> = sample_frames
                .iter()
                .flat_map(|&s| (0..channels).map(move |c| s * f32::from(c + 1) / 8.0))
                .collect();
            let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
            let pushes = decode_in_pieces(PcmFormat::F32le, channels, &bytes, &cuts);
            for push in &pushes {
                prop_assert!(!push.is_empty());
                prop_assert_eq!(push.len() % usize::from(channels), 0);
            }
            prop_assert_eq!(pushes.concat(), samples);
        }
    }

    #[test]
    fn s16le_is_scaled_by_two_to_the_fifteen() {
        let bytes: Vec<u8> = [i16::MIN, -1, 0, 16_384, i16::MAX]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        let pushes = decode_in_pieces(PcmFormat::S16le, 1, &bytes, &[3]);
        assert_eq!(
            pushes.concat(),
            [-1.0, -1.0 / 32_768.0, 0.0, 0.5, 32_767.0 / 32_768.0]
        );
    }

    #[test]
    fn an_incomplete_sample_frame_waits_for_the_rest() {
        let mut decoder = SampleDecoder::new(PcmFormat::F32le, 2);
        let bytes: Vec<u8> = [0.25f32, -0.5]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        decoder.decode(&bytes[..7], |_| panic!("half a sample frame is not pushed"));
        let mut got = Vec::new();
        decoder.decode(&bytes[7..], |s| got.extend_from_slice(s));
        assert_eq!(got, [0.25, -0.5]);
    }

    #[test]
    fn non_finite_floats_become_silence() {
        let bytes: Vec<u8> = [f32::NAN, f32::INFINITY, 0.5]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        assert_eq!(
            decode_in_pieces(PcmFormat::F32le, 3, &bytes, &[]).concat(),
            [0.0, 0.0, 0.5]
        );
    }
}
