//! `cache seed`: the content index learns every whole-file and chunk object of the current
//! revision, across nested catalogs, once.

mod common;
use common::{init_repo, tempdir};

use catalog_writer::entry::{Chunk, Entry, EntryKind, FileData};
use catalog_writer::hash::{ContentHash, Suffix, EMPTY_OBJECT};
use catalog_writer::namespace::CatalogRef;
use catalog_writer::tree::{Dir, Node};
use publisher::{
    seed_content_index, seed_repository, CommitOutcome, CommitSettings, ContentIndex, ObjectStore,
    Repository, SeedProgress,
};

const FQRN: &str = "seed.example.org";

fn key(b: &[u8]) -> publisher::store::PlainHash {
    publisher::store::plain_hash(b)
}

fn file(size: usize, data: FileData) -> Node {
    let mut e = Entry::directory(0o644, 0, 0, 1_700_000_000);
    e.kind = EntryKind::File {
        size: size as u64,
        data,
    };
    Node::Leaf(e)
}

/// Stores `plain` compressed; returns (object, compressed size).
fn put(store: &dyn ObjectStore, plain: &[u8], suffix: Suffix) -> (ContentHash, u64) {
    let z = catalog_writer::zlib::compress(plain);
    let h = ContentHash::of(&z);
    store.put(&h, suffix, &z).unwrap();
    (h, z.len() as u64)
}

/// What was published: (plain, suffix, object, compressed size) per data object.
type Expected = Vec<(Vec<u8>, Suffix, ContentHash, u64)>;

/// Publishes `/a.txt`, `/same.txt` (same content), `/big.bin` in two chunks, and
/// `/nested/b.txt` plus an empty marker in a nested catalog.
fn publish(repo: &Repository) -> (CatalogRef, Expected) {
    let mut txn = repo.begin(false).unwrap();
    let store = txn.objects();
    let mut expected = Expected::new();
    let mut whole = |plain: &[u8]| {
        let (h, c) = put(store.as_ref(), plain, Suffix::None);
        expected.push((plain.to_vec(), Suffix::None, h, c));
        file(plain.len(), FileData::Whole(h))
    };
    let a = b"hello seed\n".repeat(100);
    let mut root = Dir::new(Entry::directory(0o755, 0, 0, 1_700_000_000));
    root.children.insert(b"a.txt".to_vec(), whole(&a));
    let mut nested = Dir::new(Entry::directory(0o755, 0, 0, 1_700_000_000));
    nested
        .children
        .insert(b"b.txt".to_vec(), whole(b"in a nested catalog"));
    nested
        .children
        .insert(b".cvmfscatalog".to_vec(), whole(b""));
    let parts: [&[u8]; 2] = [&[7u8; 3000], b"tail of the chunked file"];
    let mut chunks = Vec::new();
    let mut offset = 0u64;
    for p in parts {
        let (h, c) = put(store.as_ref(), p, Suffix::Partial);
        expected.push((p.to_vec(), Suffix::Partial, h, c));
        chunks.push(Chunk {
            offset,
            size: p.len() as u64,
            hash: h,
        });
        offset += p.len() as u64;
    }
    let (same_obj, _) = put(store.as_ref(), &a, Suffix::None);
    root.children.insert(
        b"same.txt".to_vec(),
        file(a.len(), FileData::Whole(same_obj)),
    );
    root.children.insert(
        b"big.bin".to_vec(),
        file(offset as usize, FileData::Chunked(chunks)),
    );
    root.children.insert(b"nested".to_vec(), Node::Dir(nested));
    let parent = Entry::directory(0o755, 0, 0, 1_700_000_000);
    let (ns, objects) = txn.namespace_and_objects();
    ns.replace(b"/data", Node::Dir(root), &parent, &objects)
        .unwrap();
    let settings = CommitSettings {
        timestamp: None,
        apply_dirtab: false,
        tag: None,
    };
    match txn.commit(&settings).unwrap() {
        CommitOutcome::Published(p) => (p.root, expected),
        CommitOutcome::Unchanged { .. } => panic!("nothing published"),
    }
}

