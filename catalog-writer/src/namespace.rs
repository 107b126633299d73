//! The repository namespace: a tree of catalogs loaded lazily, changed in memory, and written
//! back bottom-up (only catalogs on changed paths are rewritten).
//!
//! Directories are held in memory as [`DirNode`]s; a nested catalog that was not needed yet is
//! a stub (its hash, size and mountpoint row). Every change marks the directories on its path
//! dirty, so a catalog must be rewritten exactly when its root directory is dirty.

use crate::entry::{Entry, EntryKind};
use crate::hash::{ContentHash, Suffix};
use crate::node::{self, Child, DirNode, LinkIds, MARKER};
use crate::pathhash::display;
use crate::sql::Counts;
use crate::tree::Node;
use crate::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::Mutex;

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
    /// Catalogs stored by this commit (catalogs whose content came out the same as the stored
    /// version are kept, not rewritten, and not counted).
    pub catalogs_written: usize,
    pub catalogs_total: usize,
    /// Whether `root` differs from the root catalog the namespace was opened at (or last
    /// committed); `false` means the repository says exactly what it said before. Always
    /// `true` for the first commit of [`Namespace::empty`].
    pub changed: bool,
}

/// The repository namespace.
pub struct Namespace {
    root: DirNode,
    ids: LinkIds,
    /// `self + subtree` counters of stored catalogs seen so far, by catalog hash.
    known: Mutex<HashMap<ContentHash, Counts>>,
    /// Paths to mark dirty after the current operation (see `flush_pending`).
    pending: Vec<Vec<u8>>,
}

/// How [`Namespace::dir_mut`] treats the directories on the way.
#[derive(Clone, Copy)]
enum Walk<'a> {
    /// Only look; a missing or non-directory component gives `None`.
    Find,
    /// Mark every directory on the way dirty; a missing component gives `None`.
    Mark,
    /// Mark dirty and create missing directories with this metadata.
    Create(&'a Entry),
}

pub(crate) fn path_error(path: &[u8], reason: impl Into<String>) -> Error {
    Error::Path {
        path: display(path),
        reason: reason.into(),
    }
}

/// `paths` without those below another of them (whose catalog writes theirs too) and
/// without repeats, so that the subtrees written in parallel are disjoint.
fn outermost<'a>(paths: &[&'a [u8]]) -> Vec<&'a [u8]> {
    let below = |p: &[u8], q: &[u8]| p.len() > q.len() && p.starts_with(q) && p[q.len()] == b'/';
    let mut kept: Vec<&[u8]> = Vec::new();
    for p in paths {
        if !paths.iter().any(|q| below(p, q)) && !kept.contains(p) {
            kept.push(p);
        }
    }
    kept
}

/// Splits `/a/b` into `[a, b]`; the root `""` gives no components.
pub(crate) fn components(path: &[u8]) -> Result<Vec<&[u8]>> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    if path[0] != b'/' {
        return Err(path_error(
            path,
            "repository paths are absolute (start with '/')",
        ));
    }
    let comps: Vec<&[u8]> = path[1..].split(|&b| b == b'/').collect();
    if comps.iter().any(|c| !valid_name(c)) {
        return Err(path_error(path, "empty, '.' or '..' path component"));
    }
    Ok(comps)
}

pub(crate) fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= NAME_MAX
        && name != b"."
        && name != b".."
        && !name.contains(&b'/')
        && !name.contains(&0)
}

/// Longest name a client can look up (Linux `NAME_MAX`).
pub const NAME_MAX: usize = 255;
/// Longest symlink target a client can return from `readlink` (Linux `PATH_MAX` less the
/// terminating NUL).
pub const SYMLINK_MAX: usize = 4095;

/// Most directory levels a path in the repository may have. Namespaces are read, compared,
/// written and dropped by recursive walks, one stack frame or more per level; sources stop
/// trees at 512 levels, and this leaves room for where they are placed (`--path`, an image
/// under `/.flat/…`), not for trees stacked on trees until the walks overflow the stack.
pub const MAX_PATH_DEPTH: usize = 544;

