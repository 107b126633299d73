//! Garbage collection: which revisions are kept (depth, time, tags), what is swept (objects
//! only old revisions reference, orphans of killed publishes) and what is never touched
//! (objects newer than the collection, files that are not objects, anything when a kept
//! catalog cannot be read); the reflog and manifest afterwards; the content index forgets.

mod common;
use common::{add_file, init_repo, init_repo_with, tempdir};

use catalog_writer::entry::{Chunk, Entry, EntryKind, FileData};
use catalog_writer::hash::{ContentHash, Suffix};
use catalog_writer::tree::Node;
use publisher::{
    check_repository, CommitOutcome, CommitSettings, ContentIndex, GcOptions, GcReport,
    InitOptions, Keep, ObjectStore, Reflog, Repository,
};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

const FQRN: &str = "gc.example.org";

fn object_of(content: &[u8]) -> ContentHash {
    ContentHash::of(&catalog_writer::zlib::compress(content))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Grafts a file of two chunks (suffix `P`) at `path`; returns the chunk objects.
fn add_chunked(
    txn: &mut publisher::Transaction,
    path: &[u8],
    parts: [&[u8]; 2],
) -> Vec<ContentHash> {
    let store = txn.objects();
    let mut chunks = Vec::new();
    let mut offset = 0;
    for p in parts {
        let z = catalog_writer::zlib::compress(p);
        let hash = ContentHash::of(&z);
        store.put(&hash, Suffix::Partial, &z).unwrap();
        chunks.push(Chunk {
            offset,
            size: p.len() as u64,
            hash,
        });
        offset += p.len() as u64;
    }
    let mut e = Entry::directory(0o644, 0, 0, 1_700_000_000);
    e.kind = EntryKind::File {
        size: offset,
        data: FileData::Chunked(chunks.clone()),
    };
    let parent = Entry::directory(0o755, 0, 0, 1_700_000_000);
    let (ns, objects) = txn.namespace_and_objects();
    ns.replace(path, Node::Leaf(e), &parent, &objects).unwrap();
    chunks.into_iter().map(|c| c.hash).collect()
}

fn commit(txn: publisher::Transaction, timestamp: i64) -> ContentHash {
    let settings = CommitSettings {
        timestamp: Some(timestamp),
        apply_dirtab: false,
        tag: None,
    };
    match txn.commit(&settings).unwrap() {
        CommitOutcome::Published(p) => p.root.hash,
        CommitOutcome::Unchanged { .. } => panic!("nothing published"),
    }
}

/// Four revisions, published 100 s apart from `t0`:
/// 2: `/a` = alpha, `/big` in two chunks, `/keep` = kept;
/// 3: `/a` = beta, `/big` removed;
/// 4: `/b` = gamma.
struct History {
    roots: Vec<ContentHash>,
    chunks: Vec<ContentHash>,
    t0: i64,
}

fn publish_history(repo: &Repository) -> History {
    let t0 = now();
    let mut roots = vec![repo_root(repo)];
    let mut txn = repo.begin(false).unwrap();
    add_file(&mut txn, b"/a", b"alpha");
    add_file(&mut txn, b"/keep", b"kept");
    let chunks = add_chunked(&mut txn, b"/big", [&[1u8; 5000], b"the end"]);
    roots.push(commit(txn, t0 + 100));
    let mut txn = repo.begin(false).unwrap();
    add_file(&mut txn, b"/a", b"beta");
    let (ns, objects) = txn.namespace_and_objects();
    assert!(ns.remove(b"/big", &objects).unwrap());
    roots.push(commit(txn, t0 + 200));
    let mut txn = repo.begin(false).unwrap();
    add_file(&mut txn, b"/b", b"gamma");
    roots.push(commit(txn, t0 + 300));
    History { roots, chunks, t0 }
}

fn repo_root(repo: &Repository) -> ContentHash {
    ContentHash::from_hex(&repo.info().unwrap().root_catalog).unwrap()
}

fn gc_repo(base: &std::path::Path) -> Repository {
    init_repo_with(
        base,
        FQRN,
        InitOptions {
            gc: true,
            ..InitOptions::default()
        },
    )
}

/// A second home for `repo`'s storage and keys (as on another machine, or re-made with
/// `adopt`).
fn second_home(repo: &Repository, base: &std::path::Path) -> Repository {
    let opts = InitOptions {
        keys_dir: Some(repo.config().keys_dir.clone()),
        gc: true,
        ..InitOptions::default()
    };
    let storage = &repo.config().storage;
    Repository::adopt(&base.join("home2"), FQRN, storage, opts)
        .unwrap()
        .0
}

fn options(keep: Keep, dry_run: bool) -> GcOptions {
    GcOptions {
        keep,
        dry_run,
        wait: false,
        deletion_log: None,
    }
}

fn gc(repo: &Repository, keep: Keep, dry_run: bool) -> GcReport {
    repo.gc(&options(keep, dry_run)).unwrap()
}

/// The error of a collection keeping only the current revision (and tagged ones).
fn gc_error(repo: &Repository) -> String {
    repo.gc(&options(Keep::Revisions(0), false))
        .unwrap_err()
        .to_string()
}

/// (revision, tags) of each kept revision.
fn kept_tags(r: &GcReport) -> Vec<(u64, Vec<&str>)> {
    r.kept
        .iter()
        .map(|k| (k.revision, k.tags.iter().map(String::as_str).collect()))
        .collect()
}

fn has(repo: &Repository, hash: &ContentHash, suffix: Suffix) -> bool {
    repo.store().contains(hash, suffix).unwrap()
}

fn check_ok(repo: &Repository) {
    let master = signer::load_public_key(&repo.config().public_key_path()).unwrap();
    let report = check_repository(repo.store().as_ref(), FQRN, &[master], true).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// An object file no catalog references, modified `age` ago (negative: in the future).
fn orphan(repo: &Repository, content: &[u8], age_secs: i64) -> (ContentHash, PathBuf) {
    let z = catalog_writer::zlib::compress(content);
    let hash = ContentHash::of(&z);
    repo.store().put(&hash, Suffix::None, &z).unwrap();
    let path = repo.store().object_path(&hash, Suffix::None);
    let when = if age_secs >= 0 {
        SystemTime::now() - Duration::from_secs(age_secs as u64)
    } else {
        SystemTime::now() + Duration::from_secs((-age_secs) as u64)
    };
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(when)
        .unwrap();
    (hash, path)
}

/// A scratch file in `data/txn`, last written `age_secs` ago.
fn scratch(repo: &Repository, name: &str, age_secs: u64) -> PathBuf {
    let path = repo.store().root().join("data/txn").join(name);
    std::fs::write(&path, b"partial object").unwrap();
    let f = std::fs::File::options().write(true).open(&path).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(age_secs))
        .unwrap();
    path
}

fn reflog(repo: &Repository) -> Reflog {
    let bytes = std::fs::read(repo.store().root().join(".cvmfsreflog")).unwrap();
    Reflog::from_bytes(&bytes, "reflog").unwrap()
}

fn manifest(repo: &Repository) -> (Vec<u8>, signer::Manifest) {
    let bytes = std::fs::read(repo.store().root().join(".cvmfspublished")).unwrap();
    let m = signer::Manifest::parse(&bytes).unwrap().manifest;
    (bytes, m)
}

#[test]
fn collects_what_only_old_revisions_and_killed_publishes_left() {
    let dir = tempdir();
    let repo = gc_repo(dir.path());
    let h = publish_history(&repo);
    let (old_orphan, _) = orphan(&repo, b"left by a killed publish", 3600);
    let (young_orphan, _) = orphan(&repo, b"being written right now", -60);
    // Scratch files in data/txn: one left by a writer killed two days ago, one being written.
    let stale = scratch(&repo, "tmp.4242.abc", 2 * 86_400);
    let busy = scratch(&repo, "tmp.4243.def", 60);
    let stranger = repo.store().root().join("data/ab/README");
    std::fs::write(&stranger, "not an object").unwrap();
    // Upper-case hex is not how objects are named either.
    let shouting = repo.store().object_path(&object_of(b"alpha"), Suffix::None);
    let shouting = shouting.with_file_name(
        shouting
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_uppercase(),
    );
    std::fs::write(&shouting, "not an object").unwrap();
    let index = repo.content_index().unwrap();
    let alpha_plain = publisher::store::plain_hash(b"alpha");
    index.record(&alpha_plain, 5, Suffix::None, object_of(b"alpha"), 13);
    index.flush().unwrap();
    drop(index);
    let (_, before) = manifest(&repo);

    let dry = gc(&repo, Keep::Revisions(0), true);
    assert!(
        has(&repo, &object_of(b"alpha"), Suffix::None),
        "a dry run deletes nothing"
    );
    let log_path = dir.path().join("deleted.log");
    let r = repo
        .gc(&GcOptions {
            keep: Keep::Revisions(0),
            dry_run: false,
            wait: false,
            deletion_log: Some(log_path.clone()),
        })
        .unwrap();
    let logged = std::fs::read_to_string(&log_path).unwrap();
    let mut lines = logged.lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("# cvmfs-oci gc of gc.example.org"));
    let mut names: Vec<&str> = lines.collect();
    names.sort();
    let mut expected = vec![
        format!("{}", object_of(b"alpha")),
        format!("{}", old_orphan),
        format!("{}C", h.roots[0]),
        format!("{}C", h.roots[1]),
    ];
    expected.extend(h.chunks.iter().map(|c| format!("{c}P")));
    expected.sort();
    let (typed, histories): (Vec<&str>, Vec<&str>) = names.iter().partition(|n| !n.ends_with('H'));
    assert_eq!(typed, expected);
    assert_eq!(histories.len(), 3, "histories of revisions 1 to 3");
    assert_eq!(
        (dry.objects_deleted, dry.bytes_deleted, dry.catalogs_deleted),
        (r.objects_deleted, r.bytes_deleted, r.catalogs_deleted)
    );

    // Revision 4 and, through its tag `trunk-previous`, revision 3 are kept.
    assert_eq!(
        kept_tags(&r),
        [(4, vec!["trunk"]), (3, vec!["trunk-previous"])]
    );
    for (content, kept) in [
        (&b"alpha"[..], false),
        (b"beta", true),
        (b"gamma", true),
        (b"kept", true),
    ] {
        assert_eq!(
            has(&repo, &object_of(content), Suffix::None),
            kept,
            "{content:?}"
        );
    }
    for c in &h.chunks {
        assert!(
            !has(&repo, c, Suffix::Partial),
            "chunk {c} of the removed /big"
        );
    }
    // Roots of revisions 1 and 2 went, those of 3 and 4 stayed.
    let roots_kept: Vec<bool> = h
        .roots
        .iter()
        .map(|c| has(&repo, c, Suffix::Catalog))
        .collect();
    assert_eq!(roots_kept, [false, false, true, true]);
    assert!(!has(&repo, &old_orphan, Suffix::None));
    assert!(
        has(&repo, &young_orphan, Suffix::None),
        "newer than the collection"
    );
    assert_eq!(r.objects_too_new, 1);
    assert!(
        stranger.exists() && shouting.exists(),
        "not object names: left alone"
    );
    assert!(!stale.exists() && busy.exists());
    assert_eq!(r.scratch_removed, 1);
    let status = std::fs::read(repo.store().root().join(".cvmfs_status.json")).unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status).unwrap();
    let last_gc = status["last_gc"].as_str().unwrap();
    assert!(last_gc.contains(" UTC 20"), "like `date --utc`: {last_gc}");
    // alpha, 2 chunks, the orphan, root catalogs 1 and 2, histories of revisions 1 to 3.
    assert_eq!((r.objects_deleted, r.catalogs_deleted), (9, 2));
    assert_eq!(r.index_forgotten, 1);
    let index = repo.content_index().unwrap();
    assert!(index.lookup(&alpha_plain, 5, Suffix::None).is_none());

    // The reflog lists what is left; the manifest names it, at the same revision.
    let log = reflog(&repo);
    let listed: Vec<ContentHash> = log.refs().unwrap().into_iter().map(|r| r.hash).collect();
    assert!(
        !listed.contains(&h.roots[1])
            && listed.contains(&h.roots[2])
            && listed.contains(&h.roots[3])
    );
    assert!(
        listed.len() >= 4,
        "two catalogs, the certificate and the history"
    );
    assert_eq!(r.reflog_removed, 5, "catalogs 1, 2 and histories 1-3");
    let (bytes, after) = manifest(&repo);
    let reflog_bytes = std::fs::read(repo.store().root().join(".cvmfsreflog")).unwrap();
    assert_eq!(after.reflog, Some(ContentHash::of(&reflog_bytes).to_hex()));
    assert_eq!(
        signer::Manifest {
            reflog: None,
            ..after.clone()
        },
        signer::Manifest {
            reflog: None,
            ..before
        }
    );
    assert!(!bytes.is_empty());
    check_ok(&repo);

    // Nothing is left to collect.
    let again = gc(&repo, Keep::Revisions(0), false);
    assert_eq!((again.objects_deleted, again.reflog_removed), (0, 0));
    assert_eq!(
        manifest(&repo).0,
        bytes,
        "nothing changed, nothing re-signed"
    );
}

