//! Grafting content that is already there keeps the stored catalogs: no catalog is written,
//! the root stays the same and the commit reports no change; a real change rewrites only the
//! catalogs on its path.

mod common;

use catalog_writer::entry::{makedev, Entry, EntryKind};
use catalog_writer::hash::{ContentHash, Suffix};
use catalog_writer::namespace::{CatalogRef, CommitOptions, CommitReport, Namespace, Objects};
use catalog_writer::tree::{Dir, Node};
use common::*;

fn graft(ns: &mut Namespace, objects: &MemObjects, path: &[u8], tree: Dir) {
    ns.replace(
        path,
        Node::Dir(tree),
        &Entry::directory(0o755, 0, 0, 1),
        objects,
    )
    .unwrap();
}

fn commit_with(ns: &mut Namespace, objects: &MemObjects, o: &CommitOptions) -> CommitReport {
    let report = ns.commit(o, objects).unwrap();
    assert!(!ns.is_dirty());
    assert_verified(objects, report.root);
    report
}

/// Hardlinks, xattrs (on a directory, a symlink and a nested catalog root), a chunked file,
/// special files and mtime nanoseconds.
fn rich(objects: &MemObjects) -> Dir {
    let mut t = dir();
    put(&mut t, b"hello", file(objects, b"hello\n"));
    put(&mut t, b"link", symlink(b"hello"));
    put(
        &mut t,
        b"dev/null",
        Node::Leaf(meta(
            EntryKind::CharDevice {
                rdev: makedev(1, 3),
            },
            0o666,
        )),
    );
    let mut xl = meta(
        EntryKind::Symlink {
            target: b"x".to_vec(),
        },
        0o777,
    );
    xl.xattrs.insert(b"user.foo".to_vec(), b"bar".to_vec());
    xl.mtime_ns = Some(123_456_789);
    put(&mut t, b"xattrs/link", Node::Leaf(xl));
    let mut xd = dir();
    xd.meta
        .xattrs
        .insert(b"security.capability".to_vec(), vec![1, 0]);
    put(&mut t, b"xattrs/dir", Node::Dir(xd));
    // Two groups in one directory plus a copy elsewhere; the source ids are arbitrary.
    for (id, names) in [(901, [b"a", b"b"]), (17, [b"c", b"d"])] {
        let Node::Leaf(mut e) = file(objects, format!("linked {id}").as_bytes()) else {
            unreachable!()
        };
        e.hardlink = Some(id);
        for n in names {
            put(&mut t, &[&b"links/"[..], n].concat(), Node::Leaf(e.clone()));
        }
        put(
            &mut t,
            format!("other/{id}").as_bytes(),
            Node::Leaf(e.clone()),
        );
    }
    put(
        &mut t,
        b"big.bin",
        chunked(objects, &[b"first chunk ", b"second chunk ", b"third"]),
    );
    t
}

/// Root catalog with /r; nested /a (holding /a/b, which holds the rich tree) and /d.
fn tree(objects: &MemObjects) -> Dir {
    let mut t = dir();
    put(&mut t, b"r", Node::Dir(rich(objects)));
    put(&mut t, b"a/.cvmfscatalog", file(objects, b""));
    put(&mut t, b"a/f", file(objects, b"in a"));
    let mut b = rich(objects);
    b.meta.xattrs.insert(b"user.k".to_vec(), b"v".to_vec());
    put(&mut t, b"a/b", Node::Dir(b));
    put(&mut t, b"a/b/.cvmfscatalog", file(objects, b""));
    put(&mut t, b"a/b/deeper/i", chunked(objects, &[b"12", b"34"]));
    put(&mut t, b"d/.cvmfscatalog", file(objects, b""));
    put(&mut t, b"d/k", symlink(b"/elsewhere"));
    t
}

fn catalog_objects(objects: &MemObjects) -> usize {
    objects
        .map
        .lock()
        .unwrap()
        .keys()
        .filter(|(_, s)| *s == Suffix::Catalog)
        .count()
}

