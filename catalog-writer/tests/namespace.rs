mod common;

use catalog_writer::entry::{makedev, Entry, EntryKind, FileData};
use catalog_writer::hash::{Suffix, EMPTY_OBJECT};
use catalog_writer::namespace::{CatalogRef, Namespace};
use catalog_writer::pathhash::PathHash;
use catalog_writer::sql::{flags, Row, Statistics};
use catalog_writer::tree::{Dir, Node};
use catalog_writer::verify::list_all;
use common::*;

fn row<'a>(db: &'a catalog_writer::sql::CatalogDb, path: &[u8]) -> &'a Row {
    let h = PathHash::of(path);
    db.rows
        .iter()
        .find(|r| r.md5 == h)
        .unwrap_or_else(|| panic!("no row {}", String::from_utf8_lossy(path)))
}

/// Full path of a row, by following parent hashes (test catalogs are small).
fn path_of(db: &catalog_writer::sql::CatalogDb, r: &Row) -> Vec<u8> {
    if r.parent == PathHash::ZERO {
        return Vec::new();
    }
    let parent = db.rows.iter().find(|p| p.md5 == r.parent).unwrap();
    let mut p = path_of(db, parent);
    p.push(b'/');
    p.extend_from_slice(&r.name);
    p
}

fn stats(db: &catalog_writer::sql::CatalogDb) -> Statistics {
    Statistics::from_table(&db.statistics).unwrap()
}

fn commit(
    ns: &mut Namespace,
    objects: &MemObjects,
    revision: u64,
) -> catalog_writer::namespace::CommitReport {
    let report = ns.commit(&opts(revision), objects).unwrap();
    assert!(!ns.is_dirty());
    assert_verified(objects, report.root);
    report
}

fn graft(ns: &mut Namespace, objects: &MemObjects, path: &[u8], tree: Dir) {
    ns.replace(
        path,
        Node::Dir(tree),
        &Entry::directory(0o755, 0, 0, 1),
        objects,
    )
    .unwrap();
}

#[test]
fn empty_namespace() {
    let objects = MemObjects::default();
    let mut ns = Namespace::empty(1234);
    assert!(ns.is_dirty());
    let report = commit(&mut ns, &objects, 1);
    assert_eq!((report.catalogs_written, report.catalogs_total), (1, 1));
    let db = objects.catalog(&report.root);
    assert_eq!(db.rows.len(), 1);
    let root = &db.rows[0];
    assert_eq!(root.md5, PathHash(338333539836370388, 9098107892288553193));
    assert_eq!(root.parent, PathHash::ZERO);
    assert_eq!(
        (root.hardlinks, root.flags, root.mode, root.mtime),
        (2, 1, 0o40755, 1234)
    );
    assert_eq!(
        (root.name.as_slice(), root.symlink.as_slice()),
        (&b""[..], &b""[..])
    );
    assert_eq!((root.mtimens, &root.xattr, root.hash), (None, &None, None));
    let s = stats(&db);
    assert_eq!(s.self_.dir, 1);
    assert_eq!(
        s.self_.values().iter().sum::<i64>() + s.subtree.values().iter().sum::<i64>(),
        1
    );
    assert_eq!(db.statistics.len(), 24);
    assert_eq!(db.properties["schema"], b"2.5");
    assert_eq!(db.properties["schema_revision"], b"7");
    assert_eq!(db.properties["revision"], b"1");
    assert_eq!(db.properties["TTL"], b"240");
    assert!(!db.properties.contains_key("root_prefix"));
    assert!(db.has_mtimens);
    assert!(objects
        .map
        .lock()
        .unwrap()
        .contains_key(&(EMPTY_OBJECT, Suffix::None)));
    // Nothing changed: a second commit writes nothing and keeps the root.
    let again = ns.commit(&opts(2), &objects).unwrap();
    assert_eq!((again.root, again.catalogs_written), (report.root, 0));
}

fn rich_tree(objects: &MemObjects) -> Dir {
    let mut t = dir();
    put(&mut t, b"hello", file(objects, b"hello\n"));
    put(&mut t, b"empty", file(objects, b""));
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
    put(
        &mut t,
        b"dev/sda1",
        Node::Leaf(meta(
            EntryKind::BlockDevice {
                rdev: makedev(8, 1),
            },
            0o660,
        )),
    );
    put(
        &mut t,
        b"dev/fifo",
        Node::Leaf(meta(EntryKind::Fifo, 0o644)),
    );
    put(
        &mut t,
        b"dev/sock",
        Node::Leaf(meta(EntryKind::Socket, 0o755)),
    );
    let mut xa = meta(
        EntryKind::Symlink {
            target: b"x".to_vec(),
        },
        0o777,
    );
    xa.xattrs.insert(b"user.foo".to_vec(), b"bar".to_vec());
    xa.mtime_ns = Some(123_456_789);
    put(&mut t, b"xattrs/link", Node::Leaf(xa));
    let mut xd = dir();
    xd.meta
        .xattrs
        .insert(b"security.capability".to_vec(), vec![1, 0]);
    put(&mut t, b"xattrs/dir", Node::Dir(xd));
    // One inode three times: two names in one directory, one elsewhere.
    let Node::Leaf(mut linked) = file(objects, b"linked content") else {
        unreachable!()
    };
    linked.hardlink = Some(77);
    put(&mut t, b"links/a", Node::Leaf(linked.clone()));
    put(&mut t, b"links/b", Node::Leaf(linked.clone()));
    put(&mut t, b"other/c", Node::Leaf(linked));
    put(
        &mut t,
        b"big.bin",
        chunked(objects, &[b"first chunk ", b"second chunk ", b"third"]),
    );
    put(&mut t, b"bytes/\xff\xfe\x80name", file(objects, b"latin"));
    put(&mut t, &[b'n'; 255], file(objects, b"long"));
    let deep: Vec<u8> = (0..60)
        .flat_map(|i| format!("d{i}/").into_bytes())
        .chain(b"leaf".iter().copied())
        .collect();
    put(&mut t, &deep, file(objects, b"deep"));
    t
}

