//! End to end through the binary: publish/ingest a tree, read it back through the independent
//! `cvmfs` crate, bad inputs, crashes at every publish stage, concurrent publishers.

mod common;

use common::{assert_matches_source, gnu_tar, lock_holder, noise, on_terminal, Env, FQRN};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Stdio;

fn sample(env: &Env) -> std::path::PathBuf {
    let src = env.path("src");
    std::fs::create_dir_all(&src).expect("mkdir src");
    fixtures::write_sample_tree(&src).expect("sample tree");
    src
}

#[test]
fn publish_reads_back_through_cvmfs_crate() {
    let env = Env::init(&[]);
    let src = sample(&env);
    assert_eq!(env.revision(), 1);
    env.ok(&["publish", FQRN, src.to_str().unwrap()]);
    assert_eq!(env.revision(), 2);
    env.check(true);
    assert_matches_source(&env, &src, "");

    // Publishing the same tree again changes nothing and publishes no new revision.
    env.ok(&["publish", FQRN, src.to_str().unwrap()]);
    assert_eq!(env.revision(), 2);
}

#[test]
fn publish_and_info_name_the_root_catalog_as_root() {
    let env = Env::init(&[]);
    let src = sample(&env);
    let last = |out: &str| -> serde_json::Value {
        serde_json::from_str(out.lines().last().unwrap()).unwrap()
    };
    let published = last(&env.ok(&["--json", "publish", FQRN, src.to_str().unwrap()]));
    let root = env.manifest_field('C');
    assert_eq!(published["root"], root.as_str(), "{published}");
    let info = last(&env.ok(&["--json", "info", FQRN]));
    assert_eq!(
        (&info["root"], &info["root_catalog"]),
        (&root.as_str().into(), &root.as_str().into())
    );
    // Nothing published: no root to name.
    let again = last(&env.ok(&["--json", "publish", FQRN, src.to_str().unwrap()]));
    assert_eq!(
        (&again["changed"], &again["root"]),
        (&false.into(), &serde_json::Value::Null)
    );
}

#[test]
fn objects_are_world_readable_whatever_the_umask() {
    let env = Env::init(&[]);
    let src = sample(&env);
    // Objects are created 0644 and chmod'ed only when the umask took bits away: try one that
    // takes them all.
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg("umask 077; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_cvmfs-oci"))
        .args(["--home", env.home.to_str().unwrap(), "publish", FQRN])
        .arg(&src);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    let mut objects = 0;
    for e in walkdir::WalkDir::new(env.storage.join("data")) {
        let e = e.unwrap();
        if e.file_type().is_file() && !e.path().starts_with(env.storage.join("data/txn")) {
            let mode = e.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o644, "{}", e.path().display());
            objects += 1;
        }
    }
    assert!(objects > 5, "{objects}");
    let manifest = env.storage.join(".cvmfspublished");
    let mode = std::fs::metadata(manifest).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
}

#[test]
fn the_home_and_the_keys_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (home, keys) = (dir.path().join("home"), dir.path().join("kd/sub"));
    for extra in [&[][..], &["--keys", keys.to_str().unwrap()][..]] {
        let _ = std::fs::remove_dir_all(&home);
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg("umask 000; exec \"$0\" \"$@\"")
            .arg(env!("CARGO_BIN_EXE_cvmfs-oci"))
            .args(["--home", home.to_str().unwrap()])
            .args(extra)
            .args(["init", FQRN, "--storage"])
            .arg(dir.path().join(format!("storage{}", extra.len())))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let key_dir = match extra.is_empty() {
            true => home.join(FQRN).join("keys"),
            false => keys.clone(),
        };
        assert_eq!(mode(&home.join(FQRN)), 0o700);
        assert_eq!(mode(&key_dir), 0o700, "{}", key_dir.display());
        assert_eq!(mode(&key_dir.join(format!("{FQRN}.key"))), 0o600);
        assert_eq!(mode(&key_dir.join(format!("{FQRN}.masterkey"))), 0o600);
    }
    let mode = std::fs::metadata(dir.path().join("kd"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700, "parents made for --keys are private too");
}

#[test]
fn publish_at_subpaths_keeps_the_rest() {
    let env = Env::init(&[]);
    let src = sample(&env);
    env.ok(&["publish", FQRN, src.to_str().unwrap(), "--path", "/sw/a"]);
    let other = env.path("other");
    std::fs::create_dir_all(other.join("x")).unwrap();
    std::fs::write(other.join("x/hello"), b"hello\n").unwrap();
    // Through a symbolic link to the directory, as `/srv/sw/current` often is.
    let current = env.path("current");
    std::os::unix::fs::symlink(&other, &current).unwrap();
    env.ok(&[
        "publish",
        FQRN,
        current.to_str().unwrap(),
        "--path",
        "/sw/b",
    ]);
    assert_eq!(env.revision(), 3);
    env.check(true);
    assert_matches_source(&env, &src, "/sw/a");
    assert_matches_source(&env, &other, "/sw/b");
    // The object of "hello\n" carries the name cvmfs gives it.
    assert!(env
        .storage
        .join("data/57/98f7f4ca7585d850eea64610a1f73d8f8de7a3")
        .exists());
}

