//! Transactions that do not publish leave the storage byte for byte as it was; publishing
//! keeps what it stored; publishing identical content changes nothing.

mod common;
use common::{add_file, init_repo, tempdir};

use catalog_writer::entry::{Chunk, Entry, EntryKind, FileData};
use catalog_writer::hash::{ContentHash, Suffix};
use catalog_writer::tree::{Dir, Node};
use publisher::{CommitOutcome, CommitSettings, Repository, Transaction};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const FQRN: &str = "rollback.example.org";

/// Every file and directory below `root`: relative path → (mode, SHA-1 of the contents).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u32, Option<ContentHash>)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            if meta.is_dir() {
                out.insert(rel, (meta.permissions().mode(), None));
                todo.push(path);
            } else {
                let hash = ContentHash::of(&fs::read(&path).unwrap());
                out.insert(rel, (meta.permissions().mode(), Some(hash)));
            }
        }
    }
    out
}

fn storage(repo: &Repository) -> PathBuf {
    repo.config().storage.clone()
}

/// Stores `content` through the transaction's store; returns the object's file.
fn put(txn: &Transaction, content: &[u8], suffix: Suffix) -> (ContentHash, PathBuf) {
    let obj = catalog_writer::zlib::compress(content);
    let hash = ContentHash::of(&obj);
    txn.objects().put(&hash, suffix, &obj).unwrap();
    let path = txn.config().storage.join(hash.object_path(suffix));
    assert!(path.exists());
    (hash, path)
}

fn meta(kind: EntryKind) -> Entry {
    Entry {
        kind,
        perm: 0o644,
        uid: 0,
        gid: 0,
        mtime: 1_700_000_000,
        mtime_ns: None,
        xattrs: Default::default(),
        hardlink: None,
    }
}

/// A subtree with a nested catalog, a hardlink pair, a chunked file and an xattr; its objects
/// are stored through `txn`.
fn subtree(txn: &Transaction) -> Dir {
    let mut t = Dir::new(Entry::directory(0o755, 0, 0, 1_700_000_000));
    let (h, _) = put(txn, b"linked\n", Suffix::None);
    let mut linked = meta(EntryKind::File {
        size: 7,
        data: FileData::Whole(h),
    });
    linked.hardlink = Some(42);
    linked.xattrs.insert(b"user.k".to_vec(), b"v".to_vec());
    let mut nested = Dir::new(Entry::directory(0o755, 0, 0, 1_700_000_000));
    let (empty, _) = put(txn, b"", Suffix::None);
    nested.children.insert(
        b".cvmfscatalog".to_vec(),
        Node::Leaf(meta(EntryKind::File {
            size: 0,
            data: FileData::Whole(empty),
        })),
    );
    nested
        .children
        .insert(b"a".to_vec(), Node::Leaf(linked.clone()));
    nested.children.insert(b"b".to_vec(), Node::Leaf(linked));
    let mut chunks = Vec::new();
    for (i, part) in [&b"first "[..], b"second"].iter().enumerate() {
        let (hash, _) = put(txn, part, Suffix::Partial);
        chunks.push(Chunk {
            offset: 6 * i as u64,
            size: part.len() as u64,
            hash,
        });
    }
    nested.children.insert(
        b"big".to_vec(),
        Node::Leaf(meta(EntryKind::File {
            size: 12,
            data: FileData::Chunked(chunks),
        })),
    );
    t.children.insert(b"nested".to_vec(), Node::Dir(nested));
    t
}

fn graft(txn: &mut Transaction, path: &[u8], tree: Dir) {
    let parent = Entry::directory(0o755, 0, 0, 1_700_000_000);
    let (ns, objects) = txn.namespace_and_objects();
    ns.replace(path, Node::Dir(tree), &parent, &objects)
        .unwrap();
}

fn commit(txn: Transaction) -> CommitOutcome {
    txn.commit(&CommitSettings::default()).unwrap()
}

#[test]
fn dropped_transaction_leaves_storage_byte_identical() {
    let dir = tempdir();
    let repo = init_repo(dir.path(), FQRN);
    let before = snapshot(&storage(&repo));
    let lingering = {
        let mut txn = repo.begin(false).unwrap();
        let tree = subtree(&txn);
        graft(&mut txn, b"/sw", tree);
        add_file(&mut txn, b"/loose", b"loose file\n");
        assert_ne!(snapshot(&storage(&repo)), before, "nothing was stored");
        txn.objects()
    };
    assert_eq!(snapshot(&storage(&repo)), before);
    // A pipeline still holding the store cannot add objects after the transaction ended.
    let obj = catalog_writer::zlib::compress(b"late");
    let err = lingering
        .put(&ContentHash::of(&obj), Suffix::None, &obj)
        .unwrap_err();
    assert!(err.to_string().contains("transaction is over"), "{err}");
    assert_eq!(snapshot(&storage(&repo)), before);

    // `abort` does the same and says what it removed.
    let txn = repo.begin(false).unwrap();
    put(&txn, b"one", Suffix::None);
    put(&txn, b"two", Suffix::Partial);
    let report = txn.abort();
    assert_eq!((report.objects_removed(), report.errors.len()), (2, 0));
    assert_eq!(snapshot(&storage(&repo)), before);
}

