//! The layer memo: round trips, merging, filling unknown file data, verification against the
//! store, persistence.

mod common;
use common::tempdir;

use catalog_writer::entry::{Chunk, Entry, FileData};
use catalog_writer::hash::{ContentHash, Suffix};
use publisher::layer_memo::verify_objects;
use publisher::{LayerMemo, LocalStore, MemoEntry, MemoKind, MemoLayer, MemoMeta, ObjectStore};

const LAYER: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn meta(perm: u32) -> MemoMeta {
    let mut xattrs = catalog_writer::entry::Xattrs::new();
    xattrs.insert(b"user.k".to_vec(), vec![0xff, 0x00, b'v']);
    MemoMeta {
        perm,
        uid: 1000,
        gid: 100,
        mtime: 1_700_000_123,
        mtime_ns: Some(42),
        xattrs,
    }
}

fn entry(path: &[u8], kind: MemoKind) -> MemoEntry {
    MemoEntry {
        path: path.to_vec(),
        kind,
    }
}

/// Stores `content` zlib-compressed with `suffix`; returns the object hash.
fn store_object(store: &LocalStore, content: &[u8], suffix: Suffix) -> ContentHash {
    let z = catalog_writer::zlib::compress(content);
    let h = ContentHash::of(&z);
    store.put(&h, suffix, &z).unwrap();
    h
}

struct Objects {
    whole: ContentHash,
    chunks: Vec<Chunk>,
}

fn objects(store: &LocalStore) -> Objects {
    let whole = store_object(store, b"#!/bin/sh\necho hi\n", Suffix::None);
    let c0 = store_object(store, b"first chunk ", Suffix::Partial);
    let c1 = store_object(store, b"second chunk", Suffix::Partial);
    Objects {
        whole,
        chunks: vec![
            Chunk {
                offset: 0,
                size: 12,
                hash: c0,
            },
            Chunk {
                offset: 12,
                size: 12,
                hash: c1,
            },
        ],
    }
}

/// A layer with every kind of member; `shadowed` has unknown data.
fn sample(o: &Objects) -> MemoLayer {
    MemoLayer::new(vec![
        entry(b"", MemoKind::Directory(meta(0o755))),
        entry(b"usr/bin", MemoKind::Directory(meta(0o755))),
        entry(
            b"usr/bin/tool",
            MemoKind::File {
                meta: meta(0o4755),
                size: 18,
                data: Some(FileData::Whole(o.whole)),
            },
        ),
        entry(
            b"usr/lib/big.so",
            MemoKind::File {
                meta: meta(0o644),
                size: 24,
                data: Some(FileData::Chunked(o.chunks.clone())),
            },
        ),
        entry(
            b"usr/lib/shadowed",
            MemoKind::File {
                meta: meta(0o644),
                size: 5,
                data: None,
            },
        ),
        entry(
            b"usr/bin/sh",
            MemoKind::Symlink {
                meta: meta(0o777),
                target: b"/bin/bash\xff".to_vec(),
            },
        ),
        entry(
            b"dev/null",
            MemoKind::CharDevice {
                meta: meta(0o666),
                rdev: catalog_writer::entry::makedev(1, 3),
            },
        ),
        entry(
            b"dev/sda",
            MemoKind::BlockDevice {
                meta: meta(0o660),
                rdev: catalog_writer::entry::makedev(8, 0),
            },
        ),
        entry(b"run/fifo", MemoKind::Fifo(meta(0o600))),
        entry(b"run/sock", MemoKind::Socket(meta(0o600))),
        entry(b"etc/removed", MemoKind::Whiteout),
        entry(b"var/cache", MemoKind::Opaque),
        entry(
            b"usr/bin/tool2",
            MemoKind::Hardlink {
                target: b"usr/bin/tool".to_vec(),
            },
        ),
        entry(b"caf\xe9", MemoKind::Directory(meta(0o700))),
    ])
}

#[test]
fn round_trip_with_unknown_data_and_reopen() {
    let dir = tempdir();
    let store = LocalStore::create(&dir.path().join("srv")).unwrap();
    let o = objects(&store);
    let db = dir.path().join("layers.db");
    let layer = sample(&o);
    assert!(!layer.is_complete());
    assert_eq!(layer.unknown_files(), 1);
    {
        let memo = LayerMemo::open(&db).unwrap();
        assert_eq!(memo.get(LAYER).unwrap(), None);
        memo.put(LAYER, &layer).unwrap();
        assert_eq!(memo.get(LAYER).unwrap().as_ref(), Some(&layer));
    }
    let memo = LayerMemo::open(&db).unwrap();
    let back = memo.get(LAYER).unwrap().unwrap();
    assert_eq!(back, layer);
    let rows = memo.list().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].diff_id, LAYER);
    assert!(!rows[0].complete);
    assert!(rows[0].stored_bytes > 0);
    assert!(rows[0].created > 1_700_000_000);

    // Entries convert back to catalog entries, except the members that are not entries.
    let tool = back.entries[2].kind.to_entry().unwrap();
    assert_eq!(tool.mode(), libc::S_IFREG | 0o4755);
    assert_eq!(
        tool.xattrs.get(&b"user.k"[..]).unwrap(),
        &vec![0xff, 0, b'v']
    );
    assert_eq!(MemoKind::from_entry(&tool), back.entries[2].kind);
    assert!(back.entries[4].kind.to_entry().is_none());
    assert!(back.entries[10].kind.to_entry().is_none());
    let dir_entry = Entry::directory(0o755, 1, 2, 3);
    assert_eq!(
        MemoKind::from_entry(&dir_entry).to_entry().unwrap(),
        dir_entry
    );
}

