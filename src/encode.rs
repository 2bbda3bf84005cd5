//! Pure sample encodings: f32 → s16 conversion, little-endian PCM bytes, the NDJSON frame
//! object and the endless WAV header. Nothing here knows about frames being shared; `frame.rs`
//! decides when (once per frame) these run.

use bytes::{BufMut, Bytes, BytesMut};

/// Wire formats of raw PCM, as named in `?format=` and in `X-Pcm-Format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PcmFormat {
    F32le,
    S16le,
}

impl PcmFormat {
    pub fn name(self) -> &'static str {
        match self {
            PcmFormat::F32le => "f32le",
            PcmFormat::S16le => "s16le",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "f32le" => Some(PcmFormat::F32le),
            "s16le" => Some(PcmFormat::S16le),
            _ => None,
        }
    }

    pub fn bytes_per_sample(self) -> u16 {
        match self {
            PcmFormat::F32le => 4,
            PcmFormat::S16le => 2,
        }
    }
}

/// Converts a float sample to s16: scaled by 2^15, rounded to nearest (halves away from zero),
/// clamped to the i16 range. NaN becomes 0. The inverse of `s as f32 / 32768.0` for every i16
/// `s`.
pub fn f32_to_s16(sample: f32) -> i16 {
    // This gives `(sample * 32768.0).round() as i16` for every f32 bit pattern (checked
    // exhaustively), but vectorises: on baseline x86-64 `round` is a libm call per sample, and
    // a float-to-int `as` must saturate, which LLVM does not vectorise either; together they
    // made `s16le_bytes` 4x slower. Adding 1.5 × 2^23 to a value this small rounds it to an
    // integer (ties to even) and leaves that integer in the low mantissa bits; the exact
    // remainder then tells a tie that went towards zero, which is moved away from it.
    const ROUNDER: f32 = 12_582_912.0;
    let scaled = if sample.is_nan() {
        0.0
    } else {
        (sample * 32768.0).clamp(-32768.0, 32767.0)
    };
    let biased = scaled + ROUNDER;
    let nearest_even = biased.to_bits() as i32 - ROUNDER.to_bits() as i32;
    let remainder = scaled - (biased - ROUNDER);
    let tie_up = remainder == 0.5 && scaled > 0.0;
    let tie_down = remainder == -0.5 && scaled < 0.0;
    (nearest_even + i32::from(tie_up) - i32::from(tie_down)) as i16
}

pub fn s16_to_f32(sample: i16) -> f32 {
    f32::from(sample) / 32768.0
}

/// Converts a float sample to a 24-bit integer: scaled by 2^23, rounded to nearest (halves away
/// from zero), clamped. NaN becomes 0. Exact for every sample of an integer source of up to 24
/// bits, whose float is `s / 2^(bits - 1)`.
pub fn f32_to_s24(sample: f32) -> i32 {
    if sample.is_nan() {
        return 0;
    }
    // Scaling by a power of two is exact, and every f32 below 2^24 rounds exactly.
    (sample * 8_388_608.0)
        .round()
        .clamp(-8_388_608.0, 8_388_607.0) as i32
}

// Both fill a zeroed buffer through fixed-size chunks rather than `BytesMut::put_*` per
// sample, whose length bookkeeping keeps the loops from vectorising.

fn write_f32le(samples: &[f32], out: &mut [u8]) {
    for (bytes, s) in out.chunks_exact_mut(4).zip(samples) {
        bytes.copy_from_slice(&s.to_le_bytes());
    }
}

fn write_s16le(samples: &[f32], out: &mut [u8]) {
    for (bytes, &s) in out.chunks_exact_mut(2).zip(samples) {
        bytes.copy_from_slice(&f32_to_s16(s).to_le_bytes());
    }
}

pub fn f32le_bytes(samples: &[f32]) -> Bytes {
    pcm_bytes(PcmFormat::F32le, samples)
}

pub fn s16le_bytes(samples: &[f32]) -> Bytes {
    pcm_bytes(PcmFormat::S16le, samples)
}

fn pcm_bytes(format: PcmFormat, samples: &[f32]) -> Bytes {
    let mut out = vec![0u8; samples.len() * usize::from(format.bytes_per_sample())];
    write_pcm(format, samples, &mut out);
    Bytes::from(out)
}

fn write_pcm(format: PcmFormat, samples: &[f32], out: &mut [u8]) {
    match format {
        PcmFormat::F32le => write_f32le(samples, out),
        PcmFormat::S16le => write_s16le(samples, out),
    }
}

