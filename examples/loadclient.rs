//! Load client for fan-out benchmarks: opens N listeners on one HTTP stream over loopback at a
//! set ramp rate, reads for T seconds after a warm-up and prints one JSON line of what they got
//! and what the server spent. Generic over the server (pcmcast's `/stream.pcm`, an Icecast
//! mount): it only needs a GET that answers 200 with an endless body, chunked or not, and the
//! byte rate that body should have. `scripts/bench` drives it.
//!
//!   loadclient --url http://127.0.0.1:PORT/stream.pcm --pid SERVER_PID [--listeners 1000]
//!              [--seconds 20] [--warmup 2] [--ramp 500] [--stalled K]
//!              [--latency-url http://127.0.0.1:PORT/stream.ndjson] [--latency-listeners 20]
//!
//! Why it is built this way:
//! - Raw tokio sockets and a hand-written HTTP/1.1 reader, so that the client costs a small
//!   fraction of what the server does (both share this machine's two cores): one read per
//!   wake-up into a per-listener buffer, no allocation per read, no decoding of the samples.
//! - Every time is fixed before the first connection: listener i starts at i / ramp, the window
//!   opens once the ramp is over plus the warm-up and lasts T. Each listener counts only the
//!   bytes it reads inside the window, and stops on its own at the window's end, so a listener
//!   the server starves still reports (it cannot hang the run). A watchdog thread exits the
//!   process if, all the same, the run outlives its deadline.
//! - Latency needs the capture time of a frame, which raw PCM does not carry. A few extra
//!   listeners (`--latency-listeners`, default 20) read the NDJSON stream of the same source and
//!   compare each line's `time` with two clocks: when the kernel received the packet that ended
//!   the line (`receipt_latency_ms`, from `SO_TIMESTAMPNS`: what a listener on another machine
//!   would see) and when this client read it (`latency_ms`, which adds the client's own wait
//!   for a core it shares with the server and all the other listeners). They connect
//!   interleaved with the PCM listeners, so they sit at evenly spread places in the server's
//!   fan-out order and their latencies sample the whole fan-out, not just its first or last
//!   listener. They are not counted among the N. For a server without such a stream (Icecast)
//!   latency is null; `delay_spread_ms` (below) is the comparison that works for both.
//! - `delay_spread_ms`: for each PCM listener, `now − bytes_so_far / expected_rate` at every
//!   read, max minus min over the window. A listener served in time keeps it near one frame
//!   period; a server that falls behind or stalls pushes it up, whatever its framing.
//! - Stalled listeners (`--stalled K`) connect, send their request and never read. Their fate
//!   is read from the server's side of the connection in /proc/net/tcp every 250 ms: when the
//!   server drops one, its socket leaves ESTABLISHED. A server that resets the connection is
//!   seen sooner, on the listener's own socket (SO_ERROR, checked every 10 ms).
//! - The server's kernel send queues (from /proc/net/tcp, sockets on the server's port) show
//!   the memory that stalled and slow listeners hold outside the server's own RSS.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::sleep_until;

/// Per-listener read buffer. A frame of 48 kHz stereo f32 is 8 KiB; this takes several
/// frames in one read when a listener was woken late, without much memory per listener.
const READ_BUFFER: usize = 32 * 1024;
/// The largest response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// How often the server's sockets are listed from /proc/net/tcp.
const STALL_POLL: Duration = Duration::from_millis(250);
/// How often a stalled listener checks its own socket for a reset from the server.
const RESET_POLL: Duration = Duration::from_millis(10);
/// Slack past the planned end before the watchdog gives up on the run.
const DEADLINE_SLACK: Duration = Duration::from_secs(30);
/// The share of the expected bytes that counts as "served".
const SERVED_SHARE: f64 = 0.99;
/// Bytes of an NDJSON line kept to find its `time` field, which comes near the start.
const LINE_PREFIX: usize = 256;

