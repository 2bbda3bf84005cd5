//! Direct fan-out: raw PCM, WAV and NDJSON listeners served by a few threads that write every
//! frame straight into every listener's socket.
//!
//! These are the endpoints people run by the thousand, and per listener a frame costs one
//! write here: no task to wake, no HTTP machinery, no shared counter touched. Serving them as
//! hyper response bodies cost about twice the kernel's own work for the write.
//!
//! [`crate::server`] answers the request (through the axum app, so access control, parameters
//! and limits are the same), writes the response head itself and hands the socket over with
//! [`Fanout::add`]. From then on one shard thread owns it:
//!
//! - The publisher gives each shard every frame ([`Fanout::publish`]); the shard keeps the last
//!   `backlog + 1` in a window that its listeners index into. A listener is only a position in
//!   that window, plus whatever part of a write the socket did not take yet.
//! - Each time frames arrive, every listener gets all the frames it has not had in one
//!   vectored write (normally of exactly one frame), each frame an HTTP chunk encoded once for
//!   everyone. A shard's writes of a round go to the kernel together through io_uring, a few
//!   system calls for all of them ([`uring`]), or where that is not available one `writev`
//!   each.
//! - New frames wake every shard at once ([`Bell`]), and where there is a shard for each core,
//!   each keeps to its own core: the listeners of one shard never wait for another's round.
//!   The shards start sending together ([`Shard::send_together`]), and run real-time with
//!   `--realtime all` ([`crate::realtime`]).
//! - Sockets are non-blocking with a capped send buffer. A write the socket only partly takes
//!   leaves its rest pending, sent before anything else next time, so chunks stay whole. A
//!   listener more than `backlog` frames behind skips forward (an NDJSON one is told, with
//!   `"skipped":N` in its next line, its only bytes not shared); one whose socket took nothing
//!   for half as long as the backlog lasts is dropped (reset): a stalled client costs a
//!   bounded send buffer, for a bounded time ([`stall_limit`]).
//! - The stream ends with a clean final chunk after `frames=N`, when the source ends (once the
//!   listener has everything), when the client shuts down its side of the connection (as
//!   hyper would), or on [`Fanout::stop`], which ends every stream at once.
//! - A shard waits in its own `mio` poll: woken by the publisher, by new listeners, and by
//!   any listener's socket that becomes readable (the client closed or sent something), so
//!   clients that leave are noticed without a read per listener per frame.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{
    AtomicU64, AtomicUsize, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use socket2::SockRef;
use tokio::sync::Notify;

use crate::encode::{self, PcmFormat};
use crate::frame::Frame;
use crate::hub::Membership;
use crate::lock;
use crate::realtime::{self, Duty, Realtime, Role};
use crate::stats::{Endpoint, Stats};

#[cfg(target_os = "linux")]
mod uring;

/// The tokens of a shard's waker and of the bell; listeners' tokens are their slots.
const WAKER: Token = Token(usize::MAX);
const BELL: Token = Token(usize::MAX - 1);
/// The longest a shard waits for the others to have their rounds ready
/// ([`Shard::send_together`]): preparing a round took 0.2 ms (p50) at 510 listeners a shard;
/// a shard much later than that is not waited for.
const TOGETHER_WAIT: Duration = Duration::from_micros(200);
/// Client events taken per wake-up.
const EVENTS: usize = 256;
/// Reads of what a client sends (and is discarded) per round, so that one client that keeps
/// sending cannot hold the shard.
const MAX_READS: usize = 4;

/// Frames an idle shard keeps (or `--burst`, if more), so that a listener whose request arrived
/// a moment before it was handed over still starts with the first frame after its request.
const IDLE_FRAMES: usize = 8;
/// Frames one write may carry: a listener more behind than this catches up over several.
const MAX_FRAMES_PER_WRITE: usize = 16;
/// Pieces a listener can have pending: a write that leaves a piece unfinished begins no other,
/// and a skip's NDJSON line is only queued when nothing is.
const MAX_PENDING: usize = 1;
/// The send buffer asked for each socket (the kernel doubles it): ~0.3 s of 48 kHz stereo f32,
/// room for a LAN or Wi-Fi round trip, against the megabytes autotuning gives a stalled one.
pub const SEND_BUFFER_BYTES: usize = 64 * 1024;

/// How the shards are bounded.
#[derive(Clone, Copy, Debug)]
pub struct FanoutLimits {
    /// Frames a listener may fall behind before it is skipped forward. A socket that takes
    /// nothing for half as long has its listener dropped (see [`stall_limit`]).
    pub backlog_frames: usize,
    /// Recent frames a new listener gets before live ones.
    pub burst_frames: usize,
    /// How long one frame lasts.
    pub frame_period: Duration,
}

/// What a direct listener is to be sent; the HTTP handler makes it, the server hands it over
/// with the socket.
pub struct DirectStream {
    pub membership: Membership,
    pub encoding: DirectEncoding,
    /// Bytes before the first frame (the WAV header).
    pub preamble: Option<Bytes>,
    /// Frames to send before ending the stream (`frames=N`).
    pub frames: Option<u64>,
}

/// What a direct listener's frames are sent as.
#[derive(Clone, Copy, Debug)]
pub enum DirectEncoding {
    Pcm(PcmFormat),
    Ndjson,
}

/// Put in a request's extensions by [`crate::server`] when it can hand the connection over:
/// a stream handler that accepts it answers with the response head only, and the server gives
/// the socket and the accepted [`DirectStream`] to [`Fanout::add`].
#[derive(Clone, Default)]
pub struct DirectOffer(Arc<Mutex<Option<DirectStream>>>);

impl DirectOffer {
    pub fn accept(&self, stream: DirectStream) {
        *lock(&self.0) = Some(stream);
    }

    pub fn take(&self) -> Option<DirectStream> {
        lock(&self.0).take()
    }
}

/// The shards; cloning gives another handle to the same ones.
#[derive(Clone)]
pub struct Fanout {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Vec<ShardHandle>,
    /// Where there is one, new frames wake every shard with it.
    bell: Option<Bell>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Frames published so far: the index of the next.
    published: AtomicU64,
    /// Notified whenever a closed shard has no listeners left.
    drained: Arc<Notify>,
}

