//! A tar archive (plain, gzip or zstd) as a tree, for the `ingest` command. Only metadata
//! stays in memory; file bytes stream straight into the object pipeline.

use crate::decode::open_named_stream;
use crate::error::{show, Error, Result};
use crate::paxsparse::PaxSparse;
use crate::pipeline::{finalize, FileTicket, ObjectPipeline, PDir, PLeaf, PNode};
use crate::targuard::{pax_records, MemberExt, MemberExtSlot};
use base64::Engine;
use catalog_writer::entry::{makedev, Entry, EntryKind, FileData, Xattrs};
use catalog_writer::hash::EMPTY_OBJECT;
use catalog_writer::tree::Dir;
use catalog_writer::xattr::insert_bounded;
use std::io::{self, Read};
use tar::EntryType;

/// How a tar archive is read.
#[derive(Clone, Debug)]
pub struct TarOptions {
    /// Name of the archive for error messages (a path, "stdin", an image layer).
    pub archive_name: String,
    /// `Some((uid, gid))`: give every entry this owner instead of the tar's.
    pub owner: Option<(u32, u32)>,
    /// Keep PAX `SCHILY.xattr.*` / `LIBARCHIVE.xattr.*` attributes (default true).
    pub keep_xattrs: bool,
}

impl Default for TarOptions {
    fn default() -> Self {
        TarOptions {
            archive_name: "tar archive".into(),
            owner: None,
            keep_xattrs: true,
        }
    }
}

/// Reads a tar archive (compression recognised by magic bytes) into a tree. Regular files are
/// streamed into `pipeline`; the call returns once all of them are stored or known.
pub fn tree_from_tar<R: Read + Send + 'static>(
    reader: R,
    pipeline: &ObjectPipeline,
    opts: &TarOptions,
) -> Result<Dir> {
    let stream = open_named_stream(&opts.archive_name, reader)?;
    let (mut archive, slot) = crate::targuard::guarded_with(stream);
    let mut builder = TarTree {
        root: PDir::default(),
        next_link_id: 1,
        opts,
    };
    let entries = archive
        .entries()
        .map_err(|e| tar_err(opts, b"", format!("reading archive: {e}")))?;
    let mut members = 0usize;
    for member in entries {
        let mut member = member.map_err(|e| {
            let (name, msg) = crate::targuard::next_member_error(&slot, "archive", &e);
            tar_err(opts, &name, msg)
        })?;
        builder.add(&mut member, &slot, pipeline)?;
        members += 1;
    }
    // Read to the end so gzip/zstd trailers (checksums) are verified too.
    let mut guard = archive.into_inner();
    drain_trailer(&mut guard)
        .map_err(|e| tar_err(opts, b"", format!("after the end of the archive: {e}")))?;
    // A stream cut between members reads as a complete archive of fewer members, and a
    // publish at --path would delete the rest: only an archive that ends as tar archives end
    // is taken.
    // (An empty stream has no members: refused for that by the caller.)
    if members > 0 && !guard.saw_end() {
        return Err(tar_err(
            opts,
            b"",
            "the archive ends without its end-of-archive block: cut short? (nothing published)"
                .into(),
        ));
    }
    let mut default_dir = Entry::directory(0o755, 0, 0, 0);
    if let Some((uid, gid)) = opts.owner {
        (default_dir.uid, default_dir.gid) = (uid, gid);
    }
    finalize(builder.root, &default_dir, pipeline)
}

fn tar_err(opts: &TarOptions, path: &[u8], msg: String) -> Error {
    Error::Tar {
        archive: opts.archive_name.clone(),
        path: show(path),
        msg,
    }
}

struct TarTree<'o> {
    root: PDir,
    next_link_id: u64,
    opts: &'o TarOptions,
}

