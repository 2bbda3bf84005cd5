//! The command line: raw clap arguments ([`Cli`], [`ServeArgs`]) and the validated
//! [`Settings`] the library runs on. Every option also reads a `PCMCAST_*` variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::frame::StreamFormat;
use crate::icecast::{FormatError, IcecastSettings, IcecastUrl, PushFormat, UrlError};
use crate::realtime::Scope;
use crate::source::SourceSpec;
use crate::source::capture::DeviceChoice;
use crate::source::relay::RelayUrl;

const ABOUT: &str = "Capture audio once and stream it to any number of HTTP listeners";

const LONG_ABOUT: &str = "\
Capture audio once and stream it to any number of HTTP listeners, as raw PCM, WAV or NDJSON.
Every listener gets every frame as soon as it exists; a slow or stalled listener is skipped
forward and never holds up the source or the others.

With no source option, pcmcast captures the default input device; where there is no usable
input device it says so and replays its bundled demo recording in a loop instead.";

const AFTER_HELP: &str = "\
Examples:
  pcmcast                                  capture the default microphone on http://127.0.0.1:8000/
  pcmcast devices                          list input devices and their configurations
  pcmcast --input alsa:hw:1,0 --rate 44100 capture another device (id or part of its name)
  pcmcast --wav talk.wav --loop            replay a file forever on http://127.0.0.1:8000/
  pcmcast --tone 440 --rate 48000          a 440 Hz test sine
  pcmcast --relay http://10.0.0.2:8000     relay another pcmcast's /stream.pcm (a LAN tree)
  pcmcast --bind 0.0.0.0:8000              serve the LAN (default: loopback only)
  PCMCAST_ICECAST=http://source:PASSWORD@icecast:8000/live pcmcast
                                           also push the stream to an Icecast server

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
    Serve(Box<ServeArgs>),
    /// List input devices: id, name, default configuration and supported configurations
    Devices,
}

/// What the command line asks for.
pub enum Action {
    /// Boxed: the arguments are large and this enum's other variant is empty.
    Serve(Box<ServeArgs>),
    ListDevices,
}

impl Cli {
    pub fn into_action(self) -> Action {
        match self.command {
            Some(Command::Serve(args)) => Action::Serve(args),
            Some(Command::Devices) => Action::ListDevices,
            None => Action::Serve(Box::new(self.serve)),
        }
    }

    /// The serve arguments, whether given after `serve` or with no subcommand; `None` for
    /// another subcommand.
    pub fn into_serve_args(self) -> Option<ServeArgs> {
        match self.into_action() {
            Action::Serve(args) => Some(*args),
            Action::ListDevices => None,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Capture from this input device: a cpal id (e.g. alsa:hw:1,0, see `pcmcast devices`),
    /// a case-insensitive part of its name, or "default" [default: the default input device,
    /// or the bundled demo recording where there is none]
    #[arg(long, value_name = "DEVICE", env = "PCMCAST_INPUT", conflicts_with_all = ["wav", "tone", "relay"])]
    pub input: Option<String>,

    /// Replay this WAV file in real time (8/16/24/32-bit integer or 32-bit float, any rate)
    #[arg(
        long,
        value_name = "PATH",
        env = "PCMCAST_WAV",
        conflicts_with_all = ["tone", "relay"]
    )]
    pub wav: Option<PathBuf>,

    /// With --wav: repeat the file forever (without it, streams end at the end of the file
    /// and pcmcast exits 0)
    #[arg(long = "loop", env = "PCMCAST_LOOP", requires = "wav")]
    pub looping: bool,

