use super::*;
use crate::pipeline::memstore::{MemStore, TarB};
use crate::pipeline::{PipelineConfig, PipelineStats};
use catalog_writer::entry::{EntryKind, FileData};
use catalog_writer::hash::{ContentHash, Suffix};
use catalog_writer::tree::Node;
use publisher::store::ObjectStore;
use std::io::Cursor;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn layer(name: &str, bytes: Vec<u8>) -> LayerInput {
    counted(name, bytes, Arc::new(AtomicUsize::new(0)))
}

/// A layer whose opens are counted in `opens`; its diff_id is derived from its bytes.
fn counted(name: &str, bytes: Vec<u8>, opens: Arc<AtomicUsize>) -> LayerInput {
    let diff_id = format!("sha256:{}", ContentHash::of(&bytes).to_hex());
    LayerInput {
        name: name.into(),
        diff_id: Some(diff_id),
        open: Box::new(move || {
            opens.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(Cursor::new(bytes.clone())) as Box<dyn Read + Send>)
        }),
    }
}

fn flat(layers: Vec<Vec<u8>>) -> Result<(Dir, Arc<MemStore>, PipelineStats)> {
    let store = Arc::new(MemStore::default());
    let p = ObjectPipeline::new(store.clone(), None, PipelineConfig::default())?;
    let inputs = layers
        .into_iter()
        .enumerate()
        .map(|(i, b)| layer(&format!("img layer{i}"), b))
        .collect();
    let dir = flatten_layers(inputs, &p)?;
    let stats = p.finish()?.stats;
    Ok((dir, store, stats))
}

fn node<'a>(dir: &'a Dir, path: &str) -> Option<&'a Node> {
    let mut cur = dir;
    let comps: Vec<&str> = path.split('/').collect();
    for (i, c) in comps.iter().enumerate() {
        let n = cur.children.get(c.as_bytes())?;
        if i + 1 == comps.len() {
            return Some(n);
        }
        match n {
            Node::Dir(d) => cur = d,
            Node::Leaf(_) => return None,
        }
    }
    None
}

fn content(dir: &Dir, store: &MemStore, path: &str) -> Vec<u8> {
    match &node(dir, path)
        .unwrap_or_else(|| panic!("{path} missing"))
        .entry()
        .kind
    {
        EntryKind::File {
            data: FileData::Whole(h),
            ..
        } => store.get_inflated(h, Suffix::None),
        k => panic!("{path}: {k:?}"),
    }
}

fn names(dir: &Dir, path: &str) -> Vec<String> {
    let d = if path.is_empty() {
        dir
    } else {
        match node(dir, path) {
            Some(Node::Dir(d)) => d,
            n => panic!("{path}: {n:?}"),
        }
    };
    d.children
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect()
}

#[test]
fn whiteouts_remove_lower_entries() {
    let l0 = TarB::new()
        .file("a/x", b"x")
        .file("a/y", b"y")
        .file("b", b"b")
        .dir("c/", 0o755)
        .file("c/z", b"z")
        .finish();
    let l1 = TarB::new()
        .file("a/.wh.x", b"")
        .file(".wh.b", b"")
        .file(".wh.c", b"")
        .finish();
    let (dir, store, _) = flat(vec![l0, l1]).unwrap();
    assert_eq!(names(&dir, ""), vec!["a"]);
    assert_eq!(names(&dir, "a"), vec!["y"]);
    assert_eq!(content(&dir, &store, "a/y"), b"y");
}

#[test]
fn opaque_dir_hides_lower_children_only() {
    let l0 = TarB::new()
        .dir("d/", 0o755)
        .file("d/old", b"old")
        .dir("d/sub/", 0o755)
        .file("e/keep", b"k")
        .finish();
    let l1 = TarB::new()
        .dir("d/", 0o700)
        .file("d/.wh..wh..opq", b"")
        .file("d/new", b"new")
        .finish();
    let (dir, _, _) = flat(vec![l0, l1]).unwrap();
    assert_eq!(names(&dir, "d"), vec!["new"]);
    assert_eq!(node(&dir, "d").unwrap().entry().perm, 0o700);
    assert_eq!(names(&dir, "e"), vec!["keep"]);
    // Marker before the sibling entries and whiteout + recreate in one layer.
    let l0 = TarB::new().file("d/old", b"old").finish();
    let l1 = TarB::new()
        .file(".wh.d", b"")
        .file("d/new", b"new")
        .finish();
    let (dir, _, _) = flat(vec![l0, l1]).unwrap();
    assert_eq!(names(&dir, "d"), vec!["new"]);
}