impl TarTree<'_> {
    fn add<R: Read>(
        &mut self,
        member: &mut tar::Entry<R>,
        slot: &MemberExtSlot,
        pipeline: &ObjectPipeline,
    ) -> Result<()> {
        let ext = slot.take();
        let raw =
            member_path(member, &ext).map_err(|e| tar_err(self.opts, &header_name(member), e))?;
        let err = |msg: String| tar_err(self.opts, &raw, msg);
        let comps = split_member_path(&raw).map_err(err)?;
        let m = read_member(member, self.opts.keep_xattrs, &ext).map_err(err)?;
        let mut entry = m.entry;
        if let Some((uid, gid)) = self.opts.owner {
            (entry.uid, entry.gid) = (uid, gid);
        }
        match m.kind {
            MemberKind::Skip => {
                drain_member(member).map_err(err)?;
                Ok(())
            }
            MemberKind::Dir => {
                drain_member(member).map_err(err)?;
                self.put_dir(&comps, entry).map_err(err)
            }
            MemberKind::File => {
                let name = format!("{}: {}", self.opts.archive_name, show(&raw));
                let ticket = ingest_member(member, m.sparse.as_ref(), pipeline, &name)?;
                let leaf = PLeaf {
                    entry,
                    ticket: Some(ticket),
                };
                self.put_leaf(&comps, leaf).map_err(err)
            }
            MemberKind::Hardlink(target) => {
                drain_member(member).map_err(err)?;
                let leaf = self.link_to(&target).map_err(err)?;
                self.put_leaf(&comps, leaf).map_err(err)
            }
            MemberKind::Other => {
                drain_member(member).map_err(err)?;
                self.put_leaf(
                    &comps,
                    PLeaf {
                        entry,
                        ticket: None,
                    },
                )
                .map_err(err)
            }
        }
    }

    /// The target's inode, shared: both entries get the same hardlink id.
    fn link_to(&mut self, target: &[u8]) -> std::result::Result<PLeaf, String> {
        let comps = split_link_target(target)?;
        let missing = || {
            format!(
                "hardlink target {} is not earlier in this archive",
                show(target)
            )
        };
        let Some((last, parents)) = comps.split_last() else {
            return Err("hardlink to the root directory".into());
        };
        let dir = walk(&mut self.root, parents).ok_or_else(missing)?;
        match dir.children.get_mut(*last) {
            Some(PNode::Leaf(leaf)) => {
                if leaf.entry.hardlink.is_none() {
                    leaf.entry.hardlink = Some(self.next_link_id);
                    self.next_link_id += 1;
                }
                Ok(leaf.clone())
            }
            Some(PNode::Dir(_)) => Err(format!("hardlink to directory {}", show(target))),
            None => Err(missing()),
        }
    }

    fn put_dir(&mut self, comps: &[&[u8]], entry: Entry) -> std::result::Result<(), String> {
        let Some((last, parents)) = comps.split_last() else {
            self.root.meta = Some(entry);
            return Ok(());
        };
        let dir = make_parents(&mut self.root, parents)?;
        match dir.children.get_mut(*last) {
            // A later entry for a directory replaces its metadata, keeps its contents.
            Some(PNode::Dir(d)) => d.meta = Some(entry),
            _ => {
                let d = PDir {
                    meta: Some(entry),
                    ..PDir::default()
                };
                dir.children.insert(last.to_vec(), PNode::Dir(d));
            }
        }
        Ok(())
    }

    fn put_leaf(&mut self, comps: &[&[u8]], leaf: PLeaf) -> std::result::Result<(), String> {
        let Some((last, parents)) = comps.split_last() else {
            return Err("the root must be a directory".into());
        };
        let dir = make_parents(&mut self.root, parents)?;
        dir.children.insert(last.to_vec(), PNode::Leaf(leaf));
        Ok(())
    }
}

/// Descends to an existing directory.
fn walk<'a>(mut dir: &'a mut PDir, comps: &[&[u8]]) -> Option<&'a mut PDir> {
    for c in comps {
        match dir.children.get_mut(*c) {
            Some(PNode::Dir(d)) => dir = d,
            _ => return None,
        }
    }
    Some(dir)
}

