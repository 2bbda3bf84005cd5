//! The audio path's threads (paced source, framer, fan-out) run real-time where the system
//! permits it, the source above the framer above the fan-out, and at normal priority with
//! `--no-realtime`: as the kernel reports each thread of a spawned server (`/proc/PID/task`),
//! and as `/status` and `/metrics` count them. Whether real-time is permitted here is found out
//! the same way the server does, by asking for it.
//!
//! Nothing sleeps to synchronise: the tests wait for a listener's first bytes and poll `/status`
//! with a deadline.

mod common;

use std::collections::BTreeMap;

use common::api::{Api, STEP, poll_until, within};

/// SCHED_OTHER and SCHED_FIFO as /proc/PID/task/TID/stat gives them.
const OTHER: u32 = 0;
const FIFO: u32 = 1;

/// Whether this process may make a thread real-time, asked on a thread of its own.
fn realtime_permitted() -> bool {
    std::thread::spawn(|| {
        let param = libc::sched_param { sched_priority: 1 };
        // SAFETY: sched_setscheduler reads one sched_param; pid 0 is this short-lived thread.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &raw const param) == 0 }
    })
    .join()
    .unwrap()
}

/// The audio path's threads of process `pid`, by name: (policy, real-time priority) each.
fn audio_threads(pid: u32) -> BTreeMap<String, Vec<(u32, u32)>> {
    let mut threads: BTreeMap<String, Vec<(u32, u32)>> = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let stat = std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap();
        let (name, rest) = stat
            .split_once(" (")
            .and_then(|(_, rest)| rest.rsplit_once(") "))
            .expect("pid (comm) fields");
        // After the name come the fields from the 3rd (state); rt_priority is the 40th, policy
        // the 41st.
        let fields: Vec<u32> = rest
            .split_whitespace()
            .skip(1)
            .map(|field| field.parse().unwrap_or(0))
            .collect();
        let role = ["source", "framer", "fanout"]
            .into_iter()
            .find(|role| name.starts_with(&format!("pcmcast-{role}")));
        if let Some(role) = role {
            threads
                .entry(role.to_owned())
                .or_default()
                .push((fields[41 - 4], fields[40 - 4]));
        }
    }
    threads
}

/// Starts `pcmcast --tone 440` with `extra` and waits until frames reach a listener.
async fn serve(extra: &[&str]) -> (common::Process, Api) {
    let mut args = vec!["--tone", "440"];
    args.extend_from_slice(extra);
    let server = common::spawn(&args);
    let api = Api::new(server.addr);
    let mut response = api.get_ok("/stream.pcm").await;
    within(STEP, "the first bytes of /stream.pcm", response.chunk())
        .await
        .unwrap()
        .expect("a first chunk");
    (server, api)
}

fn realtime_threads(status: &serde_json::Value) -> u64 {
    status["realtime_threads"]
        .as_u64()
        .expect("realtime_threads")
}

#[test]
fn the_audio_path_runs_real_time_where_permitted() {
    common::runtime().block_on(async {
        let permitted = realtime_permitted();
        let (server, api) = serve(&[]).await;
        let threads = audio_threads(server.pid());
        let expected = if permitted {
            2 + threads["fanout"].len() as u64
        } else {
            0
        };
        let status = poll_until(
            "every audio thread counted",
            || api.status(),
            |status| realtime_threads(status) == expected,
            |status| status["realtime_threads"].to_string(),
        )
        .await;

        let threads = audio_threads(server.pid());
        let policy = if permitted { FIFO } else { OTHER };
        for (role, each) in &threads {
            assert!(
                each.iter()
                    .all(|&(thread_policy, _)| thread_policy == policy),
                "{role}: {threads:?}"
            );
        }
        if permitted {
            let priority_of = |role: &str| threads[role][0].1;
            assert!(priority_of("source") > priority_of("framer"), "{threads:?}");
            assert!(priority_of("framer") > priority_of("fanout"), "{threads:?}");
            let fanout = priority_of("fanout");
            assert!(fanout > 0 && threads["fanout"].iter().all(|&(_, p)| p == fanout));
        }
        let metrics = api.body("/metrics").await;
        let line = format!("pcmcast_realtime_threads {}\n", realtime_threads(&status));
        assert!(
            String::from_utf8_lossy(&metrics).contains(&line),
            "/metrics lacks {line:?}"
        );
    });
}

#[test]
fn no_realtime_keeps_the_audio_path_at_normal_priority() {
    common::runtime().block_on(async {
        let (server, api) = serve(&["--no-realtime"]).await;
        assert_eq!(realtime_threads(&api.status().await), 0);
        let threads = audio_threads(server.pid());
        assert_eq!(
            threads.keys().collect::<Vec<_>>(),
            ["fanout", "framer", "source"]
        );
        for (role, each) in &threads {
            assert!(
                each.iter().all(|&thread| thread == (OTHER, 0)),
                "{role}: {threads:?}"
            );
        }
    });
}
