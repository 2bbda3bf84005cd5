//! Listener churn against the real binary: 10,000 connect/disconnect cycles — clean closes,
//! resets mid-stream, requests abandoned before the response, closes mid-body — leave no
//! listener behind, and the process's file descriptors and memory where they were.

mod common;

#[path = "churn/cycles.rs"]
mod cycles;

use std::time::{Duration, Instant};

use common::Process;
use common::api::{Api, poll_until, within};

const CYCLES: usize = 10_000;
/// Frames the source has produced when the baseline is taken: with 1024-sample frames at
/// 48 kHz, enough to have written once through the ring between source and framer (half a
/// second, 24,000 samples per channel; `src/lib.rs`). Its pages become resident as they are
/// first written, with or without a listener: ~190 KiB, 3 % of a release build's RSS.
const BASELINE_FRAMES: u64 = 24;
const IN_FLIGHT: usize = 50;
/// Bound on all the cycles together; they take about 4 s on an idle 2-core machine.
const CHURN_LIMIT: Duration = Duration::from_secs(40);
/// How far the open descriptors may end from the baseline.
const FD_SLACK: usize = 2;
/// How much the resident memory may grow from the baseline, in percent. The server gives the
/// memory its connections used back a second or two after the last one has gone
/// (`src/memory.rs`), so the test waits for that.
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

    /// Whether this is back where `cold` was: descriptors within [`FD_SLACK`], resident memory
    /// no more than [`RSS_GROWTH_PCT`] above. Only growth counts: memory given back is no leak.
    fn back_to(&self, cold: &Usage) -> bool {
        self.fds.abs_diff(cold.fds) <= FD_SLACK
            && self.rss_kib * 100 <= cold.rss_kib * (100 + RSS_GROWTH_PCT)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_leaves_no_listener_descriptor_or_memory_behind() {
    let server = common::spawn(&["--tone", "440", "--rate", "48000", "--channels", "2"]);
    let api = Api::new(server.addr);
    api.wait_for_frames(1).await;
    let first_frame = Usage::of(&server);
    // The server is up and streaming, with no listener yet.
    api.wait_for_frames(BASELINE_FRAMES).await;
    let cold = Usage::of(&server);

    let started = Instant::now();
    let tally = within(
        CHURN_LIMIT,
        "churn",
        cycles::churn(server.addr, 0..CYCLES, IN_FLIGHT),
    )
    .await;
    let churned = started.elapsed();
    assert_eq!(tally.errors, 0, "{tally:?}");

    let status = api.wait_for_listeners(0).await;
    let settled = Usage::of(&server);
    // The connections the last cycles closed may take a moment more to close on the server's
    // side, and the memory they used a moment more to go back to the system.
    let end = poll_until(
        &format!(
            "descriptors back to {} ± {FD_SLACK} and RSS within {RSS_GROWTH_PCT} % of {} KiB",
            cold.fds, cold.rss_kib
        ),
        || async { Usage::of(&server) },
        |end| end.back_to(&cold),
        |end| format!("{end:?} ({:+.1} %)", growth_pct(&cold, end)),
    )
    .await;
    let total = status["listeners"]["total"].as_u64().unwrap();
    println!(
        "{CYCLES} cycles ({IN_FLIGHT} in flight) in {:.1} s: {} listened, {} abandoned partial, \
         {} abandoned complete; listeners total {total}, peak {}",
        churned.as_secs_f64(),
        tally.listened,
        tally.abandoned_partial,
        tally.abandoned_complete,
        status["listeners"]["peak"],
    );
    println!(
        "fds: cold {}, end {}; RSS KiB: at the first frame {}, cold {}, with no listener \
         left {} ({:+.1} %), end {} ({:+.1} %) {:.1} s after the churn",
        cold.fds,
        end.fds,
        first_frame.rss_kib,
        cold.rss_kib,
        settled.rss_kib,
        growth_pct(&cold, &settled),
        end.rss_kib,
        growth_pct(&cold, &end),
        (started.elapsed() - churned).as_secs_f64(),
    );

    assert_eq!(tally.cycles(), CYCLES as u64);
    assert_eq!(status["listeners"]["current"], 0);
    // Every stream cycle was a listener; an abandoned complete request may or may not have
    // become one before the server saw its client go.
    assert!(
        (tally.listened..=tally.listened + tally.abandoned_complete).contains(&total),
        "listeners total {total}, cycles that listened {tally:?}"
    );
}

fn growth_pct(cold: &Usage, now: &Usage) -> f64 {
    (now.rss_kib as f64 / cold.rss_kib as f64 - 1.0) * 100.0
}
