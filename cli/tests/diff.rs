//! `diff` between two revisions, in `cvmfs_server diff`'s formats and order; `list-catalogs`.

mod common;

use common::{Env, FQRN};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const T: u64 = 1_700_000_000;

/// Sets `path`'s mtime (not following a symlink) to `secs`.
fn set_mtime(path: &Path, secs: u64) {
    let status = Command::new("touch")
        .args(["-h", "-d", &format!("@{secs}")])
        .arg(path)
        .status()
        .expect("touch");
    assert!(status.success());
}

fn file(root: &Path, rel: &str, content: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, content).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    set_mtime(&path, T);
}

/// Every directory (and symlink) of `root` at mtime `T`, so that only what a test changes on
/// purpose differs between two trees.
fn settle(root: &Path) {
    let mut dirs = vec![root.to_path_buf()];
    let mut all = Vec::new();
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                dirs.push(e.path());
            }
            if t.is_dir() || t.is_symlink() {
                all.push(e.path());
            }
        }
        all.push(d);
    }
    for p in all {
        set_mtime(&p, T);
    }
}

fn first_tree(root: &Path) {
    file(root, "a.txt", "hello", 0o644);
    file(root, "same.txt", "same", 0o644);
    file(root, "touched.txt", "t", 0o644);
    file(root, "gone/c", "y", 0o644);
    file(root, "stable/.cvmfscatalog", "", 0o644);
    file(root, "stable/s1", "s", 0o644);
    file(root, "sub/b", "x", 0o644);
    std::os::unix::fs::symlink("a.txt", root.join("link")).unwrap();
    settle(root);
}

fn second_tree(root: &Path) {
    file(root, "a.txt", "hello2", 0o644);
    file(root, "same.txt", "same", 0o644);
    file(root, "touched.txt", "t", 0o644);
    file(root, "stable/.cvmfscatalog", "", 0o644);
    file(root, "stable/s1", "s", 0o644);
    file(root, "sub/b", "x", 0o700);
    file(root, "new/f", "n", 0o644);
    file(root, "new/g", "gg", 0o644);
    std::os::unix::fs::symlink("sub", root.join("link")).unwrap();
    settle(root);
    set_mtime(&root.join("touched.txt"), T + 10);
}

/// The catalog objects (`data/XX/…C`) of the storage.
fn catalogs(storage: &Path) -> BTreeSet<std::path::PathBuf> {
    let mut out = BTreeSet::new();
    for d in std::fs::read_dir(storage.join("data")).unwrap().flatten() {
        for f in std::fs::read_dir(d.path()).unwrap().flatten() {
            if f.file_name().to_string_lossy().ends_with('C') {
                out.insert(f.path());
            }
        }
    }
    out
}

