//! The real CVMFS tools as witnesses of what this tool writes: `cvmfs_swissknife check -c`
//! (manifest and whitelist signatures, every catalog with its counters and nesting, the
//! history and reflog, every object) over HTTP, for the current revision and for tags.
//!
//! And the real client, `cvmfs2`: it mounts the repository over HTTP (FUSE) and every entry
//! must read back as the source has it (type, mode, owner, mtime, size, content, symlink
//! target, device number, link count, extended attributes).
//!
//! Runs when `CVMFS_SWISSKNIFE` (and for mounting `CVMFS2`) name the binaries, as
//! `scripts/real-cvmfs` does with CernVM-FS's own packages installed. CI has no CVMFS package
//! to install (it is not in Debian), so there each test says SKIPPED and passes.

mod common;

use common::{convert_edge_layout_and_archive, gnu_tar, Env, FQRN};
use fixtures::{FsEntry, Kind};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn swissknife() -> Option<PathBuf> {
    let found = std::env::var_os("CVMFS_SWISSKNIFE").map(PathBuf::from);
    if found.is_none() {
        eprintln!("SKIPPED: CVMFS_SWISSKNIFE is not set (scripts/real-cvmfs sets it)");
    }
    found
}

/// `cvmfs_swissknife check -c` of the repository as served over HTTP, at `tag` if given;
/// asserts it finds no problem.
fn swissknife_check(sk: &PathBuf, env: &Env, tag: Option<&str>) {
    let server = fixtures::StaticServer::serve(&env.storage);
    let key = env.home.join(FQRN).join("keys").join(format!("{FQRN}.pub"));
    let tmp = env.path("swissknife-tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let mut cmd = Command::new(sk);
    cmd.args(["check", "-c", "-r", &server.url(), "-N", FQRN])
        .arg("-k")
        .arg(&key)
        .arg("-t")
        .arg(&tmp);
    if let Some(tag) = tag {
        cmd.args(["-n", tag]);
    }
    let out = cmd.output().expect("run cvmfs_swissknife");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("no problems found"),
        "cvmfs_swissknife check {tag:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

/// The sample tree (every file type, hardlinks, xattrs, chunked files), then the life of a
/// repository: nested catalogs, an ingest with deletions (tagged as it publishes), tags, a
/// rollback and a collection.
#[test]
fn swissknife_accepts_published_revisions_tags_rollback_and_gc() {
    let Some(sk) = swissknife() else { return };
    let env = Env::init(&["--gc"]);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    fixtures::write_sample_tree(&src).unwrap();
    env.ok(&["publish", FQRN, src.to_str().unwrap()]);
    swissknife_check(&sk, &env, None);

    let dirtab = env.path("dirtab");
    std::fs::create_dir_all(dirtab.join("sw/a/b")).unwrap();
    std::fs::write(dirtab.join(".cvmfsdirtab"), "/sw/*\n").unwrap();
    std::fs::write(dirtab.join("sw/a/b/f"), "f\n").unwrap();
    env.ok(&[
        "publish",
        FQRN,
        dirtab.to_str().unwrap(),
        "--path",
        "/tabbed",
    ]);
    let owned = ["--path", "/owned", "--catalog", "--owner", "1000:1000"];
    env.ok(&[&["publish", FQRN, src.to_str().unwrap()][..], &owned].concat());
    env.ok(&["tag", FQRN, "--add", "with-owned"]);
    swissknife_check(&sk, &env, None);
    swissknife_check(&sk, &env, Some("trunk-previous"));

    std::fs::remove_file(src.join("special/socket")).unwrap();
    let tar = gnu_tar(&env, &src, "src.tar", "--no-auto-compress");
    let tar = tar.to_str().unwrap();
    // Tagged in the revision's own history database (`publish -a`): the real tools find it.
    let tag = ["--tag", "ingested", "--tag-description", "tar at /tar"];
    env.ok(&[
        &["ingest", FQRN, tar, "--path", "/tar", "--delete", "/owned"][..],
        &tag,
    ]
    .concat());
    swissknife_check(&sk, &env, None);
    swissknife_check(&sk, &env, Some("ingested"));
    swissknife_check(&sk, &env, Some("with-owned"));

    env.ok(&["rollback", FQRN, "--tag", "with-owned"]);
    swissknife_check(&sk, &env, None);
    env.ok(&["gc", FQRN, "--keep-revisions", "0"]);
    swissknife_check(&sk, &env, None);
    swissknife_check(&sk, &env, Some("with-owned"));
}

/// Converted images in the DUCC layout (whiteouts, opaque directories, hardlinks, special
/// files, xattrs in the layers), from an OCI layout and a docker archive: swissknife finds
/// no problem, and the real client shows every entry as the `cvmfs` crate (the witness of the
/// other tests) reads it.
#[test]
fn converted_images_pass_swissknife_and_mount() {
    let env = Env::init(&[]);
    convert_edge_layout_and_archive(&env);
    if let Some(sk) = swissknife() {
        swissknife_check(&sk, &env, None);
    }
    let Some(mounted) = mount(&env) else { return };
    let shown = fixtures::tree_listing(&mounted.mnt).unwrap();
    let server = fixtures::StaticServer::serve(&env.storage);
    let read = fixtures::witness::witness_read(&server.url(), &env.path("witness")).unwrap();
    assert!(shown.len() > 50, "{} entries", shown.len());
    let diffs = fixtures::witness::compare(&shown, &read.entries);
    assert!(diffs.is_empty(), "{diffs:#?}");
}

/// The repository mounted by the real client; unmounted when dropped.
struct Mounted {
    mnt: PathBuf,
    _server: fixtures::StaticServer,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
    }
}

/// Mounts the repository of `env` with `$CVMFS2` (run from its own directory, so that an
/// uninstalled build finds its FUSE libraries there); `None` (SKIPPED) without `$CVMFS2`, root
/// or `/dev/fuse`.
fn mount(env: &Env) -> Option<Mounted> {
    let Some(cvmfs2) = std::env::var_os("CVMFS2").map(PathBuf::from) else {
        eprintln!("SKIPPED: CVMFS2 is not set (scripts/real-cvmfs sets it)");
        return None;
    };
    if unsafe { libc::geteuid() } != 0 || !Path::new("/dev/fuse").exists() {
        eprintln!("SKIPPED: mounting needs root and /dev/fuse");
        return None;
    }
    let server = fixtures::StaticServer::serve(&env.storage);
    let dir = env.path("client");
    let (cache, mnt) = (dir.join("cache"), dir.join("mnt"));
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    let key = env.home.join(FQRN).join("keys").join(format!("{FQRN}.pub"));
    let config = dir.join("client.conf");
    let settings = [
        format!("CVMFS_SERVER_URL={}", server.url()),
        format!("CVMFS_PUBLIC_KEY={}", key.display()),
        "CVMFS_HTTP_PROXY=DIRECT".to_owned(),
        format!("CVMFS_CACHE_BASE={}", cache.display()),
        format!("CVMFS_RELOAD_SOCKETS={}", cache.display()),
        format!("CVMFS_USYSLOG={}", dir.join("client.log").display()),
        "CVMFS_SHARED_CACHE=no".to_owned(),
        "CVMFS_QUOTA_LIMIT=-1".to_owned(),
        "CVMFS_USER=root".to_owned(),
        "CVMFS_CHECK_PERMISSIONS=no".to_owned(),
        "CVMFS_CLAIM_OWNERSHIP=no".to_owned(),
        "CVMFS_HIDE_MAGIC_XATTRS=yes".to_owned(),
    ];
    std::fs::write(&config, settings.join("\n") + "\n").unwrap();
    let build_dir = cvmfs2.parent().unwrap();
    let out = Command::new(&cvmfs2)
        .current_dir(build_dir)
        .env("LD_LIBRARY_PATH", build_dir)
        .arg("-o")
        .arg(format!("config={},allow_other", config.display()))
        .arg(FQRN)
        .arg(&mnt)
        .output()
        .expect("run cvmfs2");
    assert!(
        out.status.success(),
        "cvmfs2 did not mount: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(Mounted {
        mnt,
        _server: server,
    })
}