#[test]
fn rich_tree_round_trip() {
    let objects = MemObjects::default();
    let tree = rich_tree(&objects);
    let mut ns = Namespace::empty(1);
    graft(&mut ns, &objects, b"", tree.clone());
    let report = commit(&mut ns, &objects, 1);
    let db = objects.catalog(&report.root);
    let mut expected = vec![(Vec::new(), tree.meta.clone())];
    flatten(&tree, b"", &mut expected);
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    let mut got = list_all(report.root, &objects).unwrap();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let strip = |v: Vec<(Vec<u8>, Entry)>| {
        v.into_iter()
            .map(|(p, e)| (p, without_link(e)))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(got.clone()), strip(expected));

    // Hardlinks: a group in /links, a plain copy in /other.
    let (a, b, c) = (
        row(&db, b"/links/a"),
        row(&db, b"/links/b"),
        row(&db, b"/other/c"),
    );
    assert_eq!(a.hardlinks, b.hardlinks);
    assert_eq!((a.group() != 0, a.linkcount()), (true, 2));
    assert_eq!(c.hardlinks, 1);
    let ga = got
        .iter()
        .find(|(p, _)| p == b"/links/a")
        .unwrap()
        .1
        .hardlink;
    let gb = got
        .iter()
        .find(|(p, _)| p == b"/links/b")
        .unwrap()
        .1
        .hardlink;
    assert!(ga.is_some() && ga == gb);
    // Rows of special kinds.
    assert_eq!(
        (row(&db, b"/dev/null").size, row(&db, b"/dev/null").flags),
        (259, 20)
    );
    assert_eq!(row(&db, b"/dev/sda1").size, 2049);
    assert_eq!(row(&db, b"/link").flags, 12);
    assert_eq!(row(&db, b"/link").size, 5);
    assert_eq!(row(&db, b"/hello").symlink, b"");
    let big = row(&db, b"/big.bin");
    assert_eq!(
        (big.flags, big.hash, big.size),
        (flags::FILE | flags::CHUNKED, None, 30)
    );
    assert_eq!(db.chunks.len(), 3);
    assert_eq!(row(&db, b"/xattrs/link").mtimens, Some(123_456_789));
    assert!(row(&db, b"/xattrs/dir").xattr.is_some());
    assert_eq!(row(&db, b"/hello").xattr, None);
    assert_eq!(
        row(&db, b"/bytes/\xff\xfe\x80name").name,
        b"\xff\xfe\x80name"
    );
    assert_eq!(row(&db, b"").hardlinks, 2 + 6);
    let s = stats(&db);
    assert_eq!(
        (s.self_.chunked, s.self_.chunks, s.self_.chunked_size),
        (1, 3, 30)
    );
    assert_eq!((s.self_.special, s.self_.symlink, s.self_.xattr), (4, 2, 2));

    // Re-open: entries and listings come back, an unchanged commit writes nothing.
    let mut ns = Namespace::open(report.root, &objects).unwrap();
    let e = ns.entry(b"/big.bin", &objects).unwrap().unwrap();
    assert!(
        matches!(e.kind, EntryKind::File { size: 30, data: FileData::Chunked(ref c) } if c.len() == 3)
    );
    let names: Vec<Vec<u8>> = ns
        .list(b"/dev", &objects)
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        names,
        vec![
            b"fifo".to_vec(),
            b"null".to_vec(),
            b"sda1".to_vec(),
            b"sock".to_vec()
        ]
    );
    assert!(ns.list(b"/hello", &objects).unwrap().is_none());
    assert!(ns.entry(b"/nope/x", &objects).unwrap().is_none());
    assert!(!ns.is_dirty());
    // Touch one file in the same catalog: the rewritten catalog keeps the hardlink group.
    ns.replace(
        b"/hello",
        file(&objects, b"bye\n"),
        &Entry::directory(0o755, 0, 0, 1),
        &objects,
    )
    .unwrap();
    let r2 = commit(&mut ns, &objects, 2);
    let db2 = objects.catalog(&r2.root);
    assert_eq!(row(&db2, b"/links/a").hardlinks, a.hardlinks);
    assert_eq!(row(&db2, b"/other/c").hardlinks, 1);
    assert_eq!(
        db2.properties["previous_revision"],
        report.root.hash.to_hex().as_bytes()
    );
    assert_eq!(db2.rows.len(), db.rows.len());
    // Every other row is reproduced exactly from the loaded entries.
    for r in &db.rows {
        if r.name != b"hello" {
            assert_eq!(row(&db2, &path_of(&db, r)), r);
        }
    }
    assert_eq!(db2.chunks, db.chunks);
}

