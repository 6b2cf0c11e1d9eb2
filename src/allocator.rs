//! Tuning of the C allocator for a long-running process whose heap is small but spikes
//! (thousands of hook runs at once after a mass outage).

/// glibc gives each thread that meets contention an arena of its own, each holding on
/// to freed memory; for a process whose few threads share one small heap, one arena
/// keeps the resident set flat. Call before any thread starts.
///
/// Blocks of 128 KiB and more (a `/status` document or a metrics page at thousands of
/// targets) are always mapped on their own and unmapped when freed. glibc would
/// otherwise raise that threshold to the size of the largest block freed so far, and
/// from then on serve such blocks from the heap, where a burst's small blocks around
/// them keep the pages resident after they are freed.
pub fn limit_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only tunes the allocator, and no other thread runs yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Hands freed heap memory back to the kernel. glibc keeps what a burst freed unless
/// it sits at the very top of the heap, so the resident set would stay at its peak
/// long after the burst: called when a burst of work is over.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim is thread-safe and only returns free pages.
    unsafe {
        libc::malloc_trim(0);
    }
}
