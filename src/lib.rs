//! pcmcast captures audio once and streams it to any number of HTTP listeners as raw PCM, WAV,
//! NDJSON, Opus or FLAC. The producer runs whether or not anyone listens, every listener gets
//! every frame as soon as it exists, and a slow or dead listener never stalls the source or the
//! others.
//!
//! # Layout
//!
//! The pipeline, one module per stage:
//!
//! ```text
//! source::{capture, wav, tone, relay} ──push──▶ ring (SPSC, lock-free) ──pop──▶ framer ──▶ hub ─┬─▶ fanout: PCM, WAV, NDJSON
//!   paced, own thread                  overflow: count, drop           thread    broadcast  │   sockets written directly
//!                                                                                of Arc<Frame>├─▶ http: SSE, WebSocket bodies
//!                                                                                             └─▶ codec: one encoder per stream:
//!                                                                                                 Opus, FLAC pages
//! ```
//!
//! - [`config`]: command line and validated [`Settings`].
//! - [`source`]: the producers; [`ring`]: the lock-free ring between source and framer.
//! - [`framer`]: cuts fixed-size [`frame::Frame`]s; [`encode`]: their wire encodings.
//! - [`hub`]: the bounded broadcast with per-listener skip-forward.
//! - [`fanout`]: the threads that write raw PCM, WAV and NDJSON frames straight to sockets.
//! - [`codec`]: the Opus and FLAC encoders, each run once for all its listeners.
//! - [`http`]: the axum endpoints; [`stats`]: the shared counters they report.
//! - [`server`]: the accept loop and the limits every connection lives under.
//! - [`icecast`]: the push of the stream to an Icecast server (`--icecast`), one more
//!   subscriber of the hub.
//! - [`net`]: the `http://` URL and the response head that the relay and the Icecast push
//!   share as HTTP clients.
//!
//! The library never binds a port or installs a signal handler: [`Pcmcast::run`] takes a
//! bound listener and a cancellation token, so tests run real servers on `127.0.0.1:0`.

