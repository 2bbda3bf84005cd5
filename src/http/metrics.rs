//! `/metrics`: the counters and gauges of `/status` in the Prometheus text exposition format
//! 0.0.4, `pcmcast_` prefix, written by hand into one string per scrape.
//!
//! Conventions: counters end in `_total`; units are in the names (`_bytes`, `_seconds`,
//! `_frames`, `_dbfs`). Listener counts and bytes sent have one series per stream endpoint
//! (`endpoint` label), so that `sum()` over them means something; the same listener counts for
//! all endpoints together are separate metrics, `pcmcast_all_listeners_*`, because the overall
//! peak is not the sum of the endpoints' peaks. The source state is one series per state, 1 for
//! the current one. Where there is no finite value the Prometheus infinities stand in: the level
//! of silence (and before the first frame) is `-Inf` dBFS, the age of the last frame before the
//! first one is `+Inf` seconds. The `pcmcast_icecast_*` families are there only with
//! `--icecast`.

use std::fmt::{self, Display, Write};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::{AppState, status};
use crate::icecast::{PushState, PushStatus};
use crate::stats::{Endpoint, SourceState};
use Kind::{Counter, Gauge};

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let up = status::source_health(&state).is_ok();
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], render(&state, up))
}

fn render(state: &AppState, up: bool) -> String {
    let stats = &state.stats;
    let source = &state.source;
    // A scrape is about 4 KiB: one allocation for the whole text, as a rule.
    let mut out = Exposition {
        text: String::with_capacity(4096 + source.name.len()),
    };

    out.family(
        "pcmcast_source_info",
        Gauge,
        "The source: kind, name and format; always 1.",
    );
    out.sample(
        "pcmcast_source_info",
        &[
            ("kind", &source.kind),
            ("name", &source.name),
            ("rate", &source.format.rate_hz),
            ("channels", &source.format.channels),
            ("frame_size", &state.frame_size_samples),
        ],
        1u64,
    );
    let current = stats.source_state();
    out.states(
        "pcmcast_source_state",
        "What the source is doing: 1 for the current state, 0 for the others.",
        SourceState::ALL.map(|each| (each.name(), each == current)),
    );
    out.singles([
        Family::gauge("pcmcast_source_up")
            .help("1 while the source delivers frames (/healthz is ok), 0 otherwise.")
            .samples(u64::from(up).into()),
        Family::counter("pcmcast_frames_produced_total")
            .help("Frames the source has delivered to the hub.")
            .samples(count(&stats.frames_produced)),
        Family::counter("pcmcast_samples_dropped_total")
            .help("Samples the source could not push because the ring was full.")
            .samples(count(&stats.samples_dropped)),
        Family::counter("pcmcast_frames_skipped_total")
            .help(
                "Frames listeners missed because they fell more than the backlog behind, all \
                 listeners.",
            )
            .samples(count(&stats.frames_skipped)),
        Family::counter("pcmcast_listeners_dropped_total")
            .help(
                "Raw PCM/WAV listeners dropped because their connection took nothing for as \
                 long as the backlog.",
            )
            .samples(count(&stats.listeners_dropped)),
        Family::gauge("pcmcast_realtime_threads")
            .help(
                "Threads of the audio path (source, framer, fan-out) running real-time \
                 (SCHED_FIFO) now.",
            )
            .samples(count(&stats.realtime_threads)),
        Family::gauge("pcmcast_backlog_frames")
            .help("How many frames a listener may fall behind before it is skipped forward.")
            .samples((state.hub.backlog_frames() as u64).into()),
    ]);

    let endpoint = |e| stats.endpoint(e);
    out.per_endpoint([
        Family::gauge("pcmcast_listeners_current")
            .help("Listeners connected now, per stream endpoint.")
            .samples(&|e| count(&endpoint(e).listeners_current)),
        Family::gauge("pcmcast_listeners_peak")
            .help("Most listeners connected at once since start-up, per stream endpoint.")
            .samples(&|e| count(&endpoint(e).listeners_peak)),
        Family::counter("pcmcast_listeners_total")
            .help("Listeners accepted since start-up, per stream endpoint.")
            .samples(&|e| count(&endpoint(e).listeners_total)),
        Family::counter("pcmcast_sent_bytes_total")
            .help("Body bytes handed to the HTTP layer for listeners, per stream endpoint.")
            .samples(&|e| count(&endpoint(e).bytes_sent)),
    ]);
    let real = |counter: &AtomicU64| counter.load(Relaxed) as f64;
    let rate_hz = f64::from(source.format.rate_hz);
    out.per_encoded_endpoint([
        Family::counter("pcmcast_encoder_cpu_seconds_total")
            .help("CPU time the encoders of a compressed stream endpoint have used.")
            .samples(&|e| (real(&endpoint(e).encoder_cpu_ns) / 1e9).into()),
        Family::counter("pcmcast_encoded_audio_seconds_total")
            .help("Audio the encoders of a compressed stream endpoint have encoded.")
            .samples(&|e| (real(&endpoint(e).encoded_source_samples) / rate_hz).into()),
        Family::counter("pcmcast_encoder_faults_total")
            .help(
                "Times an encoder of a compressed stream endpoint failed (its listeners were \
                 disconnected).",
            )
            .samples(&|e| count(&endpoint(e).encoder_faults)),
        Family::counter("pcmcast_pages_skipped_total")
            .help("Pages of a compressed stream that listeners missed because they fell behind.")
            .samples(&|e| count(&endpoint(e).pages_skipped)),
    ]);

    let level = stats.last_level();
    let last_frame_age_s = stats
        .since_last_frame()
        .map_or(f64::INFINITY, |age| age.as_secs_f64());
    out.singles([
        Family::gauge("pcmcast_all_listeners_current")
            .help("Listeners connected now, all stream endpoints together.")
            .samples(count(&stats.listeners_current)),
        Family::gauge("pcmcast_all_listeners_peak")
            .help("Most listeners connected at once since start-up, all stream endpoints together.")
            .samples(count(&stats.listeners_peak)),
        Family::counter("pcmcast_all_listeners_total")
            .help("Listeners accepted since start-up, all stream endpoints together.")
            .samples(count(&stats.listeners_total)),
        Family::gauge("pcmcast_level_rms_dbfs")
            .help(
                "RMS level of the last frame in dBFS; -Inf for silence and before the first \
                 frame.",
            )
            .samples(dbfs(level.rms).into()),
        Family::gauge("pcmcast_level_peak_dbfs")
            .help(
                "Peak level of the last frame in dBFS; -Inf for silence and before the first \
                 frame.",
            )
            .samples(dbfs(level.peak).into()),
        Family::gauge("pcmcast_last_frame_age_seconds")
            .help("Seconds since the source delivered its last frame; +Inf before the first frame.")
            .samples(last_frame_age_s.into()),
        Family::gauge("pcmcast_uptime_seconds")
            .help("Seconds since the server started.")
            .samples(stats.uptime().as_secs_f64().into()),
    ]);
    if let Some(push) = &state.icecast {
        icecast(&mut out, push);
    }
    out.text
}

