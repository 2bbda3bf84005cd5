//! Real-time pacing against the monotonic clock. The number of sample frames due is always
//! computed from the start instant, never accumulated from tick lengths, so late wake-ups
//! cause a bigger next chunk, not drift.

use std::time::{Duration, Instant};

pub struct Pacer {
    start: Instant,
    rate_hz: u32,
    produced_frames: u64,
}

impl Pacer {
    pub fn start(rate_hz: u32) -> Pacer {
        Pacer::started_at(Instant::now(), rate_hz)
    }

    pub fn started_at(start: Instant, rate_hz: u32) -> Pacer {
        Pacer {
            start,
            rate_hz,
            produced_frames: 0,
        }
    }

    /// Sample frames due now that were not yet handed out.
    pub fn due(&mut self) -> u64 {
        self.due_at(Instant::now())
    }

    /// Sample frames due at `now` that were not yet handed out; marks them handed out.
    pub fn due_at(&mut self, now: Instant) -> u64 {
        let target = frames_in(now.saturating_duration_since(self.start), self.rate_hz);
        let due = target.saturating_sub(self.produced_frames);
        self.produced_frames += due;
        due
    }
}

/// Whole sample frames in `elapsed` at `rate_hz`, computed exactly in integers.
fn frames_in(elapsed: Duration, rate_hz: u32) -> u64 {
    (elapsed.as_nanos() * u128::from(rate_hz) / 1_000_000_000) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_due_tracks_the_clock_whatever_the_tick_pattern() {
        let start = Instant::now();
        let mut pacer = Pacer::started_at(start, 48_000);
        let mut total = 0;
        let mut t = Duration::ZERO;
        // Irregular ticks (3..=17 ms, some repeated) over 60 s.
        for i in 0u64.. {
            t += Duration::from_micros(3_000 + (i * 7_919) % 14_000);
            if t > Duration::from_secs(60) {
                break;
            }
            total += pacer.due_at(start + t);
            assert_eq!(total, frames_in(t, 48_000));
        }
        assert!(total > 48_000 * 59, "covered the whole minute: {total}");
    }

    #[test]
    fn a_clock_that_goes_nowhere_gives_nothing() {
        let start = Instant::now();
        let mut pacer = Pacer::started_at(start, 44_100);
        assert_eq!(pacer.due_at(start), 0);
        assert_eq!(pacer.due_at(start + Duration::from_millis(10)), 441);
        assert_eq!(pacer.due_at(start + Duration::from_millis(10)), 0);
    }
}