#[test]
fn type_changes() {
    let big = crate::pipeline::memstore::lcg_bytes(200_000, 9);
    let l0 = TarB::new()
        .dir("p/", 0o755)
        .file("p/q", &big)
        .file("f", b"file")
        .symlink("s", "target")
        .dir("t/", 0o755)
        .file("t/u", b"u")
        .finish();
    let l1 = TarB::new()
        .file("p", b"now a file")
        .dir("f/", 0o711)
        .file("f/g", b"g")
        .dir("s/", 0o755)
        .symlink("t", "elsewhere")
        .finish();
    let (dir, store, stats) = flat(vec![l0, l1]).unwrap();
    assert_eq!(content(&dir, &store, "p"), b"now a file");
    assert_eq!(names(&dir, "f"), vec!["g"]);
    assert_eq!(node(&dir, "f").unwrap().entry().perm, 0o711);
    assert!(matches!(node(&dir, "s"), Some(Node::Dir(_))));
    assert_eq!(
        node(&dir, "t").unwrap().entry().kind,
        EntryKind::Symlink {
            target: b"elsewhere".to_vec()
        }
    );
    // Shadowed p/q, f and t/u were never read into the pipeline.
    assert_eq!(stats.files, 2);
    assert_eq!(stats.bytes_in, 11);
}

/// Flattens `layers` plainly, then twice with a layer memo (recording, then replaying), and
/// checks the three trees agree; returns the plain one.
fn flat_all_ways(layers: &[Vec<u8>]) -> (Dir, Arc<MemStore>) {
    let store = Arc::new(MemStore::default());
    let (plain, _, _) = flat_counted(layers, &store, None).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let memo = publisher::LayerMemo::open(&tmp.path().join("layers.db")).unwrap();
    let ctx = MemoContext::new(&memo, store.as_ref());
    let (recorded, _, _) = flat_counted(layers, &store, Some(&ctx)).unwrap();
    let (replayed, _, opens) = flat_counted(layers, &store, Some(&ctx)).unwrap();
    assert!(opens.iter().all(|&n| n == 0), "replayed: {opens:?}");
    assert_eq!(recorded, plain);
    assert_eq!(replayed, plain);
    (plain, store)
}

/// A directory replaced by a non-directory, then made a directory again by a higher layer
/// (no opaque marker): the replacement removed the old directory, so nothing below it may
/// come back (image-spec layer.md: unless both are directories, the path is removed first).
#[test]
fn a_directory_replaced_and_made_again_keeps_nothing_from_below() {
    let l0 = TarB::new()
        .dir("d/", 0o700)
        .file("d/secret", b"removed by layer 1")
        .dir("d/sub/", 0o755)
        .file("d/sub/deep", b"also removed")
        .dir("p/", 0o755)
        .file("p/old", b"under a file")
        .finish();
    for replacement in ["symlink", "file", "fifo", "hardlink"] {
        let mut l1 = TarB::new();
        l1.file("target", b"t");
        match replacement {
            "symlink" => l1.symlink("d", "/elsewhere"),
            "file" => l1.file("d", b"a file now"),
            "fifo" => l1.device("d", tar::EntryType::Fifo, 0, 0),
            _ => l1.hardlink("d", "target"),
        };
        l1.file("p", b"p is a file");
        let l1 = l1.finish();
        let l2 = TarB::new()
            .dir("d/", 0o750)
            .file("d/new", b"new")
            .file("p/child", b"implied parent")
            .finish();
        let (dir, _) = flat_all_ways(&[l0.clone(), l1, l2]);
        assert_eq!(names(&dir, "d"), vec!["new"], "{replacement}");
        assert_eq!(node(&dir, "d").unwrap().entry().perm, 0o750);
        assert_eq!(names(&dir, "p"), vec!["child"], "{replacement}");
    }
    // A directory at every layer still merges.
    let l1 = TarB::new().dir("d/", 0o755).file("d/mid", b"m").finish();
    let l2 = TarB::new().dir("d/", 0o750).file("d/new", b"n").finish();
    let (dir, _) = flat_all_ways(&[l0, l1, l2]);
    assert_eq!(names(&dir, "d"), vec!["mid", "new", "secret", "sub"]);
}

