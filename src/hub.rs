//! The broadcast hub: hands every frame to every listener without ever waiting for one.
//!
//! The framer owns the [`Publisher`]; HTTP handlers hold clones of the [`Hub`] and call
//! [`Hub::subscribe`] once per listener. Frames travel as `Arc<Frame>` through a bounded
//! `tokio::sync::broadcast` channel: sending overwrites the oldest retained frame and never
//! blocks, so a listener that stops reading costs at most the channel's fixed capacity, shared
//! by all. A listener more than `backlog_frames` behind is skipped forward to the newest
//! `backlog_frames` frames the next time it reads; the skip is counted and reported with the
//! next frame it gets. Dropping the publisher closes the hub: listeners get what is still
//! retained, then their streams end, and new subscriptions are refused.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio_stream::Stream;
use tokio_util::sync::ReusableBoxFuture;

use crate::fanout::Fanout;
use crate::frame::Frame;
use crate::lock;
use crate::stats::{Endpoint, SourceState, Stats};

struct Shared {
    backlog_frames: usize,
    burst_frames: usize,
    /// Listeners allowed at once, all endpoints together.
    max_listeners: Option<u64>,
    /// The last `burst_frames` frames, for new listeners. Only touched when `burst_frames > 0`;
    /// the publisher holds the lock across its send so that a subscriber taking the lock gets
    /// the burst and a receiver positioned exactly after it: no frame missed or repeated.
    recent: Mutex<VecDeque<Arc<Frame>>>,
    stats: Arc<Stats>,
}

pub struct Publisher {
    sender: broadcast::Sender<Arc<Frame>>,
    shared: Arc<Shared>,
    /// The raw PCM/WAV listeners' shards, which get every frame too.
    fanout: Option<Fanout>,
}

#[derive(Clone)]
pub struct Hub {
    /// Weak, so that the publisher alone keeps the channel open: when it drops, the hub closes.
    sender: broadcast::WeakSender<Arc<Frame>>,
    shared: Arc<Shared>,
}

/// How a hub is bounded.
#[derive(Clone, Copy, Debug)]
pub struct HubLimits {
    /// How far a listener may fall behind before it is skipped forward.
    pub backlog_frames: usize,
    /// Recent frames a new listener gets before live ones.
    pub burst_frames: usize,
    /// Listeners allowed at once; `None` for no limit.
    pub max_listeners: Option<u64>,
}

/// Why a listener could not subscribe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscribeError {
    /// The source has ended; the hub is closed.
    Ended,
    /// `max_listeners` are already connected.
    Full,
}

/// Creates a hub bounded by `limits`.
pub fn hub(limits: HubLimits, stats: Arc<Stats>) -> (Publisher, Hub) {
    let HubLimits {
        backlog_frames,
        burst_frames,
        max_listeners,
    } = limits;
    let backlog_frames = backlog_frames.max(1);
    // The channel must retain more than the backlog so that `Receiver::len` can see a listener
    // exceed it; tokio rounds the capacity up to a power of two anyway.
    let (sender, _) = broadcast::channel((backlog_frames + 1).next_power_of_two());
    let shared = Arc::new(Shared {
        backlog_frames,
        burst_frames: burst_frames.min(backlog_frames),
        max_listeners,
        recent: Mutex::new(VecDeque::with_capacity(burst_frames)),
        stats,
    });
    let hub = Hub {
        sender: sender.downgrade(),
        shared: shared.clone(),
    };
    let publisher = Publisher {
        sender,
        shared,
        fanout: None,
    };
    (publisher, hub)
}

impl Publisher {
    /// Also hands every frame to `fanout`, and closes it when the publisher drops.
    pub fn with_fanout(mut self, fanout: Fanout) -> Publisher {
        self.fanout = Some(fanout);
        self
    }

    /// Publishes a frame to every current listener. Never waits for any of them.
    pub fn publish(&self, frame: Frame) {
        let stats = &self.shared.stats;
        stats.frame_published(frame.level);
        if stats.source_state() == SourceState::Starting {
            stats.set_source_state(SourceState::Running);
        }
        let frame = Arc::new(frame);
        if let Some(fanout) = &self.fanout {
            fanout.publish(&frame);
        }
        if self.shared.burst_frames == 0 {
            // An error only means nobody listens right now; the frame is simply not retained.
            let _ = self.sender.send(frame);
            return;
        }
        let mut recent = lock(&self.shared.recent);
        if recent.len() == self.shared.burst_frames {
            recent.pop_front();
        }
        recent.push_back(frame.clone());
        let _ = self.sender.send(frame);
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        if let Some(fanout) = &self.fanout {
            fanout.close();
        }
    }
}

impl Hub {
    /// Counts a new listener of `endpoint` against `max_listeners`, without a subscription:
    /// for listeners that [`crate::fanout`] serves from its own copy of the frames.
    pub fn join(&self, endpoint: Endpoint) -> Result<Membership, SubscribeError> {
        if self.sender.strong_count() == 0 {
            return Err(SubscribeError::Ended);
        }
        self.membership(endpoint)
    }