/// Descends, creating missing directories as placeholders (metadata decided at the end).
fn make_parents<'a>(
    mut dir: &'a mut PDir,
    comps: &[&[u8]],
) -> std::result::Result<&'a mut PDir, String> {
    for (i, c) in comps.iter().enumerate() {
        let child = dir
            .children
            .entry(c.to_vec())
            .or_insert_with(|| PNode::Dir(PDir::default()));
        match child {
            PNode::Dir(d) => dir = d,
            PNode::Leaf(_) => {
                return Err(format!(
                    "parent {} is not a directory",
                    show(&comps[..=i].join(&b'/'))
                ))
            }
        }
    }
    Ok(dir)
}

/// Longest member name taken: PATH_MAX (4096, with the terminating NUL) less one.
pub(crate) const MAX_MEMBER_NAME: usize = 4095;

/// Largest size the GNU sparse members of one archive (layer) may declare in all, 64 GiB: their
/// holes cost nothing in the archive but must all be read as zeros and chunked, so a 2 KiB
/// member can declare a petabyte. Layers written by Docker, BuildKit and other Go tools never
/// use sparse members; GNU tar writes them for disk images and the like, well below this.
pub const MAX_SPARSE_SIZE: u64 = 64 << 30;

/// Most components a member name may have. Trees are built, compared, written and dropped
/// by recursive walks, one stack frame or more per level, some on threads with 2 MiB stacks;
/// real images stay far below (a few dozen levels).
pub const MAX_DEPTH: usize = 512;

/// Splits a member name into components after the safety checks: absolute names, `..`,
/// NUL and over-long names are refused; `.` and empty components are dropped. An empty result
/// is the root (`./`, `.`, or `/` alone, which kaniko writes at the top of its layers, or
/// `/./`: they name nothing but the root, as Docker and containerd read them).
pub(crate) fn split_member_path(raw: &[u8]) -> std::result::Result<Vec<&[u8]>, String> {
    if raw.is_empty() {
        return Err("empty member name".into());
    }
    // No path tool can name a longer one (PATH_MAX), and the tree's depth stays bounded
    // (at most ~2 000 levels), which the recursive catalog walks rely on.
    if raw.len() > MAX_MEMBER_NAME {
        return Err(format!(
            "member name of {} bytes (at most {MAX_MEMBER_NAME})",
            raw.len()
        ));
    }
    if raw.contains(&0) {
        return Err("member name contains a NUL byte".into());
    }
    if raw.starts_with(b"/") {
        // `/`, `//`, `/./`: the root, as Docker and containerd clean them.
        let names_root = raw.split(|&b| b == b'/').all(|c| matches!(c, b"" | b"."));
        return match names_root {
            true => Ok(Vec::new()),
            false => Err("absolute member name".into()),
        };
    }
    let mut p = raw.strip_prefix(b"./").unwrap_or(raw);
    if p == b"." {
        p = b"";
    }
    p = p.strip_suffix(b"/").unwrap_or(p);
    if p.is_empty() {
        return Ok(Vec::new());
    }
    // `a//b` and `a/./b` name `a/b`, as Docker, containerd and GNU tar read them.
    let comps: Vec<&[u8]> = p
        .split(|&b| b == b'/')
        .filter(|c| !matches!(*c, b"" | b"."))
        .collect();
    if comps.iter().any(|c| *c == b"..") {
        return Err("'..' path component".into());
    }
    if comps.len() > MAX_DEPTH {
        return Err(format!(
            "a path of {} levels (at most {MAX_DEPTH})",
            comps.len()
        ));
    }
    Ok(comps)
}

