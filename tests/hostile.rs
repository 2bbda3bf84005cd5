//! Slow and hostile clients against a real server (issue 6, item 2): slowloris headers,
//! oversized request heads, a thousand connections that never send a request, and a listener
//! socket out of file descriptors. None of them may delay a good NDJSON listener's frames, and
//! the server must close each of them within a bounded time.

mod common;

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use pcmcast::server::{HEADER_READ_TIMEOUT, MAX_REQUEST_HEAD_BYTES};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use common::api::{STEP, parse_frame, within};

/// How much later than [`HEADER_READ_TIMEOUT`] the server may close a connection that never
/// completed its request head: scheduling on a loaded machine, and for the thousand idle
/// connections the time to accept them all.
const CLOSE_SLACK: Duration = Duration::from_secs(3);

/// How far a frame's arrival may drift behind the pace its own timestamps set (against the
/// frame that arrived most promptly). A listener held up by hostile clients falls behind by
/// the length of the hold-up; scheduling on a loaded machine stays well under this.
const LAG_SPREAD_MAX: Duration = Duration::from_millis(500);

/// How long after its `connect` returns a client may take to note the time: the server's
/// timer for a connection can start that much before the client's clock does.
const CLIENT_CLOCK_LAG_MAX: Duration = Duration::from_millis(250);

/// How soon the server must answer (or drop) a request head that is too big.
const REFUSAL_MAX: Duration = Duration::from_secs(2);

/// One NDJSON frame as the good listener received it.
struct Arrival {
    seq: u64,
    time_s: f64,
    skipped: Option<u64>,
    at: Instant,
}

/// A well-behaved `/stream.ndjson` listener that records when each frame arrives.
struct GoodListener {
    stop: CancellationToken,
    task: JoinHandle<Vec<Arrival>>,
}

impl GoodListener {
    /// Connects and returns once the first frame is in, so that the hostile clients that
    /// follow meet a live stream.
    async fn start(url: String) -> GoodListener {
        let response = within(STEP, "the good listener connects", reqwest::get(url))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body = response
            .bytes_stream()
            .map(|chunk| chunk.map_err(std::io::Error::other));
        let mut lines = tokio_util::io::StreamReader::new(body).lines();
        let stop = CancellationToken::new();
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut arrivals = Vec::new();
                let mut first_tx = Some(first_tx);
                // One frame after `stop`, so the frames cover the whole hostile period.
                while !stop.is_cancelled() {
                    let line = within(STEP, "the next frame", lines.next_line()).await;
                    let Some(line) = line.expect("the stream carries whole lines") else {
                        break;
                    };
                    let frame = parse_frame(line.as_bytes());
                    arrivals.push(Arrival {
                        seq: frame.seq,
                        time_s: frame.time,
                        skipped: frame.skipped,
                        at: Instant::now(),
                    });
                    if let Some(first_tx) = first_tx.take() {
                        let _ = first_tx.send(());
                    }
                }
                arrivals
            }
        });
        within(STEP, "the first frame", first_rx)
            .await
            .expect("the good listener got a frame");
        GoodListener { stop, task }
    }

    /// Stops listening and checks that the frames kept coming, consecutively and at the
    /// source's pace, from the start until after `hostile_end`.
    async fn check_on_time(self, what: &str, hostile_end: Instant) {
        self.stop.cancel();
        let arrivals = within(STEP, "the good listener stops", self.task)
            .await
            .unwrap();
        let first = &arrivals[0];
        let last = arrivals.last().unwrap();
        assert!(
            last.at >= hostile_end,
            "{what}: the good listener's stream ended before the hostile clients were done"
        );
        for pair in arrivals.windows(2) {
            assert_eq!(pair[1].seq, pair[0].seq + 1, "{what}: a gap in seq");
        }
        assert!(
            arrivals.iter().all(|a| a.skipped.is_none()),
            "{what}: the good listener was skipped forward"
        );
        // How far each frame arrived behind the pace set by the frames' own timestamps.
        let lags_s: Vec<f64> = arrivals
            .iter()
            .map(|a| (a.at - first.at).as_secs_f64() - (a.time_s - first.time_s))
            .collect();
        let min = lags_s.iter().copied().fold(f64::INFINITY, f64::min);
        let max = lags_s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let spread = Duration::from_secs_f64(max - min);
        println!(
            "{what}: the good listener got {} consecutive frames over {:.1} s; arrival lag \
             spread {spread:?}",
            arrivals.len(),
            (last.at - first.at).as_secs_f64()
        );
        assert!(
            spread <= LAG_SPREAD_MAX,
            "{what}: frames fell {spread:?} behind the source's pace (at most {LAG_SPREAD_MAX:?})"
        );
    }
}

