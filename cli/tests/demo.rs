//! `cvmfs-oci demo`, the README's bundled default job: a repository made from a sample tree in
//! a directory of its own, checked, and readable by an independent client.

mod common;

use common::{assert_matches_source, Env};
use std::process::Command;

#[test]
fn the_demo_publishes_its_sample_tree_and_keeps_everything_in_its_directory() {
    let tmp = tempfile::Builder::new()
        .prefix("cvmfs-oci-demo")
        .tempdir()
        .unwrap();
    let base = tmp.path().join("demo");
    let tmpdir = tmp.path().join("tmpdir");
    std::fs::create_dir(&tmpdir).unwrap();
    let demo = || {
        Command::new(env!("CARGO_BIN_EXE_cvmfs-oci"))
            .arg("demo")
            .arg("--dir")
            .arg(&base)
            .env("TMPDIR", &tmpdir)
            .output()
            .unwrap()
    };
    let out = demo();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{text}\n{err}");
    assert!(
        text.contains("demo.cvmfs-oci.local: OK (revision 2"),
        "the full check passed: {text}"
    );

    // Its temporary databases went to its own home, none to TMPDIR.
    assert!(base.join("home/tmp").is_dir(), "{text}");
    let left: Vec<_> = std::fs::read_dir(&tmpdir).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");

    // An independent client reads what the sample tree holds (its `/bin` and `/lib`, host
    // symlinks, are what the witness must not resolve on the host).
    let env = Env {
        dir: tmp,
        home: base.join("home"),
        storage: base.join("storage"),
    };
    assert_matches_source(&env, &base.join("source"), "");

    // A second demo in the same directory is refused in one line, the first one untouched.
    let manifest = std::fs::read(env.storage.join(".cvmfspublished")).unwrap();
    let again = demo();
    let err = String::from_utf8_lossy(&again.stderr).into_owned();
    assert!(!again.status.success());
    assert!(err.contains("already holds a demo repository"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert_eq!(
        manifest,
        std::fs::read(env.storage.join(".cvmfspublished")).unwrap()
    );

    // --home and --keys do not apply: said, and nothing is put there.
    let other_home = env.dir.path().join("other-home");
    let out = Command::new(env!("CARGO_BIN_EXE_cvmfs-oci"))
        .arg("--home")
        .arg(&other_home)
        .args(["demo", "--dir"])
        .arg(env.dir.path().join("demo2"))
        .env("TMPDIR", &tmpdir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("--home (or CVMFS_OCI_HOME) and --keys are not used"),
        "{err}"
    );
    assert!(!other_home.exists());
}
