//! [`Encoders`]: at most one running encoder per [`Codec`], started by its first listener and
//! stopped when its last one leaves, so a codec nobody listens to costs nothing.
//!
//! Ownership. Each running encoder is a blocking task (`TaskTracker::spawn_blocking`) that
//! owns the codec state, a hub subscription that is not counted as a listener, and the only
//! `Sender` of its bounded page broadcast. Listeners hold an `Arc<Running>`: the header and a
//! weak sender to subscribe with. The registry holds only a `Weak<Running>`, so when the last
//! listener drops its `Arc`, the drop guard inside cancels the task's `stop` token and the task
//! ends. The task waits for frames on the runtime's handle (`Handle::block_on`), encodes on its
//! own thread, and sends pages without ever waiting: a listener that falls more than the
//! broadcast's capacity behind loses whole pages (`Lagged`), never stalls the encoder.
//!
//! Faults. An error from the codec or a panic ends the task. Its listeners' bodies end (the
//! sender is dropped), the fault is logged and recorded, and for [`FAULT_HOLD`] the stream
//! answers 503 with the reason; then a new listener may try a fresh encoder. The hub and the
//! PCM endpoints never notice: an encoder is just another subscriber.
//!
//! The source ending closes the hub: the task flushes the encoder, sends the last pages and
//! ends, and the listeners' bodies end after them. Shutdown cancels every `stop` token.

use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::runtime::Handle;
use tokio::sync::broadcast;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use super::{Codec, CodecError, Page, StreamEncoder};
use crate::frame::StreamFormat;
use crate::hub::{Hub, SubscribeError, Subscription};
use crate::lock;
use crate::stats::Stats;

/// How long a stream whose encoder failed answers 503 before a listener may start a new one.
pub const FAULT_HOLD: Duration = Duration::from_secs(5);

/// Makes the encoder for a codec; [`super::new_encoder`] in production, a faulty one in tests.
pub type Factory = Arc<dyn Fn(Codec) -> Result<Box<dyn StreamEncoder>, CodecError> + Send + Sync>;

/// The registry of running encoders. Cheap to clone; every clone is the same registry.
#[derive(Clone)]
pub struct Encoders {
    inner: Arc<Inner>,
}

struct Inner {
    hub: Hub,
    stats: Arc<Stats>,
    factory: Factory,
    /// Pages a listener may fall behind before it skips.
    page_backlog: usize,
    /// Cancelled on shutdown: every encoder stops.
    shutdown: CancellationToken,
    tasks: TaskTracker,
    slots: Mutex<HashMap<Codec, Slot>>,
}

#[derive(Default)]
struct Slot {
    running: Weak<Running>,
    /// Counts encoders started for this codec, so that a late fault report from an old one
    /// cannot mark its successor as failed.
    generation: u64,
    fault: Option<Fault>,
}

struct Fault {
    at: Instant,
    message: String,
}

/// A running encoder as its listeners see it.
struct Running {
    header: Bytes,
    /// Weak, so that the encoder task alone keeps the broadcast open: when it ends, every
    /// listener's page stream ends.
    pages: broadcast::WeakSender<Page>,
    /// Stops the encoder when the last listener drops this.
    _stop: DropGuard,
}

/// One listener's view of an encoder: the stream header, then the pages sent after it joined.
/// Dropping it leaves; the last listener to leave stops the encoder.
pub struct EncodedStream {
    pub header: Bytes,
    /// Yields `Err(Lagged(n))` when the listener fell behind and `n` pages were skipped.
    pub pages: BroadcastStream<Page>,
    _running: Arc<Running>,
}

/// Why a stream cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The source's format cannot be encoded by this codec.
    #[error("{0}")]
    Unsupported(String),
    /// The encoder failed recently; try again after `retry_after`.
    #[error("the encoder failed: {message}")]
    Faulted {
        message: String,
        retry_after: Duration,
    },
    #[error("cannot subscribe to the hub")]
    Subscribe(SubscribeError),
}

/// What `/status` says about one codec's encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderStatus {
    pub codec: Codec,
    /// Listeners now, when running.
    pub listeners: Option<usize>,
    /// The failure, while it holds.
    pub fault: Option<String>,
}

