//! The WAV source: replays a file (or the bundled demo recording) with hound, converting every
//! sample format hound reads to f32 exactly: an integer sample `s` of `b` bits becomes
//! `s / 2^(b-1)`, 32-bit float passes through.
//!
//! Everything about a file is checked when it is opened, before the server binds: that it is a
//! regular file, that its header parses, that its format is one pcmcast plays and that its data
//! chunk is all there. Past that point, reading can only fail if the file changes on disk, and
//! such a failure ends the source with a warning.

use std::fs::{File, FileType, Metadata};
use std::io::{self, BufReader, Cursor, Read, Seek, SeekFrom};
use std::path::Path;

use hound::{SampleFormat, WavReader, WavSpec};

use super::{Generator, OpenSource, SourceError, SourceInfo};
use crate::frame::StreamFormat;

/// The demo recording, embedded so that `pcmcast` streams something from any directory.
const DEMO_WAV: &[u8] = include_bytes!("../../assets/demo.wav");
const DEMO_NAME: &str = "assets/demo.wav";

/// Most channels a WAV source may have.
pub const MAX_CHANNELS: u16 = 32;

/// Highest sample rate a WAV source may have, the same bound as `--rate`. The ring and the
/// pacer's chunks are sized from the rate, so a header that claims gigahertz must stop here.
pub const MAX_RATE_HZ: u32 = 768_000;

const SUPPORTED: &str = "use 8/16/24/32-bit integer or 32-bit float PCM";

pub fn open_file(path: &Path, looping: bool) -> Result<OpenSource, SourceError> {
    let open_error = |source| SourceError::WavOpen {
        path: path.to_owned(),
        source,
    };
    // Checked before opening: opening a FIFO blocks until a writer appears, opening a device
    // may act on it, and a device such as /dev/zero never ends.
    check_regular(&std::fs::metadata(path).map_err(open_error)?, path)?;
    let file = open_without_blocking(path).map_err(open_error)?;
    // Checked again on what was opened, in case the path was replaced in between.
    let metadata = file.metadata().map_err(open_error)?;
    check_regular(&metadata, path)?;
    let (info, generator) = open_seekable(BufReader::new(file), metadata.len(), looping, path)?;
    Ok(OpenSource::paced(info, Box::new(generator)))
}

/// Opens WAV data held in memory as if it were the file `name`, which `/status`, the logs and
/// the errors show: the demo recording, and the fuzz target's inputs. The generator replays it.
pub fn open_bytes<B: AsRef<[u8]> + Send + 'static>(
    bytes: B,
    name: &Path,
    looping: bool,
) -> Result<(SourceInfo, impl Generator), SourceError> {
    let total_bytes = bytes.as_ref().len() as u64;
    open_seekable(Cursor::new(bytes), total_bytes, looping, name)
}

pub fn open_demo() -> Result<OpenSource, SourceError> {
    let (mut info, generator) = open_bytes(DEMO_WAV, Path::new(DEMO_NAME), true)?;
    info.kind = "demo";
    Ok(OpenSource::paced(info, Box::new(generator)))
}

fn check_regular(metadata: &Metadata, path: &Path) -> Result<(), SourceError> {
    let file_type = metadata.file_type();
    if !file_type.is_file() {
        let what = special_file_kind(file_type);
        return Err(unusable(path, format!("it is {what}, not a regular file")));
    }
    Ok(())
}

#[cfg(unix)]
fn special_file_kind(file_type: FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a named pipe (FIFO)"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

#[cfg(not(unix))]
fn special_file_kind(file_type: FileType) -> &'static str {
    if file_type.is_dir() {
        "a directory"
    } else {
        "a special file"
    }
}

/// Opens for reading without waiting for a FIFO's writer, should the path have become one
/// since it was checked. Reads of a regular file ignore the flag.
#[cfg(unix)]
fn open_without_blocking(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

#[cfg(not(unix))]
fn open_without_blocking(path: &Path) -> io::Result<File> {
    File::open(path)
}

/// Validates a whole WAV file of `total_bytes` bytes and returns the source's description and a
/// generator positioned at its first sample.
fn open_seekable<R: Read + Seek + Send + 'static>(
    mut source: R,
    total_bytes: u64,
    looping: bool,
    path: &Path,
) -> Result<(SourceInfo, WavGenerator<R>), SourceError> {
    // Before reading anything: pseudo-files under /proc and /sys are regular files of size 0
    // that read as text, or block (/proc/kmsg).
    if total_bytes == 0 {
        return Err(unusable(path, "it is empty (0 bytes)".into()));
    }
    let layout = read_layout(&mut source, path)?;
    let conversion = check_layout(&layout, total_bytes).map_err(|reason| unusable(path, reason))?;
    let generator = WavGenerator {
        reader: Some(reparse(source, layout.spec).map_err(|e| invalid(path, e))?),
        spec: layout.spec,
        conversion,
        looping,
        name_for_logs: path.display().to_string(),
    };
    let info = SourceInfo {
        kind: "wav",
        name: path.display().to_string(),
        format: StreamFormat {
            rate_hz: layout.spec.sample_rate,
            channels: layout.spec.channels,
        },
    };
    Ok((info, generator))
}

