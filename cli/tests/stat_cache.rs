//! `publish`'s stat cache end to end: an unchanged file is not read again, every kind of
//! change is noticed (content with size and mtime restored, a file renamed over, chmod, a
//! write inside the racy window), content removed by `gc` is read and stored again, `--rescan`
//! reads everything, and a crashed or failed publish leaves nothing wrong behind. Every
//! outcome is read back from the repository through the independent `cvmfs` crate.

mod common;

use common::{assert_matches_source, noise, Env, FQRN};
use std::fs::{File, FileTimes};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A file's state is trusted only once its mtime and ctime are 2 s old (the racy window).
fn settle() {
    std::thread::sleep(Duration::from_millis(2100));
}

fn last_json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.lines().last().unwrap_or("{}")).expect("JSON line")
}

/// Publishes `dir` (extra args appended); returns (files read, files reused, changed).
fn publish(env: &Env, dir: &Path, extra: &[&str]) -> (u64, u64, bool) {
    let args = [
        &["--json", "publish", FQRN, dir.to_str().unwrap()][..],
        extra,
    ]
    .concat();
    let v = last_json(&env.ok(&args));
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
    (
        n("files_read"),
        n("files_reused"),
        v["changed"].as_bool().unwrap(),
    )
}

/// A tree of `n` small files in a few directories, plus a large one (chunked) and a hard link.
fn tree(env: &Env, n: usize) -> PathBuf {
    let src = env.path("src");
    for i in 0..n {
        let dir = src.join(format!("d{}", i % 3));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i}")), noise(3000 + i, i as u64 + 1)).unwrap();
    }
    std::fs::write(src.join("big"), noise(20 << 20, 99)).unwrap();
    std::fs::hard_link(src.join("d0/f0"), src.join("link-to-f0")).unwrap();
    src
}

/// Regular files of the tree, each inode once.
const FILES: u64 = 7;

fn fresh(files: usize) -> (Env, PathBuf) {
    let env = Env::init(&["--gc"]);
    let src = tree(&env, files);
    settle();
    (env, src)
}

fn mtime(path: &Path) -> std::time::SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

fn set_mtime(path: &Path, when: std::time::SystemTime) {
    let file = File::options().write(true).open(path).unwrap();
    file.set_times(FileTimes::new().set_modified(when)).unwrap();
}

/// Flips byte `at` of `path` and puts its mtime back, as a reproducible build leaves a changed
/// file: same size, same mtime; only ctime tells.
fn flip_keeping_size_and_mtime(path: &Path, at: usize) {
    let before = mtime(path);
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0xff;
    std::fs::write(path, &bytes).unwrap();
    set_mtime(path, before);
    assert_eq!(mtime(path), before);
}

#[test]
fn an_unchanged_tree_is_not_read_again() {
    let (env, src) = fresh(6);
    assert_eq!(publish(&env, &src, &[]), (FILES, 0, true));
    let manifest = std::fs::read(env.storage.join(".cvmfspublished")).unwrap();
    let text = env.ok(&["publish", FQRN, src.to_str().unwrap()]);
    assert!(
        text.contains("nothing changed") && text.contains("0 files read"),
        "{text}"
    );
    assert!(
        text.contains(&format!("{FILES} unchanged files not read")),
        "{text}"
    );
    assert_eq!(publish(&env, &src, &[]), (0, FILES, false));
    assert_eq!(
        manifest,
        std::fs::read(env.storage.join(".cvmfspublished")).unwrap(),
        "same root catalog, same revision"
    );
    assert_matches_source(&env, &src, "");

    // --rescan reads everything again (and changes nothing).
    assert_eq!(publish(&env, &src, &["--rescan"]), (FILES, 0, false));
    assert_eq!(publish(&env, &src, &[]), (0, FILES, false));

    // `cache stats` shows what the stat cache holds, per source tree.
    let stats = last_json(&env.ok(&["--json", "cache", "stats", FQRN]));
    let canonical = std::fs::canonicalize(&src).unwrap();
    assert_eq!(stats["stat_files"], FILES, "{stats}");
    let trees = stats["stat_trees"].as_array().unwrap();
    assert_eq!(trees.len(), 1, "{stats}");
    assert_eq!(trees[0]["source"], canonical.to_str().unwrap());
    assert_eq!(trees[0]["files"], FILES);
    assert_eq!(trees[0]["mode"], "chunks 4194304/8388608/16777216");
    // Published minutes ago at most, as `YYYY-MM-DDThh:mm:ssZ`.
    let when = trees[0]["last_publish"].as_str().unwrap();
    let year = when.get(..4).unwrap().parse::<u32>().unwrap();
    assert!(
        when.len() == 20 && when.ends_with('Z') && year >= 2025,
        "{when}"
    );
    let text = env.ok(&["cache", "stats", FQRN]);
    assert!(
        text.contains(&format!("stat cache: {FILES} files of 1 source trees")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "(chunks 4194304/8388608/16777216: {FILES} files, last published {when}"
        )),
        "{text}"
    );
}