fn icecast(out: &mut Exposition, push: &PushStatus) {
    out.family(
        "pcmcast_icecast_info",
        Gauge,
        "The Icecast push: URL (without the password) and format; always 1.",
    );
    out.sample(
        "pcmcast_icecast_info",
        &[
            ("url", &push.url),
            ("format", &push.format.name()),
            ("content_type", &push.format.content_type()),
        ],
        1u64,
    );
    let current = push.state();
    out.states(
        "pcmcast_icecast_state",
        "What the Icecast push is doing: 1 for the current state, 0 for the others.",
        PushState::ALL.map(|each| (each.name(), each == current)),
    );
    out.singles([
        Family::gauge("pcmcast_icecast_up")
            .help("1 while Icecast takes the stream, 0 otherwise.")
            .samples(u64::from(current == PushState::Streaming).into()),
        Family::counter("pcmcast_icecast_sent_bytes_total")
            .help("Body bytes written to Icecast, all connections together.")
            .samples(count(&push.bytes_sent)),
        Family::counter("pcmcast_icecast_connects_total")
            .help("Connections Icecast accepted as the source.")
            .samples(count(&push.connects)),
        Family::counter("pcmcast_icecast_frames_skipped_total")
            .help("Frames the Icecast push missed because it fell more than the backlog behind.")
            .samples(count(&push.frames_skipped)),
    ]);
}

/// A counter's value, exactly.
fn count(counter: &AtomicU64) -> Value {
    Value::Count(counter.load(Relaxed))
}

/// Decibels relative to full scale: `-inf` for silence.
fn dbfs(linear: f32) -> f64 {
    20.0 * f64::from(linear).log10()
}

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

/// One metric family as `render` lists them: name, type, help and what gives its samples
/// (a value, or how to read one per endpoint).
struct Family<T> {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    samples: T,
}

impl Family<()> {
    fn gauge(name: &'static str) -> Family<()> {
        Family {
            name,
            kind: Gauge,
            help: "",
            samples: (),
        }
    }

    fn counter(name: &'static str) -> Family<()> {
        Family {
            kind: Counter,
            ..Family::gauge(name)
        }
    }

    /// `help` must not hold a backslash or a newline.
    fn help(self, help: &'static str) -> Family<()> {
        Family { help, ..self }
    }

    fn samples<T>(self, samples: T) -> Family<T> {
        Family {
            name: self.name,
            kind: self.kind,
            help: self.help,
            samples,
        }
    }
}

/// How a per-endpoint family reads an endpoint's value.
type PerEndpoint<'a> = &'a dyn Fn(Endpoint) -> Value;