/// What the header says about the data, and where the data starts.
struct Layout {
    spec: WavSpec,
    samples: u32,
    data_start: u64,
    data_bytes: u32,
}

fn read_layout<R: Read + Seek>(source: &mut R, path: &Path) -> Result<Layout, SourceError> {
    let (spec, samples) = {
        let header = WavReader::new(&mut *source).map_err(|e| invalid(path, e))?;
        (header.spec(), header.len())
    };
    let io_error = |source| SourceError::WavOpen {
        path: path.to_owned(),
        source,
    };
    let data_start = source.stream_position().map_err(io_error)?;
    // hound stops right after the data chunk's header, whose last four bytes are the chunk's
    // length; hound keeps it to itself.
    let mut data_bytes = [0; 4];
    source.seek(SeekFrom::Current(-4)).map_err(io_error)?;
    source.read_exact(&mut data_bytes).map_err(io_error)?;
    Ok(Layout {
        spec,
        samples,
        data_start,
        data_bytes: u32::from_le_bytes(data_bytes),
    })
}

/// Returns how to convert the samples, or why the file is not playable. Everything in the
/// header is a claim: the checks must hold for any values in it.
fn check_layout(layout: &Layout, total_bytes: u64) -> Result<Conversion, String> {
    let spec = layout.spec;
    if spec.channels == 0 || spec.channels > MAX_CHANNELS {
        return Err(format!(
            "{} channels (pcmcast takes 1 to {MAX_CHANNELS})",
            spec.channels
        ));
    }
    if spec.sample_rate == 0 || spec.sample_rate > MAX_RATE_HZ {
        return Err(format!(
            "its sample rate is {} Hz (pcmcast takes 1 to {MAX_RATE_HZ})",
            spec.sample_rate
        ));
    }
    if layout.samples == 0 {
        return Err("it contains no audio samples".into());
    }
    // hound checked that the data is a whole number of samples.
    let container_bytes = layout.data_bytes / layout.samples;
    let conversion = conversion(spec, container_bytes)?;
    let present_bytes = total_bytes.saturating_sub(layout.data_start);
    if u64::from(layout.data_bytes) > present_bytes {
        return Err(format!(
            "it is truncated: its data chunk declares {} bytes but the file holds {present_bytes} after the header",
            layout.data_bytes
        ));
    }
    Ok(conversion)
}

/// The sample encodings hound decodes (its `Sample::read` for `i32` and `f32`); it parses
/// headers of others, such as 16-bit samples in 4-byte containers, whose every sample it then
/// fails to read.
fn conversion(spec: WavSpec, container_bytes: u32) -> Result<Conversion, String> {
    match (spec.sample_format, spec.bits_per_sample, container_bytes) {
        (SampleFormat::Float, 32, 4) => Ok(Conversion::Float),
        (SampleFormat::Int, bits @ (8 | 16 | 24 | 32), bytes)
            if bytes == u32::from(bits / 8) || (bits, bytes) == (24, 4) =>
        {
            Ok(Conversion::Int {
                scale: 1.0 / f64::from(1u32 << (bits - 1)),
            })
        }
        (format, bits, bytes) => {
            let format = match format {
                SampleFormat::Float => "float",
                SampleFormat::Int => "integer",
            };
            Err(format!(
                "{bits}-bit {format} samples in {bytes}-byte containers are not supported ({SUPPORTED})"
            ))
        }
    }
}

