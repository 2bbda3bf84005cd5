//! `/stream.opus`'s encoder: Ogg/Opus (RFC 7845) through libopus, 48 kHz, 1 or 2 channels.
//!
//! A source at another rate is resampled to 48 kHz first ([`super::resample`]). Sources of more
//! than two channels are refused: their layout is unknown (a capture device's or a WAV file's
//! channels carry no positions here), so neither a stereo downmix nor Opus's surround mapping
//! would be right; `/stream.flac` carries them.
//!
//! Packets are 20 ms; a page holds [`PACKETS_PER_PAGE`] of them (100 ms), which keeps the Ogg
//! overhead near 3 % at 96 kbit/s while a new listener waits at most that long for its first
//! page. Granule positions count 48 kHz samples from the encoder's start, pre-skip included;
//! pre-skip is libopus's look-ahead plus the resampler's delay, so decoders drop both. At the
//! end of the source the last page is marked and its granule trims the padding.

use bytes::{Bytes, BytesMut};

use super::ogg::OggWriter;
use super::resample::Resampler;
use super::{CodecError, Page, StreamEncoder};
use crate::frame::StreamFormat;

/// Opus's rate: what decoders output and granule positions count.
pub const RATE_HZ: u32 = 48_000;
/// The bitrates `?bitrate=` offers, kbit/s. A fixed set, so that listeners share encoders.
pub const BITRATES_KBPS: [u32; 8] = [32, 48, 64, 96, 128, 160, 192, 256];
pub const DEFAULT_BITRATE_KBPS: u32 = 96;
/// 20 ms at 48 kHz.
const PACKET_SAMPLES: usize = 960;
pub const PACKETS_PER_PAGE: usize = 5;
/// libopus's recommended output buffer for one packet.
const MAX_PACKET_BYTES: usize = 4000;

pub struct OpusEncoder {
    encoder: opus::Encoder,
    channels: usize,
    source_rate_hz: u32,
    resampler: Option<Resampler>,
    /// 48 kHz interleaved samples not yet encoded.
    pending: Vec<f32>,
    /// Packets of the page being filled.
    page_packets: Vec<Vec<u8>>,
    ogg: OggWriter,
    header: Bytes,
    pre_skip: u64,
    /// 48 kHz samples per channel in the packets encoded so far.
    encoded: u64,
    /// `encoded` when the last page was sent.
    paged: u64,
    /// Source samples per channel received.
    received: u64,
}

impl OpusEncoder {
    pub fn new(
        format: StreamFormat,
        frame_size_samples: usize,
        bitrate_kbps: u32,
    ) -> Result<OpusEncoder, CodecError> {
        let layout = match format.channels {
            1 => opus::Channels::Mono,
            2 => opus::Channels::Stereo,
            n => {
                return Err(CodecError::Unsupported(format!(
                    "/stream.opus carries 1 or 2 channels and this source has {n}; \
                     /stream.flac carries up to 8"
                )));
            }
        };
        let channels = usize::from(format.channels);
        let mut encoder = opus::Encoder::new(RATE_HZ, layout, opus::Application::Audio)
            .map_err(CodecError::Opus)?;
        encoder
            .set_bitrate(opus::Bitrate::Bits(bitrate_kbps as i32 * 1000))
            .map_err(CodecError::Opus)?;
        let lookahead = encoder.get_lookahead().map_err(CodecError::Opus)?;
        let resampler = if format.rate_hz == RATE_HZ {
            None
        } else {
            Some(Resampler::new(
                format.rate_hz,
                RATE_HZ,
                channels,
                frame_size_samples,
            )?)
        };
        let pre_skip = lookahead as u64 + resampler.as_ref().map_or(0, |r| r.delay_frames() as u64);
        let mut ogg = OggWriter::new(serial_number());
        let head = opus_head(format, pre_skip as u16);
        let tags = opus_tags();
        let mut header = BytesMut::new();
        header.extend_from_slice(&ogg.page(&[&head], 0, false));
        header.extend_from_slice(&ogg.page(&[&tags], 0, false));
        Ok(OpusEncoder {
            encoder,
            channels,
            source_rate_hz: format.rate_hz,
            resampler,
            pending: Vec::with_capacity(4 * PACKET_SAMPLES * channels),
            page_packets: Vec::with_capacity(PACKETS_PER_PAGE),
            ogg,
            header: header.freeze(),
            pre_skip,
            encoded: 0,
            paged: 0,
            received: 0,
        })
    }

    /// Encodes every whole packet's worth of pending samples; sends a page each time one
    /// fills, except that with `keep_last` a full page stays open if no samples are left.
    fn encode_pending(&mut self, pages: &mut Vec<Page>, keep_last: bool) -> Result<(), CodecError> {
        let packet_len = PACKET_SAMPLES * self.channels;
        let whole = self.pending.len() / packet_len * packet_len;
        for start in (0..whole).step_by(packet_len) {
            let mut packet = vec![0u8; MAX_PACKET_BYTES];
            let len = self
                .encoder
                .encode_float(&self.pending[start..start + packet_len], &mut packet)
                .map_err(CodecError::Opus)?;
            packet.truncate(len);
            self.page_packets.push(packet);
            self.encoded += PACKET_SAMPLES as u64;
            let more = start + packet_len < whole;
            if self.page_packets.len() == PACKETS_PER_PAGE && (more || !keep_last) {
                pages.push(self.page(self.encoded, false));
            }
        }
        self.pending.drain(..whole);
        Ok(())
    }