/// What a client shows of an entry that must equal the source: all but directory sizes and
/// link counts (CVMFS keeps its own) and socket/fifo sizes.
fn comparable(e: &FsEntry) -> FsEntry {
    let mut e = e.clone();
    if e.kind == Kind::Dir {
        (e.size, e.nlink) = (0, 0);
    }
    e
}

/// The link count CVMFS gives each member of the source's hardlinks: it keeps a hardlink group
/// within one directory and stores members elsewhere as copies (as `cvmfs_server` does), so
/// a member counts the members in its own directory.
fn cvmfs_link_counts(hardlinks: &[(Vec<u8>, Vec<u8>)]) -> BTreeMap<Vec<u8>, u64> {
    let mut group_of: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for (new, existing) in hardlinks {
        let root = group_of.get(existing).cloned().unwrap_or(existing.clone());
        group_of.insert(existing.clone(), root.clone());
        group_of.insert(new.clone(), root);
    }
    let parent = |p: &[u8]| p[..p.iter().rposition(|&b| b == b'/').unwrap_or(0)].to_vec();
    group_of
        .iter()
        .map(|(member, root)| {
            let together = group_of
                .iter()
                .filter(|(m, r)| *r == root && parent(m) == parent(member))
                .count();
            (member.clone(), together as u64)
        })
        .collect()
}