    fn membership(&self, endpoint: Endpoint) -> Result<Membership, SubscribeError> {
        if self
            .shared
            .stats
            .try_join(endpoint, self.shared.max_listeners)
        {
            Ok(Membership {
                endpoint,
                stats: self.shared.stats.clone(),
            })
        } else {
            Err(SubscribeError::Full)
        }
    }

    /// Subscribes a new listener of `endpoint`.
    pub fn subscribe(&self, endpoint: Endpoint) -> Result<Subscription, SubscribeError> {
        let sender = self.sender.upgrade().ok_or(SubscribeError::Ended)?;
        let membership = self.membership(endpoint)?;
        Ok(self.subscription(sender, Some(membership)))
    }

    /// Subscribes one of pcmcast's own consumers of the frames (a codec's encoder, see
    /// [`crate::codec`], or the Icecast push): it is skipped forward like a listener when it
    /// falls behind, but it is not a listener, so it is neither counted in the listener stats
    /// (nor its skips in `frames_skipped`) nor refused by `max_listeners`.
    pub fn tap(&self) -> Result<Subscription, SubscribeError> {
        let sender = self.sender.upgrade().ok_or(SubscribeError::Ended)?;
        Ok(self.subscription(sender, None))
    }

    fn subscription(
        &self,
        sender: broadcast::Sender<Arc<Frame>>,
        membership: Option<Membership>,
    ) -> Subscription {
        let (receiver, burst) = if self.shared.burst_frames == 0 {
            (sender.subscribe(), VecDeque::new())
        } else {
            let recent = lock(&self.shared.recent);
            (sender.subscribe(), recent.clone())
        };
        drop(sender);
        let backlog_frames = self.shared.backlog_frames;
        Subscription {
            membership,
            burst,
            next: ReusableBoxFuture::new(next_frame(receiver, backlog_frames)),
            done: false,
            shared: self.shared.clone(),
        }
    }

    pub fn backlog_frames(&self) -> usize {
        self.shared.backlog_frames
    }
}

/// One frame for one listener, with how many frames it missed just before this one.
pub struct Delivery {
    pub frame: Arc<Frame>,
    pub skipped: u64,
}

/// A listener's view of the hub: a stream of [`Delivery`]s that ends when the hub closes.
/// Dropping it unsubscribes the listener at once.
pub struct Subscription {
    /// `None` for a [`Hub::tap`] (an encoder, the Icecast push), which is not a listener.
    membership: Option<Membership>,
    burst: VecDeque<Arc<Frame>>,
    next: ReusableBoxFuture<'static, (Option<Delivery>, broadcast::Receiver<Arc<Frame>>)>,
    done: bool,
    shared: Arc<Shared>,
}

/// Waits for the listener's next frame, first skipping it forward if it is too far behind.
async fn next_frame(
    mut receiver: broadcast::Receiver<Arc<Frame>>,
    backlog_frames: usize,
) -> (Option<Delivery>, broadcast::Receiver<Arc<Frame>>) {
    let mut skipped = 0u64;
    while receiver.len() > backlog_frames {
        match receiver.try_recv() {
            Ok(_) => skipped += 1,
            Err(TryRecvError::Lagged(n)) => skipped += n,
            Err(_) => break,
        }
    }
    loop {
        match receiver.recv().await {
            Ok(frame) => return (Some(Delivery { frame, skipped }), receiver),
            Err(RecvError::Lagged(n)) => skipped += n,
            Err(RecvError::Closed) => return (None, receiver),
        }
    }
}

impl Stream for Subscription {
    type Item = Delivery;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        if let Some(frame) = self.burst.pop_front() {
            return Poll::Ready(Some(Delivery { frame, skipped: 0 }));
        }
        if self.done {
            return Poll::Ready(None);
        }
        let (delivery, receiver) = std::task::ready!(self.next.poll(cx));
        match delivery {
            Some(delivery) => {
                // A tap's skips are its own to count: it is not a listener.
                if delivery.skipped > 0 && self.membership.is_some() {
                    self.shared
                        .stats
                        .frames_skipped
                        .fetch_add(delivery.skipped, std::sync::atomic::Ordering::Relaxed);
                }
                let backlog_frames = self.shared.backlog_frames;
                self.next.set(next_frame(receiver, backlog_frames));
                Poll::Ready(Some(delivery))
            }
            None => {
                self.done = true;
                Poll::Ready(None)
            }
        }
    }
}

impl Subscription {
    /// Counts body bytes handed to the HTTP layer for this listener.
    pub fn sent(&self, bytes: usize) {
        if let Some(membership) = &self.membership {
            membership.sent(bytes as u64);
        }
    }
}

/// A listener counted in the stats: joined on creation, left on drop.
pub struct Membership {
    endpoint: Endpoint,
    stats: Arc<Stats>,
}

impl Membership {
    pub fn endpoint(&self) -> Endpoint {
        self.endpoint
    }