#[derive(Parser, Clone)]
struct Args {
    /// The stream each listener reads: http://HOST:PORT/PATH.
    #[arg(long)]
    url: String,
    /// The server's process id, for its CPU time and RSS from /proc.
    #[arg(long)]
    pid: u32,
    /// Listeners that read `--url` (the N of the results).
    #[arg(long, default_value_t = 1000)]
    listeners: usize,
    /// Length of the measurement window, seconds.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// Time between the last connection attempt and the start of the window, seconds.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Connection attempts per second.
    #[arg(long, default_value_t = 500.0)]
    ramp: f64,
    /// The body's expected byte rate (48 kHz × 2 channels × 4 bytes by default).
    #[arg(long, default_value_t = 384_000.0)]
    expected_bytes_per_s: f64,
    /// Extra listeners that connect and never read.
    #[arg(long, default_value_t = 0)]
    stalled: usize,
    /// An NDJSON stream of the same source whose lines carry `"time"` (capture time, Unix
    /// seconds), read by the latency listeners.
    #[arg(long)]
    latency_url: Option<String>,
    /// Extra listeners that read `--latency-url` (ignored without it).
    #[arg(long, default_value_t = 20)]
    latency_listeners: usize,
    /// SO_RCVLOWAT of the PCM listeners' sockets: wake a listener only once this many bytes
    /// are queued, so that a server writing in small pieces does not cost the client a wake-up
    /// and a read per piece. 0 leaves the kernel's default (1 byte).
    #[arg(long, default_value_t = 0)]
    rcvlowat: u32,
    /// Worker threads of the client's runtime.
    #[arg(long, default_value_t = 2)]
    workers: usize,
}

/// What one connection is for.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Pcm,
    Latency,
    Stalled,
}

/// Where a listener's run ended, if not at the window's end.
#[derive(Clone, Copy, PartialEq, Debug, Default)]
enum Failure {
    #[default]
    None,
    /// Could not connect (refused, reset, or still not connected at the window's end).
    Connect,
    /// Connected but got no 200 response head.
    Http,
    /// The body ended or failed before the window's end.
    Ended,
}

/// What one listener saw. Returned by its task at the window's end.
#[derive(Default)]
struct Outcome {
    kind: Option<Kind>,
    failure: Failure,
    connect_ms: Option<f64>,
    /// From sending the request to having the whole response head.
    head_ms: Option<f64>,
    /// Body bytes read inside the window.
    window_bytes: u64,
    /// Min and max of `now − window_bytes / rate` over the window, seconds.
    delay_min: f64,
    delay_max: f64,
    /// Latency listeners: capture to the client's read of each line, ms.
    latencies_ms: Vec<f64>,
    /// Latency listeners: capture to the kernel's receipt of each line's last packet, ms.
    receipt_ms: Vec<f64>,
    /// Stalled listeners: seconds from the response head to the server dropping the
    /// connection.
    dropped_after_s: Option<f64>,
    /// Stalled listeners: bytes waiting unread in this side's receive queue at the end.
    stalled_rx_queue: u64,
    /// The connection, kept open until the report is printed, so that the readings taken
    /// at the window's end see every listener still connected.
    connection: Option<TcpStream>,
}

