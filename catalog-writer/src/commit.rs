//! Writing the dirty catalogs of a namespace, children first.

use crate::entry::Entry;
use crate::fingerprint::Fingerprint;
use crate::hash::{ContentHash, Suffix};
use crate::namespace::{CatalogRef, CommitOptions, Objects};
use crate::node::{fetch_db, load_totals, CatInfo, Child, DirNode};
use crate::pathhash::{display, join, parent_path, PathHash};
use crate::rows::{dir_row, leaf_row, DirRole};
use crate::sql::{self, CatalogDb, ChunkRow, Counts, NestedRow, Row, Statistics};
use crate::{Error, Result};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

/// What every catalog build needs.
pub struct Ctx<'a> {
    pub opts: &'a CommitOptions,
    pub objects: &'a dyn Objects,
    /// `self + subtree` counters of stored catalogs, by hash.
    pub known: &'a Mutex<HashMap<ContentHash, Counts>>,
    /// The caller unloads what it commits: each catalog drops its leaves as soon as its rows
    /// are built, so that they are not held while SQLite holds the same entries as pages.
    pub release_leaves: bool,
}

/// The outcome for one catalog (written now or kept).
pub struct Built {
    pub cref: CatalogRef,
    pub stats: Statistics,
    /// Catalogs written at or below this one.
    pub written: usize,
}

/// A direct nested catalog of the catalog being built: totals are `None` for stubs that were
/// never loaded.
type Kid = (Vec<u8>, CatalogRef, Option<Counts>);

/// Writes the catalog rooted at `dir` (mounted at `path`) if it is dirty, after its dirty
/// nested catalogs (siblings in parallel). `hint` is the catalog the parent's previous version
/// had mounted at `path`, for directories that carry no previous catalog themselves (they
/// were grafted below a replaced directory).
pub fn commit_catalog(
    dir: &mut DirNode,
    path: Vec<u8>,
    hint: Option<CatalogRef>,
    ctx: &Ctx<'_>,
) -> Result<Built> {
    if !dir.dirty {
        if let Some(cat) = &dir.cat {
            return Ok(Built {
                cref: cat.cref,
                stats: cat.stats,
                written: 0,
            });
        }
    }
    let old = previous_version(dir, &path, hint, ctx);
    let old_kids: HashMap<&[u8], CatalogRef> = old
        .iter()
        .flat_map(|o| o.children.iter().map(|(p, c)| (p.as_slice(), *c)))
        .collect();
    let mut kids = Vec::new();
    collect_kids(dir, &path, &mut kids);
    let built: Vec<(Vec<u8>, Built)> = kids
        .into_par_iter()
        .map(|(p, d)| {
            let hint = old_kids.get(p.as_slice()).copied();
            commit_catalog(d, p.clone(), hint, ctx).map(|b| (p, b))
        })
        .collect::<Result<_>>()?;
    let written_below: usize = built.iter().map(|(_, b)| b.written).sum();
    let built: HashMap<Vec<u8>, Built> = built.into_iter().collect();

    let mut region = Region {
        built: &built,
        rows: Vec::new(),
        chunks: Vec::new(),
        nested: Vec::new(),
        counts: Counts::default(),
        next_group: 0,
        kids: Vec::new(),
    };
    region.emit_root(dir, &path)?;
    if ctx.release_leaves {
        drop_region_leaves(dir);
    }
    let subtree = subtree_counts(dir.cat.as_deref(), &region.kids, ctx)?;
    let stats = Statistics {
        self_: region.counts,
        subtree,
    };
    let revision = match &old {
        _ if path.is_empty() => ctx.opts.revision,
        Some(o) => o.revision + 1,
        None => 1,
    };
    let previous = old.as_ref().map(|o| o.cref.hash);
    let db = CatalogDb {
        properties: properties(ctx.opts, &path, revision, previous),
        rows: region.rows,
        chunks: region.chunks,
        nested: region.nested,
        bind_mountpoints: Vec::new(),
        statistics: stats.pairs().into_iter().collect(),
        has_mtimens: true,
    };
    let content = Fingerprint::of(&db);
    let children: Vec<(Vec<u8>, CatalogRef)> = region
        .kids
        .iter()
        .map(|(p, c, _)| (p.clone(), *c))
        .collect();
    let (cref, written, revision) = match old.filter(|o| o.content == content && o.root_first) {
        // It would say exactly what the stored catalog says: keep that one, so the parent's
        // `nested_catalogs` row (and with it the parent) stays the same too.
        Some(o) => (o.cref, written_below, o.revision),
        None => (store(db, &path, ctx)?, written_below + 1, revision),
    };
    if let Ok(mut known) = ctx.known.lock() {
        known.insert(cref.hash, stats.totals());
    }
    dir.cat = Some(Box::new(CatInfo {
        cref,
        stats,
        children,
        content,
        revision,
        root_first: true,
    }));
    dir.prev = None;
    Ok(Built {
        cref,
        stats,
        written,
    })
}