/// Rewinds `source` and parses its header again, for a reader at the first sample. This is also
/// how the generator loops: hound's own `seek` steps back `bits / 8` bytes per sample read,
/// which lands in the wrong place when 24-bit samples sit in 4-byte containers.
fn reparse<R: Read + Seek>(mut source: R, spec: WavSpec) -> hound::Result<WavReader<R>> {
    source.rewind()?;
    let reader = WavReader::new(source)?;
    if reader.spec() != spec {
        return Err(hound::Error::FormatError(
            "its header changed since it was opened",
        ));
    }
    Ok(reader)
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
            if e.kind() == io::ErrorKind::UnexpectedEof
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

#[derive(Clone, Copy)]
enum Conversion {
    Float,
    Int { scale: f64 },
}

struct WavGenerator<R> {
    /// `None` once a rewind has failed, which ends the source.
    reader: Option<WavReader<R>>,
    spec: WavSpec,
    conversion: Conversion,
    looping: bool,
    name_for_logs: String,
}

impl<R: Read + Seek + Send + 'static> WavGenerator<R> {
    /// Reads samples until `out` is full or the data runs out; returns how many it read.
    fn read_into(&mut self, out: &mut [f32]) -> usize {
        let Some(reader) = &mut self.reader else {
            return 0;
        };
        let mut written = 0;
        let result = match self.conversion {
            Conversion::Float => read_samples(reader, out, &mut written, |s: f32| s),
            Conversion::Int { scale } => read_samples(reader, out, &mut written, |s: i32| {
                (f64::from(s) * scale) as f32
            }),
        };
        if let Err(error) = result {
            tracing::warn!(file = %self.name_for_logs, %error, "WAV data ends early; treating it as the end of the file");
        }
        written
    }

    /// Starts the data over; false (and the source ends) if that fails.
    fn rewind(&mut self) -> bool {
        let Some(reader) = self.reader.take() else {
            return false;
        };
        match reparse(reader.into_inner(), self.spec) {
            Ok(reader) => {
                self.reader = Some(reader);
                true
            }
            Err(error) => {
                tracing::warn!(file = %self.name_for_logs, %error, "cannot rewind the WAV file; ending");
                false
            }
        }
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
        while self.looping && written < out.len() && self.rewind() {
            let more = self.read_into(&mut out[written..]);
            if more == 0 {
                break;
            }
            written += more;
        }
        let channels = usize::from(self.spec.channels);
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

    /// A mono PCM file whose 24-bit samples are `values`, each in a 4-byte container.
    fn wav_24_in_32(values: &[i32]) -> Vec<u8> {
        let data_bytes = 4 * values.len() as u32;
        let mut wav = Vec::new();
        wav.extend_from_slice(b"RIFF");
        wav.extend_from_slice(&(36 + data_bytes).to_le_bytes());
        wav.extend_from_slice(b"WAVEfmt ");
        for field in [16u32, 1 | 1 << 16, 8_000, 32_000, 4 | 24 << 16] {
            wav.extend_from_slice(&field.to_le_bytes());
        }
        wav.extend_from_slice(b"data");
        wav.extend_from_slice(&data_bytes.to_le_bytes());
        for value in values {
            wav.extend_from_slice(&value.to_le_bytes());
        }
        wav
    }

    #[test]
    fn looping_24_bit_samples_in_4_byte_containers_starts_over_at_the_first_sample() {
        let values = [1, -2, 3, -4, 5];
        let (info, mut generator) =
            open_bytes(wav_24_in_32(&values), Path::new("24-in-32.wav"), true).unwrap();
        assert_eq!(info.format.rate_hz, 8_000);
        let mut out = [0.0f32; 12];
        assert_eq!(generator.fill(&mut out), 12);
        let expected: Vec<f32> = values
            .iter()
            .cycle()
            .take(12)
            .map(|&v| v as f32 / 8_388_608.0)
            .collect();
        assert_eq!(out.to_vec(), expected);
    }

    #[test]
    fn a_file_played_once_ends_after_its_last_sample() {
        let (_, mut generator) =
            open_bytes(wav_24_in_32(&[7; 5]), Path::new("once.wav"), false).unwrap();
        let mut out = [0.0f32; 8];
        assert_eq!(generator.fill(&mut out), 5);
        assert_eq!(generator.fill(&mut out), 0);
    }

    #[test]
    fn only_the_encodings_hound_decodes_are_accepted() {
        let spec = |format, bits| WavSpec {
            channels: 1,
            sample_rate: 8_000,
            bits_per_sample: bits,
            sample_format: format,
        };
        let accepted = [
            (SampleFormat::Int, 8, 1),
            (SampleFormat::Int, 16, 2),
            (SampleFormat::Int, 24, 3),
            (SampleFormat::Int, 24, 4),
            (SampleFormat::Int, 32, 4),
            (SampleFormat::Float, 32, 4),
        ];
        for format in [SampleFormat::Int, SampleFormat::Float] {
            for bits in [0, 8, 12, 16, 24, 32, 64] {
                for container_bytes in 0..=8 {
                    let result = conversion(spec(format, bits), container_bytes);
                    let expected = accepted.contains(&(format, bits, container_bytes));
                    assert_eq!(
                        result.is_ok(),
                        expected,
                        "{format:?} {bits} bits in {container_bytes} bytes: {:?}",
                        result.err()
                    );
                }
            }
        }
    }
}
