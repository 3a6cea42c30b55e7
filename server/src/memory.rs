//! Giving memory back to the system after a burst.
//!
//! glibc's allocator keeps the pages a burst freed: after an overload (every device with an
//! update in flight, docs/BENCHMARKS.md run N) the server's RSS stayed at the burst's peak
//! for the rest of its life, though most of it was free inside the heap. Every
//! [`CHECK_PERIOD`] the keeper compares what the allocator holds free with what is in use,
//! and when a burst has left more free than used and the resident set has grown by
//! [`TRIM_ABOVE`] since the last trim, returns the free pages with `malloc_trim` (which
//! also releases pages in the middle of the heap, not only at its top). The trim walks the
//! heap with its arenas locked, tens of milliseconds after a burst of 19,000 devices
//! (docs/BENCHMARKS.md, run R), so it runs once per burst, not on every check.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How often the keeper looks.
pub const CHECK_PERIOD: Duration = Duration::from_secs(10);

/// Growth of the resident set since the last trim below which nothing is done: trimming
/// less would cost more in page faults when the next burst comes than it returns.
pub const TRIM_ABOVE: usize = 64 << 20;

/// Checks now and then for the life of the process.
pub async fn keeper() {
    let mut ticks = tokio::time::interval(CHECK_PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The resident set after the last trim; none yet.
    let mut floor = 0;
    loop {
        ticks.tick().await;
        match tokio::task::spawn_blocking(move || trim_if_worth_it(floor)).await {
            Ok(Some(after)) => floor = after,
            Ok(None) => {}
            Err(_) => return,
        }
    }
}

/// Whether a trim is worth it: a burst left more free in the heap than is used, and the
/// resident set grew by [`TRIM_ABOVE`] since the last trim (`floor`). The second half
/// keeps the keeper from walking the heap again and again for pages already returned
/// (the allocator still counts them free).
pub fn worth_trimming(heap: Heap, rss: usize, floor: usize) -> bool {
    heap.free >= TRIM_ABOVE && heap.free >= heap.used && rss >= floor.saturating_add(TRIM_ABOVE)
}

/// The heap as the last check saw it (`usize::MAX` before the first), trims so far and
/// what they returned, for `/healthz`: reading the allocator's statistics locks its
/// arenas, which a monitor polling `/healthz` should not do to the device path.
static LAST_USED: AtomicUsize = AtomicUsize::new(usize::MAX);
static LAST_FREE: AtomicUsize = AtomicUsize::new(usize::MAX);
static TRIMS: AtomicU64 = AtomicU64::new(0);
static RETURNED: AtomicU64 = AtomicU64::new(0);

/// The process's memory, as `/healthz` reports it under `memory`.
#[derive(Clone, Copy, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Snapshot {
    /// Resident set of the process now, in bytes.
    pub rss_bytes: Option<u64>,
    /// Heap in use at the keeper's last check, in bytes (null before it, or off glibc).
    pub heap_used_bytes: Option<u64>,
    /// Heap free but held at the last check, in bytes.
    pub heap_free_bytes: Option<u64>,
    /// Times free heap memory was given back to the system since the start.
    pub trims: u64,
    /// Resident memory those trims gave back, in bytes.
    pub returned_bytes: u64,
}

/// What `/healthz` reports about memory; cheap (one read of `/proc/self/statm`).
pub fn snapshot() -> Snapshot {
    let checked = |figure: &AtomicUsize| {
        let bytes = figure.load(Ordering::Relaxed);
        (bytes != usize::MAX).then_some(bytes as u64)
    };
    Snapshot {
        rss_bytes: rss_bytes().map(|bytes| bytes as u64),
        heap_used_bytes: checked(&LAST_USED),
        heap_free_bytes: checked(&LAST_FREE),
        trims: TRIMS.load(Ordering::Relaxed),
        returned_bytes: RETURNED.load(Ordering::Relaxed),
    }
}

