//! Where objects and root files live: the served stratum-0 storage.

use crate::error::{Error, Result};
use catalog_writer::hash::{ContentHash, Suffix};
use std::io;
use std::path::{Path, PathBuf};

/// A content-addressed object store plus the few root files next to `data/`.
pub trait ObjectStore: Send + Sync {
    /// Whether the object is already stored.
    fn contains(&self, hash: &ContentHash, suffix: Suffix) -> io::Result<bool>;
    /// Stores an object atomically (temp file + rename); an existing object is left as is.
    fn put(&self, hash: &ContentHash, suffix: Suffix, bytes: &[u8]) -> io::Result<()>;
    /// Reads an object's stored (compressed) bytes.
    fn get(&self, hash: &ContentHash, suffix: Suffix) -> io::Result<Vec<u8>>;
    /// Replaces a root file (`.cvmfspublished`, `.cvmfswhitelist`, `.cvmfsreflog`) atomically.
    fn put_root_file(&self, name: &str, bytes: &[u8]) -> io::Result<()>;
    /// Reads a root file; `None` when it does not exist.
    fn get_root_file(&self, name: &str) -> io::Result<Option<Vec<u8>>>;
    /// Human-readable location, for messages.
    fn describe(&self) -> String;

    /// Stores an object unless the store has it; returns whether this call stored it. This
    /// default asks [`contains`](ObjectStore::contains) first; a store that notices an
    /// existing object while storing (a local store's no-replace link) saves that lookup.
    fn put_if_absent(&self, hash: &ContentHash, suffix: Suffix, bytes: &[u8]) -> io::Result<bool> {
        if self.contains(hash, suffix)? {
            return Ok(false);
        }
        self.put(hash, suffix, bytes)?;
        Ok(true)
    }

    /// Stores the object whose (compressed) bytes are in the file at `path`, which the store
    /// takes over: when the call returns, successful or not, the file has been moved into
    /// place or removed. An existing object is left as is. Callers should create the file in
    /// [`scratch_dir`](ObjectStore::scratch_dir) so a local store can rename it instead of
    /// copying. This default reads the whole file and calls [`put`](ObjectStore::put).
    fn put_file(&self, hash: &ContentHash, suffix: Suffix, path: &Path) -> io::Result<()> {
        let res = std::fs::read(path).and_then(|bytes| self.put(hash, suffix, &bytes));
        let removed = std::fs::remove_file(path);
        res?;
        match removed {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// A directory on the store's file system for files that [`put_file`](ObjectStore::put_file)
    /// can rename into place; `None`: no such place (use the system temp directory).
    fn scratch_dir(&self) -> Option<PathBuf> {
        None
    }
}

/// Plaintext content index: lets the pipeline skip compression of content it has stored before.
/// Keys are the SHA-1 of the uncompressed bytes of a whole file or of one chunk, plus the size
/// and the suffix the object would get. A hit must be checked with `ObjectStore::contains`
/// before it is trusted (objects may have been removed by GC).
pub trait ContentIndex: Send + Sync {
    fn lookup(
        &self,
        plain_sha1: &[u8; 20],
        size: u64,
        suffix: Suffix,
    ) -> Option<(ContentHash, u64)>;
    /// Records that plaintext `plain_sha1` is stored as `object` (`compressed_size` bytes).
    fn record(
        &self,
        plain_sha1: &[u8; 20],
        size: u64,
        suffix: Suffix,
        object: ContentHash,
        compressed_size: u64,
    );
}

/// Lets any [`ObjectStore`] serve as the catalog writer's [`Objects`](catalog_writer::namespace::Objects).
///
/// A wrapper is needed because `&dyn ObjectStore` cannot be re-coerced into another trait object.
#[derive(Clone, Copy)]
pub struct StoreObjects<'a>(pub &'a dyn ObjectStore);

impl catalog_writer::namespace::Objects for StoreObjects<'_> {
    fn load(&self, hash: &ContentHash, suffix: Suffix) -> io::Result<Vec<u8>> {
        self.0.get(hash, suffix)
    }

    fn store(&self, hash: &ContentHash, suffix: Suffix, bytes: &[u8]) -> io::Result<()> {
        self.0.put(hash, suffix, bytes)
    }
}

/// Wraps `store` for code that wants `&dyn Objects`.
pub fn as_objects(store: &dyn ObjectStore) -> StoreObjects<'_> {
    StoreObjects(store)
}

/// Names of the files at the top of the storage directory.
pub mod root_files {
    pub const MANIFEST: &str = ".cvmfspublished";
    pub const WHITELIST: &str = ".cvmfswhitelist";
    pub const REFLOG: &str = ".cvmfsreflog";
    /// Free-form status for monitoring (`last_gc`, …); clients never read it.
    pub const STATUS: &str = ".cvmfs_status.json";
}

/// Stores compressed `object` under its SHA-1 with `suffix`; `what` names it in errors
/// ("history", "certificate", …). Returns the hash.
pub(crate) fn put_named(
    store: &dyn ObjectStore,
    object: &[u8],
    suffix: Suffix,
    what: &str,
) -> crate::error::Result<ContentHash> {
    let hash = ContentHash::of(object);
    store
        .put(&hash, suffix, object)
        .map_err(|e| crate::error::Error::io(format!("{what} object {hash}"), e))?;
    Ok(hash)
}

/// The manifest in `store` (its signature is not checked here).
pub(crate) fn published_manifest(store: &dyn ObjectStore) -> Result<signer::Manifest> {
    let where_ = store.describe();
    let bytes = store
        .get_root_file(root_files::MANIFEST)
        .map_err(|e| Error::io(where_.as_str(), e))?
        .ok_or_else(|| Error::Invalid(format!("{where_}: no .cvmfspublished")))?;
    Ok(signer::Manifest::parse(&bytes)
        .map_err(|e| Error::signature(format!("{where_}/.cvmfspublished"), e))?
        .manifest)
}
