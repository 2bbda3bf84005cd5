//! The framer: pops interleaved samples from the ring and cuts them into fixed-size frames
//! stamped with `seq`, `pts` and capture `time`, which it hands to the hub.
//!
//! [`Framer`] is the pure cutting logic; [`spawn`] runs it on a dedicated thread that owns the
//! ring's consumer half and the hub's [`Publisher`]. The thread sleeps in `park_timeout` and is
//! woken by the ring writer after every push, so a frame is published as soon as its last
//! sample is in the ring.

use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ringbuf::HeapCons;
use ringbuf::traits::{Consumer, Observer};
use tokio_util::sync::CancellationToken;

use crate::frame::{Frame, StreamFormat};
use crate::hub::Publisher;
use crate::realtime::{Realtime, Role};
use crate::stats::{SourceState, Stats};

pub struct Framer {
    format: StreamFormat,
    frame_len_samples: usize,
    /// Samples of the frame being filled; its first sample has index `next_pts`.
    pending: Vec<f32>,
    next_seq: u64,
    next_pts: u64,
    /// Capture time just after the last sample pushed, to notice an outage of the source.
    last_end_time: Option<f64>,
}

/// A source that delivers this much less audio than the wall clock says has passed (an
/// outage of the capture device) is treated as having a gap: the frames it missed are counted
/// in `seq` and `pts` so that listeners see the jump, as they see a skip.
const GAP_MIN_S: f64 = 0.5;

impl Framer {
    pub fn new(format: StreamFormat, frame_size_samples: usize) -> Framer {
        let frame_len_samples = frame_size_samples * usize::from(format.channels);
        Framer {
            format,
            frame_len_samples,
            pending: Vec::with_capacity(frame_len_samples),
            next_seq: 0,
            next_pts: 0,
            last_end_time: None,
        }
    }

    /// Adds interleaved samples and emits every frame they complete. `end_time` is the capture
    /// time (Unix seconds) of the instant just after the last of these samples; frame times are
    /// counted back from it at the stream's sample rate.
    pub fn push(&mut self, mut samples: &[f32], end_time: f64, mut emit: impl FnMut(Frame)) {
        let channels = usize::from(self.format.channels);
        if let Some(missed) = self.missed_samples(samples.len() / channels, end_time) {
            // What was pending was captured before the outage, which ended at the last push.
            let before_outage = self.last_end_time.unwrap_or(end_time);
            emit_all(self.finish(before_outage), &mut emit);
            let frame_size = (self.frame_len_samples / channels) as u64;
            let missed_frames = missed.div_ceil(frame_size);
            self.next_seq += missed_frames;
            self.next_pts += missed_frames * frame_size;
        }
        self.last_end_time = Some(end_time);
        let end_pts = self.next_pts + ((self.pending.len() + samples.len()) / channels) as u64;
        while !samples.is_empty() {
            let take = (self.frame_len_samples - self.pending.len()).min(samples.len());
            self.pending.extend_from_slice(&samples[..take]);
            samples = &samples[take..];
            if self.pending.len() == self.frame_len_samples {
                emit(self.cut(end_pts, end_time));
            }
        }
    }

    /// Emits what is left as a short last frame (whole sample frames only), if anything is.
    pub fn finish(&mut self, end_time: f64) -> Option<Frame> {
        let channels = usize::from(self.format.channels);
        self.pending
            .truncate(self.pending.len() / channels * channels);
        if self.pending.is_empty() {
            return None;
        }
        let end_pts = self.next_pts + (self.pending.len() / channels) as u64;
        Some(self.cut(end_pts, end_time))
    }

    /// Sample frames the source failed to deliver before these `len` arrived at `end_time`, if
    /// that is a gap rather than jitter.
    fn missed_samples(&self, len: usize, end_time: f64) -> Option<u64> {
        let last = self.last_end_time?;
        let rate = f64::from(self.format.rate_hz);
        let frame_period_s = self.frame_len_samples as f64 / f64::from(self.format.channels) / rate;
        let missing_s = (end_time - last) - len as f64 / rate;
        (missing_s > GAP_MIN_S.max(4.0 * frame_period_s)).then_some((missing_s * rate) as u64)
    }

    fn cut(&mut self, end_pts: u64, end_time: f64) -> Frame {
        let samples = std::mem::replace(
            &mut self.pending,
            Vec::with_capacity(self.frame_len_samples),
        );
        let len_per_channel = (samples.len() / usize::from(self.format.channels)) as u64;
        let time = end_time - (end_pts - self.next_pts) as f64 / f64::from(self.format.rate_hz);
        let frame = Frame::new(
            self.next_seq,
            self.next_pts,
            time,
            self.format,
            samples.into_boxed_slice(),
        );
        self.next_seq += 1;
        self.next_pts += len_per_channel;
        frame
    }
}

fn emit_all(frame: Option<Frame>, emit: &mut impl FnMut(Frame)) {
    if let Some(frame) = frame {
        emit(frame);
    }
}

/// How long the framer sleeps when the ring is empty and nobody wakes it: a safety net for a
/// missed wake-up and the delay with which it notices cancellation.
const IDLE_WAIT: Duration = Duration::from_millis(20);

