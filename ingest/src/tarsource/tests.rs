use super::*;
use crate::pipeline::memstore::{MemStore, TarB};
use crate::pipeline::PipelineConfig;
use catalog_writer::hash::ContentHash;
use catalog_writer::tree::Node;
use std::io::{Cursor, Read, Write};
use std::sync::Arc;
use tar::EntryType;

fn run(bytes: Vec<u8>) -> Result<(Dir, Arc<MemStore>)> {
    let store = Arc::new(MemStore::default());
    let p = ObjectPipeline::new(store.clone(), None, PipelineConfig::default())?;
    let opts = TarOptions {
        archive_name: "test.tar".into(),
        ..TarOptions::default()
    };
    let dir = tree_from_tar(Cursor::new(bytes), &p, &opts)?;
    p.finish()?;
    Ok((dir, store))
}

fn get<'a>(dir: &'a Dir, path: &str) -> &'a Node {
    let mut cur = dir;
    let comps: Vec<&str> = path.split('/').collect();
    for (i, c) in comps.iter().enumerate() {
        let n = cur
            .children
            .get(c.as_bytes())
            .unwrap_or_else(|| panic!("{path}: no {c}"));
        if i + 1 == comps.len() {
            return n;
        }
        match n {
            Node::Dir(d) => cur = d,
            Node::Leaf(_) => panic!("{c} is not a dir"),
        }
    }
    unreachable!()
}

fn names_of(dir: &Dir, path: &str) -> Vec<Vec<u8>> {
    match get(dir, path) {
        Node::Dir(d) => d.children.keys().cloned().collect(),
        Node::Leaf(_) => panic!("{path} is not a dir"),
    }
}

fn file_hash(n: &Node) -> ContentHash {
    match &n.entry().kind {
        EntryKind::File {
            data: FileData::Whole(h),
            ..
        } => *h,
        k => panic!("not a whole file: {k:?}"),
    }
}

#[test]
fn all_member_types() {
    let tar = TarB::new()
        .dir("./", 0o711)
        .dir("./bin/", 0o755)
        .file_mode("./bin/su", 0o4755, b"hello\n")
        .hardlink("./bin/su2", "./bin/su")
        .symlink("./bin/sh", "../usr/bin/$(ARCH)")
        .device("./dev/null", EntryType::Char, 1, 3)
        .device("./dev/sda1", EntryType::Block, 8, 1)
        .raw(b"./dev/fifo", EntryType::Fifo, 0o644, b"", None)
        .finish();
    let (root, store) = run(tar).unwrap();
    assert_eq!(root.meta.perm, 0o711);
    let su = get(&root, "bin/su").entry();
    assert_eq!(su.perm, 0o4755);
    assert_eq!(su.mtime, 1_700_000_000);
    assert_eq!(
        file_hash(get(&root, "bin/su")).to_hex(),
        "5798f7f4ca7585d850eea64610a1f73d8f8de7a3"
    );
    assert_eq!(store.len(), 1);
    let su2 = get(&root, "bin/su2").entry();
    assert!(su.hardlink.is_some());
    assert_eq!(su.hardlink, su2.hardlink);
    assert_eq!(su.kind, su2.kind);
    assert_eq!(
        get(&root, "bin/sh").entry().kind,
        EntryKind::Symlink {
            target: b"../usr/bin/$(ARCH)".to_vec()
        }
    );
    assert_eq!(
        get(&root, "dev/null").entry().kind,
        EntryKind::CharDevice { rdev: 259 }
    );
    assert_eq!(
        get(&root, "dev/sda1").entry().kind,
        EntryKind::BlockDevice { rdev: 2049 }
    );
    assert_eq!(get(&root, "dev/fifo").entry().kind, EntryKind::Fifo);
    // "dev" had no member: placeholder 0755 0:0.
    let dev = get(&root, "dev").entry();
    assert_eq!((dev.perm, dev.uid, dev.gid), (0o755, 0, 0));
}