/// A slowloris client: sends a request head that never ends, one byte every `interval`, until
/// the server closes the connection. Returns how long after connecting that was, and how many
/// bytes it had trickled.
async fn slowloris(addr: SocketAddr, interval: Duration) -> (Duration, usize) {
    let mut stream = within(STEP, "connecting", TcpStream::connect(addr))
        .await
        .unwrap();
    let connected = Instant::now();
    let head = b"GET /stream.ndjson HTTP/1.1\r\nHost: pcmcast\r\nX-Slow: ";
    let mut next_byte = head.iter().chain(std::iter::repeat(&b'a'));
    let mut ticks = tokio::time::interval(interval);
    let mut sent = 0;
    let mut buf = [0; 1024];
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                // Whatever the server says before closing (a 408, or nothing) is fine.
                Ok(n) if n > 0 => {}
                _ => break,
            },
            _ = ticks.tick() => {
                if stream.write_all(&[*next_byte.next().unwrap()]).await.is_err() {
                    break;
                }
                sent += 1;
            }
        }
    }
    (connected.elapsed(), sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_clients_are_closed_at_the_header_timeout_and_delay_no_frames() {
    let server = common::start(&["--tone", "440"]).await;
    let good = GoodListener::start(server.url("/stream.ndjson")).await;
    let trickling: Vec<_> = (0..5u64)
        .map(|i| tokio::spawn(slowloris(server.addr, Duration::from_millis(200 + 200 * i))))
        .collect();
    for (i, client) in trickling.into_iter().enumerate() {
        let (closed_after, sent) = within(
            HEADER_READ_TIMEOUT + CLOSE_SLACK,
            "the server closes a slowloris connection",
            client,
        )
        .await
        .unwrap();
        println!("slowloris {i}: closed {closed_after:?} after connecting, having sent {sent} B");
        // Not before the timeout: the connection really trickled all along, so the good
        // listener was tested against it.
        assert!(
            closed_after >= HEADER_READ_TIMEOUT - CLIENT_CLOCK_LAG_MAX,
            "slowloris {i}: closed after {closed_after:?}, before the header timeout"
        );
        assert!(sent >= 10, "slowloris {i} sent only {sent} bytes");
    }
    good.check_on_time("slowloris", Instant::now()).await;
    server.stop().await;
}

/// Sends `request` (ignoring write errors: the server may hang up before reading it all) and
/// returns the status of the response, if any, and how long until the server closed.
async fn send_raw(addr: SocketAddr, request: Vec<u8>) -> (Option<u16>, Duration) {
    let stream = within(STEP, "connecting", TcpStream::connect(addr))
        .await
        .unwrap();
    let started = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(&request).await;
        // Keeps the write half open until the reader is done.
        writer
    });
    let mut response = Vec::new();
    // A reset after the response (the server closed with our bytes unread) also ends it.
    let _ = within(
        REFUSAL_MAX,
        "the server refuses the request",
        reader.read_to_end(&mut response),
    )
    .await;
    let closed_after = started.elapsed();
    drop(writing);
    let status = response
        .strip_prefix(b"HTTP/1.1 ")
        .and_then(|rest| std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok());
    (status, closed_after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_are_refused_at_once_and_delay_no_frames() {
    let server = common::start(&["--tone", "440"]).await;
    let good = GoodListener::start(server.url("/stream.ndjson")).await;
    let head = |path: &str, headers: &[(String, String)]| {
        // Closing after the response, so that a request that is served shows its status
        // instead of waiting for another.
        let mut text = format!("GET {path} HTTP/1.1\r\nHost: pcmcast\r\nConnection: close\r\n");
        for (name, value) in headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str("\r\n");
        text.into_bytes()
    };
    let headers = |count: usize, bytes: usize| -> Vec<(String, String)> {
        (0..count)
            .map(|i| (format!("X-Big-{i}"), "b".repeat(bytes)))
            .collect()
    };
    // Fewer headers than hyper's cap of 100, but more bytes than our head limit: only that
    // limit refuses it (hyper's default buffer would take it and the router would answer).
    let over_our_limit = MAX_REQUEST_HEAD_BYTES / 2048 + 8;
    let cases = [
        (
            "a 100 KB request line",
            head(&format!("/{}", "a".repeat(100_000)), &[]),
        ),
        (
            "headers past the head limit",
            head("/healthz", &headers(over_our_limit, 2048)),
        ),
        ("200 headers of 1 KB", head("/healthz", &headers(200, 1024))),
        ("one 1 MB header", head("/healthz", &headers(1, 1 << 20))),
    ];
    let mut refusals = Vec::new();
    for round in 0..5 {
        for &(what, ref request) in &cases {
            let request = request.clone();
            let addr = server.addr;
            refusals.push(tokio::spawn(async move {
                (round, what, send_raw(addr, request).await)
            }));
        }
    }
    for refusal in refusals {
        let (round, what, (status, closed_after)) = refusal.await.unwrap();
        println!("{what} (round {round}): {status:?}, closed after {closed_after:?}");
        assert!(
            matches!(status, None | Some(400 | 414 | 431)),
            "{what}: answered {status:?} instead of being refused"
        );
    }
    good.check_on_time("oversized heads", Instant::now()).await;
    // The server still serves ordinary requests.
    let healthz = within(STEP, "/healthz", reqwest::get(server.url("/healthz")))
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);
    server.stop().await;
}