#[test]
fn seeds_every_object_once() {
    let dir = tempdir();
    let repo = init_repo(dir.path(), FQRN);
    let (root, expected) = publish(&repo);
    let store = repo.store();
    let index = repo.content_index().unwrap();
    for (plain, suffix, _, _) in &expected {
        assert!(index
            .lookup(&key(plain), plain.len() as u64, *suffix)
            .is_none());
    }

    let mut reports = Vec::new();
    let stats = seed_content_index(store.as_ref(), root, &index, &mut |p: &SeedProgress| {
        reports.push(*p)
    })
    .unwrap();
    assert!(stats.problems.is_empty(), "{:?}", stats.problems);
    assert_eq!(stats.catalogs, 2, "root and /data/nested");
    // a.txt (= same.txt), b.txt, the empty marker, two chunks.
    assert_eq!(stats.objects, 5);
    assert_eq!(stats.recorded, 5);
    assert_eq!(stats.already_indexed, 0);
    let plain_total: usize = expected.iter().map(|e| e.0.len()).sum();
    assert_eq!(stats.plain_bytes, plain_total as u64);
    let last = reports.last().unwrap();
    assert_eq!((last.objects_done, last.objects_total), (5, 5));
    assert_eq!(last.bytes_done, plain_total as u64);

    for (plain, suffix, obj, csize) in &expected {
        assert_eq!(
            index.lookup(&key(plain), plain.len() as u64, *suffix),
            Some((*obj, *csize)),
            "{suffix:?} object {obj}"
        );
    }
    assert_eq!(
        index.lookup(&key(b""), 0, Suffix::None).map(|r| r.0),
        Some(EMPTY_OBJECT)
    );
    // Chunks are not whole files: the suffix is part of the key.
    let (chunk_plain, _, _, _) = &expected[expected.len() - 1];
    assert!(index
        .lookup(&key(chunk_plain), chunk_plain.len() as u64, Suffix::None)
        .is_none());

    // A second run, even through a reopened index, reads and records nothing.
    drop(index);
    let again = seed_repository(&repo, &mut |_| {}).unwrap();
    assert_eq!(again.recorded, 0);
    assert_eq!(again.already_indexed, 5);
    assert_eq!(again.plain_bytes, 0);
    assert!(again.problems.is_empty(), "{:?}", again.problems);
}

#[test]
fn missing_and_corrupt_objects_are_reported() {
    let dir = tempdir();
    let repo = init_repo(dir.path(), FQRN);
    let (root, expected) = publish(&repo);
    let store = repo.store();
    let (_, _, gone, _) = &expected[0];
    let (_, _, bad, _) = &expected[1];
    std::fs::remove_file(store.object_path(gone, Suffix::None)).unwrap();
    std::fs::write(store.object_path(bad, Suffix::None), b"garbage").unwrap();

    let index = repo.content_index().unwrap();
    let stats = seed_content_index(store.as_ref(), root, &index, &mut |_| {}).unwrap();
    assert_eq!(stats.recorded, 3);
    assert_eq!(stats.problems.len(), 2, "{:?}", stats.problems);
    let text = stats.problems.join("\n");
    assert!(text.contains(&gone.object_path(Suffix::None)), "{text}");
    assert!(text.contains(&bad.object_path(Suffix::None)), "{text}");
    let (plain, _, _, _) = &expected[1];
    assert!(index
        .lookup(&key(plain), plain.len() as u64, Suffix::None)
        .is_none());
}

#[test]
fn unreadable_root_is_an_error() {
    let dir = tempdir();
    let repo = init_repo(dir.path(), FQRN);
    let index = repo.content_index().unwrap();
    let root = CatalogRef {
        hash: ContentHash([9; 20]),
        size: 0,
    };
    let err = seed_content_index(repo.store().as_ref(), root, &index, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains(&ContentHash([9; 20]).to_hex()), "{err}");
}
