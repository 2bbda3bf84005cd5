//! The capture data callback is real-time code: this test binary counts every heap allocation
//! with a global allocator and drives the callback's whole body (convert, push into the ring,
//! count) many times, for every sample type, with the ring both draining and full.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use pcmcast::ring;
use pcmcast::source::capture::{Activity, on_input};
use pcmcast::source::convert::CaptureSample;
use pcmcast::stats::Stats;
use ringbuf::traits::Consumer;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set on the thread under test only: the test harness's own threads allocate as they like.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if COUNTING.with(Cell::get) {
        ALLOCATIONS.fetch_add(1, Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made while driving the callback with `buffer` 10,000 times (the pops that drain
/// the ring are counted too; they do not allocate either).
fn allocations_in_callback<S: CaptureSample>(buffer: &[S]) -> u64 {
    let stats = Arc::new(Stats::default());
    let (parts, mut consumer) = ring::ring(buffer.len() * 8);
    let mut writer = parts.into_writer(std::thread::current(), stats.clone());
    let activity = Activity::default();
    let mut drained = vec![0.0f32; buffer.len() * 8];

    let before = ALLOCATIONS.load(Relaxed);
    COUNTING.with(|c| c.set(true));
    for round in 0..10_000 {
        on_input(&mut writer, &activity, buffer);
        // Drain only now and then, so that most calls also take the ring-full path.
        if round % 16 == 0 {
            consumer.pop_slice(&mut drained);
        }
    }
    COUNTING.with(|c| c.set(false));
    let after = ALLOCATIONS.load(Relaxed);

    assert_eq!(activity.callbacks.load(Relaxed), 10_000);
    assert!(
        stats.samples_dropped.load(Relaxed) > 0,
        "the full-ring path was exercised"
    );
    after - before
}

#[test]
fn the_capture_callback_never_allocates() {
    let counts = [
        ("i8", allocations_in_callback(&[i8::MIN; 480])),
        ("i16", allocations_in_callback(&[1234i16; 480])),
        (
            "i24",
            allocations_in_callback(&[cpal::I24::new(-5).unwrap(); 480]),
        ),
        ("i32", allocations_in_callback(&[i32::MAX; 480])),
        ("i64", allocations_in_callback(&[7i64; 480])),
        ("u8", allocations_in_callback(&[200u8; 480])),
        ("u16", allocations_in_callback(&[1u16; 480])),
        (
            "u24",
            allocations_in_callback(&[cpal::U24::new(9).unwrap(); 480]),
        ),
        ("u32", allocations_in_callback(&[3u32; 480])),
        ("u64", allocations_in_callback(&[3u64; 480])),
        ("f32", allocations_in_callback(&[0.25f32; 480])),
        ("f64", allocations_in_callback(&[-0.5f64; 480])),
    ];
    for (format, count) in counts {
        assert_eq!(
            count, 0,
            "{format}: {count} allocations in 10,000 callbacks"
        );
    }
}