/// Levels below `node`: 0 for a leaf or an empty directory.
fn levels_below(node: &Node) -> usize {
    let mut deepest = 0;
    let mut todo = vec![(node, 0usize)];
    while let Some((node, level)) = todo.pop() {
        deepest = deepest.max(level);
        if let Node::Dir(d) = node {
            todo.extend(d.children.values().map(|c| (c, level + 1)));
        }
    }
    deepest
}

/// Where no tree may go: below a directory named like a nested catalog marker (every such
/// name is taken for one), and into `/.cvmfs`, which CernVM-FS keeps for itself (its
/// snapshots; `cvmfs_server` refuses it too).
fn check_placement(path: &[u8], comps: &[&[u8]], node: &Node) -> Result<()> {
    const RESERVED: &[u8] = b".cvmfs";
    if let Some((_, parents)) = comps.split_last() {
        if let Some(marker) = parents
            .iter()
            .find(|c| **c == MARKER || **c == crate::node::AUTO_MARKER)
        {
            return Err(path_error(
                path,
                format!(
                    "{} cannot be a directory: the name marks a nested catalog",
                    String::from_utf8_lossy(marker)
                ),
            ));
        }
    }
    let reserved = match (comps.first(), node) {
        (Some(first), _) => *first == RESERVED,
        (None, Node::Dir(d)) => d.children.contains_key(RESERVED),
        (None, Node::Leaf(_)) => false,
    };
    if reserved {
        return Err(path_error(
            path,
            "/.cvmfs is reserved for CernVM-FS (its snapshots) and cannot be published",
        ));
    }
    Ok(())
}

/// Entries the client cannot serve, and `.cvmfscatalog`/`.cvmfsautocatalog` that are not
/// regular files: every such name is taken for a nested catalog marker, and a marker that is
/// a directory or a link would leave a catalog no client or `check` accepts.
fn check_leaf(path: &[u8], name: &[u8], node: &Node) -> Result<()> {
    let is_file = matches!(node, Node::Leaf(e) if matches!(e.kind, EntryKind::File { .. }));
    if (name == MARKER || name == crate::node::AUTO_MARKER) && !is_file {
        return Err(path_error(
            path,
            "a nested catalog marker must be a regular file",
        ));
    }
    if let Node::Leaf(Entry {
        kind: EntryKind::Symlink { target },
        ..
    }) = node
    {
        if target.len() > SYMLINK_MAX {
            return Err(path_error(
                path,
                format!(
                    "symlink target of {} bytes (at most {SYMLINK_MAX})",
                    target.len()
                ),
            ));
        }
    }
    Ok(())
}

impl Namespace {
    /// A new, empty repository: only the root directory (mode 0755, owner 0:0, given mtime).
    pub fn empty(mtime: i64) -> Namespace {
        Namespace {
            root: DirNode::new(Entry::directory(0o755, 0, 0, mtime)),
            ids: LinkIds::default(),
            known: Mutex::new(HashMap::new()),
            pending: Vec::new(),
        }
    }

    /// Opens the namespace of an existing revision; only the root catalog is loaded now.
    pub fn open(root: CatalogRef, objects: &dyn Objects) -> crate::Result<Namespace> {
        let mut ids = LinkIds::default();
        let loaded = node::load(&root, b"", objects, &mut ids)?;
        let mut ns = Namespace {
            root: loaded.root,
            ids,
            known: Mutex::new(HashMap::new()),
            pending: loaded.inconsistent,
        };
        ns.remember_loaded();
        ns.flush_pending();
        Ok(ns)
    }

    fn remember_loaded(&mut self) {
        if let Some(cat) = &self.root.cat {
            self.known_insert(cat.cref.hash, cat.stats.totals());
        }
    }

    fn known_insert(&self, hash: ContentHash, totals: Counts) {
        if let Ok(mut m) = self.known.lock() {
            m.insert(hash, totals);
        }
    }