#[test]
fn diff_reports_changes_as_cvmfs_server_diff_does() {
    let env = Env::init(&[]);
    let (one, two) = (env.path("one"), env.path("two"));
    first_tree(&one);
    second_tree(&two);
    let at_init = catalogs(&env.storage);
    env.ok(&["publish", FQRN, one.to_str().unwrap()]);
    let after_one = catalogs(&env.storage);
    env.ok(&["publish", FQRN, two.to_str().unwrap()]);

    // Shorter names first; an added directory before its contents, a removed one after; the
    // unchanged nested catalog at /stable is skipped.
    let machine = "S F 1\nS S 0\nS D 0\nS N 0\n\
        A D /new\nA F /new/f +1\nA F /new/g +2\n\
        M[M] F /sub/b\n\
        R F /gone/c -1\nR D /gone\n\
        M[SL] S /link\n\
        M[SC] F /a.txt\n\
        M[T] F /touched.txt\n";
    assert_eq!(env.ok(&["diff", FQRN, "-m"]), machine);
    let human = env.ok(&["diff", FQRN, "--header"]);
    let (header, rest) = human.split_once('\n').unwrap();
    assert!(
        header.starts_with("DELTA: trunk-previous/r2 (") && header.contains(") --> trunk/r3 ("),
        "{header}"
    );
    assert_eq!(
        rest,
        "d(# regular files): 1\nd(# symlinks): 0\nd(# directories): 0\nd(# catalogs): 0\n\
         /new add directory +4096 bytes\n/new/f add file +1 bytes\n/new/g add file +2 bytes\n\
         /sub/b modify file [mode]\n\
         /gone/c remove file -1 bytes\n/gone remove directory -4096 bytes\n\
         /link modify symlink [size, symlink-target]\n\
         /a.txt modify file [size, content]\n\
         /touched.txt modify file [timestamp]\n"
    );
    // -i leaves out what only changed its mtime.
    let ignoring = env.ok(&["diff", FQRN, "-m", "-i"]);
    assert_eq!(ignoring, machine.replace("M[T] F /touched.txt\n", ""));
    // The other way round, and a revision against itself.
    let back = env.ok(&[
        "diff",
        FQRN,
        "-m",
        "--from",
        "trunk",
        "--to",
        "trunk-previous",
    ]);
    assert!(
        back.starts_with("S F -1\n") && back.contains("R D /new\n") && back.contains("A D /gone\n"),
        "{back}"
    );
    let none = env.ok(&["diff", FQRN, "-m", "--from", "trunk", "--to", "trunk"]);
    assert_eq!(none, "S F 0\nS S 0\nS D 0\nS N 0\n");

    let json = env.ok(&["--json", "diff", FQRN]);
    let events: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 4 + 9);
    assert_eq!(events[0]["counter"], "regular_files");
    assert_eq!(events[0]["delta"], 1);
    let link = events.iter().find(|e| e["path"] == "/link").unwrap();
    assert_eq!(link["op"], "modify");
    assert_eq!(
        link["changes"],
        serde_json::json!(["size", "symlink-target"])
    );

    // The nested catalog both revisions share is never opened: without its object the diff
    // is the same (while `check` misses it).
    let tags = env.ok(&["--json", "tag", FQRN]);
    let first_root = tags
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|t| t["name"] == "trunk-previous")
        .unwrap()["root"]
        .as_str()
        .unwrap()
        .to_owned();
    let nested: Vec<_> = after_one
        .difference(&at_init)
        .filter(|p| !p.to_string_lossy().contains(&first_root[2..]))
        .collect();
    assert_eq!(nested.len(), 1, "{nested:?}");
    std::fs::remove_file(nested[0]).unwrap();
    assert_eq!(env.ok(&["diff", FQRN, "-m"]), machine);
    assert!(!env.run(&["check", FQRN]).status.success());

    let err = env.fails(&["diff", FQRN, "--from", "no-such-tag"]);
    assert!(err.contains("no-such-tag"), "{err}");
}

/// Nested catalogs listed as `cvmfs_swissknife lsrepo` does: each catalog before the ones it
/// links to, taken from a stack (the last linked first).
#[test]
fn list_catalogs_walks_the_tree_as_lsrepo() {
    let env = Env::init(&[]);
    let src = env.path("src");
    for marker in ["a", "a/b", "a/b/c", "z"] {
        file(&src, &format!("{marker}/.cvmfscatalog"), "", 0o644);
    }
    file(&src, "a/b/c/f", "f", 0o644);
    env.ok(&["publish", FQRN, src.to_str().unwrap()]);
    let out = env.ok(&["list-catalogs", FQRN]);
    assert_eq!(out, "/\n├─ /z\n├─ /a\n│  ├─ /a/b\n│  │  ├─ /a/b/c\n");
    let out = env.ok(&["list-catalogs", FQRN, "-x", "-e"]);
    // Root: itself, a, z; a: itself, its marker, b; b likewise; c: itself, marker, f.
    assert_eq!(out, "3 /\n2 /z\n3 /a\n3 /a/b\n3 /a/b/c\n");
    let json = env.ok(&["--json", "list-catalogs", FQRN]);
    let first: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(
        (first["level"].as_u64(), first["mountpoint"].as_str()),
        (Some(0), Some("/"))
    );
    assert_eq!(first["size"].as_u64().unwrap() % 1024, 0);
}

