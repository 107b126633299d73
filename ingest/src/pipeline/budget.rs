//! The memory budget: a byte semaphore bounding the piece buffers between reading and storing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// Byte semaphore bounding the piece buffers in flight.
pub(super) struct Budget {
    avail: Mutex<Avail>,
    freed: Condvar,
    total: usize,
    /// Highest number of bytes held at once (for tests and diagnostics).
    pub(super) peak: AtomicU64,
}

/// The bytes free, and how many threads wait for more (a release signals `freed` only when
/// some do: a signal is a system call, and pieces are released by the hundred thousand).
struct Avail {
    bytes: usize,
    waiters: usize,
}

/// Bytes held from the budget; released on drop.
pub(super) struct Permit {
    budget: Arc<Budget>,
    n: usize,
}

impl Budget {
    pub(super) fn new(total: usize) -> Budget {
        Budget {
            avail: Mutex::new(Avail {
                bytes: total,
                waiters: 0,
            }),
            freed: Condvar::new(),
            total,
            peak: AtomicU64::new(0),
        }
    }
}

impl Budget {
    /// Takes `n` bytes (at most the whole budget, so one huge piece cannot deadlock).
    pub(super) fn acquire(self: &Arc<Self>, n: usize) -> Permit {
        let n = n.min(self.total);
        let mut avail = self.avail.lock().unwrap_or_else(|p| p.into_inner());
        while avail.bytes < n {
            avail.waiters += 1;
            avail = self.freed.wait(avail).unwrap_or_else(|p| p.into_inner());
            avail.waiters -= 1;
        }
        avail.bytes -= n;
        self.peak
            .fetch_max((self.total - avail.bytes) as u64, Ordering::Relaxed);
        Permit {
            budget: self.clone(),
            n,
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut avail = self.budget.avail.lock().unwrap_or_else(|p| p.into_inner());
        avail.bytes += self.n;
        let waiting = avail.waiters > 0;
        drop(avail);
        if waiting {
            self.budget.freed.notify_all();
        }
    }
}
