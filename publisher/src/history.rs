//! The history (tag) database, manifest `H` (spec 6.1): SQLite, zlib-compressed, suffix `H`.

use crate::error::{Error, Result};
use crate::store::{stored_bound, ObjectStore};
use crate::tempdb::TempDb;
use catalog_writer::hash::{ContentHash, Suffix};
use rusqlite::params;

/// Tag naming the newest revision.
pub const TRUNK: &str = "trunk";
/// Tag naming the revision before `trunk` (cvmfs_server's undo target).
pub const TRUNK_PREVIOUS: &str = "trunk-previous";
/// Largest history database we inflate.
const MAX_HISTORY_BYTES: u64 = 1 << 30;

const SCHEMA: &[&str] = &[
    "CREATE TABLE properties (key TEXT, value TEXT, CONSTRAINT pk_properties PRIMARY KEY (key));",
    "CREATE TABLE branches (branch TEXT, parent TEXT, initial_revision INTEGER, \
     CONSTRAINT pk_branch PRIMARY KEY (branch), \
     FOREIGN KEY (parent) REFERENCES branches (branch), \
     CHECK ((branch <> '') OR (parent IS NULL)), \
     CHECK ((branch = '') OR (parent IS NOT NULL)));",
    "CREATE TABLE tags (name TEXT, hash TEXT, revision INTEGER, timestamp INTEGER, \
     channel INTEGER, description TEXT, size INTEGER, branch TEXT, \
     CONSTRAINT pk_tags PRIMARY KEY (name), \
     FOREIGN KEY (branch) REFERENCES branches (branch));",
    "CREATE TABLE recycle_bin (hash TEXT, flags INTEGER, CONSTRAINT pk_hash PRIMARY KEY (hash));",
    "INSERT INTO branches (branch, parent, initial_revision) VALUES ('', NULL, 0);",
];

/// One tag row (channel 0, branch `''` — the only values this writer uses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tag {
    pub name: String,
    /// Root catalog of the tagged revision.
    pub hash: ContentHash,
    pub revision: u64,
    pub timestamp: i64,
    pub description: String,
    /// Uncompressed size of the root catalog.
    pub size: u64,
}

/// An open history database (a private temporary copy).
pub struct History {
    db: TempDb,
}

impl History {
    /// A new history for `fqrn` with no tags.
    pub fn create(fqrn: &str) -> Result<History> {
        let db = TempDb::create("new history database")?;
        for stmt in SCHEMA {
            db.conn()
                .execute_batch(stmt)
                .map_err(|e| Error::sql(db.what(), e))?;
        }
        let h = History { db };
        h.set_property("schema", "1.0")?;
        h.set_property("schema_revision", "3")?;
        h.set_property("fqrn", fqrn)?;
        Ok(h)
    }

    /// Opens the raw (uncompressed) SQLite bytes of a history database.
    pub fn from_sqlite(bytes: &[u8], what: &str) -> Result<History> {
        Ok(History {
            db: TempDb::from_bytes(what, bytes, false)?,
        })
    }

    /// Fetches, inflates and opens history object `hash` (suffix `H`).
    pub fn load(store: &dyn ObjectStore, hash: &ContentHash) -> Result<History> {
        let what = format!("history {}", hash.object_path(Suffix::History));
        let stored = store
            .get_at_most(hash, Suffix::History, stored_bound(MAX_HISTORY_BYTES))
            .map_err(|e| Error::io(what.as_str(), e))?;
        let raw = catalog_writer::zlib::decompress_sqlite(&stored, MAX_HISTORY_BYTES)
            .map_err(|e| Error::io(format!("{what}: inflate"), e))?;
        History::from_sqlite(&raw, &what)
    }

    fn sql(&self, e: rusqlite::Error) -> Error {
        Error::sql(self.db.what(), e)
    }

    pub fn property(&self, key: &str) -> Result<Option<String>> {
        self.db.property(key)
    }

    fn set_property(&self, key: &str, value: &str) -> Result<()> {
        self.db.set_property(key, value)
    }

    pub fn fqrn(&self) -> Result<Option<String>> {
        self.property("fqrn")
    }

    /// Hash of the history object this one replaced.
    pub fn previous_revision(&self) -> Result<Option<ContentHash>> {
        match self.property("previous_revision")? {
            None => Ok(None),
            Some(text) => ContentHash::from_hex(&text).map(Some).ok_or_else(|| {
                Error::corrupt(self.db.what(), format!("bad previous_revision {text:?}"))
            }),
        }
    }

    pub fn set_previous_revision(&mut self, hash: &ContentHash) -> Result<()> {
        self.set_property("previous_revision", &hash.to_hex())
    }

    /// All tags, ordered by name.
    pub fn tags(&self) -> Result<Vec<Tag>> {
        self.select_tags("ORDER BY name", params![])
    }

