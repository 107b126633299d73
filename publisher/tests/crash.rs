//! Crash safety: a publisher killed at each fault point leaves the previous revision intact
//! and checkable, and the next transaction publishes normally.

mod common;
use common::{add_file, init_repo, tempdir};

use publisher::{check_repository, CommitOutcome, CommitSettings, Repository};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

const FQRN: &str = "crash.example.org";
const HOME_ENV: &str = "PUBLISHER_CRASH_TEST_HOME";

fn publish_one(home: &Path, name: &[u8]) -> CommitOutcome {
    let repo = Repository::open(home, FQRN).unwrap();
    let mut txn = repo.begin(false).unwrap();
    add_file(&mut txn, name, b"payload\n");
    txn.commit(&CommitSettings::default()).unwrap()
}

/// Child process body: run by `crash_at_each_fault_point` through the test harness.
#[test]
#[ignore = "helper run in a child process by crash_at_each_fault_point"]
fn crash_child() {
    let home = std::env::var(HOME_ENV).expect("only run by crash_at_each_fault_point");
    publish_one(Path::new(&home), b"/crashed");
}

fn assert_clean(repo: &Repository) {
    let key = signer::load_public_key(&repo.config().public_key_path()).unwrap();
    let report = check_repository(repo.store().as_ref(), FQRN, &[key], true).unwrap();
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
}

#[test]
fn crash_at_each_fault_point() {
    for point in ["after-catalogs", "after-history", "before-manifest"] {
        let dir = tempdir();
        let home = dir.path().join("home");
        let storage = dir.path().join("srv").join(FQRN);
        let repo = init_repo(dir.path(), FQRN);
        let before = std::fs::read(storage.join(".cvmfspublished")).unwrap();

        let status = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "crash_child", "--test-threads=1"])
            .env(HOME_ENV, &home)
            .env(publisher::txn::CRASH_ENV, point)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(
            status.signal(),
            Some(libc::SIGABRT),
            "{point}: child did not abort"
        );

        let after = std::fs::read(storage.join(".cvmfspublished")).unwrap();
        assert_eq!(after, before, "{point}: manifest changed");
        assert_clean(&repo);
        match publish_one(&home, b"/next") {
            CommitOutcome::Published(p) => assert_eq!(p.revision, 2, "{point}"),
            other => panic!("{point}: {other:?}"),
        }
        assert_clean(&repo);
    }
}