struct ShardHandle {
    shared: Arc<ShardShared>,
    waker: Waker,
}

impl ShardHandle {
    fn wake(&self) {
        if let Err(error) = self.waker.wake() {
            tracing::error!("cannot wake a fan-out thread: {error}");
        }
    }
}

struct ShardShared {
    inbox: Mutex<Inbox>,
    /// Listeners this shard serves or is about to.
    listeners: AtomicUsize,
    window_frames: usize,
    burst_frames: usize,
    /// The index after the last frame this shard has a round ready to send (or sent).
    prepared: AtomicU64,
}

/// What the other threads leave for a shard.
#[derive(Default)]
struct Inbox {
    /// Frames and their indices.
    frames: VecDeque<(u64, Arc<Frame>)>,
    joining: Vec<Listener>,
    closed: bool,
    stopped: bool,
}

impl Fanout {
    /// Starts one shard thread per core (at most 8), real-time if `realtime` asks for it and
    /// the system permits it.
    pub fn start(limits: FanoutLimits, stats: Arc<Stats>, realtime: bool) -> io::Result<Fanout> {
        Fanout::start_writing(limits, stats, true, realtime)
    }

    /// Starts the shards, which write through io_uring where it is available and `io_uring`
    /// asks for it.
    fn start_writing(
        limits: FanoutLimits,
        stats: Arc<Stats>,
        io_uring: bool,
        realtime: bool,
    ) -> io::Result<Fanout> {
        let count = thread::available_parallelism().map_or(1, |n| n.get().min(8));
        let cores = cores_for(count);
        let drained = Arc::new(Notify::new());
        let bell = Bell::new()
            .inspect_err(|error| tracing::debug!("no bell for the fan-out threads: {error}"))
            .ok();
        let peers: Arc<[Arc<ShardShared>]> = (0..count)
            .map(|_| {
                Arc::new(ShardShared {
                    inbox: Mutex::default(),
                    listeners: AtomicUsize::new(0),
                    window_frames: limits.backlog_frames.max(limits.burst_frames) + 1,
                    burst_frames: limits.burst_frames,
                    prepared: AtomicU64::new(0),
                })
            })
            .collect();
        let mut shards = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for (index, shared) in peers.iter().enumerate() {
            let poll = Poll::new()?;
            let waker = Waker::new(poll.registry(), WAKER)?;
            if let Some(bell) = &bell {
                bell.hang(&poll)?;
            }
            let shard = Shard {
                shared: shared.clone(),
                poll,
                limits,
                stats: stats.clone(),
                drained: drained.clone(),
                #[cfg(target_os = "linux")]
                ring: io_uring.then(|| ring(index)).flatten(),
                turns: Vec::new(),
                queue: Queue::default(),
                results: Vec::new(),
                realtime,
                peers: peers.clone(),
            };
            let core = cores.get(index).copied();
            let handle = thread::Builder::new()
                .name(format!("pcmcast-fanout-{index}"))
                .spawn(move || {
                    if let Some(core) = core {
                        pin_to(core);
                    }
                    shard.run()
                })?;
            shards.push(ShardHandle {
                shared: shared.clone(),
                waker,
            });
            threads.push(handle);
        }
        Ok(Fanout {
            inner: Arc::new(Inner {
                shards,
                bell,
                threads: Mutex::new(threads),
                published: AtomicU64::new(0),
                drained,
            }),
        })
    }

    /// Hands `frame` to every shard. Never waits for a listener.
    pub fn publish(&self, frame: &Arc<Frame>) {
        let index = self.inner.published.fetch_add(1, Relaxed);
        for shard in &self.inner.shards {
            let mut inbox = lock(&shard.shared.inbox);
            let busy = !inbox.joining.is_empty() || shard.shared.listeners.load(Relaxed) > 0;
            // A shard without listeners is not woken: it keeps only what the next listener
            // may start with, here, and no frame longer than that.
            let keep = if busy {
                shard.shared.window_frames
            } else {
                shard.shared.burst_frames.max(IDLE_FRAMES)
            };
            inbox.frames.push_back((index, frame.clone()));
            while inbox.frames.len() > keep {
                inbox.frames.pop_front();
            }
            drop(inbox);
            if busy && self.inner.bell.is_none() {
                shard.wake();
            }
        }
        if let Some(bell) = &self.inner.bell {
            bell.ring();
        }
    }

    /// Index of the next frame to be published: where a listener whose request arrives now
    /// starts (before its `--burst`).
    pub fn position(&self) -> u64 {
        self.inner.published.load(Relaxed)
    }

    /// Takes over `socket`, whose response head has been written, to send it `stream` from
    /// frame `start` (a [`Fanout::position`] taken when its request arrived): chunked
    /// (HTTP/1.1) or delimited by closing the connection (HTTP/1.0).
    pub fn add(
        &self,
        socket: std::net::TcpStream,
        chunked: bool,
        stream: DirectStream,
        start: u64,
    ) -> io::Result<()> {
        socket.set_nonblocking(true)?;
        let sock = SockRef::from(&socket);
        sock.set_send_buffer_size(SEND_BUFFER_BYTES)?;
        sock.set_tcp_nodelay(true)?;
        let listener = Listener::new(TcpStream::from_std(socket), chunked, stream, start);
        let shard = self
            .inner
            .shards
            .iter()
            .min_by_key(|shard| shard.shared.listeners.load(Relaxed))
            .expect("at least one shard");
        let mut inbox = lock(&shard.shared.inbox);
        if inbox.stopped {
            // Too late: the shards are gone. The stream ends at once, empty.
            drop(inbox);
            let mut listener = listener;
            listener.end_now(&mut Tally::default());
            return Ok(());
        }
        shard.shared.listeners.fetch_add(1, Relaxed);
        inbox.joining.push(listener);
        drop(inbox);
        shard.wake();
        Ok(())
    }

    /// No more frames will come: each listener's stream ends once it has every frame.
    pub fn close(&self) {
        self.tell_shards(|inbox| inbox.closed = true);
    }