/// One check: trims when [`worth_trimming`] says so and returns the resident set after.
pub fn trim_if_worth_it(floor: usize) -> Option<usize> {
    let heap = Heap::now()?;
    LAST_USED.store(heap.used, Ordering::Relaxed);
    LAST_FREE.store(heap.free, Ordering::Relaxed);
    let before = rss_bytes()?;
    if !worth_trimming(heap, before, floor) {
        return None;
    }
    let started = Instant::now();
    trim();
    let after = rss_bytes()?;
    TRIMS.fetch_add(1, Ordering::Relaxed);
    RETURNED.fetch_add(before.saturating_sub(after) as u64, Ordering::Relaxed);
    tracing::info!(
        free_mib = heap.free >> 20,
        used_mib = heap.used >> 20,
        rss_before_mib = before >> 20,
        rss_after_mib = after >> 20,
        took_ms = started.elapsed().as_secs_f64() * 1000.0,
        "returned free heap memory to the system"
    );
    Some(after)
}

/// What the allocator holds, in bytes, over all arenas.
#[derive(Clone, Copy, Debug)]
pub struct Heap {
    /// In use, including blocks mapped on their own.
    pub used: usize,
    /// Free inside the heap (whether or not its pages were returned).
    pub free: usize,
}

impl Heap {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    pub fn now() -> Option<Self> {
        // SAFETY: mallinfo2 only reads the allocator's own statistics.
        let info = unsafe { libc::mallinfo2() };
        Some(Self {
            used: info.uordblks + info.hblkhd,
            free: info.fordblks,
        })
    }

    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    pub fn now() -> Option<Self> {
        None
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim takes the allocator's own locks and changes no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

/// The process's resident set, from `/proc/self/statm` (none off Linux).
#[cfg(not(target_os = "linux"))]
pub fn rss_bytes() -> Option<usize> {
    None
}

/// The process's resident set, from `/proc/self/statm`.
#[cfg(target_os = "linux")]
pub fn rss_bytes() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * usize::try_from(page).ok().filter(|&p| p > 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn a_burst_is_trimmed_once_not_on_every_check() {
        let after_burst = Heap {
            used: 45 * MIB,
            free: 290 * MIB,
        };
        assert!(worth_trimming(after_burst, 354 * MIB, 0));
        // The pages went back, the allocator still counts them free: no second walk.
        assert!(!worth_trimming(after_burst, 121 * MIB, 121 * MIB));
        // A new burst grows the resident set again.
        assert!(worth_trimming(after_burst, 200 * MIB, 121 * MIB));
    }

    #[test]
    fn a_busy_or_small_heap_is_left_alone() {
        let busy = Heap {
            used: 300 * MIB,
            free: 100 * MIB,
        };
        assert!(!worth_trimming(busy, 400 * MIB, 0));
        let small = Heap {
            used: 10 * MIB,
            free: 40 * MIB,
        };
        assert!(!worth_trimming(small, 60 * MIB, 0));
    }

    /// The real allocator: memory freed below a live allocation stays resident until the
    /// keeper trims it.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_trim_returns_memory_freed_under_a_live_allocation() {
        let burst: Vec<Box<[u8; 2048]>> = (0..100_000).map(|_| Box::new([1u8; 2048])).collect();
        // Allocated after the burst, so the freed blocks are not at the heap's top.
        let pin = Box::new([1u8; 2048]);
        let peak = rss_bytes().unwrap();
        drop(burst);
        let before = rss_bytes().unwrap();
        assert!(
            before + 100 * MIB > peak,
            "free() alone returned the burst: {peak} -> {before}"
        );
        let trims = snapshot().trims;
        let after = trim_if_worth_it(0).unwrap_or_else(|| rss_bytes().unwrap());
        let seen = snapshot();
        assert_eq!(seen.trims, trims + 1, "the trim was not counted");
        assert!(seen
            .heap_free_bytes
            .is_some_and(|free| free >= 100 * MIB as u64));
        assert!(
            after + 100 * MIB <= before,
            "resident set {} MiB before the trim, {} MiB after",
            before / MIB,
            after / MIB
        );
        drop(pin);
    }
}