/// The fixed timeline of the run, shared by every task.
struct Plan {
    host: String,
    addr: SocketAddr,
    path: String,
    latency_path: Option<String>,
    window_start: Instant,
    window_end: Instant,
    bytes_per_s: f64,
    rcvlowat: u32,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("loadclient: error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    raise_open_file_limit()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers.max(1))
        .enable_all()
        .build()?;
    let report = runtime.block_on(measure(args))?;
    println!("{report}");
    // Listener sockets are closed by the exit itself; no need to wait for the runtime.
    std::process::exit(0);
}

async fn measure(args: Args) -> anyhow::Result<Value> {
    let (host, addr, path) = parse_url(&args.url)?;
    let latency_path = match &args.latency_url {
        Some(url) => {
            let (_, latency_addr, latency_path) = parse_url(url)?;
            if latency_addr != addr {
                bail!("--latency-url must be on the same server as --url");
            }
            Some(latency_path)
        }
        None => None,
    };
    let kinds = connection_order(
        args.listeners,
        if latency_path.is_some() {
            args.latency_listeners
        } else {
            0
        },
        args.stalled,
    );
    let ramp = Duration::from_secs_f64(kinds.len() as f64 / args.ramp);
    let warmup = Duration::from_secs_f64(args.warmup);
    let window = Duration::from_secs_f64(args.seconds);

    let rss_before_kb = proc_rss_kb(args.pid)?;
    let start = Instant::now();
    let plan = Arc::new(Plan {
        host,
        addr,
        path,
        latency_path,
        window_start: start + ramp + warmup,
        window_end: start + ramp + warmup + window,
        bytes_per_s: args.expected_bytes_per_s,
        rcvlowat: args.rcvlowat,
    });
    let deadline = plan.window_end + DEADLINE_SLACK;
    std::thread::spawn(move || {
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
        eprintln!("loadclient: the run outlived its deadline; exiting");
        std::process::exit(3);
    });

    let held = Arc::new(Mutex::new(HeldPorts::default()));
    if args.stalled > 0 {
        tokio::spawn(watch_held_ports(plan.clone(), held.clone()));
    }
    let mut tasks = Vec::with_capacity(kinds.len());
    let mut stalled = Vec::new();
    for (i, kind) in kinds.iter().enumerate() {
        let at = start + Duration::from_secs_f64(i as f64 / args.ramp);
        let plan = plan.clone();
        match kind {
            Kind::Stalled => {
                stalled.push(tokio::spawn(stalled_listener(plan, at, held.clone())));
            }
            kind => tasks.push(tokio::spawn(listener(plan, *kind, at))),
        }
    }

    sleep_until(plan.window_start.into()).await;
    let cpu_start = proc_cpu_s(args.pid)?;
    let client_start = own_cpu_s();
    let measured_from = Instant::now();
    sleep_until(plan.window_end.into()).await;
    let cpu_end = proc_cpu_s(args.pid)?;
    let client_end = own_cpu_s();
    let measured_s = measured_from.elapsed().as_secs_f64();
    let rss_end_kb = proc_rss_kb(args.pid)?;
    let sendq = server_send_queues(addr.port())?;

    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(task.await?);
    }
    let mut stalled_outcomes = Vec::with_capacity(stalled.len());
    for task in stalled {
        stalled_outcomes.push(task.await?);
    }
    Ok(report(
        &args,
        &outcomes,
        &stalled_outcomes,
        Measures {
            window_s: measured_s,
            server_cpu_s: (cpu_end.0 + cpu_end.1) - (cpu_start.0 + cpu_start.1),
            server_cpu_sys_s: cpu_end.1 - cpu_start.1,
            client_cpu_s: client_end - client_start,
            rss_before_kb,
            rss_end_kb,
            sendq,
        },
    ))
}

/// The order of the connections: N PCM listeners with the latency and stalled listeners
/// spread evenly among them (each kind sorted by its fractional position).
fn connection_order(pcm: usize, latency: usize, stalled: usize) -> Vec<Kind> {
    let mut keyed: Vec<(f64, Kind)> = Vec::with_capacity(pcm + latency + stalled);
    for (count, kind, offset) in [
        (pcm, Kind::Pcm, 0.5),
        (latency, Kind::Latency, 0.3),
        (stalled, Kind::Stalled, 0.7),
    ] {
        keyed.extend((0..count).map(|i| ((i as f64 + offset) / count as f64, kind)));
    }
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
    keyed.into_iter().map(|(_, kind)| kind).collect()
}

/// One PCM or latency listener, from its start time to the window's end.
async fn listener(plan: Arc<Plan>, kind: Kind, at: Instant) -> Outcome {
    let mut outcome = Outcome {
        kind: Some(kind),
        delay_min: f64::INFINITY,
        delay_max: f64::NEG_INFINITY,
        ..Outcome::default()
    };
    sleep_until(at.into()).await;
    let mut connection = None;
    let failure = tokio::select! {
        biased;
        () = sleep_until(plan.window_end.into()) => {
            // Cut off before it could connect or read a head: still connecting or waiting.
            if outcome.connect_ms.is_none() {
                Failure::Connect
            } else if outcome.head_ms.is_none() {
                Failure::Http
            } else {
                Failure::None
            }
        }
        failure = read_stream(&plan, kind, &mut outcome, &mut connection) => failure,
    };
    outcome.failure = failure;
    outcome.connection = connection;
    outcome
}