/// `diff` and `list-catalogs` read only a repository whose signatures verify as `check`
/// verifies them: with `--key` for a storage of any origin, with the repository's own public
/// key for the home's. A stratum 1 signed by another key, or with a manifest altered after
/// signing, is refused on one line naming the storage, not listed as fact.
#[test]
fn diff_and_list_catalogs_refuse_an_unverified_storage() {
    let env = Env::init(&[]);
    let src = env.path("src");
    file(&src, "a.txt", "one", 0o644);
    env.ok(&["publish", FQRN, src.to_str().unwrap()]);
    file(&src, "nested/.cvmfscatalog", "", 0o644);
    file(&src, "nested/b.txt", "two", 0o644);
    env.ok(&["publish", FQRN, src.to_str().unwrap()]);
    let key = env.home.join(FQRN).join("keys").join(format!("{FQRN}.pub"));
    let key = key.to_str().unwrap();
    let storage = env.storage.to_str().unwrap();
    fn diff<'a>(storage: &'a str, key: &[&'a str]) -> Vec<&'a str> {
        [&["diff", FQRN, "-m", "--storage", storage][..], key].concat()
    }
    fn list<'a>(storage: &'a str, key: &[&'a str]) -> Vec<&'a str> {
        [&["list-catalogs", FQRN, "--storage", storage][..], key].concat()
    }

    // The genuine repository, from its directory and as a stratum 1 over HTTP.
    let listing = "/\n├─ /nested\n";
    assert_eq!(env.ok(&list(storage, &["--key", key])), listing);
    let changes = env.ok(&diff(storage, &["--key", key]));
    assert!(changes.contains("A F /nested/b.txt +3"), "{changes}");
    let server = fixtures::witness::serve_repository(&env.storage).expect("serve storage");
    let url = server.url();
    assert_eq!(env.ok(&list(&url, &["--key", key])), listing);
    assert_eq!(env.ok(&diff(&url, &["--key", key])), changes);

    // A foreign storage without a key to verify it with.
    for args in [list(storage, &[]), diff(storage, &[])] {
        let line = env.fails(&args);
        assert!(
            line.contains(storage) && line.contains("no --key"),
            "{args:?}: {line}"
        );
    }

    // A repository of the same name signed by other keys, served as if it were this one.
    let forged = Env::init(&[]);
    forged.ok(&["publish", FQRN, src.to_str().unwrap()]);
    let forged_storage = forged.storage.to_str().unwrap();
    for args in [
        list(forged_storage, &["--key", key]),
        diff(forged_storage, &["--key", key]),
    ] {
        let line = env.fails(&args);
        assert!(
            line.contains(forged_storage) && line.contains(".cvmfswhitelist"),
            "{args:?}: {line}"
        );
    }

    // This repository's manifest changed after it was signed (the revision raised), served
    // over HTTP and in the home's own storage.
    let manifest_path = env.storage.join(".cvmfspublished");
    let genuine = std::fs::read(&manifest_path).unwrap();
    let text = String::from_utf8_lossy(&genuine).into_owned();
    let tampered = text.replacen("\nS3\n", "\nS4\n", 1);
    assert_ne!(tampered, text, "the manifest names revision 3: {text}");
    std::fs::write(&manifest_path, tampered).unwrap();
    for args in [
        list(&url, &["--key", key]),
        diff(&url, &["--key", key]),
        vec!["list-catalogs", FQRN],
        vec!["diff", FQRN],
    ] {
        let line = env.fails(&args);
        assert!(
            line.contains(storage) || line.contains(&url),
            "{args:?} names the storage: {line}"
        );
        assert!(line.contains(".cvmfspublished"), "{args:?}: {line}");
    }
    // The same refusal with --json: one JSON error line on stdout, nothing else.
    let out = env.run(&["--json", "list-catalogs", FQRN]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    std::fs::write(&manifest_path, genuine).unwrap();
    assert_eq!(env.ok(&["list-catalogs", FQRN]), listing);
}

/// Names with a newline or bytes that are not UTF-8: each change stays one line in `-m`
/// output, and `--json` tells two such names apart by their bytes (`path_hex`).
#[test]
fn odd_names_keep_diff_lines_whole_and_apart() {
    use std::os::unix::ffi::OsStrExt;
    let env = Env::init(&[]);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    env.ok(&["publish", FQRN, src.to_str().unwrap()]);
    for name in [&b"evil\nS F 1000000"[..], b"n\xff\xfe", b"n\xfe\xff"] {
        std::fs::write(src.join(std::ffi::OsStr::from_bytes(name)), b"x").unwrap();
    }
    env.ok(&["publish", FQRN, src.to_str().unwrap()]);
    let machine = env.ok(&["diff", FQRN, "-m"]);
    let stats: Vec<&str> = machine.lines().filter(|l| l.starts_with("S ")).collect();
    assert_eq!(stats.len(), 4, "{machine}");
    assert!(machine.contains("A F /evil\\nS F 1000000 +1"), "{machine}");
    let json = env.ok(&["--json", "diff", FQRN]);
    let hex: BTreeSet<String> = json
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|e| e["path_hex"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(hex, BTreeSet::from(["2f6efeff".into(), "2f6efffe".into()]));
}
