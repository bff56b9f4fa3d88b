//! Giving freed heap memory back to the operating system, and large allocations pages of
//! their own.
//!
//! Filling the caches (the initial lists, tens of thousands of objects decoded and copied) and a
//! term's first reconcile of every task allocate far more than stays in use. glibc's malloc
//! keeps what is freed inside its arenas, so without a trim the process keeps the resident
//! size of its busiest moment for good.

#![allow(unsafe_code)]

use std::time::Duration;

/// Allocations at least this large get pages of their own, returned when freed.
pub const MMAP_THRESHOLD: usize = 128 * 1024;

/// Fixes malloc's threshold for serving an allocation from its own pages at
/// [`MMAP_THRESHOLD`] (glibc; a no-op with other C libraries). By default glibc raises the
/// threshold each time such an allocation is freed, so after the first large list response
/// or hash-table resize, later ones are carved from the heap and leave it fragmented around
/// the small objects that outlive them. Call once, before the caches fill.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` takes two integers and only changes the allocator's own settings.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
    }
}

/// How often [`release_periodically`] trims.
pub const RELEASE_INTERVAL: Duration = Duration::from_secs(30);

/// Returns the free pages of every malloc arena to the operating system (glibc; a no-op with
/// other C libraries).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` takes no pointers; it walks the allocator's own free lists under
    // the allocator's locks and only releases pages no allocation uses.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Trims every `every`, for the life of the process (run it as a background part).
pub async fn release_periodically(every: Duration) -> Result<(), String> {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        release_free_memory();
    }
}