    /// Ends every stream now with its final chunk, as far as the socket takes it, and stops
    /// the shards.
    pub fn stop(&self) {
        self.tell_shards(|inbox| inbox.stopped = true);
    }

    fn tell_shards(&self, what: impl Fn(&mut Inbox)) {
        for shard in &self.inner.shards {
            what(&mut lock(&shard.shared.inbox));
            shard.wake();
        }
    }

    /// Listeners being served or about to be.
    pub fn listeners(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|shard| shard.shared.listeners.load(Relaxed))
            .sum()
    }

    /// Waits until no listener is left; after [`Fanout::close`], that happens once each has
    /// taken its last frame and final chunk.
    pub async fn drained(&self) {
        loop {
            let notified = self.inner.drained.notified();
            if self.listeners() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Waits for the shard threads to end; call after [`Fanout::stop`].
    pub fn join(&self) {
        let threads = std::mem::take(&mut *lock(&self.inner.threads));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

/// The ring a shard writes through, or none where io_uring is not available (an old kernel,
/// a sandbox that forbids it), said once.
#[cfg(target_os = "linux")]
fn ring(shard: usize) -> Option<uring::Ring> {
    uring::Ring::new()
        .inspect_err(|error| {
            if shard == 0 {
                tracing::info!("io_uring is not available ({error}): one writev per listener");
            }
        })
        .ok()
}

/// The cores the shards keep to, one each, when there is a shard for each core this process
/// may use (else none: they go where the scheduler puts them). Left to the scheduler, two
/// shards woken together were often put on one core, the second waiting for the first's round
/// (3 ms at 1,000 listeners), while the other core ran the thread that woke them.
#[cfg(target_os = "linux")]
fn cores_for(shards: usize) -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for this thread.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let got = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &raw mut set) };
    if got != 0 {
        return Vec::new();
    }
    // SAFETY: CPU_ISSET reads the set for a CPU number below CPU_SETSIZE.
    let cores: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect();
    if cores.len() == shards {
        cores
    } else {
        Vec::new()
    }
}

#[cfg(not(target_os = "linux"))]
fn cores_for(_shards: usize) -> Vec<usize> {
    Vec::new()
}

/// Keeps the calling thread on `core`; it goes on unpinned if that fails.
#[cfg(target_os = "linux")]
fn pin_to(core: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes a CPU number below CPU_SETSIZE (the
    // number came from CPU_ISSET over that range), and sched_setaffinity reads the set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &raw const set) != 0 {
            tracing::debug!(
                "a fan-out thread stays unpinned: {}",
                io::Error::last_os_error()
            );
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn pin_to(_core: usize) {}

/// Runs `serve` for one listener: a bug that panics while serving it costs that listener only.
fn guarded<T>(serve: impl FnOnce() -> T) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(serve))
        .inspect_err(|_| {
            tracing::error!("dropped a direct listener after a panic while serving it")
        })
        .ok()
}

/// Wakes every shard's poll with one write. Woken one after another, the first shard woken on
/// the publisher's core could take it before the publisher woke the next: that shard's
/// listeners would all wait for the first shard's whole round (measured: 3 ms at 1,000).
#[cfg(target_os = "linux")]
struct Bell(std::os::fd::OwnedFd);

#[cfg(target_os = "linux")]
impl Bell {
    fn new() -> io::Result<Bell> {
        use std::os::fd::FromRawFd;
        // SAFETY: eventfd has no preconditions; a descriptor it returns is ours to own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        Ok(Bell(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    /// Makes `poll` wake on each ring (edge-triggered: every write is an event of its own).
    fn hang(&self, poll: &Poll) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        poll.registry().register(
            &mut mio::unix::SourceFd(&self.0.as_raw_fd()),
            BELL,
            Interest::READABLE,
        )
    }

    fn ring(&self) {
        use std::os::fd::AsRawFd;
        let one = 1u64.to_ne_bytes();
        // SAFETY: eventfd takes one 8-byte count from a valid buffer.
        let written = unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        if written < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock {
            // The count is full (after 2^64 rings): take it and ring again.
            let mut count = [0u8; 8];
            // SAFETY: eventfd gives one 8-byte count into a valid buffer.
            unsafe { libc::read(self.0.as_raw_fd(), count.as_mut_ptr().cast(), count.len()) };
            self.ring();
        }
    }
}

/// Without eventfd, each shard is woken by its own waker.
#[cfg(not(target_os = "linux"))]
struct Bell;

#[cfg(not(target_os = "linux"))]
impl Bell {
    fn new() -> io::Result<Bell> {
        Err(io::ErrorKind::Unsupported.into())
    }

    fn hang(&self, _poll: &Poll) -> io::Result<()> {
        Ok(())
    }

    fn ring(&self) {}
}

/// The last frames a shard has, by index (the count of frames published before each).
struct Window {
    frames: VecDeque<Arc<Frame>>,
    /// Index of `frames[0]`.
    first: u64,
    capacity: usize,
}

impl Window {
    /// Adds frame `index`; after a gap (frames an idle shard let go), the window starts anew.
    fn push(&mut self, index: u64, frame: Arc<Frame>) {
        if index != self.end() {
            self.frames.clear();
            self.first = index;
        }
        if self.frames.len() == self.capacity {
            self.frames.pop_front();
            self.first += 1;
        }
        self.frames.push_back(frame);
    }

    /// Lets go of every frame (and its encodings); indices go on where they were.
    fn clear(&mut self) {
        self.first = self.end();
        self.frames.clear();
    }

    /// Index of the next frame to come.
    fn end(&self) -> u64 {
        self.first + self.frames.len() as u64
    }

    fn get(&self, index: u64) -> &Arc<Frame> {
        &self.frames[(index - self.first) as usize]
    }
}

/// Counts gathered over one round and added to the shared stats once.
#[derive(Default)]
struct Tally {
    bytes: [u64; Endpoint::ALL.len()],
    skipped: u64,
    dropped: u64,
}