fn by_path(objects: &MemObjects, root: CatalogRef, path: &[u8]) -> CatalogRef {
    all_catalogs(objects, root)
        .into_iter()
        .find(|(p, _, _)| p == path)
        .unwrap_or_else(|| panic!("no catalog at {}", String::from_utf8_lossy(path)))
        .1
}

fn assert_unchanged(report: &CommitReport, root: CatalogRef) {
    assert_eq!(
        (report.root, report.catalogs_written, report.changed),
        (root, 0, false)
    );
    assert_eq!(report.catalogs_total, 4);
}

#[test]
fn identical_tree_again_writes_nothing() {
    let objects = MemObjects::default();
    let mut ns = Namespace::empty(1);
    graft(&mut ns, &objects, b"", tree(&objects));
    let first = commit_with(&mut ns, &objects, &opts(1));
    assert!(first.changed);
    assert_eq!(first.catalogs_written, 4);
    let stored = catalog_objects(&objects);

    // The whole tree again, into a reopened namespace (every catalog is compared).
    let mut ns = Namespace::open(first.root, &objects).unwrap();
    graft(&mut ns, &objects, b"", tree(&objects));
    assert!(ns.is_dirty());
    assert_unchanged(&commit_with(&mut ns, &objects, &opts(2)), first.root);
    assert_eq!(catalog_objects(&objects), stored, "a catalog was stored");

    // A subtree holding nested catalogs (/a with /a/b below it), again reopened.
    let mut ns = Namespace::open(first.root, &objects).unwrap();
    let Some(Node::Dir(a)) = tree(&objects).children.remove(&b"a"[..]) else {
        unreachable!()
    };
    graft(&mut ns, &objects, b"/a", a);
    assert_unchanged(&commit_with(&mut ns, &objects, &opts(3)), first.root);

    // The same namespace grafted and committed twice in one session.
    graft(&mut ns, &objects, b"", tree(&objects));
    assert_unchanged(&commit_with(&mut ns, &objects, &opts(4)), first.root);
    assert_eq!(catalog_objects(&objects), stored);
}

#[test]
fn one_deep_change_rewrites_only_its_chain() {
    let objects = MemObjects::default();
    let mut ns = Namespace::empty(1);
    graft(&mut ns, &objects, b"", tree(&objects));
    let first = commit_with(&mut ns, &objects, &opts(1));

    let mut t = tree(&objects);
    put(&mut t, b"a/b/links/a", file(&objects, b"no longer linked"));
    let mut ns = Namespace::open(first.root, &objects).unwrap();
    graft(&mut ns, &objects, b"", t);
    let second = commit_with(&mut ns, &objects, &opts(2));
    assert!(second.changed);
    assert_eq!(second.catalogs_written, 3, "root, /a and /a/b");
    assert_ne!(second.root, first.root);
    assert_eq!(
        by_path(&objects, second.root, b"/d"),
        by_path(&objects, first.root, b"/d")
    );
    for p in [&b"/a"[..], b"/a/b"] {
        let (old, new) = (
            by_path(&objects, first.root, p),
            by_path(&objects, second.root, p),
        );
        assert_ne!(old, new);
        // The grafted /a/b carried no catalog of its own: the previous one is found through
        // the previous versions of its parents.
        let db = objects.catalog(&new);
        assert_eq!(
            db.properties["previous_revision"],
            old.hash.to_hex().as_bytes()
        );
    }

    // An xattr of the nested catalog root is a change too.
    let mut t = tree(&objects);
    let Some(Node::Dir(a)) = t.children.get_mut(&b"a"[..]) else {
        unreachable!()
    };
    let Some(Node::Dir(b)) = a.children.get_mut(&b"b"[..]) else {
        unreachable!()
    };
    b.meta.xattrs.insert(b"user.k".to_vec(), b"w".to_vec());
    let mut ns = Namespace::open(second.root, &objects).unwrap();
    graft(&mut ns, &objects, b"", t);
    let third = commit_with(&mut ns, &objects, &opts(3));
    // /a/b's root row and /a's mountpoint row both carry the xattr.
    assert_eq!((third.changed, third.catalogs_written), (true, 3));
}