    /// Generate a sine of this frequency at -6 dBFS instead of capturing
    #[arg(
        long,
        value_name = "HZ",
        env = "PCMCAST_TONE",
        conflicts_with = "relay"
    )]
    pub tone: Option<f64>,

    /// Relay another pcmcast: serve the stream at this URL, an upstream pcmcast's
    /// http://HOST:PORT/stream.pcm (the default path), at the upstream's rate and channels, so
    /// that pcmcasts fan out as a tree on a LAN. Plain http:// only
    ///
    /// When the upstream goes away, /status says reconnecting, /healthz answers 503, listeners
    /// stay connected and pcmcast reconnects with backoff; an outage over 0.5 s shows as a seq
    /// jump. An upstream that comes back with another rate or channel count is refused until it
    /// matches again. An upstream's --token goes in the URL as ?token=TOKEN: give the URL in
    /// PCMCAST_RELAY, which `ps` does not show.
    #[arg(
        long,
        value_name = "URL",
        env = "PCMCAST_RELAY",
        hide_env_values = true
    )]
    pub relay: Option<RelayUrl>,

    /// Sample rate to capture (device default if not given) or to generate with --tone
    /// [tone default: 48000]
    #[arg(long, value_name = "HZ", env = "PCMCAST_RATE",
          value_parser = clap::value_parser!(u32).range(1..=768_000))]
    pub rate: Option<u32>,

    /// Channel count to capture (device default if not given) or to generate with --tone
    /// [tone default: 2]
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
    /// with 1024-sample frames). A raw PCM/WAV/NDJSON listener whose connection takes nothing
    /// for half that long is dropped
    #[arg(long, value_name = "FRAMES", env = "PCMCAST_BACKLOG", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub backlog: u32,

    /// Listeners allowed at once (all stream endpoints together); more get 503 with
    /// Retry-After
    #[arg(long, value_name = "N", env = "PCMCAST_MAX_LISTENERS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_listeners: Option<u64>,

    /// Require `Authorization: Bearer TOKEN` or `?token=TOKEN` on every stream and API
    /// endpoint (not /healthz); prefer the environment variable, which `ps` does not show
    #[arg(
        long,
        value_name = "TOKEN",
        env = "PCMCAST_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// Allow browser pages from this origin (e.g. https://example.org, or *) to use the
    /// stream and API endpoints (CORS)
    #[arg(long, value_name = "ORIGIN", env = "PCMCAST_CORS_ORIGIN")]
    pub cors_origin: Option<String>,

    /// Recent frames sent to a new listener before live ones, so players start at once
    /// (at most --backlog)
    #[arg(long, value_name = "FRAMES", env = "PCMCAST_BURST", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub burst: u32,

    /// Also push the stream to an Icecast 2.4 server as a source client, at
    /// http://[USER:]PASSWORD@HOST[:PORT]/MOUNT (user default: source); reconnects by itself.
    /// Give it in PCMCAST_ICECAST, which `ps` does not show
    ///
    /// The mount's extension picks the encoding unless --icecast-format does: .opus, .ogg and
    /// .oga push Ogg/Opus (96 kbit/s), .wav WAV, any other raw s16le PCM (.flac is refused:
    /// Icecast needs FLAC in Ogg). /status and /metrics show the push's state. Percent-encode
    /// any of / ? # in the password.
    #[arg(
        long,
        value_name = "URL",
        env = "PCMCAST_ICECAST",
        hide_env_values = true
    )]
    pub icecast: Option<String>,

    /// Which threads of the audio path run real-time (SCHED_FIFO)
    ///
    /// Where the system permits it (root, CAP_SYS_NICE or an RLIMIT_RTPRIO), real-time threads
    /// run before anything at normal priority, so that other work on the machine cannot delay
    /// a frame. A fan-out thread busy more than half of the time gives real-time up until it is
    /// light again. /status shows how many threads run real-time.
    #[arg(
        long,
        value_enum,
        value_name = "THREADS",
        env = "PCMCAST_REALTIME",
        default_value_t = Scope::Source
    )]
    pub realtime: Scope,

    /// The encoding pushed to --icecast [default: from the mount's extension]
    #[arg(
        long,
        value_name = "FORMAT",
        env = "PCMCAST_ICECAST_FORMAT",
        requires = "icecast"
    )]
    pub icecast_format: Option<PushFormat>,
}

/// Validated settings: everything the library needs to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub source: SourceSpec,
    pub frame_size_samples: usize,
    pub bind: SocketAddr,
    pub backlog_frames: usize,
    pub burst_frames: usize,
    pub max_listeners: Option<u64>,
    pub access: Access,
    /// Where to push the stream as an Icecast source, if anywhere.
    pub icecast: Option<IcecastSettings>,
    /// Which threads of the audio path run real-time where permitted.
    pub realtime: Scope,
}

