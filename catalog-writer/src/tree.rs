//! An in-memory directory tree: what sources produce and what the namespace grafts in.

use crate::entry::Entry;
use std::collections::BTreeMap;

/// One node of a tree: a directory with children, or any other entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Dir(Dir),
    Leaf(Entry),
}

/// A directory: its own metadata (kind `Directory`) and its children by name (raw bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dir {
    pub meta: Entry,
    pub children: BTreeMap<Vec<u8>, Node>,
}

impl Dir {
    pub fn new(meta: Entry) -> Dir {
        Dir {
            meta,
            children: BTreeMap::new(),
        }
    }

    /// Number of entries below this directory (not counting itself).
    pub fn count_entries(&self) -> u64 {
        self.children
            .values()
            .map(|n| match n {
                Node::Dir(d) => 1 + d.count_entries(),
                Node::Leaf(_) => 1,
            })
            .sum()
    }
}

impl Node {
    pub fn entry(&self) -> &Entry {
        match self {
            Node::Dir(d) => &d.meta,
            Node::Leaf(e) => e,
        }
    }
}
