//! The repository written by the real CVMFS 2.12 tools (../shared/reference): `check` accepts it
//! and republishing its contents gives objects with the same names.

mod common;

use common::{Env, FQRN};
use std::collections::BTreeSet;
use std::path::PathBuf;

/// `$CVMFS_OCI_REFERENCE`, else `shared/reference` next to the checkout.
fn reference() -> PathBuf {
    let dir = std::env::var_os("CVMFS_OCI_REFERENCE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference")
        });
    assert!(
        dir.join("keys").is_dir(),
        "the reference repository is not at {} (clone next to shared/, or set CVMFS_OCI_REFERENCE)",
        dir.display()
    );
    dir
}

fn object_names(storage: &std::path::Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for d in std::fs::read_dir(storage.join("data")).unwrap().flatten() {
        let dir = d.file_name().to_string_lossy().to_string();
        if dir.len() != 2 {
            continue;
        }
        for f in std::fs::read_dir(d.path()).unwrap().flatten() {
            out.insert(format!("{dir}{}", f.file_name().to_string_lossy()));
        }
    }
    out
}

#[test]
fn check_accepts_the_reference_repository() {
    let env = Env::init(&[]);
    let r = reference();
    let storage = r.join("ref.test.local");
    let key = r.join("keys/ref.test.local.pub");
    let out = env.ok(&[
        "check",
        "ref.test.local",
        "--full",
        "--storage",
        storage.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert!(out.contains("OK"), "{out}");
    // The wrong name fails.
    let bad = env.run(&[
        "check",
        "other.test.local",
        "--storage",
        storage.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
}

#[test]
fn republished_reference_content_gets_the_same_object_names() {
    let env = Env::init(&["--no-chunking"]);
    let r = reference();
    let storage = r.join("ref.test.local");
    let store = publisher::LocalStore::open(&storage).expect("reference storage");
    let bytes = std::fs::read(storage.join(".cvmfspublished")).unwrap();
    let m = signer::Manifest::parse(&bytes).unwrap().manifest;
    let root = catalog_writer::namespace::CatalogRef {
        hash: catalog_writer::hash::ContentHash::from_hex(&m.root_catalog).unwrap(),
        size: m.root_size,
    };
    let objects = publisher::as_objects(&store);
    // Rebuild the reference tree on disk from its objects (regular files, links, dirs).
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut expected = BTreeSet::new();
    for (path, entry) in catalog_writer::verify::list_all(root, &objects).unwrap() {
        let rel = String::from_utf8(path.clone()).unwrap();
        if rel.is_empty() || rel.ends_with("/.cvmfscatalog") {
            continue;
        }
        let target = src.join(rel.trim_start_matches('/'));
        match &entry.kind {
            catalog_writer::entry::EntryKind::Directory => {
                std::fs::create_dir_all(&target).unwrap()
            }
            catalog_writer::entry::EntryKind::Symlink { target: t } => {
                std::os::unix::fs::symlink(String::from_utf8(t.clone()).unwrap(), &target).unwrap()
            }
            catalog_writer::entry::EntryKind::File {
                data: catalog_writer::entry::FileData::Whole(h),
                ..
            } => {
                use catalog_writer::hash::Suffix;
                let z = std::fs::read(storage.join(h.object_path(Suffix::None))).unwrap();
                let plain = catalog_writer::zlib::decompress(&z, 1 << 30).unwrap();
                std::fs::create_dir_all(target.parent().unwrap()).unwrap();
                std::fs::write(&target, plain).unwrap();
                expected.insert(h.to_hex());
            }
            other => panic!("unexpected entry {other:?} at {rel}"),
        }
    }
    assert!(expected.len() >= 5, "{expected:?}");
    env.ok(&["publish", FQRN, src.to_str().unwrap()]);
    env.check(true);
    let ours = object_names(&env.storage);
    let theirs: BTreeSet<String> = object_names(&storage)
        .into_iter()
        .filter(|n| n.len() == 40)
        .collect();
    assert_eq!(theirs.len(), expected.len());
    for name in &theirs {
        assert!(
            ours.contains(name),
            "reference object {name} not produced by cvmfs-oci"
        );
    }
}
