//! The order in which a batch's images are flattened. Images are taken in the order given,
//! except that an image is held back while another one is reading a layer it also has and
//! the layer memo does not know yet: tags of one repository usually share new layers, and
//! flattening two of them at once would download, inflate and parse those layers twice
//! (the second could not replay the memo the first is still writing). Once the first is done
//! its memo replays the shared layers for the second.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

/// Items waiting to be flattened and the layers the running ones are reading.
pub struct Schedule<T> {
    state: Mutex<State<T>>,
    changed: Condvar,
}

struct State<T> {
    queue: VecDeque<(T, Vec<String>)>,
    /// Per running item: the layers it did not find in the memo when it started.
    running: Vec<(u64, Vec<String>)>,
    next_id: u64,
    closed: bool,
}

/// An item taken by [`Schedule::next`]; dropping it lets items sharing its layers go.
pub struct Taken<'a, T> {
    pub item: T,
    id: u64,
    schedule: &'a Schedule<T>,
}

impl<T> Schedule<T> {
    pub fn new() -> Schedule<T> {
        Schedule {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                running: Vec::new(),
                next_id: 0,
                closed: false,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `item`, which reads `layers` (memo keys) unless the memo knows them.
    pub fn push(&self, item: T, layers: Vec<String>) {
        self.lock().queue.push_back((item, layers));
        self.changed.notify_all();
    }

    /// No more items: [`next`](Self::next) returns `None` once the queue is empty.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// The first queued item sharing no layer unknown to `known` with a running item; waits
    /// while every queued item does (or the queue is empty and not closed).
    pub fn next(&self, known: impl Fn(&str) -> bool) -> Option<Taken<'_, T>> {
        let mut st = self.lock();
        loop {
            let busy = |l: &String| st.running.iter().any(|(_, r)| r.contains(l));
            let free = st
                .queue
                .iter()
                .position(|(_, layers)| !layers.iter().any(|l| busy(l) && !known(l)));
            if let Some(i) = free {
                let (item, layers) = st.queue.remove(i)?;
                let unknown = layers.into_iter().filter(|l| !known(l)).collect();
                let id = st.next_id;
                st.next_id += 1;
                st.running.push((id, unknown));
                return Some(Taken {
                    item,
                    id,
                    schedule: self,
                });
            }
            if st.queue.is_empty() && st.closed {
                return None;
            }
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl<T> Drop for Taken<'_, T> {
    fn drop(&mut self) {
        let mut st = self.schedule.lock();
        st.running.retain(|(id, _)| *id != self.id);
        drop(st);
        self.schedule.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn layers(ls: &[&str]) -> Vec<String> {
        ls.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn holds_back_items_sharing_an_unknown_layer() {
        let s = Schedule::new();
        s.push("a1", layers(&["base", "a"]));
        s.push("a2", layers(&["base", "a", "a2"]));
        s.push("b", layers(&["base", "b"]));
        s.close();
        let known: Mutex<HashSet<String>> = Mutex::new(["base".to_string()].into());
        let is_known = |l: &str| known.lock().unwrap().contains(l);
        let first = s.next(is_known).unwrap();
        assert_eq!(first.item, "a1");
        // a2 shares the unknown layer `a` with a1: b goes first; `base` is known to the memo.
        let second = s.next(is_known).unwrap();
        assert_eq!(second.item, "b");
        // a1 finished and its memo now knows `a`.
        known.lock().unwrap().insert("a".into());
        drop(first);
        assert_eq!(s.next(is_known).unwrap().item, "a2");
        drop(second);
        assert!(s.next(is_known).is_none());
    }

    #[test]
    fn a_held_back_item_waits_for_the_running_one() {
        let s = Schedule::new();
        s.push(1, layers(&["x"]));
        s.push(2, layers(&["x"]));
        s.close();
        let first = s.next(|_| false).unwrap();
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| s.next(|_| false).map(|t| t.item));
            // The second item can only be taken once the first is dropped.
            std::thread::sleep(std::time::Duration::from_millis(20));
            assert!(!waiter.is_finished());
            drop(first);
            assert_eq!(waiter.join().unwrap(), Some(2));
        });
    }
}
