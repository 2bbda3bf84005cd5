//! `/status` (JSON) and `/healthz` (200 while frames flow, 503 otherwise). `/healthz` is about
//! the source only: an Icecast push that is retrying shows in `/status`, not there.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::AppState;
use crate::codec::Codec;
use crate::icecast::PushStatus;
use crate::stats::{Endpoint, SourceState, Stats};

/// `/status`; `/healthz` is routed by the caller, outside access control.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/status", get(status))
}

async fn status(State(state): State<Arc<AppState>>) -> Json<Value> {
    let stats = &state.stats;
    let source = &state.source;
    let level = stats.last_level();
    Json(json!({
        "source": {
            "kind": source.kind,
            "name": source.name,
            "state": stats.source_state().name(),
            "rate": source.format.rate_hz,
            "channels": source.format.channels,
            "frame_size": state.frame_size_samples,
        },
        "frames_produced": stats.frames_produced.load(Relaxed),
        "samples_dropped": stats.samples_dropped.load(Relaxed),
        "listeners": {
            "current": stats.listeners_current.load(Relaxed),
            "peak": stats.listeners_peak.load(Relaxed),
            "total": stats.listeners_total.load(Relaxed),
            "dropped": stats.listeners_dropped.load(Relaxed),
        },
        "frames_skipped": stats.frames_skipped.load(Relaxed),
        "realtime_threads": stats.realtime_threads.load(Relaxed),
        "endpoints": endpoints(stats),
        "encoders": encoders(&state),
        "backlog_frames": state.hub.backlog_frames(),
        "uptime_s": stats.uptime().as_secs_f64(),
        "level": {
            "rms": level.rms,
            "peak": level.peak,
            "rms_dbfs": dbfs(level.rms),
            "peak_dbfs": dbfs(level.peak),
        },
        "icecast": state.icecast.as_deref().map(icecast),
    }))
}

/// The Icecast push: where (without the password), what, and how it goes.
fn icecast(push: &PushStatus) -> Value {
    json!({
        "url": push.url,
        "format": push.format.name(),
        "content_type": push.format.content_type(),
        "state": push.state().name(),
        "bytes_sent": push.bytes_sent.load(Relaxed),
        "connects": push.connects.load(Relaxed),
        "frames_skipped": push.frames_skipped.load(Relaxed),
        "last_error": push.last_error(),
    })
}

/// Listeners and bytes sent per stream endpoint; for the encoded ones, also what their
/// encoders cost: CPU seconds for the audio seconds they encoded.
fn endpoints(stats: &Stats) -> Value {
    let mut endpoints = serde_json::Map::new();
    for endpoint in Endpoint::ALL {
        let e = stats.endpoint(endpoint);
        let mut entry = json!({
            "listeners": {
                "current": e.listeners_current.load(Relaxed),
                "peak": e.listeners_peak.load(Relaxed),
                "total": e.listeners_total.load(Relaxed),
            },
            "bytes_sent": e.bytes_sent.load(Relaxed),
        });
        if Endpoint::ENCODED.contains(&endpoint) {
            entry["encoder"] = json!({
                "cpu_s": e.encoder_cpu_ns.load(Relaxed) as f64 / 1e9,
                "audio_samples": e.encoded_source_samples.load(Relaxed),
                "faults": e.encoder_faults.load(Relaxed),
                "pages_skipped": e.pages_skipped.load(Relaxed),
            });
        }
        endpoints.insert(endpoint.name().to_owned(), entry);
    }
    Value::Object(endpoints)
}

/// The encoders running now, and those that failed within the last few seconds.
fn encoders(state: &AppState) -> Value {
    let list: Vec<Value> = state
        .encoders
        .status()
        .into_iter()
        .map(|encoder| {
            let mut entry = json!({
                "endpoint": encoder.codec.name(),
                "state": if encoder.fault.is_some() { "failed" } else { "running" },
                "listeners": encoder.listeners.unwrap_or(0),
            });
            if let Codec::Opus { bitrate_kbps } = encoder.codec {
                entry["bitrate_kbps"] = json!(bitrate_kbps);
            }
            if let Some(fault) = encoder.fault {
                entry["error"] = json!(fault);
            }
            entry
        })
        .collect();
    Value::Array(list)
}

/// Decibels relative to full scale; `null` in JSON for silence.
fn dbfs(linear: f32) -> Option<f32> {
    (linear > 0.0).then(|| 20.0 * linear.log10())
}

pub async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    match source_health(&state) {
        Ok(()) => "ok".into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": reason })),
        )
            .into_response(),
    }
}

/// Whether the source delivers frames: running, with a frame within a few frame periods (at
/// least a second). The reason why not otherwise. `/healthz` and `/metrics` both ask this.
pub fn source_health(state: &AppState) -> Result<(), String> {
    let frame_period = state.frame_size_samples as f64 / f64::from(state.source.format.rate_hz);
    let limit = Duration::from_secs_f64((4.0 * frame_period).max(1.0));
    let source_state = state.stats.source_state();
    match state.stats.since_last_frame() {
        Some(age) if source_state == SourceState::Running && age <= limit => Ok(()),
        Some(age) if source_state == SourceState::Running => Err(format!(
            "no frame from the source for {:.1} s",
            age.as_secs_f64()
        )),
        _ => Err(format!("the source is {}", source_state.name())),
    }
}
