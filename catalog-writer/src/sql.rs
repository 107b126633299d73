//! One catalog SQLite file (schema 2.5, revision 7): the raw rows, writing and reading.
//!
//! This layer knows columns, not semantics: flags, counters and nesting are decided by the
//! callers (`namespace`, `verify`).

use crate::hash::ContentHash;
use crate::pathhash::{display, PathHash};
use crate::{Error, Result};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, OptionalExtension, ToSql};
use std::collections::BTreeMap;

/// Flag bits of the `flags` column (spec 2.5).
pub mod flags {
    pub const DIR: u32 = 1;
    pub const MOUNTPOINT: u32 = 2;
    pub const FILE: u32 = 4;
    pub const SYMLINK: u32 = 8;
    pub const SPECIAL: u32 = 16;
    pub const NESTED_ROOT: u32 = 32;
    pub const CHUNKED: u32 = 64;
    pub const EXTERNAL: u32 = 128;
    pub const HASH_ALGO_MASK: u32 = 0x700;
    pub const COMPRESSION_MASK: u32 = 0x3800;
    pub const BIND_MOUNTPOINT: u32 = 16384;
    pub const HIDDEN: u32 = 32768;
    pub const DIRECT_IO: u32 = 65536;
}

/// One row of the `catalog` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub md5: PathHash,
    pub parent: PathHash,
    /// `group << 32 | linkcount`.
    pub hardlinks: u64,
    pub hash: Option<ContentHash>,
    pub size: u64,
    pub mode: u32,
    pub mtime: i64,
    pub mtimens: Option<i64>,
    pub flags: u32,
    pub name: Vec<u8>,
    pub symlink: Vec<u8>,
    pub uid: u32,
    pub gid: u32,
    pub xattr: Option<Vec<u8>>,
}

impl Row {
    pub fn linkcount(&self) -> u32 {
        self.hardlinks as u32
    }
    pub fn group(&self) -> u32 {
        (self.hardlinks >> 32) as u32
    }
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
}

/// One row of the `chunks` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkRow {
    pub md5: PathHash,
    pub offset: u64,
    pub size: u64,
    pub hash: ContentHash,
}

/// One row of `nested_catalogs` (or `bind_mountpoints`): hash as text, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NestedRow {
    pub path: Vec<u8>,
    pub hash: String,
    pub size: u64,
}

/// The 12 counted quantities of spec 2.11, for one `self_` or `subtree_` set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub regular: i64,
    pub symlink: i64,
    pub special: i64,
    pub dir: i64,
    pub nested: i64,
    pub chunked: i64,
    pub chunks: i64,
    pub file_size: i64,
    pub chunked_size: i64,
    pub xattr: i64,
    pub external: i64,
    pub external_file_size: i64,
}

/// Counter name suffixes in the order of spec 2.11.
pub const COUNTER_NAMES: [&str; 12] = [
    "regular",
    "symlink",
    "special",
    "dir",
    "nested",
    "chunked",
    "chunks",
    "file_size",
    "chunked_size",
    "xattr",
    "external",
    "external_file_size",
];

impl Counts {
    /// Values in the order of [`COUNTER_NAMES`].
    pub fn values(&self) -> [i64; 12] {
        [
            self.regular,
            self.symlink,
            self.special,
            self.dir,
            self.nested,
            self.chunked,
            self.chunks,
            self.file_size,
            self.chunked_size,
            self.xattr,
            self.external,
            self.external_file_size,
        ]
    }

    pub fn from_values(v: [i64; 12]) -> Counts {
        Counts {
            regular: v[0],
            symlink: v[1],
            special: v[2],
            dir: v[3],
            nested: v[4],
            chunked: v[5],
            chunks: v[6],
            file_size: v[7],
            chunked_size: v[8],
            xattr: v[9],
            external: v[10],
            external_file_size: v[11],
        }
    }

    fn zip(self, other: Counts, f: impl Fn(i64, i64) -> i64) -> Counts {
        let (a, b) = (self.values(), other.values());
        Counts::from_values(std::array::from_fn(|i| f(a[i], b[i])))
    }