/// A lower layer names a path twice; a higher layer's hard link to that path gets what the
/// layer leaves there, the last member, while the layer's own link made in between keeps the
/// first (as tar extraction and Docker's layer applier do).
#[test]
fn a_link_into_a_layer_with_a_path_twice_gets_the_last_member() {
    let l0 = TarB::new()
        .file_mode("a", 0o4755, b"first version")
        .hardlink("between", "a")
        .file_mode("a", 0o644, b"second version")
        .finish();
    let l1 = TarB::new().hardlink("h", "a").finish();
    let (dir, store) = flat_all_ways(&[l0.clone(), l1.clone()]);
    assert_eq!(content(&dir, &store, "a"), b"second version");
    assert_eq!(content(&dir, &store, "h"), b"second version");
    assert_eq!(node(&dir, "h").unwrap().entry().perm, 0o644);
    let id = node(&dir, "a").unwrap().entry().hardlink;
    assert!(id.is_some());
    assert_eq!(node(&dir, "h").unwrap().entry().hardlink, id);
    assert_eq!(content(&dir, &store, "between"), b"first version");
    assert_eq!(node(&dir, "between").unwrap().entry().perm, 0o4755);
    assert_ne!(node(&dir, "between").unwrap().entry().hardlink, id);
    // The second member a link to another file: the higher link follows it there.
    let l0 = TarB::new()
        .file("a", b"first")
        .file("b", b"bee")
        .hardlink("a", "b")
        .finish();
    let (dir, store) = flat_all_ways(&[l0, l1.clone()]);
    assert_eq!(content(&dir, &store, "h"), b"bee");
    // The second member a directory: a link cannot name it.
    let l0 = TarB::new().file("a", b"first").dir("a/", 0o755).finish();
    let err = flat(vec![l0, l1.clone()]).unwrap_err().to_string();
    assert!(err.contains("is a directory, but a hardlink"), "{err}");
    // A directory, then a file: the file is what the link names (R2).
    let l0 = TarB::new()
        .dir("a/", 0o755)
        .file("a/in", b"i")
        .file("a", b"file at last")
        .finish();
    let (dir, store) = flat_all_ways(&[l0, l1.clone()]);
    assert_eq!(content(&dir, &store, "h"), b"file at last");
    // A higher link to this layer's link to the first member keeps the first (R1).
    let l0 = TarB::new()
        .file("a", b"v1")
        .hardlink("h1", "a")
        .file("a", b"v2")
        .finish();
    let l1 = TarB::new().hardlink("x", "a").hardlink("y", "h1").finish();
    let (dir, store) = flat_all_ways(&[l0, l1]);
    assert_eq!(content(&dir, &store, "a"), b"v2");
    assert_eq!(content(&dir, &store, "x"), b"v2");
    assert_eq!(content(&dir, &store, "h1"), b"v1");
    assert_eq!(content(&dir, &store, "y"), b"v1");
    let id = |p: &str| node(&dir, p).unwrap().entry().hardlink;
    assert_eq!(id("y"), id("h1"));
    assert_eq!(id("x"), id("a"));
    assert_ne!(id("x"), id("y"));
}

/// The same rule inside one layer: a non-directory then a directory at one path (R3), and
/// a directory's children then the directory replaced (R4): nothing from before comes back.
#[test]
fn replacements_inside_one_layer_keep_nothing_from_before() {
    let l0 = TarB::new().dir("d/", 0o755).file("d/x", b"lower").finish();
    for kind in ["file", "symlink"] {
        let mut l1 = TarB::new();
        match kind {
            "file" => l1.file("d", b"a file"),
            _ => l1.symlink("d", "elsewhere"),
        };
        let l1 = l1.dir("d/", 0o700).file("d/y", b"y").finish();
        let (dir, _) = flat_all_ways(&[l0.clone(), l1]);
        assert_eq!(names(&dir, "d"), vec!["y"], "{kind}");
        assert_eq!(node(&dir, "d").unwrap().entry().perm, 0o700);
    }
    // Children, then the directory replaced by a file; a higher layer makes it again.
    let l1 = TarB::new()
        .dir("d/", 0o711)
        .file("d/y", b"y")
        .dir("d/sub/", 0o755)
        .file("d/sub/z", b"z")
        .file("d", b"now a file")
        .finish();
    let l2 = TarB::new().dir("d/", 0o750).file("d/top", b"t").finish();
    let (dir, _) = flat_all_ways(&[l0.clone(), l1.clone(), l2]);
    assert_eq!(names(&dir, "d"), vec!["top"]);
    assert_eq!(node(&dir, "d").unwrap().entry().perm, 0o750);
    // What the higher layer put in a subdirectory stays; the replaced layer's goes.
    let l2 = TarB::new().file("d/sub/high", b"h").finish();
    let (dir, _) = flat_all_ways(&[l0, l1, l2]);
    assert_eq!(names(&dir, "d"), vec!["sub"]);
    assert_eq!(names(&dir, "d/sub"), vec!["high"]);
}

#[test]
fn shadowed_file_is_never_compressed() {
    let old = crate::pipeline::memstore::lcg_bytes(300_000, 1);
    let l0 = TarB::new().file("bin/tool", &old).finish();
    let l1 = TarB::new().file("bin/tool", b"new").finish();
    let (dir, store, stats) = flat(vec![l0, l1]).unwrap();
    assert_eq!(content(&dir, &store, "bin/tool"), b"new");
    assert_eq!(stats.compressions, 1);
    assert_eq!(store.len(), 1);
    let old_obj = ContentHash::of(&catalog_writer::zlib::compress(&old));
    assert!(!store.contains(&old_obj, Suffix::None).unwrap());
}

#[test]
fn same_path_twice_in_one_layer() {
    let l0 = TarB::new()
        .file("f", b"one")
        .file("f", b"two")
        .dir("d/", 0o700)
        .dir("d/", 0o750)
        .finish();
    let (dir, store, _) = flat(vec![l0]).unwrap();
    assert_eq!(content(&dir, &store, "f"), b"two");
    assert_eq!(node(&dir, "d").unwrap().entry().perm, 0o750);
}

