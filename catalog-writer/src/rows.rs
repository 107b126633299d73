//! Translation between [`Entry`] values and catalog rows (spec 2.4–2.8, 5.3).

use crate::entry::{Chunk, Entry, EntryKind, FileData};
use crate::pathhash::{display, PathHash};
use crate::sql::{flags, ChunkRow, Row};
use crate::{xattr, Error, Result};

/// The `size` cvmfs stores for directories it synthesizes.
pub const DIR_SIZE: u64 = 4096;

/// How a directory row relates to catalog nesting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirRole {
    Plain,
    /// Row in the parent catalog where a nested catalog is attached (flags 3).
    Mountpoint,
    /// Root row of a nested catalog (flags 33).
    NestedRoot,
}

/// `flags` of a non-directory entry, by the rules of spec 2.5 (SHA-1, zlib).
pub fn leaf_flags(entry: &Entry) -> u32 {
    match &entry.kind {
        EntryKind::Directory => flags::DIR,
        EntryKind::Symlink { .. } => flags::FILE | flags::SYMLINK,
        EntryKind::File {
            data: FileData::Chunked(_),
            ..
        } => flags::FILE | flags::CHUNKED,
        EntryKind::File { .. } => flags::FILE,
        _ => flags::FILE | flags::SPECIAL,
    }
}

/// `flags` of a directory row; nested root takes precedence over mountpoint.
pub fn dir_flags(role: DirRole) -> u32 {
    match role {
        DirRole::Plain => flags::DIR,
        DirRole::Mountpoint => flags::DIR | flags::MOUNTPOINT,
        DirRole::NestedRoot => flags::DIR | flags::NESTED_ROOT,
    }
}

/// The row of a directory: `linkcount` = 2 + its sub-directories, `size` as loaded or 4096.
pub fn dir_row(
    path: &[u8],
    parent: PathHash,
    meta: &Entry,
    size: u64,
    linkcount: u32,
    role: DirRole,
) -> Result<Row> {
    Ok(Row {
        md5: PathHash::of(path),
        parent,
        hardlinks: u64::from(linkcount),
        hash: None,
        size,
        mode: libc::S_IFDIR | (meta.perm & 0o7777),
        mtime: meta.mtime,
        mtimens: meta.mtime_ns.map(i64::from),
        flags: dir_flags(role),
        name: crate::pathhash::file_name(path).to_vec(),
        symlink: Vec::new(),
        uid: meta.uid,
        gid: meta.gid,
        xattr: xattr::encode(&meta.xattrs, path)?,
    })
}

/// The row (and chunk rows) of a non-directory entry; `hardlinks` = `group << 32 | linkcount`.
pub fn leaf_row(
    path: &[u8],
    parent: PathHash,
    entry: &Entry,
    hardlinks: u64,
) -> Result<(Row, Vec<ChunkRow>)> {
    let md5 = PathHash::of(path);
    let mut chunks = Vec::new();
    let (hash, size, symlink) = match &entry.kind {
        EntryKind::Directory => {
            return Err(Error::Path {
                path: display(path),
                reason: "directory given where a leaf entry was expected".into(),
            })
        }
        EntryKind::File { size, data } => match data {
            FileData::Whole(h) => (Some(*h), *size, Vec::new()),
            FileData::Chunked(list) => {
                check_chunks(path, *size, list)?;
                chunks = list
                    .iter()
                    .map(|c| ChunkRow {
                        md5,
                        offset: c.offset,
                        size: c.size,
                        hash: c.hash,
                    })
                    .collect();
                (None, *size, Vec::new())
            }
        },
        EntryKind::Symlink { target } => (None, target.len() as u64, target.clone()),
        EntryKind::CharDevice { rdev } | EntryKind::BlockDevice { rdev } => {
            (None, *rdev, Vec::new())
        }
        EntryKind::Fifo | EntryKind::Socket => (None, 0, Vec::new()),
    };
    let row = Row {
        md5,
        parent,
        hardlinks,
        hash,
        size,
        mode: entry.mode(),
        mtime: entry.mtime,
        mtimens: entry.mtime_ns.map(i64::from),
        flags: leaf_flags(entry),
        name: crate::pathhash::file_name(path).to_vec(),
        symlink,
        uid: entry.uid,
        gid: entry.gid,
        xattr: xattr::encode(&entry.xattrs, path)?,
    };
    Ok((row, chunks))
}

