//! The relay source: another pcmcast's `/stream.pcm`, read over plain HTTP/1.1, becomes this
//! server's source, so that pcmcasts on a LAN fan out as a tree.
//!
//! [`open`] connects before the server binds and takes the stream format from the upstream's
//! `X-Pcm-*` headers, so an unreachable upstream or a URL that is not a pcmcast stream fails at
//! start-up. That format is this server's for good. The supervisor thread then owns the
//! connection: it decodes the body into whole sample frames and pushes them into the ring as
//! they arrive (the upstream paces them; nothing here waits for the framer). When the upstream
//! goes away, ends its stream or goes silent, the supervisor reports `reconnecting` and
//! reconnects with backoff; an upstream that comes back with another rate or channel count is
//! refused (logged) and retried. The framer sees the outage as missing audio against the wall
//! clock, so listeners get a `seq`/`pts` jump, as with a capture device that failed.
//!
//! Every wait in the supervisor, a reconnect attempt's included, ends within
//! `http::POLL_INTERVAL` of cancellation (resolving the host's name aside).

mod chunked;
mod http;
mod samples;
mod url;

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::SourceInfo;
use super::backoff::{Backoff, sleep_unless_cancelled};
use super::wav::{MAX_CHANNELS, MAX_RATE_HZ};
use crate::encode::PcmFormat;
use crate::frame::StreamFormat;
use crate::ring::RingWriter;
use crate::stats::{SourceState, Stats};
use http::{HttpError, Progress, Response};
use samples::SampleDecoder;
pub use url::{RelayUrl, UrlError};

/// How long connecting, sending the request and reading the response head may take. The
/// upstream is on the LAN: a healthy one answers in milliseconds.
const OPEN_TIMEOUT: Duration = Duration::from_secs(3);
/// The Content-Type of `/stream.pcm`; `/stream.wav` has the same `X-Pcm-*` headers but a WAV
/// header in front of its samples.
const RAW_PCM: &str = "application/octet-stream";
/// How long to wait for the JSON error body of a refusal.
const ERROR_BODY_TIMEOUT: Duration = Duration::from_millis(500);
/// A connected upstream that sends nothing for this long (or four of its frame periods, if
/// longer) is given up and reconnected: its host may have gone without closing the connection.
const SILENCE_LIMIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("the upstream answered {status} {reason}{}", detail(.message))]
    Status {
        status: u16,
        reason: String,
        message: Option<String>,
    },
    #[error(
        "not a pcmcast stream: the response has no {0} header (the URL must name an upstream \
         pcmcast's /stream.pcm)"
    )]
    MissingHeader(&'static str),
    #[error("not a pcmcast stream: bad {name} header '{value}'")]
    BadHeader { name: &'static str, value: String },
    #[error(
        "not raw PCM: the Content-Type is '{0}', not {RAW_PCM} (the URL must name an upstream \
         pcmcast's /stream.pcm)"
    )]
    NotRawPcm(String),
    #[error("the upstream now streams {now}, but this relay serves {serving} and cannot change")]
    FormatChanged { serving: String, now: String },
    #[error("the upstream ended its stream")]
    Ended,
    #[error("no audio from the upstream for {0:?}")]
    Silent(Duration),
}

fn detail(message: &Option<String>) -> String {
    message
        .as_ref()
        .map(|message| format!(": {message}"))
        .unwrap_or_default()
}

fn describe(format: StreamFormat) -> String {
    format!("{} Hz, {} channels", format.rate_hz, format.channels)
}

/// An upstream that answered with a pcmcast stream; its body is next on the connection.
struct Upstream {
    response: Response,
    encoding: PcmFormat,
    format: StreamFormat,
    frame_size_samples: u32,
}

/// A relay whose upstream answered at start-up.
pub struct Relay {
    pub info: SourceInfo,
    url: RelayUrl,
    /// The connection `open` made, streamed from first by `supervise`.
    first: Upstream,
}

/// Connects to the upstream and reads its stream format.
pub fn open(url: &RelayUrl) -> Result<Relay, RelayError> {
    let upstream = connect(url, &CancellationToken::new())?;
    Ok(Relay {
        info: SourceInfo {
            kind: "relay",
            name: url.to_string(),
            format: upstream.format,
        },
        url: url.clone(),
        first: upstream,
    })
}