#[test]
fn keeps_revisions_by_depth_and_by_time() {
    let dir = tempdir();
    let repo = gc_repo(dir.path());
    let h = publish_history(&repo);
    let kept = |r: &GcReport| r.kept.iter().map(|k| k.revision).collect::<Vec<_>>();

    // Depth 2: revisions 4, 3 and 2, so alpha and the chunks stay.
    let r = gc(&repo, Keep::Revisions(2), true);
    assert_eq!(kept(&r), [4, 3, 2]);
    // Since a time between revisions 2 and 3: 4, 3, and 2, current at that time.
    let r = gc(&repo, Keep::Since(h.t0 + 150), true);
    assert_eq!(kept(&r), [4, 3, 2]);
    let r = gc(&repo, Keep::Since(h.t0 + 100), false);
    assert_eq!(
        kept(&r),
        [4, 3, 2, 1],
        "revision 2 is not older than the time"
    );
    assert_eq!(r.catalogs_deleted, 0);
    let r = gc(&repo, Keep::Revisions(2), false);
    assert_eq!(kept(&r), [4, 3, 2]);
    assert!(has(&repo, &object_of(b"alpha"), Suffix::None));
    assert!(h.chunks.iter().all(|c| has(&repo, c, Suffix::Partial)));
    assert!(!has(&repo, &h.roots[0], Suffix::Catalog));
    check_ok(&repo);
    // Revision 1 is gone: the chain ends at 2 whatever is asked.
    let r = gc(&repo, Keep::Revisions(10), false);
    assert_eq!(kept(&r), [4, 3, 2]);
    assert_eq!(r.objects_deleted, 0);
}