/// Splits a hard link's target like a member name, read from the archive's root also when it
/// starts with `/`: the target names an earlier member (`/usr/bin/perl` for `usr/bin/perl`,
/// as kaniko writes them), and Docker, containerd and GNU tar resolve it inside the root, as
/// this does. Only the leading `/` is forgiven: `..` and the other checks still apply.
pub(crate) fn split_link_target(raw: &[u8]) -> std::result::Result<Vec<&[u8]>, String> {
    let root = || Err("hardlink target: the archive's root".into());
    let Some(start) = raw.iter().position(|&b| b != b'/') else {
        return root();
    };
    let comps = split_member_path(&raw[start..]).map_err(|e| format!("hardlink target: {e}"))?;
    // `/.`, `./`: the root too, which a hard link cannot take.
    if comps.is_empty() {
        return root();
    }
    Ok(comps)
}

/// What a tar member is, beyond its metadata.
pub(crate) enum MemberKind {
    Dir,
    File,
    /// Tar type 1: the (unchecked) target name.
    Hardlink(Vec<u8>),
    /// Symlinks, devices, FIFOs: complete in `entry`.
    Other,
    /// PAX global headers and the like: nothing to store.
    Skip,
}

pub(crate) struct Member {
    pub kind: MemberKind,
    /// Metadata; regular files carry a placeholder `File` kind until their ticket resolves.
    pub entry: Entry,
    /// A sparse file in PAX format: how its data expands.
    pub sparse: Option<PaxSparse>,
}

/// The last value of PAX record `key` in `ext`, read by the records' lengths (the crate
/// splits them at newlines, so a value holding one could hide a record from it, or show it
/// one that is not there).
fn pax_value(ext: &MemberExt, key: &[u8]) -> std::result::Result<Option<Vec<u8>>, String> {
    let Some(block) = &ext.records else {
        return Ok(None);
    };
    let records = pax_records(block)?;
    Ok(records
        .iter()
        .rev()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_vec()))
}

/// A PAX `path` or `linkpath`; an empty one deletes the field (POSIX pax: "If the value
/// field is zero length, it shall delete any header block field … of the same name"), so
/// the header's counts, as Go reads it.
fn pax_name(ext: &MemberExt, key: &[u8]) -> std::result::Result<Option<Vec<u8>>, String> {
    Ok(pax_value(ext, key)?.filter(|v| !v.is_empty()))
}

/// The member's name: a PAX sparse file's real name (`GNU.sparse.name`), else a GNU long
/// name, else its PAX `path`, else the header's (as Go and GNU tar read it).
pub(crate) fn member_path<R: Read>(
    m: &tar::Entry<R>,
    ext: &MemberExt,
) -> std::result::Result<Vec<u8>, String> {
    if let Some(name) = pax_name(ext, b"GNU.sparse.name")? {
        return Ok(name);
    }
    if ext.long_name {
        return Ok(m.path_bytes().into_owned());
    }
    Ok(pax_name(ext, b"path")?.unwrap_or_else(|| m.header().path_bytes().into_owned()))
}

/// The member's link name, chosen as [`member_path`] chooses the name.
fn member_link<R: Read>(
    m: &tar::Entry<R>,
    ext: &MemberExt,
) -> std::result::Result<Option<Vec<u8>>, String> {
    if ext.long_link {
        return Ok(m.link_name_bytes().map(|l| l.into_owned()));
    }
    Ok(
        pax_name(ext, b"linkpath")?
            .or_else(|| m.header().link_name_bytes().map(|l| l.into_owned())),
    )
}

/// Checks that the crate reads as many data bytes as the member's PAX `size` says: it takes
/// the header's size when a record before `size` is one it misreads.
pub(crate) fn check_crate_reading<R: Read>(
    m: &tar::Entry<R>,
    ext: &MemberExt,
) -> std::result::Result<(), String> {
    if let Some(v) = pax_value(ext, b"size")? {
        let n = pax_number(b"size", &v)?;
        if n != m.size() {
            return Err(format!(
                "PAX size {n} disagrees with the member's {}",
                m.size()
            ));
        }
    }
    Ok(())
}

/// The name in the member's own header (ustar name and prefix), for an error about the
/// extensions that would have named it otherwise.
pub(crate) fn header_name<R: Read>(m: &tar::Entry<R>) -> Vec<u8> {
    m.header().path_bytes().into_owned()
}