/// The stored catalog this one replaces: the one loaded or last written here, else the one
/// that was at this path before a `replace`, else the one the parent had mounted here.
fn previous_version(
    dir: &DirNode,
    path: &[u8],
    hint: Option<CatalogRef>,
    ctx: &Ctx<'_>,
) -> Option<CatInfo> {
    if let Some(cat) = &dir.cat {
        return Some(CatInfo::clone(cat));
    }
    let cref = dir.prev.or(hint)?;
    // Only used to recognise unchanged content and for `previous_revision`: an old catalog
    // that cannot be read any more just means the new one is written.
    let db = fetch_db(&cref, path, ctx.objects).ok()?;
    CatInfo::of_db(&cref, &db).ok()
}

/// Drops the leaves of a catalog's region, its marker excepted. What the parent catalog's rows
/// need of it (metadata, size, link count, being a catalog root) and nested catalogs stay.
fn drop_region_leaves(dir: &mut DirNode) {
    dir.children.retain(|name, child| match child {
        Child::Leaf(_) => name.as_slice() == crate::node::MARKER,
        Child::Dir(d) => {
            if !d.has_marker() {
                drop_region_leaves(d);
            }
            true
        }
        Child::Stub(_) => true,
    });
}

/// Writes `db` as a catalog object and returns its reference.
fn store(db: CatalogDb, path: &[u8], ctx: &Ctx<'_>) -> Result<CatalogRef> {
    let (packed, raw_len) = sql::write_with(db, &display(path), |raw| {
        (crate::zlib::compress_catalog(raw), raw.len())
    })?;
    let hash = ContentHash::of(&packed);
    ctx.objects
        .store(&hash, Suffix::Catalog, &packed)
        .map_err(|source| Error::Io {
            context: format!("storing catalog {hash} for {}", display(path)),
            source,
        })?;
    Ok(CatalogRef {
        hash,
        size: raw_len as u64,
    })
}

/// A catalog's properties. A nested catalog written for the first time says
/// `previous_revision` = 40 zeros, as cvmfs_server writes the null hash of a new catalog; the
/// root of a new repository has none, as after `cvmfs_server mkfs`.
fn properties(
    opts: &CommitOptions,
    path: &[u8],
    revision: u64,
    previous: Option<ContentHash>,
) -> BTreeMap<String, Vec<u8>> {
    let mut p = BTreeMap::new();
    let mut set = |k: &str, v: String| p.insert(k.to_string(), v.into_bytes());
    set("schema", "2.5".into());
    set("schema_revision", "7".into());
    set("revision", revision.to_string());
    set("last_modified", opts.timestamp.to_string());
    match previous {
        Some(h) => set("previous_revision", h.to_hex()),
        None if !path.is_empty() => set("previous_revision", "0".repeat(40)),
        None => None,
    };
    if path.is_empty() {
        set("TTL", opts.ttl.to_string());
    } else {
        p.insert("root_prefix".to_string(), path.to_vec());
    }
    p
}

/// Loaded nested catalog roots directly below the region of `dir`.
fn collect_kids<'a>(dir: &'a mut DirNode, path: &[u8], out: &mut Vec<(Vec<u8>, &'a mut DirNode)>) {
    for (name, child) in dir.children.iter_mut() {
        if let Child::Dir(d) = child {
            let p = join(path, name);
            if d.has_marker() {
                out.push((p, d));
            } else {
                collect_kids(d, &p, out);
            }
        }
    }
}

/// Rows of one catalog, gathered by walking its region.
struct Region<'a> {
    built: &'a HashMap<Vec<u8>, Built>,
    rows: Vec<Row>,
    chunks: Vec<ChunkRow>,
    nested: Vec<NestedRow>,
    counts: Counts,
    next_group: u32,
    kids: Vec<Kid>,
}

