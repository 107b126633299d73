//! Structural check of a repository's catalog tree (spec Appendix B, "Per catalog") and a
//! walk over every entry. Both read catalogs written by any CVMFS writer.

use crate::entry::Entry;
use crate::hash::{ContentHash, Suffix};
use crate::namespace::{CatalogRef, Objects, MAX_PATH_DEPTH};
use crate::node::{self, Child, DirNode, LinkIds, MARKER};
use crate::pathhash::{depth_of, display, head, join, parent_path, PathHash};
use crate::sql::{flags, CatalogDb, ChunkRow, Counts, Row, Statistics, COUNTER_NAMES};
use crate::Result;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;

/// One finding: the catalog it was found in, the repository path concerned, what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub catalog: ContentHash,
    pub path: Vec<u8>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "catalog {} at {}: {}",
            self.catalog,
            display(&self.path),
            self.message
        )
    }
}

/// Result of [`verify`].
#[derive(Clone, Debug, Default)]
pub struct Verification {
    pub problems: Vec<Problem>,
    /// Every object the catalogs reference (catalogs, file contents, chunks), each once.
    pub objects: BTreeSet<(ContentHash, Suffix)>,
    /// Number of catalogs that could be read.
    pub catalogs: usize,
}

/// Checks every catalog reachable from `root`.
pub fn verify(root: CatalogRef, objects: &dyn Objects) -> Verification {
    let mut v = Verification::default();
    check_catalog(&root, b"", Mount::Root, objects, &mut v);
    v
}

/// Calls `f` for every entry of the repository, the root (`b""`) first, then depth-first in
/// bytewise name order. Only one catalog chain is held in memory at a time.
pub fn walk(
    root: CatalogRef,
    objects: &dyn Objects,
    f: &mut dyn FnMut(&[u8], &Entry),
) -> Result<()> {
    let mut ids = LinkIds::default();
    let loaded = node::load(&root, b"", objects, &mut ids)?;
    f(b"", &loaded.root.meta);
    walk_dir(&loaded.root, b"", objects, &mut ids, f)
}

/// Fetches, inflates (checking the size when `cref.size > 0`) and parses one catalog.
pub fn read_catalog(cref: &CatalogRef, objects: &dyn Objects) -> Result<CatalogDb> {
    node::fetch_db(cref, b"", objects)
}

/// Every `(path, entry)` of the repository, in [`walk`] order.
pub fn list_all(root: CatalogRef, objects: &dyn Objects) -> Result<Vec<(Vec<u8>, Entry)>> {
    let mut out = Vec::new();
    walk(root, objects, &mut |p, e| out.push((p.to_vec(), e.clone())))?;
    Ok(out)
}

fn walk_dir(
    dir: &DirNode,
    path: &[u8],
    objects: &dyn Objects,
    ids: &mut LinkIds,
    f: &mut dyn FnMut(&[u8], &Entry),
) -> Result<()> {
    for (name, child) in &dir.children {
        let p = join(path, name);
        match child {
            Child::Leaf(e) => f(&p, e),
            Child::Dir(d) => {
                f(&p, &d.meta);
                walk_dir(d, &p, objects, ids, f)?;
            }
            Child::Stub(s) => {
                let loaded = node::load(&s.cref, &p, objects, ids)?;
                f(&p, &loaded.root.meta);
                walk_dir(&loaded.root, &p, objects, ids, f)?;
            }
        }
    }
    Ok(())
}

/// Findings for one catalog.
struct Checker<'a> {
    hash: ContentHash,
    prefix: &'a [u8],
    db: &'a CatalogDb,
    by_parent: HashMap<PathHash, Vec<&'a Row>>,
    chunks: HashMap<PathHash, Vec<&'a ChunkRow>>,
    nested_paths: HashSet<&'a [u8]>,
    mountpoints: Vec<(Vec<u8>, &'a Row)>,
    visited: usize,
    v: &'a mut Verification,
}

impl Checker<'_> {
    fn problem(&mut self, path: &[u8], message: impl Into<String>) {
        self.v.problems.push(Problem {
            catalog: self.hash,
            path: path.to_vec(),
            message: message.into(),
        });
    }
}

/// Where a catalog hangs: the repository root, or below a parent's mountpoint row (if found).
#[derive(Clone, Copy)]
enum Mount<'a> {
    Root,
    Nested(Option<&'a Row>),
}