/// Raises this process's soft limit on open files to its hard limit (the spawned server
/// inherits it), and returns the new soft limit.
fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    limit.rlim_cur
}

/// Sets the soft limit on open files of process `pid` (one this test started).
fn set_open_file_limit(pid: u32, soft: u64) {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on local structs; `pid` is our own child.
    unsafe {
        assert_eq!(
            libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old),
            0
        );
        let new = libc::rlimit {
            rlim_cur: soft,
            rlim_max: old.rlim_max,
        };
        assert_eq!(
            libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()),
            0
        );
    }
}

fn fd_numbers(pid: u32) -> Vec<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|entry| {
            entry
                .unwrap()
                .file_name()
                .to_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
}

fn open_fds(pid: u32) -> usize {
    fd_numbers(pid).len()
}

/// The descriptor the process would get next: the lowest number not in use.
fn lowest_free_fd(pid: u32) -> u64 {
    let used = fd_numbers(pid);
    (0..).find(|fd| !used.contains(fd)).unwrap()
}

/// Polls the server's open file count until it is `expected`; fails after `limit`.
async fn wait_for_fds(pid: u32, expected: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let fds = open_fds(pid);
        if fds == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "waited {limit:?} for the server to hold {expected} files; it holds {fds}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_are_closed_at_the_header_timeout() {
    const IDLE: usize = 1000;
    assert!(
        raise_open_file_limit() >= IDLE as u64 + 200,
        "too few file descriptors allowed"
    );
    let server = common::spawn(&["--tone", "440"]);
    let pid = server.pid();
    let good = GoodListener::start(server.url("/stream.ndjson")).await;
    let fds_before = open_fds(pid);
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        let stream = within(STEP, "connecting", TcpStream::connect(server.addr))
            .await
            .unwrap();
        idle.push((stream, Instant::now()));
    }
    // The server took every one of them (so what follows is about its own timeout).
    wait_for_fds(pid, fds_before + IDLE, STEP).await;
    let closing: Vec<_> = idle
        .into_iter()
        .map(|(mut stream, connected)| {
            tokio::spawn(async move {
                let mut buf = [0; 64];
                // End of file or a reset: either way the server dropped it.
                while let Ok(1..) = stream.read(&mut buf).await {}
                connected.elapsed()
            })
        })
        .collect();
    let mut closed_after = Vec::with_capacity(IDLE);
    for client in closing {
        closed_after.push(
            within(
                HEADER_READ_TIMEOUT + CLOSE_SLACK,
                "the server closes an idle connection",
                client,
            )
            .await
            .unwrap(),
        );
    }
    let (first, last) = (
        closed_after.iter().min().unwrap(),
        closed_after.iter().max().unwrap(),
    );
    println!("{IDLE} idle connections: closed between {first:?} and {last:?} after connecting");
    assert!(
        *first >= HEADER_READ_TIMEOUT - CLIENT_CLOCK_LAG_MAX,
        "an idle connection was closed before the header timeout: {first:?}"
    );
    wait_for_fds(pid, fds_before, STEP).await;
    good.check_on_time("idle connections", Instant::now()).await;
}

/// Waits up to [`STEP`] for a stderr line of `server` containing `text`.
fn wait_for_log(server: &common::Process, text: &str) -> String {
    let deadline = Instant::now() + STEP;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = server
            .stderr
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no '{text}' on stderr within {STEP:?}"));
        if line.contains(text) {
            return line;
        }
    }
}

#[test]
fn the_accept_loop_backs_off_while_out_of_file_descriptors_and_recovers() {
    let server = common::spawn(&["--tone", "440"]);
    // "listening on" comes before the fan-out threads open their polls: wait until they have,
    // or the limit below leaves them no descriptor and pcmcast exits.
    wait_for_log(&server, "source started");
    let pid = server.pid();
    let soft_before = raise_open_file_limit();
    // No descriptor left for the next connection.
    set_open_file_limit(pid, lowest_free_fd(pid));
    let mut client = std::net::TcpStream::connect(server.addr).unwrap();
    client.set_read_timeout(Some(STEP)).unwrap();
    client
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: pcmcast\r\nConnection: close\r\n\r\n")
        .unwrap();
    let first_error = Instant::now();
    let line = wait_for_log(&server, "cannot accept connections");
    println!("{line}");
    // Spinning would log thousands of these a second; backing off, a few.
    for _ in 0..3 {
        wait_for_log(&server, "cannot accept connections");
    }
    let three_retries = first_error.elapsed();
    println!("three retries took {three_retries:?}");
    assert!(
        three_retries >= Duration::from_millis(250),
        "the accept loop retried three times in {three_retries:?}: it does not back off"
    );
    set_open_file_limit(pid, soft_before);
    // The connection that waited is served once descriptors are available again.
    let mut response = String::new();
    std::io::BufReader::new(&mut client)
        .read_line(&mut response)
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}