/// The mounted tree below `at` is the tree of `source`, entry for entry (link counts as
/// `links` says for its hardlinks), but for the paths (relative to `at`, and what is below
/// them) in `skip`.
fn assert_mount_matches(
    mounted: &Mounted,
    at: &str,
    source: &Path,
    links: &BTreeMap<Vec<u8>, u64>,
    skip: &[&str],
) {
    let skipped = |p: &[u8]| {
        skip.iter().any(|s| {
            p.strip_prefix(s.as_bytes())
                .is_some_and(|rest| rest.is_empty() || rest[0] == b'/')
        })
    };
    let read = |dir: &Path| -> BTreeMap<Vec<u8>, FsEntry> {
        fixtures::tree_listing(dir)
            .unwrap()
            .iter()
            .filter(|(p, _)| !skipped(p))
            .map(|(p, e)| (p.clone(), comparable(e)))
            .collect()
    };
    let mut want = read(source);
    for (path, nlink) in links {
        if let Some(e) = want.get_mut(path) {
            e.nlink = *nlink;
        }
    }
    let got = read(&mounted.mnt.join(at.trim_start_matches('/')));
    let diffs: Vec<String> = want
        .keys()
        .chain(got.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|p| want.get(*p) != got.get(*p))
        .map(|p| {
            format!(
                "{}:\n  source {:?}\n  mount  {:?}",
                String::from_utf8_lossy(p),
                want.get(p),
                got.get(p)
            )
        })
        .collect();
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

/// The sample tree (every file type, hardlinks, xattrs, a 20 MB chunked file), published at the
/// root and into a nested catalog, and ingested from a GNU tar of it, reads back through the
/// real client as the source has it.
#[test]
fn the_real_client_mounts_what_was_published() {
    let env = Env::init(&[]);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let sample = fixtures::write_sample_tree(&src).unwrap();
    env.ok(&["publish", FQRN, src.to_str().unwrap()]);
    let nested = ["--path", "/nested/deeper", "--catalog"];
    env.ok(&[&["publish", FQRN, src.to_str().unwrap()][..], &nested].concat());
    // The same tree through the tar path (GNU tar skips the socket).
    let tarred = env.path("tarred");
    std::fs::create_dir_all(&tarred).unwrap();
    fixtures::write_sample_tree(&tarred).unwrap();
    std::fs::remove_file(tarred.join("special/socket")).unwrap();
    let tar = gnu_tar(&env, &tarred, "sample.tar", "--no-auto-compress");
    env.ok(&["ingest", FQRN, tar.to_str().unwrap(), "--path", "/tar"]);
    // A sparse file in GNU tar's PAX format 1.0 (what bsdtar writes too).
    let sparse = env.path("sparse");
    std::fs::create_dir_all(&sparse).unwrap();
    let holey = std::fs::File::create(sparse.join("holey")).unwrap();
    holey.set_len(5 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&holey, b"data in the middle", 2 << 20).unwrap();
    let sparse_tar = env.path("sparse.tar");
    let status = std::process::Command::new("tar")
        .args(["--format=pax", "--sparse", "-cf"])
        .arg(&sparse_tar)
        .arg("-C")
        .arg(&sparse)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    env.ok(&[
        "ingest",
        FQRN,
        sparse_tar.to_str().unwrap(),
        "--path",
        "/sparse",
    ]);
    let Some(mounted) = mount(&env) else { return };
    let links = cvmfs_link_counts(&sample.hardlinks);
    assert!(links.values().any(|&n| n == 1) && links.values().any(|&n| n > 1));
    let marker = ["/.cvmfscatalog"];
    assert_mount_matches(&mounted, "/nested/deeper", &src, &links, &marker);
    assert_mount_matches(&mounted, "/tar", &tarred, &links, &["/"]);
    assert_mount_matches(&mounted, "/sparse", &sparse, &links, &["/"]);
    assert_mount_matches(
        &mounted,
        "/",
        &src,
        &links,
        &["/", "/nested", "/tar", "/sparse"],
    );
}

/// Real images (the testbed corpus, built from Debian packages; `$TESTBED_DIR`, as
/// `../shared/testbed` makes it): converted from its OCI layout and mounted by the real client,
/// each flattened image is entry for entry what `umoci unpack` makes of it.
#[test]
fn testbed_images_mount_as_umoci_unpacks_them() {
    let Some(testbed) = std::env::var_os("TESTBED_DIR").map(PathBuf::from) else {
        eprintln!("SKIPPED: TESTBED_DIR is not set");
        return;
    };
    let layout = testbed.join("corpus/oci");
    if !layout.join("index.json").is_file() || fixtures::tools::find_tool("umoci").is_none() {
        eprintln!("SKIPPED: no corpus at {} or no umoci", layout.display());
        return;
    }
    let env = Env::init(&[]);
    let refs = [
        "python:3.11",
        "nginx:1.22-site",
        "busybox:1.35",
        "science:1.0",
    ];
    let mut flats = Vec::new();
    for name in refs {
        let image = format!("oci:{}:corpus/{name}", layout.display());
        let out = env.ok(&["--json", "convert", FQRN, &image]);
        let event = out
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|e| e["action"] == "image")
            .unwrap();
        flats.push((name, event["flat"].as_str().unwrap().to_owned()));
    }
    if let Some(sk) = swissknife() {
        swissknife_check(&sk, &env, None);
    }
    let Some(mounted) = mount(&env) else { return };
    for (name, flat) in flats {
        let reference = format!("corpus/{name}");
        let unpacked = fixtures::umoci::unpack_reference(&layout, &reference).unwrap();
        let skip = ["/", "/.cvmfscatalog", "/.singularity.d"];
        assert_mount_matches(&mounted, &flat, unpacked.path(), &BTreeMap::new(), &skip);
    }
}