#[test]
fn placeholder_dirs_get_real_metadata_later_and_later_entries_win() {
    let tar = TarB::new()
        .file("a/b/c", b"one")
        .dir("a/", 0o700)
        .file("a/b/c", b"two")
        .finish();
    let (root, store) = run(tar).unwrap();
    assert_eq!(get(&root, "a").entry().perm, 0o700);
    assert_eq!(get(&root, "a/b").entry().perm, 0o755);
    let h = file_hash(get(&root, "a/b/c"));
    assert_eq!(
        store.get_inflated(&h, catalog_writer::hash::Suffix::None),
        b"two"
    );
    assert_eq!(root.meta.perm, 0o755);
    if let Node::Dir(a) = get(&root, "a") {
        assert_eq!(a.children.len(), 1, "re-declaring a dir keeps its contents");
    }
}

#[test]
fn hostile_paths_are_refused() {
    let cases: [&[u8]; 5] = [
        b"/etc/passwd",
        b"a/../../etc/passwd",
        b"../x",
        b"a/./../b",
        b"",
    ];
    for name in cases {
        let tar = TarB::new()
            .raw(name, EntryType::Regular, 0o644, b"x", None)
            .finish();
        let err = run(tar).unwrap_err().to_string();
        assert!(err.starts_with("test.tar: "), "{err}");
        assert!(err.contains(&*String::from_utf8_lossy(name)), "{err}");
    }
    // Longer than any path tool can name, and deeper than the tree walks allow (GNU
    // long-name members).
    let too_long = format!("{}ff", "ab/".repeat(1365));
    let tar = TarB::new().long_file(&too_long, b"x").finish();
    let err = run(tar).unwrap_err().to_string();
    assert!(err.contains("member name of 4097 bytes"), "{err}");
    let too_deep = format!("{}f", "d/".repeat(MAX_DEPTH));
    let tar = TarB::new().long_file(&too_deep, b"x").finish();
    let err = run(tar).unwrap_err().to_string();
    assert!(err.contains("a path of 513 levels (at most 512)"), "{err}");
    // Not hostile: what other readers take as `a/b`, and the longest name taken.
    let longest = format!("{}fffffff", "ddddddd/".repeat(MAX_DEPTH - 1));
    assert_eq!(longest.len(), 4095);
    let tar = TarB::new()
        .raw(b"a//b", EntryType::Regular, 0o644, b"1", None)
        .raw(b"./c/./d", EntryType::Regular, 0o644, b"2", None)
        .long_file(&longest, b"3")
        .finish();
    let (root, _) = run(tar).unwrap();
    get(&root, "a/b");
    get(&root, "c/d");
    get(&root, &longest);
    // NUL inside a PAX path.
    let tar = TarB::new()
        .pax(&[("path", b"a\0b")])
        .file("x", b"")
        .finish();
    assert!(run(tar).unwrap_err().to_string().contains("NUL"));
    // A hardlink may not point outside either.
    let tar = TarB::new().file("a", b"").hardlink("b", "../a").finish();
    assert!(run(tar).unwrap_err().to_string().contains("'..'"));
    // Not hostile: a `/` member for the root and a hard link target written from the root
    // (kaniko), both read inside it, as Docker and GNU tar do.
    let tar = TarB::new()
        .raw(b"/", EntryType::Directory, 0o700, b"", None)
        .file("a", b"x")
        .raw(b"b", EntryType::Link, 0o644, b"", Some(b"/a"))
        .finish();
    let (root, _) = run(tar).unwrap();
    assert_eq!(root.meta.mode() & 0o7777, 0o700);
    assert_eq!(file_hash(get(&root, "b")), file_hash(get(&root, "a")));
    // A hard link to the root, however written, is refused as one.
    for target in [&b"/."[..], b"./", b"."] {
        let tar = TarB::new()
            .raw(b"b", EntryType::Link, 0o644, b"", Some(target))
            .finish();
        let err = run(tar).unwrap_err().to_string();
        assert!(
            err.contains("b: hardlink target: the archive's root"),
            "{err}"
        );
    }
}

