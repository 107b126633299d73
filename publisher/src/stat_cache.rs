//! `SqliteStatCache`: what `publish` learnt about the files of a source tree, in
//! `<home>/<fqrn>/state/stat.db`, so that a file whose state has not changed since it was read
//! is not opened again (git's index, rsync's quick check).
//!
//! A row says: the file at this path, with these dev, inode, size, mtime, ctime, mode and
//! owner, had the content stored as these objects. It is a fact about the file, not about a
//! revision, so a failed or crashed publish cannot make it wrong; the objects it names may be
//! gone (gc, a roll back of a failed publish, a torn object deleted after a power loss), so
//! the reader checks each with `ObjectStore::contains` before trusting a row, the same gate
//! that keeps the content index correct. Rows are written only after a commit, in one SQLite
//! transaction.
//!
//! Rows are kept per source root and chunking mode (`--no-chunking` stores other objects). Each
//! root remembers when a publish last recorded it; the rows of a root no publish has walked
//! for [`ROOT_TTL_SECS`] (a tree published once, then moved or deleted) are dropped by the
//! next publish of any root, so `stat.db` does not keep them for ever.
//!
//! A state equal to the recorded one proves nothing across a remount: a rebuilt read-only
//! image (squashfs, erofs, an ISO) mounted where the old one was gives its files the same
//! device, inode numbers, size, mtime and ctime (reproducible builds fix all timestamps). So
//! a row also holds the unique id of the mount its directory was on (`statx`
//! `STATX_MNT_ID_UNIQUE`, never reused within a boot), and a root's rows are trusted only in
//! the boot that recorded them ([`SqliteStatCache::trusted`]): the first publish after a
//! reboot reads every file again.

use crate::error::{Error, Result};
use crate::txn::unsynced::boot_id;
use catalog_writer::entry::{Chunk, FileData, Xattrs};
use catalog_writer::hash::ContentHash;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The state of a file as `lstat`/`fstat` give it; two equal states mean an unchanged file
/// (users cannot set ctime, and every write, chmod, chown or xattr change moves it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStat {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    /// File type and permission bits (`st_mode`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Unique id of the mount the file's directory is on (0: the kernel does not tell).
    pub mnt: u64,
}

/// A file's recorded state, where its content is stored and its extended attributes (a
/// change of those moves ctime too: `llistxattr` per file was a tenth of a no-op publish).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedFile {
    pub stat: FileStat,
    pub data: FileData,
    pub xattrs: Xattrs,
}

/// Rows read by a walk: the files recorded directly in one directory of the source tree.
pub trait StatCache {
    /// The files recorded in `dir` (relative to the source root, components joined by `/`,
    /// empty for the root), by name. A failing read is a miss: the files are read again.
    fn files_in(&self, dir: &[u8]) -> Vec<(Vec<u8>, CachedFile)>;
}

/// What a walk learnt, applied after the publish committed ([`SqliteStatCache::apply`]).
#[derive(Debug, Default)]
pub struct StatCacheUpdate {
    /// Files read completely and in a state old enough to trust, by path relative to the
    /// source root (one boxed path a file: a first publish records every file).
    pub recorded: Vec<(Box<[u8]>, CachedFile)>,
    /// Rows found stale: changed, no longer regular files, or gone from their directory.
    pub stale: Vec<(Vec<u8>, Vec<u8>)>,
    /// Every directory the walk listed: rows of other directories are dropped.
    pub dirs: HashSet<Vec<u8>>,
    /// Drop every row of the source root first (a rescan, which read no rows).
    pub replace_all: bool,
}

/// The stat cache of one repository, for one source root.
pub struct SqliteStatCache {
    path: PathBuf,
    set_aside: Option<PathBuf>,
    conn: Connection,
    root: i64,
    /// The root's rows were recorded in this boot.
    trusted: bool,
    /// This boot's id ('' if unknown: then nothing is ever trusted).
    boot: String,
}

/// The layout of `stat.db` (`PRAGMA user_version`); 2 added the roots' chunking mode, last use
/// and boot, and the rows' mount ids.
const SCHEMA: i64 = 2;

