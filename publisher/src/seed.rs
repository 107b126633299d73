//! `cache seed`: fills the plaintext content index from a repository's current revision, so
//! the first conversion into an existing repository (or one whose `state/` was lost) skips the
//! compression of every file it already holds.
//!
//! Every catalog of the revision is read; each regular-file object and chunk (`P`) object
//! not yet in the index is fetched once, checked against its name, inflated while being
//! hashed (never held inflated in memory) and recorded as (plaintext hash, plain size, suffix) →
//! (object, compressed size), exactly the key the ingest pipeline looks up.

use crate::catalogs::walk_catalogs;
use crate::content_index::SqliteContentIndex;
use crate::error::{Error, Result};
use crate::repo::Repository;
use crate::store::{stored_bound, ContentIndex, ObjectStore};
use crate::store::{PlainHash, PlainHasher};
use catalog_writer::hash::{ContentHash, Suffix};
use catalog_writer::namespace::CatalogRef;
use flate2::read::ZlibDecoder;
use rayon::prelude::*;
use std::io::Read;

/// Objects per batch: progress is reported and the index flushed after each one.
const BATCH_OBJECTS: usize = 256;
/// Plain bytes per batch (at least one object per batch).
const BATCH_BYTES: u64 = 256 << 20;

/// Where a seed run is, reported after each batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeedProgress {
    /// Objects to read (data objects of the revision not yet in the index).
    pub objects_total: u64,
    pub objects_done: u64,
    /// Plain bytes of the objects read so far.
    pub bytes_done: u64,
}

/// What a seed run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeedStats {
    /// Catalogs read.
    pub catalogs: usize,
    /// Distinct data objects (whole files and chunks) the revision references.
    pub objects: u64,
    /// Objects already in the index (nothing read).
    pub already_indexed: u64,
    /// Objects stored uncompressed: not indexable (the pipeline only reuses zlib objects).
    pub uncompressed: u64,
    /// New index records.
    pub recorded: u64,
    /// Plain bytes hashed.
    pub plain_bytes: u64,
    /// Catalogs or objects that could not be read or did not match; each names the object.
    pub problems: Vec<String>,
}

/// One object to read.
struct Todo {
    hash: ContentHash,
    suffix: Suffix,
    size: Option<u64>,
}

/// The record for one object.
struct Found {
    plain: PlainHash,
    size: u64,
    suffix: Suffix,
    object: ContentHash,
    compressed_size: u64,
}

/// Seeds `index` from the revision whose root catalog is `root`. `progress` is called after
/// every batch. Unreadable objects are listed in [`SeedStats::problems`]; an unreadable root
/// catalog is an error.
pub fn seed_content_index(
    store: &dyn ObjectStore,
    root: CatalogRef,
    index: &SqliteContentIndex,
    progress: &mut dyn FnMut(&SeedProgress),
) -> Result<SeedStats> {
    let walk = walk_catalogs(store, root);
    if walk.catalogs == 0 {
        return Err(Error::Invalid(format!(
            "{}: cannot read root catalog {}: {}",
            store.describe(),
            root.hash,
            walk.problems.join("; ")
        )));
    }
    let mut stats = SeedStats {
        catalogs: walk.catalogs,
        problems: walk.problems,
        ..SeedStats::default()
    };
    let mut todo = Vec::new();
    // Keys are (hash, suffix): each object appears once however many files share it.
    for ((hash, suffix), expect) in walk.objects {
        if !matches!(suffix, Suffix::None | Suffix::Partial) {
            continue;
        }
        stats.objects += 1;
        if !expect.compressed {
            stats.uncompressed += 1;
        } else if index.has_object(&hash, suffix)? {
            stats.already_indexed += 1;
        } else {
            todo.push(Todo {
                hash,
                suffix,
                size: expect.size,
            });
        }
    }
    let mut state = SeedProgress {
        objects_total: todo.len() as u64,
        ..SeedProgress::default()
    };
    progress(&state);
    for batch in batches(&todo) {
        let results: Vec<_> = batch.par_iter().map(|t| read_object(store, t)).collect();
        for r in results {
            state.objects_done += 1;
            match r {
                Ok(found) => {
                    state.bytes_done += found.size;
                    stats.plain_bytes += found.size;
                    if record(index, &found) {
                        stats.recorded += 1;
                    } else {
                        stats.already_indexed += 1;
                    }
                }
                Err(problem) => stats.problems.push(problem),
            }
        }
        index.flush()?;
        progress(&state);
    }
    Ok(stats)
}