#[test]
fn pax_and_gnu_extensions() {
    let long = format!("{}/{}", "d".repeat(120), "f".repeat(150));
    let long2 = format!("{}/g", "e".repeat(200));
    let tar = TarB::new()
        .pax(&[
            ("path", long.as_bytes()),
            ("mtime", b"1700000000.25"),
            ("uid", b"3000000000"),
            ("gid", b"4000000000"),
            ("SCHILY.xattr.user.foo", b"bar\0baz"),
            ("SCHILY.xattr.security.capability", b"\x01\x00"),
            ("LIBARCHIVE.xattr.user.sp%20ace", b"dmFs"),
        ])
        .file("placeholder", b"data")
        .long_file(&long2, b"gnu")
        .pax(&[("mtime", b"-1.5")])
        .file("neg", b"")
        .finish();
    let (root, _) = run(tar).unwrap();
    let e = get(&root, &long).entry();
    assert_eq!((e.mtime, e.mtime_ns), (1_700_000_000, Some(250_000_000)));
    assert_eq!((e.uid, e.gid), (3_000_000_000, 4_000_000_000));
    assert_eq!(e.xattrs.get(&b"user.foo"[..]).unwrap(), b"bar\0baz");
    assert_eq!(
        e.xattrs.get(&b"security.capability"[..]).unwrap(),
        b"\x01\x00"
    );
    assert_eq!(e.xattrs.get(&b"user.sp ace"[..]).unwrap(), b"val");
    assert!(!root.children.contains_key(&b"placeholder"[..]));
    assert!(matches!(
        get(&root, &long2).entry().kind,
        EntryKind::File { size: 3, .. }
    ));
    let n = get(&root, "neg").entry();
    assert_eq!((n.mtime, n.mtime_ns), (-2, Some(500_000_000)));
    let tar = TarB::new()
        .pax(&[("uid", b"5000000000")])
        .file("x", b"")
        .finish();
    assert!(run(tar).unwrap_err().to_string().contains("uid"));
}

