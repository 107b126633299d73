//! Reading stored catalogs for `check` and `info`: loading one catalog object into a temporary
//! SQLite file, and walking the nested-catalog tree to find every object it references.

use crate::error::{Error, Result};
use crate::store::{stored_bound, ObjectStore};
use crate::tempdb::TempDb;
use catalog_writer::hash::{ContentHash, Suffix};
use catalog_writer::namespace::CatalogRef;
use std::collections::{BTreeMap, HashSet};

/// Upper bound for inflating a catalog whose size is not known.
const MAX_CATALOG_BYTES: u64 = 4 << 30;

const FLAG_DIR: i64 = 1;
const FLAG_FILE: i64 = 4;
const FLAG_LINK: i64 = 8;
const FLAG_SPECIAL: i64 = 16;
const FLAG_CHUNKED: i64 = 64;
const FLAG_EXTERNAL: i64 = 128;

/// What an object referenced by a catalog should inflate to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expect {
    /// Plain size of the content (catalog row, chunk row, nested-catalog link), if known.
    pub size: Option<u64>,
    /// False for files stored uncompressed (compression bits = 1).
    pub compressed: bool,
}

/// A loaded catalog (temporary copy) and what it cost to load.
pub struct LoadedCatalog {
    db: TempDb,
    pub stored_bytes: u64,
    /// Size of the inflated catalog (a tag's `size`).
    pub size: u64,
}

impl LoadedCatalog {
    pub fn conn(&self) -> &rusqlite::Connection {
        self.db.conn()
    }

