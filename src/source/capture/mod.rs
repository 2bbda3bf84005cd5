//! Live capture with cpal: choosing the input device and its configuration, the real-time data
//! callback, and the supervisor thread that reopens the device when it fails.
//!
//! Ownership: the supervisor thread owns the cpal stream (built and dropped on that thread) and
//! parks the ring writer in `home` between streams. Each stream's data callback takes the
//! writer on loan ([`Lease`]) and gives it back when cpal drops the callback with the stream, so
//! the framer never sees the producer go away during a reconnect.
//!
//! The data callback is real-time code: it converts and pushes into the preallocated ring and
//! bumps an atomic counter. No allocation, no lock, no logging, no blocking. Errors reported
//! by cpal's error callback, or a stream that stops calling back, make the supervisor drop the
//! stream, report `reconnecting`, and build a new one with backoff.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cpal::traits::{DeviceTrait, StreamTrait};
use cpal::{SampleFormat, SizedSample, StreamConfig};
use tokio_util::sync::CancellationToken;

mod device;

use super::SourceInfo;
use super::backoff::{Backoff, sleep_unless_cancelled};
use super::convert::CaptureSample;
use crate::frame::StreamFormat;
use crate::ring::RingWriter;
use crate::stats::{SourceState, Stats};
pub use device::{DeviceChoice, DeviceReport, list_devices};
use device::{QuietAlsa, choose_config, find_device, label};

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("there is no default input device")]
    NoDefaultDevice,
    #[error("cannot list the input devices")]
    List(#[source] cpal::Error),
    #[error("no input device matches '{query}'; input devices: {candidates}")]
    NoMatch { query: String, candidates: String },
    #[error(
        "'{query}' matches several input devices: {candidates}; give the id or more of the name"
    )]
    Ambiguous { query: String, candidates: String },
    #[error("cannot read the configurations of input device {device}")]
    Configs {
        device: String,
        #[source]
        source: cpal::Error,
    },
    #[error("input device {device} cannot capture {wanted}; it supports: {supported}")]
    UnsupportedConfig {
        device: String,
        wanted: String,
        supported: String,
    },
    #[error("input device {device} delivers {format} samples, which pcmcast cannot convert")]
    UnsupportedFormat {
        device: String,
        format: SampleFormat,
    },
    #[error("cannot open input device {device}")]
    Open {
        device: String,
        #[source]
        source: cpal::Error,
    },
}

/// An input device with the configuration pcmcast will capture with.
pub struct Capture {
    pub info: SourceInfo,
    device: cpal::Device,
    config: StreamConfig,
    sample_format: SampleFormat,
}

/// Finds the device, chooses its configuration and opens it once to prove it works.
pub fn open(
    choice: &DeviceChoice,
    rate_hz: Option<u32>,
    channels: Option<u16>,
) -> Result<Capture, CaptureError> {
    let _quiet = QuietAlsa::new();
    let host = cpal::default_host();
    let device = find_device(&host, choice)?;
    let label = label(&device);
    let (config, sample_format) = choose_config(&device, &label, rate_hz, channels)?;
    // Opening and dropping a stream here turns "device busy" or "no such card" into a start-up
    // error instead of an endless reconnect loop.
    let probe = device
        .build_input_stream_raw(config, sample_format, |_, _| {}, |_| {}, None)
        .map_err(|source| CaptureError::Open {
            device: label.clone(),
            source,
        })?;
    drop(probe);
    Ok(Capture {
        info: SourceInfo {
            kind: "capture",
            name: label,
            format: StreamFormat {
                rate_hz: config.sample_rate,
                channels: config.channels,
            },
        },
        device,
        config,
        sample_format,
    })
}

/// What the data and error callbacks tell the supervisor.
#[derive(Default)]
pub struct Activity {
    /// Data callbacks so far; the supervisor watches it move.
    pub callbacks: AtomicU64,
    failed: AtomicBool,
    /// The error's text. Locked only by the error callback (not the real-time data path) and
    /// the supervisor.
    error: Mutex<Option<String>>,
}

impl Activity {
    fn record_error(&self, error: &cpal::Error) {
        // A dead ALSA stream reports its error in a tight loop until the supervisor drops it
        // (up to one watch interval): keep only the first.
        if self.failed.load(Relaxed) {
            return;
        }
        if let Ok(mut slot) = self.error.lock() {
            slot.get_or_insert_with(|| error.to_string());
        }
        self.failed.store(true, Relaxed);
    }

    fn error(&self) -> Option<String> {
        if !self.failed.load(Relaxed) {
            return None;
        }
        let text = self.error.lock().ok().and_then(|slot| slot.clone());
        Some(text.unwrap_or_else(|| "device error".to_owned()))
    }
}

