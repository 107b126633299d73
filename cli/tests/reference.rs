//! The repository written by the real CVMFS 2.12 tools (../shared/reference): `check` accepts it
//! and republishing its contents gives objects with the same names.

mod common;

use catalog_writer::hash::{ContentHash, Suffix};
use common::{Env, FQRN};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// `$CVMFS_OCI_REFERENCE`, else `shared/reference` next to the checkout.
fn reference() -> PathBuf {
    let dir = std::env::var_os("CVMFS_OCI_REFERENCE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference")
        });
    assert!(
        dir.join("keys").is_dir(),
        "the reference repository is not at {} (clone next to shared/, or set CVMFS_OCI_REFERENCE)",
        dir.display()
    );
    dir
}

fn object_names(storage: &std::path::Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for d in std::fs::read_dir(storage.join("data")).unwrap().flatten() {
        let dir = d.file_name().to_string_lossy().to_string();
        if dir.len() != 2 {
            continue;
        }
        for f in std::fs::read_dir(d.path()).unwrap().flatten() {
            out.insert(format!("{dir}{}", f.file_name().to_string_lossy()));
        }
    }
    out
}

#[test]
fn check_accepts_the_reference_repository() {
    let env = Env::init(&[]);
    let r = reference();
    let storage = r.join("ref.test.local");
    let key = r.join("keys/ref.test.local.pub");
    let out = env.ok(&[
        "check",
        "ref.test.local",
        "--full",
        "--storage",
        storage.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert!(out.contains("OK"), "{out}");
    // The wrong name fails.
    let bad = env.run(&[
        "check",
        "other.test.local",
        "--storage",
        storage.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
}

#[test]
fn republished_reference_content_gets_the_same_object_names() {
    let env = Env::init(&["--no-chunking"]);
    let r = reference();
    let storage = r.join("ref.test.local");
    let store = publisher::LocalStore::open(&storage).expect("reference storage");
    let bytes = std::fs::read(storage.join(".cvmfspublished")).unwrap();
    let m = signer::Manifest::parse(&bytes).unwrap().manifest;
    let root = catalog_writer::namespace::CatalogRef {
        hash: catalog_writer::hash::ContentHash::from_hex(&m.root_catalog).unwrap(),
        size: m.root_size,
    };
    let objects = publisher::as_objects(&store);
    // Rebuild the reference tree on disk from its objects (regular files, links, dirs).
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut expected = BTreeSet::new();
    for (path, entry) in catalog_writer::verify::list_all(root, &objects).unwrap() {
        let rel = String::from_utf8(path.clone()).unwrap();
        if rel.is_empty() || rel.ends_with("/.cvmfscatalog") {
            continue;
        }
        let target = src.join(rel.trim_start_matches('/'));
        match &entry.kind {
            catalog_writer::entry::EntryKind::Directory => {
                std::fs::create_dir_all(&target).unwrap()
            }
            catalog_writer::entry::EntryKind::Symlink { target: t } => {
                std::os::unix::fs::symlink(String::from_utf8(t.clone()).unwrap(), &target).unwrap()
            }
            catalog_writer::entry::EntryKind::File {
                data: catalog_writer::entry::FileData::Whole(h),
                ..
            } => {
                use catalog_writer::hash::Suffix;
                let z = std::fs::read(storage.join(h.object_path(Suffix::None))).unwrap();
                let plain = catalog_writer::zlib::decompress(&z, 1 << 30).unwrap();
                std::fs::create_dir_all(target.parent().unwrap()).unwrap();
                std::fs::write(&target, plain).unwrap();
                expected.insert(h.to_hex());
            }
            other => panic!("unexpected entry {other:?} at {rel}"),
        }
    }
    assert!(expected.len() >= 5, "{expected:?}");
    env.ok(&["publish", FQRN, src.to_str().unwrap()]);
    env.check(true);
    let ours = object_names(&env.storage);
    let theirs: BTreeSet<String> = object_names(&storage)
        .into_iter()
        .filter(|n| n.len() == 40)
        .collect();
    assert_eq!(theirs.len(), expected.len());
    for name in &theirs {
        assert!(
            ours.contains(name),
            "reference object {name} not produced by cvmfs-oci"
        );
    }
}

const REF: &str = "ref.test.local";

/// Copies the reference storage to `dest` and signs it anew with fresh keys written to
/// `keys_dir`, as if the CVMFS tools had used those keys: its catalogs, data objects, history
/// and reflog stay theirs; a certificate object, the whitelist (valid for 30 days from
/// `whitelist_from`), the reflog's new certificate entry and the manifest (`G=yes` when `gc`)
/// are ours.
fn resigned_reference(dest: &Path, keys_dir: &Path, whitelist_from: i64, gc: bool) {
    let src = reference().join(REF);
    for e in walkdir::WalkDir::new(&src) {
        let e = e.unwrap();
        let to = dest.join(e.path().strip_prefix(&src).unwrap());
        if e.file_type().is_dir() {
            std::fs::create_dir_all(&to).unwrap();
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
    let keys = signer::RepoKeys::generate(REF).unwrap();
    keys.write(keys_dir, REF).unwrap();
    let cert = catalog_writer::zlib::compress(&keys.certificate_pem().unwrap());
    let x = ContentHash::of(&cert);
    let cert_path = dest.join(x.object_path(Suffix::Certificate));
    std::fs::create_dir_all(cert_path.parent().unwrap()).unwrap();
    std::fs::write(&cert_path, &cert).unwrap();
    let master = keys.master.as_ref().unwrap();
    let whitelist = signer::Whitelist::new(REF, keys.fingerprint().unwrap(), whitelist_from, 30);
    std::fs::write(
        dest.join(".cvmfswhitelist"),
        whitelist.sign(master).unwrap(),
    )
    .unwrap();
    let reflog = std::fs::read(dest.join(".cvmfsreflog")).unwrap();
    let mut reflog = publisher::Reflog::from_bytes(&reflog, ".cvmfsreflog").unwrap();
    reflog
        .add(&x, publisher::reflog::RefKind::Certificate, whitelist_from)
        .unwrap();
    let reflog = reflog.to_bytes().unwrap();
    std::fs::write(dest.join(".cvmfsreflog"), &reflog).unwrap();
    let published = dest.join(".cvmfspublished");
    let mut m = signer::Manifest::parse(&std::fs::read(&published).unwrap())
        .unwrap()
        .manifest;
    m.certificate = x.to_hex();
    m.reflog = Some(ContentHash::of(&reflog).to_hex());
    m.gc = gc;
    std::fs::write(&published, m.sign(&keys.repo_key).unwrap()).unwrap();
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A home, storage and keys directory for taking over the re-signed reference; commands run
/// with `--keys` on that directory.
struct Takeover {
    env: Env,
    keys: PathBuf,
}

impl Takeover {
    fn new(whitelist_from: i64) -> Takeover {
        Takeover::with_gc(whitelist_from, false)
    }

    /// The reference declared garbage-collectable (`G=yes`) when `gc`.
    fn with_gc(whitelist_from: i64, gc: bool) -> Takeover {
        let dir = tempfile::tempdir().unwrap();
        let (home, storage) = (dir.path().join("home"), dir.path().join("storage"));
        let keys = dir.path().join("keys");
        resigned_reference(&storage, &keys, whitelist_from, gc);
        Takeover {
            env: Env { dir, home, storage },
            keys,
        }
    }

    fn with_keys<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = vec!["--keys", self.keys.to_str().unwrap()];
        all.extend_from_slice(args);
        all
    }

    fn ok(&self, args: &[&str]) -> String {
        self.env.ok(&self.with_keys(args))
    }

    fn fails(&self, args: &[&str]) -> String {
        self.env.fails(&self.with_keys(args))
    }

    fn storage(&self) -> &str {
        self.env.storage.to_str().unwrap()
    }

    fn take_over(&self) -> String {
        self.ok(&["init", REF, "--storage", self.storage(), "--existing"])
    }

    /// The repository as the independent `cvmfs` crate reads it over loopback HTTP.
    fn witness(&self) -> fixtures::witness::WitnessReport {
        let cache = self.env.dir.path().join("witness-cache");
        std::fs::create_dir_all(&cache).unwrap();
        fixtures::witness::witness_read_dir(&self.env.storage, &cache).unwrap()
    }

    fn json_line(out: &str, action: &str) -> serde_json::Value {
        out.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["action"] == action)
            .unwrap_or_else(|| panic!("no {action} line in {out}"))
    }
}

/// Every path of the reference's listing is in `seen`, with its content's SHA-1 and mtime.
fn assert_has_reference_listing(seen: &fixtures::witness::WitnessReport) {
    let listing =
        std::fs::read_to_string(reference().join(format!("{REF}.listing.jsonl"))).unwrap();
    for line in listing.lines() {
        let want: serde_json::Value = serde_json::from_str(line).unwrap();
        let path = want["path"].as_str().unwrap();
        let got = seen
            .entries
            .get(path)
            .unwrap_or_else(|| panic!("{path} lost"));
        if let Some(sha1) = want["sha1"].as_str() {
            assert_eq!(got.sha1.as_deref(), Some(sha1), "{path}");
        }
        if path != "/" {
            assert_eq!(got.mtime, want["mtime"].as_i64().unwrap(), "{path}");
        }
    }
}

/// The plaintext of the reference's 588 895-byte text file, read from its object.
fn reference_text(storage: &Path) -> Vec<u8> {
    let store = publisher::LocalStore::open(storage).unwrap();
    let bytes = std::fs::read(storage.join(".cvmfspublished")).unwrap();
    let m = signer::Manifest::parse(&bytes).unwrap().manifest;
    let root = catalog_writer::namespace::CatalogRef {
        hash: ContentHash::from_hex(&m.root_catalog).unwrap(),
        size: m.root_size,
    };
    let objects = publisher::as_objects(&store);
    for (_, entry) in catalog_writer::verify::list_all(root, &objects).unwrap() {
        if let catalog_writer::entry::EntryKind::File {
            size,
            data: catalog_writer::entry::FileData::Whole(h),
        } = &entry.kind
        {
            if *size == 588_895 {
                let z = std::fs::read(storage.join(h.object_path(Suffix::None))).unwrap();
                return catalog_writer::zlib::decompress(&z, 1 << 30).unwrap();
            }
        }
    }
    panic!("no 588 895-byte file in the reference");
}

#[test]
fn a_repository_made_by_the_cvmfs_tools_is_taken_over_and_published_on() {
    let t = Takeover::new(unix_now());
    let before = common::snapshot(&t.env.storage);
    let out = t.take_over();
    assert!(
        out.contains("took over ref.test.local at revision 3"),
        "{out}"
    );
    // The reference has no `.cvmfs_master_replica`: said, not added.
    let other = Takeover::new(unix_now());
    let json = other.ok(&[
        "--json",
        "init",
        REF,
        "--storage",
        other.storage(),
        "--existing",
    ]);
    let warning = Takeover::json_line(&json, "warning");
    assert!(
        warning["warning"]
            .as_str()
            .unwrap()
            .contains(".cvmfs_master_replica"),
        "{warning}"
    );
    assert_eq!(
        common::snapshot(&t.env.storage),
        before,
        "taking over changed the storage"
    );
    t.ok(&["check", REF, "--full"]);

    let seeded = Takeover::json_line(&t.ok(&["--json", "cache", "seed", REF]), "cache-seed");
    assert!(seeded["recorded"].as_u64().unwrap() >= 5, "{seeded}");

    // Known content (the reference's text file) next to new content, at a new path.
    let src = t.env.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let text = reference_text(&t.env.storage);
    std::fs::write(src.join("copy.txt"), &text).unwrap();
    std::fs::write(src.join("fresh.txt"), b"new in revision 4\n").unwrap();
    let out = t.ok(&[
        "--json",
        "publish",
        REF,
        src.to_str().unwrap(),
        "--path",
        "/new",
    ]);
    let p = Takeover::json_line(&out, "publish");
    assert_eq!(p["revision"], 4, "{p}");
    assert_eq!(
        p["index_hits"], 1,
        "the known text is not compressed again: {p}"
    );
    assert_eq!(p["objects_new"], 1, "{p}");
    t.ok(&["check", REF, "--full"]);

    // The independent reader sees the reference's content unchanged and the new files.
    let seen = t.witness();
    assert_eq!(seen.revision, 4);
    assert_has_reference_listing(&seen);
    let sha1 = |b: &[u8]| hex::encode(<sha1::Sha1 as sha1::Digest>::digest(b));
    assert_eq!(seen.entries["/new/copy.txt"].sha1, Some(sha1(&text)));
    assert_eq!(
        seen.entries["/new/fresh.txt"].sha1,
        Some(sha1(b"new in revision 4\n"))
    );
}

#[test]
fn a_take_over_needs_the_keys_that_sign_the_repository() {
    let t = Takeover::new(unix_now());
    let storage = t.storage();
    // Other keys: their master key did not sign the whitelist.
    let other = Takeover::new(unix_now());
    let before = common::snapshot(&t.env.storage);
    let other_keys = other.keys.to_str().unwrap();
    let err = t.env.fails(&[
        "--keys",
        other_keys,
        "init",
        REF,
        "--storage",
        storage,
        "--existing",
    ]);
    assert!(err.contains("not taking over ref.test.local"), "{err}");
    assert!(err.contains(".cvmfswhitelist"), "{err}");
    assert_eq!(common::snapshot(&t.env.storage), before);
    assert!(!t.env.home.join(REF).join("config.json").exists());

    // The right master key, but a repository key other than the one that signs it.
    let other_repo_key = t.env.dir.path().join("other-keys");
    signer::RepoKeys::generate(REF)
        .unwrap()
        .write(&other_repo_key, REF)
        .unwrap();
    let swap = |from: &Path, to: &Path| {
        for name in [format!("{REF}.key"), format!("{REF}.crt")] {
            std::fs::copy(from.join(&name), to.join(&name)).unwrap();
        }
    };
    let saved = t.env.dir.path().join("saved-keys");
    std::fs::create_dir_all(&saved).unwrap();
    swap(&t.keys, &saved);
    swap(&other_repo_key, &t.keys);
    let line = t.fails(&["init", REF, "--storage", storage, "--existing"]);
    assert!(line.contains("is not ref.test.local.crt"), "{line}");
    swap(&saved, &t.keys);
    assert_eq!(common::snapshot(&t.env.storage), before);

    // No repository in an empty storage directory; a home that exists already.
    let empty = t.env.dir.path().join("empty");
    std::fs::create_dir_all(empty.join("data")).unwrap();
    let line = t.fails(&[
        "init",
        REF,
        "--storage",
        empty.to_str().unwrap(),
        "--existing",
    ]);
    assert!(line.contains("no .cvmfspublished"), "{line}");
    t.take_over();
    let line = t.fails(&["init", REF, "--storage", storage, "--existing"]);
    assert!(line.contains("already exists"), "{line}");
}

#[test]
fn an_expired_whitelist_is_re_signed_on_take_over_with_the_master_key() {
    let forty_days_ago = unix_now() - 40 * 86_400;
    let t = Takeover::new(forty_days_ago);
    let storage = t.storage();
    // Without the master key the take-over is refused.
    let master = t.keys.join(format!("{REF}.masterkey"));
    let aside = t.env.dir.path().join("masterkey");
    std::fs::rename(&master, &aside).unwrap();
    let line = t.fails(&["init", REF, "--storage", storage, "--existing"]);
    assert!(
        line.contains("expired") && line.contains("re-signed"),
        "{line}"
    );
    std::fs::rename(&aside, &master).unwrap();

    let out = t.ok(&["--json", "init", REF, "--storage", storage, "--existing"]);
    let init = Takeover::json_line(&out, "init");
    let until = init["whitelist_resigned_until"].as_str().unwrap();
    assert!(until.starts_with("20"), "{init}");
    t.ok(&["check", REF]);
}

#[test]
fn gc_of_a_repository_made_by_the_cvmfs_tools_keeps_all_it_references() {
    let t = Takeover::with_gc(unix_now(), true);
    t.take_over();
    let log = t.env.dir.path().join("deleted.log");
    let out = t.ok(&[
        "--json",
        "gc",
        REF,
        "--keep-revisions",
        "0",
        "--deletion-log",
        log.to_str().unwrap(),
    ]);
    let r = Takeover::json_line(&out, "gc");
    // Their history tags: trunk (3) and trunk-previous (2) are kept.
    let kept: Vec<(u64, String)> = r["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["revision"].as_u64().unwrap(),
                k["tags"][0].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        kept,
        [(3, "trunk".to_string()), (2, "trunk-previous".to_string())]
    );
    // Root catalogs of revisions 0 and 1, the two older histories, and their certificate
    // (the manifest names ours now); every data object is still referenced by revision 3.
    let mut suffixes: Vec<char> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .skip(1)
        .map(|n| n.chars().last().unwrap())
        .collect();
    suffixes.sort();
    assert_eq!(suffixes, ['C', 'C', 'H', 'H', 'X'], "{r}");
    assert_eq!(r["reflog_removed"], 5, "{r}");
    for current in [
        "7912aba1f2b1b0e85da68a07e257e6b04ca02d03C",
        "c3f85cd9ec5a798edcd4f3230ddaf8b5e4fafb9dH",
    ] {
        assert!(t
            .env
            .storage
            .join("data")
            .join(&current[..2])
            .join(&current[2..])
            .exists());
    }
    t.ok(&["check", REF, "--full"]);
    let seen = t.witness();
    assert_eq!(seen.revision, 3);
    assert_has_reference_listing(&seen);
}

/// `diff` reads the catalogs the CVMFS tools wrote: the third publish ingested `/fromstdin`.
#[test]
fn diff_reads_the_reference_revisions() {
    let env = Env::init(&[]);
    let storage = reference().join("ref.test.local");
    let storage = storage.to_str().unwrap();
    let key = reference().join("keys/ref.test.local.pub");
    let key = key.to_str().unwrap();
    let diff = |flag: &str| {
        env.ok(&[
            "diff",
            "ref.test.local",
            "--storage",
            storage,
            "--key",
            key,
            flag,
        ])
    };
    let out = diff("-m");
    let expected = "S F 6\nS S 1\nS D 3\nS N 0\n\
        A D /fromstdin\nA D /fromstdin/sub\nA D /fromstdin/sub/deeper\n\
        A F /fromstdin/sub/deeper/big.bin +25000000\nA F /fromstdin/sub/run.sh +18\n\
        A F /fromstdin/sub/numbers.txt +588895\nA S /fromstdin/link +0\n\
        A F /fromstdin/empty +0\nA F /fromstdin/hard.txt +12\nA F /fromstdin/hello.txt +12\n";
    assert_eq!(out, expected);
    let out = diff("--header");
    assert!(
        out.starts_with("DELTA: trunk-previous/r2 (") && out.contains(") --> trunk/r3 ("),
        "{out}"
    );
}

/// `list-catalogs` as `cvmfs_server list-catalogs` prints the reference's two catalogs.
#[test]
fn list_catalogs_of_the_reference() {
    let env = Env::init(&[]);
    let storage = reference().join("ref.test.local");
    let storage = storage.to_str().unwrap();
    let key = reference().join("keys/ref.test.local.pub");
    let key = key.to_str().unwrap();
    let list = |flags: &[&str]| {
        env.ok(&[
            &[
                "list-catalogs",
                "ref.test.local",
                "--storage",
                storage,
                "--key",
                key,
            ][..],
            flags,
        ]
        .concat())
    };
    assert_eq!(list(&[]), "/\n├─ /small2\n");
    assert_eq!(list(&["-s", "-e"]), "18432B 22 /\n├─ 16384B 11 /small2\n");
    assert_eq!(
        list(&["-x", "-d"]),
        "7912aba1f2b1b0e85da68a07e257e6b04ca02d03 /\n\
         33c96f1d879f5a1b22af2cf4ba79e9068745f84a /small2\n"
    );
}
