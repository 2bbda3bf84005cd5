//! The lock-free single-producer single-consumer ring between the source and the framer.
//!
//! The source owns the [`RingWriter`]; the framer thread owns the consumer half. The writer
//! never blocks: samples that do not fit are dropped and counted in `Stats::samples_dropped`
//! (the framer is the one that fell behind, and the source must keep its real-time pace).
//! Dropping the writer is how the source says "no more samples": the framer sees the producer
//! half released, drains the ring, emits the short last frame and closes the hub.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::thread::Thread;

use ringbuf::traits::{Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};

use crate::stats::Stats;

pub struct RingWriter {
    producer: HeapProd<f32>,
    /// The framer thread, unparked after every push so it cuts frames at once.
    framer: Thread,
    stats: Arc<Stats>,
}

impl RingWriter {
    /// Pushes interleaved samples. Never blocks and never allocates: `push_slice` copies into
    /// the preallocated ring, the shortfall goes to an atomic counter, and `unpark` is a
    /// non-blocking wake-up, so this is safe to call from a real-time audio callback.
    pub fn push(&mut self, samples: &[f32]) {
        let pushed = self.producer.push_slice(samples);
        self.pushed(samples.len(), pushed);
    }

    /// Pushes `len` samples produced by `samples` (a conversion over the device's buffer),
    /// with the same guarantees as [`RingWriter::push`].
    pub fn push_iter(&mut self, samples: impl Iterator<Item = f32>, len: usize) {
        let pushed = self.producer.push_iter(samples);
        self.pushed(len, pushed);
    }

    /// Counts what did not fit and wakes the framer.
    fn pushed(&self, offered: usize, pushed: usize) {
        let dropped_because_framer_is_behind = offered.saturating_sub(pushed);
        if dropped_because_framer_is_behind > 0 {
            self.stats
                .samples_dropped
                .fetch_add(dropped_because_framer_is_behind as u64, Relaxed);
        }
        self.framer.unpark();
    }
}

/// Creates the ring. The consumer goes to the framer thread, whose handle then completes the
/// writer with [`RingWriterParts::into_writer`].
pub fn ring(capacity_samples: usize) -> (RingWriterParts, HeapCons<f32>) {
    let (producer, consumer) = HeapRb::<f32>::new(capacity_samples).split();
    (RingWriterParts { producer }, consumer)
}

/// The producer half before the framer thread exists.
pub struct RingWriterParts {
    producer: HeapProd<f32>,
}

impl RingWriterParts {
    pub fn into_writer(self, framer: Thread, stats: Arc<Stats>) -> RingWriter {
        RingWriter {
            producer: self.producer,
            framer,
            stats,
        }
    }
}