/// PAX records are as long as their length prefix says, so a value may hold newlines: a binary
/// `security.capability` often does (e.g. telegraf's). The tar crate splits records at
/// newlines; the guard's own reading of the block is what counts.
#[test]
fn pax_values_with_newlines_are_read_by_their_length() {
    let cap = b"\x01\x00\x00\x02\x0a\x20\x00\x00\x0a\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
    let tar = TarB::new()
        .pax(&[
            ("SCHILY.xattr.security.capability", cap.as_slice()),
            (
                "SCHILY.xattr.user.note",
                b"line one\n13 path=evil\nline three",
            ),
            ("mtime", b"1700000000.5"),
            ("uid", b"3000000000"),
        ])
        .file("usr/bin/telegraf", b"binary")
        .finish();
    let (root, _) = run(tar).unwrap();
    assert!(!root.children.contains_key(&b"evil"[..]));
    let e = get(&root, "usr/bin/telegraf").entry();
    assert_eq!(e.xattrs.get(&b"security.capability"[..]).unwrap(), cap);
    assert_eq!(
        e.xattrs.get(&b"user.note"[..]).unwrap(),
        b"line one\n13 path=evil\nline three"
    );
    assert_eq!((e.mtime, e.mtime_ns), (1_700_000_000, Some(500_000_000)));
    // Hidden from the crate by the record before it, but the member's owner all the same.
    assert_eq!(e.uid, 3_000_000_000);

    // A name with a newline (the crate would take the header's name), and a link to it.
    let tar = TarB::new()
        .pax(&[("path", b"dir/new\nline")])
        .file("dir/placeholder", b"x")
        .pax(&[("path", b"sym\nlink"), ("linkpath", b"dir/new\nline")])
        .symlink("placeholder2", "elsewhere")
        .finish();
    let (root, _) = run(tar).unwrap();
    assert_eq!(names_of(&root, "dir"), vec![b"new\nline".to_vec()]);
    assert_eq!(
        root.children.keys().cloned().collect::<Vec<_>>(),
        vec![b"dir".to_vec(), b"sym\nlink".to_vec()]
    );
    assert_eq!(
        root.children[&b"sym\nlink"[..]].entry().kind,
        EntryKind::Symlink {
            target: b"dir/new\nline".to_vec()
        }
    );
    // An empty `path` or `linkpath` deletes the record: the header's name counts (as Go).
    let tar = TarB::new()
        .pax(&[("path", b""), ("linkpath", b"")])
        .symlink("s", "target")
        .finish();
    let (root, _) = run(tar).unwrap();
    assert_eq!(
        get(&root, "s").entry().kind,
        EntryKind::Symlink {
            target: b"target".to_vec()
        }
    );
    // A size the crate cannot see behind such a record, differing from the header's.
    let tar = TarB::new()
        .pax(&[("SCHILY.xattr.user.a", b"x\ny"), ("size", b"0")])
        .file("victim", b"tiny")
        .finish();
    let err = run(tar).unwrap_err().to_string();
    assert!(
        err.contains("PAX size 0 disagrees with the member's 4"),
        "{err}"
    );
    // A block whose lengths do not add up is refused, naming where.
    let mut tar = TarB::new();
    tar.raw(
        b"PaxHeader",
        EntryType::XHeader,
        0o644,
        b"99 path=x\n",
        None,
    )
    .file("victim", b"");
    let err = run(tar.finish()).unwrap_err().to_string();
    assert!(err.contains("malformed PAX record at byte 0"), "{err}");
    assert!(
        err.contains("victim"),
        "names the member by its header: {err}"
    );
}

/// A plain tar stream cut between two members (a producer killed after whole records) is
/// not taken for a complete archive of fewer members.
#[test]
fn an_archive_without_its_end_block_is_refused() {
    let whole = TarB::new().file("a", &[b'a'; 600]).file("b", b"b").finish();
    assert!(run(whole.clone()).is_ok());
    // After member `a` (header + two data blocks), before `b`.
    let err = run(whole[..3 * 512].to_vec()).unwrap_err().to_string();
    assert!(err.contains("without its end-of-archive block"), "{err}");
    // One zero block is an end, as for GNU tar.
    let one = [&whole[..5 * 512], &[0u8; 512][..]].concat();
    assert!(run(one).is_ok());
}

#[test]
fn a_pax_global_header_is_skipped() {
    // What `git archive` writes first: a `g` member whose records apply to no entry of ours.
    let commit = b"52 comment=0123456789abcdef0123456789abcdef01234567\n";
    assert_eq!(commit.len(), 52);
    let tar = TarB::new()
        .pax_global(&[("comment", &commit[11..51])])
        .file("README", b"hello\n")
        .finish();
    let (root, _) = run(tar).unwrap();
    assert!(matches!(
        get(&root, "README").entry().kind,
        EntryKind::File { size: 6, .. }
    ));
    assert!(!root.children.contains_key(&b"pax_global_header"[..]));
}

