//! The entry model shared by every stage: what one path of the repository is.

use crate::hash::ContentHash;
use std::collections::BTreeMap;

/// Extended attributes, sorted by key (bytewise) as cvmfs writes them.
pub type Xattrs = BTreeMap<Vec<u8>, Vec<u8>>;

/// One chunk of a chunked file: its uncompressed range and the hash of its `P` object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub offset: u64,
    pub size: u64,
    pub hash: ContentHash,
}

/// Where a regular file's bytes live in the object store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileData {
    /// One zlib object without suffix.
    Whole(ContentHash),
    /// Contiguous chunks from offset 0, each a zlib object with suffix `P`.
    Chunked(Vec<Chunk>),
}

/// The type of an entry and what goes with that type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Directory,
    File {
        size: u64,
        data: FileData,
    },
    Symlink {
        target: Vec<u8>,
    },
    /// `rdev` in glibc `makedev` encoding.
    CharDevice {
        rdev: u64,
    },
    BlockDevice {
        rdev: u64,
    },
    Fifo,
    Socket,
}

/// Metadata and content reference of one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: EntryKind,
    /// Permission bits including setuid, setgid and sticky (`mode & 0o7777`).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    /// Nanosecond part of the mtime when the source knows it.
    pub mtime_ns: Option<u32>,
    pub xattrs: Xattrs,
    /// Entries that were one inode in the source carry the same id. The catalog writer turns
    /// members sitting in one directory into a CVMFS hardlink group and the others into
    /// independent copies, as cvmfs does.
    pub hardlink: Option<u64>,
}

impl Entry {
    /// A directory with the given permission bits, owner and mtime.
    pub fn directory(perm: u32, uid: u32, gid: u32, mtime: i64) -> Entry {
        Entry {
            kind: EntryKind::Directory,
            perm,
            uid,
            gid,
            mtime,
            mtime_ns: None,
            xattrs: Xattrs::new(),
            hardlink: None,
        }
    }

    /// Full `st_mode`: type bits plus permission bits.
    pub fn mode(&self) -> u32 {
        let ty = match self.kind {
            EntryKind::Directory => libc::S_IFDIR,
            EntryKind::File { .. } => libc::S_IFREG,
            EntryKind::Symlink { .. } => libc::S_IFLNK,
            EntryKind::CharDevice { .. } => libc::S_IFCHR,
            EntryKind::BlockDevice { .. } => libc::S_IFBLK,
            EntryKind::Fifo => libc::S_IFIFO,
            EntryKind::Socket => libc::S_IFSOCK,
        };
        ty | (self.perm & 0o7777)
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.kind, EntryKind::Directory)
    }
}

/// glibc `makedev` encoding of a device number, as stored in the catalog `size` column.
pub fn makedev(major: u64, minor: u64) -> u64 {
    ((major & 0xffff_f000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0xff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makedev_vectors() {
        assert_eq!(makedev(1, 3), 259);
        assert_eq!(makedev(8, 1), 2049);
    }

    #[test]
    fn modes() {
        assert_eq!(Entry::directory(0o755, 0, 0, 0).mode(), 16877);
    }
}
