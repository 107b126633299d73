//! The order in which a batch's images are flattened. An image is held back while another one
//! is reading a layer it also has that the layer memo did not know when it was queued: tags of
//! one repository usually share new layers, and flattening two of them at once would download,
//! inflate and parse those layers twice (the second could not replay the memo the first is
//! still writing). Once the first is done its memo replays the shared layers for the second.
//!
//! Of the images free to go, one with a new layer that other queued images share goes first
//! (its memo frees them), and of those the one with the fewest layers above its shared ones,
//! then the first given: a memo written by an older version lacks the files that higher
//! layers shadowed where it was read, and reading a shared layer under the fewest layers
//! ingests the fewest files only some images need (a registry lists `app` before `debian`).
//! Layers read now are recorded whole, shadowed files included. Otherwise the image with the most bytes left to read
//! goes first: layers are read one after the other, so a large one started last would leave
//! the cores idle while one thread reads it.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};

/// A layer an item reads.
#[derive(Clone, Debug)]
pub struct LayerKey {
    /// The memo key (diff_id).
    pub id: String,
    /// The blob size.
    pub size: u64,
    /// Layers of the item above this one (0: its top layer).
    pub above: usize,
}

/// Items waiting to be flattened and the layers the running ones are reading.
pub struct Schedule<T> {
    state: Mutex<State<T>>,
    changed: Condvar,
}

struct State<T> {
    /// Per queued item: the layers the memo did not know when it was queued.
    queue: VecDeque<(T, Vec<LayerKey>)>,
    /// Per running item: the layers it reads.
    running: Vec<(u64, Vec<String>)>,
    /// Layers read by items that have ended: the memo knows them now (or their reading failed,
    /// and each item needing them reads them itself).
    read: HashSet<String>,
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
                read: HashSet::new(),
                next_id: 0,
                closed: false,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `item`, which reads `layers` (those the memo does not know).
    #[cfg(test)]
    pub fn push(&self, item: T, layers: Vec<LayerKey>) {
        self.push_all([(item, layers)]);
    }

    /// Queues items, each with the layers it reads that the memo does not know; none is taken
    /// before all are there to compare.
    pub fn push_all(&self, items: impl IntoIterator<Item = (T, Vec<LayerKey>)>) {
        self.lock().queue.extend(items);
        self.changed.notify_all();
    }

