//! A tree whose regular files may still wait for the pipeline: what sources build before the
//! objects of their files are known.

use super::{FileTicket, ObjectPipeline};
use crate::error::Result;
use catalog_writer::entry::{Entry, EntryKind};
use catalog_writer::tree::{Dir, Node};
use std::collections::{BTreeMap, HashMap};

/// A non-directory; regular files carry the ticket of their content.
#[derive(Clone, Debug)]
pub(crate) struct PLeaf {
    pub entry: Entry,
    pub ticket: Option<FileTicket>,
}

#[derive(Clone, Debug)]
pub(crate) enum PNode {
    Dir(PDir),
    Leaf(PLeaf),
}

/// A directory; `meta` is `None` while only implied by deeper paths.
#[derive(Clone, Debug, Default)]
pub(crate) struct PDir {
    pub meta: Option<Entry>,
    pub children: BTreeMap<Vec<u8>, PNode>,
}

/// Waits for every file's objects and builds the final tree; implied directories get
/// `default_dir` as metadata.
/// Hardlink ids carried by a single entry (its partners were replaced or lie outside the
/// tree) are dropped: a lone member is an ordinary file.
pub(crate) fn finalize(root: PDir, default_dir: &Entry, pipeline: &ObjectPipeline) -> Result<Dir> {
    let mut counts = HashMap::new();
    count_links(&root, &mut counts);
    build(root, default_dir, pipeline, &counts)
}

fn count_links(dir: &PDir, counts: &mut HashMap<u64, u32>) {
    for node in dir.children.values() {
        match node {
            PNode::Dir(d) => count_links(d, counts),
            PNode::Leaf(l) => {
                if let Some(id) = l.entry.hardlink {
                    *counts.entry(id).or_default() += 1;
                }
            }
        }
    }
}

fn build(
    root: PDir,
    default_dir: &Entry,
    pipeline: &ObjectPipeline,
    counts: &HashMap<u64, u32>,
) -> Result<Dir> {
    let meta = root.meta.unwrap_or_else(|| default_dir.clone());
    // Collected into a vector first: a map built from sorted pairs has full nodes, one built
    // by inserting them one by one is left about half empty.
    let mut children = Vec::with_capacity(root.children.len());
    for (name, node) in root.children {
        let node = match node {
            PNode::Dir(d) => Node::Dir(build(d, default_dir, pipeline, counts)?),
            PNode::Leaf(leaf) => Node::Leaf(final_leaf(leaf, pipeline, counts)?),
        };
        children.push((name, node));
    }
    Ok(Dir {
        meta,
        children: sorted_map(children),
    })
}

/// A leaf's entry with its file's data. Kept out of the recursive [`build`], whose frame
/// every directory level of a deep tree pays for.
fn final_leaf(
    mut leaf: PLeaf,
    pipeline: &ObjectPipeline,
    counts: &HashMap<u64, u32>,
) -> Result<Entry> {
    // Only hard links share a ticket: any other leaf is its file's last reader.
    let linked = leaf.entry.hardlink.is_some();
    if let Some(id) = leaf.entry.hardlink {
        if counts.get(&id).copied().unwrap_or(0) < 2 {
            leaf.entry.hardlink = None;
        }
    }
    if let Some(t) = leaf.ticket {
        let (size, data) = if linked {
            pipeline.resolve(t)?
        } else {
            pipeline.take(t)?
        };
        leaf.entry.kind = EntryKind::File { size, data };
    }
    Ok(leaf.entry)
}

/// A map of children already in key order (see [`build`]); out of line for the same reason
/// as [`final_leaf`].
pub(crate) fn sorted_map<V>(children: Vec<(Vec<u8>, V)>) -> BTreeMap<Vec<u8>, V> {
    BTreeMap::from_iter(children)
}