    /// Counts pages of an encoded stream this listener missed because it fell behind.
    pub fn skipped_pages(&self, pages: u64) {
        self.stats
            .endpoint(self.endpoint)
            .pages_skipped
            .fetch_add(pages, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts body bytes sent to this listener.
    pub fn sent(&self, bytes: u64) {
        self.stats
            .endpoint(self.endpoint)
            .bytes_sent
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.stats.listener_left(self.endpoint);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;
    use crate::frame::StreamFormat;
    use tokio_stream::StreamExt;

    fn limits(backlog_frames: usize, burst_frames: usize) -> HubLimits {
        HubLimits {
            backlog_frames,
            burst_frames,
            max_listeners: None,
        }
    }

    #[test]
    fn a_full_hub_refuses_listeners_until_one_leaves() {
        let stats = Arc::new(Stats::default());
        let (_publisher, hub) = hub(
            HubLimits {
                max_listeners: Some(2),
                ..limits(4, 0)
            },
            stats.clone(),
        );
        let a = hub.subscribe(Endpoint::Pcm).unwrap();
        let _b = hub.subscribe(Endpoint::Wav).unwrap();
        assert_eq!(
            hub.subscribe(Endpoint::Pcm).err(),
            Some(SubscribeError::Full)
        );
        drop(a);
        assert!(hub.subscribe(Endpoint::Ndjson).is_ok());
        let wav = stats.endpoint(Endpoint::Wav);
        assert_eq!(wav.listeners_total.load(Relaxed), 1);
        assert_eq!(stats.listeners_total.load(Relaxed), 3);
    }

    fn frame(seq: u64) -> Frame {
        let format = StreamFormat {
            rate_hz: 1_000,
            channels: 1,
        };
        Frame::new(seq, seq * 4, 0.0, format, vec![0.0; 4].into())
    }

    #[tokio::test]
    async fn every_listener_gets_every_frame_then_the_end() {
        let stats = Arc::new(Stats::default());
        let (publisher, hub) = hub(limits(8, 0), stats.clone());
        let mut a = hub.subscribe(Endpoint::Pcm).unwrap();
        let mut b = hub.subscribe(Endpoint::Pcm).unwrap();
        assert_eq!(stats.listeners_current.load(Relaxed), 2);
        for seq in 0..5 {
            publisher.publish(frame(seq));
        }
        drop(publisher);
        for listener in [&mut a, &mut b] {
            let seqs: Vec<u64> = listener.map(|d| d.frame.seq).collect().await;
            assert_eq!(seqs, vec![0, 1, 2, 3, 4]);
        }
        assert_eq!(
            hub.subscribe(Endpoint::Pcm).err(),
            Some(SubscribeError::Ended),
            "closed hub refuses listeners"
        );
        drop((a, b));
        assert_eq!(stats.listeners_current.load(Relaxed), 0);
    }

    #[tokio::test]
    async fn a_listener_too_far_behind_skips_to_the_backlog_and_is_told() {
        let stats = Arc::new(Stats::default());
        let backlog = 5;
        let (publisher, hub) = hub(limits(backlog, 0), stats.clone());
        let mut slow = hub.subscribe(Endpoint::Pcm).unwrap();
        for seq in 0..40 {
            publisher.publish(frame(seq));
        }
        let first = slow.next().await.unwrap();
        assert_eq!(first.frame.seq, 40 - backlog as u64);
        assert_eq!(first.skipped, 40 - backlog as u64);
        let second = slow.next().await.unwrap();
        assert_eq!((second.frame.seq, second.skipped), (first.frame.seq + 1, 0));
        assert_eq!(stats.frames_skipped.load(Relaxed), 40 - backlog as u64);
    }

    #[tokio::test]
    async fn a_tap_is_skipped_forward_without_counting_as_a_listener() {
        let stats = Arc::new(Stats::default());
        let (publisher, hub) = hub(
            HubLimits {
                max_listeners: Some(1),
                ..limits(8, 0)
            },
            stats.clone(),
        );
        let _listener = hub.subscribe(Endpoint::Pcm).unwrap();
        let tap = hub.tap().expect("a tap is not refused by max_listeners");
        assert_eq!(stats.listeners_total.load(Relaxed), 1);
        for seq in 0..20 {
            publisher.publish(frame(seq));
        }
        drop(publisher);
        let deliveries: Vec<(u64, u64)> = tap.map(|d| (d.frame.seq, d.skipped)).collect().await;
        assert_eq!(deliveries[0], (12, 12), "skipped forward to the backlog");
        assert_eq!(deliveries.len(), 8);
        assert_eq!(
            stats.frames_skipped.load(Relaxed),
            0,
            "not counted with the listeners' skips"
        );
        assert!(hub.tap().is_err(), "a closed hub refuses taps too");
        assert_eq!(stats.listeners_current.load(Relaxed), 1);
    }

    #[tokio::test]
    async fn burst_gives_recent_frames_then_live_ones_without_gap() {
        let stats = Arc::new(Stats::default());
        let (publisher, hub) = hub(limits(16, 3), stats);
        for seq in 0..10 {
            publisher.publish(frame(seq));
        }
        let listener = hub.subscribe(Endpoint::Pcm).unwrap();
        publisher.publish(frame(10));
        drop(publisher);
        let seqs: Vec<u64> = listener.map(|d| d.frame.seq).collect().await;
        assert_eq!(seqs, vec![7, 8, 9, 10]);
    }
}