/// Starts the framer thread. It runs until the source drops its ring writer (then it drains
/// the ring, publishes the short last frame, drops the publisher, which ends every listener's
/// stream once it has the retained frames, and cancels `source_ended`) or until `cancel` fires.
/// It runs real-time if `realtime` asks for it and the system permits it.
pub fn spawn(
    mut consumer: HeapCons<f32>,
    mut framer: Framer,
    publisher: Publisher,
    stats: Arc<Stats>,
    cancel: CancellationToken,
    source_ended: CancellationToken,
    realtime: bool,
) -> std::io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("pcmcast-framer".into())
        .spawn(move || {
            let _realtime = Realtime::enter_if(realtime, Role::Framer, &stats);
            let mut scratch = vec![0.0f32; consumer.capacity().get()];
            loop {
                // Read before draining: once the writer is gone, whatever is left is the end.
                let source_done = !consumer.write_is_held();
                let popped = consumer.pop_slice(&mut scratch);
                if popped > 0 {
                    framer.push(&scratch[..popped], unix_now(), |frame| {
                        publisher.publish(frame)
                    });
                    continue;
                }
                if cancel.is_cancelled() {
                    stats.set_source_state(SourceState::Stopped);
                    return;
                }
                if source_done {
                    if let Some(last) = framer.finish(unix_now()) {
                        publisher.publish(last);
                    }
                    stats.set_source_state(SourceState::Ended);
                    drop(publisher);
                    source_ended.cancel();
                    return;
                }
                thread::park_timeout(IDLE_WAIT);
            }
        })
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cut_all(format: StreamFormat, frame_size: usize, chunks: &[Vec<f32>]) -> Vec<Frame> {
        let mut framer = Framer::new(format, frame_size);
        let mut frames = Vec::new();
        for chunk in chunks {
            framer.push(chunk, 100.0, |f| frames.push(f));
        }
        frames.extend(framer.finish(100.0));
        frames
    }

    proptest! {
        #[test]
        fn frames_concatenate_to_the_input(
            channels in 1u16..=8,
            frame_size in 1usize..64,
            chunk_lens in proptest::collection::vec(0usize..200, 0..20),
        ) {
            let format = StreamFormat { rate_hz: 8_000, channels };
            let ch = usize::from(channels);
            let mut next = 0.0f32;
            let chunks: Vec<Vec<f32>> = chunk_lens.iter().map(|&n| {
                (0..n * ch).map(|_| { next += 1.0; next }).collect()
            }).collect();
            let input: Vec<f32> = chunks.concat();
            let frames = cut_all(format, frame_size, &chunks);

            let output: Vec<f32> = frames.iter().flat_map(|f| f.samples.iter().copied()).collect();
            prop_assert_eq!(output, input);
            let mut pts = 0;
            for (i, frame) in frames.iter().enumerate() {
                prop_assert_eq!(frame.seq, i as u64);
                prop_assert_eq!(frame.pts, pts);
                let last = i + 1 == frames.len();
                if !last {
                    prop_assert_eq!(frame.len_per_channel(), frame_size);
                } else {
                    prop_assert!(frame.len_per_channel() >= 1 && frame.len_per_channel() <= frame_size);
                }
                pts += frame.len_per_channel() as u64;
            }
        }
    }

    #[test]
    fn frame_time_counts_back_from_the_end_of_the_chunk() {
        let format = StreamFormat {
            rate_hz: 1_000,
            channels: 1,
        };
        let mut framer = Framer::new(format, 100);
        let mut frames = Vec::new();
        // 250 samples arriving at t = 10.0 s: frames start 0.25 s and 0.15 s earlier.
        framer.push(&[0.0; 250], 10.0, |f| frames.push(f));
        assert_eq!(frames.len(), 2);
        assert!((frames[0].time - 9.75).abs() < 1e-9);
        assert!((frames[1].time - 9.85).abs() < 1e-9);
        let last = framer.finish(10.5).expect("50 samples pending");
        assert_eq!(last.pts, 200);
        assert!((last.time - 10.45).abs() < 1e-9);
    }

    #[test]
    fn an_outage_shows_as_a_seq_and_pts_jump() {
        let format = StreamFormat {
            rate_hz: 1_000,
            channels: 1,
        };
        let mut framer = Framer::new(format, 100);
        let mut frames = Vec::new();
        framer.push(&[0.0; 150], 1.0, |f| frames.push(f));
        // On time: 100 samples 0.1 s later.
        framer.push(&[0.0; 100], 1.1, |f| frames.push(f));
        // Then nothing for 2 s: the device was gone.
        framer.push(&[0.0; 100], 3.2, |f| frames.push(f));
        let seqs: Vec<u64> = frames.iter().map(|f| f.seq).collect();
        let pts: Vec<u64> = frames.iter().map(|f| f.pts).collect();
        // Frames 0 and 1, the 50 samples pending before the outage as a short frame 2, then
        // 2 s (20 frames) missed, then the new audio from seq 23, its pts 2 s after the end of
        // the short frame.
        assert_eq!(seqs, vec![0, 1, 2, 23]);
        assert_eq!(pts, vec![0, 100, 200, 2_250]);
        assert_eq!(frames[2].len_per_channel(), 50);
        assert!(
            (frames[2].time - 1.05).abs() < 1e-9,
            "stamped before the outage"
        );
        assert!((frames[3].time - 3.1).abs() < 1e-9);
    }

    #[test]
    fn a_partial_sample_frame_at_the_end_is_dropped() {
        let format = StreamFormat {
            rate_hz: 1_000,
            channels: 2,
        };
        let mut framer = Framer::new(format, 4);
        framer.push(&[1.0, 2.0, 3.0], 0.0, |_| panic!("no full frame"));
        let last = framer.finish(0.0).expect("one whole sample frame");
        assert_eq!(&*last.samples, &[1.0, 2.0]);
        assert!(framer.finish(0.0).is_none());
    }
}