pub mod codec;
pub mod config;
pub mod encode;
pub mod fanout;
pub mod frame;
pub mod framer;
pub mod http;
pub mod hub;
pub mod icecast;
pub mod memory;
pub mod net;
pub mod realtime;
pub mod ring;
pub mod server;
pub mod source;
pub mod stats;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Settings;
use framer::Framer;
use realtime::Role;
use source::{OpenSource, SourceError, SourceInfo};
use stats::Stats;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("cannot start the framer thread")]
    FramerThread(#[source] std::io::Error),
    #[error("cannot start the fan-out threads")]
    FanoutThreads(#[source] std::io::Error),
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
    #[error("--icecast cannot push this source as {format}")]
    IcecastFormat {
        format: &'static str,
        #[source]
        cause: codec::CodecError,
    },
}

/// How long open streams get to finish after shutdown or the end of the source before the
/// server stops waiting for them (a client that stopped reading cannot take its final chunk).
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
const END_OF_SOURCE_GRACE: Duration = Duration::from_secs(5);

/// An opened source and the settings to serve it with.
pub struct Pcmcast {
    settings: Settings,
    source: OpenSource,
}

impl Pcmcast {
    /// Opens and validates the source, so that bad input fails before a port is bound.
    pub fn open(settings: Settings) -> Result<Pcmcast, Error> {
        let source = OpenSource::open(&settings.source)?;
        if let Some(push) = &settings.icecast {
            push.format
                .encoder(source.info.format, settings.frame_size_samples)
                .map_err(|cause| Error::IcecastFormat {
                    format: push.format.name(),
                    cause,
                })?;
        }
        Ok(Pcmcast { settings, source })
    }

    pub fn source_info(&self) -> &SourceInfo {
        &self.source.info
    }

    /// Runs the pipeline and serves it on `listener` until `shutdown` is cancelled or a
    /// non-looping source ends. Either way, every open stream ends with a clean final chunk.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        let Pcmcast { settings, source } = self;
        let format = source.info.format;
        let stats = Arc::new(Stats::default());
        let limits = hub::HubLimits {
            backlog_frames: settings.backlog_frames,
            burst_frames: settings.burst_frames,
            max_listeners: settings.max_listeners,
        };
        let (publisher, hub) = hub::hub(limits, stats.clone());
        let backlog_frames = settings.backlog_frames.max(1);
        let fanout = fanout::Fanout::start(
            fanout::FanoutLimits {
                backlog_frames,
                burst_frames: settings.burst_frames.min(backlog_frames),
                frame_period: Duration::from_secs_f64(
                    settings.frame_size_samples as f64 / f64::from(format.rate_hz),
                ),
            },
            stats.clone(),
            settings.realtime.covers(Role::Fanout),
        )
        .map_err(Error::FanoutThreads)?;
        let publisher = publisher.with_fanout(fanout.clone());

        // The threads stop on `stop`: on shutdown, or once the server is done.
        let stop = shutdown.child_token();
        tokio::spawn(memory::release_when_quiet(stats.clone(), stop.clone()));
        let source_ended = CancellationToken::new();
        let frame_len_samples = settings.frame_size_samples * usize::from(format.channels);
        let half_second = format.rate_hz as usize / 2 * usize::from(format.channels);
        let (writer_parts, consumer) = ring::ring(half_second.max(4 * frame_len_samples));
        let framer_thread = framer::spawn(
            consumer,
            Framer::new(format, settings.frame_size_samples),
            publisher,
            stats.clone(),
            stop.clone(),
            source_ended.clone(),
            settings.realtime.covers(Role::Framer),
        )
        .map_err(Error::FramerThread)?;
        let writer = writer_parts.into_writer(framer_thread.thread().clone(), stats.clone());
        let info = source.info.clone();
        let source_thread = source.start(
            writer,
            settings.frame_size_samples,
            stats.clone(),
            stop.clone(),
            settings.realtime.covers(Role::Source),
        )?;
        tracing::info!(source = info.kind, name = %info.name, rate_hz = format.rate_hz,
            channels = format.channels, frame_size = settings.frame_size_samples, "source started");
        let icecast = settings.icecast.map(|push| {
            let status = Arc::new(icecast::PushStatus::new(&push));
            let stream = icecast::PushStream {
                hub: hub.clone(),
                format,
                frame_size_samples: settings.frame_size_samples,
                description: format!(
                    "pcmcast {} source, {} Hz, {} channels",
                    info.kind, format.rate_hz, format.channels
                ),
            };
            let task = tokio::spawn({
                let (status, stop) = (status.clone(), stop.clone());
                async move { icecast::push(push, stream, &status, stop).await }
            });
            (status, task)
        });

        let tasks = TaskTracker::new();
        let encoders = codec::Encoders::new(
            hub.clone(),
            stats.clone(),
            format,
            settings.frame_size_samples,
            shutdown.clone(),
            tasks.clone(),
        );
        let state = Arc::new(http::AppState {
            hub,
            encoders,
            stats,
            source: info,
            frame_size_samples: settings.frame_size_samples,
            access: settings.access.clone(),
            icecast: icecast.as_ref().map(|(status, _)| status.clone()),
            shutdown: shutdown.clone(),
            tasks: tasks.clone(),
        });
        let finish = {
            let (shutdown, source_ended) = (shutdown.clone(), source_ended.clone());
            async move {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = source_ended.cancelled() => tracing::info!("the source has ended; finishing open streams"),
                }
            }
        };
        let mut server = tokio::spawn(server::serve(
            listener,
            http::app(state),
            fanout.clone(),
            finish,
        ));
        // The server returns once the source has ended (or on shutdown), and may have done so
        // before this task looks: the end of the source comes first, so that the raw streams
        // still get their last frames before they are stopped. The server's own result counts
        // only if it failed on its own.
        let result = tokio::select! {
            biased;
            () = shutdown.cancelled() => None,
            () = source_ended.cancelled() => None,
            joined = &mut server => Some(joined),
        };
        let result = match result {
            Some(joined) => joined,
            None => {
                let grace = if shutdown.is_cancelled() {
                    // Raw PCM/WAV streams end at once; the others end on the token.
                    fanout.stop();
                    SHUTDOWN_GRACE
                } else {
                    END_OF_SOURCE_GRACE
                };
                let finished = async {
                    let joined = (&mut server).await;
                    fanout.drained().await;
                    joined
                };
                match tokio::time::timeout(grace, finished).await {
                    Ok(joined) => joined,
                    Err(_) => {
                        tracing::warn!(
                            "some listeners did not take their final chunk in time; closing them"
                        );
                        server.abort();
                        Ok(())
                    }
                }
            }
        };
        fanout.stop();
        tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some WebSocket listeners did not close in time");
        }
        stop.cancel();
        if let Some((_, task)) = icecast
            && tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err()
        {
            tracing::warn!("the Icecast push did not stop in time");
        }
        let joined = tokio::task::spawn_blocking(move || {
            let _ = source_thread.join();
            let _ = framer_thread.join();
            fanout.join();
        });
        let _ = joined.await;
        result.map_err(|join_error| Error::Serve(std::io::Error::other(join_error)))
    }
}

/// Locks `mutex` whether or not a thread panicked while holding it: pcmcast's locks guard plain
/// data that no panic can leave half-updated.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
