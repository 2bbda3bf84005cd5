//! `/stream.flac`'s encoder: a native FLAC stream, 24 bits per sample, fixed block size.
//!
//! The stream header is `fLaC` and a STREAMINFO block whose total sample count and MD5 are
//! zero ("unknown"), as for any live stream; then one FLAC frame per block. Every frame
//! starts with a sync code and says its own block size, rate, channel layout and bit depth, so
//! a decoder can start at any frame: each frame is one [`Page`].
//!
//! Samples are quantised to 24 bits (`round(x × 2^23)`, clamped), which is exact for every
//! integer source of up to 24 bits (WAV, capture): the FLAC decodes to exactly the source's
//! samples. 16-bit material costs no more than in a 16-bit FLAC, since each subframe shifts out
//! the low bits that are zero in all its samples ("wasted bits").
//!
//! The block size is the frame size, clamped to 16…4608 samples (the FLAC subset's range at up
//! to 48 kHz); with the default 1024 each hub frame is one FLAC frame, so the encoder adds no
//! delay. Otherwise samples are carried over to the next block. Frame numbers count blocks
//! from the encoder's start, modulo 2^31 (FLAC's limit: 1.4 years at 1024 samples, 48 kHz).
//! Each channel is coded with the cheapest of a constant, verbatim, fixed-predictor or
//! linear-predictor subframe (`flac/subframe.rs`, `flac/lpc.rs`); stereo frames as left/right, left/side,
//! side/right or mid/side, whichever is smallest. On music this comes to about `flac -5`'s
//! size, for a few milliseconds of CPU per second of audio.

mod bits;
mod lpc;
mod subframe;

use bytes::Bytes;

use super::{CodecError, Page};
use crate::encode::f32_to_s24;
use crate::frame::StreamFormat;
use bits::{BitWriter, crc8, crc16};
use subframe::{Plan, Subframes};

pub const BITS_PER_SAMPLE: u32 = 24;
const MIN_BLOCK_SAMPLES: usize = 16;
const MAX_BLOCK_SAMPLES: usize = 4608;
const MAX_CHANNELS: u16 = 8;
/// STREAMINFO's sample rate field is 20 bits wide.
const MAX_RATE_HZ: u32 = (1 << 20) - 1;

pub struct FlacEncoder {
    format: StreamFormat,
    block_samples: usize,
    /// Samples not yet in a block, one vector per channel.
    pending: Vec<Vec<i32>>,
    frame_number: u32,
    subframes: Subframes,
    /// Side and mid channels of the stereo block being coded.
    side: Vec<i32>,
    mid: Vec<i32>,
}

impl FlacEncoder {
    pub fn new(format: StreamFormat, frame_size_samples: usize) -> Result<FlacEncoder, CodecError> {
        if format.channels > MAX_CHANNELS {
            return Err(CodecError::Unsupported(format!(
                "FLAC carries at most {MAX_CHANNELS} channels and this source has {}",
                format.channels
            )));
        }
        if format.rate_hz > MAX_RATE_HZ {
            return Err(CodecError::Unsupported(format!(
                "FLAC carries rates up to {MAX_RATE_HZ} Hz and this source runs at {} Hz",
                format.rate_hz
            )));
        }
        let block_samples = frame_size_samples.clamp(MIN_BLOCK_SAMPLES, MAX_BLOCK_SAMPLES);
        Ok(FlacEncoder {
            format,
            block_samples,
            pending: vec![Vec::with_capacity(2 * block_samples); usize::from(format.channels)],
            frame_number: 0,
            subframes: Subframes::default(),
            side: Vec::with_capacity(block_samples),
            mid: Vec::with_capacity(block_samples),
        })
    }