#[test]
fn refuses_a_repository_not_declared_collectable() {
    let dir = tempdir();
    let repo = init_repo(dir.path(), FQRN);
    let mut txn = repo.begin(false).unwrap();
    add_file(&mut txn, b"/a", b"alpha");
    commit(txn, now());
    let err = gc_error(&repo);
    assert!(err.contains("not garbage-collectable"), "{err}");
}

#[test]
fn deletes_nothing_when_a_kept_catalog_cannot_be_read() {
    let dir = tempdir();
    let repo = gc_repo(dir.path());
    let h = publish_history(&repo);
    let (orphan_hash, _) = orphan(&repo, b"left by a killed publish", 3600);
    // Revision 3's root catalog is damaged: what it references is unknown.
    let path = repo.store().object_path(&h.roots[2], Suffix::Catalog);
    std::fs::write(&path, b"not zlib").unwrap();
    let err = gc_error(&repo);
    assert!(
        err.contains("not collecting garbage") && err.contains("revision 3"),
        "{err}"
    );
    assert!(has(&repo, &orphan_hash, Suffix::None));
    assert!(has(&repo, &object_of(b"alpha"), Suffix::None));
}

#[test]
fn waits_for_or_refuses_a_held_lock() {
    let dir = tempdir();
    let repo = gc_repo(dir.path());
    let txn = repo.begin(false).unwrap();
    let err = gc_error(&repo);
    assert!(err.contains("another process"), "{err}");
    drop(txn);
    gc(&repo, Keep::Revisions(0), false);
}

