//! What is pushed to Icecast: a [`PushFormat`] names the stream's encoding and Content-Type, and
//! makes a fresh [`PushEncoder`] for every connection, which turns the hub's frames into the
//! bytes of the request body.
//!
//! # Where Ogg/Opus and FLAC plug in
//!
//! All in this file: a new encoding is a variant of [`PushFormat`] with its arms — the
//! `--icecast-format` name, the Content-Type (`audio/ogg` for Ogg/Opus and Ogg/FLAC, which
//! Icecast's Ogg handler parses, so that it replays the header pages to every listener and
//! starts each on a page: `aligned_for_late_listeners` is true), the extension in
//! [`PushFormat::for_extension`] (which refuses `.opus`, `.ogg`, `.oga` and `.flac` until
//! then) — and the arm of [`PushFormat::encoder`] that returns its [`PushEncoder`]: `header`
//! gives the stream's header pages (OpusHead and OpusTags; FLAC's STREAMINFO), `encode` the
//! pages that one frame completes (none while a page fills). The encoder is made afresh for
//! every connection and its header sent first, so each connection is a whole stream for
//! Icecast. Nothing outside this file changes.

use bytes::Bytes;

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
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error(
        "the mount's .{0} extension asks for an encoding this build cannot push yet; give \
         --icecast-format pcm (or wav) to push that to this mount anyway"
    )]
    NotYet(String),
}

impl PushFormat {
    /// The format a mount's extension implies: `.wav` is WAV, no or any other extension raw
    /// PCM; `.opus`, `.ogg`, `.oga` and `.flac` are refused until their encoders exist.
    pub fn for_extension(extension: Option<&str>) -> Result<PushFormat, FormatError> {
        match extension {
            Some("wav") => Ok(PushFormat::Wav),
            Some(compressed @ ("opus" | "ogg" | "oga" | "flac")) => {
                Err(FormatError::NotYet(compressed.to_owned()))
            }
            _ => Ok(PushFormat::Pcm),
        }
    }

    /// The `--icecast-format` name, also shown by `/status`.
    pub fn name(self) -> &'static str {
        match self {
            PushFormat::Pcm => "pcm",
            PushFormat::Wav => "wav",
        }
    }

    /// The request's Content-Type, from which Icecast picks its format handler.
    pub fn content_type(self) -> &'static str {
        match self {
            PushFormat::Pcm => "application/octet-stream",
            PushFormat::Wav => "audio/wav",
        }
    }

    /// Whether every listener that joins Icecast's mount late starts on a whole sample frame:
    /// true when Icecast's blocks (`ICECAST_GENERIC_BLOCK_BYTES`) and the header both
    /// end on one, e.g. s16le with 1, 2, 4, 5 or 7 channels; false with 3 or 6.
    pub fn aligned_for_late_listeners(self, format: StreamFormat) -> bool {
        let sample_frame_bytes = 2 * usize::from(format.channels);
        let header_bytes = match self {
            PushFormat::Pcm => 0,
            PushFormat::Wav => 44,
        };
        ICECAST_GENERIC_BLOCK_BYTES % sample_frame_bytes == 0
            && header_bytes % sample_frame_bytes == 0
    }

    /// A new encoder for one connection.
    pub fn encoder(self, format: StreamFormat) -> Box<dyn PushEncoder> {
        match self {
            PushFormat::Pcm => Box::new(S16le { header: None }),
            PushFormat::Wav => Box::new(S16le {
                header: Some(encode::wav_header(
                    PcmFormat::S16le,
                    format.rate_hz,
                    format.channels,
                )),
            }),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_extension_picks_the_format() {
        assert_eq!(PushFormat::for_extension(None), Ok(PushFormat::Pcm));
        assert_eq!(PushFormat::for_extension(Some("pcm")), Ok(PushFormat::Pcm));
        assert_eq!(PushFormat::for_extension(Some("wav")), Ok(PushFormat::Wav));
        for compressed in ["opus", "ogg", "oga", "flac"] {
            assert_eq!(
                PushFormat::for_extension(Some(compressed)),
                Err(FormatError::NotYet(compressed.to_owned()))
            );
        }
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
        let mut wav = PushFormat::Wav.encoder(format);
        assert_eq!(wav.header(), encode::wav_header(PcmFormat::S16le, 8_000, 1));
        let mut pcm = PushFormat::Pcm.encoder(format);
        assert!(pcm.header().is_empty());
        let expected = [16_384i16.to_le_bytes(), (-16_384i16).to_le_bytes()].concat();
        assert_eq!(pcm.encode(&frame).as_ref(), expected.as_slice());
        assert_eq!(wav.encode(&frame).as_ref(), expected.as_slice());
    }
}
