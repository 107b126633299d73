//! The memory budget: a byte semaphore bounding the piece buffers between reading and storing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// Byte semaphore bounding the piece buffers in flight.
pub(super) struct Budget {
    avail: Mutex<usize>,
    freed: Condvar,
    total: usize,
    /// Highest number of bytes held at once (for tests and diagnostics).
    pub(super) peak: AtomicU64,
}

/// Bytes held from the budget; released on drop.
pub(super) struct Permit {
    budget: Arc<Budget>,
    n: usize,
}

impl Budget {
    pub(super) fn new(total: usize) -> Budget {
        Budget {
            avail: Mutex::new(total),
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
        while *avail < n {
            avail = self.freed.wait(avail).unwrap_or_else(|p| p.into_inner());
        }
        *avail -= n;
        self.peak
            .fetch_max((self.total - *avail) as u64, Ordering::Relaxed);
        Permit {
            budget: self.clone(),
            n,
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut avail = self.budget.avail.lock().unwrap_or_else(|p| p.into_inner());
        *avail += self.n;
        drop(avail);
        self.budget.freed.notify_all();
    }
}