/// Member types that carry no data (Go's `isHeaderOnlyType`).
fn header_only(et: EntryType) -> bool {
    matches!(
        et,
        EntryType::Link
            | EntryType::Symlink
            | EntryType::Char
            | EntryType::Block
            | EntryType::Directory
            | EntryType::Fifo
    )
}

fn type_name(et: EntryType) -> &'static str {
    match et {
        EntryType::Link => "hard link",
        EntryType::Symlink => "symbolic link",
        EntryType::Char => "character device",
        EntryType::Block => "block device",
        EntryType::Directory => "directory",
        EntryType::Fifo => "FIFO",
        _ => "file",
    }
}

/// Reads a member's header and PAX records (`ext`, from the guard) into an `Entry`.
pub(crate) fn read_member<R: Read>(
    m: &mut tar::Entry<R>,
    keep_xattrs: bool,
    ext: &MemberExt,
) -> std::result::Result<Member, String> {
    check_crate_reading(m, ext)?;
    let h = m.header().clone();
    let et = h.entry_type();
    let link = || member_link(m, ext)?.ok_or_else(|| "link member without a link name".to_string());
    let dev = |what: &str| -> std::result::Result<u64, String> {
        let major = h.device_major().map_err(|e| format!("{what} major: {e}"))?;
        let minor = h.device_minor().map_err(|e| format!("{what} minor: {e}"))?;
        Ok(makedev(
            u64::from(major.unwrap_or(0)),
            u64::from(minor.unwrap_or(0)),
        ))
    };
    let records = match &ext.records {
        Some(block) => pax_records(block)?,
        None => Vec::new(),
    };
    let sparse = PaxSparse::from_records(&records)?;
    if sparse.is_some() && !matches!(et, EntryType::Regular | EntryType::Continuous) {
        return Err(format!(
            "GNU.sparse PAX records on a {} member",
            type_name(et)
        ));
    }
    if header_only(et) && m.size() > 0 {
        // Go's archive/tar (Docker, containerd) reads such a member as empty and the next
        // header right after it, GNU tar does so for some of these types, the tar crate skips
        // the data: the readers would see different trees (a member hidden in the "data").
        return Err(format!(
            "a {} member declaring {} bytes of data (tar readers disagree on what follows it)",
            type_name(et),
            m.size()
        ));
    }
    let (kind, ek) = match et {
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => (
            MemberKind::File,
            EntryKind::File {
                size: sparse.as_ref().map_or(m.size(), |s| s.size),
                data: FileData::Whole(EMPTY_OBJECT),
            },
        ),
        EntryType::Directory => (MemberKind::Dir, EntryKind::Directory),
        EntryType::Link => (MemberKind::Hardlink(link()?), EntryKind::Fifo),
        EntryType::Symlink => (MemberKind::Other, EntryKind::Symlink { target: link()? }),
        EntryType::Char => (
            MemberKind::Other,
            EntryKind::CharDevice {
                rdev: dev("char device")?,
            },
        ),
        EntryType::Block => (
            MemberKind::Other,
            EntryKind::BlockDevice {
                rdev: dev("block device")?,
            },
        ),
        EntryType::Fifo => (MemberKind::Other, EntryKind::Fifo),
        EntryType::XGlobalHeader => (MemberKind::Skip, EntryKind::Fifo),
        other => {
            return Err(format!(
                "unsupported tar member type {:?}",
                other.as_byte() as char
            ))
        }
    };
    if matches!(kind, MemberKind::Skip) {
        // Its data is left for the caller to drain: reading it as PAX records here (what
        // `pax_extensions` does with a global header) would make the member look truncated.
        return Ok(Member {
            kind,
            entry: Entry {
                kind: ek,
                perm: 0,
                uid: 0,
                gid: 0,
                mtime: 0,
                mtime_ns: None,
                xattrs: Xattrs::new(),
                hardlink: None,
            },
            sparse: None,
        });
    }
    if let EntryKind::Symlink { target } = &ek {
        if target.contains(&0) {
            return Err("symlink target contains a NUL byte".into());
        }
    }
    let old = h.as_old();
    let perm = numeric(&old.mode, || h.mode().map(u64::from)).map_err(|e| format!("mode: {e}"))?
        as u32
        & 0o7777;
    let mut uid = numeric(&old.uid, || h.uid()).map_err(|e| format!("uid: {e}"))?;
    let mut gid = numeric(&old.gid, || h.gid()).map_err(|e| format!("gid: {e}"))?;
    // The crate applies PAX `uid`/`gid` only when no record before them is one it misreads.
    for (key, value) in &records {
        match *key {
            b"uid" => uid = pax_number(key, value)?,
            b"gid" => gid = pax_number(key, value)?,
            _ => {}
        }
    }
    let uid = u32::try_from(uid).map_err(|_| format!("uid {uid} does not fit 32 bits"))?;
    let gid = u32::try_from(gid).map_err(|_| format!("gid {gid} does not fit 32 bits"))?;
    let mtime = numeric(&old.mtime, || h.mtime()).map_err(|e| format!("mtime: {e}"))?;
    let mut mtime = i64::try_from(mtime).map_err(|_| "mtime out of range".to_string())?;
    let mut mtime_ns = None;
    let mut xattrs = Xattrs::new();
    let size = m.size();
    for (key, value) in records {
        if key == b"size" {
            // The tar crate reads the first `size` and ignores one it cannot parse: a
            // second, different one would make other readers see another archive.
            let n = pax_number(key, value)?;
            if n != size {
                return Err(format!("PAX size {n} disagrees with the member's {size}"));
            }
        } else if key == b"mtime" {
            (mtime, mtime_ns) = parse_pax_time(value)?;
        } else if key.starts_with(b"GNU.sparse.") {
            // Read above, into `sparse`.
            continue;
        } else if !keep_xattrs {
            continue;
        } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
            // Bounded: a tree holds every member's attributes until the catalogs drop
            // what they cannot store, and PAX records compress very well.
            insert_bounded(&mut xattrs, name, value);
        } else if let Some(name) = key.strip_prefix(b"LIBARCHIVE.xattr.") {
            let value = base64::engine::general_purpose::STANDARD
                .decode(value)
                .map_err(|e| format!("PAX {}: {e}", show(key)))?;
            insert_bounded(&mut xattrs, &percent_decode(name), &value);
        }
    }
    let entry = Entry {
        kind: ek,
        perm,
        uid,
        gid,
        mtime,
        mtime_ns,
        xattrs,
        hardlink: None,
    };
    Ok(Member {
        kind,
        entry,
        sparse,
    })
}