/// `samples` encoded as `format`, framed as one HTTP/1.1 chunk (`SIZE\r\n DATA \r\n`), and
/// where the data lies in it: one buffer serves both the listeners that are sent whole chunks
/// and those that are sent the bare data.
pub fn pcm_chunk(format: PcmFormat, samples: &[f32]) -> (Bytes, std::ops::Range<usize>) {
    let data_len = samples.len() * usize::from(format.bytes_per_sample());
    let header = format!("{data_len:x}\r\n");
    let data = header.len()..header.len() + data_len;
    let mut out = vec![0u8; data.end + 2];
    out[..data.start].copy_from_slice(header.as_bytes());
    write_pcm(format, samples, &mut out[data.clone()]);
    out[data.end..].copy_from_slice(b"\r\n");
    (Bytes::from(out), data)
}

/// An HTTP/1.1 chunk holding `data`, copied.
pub fn http_chunk(data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 12);
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    Bytes::from(out)
}

/// The last chunk of a chunked body, with no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// The NDJSON object of one frame, without a trailing newline.
#[derive(serde::Serialize)]
pub struct FrameJson<'a> {
    pub seq: u64,
    pub pts: u64,
    pub time: f64,
    pub rate: u32,
    pub channels: u16,
    pub samples: &'a [f32],
}

/// One NDJSON line: the frame object followed by `\n`.
pub fn json_line(frame: &FrameJson<'_>) -> Bytes {
    // ~10 bytes per sample ("-0.12345678,") is the common case; the Vec grows if needed.
    let mut out = Vec::with_capacity(96 + frame.samples.len() * 12);
    serde_json::to_writer(&mut out, frame).expect("serialising plain numbers cannot fail");
    out.push(b'\n');
    Bytes::from(out)
}

/// The same line with `"skipped":N` added, for the first frame a listener gets after a skip.
pub fn with_skipped(line: &[u8], skipped: u64) -> Bytes {
    let body = line
        .strip_suffix(b"}\n")
        .expect("a JSON frame line ends with a closing brace and a newline");
    let mut out = Vec::with_capacity(line.len() + 24);
    out.extend_from_slice(body);
    out.extend_from_slice(format!(",\"skipped\":{skipped}}}\n").as_bytes());
    Bytes::from(out)
}

/// Size written in the RIFF and data size fields of a live WAV: "until end of stream".
pub const WAV_ENDLESS_SIZE: u32 = 0xFFFF_FFFF;

