//! The namespace's in-memory tree and loading catalogs into it.

use crate::entry::{Entry, EntryKind};
use crate::fingerprint::Fingerprint;
use crate::hash::{ContentHash, Suffix};
use crate::namespace::{CatalogRef, Objects, MAX_PATH_DEPTH};
use crate::pathhash::{depth_of, display, display_head, join, PathHash};
use crate::rows::{row_entry, DIR_SIZE};
use crate::sql::{self, flags, ChunkRow, Counts, Row, Statistics};
use crate::{Error, Result};
use std::collections::{BTreeMap, HashMap};

/// Name of the file that makes its directory a nested catalog.
pub const MARKER: &[u8] = b".cvmfscatalog";
/// Name of the extra marker of automatically created catalogs.
pub const AUTO_MARKER: &[u8] = b".cvmfsautocatalog";
/// Upper bound for an inflated catalog whose size is not known.
pub const MAX_CATALOG_SIZE: u64 = 4 << 30;

/// A directory loaded into memory.
#[derive(Debug)]
pub struct DirNode {
    pub meta: Entry,
    /// The stored `size` column (4096 for new directories).
    pub size: u64,
    pub children: BTreeMap<Vec<u8>, Child>,
    /// Something at or below this directory changed since the last commit.
    pub dirty: bool,
    /// Set on the root directory of a catalog that was loaded or written.
    pub cat: Option<Box<CatInfo>>,
    /// A catalog that previously lived at this path (for `previous_revision`, and to keep it
    /// when the rewrite would say the same).
    pub prev: Option<CatalogRef>,
}

/// One child of a directory.
#[derive(Debug)]
pub enum Child {
    Leaf(Entry),
    Dir(Box<DirNode>),
    /// A nested catalog that has not been loaded: its reference and its mountpoint row.
    Stub(Box<Stub>),
}

#[derive(Debug)]
pub struct Stub {
    pub cref: CatalogRef,
    pub row: Row,
    pub entry: Entry,
}

/// What is known about a stored catalog whose root is this directory.
#[derive(Clone, Debug)]
pub struct CatInfo {
    pub cref: CatalogRef,
    pub stats: Statistics,
    /// Its direct nested catalogs as stored: (mountpoint path, reference).
    pub children: Vec<(Vec<u8>, CatalogRef)>,
    /// What it says (see [`Fingerprint`]).
    pub content: Fingerprint,
    /// Its `revision` property: the root's equals the manifest's; a nested catalog counts its
    /// own versions, as cvmfs does (1 when first written, +1 each time it is rewritten).
    pub revision: u64,
    /// Its root entry is its first row, as this writer and cvmfs put it. One that is not
    /// (written by builds 6caba09..4ab82cf) is rewritten even when its content is unchanged.
    pub root_first: bool,
}

impl CatInfo {
    /// What is known about the stored catalog `cref` once its file `db` is read.
    pub fn of_db(cref: &CatalogRef, db: &sql::CatalogDb) -> Result<CatInfo> {
        let children = db
            .nested
            .iter()
            .map(|n| Ok((n.path.clone(), nested_ref(cref, n)?)))
            .collect::<Result<_>>()?;
        Ok(CatInfo {
            cref: *cref,
            stats: stats_of(db, cref)?,
            children,
            content: Fingerprint::of(db),
            root_first: db.rows.first().is_some_and(sql::is_catalog_root),
            revision: db
                .properties
                .get("revision")
                .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
                .unwrap_or(0),
        })
    }
}

impl DirNode {
    pub fn new(meta: Entry) -> DirNode {
        DirNode {
            meta,
            size: DIR_SIZE,
            children: BTreeMap::new(),
            dirty: true,
            cat: None,
            prev: None,
        }
    }

    /// Whether this directory roots a catalog (the repository root always does).
    pub fn has_marker(&self) -> bool {
        matches!(self.children.get(MARKER), Some(Child::Leaf(e)) if matches!(e.kind, EntryKind::File { .. }))
    }

    /// `2 + sub-directories` (nested catalog mountpoints included).
    pub fn linkcount(&self) -> u32 {
        let subdirs = self
            .children
            .values()
            .filter(|c| matches!(c, Child::Dir(_) | Child::Stub(_)))
            .count();
        2u32.saturating_add(u32::try_from(subdirs).unwrap_or(u32::MAX - 2))
    }
}

impl Child {
    pub fn entry(&self) -> Entry {
        match self {
            Child::Leaf(e) => e.clone(),
            Child::Dir(d) => d.meta.clone(),
            Child::Stub(s) => s.entry.clone(),
        }
    }
}

/// Hands out hardlink ids for groups read from catalogs; high values keep them apart from the
/// inode-derived ids sources use.
#[derive(Debug)]
pub struct LinkIds(u64);

