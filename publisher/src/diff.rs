//! `diff`: what changed between two revisions, found and reported as `cvmfs_server diff`
//! does (CVMFS's `CatalogDiffTool` and `DiffReporter`): both trees are walked directory by
//! directory in CVMFS's name order; an entry only on the new side is added (a directory then
//! reported before its contents), one only on the old side removed (its contents first), and
//! one on both sides modified when its metadata differs. A nested catalog whose hash is the
//! same on both sides is not opened, so a diff reads only the catalogs that changed.

use crate::catalogs::{bytes_of, load_catalog, nested_links, LoadedCatalog};
use crate::error::{Error, Result};
use crate::history::{History, Tag};
use crate::repo::parse_hash_field;
use crate::store::ObjectStore;
use catalog_writer::hash::ContentHash;
use catalog_writer::namespace::CatalogRef;
use catalog_writer::pathhash::{display, join, parent_path, PathHash};
use catalog_writer::sql::flags;
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// Ways one path's entry differs between two revisions (CVMFS
/// `DirectoryEntryBase::Difference`), with their letter in machine-readable output and their
/// word in human-readable output, in the order CVMFS prints them.
pub const DIFFERENCES: [(u32, char, &str); 15] = [
    (1 << 0, 'N', "name"),
    (1 << 1, 'I', "link-count"),
    (1 << 2, 'S', "size"),
    (1 << 3, 'M', "mode"),
    (1 << 4, 'T', "timestamp"),
    (1 << 5, 'L', "symlink-target"),
    (1 << 6, 'C', "content"),
    (1 << 7, 'G', "hardlink-group"),
    (1 << 8, 'N', "nested-catalog"),
    (1 << 9, 'P', "chunked-file"),
    (1 << 10, 'X', "xattrs"),
    (1 << 11, 'E', "external-file"),
    (1 << 12, 'B', "bind-mountpoint"),
    (1 << 13, 'H', "hidden"),
    (1 << 14, 'D', "direct-io"),
];
const DIFF_SIZE: u32 = 1 << 2;
const DIFF_MTIME: u32 = 1 << 4;

/// One entry of a directory listing, with what CVMFS compares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedEntry {
    pub name: Vec<u8>,
    pub flags: u32,
    pub size: u64,
    pub mode: u32,
    pub mtime: i64,
    pub mtime_ns: Option<i64>,
    pub symlink: Vec<u8>,
    /// The stored hash (empty for none).
    pub checksum: Vec<u8>,
    /// Link count in the low 32 bits, hardlink group in the high 32.
    pub hardlinks: u64,
    pub has_xattrs: bool,
}

impl ListedEntry {
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }

    fn is_mountpoint(&self) -> bool {
        self.flags & flags::MOUNTPOINT != 0
    }

    /// `F` file, `S` symlink, `D` directory, `U` anything else, as CVMFS prints it (by mode).
    pub fn type_letter(&self) -> char {
        match self.mode & libc::S_IFMT {
            libc::S_IFREG => 'F',
            libc::S_IFLNK => 'S',
            libc::S_IFDIR => 'D',
            _ => 'U',
        }
    }

    pub fn type_word(&self) -> &'static str {
        match self.type_letter() {
            'F' => "file",
            'S' => "symlink",
            'D' => "directory",
            _ => "unknown",
        }
    }

    /// The bits of [`DIFFERENCES`] in which `other` differs (CVMFS `DirectoryEntry::CompareTo`).
    pub fn differences(&self, other: &ListedEntry) -> u32 {
        let flag = |bits: u32| (self.flags & bits != 0) != (other.flags & bits != 0);
        let nested = flag(flags::NESTED_ROOT) || flag(flags::MOUNTPOINT);
        let algorithm = |e: &ListedEntry| e.flags & flags::HASH_ALGO_MASK;
        [
            self.name != other.name,
            self.hardlinks as u32 != other.hardlinks as u32,
            self.size != other.size,
            self.mode != other.mode,
            self.mtime != other.mtime || self.mtime_ns != other.mtime_ns,
            self.symlink != other.symlink,
            self.checksum != other.checksum || algorithm(self) != algorithm(other),
            self.hardlinks >> 32 != other.hardlinks >> 32,
            nested,
            flag(flags::CHUNKED),
            self.has_xattrs != other.has_xattrs,
            flag(flags::EXTERNAL),
            flag(flags::BIND_MOUNTPOINT),
            flag(flags::HIDDEN),
            flag(flags::DIRECT_IO),
        ]
        .iter()
        .zip(DIFFERENCES)
        .filter(|(differs, _)| **differs)
        .fold(0, |bits, (_, (bit, _, _))| bits | bit)
    }
}