impl Encoders {
    /// The real encoders for a source of `format`, cut into frames of `frame_size_samples`.
    pub fn new(
        hub: Hub,
        stats: Arc<Stats>,
        format: StreamFormat,
        frame_size_samples: usize,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Encoders {
        let factory: Factory =
            Arc::new(move |codec| super::new_encoder(codec, format, frame_size_samples));
        Encoders::with_factory(hub, stats, factory, shutdown, tasks)
    }

    pub fn with_factory(
        hub: Hub,
        stats: Arc<Stats>,
        factory: Factory,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Encoders {
        let page_backlog = hub.backlog_frames().next_power_of_two().max(16);
        Encoders {
            inner: Arc::new(Inner {
                hub,
                stats,
                factory,
                page_backlog,
                shutdown,
                tasks,
                slots: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Joins `codec`'s running encoder, or starts one. Must be called within the runtime.
    pub fn open(&self, codec: Codec) -> Result<EncodedStream, OpenError> {
        let inner = &self.inner;
        let mut slots = lock(&inner.slots);
        let slot = slots.entry(codec).or_default();
        if let Some(running) = slot.running.upgrade() {
            if let Some(sender) = running.pages.upgrade() {
                return Ok(EncodedStream {
                    header: running.header.clone(),
                    pages: BroadcastStream::new(sender.subscribe()),
                    _running: running,
                });
            }
        }
        if let Some(fault) = &slot.fault {
            let since = fault.at.elapsed();
            if since < FAULT_HOLD {
                return Err(OpenError::Faulted {
                    message: fault.message.clone(),
                    retry_after: FAULT_HOLD - since,
                });
            }
        }
        let encoder = match (inner.factory)(codec) {
            Ok(encoder) => encoder,
            Err(CodecError::Unsupported(reason)) => return Err(OpenError::Unsupported(reason)),
            Err(error) => {
                let message = format!("{:#}", anyhow::Error::new(error));
                inner.fault(codec, slot, message.clone());
                return Err(OpenError::Faulted {
                    message,
                    retry_after: FAULT_HOLD,
                });
            }
        };
        let subscription = inner.hub.tap().map_err(OpenError::Subscribe)?;
        let (sender, receiver) = broadcast::channel(inner.page_backlog);
        let stop = inner.shutdown.child_token();
        let running = Arc::new(Running {
            header: encoder.header(),
            pages: sender.downgrade(),
            _stop: stop.clone().drop_guard(),
        });
        slot.generation += 1;
        slot.running = Arc::downgrade(&running);
        slot.fault = None;
        let task = Task {
            inner: inner.clone(),
            codec,
            generation: slot.generation,
            runtime: Handle::current(),
        };
        tracing::info!(?codec, "encoder started");
        inner
            .tasks
            .spawn_blocking(move || task.run(encoder, subscription, sender, stop));
        Ok(EncodedStream {
            header: running.header.clone(),
            pages: BroadcastStream::new(receiver),
            _running: running,
        })
    }

    /// The encoders running or failed now.
    pub fn status(&self) -> Vec<EncoderStatus> {
        let slots = lock(&self.inner.slots);
        let mut status: Vec<EncoderStatus> = slots
            .iter()
            .filter_map(|(&codec, slot)| {
                // Less the `Arc` upgraded here.
                let listeners = slot
                    .running
                    .upgrade()
                    .map(|running| Arc::strong_count(&running) - 1);
                let fault = slot
                    .fault
                    .as_ref()
                    .filter(|fault| fault.at.elapsed() < FAULT_HOLD)
                    .map(|fault| fault.message.clone());
                (listeners.is_some() || fault.is_some()).then_some(EncoderStatus {
                    codec,
                    listeners,
                    fault,
                })
            })
            .collect();
        status.sort_by_key(|s| s.codec);
        status
    }
}

impl Inner {
    /// Records that `codec`'s encoder failed, in `slot`.
    fn fault(&self, codec: Codec, slot: &mut Slot, message: String) {
        tracing::error!(
            ?codec,
            "encoder failed: {message}; its listeners are disconnected and new ones refused for {} s",
            FAULT_HOLD.as_secs()
        );
        self.stats
            .endpoint(codec.endpoint())
            .encoder_faults
            .fetch_add(1, Relaxed);
        slot.fault = Some(Fault {
            at: Instant::now(),
            message,
        });
    }
}

/// One encoder's blocking task.
struct Task {
    inner: Arc<Inner>,
    codec: Codec,
    generation: u64,
    runtime: Handle,
}

impl Task {
    fn run(
        self,
        encoder: Box<dyn StreamEncoder>,
        subscription: Subscription,
        sender: broadcast::Sender<Page>,
        stop: CancellationToken,
    ) {
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            self.encode_frames(encoder, subscription, &sender, &stop)
        }));
        let failure = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(format!("{:#}", anyhow::Error::new(error))),
            Err(payload) => Some(panic_message(payload.as_ref())),
        };
        // Recorded before the sender drops, so that a listener whose stream ends because of
        // the fault and reconnects at once is told about it.
        if let Some(message) = failure {
            let mut slots = lock(&self.inner.slots);
            let slot = slots.entry(self.codec).or_default();
            if slot.generation == self.generation {
                self.inner.fault(self.codec, slot, message);
            }
        } else {
            tracing::info!(codec = ?self.codec, "encoder stopped");
        }
        drop(sender);
    }

    /// Encodes every frame until the listeners are gone, the server shuts down or the source
    /// ends.
    fn encode_frames(
        &self,
        mut encoder: Box<dyn StreamEncoder>,
        mut subscription: Subscription,
        sender: &broadcast::Sender<Page>,
        stop: &CancellationToken,
    ) -> Result<(), CodecError> {
        let stats = self.inner.stats.endpoint(self.codec.endpoint());
        let mut pages = Vec::new();
        loop {
            let next = self.runtime.block_on(async {
                tokio::select! {
                    biased;
                    () = stop.cancelled() => None,
                    delivery = subscription.next() => Some(delivery),
                }
            });
            let cpu_before = thread_cpu_ns();
            let ended = match next {
                None => return Ok(()),
                Some(Some(delivery)) => {
                    encoder.encode(&delivery.frame.samples, &mut pages)?;
                    let samples = delivery.frame.len_per_channel() as u64;
                    stats.encoded_source_samples.fetch_add(samples, Relaxed);
                    false
                }
                Some(None) => {
                    encoder.finish(&mut pages)?;
                    true
                }
            };
            stats
                .encoder_cpu_ns
                .fetch_add(thread_cpu_ns().saturating_sub(cpu_before), Relaxed);
            for page in pages.drain(..) {
                // An error only means that no listener is connected at this instant.
                let _ = sender.send(page);
            }
            if ended {
                return Ok(());
            }
        }
    }
}

/// CPU time this thread has used, in nanoseconds.
#[cfg(unix)]
fn thread_cpu_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to write; the clock id is a constant that
    // every Unix this builds on defines.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if status != 0 {
        return 0;
    }
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

#[cfg(not(unix))]
fn thread_cpu_ns() -> u64 {
    0
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    format!("the encoder panicked: {text}")
}
