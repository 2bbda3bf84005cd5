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
use crate::lock;
use crate::source::backoff::Backoff;
use client::End;
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

/// What is pushed: the hub's frames in this format, described to Icecast as this.
pub struct PushStream {
    pub hub: Hub,
    pub format: StreamFormat,
    /// Samples per channel of the hub's frames.
    pub frame_size_samples: usize,
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
    if !settings.format.aligned_for_late_listeners(stream.format) {
        tracing::warn!(
            icecast = %url,
            "with {} channels, listeners who join Icecast's mount after the start may begin in \
             the middle of a sample: Icecast cuts {} streams into 1400-byte blocks",
            stream.format.channels,
            settings.format.name()
        );
    }
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
                let encoder = match settings
                    .format
                    .encoder(stream.format, stream.frame_size_samples)
                {
                    Ok(encoder) => encoder,
                    Err(error) => {
                        // Checked by Pcmcast::open; cannot happen after it.
                        tracing::error!(icecast = %url, "cannot encode the push: {error}");
                        break;
                    }
                };
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
        let error = format!("{:#}", anyhow::Error::new(error));
        tracing::warn!(icecast = %url, "Icecast push failed: {error}; retrying in {delay:?}");
        status.failed(error);
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(delay) => {}
        }
    }
    status.set_state(PushState::Stopped);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::encode::{self, PcmFormat};
    use crate::frame::Frame;
    use crate::hub::{self, HubLimits, Publisher};
    use crate::stats::Stats;

    const FORMAT: StreamFormat = StreamFormat {
        rate_hz: 8_000,
        channels: 2,
    };

    /// Accepts the push's next connection, reads its request head and answers `answer`.
    async fn accept(listener: &TcpListener, answer: &[u8]) -> (TcpStream, String) {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8];
            socket.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        socket.write_all(answer).await.unwrap();
        (socket, String::from_utf8(head).unwrap())
    }

    /// Publishes frames until `count` bytes of body have come, and returns them.
    async fn body(socket: &mut TcpStream, publisher: &Publisher, count: usize) -> Vec<u8> {
        let mut received = vec![0u8; count];
        let mut filled = 0;
        for seq in 0.. {
            let samples: Vec<f32> = (0..8).map(|i| (seq * 8 + i) as f32 / 1024.0).collect();
            publisher.publish(Frame::new(seq, seq * 4, 0.0, FORMAT, samples.into()));
            let read = tokio::time::timeout(
                Duration::from_millis(20),
                socket.read(&mut received[filled..]),
            );
            if let Ok(read) = read.await {
                filled += read.unwrap();
            }
            if filled == count {
                break;
            }
        }
        received
    }

    async fn wait_for(what: &str, ready: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ready() {
            assert!(Instant::now() < deadline, "waited 5 s for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Every connection's body is the encoder's header, then raw frames; a refusal is retried
    /// and reported; the push stops on cancellation.
    #[tokio::test]
    async fn each_connection_starts_with_the_header_and_refusals_are_retried() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let settings = IcecastSettings {
            url: format!("http://source:pw@127.0.0.1:{port}/live.wav")
                .parse()
                .unwrap(),
            format: PushFormat::Wav,
        };
        let (publisher, hub) = hub::hub(
            HubLimits {
                backlog_frames: 64,
                burst_frames: 0,
                max_listeners: None,
            },
            Arc::new(Stats::default()),
        );
        let status = Arc::new(PushStatus::new(&settings));
        let cancel = CancellationToken::new();
        let stream = PushStream {
            hub,
            format: FORMAT,
            frame_size_samples: 4,
            description: "test".to_owned(),
        };
        let task = tokio::spawn({
            let (status, cancel) = (status.clone(), cancel.clone());
            async move { push(settings, stream, &status, cancel).await }
        });
        let header = encode::wav_header(PcmFormat::S16le, FORMAT.rate_hz, FORMAT.channels);

        let refusal = b"HTTP/1.0 401 Authentication Required\r\n\r\nYou need to authenticate\r\n";
        let (refused, head) = accept(&listener, refusal).await;
        assert!(head.starts_with("PUT /live.wav HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("Content-Type: audio/wav\r\n"), "{head}");
        drop(refused);
        wait_for("the refusal", || status.state() == PushState::Retrying).await;
        let error = status.last_error().unwrap();
        assert!(
            error.contains("401") && error.contains("You need to authenticate"),
            "{error}"
        );

        for connection in 1..=2u64 {
            let (mut socket, _) = accept(&listener, b"HTTP/1.0 200 OK\r\n\r\n").await;
            wait_for("the connection", || {
                status.connects.load(Relaxed) == connection
            })
            .await;
            let frame_bytes = 8 * 2;
            let received = body(&mut socket, &publisher, header.len() + 3 * frame_bytes).await;
            assert_eq!(
                &received[..header.len()],
                &header[..],
                "connection {connection}"
            );
            let samples: Vec<i16> = received[header.len()..]
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect();
            let first = samples[0];
            assert_eq!(first % 256, 0, "the body starts on a frame: {samples:?}");
            for (i, &sample) in samples.iter().enumerate() {
                assert_eq!(sample, first + 32 * i as i16, "raw s16le, no chunk framing");
            }
            assert_eq!(status.state(), PushState::Streaming);
            // Icecast goes away: the push reconnects.
        }
        assert!(status.bytes_sent.load(Relaxed) >= 2 * header.len() as u64);
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the push stops on cancellation")
            .unwrap();
        assert_eq!(status.state(), PushState::Stopped);
    }
}
