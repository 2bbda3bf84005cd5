//! The compressed streams, `/stream.opus` and `/stream.flac`: their encoders, and the
//! registry that runs one encoder per stream for all its listeners.
//!
//! ```text
//! hub ──Arc<Frame>──▶ encoder thread (one per codec and bitrate) ──Page──▶ broadcast ──▶ listeners
//!                     started by the first listener,                        (bounded;      header, then
//!                     stopped when the last one leaves                       lag ⇒ skip)   pages from the next
//!                                                                                           page boundary
//! ```
//!
//! An encoder turns frames into [`Page`]s: the units a listener can start at (whole Ogg pages
//! for Opus, one FLAC frame for FLAC), each a shared `Bytes` that every listener of the stream
//! is sent without a copy. The stream header (Opus's two header pages, FLAC's `fLaC` and
//! STREAMINFO) is made before the first page and kept aside, so a listener that joins
//! mid-stream gets the header, then pages from the next one on. See `registry.rs` for who owns
//! the threads and what happens when an encoder fails.
//!
//! - [`flac`]: a native FLAC stream, 24-bit, lossless.
//! - [`opus`]: Ogg/Opus at 48 kHz through libopus, the source resampled by [`resample`] if
//!   it runs at another rate; pages written by `ogg.rs`.

pub mod flac;
mod ogg;
pub mod opus;
mod registry;
pub mod resample;

use bytes::Bytes;

use crate::frame::StreamFormat;
use crate::stats::Endpoint;
pub use registry::{EncodedStream, EncoderStatus, Encoders, Factory, OpenError};

/// A piece of an encoded stream that a listener can start at, shared by all its listeners.
#[derive(Clone, Debug)]
pub struct Page {
    pub bytes: Bytes,
    /// How much audio the page completes, in source samples per channel (for `frames=N`).
    pub source_samples: u64,
}

/// One compressed stream: a codec and its settings. Each has at most one encoder running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Codec {
    Flac,
    Opus { bitrate_kbps: u32 },
}

impl Codec {
    pub fn endpoint(self) -> Endpoint {
        match self {
            Codec::Flac => Endpoint::Flac,
            Codec::Opus { .. } => Endpoint::Opus,
        }
    }

    pub fn name(self) -> &'static str {
        self.endpoint().name()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The source's format cannot be carried by this codec; the message says why.
    #[error("{0}")]
    Unsupported(String),
    #[error("libopus failed")]
    Opus(#[source] ::opus::Error),
    #[error("the resampler failed")]
    Resample(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A codec's encoder, fed every frame of the hub on its own thread.
pub trait StreamEncoder: Send {
    /// What every listener gets before the first page.
    fn header(&self) -> Bytes;
    /// Encodes the interleaved `samples` of one frame, pushing the pages they complete.
    fn encode(&mut self, samples: &[f32], pages: &mut Vec<Page>) -> Result<(), CodecError>;
    /// Encodes what is left at the end of the source and ends the stream.
    fn finish(&mut self, pages: &mut Vec<Page>) -> Result<(), CodecError>;
}

/// The real encoders: what [`Encoders::new`] runs.
pub fn new_encoder(
    codec: Codec,
    format: StreamFormat,
    frame_size_samples: usize,
) -> Result<Box<dyn StreamEncoder>, CodecError> {
    Ok(match codec {
        Codec::Flac => Box::new(flac::FlacEncoder::new(format, frame_size_samples)?),
        Codec::Opus { bitrate_kbps } => Box::new(opus::OpusEncoder::new(
            format,
            frame_size_samples,
            bitrate_kbps,
        )?),
    })
}

impl StreamEncoder for flac::FlacEncoder {
    fn header(&self) -> Bytes {
        flac::FlacEncoder::header(self)
    }

    fn encode(&mut self, samples: &[f32], pages: &mut Vec<Page>) -> Result<(), CodecError> {
        self.push(samples, pages);
        Ok(())
    }

    fn finish(&mut self, pages: &mut Vec<Page>) -> Result<(), CodecError> {
        flac::FlacEncoder::finish(self, pages);
        Ok(())
    }
}