    /// Metadata of the entry at `path` (`b""` = root), loading catalogs on the way.
    pub fn entry(&mut self, path: &[u8], objects: &dyn Objects) -> crate::Result<Option<Entry>> {
        let comps = components(path)?;
        let Some((last, parents)) = comps.split_last() else {
            return Ok(Some(self.root.meta.clone()));
        };
        let found = self
            .dir_mut(parents, objects, Walk::Find)?
            .and_then(|d| d.children.get(*last))
            .map(Child::entry);
        self.flush_pending();
        Ok(found)
    }

    /// Names and metadata of a directory's children; `None` if `path` is not a directory.
    // The signature is part of the API contract other crates build against.
    #[allow(clippy::type_complexity)]
    pub fn list(
        &mut self,
        path: &[u8],
        objects: &dyn Objects,
    ) -> crate::Result<Option<Vec<(Vec<u8>, Entry)>>> {
        let comps = components(path)?;
        let found = self.dir_mut(&comps, objects, Walk::Find)?.map(|d| {
            d.children
                .iter()
                .map(|(n, c)| (n.clone(), c.entry()))
                .collect()
        });
        self.flush_pending();
        Ok(found)
    }

    /// Puts `node` at `path`, replacing whatever was there (a whole subtree, nested catalogs
    /// included). Missing parents are created as directories with `parent_meta`.
    pub fn replace(
        &mut self,
        path: &[u8],
        node: Node,
        parent_meta: &Entry,
        objects: &dyn Objects,
    ) -> crate::Result<()> {
        let comps = components(path)?;
        if let Some(last) = comps.last() {
            check_leaf(path, last, &node)?;
        }
        check_placement(path, &comps, &node)?;
        let depth = comps.len() + levels_below(&node);
        if depth > MAX_PATH_DEPTH {
            return Err(path_error(
                path,
                format!(
                    "the tree placed here reaches {depth} directory levels (at most \
                     {MAX_PATH_DEPTH})"
                ),
            ));
        }
        let new = graft(node, path)?;
        let Some((last, parents)) = comps.split_last() else {
            let Child::Dir(mut d) = new else {
                return Err(path_error(path, "the repository root must be a directory"));
            };
            if d.has_marker() {
                return Err(path_error(
                    b"/.cvmfscatalog",
                    "a nested catalog marker in the repository root",
                ));
            }
            // Keep what is known about the stored root catalog: previous_revision and the
            // counters of its old nested catalogs.
            d.cat = self.root.cat.take();
            self.root = *d;
            return Ok(());
        };
        if parents.is_empty() && *last == MARKER {
            return Err(path_error(
                path,
                "a nested catalog marker in the repository root",
            ));
        }
        let mut dir_meta = parent_meta.clone();
        dir_meta.kind = EntryKind::Directory;
        dir_meta.hardlink = None;
        let parent = self
            .dir_mut(parents, objects, Walk::Create(&dir_meta))?
            .ok_or_else(|| path_error(path, "parent is not a directory"))?;
        let mut new = new;
        let old = match parent.children.get(*last) {
            Some(Child::Stub(s)) => Some(s.cref),
            Some(Child::Dir(d)) => d.cat.as_ref().map(|c| c.cref).or(d.prev),
            _ => None,
        };
        if let Child::Dir(d) = &mut new {
            d.prev = old;
        }
        parent.children.insert(last.to_vec(), new);
        self.flush_pending();
        Ok(())
    }

    /// Removes `path` and everything below it; returns whether it existed.
    pub fn remove(&mut self, path: &[u8], objects: &dyn Objects) -> crate::Result<bool> {
        let comps = components(path)?;
        let Some((last, parents)) = comps.split_last() else {
            return Err(path_error(path, "the repository root cannot be removed"));
        };
        let exists = self
            .dir_mut(parents, objects, Walk::Find)?
            .is_some_and(|d| d.children.contains_key(*last));
        if !exists {
            return Ok(false);
        }
        if let Some(d) = self.dir_mut(parents, objects, Walk::Mark)? {
            d.children.remove(*last);
        }
        self.flush_pending();
        Ok(true)
    }