#[test]
fn directory_metadata_from_highest_layer() {
    let l0 = TarB::new()
        .dir("./", 0o700)
        .dir("d/", 0o700)
        .file("d/a", b"a")
        .finish();
    let l1 = TarB::new().dir("d/", 0o750).file("d/b", b"b").finish();
    let l2 = TarB::new().file("d/c", b"c").finish();
    let (dir, _, _) = flat(vec![l0, l1, l2]).unwrap();
    assert_eq!(node(&dir, "d").unwrap().entry().perm, 0o750);
    assert_eq!(names(&dir, "d"), vec!["a", "b", "c"]);
    assert_eq!(dir.meta.perm, 0o700);
    let (dir, _, _) = flat(vec![TarB::new().file("x", b"").finish()]).unwrap();
    assert_eq!((dir.meta.perm, dir.meta.uid, dir.meta.gid), (0o755, 0, 0));
}

#[test]
fn hardlinks_across_layers() {
    let l0 = TarB::new()
        .file("orig", b"data")
        .file("other", b"o")
        .finish();
    let l1 = TarB::new().hardlink("link", "orig").finish();
    let l2 = TarB::new().hardlink("link2", "link").finish();
    let (dir, store, _) = flat(vec![l0.clone(), l1.clone(), l2]).unwrap();
    let id = node(&dir, "orig").unwrap().entry().hardlink;
    assert!(id.is_some());
    assert_eq!(node(&dir, "link").unwrap().entry().hardlink, id);
    assert_eq!(node(&dir, "link2").unwrap().entry().hardlink, id);
    assert_eq!(content(&dir, &store, "link2"), b"data");
    assert_eq!(node(&dir, "other").unwrap().entry().hardlink, None);
    // The target path is replaced above the link: the link keeps the old bytes.
    let l2 = TarB::new().file("orig", b"replaced").finish();
    let (dir, store, _) = flat(vec![l0, l1, l2]).unwrap();
    assert_eq!(content(&dir, &store, "orig"), b"replaced");
    assert_eq!(content(&dir, &store, "link"), b"data");
    assert_eq!(node(&dir, "link").unwrap().entry().hardlink, None);
}

#[test]
fn same_layer_link_to_shadowed_target() {
    let l0 = TarB::new().file("t", b"first").hardlink("l", "t").finish();
    let l1 = TarB::new().file("t", b"second").finish();
    let (dir, store, _) = flat(vec![l0, l1]).unwrap();
    assert_eq!(content(&dir, &store, "t"), b"second");
    assert_eq!(content(&dir, &store, "l"), b"first");
}

/// Flattens `layers` with counted opens; returns the tree, the stats and the open counts.
fn flat_counted(
    layers: &[Vec<u8>],
    store: &Arc<MemStore>,
    memo: Option<&MemoContext<'_>>,
) -> Result<(Dir, PipelineStats, Vec<usize>)> {
    let p = ObjectPipeline::new(store.clone(), None, PipelineConfig::default())?;
    let opens: Vec<Arc<AtomicUsize>> = layers.iter().map(|_| Arc::default()).collect();
    let inputs = layers
        .iter()
        .zip(&opens)
        .enumerate()
        .map(|(i, (b, o))| counted(&format!("img layer{i}"), b.clone(), o.clone()))
        .collect();
    let dir = flatten_layers_with(inputs, &p, memo)?;
    let stats = p.finish()?.stats;
    let counts = opens.iter().map(|o| o.load(Ordering::SeqCst)).collect();
    Ok((dir, stats, counts))
}

#[test]
fn shadowed_link_target_is_read_in_a_second_pass() {
    let old = crate::pipeline::memstore::lcg_bytes(100_000, 2);
    let l0 = TarB::new()
        .file("t", &old)
        .file("gone", b"never needed")
        .hardlink("hidden", "gone") // shadowed link to a shadowed file: no second pass for it
        .hardlink("l", "t")
        .hardlink("l2", "l")
        .finish();
    let l1 = TarB::new()
        .file("t", b"second")
        .file("gone", b"x")
        .file("hidden", b"y")
        .finish();
    let store = Arc::new(MemStore::default());
    let (dir, stats, opens) = flat_counted(&[l0.clone(), l1.clone()], &store, None).unwrap();
    assert_eq!(opens, vec![2, 1], "layer 0 is read twice, layer 1 once");
    assert_eq!(content(&dir, &store, "t"), b"second");
    assert_eq!(content(&dir, &store, "l"), old);
    assert_eq!(content(&dir, &store, "l2"), old);
    let id = node(&dir, "l").unwrap().entry().hardlink;
    assert!(id.is_some());
    assert_eq!(node(&dir, "l2").unwrap().entry().hardlink, id);
    // Only what is visible was compressed: t, gone, hidden of layer 1 and layer 0's t.
    assert_eq!(stats.files, 4);
    let never = ContentHash::of(&catalog_writer::zlib::compress(b"never needed"));
    assert!(!store.contains(&never, Suffix::None).unwrap());
    // Without the link, one pass.
    let l0 = TarB::new().file("t", &old).finish();
    let (_, _, opens) = flat_counted(&[l0, l1], &store, None).unwrap();
    assert_eq!(opens, vec![1, 1]);
}