/// Connects, sends the request and reads the body until it fails (the caller stops it at the
/// window's end); returns why it stopped.
async fn read_stream(
    plan: &Plan,
    kind: Kind,
    outcome: &mut Outcome,
    connection: &mut Option<TcpStream>,
) -> Failure {
    let path = match kind {
        Kind::Latency => plan.latency_path.as_deref().unwrap_or(&plan.path),
        _ => &plan.path,
    };
    let (stream, mut buffer, head) = match open(plan, path, outcome).await {
        Ok(opened) => opened,
        Err(failure) => return failure,
    };
    let stream = connection.insert(stream);
    if kind == Kind::Pcm && plan.rcvlowat > 0 {
        set_rcvlowat(stream, plan.rcvlowat);
    }
    let mut body = if head.chunked {
        Body::Chunked(Chunked::default())
    } else {
        Body::Identity
    };
    let mut lines = LineTimes::default();
    if kind == Kind::Latency {
        enable_receive_timestamps(stream);
    }
    // The body bytes that came with the head are handled like a first read (the kernel's
    // receipt time of those is not known).
    let mut filled = head.leftover;
    let mut received = None;
    loop {
        let now = Instant::now();
        let in_window = now >= plan.window_start && now < plan.window_end;
        let mut payload = 0usize;
        let ended = body.feed(&buffer[..filled], |data| {
            payload += data.len();
            if kind == Kind::Latency && in_window {
                lines.feed(data, received, outcome);
            }
        });
        // Only reads that brought data: the head's empty leftover says nothing of delay.
        if in_window && kind == Kind::Pcm && payload > 0 {
            outcome.window_bytes += payload as u64;
            let delay = (now - plan.window_start).as_secs_f64()
                - outcome.window_bytes as f64 / plan.bytes_per_s;
            outcome.delay_min = outcome.delay_min.min(delay);
            outcome.delay_max = outcome.delay_max.max(delay);
        }
        if ended {
            return Failure::Ended;
        }
        let read = if kind == Kind::Latency {
            read_timestamped(stream, &mut buffer).await
        } else {
            stream.read(&mut buffer).await.map(|n| (n, None))
        };
        (filled, received) = match read {
            Ok((0, _)) | Err(_) => return Failure::Ended,
            Ok(read) => read,
        };
    }
}

/// Asks the kernel to stamp each received packet with the time it reached this socket
/// (`SO_TIMESTAMPNS`), which `read_timestamped` returns with the data. Failure leaves reads
/// without a receipt time.
fn enable_receive_timestamps(stream: &TcpStream) {
    set_socket_option(stream, libc::SO_TIMESTAMPNS, 1);
}

/// Reads like `read`, and also returns when the kernel received the last packet of what was
/// read (Unix seconds), from the `SCM_TIMESTAMPNS` control message.
async fn read_timestamped(
    stream: &TcpStream,
    buffer: &mut [u8],
) -> io::Result<(usize, Option<f64>)> {
    loop {
        stream.readable().await?;
        match stream.try_io(tokio::io::Interest::READABLE, || {
            recv_timestamped(stream, buffer)
        }) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            result => return result,
        }
    }
}

fn recv_timestamped(stream: &TcpStream, buffer: &mut [u8]) -> io::Result<(usize, Option<f64>)> {
    // Room for one cmsghdr with a timespec, 8-byte aligned.
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buffer.as_mut_ptr().cast(),
        iov_len: buffer.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header, filled in below.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &raw mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: the iovec and the control buffer outlive the call and their lengths are theirs.
    let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &raw mut message, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut received = None;
    // SAFETY: the CMSG_* macros walk the control buffer recvmsg filled, within msg_controllen.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&raw const message);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET
                && (*header).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let time: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(header).cast());
                received = Some(time.tv_sec as f64 + time.tv_nsec as f64 * 1e-9);
            }
            header = libc::CMSG_NXTHDR(&raw const message, header);
        }
    }
    Ok((n as usize, received))
}

/// The response head: what the body reader needs.
struct Head {
    chunked: bool,
    /// Body bytes read with the head, moved to the start of the buffer.
    leftover: usize,
}