    /// `fLaC` and the STREAMINFO block: what every listener gets first.
    pub fn header(&self) -> Bytes {
        let block = self.block_samples as u32;
        let mut w = BitWriter::with_capacity(42);
        w.write(u32::from_be_bytes(*b"fLaC"), 32);
        // Metadata block header: last block, type 0 (STREAMINFO), 34 bytes.
        w.write(1, 1);
        w.write(0, 7);
        w.write(34, 24);
        w.write(block, 16);
        w.write(block, 16);
        // Minimum and maximum frame sizes: unknown.
        w.write(0, 24);
        w.write(0, 24);
        w.write(self.format.rate_hz, 20);
        w.write(u32::from(self.format.channels) - 1, 3);
        w.write(BITS_PER_SAMPLE - 1, 5);
        // Total samples (36 bits) and MD5 (128 bits): unknown.
        w.write(0, 4);
        w.write(0, 32);
        for _ in 0..4 {
            w.write(0, 32);
        }
        Bytes::from(w.into_bytes())
    }

    /// Adds interleaved samples; pushes a page for each block they complete.
    pub fn push(&mut self, interleaved: &[f32], pages: &mut Vec<Page>) {
        let channels = self.pending.len();
        for (i, &sample) in interleaved.iter().enumerate() {
            self.pending[i % channels].push(f32_to_s24(sample));
        }
        while self.pending[0].len() >= self.block_samples {
            pages.push(self.encode_block(self.block_samples));
        }
    }

    /// Encodes what is left as a last, shorter block.
    pub fn finish(&mut self, pages: &mut Vec<Page>) {
        let left = self.pending[0].len();
        if left > 0 {
            pages.push(self.encode_block(left));
        }
    }

    /// Encodes the first `len` pending samples of each channel as one frame.
    fn encode_block(&mut self, len: usize) -> Page {
        let channels = self.pending.len();
        let mut w = BitWriter::with_capacity(len * channels * 3 + 64);
        let (assignment, plans) = self.plan_channels(len);
        self.write_frame_header(&mut w, len, assignment);
        for (channel, plan) in plans {
            let (samples, bits) = match channel {
                Channel::Input(c) => (&self.pending[c][..len], BITS_PER_SAMPLE),
                Channel::Side => (&self.side[..], BITS_PER_SAMPLE + 1),
                Channel::Mid => (&self.mid[..], BITS_PER_SAMPLE),
            };
            self.subframes.write(&plan, samples, bits, &mut w);
        }
        w.align();
        let crc = crc16(w.bytes());
        w.write(u32::from(crc), 16);
        for channel in &mut self.pending {
            channel.drain(..len);
        }
        self.frame_number = (self.frame_number + 1) % (1 << 31);
        Page {
            bytes: Bytes::from(w.into_bytes()),
            source_samples: len as u64,
        }
    }

    /// The channel assignment code and the subframes to write, in order, with their plans.
    fn plan_channels(&mut self, len: usize) -> (u32, Vec<(Channel, Plan)>) {
        let channels = self.pending.len();
        let mut independent: Vec<(Channel, Plan)> = (0..channels)
            .map(|c| {
                let plan = self
                    .subframes
                    .plan(&self.pending[c][..len], BITS_PER_SAMPLE);
                (Channel::Input(c), plan)
            })
            .collect();
        if channels != 2 {
            return (channels as u32 - 1, independent);
        }
        let (left, right) = (&self.pending[0][..len], &self.pending[1][..len]);
        self.side.clear();
        self.side
            .extend(left.iter().zip(right).map(|(&l, &r)| l - r));
        self.mid.clear();
        self.mid
            .extend(left.iter().zip(right).map(|(&l, &r)| (l + r) >> 1));
        let side = self.subframes.plan(&self.side, BITS_PER_SAMPLE + 1);
        let mid = self.subframes.plan(&self.mid, BITS_PER_SAMPLE);
        let right = independent.pop().expect("two channels").1;
        let left = independent.pop().expect("two channels").1;
        let options = [
            (0b0001, left.bits + right.bits),
            (0b1000, left.bits + side.bits),
            (0b1001, side.bits + right.bits),
            (0b1010, mid.bits + side.bits),
        ];
        let (assignment, _) = options
            .into_iter()
            .min_by_key(|&(_, bits)| bits)
            .expect("four options");
        let order = match assignment {
            0b0001 => vec![(Channel::Input(0), left), (Channel::Input(1), right)],
            0b1000 => vec![(Channel::Input(0), left), (Channel::Side, side)],
            0b1001 => vec![(Channel::Side, side), (Channel::Input(1), right)],
            _ => vec![(Channel::Mid, mid), (Channel::Side, side)],
        };
        (assignment, order)
    }

