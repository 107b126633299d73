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