/// CVMFS's order of names in a listing (`ShortString::operator<`): shorter names first, then
/// byte by byte as signed chars.
pub fn cvmfs_name_order(a: &[u8], b: &[u8]) -> Ordering {
    a.len()
        .cmp(&b.len())
        .then_with(|| a.iter().map(|&c| c as i8).cmp(b.iter().map(|&c| c as i8)))
}

/// One difference between the revisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Added {
        path: Vec<u8>,
        entry: ListedEntry,
    },
    Removed {
        path: Vec<u8>,
        entry: ListedEntry,
    },
    Modified {
        path: Vec<u8>,
        from: ListedEntry,
        to: ListedEntry,
        /// Bits of [`DIFFERENCES`]; never 0.
        differences: u32,
    },
}

impl Change {
    pub fn path(&self) -> &[u8] {
        match self {
            Change::Added { path, .. }
            | Change::Removed { path, .. }
            | Change::Modified { path, .. } => path,
        }
    }

    /// The line `cvmfs_server diff` prints, machine-readable (`-m`) or not.
    pub fn line(&self, machine: bool) -> String {
        let shown = display(self.path());
        match (self, machine) {
            (Change::Added { entry, .. }, true) => with_size("A", entry, &shown, '+'),
            (Change::Removed { entry, .. }, true) => with_size("R", entry, &shown, '-'),
            (Change::Added { entry, .. }, false) => {
                format!("{shown} add {} +{} bytes", entry.type_word(), entry.size)
            }
            (Change::Removed { entry, .. }, false) => {
                format!("{shown} remove {} -{} bytes", entry.type_word(), entry.size)
            }
            (
                Change::Modified {
                    from,
                    to,
                    differences,
                    ..
                },
                _,
            ) => modified_line(from, to, *differences, &shown, machine),
        }
    }
}

/// `M[SC] F /path`, or `/path modify file [size, content]`; a type change shows both types.
fn modified_line(
    from: &ListedEntry,
    to: &ListedEntry,
    differences: u32,
    shown: &str,
    machine: bool,
) -> String {
    let changed = from.type_letter() != to.type_letter();
    if machine {
        let letters: String = listed(differences).map(|(_, l, _)| l).collect();
        let kind: String = match changed {
            true => [from.type_letter(), to.type_letter()].iter().collect(),
            false => from.type_letter().to_string(),
        };
        return format!("M[{letters}] {kind} {shown}");
    }
    let kind = match changed {
        true => format!("{}->{}", from.type_word(), to.type_word()),
        false => from.type_word().to_owned(),
    };
    format!(
        "{shown} modify {kind} [{}]",
        difference_words(differences).join(", ")
    )
}

/// The words (`size`, `content`, …) of the bits of [`DIFFERENCES`] set in `bits`.
pub fn difference_words(bits: u32) -> Vec<&'static str> {
    listed(bits).map(|(_, _, word)| word).collect()
}

fn listed(bits: u32) -> impl Iterator<Item = (u32, char, &'static str)> {
    DIFFERENCES
        .into_iter()
        .filter(move |(bit, _, _)| bits & bit != 0)
}

/// `A F /path +SIZE` for files and symlinks, `A D /path` for directories.
fn with_size(op: &str, entry: &ListedEntry, shown: &str, sign: char) -> String {
    match entry.is_dir() {
        true => format!("{op} D {shown}"),
        false => format!("{op} {} {shown} {sign}{}", entry.type_letter(), entry.size),
    }
}

/// How the counts of the whole tree changed (root catalog `self_*` + `subtree_*`, new − old).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountsDelta {
    pub regular_files: i64,
    pub symlinks: i64,
    /// Directories that are not nested-catalog mountpoints (each nested catalog counts its
    /// directory twice: mountpoint and root).
    pub directories: i64,
    pub catalogs: i64,
}