fn check_catalog(
    cref: &CatalogRef,
    prefix: &[u8],
    mount: Mount<'_>,
    objects: &dyn Objects,
    v: &mut Verification,
) -> Option<Counts> {
    if !v.objects.insert((cref.hash, Suffix::Catalog)) {
        // A catalog's rows name its mount point: one catalog cannot be mounted twice, and a
        // tree that repeats one would be checked once per path to it (exponentially often).
        v.problems.push(Problem {
            catalog: cref.hash,
            path: prefix.to_vec(),
            message: "catalog nested at more than one mount point".to_string(),
        });
        return None;
    }
    let db = match node::fetch_db(cref, prefix, objects) {
        Ok(db) => db,
        Err(e) => {
            v.problems.push(Problem {
                catalog: cref.hash,
                path: prefix.to_vec(),
                message: format!("unreadable catalog: {e}"),
            });
            return None;
        }
    };
    v.catalogs += 1;
    let mut c = Checker {
        hash: cref.hash,
        prefix,
        db: &db,
        by_parent: HashMap::new(),
        chunks: HashMap::new(),
        nested_paths: db.nested.iter().map(|n| n.path.as_slice()).collect(),
        mountpoints: Vec::new(),
        visited: 0,
        v,
    };
    let root_hash = PathHash::of(prefix);
    for r in &db.rows {
        if r.md5 != root_hash {
            c.by_parent.entry(r.parent).or_default().push(r);
        }
    }
    for ch in &db.chunks {
        c.chunks.entry(ch.md5).or_default().push(ch);
    }
    check_properties(&mut c);
    match db.rows.iter().find(|r| r.md5 == root_hash) {
        None => c.problem(prefix, "no root entry"),
        Some(root) => {
            let first = db.rows.first().is_some_and(|r| std::ptr::eq(r, root));
            if matches!(mount, Mount::Root) && !first {
                // The client's root inode is rowid 1 of the root catalog.
                c.problem(
                    prefix,
                    "root entry is not the first row (rowid 1): the client would give its \
                     inode to another entry",
                );
            }
            check_root(&mut c, root, mount);
            c.visited = 1;
            check_dir(&mut c, root, prefix);
        }
    }
    if db.rows.len() != c.visited {
        let n = db.rows.len() as i64 - c.visited as i64;
        c.problem(
            prefix,
            format!("{n} rows not reachable from the catalog root (dangling)"),
        );
    }
    check_nested_table(&mut c);
    let mountpoints = std::mem::take(&mut c.mountpoints);
    let hash = c.hash;
    let v = c.v;
    let mut subtree = Some(Counts::default());
    for n in &db.nested {
        let Some(child) = ContentHash::from_hex(&n.hash) else {
            v.problems.push(Problem {
                catalog: hash,
                path: n.path.clone(),
                message: format!("nested catalog hash {:?} is not a SHA-1 hash text", n.hash),
            });
            subtree = None;
            continue;
        };
        // Checked recursively, one catalog per level: only catalogs below this one, and not
        // deeper than any walk goes (a hostile chain would overflow the stack).
        let below = n.path.len() > prefix.len()
            && n.path.starts_with(prefix)
            && n.path[prefix.len()] == b'/';
        if !below || depth_of(&n.path) > MAX_PATH_DEPTH {
            v.problems.push(Problem {
                catalog: hash,
                path: head(&n.path).to_vec(),
                message: format!(
                    "nested catalog not below this one or more than {MAX_PATH_DEPTH} levels \
                     deep: not checked"
                ),
            });
            subtree = None;
            continue;
        }
        let row = mountpoints
            .iter()
            .find(|(p, _)| *p == n.path)
            .map(|(_, r)| *r);
        let child_ref = CatalogRef {
            hash: child,
            size: n.size,
        };
        let totals = check_catalog(&child_ref, &n.path, Mount::Nested(row), objects, v);
        subtree = subtree.zip(totals).map(|(a, b)| a.plus(b));
    }
    check_counters(&db, hash, prefix, subtree, v)
}