/// Who may use the stream and API endpoints.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Access {
    /// The bearer token every request must carry, if any.
    pub token: Option<String>,
    /// The origin allowed by CORS (`*` for any), if any.
    pub cors_origin: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error(
        "--tone must be a frequency above 0 Hz and below half the sample rate ({nyquist_hz} Hz), got {hz}"
    )]
    ToneOutOfRange { hz: f64, nyquist_hz: f64 },
    #[error("--rate and --channels do not apply to --wav: a WAV file brings its own")]
    FormatWithWav,
    #[error("--rate and --channels do not apply to --relay: the upstream's stream brings its own")]
    FormatWithRelay,
    #[error("--token must not be empty")]
    EmptyToken,
    #[error("--cors-origin must be * or an origin such as https://example.org, got '{0}'")]
    BadOrigin(String),
    #[error("--burst ({burst}) cannot exceed --backlog ({backlog})")]
    BurstOverBacklog { burst: u32, backlog: u32 },
    // The URL itself is never quoted: it carries a password.
    #[error("--icecast: {0}")]
    IcecastUrl(UrlError),
    #[error("--icecast: {0}")]
    IcecastFormat(FormatError),
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
        let with_format = args.rate.is_some() || args.channels.is_some();
        let source = match (args.tone, args.wav, args.relay, args.input) {
            (Some(hz), ..) => {
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
            (None, Some(_), ..) if with_format => return Err(ConfigError::FormatWithWav),
            (None, Some(path), ..) => SourceSpec::Wav {
                path,
                looping: args.looping,
            },
            (None, None, Some(_), _) if with_format => return Err(ConfigError::FormatWithRelay),
            (None, None, Some(url), _) => SourceSpec::Relay { url },
            (None, None, None, input) => SourceSpec::Capture {
                fallback_to_demo: input.is_none(),
                device: match input {
                    Some(name) => DeviceChoice::Named(name),
                    None => DeviceChoice::Default,
                },
                rate_hz: args.rate,
                channels: args.channels,
            },
        };
        if args.token.as_deref() == Some("") {
            return Err(ConfigError::EmptyToken);
        }
        if let Some(origin) = &args.cors_origin
            && !valid_origin(origin)
        {
            return Err(ConfigError::BadOrigin(origin.clone()));
        }
        let icecast = args
            .icecast
            .map(|url| icecast_settings(&url, args.icecast_format))
            .transpose()?;
        Ok(Settings {
            source,
            frame_size_samples: args.frame_size as usize,
            bind: args.bind,
            backlog_frames: args.backlog as usize,
            burst_frames: args.burst as usize,
            max_listeners: args.max_listeners,
            access: Access {
                token: args.token,
                cors_origin: args.cors_origin,
            },
            icecast,
            realtime: args.realtime,
        })
    }
}

/// The push's URL and encoding: `format` if given, else the one the mount's extension implies.
fn icecast_settings(url: &str, format: Option<PushFormat>) -> Result<IcecastSettings, ConfigError> {
    let url: IcecastUrl = url.parse().map_err(ConfigError::IcecastUrl)?;
    let format = match format {
        Some(format) => format,
        None => PushFormat::for_extension(url.extension().as_deref())
            .map_err(ConfigError::IcecastFormat)?,
    };
    Ok(IcecastSettings { url, format })
}

