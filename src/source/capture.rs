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

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{BufferSize, SampleFormat, SizedSample, StreamConfig, SupportedBufferSize};
use tokio_util::sync::CancellationToken;

use super::SourceInfo;
use super::convert::CaptureSample;
use crate::frame::StreamFormat;
use crate::ring::RingWriter;
use crate::stats::{SourceState, Stats};

/// Which input device to open.
#[derive(Clone, Debug, PartialEq)]
pub enum DeviceChoice {
    /// The host's default input device.
    Default,
    /// A cpal device id (`alsa:hw:1,0`) or a case-insensitive substring of a device's name.
    Named(String),
}

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

/// The device buffer to ask for: about 5 ms at 48 kHz, so a frame's last sample reaches the
/// framer a few milliseconds after it was captured.
const WANTED_BUFFER_FRAMES: u32 = 256;

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

/// `id (name)` of a device, for messages and `/status`.
fn label(device: &cpal::Device) -> String {
    let id = device
        .id()
        .map_or_else(|_| "unknown id".to_owned(), |id| id.to_string());
    match device.description() {
        Ok(description) => format!("{id} ({})", description.name()),
        Err(_) => id,
    }
}

fn find_device(host: &cpal::Host, choice: &DeviceChoice) -> Result<cpal::Device, CaptureError> {
    let query = match choice {
        DeviceChoice::Default => {
            return host
                .default_input_device()
                .ok_or(CaptureError::NoDefaultDevice);
        }
        DeviceChoice::Named(query) if query.eq_ignore_ascii_case("default") => {
            return host
                .default_input_device()
                .ok_or(CaptureError::NoDefaultDevice);
        }
        DeviceChoice::Named(query) => query,
    };
    if let Some(device) = query
        .parse::<cpal::DeviceId>()
        .ok()
        .and_then(|id| host.device_by_id(&id))
    {
        return Ok(device);
    }
    let devices: Vec<cpal::Device> = host.input_devices().map_err(CaptureError::List)?.collect();
    let wanted = query.to_lowercase();
    let name = |device: &cpal::Device| device.description().map(|d| d.name().to_lowercase());
    let exact: Vec<&cpal::Device> = devices
        .iter()
        .filter(|d| name(d).is_ok_and(|n| n == wanted))
        .collect();
    let matches: Vec<&cpal::Device> = if exact.is_empty() {
        devices
            .iter()
            .filter(|d| name(d).is_ok_and(|n| n.contains(&wanted)))
            .collect()
    } else {
        exact
    };
    let list = |devices: &[&cpal::Device]| {
        let labels: Vec<String> = devices.iter().map(|d| label(d)).collect();
        if labels.is_empty() {
            "none".to_owned()
        } else {
            labels.join(", ")
        }
    };
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(CaptureError::NoMatch {
            query: query.clone(),
            candidates: list(&devices.iter().collect::<Vec<_>>()),
        }),
        several => Err(CaptureError::Ambiguous {
            query: query.clone(),
            candidates: list(several),
        }),
    }
}