fn check_properties(c: &mut Checker<'_>) {
    let props = &c.db.properties;
    let prefix = c.prefix;
    let get = |k: &str| {
        props
            .get(k)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let (schema, revision) = (get("schema"), get("schema_revision"));
    if schema.as_deref() != Some("2.5") {
        c.problem(
            prefix,
            format!("property schema is {schema:?}, expected 2.5"),
        );
    }
    match revision.as_deref() {
        Some("7") if !c.db.has_mtimens => {
            c.problem(prefix, "schema_revision 7 without mtimens column")
        }
        Some("6") if c.db.has_mtimens => {
            c.problem(prefix, "schema_revision 6 with an mtimens column")
        }
        _ => {}
    }
    if get("revision")
        .and_then(|r| r.parse::<u64>().ok())
        .is_none()
    {
        c.problem(prefix, "property revision missing or not a number");
    }
    let root_prefix = props.get("root_prefix").map(Vec::as_slice).unwrap_or(b"");
    if root_prefix != prefix {
        c.problem(
            prefix,
            format!(
                "root_prefix {:?} does not match the mountpoint",
                String::from_utf8_lossy(root_prefix)
            ),
        );
    }
}

/// Flag bits that must agree between a mountpoint row and the nested catalog root row.
const COMPARED_FLAGS: u32 = !(flags::MOUNTPOINT | flags::NESTED_ROOT);

fn check_root(c: &mut Checker<'_>, root: &Row, mount: Mount<'_>) {
    let prefix = c.prefix;
    if !root.is_dir() {
        c.problem(prefix, "root entry is not a directory");
    }
    match mount {
        Mount::Root => {
            if root.flags & (flags::NESTED_ROOT | flags::MOUNTPOINT) != 0 {
                c.problem(
                    prefix,
                    format!("root catalog root entry has flags {}", root.flags),
                );
            }
            if root.parent != PathHash::ZERO {
                c.problem(prefix, "root catalog root entry parent is not (0, 0)");
            }
            if !root.name.is_empty() {
                c.problem(prefix, "root catalog root entry has a name");
            }
        }
        Mount::Nested(m) => {
            if root.flags & flags::NESTED_ROOT == 0 {
                c.problem(prefix, "nested catalog root is not flagged as nested root");
            }
            let marker = PathHash::of(&join(prefix, MARKER));
            let has_marker = c.by_parent.get(&root.md5).is_some_and(|kids| {
                kids.iter()
                    .any(|r| r.md5 == marker && kind(r.mode) == libc::S_IFREG)
            });
            if !has_marker {
                c.problem(prefix, "nested catalog without marker (.cvmfscatalog)");
            }
            let Some(m) = m else {
                c.problem(prefix, "no mountpoint row in the parent catalog");
                return;
            };
            let expect_parent = parent_path(prefix)
                .map(PathHash::of)
                .unwrap_or(PathHash::ZERO);
            if root.parent != expect_parent {
                c.problem(prefix, "nested catalog root has the wrong parent hash");
            }
            let diffs = mount_differences(m, root);
            if !diffs.is_empty() {
                c.problem(
                    prefix,
                    format!("mountpoint and nested root differ in {}", diffs.join(", ")),
                );
            }
        }
    }
}

fn mount_differences(m: &Row, r: &Row) -> Vec<&'static str> {
    let mut d = Vec::new();
    let checks: [(&'static str, bool); 11] = [
        ("name", m.name == r.name),
        ("linkcount", m.linkcount() == r.linkcount()),
        ("hardlink group", m.group() == r.group()),
        ("size", m.size == r.size),
        ("mode", m.mode == r.mode),
        ("mtime", m.mtime == r.mtime),
        ("mtimens", m.mtimens == r.mtimens),
        ("symlink", m.symlink == r.symlink),
        ("hash", m.hash == r.hash),
        ("xattr presence", m.xattr.is_some() == r.xattr.is_some()),
        (
            "flags",
            m.flags & COMPARED_FLAGS == r.flags & COMPARED_FLAGS,
        ),
    ];
    for (name, same) in checks {
        if !same {
            d.push(name);
        }
    }
    d
}

fn kind(mode: u32) -> u32 {
    mode & libc::S_IFMT
}

/// Checks the children of the directory `row` at `path`, recursing into sub-directories that
/// stay in this catalog.
fn check_dir<'a>(c: &mut Checker<'a>, row: &'a Row, path: &[u8]) {
    let children = c
        .by_parent
        .get(&PathHash::of(path))
        .cloned()
        .unwrap_or_default();
    c.visited += children.len();
    let mut subdirs = 0u32;
    let mut groups: HashMap<u32, Vec<&Row>> = HashMap::new();
    for child in &children {
        if child.name.is_empty() || child.name.contains(&b'/') {
            c.problem(
                path,
                format!("entry with invalid name {:?}", display(&child.name)),
            );
            continue;
        }
        let cp = join(path, &child.name);
        if child.md5 != PathHash::of(&cp) {
            c.problem(&cp, "path hash does not match the path");
        }
        if child.name == MARKER && path != c.prefix {
            c.problem(&cp, "abandoned nested catalog marker");
        }
        if child.linkcount() == 0 {
            c.problem(&cp, "linkcount 0");
        }
        if child.flags & flags::DIRECT_IO != 0 && kind(child.mode) != libc::S_IFREG {
            c.problem(&cp, "direct I/O flag on a non-regular file");
        }
        if child.flags & flags::EXTERNAL != 0 && kind(child.mode) != libc::S_IFREG {
            c.problem(&cp, "external flag on a non-regular file");
        }
        if child.flags & flags::NESTED_ROOT != 0 {
            c.problem(&cp, "nested root flag below a catalog root");
        }
        if let Some(blob) = &child.xattr {
            if let Err(e) = crate::xattr::decode(blob, &cp) {
                c.problem(&cp, e.to_string());
            }
        }
        if child.is_dir() {
            subdirs += 1;
            check_subdir(c, child, &cp);
        } else {
            check_leaf(c, child, &cp);
            if child.group() != 0 {
                groups.entry(child.group()).or_default().push(child);
            } else if child.linkcount() > 1 {
                c.problem(
                    &cp,
                    format!("linkcount {} without a hardlink group", child.linkcount()),
                );
            }
        }
    }
    if row.linkcount() != subdirs + 2 {
        c.problem(
            path,
            format!(
                "directory linkcount {} but {subdirs} sub-directories",
                row.linkcount()
            ),
        );
    }
    let mut ids: Vec<u32> = groups.keys().copied().collect();
    ids.sort_unstable();
    for g in ids {
        let members = &groups[&g];
        check_group(c, path, g, members);
    }
}