    pub fn plus(self, other: Counts) -> Counts {
        self.zip(other, i64::wrapping_add)
    }

    pub fn minus(self, other: Counts) -> Counts {
        self.zip(other, i64::wrapping_sub)
    }

    /// Counts one catalog row (and its chunk rows, `chunk_rows`) into `self`.
    pub fn add_row(&mut self, row: &Row, chunk_rows: i64) {
        let ty = row.mode & libc::S_IFMT;
        if row.xattr.is_some() {
            self.xattr = self.xattr.wrapping_add(1);
        }
        match ty {
            libc::S_IFDIR => {
                self.dir = self.dir.wrapping_add(1);
                if row.flags & flags::MOUNTPOINT != 0 && row.flags & flags::NESTED_ROOT == 0 {
                    self.nested = self.nested.wrapping_add(1);
                }
            }
            libc::S_IFLNK => self.symlink = self.symlink.wrapping_add(1),
            libc::S_IFREG => {
                // Wrapping, as `plus` adds: sizes come from catalogs that may be hostile
                // (`check`, `diff`), and CVMFS's int64 counters wrap the same way.
                let size = row.size as i64;
                self.regular = self.regular.wrapping_add(1);
                self.file_size = self.file_size.wrapping_add(size);
                if row.flags & flags::CHUNKED != 0 {
                    self.chunked = self.chunked.wrapping_add(1);
                    self.chunked_size = self.chunked_size.wrapping_add(size);
                }
                if row.flags & flags::EXTERNAL != 0 {
                    self.external = self.external.wrapping_add(1);
                    self.external_file_size = self.external_file_size.wrapping_add(size);
                }
                self.chunks = self.chunks.wrapping_add(chunk_rows);
            }
            _ => self.special = self.special.wrapping_add(1),
        }
    }
}

/// The `self_*` and `subtree_*` counters of one catalog.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Statistics {
    pub self_: Counts,
    pub subtree: Counts,
}

impl Statistics {
    /// `self + subtree`: what this catalog contributes to its parent's `subtree_*`.
    pub fn totals(&self) -> Counts {
        self.self_.plus(self.subtree)
    }

    /// All 24 `(counter, value)` pairs.
    pub fn pairs(&self) -> Vec<(String, i64)> {
        let mut out = Vec::with_capacity(24);
        for (prefix, c) in [("self_", &self.self_), ("subtree_", &self.subtree)] {
            for (name, v) in COUNTER_NAMES.iter().zip(c.values()) {
                out.push((format!("{prefix}{name}"), v));
            }
        }
        out
    }

    /// Parses the statistics table; `Err` lists the missing counters.
    pub fn from_table(table: &BTreeMap<String, i64>) -> std::result::Result<Statistics, String> {
        let mut missing = Vec::new();
        let mut get = |prefix: &str| {
            Counts::from_values(std::array::from_fn(|i| {
                let key = format!("{prefix}{}", COUNTER_NAMES[i]);
                table.get(&key).copied().unwrap_or_else(|| {
                    missing.push(key);
                    0
                })
            }))
        };
        let stats = Statistics {
            self_: get("self_"),
            subtree: get("subtree_"),
        };
        if missing.is_empty() {
            Ok(stats)
        } else {
            Err(format!(
                "missing statistics counters: {}",
                missing.join(", ")
            ))
        }
    }
}

/// Everything in one catalog file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CatalogDb {
    /// Values as raw bytes: `root_prefix` is a path and may not be UTF-8.
    pub properties: BTreeMap<String, Vec<u8>>,
    pub rows: Vec<Row>,
    pub chunks: Vec<ChunkRow>,
    pub nested: Vec<NestedRow>,
    pub bind_mountpoints: Vec<NestedRow>,
    pub statistics: BTreeMap<String, i64>,
    /// Whether the `catalog` table has an `mtimens` column (revision 7).
    pub has_mtimens: bool,
}

