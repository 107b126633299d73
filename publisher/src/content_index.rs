//! `SqliteContentIndex`: the dedup index in `<home>/<fqrn>/state/content.db`. Local state only
//! (never published), so WAL mode is fine here.

use crate::error::{Error, Result};
use crate::store::{ContentIndex, PlainHash};
use catalog_writer::hash::{ContentHash, Suffix};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Pending records are written in one transaction once this many have accumulated.
const BATCH: usize = 512;

struct Record {
    plain: PlainHash,
    size: u64,
    suffix: Suffix,
    object: ContentHash,
    compressed_size: u64,
}

struct Inner {
    conn: Connection,
    pending: Vec<Record>,
}

/// Thread-safe plaintext → object index with batched writes.
pub struct SqliteContentIndex {
    path: PathBuf,
    set_aside: Option<PathBuf>,
    inner: Mutex<Inner>,
}

/// The schema's version (`PRAGMA user_version`). Version 0 keyed plaintexts by SHA-1, version
/// 2 by SHA-256, both in table `content`; version 3 keys them by BLAKE3 (see [`PlainHash`]) in
/// table `plain_blake3`. Older entries are dropped, not converted: the index only saves work,
/// and `cache seed` refills it. `content` stays, empty, for older binaries still run on this
/// home during an upgrade (they fail without it): what they add there is deleted on every
/// open, since its keys never match these.
const SCHEMA_VERSION: i64 = 3;