    /// Whether anything changed since `empty`/`open`/the last `commit`.
    pub fn is_dirty(&self) -> bool {
        self.root.dirty
    }

    /// Writes every changed catalog bottom-up through `objects` and returns the new root. A
    /// changed catalog whose new content (every row, chunk, nested catalog reference and
    /// counter; not `revision`, `last_modified`, `previous_revision`) equals its stored
    /// version is kept as it is, so an identical tree grafted again yields the same root and
    /// [`CommitReport::changed`] `false`.
    pub fn commit(
        &mut self,
        opts: &CommitOptions,
        objects: &dyn Objects,
    ) -> crate::Result<CommitReport> {
        let empty = crate::zlib::compress(b"");
        objects
            .store(&crate::hash::EMPTY_OBJECT, Suffix::None, &empty)
            .map_err(|source| Error::Io {
                context: format!("storing the empty object {}", crate::hash::EMPTY_OBJECT),
                source,
            })?;
        if opts.apply_dirtab {
            crate::dirtab::apply(self, objects)?;
        }
        self.flush_pending();
        if self.root.has_marker() {
            return Err(path_error(
                b"/.cvmfscatalog",
                "a nested catalog marker in the repository root",
            ));
        }
        if opts.max_entries > 0 {
            crate::split::autosplit(&mut self.root, opts.max_entries);
        }
        let ctx = crate::commit::Ctx {
            opts,
            objects,
            known: &self.known,
            release_leaves: false,
        };
        let before = self.root.cat.as_ref().map(|c| c.cref);
        let built = crate::commit::commit_catalog(&mut self.root, Vec::new(), None, &ctx)?;
        clear_dirty(&mut self.root);
        let total = 1 + built.stats.self_.nested + built.stats.subtree.nested;
        Ok(CommitReport {
            root: built.cref,
            catalogs_written: built.written,
            catalogs_total: usize::try_from(total).unwrap_or(0),
            changed: before != Some(built.cref),
        })
    }

    /// Writes the catalog rooted at `path` (a directory with a `.cvmfscatalog` marker, and
    /// the nested catalogs below it) now rather than at [`commit`](Self::commit), which then
    /// takes it as it is. Lets a caller write the catalogs of finished subtrees while it is
    /// still busy with others. `opts` must be those of the coming commit. Returns the number
    /// of catalogs written: none when the directory is not a dirty catalog root, or when
    /// `/.cvmfsdirtab` rules apply (they are only read at commit and may place markers here).
    pub fn commit_subtree(
        &mut self,
        path: &[u8],
        opts: &CommitOptions,
        objects: &dyn Objects,
    ) -> crate::Result<usize> {
        self.commit_subtrees(&[path], opts, objects)
    }

    /// [`commit_subtree`](Self::commit_subtree) for several disjoint subtrees, written in
    /// parallel: each is taken out of the tree, written, and put back unloaded (a stub of
    /// its stored catalog, as [`Namespace::open`] leaves nested catalogs): a batch of images
    /// would otherwise hold every image's tree until the final commit. A later change below
    /// one loads its catalog again. After an error the subtrees that failed are gone from the
    /// namespace (their leaves are dropped while their catalogs are written): the caller must
    /// not commit it.
    pub fn commit_subtrees(
        &mut self,
        paths: &[&[u8]],
        opts: &CommitOptions,
        objects: &dyn Objects,
    ) -> crate::Result<usize> {
        use rayon::prelude::*;
        if opts.apply_dirtab && self.root.children.contains_key(crate::dirtab::DIRTAB) {
            return Ok(0);
        }
        self.flush_pending();
        let mut detached = Vec::new();
        for path in outermost(paths) {
            if let Some(dir) = self.detach_catalog_root(path)? {
                detached.push((path.to_vec(), dir));
            }
        }
        let ctx = crate::commit::Ctx {
            opts,
            objects,
            known: &self.known,
            release_leaves: true,
        };
        let written: Vec<crate::Result<usize>> = detached
            .par_iter_mut()
            .map(|(path, dir)| {
                if opts.max_entries > 0 {
                    crate::split::autosplit(dir, opts.max_entries);
                }
                let built = crate::commit::commit_catalog(dir, path.clone(), None, &ctx)?;
                clear_dirty(dir);
                Ok(built.written)
            })
            .collect();
        for ((path, dir), result) in detached.into_iter().zip(&written) {
            // A subtree whose catalogs could not all be written may have lost leaves already:
            // it is left out rather than committed later without them.
            if result.is_ok() {
                self.attach(&path, unloaded(&path, dir)?)?;
            }
        }
        written.into_iter().sum()
    }

