//! Input devices: finding the one the user named, choosing the configuration to capture with,
//! and listing them all for `pcmcast devices`. Everything here runs before capture starts,
//! on an ordinary thread.

use std::collections::BTreeMap;

use cpal::traits::{DeviceTrait, HostTrait};
use cpal::{BufferSize, SampleFormat, StreamConfig, SupportedBufferSize};

use super::CaptureError;

/// Which input device to open.
#[derive(Clone, Debug, PartialEq)]
pub enum DeviceChoice {
    /// The host's default input device.
    Default,
    /// A cpal device id (`alsa:hw:1,0`) or a case-insensitive substring of a device's name.
    Named(String),
}

/// The device buffer to ask for: about 5 ms at 48 kHz, so a frame's last sample reaches the
/// framer a few milliseconds after it was captured.
const WANTED_BUFFER_FRAMES: u32 = 256;

/// `id (name)` of a device, for messages and `/status`.
pub(super) fn label(device: &cpal::Device) -> String {
    let id = device
        .id()
        .map_or_else(|_| "unknown id".to_owned(), |id| id.to_string());
    match device.description() {
        Ok(description) => format!("{id} ({})", description.name()),
        Err(_) => id,
    }
}

pub(super) fn find_device(
    host: &cpal::Host,
    choice: &DeviceChoice,
) -> Result<cpal::Device, CaptureError> {
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
pub(super) fn choose_config(
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
pub(super) struct QuietAlsa {
    #[cfg(target_os = "linux")]
    buffer: Option<std::rc::Rc<std::cell::RefCell<alsa::Output>>>,
}

impl QuietAlsa {
    pub(super) fn new() -> QuietAlsa {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn range(
        channels: u16,
        min_hz: u32,
        max_hz: u32,
        format: SampleFormat,
    ) -> cpal::SupportedStreamConfigRange {
        cpal::SupportedStreamConfigRange::new(
            channels,
            min_hz,
            max_hz,
            SupportedBufferSize::Unknown,
            format,
        )
    }

    #[test]
    fn ranges_are_summarised_by_rates_and_channel_sets() {
        let mut ranges = Vec::new();
        for channels in 1..=8 {
            ranges.push(range(channels, 8_000, 96_000, SampleFormat::I16));
            ranges.push(range(channels, 8_000, 96_000, SampleFormat::F32));
        }
        ranges.push(range(2, 44_100, 44_100, SampleFormat::I24));
        ranges.push(range(6, 44_100, 44_100, SampleFormat::I24));
        assert_eq!(
            summarize_ranges(&ranges),
            vec![
                "1-8 ch, 8000-96000 Hz, f32 i16".to_owned(),
                "2,6 ch, 44100 Hz, i24".to_owned(),
            ]
        );
        assert_eq!(describe_ranges(&[]), "nothing");
    }

    #[test]
    fn dsd_bitstreams_are_not_convertible() {
        assert!(convertible(SampleFormat::U24));
        assert!(convertible(SampleFormat::F64));
        assert!(!convertible(SampleFormat::DsdU8));
    }
}
