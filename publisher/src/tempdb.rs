//! SQLite databases that travel as bytes (history, reflog, catalogs being inspected): opened
//! from a private temporary directory, serialized back by closing and reading the file.

use crate::error::{Error, Result};
use rusqlite::{Connection, OpenFlags};
use std::fs;
use std::path::PathBuf;
use tempfile::TempDir;

pub(crate) struct TempDb {
    _dir: TempDir,
    path: PathBuf,
    conn: Connection,
    what: String,
}

impl TempDb {
    /// A new, empty database; `what` names it in error messages.
    pub(crate) fn create(what: &str) -> Result<TempDb> {
        TempDb::with_bytes(what, None, false)
    }

    /// Opens a copy of `bytes`; `read_only` forbids changes.
    pub(crate) fn from_bytes(what: &str, bytes: &[u8], read_only: bool) -> Result<TempDb> {
        TempDb::with_bytes(what, Some(bytes), read_only)
    }

    fn with_bytes(what: &str, bytes: Option<&[u8]>, read_only: bool) -> Result<TempDb> {
        let dir = tempfile::Builder::new()
            .prefix("cvmfs-oci-db")
            .tempdir()
            .map_err(|e| Error::io(format!("{what}: temporary directory"), e))?;
        let path = dir.path().join("db.sqlite");
        if let Some(b) = bytes {
            fs::write(&path, b).map_err(|e| Error::io(format!("{what}: {}", path.display()), e))?;
        }
        let flags = if read_only {
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
        };
        let conn = Connection::open_with_flags(&path, flags).map_err(|e| Error::sql(what, e))?;
        if !read_only {
            // A scratch file read back whole: durability comes from storing its bytes, so no
            // journal file and no fsyncs (they were ~40 ms at the end of every publish).
            // MEMORY keeps the rollback-journal file format (header bytes 18/19 == 1).
            conn.execute_batch("PRAGMA journal_mode = MEMORY; PRAGMA synchronous = OFF;")
                .map_err(|e| Error::sql(what, e))?;
        }
        Ok(TempDb {
            _dir: dir,
            path,
            conn,
            what: what.to_string(),
        })
    }

    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// A value of the `properties` table every cvmfs SQLite database has.
    pub(crate) fn property(&self, key: &str) -> Result<Option<String>> {
        use rusqlite::OptionalExtension;
        self.conn()
            .query_row("SELECT value FROM properties WHERE key = ?1", [key], |r| {
                r.get::<_, Option<String>>(0)
            })
            .optional()
            .map(Option::flatten)
            .map_err(|e| Error::sql(self.what(), e))
    }

    /// Sets a value of the `properties` table.
    pub(crate) fn set_property(&self, key: &str, value: &str) -> Result<()> {
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO properties (key, value) VALUES (?1, ?2)",
                [key, value],
            )
            .map(|_| ())
            .map_err(|e| Error::sql(self.what(), e))
    }

    pub(crate) fn what(&self) -> &str {
        &self.what
    }

    /// Closes the database (rollback journal, nothing pending) and returns the file bytes.
    pub(crate) fn into_bytes(self) -> Result<Vec<u8>> {
        let TempDb {
            _dir,
            path,
            conn,
            what,
        } = self;
        conn.close()
            .map_err(|(_, e)| Error::sql(what.as_str(), e))?;
        fs::read(&path).map_err(|e| Error::io(format!("{what}: {}", path.display()), e))
    }
}