/// A source root not walked by a publish for this long (30 days) loses its rows.
pub const ROOT_TTL_SECS: i64 = 30 * 24 * 3600;

/// A source tree the stat cache has rows for (`cache stats`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatRoot {
    /// The tree's canonical path.
    pub path: PathBuf,
    /// How its files were cut into objects (`chunks MIN/AVG/MAX` or `whole`).
    pub mode: String,
    /// Files recorded.
    pub files: u64,
    /// When a publish last recorded it (seconds since the epoch; `None`: never).
    pub used: Option<i64>,
}

/// Seconds since the epoch (0 if the clock is before it).
fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn i64_of(v: u64) -> i64 {
    // Stored bit for bit: dev and inode numbers may use the top bit.
    v as i64
}

impl SqliteStatCache {
    /// Opens (or creates) the cache at `path` for the source tree at `root` (an absolute,
    /// canonical path) published in chunking `mode` (see [`StatRoot::mode`]). A damaged
    /// database is set aside and started afresh.
    pub fn open(path: &Path, root: &Path, mode: &str) -> Result<SqliteStatCache> {
        let db = crate::cache_db::open(path, |conn| {
            // Rows of another layout are only a cache: dropped, not migrated.
            let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            if version != SCHEMA {
                conn.execute_batch(&format!(
                    "DROP TABLE IF EXISTS files; DROP TABLE IF EXISTS roots; \
                     PRAGMA user_version = {SCHEMA};"
                ))?;
            }
            conn.execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                 CREATE TABLE IF NOT EXISTS roots ( \
                   id INTEGER PRIMARY KEY, path BLOB NOT NULL, mode TEXT NOT NULL, \
                   used INTEGER NOT NULL DEFAULT 0, boot TEXT NOT NULL DEFAULT '', \
                   UNIQUE (path, mode)); \
                 CREATE TABLE IF NOT EXISTS files ( \
                   root INTEGER NOT NULL, dir BLOB NOT NULL, name BLOB NOT NULL, \
                   dev INTEGER NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL, \
                   mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, \
                   mode INTEGER NOT NULL, uid INTEGER NOT NULL, gid INTEGER NOT NULL, \
                   mnt INTEGER NOT NULL, data BLOB NOT NULL, xattrs BLOB NOT NULL, \
                   PRIMARY KEY (root, dir, name)) WITHOUT ROWID;",
            )
        })?;
        let what = path.display().to_string();
        let sql = |e| Error::sql(what.as_str(), e);
        let key = root.as_os_str().as_bytes();
        db.conn
            .execute(
                "INSERT OR IGNORE INTO roots (path, mode) VALUES (?1, ?2)",
                params![key, mode],
            )
            .map_err(sql)?;
        let (id, boot): (i64, String) = db
            .conn
            .query_row(
                "SELECT id, boot FROM roots WHERE path = ?1 AND mode = ?2",
                params![key, mode],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(sql)?;
        let this_boot = boot_id();
        Ok(SqliteStatCache {
            path: path.to_path_buf(),
            set_aside: db.set_aside,
            conn: db.conn,
            root: id,
            trusted: this_boot.as_deref() == Some(boot.as_str()),
            boot: this_boot.unwrap_or_default(),
        })
    }

    /// Whether the root's rows may be used: they were recorded in this boot, so their mount
    /// ids name the mounts the walk sees (a reboot may give a remounted image the old id).
    /// An untrusted cache is not consulted; the next [`apply`](Self::apply), with
    /// `replace_all`, makes it trusted.
    pub fn trusted(&self) -> bool {
        self.trusted
    }

    /// Where a damaged database found at [`open`](Self::open) was moved.
    pub fn set_aside(&self) -> Option<&Path> {
        self.set_aside.as_deref()
    }

    /// Writes what a walk learnt, in one transaction; marks this root used now and drops
    /// the rows of roots unused for [`ROOT_TTL_SECS`].
    pub fn apply(&mut self, update: &StatCacheUpdate) -> Result<()> {
        self.apply_at(update, now_secs())
    }

