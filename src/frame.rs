//! The unit the pipeline moves: an immutable, shared frame of interleaved f32 samples, plus
//! the encodings listeners ask for. Each encoding is computed at most once per frame, on first
//! use, and then shared as `Bytes` by every listener of it.

use std::sync::OnceLock;

use bytes::Bytes;

use crate::encode::{self, FrameJson, PcmFormat};

/// Sample rate and channel count of a stream; fixed for the lifetime of a source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamFormat {
    pub rate_hz: u32,
    pub channels: u16,
}

/// RMS and peak of a frame's samples, linear full scale (1.0 = 0 dBFS).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Level {
    pub rms: f32,
    pub peak: f32,
}

impl Level {
    pub fn of(samples: &[f32]) -> Level {
        if samples.is_empty() {
            return Level::default();
        }
        let mut sum_squares = 0.0f64;
        let mut peak = 0.0f32;
        for &s in samples {
            sum_squares += f64::from(s) * f64::from(s);
            peak = peak.max(s.abs());
        }
        Level {
            rms: (sum_squares / samples.len() as f64).sqrt() as f32,
            peak,
        }
    }
}

pub struct Frame {
    /// 0, 1, 2, … per source start.
    pub seq: u64,
    /// Index, per channel, of the frame's first sample since the source started.
    pub pts: u64,
    /// Capture wall-clock time of the first sample, Unix seconds.
    pub time: f64,
    pub format: StreamFormat,
    /// Interleaved samples; a whole number of sample frames.
    pub samples: Box<[f32]>,
    pub level: Level,
    f32le: OnceLock<Encoded>,
    s16le: OnceLock<Encoded>,
    json: OnceLock<Encoded>,
}

/// A frame in one encoding: an HTTP/1.1 chunk and the bare data within it.
struct Encoded {
    chunk: Bytes,
    data: Bytes,
}

impl Encoded {
    fn new(chunk: Bytes, data: std::ops::Range<usize>) -> Encoded {
        Encoded {
            data: chunk.slice(data),
            chunk,
        }
    }
}

impl Frame {
    pub fn new(seq: u64, pts: u64, time: f64, format: StreamFormat, samples: Box<[f32]>) -> Frame {
        Frame {
            seq,
            pts,
            time,
            format,
            level: Level::of(&samples),
            samples,
            f32le: OnceLock::new(),
            s16le: OnceLock::new(),
            json: OnceLock::new(),
        }
    }

    /// Samples per channel in this frame.
    pub fn len_per_channel(&self) -> usize {
        self.samples.len() / usize::from(self.format.channels)
    }

    /// The samples as `format` bytes.
    pub fn pcm(&self, format: PcmFormat) -> &Bytes {
        &self.encoded(format).data
    }

    /// The samples as `format` bytes, framed as one HTTP/1.1 chunk; shares its buffer with
    /// [`Frame::pcm`].
    pub fn pcm_chunk(&self, format: PcmFormat) -> &Bytes {
        &self.encoded(format).chunk
    }

    fn encoded(&self, format: PcmFormat) -> &Encoded {
        let cell = match format {
            PcmFormat::F32le => &self.f32le,
            PcmFormat::S16le => &self.s16le,
        };
        cell.get_or_init(|| {
            let (chunk, data) = encode::pcm_chunk(format, &self.samples);
            Encoded::new(chunk, data)
        })
    }

    /// The frame's NDJSON line (ending in `\n`).
    pub fn json_line(&self) -> &Bytes {
        &self.json().data
    }

    /// The frame's NDJSON line as one HTTP/1.1 chunk; shares its buffer with
    /// [`Frame::json_line`].
    pub fn json_chunk(&self) -> &Bytes {
        &self.json().chunk
    }

    fn json(&self) -> &Encoded {
        self.json.get_or_init(|| {
            let line = encode::json_line(&FrameJson {
                seq: self.seq,
                pts: self.pts,
                time: self.time,
                rate: self.format.rate_hz,
                channels: self.format.channels,
                samples: &self.samples,
            });
            let chunk = encode::http_chunk(&line);
            let start = chunk.len() - 2 - line.len();
            Encoded::new(chunk, start..start + line.len())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_are_computed_once_and_shared() {
        let format = StreamFormat {
            rate_hz: 8_000,
            channels: 2,
        };
        let frame = Frame::new(3, 12, 0.5, format, vec![0.5, -0.5, 0.25, 0.0].into());
        let a = frame.pcm(PcmFormat::S16le).clone();
        let b = frame.pcm(PcmFormat::S16le).clone();
        assert_eq!(a.as_ptr(), b.as_ptr(), "the same buffer, not a copy");
        assert_eq!(&a[..], &encode::s16le_bytes(&frame.samples)[..]);
        let chunk = frame.pcm_chunk(PcmFormat::S16le);
        assert_eq!(&chunk[..], &[b"8\r\n", &a[..], b"\r\n"].concat()[..]);
        assert_eq!(
            chunk[3..].as_ptr(),
            a.as_ptr(),
            "the data lies inside the chunk"
        );
        assert_eq!(frame.json_line().as_ptr(), frame.json_line().as_ptr());
        let line = frame.json_line();
        let json_chunk = frame.json_chunk();
        assert!(json_chunk.ends_with(&[&line[..], b"\r\n"].concat()));
        assert!(json_chunk.starts_with(format!("{:x}\r\n", line.len()).as_bytes()));
        assert_eq!(frame.len_per_channel(), 2);
    }

    #[test]
    fn level_of_a_full_scale_square_wave() {
        let level = Level::of(&[1.0, -1.0, 1.0, -1.0]);
        assert_eq!(
            level,
            Level {
                rms: 1.0,
                peak: 1.0
            }
        );
        let half = Level::of(&[0.5, 0.0, -0.5, 0.0]);
        assert!((half.rms - 0.5 / 2f32.sqrt()).abs() < 1e-6);
        assert_eq!(half.peak, 0.5);
    }
}