/// The configuration to capture with: the device's default unless `--rate`/`--channels` ask
/// for something else, preferring the default sample format, then f32.
fn choose_config(
    device: &cpal::Device,
    label: &str,
    rate_hz: Option<u32>,
    channels: Option<u16>,
) -> Result<(StreamConfig, SampleFormat), CaptureError> {
    let configs_error = |source| CaptureError::Configs {
        device: label.to_owned(),
        source,
    };
    let default = device.default_input_config().map_err(configs_error)?;
    let ranges: Vec<cpal::SupportedStreamConfigRange> = device
        .supported_input_configs()
        .map_err(configs_error)?
        .collect();
    let rate_hz = rate_hz.unwrap_or(default.sample_rate());
    let channels = channels.unwrap_or(default.channels());
    let fits = |range: &&cpal::SupportedStreamConfigRange| {
        range.channels() == channels && range.contains_rate(rate_hz)
    };
    let usable: Vec<&cpal::SupportedStreamConfigRange> = ranges
        .iter()
        .filter(fits)
        .filter(|r| convertible(r.sample_format()))
        .collect();
    let chosen = usable
        .iter()
        .find(|r| r.sample_format() == default.sample_format())
        .or_else(|| {
            usable
                .iter()
                .find(|r| r.sample_format() == SampleFormat::F32)
        })
        .or_else(|| usable.first());
    let Some(range) = chosen else {
        if let Some(range) = ranges.iter().find(fits) {
            return Err(CaptureError::UnsupportedFormat {
                device: label.to_owned(),
                format: range.sample_format(),
            });
        }
        return Err(CaptureError::UnsupportedConfig {
            device: label.to_owned(),
            wanted: format!("{rate_hz} Hz with {channels} channels"),
            supported: describe_ranges(&ranges),
        });
    };
    let buffer_size = match range.buffer_size() {
        SupportedBufferSize::Range { min, max } => {
            BufferSize::Fixed(WANTED_BUFFER_FRAMES.clamp(*min, *max))
        }
        SupportedBufferSize::Unknown => BufferSize::Default,
    };
    let config = StreamConfig {
        channels,
        sample_rate: rate_hz,
        buffer_size,
    };
    Ok((config, range.sample_format()))
}

/// Whether pcmcast converts this sample format (every PCM format; not DSD bitstreams).
fn convertible(format: SampleFormat) -> bool {
    use SampleFormat::*;
    matches!(
        format,
        I8 | I16 | I24 | I32 | I64 | U8 | U16 | U24 | U32 | U64 | F32 | F64
    )
}

fn describe_ranges(ranges: &[cpal::SupportedStreamConfigRange]) -> String {
    let lines = summarize_ranges(ranges);
    if lines.is_empty() {
        return "nothing".to_owned();
    }
    lines.join("; ")
}

/// Supported configurations, one line per rate range and channel set: devices often report
/// one range per channel count and sample format, dozens of them.
fn summarize_ranges(ranges: &[cpal::SupportedStreamConfigRange]) -> Vec<String> {
    let mut channels: BTreeMap<(u32, u32, String), Vec<u16>> = BTreeMap::new();
    for range in ranges {
        let key = (
            range.min_sample_rate(),
            range.max_sample_rate(),
            range.sample_format().to_string(),
        );
        channels.entry(key).or_default().push(range.channels());
    }
    let mut formats: BTreeMap<(u32, u32, String), Vec<String>> = BTreeMap::new();
    for ((min_hz, max_hz, format), mut counts) in channels {
        counts.sort_unstable();
        counts.dedup();
        let counts = match counts.as_slice() {
            [one] => one.to_string(),
            [first, .., last] if usize::from(last - first) + 1 == counts.len() => {
                format!("{first}-{last}")
            }
            _ => counts
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(","),
        };
        formats
            .entry((min_hz, max_hz, counts))
            .or_default()
            .push(format);
    }
    formats
        .into_iter()
        .map(|((min_hz, max_hz, counts), formats)| {
            let rates = if min_hz == max_hz {
                format!("{min_hz} Hz")
            } else {
                format!("{min_hz}-{max_hz} Hz")
            };
            format!("{counts} ch, {rates}, {}", formats.join(" "))
        })
        .collect()
}

/// While alive, stderr is /dev/null: enumerating devices makes ALSA plugins load libraries
/// such as libjack, which print their failures straight to stderr, burying pcmcast's own
/// output. Only used around enumeration, before the server starts.
struct QuietStderr {
    #[cfg(unix)]
    saved: Option<std::os::fd::OwnedFd>,
}