#[test]
fn a_tagged_revision_is_kept_until_its_tag_goes() {
    let dir = tempdir();
    let repo = gc_repo(dir.path());
    let h = publish_history(&repo);
    let tag = repo.add_tag("release-1", Some(2), "first", false).unwrap();
    assert_eq!((tag.revision, tag.hash), (2, h.roots[1]));
    let names: Vec<String> = repo.tags().unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["release-1", "trunk", "trunk-previous"]);
    check_ok(&repo);

    let r = gc(&repo, Keep::Revisions(0), false);
    assert_eq!(
        kept_tags(&r),
        [
            (4, vec!["trunk"]),
            (3, vec!["trunk-previous"]),
            (2, vec!["release-1"]),
        ]
    );
    assert!(has(&repo, &object_of(b"alpha"), Suffix::None));
    assert!(h.chunks.iter().all(|c| has(&repo, c, Suffix::Partial)));
    check_ok(&repo);

    // Tags cannot name what is gone, nor touch the two a publish maintains.
    let err = repo
        .add_tag("first", Some(1), "", false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not stored"), "{err}");
    let err = repo
        .add_tag("x", Some(9), "", false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no revision 9"), "{err}");
    for bad in ["trunk", "trunk-previous", "", "-x", "a b", "a/b"] {
        assert!(repo.add_tag(bad, None, "", false).is_err(), "{bad:?}");
    }

    assert!(repo.remove_tag("release-1", false).unwrap());
    assert!(!repo.remove_tag("release-1", false).unwrap());
    let r = gc(&repo, Keep::Revisions(0), false);
    assert_eq!(r.kept.len(), 2);
    assert!(!has(&repo, &object_of(b"alpha"), Suffix::None));
    check_ok(&repo);
}

#[test]
fn a_publisher_of_another_home_holds_off_collection() {
    // Two homes publish into one storage (e.g. two machines, or a home re-made with `adopt`).
    let dir = tempdir();
    let repo = gc_repo(dir.path());
    publish_history(&repo);
    let storage = repo.config().storage.clone();
    let other = second_home(&repo, dir.path());

    // The other home's transaction stores alpha again: only revision 2 references it, so it
    // is garbage for `--keep-revisions 0`, and the store call finds it there and writes
    // nothing (its file keeps its old mtime).
    let alpha = object_of(b"alpha");
    let mut txn = other.begin(false).unwrap();
    add_file(&mut txn, b"/again", b"alpha");
    let err = gc_error(&repo);
    assert!(
        err.contains("is in use by a publisher (of this or another home)"),
        "{err}"
    );
    assert!(has(&repo, &alpha, Suffix::None));

    // A waiting collection starts only once that revision is published, so it keeps alpha.
    std::thread::scope(|s| {
        let collector = s.spawn(|| {
            let opts = GcOptions {
                wait: true,
                ..options(Keep::Revisions(0), false)
            };
            repo.gc(&opts).unwrap()
        });
        std::thread::sleep(Duration::from_millis(300));
        commit(txn, now());
        let report = collector.join().unwrap();
        assert_eq!(report.revision, 5);
    });
    assert!(has(&repo, &alpha, Suffix::None));
    check_ok(&repo);

    // While a collection holds the storage, publishers of any home wait or are refused.
    let lock = std::fs::File::open(storage.join("data/txn/collect.lock")).unwrap();
    lock.lock().unwrap();
    for home in [&repo, &other] {
        let err = match home.begin(false) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a transaction began during a collection"),
        };
        assert!(err.contains("is in use by garbage collection"), "{err}");
    }
    drop(lock);
    drop(other.begin(false).unwrap());
}