#[test]
fn failed_commit_leaves_storage_byte_identical() {
    let dir = tempdir();
    let repo = init_repo(dir.path(), FQRN);
    let before = snapshot(&storage(&repo));
    let mut txn = repo.begin(false).unwrap();
    let tree = subtree(&txn);
    graft(&mut txn, b"/ok", tree);
    // An xattr too large for a catalog: the commit fails after writing catalogs below it.
    let mut bad = Dir::new(Entry::directory(0o755, 0, 0, 1));
    bad.meta
        .xattrs
        .insert(b"user.big".to_vec(), vec![b'x'; 70_000]);
    graft(&mut txn, b"/bad", bad);
    let err = txn.commit(&CommitSettings::default()).unwrap_err();
    assert!(err.to_string().contains("/bad"), "{err}");
    assert_eq!(snapshot(&storage(&repo)), before);
}

#[test]
fn successful_commit_keeps_objects_and_existing_objects_survive_rollback() {
    let dir = tempdir();
    let repo = init_repo(dir.path(), FQRN);
    let mut txn = repo.begin(false).unwrap();
    let tree = subtree(&txn);
    let (_, unreferenced) = put(&txn, b"stored, never grafted", Suffix::None);
    graft(&mut txn, b"/sw", tree);
    let CommitOutcome::Published(p) = commit(txn) else {
        panic!("nothing published")
    };
    assert_eq!(p.revision, 2);
    assert!(unreferenced.exists(), "a published transaction keeps all");
    let published = snapshot(&storage(&repo));

    // Objects that existed before the transaction are never deleted, even when it stores them
    // again; only the one it created goes.
    let txn = repo.begin(false).unwrap();
    let (_, linked) = put(&txn, b"linked\n", Suffix::None);
    let (_, again) = put(&txn, b"stored, never grafted", Suffix::None);
    let (_, fresh) = put(&txn, b"fresh", Suffix::None);
    drop(txn);
    assert!(linked.exists() && again.exists());
    assert!(!fresh.exists());
    assert_eq!(snapshot(&storage(&repo)), published);
}

#[test]
fn lost_race_keeps_objects() {
    // The manifest moved under the transaction: the winner may reference what we stored.
    let dir = tempdir();
    let repo = init_repo(dir.path(), FQRN);
    let manifest = storage(&repo).join(".cvmfspublished");
    let mut txn = repo.begin(false).unwrap();
    let (_, obj) = put(&txn, b"raced", Suffix::None);
    add_file(&mut txn, b"/raced", b"raced");
    let mut moved = fs::read(&manifest).unwrap();
    moved.push(b'\n');
    fs::write(&manifest, &moved).unwrap();
    let err = txn.commit(&CommitSettings::default()).unwrap_err();
    assert!(err.to_string().contains("changed since"), "{err}");
    assert!(obj.exists());
}

#[test]
fn identical_subtree_again_is_unchanged() {
    let dir = tempdir();
    let repo = init_repo(dir.path(), FQRN);
    let mut txn = repo.begin(false).unwrap();
    let tree = subtree(&txn);
    graft(&mut txn, b"/sw", tree);
    add_file(&mut txn, b"/top", b"top\n");
    assert!(matches!(commit(txn), CommitOutcome::Published(_)));
    let published = snapshot(&storage(&repo));
    let manifest = fs::read(storage(&repo).join(".cvmfspublished")).unwrap();

    let mut txn = repo.begin(false).unwrap();
    let tree = subtree(&txn);
    graft(&mut txn, b"/sw", tree);
    assert!(txn.namespace().is_dirty());
    assert_eq!(commit(txn), CommitOutcome::Unchanged { revision: 2 });
    assert_eq!(
        fs::read(storage(&repo).join(".cvmfspublished")).unwrap(),
        manifest
    );
    assert_eq!(snapshot(&storage(&repo)), published);

    // A real change below the nested catalog still publishes.
    let mut txn = repo.begin(false).unwrap();
    let mut tree = subtree(&txn);
    let Some(Node::Dir(nested)) = tree.children.get_mut(&b"nested"[..]) else {
        unreachable!()
    };
    nested.children.remove(&b"b"[..]);
    graft(&mut txn, b"/sw", tree);
    match commit(txn) {
        CommitOutcome::Published(p) => {
            assert_eq!((p.revision, p.catalogs_written), (3, 2));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn aborted_transaction_removes_put_file_objects() {
    let dir = tempdir();
    let repo = init_repo(dir.path(), FQRN);
    let before = snapshot(&storage(&repo));
    let txn = repo.begin(false).unwrap();
    let store = txn.objects();
    let scratch = store
        .scratch_dir()
        .expect("a local store has a scratch area");
    assert!(scratch.starts_with(storage(&repo)), "{}", scratch.display());
    let obj = catalog_writer::zlib::compress(b"a large file, streamed");
    let hash = ContentHash::of(&obj);
    let tmp = scratch.join("streamed-object");
    fs::write(&tmp, &obj).unwrap();
    store.put_file(&hash, Suffix::None, &tmp).unwrap();
    assert!(!tmp.exists(), "the store took the scratch file over");
    let path = storage(&repo).join(hash.object_path(Suffix::None));
    assert_eq!(fs::read(&path).unwrap(), obj);
    let report = txn.abort();
    assert_eq!((report.objects_removed(), report.errors.len()), (1, 0));
    assert!(!path.exists());
    assert_eq!(snapshot(&storage(&repo)), before);
    // After the end, put_file is refused and the file is still taken away.
    fs::write(&tmp, &obj).unwrap();
    let err = store.put_file(&hash, Suffix::None, &tmp).unwrap_err();
    assert!(err.to_string().contains("transaction is over"), "{err}");
    assert!(!tmp.exists());
    assert_eq!(snapshot(&storage(&repo)), before);
}
