//! Sources: the one producer that writes interleaved f32 samples into the ring.
//!
//! A source is opened (and validated) before the server binds, so bad input fails fast, then
//! started on its own thread where it runs from start-up whether or not anyone listens. Live
//! capture is driven by the device's clock ([`capture`]), a relay by its upstream's pace
//! ([`relay`]); both reopen what fails with the same `backoff`. The file and synthetic
//! sources are [`Generator`]s driven by [`run_paced`], which produces exactly as many samples
//! as the monotonic clock says are due, waking when each frame's last sample is due.

pub(crate) mod backoff;
pub mod capture;
pub mod convert;
mod pacer;
pub mod relay;
pub mod tone;
pub mod wav;

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::frame::StreamFormat;
use crate::realtime::{Realtime, Role};
use crate::ring::RingWriter;
use crate::stats::Stats;
use capture::{Capture, CaptureError, DeviceChoice};
pub use pacer::Pacer;
use relay::{Relay, RelayError, RelayUrl};

/// Which source to run, as chosen on the command line.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceSpec {
    /// Live capture from an input device, at the requested rate and channel count if given.
    /// With `fallback_to_demo`, an unusable device means the demo recording instead.
    Capture {
        device: DeviceChoice,
        rate_hz: Option<u32>,
        channels: Option<u16>,
        fallback_to_demo: bool,
    },
    /// The bundled demo recording, looped.
    Demo,
    Wav {
        path: PathBuf,
        looping: bool,
    },
    Tone {
        hz: f64,
        format: StreamFormat,
    },
    /// Another pcmcast's stream.
    Relay {
        url: RelayUrl,
    },
}

/// What `/status` says about the source.
#[derive(Clone, Debug)]
pub struct SourceInfo {
    /// `capture`, `wav`, `tone`, `demo` or `relay`.
    pub kind: &'static str,
    /// Human-readable: the device, the file path, the tone's description or the upstream URL
    /// (without its query, which may carry a token).
    pub name: String,
    pub format: StreamFormat,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read WAV file {path}")]
    WavOpen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("WAV file {path} is not usable: {reason}")]
    WavUnusable { path: PathBuf, reason: String },
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error("cannot relay {url}")]
    Relay {
        /// The URL as shown (without its query).
        url: String,
        #[source]
        source: RelayError,
    },
    #[error("cannot start the source thread")]
    Thread(#[source] std::io::Error),
}

/// A paced source: fills buffers with its next samples on demand.
pub trait Generator: Send + 'static {
    /// Writes the next samples into `out` (a whole number of sample frames) and returns how
    /// many it wrote. Fewer than `out.len()` means the source has ended.
    fn fill(&mut self, out: &mut [f32]) -> usize;
}

/// An opened, validated source, ready to start.
pub struct OpenSource {
    pub info: SourceInfo,
    producer: Producer,
}

enum Producer {
    Paced(Box<dyn Generator>),
    Capture(Capture),
    Relay(Relay),
}

impl OpenSource {
    fn paced(info: SourceInfo, generator: Box<dyn Generator>) -> OpenSource {
        OpenSource {
            info,
            producer: Producer::Paced(generator),
        }
    }

    pub fn open(spec: &SourceSpec) -> Result<OpenSource, SourceError> {
        match spec {
            SourceSpec::Capture {
                device,
                rate_hz,
                channels,
                fallback_to_demo,
            } => match capture::open(device, *rate_hz, *channels) {
                Ok(capture) => Ok(OpenSource {
                    info: capture.info.clone(),
                    producer: Producer::Capture(capture),
                }),
                Err(error) if *fallback_to_demo => {
                    tracing::warn!(
                        "no usable input device ({:#}); replaying the bundled demo recording instead",
                        anyhow::Error::new(error)
                    );
                    wav::open_demo()
                }
                Err(error) => Err(error.into()),
            },
            SourceSpec::Demo => wav::open_demo(),
            SourceSpec::Wav { path, looping } => wav::open_file(path, *looping),
            SourceSpec::Tone { hz, format } => Ok(tone::open(*hz, *format)),
            SourceSpec::Relay { url } => match relay::open(url) {
                Ok(relay) => Ok(OpenSource {
                    info: relay.info.clone(),
                    producer: Producer::Relay(relay),
                }),
                Err(source) => Err(SourceError::Relay {
                    url: url.to_string(),
                    source,
                }),
            },
        }
    }

    /// Starts the source on its own thread, writing into `writer` until it ends or `cancel`
    /// fires. Dropping the writer at the end tells the framer that no more samples come.
    /// `frame_samples` (per channel) is the framer's frame size: a paced source produces each
    /// frame's samples the moment the last of them is due, so that no frame waits for a tick.
    /// A paced source runs real-time if `realtime` asks for it and the system permits it (a
    /// device's samples come from its driver's thread, a relay's from the network).
    pub fn start(
        self,
        writer: RingWriter,
        frame_samples: usize,
        stats: Arc<Stats>,
        cancel: CancellationToken,
        realtime: bool,
    ) -> Result<JoinHandle<()>, SourceError> {
        let format = self.info.format;
        let thread = thread::Builder::new().name("pcmcast-source".into());
        match self.producer {
            Producer::Paced(generator) => thread.spawn(move || {
                let _realtime = Realtime::enter_if(realtime, Role::Source, &stats);
                run_paced(generator, format, frame_samples, writer, &cancel)
            }),
            Producer::Capture(capture) => {
                thread.spawn(move || capture.supervise(writer, &stats, &cancel))
            }
            Producer::Relay(relay) => {
                thread.spawn(move || relay.supervise(writer, &stats, &cancel))
            }
        }
        .map_err(SourceError::Thread)
    }
}

/// The longest a paced source sleeps, so that it notices `cancel` soon even with long frames.
const MAX_SLEEP: Duration = Duration::from_millis(50);

/// Drives a generator in real time: produces exactly the samples the clock says are due since
/// start, then sleeps until the last sample of the next frame is due. Frames are complete the
/// moment they can be, and sleeping late never accumulates drift.
fn run_paced(
    mut generator: Box<dyn Generator>,
    format: StreamFormat,
    frame_samples: usize,
    mut writer: RingWriter,
    cancel: &CancellationToken,
) {
    let channels = usize::from(format.channels);
    let chunk_frames = (format.rate_hz as usize / 50).max(1);
    let mut scratch = vec![0.0f32; chunk_frames * channels];
    let mut pacer = Pacer::start(format.rate_hz);
    let frame_samples = frame_samples.max(1) as u64;
    while !cancel.is_cancelled() {
        let mut due_frames = pacer.due();
        while due_frames > 0 {
            let n = due_frames.min(chunk_frames as u64) as usize * channels;
            let written = generator.fill(&mut scratch[..n]);
            writer.push(&scratch[..written]);
            if written < n {
                return;
            }
            due_frames -= (n / channels) as u64;
        }
        let next_frame_end = (pacer.produced() / frame_samples + 1) * frame_samples;
        let wait = pacer
            .instant_of(next_frame_end)
            .saturating_duration_since(Instant::now());
        thread::sleep(wait.min(MAX_SLEEP));
    }
}
