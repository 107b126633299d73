//! Test helpers: object stores and entry builders.
#![allow(dead_code)]

use catalog_writer::entry::{Chunk, Entry, EntryKind, FileData, Xattrs};
use catalog_writer::hash::{ContentHash, Suffix};
use catalog_writer::namespace::{CatalogRef, CommitOptions, Objects};
use catalog_writer::sql::{self, CatalogDb};
use catalog_writer::tree::{Dir, Node};
use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;

/// Objects in a HashMap; counts loads so tests can see which catalogs were read.
#[derive(Default)]
pub struct MemObjects {
    pub map: Mutex<HashMap<(ContentHash, Suffix), Vec<u8>>>,
    pub loads: Mutex<Vec<(ContentHash, Suffix)>>,
}

impl Objects for MemObjects {
    fn load(&self, hash: &ContentHash, suffix: Suffix) -> io::Result<Vec<u8>> {
        self.loads.lock().unwrap().push((*hash, suffix));
        self.map
            .lock()
            .unwrap()
            .get(&(*hash, suffix))
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, hash.object_path(suffix)))
    }
    fn store(&self, hash: &ContentHash, suffix: Suffix, bytes: &[u8]) -> io::Result<()> {
        assert_eq!(
            ContentHash::of(bytes),
            *hash,
            "stored bytes do not match their hash"
        );
        self.map
            .lock()
            .unwrap()
            .entry((*hash, suffix))
            .or_insert_with(|| bytes.to_vec());
        Ok(())
    }
}

impl MemObjects {
    /// Stores `content` as a whole-file object and returns its hash.
    pub fn put(&self, content: &[u8], suffix: Suffix) -> ContentHash {
        let z = catalog_writer::zlib::compress(content);
        let h = ContentHash::of(&z);
        self.store(&h, suffix, &z).unwrap();
        h
    }

    /// Stores `db` (an edited catalog, say) as a catalog object; returns its reference.
    pub fn store_catalog(&self, db: &CatalogDb) -> CatalogRef {
        let raw = sql::write(db, "stored").unwrap();
        let z = catalog_writer::zlib::compress(&raw);
        let hash = ContentHash::of(&z);
        self.store(&hash, Suffix::Catalog, &z).unwrap();
        CatalogRef {
            hash,
            size: raw.len() as u64,
        }
    }

    pub fn catalog(&self, cref: &CatalogRef) -> CatalogDb {
        let z = self.map.lock().unwrap()[&(cref.hash, Suffix::Catalog)].clone();
        let raw = catalog_writer::zlib::decompress(&z, 1 << 30).unwrap();
        assert_eq!(raw.len() as u64, cref.size);
        assert_eq!(
            (raw[18], raw[19]),
            (1, 1),
            "catalog must not be in WAL mode"
        );
        sql::read(&raw, &cref.hash.to_hex()).unwrap()
    }

    pub fn catalog_loads(&self) -> Vec<ContentHash> {
        self.loads
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| *s == Suffix::Catalog)
            .map(|(h, _)| *h)
            .collect()
    }
}

/// A read-only stratum-0 storage directory (`data/XX/…`).
pub struct DirObjects(pub PathBuf);

impl Objects for DirObjects {
    fn load(&self, hash: &ContentHash, suffix: Suffix) -> io::Result<Vec<u8>> {
        std::fs::read(self.0.join(hash.object_path(suffix)))
    }
    fn store(&self, hash: &ContentHash, _suffix: Suffix, _bytes: &[u8]) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("read-only store: {hash}"),
        ))
    }
}

pub fn opts(revision: u64) -> CommitOptions {
    CommitOptions {
        revision,
        timestamp: 1_700_000_000 + revision as i64,
        ttl: 240,
        max_entries: 0,
        apply_dirtab: false,
    }
}

pub fn meta(kind: EntryKind, perm: u32) -> Entry {
    Entry {
        kind,
        perm,
        uid: 1000,
        gid: 100,
        mtime: 1_600_000_000,
        mtime_ns: None,
        xattrs: Xattrs::new(),
        hardlink: None,
    }
}

pub fn dir() -> Dir {
    Dir::new(Entry::directory(0o755, 1000, 100, 1_600_000_000))
}

pub fn file(objects: &MemObjects, content: &[u8]) -> Node {
    let h = objects.put(content, Suffix::None);
    Node::Leaf(meta(
        EntryKind::File {
            size: content.len() as u64,
            data: FileData::Whole(h),
        },
        0o644,
    ))
}

pub fn chunked(objects: &MemObjects, parts: &[&[u8]]) -> Node {
    let mut chunks = Vec::new();
    let mut offset = 0;
    for p in parts {
        let hash = objects.put(p, Suffix::Partial);
        chunks.push(Chunk {
            offset,
            size: p.len() as u64,
            hash,
        });
        offset += p.len() as u64;
    }
    Node::Leaf(meta(
        EntryKind::File {
            size: offset,
            data: FileData::Chunked(chunks),
        },
        0o644,
    ))
}

pub fn symlink(target: &[u8]) -> Node {
    Node::Leaf(meta(
        EntryKind::Symlink {
            target: target.to_vec(),
        },
        0o777,
    ))
}

/// Puts `node` at the relative path `rel` (`a/b/c`) below `root`, creating directories.
pub fn put(root: &mut Dir, rel: &[u8], node: Node) {
    let comps: Vec<&[u8]> = rel.split(|&b| b == b'/').collect();
    let mut cur = root;
    for c in &comps[..comps.len() - 1] {
        let next = cur
            .children
            .entry(c.to_vec())
            .or_insert_with(|| Node::Dir(dir()));
        cur = match next {
            Node::Dir(d) => d,
            Node::Leaf(_) => panic!("not a dir"),
        };
    }
    cur.children.insert(comps[comps.len() - 1].to_vec(), node);
}

/// Every `(path, entry)` of a source tree, root excluded.
pub fn flatten(d: &Dir, path: &[u8], out: &mut Vec<(Vec<u8>, Entry)>) {
    for (name, n) in &d.children {
        let mut p = path.to_vec();
        p.push(b'/');
        p.extend_from_slice(name);
        out.push((p.clone(), n.entry().clone()));
        if let Node::Dir(sub) = n {
            flatten(sub, &p, out);
        }
    }
}

pub fn without_link(mut e: Entry) -> Entry {
    e.hardlink = None;
    e
}

/// Every catalog of a repository: (mount path, db), parents first.
pub fn all_catalogs(
    objects: &MemObjects,
    root: CatalogRef,
) -> Vec<(Vec<u8>, CatalogRef, CatalogDb)> {
    let mut out = Vec::new();
    let mut todo = vec![(Vec::new(), root)];
    while let Some((path, cref)) = todo.pop() {
        let db = objects.catalog(&cref);
        for n in &db.nested {
            todo.push((
                n.path.clone(),
                CatalogRef {
                    hash: ContentHash::from_hex(&n.hash).unwrap(),
                    size: n.size,
                },
            ));
        }
        out.push((path, cref, db));
    }
    out
}

/// Asserts that `verify` finds nothing and returns the verification.
pub fn assert_verified(
    objects: &dyn Objects,
    root: CatalogRef,
) -> catalog_writer::verify::Verification {
    let v = catalog_writer::verify::verify(root, objects);
    let lines: Vec<String> = v.problems.iter().map(|p| p.to_string()).collect();
    assert!(
        lines.is_empty(),
        "verify found problems:\n{}",
        lines.join("\n")
    );
    v
}