impl Tally {
    fn flush(&mut self, stats: &Stats) {
        for (endpoint, bytes) in Endpoint::ALL.iter().zip(&mut self.bytes) {
            if *bytes > 0 {
                stats
                    .endpoint(*endpoint)
                    .bytes_sent
                    .fetch_add(*bytes, Relaxed);
                *bytes = 0;
            }
        }
        if self.skipped > 0 {
            stats.frames_skipped.fetch_add(self.skipped, Relaxed);
            self.skipped = 0;
        }
        if self.dropped > 0 {
            stats.listeners_dropped.fetch_add(self.dropped, Relaxed);
            self.dropped = 0;
        }
    }
}

/// How long a listener's socket may take nothing before the listener is dropped: half the
/// backlog. A client that stops reading first fills its own receive buffer and then this
/// side's send buffer (at 384 kB/s with default buffers, some 0.6 s) before a write takes
/// nothing; with half the backlog after that, it is gone within about the backlog's length of
/// stopping, as a listener that falls that far behind by reading too slowly is skipped forward.
/// A reader that still takes bytes, however slowly, is never dropped for it.
pub fn stall_limit(limits: &FanoutLimits) -> Duration {
    limits.frame_period * limits.backlog_frames as u32 / 2
}

/// One shard thread's state.
struct Shard {
    shared: Arc<ShardShared>,
    poll: Poll,
    limits: FanoutLimits,
    stats: Arc<Stats>,
    drained: Arc<Notify>,
    /// Where the round's writes go, where io_uring is available.
    #[cfg(target_os = "linux")]
    ring: Option<uring::Ring>,
    /// The round's writes, their slices and what each wrote (kept for their capacity).
    turns: Vec<Turn>,
    queue: Queue,
    results: Vec<io::Result<usize>>,
    /// Run real-time where permitted.
    realtime: bool,
    /// Every shard's shared state, this one's included.
    peers: Arc<[Arc<ShardShared>]>,
}

/// What the round found about the shard's listeners.
struct Round {
    closed: bool,
    now: Instant,
    stall_limit: Duration,
    backlog_frames: u64,
}

/// A shard's listeners, each in a slot whose index is its poll token.
#[derive(Default)]
struct Slots {
    slots: Vec<Option<Listener>>,
    free: Vec<usize>,
}

impl Slots {
    fn insert(&mut self, listener: Listener) -> usize {
        match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(listener);
                slot
            }
            None => {
                self.slots.push(Some(listener));
                self.slots.len() - 1
            }
        }
    }

    fn remove(&mut self, slot: usize) -> Option<Listener> {
        let listener = self.slots.get_mut(slot)?.take()?;
        self.free.push(slot);
        Some(listener)
    }

    fn get_mut(&mut self, slot: usize) -> Option<&mut Listener> {
        self.slots.get_mut(slot)?.as_mut()
    }

    fn iter(&self) -> impl Iterator<Item = &Listener> {
        self.slots.iter().flatten()
    }
}

impl Shard {
    fn run(mut self) {
        let mut window = Window {
            frames: VecDeque::with_capacity(self.shared.window_frames),
            first: 0,
            capacity: self.shared.window_frames,
        };
        let mut listeners = Slots::default();
        let mut events = Events::with_capacity(EVENTS);
        let mut arrived = VecDeque::new();
        let mut joining = Vec::new();
        let mut tally = Tally::default();
        let stall_limit = stall_limit(&self.limits);
        let mut realtime = Realtime::enter_if(self.realtime, Role::Fanout, &self.stats);
        // Only a shard that was let be real-time keeps count of how busy it is.
        let mut duty = realtime.is_some().then(Duty::start);
        loop {
            let (closed, stopped) = {
                let mut inbox = lock(&self.shared.inbox);
                // An idle shard leaves the frames where the publisher keeps only what the next
                // listener may start with (the bell wakes it for every frame all the same).
                if listeners.iter().next().is_some() || !inbox.joining.is_empty() {
                    std::mem::swap(&mut inbox.frames, &mut arrived);
                }
                std::mem::swap(&mut inbox.joining, &mut joining);
                (inbox.closed, inbox.stopped)
            };
            for (index, frame) in arrived.drain(..) {
                window.push(index, frame);
            }
            for mut listener in joining.drain(..) {
                listener.next = listener
                    .next
                    .saturating_sub(self.limits.burst_frames as u64)
                    .clamp(window.first, window.end());
                self.admit(&mut listeners, listener);
            }
            if stopped {
                for slot in 0..listeners.slots.len() {
                    if let Some(mut listener) = self.dismiss(&mut listeners, slot) {
                        listener.end_now(&mut tally);
                    }
                }
                tally.flush(&self.stats);
                self.shared.listeners.store(0, Relaxed);
                self.drained.notify_one();
                return;
            }
            let round = Round {
                closed,
                now: Instant::now(),
                stall_limit,
                backlog_frames: self.limits.backlog_frames as u64,
            };
            let left = self.serve(&mut listeners, &window, &round, &mut tally);
            tally.flush(&self.stats);
            if left > 0 {
                self.shared.listeners.fetch_sub(left, Relaxed);
            }
            if listeners.iter().next().is_none() {
                // Idle, the shard is not woken for frames; the burst for the next listener
                // waits in its inbox. The window would only keep stale frames and encodings.
                window.clear();
                if closed {
                    self.drained.notify_one();
                }
            }
            // Unsent bytes and frames a write did not take are retried when the next frame
            // comes. Once the source has ended none comes: every listener still here has
            // something left (frames, the final chunk), retried after a frame period.
            let timeout = listeners
                .iter()
                .any(|listener| closed || listener.has_unsent())
                .then_some(self.limits.frame_period);
            if let Some(duty) = &mut duty {
                self.keep_light(duty, &mut realtime);
            }
            if let Err(error) = self.poll.poll(&mut events, timeout)
                && error.kind() != io::ErrorKind::Interrupted
            {
                tracing::error!("a fan-out thread cannot wait for events: {error}");
                thread::sleep(self.limits.frame_period);
            }
            for event in &events {
                if let Some(listener) = listeners.get_mut(event.token().0) {
                    listener.client_readable = true;
                }
            }
        }
    }