const DDL: &str = "
CREATE TABLE properties (key TEXT, value TEXT, CONSTRAINT pk_properties PRIMARY KEY (key));
CREATE TABLE catalog (md5path_1 INTEGER, md5path_2 INTEGER, parent_1 INTEGER, parent_2 INTEGER, hardlinks INTEGER, hash BLOB, size INTEGER, mode INTEGER, mtime INTEGER, mtimens INTEGER, flags INTEGER, name TEXT, symlink TEXT, uid INTEGER, gid INTEGER, xattr BLOB,  CONSTRAINT pk_catalog PRIMARY KEY (md5path_1, md5path_2));
CREATE TABLE chunks (md5path_1 INTEGER, md5path_2 INTEGER, offset INTEGER, size INTEGER,  hash BLOB,  CONSTRAINT pk_chunks PRIMARY KEY (md5path_1, md5path_2, offset, size),  FOREIGN KEY (md5path_1, md5path_2) REFERENCES    catalog(md5path_1, md5path_2));
CREATE TABLE nested_catalogs (path TEXT, sha1 TEXT, size INTEGER, CONSTRAINT pk_nested_catalogs PRIMARY KEY (path));
CREATE TABLE bind_mountpoints (path TEXT, sha1 TEXT, size INTEGER, CONSTRAINT pk_bind_mountpoints PRIMARY KEY (path));
CREATE TABLE statistics (counter TEXT, value INTEGER, CONSTRAINT pk_statistics PRIMARY KEY (counter));
";

/// The parent index of the `catalog` table, built once its rows are in: one sort instead of
/// an index insert per row (100 000 rows in 420 directories: ~10 % less time, 3 % smaller).
const PARENT_INDEX: &str = "CREATE INDEX idx_catalog_parent ON catalog (parent_1, parent_2);";

/// Binds raw bytes as TEXT without UTF-8 validation, so non-UTF-8 names survive unchanged.
struct RawText<'a>(&'a [u8]);

impl ToSql for RawText<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(ValueRef::Text(self.0)))
    }
}

fn sql_err(label: &str) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |source| Error::Sql {
        catalog: label.to_string(),
        source,
    }
}

/// Builds `db` as a new SQLite database and returns its file's bytes (uncompressed). `label`
/// names the catalog in errors (its mountpoint path). `has_mtimens` is ignored: revision 7 is
/// written. The database is built in memory: a scratch file per catalog cost a create, a
/// write, a read back and a delete (a migration of 1 000 images wrote 1 GB to `/tmp` that way).
pub fn write(db: &CatalogDb, label: &str) -> Result<Vec<u8>> {
    let mut conn = Connection::open_in_memory().map_err(sql_err(label))?;
    fill(&mut conn, db).map_err(sql_err(label))?;
    let image = conn.serialize(rusqlite::MAIN_DB).map_err(sql_err(label))?;
    Ok(image.to_vec())
}

/// [`write`] of a catalog the caller is done with, handing the file's bytes to `use_image`:
/// the rows are dropped as soon as SQLite holds them, and the image is not copied again. A
/// large catalog was otherwise held four times at once (rows, SQLite's pages, SQLite's
/// image, its copy): 100 000 entries cost ~75 MB instead of ~35.
pub fn write_with<T>(db: CatalogDb, label: &str, use_image: impl FnOnce(&[u8]) -> T) -> Result<T> {
    let mut conn = Connection::open_in_memory().map_err(sql_err(label))?;
    fill(&mut conn, &db).map_err(sql_err(label))?;
    drop(db);
    let image = conn.serialize(rusqlite::MAIN_DB).map_err(sql_err(label))?;
    Ok(use_image(&image))
}

/// The page size of catalogs cvmfs writes.
const CATALOG_PAGE_SIZE: i64 = 1024;