    /// No more items: [`next`](Self::next) returns `None` once the queue is empty.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// The next item to flatten (see the module doc); waits while every queued item shares a
    /// layer with a running one (or the queue is empty and not closed).
    pub fn next(&self) -> Option<Taken<'_, T>> {
        let mut st = self.lock();
        loop {
            if let Some(i) = st.pick() {
                let (item, layers) = st.queue.remove(i)?;
                let to_read = layers
                    .into_iter()
                    .map(|l| l.id)
                    .filter(|l| !st.read.contains(l))
                    .collect();
                let id = st.next_id;
                st.next_id += 1;
                st.running.push((id, to_read));
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

impl<T> State<T> {
    /// Index of the queued item to take, if one is free to go.
    fn pick(&self) -> Option<usize> {
        let to_read = |i: usize| {
            let layers = self.queue.get(i).map_or(&[][..], |(_, ls)| ls.as_slice());
            layers.iter().filter(|l| !self.read.contains(&l.id))
        };
        let mut sharers: HashMap<&str, usize> = HashMap::new();
        for i in 0..self.queue.len() {
            for l in to_read(i) {
                *sharers.entry(l.id.as_str()).or_default() += 1;
            }
        }
        let busy: HashSet<&str> = self
            .running
            .iter()
            .flat_map(|(_, ls)| ls.iter().map(String::as_str))
            .collect();
        let free =
            || (0..self.queue.len()).filter(|&i| !to_read(i).any(|l| busy.contains(l.id.as_str())));
        // The most layers above any of the item's shared layers; `None`: it shares none.
        let shadowing = |i: usize| {
            to_read(i)
                .filter(|l| sharers.get(l.id.as_str()).is_some_and(|&n| n > 1))
                .map(|l| l.above)
                .max()
        };
        if let Some((_, i)) = free().filter_map(|i| Some((shadowing(i)?, i))).min() {
            return Some(i);
        }
        free().max_by_key(|&i| (to_read(i).map(|l| l.size).sum::<u64>(), Reverse(i)))
    }
}

impl<T> Drop for Taken<'_, T> {
    fn drop(&mut self) {
        let mut st = self.schedule.lock();
        if let Some(at) = st.running.iter().position(|(id, _)| *id == self.id) {
            let (_, layers) = st.running.swap_remove(at);
            st.read.extend(layers);
        }
        drop(st);
        self.schedule.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Layers bottom to top.
    fn layers(ls: &[(&str, u64)]) -> Vec<LayerKey> {
        ls.iter()
            .enumerate()
            .map(|(i, (s, n))| LayerKey {
                id: s.to_string(),
                size: *n,
                above: ls.len() - 1 - i,
            })
            .collect()
    }

    #[test]
    fn holds_back_items_sharing_a_layer_being_read() {
        let s = Schedule::new();
        s.push("a1", layers(&[("a", 5)]));
        s.push("a2", layers(&[("a", 5), ("a2", 1)]));
        s.push("b", layers(&[("b", 50)]));
        s.close();
        // a1 and a2 share `a`: the first of them goes first, though b has more to read.
        let first = s.next().unwrap();
        assert_eq!(first.item, "a1");
        // a2 waits for a1, which is reading `a`.
        let second = s.next().unwrap();
        assert_eq!(second.item, "b");
        // a1 is done: the memo knows `a`, a2 reads only `a2`.
        drop(first);
        assert_eq!(s.next().unwrap().item, "a2");
        drop(second);
        assert!(s.next().is_none());
    }

    #[test]
    fn a_base_image_goes_before_the_images_built_on_it() {
        let s = Schedule::new();
        // Given (as a registry lists them) before their base image.
        s.push("app", layers(&[("base", 30), ("app", 1)]));
        s.push("api", layers(&[("base", 30), ("py", 9), ("api", 4)]));
        s.push("py", layers(&[("base", 30), ("py", 9)]));
        s.push("base", layers(&[("base", 30)]));
        s.close();
        let order: Vec<&str> = std::iter::from_fn(|| s.next().map(|t| t.item)).collect();
        // `base` reads its layer unshadowed; then `py` (`py` is shared with `api`, on top).
        assert_eq!(order, ["base", "py", "api", "app"]);
    }

    #[test]
    fn a_held_back_item_waits_for_the_running_one() {
        let s = Schedule::new();
        s.push(1, layers(&[("x", 1)]));
        s.push(2, layers(&[("x", 1)]));
        s.close();
        let first = s.next().unwrap();
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| s.next().map(|t| t.item));
            // The second item can only be taken once the first is dropped.
            std::thread::sleep(std::time::Duration::from_millis(20));
            assert!(!waiter.is_finished());
            drop(first);
            assert_eq!(waiter.join().unwrap(), Some(2));
        });
    }

    #[test]
    fn items_sharing_nothing_go_largest_first() {
        let s = Schedule::new();
        s.push("small", layers(&[("s", 1)]));
        s.push("large", layers(&[("l", 50)]));
        s.push("base", layers(&[("z", 5)]));
        s.push("on-base", layers(&[("z", 5), ("q", 1)]));
        s.push("larger", layers(&[("o", 60)]));
        s.push("none", Vec::new());
        s.close();
        // Each item is done before the next is taken.
        let order: Vec<&str> = std::iter::from_fn(|| s.next().map(|t| t.item)).collect();
        // `base` frees `on-base` (which then reads 1 byte, as much as `small`, queued first).
        assert_eq!(
            order,
            ["base", "larger", "large", "small", "on-base", "none"]
        );
    }
}