impl CountsDelta {
    /// The four statistics lines CVMFS prints before the changes.
    pub fn lines(&self, machine: bool) -> Vec<String> {
        let rows = [
            ('F', "# regular files", self.regular_files),
            ('S', "# symlinks", self.symlinks),
            ('D', "# directories", self.directories),
            ('N', "# catalogs", self.catalogs),
        ];
        rows.iter()
            .map(|(letter, words, n)| match machine {
                true => format!("S {letter} {n}"),
                false => format!("d({words}): {n}"),
            })
            .collect()
    }
}

/// One side of a diff: a tag, or a root catalog named by its hash (`@HASH`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiffSide {
    pub name: String,
    pub revision: u64,
    pub timestamp: i64,
    pub root: CatalogRef,
}

impl DiffSide {
    /// `NAME/rREVISION (D Mon YYYY hh:mm:ss)`, as CVMFS's header shows a side (in UTC).
    pub fn header(&self) -> String {
        format!(
            "{}/r{} ({})",
            self.name,
            self.revision,
            cvmfs_time(self.timestamp)
        )
    }
}

/// CVMFS's `StringifyTime`: `27 Nov 2026 03:04:05`.
fn cvmfs_time(unix: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let stamp = signer::utc_stamp(unix); // YYYYMMDDhhmmss
    let field = |r: std::ops::Range<usize>| stamp.get(r).unwrap_or("0");
    let month = field(4..6).parse::<usize>().unwrap_or(1);
    let day = field(6..8).parse::<u32>().unwrap_or(1);
    format!(
        "{day} {} {} {}:{}:{}",
        MONTHS[month.clamp(1, 12) - 1],
        field(0..4),
        field(8..10),
        field(10..12),
        field(12..14)
    )
}

/// What to leave out, as `cvmfs_server diff -i`.
#[derive(Clone, Copy, Debug, Default)]
pub struct DiffOptions {
    /// Do not report entries whose only difference is their mtime.
    pub ignore_timediff: bool,
}

/// The side named `name` of the repository in `store` whose manifest is `manifest`: a tag of
/// its current history database, or `@HASH` (a root catalog by its hash). The manifest is
/// taken as given: verify it first ([`crate::check::verified_manifest`]).
pub fn diff_side(
    store: &dyn ObjectStore,
    manifest: &signer::Manifest,
    name: &str,
) -> Result<DiffSide> {
    if let Some(hex) = name.strip_prefix('@') {
        let hash = ContentHash::from_hex(hex)
            .ok_or_else(|| Error::Invalid(format!("{name}: not a root catalog hash")))?;
        return Ok(DiffSide {
            name: hex.to_owned(),
            revision: 0,
            timestamp: 0,
            root: CatalogRef { hash, size: 0 },
        });
    }
    let tag = match manifest.history.as_deref() {
        Some(h) => History::load(store, &parse_hash_field("H", h)?)?.tag(name)?,
        None => None,
    };
    let Tag {
        name,
        hash,
        revision,
        timestamp,
        size,
        ..
    } = tag.ok_or_else(|| Error::Invalid(format!("unknown repository tag name: {name}")))?;
    Ok(DiffSide {
        name,
        revision,
        timestamp,
        root: CatalogRef { hash, size },
    })
}

/// The root catalog `manifest` names.
pub fn manifest_root(manifest: &signer::Manifest) -> Result<CatalogRef> {
    Ok(CatalogRef {
        hash: parse_hash_field("C", &manifest.root_catalog)?,
        size: manifest.root_size,
    })
}

/// The comparison of two trees (root catalogs): the change of the counts at once, then the
/// changes one by one as the walk finds them (in CVMFS's order), so a large diff is never
/// held whole.
pub struct TreeDiff<'s> {
    from: TreeReader<'s>,
    to: TreeReader<'s>,
}

impl<'s> TreeDiff<'s> {
    pub fn open(store: &'s dyn ObjectStore, from: &CatalogRef, to: &CatalogRef) -> Result<Self> {
        Ok(TreeDiff {
            from: TreeReader::open(store, from)?,
            to: TreeReader::open(store, to)?,
        })
    }