#[test]
fn bad_names_and_limits_are_refused() {
    let objects = MemObjects::default();
    let mut ns = Namespace::empty(1);
    let pm = Entry::directory(0o755, 0, 0, 1);
    assert!(ns
        .replace(b"relative", file(&objects, b"x"), &pm, &objects)
        .is_err());
    assert!(ns
        .replace(b"/a//b", file(&objects, b"x"), &pm, &objects)
        .is_err());
    assert!(ns
        .replace(b"/.cvmfscatalog", file(&objects, b""), &pm, &objects)
        .is_err());
    assert!(ns.remove(b"", &objects).is_err());
    let mut t = dir();
    put(&mut t, b".cvmfscatalog", file(&objects, b""));
    assert!(ns.replace(b"", Node::Dir(t), &pm, &objects).is_err());
    let Node::Leaf(mut e) = file(&objects, b"x") else {
        unreachable!()
    };
    e.xattrs.insert(b"user.big".to_vec(), vec![0; 300]);
    ns.replace(b"/dir/f", Node::Leaf(e), &pm, &objects).unwrap();
    let err = ns.commit(&opts(1), &objects).unwrap_err().to_string();
    assert!(err.contains("/dir/f"), "{err}");
    // No tree below a directory named like a marker, none in CernVM-FS's own /.cvmfs.
    let mut ns = Namespace::empty(1);
    for (path, why) in [
        (
            &b"/a/.cvmfscatalog/x"[..],
            ".cvmfscatalog cannot be a directory",
        ),
        (
            b"/b/.cvmfsautocatalog/x",
            ".cvmfsautocatalog cannot be a directory",
        ),
        (b"/.cvmfs/snapshots/evil", "/.cvmfs is reserved"),
    ] {
        let err = ns
            .replace(path, file(&objects, b"x"), &pm, &objects)
            .unwrap_err()
            .to_string();
        assert!(err.contains(why), "{err}");
    }
    let mut t = dir();
    put(&mut t, b".cvmfs/x", file(&objects, b""));
    let err = ns.replace(b"", Node::Dir(t), &pm, &objects).unwrap_err();
    assert!(err.to_string().contains("/.cvmfs is reserved"), "{err}");
    // A file in the way of a directory.
    let mut ns = Namespace::empty(1);
    ns.replace(b"/f", file(&objects, b"x"), &pm, &objects)
        .unwrap();
    assert!(ns
        .replace(b"/f/g", file(&objects, b"y"), &pm, &objects)
        .is_err());
}

/// A tree placed so deep that the whole reaches past `MAX_PATH_DEPTH` levels is refused, by
/// the depth of where it goes plus its own: stacking legal trees on each other must not build
/// a namespace the recursive walks cannot get through.
#[test]
fn trees_placed_deeper_than_the_walks_allow_are_refused() {
    use catalog_writer::namespace::MAX_PATH_DEPTH;
    let objects = MemObjects::default();
    let mut ns = Namespace::empty(1);
    let pm = Entry::directory(0o755, 0, 0, 1);
    let deep = |levels: usize| "/d".repeat(levels).into_bytes();
    let mut tree = dir();
    let ten_levels = format!("{}f", "d/".repeat(9));
    put(&mut tree, ten_levels.as_bytes(), file(&objects, b"x"));
    // The tree is 10 levels deep (9 directories and a file).
    let at = deep(MAX_PATH_DEPTH - 10);
    ns.replace(&at, Node::Dir(tree.clone()), &pm, &objects)
        .unwrap();
    let err = ns
        .replace(&deep(MAX_PATH_DEPTH - 9), Node::Dir(tree), &pm, &objects)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "the tree placed here reaches {} directory levels (at most {MAX_PATH_DEPTH})",
            MAX_PATH_DEPTH + 1
        )),
        "{err}"
    );
    assert!(ns
        .replace(
            &deep(MAX_PATH_DEPTH + 1),
            file(&objects, b"y"),
            &pm,
            &objects
        )
        .is_err());
}

/// /a and /a/b are nested catalogs (markers), /c is plain.
fn nested_tree(objects: &MemObjects) -> Dir {
    let mut t = dir();
    put(&mut t, b"a/.cvmfscatalog", file(objects, b""));
    put(&mut t, b"a/f", file(objects, b"in a"));
    put(&mut t, b"a/sub/g", file(objects, b"in a/sub"));
    put(&mut t, b"a/b/.cvmfscatalog", file(objects, b""));
    put(&mut t, b"a/b/h", file(objects, b"in b"));
    put(&mut t, b"a/b/deeper/i", chunked(objects, &[b"12", b"34"]));
    put(&mut t, b"c/j", file(objects, b"in c"));
    put(&mut t, b"d/.cvmfscatalog", file(objects, b""));
    put(&mut t, b"d/k", symlink(b"/elsewhere"));
    t
}

#[test]
fn nested_catalogs_from_markers() {
    let objects = MemObjects::default();
    let mut ns = Namespace::empty(1);
    graft(&mut ns, &objects, b"", nested_tree(&objects));
    let report = commit(&mut ns, &objects, 5);
    assert_eq!((report.catalogs_written, report.catalogs_total), (4, 4));
    let cats = all_catalogs(&objects, report.root);
    let root = &cats[0].2;
    assert_eq!(root.nested.len(), 2);
    let mount = row(root, b"/a");
    assert_eq!(mount.flags, 3);
    let (_, aref, adb) = cats.iter().find(|(p, _, _)| p == b"/a").unwrap();
    assert_eq!(adb.properties["root_prefix"], b"/a");
    assert!(!adb.properties.contains_key("TTL"));
    let nroot = row(adb, b"/a");
    assert_eq!(nroot.flags, 33);
    assert_eq!(nroot.parent, PathHash::of(b""));
    assert_eq!(
        (nroot.hardlinks, nroot.name.clone()),
        (mount.hardlinks, mount.name.clone())
    );
    assert_eq!(mount.hardlinks, 2 + 2);
    let nrow = root.nested.iter().find(|n| n.path == b"/a").unwrap();
    assert_eq!(
        (nrow.hash.clone(), nrow.size),
        (aref.hash.to_hex(), aref.size)
    );
    assert!(row(adb, b"/a/.cvmfscatalog").hash == Some(EMPTY_OBJECT));
    // Counters: root subtree = totals of /a (incl. /a/b) and /d.
    let total_regular: i64 = cats.iter().map(|(_, _, db)| stats(db).self_.regular).sum();
    assert_eq!(
        stats(root).self_.regular + stats(root).subtree.regular,
        total_regular
    );
    assert_eq!(stats(root).subtree.nested, 1);
    assert_eq!(stats(root).self_.nested, 2);
    let all = list_all(report.root, &objects).unwrap();
    assert_eq!(
        all.len(),
        1 + {
            let mut v = Vec::new();
            flatten(&nested_tree(&objects), b"", &mut v);
            v.len()
        }
    );
}