    /// Gives real-time up while the shard takes more than half of a core, and takes it back
    /// once it is light again: serving many listeners must not starve the rest of the server.
    fn keep_light(&self, duty: &mut Duty, realtime: &mut Option<Realtime>) {
        match duty.check(realtime.is_some()) {
            Some((false, busy)) => {
                *realtime = None;
                tracing::warn!(
                    "a fan-out thread was busy {:.0} % of the last second: it leaves real-time \
                     scheduling until it is under {:.0} %",
                    busy * 100.0,
                    realtime::LIGHT * 100.0
                );
            }
            Some((true, busy)) => {
                *realtime = Realtime::enter(Role::Fanout, &self.stats);
                if realtime.is_some() {
                    tracing::info!(
                        "a fan-out thread was busy {:.0} % of the last second: back to real-time",
                        busy * 100.0
                    );
                }
            }
            None => {}
        }
    }

    /// Waits, briefly, until every other shard with listeners has its round for the frames
    /// before `end` ready too, so that all start sending at once. A shard's first sends wake
    /// the clients; a client thread woken onto the core of a shard still preparing its round
    /// could take the core there, and all that shard's listeners waited for its time slice
    /// (1–3 ms at 1,000 listeners). Once sending, in the kernel, a shard is not preempted
    /// where the kernel does not preempt itself, as here. Measured at normal priority with
    /// 1,000 listeners and the load client on the same two cores: capture-to-receipt p99
    /// 27.2 → 26.1 ms, at no cost in CPU.
    fn send_together(&self, end: u64) {
        self.shared.prepared.fetch_max(end, Release);
        let ready = |peer: &Arc<ShardShared>| {
            peer.listeners.load(Relaxed) == 0 || peer.prepared.load(Acquire) >= end
        };
        let deadline = Instant::now() + TOGETHER_WAIT;
        while !self.peers.iter().all(ready) && Instant::now() < deadline {
            std::hint::spin_loop();
        }
    }

    /// Sends every listener what it has not had: all their writes at once. Returns how many
    /// listeners it was done with.
    fn serve(
        &mut self,
        listeners: &mut Slots,
        window: &Window,
        round: &Round,
        tally: &mut Tally,
    ) -> usize {
        let mut left = 0;
        // The turns and the queue are kept from round to round (empty) and filled in place.
        let mut turns = std::mem::take(&mut self.turns);
        let mut queue = std::mem::take(&mut self.queue);
        let mut count = 0;
        for slot in 0..listeners.slots.len() {
            let Some(listener) = listeners.get_mut(slot) else {
                continue;
            };
            if count == turns.len() {
                turns.push(Turn::default());
            }
            let turn = &mut turns[count];
            // Already clear, unless a panic in the last listener's turn left it half-filled.
            turn.clear();
            turn.first = queue.slices.len();
            let begun = guarded(|| listener.begin(window, round, tally, turn, &mut queue));
            match begun.unwrap_or(Begin::Done) {
                Begin::Write => {
                    turn.slot = slot;
                    count += 1;
                }
                Begin::Keep => {}
                Begin::Done => {
                    queue.truncate(turn.first);
                    self.dismiss(listeners, slot);
                    left += 1;
                }
            }
        }
        if count > 0 {
            self.send_together(window.end());
        }
        self.write(listeners, &turns[..count], &queue);
        let mut results = std::mem::take(&mut self.results);
        for (turn, written) in turns.iter_mut().zip(results.drain(..)) {
            let slot = turn.slot;
            let listener = listeners.get_mut(slot).expect("a listener with a turn");
            let finished = guarded(|| listener.finish(turn, &queue, written, window, round, tally));
            if !finished.unwrap_or(false) {
                self.dismiss(listeners, slot);
                left += 1;
            }
            turn.clear();
        }
        self.turns = turns;
        // Its slices point into this round's buffers: none is kept past it.
        queue.clear();
        self.queue = queue;
        self.results = results;
        left
    }

    /// Writes every turn, putting what each wrote in `results`: through the ring if there is
    /// one, else (or for what a failing ring left) with one `writev` each.
    fn write(&mut self, listeners: &Slots, turns: &[Turn], queue: &Queue) {
        let socket = |slot: usize| &listeners.slots[slot].as_ref().expect("a listener").socket;
        self.results.clear();
        #[cfg(target_os = "linux")]
        if let Some(ring) = &mut self.ring {
            use std::os::fd::AsRawFd;
            let writes = turns
                .iter()
                .map(|turn| (turn.slot, socket(turn.slot).as_raw_fd(), turn.slices(queue)));
            if let Err(error) = ring.write_each(writes, &mut self.results) {
                tracing::error!(
                    "a fan-out thread's io_uring failed ({error}); writing with writev"
                );
                self.ring = None;
            }
        }
        for turn in &turns[self.results.len()..] {
            self.results
                .push(socket(turn.slot).write_vectored(turn.slices(queue)));
        }
    }

    fn admit(&mut self, listeners: &mut Slots, listener: Listener) {
        let slot = listeners.insert(listener);
        let listener = listeners.get_mut(slot).expect("just inserted");
        if let Err(error) =
            self.poll
                .registry()
                .register(&mut listener.socket, Token(slot), Interest::READABLE)
        {
            tracing::error!("cannot watch a direct listener's connection: {error}");
            listeners.remove(slot);
            self.shared.listeners.fetch_sub(1, Relaxed);
            return;
        }
        #[cfg(target_os = "linux")]
        if let Some(ring) = &mut self.ring {
            use std::os::fd::AsRawFd;
            ring.register(slot, listener.socket.as_raw_fd());
        }
    }

    /// Takes the listener in `slot` out of the shard, to be ended or dropped (which closes its
    /// socket).
    fn dismiss(&mut self, listeners: &mut Slots, slot: usize) -> Option<Listener> {
        let mut listener = listeners.remove(slot)?;
        let _ = self.poll.registry().deregister(&mut listener.socket);
        #[cfg(target_os = "linux")]
        if let Some(ring) = &mut self.ring {
            ring.unregister(slot);
        }
        Some(listener)
    }
}

