//! Shutdown and restart of the real binary under load: SIGTERM with 500 listeners attached ends
//! every stream cleanly (the chunked body's terminating `0\r\n\r\n` chunk; Close 1001 on
//! `/ws`), the process exits 0 within a second, and a new pcmcast started at once on the same
//! address listens and serves.
//!
//! pcmcast is started with a soft open-file limit below 500, so that the 500 listeners also
//! prove it raises its own limit. Nothing sleeps to synchronise: each step waits for its event
//! (response headers, `/status`, the exit) with a deadline.

mod common;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::api::{Api, STEP, poll_until, send, within};
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const LISTENERS: usize = 500;

/// The stream endpoints the listeners are spread over, evenly.
const ENDPOINTS: &[&str] = &[
    "/stream.pcm",
    "/stream.wav",
    "/stream.ndjson",
    "/events",
    "/ws",
];

/// pcmcast's soft open-file limit at start: too low for [`LISTENERS`] unless it raises it.
const LOW_SOFT_LIMIT: libc::rlim_t = 256;

/// A small stream (8 kHz mono), so that 500 listeners of it are light work for a loaded
/// machine: what is tested is how the streams end.
const SOURCE: &[&str] = &["--tone", "440", "--rate", "8000", "--channels", "1"];

/// The longest the process may take to exit after SIGTERM.
const EXIT_WITHIN: Duration = Duration::from_secs(1);

fn open_file_limit() -> libc::rlimit {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for getrlimit to write.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    limit
}

/// Raises this process's soft open-file limit to its hard limit: the test holds 500 sockets.
fn raise_own_open_file_limit() {
    let mut limit = open_file_limit();
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: `limit` is a valid rlimit for setrlimit to read.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    assert!(
        limit.rlim_cur >= 2 * LISTENERS as libc::rlim_t + 100,
        "the hard open-file limit ({}) is too low for {LISTENERS} listeners",
        limit.rlim_cur
    );
}

/// pcmcast with the small tone, on `bind`.
fn pcmcast(bind: &str) -> Command {
    let mut command = Command::new(common::binary());
    command.args(SOURCE).args(["--bind", bind]);
    command
}

