//! glibc's allocator, tuned for long runs with a thread pool.
//!
//! By default glibc gives each thread that contends for the heap an arena of its own (up to 8
//! per core) and keeps what is freed in each for that thread. A `migrate` of 3 000 small
//! images (60 batches of the same work) grew to 249 MiB peak with the default; with two
//! arenas it stays at 136 MiB from the 40th batch on. The 20-image corpus batch peaked at 130
//! vs 90 MiB, in the same time. The
//! pipeline's large buffers are its own (see `ingest::pipeline::budget`), so few arenas cost
//! little contention.
//!
//! glibc also raises its mmap threshold to the size of the largest block freed (up to 32 MiB),
//! after which the pipeline's 4–16 MiB chunk buffers come from the arenas and stay there when
//! freed: converting `testbed/app:oci-gzip` peaked at 221–254 MiB. With the threshold fixed at
//! 4 MiB they are mapped and unmapped each time: 195–197 MiB, for about 1 % more CPU (page
//! faults), measured over three runs each.

/// Allocations from this size on are mapped of their own and returned to the system when freed.
#[cfg(target_env = "gnu")]
const MMAP_THRESHOLD: libc::c_int = 4 << 20;

/// What the top of the heap may keep free before it is given back (glibc's dynamic value once
/// the threshold reaches 16 MiB; fixing the threshold would otherwise leave it at 128 KiB, and
/// trim after every few small files).
#[cfg(target_env = "gnu")]
const TRIM_THRESHOLD: libc::c_int = 32 << 20;

/// At most two malloc arenas and a fixed mmap threshold, unless `MALLOC_ARENA_MAX` or
/// `MALLOC_MMAP_THRESHOLD_` say otherwise.
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: called first thing in `main`, before any other thread exists.
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
        }
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
                libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
            }
        }
    }
}
