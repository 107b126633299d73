//! A digest of what a catalog *says*, so a rewrite that would say the same thing can keep the
//! stored catalog (and its parent's `nested_catalogs` row) instead of making a new revision.
//!
//! Everything takes part except the properties that differ on every write (`revision`,
//! `last_modified`, `previous_revision`). Rows are taken in path-hash order and hardlink group
//! numbers are renumbered by first appearance in that order: group numbers are opaque, only
//! which rows share one matters, and a rewrite numbers them differently than the original.

use crate::sql::{CatalogDb, NestedRow};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// Properties that change with every write of otherwise identical content.
const VOLATILE: [&str; 3] = ["revision", "last_modified", "previous_revision"];

/// SHA-256 over the canonical content of a catalog (not SHA-1: names and symlink targets are
/// the publisher's input, and a crafted SHA-1 collision between two versions of a catalog
/// would keep the old one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

/// Length-prefixed feeding, so that no two different contents give the same byte stream.
struct Feed(Sha256);

impl Feed {
    fn int(&mut self, v: u64) {
        self.0.update(v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.int(b.len() as u64);
        self.0.update(b);
    }
    fn opt_bytes(&mut self, b: Option<&[u8]>) {
        match b {
            None => self.int(0),
            Some(b) => {
                self.int(1);
                self.bytes(b);
            }
        }
    }
    fn opt_int(&mut self, v: Option<i64>) {
        match v {
            None => self.int(0),
            Some(v) => {
                self.int(1);
                self.int(v as u64);
            }
        }
    }
    fn nested(&mut self, tag: &[u8], list: &[NestedRow]) {
        let mut sorted: Vec<&NestedRow> = list.iter().collect();
        sorted.sort_by(|a, b| a.path.cmp(&b.path));
        self.bytes(tag);
        self.int(sorted.len() as u64);
        for n in sorted {
            self.bytes(&n.path);
            self.bytes(n.hash.as_bytes());
            self.int(n.size);
        }
    }
}

impl Fingerprint {
    pub fn of(db: &CatalogDb) -> Fingerprint {
        let mut f = Feed(Sha256::new());
        f.bytes(b"properties");
        let stable: Vec<_> = db
            .properties
            .iter()
            .filter(|(k, _)| !VOLATILE.contains(&k.as_str()))
            .collect();
        f.int(stable.len() as u64);
        for (k, v) in stable {
            f.bytes(k.as_bytes());
            f.bytes(v);
        }
        f.bytes(b"catalog");
        f.int(u64::from(db.has_mtimens));
        let mut rows: Vec<_> = db.rows.iter().collect();
        rows.sort_by_key(|r| r.md5);
        let mut groups: HashMap<u32, u64> = HashMap::new();
        f.int(rows.len() as u64);
        for r in rows {
            let group = match r.group() {
                0 => 0,
                g => {
                    let next = groups.len() as u64 + 1;
                    *groups.entry(g).or_insert(next)
                }
            };
            f.int(r.md5.0 as u64);
            f.int(r.md5.1 as u64);
            f.int(r.parent.0 as u64);
            f.int(r.parent.1 as u64);
            f.int(group);
            f.int(u64::from(r.linkcount()));
            f.opt_bytes(r.hash.as_ref().map(|h| &h.0[..]));
            f.int(r.size);
            f.int(u64::from(r.mode));
            f.int(r.mtime as u64);
            f.opt_int(r.mtimens);
            f.int(u64::from(r.flags));
            f.bytes(&r.name);
            f.bytes(&r.symlink);
            f.int(u64::from(r.uid));
            f.int(u64::from(r.gid));
            f.opt_bytes(r.xattr.as_deref());
        }
        f.bytes(b"chunks");
        let mut chunks: Vec<_> = db.chunks.iter().collect();
        chunks.sort_by_key(|c| (c.md5, c.offset, c.size, c.hash));
        f.int(chunks.len() as u64);
        for c in chunks {
            f.int(c.md5.0 as u64);
            f.int(c.md5.1 as u64);
            f.int(c.offset);
            f.int(c.size);
            f.bytes(&c.hash.0);
        }
        f.nested(b"nested_catalogs", &db.nested);
        f.nested(b"bind_mountpoints", &db.bind_mountpoints);
        f.bytes(b"statistics");
        f.int(db.statistics.len() as u64);
        for (k, v) in &db.statistics {
            f.bytes(k.as_bytes());
            f.int(*v as u64);
        }
        Fingerprint(f.0.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pathhash::PathHash;
    use crate::sql::{ChunkRow, Row};

    fn row(path: &[u8], hardlinks: u64) -> Row {
        Row {
            md5: PathHash::of(path),
            parent: PathHash::of(b""),
            hardlinks,
            hash: Some(crate::hash::EMPTY_OBJECT),
            size: 0,
            mode: 0o100644,
            mtime: 7,
            mtimens: None,
            flags: crate::sql::flags::FILE,
            name: path[1..].to_vec(),
            symlink: Vec::new(),
            uid: 1,
            gid: 2,
            xattr: None,
        }
    }

    fn db() -> CatalogDb {
        let mut db = CatalogDb::default();
        for (k, v) in [("schema", "2.5"), ("revision", "3"), ("last_modified", "9")] {
            db.properties.insert(k.into(), v.as_bytes().to_vec());
        }
        db.rows = vec![
            row(b"/a", (5 << 32) | 2),
            row(b"/b", (5 << 32) | 2),
            row(b"/c", 1),
        ];
        db.chunks.push(ChunkRow {
            md5: PathHash::of(b"/c"),
            offset: 0,
            size: 1,
            hash: crate::hash::EMPTY_OBJECT,
        });
        db.statistics.insert("self_regular".into(), 3);
        db
    }

    #[test]
    fn volatile_properties_order_and_group_numbers_do_not_count() {
        let a = db();
        let mut b = db();
        b.properties.insert("revision".into(), b"4".to_vec());
        b.properties
            .insert("previous_revision".into(), b"abc".to_vec());
        b.rows.reverse();
        for r in &mut b.rows {
            if r.group() != 0 {
                r.hardlinks = (9 << 32) | 2;
            }
        }
        assert_eq!(Fingerprint::of(&a), Fingerprint::of(&b));
    }

    #[test]
    fn every_column_counts() {
        let base = Fingerprint::of(&db());
        type Change = Box<dyn Fn(&mut CatalogDb)>;
        let changes: Vec<Change> = vec![
            Box::new(|d| d.rows[0].mtime += 1),
            Box::new(|d| d.rows[0].mtimens = Some(0)),
            Box::new(|d| d.rows[0].xattr = Some(Vec::new())),
            Box::new(|d| d.rows[0].uid = 5),
            Box::new(|d| d.rows[2].name = b"d".to_vec()),
            Box::new(|d| d.rows[2].hash = None),
            // /a leaves the group: the partition changes, not only the numbers.
            Box::new(|d| d.rows[0].hardlinks = (6 << 32) | 2),
            Box::new(|d| d.rows[1].hardlinks = (5 << 32) | 3),
            Box::new(|d| d.chunks[0].size = 2),
            Box::new(|d| {
                d.nested.push(NestedRow {
                    path: b"/n".to_vec(),
                    hash: "00".into(),
                    size: 1,
                })
            }),
            Box::new(|d| {
                d.statistics.insert("self_regular".into(), 4);
            }),
            Box::new(|d| {
                d.properties.insert("TTL".into(), b"60".to_vec());
            }),
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut d = db();
            change(&mut d);
            assert_ne!(Fingerprint::of(&d), base, "change {i} went unnoticed");
        }
    }
}