/// One direct listener: its socket and where it is in the stream.
struct Listener {
    socket: TcpStream,
    membership: Membership,
    encoding: DirectEncoding,
    chunked: bool,
    /// Window index of the next frame to send.
    next: u64,
    /// The unsent rest of what was begun (part of a chunk, the preamble, the final chunk):
    /// sent before anything else.
    pending: Vec<Bytes>,
    /// Frames still to send, with `frames=N`.
    remaining_frames: Option<u64>,
    /// The end of the stream has been queued (it is in `pending`, or was sent).
    ending: bool,
    /// Frames skipped that an NDJSON listener has not been told of yet.
    unreported_skips: u64,
    /// When the socket last took a byte or had nothing to take.
    last_progress: Instant,
    /// The poll said the client sent something or closed its side.
    client_readable: bool,
}

/// What the bytes of one write belong to.
#[derive(Clone, Copy)]
enum Piece {
    Pending(usize),
    Frame(u64),
    End,
}

/// A listener's write in a round: where its slices are in the round's [`Queue`], and what
/// they point into that the listener no longer holds.
#[derive(Default)]
struct Turn {
    /// The listener's slot.
    slot: usize,
    /// Its slices: `count` from `first`.
    first: usize,
    count: usize,
    /// What was pending before this write: its first slices.
    pending: Vec<Bytes>,
    /// The write ends the stream.
    ends: bool,
}

impl Turn {
    fn slices<'q>(&self, queue: &'q Queue) -> &'q [IoSlice<'static>] {
        &queue.slices[self.first..self.first + self.count]
    }

    fn pieces<'q>(&self, queue: &'q Queue) -> &'q [Piece] {
        &queue.pieces[self.first..self.first + self.count]
    }

    /// Lets go of what the turn pointed into, for the next round.
    fn clear(&mut self) {
        self.count = 0;
        self.pending.clear();
    }
}

/// The slices of all a round's writes, one listener's after another, and what each is. Apart
/// from the turns, so that preparing a round touches a few small turns' cache lines per
/// listener: with its slices in each (600 bytes), that took most of a round's own time
/// (at 510 listeners per shard, p50 266 µs before the first send).
#[derive(Default)]
struct Queue {
    /// Into the turns' `pending`, the round's window and statics (see [`Listener::begin`]),
    /// valid only within the round.
    slices: Vec<IoSlice<'static>>,
    pieces: Vec<Piece>,
}

impl Queue {
    fn clear(&mut self) {
        self.truncate(0);
    }

    fn truncate(&mut self, len: usize) {
        self.slices.truncate(len);
        self.pieces.truncate(len);
    }
}

/// What a listener's turn in a round comes to.
enum Begin {
    /// The turn has slices to write.
    Write,
    /// Nothing to write now.
    Keep,
    /// Done with: the stream ended or the client went away.
    Done,
}

impl Listener {
    fn new(socket: TcpStream, chunked: bool, stream: DirectStream, start: u64) -> Listener {
        let DirectStream {
            membership,
            encoding,
            preamble,
            frames,
        } = stream;
        let pending = preamble
            .map(|preamble| {
                if chunked {
                    encode::http_chunk(&preamble)
                } else {
                    preamble
                }
            })
            .into_iter()
            .collect();
        Listener {
            socket,
            membership,
            encoding,
            chunked,
            next: start,
            pending,
            remaining_frames: frames,
            ending: false,
            unreported_skips: 0,
            last_progress: Instant::now(),
            client_readable: false,
        }
    }

    fn has_unsent(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Begins the listener's turn in a round: what it has not had, to be written by the
    /// shard (and then [`Listener::finish`]ed), or nothing to write.
    fn begin(
        &mut self,
        window: &Window,
        round: &Round,
        tally: &mut Tally,
        turn: &mut Turn,
        queue: &mut Queue,
    ) -> Begin {
        if self.client_readable && !self.read_client() {
            self.end_now(tally);
            return Begin::Done;
        }
        let end = window.end();
        let oldest = end.saturating_sub(round.backlog_frames).max(window.first);
        if self.next < oldest && !self.ending {
            self.skip(oldest, window, tally);
        }
        if !self.ending {
            self.report_skips(window);
        }
        // Skips not yet reported wait for the pending piece to go out, so that the line that
        // reports them is the next one.
        let frames = if self.ending || self.unreported_skips > 0 {
            0
        } else {
            let due = (end - self.next).min(MAX_FRAMES_PER_WRITE as u64);
            self.remaining_frames
                .map_or(due, |remaining| due.min(remaining))
        };
        let ends = !self.ending
            && (self.remaining_frames == Some(frames) || round.closed && self.next + frames == end);

        turn.pending = std::mem::take(&mut self.pending);
        turn.ends = ends;
        let queued = turn
            .pending
            .iter()
            .enumerate()
            .map(|(i, bytes)| (&bytes[..], Piece::Pending(i)))
            .chain((self.next..self.next + frames).map(|index| {
                let bytes = self.frame_bytes(window.get(index));
                (&bytes[..], Piece::Frame(index))
            }))
            .chain((ends && self.chunked).then_some((encode::LAST_CHUNK, Piece::End)));
        for (bytes, piece) in queued {
            // SAFETY: the bytes are the pending pieces the turn owns (whose heap buffers do not
            // move with them), the frames of the round's window or a static: all outlive the
            // turn, which the shard finishes within the round.
            queue
                .slices
                .push(IoSlice::new(unsafe { &*std::ptr::from_ref(bytes) }));
            queue.pieces.push(piece);
            turn.count += 1;
        }
        if turn.count > 0 {
            return Begin::Write;
        }
        self.last_progress = round.now;
        if self.ending || ends {
            self.close_gracefully();
            return Begin::Done;
        }
        Begin::Keep
    }

    /// Ends the listener's turn with what the write of its slices did. Returns false when it
    /// is done with: its stream ended, its client went away or it stalled.
    fn finish(
        &mut self,
        turn: &Turn,
        queue: &Queue,
        written: io::Result<usize>,
        window: &Window,
        round: &Round,
        tally: &mut Tally,
    ) -> bool {
        let written = match written {
            Ok(written) => written,
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                0
            }
            Err(error) => {
                tracing::debug!("a direct listener went away: {error}");
                return false;
            }
        };
        tally.bytes[self.membership.endpoint() as usize] += written as u64;
        if written > 0 {
            self.last_progress = round.now;
        }
        self.settle(written, turn, queue, window);
        if self.ending && self.pending.is_empty() {
            self.close_gracefully();
            return false;
        }
        if round.now.duration_since(self.last_progress) > round.stall_limit {
            tracing::debug!(
                "dropping a direct listener whose socket took nothing for {:?}",
                round.stall_limit
            );
            tally.dropped += 1;
            // Reset, so that the kernel frees the unsent bytes now.
            let _ = SockRef::from(&self.socket).set_linger(Some(Duration::ZERO));
            return false;
        }
        true
    }