#[test]
fn content_changed_with_size_and_mtime_restored_is_published() {
    let (env, src) = fresh(6);
    publish(&env, &src, &[]);
    flip_keeping_size_and_mtime(&src.join("d1/f1"), 0);
    let written = std::time::Instant::now();
    assert_eq!(publish(&env, &src, &[]), (1, FILES - 1, true));
    // Read inside the racy window, it was not recorded: read again by the next publish,
    // if that one too starts inside the window (a slow machine may take longer).
    let again = publish(&env, &src, &[]);
    if written.elapsed() < Duration::from_millis(1800) {
        assert_eq!(again, (1, FILES - 1, false));
    }
    settle();
    let third = publish(&env, &src, &[]);
    assert!(!third.2, "nothing changed");
    assert_eq!(publish(&env, &src, &[]), (0, FILES, false));
    assert_matches_source(&env, &src, "");
}

#[test]
fn a_file_renamed_over_another_is_published() {
    let (env, src) = fresh(6);
    publish(&env, &src, &[]);
    let f = src.join("d2/f2");
    let before = mtime(&f);
    let len = std::fs::metadata(&f).unwrap().len() as usize;
    let tmp = src.join("d2/.f2.new");
    std::fs::write(&tmp, noise(len, 12345)).unwrap();
    set_mtime(&tmp, before);
    settle();
    std::fs::rename(&tmp, &f).unwrap();
    assert_eq!(publish(&env, &src, &[]), (1, FILES - 1, true));
    assert_matches_source(&env, &src, "");
}

/// A chmod moves ctime, which a write with its mtime restored moves too: the file is read
/// again (its content is found stored, nothing is compressed) and the new mode published.
#[test]
fn a_chmod_is_published() {
    let (env, src) = fresh(6);
    publish(&env, &src, &[]);
    let f = src.join("d0/f3");
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o751)).unwrap();
    let out = last_json(&env.ok(&["--json", "publish", FQRN, src.to_str().unwrap()]));
    assert_eq!(out["changed"], true, "{out}");
    assert_eq!(out["objects_new"].as_u64(), Some(0), "{out}");
    assert_eq!(out["files_read"].as_u64(), Some(1), "{out}");
    assert_matches_source(&env, &src, "");
}

