//! The command line: raw clap arguments ([`Cli`], [`ServeArgs`]) and the validated
//! [`Settings`] the library runs on. Every option also reads a `PCMCAST_*` variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::frame::StreamFormat;
use crate::source::SourceSpec;

const ABOUT: &str = "Capture audio once and stream it to any number of HTTP listeners";

const LONG_ABOUT: &str = "\
Capture audio once and stream it to any number of HTTP listeners, as raw PCM, WAV or NDJSON.
Every listener gets every frame as soon as it exists; a slow or stalled listener is skipped
forward and never holds up the source or the others.

With no source option, pcmcast replays its bundled demo recording in a loop.";

const AFTER_HELP: &str = "\
Examples:
  pcmcast --wav talk.wav --loop            replay a file forever on http://127.0.0.1:8000/
  pcmcast --tone 440 --rate 48000          a 440 Hz test sine
  pcmcast --bind 0.0.0.0:8000              serve the LAN (default: loopback only)

Listen:
  ffplay -nodisp http://127.0.0.1:8000/stream.wav
  curl -sN http://127.0.0.1:8000/stream.pcm | ffplay -f f32le -ar 48000 -ch_layout stereo -
  ffmpeg -i http://127.0.0.1:8000/stream.wav -t 10 out.flac
  curl -sN 'http://127.0.0.1:8000/stream.ndjson?frames=5'";

#[derive(Debug, Parser)]
#[command(
    name = "pcmcast",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Capture and serve (the default when no subcommand is given)
    Serve(ServeArgs),
}

impl Cli {
    /// The serve arguments, whether given after `serve` or with no subcommand.
    pub fn into_serve_args(self) -> ServeArgs {
        match self.command {
            Some(Command::Serve(args)) => args,
            None => self.serve,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Replay this WAV file in real time (8/16/24/32-bit integer or 32-bit float, any rate)
    #[arg(
        long,
        value_name = "PATH",
        env = "PCMCAST_WAV",
        conflicts_with = "tone"
    )]
    pub wav: Option<PathBuf>,

    /// With --wav: repeat the file forever (without it, streams end at the end of the file
    /// and pcmcast exits 0)
    #[arg(long = "loop", env = "PCMCAST_LOOP", requires = "wav")]
    pub looping: bool,

    /// Generate a sine of this frequency at -6 dBFS instead of capturing
    #[arg(long, value_name = "HZ", env = "PCMCAST_TONE")]
    pub tone: Option<f64>,

    /// Sample rate to generate with --tone [default: 48000]
    #[arg(long, value_name = "HZ", env = "PCMCAST_RATE",
          value_parser = clap::value_parser!(u32).range(1..=768_000))]
    pub rate: Option<u32>,

    /// Channel count to generate with --tone [default: 2]
    #[arg(long, value_name = "N", env = "PCMCAST_CHANNELS",
          value_parser = clap::value_parser!(u16).range(1..=32))]
    pub channels: Option<u16>,

    /// Samples per channel in each frame
    #[arg(long, value_name = "N", env = "PCMCAST_FRAME_SIZE", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub frame_size: u32,

    /// Address to listen on; use 0.0.0.0:8000 to serve the LAN
    #[arg(
        long,
        value_name = "ADDR",
        env = "PCMCAST_BIND",
        default_value = "127.0.0.1:8000"
    )]
    pub bind: SocketAddr,

    /// Frames a listener may fall behind before it is skipped forward (100 ≈ 2 s at 48 kHz
    /// with 1024-sample frames)
    #[arg(long, value_name = "FRAMES", env = "PCMCAST_BACKLOG", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub backlog: u32,

    /// Recent frames sent to a new listener before live ones, so players start at once
    /// (at most --backlog)
    #[arg(long, value_name = "FRAMES", env = "PCMCAST_BURST", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub burst: u32,
}

