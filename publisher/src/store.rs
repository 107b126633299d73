//! Where objects and root files live: the served stratum-0 storage.

use crate::error::{Error, Result};
use catalog_writer::hash::{ContentHash, Suffix};
use std::io::{self, Read};
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
    /// Reads a root file; `None` when it does not exist. A file longer than
    /// [`root_files::max_bytes`] is an error, found without reading more than one byte past
    /// the limit: a damaged or hostile storage must not make a reader allocate without end.
    fn get_root_file(&self, name: &str) -> io::Result<Option<Vec<u8>>>;
    /// Human-readable location, for messages.
    fn describe(&self) -> String;

    /// Reads an object's stored bytes, refusing an object longer than `limit` (callers derive
    /// it from the size the reference declares, see [`stored_bound`]). Stores that can stop
    /// reading at the limit override this default, which reads the whole object first.
    fn get_at_most(&self, hash: &ContentHash, suffix: Suffix, limit: u64) -> io::Result<Vec<u8>> {
        let bytes = self.get(hash, suffix)?;
        if bytes.len() as u64 > limit {
            return Err(too_large(&hash.object_path(suffix), limit));
        }
        Ok(bytes)
    }

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

/// The content index's key for a plaintext: its BLAKE3 hash ([`plain_hash`], [`PlainHasher`]).
///
/// Not SHA-1, although SHA-1 names the objects: two files of one size with the same SHA-1
/// can be made (SHAttered, 2017), and under a SHA-1 key the second one converted would be
/// published with the first one's content, across images and revisions. The object names
/// hash the compressed bytes, which the crafter of such a pair does not choose. BLAKE3 rather
/// than SHA-256: every byte of every layer passes through this hash, and here BLAKE3 runs at
/// 5 GB/s on 26 KB files and 10 GB/s on large ones, SHA-256 (SHA-NI) at 2.2 GB/s.
pub type PlainHash = [u8; 32];

/// The [`PlainHash`] of `bytes`.
pub fn plain_hash(bytes: &[u8]) -> PlainHash {
    blake3::hash(bytes).into()
}

/// Computes a [`PlainHash`] over data given piece by piece.
#[derive(Default, Clone)]
pub struct PlainHasher(blake3::Hasher);

impl PlainHasher {
    pub fn new() -> PlainHasher {
        PlainHasher::default()
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The hash of everything given so far.
    pub fn finalize(&self) -> PlainHash {
        self.0.finalize().into()
    }

    /// The hash of everything given so far; starts over.
    pub fn finalize_reset(&mut self) -> PlainHash {
        let hash = self.finalize();
        self.0.reset();
        hash
    }
}

/// Plaintext content index: lets the pipeline skip compression of content it has stored before.
/// Keys are the [`PlainHash`] of the uncompressed bytes of a whole file or of one chunk, plus
/// the size and the suffix the object would get. A hit must be checked with
/// `ObjectStore::contains` before it is trusted (objects may have been removed by GC).
pub trait ContentIndex: Send + Sync {
    fn lookup(&self, plain: &PlainHash, size: u64, suffix: Suffix) -> Option<(ContentHash, u64)>;
    /// Records that plaintext `plain` is stored as `object` (`compressed_size` bytes).
    fn record(
        &self,
        plain: &PlainHash,
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
    /// Marks the storage as a master copy that stratum 1s may replicate: `cvmfs_server
    /// add-replica` and `snapshot` refuse a stratum 0 without it. `cvmfs_server mkfs` makes
    /// it and `alterfs -m off` removes it; its content is not read.
    pub const MASTER_REPLICA: &str = ".cvmfs_master_replica";
    /// What `cvmfs_server alterfs -m on` writes (some S3 stores refuse empty uploads).
    pub const MASTER_REPLICA_TEXT: &[u8] =
        b"This file marks the repository as replicatable to stratum 1 servers\n";

    /// Most bytes read of a root file other than the reflog: a manifest is under 1 KiB, a
    /// whitelist a few KiB, the status a few hundred bytes.
    pub const MAX_SMALL: u64 = 1 << 20;
    /// Most bytes read of the reflog, an SQLite database with a row per catalog, history,
    /// certificate and meta-info object of every kept revision (as large as a history may be).
    pub const MAX_REFLOG: u64 = 1 << 30;

    /// The most bytes a store reads of root file `name`.
    pub fn max_bytes(name: &str) -> u64 {
        if name == REFLOG {
            MAX_REFLOG
        } else {
            MAX_SMALL
        }
    }
}

/// The most stored bytes a zlib object that inflates to `inflated` bytes may take: stock
/// zlib's worst case (`deflateBound`: about `inflated / 4096` more) with a wide margin for the
/// sync flushes of catalogs compressed in parts and for other writers. Reads of objects whose
/// reference declares their size are capped at this, so a hostile server cannot make a
/// reader allocate without end.
pub fn stored_bound(inflated: u64) -> u64 {
    inflated
        .saturating_add(inflated / 64)
        .saturating_add(64 << 10)
}

/// The one-line error for a file or body longer than the reader's limit.
pub(crate) fn too_large(what: &str, limit: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{what}: longer than the limit of {limit} bytes; refusing to read it"),
    )
}

/// Reads `from` to its end, but at most `limit` bytes: one more is an error naming `what`.
pub(crate) fn read_at_most(from: impl Read, limit: u64, what: &str) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    from.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| io::Error::new(e.kind(), format!("{what}: {e}")))?;
    if bytes.len() as u64 > limit {
        return Err(too_large(what, limit));
    }
    Ok(bytes)
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
