//! What is pushed to Icecast: a [`PushFormat`] names the stream's encoding and Content-Type, and
//! makes a fresh [`PushEncoder`] for every connection, which turns the hub's frames into the
//! bytes of the request body.
//!
//! # Encodings
//!
//! A variant of [`PushFormat`] has its `--icecast-format` name, its Content-Type, the mount
//! extensions that imply it ([`PushFormat::for_extension`]) and an arm of
//! [`PushFormat::encoder`] that returns its [`PushEncoder`]: `header` gives what starts the
//! stream, `encode` the bytes one frame completes (none while a page fills). The encoder is
//! made afresh for every connection and its header sent first, so each connection is a whole
//! stream for Icecast.
//!
//! Ogg/Opus is the one to push: Icecast parses Ogg (`audio/ogg`), keeps the header pages for
//! every listener who joins later and starts each on a page, and it is 96 kbit/s instead of
//! 1.5 Mbit/s. Its encoder is the one behind `/stream.opus` ([`crate::codec`]), a separate
//! instance per connection. Native FLAC is not pushed: Icecast would treat it as an opaque
//! stream and start late listeners without its STREAMINFO header.

use bytes::{Bytes, BytesMut};

use crate::codec::{self, Codec, CodecError, Page, StreamEncoder};
use crate::encode::{self, PcmFormat};
use crate::frame::{Frame, StreamFormat};

/// Icecast 2.4 stores a stream of a format it does not parse (its generic handler) in blocks of
/// this many bytes, counted from the start of the source's connection, and starts each new
/// listener (and each relay) at one of them.
const ICECAST_GENERIC_BLOCK_BYTES: usize = 1400;

/// The encodings pcmcast can push, chosen by `--icecast-format` or the mount's extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PushFormat {
    /// Raw interleaved s16le PCM as `application/octet-stream`: Icecast passes it through as a
    /// generic stream; a listener decodes it with `ffmpeg -f s16le -ar RATE -ac CHANNELS`.
    Pcm,
    /// An endless WAV (44-byte header, then s16le) as `audio/wav`. Icecast does not keep the
    /// header for listeners who join later: only those there at the start get it.
    Wav,
    /// Ogg/Opus as `audio/ogg`, 48 kHz (other source rates resampled), 96 kbit/s; 1 or 2
    /// channels. Every listener of the mount can join at any time.
    Opus,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error(
        "the mount's .{0} extension asks for an encoding pcmcast cannot push (Icecast needs \
         FLAC in Ogg); give --icecast-format opus, pcm or wav to push that to this mount anyway"
    )]
    NotYet(String),
}

impl PushFormat {
    /// The format a mount's extension implies: `.opus`, `.ogg` and `.oga` are Ogg/Opus,
    /// `.wav` is WAV, no or any other extension raw PCM; `.flac` is refused.
    pub fn for_extension(extension: Option<&str>) -> Result<PushFormat, FormatError> {
        match extension {
            Some("opus" | "ogg" | "oga") => Ok(PushFormat::Opus),
            Some("wav") => Ok(PushFormat::Wav),
            Some(flac @ "flac") => Err(FormatError::NotYet(flac.to_owned())),
            _ => Ok(PushFormat::Pcm),
        }
    }

    /// The `--icecast-format` name, also shown by `/status`.
    pub fn name(self) -> &'static str {
        match self {
            PushFormat::Pcm => "pcm",
            PushFormat::Wav => "wav",
            PushFormat::Opus => "opus",
        }
    }

    /// The request's Content-Type, from which Icecast picks its format handler.
    pub fn content_type(self) -> &'static str {
        match self {
            PushFormat::Pcm => "application/octet-stream",
            PushFormat::Wav => "audio/wav",
            PushFormat::Opus => "audio/ogg",
        }
    }

    /// Whether every listener that joins Icecast's mount late starts on a whole sample frame:
    /// true when Icecast's blocks (`ICECAST_GENERIC_BLOCK_BYTES`) and the header both
    /// end on one, e.g. s16le with 1, 2, 4, 5 or 7 channels; false with 3 or 6.
    /// Ogg: always, Icecast starts each listener on a page after the header pages.
    pub fn aligned_for_late_listeners(self, format: StreamFormat) -> bool {
        let sample_frame_bytes = 2 * usize::from(format.channels);
        let header_bytes = match self {
            PushFormat::Pcm => 0,
            PushFormat::Wav => 44,
            PushFormat::Opus => return true,
        };
        ICECAST_GENERIC_BLOCK_BYTES % sample_frame_bytes == 0
            && header_bytes % sample_frame_bytes == 0
    }

    /// A new encoder for one connection, of a stream in `format` cut in frames of
    /// `frame_size_samples`. Fails only where the codec cannot carry `format` (Opus: more than
    /// 2 channels), which [`crate::Pcmcast::open`] checks before anything starts.
    pub fn encoder(
        self,
        format: StreamFormat,
        frame_size_samples: usize,
    ) -> Result<Box<dyn PushEncoder>, CodecError> {
        Ok(match self {
            PushFormat::Pcm => Box::new(S16le { header: None }),
            PushFormat::Wav => Box::new(S16le {
                header: Some(encode::wav_header(
                    PcmFormat::S16le,
                    format.rate_hz,
                    format.channels,
                )),
            }),
            PushFormat::Opus => Box::new(Compressed {
                encoder: codec::new_encoder(
                    Codec::Opus {
                        bitrate_kbps: codec::opus::DEFAULT_BITRATE_KBPS,
                    },
                    format,
                    frame_size_samples,
                )?,
                pages: Vec::new(),
                failed: false,
            }),
        })
    }
}

