//! The small-file tree of case 4: `n` files of distinct, text-like contents (64 B to 2 KiB) in
//! a few hundred directories, generated once and reused (a stamp file next to it records `n`).

use crate::Error;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

const FILES_PER_DIR: usize = 250;
const WORDS: [&str; 16] = [
    "alpha", "beta", "gamma", "delta", "cvmfs", "object", "catalog", "chunk", "layer", "image",
    "python", "lib", "share", "usr", "0x1f", "\n",
];

/// A small deterministic generator (xorshift64*): reproducible contents, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The contents of file `i`: unique (its index is the first line), then random words.
pub fn content(i: usize) -> Vec<u8> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (i as u64).wrapping_mul(0x1000_0000_01b3));
    let len = 64 + (rng.next() % (2048 - 64)) as usize;
    let mut v = format!("file {i}\n").into_bytes();
    while v.len() < len {
        v.extend_from_slice(WORDS[(rng.next() % 16) as usize].as_bytes());
        v.push(b' ');
    }
    v.truncate(len);
    v
}

/// Path of file `i` below `root`: `dNN/sNN/fNNNNNN`.
fn file_path(root: &Path, i: usize, fanout: usize) -> PathBuf {
    let leaf = i / FILES_PER_DIR;
    root.join(format!("d{:03}", leaf / fanout))
        .join(format!("s{:03}", leaf % fanout))
        .join(format!("f{i:06}"))
}

/// Number of directories the tree of `n` files has (top level and leaves).
pub fn dirs(n: usize) -> usize {
    let leaves = n.div_ceil(FILES_PER_DIR).max(1);
    let fanout = fanout(n);
    leaves + leaves.div_ceil(fanout)
}

fn fanout(n: usize) -> usize {
    let leaves = n.div_ceil(FILES_PER_DIR).max(1);
    (leaves as f64).sqrt().ceil() as usize
}

/// Makes sure `root` holds the tree of `n` files; returns its total file bytes.
pub fn ensure(root: &Path, n: usize) -> Result<u64, Error> {
    let stamp = root.with_extension("stamp");
    let want = format!("files={n} v1\n");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        return Ok((0..n).map(|i| content(i).len() as u64).sum());
    }
    if root.exists() {
        std::fs::remove_dir_all(root).map_err(|e| Error::io(root, e))?;
    }
    let fanout = fanout(n);
    let bytes = (0..n.div_ceil(FILES_PER_DIR))
        .into_par_iter()
        .map(|leaf| {
            let first = leaf * FILES_PER_DIR;
            let last = (first + FILES_PER_DIR).min(n);
            let dir = file_path(root, first, fanout);
            let dir = dir.parent().unwrap_or(root);
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            let mut bytes = 0u64;
            for i in first..last {
                let path = file_path(root, i, fanout);
                let data = content(i);
                bytes += data.len() as u64;
                std::fs::write(&path, data).map_err(|e| Error::io(&path, e))?;
            }
            Ok(bytes)
        })
        .sum::<Result<u64, Error>>()?;
    std::fs::write(&stamp, want).map_err(|e| Error::io(&stamp, e))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_are_distinct_and_small() {
        let a = content(1);
        let b = content(2);
        assert_ne!(a, b);
        assert!((64..2048).contains(&a.len()));
        assert_eq!(content(1), a);
        assert_eq!(dirs(100_000), 400 + 20);
    }
}
