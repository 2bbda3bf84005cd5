//! Counters and gauges shared by every stage, read by `/status` (and later `/metrics`).
//! Everything is an atomic so that any stage, including real-time code, can update it without
//! a lock; readers see each value on its own, not a consistent snapshot of all of them.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::frame::Level;

/// What the source is doing, as reported by `/status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SourceState {
    /// Opened; no frame yet.
    Starting = 0,
    /// Delivering frames.
    Running = 1,
    /// A non-looping file reached its end; no more frames will come.
    Ended = 2,
    /// Shut down on request.
    Stopped = 3,
    /// The capture device failed; it is being reopened.
    Reconnecting = 4,
}

impl SourceState {
    pub const ALL: [SourceState; 5] = [
        SourceState::Starting,
        SourceState::Running,
        SourceState::Ended,
        SourceState::Stopped,
        SourceState::Reconnecting,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SourceState::Starting => "starting",
            SourceState::Running => "running",
            SourceState::Ended => "ended",
            SourceState::Stopped => "stopped",
            SourceState::Reconnecting => "reconnecting",
        }
    }

    fn from_u8(value: u8) -> SourceState {
        match value {
            1 => SourceState::Running,
            2 => SourceState::Ended,
            3 => SourceState::Stopped,
            4 => SourceState::Reconnecting,
            _ => SourceState::Starting,
        }
    }
}

const NEVER: u64 = u64::MAX;

/// The stream endpoints, each with its own listener counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Pcm = 0,
    Wav = 1,
    Ndjson = 2,
    Events = 3,
    Ws = 4,
    Opus = 5,
    Flac = 6,
}

impl Endpoint {
    pub const ALL: [Endpoint; 7] = [
        Endpoint::Pcm,
        Endpoint::Wav,
        Endpoint::Ndjson,
        Endpoint::Events,
        Endpoint::Ws,
        Endpoint::Opus,
        Endpoint::Flac,
    ];

    /// The endpoints served by an encoder of their own (see [`crate::codec`]).
    pub const ENCODED: [Endpoint; 2] = [Endpoint::Opus, Endpoint::Flac];

    /// The name used in `/status` and as the `endpoint` label in `/metrics`.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Pcm => "pcm",
            Endpoint::Wav => "wav",
            Endpoint::Ndjson => "ndjson",
            Endpoint::Events => "events",
            Endpoint::Ws => "ws",
            Endpoint::Opus => "opus",
            Endpoint::Flac => "flac",
        }
    }
}

/// Listener counts and bytes sent of one endpoint.
#[derive(Default)]
pub struct EndpointStats {
    pub listeners_current: AtomicU64,
    pub listeners_peak: AtomicU64,
    pub listeners_total: AtomicU64,
    /// Body bytes handed to the HTTP layer for this endpoint's listeners.
    pub bytes_sent: AtomicU64,
    /// Encoded endpoints only: CPU time their encoders used, the audio they encoded (source
    /// samples per channel), times an encoder failed, and pages listeners missed because they
    /// fell behind.
    pub encoder_cpu_ns: AtomicU64,
    pub encoded_source_samples: AtomicU64,
    pub encoder_faults: AtomicU64,
    pub pages_skipped: AtomicU64,
}

pub struct Stats {
    started: Instant,
    pub frames_produced: AtomicU64,
    /// Samples the source could not push because the ring was full.
    pub samples_dropped: AtomicU64,
    /// Frames listeners missed because they fell more than the backlog behind, all listeners.
    pub frames_skipped: AtomicU64,
    pub listeners_current: AtomicU64,
    pub listeners_peak: AtomicU64,
    pub listeners_total: AtomicU64,
    /// Listeners dropped because their connection took nothing for as long as the backlog.
    pub listeners_dropped: AtomicU64,
    /// Threads of the audio path running real-time now ([`crate::realtime`]).
    pub realtime_threads: AtomicU64,
    endpoints: [EndpointStats; Endpoint::ALL.len()],
    source_state: AtomicU8,
    /// Nanoseconds after `started` at which the last frame was published, or `NEVER`.
    last_frame_ns: AtomicU64,
    level_rms_bits: AtomicU32,
    level_peak_bits: AtomicU32,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: Instant::now(),
            frames_produced: AtomicU64::new(0),
            samples_dropped: AtomicU64::new(0),
            frames_skipped: AtomicU64::new(0),
            listeners_current: AtomicU64::new(0),
            listeners_peak: AtomicU64::new(0),
            listeners_total: AtomicU64::new(0),
            listeners_dropped: AtomicU64::new(0),
            realtime_threads: AtomicU64::new(0),
            endpoints: Default::default(),
            source_state: AtomicU8::new(SourceState::Starting as u8),
            last_frame_ns: AtomicU64::new(NEVER),
            level_rms_bits: AtomicU32::new(0),
            level_peak_bits: AtomicU32::new(0),
        }
    }
}

impl Stats {
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn source_state(&self) -> SourceState {
        SourceState::from_u8(self.source_state.load(Relaxed))
    }

    pub fn set_source_state(&self, state: SourceState) {
        self.source_state.store(state as u8, Relaxed);
    }

    /// Records a published frame: count, time and level.
    pub fn frame_published(&self, level: Level) {
        self.frames_produced.fetch_add(1, Relaxed);
        let now_ns = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(NEVER - 1);
        self.last_frame_ns.store(now_ns, Relaxed);
        self.level_rms_bits.store(level.rms.to_bits(), Relaxed);
        self.level_peak_bits.store(level.peak.to_bits(), Relaxed);
    }

    /// Time since the last frame was published; `None` before the first.
    pub fn since_last_frame(&self) -> Option<Duration> {
        match self.last_frame_ns.load(Relaxed) {
            NEVER => None,
            ns => Some(
                self.started
                    .elapsed()
                    .saturating_sub(Duration::from_nanos(ns)),
            ),
        }
    }

    pub fn last_level(&self) -> Level {
        Level {
            rms: f32::from_bits(self.level_rms_bits.load(Relaxed)),
            peak: f32::from_bits(self.level_peak_bits.load(Relaxed)),
        }
    }

    pub fn endpoint(&self, endpoint: Endpoint) -> &EndpointStats {
        &self.endpoints[endpoint as usize]
    }

    /// Counts a new listener of `endpoint`, unless `max_listeners` are already connected (all
    /// endpoints together); then returns false and counts nothing.
    pub fn try_join(&self, endpoint: Endpoint, max_listeners: Option<u64>) -> bool {
        let limit = max_listeners.unwrap_or(u64::MAX);
        let joined = self
            .listeners_current
            .fetch_update(Relaxed, Relaxed, |n| (n < limit).then_some(n + 1));
        let Ok(before) = joined else { return false };
        self.listeners_peak.fetch_max(before + 1, Relaxed);
        self.listeners_total.fetch_add(1, Relaxed);
        let stats = self.endpoint(endpoint);
        let current = stats.listeners_current.fetch_add(1, Relaxed) + 1;
        stats.listeners_peak.fetch_max(current, Relaxed);
        stats.listeners_total.fetch_add(1, Relaxed);
        true
    }

    pub fn listener_left(&self, endpoint: Endpoint) {
        self.listeners_current.fetch_sub(1, Relaxed);
        self.endpoint(endpoint)
            .listeners_current
            .fetch_sub(1, Relaxed);
    }
}
