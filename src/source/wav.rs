//! The WAV source: replays a file (or the bundled demo recording) with hound, converting every
//! sample format hound reads to f32 exactly: an integer sample `s` of `b` bits becomes
//! `s / 2^(b-1)`, 32-bit float passes through.

use std::fs::File;
use std::io::{BufReader, Cursor, Read, Seek};

use std::path::Path;

use hound::{SampleFormat, WavReader};

use super::{Generator, OpenSource, SourceError, SourceInfo};
use crate::frame::StreamFormat;

/// The demo recording, embedded so that `pcmcast` streams something from any directory.
const DEMO_WAV: &[u8] = include_bytes!("../../assets/demo.wav");
const DEMO_NAME: &str = "assets/demo.wav";

/// Most channels a WAV source may have.
pub const MAX_CHANNELS: u16 = 32;

pub fn open_file(path: &Path, looping: bool) -> Result<OpenSource, SourceError> {
    let open_error = |source| SourceError::WavOpen {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(open_error)?;
    if file.metadata().map_err(open_error)?.is_dir() {
        return Err(unusable(path, "it is a directory, not a file".into()));
    }
    let mut file = BufReader::new(file);
    check_complete(&mut file, path)?;
    file.rewind().map_err(open_error)?;
    let reader = WavReader::new(file).map_err(|e| invalid(path, e))?;
    let name = path.display().to_string();
    open_reader(reader, looping, "wav", name, path)
}

/// Refuses a file whose data chunk is shorter than its header declares (a truncated copy, or a
/// header with a bogus size), which would otherwise play a fraction of what it promises.
/// Samples are counted at their bit width rounded up to bytes; a wider container (24 bits in 4
/// bytes) makes the check lenient, never wrong.
fn check_complete(file: &mut BufReader<File>, path: &Path) -> Result<(), SourceError> {
    let declared_bytes = {
        let header = WavReader::new(&mut *file).map_err(|e| invalid(path, e))?;
        u64::from(header.len()) * u64::from(header.spec().bits_per_sample.div_ceil(8))
    };
    let open_error = |source| SourceError::WavOpen {
        path: path.to_owned(),
        source,
    };
    let data_start = file.stream_position().map_err(open_error)?;
    let file_bytes = file.get_ref().metadata().map_err(open_error)?.len();
    let present_bytes = file_bytes.saturating_sub(data_start);
    if declared_bytes > present_bytes {
        return Err(unusable(
            path,
            format!(
                "it is truncated: its header declares {declared_bytes} bytes of samples but the file holds {present_bytes}"
            ),
        ));
    }
    Ok(())
}

fn unusable(path: &Path, reason: String) -> SourceError {
    SourceError::WavUnusable {
        path: path.to_owned(),
        reason,
    }
}

/// Turns hound's error into a sentence about the file.
fn invalid(path: &Path, error: hound::Error) -> SourceError {
    let reason = match error {
        // hound reports a short read as `Other` with this text rather than `UnexpectedEof`.
        hound::Error::IoError(e)
            if e.kind() == std::io::ErrorKind::UnexpectedEof
                || e.to_string() == "Failed to read enough bytes." =>
        {
            "it ends inside its header".to_owned()
        }
        hound::Error::IoError(e) => {
            return SourceError::WavOpen {
                path: path.to_owned(),
                source: e,
            };
        }
        hound::Error::FormatError(what) => format!("it is not a well-formed WAV file ({what})"),
        hound::Error::TooWide | hound::Error::Unsupported | hound::Error::InvalidSampleFormat => {
            format!("its sample encoding is not supported ({SUPPORTED})")
        }
        hound::Error::UnfinishedSample => "it ends in the middle of a sample".to_owned(),
    };
    unusable(path, reason)
}

const SUPPORTED: &str = "use 8/16/24/32-bit integer or 32-bit float PCM";

pub fn open_demo() -> Result<OpenSource, SourceError> {
    let path = Path::new(DEMO_NAME);
    let reader = WavReader::new(Cursor::new(DEMO_WAV)).map_err(|e| invalid(path, e))?;
    open_reader(reader, true, "demo", DEMO_NAME.to_owned(), path)
}

fn open_reader<R: Read + Seek + Send + 'static>(
    reader: WavReader<R>,
    looping: bool,
    kind: &'static str,
    name: String,
    path: &Path,
) -> Result<OpenSource, SourceError> {
    let spec = reader.spec();
    let unusable = |reason: String| unusable(path, reason);
    if spec.channels == 0 || spec.channels > MAX_CHANNELS {
        return Err(unusable(format!(
            "{} channels (pcmcast takes 1 to {MAX_CHANNELS})",
            spec.channels
        )));
    }
    if spec.sample_rate == 0 {
        return Err(unusable("its sample rate is 0 Hz".into()));
    }
    let conversion = match (spec.sample_format, spec.bits_per_sample) {
        (SampleFormat::Float, 32) => Conversion::Float,
        (SampleFormat::Int, bits @ (8 | 16 | 24 | 32)) => Conversion::Int {
            scale: 1.0 / f64::from(1u32 << (bits - 1)),
        },
        (format, bits) => {
            return Err(unusable(format!(
                "{bits}-bit {} samples are not supported ({SUPPORTED})",
                match format {
                    SampleFormat::Float => "float",
                    SampleFormat::Int => "integer",
                }
            )));
        }
    };
    if reader.duration() == 0 {
        return Err(unusable("it contains no audio samples".into()));
    }
    let format = StreamFormat {
        rate_hz: spec.sample_rate,
        channels: spec.channels,
    };
    Ok(OpenSource::paced(
        SourceInfo { kind, name, format },
        Box::new(WavGenerator {
            reader,
            conversion,
            looping,
            name_for_logs: path.display().to_string(),
        }),
    ))
}

