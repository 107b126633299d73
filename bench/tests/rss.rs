//! The peak RSS reported for a child must be the child's, not this (large) process's.

use cvmfs_oci_bench::child;
use std::path::Path;
use std::process::Command;

#[test]
fn parent_memory_does_not_leak_into_child_peak_rss() {
    let big = vec![1u8; 300 << 20];
    let exe = Path::new(env!("CARGO_BIN_EXE_cvmfs-oci-bench"));

    let small = child::run(exe, &Command::new("true")).expect("run true");
    assert!(small.ok());
    assert!(
        small.peak_rss_kib < 64 * 1024,
        "`true` reported {} KiB",
        small.peak_rss_kib
    );

    let mut py = Command::new("python3");
    py.args([
        "-c",
        "import sys; b = b'x' * (200 << 20); print(len(b)); sys.exit(3)",
    ]);
    let large = child::run(exe, &py).expect("run python3");
    assert_eq!(large.status, 3);
    assert_eq!(large.stdout.trim(), (200u64 << 20).to_string());
    assert!(
        large.peak_rss_kib > 190 * 1024,
        "python3 reported {} KiB",
        large.peak_rss_kib
    );
    assert_eq!(big.len(), 300 << 20);
}