fn fill(conn: &mut Connection, db: &CatalogDb) -> rusqlite::Result<()> {
    // Built once and taken whole: no journal needed. OFF keeps the rollback-journal file
    // format (header bytes 18/19 == 1), unlike WAL.
    // As cvmfs's own SQLite (built with SQLITE_DEFAULT_PAGE_SIZE=1024): a small catalog is
    // then ~16 KiB on clients instead of ~56 KiB with 4 KiB pages; large ones are the same.
    conn.pragma_update(None, "page_size", CATALOG_PAGE_SIZE)?;
    conn.pragma_update(None, "journal_mode", "OFF")?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    // The primary-key index is keyed by random path hashes: keep its pages in memory.
    conn.pragma_update(None, "cache_size", -262_144)?;
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
    conn.execute_batch(DDL)?;
    let tx = conn.transaction()?;
    {
        let mut st = tx.prepare("INSERT INTO properties (key, value) VALUES (?1, ?2)")?;
        for (k, v) in &db.properties {
            st.execute(params![k, RawText(v)])?;
        }
        let mut st = tx.prepare(
            "INSERT INTO catalog (md5path_1, md5path_2, parent_1, parent_2, hardlinks, hash, size, \
             mode, mtime, mtimens, flags, name, symlink, uid, gid, xattr) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        )?;
        for r in root_first(&db.rows) {
            st.execute(params![
                r.md5.0,
                r.md5.1,
                r.parent.0,
                r.parent.1,
                r.hardlinks as i64,
                r.hash.as_ref().map(|h| &h.0[..]),
                r.size as i64,
                r.mode,
                r.mtime,
                r.mtimens,
                r.flags,
                RawText(&r.name),
                RawText(&r.symlink),
                r.uid,
                r.gid,
                r.xattr.as_deref(),
            ])?;
        }
        tx.execute_batch(PARENT_INDEX)?;
        let mut st = tx.prepare(
            "INSERT INTO chunks (md5path_1, md5path_2, offset, size, hash) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for c in by_path_hash(&db.chunks, |c| c.md5) {
            st.execute(params![
                c.md5.0,
                c.md5.1,
                c.offset as i64,
                c.size as i64,
                &c.hash.0[..]
            ])?;
        }
        for (table, list) in [
            ("nested_catalogs", &db.nested),
            ("bind_mountpoints", &db.bind_mountpoints),
        ] {
            let mut st = tx.prepare(&format!(
                "INSERT INTO {table} (path, sha1, size) VALUES (?1, ?2, ?3)"
            ))?;
            for n in list {
                st.execute(params![RawText(&n.path), n.hash, n.size as i64])?;
            }
        }
        let mut st = tx.prepare("INSERT INTO statistics (counter, value) VALUES (?1, ?2)")?;
        for (k, v) in &db.statistics {
            st.execute(params![k, v])?;
        }
    }
    tx.commit()
}

/// `rows` in the order of their primary key (`md5path_1, md5path_2`; a stable sort keeps a
/// file's chunks in offset order). Inserted in that order, the key's index grows at its end
/// and its pages fill up, instead of splitting half-empty under random path hashes: smaller
/// catalogs, less to compress and to download.
fn by_path_hash<T>(rows: &[T], key: impl Fn(&T) -> PathHash) -> Vec<&T> {
    let mut sorted: Vec<&T> = rows.iter().collect();
    sorted.sort_by_key(|r| {
        let h = key(r);
        (h.0, h.1)
    });
    sorted
}

/// A catalog's own root entry: the repository root (parent hash zero) in the root catalog,
/// the nested-catalog root elsewhere.
pub fn is_catalog_root(row: &Row) -> bool {
    row.parent == PathHash::ZERO || row.flags & flags::NESTED_ROOT != 0
}

/// The catalog's root entry first, then the other rows in key order ([`by_path_hash`]). The
/// client takes rowid 1 of the root catalog for the repository root (its root inode is the
/// inode offset + 1, `AbstractCatalogManager::GetRootInode`): with another entry there, that
/// entry and the root share an inode and reads fail with EIO. cvmfs writes every catalog's
/// root first, nested ones too.
fn root_first(rows: &[Row]) -> Vec<&Row> {
    let mut sorted = by_path_hash(rows, |r| r.md5);
    if let Some(i) = sorted.iter().position(|r| is_catalog_root(r)) {
        let root = sorted.remove(i);
        sorted.insert(0, root);
    }
    sorted
}

/// Opens a catalog from its decompressed bytes. `label` names it in errors (e.g. its hash).
pub fn read(bytes: &[u8], label: &str) -> Result<CatalogDb> {
    if bytes.len() < 100 || !bytes.starts_with(b"SQLite format 3\0") {
        return Err(Error::Corrupt {
            catalog: label.to_string(),
            reason: "not an SQLite 3 database".to_string(),
        });
    }
    // In memory, as it is written: the bytes are here already.
    let mut conn = Connection::open_in_memory().map_err(sql_err(label))?;
    conn.deserialize_read_exact(rusqlite::MAIN_DB, bytes, bytes.len(), true)
        .map_err(sql_err(label))?;
    if let Some(object) = executable_schema_object(&conn).map_err(sql_err(label))? {
        return Err(corrupt(
            label,
            format!("holds a {object} (not a CVMFS catalog)"),
        ));
    }
    read_conn(&conn, label)
}

/// The first schema object of an opened database that runs code when it is read or written: a
/// view, a trigger or a virtual table. CVMFS databases (catalogs, history, reflog) hold only
/// tables and indexes; a view named like one of their tables can run an endless recursive
/// query on every read, and a trigger on every write. `None` when there is none.
pub fn executable_schema_object(conn: &Connection) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT type, name FROM sqlite_master \
         WHERE type IN ('view', 'trigger') OR (type = 'table' AND sql LIKE 'CREATE VIRTUAL%') \
         LIMIT 1",
        [],
        |r| {
            Ok(format!(
                "{} {:?}",
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?
            ))
        },
    )
    .optional()
}