fn set_up(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
    // One writer at a time decides, so two processes opening an old index drop it once.
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let result = if version < SCHEMA_VERSION {
        conn.execute_batch(&format!(
            "DROP TABLE IF EXISTS content; \
             CREATE TABLE content ( \
               plain BLOB NOT NULL, size INTEGER NOT NULL, suffix TEXT NOT NULL, \
               object BLOB NOT NULL, compressed_size INTEGER NOT NULL, \
               PRIMARY KEY (plain, size, suffix)); \
             CREATE INDEX content_object ON content (object); \
             DROP TABLE IF EXISTS plain_blake3; \
             CREATE TABLE plain_blake3 ( \
               plain BLOB NOT NULL, size INTEGER NOT NULL, suffix TEXT NOT NULL, \
               object BLOB NOT NULL, compressed_size INTEGER NOT NULL, \
               PRIMARY KEY (plain, size, suffix)); \
             CREATE INDEX plain_blake3_object ON plain_blake3 (object); \
             PRAGMA user_version = {SCHEMA_VERSION};"
        ))
    } else {
        conn.execute_batch("DELETE FROM content")
    };
    match result {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Totals of a content index ([`SqliteContentIndex::summary`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexSummary {
    /// Plaintexts (whole files and chunks) recorded.
    pub entries: u64,
    /// Distinct objects they name.
    pub objects: u64,
    /// Their plaintext bytes.
    pub plain_bytes: u64,
    /// Their objects' compressed bytes (counted per entry).
    pub compressed_bytes: u64,
}

impl SqliteContentIndex {
    /// Opens or creates the index database at `path`.
    /// A damaged database is moved aside and started afresh ([`Self::set_aside`]).
    pub fn open(path: &Path) -> Result<SqliteContentIndex> {
        let db = crate::cache_db::open(path, set_up)?;
        Ok(SqliteContentIndex {
            path: path.to_path_buf(),
            set_aside: db.set_aside,
            inner: Mutex::new(Inner {
                conn: db.conn,
                pending: Vec::new(),
            }),
        })
    }

    /// Where a damaged database found at [`open`](Self::open) was moved (the index started
    /// empty: conversions compress again what it knew, or `cache seed` refills it).
    pub fn set_aside(&self) -> Option<&Path> {
        self.set_aside.as_deref()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves at worst unflushed records: keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes pending records.
    pub fn flush(&self) -> Result<()> {
        let mut inner = self.lock();
        self.flush_locked(&mut inner)
    }

    fn flush_locked(&self, inner: &mut Inner) -> Result<()> {
        if inner.pending.is_empty() {
            return Ok(());
        }
        let what = self.path.display().to_string();
        let Inner { conn, pending } = inner;
        let tx = conn
            .transaction()
            .map_err(|e| Error::sql(what.as_str(), e))?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO plain_blake3 (plain, size, suffix, object, compressed_size) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(|e| Error::sql(what.as_str(), e))?;
            for r in pending.iter() {
                stmt.execute(params![
                    &r.plain[..],
                    i64_of(r.size),
                    r.suffix.as_str(),
                    &r.object.0[..],
                    i64_of(r.compressed_size)
                ])
                .map_err(|e| Error::sql(what.as_str(), e))?;
            }
        }
        tx.commit().map_err(|e| Error::sql(what.as_str(), e))?;
        pending.clear();
        Ok(())
    }

    /// What the index holds: entries, distinct objects, and the plaintext and compressed bytes
    /// they stand for (pending records included, after a flush).
    pub fn summary(&self) -> Result<IndexSummary> {
        self.flush()?;
        let inner = self.lock();
        inner
            .conn
            .query_row(
                "SELECT COUNT(*), COUNT(DISTINCT object), COALESCE(SUM(size), 0), \
                 COALESCE(SUM(compressed_size), 0) FROM plain_blake3",
                [],
                |r| {
                    Ok(IndexSummary {
                        entries: r.get::<_, i64>(0)?.max(0) as u64,
                        objects: r.get::<_, i64>(1)?.max(0) as u64,
                        plain_bytes: r.get::<_, i64>(2)?.max(0) as u64,
                        compressed_bytes: r.get::<_, i64>(3)?.max(0) as u64,
                    })
                },
            )
            .map_err(|e| Error::sql(self.path.display().to_string(), e))
    }

    /// Forgets every entry pointing at `object` (e.g. after it was found missing).
    pub fn invalidate(&self, object: &ContentHash) -> Result<()> {
        let mut inner = self.lock();
        inner.pending.retain(|r| r.object != *object);
        inner
            .conn
            .execute(
                "DELETE FROM plain_blake3 WHERE object = ?1",
                [&object.0[..]],
            )
            .map(|_| ())
            .map_err(|e| Error::sql(self.path.display().to_string(), e))
    }

    /// Forgets every entry pointing at one of `objects` (garbage collection deleted them), in
    /// one transaction; returns how many entries went.
    pub fn invalidate_all(&self, objects: &[ContentHash]) -> Result<usize> {
        let what = self.path.display().to_string();
        let sql = |e| Error::sql(what.as_str(), e);
        let mut inner = self.lock();
        if !inner.pending.is_empty() {
            let gone: std::collections::HashSet<&ContentHash> = objects.iter().collect();
            inner.pending.retain(|r| !gone.contains(&r.object));
        }
        let tx = inner.conn.transaction().map_err(sql)?;
        let mut removed = 0;
        {
            let mut stmt = tx
                .prepare_cached("DELETE FROM plain_blake3 WHERE object = ?1")
                .map_err(sql)?;
            for object in objects {
                removed += stmt.execute([&object.0[..]]).map_err(sql)?;
            }
        }
        tx.commit().map_err(sql)?;
        Ok(removed)
    }

    /// Forgets every entry whose object `store` no longer holds (another home's garbage
    /// collection, or a hand, removed it); objects in `known` are taken as present without
    /// asking. Returns how many entries went.
    pub fn forget_missing(
        &self,
        store: &dyn crate::store::ObjectStore,
        known: &std::collections::HashSet<ContentHash>,
    ) -> Result<usize> {
        self.flush()?;
        let what = self.path.display().to_string();
        let sql = |e| Error::sql(what.as_str(), e);
        let objects: Vec<(Vec<u8>, String)> = {
            let inner = self.lock();
            let mut stmt = inner
                .conn
                .prepare("SELECT DISTINCT object, suffix FROM plain_blake3")
                .map_err(sql)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(sql)?;
            rows.collect::<rusqlite::Result<_>>().map_err(sql)?
        };
        let missing: Vec<ContentHash> = objects
            .iter()
            .filter_map(|(object, suffix)| {
                let hash = ContentHash::from_slice(object)?;
                let suffix = Suffix::from_str_opt(suffix)?;
                let present =
                    known.contains(&hash) || store.contains(&hash, suffix).unwrap_or(true);
                (!present).then_some(hash)
            })
            .collect();
        self.invalidate_all(&missing)
    }

    /// Whether some plaintext is recorded as stored in `object` with `suffix` (pending records
    /// included). Lets `cache seed` skip objects it has indexed before.
    pub fn has_object(&self, object: &ContentHash, suffix: Suffix) -> Result<bool> {
        let inner = self.lock();
        if inner
            .pending
            .iter()
            .any(|r| r.object == *object && r.suffix == suffix)
        {
            return Ok(true);
        }
        let sql = |e| Error::sql(self.path.display().to_string(), e);
        let mut stmt = inner
            .conn
            .prepare_cached("SELECT 1 FROM plain_blake3 WHERE object = ?1 AND suffix = ?2 LIMIT 1")
            .map_err(sql)?;
        stmt.exists(params![&object.0[..], suffix.as_str()])
            .map_err(sql)
    }

    fn lookup_db(
        inner: &Inner,
        plain: &PlainHash,
        size: u64,
        suffix: Suffix,
    ) -> rusqlite::Result<Option<(Vec<u8>, i64)>> {
        // Cached: parsing the statement anew cost more than the lookup itself.
        inner
            .conn
            .prepare_cached(
                "SELECT object, compressed_size FROM plain_blake3 WHERE plain = ?1 AND size = ?2 AND suffix = ?3",
            )?
            .query_row(
                params![&plain[..], i64_of(size), suffix.as_str()],
                |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)),
            )
            .optional()
    }
}

impl ContentIndex for SqliteContentIndex {
    fn lookup(&self, plain: &PlainHash, size: u64, suffix: Suffix) -> Option<(ContentHash, u64)> {
        let inner = self.lock();
        if let Some(r) = inner
            .pending
            .iter()
            .rev()
            .find(|r| r.plain == *plain && r.size == size && r.suffix == suffix)
        {
            return Some((r.object, r.compressed_size));
        }
        // A failing read is a cache miss: the pipeline then simply compresses again.
        let (object, csize) = SqliteContentIndex::lookup_db(&inner, plain, size, suffix).ok()??;
        Some((
            ContentHash::from_slice(&object)?,
            u64::try_from(csize).ok()?,
        ))
    }

    fn record(
        &self,
        plain: &PlainHash,
        size: u64,
        suffix: Suffix,
        object: ContentHash,
        compressed_size: u64,
    ) {
        let mut inner = self.lock();
        inner.pending.push(Record {
            plain: *plain,
            size,
            suffix,
            object,
            compressed_size,
        });
        if inner.pending.len() >= BATCH {
            // The index is an optimisation; a failed batch only costs recompression later.
            let _ = self.flush_locked(&mut inner);
        }
    }
}

impl Drop for SqliteContentIndex {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An index of the SHA-1 era is emptied on open: its keys cannot be compared with
    /// SHA-256 ones, and its table would otherwise take the new entries' 32-byte keys beside.
    #[test]
    fn an_index_keyed_by_sha1_is_dropped_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("content.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE content (plain BLOB NOT NULL, size INTEGER NOT NULL, \
                 suffix TEXT NOT NULL, object BLOB NOT NULL, compressed_size INTEGER NOT NULL, \
                 PRIMARY KEY (plain, size, suffix)); \
                 CREATE INDEX content_object ON content (object); \
                 INSERT INTO content VALUES (zeroblob(20), 1, '', zeroblob(20), 9);",
            )
            .unwrap();
        }
        let idx = SqliteContentIndex::open(&path).unwrap();
        assert_eq!(idx.summary().unwrap().entries, 0);
        idx.record(&[4; 32], 1, Suffix::None, ContentHash([5; 20]), 9);
        drop(idx);
        let idx = SqliteContentIndex::open(&path).unwrap();
        assert_eq!(idx.summary().unwrap().entries, 1, "kept on the next open");
        assert_eq!(
            idx.lookup(&[4; 32], 1, Suffix::None),
            Some((ContentHash([5; 20]), 9))
        );
    }

    /// `dir/content.db` with one record (plaintext `[6; 32]` → object `[7; 20]`), then `sql`
    /// run on it as another program would.
    fn one_record_then(dir: &Path, sql: &str) -> PathBuf {
        let path = dir.join("content.db");
        {
            let idx = SqliteContentIndex::open(&path).unwrap();
            idx.record(&[6; 32], 1, Suffix::None, ContentHash([7; 20]), 9);
        }
        Connection::open(&path).unwrap().execute_batch(sql).unwrap();
        path
    }

    /// An index keyed by SHA-256 (user_version 2) is emptied too: its keys would never match
    /// the BLAKE3 ones, only take space.
    #[test]
    fn an_index_keyed_by_sha256_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = one_record_then(dir.path(), "PRAGMA user_version = 2");
        let idx = SqliteContentIndex::open(&path).unwrap();
        assert_eq!(idx.summary().unwrap().entries, 0);
    }

    /// Rows an older binary adds to its table after the upgrade (it still runs on this home)
    /// are deleted on the next open; the BLAKE3 rows stay.
    #[test]
    fn rows_an_older_binary_adds_are_deleted_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = one_record_then(
            dir.path(),
            "INSERT INTO content VALUES (zeroblob(20), 1, '', zeroblob(20), 9); \
             INSERT INTO content VALUES (zeroblob(32), 1, '', zeroblob(20), 9);",
        );
        let idx = SqliteContentIndex::open(&path).unwrap();
        assert_eq!(idx.summary().unwrap().entries, 1);
        let legacy: i64 = Connection::open(&path)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM content", [], |r| r.get(0))
            .unwrap();
        assert_eq!(legacy, 0);
        assert_eq!(
            idx.lookup(&[6; 32], 1, Suffix::None),
            Some((ContentHash([7; 20]), 9))
        );
    }

    #[test]
    fn record_lookup_persist_invalidate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("content.db");
        let obj = ContentHash([7; 20]);
        {
            let idx = SqliteContentIndex::open(&path).unwrap();
            assert!(idx.lookup(&[1; 32], 10, Suffix::None).is_none());
            idx.record(&[1; 32], 10, Suffix::None, obj, 8);
            assert_eq!(idx.lookup(&[1; 32], 10, Suffix::None), Some((obj, 8)));
            assert!(idx.lookup(&[1; 32], 10, Suffix::Partial).is_none());
            for i in 0..(BATCH as u64 + 3) {
                idx.record(&[2; 32], i, Suffix::Partial, ContentHash([3; 20]), i);
            }
        }
        let idx = SqliteContentIndex::open(&path).unwrap();
        assert_eq!(idx.lookup(&[1; 32], 10, Suffix::None), Some((obj, 8)));
        assert_eq!(
            idx.lookup(&[2; 32], BATCH as u64 + 2, Suffix::Partial),
            Some((ContentHash([3; 20]), BATCH as u64 + 2))
        );
        idx.invalidate(&obj).unwrap();
        assert!(idx.lookup(&[1; 32], 10, Suffix::None).is_none());
    }

    #[test]
    fn usable_from_threads() {
        let dir = tempfile::tempdir().unwrap();
        let idx = std::sync::Arc::new(SqliteContentIndex::open(&dir.path().join("c.db")).unwrap());
        let handles: Vec<_> = (0..4u8)
            .map(|t| {
                let idx = idx.clone();
                std::thread::spawn(move || {
                    for i in 0..200u64 {
                        idx.record(&[t; 32], i, Suffix::None, ContentHash([t; 20]), i + 1);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        idx.flush().unwrap();
        for t in 0..4u8 {
            assert_eq!(
                idx.lookup(&[t; 32], 199, Suffix::None),
                Some((ContentHash([t; 20]), 200))
            );
        }
    }
}