    /// The tags `SELECT … FROM tags <clause>` picks.
    fn select_tags(&self, clause: &str, args: impl rusqlite::Params) -> Result<Vec<Tag>> {
        let sql =
            format!("SELECT name, hash, revision, timestamp, description, size FROM tags {clause}");
        let mut stmt = self.db.conn().prepare(&sql).map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(args, |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            })
            .map_err(|e| self.sql(e))?;
        let mut tags = Vec::new();
        for row in rows {
            let (name, hash, revision, timestamp, description, size) =
                row.map_err(|e| self.sql(e))?;
            let hash = ContentHash::from_hex(&hash).ok_or_else(|| {
                Error::corrupt(self.db.what(), format!("tag {name}: bad hash {hash:?}"))
            })?;
            tags.push(Tag {
                name,
                hash,
                revision: u64::try_from(revision).unwrap_or(0),
                timestamp,
                description: description.unwrap_or_default(),
                size: u64::try_from(size).unwrap_or(0),
            });
        }
        Ok(tags)
    }

    pub fn tag(&self, name: &str) -> Result<Option<Tag>> {
        Ok(self.tags()?.into_iter().find(|t| t.name == name))
    }

    /// Inserts or replaces a tag (channel 0, branch `''`).
    pub fn set_tag(&mut self, tag: &Tag) -> Result<()> {
        self.db
            .conn()
            .execute(
                "INSERT OR REPLACE INTO tags \
                 (name, hash, revision, timestamp, channel, description, size, branch) \
                 VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6, '')",
                params![
                    tag.name,
                    tag.hash.to_hex(),
                    to_i64(tag.revision),
                    tag.timestamp,
                    tag.description,
                    to_i64(tag.size)
                ],
            )
            .map(|_| ())
            .map_err(|e| self.sql(e))
    }

    /// Removes a tag; returns whether it existed.
    pub fn remove_tag(&mut self, name: &str) -> Result<bool> {
        self.db
            .conn()
            .execute("DELETE FROM tags WHERE name = ?1", [name])
            .map(|n| n > 0)
            .map_err(|e| self.sql(e))
    }

    /// The tags a rollback to tag `target` replaces, newest first: those of later revisions
    /// and the target itself, on the default branch (`cvmfs_server rollback`'s condition).
    pub fn tags_replaced_by_rollback(&self, target: &Tag) -> Result<Vec<Tag>> {
        self.select_tags(
            "WHERE (revision > ?1 OR name = ?2) AND branch = '' ORDER BY revision DESC",
            params![to_i64(target.revision), target.name],
        )
    }

    /// Rolls the history back to `target` as `cvmfs_server rollback` does: the tags of
    /// [`History::tags_replaced_by_rollback`] go, `target` comes back as `rolled_back` (its
    /// name and description, the new revision's root) and becomes `trunk`; no
    /// `trunk-previous` remains, so only one rollback without a tag name is possible.
    pub fn roll_back(&mut self, target: &Tag, rolled_back: &Tag) -> Result<()> {
        self.db
            .conn()
            .execute(
                "DELETE FROM tags WHERE (revision > ?1 OR name = ?2) AND branch = ''",
                params![to_i64(target.revision), target.name],
            )
            .map_err(|e| self.sql(e))?;
        self.set_tag(rolled_back)?;
        self.remove_tag(TRUNK_PREVIOUS)?;
        self.set_tag(&Tag {
            name: TRUNK.to_string(),
            description: "current HEAD".to_string(),
            ..rolled_back.clone()
        })
    }

    /// Records a new published revision: the old `trunk` becomes `trunk-previous`.
    pub fn advance_trunk(
        &mut self,
        hash: ContentHash,
        revision: u64,
        timestamp: i64,
        size: u64,
    ) -> Result<()> {
        if let Some(mut old) = self.tag(TRUNK)? {
            old.name = TRUNK_PREVIOUS.to_string();
            old.description = "default undo target".to_string();
            self.set_tag(&old)?;
        }
        self.set_tag(&Tag {
            name: TRUNK.to_string(),
            hash,
            revision,
            timestamp,
            description: "current HEAD".to_string(),
            size,
        })
    }

    /// Checker rules of spec 6.1 (schema, tags present, branches used and valid).
    pub fn problems(&self) -> Vec<String> {
        let what = self.db.what().to_string();
        match self.collect_problems() {
            Ok(p) => p.into_iter().map(|p| format!("{what}: {p}")).collect(),
            Err(e) => vec![e.to_string()],
        }
    }

    fn collect_problems(&self) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        match self.property("schema")? {
            Some(s) if s == "1.0" => {}
            other => problems.push(format!("schema is {other:?}, expected \"1.0\"")),
        }
        let branches = self.branches()?;
        let tags: Vec<(String, String, i64, Option<String>)> = {
            let mut stmt = self
                .db
                .conn()
                .prepare("SELECT name, hash, revision, branch FROM tags")
                .map_err(|e| self.sql(e))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .map_err(|e| self.sql(e))?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(|e| self.sql(e))?
        };
        if tags.is_empty() {
            problems.push("no tags".to_string());
        }
        for (name, hash, revision, branch) in &tags {
            if ContentHash::from_hex(hash).is_none() {
                problems.push(format!("tag {name}: invalid hash {hash:?}"));
            }
            let branch = branch.clone().unwrap_or_default();
            match branches.iter().find(|b| b.0 == branch) {
                None => problems.push(format!("tag {name}: unknown branch {branch:?}")),
                Some(b) if *revision < b.2 => problems.push(format!(
                    "tag {name}: revision {revision} below initial revision {} of branch {branch:?}",
                    b.2
                )),
                Some(_) => {}
            }
        }
        for (branch, parent, _) in &branches {
            if !valid_branch_name(branch) {
                problems.push(format!("invalid branch name {branch:?}"));
            }
            if !tags.iter().any(|t| t.3.as_deref().unwrap_or("") == branch) {
                problems.push(format!("unused, dangling branch {branch:?}"));
            }
            if let Some(p) = parent {
                if !branches.iter().any(|b| &b.0 == p) {
                    problems.push(format!("branch {branch:?}: unknown parent {p:?}"));
                }
            }
        }
        Ok(problems)
    }

    /// `(branch, parent, initial_revision)` rows.
    fn branches(&self) -> Result<Vec<(String, Option<String>, i64)>> {
        let mut stmt = self
            .db
            .conn()
            .prepare("SELECT branch, parent, initial_revision FROM branches")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, Option<String>>(0)?.unwrap_or_default(),
                    r.get(1)?,
                    r.get::<_, Option<i64>>(2)?.unwrap_or(0),
                ))
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.sql(e))
    }

    /// Closes the database and returns its SQLite bytes.
    pub fn to_sqlite(self) -> Result<Vec<u8>> {
        self.db.into_bytes()
    }

    /// Compresses and stores the database as an `H` object; returns its hash.
    pub fn store(self, store: &dyn ObjectStore) -> Result<ContentHash> {
        let raw = self.to_sqlite()?;
        let obj = catalog_writer::zlib::compress(&raw);
        crate::store::put_named(store, &obj, Suffix::History, "history")
    }
}

