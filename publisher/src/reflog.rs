//! The reference log `.cvmfsreflog` (spec 6.2): SQLite stored uncompressed at the storage root;
//! manifest `Y` is the SHA-1 of its bytes.

use crate::error::{Error, Result};
use crate::tempdb::TempDb;
use catalog_writer::hash::ContentHash;
use rusqlite::params;

/// What a reflog entry refers to (`refs.type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefKind {
    Catalog = 0,
    Certificate = 1,
    History = 2,
    MetaInfo = 3,
}

impl RefKind {
    fn from_i64(v: i64) -> Option<RefKind> {
        Some(match v {
            0 => RefKind::Catalog,
            1 => RefKind::Certificate,
            2 => RefKind::History,
            3 => RefKind::MetaInfo,
            _ => return None,
        })
    }
}

/// One `refs` row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ref {
    pub hash: ContentHash,
    pub kind: RefKind,
    pub timestamp: i64,
}

/// An open reflog (a private temporary copy).
pub struct Reflog {
    db: TempDb,
}

impl Reflog {
    /// A new, empty reflog for `fqrn`.
    pub fn create(fqrn: &str) -> Result<Reflog> {
        let db = TempDb::create("new reflog")?;
        db.conn()
            .execute_batch(
                "CREATE TABLE properties (key TEXT, value TEXT, \
                   CONSTRAINT pk_properties PRIMARY KEY (key)); \
                 CREATE TABLE refs (hash TEXT, type INTEGER, timestamp INTEGER, \
                   CONSTRAINT pk_refs PRIMARY KEY (hash));",
            )
            .map_err(|e| Error::sql(db.what(), e))?;
        for (k, v) in [("schema", "1.0"), ("schema_revision", "0"), ("fqrn", fqrn)] {
            db.set_property(k, v)?;
        }
        Ok(Reflog { db })
    }

    /// Opens the bytes of a `.cvmfsreflog` file.
    pub fn from_bytes(bytes: &[u8], what: &str) -> Result<Reflog> {
        let db = TempDb::from_bytes(what, bytes, false)?;
        // Fail early on something that is not a reflog.
        db.conn()
            .query_row("SELECT count(*) FROM refs", [], |r| r.get::<_, i64>(0))
            .map_err(|e| Error::sql(what, e))?;
        Ok(Reflog { db })
    }

    fn sql(&self, e: rusqlite::Error) -> Error {
        Error::sql(self.db.what(), e)
    }

    pub fn property(&self, key: &str) -> Result<Option<String>> {
        self.db.property(key)
    }

    /// Adds a reference, or refreshes the timestamp of one already listed: the certificate
    /// of a repository published by `cvmfs_server` carries the time of the last publish, not
    /// of `mkfs` (as in the CVMFS 2.12 reference repository).
    pub fn add(&mut self, hash: &ContentHash, kind: RefKind, timestamp: i64) -> Result<()> {
        self.db
            .conn()
            .execute(
                "INSERT OR REPLACE INTO refs (hash, type, timestamp) VALUES (?1, ?2, ?3)",
                params![hash.to_hex(), kind as i64, timestamp],
            )
            .map(|_| ())
            .map_err(|e| self.sql(e))
    }

    /// Removes the entry for `hash` (garbage collection deleted its object); returns whether
    /// there was one.
    pub fn remove(&mut self, hash: &ContentHash) -> Result<bool> {
        self.db
            .conn()
            .execute("DELETE FROM refs WHERE hash = ?1", [hash.to_hex()])
            .map(|n| n > 0)
            .map_err(|e| self.sql(e))
    }

    pub fn contains(&self, hash: &ContentHash, kind: RefKind) -> Result<bool> {
        self.db
            .conn()
            .query_row(
                "SELECT count(*) FROM refs WHERE hash = ?1 AND type = ?2",
                params![hash.to_hex(), kind as i64],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
            .map_err(|e| self.sql(e))
    }

    /// All entries in insertion order.
    pub fn refs(&self) -> Result<Vec<Ref>> {
        let mut stmt = self
            .db
            .conn()
            .prepare("SELECT hash, type, timestamp FROM refs ORDER BY rowid")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (hash, kind, timestamp) = row.map_err(|e| self.sql(e))?;
            let bad = || Error::corrupt(self.db.what(), format!("bad ref {hash:?} type {kind}"));
            out.push(Ref {
                hash: ContentHash::from_hex(&hash).ok_or_else(bad)?,
                kind: RefKind::from_i64(kind).ok_or_else(bad)?,
                timestamp,
            });
        }
        Ok(out)
    }

    /// Closes the reflog and returns the file bytes (stored as `.cvmfsreflog`).
    pub fn to_bytes(self) -> Result<Vec<u8>> {
        self.db.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_refs() {
        let mut log = Reflog::create("t.example.org").unwrap();
        log.add(&ContentHash([1; 20]), RefKind::Catalog, 10)
            .unwrap();
        log.add(&ContentHash([2; 20]), RefKind::Certificate, 10)
            .unwrap();
        log.add(&ContentHash([1; 20]), RefKind::Catalog, 20)
            .unwrap();
        let bytes = log.to_bytes().unwrap();
        assert_eq!(&bytes[..16], b"SQLite format 3\0");
        let mut log = Reflog::from_bytes(&bytes, "test").unwrap();
        log.add(&ContentHash([3; 20]), RefKind::History, 30)
            .unwrap();
        log.add(&ContentHash([4; 20]), RefKind::Catalog, 40)
            .unwrap();
        assert!(log.remove(&ContentHash([4; 20])).unwrap());
        assert!(!log.remove(&ContentHash([4; 20])).unwrap());
        let refs = log.refs().unwrap();
        assert_eq!(refs.len(), 3);
        let of = |h: u8| {
            refs.iter()
                .find(|r| r.hash == ContentHash([h; 20]))
                .unwrap()
        };
        assert_eq!(
            (of(1).timestamp, of(2).timestamp, of(3).timestamp),
            (20, 10, 30)
        );
        assert!(log
            .contains(&ContentHash([3; 20]), RefKind::History)
            .unwrap());
        assert!(!log
            .contains(&ContentHash([3; 20]), RefKind::Catalog)
            .unwrap());
        assert_eq!(log.property("schema").unwrap().as_deref(), Some("1.0"));
        assert_eq!(
            log.property("fqrn").unwrap().as_deref(),
            Some("t.example.org")
        );
    }

    #[test]
    fn garbage_is_refused() {
        assert!(Reflog::from_bytes(b"not a database at all", "junk").is_err());
    }
}