    /// [`apply`](Self::apply), keeping the rows only if `keep` (called once they are all
    /// written, before they are committed) says so: the rows can be written while the
    /// revision they describe is being committed, and dropped if it fails. Returns whether
    /// they were kept.
    pub fn apply_if(
        &mut self,
        update: &StatCacheUpdate,
        keep: impl FnOnce() -> bool,
    ) -> Result<bool> {
        self.write_rows(update, now_secs(), keep)
    }

    fn apply_at(&mut self, update: &StatCacheUpdate, now: i64) -> Result<()> {
        self.write_rows(update, now, || true).map(|_| ())
    }

    fn write_rows(
        &mut self,
        update: &StatCacheUpdate,
        now: i64,
        keep: impl FnOnce() -> bool,
    ) -> Result<bool> {
        let what = self.path.display().to_string();
        let sql = |e| Error::sql(what.as_str(), e);
        let root = self.root;
        let gone_dirs = if update.replace_all {
            Vec::new()
        } else {
            self.dirs_not_in(&update.dirs).map_err(sql)?
        };
        let tx = self.conn.transaction().map_err(sql)?;
        if update.replace_all {
            tx.execute("DELETE FROM files WHERE root = ?1", [root])
                .map_err(sql)?;
        }
        tx.execute(
            "UPDATE roots SET used = ?2, boot = ?3 WHERE id = ?1",
            params![root, now, self.boot],
        )
        .map_err(sql)?;
        let cutoff = now.saturating_sub(ROOT_TTL_SECS);
        tx.execute(
            "DELETE FROM files WHERE root IN (SELECT id FROM roots WHERE used < ?1)",
            [cutoff],
        )
        .map_err(sql)?;
        tx.execute("DELETE FROM roots WHERE used < ?1", [cutoff])
            .map_err(sql)?;
        {
            let mut del_dir = tx
                .prepare("DELETE FROM files WHERE root = ?1 AND dir = ?2")
                .map_err(sql)?;
            for dir in &gone_dirs {
                del_dir.execute(params![root, dir]).map_err(sql)?;
            }
            let mut del = tx
                .prepare("DELETE FROM files WHERE root = ?1 AND dir = ?2 AND name = ?3")
                .map_err(sql)?;
            for (dir, name) in &update.stale {
                del.execute(params![root, dir, name]).map_err(sql)?;
            }
            let mut put = tx
                .prepare(
                    "INSERT OR REPLACE INTO files (root, dir, name, dev, ino, size, mtime_ns, \
                     ctime_ns, mode, uid, gid, mnt, data, xattrs) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                )
                .map_err(sql)?;
            for (path, f) in &update.recorded {
                let (dir, name) = split_path(path);
                let s = &f.stat;
                put.execute(params![
                    root,
                    dir,
                    name,
                    i64_of(s.dev),
                    i64_of(s.ino),
                    i64_of(s.size),
                    s.mtime_ns,
                    s.ctime_ns,
                    s.mode,
                    s.uid,
                    s.gid,
                    i64_of(s.mnt),
                    encode_data(&f.data),
                    encode_xattrs(&f.xattrs)
                ])
                .map_err(sql)?;
            }
        }
        if !keep() {
            // Dropping the transaction rolls it back.
            return Ok(false);
        }
        tx.commit().map_err(sql)?;
        Ok(true)
    }

    /// The directories with rows that are not in `seen`, found by skipping from one
    /// directory to the next on the primary key (one lookup per directory, not per row).
    fn dirs_not_in(&self, seen: &HashSet<Vec<u8>>) -> rusqlite::Result<Vec<Vec<u8>>> {
        let mut next = self.conn.prepare_cached(
            "SELECT dir FROM files WHERE root = ?1 AND dir > ?2 ORDER BY dir LIMIT 1",
        )?;
        let mut first = self
            .conn
            .prepare_cached("SELECT dir FROM files WHERE root = ?1 ORDER BY dir LIMIT 1")?;
        let mut gone = Vec::new();
        let mut cur: Option<Vec<u8>> = first.query_row([self.root], |r| r.get(0)).optional()?;
        while let Some(dir) = cur {
            cur = next
                .query_row(params![self.root, &dir], |r| r.get(0))
                .optional()?;
            if !seen.contains(&dir) {
                gone.push(dir);
            }
        }
        Ok(gone)
    }

    fn rows_in(&self, dir: &[u8]) -> rusqlite::Result<Vec<(Vec<u8>, CachedFile)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT name, dev, ino, size, mtime_ns, ctime_ns, mode, uid, gid, mnt, data, \
             xattrs FROM files WHERE root = ?1 AND dir = ?2",
        )?;
        let rows = stmt.query_map(params![self.root, dir], |r| {
            let stat = FileStat {
                dev: r.get::<_, i64>(1)? as u64,
                ino: r.get::<_, i64>(2)? as u64,
                size: r.get::<_, i64>(3)? as u64,
                mtime_ns: r.get(4)?,
                ctime_ns: r.get(5)?,
                mode: r.get(6)?,
                uid: r.get(7)?,
                gid: r.get(8)?,
                mnt: r.get::<_, i64>(9)? as u64,
            };
            let blobs = (r.get::<_, Vec<u8>>(10)?, r.get::<_, Vec<u8>>(11)?);
            Ok((r.get::<_, Vec<u8>>(0)?, stat, blobs))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, stat, (data, xattrs)) = row?;
            // A row whose blobs do not decode is left out: its file is read again and the
            // row replaced or dropped.
            if let (Some(data), Some(xattrs)) = (decode_data(&data), decode_xattrs(&xattrs)) {
                out.push((name, CachedFile { stat, data, xattrs }));
            }
        }
        Ok(out)
    }

    /// Rows recorded for this source root (for tests and diagnostics).
    pub fn len(&self) -> Result<u64> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM files WHERE root = ?1",
                [self.root],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.max(0) as u64)
            .map_err(|e| Error::sql(self.path.display().to_string(), e))
    }

    /// Whether no row is recorded for this source root.
    pub fn is_empty(&self) -> Result<bool> {
        self.len().map(|n| n == 0)
    }
}