/// A sample's value: counts exactly, reals in Prometheus' spelling.
enum Value {
    Count(u64),
    Real(f64),
}

impl From<u64> for Value {
    fn from(count: u64) -> Value {
        Value::Count(count)
    }
}

impl From<f64> for Value {
    fn from(real: f64) -> Value {
        Value::Real(real)
    }
}

impl Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Value::Count(count) => write!(f, "{count}"),
            Value::Real(real) if real.is_nan() => f.write_str("NaN"),
            Value::Real(f64::INFINITY) => f.write_str("+Inf"),
            Value::Real(f64::NEG_INFINITY) => f.write_str("-Inf"),
            // Rust writes finite floats in plain decimal, which Prometheus parses.
            Value::Real(real) => write!(f, "{real}"),
        }
    }
}

/// The text being built. Writing to a `String` cannot fail, hence the ignored `fmt::Result`s.
struct Exposition {
    text: String,
}

impl Exposition {
    /// Starts a metric family: its `# HELP` and `# TYPE` lines. `help` must not hold a
    /// backslash or a newline.
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = write!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    }

    /// One sample line of the current family; label values are escaped.
    fn sample(&mut self, name: &str, labels: &[(&str, &dyn Display)], value: impl Into<Value>) {
        self.text.push_str(name);
        for (i, (label, value)) in labels.iter().enumerate() {
            self.text.push(if i == 0 { '{' } else { ',' });
            self.text.push_str(label);
            self.text.push_str("=\"");
            let _ = write!(LabelValue(&mut self.text), "{value}");
            self.text.push('"');
        }
        if !labels.is_empty() {
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", value.into());
    }

    /// A gauge family of one sample per state, `state` label: 1 for the current one, 0 for the
    /// others.
    fn states<const N: usize>(&mut self, name: &str, help: &str, states: [(&str, bool); N]) {
        self.family(name, Kind::Gauge, help);
        for (state, current) in states {
            self.sample(name, &[("state", &state)], u64::from(current));
        }
    }

    /// Families of one unlabelled sample each.
    fn singles<const N: usize>(&mut self, families: [Family<Value>; N]) {
        for family in families {
            self.family(family.name, family.kind, family.help);
            self.sample(family.name, &[], family.samples);
        }
    }

    /// Families of one sample per stream endpoint each, `endpoint` label.
    fn per_endpoint<const N: usize>(&mut self, families: [Family<PerEndpoint<'_>>; N]) {
        self.per(&Endpoint::ALL, families);
    }

    /// Families of one sample per compressed stream endpoint each, `endpoint` label.
    fn per_encoded_endpoint<const N: usize>(&mut self, families: [Family<PerEndpoint<'_>>; N]) {
        self.per(&Endpoint::ENCODED, families);
    }

    fn per<const N: usize>(
        &mut self,
        endpoints: &[Endpoint],
        families: [Family<PerEndpoint<'_>>; N],
    ) {
        for family in families {
            self.family(family.name, family.kind, family.help);
            for &endpoint in endpoints {
                let value = (family.samples)(endpoint);
                self.sample(family.name, &[("endpoint", &endpoint.name())], value);
            }
        }
    }
}

/// Writes through to the text, escaped as a label value must be: backslash, double quote and
/// newline.
struct LabelValue<'a>(&'a mut String);

impl Write for LabelValue<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            match c {
                '\\' => self.0.push_str(r"\\"),
                '"' => self.0.push_str(r#"\""#),
                '\n' => self.0.push_str(r"\n"),
                c => self.0.push(c),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut out = Exposition {
            text: String::new(),
        };
        out.sample(
            "m",
            &[("name", &"a\\b\"c\nd"), ("plain", &"é x"), ("n", &7)],
            1u64,
        );
        assert_eq!(
            out.text,
            "m{name=\"a\\\\b\\\"c\\nd\",plain=\"é x\",n=\"7\"} 1\n"
        );
    }

    #[test]
    fn values_use_the_prometheus_spelling() {
        let text = |value: Value| value.to_string();
        assert_eq!(text(Value::Count(u64::MAX)), "18446744073709551615");
        assert_eq!(text(Value::Real(-6.5)), "-6.5");
        assert_eq!(text(Value::Real(1e-7)), "0.0000001");
        assert_eq!(text(Value::Real(f64::INFINITY)), "+Inf");
        assert_eq!(text(Value::Real(f64::NEG_INFINITY)), "-Inf");
        assert_eq!(text(Value::Real(f64::NAN)), "NaN");
    }

    #[test]
    fn silence_is_minus_infinity_dbfs() {
        assert_eq!(dbfs(0.0), f64::NEG_INFINITY);
        assert_eq!(dbfs(1.0), 0.0);
        assert!((dbfs(0.5) + 6.0206).abs() < 1e-4);
    }
}