#[derive(Clone, Copy)]
enum Conversion {
    Float,
    Int { scale: f64 },
}

struct WavGenerator<R> {
    reader: WavReader<R>,
    conversion: Conversion,
    looping: bool,
    name_for_logs: String,
}

impl<R: Read + Seek + Send + 'static> WavGenerator<R> {
    /// Reads samples until `out` is full or the data runs out; returns how many it read.
    fn read_into(&mut self, out: &mut [f32]) -> usize {
        let mut written = 0;
        let result = match self.conversion {
            Conversion::Float => read_samples(&mut self.reader, out, &mut written, |s: f32| s),
            Conversion::Int { scale } => {
                read_samples(&mut self.reader, out, &mut written, |s: i32| {
                    (f64::from(s) * scale) as f32
                })
            }
        };
        if let Err(error) = result {
            tracing::warn!(file = %self.name_for_logs, %error, "WAV data ends early; treating it as the end of the file");
        }
        written
    }
}

fn read_samples<R: Read, S: hound::Sample>(
    reader: &mut WavReader<R>,
    out: &mut [f32],
    written: &mut usize,
    convert: impl Fn(S) -> f32,
) -> hound::Result<()> {
    let mut samples = reader.samples::<S>();
    for slot in out {
        match samples.next() {
            Some(sample) => *slot = convert(sample?),
            None => return Ok(()),
        }
        *written += 1;
    }
    Ok(())
}

impl<R: Read + Seek + Send + 'static> Generator for WavGenerator<R> {
    fn fill(&mut self, out: &mut [f32]) -> usize {
        let mut written = self.read_into(out);
        while self.looping && written < out.len() {
            if let Err(error) = self.reader.seek(0) {
                tracing::warn!(file = %self.name_for_logs, %error, "cannot rewind the WAV file; ending");
                break;
            }
            let more = self.read_into(&mut out[written..]);
            if more == 0 {
                break;
            }
            written += more;
        }
        let channels = usize::from(self.reader.spec().channels);
        written / channels * channels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_recording_opens_as_48k_stereo() {
        let demo = open_demo().expect("bundled demo is a valid WAV");
        assert_eq!(
            demo.info.format,
            StreamFormat {
                rate_hz: 48_000,
                channels: 2
            }
        );
        assert_eq!(demo.info.kind, "demo");
    }
}