/// Turns frames into one connection's request body. Runs on the push task, never on the
/// source's or the framer's thread: it may take its time, and a push that falls behind is
/// skipped forward by the hub (a gap in the frames' `pts`).
pub trait PushEncoder: Send {
    /// The bytes that start the body, sent before any frame (empty if none).
    fn header(&mut self) -> Bytes;
    /// The body bytes for one frame (empty while an encoder gathers a packet).
    fn encode(&mut self, frame: &Frame) -> Bytes;
}

/// Raw s16le, after an optional header.
struct S16le {
    header: Option<Bytes>,
}

impl PushEncoder for S16le {
    fn header(&mut self) -> Bytes {
        self.header.clone().unwrap_or_default()
    }

    fn encode(&mut self, frame: &Frame) -> Bytes {
        // The frame's shared encoding: the same bytes `/stream.pcm?format=s16le` listeners get.
        frame.pcm(PcmFormat::S16le).clone()
    }
}

/// A codec's stream encoder, its pages sent as they complete.
struct Compressed {
    encoder: Box<dyn StreamEncoder>,
    pages: Vec<Page>,
    /// The codec failed: nothing more is sent on this connection, so Icecast times it out and
    /// the push reconnects with a fresh encoder.
    failed: bool,
}

impl PushEncoder for Compressed {
    fn header(&mut self) -> Bytes {
        self.encoder.header()
    }

    fn encode(&mut self, frame: &Frame) -> Bytes {
        if self.failed {
            return Bytes::new();
        }
        if let Err(error) = self.encoder.encode(&frame.samples, &mut self.pages) {
            tracing::error!(
                "the Icecast push's encoder failed: {:#}",
                anyhow::Error::new(error)
            );
            self.failed = true;
            self.pages.clear();
            return Bytes::new();
        }
        if self.pages.len() == 1 {
            return self.pages.pop().map(|page| page.bytes).unwrap_or_default();
        }
        let mut bytes = BytesMut::new();
        for page in self.pages.drain(..) {
            bytes.extend_from_slice(&page.bytes);
        }
        bytes.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_extension_picks_the_format() {
        assert_eq!(PushFormat::for_extension(None), Ok(PushFormat::Pcm));
        assert_eq!(PushFormat::for_extension(Some("pcm")), Ok(PushFormat::Pcm));
        assert_eq!(PushFormat::for_extension(Some("wav")), Ok(PushFormat::Wav));
        for ogg in ["opus", "ogg", "oga"] {
            assert_eq!(PushFormat::for_extension(Some(ogg)), Ok(PushFormat::Opus));
        }
        assert_eq!(
            PushFormat::for_extension(Some("flac")),
            Err(FormatError::NotYet("flac".to_owned()))
        );
    }

    #[test]
    fn late_listeners_are_aligned_when_icecast_blocks_hold_whole_sample_frames() {
        let aligned = |format: PushFormat, channels| {
            format.aligned_for_late_listeners(StreamFormat {
                rate_hz: 48_000,
                channels,
            })
        };
        for channels in [1, 2, 4, 5, 7] {
            assert!(aligned(PushFormat::Pcm, channels), "{channels} channels");
        }
        for channels in [3, 6, 8] {
            assert!(!aligned(PushFormat::Pcm, channels), "{channels} channels");
        }
        assert!(aligned(PushFormat::Wav, 2));
        assert!(
            !aligned(PushFormat::Wav, 5),
            "the 44-byte header shifts 10-byte frames"
        );
    }

    #[test]
    fn wav_starts_with_its_header_and_pcm_with_nothing() {
        let format = StreamFormat {
            rate_hz: 8_000,
            channels: 1,
        };
        let frame = Frame::new(0, 0, 0.0, format, vec![0.5, -0.5].into());
        let mut wav = PushFormat::Wav.encoder(format, 2).unwrap();
        assert_eq!(wav.header(), encode::wav_header(PcmFormat::S16le, 8_000, 1));
        let mut pcm = PushFormat::Pcm.encoder(format, 2).unwrap();
        assert!(pcm.header().is_empty());
        let expected = [16_384i16.to_le_bytes(), (-16_384i16).to_le_bytes()].concat();
        assert_eq!(pcm.encode(&frame).as_ref(), expected.as_slice());
        assert_eq!(wav.encode(&frame).as_ref(), expected.as_slice());
    }

    #[test]
    fn opus_starts_with_its_header_pages_then_sends_ogg_pages() {
        let format = StreamFormat {
            rate_hz: 48_000,
            channels: 2,
        };
        let mut opus = PushFormat::Opus.encoder(format, 960).unwrap();
        let header = opus.header();
        assert!(header.starts_with(b"OggS"), "an Ogg page");
        assert!(header.windows(8).any(|w| w == b"OpusHead"));
        assert!(header.windows(8).any(|w| w == b"OpusTags"));
        let mut body = Vec::new();
        for seq in 0..50 {
            let frame = Frame::new(seq, seq * 960, 0.0, format, vec![0.25; 2 * 960].into());
            body.extend_from_slice(&opus.encode(&frame));
        }
        assert!(body.starts_with(b"OggS"), "pages, from the first byte");
        let too_many = StreamFormat {
            rate_hz: 48_000,
            channels: 6,
        };
        assert!(PushFormat::Opus.encoder(too_many, 960).is_err());
    }
}
