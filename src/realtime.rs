//! Real-time scheduling for the threads every frame passes through: the paced source (tone,
//! WAV), the framer and the fan-out shards, as far as `--realtime` ([`Scope`]) asks.
//!
//! Where the system lets this process (root, `CAP_SYS_NICE` or an `RLIMIT_RTPRIO`), they run
//! `SCHED_FIFO`, the source above the framer above the fan-out: nothing at normal priority
//! (the HTTP side, the encoders, the rest of the machine) delays them, as audio servers
//! (JACK, PipeWire) run their data threads. Where it is not permitted the threads run at
//! normal priority, said once.
//!
//! By default only the source and the framer do: they are light, and a frame made on time is
//! what every listener waits for. The fan-out threads ask for it with `--realtime all` only.
//! Measured at 1,000 listeners over loopback, interleaved pairs:
//! - on a quiet machine, real-time fan-out threads cost 20 % more CPU (244 against 204 µs per
//!   listener-second) for a p99 latency 0.15 ms better (24.09 against 24.24 ms);
//! - with a busy loop at normal priority on the machine, 8 % more CPU (230 against 213) for a
//!   p99 latency 3.3 ms better (23.9 against 27.3 ms): then they are worth having.
//!
//! The kernel's send path is the same either way (its profile too); real-time, it takes
//! longer.
//!
//! A real-time thread cannot be preempted by the rest of the server, so each must stay light:
//! the source and the framer are, and a fan-out thread busy for more than half of a second gives
//! real-time up until it is light again ([`Duty`]). The kernel's own limit (by default real-time
//! threads get at most 95 % of each second) stays as the last resort. Threads are marked
//! reset-on-fork: nothing this process starts inherits the priority.

use std::io;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::stats::Stats;

/// A thread of the audio path, by its real-time priority.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Source,
    Framer,
    Fanout,
}

impl Role {
    /// Low `SCHED_FIFO` priorities (1–99), ordered: below the kernel's own threads and any
    /// audio server's.
    fn priority(self) -> i32 {
        match self {
            Role::Source => 12,
            Role::Framer => 11,
            Role::Fanout => 10,
        }
    }
}

/// Which threads of the audio path ask for real-time scheduling (`--realtime`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Scope {
    /// None: every thread at normal priority.
    Off,
    /// The paced source (tone, WAV) and the framer: each frame is made on time.
    #[default]
    Source,
    /// The fan-out threads (PCM, WAV and NDJSON listeners) too: for machines where other work
    /// competes for the cores, at up to 20 % more CPU.
    All,
}

impl Scope {
    /// Whether a thread of `role` asks for real-time scheduling.
    pub fn covers(self, role: Role) -> bool {
        match self {
            Scope::Off => false,
            Scope::Source => role != Role::Fanout,
            Scope::All => true,
        }
    }
}

/// The calling thread's real-time scheduling, while held: dropping it (on the same thread, as it
/// cannot be sent) returns the thread to normal scheduling. `/status` and `/metrics` count the
/// threads that hold one.
pub struct Realtime {
    stats: Arc<Stats>,
    not_send: PhantomData<*const ()>,
}

/// Whether the refusal has been said already.
static REFUSAL_SAID: AtomicBool = AtomicBool::new(false);

impl Realtime {
    /// Moves the calling thread to real-time scheduling for `role`, where permitted.
    pub fn enter(role: Role, stats: &Arc<Stats>) -> Option<Realtime> {
        match schedule(Some(role.priority())) {
            Ok(()) => {
                stats.realtime_threads.fetch_add(1, Relaxed);
                Some(Realtime {
                    stats: stats.clone(),
                    not_send: PhantomData,
                })
            }
            Err(error) => {
                if !REFUSAL_SAID.swap(true, Relaxed) {
                    tracing::info!(
                        "real-time scheduling is not permitted ({error}): the audio path runs at \
                         normal priority (root, CAP_SYS_NICE or an RLIMIT_RTPRIO permits it)"
                    );
                }
                None
            }
        }
    }

    /// Enters real-time scheduling if `wanted`.
    pub fn enter_if(wanted: bool, role: Role, stats: &Arc<Stats>) -> Option<Realtime> {
        wanted.then(|| Realtime::enter(role, stats)).flatten()
    }
}