/// The source roots a stat cache at `path` knows, with their number of files and last use
/// (for `cache stats`). Read only: a missing database, or one of another layout, holds none.
pub fn roots(path: &Path) -> Result<Vec<StatRoot>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let what = path.display().to_string();
    let sql = |e| Error::sql(what.as_str(), e);
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(sql)?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql)?;
    if version != SCHEMA {
        return Ok(Vec::new());
    }
    let mut stmt = conn
        .prepare(
            "SELECT roots.path, COUNT(files.root), roots.used, roots.mode FROM roots \
             LEFT JOIN files ON files.root = roots.id GROUP BY roots.id \
             ORDER BY roots.path, roots.mode",
        )
        .map_err(sql)?;
    let rows = stmt
        .query_map([], |r| {
            let root: Vec<u8> = r.get(0)?;
            let n: i64 = r.get(1)?;
            let used: i64 = r.get(2)?;
            Ok(StatRoot {
                path: PathBuf::from(OsStr::from_bytes(&root)),
                mode: r.get(3)?,
                files: n.max(0) as u64,
                used: (used > 0).then_some(used),
            })
        })
        .map_err(sql)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(sql)
}

impl StatCache for SqliteStatCache {
    fn files_in(&self, dir: &[u8]) -> Vec<(Vec<u8>, CachedFile)> {
        self.rows_in(dir).unwrap_or_default()
    }
}

/// A relative path's directory (empty at the root) and name.
fn split_path(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// Extended attributes as a blob: name length, name, value length, value (u32 little-endian
/// lengths), pair after pair; none is the empty blob.
fn encode_xattrs(xattrs: &Xattrs) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in xattrs {
        for part in [name, value] {
            out.extend_from_slice(&(part.len() as u32).to_le_bytes());
            out.extend_from_slice(part);
        }
    }
    out
}

fn decode_xattrs(mut bytes: &[u8]) -> Option<Xattrs> {
    let take = |bytes: &mut &[u8]| -> Option<Vec<u8>> {
        let (len, rest) = bytes.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
        let part = rest.get(..len)?.to_vec();
        *bytes = &rest[len..];
        Some(part)
    };
    let mut out = Xattrs::new();
    while !bytes.is_empty() {
        let name = take(&mut bytes)?;
        out.insert(name, take(&mut bytes)?);
    }
    Some(out)
}