/// cvmfs accepts the empty root branch and names made of `[A-Za-z0-9_.@-]`.
fn valid_branch_name(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> ContentHash {
        ContentHash([n; 20])
    }

    #[test]
    fn trunk_moves_and_survives_round_trip() {
        let mut hist = History::create("t.example.org").unwrap();
        assert!(hist.problems().iter().any(|p| p.contains("no tags")));
        hist.advance_trunk(h(1), 1, 100, 4096).unwrap();
        hist.set_previous_revision(&h(9)).unwrap();
        let bytes = hist.to_sqlite().unwrap();
        // Rollback-journal file format (not WAL), as cvmfs writes it.
        assert_eq!((bytes[18], bytes[19]), (1, 1));
        let mut hist = History::from_sqlite(&bytes, "test").unwrap();
        assert!(hist.problems().is_empty(), "{:?}", hist.problems());
        assert!(hist.tag(TRUNK_PREVIOUS).unwrap().is_none());
        hist.advance_trunk(h(2), 2, 200, 8192).unwrap();
        let tags = hist.tags().unwrap();
        assert_eq!(tags.len(), 2);
        let trunk = hist.tag(TRUNK).unwrap().unwrap();
        assert_eq!(
            (trunk.hash, trunk.revision, trunk.timestamp, trunk.size),
            (h(2), 2, 200, 8192)
        );
        let prev = hist.tag(TRUNK_PREVIOUS).unwrap().unwrap();
        assert_eq!(
            (prev.hash, prev.revision, prev.timestamp, prev.size),
            (h(1), 1, 100, 4096)
        );
        assert_eq!(hist.previous_revision().unwrap(), Some(h(9)));
        assert_eq!(hist.fqrn().unwrap().as_deref(), Some("t.example.org"));
        assert_eq!(
            hist.property("schema_revision").unwrap().as_deref(),
            Some("3")
        );
    }

    #[test]
    fn problems_catch_dangling_branch_and_bad_schema() {
        let mut hist = History::create("t.example.org").unwrap();
        hist.advance_trunk(h(1), 1, 100, 1).unwrap();
        hist.db
            .conn()
            .execute_batch(
                "INSERT INTO branches VALUES ('side', '', 5); \
                 UPDATE properties SET value = '2.0' WHERE key = 'schema';",
            )
            .unwrap();
        let p = hist.problems();
        assert!(
            p.iter().any(|p| p.contains("dangling branch \"side\"")),
            "{p:?}"
        );
        assert!(p.iter().any(|p| p.contains("schema")), "{p:?}");
    }
}