/// The whole data callback: convert, push, count. Public so that a test can prove it does
/// not allocate.
pub fn on_input<S: CaptureSample>(writer: &mut RingWriter, activity: &Activity, data: &[S]) {
    writer.push_iter(data.iter().map(|s| s.to_f32()), data.len());
    activity.callbacks.fetch_add(1, Relaxed);
}

/// The ring writer on loan to one stream's data callback; returned home when cpal drops it.
struct Lease {
    writer: Option<RingWriter>,
    home: Arc<Mutex<Option<RingWriter>>>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Ok(mut home) = self.home.lock() {
            *home = self.writer.take();
        }
    }
}

/// How long a new stream may take to deliver its first samples, and how long a running one may
/// go silent, before the supervisor declares it failed.
const FIRST_CALLBACK_LIMIT: Duration = Duration::from_secs(3);
const SILENCE_LIMIT: Duration = Duration::from_millis(500);
const WATCH_INTERVAL: Duration = Duration::from_millis(20);

impl Capture {
    /// Runs capture on the calling thread until `cancel` fires, reopening the device with
    /// backoff whenever it fails.
    pub fn supervise(self, writer: RingWriter, stats: &Stats, cancel: &CancellationToken) {
        let _quiet = QuietAlsa::new();
        let home = Arc::new(Mutex::new(Some(writer)));
        let mut backoff = Backoff::new();
        while !cancel.is_cancelled() {
            let activity = Arc::new(Activity::default());
            let lease = Lease {
                writer: home.lock().ok().and_then(|mut slot| slot.take()),
                home: home.clone(),
            };
            let fault = match self.start_stream(lease, activity.clone()) {
                Ok(stream) => {
                    let fault = watch(&activity, stats, cancel);
                    drop(stream);
                    fault
                }
                Err(error) => Some(format!("cannot reopen it: {error}")),
            };
            let Some(fault) = fault else { return };
            if activity.callbacks.load(Relaxed) > 0 {
                backoff.reset();
            }
            stats.set_source_state(SourceState::Reconnecting);
            let delay = backoff.next_delay();
            tracing::warn!(device = %self.info.name, "capture failed: {fault}; reopening in {delay:?}");
            sleep_unless_cancelled(delay, cancel);
        }
    }

    fn start_stream(
        &self,
        lease: Lease,
        activity: Arc<Activity>,
    ) -> Result<cpal::Stream, cpal::Error> {
        use SampleFormat::*;
        let stream = match self.sample_format {
            I8 => self.build::<i8>(lease, activity),
            I16 => self.build::<i16>(lease, activity),
            I24 => self.build::<cpal::I24>(lease, activity),
            I32 => self.build::<i32>(lease, activity),
            I64 => self.build::<i64>(lease, activity),
            U8 => self.build::<u8>(lease, activity),
            U16 => self.build::<u16>(lease, activity),
            U24 => self.build::<cpal::U24>(lease, activity),
            U32 => self.build::<u32>(lease, activity),
            U64 => self.build::<u64>(lease, activity),
            F32 => self.build::<f32>(lease, activity),
            F64 => self.build::<f64>(lease, activity),
            other => unreachable!("open() refuses {other} samples"),
        }?;
        stream.play()?;
        Ok(stream)
    }

    fn build<S: CaptureSample + SizedSample>(
        &self,
        mut lease: Lease,
        activity: Arc<Activity>,
    ) -> Result<cpal::Stream, cpal::Error> {
        let errors = activity.clone();
        self.device.build_input_stream::<S, _, _>(
            self.config,
            move |data: &[S], _: &cpal::InputCallbackInfo| {
                if let Some(writer) = lease.writer.as_mut() {
                    on_input(writer, &activity, data);
                }
            },
            move |error| errors.record_error(&error),
            None,
        )
    }
}

/// Watches a running stream. Returns `None` on cancellation, or what went wrong.
fn watch(activity: &Activity, stats: &Stats, cancel: &CancellationToken) -> Option<String> {
    let opened = Instant::now();
    let mut seen = 0;
    let mut last_change = opened;
    loop {
        if cancel.is_cancelled() {
            return None;
        }
        thread::sleep(WATCH_INTERVAL);
        if let Some(error) = activity.error() {
            return Some(error);
        }
        let callbacks = activity.callbacks.load(Relaxed);
        let now = Instant::now();
        if callbacks != seen {
            if seen == 0 {
                stats.set_source_state(SourceState::Running);
            }
            seen = callbacks;
            last_change = now;
        } else if seen == 0 && now - opened > FIRST_CALLBACK_LIMIT {
            return Some(format!(
                "no audio within {FIRST_CALLBACK_LIMIT:?} of opening"
            ));
        } else if seen > 0 && now - last_change > SILENCE_LIMIT {
            return Some(format!("no audio for {SILENCE_LIMIT:?}"));
        }
    }
}