#[test]
fn pax_numbers_other_readers_would_refuse_are_refused() {
    let cases: [(&str, &[u8], &str); 6] = [
        ("size", b"99999999999999999999999", "bad PAX size"),
        ("size", b"-5", "bad PAX size \"-5\""),
        ("size", b"", "bad PAX size"),
        ("uid", b"12abc", "bad PAX uid"),
        ("gid", b"+7", "bad PAX gid"),
        ("size", b"4 ", "bad PAX size"),
    ];
    for (key, value, expected) in cases {
        let tar = TarB::new()
            .pax(&[(key, value)])
            .file("victim", b"tiny")
            .finish();
        let err = run(tar).unwrap_err().to_string();
        assert!(err.starts_with("test.tar: victim: "), "{err}");
        assert!(err.contains(expected), "{key}={value:?}: {err}");
    }
    // Two sizes: the tar crate reads the first, another reader the last.
    let tar = TarB::new()
        .pax(&[("size", b"4"), ("size", b"0")])
        .file("victim", b"tiny")
        .finish();
    let err = run(tar).unwrap_err().to_string();
    assert!(
        err.contains("PAX size 0 disagrees with the member's 4"),
        "{err}"
    );
    // A valid PAX size equal to the data is fine.
    let tar = TarB::new()
        .pax(&[("size", b"4"), ("uid", b"0")])
        .file("ok", b"tiny")
        .finish();
    let (root, _) = run(tar).unwrap();
    assert!(matches!(
        get(&root, "ok").entry().kind,
        EntryKind::File { size: 4, .. }
    ));
}

#[test]
fn bad_links() {
    let tar = TarB::new().hardlink("b", "a").finish();
    let err = run(tar).unwrap_err().to_string();
    assert!(err.contains("test.tar: b: hardlink target a"), "{err}");
    let tar = TarB::new().dir("d/", 0o755).hardlink("b", "d").finish();
    assert!(run(tar).unwrap_err().to_string().contains("directory"));
    let tar = TarB::new().file("f", b"x").file("f/g", b"y").finish();
    assert!(run(tar)
        .unwrap_err()
        .to_string()
        .contains("not a directory"));
}

#[test]
fn truncation_is_an_error() {
    let data = vec![b'z'; 100_000];
    let tar = TarB::new().file("big", &data).file("after", b"x").finish();
    // Cut in the data of the first member, and in the data of the last one.
    for cut in [50_000, tar.len() - 1024 - 512 + 1] {
        let err = run(tar[..cut].to_vec()).unwrap_err().to_string();
        assert!(
            err.contains("truncated") || err.contains("unexpected EOF"),
            "cut {cut}: {err}"
        );
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    assert!(run(gz[..gz.len() - 6].to_vec()).is_err());
    // Hostile size: the header claims 1 TiB.
    let mut h = tar::Header::new_gnu();
    h.set_size(1 << 40);
    h.set_path("huge").unwrap();
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    let mut bytes = h.as_bytes().to_vec();
    bytes.extend_from_slice(&[1u8; 4096]);
    let err = run(bytes).unwrap_err().to_string();
    assert!(err.contains("huge") && err.contains("truncated"), "{err}");
}

#[test]
fn compressed_archives() {
    let tar = TarB::new().file("a", b"hello\n").finish();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    gz.write_all(&tar).unwrap();
    let zs = zstd::encode_all(&tar[..], 3).unwrap();
    for bytes in [gz.finish().unwrap(), zs] {
        let (root, _) = run(bytes).unwrap();
        assert_eq!(
            file_hash(get(&root, "a")).to_hex(),
            "5798f7f4ca7585d850eea64610a1f73d8f8de7a3"
        );
    }
}

#[test]
fn owner_override() {
    let tar = TarB::new().file("d/f", b"").finish();
    let store = Arc::new(MemStore::default());
    let p = ObjectPipeline::new(store, None, PipelineConfig::default()).unwrap();
    let opts = TarOptions {
        owner: Some((42, 43)),
        ..TarOptions::default()
    };
    let root = tree_from_tar(Cursor::new(tar), &p, &opts).unwrap();
    for e in [
        &root.meta,
        get(&root, "d").entry(),
        get(&root, "d/f").entry(),
    ] {
        assert_eq!((e.uid, e.gid), (42, 43));
    }
}

#[test]
fn lone_hardlink_member_is_a_plain_file() {
    // The target is replaced after the link: the link keeps the old content and no partner.
    let tar = TarB::new()
        .file("t", b"old")
        .hardlink("l", "t")
        .file("t", b"new")
        .finish();
    let (root, store) = run(tar).unwrap();
    assert_eq!(get(&root, "l").entry().hardlink, None);
    assert_eq!(get(&root, "t").entry().hardlink, None);
    let h = file_hash(get(&root, "l"));
    assert_eq!(
        store.get_inflated(&h, catalog_writer::hash::Suffix::None),
        b"old"
    );
}

/// A GNU sparse member declaring `real` bytes, with one 512-byte data block at offset 0 and
/// a hole to the end.
fn sparse_tar(real: u64) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_size(512);
    h.as_old_mut().name[..6].copy_from_slice(b"sparse");
    let gnu = h.as_gnu_mut().unwrap();
    gnu.set_real_size(real);
    gnu.sparse[0].set_offset(0);
    gnu.sparse[0].set_length(512);
    // The map ends where the file does: a last, empty chunk at its size.
    gnu.sparse[1].set_offset(real);
    gnu.sparse[1].set_length(0);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &[7u8; 512][..]).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn a_sparse_member_may_not_declare_an_absurd_size() {
    let (root, _) = run(sparse_tar(4096)).unwrap();
    assert!(matches!(
        get(&root, "sparse").entry().kind,
        EntryKind::File { size: 4096, .. }
    ));
    let err = run(sparse_tar(1 << 50)).unwrap_err().to_string();
    assert!(
        err.contains(
            "sparse: reading the member: sparse file of 1125899906842624 bytes \
             (at most 68719476736): not read"
        ),
        "{err}"
    );
}