    fn write_frame_header(&self, w: &mut BitWriter, len: usize, assignment: u32) {
        let start = w.bytes().len();
        // Sync code, a reserved bit, fixed block size.
        w.write(0b11_1111_1111_1110, 14);
        w.write(0, 2);
        let (size_code, size_extra) = block_size_code(len);
        let (rate_code, rate_extra) = rate_code(self.format.rate_hz);
        w.write(size_code, 4);
        w.write(rate_code, 4);
        w.write(assignment, 4);
        // 24 bits per sample, a reserved bit.
        w.write(0b110, 3);
        w.write(0, 1);
        write_utf8_number(w, self.frame_number);
        if let Some((value, bits)) = size_extra {
            w.write(value, bits);
        }
        if let Some((value, bits)) = rate_extra {
            w.write(value, bits);
        }
        let crc = crc8(&w.bytes()[start..]);
        w.write(u32::from(crc), 8);
    }
}

/// A subframe's channel: an input channel, or the stereo side (left − right, one bit wider)
/// or mid ((left + right) >> 1) channel.
enum Channel {
    Input(usize),
    Side,
    Mid,
}

/// The frame header's 4-bit block size code, and the value that follows the header when the
/// code says so: (value, bits).
fn block_size_code(len: usize) -> (u32, Option<(u32, u32)>) {
    let len = len as u32;
    match len {
        192 => (1, None),
        576 | 1152 | 2304 | 4608 => (2 + (len / 576).trailing_zeros(), None),
        256 | 512 | 1024 | 2048 | 4096 | 8192 | 16384 | 32768 => {
            (8 + (len / 256).trailing_zeros(), None)
        }
        1..=256 => (6, Some((len - 1, 8))),
        _ => (7, Some((len - 1, 16))),
    }
}

/// The frame header's 4-bit sample rate code, and the value that follows the header when the
/// code says so; code 0 means "as in STREAMINFO".
fn rate_code(rate_hz: u32) -> (u32, Option<(u32, u32)>) {
    let table = [
        (88_200, 1),
        (176_400, 2),
        (192_000, 3),
        (8_000, 4),
        (16_000, 5),
        (22_050, 6),
        (24_000, 7),
        (32_000, 8),
        (44_100, 9),
        (48_000, 10),
        (96_000, 11),
    ];
    if let Some(&(_, code)) = table.iter().find(|(rate, _)| *rate == rate_hz) {
        (code, None)
    } else if rate_hz % 1000 == 0 && rate_hz / 1000 <= 255 {
        (12, Some((rate_hz / 1000, 8)))
    } else if rate_hz <= 65_535 {
        (13, Some((rate_hz, 16)))
    } else if rate_hz % 10 == 0 && rate_hz / 10 <= 65_535 {
        (14, Some((rate_hz / 10, 16)))
    } else {
        (0, None)
    }
}