const WHOLE: u8 = 0;
const CHUNKED: u8 = 1;

/// `FileData` as a blob: a tag, then the object (whole) or offset, size and object of each
/// chunk (little-endian).
fn encode_data(data: &FileData) -> Vec<u8> {
    match data {
        FileData::Whole(h) => [&[WHOLE][..], &h.0[..]].concat(),
        FileData::Chunked(chunks) => {
            let mut out = Vec::with_capacity(1 + chunks.len() * 36);
            out.push(CHUNKED);
            for c in chunks {
                out.extend_from_slice(&c.offset.to_le_bytes());
                out.extend_from_slice(&c.size.to_le_bytes());
                out.extend_from_slice(&c.hash.0);
            }
            out
        }
    }
}

fn decode_data(bytes: &[u8]) -> Option<FileData> {
    let (&tag, rest) = bytes.split_first()?;
    match tag {
        WHOLE => Some(FileData::Whole(ContentHash::from_slice(rest)?)),
        CHUNKED if !rest.is_empty() && rest.len() % 36 == 0 => rest
            .chunks_exact(36)
            .map(|c| {
                Some(Chunk {
                    offset: u64::from_le_bytes(c[..8].try_into().ok()?),
                    size: u64::from_le_bytes(c[8..16].try_into().ok()?),
                    hash: ContentHash::from_slice(&c[16..])?,
                })
            })
            .collect::<Option<Vec<_>>>()
            .map(FileData::Chunked),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODE: &str = "chunks 4194304/8388608/16777216";

    fn file(n: u8, data: FileData) -> CachedFile {
        CachedFile {
            stat: FileStat {
                dev: u64::MAX - n as u64,
                ino: n as u64,
                size: 10,
                mtime_ns: 1_000_000_000_123,
                ctime_ns: -5,
                mode: 0o100644,
                uid: 1000,
                gid: 100,
                mnt: u64::MAX - 7,
            },
            data,
            xattrs: Xattrs::from([(b"user.a".to_vec(), b"v\0".to_vec())]),
        }
    }

    fn names(c: &SqliteStatCache, dir: &str) -> Vec<String> {
        let mut v: Vec<_> = c
            .files_in(dir.as_bytes())
            .into_iter()
            .map(|(n, _)| String::from_utf8(n).unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn roots_lists_each_source_tree_with_its_files() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("stat.db");
        assert!(roots(&db).unwrap().is_empty(), "no database, no roots");
        let mut a = SqliteStatCache::open(&db, Path::new("/src/a"), MODE).unwrap();
        let mut update = StatCacheUpdate::default();
        update.dirs.insert(Vec::new());
        for (path, n) in [("x", 1), ("y", 2)] {
            let row = file(n, FileData::Whole(ContentHash([n; 20])));
            update.recorded.push((path.as_bytes().into(), row));
        }
        a.apply_at(&update, 1_000).unwrap();
        let _b = SqliteStatCache::open(&db, Path::new("/src/b"), MODE).unwrap();
        let root = |p: &str, files, used| StatRoot {
            path: PathBuf::from(p),
            mode: MODE.to_string(),
            files,
            used,
        };
        assert_eq!(
            roots(&db).unwrap(),
            vec![root("/src/a", 2, Some(1_000)), root("/src/b", 0, None)]
        );
    }

    fn one_file_update(n: u8) -> StatCacheUpdate {
        let mut update = StatCacheUpdate::default();
        update.dirs.insert(Vec::new());
        let row = file(n, FileData::Whole(ContentHash([n; 20])));
        update.recorded.push((b"f"[..].into(), row));
        update
    }

    #[test]
    fn roots_not_published_for_the_ttl_lose_their_rows() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("stat.db");
        let t0 = 1_700_000_000;
        let mut old = SqliteStatCache::open(&db, Path::new("/src/old"), MODE).unwrap();
        old.apply_at(&one_file_update(1), t0).unwrap();
        let mut recent = SqliteStatCache::open(&db, Path::new("/src/recent"), MODE).unwrap();
        recent.apply_at(&one_file_update(2), t0 + 10).unwrap();
        // Just inside the TTL for both: nothing goes.
        let mut other = SqliteStatCache::open(&db, Path::new("/src/other"), MODE).unwrap();
        other
            .apply_at(&one_file_update(3), t0 + ROOT_TTL_SECS)
            .unwrap();
        assert_eq!(roots(&db).unwrap().len(), 3);
        // One second later `old` is past it: its rows and its root go, the others stay.
        other
            .apply_at(&one_file_update(3), t0 + ROOT_TTL_SECS + 1)
            .unwrap();
        let left: Vec<_> = roots(&db).unwrap().into_iter().map(|r| r.path).collect();
        assert_eq!(
            left,
            [PathBuf::from("/src/other"), PathBuf::from("/src/recent")]
        );
        assert!(old.is_empty().unwrap());
        assert_eq!(recent.len().unwrap(), 1);
    }

    /// Rows written while a commit runs stay only if it succeeds.
    #[test]
    fn rows_are_kept_only_when_the_caller_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("stat.db");
        let mut c = SqliteStatCache::open(&db, Path::new("/src"), MODE).unwrap();
        assert!(!c.apply_if(&one_file_update(1), || false).unwrap());
        assert!(c.files_in(b"").is_empty());
        assert!(c.is_empty().unwrap());
        assert!(c.apply_if(&one_file_update(1), || true).unwrap());
        drop(c);
        let c = SqliteStatCache::open(&db, Path::new("/src"), MODE).unwrap();
        assert_eq!(names(&c, ""), ["f"]);
    }

    #[test]
    fn each_chunking_mode_has_rows_of_its_own() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("stat.db");
        let mut chunked = SqliteStatCache::open(&db, Path::new("/src"), MODE).unwrap();
        chunked.apply(&one_file_update(1)).unwrap();
        let whole = SqliteStatCache::open(&db, Path::new("/src"), "whole").unwrap();
        assert!(whole.files_in(b"").is_empty(), "--no-chunking reads again");
        assert_eq!(names(&chunked, ""), ["f"]);
        let modes: Vec<_> = roots(&db).unwrap().into_iter().map(|r| r.mode).collect();
        assert_eq!(modes, [MODE, "whole"]);
    }

    #[test]
    fn rows_are_trusted_only_in_the_boot_that_recorded_them() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("stat.db");
        let mut c = SqliteStatCache::open(&db, Path::new("/src"), MODE).unwrap();
        assert!(!c.trusted(), "nothing recorded yet");
        c.apply(&one_file_update(1)).unwrap();
        drop(c);
        let c = SqliteStatCache::open(&db, Path::new("/src"), MODE).unwrap();
        assert!(c.trusted(), "recorded in this boot");
        drop(c);
        // Recorded in another boot: mount ids may have been given out again since.
        let conn = Connection::open(&db).unwrap();
        conn.execute("UPDATE roots SET boot = 'another-boot'", [])
            .unwrap();
        drop(conn);
        let mut c = SqliteStatCache::open(&db, Path::new("/src"), MODE).unwrap();
        assert!(!c.trusted());
        let rescan = StatCacheUpdate {
            replace_all: true,
            ..one_file_update(2)
        };
        c.apply(&rescan).unwrap();
        drop(c);
        let c = SqliteStatCache::open(&db, Path::new("/src"), MODE).unwrap();
        assert!(c.trusted(), "a publish in this boot recorded them again");
    }

    #[test]
    fn rows_round_trip_per_root_and_stale_rows_go() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("stat.db");
        let whole = file(1, FileData::Whole(ContentHash([7; 20])));
        let chunks = FileData::Chunked(vec![
            Chunk {
                offset: 0,
                size: 4,
                hash: ContentHash([1; 20]),
            },
            Chunk {
                offset: 4,
                size: 6,
                hash: ContentHash([2; 20]),
            },
        ]);
        let chunked = file(2, chunks);
        let mut a = SqliteStatCache::open(&db, Path::new("/src/a"), MODE).unwrap();
        let mut update = StatCacheUpdate::default();
        for (dir, path, f) in [
            ("", "top", &whole),
            ("d", "d/x", &chunked),
            ("d", "d/y", &whole),
            ("e", "e/z", &whole),
        ] {
            update.dirs.insert(dir.as_bytes().to_vec());
            update.recorded.push((path.as_bytes().into(), f.clone()));
        }
        a.apply(&update).unwrap();
        let b = SqliteStatCache::open(&db, Path::new("/src/b"), MODE).unwrap();
        assert!(
            b.is_empty().unwrap(),
            "another source root has its own rows"
        );
        let got = a.files_in(b"d");
        assert_eq!(names(&a, "d"), ["x", "y"]);
        assert!(got.contains(&(b"x".to_vec(), chunked.clone())));
        assert!(got.contains(&(b"y".to_vec(), whole.clone())));

        // Next walk: `e` is gone, `d/y` went stale, `d/w` is new.
        let mut next = StatCacheUpdate::default();
        next.dirs.extend([b"".to_vec(), b"d".to_vec()]);
        next.stale.push((b"d".to_vec(), b"y".to_vec()));
        next.recorded.push((b"d/w"[..].into(), whole.clone()));
        a.apply(&next).unwrap();
        drop(a);
        let a = SqliteStatCache::open(&db, Path::new("/src/a"), MODE).unwrap();
        assert_eq!(names(&a, ""), ["top"]);
        assert_eq!(names(&a, "d"), ["w", "x"]);
        assert!(names(&a, "e").is_empty());
        assert_eq!(a.len().unwrap(), 3);
    }

    #[test]
    fn a_database_of_another_layout_is_started_afresh() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("stat.db");
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch("CREATE TABLE files (root INTEGER, dir BLOB, name BLOB);")
            .unwrap();
        drop(conn);
        let mut c = SqliteStatCache::open(&db, Path::new("/r"), MODE).unwrap();
        let mut u = StatCacheUpdate::default();
        u.recorded.push((
            b"f"[..].into(),
            file(4, FileData::Whole(ContentHash([4; 20]))),
        ));
        c.apply(&u).unwrap();
        assert_eq!(names(&c, ""), ["f"]);
    }

    #[test]
    fn replace_all_starts_the_root_afresh() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = SqliteStatCache::open(&tmp.path().join("s.db"), Path::new("/r"), MODE).unwrap();
        let f = file(3, FileData::Whole(ContentHash([3; 20])));
        let mut u = StatCacheUpdate::default();
        u.recorded.push((b"d/old"[..].into(), f.clone()));
        u.dirs.insert(b"d".to_vec());
        c.apply(&u).unwrap();
        let mut rescan = StatCacheUpdate {
            replace_all: true,
            ..Default::default()
        };
        rescan.recorded.push((b"d/new"[..].into(), f));
        c.apply(&rescan).unwrap();
        assert_eq!(names(&c, "d"), ["new"]);
    }

    #[test]
    fn paths_split_at_their_last_slash() {
        assert_eq!(split_path(b"top"), (&b""[..], &b"top"[..]));
        assert_eq!(split_path(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
    }

    #[test]
    fn undecodable_data_is_a_miss() {
        assert!(decode_data(b"").is_none());
        assert!(decode_data(&[CHUNKED]).is_none());
        assert!(decode_data(&[WHOLE, 1, 2]).is_none());
        assert!(decode_data(&[9; 21]).is_none());
        let d = FileData::Whole(ContentHash([5; 20]));
        assert_eq!(decode_data(&encode_data(&d)), Some(d));
        let x = Xattrs::from([(b"user.a".to_vec(), b"1".to_vec()), (b"b".to_vec(), vec![])]);
        assert_eq!(decode_xattrs(&encode_xattrs(&x)), Some(x));
        assert_eq!(decode_xattrs(b""), Some(Xattrs::new()));
        assert!(decode_xattrs(&[1, 0, 0, 0]).is_none());
        assert!(decode_xattrs(&[1, 0, 0, 0, b'a', 5, 0, 0, 0, b'x']).is_none());
    }
}