fn corrupt(label: &str, reason: String) -> Error {
    Error::Corrupt {
        catalog: label.to_string(),
        reason,
    }
}

fn text_of(v: ValueRef<'_>) -> Vec<u8> {
    match v {
        ValueRef::Text(t) | ValueRef::Blob(t) => t.to_vec(),
        ValueRef::Integer(i) => i.to_string().into_bytes(),
        ValueRef::Real(f) => f.to_string().into_bytes(),
        ValueRef::Null => Vec::new(),
    }
}

fn int_of(v: ValueRef<'_>) -> Option<i64> {
    match v {
        ValueRef::Integer(i) => Some(i),
        ValueRef::Null => None,
        ValueRef::Real(f) => Some(f as i64),
        ValueRef::Text(t) => std::str::from_utf8(t).ok()?.trim().parse().ok(),
        ValueRef::Blob(_) => None,
    }
}

fn hash_of(v: ValueRef<'_>, label: &str, what: &dyn Fn() -> String) -> Result<Option<ContentHash>> {
    match v {
        ValueRef::Null => Ok(None),
        ValueRef::Blob(b) => ContentHash::from_slice(b).map(Some).ok_or_else(|| {
            corrupt(
                label,
                format!("{}: hash of {} bytes (expected 20)", what(), b.len()),
            )
        }),
        _ => Err(corrupt(
            label,
            format!("{}: hash column is not a BLOB", what()),
        )),
    }
}