/// The frame number in FLAC's UTF-8-like variable-length code (up to 31 bits, 6 bytes).
fn write_utf8_number(w: &mut BitWriter, n: u32) {
    if n < 0x80 {
        w.write(n, 8);
        return;
    }
    // Continuation bytes carry 6 bits each; the first byte the rest, after a unary length.
    let continuation = match n {
        0..0x800 => 1,
        0x800..0x1_0000 => 2,
        0x1_0000..0x20_0000 => 3,
        0x20_0000..0x400_0000 => 4,
        _ => 5,
    };
    let lead_marker = (0xFF00u32 >> (continuation + 1)) & 0xFF;
    w.write(lead_marker | (n >> (6 * continuation)), 8);
    for i in (0..continuation).rev() {
        w.write(0x80 | ((n >> (6 * i)) & 0x3F), 8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format(rate_hz: u32, channels: u16) -> StreamFormat {
        StreamFormat { rate_hz, channels }
    }

    #[test]
    fn the_header_is_flac_and_streaminfo() {
        let encoder = FlacEncoder::new(format(44_100, 2), 1024).unwrap();
        let header = encoder.header();
        assert_eq!(header.len(), 4 + 4 + 34);
        assert_eq!(&header[..4], b"fLaC");
        assert_eq!(&header[4..8], &[0x80, 0, 0, 34]);
        assert_eq!(&header[8..12], &[4, 0, 4, 0], "block sizes 1024");
        // 44100 = 0x0AC44 in 20 bits, then channels − 1 = 1 (3 bits), bps − 1 = 23 (5 bits).
        assert_eq!(&header[18..21], &[0x0A, 0xC4, 0x43]);
        assert_eq!(header[21] >> 4, 0b0111);
        assert!(header[22..].iter().all(|&b| b == 0), "no total, no MD5");
    }

    #[test]
    fn frame_numbers_use_the_utf8_code() {
        let encode = |n| {
            let mut w = BitWriter::with_capacity(8);
            write_utf8_number(&mut w, n);
            w.into_bytes()
        };
        assert_eq!(encode(0x7F), [0x7F]);
        assert_eq!(encode(0x80), [0xC2, 0x80]);
        assert_eq!(encode(0x20AC), [0xE2, 0x82, 0xAC]);
        assert_eq!(encode(0x1_F600), [0xF0, 0x9F, 0x98, 0x80]);
        assert_eq!(encode(0x7FFF_FFFF), [0xFD, 0xBF, 0xBF, 0xBF, 0xBF, 0xBF]);
    }

    #[test]
    fn block_size_and_rate_codes() {
        assert_eq!(block_size_code(4608), (5, None));
        assert_eq!(block_size_code(1024), (10, None));
        assert_eq!(block_size_code(100), (6, Some((99, 8))));
        assert_eq!(block_size_code(1000), (7, Some((999, 16))));
        assert_eq!(rate_code(48_000), (10, None));
        assert_eq!(rate_code(11_000), (12, Some((11, 8))));
        assert_eq!(rate_code(11_025), (13, Some((11_025, 16))));
        assert_eq!(rate_code(352_800), (14, Some((35_280, 16))));
        assert_eq!(rate_code(705_601), (0, None));
    }

    #[test]
    fn blocks_are_cut_at_the_block_size_whatever_the_frames() {
        let mut encoder = FlacEncoder::new(format(8_000, 1), 100).unwrap();
        let mut pages = Vec::new();
        encoder.push(&[0.25; 150], &mut pages);
        assert_eq!(pages.len(), 1);
        encoder.push(&[0.25; 120], &mut pages);
        assert_eq!(pages.len(), 2);
        encoder.finish(&mut pages);
        let samples: Vec<u64> = pages.iter().map(|p| p.source_samples).collect();
        assert_eq!(samples, [100, 100, 70]);
        for page in &pages {
            assert_eq!(&page.bytes[..2], &[0xFF, 0xF8], "sync code, fixed blocking");
            let crc = crc16(&page.bytes[..page.bytes.len() - 2]);
            assert_eq!(&page.bytes[page.bytes.len() - 2..], &crc.to_be_bytes());
        }
    }

    #[test]
    fn too_many_channels_are_refused_clearly() {
        let Err(CodecError::Unsupported(message)) = FlacEncoder::new(format(48_000, 9), 1024)
        else {
            panic!("nine channels accepted")
        };
        assert!(message.contains("at most 8 channels"), "{message}");
    }
}