fn connect(url: &RelayUrl, cancel: &CancellationToken) -> Result<Upstream, RelayError> {
    let response = http::get(url, OPEN_TIMEOUT, cancel)?;
    if response.head.status != 200 {
        return Err(RelayError::Status {
            status: response.head.status,
            reason: response.head.reason.clone(),
            message: response.error_message(ERROR_BODY_TIMEOUT),
        });
    }
    let encoding = pcm_header(&response, "X-Pcm-Format", PcmFormat::parse)?;
    let rate_hz = pcm_header(&response, "X-Pcm-Rate", |value| {
        value
            .parse()
            .ok()
            .filter(|rate| (1..=MAX_RATE_HZ).contains(rate))
    })?;
    let channels = pcm_header(&response, "X-Pcm-Channels", |value| {
        value
            .parse()
            .ok()
            .filter(|n| (1..=MAX_CHANNELS).contains(n))
    })?;
    let frame_size_samples = pcm_header(&response, "X-Pcm-Frame-Size", |value| {
        value.parse().ok().filter(|&n| n > 0)
    })?;
    let content_type = response.head.field("Content-Type").unwrap_or_default();
    if !content_type.eq_ignore_ascii_case(RAW_PCM) {
        return Err(RelayError::NotRawPcm(content_type.to_owned()));
    }
    Ok(Upstream {
        response,
        encoding,
        format: StreamFormat { rate_hz, channels },
        frame_size_samples,
    })
}

/// Header `name`, parsed by `parse`; an error that names it if it is missing or bad.
fn pcm_header<T>(
    response: &Response,
    name: &'static str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<T, RelayError> {
    let value = response
        .head
        .field(name)
        .ok_or(RelayError::MissingHeader(name))?;
    parse(value).ok_or_else(|| RelayError::BadHeader {
        name,
        value: value.to_owned(),
    })
}

impl Relay {
    /// Relays on the calling thread until `cancel` fires, reconnecting with backoff whenever
    /// the upstream fails. The writer stays with this thread throughout, so the framer never
    /// sees the source end.
    pub fn supervise(self, mut writer: RingWriter, stats: &Stats, cancel: &CancellationToken) {
        let Relay { info, url, first } = self;
        let mut next = Some(first);
        let mut backoff = Backoff::new();
        while !cancel.is_cancelled() {
            let attempt = match next.take() {
                Some(upstream) => Ok(upstream),
                None => reconnect(&url, info.format, cancel),
            };
            let fault = match attempt {
                Ok(upstream) => {
                    let (fault, delivered) = stream(upstream, &mut writer, stats, cancel);
                    if delivered {
                        backoff.reset();
                    }
                    fault
                }
                Err(RelayError::Http(HttpError::Cancelled)) => None,
                Err(error) => Some(error),
            };
            let Some(fault) = fault else { return };
            stats.set_source_state(SourceState::Reconnecting);
            let delay = backoff.next_delay();
            let fault = anyhow::Error::new(fault);
            if matches!(fault.downcast_ref(), Some(RelayError::FormatChanged { .. })) {
                tracing::error!(upstream = %url, "refusing the upstream: {fault:#}; retrying in {delay:?}");
            } else {
                tracing::warn!(upstream = %url, "relay failed: {fault:#}; reconnecting in {delay:?}");
            }
            sleep_unless_cancelled(delay, cancel);
        }
    }
}

/// Connects again, refusing an upstream whose format is no longer `serving`.
fn reconnect(
    url: &RelayUrl,
    serving: StreamFormat,
    cancel: &CancellationToken,
) -> Result<Upstream, RelayError> {
    let upstream = connect(url, cancel)?;
    if upstream.format != serving {
        return Err(RelayError::FormatChanged {
            serving: describe(serving),
            now: describe(upstream.format),
        });
    }
    tracing::info!(upstream = %url, "reconnected to the upstream");
    Ok(upstream)
}

/// Pushes the upstream's samples into the ring until the stream fails or `cancel` fires.
/// Returns what went wrong (`None` on cancellation) and whether any audio came.
fn stream(
    mut upstream: Upstream,
    writer: &mut RingWriter,
    stats: &Stats,
    cancel: &CancellationToken,
) -> (Option<RelayError>, bool) {
    let mut decoder = SampleDecoder::new(upstream.encoding, upstream.format.channels);
    let frame_period = Duration::from_secs_f64(
        f64::from(upstream.frame_size_samples) / f64::from(upstream.format.rate_hz),
    );
    let silence_limit = SILENCE_LIMIT.max(4 * frame_period);
    let mut last_data = Instant::now();
    let mut delivered = false;
    while !cancel.is_cancelled() {
        let read = upstream
            .response
            .read_body(|bytes| decoder.decode(bytes, |samples| writer.push(samples)));
        match read {
            Ok(Progress::Data) => {
                last_data = Instant::now();
                if !delivered {
                    delivered = true;
                    stats.set_source_state(SourceState::Running);
                }
            }
            Ok(Progress::Idle) if last_data.elapsed() > silence_limit => {
                return (Some(RelayError::Silent(silence_limit)), delivered);
            }
            Ok(Progress::Idle) => {}
            Ok(Progress::End) => return (Some(RelayError::Ended), delivered),
            Err(error) => return (Some(error.into()), delivered),
        }
    }
    (None, delivered)
}
