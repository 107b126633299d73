//! The real CVMFS tools as witnesses of what this tool writes: `cvmfs_swissknife check -c`
//! (manifest and whitelist signatures, every catalog with its counters and nesting, the
//! history and reflog, every object) over HTTP, for the current revision and for tags.
//!
//! Runs when `CVMFS_SWISSKNIFE` names the binary; `scripts/real-cvmfs` builds it from the
//! CVMFS sources (about 15 minutes on two cores, too long for CI) and runs these tests.
//! Without it each test says SKIPPED and passes.

mod common;

use common::{Env, FQRN};
use fixtures::oci::{Compression, ImageBuilder, MediaTypes};
use std::path::PathBuf;
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
/// repository: nested catalogs, an ingest with deletions, tags, a rollback and a collection.
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
    let tar = env.path("src.tar");
    let status = Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    let tar = tar.to_str().unwrap();
    env.ok(&["ingest", FQRN, tar, "--path", "/tar", "--delete", "/owned"]);
    swissknife_check(&sk, &env, None);
    swissknife_check(&sk, &env, Some("with-owned"));

    env.ok(&["rollback", FQRN, "--tag", "with-owned"]);
    swissknife_check(&sk, &env, None);
    env.ok(&["gc", FQRN, "--keep-revisions", "0"]);
    swissknife_check(&sk, &env, None);
    swissknife_check(&sk, &env, Some("with-owned"));
}

/// Converted images in the DUCC layout (whiteouts, opaque directories, hardlinks, special
/// files, xattrs in the layers), from an OCI layout and a docker archive.
#[test]
fn swissknife_accepts_converted_images() {
    let Some(sk) = swissknife() else { return };
    let env = Env::init(&[]);
    let image = |c: Compression, m: MediaTypes| {
        let mut b = ImageBuilder::new().env("PATH=/bin").media_types(m);
        for layer in fixtures::layers::edge_case_layers() {
            b = b.layer(layer, c);
        }
        b
    };
    let layout = env.path("layout");
    image(Compression::Gzip, MediaTypes::Oci)
        .write_layout(&layout, "v1")
        .unwrap();
    let archive = env.path("image.tar");
    image(Compression::None, MediaTypes::Docker)
        .write_docker_archive(&archive, "example.org/team/app:2.0")
        .unwrap();
    let oci = format!("oci:{}:v1", layout.display());
    let arch = format!("docker-archive:{}", archive.display());
    env.ok(&["convert", FQRN, &oci, &arch]);
    swissknife_check(&sk, &env, None);
}