/// Seeds the repository's own index (`state/content.db`) from its current revision.
pub fn seed_repository(
    repo: &Repository,
    progress: &mut dyn FnMut(&SeedProgress),
) -> Result<SeedStats> {
    let info = repo.info()?;
    let hash = ContentHash::from_hex(&info.root_catalog).ok_or_else(|| {
        Error::corrupt(
            format!("{}/.cvmfspublished", repo.store().describe()),
            format!("root catalog {:?} is not a hash", info.root_catalog),
        )
    })?;
    let index = repo.content_index()?;
    let root = CatalogRef {
        hash,
        size: info.root_size,
    };
    let stats = seed_content_index(repo.store().as_ref(), root, &index, progress)?;
    index.flush()?;
    Ok(stats)
}

/// Splits `todo` into runs of at most [`BATCH_OBJECTS`] objects and about [`BATCH_BYTES`].
fn batches(todo: &[Todo]) -> Vec<&[Todo]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, t) in todo.iter().enumerate() {
        let full = i - start >= BATCH_OBJECTS || (i > start && bytes >= BATCH_BYTES);
        if full {
            out.push(&todo[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes = bytes.saturating_add(t.size.unwrap_or(0));
    }
    if start < todo.len() {
        out.push(&todo[start..]);
    }
    out
}

/// Records `found` unless its plaintext already maps to an object; returns whether it did.
fn record(index: &SqliteContentIndex, found: &Found) -> bool {
    if index
        .lookup(&found.plain, found.size, found.suffix)
        .is_some()
    {
        return false;
    }
    index.record(
        &found.plain,
        found.size,
        found.suffix,
        found.object,
        found.compressed_size,
    );
    true
}

/// Fetches one object, checks its name and plain size, and hashes its inflated bytes.
fn read_object(store: &dyn ObjectStore, t: &Todo) -> std::result::Result<Found, String> {
    let name = t.hash.object_path(t.suffix);
    let stored = store
        .get_at_most(&t.hash, t.suffix, t.size.map_or(u64::MAX, stored_bound))
        .map_err(|e| format!("{name}: {e}"))?;
    if ContentHash::of(&stored) != t.hash {
        return Err(format!(
            "{name}: stored bytes hash to {}",
            ContentHash::of(&stored)
        ));
    }
    // Catalog sizes are trusted only as a bound: a longer stream is reported, not hashed.
    let limit = t.size.unwrap_or(u64::MAX);
    let (plain, size) =
        inflate_plain_hash(&stored, limit).map_err(|e| format!("{name}: inflate: {e}"))?;
    if let Some(expected) = t.size.filter(|&s| s != size) {
        return Err(format!(
            "{name}: inflates to {size} bytes, the catalog says {expected}"
        ));
    }
    Ok(Found {
        plain,
        size,
        suffix: t.suffix,
        object: t.hash,
        compressed_size: stored.len() as u64,
    })
}

/// [`PlainHash`] and length of the inflated `zlib` stream, reading at most `limit + 1` bytes.
fn inflate_plain_hash(zlib: &[u8], limit: u64) -> std::io::Result<(PlainHash, u64)> {
    let mut dec = ZlibDecoder::new(zlib).take(limit.saturating_add(1));
    let mut hasher = PlainHasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = dec.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hasher.finalize(), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn todo(sizes: &[u64]) -> Vec<Todo> {
        sizes
            .iter()
            .map(|&s| Todo {
                hash: ContentHash([0; 20]),
                suffix: Suffix::None,
                size: Some(s),
            })
            .collect()
    }

    #[test]
    fn batches_bound_count_and_bytes() {
        let t = todo(&vec![1; BATCH_OBJECTS * 2 + 1]);
        let lens: Vec<usize> = batches(&t).iter().map(|b| b.len()).collect();
        assert_eq!(lens, vec![BATCH_OBJECTS, BATCH_OBJECTS, 1]);
        let t = todo(&[BATCH_BYTES, 1, BATCH_BYTES / 2, BATCH_BYTES / 2, 5]);
        let lens: Vec<usize> = batches(&t).iter().map(|b| b.len()).collect();
        assert_eq!(lens, vec![1, 3, 1]);
        assert!(batches(&[]).is_empty());
    }

    #[test]
    fn inflate_hash_matches_and_stops_at_limit() {
        let plain = b"some plaintext, some plaintext".repeat(1000);
        let z = catalog_writer::zlib::compress(&plain);
        let (sha, n) = inflate_plain_hash(&z, plain.len() as u64).unwrap();
        assert_eq!(n, plain.len() as u64);
        assert_eq!(sha, crate::store::plain_hash(&plain));
        let (_, n) = inflate_plain_hash(&z, 10).unwrap();
        assert_eq!(n, 11, "reads one byte past the limit, no more");
    }
}