fn read_conn(conn: &Connection, label: &str) -> Result<CatalogDb> {
    let e = sql_err(label);
    let mut db = CatalogDb::default();
    let mut st = conn
        .prepare("SELECT key, value FROM properties")
        .map_err(&e)?;
    let mut rows = st.query([]).map_err(&e)?;
    while let Some(r) = rows.next().map_err(&e)? {
        let k = String::from_utf8_lossy(&text_of(r.get_ref(0).map_err(&e)?)).into_owned();
        let v = text_of(r.get_ref(1).map_err(&e)?);
        db.properties.insert(k, v);
    }
    let mut st = conn
        .prepare("SELECT name FROM pragma_table_info('catalog')")
        .map_err(&e)?;
    let cols: Vec<String> = st
        .query_map([], |r| r.get(0))
        .map_err(&e)?
        .collect::<rusqlite::Result<_>>()
        .map_err(&e)?;
    db.has_mtimens = cols.iter().any(|c| c == "mtimens");
    db.rows = read_rows(conn, label, db.has_mtimens)?;
    db.chunks = read_chunks(conn, label)?;
    db.nested = read_nested(conn, label, "nested_catalogs")?;
    db.bind_mountpoints = read_nested(conn, label, "bind_mountpoints")?;
    let mut st = conn
        .prepare("SELECT counter, value FROM statistics")
        .map_err(&e)?;
    let mut rows = st.query([]).map_err(&e)?;
    while let Some(r) = rows.next().map_err(&e)? {
        let k = String::from_utf8_lossy(&text_of(r.get_ref(0).map_err(&e)?)).into_owned();
        let v = int_of(r.get_ref(1).map_err(&e)?).unwrap_or(0);
        db.statistics.insert(k, v);
    }
    Ok(db)
}

fn read_rows(conn: &Connection, label: &str, has_mtimens: bool) -> Result<Vec<Row>> {
    let e = sql_err(label);
    let sql = format!(
        "SELECT md5path_1, md5path_2, parent_1, parent_2, hardlinks, hash, size, mode, mtime, {}, \
         flags, name, symlink, uid, gid, xattr FROM catalog ORDER BY rowid",
        if has_mtimens { "mtimens" } else { "NULL" }
    );
    let mut st = conn.prepare(&sql).map_err(&e)?;
    let mut rows = st.query([]).map_err(&e)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(&e)? {
        let g = |i: usize| r.get_ref(i).map_err(&e);
        let int = |i: usize| -> Result<i64> { Ok(int_of(g(i)?).unwrap_or(0)) };
        let name = text_of(g(11)?);
        let what = || format!("row {}", display(&name));
        let small = |i: usize, col: &str| -> Result<u32> {
            let v = int(i)?;
            u32::try_from(v)
                .map_err(|_| corrupt(label, format!("{}: {col} {v} out of range", what())))
        };
        out.push(Row {
            md5: PathHash(int(0)?, int(1)?),
            parent: PathHash(int(2)?, int(3)?),
            hardlinks: int(4)? as u64,
            hash: hash_of(g(5)?, label, &what)?,
            size: int(6)? as u64,
            mode: small(7, "mode")?,
            mtime: int(8)?,
            mtimens: int_of(g(9)?),
            flags: small(10, "flags")?,
            symlink: text_of(g(12)?),
            uid: small(13, "uid")?,
            gid: small(14, "gid")?,
            xattr: match g(15)? {
                ValueRef::Null => None,
                v => Some(text_of(v)),
            },
            name,
        });
    }
    Ok(out)
}

fn read_chunks(conn: &Connection, label: &str) -> Result<Vec<ChunkRow>> {
    let e = sql_err(label);
    let mut st = conn
        .prepare("SELECT md5path_1, md5path_2, offset, size, hash FROM chunks ORDER BY md5path_1, md5path_2, offset")
        .map_err(&e)?;
    let mut rows = st.query([]).map_err(&e)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(&e)? {
        let g = |i: usize| r.get_ref(i).map_err(&e);
        let md5 = PathHash(int_of(g(0)?).unwrap_or(0), int_of(g(1)?).unwrap_or(0));
        let what = || format!("chunk of ({}, {})", md5.0, md5.1);
        let hash = hash_of(g(4)?, label, &what)?
            .ok_or_else(|| corrupt(label, format!("{}: NULL hash", what())))?;
        out.push(ChunkRow {
            md5,
            offset: int_of(g(2)?).unwrap_or(0) as u64,
            size: int_of(g(3)?).unwrap_or(0) as u64,
            hash,
        });
    }
    Ok(out)
}