impl QuietStderr {
    fn new() -> QuietStderr {
        #[cfg(unix)]
        {
            use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
            let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") else {
                return QuietStderr { saved: None };
            };
            // SAFETY: plain descriptor calls; `saved` owns the duplicate it gets back.
            let saved = unsafe { libc::dup(libc::STDERR_FILENO) };
            if saved < 0 {
                return QuietStderr { saved: None };
            }
            let saved = unsafe { OwnedFd::from_raw_fd(saved) };
            if unsafe { libc::dup2(null.as_raw_fd(), libc::STDERR_FILENO) } < 0 {
                return QuietStderr { saved: None };
            }
            QuietStderr { saved: Some(saved) }
        }
        #[cfg(not(unix))]
        QuietStderr {}
    }
}

impl Drop for QuietStderr {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(saved) = &self.saved {
            use std::os::fd::AsRawFd;
            // SAFETY: restores the descriptor saved in `new`.
            unsafe { libc::dup2(saved.as_raw_fd(), libc::STDERR_FILENO) };
        }
    }
}

/// While alive, alsa-lib's error messages on this thread go to a buffer (logged at debug level
/// when dropped) instead of straight to stderr, where they would bury pcmcast's own one-line
/// explanation of what went wrong.
struct QuietAlsa {
    #[cfg(target_os = "linux")]
    buffer: Option<std::rc::Rc<std::cell::RefCell<alsa::Output>>>,
}

impl QuietAlsa {
    fn new() -> QuietAlsa {
        QuietAlsa {
            #[cfg(target_os = "linux")]
            buffer: alsa::Output::local_error_handler().ok(),
        }
    }
}

#[cfg(target_os = "linux")]
impl Drop for QuietAlsa {
    fn drop(&mut self) {
        if let Some(buffer) = &self.buffer {
            let text = buffer.borrow().to_string();
            if !text.trim().is_empty() {
                tracing::debug!("alsa-lib said: {}", text.trim());
            }
        }
    }
}

/// One input device as `pcmcast devices` prints it.
pub struct DeviceReport {
    pub label: String,
    pub is_default: bool,
    pub default_config: String,
    pub supported: Vec<String>,
}

/// Every input device of the default host.
pub fn list_devices() -> Result<Vec<DeviceReport>, CaptureError> {
    let _quiet = QuietAlsa::new();
    let _quiet_plugins = QuietStderr::new();
    let host = cpal::default_host();
    let default_id = host.default_input_device().and_then(|d| d.id().ok());
    let devices = host.input_devices().map_err(CaptureError::List)?;
    Ok(devices
        .map(|device| {
            let default_config = match device.default_input_config() {
                Ok(c) => format!(
                    "{} ch {} Hz {}",
                    c.channels(),
                    c.sample_rate(),
                    c.sample_format()
                ),
                Err(error) => format!("unavailable ({error})"),
            };
            let supported = device
                .supported_input_configs()
                .map(|ranges| summarize_ranges(&ranges.collect::<Vec<_>>()))
                .unwrap_or_default();
            DeviceReport {
                is_default: default_id.is_some() && device.id().ok() == default_id,
                label: label(&device),
                default_config,
                supported,
            }
        })
        .collect())
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
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

impl Capture {
    /// Runs capture on the calling thread until `cancel` fires, reopening the device with
    /// backoff whenever it fails.
    pub fn supervise(self, writer: RingWriter, stats: &Stats, cancel: &CancellationToken) {
        let _quiet = QuietAlsa::new();
        let home = Arc::new(Mutex::new(Some(writer)));
        let mut backoff = FIRST_BACKOFF;
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
                backoff = FIRST_BACKOFF;
            }
            stats.set_source_state(SourceState::Reconnecting);
            tracing::warn!(device = %self.info.name, "capture failed: {fault}; reopening in {backoff:?}");
            sleep_unless_cancelled(backoff, cancel);
            backoff = (backoff * 2).min(MAX_BACKOFF);
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

fn sleep_unless_cancelled(duration: Duration, cancel: &CancellationToken) {
    let until = Instant::now() + duration;
    while !cancel.is_cancelled() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        thread::sleep(left.min(WATCH_INTERVAL));
    }
}