/// Layers exercising every member kind and rule, for memo round trips.
fn rich_layers() -> Vec<Vec<u8>> {
    let l0 = TarB::new()
        .dir("./", 0o755)
        .dir("etc/", 0o755)
        .file("etc/motd", b"hello")
        .file("etc/shadowed", b"old")
        .hardlink("etc/motd-link", "etc/motd")
        .file("etc/t", b"link target bytes")
        .hardlink("etc/via-shadowed", "etc/t")
        .symlink("lib", "usr/lib")
        .device("dev/null", tar::EntryType::Char, 1, 3)
        .dir("opq/", 0o755)
        .file("opq/old", b"hidden by opaque")
        .file("wh/x", b"whited out")
        .file("wh/y", b"y")
        .finish();
    let l1 = TarB::new()
        .file("etc/shadowed", b"new")
        .file("etc/t", b"replaced")
        .file("opq/.wh..wh..opq", b"")
        .file("opq/new", b"n")
        .file("wh/.wh.x", b"")
        .hardlink("up-link", "etc/motd")
        .finish();
    let l2 = TarB::new()
        .pax(&[("mtime", b"1700000000.5"), ("SCHILY.xattr.user.k", b"v")])
        .file_mode("bin/tool", 0o755, b"#!/bin/sh\n")
        .finish();
    vec![l0, l1, l2]
}

#[test]
fn known_layers_are_replayed_without_opening_them() {
    let tmp = tempfile::tempdir().unwrap();
    let memo = publisher::LayerMemo::open(&tmp.path().join("layers.db")).unwrap();
    let store = Arc::new(MemStore::default());
    let ctx = MemoContext::new(&memo, store.as_ref());
    let layers = rich_layers();
    let (plain, _, _) = flat_counted(&layers, &Arc::new(MemStore::default()), None).unwrap();
    let (first, _, opens) = flat_counted(&layers, &store, Some(&ctx)).unwrap();
    assert_eq!(first, plain);
    assert_eq!(
        opens,
        vec![1, 1, 1],
        "recorded, layer 0's shadowed etc/t is ingested at once: no second pass"
    );
    assert_eq!(memo.list().unwrap().len(), 3);
    let (second, stats, opens) = flat_counted(&layers, &store, Some(&ctx)).unwrap();
    assert_eq!(opens, vec![0, 0, 0]);
    assert_eq!(stats.files, 0);
    assert_eq!(second, plain);
    assert_eq!(
        content(&second, &store, "etc/via-shadowed"),
        b"link target bytes"
    );
}

/// Sibling images on one base: the first one shadows a file of the base, the second sees it.
/// The base's memo must be complete after the first, so the second replays the base.
#[test]
fn a_layer_read_under_shadowing_layers_leaves_a_complete_memo() {
    let tmp = tempfile::tempdir().unwrap();
    let memo = publisher::LayerMemo::open(&tmp.path().join("layers.db")).unwrap();
    let store = Arc::new(MemStore::default());
    let ctx = MemoContext::new(&memo, store.as_ref());
    let base = TarB::new()
        .file("f", b"base f")
        .file("g", b"g")
        .file("gone", b"whited out above")
        .finish();
    let top = TarB::new()
        .file("f", b"top f")
        .file(".wh.gone", b"")
        .finish();
    let other = TarB::new().file("h", b"h").finish();
    let base_id = format!("sha256:{}", ContentHash::of(&base).to_hex());
    let (a, _, _) = flat_counted(&[base.clone(), top], &store, Some(&ctx)).unwrap();
    assert_eq!(content(&a, &store, "f"), b"top f");
    assert!(node(&a, "gone").is_none());
    assert!(memo.get(&base_id).unwrap().unwrap().is_complete());
    // Image B sees the base's f and gone: replayed, the base's blob is not opened again.
    let image_b = [base.clone(), other];
    let (dir, stats, opens) = flat_counted(&image_b, &store, Some(&ctx)).unwrap();
    assert_eq!(opens, vec![0, 1]);
    assert_eq!(stats.files, 1, "only h is read");
    assert_eq!(content(&dir, &store, "f"), b"base f");
    assert_eq!(content(&dir, &store, "gone"), b"whited out above");
    let (plain, _, _) = flat_counted(&image_b, &Arc::new(MemStore::default()), None).unwrap();
    assert_eq!(dir, plain);
}