fn read_nested(conn: &Connection, label: &str, table: &str) -> Result<Vec<NestedRow>> {
    let e = sql_err(label);
    let mut st = conn
        .prepare(&format!("SELECT path, sha1, size FROM {table}"))
        .map_err(&e)?;
    let mut rows = st.query([]).map_err(&e)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(&e)? {
        let g = |i: usize| r.get_ref(i).map_err(&e);
        out.push(NestedRow {
            path: text_of(g(0)?),
            hash: String::from_utf8_lossy(&text_of(g(1)?)).into_owned(),
            size: int_of(g(2)?).unwrap_or(0) as u64,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(path: &[u8], parent: PathHash, name: &[u8]) -> Row {
        Row {
            md5: PathHash::of(path),
            parent,
            hardlinks: 1,
            hash: Some(crate::hash::EMPTY_OBJECT),
            size: 0,
            mode: 0o100644,
            mtime: 7,
            mtimens: None,
            flags: flags::FILE,
            name: name.to_vec(),
            symlink: Vec::new(),
            uid: 1,
            gid: 2,
            xattr: None,
        }
    }

    /// Rows of a hostile catalog may declare sizes near `i64::MAX`: counting them wraps, as
    /// `Counts::plus` does, instead of overflowing (a panic with overflow checks on; found by
    /// fuzzing `check`).
    #[test]
    fn counting_huge_sizes_wraps() {
        let mut big = row(b"/a", PathHash::of(b""), b"a");
        big.size = i64::MAX as u64;
        big.flags = flags::FILE | flags::CHUNKED | flags::EXTERNAL;
        let mut counts = Counts::default();
        counts.add_row(&big, i64::MAX);
        counts.add_row(&big, i64::MAX);
        assert_eq!(counts.regular, 2);
        assert_eq!(counts.file_size, i64::MAX.wrapping_mul(2));
        assert_eq!(counts.chunks, i64::MAX.wrapping_mul(2));
    }

    /// The client takes rowid 1 of the root catalog for the root inode: the catalog's root
    /// goes in first whatever its path hash, the rest in key order.
    #[test]
    fn the_catalog_root_is_rowid_1() {
        for (root_path, parent, root_flags) in [
            (&b""[..], PathHash::ZERO, flags::DIR),
            (
                b"/nested",
                PathHash::of(b""),
                flags::DIR | flags::NESTED_ROOT,
            ),
        ] {
            let mut db = CatalogDb::default();
            for i in 0..50 {
                let name = format!("f{i}");
                let path = [root_path, b"/", name.as_bytes()].concat();
                db.rows
                    .push(row(&path, PathHash::of(root_path), name.as_bytes()));
            }
            let mut root = row(root_path, parent, b"");
            root.flags = root_flags;
            db.rows.insert(17, root.clone());
            let back = read(&write(&db, "rooted").unwrap(), "rooted").unwrap();
            assert_eq!(back.rows[0], root);
            assert!(back.rows[1..].windows(2).all(|w| w[0].md5 < w[1].md5));
        }
    }

    #[test]
    fn round_trip_raw_bytes_and_no_wal() {
        let mut db = CatalogDb::default();
        db.properties.insert("schema".into(), b"2.5".to_vec());
        db.rows
            .push(row(b"/\xff\xfe", PathHash::of(b""), b"\xff\xfe"));
        db.rows[0].xattr = Some(vec![1, 0]);
        db.rows[0].mtimens = Some(5);
        db.nested.push(NestedRow {
            path: b"/n\xc3".to_vec(),
            hash: crate::hash::EMPTY_OBJECT.to_hex(),
            size: 42,
        });
        db.statistics.insert("self_regular".into(), 1);
        let bytes = write(&db, "test").unwrap();
        assert_eq!((bytes[18], bytes[19]), (1, 1));
        let mut back = read(&bytes, "test").unwrap();
        assert!(back.has_mtimens);
        back.has_mtimens = false;
        assert_eq!(back, db);
    }

    #[test]
    fn views_triggers_and_virtual_tables_are_refused() {
        let good = write(&CatalogDb::default(), "good").unwrap();
        assert!(read(&good, "good").is_ok());
        let endless = "SELECT * FROM t WHERE (WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL \
                       SELECT n + 1 FROM r) SELECT count(*) FROM r) > 0";
        for (sql, object) in [
            (
                format!("ALTER TABLE catalog RENAME TO t; CREATE VIEW catalog AS {endless};"),
                "view \"catalog\"",
            ),
            (
                "CREATE TRIGGER spin AFTER INSERT ON properties BEGIN SELECT 1; END;".to_owned(),
                "trigger \"spin\"",
            ),
        ] {
            let mut conn = Connection::open_in_memory().unwrap();
            conn.deserialize_read_exact(rusqlite::MAIN_DB, &good[..], good.len(), false)
                .unwrap();
            conn.execute_batch(&sql).unwrap();
            let bytes = conn.serialize(rusqlite::MAIN_DB).unwrap().to_vec();
            let err = read(&bytes, "c").unwrap_err().to_string();
            assert!(err.contains(&format!("holds a {object}")), "{err}");
        }
    }

    #[test]
    fn hundred_thousand_rows_with_the_parent_index() {
        let mut db = CatalogDb::default();
        // 420 directories of ~240 files, in tree order (as the writer lists them).
        for i in 0..100_000u32 {
            let (dir, name) = (format!("/d{}", i / 240), format!("file-{i}"));
            db.rows.push(row(
                format!("{dir}/{name}").as_bytes(),
                PathHash::of(dir.as_bytes()),
                name.as_bytes(),
            ));
        }
        let t = std::time::Instant::now();
        let bytes = write(&db, "big").unwrap();
        eprintln!(
            "sql::write of 100 000 rows: {:?}, {} bytes",
            t.elapsed(),
            bytes.len()
        );
        assert_eq!(read(&bytes, "big").unwrap().rows.len(), 100_000);
        // The index built after the rows is the one cvmfs creates, and it is complete.
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), &bytes).unwrap();
        let conn = Connection::open(tmp.path()).unwrap();
        let sql: String = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE name = 'idx_catalog_parent'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(format!("{sql};"), PARENT_INDEX);
        let d7 = PathHash::of(b"/d7");
        let listed: i64 = conn
            .query_row(
                "SELECT count(*) FROM catalog INDEXED BY idx_catalog_parent \
                 WHERE parent_1 = ?1 AND parent_2 = ?2",
                params![d7.0, d7.1],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(listed, 240);
        // Rows went in in key order, so the key's index filled its pages.
        let keys: Vec<(i64, i64)> = conn
            .prepare("SELECT md5path_1, md5path_2 FROM catalog ORDER BY rowid")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        let index_bytes: i64 = conn
            .query_row(
                "SELECT sum(pgsize) FROM dbstat WHERE name = 'sqlite_autoindex_catalog_1'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        // 100 000 keys of 2 × 8-byte integers and a rowid: about 30 bytes each is ~3 MB of
        // full pages; inserted at random they leave pages about 70 % full (~4.2 MB).
        assert!(
            index_bytes < 3_400_000,
            "{index_bytes} bytes of index pages"
        );
        assert_eq!(&bytes[16..18], &[4, 0], "page size 1024, as cvmfs");
    }

    #[test]
    fn reads_revision_6_without_mtimens() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let conn = Connection::open(tmp.path()).unwrap();
        conn.execute_batch(&DDL.replace("mtime INTEGER, mtimens INTEGER,", "mtime INTEGER,"))
            .unwrap();
        conn.execute(
            "INSERT INTO catalog (md5path_1, md5path_2, parent_1, parent_2, hardlinks, size, mode, \
             mtime, flags, name, symlink, uid, gid) VALUES (1, 2, 0, 0, 2, 4096, 16877, 9, 1, '', '', 0, 0)",
            [],
        )
        .unwrap();
        drop(conn);
        let db = read(&std::fs::read(tmp.path()).unwrap(), "rev6").unwrap();
        assert!(!db.has_mtimens);
        assert_eq!(
            (db.rows[0].mtimens, db.rows[0].mtime, db.rows[0].linkcount()),
            (None, 9, 2)
        );
    }

    #[test]
    fn garbage_is_refused() {
        assert!(read(b"hello", "x").is_err());
    }
}
