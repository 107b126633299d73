//! Automatic catalog splitting: keep every rewritten catalog at or below `max_entries` rows by
//! turning its largest sub-directory subtrees into nested catalogs.

use crate::node::{Child, DirNode, AUTO_MARKER, MARKER};
use crate::rows::marker_entry;

/// Splits the dirty catalog rooted at `root` and, recursively, the dirty catalogs below it.
pub fn autosplit(root: &mut DirNode, max: u64) {
    if !root.dirty {
        return;
    }
    loop {
        let mut best: Option<(Vec<Vec<u8>>, u64)> = None;
        let mut stack = Vec::new();
        let rows = 1 + survey(root, &mut stack, &mut best, true);
        if rows <= max {
            break;
        }
        let Some((names, below)) = best else { break };
        if below == 0 || !mark_catalog(root, &names) {
            break;
        }
    }
    split_below(root, max);
}

fn split_below(dir: &mut DirNode, max: u64) {
    for child in dir.children.values_mut() {
        if let Child::Dir(d) = child {
            if d.has_marker() {
                autosplit(d, max);
            } else if d.dirty {
                split_below(d, max);
            }
        }
    }
}

/// Number of region entries below `dir`; records the region directory with most entries below.
fn survey(
    dir: &DirNode,
    stack: &mut Vec<Vec<u8>>,
    best: &mut Option<(Vec<Vec<u8>>, u64)>,
    is_root: bool,
) -> u64 {
    let mut below = 0u64;
    for (name, child) in &dir.children {
        below += 1;
        if let Child::Dir(d) = child {
            if !d.has_marker() {
                stack.push(name.clone());
                below += survey(d, stack, best, false);
                stack.pop();
            }
        }
    }
    if !is_root && best.as_ref().is_none_or(|(_, b)| below > *b) {
        *best = Some((stack.clone(), below));
    }
    below
}

/// Adds `.cvmfscatalog` and `.cvmfsautocatalog` to the directory at `names` below `root`.
fn mark_catalog(root: &mut DirNode, names: &[Vec<u8>]) -> bool {
    let mut cur = root;
    for n in names {
        cur.dirty = true;
        cur = match cur.children.get_mut(n) {
            Some(Child::Dir(d)) => d,
            _ => return false,
        };
    }
    cur.dirty = true;
    let marker = marker_entry(&cur.meta);
    cur.children
        .insert(MARKER.to_vec(), Child::Leaf(marker.clone()));
    cur.children
        .insert(AUTO_MARKER.to_vec(), Child::Leaf(marker));
    true
}
