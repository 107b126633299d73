//! Reading and checking the repository written by the real CVMFS 2.12 tools.
mod common;

use catalog_writer::entry::{EntryKind, FileData};
use catalog_writer::hash::{ContentHash, Suffix};
use catalog_writer::namespace::{CatalogRef, Namespace, Objects};
use catalog_writer::verify::list_all;
use common::*;
use sha1::{Digest, Sha1};
use std::path::PathBuf;

const REF: &str = "/work/shared/reference";

fn reference() -> (DirObjects, CatalogRef) {
    let dir = PathBuf::from(REF).join("ref.test.local");
    let manifest = std::fs::read(dir.join(".cvmfspublished")).expect("reference manifest");
    let mut hash = None;
    let mut size = None;
    for line in manifest.split(|&b| b == b'\n') {
        if line == b"--" {
            break;
        }
        let text = String::from_utf8_lossy(line);
        if let Some(c) = text.strip_prefix('C') {
            hash = ContentHash::from_hex(c);
        } else if let Some(b) = text.strip_prefix('B') {
            size = b.parse().ok();
        }
    }
    let root = CatalogRef {
        hash: hash.expect("C line"),
        size: size.expect("B line"),
    };
    (DirObjects(dir), root)
}

#[test]
fn lists_the_reference_repository() {
    let (objects, root) = reference();
    let listing =
        std::fs::read_to_string(PathBuf::from(REF).join("ref.test.local.listing.jsonl")).unwrap();
    let mut expected: Vec<serde_json::Value> = listing
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    expected.sort_by(|a, b| a["path"].as_str().cmp(&b["path"].as_str()));
    let mut got = list_all(root, &objects).unwrap();
    for (p, _) in &mut got {
        if p.is_empty() {
            *p = b"/".to_vec();
        }
    }
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got.len(), expected.len());
    for ((path, e), want) in got.iter().zip(&expected) {
        let path = String::from_utf8(path.clone()).unwrap();
        assert_eq!(path, want["path"].as_str().unwrap());
        assert_eq!(u64::from(e.perm), want["mode"].as_u64().unwrap(), "{path}");
        assert_eq!(u64::from(e.uid), want["uid"].as_u64().unwrap(), "{path}");
        assert_eq!(u64::from(e.gid), want["gid"].as_u64().unwrap(), "{path}");
        assert_eq!(e.mtime, want["mtime"].as_i64().unwrap(), "{path}");
        match (&e.kind, want["type"].as_str().unwrap()) {
            (EntryKind::Directory, "dir") => {}
            (EntryKind::Symlink { target }, "symlink") => {
                assert_eq!(
                    target.as_slice(),
                    want["target"].as_str().unwrap().as_bytes(),
                    "{path}"
                );
            }
            (
                EntryKind::File {
                    size,
                    data: FileData::Whole(h),
                },
                "file",
            ) => {
                assert_eq!(*size, want["size"].as_u64().unwrap(), "{path}");
                let z = objects.load(h, Suffix::None).unwrap();
                let plain = catalog_writer::zlib::decompress(&z, *size).unwrap();
                assert_eq!(plain.len() as u64, *size, "{path}");
                assert_eq!(
                    hex::encode(Sha1::digest(&plain)),
                    want["sha1"].as_str().unwrap(),
                    "{path}"
                );
            }
            (kind, ty) => panic!("{path}: {kind:?} listed as {ty}"),
        }
    }
}

#[test]
fn reference_repository_verifies() {
    let (objects, root) = reference();
    let v = assert_verified(&objects, root);
    assert_eq!(v.catalogs, 2);
    for (hash, suffix) in &v.objects {
        let bytes = objects
            .load(hash, *suffix)
            .unwrap_or_else(|e| panic!("{}: {e}", hash.object_path(*suffix)));
        assert_eq!(ContentHash::of(&bytes), *hash);
    }
    // Catalogs, 4 distinct file contents incl. the empty object.
    assert_eq!(
        v.objects.iter().filter(|(_, s)| *s == Suffix::None).count(),
        5
    );
}

#[test]
fn reference_repository_can_be_extended() {
    let (store, root) = reference();
    // Writes go to memory; reads fall back to the reference directory.
    struct Layered(DirObjects, MemObjects);
    impl Objects for Layered {
        fn load(&self, h: &ContentHash, s: Suffix) -> std::io::Result<Vec<u8>> {
            self.1.load(h, s).or_else(|_| self.0.load(h, s))
        }
        fn store(&self, h: &ContentHash, s: Suffix, b: &[u8]) -> std::io::Result<()> {
            self.1.store(h, s, b)
        }
    }
    let objects = Layered(store, MemObjects::default());
    let mut ns = Namespace::open(root, &objects).unwrap();
    let node = file(&objects.1, b"added\n");
    ns.replace(
        b"/small/added",
        node,
        &catalog_writer::entry::Entry::directory(0o755, 0, 0, 1),
        &objects,
    )
    .unwrap();
    let report = ns.commit(&opts(4), &objects).unwrap();
    assert_eq!(report.catalogs_written, 1, "only the root catalog changes");
    assert_eq!(report.catalogs_total, 2);
    assert_verified(&objects, report.root);
    let paths = list_all(report.root, &objects).unwrap();
    assert_eq!(paths.len(), 33);
}
