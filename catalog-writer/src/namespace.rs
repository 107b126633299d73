//! The repository namespace: a tree of catalogs loaded lazily, changed in memory, and written
//! back bottom-up (only catalogs on changed paths are rewritten).
//!
//! API CONTRACT (bodies are being implemented; signatures are what other crates build against).

use crate::hash::{ContentHash, Suffix};
use crate::entry::Entry;
use crate::tree::Node;
use std::io;

/// Access to the object store, as the namespace needs it (publisher adapts its ObjectStore).
pub trait Objects: Sync {
    /// Stored (compressed) bytes of an object.
    fn load(&self, hash: &ContentHash, suffix: Suffix) -> io::Result<Vec<u8>>;
    /// Stores an object atomically; an existing object is left alone.
    fn store(&self, hash: &ContentHash, suffix: Suffix, bytes: &[u8]) -> io::Result<()>;
}

/// A stored catalog: its object hash and the size of its uncompressed SQLite file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CatalogRef {
    pub hash: ContentHash,
    pub size: u64,
}

/// Settings for writing catalogs.
#[derive(Clone, Debug)]
pub struct CommitOptions {
    /// New repository revision; the root catalog's `revision` (= manifest `S`).
    pub revision: u64,
    /// Publish time; `last_modified` of every written catalog.
    pub timestamp: i64,
    /// Root catalog `TTL` property (seconds).
    pub ttl: u32,
    /// Automatic splitting: no catalog gets more entries than this (0 = off).
    pub max_entries: u64,
    /// Apply `/.cvmfsdirtab` rules.
    pub apply_dirtab: bool,
}

/// What a commit wrote.
#[derive(Clone, Debug)]
pub struct CommitReport {
    pub root: CatalogRef,
    pub catalogs_written: usize,
    pub catalogs_total: usize,
}

/// The repository namespace.
pub struct Namespace {
    _private: (),
}

impl Namespace {
    /// A new, empty repository: only the root directory (mode 0755, owner 0:0, given mtime).
    pub fn empty(mtime: i64) -> Namespace {
        let _ = mtime;
        todo!()
    }

    /// Opens the namespace of an existing revision; only the root catalog is loaded now.
    pub fn open(root: CatalogRef, objects: &dyn Objects) -> crate::Result<Namespace> {
        let _ = (root, objects);
        todo!()
    }

    /// Metadata of the entry at `path` (`b""` = root), loading catalogs on the way.
    pub fn entry(&mut self, path: &[u8], objects: &dyn Objects) -> crate::Result<Option<Entry>> {
        let _ = (path, objects);
        todo!()
    }

    /// Names and metadata of a directory's children; `None` if `path` is not a directory.
    pub fn list(&mut self, path: &[u8], objects: &dyn Objects) -> crate::Result<Option<Vec<(Vec<u8>, Entry)>>> {
        let _ = (path, objects);
        todo!()
    }

    /// Puts `node` at `path`, replacing whatever was there (a whole subtree, nested catalogs
    /// included). Missing parents are created as directories with `parent_meta`.
    pub fn replace(&mut self, path: &[u8], node: Node, parent_meta: &Entry, objects: &dyn Objects) -> crate::Result<()> {
        let _ = (path, node, parent_meta, objects);
        todo!()
    }

    /// Removes `path` and everything below it; returns whether it existed.
    pub fn remove(&mut self, path: &[u8], objects: &dyn Objects) -> crate::Result<bool> {
        let _ = (path, objects);
        todo!()
    }

    /// Whether anything changed since `empty`/`open`/the last `commit`.
    pub fn is_dirty(&self) -> bool {
        todo!()
    }

    /// Writes every changed catalog bottom-up through `objects` and returns the new root.
    pub fn commit(&mut self, opts: &CommitOptions, objects: &dyn Objects) -> crate::Result<CommitReport> {
        let _ = (opts, objects);
        todo!()
    }
}