#[test]
fn ingest_tar_gzip_zstd_and_stdin() {
    let env = Env::init(&[]);
    let src = sample(&env);
    // GNU tar cannot archive sockets ("socket ignored"): compare without it.
    std::fs::remove_file(src.join("special/socket")).expect("sample tree has a socket");
    let tgz = gnu_tar(&env, &src, "src.tar.gz", "-z");
    env.ok(&["ingest", FQRN, tgz.to_str().unwrap(), "--path", "/gz"]);
    let tzst = gnu_tar(&env, &src, "src.tar.zst", "--zstd");
    env.ok(&["ingest", FQRN, tzst.to_str().unwrap(), "--path", "/zst"]);
    let plain = gnu_tar(&env, &src, "src.tar", "--no-auto-compress");
    let mut child = env
        .cmd(&["ingest", FQRN, "-", "--path", "/stdin", "--delete", "/gz"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&std::fs::read(&plain).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.check(true);
    assert_matches_source(&env, &src, "/zst");
    assert_matches_source(&env, &src, "/stdin");
    let cache = env.path("wc");
    let report = fixtures::witness::witness_read_dir(&env.storage, &cache).unwrap();
    assert!(
        !report.entries.contains_key("/gz"),
        "--delete /gz was not applied"
    );

    // An empty archive (an empty stdin, /dev/null) is refused: grafted at / it would empty
    // the whole repository. `--delete` alone removes just that path.
    let revision = env.revision();
    let line = env.fails(&["ingest", FQRN, "/dev/null", "--delete", "/zst"]);
    assert!(
        line.contains("no entries") && line.contains("--delete"),
        "{line}"
    );
    assert_eq!(env.revision(), revision);
    env.ok(&["ingest", FQRN, "--delete", "/zst"]);
    assert_eq!(env.revision(), revision + 1);
    env.check(true);
    let report = fixtures::witness::witness_read_dir(&env.storage, &env.path("wc2")).unwrap();
    assert!(!report.entries.contains_key("/zst"), "--delete /zst");
    assert_matches_source(&env, &src, "/stdin");
    let line = env.fails(&["ingest", FQRN, "--delete", "/stdin", "--path", "/x"]);
    assert!(line.contains("--path"), "{line}");
    assert!(
        !env.run(&["ingest", FQRN]).status.success(),
        "neither archive nor --delete"
    );
}

#[test]
fn bad_inputs_leave_the_repository_untouched() {
    let env = Env::init(&[]);
    let src = sample(&env);
    env.ok(&["publish", FQRN, src.to_str().unwrap(), "--path", "/base"]);
    let before = env.snapshot();

    let hostile = env.path("hostile.tar");
    std::fs::write(&hostile, fixtures::layers::hostile_layer()).unwrap();
    let line = env.fails(&["ingest", FQRN, hostile.to_str().unwrap()]);
    assert!(line.contains("hostile.tar"), "{line}");

    let mut good = fixtures::layers::LayerBuilder::new();
    good.file("a/file", &vec![7u8; 300_000]).file("b", b"x");
    let tar = good.finish();
    let gz = fixtures::layers::gzip(&tar);
    let truncated = env.path("truncated.tar.gz");
    std::fs::write(&truncated, fixtures::layers::truncate(&gz, gz.len() / 2)).unwrap();
    let line = env.fails(&["ingest", FQRN, truncated.to_str().unwrap()]);
    assert!(line.contains("truncated.tar.gz"), "{line}");

    let corrupt = env.path("corrupt.tar.zst");
    let zst = fixtures::layers::zstd(&tar);
    std::fs::write(&corrupt, fixtures::layers::corrupt(&zst, zst.len() / 2)).unwrap();
    let line = env.fails(&["ingest", FQRN, corrupt.to_str().unwrap()]);
    assert!(line.contains("corrupt.tar.zst"), "{line}");

    let cut_tar = env.path("cut.tar");
    std::fs::write(&cut_tar, &tar[..tar.len() / 3]).unwrap();
    env.fails(&["ingest", FQRN, cut_tar.to_str().unwrap()]);

    let missing = env.path("does-not-exist");
    let line = env.fails(&["publish", FQRN, missing.to_str().unwrap()]);
    assert!(line.contains("does-not-exist"), "{line}");

    let line = env.fails(&[
        "publish",
        FQRN,
        src.to_str().unwrap(),
        "--path",
        "/a/../../etc",
    ]);
    assert!(line.contains("--path"), "{line}");

    let line = env.fails(&["publish", "no.such.repo", src.to_str().unwrap()]);
    assert!(line.contains("no.such.repo"), "{line}");

    assert_eq!(before, env.snapshot(), "storage changed after bad inputs");
    env.check(true);
}

#[test]
fn wrong_key_fails_check() {
    let env = Env::init(&[]);
    let other = Env::init(&[]);
    let key = other
        .home
        .join(FQRN)
        .join("keys")
        .join(format!("{FQRN}.pub"));
    let out = env.run(&[
        "check",
        FQRN,
        "--storage",
        env.storage.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("whitelist"));
}

#[test]
fn crash_at_every_stage_keeps_the_last_revision() {
    let env = Env::init(&[]);
    let src = sample(&env);
    env.ok(&["publish", FQRN, src.to_str().unwrap(), "--path", "/first"]);
    let manifest = std::fs::read(env.storage.join(".cvmfspublished")).unwrap();
    let second = env.path("second");
    std::fs::create_dir_all(&second).unwrap();
    std::fs::write(second.join("f"), b"second revision\n").unwrap();
    for point in [
        "after-objects",
        "after-catalogs",
        "after-history",
        "before-manifest",
        "after-reflog",
    ] {
        let out = env
            .cmd(&[
                "publish",
                FQRN,
                second.to_str().unwrap(),
                "--path",
                "/second",
            ])
            .env("CVMFS_OCI_CRASH_AT", point)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{point}: the publish did not crash");
        assert_eq!(
            manifest,
            std::fs::read(env.storage.join(".cvmfspublished")).unwrap(),
            "{point}: manifest changed"
        );
        env.check(true);
        assert_eq!(env.revision(), 2, "{point}");
    }
    // The last crash left a reflog newer than the manifest: tolerated, and said.
    let checked = env.ok(&["check", FQRN]);
    assert!(checked.contains("note: .cvmfsreflog"), "{checked}");
    env.ok(&[
        "publish",
        FQRN,
        second.to_str().unwrap(),
        "--path",
        "/second",
    ]);
    assert_eq!(env.revision(), 3);
    env.check(true);
    assert!(!env.ok(&["check", FQRN]).contains("note:"));
    assert_matches_source(&env, &second, "/second");
}

/// Temporary databases (`<home>/tmp/cvmfs-oci-db*`, each with an `owner.lock` its process
/// holds) that a SIGKILL left are removed by the next command; one whose owner lives is kept.
#[test]
fn temporary_databases_of_a_killed_run_are_removed_by_the_next() {
    let env = Env::init(&[]);
    let tmp = env.home.join("tmp");
    let (dead, live) = (
        tmp.join("cvmfs-oci-dbDead01"),
        tmp.join("cvmfs-oci-dbLive01"),
    );
    let mut owners = Vec::new();
    for dir in [&dead, &live] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("db.sqlite"), b"a catalog being read").unwrap();
        owners.push(lock_holder(&dir.join("owner.lock")));
    }
    owners[0].kill().unwrap(); // SIGKILL
    owners[0].wait().unwrap();

    env.ok(&["info", FQRN]);
    assert_eq!(temp_dbs(&tmp), vec![live.clone()], "the live owner's stays");
    owners[1].kill().unwrap();
    owners[1].wait().unwrap();
    env.ok(&["info", FQRN]);
    assert!(temp_dbs(&tmp).is_empty());
}

fn temp_dbs(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    found.retain(|p| {
        p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("cvmfs-oci-db")
    });
    found.sort();
    found
}

/// Objects of a publish killed before its `syncfs`, then lost to a power failure (files there,
/// bytes not: simulated by emptying them and by the mark naming another boot), are re-hashed
/// and stored again by the rerun instead of being taken as stored.
#[test]
fn objects_lost_in_a_power_failure_are_stored_again() {
    let env = Env::init(&[]);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..12u64 {
        std::fs::write(
            src.join(format!("f{i}")),
            noise(20_000 + 1000 * i as usize, i),
        )
        .unwrap();
    }
    let objects = |env: &Env| -> std::collections::BTreeSet<PathBuf> {
        walkdir::WalkDir::new(env.storage.join("data"))
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_type().is_file() && !e.path().starts_with(env.storage.join("data/txn"))
            })
            .map(|e| e.into_path())
            .collect()
    };
    let before = objects(&env);
    let crashed = env
        .cmd(&["publish", FQRN, src.to_str().unwrap()])
        .env("CVMFS_OCI_CRASH_AT", "after-objects")
        .output()
        .unwrap();
    assert!(!crashed.status.success());
    let orphans: Vec<PathBuf> = objects(&env).difference(&before).cloned().collect();
    assert!(orphans.len() >= 12, "{orphans:?}");
    for orphan in orphans.iter().take(5) {
        std::fs::write(orphan, b"").unwrap();
    }
    let mark = env.home.join(FQRN).join("state/unsynced");
    let text = std::fs::read_to_string(&mark).expect("the crashed run left its mark");
    let since = text.lines().find(|l| l.starts_with("since ")).unwrap();
    std::fs::write(&mark, format!("boot another-boot\n{since}\n")).unwrap();

    let out = env.ok(&["publish", FQRN, src.to_str().unwrap()]);
    assert!(out.contains("5 damaged ones deleted"), "{out}");
    assert!(!mark.exists(), "the published revision synced everything");
    env.check(true);
    assert_matches_source(&env, &src, "");
}