impl Default for LinkIds {
    fn default() -> Self {
        LinkIds(1 << 63)
    }
}

impl LinkIds {
    pub fn next(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
}

/// Fetches and inflates a catalog object, checking the expected size when it is known.
pub fn fetch(cref: &CatalogRef, path: &[u8], objects: &dyn Objects) -> Result<Vec<u8>> {
    let ctx = || format!("catalog {} at {}", cref.hash, display(path));
    let packed = objects
        .load(&cref.hash, Suffix::Catalog)
        .map_err(|source| Error::Io {
            context: format!("loading {}", ctx()),
            source,
        })?;
    // Before anything is read from it: a catalog whose bytes are not its name could nest a
    // catalog that nests it again, and every walk would go round for ever.
    if ContentHash::of(&packed) != cref.hash {
        return Err(Error::Corrupt {
            catalog: cref.hash.to_hex(),
            reason: format!("{}: its bytes do not hash to its name", ctx()),
        });
    }
    let limit = if cref.size > 0 {
        cref.size
    } else {
        MAX_CATALOG_SIZE
    };
    let raw = crate::zlib::decompress_sqlite(&packed, limit).map_err(|source| Error::Io {
        context: format!("inflating {}", ctx()),
        source,
    })?;
    if cref.size > 0 && raw.len() as u64 != cref.size {
        return Err(Error::Corrupt {
            catalog: cref.hash.to_hex(),
            reason: format!("inflated to {} bytes, expected {}", raw.len(), cref.size),
        });
    }
    Ok(raw)
}

/// Fetches and parses a catalog.
pub fn fetch_db(cref: &CatalogRef, path: &[u8], objects: &dyn Objects) -> Result<sql::CatalogDb> {
    let raw = fetch(cref, path, objects)?;
    sql::read(&raw, &cref.hash.to_hex())
}

fn corrupt(cref: &CatalogRef, reason: String) -> Error {
    Error::Corrupt {
        catalog: cref.hash.to_hex(),
        reason,
    }
}

/// Parses a nested catalog reference from a `nested_catalogs` row.
pub fn nested_ref(owner: &CatalogRef, n: &sql::NestedRow) -> Result<CatalogRef> {
    let hash = ContentHash::from_hex(&n.hash).ok_or_else(|| {
        corrupt(
            owner,
            format!(
                "nested catalog {}: unsupported hash text {:?}",
                display(&n.path),
                n.hash
            ),
        )
    })?;
    Ok(CatalogRef { hash, size: n.size })
}

/// The statistics of a stored catalog.
pub fn stats_of(db: &sql::CatalogDb, cref: &CatalogRef) -> Result<Statistics> {
    Statistics::from_table(&db.statistics).map_err(|reason| corrupt(cref, reason))
}

/// A catalog loaded as a directory tree, plus paths whose markers disagree with the stored
/// nesting (the caller marks them dirty so the next commit repairs them).
pub struct Loaded {
    pub root: DirNode,
    pub inconsistent: Vec<Vec<u8>>,
}

/// Loads the catalog `cref` mounted at `prefix` (`b""` for the root catalog).
pub fn load(
    cref: &CatalogRef,
    prefix: &[u8],
    objects: &dyn Objects,
    ids: &mut LinkIds,
) -> Result<Loaded> {
    let db = fetch_db(cref, prefix, objects)?;
    let info = CatInfo::of_db(cref, &db)?;
    let nested: HashMap<Vec<u8>, CatalogRef> = info.children.iter().cloned().collect();
    let root_hash = PathHash::of(prefix);
    let root_row = db
        .rows
        .iter()
        .find(|r| r.md5 == root_hash)
        .ok_or_else(|| corrupt(cref, format!("no root entry for {}", display(prefix))))?;
    if !root_row.is_dir() {
        return Err(corrupt(
            cref,
            format!("root entry {} is not a directory", display(prefix)),
        ));
    }
    let mut by_parent: HashMap<PathHash, Vec<&Row>> = HashMap::new();
    for r in &db.rows {
        if r.md5 != root_hash {
            by_parent.entry(r.parent).or_default().push(r);
        }
    }
    let mut chunks: HashMap<PathHash, Vec<ChunkRow>> = HashMap::new();
    for c in &db.chunks {
        chunks.entry(c.md5).or_default().push(c.clone());
    }
    let mut b = Builder {
        cref,
        by_parent,
        chunks,
        nested,
        ids,
        inconsistent: Vec::new(),
    };
    let mut root = b.dir(root_row, prefix)?;
    if !prefix.is_empty() && !root.has_marker() {
        b.inconsistent.push(prefix.to_vec());
    }
    root.dirty = false;
    root.cat = Some(Box::new(info));
    Ok(Loaded {
        root,
        inconsistent: b.inconsistent,
    })
}

struct Builder<'a> {
    cref: &'a CatalogRef,
    by_parent: HashMap<PathHash, Vec<&'a Row>>,
    chunks: HashMap<PathHash, Vec<ChunkRow>>,
    nested: HashMap<Vec<u8>, CatalogRef>,
    ids: &'a mut LinkIds,
    inconsistent: Vec<Vec<u8>>,
}

