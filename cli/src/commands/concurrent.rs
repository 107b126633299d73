//! Registry round trips run several at a time: planning a batch of hundreds of images is one
//! manifest and one config request each, and a remote registry answers in tens of
//! milliseconds, so doing them one after the other would dominate the batch.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Requests in flight at once: enough to hide round trips; the registry client caps them per
/// host anyway (`RegistryOptions::max_concurrent`, 4 by default, which this matches).
pub const REQUESTS_IN_FLIGHT: usize = 4;

/// `f` of every item on up to `limit` threads; results in the order of `items`.
pub fn map<T: Sync, R: Send>(items: &[T], limit: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = limit.clamp(1, items.len().max(1));
    if threads == 1 {
        return items.iter().map(f).collect();
    }
    let slots: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = f(item);
                *slots[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
            });
        }
    });
    slots
        .into_iter()
        .filter_map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_order_of_the_items() {
        let items: Vec<u64> = (0..100).collect();
        // Later items finish first: the order must come from the slots, not completion.
        let out = map(&items, 8, |&i| {
            std::thread::sleep(std::time::Duration::from_micros(100 - i));
            i * 2
        });
        assert_eq!(out, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(map(&items[..1], 8, |&i| i + 1), vec![1]);
        assert!(map(&items[..0], 8, |&i| i).is_empty());
    }

    #[test]
    fn runs_several_at_once() {
        let items: Vec<usize> = (0..8).collect();
        let running = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        map(&items, 4, |_| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            // Wait (bounded) for a second call to be running: a serial map never gets one.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while peak.load(Ordering::SeqCst) < 2 && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            running.fetch_sub(1, Ordering::SeqCst);
        });
        let peak = peak.load(Ordering::SeqCst);
        assert!((2..=4).contains(&peak), "peak concurrency {peak}");
    }
}