#[test]
fn incomplete_memo_is_upgraded_by_reading_the_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let memo = publisher::LayerMemo::open(&tmp.path().join("layers.db")).unwrap();
    let store = Arc::new(MemStore::default());
    let ctx = MemoContext::new(&memo, store.as_ref());
    let base = TarB::new().file("f", b"base f").file("g", b"g").finish();
    let other = TarB::new().file("h", b"h").finish();
    let base_id = format!("sha256:{}", ContentHash::of(&base).to_hex());
    // A memo written by an earlier version, which skipped the shadowed f.
    flat_counted(std::slice::from_ref(&base), &store, Some(&ctx)).unwrap();
    let mut m = memo.get(&base_id).unwrap().unwrap();
    for e in &mut m.entries {
        if let (b"f", MemoKind::File { data, .. }) = (e.path.as_slice(), &mut e.kind) {
            *data = None;
        }
    }
    memo.forget(&base_id).unwrap();
    memo.put(&base_id, &m).unwrap();
    let ctx = MemoContext::new(&memo, store.as_ref());
    assert_eq!(memo.get(&base_id).unwrap().unwrap().unknown_files(), 1);
    // Image B sees the base's f: that memo is not enough, the stream is read again.
    let image_b = [base.clone(), other];
    let (dir, _, opens) = flat_counted(&image_b, &store, Some(&ctx)).unwrap();
    assert_eq!(opens, vec![1, 1]);
    assert_eq!(content(&dir, &store, "f"), b"base f");
    assert!(memo.get(&base_id).unwrap().unwrap().is_complete());
    let (again, _, opens) = flat_counted(&image_b, &store, Some(&ctx)).unwrap();
    assert_eq!(opens, vec![0, 0]);
    assert_eq!(again, dir);
}

#[test]
fn memo_with_a_missing_object_is_not_trusted() {
    let tmp = tempfile::tempdir().unwrap();
    let memo = publisher::LayerMemo::open(&tmp.path().join("layers.db")).unwrap();
    let store = Arc::new(MemStore::default());
    let ctx = MemoContext::new(&memo, store.as_ref());
    let layers = vec![TarB::new().file("a", b"aaa").file("b", b"bbb").finish()];
    let (first, _, _) = flat_counted(&layers, &store, Some(&ctx)).unwrap();
    // Garbage collection removed one object.
    let gone = ContentHash::of(&catalog_writer::zlib::compress(b"bbb"));
    store.objects.lock().unwrap().remove(&(gone, Suffix::None));
    let (dir, stats, opens) = flat_counted(&layers, &store, Some(&ctx)).unwrap();
    assert_eq!(opens, vec![1]);
    assert_eq!(stats.objects_new, 1, "the lost object is stored again");
    assert_eq!(dir, first);
    assert!(store.contains(&gone, Suffix::None).unwrap());
    let (_, _, opens) = flat_counted(&layers, &store, Some(&ctx)).unwrap();
    assert_eq!(opens, vec![0]);
}

#[test]
fn broken_links_name_layer_and_path() {
    let l0 = TarB::new().file("x", b"").finish();
    let l1 = TarB::new().hardlink("dir/link", "missing").finish();
    let err = flat(vec![l0, l1]).unwrap_err().to_string();
    assert!(
        err.contains("img layer1: dir/link: hardlink target missing"),
        "{err}"
    );
    let l0 = TarB::new().file("t", b"").finish();
    let l1 = TarB::new().file(".wh.t", b"").finish();
    let l2 = TarB::new().hardlink("l", "t").finish();
    let err = flat(vec![l0, l1, l2]).unwrap_err().to_string();
    assert!(
        err.contains("img layer2: l: hardlink target t is removed"),
        "{err}"
    );
}

#[test]
fn hostile_names_are_refused() {
    let cases: [&[u8]; 5] = [b"../x", b"/abs", b"a/../../b", b"d/.wh...", b".wh."];
    for name in cases {
        let l = TarB::new()
            .raw(name, tar::EntryType::Regular, 0o644, b"", None)
            .finish();
        let err = flat(vec![l]).unwrap_err().to_string();
        assert!(err.starts_with("img layer0: "), "{err}");
    }
    let l = TarB::new().hardlink("x", "../../etc/shadow").finish();
    assert!(flat(vec![l]).is_err());
    // Symlinks are stored, never followed: a whiteout through a symlink is a plain name.
    let l0 = TarB::new()
        .symlink("s", "/etc")
        .file("real/passwd", b"p")
        .finish();
    let l1 = TarB::new().file("s/.wh.passwd", b"").finish();
    let err = flat(vec![l0, l1]);
    // "s" is a symlink of a lower layer, so l1's "s/" is an implied directory replacing it.
    let (dir, _, _) = err.unwrap();
    assert!(matches!(node(&dir, "s"), Some(Node::Dir(_))));
    assert_eq!(names(&dir, "real"), vec!["passwd"]);
}