/// `revision` of each catalog by path, and whether its `previous_revision` is the null hash.
fn revisions(objects: &MemObjects, root: CatalogRef) -> Vec<(String, String, Option<bool>)> {
    let mut out: Vec<_> = all_catalogs(objects, root)
        .into_iter()
        .map(|(p, _, db)| {
            let text = |k: &str| {
                db.properties
                    .get(k)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            };
            let null = text("previous_revision").map(|h| h == "0".repeat(40));
            (
                String::from_utf8_lossy(&p).into_owned(),
                text("revision").unwrap(),
                null,
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn nested_catalogs_count_their_own_versions_as_cvmfs_does() {
    let objects = MemObjects::default();
    let mut ns = Namespace::empty(1);
    graft(&mut ns, &objects, b"", nested_tree(&objects));
    let first = commit(&mut ns, &objects, 7);
    let row = |p: &str, r: &str, null: Option<bool>| (p.to_owned(), r.to_owned(), null);
    // The root carries the repository's revision; a new nested catalog says 1 and the null
    // hash, as in the CVMFS 2.12 reference repository.
    assert_eq!(
        revisions(&objects, first.root),
        [
            row("", "7", None),
            row("/a", "1", Some(true)),
            row("/a/b", "1", Some(true)),
            row("/d", "1", Some(true)),
        ]
    );
    let mut ns = Namespace::open(first.root, &objects).unwrap();
    let pm = Entry::directory(0o755, 0, 0, 1);
    ns.replace(b"/a/b/new", file(&objects, b"new"), &pm, &objects)
        .unwrap();
    let second = ns.commit(&opts(12), &objects).unwrap();
    // Rewritten catalogs count one more and name their previous version; /d is untouched.
    assert_eq!(
        revisions(&objects, second.root),
        [
            row("", "12", Some(false)),
            row("/a", "2", Some(false)),
            row("/a/b", "2", Some(false)),
            row("/d", "1", Some(true)),
        ]
    );
}

#[test]
fn reopen_and_modify_rewrites_only_the_chain() {
    let objects = MemObjects::default();
    let mut ns = Namespace::empty(1);
    graft(&mut ns, &objects, b"", nested_tree(&objects));
    let first = commit(&mut ns, &objects, 1);
    let before = all_catalogs(&objects, first.root);
    let hash_of = |cats: &[(Vec<u8>, CatalogRef, catalog_writer::sql::CatalogDb)], p: &[u8]| {
        cats.iter().find(|(q, _, _)| q == p).unwrap().1
    };
    objects.loads.lock().unwrap().clear();

    let mut ns = Namespace::open(first.root, &objects).unwrap();
    let pm = Entry::directory(0o755, 0, 0, 1);
    ns.replace(b"/a/b/new", file(&objects, b"new"), &pm, &objects)
        .unwrap();
    assert!(ns.is_dirty());
    let second = ns.commit(&opts(2), &objects).unwrap();
    // /d was never loaded, neither for the namespace nor for its counters.
    let loaded = objects.catalog_loads();
    assert!(
        !loaded.contains(&hash_of(&before, b"/d").hash),
        "untouched /d was loaded"
    );
    assert_verified(&objects, second.root);
    assert_eq!(second.catalogs_written, 3, "root, /a and /a/b");
    assert_eq!(second.catalogs_total, 4);
    let after = all_catalogs(&objects, second.root);
    assert_eq!(
        hash_of(&after, b"/d"),
        hash_of(&before, b"/d"),
        "untouched catalog keeps its hash"
    );
    assert_ne!(hash_of(&after, b"/a/b"), hash_of(&before, b"/a/b"));
    let ab = &after.iter().find(|(p, _, _)| p == b"/a/b").unwrap().2;
    assert_eq!(
        ab.properties["previous_revision"],
        hash_of(&before, b"/a/b").hash.to_hex().as_bytes()
    );
    assert_eq!(ab.properties["revision"], b"2");

    // A new sub-directory in /a/b changes the linkcount of both /a/b rows.
    let mut ns = Namespace::open(second.root, &objects).unwrap();
    graft(&mut ns, &objects, b"/a/b/newdir", dir());
    let third = commit(&mut ns, &objects, 3);
    let cats = all_catalogs(&objects, third.root);
    let a = &cats.iter().find(|(p, _, _)| p == b"/a").unwrap().2;
    assert_eq!(row(a, b"/a/b").hardlinks, 2 + 2);

    // Remove an unloaded nested catalog and a file elsewhere.
    let mut ns = Namespace::open(third.root, &objects).unwrap();
    assert!(ns.remove(b"/d", &objects).unwrap());
    assert!(!ns.remove(b"/d", &objects).unwrap());
    assert!(!ns.remove(b"/no/such", &objects).unwrap());
    assert!(ns.remove(b"/a/b/h", &objects).unwrap());
    let fourth = commit(&mut ns, &objects, 4);
    assert_eq!(fourth.catalogs_total, 3);
    let paths: Vec<Vec<u8>> = list_all(fourth.root, &objects)
        .unwrap()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert!(!paths.iter().any(|p| p.starts_with(b"/d") || p == b"/a/b/h"));
    assert!(paths.contains(&b"/a/b/new".to_vec()));

    // Removing a marker folds the catalog into its parent.
    let mut ns = Namespace::open(fourth.root, &objects).unwrap();
    assert!(ns.remove(b"/a/b/.cvmfscatalog", &objects).unwrap());
    let fifth = commit(&mut ns, &objects, 5);
    assert_eq!(fifth.catalogs_total, 2);
    // Replacing a subtree that holds an unloaded catalog.
    let mut ns = Namespace::open(fifth.root, &objects).unwrap();
    let mut t = dir();
    put(&mut t, b"x/.cvmfscatalog", file(&objects, b""));
    put(&mut t, b"x/y", file(&objects, b"y"));
    graft(&mut ns, &objects, b"/a", t);
    let sixth = commit(&mut ns, &objects, 6);
    // /a itself has no marker any more: root and /a/x remain.
    let mounts: Vec<Vec<u8>> = all_catalogs(&objects, sixth.root)
        .into_iter()
        .map(|(p, _, _)| p)
        .collect();
    assert_eq!(mounts, vec![Vec::new(), b"/a/x".to_vec()]);
    assert_eq!(sixth.catalogs_total, 2);
}

#[test]
fn delta_counters_with_untouched_siblings() {
    // Many untouched nested catalogs next to a changed one: counters stay exact without
    // loading the untouched ones.
    let objects = MemObjects::default();
    let mut t = dir();
    for i in 0..6 {
        put(
            &mut t,
            format!("n{i}/.cvmfscatalog").as_bytes(),
            file(&objects, b""),
        );
        for j in 0..=i {
            put(
                &mut t,
                format!("n{i}/f{j}").as_bytes(),
                file(&objects, format!("{i}{j}").as_bytes()),
            );
        }
    }
    let mut ns = Namespace::empty(1);
    graft(&mut ns, &objects, b"", t);
    let first = commit(&mut ns, &objects, 1);
    objects.loads.lock().unwrap().clear();
    let mut ns = Namespace::open(first.root, &objects).unwrap();
    ns.replace(
        b"/n2/extra",
        file(&objects, b"more"),
        &Entry::directory(0o755, 0, 0, 1),
        &objects,
    )
    .unwrap();
    assert!(ns.remove(b"/n4", &objects).unwrap());
    let report = ns.commit(&opts(2), &objects).unwrap();
    // root + n2 (+ n4's counters, needed because it went away): 3 loads at most.
    assert!(
        objects.catalog_loads().len() <= 3,
        "{:?}",
        objects.catalog_loads()
    );
    assert_eq!(report.catalogs_written, 2);
    assert_verified(&objects, report.root);
}

#[test]
fn dirtab_rules() {
    let objects = MemObjects::default();
    let mut t = dir();
    put(
        &mut t,
        b".cvmfsdirtab",
        file(
            &objects,
            b"# releases\n/sw/*\n! /sw/skip\n! *.git\n/lib/v?\n",
        ),
    );
    for d in [
        "sw/one",
        "sw/two",
        "sw/skip",
        "sw/repo.git",
        "lib/v1",
        "lib/v10",
    ] {
        put(
            &mut t,
            format!("{d}/file").as_bytes(),
            file(&objects, d.as_bytes()),
        );
    }
    put(&mut t, b"sw/plainfile", file(&objects, b"p"));
    let mut ns = Namespace::empty(1);
    graft(&mut ns, &objects, b"", t);
    let mut o = opts(1);
    o.apply_dirtab = true;
    let report = ns.commit(&o, &objects).unwrap();
    assert_verified(&objects, report.root);
    let cats = all_catalogs(&objects, report.root);
    let mut mounts: Vec<Vec<u8>> = cats
        .iter()
        .map(|(p, _, _)| p.clone())
        .filter(|p| !p.is_empty())
        .collect();
    mounts.sort();
    assert_eq!(
        mounts,
        vec![
            b"/lib/v1".to_vec(),
            b"/sw/one".to_vec(),
            b"/sw/two".to_vec()
        ]
    );
    let one = &cats.iter().find(|(p, _, _)| p == b"/sw/one").unwrap().2;
    let marker = row(one, b"/sw/one/.cvmfscatalog");
    assert_eq!(
        (marker.mode, marker.size, marker.hash, marker.uid),
        (0o100664, 0, Some(EMPTY_OBJECT), 1000)
    );
    // Applying again changes nothing.
    let mut ns = Namespace::open(report.root, &objects).unwrap();
    let again = ns.commit(&o, &objects).unwrap();
    assert_eq!((again.root, again.catalogs_written), (report.root, 0));
}

#[test]
fn autosplit_bounds_catalog_size() {
    let objects = MemObjects::default();
    let mut t = dir();
    for a in 0..4 {
        for b in 0..5 {
            for c in 0..8 {
                put(
                    &mut t,
                    format!("top{a}/mid{b}/f{c}").as_bytes(),
                    file(&objects, format!("{a}{b}{c}").as_bytes()),
                );
            }
        }
    }
    put(&mut t, b"flat", file(&objects, b"flat"));
    let mut ns = Namespace::empty(1);
    graft(&mut ns, &objects, b"", t.clone());
    let mut o = opts(1);
    o.max_entries = 30;
    let report = ns.commit(&o, &objects).unwrap();
    assert_verified(&objects, report.root);
    let cats = all_catalogs(&objects, report.root);
    assert!(cats.len() > 1);
    for (p, _, db) in &cats {
        assert!(
            db.rows.len() <= 30,
            "catalog {} has {} rows",
            String::from_utf8_lossy(p),
            db.rows.len()
        );
        if !p.is_empty() {
            assert!(db.rows.iter().any(|r| r.name == b".cvmfsautocatalog"));
        }
    }
    let all = list_all(report.root, &objects).unwrap();
    let files = all
        .iter()
        .filter(|(p, _)| p.ends_with(b"/f0") || p.ends_with(b"/flat"))
        .count();
    assert_eq!(files, 4 * 5 + 1);
}

#[test]
fn chained_nested_root_with_xattrs() {
    let objects = MemObjects::default();
    let mut t = dir();
    let mut n = dir();
    n.meta.xattrs.insert(b"user.k".to_vec(), b"v".to_vec());
    n.meta.mtime_ns = Some(5);
    put(&mut t, b"n", Node::Dir(n));
    put(&mut t, b"n/.cvmfscatalog", file(&objects, b""));
    put(&mut t, b"n/sub/x", file(&objects, b"x"));
    let mut ns = Namespace::empty(1);
    graft(&mut ns, &objects, b"", t);
    let report = commit(&mut ns, &objects, 1);
    let cats = all_catalogs(&objects, report.root);
    let n = &cats.iter().find(|(p, _, _)| p == b"/n").unwrap().2;
    assert_eq!(row(n, b"/n").xattr, row(&cats[0].2, b"/n").xattr);
    assert_eq!(row(n, b"/n").mtimens, Some(5));
}

#[test]
fn verify_reports_broken_catalogs() {
    let objects = MemObjects::default();
    let mut ns = Namespace::empty(1);
    graft(&mut ns, &objects, b"", nested_tree(&objects));
    let report = commit(&mut ns, &objects, 1);
    let mut db = objects.catalog(&report.root);
    // Break things: a counter, a symlink size, a dangling row, a mountpoint without marker row
    // is in the child, so drop the marker from /a instead via its own catalog below.
    *db.statistics.get_mut("subtree_symlink").unwrap() += 1;
    let mut dangling = row(&db, b"/c/j").clone();
    dangling.md5 = PathHash::of(b"/nowhere/x");
    dangling.parent = PathHash::of(b"/nowhere");
    db.rows.push(dangling);
    let idx = db
        .rows
        .iter()
        .position(|r| r.md5 == PathHash::of(b"/c"))
        .unwrap();
    db.rows[idx].hardlinks = 7;
    let broken = objects.store_catalog(&db);
    let v = catalog_writer::verify::verify(broken, &objects);
    let text: Vec<String> = v.problems.iter().map(|p| p.to_string()).collect();
    let has = |needle: &str| text.iter().any(|t| t.contains(needle));
    assert!(has("subtree_symlink"), "{text:?}");
    assert!(has("dangling"), "{text:?}");
    assert!(has("linkcount 7"), "{text:?}");
    assert!(text.iter().all(|t| t.contains(&broken.hash.to_hex())));
    // Wrong size for the root: unreadable.
    let v = catalog_writer::verify::verify(
        CatalogRef {
            size: broken.size + 1,
            ..broken
        },
        &objects,
    );
    assert_eq!(v.problems.len(), 1);
}

#[test]
fn verify_stops_at_catalogs_that_are_not_their_name_or_are_mounted_twice() {
    use catalog_writer::hash::ContentHash;
    let objects = MemObjects::default();
    let mut ns = Namespace::empty(1);
    graft(&mut ns, &objects, b"", nested_tree(&objects));
    let report = commit(&mut ns, &objects, 1);
    // The root's nested catalog /d mounted a second time at /c: walked once per path, a
    // tree of such catalogs would be checked exponentially often.
    let mut db = objects.catalog(&report.root);
    let d = db.nested.iter().find(|n| n.path == b"/d").unwrap().clone();
    db.nested.push(catalog_writer::sql::NestedRow {
        path: b"/c".to_vec(),
        ..d
    });
    let twice = objects.store_catalog(&db);
    let v = catalog_writer::verify::verify(twice, &objects);
    let text: Vec<String> = v.problems.iter().map(|p| p.to_string()).collect();
    assert!(
        text.iter().any(|t| t.contains("more than one mount point")),
        "{text:?}"
    );
    // Bytes stored under another catalog's name (a loop needs that: A nesting B nesting A)
    // are refused before anything in them is followed.
    let forged = ContentHash([0x5a; 20]);
    let mut map = objects.map.lock().unwrap();
    let z = map[&(report.root.hash, Suffix::Catalog)].clone();
    map.insert((forged, Suffix::Catalog), z);
    drop(map);
    let v = catalog_writer::verify::verify(
        CatalogRef {
            hash: forged,
            size: 0,
        },
        &objects,
    );
    let text: Vec<String> = v.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(v.catalogs, 0, "{text:?}");
    assert!(
        text.iter().any(|t| t.contains("do not hash to its name")),
        "{text:?}"
    );
}

#[test]
fn hundred_thousand_entries_commit_and_reopen() {
    let objects = MemObjects::default();
    let Node::Leaf(f) = file(&objects, b"same") else {
        unreachable!()
    };
    let mut t = dir();
    for d in 0..100 {
        let mut sub = dir();
        for i in 0..1000 {
            sub.children
                .insert(format!("file-{i}").into_bytes(), Node::Leaf(f.clone()));
        }
        t.children
            .insert(format!("dir-{d}").into_bytes(), Node::Dir(sub));
    }
    let mut ns = Namespace::empty(1);
    graft(&mut ns, &objects, b"", t);
    let start = std::time::Instant::now();
    let report = ns.commit(&opts(1), &objects).unwrap();
    let took = start.elapsed();
    eprintln!("commit of 100 100 entries: {took:?}");
    let db = objects.catalog(&report.root);
    assert_eq!(db.rows.len(), 1 + 100 + 100_000);
    let start = std::time::Instant::now();
    let mut ns = Namespace::open(report.root, &objects).unwrap();
    eprintln!("open: {:?}", start.elapsed());
    assert_eq!(ns.list(b"/dir-7", &objects).unwrap().unwrap().len(), 1000);
}

#[test]
fn non_utf8_mountpoint_and_odd_hardlinks() {
    let objects = MemObjects::default();
    let mut t = dir();
    put(&mut t, b"\xffcat/.cvmfscatalog", file(&objects, b""));
    put(&mut t, b"\xffcat/x", file(&objects, b"x"));
    let Node::Leaf(mut e) = file(&objects, b"same inode") else {
        unreachable!()
    };
    e.hardlink = Some(5);
    put(&mut t, b"h/one", Node::Leaf(e.clone()));
    e.perm = 0o600; // a source that disagrees with itself: not a valid group
    put(&mut t, b"h/two", Node::Leaf(e.clone()));
    put(&mut t, b"h/three", Node::Leaf(e));
    let mut ns = Namespace::empty(1);
    graft(&mut ns, &objects, b"", t);
    let report = commit(&mut ns, &objects, 1);
    let cats = all_catalogs(&objects, report.root);
    let (_, _, nested) = cats.iter().find(|(p, _, _)| p == b"/\xffcat").unwrap();
    assert_eq!(nested.properties["root_prefix"], b"/\xffcat");
    let root = &cats[0].2;
    assert_eq!(row(root, b"/h/one").hardlinks, 1);
    assert_eq!(
        row(root, b"/h/two").hardlinks,
        row(root, b"/h/three").hardlinks
    );
    assert_eq!(row(root, b"/h/two").linkcount(), 2);
    // Reopen and descend into the non-UTF-8 catalog.
    let mut ns = Namespace::open(report.root, &objects).unwrap();
    assert!(ns.entry(b"/\xffcat/x", &objects).unwrap().is_some());
}

#[test]
fn verify_reports_missing_marker() {
    let objects = MemObjects::default();
    let mut ns = Namespace::empty(1);
    graft(&mut ns, &objects, b"", nested_tree(&objects));
    let report = commit(&mut ns, &objects, 1);
    let cats = all_catalogs(&objects, report.root);
    // Rewrite /d without its marker and point the root at it.
    let (_, _, d) = cats.iter().find(|(p, _, _)| p == b"/d").unwrap();
    let mut d = d.clone();
    d.rows.retain(|r| r.name != b".cvmfscatalog");
    let d = objects.store_catalog(&d);
    let mut root = cats[0].2.clone();
    let n = root.nested.iter_mut().find(|n| n.path == b"/d").unwrap();
    n.hash = d.hash.to_hex();
    n.size = d.size;
    let broken = objects.store_catalog(&root);
    let v = catalog_writer::verify::verify(broken, &objects);
    let text: Vec<String> = v.problems.iter().map(|p| p.to_string()).collect();
    assert!(
        text.iter()
            .any(|t| t.contains("without marker") && t.contains(&d.hash.to_hex())),
        "{text:?}"
    );
    // The namespace repairs it on the next commit: /d is folded into the root catalog.
    let mut ns = Namespace::open(broken, &objects).unwrap();
    assert!(ns.entry(b"/d/k", &objects).unwrap().is_some());
    assert!(ns.is_dirty());
    let fixed = commit(&mut ns, &objects, 2);
    assert_eq!(fixed.catalogs_total, 3);
}

/// Catalogs of subtrees written early by `commit_subtree` are exactly those `commit` would
/// write: the same root catalog results, and `commit` does not write them again.
#[test]
fn subtrees_committed_early_give_the_same_repository() {
    let objects = MemObjects::default();
    let mut big = dir();
    put(&mut big, b".cvmfscatalog", file(&objects, b""));
    put(&mut big, b"d1/.cvmfscatalog", file(&objects, b""));
    for a in 0..3 {
        for b in 0..12 {
            let p = format!("d{a}/f{b}");
            put(&mut big, p.as_bytes(), file(&objects, p.as_bytes()));
        }
    }
    // A first revision, reopened: the subtrees replace what its catalogs held.
    let mut ns = Namespace::empty(1);
    graft(&mut ns, &objects, b"", nested_tree(&objects));
    let base = commit(&mut ns, &objects, 1).root;
    for max_entries in [0, 20] {
        let mut o = opts(2);
        o.max_entries = max_entries;
        // 0: all at commit; 1: one subtree at a time; 2: both at once, in parallel, named
        // with a path below one of them and a repeat (both taken care of by the outer one).
        let build = |early: u8| {
            let mut ns = Namespace::open(base, &objects).unwrap();
            graft(&mut ns, &objects, b"/img/one", big.clone());
            graft(&mut ns, &objects, b"/a", big.clone());
            let mut written_early = 0;
            if early == 2 {
                let paths = [&b"/img/one/d1"[..], b"/img/one", b"/a", b"/img/one"];
                written_early = ns.commit_subtrees(&paths, &o, &objects).unwrap();
                assert!(written_early >= 2);
            }
            if early == 1 {
                for p in [&b"/img/one"[..], b"/a"] {
                    let n = ns.commit_subtree(p, &o, &objects).unwrap();
                    assert!(n >= 1);
                    written_early += n;
                }
            }
            if early > 0 {
                // Not catalog roots, or clean by now: nothing to do.
                for p in [&b"/img"[..], b"/a", b"/nowhere"] {
                    assert_eq!(ns.commit_subtree(p, &o, &objects).unwrap(), 0);
                }
            }
            let report = ns.commit(&o, &objects).unwrap();
            assert_verified(&objects, report.root);
            (report.root, report.catalogs_written + written_early)
        };
        let late = build(0);
        assert_eq!(late, build(1), "one at a time, max_entries {max_entries}");
        assert_eq!(late, build(2), "in parallel, max_entries {max_entries}");
    }
}

/// A subtree written early leaves memory: what is below it is read back from its stored
/// catalog when asked for, and the final commit names that catalog as it is.
#[test]
fn subtrees_committed_early_are_unloaded() {
    let objects = MemObjects::default();
    let mut img = dir();
    put(&mut img, b".cvmfscatalog", file(&objects, b""));
    put(&mut img, b"d/f", file(&objects, b"f"));
    let mut ns = Namespace::empty(1);
    graft(&mut ns, &objects, b"/img", img);
    let o = opts(1);
    assert_eq!(ns.commit_subtree(b"/img", &o, &objects).unwrap(), 1);
    objects.loads.lock().unwrap().clear();
    assert!(ns.entry(b"/img/d/f", &objects).unwrap().is_some());
    assert_eq!(
        objects.loads.lock().unwrap().len(),
        1,
        "the written catalog is loaded again"
    );
    let report = ns.commit(&o, &objects).unwrap();
    assert_verified(&objects, report.root);
    assert_eq!(report.catalogs_total, 2);
}

#[test]
fn subtrees_are_left_to_commit_when_a_dirtab_applies() {
    let objects = MemObjects::default();
    let mut t = nested_tree(&objects);
    put(&mut t, b".cvmfsdirtab", file(&objects, b"/a/*\n"));
    let mut ns = Namespace::empty(1);
    graft(&mut ns, &objects, b"", t);
    let mut o = opts(1);
    o.apply_dirtab = true;
    assert_eq!(ns.commit_subtree(b"/a", &o, &objects).unwrap(), 0);
    o.apply_dirtab = false;
    // /a and the nested /a/b.
    assert_eq!(ns.commit_subtree(b"/a", &o, &objects).unwrap(), 2);
}

#[test]
fn entries_no_client_could_serve_are_refused_with_their_path() {
    let objects = MemObjects::default();
    let parent = Entry::directory(0o755, 0, 0, 1);
    let refused = |tree: Dir| {
        let mut ns = Namespace::empty(1);
        let err = ns
            .replace(b"/img", Node::Dir(tree), &parent, &objects)
            .expect_err("grafted");
        err.to_string()
    };
    // A `.cvmfscatalog` that is a directory or a link would be taken for a marker.
    let mut t = dir();
    put(&mut t, b"etc/.cvmfscatalog/x", file(&objects, b"x"));
    let err = refused(t);
    assert!(
        err.contains("/img/etc/.cvmfscatalog: a nested catalog marker must be a regular file"),
        "{err}"
    );
    let mut t = dir();
    put(&mut t, b"etc/.cvmfsautocatalog", symlink(b"/nowhere"));
    assert!(refused(t).contains("/img/etc/.cvmfsautocatalog: a nested catalog marker"));
    // Names over NAME_MAX, targets over PATH_MAX - 1.
    let mut t = dir();
    put(&mut t, &[b'n'; 256], file(&objects, b"x"));
    assert!(refused(t).contains("(256 bytes, at most 255)"));
    let mut t = dir();
    put(&mut t, b"link", symlink(&[b't'; 4096]));
    assert!(refused(t).contains("/img/link: symlink target of 4096 bytes (at most 4095)"));
    // The limits themselves are fine.
    let mut t = dir();
    put(&mut t, &[b'n'; 255], symlink(&[b't'; 4095]));
    put(&mut t, b"etc/.cvmfscatalog", file(&objects, b""));
    let mut ns = Namespace::empty(1);
    ns.replace(b"/img", Node::Dir(t), &parent, &objects)
        .unwrap();
    commit(&mut ns, &objects, 2);
}

/// A hostile catalog with a chain of directories deeper than `MAX_PATH_DEPTH` (found by
/// fuzzing: 100 000 levels overflowed the stack of `check`) is refused when opened and
/// reported by `verify`, which stops there instead of recursing on.
#[test]
fn catalogs_deeper_than_the_path_limit_are_refused_not_recursed() {
    use catalog_writer::namespace::MAX_PATH_DEPTH;
    let objects = MemObjects::default();
    let mut ns = Namespace::empty(1);
    let report = commit(&mut ns, &objects, 1);
    let mut db = objects.catalog(&report.root);
    let root = row(&db, b"").clone();
    let mut path = Vec::new();
    for _ in 0..MAX_PATH_DEPTH + 100 {
        let mut dir = root.clone();
        dir.parent = PathHash::of(&path);
        path.extend_from_slice(b"/d");
        dir.md5 = PathHash::of(&path);
        dir.name = b"d".to_vec();
        db.rows.push(dir);
    }
    let deep = objects.store_catalog(&db);
    let err = Namespace::open(deep, &objects).err().expect("refused");
    assert!(
        err.to_string()
            .contains(&format!("more than {MAX_PATH_DEPTH} levels deep")),
        "{err}"
    );
    let v = catalog_writer::verify::verify(deep, &objects);
    let text: Vec<String> = v.problems.iter().map(|p| p.to_string()).collect();
    assert!(
        text.iter()
            .any(|t| t.contains(&format!("more than {MAX_PATH_DEPTH} levels deep"))),
        "{text:?}"
    );
}

/// A `nested_catalogs` row naming a catalog that is not below the one listing it (here, the
/// root again) is reported and not followed: followed, a chain of them would recurse on.
#[test]
fn nested_catalogs_not_below_their_parent_are_not_followed() {
    let objects = MemObjects::default();
    let mut ns = Namespace::empty(1);
    graft(&mut ns, &objects, b"", nested_tree(&objects));
    let report = commit(&mut ns, &objects, 1);
    let mut db = objects.catalog(&report.root);
    db.nested[0].path = Vec::new();
    let root = objects.store_catalog(&db);
    let v = catalog_writer::verify::verify(root, &objects);
    let text: Vec<String> = v.problems.iter().map(|p| p.to_string()).collect();
    assert!(
        text.iter()
            .any(|t| t.contains("nested catalog not below this one")),
        "{text:?}"
    );
}
