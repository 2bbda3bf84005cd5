//! The reconnect policy of the sources that reopen what they read from (the capture device, a
//! relayed upstream), also used by the Icecast push: wait 100 ms after a failure, doubling up
//! to 2 s, and start again from 100 ms once the connection has worked again.

use std::thread;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

const FIRST: Duration = Duration::from_millis(100);
const MAX: Duration = Duration::from_secs(2);

/// How often a backoff sleep checks for cancellation, so that shutdown is never held up by it.
const CANCEL_CHECK: Duration = Duration::from_millis(20);

pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub fn new() -> Backoff {
        Backoff { next: FIRST }
    }

    /// The delay before the next attempt; the one after it is twice as long, up to 2 s.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(MAX);
        delay
    }

    /// The source delivered again: its next failure waits the shortest delay.
    pub fn reset(&mut self) {
        self.next = FIRST;
    }
}

/// Sleeps for `duration`, or less if `cancel` fires first.
pub fn sleep_unless_cancelled(duration: Duration, cancel: &CancellationToken) {
    let until = Instant::now() + duration;
    while !cancel.is_cancelled() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        thread::sleep(left.min(CANCEL_CHECK));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_two_seconds_and_reset() {
        let mut backoff = Backoff::new();
        let delays: Vec<u64> = (0..7)
            .map(|_| backoff.next_delay().as_millis() as u64)
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1_600, 2_000, 2_000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), FIRST);
    }

    #[test]
    fn a_cancelled_sleep_returns_at_once() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let started = Instant::now();
        sleep_unless_cancelled(Duration::from_secs(10), &cancel);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