impl Region<'_> {
    fn push(&mut self, row: Row, chunks: Vec<ChunkRow>) {
        self.counts.add_row(&row, chunks.len() as i64);
        self.rows.push(row);
        self.chunks.extend(chunks);
    }

    fn emit_root(&mut self, dir: &DirNode, path: &[u8]) -> Result<()> {
        let (parent, role) = match parent_path(path) {
            None => (PathHash::ZERO, DirRole::Plain),
            Some(pp) => (PathHash::of(pp), DirRole::NestedRoot),
        };
        let row = dir_row(path, parent, &dir.meta, dir.size, dir.linkcount(), role)?;
        self.push(row, Vec::new());
        self.emit_children(dir, path)
    }

    fn add_kid(&mut self, path: Vec<u8>, cref: CatalogRef, totals: Option<Counts>) {
        self.nested.push(NestedRow {
            path: path.clone(),
            hash: cref.hash.to_hex(),
            size: cref.size,
        });
        self.kids.push((path, cref, totals));
    }

    fn emit_children(&mut self, dir: &DirNode, path: &[u8]) -> Result<()> {
        let me = PathHash::of(path);
        let groups = self.hardlink_groups(dir);
        for (name, child) in &dir.children {
            let cp = join(path, name);
            match child {
                Child::Leaf(e) => {
                    let hardlinks = groups.get(name.as_slice()).copied().unwrap_or(1);
                    let (row, chunks) = leaf_row(&cp, me, e, hardlinks)?;
                    self.push(row, chunks);
                }
                Child::Stub(s) => {
                    // Untouched nested catalog: its mountpoint row stays exactly as stored.
                    self.push(s.row.clone(), Vec::new());
                    self.add_kid(cp, s.cref, None);
                }
                Child::Dir(d) if d.has_marker() => {
                    let b = self.built.get(&cp).ok_or_else(|| Error::Path {
                        path: display(&cp),
                        reason: "nested catalog was not built".into(),
                    })?;
                    let (cref, totals) = (b.cref, b.stats.totals());
                    let row =
                        dir_row(&cp, me, &d.meta, d.size, d.linkcount(), DirRole::Mountpoint)?;
                    self.push(row, Vec::new());
                    self.add_kid(cp, cref, Some(totals));
                }
                Child::Dir(d) => {
                    let row = dir_row(&cp, me, &d.meta, d.size, d.linkcount(), DirRole::Plain)?;
                    self.push(row, Vec::new());
                    self.emit_children(d, &cp)?;
                }
            }
        }
        Ok(())
    }

    /// `hardlinks` values by child name for hardlink ids with several identical members in
    /// this directory; members alone here (or differing from the others) become plain
    /// entries, which is how cvmfs breaks up cross-directory links.
    fn hardlink_groups<'d>(&mut self, dir: &'d DirNode) -> HashMap<&'d [u8], u64> {
        let mut by_id: BTreeMap<u64, Vec<(&'d [u8], &'d Entry)>> = BTreeMap::new();
        for (name, c) in &dir.children {
            if let Child::Leaf(e) = c {
                if let Some(id) = e.hardlink {
                    by_id.entry(id).or_default().push((name.as_slice(), e));
                }
            }
        }
        let mut out = HashMap::new();
        for members in by_id.into_values() {
            let mut buckets: Vec<(&Entry, Vec<&[u8]>)> = Vec::new();
            for (name, e) in members {
                match buckets.iter_mut().find(|(rep, _)| *rep == e) {
                    Some((_, names)) => names.push(name),
                    None => buckets.push((e, vec![name])),
                }
            }
            for (_, names) in buckets.into_iter().filter(|(_, n)| n.len() > 1) {
                self.next_group += 1;
                let value = (u64::from(self.next_group) << 32) | names.len() as u64;
                out.extend(names.into_iter().map(|n| (n, value)));
            }
        }
        out
    }
}

fn known_or_load(cref: &CatalogRef, path: &[u8], ctx: &Ctx<'_>) -> Result<Counts> {
    if let Some(t) = ctx
        .known
        .lock()
        .ok()
        .and_then(|m| m.get(&cref.hash).copied())
    {
        return Ok(t);
    }
    let t = load_totals(cref, path, ctx.objects)?;
    if let Ok(mut m) = ctx.known.lock() {
        m.insert(cref.hash, t);
    }
    Ok(t)
}

fn is_known(cref: &CatalogRef, ctx: &Ctx<'_>) -> bool {
    ctx.known
        .lock()
        .map(|m| m.contains_key(&cref.hash))
        .unwrap_or(false)
}

/// `subtree_*` = Σ over direct nested catalogs of their totals. Totals of untouched stubs are
/// not loaded: they are what remains of the stored `subtree_*` after taking out the old
/// children that changed or went away — unless loading the stubs is cheaper.
fn subtree_counts(old: Option<&CatInfo>, kids: &[Kid], ctx: &Ctx<'_>) -> Result<Counts> {
    let old_set: HashSet<(&[u8], ContentHash)> = old
        .map(|o| {
            o.children
                .iter()
                .map(|(p, c)| (p.as_slice(), c.hash))
                .collect()
        })
        .unwrap_or_default();
    let mut sum = Counts::default();
    let mut untouched: Vec<(&[u8], &CatalogRef)> = Vec::new();
    for (p, cref, totals) in kids {
        match totals {
            Some(t) => sum = sum.plus(*t),
            None if old_set.contains(&(p.as_slice(), cref.hash)) => untouched.push((p, cref)),
            None => sum = sum.plus(known_or_load(cref, p, ctx)?),
        }
    }
    let Some(old) = old.filter(|_| !untouched.is_empty()) else {
        return Ok(sum);
    };
    let kept: HashSet<(&[u8], ContentHash)> = untouched.iter().map(|(p, c)| (*p, c.hash)).collect();
    let gone: Vec<&(Vec<u8>, CatalogRef)> = old
        .children
        .iter()
        .filter(|(p, c)| !kept.contains(&(p.as_slice(), c.hash)))
        .collect();
    let unknown_gone = gone.iter().filter(|(_, c)| !is_known(c, ctx)).count();
    let kept_sum = if unknown_gone <= untouched.len() {
        let mut s = old.stats.subtree;
        for (p, c) in gone {
            s = s.minus(known_or_load(c, p, ctx)?);
        }
        s
    } else {
        let mut s = Counts::default();
        for (p, c) in &untouched {
            s = s.plus(known_or_load(c, p, ctx)?);
        }
        s
    };
    Ok(sum.plus(kept_sum))
}