/// The 44-byte canonical WAV header of an endless stream: PCM (format 1) for s16le, IEEE float
/// (format 3) for f32le, with the RIFF and data sizes set to 0xFFFFFFFF.
pub fn wav_header(format: PcmFormat, rate_hz: u32, channels: u16) -> Bytes {
    let bytes_per_sample = format.bytes_per_sample();
    let block_align = channels * bytes_per_sample;
    let format_tag: u16 = match format {
        PcmFormat::S16le => 1,
        PcmFormat::F32le => 3,
    };
    let mut out = BytesMut::with_capacity(44);
    out.put_slice(b"RIFF");
    out.put_u32_le(WAV_ENDLESS_SIZE);
    out.put_slice(b"WAVE");
    out.put_slice(b"fmt ");
    out.put_u32_le(16);
    out.put_u16_le(format_tag);
    out.put_u16_le(channels);
    out.put_u32_le(rate_hz);
    out.put_u32_le(rate_hz * u32::from(block_align));
    out.put_u16_le(block_align);
    out.put_u16_le(bytes_per_sample * 8);
    out.put_slice(b"data");
    out.put_u32_le(WAV_ENDLESS_SIZE);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn s16_round_trip_is_exact_for_every_value() {
        for s in i16::MIN..=i16::MAX {
            assert_eq!(f32_to_s16(s16_to_f32(s)), s);
        }
    }

    #[test]
    fn s16_conversion_clamps_and_rounds() {
        assert_eq!(f32_to_s16(1.0), i16::MAX);
        assert_eq!(f32_to_s16(7.5), i16::MAX);
        assert_eq!(f32_to_s16(-1.0), i16::MIN);
        assert_eq!(f32_to_s16(-3.0), i16::MIN);
        assert_eq!(f32_to_s16(f32::NAN), 0);
        assert_eq!(f32_to_s16(f32::INFINITY), i16::MAX);
        assert_eq!(f32_to_s16(0.6 / 32768.0), 1);
        assert_eq!(f32_to_s16(0.4 / 32768.0), 0);
        assert_eq!(f32_to_s16(-0.6 / 32768.0), -1);
    }

    #[test]
    fn s24_conversion_is_exact_for_integer_sources_and_clamps() {
        for s in (-(1 << 23)..(1 << 23))
            .step_by(97)
            .chain([-(1 << 23), (1 << 23) - 1])
        {
            assert_eq!(f32_to_s24(s as f32 / 8_388_608.0), s);
        }
        for s in i16::MIN..=i16::MAX {
            assert_eq!(f32_to_s24(s16_to_f32(s)), i32::from(s) << 8);
        }
        assert_eq!(f32_to_s24(1.0), (1 << 23) - 1);
        assert_eq!(f32_to_s24(-2.0), -(1 << 23));
        assert_eq!(f32_to_s24(f32::NAN), 0);
        assert_eq!(f32_to_s24(f32::NEG_INFINITY), -(1 << 23));
    }

    proptest! {
        #[test]
        fn s16_conversion_is_nearest_in_range(x in -1.5f32..1.5) {
            let s = f32_to_s16(x);
            let exact = f64::from(x) * 32768.0;
            let clamped = exact.clamp(-32768.0, 32767.0);
            prop_assert!((f64::from(s) - clamped).abs() <= 0.5 + 1e-3, "{x} -> {s}");
        }

        #[test]
        fn pcm_bytes_decode_to_the_samples(samples in proptest::collection::vec(-1.0f32..=1.0, 0..64)) {
            let f32le = f32le_bytes(&samples);
            let s16le = s16le_bytes(&samples);
            prop_assert_eq!(f32le.len(), samples.len() * 4);
            prop_assert_eq!(s16le.len(), samples.len() * 2);
            for (i, &s) in samples.iter().enumerate() {
                let f = f32::from_le_bytes(f32le[i * 4..i * 4 + 4].try_into().unwrap());
                prop_assert_eq!(f.to_bits(), s.to_bits());
                let h = i16::from_le_bytes(s16le[i * 2..i * 2 + 2].try_into().unwrap());
                prop_assert_eq!(h, f32_to_s16(s));
            }
        }

        #[test]
        fn json_line_round_trips(samples in proptest::collection::vec(-1.0f32..=1.0, 0..32), seq in 0u64..1 << 40) {
            let line = json_line(&FrameJson { seq, pts: seq * 16, time: 1.5, rate: 48_000, channels: 2, samples: &samples });
            prop_assert!(line.ends_with(b"}\n"), "line ends with a brace and a newline");
            let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
            prop_assert_eq!(value["seq"].as_u64(), Some(seq));
            let parsed: Vec<f32> = value["samples"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            prop_assert_eq!(parsed, samples);
            let skipped: serde_json::Value = serde_json::from_slice(&with_skipped(&line, 7)).unwrap();
            prop_assert_eq!(skipped["skipped"].as_u64(), Some(7));
            prop_assert_eq!(&skipped["samples"], &value["samples"]);
        }
    }

    #[test]
    fn wav_header_bytes_s16_stereo_48k() {
        let header = wav_header(PcmFormat::S16le, 48_000, 2);
        let mut expected = Vec::new();
        expected.extend_from_slice(b"RIFF\xff\xff\xff\xffWAVEfmt ");
        expected.extend_from_slice(&[16, 0, 0, 0, 1, 0, 2, 0]);
        expected.extend_from_slice(&48_000u32.to_le_bytes());
        expected.extend_from_slice(&192_000u32.to_le_bytes());
        expected.extend_from_slice(&[4, 0, 16, 0]);
        expected.extend_from_slice(b"data\xff\xff\xff\xff");
        assert_eq!(header.as_ref(), expected.as_slice());
    }

    #[test]
    fn wav_header_bytes_f32_mono_44k1() {
        let header = wav_header(PcmFormat::F32le, 44_100, 1);
        assert_eq!(header.len(), 44);
        assert_eq!(&header[20..22], &[3, 0], "IEEE float format tag");
        assert_eq!(&header[22..24], &[1, 0]);
        assert_eq!(&header[24..28], &44_100u32.to_le_bytes());
        assert_eq!(&header[28..32], &176_400u32.to_le_bytes());
        assert_eq!(&header[32..36], &[4, 0, 32, 0]);
    }
}
