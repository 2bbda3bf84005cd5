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
use crate::stats::{Endpoint, EndpointStats, SourceState, Stats};

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let up = status::source_health(&state).is_ok();
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], render(&state, up))
}

fn render(state: &AppState, up: bool) -> String {
    use Kind::{Counter, Gauge};
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
    out.family(
        "pcmcast_source_state",
        Gauge,
        "What the source is doing: 1 for the current state, 0 for the others.",
    );
    let current = stats.source_state();
    for each in SourceState::ALL {
        let value = u64::from(each == current);
        out.sample("pcmcast_source_state", &[("state", &each.name())], value);
    }
    out.single(
        "pcmcast_source_up",
        Gauge,
        "1 while the source delivers frames (/healthz is ok), 0 otherwise.",
        u64::from(up),
    );
    out.single(
        "pcmcast_frames_produced_total",
        Counter,
        "Frames the source has delivered to the hub.",
        stats.frames_produced.load(Relaxed),
    );
    out.single(
        "pcmcast_samples_dropped_total",
        Counter,
        "Samples the source could not push because the ring was full.",
        stats.samples_dropped.load(Relaxed),
    );
    out.single(
        "pcmcast_frames_skipped_total",
        Counter,
        "Frames listeners missed because they fell more than the backlog behind, all listeners.",
        stats.frames_skipped.load(Relaxed),
    );
    out.single(
        "pcmcast_listeners_dropped_total",
        Counter,
        "Raw PCM/WAV listeners dropped because their connection took nothing for as long as the backlog.",
        stats.listeners_dropped.load(Relaxed),
    );
    out.single(
        "pcmcast_backlog_frames",
        Gauge,
        "How many frames a listener may fall behind before it is skipped forward.",
        state.hub.backlog_frames() as u64,
    );

    out.per_endpoint(
        "pcmcast_listeners_current",
        Gauge,
        "Listeners connected now, per stream endpoint.",
        stats,
        |e| &e.listeners_current,
    );
    out.per_endpoint(
        "pcmcast_listeners_peak",
        Gauge,
        "Most listeners connected at once since start-up, per stream endpoint.",
        stats,
        |e| &e.listeners_peak,
    );
    out.per_endpoint(
        "pcmcast_listeners_total",
        Counter,
        "Listeners accepted since start-up, per stream endpoint.",
        stats,
        |e| &e.listeners_total,
    );
    out.per_endpoint(
        "pcmcast_sent_bytes_total",
        Counter,
        "Body bytes handed to the HTTP layer for listeners, per stream endpoint.",
        stats,
        |e| &e.bytes_sent,
    );
    let rate_hz = f64::from(source.format.rate_hz);
    out.per_encoded_endpoint(
        "pcmcast_encoder_cpu_seconds_total",
        Counter,
        "CPU time the encoders of a compressed stream endpoint have used.",
        stats,
        |e| e.encoder_cpu_ns.load(Relaxed) as f64 / 1e9,
    );
    out.per_encoded_endpoint(
        "pcmcast_encoded_audio_seconds_total",
        Counter,
        "Audio the encoders of a compressed stream endpoint have encoded.",
        stats,
        |e| e.encoded_source_samples.load(Relaxed) as f64 / rate_hz,
    );
    out.per_encoded_endpoint(
        "pcmcast_encoder_faults_total",
        Counter,
        "Times an encoder of a compressed stream endpoint failed (its listeners were disconnected).",
        stats,
        |e| e.encoder_faults.load(Relaxed) as f64,
    );
    out.per_encoded_endpoint(
        "pcmcast_pages_skipped_total",
        Counter,
        "Pages of a compressed stream that listeners missed because they fell behind.",
        stats,
        |e| e.pages_skipped.load(Relaxed) as f64,
    );
    out.single(
        "pcmcast_all_listeners_current",
        Gauge,
        "Listeners connected now, all stream endpoints together.",
        stats.listeners_current.load(Relaxed),
    );
    out.single(
        "pcmcast_all_listeners_peak",
        Gauge,
        "Most listeners connected at once since start-up, all stream endpoints together.",
        stats.listeners_peak.load(Relaxed),
    );
    out.single(
        "pcmcast_all_listeners_total",
        Counter,
        "Listeners accepted since start-up, all stream endpoints together.",
        stats.listeners_total.load(Relaxed),
    );

    let level = stats.last_level();
    out.single(
        "pcmcast_level_rms_dbfs",
        Gauge,
        "RMS level of the last frame in dBFS; -Inf for silence and before the first frame.",
        dbfs(level.rms),
    );
    out.single(
        "pcmcast_level_peak_dbfs",
        Gauge,
        "Peak level of the last frame in dBFS; -Inf for silence and before the first frame.",
        dbfs(level.peak),
    );
    out.single(
        "pcmcast_last_frame_age_seconds",
        Gauge,
        "Seconds since the source delivered its last frame; +Inf before the first frame.",
        stats
            .since_last_frame()
            .map_or(f64::INFINITY, |age| age.as_secs_f64()),
    );
    out.single(
        "pcmcast_uptime_seconds",
        Gauge,
        "Seconds since the server started.",
        stats.uptime().as_secs_f64(),
    );
    if let Some(push) = &state.icecast {
        icecast(&mut out, push);
    }
    out.text
}

fn icecast(out: &mut Exposition, push: &PushStatus) {
    use Kind::{Counter, Gauge};
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
    out.family(
        "pcmcast_icecast_state",
        Gauge,
        "What the Icecast push is doing: 1 for the current state, 0 for the others.",
    );
    for each in PushState::ALL {
        let value = u64::from(each == current);
        out.sample("pcmcast_icecast_state", &[("state", &each.name())], value);
    }
    out.single(
        "pcmcast_icecast_up",
        Gauge,
        "1 while Icecast takes the stream, 0 otherwise.",
        u64::from(current == PushState::Streaming),
    );
    out.single(
        "pcmcast_icecast_sent_bytes_total",
        Counter,
        "Body bytes written to Icecast, all connections together.",
        push.bytes_sent.load(Relaxed),
    );
    out.single(
        "pcmcast_icecast_connects_total",
        Counter,
        "Connections Icecast accepted as the source.",
        push.connects.load(Relaxed),
    );
    out.single(
        "pcmcast_icecast_frames_skipped_total",
        Counter,
        "Frames the Icecast push missed because it fell more than the backlog behind.",
        push.frames_skipped.load(Relaxed),
    );
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

    /// A family of one unlabelled sample.
    fn single(&mut self, name: &str, kind: Kind, help: &str, value: impl Into<Value>) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// A family of one sample per stream endpoint, `endpoint` label.
    fn per_endpoint(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        stats: &Stats,
        counter: fn(&EndpointStats) -> &AtomicU64,
    ) {
        self.family(name, kind, help);
        for endpoint in Endpoint::ALL {
            let value = counter(stats.endpoint(endpoint)).load(Relaxed);
            self.sample(name, &[("endpoint", &endpoint.name())], value);
        }
    }

    /// A family of one sample per compressed stream endpoint, `endpoint` label.
    fn per_encoded_endpoint(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        stats: &Stats,
        value: impl Fn(&EndpointStats) -> f64,
    ) {
        self.family(name, kind, help);
        for endpoint in Endpoint::ENCODED {
            let value = value(stats.endpoint(endpoint));
            self.sample(name, &[("endpoint", &endpoint.name())], value);
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