#[test]
fn publishers_of_two_homes_cannot_both_win_one_revision() {
    // Each commit checks that `.cvmfspublished` is still the one it began from and then
    // renames its own in; the storage's commit lock (on `data/txn`) makes the two one step,
    // so of two homes racing for the same revision one wins and the other is refused.
    let dir = tempdir();
    let repo = gc_repo(dir.path());
    let storage = repo.config().storage.clone();
    let other = second_home(&repo, dir.path());
    let base = manifest(&repo).1.revision;
    let mut first = repo.begin(false).unwrap();
    add_file(&mut first, b"/from-first", b"first home");
    let mut second = other.begin(false).unwrap();
    add_file(&mut second, b"/from-second", b"second home");

    let commit_lock = std::fs::File::open(storage.join("data/txn")).unwrap();
    commit_lock.lock().unwrap();
    let settings = CommitSettings::default();
    let results = std::thread::scope(|s| {
        let a = s.spawn(|| first.commit(&settings).map_err(|e| e.to_string()));
        let b = s.spawn(|| second.commit(&settings).map_err(|e| e.to_string()));
        std::thread::sleep(Duration::from_millis(500));
        // Both have written their catalogs and wait at the compare-and-swap.
        assert!(
            !a.is_finished() && !b.is_finished(),
            "a commit passed the held lock"
        );
        assert_eq!(manifest(&repo).1.revision, base);
        drop(commit_lock);
        [a.join().unwrap(), b.join().unwrap()]
    });
    let won = results
        .iter()
        .filter(|r| matches!(r, Ok(CommitOutcome::Published(_))))
        .count();
    assert_eq!(won, 1, "{results:?}");
    let lost = results.iter().find_map(|r| r.as_ref().err()).unwrap();
    assert!(
        lost.contains("changed since the transaction began"),
        "{lost}"
    );
    assert_eq!(manifest(&repo).1.revision, base + 1);
    check_ok(&repo);
}