#[test]
fn content_removed_by_gc_is_read_and_stored_again() {
    let (env, src) = fresh(6);
    publish(&env, &src, &[]);
    // Another tree at the root: the first one's objects are now only in an old revision.
    let other = env.path("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("x"), b"other\n").unwrap();
    publish(&env, &other, &[]);
    // Once more, so that `trunk-previous` (which gc keeps) is no longer the first tree.
    std::fs::write(other.join("y"), b"more\n").unwrap();
    publish(&env, &other, &[]);
    let gc = last_json(&env.ok(&["--json", "gc", FQRN, "--keep-revisions", "0"]));
    assert!(gc["objects_deleted"].as_u64().unwrap() >= FILES, "{gc}");
    // The stat cache still knows every file of `src` as it is; their objects are gone.
    assert_eq!(publish(&env, &src, &[]), (FILES, 0, true));
    env.check(true);
    assert_matches_source(&env, &src, "");
    assert_eq!(publish(&env, &src, &[]), (0, FILES, false));
}

#[test]
fn a_subpath_publish_uses_the_cache_and_removed_files_are_forgotten() {
    let (env, src) = fresh(6);
    assert_eq!(publish(&env, &src, &["--path", "/sw"]), (FILES, 0, true));
    assert_eq!(publish(&env, &src, &["--path", "/sw"]), (0, FILES, false));
    std::fs::remove_dir_all(src.join("d1")).unwrap();
    std::fs::remove_file(src.join("d0/f3")).unwrap();
    assert_eq!(
        publish(&env, &src, &["--path", "/sw"]),
        (0, FILES - 3, true)
    );
    assert_matches_source(&env, &src, "/sw");
    // The forgotten rows: files put back under the same names are read.
    std::fs::create_dir(src.join("d1")).unwrap();
    std::fs::write(src.join("d1/f1"), b"back\n").unwrap();
    std::fs::write(src.join("d0/f3"), b"back too\n").unwrap();
    assert_eq!(
        publish(&env, &src, &["--path", "/sw"]),
        (2, FILES - 3, true)
    );
    assert_matches_source(&env, &src, "/sw");
}

#[test]
fn a_crashed_or_failed_publish_then_a_rerun_is_correct() {
    let (env, src) = fresh(6);
    publish(&env, &src, &[]);
    let f = src.join("d1/f4");
    flip_keeping_size_and_mtime(&f, 10);
    settle();
    let out = env
        .cmd(&["publish", FQRN, src.to_str().unwrap()])
        .env("CVMFS_OCI_CRASH_AT", "after-objects")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the publish did not crash");
    // Fails after the walk (the root has its catalog): its new objects are removed again.
    let err = env.fails(&["publish", FQRN, src.to_str().unwrap(), "--catalog"]);
    assert!(err.contains("--catalog"), "{err}");
    assert_eq!(env.revision(), 2);
    assert_eq!(publish(&env, &src, &[]), (1, FILES - 1, true));
    env.check(true);
    assert_matches_source(&env, &src, "");
    assert_eq!(publish(&env, &src, &[]), (0, FILES, false));
}

/// An xattr change moves ctime: published; an unchanged file's xattrs come from the cache.
#[test]
fn an_xattr_change_is_published_and_cached_xattrs_stay() {
    let (env, src) = fresh(6);
    publish(&env, &src, &[]);
    let f = src.join("d2/f5");
    let path = std::ffi::CString::new(f.to_str().unwrap()).unwrap();
    // SAFETY: NUL-terminated strings and a value buffer of the length given.
    let rc = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            c"user.stage".as_ptr(),
            b"2".as_ptr().cast(),
            1,
            0,
        )
    };
    if rc != 0 {
        eprintln!("no user xattrs here: skipped");
        return;
    }
    assert_eq!(publish(&env, &src, &[]), (1, FILES - 1, true));
    assert_matches_source(&env, &src, "");
    settle();
    publish(&env, &src, &[]);
    // Now recorded with its xattr: not read, and the revision keeps it.
    assert_eq!(publish(&env, &src, &[]), (0, FILES, false));
    assert_matches_source(&env, &src, "");
}

#[test]
fn a_no_chunking_publish_does_not_take_chunked_rows() {
    let (env, src) = fresh(6);
    assert_eq!(publish(&env, &src, &[]), (FILES, 0, true));
    // In another chunking mode the rows of the first do not count: every file is read, and
    // the large one is stored whole.
    let whole = ["--no-chunking", "--path", "/nc"];
    assert_eq!(publish(&env, &src, &whole).0, FILES);
    assert_eq!(publish(&env, &src, &whole), (0, FILES, false));
    // The chunked rows are still there for a chunked publish (here at another path).
    assert_eq!(
        publish(&env, &src, &["--path", "/c"]),
        (0, FILES, true),
        "chunked again"
    );
    let cache = env.path("witness-cache");
    let seen = fixtures::witness::witness_read_dir(&env.storage, &cache).unwrap();
    assert!(
        seen.entries["/c/big"].chunks > 1,
        "{:?}",
        seen.entries["/c/big"]
    );
    assert_eq!(
        seen.entries["/nc/big"].chunks, 0,
        "{:?}",
        seen.entries["/nc/big"]
    );
    assert_eq!(seen.entries["/nc/big"].sha1, seen.entries["/c/big"].sha1);
}

/// Unmounts on drop, so a failing test leaves no mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