/// Validated settings: everything the library needs to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub source: SourceSpec,
    pub frame_size_samples: usize,
    pub bind: SocketAddr,
    pub backlog_frames: usize,
    pub burst_frames: usize,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error(
        "--tone must be a frequency above 0 Hz and below half the sample rate ({nyquist_hz} Hz), got {hz}"
    )]
    ToneOutOfRange { hz: f64, nyquist_hz: f64 },
    #[error("--rate and --channels only apply to --tone; a WAV file brings its own")]
    FormatWithoutTone,
    #[error("--burst ({burst}) cannot exceed --backlog ({backlog})")]
    BurstOverBacklog { burst: u32, backlog: u32 },
}

pub const DEFAULT_RATE_HZ: u32 = 48_000;
pub const DEFAULT_CHANNELS: u16 = 2;

impl TryFrom<ServeArgs> for Settings {
    type Error = ConfigError;

    fn try_from(args: ServeArgs) -> Result<Settings, ConfigError> {
        if args.burst > args.backlog {
            return Err(ConfigError::BurstOverBacklog {
                burst: args.burst,
                backlog: args.backlog,
            });
        }
        let source = match (args.tone, args.wav) {
            (Some(hz), _) => {
                let format = StreamFormat {
                    rate_hz: args.rate.unwrap_or(DEFAULT_RATE_HZ),
                    channels: args.channels.unwrap_or(DEFAULT_CHANNELS),
                };
                let nyquist_hz = f64::from(format.rate_hz) / 2.0;
                if !(hz > 0.0 && hz < nyquist_hz) {
                    return Err(ConfigError::ToneOutOfRange { hz, nyquist_hz });
                }
                SourceSpec::Tone { hz, format }
            }
            (None, _) if args.rate.is_some() || args.channels.is_some() => {
                return Err(ConfigError::FormatWithoutTone);
            }
            (None, Some(path)) => SourceSpec::Wav {
                path,
                looping: args.looping,
            },
            (None, None) => SourceSpec::Demo,
        };
        Ok(Settings {
            source,
            frame_size_samples: args.frame_size as usize,
            bind: args.bind,
            backlog_frames: args.backlog as usize,
            burst_frames: args.burst as usize,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> Result<Settings, String> {
        let cli = Cli::try_parse_from(std::iter::once("pcmcast").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        Settings::try_from(cli.into_serve_args()).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_replay_the_demo_on_loopback() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.source, SourceSpec::Demo);
        assert_eq!(s.bind, "127.0.0.1:8000".parse().unwrap());
        assert_eq!(
            (s.frame_size_samples, s.backlog_frames, s.burst_frames),
            (1024, 100, 0)
        );
        assert_eq!(settings(&["serve"]).unwrap(), s);
    }

    #[test]
    fn tone_takes_rate_and_channels() {
        let s = settings(&["--tone", "440", "--rate", "8000", "--channels", "1"]).unwrap();
        assert_eq!(
            s.source,
            SourceSpec::Tone {
                hz: 440.0,
                format: StreamFormat {
                    rate_hz: 8000,
                    channels: 1
                }
            }
        );
    }

    #[test]
    fn bad_values_are_refused_with_the_reason() {
        let cases: &[(&[&str], &str)] = &[
            (&["--tone", "30000"], "below half the sample rate"),
            (&["--tone", "0"], "above 0 Hz"),
            (&["--tone", "NaN"], "above 0 Hz"),
            (
                &["--wav", "x.wav", "--rate", "8000"],
                "only apply to --tone",
            ),
            (
                &["--burst", "9", "--backlog", "8"],
                "cannot exceed --backlog",
            ),
            (&["--frame-size", "0"], "--frame-size"),
            (&["--channels", "0", "--tone", "1"], "--channels"),
            (&["--bind", "nowhere"], "--bind"),
            (&["--loop"], "--wav"),
            (&["--wav", "a.wav", "--tone", "440"], "cannot be used with"),
        ];
        for (args, expected) in cases {
            let error = settings(args).expect_err(&format!("{args:?} must fail"));
            assert!(error.contains(expected), "{args:?}: {error}");
        }
    }
}
