//! Where objects and root files live: the served stratum-0 storage.

use catalog_writer::hash::{ContentHash, Suffix};
use std::io;

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
}
