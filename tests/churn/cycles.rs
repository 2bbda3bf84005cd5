//! Listener churn over raw sockets: connect/disconnect cycles of four kinds, run with bounded
//! concurrency. Shared by `tests/churn.rs` and `examples/soak.rs` (each includes this file with
//! `#[path]`), so that the soak's churn is the one the test checks.
//!
//! Cycle `i` is of kind `i % 4`, so a run of consecutive cycles mixes them evenly:
//! 0. `GET /stream.pcm`, read into the body, shut down the write side, read to the server's close;
//! 1. `GET /stream.ndjson`, read into the body, reset (`SO_LINGER` 0, so the close sends RST);
//! 2. a request abandoned before the response: a partial request closed, a complete one closed,
//!    a complete one reset — in turn;
//! 3. `GET /events` or `GET /stream.wav` (in turn), close mid-body.

use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// Longest a single cycle may take before it counts as an error.
const CYCLE_LIMIT: Duration = Duration::from_secs(5);

/// Raw body bytes (chunk framing included) read before closing a stream: more than any
/// preamble (the WAV header, the SSE `info` event) and less than one frame, so that reaching it
/// means the listener was sent at least one frame.
const MID_BODY_BYTES: usize = 1000;

/// The request line and headers of a partial request: the blank line that ends them is missing.
const PARTIAL_REQUEST: &[u8] = b"GET /stream.pcm HTTP/1.1\r\nHost: churn\r\n";

/// What a run of cycles did.
#[derive(Debug, Default)]
pub struct Tally {
    /// Cycles that got a 200 and a frame: each was a listener on the server.
    pub listened: u64,
    /// Cycles that closed a partial request: the server never saw a request.
    pub abandoned_partial: u64,
    /// Cycles that closed right after sending a complete request: the server may or may not
    /// have subscribed a listener before it noticed.
    pub abandoned_complete: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl Tally {
    pub fn cycles(&self) -> u64 {
        self.listened + self.abandoned_partial + self.abandoned_complete + self.errors
    }

    pub fn add(&mut self, other: Tally) {
        self.listened += other.listened;
        self.abandoned_partial += other.abandoned_partial;
        self.abandoned_complete += other.abandoned_complete;
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
    }

    fn record(&mut self, index: usize, outcome: io::Result<Outcome>) {
        match outcome {
            Ok(Outcome::Listened) => self.listened += 1,
            Ok(Outcome::AbandonedPartial) => self.abandoned_partial += 1,
            Ok(Outcome::AbandonedComplete) => self.abandoned_complete += 1,
            Err(error) => {
                self.errors += 1;
                self.first_error
                    .get_or_insert_with(|| format!("cycle {index}: {error}"));
            }
        }
    }
}

enum Outcome {
    Listened,
    AbandonedPartial,
    AbandonedComplete,
}

/// Runs cycles `indices` against `addr`, `in_flight` at a time, and counts how they went.
pub async fn churn(addr: SocketAddr, indices: Range<usize>, in_flight: usize) -> Tally {
    let next = Arc::new(AtomicUsize::new(indices.start));
    let mut workers = JoinSet::new();
    for _ in 0..in_flight {
        let next = Arc::clone(&next);
        workers.spawn(async move {
            let mut tally = Tally::default();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= indices.end {
                    return tally;
                }
                let outcome = tokio::time::timeout(CYCLE_LIMIT, cycle(addr, index))
                    .await
                    .unwrap_or_else(|_| Err(failure(format!("not done within {CYCLE_LIMIT:?}"))));
                tally.record(index, outcome);
            }
        });
    }
    let mut tally = Tally::default();
    while let Some(worker) = workers.join_next().await {
        tally.add(worker.expect("a churn worker panicked"));
    }
    tally
}

async fn cycle(addr: SocketAddr, index: usize) -> io::Result<Outcome> {
    let turn = index / 4;
    match index % 4 {
        0 => {
            let mut stream = open_stream(addr, "/stream.pcm").await?;
            stream.shutdown().await?;
            // The server closes a connection once its client has finished sending (hyper does
            // not keep half-closed connections), so this read ends.
            let mut rest = [0; 64 * 1024];
            while stream.read(&mut rest).await? > 0 {}
            Ok(Outcome::Listened)
        }
        1 => {
            let stream = open_stream(addr, "/stream.ndjson").await?;
            stream.set_zero_linger()?;
            Ok(Outcome::Listened)
        }
        2 => abandon(addr, turn % 3).await,
        _ => {
            let path = if turn % 2 == 0 {
                "/events"
            } else {
                "/stream.wav"
            };
            open_stream(addr, path).await?;
            Ok(Outcome::Listened)
        }
    }
}

/// Sends a request and closes before the response: in turn a partial request closed, a complete
/// one closed, a complete one reset.
async fn abandon(addr: SocketAddr, turn: usize) -> io::Result<Outcome> {
    let mut stream = TcpStream::connect(addr).await?;
    if turn == 0 {
        stream.write_all(PARTIAL_REQUEST).await?;
        return Ok(Outcome::AbandonedPartial);
    }
    stream.write_all(&request("/stream.pcm")).await?;
    if turn == 2 {
        stream.set_zero_linger()?;
    }
    Ok(Outcome::AbandonedComplete)
}

/// Connects, sends `GET path` and reads the response head (which must say 200) and
/// [`MID_BODY_BYTES`] of the body. The stream is left mid-body.
pub async fn open_stream(addr: SocketAddr, path: &str) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(&request(path)).await?;
    let mut received = Vec::with_capacity(16 * 1024);
    let mut buffer = [0; 16 * 1024];
    loop {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            return Err(failure(format!(
                "GET {path}: the server closed the connection"
            )));
        }
        received.extend_from_slice(&buffer[..read]);
        let Some(head_len) = received.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        if !received.starts_with(b"HTTP/1.1 200 ") {
            let head = String::from_utf8_lossy(&received[..head_len]);
            return Err(failure(format!("GET {path}: {head}")));
        }
        if received.len() - head_len - 4 >= MID_BODY_BYTES {
            return Ok(stream);
        }
    }
}

fn request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: churn\r\n\r\n").into_bytes()
}

fn failure(message: String) -> io::Error {
    io::Error::other(message)
}