#[test]
fn concurrent_publishers_serialise() {
    let env = Env::init(&[]);
    let mut children = Vec::new();
    for i in 0..3 {
        let d = env.path(&format!("c{i}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("data"), format!("publisher {i}\n")).unwrap();
        let path = format!("/p{i}");
        children.push(
            env.cmd(&["publish", FQRN, d.to_str().unwrap(), "--path", &path])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
    }
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(env.revision(), 4);
    env.check(true);
}

#[test]
fn no_wait_reports_the_lock_holder() {
    let env = Env::init(&[]);
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .open(env.home.join(FQRN).join("lock"))
        .unwrap();
    lock.lock().unwrap();
    let src = env.path("s");
    std::fs::create_dir_all(&src).unwrap();
    let line = env.fails(&["--no-wait", "publish", FQRN, src.to_str().unwrap()]);
    assert!(line.contains("another process"), "{line}");
    // Without --no-wait it says once, on stderr (stdout is for results), that it waits, then
    // publishes when the lock is free.
    let mut waiting = env
        .cmd(&["publish", FQRN, src.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read on a thread: a line that never comes on stderr must fail the test, not hang it.
    let stderr = waiting.stderr.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
            let _ = lines_tx.send(line.unwrap_or_default());
        }
    });
    let Ok(first) = lines.recv_timeout(std::time::Duration::from_secs(60)) else {
        let _ = waiting.kill();
        panic!("no line on stderr while waiting for the lock");
    };
    assert!(first.starts_with("waiting for the lock"), "{first}");
    assert_eq!(env.revision(), 1, "still waiting");
    lock.unlock().unwrap();
    let done = waiting.wait_with_output().unwrap();
    assert!(done.status.success());
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(!stdout.contains("waiting"), "{stdout}");
    assert!(stdout.contains("published revision 2"), "{stdout}");
    assert_eq!(env.revision(), 2);

    // With --json the wait is an event on stdout like the others, and stdout holds JSON only.
    lock.lock().unwrap();
    let mut waiting = env
        .cmd(&["--json", "publish", FQRN, src.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let mut stdout = std::io::BufReader::new(waiting.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    let event: serde_json::Value = serde_json::from_str(&first).expect(&first);
    assert_eq!(event["action"], "waiting", "{first}");
    drop(lock);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(waiting.wait().unwrap().success());
    for line in rest.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "{line}"
        );
    }

    // `resign` takes the repository lock too: it honours --no-wait and says that it waits.
    let mut holder = lock_holder(&env.home.join(FQRN).join("lock"));
    let line = env.fails(&["--no-wait", "resign", FQRN]);
    assert!(line.contains("another process"), "{line}");
    let mut waiting = env
        .cmd(&["--json", "resign", FQRN])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(waiting.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    assert!(first.contains(r#""action":"waiting""#), "{first}");
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert!(waiting.wait().unwrap().success());
}

#[test]
fn resign_and_info() {
    let env = Env::init(&["--whitelist-days", "2"]);
    let info = |env: &Env| -> serde_json::Value {
        let out = env.ok(&["--json", "info", FQRN]);
        serde_json::from_str(out.lines().last().unwrap()).unwrap()
    };
    let before = info(&env)["whitelist_expires"].as_i64().unwrap();
    let out = env.ok(&["--json", "resign", FQRN, "--days", "40"]);
    assert!(out.contains("\"action\":\"resign\""), "{out}");
    let after = info(&env)["whitelist_expires"].as_i64().unwrap();
    assert!(after - before > 37 * 86400, "{before} -> {after}");
    env.check(true);
    // The whitelist verifies with the openssl command line (raw PKCS#1 over the hash text).
    let wl = std::fs::read(env.storage.join(".cvmfswhitelist")).unwrap();
    let sep = wl.windows(4).position(|w| w == b"\n--\n").unwrap();
    let rest = &wl[sep + 4..];
    let nl = rest.iter().position(|&b| b == b'\n').unwrap();
    let sig = env.path("wl.sig");
    std::fs::write(&sig, &rest[nl + 1..]).unwrap();
    let key = env.home.join(FQRN).join("keys").join(format!("{FQRN}.pub"));
    let out = std::process::Command::new("openssl")
        .args(["pkeyutl", "-verifyrecover", "-pubin", "-inkey"])
        .arg(&key)
        .arg("-in")
        .arg(&sig)
        .output()
        .unwrap();
    assert_eq!(out.stdout, &rest[..nl]);
}

#[test]
fn meta_info_starts_as_cvmfs_server_skeleton_and_can_be_replaced() {
    let env = Env::init(&[]);
    // The object `cvmfs_server mkfs` makes of its skeleton has this name too.
    assert_eq!(
        env.manifest_field('M'),
        "85e4f386da0d5d77c7f66cf2f58e10951f24b653"
    );
    let shown = env.ok(&["repoinfo", FQRN]);
    assert!(shown.contains("\"recommended-stratum1s\""), "{shown}");
    common::assert_manifest_verifies(&env);

    let info = env.path("info.json");
    std::fs::write(
        &info,
        "{\"administrator\": \"ops\", \"recommended-stratum1s\": [\"http://s1/cvmfs/x\"]}\n",
    )
    .unwrap();
    let revision = env.revision();
    let set = env.ok(&["--json", "repoinfo", FQRN, "--set", info.to_str().unwrap()]);
    let hash: serde_json::Value = serde_json::from_str(set.lines().last().unwrap()).unwrap();
    let hash = hash["meta_info"].as_str().unwrap().to_string();
    assert_eq!(env.manifest_field('M'), hash);
    assert_eq!(env.revision(), revision, "re-signed at the same revision");
    common::assert_manifest_verifies(&env);
    env.check(true);
    let shown = env.ok(&["--json", "repoinfo", FQRN]);
    let shown: serde_json::Value = serde_json::from_str(shown.lines().last().unwrap()).unwrap();
    assert_eq!(shown["info"]["administrator"], "ops");
    // The object is zlib of the document, named by its SHA-1, like every object.
    let object = std::fs::read(
        env.storage
            .join(format!("data/{}/{}M", &hash[..2], &hash[2..])),
    )
    .unwrap();
    let mut plain = Vec::new();
    flate2::read::ZlibDecoder::new(&object[..])
        .read_to_end(&mut plain)
        .unwrap();
    assert_eq!(plain, std::fs::read(&info).unwrap());

    // Refused: not an object, not JSON; nothing changes.
    let before = std::fs::read(env.storage.join(".cvmfspublished")).unwrap();
    for bad in ["[1, 2]", "{\"a\": "] {
        std::fs::write(&info, bad).unwrap();
        let line = env.fails(&["repoinfo", FQRN, "--set", info.to_str().unwrap()]);
        assert!(line.contains("meta-info"), "{line}");
    }
    assert_eq!(
        before,
        std::fs::read(env.storage.join(".cvmfspublished")).unwrap()
    );

    // A publish keeps it.
    let src = sample(&env);
    env.ok(&["publish", FQRN, src.to_str().unwrap()]);
    assert_eq!(env.manifest_field('M'), hash);
    env.check(true);
}

/// `--catalog` and `--owner`, as `cvmfs_server ingest --catalog -u -g`: the ingested tree gets
/// a nested catalog of its own and the given owner, directories created above it too.
#[test]
fn ingest_into_a_nested_catalog_with_an_owner() {
    let env = Env::init(&[]);
    let src = sample(&env);
    std::fs::remove_file(src.join("special/socket")).expect("sample tree has a socket");
    let tar = gnu_tar(&env, &src, "src.tar", "--no-auto-compress");
    let tar = tar.to_str().unwrap();
    let flags = ["--path", "/sw/app", "--catalog", "--owner", "1234:5678"];
    env.ok(&[&["ingest", FQRN, tar][..], &flags].concat());
    env.check(true);
    let report = fixtures::witness::witness_read_dir(&env.storage, &env.path("wc")).unwrap();
    let app = &report.entries["/sw/app"];
    assert!(app.nested_catalog_mountpoint);
    let marker = &report.entries["/sw/app/.cvmfscatalog"];
    assert_eq!((marker.mode & 0o7777, marker.size), (0o664, 0));
    let below: Vec<_> = report
        .entries
        .iter()
        .filter(|(p, _)| p.starts_with("/sw"))
        .collect();
    assert!(below.len() > 10);
    for (path, e) in below {
        assert_eq!((e.uid, e.gid), (1234, 5678), "{path}");
    }
    assert_eq!(report.entries["/"].uid, 0);

    // The same tree published from a directory, without them: one catalog, the source's owners.
    env.ok(&["publish", FQRN, src.to_str().unwrap(), "--path", "/sw/app"]);
    let report = fixtures::witness::witness_read_dir(&env.storage, &env.path("wc2")).unwrap();
    assert!(!report.entries["/sw/app"].nested_catalog_mountpoint);
    assert!(!report.entries.contains_key("/sw/app/.cvmfscatalog"));
    assert_ne!(report.entries["/sw/app/files/one-byte"].uid, 1234);

    let err = env.fails(&["ingest", FQRN, tar, "--catalog"]);
    assert!(err.contains("--catalog"), "{err}");
    let out = env.run(&["ingest", FQRN, tar, "--owner", "root"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("UID:GID"));
}

#[test]
fn resign_with_the_master_key_kept_offline() {
    let env = Env::init(&[]);
    let keys = env.home.join(FQRN).join("keys");
    let usb = env.path("usb");
    std::fs::create_dir_all(&usb).unwrap();
    let master = format!("{FQRN}.masterkey");
    std::fs::rename(keys.join(&master), usb.join(&master)).unwrap();
    let line = env.fails(&["resign", FQRN]);
    assert!(
        line.contains("master key") && line.contains("--keys"),
        "{line}"
    );
    // `--keys` is looked in first for this run; the repository key stays where it is.
    env.ok(&[
        "--keys",
        usb.to_str().unwrap(),
        "resign",
        FQRN,
        "--days",
        "10",
    ]);
    env.check(true);
    assert!(
        !keys.join(&master).exists(),
        "the master key was not copied back"
    );
    // Nothing remembered: the next resign without it fails again.
    let line = env.fails(&["resign", FQRN]);
    assert!(line.contains("master key"), "{line}");
    // Another repository's master key there is refused, not used.
    let other = Env::init(&[]);
    let wrong = env.path("wrong");
    std::fs::create_dir_all(&wrong).unwrap();
    let other_keys = other.home.join(FQRN).join("keys");
    std::fs::copy(other_keys.join(&master), wrong.join(&master)).unwrap();
    let line = env.fails(&["--keys", wrong.to_str().unwrap(), "resign", FQRN]);
    assert!(line.contains("masterkey"), "{line}");
    // A whitelist that has already expired, or lasts for centuries, is not signed.
    for days in ["0", "100000"] {
        let out = env.run(&[
            "--keys",
            usb.to_str().unwrap(),
            "resign",
            FQRN,
            "--days",
            days,
        ]);
        assert!(!out.status.success(), "--days {days}");
    }
    env.check(true);
}

/// With `--json`, `ingest` reports its revision as an `ingest` event, not `publish`, and every
/// event of a command on a repository names it (`fqrn`), whichever part of the code emits it.
#[test]
fn json_events_name_their_command_and_repository() {
    let env = Env::init(&[]);
    let src = env.path("src");
    std::fs::create_dir_all(src.join("nested")).unwrap();
    std::fs::write(src.join("a.txt"), "a").unwrap();
    std::fs::write(src.join("nested/.cvmfscatalog"), "").unwrap();
    let tar = gnu_tar(&env, &src, "src.tar", "--no-auto-compress");
    let tar = tar.to_str().unwrap();
    let events = |args: &[&str]| -> Vec<serde_json::Value> {
        let out = env.ok(&[&["--json"][..], args].concat());
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    };

    let ingested = events(&["ingest", FQRN, tar, "--path", "/t"]);
    let outcome = ingested.last().unwrap();
    assert_eq!(outcome["action"], "ingest", "{outcome}");
    assert_eq!(outcome["revision"], 2, "{outcome}");
    let deleted = events(&["ingest", FQRN, "--delete", "/t/a.txt"]);
    assert_eq!(deleted.last().unwrap()["action"], "ingest");
    let published = events(&["publish", FQRN, src.to_str().unwrap()]);
    assert_eq!(published.last().unwrap()["action"], "publish");

    let mut all = [ingested, deleted, published].concat();
    for args in [
        &["diff", FQRN][..],
        &["list-catalogs", FQRN],
        &["tag", FQRN],
        &["check", FQRN],
        &["info", FQRN],
    ] {
        let got = events(args);
        assert!(!got.is_empty(), "{args:?} printed no event");
        all.extend(got);
    }
    for event in &all {
        assert_eq!(event["fqrn"], FQRN, "{event}");
    }
    // An error too.
    let out = env.run(&["--json", "diff", FQRN, "--from", "no-such-tag"]);
    assert!(!out.status.success());
    let error: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&error["action"], &error["fqrn"]),
        (&serde_json::json!("error"), &serde_json::json!(FQRN)),
        "{error}"
    );
}

/// A usage error on a command line with `--json` is one JSON error event on stdout, with
/// clap's exit code 2; `--help` and `--version` stay text, and without `--json` stdout stays
/// empty.
#[test]
fn usage_errors_under_json_are_a_json_event() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cvmfs-oci"))
            .args(args)
            .output()
            .unwrap()
    };
    let cases: [(&[&str], &str); 5] = [
        (
            &["--json", "publish", FQRN, "src", "--no-such-flag"],
            "unexpected argument '--no-such-flag' found",
        ),
        (
            &["publish", "--json"],
            "the following required arguments were not provided: <FQRN> <SOURCE>",
        ),
        (&["--json", "resign", FQRN, "--days", "0"], "0 days"),
        (
            &["--json"],
            "requires a subcommand but one was not provided",
        ),
        // What clap answers with the whole help text.
        (&["--json", "cache"], "a command is required"),
    ];
    for (args, says) in cases {
        let out = run(args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stdout}");
        assert_eq!(stdout.lines().count(), 1, "{args:?}: {stdout}");
        let event: serde_json::Value = serde_json::from_str(&stdout).expect(&stdout);
        assert_eq!(event["action"], "error", "{event}");
        assert_eq!(event["kind"], "usage", "{event}");
        let error = event["error"].as_str().unwrap_or_default();
        assert!(error.contains(says), "{args:?}: {error}");
    }
    let plain = run(&["publish", FQRN, "--no-such-flag"]);
    assert_eq!(plain.status.code(), Some(2));
    assert!(plain.stdout.is_empty());
    for args in [
        &["--json", "--help"][..],
        &["--json", "--version"],
        &["--json", "publish", "--help"],
    ] {
        let out = run(args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(
            stdout.contains("Usage: cvmfs-oci") || stdout.starts_with("cvmfs-oci "),
            "{args:?}: {stdout}"
        );
    }
}

/// On a terminal `publish` and `ingest` show how far they are (the source, files and bytes
/// read) on stderr and clear that line at the end; with `--json` nothing is drawn, and when
/// stderr is not a terminal neither (every other test).
#[test]
fn publish_and_ingest_show_progress_on_a_terminal_only() {
    let env = Env::init(&[]);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("noise"), noise(3 << 20, 7)).unwrap();
    std::fs::write(src.join("small"), b"small\n").unwrap();
    let src_text = src.to_str().unwrap();
    // The spinner's rate (indicatif writes "0 B/s", "1.2 MiB/s"; the summary says "MB/s").
    let drawn = |s: &str| s.contains(" B/s") || s.contains("iB/s");
    let shown = on_terminal(&env.cmd(&["publish", FQRN, src_text]));
    assert!(drawn(&shown) && shown.contains(src_text), "{shown:?}");
    assert!(
        shown.contains("\u{1b}[2K"),
        "the line is cleared: {shown:?}"
    );
    assert!(shown.contains("published revision 2"), "{shown:?}");

    let tar = gnu_tar(&env, &src, "src.tar", "--no-auto-compress");
    let tar_text = tar.to_str().unwrap();
    let shown = on_terminal(&env.cmd(&["ingest", FQRN, tar_text, "--path", "/t"]));
    assert!(drawn(&shown) && shown.contains(tar_text), "{shown:?}");

    std::fs::write(src.join("small"), b"changed\n").unwrap();
    let json = on_terminal(&env.cmd(&["--json", "publish", FQRN, src_text]));
    assert!(
        !json.contains('\u{1b}') && !drawn(&json),
        "nothing drawn with --json: {json:?}"
    );
    assert!(
        json.lines()
            .all(|l| l.trim().is_empty() || l.trim().starts_with('{')),
        "{json:?}"
    );
    let plain = env.run(&["publish", FQRN, src_text]);
    assert!(plain.stderr.is_empty(), "{plain:?}");
}

/// `check` reads catalogs through temporary databases: with `<home>/tmp` unusable they go to
/// TMPDIR, and with no place at all that is this machine's error, not a damaged repository.
#[test]
fn check_without_a_usable_home_tmp_falls_back_and_never_blames_the_repository() {
    let env = Env::init(&[]);
    let src = env.path("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/f"), b"content").unwrap();
    env.ok(&["publish", FQRN, src.to_str().unwrap()]);
    // A file where `<home>/tmp` should be: nothing can be made there, even by root.
    let _ = std::fs::remove_dir_all(env.home.join("tmp"));
    std::fs::write(env.home.join("tmp"), b"").unwrap();
    let tmpdir = env.path("tmpdir");
    std::fs::create_dir(&tmpdir).unwrap();
    let check = |tmpdir: &std::path::Path| {
        env.cmd(&["--json", "check", FQRN, "--full"])
            .env("TMPDIR", tmpdir)
            .output()
            .unwrap()
    };
    let ok = check(&tmpdir);
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(text.contains(r#""ok":true"#), "{text}");

    let nowhere = check(&env.path("no-such-tmpdir"));
    let (text, err) = (
        String::from_utf8_lossy(&nowhere.stdout),
        String::from_utf8_lossy(&nowhere.stderr),
    );
    assert!(!nowhere.status.success());
    assert!(
        !text.contains(r#""ok":false"#),
        "not a verdict on the repository: {text}"
    );
    assert!(err.contains("temporary directory"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

/// A publish that finds the storage held by garbage collection (another home's `gc`, here a
/// process holding the collection lock) waits for it and says so once, as it does for the
/// repository lock; with `--no-wait` it fails in one line.
#[test]
fn a_publish_waits_for_a_garbage_collection_of_the_storage() {
    let env = Env::init(&[]);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"content").unwrap();
    let mut gc = lock_holder(&env.storage.join("data/txn/collect.lock"));

    let refused = env.fails(&["--no-wait", "publish", FQRN, src.to_str().unwrap()]);
    assert!(
        refused.contains("in use by garbage collection"),
        "{refused}"
    );

    let mut publish = env
        .cmd(&["--json", "publish", FQRN, src.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines =
        std::io::BufRead::lines(std::io::BufReader::new(publish.stdout.take().unwrap()));
    let first = lines.next().unwrap().unwrap();
    assert!(
        first.contains(r#""action":"waiting""#) && first.contains("collect.lock"),
        "{first}"
    );
    gc.kill().unwrap();
    gc.wait().unwrap();
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert!(publish.wait().unwrap().success(), "{rest:?}");
    assert!(
        rest.iter().any(|l| l.contains(r#""revision":2"#)),
        "{rest:?}"
    );
    assert_matches_source(&env, &src, "");
}

/// Results that cannot be written to stdout (a full disk under `> info.json`) make the command
/// fail, though the work is done; a reader that went away (`| head`) does not.
#[test]
fn results_lost_on_a_full_disk_fail_the_command() {
    let env = Env::init(&[]);
    let Ok(full) = std::fs::File::create("/dev/full") else {
        return; // no /dev/full here
    };
    let out = env
        .cmd(&["--json", "info", FQRN])
        .stdout(full)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("cvmfs-oci: error: writing the results to stdout: No space left"),
        "{err}"
    );
    let mut closed = env
        .cmd(&["--json", "info", FQRN])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    drop(closed.stdout.take());
    assert!(closed.wait().unwrap().success());
}

/// A `.cvmfsdirtab` CernVM-FS would refuse (a relative rule, a rule negated word for word)
/// fails the publish in one line naming the line, instead of being half applied; places no
/// tree may go (below a directory named like a marker, into `/.cvmfs`) are refused too.
#[test]
fn invalid_dirtabs_and_reserved_places_are_refused() {
    let env = Env::init(&[]);
    let src = env.path("src");
    std::fs::create_dir_all(src.join("software/a")).unwrap();
    std::fs::write(src.join("software/a/f"), b"x").unwrap();
    for (dirtab, why) in [
        (
            "software/*\n",
            "line 1: software/*: a rule must be an absolute path",
        ),
        (
            "/software/*\n!/software/*\n",
            "/software/* is both a rule and its negation",
        ),
    ] {
        std::fs::write(src.join(".cvmfsdirtab"), dirtab).unwrap();
        let err = env.fails(&["publish", FQRN, src.to_str().unwrap()]);
        assert!(
            err.contains("/.cvmfsdirtab: ") && err.contains(why),
            "{err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    std::fs::remove_file(src.join(".cvmfsdirtab")).unwrap();
    for at in ["/a/.cvmfscatalog/x", "/.cvmfs/snapshots"] {
        let err = env.fails(&["publish", FQRN, src.to_str().unwrap(), "--path", at]);
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    assert_eq!(env.revision(), 1);
    env.check(true);
}

/// Variables the options fall back to, exported but empty (a CI secret a fork's pull request
/// does not get), count as unset, as with Docker, skopeo and the AWS tools.
#[test]
fn empty_environment_variables_count_as_unset() {
    let env = Env::init(&[]);
    let fake_home = env.path("user");
    std::fs::create_dir_all(&fake_home).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cvmfs-oci"))
        .args(["info", FQRN])
        .env("CVMFS_OCI_HOME", "")
        .env("HOME", &fake_home)
        .env_remove("XDG_DATA_HOME")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!stderr.contains("--home"), "a usage error: {stderr}");
    assert!(
        stderr.contains("cvmfs-oci/") || stderr.contains(FQRN),
        "{stderr}"
    );
    // A local image needs no credentials: an empty CVMFS_OCI_CREDS is none.
    let layout = env.path("layout");
    common::edge_image(
        fixtures::oci::Compression::Gzip,
        fixtures::oci::MediaTypes::Oci,
    )
    .write_layout(&layout, "v1")
    .unwrap();
    let out = env
        .cmd(&["convert", FQRN, &format!("oci:{}:v1", layout.display())])
        .env("CVMFS_OCI_CREDS", "")
        .env("AWS_ENDPOINT_URL", "")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The two 320-byte PDF prefixes of the SHAttered collision (shattered.io, 2017): different
/// bytes with one SHA-1, which any common suffix keeps.
const SHATTERED: [&str; 2] = [
    concat!(
        "255044462d312e330a25e2e3cfd30a0a0a312030206f626a0a3c3c2f57696474682032203020522f48656967",
        "68742033203020522f547970652034203020522f537562747970652035203020522f46696c74657220362030",
        "20522f436f6c6f7253706163652037203020522f4c656e6774682038203020522f42697473506572436f6d70",
        "6f6e656e7420383e3e0a73747265616d0affd8fffe00245348412d3120697320646561642121212121852fec",
        "092339759c39b1a1c63c4c97e1fffe017f46dc93a6b67e013b029aaa1db2560b45ca67d688c7f84b8c4c791f",
        "e02b3df614f86db1690901c56b45c1530afedfb76038e972722fe7ad728f0e4904e046c230570fe9d41398ab",
        "e12ef5bc942be33542a4802d98b5d70f2a332ec37fac3514e74ddc0f2cc1a874cd0c78305a21566461309789",
        "606bd0bf3f98cda8044629a1"
    ),
    concat!(
        "255044462d312e330a25e2e3cfd30a0a0a312030206f626a0a3c3c2f57696474682032203020522f48656967",
        "68742033203020522f547970652034203020522f537562747970652035203020522f46696c74657220362030",
        "20522f436f6c6f7253706163652037203020522f4c656e6774682038203020522f42697473506572436f6d70",
        "6f6e656e7420383e3e0a73747265616d0affd8fffe00245348412d3120697320646561642121212121852fec",
        "092339759c39b1a1c63c4c97e1fffe017346dc9166b67e118f029ab621b2560ff9ca67cca8c7f85ba84c7903",
        "0c2b3de218f86db3a90901d5df45c14f26fedfb3dc38e96ac22fe7bd728f0e45bce046d23c570feb141398bb",
        "552ef5a0a82be331fea48037b8b5d71f0e332edf93ac3500eb4ddc0decc1a864790c782c76215660dd309791",
        "d06bd0af3f98cda4bc4629b1"
    ),
];

/// Two files with one SHA-1 are two contents: neither in one publish (in-run dedup) nor in a
/// later one (content index) does one get the other's object.
#[test]
fn files_with_one_sha1_keep_their_own_content() {
    use sha1::{Digest, Sha1};
    let env = Env::init(&[]);
    // Past the content index's minimum size, still colliding.
    let pad = noise(8192, 11);
    let [a, b] = SHATTERED.map(|h| {
        let mut v = hex::decode(h).unwrap();
        v.extend_from_slice(&pad);
        v
    });
    assert_ne!(a, b);
    assert_eq!(Sha1::digest(&a), Sha1::digest(&b), "the test's premise");

    let both = env.path("both");
    std::fs::create_dir_all(&both).unwrap();
    std::fs::write(both.join("a.pdf"), &a).unwrap();
    std::fs::write(both.join("b.pdf"), &b).unwrap();
    env.ok(&["publish", FQRN, both.to_str().unwrap()]);
    assert_matches_source(&env, &both, "");

    let later = env.path("later");
    std::fs::create_dir_all(&later).unwrap();
    std::fs::write(later.join("b-again.pdf"), &b).unwrap();
    std::fs::write(later.join("a-again.pdf"), &a).unwrap();
    let src = later.to_str().unwrap();
    env.ok(&["publish", FQRN, src, "--path", "/later"]);
    assert_matches_source(&env, &later, "/later");
}

/// In the whitelist's last week every publish warns, naming the command that renews it.
#[test]
fn a_publish_warns_when_the_whitelist_expires_within_a_week() {
    let env = Env::init(&["--whitelist-days", "3"]);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    let out = env.run(&["publish", FQRN, src.to_str().unwrap()]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: the whitelist of")
            && err.contains(&format!("cvmfs-oci resign {FQRN}")),
        "{err}"
    );
    env.ok(&["resign", FQRN, "--days", "30"]);
    std::fs::write(src.join("g"), b"y").unwrap();
    let out = env.run(&["publish", FQRN, src.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A soft limit of open files below what the store keeps open (one descriptor per `data/XX`
/// directory written to) is raised to the hard limit, as Go programs do.
#[test]
fn a_low_soft_limit_of_open_files_is_raised() {
    use std::os::unix::process::CommandExt;
    let env = Env::init(&[]);
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..1000 {
        std::fs::write(src.join(format!("f{i}")), format!("file {i}\n")).unwrap();
    }
    let mut cmd = env.cmd(&["publish", FQRN, src.to_str().unwrap()]);
    // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut lim: libc::rlimit = std::mem::zeroed();
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
            lim.rlim_cur = 64.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::assert_matches_source(&env, &src, "");
}

/// Sparse files as GNU tar writes them, in the old GNU format and in the three PAX formats
/// (`--sparse-version` 0.0, 0.1, 1.0; 1.0 is what `--format=pax --sparse` writes by default
/// and what bsdtar writes), publish as the file itself: the witness reads the same bytes as
/// the source, holes as zeros, under the real name.
#[test]
fn gnu_tar_sparse_files_in_every_format_are_ingested_whole() {
    let env = Env::init(&[]);
    let src = env.path("sparse-src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    let holey = std::fs::File::create(src.join("d/holey")).unwrap();
    holey.set_len(3 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    holey.write_all_at(&noise(5000, 7), 1 << 20).unwrap();
    holey.write_all_at(b"the end\n", (3 << 20) - 8).unwrap();
    std::fs::write(src.join("d/plain"), b"not sparse\n").unwrap();
    let formats: [(&str, &[&str]); 4] = [
        ("gnu", &["--format=gnu", "--sparse"]),
        (
            "pax00",
            &["--format=pax", "--sparse", "--sparse-version=0.0"],
        ),
        (
            "pax01",
            &["--format=pax", "--sparse", "--sparse-version=0.1"],
        ),
        (
            "pax10",
            &["--format=pax", "--sparse", "--sparse-version=1.0"],
        ),
    ];
    for (name, flags) in formats {
        let tar = env.path(&format!("{name}.tar"));
        let status = std::process::Command::new("tar")
            .args(flags)
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(&src)
            .arg(".")
            .status()
            .expect("run tar");
        assert!(status.success(), "{name}");
        // Written sparse: the archive holds the data, not the holes.
        assert!(std::fs::metadata(&tar).unwrap().len() < 1 << 20, "{name}");
        env.ok(&[
            "ingest",
            FQRN,
            tar.to_str().unwrap(),
            "--path",
            &format!("/{name}"),
        ]);
    }
    env.check(true);
    for (name, _) in formats {
        assert_matches_source(&env, &src, &format!("/{name}"));
    }
}