#[test]
fn generated_catalogs_come_out_the_same() {
    // Markers made by dirtab rules and by automatic splitting must not differ between two
    // commits of the same tree (they take the directory's mtime, not the commit time).
    let objects = MemObjects::default();
    let make = || {
        let mut t = dir();
        put(&mut t, b".cvmfsdirtab", file(&objects, b"/sw/*\n"));
        for a in 0..3 {
            for b in 0..4 {
                for c in 0..6 {
                    put(
                        &mut t,
                        format!("sw/v{a}/m{b}/f{c}").as_bytes(),
                        file(&objects, format!("{a}{b}{c}").as_bytes()),
                    );
                }
            }
        }
        t
    };
    let mut o = opts(1);
    o.max_entries = 20;
    o.apply_dirtab = true;
    let mut ns = Namespace::empty(1);
    graft(&mut ns, &objects, b"", make());
    let first = commit_with(&mut ns, &objects, &o);
    let cats = all_catalogs(&objects, first.root).len();
    assert!(cats > 4, "dirtab and autosplit made only {cats} catalogs");

    let mut ns = Namespace::open(first.root, &objects).unwrap();
    graft(&mut ns, &objects, b"", make());
    o.revision = 2;
    o.timestamp += 1000;
    let again = commit_with(&mut ns, &objects, &o);
    assert_eq!(
        (again.root, again.catalogs_written, again.changed),
        (first.root, 0, false)
    );
    // Sanity: the comparison does look at content.
    let mut t = make();
    put(&mut t, b"sw/v2/m3/f5", file(&objects, b"other"));
    let mut ns = Namespace::open(first.root, &objects).unwrap();
    graft(&mut ns, &objects, b"", t);
    let changed = commit_with(&mut ns, &objects, &o);
    assert!(changed.changed && changed.catalogs_written >= 2);
    assert_ne!(changed.root, first.root);
}

/// A root catalog whose root entry is not its first row (as builds 6caba09..4ab82cf wrote them;
/// the client then gives the root's inode to another entry) is reported by the verifier and
/// rewritten by the next commit, though its content is unchanged.
#[test]
fn a_root_catalog_with_its_root_not_first_is_rewritten() {
    let objects = MemObjects::default();
    let mut ns = Namespace::empty(1);
    graft(&mut ns, &objects, b"", tree(&objects));
    let first = commit_with(&mut ns, &objects, &opts(1));

    // The same catalog with its root row moved to the end (a new rowid).
    let z = objects.map.lock().unwrap()[&(first.root.hash, Suffix::Catalog)].clone();
    let raw = catalog_writer::zlib::decompress(&z, 1 << 30).unwrap();
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), &raw).unwrap();
    let conn = rusqlite::Connection::open(tmp.path()).unwrap();
    conn.execute_batch(
        "CREATE TEMP TABLE root AS SELECT * FROM catalog WHERE parent_1 = 0 AND parent_2 = 0;
         DELETE FROM catalog WHERE parent_1 = 0 AND parent_2 = 0;
         INSERT INTO catalog SELECT * FROM root;",
    )
    .unwrap();
    drop(conn);
    let moved = std::fs::read(tmp.path()).unwrap();
    let z = catalog_writer::zlib::compress_catalog(&moved);
    let hash = ContentHash::of(&z);
    objects.store(&hash, Suffix::Catalog, &z).unwrap();
    let misordered = CatalogRef {
        hash,
        size: moved.len() as u64,
    };
    let problems = catalog_writer::verify::verify(misordered, &objects).problems;
    assert!(
        problems
            .iter()
            .any(|p| p.message.contains("root entry is not the first row")),
        "{problems:?}"
    );

    let mut ns = Namespace::open(misordered, &objects).unwrap();
    graft(&mut ns, &objects, b"", tree(&objects));
    let again = commit_with(&mut ns, &objects, &opts(2));
    assert!(again.changed);
    assert_eq!(again.catalogs_written, 1, "only the root catalog");
    assert_ne!(again.root, misordered);
}