/// A GNU long name of 256 MiB (a few hundred KB once compressed) is refused at its header,
/// before the tar crate would read it whole into memory, in a short message.
#[test]
fn a_huge_long_name_is_refused_unread() {
    let size = 256u64 << 20;
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(EntryType::GNULongName);
    h.set_path("././@LongLink").unwrap();
    h.set_size(size);
    h.set_cksum();
    let body = std::io::repeat(b'a').take(size);
    let tar = Cursor::new(h.as_bytes().to_vec()).chain(body);
    let store = Arc::new(MemStore::default());
    let p = ObjectPipeline::new(store, None, PipelineConfig::default()).unwrap();
    let opts = TarOptions {
        archive_name: "bomb.tar".into(),
        ..TarOptions::default()
    };
    let err = tree_from_tar(tar, &p, &opts).unwrap_err().to_string();
    assert!(
        err.contains("GNU long name member of 268435456 bytes at byte 0 (at most 65536)"),
        "{err}"
    );
    assert!(err.starts_with("bomb.tar: ") && err.len() < 300, "{err}");
}

/// A file of 1 MiB with `hello` at 500 000 and `tail` at its end, and a PAX member holding it
/// in sparse format `version` as GNU tar 1.34 writes it (`tar --format=pax --sparse
/// --sparse-version=V`): the header names `d/GNUSparseFile.1/holey` in 0.1 and 1.0.
pub(super) fn pax_sparse_member(version: &str) -> (Vec<u8>, Vec<u8>) {
    let size = 1 << 20;
    let mut file = vec![0u8; size];
    file[500_000..500_005].copy_from_slice(b"hello");
    file.extend_from_slice(b"tail");
    let regions: [(usize, usize); 2] = [(499_712, 4096), (size, 4)];
    let mut data: Vec<u8> = Vec::new();
    let real = file.len().to_string();
    let map01 = format!("499712,4096,{size},4,{},0", file.len());
    let mut records: Vec<(&str, &[u8])> = Vec::new();
    let name = match version {
        "0.0" => {
            records.push(("GNU.sparse.size", real.as_bytes()));
            records.push(("GNU.sparse.numblocks", b"2"));
            records.push(("GNU.sparse.offset", b"499712"));
            records.push(("GNU.sparse.numbytes", b"4096"));
            records.push(("GNU.sparse.offset", b"1048576"));
            records.push(("GNU.sparse.numbytes", b"4"));
            "d/holey"
        }
        "0.1" => {
            records.push(("GNU.sparse.size", real.as_bytes()));
            records.push(("GNU.sparse.name", b"d/holey"));
            records.push(("GNU.sparse.map", map01.as_bytes()));
            "d/GNUSparseFile.1/holey"
        }
        _ => {
            records.push(("GNU.sparse.major", b"1"));
            records.push(("GNU.sparse.minor", b"0"));
            records.push(("GNU.sparse.name", b"d/holey"));
            records.push(("GNU.sparse.realsize", real.as_bytes()));
            data.extend(format!("2\n499712\n4096\n{size}\n4\n").bytes());
            data.resize(512, 0);
            "d/GNUSparseFile.1/holey"
        }
    };
    for (offset, len) in regions {
        data.extend_from_slice(&file[offset..offset + len]);
    }
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions(records).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_size(data.len() as u64);
    h.set_mode(0o640);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    b.append_data(&mut h, name, data.as_slice()).unwrap();
    (b.into_inner().unwrap(), file)
}