    /// The 24 (or however many are stored) `statistics` counters.
    pub fn statistics(&self) -> Result<BTreeMap<String, i64>> {
        let what = self.db.what().to_string();
        let mut stmt = self
            .conn()
            .prepare("SELECT counter, value FROM statistics")
            .map_err(|e| Error::sql(what.as_str(), e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(|e| Error::sql(what.as_str(), e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| Error::sql(what, e))
    }

    /// A `properties` value.
    pub fn property(&self, key: &str) -> Result<Option<String>> {
        use rusqlite::OptionalExtension;
        self.conn()
            .query_row("SELECT value FROM properties WHERE key = ?1", [key], |r| {
                r.get::<_, Option<String>>(0)
            })
            .optional()
            .map(Option::flatten)
            .map_err(|e| Error::sql(self.db.what(), e))
    }
}

/// Fetches catalog `cat`; checks that the stored bytes hash to its name (a catalog that is not
/// what its name says could nest one that nests it again: every walk would go round for ever)
/// and that the inflated size equals `cat.size` when that is > 0.
pub fn load_catalog(store: &dyn ObjectStore, cat: &CatalogRef) -> Result<LoadedCatalog> {
    let what = format!("catalog {}", cat.hash.object_path(Suffix::Catalog));
    let limit = if cat.size > 0 {
        cat.size
    } else {
        MAX_CATALOG_BYTES
    };
    let stored = store
        .get_at_most(&cat.hash, Suffix::Catalog, stored_bound(limit))
        .map_err(|e| Error::io(what.as_str(), e))?;
    if ContentHash::of(&stored) != cat.hash {
        return Err(Error::corrupt(
            what,
            format!("stored bytes hash to {}", ContentHash::of(&stored)),
        ));
    }
    let raw = catalog_writer::zlib::decompress_sqlite(&stored, limit)
        .map_err(|e| Error::io(format!("{what}: inflate"), e))?;
    if cat.size > 0 && raw.len() as u64 != cat.size {
        return Err(Error::corrupt(
            what,
            format!("inflates to {} bytes, expected {}", raw.len(), cat.size),
        ));
    }
    Ok(LoadedCatalog {
        db: TempDb::from_bytes(&what, &raw, true)?,
        stored_bytes: stored.len() as u64,
        size: raw.len() as u64,
    })
}

/// The nested catalogs `catalog` links to (`nested_catalogs` rows: mountpoint, reference), in
/// table order; `what` names the catalog in errors.
pub fn nested_links(catalog: &LoadedCatalog, what: &str) -> Result<Vec<(Vec<u8>, CatalogRef)>> {
    let sql = |e| Error::sql(what, e);
    let mut stmt = catalog
        .conn()
        .prepare("SELECT path, sha1, size FROM nested_catalogs")
        .map_err(sql)?;
    let mut nested = Vec::new();
    let mut rows = stmt.query([]).map_err(sql)?;
    while let Some(r) = rows.next().map_err(sql)? {
        let path = bytes_of(r, 0);
        let hex = r
            .get::<_, Option<String>>(1)
            .map_err(sql)?
            .unwrap_or_default();
        let size = r.get::<_, Option<i64>>(2).map_err(sql)?.unwrap_or(0);
        let hash = ContentHash::from_hex(&hex).ok_or_else(|| {
            Error::corrupt(what, format!("nested catalog hash {hex:?} is not a hash"))
        })?;
        let size = u64::try_from(size).unwrap_or(0);
        nested.push((path, CatalogRef { hash, size }));
    }
    Ok(nested)
}

/// Everything found by walking all catalogs.
#[derive(Debug, Default)]
pub struct CatalogWalk {
    /// Catalogs loaded successfully.
    pub catalogs: usize,
    /// Rows of all catalogs' `catalog` tables.
    pub entries: u64,
    /// Compressed bytes of all catalogs.
    pub catalog_bytes: u64,
    /// Objects named by catalog rows and nested-catalog links (catalogs themselves included,
    /// with `Expect.size` = uncompressed catalog size).
    pub objects: BTreeMap<(ContentHash, Suffix), Expect>,
    /// Whole-file hashes of chunked files: not objects a reader needs, but some writers
    /// (`cvmfs_server` with legacy bulk chunks) store them, so garbage collection keeps them.
    pub bulk: HashSet<ContentHash>,
    /// The hashes of `objects` alone, filled instead of `objects` by
    /// [`walk_catalog_hashes`]: garbage collection needs no sizes, and a repository of
    /// millions of objects then costs 29–44 bytes an object instead of 101–116 (measured
    /// for 1 and 3 million hashes).
    pub hashes: HashSet<ContentHash>,
    pub problems: Vec<String>,
    /// Catalogs that could not be loaded (each is also one of `problems`).
    pub unreadable: HashSet<ContentHash>,
    /// Whether `objects` (with what each should be) or only `hashes` is filled.
    hashes_only: bool,
}

impl CatalogWalk {
    fn found(&mut self, hash: ContentHash, suffix: Suffix, expect: Expect) {
        if self.hashes_only {
            self.hashes.insert(hash);
        } else {
            self.objects.insert((hash, suffix), expect);
        }
    }
}

/// Walks the catalog tree from `root` (depth first). Problems are collected, not fatal.
pub fn walk_catalogs(store: &dyn ObjectStore, root: CatalogRef) -> CatalogWalk {
    walk_catalog_trees(store, vec![(String::new(), root)])
}

/// Why a revision cannot be served whole (see [`tree_gap`]).
pub enum TreeGap {
    /// Catalogs that could not be read (how many problems, the first).
    Unreadable(usize, String),
    /// Objects referenced but not present (how many, the first).
    Missing(usize, ContentHash),
}

/// What the tree of root catalog `root`, plus the objects `also` names, lacks: first its
/// catalogs that cannot be read, else the objects its catalogs reference that `present` says
/// are not stored (e.g. a garbage collection stopped half-way, or objects deleted by hand);
/// `None` when it is complete. Holds only the hashes, so that a tree of millions of objects
/// can be checked.
pub fn tree_gap(
    store: &dyn ObjectStore,
    root: CatalogRef,
    also: &[ContentHash],
    present: &dyn Fn(&ContentHash) -> bool,
) -> Option<TreeGap> {
    let walk = walk_catalog_hashes(store, vec![(String::new(), root)]);
    if let Some(first) = walk.problems.first() {
        return Some(TreeGap::Unreadable(walk.problems.len(), first.clone()));
    }
    let missing: Vec<&ContentHash> = walk
        .hashes
        .iter()
        .chain(also)
        .filter(|h| !present(h))
        .collect();
    let first = missing.first()?;
    Some(TreeGap::Missing(missing.len(), **first))
}

/// Walks several catalog trees (`(label, root)`, e.g. the revisions garbage collection
/// keeps); a catalog reached twice is read once (its subtree is the same, by its hash).
pub fn walk_catalog_trees(
    store: &dyn ObjectStore,
    roots: Vec<(String, CatalogRef)>,
) -> CatalogWalk {
    walk_trees(store, roots, CatalogWalk::default())
}

/// As [`walk_catalog_trees`], but collects only the hashes of the objects (`hashes`, any
/// suffix, catalogs included), not what each should be.
pub fn walk_catalog_hashes(
    store: &dyn ObjectStore,
    roots: Vec<(String, CatalogRef)>,
) -> CatalogWalk {
    let walk = CatalogWalk {
        hashes_only: true,
        ..CatalogWalk::default()
    };
    walk_trees(store, roots, walk)
}

fn walk_trees(
    store: &dyn ObjectStore,
    roots: Vec<(String, CatalogRef)>,
    mut walk: CatalogWalk,
) -> CatalogWalk {
    let mut seen = HashSet::new();
    let mut stack = roots;
    while let Some((path, cat)) = stack.pop() {
        walk.found(
            cat.hash,
            Suffix::Catalog,
            Expect {
                size: (cat.size > 0).then_some(cat.size),
                compressed: true,
            },
        );
        if !seen.insert(cat.hash) {
            continue;
        }
        let label = if path.is_empty() { "/" } else { path.as_str() };
        let loaded = match load_catalog(store, &cat) {
            Ok(l) => l,
            Err(e) => {
                walk.problems.push(format!("catalog for {label}: {e}"));
                walk.unreadable.insert(cat.hash);
                continue;
            }
        };
        walk.catalogs += 1;
        walk.catalog_bytes += loaded.stored_bytes;
        if let Err(e) = scan_catalog(&loaded, &mut walk, &mut stack) {
            walk.problems
                .push(format!("catalog for {label} ({}): {e}", cat.hash));
        }
    }
    walk
}

/// Adds one catalog's rows, chunks and nested links to `walk`/`stack`.
fn scan_catalog(
    cat: &LoadedCatalog,
    walk: &mut CatalogWalk,
    stack: &mut Vec<(String, CatalogRef)>,
) -> Result<()> {
    let what = cat.db.what().to_string();
    let sql = |e| Error::sql(what.as_str(), e);
    let conn = cat.conn();
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM catalog", [], |r| r.get(0))
        .map_err(sql)?;
    walk.entries += u64::try_from(rows).unwrap_or(0);

    let mut stmt = conn
        .prepare("SELECT hash, flags, size, name FROM catalog WHERE hash IS NOT NULL")
        .map_err(sql)?;
    let mut q = stmt.query([]).map_err(sql)?;
    while let Some(r) = q.next().map_err(sql)? {
        let hash: Vec<u8> = r.get(0).map_err(sql)?;
        let flags: i64 = r.get::<_, Option<i64>>(1).map_err(sql)?.unwrap_or(0);
        let size: i64 = r.get::<_, Option<i64>>(2).map_err(sql)?.unwrap_or(0);
        let name = text_of(r, 3);
        let Some(hash) = ContentHash::from_slice(&hash) else {
            walk.problems.push(format!(
                "{what}: entry {name:?} has a {}-byte hash",
                hash.len()
            ));
            continue;
        };
        if flags & FLAG_DIR != 0 {
            walk.problems
                .push(format!("{what}: directory {name:?} carries a hash"));
            continue;
        }
        let regular = flags & FLAG_FILE != 0 && flags & (FLAG_LINK | FLAG_SPECIAL) == 0;
        if !regular || flags & FLAG_EXTERNAL != 0 {
            continue;
        }
        if flags & FLAG_CHUNKED != 0 {
            walk.bulk.insert(hash);
            continue;
        }
        walk.found(
            hash,
            Suffix::None,
            Expect {
                size: u64::try_from(size).ok(),
                compressed: (flags >> 11) & 7 != 1,
            },
        );
    }

    let mut stmt = conn
        .prepare(
            "SELECT c.hash, c.size, k.flags FROM chunks c LEFT JOIN catalog k \
             ON c.md5path_1 = k.md5path_1 AND c.md5path_2 = k.md5path_2",
        )
        .map_err(sql)?;
    let mut q = stmt.query([]).map_err(sql)?;
    while let Some(r) = q.next().map_err(sql)? {
        let hash: Option<Vec<u8>> = r.get(0).map_err(sql)?;
        let size: i64 = r.get::<_, Option<i64>>(1).map_err(sql)?.unwrap_or(0);
        let flags: i64 = r.get::<_, Option<i64>>(2).map_err(sql)?.unwrap_or(0);
        if flags & FLAG_EXTERNAL != 0 {
            continue;
        }
        match hash.as_deref().and_then(ContentHash::from_slice) {
            Some(h) => {
                walk.found(
                    h,
                    Suffix::Partial,
                    Expect {
                        size: u64::try_from(size).ok(),
                        compressed: (flags >> 11) & 7 != 1,
                    },
                );
            }
            None => walk
                .problems
                .push(format!("{what}: chunk row without a valid hash")),
        }
    }

    let mut stmt = conn
        .prepare("SELECT path, sha1, size FROM nested_catalogs")
        .map_err(sql)?;
    let mut q = stmt.query([]).map_err(sql)?;
    while let Some(r) = q.next().map_err(sql)? {
        let path = text_of(r, 0);
        let text: String = r
            .get::<_, Option<String>>(1)
            .map_err(sql)?
            .unwrap_or_default();
        let size: i64 = r.get::<_, Option<i64>>(2).map_err(sql)?.unwrap_or(0);
        match ContentHash::from_hex(&text) {
            Some(hash) => stack.push((
                path,
                CatalogRef {
                    hash,
                    size: u64::try_from(size).unwrap_or(0),
                },
            )),
            None => walk.problems.push(format!(
                "{what}: nested catalog {path}: invalid hash {text:?}"
            )),
        }
    }
    Ok(())
}

/// A TEXT (or BLOB) column as lossy UTF-8; names are raw bytes in catalogs.
fn text_of(r: &rusqlite::Row<'_>, idx: usize) -> String {
    use rusqlite::types::ValueRef;
    match r.get_ref(idx) {
        Ok(ValueRef::Text(b)) | Ok(ValueRef::Blob(b)) => String::from_utf8_lossy(b).into_owned(),
        _ => String::new(),
    }
}

/// A TEXT or BLOB column's bytes (names and symlink targets are raw bytes); empty for NULL.
pub(crate) fn bytes_of(r: &rusqlite::Row<'_>, idx: usize) -> Vec<u8> {
    use rusqlite::types::ValueRef;
    match r.get_ref(idx) {
        Ok(ValueRef::Text(b)) | Ok(ValueRef::Blob(b)) => b.to_vec(),
        _ => Vec::new(),
    }
}
