//! glibc's allocator, tuned for long runs with a thread pool.
//!
//! By default glibc gives each thread that contends for the heap an arena of its own (up to 8
//! per core) and keeps what is freed in each for that thread. A `migrate` of 3 000 small
//! images (60 batches of the same work) grew to 249 MiB peak with the default; with two
//! arenas it stays at 136 MiB from the 40th batch on. The 20-image corpus batch peaked at 130
//! vs 90 MiB, in the same time. The
//! pipeline's large buffers are its own (see `ingest::pipeline::budget`), so few arenas cost
//! little contention.

/// At most two malloc arenas, unless `MALLOC_ARENA_MAX` says otherwise.
pub fn limit_arenas() {
    #[cfg(target_env = "gnu")]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: called first thing in `main`, before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