    /// New minus old of the root catalogs' whole-tree counters.
    pub fn counts(&self) -> Result<CountsDelta> {
        Ok(counts_delta(
            &self.from.root_counts()?,
            &self.to.root_counts()?,
        ))
    }

    /// Walks both trees, handing each change to `report`.
    pub fn run(
        self,
        options: DiffOptions,
        report: &mut dyn FnMut(Change) -> Result<()>,
    ) -> Result<()> {
        let mut walk = DiffWalk {
            from: self.from,
            to: self.to,
            options,
            report,
        };
        walk.directory(b"")
    }
}

fn counts_delta(from: &BTreeMap<String, i64>, to: &BTreeMap<String, i64>) -> CountsDelta {
    let total = |m: &BTreeMap<String, i64>, name: &str| {
        ["self_", "subtree_"]
            .iter()
            .map(|p| m.get(&format!("{p}{name}")).copied().unwrap_or(0))
            .sum::<i64>()
    };
    let delta = |name: &str| total(to, name) - total(from, name);
    let catalogs = delta("nested");
    CountsDelta {
        regular_files: delta("regular"),
        symlinks: delta("symlink"),
        directories: delta("dir") - catalogs,
        catalogs,
    }
}

struct DiffWalk<'s, 'r> {
    from: TreeReader<'s>,
    to: TreeReader<'s>,
    options: DiffOptions,
    report: &'r mut dyn FnMut(Change) -> Result<()>,
}

impl DiffWalk<'_, '_> {
    /// CVMFS `CatalogDiffTool::DiffRec`: merges the two listings of `path`.
    fn directory(&mut self, path: &[u8]) -> Result<()> {
        let old = self.from.listing(path)?;
        let new = self.to.listing(path)?;
        let (mut i, mut j) = (0, 0);
        while i < old.len() || j < new.len() {
            let order = match (old.get(i), new.get(j)) {
                (Some(o), Some(n)) => cvmfs_name_order(&n.name, &o.name),
                (None, _) => Ordering::Less,
                (_, None) => Ordering::Greater,
            };
            match order {
                Ordering::Less => {
                    self.added(join(path, &new[j].name), &new[j])?;
                    j += 1;
                }
                Ordering::Greater => {
                    self.removed(join(path, &old[i].name), &old[i])?;
                    i += 1;
                }
                Ordering::Equal => {
                    self.both(join(path, &old[i].name), &old[i], &new[j])?;
                    i += 1;
                    j += 1;
                }
            }
        }
        Ok(())
    }

    fn added(&mut self, path: Vec<u8>, entry: &ListedEntry) -> Result<()> {
        let recurse = entry.is_dir();
        (self.report)(Change::Added {
            path: path.clone(),
            entry: entry.clone(),
        })?;
        match recurse {
            true => self.directory(&path),
            false => Ok(()),
        }
    }

    fn removed(&mut self, path: Vec<u8>, entry: &ListedEntry) -> Result<()> {
        // CVMFS does not list what a removed nested catalog held.
        if entry.is_dir() && !entry.is_mountpoint() {
            self.directory(&path)?;
        }
        (self.report)(Change::Removed {
            path,
            entry: entry.clone(),
        })
    }

    fn both(&mut self, path: Vec<u8>, old: &ListedEntry, new: &ListedEntry) -> Result<()> {
        let differences = old.differences(new);
        if differences == 0
            && old.is_mountpoint()
            && self.from.nested_hash(&path)? == self.to.nested_hash(&path)?
        {
            return Ok(());
        }
        if differences != 0 || old.is_mountpoint() {
            self.modified(&path, old, new, differences)?;
        }
        match (old.is_dir(), new.is_dir()) {
            (false, false) => Ok(()),
            _ => self.directory(&path),
        }
    }

    /// CVMFS's reporter drops mtime-only changes with `-i` and size changes of directories.
    fn modified(
        &mut self,
        path: &[u8],
        old: &ListedEntry,
        new: &ListedEntry,
        mut differences: u32,
    ) -> Result<()> {
        if self.options.ignore_timediff {
            differences &= !DIFF_MTIME;
        }
        if old.is_dir() || new.is_dir() {
            differences &= !DIFF_SIZE;
        }
        if differences == 0 {
            return Ok(());
        }
        (self.report)(Change::Modified {
            path: path.to_vec(),
            from: old.clone(),
            to: new.clone(),
            differences,
        })
    }
}