/// kaniko's layers: a `/` member for the root at the top of each layer above the base, and
/// hard links whose targets start with `/`. Docker and containerd read both inside the root;
/// so does this. `/name` as a member name and `..` in a target stay refused.
#[test]
fn kaniko_root_member_and_absolute_link_targets_are_read_inside_the_root() {
    let dir = tar::EntryType::Directory;
    let link = tar::EntryType::Link;
    let l0 = TarB::new().file("usr/bin/perl", b"perl").finish();
    let l1 = TarB::new()
        .raw(b"/", dir, 0o750, b"", None)
        .raw(
            b"usr/bin/perl5.36",
            link,
            0o755,
            b"",
            Some(b"/usr/bin/perl"),
        )
        .file("f", b"f")
        .raw(b"g", link, 0o644, b"", Some(b"//f"))
        .finish();
    // Read from the streams, recorded in a layer memo and replayed from it alike.
    let (root, store) = flat_all_ways(&[l0, l1]);
    assert_eq!(root.meta.mode() & 0o7777, 0o750, "the root's metadata");
    // `/./` is the root too (Docker cleans it to `/`); `/.x` is an absolute name.
    let l2 = TarB::new().raw(b"/./", dir, 0o705, b"", None).finish();
    let (root2, _) = flat_all_ways(&[TarB::new().file("a", b"a").finish(), l2]);
    assert_eq!(root2.meta.mode() & 0o7777, 0o705);
    let l3 = TarB::new().raw(b"/.x", dir, 0o705, b"", None).finish();
    let err = flat(vec![l3]).unwrap_err().to_string();
    assert!(err.contains("/.x: absolute member name"), "{err}");
    assert_eq!(content(&root, &store, "usr/bin/perl5.36"), b"perl");
    assert_eq!(content(&root, &store, "g"), b"f");
    assert_eq!(
        node(&root, "g").unwrap().entry().hardlink,
        node(&root, "f").unwrap().entry().hardlink
    );
    for (target, why) in [
        (&b"/../etc/shadow"[..], "'..' path component"),
        (b"/", "the archive's root"),
        (b"/.", "the archive's root"),
        (b"//./", "the archive's root"),
        (b"./", "the archive's root"),
    ] {
        let l = TarB::new()
            .file("f", b"f")
            .raw(b"x", link, 0o644, b"", Some(target))
            .finish();
        let err = flat(vec![l]).unwrap_err().to_string();
        assert!(err.contains(&format!("x: hardlink target: {why}")), "{err}");
    }
}

/// Entries a client cannot serve are refused while their layer is read, so the error names
/// the layer and the member (the namespace's check when grafting knows neither); a lower
/// layer's entry that a higher layer hides is never refused.
#[test]
fn entries_a_client_cannot_serve_name_layer_and_member() {
    let long = "z".repeat(300);
    let target = "t".repeat(5000);
    let symlink = tar::EntryType::Symlink;
    let cases: Vec<(Vec<u8>, String)> = vec![
        (
            TarB::new().long_file(&long, b"x").finish(),
            format!("img layer1: {long}: a name of 300 bytes (at most 255)"),
        ),
        (
            TarB::new().long_file(&format!("d/{long}/f"), b"x").finish(),
            format!("img layer1: d/{long}/f: a directory name of 300 bytes (at most 255)"),
        ),
        (
            TarB::new()
                .pax(&[("linkpath", target.as_bytes())])
                .raw(b"s", symlink, 0o777, b"", Some(b"x"))
                .finish(),
            "img layer1: s: symlink target of 5000 bytes (at most 4095)".to_owned(),
        ),
        (
            TarB::new().dir("a/.cvmfscatalog", 0o755).finish(),
            "img layer1: a/.cvmfscatalog: directory .cvmfscatalog: a nested catalog marker \
             must be a regular file"
                .to_owned(),
        ),
        (
            TarB::new().file("a/.cvmfsautocatalog/f", b"").finish(),
            "img layer1: a/.cvmfsautocatalog/f: directory .cvmfsautocatalog: a nested \
             catalog marker must be a regular file"
                .to_owned(),
        ),
        (
            TarB::new().symlink("b/.cvmfscatalog", "x").finish(),
            "img layer1: b/.cvmfscatalog: a nested catalog marker must be a regular file"
                .to_owned(),
        ),
    ];
    for (bad, want) in cases {
        let l0 = TarB::new().file("ok", b"1").finish();
        let l2 = TarB::new().file("top", b"2").finish();
        let err = flat(vec![l0, bad, l2]).unwrap_err().to_string();
        assert_eq!(err, want);
    }
    // Hidden by a higher layer: never part of the tree, so never refused.
    let l0 = TarB::new()
        .dir("a/.cvmfscatalog", 0o755)
        .long_file(&format!("h/{long}"), b"x")
        .finish();
    let l1 = TarB::new()
        .file("a/.wh..cvmfscatalog", b"")
        .file("h/.wh..wh..opq", b"")
        .finish();
    let (dir, _, _) = flat(vec![l0, l1]).unwrap();
    assert!(names(&dir, "a").is_empty() && names(&dir, "h").is_empty());
    // A regular file is a marker as cvmfs wants it.
    let l0 = TarB::new().file("c/.cvmfscatalog", b"").finish();
    let (dir, _, _) = flat(vec![l0]).unwrap();
    assert_eq!(names(&dir, "c"), vec![".cvmfscatalog"]);
}