    /// Takes the dirty catalog root at `path` out of the tree (only what is in memory: a
    /// subtree just grafted has no stubs on its path); `None` if there is no such directory.
    fn detach_catalog_root(&mut self, path: &[u8]) -> Result<Option<Box<DirNode>>> {
        let comps = components(path)?;
        let Some((last, above)) = comps.split_last() else {
            return Ok(None);
        };
        let Some(parent) = self.in_memory_dir(above) else {
            return Ok(None);
        };
        let is_dirty_root =
            matches!(parent.children.get(*last), Some(Child::Dir(d)) if d.has_marker() && d.dirty);
        if !is_dirty_root {
            return Ok(None);
        }
        match parent.children.remove(*last) {
            Some(Child::Dir(d)) => Ok(Some(d)),
            _ => Ok(None),
        }
    }

    /// Puts back what [`Namespace::detach_catalog_root`] took out.
    fn attach(&mut self, path: &[u8], child: Child) -> Result<()> {
        let comps = components(path)?;
        if let Some((last, above)) = comps.split_last() {
            if let Some(parent) = self.in_memory_dir(above) {
                parent.children.insert(last.to_vec(), child);
            }
        }
        Ok(())
    }

    /// The loaded directory at `comps`, if every directory on the way is in memory.
    fn in_memory_dir(&mut self, comps: &[&[u8]]) -> Option<&mut DirNode> {
        let mut dir = &mut self.root;
        for comp in comps {
            dir = match dir.children.get_mut(*comp) {
                Some(Child::Dir(d)) => d,
                _ => return None,
            };
        }
        Some(dir)
    }

    /// The directory at `comps`, loading nested catalogs on the way.
    fn dir_mut(
        &mut self,
        comps: &[&[u8]],
        objects: &dyn Objects,
        walk: Walk<'_>,
    ) -> Result<Option<&mut DirNode>> {
        let mark = !matches!(walk, Walk::Find);
        let mut path = Vec::new();
        let mut cur = &mut self.root;
        for comp in comps {
            if mark {
                cur.dirty = true;
            }
            path.push(b'/');
            path.extend_from_slice(comp);
            if let Some(Child::Stub(stub)) = cur.children.get(*comp) {
                let loaded = node::load(&stub.cref, &path, objects, &mut self.ids)?;
                if let (Some(cat), Ok(mut known)) = (&loaded.root.cat, self.known.lock()) {
                    known.insert(cat.cref.hash, cat.stats.totals());
                }
                self.pending.extend(loaded.inconsistent);
                cur.children
                    .insert(comp.to_vec(), Child::Dir(Box::new(loaded.root)));
            }
            if let Walk::Create(meta) = walk {
                if !cur.children.contains_key(*comp) {
                    cur.children.insert(
                        comp.to_vec(),
                        Child::Dir(Box::new(DirNode::new(meta.clone()))),
                    );
                }
            }
            cur = match cur.children.get_mut(*comp) {
                Some(Child::Dir(d)) => d,
                Some(_) if matches!(walk, Walk::Create(_)) => {
                    return Err(path_error(&path, "not a directory"));
                }
                _ => return Ok(None),
            };
        }
        if mark {
            cur.dirty = true;
        }
        Ok(Some(cur))
    }