/// The catalogs of one revision that the walk is inside: the root's and the nested ones down
/// to the current directory, each with its nested-catalog links. Catalogs off the current
/// path are dropped, so a diff holds as many catalogs as the tree is deep.
struct TreeReader<'s> {
    store: &'s dyn ObjectStore,
    open: Vec<OpenCatalog>,
}

struct OpenCatalog {
    mountpoint: Vec<u8>,
    catalog: LoadedCatalog,
    nested: Vec<(Vec<u8>, CatalogRef)>,
    has_mtimens: bool,
}

impl<'s> TreeReader<'s> {
    fn open(store: &'s dyn ObjectStore, root: &CatalogRef) -> Result<TreeReader<'s>> {
        let root = OpenCatalog::load(store, b"", root)?;
        Ok(TreeReader {
            store,
            open: vec![root],
        })
    }

    fn root_counts(&self) -> Result<BTreeMap<String, i64>> {
        self.open[0].catalog.statistics()
    }

    /// The catalog that holds `path`'s children: the deepest one mounted at or above it.
    fn catalog_for(&mut self, path: &[u8]) -> Result<&OpenCatalog> {
        while self.open.len() > 1 && !within(path, &self.open[self.open.len() - 1].mountpoint) {
            self.open.pop();
        }
        loop {
            let top = &self.open[self.open.len() - 1];
            let Some((mountpoint, cref)) = top.nested.iter().find(|(mp, _)| within(path, mp))
            else {
                break;
            };
            let next = OpenCatalog::load(self.store, mountpoint, cref)?;
            self.open.push(next);
        }
        Ok(&self.open[self.open.len() - 1])
    }

    /// `path`'s children, hidden entries left out, in CVMFS's name order (none if `path` is
    /// not a directory of this revision).
    fn listing(&mut self, path: &[u8]) -> Result<Vec<ListedEntry>> {
        let mut entries = self.catalog_for(path)?.children(path)?;
        entries.retain(|e| e.flags & flags::HIDDEN == 0);
        entries.sort_by(|a, b| cvmfs_name_order(&a.name, &b.name));
        Ok(entries)
    }

    /// The hash of the nested catalog mounted at `mountpoint`, from its parent catalog.
    fn nested_hash(&mut self, mountpoint: &[u8]) -> Result<Option<ContentHash>> {
        let parent = parent_path(mountpoint).unwrap_or_default();
        let owner = self.catalog_for(parent)?;
        Ok(owner
            .nested
            .iter()
            .find(|(mp, _)| mp == mountpoint)
            .map(|(_, cref)| cref.hash))
    }
}

/// Whether `path` is `mountpoint` or below it.
fn within(path: &[u8], mountpoint: &[u8]) -> bool {
    path.strip_prefix(mountpoint)
        .is_some_and(|rest| rest.is_empty() || rest[0] == b'/')
}

impl OpenCatalog {
    fn load(store: &dyn ObjectStore, mountpoint: &[u8], cref: &CatalogRef) -> Result<OpenCatalog> {
        let catalog = load_catalog(store, cref)?;
        let what = format!("catalog {} for {}", cref.hash, display(mountpoint));
        let sql = |e| Error::sql(what.as_str(), e);
        let conn = catalog.conn();
        let has_mtimens = conn
            .query_row(
                "SELECT count(*) FROM pragma_table_info('catalog') WHERE name = 'mtimens'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(sql)?
            > 0;
        let nested = nested_links(&catalog, &what)?;
        Ok(OpenCatalog {
            mountpoint: mountpoint.to_vec(),
            catalog,
            nested,
            has_mtimens,
        })
    }

    /// The rows whose parent is `path`.
    fn children(&self, path: &[u8]) -> Result<Vec<ListedEntry>> {
        let what = format!("catalog for {}", display(&self.mountpoint));
        let sql = |e| Error::sql(what.as_str(), e);
        let mtimens = if self.has_mtimens { "mtimens" } else { "NULL" };
        let mut stmt = self
            .catalog
            .conn()
            .prepare(&format!(
                "SELECT name, flags, size, mode, mtime, {mtimens}, symlink, hash, hardlinks, \
                 xattr IS NOT NULL FROM catalog WHERE parent_1 = ?1 AND parent_2 = ?2"
            ))
            .map_err(sql)?;
        let parent = PathHash::of(path);
        let rows = stmt
            .query_map([parent.0, parent.1], |r| {
                Ok(ListedEntry {
                    name: bytes_of(r, 0),
                    flags: r.get::<_, Option<i64>>(1)?.unwrap_or(0) as u32,
                    size: r.get::<_, Option<i64>>(2)?.unwrap_or(0) as u64,
                    mode: r.get::<_, Option<i64>>(3)?.unwrap_or(0) as u32,
                    mtime: r.get::<_, Option<i64>>(4)?.unwrap_or(0),
                    mtime_ns: r.get(5)?,
                    symlink: bytes_of(r, 6),
                    checksum: r.get::<_, Option<Vec<u8>>>(7)?.unwrap_or_default(),
                    hardlinks: r.get::<_, Option<i64>>(8)?.unwrap_or(0) as u64,
                    has_xattrs: r.get(9)?,
                })
            })
            .map_err(sql)?;
        rows.collect::<rusqlite::Result<_>>().map_err(sql)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, mode: u32) -> ListedEntry {
        ListedEntry {
            name: name.as_bytes().to_vec(),
            flags: 4,
            size: 3,
            mode,
            mtime: 10,
            mtime_ns: None,
            symlink: Vec::new(),
            checksum: vec![1; 20],
            hardlinks: 1,
            has_xattrs: false,
        }
    }

    #[test]
    fn names_sort_shortest_first_then_as_signed_chars() {
        let mut names: Vec<&[u8]> = vec![b"ab", b"b", b"a\xc3\xa9", b"abc", b"aa"];
        names.sort_by(|a, b| cvmfs_name_order(a, b));
        // 0xc3 is negative as a signed char, so "a\xc3\xa9" comes before "abc".
        assert_eq!(names, [&b"b"[..], b"aa", b"ab", b"a\xc3\xa9", b"abc"]);
    }

    #[test]
    fn differences_as_cvmfs_compares_entries() {
        let a = entry("f", 0o100644);
        assert_eq!(a.differences(&a), 0);
        let mut b = a.clone();
        b.mtime_ns = Some(5);
        b.hardlinks = (7 << 32) | 2;
        b.flags |= flags::CHUNKED | flags::HASH_ALGO_MASK & (1 << 8);
        let words: Vec<&str> = listed(a.differences(&b)).map(|(_, _, w)| w).collect();
        assert_eq!(
            words,
            [
                "link-count",
                "timestamp",
                "content",
                "hardlink-group",
                "chunked-file"
            ]
        );
        let mut dir = entry("d", 0o040755);
        dir.flags = 1 | flags::MOUNTPOINT;
        let mut plain = dir.clone();
        plain.flags = 1;
        assert_eq!(dir.differences(&plain), 1 << 8);
    }

    #[test]
    fn lines_in_both_formats() {
        let old = entry("f", 0o100644);
        let mut new = entry("f", 0o120777);
        new.symlink = b"target".to_vec();
        let change = Change::Modified {
            path: b"/x/f".to_vec(),
            differences: old.differences(&new),
            from: old.clone(),
            to: new,
        };
        assert_eq!(change.line(true), "M[ML] FS /x/f");
        assert_eq!(
            change.line(false),
            "/x/f modify file->symlink [mode, symlink-target]"
        );
        let added = Change::Added {
            path: b"/x/f".to_vec(),
            entry: old,
        };
        assert_eq!(added.line(true), "A F /x/f +3");
        assert_eq!(added.line(false), "/x/f add file +3 bytes");
        assert_eq!(cvmfs_time(1_795_633_769), "25 Nov 2026 19:09:29");
        assert_eq!(cvmfs_time(0), "1 Jan 1970 00:00:00");
    }

    #[test]
    fn within_a_mountpoint() {
        assert!(within(b"/a/b", b"/a"));
        assert!(within(b"/a", b"/a"));
        assert!(within(b"/a", b""));
        assert!(!within(b"/ab", b"/a"));
        assert!(!within(b"/", b"/a"));
    }
}