/// A directory being built by [`Builder::dir`]: its node, path and the rows still to place.
struct Open<'r> {
    node: DirNode,
    /// Its name in its parent (empty for the directory [`Builder::dir`] was called for).
    name: Vec<u8>,
    path: Vec<u8>,
    rows: std::vec::IntoIter<&'r Row>,
    groups: HashMap<u32, u64>,
}

impl<'r> Builder<'r> {
    /// The directory `row` at `path` and everything below it in this catalog. Iterative, with
    /// the open directories on the heap: a hostile catalog's chain of directories must not
    /// overflow the stack, and a frame per level cost 6 KiB in debug builds. Deeper than
    /// [`MAX_PATH_DEPTH`] levels is refused, as no walk of a namespace goes deeper.
    fn dir(&mut self, row: &'r Row, path: &[u8]) -> Result<DirNode> {
        let mut above: Vec<Open<'r>> = Vec::new();
        let mut cur = self.open(row, path, Vec::new())?;
        loop {
            let Some(r) = cur.rows.next() else {
                let Some(parent) = above.pop() else {
                    return Ok(cur.node);
                };
                let done = std::mem::replace(&mut cur, parent);
                if done.node.has_marker() {
                    // A marker in a directory that is not a catalog root: make it one.
                    self.inconsistent.push(done.path);
                }
                let child = Child::Dir(Box::new(done.node));
                cur.node.children.insert(done.name, child);
                continue;
            };
            if r.name.is_empty() || r.name.contains(&b'/') {
                return Err(corrupt(
                    self.cref,
                    format!(
                        "bad entry name {:?} in {}",
                        display(&r.name),
                        display(&cur.path)
                    ),
                ));
            }
            let child_path = join(&cur.path, &r.name);
            if r.is_dir() && r.flags & flags::MOUNTPOINT == 0 {
                if depth_of(&child_path) > MAX_PATH_DEPTH {
                    return Err(corrupt(
                        self.cref,
                        format!(
                            "directory {} is more than {MAX_PATH_DEPTH} levels deep",
                            display_head(&child_path)
                        ),
                    ));
                }
                let child = self.open(r, &child_path, r.name.clone())?;
                above.push(std::mem::replace(&mut cur, child));
                continue;
            }
            let child = self.leaf_or_stub(r, &child_path, &mut cur.groups)?;
            cur.node.children.insert(r.name.clone(), child);
        }
    }

    /// A directory to fill: its node and its rows, taken from `by_parent`.
    fn open(&mut self, row: &Row, path: &[u8], name: Vec<u8>) -> Result<Open<'r>> {
        let mut node = DirNode::new(row_entry(row, path, &[])?);
        node.size = row.size;
        node.dirty = false;
        let rows = self
            .by_parent
            .remove(&PathHash::of(path))
            .unwrap_or_default();
        Ok(Open {
            node,
            name,
            path: path.to_vec(),
            rows: rows.into_iter(),
            groups: HashMap::new(),
        })
    }

    /// A child that is no directory of this catalog: a nested catalog's stub, or a leaf
    /// (hardlink groups numbered per directory, through `groups`).
    fn leaf_or_stub(
        &mut self,
        r: &Row,
        child_path: &[u8],
        groups: &mut HashMap<u32, u64>,
    ) -> Result<Child> {
        if r.is_dir() {
            let cref = *self.nested.get(child_path).ok_or_else(|| {
                corrupt(
                    self.cref,
                    format!(
                        "mountpoint {} is not in nested_catalogs",
                        display(child_path)
                    ),
                )
            })?;
            return Ok(Child::Stub(Box::new(Stub {
                cref,
                row: r.clone(),
                entry: row_entry(r, child_path, &[])?,
            })));
        }
        let chunks = self.chunks.remove(&r.md5).unwrap_or_default();
        let mut e = row_entry(r, child_path, &chunks)?;
        if r.group() != 0 {
            let ids = &mut *self.ids;
            e.hardlink = Some(*groups.entry(r.group()).or_insert_with(|| ids.next()));
        }
        Ok(Child::Leaf(e))
    }
}

/// `self + subtree` counters of a stored catalog, loading it.
pub fn load_totals(cref: &CatalogRef, path: &[u8], objects: &dyn Objects) -> Result<Counts> {
    let db = fetch_db(cref, path, objects)?;
    Ok(stats_of(&db, cref)?.totals())
}
