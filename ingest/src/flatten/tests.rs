use super::*;
use crate::pipeline::memstore::{MemStore, TarB};
use crate::pipeline::{PipelineConfig, PipelineStats};
use catalog_writer::entry::{EntryKind, FileData};
use catalog_writer::hash::{ContentHash, Suffix};
use catalog_writer::tree::Node;
use publisher::store::ObjectStore;
use std::io::Cursor;
use std::sync::Arc;

fn layer(name: &str, bytes: Vec<u8>) -> LayerInput {
    LayerInput {
        name: name.into(),
        open: Box::new(move || Ok(Box::new(Cursor::new(bytes)) as Box<dyn Read + Send>)),
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