/// `*`, or `scheme://host[:port]` with nothing after it: what a browser sends as `Origin`.
fn valid_origin(origin: &str) -> bool {
    if origin == "*" {
        return true;
    }
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    !scheme.is_empty()
        && !rest.is_empty()
        && !rest.contains('/')
        && origin.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> Result<Settings, String> {
        let cli = Cli::try_parse_from(std::iter::once("pcmcast").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        let args = cli.into_serve_args().expect("serve arguments");
        Settings::try_from(args).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_capture_the_default_device_on_loopback() {
        let s = settings(&[]).unwrap();
        assert_eq!(
            s.source,
            SourceSpec::Capture {
                device: DeviceChoice::Default,
                rate_hz: None,
                channels: None,
                fallback_to_demo: true
            }
        );
        assert_eq!(s.bind, "127.0.0.1:8000".parse().unwrap());
        assert_eq!(
            (s.frame_size_samples, s.backlog_frames, s.burst_frames),
            (1024, 100, 0)
        );
        assert_eq!(settings(&["serve"]).unwrap(), s);
    }

    #[test]
    fn input_names_a_device_without_fallback() {
        let s = settings(&["--input", "USB Mic", "--rate", "44100"]).unwrap();
        assert_eq!(
            s.source,
            SourceSpec::Capture {
                device: DeviceChoice::Named("USB Mic".into()),
                rate_hz: Some(44_100),
                channels: None,
                fallback_to_demo: false
            }
        );
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
    fn relay_takes_a_url() {
        let s = settings(&["--relay", "http://10.0.0.2:8000/stream.pcm?token=t"]).unwrap();
        let SourceSpec::Relay { url } = s.source else {
            panic!("a relay: {:?}", s.source)
        };
        assert_eq!(url.to_string(), "http://10.0.0.2:8000/stream.pcm");
        assert_eq!(url.target(), "/stream.pcm?token=t&format=f32le");
    }

    #[test]
    fn icecast_takes_a_url_and_a_format_from_its_extension_or_the_option() {
        let push = |args: &[&str]| settings(args).unwrap().icecast.expect("a push");
        let plain = push(&["--icecast", "http://source:pw@h:8000/live"]);
        assert_eq!(plain.url.to_string(), "http://h:8000/live");
        assert_eq!(plain.format, PushFormat::Pcm);
        let wav = push(&["--icecast", "http://source:pw@h:8000/live.wav"]);
        assert_eq!(wav.format, PushFormat::Wav);
        let opus = push(&["--icecast", "http://source:pw@h:8000/live.opus"]);
        assert_eq!(opus.format, PushFormat::Opus);
        let forced = push(&[
            "--icecast",
            "http://source:pw@h:8000/live.opus",
            "--icecast-format",
            "pcm",
        ]);
        assert_eq!(forced.format, PushFormat::Pcm);
        assert_eq!(settings(&[]).unwrap().icecast, None);
    }

    #[test]
    fn bad_values_are_refused_with_the_reason() {
        let cases: &[(&[&str], &str)] = &[
            (&["--tone", "30000"], "below half the sample rate"),
            (&["--tone", "0"], "above 0 Hz"),
            (&["--tone", "NaN"], "above 0 Hz"),
            (
                &["--wav", "x.wav", "--rate", "8000"],
                "do not apply to --wav",
            ),
            (&["--input", "mic", "--tone", "440"], "cannot be used with"),
            (
                &["--burst", "9", "--backlog", "8"],
                "cannot exceed --backlog",
            ),
            (&["--frame-size", "0"], "--frame-size"),
            (&["--channels", "0", "--tone", "1"], "--channels"),
            (&["--bind", "nowhere"], "--bind"),
            (&["--loop"], "--wav"),
            (&["--token", ""], "must not be empty"),
            (&["--cors-origin", "example.org/x"], "--cors-origin"),
            (&["--max-listeners", "0"], "--max-listeners"),
            (&["--wav", "a.wav", "--tone", "440"], "cannot be used with"),
            (
                &["--relay", "http://h:1", "--wav", "a.wav"],
                "cannot be used with",
            ),
            (
                &["--relay", "http://h:1", "--tone", "440"],
                "cannot be used with",
            ),
            (
                &["--relay", "http://h:1", "--input", "mic"],
                "cannot be used with",
            ),
            (
                &["--relay", "http://h:1", "--rate", "8000"],
                "do not apply to --relay",
            ),
            (&["--relay", "https://h/stream.pcm"], "only plain http://"),
            (&["--relay", "h:8000"], "expected a URL such as"),
            (
                &["--icecast", "http://h:8000/live"],
                "--icecast: the URL carries no source password",
            ),
            (
                &["--icecast", "https://source:pw@h/live"],
                "--icecast: https:// is not supported",
            ),
            (
                &["--icecast", "http://source:pw@h:8000"],
                "--icecast: the URL names no mount",
            ),
            (
                &["--icecast", "http://source:pw@h:8000/live.flac"],
                "cannot push (Icecast needs FLAC in Ogg)",
            ),
            (
                &[
                    "--icecast",
                    "http://source:pw@h/live",
                    "--icecast-format",
                    "mp3",
                ],
                "--icecast-format",
            ),
            (&["--icecast-format", "pcm"], "--icecast"),
        ];
        for (args, expected) in cases {
            let error = settings(args).expect_err(&format!("{args:?} must fail"));
            assert!(error.contains(expected), "{args:?}: {error}");
        }
    }
}