    /// Loaded catalogs whose markers disagree with their stored nesting get rewritten: mark
    /// their paths dirty once the operation that loaded them is done.
    fn flush_pending(&mut self) {
        for p in std::mem::take(&mut self.pending) {
            self.mark_dirty(&p);
        }
    }

    /// Marks the loaded directories on `path` dirty (no loading).
    pub(crate) fn mark_dirty(&mut self, path: &[u8]) {
        let Ok(comps) = components(path) else { return };
        let mut cur = &mut self.root;
        cur.dirty = true;
        for comp in comps {
            cur = match cur.children.get_mut(comp) {
                Some(Child::Dir(d)) => d,
                _ => return,
            };
            cur.dirty = true;
        }
    }

    /// The directory at `path` for in-crate helpers (dirtab), loading on the way.
    /// Pending marks are flushed by `commit` after the dirtab pass.
    pub(crate) fn dir_at(
        &mut self,
        path: &[u8],
        objects: &dyn Objects,
        mark: bool,
    ) -> Result<Option<&mut DirNode>> {
        let comps = components(path)?;
        self.dir_mut(&comps, objects, if mark { Walk::Mark } else { Walk::Find })
    }

    /// The root directory node.
    pub(crate) fn root_node(&self) -> &DirNode {
        &self.root
    }
}

/// Converts a source tree into namespace nodes, checking names.
fn graft(node: Node, path: &[u8]) -> Result<Child> {
    Ok(match node {
        Node::Leaf(e) if e.is_dir() => {
            let mut d = DirNode::new(e);
            d.meta.hardlink = None;
            Child::Dir(Box::new(d))
        }
        Node::Leaf(e) => Child::Leaf(e),
        Node::Dir(dir) => {
            let mut meta = dir.meta;
            meta.kind = EntryKind::Directory;
            meta.hardlink = None;
            let mut d = DirNode::new(meta);
            // Collected into a vector first: a map built from sorted pairs has full nodes, one
            // built by inserting them one by one is left about half empty.
            let mut children = Vec::with_capacity(dir.children.len());
            for (name, child) in dir.children {
                if !valid_name(&name) {
                    return Err(path_error(
                        path,
                        format!(
                            "invalid entry name {:?}{}",
                            String::from_utf8_lossy(&name),
                            if name.len() > NAME_MAX {
                                format!(" ({} bytes, at most {NAME_MAX})", name.len())
                            } else {
                                String::new()
                            }
                        ),
                    ));
                }
                let child_path = crate::pathhash::join(path, &name);
                check_leaf(&child_path, &name, &child)?;
                children.push((name, graft(child, &child_path)?));
            }
            d.children = BTreeMap::from_iter(children);
            Child::Dir(Box::new(d))
        }
    })
}

/// A catalog root just written, as the stub its parent's catalog will name: the mountpoint
/// row the parent's commit would make of the directory, and the stored catalog.
fn unloaded(path: &[u8], dir: Box<DirNode>) -> Result<Child> {
    let (Some(cat), false) = (dir.cat.as_ref(), dir.dirty) else {
        return Ok(Child::Dir(dir));
    };
    let parent = crate::pathhash::parent_path(path).unwrap_or_default();
    let row = crate::rows::dir_row(
        path,
        crate::pathhash::PathHash::of(parent),
        &dir.meta,
        dir.size,
        dir.linkcount(),
        crate::rows::DirRole::Mountpoint,
    )?;
    let entry = crate::rows::row_entry(&row, path, &[])?;
    Ok(Child::Stub(Box::new(node::Stub {
        cref: cat.cref,
        row,
        entry,
    })))
}

fn clear_dirty(dir: &mut DirNode) {
    if !dir.dirty {
        return;
    }
    dir.dirty = false;
    for c in dir.children.values_mut() {
        if let Child::Dir(d) = c {
            clear_dirty(d);
        }
    }
}
