//! The Icecast push (`--icecast URL`): pcmcast is a source client of an Icecast 2.4 server and
//! sends it the stream, alongside its own endpoints, so that Icecast (and its relays) can serve
//! listeners on other machines.
//!
//! One task, [`push`], owns the connection. It is one more subscriber of the hub — a
//! [`Hub::tap`], not counted as a listener — so it never blocks the source or the listeners: if
//! Icecast takes the data more slowly than it comes, the hub skips the push forward (counted in
//! [`PushStatus`]), and a connection that takes nothing for [`client::STALL_LIMIT`] is dropped.
//! When Icecast refuses the source, goes away or restarts, the task reports `retrying` and
//! reconnects with the sources' backoff (100 ms doubling to 2 s); each connection starts a
//! fresh subscription and a fresh encoder, so Icecast gets a complete stream every time. The
//! task ends when the push is cancelled (shutdown) or the source ends.
//!
//! - [`url`]: the `--icecast` URL, whose password is never shown.
//! - [`format`]: what is pushed; where Ogg/Opus and FLAC plug in.
//! - [`client`]: the HTTP `PUT` and the body.

pub mod client;
pub mod format;
pub mod url;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::frame::StreamFormat;
use crate::hub::Hub;
use crate::source::backoff::Backoff;
use client::{End, PushError};
pub use format::{FormatError, PushEncoder, PushFormat};
pub use url::{IcecastUrl, UrlError};

/// Where to push and what.
#[derive(Clone, Debug, PartialEq)]
pub struct IcecastSettings {
    pub url: IcecastUrl,
    pub format: PushFormat,
}

/// A connection that lasted this long was healthy: its failure is retried after the shortest
/// delay again. (A server that accepts and at once drops the source is retried ever more
/// slowly, like one that refuses it.)
const HEALTHY_AFTER: Duration = Duration::from_secs(2);

/// What the push is doing, as `/status` and `/metrics` report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PushState {
    /// Connecting, or waiting for Icecast's answer.
    Connecting = 0,
    /// Icecast accepted the source; the stream flows.
    Streaming = 1,
    /// The last attempt failed (see `last_error`); waiting to try again.
    Retrying = 2,
    /// The source has ended, or pcmcast is shutting down: no more attempts.
    Stopped = 3,
}

impl PushState {
    pub const ALL: [PushState; 4] = [
        PushState::Connecting,
        PushState::Streaming,
        PushState::Retrying,
        PushState::Stopped,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PushState::Connecting => "connecting",
            PushState::Streaming => "streaming",
            PushState::Retrying => "retrying",
            PushState::Stopped => "stopped",
        }
    }

    fn from_u8(value: u8) -> PushState {
        match value {
            1 => PushState::Streaming,
            2 => PushState::Retrying,
            3 => PushState::Stopped,
            _ => PushState::Connecting,
        }
    }
}

/// The push's counters, written by the push task and read by `/status` and `/metrics`.
pub struct PushStatus {
    /// The URL without its password.
    pub url: String,
    pub format: PushFormat,
    state: AtomicU8,
    /// Body bytes written to Icecast, all connections together.
    pub bytes_sent: AtomicU64,
    /// Connections Icecast accepted.
    pub connects: AtomicU64,
    /// Frames the push missed because it fell more than the backlog behind.
    pub frames_skipped: AtomicU64,
    /// Why the last connection or attempt failed (its whole cause chain, no password).
    last_error: Mutex<Option<String>>,
}

impl PushStatus {
    pub fn new(settings: &IcecastSettings) -> PushStatus {
        PushStatus {
            url: settings.url.to_string(),
            format: settings.format,
            state: AtomicU8::new(PushState::Connecting as u8),
            bytes_sent: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            frames_skipped: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    pub fn state(&self) -> PushState {
        PushState::from_u8(self.state.load(Relaxed))
    }

    fn set_state(&self, state: PushState) {
        self.state.store(state as u8, Relaxed);
    }

    pub fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    fn connected(&self) {
        self.connects.fetch_add(1, Relaxed);
        self.set_state(PushState::Streaming);
    }

    fn failed(&self, error: String) {
        *lock(&self.last_error) = Some(error);
        self.set_state(PushState::Retrying);
    }

    fn sent(&self, bytes: usize) {
        self.bytes_sent.fetch_add(bytes as u64, Relaxed);
    }

    fn skipped(&self, frames: u64) {
        if frames > 0 {
            self.frames_skipped.fetch_add(frames, Relaxed);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The lock guards a plain value that no panic can leave half-updated.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What is pushed: the hub's frames in this format, described to Icecast as this.
pub struct PushStream {
    pub hub: Hub,
    pub format: StreamFormat,
    /// `Ice-Description`: one line, no control characters.
    pub description: String,
}

/// Pushes `stream` to Icecast until `cancel` fires or the source ends, reconnecting with
/// backoff whenever Icecast refuses the source or the connection fails.
pub async fn push(
    settings: IcecastSettings,
    stream: PushStream,
    status: &PushStatus,
    cancel: CancellationToken,
) {
    let head = client::request_head(
        &settings.url,
        settings.format,
        stream.format,
        &stream.description,
    );
    let url = &status.url;
    let mut backoff = Backoff::new();
    loop {
        status.set_state(PushState::Connecting);
        let opened = tokio::select! {
            () = cancel.cancelled() => break,
            opened = client::open(&settings.url, &head) => opened,
        };
        let error = match opened {
            Err(error) => error,
            Ok(socket) => {
                // Subscribed only now, so that the body starts with live frames.
                let Ok(frames) = stream.hub.tap() else { break };
                status.connected();
                tracing::info!(icecast = %url, format = settings.format.name(), "pushing to Icecast");
                let started = Instant::now();
                let encoder = settings.format.encoder(stream.format);
                match client::send_body(socket, frames, encoder, status, &cancel).await {
                    Ok(End::Cancelled) => break,
                    Ok(End::SourceEnded) => {
                        tracing::info!(icecast = %url, "the source has ended; Icecast push done");
                        break;
                    }
                    Err(error) => {
                        if started.elapsed() >= HEALTHY_AFTER {
                            backoff.reset();
                        }
                        error
                    }
                }
            }
        };
        let delay = backoff.next_delay();
        let error = cause_chain(&error);
        tracing::warn!(icecast = %url, "Icecast push failed: {error}; retrying in {delay:?}");
        status.failed(error);
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(delay) => {}
        }
    }
    status.set_state(PushState::Stopped);
}

/// The error and its sources, `: `-separated, on one line.
fn cause_chain(error: &PushError) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