/// `command` with its soft open-file limit lowered to [`LOW_SOFT_LIMIT`].
fn with_low_open_file_limit(mut command: Command) -> Command {
    let limit = libc::rlimit {
        rlim_cur: LOW_SOFT_LIMIT,
        rlim_max: open_file_limit().rlim_max,
    };
    // SAFETY: between fork and exec the closure only calls setrlimit, which is
    // async-signal-safe, and allocates nothing (the error is built only when it fails).
    unsafe {
        command.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    command
}

/// The soft and hard "Max open files" of process `pid`, from /proc.
fn max_open_files(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .expect("Max open files in /proc/PID/limits");
    let mut fields = line.split_whitespace();
    let (soft, hard) = (fields.next().unwrap(), fields.next().unwrap());
    (soft.to_owned(), hard.to_owned())
}

/// One listener: connects to `endpoint`, reports on `attached` once the server has accepted it
/// as a listener (its response headers are in), then reads the stream to its end. Returns how
/// the stream ended unless that was cleanly.
async fn listen(
    addr: SocketAddr,
    endpoint: &str,
    attached: mpsc::Sender<()>,
) -> Result<(), String> {
    if endpoint == "/ws" {
        return listen_ws(addr, attached).await;
    }
    let mut socket = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let request = format!("GET {endpoint} HTTP/1.1\r\nHost: pcmcast\r\n\r\n");
    socket
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut body = BufReader::new(socket);
    let head = read_head(&mut body).await?;
    if !head.starts_with("HTTP/1.1 200 ") {
        return Err(format!("not a 200: {head:?}"));
    }
    if !head
        .to_ascii_lowercase()
        .contains("\r\ntransfer-encoding: chunked\r\n")
    {
        return Err(format!("not a chunked body: {head:?}"));
    }
    attached.send(()).await.unwrap();
    read_chunks(&mut body).await
}

/// The status line and headers, up to the empty line.
async fn read_head(reader: &mut BufReader<TcpStream>) -> Result<String, String> {
    let mut head = String::new();
    loop {
        let line = read_line(reader).await?;
        head.push_str(&line);
        if line == "\r\n" {
            return Ok(head);
        }
    }
}

async fn read_line(reader: &mut BufReader<TcpStream>) -> Result<String, String> {
    let mut line = String::new();
    match reader.read_line(&mut line).await {
        Ok(_) if line.ends_with("\r\n") => Ok(line),
        Ok(_) => Err(format!("the connection ended in a line: {line:?}")),
        Err(e) => Err(format!("reading a line: {e}")),
    }
}

/// Reads a chunked body: `Ok` once its terminating zero-size chunk and empty trailer are in,
/// an error if the connection ends first or the framing is wrong.
async fn read_chunks(reader: &mut BufReader<TcpStream>) -> Result<(), String> {
    let mut data_bytes = 0u64;
    loop {
        let line = read_line(reader)
            .await
            .map_err(|e| format!("after {data_bytes} bytes of body, no chunk size: {e}"))?;
        let size = line.trim_end().split(';').next().unwrap_or_default();
        let size = u64::from_str_radix(size, 16).map_err(|_| format!("a chunk size: {line:?}"))?;
        if size == 0 {
            let trailer = read_line(reader).await?;
            return match trailer.as_str() {
                "\r\n" => Ok(()),
                _ => Err(format!("a trailer after the final chunk: {trailer:?}")),
            };
        }
        let mut chunk = vec![0; usize::try_from(size).unwrap() + 2];
        reader
            .read_exact(&mut chunk)
            .await
            .map_err(|e| format!("after {data_bytes} bytes of body, a cut chunk: {e}"))?;
        if !chunk.ends_with(b"\r\n") {
            return Err("a chunk without its CRLF".to_owned());
        }
        data_bytes += size;
    }
}

/// A WebSocket listener: attached once its first message (the stream info) is in; ends
/// cleanly on a Close frame with code 1001 (going away).
async fn listen_ws(addr: SocketAddr, attached: mpsc::Sender<()>) -> Result<(), String> {
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .map_err(|e| format!("the WebSocket handshake: {e}"))?;
    match socket.next().await {
        Some(Ok(Message::Text(_))) => attached.send(()).await.unwrap(),
        other => return Err(format!("the stream info first, not {other:?}")),
    }
    while let Some(message) = socket.next().await {
        match message {
            Ok(Message::Close(Some(frame))) if frame.code == CloseCode::Away => return Ok(()),
            Ok(Message::Close(frame)) => return Err(format!("closed with {frame:?}")),
            Ok(_) => {}
            Err(e) => return Err(format!("before a Close frame: {e}")),
        }
    }
    Err("the connection ended without a Close frame".to_owned())
}

/// SIGTERM with 500 listeners attached: every stream ends cleanly, the process exits 0 within
/// [`EXIT_WITHIN`], and a new pcmcast listens on the same address at once.
#[test]
fn sigterm_with_500_listeners_ends_every_stream_and_the_port_is_reusable() {
    raise_own_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut process = common::spawn_command(with_low_open_file_limit(pcmcast("127.0.0.1:0")));
    let addr = process.addr;
    let (soft, hard) = max_open_files(process.pid());
    assert_eq!(
        soft, hard,
        "pcmcast raised its soft open-file limit (from {LOW_SOFT_LIMIT}) to the hard limit"
    );
    let api = Api::new(addr);

    let (attached, mut attachments) = mpsc::channel(LISTENERS);
    let listeners: Vec<_> = (0..LISTENERS)
        .map(|i| {
            let endpoint = ENDPOINTS[i % ENDPOINTS.len()];
            let attached = attached.clone();
            let listener = runtime.spawn(async move { listen(addr, endpoint, attached).await });
            (endpoint, listener)
        })
        .collect();
    drop(attached);
    runtime.block_on(async {
        for n in 0..LISTENERS {
            let attachment = within(STEP * 4, "500 listeners attaching", attachments.recv());
            assert!(
                attachment.await.is_some(),
                "only {n} listeners attached; one failed: see its task"
            );
        }
        let status = api.wait_for_listeners(LISTENERS as u64).await;
        assert_eq!(status["listeners"]["total"], LISTENERS, "{status}");
    });

    let signalled = Instant::now();
    process.terminate();
    let exit = common::wait_for_exit(&mut process.child, STEP);
    let exit_time = signalled.elapsed();
    println!("pcmcast exited ({exit:?}) {exit_time:?} after SIGTERM with {LISTENERS} listeners");
    let exit = exit.expect("pcmcast exits after SIGTERM");
    assert_eq!(exit.code(), Some(0), "pcmcast exits 0 after SIGTERM");
    assert!(
        exit_time < EXIT_WITHIN,
        "pcmcast took {exit_time:?} to exit after SIGTERM; the limit is {EXIT_WITHIN:?}"
    );

    let failures: Vec<String> = runtime.block_on(async {
        let mut failures = Vec::new();
        for (i, (endpoint, listener)) in listeners.into_iter().enumerate() {
            let ended = within(STEP, "a listener's stream ending", listener).await;
            if let Err(failure) = ended.expect("the listener task ran to its end") {
                failures.push(format!("listener {i} ({endpoint}): {failure}"));
            }
        }
        failures
    });
    assert!(
        failures.is_empty(),
        "{} of {LISTENERS} streams did not end cleanly: {:#?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );

    let restarted = common::spawn_command(pcmcast(&addr.to_string()));
    assert_eq!(
        restarted.addr, addr,
        "the restart listens on the same address"
    );
    runtime.block_on(poll_until(
        "/healthz of the restarted pcmcast to be 200",
        || async { send(api.request("/healthz")).await.status() },
        |status| *status == 200,
        |status| format!("status {status}"),
    ));
}
