//! Opening the local caches (content index, layer memo): SQLite files in the home that only
//! save work. One that SQLite finds damaged (a disk fault, a copy cut short) is moved aside
//! and started afresh rather than blocking every conversion.

use crate::error::{Error, Result};
use rusqlite::{Connection, ErrorCode};
use std::path::{Path, PathBuf};

/// A cache database opened with its schema set up, and where a damaged predecessor went.
pub(crate) struct CacheDb {
    pub conn: Connection,
    pub set_aside: Option<PathBuf>,
}

/// Opens the cache at `path` and runs `setup` (pragmas, schema) on it; a database SQLite
/// reports as damaged or not a database is renamed `NAME.damaged-UNIXTIME` (with its WAL and
/// shared-memory files) and a new one is created.
pub(crate) fn open(
    path: &Path,
    setup: impl Fn(&Connection) -> rusqlite::Result<()>,
) -> Result<CacheDb> {
    let what = path.display().to_string();
    let attempt = || -> rusqlite::Result<Connection> {
        let conn = Connection::open(path)?;
        // Reads the schema: a truncated or overwritten file fails here, not mid-run.
        setup(&conn)?;
        Ok(conn)
    };
    match attempt() {
        Ok(conn) => Ok(CacheDb {
            conn,
            set_aside: None,
        }),
        Err(e) if is_damage(&e) => {
            let aside = set_aside(path).map_err(|e| Error::io_path(path, e))?;
            let conn = attempt().map_err(|e| Error::sql(what.as_str(), e))?;
            Ok(CacheDb {
                conn,
                set_aside: Some(aside),
            })
        }
        Err(e) => Err(Error::sql(what.as_str(), e)),
    }
}

fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

/// Renames the database and its companions out of the way; returns the new name.
fn set_aside(path: &Path) -> std::io::Result<PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = PathBuf::from(format!("{}.damaged-{stamp}", path.display()));
    std::fs::rename(path, &aside)?;
    for companion in ["-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{companion}", path.display()));
        let to = PathBuf::from(format!("{}{companion}", aside.display()));
        match std::fs::rename(&from, &to) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use crate::content_index::SqliteContentIndex;
    use crate::layer_memo::LayerMemo;
    use crate::store::ContentIndex;
    use catalog_writer::hash::{ContentHash, Suffix};

    #[test]
    fn a_damaged_cache_is_set_aside_and_started_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("content.db");
        let index = SqliteContentIndex::open(&path).unwrap();
        assert!(index.set_aside().is_none());
        let object = ContentHash::of(b"x");
        index.record(&[1; 32], 4096, Suffix::None, object, 10);
        index.flush().unwrap();
        drop(index);
        // Cut short, as a disk fault or an interrupted copy would leave it.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let index = SqliteContentIndex::open(&path).unwrap();
        let aside = index.set_aside().expect("set aside").to_path_buf();
        assert!(aside.exists(), "{}", aside.display());
        assert!(index.lookup(&[1; 32], 4096, Suffix::None).is_none());
        index.record(&[2; 32], 4096, Suffix::None, object, 10);
        assert!(index.lookup(&[2; 32], 4096, Suffix::None).is_some());

        let memo_path = dir.path().join("layers.db");
        std::fs::write(&memo_path, vec![0xa5u8; 8192]).unwrap();
        let memo = LayerMemo::open(&memo_path).unwrap();
        assert!(memo.set_aside().is_some());
        assert!(memo.list().unwrap().is_empty());
    }
}