    /// Reads (and drops) what the client sent. False once the client has shut down its side of
    /// the connection, or it failed: the stream is over.
    fn read_client(&mut self) -> bool {
        let mut scrap = [0; 1024];
        for _ in 0..MAX_READS {
            match (&self.socket).read(&mut scrap) {
                Ok(0) => return false,
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.client_readable = false;
                    return true;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }

    fn frame_bytes<'w>(&self, frame: &'w Frame) -> &'w Bytes {
        match (self.encoding, self.chunked) {
            (DirectEncoding::Pcm(format), true) => frame.pcm_chunk(format),
            (DirectEncoding::Pcm(format), false) => frame.pcm(format),
            (DirectEncoding::Ndjson, true) => frame.json_chunk(),
            (DirectEncoding::Ndjson, false) => frame.json_line(),
        }
    }

    /// Skips to frame `to`: always, if the listener's next frame has left the window;
    /// otherwise only between writes, so that a skip never interleaves with a piece begun.
    fn skip(&mut self, to: u64, window: &Window, tally: &mut Tally) {
        if self.pending.is_empty() || self.next < window.first {
            tally.skipped += to - self.next;
            if let DirectEncoding::Ndjson = self.encoding {
                self.unreported_skips += to - self.next;
            }
            self.next = to;
        }
    }

    /// An NDJSON listener's first line after a skip says how many frames it missed: a copy of
    /// the line, queued as pending.
    fn report_skips(&mut self, window: &Window) {
        let DirectEncoding::Ndjson = self.encoding else {
            return;
        };
        if self.unreported_skips == 0
            || !self.pending.is_empty()
            || self.next == window.end()
            || self.remaining_frames == Some(0)
        {
            return;
        }
        let line = encode::with_skipped(window.get(self.next).json_line(), self.unreported_skips);
        self.pending.push(if self.chunked {
            encode::http_chunk(&line)
        } else {
            line
        });
        self.unreported_skips = 0;
        self.next += 1;
        if let Some(remaining) = self.remaining_frames.as_mut() {
            *remaining -= 1;
        }
    }

    /// Accounts for a write of the first `written` bytes of the turn's slices: what was begun
    /// and not finished becomes `pending`; frames not begun stay to be sent.
    fn settle(&mut self, mut written: usize, turn: &Turn, queue: &Queue, window: &Window) {
        let mut pending = Vec::new();
        let mut next = self.next;
        let mut all_sent = true;
        for (slice, piece) in turn.slices(queue).iter().zip(turn.pieces(queue)) {
            let len = slice.len();
            if written >= len {
                written -= len;
                if let Piece::Frame(index) = piece {
                    next = index + 1;
                }
                continue;
            }
            all_sent = false;
            // Begun: its rest must go out before anything else. Not begun: a pending piece
            // stays pending, a frame stays unsent, the final chunk is queued again.
            let begun = written > 0;
            match *piece {
                Piece::Pending(i) => pending.push(turn.pending[i].slice(written..)),
                Piece::Frame(index) if begun => {
                    pending.push(self.frame_bytes(window.get(index)).slice(written..));
                    next = index + 1;
                }
                Piece::End if begun => {
                    pending.push(Bytes::from_static(&encode::LAST_CHUNK[written..]));
                    self.ending = true;
                }
                Piece::Frame(_) | Piece::End => break,
            }
            written = 0;
            if !matches!(piece, Piece::Pending(_)) {
                break;
            }
        }
        if all_sent && turn.ends {
            self.ending = true;
        }
        if let Some(remaining) = self.remaining_frames.as_mut() {
            *remaining -= next - self.next;
        }
        self.next = next;
        self.pending = pending;
    }

    /// Shutdown: finishes the stream now, as far as the socket takes it without waiting.
    fn end_now(&mut self, tally: &mut Tally) {
        let mut slices = [IoSlice::new(&[]); MAX_PENDING + 1];
        let mut count = 0;
        for bytes in &self.pending {
            slices[count] = IoSlice::new(bytes);
            count += 1;
        }
        if self.chunked && !self.ending {
            slices[count] = IoSlice::new(encode::LAST_CHUNK);
            count += 1;
        }
        if let Ok(written) = (&self.socket).write_vectored(&slices[..count]) {
            tally.bytes[self.membership.endpoint() as usize] += written as u64;
        }
        self.close_gracefully();
    }