impl Drop for Realtime {
    fn drop(&mut self) {
        if let Err(error) = schedule(None) {
            tracing::error!("a thread cannot leave real-time scheduling: {error}");
        }
        self.stats.realtime_threads.fetch_sub(1, Relaxed);
    }
}

/// Makes the calling thread real-time at `priority` (reset on fork), or normal again.
#[cfg(target_os = "linux")]
fn schedule(priority: Option<i32>) -> io::Result<()> {
    let (policy, sched_priority) = match priority {
        Some(priority) => (libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, priority),
        None => (libc::SCHED_OTHER, 0),
    };
    let param = libc::sched_param { sched_priority };
    // SAFETY: sched_setscheduler reads one sched_param; pid 0 is the calling thread.
    if unsafe { libc::sched_setscheduler(0, policy, &raw const param) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn schedule(_priority: Option<i32>) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

/// How busy a fan-out thread is, as the CPU time it takes over windows of a second: whether it
/// may be real-time.
#[derive(Debug)]
pub struct Duty {
    window_start: Instant,
    cpu_at_start: Duration,
}

/// Busier than this, a real-time fan-out thread gives real-time up ...
const HEAVY: f64 = 0.5;
/// ... until it is back under this.
pub const LIGHT: f64 = 0.25;
const WINDOW: Duration = Duration::from_secs(1);

impl Duty {
    /// Starts counting for the calling thread.
    pub fn start() -> Duty {
        Duty {
            window_start: Instant::now(),
            cpu_at_start: thread_cpu_time(),
        }
    }

    /// At the end of each window, says whether the calling thread should be real-time, given
    /// that it is (`realtime`) or not: `Some` when that changes, with the window's busy
    /// fraction.
    pub fn check(&mut self, realtime: bool) -> Option<(bool, f64)> {
        let now = Instant::now();
        if now.saturating_duration_since(self.window_start) < WINDOW {
            return None;
        }
        self.end_window(thread_cpu_time(), now, realtime)
    }

    fn end_window(&mut self, cpu: Duration, now: Instant, realtime: bool) -> Option<(bool, f64)> {
        let elapsed = now.saturating_duration_since(self.window_start);
        let fraction = cpu.saturating_sub(self.cpu_at_start).as_secs_f64() / elapsed.as_secs_f64();
        self.window_start = now;
        self.cpu_at_start = cpu;
        match realtime {
            true if fraction > HEAVY => Some((false, fraction)),
            false if fraction < LIGHT => Some((true, fraction)),
            _ => None,
        }
    }
}

/// CPU time the calling thread has taken (zero where the clock cannot be read).
fn thread_cpu_time() -> Duration {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut time) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_scope_covers_its_roles() {
        let roles = [Role::Source, Role::Framer, Role::Fanout];
        let covered = |scope: Scope| roles.map(|role| scope.covers(role));
        assert_eq!(covered(Scope::Off), [false, false, false]);
        assert_eq!(covered(Scope::Source), [true, true, false]);
        assert_eq!(covered(Scope::All), [true, true, true]);
    }

    #[test]
    fn a_heavy_second_gives_real_time_up_and_a_light_one_takes_it_back() {
        let start = Instant::now();
        let mut duty = Duty {
            window_start: start,
            cpu_at_start: Duration::from_secs(7),
        };
        let mut second = 0;
        // Each window: a second and the CPU time taken in it.
        let mut window = |cpu_ms: u64, realtime: bool| {
            second += 1;
            let cpu = duty.cpu_at_start + Duration::from_millis(cpu_ms);
            duty.end_window(cpu, start + Duration::from_secs(second), realtime)
        };
        // 3 ms every 21 ms: light, stays real-time.
        assert_eq!(window(140, true), None);
        assert_eq!(window(700, true), Some((false, 0.7)));
        // Between the two thresholds: no change either way.
        assert_eq!(window(400, true), None);
        assert_eq!(window(400, false), None);
        assert_eq!(window(100, false), Some((true, 0.1)));
    }

    #[test]
    fn a_thread_that_works_shows_its_cpu_time() {
        let before = thread_cpu_time();
        let mut x = 0u64;
        while thread_cpu_time() < before + Duration::from_millis(5) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
        }
        assert!(thread_cpu_time() > before);
    }
}