fn run(cmd: &mut std::process::Command) {
    let out = cmd.output().expect("spawn");
    assert!(out.status.success(), "{cmd:?}: {out:?}");
}

#[test]
fn a_rebuilt_image_mounted_in_place_is_published_with_its_new_content() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("mounting a squashfs image needs root: skipped");
        return;
    }
    let env = Env::init(&["--gc"]);
    let mnt = env.path("mnt");
    std::fs::create_dir(&mnt).unwrap();
    // Two builds of one release with every timestamp fixed (SOURCE_DATE_EPOCH): squashfs gives
    // its files the same inode numbers, size, mtime and ctime, only the content differs.
    let image = |name: &str, text: &str| {
        let dir = env.path(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("f"), text).unwrap();
        let img = env.path(&format!("{name}.sqfs"));
        run(std::process::Command::new("mksquashfs")
            .arg(&dir)
            .arg(&img)
            .args(["-all-time", "1704067200", "-quiet", "-no-progress"]));
        img
    };
    let (one, two) = (image("v1", "release one\n"), image("v2", "release TWO\n"));
    let mount = |img: &Path| {
        run(std::process::Command::new("mount")
            .args(["-o", "loop,ro"])
            .arg(img)
            .arg(&mnt));
        Mounted(mnt.clone())
    };
    let m = mount(&one);
    assert_eq!(publish(&env, &mnt, &[]), (1, 0, true));
    // Never trusted on squashfs: read again, unchanged.
    assert_eq!(publish(&env, &mnt, &[]), (1, 0, false));

    // The image's file bound alone into a tree on a trusted file system (as containers bind
    // configuration files): a mount of its own, so read every time too.
    let tree = env.path("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("cfg"), b"placeholder\n").unwrap();
    std::fs::write(tree.join("plain"), b"plain file\n").unwrap();
    let bind = |from: &Path| {
        run(std::process::Command::new("mount")
            .arg("--bind")
            .arg(from)
            .arg(tree.join("cfg")));
        Mounted(tree.join("cfg"))
    };
    let b = bind(&mnt.join("f"));
    settle();
    let at = ["--path", "/tree"];
    assert_eq!(publish(&env, &tree, &at), (2, 0, true));
    assert_eq!(
        publish(&env, &tree, &at),
        (1, 1, false),
        "the bound file only"
    );
    drop(b);
    drop(m);

    let _m = mount(&two);
    assert_eq!(publish(&env, &mnt, &[]), (1, 0, true));
    assert_matches_source(&env, &mnt, "");
    let _b = bind(&mnt.join("f"));
    assert_eq!(publish(&env, &tree, &at), (1, 1, true));
    assert_matches_source(&env, &tree, "/tree");
}

#[test]
fn an_unusable_stat_database_only_costs_reads() {
    let (env, src) = fresh(6);
    assert_eq!(publish(&env, &src, &[]), (FILES, 0, true));
    let db = env.home.join(FQRN).join("state/stat.db");

    // Locked by another program for longer than SQLite waits: the publish reads every file.
    let mut holder = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys, time\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
             c.execute('BEGIN EXCLUSIVE')\n\
             print('locked', flush=True)\n\
             time.sleep(60)",
        )
        .arg(&db)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "locked\n");
    std::fs::write(src.join("new"), b"new file").unwrap();
    let out = env.run(&["--json", "publish", FQRN, src.to_str().unwrap()]);
    holder.kill().unwrap();
    holder.wait().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("stat cache not used"), "{err}");
    let v = last_json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(v["files_read"], FILES + 1, "{v}");
    assert_matches_source(&env, &src, "");

    // Damaged: `cache stats` still reports the other caches, and says so.
    for companion in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{companion}", db.display()));
    }
    std::fs::write(&db, b"garbage".repeat(600)).unwrap();
    let stats = env.run(&["--json", "cache", "stats", FQRN]);
    assert!(stats.status.success());
    let v = last_json(&String::from_utf8_lossy(&stats.stdout));
    assert!(v["stat_error"].is_string(), "{v}");
    assert!(v["index_entries"].as_u64().unwrap() > 0, "{v}");
    // A publish sets the damaged one aside and starts afresh.
    assert_eq!(publish(&env, &src, &[]).0, FILES + 1);
}