    /// The page of the packets encoded since the last one.
    fn page(&mut self, granule: u64, last: bool) -> Page {
        let packets: Vec<&[u8]> = self.page_packets.iter().map(Vec::as_slice).collect();
        let bytes = self.ogg.page(&packets, granule, last);
        self.page_packets.clear();
        let to_source =
            |samples_48k: u64| samples_48k * u64::from(self.source_rate_hz) / u64::from(RATE_HZ);
        let source_samples = to_source(self.encoded) - to_source(self.paged);
        self.paged = self.encoded;
        Page {
            bytes,
            source_samples,
        }
    }
}

impl StreamEncoder for OpusEncoder {
    fn header(&self) -> Bytes {
        self.header.clone()
    }

    fn encode(&mut self, samples: &[f32], pages: &mut Vec<Page>) -> Result<(), CodecError> {
        match &mut self.resampler {
            Some(resampler) => resampler.process(samples, &mut self.pending)?,
            None => self.pending.extend_from_slice(samples),
        }
        self.received += (samples.len() / self.channels) as u64;
        self.encode_pending(pages, false)
    }

    fn finish(&mut self, pages: &mut Vec<Page>) -> Result<(), CodecError> {
        if let Some(resampler) = &mut self.resampler {
            resampler.flush(&mut self.pending)?;
        }
        // Decoders output pre-skip + this many samples of the stream; pad with silence to the
        // packet that holds the last of them, and trim the rest with the last granule.
        let received_48k = self.received * u64::from(RATE_HZ) / u64::from(self.source_rate_hz);
        let end = self.pre_skip + received_48k;
        let pending_frames = (self.pending.len() / self.channels) as u64;
        let needed = end.saturating_sub(self.encoded).max(pending_frames).max(1);
        let padded = needed.div_ceil(PACKET_SAMPLES as u64) as usize * PACKET_SAMPLES;
        self.pending.resize(padded * self.channels, 0.0);
        self.encode_pending(pages, true)?;
        pages.push(self.page(end.min(self.encoded), true));
        Ok(())
    }
}

/// The identification header (RFC 7845 section 5.1), channel mapping family 0.
fn opus_head(format: StreamFormat, pre_skip: u16) -> Vec<u8> {
    let mut head = Vec::with_capacity(19);
    head.extend_from_slice(b"OpusHead");
    head.push(1); // version
    head.push(format.channels as u8);
    head.extend_from_slice(&pre_skip.to_le_bytes());
    head.extend_from_slice(&format.rate_hz.to_le_bytes());
    head.extend_from_slice(&0i16.to_le_bytes()); // output gain
    head.push(0); // mapping family: mono or stereo
    head
}

/// The comment header (RFC 7845 section 5.2): the vendor and one comment naming pcmcast.
fn opus_tags() -> Vec<u8> {
    let vendor = opus::version();
    let comment = concat!("ENCODER=pcmcast ", env!("CARGO_PKG_VERSION"));
    let mut tags = Vec::with_capacity(8 + 4 + vendor.len() + 4 + 4 + comment.len());
    tags.extend_from_slice(b"OpusTags");
    tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    tags.extend_from_slice(vendor.as_bytes());
    tags.extend_from_slice(&1u32.to_le_bytes());
    tags.extend_from_slice(&(comment.len() as u32).to_le_bytes());
    tags.extend_from_slice(comment.as_bytes());
    tags
}

/// A serial number that differs from one encoder to the next, so that a client joining two
/// streams one after the other can tell them apart.
fn serial_number() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stereo(rate_hz: u32) -> StreamFormat {
        StreamFormat {
            rate_hz,
            channels: 2,
        }
    }

    #[test]
    fn the_header_is_two_pages_head_then_tags() {
        let encoder = OpusEncoder::new(stereo(44_100), 1024, 96).unwrap();
        let header = encoder.header();
        assert_eq!(&header[..4], b"OggS");
        assert_eq!(header[5], 0x02, "the first page begins the stream");
        assert_eq!(&header[28..36], b"OpusHead");
        assert_eq!(header[37], 2, "channels");
        let pre_skip = u16::from_le_bytes([header[38], header[39]]);
        assert_eq!(u64::from(pre_skip), encoder.pre_skip);
        assert!(
            pre_skip > 312,
            "look-ahead plus the resampler's delay: {pre_skip}"
        );
        assert_eq!(&header[40..44], &44_100u32.to_le_bytes());
        let second = 27 + 1 + 19;
        assert_eq!(&header[second..second + 4], b"OggS");
        let tags_at = second + 27 + 1;
        assert_eq!(&header[tags_at..tags_at + 8], b"OpusTags");
    }

    #[test]
    fn pages_hold_five_packets_and_count_granules() {
        let mut encoder = OpusEncoder::new(stereo(48_000), 480, 64).unwrap();
        let mut pages = Vec::new();
        let silence = vec![0.0f32; 480 * 2];
        for _ in 0..21 {
            encoder.encode(&silence, &mut pages).unwrap();
        }
        // 21 × 480 = 10 080 samples: 10 packets, two pages.
        assert_eq!(pages.len(), 2);
        let granule = |page: &Page| u64::from_le_bytes(page.bytes[6..14].try_into().unwrap());
        assert_eq!(granule(&pages[0]), 5 * 960);
        assert_eq!(granule(&pages[1]), 10 * 960);
        assert_eq!(pages[1].source_samples, 5 * 960);
        encoder.finish(&mut pages).unwrap();
        let last = pages.last().unwrap();
        assert_eq!(last.bytes[5], 0x04, "the last page ends the stream");
        assert_eq!(granule(last), encoder.pre_skip + 21 * 480);
    }

    #[test]
    fn more_than_two_channels_are_refused_clearly() {
        let format = StreamFormat {
            rate_hz: 48_000,
            channels: 6,
        };
        let Err(CodecError::Unsupported(message)) = OpusEncoder::new(format, 1024, 96) else {
            panic!("six channels accepted")
        };
        assert!(message.contains("1 or 2 channels"), "{message}");
    }
}