fn check_group(c: &mut Checker<'_>, path: &[u8], g: u32, members: &[&Row]) {
    let first = members[0];
    if members
        .iter()
        .any(|m| m.linkcount() as usize != members.len())
    {
        c.problem(
            path,
            format!(
                "hardlink group {g}: {} members here, linkcounts disagree",
                members.len()
            ),
        );
    }
    let same = |m: &&Row| {
        m.size == first.size
            && m.mode == first.mode
            && m.mtime == first.mtime
            && m.mtimens == first.mtimens
            && m.hash == first.hash
            && m.symlink == first.symlink
            && m.flags == first.flags
            && m.xattr.is_some() == first.xattr.is_some()
    };
    if !members.iter().all(same) {
        c.problem(path, format!("hardlink group {g}: members differ"));
    }
}

fn check_subdir<'a>(c: &mut Checker<'a>, row: &'a Row, path: &[u8]) {
    if row.group() != 0 {
        c.problem(path, "directory in a hardlink group");
    }
    if row.hash.is_some() {
        c.problem(path, "directory with a content hash");
    }
    let is_nested = row.flags & flags::MOUNTPOINT != 0;
    let is_bind = row.flags & flags::BIND_MOUNTPOINT != 0;
    if is_nested && is_bind {
        c.problem(path, "both nested and bind mountpoint");
    }
    if is_nested || is_bind {
        if is_nested && !c.nested_paths.contains(path) {
            c.problem(path, "mountpoint not registered in nested_catalogs");
        }
        if c.by_parent.contains_key(&PathHash::of(path)) {
            c.problem(path, "mountpoint has entries in the parent catalog");
        }
        if is_nested {
            c.mountpoints.push((path.to_vec(), row));
        }
        return;
    }
    if depth_of(path) > MAX_PATH_DEPTH {
        // Checked recursively: a hostile chain of directories would overflow the stack. What
        // lies below is left unvisited, and counted as such.
        // Named by its first 200 bytes: the whole path can be a hundred kilobytes.
        c.problem(
            head(path),
            format!("directory more than {MAX_PATH_DEPTH} levels deep: not checked below"),
        );
        return;
    }
    check_dir(c, row, path);
}