#[test]
fn a_tag_written_by_another_home_holds_off_collection() {
    // A tag stores a new history object before the manifest names it: like a transaction it
    // holds the storage's collection lock, or a `gc` of another home could delete the object
    // in between and leave the manifest pointing at nothing.
    let dir = tempdir();
    let repo = gc_repo(dir.path());
    publish_history(&repo);
    let lock = std::fs::File::open(repo.config().storage.join("data/txn/collect.lock")).unwrap();
    lock.lock().unwrap();
    let err = match repo.add_tag("v1", None, "", false) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a tag was written during a collection"),
    };
    assert!(err.contains("is in use by garbage collection"), "{err}");
    drop(lock);
    repo.add_tag("v1", None, "", false).unwrap();
    check_ok(&repo);
}

#[test]
fn a_transaction_clears_scratch_files_left_an_hour_ago_when_nobody_holds_the_storage() {
    // A repository that is never collected must not keep what a killed writer left in
    // data/txn: a transaction that finds the storage free removes scratch files an hour old.
    let dir = tempdir();
    let repo = init_repo(dir.path(), FQRN);
    let abandoned = scratch(&repo, "tmp.4242.abc", 2 * 3600);
    let recent = scratch(&repo, "tmp.4243.def", 600);
    // Another home's publisher holds the storage: nothing is touched.
    let lock = std::fs::File::open(repo.store().collect_lock_path()).unwrap();
    lock.lock_shared().unwrap();
    drop(repo.begin(true).unwrap());
    assert!(abandoned.exists() && recent.exists());
    drop(lock);
    let txn = repo.begin(true).unwrap();
    assert!(!abandoned.exists(), "left two hours ago by nobody");
    assert!(recent.exists(), "ten minutes old: kept for gc's day");
    drop(txn);
    check_ok(&repo);
}