/// A sparse file in PAX format, in each of GNU tar's three layouts, is published under its
/// real name with its holes as zeros (as Go's archive/tar, which Docker uses, reads it), not
/// as the made-up `GNUSparseFile.N` member with a map in its data.
#[test]
fn pax_format_sparse_files_are_expanded_under_their_real_names() {
    for version in ["0.0", "0.1", "1.0"] {
        let (tar, file) = pax_sparse_member(version);
        let (root, store) = run(tar).unwrap();
        assert_eq!(names_of(&root, "d"), [b"holey".to_vec()], "{version}");
        let node = get(&root, "d/holey");
        assert!(
            matches!(node.entry().kind, EntryKind::File { size, .. } if size == file.len() as u64),
            "{version}: {:?}",
            node.entry().kind
        );
        assert_eq!(node.entry().perm, 0o640);
        let stored = store.get_inflated(&file_hash(node), catalog_writer::hash::Suffix::None);
        assert!(stored == file, "{version}: other content");
    }
}

/// A PAX sparse file whose map places less or more data than the member holds, or lies
/// outside the file, is refused by name; so are formats other than 0.0, 0.1 and 1.0.
#[test]
fn pax_sparse_files_that_do_not_add_up_are_refused() {
    let member = |records: Vec<(&str, &[u8])>, data: &[u8]| {
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions(records).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "GNUSparseFile.7/f", data).unwrap();
        run(b.into_inner().unwrap()).unwrap_err().to_string()
    };
    let v01 = |map: &'static str| {
        vec![
            ("GNU.sparse.size", &b"100"[..]),
            ("GNU.sparse.name", b"f"),
            ("GNU.sparse.map", map.as_bytes()),
        ]
    };
    let short = member(v01("10,20"), &[1u8; 5]);
    assert!(
        short.contains("test.tar: f: ") && short.contains("ends before its map"),
        "{short}"
    );
    let long = member(v01("10,2"), &[1u8; 5]);
    assert!(long.contains("more data than its map places"), "{long}");
    let outside = member(v01("90,20"), &[1u8; 20]);
    assert!(outside.contains("f: sparse map region 90+20"), "{outside}");
    let v2 = member(
        vec![("GNU.sparse.major", &b"2"[..]), ("GNU.sparse.minor", b"0")],
        b"",
    );
    assert!(
        v2.contains("GNU sparse format 2.0 is not supported"),
        "{v2}"
    );
}