fn check_leaf(c: &mut Checker<'_>, row: &Row, path: &[u8]) {
    match kind(row.mode) {
        libc::S_IFREG => check_regular(c, row, path),
        libc::S_IFLNK => {
            if row.hash.is_some() {
                c.problem(path, "symlink with a content hash");
            }
            // No size check: readers take a symlink's size from its target, and cvmfs's own
            // ingest stores 0 (seen in the reference repository).
        }
        libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO | libc::S_IFSOCK => {
            if row.hash.is_some() {
                c.problem(path, "special file with a content hash");
            }
            if !row.symlink.is_empty() {
                c.problem(path, "special file with a symlink target");
            }
            let is_device = matches!(kind(row.mode), libc::S_IFCHR | libc::S_IFBLK);
            if !is_device && row.size != 0 {
                c.problem(path, format!("FIFO/socket with size {}", row.size));
            }
        }
        _ => c.problem(path, format!("unknown file type in mode {:o}", row.mode)),
    }
}

fn check_regular(c: &mut Checker<'_>, row: &Row, path: &[u8]) {
    if row.flags & flags::HASH_ALGO_MASK != 0 {
        c.problem(path, "content hash algorithm other than SHA-1");
    }
    let external = row.flags & flags::EXTERNAL != 0;
    if row.flags & flags::CHUNKED == 0 {
        match row.hash {
            None => c.problem(path, "regular file without content hash"),
            Some(h) if !external => {
                c.v.objects.insert((h, Suffix::None));
            }
            Some(_) => {}
        }
        return;
    }
    let mut list: Vec<&ChunkRow> = c.chunks.get(&row.md5).cloned().unwrap_or_default();
    list.sort_by_key(|ch| ch.offset);
    if list.is_empty() {
        c.problem(path, "chunked file without chunks");
        return;
    }
    let mut next = 0u64;
    for ch in &list {
        if ch.offset != next {
            c.problem(
                path,
                format!("chunk at offset {} where {next} was expected", ch.offset),
            );
        }
        next = ch.offset.saturating_add(ch.size);
        if !external {
            c.v.objects.insert((ch.hash, Suffix::Partial));
        }
    }
    if next != row.size {
        c.problem(
            path,
            format!("chunks end at {next} but the file has {} bytes", row.size),
        );
    }
}

fn check_nested_table(c: &mut Checker<'_>) {
    let prefix = c.prefix;
    if c.db.nested.len() != c.mountpoints.len() {
        c.problem(
            prefix,
            format!(
                "{} nested_catalogs rows but {} mountpoints",
                c.db.nested.len(),
                c.mountpoints.len()
            ),
        );
    }
    let binds: HashSet<&[u8]> =
        c.db.bind_mountpoints
            .iter()
            .map(|b| b.path.as_slice())
            .collect();
    let dups: Vec<Vec<u8>> =
        c.db.nested
            .iter()
            .filter(|n| binds.contains(n.path.as_slice()))
            .map(|n| n.path.clone())
            .collect();
    for p in dups {
        c.problem(&p, "listed in both nested_catalogs and bind_mountpoints");
    }
}

/// Recomputes the 24 counters; returns the stored `self + subtree` totals for the parent.
fn check_counters(
    db: &CatalogDb,
    hash: ContentHash,
    prefix: &[u8],
    subtree: Option<Counts>,
    v: &mut Verification,
) -> Option<Counts> {
    let mut problem = |message: String| {
        v.problems.push(Problem {
            catalog: hash,
            path: prefix.to_vec(),
            message,
        })
    };
    let stored = match Statistics::from_table(&db.statistics) {
        Ok(s) => s,
        Err(e) => {
            problem(e);
            return None;
        }
    };
    let mut own = Counts::default();
    for r in &db.rows {
        own.add_row(r, 0);
    }
    own.chunks = db.chunks.len() as i64;
    let compare = |prefix: &str, want: Counts, have: Counts, problem: &mut dyn FnMut(String)| {
        for ((name, w), h) in COUNTER_NAMES.iter().zip(want.values()).zip(have.values()) {
            if w != h {
                problem(format!("statistics {prefix}{name} is {h}, recomputed {w}"));
            }
        }
    };
    compare("self_", own, stored.self_, &mut problem);
    if let Some(sub) = subtree {
        compare("subtree_", sub, stored.subtree, &mut problem);
    }
    Some(stored.totals())
}