/// Each home keeps its own caches: objects another home's collection deleted are forgotten
/// by this home's next collection, even when it has nothing left to delete itself.
#[test]
fn caches_forget_what_another_homes_collection_deleted() {
    let dir = tempdir();
    let repo = gc_repo(dir.path());
    publish_history(&repo);
    let other = second_home(&repo, dir.path());
    let content = b"stored by the other home, then orphaned";
    let (orphaned, _) = orphan(&repo, content, 3600);
    let plain = publisher::store::plain_hash(content);
    let index = other.content_index().unwrap();
    index.record(&plain, content.len() as u64, Suffix::None, orphaned, 40);
    index.flush().unwrap();
    drop(index);
    let layer = "sha256:00000000000000000000000000000000000000000000000000000000000000aa";
    let entry = publisher::MemoEntry {
        path: b"f".to_vec(),
        kind: publisher::MemoKind::File {
            meta: publisher::MemoMeta {
                perm: 0o644,
                uid: 0,
                gid: 0,
                mtime: 0,
                mtime_ns: None,
                xattrs: Default::default(),
            },
            size: content.len() as u64,
            data: Some(FileData::Whole(orphaned)),
        },
    };
    let memo = other.layer_memo().unwrap();
    memo.put(layer, &publisher::MemoLayer::new(vec![entry]))
        .unwrap();
    drop(memo);

    let first = gc(&repo, Keep::Revisions(0), false);
    assert!(first.objects_deleted > 0);
    assert!(!has(&repo, &orphaned, Suffix::None));
    let again = gc(&other, Keep::Revisions(0), false);
    assert_eq!(again.objects_deleted, 0, "the first home deleted it all");
    assert_eq!(again.index_forgotten, 1);
    assert_eq!(again.memos_forgotten, 1);
    let index = other.content_index().unwrap();
    assert!(index
        .lookup(&plain, content.len() as u64, Suffix::None)
        .is_none());
    assert!(other.layer_memo().unwrap().get(layer).unwrap().is_none());
    check_ok(&repo);
}

/// Two publishers of one home that finish together both find the daily collection due; the
/// one that waits for the other's collection must not run a second one.
#[test]
fn two_publishers_finishing_together_collect_once() {
    let dir = tempdir();
    let repo = init_repo_with(
        dir.path(),
        FQRN,
        InitOptions {
            gc: true,
            auto_gc_seconds: Some(3600),
            ..InitOptions::default()
        },
    );
    publish_history(&repo);
    let home = dir.path().join("home");
    let barrier = std::sync::Barrier::new(2);
    let ran = std::thread::scope(|s| {
        let runs: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let repo = Repository::open(&home, FQRN).unwrap();
                    barrier.wait();
                    repo.auto_gc().unwrap().is_some()
                })
            })
            .collect();
        runs.into_iter()
            .map(|r| r.join().unwrap())
            .filter(|&ran| ran)
            .count()
    });
    assert_eq!(ran, 1);
    assert!(repo.auto_gc().unwrap().is_none(), "not due again");
    check_ok(&repo);
}
