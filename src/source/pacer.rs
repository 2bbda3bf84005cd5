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

impl Pacer {
    /// Sample frames handed out so far.
    pub fn produced(&self) -> u64 {
        self.produced_frames
    }

    /// The first instant at which `frames` sample frames are due.
    pub fn instant_of(&self, frames: u64) -> Instant {
        let rate = u128::from(self.rate_hz);
        let nanos = (u128::from(frames) * 1_000_000_000).div_ceil(rate);
        self.start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
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
    fn exactly_the_frames_asked_for_are_due_at_their_instant() {
        let start = Instant::now();
        for rate in [8_000, 44_100, 48_000, 96_000] {
            let pacer = Pacer::started_at(start, rate);
            for frames in [1, 1024, 44_100, 1_000_003] {
                let at = pacer.instant_of(frames);
                assert_eq!(Pacer::started_at(start, rate).due_at(at), frames);
                let just_before = at - Duration::from_nanos(1);
                assert_eq!(
                    Pacer::started_at(start, rate).due_at(just_before),
                    frames - 1
                );
            }
        }
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