    /// Sends FIN after what is queued; the socket closes when the listener drops.
    fn close_gracefully(&self) {
        let _ = self.socket.shutdown(Shutdown::Write);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::{TcpListener, TcpStream as StdStream};
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;
    use crate::frame::StreamFormat;
    use crate::hub::{self, HubLimits};

    const FORMAT: StreamFormat = StreamFormat {
        rate_hz: 48_000,
        channels: 2,
    };

    /// A frame whose samples all say which frame it is.
    fn frame(seq: u64) -> Arc<Frame> {
        let samples = vec![seq as f32; 2 * 500].into_boxed_slice();
        Arc::new(Frame::new(seq, seq * 500, 0.0, FORMAT, samples))
    }

    /// A fan-out serving one f32 PCM listener (chunked, starting with the next frame published,
    /// ending after `frames` if given): the client side of its connection, which has a small
    /// receive buffer and reads with a 10 s timeout.
    fn setup(
        backlog_frames: usize,
        frame_period: Duration,
        io_uring: bool,
        preamble: Option<&'static [u8]>,
        frames: Option<u64>,
    ) -> (Fanout, StdStream, Arc<Stats>) {
        let stats = Arc::new(Stats::default());
        let limits = FanoutLimits {
            backlog_frames,
            burst_frames: 0,
            frame_period,
        };
        let fanout = Fanout::start_writing(limits, stats.clone(), io_uring, false).unwrap();
        let (publisher, hub) = hub::hub(
            HubLimits {
                backlog_frames,
                burst_frames: 0,
                max_listeners: None,
            },
            stats.clone(),
        );
        let membership = hub.join(Endpoint::Pcm).unwrap();
        // The hub stays open as long as the test runs: its publisher is leaked on purpose.
        std::mem::forget(publisher);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        client.set_recv_buffer_size(4096).unwrap();
        client
            .connect(&listener.local_addr().unwrap().into())
            .unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (server, _) = listener.accept().unwrap();
        let stream = DirectStream {
            membership,
            encoding: DirectEncoding::Pcm(PcmFormat::F32le),
            preamble: preamble.map(Bytes::from_static),
            frames,
        };
        fanout.add(server, true, stream, fanout.position()).unwrap();
        (fanout, client.into(), stats)
    }

    /// The f32 PCM of frames `0..frames`, one after another.
    fn pcm_of(frames: u64) -> Vec<u8> {
        (0..frames)
            .flat_map(|seq| frame(seq).pcm(PcmFormat::F32le).to_vec())
            .collect()
    }

    /// Decodes a chunked body; panics on a malformed one or one without the last chunk.
    fn dechunk(mut body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let line_end = body
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("the stream ends with the last chunk");
            let size = usize::from_str_radix(std::str::from_utf8(&body[..line_end]).unwrap(), 16)
                .expect("a chunk size");
            body = &body[line_end + 2..];
            if size == 0 {
                assert_eq!(body, b"\r\n", "nothing after the last chunk");
                return out;
            }
            out.extend_from_slice(&body[..size]);
            assert_eq!(&body[size..size + 2], b"\r\n", "a chunk ends in CRLF");
            body = &body[size + 2..];
        }
    }

    #[test]
    fn partial_writes_keep_every_chunk_whole_and_every_frame_in_order() {
        partial_writes_keep_chunks_whole(true);
    }

    #[test]
    fn partial_writes_keep_every_chunk_whole_without_io_uring() {
        partial_writes_keep_chunks_whole(false);
    }

    fn partial_writes_keep_chunks_whole(io_uring: bool) {
        const FRAMES: u64 = 300;
        let (fanout, mut client, stats) = setup(
            10_000,
            Duration::from_millis(1),
            io_uring,
            Some(b"HEADER"),
            Some(FRAMES),
        );
        // Published far faster than the client reads: the socket takes most frames in pieces.
        let publisher = {
            let fanout = fanout.clone();
            thread::spawn(move || {
                for seq in 0..FRAMES + 10 {
                    fanout.publish(&frame(seq));
                    thread::sleep(Duration::from_micros(200));
                }
            })
        };
        let mut body = Vec::new();
        let mut buffer = [0; 1500];
        loop {
            let read = client.read(&mut buffer).unwrap();
            if read == 0 {
                break;
            }
            body.extend_from_slice(&buffer[..read]);
            thread::sleep(Duration::from_micros(300));
        }
        publisher.join().unwrap();
        let data = dechunk(&body);
        let (header, samples) = data.split_at(6);
        assert_eq!(header, b"HEADER");
        assert!(samples == pcm_of(FRAMES), "every frame, whole and in order");
        assert_eq!(stats.listeners_dropped.load(Relaxed), 0);
        fanout.stop();
        fanout.join();
    }

    #[test]
    fn a_listener_far_behind_when_the_source_ends_still_gets_every_frame() {
        behind_at_the_end_gets_every_frame(true);
    }

    #[test]
    fn a_listener_far_behind_at_the_end_gets_every_frame_without_io_uring() {
        behind_at_the_end_gets_every_frame(false);
    }

    /// Frames published all at once, far more than one write takes and than the socket holds,
    /// and then the end: no frame comes after it to wake the shard, which must go on by itself.
    fn behind_at_the_end_gets_every_frame(io_uring: bool) {
        const FRAMES: u64 = 200;
        let (fanout, mut client, _stats) =
            setup(10_000, Duration::from_millis(1), io_uring, None, None);
        for seq in 0..FRAMES {
            fanout.publish(&frame(seq));
        }
        fanout.close();
        let mut body = Vec::new();
        client
            .read_to_end(&mut body)
            .expect("the stream ends within 10 s");
        let data = dechunk(&body);
        let expected = pcm_of(FRAMES);
        assert_eq!(data.len(), expected.len(), "every frame");
        assert!(data == expected, "every frame, in order");
        fanout.stop();
        fanout.join();
    }

    #[test]
    fn a_listener_whose_socket_takes_nothing_is_dropped_and_counted() {
        stalled_listener_is_dropped(true);
    }

    #[test]
    fn a_stalled_listener_is_dropped_without_io_uring() {
        stalled_listener_is_dropped(false);
    }

    fn stalled_listener_is_dropped(io_uring: bool) {
        let period = Duration::from_millis(2);
        let backlog = 20;
        let (fanout, mut client, stats) = setup(backlog, period, io_uring, None, None);
        let started = Instant::now();
        let mut seq = 0;
        while stats.listeners_current.load(Relaxed) > 0 {
            assert!(started.elapsed() < Duration::from_secs(10), "never dropped");
            fanout.publish(&frame(seq));
            seq += 1;
            thread::sleep(period);
        }
        assert_eq!(stats.listeners_dropped.load(Relaxed), 1);
        assert_eq!(fanout.listeners(), 0);
        // The client sees the reset once it reads past what was buffered.
        let mut buffer = [0; 64 * 1024];
        let error = loop {
            match client.read(&mut buffer) {
                Ok(0) => panic!("closed without a reset"),
                Ok(_) => {}
                Err(error) => break error,
            }
        };
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
        fanout.stop();
        fanout.join();
    }
}