/// Chunks must be non-empty, contiguous from 0 and add up to the file size (spec 5.3).
fn check_chunks(path: &[u8], size: u64, list: &[Chunk]) -> Result<()> {
    let mut next = 0u64;
    for c in list {
        if c.offset != next || c.size == 0 {
            return Err(Error::Path {
                path: display(path),
                reason: format!(
                    "chunk at offset {} (size {}) is not contiguous from {next}",
                    c.offset, c.size
                ),
            });
        }
        next = next.saturating_add(c.size);
    }
    if list.is_empty() || next != size {
        return Err(Error::Path {
            path: display(path),
            reason: format!("chunks cover {next} bytes of a {size}-byte file"),
        });
    }
    Ok(())
}

/// Rebuilds the entry of a row (`hardlink` left `None`; the caller maps groups to ids).
/// `chunks` are the chunk rows of this path, in any order.
pub fn row_entry(row: &Row, path: &[u8], chunks: &[ChunkRow]) -> Result<Entry> {
    let bad = |reason: String| Error::Path {
        path: display(path),
        reason,
    };
    let kind = match row.mode & libc::S_IFMT {
        libc::S_IFDIR => EntryKind::Directory,
        libc::S_IFREG => {
            let data = if row.flags & flags::CHUNKED != 0 {
                let mut list: Vec<Chunk> = chunks
                    .iter()
                    .map(|c| Chunk {
                        offset: c.offset,
                        size: c.size,
                        hash: c.hash,
                    })
                    .collect();
                list.sort_by_key(|c| c.offset);
                FileData::Chunked(list)
            } else {
                FileData::Whole(
                    row.hash
                        .ok_or_else(|| bad("regular file without hash".into()))?,
                )
            };
            EntryKind::File {
                size: row.size,
                data,
            }
        }
        libc::S_IFLNK => EntryKind::Symlink {
            target: row.symlink.clone(),
        },
        libc::S_IFCHR => EntryKind::CharDevice { rdev: row.size },
        libc::S_IFBLK => EntryKind::BlockDevice { rdev: row.size },
        libc::S_IFIFO => EntryKind::Fifo,
        libc::S_IFSOCK => EntryKind::Socket,
        other => {
            return Err(bad(format!(
                "unknown file type in mode {:o}",
                row.mode | other
            )))
        }
    };
    let mtime_ns = match row.mtimens {
        None => None,
        Some(ns) => Some(u32::try_from(ns).map_err(|_| bad(format!("mtimens {ns} out of range")))?),
    };
    Ok(Entry {
        kind,
        perm: row.mode & 0o7777,
        uid: row.uid,
        gid: row.gid,
        mtime: row.mtime,
        mtime_ns,
        xattrs: match &row.xattr {
            Some(blob) => xattr::decode(blob, path)?,
            None => Default::default(),
        },
        hardlink: None,
    })
}

/// The empty regular file cvmfs uses as `.cvmfscatalog` / `.cvmfsautocatalog` marker. It takes
/// the directory's mtime (cvmfs uses the current time): a marker made again for the same tree
/// must come out the same, or republishing identical content would make a new revision.
pub fn marker_entry(dir: &Entry) -> Entry {
    Entry {
        kind: EntryKind::File {
            size: 0,
            data: FileData::Whole(crate::hash::EMPTY_OBJECT),
        },
        perm: 0o664,
        uid: dir.uid,
        gid: dir.gid,
        mtime: dir.mtime,
        mtime_ns: None,
        xattrs: Default::default(),
        hardlink: None,
    }
}
