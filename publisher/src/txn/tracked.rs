//! The object store a transaction hands out: it remembers every object it newly created, so
//! that a transaction that ends without publishing can take them away again.
//!
//! Deleting them is safe because only one publisher per home holds the lock, and an object
//! this transaction created did not exist before it, so no published revision refers to it.
//! Caveat: a second publisher using *another* home on the same storage could, meanwhile, have
//! found one of these objects present and referenced it instead of storing its own copy; the
//! compare-and-swap on `.cvmfspublished` protects the manifest, not objects. Running two
//! publishers on one storage is unsupported for exactly this kind of reason.

use crate::local::LocalStore;
use crate::store::ObjectStore;
use catalog_writer::hash::{ContentHash, Suffix};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

/// What [`TrackedStore::roll_back`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RollBack {
    /// Scratch files of the transaction found in `data/txn` and deleted.
    pub temps_removed: usize,
    /// Deletions that failed (best effort: the rest still went ahead).
    pub errors: Vec<String>,
    /// The objects created by the transaction and deleted now, for the caches that may name
    /// them.
    pub removed: Vec<(ContentHash, Suffix)>,
}

impl RollBack {
    /// How many objects created by the transaction were deleted.
    pub fn objects_removed(&self) -> usize {
        self.removed.len()
    }
}

pub(crate) struct TrackedStore {
    /// A scoped handle, so the transaction's scratch files can be recognised.
    local: LocalStore,
    /// `true` while objects may be stored. Every `put` holds it for reading; the roll back
    /// takes it for writing, so it waits for writes in flight and later ones are refused
    /// (a pipeline thread still running must not leave new objects behind).
    open: RwLock<bool>,
    created: Mutex<Vec<(ContentHash, Suffix)>>,
}

impl TrackedStore {
    pub(crate) fn new(base: &LocalStore) -> TrackedStore {
        TrackedStore {
            local: base.scoped(),
            open: RwLock::new(true),
            created: Mutex::new(Vec::new()),
        }
    }

    /// The storage itself, for root files, `syncfs` and messages.
    pub(crate) fn local(&self) -> &LocalStore {
        &self.local
    }

    /// Whether this transaction has created any object.
    pub(crate) fn created_any(&self) -> bool {
        match self.created.lock() {
            Ok(c) => !c.is_empty(),
            Err(e) => !e.into_inner().is_empty(),
        }
    }

    /// The created objects are part of a published revision now: keep them.
    pub(crate) fn forget(&self) {
        match self.created.lock() {
            Ok(mut c) => c.clear(),
            Err(e) => e.into_inner().clear(),
        }
    }

    /// Refuses further writes, then deletes every object created so far and this
    /// transaction's scratch files (best effort; objects already gone are fine).
    pub(crate) fn roll_back(&self) -> RollBack {
        let mut open = self.open.write().unwrap_or_else(|e| e.into_inner());
        *open = false;
        let created = match self.created.lock() {
            Ok(mut c) => std::mem::take(&mut *c),
            Err(e) => std::mem::take(&mut *e.into_inner()),
        };
        let mut report = RollBack::default();
        for (hash, suffix) in created {
            match self.local.remove_object(&hash, suffix) {
                Ok(()) => report.removed.push((hash, suffix)),
                Err(e) => report.errors.push(e.to_string()),
            }
        }
        match self.local.remove_temps() {
            Ok(n) => report.temps_removed = n,
            Err(e) => report.errors.push(e.to_string()),
        }
        report
    }
}

impl TrackedStore {
    /// Runs a write (`Ok(true)` = it created the object) while the transaction is open and
    /// remembers what it created.
    fn tracked(
        &self,
        hash: &ContentHash,
        suffix: Suffix,
        write: impl FnOnce() -> io::Result<bool>,
    ) -> io::Result<bool> {
        let open = self.open.read().unwrap_or_else(|e| e.into_inner());
        if !*open {
            return Err(io::Error::other(format!(
                "{}: the transaction is over, object {} not stored",
                self.local.describe(),
                hash.object_path(suffix)
            )));
        }
        let created = write()?;
        if created {
            match self.created.lock() {
                Ok(mut c) => c.push((*hash, suffix)),
                Err(e) => e.into_inner().push((*hash, suffix)),
            }
        }
        Ok(created)
    }
}

impl ObjectStore for TrackedStore {
    fn contains(&self, hash: &ContentHash, suffix: Suffix) -> io::Result<bool> {
        self.local.contains(hash, suffix)
    }

    fn put(&self, hash: &ContentHash, suffix: Suffix, bytes: &[u8]) -> io::Result<()> {
        self.tracked(hash, suffix, || self.local.put_new(hash, suffix, bytes))
            .map(|_| ())
    }

    fn put_if_absent(&self, hash: &ContentHash, suffix: Suffix, bytes: &[u8]) -> io::Result<bool> {
        self.tracked(hash, suffix, || self.local.put_new(hash, suffix, bytes))
    }

    fn put_file(&self, hash: &ContentHash, suffix: Suffix, path: &Path) -> io::Result<()> {
        let res = self
            .tracked(hash, suffix, || self.local.put_file_new(hash, suffix, path))
            .map(|_| ());
        if res.is_err() && path.exists() {
            // Refused: the store still takes the file over.
            let _ = std::fs::remove_file(path);
        }
        res
    }

    fn scratch_dir(&self) -> Option<PathBuf> {
        self.local.scratch_dir()
    }

    fn get(&self, hash: &ContentHash, suffix: Suffix) -> io::Result<Vec<u8>> {
        self.local.get(hash, suffix)
    }

    fn get_at_most(&self, hash: &ContentHash, suffix: Suffix, limit: u64) -> io::Result<Vec<u8>> {
        self.local.get_at_most(hash, suffix, limit)
    }

    /// Root files are not tracked (a transaction writes them only when it publishes).
    fn put_root_file(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.local.put_root_file(name, bytes)
    }

    fn get_root_file(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        self.local.get_root_file(name)
    }

    fn describe(&self) -> String {
        self.local.describe()
    }
}