/// A numeric header field; all-NUL/blank fields (written by some tools) count as 0, as
/// libarchive reads them. PAX overrides were already applied to the header by the tar crate.
fn numeric(field: &[u8], parse: impl FnOnce() -> io::Result<u64>) -> io::Result<u64> {
    if field.iter().all(|&b| b == 0 || b == b' ') {
        return Ok(0);
    }
    parse()
}

/// A PAX decimal record (`size`, `uid`, `gid`). The tar crate skips values it cannot parse and
/// falls back to the header's field, where GNU tar and Go refuse the archive: so do we, lest
/// the tree we publish differ from what other tools unpack.
pub(crate) fn pax_number(key: &[u8], v: &[u8]) -> std::result::Result<u64, String> {
    let text = String::from_utf8_lossy(v);
    // Digits only: `str::parse` would also take a leading `+`.
    match v.iter().all(u8::is_ascii_digit) {
        true => text.parse::<u64>().ok(),
        false => None,
    }
    .ok_or_else(|| format!("bad PAX {} {text:?}", show(key)))
}

/// PAX time: `[-]seconds[.fraction]` → (seconds, nanoseconds) with the fraction rounded down
/// towards negative infinity, as `struct timespec` expects.
fn parse_pax_time(v: &[u8]) -> std::result::Result<(i64, Option<u32>), String> {
    let text = std::str::from_utf8(v).map_err(|_| "PAX mtime is not text".to_string())?;
    let bad = || format!("bad PAX mtime {text:?}");
    let (neg, body) = match text.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, text),
    };
    let (secs, frac) = body.split_once('.').unwrap_or((body, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let mut secs: i64 = secs.parse().map_err(|_| bad())?;
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let mut ns: u32 = digits.parse().map_err(|_| bad())?;
    if neg {
        secs = -secs;
        if ns > 0 {
            secs -= 1;
            ns = 1_000_000_000 - ns;
        }
    }
    Ok((secs, if frac.is_empty() { None } else { Some(ns) }))
}

fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            if let Ok(b) = u8::from_str_radix(&String::from_utf8_lossy(&s[i + 1..i + 3]), 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// Counts bytes so truncated members (the tar crate returns a short read) are detected.
pub(crate) struct Counting<'a, R: ?Sized> {
    pub inner: &'a mut R,
    pub n: u64,
}

impl<R: Read + ?Sized> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// Streams a regular member into the pipeline and checks that all its bytes were there.
pub(crate) fn ingest_member<R: Read>(
    m: &mut tar::Entry<R>,
    sparse: Option<&PaxSparse>,
    pipeline: &ObjectPipeline,
    name: &str,
) -> Result<FileTicket> {
    let Some(sparse) = sparse else {
        let size = m.size();
        return ingest_data(m, size, pipeline, name);
    };
    let decode = |e: io::Error| Error::Decode {
        archive: name.into(),
        msg: e.to_string(),
    };
    let mut expanded = sparse.reader(m).map_err(decode)?;
    ingest_data(&mut expanded, sparse.size, pipeline, name)
}

/// Ingests `size` bytes from `data`, checking that there are as many.
fn ingest_data(
    data: &mut dyn Read,
    size: u64,
    pipeline: &ObjectPipeline,
    name: &str,
) -> Result<FileTicket> {
    let mut counting = Counting { inner: data, n: 0 };
    let ticket = pipeline.add_named_file(name, &mut counting, size)?;
    if counting.n != size {
        return Err(Error::Decode {
            archive: name.into(),
            msg: format!("truncated: {} of {size} bytes", counting.n),
        });
    }
    Ok(ticket)
}

/// Reads (and discards) a member's data, checking it is complete: skipping alone would not
/// notice a truncated archive.
pub(crate) fn drain_member<R: Read>(m: &mut tar::Entry<R>) -> std::result::Result<(), String> {
    let size = m.size();
    let n = io::copy(m, &mut io::sink()).map_err(|e| format!("reading data: {e}"))?;
    if n != size {
        return Err(format!("truncated: {n} of {size} bytes"));
    }
    Ok(())
}

/// Most bytes read after an archive's end-of-archive blocks: the padding of its last record
/// (10 KiB with GNU tar's default blocking factor of 20) and a compressed stream's own end. More is not padding, and an input that never ends (a pipe whose writer
/// goes on) would otherwise be read for ever, the repository locked.
const MAX_TRAILER: u64 = 64 << 20;

/// Reads what follows the end-of-archive blocks, up to [`MAX_TRAILER`] bytes.
fn drain_trailer(r: impl Read) -> io::Result<()> {
    let n = io::copy(&mut r.take(MAX_TRAILER + 1), &mut io::sink())?;
    if n > MAX_TRAILER {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "more than {} MiB of data after the end-of-archive blocks (not an archive's \
                 padding)",
                MAX_TRAILER >> 20
            ),
        ));
    }
    Ok(())
}

pub(crate) fn drain_rest(mut r: impl Read) -> io::Result<()> {
    io::copy(&mut r, &mut io::sink()).map(|_| ())
}

#[cfg(test)]
mod tests;