#[test]
fn a_memo_is_checked_against_the_store_once_per_context() {
    let tmp = tempfile::tempdir().unwrap();
    let memo = publisher::LayerMemo::open(&tmp.path().join("layers.db")).unwrap();
    let store = Arc::new(MemStore::default());
    let layers = vec![TarB::new().file("a", b"aaa").file("b", b"bbb").finish()];
    let first_ctx = MemoContext::new(&memo, store.as_ref());
    flat_counted(&layers, &store, Some(&first_ctx)).unwrap();
    let ctx = MemoContext::new(&memo, store.as_ref());
    let (_, _, opens) = flat_counted(&layers, &store, Some(&ctx)).unwrap();
    assert_eq!(opens, vec![0], "replayed, objects checked");
    // Within one context (one transaction) the checked memo is reused as it is...
    let gone = ContentHash::of(&catalog_writer::zlib::compress(b"bbb"));
    store.objects.lock().unwrap().remove(&(gone, Suffix::None));
    let (_, _, opens) = flat_counted(&layers, &store, Some(&ctx)).unwrap();
    assert_eq!(opens, vec![0]);
    // ...and a new context checks it again and reads the layer.
    let fresh = MemoContext::new(&memo, store.as_ref());
    let (_, _, opens) = flat_counted(&layers, &store, Some(&fresh)).unwrap();
    assert_eq!(opens, vec![1]);
}

/// The merged tree and the per-layer index have a slot per path of the image: a large
/// variant (an unboxed directory, a shadowed file's entry) sized every slot for itself.
#[test]
fn per_path_slots_stay_small() {
    assert!(std::mem::size_of::<FNode>() <= 24);
    assert!(std::mem::size_of::<LayerItem>() <= 40);
}

/// A layer's memo is written once its files are stored, not when the next layer is done: a
/// run killed while a lower layer still downloads keeps the layers above it.
#[test]
fn a_layer_memo_is_written_while_the_next_layer_is_still_read() {
    /// Stands for a lower layer still downloading: its first read waits until the memo of
    /// the upper layer is in the database (or gives up), and notes which.
    struct Stalled {
        db: std::path::PathBuf,
        upper: String,
        seen: Arc<std::sync::atomic::AtomicBool>,
        rest: Cursor<Vec<u8>>,
        waited: bool,
    }
    impl Read for Stalled {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if !self.waited {
                self.waited = true;
                let memo = publisher::LayerMemo::open(&self.db).unwrap();
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
                while std::time::Instant::now() < deadline {
                    if memo.get(&self.upper).unwrap().is_some() {
                        self.seen.store(true, Ordering::SeqCst);
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
            self.rest.read(buf)
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("layers.db");
    let memo = publisher::LayerMemo::open(&db).unwrap();
    let store = Arc::new(MemStore::default());
    let ctx = MemoContext::new(&memo, store.as_ref());
    let upper_bytes = TarB::new().file("upper", b"read first").finish();
    let lower_bytes = TarB::new().file("lower", b"read second").finish();
    let upper = layer("img upper", upper_bytes);
    let upper_id = upper.diff_id.clone().unwrap();
    let seen = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lower = {
        let (db, upper, seen) = (db.clone(), upper_id.clone(), seen.clone());
        LayerInput {
            name: "img lower".into(),
            diff_id: Some(format!("sha256:{}", ContentHash::of(&lower_bytes).to_hex())),
            open: Box::new(move || {
                Ok(Box::new(Stalled {
                    db: db.clone(),
                    upper: upper.clone(),
                    seen: seen.clone(),
                    rest: Cursor::new(lower_bytes.clone()),
                    waited: false,
                }) as Box<dyn Read + Send>)
            }),
        }
    };
    let p = ObjectPipeline::new(store.clone(), None, PipelineConfig::default()).unwrap();
    let dir = flatten_layers_with(vec![lower, upper], &p, Some(&ctx)).unwrap();
    p.finish().unwrap();
    assert!(
        seen.load(Ordering::SeqCst),
        "the upper layer's memo came only at the end"
    );
    assert_eq!(content(&dir, &store, "lower"), b"read second");
    assert_eq!(memo.list().unwrap().len(), 2);
}

/// A PAX sparse file (format 1.0, as `tar --format=pax --sparse` writes it) in a layer is the
/// file itself under its real name, with its holes as zeros, as Go's archive/tar (Docker,
/// containerd) unpacks it; a hard link to it by that name gets the same content, also when
/// the layer is replayed from the memo.
#[test]
fn pax_sparse_files_in_layers_are_expanded() {
    let mut data = b"1\n8192\n3\n".to_vec();
    data.resize(512, 0);
    data.extend_from_slice(b"abc");
    let l0 = TarB::new()
        .dir("d/", 0o755)
        .pax(&[
            ("GNU.sparse.major", b"1"),
            ("GNU.sparse.minor", b"0"),
            ("GNU.sparse.name", b"d/holey"),
            ("GNU.sparse.realsize", b"10000"),
        ])
        .file("d/GNUSparseFile.9/holey", &data)
        .hardlink("d/link", "d/holey")
        .finish();
    let (dir, store) = flat_all_ways(&[l0]);
    assert_eq!(names(&dir, "d"), ["holey", "link"]);
    let mut want = vec![0u8; 10_000];
    want[8192..8195].copy_from_slice(b"abc");
    assert!(content(&dir, &store, "d/holey") == want);
    assert!(content(&dir, &store, "d/link") == want);
}