#[test]
fn fill_missing_completes_and_put_merges() {
    let dir = tempdir();
    let store = LocalStore::create(&dir.path().join("srv")).unwrap();
    let o = objects(&store);
    let memo = LayerMemo::open(&dir.path().join("layers.db")).unwrap();
    let layer = sample(&o);
    memo.put(LAYER, &layer).unwrap();

    let five = store_object(&store, b"12345", Suffix::None);
    // Unknown path, and a file whose data is known: nothing changes.
    assert!(!memo
        .fill_missing(LAYER, b"no/such", FileData::Whole(five))
        .unwrap());
    assert!(!memo
        .fill_missing(LAYER, b"usr/bin/tool", FileData::Whole(five))
        .unwrap());
    assert_eq!(memo.get(LAYER).unwrap().unwrap(), layer);
    // Chunks that do not cover the file are refused.
    let bad = FileData::Chunked(vec![o.chunks[0].clone()]);
    let err = memo
        .fill_missing(LAYER, b"usr/lib/shadowed", bad)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("usr/lib/shadowed") && err.contains(LAYER),
        "{err}"
    );
    // No memo for another layer: nothing to fill.
    let other = "sha256:ffff";
    assert_eq!(
        memo.fill_missing_many(other, &[(b"x".to_vec(), FileData::Whole(five))])
            .unwrap(),
        0
    );
    assert_eq!(memo.get(other).unwrap(), None);

    assert!(memo
        .fill_missing(LAYER, b"usr/lib/shadowed", FileData::Whole(five))
        .unwrap());
    let filled = memo.get(LAYER).unwrap().unwrap();
    assert!(filled.is_complete());
    assert!(memo.list().unwrap()[0].complete);
    assert!(filled.objects().contains(&(five, Suffix::None)));

    // A later conversion that skipped the file again does not lose the data.
    memo.put(LAYER, &layer).unwrap();
    assert_eq!(memo.get(LAYER).unwrap().unwrap(), filled);
    assert!(memo.list().unwrap()[0].complete);

    // Different members replace the memo (no merge by position).
    let mut changed = layer.clone();
    changed.entries.pop();
    memo.put(LAYER, &changed).unwrap();
    assert_eq!(memo.get(LAYER).unwrap().unwrap(), changed);
    assert!(!memo.list().unwrap()[0].complete);

    assert!(memo.forget(LAYER).unwrap());
    assert!(!memo.forget(LAYER).unwrap());
    assert_eq!(memo.get(LAYER).unwrap(), None);
}

#[test]
fn verify_objects_sees_removed_objects() {
    let dir = tempdir();
    let store = LocalStore::create(&dir.path().join("srv")).unwrap();
    let o = objects(&store);
    let memo = LayerMemo::open(&dir.path().join("layers.db")).unwrap();
    let layer = sample(&o);
    memo.put(LAYER, &layer).unwrap();
    assert_eq!(layer.objects().len(), 3);
    assert!(verify_objects(&layer, &store));
    assert!(memo.get_verified(LAYER, &store).unwrap().is_some());

    std::fs::remove_file(store.object_path(&o.chunks[1].hash, Suffix::Partial)).unwrap();
    assert!(!verify_objects(&layer, &store));
    // The memo would lie: it is dropped.
    assert_eq!(memo.get_verified(LAYER, &store).unwrap(), None);
    assert_eq!(memo.get(LAYER).unwrap(), None);
}

#[test]
fn invalid_input_is_refused() {
    let dir = tempdir();
    let memo = LayerMemo::open(&dir.path().join("layers.db")).unwrap();
    for bad in [
        "",
        "sha256",
        "sha256:",
        "SHA256:ab",
        "sha256:AB",
        "sha256:../x",
    ] {
        let err = memo.put(bad, &MemoLayer::default()).unwrap_err();
        assert!(err.to_string().contains("diff_id"), "{bad}: {err}");
    }
    let gap = MemoLayer::new(vec![entry(
        b"f",
        MemoKind::File {
            meta: meta(0o644),
            size: 10,
            data: Some(FileData::Chunked(vec![Chunk {
                offset: 1,
                size: 9,
                hash: ContentHash([1; 20]),
            }])),
        },
    )]);
    assert!(memo.put(LAYER, &gap).is_err());
    assert_eq!(memo.get(LAYER).unwrap(), None);
    // An empty layer is a valid, complete memo.
    memo.put(LAYER, &MemoLayer::default()).unwrap();
    assert!(memo.get(LAYER).unwrap().unwrap().is_complete());
}

#[test]
fn repository_accessor_uses_state_dir() {
    let dir = tempdir();
    let repo = common::init_repo(dir.path(), "memo.example.org");
    let memo = repo.layer_memo().unwrap();
    memo.put(LAYER, &MemoLayer::default()).unwrap();
    assert_eq!(
        repo.home().layer_db_path(),
        repo.home().state_dir().join("layers.db")
    );
    assert!(repo.home().layer_db_path().exists());
    drop(memo);
    let again = publisher::Repository::open(&dir.path().join("home"), "memo.example.org")
        .unwrap()
        .layer_memo()
        .unwrap();
    assert!(again.get(LAYER).unwrap().is_some());
}
