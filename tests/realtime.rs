//! The audio path's threads run real-time where the system permits it, as far as `--realtime`
//! asks (by default the paced source and the framer; `all` adds the fan-out threads; `off`
//! none), the source above the framer above the fan-out: as the kernel reports each thread of a
//! spawned server (`/proc/PID/task`), and as `/status` and `/metrics` count them. Whether real-time is permitted here is found out
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

/// Starts a server with `extra` and checks that exactly the threads of `realtime_roles` run
/// real-time (where permitted; else none does), ordered by priority as the roles are, and
/// that `/status` and `/metrics` count them.
async fn check_scope(extra: &[&str], realtime_roles: &[&str]) {
    let permitted = realtime_permitted();
    let (server, api) = serve(extra).await;
    let threads = audio_threads(server.pid());
    assert_eq!(
        threads.keys().collect::<Vec<_>>(),
        ["fanout", "framer", "source"]
    );
    let realtime = |role: &str| permitted && realtime_roles.contains(&role);
    let expected: u64 = threads
        .iter()
        .filter(|(role, _)| realtime(role))
        .map(|(_, each)| each.len() as u64)
        .sum();
    let status = poll_until(
        "the real-time threads counted",
        || api.status(),
        |status| realtime_threads(status) == expected,
        |status| status["realtime_threads"].to_string(),
    )
    .await;

    let threads = audio_threads(server.pid());
    for (role, each) in &threads {
        let policy = if realtime(role) { FIFO } else { OTHER };
        assert!(
            each.iter()
                .all(|&(thread_policy, priority)| thread_policy == policy
                    && (priority > 0) == (policy == FIFO)),
            "{role}: {threads:?}"
        );
    }
    // Higher in the audio path, higher in priority; the threads of a role all alike.
    let priorities: Vec<u32> = realtime_roles
        .iter()
        .filter(|role| realtime(role))
        .map(|role| {
            let priority = threads[*role][0].1;
            assert!(
                threads[*role].iter().all(|&(_, each)| each == priority),
                "{threads:?}"
            );
            priority
        })
        .collect();
    assert!(
        priorities.windows(2).all(|pair| pair[0] > pair[1]),
        "{threads:?}"
    );
    let metrics = api.body("/metrics").await;
    let line = format!("pcmcast_realtime_threads {}\n", realtime_threads(&status));
    assert!(
        String::from_utf8_lossy(&metrics).contains(&line),
        "/metrics lacks {line:?}"
    );
}

#[test]
fn by_default_the_source_and_framer_run_real_time_where_permitted() {
    common::runtime().block_on(check_scope(&[], &["source", "framer"]));
}

#[test]
fn realtime_all_adds_the_fanout_threads_below_them() {
    common::runtime().block_on(check_scope(
        &["--realtime", "all"],
        &["source", "framer", "fanout"],
    ));
}

#[test]
fn realtime_off_keeps_the_audio_path_at_normal_priority() {
    common::runtime().block_on(check_scope(&["--realtime", "off"], &[]));
}