/// A header-only member (link, directory, device, FIFO) declaring data: Go's archive/tar
/// (Docker, containerd) reads the next header right after it, so a member hidden in the
/// "data" is extracted there while the tar crate would skip it. Such archives are refused.
#[test]
fn a_header_only_member_declaring_data_is_refused() {
    let without_end = |tar: Vec<u8>| tar[..tar.len() - 1024].to_vec();
    let hidden = without_end(TarB::new().file("smuggled", b"seen by Go\n").finish());
    assert_eq!(hidden.len(), 1024);
    let cases = [
        (EntryType::Symlink, Some(&b"keep"[..]), "symbolic link"),
        (EntryType::Link, Some(&b"keep"[..]), "hard link"),
        (EntryType::Directory, None, "directory"),
        (EntryType::Fifo, None, "FIFO"),
        (EntryType::Char, None, "character device"),
    ];
    for (ty, link, what) in cases {
        let tar = TarB::new()
            .file("keep", b"keep\n")
            .raw(b"hider", ty, 0o755, &hidden, link)
            .finish();
        let err = run(tar).unwrap_err().to_string();
        assert!(
            err.contains(&format!("a {what} member declaring 1024 bytes of data")),
            "{ty:?}: {err}"
        );
        assert!(err.contains("hider"), "names the member: {err}");
    }
    // The size may come from a PAX record too.
    let head = without_end(
        TarB::new()
            .pax(&[("size", b"1024")])
            .symlink("hider", "keep")
            .finish(),
    );
    let tar = [head, hidden, vec![0u8; 1024]].concat();
    let err = run(tar).unwrap_err().to_string();
    assert!(err.contains("declaring 1024 bytes"), "{err}");
}

/// A member the tar crate refuses before handing it out (an old-GNU sparse map that ends
/// before the file's size: a trailing hole) is named by its header; a stream that fails
/// before any header names the archive.
#[test]
fn a_member_refused_before_it_is_handed_out_is_named() {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(EntryType::GNUSparse);
    h.set_path("sparse.img").unwrap();
    h.set_mode(0o644);
    h.set_size(5);
    let gnu = h.as_gnu_mut().unwrap();
    gnu.sparse[0].offset = *b"00000010000\0";
    gnu.sparse[0].numbytes = *b"00000000005\0";
    gnu.realsize = *b"00000020000\0";
    h.set_cksum();
    let mut tar = TarB::new().file("first", b"1").finish();
    tar.truncate(tar.len() - 1024);
    tar.extend_from_slice(h.as_bytes());
    tar.extend_from_slice(&[b'x'; 512]);
    tar.extend_from_slice(&[0; 1024]);
    let err = run(tar).unwrap_err().to_string();
    assert!(
        err.contains("test.tar: sparse.img: reading the member:"),
        "{err}"
    );
    // A zstd stream with a broken frame: the archive's compression, not a member.
    let mut zst = zstd::encode_all(&TarB::new().file("a", b"a").finish()[..], 3).unwrap();
    let mid = zst.len() / 2;
    zst[mid] ^= 0xff;
    let err = run(zst).unwrap_err().to_string();
    assert!(err.starts_with("test.tar: reading the archive: "), "{err}");
}

/// What follows the end-of-archive blocks is read (a record's padding, a compressed stream's
/// checksum), but not for ever: an input that goes on after the archive (found by fuzzing: a
/// tar then /dev/zero on a pipe) fails after 64 MiB instead of holding the lock for good.
#[test]
fn an_archive_followed_by_endless_data_fails_instead_of_reading_for_ever() {
    let tar = TarB::new().file("f", b"x").finish();
    let padded = [tar.clone(), vec![0u8; 10 << 10]].concat();
    run(padded).unwrap();
    let store = Arc::new(MemStore::default());
    let p = ObjectPipeline::new(store, None, PipelineConfig::default()).unwrap();
    let endless = Cursor::new(tar).chain(std::io::repeat(0));
    let opts = TarOptions {
        archive_name: "stdin".into(),
        ..TarOptions::default()
    };
    let err = tree_from_tar(endless, &p, &opts).unwrap_err().to_string();
    assert!(
        err.contains("stdin: after the end of the archive: more than 64 MiB of data after"),
        "{err}"
    );
}
