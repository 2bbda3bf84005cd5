//! Listener churn against the real binary: 10,000 connect/disconnect cycles — clean closes,
//! resets mid-stream, requests abandoned before the response, closes mid-body — leave no
//! listener behind, and the process's file descriptors and memory where they were.

mod common;

#[path = "churn/cycles.rs"]
mod cycles;

use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use common::Process;
use common::api::{Api, poll_until, within};
use cycles::Tally;

/// Cycles before the baseline. The allocator's arenas and the server's per-connection buffers
/// grow to a steady state first, and that growth is not a leak: in a 60,000-cycle run RSS rose
/// about 1.4 MiB over the first 500 cycles, 0.7 MiB more by 3,000, then less than 0.1 MiB.
const WARM_UP_CYCLES: usize = 2_000;
/// Cycles measured against the baseline.
const CYCLES: usize = 10_000;
const IN_FLIGHT: usize = 50;
/// Bound on all the cycles together; they take about 4 s on an idle 2-core machine.
const CHURN_LIMIT: Duration = Duration::from_secs(40);
/// How far the open descriptors may end from the baseline: the connections the last cycles
/// closed may take a moment more to be closed on the server's side.
const FD_SLACK: usize = 2;
/// How much the resident memory may grow from the baseline, in percent.
const RSS_GROWTH_PCT: u64 = 10;

/// What the process holds at one moment.
#[derive(Clone, Copy, Debug)]
struct Usage {
    fds: usize,
    rss_kib: u64,
}

impl Usage {
    fn of(process: &Process) -> Usage {
        let fds = std::fs::read_dir(format!("/proc/{}/fd", process.pid()))
            .expect("/proc/PID/fd of the server")
            .count();
        Usage {
            fds,
            rss_kib: process.rss_kib(),
        }
    }
}

/// Runs cycles `indices`; fails the test if one fails or if they are not done by `deadline`.
async fn churn(addr: SocketAddr, what: &str, indices: Range<usize>, deadline: Instant) -> Tally {
    let limit = deadline.saturating_duration_since(Instant::now());
    let tally = within(limit, what, cycles::churn(addr, indices, IN_FLIGHT)).await;
    assert_eq!(tally.errors, 0, "{what}: {tally:?}");
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_leaves_no_listener_descriptor_or_memory_behind() {
    let server = common::spawn(&["--tone", "440", "--rate", "48000", "--channels", "2"]);
    let api = Api::new(server.addr);
    api.wait_for_frames(1).await;
    let cold = Usage::of(&server);

    let started = Instant::now();
    let deadline = started + CHURN_LIMIT;
    let mut tally = churn(server.addr, "warm-up", 0..WARM_UP_CYCLES, deadline).await;
    api.wait_for_listeners(0).await;
    let warm = Usage::of(&server);
    let all_cycles = WARM_UP_CYCLES + CYCLES;
    tally.add(churn(server.addr, "churn", WARM_UP_CYCLES..all_cycles, deadline).await);
    let churned = started.elapsed();

    let status = api.wait_for_listeners(0).await;
    let end = poll_until(
        &format!("descriptors back to {} ± {FD_SLACK}", warm.fds),
        || async { Usage::of(&server) },
        |end| end.fds.abs_diff(warm.fds) <= FD_SLACK,
        |end| format!("{end:?}"),
    )
    .await;
    let total = status["listeners"]["total"].as_u64().unwrap();
    println!(
        "{WARM_UP_CYCLES} + {CYCLES} cycles ({IN_FLIGHT} in flight) in {:.1} s: {} listened, \
         {} abandoned partial, {} abandoned complete; listeners total {total}, peak {}",
        churned.as_secs_f64(),
        tally.listened,
        tally.abandoned_partial,
        tally.abandoned_complete,
        status["listeners"]["peak"],
    );
    println!(
        "fds: cold {}, warm {}, end {}; RSS KiB: cold {}, warm {}, end {} ({:+.1} %)",
        cold.fds,
        warm.fds,
        end.fds,
        cold.rss_kib,
        warm.rss_kib,
        end.rss_kib,
        (end.rss_kib as f64 / warm.rss_kib as f64 - 1.0) * 100.0,
    );

    assert_eq!(tally.cycles(), all_cycles as u64);
    assert_eq!(status["listeners"]["current"], 0);
    // Every stream cycle was a listener; an abandoned complete request may or may not have
    // become one before the server saw its client go.
    assert!(
        (tally.listened..=tally.listened + tally.abandoned_complete).contains(&total),
        "listeners total {total}, cycles that listened {tally:?}"
    );
    // Only growth is a leak: memory the allocator gives back is not.
    assert!(
        end.rss_kib * 100 <= warm.rss_kib * (100 + RSS_GROWTH_PCT),
        "RSS grew from {} KiB to {} KiB",
        warm.rss_kib,
        end.rss_kib
    );
}