/// Connects and reads a 200 response head, recording how long each took.
async fn open(
    plan: &Plan,
    path: &str,
    outcome: &mut Outcome,
) -> Result<(TcpStream, Box<[u8]>, Head), Failure> {
    let began = Instant::now();
    let mut stream = TcpStream::connect(plan.addr)
        .await
        .map_err(|_| Failure::Connect)?;
    outcome.connect_ms = Some(began.elapsed().as_secs_f64() * 1e3);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: pcmcast-loadclient\r\nAccept: */*\r\n\r\n",
        plan.host
    );
    let sent = Instant::now();
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|_| Failure::Http)?;
    let mut buffer = vec![0u8; READ_BUFFER].into_boxed_slice();
    let mut filled = 0;
    let head_len = loop {
        if let Some(end) = find(&buffer[..filled], b"\r\n\r\n") {
            break end + 4;
        }
        if filled >= MAX_HEAD {
            return Err(Failure::Http);
        }
        match stream.read(&mut buffer[filled..]).await {
            Ok(0) | Err(_) => return Err(Failure::Http),
            Ok(n) => filled += n,
        }
    };
    let head = std::str::from_utf8(&buffer[..head_len]).map_err(|_| Failure::Http)?;
    let mut lines = head.split("\r\n");
    let status_ok = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .is_some_and(|code| code == "200");
    if !status_ok {
        return Err(Failure::Http);
    }
    let chunked = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding")
                && value.to_ascii_lowercase().contains("chunked")
        })
    });
    outcome.head_ms = Some(sent.elapsed().as_secs_f64() * 1e3);
    buffer.copy_within(head_len..filled, 0);
    Ok((
        stream,
        buffer,
        Head {
            chunked,
            leftover: filled - head_len,
        },
    ))
}

/// A listener that sends its request and never reads; watches for the server dropping it.
async fn stalled_listener(plan: Arc<Plan>, at: Instant, held: Arc<Mutex<HeldPorts>>) -> Outcome {
    let mut outcome = Outcome {
        kind: Some(Kind::Stalled),
        ..Outcome::default()
    };
    sleep_until(at.into()).await;
    let began = Instant::now();
    let connected = tokio::select! {
        biased;
        () = sleep_until(plan.window_end.into()) => None,
        stream = TcpStream::connect(plan.addr) => stream.ok(),
    };
    let Some(mut stream) = connected else {
        outcome.failure = Failure::Connect;
        return outcome;
    };
    outcome.connect_ms = Some(began.elapsed().as_secs_f64() * 1e3);
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: pcmcast-loadclient-stalled\r\n\r\n",
        plan.path, plan.host
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        outcome.failure = Failure::Http;
        return outcome;
    }
    let sent = Instant::now();
    let port = stream.local_addr().map_or(0, |a| a.port());
    let mut poll = tokio::time::interval(RESET_POLL);
    // The first of the readings that missed the connection, and the last reading seen.
    let mut missing_since: Option<Instant> = None;
    let mut last_reading: Option<Instant> = None;
    // A connection the server has not accepted yet, or whose handshake's last ACK it dropped
    // (accept queue full), is not ESTABLISHED on its side either: only one seen held and then
    // gone counts as dropped.
    let mut seen_held = false;
    while Instant::now() < plan.window_end {
        poll.tick().await;
        // A server that resets the connection is seen at once on this side.
        if let Ok(Some(_)) = stream.take_error() {
            outcome.dropped_after_s = Some(sent.elapsed().as_secs_f64());
            break;
        }
        let held = held.lock().unwrap_or_else(|e| e.into_inner());
        // Judged only on new readings taken after this connection existed.
        let Some(read_at) = held
            .read_at
            .filter(|&at| at > sent && Some(at) != last_reading)
        else {
            continue;
        };
        last_reading = Some(read_at);
        if held.ports.contains(&port) {
            seen_held = true;
            missing_since = None;
            continue;
        }
        if !seen_held {
            continue;
        }
        // /proc/net/tcp is read a page at a time while sockets come and go, so one reading
        // can miss a live socket: two in a row are needed to call it dropped.
        match missing_since {
            None => missing_since = Some(read_at),
            Some(since) => {
                outcome.dropped_after_s = Some((since - sent).as_secs_f64());
                break;
            }
        }
    }
    outcome.stalled_rx_queue = rx_queue_bytes(&stream);
    outcome.connection = Some(stream);
    outcome
}

/// The client ports of the connections the server still holds open (its ESTABLISHED sockets),
/// as last read from /proc/net/tcp.
#[derive(Default)]
struct HeldPorts {
    read_at: Option<Instant>,
    ports: HashSet<u16>,
}

/// Re-reads the server's open connections every [`STALL_POLL`] until the window's end.
///
/// A dropped connection is seen from the server's side: a server that closes a stalled
/// listener's socket leaves it orphaned in FIN_WAIT1 with its unsent data, and the FIN queues
/// behind that data, which the client never reads, so the client's own socket would stay
/// ESTABLISHED long after the server let go.
async fn watch_held_ports(plan: Arc<Plan>, held: Arc<Mutex<HeldPorts>>) {
    let mut poll = tokio::time::interval(STALL_POLL);
    while Instant::now() < plan.window_end {
        poll.tick().await;
        let read_at = Instant::now();
        let Ok(sockets) = server_sockets(plan.addr.port()) else {
            continue;
        };
        let ports = sockets
            .iter()
            .filter(|s| s.established)
            .map(|s| s.remote_port)
            .collect();
        *held.lock().unwrap_or_else(|e| e.into_inner()) = HeldPorts {
            read_at: Some(read_at),
            ports,
        };
    }
}

/// A body's framing.
enum Body {
    /// Until the connection closes (Icecast's HTTP/1.0 answers).
    Identity,
    Chunked(Chunked),
}

impl Body {
    /// Passes the payload in `input` to `data`; whether the body has ended.
    fn feed(&mut self, input: &[u8], data: impl FnMut(&[u8])) -> bool {
        let mut data = data;
        match self {
            Body::Identity => {
                data(input);
                false
            }
            Body::Chunked(chunked) => chunked.feed(input, data),
        }
    }
}

/// Decoder state of `Transfer-Encoding: chunked`, across reads.
#[derive(Default)]
struct Chunked {
    state: ChunkState,
    size: u64,
}

#[derive(Default, PartialEq)]
enum ChunkState {
    /// Hex digits of the next chunk's size.
    #[default]
    Size,
    /// A chunk extension or the CR before the size line's LF.
    SizeRest,
    Data,
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The last chunk was read: the body is over (trailers are not read).
    Done,
}

impl Chunked {
    fn feed(&mut self, mut input: &[u8], mut data: impl FnMut(&[u8])) -> bool {
        while !input.is_empty() && self.state != ChunkState::Done {
            match self.state {
                ChunkState::Size | ChunkState::SizeRest => {
                    let byte = input[0];
                    input = &input[1..];
                    if byte == b'\n' {
                        self.state = if self.size == 0 {
                            ChunkState::Done
                        } else {
                            ChunkState::Data
                        };
                    } else if self.state == ChunkState::Size {
                        match (byte as char).to_digit(16) {
                            Some(digit) => self.size = self.size * 16 + u64::from(digit),
                            None => self.state = ChunkState::SizeRest,
                        }
                    }
                }
                ChunkState::Data => {
                    let take = input.len().min(self.size as usize);
                    data(&input[..take]);
                    input = &input[take..];
                    self.size -= take as u64;
                    if self.size == 0 {
                        self.state = ChunkState::DataEnd;
                    }
                }
                ChunkState::DataEnd => {
                    // CR then LF; the LF starts the next size line.
                    let byte = input[0];
                    input = &input[1..];
                    if byte == b'\n' {
                        self.state = ChunkState::Size;
                    }
                }
                ChunkState::Done => {}
            }
        }
        self.state == ChunkState::Done
    }
}

/// Finds each NDJSON line's `"time"` and records, when the line's newline arrives, how long
/// ago that was: when the client read it, and when the kernel received it (`received`).
#[derive(Default)]
struct LineTimes {
    prefix: Vec<u8>,
}

impl LineTimes {
    fn feed(&mut self, mut data: &[u8], received: Option<f64>, outcome: &mut Outcome) {
        while !data.is_empty() {
            let end = data.iter().position(|&b| b == b'\n');
            let part = &data[..end.unwrap_or(data.len())];
            let room = LINE_PREFIX.saturating_sub(self.prefix.len());
            self.prefix.extend_from_slice(&part[..part.len().min(room)]);
            let Some(end) = end else { return };
            if let Some(time) = json_time(&self.prefix) {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                outcome.latencies_ms.push((now - time) * 1e3);
                if let Some(received) = received {
                    outcome.receipt_ms.push((received - time) * 1e3);
                }
            }
            self.prefix.clear();
            data = &data[end + 1..];
        }
    }
}

/// The number after `"time":` in the start of a JSON line.
fn json_time(line: &[u8]) -> Option<f64> {
    let at = find(line, b"\"time\":")? + 7;
    let rest = &line[at..];
    let end = rest
        .iter()
        .position(|&b| b == b',' || b == b'}')
        .unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end]).ok()?.trim().parse().ok()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `http://host:port/path` → (Host header, socket address, path).
fn parse_url(url: &str) -> anyhow::Result<(String, SocketAddr, String)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("only http:// URLs are supported: {url}"))?;
    let (host, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(host)
        .with_context(|| format!("bad host:port in {url}"))?
        .next()
        .with_context(|| format!("{host} resolves to nothing"))?;
    Ok((host.to_owned(), addr, path.to_owned()))
}

/// Raises the soft open-file limit to the hard one: every listener is a descriptor.
fn raise_open_file_limit() -> io::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for getrlimit to write and setrlimit to read.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(io::Error::last_os_error());
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Failure only leaves the default (a wake-up for every byte).
fn set_rcvlowat(stream: &TcpStream, bytes: u32) {
    set_socket_option(stream, libc::SO_RCVLOWAT, bytes as libc::c_int);
}

/// Sets a SOL_SOCKET option that takes one c_int; failure is left to the caller's default.
fn set_socket_option(stream: &TcpStream, option: libc::c_int, value: libc::c_int) {
    // SAFETY: the option reads one c_int from a valid pointer.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Bytes received and not read on this socket.
fn rx_queue_bytes(stream: &TcpStream) -> u64 {
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::FIONREAD, &mut queued) };
    if rc == 0 { queued as u64 } else { 0 }
}

/// A process's (user, system) CPU time, seconds.
fn proc_cpu_s(pid: u32) -> anyhow::Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat (is the server running?)"))?;
    // The command name (field 2) may hold spaces; the fields after its ')' are positional:
    // utime and stime are the 14th and 15th of the line, the 12th and 13th after ')'.
    let after = &stat[stat.rfind(')').context("odd /proc stat")? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let (user, system): (u64, u64) = (fields[11].parse()?, fields[12].parse()?);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((user as f64 / hz, system as f64 / hz))
}

fn proc_rss_kb(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status (is the server running?)"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .context("no VmRSS in /proc status")
}

/// This process's user + system CPU time, seconds.
fn own_cpu_s() -> f64 {
    // SAFETY: getrusage fills the zeroed struct.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// One of the server's connections, from /proc/net/tcp.
struct ServerSocket {
    remote_port: u16,
    established: bool,
    /// Bytes written by the server and not yet acknowledged by the client.
    send_queue: u64,
}

/// Every socket on the server's port but the listening one, in any state: a socket the server
/// closed with unsent data lingers (FIN_WAIT1) and still holds that data in kernel memory.
fn server_sockets(port: u16) -> anyhow::Result<Vec<ServerSocket>> {
    let table = std::fs::read_to_string("/proc/net/tcp").context("cannot read /proc/net/tcp")?;
    let port_hex = format!(":{port:04X}");
    let mut sockets = Vec::new();
    for line in table.lines().skip(1) {
        // sl, local_address, rem_address, st (01 ESTABLISHED, 0A LISTEN), tx_queue:rx_queue.
        let fields: Vec<&str> = line.split_whitespace().take(5).collect();
        if fields.len() < 5 || !fields[1].ends_with(&port_hex) || fields[3] == "0A" {
            continue;
        }
        let hex = |field: &str| u64::from_str_radix(field, 16).unwrap_or(0);
        let remote_port = fields[2].rsplit(':').next().map_or(0, hex) as u16;
        let send_queue = fields[4].split(':').next().map_or(0, hex);
        sockets.push(ServerSocket {
            remote_port,
            established: fields[3] == "01",
            send_queue,
        });
    }
    Ok(sockets)
}

/// The server's sockets' unsent bytes: (sockets, total bytes, largest, of which in sockets
/// the server already closed).
fn server_send_queues(port: u16) -> anyhow::Result<(u64, u64, u64, u64)> {
    let (mut count, mut total, mut largest, mut closed) = (0, 0, 0, 0);
    for socket in server_sockets(port)? {
        count += 1;
        total += socket.send_queue;
        largest = largest.max(socket.send_queue);
        if !socket.established {
            closed += socket.send_queue;
        }
    }
    Ok((count, total, largest, closed))
}

/// Readings of the server and of this process over the window.
struct Measures {
    window_s: f64,
    server_cpu_s: f64,
    /// The part of it spent in the kernel (syscalls, and the loopback TCP work they do).
    server_cpu_sys_s: f64,
    client_cpu_s: f64,
    rss_before_kb: u64,
    rss_end_kb: u64,
    sendq: (u64, u64, u64, u64),
}

fn report(args: &Args, outcomes: &[Outcome], stalled: &[Outcome], m: Measures) -> Value {
    let pcm: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.kind == Some(Kind::Pcm))
        .collect();
    let expected = args.expected_bytes_per_s * m.window_s;
    let count = |failure| pcm.iter().filter(|o| o.failure == failure).count();
    let mut bytes: Vec<f64> = pcm.iter().map(|o| o.window_bytes as f64).collect();
    let served = bytes
        .iter()
        .filter(|&&b| b >= SERVED_SHARE * expected)
        .count();
    let connect: Vec<f64> = outcomes
        .iter()
        .chain(stalled)
        .filter_map(|o| o.connect_ms)
        .collect();
    let head: Vec<f64> = outcomes.iter().filter_map(|o| o.head_ms).collect();
    let spread: Vec<f64> = pcm
        .iter()
        .filter(|o| o.delay_max >= o.delay_min)
        .map(|o| (o.delay_max - o.delay_min) * 1e3)
        .collect();
    let latencies: Vec<f64> = outcomes
        .iter()
        .flat_map(|o| o.latencies_ms.iter().copied())
        .collect();
    let receipts: Vec<f64> = outcomes
        .iter()
        .flat_map(|o| o.receipt_ms.iter().copied())
        .collect();
    let latency_listeners = outcomes
        .iter()
        .filter(|o| o.kind == Some(Kind::Latency))
        .count();
    let dropped: Vec<f64> = stalled.iter().filter_map(|o| o.dropped_after_s).collect();
    let n = pcm.len().max(1) as f64;
    let listener_s = n * m.window_s;
    let rss_delta = m.rss_end_kb as f64 - m.rss_before_kb as f64;
    bytes.sort_by(f64::total_cmp);
    json!({
        "url": args.url,
        "listeners": pcm.len(),
        "ramp_per_s": args.ramp,
        "rcvlowat": args.rcvlowat,
        "window_s": round(m.window_s, 3),
        "expected_bytes": expected.round(),
        "bytes": {
            "min": bytes.first().copied().unwrap_or(0.0),
            "median": percentile(&bytes, 50.0).unwrap_or(0.0),
            "max": bytes.last().copied().unwrap_or(0.0),
        },
        "served_99": served,
        "served_99_pct": round(100.0 * served as f64 / n, 2),
        "connect_errors": count(Failure::Connect),
        "http_errors": count(Failure::Http),
        "ended_early": count(Failure::Ended),
        "connect_ms": summary(connect),
        "head_ms": summary(head),
        "delay_spread_ms": summary(spread),
        "latency_ms": latency_summary(latency_listeners, &latencies),
        "receipt_latency_ms": latency_summary(latency_listeners, &receipts),
        "server_cpu_s": round(m.server_cpu_s, 3),
        "server_cpu_us_per_listener_s": round(m.server_cpu_s / listener_s * 1e6, 1),
        "server_cpu_cores": round(m.server_cpu_s / m.window_s, 3),
        "server_cpu_sys_share": round(m.server_cpu_sys_s / m.server_cpu_s.max(1e-9), 3),
        "server_rss_kb_before": m.rss_before_kb,
        "server_rss_kb_end": m.rss_end_kb,
        "server_rss_kb_per_listener": round(rss_delta / n, 2),
        "server_sendq": {"sockets": m.sendq.0, "total_kb": m.sendq.1 / 1024,
                         "max_kb": m.sendq.2 / 1024, "closed_kb": m.sendq.3 / 1024},
        "client_cpu_s": round(m.client_cpu_s, 3),
        "client_cpu_cores": round(m.client_cpu_s / m.window_s, 3),
        "stalled": if stalled.is_empty() {
            Value::Null
        } else {
            json!({
                "listeners": stalled.len(),
                "connected": stalled.iter().filter(|o| o.connect_ms.is_some()).count(),
                "dropped": dropped.len(),
                "dropped_after_s": summary(dropped),
                "client_rx_queue_kb_max":
                    stalled.iter().map(|o| o.stalled_rx_queue).max().unwrap_or(0) / 1024,
            })
        },
    })
}

/// The latency listeners' samples: p50, p99 and max (null without latency listeners).
fn latency_summary(listeners: usize, samples: &[f64]) -> Value {
    if listeners == 0 {
        return Value::Null;
    }
    json!({"listeners": listeners, "samples": samples.len(),
           "p50": percentile_of(samples, 50.0), "p99": percentile_of(samples, 99.0),
           "max": percentile_of(samples, 100.0)})
}

/// p50, p99 and max of `values` (null when empty).
fn summary(mut values: Vec<f64>) -> Value {
    if values.is_empty() {
        return Value::Null;
    }
    values.sort_by(f64::total_cmp);
    json!({
        "p50": round(percentile(&values, 50.0).unwrap_or(0.0), 2),
        "p99": round(percentile(&values, 99.0).unwrap_or(0.0), 2),
        "max": round(*values.last().unwrap_or(&0.0), 2),
    })
}

fn percentile_of(values: &[f64], p: f64) -> Value {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile(&sorted, p).map_or(Value::Null, |v| json!(round(v, 2)))
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}
